"""The storage writer: every record on the bus into the hot store, exactly once.

Reading: a durable JetStream push consumer (``ack_policy=all``, flow control) over ``md.>``. Each start
(re)creates it at the message right after the position committed in the store, so a restart or a crash
resumes exactly where the stored data ends; on its first start it takes the whole stream (never "from the
newest"). Acks (after each commit) let the server track progress; ``max_ack_pending`` bounds what it sends
ahead of them, so a slow store slows the bus consumer down (back-pressure) instead of filling memory.

Deliveries are read by default on a second, lean connection (``marketprism.bus.delivery``: bulk ``HMSG`` parsing,
``Nats-Msg-Id`` by position, flow control and heartbeats answered there), about 5x less event-loop time a
message than nats-py's general subscription path (``fast_delivery=False`` keeps that one). The consumer, acks,
the dead-letter stream and the control plane stay on the nats-py client. A lost delivery connection is a
delivery gap like a slow-consumer cut: what came before is stored and the consumer recreated after it.

Batching: messages are kept until ``batch_rows`` or ``batch_seconds``, then grouped by data type, decoded
in one pass per type (``TableSpec.frame``: polars' ndjson reader on the concatenated payloads) and handed
to the store with the stream sequence of the batch's last message. The store commits rows and that
position together (``HotStore.commit``); only then is the batch acked. After a crash, messages at or below
the stored position are redelivered and skipped, so nothing is lost and nothing stored twice. Decoding runs in a
worker thread, the next batch's beside the current one's commit; commits themselves stay one at a time, in order.

Poison: a payload that does not decode as its subject's record type, or a subject with no record type, is
published with its reason to the dead-letter stream (``mp.dlq.<original subject>``) before the batch
commits; the rest of the batch is stored. Store errors are counted, logged and retried with a capped
backoff, holding the batch (and, through ``max_ack_pending``, the consumer).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import tempfile
import time
import uuid
from collections import Counter, defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import msgspec
import orjson
import polars as pl
from nats.aio.client import Client as NATS
from nats.js import JetStreamContext
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy, RetentionPolicy, StorageType, StreamConfig
from nats.js.errors import NotFoundError

from marketprism.bus.delivery import Delivery, DeliveryError, DeliveryReader, endpoint_of
from marketprism.bus.stream import MarketDataStream, ensure_stream
from marketprism.control import control_subject
from marketprism.metrics import WriterMetrics
from marketprism.store.schema import TableSpec, table_spec

log = logging.getLogger(__name__)

WRITER = "storage_writer"  # its name on the control plane: mp.control.storage_writer.<verb>
DLQ_STREAM = "MARKET_DATA_DLQ"
DLQ_PREFIX = "mp.dlq"


class HotStore(Protocol):
    backend: str

    def position(self, consumer: str) -> int: ...

    def resume(self, consumer: str) -> tuple[int, int | None]:
        """(stream position to resume after, last seq of an uncommitted batch to re-form exactly, or None)."""
        ...

    def commit(
        self, frames: Sequence[tuple[TableSpec, pl.DataFrame]], consumer: str, last_seq: int, first_seq: int = 0
    ) -> int: ...

    def close(self) -> None: ...


@dataclass
class WriterStats:
    received: int = 0
    redelivered_skipped: int = 0
    stored: int = 0
    duplicates: int = 0  # rows whose natural key was already stored (a replay outside the bus's window)
    batches: int = 0
    dead_lettered: int = 0
    store_errors: int = 0
    delivery_gaps: int = 0  # deliveries lost on the way (slow-consumer cut): the consumer restarted after them
    stored_by_table: Counter[str] = field(default_factory=Counter)
    stored_by_type: Counter[str] = field(default_factory=Counter)
    dead_by_reason: Counter[str] = field(default_factory=Counter)
    last_commit_s: float = 0.0
    position: int = 0


@dataclass(slots=True)
class _Msg:
    seq: int
    subject: str
    data: bytes
    key: str | None
    raw: Any  # for the ack: the nats Msg, or the reply subject (bytes) of a lean delivery


class _LeanSub:
    """The lean delivery reader where the nats-py path keeps its subscription."""

    def __init__(self, reader: DeliveryReader):
        self.reader = reader

    async def unsubscribe(self) -> None:
        self.reader.close()


def stream_seq(reply: str) -> int:
    """The stream sequence from a JetStream ack subject (v1 ``$JS.ACK.<stream>.<consumer>.<n>.<sseq>...`` or
    v2 with domain and account hash)."""
    return ack_sequences(reply)[0]


def ack_sequences(reply: str) -> tuple[int, int]:
    """(stream sequence, consumer sequence) from a JetStream ack subject: v1
    ``$JS.ACK.<stream>.<consumer>.<delivered>.<sseq>.<cseq>.<ts>.<pending>`` or v2 (domain and account hash first)."""
    tokens = reply.split(".")
    i = 5 if len(tokens) == 9 else 7
    return int(tokens[i]), int(tokens[i + 1])


class StorageWriter:
    def __init__(
        self,
        nc: NATS,
        store: HotStore,
        *,
        consumer: str = "storage_writer",
        stream: MarketDataStream | None = None,
        subject: str = "md.>",
        batch_rows: int = 100_000,
        batch_seconds: float = 1.0,
        max_ack_pending: int | None = None,
        retry_cap_s: float = 30.0,
        fast_delivery: bool = True,
    ):
        if batch_rows <= 0 or batch_seconds <= 0:
            raise ValueError("batch_rows and batch_seconds must be > 0")
        self.nc = nc
        self.store = store
        self.consumer = consumer
        self.stream = stream or MarketDataStream()
        self.subject = subject
        self.batch_rows = batch_rows
        self.batch_seconds = batch_seconds
        # What the server may send ahead of the acks: two batches, so the next one arrives while one commits. At a
        # few hundred bytes a record that can pass nats-server's per-client buffer (64 MB) if the reader stalls; the
        # server then cuts the delivery connection and the writer restarts after what it stored (_resubscribe).
        self.max_ack_pending = max_ack_pending or min(max(2 * batch_rows, 20_000), 200_000)
        self._ack_pending_given = max_ack_pending is not None
        self.retry_cap_s = retry_cap_s
        # Read deliveries on a lean connection of their own (marketprism.bus.delivery) instead of a nats-py
        # subscription; decided again in run(): a client this reader cannot imitate (TLS, nkeys) keeps nats-py.
        self.fast_delivery = fast_delivery
        self._reader: DeliveryReader | None = None
        self.stats = WriterStats()
        self.metrics = WriterMetrics()
        self._stream_last = 0  # the stream's last sequence when last asked (for the lag metric)
        self._cut_at: int | None = None  # a crashed run's uncommitted batch ends here: re-form it exactly
        self._last_cseq = 0  # consumer sequence of the last delivery taken: a jump means deliveries were lost
        self._gap_at: int | None = None
        self._last_msg_at = time.monotonic()
        self.idle_check_s = 3.0  # quiet this long: ask the server whether deliveries went missing at the tail
        self._buf: list[_Msg] = []
        self._cut_last = 0  # stream seq of the last message of the last batch taken out of the buffer
        self._committing: asyncio.Task[None] | None = None  # the batch being committed, beside the next one's decoding
        self._first_at = 0.0
        self._last_seen = 0
        self._stop = asyncio.Event()
        self._wake = asyncio.Event()

    def stop(self) -> None:
        self._stop.set()
        self._wake.set()

    async def run(self) -> None:
        js = self.nc.jetstream()
        await ensure_stream(js, self.stream)
        await ensure_dlq(js)
        position, self._cut_at = await asyncio.to_thread(self.store.resume, self.consumer)
        self.stats.position = self._last_seen = self._cut_last = position
        if self.fast_delivery and endpoint_of(self.nc) is None:
            log.info("storage writer: the lean delivery reader cannot imitate this connection (TLS or credentials);"
                     " reading through nats-py")  # fmt: skip
            self.fast_delivery = False
        if not self.fast_delivery and not self._ack_pending_given:
            # nats-py reads its socket more slowly (~28 µs a message): a smaller window keeps the server's buffer
            # for it below the slow-consumer cut (measured: 200k in flight is cut about once a second).
            self.max_ack_pending = min(self.max_ack_pending, 100_000)
        sub = await self._subscribe(js)
        log.info("storage writer %s: %s from stream position %d (%s delivery)", self.consumer, self.store.backend,
                 self._last_seen, "lean" if self.fast_delivery else "nats-py")  # fmt: skip
        control = await self.nc.subscribe(control_subject(WRITER, "*"), cb=self._control)
        try:
            while not self._stop.is_set():
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), self._until_due())
                self._wake.clear()
                while self._buf and self._ready():
                    await self._flush()
                if self._gap_at is None and time.monotonic() - self._last_msg_at > self.idle_check_s:
                    await self._check_tail(js)
                if self._gap_at is not None:
                    sub = await self._resubscribe(js, sub)
            # What is already here is stored before the writer goes (but never a part of a crashed batch).
            while self._buf and (self._cut_at is None or self._ready()):
                await self._flush()
            await self._settle()
        finally:
            if self._committing is not None and not self._committing.done():
                with contextlib.suppress(Exception):  # leaving on an error: the batch in hand still completes
                    await self._committing
            with contextlib.suppress(Exception):
                await control.unsubscribe()
            with contextlib.suppress(Exception):
                await sub.unsubscribe()  # the consumer stays; the next run recreates it at the stored position

    async def _subscribe(self, js: JetStreamContext) -> Any:
        """(Re)create the consumer right after the stored position and subscribe to it.

        The store's position is the truth; the consumer is only a cursor. A consumer kept from a crashed run
        would send new messages first and redeliver the unacked ones only after ack_wait, and an ack-all of the
        new ones would ack the lost ones too; so it is always recreated from the position.
        """
        with contextlib.suppress(NotFoundError):
            await js.delete_consumer(self.stream.name, self.consumer)
        policy, start_seq = DeliverPolicy.ALL, None
        if self._last_seen:
            policy, start_seq = DeliverPolicy.BY_START_SEQUENCE, self._last_seen + 1
        self._last_cseq, self._gap_at = 0, None
        # A fresh subject per subscription: deliveries still in flight for a consumer this writer replaced (after a
        # gap) can never reach the new one's callback.
        deliver = f"_mp.deliver.{self.consumer}.{uuid.uuid4().hex[:12]}"
        if self.fast_delivery:
            return await self._subscribe_lean(js, deliver, policy, start_seq)
        return await js.subscribe(
            self.subject,
            durable=self.consumer,
            stream=self.stream.name,
            cb=self._on_message,
            manual_ack=True,
            pending_msgs_limit=2 * self.max_ack_pending + 1000,
            pending_bytes_limit=-1,
            config=ConsumerConfig(
                durable_name=self.consumer,
                deliver_subject=deliver,
                deliver_policy=policy,
                opt_start_seq=start_seq,
                ack_policy=AckPolicy.ALL,
                ack_wait=300.0,  # a slow store must not trigger redeliveries of what it holds
                max_ack_pending=self.max_ack_pending,
                flow_control=True,
                idle_heartbeat=5.0,
            ),
        )

    async def _subscribe_lean(
        self, js: JetStreamContext, deliver: str, policy: DeliverPolicy, start_seq: int | None
    ) -> _LeanSub:
        """The lean path: subscribe the delivery reader first (the server has the interest before the consumer
        exists), then create the consumer with the same settings as the nats-py path (flow control really on)."""
        endpoint = endpoint_of(self.nc)
        if endpoint is None:  # the control connection is itself reconnecting: the caller retries
            raise DeliveryError("the NATS client is not connected")
        reader = await DeliveryReader.open(endpoint, deliver, self._on_deliveries, on_close=self._on_delivery_closed,
                                           name=f"marketprism-{self.consumer}-delivery")  # fmt: skip
        config = ConsumerConfig(
            durable_name=self.consumer,
            deliver_subject=deliver,
            filter_subject=self.subject,
            deliver_policy=policy,
            opt_start_seq=start_seq,
            ack_policy=AckPolicy.ALL,
            ack_wait=300.0,
            max_ack_pending=self.max_ack_pending,
            flow_control=True,
            idle_heartbeat=5.0,
        )
        self._reader = reader  # before the consumer exists: a cut while it is being created is a gap too
        try:
            await js.add_consumer(self.stream.name, config)
        except BaseException:
            reader.close()
            raise
        return _LeanSub(reader)

    def _on_delivery_closed(self, reader: DeliveryReader) -> None:
        """The delivery connection was lost (the server cut it, or went away): nothing that was on the way can be
        trusted to arrive, so it is a gap at the next consumer sequence, like a jump."""
        if reader is not self._reader or reader.error is None or self._gap_at is not None:
            return  # an old reader, a close of ours, or a gap already being handled
        log.warning("storage writer: delivery connection lost (%s)", reader.error)
        self._gap_at = self._last_cseq + 1
        self._last_seen = self._held_last()
        self._wake.set()

    async def _check_tail(self, js: JetStreamContext) -> None:
        """Deliveries lost at the end of what the server sent show no jump (nothing follows them): when nothing
        arrives for a while, compare what the server says it delivered with what reached us."""
        self._last_msg_at = time.monotonic()  # next check one period from now
        try:
            info = await js.consumer_info(self.stream.name, self.consumer)
        except Exception as exc:  # informative only; the next period asks again
            log.debug("storage writer: consumer info failed: %s", exc)
            return
        delivered = int(info.delivered.consumer_seq or 0) if info.delivered else 0
        if delivered > self._last_cseq:
            self._gap_at = self._last_cseq + 1
            self._last_seen = self._held_last()

    async def _resubscribe(self, js: JetStreamContext, sub: Any) -> Any:
        """Deliveries were lost on the way (e.g. the server cut a slow client): store what came before the gap,
        then start over right after it. Acking past a gap would ack the lost messages with it."""
        self.stats.delivery_gaps += 1
        log.warning("storage writer: delivery gap at consumer seq %s; resuming from stream seq %d",
                    self._gap_at, self._last_seen)  # fmt: skip
        with contextlib.suppress(Exception):
            await sub.unsubscribe()
        while self._buf:
            await self._flush()
        await self._settle()
        delay = 0.2
        while True:  # the connection may itself be reconnecting after the cut: retry, capped
            try:
                return await self._subscribe(js)
            except Exception as exc:
                log.warning("storage writer: resubscribe failed (%s); retrying in %.1fs", exc, delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 5.0)

    async def _control(self, msg: Any) -> None:
        verb = msg.subject.rsplit(".", 1)[1]
        if verb == "stop":
            self.stop()
        if verb == "migrate":  # the hot DuckDB file is this process's: hot->cold runs here, beside the commits
            await self._migrate(msg)
            return
        if verb == "query":  # ...and so do queries that need the hot rows (marketprism query from elsewhere)
            await self._query(msg)
            return
        s = self.stats
        body = {"ok": True, "backend": self.store.backend, "position": s.position, "stored": s.stored,
                "buffered": len(self._buf), "dead_lettered": s.dead_lettered,
                "store_errors": s.store_errors}  # fmt: skip
        if msg.reply:
            await msg.respond(orjson.dumps(body))

    async def _migrate(self, msg: Any) -> None:
        from marketprism.store.duck import DuckDBStore
        from marketprism.store.migrate import migrate

        try:
            if not isinstance(self.store, DuckDBStore):
                raise ValueError(f"hot->cold migration runs on a DuckDB hot store, not {self.store.backend}")
            args = orjson.loads(msg.data or b"{}")
            summary = await asyncio.to_thread(migrate, self.store, args["parquet_root"],
                                              retention_days=int(args.get("retention_days", 7)))  # fmt: skip
            body: dict[str, Any] = {"ok": True, "summary": summary.as_dict()}
        except Exception as exc:  # reported to the asker; the writer carries on
            log.error("storage writer: migration failed: %s", exc)
            body = {"ok": False, "error": f"{type(exc).__name__}: {exc}"}
        if msg.reply:
            await msg.respond(orjson.dumps(body, default=str))

    async def _query(self, msg: Any) -> None:
        """Run SQL over hot + cold on this process's connection; the result goes to a Parquet file whose path is
        the reply (a result can be larger than a NATS message; the asker reads and deletes the file)."""
        from marketprism.store.duck import DuckDBStore
        from marketprism.store.query import QuerySurface

        def run(sql: str, root: str | None) -> dict[str, Any]:
            if not isinstance(self.store, DuckDBStore):
                raise ValueError(f"queries through the writer need a DuckDB hot store, not {self.store.backend}")
            with QuerySurface(parquet_root=root, store=self.store) as surface:
                df = surface.sql(sql)
            fd, path = tempfile.mkstemp(prefix="marketprism-query-", suffix=".parquet")
            os.close(fd)
            df.write_parquet(path)
            return {"ok": True, "path": path, "rows": df.height}

        try:
            args = orjson.loads(msg.data or b"{}")
            body = await asyncio.to_thread(run, args["sql"], args.get("parquet_root"))
        except Exception as exc:  # reported to the asker; the writer carries on
            body = {"ok": False, "error": f"{type(exc).__name__}: {exc}"}
        if msg.reply:
            await msg.respond(orjson.dumps(body))

    def _held_last(self) -> int:
        """The stream seq of the last message this writer holds (buffered, being committed, or stored)."""
        return self._buf[-1].seq if self._buf else self._cut_last

    def _ready(self) -> bool:
        if self._cut_at is not None:  # only the whole crashed batch, never a part of it (see the store's resume)
            return self._buf[-1].seq >= self._cut_at
        return len(self._buf) >= self.batch_rows or self._due()

    def _until_due(self) -> float:
        if not self._buf:
            return self.batch_seconds
        return max(0.0, self._first_at + self.batch_seconds - time.monotonic())

    def _due(self) -> bool:
        return time.monotonic() >= self._first_at + self.batch_seconds

    def _on_deliveries(self, items: list[Delivery]) -> None:
        """The lean path's ``_on_message``, for one read's deliveries at once: the same rules, message by message
        (consumer-sequence gap, redelivery skip by stream sequence, batch wake-up)."""
        now = time.monotonic()
        self._last_msg_at = now
        if self._gap_at is not None:
            return  # a delivery went missing: nothing after it is taken until the consumer restarts
        stats, buf = self.stats, self._buf
        n0, last_cseq, last_seen = len(buf), self._last_cseq, self._last_seen
        try:
            for reply, subject, data, key in items:
                tokens = reply.split(b".")
                i = 5 if len(tokens) == 9 else 7
                seq, cseq = int(tokens[i]), int(tokens[i + 1])
                if cseq != last_cseq + 1 and cseq > last_cseq:
                    self._gap_at = cseq
                    last_seen = self._held_last()
                    self._wake.set()
                    return
                last_cseq = cseq
                if seq <= last_seen:  # redelivered: already stored (position) or already held in the buffer
                    stats.redelivered_skipped += 1
                    if seq <= stats.position and not buf and self._reader is not None:
                        with contextlib.suppress(DeliveryError):
                            self._reader.ack(reply)  # acks the stored range the crash left unacked
                    continue
                last_seen = seq
                if not buf:
                    self._first_at = now
                buf.append(_Msg(seq, subject, data, key, reply))
        finally:
            self._last_cseq, self._last_seen = last_cseq, last_seen
            stats.received += len(buf) - n0
        if len(buf) >= self.batch_rows:
            self._wake.set()

    async def _on_message(self, msg: Any) -> None:
        self._last_msg_at = time.monotonic()
        if self._gap_at is not None:
            return  # a delivery went missing: nothing after it is taken until the consumer restarts
        seq, cseq = ack_sequences(msg.reply)
        if cseq != self._last_cseq + 1 and cseq > self._last_cseq:
            self._gap_at = cseq
            self._last_seen = self._held_last()
            self._wake.set()
            return
        self._last_cseq = cseq
        if seq <= self._last_seen:  # redelivered: already stored (position) or already held in the buffer
            self.stats.redelivered_skipped += 1
            if seq <= self.stats.position and not self._buf:
                await msg.ack()  # acks the stored range the crash left unacked
            return
        self._last_seen = seq
        self.stats.received += 1
        if not self._buf:
            self._first_at = time.monotonic()
        headers = msg.headers
        self._buf.append(_Msg(seq, msg.subject, msg.data, headers.get("Nats-Msg-Id") if headers else None, msg))
        if len(self._buf) >= self.batch_rows:
            self._wake.set()

    async def _flush(self) -> None:
        """Take the next batch out of the buffer and decode it (in a worker thread, while the previous batch is still
        being committed), dead-letter its poison, then start its commit once the previous one is done: commits stay
        one at a time and in order, each acked only after it is committed."""
        size = self.batch_rows
        if self._cut_at is not None:
            size = sum(1 for m in self._buf if m.seq <= self._cut_at)
            self._cut_at = None
        batch, self._buf = self._buf[:size], self._buf[size:]
        self._cut_last = batch[-1].seq
        self._first_at = time.monotonic()  # what is left is due one period from now at the latest
        decoding = asyncio.ensure_future(asyncio.to_thread(self._frames, batch))
        try:
            await self._settle()
        finally:
            frames, dead = await decoding
        if dead:
            await self._dead_letter(dead)
        self._committing = asyncio.create_task(self._commit(batch, frames))

    async def _settle(self) -> None:
        """Wait for the batch being committed (its errors are raised here)."""
        task, self._committing = self._committing, None
        if task is not None:
            await task

    async def _commit(self, batch: list[_Msg], frames: list[tuple[TableSpec, pl.DataFrame]]) -> None:
        last_seq = batch[-1].seq
        delay = 0.5
        while True:
            t0 = time.perf_counter()
            try:
                inserted = await asyncio.to_thread(self.store.commit, frames, self.consumer, last_seq, batch[0].seq)
                break
            except Exception as exc:  # the store is down or full: hold the batch and try again
                self.stats.store_errors += 1
                await self._sync_metrics()
                log.error(
                    "storage writer: commit of %d messages failed (%s); retrying in %.1fs", len(batch), exc, delay
                )
                if self._stop.is_set() and delay >= self.retry_cap_s:
                    raise
                await asyncio.sleep(delay)
                delay = min(delay * 2, self.retry_cap_s)
        rows = sum(df.height for _, df in frames)
        self.stats.last_commit_s = time.perf_counter() - t0
        self.stats.batches += 1
        self.stats.stored += inserted
        self.stats.duplicates += rows - inserted
        for spec, df in frames:
            self.stats.stored_by_table[spec.table] += df.height
            self.stats.stored_by_type[spec.data_type] += df.height
        self.stats.position = last_seq
        last = batch[-1].raw  # ack_policy=all: acks the whole batch
        if isinstance(last, bytes):  # a lean delivery: acked on the client's connection, in order with its requests
            await self.nc.publish(last.decode())
        else:
            await last.ack()
        await self._sync_metrics()

    async def _sync_metrics(self) -> None:
        s = self.stats
        with contextlib.suppress(Exception):  # the lag is informative; never fail a batch over it
            info = await self.nc.jetstream().stream_info(self.stream.name)
            self._stream_last = int(info.state.last_seq)
        self.metrics.sync(stored=s.stored_by_type, dead=s.dead_by_reason, duplicates=s.duplicates,
                          errors_=s.store_errors, commit_s=s.last_commit_s,
                          lag=max(0, self._stream_last - s.position))  # fmt: skip

    def _frames(self, batch: list[_Msg]) -> tuple[list[tuple[TableSpec, pl.DataFrame]], list[tuple[_Msg, str]]]:
        by_type: dict[str, list[_Msg]] = defaultdict(list)
        dead: list[tuple[_Msg, str]] = []
        for m in batch:
            parts = m.subject.split(".", 2)
            by_type[parts[1] if len(parts) > 2 else ""].append(m)
        frames: list[tuple[TableSpec, pl.DataFrame]] = []
        for data_type, msgs in by_type.items():
            try:
                spec = table_spec(data_type)
            except KeyError as exc:
                dead.extend((m, f"unknown data type: {exc}") for m in msgs)
                continue
            try:
                df = spec.frame([m.data for m in msgs], [m.key or _key_of(spec, m.data) for m in msgs])
            except Exception:  # some payload does not fit: find which, one by one
                good: list[_Msg] = []
                for m in msgs:
                    try:
                        spec.validate(m.data)
                        good.append(m)
                    except (msgspec.DecodeError, ValueError) as exc:
                        dead.append((m, f"{type(exc).__name__}: {exc}"))
                if not good:
                    continue
                try:
                    df = spec.frame([m.data for m in good], [m.key or _key_of(spec, m.data) for m in good])
                except Exception as exc:  # valid records the frame still rejects: dead-letter them, never block
                    dead.extend((m, f"{type(exc).__name__}: {exc}") for m in good)
                    continue
            frames.append((spec, df))
        return frames, dead

    async def _dead_letter(self, dead: list[tuple[_Msg, str]]) -> None:
        js = self.nc.jetstream()
        for m, reason in dead:
            headers = {
                "Nats-Msg-Id": f"dlq:{self.stream.name}:{m.seq}",
                "MP-Reason": reason[:1000],
                "MP-Subject": m.subject,
                "MP-Stream-Seq": str(m.seq),
            }
            await js.publish(f"{DLQ_PREFIX}.{m.subject}", m.data, headers=headers, stream=DLQ_STREAM)
            self.stats.dead_lettered += 1
            self.stats.dead_by_reason[reason.split(":", 1)[0]] += 1
            log.warning("storage writer: dead-lettered %s seq %d: %s", m.subject, m.seq, reason)


def _key_of(spec: TableSpec, payload: bytes) -> str:
    """A message without ``Nats-Msg-Id`` (another publisher): the key from the record itself."""
    return spec.validate(payload).natural_key()


async def ensure_dlq(js: JetStreamContext) -> None:
    try:
        await js.stream_info(DLQ_STREAM)
    except NotFoundError:
        await js.add_stream(
            StreamConfig(
                name=DLQ_STREAM,
                subjects=[f"{DLQ_PREFIX}.>"],
                retention=RetentionPolicy.LIMITS,
                storage=StorageType.FILE,
                max_age=30 * 24 * 3600.0,
                duplicate_window=120.0,
            )
        )
