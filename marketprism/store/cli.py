"""``marketprism store ...``: the storage writer and the hot store's housekeeping."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
from typing import Annotated

import orjson
import typer

from marketprism.store.open import open_hot_store
from marketprism.store.writer import StorageWriter

store_app = typer.Typer(help="Storage: the exactly-once writer, hot -> cold migration.", no_args_is_help=True)


@store_app.command()
def write(
    nats: Annotated[str, typer.Option(help="NATS URL")] = "nats://127.0.0.1:4222",
    backend: Annotated[str, typer.Option(help="hot store: duckdb or clickhouse")] = "duckdb",
    duckdb: Annotated[str, typer.Option(help="DuckDB file (backend duckdb)")] = "data/hot.duckdb",
    clickhouse: Annotated[str | None, typer.Option(help="ClickHouse URL http://user:pw@host:8123/db")] = None,
    consumer: Annotated[str, typer.Option(help="durable consumer name (its position is stored with the rows)")] = (
        "storage_writer"
    ),
    batch_rows: Annotated[int, typer.Option(help="rows per insert batch")] = 10_000,
    batch_seconds: Annotated[float, typer.Option(help="max seconds a batch waits")] = 1.0,
    verbose: Annotated[bool, typer.Option("--verbose", "-v")] = False,
) -> None:
    """Store every record on the bus in the hot store, exactly once, until SIGINT/SIGTERM."""
    logging.basicConfig(level=logging.INFO if verbose else logging.WARNING,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")  # fmt: skip
    stats = asyncio.run(_write(nats, backend, duckdb, clickhouse, consumer, batch_rows, batch_seconds))
    typer.echo(orjson.dumps(stats).decode())


async def _write(
    nats_url: str, backend: str, duckdb: str, clickhouse: str | None, consumer: str, batch_rows: int, batch_s: float
) -> dict[str, object]:
    from marketprism.bus.publisher import connect

    store = open_hot_store(backend, duckdb_path=duckdb, clickhouse_url=clickhouse)
    nc = await connect(nats_url)
    writer = StorageWriter(nc, store, consumer=consumer, batch_rows=batch_rows, batch_seconds=batch_s)
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, writer.stop)
    try:
        await writer.run()
    finally:
        with contextlib.suppress(Exception):
            await nc.drain()
        store.close()
    s = writer.stats
    return {"stored": s.stored, "duplicates": s.duplicates, "batches": s.batches, "dead_lettered": s.dead_lettered,
            "store_errors": s.store_errors, "redelivered_skipped": s.redelivered_skipped, "position": s.position,
            "stored_by_table": dict(s.stored_by_table)}  # fmt: skip
