"""The storage writer as a long-running async Prefect flow (engine: ``marketprism.store.writer``)."""

from __future__ import annotations

import asyncio
import contextlib
import os

from prefect import flow, get_run_logger
from prefect.artifacts import acreate_markdown_artifact

from flows.collector import connect_bus, load_config
from marketprism.procs import die_with_parent
from marketprism.store.open import open_hot_store
from marketprism.store.writer import StorageWriter


@flow(name="storage-writer", log_prints=True)
async def storage_writer(
    nats_url: str | None = None,
    duckdb_path: str | None = None,
    duration_s: float | None = None,
) -> dict[str, int]:
    """Store every record on the bus in the hot store, exactly once, until stopped or cancelled."""
    if os.environ.get("MARKETPRISM_DIE_WITH_PARENT") == "1":
        die_with_parent()
    config = await load_config()
    storage = config.storage
    nc = await connect_bus(config, nats_url, "storage-writer")
    clickhouse_url = storage.clickhouse_url.get_secret_value() if storage.clickhouse_url else None
    store = open_hot_store(storage.hot_backend, duckdb_path=duckdb_path or storage.duckdb_path,
                           clickhouse_url=clickhouse_url)  # fmt: skip
    writer = StorageWriter(nc, store, stream=config.nats.stream(), batch_rows=storage.batch_rows,
                           batch_seconds=storage.batch_seconds)  # fmt: skip
    run = asyncio.create_task(writer.run())
    try:
        if duration_s is None:
            await run
        else:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(asyncio.shield(run), duration_s)
    finally:
        writer.stop()  # flushes what it holds, commits, acks
        with contextlib.suppress(Exception):
            await asyncio.wait_for(run, 30)
        await nc.drain()
        store.close()
    s = writer.stats
    rows = "\n".join(f"| {table} | {n} |" for table, n in sorted(s.stored_by_table.items()))
    summary = (
        f"Hot store: **{store.backend}**, stream position {s.position}, {s.batches} batches, "
        f"{s.duplicates} duplicates skipped, {s.dead_lettered} dead-lettered, {s.store_errors} commit errors.\n\n"
        f"| table | rows stored |\n|---|---:|\n{rows}"
    )
    await acreate_markdown_artifact(markdown=summary, key="storage-writer")
    get_run_logger().info("storage writer: %d rows stored up to stream seq %d", s.stored, s.position)
    return {"stored": s.stored, "position": s.position, "dead_lettered": s.dead_lettered}
