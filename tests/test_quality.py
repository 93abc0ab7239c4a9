"""Data quality end to end: simulator -> collectors -> real nats-server -> order-book processor -> real storage writer
-> real DuckDB, then the GX checkpoint (marketprism.quality) and the data-quality flow under a real Prefect server.

Faults the simulator injects on the wire are caught through the real path (dropped trades, a stalled feed). Faults
the real path never lets through are injected into the stored rows, and each test says so: the writer stores a
natural key once (duplicates), the processor never publishes a crossed book, no venue sends a negative price.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import duckdb
import pytest

from marketprism.bus.publisher import JetStreamPublisher, connect
from marketprism.bus.server import LocalNatsServer
from marketprism.processor import OrderBookProcessor
from marketprism.quality import QualityReport, Rules, arun_quality, run_quality
from marketprism.quality.suites import DERIVED_SUITES, ROW_SUITES
from marketprism.records import DataType
from marketprism.runner import CollectorSpec, run_collectors
from marketprism.sim import Faults, SimConfig, SimServer
from marketprism.store.duck import DuckDBStore
from marketprism.store.schema import table_spec
from marketprism.store.writer import StorageWriter
from marketprism.stream.session import SessionConfig

ROOT = Path(__file__).resolve().parents[1]
FAST = SessionConfig(stall_timeout_s=3.0, backoff_initial_s=0.05, backoff_max_s=0.5)
VENUES = ("binance_spot", "okx_swap")
SYMBOLS = ("BTC-USDT", "ETH-USDT")
FEEDS = [(ex, mk, dt) for ex, mk in (("binance", "spot"), ("okx", "perpetual")) for dt in ("trade", "depth", "ticker")]
RELAXED = Rules(freshness_s={"trade": 30.0, "depth": 30.0, "ticker": 30.0})
WINDOW = timedelta(minutes=30)


async def wait_until(predicate: Callable[[], bool], timeout_s: float, step: float = 0.05) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if predicate():
            return True
        await asyncio.sleep(step)
    return predicate()


@dataclass
class Run:
    hot: Path
    end: datetime  # when the pipeline stopped: the checks' "now" (freshness is judged against it)
    truth: dict[str, Any]
    during: Any = None  # what the ``during`` callback returned


async def pipeline(
    tmp: Path,
    nats_url: str,
    seconds: float,
    during: Callable[[SimServer, DuckDBStore], Awaitable[Any]] | None = None,
) -> Run:
    """The real path for ``seconds`` (after every book synced), ``during`` runs in the middle of it."""
    cfg = SimConfig(mode="synthetic", venues=list(VENUES), symbols=list(SYMBOLS), rate=10.0)
    hot = tmp / "hot.duckdb"
    async with SimServer(cfg, host="127.0.0.1", port=0) as sim:
        nc = await connect(nats_url)
        stop = asyncio.Event()
        types = (DataType.TRADE, DataType.DEPTH, DataType.TICKER)
        collectors = asyncio.create_task(
            run_collectors([CollectorSpec(v, SYMBOLS, types) for v in VENUES], nats_url=nats_url, data_dir=tmp,
                           stop=stop, session_config=FAST, ws_bases={v: sim.ws_base(v) for v in VENUES})
        )  # fmt: skip
        publisher = JetStreamPublisher(nc).start()
        processor = OrderBookProcessor(nc, publisher, rest_bases={v: sim.rest_base(v) for v in VENUES}, top_n=10,
                                       stagger_s=0.05)  # fmt: skip
        proc_run = asyncio.create_task(processor.run())
        store = DuckDBStore(hot)
        writer = StorageWriter(nc, store, batch_rows=500, batch_seconds=0.2)
        write_run = asyncio.create_task(writer.run())
        result = None
        try:

            def synced() -> bool:
                symbols = processor.books.stats()["symbols"]
                return len(symbols) == 4 and all(s["state"] == "synced" for s in symbols.values())

            assert await wait_until(synced, 30)
            await asyncio.sleep(seconds / 2)
            if during is not None:
                result = await during(sim, store)
            await asyncio.sleep(seconds / 2)
            truth = sim.truth()
        finally:
            stop.set()
            await collectors
            processor.stop()
            await asyncio.wait_for(proc_run, 10)
            await publisher.close()
            await asyncio.sleep(1.0)  # the writer drains what the bus still holds
            writer.stop()
            await asyncio.wait_for(write_run, 30)
            store.close()
            await nc.close()
    return Run(hot, datetime.now(UTC), truth, result)


@pytest.fixture(scope="module")
def clean(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Run]:
    """One clean simulator run stored in DuckDB (the tests that inject faults copy the file)."""
    tmp = tmp_path_factory.mktemp("clean")
    server = LocalNatsServer(tmp / "nats").start()
    try:
        yield asyncio.run(pipeline(tmp, server.url, 6.0))
    finally:
        server.stop(kill=True)


def check(run: Run, hot: Path, docs: Path, rules: Rules = RELAXED) -> QualityReport:
    return run_quality(WINDOW, docs_path=docs, rules=rules, expected=FEEDS, duckdb_path=hot,
                       parquet_root=hot.parent / "cold", now=run.end + timedelta(seconds=1))  # fmt: skip


def injected(clean: Run, tmp: Path, *sql: str) -> Path:
    hot = tmp / "hot.duckdb"
    shutil.copy(clean.hot, hot)
    con = duckdb.connect(str(hot))
    for statement in sql:
        con.execute(statement)
    con.close()
    return hot


def critical_checks(report: QualityReport) -> set[tuple[str, str]]:
    return {(f.suite, f.check) for f in report.critical_failures}


# --- clean data ---------------------------------------------------------------------------------------------------


def test_clean_simulator_data_passes_every_suite_and_the_data_docs_hold_them_all(clean: Run, tmp_path: Path) -> None:
    report = check(clean, clean.hot, tmp_path / "gx")
    assert report.source == "attached"
    assert [s.name for s in report.suites] == [*ROW_SUITES, *DERIVED_SUITES]
    assert report.success, [(f.suite, f.check, f.examples) for f in report.failures]
    rows = {s.name: s.rows for s in report.suites}
    for table in ("trades", "depths", "tickers", "books", "book_deltas"):
        assert rows[table] > 50, rows  # the real path filled them
    assert rows["trade_continuity"] == 2  # the Binance symbols (contiguous trade ids)
    assert rows["book_delta_continuity"] == 4 and rows["freshness"] == len(FEEDS)
    # Data Docs: the index and one page per suite of this run, every suite named.
    index = Path(report.docs_index)
    assert index.is_file() and report.docs_url.startswith("file://")
    html = index.read_text()
    pages = list((index.parent / "validations").rglob("*.html"))
    assert len(pages) == len(report.suites)
    for suite in report.suites:
        assert suite.name in html
        assert any(suite.name in p.parts for p in pages), suite.name
    trades_page = "".join(p.read_text() for p in pages if "trades" in p.parts)
    assert "must be unique" in trades_page and "price" in trades_page  # the expectations, rendered


# --- faults through the real path ---------------------------------------------------------------------------------


def test_dropped_trades_fail_trade_id_continuity(tmp_path: Path, nats_server: LocalNatsServer) -> None:
    """The simulator drops every 7th Binance frame for 3 s: the missing trade ids are the trades it dropped."""

    async def drop(sim: SimServer, store: DuckDBStore) -> None:
        sim.set_faults("binance_spot", Faults(drop_every_n=7))
        await asyncio.sleep(3.0)
        sim.set_faults("binance_spot", Faults())

    run = asyncio.run(pipeline(tmp_path, nats_server.url, 4.0, during=drop))
    report = check(run, run.hot, tmp_path / "gx")
    assert ("trade_continuity", "trade_id_gap") in critical_checks(report)
    assert report.result == "failed"
    gaps = next(f for f in report.failures if f.check == "trade_id_gap")
    assert gaps.examples and all(e.startswith("binance:spot:") for e in gaps.examples)
    # The simulator's own count of dropped trade frames (one trade each on Binance @trade) = the ids missing.
    dropped = sum(i["trade"].get("dropped", 0)
                  for i in run.truth["venues"]["binance_spot"]["instruments"].values() if "trade" in i)  # fmt: skip
    con = duckdb.connect(str(run.hot), read_only=True)
    stored = con.execute("SELECT symbol, list(CAST(trade_id AS BIGINT) ORDER BY CAST(trade_id AS BIGINT)) "
                         "FROM trades WHERE exchange = 'binance' GROUP BY symbol").fetchall()  # fmt: skip
    con.close()
    missing = sum(ids[-1] - ids[0] + 1 - len(set(ids)) for _, ids in stored)
    assert dropped > 0 and missing == dropped
    assert sum(int(e.split("missing_trades=")[1]) for e in gaps.examples) == missing
    # Dropped depth frames made the processor resync: a warning, counted per symbol, never a broken link.
    assert ("book_delta_continuity", "book_delta_gap") not in critical_checks(report)


def test_a_stalled_feed_fails_freshness(tmp_path: Path, nats_server: LocalNatsServer) -> None:
    """The simulator stalls Binance for 10 s; 5 s into the stall the checkpoint runs against the running writer's
    store (in its process): Binance's feeds are stale, OKX's are not."""
    rules = Rules(freshness_s={"trade": 3.0, "depth": 3.0, "ticker": 3.0})

    async def stall(sim: SimServer, store: DuckDBStore) -> QualityReport:
        sim.set_faults("binance_spot", Faults(stall_s=10.0))
        await asyncio.sleep(5.0)
        return await arun_quality(timedelta(minutes=5), docs_path=tmp_path / "gx", rules=rules, expected=FEEDS,
                                  store=store, parquet_root=tmp_path / "cold")  # fmt: skip

    run = asyncio.run(pipeline(tmp_path, nats_server.url, 2.0, during=stall))
    report: QualityReport = run.during
    assert report.source == "in-process"
    stale = [f for f in report.critical_failures if f.check == "feed_stale"]
    assert stale, report.failures
    assert stale[0].unexpected == 3  # binance spot trade, depth, ticker
    assert all(e.startswith("binance:spot:") for e in stale[0].examples)
    fresh = report.suite("freshness")
    assert fresh.rows == len(FEEDS)


# --- faults the real path never produces: injected into the stored rows ----------------------------------------------

INJECTIONS = {
    # The writer stores a natural key once (anti-join on key): duplicates are copied in behind its back.
    "duplicates": (["INSERT INTO trades SELECT * FROM trades LIMIT 3"], {("trades", "duplicate_key")}),
    # The processor never publishes a crossed book: the best bid of 2 stored books is moved above their best ask.
    "crossed_book": ([
        "UPDATE books SET bids = list_prepend([CAST(CAST(asks[1][1] AS DOUBLE) * 1.01 AS VARCHAR), '1'], bids[2:]) "
        "WHERE key IN (SELECT key FROM books ORDER BY ts LIMIT 2)"], {("books", "book_crossed")}),
    # No venue sends a negative price: one stored trade gets one.
    "negative_price": (["UPDATE trades SET price = '-1.5' WHERE key = (SELECT min(key) FROM trades)"],
                       {("trades", "positive_values")}),
    # A funding rate far outside any venue's cap (0.5 per interval), next to a sane one.
    "funding_out_of_bounds": ([
        table_spec("funding_rate").duckdb_ddl(),  # the writer makes a table when it first stores that type
        "INSERT INTO funding_rates (exchange, market, symbol, instrument, ts, recv_ts, funding_rate, funding_time, "
        "mark_price, key) SELECT 'binance', 'perpetual', 'BTC-USDT', 'BTCUSDT', ts, recv_ts, r, NULL, '61000.1', "
        "'funding_rate:binance:perpetual:BTC-USDT:' || r FROM (SELECT max(ts) AS ts, max(recv_ts) AS recv_ts FROM "
        "trades), (VALUES ('0.0001'), ('0.5')) v(r)"], {("funding_rates", "funding_bounds")}),
}  # fmt: skip


@pytest.mark.parametrize("fault", list(INJECTIONS))
def test_each_injected_fault_is_caught_by_the_expectation_that_names_it(clean: Run, tmp_path: Path,
                                                                         fault: str) -> None:  # fmt: skip
    sql, expected = INJECTIONS[fault]
    report = check(clean, injected(clean, tmp_path, *sql), tmp_path / "gx")
    assert critical_checks(report) == expected, [(f.suite, f.check, f.examples) for f in report.failures]
    assert report.result == "failed"
    failure = next(f for f in report.critical_failures if (f.suite, f.check) in expected)
    assert failure.examples  # the report names the rows
    if fault == "crossed_book":
        assert failure.unexpected == 2 and all(e.startswith("book:") for e in failure.examples)


# --- the flow under Prefect -------------------------------------------------------------------------------------

WRITER = """
import asyncio, signal, sys
from marketprism.bus.publisher import connect
from marketprism.store.duck import DuckDBStore
from marketprism.store.schema import table_spec
from marketprism.store.writer import StorageWriter

async def main():
    nc = await connect(sys.argv[1])
    store = DuckDBStore(sys.argv[2])
    writer = StorageWriter(nc, store)
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, writer.stop)
    task = asyncio.create_task(writer.run())
    await asyncio.sleep(0.5)
    print("ready", flush=True)
    await task
    store.close()
    await nc.close()

asyncio.run(main())
"""


def _artifacts(keys: list[str], flow_run_id: Any = None) -> dict[str, Any]:
    """The artifacts of ``keys`` written by ``flow_run_id`` (other tests share the Prefect server and the keys)."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId, ArtifactFilterKey

    async def read() -> dict[str, Any]:
        flt = ArtifactFilter(key=ArtifactFilterKey(any_=keys))
        if flow_run_id is not None:
            flt.flow_run_id = ArtifactFilterFlowRunId(any_=[flow_run_id])
        async with get_client() as client:
            arts = await client.read_artifacts(artifact_filter=flt)
        return {a.key: a for a in arts}

    return asyncio.run(read())


def test_flow_reads_through_the_running_writer_publishes_artifacts_and_metrics(
    prefect_api: str, clean: Run, tmp_path: Path, nats_server: LocalNatsServer
) -> None:
    """The writer (another process) holds the DuckDB file: the flow's queries run inside it, over NATS."""
    from prometheus_client import REGISTRY

    from flows.quality import data_quality

    hot = injected(clean, tmp_path)
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen([sys.executable, "-c", WRITER, nats_server.url, str(hot)], stdout=subprocess.PIPE,
                            env=env, cwd=ROOT, text=True)  # fmt: skip
    try:
        assert proc.stdout is not None and proc.stdout.readline().strip() == "ready"
        before = REGISTRY.get_sample_value("marketprism_quality_runs_total", {"result": "passed"}) or 0.0
        state = asyncio.run(data_quality(
            window_minutes=24 * 60, nats_url=nats_server.url, duckdb_path=str(hot), parquet_root=str(tmp_path / "cold"),
            data_docs_path=str(tmp_path / "gx"), venues=list(VENUES),
            freshness_s={"trade": 86400.0, "depth": 86400.0, "ticker": 86400.0}, return_state=True,
        ))  # fmt: skip
    finally:
        proc.terminate()
        proc.wait(30)
    assert state.is_completed(), state
    result = state.result()
    assert result["result"] == "passed" and result["source"] == "writer"
    assert result["suites"]["trades"]["rows"] > 50
    arts = _artifacts(["data-quality", "data-quality-docs"], state.state_details.flow_run_id)
    assert "| trades |" in arts["data-quality"].data and "passed" in arts["data-quality"].data
    link = arts["data-quality-docs"].data  # Prefect stores a link artifact as markdown: [text](link)
    assert link == f"[GX Data Docs]({result['docs_url']})" and result["docs_url"].endswith("index.html")
    assert (REGISTRY.get_sample_value("marketprism_quality_runs_total", {"result": "passed"}) or 0.0) == before + 1
    assert (
        REGISTRY.get_sample_value("marketprism_quality_checked_records", {"suite": "trades"})
        == (result["suites"]["trades"]["rows"])
    )
    assert REGISTRY.get_sample_value("marketprism_quality_failed_expectations",
                                     {"suite": "books", "severity": "critical"}) == 0  # fmt: skip


def test_a_failing_checkpoint_marks_the_flow_run_failed_with_readable_artifacts(
    prefect_api: str, clean: Run, tmp_path: Path
) -> None:
    """A crossed book injected into the stored rows (see INJECTIONS): the run ends Failed, the artifacts say why."""
    from prometheus_client import REGISTRY

    from flows.quality import data_quality

    hot = injected(clean, tmp_path, *INJECTIONS["crossed_book"][0])
    state = asyncio.run(data_quality(
        window_minutes=24 * 60, nats_url="nats://127.0.0.1:1", duckdb_path=str(hot),
        parquet_root=str(tmp_path / "cold"), data_docs_path=str(tmp_path / "gx"), venues=list(VENUES),
        freshness_s={"trade": 86400.0, "depth": 86400.0, "ticker": 86400.0}, return_state=True,
    ))  # fmt: skip
    assert state.is_failed(), state
    assert "book_crossed" in str(state.message) or "book_crossed" in repr(state.data)

    async def run_state() -> str:
        from prefect.client.orchestration import get_client

        async with get_client() as client:
            run = await client.read_flow_run(state.state_details.flow_run_id)
        return str(run.state_type.value)

    assert asyncio.run(run_state()) == "FAILED"
    arts = _artifacts(["data-quality"], state.state_details.flow_run_id)
    markdown = arts["data-quality"].data
    assert "failed" in markdown and "| books | book_crossed | critical |" in markdown
    assert REGISTRY.get_sample_value("marketprism_quality_failed_expectations",
                                     {"suite": "books", "severity": "critical"}) == 1  # fmt: skip
    crossed = {"suite": "books", "check": "book_crossed", "severity": "critical"}
    assert REGISTRY.get_sample_value("marketprism_quality_unexpected_records", crossed) == 2


def test_cli_quality_prints_a_summary_and_exits_1_on_a_critical_failure(clean: Run, tmp_path: Path) -> None:
    hot = injected(clean, tmp_path, *INJECTIONS["duplicates"][0])
    env = {**os.environ, "PYTHONPATH": str(ROOT), "MARKETPRISM_QUALITY__FRESHNESS_S": "trade=86400,depth=86400"}
    cmd = [sys.executable, "-m", "marketprism.cli", "quality", "--since", "1d", "--duckdb", str(hot),
           "--parquet-root", str(tmp_path / "cold"), "--docs", str(tmp_path / "gx"), "--venues", ",".join(VENUES),
           "--nats", "nats://127.0.0.1:1"]  # fmt: skip
    done = subprocess.run(cmd, capture_output=True, text=True, env={**env, "COLUMNS": "200"}, cwd=ROOT, timeout=240)
    assert done.returncode == 1, done.stdout + done.stderr
    assert "duplicate_key" in done.stdout and "trades" in done.stdout and "failed" in done.stdout
    assert (tmp_path / "gx" / "uncommitted" / "data_docs" / "local_site" / "index.html").is_file()
