"""Storage benchmarks.

Section ``migration``: hot -> cold migration throughput (rows/s) of a trades table of N rows (default 1M) in
a real DuckDB file, every row in a partition older than the retention (2 exchanges x 2 markets x 4 days =
16 partitions), moved to hive-partitioned zstd Parquet on local disk: export, read-back verification (count
and content hash), rename, manifest, delete from hot. Also reports the files' size and a full query of the
result through the query surface.
    .venv/bin/python bench/bench_store.py --section migration [--rows 1000000]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import polars as pl

from marketprism.store.duck import DuckDBStore
from marketprism.store.migrate import migrate
from marketprism.store.query import QuerySurface
from marketprism.store.schema import table_spec

DAY0 = datetime(2024, 8, 1, tzinfo=UTC)
DAYS = 4


def trades_frame(rows: int) -> pl.DataFrame:
    """``rows`` realistic trades over 2 exchanges x 2 markets x 4 symbols x ``DAYS`` days."""
    spec = table_spec("trade")
    i = pl.int_range(0, rows, eager=True)
    ex = pl.when(i % 2 == 0).then(pl.lit("binance")).otherwise(pl.lit("okx"))
    mk = pl.when((i // 2) % 2 == 0).then(pl.lit("spot")).otherwise(pl.lit("perp"))
    sym = pl.format("{}-USDT", pl.lit(["BTC", "ETH", "SOL", "XRP"]).list.get((i // 4) % 4))
    span_us = DAYS * 86_400_000_000
    t0 = int(DAY0.timestamp()) * 1_000_000
    df = pl.DataFrame({"i": i}).with_columns(
        exchange=ex, market=mk, symbol=sym, instrument=sym.str.replace("-", ""),
        ts=pl.lit(t0) + (pl.col("i") * (span_us // rows)), trade_id=pl.col("i").cast(pl.String),
        price=pl.format("{}.{}", 60_000 + pl.col("i") % 5000, pl.col("i") % 100),
        size=pl.format("0.{}", pl.col("i") % 1000 + 1), side=pl.when(i % 3 == 0).then(pl.lit("buy")).otherwise(
            pl.lit("sell")), aggregate=pl.lit(False), first_trade_id=pl.lit(None, pl.Int64),
        last_trade_id=pl.lit(None, pl.Int64),
    )  # fmt: skip
    df = df.with_columns(recv_ts=pl.col("ts") + 900)
    df = df.with_columns(key=pl.format("trade:{}:{}:{}:{}", "exchange", "market", "symbol", "trade_id"))
    times = [pl.col(t).cast(pl.Datetime("us")).dt.replace_time_zone("UTC") for t in ("ts", "recv_ts")]
    return df.with_columns(*times).select(spec.names).cast({c.name: c.polars_type for c in spec.columns})


def bench_migration(rows: int) -> None:
    with tempfile.TemporaryDirectory(prefix="mp-bench-store-") as tmp:
        hot, cold = Path(tmp) / "hot.duckdb", Path(tmp) / "cold"
        df = trades_frame(rows)
        with DuckDBStore(hot) as store:
            store.ensure_tables([table_spec("trade")])
            store.con.register("_bench", df.to_arrow())
            store.con.execute("INSERT INTO trades SELECT * FROM _bench")
            store.con.unregister("_bench")
            store.con.execute("CHECKPOINT")
            assert store.count("trades") == rows
        hot_mb = hot.stat().st_size / 1e6
        t0 = time.perf_counter()
        summary = migrate(hot, cold, retention_days=1, now=DAY0 + timedelta(days=DAYS + 30))
        elapsed = time.perf_counter() - t0
        assert summary.errors == 0 and summary.rows_migrated == rows == summary.rows_deleted
        cold_mb = sum(f.stat().st_size for f in cold.rglob("*.parquet")) / 1e6
        t1 = time.perf_counter()
        with QuerySurface(hot, cold) as q:
            n = q.sql("SELECT count(*) AS n, count(DISTINCT key) AS k FROM trades").row(0)
        q_s = time.perf_counter() - t1
        assert n == (rows, rows)
        print(f"migration: {rows:,} trades, {summary.partitions} partitions, {summary.files_written} files")
        print(f"  hot DuckDB file {hot_mb:.1f} MB -> cold Parquet (zstd) {cold_mb:.1f} MB")
        print(f"  migrated in {elapsed:.2f} s: {rows / elapsed:,.0f} rows/s "
              "(export + read-back verify + rename + manifest + delete)")  # fmt: skip
        print(f"  count + distinct keys over the migrated table via the query surface: {q_s:.2f} s")


SECTIONS = {"migration": bench_migration}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--section", choices=sorted(SECTIONS), default="migration")
    ap.add_argument("--rows", type=int, default=1_000_000)
    args = ap.parse_args()
    SECTIONS[args.section](args.rows)


if __name__ == "__main__":
    main()
