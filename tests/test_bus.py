"""The bus against a real nats-server: stream setup, codec, Msg-Id dedupe, back-pressure, server restarts."""

from __future__ import annotations

import asyncio
from pathlib import Path

import msgspec
import pytest
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy

from marketprism.bus import codec
from marketprism.bus.publisher import JetStreamPublisher, connect
from marketprism.bus.server import LocalNatsServer, NatsServerError, free_port, nats_server_binary
from marketprism.bus.stream import MarketDataStream, ensure_stream
from marketprism.records import Depth, Status, Ticker, Trade


def trade(i: int, symbol: str = "BTC-USDT") -> Trade:
    return Trade(
        exchange="binance", market="spot", symbol=symbol, instrument=symbol.replace("-", ""), ts=i,
        recv_ts=i + 1, trade_id=str(i), price="61837.63000000", size="0.02000000", side="buy",
    )  # fmt: skip


async def stream_messages(nc, subject: str = "md.>") -> list:
    """Every message stored in the stream for ``subject``, read back with an ephemeral consumer."""
    js = nc.jetstream()
    info = await js.stream_info("MARKET_DATA")
    total = info.state.messages
    sub = await js.pull_subscribe(
        subject,
        stream="MARKET_DATA",
        config=ConsumerConfig(deliver_policy=DeliverPolicy.ALL, ack_policy=AckPolicy.NONE),
    )
    out = []
    while len(out) < total:
        try:
            msgs = await sub.fetch(min(1000, total - len(out)), timeout=2)
        except TimeoutError:
            break
        out.extend(msgs)
    await sub.unsubscribe()
    return out


def test_subjects_and_codec_round_trip() -> None:
    records = [
        trade(1),
        Depth(exchange="okx", market="perpetual", symbol="UNI-USD", instrument="UNI-USD-SWAP", ts=5, recv_ts=6,
              is_snapshot=True, bids=Depth.levels([("5.1", "3")]), asks=Depth.levels([("5.2", "0")]), seq=7,
              prev_seq=-1, checksum=-12),
        Ticker(exchange="bybit", market="perpetual", symbol="XRP-USDT", instrument="XRPUSDT", ts=1, recv_ts=2,
               bid_price="1.9531", bid_size="6203", ask_price="1.9535", ask_size="8415", seq=9),
        Status(exchange="binance", market="spot", symbol="BTC-USDT", instrument="BTCUSDT", ts=1, recv_ts=1,
               event="disconnected", connection="binance_spot/0#1@1", reason="closed: 1006"),
    ]  # fmt: skip
    for r in records:
        payload = codec.encode(r)
        assert codec.decode_subject(r.subject(), payload) == r
    assert records[1].subject() == "md.depth.okx.perpetual.UNI-USD"
    assert records[0].natural_key() == "trade:binance:spot:BTC-USDT:1"
    assert msgspec.json.decode(codec.encode(records[0]))["price"] == "61837.63000000"
    with pytest.raises(ValueError, match="not a market-data subject"):
        codec.subject_data_type("md.trade.binance")
    assert codec.subject_filter("trade", exchange="okx") == "md.trade.okx.*.*"


async def test_stream_creation_is_idempotent_and_configurable(nats_client) -> None:
    js = nats_client.jetstream()
    spec = MarketDataStream(max_age_s=3600, max_bytes=1 << 30)
    assert await ensure_stream(js, spec) == "unchanged"
    changed = MarketDataStream(max_age_s=7200, max_bytes=1 << 29, duplicate_window_s=60)
    assert await ensure_stream(js, changed) == "updated"
    info = await js.stream_info("MARKET_DATA")
    assert info.config.max_age == 7200 and info.config.max_bytes == 1 << 29
    assert info.config.duplicate_window == 60
    assert await ensure_stream(js, changed) == "unchanged"


def test_stream_config_validation_names_the_field() -> None:
    with pytest.raises(ValueError, match="max_age_s"):
        MarketDataStream(max_age_s=0)
    with pytest.raises(ValueError, match="max_bytes"):
        MarketDataStream(max_bytes=0)
    with pytest.raises(ValueError, match="duplicate_window_s"):
        MarketDataStream(max_age_s=60, duplicate_window_s=120)


async def test_publish_with_msg_id_dedupes_replays(nats_client) -> None:
    pub = JetStreamPublisher(nats_client, max_in_flight=100).start()
    for i in range(1000):
        pub.submit(trade(i))
    for i in range(500):  # a reconnect replay: the same natural keys again
        pub.submit(trade(i))
    await pub.close()
    assert pub.stats.published == 1500
    assert pub.stats.duplicates == 500
    assert pub.stats.dropped == 0
    msgs = await stream_messages(nats_client)
    assert len(msgs) == 1000
    assert msgs[0].headers["Nats-Msg-Id"] == "trade:binance:spot:BTC-USDT:0"
    assert codec.decode_subject(msgs[10].subject, msgs[10].data) == trade(10)


async def test_full_buffer_drops_are_counted_and_logged(nats_client, caplog) -> None:
    pub = JetStreamPublisher(nats_client, buffer_size=10)  # not started: nothing drains the buffer
    accepted = [pub.submit(trade(i)) for i in range(25)]
    assert accepted.count(True) == 10
    assert pub.stats.dropped == 15 and pub.stats.dropped_by_reason == {"buffer_full": 15}
    assert "dropped" in caplog.text
    pub.start()
    await pub.close()
    assert pub.stats.published == 10
    assert pub.submit(trade(99)) is False  # closed publishers count, never silently lose
    assert pub.stats.dropped_by_reason["closing"] == 1


async def test_missing_stream_is_retried_until_close_then_counted(nats_server: LocalNatsServer) -> None:
    nc = await connect(nats_server.url)  # no stream exists: JetStream answers "no responders"
    pub = JetStreamPublisher(nc, ack_timeout_s=0.5, retry_backoff_max_s=0.1).start()
    for i in range(5):
        pub.submit(trade(i))
    await asyncio.sleep(0.5)
    assert pub.stats.retries >= 5 and pub.stats.published == 0
    assert "no responders" in pub.stats.last_error or "not received" in pub.stats.last_error
    await pub.close(timeout_s=0.5)
    assert pub.stats.dropped == 5 and pub.stats.dropped_by_reason == {"shutdown": 5}
    await nc.close()


async def test_nats_killed_and_restarted_mid_run_loses_nothing_uncounted(tmp_path: Path) -> None:
    server = LocalNatsServer(tmp_path / "nats").start()
    nc = await connect(server.url, reconnect_time_wait=0.2)
    await ensure_stream(nc.jetstream(), MarketDataStream(max_age_s=3600, max_bytes=1 << 30))
    pub = JetStreamPublisher(nc, ack_timeout_s=1.0, retry_backoff_max_s=0.2, buffer_size=50_000).start()
    total = 6000
    try:
        for i in range(total):
            pub.submit(trade(i))
            if i % 500 == 0:
                await asyncio.sleep(0.02)
            if i == 2000:
                server.kill()  # SIGKILL mid-run
            if i == 4000:
                server = LocalNatsServer(tmp_path / "nats", port=server.port).start()
        assert await pub.flush(60)
        await pub.close()
        stored = await stream_messages(nc)
        keys = {m.headers["Nats-Msg-Id"] for m in stored}
        assert len(keys) == len(stored)  # no duplicates despite retries
        # Every record is either stored or counted as dropped.
        assert len(stored) + pub.stats.dropped == total
        assert len(stored) >= total - pub.stats.dropped
        assert pub.stats.last_error  # the outage was seen (and the records waited or were retried)
    finally:
        await nc.close()
        server.stop(kill=True)


def test_local_server_errors_are_clear(tmp_path: Path) -> None:
    assert Path(nats_server_binary()).name == "nats-server"
    port = free_port()
    with LocalNatsServer(tmp_path / "a", port=port) as first:
        assert first.url.endswith(str(port))
        with pytest.raises(NatsServerError, match="already in use"):
            LocalNatsServer(tmp_path / "b", port=port).start()
