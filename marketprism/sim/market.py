"""Synthetic per-instrument state shared by the generator and the venue wire formats."""

from __future__ import annotations

import itertools
import random
from collections.abc import Callable
from dataclasses import dataclass
from enum import Enum

from marketprism.records import DataType
from marketprism.sim.book import Change, InstrumentSpec, NumberFormat, SyntheticBook
from marketprism.sim.frames import BookSnapshot


class SeqStyle(Enum):
    """How a venue numbers book updates."""

    PER_CHANGE = "per_change"  # Binance: every level change has an id; a frame spans U..u
    RANDOM_STEP = "random_step"  # OKX: seqId grows by an unpredictable step; prevSeqId links frames
    PLUS_ONE = "plus_one"  # Bybit: u grows by exactly one per message


@dataclass(slots=True)
class DepthEvent:
    changes: list[Change]
    first_seq: int  # Binance U
    seq: int  # Binance u, OKX seqId, Bybit u
    prev_seq: int  # Binance pu, OKX prevSeqId


@dataclass(slots=True)
class LiquidationEvent:
    is_buy: bool  # the liquidation order's side: a buy closes a short position
    price: int  # ticks: a few ticks beyond the best price on the side it takes
    size: int  # lots


# Derivatives state: funding in units of 1e-8 (0.0001 = 10_000), bounded like OKX's ±0.375 %; funding every 8 h.
FUNDING_CAP_E8 = 375_000
FUNDING_INTERVAL_MS = 8 * 3600 * 1000
LIQUIDATION_SHARE = 0.2  # liquidation events per update event: occasional


def rate_str(e8: int, strip: bool = False) -> str:
    """A rate in units of 1e-8 as a decimal string: 10_000 -> "0.00010000" (``strip``: "0.0001")."""
    sign = "-" if e8 < 0 else ""
    text = f"{sign}{abs(e8) // 10**8}.{abs(e8) % 10**8:08d}"
    return (text.rstrip("0").rstrip(".") or "0") if strip else text


def next_funding_ms(now_ms: int) -> int:
    return (now_ms // FUNDING_INTERVAL_MS + 1) * FUNDING_INTERVAL_MS


@dataclass(slots=True)
class TradeEvent:
    trade_id: int
    is_buy: bool  # taker side
    price: int
    size: int
    tick_direction: str  # Bybit's PlusTick / ZeroPlusTick / MinusTick / ZeroMinusTick


def num_orders(price: int, size: int) -> int:
    """A stable, plausible order count for OKX's fourth level element (not part of any checksum)."""
    return 1 + (price * 31 + size) % 9


class SyntheticInstrument:
    """One instrument on one venue: its book, sequence ids, trade ids and cross sequence."""

    def __init__(
        self,
        instrument: str,
        spec: InstrumentSpec,
        fmt: NumberFormat,
        rng: random.Random,
        seq_style: SeqStyle,
        levels: int,
        history: int,
        id_offset: int = 0,
    ):
        self.instrument = instrument
        self.spec = spec
        self.fmt = fmt
        self.rng = rng
        self.seq_style = seq_style
        max_lot = max(1000, 2 * 10**spec.size_decimals)
        start_seq = rng.randrange(10**9, 10**10) if seq_style is not SeqStyle.PLUS_ONE else rng.randrange(2, 10**6)
        self.book = SyntheticBook(rng, spec.start_ticks, levels, max_lot, id_offset + start_seq, history)
        self.trade_id = id_offset + rng.randrange(10**8, 10**9)  # id of the last trade
        self.cross_seq = id_offset + rng.randrange(10**9, 10**10)
        self.last_trade: TradeEvent | None = None
        self.accumulated: dict[DataType, float] = {dt: 0.0 for dt in (
            DataType.DEPTH, DataType.TRADE, DataType.TICKER, DataType.FUNDING_RATE, DataType.LIQUIDATION)}  # fmt: skip
        # Derivatives: funding drifts slowly within the cap, open interest (lots) changes by fractions of a percent.
        # Its own random stream, so the book's sequence for a seed is the same whether derivatives are served or not.
        self.deriv_rng = random.Random(f"derivs:{instrument}:{start_seq}")
        self.funding_e8 = self.deriv_rng.randint(-2_000, 12_000)
        self.settled_funding_e8 = self.funding_e8
        self.open_interest = max_lot * self.deriv_rng.randint(500, 5000)
        self.published_ticker: dict[str, str] | None = None  # Bybit: the state the delta stream describes

    def due(self, dtype: DataType, events: float) -> int:
        """Whole events due for ``dtype`` after adding ``events``; the fraction carries to the next tick."""
        acc = self.accumulated[dtype] + events
        n = int(acc)
        self.accumulated[dtype] = acc - n
        return n

    def _next_seq_fn(self) -> Callable[[], int]:
        prev = self.book.seq
        if self.seq_style is SeqStyle.PER_CHANGE:
            return itertools.count(prev + 1).__next__
        seq = prev + (self.rng.randint(1, 20) if self.seq_style is SeqStyle.RANDOM_STEP else 1)
        return lambda: seq

    def depth_event(self) -> DepthEvent:
        prev = self.book.seq
        changes = self.book.random_event(self._next_seq_fn())
        self.cross_seq += self.rng.randint(1, 50)
        first = prev + 1 if self.seq_style is SeqStyle.PER_CHANGE else self.book.seq
        return DepthEvent(changes, first, self.book.seq, prev)

    def trade(self) -> TradeEvent:
        is_buy = self.rng.random() < 0.5
        price = self.book.best_ask()[0] if is_buy else self.book.best_bid()[0]
        size = max(1, int(self.rng.expovariate(20.0 / self.book.max_lot)) + 1)
        last = self.last_trade
        if last is None or price > last.price:
            direction = "PlusTick"
        elif price < last.price:
            direction = "MinusTick"
        else:
            direction = "ZeroPlusTick" if last.tick_direction.startswith(("Plus", "ZeroPlus")) else "ZeroMinusTick"
        self.trade_id += 1
        self.cross_seq += self.rng.randint(1, 50)
        self.last_trade = TradeEvent(self.trade_id, is_buy, price, size, direction)
        return self.last_trade

    def step_derivs(self) -> None:
        rng = self.deriv_rng
        self.funding_e8 = max(-FUNDING_CAP_E8, min(FUNDING_CAP_E8, self.funding_e8 + rng.randint(-25, 25)))
        step = max(1, self.open_interest // 2000)
        self.open_interest = max(self.book.max_lot, self.open_interest + rng.randint(-step, step))

    def mark_price(self) -> int:
        """Ticks: the book's mid (rounded down), so best bid <= mark <= best ask."""
        return (self.book.best_bid()[0] + self.book.best_ask()[0]) // 2

    def liquidation(self) -> LiquidationEvent:
        rng = self.deriv_rng
        is_buy = rng.random() < 0.5
        k = rng.randint(0, 5)
        price = self.book.best_ask()[0] + k if is_buy else max(1, self.book.best_bid()[0] - k)
        return LiquidationEvent(is_buy, price, max(1, int(rng.expovariate(5.0 / self.book.max_lot)) + 1))

    def last_price(self) -> int:
        return self.last_trade.price if self.last_trade else self.book.best_bid()[0]

    def snapshot(self, now_ms: int, limit: int = 0) -> BookSnapshot:
        """The current book as strings (all levels, or the best ``limit`` per side)."""
        n = limit or len(self.book.bids) + len(self.book.asks)
        fmt = self.fmt
        bids = [(fmt.price(p), fmt.size(s), num_orders(p, s)) for p, s in self.book.top(True, n)]
        asks = [(fmt.price(p), fmt.size(s), num_orders(p, s)) for p, s in self.book.top(False, n)]
        return BookSnapshot(self.book.seq, bids, asks, now_ms, self.cross_seq)

    def book_at(self, seq: int | None) -> tuple[int, list[list[str]], list[list[str]]] | None:
        """Ground truth: (seq, bids, asks) as wire strings, best first, right after ``seq``."""
        target = self.book.seq if seq is None else seq
        state = self.book.state_at(target)
        if state is None:
            return None
        bids, asks = state
        fmt = self.fmt
        return (
            target,
            [[fmt.price(p), fmt.size(bids[p])] for p in sorted(bids, reverse=True)],
            [[fmt.price(p), fmt.size(asks[p])] for p in sorted(asks)],
        )
