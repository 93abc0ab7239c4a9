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
"""

from __future__ import annotations

from collections.abc import Sequence

import msgspec
import orjson

from marketprism.records import (
    DataType,
    Depth,
    Exchange,
    Level,
    Market,
    Record,
    Ticker,
    Trade,
    split_dashed,
)
from marketprism.venues.base import Heartbeat, Limits, ParseError, Subscription, Venue


class _Arg(msgspec.Struct):
    channel: str = ""
    instId: str = ""


class _Frame(msgspec.Struct):
    arg: _Arg | None = None
    action: str | None = None
    data: msgspec.Raw = msgspec.Raw(b"")
    event: str | None = None
    code: str | None = None
    msg: str | None = None


class _Trade(msgspec.Struct):
    instId: str
    tradeId: str
    px: str
    sz: str
    side: str
    ts: str


class _Book(msgspec.Struct):
    asks: list[list[str]]
    bids: list[list[str]]
    ts: str
    checksum: int | None = None
    seqId: int | None = None
    prevSeqId: int | None = None


class _Ticker(msgspec.Struct):
    instId: str
    bidPx: str
    bidSz: str
    askPx: str
    askSz: str
    ts: str
    last: str | None = None


_frame = msgspec.json.Decoder(_Frame)
_trades = msgspec.json.Decoder(list[_Trade])
_books = msgspec.json.Decoder(list[_Book])
_tickers = msgspec.json.Decoder(list[_Ticker])

BOOK_CHANNELS = frozenset({"books", "books-l2-tbt", "books50-l2-tbt", "books5", "bbo-tbt"})


def instrument_market(instrument: str) -> Market:
    parts = instrument.split("-")
    if len(parts) == 2:
        return Market.SPOT
    if parts[-1] == "SWAP":
        return Market.PERPETUAL
    if len(parts) == 3:
        return Market.FUTURE
    return Market.OPTION


def _levels(raw: list[list[str]]) -> list[Level]:
    return [(lv[0], lv[1]) for lv in raw]


class OkxParser:
    def __init__(self, venue_name: str):
        self.venue_name = venue_name
        self._inst: dict[str, tuple[str, str]] = {}  # instId -> (market, symbol)

    def _meta(self, instrument: str) -> tuple[str, str]:
        meta = self._inst.get(instrument)
        if meta is None:
            meta = self._inst[instrument] = (instrument_market(instrument).value, split_dashed(instrument))
        return meta

    def parse(self, frame: str | bytes, recv_ts: int) -> list[Record]:
        if frame == "pong" or frame == b"pong":
            return []
        try:
            f = _frame.decode(frame)
        except (msgspec.DecodeError, msgspec.ValidationError) as exc:
            raise ParseError(self.venue_name, f"not an OKX frame ({exc})", frame) from None
        if f.event is not None:
            if f.event == "error":
                raise ParseError(self.venue_name, f"error event code {f.code}: {f.msg}", frame)
            return []  # subscribe / unsubscribe acks, channel-conn-count notices
        if f.arg is None or not f.data:
            raise ParseError(self.venue_name, "frame has neither event nor arg/data", frame)
        channel, inst = f.arg.channel, f.arg.instId
        try:
            if channel == "trades" or channel == "trades-all":
                return [self._trade(t, recv_ts) for t in _trades.decode(f.data)]
            if channel == "bbo-tbt":
                return [self._bbo(inst, b, recv_ts) for b in _books.decode(f.data)]
            if channel in BOOK_CHANNELS:
                snapshot = f.action != "update"  # books5 pushes full books without an action
                return [self._book(inst, b, snapshot, recv_ts) for b in _books.decode(f.data)]
            if channel == "tickers":
                return [self._ticker(t, recv_ts) for t in _tickers.decode(f.data)]
        except (msgspec.DecodeError, msgspec.ValidationError, IndexError) as exc:
            raise ParseError(self.venue_name, f"bad {channel} payload ({exc})", frame) from None
        except ValueError as exc:
            raise ParseError(self.venue_name, str(exc), frame) from None
        return []

    def _trade(self, t: _Trade, recv_ts: int) -> Trade:
        market, symbol = self._meta(t.instId)
        return Trade(
            exchange="okx", market=market, symbol=symbol, instrument=t.instId, ts=int(t.ts) * 1000,
            recv_ts=recv_ts, trade_id=t.tradeId, price=t.px, size=t.sz, side=t.side,
        )  # fmt: skip

    def _book(self, inst: str, b: _Book, snapshot: bool, recv_ts: int) -> Depth:
        market, symbol = self._meta(inst)
        return Depth(
            exchange="okx", market=market, symbol=symbol, instrument=inst, ts=int(b.ts) * 1000,
            recv_ts=recv_ts, is_snapshot=snapshot, bids=_levels(b.bids), asks=_levels(b.asks),
            seq=b.seqId, prev_seq=b.prevSeqId, checksum=b.checksum,
        )  # fmt: skip

    def _bbo(self, inst: str, b: _Book, recv_ts: int) -> Ticker:
        market, symbol = self._meta(inst)
        bid = b.bids[0] if b.bids else ["", ""]
        ask = b.asks[0] if b.asks else ["", ""]
        return Ticker(
            exchange="okx", market=market, symbol=symbol, instrument=inst, ts=int(b.ts) * 1000,
            recv_ts=recv_ts, bid_price=bid[0], bid_size=bid[1], ask_price=ask[0], ask_size=ask[1],
            seq=b.seqId,
        )  # fmt: skip

    def _ticker(self, t: _Ticker, recv_ts: int) -> Ticker:
        market, symbol = self._meta(t.instId)
        return Ticker(
            exchange="okx", market=market, symbol=symbol, instrument=t.instId, ts=int(t.ts) * 1000,
            recv_ts=recv_ts, bid_price=t.bidPx, bid_size=t.bidSz, ask_price=t.askPx, ask_size=t.askSz,
            last_price=t.last,
        )  # fmt: skip


def _requests(op: str, subs: Sequence[Subscription], first_id: int, per_request: int) -> list[str]:
    args = [{"channel": s.channel, "instId": s.instrument} for s in subs]
    return [
        orjson.dumps({"op": op, "args": args[i : i + per_request]}).decode() for i in range(0, len(args), per_request)
    ]


def _make(name: str, market: Market, suffix: str) -> Venue:
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
        channels={DataType.TRADE: "trades", DataType.DEPTH: "books", DataType.TICKER: "bbo-tbt"},
        heartbeat=Heartbeat("client_text", every_s=20.0, message="ping"),
        limits=limits,
        to_instrument=to_instrument,
        subscribe_messages=lambda subs, first_id: _requests("subscribe", subs, first_id, 60),
        unsubscribe_messages=lambda subs, first_id: _requests("unsubscribe", subs, first_id, 60),
        new_parser=lambda: OkxParser(name),
    )


OKX_SPOT = _make("okx_spot", Market.SPOT, "")
OKX_SWAP = _make("okx_swap", Market.PERPETUAL, "-SWAP")

REST_INSTRUMENTS_PATH = "/api/v5/public/instruments"
REST_BOOKS_PATH = "/api/v5/market/books"
