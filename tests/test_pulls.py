"""Scheduled REST pulls end to end: the simulator over HTTP -> the rest-pull flow under a real Prefect server ->
a real nats-server -> the storage writer -> DuckDB. Every field stored, a re-fetched bucket stored once, stored values
consistent, and rate limits (429 Retry-After, 418) plus the circuit breaker lose nothing."""

from __future__ import annotations

import asyncio
import time
from decimal import Decimal
from pathlib import Path

import msgspec

from marketprism.bus.publisher import JetStreamPublisher, connect
from marketprism.bus.server import LocalNatsServer
from marketprism.bus.stream import MarketDataStream, ensure_stream
from marketprism.pulls import client_for, run_pulls, select_pulls
from marketprism.rest import RestClient
from marketprism.sim import Faults, SimConfig, SimServer
from marketprism.store.duck import DuckDBStore
from marketprism.store.schema import table_spec
from marketprism.store.writer import StorageWriter
from marketprism.venues import PULLS
from marketprism.venues.pull import PullContext
from tests.store_util import wait_for

SYMBOLS = {"binance_usdm": ["BTC-USDT", "ETH-USDT"], "okx_swap": ["BTC-USDT"], "bybit_linear": ["ETH-USDT"],
           "deribit": ["BTC-USD", "ETH-USD"]}  # fmt: skip
VENUES = ["binance_usdm", "okx_swap", "bybit_linear"]


def simulator() -> SimServer:
    return SimServer(SimConfig(mode="synthetic", venues=VENUES, symbols=["BTC-USDT", "ETH-USDT"], rate=1.0))


def bases(s: SimServer) -> dict[str, str]:
    return {v: s.rest_base(v) for v in [*VENUES, "deribit"]}


async def sim_records(s: SimServer, period: str | None = None) -> dict[str, dict]:
    """What the simulator serves right now, parsed by the venue parsers: natural key -> record as stored."""
    out: dict[str, dict] = {}
    for pull in PULLS.values():
        async with client_for(pull, bases(s)[pull.venue]) as client:
            for symbol in SYMBOLS[pull.venue]:
                path, params = pull.request(symbol, period if pull.kind == "volatility_index" else None)
                body = await client.get(path, params, pull.weight)
                ctx = PullContext(symbol, pull.to_instrument(symbol), pull.venue_period(period if
                                  pull.kind == "volatility_index" else None), 0)  # fmt: skip
                for rec in pull.parse(body, ctx):
                    out[rec.natural_key()] = msgspec.structs.asdict(rec)  # every field, None included
    return out


class Stack:
    """nats-server + storage writer over DuckDB, in this process."""

    def __init__(self, nats: LocalNatsServer, path: Path):
        self.nats, self.path = nats, path

    async def __aenter__(self) -> Stack:
        self.nc = await connect(self.nats.url)
        await ensure_stream(self.nc.jetstream(), MarketDataStream())
        self.store = DuckDBStore(self.path)
        self.writer = StorageWriter(self.nc, self.store, batch_rows=500, batch_seconds=0.1)
        self.task = asyncio.create_task(self.writer.run())
        return self

    async def settle(self) -> None:
        info = await self.nc.jetstream().stream_info("MARKET_DATA")
        last = info.state.last_seq
        assert await wait_for(lambda: self.writer.stats.position >= last, 20)

    def rows(self, table: str) -> list[dict]:
        return self.store.query(f"SELECT * FROM {table}").to_dicts()

    async def __aexit__(self, *exc: object) -> None:
        self.writer.stop()
        await self.task
        self.store.close()
        await self.nc.close()


def stored_as_sent(row: dict, sent: dict) -> None:
    for field, value in sent.items():
        if field in ("recv_ts",):
            continue
        got = row[field]
        if field == "ts":
            got = int(got.timestamp() * 1_000_000)
        assert got == value, (field, got, value, row["key"])


def test_rest_pull_flow_stores_every_field_once_and_consistently(prefect_api, nats_server: LocalNatsServer,
                                                                 tmp_path: Path) -> None:  # fmt: skip
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey

    from flows.pulls import rest_pull

    async def run() -> None:
        async with simulator() as s, Stack(nats_server, tmp_path / "hot.duckdb") as stack:
            kw = {"symbols": SYMBOLS, "nats_url": nats_server.url, "rest_bases": bases(s)}
            first = await rest_pull(**kw)
            await rest_pull(pulls=["deribit.volatility_index"], period="1h", artifact_key="pull-dvol-1h", **kw)
            again = await rest_pull(**kw)  # the same buckets again: stored once
            await stack.settle()
            truth = await sim_records(s) | await sim_records(s, "1h")
            async with get_client() as client:
                arts = await client.read_artifacts(artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=[
                    "rest-pull"])))  # fmt: skip

            # 30 buckets per ratio pull and symbol (OKX: 1 symbol, Bybit: 1), 1 OI snapshot, 30 DVOL candles, 24 h
            assert first["pulls"] == 2 * 4 + 4 * 1 + 1 + 2 * 2 and first["records"] >= 6 * 30
            assert again["duplicates"] >= first["records"] - 4  # OI snapshots may have moved to the next minute
            assert arts and "| binance_usdm.top_position | BTC-USDT | 30 |" in arts[0].data

            stored: dict[str, dict] = {}
            for data_type in ("long_short_ratio", "open_interest", "volatility_index", "funding_rate"):
                spec = table_spec(data_type)
                rows = stack.rows(spec.table)
                assert len({r["key"] for r in rows}) == len(rows)  # one row per natural key
                stored |= {r["key"]: r for r in rows}
            ratios = [r for r in stored.values() if r["key"].startswith("long_short_ratio")]
            assert len(ratios) == 30 * (3 * 2 + 3 + 1)
            assert {r["kind"] for r in ratios} == {"top_position", "top_account", "global_account"}
            checked = 0
            for key, sent in truth.items():
                if key in stored:  # OI of the minute before the flow ran is not in a fresh answer
                    stored_as_sent(stored[key], sent)
                    checked += 1
            assert checked >= len(truth) - 4
            for r in ratios:  # the order of stored values is right
                ratio = Decimal(r["long_short_ratio"])
                if r["long_ratio"] is not None:
                    long, short = Decimal(r["long_ratio"]), Decimal(r["short_ratio"])
                    assert long + short == 1
                    assert abs(ratio - long / short) <= Decimal("0.00005") + Decimal("0.0001") * ratio
                assert Decimal("0.5") < ratio < Decimal("2")
            for c in stack.rows("volatility_indices"):
                assert float(c["low"]) <= min(float(c["open"]), float(c["close"]))
                assert float(c["high"]) >= max(float(c["open"]), float(c["close"]))
            assert {c["resolution"] for c in stack.rows("volatility_indices")} == {"60", "3600"}
            funding = stack.rows("funding_rates")
            assert len(funding) == 2 * 24 and all(f["funding_time"] is not None for f in funding)
            oi = {r["exchange"]: r for r in stack.rows("open_interests")}
            assert oi["okx"]["open_interest_ccy"] and oi["okx"]["open_interest_value"]

    asyncio.run(run())


async def test_rate_limits_and_the_circuit_breaker_lose_nothing(nats_server: LocalNatsServer, tmp_path: Path) -> None:
    """Binance answers 429 (Retry-After 1 s) three times: the client waits as told, its circuit (threshold 2) opens,
    refuses without sending, half-opens, fails its trial, opens again and closes on the next trial. OKX answers 418
    once. Every bucket ends up stored."""
    pulls = select_pulls(["binance_usdm.global_account", "binance_usdm.top_account", "okx_swap.top_position"])
    async with simulator() as s, Stack(nats_server, tmp_path / "hot.duckdb") as stack:
        s.set_faults("binance_usdm", Faults(rest_status=429, rest_fail_count=3, rest_retry_after_s=1))
        s.set_faults("okx_swap", Faults(rest_status=418, rest_fail_count=1, rest_retry_after_s=1))
        clients: dict[str, RestClient] = {
            p.venue: client_for(p, bases(s)[p.venue], breaker_threshold=2, breaker_cooldown_s=0.5) for p in pulls
        }
        publisher = JetStreamPublisher(stack.nc).start()
        t0 = time.monotonic()
        report = await run_pulls(pulls, publisher, SYMBOLS, clients=clients, attempts=4, retry_wait_s=0.6)
        elapsed = time.monotonic() - t0
        await publisher.close()
        binance, okx = clients["binance_usdm"], clients["okx_swap"]
        truth = s.truth()["venues"]
        for c in clients.values():
            await c.close()
        await stack.settle()
        rows = stack.rows("long_short_ratios")
    assert not report.failed, report.markdown()
    assert elapsed >= 2.0  # two Retry-After pauses of 1 s were honoured
    assert binance.stats.rate_limited == 3 and okx.stats.banned == 1
    assert binance.stats.circuit_opened == 2 and binance.stats.circuit_closed == 1
    assert binance.stats.circuit_rejected >= 1 and binance.circuit.state == "closed"
    # nothing was sent while the circuit was open: every request the venue saw was counted by the client
    assert truth["binance_usdm"]["rest_requests"] == binance.stats.requests == 3 + 2 * 2
    assert truth["binance_usdm"]["rest_failures_injected"] == 3
    assert report.rest["binance_usdm"]["circuit"] == "closed"
    kinds = {(r["exchange"], r["kind"], r["symbol"]) for r in rows}
    assert kinds == {("binance", "global_account", "BTC-USDT"), ("binance", "global_account", "ETH-USDT"),
                     ("binance", "top_account", "BTC-USDT"), ("binance", "top_account", "ETH-USDT"),
                     ("okx", "top_position", "BTC-USDT")}  # fmt: skip
    assert len(rows) == 5 * 30  # all buckets stored
