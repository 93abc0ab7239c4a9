"""OKX v5 public channels as the simulator speaks them.

WS ``/ws/v5/public``: ``{"op":"subscribe","args":[{"channel","instId"}]}`` -> one
``{"event":"subscribe","arg":{..},"connId":".."}`` per arg; text ``ping`` -> ``pong``.
``books`` (and ``books-l2-tbt``/``books50-l2-tbt``): a snapshot on subscribe (``prevSeqId`` -1), then
updates whose ``prevSeqId`` equals the previous ``seqId`` (seqId grows by random steps, as live OKX does),
4-element levels ``[px, sz, "0", numOrders]`` and a CRC32 ``checksum`` over the top 25 levels.
REST: ``/api/v5/public/instruments?instType=``, ``/api/v5/market/books?instId=&sz=``.
"""

from __future__ import annotations

import re
import zlib
from collections.abc import Collection, Mapping, Sequence
from decimal import Decimal
from typing import Any
from urllib.parse import urlsplit

import orjson

from marketprism.records import DataType, Market
from marketprism.sim.book import InstrumentSpec, NumberFormat
from marketprism.sim.frames import Frame, StreamKey, Sub
from marketprism.sim.market import (
    FUNDING_CAP_E8,
    DepthEvent,
    LiquidationEvent,
    SeqStyle,
    SyntheticInstrument,
    TradeEvent,
    next_funding_ms,
    num_orders,
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

CHECKSUM_LEVELS = 25
_FILE_INST_TYPE = re.compile(r"instruments_(SPOT|SWAP|FUTURES|OPTION|MARGIN)")
# channel -> (data type, shape variant); variants the generator cannot produce are replay-only.
_CHANNELS: dict[str, tuple[DataType, str]] = {
    "trades": (DataType.TRADE, "trades"),
    "trades-all": (DataType.TRADE, "trades"),
    "books": (DataType.DEPTH, "books"),
    "books-l2-tbt": (DataType.DEPTH, "books"),
    "books50-l2-tbt": (DataType.DEPTH, "books"),
    "books5": (DataType.DEPTH, "books5"),
    "bbo-tbt": (DataType.TICKER, "bbo"),
    "tickers": (DataType.TICKER, "tickers"),
    "funding-rate": (DataType.FUNDING_RATE, "funding"),
    "mark-price": (DataType.FUNDING_RATE, "mark"),
    "open-interest": (DataType.OPEN_INTEREST, "oi"),
    "liquidation-orders": (DataType.LIQUIDATION, "liq"),
}
_SYNTHETIC_VARIANTS = frozenset({"trades", "books", "bbo", "tickers", "funding", "mark", "oi", "liq"})
_SWAP_ONLY = frozenset({"funding-rate", "open-interest", "liquidation-orders"})
LIQUIDATION_CHANNEL = "liquidation-orders"  # subscribed by instType: one stream for every instrument of the type


def okx_checksum(bids: Sequence[Sequence[str]], asks: Sequence[Sequence[str]]) -> int:
    """OKX's book checksum: CRC32 of ``bid1px:bid1sz:ask1px:ask1sz:...`` over the best 25 levels of each
    side (best first, the exact wire strings; a shorter side just stops contributing), as signed int32."""
    parts: list[str] = []
    for i in range(CHECKSUM_LEVELS):
        if i < len(bids):
            parts += (bids[i][0], bids[i][1])
        if i < len(asks):
            parts += (asks[i][0], asks[i][1])
    crc = zlib.crc32(":".join(parts).encode())
    return crc - (1 << 32) if crc >= 1 << 31 else crc


def _ack(event: str, arg: Any, conn_id: str) -> str:
    return dumps({"event": event, "arg": arg, "connId": conn_id})


def _error(code: str, msg: str, conn_id: str) -> str:
    return dumps({"event": "error", "code": code, "msg": msg, "connId": conn_id})


class OkxWire(VenueWire):
    seq_style = SeqStyle.RANDOM_STEP

    def __init__(self, venue: Venue, synthetic: bool):
        super().__init__(venue, synthetic)
        self.rest_paths = {"/api/v5/public/instruments": "instruments", "/api/v5/market/books": "books"}
        self.inst_type = "SPOT" if venue.market is Market.SPOT else "SWAP"

    # --- client messages ---------------------------------------------------------------------------

    def on_text(self, text: str, ctx: ClientContext) -> ClientMessage:
        if text == "ping":
            return ClientMessage(["pong"])
        try:
            req = orjson.loads(text)
        except orjson.JSONDecodeError:
            return ClientMessage([_error("60012", f"Invalid request: {text[:100]}", ctx.conn_id)])
        op = req.get("op") if isinstance(req, dict) else None
        args = req.get("args") if isinstance(req, dict) else None
        if op not in ("subscribe", "unsubscribe") or not isinstance(args, list):
            return ClientMessage([_error("60012", f"Invalid request: {text[:100]}", ctx.conn_id)])
        msg = ClientMessage(is_subscribe=op == "subscribe")
        for arg in args:
            channel = arg.get("channel") if isinstance(arg, dict) else None
            if channel == LIQUIDATION_CHANNEL and isinstance(arg, dict) and "instId" not in arg:
                self._by_inst_type(op, arg, ctx, msg)
                continue
            inst = arg.get("instId") if isinstance(arg, dict) else None
            family = _CHANNELS.get(channel) if isinstance(channel, str) else None
            servable = family is not None and (not self.synthetic or family[1] in _SYNTHETIC_VARIANTS)
            servable = servable and (channel not in _SWAP_ONLY or self.inst_type == "SWAP")
            if not servable or not isinstance(inst, str) or (self.synthetic and not ctx.known(inst)):
                msg.replies.append(_error("60018", f"Wrong URL or channel:{channel},instId:{inst} doesn't "
                                          "exist. Please use the correct URL, channel and parameters referring "
                                          "to API document.", ctx.conn_id))  # fmt: skip
                continue
            assert family is not None and isinstance(channel, str)
            entry = ((inst, family[0]), Sub(channel, family[1]))
            (msg.subscribe if op == "subscribe" else msg.unsubscribe).append(entry)
            msg.replies.append(_ack(op, arg, ctx.conn_id))
        return msg

    def _by_inst_type(self, op: str, arg: dict[str, Any], ctx: ClientContext, msg: ClientMessage) -> None:
        """``{"channel":"liquidation-orders","instType":"SWAP"}``: every instrument of the type, in one stream."""
        inst_type = arg.get("instType")
        if inst_type != self.inst_type or inst_type != "SWAP":
            msg.replies.append(_error("60018", f"Wrong URL or channel:{LIQUIDATION_CHANNEL},instType:{inst_type} "
                                      "doesn't exist. Please use the correct URL, channel and parameters referring "
                                      "to API document.", ctx.conn_id))  # fmt: skip
            return
        sub = Sub(LIQUIDATION_CHANNEL, "liq")
        entries = [((inst, DataType.LIQUIDATION), sub) for inst in ctx.instruments()]
        (msg.subscribe if op == "subscribe" else msg.unsubscribe).extend(entries)
        msg.replies.append(_ack(op, arg, ctx.conn_id))

    # --- replay --------------------------------------------------------------------------------------

    def classify(self, obj: Any) -> tuple[StreamKey, int | None] | None:
        if not isinstance(obj, dict) or "event" in obj:
            return None
        arg, data = obj.get("arg"), obj.get("data")
        if not isinstance(arg, dict) or not isinstance(data, list):
            return None
        family = _CHANNELS.get(arg.get("channel", ""))
        inst = arg.get("instId")
        first = data[0] if data and isinstance(data[0], dict) else {}
        if arg.get("channel") == LIQUIDATION_CHANNEL:  # by instType: the instrument is in the data
            inst = first.get("instId")
            details = first.get("details")
            first = details[0] if isinstance(details, list) and details and isinstance(details[0], dict) else {}
        if family is None or not isinstance(inst, str):
            return None
        ts = first.get("ts")
        return (inst, family[0]), int(ts) if isinstance(ts, str) and ts.isdigit() else None

    def classify_rest(self, url: str | None, body: Any, filename: str) -> RestKey | None:
        if url:
            path, query = urlsplit(url).path, query_of(url)
            if path.endswith("/public/instruments"):
                return "instruments", query.get("instType", "")
            if path.endswith("/market/books"):
                return "books", query.get("instId", "")
            return None
        data = body.get("data") if isinstance(body, dict) else None
        if isinstance(data, list) and data and isinstance(data[0], dict) and "instType" in data[0]:
            return "instruments", str(data[0]["instType"])
        match = _FILE_INST_TYPE.search(filename)
        return ("instruments", match.group(1)) if match else None

    # --- synthetic frames ----------------------------------------------------------------------------

    def number_format(self, spec: InstrumentSpec) -> NumberFormat:
        return NumberFormat(spec, zero="0")

    @staticmethod
    def _levels(inst: SyntheticInstrument, levels: Mapping[int, int] | list[tuple[int, int]],
                descending: bool) -> list[list[str]]:  # fmt: skip
        fmt = inst.fmt
        items = sorted(levels.items(), reverse=descending) if isinstance(levels, Mapping) else levels
        return [
            [fmt.price(p), fmt.size(s), "0", str(num_orders(p, s))] if s else [fmt.price(p), "0", "0", "0"]
            for p, s in items
        ]

    def checksum(self, inst: SyntheticInstrument) -> int:
        fmt, book = inst.fmt, inst.book
        bids = [(fmt.price(p), fmt.size(s)) for p, s in book.top(True, CHECKSUM_LEVELS)]
        asks = [(fmt.price(p), fmt.size(s)) for p, s in book.top(False, CHECKSUM_LEVELS)]
        return okx_checksum(bids, asks)

    @staticmethod
    def _frame(key: StreamKey, channel: str, variant: str, head: str, data: dict[str, Any], **kw: Any) -> Frame:
        arg = '{"arg":{"channel":"' + channel + '","instId":"' + key[0] + '"}'
        text = arg + head + ',"data":[' + dumps(data) + "]}"
        return Frame(key, text, name=channel, variant=variant, **kw)

    def _book_frame(self, inst: SyntheticInstrument, channel: str, action: str, bids: list[list[str]],
                    asks: list[list[str]], prev_seq: int, now_ms: int) -> Frame:  # fmt: skip
        checksum = self.checksum(inst)
        data = {"asks": asks, "bids": bids, "ts": str(now_ms), "checksum": checksum, "prevSeqId": prev_seq,
                "seqId": inst.book.seq}  # fmt: skip
        return self._frame((inst.instrument, DataType.DEPTH), channel, "books", f',"action":"{action}"', data,
                           seq=inst.book.seq, checksum=checksum)  # fmt: skip

    def depth_frames(self, inst: SyntheticInstrument, ev: DepthEvent, variants: Collection[str],
                     now_ms: int) -> list[Frame]:  # fmt: skip
        bids: dict[int, int] = {}
        asks: dict[int, int] = {}
        for is_bid, price, size in ev.changes:
            (bids if is_bid else asks)[price] = size
        b, a = self._levels(inst, bids, True), self._levels(inst, asks, False)
        return [self._book_frame(inst, "books", "update", b, a, ev.prev_seq, now_ms)]

    def subscribe_frames(self, inst: SyntheticInstrument, key: StreamKey, sub: Sub, now_ms: int) -> list[Frame]:
        if key[1] is not DataType.DEPTH:
            return []
        n = 50 if sub.name.startswith("books50") else 400
        b = self._levels(inst, inst.book.top(True, n), True)
        a = self._levels(inst, inst.book.top(False, n), False)
        return [self._book_frame(inst, sub.name, "snapshot", b, a, -1, now_ms)]

    def trade_frames(self, inst: SyntheticInstrument, tr: TradeEvent, variants: Collection[str],
                     now_ms: int) -> list[Frame]:  # fmt: skip
        s, fmt = inst.instrument, inst.fmt
        data = {"instId": s, "tradeId": str(tr.trade_id), "px": fmt.price(tr.price), "sz": fmt.size(tr.size),
                "side": "buy" if tr.is_buy else "sell", "ts": str(now_ms), "count": "1"}  # fmt: skip
        return [self._frame((s, DataType.TRADE), "trades", "trades", "", data, seq=tr.trade_id, trades=1)]

    def ticker_frames(self, inst: SyntheticInstrument, variants: Collection[str], now_ms: int) -> list[Frame]:
        s, fmt, book = inst.instrument, inst.fmt, inst.book
        (bp, bq), (ap, aq) = book.best_bid(), book.best_ask()
        key = (s, DataType.TICKER)
        out = []
        if "bbo" in variants:
            data: dict[str, Any] = {"asks": self._levels(inst, [(ap, aq)], False),
                                    "bids": self._levels(inst, [(bp, bq)], True),
                                    "ts": str(now_ms), "seqId": book.seq}  # fmt: skip
            out.append(self._frame(key, "bbo-tbt", "bbo", "", data, seq=book.seq))
        if "tickers" in variants:
            last = inst.last_trade
            open_px = fmt.price(inst.spec.start_ticks)
            data = {"instType": self.inst_type, "instId": s, "last": fmt.price(inst.last_price()),
                    "lastSz": fmt.size(last.size if last else 1), "askPx": fmt.price(ap), "askSz": fmt.size(aq),
                    "bidPx": fmt.price(bp), "bidSz": fmt.size(bq), "open24h": open_px, "high24h": open_px,
                    "low24h": open_px, "sodUtc0": open_px, "sodUtc8": open_px, "volCcy24h": "0", "vol24h": "0",
                    "ts": str(now_ms)}  # fmt: skip
            out.append(self._frame(key, "tickers", "tickers", "", data))
        return out

    def funding_frames(self, inst: SyntheticInstrument, variants: Collection[str], now_ms: int) -> list[Frame]:
        s, fmt = inst.instrument, inst.fmt
        key = (s, DataType.FUNDING_RATE)
        out = []
        if "funding" in variants and self.inst_type == "SWAP":
            funding_time = next_funding_ms(now_ms)
            data = {"formulaType": "noRate", "fundingRate": rate_str(inst.funding_e8), "fundingTime": str(funding_time),
                    "impactValue": "", "instId": s, "instType": "SWAP", "interestRate": "",
                    "maxFundingRate": rate_str(FUNDING_CAP_E8), "method": "current_period",
                    "minFundingRate": rate_str(-FUNDING_CAP_E8), "nextFundingRate": "",
                    "nextFundingTime": str(funding_time + 8 * 3600 * 1000), "premium": rate_str(inst.funding_e8 // 2),
                    "settFundingRate": rate_str(inst.settled_funding_e8), "settState": "settled",
                    "ts": str(now_ms)}  # fmt: skip
            out.append(self._frame(key, "funding-rate", "funding", "", data))
        if "mark" in variants:
            data = {"instType": self.inst_type, "instId": s, "markPx": fmt.price(inst.mark_price()), "ts": str(now_ms)}
            out.append(self._frame(key, "mark-price", "mark", "", data))
        return out

    def open_interest_frames(self, inst: SyntheticInstrument, variants: Collection[str], now_ms: int) -> list[Frame]:
        if self.inst_type != "SWAP":
            return []
        s, fmt = inst.instrument, inst.fmt
        oi = fmt.size(inst.open_interest)  # ctVal is 1 (see _instrument): contracts = coins
        usd = Decimal(oi) * Decimal(fmt.price(inst.mark_price()))
        data = {"instId": s, "instType": "SWAP", "oi": oi, "oiCcy": oi, "oiUsd": f"{usd:f}", "ts": str(now_ms)}
        return [self._frame((s, DataType.OPEN_INTEREST), "open-interest", "oi", "", data)]

    def liquidation_frames(self, inst: SyntheticInstrument, liq: LiquidationEvent, variants: Collection[str],
                           now_ms: int) -> list[Frame]:  # fmt: skip
        if self.inst_type != "SWAP":
            return []
        s, fmt, spec = inst.instrument, inst.fmt, inst.spec
        family = f"{spec.base}-{spec.quote}"
        detail = {"bkLoss": "0", "bkPx": fmt.price(liq.price), "ccy": "", "posSide": "short" if liq.is_buy else "long",
                  "side": "buy" if liq.is_buy else "sell", "sz": fmt.size(liq.size), "ts": str(now_ms)}  # fmt: skip
        data = {"details": [detail], "instFamily": family, "instId": s, "instType": "SWAP", "uly": family}
        text = '{"arg":{"channel":"' + LIQUIDATION_CHANNEL + '","instType":"SWAP"},"data":[' + dumps(data) + "]}"
        return [Frame((s, DataType.LIQUIDATION), text, name=LIQUIDATION_CHANNEL, variant="liq")]

    # --- REST ----------------------------------------------------------------------------------------

    def rest(self, kind: str, query: Mapping[str, str], backend: MarketBackend, now_ms: int) -> RestReply:
        if kind == "instruments":
            inst_type = query.get("instType", "").upper()
            if not inst_type:
                return RestReply(400, dumps({"code": "50014", "msg": "Parameter instType can not be empty.",
                                             "data": []}))  # fmt: skip
            recorded = backend.recorded_rest(("instruments", inst_type))
            if recorded is not None:
                return RestReply(200, recorded)
            data = [self._instrument(i, spec) for i, spec in backend.specs()] if inst_type == self.inst_type else []
            return RestReply(200, dumps({"code": "0", "data": data, "msg": ""}))
        inst = query.get("instId", "")
        if not inst:
            return RestReply(400, dumps({"code": "50014", "msg": "Parameter instId can not be empty.", "data": []}))
        sz = int_param(query, "sz", 1, 1, 400)
        if sz is None:
            return RestReply(400, dumps({"code": "50001", "msg": "Parameter sz error", "data": []}))
        recorded = backend.recorded_rest(("books", inst))
        if recorded is not None:
            return RestReply(200, recorded)
        snap = backend.rest_book(inst, sz)
        if snap is None:
            return RestReply(200, dumps({"code": "51001", "msg": "Instrument ID does not exist", "data": []}))
        book = {"asks": [[p, q, "0", str(n)] for p, q, n in snap.asks],
                "bids": [[p, q, "0", str(n)] for p, q, n in snap.bids], "ts": str(snap.ts_ms)}  # fmt: skip
        return RestReply(200, dumps({"code": "0", "msg": "", "data": [book]}))

    def _instrument(self, inst: str, spec: InstrumentSpec) -> dict[str, Any]:
        fmt = self.number_format(spec)
        swap = self.inst_type == "SWAP"
        family = f"{spec.base}-{spec.quote}" if swap else ""
        return {"instType": self.inst_type, "instId": inst, "uly": family, "instFamily": family,
                "baseCcy": "" if swap else spec.base, "quoteCcy": "" if swap else spec.quote,
                "settleCcy": spec.quote if swap else "", "ctVal": "1" if swap else "",
                "ctValCcy": spec.base if swap else "", "ctType": "linear" if swap else "",
                "tickSz": fmt.tick(), "lotSz": fmt.lot(), "minSz": fmt.lot(), "state": "live"}  # fmt: skip

    def rest_error(self, status: int, retry_after_s: int, now_ms: int) -> RestReply:
        if status in (418, 429):
            body = {"code": "50011", "msg": "Too Many Requests", "data": []}
        else:
            body = {"code": "50001", "msg": "Service temporarily unavailable. Please try again later.", "data": []}
        return RestReply(status, dumps(body), retry_headers(status, retry_after_s))
