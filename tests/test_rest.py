"""REST without bans, against the simulator's real HTTP endpoints and its 429/418/5xx faults."""

from __future__ import annotations

import asyncio
import dataclasses
import time

import pytest

from marketprism.rest import CircuitBreaker, CircuitOpenError, RestClient, RestError, WeightBudget
from marketprism.sim import Faults, SimConfig, SimServer
from marketprism.venues import VENUES
from marketprism.venues.base import RestLimits

FAST = RestLimits(weight_per_minute=6000, backoff_initial_s=0.05, backoff_max_s=0.2, max_attempts=5)


def sim(*venues: str) -> SimServer:
    return SimServer(SimConfig(mode="synthetic", venues=list(venues), symbols=["BTC-USDT", "ETH-USDT"], rate=5.0))


@pytest.mark.parametrize("venue", sorted(VENUES))
async def test_every_venue_declares_a_snapshot_request_the_simulator_answers(venue: str) -> None:
    v = VENUES[venue]
    assert v.snapshot_request is not None and v.rest_limits.weight_per_minute > 0
    req = v.snapshot_request(v.to_instrument("BTC-USDT"))
    async with sim(venue) as s, RestClient(s.rest_base(venue), FAST, name=venue) as client:
        body = await client.get_json(req.path, req.params, req.weight)
    assert body  # each venue's own snapshot shape (parsed by the book sync machines)
    assert client.stats.requests == 1 and client.stats.weight_used == req.weight


@pytest.mark.parametrize("status", [429, 418])
async def test_rate_limit_answers_pause_every_request_for_retry_after(status: int) -> None:
    venue = VENUES["binance_spot"]
    req = venue.snapshot_request("BTCUSDT")  # type: ignore[misc]
    async with sim("binance_spot") as s, RestClient(s.rest_base("binance_spot"), FAST) as client:
        s.set_faults("binance_spot", Faults(rest_status=status, rest_fail_count=2, rest_retry_after_s=1))
        t0 = time.monotonic()
        body = await client.get_json(req.path, req.params, req.weight)
        elapsed = time.monotonic() - t0
        truth = s.truth()["venues"]["binance_spot"]
    assert "lastUpdateId" in body
    assert elapsed >= 2.0  # waited as told, twice
    assert client.stats.by_status[status] == 2 and client.stats.by_status[200] == 1
    assert (client.stats.rate_limited if status == 429 else client.stats.banned) == 2
    assert truth["rest_requests"] == 3  # nothing sent while paused


async def test_server_errors_back_off_with_a_cap_then_succeed_and_bad_requests_fail_fast() -> None:
    async with sim("bybit_linear") as s, RestClient(s.rest_base("bybit_linear"), FAST) as client:
        s.set_faults("bybit_linear", Faults(rest_status=503, rest_fail_count=3, rest_retry_after_s=0))
        req = VENUES["bybit_linear"].snapshot_request("BTCUSDT")  # type: ignore[misc]
        await client.get_json(req.path, req.params, req.weight)
        assert client.stats.retries == 3 and client.stats.by_status[503] == 3
        s.set_faults("bybit_linear", Faults(rest_status=500))  # every request fails
        with pytest.raises(RestError, match="gave up after 5 attempts"):
            await client.get_json(req.path, req.params, req.weight)
        assert client.stats.failures == 1
    async with sim("binance_usdm") as s, RestClient(s.rest_base("binance_usdm"), FAST) as client:
        with pytest.raises(RestError, match="400"):  # unknown symbol: retrying cannot help
            await client.get_json("/fapi/v1/depth", {"symbol": "NOPEUSDT", "limit": "1000"}, 20)
        assert client.stats.requests == 1


async def test_a_storm_of_snapshot_requests_stays_within_the_weight_budget() -> None:
    """63 snapshot requests at once against a 600 weight/min budget (weight 10 each): 60 go out, the other 3
    wait until the first ones leave the 60 s window, so the venue never sees more than it allows in a minute."""
    limits = dataclasses.replace(FAST, weight_per_minute=600, max_concurrent=8)
    async with sim("binance_spot") as s, RestClient(s.rest_base("binance_spot"), limits) as client:
        calls = [
            asyncio.ensure_future(client.get_json("/api/v3/depth", {"symbol": "BTCUSDT", "limit": "100"}, 10))
            for _ in range(63)
        ]
        done, pending = await asyncio.wait(calls, timeout=4.0)
        truth = s.truth()["venues"]["binance_spot"]
        for call in pending:
            call.cancel()
        await asyncio.gather(*pending, return_exceptions=True)
    assert len(done) == 60 and len(pending) == 3
    assert all("lastUpdateId" in c.result() for c in done)
    assert truth["rest_requests"] == 60 and client.stats.by_status == {200: 60}
    assert client.stats.weight_used == 600


def test_the_weight_budget_never_exceeds_its_limit_in_any_minute() -> None:
    now = [0.0]
    budget = WeightBudget(100, clock=lambda: now[0])
    sent: list[tuple[float, int]] = []
    for step in range(3000):  # a caller that asks every 0.1 s and waits as told
        now[0] = step * 0.1
        if budget.delay_for(7) == 0.0:
            sent.append((now[0], 7))
    assert sum(w for _, w in sent) >= 100 * 4  # it did send: ~5 minutes of budget
    for t0, _ in sent:
        assert sum(w for t, w in sent if t0 <= t < t0 + 60.0) <= 100
    assert WeightBudget(10, clock=lambda: 0.0).delay_for(11) == 60.0  # heavier than the budget: wait a window


def test_the_circuit_breaker_opens_rejects_half_opens_for_one_trial_and_closes() -> None:
    now = [0.0]
    b = CircuitBreaker(threshold=3, cooldown_s=10.0, clock=lambda: now[0])
    for _ in range(2):
        assert b.acquire()
        b.failure()
    assert b.state == "closed" and b.consecutive_failures == 2
    b.success()  # a success in between: the count starts again
    for _ in range(3):
        assert b.acquire()
        b.failure()
    assert b.state == "open" and b.rejects() and not b.acquire() and b.stats.circuit_opened == 1
    now[0] = 9.9
    assert b.state == "open" and b.retry_in_s() == pytest.approx(0.1)
    now[0] = 10.0
    assert b.state == "half_open" and not b.rejects()
    assert b.acquire() and not b.acquire()  # exactly one trial; the others are refused meanwhile
    b.failure()  # the trial failed: open for another cool-down
    assert b.state == "open" and b.stats.circuit_opened == 2
    now[0] = 20.0
    assert b.acquire()
    b.success()
    assert b.state == "closed" and b.stats.circuit_closed == 1 and b.stats.circuit_trials == 2
    assert b.stats.circuit_rejected == 2


async def test_the_circuit_opens_on_repeated_5xx_rejects_without_requests_then_recovers() -> None:
    from marketprism import metrics

    venue = VENUES["bybit_linear"]
    req = venue.snapshot_request("BTCUSDT")  # type: ignore[misc]
    gauge = ("marketprism_rest_open_circuits", {"exchange": "bybit", "market": "perpetual"})
    async with sim("bybit_linear") as s, RestClient(s.rest_base("bybit_linear"), FAST, name="bybit_linear",
                                                    breaker_threshold=3, breaker_cooldown_s=1.0) as client:  # fmt: skip
        s.set_faults("bybit_linear", Faults(rest_status=503, rest_retry_after_s=0))
        with pytest.raises(CircuitOpenError):  # 3 failed attempts open it: the 4th is not sent
            await client.get_json(req.path, req.params, req.weight)
        assert client.circuit.state == "open" and client.stats.requests == 3
        assert metrics.REGISTRY.get_sample_value(*gauge) == 1.0
        t0 = time.monotonic()
        with pytest.raises(CircuitOpenError):  # fast: nothing sent while open
            await client.get_json(req.path, req.params, req.weight)
        assert time.monotonic() - t0 < 0.05 and s.truth()["venues"]["bybit_linear"]["rest_requests"] == 3
        s.set_faults("bybit_linear", Faults())  # the venue recovers
        await asyncio.sleep(1.05)
        assert client.circuit.state == "half_open"
        body = await client.get_json(req.path, req.params, req.weight)  # the trial succeeds: closed
    assert body["retCode"] == 0 and client.circuit.state == "closed"
    assert (client.stats.circuit_opened, client.stats.circuit_closed, client.stats.circuit_rejected) == (1, 1, 2)
    assert metrics.REGISTRY.get_sample_value(*gauge) == 0.0
    opens = metrics.REGISTRY.get_sample_value("marketprism_rest_circuit_opens_total", gauge[1])
    assert opens is not None and opens >= 1
