"""The order-book processor: depth records from JetStream -> books kept in sync -> ``book``/``book_delta`` out.

It reads ``md.depth.>`` and ``md.status.>`` from the market-data stream with ordered push consumers that
start at the newest message (a book is rebuilt from a snapshot, never from old deltas), feeds them to
``SymbolBooks``, publishes every validated change as a ``book_delta`` record the moment it happens, and the
top ``top_n`` levels of every changed book as a ``book`` record every ``interval_s``.

When a symbol's book needs a resync (gap, checksum, crossed book, disconnect), only that symbol waits: for
Binance and Bybit (the exchanges with a REST snapshot parser in ``book.snapshots.REST_SNAPSHOTS``) the
processor fetches a REST snapshot through the venue's ``RestClient`` (weight budget, Retry-After, 418, capped
backoff), with requests from many symbols queued and spaced ``stagger_s`` apart; for OKX it asks the
collector over the control plane to resubscribe that symbol, which brings the venue's own snapshot. The
sync machines ask Bybit books to resubscribe (``BybitBookSync``'s action); the processor turns that into a
REST fetch, whose snapshot the machine takes like the stream's (deltas up to its ``u`` are then dropped as
duplicates, ``u + 1`` continues). A request that got no answer is repeated after ``retry_after_s``; a
request whose book no longer needs it when its turn comes (a snapshot came meanwhile) is skipped.

Metrics (``marketprism.metrics``, ``marketprism_processor_*``) are synced from ``stats`` and the books'
counters every ``metrics_interval_s`` and when the processor stops.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import time
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import orjson
from nats.aio.client import Client as NATS
from nats.js.api import DeliverPolicy

from marketprism.book.snapshots import REST_SNAPSHOTS, SnapshotError
from marketprism.book.sync import BookKey, ResyncAction, ResyncReason, ResyncRequest, SymbolBooks, SyncState
from marketprism.bus.codec import decode_subject
from marketprism.bus.publisher import JetStreamPublisher
from marketprism.bus.stream import MarketDataStream, ensure_stream
from marketprism.control import control_subject, request
from marketprism.metrics import ProcessorMetrics
from marketprism.records import now_us
from marketprism.rest import RestClient, RestError
from marketprism.venues import VENUES, Venue

log = logging.getLogger(__name__)

PROCESSOR = "book_processor"  # its name on the control plane: mp.control.book_processor.<verb>


@dataclass
class ProcessorStats:
    consumed: int = 0
    decode_errors: int = 0
    deltas_published: int = 0
    books_published: int = 0
    snapshot_requests: int = 0
    snapshot_failures: int = 0
    resubscribe_requests: int = 0
    requests_by_reason: Counter[str] = field(default_factory=Counter)
    lag_s: float = 0.0  # receive time of the newest depth record vs now
    # per venue, for metrics: (exchange, market, "ok" | "failed") and (exchange, market)
    snapshots_by_result: Counter[tuple[str, str, str]] = field(default_factory=Counter)
    resubscribes_by_venue: Counter[tuple[str, str]] = field(default_factory=Counter)
    rest_snapshots_fed: Counter[tuple[str, str]] = field(default_factory=Counter)  # not from the bus
    skipped_requests: int = 0  # requests whose book no longer needed them when their turn came


def venue_for(exchange: str, market: str) -> Venue | None:
    return next((v for v in VENUES.values() if v.exchange == exchange and v.market == market), None)


class OrderBookProcessor:
    def __init__(
        self,
        nc: NATS,
        publisher: JetStreamPublisher,
        *,
        rest_bases: Mapping[str, str] | None = None,
        top_n: int = 20,
        interval_s: float = 0.1,
        stagger_s: float = 0.1,
        retry_after_s: float = 10.0,
        stream: MarketDataStream | None = None,
        from_start: bool = False,
        metrics_interval_s: float = 1.0,
    ):
        if top_n <= 0 or interval_s <= 0 or metrics_interval_s <= 0:
            raise ValueError("top_n, interval_s and metrics_interval_s must be > 0")
        self.nc = nc
        self.publisher = publisher
        self.top_n = top_n
        self.interval_s = interval_s
        self.stagger_s = stagger_s
        self.retry_after_s = retry_after_s
        self.stream = stream or MarketDataStream()  # the same spec the collectors use (NatsConfig.stream())
        # Normally the newest message (books come from snapshots, not history); from_start replays the stream
        # (benchmarks, and rebuilding book_delta history from stored depth records).
        self.deliver = DeliverPolicy.ALL if from_start else DeliverPolicy.NEW
        self.stats = ProcessorStats()
        self.books = SymbolBooks(on_delta=self._on_delta)
        self._rest_bases = dict(rest_bases or {})
        self._rest: dict[str, RestClient] = {}
        self._pending: asyncio.Queue[ResyncRequest] = asyncio.Queue()
        self._queued: set[BookKey] = set()  # books with a request in _pending (one each)
        self._asked: dict[BookKey, float] = {}  # book -> when its last request went out
        self._stop = asyncio.Event()
        self.metrics_interval_s = metrics_interval_s
        self.metrics = ProcessorMetrics()

    def stop(self) -> None:
        self._stop.set()

    def _on_delta(self, delta: Any) -> None:
        self.publisher.submit(delta)
        self.stats.deltas_published += 1

    async def run(self) -> None:
        js = self.nc.jetstream()
        await ensure_stream(js, self.stream)  # the processor may start before any collector
        # Ordered push consumers (flow-controlled, no acks): nats-py's pull fetch hands over about one message
        # per call, with a task each, which capped the processor well below what the books can do.
        subs = [
            await js.subscribe(
                subject,
                cb=self._on_message,
                stream=self.stream.name,
                ordered_consumer=True,
                deliver_policy=self.deliver,
            )
            for subject in ("md.depth.>", "md.status.>")
        ]
        control = await self.nc.subscribe(control_subject(PROCESSOR, "*"), cb=self._control)
        workers = [
            asyncio.create_task(self._resyncs(), name="book-resyncs"),
            asyncio.create_task(self._publish_books(), name="book-snapshots"),
            asyncio.create_task(self._metrics_loop(), name="book-metrics"),
        ]
        try:
            while not self._stop.is_set():
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._stop.wait(), 0.05)
                self._route_requests()
        finally:
            for sub in subs:
                with contextlib.suppress(Exception):
                    await sub.unsubscribe()
            for w in workers:
                w.cancel()
            await asyncio.gather(*workers, return_exceptions=True)
            await control.unsubscribe()
            for client in self._rest.values():
                await client.close()
            self.sync_metrics()
            self.metrics.close()

    async def _on_message(self, msg: Any) -> None:
        self._consume(msg.subject, msg.data)

    def _consume(self, subject: str, data: bytes) -> None:
        self.stats.consumed += 1
        try:
            record = decode_subject(subject, data)
        except Exception as exc:  # a foreign or broken message: counted, never fatal
            self.stats.decode_errors += 1
            log.warning("book processor: undecodable message on %s: %s", subject, exc)
            return
        try:
            self.books.feed(record)
        except ValueError as exc:  # malformed levels reach us raw from the collector (records.Depth)
            self.stats.decode_errors += 1
            log.warning("book processor: bad depth record on %s: %s", subject, exc)
            return
        self.stats.lag_s = max(0.0, (now_us() - record.recv_ts) / 1e6)

    @staticmethod
    def _by_venue(req: ResyncRequest) -> ResyncRequest:
        """A resubscription for a book whose exchange has a REST snapshot (Bybit) becomes a REST fetch."""
        if req.action is ResyncAction.RESUBSCRIBE and req.key.exchange in REST_SNAPSHOTS:
            venue = venue_for(req.key.exchange, req.key.market)
            if venue is not None and venue.snapshot_request is not None:
                return dataclasses.replace(req, action=ResyncAction.FETCH_SNAPSHOT)
        return req

    def _enqueue(self, req: ResyncRequest) -> None:
        if req.key in self._queued:
            return  # already waiting for its turn: one request per book in the queue
        self._queued.add(req.key)
        self._pending.put_nowait(self._by_venue(req))

    def _route_requests(self) -> None:
        now = time.monotonic()
        for req in self.books.take_requests():
            self._asked[req.key] = now
            self.stats.requests_by_reason[str(req.reason)] += 1
            self._enqueue(req)
        # A book still waiting long after its request (the answer got lost, the fetch failed): ask again.
        for machine in self.books.wanting():
            if machine.wants is not None and now - self._asked.get(machine.key, 0.0) > self.retry_after_s:
                self._asked[machine.key] = now
                self._enqueue(ResyncRequest(machine.key, machine.instrument, machine.wants, ResyncReason.REQUESTED))

    async def _resyncs(self) -> None:
        """One request at a time, ``stagger_s`` apart: a storm of resyncs never bursts at a venue."""
        while True:
            req = await self._pending.get()
            self._queued.discard(req.key)
            machine = self.books.get(req.key)
            if machine is None or machine.wants is None:
                self.stats.skipped_requests += 1  # satisfied while queued (e.g. the stream's own snapshot)
                continue
            self._asked[req.key] = time.monotonic()  # the retry timer runs from when the request really went out
            try:
                if req.action == ResyncAction.FETCH_SNAPSHOT:
                    await self._fetch_snapshot(req)
                else:
                    await self._resubscribe(req)
            except Exception as exc:  # counted; the retry in _route_requests asks again later
                log.warning("book processor: resync of %s failed: %s", req.key, exc)
            await asyncio.sleep(self.stagger_s)

    async def _fetch_snapshot(self, req: ResyncRequest) -> None:
        venue = venue_for(req.key.exchange, req.key.market)
        parse = REST_SNAPSHOTS.get(req.key.exchange)
        if venue is None or venue.snapshot_request is None or parse is None:
            return
        client = self._rest.get(venue.name)
        if client is None:
            base = self._rest_bases.get(venue.name, venue.rest_url)
            client = self._rest[venue.name] = RestClient(base, venue.rest_limits, name=venue.name)
        call = venue.snapshot_request(req.instrument)
        self.stats.snapshot_requests += 1
        exchange, market, symbol = req.key
        try:
            body = await client.get_json(call.path, call.params, call.weight)
            snap = parse(orjson.dumps(body), market=market, instrument=req.instrument, recv_ts=now_us(),
                         symbol=symbol)  # fmt: skip
        except (RestError, SnapshotError):
            self.stats.snapshot_failures += 1
            self.stats.snapshots_by_result[(exchange, market, "failed")] += 1
            raise
        self.stats.snapshots_by_result[(exchange, market, "ok")] += 1
        self.stats.rest_snapshots_fed[(exchange, market)] += 1
        self.books.snapshot(snap)

    async def _resubscribe(self, req: ResyncRequest) -> None:
        venue = venue_for(req.key.exchange, req.key.market)
        if venue is None:
            return
        self.stats.resubscribe_requests += 1
        self.stats.resubscribes_by_venue[(req.key.exchange, req.key.market)] += 1
        await request(self.nc, venue.name, "resubscribe", {"symbols": [req.key.symbol]}, timeout_s=5.0)

    # --- metrics ----------------------------------------------------------------------------------------
    def sync_metrics(self) -> None:
        """Push the totals to Prometheus (``marketprism_processor_*``): one pass over the books, no I/O."""
        books: Counter[tuple[str, str]] = Counter()
        synced: Counter[tuple[str, str]] = Counter()
        frames: Counter[tuple[str, str]] = Counter()
        resyncs: Counter[tuple[str, str, str]] = Counter()
        checksums: Counter[tuple[str, str, str]] = Counter()
        for machine in self.books.machines():
            exchange, market, _ = machine.key
            venue = (exchange, market)
            books[venue] += 1
            if machine.state is SyncState.SYNCED:
                synced[venue] += 1
            c = machine.counters
            frames[venue] += c.frames
            for reason, n in c.resyncs.items():
                resyncs[(exchange, market, reason)] += n
            if c.checksum_ok or c.checksum_failed:
                checksums[(exchange, market, "ok")] += c.checksum_ok
                checksums[(exchange, market, "failed")] += c.checksum_failed
        stats = self.stats
        for venue, n in stats.rest_snapshots_fed.items():  # machines count REST snapshots as frames too
            frames[venue] -= n
        self.metrics.sync(
            books=books, synced=synced, resyncs=resyncs, checksums=checksums,
            snapshot_requests=stats.snapshots_by_result, resubscribe_requests=stats.resubscribes_by_venue,
            depth_records=frames, records={"book": stats.books_published, "book_delta": stats.deltas_published},
            decode_errors=stats.decode_errors, lag_s=stats.lag_s,
        )  # fmt: skip

    async def _metrics_loop(self) -> None:
        while True:
            await asyncio.sleep(self.metrics_interval_s)
            try:
                self.sync_metrics()
            except Exception:  # metrics never stop the books
                log.exception("book processor: metrics sync failed")

    async def _publish_books(self) -> None:
        while True:
            await asyncio.sleep(self.interval_s)
            for book in self.books.book_records(self.top_n, changed_only=True):
                self.publisher.submit(book)
                self.stats.books_published += 1

    async def _control(self, msg: Any) -> None:
        verb = msg.subject.rsplit(".", 1)[1]
        if verb == "stop":
            self.stop()
            body: dict[str, Any] = {"ok": True}
        else:
            stats = self.stats
            body = {
                "consumed": stats.consumed, "deltas": stats.deltas_published, "books": stats.books_published,
                "snapshot_requests": stats.snapshot_requests, "resubscribe_requests": stats.resubscribe_requests,
                "lag_s": stats.lag_s, "symbols": self.books.stats(),
            }  # fmt: skip
        if msg.reply:
            await msg.respond(orjson.dumps(body, default=str))
