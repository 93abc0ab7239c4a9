"""The collector as a long-running async Prefect flow: one venue into JetStream, hot-reloading its block.

Configuration comes from the venue's block (env overrides win, see ``marketprism.config``); parameters given
to the run win over both. While the run lasts, a changed venue block (symbols, data types) is applied to the
live connections: Prefect's ``prefect.block-document.updated`` events trigger it within a second, and a poll
every ``reload_poll_s`` seconds is the fallback. The run ends when cancelled, after ``duration_s``, or when
asked over the control plane (``mp.control.<venue>.stop``); in every case the publisher is flushed first.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
from typing import Any

from prefect import flow, get_run_logger
from prefect.artifacts import acreate_markdown_artifact

from blocks.platform import aload_platform_config, venue_block_name
from marketprism.config import ConfigError, PlatformConfig, VenueConfig, resolve
from marketprism.metrics import count_error
from marketprism.procs import die_with_parent
from marketprism.runner import CollectorSpec, RunReport, run_collectors
from marketprism.stream.collector import Collector


def report_markdown(report: RunReport) -> str:
    lines = [
        "| venue | frames | records | parse errors | reconnects | stalls |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for c in report.collectors:
        lines.append(f"| {c.venue} | {c.frames} | {c.records} | {c.parse_errors} | {c.reconnects} | {c.stalls} |")
    lines.append("\n| data type | records |\n|---|---:|")
    for c in report.collectors:
        lines += [f"| {c.venue} {dt} | {n} |" for dt, n in sorted(c.records_by_type.items())]
    p = report.publisher
    lines.append(
        f"\nPublished {p.published} (duplicates {p.duplicates}), dropped {p.dropped} "
        f"{dict(p.dropped_by_reason) or ''} in {report.seconds:.0f}s."
    )
    return "\n".join(lines)


async def connect_bus(config: PlatformConfig, nats_url: str | None, flow: str) -> Any:
    """The flow's NATS connection: ``nats_url`` or the configured servers, with the configured credentials/TLS."""
    from marketprism.bus.publisher import connect

    servers = nats_url or config.nats.servers
    if not servers:
        raise ValueError(f"{flow}: no NATS server configured (nats.servers or the nats_url parameter)")
    options = {k: v for k, v in config.nats.connect_options().items() if k != "servers"}
    return await connect(servers, name=f"marketprism-{flow}", **options)


async def load_config() -> PlatformConfig:
    """Blocks plus env overrides; the defaults (and env) when no Prefect API or blocks are reachable."""
    try:
        config, _ = await aload_platform_config()
        return config
    except ConfigError as exc:  # invalid config fails fast, named and counted (fatal, CONFIG_INVALID)
        count_error("config", exc)
        raise
    except Exception as exc:  # no API reachable: run on defaults and env rather than not at all
        get_run_logger().warning("venue blocks unavailable (%s); using defaults and MARKETPRISM_ env", exc)
        try:
            return resolve({})[0]
        except ConfigError as bad_env:
            count_error("config", bad_env)
            raise


async def apply_block(venue: str, collector: Collector) -> bool:
    """Re-read the venue's block and apply changed symbols or data types. Idempotent."""
    wanted: VenueConfig = (await load_config()).venues[venue]
    types = sorted(str(t) for t in wanted.data_types)
    if sorted(wanted.symbols) == collector.symbols and types == sorted(str(t) for t in collector.data_types):
        return False
    get_run_logger().info("venue block changed: %s now collects %s", venue, ", ".join(wanted.symbols))
    await collector.set_symbols(wanted.symbols, wanted.data_types)
    return True


async def watch_block(venue: str, collector: Collector, poll_s: float) -> None:
    """Apply block changes: on Prefect's block-document events, and by polling as the fallback."""
    from prefect.events.clients import get_events_subscriber
    from prefect.events.filters import EventFilter, EventNameFilter

    name = venue_block_name(venue)

    async def on_events() -> None:
        event_filter = EventFilter(event=EventNameFilter(name=["prefect.block-document.updated"]))
        async with get_events_subscriber(filter=event_filter) as events:
            async for event in events:
                if event.resource.name == name:
                    await apply_block(venue, collector)

    async def poll() -> None:
        while True:
            await asyncio.sleep(poll_s)
            with contextlib.suppress(Exception):
                await apply_block(venue, collector)

    tasks = [asyncio.create_task(poll())]
    try:
        await on_events()
    except Exception as exc:  # an API without the events websocket: polling alone
        get_run_logger().info("block events unavailable (%s); polling every %.0fs", exc, poll_s)
        await asyncio.gather(*tasks)
    finally:
        for t in tasks:
            t.cancel()


@flow(name="collector", log_prints=True)
async def collector(
    venue: str,
    symbols: list[str] | None = None,
    source: str = "live",
    nats_url: str | None = None,
    ws_base: str | None = None,
    duration_s: float | None = None,
    reload_poll_s: float = 10.0,
) -> dict[str, Any]:
    """Collect ``venue`` until cancelled, stopped over the control plane, or ``duration_s`` has passed."""
    if os.environ.get("MARKETPRISM_DIE_WITH_PARENT") == "1":  # set by `up`: never outlive the stack that started us
        die_with_parent()
    config = await load_config()
    venue_cfg = config.venues[venue]
    spec = CollectorSpec(venue, tuple(symbols or venue_cfg.symbols), tuple(venue_cfg.data_types))
    watchers: list[asyncio.Task[None]] = []

    def on_start(collectors: list[Collector]) -> None:
        if symbols is None:  # symbols pinned by a parameter are not reloaded from the block
            watchers.append(asyncio.create_task(watch_block(venue, collectors[0], reload_poll_s)))

    base = ws_base or venue_cfg.ws_url
    ws_bases = {venue: base} if base else None
    nats_options = {k: v for k, v in config.nats.connect_options().items() if k != "servers"}
    try:
        report = await run_collectors(
            [spec], nats_url=nats_url or config.nats.servers or None, nats_options=nats_options, source=source,
            duration_s=duration_s, session_config=venue_cfg.session_config(), stream=config.nats.stream(),
            ws_bases=ws_bases, on_start=on_start,
        )  # fmt: skip
    finally:
        for w in watchers:
            w.cancel()
    get_run_logger().info("collector %s published %d records", venue, report.publisher.published)
    await acreate_markdown_artifact(markdown=report_markdown(report), key=f"collector-{venue.replace('_', '-')}")
    p = report.publisher
    return {"published": p.published, "duplicates": p.duplicates, "dropped": p.dropped}
