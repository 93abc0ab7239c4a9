"""Binance spot and USDⓈ-M as the simulator speaks them.

WS ``/stream`` (combined streams): ``{"method":"SUBSCRIBE","params":[..],"id":N}`` -> ``{"result":null,"id":N}``;
data ``{"stream":"btcusdt@trade","data":{..}}`` in the shapes of the 2024 recordings (spot trade has
``M``, USDⓈ-M trade has ``X``; USDⓈ-M depth adds ``T`` and ``pu``; spot bookTicker has no ``e``/``E``).
REST: spot ``/api/v3/depth``, ``/api/v3/exchangeInfo``; USDⓈ-M ``/fapi/v1/depth``, ``/fapi/v1/exchangeInfo``.
"""

from __future__ import annotations

import re
from collections.abc import Collection, Mapping
from typing import Any
from urllib.parse import urlsplit

import orjson

from marketprism.records import DataType, Market
from marketprism.sim.book import InstrumentSpec, NumberFormat, fixed
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

_FILE_SYMBOL = re.compile(r"depth_([A-Z0-9]+)_")


def channel_family(channel: str) -> tuple[DataType, str] | None:
    """Binance channel -> (data type, shape variant); None for streams MarketPrism does not collect."""
    if channel == "trade":
        return DataType.TRADE, "trade"
    if channel == "aggTrade":
        return DataType.TRADE, "agg"
    if channel == "depth" or channel.startswith("depth@"):
        return DataType.DEPTH, "depth"
    if channel == "bookTicker":
        return DataType.TICKER, "book"
    if channel == "markPrice" or channel.startswith("markPrice@"):  # USDⓈ-M only
        return DataType.FUNDING_RATE, "mark"
    if channel == "forceOrder":  # USDⓈ-M only
        return DataType.LIQUIDATION, "force"
    return None


_FUTURES_ONLY = frozenset({DataType.FUNDING_RATE, DataType.LIQUIDATION})


def _levels(changes: dict[int, int], inst: SyntheticInstrument, descending: bool) -> list[list[str]]:
    fmt = inst.fmt
    return [[fmt.price(p), fmt.size(changes[p])] for p in sorted(changes, reverse=descending)]


class BinanceWire(VenueWire):
    seq_style = SeqStyle.PER_CHANGE

    def __init__(self, venue: Venue, synthetic: bool):
        super().__init__(venue, synthetic)
        self.futures = venue.market is not Market.SPOT
        prefix = "/fapi/v1" if self.futures else "/api/v3"
        self.rest_paths = {f"{prefix}/depth": "depth", f"{prefix}/exchangeInfo": "exchangeInfo"}
        self._depth_channel = venue.channels[DataType.DEPTH]

    # --- client messages ---------------------------------------------------------------------------

    def _parse_stream(self, name: str) -> tuple[StreamKey, Sub] | None:
        symbol, at, channel = name.partition("@")
        family = channel_family(channel) if at and symbol else None
        if family is None or (family[0] in _FUTURES_ONLY and not self.futures):
            return None
        dtype, variant = family
        return (symbol.upper(), dtype), Sub(name, variant)

    def on_connect(self, query: Mapping[str, str]) -> list[tuple[StreamKey, Sub]]:
        names = [n for n in query.get("streams", "").split("/") if n]
        return [parsed for parsed in map(self._parse_stream, names) if parsed is not None]

    def on_text(self, text: str, ctx: ClientContext) -> ClientMessage:
        try:
            req = orjson.loads(text)
        except orjson.JSONDecodeError as exc:
            return ClientMessage([dumps({"code": 3, "msg": f"Invalid JSON: {exc}", "id": None})])
        if not isinstance(req, dict):
            return ClientMessage([dumps({"code": 2, "msg": "Invalid request: not an object", "id": None})])
        rid = req.get("id")
        method = req.get("method")
        params = req.get("params")
        if not isinstance(rid, int | str) or isinstance(rid, bool):
            return ClientMessage([dumps({"code": 2, "msg": "Invalid request: request ID must be an unsigned "
                                         "integer", "id": None})])  # fmt: skip
        if method in ("SUBSCRIBE", "UNSUBSCRIBE"):
            if not isinstance(params, list) or not all(isinstance(p, str) for p in params):
                return ClientMessage([dumps({"code": 2, "msg": "Invalid request: params must be a list of "
                                             "stream names", "id": rid})])  # fmt: skip
            parsed = [p for p in map(self._parse_stream, params) if p is not None]
            msg = ClientMessage([dumps({"result": None, "id": rid})], is_subscribe=method == "SUBSCRIBE")
            if method == "SUBSCRIBE":
                msg.subscribe = parsed
            else:
                msg.unsubscribe = parsed
            return msg
        if method == "LIST_SUBSCRIPTIONS":
            names = [s.name for subs in ctx.subs.values() for s in subs]
            return ClientMessage([dumps({"result": names, "id": rid})])
        if method == "SET_PROPERTY":
            return ClientMessage([dumps({"result": None, "id": rid})])
        if method == "GET_PROPERTY":
            return ClientMessage([dumps({"result": True, "id": rid})])
        return ClientMessage([dumps({"code": 2, "msg": f"Invalid request: unknown method {method!r}", "id": rid})])

    # --- replay --------------------------------------------------------------------------------------

    def classify(self, obj: Any) -> tuple[StreamKey, int | None] | None:
        if not isinstance(obj, dict):
            return None
        stream, data = obj.get("stream"), obj.get("data")
        if not isinstance(stream, str) or not isinstance(data, dict):
            return None  # replies, errors, and bare /ws frames (the collector uses combined streams)
        symbol, _, channel = stream.partition("@")
        family = channel_family(channel)
        if family is None:
            return None
        event_ms = data.get("E") or data.get("T")
        return (symbol.upper(), family[0]), event_ms if isinstance(event_ms, int) else None

    def classify_rest(self, url: str | None, body: Any, filename: str) -> RestKey | None:
        if url:
            path = urlsplit(url).path
            if path.endswith("/depth"):
                return "depth", query_of(url).get("symbol", "").upper()
            if path.endswith("/exchangeInfo"):
                return "exchangeInfo", ""
            return None
        if isinstance(body, dict) and "lastUpdateId" in body:
            match = _FILE_SYMBOL.search(filename)
            return "depth", match.group(1) if match else ""  # "" = the file's single depth symbol
        if isinstance(body, dict) and "symbols" in body and ("serverTime" in body or "timezone" in body):
            return "exchangeInfo", ""
        return None

    # --- synthetic frames ----------------------------------------------------------------------------

    def number_format(self, spec: InstrumentSpec) -> NumberFormat:
        if self.futures:
            return NumberFormat(spec, zero=fixed(0, spec.size_decimals))
        # Spot writes every price and quantity with 8 decimals whatever the tick ("61837.63000000").
        return NumberFormat(spec, 8, 8, zero="0.00000000")

    @staticmethod
    def _frame(key: StreamKey, name: str, variant: str, data: dict[str, Any], **kw: Any) -> Frame:
        text = '{"stream":"' + name + '","data":' + dumps(data) + "}"
        return Frame(key, text, name=name, variant=variant, **kw)

    def depth_frames(self, inst: SyntheticInstrument, ev: DepthEvent, variants: Collection[str],
                     now_ms: int) -> list[Frame]:  # fmt: skip
        bids: dict[int, int] = {}
        asks: dict[int, int] = {}
        for is_bid, price, size in ev.changes:  # a frame carries each level's final size only
            (bids if is_bid else asks)[price] = size
        s = inst.instrument
        b, a = _levels(bids, inst, True), _levels(asks, inst, False)
        if self.futures:
            data = {"e": "depthUpdate", "E": now_ms, "T": now_ms, "s": s, "U": ev.first_seq, "u": ev.seq,
                    "pu": ev.prev_seq, "b": b, "a": a}  # fmt: skip
        else:
            data = {"e": "depthUpdate", "E": now_ms, "s": s, "U": ev.first_seq, "u": ev.seq, "b": b, "a": a}
        name = f"{s.lower()}@{self._depth_channel}"
        return [self._frame((s, DataType.DEPTH), name, "depth", data, seq=ev.seq)]

    def trade_frames(self, inst: SyntheticInstrument, tr: TradeEvent, variants: Collection[str],
                     now_ms: int) -> list[Frame]:  # fmt: skip
        s, fmt = inst.instrument, inst.fmt
        p, q, m = fmt.price(tr.price), fmt.size(tr.size), not tr.is_buy  # m: the buyer was the maker
        out = []
        if "trade" in variants:
            if self.futures:
                data: dict[str, Any] = {"e": "trade", "E": now_ms, "T": now_ms, "s": s, "t": tr.trade_id, "p": p,
                                        "q": q, "X": "MARKET", "m": m}  # fmt: skip
            else:
                data = {"e": "trade", "E": now_ms, "s": s, "t": tr.trade_id, "p": p, "q": q, "T": now_ms,
                        "m": m, "M": True}  # fmt: skip
            out.append(self._frame((s, DataType.TRADE), f"{s.lower()}@trade", "trade", data,
                                   seq=tr.trade_id, trades=1))  # fmt: skip
        if "agg" in variants:  # one trade per aggregate: a = f = l = trade id
            data = {"e": "aggTrade", "E": now_ms, "s": s, "a": tr.trade_id, "p": p, "q": q, "f": tr.trade_id,
                    "l": tr.trade_id, "T": now_ms, "m": m}  # fmt: skip
            if not self.futures:
                data["M"] = True
            out.append(self._frame((s, DataType.TRADE), f"{s.lower()}@aggTrade", "agg", data,
                                   seq=tr.trade_id, trades=1))  # fmt: skip
        return out

    def ticker_frames(self, inst: SyntheticInstrument, variants: Collection[str], now_ms: int) -> list[Frame]:
        s, fmt, book = inst.instrument, inst.fmt, inst.book
        (bp, bq), (ap, aq) = book.best_bid(), book.best_ask()
        data: dict[str, Any] = {"u": book.seq, "s": s, "b": fmt.price(bp), "B": fmt.size(bq), "a": fmt.price(ap),
                                "A": fmt.size(aq)}  # fmt: skip
        if self.futures:
            data = {"e": "bookTicker", **data, "T": now_ms, "E": now_ms}
        return [self._frame((s, DataType.TICKER), f"{s.lower()}@bookTicker", "book", data, seq=book.seq)]

    def funding_frames(self, inst: SyntheticInstrument, variants: Collection[str], now_ms: int) -> list[Frame]:
        if not self.futures:
            return []
        s, fmt = inst.instrument, inst.fmt
        mark = inst.mark_price()
        data = {"e": "markPriceUpdate", "E": now_ms, "s": s, "p": fmt.price(mark), "i": fmt.price(mark),
                "P": fmt.price(mark), "r": rate_str(inst.funding_e8), "T": next_funding_ms(now_ms)}  # fmt: skip
        name = f"{s.lower()}@{self.venue.channels.get(DataType.FUNDING_RATE, 'markPrice@1s')}"
        return [self._frame((s, DataType.FUNDING_RATE), name, "mark", data)]

    def liquidation_frames(self, inst: SyntheticInstrument, liq: LiquidationEvent, variants: Collection[str],
                           now_ms: int) -> list[Frame]:  # fmt: skip
        if not self.futures:
            return []
        s, fmt = inst.instrument, inst.fmt
        q, p = fmt.size(liq.size), fmt.price(liq.price)
        order = {"s": s, "S": "BUY" if liq.is_buy else "SELL", "o": "LIMIT", "f": "IOC", "q": q, "p": p, "ap": p,
                 "X": "FILLED", "l": q, "z": q, "T": now_ms}  # fmt: skip
        data = {"e": "forceOrder", "E": now_ms, "o": order}
        return [self._frame((s, DataType.LIQUIDATION), f"{s.lower()}@forceOrder", "force", data)]

    # --- REST ----------------------------------------------------------------------------------------

    @staticmethod
    def _error(status: int, code: int, msg: str) -> RestReply:
        return RestReply(status, dumps({"code": code, "msg": msg}))

    def rest(self, kind: str, query: Mapping[str, str], backend: MarketBackend, now_ms: int) -> RestReply:
        if kind == "exchangeInfo":
            recorded = backend.recorded_rest(("exchangeInfo", ""))
            return RestReply(200, recorded if recorded is not None else self._exchange_info(backend, now_ms))
        symbol = query.get("symbol", "").upper()
        if not symbol:
            return self._error(400, -1102, "Mandatory parameter 'symbol' was not sent, was empty/null, or "
                               "malformed.")  # fmt: skip
        limit = int_param(query, "limit", 500 if self.futures else 100, 5, 1000 if self.futures else 5000)
        if limit is None:
            return self._error(400, -1100, "Illegal characters found in parameter 'limit'.")
        recorded = backend.recorded_rest(("depth", symbol))
        if recorded is not None:
            return RestReply(200, recorded)
        snap = backend.rest_book(symbol, limit)
        if snap is None:
            return self._error(400, -1121, "Invalid symbol.")
        bids = [[p, q] for p, q, _ in snap.bids]
        asks = [[p, q] for p, q, _ in snap.asks]
        if self.futures:
            body: dict[str, Any] = {"lastUpdateId": snap.seq, "E": now_ms, "T": now_ms, "bids": bids, "asks": asks}
        else:
            body = {"lastUpdateId": snap.seq, "bids": bids, "asks": asks}
        return RestReply(200, dumps(body))

    def _exchange_info(self, backend: MarketBackend, now_ms: int) -> str:
        symbols = []
        for instrument, spec in backend.specs():
            fmt = self.number_format(spec)
            filters = [
                {"filterType": "PRICE_FILTER", "minPrice": fmt.tick(),
                 "maxPrice": fmt.price(10 ** (6 + spec.price_decimals)), "tickSize": fmt.tick()},
                {"filterType": "LOT_SIZE", "minQty": fmt.lot(), "maxQty": fmt.size(9000 * 10**spec.size_decimals),
                 "stepSize": fmt.lot()},
            ]  # fmt: skip
            entry: dict[str, Any] = {"symbol": instrument, "status": "TRADING", "baseAsset": spec.base,
                                     "quoteAsset": spec.quote, "filters": filters}  # fmt: skip
            if self.futures:
                entry.update(pair=instrument, contractType="PERPETUAL", pricePrecision=spec.price_decimals,
                             quantityPrecision=spec.size_decimals, marginAsset=spec.quote)  # fmt: skip
            else:
                entry.update(baseAssetPrecision=8, quotePrecision=8, quoteAssetPrecision=8, permissions=["SPOT"])
            symbols.append(entry)
        return dumps({"timezone": "UTC", "serverTime": now_ms, "rateLimits": [], "exchangeFilters": [],
                      "symbols": symbols})  # fmt: skip

    def rest_error(self, status: int, retry_after_s: int, now_ms: int) -> RestReply:
        if status == 418:
            msg = f"Way too much request weight used; IP banned until {now_ms + retry_after_s * 1000}."
        elif status == 429:
            msg = "Too many requests; current limit of IP is 6000 requests per minute."
        else:
            msg = "Internal error; unable to process your request. Please try again."
        code = -1003 if status in (418, 429) else -1001
        return RestReply(status, dumps({"code": code, "msg": msg}), retry_headers(status, retry_after_s))
