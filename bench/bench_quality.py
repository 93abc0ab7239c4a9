"""Data-quality benchmark: checkpoint time for N rows (default 1M) per record type.

For each table, N synthetic rows that pass every expectation (2 exchanges x 2 markets x 5 symbols, contiguous
trade ids, linked book_delta sequences, 10-level books) are built straight into the stored schema (polars), then:

* ``frames``: the suite's frame (decimal casts, level facts, ``recv_lag_s``...) plus, for trades and book_deltas,
  the derived continuity frame (``marketprism.quality.checks``);
* ``pandas``: the frames converted to pandas (what GX validates);
* ``gx``: the suite's GX checkpoint run (``Checkpoint.run``; Data Docs not included), then the derived suite's;
* ``docs``: building the Data Docs pages of the run.

    .venv/bin/python bench/bench_quality.py [--rows 1000000] [--tables trades,books]
"""

from __future__ import annotations

import argparse
import gc
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import polars as pl

from marketprism.quality.checks import Rules, book_delta_continuity, row_frame, trade_continuity
from marketprism.store.schema import all_specs

SYMBOLS = ["BTC-USDT", "ETH-USDT", "SOL-USDT", "XRP-USDT", "DOGE-USDT"]
VENUES = [("binance", "spot"), ("binance", "perpetual"), ("okx", "spot"), ("okx", "perpetual")]


def synthetic(table: str, n: int) -> pl.DataFrame:
    """``n`` clean rows of ``table`` in the stored schema, 20 streams (venue x symbol) interleaved."""
    spec = next(s for s in all_specs() if s.table == table)
    i = pl.int_range(0, n, eager=True)
    stream = i % (len(VENUES) * len(SYMBOLS))
    step = i // (len(VENUES) * len(SYMBOLS))  # position within its stream
    now_us = int(datetime.now(UTC).timestamp() * 1e6)
    base = pl.DataFrame({"stream": stream, "step": step, "i": i})
    ex = pl.Series([v[0] for v in VENUES])
    mk = pl.Series([v[1] for v in VENUES])
    sym = pl.Series(SYMBOLS)
    df = base.with_columns(
        ex.gather(pl.Series(stream // len(SYMBOLS))).alias("exchange"),
        mk.gather(pl.Series(stream // len(SYMBOLS))).alias("market"),
        sym.gather(pl.Series(stream % len(SYMBOLS))).alias("symbol"),
        ((now_us - (n - pl.col("i")) * 1000) * 1).cast(pl.Datetime("us")).dt.replace_time_zone("UTC").alias("ts"),
    ).with_columns(
        pl.col("symbol").str.replace("-", "").alias("instrument"),
        (pl.col("ts") + pl.duration(microseconds=2000)).alias("recv_ts"),
    )
    price = (60000 + (pl.col("step") % 100)).cast(pl.String)
    cols: dict[str, Any] = {}
    if table == "trades":
        cols = {"trade_id": (pl.col("step") + 1000).cast(pl.String), "price": price, "size": pl.lit("0.01"),
                "side": pl.when(pl.col("i") % 2 == 0).then(pl.lit("buy")).otherwise(pl.lit("sell")),
                "aggregate": pl.lit(False)}  # fmt: skip
    elif table in ("depths", "book_deltas", "books"):
        levels = pl.List(pl.List(pl.String))
        variants = pl.Series([0, 1, 2]).gather(pl.Series(step % 3))  # the book shifts by a tick, 3 shapes
        bid_books = pl.Series([[[str(60000 - k - v), "1.5"] for k in range(10)] for v in range(3)], dtype=levels)
        ask_books = pl.Series([[[str(60011 + k + v), "2"] for k in range(10)] for v in range(3)], dtype=levels)
        bids, asks = pl.lit(bid_books.gather(variants)), pl.lit(ask_books.gather(variants))
        cols = {"bids": bids, "asks": asks, "seq": pl.col("step") + 10, "is_snapshot": pl.col("step") == 0}
        if table == "book_deltas":
            cols |= {"prev_seq": pl.when(pl.col("step") == 0).then(None).otherwise(pl.col("step") + 9),
                     "resync": pl.lit(False), "reason": pl.lit("")}  # fmt: skip
        if table == "books":
            cols = {"bids": bids, "asks": asks, "seq": pl.col("step") + 10, "depth": pl.lit(10)}
    elif table == "tickers":
        ask = (60200 + pl.col("step") % 100).cast(pl.String)
        cols = {"bid_price": price, "bid_size": pl.lit("1"), "ask_price": ask, "ask_size": pl.lit("2"),
                "seq": pl.col("step")}  # fmt: skip
    elif table == "statuses":
        cols = {"event": pl.lit("connected"), "connection": pl.col("i").cast(pl.String)}
    elif table == "funding_rates":
        cols = {"funding_rate": pl.lit("0.0001"), "predicted_rate": pl.lit("0.00012"), "mark_price": price}
    elif table == "open_interests":
        cols = {"open_interest": (1000 + pl.col("step")).cast(pl.String), "open_interest_value": pl.lit("6.1e7")}
    elif table == "liquidations":
        cols = {"side": pl.lit("sell"), "price": price, "size": pl.lit("0.5")}
    elif table == "long_short_ratios":
        cols = {"kind": pl.lit("global_account"), "period": pl.lit("5m"), "long_short_ratio": pl.lit("1.5"),
                "long_ratio": pl.lit("0.6"), "short_ratio": pl.lit("0.4")}  # fmt: skip
    elif table == "volatility_indices":
        cols = {"resolution": pl.lit("60"), "open": pl.lit("50.1"), "high": pl.lit("51"), "low": pl.lit("49.5"),
                "close": pl.lit("50.5")}  # fmt: skip
    df = df.with_columns(**cols).with_columns(pl.concat_str([pl.lit(table), "exchange", "market", "symbol", "i"],
                                                            separator=":").alias("key"))  # fmt: skip
    out = []
    for c in spec.columns:
        expr = pl.col(c.name) if c.name in df.columns else pl.lit(c.default)
        out.append(expr.cast(c.polars_type).alias(c.name))
    return df.select(out)


def bench(table: str, n: int, docs: Path) -> dict[str, float]:
    from marketprism.quality.runner import _checkpoint, _context, _outcome, fingerprint
    from marketprism.quality.suites import build_suites

    df = synthetic(table, n)
    rules = Rules()
    t0 = time.perf_counter()
    frames = {table: row_frame(table, df, rules)}
    if table == "trades":
        frames["trade_continuity"] = trade_continuity(df, rules)
    if table == "book_deltas":
        frames["book_delta_continuity"] = book_delta_continuity(df)
    t1 = time.perf_counter()
    pandas = {name: f.to_pandas() for name, f in frames.items()}
    t2 = time.perf_counter()
    ctx = _context(docs)
    specs = {s.name: s for s in build_suites(rules)}
    fp = fingerprint(rules)
    ok = True
    checkpoints = {name: _checkpoint(ctx, specs[name], fp) for name in frames}  # stored once: not timed
    t3 = time.perf_counter()
    ids = []
    for name, frame in pandas.items():
        result = checkpoints[name].run(batch_parameters={"dataframe": frame})
        key, validation = next(iter(result.run_results.items()))
        ids.append(key)
        outcome = _outcome(name, len(frame), validation)
        ok = ok and outcome.success
        if not outcome.success:
            print(f"  {name}: unexpected failures {[(f.check, f.examples[:2]) for f in outcome.failures]}")
    t4 = time.perf_counter()
    ctx.build_data_docs(resource_identifiers=ids)
    t5 = time.perf_counter()
    del df, frames, pandas
    gc.collect()
    return {"frames": t1 - t0, "pandas": t2 - t1, "gx": t4 - t3, "docs": t5 - t4, "total": (t2 - t0) + (t5 - t3),
            "ok": float(ok)}  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--tables", default=",".join(s.table for s in all_specs()))
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        print("| table | rows | frames (s) | to pandas (s) | GX checkpoint (s) | Data Docs (s) | total (s) | rows/s |")
        print("|---|---:|---:|---:|---:|---:|---:|---:|")
        for table in args.tables.split(","):
            r = bench(table, args.rows, Path(tmp) / "gx")
            assert r["ok"], f"{table}: clean synthetic rows failed an expectation"
            extra = " (+ continuity)" if table in ("trades", "book_deltas") else ""
            print(f"| {table}{extra} | {args.rows:,} | {r['frames']:.2f} | {r['pandas']:.2f} | {r['gx']:.2f} | "
                  f"{r['docs']:.2f} | {r['total']:.2f} | {args.rows / r['total']:,.0f} |", flush=True)  # fmt: skip


if __name__ == "__main__":
    main()
