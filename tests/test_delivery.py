"""The lean delivery reader (marketprism.bus.delivery) against a real nats-server, and the storage writer on it."""

from __future__ import annotations

import asyncio
import socket
import uuid
from pathlib import Path

import pytest
from nats.js.api import AckPolicy, ConsumerConfig

from marketprism.bus.delivery import Delivery, DeliveryError, DeliveryReader, Endpoint, endpoint_of
from marketprism.bus.publisher import connect
from marketprism.bus.server import LocalNatsServer
from marketprism.store.duck import DuckDBStore
from marketprism.store.writer import StorageWriter
from tests.store_util import wait_for
from tests.test_store import publish, run_writer, trade

HB = b"NATS/1.0 100 Idle Heartbeat\r\nNats-Last-Consumer: 7\r\nNats-Last-Stream: 9\r\n\r\n"
FC = b"NATS/1.0 100 FlowControl Request\r\n\r\n"
STALLED = b"NATS/1.0 100 Idle Heartbeat\r\nNats-Last-Consumer: 8\r\nNats-Consumer-Stalled: $JS.FC.S.c.stall\r\n\r\n"


def hmsg(subject: bytes, reply: bytes, headers: bytes, payload: bytes) -> bytes:
    size = len(headers) + len(payload)
    head = b"HMSG %s 1 %s%d %d\r\n" % (subject, reply + b" " if reply else b"", len(headers), size)
    return head + headers + payload + b"\r\n"


def stream_of_frames() -> bytes:
    """Everything the server may send a push consumer's connection, in one run of bytes."""
    return b"".join([
        b"INFO {\"server_id\":\"x\",\"headers\":true}\r\n",
        hmsg(b"md.trade.a", b"$JS.ACK.S.c.1.1.1.0.2", b"NATS/1.0\r\nNats-Msg-Id: k1\r\n\r\n", b'{"a":1}'),
        hmsg(b"md.trade.b", b"$JS.ACK.S.c.1.2.2.0.1", b"NATS/1.0\r\nOther: x\r\nNats-Msg-Id:  k 2 \r\n\r\n", b""),
        b"PING\r\n",
        hmsg(b"_d.x", b"$JS.FC.S.c.fc1", FC, b""),
        hmsg(b"_d.x", b"", HB, b""),
        hmsg(b"md.depth.c", b"$JS.ACK.S.c.1.3.3.0.0", b"NATS/1.0\r\nA: b\r\n\r\n", b"HMSG 1 2\r\n\r\n{}"),
        b"MSG md.plain 1 reply.to 5\r\nhello\r\n",
        b"MSG md.noreply 1 0\r\n\r\n",
        hmsg(b"_d.x", b"", STALLED, b""),
        b"+OK\r\n",
    ])  # fmt: skip


WANT: list[Delivery] = [
    (b"$JS.ACK.S.c.1.1.1.0.2", "md.trade.a", b'{"a":1}', "k1"),
    (b"$JS.ACK.S.c.1.2.2.0.1", "md.trade.b", b"", "k 2"),
    (b"$JS.ACK.S.c.1.3.3.0.0", "md.depth.c", b"HMSG 1 2\r\n\r\n{}", None),
    (b"reply.to", "md.plain", b"hello", None),
    (b"", "md.noreply", b"", None),
]


async def socket_reader(on_batch) -> tuple[DeliveryReader, socket.socket]:  # type: ignore[no-untyped-def]
    """A reader on one end of a real socket pair (what it writes can be read back from the other end)."""
    ours, peer = socket.socketpair()
    reader = DeliveryReader(on_batch)
    await asyncio.get_running_loop().create_connection(lambda: reader, sock=ours)
    peer.setblocking(False)
    return reader, peer


async def drain(peer: socket.socket) -> bytes:
    await asyncio.sleep(0.05)
    out = b""
    while True:
        try:
            chunk = peer.recv(65536)
        except BlockingIOError:
            return out
        if not chunk:
            return out
        out += chunk


async def test_frames_split_at_every_byte_boundary_parse_identically() -> None:
    data = stream_of_frames()
    got: list[Delivery] = []
    reader, peer = await socket_reader(got.extend)
    reader.data_received(data)
    assert got == WANT
    assert (reader.stats.flow_controls, reader.stats.heartbeats, reader.stats.stalled_replies) == (1, 2, 1)
    assert (reader.stats.last_consumer_seq, reader.stats.last_stream_seq) == (8, 9)
    written = await drain(peer)
    # the PONG, the flow-control reply and the stalled consumer's reply, in the order asked
    assert written == b"PONG\r\nPUB $JS.FC.S.c.fc1 0\r\n\r\nPUB $JS.FC.S.c.stall 0\r\n\r\n"
    for cut in range(1, len(data)):
        got.clear()
        reader.data_received(data[:cut])
        reader.data_received(data[cut:])
        assert got == WANT, cut
        assert reader._buf == b""
    for step in (1, 7, 64):  # dribbled in small pieces too
        got.clear()
        for i in range(0, len(data), step):
            reader.data_received(data[i : i + step])
        assert got == WANT, step
    reader.close()
    peer.close()


async def test_a_status_message_hands_over_the_data_before_it_first() -> None:
    batches: list[list[Delivery]] = []
    reader, peer = await socket_reader(lambda items: batches.append(list(items)))
    reader.data_received(stream_of_frames())
    assert [len(b) for b in batches] == [2, 3]  # cut at the flow-control request: its reply follows the data
    reader.close()
    peer.close()


async def test_a_protocol_error_or_garbage_ends_the_reader_with_the_reason() -> None:
    got: list[Delivery] = []
    closed: list[DeliveryReader] = []
    reader, peer = await socket_reader(got.extend)
    reader.on_close = closed.append
    reader.data_received(hmsg(b"a", b"r", b"NATS/1.0\r\n\r\n", b"x") + b"-ERR 'Slow Consumer'\r\n")
    await asyncio.wait_for(reader.closed, 5)
    assert got == [(b"r", "a", b"x", None)]  # what came before the error is delivered
    assert reader.error and "Slow Consumer" in reader.error and closed == [reader]
    reader.data_received(hmsg(b"a", b"r", b"NATS/1.0\r\n\r\n", b"late"))
    assert len(got) == 1  # nothing after the end
    peer.close()
    reader2, peer2 = await socket_reader(got.extend)
    reader2.data_received(b"WHAT is this\r\n")
    await asyncio.wait_for(reader2.closed, 5)
    assert reader2.error and "unexpected protocol line" in reader2.error
    peer2.close()


# --- against a real nats-server ------------------------------------------------------------------------------


async def test_messages_and_msg_ids_arrive_in_order_from_a_real_server(nats_server: LocalNatsServer) -> None:
    nc = await connect(nats_server.url)
    got: list[Delivery] = []
    reader = await DeliveryReader.open(nats_server.url, "t.>", got.extend)
    await nc.publish("t.one", b"1", headers={"Nats-Msg-Id": "id-1"})
    await nc.publish("t.two", b"", reply="r.x")
    await nc.publish("t.three", b"3" * 100_000, headers={"X": "y", "Nats-Msg-Id": "id-3"})
    await nc.flush()
    assert await wait_for(lambda: len(got) == 3, 5)
    assert got == [(b"", "t.one", b"1", "id-1"), (b"r.x", "t.two", b"", None), (b"", "t.three", b"3" * 100_000, "id-3")]
    reader.publish("t.back", b"hi")  # the reader's own publishes go through
    sub = await nc.subscribe("t.echo")
    await nc.flush()  # the subscription is the server's before the reader publishes
    reader.ack("t.echo")
    msg = await sub.next_msg(timeout=15)
    assert msg.data == b""
    reader.close()
    await asyncio.wait_for(reader.closed, 5)
    assert reader.error is None
    await nc.close()


async def test_jetstream_flow_control_is_answered_and_heartbeats_never_reach_the_handler(
    nats_server: LocalNatsServer,
) -> None:
    nc = await connect(nats_server.url)
    js = nc.jetstream()
    await js.add_stream(name="FC", subjects=["fc.>"])
    n, payload = 4000, b"x" * 4000  # 16 MB: the server asks for flow control on the way
    for i in range(n):
        await nc.publish(f"fc.{i % 3}", payload, headers={"Nats-Msg-Id": f"m{i}"})
    await nc.flush()
    got: list[Delivery] = []
    deliver = f"_d.{uuid.uuid4().hex}"
    reader = await DeliveryReader.open(endpoint_of(nc) or nats_server.url, deliver, got.extend)
    await js.add_consumer("FC", ConsumerConfig(durable_name="c", deliver_subject=deliver, ack_policy=AckPolicy.ALL,
                                               flow_control=True, idle_heartbeat=0.5, max_ack_pending=n))  # fmt: skip
    assert await wait_for(lambda: len(got) == n, 30), (len(got), reader.stats)
    assert reader.stats.flow_controls >= 1  # answered: otherwise the server would have stopped sending
    assert [m[3] for m in got] == [f"m{i}" for i in range(n)] and all(m[2] == payload for m in got)
    reader.ack(got[-1][0])
    assert await wait_for(lambda: reader.stats.heartbeats >= 2, 5)
    assert len(got) == n  # the heartbeats were not handed over
    assert (reader.stats.last_consumer_seq, reader.stats.last_stream_seq) == (n, n)
    await reader.flush()
    info = await js.consumer_info("FC", "c")
    assert info.ack_floor.stream_seq == n  # the ack on the reader's own connection acked everything (ack all)
    reader.close()
    await nc.close()


async def test_a_server_that_goes_away_is_reported(tmp_path: Path) -> None:
    server = LocalNatsServer(tmp_path / "nats").start()
    closed: list[DeliveryReader] = []
    reader = await DeliveryReader.open(server.url, "x", lambda items: None, on_close=closed.append)
    server.stop(kill=True)
    await asyncio.wait_for(reader.closed, 10)
    assert reader.error and "connection lost" in reader.error and closed == [reader]
    with pytest.raises(DeliveryError):
        reader.ack("x")
    with pytest.raises(DeliveryError, match="cannot connect"):
        await DeliveryReader.open(server.url, "x", lambda items: None, timeout_s=2)


async def test_credentials_from_the_url_and_a_refusal_with_the_servers_reason(tmp_path: Path) -> None:
    server = LocalNatsServer(tmp_path / "nats", config="authorization { user: mp, password: s3cret }\n").start()
    try:
        url = f"nats://mp:s3cret@{server.host}:{server.port}"
        nc = await connect(url)
        ep = endpoint_of(nc)
        assert ep == Endpoint(server.host, server.port, "mp", "s3cret")
        got: list[Delivery] = []
        reader = await DeliveryReader.open(ep, "a", got.extend)
        await nc.publish("a", b"ok")
        assert await wait_for(lambda: got == [(b"", "a", b"ok", None)], 5)
        reader.close()
        await nc.close()
        with pytest.raises(DeliveryError, match="Authorization Violation"):
            await DeliveryReader.open(f"nats://mp:wrong@{server.host}:{server.port}", "a", got.extend)
    finally:
        server.stop(kill=True)
    assert Endpoint.from_url("nats://tok@h:1") == Endpoint("h", 1, token="tok")
    with pytest.raises(DeliveryError, match="tls"):
        Endpoint.from_url("tls://h:1")


# --- the storage writer on either path -----------------------------------------------------------------------


@pytest.mark.parametrize("fast", [True, False], ids=["lean", "nats-py"])
async def test_both_delivery_paths_store_the_same_rows(tmp_path: Path, nats_client, fast: bool) -> None:
    js = nats_client.jetstream()
    await publish(nats_client, [trade(i) for i in range(1500)])
    await js.publish("md.trade.binance.spot.BTC-USDT", b"not json")  # poison in the middle
    no_id = (b'{"exchange":"binance","market":"spot","symbol":"X","instrument":"X","ts":1,"recv_ts":1,'
             b'"trade_id":"x","price":"1","size":"1","side":"buy"}')  # fmt: skip
    await js.publish("md.trade.binance.spot.BTC-USDT", no_id)  # no Nats-Msg-Id: keyed from the record
    await publish(nats_client, [trade(i) for i in range(1500, 2000)])
    store = DuckDBStore(tmp_path / "hot.duckdb")
    w = StorageWriter(nats_client, store, batch_rows=300, batch_seconds=0.1, fast_delivery=fast)
    await run_writer(w, lambda: w.stats.position == 2002)
    assert w.fast_delivery is fast
    assert (store.count("trades"), w.stats.dead_lettered, w.stats.delivery_gaps) == (2001, 1, 0)
    assert store.query("SELECT key FROM trades WHERE trade_id = 'x'").item() == "trade:binance:spot:X:x"
    info = await js.consumer_info("MARKET_DATA", "storage_writer")
    assert info.ack_floor.stream_seq == 2002 and info.num_pending == 0
    assert bool(info.config.flow_control) is fast  # nats-py's subscribe turns flow control off (its own default)
    store.close()


async def test_the_writer_restarts_its_consumer_when_the_delivery_connection_is_cut(
    tmp_path: Path, nats_client
) -> None:
    await publish(nats_client, [trade(i) for i in range(3000)])
    store = DuckDBStore(tmp_path / "hot.duckdb")
    w = StorageWriter(nats_client, store, batch_rows=1000, batch_seconds=0.1)
    task = asyncio.create_task(w.run())
    try:
        assert await wait_for(lambda: w.stats.position == 3000, 20)
        first = w._reader
        assert first is not None and first._transport is not None
        first._transport.abort()  # the connection drops under the writer
        assert await wait_for(lambda: w.stats.delivery_gaps == 1 and w._reader is not first, 10)
        await publish(nats_client, [trade(i) for i in range(3000, 4000)])
        assert await wait_for(lambda: w.stats.position == 4000, 20)
    finally:
        w.stop()
        await task
    assert store.count("trades") == 4000 and w.stats.duplicates == 0
    store.close()
