"""``marketprism book verify``: run the sync engine over recorded frames and count what it proves.

Inputs (one or more files, merged by receive time; each keeps its own order): every layout
``marketprism.stream.capture.read_recording`` reads, gzip or zstd by content:

* MarketPrism captures (DESIGN §6): ``{"recv_ts": µs, "source": "ws"|"rest"|"status", "url": .., "data": ..}``.
* cryptofeed raw recordings: ``*.ws.raw.txt`` (``<epoch>: <frame>``; the ``<url> <-> <epoch>`` connect
  line names the venue) and its REST companion ``*.http.raw.txt`` (``<url> -> <epoch>: <body>``), which
  is picked up automatically when it sits next to the ``.ws.raw.txt`` file.
* hftbacktest recordings (``<ns> <frame>``), whose REST depth snapshot is a bare ``{"lastUpdateId":..}``
  line among the frames (applied to the symbol of the depth frames before it).
* Plain frame-per-line files (the fixtures' ``*.jsonl``), with REST snapshot bodies given by
  ``--snapshot [INSTRUMENT=]FILE`` (instrument from the file name ``..._depth_<INSTRUMENT>_...`` when not
  given), each applied just before the first depth frame of its instrument.

REST depth bodies are the Binance snapshots, applied at the point in the stream where they were
received (exactly what the order-book processor does with a fetched snapshot). OKX and Bybit books
start from the snapshot pushed in the stream; other REST bodies are counted and skipped. A snapshot may
come after depth frames of its symbol: they are buffered (as the processor does) and bridged from it.

Reconnects. A capture the collector recorded holds its ``status`` lines: ``disconnected`` drops that
symbol's book (counted as a resync with reason ``disconnect``, never as a gap), and the frames of the next
connection wait in the buffer for the next snapshot: the REST body the collector fetched after
resubscribing (Binance), or the snapshot the venue pushes on subscribe (OKX, Bybit). The sequence break
between the two connections is then explained, not a gap. A recording without status lines has no such
explanation: a break there is counted as a gap, since nothing tells it apart from a lost frame.

The venue of a frame is ``--venue`` when given; else the URL that came with it (capture line, cryptofeed
connect line), matched against the venue declarations' hosts, or a simulator's ``/<venue>/`` path prefix;
else the frame itself: a Binance combined-stream depth frame with ``pu`` is USDⓈ-M, without it spot;
``{"arg":..}`` is OKX; ``{"topic":..}`` is Bybit.

The result (``VerifyReport.as_dict()``): input counts, the engine's totals, and per symbol its counters,
final state and best bid/ask. It passes (``ok``) when depth frames were read, every symbol got a snapshot
(``never_synced`` lists those that did not: nothing about them was verified), and no gap, checksum
failure or crossed book was found.
"""

from __future__ import annotations

import heapq
import re
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import msgspec

from marketprism.book.snapshots import (
    SnapshotError,
    binance_depth_request,
    binance_depth_snapshot,
    is_binance_depth_body,
)
from marketprism.book.sync import DEFAULT_BUFFER_LIMIT, SymbolBooks
from marketprism.records import Depth, Record, Status
from marketprism.stream.capture import REST, STATUS, RecordedItem, read_recording
from marketprism.venues import VENUES, ParseError, Parser, Venue

_SNAPSHOT_FILE_INSTRUMENT = re.compile(r"_depth_([A-Za-z0-9]+)_")
_status_decoder = msgspec.json.Decoder(Status)


def _timed(items: Iterable[RecordedItem]) -> Iterator[tuple[int, RecordedItem]]:
    """Items with a sort time: their own, else the previous item's (a file without times sorts first)."""
    last = 0
    for item in items:
        if item.recv_ts is not None:
            last = item.recv_ts
        yield last, item


def merged(paths: Sequence[str | Path]) -> Iterator[RecordedItem]:
    """The items of several recordings merged by receive time (ties and untimed items keep file order)."""
    streams = [_timed(read_recording(p)) for p in paths]
    for _, item in heapq.merge(*streams, key=lambda pair: pair[0]):
        yield item


def with_rest_companions(paths: Sequence[str | Path]) -> list[Path]:
    """The given files plus the ``*.http.raw.txt`` next to each cryptofeed ``*.ws.raw.txt`` (once each)."""
    out: list[Path] = []
    for p in map(Path, paths):
        if p not in out:
            out.append(p)
        if p.name.endswith(".ws.raw.txt"):
            rest = p.with_name(p.name.removesuffix(".ws.raw.txt") + ".http.raw.txt")
            if rest.is_file() and rest not in out:
                out.append(rest)
    return out


def venue_for_url(url: str | None) -> Venue | None:
    """The venue a WebSocket or REST URL belongs to: a simulator's ``/<venue>/`` prefix, or a venue host."""
    if not url:
        return None
    parts = urlsplit(url)
    for segment in parts.path.strip("/").split("/"):
        if segment in VENUES:
            return VENUES[segment]
    host = parts.hostname
    for venue in VENUES.values():
        if host == urlsplit(venue.ws_url).hostname and parts.path.startswith(venue.ws_path):
            return venue
    for venue in VENUES.values():
        if host == urlsplit(venue.rest_url).hostname:
            return venue
    return None


def venue_for_frame(frame: str) -> Venue | None:
    """The venue of a depth frame judged by its shape, for recordings without URLs (None: not depth)."""
    head = frame[:200]
    if head.startswith('{"stream":"'):
        if "@depth" not in head[:60]:
            return None
        return VENUES["binance_usdm"] if '"pu":' in frame else VENUES["binance_spot"]
    if head.startswith('{"arg":'):
        return VENUES["okx_spot"]
    if head.startswith('{"topic":'):
        return VENUES["bybit_linear"]
    return None


@dataclass(slots=True)
class PendingSnapshot:
    """A REST depth body applied just before the first depth frame of ``instrument`` (None: of the first
    depth frame of any instrument)."""

    body: bytes
    instrument: str | None

    @classmethod
    def from_spec(cls, spec: str) -> PendingSnapshot:
        """``[INSTRUMENT=]FILE``; without INSTRUMENT it is read from the file name (``_depth_<X>_``)."""
        inst, sep, file = spec.partition("=")
        if not sep:
            file, inst = spec, ""
            if m := _SNAPSHOT_FILE_INSTRUMENT.search(Path(file).name):
                inst = m.group(1)
        path = Path(file)
        if not path.is_file():
            raise ValueError(f"snapshot file not found: {file}")
        return cls(path.read_bytes(), inst.upper() or None)


@dataclass
class VerifyReport:
    files: list[str]
    books: SymbolBooks
    venues: set[str] = field(default_factory=set)
    input_frames: int = 0  # WebSocket frames read
    rest_snapshots: int = 0  # REST depth snapshots applied
    rest_ignored: int = 0  # other REST bodies
    status_records: int = 0  # the collector's connection events (capture ``status`` lines)
    parse_errors: int = 0
    skipped: int = 0  # frames of no known venue, or (judged by shape, without a URL) not depth frames

    @property
    def never_synced(self) -> list[str]:
        """Symbols whose book never had a snapshot: nothing about them was verified."""
        return sorted(str(m.key) for m in self.books.machines() if m.counters.snapshots == 0)

    @property
    def ok(self) -> bool:
        t = self.books.totals()
        verified = t.frames > 0 and not self.never_synced
        return verified and t.gaps == 0 and t.checksum_failed == 0 and t.crossed == 0

    def as_dict(self) -> dict[str, Any]:
        totals = self.books.totals().as_dict()
        symbols: dict[str, Any] = {}
        for machine in sorted(self.books.machines(), key=lambda m: m.key):
            book = machine.book
            symbols[str(machine.key)] = {
                "state": machine.state.value, **machine.counters.as_dict(), "seq": machine.last_seq,
                "best_bid": book.best_bid(), "best_ask": book.best_ask(), "bid_levels": book.bid_count,
                "ask_levels": book.ask_count,
            }  # fmt: skip
        return {
            "ok": self.ok, "files": self.files, "venues": sorted(self.venues), "input_frames": self.input_frames,
            "rest_snapshots": self.rest_snapshots, "rest_ignored": self.rest_ignored,
            "status_records": self.status_records,
            "parse_errors": self.parse_errors, "skipped": self.skipped, **totals,
            "never_synced": self.never_synced, "symbols": symbols,
        }  # fmt: skip


class BookVerifier:
    """Feeds recorded frames through venue parsers into a ``SymbolBooks``, REST snapshots included."""

    def __init__(
        self,
        venue: str | None = None,
        *,
        snapshots: Sequence[PendingSnapshot] = (),
        buffer_limit: int = DEFAULT_BUFFER_LIMIT,
        check_crossed: bool = True,
    ):
        self.venue = VENUES[venue] if venue is not None else None
        self.books = SymbolBooks(buffer_limit=buffer_limit, check_crossed=check_crossed)
        self.report = VerifyReport([], self.books)
        self._parsers: dict[str, Parser] = {}
        self._pending_snapshots = list(snapshots)
        self._last_depth: Depth | None = None  # for hftbacktest's bare REST body

    def run(self, paths: Sequence[str | Path], *, rest_companions: bool = True) -> VerifyReport:
        files = with_rest_companions(paths) if rest_companions else [Path(p) for p in paths]
        self.report.files = [str(p) for p in files]
        for item in merged(files):
            self.feed(item)
        return self.report

    def feed(self, item: RecordedItem) -> None:
        recv_ts = item.recv_ts or 0
        if item.source == REST:
            self._rest(item.url, item.data, recv_ts)
            return
        if item.source == STATUS:
            self._status(item.data)
            return
        if item.url is None and is_binance_depth_body(item.data):
            self._rest(None, item.data, recv_ts)  # hftbacktest: the REST body among the frames
            return
        self.report.input_frames += 1
        venue = self.venue or venue_for_url(item.url) or venue_for_frame(item.data)
        if venue is None:
            self.report.skipped += 1
            return
        parser = self._parsers.get(venue.name)
        if parser is None:
            parser = self._parsers[venue.name] = venue.new_parser()
        try:
            records = parser.parse(item.data, recv_ts)
        except ParseError:
            self.report.parse_errors += 1
            return
        for record in records:
            self._record(venue, record)

    def _record(self, venue: Venue, record: Record) -> None:
        if isinstance(record, Depth):
            self.report.venues.add(venue.name)
            if self._pending_snapshots:
                self._apply_snapshot_files(record)
            self._last_depth = record
            self.books.feed(record)
        elif isinstance(record, Status):
            self.books.feed(record)

    def _status(self, data: str) -> None:
        """A collector's connection event: ``disconnected`` drops the symbol's book (see the module doc)."""
        try:
            status = _status_decoder.decode(data)
        except (msgspec.DecodeError, msgspec.ValidationError):
            self.report.parse_errors += 1
            return
        self.report.status_records += 1
        self.books.feed(status)

    def _apply_snapshot_files(self, depth: Depth) -> None:
        for snap in list(self._pending_snapshots):
            if snap.instrument in (None, depth.instrument.upper()):
                self._pending_snapshots.remove(snap)
                self._snapshot(snap.body, depth.market, depth.instrument, depth.recv_ts, depth.symbol)

    def _rest(self, url: str | None, body: str, recv_ts: int) -> None:
        request = binance_depth_request(url) if url else None
        if request is not None:
            market, instrument = request
            symbol = None
        elif url is None and is_binance_depth_body(body):
            last = self._last_depth
            if last is None:  # before any depth frame: for the first one to come
                self._pending_snapshots.append(PendingSnapshot(body.encode(), None))
                return
            market, instrument, symbol = last.market, last.instrument, last.symbol
        else:
            self.report.rest_ignored += 1
            return
        last = self._last_depth
        if last is not None and last.instrument == instrument and last.market == market:
            symbol = last.symbol  # the parser's normalisation, if it already named this one
        self._snapshot(body, market, instrument, recv_ts, symbol)

    def _snapshot(self, body: str | bytes, market: str, instrument: str, recv_ts: int, symbol: str | None) -> None:
        try:
            depth = binance_depth_snapshot(body, market=market, instrument=instrument, recv_ts=recv_ts, symbol=symbol)
        except (SnapshotError, ValueError):
            self.report.rest_ignored += 1
            return
        self.report.rest_snapshots += 1
        self.books.snapshot(depth)


def verify(
    paths: Sequence[str | Path],
    *,
    venue: str | None = None,
    snapshots: Sequence[str] = (),
    buffer_limit: int = DEFAULT_BUFFER_LIMIT,
    rest_companions: bool = True,
) -> VerifyReport:
    """Verify recordings (see the module doc); ``snapshots`` are ``[INSTRUMENT=]FILE`` specs."""
    if venue is not None and venue not in VENUES:
        raise ValueError(f"unknown venue {venue!r}; known: {', '.join(VENUES)}")
    pending = [PendingSnapshot.from_spec(s) for s in snapshots]
    verifier = BookVerifier(venue, snapshots=pending, buffer_limit=buffer_limit)
    return verifier.run(paths, rest_companions=rest_companions)


__all__ = [
    "BookVerifier",
    "PendingSnapshot",
    "VerifyReport",
    "merged",
    "venue_for_frame",
    "venue_for_url",
    "verify",
]
