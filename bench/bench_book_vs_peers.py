"""Order books side by side, same frames, same run, one core: MarketPrism vs cryptofeed 2.4.1 vs order-book 0.6.1.

Per frame, every implementation parses the venue frame, checks the sequence (Binance) or verifies the checksum
(OKX, every message), applies the levels, and reads the top of the book (MarketPrism and order-book read the
best bid/ask after every frame; cryptofeed with no-op callbacks never reads its book, which favours it).
Books start from the recorded REST snapshot (untimed). Usage: .venv/bin/python bench/bench_book_vs_peers.py
"""

from __future__ import annotations

import gc
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench import bench_book, book_peers

# book_peers workload -> bench_book workload of the same frames
SAME_FRAMES = {"binance_spot_depth": "binance_spot_depth", "binance_usdm_depth": "binance_usdm_depth",
               "okx_books_checksum": "okx_books"}  # fmt: skip
PEER_NAMES = ("cryptofeed", "order-book", "order-book (float)")


def marketprism_pass(name: str) -> tuple[Callable[[], int], int]:
    workload = next(w for w in bench_book.workloads() if w.name == SAME_FRAMES[name])
    run = bench_book.MarketPrismRun(workload)

    def one() -> int:
        run.reset()
        gc.collect()
        t0 = time.perf_counter_ns()
        run.run()
        return time.perf_counter_ns() - t0

    return one, len(workload.frames)


def main(rounds: int = 7, repeats: int = 20) -> None:
    if hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {0})
    machine = platform.processor() or platform.machine()
    print(f"- Date: {time.strftime('%a %b %d %H:%M UTC %Y', time.gmtime())}; {os.cpu_count()} CPUs, {machine}, "
          f"pinned to CPU 0; Python {platform.python_version()}")  # fmt: skip
    print("- Command: `.venv/bin/python bench/bench_book_vs_peers.py`\n")
    print("| workload | MarketPrism | cryptofeed 2.4.1 | order-book 0.6.1 (Decimal) | order-book (float) "
          "| MP ÷ cryptofeed |")  # fmt: skip
    print("|---|---:|---:|---:|---:|---:|")
    for name in SAME_FRAMES:
        frames = len(book_peers.load_frames(name))
        impls: dict[str, Callable[[], int]] = {"MarketPrism": marketprism_pass(name)[0]}
        for peer in PEER_NAMES:
            factory = book_peers.PEERS[name].get(peer)
            if factory is not None:
                p = factory()
                impls[peer] = lambda p=p: book_peers.timed_ns(p)
        rates: dict[str, list[float]] = {k: [] for k in impls}
        for _ in range(rounds):
            for key, one in impls.items():  # interleaved: drift in machine speed hits all alike
                ns = sum(one() for _ in range(repeats))
                rates[key].append(frames * repeats / (ns / 1e9))
        best = {k: max(v) for k, v in rates.items()}
        med = {k: statistics.median(v) for k, v in rates.items()}

        def cell(k: str, best: dict[str, float] = best, med: dict[str, float] = med) -> str:
            return f"{best[k] / 1000:,.1f}k / {med[k] / 1000:,.1f}k" if k in best else "n/a"

        print(f"| {name} ({frames} frames) | **{cell('MarketPrism')}** | {cell('cryptofeed')} | {cell('order-book')} | "
              f"{cell('order-book (float)')} | {best['MarketPrism'] / best['cryptofeed']:.1f}× |")  # fmt: skip


if __name__ == "__main__":
    main()
