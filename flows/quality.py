"""The data-quality flow: a scheduled GX checkpoint over the last window (engine: ``marketprism.quality``).

Reads the window from the hot store and cold Parquet (while the storage writer holds the DuckDB file, inside the
writer, asked over NATS, as ``marketprism query`` does), runs the suites, updates the Data Docs under
``QualityConfig.data_docs_path``, publishes a markdown artifact (suites, pass/fail, failing expectations with
examples) and a link artifact to the Data Docs, exports the results as Prometheus metrics, and fails the run
when a critical expectation failed.
"""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path
from typing import Any

from prefect import flow, get_run_logger
from prefect.artifacts import acreate_link_artifact, acreate_markdown_artifact

from flows.collector import load_config
from marketprism.quality import QualityCheckFailed, Rules, arun_quality, markdown
from marketprism.quality.runner import expected_feeds, export_metrics

MARKDOWN_KEY = "data-quality"
LINK_KEY = "data-quality-docs"


@flow(name="data-quality", log_prints=True)
async def data_quality(
    window_minutes: int | None = None,
    nats_url: str | None = None,
    duckdb_path: str | None = None,
    parquet_root: str | None = None,
    data_docs_path: str | None = None,
    venues: list[str] | None = None,
    freshness_s: dict[str, float] | None = None,
) -> dict[str, Any]:
    """Check the last ``window_minutes`` (default ``quality.window_minutes``) of stored data; fail on a critical
    expectation. ``venues``: feeds expected to be fresh (default: the enabled venues of the config)."""
    config = await load_config()
    quality, storage = config.quality, config.storage
    logger = get_run_logger()
    if not quality.enabled:
        logger.info("data quality is disabled (quality.enabled = false)")
        return {"result": "skipped"}
    thresholds = dict(freshness_s if freshness_s is not None else quality.freshness_s)
    rules = Rules(freshness_s=thresholds)
    names = venues if venues is not None else [v.venue for v in config.enabled_venues()]
    servers = nats_url or (config.nats.servers[0] if config.nats.servers else None)
    report = await arun_quality(
        timedelta(minutes=window_minutes or quality.window_minutes),
        docs_path=data_docs_path or quality.data_docs_path,
        rules=rules,
        expected=expected_feeds(names, thresholds),
        duckdb_path=duckdb_path or storage.duckdb_path,
        parquet_root=parquet_root or storage.parquet_path,
        nats_url=servers,
    )
    export_metrics(report)
    await acreate_markdown_artifact(key=MARKDOWN_KEY, markdown=markdown(report),
                                    description="Data-quality checkpoint: suites and failing expectations")  # fmt: skip
    docs_dir = Path(report.docs_index).parent
    await acreate_link_artifact(key=LINK_KEY, link=report.docs_url, link_text="GX Data Docs",
                                description=f"Great Expectations Data Docs ({docs_dir})")  # fmt: skip
    for f in report.failures:
        logger.warning("%s %s.%s (%s): %s unexpected, e.g. %s", f.severity, f.suite, f.check, f.column, f.unexpected,
                       "; ".join(f.examples[:2]))  # fmt: skip
    logger.info("data quality %s: %d suites, %d failing expectations (%d critical); Data Docs %s", report.result,
                len(report.suites), len(report.failures), len(report.critical_failures), report.docs_url)  # fmt: skip
    if report.critical_failures:
        raise QualityCheckFailed(report)
    return report.as_dict()
