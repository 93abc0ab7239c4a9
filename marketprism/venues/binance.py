"""Binance spot and USDⓈ-M perpetual: the whole public market-data protocol used by MarketPrism.

Connection: combined streams at ``/stream``; streams are added with ``SUBSCRIBE`` messages, so a session
can change its streams without reconnecting. Every data frame is ``{"stream": "<lower>@<channel>",
"data": {...}}``; subscribe replies are ``{"result": null, "id": N}``.
Heartbeat: the server sends WebSocket pings (every 20 s spot, 3 min futures); websockets answers them.
Limits: 1024 streams per connection (spot) / 200 (USDⓈ-M); 5 (spot) / 10 (futures) incoming messages
per second; connections are cut after 24 h, so sessions rotate at 23 h 30 min.
Depth: ``depth@100ms`` diff stream; U = first update id, u = last, pu = previous u (USDⓈ-M only).
Times are milliseconds; records carry microseconds.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import msgspec
import orjson

from marketprism.records import (
    DataType,
    Depth,
    Exchange,
    Level,
    Market,
    Record,
    Side,
    Ticker,
    Trade,
    split_concatenated,
)
from marketprism.venues.base import Heartbeat, Limits, ParseError, Subscription, Venue

# --- wire shapes (msgspec ignores fields not declared here: venues add fields without notice) ---------


class _Envelope(msgspec.Struct):
    stream: str | None = None
    data: msgspec.Raw = msgspec.Raw(b"")
    result: object = None
    id: int | None = None
    code: int | None = None
    msg: str | None = None


class _Trade(msgspec.Struct):
    s: str
    t: int
    p: str
    q: str
    T: int
    m: bool


class _AggTrade(msgspec.Struct):
    s: str
    a: int
    p: str
    q: str
    f: int
    l: int  # noqa: E741 - Binance's field name
    T: int
    m: bool


class _DepthUpdate(msgspec.Struct):
    E: int
    s: str
    U: int
    u: int
    b: list[Level]
    a: list[Level]
    pu: int | None = None


class _BookTicker(msgspec.Struct):
    u: int
    s: str
    b: str
    B: str
    a: str
    A: str
    E: int | None = None


class _TradeFrame(msgspec.Struct):
    data: _Trade


class _AggTradeFrame(msgspec.Struct):
    data: _AggTrade


class _DepthFrame(msgspec.Struct):
    data: _DepthUpdate


class _BookTickerFrame(msgspec.Struct):
    data: _BookTicker


_envelope = msgspec.json.Decoder(_Envelope)
_PREFIX = '{"stream":"'
_BUY, _SELL = Side.BUY.value, Side.SELL.value


def to_instrument(symbol: str) -> str:
    """``BTC-USDT`` -> ``BTCUSDT``; a venue id is passed through upper-cased."""
    return symbol.replace("-", "").upper()


class BinanceParser:
    """Parses combined-stream frames. One instance per connection; it caches instrument -> symbol.

    The stream name leads every combined frame, so it is read from the text and the whole frame is
    decoded once by the typed decoder for its channel (half the cost of decoding an envelope first).
    """

    def __init__(self, venue_name: str, market: Market):
        self.venue_name = venue_name
        self.market = market.value
        self._symbols: dict[str, str] = {}
        self._by_channel: dict[str, tuple[msgspec.json.Decoder[Any], Callable[[Any, int], Record]]] = {
            "trade": (msgspec.json.Decoder(_TradeFrame), self._trade),
            "aggTrade": (msgspec.json.Decoder(_AggTradeFrame), self._agg_trade),
            "bookTicker": (msgspec.json.Decoder(_BookTickerFrame), self._ticker),
        }
        depth = (msgspec.json.Decoder(_DepthFrame), self._depth_update)
        for speed in ("", "@0ms", "@100ms", "@250ms", "@500ms", "@1000ms"):
            self._by_channel["depth" + speed] = depth
        self._depth = depth

    def _symbol(self, instrument: str) -> str:
        sym = self._symbols.get(instrument)
        if sym is None:
            sym = self._symbols[instrument] = split_concatenated(instrument)
        return sym

    def _channel(self, frame: str | bytes) -> str | None:
        text = frame if isinstance(frame, str) else frame[:100].decode("latin-1")
        if not text.startswith(_PREFIX):
            return None
        at = text.find("@", 11, 100)
        end = text.find('"', at, 120)
        return text[at + 1 : end] if at > 0 and end > 0 else None

    def parse(self, frame: str | bytes, recv_ts: int) -> list[Record]:
        channel = self._channel(frame)
        if channel is None:
            return self._parse_other(frame, recv_ts)
        handler = self._by_channel.get(channel)
        if handler is None and channel.startswith("depth"):
            handler = self._depth
        if handler is None:
            return []  # a stream MarketPrism does not normalise (e.g. kline): ignored, not an error
        decoder, build = handler
        try:
            return [build(decoder.decode(frame).data, recv_ts)]
        except (msgspec.DecodeError, msgspec.ValidationError) as exc:
            raise ParseError(self.venue_name, f"bad {channel} frame ({exc})", frame) from None
        except ValueError as exc:  # symbol normalisation
            raise ParseError(self.venue_name, str(exc), frame) from None

    def _parse_other(self, frame: str | bytes, recv_ts: int) -> list[Record]:
        """Replies, errors and combined frames whose keys arrive in another order."""
        try:
            env = _envelope.decode(frame)
        except (msgspec.DecodeError, msgspec.ValidationError) as exc:
            raise ParseError(self.venue_name, f"not a Binance frame ({exc})", frame) from None
        if env.stream is not None and "@" in env.stream and env.data:  # no "@": would recurse forever
            wrapped = b'{"stream":"' + env.stream.encode() + b'","data":' + bytes(env.data) + b"}"
            return self.parse(wrapped, recv_ts)
        if env.code is not None:
            raise ParseError(self.venue_name, f"error reply code {env.code}: {env.msg}", frame)
        if env.id is not None:
            return []  # reply to SUBSCRIBE / UNSUBSCRIBE
        raise ParseError(self.venue_name, "frame has neither stream/data nor id", frame)

    def _trade(self, d: _Trade, recv_ts: int) -> Trade:
        return Trade(
            exchange="binance", market=self.market, symbol=self._symbol(d.s), instrument=d.s,
            ts=d.T * 1000, recv_ts=recv_ts, trade_id=str(d.t), price=d.p, size=d.q,
            side=_SELL if d.m else _BUY,
        )  # fmt: skip

    def _agg_trade(self, d: _AggTrade, recv_ts: int) -> Trade:
        return Trade(
            exchange="binance", market=self.market, symbol=self._symbol(d.s), instrument=d.s,
            ts=d.T * 1000, recv_ts=recv_ts, trade_id=str(d.a), price=d.p, size=d.q,
            side=_SELL if d.m else _BUY, aggregate=True, first_trade_id=d.f, last_trade_id=d.l,
        )  # fmt: skip

    def _depth_update(self, d: _DepthUpdate, recv_ts: int) -> Depth:
        return Depth(
            exchange="binance", market=self.market, symbol=self._symbol(d.s), instrument=d.s,
            ts=d.E * 1000, recv_ts=recv_ts, is_snapshot=False, bids=d.b, asks=d.a,
            seq=d.u, first_seq=d.U, prev_seq=d.pu,
        )  # fmt: skip

    def _ticker(self, d: _BookTicker, recv_ts: int) -> Ticker:
        # Spot bookTicker carries no time at all: its ts is the receive time.
        return Ticker(
            exchange="binance", market=self.market, symbol=self._symbol(d.s), instrument=d.s,
            ts=d.E * 1000 if d.E is not None else recv_ts, recv_ts=recv_ts,
            bid_price=d.b, bid_size=d.B, ask_price=d.a, ask_size=d.A, seq=d.u,
        )  # fmt: skip


def _stream_names(subs: Sequence[Subscription]) -> list[str]:
    return [f"{s.instrument.lower()}@{s.channel}" for s in subs]


def _requests(method: str, subs: Sequence[Subscription], first_id: int, per_request: int) -> list[str]:
    names = _stream_names(subs)
    return [
        orjson.dumps({"method": method, "params": names[i : i + per_request], "id": first_id + n}).decode()
        for n, i in enumerate(range(0, len(names), per_request))
    ]


def _make(name: str, market: Market, ws_url: str, rest_url: str, limits: Limits, trade: str) -> Venue:
    return Venue(
        name=name,
        exchange=Exchange.BINANCE,
        market=market,
        ws_url=ws_url,
        ws_path="/stream",
        rest_url=rest_url,
        channels={DataType.TRADE: trade, DataType.DEPTH: "depth@100ms", DataType.TICKER: "bookTicker"},
        heartbeat=Heartbeat("server_ping"),
        limits=limits,
        to_instrument=to_instrument,
        subscribe_messages=lambda subs, first_id: _requests("SUBSCRIBE", subs, first_id, limits.args_per_subscribe),
        unsubscribe_messages=lambda subs, first_id: _requests("UNSUBSCRIBE", subs, first_id, limits.args_per_subscribe),
        new_parser=lambda: BinanceParser(name, market),
    )


_DAY = 24 * 3600.0
BINANCE_SPOT = _make(
    "binance_spot",
    Market.SPOT,
    "wss://stream.binance.com:9443",
    "https://api.binance.com",
    Limits(streams_per_connection=1024, args_per_subscribe=200, subscribe_messages_per_s=4.0,
           max_connection_age_s=_DAY - 1800),
    trade="trade",
)  # fmt: skip
BINANCE_USDM = _make(
    "binance_usdm",
    Market.PERPETUAL,
    "wss://fstream.binance.com",
    "https://fapi.binance.com",
    Limits(streams_per_connection=200, args_per_subscribe=200, subscribe_messages_per_s=8.0,
           max_connection_age_s=_DAY - 1800),
    trade="trade",
)  # fmt: skip

# REST paths, used by the simulator now and by the order-book processor later.
REST_DEPTH_PATH = {Market.SPOT: "/api/v3/depth", Market.PERPETUAL: "/fapi/v1/depth"}
REST_EXCHANGE_INFO_PATH = {Market.SPOT: "/api/v3/exchangeInfo", Market.PERPETUAL: "/fapi/v1/exchangeInfo"}
