"""Metrics, the multiprocess scrape endpoint, /health freshness, the error taxonomy, dashboards and alerts."""

from __future__ import annotations

import asyncio
import json
import os
import re
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import aiohttp
import msgspec
import nats.errors
import nats.js.errors
import orjson
import pydantic
import pytest
import websockets.exceptions
import yaml
from prometheus_client import REGISTRY
from prometheus_client.parser import text_string_to_metric_families
from websockets.datastructures import Headers
from websockets.http11 import Response

from marketprism import errors, health, metrics
from marketprism.bus.publisher import JetStreamPublisher, connect
from marketprism.errors import Code, Kind
from marketprism.records import DataType
from marketprism.sim import Faults, SimConfig, SimServer
from marketprism.stream.session import SessionConfig, WsSession
from marketprism.venues import ParseError, get_venue
from tests.test_bus import trade

ROOT = Path(__file__).resolve().parents[1]
FAST = SessionConfig(stall_timeout_s=3.0, backoff_initial_s=0.05, backoff_max_s=0.5, open_timeout_s=3.0)
NAME = re.compile(
    r"^marketprism_(collector|bus|processor|storage|rest|quality)_[a-z0-9_]+_"
    r"(total|seconds|bytes|records|connections|books|circuits|expectations)$"
)
LABELS = {"exchange", "market", "data_type", "code", "kind", "component", "reason", "clock", "result", "suite", "check",
          "severity"}  # fmt: skip


async def wait_until(predicate, timeout_s: float, step: float = 0.05) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if predicate():
            return True
        await asyncio.sleep(step)
    return predicate()


def value(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


# --- naming -------------------------------------------------------------------------------------------
def test_metric_names_and_labels_follow_the_convention() -> None:
    families = [f for f in REGISTRY.collect() if f.name.startswith("marketprism")]
    exported = set()
    for family in families:
        name = f"{family.name}_total" if family.type == "counter" else family.name
        exported.add(name)
        assert NAME.match(name) or name == "marketprism_errors_total", name
        assert family.type in ("counter", "gauge"), name
        if family.type == "counter":
            assert all(s.name.endswith(("_total", "_created")) for s in family.samples), name
        if "timestamp" in name or "_age_" in name:
            assert name.endswith("_seconds"), name
    for metric in metrics.ALL:
        labels = set(metric._labelnames)
        assert labels <= LABELS, (metric._name, labels)
        assert "symbol" not in labels and "venue" not in labels
    assert exported | {metrics.LAST_FRAME_AGE, metrics.LAST_RECORD_AGE} == metrics.exported_names()
    assert all(NAME.match(n) for n in (metrics.LAST_FRAME_AGE, metrics.LAST_RECORD_AGE))


# --- multiprocess endpoint --------------------------------------------------------------------------------
CHILD = textwrap.dedent(
    """
    import json, sys, time
    from marketprism import metrics
    from marketprism.records import Depth, Trade

    spec = json.loads(sys.argv[1])
    now_us = int(time.time() * 1e6)
    for exchange, market, data_type, n, age_s in spec["feeds"]:
        m = metrics.CollectorMetrics(exchange, market, [data_type])
        recv = now_us - int(age_s * 1e6)
        for i in range(n):
            m.frame(100, recv)
            if data_type == "trade":
                r = Trade(exchange=exchange, market=market, symbol="BTC-USDT", instrument="BTCUSDT", ts=recv - 2000,
                          recv_ts=recv, trade_id=str(i), price="1", size="1", side="buy")
            else:
                r = Depth(exchange=exchange, market=market, symbol="BTC-USDT", instrument="BTCUSDT", ts=recv - 2000,
                          recv_ts=recv, is_snapshot=False, bids=Depth.levels([]), asks=Depth.levels([]), seq=i)
            m.records([r])
        m.connections.inc()
        m.flush()
    metrics.count_error("collector", metrics.errors.ErrorInfo.of("WS_CLOSED"), spec.get("errors", 0))
    if spec.get("stay"):
        print("ready", flush=True)
        sys.stdin.readline()
    """
)


def child_env(mp_dir: Path) -> dict[str, str]:
    env = dict(os.environ, PROMETHEUS_MULTIPROC_DIR=str(mp_dir))
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    return env


def run_child(mp_dir: Path, spec: dict) -> None:
    subprocess.run([sys.executable, "-c", CHILD, json.dumps(spec)], env=child_env(mp_dir), cwd=ROOT, check=True,
                   timeout=30)  # fmt: skip


def start_child(mp_dir: Path, spec: dict) -> subprocess.Popen[str]:
    proc = subprocess.Popen([sys.executable, "-c", CHILD, json.dumps({**spec, "stay": True})], env=child_env(mp_dir),
                            cwd=ROOT, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)  # fmt: skip
    assert proc.stdout is not None and proc.stdout.readline().strip() == "ready"
    return proc


def key(name: str, **labels: str) -> tuple[str, tuple[tuple[str, str], ...]]:
    return name, tuple(sorted(labels.items()))


async def scrape(port: int) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    async with aiohttp.ClientSession() as http, http.get(f"http://127.0.0.1:{port}/metrics") as resp:
        assert resp.status == 200 and resp.headers["Content-Type"].startswith("text/plain")
        text = await resp.text()
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


async def get_health(port: int) -> tuple[int, dict]:
    async with aiohttp.ClientSession() as http, http.get(f"http://127.0.0.1:{port}/health") as resp:
        return resp.status, await resp.json()


async def test_endpoint_serves_counters_summed_over_collector_processes(tmp_path: Path) -> None:
    mp_dir = tmp_path / "metrics"
    mp_dir.mkdir()
    (mp_dir / "counter_999999999.db").write_bytes(b"stale file of an earlier run")
    metrics.clear_multiproc_dir(mp_dir)
    assert not list(mp_dir.iterdir())

    run_child(mp_dir, {"feeds": [["binance", "spot", "trade", 3, 0.5]], "errors": 2})  # exits at once
    stayer = start_child(mp_dir, {"feeds": [["binance", "spot", "trade", 4, 0.0], ["okx", "spot", "depth", 5, 0.0]]})
    runner, port = await metrics.start_metrics_server(port=0, multiproc_dir=mp_dir)
    try:
        got = await scrape(port)
        bs = {"exchange": "binance", "market": "spot"}
        assert got[key("marketprism_collector_frames_total", **bs)] == 7  # 3 + 4 from two processes
        assert got[key("marketprism_collector_frame_bytes_total", **bs)] == 700
        assert got[key("marketprism_collector_records_total", **bs, data_type="trade")] == 7
        assert got[key("marketprism_errors_total", component="collector", kind="retryable", code="WS_CLOSED")] == 2
        # livesum gauges count live processes only: the finished child's connection is gone.
        assert got[key("marketprism_collector_open_connections", **bs)] == 1
        newest = got[
            key("marketprism_collector_last_record_timestamp_seconds", **bs, data_type="trade", clock="receive")
        ]
        assert abs(newest - time.time()) < 10  # max over processes: the live child's fresh record
        assert 0 <= got[key("marketprism_collector_last_record_age_seconds", **bs, data_type="trade")] < 10
        assert key("marketprism_collector_last_frame_age_seconds", **bs) in got

        status, report = await get_health(port)
        assert status == 200 and report["status"] == "ok"
        assert {(f["exchange"], f["data_type"], f["status"]) for f in report["feeds"]} == {
            ("binance", "trade", "ok"),
            ("okx", "depth", "ok"),
        }

        stayer.communicate("\n", timeout=10)  # the second collector process ends too
        got = await scrape(port)
        assert got[key("marketprism_collector_frames_total", **bs)] == 7  # counters of finished processes remain
        assert key("marketprism_collector_open_connections", **bs) not in got
    finally:
        if stayer.poll() is None:
            stayer.kill()
        await runner.cleanup()


async def test_health_reports_ok_stale_missing_with_http_status(tmp_path: Path) -> None:
    mp_dir = metrics.clear_multiproc_dir(tmp_path / "metrics")
    run_child(mp_dir, {"feeds": [["binance", "spot", "trade", 2, 1.0], ["binance", "spot", "depth", 2, 100.0]]})
    expected = [("binance", "spot", "trade"), ("binance", "spot", "depth"), ("okx", "spot", "ticker")]
    runner, port = await metrics.start_metrics_server(port=0, multiproc_dir=mp_dir, expected=expected)
    lenient, lenient_port = await metrics.start_metrics_server(
        port=0, multiproc_dir=mp_dir, thresholds={"trade": 60, "binance.spot.depth": 300}
    )
    try:
        status, report = await get_health(port)
        assert status == 503 and report["status"] == "missing"
        feeds = {(f["exchange"], f["data_type"]): f for f in report["feeds"]}
        assert feeds[("binance", "trade")]["status"] == "ok" and 0.9 < feeds[("binance", "trade")]["age_s"] < 10
        assert feeds[("binance", "trade")]["exchange_lag_s"] == pytest.approx(0.002, abs=1e-3)
        assert feeds[("binance", "depth")]["status"] == "stale" and feeds[("binance", "depth")]["threshold_s"] == 10
        assert feeds[("okx", "ticker")]["status"] == "missing" and feeds[("okx", "ticker")]["age_s"] is None
        status, report = await get_health(lenient_port)  # a per-feed threshold override
        assert status == 200 and report["status"] == "ok"
    finally:
        await runner.cleanup()
        await lenient.cleanup()


def test_health_evaluation_rules() -> None:
    now = 1_000_000.0
    seen = {
        ("bybit", "perpetual", "trade"): {"receive": now - 5, "exchange": now - 5.1},
        ("bybit", "perpetual", "depth"): {"receive": now - 11},
        ("bybit", "perpetual", "status"): {"receive": now - 999},
    }
    report = health.evaluate(seen, now=now)
    by_type = {f["data_type"]: f["status"] for f in report["feeds"]}
    assert by_type == {"trade": "ok", "depth": "stale", "status": "n/a"}
    assert report["status"] == "stale" and health.http_status(report) == 503
    only_trades = health.evaluate(seen, now=now, expected=[("bybit", "perpetual", "trade")])
    assert only_trades["status"] == "ok" and health.http_status(only_trades) == 200  # unexpected feeds don't decide
    assert health.evaluate({}, now=now)["status"] == "missing"  # a host with no data is not healthy


# --- taxonomy -----------------------------------------------------------------------------------------------
def _raised(fn) -> BaseException:
    try:
        fn()
    except BaseException as exc:
        return exc
    raise AssertionError("did not raise")


class _Model(pydantic.BaseModel):
    port: int


@pytest.mark.parametrize(
    ("exc", "kind", "code"),
    [
        (ParseError("okx_spot", "not an OKX frame", "{"), Kind.BAD_DATA, Code.PARSE_MALFORMED),
        (
            ParseError("okx_spot", "error event", "{}", code=Code.PARSE_VENUE_ERROR),
            Kind.BAD_DATA,
            Code.PARSE_VENUE_ERROR,
        ),
        (_raised(lambda: orjson.loads(b"{")), Kind.BAD_DATA, Code.PARSE_MALFORMED),
        (_raised(lambda: msgspec.json.decode(b"[1", type=list[int])), Kind.BAD_DATA, Code.PARSE_MALFORMED),
        (ConnectionRefusedError(111, "refused"), Kind.RETRYABLE, Code.CONNECT_FAILED),
        (TimeoutError(), Kind.RETRYABLE, Code.CONNECT_FAILED),
        (websockets.exceptions.ConnectionClosedError(None, None), Kind.RETRYABLE, Code.WS_CLOSED),
        (
            websockets.exceptions.InvalidStatus(Response(429, "Too Many Requests", Headers())),
            Kind.RETRYABLE,
            Code.RATE_LIMITED,
        ),
        (
            websockets.exceptions.InvalidStatus(Response(502, "Bad Gateway", Headers())),
            Kind.RETRYABLE,
            Code.UPSTREAM_UNAVAILABLE,
        ),
        (websockets.exceptions.InvalidURI("htp://x", "bad scheme"), Kind.FATAL, Code.CONFIG_INVALID),
        (aiohttp.ClientResponseError(None, (), status=418), Kind.RETRYABLE, Code.RATE_LIMITED),  # type: ignore[arg-type]
        (aiohttp.ClientResponseError(None, (), status=503), Kind.RETRYABLE, Code.UPSTREAM_UNAVAILABLE),  # type: ignore[arg-type]
        (aiohttp.ClientResponseError(None, (), status=400), Kind.FATAL, Code.HTTP_REJECTED),  # type: ignore[arg-type]
        (nats.errors.NoServersError(), Kind.RETRYABLE, Code.NATS_UNAVAILABLE),
        (nats.errors.TimeoutError(), Kind.RETRYABLE, Code.ACK_TIMEOUT),
        (nats.js.errors.NoStreamResponseError(), Kind.RETRYABLE, Code.NATS_UNAVAILABLE),
        (nats.errors.AuthorizationError(), Kind.FATAL, Code.AUTH_FAILED),
        (nats.errors.MaxPayloadError(), Kind.BAD_DATA, Code.RECORD_INVALID),
        (errors.NatsUnavailable("NATS not connected"), Kind.RETRYABLE, Code.NATS_UNAVAILABLE),
        (errors.AckTimeout("3 acks late"), Kind.RETRYABLE, Code.ACK_TIMEOUT),
        (errors.PublishRejected("no responders"), Kind.RETRYABLE, Code.PUBLISH_REJECTED),
        (_raised(lambda: _Model(port="x")), Kind.FATAL, Code.CONFIG_INVALID),  # type: ignore[arg-type]
        (asyncio.CancelledError(), Kind.FATAL, Code.CANCELLED),
        (KeyError("bug"), Kind.FATAL, Code.INTERNAL),
    ],
)
def test_classify(exc: BaseException, kind: Kind, code: Code) -> None:
    info = errors.classify(exc)
    assert (info.kind, info.code) == (kind, code)
    assert info.retryable == (kind is Kind.RETRYABLE) and info.fatal == (kind is Kind.FATAL)
    assert type(exc).__name__ in info.message


def test_taxonomy_is_complete_and_parse_failures_are_always_bad_data() -> None:
    assert set(errors.KIND_OF) == set(Code)
    assert isinstance(ParseError("v", "r", "f"), ValueError)  # callers catching ValueError still do
    assert errors.classify_parse_error(KeyError("x")).code is Code.PARSE_BUG
    assert errors.classify_parse_error(ParseError("v", "r", "f")).code is Code.PARSE_MALFORMED
    before = value("marketprism_errors_total", component="test", kind="fatal", code="CANCELLED")
    assert metrics.count_error("test", asyncio.CancelledError()).code is Code.CANCELLED
    assert value("marketprism_errors_total", component="test", kind="fatal", code="CANCELLED") == before  # not an error
    with pytest.raises(ValueError):
        errors.ErrorInfo.of("NOT_A_CODE")


# --- wiring -------------------------------------------------------------------------------------------------
async def test_session_parse_errors_count_by_kind_and_code_and_feed_health() -> None:
    labels = {"exchange": "okx", "market": "spot"}
    err_labels = {"component": "collector", "kind": "bad_data", "code": "PARSE_MALFORMED"}
    before = {
        "parse": value("marketprism_collector_parse_errors_total", **labels, code="PARSE_MALFORMED"),
        "errors": value("marketprism_errors_total", **err_labels),
        "frames": value("marketprism_collector_frames_total", **labels),
        "trades": value("marketprism_collector_records_total", **labels, data_type="trade"),
        "status": value("marketprism_collector_records_total", **labels, data_type="status"),
    }
    cfg = SimConfig(mode="synthetic", venues=["okx_spot"], symbols=["BTC-USDT"], rate=50.0,
                    faults={"okx_spot": Faults(malformed_every_n=5)})  # fmt: skip
    async with SimServer(cfg, host="127.0.0.1", port=0) as sim:
        venue = get_venue("okx_spot")
        session = WsSession(venue, venue.subscriptions(["BTC-USDT"], [DataType.TRADE, DataType.DEPTH]), lambda r: None,
                            ws_base=sim.ws_base("okx_spot"), config=FAST)  # fmt: skip
        task = asyncio.create_task(session.run())
        # Counts reach Prometheus within about a second while the session runs (no need to stop it).
        assert await wait_until(lambda: value("marketprism_errors_total", **err_labels) - before["errors"] >= 3, 10)
        assert value("marketprism_collector_open_connections", **labels) >= 1
        session.stop()
        await task
    st = session.stats
    assert st.parse_errors >= 3 and st.reconnects == 0
    assert value("marketprism_collector_parse_errors_total", **labels, code="PARSE_MALFORMED") - before["parse"] == (
        st.parse_errors
    )
    assert value("marketprism_errors_total", **err_labels) - before["errors"] == st.parse_errors
    assert value("marketprism_collector_frames_total", **labels) - before["frames"] == st.frames
    assert (
        value("marketprism_collector_records_total", **labels, data_type="trade") - before["trades"]
        == (st.records_by_type[DataType.TRADE])
    )
    assert (
        value("marketprism_collector_records_total", **labels, data_type="status") - before["status"]
        == (st.records_by_type[DataType.STATUS])
    )
    newest = value("marketprism_collector_last_record_timestamp_seconds", **labels, data_type="trade", clock="receive")
    assert abs(time.time() - newest) < 10

    # This process's registry is served when no multiprocess directory is configured.
    runner, port = await metrics.start_metrics_server(port=0, expected=[("okx", "spot", "trade")])
    try:
        assert (await scrape(port))[key("marketprism_collector_frames_total", **labels)] >= st.frames
        status, report = await get_health(port)
        assert status == 200 and report["status"] == "ok"
    finally:
        await runner.cleanup()


async def test_session_stops_on_a_fatal_connect_error_and_counts_it() -> None:
    labels = {"component": "collector", "kind": "fatal", "code": "CONFIG_INVALID"}
    before = value("marketprism_errors_total", **labels)
    venue = get_venue("bybit_linear")
    session = WsSession(venue, venue.subscriptions(["BTC-USDT"], [DataType.TRADE]), lambda r: None,
                        ws_base="htp://127.0.0.1:1", config=FAST)  # fmt: skip
    with pytest.raises(websockets.exceptions.InvalidURI):
        await asyncio.wait_for(session.run(), 5)  # retrying a bad URL cannot help: no backoff loop
    assert value("marketprism_errors_total", **labels) - before == 1
    assert session.stats.backoff_delays == [] and "connect failed" in session.stats.last_error


async def test_publisher_rejections_and_drops_are_counted(nats_server) -> None:
    def err(code: str) -> float:
        return value("marketprism_errors_total", component="bus", kind="retryable", code=code)

    before = {c: err(c) for c in ("PUBLISH_REJECTED", "BUFFER_FULL", "DROPPED_AT_STOP")}
    dropped = {r: value("marketprism_bus_dropped_total", reason=r) for r in ("buffer_full", "shutdown")}
    nc = await connect(nats_server.url)  # no stream: JetStream answers "no responders"
    pub = JetStreamPublisher(nc, buffer_size=2, ack_timeout_s=0.5, retry_backoff_max_s=0.1)
    for i in range(5):
        pub.submit(trade(i))
    pub.start()
    assert await wait_until(lambda: err("PUBLISH_REJECTED") > before["PUBLISH_REJECTED"], 5)
    await pub.close(timeout_s=0.3)
    await nc.close()
    assert pub.stats.dropped_by_reason == {"buffer_full": 3, "shutdown": 2}
    assert value("marketprism_bus_dropped_total", reason="buffer_full") - dropped["buffer_full"] == 3
    assert value("marketprism_bus_dropped_total", reason="shutdown") - dropped["shutdown"] == 2
    assert err("BUFFER_FULL") - before["BUFFER_FULL"] == 3
    assert err("DROPPED_AT_STOP") - before["DROPPED_AT_STOP"] == 2
    assert value("marketprism_bus_buffered_records") == 0 and value("marketprism_bus_in_flight_records") == 0


# --- dashboards and alerts ----------------------------------------------------------------------------------
METRIC_REF = re.compile(r"\bmarketprism_[a-z0-9_]+")
GROUPING = re.compile(r"\b(?:by|on|without|ignoring)\s*\(([^)]*)\)")
MATCHER = re.compile(r"\b(marketprism_[a-z0-9_]+)\{([^}]*)\}")


def check_expr(expr: str) -> set[str]:
    names = set(METRIC_REF.findall(expr))
    unknown = names - metrics.exported_names()
    assert not unknown, f"unknown metric(s) {unknown} in {expr}"
    for group in GROUPING.findall(expr):
        assert {g.strip() for g in group.split(",") if g.strip()} <= LABELS, expr
    for _, matchers in MATCHER.findall(expr):
        used = {m.split("=")[0].rstrip("!~").strip() for m in re.split(r",\s*", matchers) if m.strip()}
        assert used <= LABELS, expr
    return names


def test_dashboard_and_alerts_reference_only_metrics_the_code_exports() -> None:
    dash = json.loads((ROOT / "deployments/grafana/marketprism.json").read_text())
    assert dash["uid"] and dash["title"] and dash["schemaVersion"] >= 30
    ids = [p["id"] for p in dash["panels"]]
    assert len(ids) == len(set(ids))
    used: set[str] = set()
    for p in dash["panels"]:
        assert {"type", "title", "gridPos"} <= set(p)
        for target in p.get("targets", []):
            used |= check_expr(target["expr"])
    for var in dash["templating"]["list"]:
        if var["type"] == "query":
            used |= check_expr(var["query"]["query"])

    rules = yaml.safe_load((ROOT / "deployments/prometheus/alerts.yml").read_text())
    alerts = {}
    for group in rules["groups"]:
        for rule in group["rules"]:
            assert {"alert", "expr", "labels", "annotations"} <= set(rule)
            assert rule["labels"]["severity"] in ("warning", "critical")
            used |= check_expr(rule["expr"])
            alerts[rule["alert"]] = rule["expr"]
    for wanted in ("FeedStale", "NoRecords", "RecordsDropped", "ReconnectStorm", "ParseErrorRate", "NatsUnavailable"):
        assert f"MarketPrism{wanted}" in alerts
    # Everything an operator needs is on the dashboard.
    assert {
        "marketprism_collector_records_total", "marketprism_collector_parse_errors_total",
        "marketprism_collector_reconnects_total", "marketprism_bus_published_total", "marketprism_bus_dropped_total",
        "marketprism_bus_buffered_records", "marketprism_collector_last_record_age_seconds", "marketprism_errors_total",
    } <= used  # fmt: skip

    prom = yaml.safe_load((ROOT / "deployments/prometheus/prometheus.yml").read_text())
    assert prom["rule_files"] == ["alerts.yml"]
    assert prom["scrape_configs"][0]["metrics_path"] == "/metrics"
    assert prom["scrape_configs"][0]["static_configs"][0]["targets"] == [f"127.0.0.1:{metrics.DEFAULT_PORT}"]
