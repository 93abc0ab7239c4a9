"""Shared test fixtures: a real nats-server per test (free port, own store dir), fixture paths."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from marketprism.bus.publisher import connect
from marketprism.bus.server import LocalNatsServer
from marketprism.bus.stream import MarketDataStream, ensure_stream

ROOT = Path(__file__).resolve().parent.parent
FIXTURES = Path(os.environ.get("MARKETPRISM_FIXTURES", ROOT.parent / "shared" / "fixtures"))


def fixture_path(relative: str) -> Path:
    """Path of a recorded fixture file; skips the test with a clear reason when the folder is absent."""
    if not FIXTURES.is_dir():
        pytest.skip(f"recorded fixtures not found at {FIXTURES}; set MARKETPRISM_FIXTURES to the folder")
    path = FIXTURES / relative
    if not path.exists():
        pytest.fail(f"fixture file missing: {path}")
    return path


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
