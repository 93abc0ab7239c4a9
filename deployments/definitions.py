"""The deployments, defined once for ``prefect.serve()``/``marketprism up`` (``prefect.yaml`` mirrors them).

Long-running collectors restart themselves: an interval schedule keeps proposing a run, and a concurrency
limit of 1 with ``CANCEL_NEW`` cancels every proposal while one runs. So a crashed collector is back within
one interval, and a healthy one is never doubled.
"""

from __future__ import annotations

from typing import Any

from prefect.client.schemas.objects import ConcurrencyLimitConfig, ConcurrencyLimitStrategy

from flows.collector import collector
from marketprism.pulls import select_pulls
from marketprism.records import DataType
from marketprism.venues import VENUES
from marketprism.venues.pull import Cadence, RestPull

RESTART_INTERVAL_S = 60
ONE_AT_A_TIME = ConcurrencyLimitConfig(limit=1, collision_strategy=ConcurrencyLimitStrategy.CANCEL_NEW)


def collector_deployment_name(venue: str) -> str:
    return f"collector-{venue.replace('_', '-')}"


def collector_deployment_args(
    venues: list[str] | None = None,
    source: str = "live",
    nats_url: str | None = None,
    ws_bases: dict[str, str] | None = None,
    interval_s: float = RESTART_INTERVAL_S,
) -> list[dict[str, Any]]:
    """Arguments of ``collector.to_deployment`` for one long-running collector deployment per venue."""
    out = []
    for venue in venues or list(VENUES):
        params: dict[str, Any] = {"venue": venue, "source": "live" if ws_bases else source}
        if nats_url:
            params["nats_url"] = nats_url
        if ws_bases and venue in ws_bases:
            params["ws_base"] = ws_bases[venue]
        out.append(
            {
                "name": collector_deployment_name(venue),
                "parameters": params,
                "interval": interval_s,
                "concurrency_limit": ONE_AT_A_TIME,
                "tags": ["marketprism", "long-running", "collector"],
                "description": f"Streams {venue} into JetStream; restarts itself within {interval_s:.0f}s.",
            }
        )
    return out


def collector_deployments(**kwargs: Any) -> list[Any]:
    """The deployments themselves (sync callers, e.g. ``prefect.serve``); async callers use ``ato_deployment``."""
    return [collector.to_deployment(**args) for args in collector_deployment_args(**kwargs)]


def _given(**params: Any) -> dict[str, Any]:
    """Deployment parameters: only those given (the flow's defaults and the config blocks fill in the rest)."""
    return {k: v for k, v in params.items() if v}


def long_running_args(name: str, params: dict[str, Any], tag: str, what: str, interval_s: float) -> dict[str, Any]:
    """Arguments of ``<flow>.to_deployment`` for a long-running flow that restarts itself like the collectors."""
    return {
        "name": name,
        "parameters": params,
        "interval": interval_s,
        "concurrency_limit": ONE_AT_A_TIME,
        "tags": ["marketprism", "long-running", tag],
        "description": f"{what}; restarts itself within {interval_s:.0f}s.",
    }


PROCESSOR_DEPLOYMENT = "book-processor"


def processor_deployment_args(
    nats_url: str | None = None, rest_bases: dict[str, str] | None = None, interval_s: float = RESTART_INTERVAL_S
) -> dict[str, Any]:
    return long_running_args(PROCESSOR_DEPLOYMENT, _given(nats_url=nats_url, rest_bases=rest_bases),
                             "book-processor", "Keeps every symbol's order book in sync", interval_s)  # fmt: skip


WRITER_DEPLOYMENT = "storage-writer"


def writer_deployment_args(
    nats_url: str | None = None, duckdb_path: str | None = None, interval_s: float = RESTART_INTERVAL_S
) -> dict[str, Any]:
    what = "Stores every bus record in the hot store, exactly once"
    return long_running_args(WRITER_DEPLOYMENT, _given(nats_url=nats_url, duckdb_path=duckdb_path),
                             "storage-writer", what, interval_s)  # fmt: skip


MIGRATION_DEPLOYMENT = "hot-to-cold"
MIGRATION_CRON = "17 * * * *"  # hourly: a no-op until a day passes the retention, then that day moves


def migration_deployment_args(nats_url: str | None = None, duckdb_path: str | None = None,
                              parquet_root: str | None = None) -> dict[str, Any]:  # fmt: skip
    """Arguments of ``hot_to_cold.to_deployment``: a scheduled flow (it runs and ends)."""
    params = _given(nats_url=nats_url, duckdb_path=duckdb_path, parquet_root=parquet_root)
    return {
        "name": MIGRATION_DEPLOYMENT,
        "parameters": params,
        "cron": MIGRATION_CRON,
        "concurrency_limit": ONE_AT_A_TIME,
        "tags": ["marketprism", "scheduled", "storage"],
        "description": "Moves hot partitions older than the retention to verified Parquet, then deletes them from hot.",
    }


# --- scheduled REST pulls (flows/pulls.py): cadences match each endpoint's granularity ------------------------
# (deployment name, data type, period, cadence override). The cadence is the pulls' own declaration
# (``RestPull.cadence``) unless overridden for a period other than the default.
PULL_GROUPS: tuple[tuple[str, DataType, str | None, Cadence | None], ...] = (
    ("pull-long-short-ratios", DataType.LONG_SHORT_RATIO, None, None),  # 5m buckets: every 5 minutes
    ("pull-open-interest", DataType.OPEN_INTEREST, None, None),  # a snapshot: every minute
    ("pull-funding-history", DataType.FUNDING_RATE, None, None),  # hourly entries: every hour
    ("pull-dvol-1m", DataType.VOLATILITY_INDEX, "1m", None),  # 1-minute candles: every minute
    ("pull-dvol-1h", DataType.VOLATILITY_INDEX, "1h", Cadence(cron="2 * * * *")),  # hourly candles: every hour
)


def pull_groups(venues: list[str] | None = None) -> list[tuple[str, list[RestPull], str | None, Cadence]]:
    """(deployment name, pulls, period, cadence) per group; ``venues`` limits the streaming venues (REST-only ones,
    e.g. Deribit, are always kept)."""
    out = []
    for name, data_type, period, override in PULL_GROUPS:
        pulls = [p for p in select_pulls(venues=venues) if p.data_type is data_type]
        if not pulls:
            continue
        cadences = {p.cadence for p in pulls}
        if override is None and len(cadences) != 1:
            raise ValueError(f"{name}: its pulls declare different cadences {cadences}")
        out.append((name, pulls, period, override or cadences.pop()))
    return out


def pull_deployment_args(
    venues: list[str] | None = None, nats_url: str | None = None, rest_bases: dict[str, str] | None = None
) -> list[dict[str, Any]]:
    """Arguments of ``rest_pull.to_deployment`` for every pull group: scheduled flows (they run and end)."""
    out = []
    for name, pulls, period, cadence in pull_groups(venues):
        params: dict[str, Any] = {"pulls": [p.name for p in pulls], "artifact_key": name}
        if period:
            params["period"] = period
        if nats_url:
            params["nats_url"] = nats_url
        if rest_bases:
            params["rest_bases"] = {p.venue: rest_bases[p.venue] for p in pulls if p.venue in rest_bases}
        schedule = {"cron": cadence.cron} if cadence.cron else {"interval": cadence.interval_s}
        out.append(
            {
                "name": name,
                "parameters": params,
                **schedule,
                "concurrency_limit": ONE_AT_A_TIME,
                "tags": ["marketprism", "scheduled", "rest-pull"],
                "description": f"REST pulls {', '.join(p.name for p in pulls)}"
                + (f" ({period} buckets)" if period else ""),
            }
        )
    return out


QUALITY_DEPLOYMENT = "data-quality"
QUALITY_CRON = "0 * * * *"  # QualityConfig.schedule_cron's default; `up` takes the configured one


def quality_deployment_args(
    nats_url: str | None = None,
    duckdb_path: str | None = None,
    parquet_root: str | None = None,
    data_docs_path: str | None = None,
    venues: list[str] | None = None,
    cron: str = QUALITY_CRON,
) -> dict[str, Any]:
    """Arguments of ``data_quality.to_deployment``: a scheduled GX checkpoint over the last window (it runs and ends;
    a critical failure marks the run Failed)."""
    params: dict[str, Any] = {}
    for name, value in (("nats_url", nats_url), ("duckdb_path", duckdb_path), ("parquet_root", parquet_root),
                        ("data_docs_path", data_docs_path), ("venues", venues)):  # fmt: skip
        if value:
            params[name] = value
    return {
        "name": QUALITY_DEPLOYMENT,
        "parameters": params,
        "cron": cron,
        "concurrency_limit": ONE_AT_A_TIME,
        "tags": ["marketprism", "scheduled", "quality"],
        "description": "Great Expectations checkpoint over the last window: Data Docs, artifacts, metrics; fails on a "
        "critical expectation.",
    }
