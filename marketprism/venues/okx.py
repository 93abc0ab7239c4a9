"""OKX v5 public WebSocket: spot, perpetual swaps (and dated futures seen in the same feed).

Connection: ``/ws/v5/public``; ``{"op":"subscribe","args":[{"channel":..,"instId":..}]}``; acks are
``{"event":"subscribe","arg":{..}}``, failures ``{"event":"error","code":..,"msg":..}``.
Heartbeat: the client sends the text ``ping`` when idle (OKX closes after 30 s of silence) and receives
``pong``.
Limits: 480 subscribe requests per hour per connection; 3 connection requests per second per IP; the
args of one request must stay under 64 KB.
Data frames: ``{"arg":{"channel","instId"},"action"?,"data":[..]}``. ``books`` levels are
``[px, sz, "0", numOrders]`` (third element deprecated); size "0" deletes a level; since 2023 pushes
carry ``seqId``/``prevSeqId`` (snapshot ``prevSeqId`` = -1) and a CRC32 ``checksum`` over the top 25
levels, which may be 0 (= not provided). Times are millisecond strings.
Instruments: ``BTC-USDT`` (spot), ``BTC-USDT-SWAP`` (perpetual), ``BTC-USD-220527`` (future).
Swap derivatives: ``funding-rate`` and ``mark-price`` (-> funding_rate), ``open-interest``, and
``liquidation-orders``, subscribed by ``instType`` (one stream for every swap, filtered to the subscribed
instruments by the parser).
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
    Ticker,
    Trade,
    split_dashed,
)
from marketprism.venues.base import Heartbeat, Limits, ParseError, RestLimits, SnapshotRequest, Subscription, Venue
from marketprism.venues.pull import Cadence, PullContext, RestPull, decimal_text, ms_of


class _Arg(msgspec.Struct):
    channel: str = ""
    instId: str = ""
    instType: str = ""  # liquidation-orders is subscribed by instrument type


class _Frame(msgspec.Struct):
    arg: _Arg | None = None
    action: str | None = None
    data: msgspec.Raw = msgspec.Raw(b"")
    event: str | None = None
    code: str | None = None
    msg: str | None = None


class _Trade(msgspec.Struct, gc=False):
    instId: str
    tradeId: str
    px: str
    sz: str
    side: str
    ts: str


class _Book(msgspec.Struct, gc=False):
    asks: msgspec.Raw  # [[px, sz, "0", numOrders], ...] kept as sent (see records.Depth)
    bids: msgspec.Raw
    ts: str
    checksum: int | None = None
    seqId: int | None = None
    prevSeqId: int | None = None


class _Bbo(msgspec.Struct, gc=False):
    asks: list[list[str]]
    bids: list[list[str]]
    ts: str
    seqId: int | None = None


class _Ticker(msgspec.Struct, gc=False):
    instId: str
    bidPx: str
    bidSz: str
    askPx: str
    askSz: str
    ts: str
    last: str | None = None


class _FundingRate(msgspec.Struct, gc=False):
    instId: str
    fundingRate: str
    fundingTime: str
    ts: str
    nextFundingRate: str = ""
    nextFundingTime: str = ""
    minFundingRate: str = ""
    maxFundingRate: str = ""
    premium: str = ""
    interestRate: str = ""
    impactValue: str = ""
    settFundingRate: str = ""
    settState: str = ""
    method: str = ""
    formulaType: str = ""


class _MarkPrice(msgspec.Struct, gc=False):
    instId: str
    markPx: str
    ts: str


class _OpenInterest(msgspec.Struct, gc=False):
    instId: str
    oi: str
    ts: str
    oiCcy: str = ""
    oiUsd: str = ""


class _LiqDetail(msgspec.Struct, gc=False):
    side: str
    sz: str
    bkPx: str
    ts: str
    posSide: str = ""
    bkLoss: str = ""
    ccy: str = ""


class _LiqItem(msgspec.Struct, gc=False):
    instId: str
    details: list[_LiqDetail]


_liquidations = msgspec.json.Decoder(list[_LiqItem])
LIQUIDATION_CHANNEL = "liquidation-orders"


def _frame_type(item: type) -> type:
    """A whole data frame whose ``data`` is a list of ``item`` (``arg`` is read from the text)."""
    fields: list[Any] = [("data", list[item]), ("action", str | None, None)]  # type: ignore[valid-type]
    return msgspec.defstruct(f"_{item.__name__}Frame", fields, gc=False)


# Channel kind -> (whole-frame decoder, data-only decoder).
_DECODERS: dict[str, tuple[msgspec.json.Decoder[Any], msgspec.json.Decoder[Any]]] = {
    kind: (msgspec.json.Decoder(_frame_type(item)), msgspec.json.Decoder(list[item]))  # type: ignore[valid-type]
    for kind, item in (("trades", _Trade), ("books", _Book), ("bbo", _Bbo), ("tickers", _Ticker),
                       ("funding", _FundingRate), ("mark", _MarkPrice), ("oi", _OpenInterest))
}  # fmt: skip
_KIND = {
    "trades": "trades", "trades-all": "trades", "books": "books", "books-l2-tbt": "books",
    "books50-l2-tbt": "books", "books5": "books", "bbo-tbt": "bbo", "tickers": "tickers",
    "funding-rate": "funding", "mark-price": "mark", "open-interest": "oi",
}  # fmt: skip
_frame = msgspec.json.Decoder(_Frame)
_ARG_PREFIX = '{"arg":{"channel":"'
_INST_KEY = '","instId":"'
_UNSEEN: Any = object()

# (whole-frame decoder, data-only decoder, builder(items, action, recv_ts)) for one (channel, instId)
_StreamParser = tuple[
    msgspec.json.Decoder[Any], msgspec.json.Decoder[Any], Callable[[list[Any], str | None, int], list[Record]]
]


def instrument_market(instrument: str) -> Market:
    parts = instrument.split("-")
    if len(parts) == 2:
        return Market.SPOT
    if parts[-1] == "SWAP":
        return Market.PERPETUAL
    if len(parts) == 3:
        return Market.FUTURE
    return Market.OPTION


class OkxParser:
    """Parses OKX v5 public pushes. One instance per connection.

    Pushes start with ``{"arg":{"channel":"..","instId":".."}``, so the stream is read from the text and
    the frame decoded once by the typed decoder for its channel; other shapes take the envelope path.
    """

    def __init__(self, venue_name: str, symbols: Mapping[str, str] | None = None):
        self.venue_name = venue_name
        # instId -> symbol from the subscriptions, held by reference (a session may add to it at runtime)
        self._known: Mapping[str, str] = symbols if symbols is not None else {}
        self._filter = symbols is not None  # liquidation-orders: keep only the subscribed instruments
        self._streams: dict[str, _StreamParser | None] = {}

    def _stream_parser(self, channel: str, inst: str) -> _StreamParser | None:
        key = f"{channel}{_INST_KEY}{inst}"
        if key in self._streams:
            return self._streams[key]
        kind = _KIND.get(channel)
        parser: _StreamParser | None = None
        if kind is not None:
            symbol = self._known.get(inst) or split_dashed(inst)
            build = getattr(self, f"_build_{kind}")(inst, instrument_market(inst).value, symbol)
            parser = (*_DECODERS[kind], build)
        if len(self._streams) < 100_000:
            self._streams[key] = parser
        return parser

    def parse(self, frame: str | bytes, recv_ts: int) -> list[Record]:
        if frame == "pong" or frame == b"pong":
            return []
        text = frame if isinstance(frame, str) else frame[:160].decode("latin-1")
        if text.startswith(_ARG_PREFIX):
            end = text.find('"', 19, 160)
            if end > 0 and text.startswith(_INST_KEY, end):
                inst_end = text.find('"', end + 12, 200)
                if inst_end > 0 and text.startswith("}", inst_end + 1):
                    key = text[19:inst_end]
                    try:
                        parser = self._streams.get(key, _UNSEEN)
                        if parser is _UNSEEN:
                            parser = self._stream_parser(text[19:end], text[end + 12 : inst_end])
                        if parser is None:
                            return []
                        f = parser[0].decode(frame)
                        return parser[2](f.data, f.action, recv_ts)
                    except (msgspec.DecodeError, msgspec.ValidationError, IndexError) as exc:
                        raise ParseError(self.venue_name, f"bad {text[19:end]} push ({exc})", frame) from None
                    except ValueError as exc:
                        raise ParseError(self.venue_name, str(exc), frame) from None
        return self._parse_other(frame, recv_ts)

    def _parse_other(self, frame: str | bytes, recv_ts: int) -> list[Record]:
        """Events (acks, errors, notices) and pushes whose keys arrive in another order."""
        try:
            f = _frame.decode(frame)
        except (msgspec.DecodeError, msgspec.ValidationError, UnicodeError) as exc:
            raise ParseError(self.venue_name, f"not an OKX frame ({exc})", frame) from None
        if f.event is not None:
            if f.event == "error":
                raise ParseError(
                    self.venue_name, f"error event code {f.code}: {f.msg}", frame, code=Code.PARSE_VENUE_ERROR
                )
            return []  # subscribe / unsubscribe acks, channel-conn-count notices
        if f.arg is None or not f.data:
            raise ParseError(self.venue_name, "frame has neither event nor arg/data", frame)
        if f.arg.channel == LIQUIDATION_CHANNEL:
            return self._liquidations(f.data, frame, recv_ts)
        try:
            parser = self._stream_parser(f.arg.channel, f.arg.instId)
            return [] if parser is None else parser[2](parser[1].decode(f.data), f.action, recv_ts)
        except (msgspec.DecodeError, msgspec.ValidationError, IndexError) as exc:
            raise ParseError(self.venue_name, f"bad {f.arg.channel} payload ({exc})", frame) from None
        except ValueError as exc:
            raise ParseError(self.venue_name, str(exc), frame) from None

    def _liquidations(self, data: msgspec.Raw, frame: str | bytes, recv_ts: int) -> list[Record]:
        """``liquidation-orders`` carries every instrument of an instType. With a symbol map (a session's
        subscriptions) only its instruments are kept: each shard then publishes its own symbols' liquidations,
        once, and nothing lands under symbols nobody configured. Without one (captures) all are kept."""
        try:
            items = _liquidations.decode(data)
            out: list[Record] = []
            for item in items:
                symbol = self._known.get(item.instId)
                if symbol is None:
                    if self._filter:
                        continue
                    symbol = split_dashed(item.instId)
                market = instrument_market(item.instId).value
                for d in item.details:
                    if d.side not in ("buy", "sell"):
                        raise ValueError(f"liquidation side {d.side!r} is neither buy nor sell")
                    out.append(
                        Liquidation(exchange="okx", market=market, symbol=symbol, instrument=item.instId,
                                    ts=int(d.ts) * 1000, recv_ts=recv_ts, side=d.side, price=d.bkPx, size=d.sz,
                                    position_side=d.posSide or None, bankruptcy_loss=d.bkLoss or None,
                                    currency=d.ccy or None)
                    )  # fmt: skip
            return out
        except (msgspec.DecodeError, msgspec.ValidationError) as exc:
            raise ParseError(self.venue_name, f"bad {LIQUIDATION_CHANNEL} payload ({exc})", frame) from None
        except ValueError as exc:
            raise ParseError(self.venue_name, str(exc), frame) from None

    # Builders: one closure per (channel, instrument) with the instrument's market and symbol bound.
    def _build_trades(
        self, inst: str, market: str, symbol: str
    ) -> Callable[[list[_Trade], str | None, int], list[Record]]:
        def build(items: list[_Trade], action: str | None, recv_ts: int) -> list[Record]:
            return [
                Trade(exchange="okx", market=market, symbol=symbol, instrument=t.instId, ts=int(t.ts) * 1000,
                      recv_ts=recv_ts, trade_id=t.tradeId, price=t.px, size=t.sz, side=t.side)
                for t in items
            ]  # fmt: skip

        return build

    def _build_books(
        self, inst: str, market: str, symbol: str
    ) -> Callable[[list[_Book], str | None, int], list[Record]]:
        def build(items: list[_Book], action: str | None, recv_ts: int) -> list[Record]:
            snapshot = action != "update"  # books5 pushes full books without an action
            return [
                Depth(exchange="okx", market=market, symbol=symbol, instrument=inst, ts=int(b.ts) * 1000,
                      recv_ts=recv_ts, is_snapshot=snapshot, bids=b.bids, asks=b.asks, seq=b.seqId,
                      prev_seq=b.prevSeqId, checksum=b.checksum)
                for b in items
            ]  # fmt: skip

        return build

    def _build_bbo(self, inst: str, market: str, symbol: str) -> Callable[[list[_Bbo], str | None, int], list[Record]]:
        def build(items: list[_Bbo], action: str | None, recv_ts: int) -> list[Record]:
            out: list[Record] = []
            for b in items:
                if not b.bids or not b.asks:
                    continue  # an empty side has no best price: not a ticker
                out.append(
                    Ticker(exchange="okx", market=market, symbol=symbol, instrument=inst, ts=int(b.ts) * 1000,
                           recv_ts=recv_ts, bid_price=b.bids[0][0], bid_size=b.bids[0][1], ask_price=b.asks[0][0],
                           ask_size=b.asks[0][1], seq=b.seqId)
                )  # fmt: skip
            return out

        return build

    def _build_tickers(
        self, inst: str, market: str, symbol: str
    ) -> Callable[[list[_Ticker], str | None, int], list[Record]]:
        def build(items: list[_Ticker], action: str | None, recv_ts: int) -> list[Record]:
            return [
                Ticker(exchange="okx", market=market, symbol=symbol, instrument=t.instId, ts=int(t.ts) * 1000,
                       recv_ts=recv_ts, bid_price=t.bidPx, bid_size=t.bidSz, ask_price=t.askPx, ask_size=t.askSz,
                       last_price=t.last)
                for t in items
            ]  # fmt: skip

        return build

    def _build_funding(
        self, inst: str, market: str, symbol: str
    ) -> Callable[[list[_FundingRate], str | None, int], list[Record]]:
        def build(items: list[_FundingRate], action: str | None, recv_ts: int) -> list[Record]:
            return [
                FundingRate(exchange="okx", market=market, symbol=symbol, instrument=f.instId, ts=int(f.ts) * 1000,
                            recv_ts=recv_ts, funding_rate=f.fundingRate or None,
                            funding_time=_us(f.fundingTime), predicted_rate=f.nextFundingRate or None,
                            next_funding_time=_us(f.nextFundingTime), min_funding_rate=f.minFundingRate or None,
                            max_funding_rate=f.maxFundingRate or None, premium=f.premium or None,
                            interest_rate=f.interestRate or None, impact_value=f.impactValue or None,
                            settled_rate=f.settFundingRate or None, settle_state=f.settState or None,
                            method=f.method or None, formula_type=f.formulaType or None)
                for f in items
            ]  # fmt: skip

        return build

    def _build_mark(
        self, inst: str, market: str, symbol: str
    ) -> Callable[[list[_MarkPrice], str | None, int], list[Record]]:
        def build(items: list[_MarkPrice], action: str | None, recv_ts: int) -> list[Record]:
            return [
                FundingRate(exchange="okx", market=market, symbol=symbol, instrument=m.instId, ts=int(m.ts) * 1000,
                            recv_ts=recv_ts, mark_price=m.markPx)
                for m in items
            ]  # fmt: skip

        return build

    def _build_oi(
        self, inst: str, market: str, symbol: str
    ) -> Callable[[list[_OpenInterest], str | None, int], list[Record]]:
        def build(items: list[_OpenInterest], action: str | None, recv_ts: int) -> list[Record]:
            return [
                OpenInterest(exchange="okx", market=market, symbol=symbol, instrument=o.instId, ts=int(o.ts) * 1000,
                             recv_ts=recv_ts, open_interest=o.oi, open_interest_value=o.oiUsd or None,
                             open_interest_ccy=o.oiCcy or None)
                for o in items
            ]  # fmt: skip

        return build


def _us(ms: str) -> int | None:
    """A millisecond string ("" = none) as µs."""
    return int(ms) * 1000 if ms else None


def _arg(s: Subscription) -> dict[str, str]:
    if s.channel == LIQUIDATION_CHANNEL:  # one stream per instrument type, for all its instruments
        return {"channel": s.channel, "instType": _INST_TYPE[instrument_market(s.instrument)]}
    return {"channel": s.channel, "instId": s.instrument}


def _stream_key(s: Subscription) -> str:
    arg = _arg(s)
    return f"{arg['channel']}.{arg.get('instId') or arg['instType']}"


_INST_TYPE = {Market.SPOT: "SPOT", Market.PERPETUAL: "SWAP", Market.FUTURE: "FUTURES", Market.OPTION: "OPTION"}


def _requests(op: str, subs: Sequence[Subscription], first_id: int, per_request: int) -> list[str]:
    args = [_arg(s) for s in subs]
    return [
        orjson.dumps({"op": op, "args": args[i : i + per_request]}).decode() for i in range(0, len(args), per_request)
    ]


REST_INSTRUMENTS_PATH = "/api/v5/public/instruments"
REST_BOOKS_PATH = "/api/v5/market/books"


def _make(
    name: str, market: Market, suffix: str, derivatives: dict[DataType, str] | None = None,
    extra_channels: dict[DataType, tuple[str, ...]] | None = None,
) -> Venue:  # fmt: skip
    limits = Limits(streams_per_connection=240, args_per_subscribe=60, subscribe_messages_per_s=2.0)

    def to_instrument(symbol: str) -> str:
        sym = symbol.upper()
        return sym if sym.count("-") >= 2 or not suffix else sym + suffix

    return Venue(
        name=name,
        exchange=Exchange.OKX,
        market=market,
        ws_url="wss://ws.okx.com:8443",
        ws_path="/ws/v5/public",
        rest_url="https://www.okx.com",
        channels={DataType.TRADE: "trades", DataType.DEPTH: "books", DataType.TICKER: "bbo-tbt", **(derivatives or {})},
        extra_channels=extra_channels or {},
        stream_key=_stream_key,
        heartbeat=Heartbeat("client_text", every_s=20.0, message="ping"),
        limits=limits,
        to_instrument=to_instrument,
        subscribe_messages=lambda subs, first_id: _requests("subscribe", subs, first_id, 60),
        unsubscribe_messages=lambda subs, first_id: _requests("unsubscribe", subs, first_id, 60),
        new_parser=lambda symbols=None: OkxParser(name, symbols),
        # /market/books: 40 requests per 2 s per IP. Books resync by resubscribing (the stream sends a snapshot).
        rest_limits=RestLimits(weight_per_minute=900),
        snapshot_request=lambda instrument: SnapshotRequest(REST_BOOKS_PATH, {"instId": instrument, "sz": "400"}, 1),
    )


OKX_SPOT = _make("okx_spot", Market.SPOT, "")
# funding-rate: fundingRate and the predicted next one, pushed every 30-90 s; mark-price: markPx when it changes
# (at most every 200 ms), kept as funding_rate records with only the mark (as Binance's markPriceUpdate carries
# it); open-interest every 3 s; liquidation-orders: one stream for all swaps, filtered to the configured symbols.
OKX_SWAP = _make(
    "okx_swap", Market.PERPETUAL, "-SWAP",
    derivatives={DataType.FUNDING_RATE: "funding-rate", DataType.OPEN_INTEREST: "open-interest",
                 DataType.LIQUIDATION: LIQUIDATION_CHANNEL},
    extra_channels={DataType.FUNDING_RATE: ("mark-price",)},
)  # fmt: skip


# --- scheduled REST pulls (rubik trading statistics and open interest) ------------------------------------------
# Rubik answers {"code":"0","msg":"","data":[["<ts ms>","<ratio>"], ...]} newest first; only the ratio is sent (no
# long/short shares). ``long-short-account-ratio`` is per currency (all of its contracts: ccy, period 5m/1H/1D,
# begin/end); the top-trader ratios are per contract (instId, period 5m..1D, limit <= 100; ccxt 4.5 and the OKX
# docs list ``long-short-account-ratio-contract-top-trader`` and ``long-short-position-ratio-contract-top-trader``).
# The currency ratio is stored under the configured symbol with ``instrument`` = the currency (e.g. "BTC").
# /api/v5/public/open-interest: data [{"instType","instId","oi" (contracts),"oiCcy" (coin),"oiUsd","ts"}].

RUBIK_ACCOUNT_RATIO_PATH = "/api/v5/rubik/stat/contracts/long-short-account-ratio"
RUBIK_TOP_ACCOUNT_PATH = "/api/v5/rubik/stat/contracts/long-short-account-ratio-contract-top-trader"
RUBIK_TOP_POSITION_PATH = "/api/v5/rubik/stat/contracts/long-short-position-ratio-contract-top-trader"
OPEN_INTEREST_PATH = "/api/v5/public/open-interest"
CCY_PERIODS = {"5m": "5m", "1h": "1H", "1d": "1D"}
CONTRACT_PERIODS = {"5m": "5m", "15m": "15m", "30m": "30m", "1h": "1H", "2h": "2H", "4h": "4H", "6h": "6H",
                    "12h": "12H", "1d": "1D"}  # fmt: skip


def _rest_data(body: bytes, what: str) -> list[Any]:
    try:
        reply = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise ParseError("okx", f"{what}: not JSON ({exc})", body) from None
    if not isinstance(reply, dict) or not isinstance(reply.get("data"), list):
        raise ParseError("okx", f"{what}: no data list", body)
    if str(reply.get("code", "0")) != "0":
        reason = f"{what}: code {reply.get('code')}: {reply.get('msg')}"
        raise ParseError("okx", reason, body, code=Code.PARSE_VENUE_ERROR)
    return reply["data"]


def _rubik_parser(kind: str) -> Any:
    def parse(body: bytes, ctx: PullContext) -> list[Record]:
        out: list[Record] = []
        try:
            for row in _rest_data(body, kind):
                out.append(
                    LongShortRatio(exchange="okx", market="perpetual", symbol=ctx.symbol, instrument=ctx.instrument,
                                   ts=ms_of(row[0]) * 1000, recv_ts=ctx.recv_ts, kind=kind, period=ctx.period,
                                   long_short_ratio=decimal_text(row[1], "ratio"))
                )  # fmt: skip
        except (IndexError, KeyError, TypeError, ValueError) as exc:
            raise ParseError("okx", f"{kind}: bad bucket ({type(exc).__name__}: {exc})", body) from None
        return out

    return parse


def _parse_open_interest(body: bytes, ctx: PullContext) -> list[Record]:
    out: list[Record] = []
    try:
        for row in _rest_data(body, "open-interest"):
            inst = str(row["instId"])
            out.append(
                OpenInterest(exchange="okx", market=instrument_market(inst).value, symbol=ctx.symbol, instrument=inst,
                             ts=ms_of(row["ts"]) * 1000, recv_ts=ctx.recv_ts,
                             open_interest=decimal_text(row["oi"], "oi"),
                             open_interest_value=decimal_text(row["oiUsd"], "oiUsd") if row.get("oiUsd") else None,
                             open_interest_ccy=decimal_text(row["oiCcy"], "oiCcy") if row.get("oiCcy") else None)
            )  # fmt: skip
    except (KeyError, TypeError, AttributeError, ValueError) as exc:
        raise ParseError("okx", f"open-interest: {type(exc).__name__}: {exc}", body) from None
    return out


def _currency(symbol: str) -> str:
    return symbol.upper().split("-")[0]


def _swap_pull(kind: str, to_instrument: Any, **kw: Any) -> RestPull:
    return RestPull(
        name=f"okx_swap.{kind}", venue="okx_swap", exchange=Exchange.OKX, market=Market.PERPETUAL, kind=kind,
        rest_url=OKX_SWAP.rest_url, to_instrument=to_instrument,
        # rubik: 5 requests per 2 s per IP; public/open-interest: 20 per 2 s. One budget for both, below the smaller.
        rest_limits=RestLimits(weight_per_minute=120), default_symbols=("BTC-USDT", "ETH-USDT"), **kw,
    )  # fmt: skip


_RATIO = DataType.LONG_SHORT_RATIO
_EVERY_5_MIN = Cadence(cron="*/5 * * * *")
REST_PULLS: tuple[RestPull, ...] = (
    _swap_pull("global_account", _currency, data_type=_RATIO, path=RUBIK_ACCOUNT_RATIO_PATH,
               params={"ccy": "{instrument}", "period": "{period}", "begin": "{start_ms}", "end": "{end_ms}"},
               weight=1, parse=_rubik_parser("global_account"), periods=CCY_PERIODS, lookback=30, cadence=_EVERY_5_MIN),
    _swap_pull("top_account", OKX_SWAP.to_instrument, data_type=_RATIO, path=RUBIK_TOP_ACCOUNT_PATH,
               params={"instId": "{instrument}", "period": "{period}", "limit": "{limit}"}, weight=1,
               parse=_rubik_parser("top_account"), periods=CONTRACT_PERIODS, lookback=30, cadence=_EVERY_5_MIN),
    _swap_pull("top_position", OKX_SWAP.to_instrument, data_type=_RATIO, path=RUBIK_TOP_POSITION_PATH,
               params={"instId": "{instrument}", "period": "{period}", "limit": "{limit}"}, weight=1,
               parse=_rubik_parser("top_position"), periods=CONTRACT_PERIODS, lookback=30, cadence=_EVERY_5_MIN),
    _swap_pull("open_interest", OKX_SWAP.to_instrument, data_type=DataType.OPEN_INTEREST, path=OPEN_INTEREST_PATH,
               params={"instType": "SWAP", "instId": "{instrument}"}, weight=1, parse=_parse_open_interest,
               cadence=Cadence(interval_s=60)),
)  # fmt: skip
