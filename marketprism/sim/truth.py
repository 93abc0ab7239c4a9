"""Ground truth: what the simulator really sent, for tests to compare with what arrived downstream."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from marketprism.records import DataType
from marketprism.sim.frames import Frame


@dataclass(slots=True)
class StreamCounts:
    """Counts for one (venue, instrument, data type), summed over all connections.

    ``frames`` counts well-formed data frames sent for the first time; ``resent`` the replay overlap
    frames sent again after a reconnect; ``dropped``/``malformed``/``corrupted`` the injected faults
    (a malformed frame is sent in addition to the good one; a corrupted checksum frame is also counted in
    ``frames``).
    """

    frames: int = 0
    resent: int = 0
    dropped: int = 0
    malformed: int = 0
    corrupted: int = 0
    trades: int = 0
    last_seq: int | None = None


@dataclass(slots=True)
class VenueTruth:
    connections: int = 0
    subscribe_messages: int = 0
    disconnects_injected: int = 0
    rest_requests: int = 0
    rest_failures_injected: int = 0
    streams: dict[str, dict[DataType, StreamCounts]] = field(default_factory=dict)

    def counts(self, frame: Frame) -> StreamCounts:
        inst, dtype = frame.key
        per_inst = self.streams.get(inst)
        if per_inst is None:
            per_inst = self.streams[inst] = {}
        counts = per_inst.get(dtype)
        if counts is None:
            counts = per_inst[dtype] = StreamCounts()
        return counts

    def sent(self, frame: Frame, resent: bool) -> None:
        c = self.counts(frame)
        if resent:
            c.resent += 1
        else:
            c.frames += 1
            c.trades += frame.trades
        if frame.seq is not None:
            c.last_seq = frame.seq

    def to_dict(self) -> dict[str, Any]:
        return {
            "connections": self.connections,
            "subscribe_messages": self.subscribe_messages,
            "disconnects_injected": self.disconnects_injected,
            "rest_requests": self.rest_requests,
            "rest_failures_injected": self.rest_failures_injected,
            "instruments": {inst: {str(dt): asdict(c) for dt, c in per.items()} for inst, per in self.streams.items()},
        }
