"""The synthetic market: instrument specs and a random-walk L2 book with an undo log.

Prices and sizes are integers (ticks and lots) so that the book is exact; they become decimal strings
only when a frame is written, always with the same number of decimals, so one price has one spelling.
The undo log (one entry per level change) rebuilds the book at any recent sequence id, which is the
ground truth a client's local book is compared against.
"""

from __future__ import annotations

import random
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

from marketprism.records import split_dashed

# A level change: (is_bid, price in ticks, new size in lots; 0 deletes the level)
Change = tuple[bool, int, int]

_START_PRICES = {"BTC": 60000.0, "ETH": 3000.0, "SOL": 150.0, "BNB": 550.0, "XRP": 0.6, "DOGE": 0.12}


@dataclass(frozen=True, slots=True)
class InstrumentSpec:
    """A normalised symbol's price grid: tick = 10^-price_decimals, lot = 10^-size_decimals."""

    symbol: str
    base: str
    quote: str
    price_decimals: int
    size_decimals: int
    start_ticks: int

    @classmethod
    def for_symbol(cls, symbol: str, seed: int) -> InstrumentSpec:
        norm = split_dashed(symbol)
        base, quote = norm.split("-")
        price = _START_PRICES.get(base) or random.Random(f"{seed}:{base}").uniform(1.0, 500.0)
        digits = len(str(int(price))) if price >= 1 else 0
        price_decimals = min(8, max(2, 6 - digits))  # about six significant digits
        size_decimals = min(5, digits)  # dearer coins trade in smaller lots
        return cls(norm, base, quote, price_decimals, size_decimals, round(price * 10**price_decimals))


def fixed(units: int, decimals: int, pad_to: int = 0) -> str:
    """Integer units of 10^-decimals as a fixed-point string, zero-padded to ``pad_to`` decimals."""
    places = max(decimals, pad_to)
    if places == 0:
        return str(units)
    q, r = divmod(units, 10**decimals)
    frac = f"{r:0{decimals}d}" if decimals else ""
    return f"{q}.{frac}{'0' * (places - decimals)}"


class NumberFormat:
    """Turns ticks/lots into the venue's strings; caches them because the same prices recur constantly."""

    def __init__(self, spec: InstrumentSpec, price_places: int = 0, size_places: int = 0, zero: str = "0"):
        self._pd, self._sd = spec.price_decimals, spec.size_decimals
        self._pp, self._sp = max(price_places, self._pd), max(size_places, self._sd)
        self.zero = zero  # how the venue writes a deleted level's size
        self._prices: dict[int, str] = {}
        self._sizes: dict[int, str] = {}

    def price(self, ticks: int) -> str:
        s = self._prices.get(ticks)
        if s is None:
            if len(self._prices) > 50_000:
                self._prices.clear()
            s = self._prices[ticks] = fixed(ticks, self._pd, self._pp)
        return s

    def size(self, lots: int) -> str:
        if lots == 0:
            return self.zero
        s = self._sizes.get(lots)
        if s is None:
            s = self._sizes[lots] = fixed(lots, self._sd, self._sp)
        return s

    def tick(self) -> str:
        return fixed(1, self._pd, self._pp)

    def lot(self) -> str:
        return fixed(1, self._sd, self._sp)


class SyntheticBook:
    """A random-walk book around a centre price: bids in [c-D, c-1], asks in [c, c+D-1].

    Keeping each side inside a window of D ticks bounds the book at D levels per side and keeps it
    uncrossed by construction. Every change is logged with its sequence id and the size it replaced.
    """

    def __init__(self, rng: random.Random, center: int, levels: int, max_lot: int, seq: int, history: int):
        self.rng = rng
        self.center = center
        self.levels = levels
        self.max_lot = max_lot
        self.bids: dict[int, int] = {}
        self.asks: dict[int, int] = {}
        self.seq = seq  # sequence id of the state the book is in
        self.floor_seq = seq  # oldest sequence id the undo log can rebuild
        self._undo: deque[tuple[int, bool, int, int]] = deque()  # (seq, is_bid, price, old size)
        self._history = history
        for p in range(center - levels, center):
            if p == center - 1 or rng.random() < 0.8:
                self.bids[p] = self._lot()
        for p in range(center, center + levels):
            if p == center or rng.random() < 0.8:
                self.asks[p] = self._lot()

    def _lot(self) -> int:
        # Mostly small sizes with the occasional large one, like a real book.
        return max(1, min(self.max_lot, int(self.rng.expovariate(5.0 / self.max_lot)) + 1))

    # --- state -------------------------------------------------------------------------------------

    def best_bid(self) -> tuple[int, int]:
        p = max(self.bids)
        return p, self.bids[p]

    def best_ask(self) -> tuple[int, int]:
        p = min(self.asks)
        return p, self.asks[p]

    def top(self, is_bid: bool, n: int) -> list[tuple[int, int]]:
        side = self.bids if is_bid else self.asks
        prices = sorted(side, reverse=is_bid)[:n]
        return [(p, side[p]) for p in prices]

    def state_at(self, seq: int) -> tuple[dict[int, int], dict[int, int]] | None:
        """The book right after sequence id ``seq``, or None when it is outside the kept history."""
        if seq > self.seq or seq < self.floor_seq:
            return None
        bids, asks = dict(self.bids), dict(self.asks)
        for entry_seq, is_bid, price, old in reversed(self._undo):
            if entry_seq <= seq:
                break
            side = bids if is_bid else asks
            if old:
                side[price] = old
            else:
                side.pop(price, None)
        return bids, asks

    # --- evolution -----------------------------------------------------------------------------------

    def _set(self, out: list[Change], next_seq: Callable[[], int], is_bid: bool, price: int, size: int) -> None:
        side = self.bids if is_bid else self.asks
        old = side.get(price, 0)
        if old == size:
            return
        seq = next_seq()
        if len(self._undo) >= self._history:
            self.floor_seq = self._undo.popleft()[0]
        self._undo.append((seq, is_bid, price, old))
        if size:
            side[price] = size
        else:
            del side[price]
        self.seq = seq
        out.append((is_bid, price, size))

    def random_event(self, next_seq: Callable[[], int]) -> list[Change]:
        """Apply one random update (1-3 level changes, sometimes a one-tick move) and return it.

        ``next_seq`` is called once per applied change: Binance numbers every change, OKX and Bybit
        return the same id for all changes of one message.
        """
        out: list[Change] = []
        rng = self.rng
        if rng.random() < 0.2:
            self._move(out, next_seq, 1 if rng.random() < 0.5 else -1)
        for _ in range(rng.randint(1, 3)):
            is_bid = rng.random() < 0.5
            # Most changes cluster near the top; some land anywhere so deep levels get refilled.
            if rng.random() < 0.8:
                depth = min(self.levels - 1, int(rng.expovariate(1 / 5.0)))
            else:
                depth = rng.randrange(self.levels)
            price = self.center - 1 - depth if is_bid else self.center + depth
            side = self.bids if is_bid else self.asks
            if price in side and len(side) > 1 and rng.random() < 0.3:
                self._set(out, next_seq, is_bid, price, 0)
            else:
                self._set(out, next_seq, is_bid, price, self._lot())
        if not out:  # every update must carry at least one change
            p, s = self.best_bid()
            self._set(out, next_seq, True, p, s + 1)
        return out

    def _move(self, out: list[Change], next_seq: Callable[[], int], step: int) -> None:
        """Shift the centre one tick: levels that left their side's window go, new touch levels may come."""
        self.center = c = self.center + step
        lo, hi = c - self.levels, c + self.levels - 1
        for p in [p for p in self.bids if not lo <= p < c]:
            self._set(out, next_seq, True, p, 0)
        for p in [p for p in self.asks if not c <= p <= hi]:
            self._set(out, next_seq, False, p, 0)
        if not self.bids or self.rng.random() < 0.5:
            self._set(out, next_seq, True, c - 1, self._lot())
        if not self.asks or self.rng.random() < 0.5:
            self._set(out, next_seq, False, c, self._lot())
