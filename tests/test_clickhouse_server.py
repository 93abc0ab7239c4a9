"""The local ClickHouse server (chDB's HTTP listener): a real server, spoken to by a real clickhouse-connect."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import clickhouse_connect
import pyarrow as pa
import pytest
from clickhouse_connect.driver.client import Client

from marketprism.bus.server import free_port, port_is_free
from marketprism.store.clickhouse_server import ClickHouseServerError, LocalClickHouseServer


def _client(server: LocalClickHouseServer, **kwargs: object) -> Client:
    return clickhouse_connect.get_client(host=server.host, port=server.port, **kwargs)


def _gone(pid: int) -> bool:
    """True once ``pid`` has exited (a zombie waiting for a reaper counts as exited)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] == "Z"
    except FileNotFoundError:
        return True


def _trades(trade_ids: list[int], version: int) -> pa.Table:
    n = len(trade_ids)
    return pa.table(
        {
            "venue": pa.array(["binance"] * n),
            "symbol": pa.array(["BTC-USDT"] * n),
            "trade_id": pa.array(trade_ids, pa.uint64()),
            "ts": pa.array([1_700_000_000_000 + i for i in trade_ids], pa.timestamp("ms", tz="UTC")),
            "price": pa.array([50_000.0 + i for i in trade_ids], pa.float64()),
            "qty": pa.array([0.5] * n, pa.float64()),
            "version": pa.array([version] * n, pa.uint64()),
        }
    )


DEDUP_WINDOW = "SETTINGS non_replicated_deduplication_window = 100"
TRADES_DDL = """
CREATE TABLE {name} (
    venue LowCardinality(String), symbol String, trade_id UInt64, ts DateTime64(3, 'UTC'),
    price Float64, qty Float64, version UInt64
) ENGINE = {engine} ORDER BY (venue, symbol, trade_id) {settings}
"""


def test_serves_clickhouse_26_9_over_http(clickhouse_server: LocalClickHouseServer, clickhouse_client: Client) -> None:
    assert clickhouse_server.url == f"http://127.0.0.1:{clickhouse_server.port}"
    assert str(clickhouse_client.command("SELECT version()")).startswith("26.9")
    assert clickhouse_client.command("SELECT engine FROM system.databases WHERE name = currentDatabase()") == "Atomic"


def test_arrow_round_trip_through_replacing_merge_tree(clickhouse_client: Client) -> None:
    clickhouse_client.command(TRADES_DDL.format(name="trades", engine="ReplacingMergeTree(version)", settings=""))
    clickhouse_client.insert_arrow("trades", _trades([1, 2, 3], version=1))
    clickhouse_client.insert_arrow("trades", _trades([3, 4], version=2))  # trade 3 again, newer version

    got = clickhouse_client.query_arrow("SELECT * FROM trades FINAL ORDER BY trade_id")
    assert isinstance(got, pa.Table)
    assert got.column("trade_id").to_pylist() == [1, 2, 3, 4]
    assert got.column("version").to_pylist() == [1, 1, 2, 2]
    assert got.column("price").to_pylist() == [50_001.0, 50_002.0, 50_003.0, 50_004.0]
    assert got.column("ts").cast(pa.int64()).to_pylist() == [1_700_000_000_000 + i for i in (1, 2, 3, 4)]
    assert clickhouse_client.command("SELECT count() FROM trades") == 5  # before a merge, both versions are stored


def test_insert_deduplication_token_on_non_replicated_merge_tree(clickhouse_client: Client) -> None:
    """What the writer's exactly-once relies on: a retried insert with the same token is dropped, but only on a
    MergeTree with ``non_replicated_deduplication_window`` set (it is 0, i.e. off, by default)."""
    clickhouse_client.command(TRADES_DDL.format(name="dedup", engine="MergeTree", settings=DEDUP_WINDOW))
    clickhouse_client.command(TRADES_DDL.format(name="plain", engine="MergeTree", settings=""))
    batch = _trades(list(range(1000)), version=1)
    for table in ("dedup", "plain"):
        for token in ("batch-1", "batch-1", "batch-2"):  # a retry of batch-1, then the same rows as batch-2
            clickhouse_client.insert_arrow(table, batch, settings={"insert_deduplication_token": token})
    assert clickhouse_client.command("SELECT count() FROM dedup") == 2000  # batch-1 once, batch-2 once
    assert clickhouse_client.command("SELECT count() FROM plain") == 3000  # no window: every insert lands

    # Without a token the window dedupes by the block's content hash: identical rows inserted again are dropped.
    clickhouse_client.insert_arrow("dedup", _trades([5000], version=1))
    clickhouse_client.insert_arrow("dedup", _trades([5000], version=1))
    assert clickhouse_client.command("SELECT count() FROM dedup WHERE trade_id = 5000") == 1


def test_a_taken_port_is_a_clear_error(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        server = LocalClickHouseServer(tmp_path / "ch", port=port)
        with pytest.raises(ClickHouseServerError, match=f"127.0.0.1:{port} is already in use"):
            server.start()
        assert server.proc is None
        # the server process says so too, when started by hand
        run = subprocess.run(
            [sys.executable, "-m", "marketprism.store.clickhouse_server", "--http-port", str(port)],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert run.returncode == 2
        assert f"127.0.0.1:{port} is already in use" in run.stderr


def test_loopback_only() -> None:
    with pytest.raises(ClickHouseServerError, match="loopback only"):
        LocalClickHouseServer(host="0.0.0.0")


def test_stop_ends_the_process_and_cleans_up() -> None:
    server = LocalClickHouseServer()  # no data dir: a temporary one, removed on stop
    with server:
        proc, log_path = server.proc, server.log_path
        assert proc is not None and log_path is not None
        client = _client(server)
        assert client.command("SELECT 1") == 1  # and the client's keep-alive connection stays open
        started = time.monotonic()
    stopped_in = time.monotonic() - started
    assert proc.returncode == 0  # a graceful stop: the server ended its listener query and exited by itself
    assert stopped_in < 10
    assert server.proc is None
    assert not log_path.parent.exists()
    assert port_is_free(server.host, server.port)
    server.stop()  # idempotent


def test_a_second_server_on_the_same_data_dir_fails_with_the_log_tail(tmp_path: Path) -> None:
    with LocalClickHouseServer(tmp_path / "ch"):
        second = LocalClickHouseServer(tmp_path / "ch")
        with pytest.raises(ClickHouseServerError, match="exited with 1 while starting") as err:
            second.start()
        assert "Another server instance in same directory is already running" in str(err.value)
        assert second.proc is None


def test_restart_on_the_same_data_dir_keeps_tables_rows_and_dedup_state(tmp_path: Path) -> None:
    data_dir = tmp_path / "ch"
    server = LocalClickHouseServer(data_dir)
    with server:
        client = _client(server)
        client.command("CREATE DATABASE md")
        client.command(TRADES_DDL.format(name="md.trades", engine="MergeTree", settings=DEDUP_WINDOW))
        client.insert_arrow("md.trades", _trades([1, 2, 3], version=1), settings={"insert_deduplication_token": "b1"})
        client.close()
    server.port = free_port()  # a new port, the same data
    with server:
        client = _client(server)
        assert client.command("SELECT engine FROM system.databases WHERE name = 'md'") == "Atomic"
        rows = client.query_arrow("SELECT trade_id FROM md.trades ORDER BY trade_id")
        assert rows.column(0).to_pylist() == [1, 2, 3]
        # the dedup log is persisted with the table: a retry after a restart is still dropped
        client.insert_arrow("md.trades", _trades([1, 2, 3], version=1), settings={"insert_deduplication_token": "b1"})
        assert client.command("SELECT count() FROM md.trades") == 3
        client.close()
    assert (data_dir / "clickhouse-server.log").read_text().count("clickhouse-server ready") == 2


def test_the_server_dies_with_its_parent(tmp_path: Path) -> None:
    code = (
        "import sys, time\n"
        "from marketprism.store.clickhouse_server import LocalClickHouseServer\n"
        f"server = LocalClickHouseServer({str(tmp_path / 'ch')!r}).start()\n"
        "print(server.proc.pid, server.port, flush=True)\n"
        "time.sleep(120)\n"
    )
    parent = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    pid = 0
    try:
        assert parent.stdout is not None
        pid, port = (int(x) for x in parent.stdout.readline().split())
        parent.kill()  # SIGKILL: none of the parent's cleanup runs
        parent.wait()
        deadline = time.monotonic() + 20
        while not _gone(pid) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert _gone(pid)
        assert port_is_free("127.0.0.1", port)
    finally:
        parent.kill()
        parent.wait()
        if pid and not _gone(pid):
            os.kill(pid, signal.SIGKILL)
