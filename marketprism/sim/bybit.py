"""Bybit v5 public linear channels as the simulator speaks them.

WS ``/v5/public/linear``: ``{"op":"subscribe","args":["publicTrade.BTCUSDT",..],"req_id":"1"}`` ->
``{"success":true,"ret_msg":"","conn_id":"..","req_id":"1","op":"subscribe"}``; ``{"op":"ping"}`` ->
``{"success":true,"ret_msg":"pong",..,"op":"ping"}``. ``orderbook.N``: a snapshot on subscribe, then
deltas with ``u`` + 1 each; ``tickers``: a snapshot on subscribe, then deltas carrying only the fields that
changed. REST: ``/v5/market/orderbook``, ``/v5/market/instruments-info`` (category=linear).
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Collection, Mapping
from decimal import Decimal
from typing import Any
from urllib.parse import urlsplit

import orjson

from marketprism.records import DataType
from marketprism.sim.book import InstrumentSpec, NumberFormat
from marketprism.sim.frames import Frame, StreamKey, Sub
from marketprism.sim.market import (
    DepthEvent,
    LiquidationEvent,
    SeqStyle,
    SyntheticInstrument,
    TradeEvent,
    next_funding_ms,
    rate_str,
)
from marketprism.sim.protocol import (
    ClientContext,
    ClientMessage,
    MarketBackend,
    RestKey,
    RestReply,
    VenueWire,
    dumps,
    int_param,
    query_of,
    retry_headers,
)
from marketprism.venues.base import Venue

_TOPICS: dict[str, tuple[DataType, str]] = {
    "publicTrade": (DataType.TRADE, "trade"),
    "orderbook": (DataType.DEPTH, "book"),
    "tickers": (DataType.TICKER, "ticker"),  # also carries funding and open interest
    "allLiquidation": (DataType.LIQUIDATION, "liq"),
}
_BOOK_DEPTHS = (1, 50, 200, 500)


def parse_topic(topic: str) -> tuple[StreamKey, str, int] | None:
    """``orderbook.50.BTCUSDT`` -> ((BTCUSDT, depth), variant, 50); depth is 0 for other topics."""
    parts = topic.split(".")
    family = _TOPICS.get(parts[0])
    if family is None or len(parts) != (3 if parts[0] == "orderbook" else 2) or not parts[-1]:
        return None
    depth = 0
    if parts[0] == "orderbook":
        if not parts[1].isdigit():
            return None
        depth = int(parts[1])
    return (parts[-1], family[0]), family[1], depth


class BybitWire(VenueWire):
    seq_style = SeqStyle.PLUS_ONE

    def __init__(self, venue: Venue, synthetic: bool, book_levels: int = 40):
        super().__init__(venue, synthetic)
        self.rest_paths = {"/v5/market/orderbook": "orderbook", "/v5/market/instruments-info": "instruments"}
        self._book_levels = book_levels
        self._depth_channel = venue.channels[DataType.DEPTH]

    # --- client messages ---------------------------------------------------------------------------

    def on_text(self, text: str, ctx: ClientContext) -> ClientMessage:
        try:
            req = orjson.loads(text)
        except orjson.JSONDecodeError:
            req = None
        if not isinstance(req, dict):
            return ClientMessage([dumps({"success": False, "ret_msg": "error:request not json",
                                         "conn_id": ctx.conn_id, "op": ""})])  # fmt: skip
        op, req_id = req.get("op"), req.get("req_id")
        reply: dict[str, Any] = {"success": True, "ret_msg": "", "conn_id": ctx.conn_id}
        if req_id is not None:
            reply["req_id"] = req_id
        reply["op"] = op
        if op == "ping":
            reply["ret_msg"] = "pong"
            return ClientMessage([dumps(reply)])
        args = req.get("args")
        if op not in ("subscribe", "unsubscribe") or not isinstance(args, list):
            reply.update(success=False, ret_msg=f"error:unsupported op {op!r}")
            return ClientMessage([dumps(reply)])
        msg = ClientMessage(is_subscribe=op == "subscribe")
        current = {s.name for subs in ctx.subs.values() for s in subs}
        bad: list[str] = []
        for topic in args:
            parsed = parse_topic(topic) if isinstance(topic, str) else None
            if parsed is None or not self._servable(parsed, ctx):
                bad.append(str(topic))
                continue
            key, variant, _ = parsed
            if op == "subscribe":
                if topic in current:
                    bad.append(f"already subscribed,topic:{topic}")
                    continue
                msg.subscribe.append((key, Sub(topic, variant)))
            else:
                msg.unsubscribe.append((key, Sub(topic, variant)))
        if bad:
            reply.update(success=False, ret_msg=f"Invalid topic :[{', '.join(bad)}]")
        msg.replies.append(dumps(reply))
        return msg

    def _servable(self, parsed: tuple[StreamKey, str, int], ctx: ClientContext) -> bool:
        (inst, dtype), _, depth = parsed
        if dtype is DataType.DEPTH and depth not in _BOOK_DEPTHS:
            return False
        if not self.synthetic:
            return True
        # The synthetic book is one book of at most book_levels per side: it can stand for any published
        # depth at least that large, not for the 1-level feed.
        return ctx.known(inst) and (dtype is not DataType.DEPTH or depth >= self._book_levels)

    # --- replay --------------------------------------------------------------------------------------

    def classify(self, obj: Any) -> tuple[StreamKey, int | None] | None:
        if not isinstance(obj, dict) or not isinstance(obj.get("topic"), str) or "data" not in obj:
            return None
        parsed = parse_topic(obj["topic"])
        if parsed is None:
            return None
        ts = obj.get("ts")
        return parsed[0], ts if isinstance(ts, int) else None

    def classify_rest(self, url: str | None, body: Any, filename: str) -> RestKey | None:
        if url:
            path, query = urlsplit(url).path, query_of(url)
            if path.endswith("/market/orderbook"):
                return "orderbook", query.get("symbol", "").upper()
            if path.endswith("/market/instruments-info"):
                return "instruments", query.get("category", "")
            return None
        result = body.get("result") if isinstance(body, dict) else None
        if isinstance(result, dict) and "b" in result and "a" in result:
            return "orderbook", str(result.get("s", ""))
        if isinstance(result, dict) and "list" in result:
            return "instruments", str(result.get("category", "linear"))
        return None

    # --- synthetic frames ----------------------------------------------------------------------------

    def number_format(self, spec: InstrumentSpec) -> NumberFormat:
        return NumberFormat(spec, zero="0")

    @staticmethod
    def _side(inst: SyntheticInstrument, levels: Mapping[int, int] | list[tuple[int, int]],
              descending: bool) -> list[list[str]]:  # fmt: skip
        fmt = inst.fmt
        items = sorted(levels.items(), reverse=descending) if isinstance(levels, Mapping) else levels
        return [[fmt.price(p), fmt.size(s)] for p, s in items]

    def _book_frame(self, inst: SyntheticInstrument, topic: str, kind: str, b: list[list[str]],
                    a: list[list[str]], now_ms: int) -> Frame:  # fmt: skip
        data = {"s": inst.instrument, "b": b, "a": a, "u": inst.book.seq, "seq": inst.cross_seq}
        text = '{"topic":"' + topic + '","type":"' + kind + '","ts":' + str(now_ms) + ',"data":' + dumps(data)
        text += ',"cts":' + str(now_ms) + "}"
        return Frame((inst.instrument, DataType.DEPTH), text, name=topic, variant="book", seq=inst.book.seq)

    def depth_frames(self, inst: SyntheticInstrument, ev: DepthEvent, variants: Collection[str],
                     now_ms: int) -> list[Frame]:  # fmt: skip
        bids: dict[int, int] = {}
        asks: dict[int, int] = {}
        for is_bid, price, size in ev.changes:
            (bids if is_bid else asks)[price] = size
        topic = f"{self._depth_channel}.{inst.instrument}"
        return [self._book_frame(inst, topic, "delta", self._side(inst, bids, True), self._side(inst, asks, False),
                                 now_ms)]  # fmt: skip

    def subscribe_frames(self, inst: SyntheticInstrument, key: StreamKey, sub: Sub, now_ms: int) -> list[Frame]:
        if key[1] is DataType.DEPTH:
            depth = int(sub.name.split(".")[1])
            b = self._side(inst, inst.book.top(True, depth), True)
            a = self._side(inst, inst.book.top(False, depth), False)
            return [self._book_frame(inst, sub.name, "snapshot", b, a, now_ms)]
        if key[1] is DataType.TICKER:
            state = self._published_ticker(inst)
            return [self._ticker_frame(inst, sub.name, "snapshot", state, now_ms)]
        return []

    def trade_frames(self, inst: SyntheticInstrument, tr: TradeEvent, variants: Collection[str],
                     now_ms: int) -> list[Frame]:  # fmt: skip
        s, fmt = inst.instrument, inst.fmt
        # Bybit trade ids are UUIDs; derive it from the (run-unique) trade id so restarts never repeat one.
        trade_uuid = str(uuid.UUID(int=(tr.trade_id << 64) | inst.rng.getrandbits(64), version=4))
        data = [{"T": now_ms, "s": s, "S": "Buy" if tr.is_buy else "Sell", "v": fmt.size(tr.size),
                 "p": fmt.price(tr.price), "L": tr.tick_direction, "i": trade_uuid, "BT": False,
                 "seq": inst.cross_seq}]  # fmt: skip
        topic = f"publicTrade.{s}"
        text = '{"topic":"' + topic + '","type":"snapshot","ts":' + str(now_ms) + ',"data":' + dumps(data) + "}"
        return [Frame((s, DataType.TRADE), text, name=topic, variant="trade", seq=inst.cross_seq, trades=1)]

    def _ticker_state(self, inst: SyntheticInstrument) -> dict[str, str]:
        fmt, book = inst.fmt, inst.book
        (bp, bq), (ap, aq) = book.best_bid(), book.best_ask()
        mid = fmt.price(inst.mark_price())
        oi = fmt.size(inst.open_interest)
        oi_value = (Decimal(oi) * Decimal(mid)).quantize(Decimal("0.01"))
        return {"symbol": inst.instrument, "tickDirection": inst.last_trade.tick_direction if inst.last_trade
                else "ZeroPlusTick", "lastPrice": fmt.price(inst.last_price()), "markPrice": mid,
                "indexPrice": mid, "bid1Price": fmt.price(bp), "bid1Size": fmt.size(bq), "ask1Price": fmt.price(ap),
                "ask1Size": fmt.size(aq), "fundingRate": rate_str(inst.funding_e8, strip=True),
                "nextFundingTime": str(next_funding_ms(time.time_ns() // 1_000_000)), "openInterest": oi,
                "openInterestValue": f"{oi_value:f}", "price24hPcnt": "0", "volume24h": "0",
                "turnover24h": "0"}  # fmt: skip

    def _published_ticker(self, inst: SyntheticInstrument) -> dict[str, str]:
        # Deltas describe changes from what was last published, so a new subscriber's snapshot must be
        # that same published state, not the (possibly newer) book.
        if inst.published_ticker is None:
            inst.published_ticker = self._ticker_state(inst)
        return inst.published_ticker

    def _ticker_frame(self, inst: SyntheticInstrument, topic: str, kind: str, data: dict[str, str],
                      now_ms: int) -> Frame:  # fmt: skip
        text = ('{"topic":"' + topic + '","type":"' + kind + '","data":' + dumps(data) + ',"cs":'
                + str(inst.cross_seq) + ',"ts":' + str(now_ms) + "}")  # fmt: skip
        return Frame((inst.instrument, DataType.TICKER), text, name=topic, variant="ticker", seq=inst.cross_seq)

    def ticker_frames(self, inst: SyntheticInstrument, variants: Collection[str], now_ms: int) -> list[Frame]:
        published = self._published_ticker(inst)
        state = self._ticker_state(inst)
        delta = {k: v for k, v in state.items() if published.get(k) != v}
        if not delta:
            return []  # Bybit sends no empty deltas
        inst.published_ticker = state
        inst.cross_seq += 1
        return [self._ticker_frame(inst, f"tickers.{inst.instrument}", "delta",
                                   {"symbol": inst.instrument, **delta}, now_ms)]  # fmt: skip

    def liquidation_frames(self, inst: SyntheticInstrument, liq: LiquidationEvent, variants: Collection[str],
                           now_ms: int) -> list[Frame]:  # fmt: skip
        s, fmt = inst.instrument, inst.fmt
        # S is the liquidated position's side: a sell order (is_buy False) liquidates a long, sent as "Buy"
        data = [{"T": now_ms, "s": s, "S": "Sell" if liq.is_buy else "Buy", "v": fmt.size(liq.size),
                 "p": fmt.price(liq.price)}]  # fmt: skip
        topic = f"allLiquidation.{s}"
        text = '{"topic":"' + topic + '","type":"snapshot","ts":' + str(now_ms) + ',"data":' + dumps(data) + "}"
        return [Frame((s, DataType.LIQUIDATION), text, name=topic, variant="liq")]

    # --- REST ----------------------------------------------------------------------------------------

    @staticmethod
    def _reply(status: int, ret_code: int, msg: str, result: Any, now_ms: int) -> RestReply:
        body = {"retCode": ret_code, "retMsg": msg, "result": result, "retExtInfo": {}, "time": now_ms}
        return RestReply(status, dumps(body))

    def rest(self, kind: str, query: Mapping[str, str], backend: MarketBackend, now_ms: int) -> RestReply:
        category = query.get("category", "")
        if category != "linear":
            return self._reply(200, 10001, "params error: category only support linear", {}, now_ms)
        if kind == "instruments":
            recorded = backend.recorded_rest(("instruments", "linear"))
            if recorded is not None:
                return RestReply(200, recorded)
            items = [self._instrument(i, spec) for i, spec in backend.specs()]
            return self._reply(200, 0, "OK", {"category": "linear", "list": items, "nextPageCursor": ""}, now_ms)
        symbol = query.get("symbol", "").upper()
        limit = int_param(query, "limit", 25, 1, 500)
        if not symbol or limit is None:
            return self._reply(200, 10001, "params error: symbol/limit", {}, now_ms)
        recorded = backend.recorded_rest(("orderbook", symbol))
        if recorded is not None:
            return RestReply(200, recorded)
        snap = backend.rest_book(symbol, limit)
        if snap is None:
            return self._reply(200, 10001, "params error: Symbol Invalid", {}, now_ms)
        result = {"s": symbol, "b": [[p, q] for p, q, _ in snap.bids], "a": [[p, q] for p, q, _ in snap.asks],
                  "ts": snap.ts_ms, "u": snap.seq, "seq": snap.cross_seq, "cts": snap.ts_ms}  # fmt: skip
        return self._reply(200, 0, "OK", result, now_ms)

    def _instrument(self, inst: str, spec: InstrumentSpec) -> dict[str, Any]:
        fmt = self.number_format(spec)
        return {"symbol": inst, "contractType": "LinearPerpetual", "status": "Trading", "baseCoin": spec.base,
                "quoteCoin": spec.quote, "settleCoin": spec.quote, "priceScale": str(spec.price_decimals),
                "priceFilter": {"minPrice": fmt.tick(), "maxPrice": fmt.price(10 ** (6 + spec.price_decimals)),
                                "tickSize": fmt.tick()},
                "lotSizeFilter": {"minOrderQty": fmt.lot(), "maxOrderQty": fmt.size(9000 * 10**spec.size_decimals),
                                  "qtyStep": fmt.lot()},
                "fundingInterval": 480}  # fmt: skip

    def rest_error(self, status: int, retry_after_s: int, now_ms: int) -> RestReply:
        code, msg = (10006, "Too many visits!") if status in (403, 418, 429) else (10016, "Server error.")
        reply = self._reply(status, code, msg, {}, now_ms)
        reply.headers.update(retry_headers(status, retry_after_s))
        return reply
