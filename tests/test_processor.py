"""The order-book processor end to end: sim -> collectors -> JetStream -> processor -> book/book_delta on the bus."""

from __future__ import annotations

import asyncio
import itertools
import string
from pathlib import Path

import aiohttp
import orjson
import pytest
from prometheus_client import REGISTRY
from prometheus_client.parser import text_string_to_metric_families

from marketprism import metrics
from marketprism.book.records import Book, BookDelta
from marketprism.book.snapshots import SnapshotError, bybit_orderbook_snapshot
from marketprism.bus.codec import decode_subject
from marketprism.bus.publisher import JetStreamPublisher, connect
from marketprism.processor import OrderBookProcessor
from marketprism.records import DataType, now_us
from marketprism.rest import RestClient
from marketprism.runner import CollectorSpec, run_collectors
from marketprism.sim import Faults, SimConfig, SimServer
from marketprism.stream.session import SessionConfig
from marketprism.venues import VENUES

FAST = SessionConfig(stall_timeout_s=3.0, backoff_initial_s=0.05, backoff_max_s=0.5)
PAIR = ("binance_spot", "okx_swap")


async def wait_until(predicate, timeout_s: float, step: float = 0.05) -> bool:  # type: ignore[no-untyped-def]
    deadline = asyncio.get_running_loop().time() + timeout_s
    while asyncio.get_running_loop().time() < deadline:
        if predicate():
            return True
        await asyncio.sleep(step)
    return predicate()


def sample(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


async def scrape() -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """The /metrics text of this process's endpoint: (sample name, sorted labels) -> value."""
    runner, port = await metrics.start_metrics_server(port=0)
    try:
        async with aiohttp.ClientSession() as http, http.get(f"http://127.0.0.1:{port}/metrics") as resp:
            assert resp.status == 200
            text = await resp.text()
    finally:
        await runner.cleanup()
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
        if s.name.startswith("marketprism_processor_")
    }


def same_book(machine, truth: dict, depth: int = 20) -> bool:  # type: ignore[no-untyped-def]
    bids, asks = machine.book.top(depth)
    return [list(lv) for lv in bids] == [lv[:2] for lv in truth["bids"][:depth]] and [list(lv) for lv in asks] == [
        lv[:2] for lv in truth["asks"][:depth]
    ]


async def test_books_sync_resync_one_venue_on_faults_and_match_the_true_book(tmp_path: Path, nats_server) -> None:
    """Also the processor's Prometheus metrics, read back from the registry and from the /metrics text."""
    resyncs = ("marketprism_processor_resyncs_total", {"exchange": "binance", "market": "spot", "reason": "gap"})
    okx_ok = ("marketprism_processor_checksums_total", {"exchange": "okx", "market": "perpetual", "result": "ok"})
    okx_failed = ("marketprism_processor_checksums_total", {**okx_ok[1], "result": "failed"})
    okx_resub = ("marketprism_processor_resubscribe_requests_total", {"exchange": "okx", "market": "perpetual"})
    snaps = ("marketprism_processor_snapshot_requests_total", {"exchange": "binance", "market": "spot", "result": "ok"})
    depth = ("marketprism_processor_depth_records_total", {"exchange": "okx", "market": "perpetual"})
    deltas = ("marketprism_processor_records_total", {"data_type": "book_delta"})
    counters = (resyncs, okx_ok, okx_failed, okx_resub, snaps, depth, deltas)
    before = {name + str(labels): sample(name, **labels) for name, labels in counters}
    cfg = SimConfig(mode="synthetic", venues=list(PAIR), symbols=["BTC-USDT", "ETH-USDT"], rate=20.0)
    async with SimServer(cfg, host="127.0.0.1", port=0) as sim:
        nc = await connect(nats_server.url)
        stop = asyncio.Event()
        collectors = asyncio.create_task(
            run_collectors(
                [CollectorSpec(v, ("BTC-USDT", "ETH-USDT"), (DataType.DEPTH,)) for v in PAIR],
                nats_url=nats_server.url, data_dir=tmp_path, stop=stop, session_config=FAST,
                ws_bases={v: sim.ws_base(v) for v in PAIR},
            )
        )  # fmt: skip
        books: list[Book] = []

        async def on_book(msg) -> None:
            record = decode_subject(msg.subject, msg.data)
            assert isinstance(record, Book)
            books.append(record)

        await nc.subscribe("md.book.>", cb=on_book)
        publisher = JetStreamPublisher(nc).start()
        processor = OrderBookProcessor(nc, publisher, rest_bases={v: sim.rest_base(v) for v in PAIR}, top_n=10,
                                       stagger_s=0.05, retry_after_s=3.0)  # fmt: skip
        run = asyncio.create_task(processor.run())
        try:

            def synced() -> bool:
                symbols = processor.books.stats()["symbols"]
                return len(symbols) == 4 and all(s["state"] == "synced" for s in symbols.values())

            assert await wait_until(synced, 20)
            assert processor.stats.snapshot_requests >= 2  # Binance: REST snapshots
            # Faults on one venue only: dropped Binance frames make gaps, its symbols resync by REST.
            sim.set_faults("binance_spot", Faults(drop_every_n=40))
            assert await wait_until(lambda: processor.books.totals().gaps >= 2, 15)
            sim.set_faults("binance_spot", Faults())
            assert await wait_until(synced, 20)
            stats = processor.books.stats()["symbols"]
            binance = [stats[f"binance:spot:{s}"] for s in ("BTC-USDT", "ETH-USDT")]
            okx = [stats[f"okx:perpetual:{s}"] for s in ("BTC-USDT", "ETH-USDT")]
            assert sum(b["resyncs_by_reason"].get("gap", 0) for b in binance) >= 2
            assert all(o["gaps"] == 0 and o["resyncs"] == 0 for o in okx)  # the other venue was never touched
            assert processor.stats.snapshot_requests >= 4  # the resyncs went through REST snapshots
            # A corrupted OKX checksum: that symbol resyncs by resubscription.
            sim.set_faults("okx_swap", Faults(corrupt_checksum_every_n=30))
            assert await wait_until(lambda: processor.books.totals().checksum_failed >= 1, 15)
            sim.set_faults("okx_swap", Faults())
            assert await wait_until(lambda: processor.stats.resubscribe_requests >= 1 and synced(), 20)
            stats = processor.books.stats()["symbols"]
            assert sum(stats[f"okx:perpetual:{s}"]["resyncs_by_reason"].get("checksum", 0)
                       for s in ("BTC-USDT", "ETH-USDT")) >= 1  # fmt: skip
            # After the resyncs, the published books equal the simulator's true books.
            await asyncio.sleep(1.0)
            for venue, instrument, symbol in (("binance_spot", "BTCUSDT", "BTC-USDT"),
                                              ("okx_swap", "ETH-USDT-SWAP", "ETH-USDT")):  # fmt: skip
                last = [b for b in books if b.exchange == venue.split("_")[0] and b.symbol == symbol][-1]
                truth = sim.book(venue, instrument, last.seq)
                assert truth is not None
                assert [list(lv) for lv in last.bids] == [list(lv)[:2] for lv in truth["bids"][:10]]
                assert [list(lv) for lv in last.asks] == [list(lv)[:2] for lv in truth["asks"][:10]]
            # Metrics: synced every metrics_interval_s; sync now so the values match the counters read below.
            processor.sync_metrics()
            grew = {
                name + str(labels): sample(name, **labels) - before[name + str(labels)] for name, labels in counters
            }
            totals = processor.books.stats()["totals"]
            assert grew[resyncs[0] + str(resyncs[1])] >= 2  # the injected gaps, by their reason
            assert grew[okx_ok[0] + str(okx_ok[1])] > 100  # OKX checksums verified...
            assert grew[okx_failed[0] + str(okx_failed[1])] >= 1  # ...and the corrupted ones caught
            assert grew[okx_resub[0] + str(okx_resub[1])] == processor.stats.resubscribe_requests >= 1
            assert grew[snaps[0] + str(snaps[1])] == processor.stats.snapshot_requests >= 4
            assert grew[depth[0] + str(depth[1])] > 100
            assert grew[deltas[0] + str(deltas[1])] == processor.stats.deltas_published
            assert grew[okx_ok[0] + str(okx_ok[1])] == sum(
                s["checksum_ok"] for k, s in processor.books.stats()["symbols"].items() if k.startswith("okx")
            )
            assert totals["checksum_ok"] >= grew[okx_ok[0] + str(okx_ok[1])]
            for venue in (("binance", "spot"), ("okx", "perpetual")):
                labels = dict(zip(("exchange", "market"), venue, strict=True))
                assert sample("marketprism_processor_synced_books", **labels) == 2
                assert sample("marketprism_processor_tracked_books", **labels) == 2
            assert sample("marketprism_processor_lag_seconds") < 5.0
            # The same values through the scrape endpoint's text.
            text = await scrape()
            key = tuple(sorted(resyncs[1].items()))
            assert text[(resyncs[0], key)] == sample(*resyncs[:1], **resyncs[1]) >= 2
            assert text[(okx_ok[0], tuple(sorted(okx_ok[1].items())))] == sample(okx_ok[0], **okx_ok[1]) > 100
            assert text[("marketprism_processor_synced_books", (("exchange", "okx"), ("market", "perpetual")))] == 2
        finally:
            processor.stop()
            await asyncio.wait_for(run, 10)
            stop.set()
            await collectors
            await publisher.close()
            await nc.close()
    assert books and processor.stats.deltas_published > 100
    assert all(float(b.bids[0][0]) < float(b.asks[0][0]) for b in books if b.bids and b.asks)  # never crossed


async def test_failing_snapshots_keep_memory_bounded_and_recover(tmp_path: Path, nats_server) -> None:
    """Binance REST answers 500 for a while: buffers stay capped (counted drops), then the retry syncs."""
    cfg = SimConfig(mode="synthetic", venues=["binance_usdm"], symbols=["BTC-USDT"], rate=50.0,
                    faults={"binance_usdm": Faults(rest_status=500)})  # fmt: skip
    async with SimServer(cfg, host="127.0.0.1", port=0) as sim:
        nc = await connect(nats_server.url)
        stop = asyncio.Event()
        collectors = asyncio.create_task(
            run_collectors(
                [CollectorSpec("binance_usdm", ("BTC-USDT",), (DataType.DEPTH,))],
                nats_url=nats_server.url,
                data_dir=tmp_path,
                stop=stop,
                session_config=FAST,
                ws_bases={"binance_usdm": sim.ws_base("binance_usdm")},
            )
        )
        publisher = JetStreamPublisher(nc).start()
        processor = OrderBookProcessor(nc, publisher, rest_bases={"binance_usdm": sim.rest_base("binance_usdm")},
                                       retry_after_s=1.0, stagger_s=0.01)  # fmt: skip
        processor.books.buffer_limit = 20  # small, so the cap is reached within the test
        run = asyncio.create_task(processor.run())
        try:
            key = ("binance", "perpetual", "BTC-USDT")

            def counters() -> dict:
                return processor.books.stats()["symbols"].get("binance:perpetual:BTC-USDT", {})

            assert await wait_until(lambda: counters().get("buffer_overflow", 0) > 20, 20)
            machine = processor.books[key]
            assert machine.buffered <= 20  # bounded while no snapshot can be had
            assert sim.truth()["venues"]["binance_usdm"]["rest_failures_injected"] >= 1  # the snapshot kept failing
            sim.set_faults("binance_usdm", Faults())
            assert await wait_until(lambda: counters().get("state") == "synced", 30)
        finally:
            processor.stop()
            await asyncio.wait_for(run, 10)
            stop.set()
            await collectors
            await publisher.close()
            await nc.close()


async def test_bybit_resyncs_by_rest_snapshot_mid_stream_and_matches_the_true_book(tmp_path: Path, nats_server) -> None:
    """Dropped Bybit frames make gaps; the processor fetches ``/v5/market/orderbook`` (never a resubscription),
    the machine takes it mid-stream (deltas with ``u <=`` the snapshot's dropped, ``u + 1`` continues) and the
    book equals the simulator's."""
    symbols = ("BTC-USDT", "ETH-USDT")
    cfg = SimConfig(mode="synthetic", venues=["bybit_linear"], symbols=list(symbols), rate=30.0)
    async with SimServer(cfg, host="127.0.0.1", port=0) as sim:
        # The REST body as the simulator serves it: parsed like the stream's snapshot, at the stream's u.
        venue = VENUES["bybit_linear"]
        call = venue.snapshot_request("BTCUSDT")  # type: ignore[misc]
        async with RestClient(sim.rest_base("bybit_linear"), venue.rest_limits) as client:
            body = await client.get_json(call.path, call.params, call.weight)
        snap = bybit_orderbook_snapshot(orjson.dumps(body), market="perpetual", instrument="BTCUSDT", recv_ts=1)
        assert snap.is_snapshot and snap.symbol == "BTC-USDT" and snap.seq == body["result"]["u"]
        assert snap.cross_seq == body["result"]["seq"] and snap.ts == body["result"]["ts"] * 1000
        assert (
            orjson.loads(bytes(snap.bids)) == body["result"]["b"]
            and orjson.loads(bytes(snap.asks)) == body["result"]["a"]
        )
        with pytest.raises(SnapshotError, match="10001"):
            bybit_orderbook_snapshot(b'{"retCode":10001,"retMsg":"params error","result":{}}', market="perpetual",
                                     instrument="BTCUSDT", recv_ts=1)  # fmt: skip

        nc = await connect(nats_server.url)
        stop = asyncio.Event()
        collectors = asyncio.create_task(
            run_collectors(
                [CollectorSpec("bybit_linear", symbols, (DataType.DEPTH,))], nats_url=nats_server.url,
                data_dir=tmp_path, stop=stop, session_config=FAST,
                ws_bases={"bybit_linear": sim.ws_base("bybit_linear")},
            )
        )  # fmt: skip
        deltas: list[BookDelta] = []

        async def on_delta(msg) -> None:
            record = decode_subject(msg.subject, msg.data)
            assert isinstance(record, BookDelta)
            deltas.append(record)

        await nc.subscribe("md.book_delta.bybit.>", cb=on_delta)
        publisher = JetStreamPublisher(nc).start()
        processor = OrderBookProcessor(nc, publisher, rest_bases={"bybit_linear": sim.rest_base("bybit_linear")},
                                       stagger_s=0.05, retry_after_s=3.0)  # fmt: skip
        run = asyncio.create_task(processor.run())
        keys = [("bybit", "perpetual", s) for s in symbols]
        try:

            def synced() -> bool:
                return all(k in processor.books and processor.books[k].synced for k in keys)

            assert await wait_until(synced, 20)  # from the stream's snapshot (the collector subscribed)
            subscribes = sim.truth()["subscribe_messages"]["bybit_linear"]
            rest_before = sim.truth()["venues"]["bybit_linear"]["rest_requests"]
            # Dropped frames make gaps. The first REST answer is a 429 (Retry-After 1 s), and meanwhile the
            # stream stalls (frames held, then delivered: no gap), so the snapshot is taken while the deltas
            # up to its u are still on their way: they reach the machine after the snapshot, mid-stream.
            truth = sim.truth()["venues"]["bybit_linear"]
            sim.set_faults("bybit_linear", Faults(drop_every_n=5, rest_status=429, rest_retry_after_s=1))
            assert await wait_until(lambda: all(processor.books[k].counters.gaps >= 1 for k in keys), 15)
            assert await wait_until(
                lambda: (
                    sim.truth()["venues"]["bybit_linear"]["rest_failures_injected"] > truth["rest_failures_injected"]
                ),
                5,
            )
            sim.set_faults("bybit_linear", Faults(stall_s=1.8))  # shorter than the collector's stall timeout
            assert await wait_until(synced, 20)
            applied = {k: processor.books[k].counters.applied for k in keys}
            assert await wait_until(
                lambda: all(processor.books[k].counters.applied > applied[k] + 20 for k in keys), 10
            )
            # Resynced by REST, not by resubscribing: no subscribe message reached the venue since the faults.
            assert processor.stats.resubscribe_requests == 0
            assert sim.truth()["subscribe_messages"]["bybit_linear"] == subscribes
            assert processor.stats.snapshots_by_result[("bybit", "perpetual", "ok")] >= 2
            assert sim.truth()["venues"]["bybit_linear"]["rest_requests"] - rest_before >= 2
            for k in keys:
                machine = processor.books[k]
                c = machine.counters
                assert c.resyncs.get("gap", 0) >= 1 and c.snapshots >= 2, c  # stream snapshot + REST ones
                assert c.duplicates >= 1, c  # deltas already in the REST snapshot, dropped
                truth = sim.book("bybit_linear", machine.instrument, machine.last_seq)
                assert truth is not None and truth["seq"] == machine.last_seq
                assert same_book(machine, truth, 40)
            # The delta stream marks the loss and the REST snapshot; updates after it continue from its u.
            await asyncio.sleep(0.5)
            for symbol in symbols:
                mine = [d for d in deltas if d.symbol == symbol]
                lost = next(i for i, d in enumerate(mine) if d.resync)
                resnap = next(i for i, d in enumerate(mine) if i > lost and d.is_snapshot)
                after = mine[resnap + 1]
                assert not after.resync and not after.is_snapshot
                assert after.prev_seq == mine[resnap].seq and after.seq == mine[resnap].seq + 1  # type: ignore[operator]
        finally:
            processor.stop()
            await asyncio.wait_for(run, 10)
            stop.set()
            await collectors
            await publisher.close()
            await nc.close()


def _storm_symbols(n: int) -> list[str]:
    letters = string.ascii_uppercase
    return [f"Q{letters[i // 26]}{letters[i % 26]}-USDT" for i in range(n)]


async def test_a_resync_storm_over_many_symbols_is_staggered_within_the_rest_budget(
    tmp_path: Path, nats_server
) -> None:
    """36 Binance spot books lose sync at once (the connection drops: a ``disconnected`` status per symbol). The
    processor queues 36 REST snapshots and sends them one at a time, ``stagger_s`` apart, within the venue's
    weight budget: no 429/418, every book resynced and equal to the simulator's."""
    venue_name, n, stagger = "binance_spot", 36, 0.05
    symbols = _storm_symbols(n)
    venue = VENUES[venue_name]
    weight = venue.snapshot_request("X").weight  # type: ignore[misc]
    cfg = SimConfig(mode="synthetic", venues=[venue_name], symbols=symbols, rate=4.0)
    async with SimServer(cfg, host="127.0.0.1", port=0) as sim:
        nc = await connect(nats_server.url)
        stop = asyncio.Event()
        collectors = asyncio.create_task(
            run_collectors(
                [CollectorSpec(venue_name, tuple(symbols), (DataType.DEPTH,))], nats_url=nats_server.url,
                data_dir=tmp_path, stop=stop, session_config=FAST, ws_bases={venue_name: sim.ws_base(venue_name)},
            )
        )  # fmt: skip
        snapshots: list[BookDelta] = []  # the REST snapshots as the processor published them (recv_ts: answer time)

        async def on_delta(msg) -> None:
            record = decode_subject(msg.subject, msg.data)
            if isinstance(record, BookDelta) and record.is_snapshot:
                snapshots.append(record)

        await nc.subscribe("md.book_delta.binance.spot.>", cb=on_delta)
        publisher = JetStreamPublisher(nc).start()
        processor = OrderBookProcessor(nc, publisher, rest_bases={venue_name: sim.rest_base(venue_name)},
                                       stagger_s=stagger, retry_after_s=8.0)  # fmt: skip
        run = asyncio.create_task(processor.run())
        keys = [("binance", "spot", s) for s in symbols]

        def synced() -> bool:
            return all(k in processor.books and processor.books[k].synced for k in keys)

        try:
            assert await wait_until(synced, 20)  # the first sync is a storm of its own (36 START requests)
            truth = sim.truth()["venues"][venue_name]
            assert truth["rest_requests"] == n  # one snapshot per book, no retries
            # Every book loses sync at once.
            t_fault = now_us()
            sim.set_faults(venue_name, Faults(disconnect_every_s=1.0))
            assert await wait_until(lambda: sim.truth()["venues"][venue_name]["disconnects_injected"] >= 1, 5)
            sim.set_faults(venue_name, Faults())
            assert await wait_until(
                lambda: all(processor.books[k].counters.resyncs.get("disconnect") for k in keys), 10
            )
            assert await wait_until(synced, 20)
            truth = sim.truth()["venues"][venue_name]
            for k in keys:
                machine = processor.books[k]
                assert machine.counters.resyncs.get("disconnect", 0) >= 1 and machine.counters.snapshots >= 2
                book = sim.book(venue_name, machine.instrument, machine.last_seq)
                assert book is not None and same_book(machine, book)
            client = processor._rest[venue_name]
            assert set(client.stats.by_status) == {200}  # never a 429 or 418
            assert client.stats.rate_limited == client.stats.banned == 0
            assert truth["rest_failures_injected"] == 0
            # The venue's count: the whole test is within one minute, so all its weight is within one window.
            assert truth["rest_requests"] == client.stats.requests >= 2 * n
            assert truth["rest_requests"] * weight <= venue.rest_limits.weight_per_minute
            # The storm's snapshots arrived one at a time, at least stagger_s apart, and every book got one.
            await asyncio.sleep(0.5)
            storm = sorted(d.recv_ts for d in snapshots if d.recv_ts > t_fault)
            assert len(storm) >= n and {d.symbol for d in snapshots if d.recv_ts > t_fault} == set(symbols)
            gaps_s = [(b - a) / 1e6 for a, b in itertools.pairwise(storm)]
            assert min(gaps_s) >= stagger * 0.9, min(gaps_s)
            # ...so the storm took at least (n - 1) staggers rather than bursting.
            assert (storm[-1] - storm[0]) / 1e6 >= (n - 1) * stagger * 0.9
        finally:
            processor.stop()
            await asyncio.wait_for(run, 10)
            stop.set()
            await collectors
            await publisher.close()
            await nc.close()
