"""The storage flows under a real (test-harness) Prefect server: the writer stores what the bus holds, and the
scheduled hot->cold flow migrates through the running writer (which owns the DuckDB file) or by itself."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import duckdb

from marketprism.bus.publisher import connect
from marketprism.bus.server import LocalNatsServer
from marketprism.bus.stream import MarketDataStream, ensure_stream
from marketprism.store.duck import DuckDBStore
from marketprism.store.writer import StorageWriter
from tests.store_util import wait_for
from tests.test_store import publish, trade

OLD = int((time.time() - 30 * 86400) * 1e6)  # a month ago: past the 7-day hot retention


def test_storage_writer_flow_stores_the_bus_and_leaves_an_artifact(prefect_api, nats_server: LocalNatsServer,
                                                                   tmp_path: Path) -> None:  # fmt: skip
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey

    from flows.storage_writer import storage_writer

    async def run():
        nc = await connect(nats_server.url)
        await ensure_stream(nc.jetstream(), MarketDataStream())
        await publish(nc, [trade(i) for i in range(500)])
        await nc.close()
        state = await storage_writer(nats_url=nats_server.url, duckdb_path=str(tmp_path / "hot.duckdb"),
                                     duration_s=3.0, return_state=True)  # fmt: skip
        async with get_client() as client:
            arts = await client.read_artifacts(
                artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=["storage-writer"]))
            )
        return state, arts

    state, arts = asyncio.run(run())
    assert state.is_completed()
    assert arts and "| trades | 500 |" in arts[0].data
    con = duckdb.connect(str(tmp_path / "hot.duckdb"), read_only=True)
    assert con.execute("SELECT count(*) FROM trades").fetchone() == (500,)
    con.close()


def test_hot_to_cold_flow_migrates_through_the_running_writer_then_alone(prefect_api, nats_server: LocalNatsServer,
                                                                          tmp_path: Path) -> None:  # fmt: skip
    from flows.hot_to_cold import hot_to_cold

    hot, cold = tmp_path / "hot.duckdb", tmp_path / "cold"

    async def with_writer() -> dict:
        nc = await connect(nats_server.url)
        await ensure_stream(nc.jetstream(), MarketDataStream())
        await publish(nc, [trade(i, ts=OLD + i) for i in range(300)])
        store = DuckDBStore(hot)
        writer = StorageWriter(nc, store, batch_rows=100, batch_seconds=0.1)
        task = asyncio.create_task(writer.run())
        try:
            assert await wait_for(lambda: writer.stats.position == 300, 20)
            summary = await hot_to_cold(nats_url=nats_server.url, parquet_root=str(cold), retention_days=7)
            assert store.count("trades") == 0  # moved while the writer kept the file
            await publish(nc, [trade(i, ts=OLD + i) for i in range(300, 400)])  # late data for the same day
            assert await wait_for(lambda: writer.stats.position == 400, 20)
        finally:
            writer.stop()
            await task
            store.close()
            await nc.close()
        return summary

    first = asyncio.run(with_writer())
    assert first["rows_migrated"] == 300 and first["rows_deleted"] == 300 and first["errors"] == 0
    second = asyncio.run(hot_to_cold(nats_url=nats_server.url, duckdb_path=str(hot), parquet_root=str(cold),
                                     retention_days=7))  # fmt: skip  # no writer now: the flow opens the file
    assert second["rows_migrated"] == 100 and second["errors"] == 0
    con = duckdb.connect()
    n, keys = con.execute(f"SELECT count(*), count(DISTINCT key) FROM read_parquet('{cold}/**/*.parquet')").fetchone()
    assert (n, keys) == (400, 400)


async def test_query_from_another_process_reaches_hot_rows_through_the_running_writer(
    nats_server: LocalNatsServer, tmp_path: Path
) -> None:
    import subprocess
    import sys

    nc = await connect(nats_server.url)
    await ensure_stream(nc.jetstream(), MarketDataStream())
    await publish(nc, [trade(i) for i in range(250)])
    store = DuckDBStore(tmp_path / "hot.duckdb")  # this process holds the file: no other process can open it
    writer = StorageWriter(nc, store, batch_rows=100, batch_seconds=0.1)
    task = asyncio.create_task(writer.run())
    try:
        assert await wait_for(lambda: writer.stats.position == 250, 20)
        cmd = [sys.executable, "-m", "marketprism.cli", "query", "SELECT count(*) AS n FROM trades", "-f", "csv",
               "--duckdb", str(tmp_path / "hot.duckdb"), "--parquet-root", str(tmp_path / "cold")]  # fmt: skip
        via_writer = await asyncio.to_thread(subprocess.run, [*cmd, "--nats", nats_server.url], capture_output=True,
                                             text=True, timeout=60)  # fmt: skip
        no_bus = await asyncio.to_thread(subprocess.run, [*cmd, "--nats", "nats://127.0.0.1:1"], capture_output=True,
                                         text=True, timeout=60)  # fmt: skip
    finally:
        writer.stop()
        await task
        store.close()
        await nc.close()
    assert via_writer.returncode == 0, via_writer.stderr
    assert via_writer.stdout.split() == ["n", "250"] and "warning" not in via_writer.stderr
    assert no_bus.returncode == 0 and no_bus.stdout.split() == ["n", "0"] and "cold data only" in no_bus.stderr
