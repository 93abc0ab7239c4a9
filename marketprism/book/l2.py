"""An L2 order book that keeps the venue's own price and size strings, ordered numerically.

Layout of each side (chosen by measurement on the recorded fixtures, see ``bench/bench_book.py``):

* ``size``: price string -> size string, for **every** level. A new size for a known price, the most
  common update after deletes and inserts, touches only this dict.
* a **sorted window** of the best levels: ``keys`` (floats, ascending, best level **last**: bids +price,
  asks -price) and ``prices`` (the price strings, parallel), holding exactly the levels with
  ``key >= bound``. New levels near the top arrive at the end, so ``bisect`` and ``list.insert`` (both in
  C) move only a short tail; the top N is a slice.
* levels below the window live in ``size`` only: inserting or deleting one costs a float conversion and a
  comparison, no sorting. On the recorded BTCUSDT books 40-55% of all inserts and deletes land there (far
  from the top), which makes an update ~30% cheaper than keeping every level sorted.

The window is refilled from ``size`` (one pass, rare: never in the 40 s recordings) when it falls below
``window // 4`` levels and trimmed when it exceeds ``4 * window``. Reads of more levels than the window
holds sort the rest on demand; top-of-book, crossed checks, the OKX checksum (25 levels) and top-N up to
``window // 4`` never sort.

The strings are never re-formatted: outputs and the OKX checksum use exactly what the venue sent. Floats
are only sort keys, so two spellings of one price ("100.0" / "100.00") are one level and the spelling
sent last is kept. Venues spell a symbol's prices one way; once a book sees a second spelling of a price
(detected when it inserts into the window) it switches to keeping every level sorted and matching deletes
by value as well (a bisect per delete of an unknown price: deletes of levels a book never had are normal,
e.g. outside a REST snapshot's range). Nothing here uses Decimal (~0.33 µs per conversion, more than a
whole level update costs here).

Levels come in as the venue's JSON (``apply_raw``/``load_raw``, the fast path: one msgspec decode per side;
OKX's extra level elements are skipped by the decoder) or as ``(price, size, ...)`` string sequences
(``apply``/``load``). A size equal to zero, in any spelling ("0", "0.00000000"), deletes the level.

The hot paths (applying levels, loading a snapshot, the OKX checksum) have an optional compiled kernel,
``_l2fast.c``, built when the package is installed with a C compiler at hand. It does exactly what the Python
code here does (same strings, same floats, same errors) about 3-5x faster; without it (no compiler, or
``MARKETPRISM_PURE_PYTHON=1`` in the environment at import) the Python code runs. ``accelerated()`` tells
which one is in use.
"""

from __future__ import annotations

import heapq
import os
import zlib
from bisect import bisect_left, bisect_right
from collections.abc import Callable, Iterable, Sequence
from operator import itemgetter

import msgspec

_KERNEL_VERSION = 1  # bump with any change to _l2fast.c's interface: a stale build is then not used
try:
    from marketprism.book import _l2fast

    if getattr(_l2fast, "VERSION", None) != _KERNEL_VERSION:  # built from another _l2fast.c: rebuild it
        raise ImportError(f"stale marketprism.book._l2fast (want version {_KERNEL_VERSION})")
except ImportError:  # built without a C compiler (or stale): the pure-Python code below runs
    _l2fast = None  # type: ignore[assignment]

# The compiled kernel in use, None for pure Python (tests swap it to compare the two on the same inputs).
_fast = None if os.environ.get("MARKETPRISM_PURE_PYTHON", "") not in ("", "0") else _l2fast

OKX_CHECKSUM_LEVELS = 25
DEFAULT_WINDOW = 128
_NEG_INF = float("-inf")
_2_32 = 1 << 32
_2_31 = 1 << 31


class WireLevel(msgspec.Struct, array_like=True, gc=False, frozen=True):
    """One level as decoded from the venue's JSON array ``[price, size, ...]``; trailing elements (OKX's
    deprecated "0" and order count) are skipped by the decoder, so every venue decodes the same way."""

    price: str
    size: str


_decode_levels = msgspec.json.Decoder(list[WireLevel]).decode
LevelPair = tuple[str, str]


def accelerated() -> bool:
    """True when the compiled kernel (``_l2fast``) is in use, False when the pure-Python code runs."""
    return _fast is not None


def decode_wire_levels(raw: bytes | msgspec.Raw) -> list[WireLevel]:
    """Levels of a venue JSON array; raises ``msgspec.ValidationError`` on a level with fewer than 2 strings."""
    return _decode_levels(raw)


class _Side:
    """One side of the book: every level in ``size``, the best ones also sorted (see the module doc)."""

    __slots__ = ("bound", "high", "keys", "low", "prices", "sign", "size", "window")

    def __init__(self, sign: float, window: int):
        self.sign = sign  # sort key = sign * price: best level has the largest key
        self.window = window  # levels kept sorted after a refill; 0: all of them (once respelled)
        self.low = max(1, window // 4)
        self.high = 4 * window
        self.size: dict[str, str] = {}
        self.keys: list[float] = []
        self.prices: list[str] = []
        self.bound = _NEG_INF  # the sorted window holds exactly the levels with key >= bound

    def clear(self) -> None:
        self.size = {}
        self.keys = []
        self.prices = []
        self.bound = _NEG_INF

    def sort_all(self) -> None:
        """Keep every level sorted from now on (after the venue spelled a price two ways)."""
        self.window = 0
        self.refill()

    def refill(self) -> None:
        """Rebuild the window from ``size``: the best ``window`` levels (all when ``window`` is 0). Two
        spellings of one price collapse to the one inserted last."""
        sign = self.sign
        by_key: dict[float, str] = {}
        size = self.size
        for px in list(size):
            k = sign * float(px)
            other = by_key.get(k)
            if other is not None:
                del size[other]
            by_key[k] = px
        if self.window and len(by_key) > self.window:
            keys = heapq.nlargest(self.window, by_key)
            keys.reverse()
            self.bound = keys[0]
        else:
            keys = sorted(by_key)
            self.bound = _NEG_INF
        self.keys = keys
        self.prices = [by_key[k] for k in keys]

    def trim(self) -> None:
        """Keep the best ``window`` levels sorted; the rest stay in ``size``."""
        cut = len(self.keys) - self.window
        del self.keys[:cut]
        del self.prices[:cut]
        self.bound = self.keys[0]

    def load(self, levels: Iterable[WireLevel]) -> None:
        sign = self.sign
        by_key: dict[float, WireLevel] = {}
        for level in levels:
            k = sign * float(level.price)
            if float(level.size):
                by_key[k] = level
            else:
                by_key.pop(k, None)
        self.size = {level.price: level.size for level in by_key.values()}
        keys = sorted(by_key)
        if self.window and len(keys) > self.window:
            del keys[: -self.window]
            self.bound = keys[0]
        else:
            self.bound = _NEG_INF
        self.keys = keys
        self.prices = [by_key[k].price for k in keys]

    def load_raw(self, raw: bytes | msgspec.Raw) -> None:
        if _fast is not None:
            loaded = _fast.load_raw(self.sign, self.window, raw)
            if loaded is not None:
                self.size, self.keys, self.prices, self.bound = loaded
                return
            # None: not plain JSON, or duplicate/zero/NaN levels: the Python code decides (and raises)
        self.load(_decode_levels(raw))

    def settle(self, flags: int, raw: bytes | msgspec.Raw | None = None) -> bool:
        """After the compiled kernel applied levels: finish what it reported in ``flags`` (a fallback to
        msgspec for ``raw``, a refill or trim of the window); True when a price arrived respelled."""
        if flags & _F_FALLBACK:
            assert raw is not None
            return _apply_side_fast(self, _decode_levels(raw))
        if flags & _F_REFILL:
            self.refill()
        elif flags & _F_TRIM:
            self.trim()
        return bool(flags & _F_RESPELLED)

    def top_prices(self, n: int | None) -> list[str]:
        """The best ``n`` price strings (all when None), best first."""
        if n is not None and n <= 0:
            return []
        if self.bound == _NEG_INF or (n is not None and n <= len(self.keys)):
            return self.prices[::-1] if n is None else self.prices[: -n - 1 : -1]
        # Deeper than the window: sort the levels below it (their prices are in ``size`` only).
        sign, bound = self.sign, self.bound
        below = sorted(((k, px) for px in self.size if (k := sign * float(px)) < bound), reverse=True)
        out = self.prices[::-1] + [px for _, px in below]
        return out if n is None else out[:n]

    def levels(self, n: int | None) -> list[LevelPair]:
        prices = self.top_prices(n)
        return list(zip(prices, map(self.size.__getitem__, prices), strict=True))


def _apply_side(
    side: _Side,
    levels: Iterable[WireLevel],
    # Bound as locals: a builtin or module global costs a dict lookup per use, and this loop runs per level.
    _float: Callable[[str], float] = float,
    _bisect_left: Callable[[list[float], float], int] = bisect_left,
    _bisect_right: Callable[[list[float], float], int] = bisect_right,
) -> bool:
    """Apply levels to one side; True when a price arrived in a second spelling (see the module doc)."""
    size, keys, prices, bound, sign = side.size, side.keys, side.prices, side.bound, side.sign
    respelled = False
    for level in levels:
        px = level.price
        sz = level.size
        if not _float(sz):  # delete
            if size.pop(px, None) is not None:
                k = sign * _float(px)
                if k >= bound:
                    i = _bisect_left(keys, k)
                    del keys[i]
                    del prices[i]
            elif not side.window:
                _delete_other_spelling(side, px)
        elif px in size:  # a new size for a known price: the order does not change
            size[px] = sz
        else:  # a new price
            size[px] = sz
            k = sign * _float(px)
            if k >= bound:
                i = _bisect_right(keys, k)
                if i and keys[i - 1] == k:  # the same price, listed under another spelling: replace it
                    del size[prices[i - 1]]
                    prices[i - 1] = px
                    respelled = True
                else:
                    keys.insert(i, k)
                    prices.insert(i, px)
    n = len(keys)
    if n < side.low and bound != _NEG_INF:
        side.refill()
    elif n > side.high and side.window:
        side.trim()
    return respelled


_F_RESPELLED, _F_FALLBACK, _F_REFILL, _F_TRIM = 1, 2, 4, 8  # the kernel's result flags (_l2fast.c)


def _apply_side_fast(side: _Side, levels: Sequence[WireLevel]) -> bool:
    """``_apply_side`` by the compiled kernel."""
    assert _fast is not None
    flags = _fast.apply_levels(
        side.size, side.keys, side.prices, side.bound, side.sign, side.window, side.low, side.high, levels
    )
    return side.settle(flags) if flags else False


def _delete_other_spelling(side: _Side, px: str) -> None:
    """A delete for a price string the book does not hold: delete the level if it is there in another
    spelling (only once a book has seen a respelled price: every level is sorted then)."""
    keys = side.keys
    k = side.sign * float(px)
    i = bisect_left(keys, k)
    if i < len(keys) and keys[i] == k:
        del side.size[side.prices[i]]
        del keys[i]
        del side.prices[i]


def _as_wire(levels: Iterable[Sequence[str]] | Iterable[WireLevel]) -> list[WireLevel]:
    out: list[WireLevel] = []
    for level in levels:
        if isinstance(level, WireLevel):
            out.append(level)
        else:
            if len(level) < 2:
                raise ValueError(f"malformed level {list(level)!r}: want [price, size, ...]")
            out.append(WireLevel(level[0], level[1]))
    return out


def _interleave(
    bid_px: Sequence[str], bid_sz: Sequence[str], ask_px: Sequence[str], ask_sz: Sequence[str]
) -> list[str]:
    """``bid1px, bid1sz, ask1px, ask1sz, bid2px, ...``; when one side is shorter, the other continues alone."""
    n = min(len(bid_px), len(ask_px))
    parts = [""] * (4 * n)  # slice assignment interleaves in C: ~2x faster than chaining iterators
    parts[0::4] = bid_px[:n]
    parts[1::4] = bid_sz[:n]
    parts[2::4] = ask_px[:n]
    parts[3::4] = ask_sz[:n]
    rest_px, rest_sz = (bid_px, bid_sz) if len(bid_px) > n else (ask_px, ask_sz)
    if len(rest_px) > n:
        tail = [""] * (2 * (len(rest_px) - n))
        tail[0::2] = rest_px[n:]
        tail[1::2] = rest_sz[n:]
        parts += tail
    return parts


def _signed_crc32(text: str) -> int:
    crc = zlib.crc32(text.encode())
    return crc - _2_32 if crc >= _2_31 else crc


def okx_checksum(bids: Sequence[Sequence[str]], asks: Sequence[Sequence[str]]) -> int:
    """OKX's book checksum of levels given best first: CRC32 over ``bid1px:bid1sz:ask1px:ask1sz:...`` of the
    best 25 levels per side (a shorter side stops contributing, the other continues), as a signed int32."""
    b = bids[:OKX_CHECKSUM_LEVELS]
    a = asks[:OKX_CHECKSUM_LEVELS]
    parts = _interleave([lv[0] for lv in b], [lv[1] for lv in b], [lv[0] for lv in a], [lv[1] for lv in a])
    return _signed_crc32(":".join(parts))


class L2Book:
    """A price-level book: ``apply``/``apply_raw`` update it, ``load``/``load_raw`` replace it.

    Reads: ``best_bid()``/``best_ask()`` (``(price, size)`` strings or None), ``bids(n)``/``asks(n)``
    (best first), ``top(n)``, ``bid_count``/``ask_count``, ``is_crossed()``, ``okx_checksum()``.
    ``window``: levels per side kept sorted (see the module doc); reads of up to ``window // 4`` levels
    never sort.
    """

    __slots__ = ("_asks", "_bids", "_respelled")

    def __init__(self, window: int = DEFAULT_WINDOW) -> None:
        if window < 4:
            raise ValueError(f"window must be >= 4, got {window}")
        self._bids = _Side(1.0, window)
        self._asks = _Side(-1.0, window)
        self._respelled = False  # the venue has spelled one price two ways: keep everything sorted

    # --- updates ---------------------------------------------------------------------------------------
    def clear(self) -> None:
        """Remove every level (what the venue has shown about its spelling is kept)."""
        self._bids.clear()
        self._asks.clear()

    def apply_raw(self, bids: bytes | msgspec.Raw, asks: bytes | msgspec.Raw) -> None:
        """Apply the venue's JSON level arrays (``Depth.bids``/``asks``). Raises ``msgspec.ValidationError``
        or ``msgspec.DecodeError`` for malformed levels and ``ValueError`` for a non-numeric price/size;
        the book may then be partly updated (the caller must treat it as invalid)."""
        fast = _fast
        if fast is None:
            if _apply_side(self._bids, _decode_levels(bids)) | _apply_side(self._asks, _decode_levels(asks)):
                self._on_respelled()
            return
        s = self._bids
        flags = fast.apply_raw(s.size, s.keys, s.prices, s.bound, s.sign, s.window, s.low, s.high, bids)
        respelled = s.settle(flags, bids) if flags else False
        s = self._asks
        flags = fast.apply_raw(s.size, s.keys, s.prices, s.bound, s.sign, s.window, s.low, s.high, asks)
        if (s.settle(flags, asks) if flags else False) or respelled:
            self._on_respelled()

    def apply(
        self,
        bids: Iterable[Sequence[str]] | Iterable[WireLevel] = (),
        asks: Iterable[Sequence[str]] | Iterable[WireLevel] = (),
    ) -> None:
        """Apply levels given as ``(price, size, ...)`` string sequences."""
        apply_side = _apply_side if _fast is None else _apply_side_fast
        if apply_side(self._bids, _as_wire(bids)) | apply_side(self._asks, _as_wire(asks)):
            self._on_respelled()

    def load(
        self,
        bids: Iterable[Sequence[str]] | Iterable[WireLevel] = (),
        asks: Iterable[Sequence[str]] | Iterable[WireLevel] = (),
    ) -> None:
        """Replace the whole book with these levels (a snapshot)."""
        self._bids.load(_as_wire(bids))
        self._asks.load(_as_wire(asks))

    def load_raw(self, bids: bytes | msgspec.Raw, asks: bytes | msgspec.Raw) -> None:
        """``load`` from the venue's JSON level arrays."""
        self._bids.load_raw(bids)
        self._asks.load_raw(asks)

    def _on_respelled(self) -> None:
        if not self._respelled:
            self._respelled = True
            self._bids.sort_all()
            self._asks.sort_all()

    # --- reads -----------------------------------------------------------------------------------------
    @property
    def bid_count(self) -> int:
        return len(self._bids.size)

    @property
    def ask_count(self) -> int:
        return len(self._asks.size)

    def __len__(self) -> int:
        return len(self._bids.size) + len(self._asks.size)

    def best_bid(self) -> LevelPair | None:
        prices = self._bids.prices
        return (prices[-1], self._bids.size[prices[-1]]) if prices else None

    def best_ask(self) -> LevelPair | None:
        prices = self._asks.prices
        return (prices[-1], self._asks.size[prices[-1]]) if prices else None

    def best_bid_price(self) -> float | None:
        return self._bids.keys[-1] if self._bids.keys else None

    def best_ask_price(self) -> float | None:
        return -self._asks.keys[-1] if self._asks.keys else None

    def is_crossed(self) -> bool:
        """Best bid at or above best ask: impossible in a venue's book, so the local one is wrong."""
        bid_keys, ask_keys = self._bids.keys, self._asks.keys
        return bool(bid_keys) and bool(ask_keys) and bid_keys[-1] >= -ask_keys[-1]

    def bids(self, n: int | None = None) -> list[LevelPair]:
        """The best ``n`` bids (all when None), best first, as ``(price, size)`` venue strings."""
        return self._bids.levels(n)

    def asks(self, n: int | None = None) -> list[LevelPair]:
        """The best ``n`` asks (all when None), best first, as ``(price, size)`` venue strings."""
        return self._asks.levels(n)

    def top(self, n: int) -> tuple[list[LevelPair], list[LevelPair]]:
        return self._bids.levels(n), self._asks.levels(n)

    def okx_checksum(self) -> int:
        """OKX's checksum of this book (see ``okx_checksum``), from the sorted windows."""
        bids, asks = self._bids, self._asks
        n = OKX_CHECKSUM_LEVELS
        if _fast is not None:  # the kernel takes the prices best last, as the windows hold them
            bid_last = bids.prices if len(bids.keys) >= n or bids.bound == _NEG_INF else bids.top_prices(n)[::-1]
            ask_last = asks.prices if len(asks.keys) >= n or asks.bound == _NEG_INF else asks.top_prices(n)[::-1]
            return _fast.okx_checksum(bid_last, bids.size, ask_last, asks.size, n)
        # Runs after every OKX message: the common case (both windows deep enough) is sliced inline.
        bid_px = bids.prices[: -n - 1 : -1] if len(bids.keys) >= n or bids.bound == _NEG_INF else bids.top_prices(n)
        ask_px = asks.prices[: -n - 1 : -1] if len(asks.keys) >= n or asks.bound == _NEG_INF else asks.top_prices(n)
        # itemgetter looks the sizes up in one C call: half the cost of map(size.__getitem__, ...)
        bid_sz = itemgetter(*bid_px)(bids.size) if len(bid_px) > 1 else [bids.size[p] for p in bid_px]
        ask_sz = itemgetter(*ask_px)(asks.size) if len(ask_px) > 1 else [asks.size[p] for p in ask_px]
        if len(bid_px) == n and len(ask_px) == n:
            parts = [""] * (4 * n)
            parts[0::4] = bid_px
            parts[1::4] = bid_sz
            parts[2::4] = ask_px
            parts[3::4] = ask_sz
        else:
            parts = _interleave(bid_px, bid_sz, ask_px, ask_sz)
        crc = zlib.crc32(":".join(parts).encode())
        return crc - _2_32 if crc >= _2_31 else crc

    def __repr__(self) -> str:
        return f"L2Book(bids={self.bid_count}, asks={self.ask_count}, best={self.best_bid()}/{self.best_ask()})"
