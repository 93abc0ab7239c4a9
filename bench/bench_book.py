#!/usr/bin/env python
"""Order-book throughput on one core: recorded real depth frames through parse, sequence check, apply.

Each **implementation** is a factory ``Workload -> BookRun`` registered in ``IMPLEMENTATIONS``; a
``BookRun`` has ``reset()`` (untimed: fresh books, REST snapshot loaded) and ``run()`` (timed: every frame
of the workload, returns the frames handled) and ``sanity()`` (counts from the last pass, printed under
the table). Add cryptofeed, order-book or others side by side by adding factories; every implementation
gets the same frames in the same run, interleaved round-robin.

What the MarketPrism implementation times, per frame: ``parser.parse(frame)`` (the venue parser, levels
kept as raw JSON) -> ``SymbolBooks.feed(depth)`` (sequence / bridge check, levels decoded and applied to
the ``L2Book``, crossed check, OKX CRC32 checksum verified on every message that carries one) -> best
bid and best ask read from the book (the book is readable after every frame). No output records are
built (``on_delta`` unset): that is the processor's publishing cost, measured separately.

Workloads (``../shared/fixtures``): Binance spot and USDⓈ-M BTCUSDT 2024-08-08 depth@100ms (400 frames
each, with their REST snapshots), OKX ``books`` for 3 instruments 2022-05-13 (290 frames, snapshots in the
stream, every frame checksummed), Bybit ``orderbook.500`` XRPUSDT (50 frames).

    .venv/bin/python bench/bench_book.py                      # print the markdown table
    .venv/bin/python bench/bench_book.py --rounds 9 --target-s 0.5
    .venv/bin/python bench/bench_book.py --profile okx_books  # cProfile of the MarketPrism run
"""

from __future__ import annotations

import argparse
import cProfile
import gc
import os
import platform
import pstats
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bench.fixtures import fixtures_root  # noqa: E402
from marketprism.book.snapshots import binance_depth_snapshot  # noqa: E402
from marketprism.book.sync import SymbolBooks  # noqa: E402
from marketprism.records import Depth  # noqa: E402
from marketprism.venues import VENUES  # noqa: E402

RECV_TS = 1_723_161_300_000_000


@dataclass(frozen=True)
class RestSnapshot:
    market: str
    instrument: str
    body: bytes


@dataclass(frozen=True)
class Workload:
    name: str
    title: str
    venue: str  # marketprism.venues name
    frames: tuple[str, ...]
    snapshots: tuple[RestSnapshot, ...] = ()  # applied untimed before every pass (Binance)
    checksums: bool = False  # the frames carry a venue checksum, verified on every message


def _lines(rel: str) -> list[str]:
    return [line for line in (fixtures_root() / rel).read_text(encoding="utf-8").split("\n") if line]


def _rest(market: str, instrument: str, rel: str) -> tuple[RestSnapshot, ...]:
    return (RestSnapshot(market, instrument, (fixtures_root() / rel).read_bytes()),)


def workloads() -> list[Workload]:
    b = "binance/"
    okx = ["okx/books_BTC-USDT_2022-05-13.jsonl", "okx/books_UNI-USD-SWAP_2022-05-13.jsonl",
           "okx/books_BTC-USD-220527_2022-05-13.jsonl"]  # fmt: skip
    return [
        Workload("binance_spot_depth", "Binance spot depth (BTCUSDT 2024)", "binance_spot",
                 tuple(_lines(b + "spot_depthUpdate_BTCUSDT_2024-08-08_first400.jsonl")),
                 _rest("spot", "BTCUSDT", b + "spot_rest_depth_BTCUSDT_limit1000_2024-08-08.json")),
        Workload("binance_usdm_depth", "Binance USDⓈ-M depth (BTCUSDT 2024)", "binance_usdm",
                 tuple(_lines(b + "usdm_depthUpdate_BTCUSDT_2024-08-08_first400.jsonl")),
                 _rest("perpetual", "BTCUSDT", b + "usdm_rest_depth_BTCUSDT_limit1000_2024-08-08.json")),
        Workload("okx_books", "OKX books, checksum every message (3 instruments)", "okx_spot",
                 tuple(f for rel in okx for f in _lines(rel)), checksums=True),
        Workload("bybit_orderbook", "Bybit orderbook.500 (XRPUSDT)", "bybit_linear",
                 tuple(_lines("bybit/v5_orderbook500_XRPUSDT_2024-12-01.jsonl"))),
    ]  # fmt: skip


class BookRun(Protocol):
    def reset(self) -> None: ...
    def run(self) -> int: ...
    def sanity(self) -> dict[str, Any]: ...


class MarketPrismRun:
    """MarketPrism: venue parser -> SymbolBooks (sync machine + L2Book) -> best bid/ask read per frame."""

    def __init__(self, workload: Workload):
        self.w = workload
        self.books = SymbolBooks()

    def reset(self) -> None:
        self.parser = VENUES[self.w.venue].new_parser()  # a parser per pass, as per connection
        self.books = SymbolBooks()
        for s in self.w.snapshots:
            self.books.snapshot(binance_depth_snapshot(s.body, market=s.market, instrument=s.instrument,
                                                       recv_ts=RECV_TS))  # fmt: skip

    def run(self) -> int:
        parse = self.parser.parse
        books = self.books
        feed = books.feed
        machines: dict[str, Any] = {}  # symbol -> its sync machine, looked up once
        tops = 0
        for frame in self.w.frames:
            for record in parse(frame, RECV_TS):
                feed(record)
                if type(record) is Depth:
                    machine = machines.get(record.symbol)
                    if machine is None:
                        machine = machines[record.symbol] = books.get((record.exchange, record.market, record.symbol))
                    if machine.has_book:  # the top of book, readable after every frame
                        book = machine.book
                        tops += book.best_bid() is not None and book.best_ask() is not None
        return len(self.w.frames)

    def sanity(self) -> dict[str, Any]:
        t = self.books.totals()
        return {"applied": t.applied, "snapshots": t.snapshots, "dropped_before_bridge": t.dropped_before_bridge,
                "gaps": t.gaps, "checksum_ok": t.checksum_ok, "checksum_failed": t.checksum_failed,
                "resyncs": t.resyncs_total}  # fmt: skip


# name -> factory; implementations are measured side by side in the order listed here.
IMPLEMENTATIONS: dict[str, Callable[[Workload], BookRun]] = {
    "MarketPrism": MarketPrismRun,
}


def measure(run: BookRun, target_s: float) -> float:
    """Frames/s of repeated whole passes (each after an untimed reset) for at least ``target_s``."""
    frames = 0
    elapsed = 0.0
    while elapsed < target_s:
        run.reset()
        gc.collect()
        t0 = time.perf_counter()
        frames += run.run()
        elapsed += time.perf_counter() - t0
    return frames / elapsed


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--target-s", type=float, default=0.3, help="timed seconds per round and implementation")
    ap.add_argument("--only", nargs="*", help="workload names")
    ap.add_argument("--profile", metavar="WORKLOAD", help="cProfile MarketPrism on one workload and exit")
    args = ap.parse_args()
    if hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {0})
    loads = [w for w in workloads() if not args.only or w.name in args.only]

    if args.profile:
        run = MarketPrismRun(next(w for w in loads if w.name == args.profile))
        prof = cProfile.Profile()
        for _ in range(50):
            run.reset()
            prof.enable()
            run.run()
            prof.disable()
        pstats.Stats(prof).sort_stats("tottime").print_stats(15)
        return

    results: dict[str, dict[str, list[float]]] = {w.name: {name: [] for name in IMPLEMENTATIONS} for w in loads}
    sanity: dict[str, dict[str, dict[str, Any]]] = {w.name: {} for w in loads}
    for w in loads:
        runs = {name: factory(w) for name, factory in IMPLEMENTATIONS.items()}
        for _ in range(args.rounds):
            for name, run in runs.items():  # interleaved, so drift in machine speed hits all alike
                results[w.name][name].append(measure(run, args.target_s))
        for name, run in runs.items():
            run.reset()
            run.run()
            sanity[w.name][name] = run.sanity()

    print(f"- Date: {time.strftime('%a %b %d %H:%M:%S UTC %Y', time.gmtime())}")
    print(f"- Machine: {os.cpu_count()} CPUs, {platform.processor() or platform.machine()}, "
          f"{platform.platform()}; pinned to CPU 0; Python {platform.python_version()}")  # fmt: skip
    print(f"- Command: `.venv/bin/python bench/bench_book.py --rounds {args.rounds} --target-s {args.target_s}`")
    print()
    header = "| workload | frames | " + " | ".join(f"{name} best / median frames/s" for name in IMPLEMENTATIONS) + " |"
    print(header)
    print("|---|---:|" + "---:|" * len(IMPLEMENTATIONS))
    for w in loads:
        cells = []
        for name in IMPLEMENTATIONS:
            vals = results[w.name][name]
            cells.append(f"**{max(vals) / 1e3:,.1f}k** / {statistics.median(vals) / 1e3:,.1f}k")
        print(f"| {w.title} | {len(w.frames)} | " + " | ".join(cells) + " |")
    print()
    print("Sanity counts from an untimed pass:")
    for w in loads:
        for name, counts in sanity[w.name].items():
            print(f"- {w.title}, {name}: " + ", ".join(f"{k}={v}" for k, v in counts.items()))


if __name__ == "__main__":
    main()
