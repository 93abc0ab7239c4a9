"""Collectors end to end: simulator (real WebSockets) -> sessions -> parsers -> real nats-server JetStream."""

from __future__ import annotations

import asyncio
import random
from collections import Counter
from pathlib import Path

import orjson
import pytest
from typer.testing import CliRunner

from marketprism.bus.publisher import JetStreamPublisher
from marketprism.bus.server import LocalNatsServer, free_port
from marketprism.cli import app
from marketprism.records import DataType, Status, Trade
from marketprism.runner import CollectorSpec, run_collectors
from marketprism.sim import Faults, SimConfig, SimServer
from marketprism.stream.capture import CaptureWriter, read_recording
from marketprism.stream.collector import Collector, shard_subscriptions
from marketprism.stream.session import SessionConfig, WsSession, backoff_delay
from marketprism.venues import VENUES, get_venue
from tests.fixtures_util import fixture_path
from tests.test_bus import stream_messages

FAST = SessionConfig(stall_timeout_s=3.0, backoff_initial_s=0.05, backoff_max_s=0.5, open_timeout_s=3.0)


def subject_counts(msgs: list) -> Counter[str]:
    return Counter(m.subject for m in msgs)


async def wait_until(predicate, timeout_s: float, step: float = 0.05) -> bool:
    deadline = asyncio.get_running_loop().time() + timeout_s
    while asyncio.get_running_loop().time() < deadline:
        if predicate():
            return True
        await asyncio.sleep(step)
    return predicate()


def replay_files() -> dict[str, list[str]]:
    return {
        "binance_spot": [
            str(fixture_path("binance/spot_trade_BTCUSDT_2024-08-08_first500.jsonl")),
            str(fixture_path("binance/spot_depthUpdate_BTCUSDT_2024-08-08_first400.jsonl")),
            str(fixture_path("binance/spot_bookTicker_BTCUSDT_2024-08-08_first500.jsonl")),
        ],
        "binance_usdm": [str(fixture_path("binance/usdm_cryptofeed_2021-07-22.ws.raw.txt"))],
        "okx_spot": [
            str(fixture_path("okx/books_BTC-USDT_2022-05-13.jsonl")),
            str(fixture_path("okx/trades_2022-05-13.jsonl")),
            str(fixture_path("okx/tickers_2022-05-13.jsonl")),
        ],
        "okx_swap": [str(fixture_path("okx/books_UNI-USD-SWAP_2022-05-13.jsonl"))],
        "bybit_linear": [str(fixture_path("bybit/v5_orderbook500_XRPUSDT_2024-12-01.jsonl"))],
    }


REPLAY_SPECS = [
    CollectorSpec("binance_spot", ("BTC-USDT",)),
    CollectorSpec("binance_usdm", ("SUSHI-USDT", "AKRO-USDT", "KEEP-USDT", "CTK-USDT"), (DataType.DEPTH,)),
    CollectorSpec("okx_spot", ("BTC-USDT",), (DataType.DEPTH, DataType.TRADE)),
    CollectorSpec("okx_swap", ("UNI-USD",), (DataType.DEPTH,)),
    CollectorSpec("bybit_linear", ("XRP-USDT",), (DataType.DEPTH,)),
]


def expected_subjects(truth: dict, specs: list[CollectorSpec]) -> Counter[str]:
    """Distinct records per subject in the replayed files, for the instruments and types collected."""
    expected: Counter[str] = Counter()
    for spec in specs:
        venue = get_venue(spec.venue)
        types = {dt.value for dt in (spec.data_types or tuple(venue.channels))}
        symbols = set(spec.symbols)
        for subject, n in truth["replay"][spec.venue]["subjects"].items():
            _, dt, _, _, symbol = subject.split(".")
            if dt in types and symbol in symbols:
                expected[subject] += n
    return expected


async def test_replay_of_recorded_frames_arrives_exactly_once_despite_reconnects(tmp_path: Path, nats_server) -> None:
    faults = {name: Faults(disconnect_every_s=1.0) for name in VENUES}
    cfg = SimConfig(mode="replay", venues=list(VENUES), replay_files=replay_files(), speed=8.0, replay_overlap=5,
                    faults=faults)  # fmt: skip
    async with SimServer(cfg, host="127.0.0.1", port=0) as sim:
        stop = asyncio.Event()

        async def stop_when_replayed() -> None:
            await wait_until(lambda: sim.truth().get("replay_done", False), 60)
            await asyncio.sleep(1.0)  # the last frames' acks
            stop.set()

        waiter = asyncio.create_task(stop_when_replayed())
        report = await run_collectors(
            REPLAY_SPECS, nats_url=nats_server.url, data_dir=tmp_path, source="live", stop=stop,
            session_config=FAST, ws_bases={s.venue: sim.ws_base(s.venue) for s in REPLAY_SPECS},
        )  # fmt: skip
        await waiter
        truth = sim.truth()

    from marketprism.bus.publisher import connect

    nc = await connect(nats_server.url)
    msgs = [m for m in await stream_messages(nc) if not m.subject.startswith("md.status.")]
    await nc.close()
    want = expected_subjects(truth, REPLAY_SPECS)
    assert sum(want.values()) > 1500
    assert subject_counts(msgs) == want  # every frame exactly once, per subject
    assert len({m.headers["Nats-Msg-Id"] for m in msgs}) == len(msgs)
    reconnects = sum(c.reconnects for c in report.collectors)
    assert reconnects >= len(REPLAY_SPECS)  # the forced disconnects happened...
    assert report.publisher.duplicates > 0  # ...and the overlap they caused was deduplicated by Msg-Id
    assert report.publisher.dropped == 0
    assert sum(c.parse_errors for c in report.collectors) == 0


async def test_synthetic_sim_all_venues_flow_through_runner(tmp_path: Path, nats_server) -> None:
    report = await run_collectors(
        [CollectorSpec(name, ("BTC-USDT", "ETH-USDT")) for name in VENUES], nats_url=nats_server.url,
        data_dir=tmp_path, source="sim", duration_s=3.0, session_config=FAST, sim_options={"rate": 20.0},
    )  # fmt: skip
    assert report.publisher.dropped == 0
    for c in report.collectors:
        assert c.connected == 0  # stopped
        for dt in ("trade", "depth", "ticker", "status"):
            assert c.records_by_type[dt] > 0, (c.venue, dt)
        assert c.parse_errors == 0
    assert report.publisher.published == sum(c.records for c in report.collectors)
    assert all(c.records == sum(c.records_by_type.values()) for c in report.collectors)


class _Sink(list):
    def __call__(self, record) -> None:
        self.append(record)


async def test_disconnects_reconnect_and_resubscribe_with_capped_backoff() -> None:
    cfg = SimConfig(mode="synthetic", venues=["bybit_linear"], symbols=["BTC-USDT"], rate=20.0,
                    faults={"bybit_linear": Faults(disconnect_every_s=0.7)})  # fmt: skip
    async with SimServer(cfg, host="127.0.0.1", port=0) as sim:
        sink = _Sink()
        venue = get_venue("bybit_linear")
        session = WsSession(venue, venue.subscriptions(["BTC-USDT"], [DataType.TRADE]), sink,
                            ws_base=sim.ws_base("bybit_linear"), config=FAST)  # fmt: skip
        task = asyncio.create_task(session.run())
        assert await wait_until(lambda: session.stats.reconnects >= 3, 15)
        session.stop()
        await task
        truth = sim.truth()
    statuses = [r for r in sink if isinstance(r, Status)]
    assert [s.event for s in statuses[:4]] == ["connected", "disconnected", "connected", "disconnected"]
    assert all(s.reason.startswith("closed") for s in statuses if s.event == "disconnected")
    assert truth["connections"]["bybit_linear"] >= 4
    assert truth["subscribe_messages"]["bybit_linear"] >= 4  # resubscribed on every connection
    trades = [r for r in sink if isinstance(r, Trade)]
    assert trades and session.stats.parse_errors == 0
    assert all(d <= FAST.backoff_max_s for d in session.stats.backoff_delays)


async def test_refused_connections_back_off_exponentially_up_to_the_cap() -> None:
    venue = get_venue("okx_spot")
    cfg = SessionConfig(backoff_initial_s=0.01, backoff_max_s=0.08, open_timeout_s=1.0)
    session = WsSession(venue, venue.subscriptions(["BTC-USDT"], [DataType.TRADE]), _Sink(),
                        ws_base=f"ws://127.0.0.1:{free_port()}/okx_spot", config=cfg, rng=random.Random(7))  # fmt: skip
    task = asyncio.create_task(session.run())
    assert await wait_until(lambda: len(session.stats.backoff_delays) >= 8, 10)
    session.stop()
    await task
    assert "connect failed" in session.stats.last_error
    assert max(session.stats.backoff_delays) <= 0.08
    rng = random.Random(1)
    bounds = [min(0.08, 0.01 * 2**a) for a in range(10)]
    samples = [[backoff_delay(a, 0.01, 0.08, rng) for _ in range(200)] for a in range(10)]
    assert all(max(s) <= b for s, b in zip(samples, bounds, strict=True))
    assert max(samples[0]) < 0.011 and max(samples[9]) > 0.06  # grows, then stays capped


async def test_stalled_stream_is_noticed_within_the_watchdog_period() -> None:
    cfg = SimConfig(mode="synthetic", venues=["binance_spot"], symbols=["BTC-USDT"], rate=20.0)
    async with SimServer(cfg, host="127.0.0.1", port=0) as sim:
        venue = get_venue("binance_spot")
        sink = _Sink()
        config = SessionConfig(stall_timeout_s=1.0, backoff_initial_s=0.05, backoff_max_s=0.2)
        session = WsSession(venue, venue.subscriptions(["BTC-USDT"], [DataType.TRADE]), sink,
                            ws_base=sim.ws_base("binance_spot"), config=config)  # fmt: skip
        task = asyncio.create_task(session.run())
        assert await wait_until(lambda: session.stats.records > 5, 10)
        sim.set_faults("binance_spot", Faults(stall_s=4.0))
        loop = asyncio.get_running_loop()
        t0 = loop.time()
        assert await wait_until(lambda: session.stats.stalls >= 1, 5)
        noticed = loop.time() - t0
        sim.set_faults("binance_spot", Faults())
        assert await wait_until(lambda: session.stats.connects >= 2, 5)
        session.stop()
        await task
    assert noticed <= 1.0 + 1.0 + 0.5  # stall timeout + one watchdog period + slack
    assert any(isinstance(r, Status) and r.reason.startswith("stall") for r in sink)


async def test_malformed_frames_are_skipped_and_counted() -> None:
    cfg = SimConfig(mode="synthetic", venues=["okx_spot"], symbols=["BTC-USDT"], rate=50.0,
                    faults={"okx_spot": Faults(malformed_every_n=10)})  # fmt: skip
    async with SimServer(cfg, host="127.0.0.1", port=0) as sim:
        venue = get_venue("okx_spot")
        sink = _Sink()
        session = WsSession(venue, venue.subscriptions(["BTC-USDT"], [DataType.TRADE, DataType.DEPTH]), sink,
                            ws_base=sim.ws_base("okx_spot"), config=FAST)  # fmt: skip
        task = asyncio.create_task(session.run())
        assert await wait_until(lambda: session.stats.parse_errors >= 5, 10)
        session.stop()
        await task
    assert session.stats.reconnects == 0  # bad frames never cost the connection
    assert session.stats.records > 20


async def test_rotation_overlaps_connections_without_gaps(tmp_path: Path, nats_client) -> None:
    cfg = SimConfig(mode="synthetic", venues=["binance_usdm"], symbols=["BTC-USDT"], rate=50.0)
    async with SimServer(cfg, host="127.0.0.1", port=0) as sim:
        venue = get_venue("binance_usdm")
        pub = JetStreamPublisher(nats_client).start()
        config = SessionConfig(max_connection_age_s=1.0, rotation_overlap_s=0.3, backoff_initial_s=0.05)
        session = WsSession(venue, venue.subscriptions(["BTC-USDT"], [DataType.TRADE]), pub.submit,
                            ws_base=sim.ws_base("binance_usdm"), config=config)  # fmt: skip
        task = asyncio.create_task(session.run())
        assert await wait_until(lambda: session.stats.rotations >= 3, 15)
        session.stop()
        await task
        await pub.close()
    msgs = await stream_messages(nats_client, "md.trade.>")
    ids = sorted(int(m.headers["Nats-Msg-Id"].rsplit(":", 1)[1]) for m in msgs)
    assert ids == list(range(ids[0], ids[0] + len(ids)))  # contiguous trade ids: nothing lost across rotations
    status = await stream_messages(nats_client, "md.status.>")
    assert [m.data.count(b"disconnected") for m in status] == [0]  # one "connected", no disconnects


def test_sharding_respects_per_connection_limits() -> None:
    venue = get_venue("binance_usdm")
    symbols = [f"C{i}-USDT" for i in range(150)]
    types = [DataType.TRADE, DataType.DEPTH, DataType.TICKER]  # 3 streams a symbol (USDⓈ-M has 5 with derivatives)
    subs = venue.subscriptions(symbols, types)
    shards = shard_subscriptions(subs, venue.limits.streams_per_connection)
    assert len(shards) == 3 and all(len(s) <= 200 for s in shards)
    assert sum(len(s) for s in shards) == 450
    for shard in shards:  # a symbol's channels never straddle connections
        instruments = {s.instrument for s in shard}
        assert all(sum(1 for s in shard if s.instrument == i) == 3 for i in instruments)
    collector = Collector(venue, symbols, _Sink(), data_types=types)
    assert len(collector.sessions) == 3
    with pytest.raises(ValueError, match="no symbols"):
        Collector(venue, [], _Sink())
    with pytest.raises(ValueError, match="no channel"):
        venue.subscriptions(["BTC-USDT"], [DataType.STATUS])


async def test_record_writes_a_capture_that_the_simulator_replays(tmp_path: Path, nats_server) -> None:
    capture = tmp_path / "capture.jsonl.gz"
    spec = CollectorSpec("okx_swap", ("BTC-USDT",), (DataType.TRADE, DataType.DEPTH))
    report = await run_collectors([spec], nats_url=nats_server.url, data_dir=tmp_path, source="sim", record=capture,
                                  duration_s=2.0, session_config=FAST)  # fmt: skip
    lines = list(read_recording(capture))
    frames = [line for line in lines if line.source == "ws"]
    assert len(frames) == report.collectors[0].frames > 10
    assert all(str(line.url).endswith("/okx_swap/ws/v5/public") for line in frames)
    # Besides the frames: the status records, and the REST snapshot fetched after subscribing (OKX declares one).
    assert [orjson.loads(line.data)["event"] for line in lines if line.source == "status"] == ["connected"]
    rest = [line for line in lines if line.source == "rest"]
    assert len(rest) == report.collectors[0].snapshots_recorded == 1
    assert str(rest[0].url).endswith("/okx_swap/api/v5/market/books?instId=BTC-USDT-SWAP&sz=400")
    # The capture replays through the simulator to the same records.
    cfg = SimConfig(mode="replay", venues=["okx_swap"], replay_files={"okx_swap": [str(capture)]}, speed=0.0)
    async with SimServer(cfg, host="127.0.0.1", port=0) as sim:
        truth = sim.truth()
    replayed = sum(truth["replay"]["okx_swap"]["subjects"].values())
    assert replayed == report.collectors[0].records_by_type["trade"] + report.collectors[0].records_by_type["depth"]


def book_verify(*args: str | Path) -> tuple[int, dict]:
    result = CliRunner().invoke(app, ["book", "verify", *map(str, args)])
    lines = [line for line in result.output.splitlines() if line.startswith("{")]
    return result.exit_code, (orjson.loads(lines[-1]) if lines else {"output": result.output})


def rewrite_capture(src: Path, dst: Path, keep) -> Path:
    with CaptureWriter(dst) as w:
        for item in read_recording(src):
            if keep(item):
                w.write(item.recv_ts or 0, item.source, item.url or "", item.data)
    return dst


async def test_a_recorded_capture_verifies_on_its_own_across_a_forced_disconnect(tmp_path: Path, nats_server) -> None:
    """``collect --record`` fetches a REST depth snapshot after each (re)subscription (Binance, Bybit) and
    records its status records, so ``book verify`` proves the capture alone: the snapshot comes after
    buffered deltas, the disconnect is explained by the status lines (a resync, not a gap), and the snapshot
    fetched after resubscribing syncs each book again."""
    names = ["binance_spot", "binance_usdm", "bybit_linear"]
    symbols = ("BTC-USDT", "ETH-USDT")
    specs = [CollectorSpec(name, symbols) for name in names]
    cfg = SimConfig(mode="synthetic", venues=names, symbols=list(symbols), rate=20.0)
    capture = tmp_path / "capture.jsonl.gz"
    async with SimServer(cfg, host="127.0.0.1", port=0) as sim:
        bases = {name: sim.ws_base(name) for name in names}
        # A collector that does not record sends no REST request.
        await run_collectors(specs, nats_url=nats_server.url, data_dir=tmp_path, duration_s=1.0,
                             session_config=FAST, ws_bases=bases)  # fmt: skip
        assert all(sim.truth()["venues"][name]["rest_requests"] == 0 for name in names)

        sim.set_faults(None, Faults(disconnect_every_s=1.2))
        collectors: list[Collector] = []
        stop = asyncio.Event()

        async def drive() -> None:
            assert await wait_until(lambda: len(collectors) == 3 and all(c.stats.reconnects for c in collectors), 20)
            sim.set_faults(None, Faults())
            assert await wait_until(lambda: all(s.stats.connected for c in collectors for s in c.sessions), 10)
            await asyncio.sleep(0.5)  # the new connections' first depth frames: their snapshots are asked for
            assert await wait_until(
                lambda: all(c.snapshots is not None and not c.snapshots.pending for c in collectors), 10
            )
            await asyncio.sleep(1.0)  # deltas after the last snapshots
            stop.set()

        driver = asyncio.create_task(drive())
        report = await run_collectors(specs, nats_url=nats_server.url, data_dir=tmp_path, record=capture, stop=stop,
                                      session_config=FAST, ws_bases=bases, on_start=collectors.extend)  # fmt: skip
        await driver
        truth = sim.truth()
    stats = {c.venue: c for c in report.collectors}
    assert all(c.snapshot_failures == 0 and c.reconnects >= 1 for c in stats.values())
    assert all(truth["venues"][name]["rest_requests"] == stats[name].snapshots_recorded for name in names)

    code, out = book_verify(capture)
    assert code == 0 and out["ok"], out
    assert out["venues"] == names and out["gaps"] == 0 and out["checksum_failed"] == 0 and out["never_synced"] == []
    assert len(out["symbols"]) == 6 and all(s["state"] == "synced" for s in out["symbols"].values()), out
    assert all(s["resyncs_by_reason"].get("disconnect", 0) >= 1 for s in out["symbols"].values()), out
    # Binance books came back from the snapshot fetched after resubscribing; Bybit's from the stream's own.
    assert all(s["snapshots"] >= 2 for s in out["symbols"].values()), out
    binance_snapshots = stats["binance_spot"].snapshots_recorded + stats["binance_usdm"].snapshots_recorded
    assert (
        out["rest_snapshots"] == binance_snapshots and out["rest_ignored"] == stats["bybit_linear"].snapshots_recorded
    )
    assert out["status_records"] > 0 and out["parse_errors"] == 0

    # Without its REST snapshots a Binance symbol is never synced: nothing about it was verified.
    no_rest = rewrite_capture(capture, tmp_path / "no_rest.jsonl",
                              lambda i: not (i.source == "rest" and "/binance_spot/" in str(i.url)
                                             and "symbol=BTCUSDT" in str(i.url)))  # fmt: skip
    code, out = book_verify(no_rest)
    assert code == 1 and out["never_synced"] == ["binance:spot:BTC-USDT"], out


async def test_a_parser_bug_is_counted_and_the_session_carries_on() -> None:
    """Anything a parser raises, not only ParseError, costs one frame, never the session."""
    import dataclasses

    base = get_venue("binance_spot")

    class FlakyParser:
        def __init__(self, symbols=None) -> None:
            self.inner, self.n = base.new_parser(symbols), 0

        def parse(self, frame, recv_ts):
            self.n += 1
            if self.n % 5 == 0:
                raise KeyError("a bug, not a bad frame")
            return self.inner.parse(frame, recv_ts)

    venue = dataclasses.replace(base, new_parser=FlakyParser)
    cfg = SimConfig(mode="synthetic", venues=["binance_spot"], symbols=["BTC-USDT"], rate=50.0)
    async with SimServer(cfg, host="127.0.0.1", port=0) as sim:
        sink = _Sink()
        session = WsSession(venue, venue.subscriptions(["BTC-USDT"], [DataType.TRADE]), sink,
                            ws_base=sim.ws_base("binance_spot"), config=FAST)  # fmt: skip
        task = asyncio.create_task(session.run())
        assert await wait_until(lambda: session.stats.parse_errors >= 5, 10)
        session.stop()
        await task
    assert session.stats.reconnects == 0
    assert session.stats.parse_errors == session.stats.frames // 5


@pytest.mark.parametrize(("every_s", "cut"), [(0.3, False), (5.0, True)])
async def test_client_heartbeat_keeps_a_quiet_okx_connection_open(every_s: float, cut: bool) -> None:
    """OKX closes connections that send nothing for 30 s; the session's text "ping" keeps a quiet one open.

    The simulator cuts after 1 s of client silence; a 0.3 s heartbeat survives, a 5 s one (control) does not.
    """
    import dataclasses

    from marketprism.venues.base import Heartbeat

    venue = dataclasses.replace(get_venue("okx_spot"), heartbeat=Heartbeat("client_text", every_s, "ping"))
    cfg = SimConfig(mode="synthetic", venues=["okx_spot"], symbols=["BTC-USDT"], rate=0.0, client_idle_timeout_s=1.0)
    async with SimServer(cfg, host="127.0.0.1", port=0) as sim:
        session = WsSession(venue, venue.subscriptions(["BTC-USDT"], [DataType.TRADE]), _Sink(),
                            ws_base=sim.ws_base("okx_spot"), config=FAST)  # fmt: skip
        task = asyncio.create_task(session.run())
        await asyncio.sleep(3.0)
        session.stop()
        await task
    assert session.stats.parse_errors == 0
    if cut:
        assert session.stats.reconnects >= 1
    else:
        assert session.stats.connects == 1 and session.stats.reconnects == 0
        assert session.stats.frames >= 5  # the subscribe ack and the pongs


async def test_nats_killed_and_restarted_during_collection_loses_nothing(tmp_path: Path) -> None:
    servers = [LocalNatsServer(tmp_path / "nats").start()]
    stop = asyncio.Event()

    async def outage() -> None:
        await asyncio.sleep(1.5)
        servers[0].kill()  # SIGKILL while the collector publishes
        await asyncio.sleep(1.5)
        servers.append(LocalNatsServer(tmp_path / "nats", port=servers[0].port).start())
        await asyncio.sleep(3.0)
        stop.set()

    chaos = asyncio.create_task(outage())
    spec = CollectorSpec("binance_spot", ("BTC-USDT", "ETH-USDT"), (DataType.TRADE,))
    try:
        report = await run_collectors([spec], nats_url=servers[0].url, data_dir=tmp_path, source="sim", stop=stop,
                                      session_config=FAST, sim_options={"rate": 50.0})  # fmt: skip
        await chaos
        from marketprism.bus.publisher import connect

        nc = await connect(servers[-1].url)
        stored = await stream_messages(nc, "md.trade.>")
        await nc.close()
    finally:
        for s in servers:
            s.stop(kill=True)
    produced = report.collectors[0].records_by_type["trade"]
    assert produced > 300
    assert report.publisher.dropped == 0
    assert "not connected" in report.publisher.last_error or "ack" in report.publisher.last_error  # outage seen
    assert len(stored) == produced  # every trade stored exactly once across the outage
    for symbol in ("BTC-USDT", "ETH-USDT"):
        ids = sorted(int(m.headers["Nats-Msg-Id"].rsplit(":", 1)[1]) for m in stored if m.subject.endswith(symbol))
        assert ids == list(range(ids[0], ids[0] + len(ids)))  # contiguous: no trade missing


async def test_set_symbols_hot_reloads_on_the_live_connection(tmp_path: Path, nats_client) -> None:
    """Symbols added to a running collector flow within seconds; removed ones stop; no reconnect."""
    venue = get_venue("binance_usdm")
    cfg = SimConfig(mode="synthetic", venues=["binance_usdm"], symbols=["BTC-USDT", "ETH-USDT", "SOL-USDT"], rate=20.0)
    async with SimServer(cfg, host="127.0.0.1", port=0) as sim:
        sink = _Sink()
        collector = Collector(venue, ["BTC-USDT"], sink, data_types=[DataType.TRADE], ws_base=sim.ws_base(venue.name),
                              config=FAST)  # fmt: skip
        task = asyncio.create_task(collector.run())

        def trades(symbol: str) -> int:
            return sum(1 for r in sink if isinstance(r, Trade) and r.symbol == symbol)

        assert await wait_until(lambda: trades("BTC-USDT") > 5, 10)
        await collector.set_symbols(["BTC-USDT", "ETH-USDT", "SOL-USDT"])
        assert await wait_until(lambda: trades("ETH-USDT") > 5 and trades("SOL-USDT") > 5, 5)
        await collector.set_symbols(["SOL-USDT"])
        await asyncio.sleep(0.3)  # frames already on the wire when UNSUBSCRIBE left
        btc, eth = trades("BTC-USDT"), trades("ETH-USDT")
        await asyncio.sleep(1.0)
        assert (trades("BTC-USDT"), trades("ETH-USDT")) == (btc, eth)  # unsubscribed: nothing more
        sol = trades("SOL-USDT")
        assert await wait_until(lambda: trades("SOL-USDT") > sol + 5, 5)
        assert collector.symbols == ["SOL-USDT"]
        stats = collector.stats
        collector.stop()
        await task
        truth = sim.truth()
    assert stats.reconnects == 0 and stats.connections == 1  # one connection throughout
    assert truth["connections"]["binance_usdm"] == 1
    events = [(r.symbol, r.event, r.reason) for r in sink if isinstance(r, Status)]
    assert ("ETH-USDT", "connected", "subscribed") in events and ("SOL-USDT", "connected", "subscribed") in events
    assert ("BTC-USDT", "disconnected", "unsubscribed") in events
    with pytest.raises(ValueError, match="no symbols"):
        await collector.set_symbols([])


async def test_set_symbols_beyond_one_connection_opens_another() -> None:
    import dataclasses

    from marketprism.venues.base import Limits

    base = get_venue("okx_swap")
    venue = dataclasses.replace(base, limits=Limits(streams_per_connection=2, args_per_subscribe=2,
                                                    subscribe_messages_per_s=50))  # fmt: skip
    cfg = SimConfig(mode="synthetic", venues=["okx_swap"], symbols=["BTC-USDT", "ETH-USDT", "SOL-USDT"], rate=20.0)
    async with SimServer(cfg, host="127.0.0.1", port=0) as sim:
        sink = _Sink()
        collector = Collector(venue, ["BTC-USDT"], sink, data_types=[DataType.TRADE, DataType.DEPTH],
                              ws_base=sim.ws_base("okx_swap"), config=FAST)  # fmt: skip
        task = asyncio.create_task(collector.run())
        assert await wait_until(lambda: collector.stats.records > 5, 10)
        await collector.set_symbols(["BTC-USDT", "ETH-USDT", "SOL-USDT"])
        assert len(collector.sessions) == 3  # 2 streams per symbol, 2 per connection
        assert await wait_until(
            lambda: {r.symbol for r in sink if isinstance(r, Trade)} >= {"ETH-USDT", "SOL-USDT"}, 10
        )
        await collector.set_symbols(["SOL-USDT"])
        assert len(collector.sessions) == 1
        collector.stop()
        await task


async def test_control_plane_status_hot_reload_and_stop(tmp_path: Path, nats_server) -> None:
    """Over NATS request/reply: status, a symbols change (hot reload), then stop ends the run normally."""
    from marketprism.bus.publisher import connect
    from marketprism.control import request

    spec = CollectorSpec("bybit_linear", ("BTC-USDT",), (DataType.TRADE,))
    run = asyncio.create_task(
        run_collectors(
            [spec],
            nats_url=nats_server.url,
            data_dir=tmp_path,
            source="sim",
            session_config=FAST,
            sim_options={"symbols": ["BTC-USDT", "ETH-USDT"], "rate": 20.0},
        )
    )
    nc = await connect(nats_server.url)
    try:
        status: dict = {}

        async def poll_status() -> bool:
            nonlocal status
            try:
                status = await request(nc, "bybit_linear", "status", timeout_s=0.5)
            except Exception:
                return False
            return status["records"] > 5

        for _ in range(100):
            if await poll_status():
                break
            await asyncio.sleep(0.1)
        assert status["symbols"] == ["BTC-USDT"] and status["connected"] == 1
        reply = await request(nc, "bybit_linear", "symbols", {"symbols": ["BTC-USDT", "ETH-USDT"]})
        assert reply == {"symbols": ["BTC-USDT", "ETH-USDT"]}
        bad = await request(nc, "bybit_linear", "symbols", {"symbols": ["BTC-USDT"], "data_types": ["candles"]})
        assert "candles" in bad["error"]
        await asyncio.sleep(1.5)
        assert await request(nc, "bybit_linear", "stop") == {"ok": True}
        report = await asyncio.wait_for(run, 15)  # the run ends by itself once its collector stopped
    finally:
        await nc.close()
    msgs = await _stored(nats_server.url, "md.trade.bybit.>")
    assert {m.subject for m in msgs} == {"md.trade.bybit.perpetual.BTC-USDT", "md.trade.bybit.perpetual.ETH-USDT"}
    assert report.publisher.dropped == 0


async def _stored(url: str, subject: str) -> list:
    from marketprism.bus.publisher import connect

    nc = await connect(url)
    try:
        return await stream_messages(nc, subject)
    finally:
        await nc.close()


async def test_resubscribe_over_the_control_plane_brings_a_fresh_okx_snapshot(tmp_path: Path, nats_server) -> None:
    """The order-book processor resyncs one OKX symbol by asking its collector to resubscribe it."""
    from marketprism.bus.publisher import connect
    from marketprism.control import request
    from marketprism.records import Depth

    spec = CollectorSpec("okx_spot", ("BTC-USDT", "ETH-USDT"), (DataType.DEPTH,))
    run = asyncio.create_task(
        run_collectors(
            [spec],
            nats_url=nats_server.url,
            data_dir=tmp_path,
            source="sim",
            session_config=FAST,
            sim_options={"rate": 20.0},
        )
    )
    nc = await connect(nats_server.url)
    snapshots: list[str] = []

    async def on_depth(msg) -> None:
        from marketprism.bus.codec import decode_subject

        depth = decode_subject(msg.subject, msg.data)
        assert isinstance(depth, Depth)
        if depth.is_snapshot:
            snapshots.append(depth.symbol)

    await nc.subscribe("md.depth.okx.>", cb=on_depth)
    try:
        assert await wait_until(lambda: sorted(snapshots) == ["BTC-USDT", "ETH-USDT"], 10)
        reply = await request(nc, "okx_spot", "resubscribe", {"symbols": ["ETH-USDT"]})
        assert reply == {"resubscribed": ["ETH-USDT"]}
        assert await wait_until(lambda: snapshots.count("ETH-USDT") == 2, 5)
        await asyncio.sleep(0.5)
        assert snapshots.count("BTC-USDT") == 1  # the other symbol was not touched
        assert "error" in await request(nc, "okx_spot", "resubscribe", {"nope": 1})
        await request(nc, "okx_spot", "stop")
        await asyncio.wait_for(run, 15)
    finally:
        await nc.close()
