"""Synthetic mode: a consistent random market per (venue, instrument), produced in ticks.

An instrument's book evolves only while someone subscribes to any of its streams (a quiet instrument
costs nothing), and frames are encoded only for streams that have subscribers, once per tick and shared
by every subscribed connection. Sequence ids advance with every book change whether or not depth is
subscribed, exactly like a venue whose book keeps moving while a client only watches tickers.
"""

from __future__ import annotations

import random
import time
from collections import Counter
from typing import Any

from marketprism.records import DataType
from marketprism.sim.backend import VenueBackend
from marketprism.sim.book import InstrumentSpec
from marketprism.sim.config import SimConfig
from marketprism.sim.connection import Connection
from marketprism.sim.frames import BookSnapshot, Frame, StreamKey, Sub
from marketprism.sim.market import LIQUIDATION_SHARE, SyntheticInstrument
from marketprism.sim.protocol import VenueWire
from marketprism.venues.base import Venue


def now_ms() -> int:
    return time.time_ns() // 1_000_000


class _Stream:
    """Who listens to one (instrument, data type), and with which frame shapes."""

    __slots__ = ("conns", "variants")

    def __init__(self) -> None:
        self.conns: Counter[Connection] = Counter()  # connection -> its subscriptions to this stream
        self.variants: Counter[str] = Counter()


class SyntheticVenue(VenueBackend):
    def __init__(self, venue: Venue, wire: VenueWire, cfg: SimConfig):
        self.venue = venue
        self.wire = wire
        self.rate = cfg.rate
        self.instruments: dict[str, SyntheticInstrument] = {}
        id_offset = time.time_ns() // 1_000_000 if cfg.id_offset is None else cfg.id_offset
        for symbol in cfg.symbols:
            instrument = venue.to_instrument(symbol)
            spec = InstrumentSpec.for_symbol(symbol, cfg.seed)
            rng = random.Random(f"{cfg.seed}:{venue.name}:{instrument}")
            self.instruments[instrument] = SyntheticInstrument(
                instrument,
                spec,
                wire.number_format(spec),
                rng,
                wire.seq_style,
                cfg.book_levels,
                cfg.book_history,
                id_offset,
            )
        self._streams: dict[StreamKey, _Stream] = {}
        self._active: Counter[str] = Counter()  # instrument -> subscriptions to any of its streams

    def resolve(self, instrument: str) -> SyntheticInstrument | None:
        """A venue id (``BTCUSDT``) or a normalised symbol (``BTC-USDT``)."""
        inst = self.instruments.get(instrument)
        if inst is None:
            try:
                inst = self.instruments.get(self.venue.to_instrument(instrument))
            except ValueError:
                return None
        return inst

    def known(self, instrument: str) -> bool:
        return instrument in self.instruments

    # --- subscriptions -------------------------------------------------------------------------------

    def on_subscribe(self, conn: Connection, key: StreamKey, sub: Sub) -> None:
        inst = self.instruments.get(key[0])
        if inst is None:
            return  # Binance acks streams of unknown symbols and then sends nothing: so do we
        stream = self._streams.get(key)
        if stream is None:
            stream = self._streams[key] = _Stream()
        stream.conns[conn] += 1
        stream.variants[sub.variant] += 1
        self._active[key[0]] += 1
        for frame in self.wire.subscribe_frames(inst, key, sub, now_ms()):
            conn.deliver_to(frame, sub)

    def on_unsubscribe(self, conn: Connection, key: StreamKey, sub: Sub) -> None:
        stream = self._streams.get(key)
        if stream is None or conn not in stream.conns:
            return
        stream.conns[conn] -= 1
        if stream.conns[conn] <= 0:
            del stream.conns[conn]
        stream.variants[sub.variant] -= 1
        if stream.variants[sub.variant] <= 0:
            del stream.variants[sub.variant]
        if not stream.conns:
            del self._streams[key]
        self._active[key[0]] -= 1
        if self._active[key[0]] <= 0:
            del self._active[key[0]]

    # --- generation ----------------------------------------------------------------------------------

    def tick(self, dt: float, now: int) -> None:
        events = self.rate * min(dt, 1.0)  # after a long pause, catch up one second at most
        for name in list(self._active):
            self._tick_instrument(self.instruments[name], events, now)

    @staticmethod
    def _broadcast(frames: list[Frame], stream: _Stream) -> None:
        for frame in frames:
            for conn in stream.conns:
                conn.deliver(frame)

    def _tick_instrument(self, inst: SyntheticInstrument, events: float, now: int) -> None:
        name, wire = inst.instrument, self.wire
        depth = self._streams.get((name, DataType.DEPTH))
        trades = self._streams.get((name, DataType.TRADE))
        tickers = self._streams.get((name, DataType.TICKER))
        n_depth = inst.due(DataType.DEPTH, events)  # the book moves while anything of it is watched
        n_trade = inst.due(DataType.TRADE, events) if trades else 0
        n_ticker = inst.due(DataType.TICKER, events) if tickers else 0
        funding = self._streams.get((name, DataType.FUNDING_RATE))
        oi = self._streams.get((name, DataType.OPEN_INTEREST))
        liqs = self._streams.get((name, DataType.LIQUIDATION))
        n_deriv = inst.due(DataType.FUNDING_RATE, events)  # funding and open interest move with the book
        n_liq = inst.due(DataType.LIQUIDATION, events * LIQUIDATION_SHARE) if liqs else 0
        # Interleave the kinds so a ticker reflects the book between the depth updates around it.
        for i in range(max(n_depth, n_trade, n_ticker, n_deriv, n_liq)):
            if i < n_depth:
                ev = inst.depth_event()
                if depth:
                    self._broadcast(wire.depth_frames(inst, ev, depth.variants, now), depth)
            if i < n_trade and trades:
                self._broadcast(wire.trade_frames(inst, inst.trade(), trades.variants, now), trades)
            if i < n_deriv:
                inst.step_derivs()
                if funding:
                    self._broadcast(wire.funding_frames(inst, funding.variants, now), funding)
                if oi:
                    self._broadcast(wire.open_interest_frames(inst, oi.variants, now), oi)
            if i < n_liq and liqs:
                self._broadcast(wire.liquidation_frames(inst, inst.liquidation(), liqs.variants, now), liqs)
            if i < n_ticker and tickers:
                self._broadcast(wire.ticker_frames(inst, tickers.variants, now), tickers)

    # --- reads ---------------------------------------------------------------------------------------

    def rest_book(self, instrument: str, limit: int) -> BookSnapshot | None:
        inst = self.instruments.get(instrument)
        return inst.snapshot(now_ms(), limit) if inst else None

    def specs(self) -> list[tuple[str, InstrumentSpec]]:
        return [(name, inst.spec) for name, inst in self.instruments.items()]

    def book_at(self, instrument: str, seq: int | None) -> dict[str, Any] | None:
        inst = self.resolve(instrument)
        state = inst.book_at(seq) if inst else None
        if inst is None or state is None:
            return None
        at, bids, asks = state
        return {"venue": self.venue.name, "instrument": inst.instrument, "seq": at, "current_seq": inst.book.seq,
                "floor_seq": inst.book.floor_seq, "bids": bids, "asks": asks}  # fmt: skip
