"""The simulator's aiohttp server: every venue under ``/<venue name>``, control endpoints under ``/_sim``.

ws://HOST:PORT/binance_spot/stream           Venue.url("ws://HOST:PORT/binance_spot")
http://HOST:PORT/binance_spot/api/v3/depth   REST under the same prefix
GET  /_sim/truth                             what was sent (and, in replay, what the source holds)
GET  /_sim/book?venue=&instrument=&seq=      synthetic ground-truth book at a sequence id
GET  /_sim/faults, POST /_sim/faults         {"venue": optional, ...Faults fields}
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import signal
import time
from types import TracebackType
from typing import Any

from aiohttp import WSCloseCode, WSMsgType, web

from marketprism.sim import sentiment
from marketprism.sim.backend import VenueBackend
from marketprism.sim.binance import BinanceWire
from marketprism.sim.bybit import BybitWire
from marketprism.sim.config import ALL_VENUES, Faults, SimConfig
from marketprism.sim.connection import Connection
from marketprism.sim.frames import Frame
from marketprism.sim.okx import OkxWire
from marketprism.sim.protocol import ClientContext, VenueWire
from marketprism.sim.replay import ReplaySource, ReplayVenue
from marketprism.sim.synthetic import SyntheticVenue, now_ms
from marketprism.sim.truth import VenueTruth
from marketprism.venues import get_venue
from marketprism.venues.base import Venue

log = logging.getLogger(__name__)

_HOUSEKEEPING_S = 0.05


def make_wire(venue: Venue, synthetic: bool, book_levels: int) -> VenueWire:
    exchange = venue.exchange.value
    if exchange == "binance":
        return BinanceWire(venue, synthetic)
    if exchange == "okx":
        return OkxWire(venue, synthetic)
    if exchange == "bybit":
        return BybitWire(venue, synthetic, book_levels)
    raise ValueError(f"the simulator does not speak {venue.name!r} yet")


class VenueRuntime:
    """One venue inside the server: wire, backend, live connections, faults and ground truth."""

    def __init__(self, venue: Venue, wire: VenueWire, backend: VenueBackend, cfg: SimConfig):
        self.venue = venue
        self.name = venue.name
        self.wire = wire
        self.backend = backend
        self.cfg = cfg
        self.max_backlog = cfg.max_backlog
        self.truth = VenueTruth()
        self.connections: dict[str, Connection] = {}
        self.faults = Faults()
        self._rest_failures_left: int | None = None
        self._stall: tuple[float, float] | None = None  # monotonic (start, end) of the pending stall
        self.set_faults(cfg.faults_for(venue.name))

    # --- faults --------------------------------------------------------------------------------------

    def set_faults(self, faults: Faults) -> None:
        self.faults = faults
        self._rest_failures_left = faults.rest_fail_count
        if faults.stall_s > 0:
            start = time.monotonic() + faults.stall_after_s
            self._stall = (start, start + faults.stall_s)
        else:
            self._stall = None

    def stalled(self) -> bool:
        if self._stall is None:
            return False
        now = time.monotonic()
        start, end = self._stall
        if now >= end:
            self._stall = None  # a stall happens once
            return False
        return now >= start

    async def wait_unstalled(self) -> None:
        while self.stalled():
            assert self._stall is not None
            await asyncio.sleep(max(0.001, self._stall[1] - time.monotonic()))

    def take_rest_failure(self) -> int:
        """The status to fail this REST request with, or 0."""
        status = self.faults.rest_status
        if not status:
            return 0
        if self._rest_failures_left is not None:
            if self._rest_failures_left <= 0:
                return 0
            self._rest_failures_left -= 1
        return status

    # --- ConnectionOwner -----------------------------------------------------------------------------

    def is_resent(self, frame: Frame) -> bool:
        return self.backend.is_resent(frame)

    def on_sent(self, frame: Frame) -> None:
        self.backend.on_sent(frame)

    # --- client traffic ------------------------------------------------------------------------------

    def on_client_text(self, conn: Connection, text: str) -> None:
        conn.last_client_msg = time.monotonic()
        ctx = ClientContext(conn.id, conn.subs, self.backend.known, self.backend.instrument_ids)
        msg = self.wire.on_text(text, ctx)
        if msg.is_subscribe:
            self.truth.subscribe_messages += 1
        for reply in msg.replies:
            conn.send_control(reply)
        for key, sub in msg.subscribe:
            if conn.add_sub(key, sub):
                self.backend.on_subscribe(conn, key, sub)
        for key, sub in msg.unsubscribe:
            if conn.remove_sub(key, sub):
                self.backend.on_unsubscribe(conn, key, sub)

    def housekeeping(self) -> None:
        """Pings, injected disconnects and idle cuts; runs every 50 ms."""
        now = time.monotonic()
        faults, cfg = self.faults, self.cfg
        server_pings = self.venue.heartbeat.kind == "server_ping" and cfg.ping_interval_s > 0
        idle_cut = self.venue.heartbeat.kind == "client_text" and cfg.client_idle_timeout_s > 0
        stalled = self.stalled()
        for conn in list(self.connections.values()):
            if conn.closing:
                continue
            if faults.disconnect_every_s and now - conn.opened_at >= faults.disconnect_every_s:
                self.truth.disconnects_injected += 1
                conn.spawn(
                    conn.close(WSCloseCode.GOING_AWAY, b"sim: injected disconnect", faults.disconnect_abort),
                    cancel_on_close=False,
                )
            elif idle_cut and now - conn.last_client_msg >= cfg.client_idle_timeout_s:
                conn.spawn(
                    conn.close(WSCloseCode.POLICY_VIOLATION, b"sim: no message from client"), cancel_on_close=False
                )
            elif server_pings and not stalled and now - conn.last_ping >= cfg.ping_interval_s:
                conn.last_ping = now
                conn.spawn(conn.ping())


class SimServer:
    """The local exchange simulator. ``async with SimServer(cfg) as sim:`` serves until the block ends."""

    def __init__(self, cfg: SimConfig, host: str = "127.0.0.1", port: int = 0):
        self.cfg = cfg
        self.host = host
        self._requested_port = port
        self.port = 0
        self.venues: dict[str, VenueRuntime] = {}
        self.rest_only: dict[str, sentiment.RestOnlyRuntime] = {}  # REST-only venues (Deribit's scheduled pulls)
        self._runner: web.AppRunner | None = None
        self._tasks: list[asyncio.Task[Any]] = []
        self._conn_ids = itertools.count(1)

    # --- lifecycle -----------------------------------------------------------------------------------

    async def __aenter__(self) -> SimServer:
        await self.start()
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                        tb: TracebackType | None) -> None:  # fmt: skip
        await self.stop()

    async def start(self) -> None:
        synthetic = self.cfg.mode == "synthetic"
        # Replay files are parsed once at start; big captures take a while, so not on the event loop.
        for name in self.cfg.venue_names():
            venue = get_venue(name)
            wire = make_wire(venue, synthetic, self.cfg.book_levels)
            backend: VenueBackend
            if synthetic:
                backend = SyntheticVenue(venue, wire, self.cfg)
            else:
                paths = self.cfg.replay_files.get(name, [])
                source = await asyncio.to_thread(ReplaySource.load, venue, wire, paths)
                backend = ReplayVenue(venue, wire, source, self.cfg.speed, self.cfg.replay_overlap)
            self.venues[name] = VenueRuntime(venue, wire, backend, self.cfg)
        self.rest_only = sentiment.rest_only_runtimes(self.cfg)
        app = web.Application()
        self._routes(app)
        self._runner = web.AppRunner(app, access_log=None, handle_signals=False, shutdown_timeout=1.0)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.host, self._requested_port)
        await site.start()
        self.port = self._runner.addresses[0][1]
        loop = asyncio.get_running_loop()
        self._tasks.append(loop.create_task(self._housekeeping()))
        if synthetic:
            self._tasks.append(loop.create_task(self._generate()))
        log.info("sim: %s mode on %s:%d serving %s", self.cfg.mode, self.host, self.port, ", ".join(self.venues))

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._tasks.clear()
        closing = [
            conn.close(WSCloseCode.GOING_AWAY, b"sim: shutting down")
            for rt in self.venues.values()
            for conn in list(rt.connections.values())
        ]
        await asyncio.gather(*closing, return_exceptions=True)
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    # --- public API ----------------------------------------------------------------------------------

    def ws_base(self, venue: str) -> str:
        return f"ws://{self.host}:{self.port}/{venue}"

    def rest_base(self, venue: str) -> str:
        return f"http://{self.host}:{self.port}/{venue}"

    def ws_url(self, venue: str) -> str:
        """The full WebSocket URL a collector connects to (``Venue.url(ws_base)``)."""
        return get_venue(venue).url(self.ws_base(venue))

    def set_faults(self, venue: str | None, faults: Faults) -> None:
        """Replace the faults of one venue, or of every venue when ``venue`` is None or ``"*"``."""
        targets = [*self.venues, *self.rest_only] if venue in (None, ALL_VENUES) else [venue]
        for name in targets:
            runtime = self.venues.get(name) or self.rest_only.get(name)
            if runtime is None:
                raise ValueError(f"venue {name!r} is not served; served: {', '.join([*self.venues, *self.rest_only])}")
            runtime.set_faults(faults)

    def faults(self) -> dict[str, dict[str, Any]]:
        return {name: rt.faults.to_dict() for name, rt in self._runtimes().items()}

    def truth(self) -> dict[str, Any]:
        """Ground truth, also served at ``GET /_sim/truth``.

        ``venues.<venue>.instruments.<instrument>.<data type>``: frames (first sends), resent (replay
        overlap), dropped, malformed, corrupted, trades, last_seq; ``connections`` and
        ``subscribe_messages`` per venue; in replay mode ``replay.<venue>`` holds what the source contains
        (``subjects``: records per MarketPrism subject by the project's parser, ``frames`` per instrument
        and type) and ``replay_done`` turns true once every subscribed stream has been sent to its end.
        """
        venues = {name: self._venue_truth(rt) for name, rt in self._runtimes().items()}
        out: dict[str, Any] = {
            "mode": self.cfg.mode,
            "connections": {name: v["connections"] for name, v in venues.items()},
            "subscribe_messages": {name: v["subscribe_messages"] for name, v in venues.items()},
            "venues": venues,
        }
        replays = {name: rt.backend.source for name, rt in self.venues.items() if isinstance(rt.backend, ReplayVenue)}
        if replays:
            out["replay"] = {name: src.summary() for name, src in replays.items()}
            out["replay_done"] = all(src.done() for src in replays.values())
        return out

    def book(self, venue: str, instrument: str, seq: int | None = None) -> dict[str, Any] | None:
        """Synthetic ground truth: the book of ``instrument`` right after ``seq`` (None: now)."""
        rt = self.venues.get(venue)
        return rt.backend.book_at(instrument, seq) if rt else None

    def _runtimes(self) -> dict[str, VenueRuntime | sentiment.RestOnlyRuntime]:
        return {**self.venues, **self.rest_only}

    def connections(self, venue: str) -> list[Connection]:
        return list(self.venues[venue].connections.values())

    @staticmethod
    def _venue_truth(rt: VenueRuntime | sentiment.RestOnlyRuntime) -> dict[str, Any]:
        out = rt.truth.to_dict()
        out["open_connections"] = sum(1 for c in rt.connections.values() if not c.closing)
        return out

    # --- background loops ----------------------------------------------------------------------------

    async def _generate(self) -> None:
        """Synthetic frames in ticks: no per-frame sleeps, whatever the rate."""
        tick = self.cfg.tick_s
        last = time.monotonic()
        while True:
            await asyncio.sleep(tick)
            now = time.monotonic()
            dt, last = now - last, now
            ms = now_ms()
            for rt in self.venues.values():
                try:
                    rt.backend.tick(dt, ms)
                except Exception:  # one broken generator must not stop the others
                    log.exception("sim: generator for %s failed", rt.name)

    async def _housekeeping(self) -> None:
        while True:
            await asyncio.sleep(_HOUSEKEEPING_S)
            for rt in self.venues.values():
                rt.housekeeping()

    # --- HTTP ----------------------------------------------------------------------------------------

    def _routes(self, app: web.Application) -> None:
        for name, rt in self.venues.items():
            app.router.add_get(f"/{name}{rt.venue.ws_path}", self._ws_handler(rt))
            for path, kind in rt.wire.rest_paths.items():
                app.router.add_get(f"/{name}{path}", self._rest_handler(rt, kind))
        sentiment.add_routes(app, self)  # scheduled-pull endpoints: ratios, open interest, funding, DVOL
        app.router.add_get("/_sim/truth", self._truth)
        app.router.add_get("/_sim/book", self._book)
        app.router.add_get("/_sim/faults", self._get_faults)
        app.router.add_post("/_sim/faults", self._post_faults)
        app.router.add_get("/_sim/health", self._health)

    def _ws_handler(self, rt: VenueRuntime) -> Any:
        async def handler(request: web.Request) -> web.StreamResponse:
            # compress=False: the venues' data streams are not deflated, and deflate would cost more
            # CPU than everything else per frame.
            ws = web.WebSocketResponse(compress=False, autoping=True, timeout=1.0, max_msg_size=1 << 20)
            await ws.prepare(request)
            conn = Connection(f"{next(self._conn_ids):08x}", ws, request, rt)  # OKX-like connId
            rt.connections[conn.id] = conn
            rt.truth.connections += 1
            for key, sub in rt.wire.on_connect(request.query):
                if conn.add_sub(key, sub):
                    rt.backend.on_subscribe(conn, key, sub)
            conn.spawn(conn.run_sender())
            try:
                async for msg in ws:
                    if msg.type is WSMsgType.TEXT:
                        rt.on_client_text(conn, msg.data)
            finally:
                conn.closing = True
                rt.connections.pop(conn.id, None)
                rt.backend.on_close(conn)
                conn.cancel_tasks()
            return ws

        return handler

    def _rest_handler(self, rt: VenueRuntime, kind: str) -> Any:
        async def handler(request: web.Request) -> web.Response:
            rt.truth.rest_requests += 1
            ms = now_ms()
            status = rt.take_rest_failure()
            if status:
                rt.truth.rest_failures_injected += 1
                reply = rt.wire.rest_error(status, rt.faults.rest_retry_after_s, ms)
            else:
                reply = rt.wire.rest(kind, request.query, rt.backend, ms)
            return web.Response(status=reply.status, text=reply.body, content_type="application/json",
                                headers=reply.headers)  # fmt: skip

        return handler

    async def _truth(self, request: web.Request) -> web.Response:
        return web.json_response(self.truth())

    async def _book(self, request: web.Request) -> web.Response:
        venue, instrument = request.query.get("venue", ""), request.query.get("instrument", "")
        raw_seq = request.query.get("seq")
        try:
            seq = int(raw_seq) if raw_seq else None
        except ValueError:
            return web.json_response({"error": f"seq must be an integer, got {raw_seq!r}"}, status=400)
        if venue not in self.venues:
            return web.json_response({"error": f"venue {venue!r} is not served"}, status=404)
        book = self.book(venue, instrument, seq)
        if book is None:
            return web.json_response(
                {"error": f"no book for {instrument!r} at seq {seq} (unknown instrument, replay mode, or "
                          "outside the kept history)"}, status=404)  # fmt: skip
        return web.json_response(book)

    async def _get_faults(self, request: web.Request) -> web.Response:
        return web.json_response(self.faults())

    async def _post_faults(self, request: web.Request) -> web.Response:
        try:
            body = await request.json()
            if not isinstance(body, dict):
                raise ValueError("body must be a JSON object")
            venue = body.pop("venue", None)
            self.set_faults(venue, Faults.from_dict(body))
        except (ValueError, TypeError) as exc:
            return web.json_response({"error": str(exc)}, status=400)
        return web.json_response(self.faults())

    async def _health(self, request: web.Request) -> web.Response:
        return web.json_response({"ok": True, "mode": self.cfg.mode, "venues": list(self.venues)})


def run_sim_forever(cfg: SimConfig, host: str = "127.0.0.1", port: int = 8765) -> None:
    """Serve until interrupted (Ctrl-C or SIGTERM): the body of ``marketprism sim``."""

    async def main() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            with contextlib.suppress(NotImplementedError):  # not on Windows
                loop.add_signal_handler(sig, stop.set)
        async with SimServer(cfg, host, port) as sim:
            print(f"MarketPrism simulator ({cfg.mode}) on {host}:{sim.port}", flush=True)
            for name in sim.venues:
                print(f"  {name:14} ws {sim.ws_url(name)}  rest {sim.rest_base(name)}", flush=True)
            print(f"  truth http://{host}:{sim.port}/_sim/truth  faults POST http://{host}:{sim.port}/_sim/faults",
                  flush=True)  # fmt: skip
            await stop.wait()

    asyncio.run(main())
