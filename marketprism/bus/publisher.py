"""Asynchronous JetStream publisher with bounded in-flight acks and a bounded buffer.

Collectors call ``submit(record)``, which never blocks: the record is encoded and queued. A single
publishing task sends up to ``max_in_flight`` messages with ``publish_async`` and waits for their acks;
a failed or timed-out publish is retried (``Nats-Msg-Id`` makes the retry safe: JetStream drops the copy
it already stored). When the buffer is full the new record is dropped, counted and logged: never a
silent loss. Every submitted record ends up either acknowledged or counted in ``stats.dropped``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import deque
from dataclasses import dataclass, field

import orjson
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription

from marketprism import metrics
from marketprism.bus.codec import encode
from marketprism.records import Record

log = logging.getLogger(__name__)


@dataclass
class PublisherStats:
    submitted: int = 0
    published: int = 0
    duplicates: int = 0
    retries: int = 0
    dropped: int = 0
    dropped_by_reason: dict[str, int] = field(default_factory=dict)
    last_error: str = ""


class _Pending:
    __slots__ = ("attempts", "data_type", "msg_id", "payload", "subject")

    def __init__(self, subject: str, msg_id: str, payload: bytes, data_type: str):
        self.subject = subject
        self.msg_id = msg_id
        self.payload = payload
        self.data_type = data_type
        self.attempts = 0


def _hpub(item: _Pending, reply: bytes) -> bytes:
    """The HPUB protocol line for one message with its Nats-Msg-Id header.

    Built directly because nats-py's publish() validates and re-encodes headers on every call, which
    costs more than everything else a collector does per record.
    """
    hdr = b"NATS/1.0\r\nNats-Msg-Id: %s\r\n\r\n" % item.msg_id.encode()
    return b"HPUB %s %s %d %d\r\n%s%s\r\n" % (
        item.subject.encode(), reply, len(hdr), len(hdr) + len(item.payload), hdr, item.payload,
    )  # fmt: skip


class JetStreamPublisher:
    def __init__(
        self,
        nc: NATS,
        *,
        buffer_size: int = 200_000,
        max_in_flight: int = 4096,
        ack_timeout_s: float = 5.0,
        retry_backoff_max_s: float = 2.0,
        drop_log_every_s: float = 5.0,
    ):
        if buffer_size < 1 or max_in_flight < 1:
            raise ValueError("buffer_size and max_in_flight must be >= 1")
        self.nc = nc
        self._inbox = b""
        self._ack_sub: Subscription | None = None
        self._token = 0
        self._outstanding: dict[int, _Pending] = {}
        self._nacked: list[_Pending] = []
        self._window_done = asyncio.Event()
        self.buffer_size = buffer_size
        self.max_in_flight = max_in_flight
        self.ack_timeout_s = ack_timeout_s
        self.retry_backoff_max_s = retry_backoff_max_s
        self.drop_log_every_s = drop_log_every_s
        self.stats = PublisherStats()
        self._buffer: deque[_Pending] = deque()
        self._wakeup = asyncio.Event()
        self._idle = asyncio.Event()
        self._idle.set()
        self._closing = False
        self._task: asyncio.Task[None] | None = None
        self._inflight: list[_Pending] = []
        self._last_drop_log = 0.0
        self._drops_since_log = 0

    # --- producer side -----------------------------------------------------------------------------
    def submit(self, record: Record) -> bool:
        """Queue a record for publishing. Returns False when it was dropped (buffer full or closing)."""
        self.stats.submitted += 1
        if self._closing:
            self._drop("closing", 1)
            return False
        if len(self._buffer) >= self.buffer_size:
            self._drop("buffer_full", 1)
            return False
        self._buffer.append(_Pending(record.subject(), record.natural_key(), encode(record), record.data_type))
        self._idle.clear()
        self._wakeup.set()
        return True

    @property
    def buffered(self) -> int:
        return len(self._buffer)

    def _drop(self, reason: str, n: int) -> None:
        self.stats.dropped += n
        self.stats.dropped_by_reason[reason] = self.stats.dropped_by_reason.get(reason, 0) + n
        metrics.DROPPED.labels(reason).inc(n)
        self._drops_since_log += n
        now = time.monotonic()
        if now - self._last_drop_log >= self.drop_log_every_s:
            log.warning(
                "publisher dropped %d record(s) (%s); %d dropped in total, %d buffered",
                self._drops_since_log, reason, self.stats.dropped, len(self._buffer),
            )  # fmt: skip
            self._last_drop_log = now
            self._drops_since_log = 0

    # --- publishing task ---------------------------------------------------------------------------
    def start(self) -> JetStreamPublisher:
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name="jetstream-publisher")
        return self

    async def _run(self) -> None:
        backoff = 0.05
        while True:
            if not self._buffer:
                self._idle.set()
                if self._closing:
                    return
                self._wakeup.clear()
                await self._wakeup.wait()
                continue
            n = min(len(self._buffer), self.max_in_flight)
            batch = [self._buffer.popleft() for _ in range(n)]
            metrics.BUFFERED.set(len(self._buffer))
            self._inflight = batch
            failed = await self._publish_batch(batch)
            self._inflight = []
            if failed:
                self.stats.retries += len(failed)
                metrics.RETRIES.inc(len(failed))
                # Retried records go back to the front so per-subject order is kept as far as possible.
                self._buffer.extendleft(reversed(failed))
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, self.retry_backoff_max_s)
            else:
                backoff = 0.05

    async def _publish_batch(self, batch: list[_Pending]) -> list[_Pending]:
        """Send a window of messages, then wait for their acks (or the ack timeout)."""
        await self._ensure_inbox()
        nc = self.nc
        outstanding = self._outstanding
        self._window_done.clear()
        failed: list[_Pending] = []
        for i, item in enumerate(batch):
            item.attempts += 1
            if not nc.is_connected:
                failed.extend(batch[i:])
                self._note_error(ConnectionError("NATS not connected"))
                break
            self._token += 1
            reply = b"%s%d" % (self._inbox, self._token)
            outstanding[self._token] = item
            await nc._send_command(_hpub(item, reply))  # see _hpub: nats-py's publish() is 3x slower
        await nc._flush_pending()
        if outstanding:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._window_done.wait(), self.ack_timeout_s)
        if outstanding:
            self._note_error(TimeoutError(f"{len(outstanding)} ack(s) not received within {self.ack_timeout_s}s"))
            failed.extend(outstanding.values())
            outstanding.clear()
        failed.extend(self._nacked)
        self._nacked.clear()
        return failed

    async def _ensure_inbox(self) -> None:
        if self._ack_sub is None:
            prefix = self.nc.new_inbox()
            self._inbox = prefix.encode() + b"."
            self._ack_sub = await self.nc.subscribe(prefix + ".*", cb=self._on_ack)

    async def _on_ack(self, msg: Msg) -> None:
        token = int(msg.subject[len(self._inbox) :])
        item = self._outstanding.pop(token, None)
        if item is not None:
            data = msg.data
            if not data or b'"error"' in data:
                # A 503 no-responders status (stream missing) has an empty body.
                err = orjson.loads(data).get("error") if data else {"description": "no responders"}
                self._note_error(RuntimeError(f"JetStream rejected publish: {err}"))
                self._nacked.append(item)
            else:
                self.stats.published += 1
                metrics.PUBLISHED.labels(item.data_type).inc()
                if b'"duplicate"' in data:  # the server writes '"duplicate": true'
                    self.stats.duplicates += 1
                    metrics.DUPLICATES.inc()
        if not self._outstanding:
            self._window_done.set()

    def _note_error(self, exc: BaseException) -> None:
        text = f"{type(exc).__name__}: {exc}"
        if text != self.stats.last_error:
            log.warning("JetStream publish failed, will retry: %s", text)
        self.stats.last_error = text

    async def flush(self, timeout_s: float = 30.0) -> bool:
        """Wait until everything buffered is acknowledged. Returns False on timeout."""
        try:
            await asyncio.wait_for(self._idle.wait(), timeout_s)
            return True
        except TimeoutError:
            return False

    async def close(self, timeout_s: float = 30.0) -> None:
        """Flush, then stop. What could not be published in time is counted as dropped."""
        flushed = await self.flush(timeout_s)
        self._closing = True
        self._wakeup.set()
        if self._task is not None:
            if not flushed:
                self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        # Unacknowledged in-flight records may or may not be stored: they count as dropped (unconfirmed).
        lost = len(self._buffer) + len(self._inflight)
        if lost:
            self._drop("shutdown", lost)
            self._buffer.clear()
            self._inflight = []


async def connect(servers: str | list[str], name: str = "marketprism", **kwargs: object) -> NATS:
    """Connect with reconnects forever (a collector must outlive a nats-server restart)."""
    nc = NATS()

    async def on_error(exc: Exception) -> None:
        log.warning("NATS error: %s", exc)

    async def on_disconnect() -> None:
        log.warning("NATS disconnected")

    async def on_reconnect() -> None:
        log.info("NATS reconnected to %s", nc.connected_url.netloc if nc.connected_url else "?")

    options: dict[str, object] = {
        "servers": servers,
        "name": name,
        "max_reconnect_attempts": -1,
        "reconnect_time_wait": 0.5,
        "error_cb": on_error,
        "disconnected_cb": on_disconnect,
        "reconnected_cb": on_reconnect,
        "pending_size": 64 * 1024 * 1024,
    }
    options.update(kwargs)
    await nc.connect(**options)  # type: ignore[arg-type]
    return nc
