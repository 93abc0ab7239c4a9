"""``marketprism up``: the whole platform on loopback, run by Prefect.

Start order: nats-server (embedded unless a URL is configured) -> Prefect server with its UI (unless
``PREFECT_API_URL`` points at one) -> metrics endpoint -> simulator (``--source sim``) -> default blocks and the
zombie automation -> a Prefect runner serving every deployment -> one run of each long-running deployment.
Stop order (Ctrl-C, SIGTERM or ``--duration``): pause the schedules, ask every collector to stop over the
control plane (each flushes and its run ends Completed), cancel whatever is still running, stop the runner,
then the simulator, the metrics endpoint, the Prefect server and the bus. No flow run is left Running.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import shutil
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from marketprism.bus.publisher import connect
from marketprism.bus.server import LocalNatsServer, free_port
from marketprism.control import request
from marketprism.processor import PROCESSOR
from marketprism.procs import die_with_parent
from marketprism.store.writer import WRITER
from marketprism.venues import PULLS, VENUES

log = logging.getLogger(__name__)

FINAL_STATES = {"COMPLETED", "CANCELLED", "FAILED", "CRASHED"}
REST_ONLY_VENUES = sorted({p.venue for p in PULLS.values()} - set(VENUES))  # served by the simulator over REST only


@dataclass
class StackOptions:
    source: str = "live"
    venues: list[str] = field(default_factory=lambda: list(VENUES))
    duration_s: float | None = None
    data_dir: Path = Path("data")
    nats_url: str | None = None
    metrics_port: int = 0  # 0: a free port
    sim_symbols: list[str] = field(default_factory=list)  # served besides the venue blocks' symbols
    sim_rate: float = 10.0


@dataclass
class StackStatus:
    prefect_ui: str = ""
    metrics_url: str = ""
    nats_url: str = ""
    venues: dict[str, dict[str, Any]] = field(default_factory=dict)  # venue -> control-plane status
    started: float = field(default_factory=time.monotonic)


@dataclass
class StackReport:
    flow_runs: dict[str, str] = field(default_factory=dict)  # flow run name -> final state
    status: StackStatus = field(default_factory=StackStatus)


def wait_http(url: str, timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError):
            urllib.request.urlopen(url, timeout=1).read()
            return
        time.sleep(0.2)
    raise RuntimeError(f"{what} did not answer {url} within {timeout_s:.0f}s")


@contextlib.contextmanager
def child(cmd: list[str], env: dict[str, str], log_path: Path, what: str) -> Iterator[subprocess.Popen[bytes]]:
    """A child process, logged to a file, terminated (then killed) on exit."""
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with open(log_path, "ab") as out:
        proc = subprocess.Popen(cmd, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
                                preexec_fn=die_with_parent)  # fmt: skip
    try:
        yield proc
    finally:
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(20)
            except subprocess.TimeoutExpired:
                log.warning("%s did not stop in 20 s; killing it", what)
                proc.kill()
                proc.wait()


def prefect_server(data_dir: Path, env: dict[str, str]) -> tuple[str, contextlib.AbstractContextManager[Any]]:
    port = free_port()
    cmd = [sys.executable, "-m", "prefect", "server", "start", "--host", "127.0.0.1", "--port", str(port)]
    server_env = {**env, "PREFECT_HOME": str((data_dir / "prefect").resolve()),
                  "PREFECT_SERVER_ANALYTICS_ENABLED": "false"}  # fmt: skip
    return f"http://127.0.0.1:{port}/api", child(cmd, server_env, data_dir / "logs" / "prefect-server.log", "prefect")


async def run_stack(
    opts: StackOptions,
    stop: asyncio.Event,
    on_status: Callable[[StackStatus], None],
    on_ready: Callable[[StackStatus], None] = lambda status: None,
) -> StackReport:
    from prefect.settings import PREFECT_API_URL, temporary_settings

    from blocks.platform import aload_platform_config, save_defaults
    from marketprism.metrics import start_metrics_server

    data_dir = opts.data_dir.resolve()
    data_dir.mkdir(parents=True, exist_ok=True)
    status = StackStatus()
    metrics_dir = data_dir / "metrics"
    shutil.rmtree(metrics_dir, ignore_errors=True)
    metrics_dir.mkdir(parents=True)
    # Every process started from here (flow runs included) writes its metrics where one endpoint reads them all.
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = str(metrics_dir)
    os.environ.setdefault("PREFECT_FLOWS_HEARTBEAT_FREQUENCY", "30")
    os.environ["MARKETPRISM_DIE_WITH_PARENT"] = "1"  # flow runs end with `up`, even if it is killed
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    async with contextlib.AsyncExitStack() as stack:
        if opts.nats_url:
            status.nats_url = opts.nats_url
        else:
            status.nats_url = stack.enter_context(LocalNatsServer(data_dir / "nats")).url
            # Where `marketprism query` finds the running stack (to query the hot store through the writer).
            (data_dir / "nats" / "url").write_text(status.nats_url + "\n")
        api_url = os.environ.get("PREFECT_API_URL")
        if not api_url:
            api_url, server = prefect_server(data_dir, dict(os.environ))
            stack.enter_context(server)
            os.environ["PREFECT_API_URL"] = api_url
            await asyncio.to_thread(wait_http, api_url + "/health", 120, "the Prefect server")
        status.prefect_ui = api_url.removesuffix("/api")
        metrics_runner, metrics_port = await start_metrics_server(
            "127.0.0.1", opts.metrics_port, multiproc_dir=metrics_dir
        )
        stack.push_async_callback(metrics_runner.cleanup)
        status.metrics_url = f"http://127.0.0.1:{metrics_port}/metrics"
        with temporary_settings(updates={PREFECT_API_URL: api_url}):
            await asyncio.to_thread(save_defaults)
            config, _ = await aload_platform_config()
        # The simulator serves what the venue blocks ask for (so a symbol added to a block exists there).
        sim_symbols = sorted({s for v in opts.venues for s in config.venues[v].symbols} | set(opts.sim_symbols))
        ws_bases = None
        if opts.source == "sim":
            port = free_port()
            cmd = [sys.executable, "-m", "marketprism.cli", "sim", "--port", str(port),
                   "--venues", ",".join(opts.venues), "--symbols", ",".join(sim_symbols),
                   "--rate", str(opts.sim_rate)]  # fmt: skip
            stack.enter_context(child(cmd, dict(os.environ), data_dir / "logs" / "sim.log", "the simulator"))
            await asyncio.to_thread(wait_http, f"http://127.0.0.1:{port}/_sim/health", 30, "the simulator")
            ws_bases = {v: f"ws://127.0.0.1:{port}/{v}" for v in opts.venues}
        with temporary_settings(updates={PREFECT_API_URL: api_url}):
            report = await serve_and_watch(opts, status, stop, on_status, ws_bases, on_ready)
    return report


async def serve_and_watch(
    opts: StackOptions,
    status: StackStatus,
    stop: asyncio.Event,
    on_status: Callable[[StackStatus], None],
    ws_bases: dict[str, str] | None,
    on_ready: Callable[[StackStatus], None],
) -> StackReport:
    from prefect.client.orchestration import get_client
    from prefect.deployments import run_deployment
    from prefect.runner import Runner

    from deployments.automations import ensure_automations
    from deployments.definitions import (
        PROCESSOR_DEPLOYMENT,
        WRITER_DEPLOYMENT,
        collector_deployment_args,
        collector_deployment_name,
        migration_deployment_args,
        processor_deployment_args,
        pull_deployment_args,
        quality_deployment_args,
        writer_deployment_args,
    )
    from flows.book_processor import book_processor
    from flows.collector import collector
    from flows.hot_to_cold import hot_to_cold
    from flows.pulls import rest_pull
    from flows.quality import data_quality
    from flows.storage_writer import storage_writer

    async with get_client() as client:
        await ensure_automations(client)
    # No process limit: Prefect's default (PREFECT_RUNNER_PROCESS_LIMIT, 5) is fewer than the long-running flows
    # alone (5 collectors, the book processor, the storage writer), and scheduled runs would queue behind them.
    runner = Runner(name="marketprism-up", query_seconds=2, pause_on_shutdown=False, limit=None)
    deployment_ids = []
    for args in collector_deployment_args(opts.venues, opts.source, status.nats_url, ws_bases):
        await replace_work_pool_deployment(f"collector/{args['name']}")
        deployment_ids.append(await runner.aadd_deployment(await collector.ato_deployment(**args)))
    rest_bases = {v: base.replace("ws://", "http://", 1) for v, base in ws_bases.items()} if ws_bases else None
    args = processor_deployment_args(status.nats_url, rest_bases)
    await replace_work_pool_deployment(f"book-processor/{args['name']}")
    deployment_ids.append(await runner.aadd_deployment(await book_processor.ato_deployment(**args)))
    args = writer_deployment_args(status.nats_url, str(opts.data_dir.resolve() / "hot.duckdb"))
    await replace_work_pool_deployment(f"storage-writer/{args['name']}")
    deployment_ids.append(await runner.aadd_deployment(await storage_writer.ato_deployment(**args)))
    data = opts.data_dir.resolve()
    args = migration_deployment_args(status.nats_url, str(data / "hot.duckdb"), str(data / "cold"))
    await replace_work_pool_deployment(f"hot-to-cold/{args['name']}")
    deployment_ids.append(await runner.aadd_deployment(await hot_to_cold.ato_deployment(**args)))
    # Scheduled REST pulls; the simulator serves the REST-only venues (Deribit) under the same host.
    pull_bases = dict(rest_bases or {})
    if rest_bases:
        host = next(iter(rest_bases.values())).rsplit("/", 1)[0]
        pull_bases |= {p: f"{host}/{p}" for p in REST_ONLY_VENUES}
    pull_args = pull_deployment_args(opts.venues, status.nats_url, pull_bases or None)
    for args in pull_args:
        await replace_work_pool_deployment(f"rest-pull/{args['name']}")
        deployment_ids.append(await runner.aadd_deployment(await rest_pull.ato_deployment(**args)))
    # Data quality (GX), on the configured cron; it reads the hot rows through the running writer.
    from blocks.platform import aload_platform_config

    quality = (await aload_platform_config())[0].quality
    if quality.enabled:
        args = quality_deployment_args(status.nats_url, str(data / "hot.duckdb"), str(data / "cold"),
                                       str(data / "gx"), list(opts.venues), cron=quality.schedule_cron)  # fmt: skip
        await replace_work_pool_deployment(f"data-quality/{args['name']}")
        deployment_ids.append(await runner.aadd_deployment(await data_quality.ato_deployment(**args)))
    await forget_stale_runs(deployment_ids)
    runner_task = asyncio.create_task(runner.start(webserver=False))
    loop = asyncio.get_running_loop()
    await asyncio.sleep(0.5)
    for sig in (signal.SIGINT, signal.SIGTERM):  # the runner installs its own SIGTERM handler: ours wins
        loop.add_signal_handler(sig, stop.set)
    run_ids = [(await run_deployment(f"book-processor/{PROCESSOR_DEPLOYMENT}", timeout=0)).id]  # type: ignore[misc]
    run_ids.append((await run_deployment(f"storage-writer/{WRITER_DEPLOYMENT}", timeout=0)).id)  # type: ignore[misc]
    for venue in opts.venues:
        run = await run_deployment(f"collector/{collector_deployment_name(venue)}", timeout=0)  # type: ignore[misc]
        run_ids.append(run.id)
    for args in pull_args:  # every scheduled pull once now: a fresh stack has every data type within a minute
        run = await run_deployment(f"rest-pull/{args['name']}", timeout=0)  # type: ignore[misc]
        run_ids.append(run.id)
    on_ready(status)
    nc = await connect(status.nats_url)
    deadline = None if opts.duration_s is None else time.monotonic() + opts.duration_s
    try:
        while not stop.is_set() and (deadline is None or time.monotonic() < deadline):
            for venue in opts.venues:
                with contextlib.suppress(Exception):
                    status.venues[venue] = await request(nc, venue, "status", timeout_s=0.5)
            on_status(status)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), 1.0)
        report = StackReport(status=status)
        await shutdown(opts, nc, runner, deployment_ids, report)
    finally:
        await nc.close()
        if not runner_task.done():
            with contextlib.suppress(Exception):
                await runner.astop()
        with contextlib.suppress(Exception, asyncio.CancelledError):
            await asyncio.wait_for(runner_task, 30)
    return report


async def replace_work_pool_deployment(name: str) -> None:
    """``up`` serves its deployments itself: one of the same name made by ``prefect deploy`` for a work pool
    (with pull steps this process cannot run) is deleted first, with a warning."""
    from prefect.client.orchestration import get_client
    from prefect.exceptions import ObjectNotFound

    async with get_client() as client:
        try:
            existing = await client.read_deployment_by_name(name)
        except ObjectNotFound:
            return
        if existing.work_pool_name or existing.pull_steps:
            pool = existing.work_pool_name
            log.warning("replacing deployment %s (work pool %s) with the one `up` serves", name, pool)
            await client.delete_deployment(existing.id)


async def forget_stale_runs(deployment_ids: list[Any]) -> None:
    """Resume the deployments (the last ``up`` paused them) and delete runs scheduled before this start.

    Scheduled runs carry the parameters of when they were made (e.g. by ``prefect deploy --all``, or a previous
    ``up`` with another bus): with a concurrency limit of 1 they would take the slot from this start's runs.
    """
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import (
        DeploymentFilter,
        DeploymentFilterId,
        FlowRunFilter,
        FlowRunFilterState,
        FlowRunFilterStateType,
    )
    from prefect.client.schemas.objects import StateType

    async with get_client() as client:
        for deployment_id in deployment_ids:
            await client.resume_deployment(deployment_id)
        stale = await client.read_flow_runs(
            deployment_filter=DeploymentFilter(id=DeploymentFilterId(any_=deployment_ids)),
            flow_run_filter=FlowRunFilter(
                state=FlowRunFilterState(type=FlowRunFilterStateType(any_=[StateType.SCHEDULED, StateType.PENDING]))
            ),
        )
        for run in stale:
            await client.delete_flow_run(run.id)


async def shutdown(opts: StackOptions, nc: Any, runner: Any, deployment_ids: list[Any], report: StackReport) -> None:
    """Collectors first (they flush), then whatever still runs is cancelled; then the runner stops."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import DeploymentFilter, DeploymentFilterId, FlowRunFilter

    async with get_client() as client:
        for deployment_id in deployment_ids:
            await client.pause_deployment(deployment_id)  # no new scheduled runs while we stop

        async def runs() -> list[Any]:
            return await client.read_flow_runs(
                deployment_filter=DeploymentFilter(id=DeploymentFilterId(any_=deployment_ids)),
                flow_run_filter=FlowRunFilter(),
            )

        for venue in opts.venues:  # collectors first: they flush what they hold
            with contextlib.suppress(Exception):
                await request(nc, venue, "stop", timeout_s=2.0)
        with contextlib.suppress(Exception):  # then what consumes them
            await request(nc, PROCESSOR, "stop", timeout_s=2.0)
        with contextlib.suppress(Exception):  # the writer last: it commits what it holds
            await request(nc, WRITER, "stop", timeout_s=2.0)
        deadline = time.monotonic() + 30
        active = {"RUNNING", "PENDING", "CANCELLING"}
        while time.monotonic() < deadline and any(r.state_type.value in active for r in await runs()):
            await asyncio.sleep(0.5)
        if any(r.state_type.value in active for r in await runs()):
            log.warning("collectors still running after 30 s: cancelling them")
            await runner.cancel_all()
            deadline = time.monotonic() + 20
            while time.monotonic() < deadline and any(r.state_type.value in active for r in await runs()):
                await asyncio.sleep(0.5)
        for run in await runs():
            if run.state_type.value in FINAL_STATES or run.state_type.value in active:
                report.flow_runs[run.name] = run.state_type.value
