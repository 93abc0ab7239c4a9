"""The thin Prefect layer: the collector flow runs the engine under a real (test-harness) Prefect server."""

from __future__ import annotations

import asyncio

import pytest

from marketprism.bus.server import LocalNatsServer


@pytest.fixture(scope="module")
def prefect_server():
    import os

    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")  # no network here
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=60):
        yield


def test_collector_flow_publishes_and_leaves_an_artifact(prefect_server, nats_server: LocalNatsServer) -> None:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey

    from flows.collector import collector

    async def run():
        state = await collector(venue="okx_swap", symbols=["BTC-USDT"], source="sim", nats_url=nats_server.url,
                                duration_s=2.0, return_state=True)  # fmt: skip
        async with get_client() as client:
            found = await client.read_artifacts(
                artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=["collector-okx-swap"]))
            )
        return state, found

    state, found = asyncio.run(run())
    assert state.is_completed()
    result = await_result(state)
    assert result["published"] > 0 and result["dropped"] == 0
    assert found and "| okx_swap |" in found[0].data


def await_result(state):
    result = state.result()
    return asyncio.run(result) if asyncio.iscoroutine(result) else result
