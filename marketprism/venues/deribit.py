"""Deribit: REST pulls only for now (the DVOL volatility index and perpetual funding history).

JSON-RPC over HTTP GET at ``https://www.deribit.com/api/v2/public/<method>?<params>``. Every answer is
``{"jsonrpc":"2.0","result":...,"usIn","usOut","usDiff","testnet"}``; an error is ``{"jsonrpc":"2.0","error":
{"code","message"},...}`` (HTTP 400). Times are milliseconds. Numbers are JSON numbers, not strings: they are kept
exactly as sent (the number's JSON text), never through a float.

``public/get_volatility_index_data`` (currency, start_timestamp, end_timestamp, resolution 1|60|3600|43200|1D):
``result = {"data": [[ts, open, high, low, close], ...], "continuation": ts | null}`` ascending, at most 1,000
candles per answer (``continuation`` then names the end for the next page). ``symbol`` is ``<CCY>-USD``,
``instrument`` the currency, ``market`` option (DVOL is implied from the currency's options).

``public/get_funding_rate_history`` (instrument_name, start_timestamp, end_timestamp): ``result = [{"timestamp",
"index_price", "prev_index_price", "interest_8h", "interest_1h"}, ...]`` hourly. ``funding_rate`` is ``interest_8h``
(the 8-hour rate, comparable with the other venues' funding), ``funding_time`` the hour it belongs to,
``index_price``, ``prev_index_price`` and ``interest_1h`` (as ``funding_rate_1h``) as sent.

No ccxt: its unified methods return floats (the exact text is lost) and would bypass the venue's weight budget and
circuit breaker in ``marketprism.rest``; these are two plain GETs.
"""

from __future__ import annotations

from typing import Any

import msgspec

from marketprism.errors import Code
from marketprism.records import DataType, Exchange, FundingRate, Market, Record, VolatilityIndex
from marketprism.venues.base import ParseError, RestLimits
from marketprism.venues.pull import Cadence, PullContext, RestPull

REST_URL = "https://www.deribit.com/api/v2"
VOLATILITY_INDEX_PATH = "/public/get_volatility_index_data"
FUNDING_HISTORY_PATH = "/public/get_funding_rate_history"
# Resolutions in seconds, or "1D"; normalised names as elsewhere.
DVOL_RESOLUTIONS = {"1m": "60", "1h": "3600", "12h": "43200", "1d": "1D"}
# Non-matching-engine requests: a credit pool refilled at 20 requests/s per IP. Far below that.
REST_LIMITS = RestLimits(weight_per_minute=600)


class _Error(msgspec.Struct):
    code: int | None = None
    message: str | None = None


class _DvolResult(msgspec.Struct):
    data: list[list[msgspec.Raw]]
    continuation: msgspec.Raw = msgspec.Raw(b"")


class _DvolReply(msgspec.Struct):
    result: _DvolResult | None = None
    error: _Error | None = None


class _Funding(msgspec.Struct):
    timestamp: int | str
    interest_8h: msgspec.Raw
    index_price: msgspec.Raw = msgspec.Raw(b"")  # Raw cannot be Optional: empty = absent
    prev_index_price: msgspec.Raw = msgspec.Raw(b"")
    interest_1h: msgspec.Raw = msgspec.Raw(b"")


class _FundingReply(msgspec.Struct):
    result: list[_Funding] | None = None
    error: _Error | None = None


_dvol = msgspec.json.Decoder(_DvolReply)
_funding = msgspec.json.Decoder(_FundingReply)


def _number(raw: msgspec.Raw, what: str) -> str:
    """A JSON number's own text (``0.0004``, ``3.1e-05``, ``"53.2"`` unquoted if a string)."""
    text = bytes(raw).decode()
    if text.startswith('"') and text.endswith('"'):
        text = text[1:-1]
    if not text or text == "null":
        raise ValueError(f"{what} is missing or null")
    float(text)  # a number (raises ValueError otherwise); the text itself is what is kept
    return text


def _optional(raw: msgspec.Raw, what: str) -> str | None:
    return _number(raw, what) if _present(raw) else None


def _present(raw: msgspec.Raw) -> bool:
    return bytes(raw) not in (b"", b"null")


def _ms(raw: msgspec.Raw | int | str) -> int:
    text = raw if isinstance(raw, int | str) else bytes(raw).decode().strip('"')
    return int(text)


def currency(symbol: str) -> str:
    """``BTC-USD`` (or ``BTC``) -> ``BTC``."""
    return symbol.upper().split("-")[0]


def perpetual(symbol: str) -> str:
    """``BTC-USD`` -> ``BTC-PERPETUAL``; linear perpetuals: ``BTC-USDC`` -> ``BTC_USDC-PERPETUAL``."""
    sym = symbol.upper()
    if sym.endswith("-PERPETUAL"):
        return sym
    base, _, quote = sym.partition("-")
    return f"{base}-PERPETUAL" if quote in ("", "USD") else f"{base}_{quote}-PERPETUAL"


def _venue_error(err: _Error, body: bytes, what: str) -> ParseError:
    return ParseError("deribit", f"{what}: error {err.code}: {err.message}", body, code=Code.PARSE_VENUE_ERROR)


def parse_volatility_index(body: bytes, ctx: PullContext) -> list[Record]:
    try:
        reply = _dvol.decode(body)
    except (msgspec.DecodeError, msgspec.ValidationError) as exc:
        raise ParseError("deribit", f"get_volatility_index_data: {exc}", body) from None
    if reply.error is not None or reply.result is None:
        raise _venue_error(reply.error or _Error(message="no result"), body, "get_volatility_index_data")
    out: list[Record] = []
    try:
        for candle in reply.result.data:
            if len(candle) < 5:
                raise ValueError(f"candle has {len(candle)} values, want [ts, open, high, low, close]")
            out.append(
                VolatilityIndex(exchange="deribit", market="option", symbol=ctx.symbol, instrument=ctx.instrument,
                                ts=_ms(candle[0]) * 1000, recv_ts=ctx.recv_ts, resolution=ctx.period,
                                open=_number(candle[1], "open"), high=_number(candle[2], "high"),
                                low=_number(candle[3], "low"), close=_number(candle[4], "close"))
            )  # fmt: skip
    except ValueError as exc:
        raise ParseError("deribit", f"get_volatility_index_data: {exc}", body) from None
    return out


def parse_funding_history(body: bytes, ctx: PullContext) -> list[Record]:
    try:
        reply = _funding.decode(body)
    except (msgspec.DecodeError, msgspec.ValidationError) as exc:
        raise ParseError("deribit", f"get_funding_rate_history: {exc}", body) from None
    if reply.error is not None or reply.result is None:
        raise _venue_error(reply.error or _Error(message="no result"), body, "get_funding_rate_history")
    out: list[Record] = []
    try:
        for row in reply.result:
            ts = _ms(row.timestamp) * 1000
            out.append(
                FundingRate(exchange="deribit", market="perpetual", symbol=ctx.symbol, instrument=ctx.instrument,
                            ts=ts, recv_ts=ctx.recv_ts, funding_rate=_number(row.interest_8h, "interest_8h"),
                            funding_time=ts, index_price=_optional(row.index_price, "index_price"),
                            prev_index_price=_optional(row.prev_index_price, "prev_index_price"),
                            funding_rate_1h=_optional(row.interest_1h, "interest_1h"))
            )  # fmt: skip
    except ValueError as exc:
        raise ParseError("deribit", f"get_funding_rate_history: {exc}", body) from None
    return out


def _pull(kind: str, **kw: Any) -> RestPull:
    return RestPull(name=f"deribit.{kind}", venue="deribit", exchange=Exchange.DERIBIT, kind=kind, rest_url=REST_URL,
                    rest_limits=REST_LIMITS, default_symbols=("BTC-USD", "ETH-USD"), weight=1, **kw)  # fmt: skip


REST_PULLS: tuple[RestPull, ...] = (
    # Candles of the default resolution (1m) every minute, the last 30 of them (a missed run is made good).
    _pull("volatility_index", market=Market.OPTION, data_type=DataType.VOLATILITY_INDEX, path=VOLATILITY_INDEX_PATH,
          params={"currency": "{instrument}", "start_timestamp": "{start_ms}", "end_timestamp": "{end_ms}",
                  "resolution": "{period}"},
          parse=parse_volatility_index, to_instrument=currency, periods=DVOL_RESOLUTIONS, lookback=30,
          cadence=Cadence(cron="* * * * *")),
    # Hourly funding entries; every hour, the last 24 hours.
    _pull("funding_rate", market=Market.PERPETUAL, data_type=DataType.FUNDING_RATE, path=FUNDING_HISTORY_PATH,
          params={"instrument_name": "{instrument}", "start_timestamp": "{start_ms}", "end_timestamp": "{end_ms}"},
          parse=parse_funding_history, to_instrument=perpetual, window_s=24 * 3600, cadence=Cadence(cron="5 * * * *")),
)  # fmt: skip
