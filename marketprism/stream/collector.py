"""A venue's collector: its subscriptions sharded over WebSocket sessions.

All channels of one instrument stay on one connection (a reconnect then affects whole symbols), and no
connection carries more streams than the venue allows.
"""

from __future__ import annotations

import asyncio
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
        subs = venue.subscriptions(symbols, list(data_types or venue.channels))
        rng = random.Random(seed)
        self.sessions = [
            WsSession(venue, shard, sink, ws_base=ws_base, shard=i, config=config, capture=capture,
                      rng=random.Random(rng.random()))
            for i, shard in enumerate(shard_subscriptions(subs, venue.limits.streams_per_connection))
        ]  # fmt: skip

    async def run(self) -> None:
        await asyncio.gather(*(s.run() for s in self.sessions))

    def stop(self) -> None:
        for s in self.sessions:
            s.stop()

    @property
    def stats(self) -> CollectorStats:
        out = CollectorStats(self.venue.name, connections=len(self.sessions))
        for s in self.sessions:
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
