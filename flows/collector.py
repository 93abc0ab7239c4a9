"""The collector as a long-running async Prefect flow: one venue into JetStream."""

from __future__ import annotations

from prefect import flow, get_run_logger
from prefect.artifacts import acreate_markdown_artifact

from marketprism.runner import CollectorSpec, RunReport, run_collectors


def report_markdown(report: RunReport) -> str:
    lines = ["| venue | frames | records | parse errors | reconnects |", "|---|---:|---:|---:|---:|"]
    for c in report.collectors:
        lines.append(f"| {c.venue} | {c.frames} | {c.records} | {c.parse_errors} | {c.reconnects} |")
    p = report.publisher
    lines.append(f"\nPublished {p.published}, duplicates {p.duplicates}, dropped {p.dropped} in {report.seconds:.0f}s.")
    return "\n".join(lines)


@flow(name="collector", log_prints=True)
async def collector(
    venue: str,
    symbols: list[str],
    source: str = "live",
    nats_url: str | None = None,
    duration_s: float | None = None,
) -> dict[str, int]:
    """Collect ``venue`` until cancelled (or for ``duration_s``); the publisher is flushed on the way out."""
    report = await run_collectors(
        [CollectorSpec(venue, tuple(symbols))], nats_url=nats_url, source=source, duration_s=duration_s
    )
    get_run_logger().info("collector %s published %d records", venue, report.publisher.published)
    await acreate_markdown_artifact(markdown=report_markdown(report), key=f"collector-{venue.replace('_', '-')}")
    return {"published": report.publisher.published, "dropped": report.publisher.dropped}
