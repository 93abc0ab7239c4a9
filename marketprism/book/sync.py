"""Sync state machines: one per venue rule, each keeping one symbol's ``L2Book`` provably in sync.

Every machine takes the collector's ``Depth`` records (venue sequence fields intact) and snapshots, and
answers each with a ``SyncResult``. The rules (see ``../shared/fixtures/SOURCES.md`` §3 and §5):

``BinanceSpotSync``
    Buffer updates until a REST snapshot (``lastUpdateId`` = L) arrives; drop buffered updates with
    ``u <= L``; the first update applied must satisfy ``U <= L+1 <= u`` (the real 2021 recordings start at
    exactly ``U == L+1``, the 2024 one has ``U <= L``); afterwards every ``U == previous u + 1``.
``BinanceFuturesSync`` (USDⓈ-M, and COIN-M, which follows the same rule)
    Drop ``u < L``; the first update must satisfy ``U <= L <= u``; afterwards ``pu == previous u``.
``OkxBookSync``
    The stream's own snapshot, then updates with ``prevSeqId == previous seqId`` (equality: seqIds are not
    consecutive). ``seqId == prevSeqId`` with empty sides is a keep-alive; ``seqId < prevSeqId`` (with
    ``prevSeqId`` chained) is the venue's maintenance reset, applied and counted (``seq_resets``). After
    every message the CRC32 checksum of the top 25 levels is verified when the venue sent one (0 or absent
    means none: OKX retires it in 2026). A repeated snapshot replaces the book. Frames from before 2023
    carry no seqId: the checksum is then the only continuity proof.
``BybitBookSync``
    The stream's snapshot, then deltas with ``u == previous u + 1``; a snapshot replaces the book (one with
    ``u == 1`` after a service restart is counted as a venue reset).

All machines check for a crossed book after every change, and a ``status`` record ``disconnected`` for the
symbol invalidates its book. States (``SyncState``)::

    WAITING_SNAPSHOT --(stream snapshot)--------------------------> SYNCED          OKX, Bybit
    BUFFERING --(REST snapshot)--> BRIDGING --(bridging update)--> SYNCED           Binance
    SYNCED --(gap | checksum | crossed | disconnect | malformed)--> RESYNC_NEEDED --(snapshot)--> ...

In ``RESYNC_NEEDED`` a Binance machine keeps buffering (the next REST snapshot is bridged with that
buffer); OKX/Bybit machines drop updates until the new snapshot their resubscription brings. A resync
never touches another symbol: each symbol has its own machine, and ``SymbolBooks`` routes records to them.
After a disconnect an OKX/Bybit machine waits without asking (the collector's reconnect resubscribes,
which brings a snapshot); updates that arrive with no snapshot before them (a processor joining
mid-stream) ask for a resubscription once. A Binance REST snapshot not newer than a valid book is ignored.

Outputs, for the order-book processor:

* ``SyncResult`` per call, and ``SyncCounters`` per symbol (applied, dropped_before_bridge, gaps,
  resyncs by reason, checksum_ok/failed, snapshots, ...);
* ``ResyncRequest``s, each raised once when a machine starts needing something from outside: a REST
  snapshot (``ResyncAction.FETCH_SNAPSHOT``, Binance) or a resubscription (``RESUBSCRIBE``, OKX, Bybit);
* ``on_delta``: every validated change as a ``BookDelta`` (snapshot, update, resync marker), in order;
* ``book_record(n)``: a ``Book`` of the top ``n`` levels, only while the book is valid.

Machines are synchronous and do no I/O: the processor fetches snapshots / asks the collector to
resubscribe, and feeds the results back (``snapshot()`` or the stream's own snapshot record).
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, fields
from enum import StrEnum
from typing import Any, ClassVar, NamedTuple

import msgspec

from marketprism.book.l2 import DEFAULT_WINDOW, L2Book
from marketprism.book.records import EMPTY_LEVELS, Book, BookDelta
from marketprism.records import Depth, Exchange, Market, Record, Status

DEFAULT_BUFFER_LIMIT = 1000  # Binance updates held per symbol while a REST snapshot is awaited (100 s at 100 ms)
DEFAULT_BOOK_DEPTH = 20


class SyncState(StrEnum):
    WAITING_SNAPSHOT = "waiting_snapshot"  # no book; the stream's snapshot is expected (OKX, Bybit)
    BUFFERING = "buffering"  # no book yet; updates buffered until the REST snapshot (Binance)
    BRIDGING = "bridging"  # REST snapshot loaded; waiting for the update that bridges it (Binance)
    SYNCED = "synced"  # every update validated and applied
    RESYNC_NEEDED = "resync_needed"  # book lost (see ``resync_reason``); waiting for the requested resync


class SyncResult(StrEnum):
    """What one ``feed``/``snapshot``/``disconnect`` call did."""

    APPLIED = "applied"  # validated and applied to the book
    SNAPSHOT = "snapshot"  # a snapshot replaced the book (and buffered updates bridging it were applied)
    BUFFERED = "buffered"  # held until a REST snapshot arrives (Binance)
    DROPPED = "dropped"  # not applicable: already in the snapshot, or no snapshot to apply it to yet
    DUPLICATE = "duplicate"  # already applied (the sequence did not advance): ignored
    KEEPALIVE = "keepalive"  # OKX seqId == prevSeqId with no levels: nothing changed
    RESYNC = "resync"  # the book is invalid; ``machine.resync_reason`` says why
    IGNORED = "ignored"  # not for a book (SymbolBooks: other record types, venues without a sync rule)


class ResyncReason(StrEnum):
    GAP = "gap"  # a sequence break: updates were lost
    CHECKSUM = "checksum"  # the venue's checksum differs from the local book's
    CROSSED = "crossed"  # best bid >= best ask after an update
    DISCONNECT = "disconnect"  # the collector reported the connection lost (status record)
    RESET = "reset"  # the venue restarted the book: an unrequested snapshot replaced a live one
    STALE_SNAPSHOT = "stale_snapshot"  # a Binance REST snapshot older than the buffered stream: fetch again
    NO_SNAPSHOT = "no_snapshot"  # OKX/Bybit updates with no snapshot before them (e.g. joined mid-stream)
    MALFORMED = "malformed"  # levels that are not [price, size, ...] numbers
    REQUESTED = "requested"  # the caller invalidated the book (``invalidate``)
    START = "start"  # (requests only) the first snapshot of a Binance book; not counted as a resync


class ResyncAction(StrEnum):
    FETCH_SNAPSHOT = "fetch_snapshot"  # GET the venue's REST depth snapshot, then ``snapshot(depth)``
    RESUBSCRIBE = "resubscribe"  # ask the collector to resubscribe the depth stream (it brings a snapshot)


class BookKey(NamedTuple):
    exchange: str
    market: str
    symbol: str

    def __str__(self) -> str:
        return f"{self.exchange}:{self.market}:{self.symbol}"


@dataclass(frozen=True, slots=True)
class ResyncRequest:
    """Something a book needs from outside to become valid again. ``instrument`` is the venue's id."""

    key: BookKey
    instrument: str
    action: ResyncAction
    reason: ResyncReason


@dataclass(slots=True)
class SyncCounters:
    """Per-symbol counts (``as_dict()`` for JSON). A buffered update is counted again when it is later
    applied or dropped; an update that breaks the book (gap, checksum, crossed) is counted only there."""

    frames: int = 0  # depth records fed: updates and snapshots (stream or REST)
    applied: int = 0  # updates validated and applied
    snapshots: int = 0  # snapshots loaded into the book
    buffered: int = 0  # updates put in the buffer while waiting for a REST snapshot (Binance)
    buffer_overflow: int = 0  # buffered updates dropped, oldest first, because the buffer was full
    dropped_before_bridge: int = 0  # updates already in the snapshot, or before any usable snapshot
    duplicates: int = 0  # updates whose sequence did not advance
    keepalives: int = 0  # OKX keep-alives
    gaps: int = 0  # sequence breaks
    checksum_ok: int = 0
    checksum_failed: int = 0
    crossed: int = 0  # crossed books detected
    seq_resets: int = 0  # OKX maintenance resets (seqId < prevSeqId), applied
    stale_snapshots: int = 0  # Binance REST snapshots older than the buffered updates
    resyncs: dict[str, int] = field(default_factory=dict)  # book losses by ResyncReason

    def count_resync(self, reason: str) -> None:
        key = str(reason)  # plain str keys (not the enum) keep the dict JSON-encodable by any encoder
        self.resyncs[key] = self.resyncs.get(key, 0) + 1

    @property
    def resyncs_total(self) -> int:
        return sum(self.resyncs.values())

    def add(self, other: SyncCounters) -> None:
        for f in fields(self):
            if f.name == "resyncs":
                for reason, n in other.resyncs.items():
                    self.resyncs[reason] = self.resyncs.get(reason, 0) + n
            else:
                setattr(self, f.name, getattr(self, f.name) + getattr(other, f.name))

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready: every counter, ``resyncs`` as the total and ``resyncs_by_reason``."""
        out: dict[str, Any] = {f.name: getattr(self, f.name) for f in fields(self) if f.name != "resyncs"}
        out["resyncs"] = self.resyncs_total
        out["resyncs_by_reason"] = dict(sorted(self.resyncs.items()))
        return out


DeltaSink = Callable[[BookDelta], object]
RequestSink = Callable[[ResyncRequest], object]

_BAD_LEVELS = (msgspec.ValidationError, msgspec.DecodeError, ValueError)
_SYNCED = SyncState.SYNCED
_APPLIED = SyncResult.APPLIED


class BookSync:
    """The shared part of every venue machine: the book, counters, outputs and the loss of sync.

    Public attributes: ``key`` (``BookKey``), ``instrument``, ``book`` (``L2Book``; read it only while
    ``has_book``), ``state``, ``counters``, ``last_seq`` (venue sequence of the book), ``last_ts`` /
    ``last_recv_ts`` (of the last message applied), ``resync_reason`` (why the book was last lost),
    ``wants`` (the ``ResyncAction`` requested and not yet satisfied, or None), ``version`` (bumped on every
    change of the book; compare it to publish only changed books).
    """

    resync_action: ClassVar[ResyncAction]
    initial_state: ClassVar[SyncState] = SyncState.WAITING_SNAPSHOT
    verifies_checksum: ClassVar[bool] = False

    def __init__(
        self,
        exchange: str,
        market: str,
        symbol: str,
        instrument: str = "",
        *,
        buffer_limit: int = DEFAULT_BUFFER_LIMIT,
        check_crossed: bool = True,
        book_window: int = DEFAULT_WINDOW,
        on_delta: DeltaSink | None = None,
        on_request: RequestSink | None = None,
    ):
        if buffer_limit < 1:
            raise ValueError(f"buffer_limit must be >= 1, got {buffer_limit}")
        self.key = BookKey(exchange, market, symbol)
        self.instrument = instrument or symbol
        self.book = L2Book(book_window)
        self.counters = SyncCounters()
        self.state: SyncState = self.initial_state
        self.last_seq: int | None = None
        self.last_ts = 0
        self.last_recv_ts = 0
        self.last_checksum: int | None = None
        self.resync_reason: ResyncReason | None = None
        self.wants: ResyncAction | None = None
        self.version = 0
        self.buffer_limit = buffer_limit
        self.check_crossed = check_crossed
        self.on_delta = on_delta
        self.on_request = on_request

    # --- public API ------------------------------------------------------------------------------------
    def feed(self, depth: Depth) -> SyncResult:  # pragma: no cover - every machine overrides it
        """One depth record from the stream (update or the venue's snapshot push)."""
        raise NotImplementedError

    def snapshot(self, depth: Depth) -> SyncResult:
        """A snapshot from outside the stream (a REST body, see ``marketprism.book.snapshots``)."""
        self.counters.frames += 1
        return self._snapshot(depth)

    def disconnect(self) -> SyncResult:
        """The collector lost the connection carrying this symbol: updates may have been missed."""
        return self._lose(ResyncReason.DISCONNECT)

    def invalidate(self, reason: ResyncReason = ResyncReason.REQUESTED) -> SyncResult:
        """Drop the book and ask for a resync (e.g. the processor's own audit found it wrong)."""
        return self._lose(reason)

    @property
    def has_book(self) -> bool:
        """The book is valid at ``last_seq`` (synced, or a Binance snapshot awaiting its bridge)."""
        return self.state is _SYNCED or self.state is SyncState.BRIDGING

    @property
    def synced(self) -> bool:
        return self.state is _SYNCED

    def book_record(self, depth: int = DEFAULT_BOOK_DEPTH) -> Book | None:
        """The top ``depth`` levels as a ``Book`` record, or None while the book is not valid."""
        if not self.has_book:
            return None
        bids, asks = self.book.top(depth)
        ex, market, symbol = self.key
        return Book(
            exchange=ex, market=market, symbol=symbol, instrument=self.instrument, ts=self.last_ts,
            recv_ts=self.last_recv_ts, depth=depth, bids=bids, asks=asks, seq=self.last_seq,
        )  # fmt: skip

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.key}, {self.state}, seq={self.last_seq}, {self.book!r})"

    # --- shared mechanics ------------------------------------------------------------------------------
    def _snapshot(self, depth: Depth) -> SyncResult:  # pragma: no cover - every machine overrides it
        raise NotImplementedError

    def _apply(self, depth: Depth, prev_seq: int | None) -> SyncResult:
        """Apply one validated update, verify the result (checksum, crossed), then publish it."""
        book = self.book
        try:
            book.apply_raw(depth.bids, depth.asks)
        except _BAD_LEVELS:
            return self._lose(ResyncReason.MALFORMED, depth)
        if self.verifies_checksum and depth.checksum and not self._checksum_matches(depth.checksum):
            return self._lose(ResyncReason.CHECKSUM, depth)
        if self.check_crossed and book.is_crossed():
            self.counters.crossed += 1
            return self._lose(ResyncReason.CROSSED, depth)
        self.last_seq = depth.seq
        self.last_ts = depth.ts
        self.last_recv_ts = depth.recv_ts
        self.version += 1
        self.counters.applied += 1
        if self.on_delta is not None:
            self.on_delta(self._delta(depth, prev_seq))
        return _APPLIED

    def _load(self, snap: Depth, reason: str = "") -> SyncResult | None:
        """Replace the book with a snapshot; None when it loaded, else the failure's result."""
        self.wants = None  # whatever was requested has arrived; if this snapshot is bad, ask again
        try:
            self.book.load_raw(snap.bids, snap.asks)
        except _BAD_LEVELS:
            self.book.clear()
            return self._lose(ResyncReason.MALFORMED, snap)
        self.counters.snapshots += 1
        if self.verifies_checksum and snap.checksum and not self._checksum_matches(snap.checksum):
            return self._lose(ResyncReason.CHECKSUM, snap)
        if self.check_crossed and self.book.is_crossed():
            self.counters.crossed += 1
            return self._lose(ResyncReason.CROSSED, snap)
        self.last_seq = snap.seq
        self.last_ts = snap.ts
        self.last_recv_ts = snap.recv_ts
        self.last_checksum = snap.checksum or None
        self.version += 1
        self.resync_reason = None
        if self.on_delta is not None:
            self.on_delta(self._delta(snap, None, is_snapshot=True, reason=reason))
        return None

    def _checksum_matches(self, expected: int) -> bool:
        if self.book.okx_checksum() == expected:
            self.counters.checksum_ok += 1
            self.last_checksum = expected
            return True
        self.counters.checksum_failed += 1
        return False

    def _delta(self, depth: Depth, prev_seq: int | None, *, is_snapshot: bool = False, reason: str = "") -> BookDelta:
        ex, market, symbol = self.key
        return BookDelta(
            exchange=ex, market=market, symbol=symbol, instrument=self.instrument, ts=depth.ts,
            recv_ts=depth.recv_ts, is_snapshot=is_snapshot, reason=reason, seq=depth.seq, prev_seq=prev_seq,
            checksum=depth.checksum or None, bids=depth.bids, asks=depth.asks,
        )  # fmt: skip

    def _lose(self, reason: ResyncReason, depth: Depth | None = None) -> SyncResult:
        """The book is no longer valid: clear it, mark the loss in the delta stream, ask for a resync."""
        had_book = self.has_book  # only a book that was valid needs a resync marker in the delta stream
        self.counters.count_resync(reason)
        self.resync_reason = reason
        self.book.clear()
        self.version += 1
        if had_book and self.on_delta is not None:
            ex, market, symbol = self.key
            self.on_delta(
                BookDelta(
                    exchange=ex, market=market, symbol=symbol, instrument=self.instrument,
                    ts=depth.ts if depth is not None else self.last_ts,
                    recv_ts=depth.recv_ts if depth is not None else self.last_recv_ts, resync=True,
                    reason=reason.value, seq=depth.seq if depth is not None else self.last_seq,
                    prev_seq=self.last_seq, bids=EMPTY_LEVELS, asks=EMPTY_LEVELS,
                )
            )  # fmt: skip
        self._after_loss(reason)
        return SyncResult.RESYNC

    def _after_loss(self, reason: ResyncReason) -> None:
        self.state = SyncState.RESYNC_NEEDED
        self._request(self.resync_action, reason)

    def _request(self, action: ResyncAction, reason: ResyncReason) -> None:
        """Raise a need once: repeated failures while it is outstanding do not repeat the request."""
        if self.wants is action:
            return
        self.wants = action
        if self.on_request is not None:
            self.on_request(ResyncRequest(self.key, self.instrument, action, reason))


class _BinanceSync(BookSync):
    """Buffer, REST snapshot, bridge, then chained updates. Subclasses give the three venue conditions."""

    resync_action = ResyncAction.FETCH_SNAPSHOT
    initial_state = SyncState.BUFFERING

    def __init__(self, *args: Any, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self._buffer: deque[Depth] = deque()
        self._bridge_prev: Depth | None = None  # last update dropped as already in the snapshot
        self._request(ResyncAction.FETCH_SNAPSHOT, ResyncReason.START)

    # venue conditions
    @staticmethod
    def _in_snapshot(depth: Depth, last_update_id: int) -> bool:  # pragma: no cover - abstract
        raise NotImplementedError

    @staticmethod
    def _bridges(depth: Depth, last_update_id: int) -> bool:  # pragma: no cover - abstract
        raise NotImplementedError

    @staticmethod
    def _continues(depth: Depth, prev_u: int) -> bool:  # pragma: no cover - abstract
        raise NotImplementedError

    @property
    def buffered(self) -> int:
        """Updates held for the next snapshot."""
        return len(self._buffer)

    def _step(self, depth: Depth) -> SyncResult:
        """An update in any state (the hot path of ``feed`` handles the common synced case first)."""
        u = depth.seq
        if u is None or depth.first_seq is None:
            return self._lose(ResyncReason.MALFORMED, depth)
        state = self.state
        if state is _SYNCED:
            last = self.last_seq
            assert last is not None
            if self._continues(depth, last):
                return self._apply(depth, last)
            if u <= last:
                self.counters.duplicates += 1
                return SyncResult.DUPLICATE
            self.counters.gaps += 1
            self._lose(ResyncReason.GAP, depth)
            self._add_to_buffer(depth)  # valid data: the first update the next snapshot must bridge
            return SyncResult.RESYNC
        if state is SyncState.BRIDGING:
            return self._bridge(depth)
        return self._add_to_buffer(depth)

    def _bridge(self, depth: Depth) -> SyncResult:
        last_update_id = self.last_seq
        assert last_update_id is not None
        if self._in_snapshot(depth, last_update_id):
            self.counters.dropped_before_bridge += 1
            self._bridge_prev = depth
            return SyncResult.DROPPED
        if self._bridges(depth, last_update_id):
            self.state = _SYNCED
            return self._apply(depth, last_update_id)
        # The first update past the snapshot starts beyond it: either updates between were lost (a gap
        # after the ones the snapshot covered), or the snapshot predates everything this stream delivered.
        prev = self._bridge_prev
        assert depth.seq is not None
        if prev is not None and prev.seq is not None and not self._continues(depth, prev.seq):
            self.counters.gaps += 1
            reason = ResyncReason.GAP
        else:
            self.counters.stale_snapshots += 1
            reason = ResyncReason.STALE_SNAPSHOT
        self._lose(reason, depth)
        self._add_to_buffer(depth)
        return SyncResult.RESYNC

    def _add_to_buffer(self, depth: Depth) -> SyncResult:
        buf = self._buffer
        c = self.counters
        if buf:
            prev_u = buf[-1].seq
            assert prev_u is not None and depth.seq is not None
            if depth.seq <= prev_u:
                c.duplicates += 1
                return SyncResult.DUPLICATE
            if not self._continues(depth, prev_u):
                # A gap inside the buffer: nothing before it can be bridged to what follows.
                c.gaps += 1
                c.dropped_before_bridge += len(buf)
                buf.clear()
        if len(buf) >= self.buffer_limit:
            buf.popleft()  # keep the newest: a later snapshot can only bridge those
            c.buffer_overflow += 1
        buf.append(depth)
        c.buffered += 1
        return SyncResult.BUFFERED

    def _snapshot(self, snap: Depth) -> SyncResult:
        last_update_id = snap.seq
        if last_update_id is None:
            return self._lose(ResyncReason.MALFORMED, snap)
        if self.has_book and self.last_seq is not None and last_update_id <= self.last_seq:
            # Not newer than the valid book (e.g. the late answer to an earlier request): keep the book.
            self.counters.duplicates += 1
            return SyncResult.DUPLICATE
        pending = self._buffer
        self._buffer = deque()
        self.wants = None
        c = self.counters
        while pending and self._in_snapshot(pending[0], last_update_id):
            pending.popleft()
            c.dropped_before_bridge += 1
        if pending and not self._bridges(pending[0], last_update_id):
            # Older than the first buffered update (which the buffer proves continuous): keep the buffer
            # and fetch a newer snapshot.
            self._buffer = pending
            c.stale_snapshots += 1
            return self._lose(ResyncReason.STALE_SNAPSHOT, snap)
        failed = self._load(snap)
        if failed is not None:
            self._buffer = pending
            return failed
        self.state = SyncState.BRIDGING
        self._bridge_prev = None
        for depth in pending:
            self._step(depth)
        return SyncResult.SNAPSHOT if self.has_book else SyncResult.RESYNC

    def disconnect(self) -> SyncResult:
        # Updates from before the disconnect cannot be chained to those after it.
        c = self.counters
        c.dropped_before_bridge += len(self._buffer)
        self._buffer.clear()
        if not self.has_book:
            self.resync_reason = ResyncReason.DISCONNECT
            if self.state is SyncState.BUFFERING:
                return SyncResult.RESYNC  # never synced: the first snapshot is already requested
        return self._lose(ResyncReason.DISCONNECT)


class BinanceSpotSync(_BinanceSync):
    """Binance spot diff depth: ``U``/``u`` chained by +1; first update ``U <= L+1 <= u``."""

    @staticmethod
    def _in_snapshot(depth: Depth, last_update_id: int) -> bool:
        return depth.seq is not None and depth.seq <= last_update_id

    @staticmethod
    def _bridges(depth: Depth, last_update_id: int) -> bool:
        return (
            depth.first_seq is not None and depth.seq is not None and depth.first_seq <= last_update_id + 1 <= depth.seq
        )

    @staticmethod
    def _continues(depth: Depth, prev_u: int) -> bool:
        return depth.first_seq == prev_u + 1

    def feed(self, depth: Depth) -> SyncResult:
        self.counters.frames += 1
        last = self.last_seq
        if self.state is _SYNCED and last is not None and depth.first_seq == last + 1:
            return self._apply(depth, last)
        if depth.is_snapshot:
            return self._snapshot(depth)
        return self._step(depth)


class BinanceFuturesSync(_BinanceSync):
    """Binance USDⓈ-M (and COIN-M) diff depth: chained by ``pu == previous u``; first update ``U <= L <= u``."""

    @staticmethod
    def _in_snapshot(depth: Depth, last_update_id: int) -> bool:
        return depth.seq is not None and depth.seq < last_update_id

    @staticmethod
    def _bridges(depth: Depth, last_update_id: int) -> bool:
        return depth.first_seq is not None and depth.seq is not None and depth.first_seq <= last_update_id <= depth.seq

    @staticmethod
    def _continues(depth: Depth, prev_u: int) -> bool:
        return depth.prev_seq == prev_u

    def feed(self, depth: Depth) -> SyncResult:
        self.counters.frames += 1
        last = self.last_seq
        if self.state is _SYNCED and last is not None and depth.prev_seq == last:
            return self._apply(depth, last)
        if depth.is_snapshot:
            return self._snapshot(depth)
        return self._step(depth)


class _StreamSnapshotSync(BookSync):
    """Venues whose stream carries the snapshot (OKX, Bybit): resync = resubscribe; no buffering."""

    resync_action = ResyncAction.RESUBSCRIBE
    initial_state = SyncState.WAITING_SNAPSHOT

    def _before_snapshot(self, depth: Depth) -> SyncResult:
        self.counters.dropped_before_bridge += 1
        if self.state is SyncState.WAITING_SNAPSHOT:
            # Updates without a snapshot before them: the snapshot went by before we started (a processor
            # joining mid-stream) or was lost. Only a resubscription brings a new one.
            self.counters.count_resync(ResyncReason.NO_SNAPSHOT)
            self.resync_reason = ResyncReason.NO_SNAPSHOT
            self.state = SyncState.RESYNC_NEEDED
            self._request(ResyncAction.RESUBSCRIBE, ResyncReason.NO_SNAPSHOT)
        return SyncResult.DROPPED

    def _after_loss(self, reason: ResyncReason) -> None:
        if reason is ResyncReason.DISCONNECT:
            # The collector resubscribes on reconnect and the venue sends a fresh snapshot: nothing to ask.
            self.state = SyncState.WAITING_SNAPSHOT
        else:
            super()._after_loss(reason)

    def _is_reset(self, snap: Depth) -> bool:
        """Whether an unrequested snapshot on a live book is the venue restarting it (vs a plain refresh)."""
        return True

    def _snapshot(self, snap: Depth) -> SyncResult:
        reason = ""
        if self.state is _SYNCED and self._is_reset(snap):
            self.counters.count_resync(ResyncReason.RESET)
            reason = ResyncReason.RESET.value
        failed = self._load(snap, reason)
        if failed is not None:
            return failed
        self.state = _SYNCED
        return SyncResult.SNAPSHOT


class OkxBookSync(_StreamSnapshotSync):
    """OKX ``books`` / ``books-l2-tbt``: prevSeqId chain by equality, keep-alives, resets, CRC32 checksum."""

    verifies_checksum = True

    def feed(self, depth: Depth) -> SyncResult:
        self.counters.frames += 1
        if depth.is_snapshot:
            return self._snapshot(depth)
        if self.state is not _SYNCED:
            return self._before_snapshot(depth)
        prev, last, seq = depth.prev_seq, self.last_seq, depth.seq
        if prev is not None and last is not None:  # frames before 2023 carry no seqId: checksum only
            if prev != last:
                if seq == last:
                    self.counters.duplicates += 1
                    return SyncResult.DUPLICATE
                self.counters.gaps += 1
                return self._lose(ResyncReason.GAP, depth)
            if seq == prev and depth.bids == EMPTY_LEVELS and depth.asks == EMPTY_LEVELS:
                return self._keepalive(depth)
            if seq is not None and seq < prev:
                self.counters.seq_resets += 1  # maintenance: the chain goes on from the lower seqId
        return self._apply(depth, last)

    def _keepalive(self, depth: Depth) -> SyncResult:
        self.counters.keepalives += 1
        if depth.checksum and not self._checksum_matches(depth.checksum):
            return self._lose(ResyncReason.CHECKSUM, depth)
        self.last_ts = depth.ts
        self.last_recv_ts = depth.recv_ts
        return SyncResult.KEEPALIVE


class BybitBookSync(_StreamSnapshotSync):
    """Bybit v5 ``orderbook.N``: snapshot, then deltas with ``u == previous u + 1``.

    A lost book is resynced from a REST snapshot (``/v5/market/orderbook``, fetched by the processor), which
    arrives while the stream goes on: deltas received meanwhile are buffered (up to ``buffer_limit``, newest
    kept), and after the snapshot those with ``u`` past the snapshot's are applied in order, so the book does
    not fall straight back into a gap. A REST snapshot not newer than a book already in sync is ignored.
    """

    def __init__(self, *args: Any, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self._pending: deque[Depth] = deque()

    def _is_reset(self, snap: Depth) -> bool:
        # u == 1 is the documented service restart; any u not ahead of the book also restarts the chain.
        last = self.last_seq
        return snap.seq is None or last is None or snap.seq == 1 or snap.seq <= last

    def feed(self, depth: Depth) -> SyncResult:
        self.counters.frames += 1
        last = self.last_seq
        if self.state is _SYNCED and last is not None and depth.seq == last + 1 and not depth.is_snapshot:
            return self._apply(depth, last)
        if depth.is_snapshot:
            self._pending.clear()  # the stream's own snapshot supersedes anything held for a REST one
            return self._snapshot(depth)
        if self.state is not _SYNCED:
            result = self._before_snapshot(depth)
            self._hold(depth)
            return result
        if depth.seq is None:
            return self._lose(ResyncReason.MALFORMED, depth)
        assert last is not None
        if depth.seq <= last:
            self.counters.duplicates += 1
            return SyncResult.DUPLICATE
        self.counters.gaps += 1
        result = self._lose(ResyncReason.GAP, depth)
        self._hold(depth)  # valid data: the REST snapshot may precede it
        return result

    def snapshot(self, depth: Depth) -> SyncResult:
        """A REST snapshot: ignored when not newer than the book in sync (a late answer); else loaded, then the
        deltas held since the book was lost are replayed from just after it."""
        if self.state is _SYNCED and self.last_seq is not None and depth.seq is not None and depth.seq <= self.last_seq:
            self.counters.frames += 1
            self.counters.stale_snapshots += 1
            self.wants = None
            return SyncResult.DUPLICATE
        result = super().snapshot(depth)
        if self.state is _SYNCED:
            self._replay_pending()
        return result

    def disconnect(self) -> SyncResult:
        self.counters.dropped_before_bridge += len(self._pending)
        self._pending.clear()  # deltas from before the disconnect cannot be chained to those after it
        return super().disconnect()

    def _hold(self, depth: Depth) -> None:
        pending, seq = self._pending, depth.seq
        if seq is None:
            return
        if pending:
            prev = pending[-1].seq
            assert prev is not None
            if seq <= prev:
                return
            if seq != prev + 1:  # a gap inside what is held: nothing before it can be chained to what follows
                self.counters.dropped_before_bridge += len(pending)
                pending.clear()
        if len(pending) >= self.buffer_limit:
            pending.popleft()
            self.counters.buffer_overflow += 1
        pending.append(depth)
        self.counters.buffered += 1

    def _replay_pending(self) -> None:
        pending, self._pending = self._pending, deque()
        last = self.last_seq
        while pending and last is not None and pending[0].seq is not None and pending[0].seq <= last:
            pending.popleft()  # already in the snapshot
            self.counters.dropped_before_bridge += 1
        if pending and (last is None or pending[0].seq != last + 1):
            # Held deltas start past the snapshot (the snapshot is older than them): the next live delta finds
            # the gap and asks again; or they belong to a chain the venue restarted. Either way, not applicable.
            self.counters.dropped_before_bridge += len(pending)
            return
        for depth in pending:
            if self.state is not _SYNCED:
                break
            self.feed(depth)
            self.counters.frames -= 1  # counted when it arrived


# (exchange, market) -> machine; market "*" matches any market of the exchange.
SYNC_RULES: dict[tuple[str, str], type[BookSync]] = {
    (Exchange.BINANCE.value, Market.SPOT.value): BinanceSpotSync,
    (Exchange.BINANCE.value, Market.PERPETUAL.value): BinanceFuturesSync,
    (Exchange.BINANCE.value, Market.FUTURE.value): BinanceFuturesSync,
    (Exchange.OKX.value, "*"): OkxBookSync,
    (Exchange.BYBIT.value, "*"): BybitBookSync,
}


def sync_class_for(exchange: str, market: str) -> type[BookSync] | None:
    """The machine for a venue's depth stream, or None for venues without a sync rule (e.g. Deribit)."""
    return SYNC_RULES.get((exchange, market)) or SYNC_RULES.get((exchange, "*"))


class SymbolBooks:
    """Every symbol's book, keyed by (exchange, market, symbol); routes records to the right machine.

    ``feed(record)`` takes any record: depth records go to their symbol's machine (created on first sight
    with the venue's rule), a ``status`` ``disconnected`` invalidates that symbol's book, anything else is
    ``IGNORED``. A fault resyncs one symbol only. ``take_requests()`` drains the ``ResyncRequest``s raised
    since the last call (each need once: a REST snapshot to fetch, or a stream to resubscribe);
    ``wanting()`` lists every book still waiting for one (to retry a request that failed). Validated
    changes go to ``on_delta`` as ``BookDelta`` records; ``book_records(n)`` gives top-N ``Book`` records.
    """

    def __init__(
        self,
        *,
        buffer_limit: int = DEFAULT_BUFFER_LIMIT,
        check_crossed: bool = True,
        book_window: int = DEFAULT_WINDOW,
        on_delta: DeltaSink | None = None,
        rules: dict[tuple[str, str], type[BookSync]] | None = None,
    ):
        self.buffer_limit = buffer_limit
        self.check_crossed = check_crossed
        self.book_window = book_window
        self.on_delta = on_delta
        self._rules = SYNC_RULES if rules is None else rules
        self._books: dict[tuple[str, str, str], BookSync] = {}
        self._requests: list[ResyncRequest] = []
        self._published: dict[tuple[str, str, str], int] = {}  # version of each book's last Book record
        self.unsupported = 0  # depth records of venues without a sync rule

    def _open(self, record: Depth) -> BookSync | None:
        cls = self._rules.get((record.exchange, record.market)) or self._rules.get((record.exchange, "*"))
        if cls is None:
            self.unsupported += 1
            return None
        machine = cls(
            record.exchange, record.market, record.symbol, record.instrument, buffer_limit=self.buffer_limit,
            check_crossed=self.check_crossed, book_window=self.book_window, on_delta=self.on_delta,
            on_request=self._enqueue_request,
        )  # fmt: skip
        self._books[machine.key] = machine
        return machine

    def feed(self, record: Record) -> SyncResult:
        if type(record) is Depth:
            machine = self._books.get((record.exchange, record.market, record.symbol))
            if machine is None:
                machine = self._open(record)
                if machine is None:
                    return SyncResult.IGNORED
            return machine.feed(record)
        if isinstance(record, Status) and record.event == "disconnected":
            machine = self._books.get((record.exchange, record.market, record.symbol))
            if machine is not None:
                return machine.disconnect()
        return SyncResult.IGNORED

    def snapshot(self, depth: Depth) -> SyncResult:
        """A REST snapshot (``is_snapshot`` depth) for its symbol, e.g. the answer to FETCH_SNAPSHOT."""
        machine = self._books.get((depth.exchange, depth.market, depth.symbol)) or self._open(depth)
        return SyncResult.IGNORED if machine is None else machine.snapshot(depth)

    def _enqueue_request(self, request: ResyncRequest) -> None:
        self._requests.append(request)

    def take_requests(self) -> list[ResyncRequest]:
        """The requests raised since the last call, one per book and action (with the latest reason), in the
        order first raised, leaving out those already satisfied (e.g. a snapshot arrived in the meantime)."""
        requests, self._requests = self._requests, []
        pending: dict[tuple[BookKey, ResyncAction], ResyncRequest] = {}  # one per book and action: the latest
        for r in requests:
            machine = self._books.get(r.key)
            if machine is not None and machine.wants is r.action:
                pending[(r.key, r.action)] = r
        return list(pending.values())

    def wanting(self) -> list[BookSync]:
        """Books waiting for a snapshot or resubscription they asked for."""
        return [m for m in self._books.values() if m.wants is not None]

    def book_records(self, depth: int = DEFAULT_BOOK_DEPTH, *, changed_only: bool = True) -> list[Book]:
        """``Book`` records of every valid book (only those changed since the last call, by default)."""
        out: list[Book] = []
        for key, machine in self._books.items():
            if changed_only and self._published.get(key) == machine.version:
                continue
            record = machine.book_record(depth)
            if record is not None:
                out.append(record)
                self._published[key] = machine.version
        return out

    def totals(self) -> SyncCounters:
        total = SyncCounters()
        for machine in self._books.values():
            total.add(machine.counters)
        return total

    def stats(self) -> dict[str, Any]:
        """JSON-ready counters: ``{"totals": {...}, "symbols": {"exchange:market:symbol": {...}}}``."""
        return {
            "totals": self.totals().as_dict(),
            "symbols": {
                str(key): {"state": m.state.value, **m.counters.as_dict()} for key, m in sorted(self._books.items())
            },
        }

    # BookKey is a NamedTuple: a plain (exchange, market, symbol) tuple finds the same book.
    def remove(self, key: tuple[str, str, str]) -> BookSync | None:
        """Forget a symbol's book (e.g. unsubscribed); its next depth record starts a new one."""
        self._published.pop(key, None)
        return self._books.pop(key, None)

    def get(self, key: tuple[str, str, str]) -> BookSync | None:
        return self._books.get(key)

    def __getitem__(self, key: tuple[str, str, str]) -> BookSync:
        return self._books[key]

    def __contains__(self, key: object) -> bool:
        return key in self._books

    def __iter__(self) -> Iterator[BookKey]:
        return iter(m.key for m in self._books.values())

    def __len__(self) -> int:
        return len(self._books)

    def machines(self) -> list[BookSync]:
        return list(self._books.values())
