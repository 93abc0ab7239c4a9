"""Storage benchmarks.

Section ``migration``: hot -> cold migration throughput (rows/s) of a trades table of N rows (default 1M) in
a real DuckDB file, every row in a partition older than the retention (2 exchanges x 2 markets x 4 days =
16 partitions), moved to hive-partitioned zstd Parquet on local disk: export, read-back verification (count
and content hash), rename, manifest, delete from hot. Also reports the files' size and a full query of the
result through the query surface.
    .venv/bin/python bench/bench_store.py --section migration [--rows 1000000]

Section ``insert``: rows/s of Arrow batches of normalised trades (the fixture's Binance spot trades, tiled with
distinct keys and increasing ``ts``) into a DuckDB file through ``DuckDBStore.commit`` (unique, natural-key
anti-join, position update, one transaction per batch) and through a plain ``INSERT ... SELECT * FROM arrow``
for reference, and into ClickHouse (a ``LocalClickHouseServer``) through ``ClickHouseStore.commit``
(``insert_arrow`` with its deduplication token, batch marks), in batches of 100k and 1M rows.
    .venv/bin/python bench/bench_store.py --section insert [--insert-rows 2000000] [--rounds 3]

Section ``end_to_end``: records/s from JetStream to committed rows. N trades plus 20% depth updates are
published to a local nats-server first; then a ``StorageWriter`` (batch_rows 50,000, batch_seconds 1.0) is timed
from its start until its committed position reaches the stream's last sequence, into DuckDB and into ClickHouse,
once per delivery path: ``lean`` (``marketprism.bus.delivery``, the writer's default) and ``nats-py`` (a nats-py
subscription, ``fast_delivery=False``). ``--profile`` adds one cProfile'd DuckDB round per path (not counted) and
prints where the event loop's time goes.
    .venv/bin/python bench/bench_store.py --section end_to_end [--e2e-trades 500000] [--rounds 3] [--profile]
        [--delivery lean,nats-py] [--no-clickhouse]
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import pstats
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run as a script: make the bench package importable

import msgspec
import polars as pl

from bench.bench_publish import sample_records
from marketprism.bus.publisher import JetStreamPublisher, connect
from marketprism.bus.server import LocalNatsServer
from marketprism.bus.stream import MarketDataStream, ensure_stream
from marketprism.records import Record
from marketprism.store.clickhouse import ClickHouseStore
from marketprism.store.clickhouse_server import LocalClickHouseServer
from marketprism.store.duck import DuckDBStore
from marketprism.store.migrate import migrate
from marketprism.store.query import QuerySurface
from marketprism.store.schema import table_spec
from marketprism.store.writer import StorageWriter

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


def bench_migration(args: argparse.Namespace) -> None:
    rows = args.rows
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


# ---------------------------------------------------------------------------------------------------------------
# insert: Arrow batches of normalised trades into DuckDB / ClickHouse


def fixture_trades(rows: int) -> pl.DataFrame:
    """``rows`` normalised trades: the fixture's Binance spot trades (as ``bench_publish.sample_records``), decoded by
    ``TableSpec.frame`` and tiled, each with a distinct ``trade_id``/key and ``ts`` increasing by 1 µs a row."""
    spec = table_spec("trade")
    base = sample_records("trade", 500)
    df = spec.frame([msgspec.json.encode(r) for r in base], [r.natural_key() for r in base])
    df = pl.concat([df] * (rows // df.height + 1)).head(rows)
    i = pl.int_range(0, rows, dtype=pl.Int64)
    t0 = pl.lit(base[0].ts, pl.Int64)
    to_ts = [pl.col(c).cast(pl.Datetime("us")).dt.replace_time_zone("UTC") for c in ("ts", "recv_ts")]
    return (
        df.with_columns(trade_id=i.cast(pl.String), ts=t0 + i, recv_ts=t0 + i + 900)
        .with_columns(*to_ts)
        .with_columns(key=pl.format("trade:{}:{}:{}:{}", "exchange", "market", "symbol", "trade_id"))
        .select(spec.names)
    )


def _batches(df: pl.DataFrame, size: int) -> list[pl.DataFrame]:
    return [df.slice(o, size) for o in range(0, df.height, size)]


def _duck_round(df: pl.DataFrame, size: int, how: str) -> float:
    spec = table_spec("trade")
    batches = _batches(df, size)
    arrows = [b.to_arrow() for b in batches]
    with tempfile.TemporaryDirectory(prefix="mp-bench-insert-") as tmp, DuckDBStore(Path(tmp) / "hot.duckdb") as st:
        st.ensure_tables([spec])
        t0 = time.perf_counter()
        seq = 0
        for b, a in zip(batches, arrows, strict=True):
            if how == "commit":  # unique + natural-key anti-join + position update, one transaction
                assert st.commit([(spec, b)], "bench", seq + b.height, seq + 1) == b.height
            else:  # the floor: a plain INSERT of the Arrow batch, one transaction
                st.con.register("_arrow", a)
                st.con.execute("INSERT INTO trades SELECT * FROM _arrow").fetchall()
                st.con.unregister("_arrow")
            seq += b.height
        elapsed = time.perf_counter() - t0
        assert st.count("trades") == df.height
    return df.height / elapsed


def _clickhouse_round(df: pl.DataFrame, size: int, url: str, database: str) -> float:
    spec = table_spec("trade")
    batches = _batches(df, size)
    with ClickHouseStore(url, database=database) as st:
        st.ensure_tables([spec])
        t0 = time.perf_counter()
        seq = 0
        for b in batches:  # write-ahead mark, insert_arrow with its dedup token, committed mark
            st.commit([(spec, b)], "bench", seq + b.height, seq + 1)
            seq += b.height
        elapsed = time.perf_counter() - t0
        assert st.count("trades") == df.height
        st.client.command(f"DROP DATABASE `{database}`")
    return df.height / elapsed


def bench_insert(args: argparse.Namespace) -> None:
    rows, sizes = args.insert_rows, (100_000, 1_000_000)
    t0 = time.perf_counter()
    df = fixture_trades(rows)
    built = time.perf_counter() - t0
    print(f"insert: {rows:,} normalised trades (fixture frames tiled, distinct keys, increasing ts), built in "
          f"{built:.1f} s; best of {args.rounds} rounds, a fresh table each round")  # fmt: skip
    print("| target | batch rows | rows/s |\n|---|---:|---:|")
    duck = (("commit", "DuckDB `DuckDBStore.commit`"), ("plain", "DuckDB plain `INSERT ... SELECT * FROM arrow`"))
    for how, label in duck:
        for size in sizes:
            best = max(_duck_round(df, size, how) for _ in range(args.rounds))
            print(f"| {label} | {size:,} | {best:,.0f} |", flush=True)
    with LocalClickHouseServer() as server:
        for size in sizes:
            best = max(_clickhouse_round(df, size, server.url, f"bench_{size}_{r}") for r in range(args.rounds))
            print(f"| ClickHouse `ClickHouseStore.commit` | {size:,} | {best:,.0f} |", flush=True)


# ---------------------------------------------------------------------------------------------------------------
# end_to_end: JetStream -> StorageWriter -> committed rows


class _TimedStore:
    """Wraps a store and adds up the time spent in ``commit`` (which runs in a worker thread)."""

    def __init__(self, store: Any):
        self.inner, self.backend, self.commit_s = store, store.backend, 0.0

    def resume(self, consumer: str) -> tuple[int, int | None]:
        return self.inner.resume(consumer)  # type: ignore[no-any-return]

    def position(self, consumer: str) -> int:
        return self.inner.position(consumer)  # type: ignore[no-any-return]

    def commit(self, *a: Any, **kw: Any) -> int:
        t0 = time.perf_counter()
        try:
            return self.inner.commit(*a, **kw)  # type: ignore[no-any-return]
        finally:
            self.commit_s += time.perf_counter() - t0

    def close(self) -> None:
        self.inner.close()


def _mixed_records(trades: int) -> list[Record]:
    """``trades`` trades with a depth update after every 4th (depth = 20% of the records), in time order as a live
    feed sends them (``ts`` advancing 100 µs a record; the tiled fixture records would otherwise repeat the same
    400 timestamps, which no live feed does and which makes every batch's natural-key check span the whole table)."""
    import msgspec

    t, d = sample_records("trade", trades), sample_records("depth", trades // 4)
    out: list[Record] = []
    t0 = 1_723_161_255_000_000
    for i, r in enumerate(t):
        out.append(r)
        if i % 4 == 3:
            out.append(d[i // 4])
    return [msgspec.structs.replace(r, ts=t0 + 100 * n, recv_ts=t0 + 100 * n + 900) for n, r in enumerate(out)]


async def _writer_round(
    nc: Any,
    store: Any,
    stream: MarketDataStream,
    consumer: str,
    last: int,
    max_ack_pending: int | None,
    lean: bool,
    batch_rows: int = 50_000,
) -> tuple[float, Any]:
    timed = _TimedStore(store)
    w = StorageWriter(nc, timed, consumer=consumer, stream=stream, batch_rows=batch_rows, batch_seconds=1.0,
                      max_ack_pending=max_ack_pending, fast_delivery=lean)  # fmt: skip
    t0 = time.perf_counter()
    task = asyncio.create_task(w.run())
    while w.stats.position < last:
        if task.done():
            task.result()
        await asyncio.sleep(0.005)
    elapsed = time.perf_counter() - t0
    w.stop()
    await task
    assert w.stats.stored == last and w.stats.dead_lettered == 0, w.stats
    assert w.fast_delivery == lean, "the lean delivery path was not used"
    return elapsed, (w, timed)


async def _end_to_end(args: argparse.Namespace, ch_url: str | None) -> None:
    records = _mixed_records(args.e2e_trades)
    stream = MarketDataStream(max_bytes=8 << 30)
    with tempfile.TemporaryDirectory(prefix="mp-bench-e2e-") as tmp, LocalNatsServer(Path(tmp) / "nats") as server:
        try:
            await _end_to_end_on(args, ch_url, records, stream, tmp, server.url)
        finally:  # the server's word on any disconnect (a slow consumer) before its directory goes
            for line in server.log_path.read_text(errors="replace").splitlines():
                if "slow consumer" in line.lower() or "[ERR]" in line or "[WRN]" in line:
                    print("  nats-server:", line[:300])


async def _end_to_end_on(
    args: argparse.Namespace, ch_url: str | None, records: list[Record], stream: MarketDataStream, tmp: str, url: str
) -> None:
    nc = await connect(url)
    js = nc.jetstream()
    await ensure_stream(js, stream)
    pub = JetStreamPublisher(nc, buffer_size=len(records) + 1).start()
    t0 = time.perf_counter()
    for r in records:
        pub.submit(r)
        if pub.buffered > 50_000:
            await asyncio.sleep(0)
    await pub.flush(600)
    await pub.close()
    assert pub.stats.published == len(records) and pub.stats.dropped == 0, pub.stats
    last = int((await js.stream_info(stream.name)).state.last_seq)
    print(f"end_to_end: {len(records):,} records ({args.e2e_trades:,} trades + {len(records) - args.e2e_trades:,} "
          f"depth) published first in {time.perf_counter() - t0:.1f} s; stream last seq {last:,}; "
          f"StorageWriter batch_rows={args.batch_rows:,} batch_seconds=1.0; best of {args.rounds} rounds")  # fmt: skip
    print("| store | delivery | records | start -> position = last seq (s) | records/s | of which in commit (s) | "
          "delivery gaps |")  # fmt: skip
    print("|---|---|---:|---:|---:|---:|---:|")
    backends = ["duckdb"] + (["clickhouse"] if ch_url else [])
    deliveries = [d.strip() for d in args.delivery.split(",") if d.strip()]
    for backend, delivery in [(b, d) for b in backends for d in deliveries]:
        best: tuple[float, float] | None = None
        gaps = 0
        profiled = args.profile and backend == "duckdb"
        for r in range(args.rounds + profiled):
            consumer = f"bench_{backend}_{delivery.replace('-', '')}_{r}"
            if backend == "duckdb":
                store: Any = DuckDBStore(Path(tmp) / f"{consumer}.duckdb")
            else:
                store = ClickHouseStore(ch_url or "", database=consumer)
            prof = cProfile.Profile() if profiled and r == 0 else None
            if prof:
                prof.enable()
            elapsed, (w, timed) = await _writer_round(nc, store, stream, consumer, last, args.max_ack_pending,
                                                      delivery == "lean", args.batch_rows)  # fmt: skip
            gaps += w.stats.delivery_gaps
            if prof:
                prof.disable()
                print(f"  [profiled round, not counted: {elapsed:.2f} s, commit {timed.commit_s:.2f} s, "
                      f"{w.stats.batches} batches]")  # fmt: skip
                pstats.Stats(prof).sort_stats("tottime").print_stats(25)
                pstats.Stats(prof).sort_stats("cumulative").print_stats(40)
            else:
                if best is None or elapsed < best[0]:
                    best = (elapsed, timed.commit_s)
            if backend == "clickhouse":
                store.client.command(f"DROP DATABASE `{consumer}`")
            store.close()
            await js.delete_consumer(stream.name, consumer)
        if best is None:  # --rounds 0: the profiled round only
            continue
        print(f"| {backend} | {delivery} | {last:,} | {best[0]:.2f} | {last / best[0]:,.0f} | {best[1]:.2f} | {gaps} |",
              flush=True)  # fmt: skip
    await nc.close()


def bench_end_to_end(args: argparse.Namespace) -> None:
    if args.no_clickhouse:
        asyncio.run(_end_to_end(args, None))
        return
    with LocalClickHouseServer() as server:
        asyncio.run(_end_to_end(args, server.url))


SECTIONS = {"migration": bench_migration, "insert": bench_insert, "end_to_end": bench_end_to_end}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--section", choices=sorted(SECTIONS), default="migration")
    ap.add_argument("--rows", type=int, default=1_000_000, help="migration: rows in the hot table")
    ap.add_argument("--insert-rows", type=int, default=2_000_000, help="insert: rows per round")
    ap.add_argument("--e2e-trades", type=int, default=500_000, help="end_to_end: trades (plus 20%% depth)")
    ap.add_argument("--rounds", type=int, default=3, help="insert, end_to_end: best of this many rounds")
    ap.add_argument("--profile", action="store_true", help="end_to_end: one extra cProfile'd DuckDB round")
    ap.add_argument("--max-ack-pending", type=int, default=None, help="end_to_end: the writer's (default: its own)")
    ap.add_argument("--batch-rows", type=int, default=50_000, help="end_to_end: the writer's batch_rows")
    ap.add_argument("--no-clickhouse", action="store_true", help="end_to_end: DuckDB only")
    ap.add_argument("--delivery", default="lean,nats-py", help="end_to_end: delivery paths, comma-separated "
                    "(lean: marketprism.bus.delivery; nats-py: a nats-py subscription)")  # fmt: skip
    args = ap.parse_args()
    SECTIONS[args.section](args)


if __name__ == "__main__":
    main()
