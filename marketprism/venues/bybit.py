"""Bybit v5 public WebSocket, linear (USDT) perpetuals.

Connection: ``/v5/public/linear``; ``{"op":"subscribe","args":["publicTrade.BTCUSDT",..],"req_id":"N"}``
(at most 10 args per request); replies ``{"success":..,"ret_msg":..,"op":"subscribe"}``.
Heartbeat: the client sends ``{"op":"ping"}`` every 20 s; the server replies with ``op`` pong.
Topics: ``publicTrade.<sym>`` (data: list of trades, ``S`` Buy/Sell is the taker side, ``i`` the trade id),
``orderbook.<N>.<sym>`` (``type`` snapshot|delta; ``u`` update id, +1 per message; ``seq`` cross
sequence; a snapshot with ``u == 1`` means the service restarted and the book must be replaced),
``tickers.<sym>`` (snapshot then deltas that carry only the changed fields, so best bid/ask are merged
per instrument here; ``cs`` is the cross sequence; the same stream yields funding_rate and open_interest
records when those fields change), ``allLiquidation.<sym>`` (``S`` is the liquidated position's side).
Times are milliseconds.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

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
    split_concatenated,
)
from marketprism.venues.base import Heartbeat, Limits, ParseError, RestLimits, SnapshotRequest, Subscription, Venue
from marketprism.venues.pull import Cadence, PullContext, RestPull, decimal_text, ms_of, ratio_text


class _Frame(msgspec.Struct):
    topic: str | None = None
    type: str | None = None
    ts: int | None = None
    data: msgspec.Raw = msgspec.Raw(b"")
    cs: int | None = None
    op: str | None = None
    success: bool | None = None
    ret_msg: str | None = None


class _Trade(msgspec.Struct):
    T: int
    s: str
    S: str
    v: str
    p: str
    i: str


class _Book(msgspec.Struct, gc=False):
    s: str
    b: msgspec.Raw  # levels kept as sent (see records.Depth)
    a: msgspec.Raw
    u: int
    seq: int | None = None


class _Ticker(msgspec.Struct):
    symbol: str
    bid1Price: str | None = None
    bid1Size: str | None = None
    ask1Price: str | None = None
    ask1Size: str | None = None
    lastPrice: str | None = None
    fundingRate: str | None = None
    nextFundingTime: str | None = None
    markPrice: str | None = None
    indexPrice: str | None = None
    openInterest: str | None = None
    openInterestValue: str | None = None


class _Liquidation(msgspec.Struct, gc=False):
    T: int
    s: str
    S: str  # the side of the liquidated *position*: Buy = a long was liquidated (by a sell order)
    v: str
    p: str


_frame = msgspec.json.Decoder(_Frame)
_trades = msgspec.json.Decoder(list[_Trade])
_book = msgspec.json.Decoder(_Book)
_ticker = msgspec.json.Decoder(_Ticker)
_liquidations = msgspec.json.Decoder(list[_Liquidation])
# Bybit's S (position side) -> (liquidation order side, position side)
_LIQ_SIDES = {"Buy": ("sell", "long"), "Sell": ("buy", "short")}


def to_instrument(symbol: str) -> str:
    return symbol.replace("-", "").upper()


class BybitParser:
    def __init__(self, venue_name: str, market: Market, symbols: Mapping[str, str] | None = None):
        self.venue_name = venue_name
        self.market = market.value
        # instrument -> symbol from the subscriptions (so "ADAEUR" is ADA-EUR, not AD-AEUR). Held by reference:
        # a session adding subscriptions at runtime adds to it. Guesses for other instruments are kept apart.
        self._known: Mapping[str, str] = symbols if symbols is not None else {}
        self._guessed: dict[str, str] = {}
        self._bbo: dict[str, list[str | None]] = {}  # instrument -> [bid, bid size, ask, ask size, last]
        # instrument -> [fundingRate, nextFundingTime, markPrice, indexPrice, openInterest, openInterestValue]
        self._deriv: dict[str, list[str | None]] = {}

    def _symbol(self, instrument: str) -> str:
        sym = self._known.get(instrument) or self._guessed.get(instrument)
        if sym is None:
            sym = self._guessed[instrument] = split_concatenated(instrument)
        return sym

    def parse(self, frame: str | bytes, recv_ts: int) -> list[Record]:
        try:
            f = _frame.decode(frame)
        except (msgspec.DecodeError, msgspec.ValidationError, UnicodeError) as exc:
            raise ParseError(self.venue_name, f"not a Bybit frame ({exc})", frame) from None
        if f.topic is None:
            if f.op is not None:
                if f.success is False:
                    raise ParseError(self.venue_name, f"{f.op} failed: {f.ret_msg}", frame, code=Code.PARSE_VENUE_ERROR)
                return []  # subscribe replies and pongs
            raise ParseError(self.venue_name, "frame has neither topic nor op", frame)
        if not f.data or f.ts is None:
            raise ParseError(self.venue_name, "data frame without data or ts", frame)
        kind = f.topic.partition(".")[0]
        try:
            if kind == "publicTrade":
                return [self._trade(t, recv_ts) for t in _trades.decode(f.data)]
            if kind == "orderbook":
                return [self._depth(_book.decode(f.data), f, recv_ts)]
            if kind == "tickers":
                return self._ticker(_ticker.decode(f.data), f, recv_ts)
            if kind == "allLiquidation":
                return [self._liquidation(liq, recv_ts) for liq in _liquidations.decode(f.data)]
        except (msgspec.DecodeError, msgspec.ValidationError) as exc:
            raise ParseError(self.venue_name, f"bad {kind} payload ({exc})", frame) from None
        except ValueError as exc:
            raise ParseError(self.venue_name, str(exc), frame) from None
        return []

    def _trade(self, t: _Trade, recv_ts: int) -> Trade:
        return Trade(
            exchange="bybit", market=self.market, symbol=self._symbol(t.s), instrument=t.s,
            ts=t.T * 1000, recv_ts=recv_ts, trade_id=t.i, price=t.p, size=t.v, side=t.S.lower(),
        )  # fmt: skip

    def _depth(self, d: _Book, f: _Frame, recv_ts: int) -> Depth:
        return Depth(
            exchange="bybit", market=self.market, symbol=self._symbol(d.s), instrument=d.s,
            ts=(f.ts or 0) * 1000, recv_ts=recv_ts, is_snapshot=f.type == "snapshot", bids=d.b, asks=d.a,
            seq=d.u, cross_seq=d.seq,
        )  # fmt: skip

    def _liquidation(self, liq: _Liquidation, recv_ts: int) -> Liquidation:
        sides = _LIQ_SIDES.get(liq.S)
        if sides is None:
            raise ValueError(f"liquidation side {liq.S!r} is neither Buy nor Sell")
        return Liquidation(
            exchange="bybit", market=self.market, symbol=self._symbol(liq.s), instrument=liq.s, ts=liq.T * 1000,
            recv_ts=recv_ts, side=sides[0], position_side=sides[1], price=liq.p, size=liq.v,
        )  # fmt: skip

    def _ticker(self, t: _Ticker, f: _Frame, recv_ts: int) -> list[Record]:
        """Ticker when best bid/ask changed; FundingRate when funding, next funding time, mark or index changed;
        OpenInterest when open interest or its value changed. Each carries the merged state, not the delta."""
        state = self._bbo.get(t.symbol)
        deriv = self._deriv.get(t.symbol)
        if state is None or deriv is None or f.type == "snapshot":
            state = self._bbo[t.symbol] = [None] * 5
            deriv = self._deriv[t.symbol] = [None] * 6
        fields = (t.bid1Price, t.bid1Size, t.ask1Price, t.ask1Size, t.lastPrice)
        changed = False
        for i, value in enumerate(fields):
            if value is not None:
                changed = changed or (i < 4 and state[i] != value)
                state[i] = value
        funding_changed = oi_changed = False
        for i, value in enumerate((t.fundingRate, t.nextFundingTime, t.markPrice, t.indexPrice, t.openInterest,
                                   t.openInterestValue)):  # fmt: skip
            if value is not None and deriv[i] != value:
                if i < 4:
                    funding_changed = True
                else:
                    oi_changed = True
                deriv[i] = value
        out: list[Record] = []
        ts, symbol = (f.ts or 0) * 1000, self._symbol(t.symbol)
        # A delta that only moved funding or open interest is not a best bid/ask update.
        if changed and None not in state[:4]:
            bid, bid_size, ask, ask_size, last = state
            out.append(
                Ticker(exchange="bybit", market=self.market, symbol=symbol, instrument=t.symbol, ts=ts,
                       recv_ts=recv_ts, bid_price=bid or "", bid_size=bid_size or "", ask_price=ask or "",
                       ask_size=ask_size or "", seq=f.cs, last_price=last)
            )  # fmt: skip
        rate, next_time, mark, index, oi, oi_value = deriv
        if funding_changed:
            out.append(
                FundingRate(exchange="bybit", market=self.market, symbol=symbol, instrument=t.symbol, ts=ts,
                            recv_ts=recv_ts, funding_rate=rate or None,
                            funding_time=int(next_time) * 1000 if next_time else None, mark_price=mark or None,
                            index_price=index or None)
            )  # fmt: skip
        if oi_changed and oi:
            out.append(
                OpenInterest(exchange="bybit", market=self.market, symbol=symbol, instrument=t.symbol, ts=ts,
                             recv_ts=recv_ts, open_interest=oi, open_interest_value=oi_value or None)
            )  # fmt: skip
        return out


def _topic(sub: Subscription) -> str:
    return f"{sub.channel}.{sub.instrument}"


def _requests(op: str, subs: Sequence[Subscription], first_id: int) -> list[str]:
    topics = [_topic(s) for s in subs]
    return [
        orjson.dumps({"op": op, "args": topics[i : i + 10], "req_id": str(first_id + n)}).decode()
        for n, i in enumerate(range(0, len(topics), 10))
    ]


BYBIT_DEPTH_LEVELS = 50
REST_ORDERBOOK_PATH = "/v5/market/orderbook"
REST_INSTRUMENTS_PATH = "/v5/market/instruments-info"

BYBIT_LINEAR = Venue(
    name="bybit_linear",
    exchange=Exchange.BYBIT,
    market=Market.PERPETUAL,
    ws_url="wss://stream.bybit.com",
    ws_path="/v5/public/linear",
    rest_url="https://api.bybit.com",
    channels={
        DataType.TRADE: "publicTrade",
        DataType.DEPTH: f"orderbook.{BYBIT_DEPTH_LEVELS}",
        DataType.TICKER: "tickers",
        # tickers also carries funding (fundingRate, nextFundingTime, markPrice, indexPrice) and open interest
        # (openInterest, openInterestValue): one wire stream, subscribed once, for all three data types.
        DataType.FUNDING_RATE: "tickers",
        DataType.OPEN_INTEREST: "tickers",
        DataType.LIQUIDATION: "allLiquidation",
    },
    heartbeat=Heartbeat("client_text", every_s=20.0, message='{"op":"ping"}'),
    limits=Limits(streams_per_connection=200, args_per_subscribe=10, subscribe_messages_per_s=5.0),
    to_instrument=to_instrument,
    subscribe_messages=lambda subs, first_id: _requests("subscribe", subs, first_id),
    unsubscribe_messages=lambda subs, first_id: _requests("unsubscribe", subs, first_id),
    new_parser=lambda symbols=None: BybitParser("bybit_linear", Market.PERPETUAL, symbols),
    depth_levels=BYBIT_DEPTH_LEVELS,
    # 600 requests per 5 s per IP. Books resync by a REST snapshot (body: book.snapshots.bybit_orderbook_snapshot)
    # of the stream's own depth, so the levels it holds are the ones the stream's deltas maintain.
    rest_limits=RestLimits(weight_per_minute=3000),
    snapshot_request=lambda instrument: SnapshotRequest(
        REST_ORDERBOOK_PATH, {"category": "linear", "symbol": instrument, "limit": str(BYBIT_DEPTH_LEVELS)}, 1
    ),
)


# --- scheduled REST pulls: the account long/short ratio ----------------------------------------------------------
# /v5/market/account-ratio (category, symbol, period 5min/15min/30min/1h/4h/1d, limit 1..500, startTime/endTime):
# {"retCode":0,"retMsg":"OK","result":{"list":[{"symbol","buyRatio","sellRatio","timestamp"}],"nextPageCursor"},
# "time"} newest first. buyRatio/sellRatio are the shares of holders long and short (they sum to 1); Bybit sends
# no ratio, so long_short_ratio = buyRatio / sellRatio, computed in Decimal.

ACCOUNT_RATIO_PATH = "/v5/market/account-ratio"
RATIO_PERIODS = {"5m": "5min", "15m": "15min", "30m": "30min", "1h": "1h", "4h": "4h", "1d": "1d"}


def _parse_account_ratio(body: bytes, ctx: PullContext) -> list[Record]:
    try:
        reply = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise ParseError("bybit_linear", f"account-ratio: not JSON ({exc})", body) from None
    if not isinstance(reply, dict):
        raise ParseError("bybit_linear", "account-ratio: not an object", body)
    if reply.get("retCode", 0) != 0:
        reason = f"account-ratio: retCode {reply.get('retCode')}: {reply.get('retMsg')}"
        raise ParseError("bybit_linear", reason, body, code=Code.PARSE_VENUE_ERROR)
    out: list[Record] = []
    try:
        for row in reply["result"]["list"]:
            buy, sell = decimal_text(row["buyRatio"], "buyRatio"), decimal_text(row["sellRatio"], "sellRatio")
            out.append(
                LongShortRatio(exchange="bybit", market="perpetual", symbol=ctx.symbol,
                               instrument=str(row.get("symbol") or ctx.instrument), ts=ms_of(row["timestamp"]) * 1000,
                               recv_ts=ctx.recv_ts, kind="global_account", period=ctx.period,
                               long_short_ratio=ratio_text(buy, sell), long_ratio=buy, short_ratio=sell)
            )  # fmt: skip
    except (KeyError, TypeError, AttributeError, ValueError, ArithmeticError) as exc:
        raise ParseError("bybit_linear", f"account-ratio: bad bucket ({type(exc).__name__}: {exc})", body) from None
    return out


REST_PULLS: tuple[RestPull, ...] = (
    RestPull(
        name="bybit_linear.global_account", venue="bybit_linear", exchange=Exchange.BYBIT, market=Market.PERPETUAL,
        data_type=DataType.LONG_SHORT_RATIO, kind="global_account", rest_url=BYBIT_LINEAR.rest_url,
        path=ACCOUNT_RATIO_PATH,
        params={"category": "linear", "symbol": "{instrument}", "period": "{period}", "limit": "{limit}"},
        weight=1, parse=_parse_account_ratio, to_instrument=to_instrument, cadence=Cadence(cron="*/5 * * * *"),
        rest_limits=BYBIT_LINEAR.rest_limits, periods=RATIO_PERIODS, lookback=30,
        default_symbols=("BTC-USDT", "ETH-USDT"),
    ),
)  # fmt: skip
