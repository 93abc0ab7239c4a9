#!/usr/bin/env python
"""Order-book peers: cryptofeed 2.4.1's book handling and the ``order-book`` 0.6.1 C library, on the recorded
fixture depth frames, as zero-argument "passes" that a benchmark loop can time.

Workloads (frames are the lines of files under ``../shared/fixtures``, or ``$MARKETPRISM_FIXTURES``):

* ``binance_spot_depth``: ``binance/spot_depthUpdate_BTCUSDT_2024-08-08_first400.jsonl`` (400 frames) on top of
  the REST snapshot ``binance/spot_rest_depth_BTCUSDT_limit1000_2024-08-08.json``.
* ``binance_usdm_depth``: ``binance/usdm_depthUpdate_BTCUSDT_2024-08-08_first400.jsonl`` (400 frames) on top of
  ``binance/usdm_rest_depth_BTCUSDT_limit1000_2024-08-08.json``.
* ``okx_books_checksum``: the three ``okx/books_*_2022-05-13.jsonl`` files (290 messages; the first message of
  each file is its snapshot); the CRC32 checksum is verified on every message, snapshots included.

Peers (``PEERS[workload][peer]`` is a factory; calling it builds, validates and returns a :class:`BookPass`):

* ``cryptofeed``: cryptofeed 2.4.1's own ``await feed.message_handler(frame, conn, ts)`` with a no-op async
  callback, keeping its book exactly as it always does. The feed objects and their offline symbol tables come
  from ``bench/bench_normalise.py`` (``cf_binance_book``, ``cf_okx_books``): Binance books are initialised by
  cryptofeed's own ``_snapshot`` path fed the recorded REST body (untimed ``setup``); OKX books start from the
  snapshot message in the data, with ``checksum_validation=True`` (cryptofeed raises ``BadChecksum`` on a
  mismatch). cryptofeed's book *is* an ``order_book.OrderBook`` with ``Decimal`` keys and sizes.
* ``order-book``: the C library driven by a minimal correct Python loop per frame: ``orjson.loads``; the
  Binance sequence rule (spot: drop ``u <= lastUpdateId``, the first applied event must have
  ``U <= lastUpdateId+1 <= u``, then ``U == previous u + 1``; USDⓈ-M: drop ``u < lastUpdateId``, first
  ``U <= lastUpdateId <= u``, then ``pu == previous u``); apply every level (``Decimal`` price keys,
  ``Decimal`` sizes, size 0 deletes the level); then *read the top of the book* (``bids.index(0)`` and
  ``asks.index(0)``) and check it is not crossed. For OKX: a snapshot message builds a fresh
  ``OrderBook(checksum_format='OKX')``, an update applies its levels, then ``book.checksum()`` is compared with
  the message's ``checksum`` (signed 32-bit on the wire, so ``& 0xFFFFFFFF``) on every message, then the top
  is read (free: ``checksum()`` has just sorted both sides).
* ``order-book (float)``: the same Binance loop with ``float`` keys and sizes (Binance only: an OKX checksum
  is a CRC32 of the exchange's price/size *strings*, and ``str(float)`` does not reproduce them, e.g.
  ``"30316"`` becomes ``"30316.0"``).

``VARIANTS`` holds two diagnostic entries that are *not* like-for-like peers: ``cryptofeed (cross_check)``
(cryptofeed's own ``cross_check=True`` mode, which reads best bid/ask on every book callback) and
``order-book (no top read)`` (apply only: the book is not readable without a re-sort, so this only measures
what the top read costs).

What "read the top" costs in ``order-book`` 0.6.1 (from its source, ``sorteddict.c``/``orderbook.c``): a side
is a plain ``dict`` plus a cached tuple of sorted keys and a ``dirty`` flag. ``side[price] = size`` and
``del side[price]`` are O(1) dict operations that set ``dirty``. *Every* ordered read (``index(i)``,
``keys()``, ``to_list()``, ``to_dict()``, iteration, and ``OrderBook.checksum()``) first calls
``update_keys``, which, when ``dirty``, rebuilds the whole key tuple: ``PyDict_Keys`` + ``PyList_Sort`` over
*all* levels (Python rich comparisons of ``Decimal``/``float`` keys; bids then ``PyList_Reverse``) +
``PySequence_Tuple``. So reading the best bid after a frame costs a re-sort of the whole bid side (1,000+
levels for these Binance books, ~400 for OKX), and ``checksum()`` re-sorts both sides on every message
(``max_depth`` only limits views, it does not shrink the sort). ``index(0)`` is the cheapest ordered read
(``to_list()`` takes no arguments in 0.6.1 and copies every level). ``in``, ``[]`` and ``len()`` do not sort.

The pass protocol (see :class:`BookPass`)::

    p = PEERS["binance_spot_depth"]["order-book"]()   # builds + validates (raises BookPeerError if wrong)
    p.setup()                                          # untimed: book back to the recorded REST snapshot
    t0 = time.perf_counter_ns(); n = p(); dt = time.perf_counter_ns() - t0   # n frames in dt ns

``timed_ns(p)`` does exactly that and returns ``dt``; ``run_peers(...)`` runs interleaved rounds through
``bench_normalise.run_rounds``. ``python bench/book_peers.py`` prints the side-by-side table.

    .venv/bin/python bench/book_peers.py                      # all workloads, all peers
    .venv/bin/python bench/book_peers.py --only okx_books_checksum --rounds 5 --target-s 0.5
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import os
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path
from typing import Any

import orjson

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:  # `python bench/book_peers.py` puts bench/ (not the repo) on sys.path
    sys.path.insert(0, str(REPO))

from bench.bench_normalise import (  # noqa: E402
    FIX,
    HAVE_CRYPTOFEED,
    OKX_BOOKS,
    RECV_TS,
    SPOT_REST,
    USDM_REST,
    CfHarness,
    Series,
    _version,
    cf_binance_book,
    cf_okx_books,
    jsonl,
    k,
    machine,
    run_rounds,
)

try:
    from order_book import OrderBook

    HAVE_ORDER_BOOK = True
except ImportError:  # pragma: no cover - installed with cryptofeed (the `bench` extra)
    HAVE_ORDER_BOOK = False

__all__ = [
    "FIX",
    "PEERS",
    "VARIANTS",
    "WORKLOADS",
    "BookPass",
    "BookPeerError",
    "BookWorkload",
    "PassFn",
    "crosscheck_books",
    "load_frames",
    "load_snapshot",
    "run_peers",
    "timed_ns",
]

CF_VERSION = _version("cryptofeed")
OB_VERSION = _version("order-book")
MASK32 = 0xFFFFFFFF  # OKX sends the CRC32 as a signed 32-bit int; order-book returns it unsigned


class BookPeerError(AssertionError):
    """A peer did not process the fixture frames correctly (gap, checksum mismatch, crossed book, reset)."""


# --- workloads ------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class BookWorkload:
    key: str
    title: str
    venue: str  # "binance_spot" | "binance_usdm" | "okx"
    files: tuple[str, ...]  # frame files (jsonl), relative to FIX, concatenated in this order
    snapshot: str | None  # REST snapshot file (Binance); OKX snapshots are the first frame of each file

    @property
    def frames(self) -> list[str]:
        return load_frames(self.key)


WORKLOADS: dict[str, BookWorkload] = {
    w.key: w
    for w in (
        BookWorkload("binance_spot_depth", "Binance spot depth (BTCUSDT)", "binance_spot",
                     ("binance/spot_depthUpdate_BTCUSDT_2024-08-08_first400.jsonl",), SPOT_REST),
        BookWorkload("binance_usdm_depth", "Binance USDⓈ-M depth (BTCUSDT)", "binance_usdm",
                     ("binance/usdm_depthUpdate_BTCUSDT_2024-08-08_first400.jsonl",), USDM_REST),
        BookWorkload("okx_books_checksum", "OKX books, checksum on every message (3 instruments)", "okx",
                     tuple(OKX_BOOKS), None),
    )
}  # fmt: skip

_FRAMES: dict[str, list[str]] = {}


def load_frames(key: str) -> list[str]:
    """The workload's frames (raw text lines, in file order), read once and cached. Do not mutate."""
    if key not in _FRAMES:
        _FRAMES[key] = [f for rel in WORKLOADS[key].files for f in jsonl(rel)]
    return _FRAMES[key]


def load_snapshot(key: str) -> dict[str, Any] | None:
    """The workload's recorded REST depth body, parsed (prices/sizes stay strings); ``None`` for OKX."""
    rel = WORKLOADS[key].snapshot
    return None if rel is None else orjson.loads((FIX / rel).read_bytes())


# --- the pass protocol ------------------------------------------------------------------------------------


Book = tuple[dict[Decimal, Decimal], dict[Decimal, Decimal]]  # (bids, asks), price -> size


class BookPass:
    """One peer on one workload. ``setup()`` (untimed) restores the book to the recorded snapshot;
    ``__call__()`` processes every frame of the workload once and returns the number of frames processed.
    ``setup()`` must precede every call (a call without it raises RuntimeError rather than time a replay
    that would fail the sequence rules). ``checks`` holds the counts of the validation pass; ``books()``
    returns the current book(s) as ``{exchange symbol: (bids, asks)}`` with ``Decimal`` prices and sizes."""

    peer: str = ""

    def __init__(self, workload: BookWorkload):
        self.workload = workload
        self.frames = load_frames(workload.key)
        self.checks: dict[str, int] = {}
        self._ready = False

    def setup(self) -> None:
        self._ready = True

    def __call__(self) -> int:
        raise NotImplementedError

    def books(self) -> dict[str, Book]:
        raise NotImplementedError

    def _take_ready(self) -> None:
        if not self._ready:
            raise RuntimeError(f"{self.peer}/{self.workload.key}: call setup() (untimed) before each pass")
        self._ready = False

    def validate(self) -> dict[str, int]:  # overridden; must raise BookPeerError when wrong
        raise NotImplementedError


PassFn = BookPass  # what a PEERS factory returns: a zero-argument callable (-> frames) with .setup()


def timed_ns(p: BookPass) -> int:
    """``p.setup()`` untimed, then one timed pass; returns its nanoseconds (the shape ``run_rounds`` wants)."""
    p.setup()
    t0 = time.perf_counter_ns()
    p()
    return time.perf_counter_ns() - t0


def _side_dict(side: Any, conv_back: Callable[[Any], Decimal]) -> dict[Decimal, Decimal]:
    return {conv_back(p): conv_back(s) for p, s in side.to_dict().items()}


def _dec(x: Any) -> Decimal:
    return x if isinstance(x, Decimal) else Decimal(repr(x)) if isinstance(x, float) else Decimal(x)


# --- order-book (C library) + a minimal Python loop -------------------------------------------------------


class OrderBookBinance(BookPass):
    """order-book driven by a minimal Binance loop: parse, sequence rule, apply, read + check the top."""

    def __init__(self, workload: BookWorkload, conv: type = Decimal, read_top: bool = True):
        super().__init__(workload)
        if not HAVE_ORDER_BOOK:
            raise RuntimeError("order-book is not installed (pip install order-book==0.6.1)")
        self.conv = conv
        self.read_top = read_top
        tags = ([] if conv is Decimal else [conv.__name__]) + ([] if read_top else ["no top read"])
        self.peer = "order-book" + (f" ({', '.join(tags)})" if tags else "")
        self.usdm = workload.venue == "binance_usdm"
        snap = load_snapshot(workload.key)
        assert snap is not None
        self.last_update_id: int = snap["lastUpdateId"]
        # pre-converted once; setup() copies them into a fresh OrderBook (dict copy keeps the REST order,
        # as cryptofeed's own `_snapshot` does)
        self._snap_bids = {conv(p): conv(q) for p, q in snap["bids"]}
        self._snap_asks = {conv(p): conv(q) for p, q in snap["asks"]}
        self.ob: Any = None
        self.applied = self.dropped = 0
        self.last_u = -1

    def setup(self) -> None:
        ob = OrderBook()
        ob.bids = self._snap_bids  # the library copies the dict
        ob.asks = self._snap_asks
        self.ob = ob
        self._ready = True

    def __call__(self) -> int:
        self._take_ready()
        loads = orjson.loads
        conv = self.conv
        read_top = self.read_top
        usdm = self.usdm
        bids = self.ob.bids
        asks = self.ob.asks
        last = self.last_update_id
        prev_u = -1  # -1: not bridged to the snapshot yet
        dropped = applied = 0
        for frame in self.frames:
            m = loads(frame)["data"]
            u = m["u"]
            if prev_u < 0:
                if usdm:
                    if u < last:
                        dropped += 1
                        continue
                    if not m["U"] <= last <= u:
                        raise BookPeerError(f"{self.peer}: first event U={m['U']} u={u} does not bridge {last}")
                else:
                    if u <= last:
                        dropped += 1
                        continue
                    if not m["U"] <= last + 1 <= u:
                        raise BookPeerError(f"{self.peer}: first event U={m['U']} u={u} does not bridge {last}")
            elif (m["pu"] != prev_u) if usdm else (m["U"] != prev_u + 1):
                raise BookPeerError(f"{self.peer}: sequence gap after u={prev_u}: U={m['U']} u={u}")
            prev_u = u
            applied += 1
            for p, q in m["b"]:
                price = conv(p)
                size = conv(q)
                if size:
                    bids[price] = size
                elif price in bids:
                    del bids[price]
            for p, q in m["a"]:
                price = conv(p)
                size = conv(q)
                if size:
                    asks[price] = size
                elif price in asks:
                    del asks[price]
            if read_top:  # the book readable at any time: each index(0) re-sorts its side if it changed
                best_bid = bids.index(0)[0]
                best_ask = asks.index(0)[0]
                if best_bid >= best_ask:
                    raise BookPeerError(f"{self.peer}: crossed book after u={u}: {best_bid} >= {best_ask}")
        self.applied, self.dropped, self.last_u = applied, dropped, prev_u
        return len(self.frames)

    def books(self) -> dict[str, Book]:
        return {"BTCUSDT": (_side_dict(self.ob.bids, _dec), _side_dict(self.ob.asks, _dec))}

    def validate(self) -> dict[str, int]:
        self.setup()
        n = self()
        last_frame_u = orjson.loads(self.frames[-1])["data"]["u"]
        if self.last_u != last_frame_u or self.applied + self.dropped != n or self.applied == 0:
            raise BookPeerError(f"{self.peer}: applied={self.applied} dropped={self.dropped} of {n}, "
                                f"last u={self.last_u} (last frame u={last_frame_u})")  # fmt: skip
        self.checks = {"frames": n, "applied": self.applied, "dropped_before_bridge": self.dropped, "gaps": 0,
                       "levels_after": len(self.ob.bids) + len(self.ob.asks)}  # fmt: skip
        return self.checks


class OrderBookOkx(BookPass):
    """order-book driven by a minimal OKX loop: parse, snapshot/update, checksum on every message, top."""

    def __init__(self, workload: BookWorkload, read_top: bool = True):
        super().__init__(workload)
        if not HAVE_ORDER_BOOK:
            raise RuntimeError("order-book is not installed (pip install order-book==0.6.1)")
        self.read_top = read_top
        self.peer = "order-book" + ("" if read_top else " (no top read)")
        self.obs: dict[str, Any] = {}
        self.checked = self.messages = 0

    def __call__(self) -> int:
        self._take_ready()
        loads = orjson.loads
        D = Decimal
        read_top = self.read_top
        obs = self.obs
        checked = messages = 0
        for frame in self.frames:
            msg = loads(frame)
            data = msg.get("data")
            if data is None:  # subscribe / error events: none in these files
                continue
            inst = msg["arg"]["instId"]
            snapshot = msg.get("action") == "snapshot"
            for d in data:
                messages += 1
                if snapshot:  # a (repeated) snapshot replaces the book
                    ob = OrderBook(checksum_format="OKX")
                    ob.bids = {D(lvl[0]): D(lvl[1]) for lvl in d["bids"]}
                    ob.asks = {D(lvl[0]): D(lvl[1]) for lvl in d["asks"]}
                    obs[inst] = ob
                else:
                    ob = obs[inst]
                    bids = ob.bids
                    asks = ob.asks
                    for lvl in d["bids"]:
                        price = D(lvl[0])
                        size = D(lvl[1])
                        if size:
                            bids[price] = size
                        elif price in bids:
                            del bids[price]
                    for lvl in d["asks"]:
                        price = D(lvl[0])
                        size = D(lvl[1])
                        if size:
                            asks[price] = size
                        elif price in asks:
                            del asks[price]
                cs = d.get("checksum")
                if cs:  # 0 or absent: not provided
                    got = ob.checksum()  # re-sorts both sides (each is dirty after any change)
                    if got != cs & MASK32:
                        raise BookPeerError(f"{self.peer}: {inst} checksum {got} != {cs & MASK32} (ts {d.get('ts')})")
                    checked += 1
                if read_top:  # cheap here: checksum() has just sorted both sides
                    best_bid = ob.bids.index(0)[0]
                    best_ask = ob.asks.index(0)[0]
                    if best_bid >= best_ask:
                        raise BookPeerError(f"{self.peer}: {inst} crossed book {best_bid} >= {best_ask}")
        self.checked, self.messages = checked, messages
        return len(self.frames)

    def books(self) -> dict[str, Book]:
        return {i: (_side_dict(ob.bids, _dec), _side_dict(ob.asks, _dec)) for i, ob in self.obs.items()}

    def validate(self) -> dict[str, int]:
        self.setup()
        n = self()
        if self.checked != self.messages or self.messages != n:
            raise BookPeerError(f"{self.peer}: {self.checked} of {self.messages} messages checksummed ({n} frames)")
        self.checks = {"frames": n, "checksum_ok": self.checked, "checksum_failed": 0}
        return self.checks


# --- cryptofeed 2.4.1 (its own handlers and book, via bench_normalise's offline harnesses) ----------------


class CryptofeedPass(BookPass):
    """cryptofeed's ``message_handler`` over every frame, on its own event loop (one run per pass)."""

    def __init__(self, workload: BookWorkload, cross_check: bool = False):
        super().__init__(workload)
        if not HAVE_CRYPTOFEED:
            raise RuntimeError("cryptofeed is not installed (pip install cryptofeed==2.4.1)")
        self.peer = "cryptofeed (cross_check)" if cross_check else "cryptofeed"
        self.harness = self._harness(None)
        self.harness.feed.cross_check = cross_check  # cryptofeed's own bid/ask overlap check per callback
        self.loop = asyncio.new_event_loop()

    def _harness(self, callback: Any) -> CfHarness:
        w = self.workload
        kw = {} if callback is None else {"callback": callback}
        if w.venue == "okx":
            return cf_okx_books(True, **kw)(self.frames)
        return cf_binance_book(w.venue == "binance_usdm", w.snapshot or "", **kw)(self.frames)

    def setup(self) -> None:
        if self.harness.reset is not None:  # Binance: fresh book via cryptofeed's `_snapshot` (REST body)
            self.loop.run_until_complete(self.harness.reset())
        self._ready = True

    async def _run(self) -> None:
        handler = self.harness.feed.message_handler
        ts = RECV_TS / 1e6
        for frame in self.frames:
            await handler(frame, None, ts)

    def __call__(self) -> int:
        self._take_ready()
        self.loop.run_until_complete(self._run())
        return len(self.frames)

    def books(self) -> dict[str, Book]:
        feed = self.harness.feed
        return {feed.std_symbol_to_exchange_symbol(sym): (_side_dict(b.book.bids, _dec),
                                                           _side_dict(b.book.asks, _dec))
                for sym, b in feed._l2_book.items()}  # fmt: skip

    def validate(self) -> dict[str, int]:
        """Counts callbacks on a twin feed with a counting callback (the timed feed keeps its no-op one), then
        runs the timed feed once: Binance must never reset (no second REST snapshot; its last update id is the
        last frame's ``u``); OKX raises ``BadChecksum`` on any mismatch, and every message must reach the
        callback (cryptofeed checks the checksum of each message before its callback)."""
        n_cb = 0

        async def count(obj: Any, receipt_timestamp: float) -> None:
            nonlocal n_cb
            n_cb += 1

        twin = self._harness(count)
        loop = asyncio.new_event_loop()
        feed = self.harness.feed
        try:
            loop.run_until_complete(twin.timed_pass())  # includes the (Binance) reset
            self.setup()
            urls_before = len(getattr(feed.http_conn, "urls", []))
            n = self()
        except BookPeerError:
            raise
        except Exception as exc:  # e.g. cryptofeed's BadChecksum (OKX, checksum_validation=True)
            raise BookPeerError(f"{self.peer}: {type(exc).__name__} {exc}") from exc
        finally:
            loop.close()
        checks = {"frames": n, "callbacks": n_cb}
        if self.workload.venue == "okx":
            if n_cb != n:
                raise BookPeerError(f"{self.peer}: {n_cb} book callbacks for {n} messages")
            checks |= {"checksum_ok": n_cb, "checksum_failed": 0}
        else:
            n_cb -= 1  # the snapshot's own callback
            resets = len(feed.http_conn.urls) - urls_before
            last_frame_u = orjson.loads(self.frames[-1])["data"]["u"]
            sym = next(iter(feed.last_update_id), None)
            if resets or sym is None or feed.last_update_id[sym] != last_frame_u:
                raise BookPeerError(f"{self.peer}: book reset {resets}x during the pass (gap), "
                                    f"last update id {feed.last_update_id}")  # fmt: skip
            b = feed._l2_book[sym].book
            checks |= {"callbacks": n_cb, "applied": n_cb, "gaps": 0, "levels_after": len(b.bids) + len(b.asks)}
        self.checks = checks
        return checks


# --- registry -----------------------------------------------------------------------------------------------


def _factory(cls: type[BookPass], key: str, **kw: Any) -> Callable[[], BookPass]:
    def make() -> BookPass:
        p = cls(WORKLOADS[key], **kw)
        p.validate()  # untimed; raises BookPeerError when the peer is not exact on these frames
        p.setup()
        return p

    make.__name__ = make.__qualname__ = f"make_{key}_{cls.__name__}"
    return make


PEERS: dict[str, dict[str, Callable[[], BookPass]]] = {
    "binance_spot_depth": {
        "cryptofeed": _factory(CryptofeedPass, "binance_spot_depth"),
        "order-book": _factory(OrderBookBinance, "binance_spot_depth", conv=Decimal),
        "order-book (float)": _factory(OrderBookBinance, "binance_spot_depth", conv=float),
    },
    "binance_usdm_depth": {
        "cryptofeed": _factory(CryptofeedPass, "binance_usdm_depth"),
        "order-book": _factory(OrderBookBinance, "binance_usdm_depth", conv=Decimal),
        "order-book (float)": _factory(OrderBookBinance, "binance_usdm_depth", conv=float),
    },
    "okx_books_checksum": {
        "cryptofeed": _factory(CryptofeedPass, "okx_books_checksum"),
        "order-book": _factory(OrderBookOkx, "okx_books_checksum"),
    },
}
"""workload -> peer -> factory. Like-for-like peers: parse, sequence check / checksum, apply, book readable."""

VARIANTS: dict[str, dict[str, Callable[[], BookPass]]] = {
    "binance_spot_depth": {
        "cryptofeed (cross_check)": _factory(CryptofeedPass, "binance_spot_depth", cross_check=True),
        "order-book (no top read)": _factory(OrderBookBinance, "binance_spot_depth", read_top=False),
        "order-book (float, no top read)": _factory(OrderBookBinance, "binance_spot_depth", conv=float, read_top=False),
    },
    "binance_usdm_depth": {
        "cryptofeed (cross_check)": _factory(CryptofeedPass, "binance_usdm_depth", cross_check=True),
        "order-book (no top read)": _factory(OrderBookBinance, "binance_usdm_depth", read_top=False),
        "order-book (float, no top read)": _factory(OrderBookBinance, "binance_usdm_depth", conv=float, read_top=False),
    },
    "okx_books_checksum": {
        "cryptofeed (cross_check)": _factory(CryptofeedPass, "okx_books_checksum", cross_check=True),
    },
}
"""Diagnostics, not peers: cryptofeed with its per-callback top read on; order-book without any top read."""


def crosscheck_books(passes: dict[str, BookPass]) -> None:
    """Raise BookPeerError unless every pass (after its last pass) holds the same book(s) level for level."""
    items = list(passes.items())
    ref_name, ref = items[0][0], items[0][1].books()
    for name, p in items[1:]:
        got = p.books()
        if got.keys() != ref.keys():
            raise BookPeerError(f"{name} books {sorted(got)} != {ref_name} books {sorted(ref)}")
        for sym, (bids, asks) in got.items():
            if bids != ref[sym][0] or asks != ref[sym][1]:
                raise BookPeerError(
                    f"{name} {sym} book differs from {ref_name}'s "
                    f"({len(bids)}/{len(asks)} vs {len(ref[sym][0])}/{len(ref[sym][1])} levels)"
                )


def run_peers(
    key: str, factories: dict[str, Callable[[], BookPass]], rounds: int = 7, target_s: float = 0.25
) -> tuple[dict[str, Series], dict[str, BookPass]]:
    """Build (and validate) every pass, check they end on the same books, then time them with
    ``bench_normalise.run_rounds`` (interleaved round-robin; setup untimed before every pass)."""
    passes = {name: make() for name, make in factories.items()}
    crosscheck_books(passes)
    impls: dict[str, Callable[[], int]] = {name: functools.partial(timed_ns, p) for name, p in passes.items()}
    return run_rounds(impls, len(load_frames(key)), rounds, target_s), passes


# --- CLI --------------------------------------------------------------------------------------------------


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--target-s", type=float, default=0.25, help="timed seconds per round per peer")
    ap.add_argument("--cpu", type=int, default=0, help="core to pin to")
    ap.add_argument("--only", nargs="*", choices=list(WORKLOADS), help="workloads to run (default: all)")
    ap.add_argument("--no-variants", action="store_true", help="skip the diagnostic VARIANTS")
    args = ap.parse_args()

    if not FIX.is_dir():
        sys.exit(f"fixtures folder not found at {FIX}; set MARKETPRISM_FIXTURES")
    info = machine()
    if hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {args.cpu})

    peer_names = list(dict.fromkeys(n for d in PEERS.values() for n in d))
    var_names = [] if args.no_variants else list(dict.fromkeys(n for d in VARIANTS.values() for n in d))
    rows, checks = [], []
    for key, w in WORKLOADS.items():
        if args.only and key not in args.only:
            continue
        factories = dict(PEERS[key]) | ({} if args.no_variants else VARIANTS.get(key, {}))
        res, passes = run_peers(key, factories, args.rounds, args.target_s)
        cells = []
        for name in peer_names + var_names:
            s = res.get(name)
            cells.append(f"{k(s.best)} / {k(s.median)}" if s else "n/a")
        rows.append(f"| {w.title} | {len(w.frames)} | " + " | ".join(cells) + " |")
        for name, p in passes.items():
            checks.append(f"- {key} / {name}: " + ", ".join(f"{a}={b}" for a, b in p.checks.items()))
        print(f"{key}: " + ", ".join(f"{n} {k(s.best)}/s" for n, s in res.items()), file=sys.stderr, flush=True)

    head = ["workload", "frames"] + [f"{n} best / median" for n in peer_names] + [
        f"*{n}* (diagnostic)" for n in var_names]  # fmt: skip
    print(
        f"Order-book peers, frames/s on one core (pinned to CPU {args.cpu}), best / median of {args.rounds} "
        f"interleaved rounds of ≥{args.target_s} s; setup (REST snapshot) untimed.\n"
    )
    print(f"- Date: {info['date']}; {info['nproc']} CPUs, {info['cpu']}; Python {info['python']}")
    print(f"- cryptofeed {CF_VERSION}, order-book {OB_VERSION}, orjson {_version('orjson')}")
    print(f"- Command: `cd /work/main && .venv/bin/python bench/book_peers.py {' '.join(sys.argv[1:])}`\n")
    print("| " + " | ".join(head) + " |")
    print("|---|---:|" + "---:|" * (len(head) - 2))
    print("\n".join(rows))
    print("\nValidation (untimed pass per peer; all peers end with identical books):")
    print("\n".join(checks))


if __name__ == "__main__":
    main()
