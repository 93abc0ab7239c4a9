"""The simulator's scheduled-pull endpoints: long/short ratios, open interest, funding history and DVOL.

Every ``RestPull`` declared by a venue module (``marketprism.venues.PULLS``) is served under its venue's prefix, at
the path it has on the live host (Deribit: ``/deribit/api/v2/public/...``), in the shapes of the venues' docs:

* Binance ``/futures/data/*LongShort*``: ascending buckets ``{"symbol","longShortRatio","longAccount",
  "shortAccount","timestamp"}``; the timestamp alternates between a string and a number per bucket (the wire's
  encoding is unsettled, SOURCES.md §2.3, so both travel through the system); ``/fapi/v1/openInterest``.
* OKX rubik ``[[ts, ratio], ...]`` newest first; ``/api/v5/public/open-interest`` with oi/oiCcy/oiUsd.
* Bybit ``/v5/market/account-ratio`` newest first with buyRatio/sellRatio (no ratio).
* Deribit ``get_volatility_index_data`` (ascending [ts, o, h, l, c] candles, ``continuation``) and
  ``get_funding_rate_history`` (hourly), numbers as JSON numbers.

Values are a pure function of (seed, pull, instrument, bucket time): a bucket fetched twice is identical, so a test
can compare stored rows with a fresh answer. Shares have 4 decimals and sum to exactly 1; ratios are long / short
(Binance rounds to 4 decimals, OKX sends 16 significant digits); buckets are aligned to their period; open interest
is a per-minute value; DVOL candles satisfy low <= open, close <= high. Deribit, which has no collector, is a
REST-only runtime here with faults of its own (``SimServer.set_faults("deribit", ...)``). Every endpoint honours the
venue's REST faults (429 with Retry-After, 418, 5xx) like the other REST endpoints.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Mapping
from decimal import Context, Decimal
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from aiohttp import web

from marketprism.records import DataType, Exchange
from marketprism.sim.config import Faults, SimConfig
from marketprism.sim.protocol import RestReply, dumps, retry_headers
from marketprism.sim.synthetic import now_ms
from marketprism.sim.truth import VenueTruth
from marketprism.venues import PULLS, VENUES
from marketprism.venues.pull import RestPull, period_seconds

if TYPE_CHECKING:
    from marketprism.sim.server import SimServer

REST_ONLY_VENUES: tuple[str, ...] = tuple(sorted({p.venue for p in PULLS.values()} - set(VENUES)))
PRICES = {"BTC": 60_000.0, "ETH": 3_000.0, "SOL": 150.0}
_FOUR = Decimal("0.0001")
_CTX16 = Context(prec=16)


def route_path(pull: RestPull) -> str:
    """The path under the venue prefix: the live base URL's own path (Deribit ``/api/v2``) + the endpoint."""
    return urlsplit(pull.rest_url).path.rstrip("/") + pull.path


class RestOnlyRuntime:
    """A venue the simulator serves over REST only (Deribit): faults and counts, like ``VenueRuntime``."""

    def __init__(self, name: str, cfg: SimConfig):
        self.name = name
        self.truth = VenueTruth()
        self.connections: dict[str, Any] = {}
        self.faults = Faults()
        self._left: int | None = None
        self.set_faults(cfg.faults.get(name) or cfg.faults_for(name))

    def set_faults(self, faults: Faults) -> None:
        self.faults = faults
        self._left = faults.rest_fail_count

    def take_rest_failure(self) -> int:
        status = self.faults.rest_status
        if not status:
            return 0
        if self._left is not None:
            if self._left <= 0:
                return 0
            self._left -= 1
        return status


def _unit(seed: int, *parts: object) -> float:
    """A deterministic number in [0, 1) for these parts."""
    digest = hashlib.blake2b(":".join(map(str, (seed, *parts))).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") / 2**64


def _base(instrument: str) -> str:
    return instrument.upper().replace("_", "-").split("-")[0].removesuffix("USDT").removesuffix("USDC") or "BTC"


class SentimentMarket:
    """The values behind every endpoint (deterministic) and the venue-shaped bodies."""

    def __init__(self, cfg: SimConfig):
        self.seed = cfg.seed
        self.symbols = list(cfg.symbols)

    # --- values --------------------------------------------------------------------------------------
    def shares(self, pull: str, instrument: str, ts_ms: int) -> tuple[Decimal, Decimal]:
        long = (Decimal("0.35") + Decimal(_unit(self.seed, pull, instrument, ts_ms) * 0.3)).quantize(_FOUR)
        return long, Decimal(1) - long

    def ratio16(self, pull: str, instrument: str, ts_ms: int) -> str:
        long, short = self.shares(pull, instrument, ts_ms)
        return format(_CTX16.divide(long, short), "f")

    def price(self, instrument: str, ts_ms: int) -> float:
        base = PRICES.get(_base(instrument), 100.0)
        return round(base * (1 + 0.02 * (_unit(self.seed, "px", _base(instrument), ts_ms // 60_000) - 0.5)), 2)

    def open_interest(self, instrument: str, minute_ms: int) -> Decimal:
        base = PRICES.get(_base(instrument), 100.0)
        units = Decimal(str(round(2e8 / base * (1 + 0.1 * _unit(self.seed, "oi", instrument, minute_ms)), 3)))
        return units

    def dvol(self, currency: str, ts_ms: int) -> float:
        level = 45.0 + (5.0 if currency == "ETH" else 0.0)
        return round(level + 15.0 * _unit(self.seed, "dvol", currency, ts_ms // 60_000), 2)

    # --- known instruments ---------------------------------------------------------------------------
    def known(self, pull: RestPull, instrument: str) -> bool:
        if instrument.upper() in {pull.to_instrument(s) for s in self.symbols}:
            return True
        # Deribit's instruments are per currency: any currency of the served symbols exists there.
        return pull.exchange is Exchange.DERIBIT and _base(instrument) in {_base(s) for s in self.symbols}

    # --- endpoints -----------------------------------------------------------------------------------
    def reply(self, pull: RestPull, query: Mapping[str, str], now: int) -> RestReply:
        family = "ratio" if pull.data_type is DataType.LONG_SHORT_RATIO else pull.kind
        handler = _HANDLERS[(pull.exchange.value, family)]
        try:
            return handler(self, pull, query, now)
        except _BadRequest as exc:
            return exc.reply


def _int(query: Mapping[str, str], name: str, default: int | None, bad: RestReply) -> int | None:
    raw = query.get(name)
    if raw is None or raw == "":
        return default
    try:
        return int(raw)
    except ValueError:
        raise _BadRequest(bad) from None


class _BadRequest(Exception):
    def __init__(self, reply: RestReply):
        super().__init__(reply.body)
        self.reply = reply


def _buckets(period_ms: int, now: int, start: int | None, end: int | None, limit: int) -> list[int]:
    """Bucket times (ascending) aligned to the period, within [start, end], the newest ``limit`` of them."""
    newest = ((end if end is not None else now) // period_ms) * period_ms
    newest = min(newest, (now // period_ms) * period_ms)
    out: list[int] = []
    ts = newest
    while len(out) < limit and (start is None or ts >= start):
        out.append(ts)
        ts -= period_ms
    return out[::-1]


def _binance_error(code: int, msg: str) -> RestReply:
    return RestReply(400, dumps({"code": code, "msg": msg}))


def _okx_error(code: str, msg: str) -> RestReply:
    return RestReply(400, dumps({"code": code, "msg": msg, "data": []}))


def _bybit_error(msg: str, now: int) -> RestReply:  # Bybit answers errors with HTTP 200
    return RestReply(200, dumps({"retCode": 10001, "retMsg": msg, "result": {}, "retExtInfo": {}, "time": now}))


def _deribit_error(message: str, param: str) -> RestReply:
    error = {"code": -32602, "message": message, "data": {"param": param, "reason": "wrong format"}}
    return RestReply(400, dumps({"jsonrpc": "2.0", "error": error}))


def _period_ms(pull: RestPull, venue_period: str, bad: RestReply) -> int:
    for normalised, name in pull.periods.items():
        if name == venue_period:
            return int(period_seconds(normalised) * 1000)
    raise _BadRequest(bad)


def _binance_ratio(self: SentimentMarket, pull: RestPull, q: Mapping[str, str], now: int) -> RestReply:
    symbol = q.get("symbol", "").upper()
    if not symbol:
        return _binance_error(-1102, "Mandatory parameter 'symbol' was not sent, was empty/null, or malformed.")
    if not self.known(pull, symbol):
        return _binance_error(-1121, "Invalid symbol.")
    period_ms = _period_ms(pull, q.get("period", ""), _binance_error(-1120, "Invalid period."))
    bad = _binance_error(-1100, "Illegal characters found in a parameter.")
    limit = max(1, min(500, _int(q, "limit", 30, bad) or 30))
    rows = []
    for i, ts in enumerate(_buckets(period_ms, now, _int(q, "startTime", None, bad), _int(q, "endTime", None, bad),
                                     limit)):  # fmt: skip
        long, short = self.shares(pull.name, symbol, ts)
        ratio = (long / short).quantize(_FOUR)
        rows.append({"symbol": symbol, "longShortRatio": str(ratio), "longAccount": str(long),
                     "shortAccount": str(short), "timestamp": str(ts) if i % 2 == 0 else ts})  # fmt: skip
    return RestReply(200, dumps(rows))


def _binance_open_interest(self: SentimentMarket, pull: RestPull, q: Mapping[str, str], now: int) -> RestReply:
    symbol = q.get("symbol", "").upper()
    if not self.known(pull, symbol):
        return _binance_error(-1121, "Invalid symbol.")
    minute = now // 60_000 * 60_000
    return RestReply(200, dumps({"openInterest": str(self.open_interest(symbol, minute)), "symbol": symbol,
                                 "time": minute}))  # fmt: skip


def _okx_ratio(self: SentimentMarket, pull: RestPull, q: Mapping[str, str], now: int) -> RestReply:
    inst = (q.get("ccy") if pull.kind == "global_account" else q.get("instId")) or ""
    if not inst or not self.known(pull, inst):
        return _okx_error("51001", "Instrument ID does not exist") if pull.kind != "global_account" else \
            _okx_error("50014", "Parameter ccy can not be empty")  # fmt: skip
    period_ms = _period_ms(pull, q.get("period", "5m"), _okx_error("51000", "Parameter period error"))
    bad = _okx_error("51000", "Parameter error")
    limit = max(1, min(100, _int(q, "limit", 100, bad) or 100))
    buckets = _buckets(period_ms, now, _int(q, "begin", None, bad), _int(q, "end", None, bad), limit)
    data = [[str(ts), self.ratio16(pull.name, inst.upper(), ts)] for ts in reversed(buckets)]
    return RestReply(200, dumps({"code": "0", "data": data, "msg": ""}))


def _okx_open_interest(self: SentimentMarket, pull: RestPull, q: Mapping[str, str], now: int) -> RestReply:
    inst = q.get("instId", "")
    if not self.known(pull, inst):
        return _okx_error("51001", "Instrument ID does not exist")
    minute = now // 60_000 * 60_000
    contracts = self.open_interest(inst, minute) * 100  # 0.01 coin per contract (BTC-USDT-SWAP's ctVal)
    ccy = contracts / 100
    usd = (ccy * Decimal(str(self.price(inst, minute)))).quantize(Decimal("0.01"))
    row = {"instType": q.get("instType", "SWAP"), "instId": inst, "oi": str(contracts.normalize()),
           "oiCcy": str(ccy), "oiUsd": str(usd), "ts": str(minute)}  # fmt: skip
    return RestReply(200, dumps({"code": "0", "data": [row], "msg": ""}))


def _bybit_ratio(self: SentimentMarket, pull: RestPull, q: Mapping[str, str], now: int) -> RestReply:
    symbol = q.get("symbol", "")
    if q.get("category") != "linear" or not self.known(pull, symbol):
        return _bybit_error("params error: symbol invalid", now)
    period_ms = _period_ms(pull, q.get("period", ""), _bybit_error("params error: period invalid", now))
    bad = _bybit_error("params error", now)
    limit = max(1, min(500, _int(q, "limit", 50, bad) or 50))
    buckets = _buckets(period_ms, now, _int(q, "startTime", None, bad), _int(q, "endTime", None, bad), limit)
    rows = []
    for ts in reversed(buckets):
        buy, sell = self.shares(pull.name, symbol, ts)
        rows.append({"symbol": symbol, "buyRatio": str(buy), "sellRatio": str(sell), "timestamp": str(ts)})
    return RestReply(200, dumps({"retCode": 0, "retMsg": "OK", "result": {"list": rows, "nextPageCursor": ""},
                                 "retExtInfo": {}, "time": now}))  # fmt: skip


def _deribit_volatility_index(self: SentimentMarket, pull: RestPull, q: Mapping[str, str], now: int) -> RestReply:
    currency = q.get("currency", "").upper()
    if not self.known(pull, currency):
        return _deribit_error("Invalid params", "currency")
    resolution = q.get("resolution", "")
    res_ms = 86_400_000 if resolution == "1D" else None
    if res_ms is None:
        if not resolution.isdigit() or resolution not in ("1", "60", "3600", "43200"):
            return _deribit_error("Invalid params", "resolution")
        res_ms = int(resolution) * 1000
    bad = _deribit_error("Invalid params", "start_timestamp")
    start, end = _int(q, "start_timestamp", None, bad), _int(q, "end_timestamp", None, bad)
    if start is None or end is None:
        return bad
    buckets = [ts for ts in _buckets(res_ms, now, start, end, 100_000) if ts >= start]
    continuation = None
    if len(buckets) > 1000:  # newest 1000; the continuation names where the next (older) page ends
        buckets, continuation = buckets[-1000:], buckets[-1001]
    data = []
    for ts in buckets:
        o, c = self.dvol(currency, ts), self.dvol(currency, ts + res_ms)
        wiggle = round(0.5 + 2 * _unit(self.seed, "dvol-hl", currency, ts), 2)
        data.append([ts, o, round(max(o, c) + wiggle, 2), round(min(o, c) - wiggle, 2), c])
    return RestReply(200, _deribit_result({"data": data, "continuation": continuation}, now))


def _deribit_funding_rate(self: SentimentMarket, pull: RestPull, q: Mapping[str, str], now: int) -> RestReply:
    name = q.get("instrument_name", "").upper()
    if not self.known(pull, name):
        return _deribit_error("Invalid params", "instrument_name")
    bad = _deribit_error("Invalid params", "start_timestamp")
    start, end = _int(q, "start_timestamp", None, bad), _int(q, "end_timestamp", None, bad)
    if start is None or end is None:
        return bad
    rows = []
    for ts in _buckets(3_600_000, now, start, end, 745):
        if ts < start:
            continue
        rate = round((_unit(self.seed, "funding", name, ts) - 0.4) * 0.001, 8)
        prev = self.price(name, ts - 3_600_000)
        rows.append({"timestamp": ts, "index_price": self.price(name, ts), "prev_index_price": prev,
                     "interest_8h": rate, "interest_1h": round(rate / 8, 10)})  # fmt: skip
    return RestReply(200, _deribit_result(rows, now))


def _deribit_result(result: Any, now: int) -> str:
    us = now * 1000
    return dumps({"jsonrpc": "2.0", "result": result, "usIn": us, "usOut": us + 150, "usDiff": 150, "testnet": False})


_Handler = Callable[[SentimentMarket, RestPull, Mapping[str, str], int], RestReply]
_HANDLERS: dict[tuple[str, str], _Handler] = {
    ("binance", "ratio"): _binance_ratio,
    ("binance", "open_interest"): _binance_open_interest,
    ("okx", "ratio"): _okx_ratio,
    ("okx", "open_interest"): _okx_open_interest,
    ("bybit", "ratio"): _bybit_ratio,
    ("deribit", "volatility_index"): _deribit_volatility_index,
    ("deribit", "funding_rate"): _deribit_funding_rate,
}


def deribit_rest_error(status: int, retry_after_s: int, now: int) -> RestReply:
    if status in (429, 418):
        error = {"code": 10028, "message": "too_many_requests"}
    else:
        error = {"code": 11094, "message": "internal_server_error"}
    body = dumps({"jsonrpc": "2.0", "error": error, "usIn": now * 1000, "usOut": now * 1000 + 50, "usDiff": 50,
                  "testnet": False})  # fmt: skip
    return RestReply(status, body, retry_headers(status, retry_after_s))


# --- wiring into SimServer -----------------------------------------------------------------------------------


def rest_only_runtimes(cfg: SimConfig) -> dict[str, RestOnlyRuntime]:
    return {name: RestOnlyRuntime(name, cfg) for name in REST_ONLY_VENUES}


def add_routes(app: web.Application, server: SimServer) -> None:
    """Serve every pull of every venue the server runs (and of the REST-only venues) with that venue's faults."""
    market = SentimentMarket(server.cfg)
    runtimes: dict[str, Any] = {**server.venues, **server.rest_only}
    for pull in PULLS.values():
        rt = runtimes.get(pull.venue)
        if rt is not None:
            app.router.add_get(f"/{pull.venue}{route_path(pull)}", _handler(rt, pull, market))


def _handler(rt: Any, pull: RestPull, market: SentimentMarket) -> Any:
    async def handler(request: web.Request) -> web.Response:
        rt.truth.rest_requests += 1
        now = now_ms()
        status = rt.take_rest_failure()
        if status:
            rt.truth.rest_failures_injected += 1
            if isinstance(rt, RestOnlyRuntime):
                reply = deribit_rest_error(status, rt.faults.rest_retry_after_s, now)
            else:
                reply = rt.wire.rest_error(status, rt.faults.rest_retry_after_s, now)
        else:
            reply = market.reply(pull, request.query, now)
        return web.Response(status=reply.status, text=reply.body, content_type="application/json",
                            headers=reply.headers)  # fmt: skip

    return handler
