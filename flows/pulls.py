"""Scheduled REST pulls as a Prefect flow (engine: ``marketprism.pulls``; endpoints: ``RestPull`` declarations in
``marketprism/venues/``): long/short ratios, open interest, Deribit DVOL and funding history.

One parametrised flow; each deployment (``deployments/definitions.py``) names the pulls it runs and its cadence,
matching the endpoint's granularity. A run fetches the latest ``lookback`` buckets for the configured symbols (the
venue block's, else the pull's defaults), publishes them to JetStream (natural keys: a re-fetched bucket lands once)
and leaves a markdown artifact. A pull that failed fails the run (after the others were published); the next run
re-fetches its buckets.
"""

from __future__ import annotations

import os
from typing import Any

from prefect import flow, get_run_logger
from prefect.artifacts import acreate_markdown_artifact

from flows.collector import connect_bus, load_config
from marketprism.bus.publisher import JetStreamPublisher
from marketprism.bus.stream import ensure_stream
from marketprism.procs import die_with_parent
from marketprism.pulls import run_pulls, select_pulls


@flow(name="rest-pull", log_prints=True)
async def rest_pull(
    pulls: list[str] | None = None,
    symbols: dict[str, list[str]] | None = None,
    period: str | None = None,
    nats_url: str | None = None,
    rest_bases: dict[str, str] | None = None,
    artifact_key: str = "rest-pull",
) -> dict[str, Any]:
    """Run the named pulls (default: all) once. ``symbols``: venue -> symbols (wins over the venue blocks);
    ``period``: normalised bucket size (``5m``, ``1h``...; default: each pull's); ``rest_bases``: venue -> base URL
    (the simulator: ``http://127.0.0.1:PORT/<venue>``)."""
    if os.environ.get("MARKETPRISM_DIE_WITH_PARENT") == "1":
        die_with_parent()
    config = await load_config()
    chosen = select_pulls(pulls)
    wanted = {v: list(c.symbols) for v, c in config.venues.items()} | dict(symbols or {})
    nc = await connect_bus(config, nats_url, "rest-pull")
    publisher = JetStreamPublisher(nc)
    try:
        await ensure_stream(nc.jetstream(), config.nats.stream())
        publisher.start()
        report = await run_pulls(chosen, publisher, wanted, period, rest_bases)
        await publisher.close()
    finally:
        await nc.close()
    p = publisher.stats
    summary = report.markdown() + (
        f"\n\nJetStream: {p.published} acknowledged ({p.duplicates} duplicates of buckets stored before), "
        f"{p.dropped} dropped."
    )
    await acreate_markdown_artifact(markdown=summary, key=artifact_key, description="Scheduled REST pulls")
    log = get_run_logger()
    log.info("rest pulls: %d records from %d pull(s), %d published", report.submitted, len(report.outcomes),
             p.published)  # fmt: skip
    if report.failed or p.dropped:
        failed = ", ".join(f"{o.pull} {o.symbol}: {o.error}" for o in report.failed)
        raise RuntimeError(f"{len(report.failed)} pull(s) failed, {p.dropped} record(s) dropped: {failed}")
    return {"records": report.submitted, "published": p.published, "duplicates": p.duplicates,
            "pulls": len(report.outcomes)}  # fmt: skip
