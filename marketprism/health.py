"""Feed freshness per (exchange, market, data_type), read from the host's aggregated metrics.

Collectors record the newest record's exchange time and receive time per (exchange, market, data_type) in
``marketprism_collector_last_record_timestamp_seconds`` (multiprocess mode ``max``), so this works across
every flow process of the host: ``check()`` reads the same merged values the ``/metrics`` endpoint serves.

A feed's **age** is now minus the newest record's *receive* time: the exchange clock is reported too
(``last_exchange_ts``, ``exchange_lag_s``) but not judged, since it carries the venue's clock skew and, for
replayed captures, the original dates. Per feed:

* ``ok``       age <= threshold
* ``stale``    age > threshold
* ``missing``  an ``expected`` feed that no collector has reported
* ``n/a``      no threshold for its data type (e.g. ``status``): reported, never judged

Thresholds are keyed by data type (``"trade"``) or, more specifically, ``"exchange.market.data_type"``
(``"bybit.perpetual.trade"``); the specific key wins. Overall status: ``ok`` when every judged feed is ok
(HTTP 200), else ``missing`` if any feed is missing, else ``stale`` (HTTP 503). When ``expected`` is given,
only expected feeds decide the overall status (a venue removed from the config does not fail the host
forever); otherwise every judged feed seen does. With nothing expected and nothing seen the host is
``missing``: a collector host without data is not healthy.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from prometheus_client.metrics_core import Metric

from marketprism import metrics

DEFAULT_THRESHOLDS_S: dict[str, float] = {"trade": 60.0, "depth": 10.0, "ticker": 30.0}

Key = tuple[str, str, str]  # (exchange, market, data_type)

OK, STALE, MISSING, NOT_JUDGED = "ok", "stale", "missing", "n/a"


def last_seen(families: Iterable[Metric]) -> dict[Key, dict[str, float]]:
    """``{(exchange, market, data_type): {"receive": ts, "exchange": ts}}`` from the last-record gauge."""
    seen: dict[Key, dict[str, float]] = {}
    for family in families:
        if family.name != metrics.LAST_RECORD._name:
            continue
        for s in family.samples:
            if s.value > 0:
                key = (s.labels["exchange"], s.labels["market"], s.labels["data_type"])
                seen.setdefault(key, {})[s.labels["clock"]] = s.value
    return seen


def threshold_for(key: Key, thresholds: Mapping[str, float]) -> float | None:
    return thresholds.get(".".join(key), thresholds.get(key[2]))


def evaluate(
    seen: Mapping[Key, Mapping[str, float]],
    *,
    now: float | None = None,
    thresholds: Mapping[str, float] | None = None,
    expected: Iterable[Key] | None = None,
) -> dict[str, Any]:
    now = time.time() if now is None else now
    limits = DEFAULT_THRESHOLDS_S if thresholds is None else dict(thresholds)
    wanted: set[Key] | None = None if expected is None else {(str(e), str(m), str(d)) for e, m, d in expected}
    feeds = []
    judged = []
    for key in sorted(set(seen) | (wanted or set())):
        exchange, market, data_type = key
        times = seen.get(key, {})
        limit = threshold_for(key, limits)
        receive, venue_ts = times.get("receive"), times.get("exchange")
        age = None if receive is None else round(max(0.0, now - receive), 3)
        if limit is None:
            status = NOT_JUDGED
        elif age is None:
            status = MISSING
        else:
            status = OK if age <= limit else STALE
        feeds.append({
            "exchange": exchange, "market": market, "data_type": data_type, "status": status,
            "age_s": age, "threshold_s": limit, "last_receive_ts": receive, "last_exchange_ts": venue_ts,
            "exchange_lag_s": None if receive is None or venue_ts is None else round(receive - venue_ts, 3),
        })  # fmt: skip
        if status != NOT_JUDGED and (wanted is None or key in wanted):
            judged.append(status)
    overall = MISSING if not judged or MISSING in judged else STALE if STALE in judged else OK
    return {"status": overall, "checked_at": round(now, 3), "thresholds_s": limits, "feeds": feeds}


def check(
    path: str | Path | None = None,
    *,
    thresholds: Mapping[str, float] | None = None,
    expected: Iterable[Key] | None = None,
    now: float | None = None,
) -> dict[str, Any]:
    """Freshness of this host's feeds: ``path`` is the multiprocess directory (default: the environment's)."""
    return evaluate(last_seen(metrics.collect_families(path)), now=now, thresholds=thresholds, expected=expected)


def http_status(report: Mapping[str, Any]) -> int:
    return 200 if report["status"] == OK else 503
