"""The order-book processor as a long-running async Prefect flow (engine: ``marketprism.processor``)."""

from __future__ import annotations

import asyncio
import contextlib
import os

from prefect import flow, get_run_logger
from prefect.artifacts import acreate_markdown_artifact

from flows.collector import connect_bus, load_config
from marketprism.bus.publisher import JetStreamPublisher
from marketprism.processor import OrderBookProcessor
from marketprism.procs import die_with_parent


@flow(name="book-processor", log_prints=True)
async def book_processor(
    nats_url: str | None = None,
    rest_bases: dict[str, str] | None = None,
    top_n: int = 20,
    interval_ms: int = 100,
    duration_s: float | None = None,
) -> dict[str, int]:
    """Keep every symbol's book in sync and publish ``book``/``book_delta`` records until stopped or cancelled."""
    if os.environ.get("MARKETPRISM_DIE_WITH_PARENT") == "1":
        die_with_parent()
    config = await load_config()
    nc = await connect_bus(config, nats_url, "book-processor")
    publisher = JetStreamPublisher(nc).start()
    processor = OrderBookProcessor(nc, publisher, rest_bases=rest_bases, top_n=top_n, interval_s=interval_ms / 1000,
                                   stream=config.nats.stream())  # fmt: skip
    run = asyncio.create_task(processor.run())
    try:
        if duration_s is None:
            await run
        else:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(asyncio.shield(run), duration_s)
    finally:
        processor.stop()
        with contextlib.suppress(Exception):
            await asyncio.wait_for(run, 10)
        await publisher.close()
        await nc.drain()
    s, totals = processor.stats, processor.books.totals()
    summary = (
        f"| books | consumed | deltas | book records | gaps | checksum ok/failed | snapshots fetched | resubscribes |\n"
        f"|---:|---:|---:|---:|---:|---:|---:|---:|\n"
        f"| {len(processor.books)} | {s.consumed} | {s.deltas_published} | {s.books_published} | {totals.gaps} | "
        f"{totals.checksum_ok}/{totals.checksum_failed} | {s.snapshot_requests} | {s.resubscribe_requests} |"
    )
    await acreate_markdown_artifact(markdown=summary, key="book-processor")
    get_run_logger().info("book processor: %d records consumed, %d deltas published", s.consumed, s.deltas_published)
    return {"consumed": s.consumed, "deltas": s.deltas_published, "books": s.books_published, "gaps": totals.gaps}
