"""Runs collectors into JetStream: the engine behind ``marketprism collect`` and ``marketprism up``.

Start order: nats-server (embedded when no URL is given) -> stream -> publisher -> simulator (``sim``
source) -> collectors. Stop order is the reverse, and the publisher is flushed before the bus closes, so
a clean stop loses nothing that reached the collector.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from marketprism.bus.publisher import JetStreamPublisher, PublisherStats, connect
from marketprism.bus.server import LocalNatsServer
from marketprism.bus.stream import MarketDataStream, ensure_stream
from marketprism.control import CollectorControl
from marketprism.records import DataType
from marketprism.stream.capture import CaptureWriter
from marketprism.stream.collector import Collector, CollectorStats
from marketprism.stream.session import SessionConfig
from marketprism.venues import get_venue

log = logging.getLogger(__name__)

DEFAULT_SYMBOLS = ("BTC-USDT", "ETH-USDT")


@dataclass(frozen=True)
class CollectorSpec:
    venue: str
    symbols: tuple[str, ...] = DEFAULT_SYMBOLS
    data_types: tuple[DataType, ...] | None = None


@dataclass
class RunReport:
    collectors: list[CollectorStats] = field(default_factory=list)
    publisher: PublisherStats = field(default_factory=PublisherStats)
    seconds: float = 0.0
    nats_url: str = ""


@dataclass
class Bus:
    """A connected publisher plus whatever it started (an embedded nats-server)."""

    url: str
    nc: Any
    publisher: JetStreamPublisher
    server: LocalNatsServer | None = None


@contextlib.asynccontextmanager
async def open_bus(
    nats_url: str | list[str] | None,
    data_dir: Path,
    stream: MarketDataStream | None = None,
    nats_options: dict[str, Any] | None = None,
    **publisher_options: Any,
) -> AsyncIterator[Bus]:
    """Connect to ``nats_url`` (with ``nats_options`` such as credentials), or start an embedded nats-server."""
    server = None
    if not nats_url:
        server = LocalNatsServer(data_dir / "nats").start()
        nats_url = server.url
        log.info("started embedded nats-server at %s (JetStream store %s)", nats_url, server.store_dir)
    try:
        nc = await connect(nats_url, **(nats_options or {}))
        try:
            await ensure_stream(nc.jetstream(), stream or MarketDataStream())
            publisher = JetStreamPublisher(nc, **publisher_options).start()
            try:
                yield Bus(nats_url if isinstance(nats_url, str) else ",".join(nats_url), nc, publisher, server)
            finally:
                await publisher.close()
        finally:
            with contextlib.suppress(Exception):
                await nc.drain()
    finally:
        if server is not None:
            server.stop()


@contextlib.asynccontextmanager
async def open_sim(specs: Sequence[CollectorSpec], **sim_options: Any) -> AsyncIterator[Any]:
    """An in-process synthetic simulator serving every venue and symbol in ``specs`` (or ``symbols=``)."""
    from marketprism.sim import SimConfig, SimServer

    options = {"symbols": sorted({s for spec in specs for s in spec.symbols}), **sim_options}
    cfg = SimConfig(mode="synthetic", venues=[s.venue for s in specs], **options)
    async with SimServer(cfg, host="127.0.0.1", port=0) as sim:
        yield sim


def _rest_base_of(ws_base: str) -> str:
    """The REST base at a WebSocket base's host (a simulator serves both under one ``/<venue>`` prefix)."""
    scheme, sep, rest = ws_base.partition("://")
    return {"ws": "http", "wss": "https"}.get(scheme, scheme) + sep + rest


async def run_collectors(
    specs: Sequence[CollectorSpec],
    *,
    nats_url: str | list[str] | None = None,
    nats_options: dict[str, Any] | None = None,
    data_dir: Path = Path("data"),
    source: str = "live",
    record: Path | None = None,
    duration_s: float | None = None,
    stop: asyncio.Event | None = None,
    session_config: SessionConfig | None = None,
    stream: MarketDataStream | None = None,
    on_tick: Callable[[list[Collector], JetStreamPublisher], None] | None = None,
    sim_options: dict[str, Any] | None = None,
    ws_bases: dict[str, str] | None = None,
    rest_bases: dict[str, str] | None = None,
    on_start: Callable[[list[Collector]], None] | None = None,
) -> RunReport:
    """Collect ``specs`` into JetStream until ``stop`` is set or ``duration_s`` has passed.

    ``ws_bases`` overrides a venue's WebSocket base URL (e.g. a simulator started elsewhere), ``rest_bases``
    its REST base (used only with ``record``: the collector then fetches depth snapshots into the capture). A
    venue whose WebSocket base is overridden and REST base is not gets its REST base from the same host
    (``ws://`` -> ``http://``, ``wss://`` -> ``https://``), as the simulator serves both: a capture never pairs
    one server's stream with another's snapshots. ``on_start``
    receives the running collectors (e.g. to hot-reload their symbols). Each collector also answers on the
    control plane (``marketprism.control``): status, symbols, stop.
    """
    if source not in ("live", "sim"):
        raise ValueError(f"source must be 'live' or 'sim', got {source!r}")
    venues = [get_venue(s.venue) for s in specs]  # fail fast on a bad name
    stop = stop or asyncio.Event()
    report = RunReport()
    started = time.monotonic()
    async with contextlib.AsyncExitStack() as stack:
        bus = await stack.enter_async_context(open_bus(nats_url, data_dir, stream, nats_options))
        report.nats_url = bus.url
        bases = dict(ws_bases or {})
        rests = {name: _rest_base_of(base) for name, base in bases.items()} | dict(rest_bases or {})
        if source == "sim":
            sim = await stack.enter_async_context(open_sim(specs, **(sim_options or {})))
            bases.update({s.venue: sim.ws_base(s.venue) for s in specs})
            rests.update({s.venue: sim.rest_base(s.venue) for s in specs})
        capture = stack.enter_context(CaptureWriter(record)) if record else None
        collectors = [
            Collector(venue, spec.symbols, bus.publisher.submit, data_types=spec.data_types,
                      ws_base=bases.get(venue.name), config=session_config, capture=capture,
                      rest_base=rests.get(venue.name))
            for venue, spec in zip(venues, specs, strict=True)
        ]  # fmt: skip
        tasks = [asyncio.create_task(c.run(), name=f"collector-{c.venue.name}") for c in collectors]
        control = await CollectorControl(bus.nc, collectors).start()
        if on_start is not None:
            on_start(collectors)
        try:
            deadline = None if duration_s is None else started + duration_s
            while not stop.is_set():
                remaining = 1.0 if deadline is None else min(1.0, deadline - time.monotonic())
                if remaining <= 0:
                    break
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), remaining)
                if on_tick is not None:
                    on_tick(collectors, bus.publisher)
                failed = [t for t in tasks if t.done() and t.exception() is not None]
                if failed:
                    raise failed[0].exception()  # type: ignore[misc]
                if all(t.done() for t in tasks):
                    break  # every collector was stopped over the control plane
        finally:
            await control.close()
            for c in collectors:
                c.stop()
            await asyncio.gather(*tasks, return_exceptions=True)
            if capture is not None:
                capture.flush()
            report.collectors = [c.stats for c in collectors]
        await bus.publisher.flush()
    report.publisher = bus.publisher.stats
    report.seconds = time.monotonic() - started
    return report
