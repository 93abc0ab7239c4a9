"""Replay mode: recorded real frames played back over each venue's own protocol.

Readable recordings (one venue's frames per file, any mix of formats, gzip or zstd): whatever
``marketprism.stream.capture.read_recording`` reads (captures, raw frame-per-line ``*.jsonl``, cryptofeed and
hftbacktest recordings, whole REST bodies ``*.json``, whose endpoint is recognised from the body or name).
Lines of no known layout are skipped, and so are a capture's ``status`` lines (the collector's own events).

Frames of all files of a venue are merged by time (each file keeps its order), identical frames are kept
once, and non-data frames (acks, pongs, channels MarketPrism does not collect) are left out. A frame's
time is its receive time, else its event time, else the previous frame's time.

A connection gets the frames of the streams it subscribed in recorded order, at recorded pace x speed.
The server keeps, per stream, how far it has been sent; a stream subscribed again (after a disconnect)
resumes ``overlap`` frames before that point, so the collector sees real duplicates.
"""

from __future__ import annotations

import asyncio
import contextlib
import heapq
import os
import time
from collections import Counter
from typing import Any

import orjson

from marketprism.records import DataType, Depth, Ticker, Trade
from marketprism.sim.backend import VenueBackend
from marketprism.sim.book import InstrumentSpec
from marketprism.sim.connection import Connection
from marketprism.sim.frames import Frame, StreamKey, Sub
from marketprism.sim.protocol import RestKey, VenueWire
from marketprism.stream.capture import REST, WS, read_recording
from marketprism.venues.base import ParseError, Venue

MAX_GAP_S = 5.0  # longest wait between two replayed frames, in recorded seconds
_DEPTH_REST_KINDS = frozenset({"depth", "books", "orderbook"})


def _fill_times(per_file: list[list[tuple[float | None, str, StreamKey]]]) -> list[list[tuple[float, str, StreamKey]]]:
    """Give every frame a time: the previous timed frame's in its file, else the next one's; a file
    without any time (e.g. spot bookTicker, which carries none) starts with the earliest recorded time."""
    known = [t for items in per_file for t, _, _ in items if t is not None]
    start = min(known) if known else 0.0
    out: list[list[tuple[float, str, StreamKey]]] = []
    for items in per_file:
        last = next((t for t, _, _ in items if t is not None), start)
        filled = []
        for t, text, key in items:
            last = t if t is not None else last
            filled.append((last, text, key))
        out.append(filled)
    return out


class ReplaySource:
    """One venue's recorded frames per stream, recorded REST bodies, and how far each stream was sent."""

    def __init__(self, venue: Venue, wire: VenueWire):
        self.venue = venue
        self.wire = wire
        self.streams: dict[StreamKey, list[Frame]] = {}
        self.rest: dict[RestKey, list[tuple[float | None, str]]] = {}
        self.symbols: dict[str, str] = {}  # instrument -> normalised symbol, from the parser
        self.cursor: dict[StreamKey, int] = {}  # next index never sent yet, per stream
        self.subscribed: set[StreamKey] = set()  # streams some client has asked for
        self.last_t: dict[StreamKey, float] = {}
        self.source_frames: dict[str, dict[DataType, int]] = {}
        self.source_records: Counter[str] = Counter()
        self.parse_errors = 0
        self.skipped = 0
        self.duplicates = 0

    @classmethod
    def load(cls, venue: Venue, wire: VenueWire, paths: list[str]) -> ReplaySource:
        src = cls(venue, wire)
        per_file = _fill_times([src._read_file(path) for path in paths])
        seen: set[str] = set()
        order = 0
        play_t = 0.0
        prev_t: float | None = None
        for t, text, key in heapq.merge(*per_file, key=lambda item: item[0]):
            if text in seen:
                src.duplicates += 1
                continue
            seen.add(text)
            # Pace by recorded gaps, but never wait for a gap longer than MAX_GAP_S: files recorded
            # years apart, or a receive clock mixed with an exchange clock, must not freeze the replay.
            if prev_t is not None:
                play_t += min(max(t - prev_t, 0.0), MAX_GAP_S)
            prev_t = t
            frames = src.streams.setdefault(key, [])
            frames.append(Frame(key, text, index=len(frames), order=order, t=t, play_t=play_t))
            order += 1
        src._count_records()
        return src

    def _read_file(self, path: str) -> list[tuple[float | None, str, StreamKey]]:
        name = os.path.basename(path)
        items: list[tuple[float | None, str, StreamKey]] = []
        unnamed_depth_bodies: list[tuple[float | None, str]] = []
        depth_instruments: set[str] = set()
        for rec in read_recording(path, strict=False):
            t = rec.recv_ts / 1e6 if rec.recv_ts is not None else None
            if rec.source == REST:
                self._add_body(t, rec.url, rec.data, name, unnamed_depth_bodies)
                continue
            if rec.source != WS:
                continue  # a collector's status line: not something the venue sent
            try:
                obj = orjson.loads(rec.data)
            except orjson.JSONDecodeError:
                self.skipped += 1
                continue
            classified = self.wire.classify(obj)
            if classified is None:
                # hftbacktest writes the REST depth snapshot among the frames, without a wrapper.
                if self.wire.classify_rest(None, obj, "") is not None:
                    self._add_body(t, None, rec.data, "", unnamed_depth_bodies, obj)
                else:
                    self.skipped += 1
                continue
            key, event_ms = classified
            if t is None and event_ms:
                t = event_ms / 1000
            if key[1] is DataType.DEPTH:
                depth_instruments.add(key[0])
            items.append((t, rec.data, key))
        if unnamed_depth_bodies:
            if len(depth_instruments) != 1:
                raise ValueError(
                    f"{path}: a REST depth body names no symbol and the file's depth frames do not "
                    "name exactly one; put the symbol in the file name (depth_<SYMBOL>_...)"
                )
            symbol = next(iter(depth_instruments))
            self.rest.setdefault(("depth", symbol), []).extend(unnamed_depth_bodies)
        return items

    def _add_body(self, t: float | None, url: str | None, body: str, filename: str,
                  unnamed: list[tuple[float | None, str]], obj: Any = None) -> None:  # fmt: skip
        if obj is None:
            try:
                obj = orjson.loads(body)
            except orjson.JSONDecodeError:
                self.skipped += 1
                return
        key = self.wire.classify_rest(url, obj, filename)
        if key is None:
            self.skipped += 1
        elif key[0] in _DEPTH_REST_KINDS and not key[1]:
            unnamed.append((t, body))
        else:
            self.rest.setdefault(key, []).append((t, body))

    def _count_records(self) -> None:
        """Records per MarketPrism subject, from the project's own parser over the frames in play order."""
        parser = self.venue.new_parser()
        everything = sorted((f for frames in self.streams.values() for f in frames), key=lambda f: f.order)
        for frame in everything:
            inst, dtype = frame.key
            per = self.source_frames.setdefault(inst, {})
            per[dtype] = per.get(dtype, 0) + 1
            try:
                records = parser.parse(frame.text, 0)
            except ParseError:
                self.parse_errors += 1
                continue
            for rec in records:
                self.source_records[rec.subject()] += 1
                self.symbols.setdefault(rec.instrument, rec.symbol)
                if isinstance(rec, Trade):
                    frame.trades += 1
                    if rec.trade_id.isdigit():
                        frame.seq = int(rec.trade_id)
                else:
                    if isinstance(rec, Depth | Ticker) and rec.seq is not None:
                        frame.seq = rec.seq
                    if isinstance(rec, Depth) and rec.checksum is not None:
                        frame.checksum = rec.checksum  # lets corrupt_checksum_every_n work on replays too

    # --- serving -------------------------------------------------------------------------------------

    def body_for(self, key: RestKey) -> str | None:
        bodies = self.rest.get(key)
        if not bodies:
            return None
        if key[0] in _DEPTH_REST_KINDS:
            # The snapshot recorded closest before the point the depth stream has been replayed to, so a
            # client syncing now gets a snapshot its buffered frames can bridge.
            now_t = self.last_t.get((key[1], DataType.DEPTH))
            timed = sorted((t, body) for t, body in bodies if t is not None)
            if now_t is not None and timed:
                before = [body for t, body in timed if t <= now_t]
                return before[-1] if before else timed[0][1]
            return bodies[0][1]
        return bodies[-1][1]

    def done(self) -> bool:
        """Every stream a client asked for has been sent to its end (a venue with no frames is done)."""
        if not self.streams:
            return True
        return bool(self.subscribed) and all(
            self.cursor.get(key, 0) >= len(self.streams.get(key, ())) for key in self.subscribed
        )

    def summary(self) -> dict[str, Any]:
        return {
            "subjects": dict(self.source_records),
            "frames": {inst: {str(dt): n for dt, n in per.items()} for inst, per in self.source_frames.items()},
            "parse_errors": self.parse_errors,
            "skipped": self.skipped,
            "duplicates": self.duplicates,
            "done": self.done(),
        }

    def mark_sent(self, frame: Frame) -> None:
        if frame.index + 1 > self.cursor.get(frame.key, 0):
            self.cursor[frame.key] = frame.index + 1
        self.last_t[frame.key] = frame.t


class ReplayPlayer:
    """Feeds one connection the frames of its subscribed streams, merged in recorded order."""

    def __init__(self, conn: Connection, source: ReplaySource, speed: float, overlap: int):
        self.conn = conn
        self.source = source
        self.speed = speed
        self.overlap = overlap
        self.pos: dict[StreamKey, int] = {}
        self._changed = asyncio.Event()

    def add(self, key: StreamKey) -> None:
        if key in self.pos:
            return
        self.source.subscribed.add(key)
        start = self.source.cursor.get(key, 0)
        self.pos[key] = max(0, start - self.overlap)
        self._changed.set()

    def remove(self, key: StreamKey) -> None:
        if self.pos.pop(key, None) is not None:
            self._changed.set()

    def _heap(self) -> list[tuple[int, StreamKey]]:
        heap = []
        for key, i in self.pos.items():
            frames = self.source.streams.get(key, [])
            if i < len(frames):
                heap.append((frames[i].order, key))
        heapq.heapify(heap)
        return heap

    def _start_time(self) -> float:
        """Where this connection's replay clock starts: where the previous connection stopped (the
        latest frame sent of a resumed stream; its overlap goes out at once), else the first frame."""
        streams, cursor = self.source.streams, self.source.cursor
        resumed = [streams[k][cursor[k] - 1].play_t for k in self.pos if cursor.get(k, 0) > 0 and k in streams]
        if resumed:
            return max(resumed)
        firsts = [streams[k][i].play_t for k, i in self.pos.items() if i < len(streams.get(k, ()))]
        return min(firsts, default=0.0)

    async def run(self) -> None:
        conn, streams = self.conn, self.source.streams
        heap: list[tuple[int, StreamKey]] = []
        anchor: tuple[float, float] | None = None  # (wall clock, play time) of the first frame sent
        sent = 0
        while not conn.closing:
            if self._changed.is_set():
                self._changed.clear()
                heap = self._heap()
            if not heap:
                await self._changed.wait()
                continue
            key = heap[0][1]
            i = self.pos[key]
            frames = streams[key]
            frame = frames[i]
            if self.speed > 0:
                if anchor is None:
                    anchor = (time.monotonic(), self._start_time())
                delay = anchor[0] + (frame.play_t - anchor[1]) / self.speed - time.monotonic()
                if delay > 0.001:
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(self._changed.wait(), delay)
                    continue  # the time has come, or the subscriptions changed: look again
            heapq.heappop(heap)
            conn.deliver(frame)
            self.pos[key] = i + 1
            if i + 1 < len(frames):
                heapq.heappush(heap, (frames[i + 1].order, key))
            sent += 1
            if conn.backlog >= 1000:
                await conn.drained.wait()
            elif sent % 500 == 0:
                await asyncio.sleep(0)


class ReplayVenue(VenueBackend):
    def __init__(self, venue: Venue, wire: VenueWire, source: ReplaySource, speed: float, overlap: int):
        self.venue = venue
        self.wire = wire
        self.source = source
        self.speed = speed
        self.overlap = overlap
        self._players: dict[Connection, ReplayPlayer] = {}

    def known(self, instrument: str) -> bool:
        return True  # a recording may simply hold no frame of a stream the venue had

    def on_subscribe(self, conn: Connection, key: StreamKey, sub: Sub) -> None:
        player = self._players.get(conn)
        if player is None:
            player = self._players[conn] = ReplayPlayer(conn, self.source, self.speed, self.overlap)
            conn.spawn(player.run())
        player.add(key)

    def on_unsubscribe(self, conn: Connection, key: StreamKey, sub: Sub) -> None:
        player = self._players.get(conn)
        if player is not None and key not in conn.subs:
            player.remove(key)

    def on_close(self, conn: Connection) -> None:
        self._players.pop(conn, None)  # its task is cancelled with the connection's tasks

    def recorded_rest(self, key: RestKey) -> str | None:
        return self.source.body_for(key)

    def specs(self) -> list[tuple[str, InstrumentSpec]]:
        return [(inst, InstrumentSpec.for_symbol(sym, 0)) for inst, sym in sorted(self.source.symbols.items())]

    def is_resent(self, frame: Frame) -> bool:
        return frame.index < self.source.cursor.get(frame.key, 0)

    def on_sent(self, frame: Frame) -> None:
        self.source.mark_sent(frame)
