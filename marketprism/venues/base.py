"""The shape every venue module declares: endpoints, channels, limits, heartbeat, parser.

A venue module owns its whole wire protocol. Sessions, the simulator and the tests read the same
``Venue`` declarations, so pointing a collector at the simulator changes only the base URLs.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Protocol

from marketprism.errors import BadDataError, Code
from marketprism.records import DataType, Exchange, Market, Record, split_dashed, symbol_of


class ParseError(BadDataError):
    """A frame that could not be turned into records. The session counts it and carries on.

    ``code``: ``PARSE_MALFORMED`` (default) or ``PARSE_VENUE_ERROR`` for a venue's error reply.
    """

    def __init__(self, venue: str, reason: str, frame: str | bytes, code: Code | str = Code.PARSE_MALFORMED):
        text = frame.decode("utf-8", "replace") if isinstance(frame, bytes | bytearray) else str(frame)
        snippet = text if len(text) <= 160 else text[:157] + "..."
        super().__init__(f"{venue}: {reason}: {snippet!r}", code=code)
        self.venue = venue
        self.reason = reason


@dataclass(frozen=True, slots=True)
class Heartbeat:
    """How a connection is kept alive.

    ``server_ping``: the server sends WebSocket pings and the client answers pongs (websockets does this).
    ``client_text``: the client sends ``message`` every ``every_s`` seconds and the server answers.
    """

    kind: str  # "server_ping" | "client_text"
    every_s: float = 20.0
    message: str = ""


@dataclass(frozen=True, slots=True)
class Limits:
    """Per-connection limits, kept below each venue's documented maximum."""

    streams_per_connection: int
    args_per_subscribe: int
    subscribe_messages_per_s: float
    # Venues that cut connections after a fixed age (Binance: 24 h) get rotated before the cut.
    max_connection_age_s: float | None = None


@dataclass(frozen=True)
class RestLimits:
    """A venue's REST budget: ``weight_per_minute`` (kept below the documented maximum) and retry policy."""

    weight_per_minute: int
    max_concurrent: int = 4
    backoff_initial_s: float = 0.5
    backoff_max_s: float = 60.0
    max_attempts: int = 8
    timeout_s: float = 10.0

    def __post_init__(self) -> None:
        if self.weight_per_minute <= 0 or self.max_concurrent <= 0 or self.max_attempts <= 0:
            raise ValueError("RestLimits: weight_per_minute, max_concurrent and max_attempts must be > 0")


@dataclass(frozen=True, slots=True)
class SnapshotRequest:
    """The REST call that returns an order-book snapshot, and its weight against the venue's budget."""

    path: str
    params: dict[str, str]
    weight: int


@dataclass(frozen=True, slots=True)
class Subscription:
    """One stream on a connection: a venue channel for one instrument."""

    data_type: DataType
    channel: str
    instrument: str
    symbol: str  # normalised BASE-QUOTE, as the user named it


class Parser(Protocol):
    def parse(self, frame: str | bytes, recv_ts: int) -> list[Record]: ...


@dataclass(frozen=True)
class Venue:
    name: str  # "binance_spot", used on the CLI and as the simulator's path prefix
    exchange: Exchange
    market: Market
    ws_url: str  # live base, e.g. "wss://stream.binance.com:9443"
    ws_path: str  # e.g. "/stream"
    rest_url: str
    channels: dict[DataType, str]
    heartbeat: Heartbeat
    limits: Limits
    to_instrument: Callable[[str], str]  # "BTC-USDT" -> venue id
    subscribe_messages: Callable[[Sequence[Subscription], int], list[str]]  # (subs, first request id)
    unsubscribe_messages: Callable[[Sequence[Subscription], int], list[str]]
    new_parser: Callable[..., Parser]  # (symbols: instrument -> symbol, optional) -> a fresh parser
    depth_levels: int = 0  # for venues whose book channel names a depth (Bybit orderbook.N)
    rest_limits: RestLimits = RestLimits(weight_per_minute=600)
    snapshot_request: Callable[[str], SnapshotRequest] | None = None  # instrument -> request (REST-synced books)
    notes: dict[str, str] = field(default_factory=dict)
    # Further channels a data type is also collected from (OKX funding_rate: funding-rate and mark-price).
    extra_channels: dict[DataType, tuple[str, ...]] = field(default_factory=dict)
    # The wire stream a subscription travels on. Several subscriptions can share one (Bybit ``tickers`` carries
    # ticker, funding_rate and open_interest; OKX ``liquidation-orders`` is one stream per instType for every
    # instrument): a connection subscribes a wire stream once and unsubscribes it when nothing uses it any more.
    stream_key: Callable[[Subscription], str] = field(default=lambda s: f"{s.channel}.{s.instrument}")

    def channels_of(self, data_type: DataType) -> tuple[str, ...]:
        return (self.channels[data_type], *self.extra_channels.get(data_type, ()))

    def subscriptions(self, symbols: Sequence[str], data_types: Sequence[DataType]) -> list[Subscription]:
        unknown = [dt for dt in data_types if dt not in self.channels]
        if unknown:
            raise ValueError(f"{self.name} has no channel for data type(s) {', '.join(map(str, unknown))}")
        subs: list[Subscription] = []
        for name in symbols:
            instrument = self.to_instrument(name)
            symbol = split_dashed(name) if "-" in name else symbol_of(instrument)
            subs.extend(Subscription(dt, ch, instrument, symbol) for dt in data_types for ch in self.channels_of(dt))
        return subs

    def wire_streams(self, subs: Sequence[Subscription], exclude: Sequence[Subscription] = ()) -> list[Subscription]:
        """``subs`` with one subscription per wire stream, leaving out the streams ``exclude`` already carries."""
        seen = {self.stream_key(s) for s in exclude}
        out: list[Subscription] = []
        for sub in subs:
            key = self.stream_key(sub)
            if key not in seen:
                seen.add(key)
                out.append(sub)
        return out

    def record_types(self, subs: Sequence[Subscription]) -> frozenset[DataType] | None:
        """The data types to keep from connections carrying ``subs``; None when every record parsed is wanted.

        A shared wire stream yields the records of every data type it carries (Bybit ``tickers``): those of types
        nobody asked for are dropped."""
        wanted = {s.data_type for s in subs}
        used = {s.channel for s in subs}
        produced = {dt for dt in self.channels for ch in self.channels_of(dt) if ch in used}
        return None if produced <= wanted else frozenset(wanted)

    def url(self, ws_base: str | None = None) -> str:
        return (ws_base or self.ws_url).rstrip("/") + self.ws_path


def chunks(items: Sequence[Subscription], size: int) -> list[Sequence[Subscription]]:
    return [items[i : i + size] for i in range(0, len(items), size)]
