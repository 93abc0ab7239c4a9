"""`marketprism up --source sim` as a user runs it: a real process, a real Prefect server, SIGTERM midway."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from marketprism.bus.publisher import connect
from marketprism.bus.server import LocalNatsServer, free_port
from tests.test_bus import stream_messages

ROOT = Path(__file__).resolve().parents[1]


def final_report(out: str) -> dict:
    """The JSON report `up` prints last (flow-run processes may still log a line after it)."""
    report, _ = json.JSONDecoder().raw_decode(out[out.rindex('{\n  "flow_runs"') :])
    return report


def _trades_stored(url: str) -> int:
    async def count() -> int:
        nc = await connect(url)
        try:
            # Trades only: the scheduled pulls publish hundreds of records at start, the collectors' count is wanted
            info = await nc.jetstream().stream_info("MARKET_DATA", subjects_filter="md.trade.>")
            return sum((info.state.subjects or {}).values())
        except Exception:
            return 0
        finally:
            await nc.close()

    return asyncio.run(count())


PULLED = ("long_short_ratio", "open_interest", "funding_rate", "volatility_index")


def _subject_count(url: str, data_types: tuple[str, ...]) -> dict[str, int]:
    """Messages in the market-data stream per data type (by subject filter)."""

    async def count() -> dict[str, int]:
        nc = await connect(url)
        try:
            js = nc.jetstream()
            out = {}
            for dt in data_types:
                info = await js.stream_info("MARKET_DATA", subjects_filter=f"md.{dt}.>")
                out[dt] = sum((info.state.subjects or {}).values())
            return out
        finally:
            await nc.close()

    return asyncio.run(count())


def test_up_runs_the_stack_under_prefect_and_stops_cleanly_on_sigterm(
    tmp_path: Path, nats_server: LocalNatsServer, prefect_api: str
) -> None:
    metrics_port = free_port()
    env = {**os.environ, "PREFECT_API_URL": prefect_api, "PREFECT_SERVER_ANALYTICS_ENABLED": "false"}
    cmd = [sys.executable, "-m", "marketprism.cli", "up", "--source", "sim", "--duration", "120",
           "--venues", "binance_spot,okx_swap", "--nats-url", nats_server.url, "--data-dir", str(tmp_path / "data"),
           "--metrics-port", str(metrics_port)]  # fmt: skip
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True)  # fmt: skip
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and _trades_stored(nats_server.url) < 200:
            assert proc.poll() is None, proc.stdout.read() if proc.stdout else ""
            time.sleep(1)
        assert _trades_stored(nats_server.url) >= 200, "no records reached JetStream"
        time.sleep(3)  # let the collector processes write metrics
        metrics = urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=5).read().decode()
        records = [line for line in metrics.splitlines() if line.startswith("marketprism_collector_records_total{")]
        assert any('exchange="binance"' in line for line in records), metrics[:2000]
        assert any('exchange="okx"' in line for line in records)
        assert sum(float(line.rsplit(" ", 1)[1]) for line in records) >= 200
        # The scheduled REST pulls run once at start: a fresh stack has every pulled data type within a minute.
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and not all(_subject_count(nats_server.url, PULLED).values()):
            time.sleep(1)
        pulled = _subject_count(nats_server.url, PULLED)
        assert all(pulled.values()), pulled
        proc.send_signal(signal.SIGTERM)  # midway through --duration 120
        out, _ = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)  # `up` and the services it started
    assert proc.returncode == 0, out[-3000:]
    assert "MarketPrism is up: Prefect UI" in out
    report = final_report(out)
    assert len(report["flow_runs"]) >= 4  # two collectors, the book processor and the storage writer
    assert set(report["flow_runs"].values()) <= {"COMPLETED", "CANCELLED"}, report["flow_runs"]

    async def check_api() -> None:
        from prefect.client.orchestration import get_client
        from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey, FlowFilter, FlowFilterName

        async with get_client() as client:
            runs = await client.read_flow_runs(flow_filter=FlowFilter(name=FlowFilterName(any_=["collector"])))
            assert runs and not [r.name for r in runs if r.state_type.value in ("RUNNING", "PENDING")]
            arts = await client.read_artifacts(
                artifact_filter=ArtifactFilter(
                    key=ArtifactFilterKey(any_=["collector-binance-spot", "collector-okx-swap"])
                )
            )
            assert {a.key for a in arts} == {"collector-binance-spot", "collector-okx-swap"}

        nc = await connect(nats_server.url)
        try:
            trades = await stream_messages(nc, "md.trade.>")
            books = await stream_messages(nc, "md.book.>")
        finally:
            await nc.close()
        assert {m.subject.split(".")[2] for m in trades} == {"binance", "okx"}
        assert {m.subject.split(".")[2] for m in books} == {"binance", "okx"}  # the book processor ran too

    asyncio.run(check_api())


def test_up_embedded_defaults_start_their_own_prefect_server_and_bus(tmp_path: Path) -> None:
    """The README's run command as is: no PREFECT_API_URL, no NATS URL: `up` starts both under --data-dir."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PREFECT_API", "MARKETPRISM_NATS"))}
    env["PREFECT_SERVER_ANALYTICS_ENABLED"] = "false"
    data = tmp_path / "data"
    cmd = [sys.executable, "-m", "marketprism.cli", "up", "--source", "sim", "--duration", "40",
           "--venues", "bybit_linear", "--data-dir", str(data)]  # fmt: skip
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True)  # fmt: skip
    lines: list[str] = []
    try:
        assert proc.stdout is not None
        for line in proc.stdout:  # the first line names the URLs
            lines.append(line)
            if "MarketPrism is up" in line:
                break
        ui = lines[-1].split("Prefect UI ", 1)[1].split()[0]
        running: list = []
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and not running:
            body = json.dumps({"flow_runs": {"state": {"type": {"any_": ["RUNNING"]}}}}).encode()
            req = urllib.request.Request(f"{ui}/api/flow_runs/filter", data=body,
                                         headers={"Content-Type": "application/json"})  # fmt: skip
            running = json.loads(urllib.request.urlopen(req, timeout=5).read())
            time.sleep(1)
        assert running, "no collector flow run is Running in the embedded Prefect server"
        out = "".join(lines) + proc.stdout.read()
        proc.wait(timeout=120)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)  # `up` and the services it started
    assert proc.returncode == 0, out[-3000:]
    report = final_report(out)
    # the collector, the book processor, the storage writer and the scheduled REST pulls (run once at start)
    # The long-running flows (collector, book processor, storage writer) end Completed; a scheduled pull or check
    # still starting when `up` stops is cancelled, which is how a stop ends it.
    states = list(report["flow_runs"].values())
    assert set(states) <= {"COMPLETED", "CANCELLED"} and states.count("COMPLETED") >= 3, report["flow_runs"]
    assert report["venues"]["bybit_linear"]["records"] > 50
    assert (data / "prefect" / "prefect.db").exists() and (data / "nats" / "jetstream").is_dir()
    import duckdb

    con = duckdb.connect(str(data / "hot.duckdb"), read_only=True)  # the writer stored the run
    try:
        stored = dict(con.execute("SELECT 'trades', count(*) FROM trades UNION ALL "
                                  "SELECT 'book_deltas', count(*) FROM book_deltas").fetchall())  # fmt: skip
    finally:
        con.close()
    assert stored["trades"] > 0 and stored["book_deltas"] > 0
