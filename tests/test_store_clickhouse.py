"""The ClickHouse hot store against a real ClickHouse 26.9 server (chDB's HTTP interface, see conftest)."""

from __future__ import annotations

import uuid
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from marketprism.records import RECORD_TYPES
from marketprism.store.clickhouse import ClickHouseStore
from marketprism.store.schema import table_spec
from marketprism.store.writer import StorageWriter
from tests.store_util import encoded, records
from tests.test_store import publish, run_writer, trade
from tests.test_store_crash import crash_while_collecting, stored_by_subject


@pytest.fixture
def ch_store(clickhouse_server):
    store = ClickHouseStore(f"{clickhouse_server.url}/mp_{uuid.uuid4().hex[:10]}")
    try:
        yield store
    finally:
        store.client.command(f"DROP DATABASE IF EXISTS `{store.database}`")
        store.close()


def test_a_bad_url_is_refused_with_its_shape() -> None:
    with pytest.raises(ValueError, match="http"):
        ClickHouseStore("ftp://somewhere")


@pytest.mark.parametrize("data_type", sorted(map(str, RECORD_TYPES)))
def test_every_field_round_trips_through_clickhouse(ch_store: ClickHouseStore, data_type: str) -> None:
    spec = table_spec(data_type)

    @settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
    @given(st.lists(records(spec), min_size=1, max_size=10))
    def round_trip(recs: list) -> None:
        ch_store.client.command(f"DROP TABLE IF EXISTS `{spec.table}`")
        ch_store._tables.discard(spec.table)
        keys = [f"k{i:03d}" for i in range(len(recs))]
        ch_store.commit([(spec, spec.frame([encoded(r) for r in recs], keys))], "test", 1, 1)
        back = spec.rows_to_records(ch_store.query(f"SELECT * FROM `{spec.table}` FINAL ORDER BY key"))
        assert [encoded(r) for r in back] == [encoded(r) for r in recs]

    round_trip()


def test_a_batch_retried_after_a_crash_is_stored_once(ch_store: ClickHouseStore) -> None:
    """The batch reached ClickHouse but the commit mark did not: resume says so, and the same batch again (same
    stream range, so the same token) is dropped by the server: no duplicate even without FINAL."""
    spec = table_spec("trade")
    recs = [trade(i) for i in range(100)]
    frame = spec.frame([encoded(r) for r in recs], [r.natural_key() for r in recs])
    ch_store.commit([(spec, frame.head(40))], "w", 40, 1)
    assert ch_store.resume("w") == (40, None)
    ch_store._mark("w", 41, 100, committed=0)  # crashed after this mark...
    ch_store.client.insert_arrow("trades", frame.slice(40).to_arrow(),
                                 settings={"insert_deduplication_token": "w:41:100:trades"})  # fmt: skip
    assert ch_store.resume("w") == (40, 100)  # ...and after the insert: re-form 41..100
    ch_store.commit([(spec, frame.slice(40))], "w", 100, 41)
    assert ch_store.resume("w") == (100, None)
    assert ch_store.client.command("SELECT count() FROM trades") == 100  # not FINAL: really once
    assert ch_store.count("trades") == 100 and ch_store.tables() == ["trades"]


async def test_writer_into_clickhouse_resumes_a_crashed_batch_exactly(ch_store: ClickHouseStore, nats_client) -> None:
    await publish(nats_client, [trade(i) for i in range(1000)])
    ch_store._mark("storage_writer", 1, 300, committed=0)  # a run that crashed in the middle of batch 1..300
    spec = table_spec("trade")
    early = [trade(i) for i in range(300)]
    ch_store.ensure_tables([spec])
    early_rows = spec.frame([encoded(r) for r in early], [r.natural_key() for r in early]).to_arrow()
    token = {"insert_deduplication_token": "storage_writer:1:300:trades"}
    ch_store.client.insert_arrow("trades", early_rows, settings=token)
    w = StorageWriter(nats_client, ch_store, batch_rows=128, batch_seconds=0.2)
    await run_writer(w, lambda: w.stats.position == 1000)
    assert ch_store.client.command("SELECT count() FROM trades") == 1000
    assert ch_store.client.command("SELECT uniqExact(key) FROM trades") == 1000
    assert ch_store.resume("storage_writer") == (1000, None)


async def test_clickhouse_writer_killed_repeatedly_stores_exactly_the_ground_truth(
    tmp_path: Path, nats_server, clickhouse_server
) -> None:
    database = f"crash_{uuid.uuid4().hex[:8]}"
    url = f"{clickhouse_server.url}/{database}"
    want, report = await crash_while_collecting(tmp_path, nats_server.url, ["--backend", "clickhouse",
                                                                            "--clickhouse", url])  # fmt: skip
    store = ClickHouseStore(url)
    rows = []
    for table in sorted(set(store.tables()) & {"trades", "depths", "tickers"}):
        # Without FINAL: what is physically stored, so a duplicate would show.
        rows += store.client.query(
            f"SELECT '{table}', exchange, market, symbol, count() FROM {table} GROUP BY exchange, market, symbol"
        ).result_rows
        assert store.client.command(f"SELECT count() - uniqExact(key) FROM {table}") == 0, table
    store.client.command(f"DROP DATABASE `{database}`")
    store.close()
    assert stored_by_subject(rows) == want
    assert report["store_errors"] == 0
