"""Hot -> cold migration on real DuckDB files and real Parquet: verified, idempotent, crash-safe, late data."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import uuid
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import duckdb
import msgspec
import polars as pl
import pytest
from polars.testing import assert_frame_equal
from typer.testing import CliRunner

from marketprism.records import Trade
from marketprism.store.cli import store_app
from marketprism.store.duck import DuckDBStore
from marketprism.store.migrate import PAUSE_ENV, ColdRoot, cutoff_date, encode_value, migrate
from marketprism.store.schema import table_spec

SPEC = table_spec("trade")
TODAY = datetime.now(UTC).date()
OLD_DAYS = [TODAY - timedelta(days=d) for d in (30, 20, 9)]
NEW_DAYS = [TODAY - timedelta(days=d) for d in (3, 0)]
VENUES = [("binance", "spot"), ("okx", "perp"), ("odd/ex=1", "spot")]  # the last needs its path encoded


def trade(i: int, day: date, exchange: str = "binance", market: str = "spot", price: str = "61837.63") -> Trade:
    midnight = int(datetime(day.year, day.month, day.day, tzinfo=UTC).timestamp()) * 1_000_000
    ts = midnight + i * 7_919_000 % 86_400_000_000
    return Trade(exchange=exchange, market=market, symbol="BTC-USDT", instrument="BTCUSDT", ts=ts, recv_ts=ts + 500,
                 trade_id=str(i), price=price, size="0.001", side="buy" if i % 2 else "sell",
                 first_trade_id=i if i % 3 else None)  # fmt: skip


def frame(recs: list[Trade]) -> pl.DataFrame:
    return SPEC.frame([msgspec.json.encode(r) for r in recs], [r.natural_key() for r in recs])


def dataset(per_partition: int = 40) -> pl.DataFrame:
    recs = [
        trade(n * 1000 + i, day, ex, mk)
        for n, (day, (ex, mk)) in enumerate((d, v) for d in OLD_DAYS + NEW_DAYS for v in VENUES)
        for i in range(per_partition)
    ]
    return frame(recs)


def fill(path: Path, df: pl.DataFrame) -> None:
    with DuckDBStore(path) as store:
        store.commit([(SPEC, df)], "test", 1)


def hot_rows(path: Path) -> pl.DataFrame:
    with DuckDBStore(path, read_only=True) as store:
        return typed(store.query("SELECT * FROM trades"))


def cold_rows(root: Path) -> pl.DataFrame:
    files = sorted(root.glob("trades/*/*/*/*.parquet"))
    if not files:
        return typed(pl.DataFrame(schema=SPEC.polars_schema() | {"key": pl.String}))
    con = duckdb.connect()
    con.execute("SET TimeZone = 'UTC'")
    return typed(pl.DataFrame(con.sql(f"SELECT * FROM read_parquet({[str(f) for f in files]})").to_arrow_table()))


def typed(df: pl.DataFrame) -> pl.DataFrame:
    return df.select(SPEC.names).cast({c.name: c.polars_type for c in SPEC.columns})


def assert_converged(hot: Path, cold: Path, original: pl.DataFrame, cutoff: date) -> None:
    """union(hot, cold) == original exactly, no key twice, hot only inside the retention, no temp files."""
    h, c = hot_rows(hot), cold_rows(cold)
    union = pl.concat([h, c])
    assert union["key"].n_unique() == union.height
    assert_frame_equal(union.sort("key"), typed(original).sort("key"))
    assert h.filter(pl.col("ts").dt.date() < cutoff).height == 0
    assert c.filter(pl.col("ts").dt.date() >= cutoff).height == 0
    assert not list(cold.rglob("*.tmp"))
    with DuckDBStore(hot, read_only=True) as store:
        manifest = store.query("SELECT path, rows FROM _migrations ORDER BY path")
    on_disk = sorted(str(p.relative_to(cold)) for p in cold.rglob("*.parquet"))
    assert manifest["path"].to_list() == on_disk
    assert manifest["rows"].sum() == c.height


def test_cutoff_and_partition_names() -> None:
    now = datetime(2024, 8, 20, 23, 59, tzinfo=UTC)
    assert cutoff_date(7, now) == date(2024, 8, 13)  # 2024-08-12 ended more than 7 days before now
    assert cutoff_date(0, now) == date(2024, 8, 20)
    with pytest.raises(ValueError):
        cutoff_date(-1)
    assert encode_value("a/b=c d") == "a%2Fb%3Dc%20d"
    assert encode_value("__HIVE_DEFAULT_PARTITION__") != "__HIVE_DEFAULT_PARTITION__"
    root = ColdRoot("/x/cold")
    assert root.partition_dir("trades", "odd/ex", "spot", date(2024, 1, 2)) == (
        "/x/cold/trades/exchange=odd%2Fex/market=spot/date=2024-01-02"
    )


def test_any_exchange_or_market_string_survives_the_directory_names(tmp_path: Path) -> None:
    hot, cold = tmp_path / "hot.duckdb", tmp_path / "cold"
    names = ["", "__HIVE_DEFAULT_PARTITION__", "NULL", "a/b", "%41", "x=y", "ü", "*?[", ".", "..", "'q", " s ", "\x00"]
    original = frame([trade(i, OLD_DAYS[0], name, names[-1 - i]) for i, name in enumerate(names)])
    fill(hot, original)
    assert migrate(hot, cold, retention_days=7).files_written == len(names)
    assert_converged(hot, cold, original, cutoff_date(7))
    con = duckdb.connect()  # and through the hive reader: the path's values are the rows' values
    got = con.sql(f"SELECT exchange, market FROM read_parquet('{cold}/trades/*/*/*/*.parquet', hive_partitioning = "
                  "true, hive_types = {'exchange': VARCHAR, 'market': VARCHAR}) ORDER BY ALL").fetchall()  # fmt: skip
    assert got == sorted((n, names[-1 - i]) for i, n in enumerate(names))


def test_old_partitions_move_to_hive_parquet_and_a_rerun_does_nothing(tmp_path: Path) -> None:
    hot, cold = tmp_path / "hot.duckdb", tmp_path / "cold"
    original = dataset()
    fill(hot, original)
    summary = migrate(hot, cold, retention_days=7)
    n_old = len(OLD_DAYS) * len(VENUES)
    assert (summary.partitions, summary.files_written, summary.errors) == (n_old, n_old, 0)
    assert summary.rows_migrated == summary.rows_deleted == n_old * 40
    assert summary.rows_per_s > 0
    assert_converged(hot, cold, original, cutoff_date(7))
    day = OLD_DAYS[0]
    one = cold / "trades" / "exchange=odd%2Fex%3D1" / "market=spot" / f"date={day}" / "part-0.parquet"
    assert one.exists()
    again = migrate(hot, cold, retention_days=7)
    assert (again.partitions, again.rows_migrated, again.files_written) == (0, 0, 0)
    assert_converged(hot, cold, original, cutoff_date(7))


def test_late_data_becomes_another_part_without_repeating_cold_rows(tmp_path: Path) -> None:
    hot, cold = tmp_path / "hot.duckdb", tmp_path / "cold"
    original = dataset(10)
    fill(hot, original)
    migrate(hot, cold, retention_days=7)
    day, (ex, mk) = OLD_DAYS[1], VENUES[0]
    late = frame([trade(900_000 + i, day, ex, mk) for i in range(5)])
    already_cold = typed(original).filter(pl.col("exchange") == ex, pl.col("ts").dt.date() == day).head(3)
    with DuckDBStore(hot) as store:  # a replay outside the writer's ts window: rows already cold come back
        store.con.register("_late", pl.concat([late, already_cold.select(late.columns)]).to_arrow())
        store.con.execute("INSERT INTO trades SELECT * FROM _late")
    summary = migrate(hot, cold, retention_days=7)
    assert (summary.partitions, summary.rows_migrated, summary.rows_deleted, summary.files_written) == (1, 5, 8, 1)
    part_dir = cold / "trades" / f"exchange={ex}" / f"market={mk}" / f"date={day}"
    assert sorted(p.name for p in part_dir.iterdir()) == ["part-0.parquet", "part-1.parquet"]
    assert_converged(hot, cold, pl.concat([original, late]), cutoff_date(7))


def test_a_hot_row_whose_key_is_cold_with_other_content_is_held_back_never_lost(tmp_path: Path) -> None:
    hot, cold = tmp_path / "hot.duckdb", tmp_path / "cold"
    day = OLD_DAYS[0]
    fill(hot, frame([trade(i, day) for i in range(4)]))
    migrate(hot, cold, retention_days=7)
    conflicting = frame([trade(1, day, price="1.00")])  # same natural key, other price
    with DuckDBStore(hot) as store:
        store.con.register("_c", conflicting.to_arrow())
        store.con.execute("INSERT INTO trades SELECT * FROM _c")
    summary = migrate(hot, cold, retention_days=7)
    assert (summary.rows_migrated, summary.rows_deleted, summary.held_back) == (0, 0, 1)
    assert hot_rows(hot)["price"].to_list() == ["1.00"]
    assert cold_rows(cold).height == 4


def test_a_file_that_does_not_verify_is_never_committed_and_nothing_is_deleted(tmp_path: Path) -> None:
    hot, cold = tmp_path / "hot.duckdb", tmp_path / "cold"
    original = frame([trade(i, OLD_DAYS[0]) for i in range(6)])
    fill(hot, original)
    con = duckdb.connect()

    def tamper(step: str, part: object) -> None:  # the written file loses a row's price between write and verify
        if step == "export":
            (tmp,) = cold.rglob("*.tmp")
            price = "CASE WHEN trade_id = '3' THEN '0' ELSE price END AS price"
            rows = f"SELECT * REPLACE ({price}) FROM read_parquet('{tmp}')"
            con.execute(f"COPY ({rows}) TO '{tmp}.x' (FORMAT parquet)")
            Path(f"{tmp}.x").replace(tmp)

    summary = migrate(hot, cold, retention_days=7, on_step=tamper)
    assert summary.errors == 1 and summary.rows_deleted == 0 and summary.files_written == 0
    assert "hash" in (summary.details[0].error or "")
    assert not list(cold.rglob("*.parquet*"))
    assert_frame_equal(hot_rows(hot).sort("key"), typed(original).sort("key"))
    result = CliRunner().invoke(store_app, ["migrate", "--duckdb", str(tmp_path / "nope.duckdb")])
    assert result.exit_code == 1 and "no hot store" in result.output
    assert not (tmp_path / "nope.duckdb").exists()
    assert migrate(hot, cold).errors == 0  # untampered, the next run moves it
    assert_converged(hot, cold, original, cutoff_date(7))


def test_migration_runs_inside_the_writer_process_on_its_open_store(tmp_path: Path) -> None:
    hot, cold = tmp_path / "hot.duckdb", tmp_path / "cold"
    original = dataset(5)
    with DuckDBStore(hot) as store:
        store.commit([(SPEC, original)], "test", 1)
        summary = migrate(store, cold, retention_days=7)
        assert summary.rows_migrated == len(OLD_DAYS) * len(VENUES) * 5
        store.commit([(SPEC, frame([trade(77, TODAY)]))], "test", 2)  # the writer keeps committing
    assert_converged(hot, cold, pl.concat([original, frame([trade(77, TODAY)])]), cutoff_date(7))


def test_any_fsspec_path_memory(tmp_path: Path) -> None:
    hot = tmp_path / "hot.duckdb"
    root = f"memory://mp-{uuid.uuid4().hex}/cold"
    original = dataset(5)
    fill(hot, original)
    summary = migrate(hot, root, retention_days=7)
    assert summary.files_written == len(OLD_DAYS) * len(VENUES) and summary.errors == 0
    cold = ColdRoot(root)
    files = cold.fs.glob(cold.table_glob("trades"))
    assert len(files) == summary.files_written
    con = duckdb.connect()
    cold.attach(con)
    got = con.sql(f"SELECT count(*), count(DISTINCT key) FROM read_parquet({[cold.url(f) for f in files]})").fetchall()
    assert got == [(summary.rows_migrated, summary.rows_migrated)]
    assert hot_rows(hot).height == original.height - summary.rows_migrated
    assert migrate(hot, root, retention_days=7).partitions == 0
    cold.fs.rm(cold.root, recursive=True)


def _run_migrate_cli(hot: Path, cold: Path, env: dict[str, str]) -> subprocess.Popen[str]:
    cmd = [sys.executable, "-m", "marketprism.cli", "store", "migrate", "--retention-days", "7",
           "--duckdb", str(hot), "--parquet-root", str(cold)]  # fmt: skip
    return subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            cwd=Path(__file__).resolve().parents[1])  # fmt: skip


@pytest.mark.parametrize("step", ["export", "verify", "commit", "delete"])
def test_a_kill_at_any_step_then_a_rerun_converges(tmp_path: Path, step: str) -> None:
    hot, cold = tmp_path / "hot.duckdb", tmp_path / "cold"
    original = dataset(20)
    fill(hot, original)
    proc = _run_migrate_cli(hot, cold, {**os.environ, PAUSE_ENV: step})
    assert proc.stderr is not None
    deadline = time.monotonic() + 60
    line = ""
    while time.monotonic() < deadline and "MIGRATE PAUSED AT" not in line:
        line = proc.stderr.readline()
        assert line or proc.poll() is None, f"migration ended before {step}: {proc.communicate()}"
    assert f"MIGRATE PAUSED AT {step}" in line
    proc.send_signal(signal.SIGKILL)
    proc.wait(10)

    # What the kill left: the first partition's work at that step, nothing lost.
    h, c = hot_rows(hot), cold_rows(cold)
    assert h.height == original.height  # no delete committed
    tmp_files = list(cold.rglob("*.tmp"))
    if step in ("export", "verify"):
        assert c.height == 0 and len(tmp_files) == 1
    else:
        assert c.height == 20 and not tmp_files  # the first partition is committed cold (and still hot)

    result = _run_migrate_cli(hot, cold, dict(os.environ))
    out, err = result.communicate(timeout=120)
    assert result.returncode == 0, err
    summary = json.loads(out)
    assert summary["errors"] == 0 and summary["partitions"] == len(OLD_DAYS) * len(VENUES)
    assert_converged(hot, cold, original, cutoff_date(7))


def test_cli_migrate_prints_a_json_summary_and_refuses_a_locked_file(tmp_path: Path) -> None:
    hot, cold = tmp_path / "hot.duckdb", tmp_path / "cold"
    fill(hot, dataset(3))
    args = ["migrate", "--duckdb", str(hot), "--parquet-root", str(cold)]
    holder = subprocess.Popen([sys.executable, "-c", "import duckdb, sys, time\n"
                               f"c = duckdb.connect({str(hot)!r}); print('held', flush=True); time.sleep(60)"],
                              stdout=subprocess.PIPE, text=True)  # fmt: skip
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "held"
        locked = CliRunner().invoke(store_app, [*args, "--retention-days", "7"])
        assert locked.exit_code == 2 and "held by another process" in locked.output
    finally:
        holder.kill()
        holder.wait()
    result = CliRunner().invoke(store_app, [*args, "--retention-days", "7", "--details"])
    assert result.exit_code == 0, result.output
    summary = json.loads(result.output)
    assert summary["rows_migrated"] == len(OLD_DAYS) * len(VENUES) * 3
    assert len(summary["details"]) == len(OLD_DAYS) * len(VENUES)
    everything = json.loads(CliRunner().invoke(store_app, [*args, "--retention-days", "0"]).output)
    assert everything["cutoff"] == str(TODAY) and everything["partitions"] == len(VENUES)  # TODAY - 3 moves too
