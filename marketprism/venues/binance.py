"""Binance spot and USDⓈ-M perpetual: the whole public market-data protocol used by MarketPrism.

Connection: combined streams at ``/stream``; streams are added with ``SUBSCRIBE`` messages, so a session
can change its streams without reconnecting. Every data frame is ``{"stream": "<lower>@<channel>",
"data": {...}}``; subscribe replies are ``{"result": null, "id": N}``.
Heartbeat: the server sends WebSocket pings (every 20 s spot, 3 min futures); websockets answers them.
Limits: 1024 streams per connection (spot) / 200 (USDⓈ-M); 5 (spot) / 10 (futures) incoming messages
per second; connections are cut after 24 h, so sessions rotate at 23 h 30 min.
Depth: ``depth@100ms`` diff stream; U = first update id, u = last, pu = previous u (USDⓈ-M only).
USDⓈ-M derivatives: ``markPrice@1s`` (markPriceUpdate -> funding_rate with mark, index and estimated settle
price) and ``forceOrder`` (-> liquidation, every order field kept).
Times are milliseconds; records carry microseconds.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import msgspec
import orjson

from marketprism.errors import Code
from marketprism.records import (
    DataType,
    Depth,
    Exchange,
    FundingRate,
    Liquidation,
    LongShortRatio,
    Market,
    OpenInterest,
    Record,
    Side,
    Ticker,
    Trade,
    split_concatenated,
)
from marketprism.venues.base import Heartbeat, Limits, ParseError, RestLimits, SnapshotRequest, Subscription, Venue
from marketprism.venues.pull import Cadence, PullContext, RestPull, decimal_text, ms_of

# --- wire shapes (msgspec ignores fields not declared here: venues add fields without notice) ---------


class _Envelope(msgspec.Struct):
    stream: str | None = None
    data: msgspec.Raw = msgspec.Raw(b"")
    result: object = None
    id: int | None = None
    code: int | None = None
    msg: str | None = None
    error: dict[str, Any] | None = None  # {"error": {"code": 2, "msg": "Invalid request"}, "id": 1}


class _Trade(msgspec.Struct, gc=False):
    s: str
    t: int
    p: str
    q: str
    T: int
    m: bool


class _AggTrade(msgspec.Struct, gc=False):
    s: str
    a: int
    p: str
    q: str
    f: int
    l: int  # noqa: E741 - Binance's field name
    T: int
    m: bool


class _DepthUpdate(msgspec.Struct, gc=False):
    E: int
    s: str
    U: int
    u: int
    b: msgspec.Raw  # levels stay the venue's JSON: building a Python tuple per level costs more than all else
    a: msgspec.Raw
    pu: int | None = None


class _BookTicker(msgspec.Struct, gc=False):
    u: int
    s: str
    b: str
    B: str
    a: str
    A: str
    E: int | None = None


class _MarkPrice(msgspec.Struct, gc=False):
    """USDⓈ-M ``markPriceUpdate``; delivery contracts send ``r`` "" and ``T`` 0 (no funding)."""

    E: int
    s: str
    p: str
    i: str = ""
    P: str = ""
    r: str = ""
    T: int = 0


class _ForceOrderOrder(msgspec.Struct, gc=False):
    s: str
    S: str
    q: str
    p: str
    T: int
    o: str | None = None
    f: str | None = None
    ap: str | None = None
    X: str | None = None
    l: str | None = None  # noqa: E741 - Binance's field name
    z: str | None = None


class _ForceOrder(msgspec.Struct, gc=False):
    o: _ForceOrderOrder
    E: int | None = None


class _TradeFrame(msgspec.Struct, gc=False):
    data: _Trade


class _AggTradeFrame(msgspec.Struct, gc=False):
    data: _AggTrade


class _DepthFrame(msgspec.Struct, gc=False):
    data: _DepthUpdate


class _BookTickerFrame(msgspec.Struct, gc=False):
    data: _BookTicker


class _MarkPriceFrame(msgspec.Struct, gc=False):
    data: _MarkPrice


class _ForceOrderFrame(msgspec.Struct, gc=False):
    data: _ForceOrder


_envelope = msgspec.json.Decoder(_Envelope)
_PREFIX = '{"stream":"'
_UNSEEN: Any = object()
_BUY, _SELL = Side.BUY.value, Side.SELL.value


def to_instrument(symbol: str) -> str:
    """``BTC-USDT`` -> ``BTCUSDT``; a venue id is passed through upper-cased."""
    return symbol.replace("-", "").upper()


# One stream's parsing: (whole-frame decoder, data-only decoder, record builder with the symbol bound).
_StreamParser = tuple[msgspec.json.Decoder[Any], msgspec.json.Decoder[Any], Callable[[Any, int], list[Record]]]

_FRAME_DECODERS: dict[str, tuple[msgspec.json.Decoder[Any], msgspec.json.Decoder[Any]]] = {
    "trade": (msgspec.json.Decoder(_TradeFrame), msgspec.json.Decoder(_Trade)),
    "aggTrade": (msgspec.json.Decoder(_AggTradeFrame), msgspec.json.Decoder(_AggTrade)),
    "bookTicker": (msgspec.json.Decoder(_BookTickerFrame), msgspec.json.Decoder(_BookTicker)),
    "depth": (msgspec.json.Decoder(_DepthFrame), msgspec.json.Decoder(_DepthUpdate)),
    "markPrice": (msgspec.json.Decoder(_MarkPriceFrame), msgspec.json.Decoder(_MarkPrice)),
    "forceOrder": (msgspec.json.Decoder(_ForceOrderFrame), msgspec.json.Decoder(_ForceOrder)),
}


class BinanceParser:
    """Parses combined-stream frames. One instance per connection.

    The stream name leads every combined frame, so it is read from the text, and the whole frame is then
    decoded once by the typed decoder for that stream, with a builder whose symbol is already bound (the
    per-frame Python work is what separates a fast parser from a slow one). Depth levels stay raw JSON.
    """

    def __init__(self, venue_name: str, market: Market, symbols: Mapping[str, str] | None = None):
        self.venue_name = venue_name
        self.market = market.value
        # instrument -> symbol from the subscriptions (so "ADAEUR" is ADA-EUR, not AD-AEUR). Held by reference:
        # a session adding subscriptions at runtime adds to it. Guesses for other instruments are kept apart.
        self._known: Mapping[str, str] = symbols if symbols is not None else {}
        self._guessed: dict[str, str] = {}
        self._streams: dict[str, _StreamParser | None] = {}

    def _symbol(self, instrument: str) -> str:
        sym = self._known.get(instrument) or self._guessed.get(instrument)
        if sym is None:
            sym = self._guessed[instrument] = split_concatenated(instrument)
        return sym

    def _stream_parser(self, stream: str) -> _StreamParser | None:
        """Decoders and builder for a stream such as ``btcusdt@depth@100ms``; None for streams not normalised."""
        if stream in self._streams:
            return self._streams[stream]
        instrument, _, channel = stream.partition("@")
        kind = "depth" if channel.startswith("depth") else channel.partition("@")[0]  # markPrice@1s -> markPrice
        decoders = _FRAME_DECODERS.get(kind)
        parser: _StreamParser | None = None
        if decoders is not None:
            instrument = instrument.upper()
            build = getattr(self, f"_build_{kind}")(instrument, self._symbol(instrument))
            parser = (decoders[0], decoders[1], build)
        if len(self._streams) < 100_000:
            self._streams[stream] = parser
        return parser

    def parse(self, frame: str | bytes, recv_ts: int) -> list[Record]:
        text = frame if isinstance(frame, str) else frame[:128].decode("latin-1")
        end = text.find('"', 11, 128) if text.startswith(_PREFIX) else -1
        if end < 0:
            return self._parse_other(frame, recv_ts)
        stream = text[11:end]
        try:
            parser = self._streams.get(stream, _UNSEEN)
            if parser is _UNSEEN:
                parser = self._stream_parser(stream)
            if parser is None:
                return []  # a stream MarketPrism does not normalise (e.g. kline): ignored, not an error
            return parser[2](parser[0].decode(frame).data, recv_ts)
        except (msgspec.DecodeError, msgspec.ValidationError) as exc:
            raise ParseError(self.venue_name, f"bad {stream} frame ({exc})", frame) from None
        except ValueError as exc:  # symbol normalisation; UnicodeError (a lone surrogate) is a ValueError too
            raise ParseError(self.venue_name, str(exc), frame) from None

    def _parse_other(self, frame: str | bytes, recv_ts: int) -> list[Record]:
        """Replies, errors, and combined frames that do not start with the stream name."""
        try:
            env = _envelope.decode(frame)
        except (msgspec.DecodeError, msgspec.ValidationError, UnicodeError) as exc:
            raise ParseError(self.venue_name, f"not a Binance frame ({exc})", frame) from None
        if env.stream is not None and env.data:
            try:
                parser = self._stream_parser(env.stream)
                return [] if parser is None else parser[2](parser[1].decode(env.data), recv_ts)
            except (msgspec.DecodeError, msgspec.ValidationError, ValueError) as exc:
                raise ParseError(self.venue_name, f"bad {env.stream} frame ({exc})", frame) from None
        if env.code is not None or env.error is not None:
            code, msg = (env.error.get("code"), env.error.get("msg")) if env.error else (env.code, env.msg)
            raise ParseError(self.venue_name, f"error reply code {code}: {msg}", frame, code=Code.PARSE_VENUE_ERROR)
        if env.id is not None:
            return []  # reply to SUBSCRIBE / UNSUBSCRIBE
        raise ParseError(self.venue_name, "frame has neither stream/data nor id", frame)

    # Builders: one closure per stream, with everything that does not change per frame bound once.
    def _build_trade(self, instrument: str, symbol: str) -> Callable[[_Trade, int], list[Record]]:
        market = self.market

        def build(d: _Trade, recv_ts: int) -> list[Record]:
            if d.s != instrument:
                raise ValueError(f"symbol {d.s!r} in a {instrument} stream")
            return [
                Trade(exchange="binance", market=market, symbol=symbol, instrument=d.s, ts=d.T * 1000,
                      recv_ts=recv_ts, trade_id=str(d.t), price=d.p, size=d.q, side=_SELL if d.m else _BUY)
            ]  # fmt: skip

        return build

    def _build_aggTrade(self, instrument: str, symbol: str) -> Callable[[_AggTrade, int], list[Record]]:
        market = self.market

        def build(d: _AggTrade, recv_ts: int) -> list[Record]:
            if d.s != instrument:
                raise ValueError(f"symbol {d.s!r} in a {instrument} stream")
            return [
                Trade(exchange="binance", market=market, symbol=symbol, instrument=d.s, ts=d.T * 1000,
                      recv_ts=recv_ts, trade_id=str(d.a), price=d.p, size=d.q, side=_SELL if d.m else _BUY,
                      aggregate=True, first_trade_id=d.f, last_trade_id=d.l)
            ]  # fmt: skip

        return build

    def _build_depth(self, instrument: str, symbol: str) -> Callable[[_DepthUpdate, int], list[Record]]:
        market = self.market

        def build(d: _DepthUpdate, recv_ts: int) -> list[Record]:
            if d.s != instrument:
                raise ValueError(f"symbol {d.s!r} in a {instrument} stream")
            return [
                Depth(exchange="binance", market=market, symbol=symbol, instrument=d.s, ts=d.E * 1000,
                      recv_ts=recv_ts, is_snapshot=False, bids=d.b, asks=d.a, seq=d.u, first_seq=d.U,
                      prev_seq=d.pu)
            ]  # fmt: skip

        return build

    def _build_bookTicker(self, instrument: str, symbol: str) -> Callable[[_BookTicker, int], list[Record]]:
        market = self.market

        def build(d: _BookTicker, recv_ts: int) -> list[Record]:
            if d.s != instrument:
                raise ValueError(f"symbol {d.s!r} in a {instrument} stream")
            # Spot bookTicker carries no time at all: its ts is the receive time.
            return [
                Ticker(exchange="binance", market=market, symbol=symbol, instrument=d.s,
                       ts=d.E * 1000 if d.E is not None else recv_ts, recv_ts=recv_ts,
                       bid_price=d.b, bid_size=d.B, ask_price=d.a, ask_size=d.A, seq=d.u)
            ]  # fmt: skip

        return build

    def _build_markPrice(self, instrument: str, symbol: str) -> Callable[[_MarkPrice, int], list[Record]]:
        market = self.market

        def build(d: _MarkPrice, recv_ts: int) -> list[Record]:
            if d.s != instrument:
                raise ValueError(f"symbol {d.s!r} in a {instrument} stream")
            return [
                FundingRate(exchange="binance", market=market, symbol=symbol, instrument=d.s, ts=d.E * 1000,
                            recv_ts=recv_ts, funding_rate=d.r or None, funding_time=d.T * 1000 if d.T else None,
                            mark_price=d.p, index_price=d.i or None, estimated_settle_price=d.P or None)
            ]  # fmt: skip

        return build

    def _build_forceOrder(self, instrument: str, symbol: str) -> Callable[[_ForceOrder, int], list[Record]]:
        market = self.market

        def build(d: _ForceOrder, recv_ts: int) -> list[Record]:
            o = d.o
            if o.s != instrument:
                raise ValueError(f"symbol {o.s!r} in a {instrument} stream")
            if o.S not in ("BUY", "SELL"):
                raise ValueError(f"forceOrder side {o.S!r} is neither BUY nor SELL")
            return [
                Liquidation(exchange="binance", market=market, symbol=symbol, instrument=o.s, ts=o.T * 1000,
                            recv_ts=recv_ts, side=_BUY if o.S == "BUY" else _SELL, price=o.p, size=o.q, status=o.X,
                            avg_price=o.ap, filled_size=o.z, last_filled_size=o.l, order_type=o.o,
                            time_in_force=o.f)
            ]  # fmt: skip

        return build


def _stream_names(subs: Sequence[Subscription]) -> list[str]:
    return [f"{s.instrument.lower()}@{s.channel}" for s in subs]


def _requests(method: str, subs: Sequence[Subscription], first_id: int, per_request: int) -> list[str]:
    names = _stream_names(subs)
    return [
        orjson.dumps({"method": method, "params": names[i : i + per_request], "id": first_id + n}).decode()
        for n, i in enumerate(range(0, len(names), per_request))
    ]


def _make(
    name: str, market: Market, ws_url: str, rest_url: str, limits: Limits, trade: str, rest: RestLimits,
    depth_path: str, depth_weight: int, derivatives: dict[DataType, str] | None = None,
) -> Venue:  # fmt: skip
    return Venue(
        name=name,
        exchange=Exchange.BINANCE,
        market=market,
        ws_url=ws_url,
        ws_path="/stream",
        rest_url=rest_url,
        channels={
            DataType.TRADE: trade,
            DataType.DEPTH: "depth@100ms",
            DataType.TICKER: "bookTicker",
            **(derivatives or {}),
        },
        heartbeat=Heartbeat("server_ping"),
        limits=limits,
        to_instrument=to_instrument,
        subscribe_messages=lambda subs, first_id: _requests("SUBSCRIBE", subs, first_id, limits.args_per_subscribe),
        unsubscribe_messages=lambda subs, first_id: _requests("UNSUBSCRIBE", subs, first_id, limits.args_per_subscribe),
        new_parser=lambda symbols=None: BinanceParser(name, market, symbols),
        rest_limits=rest,
        snapshot_request=lambda instrument: SnapshotRequest(
            depth_path, {"symbol": instrument, "limit": str(SNAPSHOT_LIMIT)}, depth_weight
        ),
    )


_DAY = 24 * 3600.0
SNAPSHOT_LIMIT = 1000  # levels per REST depth snapshot
BINANCE_SPOT = _make(
    "binance_spot",
    Market.SPOT,
    "wss://stream.binance.com:9443",
    "https://api.binance.com",
    Limits(streams_per_connection=1024, args_per_subscribe=200, subscribe_messages_per_s=4.0,
           max_connection_age_s=_DAY - 1800),
    trade="trade",
    # 6,000 weight/min per IP; depth limit=1000 weighs 50
    rest=RestLimits(weight_per_minute=4800),
    depth_path="/api/v3/depth",
    depth_weight=50,
)  # fmt: skip
BINANCE_USDM = _make(
    "binance_usdm",
    Market.PERPETUAL,
    "wss://fstream.binance.com",
    "https://fapi.binance.com",
    Limits(streams_per_connection=200, args_per_subscribe=200, subscribe_messages_per_s=8.0,
           max_connection_age_s=_DAY - 1800),
    trade="trade",
    # 2,400 weight/min per IP; depth limit=1000 weighs 20
    rest=RestLimits(weight_per_minute=1800),
    depth_path="/fapi/v1/depth",
    depth_weight=20,
    # markPriceUpdate every second: funding rate, next funding time, mark, index and estimated settle price.
    # forceOrder: the latest liquidation of the symbol in each 1000 ms window (a snapshot stream).
    derivatives={DataType.FUNDING_RATE: "markPrice@1s", DataType.LIQUIDATION: "forceOrder"},
)  # fmt: skip

# REST paths, used by the simulator now and by the order-book processor later.
REST_DEPTH_PATH = {Market.SPOT: "/api/v3/depth", Market.PERPETUAL: "/fapi/v1/depth"}
REST_EXCHANGE_INFO_PATH = {Market.SPOT: "/api/v3/exchangeInfo", Market.PERPETUAL: "/fapi/v1/exchangeInfo"}


# --- scheduled REST pulls (USDⓈ-M): long/short ratios and open interest ------------------------------------------
# /futures/data/*: buckets of ``period`` (5m .. 1d), ascending, ``limit`` up to 500, the last 30 days. Each bucket is
# {"symbol", "longShortRatio", "longAccount", "shortAccount", "timestamp"} with decimal strings; the USDⓈ-M docs
# show ``timestamp`` as a string and the COIN-M docs as a number (SOURCES.md §2.3), so both are accepted. The
# position ratio names its shares ``longAccount``/``shortAccount`` on USDⓈ-M and ``longPosition``/``shortPosition``
# on COIN-M: either is read. Binance sends the ratio itself; it is kept as sent (shares sum to 1 up to rounding).
# /fapi/v1/openInterest: {"openInterest", "symbol", "time"} (the current value, base asset units).

RATIO_PATHS = {
    "top_position": "/futures/data/topLongShortPositionRatio",
    "top_account": "/futures/data/topLongShortAccountRatio",
    "global_account": "/futures/data/globalLongShortAccountRatio",
}
OPEN_INTEREST_PATH = "/fapi/v1/openInterest"
RATIO_PERIODS = {p: p for p in ("5m", "15m", "30m", "1h", "2h", "4h", "6h", "12h", "1d")}


def _json(body: bytes, what: str) -> Any:
    try:
        return orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise ParseError("binance_usdm", f"{what}: not JSON ({exc})", body) from None


def _share(row: dict[str, Any], *names: str) -> str | None:
    for name in names:
        if row.get(name) is not None:
            return decimal_text(row[name], name)
    return None


def _ratio_parser(kind: str) -> Any:
    def parse(body: bytes, ctx: PullContext) -> list[Record]:
        rows = _json(body, kind)
        if not isinstance(rows, list):
            raise ParseError("binance_usdm", f"{kind}: expected a list of buckets", body)
        out: list[Record] = []
        try:
            for row in rows:
                out.append(
                    LongShortRatio(
                        exchange="binance", market="perpetual", symbol=ctx.symbol,
                        instrument=str(row.get("symbol") or ctx.instrument), ts=ms_of(row["timestamp"]) * 1000,
                        recv_ts=ctx.recv_ts, kind=kind, period=ctx.period,
                        long_short_ratio=decimal_text(row["longShortRatio"], "longShortRatio"),
                        long_ratio=_share(row, "longAccount", "longPosition"),
                        short_ratio=_share(row, "shortAccount", "shortPosition"),
                    )
                )  # fmt: skip
        except (KeyError, TypeError, AttributeError, ValueError) as exc:
            raise ParseError("binance_usdm", f"{kind}: bad bucket ({type(exc).__name__}: {exc})", body) from None
        return out

    return parse


def _parse_open_interest(body: bytes, ctx: PullContext) -> list[Record]:
    row = _json(body, "openInterest")
    try:
        return [
            OpenInterest(exchange="binance", market="perpetual", symbol=ctx.symbol,
                         instrument=str(row.get("symbol") or ctx.instrument), ts=ms_of(row["time"], "time") * 1000,
                         recv_ts=ctx.recv_ts, open_interest=decimal_text(row["openInterest"], "openInterest"))
        ]  # fmt: skip
    except (KeyError, TypeError, AttributeError, ValueError) as exc:
        raise ParseError("binance_usdm", f"openInterest: {type(exc).__name__}: {exc}", body) from None


def _usdm_pull(kind: str, **kw: Any) -> RestPull:
    return RestPull(
        name=f"binance_usdm.{kind}", venue="binance_usdm", exchange=Exchange.BINANCE, market=Market.PERPETUAL,
        kind=kind, rest_url=BINANCE_USDM.rest_url, to_instrument=to_instrument, rest_limits=BINANCE_USDM.rest_limits,
        default_symbols=("BTC-USDT", "ETH-USDT"), **kw,
    )  # fmt: skip


REST_PULLS: tuple[RestPull, ...] = (
    *(
        _usdm_pull(kind, data_type=DataType.LONG_SHORT_RATIO, path=path,
                   params={"symbol": "{instrument}", "period": "{period}", "limit": "{limit}"},
                   weight=1, parse=_ratio_parser(kind), periods=RATIO_PERIODS, lookback=30,
                   cadence=Cadence(cron="*/5 * * * *"))
        for kind, path in RATIO_PATHS.items()
    ),
    _usdm_pull("open_interest", data_type=DataType.OPEN_INTEREST, path=OPEN_INTEREST_PATH,
               params={"symbol": "{instrument}"}, weight=1, parse=_parse_open_interest,
               cadence=Cadence(interval_s=60)),
)  # fmt: skip
