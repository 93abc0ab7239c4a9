"""Storage: schemas from the record types, the DuckDB hot store, and the exactly-once writer on a real JetStream."""

from __future__ import annotations

import asyncio
from pathlib import Path

import duckdb
import msgspec
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from nats.js.api import ConsumerConfig, DeliverPolicy

from marketprism.bus.publisher import JetStreamPublisher, connect
from marketprism.bus.stream import MarketDataStream, ensure_stream
from marketprism.records import RECORD_TYPES, Trade
from marketprism.store.duck import DuckDBStore
from marketprism.store.schema import SchemaError, spec_for_type, table_spec
from marketprism.store.writer import DLQ_STREAM, StorageWriter, stream_seq
from tests.store_util import all_type_specs, encoded, records, wait_for


def trade(i: int, symbol: str = "BTC-USDT", ts: int | None = None) -> Trade:
    ts = ts if ts is not None else 1_723_161_255_000_000 + i
    return Trade(exchange="binance", market="spot", symbol=symbol, instrument=symbol.replace("-", ""), ts=ts,
                 recv_ts=ts + 500_000, trade_id=str(i), price="61837.63000000", size="0.00100000",
                 side="buy" if i % 2 else "sell")  # fmt: skip


# --- schemas ------------------------------------------------------------------------------------------------


def test_every_record_type_has_a_table_with_every_field_and_the_key() -> None:
    assert {s.table for s in all_type_specs()} >= {"trades", "depths", "tickers", "statuses", "books", "book_deltas"}
    for spec in all_type_specs():
        fields = list(spec.record_type.__struct_fields__)
        assert spec.names == [*fields, "key"]
        assert spec.columns[spec.names.index("ts")].kind == "timestamp"
    with pytest.raises(KeyError, match="no record type 'nope'"):
        table_spec("nope")


def test_a_field_without_a_column_type_is_refused() -> None:
    class Odd(Trade, kw_only=True):
        extra: dict[str, int] | None = None

    with pytest.raises(SchemaError, match="extra"):
        spec_for_type(Odd)


def test_frame_refuses_payloads_missing_required_fields() -> None:
    spec = table_spec("trade")
    good = trade(1)
    with pytest.raises(ValueError, match="trade_id"):
        spec.frame([encoded(good), b'{"exchange":"binance","market":"spot","symbol":"X","instrument":"X","ts":1,'
                    b'"recv_ts":1,"price":"1","size":"1","side":"buy"}'], ["a", "b"])  # fmt: skip


@pytest.mark.parametrize("data_type", sorted(map(str, RECORD_TYPES)))
def test_every_field_round_trips_through_duckdb(tmp_path: Path, data_type: str) -> None:
    spec = table_spec(data_type)
    store = DuckDBStore(tmp_path / "hot.duckdb")

    @settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
    @given(st.lists(records(spec), min_size=1, max_size=20))
    def round_trip(recs: list) -> None:
        store.con.execute(f'DROP TABLE IF EXISTS "{spec.table}"')
        store._tables.discard(spec.table)
        keys = [f"k{i}" for i in range(len(recs))]  # distinct: the generated records may share natural keys
        store.commit([(spec, spec.frame([encoded(r) for r in recs], keys))], "test", 1)
        back = spec.rows_to_records(store.query(f'SELECT * FROM "{spec.table}" ORDER BY key'))
        by_key = dict(zip(keys, recs, strict=True))
        want = [by_key[k] for k in sorted(keys)]
        assert [encoded(r) for r in back] == [encoded(r) for r in want]

    round_trip()
    store.close()


# --- the DuckDB store ----------------------------------------------------------------------------------------


def test_duckdb_commit_is_atomic_with_the_position_and_drops_known_keys(tmp_path: Path) -> None:
    spec = table_spec("trade")
    recs = [trade(i) for i in range(100)]
    frame = spec.frame([encoded(r) for r in recs], [r.natural_key() for r in recs])
    with DuckDBStore(tmp_path / "hot.duckdb") as store:
        assert store.position("w") == 0
        assert store.commit([(spec, frame)], "w", 100) == 100
        assert store.commit([(spec, frame)], "w", 200) == 0  # the same records again: nothing new
        assert (store.count("trades"), store.position("w")) == (100, 200)
        # a failing insert leaves neither rows nor a new position
        bad = frame.with_columns(frame["price"].alias("ts"))
        with pytest.raises(duckdb.Error):
            store.commit([(spec, frame.head(0)), (spec, bad)], "w", 300)
        assert (store.count("trades"), store.position("w")) == (100, 200)
        assert store.tables() == ["trades"]
    with DuckDBStore(tmp_path / "hot.duckdb") as store:  # durable
        assert (store.count("trades"), store.position("w")) == (100, 200)


# --- the writer on a real JetStream --------------------------------------------------------------------------


async def publish(nc, recs: list) -> None:
    pub = JetStreamPublisher(nc, buffer_size=len(recs) + 1).start()
    for r in recs:
        pub.submit(r)
    await pub.flush(60)
    await pub.close()
    assert pub.stats.dropped == 0


async def run_writer(writer: StorageWriter, until, timeout_s: float = 30.0) -> None:
    task = asyncio.create_task(writer.run())
    try:
        assert await wait_for(lambda: until() or task.done(), timeout_s), writer.stats
        if task.done():
            task.result()  # the writer died: its exception is the test's failure
        assert until(), writer.stats
    finally:
        writer.stop()
        await task


def test_stream_seq_reads_both_ack_subject_forms() -> None:
    assert stream_seq("$JS.ACK.MARKET_DATA.w.1.42.40.1700000000.3") == 42
    assert stream_seq("$JS.ACK.dom.acchash.MARKET_DATA.w.1.42.40.1700000000.3.tok") == 42


async def test_writer_stores_every_record_once_and_resumes_from_its_position(tmp_path: Path, nats_client) -> None:
    recs = [trade(i) for i in range(3000)]
    await publish(nats_client, recs[:2000])
    store = DuckDBStore(tmp_path / "hot.duckdb")
    w1 = StorageWriter(nats_client, store, batch_rows=500, batch_seconds=0.2)
    await run_writer(w1, lambda: w1.stats.stored == 2000)
    assert w1.stats.batches >= 4 and w1.stats.position == 2000
    await publish(nats_client, recs[2000:])
    w2 = StorageWriter(nats_client, store, batch_rows=500, batch_seconds=0.2)  # a restart: same durable consumer
    await run_writer(w2, lambda: w2.stats.stored == 1000)
    assert store.count("trades") == 3000
    keys = store.query("SELECT count(DISTINCT key) AS n, min(trade_id::BIGINT) AS lo, max(trade_id::BIGINT) AS hi "
                       "FROM trades").row(0)  # fmt: skip
    assert keys == (3000, 0, 2999)
    info = await nats_client.jetstream().consumer_info("MARKET_DATA", "storage_writer")
    assert info.ack_floor.stream_seq == 3000 and info.num_pending == 0  # acked after the commit
    store.close()


async def test_a_replay_outside_the_duplicate_window_is_stored_once(tmp_path: Path, nats_server) -> None:
    nc = await connect(nats_server.url)
    await ensure_stream(nc.jetstream(), MarketDataStream(max_age_s=3600, max_bytes=1 << 30, duplicate_window_s=0.5))
    recs = [trade(i) for i in range(50)]
    await publish(nc, recs)
    await asyncio.sleep(1.0)  # the bus forgot the Msg-Ids
    await publish(nc, recs[:20])  # a collector replaying after a long outage
    store = DuckDBStore(tmp_path / "hot.duckdb")
    w = StorageWriter(nc, store, stream=MarketDataStream(max_age_s=3600, max_bytes=1 << 30, duplicate_window_s=0.5),
                      batch_rows=30, batch_seconds=0.2)  # fmt: skip
    await run_writer(w, lambda: w.stats.position == 70)
    assert store.count("trades") == 50 and w.stats.duplicates == 20
    store.close()
    await nc.close()


async def test_poisoned_messages_go_to_the_dead_letter_stream_with_their_reason(tmp_path: Path, nats_client) -> None:
    js = nats_client.jetstream()
    await publish(nats_client, [trade(i) for i in range(10)])
    await js.publish("md.trade.binance.spot.BTC-USDT", b'{"exchange":"binance"}')  # fields missing
    await js.publish("md.trade.binance.spot.BTC-USDT", b"not json")
    await js.publish("md.weather.binance.spot.BTC-USDT", encoded(trade(99)))  # no such data type
    await js.publish("md.trade.binance.spot.BTC-USDT", encoded(trade(10)))  # no Msg-Id: keyed from the record
    await publish(nats_client, [trade(i) for i in range(11, 20)])
    store = DuckDBStore(tmp_path / "hot.duckdb")
    w = StorageWriter(nats_client, store, batch_rows=100, batch_seconds=0.2)
    await run_writer(w, lambda: w.stats.position == 23)
    assert store.count("trades") == 20 and w.stats.dead_lettered == 3
    assert store.query("SELECT key FROM trades WHERE trade_id = '10'").item() == trade(10).natural_key()
    sub = await js.pull_subscribe(
        "mp.dlq.>", stream=DLQ_STREAM, config=ConsumerConfig(deliver_policy=DeliverPolicy.ALL)
    )
    dead = await sub.fetch(3, timeout=5)
    reasons = {m.subject: m.headers["MP-Reason"] for m in dead}
    assert set(reasons) == {"mp.dlq.md.trade.binance.spot.BTC-USDT", "mp.dlq.md.weather.binance.spot.BTC-USDT"}
    assert "unknown data type" in reasons["mp.dlq.md.weather.binance.spot.BTC-USDT"]
    assert all(m.headers["MP-Stream-Seq"] in {"11", "12", "13"} for m in dead)
    assert b"not json" in {m.data for m in dead}
    store.close()


class SlowStore(DuckDBStore):
    """A real DuckDB store whose commits take a while (a busy disk)."""

    delay_s = 0.5

    def commit(self, frames, consumer, last_seq, first_seq=0):  # type: ignore[no-untyped-def]
        import time

        time.sleep(self.delay_s)
        return super().commit(frames, consumer, last_seq, first_seq)


async def test_a_slow_store_holds_the_consumer_back_instead_of_filling_memory(tmp_path: Path, nats_client) -> None:
    await publish(nats_client, [trade(i) for i in range(20_000)])
    store = SlowStore(tmp_path / "hot.duckdb")
    w = StorageWriter(nats_client, store, batch_rows=1000, batch_seconds=0.1, max_ack_pending=2000)
    task = asyncio.create_task(w.run())
    js = nats_client.jetstream()
    peaks = []
    for _ in range(10):
        await asyncio.sleep(0.2)
        info = await js.consumer_info("MARKET_DATA", "storage_writer")
        peaks.append((info.num_ack_pending, len(w._buf)))
    assert max(p for p, _ in peaks) <= 2000 and max(b for _, b in peaks) <= 2000  # bounded by max_ack_pending
    store.delay_s = 0.0
    assert await wait_for(lambda: w.stats.position == 20_000, 30)
    w.stop()
    await task
    assert store.count("trades") == 20_000
    store.close()


async def test_store_errors_are_counted_and_retried_without_losing_the_batch(tmp_path: Path, nats_client) -> None:
    path = tmp_path / "hot.duckdb"
    con = duckdb.connect(str(path))
    con.execute("CREATE TABLE trades (exchange VARCHAR)")  # a table the writer cannot insert into
    con.close()
    await publish(nats_client, [trade(i) for i in range(100)])
    store = DuckDBStore(path)
    w = StorageWriter(nats_client, store, batch_rows=1000, batch_seconds=0.1)
    task = asyncio.create_task(w.run())
    assert await wait_for(lambda: w.stats.store_errors >= 2, 10)
    assert w.stats.stored == 0
    with store._lock:  # the operator fixes the table; the held batch goes in on the next try
        store.con.execute("DROP TABLE trades")
        store.con.execute(table_spec("trade").duckdb_ddl())
    assert await wait_for(lambda: w.stats.stored == 100, 30)
    w.stop()
    await task
    assert store.count("trades") == 100
    store.close()


def test_rows_to_records_gives_back_records() -> None:
    spec = table_spec("trade")
    recs = [trade(i) for i in range(3)]
    df = spec.frame([encoded(r) for r in recs], [r.natural_key() for r in recs])
    assert spec.rows_to_records(df) == recs
    assert msgspec.json.encode(recs) == msgspec.json.encode(spec.rows_to_records(df))


async def test_writer_metrics_count_stored_duplicates_and_dead_letters(tmp_path: Path, nats_client) -> None:
    from prometheus_client import REGISTRY

    def value(name: str, **labels: str) -> float:
        return REGISTRY.get_sample_value(name, labels) or 0.0

    before = (value("marketprism_storage_records_total", data_type="trade"),
              value("marketprism_storage_dead_lettered_total", reason="ValidationError"))  # fmt: skip
    await publish(nats_client, [trade(i) for i in range(40)])
    await nats_client.jetstream().publish("md.trade.binance.spot.BTC-USDT", b'{"exchange":"binance"}')
    store = DuckDBStore(tmp_path / "hot.duckdb")
    w = StorageWriter(nats_client, store, batch_rows=100, batch_seconds=0.1)
    await run_writer(w, lambda: w.stats.position == 41)
    store.close()
    assert value("marketprism_storage_records_total", data_type="trade") - before[0] == 40
    assert value("marketprism_storage_dead_lettered_total", reason="ValidationError") - before[1] == 1
    assert value("marketprism_storage_lag_records") == 0
    assert value("marketprism_errors_total", component="storage", kind="bad_data", code="DEAD_LETTERED") >= 1


class SlowReader(StorageWriter):
    """A writer whose event loop falls behind (a long GC pause, a busy core): it stops reading its socket."""

    stall_s = 0.002

    async def _on_message(self, msg) -> None:  # type: ignore[no-untyped-def]  # the nats-py delivery path
        import time

        if self.stats.received < 3000:
            time.sleep(self.stall_s)  # blocks the loop: the server's buffer for this client fills up
        await super()._on_message(msg)

    def _on_deliveries(self, items) -> None:  # type: ignore[no-untyped-def]  # the lean path: one read at a time
        import time

        if self.stats.received < 3000:
            time.sleep(self.stall_s * len(items))
        super()._on_deliveries(items)


@pytest.mark.parametrize("fast", [True, False], ids=["lean", "nats-py"])
async def test_a_slow_consumer_cut_by_the_server_loses_nothing(tmp_path: Path, fast: bool) -> None:
    """nats-server cuts a client whose unread data passes ``max_pending`` and drops what it held for it; the
    writer sees the jump in the consumer sequence, stores what came before, and restarts the consumer right after
    it, instead of acking past the lost deliveries."""
    from marketprism.bus.server import LocalNatsServer

    server = LocalNatsServer(tmp_path / "nats", config="max_pending: 512KB\nmax_payload: 256KB\n").start()
    try:
        nc = await connect(server.url)
        await ensure_stream(nc.jetstream(), MarketDataStream(max_age_s=3600, max_bytes=1 << 30))
        await publish(nc, [trade(i) for i in range(15_000)])
        store = DuckDBStore(tmp_path / "hot.duckdb")
        w = SlowReader(nc, store, batch_rows=500, batch_seconds=0.1, max_ack_pending=15_000, fast_delivery=fast)
        await run_writer(w, lambda: w.stats.position == 15_000, timeout_s=90)
        assert store.count("trades") == 15_000
        assert store.query("SELECT count(DISTINCT key) AS n FROM trades")["n"][0] == 15_000
        assert w.stats.delivery_gaps >= 1  # the cut happened, and was recovered from
        store.close()
        await nc.close()
    finally:
        server.stop(kill=True)
    assert "Slow Consumer" in (tmp_path / "nats" / "nats-server.log").read_text()
