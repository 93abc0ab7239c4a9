"""A venue's collector: its subscriptions sharded over WebSocket sessions.

All channels of one instrument stay on one connection (a reconnect then affects whole symbols), and no
connection carries more streams than the venue allows.

Recording (``capture``) makes a capture verifiable on its own (``marketprism book verify``): besides every
frame and status record, the collector then fetches one REST depth snapshot per depth stream after each
(re)subscription, for venues that declare ``snapshot_request``, and writes it as a ``rest`` line
(``SnapshotRecorder``). A collector that does not record sends no REST request at all.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import random
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from urllib.parse import urlencode

from marketprism.records import DataType, now_us
from marketprism.rest import RestClient
from marketprism.stream.capture import REST, CaptureWriter
from marketprism.stream.session import SessionConfig, Sink, WsSession
from marketprism.venues.base import Subscription, Venue

log = logging.getLogger(__name__)


def shard_subscriptions(subs: Sequence[Subscription], per_connection: int) -> list[list[Subscription]]:
    by_instrument: dict[str, list[Subscription]] = {}
    for sub in subs:
        by_instrument.setdefault(sub.instrument, []).append(sub)
    shards: list[list[Subscription]] = [[]]
    for group in by_instrument.values():
        if len(group) > per_connection:
            raise ValueError(f"{group[0].instrument}: {len(group)} streams exceed {per_connection} per connection")
        if len(shards[-1]) + len(group) > per_connection:
            shards.append([])
        shards[-1].extend(group)
    return [s for s in shards if s]


@dataclass
class CollectorStats:
    venue: str
    connections: int = 0
    connected: int = 0
    frames: int = 0
    records: int = 0
    parse_errors: int = 0
    reconnects: int = 0
    stalls: int = 0
    last_error: str = ""
    records_by_type: Counter[str] = field(default_factory=Counter)
    snapshots_recorded: int = 0  # REST depth snapshots written into the capture
    snapshot_failures: int = 0


class SnapshotRecorder:
    """While recording: one REST depth snapshot per instrument asked for, written into the capture as received.

    ``request`` only queues (sessions call it on their read path); a background task fetches one at a time,
    ``stagger_s`` apart, through the venue's ``RestClient`` (weight budget, Retry-After, backoff). An
    instrument asked for again before its fetch started is fetched once. A failure is counted and logged, and
    the recorder carries on.
    """

    def __init__(self, venue: Venue, capture: CaptureWriter, rest_base: str | None = None, stagger_s: float = 0.1):
        if venue.snapshot_request is None:
            raise ValueError(f"{venue.name} declares no snapshot request")
        self.venue = venue
        self.snapshot_request = venue.snapshot_request
        self.capture = capture
        self.client = RestClient(rest_base or venue.rest_url, venue.rest_limits, name=f"{venue.name} recorder")
        self.stagger_s = stagger_s
        self.recorded = 0
        self.failures = 0
        self._queue: asyncio.Queue[str] = asyncio.Queue()
        self._queued: set[str] = set()
        self._fetching = 0

    @property
    def pending(self) -> int:
        """Snapshots asked for and not yet written (or failed)."""
        return len(self._queued) + self._fetching

    def request(self, instrument: str) -> None:
        if instrument not in self._queued:
            self._queued.add(instrument)
            self._queue.put_nowait(instrument)

    async def run(self) -> None:
        try:
            while True:
                instrument = await self._queue.get()
                self._queued.discard(instrument)
                self._fetching += 1
                try:
                    await self.fetch(instrument)
                finally:
                    self._fetching -= 1
                await asyncio.sleep(self.stagger_s)
        finally:
            await self.client.close()

    async def fetch(self, instrument: str) -> None:
        call = self.snapshot_request(instrument)
        url = f"{self.client.base_url}{call.path}?{urlencode(call.params)}"
        try:
            body = await self.client.get(call.path, call.params, call.weight)
        except Exception as exc:  # RestError, or anything else: the collection itself must carry on
            self.failures += 1
            log.warning("%s: recording the snapshot of %s failed (%d so far): %s", self.venue.name, instrument,
                        self.failures, exc)  # fmt: skip
            return
        self.capture.write(now_us(), REST, url, body)
        self.recorded += 1


class Collector:
    def __init__(
        self,
        venue: Venue,
        symbols: Sequence[str],
        sink: Sink,
        *,
        data_types: Sequence[DataType] | None = None,
        ws_base: str | None = None,
        config: SessionConfig | None = None,
        capture: CaptureWriter | None = None,
        rest_base: str | None = None,
        seed: int | None = None,
    ):
        if not symbols:
            raise ValueError(f"{venue.name}: no symbols to collect")
        self.venue = venue
        self.data_types = list(data_types or venue.channels)
        self.sink = sink
        self._ws_base, self._config, self._capture = ws_base, config, capture
        self.snapshots: SnapshotRecorder | None = None  # only when recording, and only REST-synced venues
        if capture is not None and venue.snapshot_request is not None:
            self.snapshots = SnapshotRecorder(venue, capture, rest_base)
        self._rng = random.Random(seed)
        self._shards = itertools.count()
        self.sessions: list[WsSession] = []
        self._retired: list[WsSession] = []  # sessions stopped by set_symbols: their counts still count
        self._tasks: dict[WsSession, asyncio.Task[None]] = {}
        self._running = False
        self._changed = asyncio.Event()
        for shard in shard_subscriptions(venue.subscriptions(symbols, self.data_types), self._per_connection):
            self._new_session(shard)

    @property
    def _per_connection(self) -> int:
        return self.venue.limits.streams_per_connection

    @property
    def symbols(self) -> list[str]:
        return sorted({s.symbol for session in self.sessions for s in session.subscriptions})

    def _new_session(self, subs: Sequence[Subscription]) -> WsSession:
        session = WsSession(
            self.venue, subs, self.sink, shard=next(self._shards), ws_base=self._ws_base, config=self._config,
            capture=self._capture, rng=random.Random(self._rng.random()),
            on_depth_subscribed=self.snapshots.request if self.snapshots is not None else None,
        )  # fmt: skip
        self.sessions.append(session)
        if self._running:
            self._start(session)
        return session

    def _start(self, session: WsSession) -> None:
        self._tasks[session] = asyncio.create_task(session.run(), name=f"{self.venue.name}/{session.shard}")
        self._changed.set()

    async def run(self) -> None:
        """Run every session until ``stop()``; sessions added meanwhile are run too. A crashed session raises."""
        self._running = True
        for session in self.sessions:
            if session not in self._tasks:
                self._start(session)
        recorder = None
        if self.snapshots is not None:
            recorder = asyncio.create_task(self.snapshots.run(), name=f"{self.venue.name}/snapshots")
        try:
            while self._tasks:
                self._changed.clear()
                changed = asyncio.create_task(self._changed.wait())
                done, _ = await asyncio.wait({changed, *self._tasks.values()}, return_when=asyncio.FIRST_COMPLETED)
                changed.cancel()
                for session, task in list(self._tasks.items()):
                    if task in done:
                        del self._tasks[session]
                        task.result()  # re-raise a session's crash
        finally:
            self._running = False
            if recorder is not None:
                recorder.cancel()
                await asyncio.gather(recorder, return_exceptions=True)

    def stop(self) -> None:
        for s in self.sessions:
            s.stop()

    async def set_symbols(self, symbols: Sequence[str], data_types: Sequence[DataType] | None = None) -> None:
        """Hot reload: subscribe what is new, unsubscribe what is gone, on the live connections.

        New instruments go to a session with room for all their streams, else to a new session; sessions left
        with nothing to carry are stopped.
        """
        if not symbols:
            raise ValueError(f"{self.venue.name}: no symbols to collect")
        self.data_types = list(data_types or self.data_types)
        wanted = self.venue.subscriptions(symbols, self.data_types)
        current = {s for session in self.sessions for s in session.subscriptions}
        wanted_set = set(wanted)
        for session in list(self.sessions):
            gone = [s for s in session.subscriptions if s not in wanted_set]
            if gone:
                await session.remove(gone)
            if not session.subscriptions:
                session.stop()
                self.sessions.remove(session)
                self._retired.append(session)
        for group in shard_subscriptions([s for s in wanted if s not in current], self._per_connection):
            by_instrument: dict[str, list[Subscription]] = {}
            for sub in group:
                by_instrument.setdefault(sub.instrument, []).append(sub)
            for subs in by_instrument.values():
                room = self._per_connection - len(subs)
                home = next((x for x in self.sessions if len(x.subscriptions) <= room), None)
                if home is None:
                    self._new_session(subs)
                else:
                    await home.add(subs)

    async def resubscribe(self, symbols: Sequence[str]) -> list[str]:
        """Unsubscribe and subscribe again these symbols' streams on their live connections.

        Venues that sync books from the stream (OKX, Bybit) answer a subscribe with a fresh snapshot: this is
        how the order-book processor resyncs one symbol there, without touching the others.
        """
        wanted = {s.upper() for s in symbols}
        done = []
        for session in self.sessions:
            subs = [s for s in session.subscriptions if s.symbol in wanted]
            if subs:
                await session.remove(subs)
                await session.add(subs)
                done += sorted({s.symbol for s in subs})
        return done

    @property
    def stats(self) -> CollectorStats:
        out = CollectorStats(self.venue.name, connections=len(self.sessions))
        for s in self.sessions + self._retired:
            st = s.stats
            out.connected += st.connected
            out.frames += st.frames
            out.records += st.records
            out.parse_errors += st.parse_errors
            out.reconnects += st.reconnects
            out.stalls += st.stalls
            out.records_by_type.update(st.records_by_type)
            out.last_error = st.last_error or out.last_error
        if self.snapshots is not None:
            out.snapshots_recorded, out.snapshot_failures = self.snapshots.recorded, self.snapshots.failures
        return out
