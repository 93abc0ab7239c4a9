"""The query surface: SQL views over hot DuckDB + cold Parquet, ``read()`` into polars, and the CLI outputs."""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
import uuid
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import msgspec
import polars as pl
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from polars.testing import assert_frame_equal
from typer.testing import CliRunner

from marketprism.cli import app
from marketprism.records import RECORD_TYPES, Depth, Trade
from marketprism.store import read
from marketprism.store.duck import DuckDBStore
from marketprism.store.migrate import HotStoreLocked, migrate
from marketprism.store.query import QuerySurface, to_datetime
from marketprism.store.schema import TableSpec, table_spec
from tests.store_util import encoded, records

FAR_FUTURE = datetime(2300, 1, 1, tzinfo=UTC)  # every generated ts (up to 2200) is older than any retention
DAY0 = date(2024, 8, 1)


def commit(store: DuckDBStore, spec: TableSpec, recs: list, keys: list[str], seq: int = 1) -> None:
    if recs:
        store.commit([(spec, spec.frame([encoded(r) for r in recs], keys))], "test", seq)


@pytest.mark.parametrize("data_type", sorted(map(str, RECORD_TYPES)))
def test_a_query_over_hot_and_cold_returns_exactly_their_union(data_type: str) -> None:
    spec = table_spec(data_type)

    @settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.too_slow])
    @given(st.lists(records(spec), max_size=8), st.lists(records(spec), max_size=8))
    def union(cold_recs: list, hot_recs: list) -> None:
        with tempfile.TemporaryDirectory() as tmp:
            hot, cold = Path(tmp) / "hot.duckdb", Path(tmp) / "cold"
            cold_keys = [f"c{i}" for i in range(len(cold_recs))]
            hot_keys = [f"h{i}" for i in range(len(hot_recs))]
            with DuckDBStore(hot) as store:
                store.ensure_tables([spec])
                commit(store, spec, cold_recs, cold_keys)
                summary = migrate(store, cold, retention_days=0, now=FAR_FUTURE)
                assert summary.errors == 0 and summary.rows_migrated == len(cold_recs)
                assert store.count(spec.table) == 0
                commit(store, spec, hot_recs, hot_keys, 2)
                with QuerySurface(parquet_root=cold, store=store) as q:  # in the writer's process
                    in_process = q.sql(f'SELECT * FROM "{spec.table}" ORDER BY key')
            with QuerySurface(hot, cold) as q:  # another process's view: the hot file read-only
                assert q.hot_status == "attached"
                got = q.sql(f'SELECT * FROM "{spec.table}" ORDER BY key')
                assert got.columns == spec.names
            assert_frame_equal(got, in_process)
            by_key = dict(zip(cold_keys + hot_keys, cold_recs + hot_recs, strict=True))
            want = [encoded(by_key[k]) for k in sorted(by_key)]
            assert [encoded(r) for r in spec.rows_to_records(got)] == want

    union()


def trade(i: int, day: date, exchange: str = "binance", symbol: str = "BTC-USDT", market: str = "spot") -> Trade:
    ts = int(datetime(day.year, day.month, day.day, tzinfo=UTC).timestamp()) * 1_000_000 + i % 20 * 3_600_000_000
    return Trade(exchange=exchange, market=market, symbol=symbol, instrument=symbol.replace("-", ""), ts=ts,
                 recv_ts=ts + 1, trade_id=str(i), price=f"{60000 + i}.5", size="0.01", side="buy")  # fmt: skip


@pytest.fixture
def stores(tmp_path: Path) -> tuple[Path, Path, pl.DataFrame]:
    """Trades over 6 days, 2 exchanges, 2 symbols, 2 markets; the first 4 days cold, the rest hot."""
    spec = table_spec("trade")
    recs = [
        trade(n * 100 + i, DAY0 + timedelta(days=d), ex, sym, mk)
        for n, (d, ex, sym, mk) in enumerate(
            (d, ex, sym, mk)
            for d in range(6)
            for ex in ("binance", "okx")
            for sym in ("BTC-USDT", "ETH-USDT")
            for mk in ("spot", "perp")
        )
        for i in range(5)
    ]
    hot, cold = tmp_path / "hot.duckdb", tmp_path / "cold"
    with DuckDBStore(hot) as store:
        commit(store, spec, recs, [r.natural_key() for r in recs])
        migrate(store, cold, retention_days=2, now=datetime.combine(DAY0 + timedelta(days=6), datetime.min.time(), UTC))
        assert store.count("trades") == len(recs) * 2 // 6
    expected = spec.frame([encoded(r) for r in recs], [r.natural_key() for r in recs])
    return hot, cold, expected


def test_read_filters_by_exchange_symbol_market_and_time(stores: tuple[Path, Path, pl.DataFrame]) -> None:
    hot, cold, expected = stores
    everything = read("trade", duckdb_path=hot, parquet_root=cold)
    assert_frame_equal(everything, expected.sort("ts", "key"))
    start, end = datetime(2024, 8, 3, 12, tzinfo=UTC), datetime(2024, 8, 5, 6, tzinfo=UTC)  # spans cold and hot
    got = read("trade", "okx", "ETH-USDT", start, end, market="perp", duckdb_path=hot, parquet_root=cold)
    want = expected.filter(pl.col("exchange") == "okx", pl.col("symbol") == "ETH-USDT", pl.col("market") == "perp",
                           pl.col("ts") >= start, pl.col("ts") < end).sort("ts", "key")  # fmt: skip
    assert got.height > 0
    assert_frame_equal(got, want)
    assert read("trade", exchange="nope", duckdb_path=hot, parquet_root=cold).height == 0
    by_str = read("trade", start="2024-08-06", end=20_000_000_000_000_000, duckdb_path=hot, parquet_root=cold)
    assert by_str.height == expected.filter(pl.col("ts") >= datetime(2024, 8, 6, tzinfo=UTC)).height
    assert to_datetime(date(2024, 8, 1)) == to_datetime(1_722_470_400_000_000) == to_datetime("2024-08-01T00:00:00")
    empty = read("depth", duckdb_path=hot, parquet_root=cold)
    assert empty.height == 0 and empty.columns == table_spec("depth").names


def test_cold_only_when_the_hot_file_is_missing_or_skipped(stores: tuple[Path, Path, pl.DataFrame]) -> None:
    hot, cold, expected = stores
    n_cold = expected.height * 4 // 6
    with QuerySurface(hot, cold, hot="skip") as q:
        assert q.sql("SELECT count(*) AS n FROM trades")["n"][0] == n_cold
    with QuerySurface(hot.with_name("nope.duckdb"), cold) as q:
        assert q.hot_status == "missing"
        assert q.sql("SELECT count(*) AS n FROM trades")["n"][0] == n_cold
    assert not hot.with_name("nope.duckdb").exists()


def test_a_running_writer_locks_the_hot_file_and_the_query_falls_back_to_cold(
    stores: tuple[Path, Path, pl.DataFrame],
) -> None:
    hot, cold, expected = stores
    holder = subprocess.Popen([sys.executable, "-c", "import duckdb, time\n"
                               f"c = duckdb.connect({str(hot)!r}); print('held', flush=True); time.sleep(60)"],
                              stdout=subprocess.PIPE, text=True)  # fmt: skip
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "held"
        with QuerySurface(hot, cold) as q:
            assert q.hot_status == "locked" and "held by another process" in q.hot_note
            assert q.sql("SELECT count(*) AS n FROM trades")["n"][0] == expected.height * 4 // 6
        with pytest.raises(HotStoreLocked):
            QuerySurface(hot, cold, hot="require")
        args = ["query", "SELECT count(*) AS n FROM trades", "--duckdb", str(hot), "--parquet-root", str(cold)]
        result = CliRunner().invoke(app, [*args, "--format", "csv"])
        assert result.exit_code == 0 and "answering from cold Parquet only" in result.stderr
        assert result.stdout.splitlines() == ["n", str(expected.height * 4 // 6)]
        assert CliRunner().invoke(app, [*args, "--hot", "require"]).exit_code == 2
    finally:
        holder.kill()
        holder.wait()


def test_cli_query_table_csv_and_parquet_outputs(stores: tuple[Path, Path, pl.DataFrame], tmp_path: Path) -> None:
    hot, cold, expected = stores
    base = ["--duckdb", str(hot), "--parquet-root", str(cold)]
    sql = "SELECT exchange, count(*) AS n FROM trades GROUP BY ALL ORDER BY exchange"
    table = CliRunner().invoke(app, ["query", sql, *base])
    assert table.exit_code == 0, table.output
    assert "binance" in table.stdout and "okx" in table.stdout and str(expected.height // 2) in table.stdout
    out = tmp_path / "t.parquet"
    result = CliRunner().invoke(app, ["store", "query", "SELECT * FROM trades ORDER BY key", *base,
                                      "--format", "parquet", "--output", str(out)])  # fmt: skip
    assert result.exit_code == 0, result.output
    assert_frame_equal(pl.read_parquet(out), expected.sort("key"))
    csv_out = tmp_path / "t.csv"
    result = CliRunner().invoke(app, ["query", "SELECT key, price FROM trades ORDER BY key", *base, "-f", "csv",
                                      "-o", str(csv_out)])  # fmt: skip
    assert result.exit_code == 0, result.output
    assert_frame_equal(pl.read_csv(csv_out, infer_schema=False), expected.select("key", "price").sort("key"))
    bad = CliRunner().invoke(app, ["query", "SELECT nope FROM trades", *base])
    assert bad.exit_code == 1 and "nope" in bad.stderr
    assert CliRunner().invoke(app, ["query", "SELECT 1", *base, "-f", "parquet"]).exit_code != 0


def test_csv_writes_book_levels_as_json_and_a_memory_root_works(tmp_path: Path) -> None:
    spec = table_spec("depth")
    d = Depth(exchange="okx", market="spot", symbol="BTC-USDT", instrument="BTC-USDT", ts=1_722_470_400_000_000,
              recv_ts=1_722_470_400_000_001, bids=msgspec.Raw(b'[["1.5","2","0","1"]]'), asks=msgspec.Raw(b"[]"),
              is_snapshot=True)  # fmt: skip
    hot, root = tmp_path / "hot.duckdb", f"memory://mp-{uuid.uuid4().hex}/cold"
    with DuckDBStore(hot) as store:
        commit(store, spec, [d], ["d1"])
        assert migrate(store, root, retention_days=1).rows_migrated == 1
    result = CliRunner().invoke(app, ["query", "SELECT key, bids, asks FROM depths", "--duckdb", str(hot),
                                      "--parquet-root", root, "-f", "csv"])  # fmt: skip
    assert result.exit_code == 0, result.output
    rows = pl.read_csv(result.stdout.encode())
    assert rows["key"].to_list() == ["d1"]
    assert json.loads(rows["bids"][0]) == [["1.5", "2", "0", "1"]] and json.loads(rows["asks"][0]) == []
    assert read("depth", duckdb_path=hot, parquet_root=root)["key"].to_list() == ["d1"]
