"""A venue's collector: its subscriptions sharded over WebSocket sessions.

All channels of one instrument stay on one connection (a reconnect then affects whole symbols), and no
connection carries more streams than the venue allows.
"""

from __future__ import annotations

import asyncio
import itertools
import random
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field

from marketprism.records import DataType
from marketprism.stream.capture import CaptureWriter
from marketprism.stream.session import SessionConfig, Sink, WsSession
from marketprism.venues.base import Subscription, Venue


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
        seed: int | None = None,
    ):
        if not symbols:
            raise ValueError(f"{venue.name}: no symbols to collect")
        self.venue = venue
        self.data_types = list(data_types or venue.channels)
        self.sink = sink
        self._ws_base, self._config, self._capture = ws_base, config, capture
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
        return out
