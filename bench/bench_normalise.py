#!/usr/bin/env python
"""Normalisation throughput: MarketPrism's venue parsers vs cryptofeed 2.4.1, same frames, same run, one core.

What is timed, per frame (all on recorded real frames from ``../shared/fixtures``):

* **MarketPrism**: raw text frame in -> ``parser.parse(frame, recv_ts)`` -> ``msgspec.json.Encoder().encode``
  of every record (the bus payload bytes). A second column adds ``record.subject()`` and
  ``record.natural_key()`` (what the publisher needs for the subject and the ``Nats-Msg-Id`` header).
* **cryptofeed 2.4.1**: ``await feed.message_handler(frame, conn, timestamp)`` on its own feed objects with
  no-op async callbacks. For books it maintains its book, as it always does: Binance books are initialised
  through cryptofeed's own ``_snapshot`` path fed with the recorded REST snapshot (the snapshot is taken
  before each timed pass, untimed); OKX books start from the ``snapshot`` frame in the data.
  Symbol tables come from the recorded exchangeInfo / instruments REST bodies (no network).
* **orjson.loads** alone on the same frames: a floor for any Python parser that looks at every field.

Each measurement runs ``--rounds`` rounds (implementations interleaved round-robin); a round repeats the
whole frame set until ``--target-s`` seconds of timed work. Best and median frames/s are reported.
The process is pinned to one core (``os.sched_setaffinity``).

    .venv/bin/python bench/bench_normalise.py                 # print the table
    .venv/bin/python bench/bench_normalise.py --write         # also update bench/BENCHMARKS.md
    .venv/bin/python bench/bench_normalise.py --profile okx_books   # cProfile of one MarketPrism workload
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import gc
import gzip
import io
import os
import platform
import pstats
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import msgspec
import orjson

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # run as a script: make the bench package importable

from bench.fixtures import FIX  # noqa: E402
from marketprism.venues import VENUES  # noqa: E402

BENCH_MD = REPO / "bench" / "BENCHMARKS.md"
SECTION = "## Normalisation"
RECV_TS = 1_723_161_300_000_000  # a fixed receive time for every implementation (µs; cryptofeed gets seconds)


def jsonl(rel: str) -> list[str]:
    return [line for line in (FIX / rel).read_text(encoding="utf-8").split("\n") if line]


# --- workloads ------------------------------------------------------------------------------------------


@dataclass
class Workload:
    key: str
    title: str
    venue: str  # MarketPrism venue whose parser is timed
    files: list[str]
    kind: str  # "trade" | "depth"
    cf: Callable[[list[str]], CfHarness] | None = None  # cryptofeed harness factory (frames -> harness)
    cf_note: str = ""
    frames: list[str] = field(default_factory=list)

    def load(self) -> None:
        self.frames = [f for rel in self.files for f in jsonl(rel)]


# --- cryptofeed harnesses ---------------------------------------------------------------------------------


async def _noop(obj: Any, receipt_timestamp: float) -> None:
    return None


class _FixtureHttp:
    """Stands in for cryptofeed's HTTPAsyncConn: serves the recorded REST body to ``_snapshot``."""

    def __init__(self, body: str):
        self.body = body
        self.urls: list[str] = []

    async def read(self, address: str, **kwargs: Any) -> str:
        self.urls.append(address)
        return self.body

    async def close(self) -> None:
        return None


class CfHarness:
    """One cryptofeed feed object and its frames; ``reset`` (untimed) runs before every timed pass."""

    def __init__(self, feed: Any, frames: list[str], reset: Callable[[], Any] | None = None):
        self.feed = feed
        self.frames = frames
        self.reset = reset

    async def timed_pass(self) -> int:
        if self.reset is not None:
            await self.reset()
        handler = self.feed.message_handler
        ts = RECV_TS / 1e6
        t0 = time.perf_counter_ns()
        for frame in self.frames:
            await handler(frame, None, ts)
        return time.perf_counter_ns() - t0


def _cf_symbols_binance(cls: Any, exchange_info_rel: str) -> None:
    from cryptofeed.symbols import Symbols

    raw = (FIX / exchange_info_rel).read_bytes()
    info = orjson.loads(gzip.decompress(raw) if exchange_info_rel.endswith(".gz") else raw)
    Symbols.set(cls.id, *cls._parse_symbol_data(info))


def _cf_symbols_okx() -> dict[str, str]:
    from cryptofeed.exchanges import OKX
    from cryptofeed.symbols import Symbols

    data = [orjson.loads((FIX / f"okx/rest_public_instruments_{t}_2022-05-13.json").read_bytes())
            for t in ("SPOT", "SWAP", "FUTURES")]  # fmt: skip
    Symbols.set(OKX.id, *OKX._parse_symbol_data(data))
    return {inst: norm for norm, inst in Symbols.get(OKX.id)[0].items()}


def _cf_binance_class(futures: bool) -> Any:
    from cryptofeed.exchanges import Binance, BinanceFutures

    cls = BinanceFutures if futures else Binance
    _cf_symbols_binance(cls, "binance/usdm_rest_exchangeInfo_full_2021-07-22.json" if futures
                        else "binance/spot_rest_exchangeInfo_full_2021-10-12.json.gz")  # fmt: skip
    return cls


Factory = Callable[[list[str]], "CfHarness"]


def cf_binance_trades(futures: bool, symbols: list[str], callback: Any = _noop) -> Factory:
    def make(frames: list[str]) -> CfHarness:
        from cryptofeed.defines import TRADES

        cls = _cf_binance_class(futures)
        feed = cls(symbols=symbols, channels=[TRADES], callbacks={TRADES: callback})
        return CfHarness(feed, frames)

    return make


def as_agg_trade(frame: str) -> str:
    """cryptofeed 2.4.1 has no handler for Binance ``@trade`` (its TRADES channel is ``aggTrade``; it logs
    and drops ``"e":"trade"``). To time its real trade path on the same data, the event name and the id key
    are renamed (``"e":"trade"`` -> ``"e":"aggTrade"``, ``"t":`` -> ``"a":``); every other byte is kept."""
    return frame.replace('"e":"trade"', '"e":"aggTrade"', 1).replace(',"t":', ',"a":', 1)


def cf_binance_book(futures: bool, rest_rel: str, callback: Any = _noop) -> Callable[[list[str]], CfHarness]:
    def make(frames: list[str]) -> CfHarness:
        from cryptofeed.defines import L2_BOOK

        cls = _cf_binance_class(futures)
        feed = cls(symbols=["BTC-USDT-PERP" if futures else "BTC-USDT"], channels=[L2_BOOK],
                   callbacks={L2_BOOK: callback})  # fmt: skip
        feed.http_conn = _FixtureHttp((FIX / rest_rel).read_text(encoding="utf-8"))

        async def reset() -> None:  # a fresh book from the recorded REST snapshot, via cryptofeed's own path
            feed._reset()
            await feed._snapshot("BTCUSDT")

        return CfHarness(feed, frames, reset)

    return make


def cf_okx_books(checksum: bool, callback: Any = _noop) -> Callable[[list[str]], CfHarness]:
    def make(frames: list[str]) -> CfHarness:
        from cryptofeed.defines import L2_BOOK
        from cryptofeed.exchanges import OKX

        norm = _cf_symbols_okx()
        symbols = [norm[i] for i in ("BTC-USDT", "UNI-USD-SWAP", "BTC-USD-220527")]
        feed = OKX(symbols=symbols, channels=[L2_BOOK], callbacks={L2_BOOK: callback},
                   checksum_validation=checksum)  # fmt: skip
        return CfHarness(feed, frames)  # each file starts with its snapshot frame: no reset needed

    return make


USDM_AGG_SYMBOLS = ["SUSHI-USDT-PERP", "CTK-USDT-PERP", "AKRO-USDT-PERP", "KEEP-USDT-PERP"]
SPOT_REST = "binance/spot_rest_depth_BTCUSDT_limit1000_2024-08-08.json"
USDM_REST = "binance/usdm_rest_depth_BTCUSDT_limit1000_2024-08-08.json"
OKX_BOOKS = [
    "okx/books_BTC-USDT_2022-05-13.jsonl",
    "okx/books_UNI-USD-SWAP_2022-05-13.jsonl",
    "okx/books_BTC-USD-220527_2022-05-13.jsonl",
]

WORKLOADS = [
    Workload("binance_spot_trade", "Binance spot trade (`@trade`)", "binance_spot",
             ["binance/spot_trade_BTCUSDT_2024-08-08_first500.jsonl"], "trade",
             cf_binance_trades(False, ["BTC-USDT"]),
             "cryptofeed fed the same frames renamed to aggTrade (it has no `@trade` handler)"),
    Workload("binance_usdm_aggtrade", "Binance USDⓈ-M aggTrade", "binance_usdm",
             ["binance/usdm_aggTrade_2021-07-22.jsonl"], "trade",
             cf_binance_trades(True, USDM_AGG_SYMBOLS),
             "identical frames for both"),
    Workload("binance_spot_depth", "Binance spot depth", "binance_spot",
             ["binance/spot_depthUpdate_BTCUSDT_2024-08-08_first400.jsonl"], "depth",
             cf_binance_book(False, SPOT_REST),
             "cryptofeed keeps its Decimal book (snapshot via `_snapshot`, untimed)"),
    Workload("binance_usdm_depth", "Binance USDⓈ-M depth", "binance_usdm",
             ["binance/usdm_depthUpdate_BTCUSDT_2024-08-08_first400.jsonl"], "depth",
             cf_binance_book(True, USDM_REST),
             "cryptofeed keeps its Decimal book (snapshot via `_snapshot`, untimed)"),
    Workload("okx_books", "OKX books (3 instruments)", "okx_spot", OKX_BOOKS, "depth", cf_okx_books(False),
             "cryptofeed keeps its book, checksum_validation off (its default)"),
    Workload("okx_books_checksum", "OKX books, cryptofeed checksums on", "okx_spot", OKX_BOOKS, "depth",
             cf_okx_books(True), "cryptofeed keeps its book and validates every CRC32 checksum"),
]  # fmt: skip


# --- measurement ------------------------------------------------------------------------------------------


def mp_pass_factory(w: Workload, with_keys: bool) -> Callable[[], int]:
    parse = VENUES[w.venue].new_parser().parse
    encode = msgspec.json.Encoder().encode
    frames = w.frames

    def timed_pass() -> int:
        t0 = time.perf_counter_ns()
        for frame in frames:
            for rec in parse(frame, RECV_TS):
                encode(rec)
        return time.perf_counter_ns() - t0

    def timed_pass_keys() -> int:
        t0 = time.perf_counter_ns()
        for frame in frames:
            for rec in parse(frame, RECV_TS):
                encode(rec)
                rec.subject()
                rec.natural_key()
        return time.perf_counter_ns() - t0

    return timed_pass_keys if with_keys else timed_pass


def orjson_pass_factory(w: Workload) -> Callable[[], int]:
    loads = orjson.loads
    frames = w.frames

    def timed_pass() -> int:
        t0 = time.perf_counter_ns()
        for frame in frames:
            loads(frame)
        return time.perf_counter_ns() - t0

    return timed_pass


@dataclass
class Series:
    frames_per_pass: int
    rates: list[float] = field(default_factory=list)

    @property
    def best(self) -> float:
        return max(self.rates)

    @property
    def median(self) -> float:
        return statistics.median(self.rates)


Impls = dict[str, Callable[[], int]]


def run_rounds(impls: Impls, frames: int, rounds: int, target_s: float) -> dict[str, Series]:
    """Interleave implementations round-robin; each round repeats passes until target_s of timed work."""
    passes = {}
    for name, one in impls.items():
        one()  # warm-up (caches, symbol maps, first book)
        t = max(one(), 1)
        passes[name] = max(1, round(target_s * 1e9 / t))
    out = {name: Series(frames) for name in impls}
    for _ in range(rounds):
        for name, one in impls.items():
            gc.collect()
            total = sum(one() for _ in range(passes[name]))
            out[name].rates.append(frames * passes[name] / (total / 1e9))
    return out


def validate(w: Workload) -> dict[str, int]:
    """Untimed sanity pass: what each implementation produces on the frames (so the timing is not of a
    no-op path, e.g. a cryptofeed book that reset itself on a sequence gap)."""
    parser = VENUES[w.venue].new_parser()
    counts = {"mp_records": sum(len(parser.parse(f, RECV_TS)) for f in w.frames)}
    if w.cf is None or not HAVE_CRYPTOFEED:
        return counts
    n = 0

    async def count(obj: Any, receipt_timestamp: float) -> None:
        nonlocal n
        n += 1

    factory = {
        "binance_spot_trade": cf_binance_trades(False, ["BTC-USDT"], count),
        "binance_usdm_aggtrade": cf_binance_trades(True, USDM_AGG_SYMBOLS, count),
        "binance_spot_depth": cf_binance_book(False, SPOT_REST, count),
        "binance_usdm_depth": cf_binance_book(True, USDM_REST, count),
        "okx_books": cf_okx_books(False, count),
        "okx_books_checksum": cf_okx_books(True, count),
    }[w.key]
    h = factory(cf_frames(w))

    async def go() -> None:
        await h.timed_pass()

    asyncio.run(go())
    counts["cf_callbacks"] = n
    if w.kind == "depth" and w.venue.startswith("binance"):
        counts["cf_rest_snapshots"] = len(h.feed.http_conn.urls)  # 1 = never reset on a gap
        books = h.feed._l2_book.values()
        counts["cf_book_levels_after"] = sum(len(b.book.bids) + len(b.book.asks) for b in books)
    return counts


def cf_frames(w: Workload) -> list[str]:
    return [as_agg_trade(f) for f in w.frames] if w.key == "binance_spot_trade" else w.frames


def _version(dist: str) -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(dist)
    except PackageNotFoundError:
        return "not installed"


try:
    import cryptofeed  # noqa: F401

    HAVE_CRYPTOFEED = True
except ImportError:  # optional: the `bench` extra
    HAVE_CRYPTOFEED = False
CF_VERSION = _version("cryptofeed")


def measure(w: Workload, rounds: int, target_s: float) -> dict[str, Series]:
    impls: dict[str, Callable[[], int]] = {
        "orjson": orjson_pass_factory(w),
        "mp": mp_pass_factory(w, with_keys=False),
        "mp_keys": mp_pass_factory(w, with_keys=True),
    }
    if HAVE_CRYPTOFEED and w.cf is not None:
        harness = w.cf(cf_frames(w))
        loop = asyncio.new_event_loop()
        impls["cf"] = lambda: loop.run_until_complete(harness.timed_pass())
    return run_rounds(impls, len(w.frames), rounds, target_s)


# --- profile ---------------------------------------------------------------------------------------------


def profile(key: str, seconds: float = 2.0) -> str:
    w = next(x for x in WORKLOADS if x.key == key)
    w.load()
    one = mp_pass_factory(w, with_keys=False)
    one()
    t = max(one(), 1)
    reps = max(1, round(seconds * 1e9 / t))
    prof = cProfile.Profile()
    prof.enable()
    for _ in range(reps):
        one()
    prof.disable()
    out = io.StringIO()
    pstats.Stats(prof, stream=out).sort_stats("tottime").print_stats(15)
    return f"{key}: {reps} passes x {len(w.frames)} frames\n{out.getvalue()}"


# --- report -------------------------------------------------------------------------------------------------


def k(rate: float) -> str:
    return f"{rate / 1000:,.1f}k"


def verdict(w: Workload, res: dict[str, Series]) -> str:
    mp = res["mp"].best
    if w.kind == "trade":
        if "cf" not in res:
            return "n/a"
        ratio = mp / res["cf"].best
        return f"{'✔' if ratio >= 2 else '✘'} ≥2× cryptofeed"
    return f"{'✔' if mp >= 200_000 else '✘'} ≥200k/s"


def table(results: list[tuple[Workload, dict[str, Series], dict[str, int]]]) -> str:
    head = ("| workload | frames | orjson.loads floor | MarketPrism parse+encode best / median | "
            "+ subject + msg id | cryptofeed 2.4.1 best / median | MP ÷ cryptofeed | target |")  # fmt: skip
    lines = [head, "|---|---:|---:|---:|---:|---:|---:|---|"]
    for w, res, _ in results:
        cf = res.get("cf")
        cf_cells = "n/a | n/a | "
        if cf:
            cf_cells = f"{k(cf.best)} / {k(cf.median)} | {res['mp'].best / cf.best:.1f}× | "
        lines.append(
            f"| {w.title} | {len(w.frames)} | {k(res['orjson'].best)} | "
            f"**{k(res['mp'].best)}** / {k(res['mp'].median)} | {k(res['mp_keys'].best)} | "
            + cf_cells
            + f"{verdict(w, res)} |"
        )
    return "\n".join(lines)


def machine() -> dict[str, str]:
    model = "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    nproc = subprocess.run(["nproc"], capture_output=True, text=True).stdout.strip() or str(os.cpu_count())
    date = subprocess.run(["date"], capture_output=True, text=True).stdout.strip()
    return {"date": date, "nproc": nproc, "cpu": model, "python": platform.python_version(),
            "platform": platform.platform()}  # fmt: skip


def section(args: argparse.Namespace, results: list, info: dict[str, str], extra: str) -> str:
    cmd = "cd /work/main && .venv/bin/python bench/bench_normalise.py " + " ".join(sys.argv[1:])
    dists = ("msgspec", "orjson", "cryptofeed", "order-book", "yapic.json")
    versions = ", ".join(f"{d} {_version(d)}" for d in dists)
    notes = "\n".join(f"- {w.title}: {w.cf_note}." for w, _, _ in results if w.cf_note)
    checks = "\n".join(f"- {w.title}: {', '.join(f'{a}={b}' for a, b in v.items())}" for w, _, v in results)
    return f"""{SECTION}

Normalisation throughput on one core: recorded real frames in, bus payload out. MarketPrism = text frame ->
`parser.parse()` -> `msgspec.json.Encoder().encode(record)` for every record; cryptofeed 2.4.1 = its own
`await feed.message_handler(frame, conn, ts)` with no-op callbacks (keeping its book, as it always does);
`orjson.loads` alone is the floor for any parser that looks at every field. Frames/s, best and median of
{args.rounds} interleaved rounds of ≥{args.target_s} s each.

- Date: {info["date"]}
- Machine: {info["nproc"]} CPUs (`nproc`), {info["cpu"]}, {info["platform"]}; pinned to CPU {args.cpu}
- Python {info["python"]}; {versions}
- Command: `{cmd}`

{table(results)}

Notes:
{notes}
- MarketPrism's parsers do not keep a book (the order-book processor does, downstream of the bus), while
  cryptofeed's handler always applies each delta to its Decimal book: the depth rows compare "frame to bus
  payload" with "frame to cryptofeed callback", which is what each system does per frame at this stage.
- The trade target is ≥2× cryptofeed; the depth target is ≥200k frames/s.

Sanity counts from an untimed pass (records MarketPrism produced; callbacks cryptofeed made):
{checks}
{extra}"""


def write_section(text: str) -> None:
    header = ("# MarketPrism benchmarks\n\nMeasured numbers, each with its date, machine and exact command. "
              "Sections are owned by the benchmark that writes them.\n")  # fmt: skip
    current = BENCH_MD.read_text(encoding="utf-8") if BENCH_MD.exists() else header
    lines = current.split("\n")
    start = next((i for i, line in enumerate(lines) if line.strip() == SECTION), None)
    if start is None:
        new = current.rstrip("\n") + "\n\n" + text.rstrip("\n") + "\n"
    else:
        end = next((i for i in range(start + 1, len(lines)) if lines[i].startswith("## ")), len(lines))
        tail = "\n".join(lines[end:])
        head = "\n".join(lines[:start]).rstrip("\n")
        new = head + "\n\n" + text.rstrip("\n") + "\n" + ("\n" + tail if tail else "")
    BENCH_MD.write_text(new.rstrip("\n") + "\n", encoding="utf-8")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--target-s", type=float, default=0.25, help="timed seconds per round per implementation")
    ap.add_argument("--cpu", type=int, default=0, help="core to pin to")
    ap.add_argument("--only", nargs="*", help="workload keys to run (default: all)")
    ap.add_argument("--write", action="store_true", help=f"update the '{SECTION}' section of {BENCH_MD}")
    ap.add_argument("--profile", metavar="WORKLOAD", help="cProfile MarketPrism on one workload and exit")
    args = ap.parse_args()

    if not FIX.is_dir():
        sys.exit(f"fixtures folder not found at {FIX}; set MARKETPRISM_FIXTURES")
    info = machine()  # before pinning: nproc honours the affinity mask
    if hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {args.cpu})
    if args.profile:
        print(profile(args.profile))
        return
    if not HAVE_CRYPTOFEED:
        print("cryptofeed is not installed (pip install cryptofeed==2.4.1): columns n/a", file=sys.stderr)

    results = []
    for w in WORKLOADS:
        if args.only and w.key not in args.only:
            continue
        w.load()
        checks = validate(w)
        res = measure(w, args.rounds, args.target_s)
        results.append((w, res, checks))
        cf_rate = f", cryptofeed {k(res['cf'].best)}/s" if "cf" in res else ""
        print(f"{w.key}: mp {k(res['mp'].best)}/s{cf_rate}", file=sys.stderr, flush=True)

    extra = ""
    text = section(args, results, info, extra)
    print(text)
    if args.write:
        write_section(text)
        print(f"updated {BENCH_MD}", file=sys.stderr)


if __name__ == "__main__":
    main()
