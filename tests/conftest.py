"""Shared test fixtures: a real nats-server per test (free port, own store dir)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from marketprism.bus.publisher import connect
from marketprism.bus.server import LocalNatsServer
from marketprism.bus.stream import MarketDataStream, ensure_stream
from marketprism.store.clickhouse_server import LocalClickHouseServer


@pytest.fixture
def nats_server(tmp_path: Path) -> Iterator[LocalNatsServer]:
    server = LocalNatsServer(tmp_path / "nats").start()
    try:
        yield server
    finally:
        server.stop(kill=True)


@pytest.fixture
async def nats_client(nats_server: LocalNatsServer) -> AsyncIterator[object]:
    nc = await connect(nats_server.url)
    await ensure_stream(nc.jetstream(), MarketDataStream(max_age_s=3600, max_bytes=1 << 30))
    try:
        yield nc
    finally:
        await nc.close()


@pytest.fixture(scope="session")
def prefect_api() -> Iterator[str]:
    """One real Prefect server (the test harness, ~10 s to start) for the whole session; yields its API URL."""
    import os

    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")  # no network here
    from prefect.settings import PREFECT_API_URL
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=90):
        yield str(PREFECT_API_URL.value())


@pytest.fixture(scope="session")
def clickhouse_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalClickHouseServer]:
    """One real ClickHouse 26.9 HTTP server (chDB, ~0.3 s to start) for the session; clients use its ``url``."""
    server = LocalClickHouseServer(tmp_path_factory.mktemp("clickhouse")).start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def clickhouse_client(clickhouse_server: LocalClickHouseServer) -> Iterator[object]:
    """A clickhouse-connect client on a fresh database, dropped after the test."""
    import uuid

    import clickhouse_connect

    database = f"test_{uuid.uuid4().hex[:12]}"
    admin = clickhouse_connect.get_client(host=clickhouse_server.host, port=clickhouse_server.port)
    admin.command(f"CREATE DATABASE {database}")
    client = clickhouse_connect.get_client(host=clickhouse_server.host, port=clickhouse_server.port, database=database)
    try:
        yield client
    finally:
        client.close()
        admin.command(f"DROP DATABASE IF EXISTS {database} SYNC")
        admin.close()
