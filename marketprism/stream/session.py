"""One WebSocket connection's life: connect, subscribe, heartbeat, read, watchdog, reconnect, rotate.

A session carries one shard of a venue's subscriptions. It turns every received frame into records with
the venue's parser and hands them to ``sink`` (normally ``JetStreamPublisher.submit``). It never gives up:
failures reconnect with capped exponential backoff and full jitter, a silent stream is noticed by the
stall watchdog, and connections the venue cuts after a fixed age (Binance: 24 h) are rotated early with
a short overlap, so no frame is missed (the overlap's duplicates are dropped by JetStream's Msg-Id).
Around every unplanned reconnect the session publishes ``status`` records (``disconnected`` then
``connected``) for each symbol, so order books downstream know a gap may have happened.

Recording (``capture``): every frame goes into the capture as received, and so do the status records
(``status`` lines), so that a reader of the capture knows where connections ended. ``on_depth_subscribed``
is then called with an instrument when its depth stream delivers its first frame after a (re)subscription
(the collector fetches a REST snapshot for it: Binance's own procedure, buffer first, then the snapshot).
It must not block: it is called on the read path.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import random
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import msgspec
import websockets
from websockets.asyncio.client import ClientConnection
from websockets.asyncio.client import connect as ws_connect

from marketprism import metrics
from marketprism.records import DataType, Depth, Record, Status, now_us
from marketprism.stream.capture import STATUS, WS, CaptureWriter
from marketprism.venues.base import ParseError, Parser, Subscription, Venue

log = logging.getLogger(__name__)

Sink = Callable[[Record], object]


@dataclass(frozen=True)
class SessionConfig:
    stall_timeout_s: float = 30.0  # no frame for this long -> reconnect
    backoff_initial_s: float = 0.5
    backoff_max_s: float = 30.0
    open_timeout_s: float = 10.0
    rotation_overlap_s: float = 3.0
    max_connection_age_s: float | None = None  # None: the venue's own limit
    parse_error_log_every_s: float = 10.0

    def __post_init__(self) -> None:
        for name in ("stall_timeout_s", "backoff_initial_s", "backoff_max_s", "open_timeout_s"):
            if getattr(self, name) <= 0:
                raise ValueError(f"session {name} must be > 0, got {getattr(self, name)}")
        if self.backoff_max_s < self.backoff_initial_s:
            raise ValueError("session backoff_max_s must be >= backoff_initial_s")


def backoff_delay(attempt: int, initial: float, cap: float, rng: random.Random) -> float:
    """Capped exponential backoff with full jitter: uniform in [0, min(cap, initial * 2**attempt)]."""
    return rng.uniform(0, min(cap, initial * (2 ** min(attempt, 30))))


@dataclass
class SessionStats:
    frames: int = 0
    records: int = 0  # every record handed to the sink, status records included
    parse_errors: int = 0
    connects: int = 0
    reconnects: int = 0
    stalls: int = 0
    rotations: int = 0
    connected: bool = False
    last_error: str = ""
    last_frame_at: float = 0.0
    records_by_type: Counter[str] = field(default_factory=Counter)
    backoff_delays: list[float] = field(default_factory=list)


class _Connection:
    """A live socket with its own parser (parsers may keep per-connection state)."""

    _ids = itertools.count(1)

    def __init__(self, ws: ClientConnection, parser: Parser, label: str):
        self.ws = ws
        self.parser = parser
        self.id = f"{label}#{next(self._ids)}"
        self.opened_at = time.monotonic()
        self.last_frame_at = self.opened_at
        self.stalled = False
        self.awaiting_depth: set[str] = set()  # instruments subscribed here whose depth has not delivered yet


class WsSession:
    def __init__(
        self,
        venue: Venue,
        subscriptions: Sequence[Subscription],
        sink: Sink,
        *,
        ws_base: str | None = None,
        shard: int = 0,
        config: SessionConfig | None = None,
        capture: CaptureWriter | None = None,
        rng: random.Random | None = None,
        on_depth_subscribed: Callable[[str], object] | None = None,
    ):
        if not subscriptions:
            raise ValueError(f"{venue.name} shard {shard}: no subscriptions")
        self.venue = venue
        self.subscriptions = list(subscriptions)
        self.sink = sink
        self.url = venue.url(ws_base)
        self.shard = shard
        self.config = config or SessionConfig()
        self.capture = capture
        self.on_depth_subscribed = on_depth_subscribed
        self.stats = SessionStats()
        self._rng = rng or random.Random()
        self._stop = asyncio.Event()
        self._label = f"{venue.name}/{shard}"
        # instrument -> symbol; shared with each connection's parser, which sees symbols added at runtime
        self._symbols: dict[str, str] = {s.instrument: s.symbol for s in self.subscriptions}
        self._keep = venue.record_types(self.subscriptions)  # None: every parsed record is wanted
        self._conn: _Connection | None = None  # the socket currently subscribed (None while reconnecting)
        self._retiring: set[asyncio.Task[None]] = set()
        self._request_id = 1
        self._last_parse_log = 0.0
        # Prometheus children cached once; per-frame counts are plain ints flushed about once a second.
        self._m = metrics.CollectorMetrics(venue.exchange, venue.market, (*venue.channels, Status.data_type))
        self._max_age = self.config.max_connection_age_s or venue.limits.max_connection_age_s

    # --- lifecycle ---------------------------------------------------------------------------------
    def stop(self) -> None:
        self._stop.set()

    async def run(self) -> None:
        attempt = 0
        rotating: tuple[_Connection, asyncio.Task[str]] | None = None  # the old socket, still being read
        while not self._stop.is_set():
            try:
                conn = await self._open()
            except Exception as exc:
                self._failed(f"connect failed: {type(exc).__name__}: {exc}")
                if self._m.error(exc).fatal:  # e.g. an invalid URL: retrying cannot help
                    self._m.flush()
                    raise
                if rotating is not None and rotating[1].done():  # the old socket ended first: a real gap
                    self._emit_status(rotating[0], "disconnected", rotating[1].result())
                    rotating = None
                delay = backoff_delay(attempt, self.config.backoff_initial_s, self.config.backoff_max_s, self._rng)
                attempt += 1
                self.stats.backoff_delays.append(delay)
                await self._sleep(delay)
                continue
            if rotating is not None:  # the new socket is subscribed: let the old one overlap it, then close it
                self._retire_later(*rotating)
            else:
                if attempt or self.stats.connects > 1:
                    self.stats.reconnects += 1
                self._emit_status(conn, "connected", "")
            attempt, rotating = 0, None
            reason, pump = await self._serve(conn)
            if reason == "rotate":
                self.stats.rotations += 1
                self._m.reconnect("rotation")
                rotating = (conn, pump)
                continue
            self._conn = None
            if self._stop.is_set():
                break
            self._failed(reason)
            self._m.reconnect(reason.split(":")[0])  # closed | stall: counted as WS_CLOSED | WS_STALL errors
            self._emit_status(conn, "disconnected", reason)
            # The first retry after a drop comes quickly; repeated connect failures back off further.
            attempt = 1
            await self._sleep(backoff_delay(0, self.config.backoff_initial_s, self.config.backoff_max_s, self._rng))
        if rotating is not None:
            self._retire_later(*rotating)
        self.stats.connected = False
        await asyncio.gather(*self._retiring, return_exceptions=True)
        self._m.flush()

    async def _serve(self, conn: _Connection) -> tuple[str, asyncio.Task[str]]:
        """Pump frames until the socket ends, the session stops, or rotation is due (socket left open)."""
        pump = asyncio.create_task(self._pump(conn), name=f"{conn.id}-pump")
        stop = asyncio.create_task(self._stop.wait())
        await asyncio.wait({pump, stop}, timeout=self._max_age, return_when=asyncio.FIRST_COMPLETED)
        stop.cancel()
        if pump.done():
            return pump.result(), pump
        if self._stop.is_set():
            await self._close(conn)
            with contextlib.suppress(Exception, asyncio.CancelledError):
                await pump
            return "stop", pump
        log.info("%s rotating after %.0fs, before the venue cuts it", conn.id, time.monotonic() - conn.opened_at)
        return "rotate", pump

    def _retire_later(self, conn: _Connection, pump: asyncio.Task[str]) -> None:
        retire = asyncio.create_task(self._retire(conn, pump))
        self._retiring.add(retire)
        retire.add_done_callback(self._retiring.discard)

    async def _retire(self, conn: _Connection, pump: asyncio.Task[str]) -> None:
        """Keep reading a rotated-out socket until the new one has overlapped it, then close it."""
        await self._sleep(self.config.rotation_overlap_s)
        await self._close(conn)
        with contextlib.suppress(Exception, asyncio.CancelledError):
            await pump

    async def _sleep(self, seconds: float) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._stop.wait(), seconds)

    async def _open(self) -> _Connection:
        ws = await ws_connect(
            self.url, open_timeout=self.config.open_timeout_s, max_size=2**24, compression=None,
            ping_interval=20, ping_timeout=20, close_timeout=2,
        )  # fmt: skip
        conn = _Connection(ws, self.venue.new_parser(self._symbols), self._label)
        self.stats.connects += 1
        self.stats.connected = True
        self._m.connections.inc()
        # No await between taking the snapshot and publishing the connection: a concurrent add() either lands in
        # the snapshot or sees self._conn and subscribes its streams itself.
        subscriptions = list(self.subscriptions)
        self._await_depth(conn, subscriptions)
        self._conn = conn
        try:
            streams = self.venue.wire_streams(subscriptions)
            await self._send(conn, self.venue.subscribe_messages(streams, self._next_request_id()))
        except BaseException:
            self._conn = None
            await self._close(conn)
            raise
        log.info("%s connected to %s with %d stream(s)", conn.id, self.url, len(self.subscriptions))
        return conn

    def _next_request_id(self) -> int:
        self._request_id += 100  # ids only need to be unique per connection; leave room for chunked requests
        return self._request_id

    async def _send(self, conn: _Connection, messages: list[str]) -> None:
        interval = 1.0 / self.venue.limits.subscribe_messages_per_s
        for i, message in enumerate(messages):
            if i:
                await asyncio.sleep(interval)  # venues disconnect clients that subscribe too fast
            await conn.ws.send(message)

    # --- subscriptions changed at runtime (hot reload) -----------------------------------------------
    async def add(self, subscriptions: Sequence[Subscription]) -> None:
        """Subscribe more streams on the live connection, and on every later one."""
        new = [s for s in subscriptions if s not in self.subscriptions]
        if not new:
            return
        fresh = sorted({(s.instrument, s.symbol) for s in new if s.instrument not in self._symbols})
        streams = self.venue.wire_streams(new, exclude=self.subscriptions)  # shared streams are subscribed once
        self.subscriptions.extend(new)
        self._symbols.update({s.instrument: s.symbol for s in new})
        self._keep = self.venue.record_types(self.subscriptions)
        conn = self._conn
        if conn is not None:
            self._await_depth(conn, new)
            self._emit_status_for(conn, "connected", "subscribed", fresh)
            with contextlib.suppress(websockets.ConnectionClosed):  # the next connection subscribes them anyway
                if streams:
                    await self._send(conn, self.venue.subscribe_messages(streams, self._next_request_id()))

    async def remove(self, subscriptions: Sequence[Subscription]) -> None:
        """Unsubscribe streams; a symbol with no stream left gets a ``disconnected`` status (unsubscribed)."""
        gone = [s for s in subscriptions if s in self.subscriptions]
        if not gone:
            return
        self.subscriptions = [s for s in self.subscriptions if s not in gone]
        self._keep = self.venue.record_types(self.subscriptions)
        streams = self.venue.wire_streams(gone, exclude=self.subscriptions)  # a stream still in use stays
        left = {s.instrument for s in self.subscriptions}
        dropped = sorted({(s.instrument, s.symbol) for s in gone if s.instrument not in left})
        for instrument, _ in dropped:
            self._symbols.pop(instrument, None)
        conn = self._conn
        if conn is not None:
            conn.awaiting_depth.difference_update(s.instrument for s in gone if s.data_type is DataType.DEPTH)
            with contextlib.suppress(websockets.ConnectionClosed):
                if streams:
                    await self._send(conn, self.venue.unsubscribe_messages(streams, self._next_request_id()))
            self._emit_status_for(conn, "disconnected", "unsubscribed", dropped)

    async def _close(self, conn: _Connection) -> None:
        with contextlib.suppress(Exception):
            await conn.ws.close()
        self._m.connections.dec()

    # --- reading -----------------------------------------------------------------------------------
    async def _pump(self, conn: _Connection) -> str:
        """Read until the socket closes or stalls; returns why it ended."""
        watchdog = asyncio.create_task(self._watchdog(conn))
        heartbeat = asyncio.create_task(self._heartbeat(conn))
        try:
            async for frame in conn.ws:
                self._on_frame(conn, frame)
            reason = f"closed: {conn.ws.close_code} {conn.ws.close_reason or ''}".rstrip()
        except websockets.ConnectionClosed as exc:
            reason = f"closed: {exc}"
        finally:
            heartbeat.cancel()
            watchdog.cancel()
        return f"stall: no frame for {self.config.stall_timeout_s}s" if conn.stalled else reason

    def _on_frame(self, conn: _Connection, frame: str | bytes) -> None:
        recv_ts = now_us()
        now = time.monotonic()
        conn.last_frame_at = now
        self.stats.last_frame_at = now
        self.stats.frames += 1
        self._m.frame(len(frame), recv_ts)
        if self.capture is not None:
            self.capture.write(recv_ts, WS, self.url, frame)
        try:
            records = conn.parser.parse(frame, recv_ts)
        except Exception as exc:  # ParseError is expected; anything else is a parser bug, which must not kill us
            self.stats.parse_errors += 1
            self._m.parse_error(exc)  # bad_data: PARSE_MALFORMED, PARSE_VENUE_ERROR or PARSE_BUG
            if now - self._last_parse_log >= self.config.parse_error_log_every_s:
                log.warning("%s skipped a frame (%d so far): %s", conn.id, self.stats.parse_errors, exc,
                            exc_info=not isinstance(exc, ParseError))  # fmt: skip
                self._last_parse_log = now
            return
        if self._keep is not None:
            records = [r for r in records if r.data_type in self._keep]
        for record in records:
            self.sink(record)
            self.stats.records_by_type[record.data_type] += 1
        self._m.records(records)
        self.stats.records += len(records)
        if conn.awaiting_depth:
            self._first_depth(conn, records)

    def _await_depth(self, conn: _Connection, subscriptions: Sequence[Subscription]) -> None:
        if self.on_depth_subscribed is not None:
            conn.awaiting_depth.update(s.instrument for s in subscriptions if s.data_type is DataType.DEPTH)

    def _first_depth(self, conn: _Connection, records: list[Record]) -> None:
        assert self.on_depth_subscribed is not None  # awaiting_depth is filled only with a callback
        for record in records:
            if type(record) is Depth and record.instrument in conn.awaiting_depth:
                conn.awaiting_depth.discard(record.instrument)
                self.on_depth_subscribed(record.instrument)

    async def _watchdog(self, conn: _Connection) -> None:
        """Closes a socket that has been silent for longer than the stall timeout."""
        period = min(1.0, self.config.stall_timeout_s / 4)
        while True:
            await asyncio.sleep(period)
            self._m.flush()  # what the last frames counted reaches Prometheus even if no frame follows
            silent = time.monotonic() - conn.last_frame_at
            if silent > self.config.stall_timeout_s:
                conn.stalled = True
                self.stats.stalls += 1
                log.warning("%s stalled: no frame for %.1fs, reconnecting", conn.id, silent)
                await conn.ws.close(code=4000, reason="stall")
                return

    async def _heartbeat(self, conn: _Connection) -> None:
        hb = self.venue.heartbeat
        if hb.kind != "client_text":
            return  # server pings are answered by websockets itself
        while True:
            await asyncio.sleep(hb.every_s)
            with contextlib.suppress(websockets.ConnectionClosed):
                await conn.ws.send(hb.message)

    # --- status --------------------------------------------------------------------------------------
    def _failed(self, reason: str) -> None:
        self.stats.connected = False
        self.stats.last_error = reason
        log.warning("%s: %s", self._label, reason)

    def _emit_status(self, conn: _Connection, event: str, reason: str) -> None:
        self._emit_status_for(conn, event, reason, sorted(self._symbols.items()))

    def _emit_status_for(self, conn: _Connection, event: str, reason: str, symbols: list[tuple[str, str]]) -> None:
        ts = now_us()
        for instrument, symbol in symbols:
            status = Status(
                exchange=self.venue.exchange.value, market=self.venue.market.value, symbol=symbol,
                instrument=instrument, ts=ts, recv_ts=ts, event=event, connection=f"{conn.id}@{ts}", reason=reason,
            )  # fmt: skip
            if self.capture is not None:
                self.capture.write(ts, STATUS, self.url, msgspec.json.encode(status))
            self.sink(status)
            self.stats.records += 1
            self.stats.records_by_type[Status.data_type] += 1
            self._m.count(Status.data_type)
