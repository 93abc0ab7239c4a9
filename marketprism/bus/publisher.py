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
from collections import Counter, deque
from dataclasses import dataclass, field

import orjson
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription

from marketprism import metrics
from marketprism.bus.codec import encode
from marketprism.errors import AckTimeout, NatsUnavailable, PublishRejected
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
    __slots__ = ("attempts", "data_type", "msg_id", "payload", "sent_at", "subject")

    def __init__(self, subject: str, msg_id: str, payload: bytes, data_type: str):
        self.subject = subject
        self.msg_id = msg_id
        self.payload = payload
        self.data_type = data_type
        self.attempts = 0
        self.sent_at = 0.0


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
        self._progress = asyncio.Event()  # set by acks once half the window is free, and by submit()
        self._refill_at = max_in_flight // 2
        self._check_every_s = min(0.25, ack_timeout_s / 4)
        self._published_by_type: Counter[str] = Counter()
        self._m = metrics.PublisherMetrics()
        self.buffer_size = buffer_size
        self.max_in_flight = max_in_flight
        self.ack_timeout_s = ack_timeout_s
        self.retry_backoff_max_s = retry_backoff_max_s
        self.drop_log_every_s = drop_log_every_s
        self.stats = PublisherStats()
        self._buffer: deque[_Pending] = deque()
        self._idle = asyncio.Event()
        self._idle.set()
        self._closing = False
        self._task: asyncio.Task[None] | None = None
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
        if len(self._buffer) == 1 or len(self._outstanding) <= self._refill_at:
            self._progress.set()
        return True

    @property
    def buffered(self) -> int:
        return len(self._buffer)

    def _drop(self, reason: str, n: int) -> None:
        self.stats.dropped += n
        self.stats.dropped_by_reason[reason] = self.stats.dropped_by_reason.get(reason, 0) + n
        self._m.drop(reason, n)  # counted as BUFFER_FULL / DROPPED_AT_STOP errors too
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
        """Keep up to ``max_in_flight`` publishes outstanding; refill as acks return; retry what times out."""
        await self._ensure_inbox()
        backoff = 0.05
        while True:
            self._send_window()
            await self.nc._flush_pending()
            self._sync_metrics()
            if not self._buffer and not self._outstanding:
                self._idle.set()
                if self._closing:
                    return
            self._progress.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._progress.wait(), self._check_every_s)
            failed = self._expired() + self._nacked
            self._nacked = []
            if failed:
                self.stats.retries += len(failed)
                metrics.RETRIES.inc(len(failed))
                # Retried records go back to the front so per-subject order is kept as far as possible.
                self._buffer.extendleft(reversed(failed))
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, self.retry_backoff_max_s)
            elif self.stats.published:
                backoff = 0.05

    def _send_window(self) -> None:
        nc, buffer, outstanding = self.nc, self._buffer, self._outstanding
        room = self.max_in_flight - len(outstanding)
        if room <= 0 or not buffer:
            return
        if not nc.is_connected:
            self._note_error(NatsUnavailable("NATS not connected"))
            return
        now = time.monotonic()
        pending = nc._pending  # nats-py's write buffer, flushed by its flusher task
        size = 0
        for _ in range(min(room, len(buffer))):
            item = buffer.popleft()
            item.attempts += 1
            item.sent_at = now
            self._token += 1
            outstanding[self._token] = item
            cmd = _hpub(item, b"%s%d" % (self._inbox, self._token))
            pending.append(cmd)  # nats-py's publish() costs 3x more: it re-validates every header
            size += len(cmd)
        nc._pending_data_size += size

    def _expired(self) -> list[_Pending]:
        """Outstanding publishes older than the ack timeout (oldest first: dicts keep insertion order)."""
        outstanding = self._outstanding
        if not outstanding:
            return []
        deadline = time.monotonic() - self.ack_timeout_s
        expired = []
        for token, item in outstanding.items():
            if item.sent_at > deadline:
                break
            expired.append(token)
        if not expired:
            return []
        self._note_error(AckTimeout(f"{len(expired)} ack(s) not received within {self.ack_timeout_s}s"))
        return [outstanding.pop(t) for t in expired]

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
                self._note_error(PublishRejected(f"JetStream rejected publish: {err}"))
                self._nacked.append(item)
            else:
                self.stats.published += 1
                self._published_by_type[item.data_type] += 1
                if b'"duplicate"' in data:  # the server writes '"duplicate": true'
                    self.stats.duplicates += 1
        if len(self._outstanding) <= self._refill_at or self._nacked:
            self._progress.set()

    def _sync_metrics(self) -> None:
        """Prometheus counters take a lock per call: they are advanced once per loop, not once per ack."""
        self._m.sync(self._published_by_type, self.stats.duplicates, len(self._buffer), len(self._outstanding))
        self._published_by_type.clear()

    def _note_error(self, exc: BaseException) -> None:
        self._m.error(exc)  # retryable: NATS_UNAVAILABLE, ACK_TIMEOUT or PUBLISH_REJECTED
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
        self._progress.set()
        if self._task is not None:
            if not flushed:
                self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        # Unacknowledged in-flight records may or may not be stored: they count as dropped (unconfirmed).
        lost = len(self._buffer) + len(self._outstanding)
        if lost:
            self._drop("shutdown", lost)
            self._buffer.clear()
            self._outstanding.clear()
        self._sync_metrics()


async def connect(servers: str | list[str], name: str = "marketprism", **kwargs: object) -> NATS:
    """Connect with reconnects forever (a collector must outlive a nats-server restart)."""
    nc = NATS()

    async def on_error(exc: Exception) -> None:
        log.warning("NATS error: %s", exc)

    async def on_disconnect() -> None:
        if not (nc.is_closed or nc.is_draining):  # a close we asked for is not news
            log.warning("NATS disconnected from %s", nc.connected_url.netloc if nc.connected_url else "?")

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
