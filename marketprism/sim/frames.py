"""What travels from a market source (synthetic generator or replay) to a client connection."""

from __future__ import annotations

from dataclasses import dataclass

from marketprism.records import DataType

# One stream of one venue: (venue instrument id, data type). Replay positions, ground truth and
# subscriptions are all keyed by it.
StreamKey = tuple[str, DataType]


@dataclass(slots=True)
class Frame:
    """One wire data frame, encoded once and shared by every connection subscribed to its stream.

    ``name`` is the stream name written in ``text`` (Binance stream, Bybit topic, OKX channel). A synthetic
    frame is renamed for a subscriber that used another name of the same shape (``btcusdt@depth`` vs
    ``btcusdt@depth@100ms``). ``variant`` separates channels of one data type whose shapes differ (OKX
    ``tickers`` vs ``bbo-tbt``); replayed frames have no variant and go to every subscriber of the key.
    """

    key: StreamKey
    text: str
    name: str = ""
    variant: str = ""
    seq: int | None = None  # the venue's sequence id after this frame (u, seqId, trade id)
    trades: int = 0  # trades carried by this frame
    checksum: int | None = None  # OKX books checksum as written in text
    index: int = -1  # replay: position in the key's recorded stream
    order: int = -1  # replay: position in the venue's whole recording (all keys)
    t: float = 0.0  # replay: recorded time, seconds since the epoch
    play_t: float = 0.0  # replay: seconds since the start of the replay, long gaps shortened


@dataclass(frozen=True, slots=True)
class Sub:
    """A stream as one client subscribed it."""

    name: str  # wire name as the client wrote it (e.g. "btcusdt@depth", "orderbook.50.BTCUSDT", "books")
    variant: str = ""


@dataclass(slots=True)
class BookSnapshot:
    """A book as a REST endpoint or a subscribe snapshot needs it: strings exactly as on the wire."""

    seq: int
    bids: list[tuple[str, str, int]]  # (price, size, number of orders), best first
    asks: list[tuple[str, str, int]]
    ts_ms: int
    cross_seq: int = 0
