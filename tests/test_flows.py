"""The thin Prefect layer: the collector flow runs the engine under a real (test-harness) Prefect server."""

from __future__ import annotations

import asyncio
import os
import time

from marketprism.bus.server import LocalNatsServer


def test_collector_flow_publishes_and_leaves_an_artifact(prefect_api, nats_server: LocalNatsServer) -> None:
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


def test_changed_venue_block_reaches_the_running_collector(prefect_api, nats_server: LocalNatsServer) -> None:
    """Hot reload: a symbol added to the venue block flows within seconds, in the same flow run.

    The block poll is set to 120 s, so only Prefect's block-document event can bring the change in time.
    """
    from blocks.platform import VenueBlock, venue_block_name
    from flows.collector import collector
    from marketprism.bus.publisher import connect
    from marketprism.control import request
    from marketprism.sim import SimConfig, SimServer

    async def run() -> tuple[set[str], float, dict]:
        name = venue_block_name("okx_swap")
        await VenueBlock(venue="okx_swap", symbols=["BTC-USDT"]).save(name, overwrite=True)
        cfg = SimConfig(mode="synthetic", venues=["okx_swap"], symbols=["BTC-USDT", "ETH-USDT"], rate=20.0)
        async with SimServer(cfg, host="127.0.0.1", port=0) as sim:
            nc = await connect(nats_server.url)
            seen: dict[str, float] = {}

            async def on_trade(msg) -> None:
                seen.setdefault(msg.subject.rsplit(".", 1)[1], time.monotonic())

            await nc.subscribe("md.trade.okx.>", cb=on_trade)
            flow_run = asyncio.create_task(
                collector(
                    venue="okx_swap",
                    nats_url=nats_server.url,
                    ws_base=sim.ws_base("okx_swap"),
                    reload_poll_s=120.0,
                    return_state=True,
                )
            )
            for _ in range(200):
                if "BTC-USDT" in seen:
                    break
                await asyncio.sleep(0.1)
            await asyncio.sleep(2.0)  # the flow is subscribed to block events by now
            changed_at = time.monotonic()
            await VenueBlock(venue="okx_swap", symbols=["BTC-USDT", "ETH-USDT"]).save(name, overwrite=True)
            for _ in range(150):
                if "ETH-USDT" in seen:
                    break
                await asyncio.sleep(0.1)
            status = await request(nc, "okx_swap", "status")
            await request(nc, "okx_swap", "stop")
            state = await asyncio.wait_for(flow_run, 30)
            await nc.close()
        assert state.is_completed()
        delay = seen.get("ETH-USDT", float("inf")) - changed_at
        return set(seen), delay, status

    symbols, delay, status = asyncio.run(run())
    assert symbols == {"BTC-USDT", "ETH-USDT"}
    assert delay < 10, f"the new symbol took {delay:.1f}s"
    assert status["symbols"] == ["BTC-USDT", "ETH-USDT"] and status["reconnects"] == 0
    assert status["pid"] == os.getpid()  # the same flow run (this process) collects the new symbol
