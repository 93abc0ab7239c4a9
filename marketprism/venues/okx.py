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

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import msgspec
import orjson

from marketprism.errors import Code
from marketprism.records import (
    DataType,
    Depth,
    Exchange,
    Market,
    Record,
    Ticker,
    Trade,
    split_dashed,
)
from marketprism.venues.base import Heartbeat, Limits, ParseError, RestLimits, SnapshotRequest, Subscription, Venue


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


def _frame_type(item: type) -> type:
    """A whole data frame whose ``data`` is a list of ``item`` (``arg`` is read from the text)."""
    fields: list[Any] = [("data", list[item]), ("action", str | None, None)]  # type: ignore[valid-type]
    return msgspec.defstruct(f"_{item.__name__}Frame", fields, gc=False)


# Channel kind -> (whole-frame decoder, data-only decoder).
_DECODERS: dict[str, tuple[msgspec.json.Decoder[Any], msgspec.json.Decoder[Any]]] = {
    kind: (msgspec.json.Decoder(_frame_type(item)), msgspec.json.Decoder(list[item]))  # type: ignore[valid-type]
    for kind, item in (("trades", _Trade), ("books", _Book), ("bbo", _Bbo), ("tickers", _Ticker))
}
_KIND = {
    "trades": "trades", "trades-all": "trades", "books": "books", "books-l2-tbt": "books",
    "books50-l2-tbt": "books", "books5": "books", "bbo-tbt": "bbo", "tickers": "tickers",
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
        try:
            parser = self._stream_parser(f.arg.channel, f.arg.instId)
            return [] if parser is None else parser[2](parser[1].decode(f.data), f.action, recv_ts)
        except (msgspec.DecodeError, msgspec.ValidationError, IndexError) as exc:
            raise ParseError(self.venue_name, f"bad {f.arg.channel} payload ({exc})", frame) from None
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


def _requests(op: str, subs: Sequence[Subscription], first_id: int, per_request: int) -> list[str]:
    args = [{"channel": s.channel, "instId": s.instrument} for s in subs]
    return [
        orjson.dumps({"op": op, "args": args[i : i + per_request]}).decode() for i in range(0, len(args), per_request)
    ]


REST_INSTRUMENTS_PATH = "/api/v5/public/instruments"
REST_BOOKS_PATH = "/api/v5/market/books"


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
        new_parser=lambda symbols=None: OkxParser(name, symbols),
        # /market/books: 40 requests per 2 s per IP. Books resync by resubscribing (the stream sends a snapshot).
        rest_limits=RestLimits(weight_per_minute=900),
        snapshot_request=lambda instrument: SnapshotRequest(REST_BOOKS_PATH, {"instId": instrument, "sz": "400"}, 1),
    )


OKX_SPOT = _make("okx_spot", Market.SPOT, "")
OKX_SWAP = _make("okx_swap", Market.PERPETUAL, "-SWAP")
