"""The order-book processor end to end: sim -> collectors -> JetStream -> processor -> book/book_delta on the bus."""

from __future__ import annotations

import asyncio
from pathlib import Path

from marketprism.book.records import Book
from marketprism.bus.codec import decode_subject
from marketprism.bus.publisher import JetStreamPublisher, connect
from marketprism.processor import OrderBookProcessor
from marketprism.records import DataType
from marketprism.runner import CollectorSpec, run_collectors
from marketprism.sim import Faults, SimConfig, SimServer
from marketprism.stream.session import SessionConfig
from tests.test_collectors import wait_until

FAST = SessionConfig(stall_timeout_s=3.0, backoff_initial_s=0.05, backoff_max_s=0.5)
VENUES = ("binance_spot", "okx_swap")


async def test_books_sync_resync_one_venue_on_faults_and_match_the_true_book(tmp_path: Path, nats_server) -> None:
    cfg = SimConfig(mode="synthetic", venues=list(VENUES), symbols=["BTC-USDT", "ETH-USDT"], rate=20.0)
    async with SimServer(cfg, host="127.0.0.1", port=0) as sim:
        nc = await connect(nats_server.url)
        stop = asyncio.Event()
        collectors = asyncio.create_task(
            run_collectors(
                [CollectorSpec(v, ("BTC-USDT", "ETH-USDT"), (DataType.DEPTH,)) for v in VENUES],
                nats_url=nats_server.url, data_dir=tmp_path, stop=stop, session_config=FAST,
                ws_bases={v: sim.ws_base(v) for v in VENUES},
            )
        )  # fmt: skip
        books: list[Book] = []

        async def on_book(msg) -> None:
            record = decode_subject(msg.subject, msg.data)
            assert isinstance(record, Book)
            books.append(record)

        await nc.subscribe("md.book.>", cb=on_book)
        publisher = JetStreamPublisher(nc).start()
        processor = OrderBookProcessor(nc, publisher, rest_bases={v: sim.rest_base(v) for v in VENUES}, top_n=10,
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
