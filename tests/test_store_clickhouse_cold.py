"""ClickHouse as the hot store, with cold Parquet: migration (verified, crash-safe) and the query surface over both.

Against a real ClickHouse 26.9 server (chDB's HTTP interface, see conftest), real Parquet files, real DuckDB.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import polars as pl
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from polars.testing import assert_frame_equal
from typer.testing import CliRunner

from marketprism.cli import app
from marketprism.records import RECORD_TYPES, Trade
from marketprism.store import read
from marketprism.store.clickhouse import ClickHouseStore
from marketprism.store.migrate import PAUSE_ENV, cutoff_date, migrate
from marketprism.store.query import QuerySurface
from marketprism.store.schema import TableSpec, table_spec
from tests.store_util import encoded, records
from tests.test_migrate import OLD_DAYS, SPEC, TODAY, VENUES, cold_rows, dataset, frame, trade, typed

FAR_FUTURE = datetime(2300, 1, 1, tzinfo=UTC)


@pytest.fixture
def ch(clickhouse_server) -> Iterator[ClickHouseStore]:
    store = ClickHouseStore(f"{clickhouse_server.url}/cold_{uuid.uuid4().hex[:10]}")
    try:
        yield store
    finally:
        store.client.command(f"DROP DATABASE IF EXISTS `{store.database}`")
        store.close()


def url(store: ClickHouseStore) -> str:
    return f"http://{store._connect['host']}:{store._connect['port']}/{store.database}"


def fill(store: ClickHouseStore, df: pl.DataFrame, seq: int = 1, spec: TableSpec = SPEC) -> None:
    store.commit([(spec, df)], "test", seq, seq)


def hot_rows(store: ClickHouseStore) -> pl.DataFrame:
    return typed(store.query("SELECT * FROM trades FINAL"))


def assert_converged(store: ClickHouseStore, cold: Path, original: pl.DataFrame, cutoff: date) -> None:
    """union(hot FINAL, cold) == original exactly, no key twice (not even unmerged in hot), hot only inside the
    retention, no temp files, the ClickHouse manifest lists exactly the files."""
    h, c = hot_rows(store), cold_rows(cold)
    union = pl.concat([h, c])
    assert union["key"].n_unique() == union.height
    assert_frame_equal(union.sort("key"), typed(original).sort("key"))
    assert store.client.command("SELECT count() - uniqExact(key) FROM trades") == 0  # physically, without FINAL
    assert h.filter(pl.col("ts").dt.date() < cutoff).height == 0
    assert c.filter(pl.col("ts").dt.date() >= cutoff).height == 0
    assert not list(cold.rglob("*.tmp"))
    manifest = store.query("SELECT path, rows FROM _migrations FINAL ORDER BY path")
    on_disk = sorted(str(p.relative_to(cold)) for p in cold.rglob("*.parquet"))
    assert manifest["path"].to_list() == on_disk
    assert manifest["rows"].sum() == c.height
    assert not [t for t in store.client.query("SHOW TABLES").result_rows if t[0].startswith("_migration_delete_")]


# --- migration ----------------------------------------------------------------------------------------------


def test_old_partitions_move_from_clickhouse_to_hive_parquet_and_a_rerun_does_nothing(
    ch: ClickHouseStore, tmp_path: Path
) -> None:
    cold = tmp_path / "cold"
    original = dataset(30)
    fill(ch, original)
    fill(ch, original.head(50), seq=2)  # a replay outside the bus's window: stored twice, FINAL collapses it
    assert ch.client.command("SELECT count() FROM trades") == original.height + 50
    summary = migrate(ch, cold, retention_days=7)
    n_old = len(OLD_DAYS) * len(VENUES)
    assert (summary.partitions, summary.files_written, summary.errors) == (n_old, n_old, 0)
    assert summary.rows_migrated == summary.rows_deleted == n_old * 30
    assert_converged(ch, cold, original, cutoff_date(7))
    one = cold / "trades" / "exchange=odd%2Fex%3D1" / "market=spot" / f"date={OLD_DAYS[0]}" / "part-0.parquet"
    assert one.exists()
    again = migrate(url(ch), cold, retention_days=7)  # by URL this time
    assert (again.partitions, again.rows_migrated, again.files_written) == (0, 0, 0)
    assert_converged(ch, cold, original, cutoff_date(7))


def test_odd_partition_values_round_trip_through_clickhouse_and_the_paths(ch: ClickHouseStore, tmp_path: Path) -> None:
    cold = tmp_path / "cold"
    names = ["", "__HIVE_DEFAULT_PARTITION__", "NULL", "a/b", "%41", "x=y", "ü", "*?[", ".", "'q", " s ", "\x00"]
    original = frame([trade(i, OLD_DAYS[0], name, names[-1 - i]) for i, name in enumerate(names)])
    fill(ch, original)
    assert migrate(ch, cold, retention_days=7).files_written == len(names)
    assert_converged(ch, cold, original, cutoff_date(7))


def test_late_data_is_another_part_and_other_content_under_a_cold_key_is_held_back(
    ch: ClickHouseStore, tmp_path: Path
) -> None:
    cold = tmp_path / "cold"
    original = dataset(10)
    fill(ch, original)
    migrate(ch, cold, retention_days=7)
    day, (ex, mk) = OLD_DAYS[1], VENUES[0]
    late = frame([trade(900_000 + i, day, ex, mk) for i in range(5)])
    already_cold = typed(original).filter(pl.col("exchange") == ex, pl.col("ts").dt.date() == day).head(3)
    fill(ch, pl.concat([late, already_cold.select(late.columns)]), seq=2)  # late rows + a replay of cold rows
    summary = migrate(ch, cold, retention_days=7)
    assert (summary.partitions, summary.rows_migrated, summary.rows_deleted, summary.files_written) == (1, 5, 8, 1)
    part_dir = cold / "trades" / f"exchange={ex}" / f"market={mk}" / f"date={day}"
    assert sorted(p.name for p in part_dir.iterdir()) == ["part-0.parquet", "part-1.parquet"]
    assert_converged(ch, cold, pl.concat([original, late]), cutoff_date(7))

    conflicting = frame([trade(900_001, day, ex, mk, price="1.00")])  # same natural key, other price
    fill(ch, conflicting, seq=3)
    cold_before = cold_rows(cold)
    held = migrate(ch, cold, retention_days=7)
    assert (held.rows_migrated, held.rows_deleted, held.held_back) == (0, 0, 1)
    assert hot_rows(ch).filter(pl.col("key") == conflicting["key"][0])["price"].to_list() == ["1.00"]
    assert_frame_equal(cold_rows(cold), cold_before)
    assert cold_rows(cold).filter(pl.col("key") == conflicting["key"][0])["price"].to_list() == ["61837.63"]


def test_a_file_that_does_not_verify_is_never_committed_and_nothing_is_deleted(
    ch: ClickHouseStore, tmp_path: Path
) -> None:
    import duckdb

    cold = tmp_path / "cold"
    original = frame([trade(i, OLD_DAYS[0]) for i in range(6)])
    fill(ch, original)
    con = duckdb.connect()

    def tamper(step: str, part: object) -> None:
        if step == "export":
            (tmp,) = cold.rglob("*.tmp")
            price = "CASE WHEN trade_id = '3' THEN '0' ELSE price END AS price"
            con.execute(f"COPY (SELECT * REPLACE ({price}) FROM read_parquet('{tmp}')) TO '{tmp}.x' (FORMAT parquet)")
            Path(f"{tmp}.x").replace(tmp)

    summary = migrate(ch, cold, retention_days=7, on_step=tamper)
    assert summary.errors == 1 and summary.rows_deleted == 0 and summary.files_written == 0
    assert "hash" in (summary.details[0].error or "")
    assert not list(cold.rglob("*.parquet*"))
    assert_frame_equal(hot_rows(ch).sort("key"), typed(original).sort("key"))
    assert migrate(ch, cold).errors == 0
    assert_converged(ch, cold, original, cutoff_date(7))


def _run_migrate_cli(store: ClickHouseStore, cold: Path, env: dict[str, str]) -> subprocess.Popen[str]:
    cmd = [sys.executable, "-m", "marketprism.cli", "store", "migrate", "--retention-days", "7",
           "--backend", "clickhouse", "--clickhouse", url(store), "--parquet-root", str(cold)]  # fmt: skip
    return subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            cwd=Path(__file__).resolve().parents[1])  # fmt: skip


@pytest.mark.parametrize("step", ["export", "verify", "commit", "delete"])
def test_a_kill_at_any_step_then_a_rerun_converges(ch: ClickHouseStore, tmp_path: Path, step: str) -> None:
    cold = tmp_path / "cold"
    original = dataset(20)
    fill(ch, original)
    proc = _run_migrate_cli(ch, cold, {**os.environ, PAUSE_ENV: step})
    assert proc.stderr is not None
    deadline = time.monotonic() + 60
    line = ""
    while time.monotonic() < deadline and "MIGRATE PAUSED AT" not in line:
        line = proc.stderr.readline()
        assert line or proc.poll() is None, f"migration ended before {step}: {proc.communicate()}"
    assert f"MIGRATE PAUSED AT {step}" in line
    proc.send_signal(signal.SIGKILL)
    proc.wait(10)

    h, c = hot_rows(ch), cold_rows(cold)
    assert h.height == original.height  # nothing deleted
    tmp_files = list(cold.rglob("*.tmp"))
    if step in ("export", "verify"):
        assert c.height == 0 and len(tmp_files) == 1
    else:
        assert c.height == 20 and not tmp_files  # the first partition is committed cold (and still hot)
    if step == "delete":  # the helper table of the killed delete is still there, filled
        helpers = [t for (t,) in ch.client.query("SHOW TABLES").result_rows if t.startswith("_migration_delete_")]
        assert len(helpers) == 1 and ch.client.command(f"SELECT count() FROM `{helpers[0]}`") == 20

    result = _run_migrate_cli(ch, cold, dict(os.environ))
    out, err = result.communicate(timeout=120)
    assert result.returncode == 0, err
    summary = json.loads(out)
    assert summary["errors"] == 0 and summary["partitions"] == len(OLD_DAYS) * len(VENUES)
    assert_converged(ch, cold, original, cutoff_date(7))


def test_migration_runs_beside_the_writer_on_the_same_store(ch: ClickHouseStore, tmp_path: Path) -> None:
    cold = tmp_path / "cold"
    original = dataset(5)
    fill(ch, original)
    seen: list[str] = []

    def write_meanwhile(step: str, part: object) -> None:  # the writer keeps committing during every step
        seen.append(step)
        fill(ch, frame([trade(50_000 + len(seen), TODAY)]), seq=100 + len(seen))

    summary = migrate(ch, cold, retention_days=7, on_step=write_meanwhile)
    assert summary.rows_migrated == len(OLD_DAYS) * len(VENUES) * 5 and summary.errors == 0
    assert set(seen) == {"export", "verify", "commit", "delete"}
    extra = frame([trade(50_000 + i, TODAY) for i in range(1, len(seen) + 1)])
    assert_converged(ch, cold, pl.concat([original, extra]), cutoff_date(7))


def test_cli_migrate_takes_the_backend_from_the_configuration(
    ch: ClickHouseStore, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cold = tmp_path / "cold"
    fill(ch, dataset(3))
    monkeypatch.setenv("MARKETPRISM_STORAGE__HOT_BACKEND", "clickhouse")
    monkeypatch.setenv("MARKETPRISM_STORAGE__CLICKHOUSE_URL", url(ch))
    monkeypatch.setenv("MARKETPRISM_STORAGE__PARQUET_PATH", str(cold))
    result = CliRunner().invoke(app, ["store", "migrate", "--details"])
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    assert summary["rows_migrated"] == len(OLD_DAYS) * len(VENUES) * 3 and len(summary["details"]) == 9
    assert hot_rows(ch).height == len(VENUES) * 2 * 3
    monkeypatch.delenv("MARKETPRISM_STORAGE__CLICKHOUSE_URL")
    bad = CliRunner().invoke(app, ["store", "migrate"])
    assert bad.exit_code == 1 and "clickhouse_url" in bad.stderr


# --- the query surface with ClickHouse as the hot store -----------------------------------------------------


@pytest.mark.parametrize("data_type", sorted(map(str, RECORD_TYPES)))
def test_every_type_through_clickhouse_then_parquet_and_back_in_one_query(ch: ClickHouseStore, data_type: str) -> None:
    """Cold rows (migrated from ClickHouse) and hot rows (still in ClickHouse): one query returns exactly their
    union, every field intact."""
    spec = table_spec(data_type)

    @settings(max_examples=6, deadline=None, suppress_health_check=[HealthCheck.too_slow,
                                                                    HealthCheck.function_scoped_fixture])  # fmt: skip
    @given(st.lists(records(spec), max_size=6), st.lists(records(spec), max_size=6))
    def union(cold_recs: list, hot_recs: list) -> None:
        ch.client.command(f"DROP TABLE IF EXISTS `{spec.table}`")
        ch._tables.discard(spec.table)
        ch.ensure_tables([spec])
        tag = uuid.uuid4().hex[:6]
        cold_keys = [f"c{tag}{i}" for i in range(len(cold_recs))]
        hot_keys = [f"h{tag}{i}" for i in range(len(hot_recs))]
        with tempfile.TemporaryDirectory() as tmp:
            cold = Path(tmp) / "cold"
            if cold_recs:
                fill(ch, spec.frame([encoded(r) for r in cold_recs], cold_keys), 1, spec)
            summary = migrate(ch, cold, retention_days=0, now=FAR_FUTURE, tables=[spec.table])
            assert summary.errors == 0 and summary.rows_migrated == summary.rows_deleted == len(cold_recs)
            if hot_recs:
                fill(ch, spec.frame([encoded(r) for r in hot_recs], hot_keys), 2, spec)
            with QuerySurface(parquet_root=cold, clickhouse=ch) as q:
                assert q.hot_status == "clickhouse"
                got = q.sql(f'SELECT * FROM "{spec.table}" ORDER BY key')
                assert got.columns == spec.names
                assert_frame_equal(q.read(data_type).sort("key"), got)
        by_key = dict(zip(cold_keys + hot_keys, cold_recs + hot_recs, strict=True))
        assert [encoded(r) for r in spec.rows_to_records(got)] == [encoded(by_key[k]) for k in sorted(by_key)]

    union()


DAY0 = date(2024, 8, 1)


def qtrade(i: int, day: date, exchange: str, symbol: str, market: str) -> Trade:
    ts = int(datetime(day.year, day.month, day.day, tzinfo=UTC).timestamp()) * 1_000_000 + i % 20 * 3_600_000_000
    return Trade(exchange=exchange, market=market, symbol=symbol, instrument=symbol.replace("-", ""), ts=ts,
                 recv_ts=ts + 1, trade_id=str(i), price=f"{60000 + i}.5", size="0.01", side="buy")  # fmt: skip


@pytest.fixture
def spanning(ch: ClickHouseStore, tmp_path: Path) -> tuple[ClickHouseStore, Path, pl.DataFrame]:
    """Trades over 6 days, 2 exchanges, 2 symbols, 2 markets: the first 4 days cold, the rest hot in ClickHouse
    (with a replayed duplicate of some hot rows, which only FINAL collapses)."""
    recs = [
        qtrade(n * 100 + i, DAY0 + timedelta(days=d), ex, sym, mk)
        for n, (d, ex, sym, mk) in enumerate(
            (d, ex, sym, mk)
            for d in range(6)
            for ex in ("binance", "okx")
            for sym in ("BTC-USDT", "ETH-USDT")
            for mk in ("spot", "perp")
        )
        for i in range(5)
    ]
    expected = SPEC.frame([encoded(r) for r in recs], [r.natural_key() for r in recs])
    fill(ch, expected)
    cold = tmp_path / "cold"
    summary = migrate(ch, cold, retention_days=2, now=datetime(2024, 8, 7, tzinfo=UTC))
    assert summary.rows_migrated == len(recs) * 4 // 6
    fill(ch, expected.tail(7), seq=2)  # stored twice in ClickHouse, unmerged
    assert ch.client.command("SELECT count() FROM trades") == len(recs) * 2 // 6 + 7
    return ch, cold, expected


def test_sql_over_clickhouse_hot_and_parquet_cold_is_exactly_the_union(
    spanning: tuple[ClickHouseStore, Path, pl.DataFrame],
) -> None:
    ch, cold, expected = spanning
    with QuerySurface(parquet_root=cold, clickhouse=url(ch)) as q:
        assert q.hot_status == "clickhouse"
        got = q.sql("SELECT * FROM trades ORDER BY key")
        assert_frame_equal(got, expected.sort("key"))
        per_day = q.sql("SELECT CAST(ts AS DATE) AS d, count(*) AS n FROM trades GROUP BY ALL ORDER BY d")
        assert per_day["n"].to_list() == [expected.height // 6] * 6
        joined = q.sql("SELECT count(*) AS n FROM trades a JOIN trades b USING (key)")  # the view read twice
        assert joined["n"][0] == expected.height
        assert q.sql("SELECT count(*) AS n FROM depths")["n"][0] == 0  # a table on neither side
    with QuerySurface(parquet_root=cold, clickhouse=url(ch), hot="skip") as q:
        assert q.sql("SELECT count(*) AS n FROM trades")["n"][0] == expected.height * 4 // 6


def test_read_pushes_its_filters_to_clickhouse_and_spans_hot_and_cold(
    spanning: tuple[ClickHouseStore, Path, pl.DataFrame],
) -> None:
    ch, cold, expected = spanning
    everything = read("trade", clickhouse=url(ch), parquet_root=cold)
    assert_frame_equal(everything, expected.sort("ts", "key"))
    start, end = datetime(2024, 8, 3, 12, tzinfo=UTC), datetime(2024, 8, 5, 6, tzinfo=UTC)  # spans cold and hot
    got = read("trade", "okx", "ETH-USDT", start, end, market="perp", clickhouse=url(ch), parquet_root=cold)
    want = expected.filter(pl.col("exchange") == "okx", pl.col("symbol") == "ETH-USDT", pl.col("market") == "perp",
                           pl.col("ts") >= start, pl.col("ts") < end).sort("ts", "key")  # fmt: skip
    assert got.height > 0 and got["ts"].max() >= datetime(2024, 8, 5, tzinfo=UTC)  # hot rows among them
    assert_frame_equal(got, want)
    with QuerySurface(parquet_root=cold, clickhouse=ch) as q:
        hot_only = q.read("trade", start=datetime(2024, 8, 5, tzinfo=UTC))
        want_hot = expected.filter(pl.col("ts") >= datetime(2024, 8, 5, tzinfo=UTC)).sort("ts", "key")
        assert_frame_equal(hot_only, want_hot)
        assert q.read("trade", exchange="nope").height == 0
        assert q.read("depth").columns == table_spec("depth").names


def test_cli_query_with_clickhouse_hot(
    spanning: tuple[ClickHouseStore, Path, pl.DataFrame], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    ch, cold, expected = spanning
    base = ["--backend", "clickhouse", "--clickhouse", url(ch), "--parquet-root", str(cold)]
    result = CliRunner().invoke(app, ["query", "SELECT exchange, count(*) AS n FROM trades GROUP BY ALL ORDER BY 1",
                                      *base, "-f", "csv"])  # fmt: skip
    assert result.exit_code == 0, result.output
    half = expected.height // 2
    assert result.stdout.splitlines() == ["exchange,n", f"binance,{half}", f"okx,{half}"]
    out = tmp_path / "t.parquet"
    result = CliRunner().invoke(app, ["store", "query", "SELECT * FROM trades ORDER BY key", *base, "-f", "parquet",
                                      "-o", str(out)])  # fmt: skip
    assert result.exit_code == 0, result.output
    assert_frame_equal(pl.read_parquet(out), expected.sort("key"))
    bad = CliRunner().invoke(app, ["query", "SELECT nope FROM trades", *base])
    assert bad.exit_code == 1 and "nope" in bad.stderr
    monkeypatch.setenv("MARKETPRISM_STORAGE__HOT_BACKEND", "clickhouse")  # the backend from the configuration
    monkeypatch.setenv("MARKETPRISM_STORAGE__CLICKHOUSE_URL", url(ch))
    monkeypatch.setenv("MARKETPRISM_STORAGE__PARQUET_PATH", str(cold))
    result = CliRunner().invoke(app, ["query", "SELECT count(*) AS n FROM trades", "-f", "csv"])
    assert result.exit_code == 0, result.output
    assert result.stdout.splitlines() == ["n", str(expected.height)]


def test_hot_to_cold_flow_migrates_a_clickhouse_hot_store_directly(
    prefect_api, ch: ClickHouseStore, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import asyncio

    from flows.hot_to_cold import hot_to_cold

    cold = tmp_path / "cold"
    original = dataset(4)
    fill(ch, original)
    monkeypatch.setenv("MARKETPRISM_STORAGE__HOT_BACKEND", "clickhouse")
    monkeypatch.setenv("MARKETPRISM_STORAGE__CLICKHOUSE_URL", url(ch))
    # No NATS at this URL: with ClickHouse hot the flow never asks the writer, so it does not matter.
    summary = asyncio.run(hot_to_cold(nats_url="nats://127.0.0.1:1", parquet_root=str(cold), retention_days=7))
    assert summary["rows_migrated"] == summary["rows_deleted"] == len(OLD_DAYS) * len(VENUES) * 4
    assert summary["errors"] == 0
    assert_converged(ch, cold, original, cutoff_date(7))
