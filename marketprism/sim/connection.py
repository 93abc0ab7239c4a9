"""One client WebSocket: its subscriptions, an outgoing queue, and per-connection fault injection.

Sources never write to sockets: they append to the queue of every subscribed connection and one sender
task per connection drains it. A slow client thus never blocks the generator, a stall pauses one place,
and faults are applied where frames really leave.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Coroutine
from typing import Any, Protocol

from aiohttp import WSCloseCode, web

from marketprism.sim.config import Faults
from marketprism.sim.frames import Frame, StreamKey, Sub
from marketprism.sim.truth import VenueTruth

log = logging.getLogger(__name__)


class ConnectionOwner(Protocol):
    """The venue a connection belongs to, as the sender sees it."""

    faults: Faults
    truth: VenueTruth
    max_backlog: int

    def stalled(self) -> bool: ...

    async def wait_unstalled(self) -> None: ...

    def is_resent(self, frame: Frame) -> bool: ...

    def on_sent(self, frame: Frame) -> None: ...


def corrupt_checksum(text: str, checksum: int) -> str:
    bad = checksum + 1 if checksum < 2**31 - 1 else checksum - 1
    return text.replace(f'"checksum":{checksum}', f'"checksum":{bad}', 1)


class Connection:
    def __init__(self, conn_id: str, ws: web.WebSocketResponse, request: web.Request, owner: ConnectionOwner):
        self.id = conn_id
        self.ws = ws
        self.request = request
        self.owner = owner
        self.subs: dict[StreamKey, list[Sub]] = {}
        now = time.monotonic()
        self.opened_at = now
        self.last_client_msg = now
        self.last_ping = now
        self.closing = False
        self.drained = asyncio.Event()
        self.drained.set()
        self._queue: list[tuple[Frame | None, str]] = []  # (data frame or None for a reply, text)
        self._wake = asyncio.Event()
        self._data_frames = 0  # data frames this connection tried to send: drop/malformed patterns count these
        self._checksum_frames = 0
        self._tasks: set[asyncio.Task[Any]] = set()
        self._finishing: set[asyncio.Task[Any]] = set()  # close() calls: left to finish

    # --- subscriptions -------------------------------------------------------------------------------

    def add_sub(self, key: StreamKey, sub: Sub) -> bool:
        subs = self.subs.setdefault(key, [])
        if any(s.name == sub.name for s in subs):
            return False
        subs.append(sub)
        return True

    def remove_sub(self, key: StreamKey, sub: Sub) -> bool:
        subs = self.subs.get(key, [])
        kept = [s for s in subs if s.name != sub.name]
        if len(kept) == len(subs):
            return False
        if kept:
            self.subs[key] = kept
        else:
            del self.subs[key]
        return True

    # --- queueing ------------------------------------------------------------------------------------

    @property
    def backlog(self) -> int:
        return len(self._queue)

    def _enqueue(self, frame: Frame | None, text: str) -> None:
        if self.closing:
            return
        self._queue.append((frame, text))
        self._wake.set()
        self.drained.clear()
        if len(self._queue) > self.owner.max_backlog:
            # As the venues do with clients that cannot keep up: cut the connection.
            log.warning("sim: %s cut after %d queued frames (slow consumer)", self.id, len(self._queue))
            self.spawn(self.close(WSCloseCode.POLICY_VIOLATION, b"slow consumer"), cancel_on_close=False)

    def send_control(self, text: str) -> None:
        """A reply (ack, pong, error): never dropped or malformed, but held back by a stall like all else."""
        self._enqueue(None, text)

    def deliver(self, frame: Frame) -> None:
        """A broadcast data frame: sent once per matching subscription (renamed when needed)."""
        subs = self.subs.get(frame.key)
        if not subs:
            return
        if not frame.variant:  # replayed frames go out verbatim, once
            self._enqueue(frame, frame.text)
            return
        for sub in subs:
            if sub.variant == frame.variant:
                text = frame.text if sub.name == frame.name else frame.text.replace(
                    f'"{frame.name}"', f'"{sub.name}"', 1)  # fmt: skip
                self._enqueue(frame, text)

    def deliver_to(self, frame: Frame, sub: Sub) -> None:
        """A frame made for one subscription (a snapshot on subscribe)."""
        if sub in self.subs.get(frame.key, []):
            self._enqueue(frame, frame.text)

    # --- sending -------------------------------------------------------------------------------------

    async def run_sender(self) -> None:
        owner = self.owner
        try:
            while not self.closing:
                await self._wake.wait()
                self._wake.clear()
                while self._queue and not self.closing:
                    batch, self._queue = self._queue, []
                    for frame, text in batch:
                        if owner.stalled():
                            await owner.wait_unstalled()
                        if self.closing or self.ws.closed:
                            return
                        if frame is None:
                            await self.ws.send_str(text)
                        else:
                            await self._send_data(frame, text)
                self.drained.set()
        except (ConnectionError, RuntimeError) as exc:  # the client went away mid-send
            log.debug("sim: %s sender stopped: %s", self.id, exc)
        finally:
            self.drained.set()

    async def _send_data(self, frame: Frame, text: str) -> None:
        owner, faults = self.owner, self.owner.faults
        counts = owner.truth.counts(frame)
        self._data_frames += 1
        n = self._data_frames
        if faults.drop_every_n and n % faults.drop_every_n == 0:
            counts.dropped += 1
            owner.on_sent(frame)  # a dropped frame is gone for good: a replay does not send it later
            return
        resent = owner.is_resent(frame)
        if frame.checksum is not None and faults.corrupt_checksum_every_n:
            self._checksum_frames += 1
            if self._checksum_frames % faults.corrupt_checksum_every_n == 0:
                text = corrupt_checksum(text, frame.checksum)
                counts.corrupted += 1
        if faults.malformed_every_n and n % faults.malformed_every_n == 0:
            await self.ws.send_str(text[: len(text) // 2])  # truncated: never valid JSON
            counts.malformed += 1
        await self.ws.send_str(text)
        owner.truth.sent(frame, resent)
        owner.on_sent(frame)

    # --- lifecycle -----------------------------------------------------------------------------------

    def spawn(self, coro: Coroutine[Any, Any, Any], cancel_on_close: bool = True) -> None:
        """Run a task for this connection; the sender and players die with it, a close() finishes."""
        task = asyncio.get_running_loop().create_task(coro)
        tasks = self._tasks if cancel_on_close else self._finishing
        tasks.add(task)
        task.add_done_callback(tasks.discard)

    async def ping(self) -> None:
        with contextlib.suppress(ConnectionError, RuntimeError):
            await self.ws.ping()

    async def close(self, code: int = WSCloseCode.GOING_AWAY, message: bytes = b"", abort: bool = False) -> None:
        if self.closing:
            return
        self.closing = True
        self._wake.set()
        if abort:
            transport = self.request.transport
            if transport is not None:
                transport.abort()
            return
        with contextlib.suppress(ConnectionError, RuntimeError, asyncio.TimeoutError):
            await self.ws.close(code=code, message=message)

    def cancel_tasks(self) -> None:
        for task in list(self._tasks):
            task.cancel()
