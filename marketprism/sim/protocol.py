"""The contract each simulated venue implements: its client messages, frame shapes and REST bodies.

One ``VenueWire`` subclass per exchange (``sim/binance.py``, ``sim/okx.py``, ``sim/bybit.py``) keeps
everything about that exchange's wire in one place, next to nothing else, as ``venues/`` does for the
collector side.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol
from urllib.parse import parse_qs, urlsplit

import orjson

from marketprism.sim.book import InstrumentSpec, NumberFormat
from marketprism.sim.frames import BookSnapshot, Frame, StreamKey, Sub
from marketprism.sim.market import DepthEvent, LiquidationEvent, SeqStyle, SyntheticInstrument, TradeEvent
from marketprism.venues.base import Venue

# A recorded REST body is looked up by (endpoint kind, identifier), e.g. ("depth", "BTCUSDT").
RestKey = tuple[str, str]


@dataclass(slots=True)
class RestReply:
    status: int
    body: str
    headers: dict[str, str] = field(default_factory=dict)


@dataclass(slots=True)
class ClientMessage:
    """What the server does with one text frame from a client."""

    replies: list[str] = field(default_factory=list)
    subscribe: list[tuple[StreamKey, Sub]] = field(default_factory=list)
    unsubscribe: list[tuple[StreamKey, Sub]] = field(default_factory=list)
    is_subscribe: bool = False


@dataclass(slots=True)
class ClientContext:
    """What a wire may look at while answering a client message."""

    conn_id: str
    subs: Mapping[StreamKey, list[Sub]]
    known: Callable[[str], bool]  # does this venue instrument exist?
    instruments: Callable[[], Collection[str]] = tuple  # every instrument (OKX subscribes liquidations by type)


class MarketBackend(Protocol):
    """What REST endpoints read: the synthetic market or the recorded bodies of a replay."""

    def rest_book(self, instrument: str, limit: int) -> BookSnapshot | None: ...

    def recorded_rest(self, key: RestKey) -> str | None: ...

    def specs(self) -> list[tuple[str, InstrumentSpec]]: ...


def dumps(obj: Any) -> str:
    return orjson.dumps(obj).decode()


def query_of(url: str | None) -> dict[str, str]:
    if not url:
        return {}
    return {k: v[0] for k, v in parse_qs(urlsplit(url).query).items() if v}


def int_param(query: Mapping[str, str], name: str, default: int, lo: int, hi: int) -> int | None:
    """An integer query parameter clamped to [lo, hi]; None when it is not an integer."""
    raw = query.get(name)
    if raw is None or raw == "":
        return default
    try:
        return max(lo, min(hi, int(raw)))
    except ValueError:
        return None


class VenueWire(ABC):
    """One venue's protocol. ``synthetic`` wires refuse what the generator cannot produce."""

    seq_style: SeqStyle
    rest_paths: dict[str, str]  # REST path under the venue prefix -> endpoint kind

    def __init__(self, venue: Venue, synthetic: bool):
        self.venue = venue
        self.name = venue.name
        self.synthetic = synthetic

    # --- client messages ---------------------------------------------------------------------------

    @abstractmethod
    def on_text(self, text: str, ctx: ClientContext) -> ClientMessage:
        """Answer a client frame: subscribe/unsubscribe acks, pongs, errors."""

    def on_connect(self, query: Mapping[str, str]) -> list[tuple[StreamKey, Sub]]:
        """Streams named in the connection URL (Binance ``/stream?streams=a/b``)."""
        return []

    # --- replay --------------------------------------------------------------------------------------

    @abstractmethod
    def classify(self, obj: Any) -> tuple[StreamKey, int | None] | None:
        """A decoded recorded frame -> (stream key, event time ms) for data frames, None otherwise."""

    @abstractmethod
    def classify_rest(self, url: str | None, body: Any, filename: str) -> RestKey | None:
        """A recorded REST body (with its URL when known) -> the key it answers."""

    # --- synthetic frames ----------------------------------------------------------------------------

    @abstractmethod
    def number_format(self, spec: InstrumentSpec) -> NumberFormat: ...

    @abstractmethod
    def depth_frames(self, inst: SyntheticInstrument, ev: DepthEvent, variants: Collection[str],
                     now_ms: int) -> list[Frame]: ...  # fmt: skip

    @abstractmethod
    def trade_frames(self, inst: SyntheticInstrument, tr: TradeEvent, variants: Collection[str],
                     now_ms: int) -> list[Frame]: ...  # fmt: skip

    @abstractmethod
    def ticker_frames(self, inst: SyntheticInstrument, variants: Collection[str], now_ms: int) -> list[Frame]: ...

    def subscribe_frames(self, inst: SyntheticInstrument, key: StreamKey, sub: Sub, now_ms: int) -> list[Frame]:
        """Frames a new subscriber gets first (OKX and Bybit book snapshots)."""
        return []

    # Derivatives streams, for venues that stream them (Bybit's funding and open interest ride on its tickers).
    def funding_frames(self, inst: SyntheticInstrument, variants: Collection[str], now_ms: int) -> list[Frame]:
        return []

    def open_interest_frames(self, inst: SyntheticInstrument, variants: Collection[str], now_ms: int) -> list[Frame]:
        return []

    def liquidation_frames(self, inst: SyntheticInstrument, liq: LiquidationEvent, variants: Collection[str],
                           now_ms: int) -> list[Frame]:  # fmt: skip
        return []

    # --- REST ----------------------------------------------------------------------------------------

    @abstractmethod
    def rest(self, kind: str, query: Mapping[str, str], backend: MarketBackend, now_ms: int) -> RestReply: ...

    @abstractmethod
    def rest_error(self, status: int, retry_after_s: int, now_ms: int) -> RestReply:
        """The venue's body for an injected REST failure."""


def retry_headers(status: int, retry_after_s: int) -> dict[str, str]:
    return {"Retry-After": str(retry_after_s)} if status in (418, 429, 503) else {}
