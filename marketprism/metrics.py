"""Prometheus metrics, one scrape endpoint per host, and the error counters of the taxonomy.

Naming: ``marketprism_<subsystem>_<name>_<unit>``, counters end in ``_total``. Subsystems: ``collector``
(WebSocket sessions), ``bus`` (the JetStream publisher), ``processor`` (the order-book processor), ``storage``
(the storage writer), ``rest`` (REST clients: answers, waits, retries and circuit breakers) and ``quality``
(data-quality runs: the last run's results per ``suite``, ``check``, ``severity``; see ``record_quality``);
``marketprism_errors_total`` is shared by every component (labels ``component``, ``kind``, ``code`` from
``marketprism.errors``). Labels are ``exchange``, ``market``, ``data_type`` where meaningful, plus small
closed sets (``code``, ``reason``, ``clock``, ``result``); never ``symbol`` (its cardinality is unbounded on
per-record counters).

Hot path: a session never touches Prometheus per frame. ``CollectorMetrics`` accumulates plain ints and
pushes them at most once per ``flush_every_s`` (and when the session's watchdog ticks or it stops); the
publisher syncs its counters once per publishing loop; the order-book processor syncs its totals (its own
``ProcessorStats`` and the books' ``SyncCounters``) once per ``metrics_interval_s``. A Prometheus update
costs ~0.4 µs in-process and ~0.7 µs in multiprocess mode (an mmap write under a lock), which per frame
would rival parsing.

Multiprocess mode (one endpoint covering every flow process of a host):
  * Every process the platform starts gets ``PROMETHEUS_MULTIPROC_DIR`` (``data/metrics/``) in its
    environment **before it starts**. prometheus_client picks its value store when it is first imported,
    so the variable must be set before that; this module also switches the store itself if the variable
    is set but prometheus_client was imported earlier (only metrics created afterwards are affected, which
    includes all of ours when this module is imported after the variable is set). The directory is
    created on import.
  * Each process writes its values to ``<dir>/<type>_<pid>.db``; ``start_metrics_server`` (in one process
    per host) merges them with ``MultiProcessCollector``: counters are summed over processes, dead ones
    included (totals never go backwards when a flow run restarts), gauges use their ``multiprocess_mode``:
    ``livesum`` for connections, buffered, in-flight and books (only live processes count; the files of dead
    processes are removed at every scrape, and ``mark_process_dead(pid)`` does it at once), ``max`` for
    last-frame/last-record timestamps (the newest over all processes, dead ones included, so a feed whose
    collector died turns stale instead of vanishing), ``livemax`` for the processor's lag.
  * ``clear_multiproc_dir(path)`` gives a fresh start: call it once at platform start, before starting
    the flow processes.
  * Without the variable, the process's own default registry is served.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
from collections import Counter as _Tally
from collections import defaultdict
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from prometheus_client import REGISTRY, CollectorRegistry, Counter, Gauge, generate_latest, values
from prometheus_client.exposition import CONTENT_TYPE_LATEST
from prometheus_client.metrics_core import GaugeMetricFamily, Metric
from prometheus_client.multiprocess import MultiProcessCollector
from prometheus_client.multiprocess import mark_process_dead as _mark_process_dead

from marketprism import errors

if TYPE_CHECKING:
    from aiohttp import web

    from marketprism.records import Record

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"
DEFAULT_PORT = 9400  # the platform's scrape port (deployments/prometheus/prometheus.yml); tests use port=0


def multiproc_dir() -> Path | None:
    """The multiprocess directory of this process (``PROMETHEUS_MULTIPROC_DIR``), or None."""
    path = os.environ.get(MULTIPROC_ENV)
    return Path(path) if path else None


def _enable_multiprocess() -> None:
    path = multiproc_dir()
    if path is None:
        return
    path.mkdir(parents=True, exist_ok=True)
    if not getattr(values.ValueClass, "_multiprocess", False):  # prometheus_client was imported before the variable
        values.ValueClass = values.MultiProcessValue()


_enable_multiprocess()

VENUE = ("exchange", "market")

# --- collector -------------------------------------------------------------------------------------
FRAMES = Counter("marketprism_collector_frames_total", "WebSocket frames received", VENUE)
FRAME_BYTES = Counter(
    "marketprism_collector_frame_bytes_total", "WebSocket payload received (characters of text frames)", VENUE
)
RECORDS = Counter(
    "marketprism_collector_records_total", "Records handed to the bus, status records included", (*VENUE, "data_type")
)
PARSE_ERRORS = Counter(
    "marketprism_collector_parse_errors_total", "Frames skipped because they could not be parsed", (*VENUE, "code")
)
RECONNECTS = Counter(
    "marketprism_collector_reconnects_total",
    "WebSocket connections replaced, by reason class: closed, stall, rotation",
    (*VENUE, "reason"),
)
CONNECTED = Gauge(
    "marketprism_collector_open_connections", "Open WebSocket connections", VENUE, multiprocess_mode="livesum"
)
LAST_FRAME = Gauge(
    "marketprism_collector_last_frame_timestamp_seconds",
    "Local time the newest WebSocket frame was received",
    VENUE,
    multiprocess_mode="max",
)
LAST_RECORD = Gauge(
    "marketprism_collector_last_record_timestamp_seconds",
    "Newest record per data type: clock=exchange is the venue's event time, clock=receive the local receive time",
    (*VENUE, "data_type", "clock"),
    multiprocess_mode="max",
)

# --- bus -------------------------------------------------------------------------------------------
PUBLISHED = Counter("marketprism_bus_published_total", "Records acknowledged by JetStream", ["data_type"])
DUPLICATES = Counter("marketprism_bus_duplicates_total", "Publishes JetStream acknowledged as duplicates")
DROPPED = Counter(
    "marketprism_bus_dropped_total",
    "Records lost before JetStream acknowledged them: buffer_full, closing, shutdown",
    ["reason"],
)
RETRIES = Counter("marketprism_bus_publish_retries_total", "Publishes retried after a failure or ack timeout")
BUFFERED = Gauge(
    "marketprism_bus_buffered_records", "Records waiting in the publish buffer", multiprocess_mode="livesum"
)
IN_FLIGHT = Gauge(
    "marketprism_bus_in_flight_records", "Publishes sent and waiting for their ack", multiprocess_mode="livesum"
)

# --- order-book processor -------------------------------------------------------------------------
BOOKS = Gauge(
    "marketprism_processor_tracked_books", "Order books kept, in any state", VENUE, multiprocess_mode="livesum"
)
BOOKS_SYNCED = Gauge(
    "marketprism_processor_synced_books", "Order books in sync (valid, publishing)", VENUE, multiprocess_mode="livesum"
)
RESYNCS = Counter(
    "marketprism_processor_resyncs_total",
    "Books lost and resynced, by reason: gap, checksum, crossed, disconnect, reset, stale_snapshot, no_snapshot, ...",
    (*VENUE, "reason"),
)
CHECKSUMS = Counter(
    "marketprism_processor_checksums_total", "Venue checksums verified against the local book: ok, failed",
    (*VENUE, "result"),
)  # fmt: skip
SNAPSHOT_REQUESTS = Counter(
    "marketprism_processor_snapshot_requests_total", "REST depth snapshots requested: ok, failed", (*VENUE, "result")
)
RESUBSCRIBE_REQUESTS = Counter(
    "marketprism_processor_resubscribe_requests_total",
    "Depth resubscriptions asked of the collector (control plane) to resync books",
    VENUE,
)
DEPTH_CONSUMED = Counter(
    "marketprism_processor_depth_records_total", "Depth records consumed from the bus and fed to the books", VENUE
)
DECODE_ERRORS = Counter(
    "marketprism_processor_decode_errors_total", "Messages the processor could not decode or apply (skipped)"
)
BOOK_RECORDS = Counter(
    "marketprism_processor_records_total", "Records handed to the bus: book, book_delta", ["data_type"]
)
LAG = Gauge(
    "marketprism_processor_lag_seconds",
    "Receive time of the newest depth or status record consumed vs now",
    multiprocess_mode="livemax",
)

# --- storage writer ----------------------------------------------------------------------------------
STORED = Counter("marketprism_storage_records_total", "Rows committed to the hot store", ["data_type"])
STORE_DUPLICATES = Counter(
    "marketprism_storage_duplicates_total", "Records not stored again: their natural key was already stored"
)
DEAD_LETTERED = Counter(
    "marketprism_storage_dead_lettered_total", "Messages sent to the dead-letter stream, by reason", ["reason"]
)
STORE_ERRORS = Counter("marketprism_storage_commit_errors_total", "Hot-store commits that failed (retried)")
COMMIT_SECONDS = Gauge("marketprism_storage_last_commit_seconds", "Duration of the last hot-store commit")
STORE_LAG = Gauge(
    "marketprism_storage_lag_records", "Messages on the bus not yet committed (stream last seq - stored position)"
)

# --- REST clients (marketprism.rest) ---------------------------------------------------------------------
REST_REQUESTS = Counter(
    "marketprism_rest_requests_total",
    "REST requests sent, by result: ok, rate_limited (429), banned (418), client_error, server_error, network_error",
    (*VENUE, "result"),
)
REST_RETRIES = Counter("marketprism_rest_retries_total", "REST requests retried after a failed attempt", VENUE)
REST_WAIT = Counter(
    "marketprism_rest_wait_seconds_total", "Time REST calls waited: weight budget, Retry-After pauses, backoff", VENUE
)
REST_REJECTED = Counter(
    "marketprism_rest_rejected_total", "REST calls refused without a request because the circuit was open", VENUE
)
REST_CIRCUIT_OPENS = Counter("marketprism_rest_circuit_opens_total", "Times a REST circuit breaker opened", VENUE)
REST_OPEN_CIRCUITS = Gauge(
    "marketprism_rest_open_circuits",
    "REST circuit breakers open or half-open (not yet recovered), summed over live processes",
    VENUE,
    multiprocess_mode="livesum",
)

# --- data quality (the GX checkpoint of the data-quality flow / `marketprism quality`) --------------------------
QUALITY_RUNS = Counter(
    "marketprism_quality_runs_total", "Data-quality checkpoint runs by result: passed, warning, failed", ["result"]
)
QUALITY_FAILED = Gauge(
    "marketprism_quality_failed_expectations",
    "Failing expectations per suite and severity in the last run (critical failures fail the flow run)",
    ("suite", "severity"),
    multiprocess_mode="mostrecent",
)
QUALITY_EVALUATED = Gauge(
    "marketprism_quality_evaluated_expectations", "Expectations evaluated per suite in the last run", ["suite"],
    multiprocess_mode="mostrecent",
)  # fmt: skip
QUALITY_CHECKED = Gauge(
    "marketprism_quality_checked_records", "Rows validated per suite in the last run", ["suite"],
    multiprocess_mode="mostrecent",
)  # fmt: skip
QUALITY_UNEXPECTED = Gauge(
    "marketprism_quality_unexpected_records",
    "Rows failing each check in the last run (0: the check passed), by suite, check and severity",
    ("suite", "check", "severity"),
    multiprocess_mode="mostrecent",
)
QUALITY_LAST_RUN = Gauge(
    "marketprism_quality_last_run_timestamp_seconds", "When the last data-quality run finished",
    multiprocess_mode="max",
)  # fmt: skip
QUALITY_DURATION = Gauge(
    "marketprism_quality_run_duration_seconds", "Duration of the last data-quality run", multiprocess_mode="mostrecent"
)

# --- every component -------------------------------------------------------------------------------
ERRORS = Counter(
    "marketprism_errors_total",
    "Failures by component, taxonomy kind (retryable, bad_data, fatal) and code (see marketprism.errors)",
    ("component", "kind", "code"),
)

# Computed by the scrape endpoint from the aggregated timestamps at scrape time (no process stores them).
LAST_FRAME_AGE = "marketprism_collector_last_frame_age_seconds"
LAST_RECORD_AGE = "marketprism_collector_last_record_age_seconds"

ALL: tuple[Counter | Gauge, ...] = (
    FRAMES, FRAME_BYTES, RECORDS, PARSE_ERRORS, RECONNECTS, CONNECTED, LAST_FRAME, LAST_RECORD,
    PUBLISHED, DUPLICATES, DROPPED, RETRIES, BUFFERED, IN_FLIGHT, BOOKS, BOOKS_SYNCED, RESYNCS, CHECKSUMS,
    SNAPSHOT_REQUESTS, RESUBSCRIBE_REQUESTS, DEPTH_CONSUMED, DECODE_ERRORS, BOOK_RECORDS, LAG, STORED,
    STORE_DUPLICATES, DEAD_LETTERED, STORE_ERRORS, COMMIT_SECONDS, STORE_LAG, REST_REQUESTS, REST_RETRIES, REST_WAIT,
    REST_REJECTED, REST_CIRCUIT_OPENS, REST_OPEN_CIRCUITS, ERRORS,
)  # fmt: skip
ALL += (QUALITY_RUNS, QUALITY_FAILED, QUALITY_EVALUATED, QUALITY_CHECKED, QUALITY_UNEXPECTED, QUALITY_LAST_RUN,
        QUALITY_DURATION)  # fmt: skip


def exported_names() -> set[str]:
    """Every sample name the endpoint can serve for our metrics (what dashboards and alerts may reference)."""
    names = {LAST_FRAME_AGE, LAST_RECORD_AGE}
    for metric in ALL:
        for family in metric.describe():
            names.add(f"{family.name}_total" if family.type == "counter" else family.name)
    return names


def count_error(component: str, error: BaseException | errors.ErrorInfo, n: int = 1) -> errors.ErrorInfo:
    """Classify ``error`` (unless already classified), count it under ``component`` and return the result."""
    info = error if isinstance(error, errors.ErrorInfo) else errors.classify(error)
    if info.code is not errors.Code.CANCELLED and n:
        ERRORS.labels(component, info.kind.value, info.code.value).inc(n)
    return info


# --- per-component helpers ---------------------------------------------------------------------------
_RECONNECT_CODES = {"closed": errors.Code.WS_CLOSED, "stall": errors.Code.WS_STALL}


class CollectorMetrics:
    """One session's metrics: plain ints on the hot path, pushed to Prometheus by ``flush()``.

    ``frame()`` flushes when ``flush_every_s`` has passed since the last flush (the check reuses the
    frame's receive time, so it costs one comparison); the session also flushes from its watchdog and when
    it stops, so nothing lingers when frames stop.
    """

    component = "collector"

    def __init__(self, exchange: str, market: str, data_types: Iterable[str] = (), flush_every_s: float = 1.0):
        self.exchange, self.market = str(exchange), str(market)
        self._flush_every_us = int(flush_every_s * 1e6)
        self._flush_at_us = 0
        self._frames = self._bytes = 0
        self._last_frame_us = 0
        self._flushed_frame_us = 0
        self._counts: defaultdict[str, int] = defaultdict(int)
        self._newest: dict[str, Record] = {}
        self._parse_errors: _Tally[errors.Code] = _Tally()
        self._m_frames = FRAMES.labels(self.exchange, self.market)
        self._m_bytes = FRAME_BYTES.labels(self.exchange, self.market)
        self._m_last_frame = LAST_FRAME.labels(self.exchange, self.market)
        self._m_records: dict[str, Any] = {}
        self._m_last: dict[str, tuple[Any, Any]] = {}
        for dt in data_types:
            self._children(str(dt))
        self.connections = CONNECTED.labels(self.exchange, self.market)

    def _children(self, data_type: str) -> Any:
        child = self._m_records.get(data_type)
        if child is None:
            child = self._m_records[data_type] = RECORDS.labels(self.exchange, self.market, data_type)
        return child

    # hot path ------------------------------------------------------------------------------------
    def frame(self, size: int, recv_ts_us: int) -> None:
        self._frames += 1
        self._bytes += size
        self._last_frame_us = recv_ts_us
        if recv_ts_us >= self._flush_at_us:
            self.flush()

    def records(self, records: Iterable[Record]) -> None:
        counts, newest = self._counts, self._newest
        for record in records:
            dt = record.data_type
            counts[dt] += 1
            newest[dt] = record

    def count(self, data_type: str, n: int = 1) -> None:
        """Records counted without a freshness timestamp (status records)."""
        self._counts[data_type] += n

    # rare events ---------------------------------------------------------------------------------
    def parse_error(self, exc: BaseException) -> errors.ErrorInfo:
        info = errors.classify_parse_error(exc)
        self._parse_errors[info.code] += 1
        return info

    def reconnect(self, reason_class: str) -> None:
        """A connection was replaced: ``rotation`` (planned), ``closed`` or ``stall`` (errors, counted too)."""
        code = _RECONNECT_CODES.get(reason_class)
        if reason_class != "rotation" and code is None:
            reason_class, code = "closed", errors.Code.WS_CLOSED
        RECONNECTS.labels(self.exchange, self.market, reason_class).inc()
        if code is not None:
            count_error(self.component, errors.ErrorInfo.of(code))

    def error(self, exc: BaseException) -> errors.ErrorInfo:
        return count_error(self.component, exc)

    def flush(self) -> None:
        self._flush_at_us = self._last_frame_us + self._flush_every_us
        if self._frames:
            self._m_frames.inc(self._frames)
            self._m_bytes.inc(self._bytes)
            self._frames = self._bytes = 0
        if self._last_frame_us != self._flushed_frame_us:
            self._m_last_frame.set(self._last_frame_us / 1e6)
            self._flushed_frame_us = self._last_frame_us
        if self._counts:
            for dt, n in self._counts.items():
                if n:
                    self._children(dt).inc(n)
            self._counts.clear()
        if self._newest:
            for dt, record in self._newest.items():
                gauges = self._m_last.get(dt)
                if gauges is None:
                    gauges = self._m_last[dt] = (
                        LAST_RECORD.labels(self.exchange, self.market, dt, "exchange"),
                        LAST_RECORD.labels(self.exchange, self.market, dt, "receive"),
                    )
                gauges[0].set(record.ts / 1e6)
                gauges[1].set(record.recv_ts / 1e6)
            self._newest.clear()
        if self._parse_errors:
            for code, n in self._parse_errors.items():
                PARSE_ERRORS.labels(self.exchange, self.market, code.value).inc(n)
                count_error(self.component, errors.ErrorInfo.of(code), n)
            self._parse_errors.clear()


_DROP_CODES = {"buffer_full": errors.Code.BUFFER_FULL}


class PublisherMetrics:
    """The publisher's metrics, synced from its stats once per publishing loop."""

    component = "bus"

    def __init__(self) -> None:
        self._duplicates_synced = 0
        self._dropped: _Tally[str] = _Tally()

    def drop(self, reason: str, n: int) -> None:
        """Buffer-full drops happen per record under overload: they wait for ``sync``; others count at once."""
        self._dropped[reason] += n
        if reason != "buffer_full":
            self._sync_drops()

    def error(self, exc: BaseException) -> errors.ErrorInfo:
        return count_error(self.component, exc)

    def _sync_drops(self) -> None:
        for reason, n in self._dropped.items():
            if n:
                DROPPED.labels(reason).inc(n)
                code = _DROP_CODES.get(reason, errors.Code.DROPPED_AT_STOP)
                count_error(self.component, errors.ErrorInfo.of(code), n)
        self._dropped.clear()

    def sync(self, published_by_type: Mapping[str, int], duplicates: int, buffered: int, in_flight: int) -> None:
        for data_type, n in published_by_type.items():
            if n:
                PUBLISHED.labels(data_type).inc(n)
        if duplicates > self._duplicates_synced:
            DUPLICATES.inc(duplicates - self._duplicates_synced)
            self._duplicates_synced = duplicates
        if self._dropped:
            self._sync_drops()
        BUFFERED.set(buffered)
        IN_FLIGHT.set(in_flight)


class _Totals:
    """Pushes cumulative totals to a labelled counter as increments (a total that went down, e.g. a book
    forgotten, only moves the baseline: counters never go backwards)."""

    __slots__ = ("counter", "synced")

    def __init__(self, counter: Counter):
        self.counter = counter
        self.synced: dict[Any, int] = {}

    def sync(self, totals: Mapping[Any, int]) -> None:
        """``totals``: label values (a tuple, in the counter's label order) -> total since the start."""
        synced = self.synced
        for labels, total in totals.items():
            step = total - synced.get(labels, 0)
            if step > 0:
                self.counter.labels(*labels).inc(step)
            if step:
                synced[labels] = total


class ProcessorMetrics:
    """The order-book processor's metrics, synced from its cumulative totals (cheap: once per interval).

    ``sync`` takes totals since the processor started, keyed by label values (``(exchange, market)``,
    plus ``reason`` or ``result`` where the metric has one) and turns them into counter increments.
    ``close`` zeroes the book gauges this processor set (a stopped processor keeps no book in sync).
    """

    component = "processor"

    def __init__(self) -> None:
        self._resyncs = _Totals(RESYNCS)
        self._checksums = _Totals(CHECKSUMS)
        self._snapshots = _Totals(SNAPSHOT_REQUESTS)
        self._resubscribes = _Totals(RESUBSCRIBE_REQUESTS)
        self._depth = _Totals(DEPTH_CONSUMED)
        self._records = _Totals(BOOK_RECORDS)
        self._decode_errors = 0
        self._venues: set[tuple[str, str]] = set()

    def sync(
        self,
        *,
        books: Mapping[tuple[str, str], int],
        synced: Mapping[tuple[str, str], int],
        resyncs: Mapping[tuple[str, str, str], int],
        checksums: Mapping[tuple[str, str, str], int],
        snapshot_requests: Mapping[tuple[str, str, str], int],
        resubscribe_requests: Mapping[tuple[str, str], int],
        depth_records: Mapping[tuple[str, str], int],
        records: Mapping[str, int],
        decode_errors: int,
        lag_s: float,
    ) -> None:
        for venue in self._venues | set(books):
            BOOKS.labels(*venue).set(books.get(venue, 0))
            BOOKS_SYNCED.labels(*venue).set(synced.get(venue, 0))
        self._venues |= set(books)
        self._resyncs.sync(resyncs)
        self._checksums.sync(checksums)
        self._snapshots.sync(snapshot_requests)
        self._resubscribes.sync(resubscribe_requests)
        self._depth.sync(depth_records)
        self._records.sync({(data_type,): n for data_type, n in records.items()})
        if decode_errors > self._decode_errors:
            DECODE_ERRORS.inc(decode_errors - self._decode_errors)
            self._decode_errors = decode_errors
        LAG.set(lag_s)

    def close(self) -> None:
        for venue in self._venues:
            BOOKS.labels(*venue).set(0)
            BOOKS_SYNCED.labels(*venue).set(0)


class WriterMetrics:
    """The storage writer's metrics, synced from its cumulative stats after every commit."""

    component = "storage"

    def __init__(self) -> None:
        self._stored = _Totals(STORED)
        self._dead = _Totals(DEAD_LETTERED)
        self._duplicates = 0
        self._errors = 0

    def sync(
        self,
        *,
        stored: Mapping[str, int],
        dead: Mapping[str, int],
        duplicates: int,
        errors_: int,
        commit_s: float,
        lag: int,
    ) -> None:
        self._stored.sync({(data_type,): n for data_type, n in stored.items()})
        before = sum(self._dead.synced.values())
        self._dead.sync({(reason,): n for reason, n in dead.items()})
        if sum(dead.values()) > before:
            count_error(self.component, errors.ErrorInfo.of(errors.Code.DEAD_LETTERED), sum(dead.values()) - before)
        if duplicates > self._duplicates:
            STORE_DUPLICATES.inc(duplicates - self._duplicates)
            self._duplicates = duplicates
        if errors_ > self._errors:
            STORE_ERRORS.inc(errors_ - self._errors)
            count_error(self.component, errors.ErrorInfo.of(errors.Code.STORE_UNAVAILABLE), errors_ - self._errors)
            self._errors = errors_
        COMMIT_SECONDS.set(commit_s)
        STORE_LAG.set(lag)


def _rest_result(status: int) -> str:
    if 200 <= status < 300:
        return "ok"
    if status == 429:
        return "rate_limited"
    if status == 418:
        return "banned"
    if status == 0:
        return "network_error"
    return "client_error" if status < 500 else "server_error"


class RestMetrics:
    """One REST client's metrics. Requests are rare next to frames, so they are counted as they happen."""

    component = "rest"

    def __init__(self, exchange: str, market: str):
        self.labels = (exchange, market)
        self._open = REST_OPEN_CIRCUITS.labels(*self.labels)
        self._results: dict[int, Any] = {}

    def answer(self, status: int) -> None:
        child = self._results.get(status)
        if child is None:
            child = self._results[status] = REST_REQUESTS.labels(*self.labels, _rest_result(status))
        child.inc()
        if status in (418, 429):
            count_error(self.component, errors.ErrorInfo.of(errors.Code.RATE_LIMITED))
        elif status == 0 or status >= 500:
            count_error(self.component, errors.ErrorInfo.of(errors.Code.UPSTREAM_UNAVAILABLE))

    def retried(self) -> None:
        REST_RETRIES.labels(*self.labels).inc()

    def waited(self, seconds: float) -> None:
        REST_WAIT.labels(*self.labels).inc(seconds)

    def rejected(self) -> None:
        REST_REJECTED.labels(*self.labels).inc()

    def circuit(self, state: str) -> None:
        """A breaker changed state: ``open``, ``half_open`` or ``closed``."""
        if state == "open":
            REST_CIRCUIT_OPENS.labels(*self.labels).inc()
        self._open.set(0 if state == "closed" else 1)


def record_quality(
    result: str,
    suites: Iterable[tuple[str, int, int, Mapping[str, int], Mapping[tuple[str, str], int]]],
    seconds: float,
    finished: float | None = None,
) -> None:
    """Export one data-quality run: ``result`` (passed, warning, failed) and per suite ``(name, rows, evaluated,
    {severity: failing expectations}, {(check, severity): failing rows})``. Every check and severity is set, so
    one that passes again goes back to 0."""
    QUALITY_RUNS.labels(result).inc()
    for suite, rows, evaluated, failed_by_severity, checks in suites:
        QUALITY_CHECKED.labels(suite).set(rows)
        QUALITY_EVALUATED.labels(suite).set(evaluated)
        for (check, severity), bad in checks.items():
            QUALITY_UNEXPECTED.labels(suite, check, severity).set(bad)
        for severity, n in {"critical": 0, "warning": 0, **failed_by_severity}.items():
            QUALITY_FAILED.labels(suite, severity).set(n)
    QUALITY_DURATION.set(seconds)
    QUALITY_LAST_RUN.set(time.time() if finished is None else finished)


# --- multiprocess directory ----------------------------------------------------------------------------
def clear_multiproc_dir(path: str | Path) -> Path:
    """Create ``path`` and delete the metric files of earlier processes (a fresh start).

    The calling process's own files are kept: they are memory-mapped, and deleting them would make its
    metrics invisible. Call this before starting the processes that share the directory.
    """
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    own = f"_{os.getpid()}.db"
    for f in path.glob("*.db"):
        if not f.name.endswith(own):
            with contextlib.suppress(FileNotFoundError):
                f.unlink()
    return path


def mark_process_dead(pid: int, path: str | Path | None = None) -> None:
    """Forget a finished process's ``live*`` gauges (connections, buffered); its counters keep counting."""
    directory = path if path is not None else multiproc_dir()
    if directory is not None:
        _mark_process_dead(pid, str(directory))


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def prune_dead_processes(path: str | Path) -> list[int]:
    """``mark_process_dead`` for every process with ``live*`` gauge files that no longer runs."""
    dead = set()
    for f in Path(path).glob("gauge_live*_*.db"):
        tail = f.stem.rsplit("_", 1)[-1]
        if tail.isdigit() and not _pid_alive(int(tail)):
            dead.add(int(tail))
    for pid in dead:
        mark_process_dead(pid, path)
    return sorted(dead)


# --- aggregation and the scrape endpoint ------------------------------------------------------------------
def collect_families(path: str | Path | None = None) -> list[Metric]:
    """Every metric family of this host: merged from ``path`` (multiprocess) or this process's registry."""
    directory = Path(path) if path is not None else multiproc_dir()
    if directory is None:
        return list(REGISTRY.collect())
    directory.mkdir(parents=True, exist_ok=True)
    prune_dead_processes(directory)
    return list(MultiProcessCollector(None, path=str(directory)).collect())


def derived_families(families: Iterable[Metric], now: float | None = None) -> list[Metric]:
    """Ages computed at scrape time from the newest-frame and newest-record timestamps."""
    now = time.time() if now is None else now
    frame_age = GaugeMetricFamily(LAST_FRAME_AGE, "Seconds since the newest WebSocket frame was received", labels=VENUE)
    record_age = GaugeMetricFamily(
        LAST_RECORD_AGE, "Seconds since the newest record per data type was received", labels=(*VENUE, "data_type")
    )
    for family in families:
        if family.name == LAST_FRAME._name:
            for s in family.samples:
                if s.value > 0:
                    frame_age.add_metric([s.labels["exchange"], s.labels["market"]], max(0.0, now - s.value))
        elif family.name == LAST_RECORD._name:
            for s in family.samples:
                if s.labels.get("clock") == "receive" and s.value > 0:
                    labels = [s.labels["exchange"], s.labels["market"], s.labels["data_type"]]
                    record_age.add_metric(labels, max(0.0, now - s.value))
    return [frame_age, record_age]


class HostCollector:
    """A registry collector serving the host's aggregated metrics plus the derived ages."""

    def __init__(self, path: str | Path | None = None):
        self.path = path

    def collect(self) -> Iterator[Metric]:
        families = collect_families(self.path)
        yield from families
        yield from derived_families(families)


def host_registry(path: str | Path | None = None) -> CollectorRegistry:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(HostCollector(path))
    return registry


async def start_metrics_server(
    host: str = "127.0.0.1",
    port: int = 0,
    *,
    multiproc_dir: str | Path | None = None,
    thresholds: Mapping[str, float] | None = None,
    expected: Iterable[tuple[str, str, str]] | None = None,
) -> tuple[web.AppRunner, int]:
    """Serve ``/metrics`` (Prometheus text format) and ``/health`` (freshness JSON) on ``host:port``.

    ``multiproc_dir`` defaults to ``PROMETHEUS_MULTIPROC_DIR``; without either, this process's registry is
    served. ``thresholds`` and ``expected`` configure ``/health`` (see ``marketprism.health``). Returns the
    aiohttp runner (``await runner.cleanup()`` stops it) and the bound port (useful with ``port=0``).
    """
    from aiohttp import web

    from marketprism import health

    registry = host_registry(multiproc_dir)
    expected_keys = list(expected) if expected is not None else None

    async def metrics_handler(request: web.Request) -> web.Response:
        body = await asyncio.to_thread(generate_latest, registry)
        return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})

    async def health_handler(request: web.Request) -> web.Response:
        report = await asyncio.to_thread(health.check, multiproc_dir, thresholds=thresholds, expected=expected_keys)
        return web.json_response(report, status=health.http_status(report))

    app = web.Application()
    app.router.add_get("/metrics", metrics_handler)
    app.router.add_get("/health", health_handler)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, host, port)
    await site.start()
    server = site._server
    sockets = getattr(server, "sockets", None) or []
    bound = sockets[0].getsockname()[1] if sockets else port
    return runner, int(bound)
