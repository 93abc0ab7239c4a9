"""Scheduled REST pulls, declared as data: one ``RestPull`` per venue endpoint (long/short ratios, open interest,
funding history, volatility index).

A pull names its endpoint (``path``, a ``params`` template, ``weight`` against the venue's budget), the periods the
venue offers (normalised name such as ``5m`` -> the venue's own spelling), how many buckets one run fetches
(``lookback``), the cadence at which a scheduler should run it, and the parser that turns the response body into
records. Each venue module declares its own pulls (``REST_PULLS``); ``marketprism.venues.PULLS`` collects them.
The Prefect layer (``flows/pulls.py``) and the simulator (``marketprism/sim/sentiment.py``) read the same
declarations.

Natural keys make a re-fetched bucket land once: a run fetches the last ``lookback`` buckets, so a run that failed
is made good by the next one (JetStream drops duplicates within its window, the storage writer after it).
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from decimal import Context, Decimal, InvalidOperation
from typing import Any
from urllib.parse import urlsplit

from marketprism.records import DataType, Exchange, Market, Record
from marketprism.venues.base import RestLimits


@dataclass(frozen=True, slots=True)
class PullContext:
    """What a pull parser needs besides the body: the request's instrument, its symbol and period."""

    symbol: str  # normalised BASE-QUOTE
    instrument: str  # the venue id asked for (an instrument, or a currency for OKX's ccy ratio and Deribit's DVOL)
    period: str  # the venue's own period name ("5m", "5min", "1H", "60"); "" when the endpoint has none
    recv_ts: int  # µs


@dataclass(frozen=True, slots=True)
class Cadence:
    """When a scheduler runs a pull: a cron expression or a fixed interval (seconds)."""

    cron: str | None = None
    interval_s: float | None = None

    def __post_init__(self) -> None:
        if (self.cron is None) == (self.interval_s is None):
            raise ValueError("Cadence: give exactly one of cron and interval_s")


@dataclass(frozen=True)
class RestPull:
    """One REST endpoint pulled on a schedule.

    ``params`` is a template: values may name ``{instrument}``, ``{period}`` (the venue's spelling), ``{limit}``,
    ``{start_ms}`` and ``{end_ms}``. ``periods`` maps normalised period names to the venue's; the first one is the
    default; empty when the endpoint has no period (a snapshot such as open interest, or a time window such as
    funding history, which then fetches ``window_s`` seconds back).
    """

    name: str  # "<venue>.<kind>", e.g. "binance_usdm.top_position"
    venue: str  # REST client and simulator prefix: "binance_usdm", "okx_swap", "bybit_linear", "deribit"
    exchange: Exchange
    market: Market
    data_type: DataType
    kind: str  # top_position | top_account | global_account | open_interest | funding_rate | volatility_index
    rest_url: str
    path: str
    params: Mapping[str, str]
    weight: int
    parse: Callable[[bytes, PullContext], list[Record]]
    to_instrument: Callable[[str], str]  # "BTC-USDT" -> what the endpoint is asked for
    cadence: Cadence
    rest_limits: RestLimits
    periods: Mapping[str, str] = field(default_factory=dict)
    lookback: int = 1  # buckets per run (the request's limit, or how far back the window starts)
    window_s: float = 0.0  # windowed endpoints without a period: seconds back from now
    default_symbols: tuple[str, ...] = ()  # used when no symbols are configured for ``venue``
    notes: str = ""

    def base_url(self, venue_base: str | None = None) -> str:
        """The client's base URL: the live one, or ``venue_base`` (e.g. the simulator's ``http://h:p/deribit``) plus
        the live base's own path (Deribit ``/api/v2``), so the endpoint paths stay the venue's."""
        if not venue_base:
            return self.rest_url
        return venue_base.rstrip("/") + urlsplit(self.rest_url).path.rstrip("/")

    @property
    def default_period(self) -> str:
        return next(iter(self.periods), "")

    def venue_period(self, period: str | None) -> str:
        """The venue's name for a normalised period (``None``: the default); ValueError when not offered."""
        if not self.periods:
            return ""
        period = period or self.default_period
        if period in self.periods:
            return self.periods[period]
        if period in self.periods.values():  # already the venue's spelling
            return period
        raise ValueError(f"{self.name}: period {period!r} not offered; choose one of {', '.join(self.periods)}")

    def period_s(self, period: str | None = None) -> float:
        """Bucket size in seconds of a normalised period (0 when the endpoint has none)."""
        if not self.periods:
            return 0.0
        return period_seconds(period or self.default_period)

    def request(self, symbol: str, period: str | None = None, now_ms: int | None = None) -> tuple[str, dict[str, str]]:
        """``(path, params)`` for the latest ``lookback`` buckets of ``symbol``."""
        now_ms = int(time.time() * 1000) if now_ms is None else now_ms
        span_ms = int(self.period_s(period) * 1000 * self.lookback) or int(self.window_s * 1000)
        values = {
            "instrument": self.to_instrument(symbol),
            "period": self.venue_period(period),
            "limit": str(self.lookback),
            "start_ms": str(now_ms - span_ms),
            "end_ms": str(now_ms),
        }
        return self.path, {k: v.format(**values) for k, v in self.params.items()}


_PERIOD = re.compile(r"^(\d+)\s*(m|min|h|d)$", re.IGNORECASE)
_UNIT_S = {"m": 60, "min": 60, "h": 3600, "d": 86400}


def period_seconds(period: str) -> float:
    """``5m``/``5min`` -> 300, ``1h``/``1H`` -> 3600, ``1d``/``1D`` -> 86400."""
    match = _PERIOD.match(period.strip())
    if not match:
        raise ValueError(f"not a period: {period!r} (want e.g. 5m, 1h, 1d)")
    return int(match.group(1)) * _UNIT_S[match.group(2).lower()]


# --- wire helpers shared by the venue parsers ------------------------------------------------------------


def ms_of(value: Any, what: str = "timestamp") -> int:
    """A millisecond timestamp sent as a number or as a string of digits (venues do both)."""
    if isinstance(value, bool):
        raise ValueError(f"{what} is a boolean")
    if isinstance(value, int):
        return value
    if isinstance(value, str) and value.strip().lstrip("-").isdigit():
        return int(value)
    if isinstance(value, float) and value.is_integer():
        return int(value)
    raise ValueError(f"{what} is not a millisecond timestamp: {value!r}")


def decimal_text(value: Any, what: str) -> str:
    """A decimal as the venue's own text: strings pass through (checked), numbers keep their JSON spelling."""
    if isinstance(value, bool) or not isinstance(value, str | int | float):
        raise ValueError(f"{what} is not a number: {value!r}")
    text = value if isinstance(value, str) else repr(value)
    try:
        Decimal(text)
    except InvalidOperation:
        raise ValueError(f"{what} is not a decimal: {value!r}") from None
    return text


_RATIO_CONTEXT = Context(prec=18)


def ratio_text(long: str, short: str) -> str:
    """``long / short`` computed in Decimal (18 significant digits, no float on the way), as plain text;
    ``Infinity`` when ``short`` is zero."""
    num, den = Decimal(long), Decimal(short)
    if den == 0:
        return "Infinity" if num > 0 else "NaN"
    return format(_RATIO_CONTEXT.divide(num, den).normalize(_RATIO_CONTEXT), "f")
