"""The ``marketprism`` command line."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import time
from pathlib import Path
from typing import Annotated, Any

import msgspec
import orjson
import typer
from rich.console import Console
from rich.live import Live
from rich.table import Table

from marketprism.book.cli import book_app
from marketprism.bus.codec import decode_subject
from marketprism.config import ConfigError
from marketprism.config_cli import config_app
from marketprism.quality.cli import quality as quality_command
from marketprism.records import DataType
from marketprism.runner import DEFAULT_SYMBOLS, CollectorSpec, RunReport, run_collectors
from marketprism.store.cli import query as store_query
from marketprism.store.cli import store_app
from marketprism.stream.session import SessionConfig
from marketprism.venues import VENUES, get_venue

app = typer.Typer(help="MarketPrism: exact crypto market data into NATS JetStream.", no_args_is_help=True)
app.add_typer(config_app, name="config")
app.add_typer(book_app, name="book")
app.add_typer(store_app, name="store")
app.command("query")(store_query)  # `marketprism query "SQL"` = `marketprism store query "SQL"`
app.command("quality")(quality_command)  # the data-quality checkpoint (marketprism.quality)
console = Console()


def _csv(value: str | None) -> list[str]:
    return [v.strip() for v in value.split(",") if v.strip()] if value else []


def _data_types(value: str | None) -> tuple[DataType, ...] | None:
    if not value:
        return None
    try:
        return tuple(DataType(v) for v in _csv(value))
    except ValueError:
        raise typer.BadParameter(f"--types: use a comma list of {', '.join(d.value for d in DataType)}") from None


def _check_source(source: str) -> None:
    if source not in ("live", "sim"):
        raise typer.BadParameter(f"--source must be live or sim, got {source!r}")


def _logging(verbose: bool) -> None:
    logging.basicConfig(
        level=logging.INFO if verbose else logging.WARNING,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )


def status_table(rows: dict[str, dict[str, Any]], venues: list[str], elapsed: float) -> Table:
    """Per venue: connected, records, records/s, reconnects, parse errors, last error (control-plane status)."""
    elapsed = max(elapsed, 1e-9)
    table = Table(title=f"MarketPrism collectors ({elapsed:.0f}s)")
    for col in ("venue", "conn", "records", "rec/s", "reconn", "errors"):
        table.add_column(col, no_wrap=True, justify="left" if col == "venue" else "right")
    table.add_column("last error", overflow="ellipsis")
    for venue in venues:
        st = rows.get(venue)
        if st is None:
            table.add_row(venue, "-", "-", "-", "-", "-", "starting")
            continue
        table.add_row(
            venue, f"{st['connected']}/{st['connections']}", f"{st['records']:,}", f"{st['records'] / elapsed:,.0f}",
            str(st["reconnects"]), str(st["parse_errors"]), str(st["last_error"])[:60],
        )  # fmt: skip
    return table


def _run(specs: list[CollectorSpec], **kwargs: Any) -> RunReport:
    async def main() -> RunReport:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        return await run_collectors(specs, stop=stop, **kwargs)

    report = asyncio.run(main())
    console.print_json(data=_report_json(report))
    return report


def _report_json(report: RunReport) -> dict[str, Any]:
    p = report.publisher
    return {
        "seconds": round(report.seconds, 1),
        "nats_url": report.nats_url,
        "published": p.published,
        "duplicates": p.duplicates,
        "dropped": p.dropped,
        "dropped_by_reason": p.dropped_by_reason,
        "venues": {
            c.venue: {
                "frames": c.frames, "records": c.records, "parse_errors": c.parse_errors,
                "reconnects": c.reconnects, "stalls": c.stalls, "by_type": dict(c.records_by_type),
                **({"snapshots_recorded": c.snapshots_recorded, "snapshot_failures": c.snapshot_failures}
                   if c.snapshots_recorded or c.snapshot_failures else {}),
            }
            for c in report.collectors
        },
    }  # fmt: skip


SourceOpt = Annotated[str, typer.Option(help="live: the exchanges; sim: a local simulator")]
NatsOpt = Annotated[str | None, typer.Option(envvar="MARKETPRISM_NATS_URL", help="default: embedded nats-server")]
DurationOpt = Annotated[float | None, typer.Option(help="stop cleanly after S seconds")]
DataDirOpt = Annotated[Path, typer.Option(envvar="MARKETPRISM_DATA_DIR", help="where embedded services keep data")]


@app.command()
def collect(
    venue: Annotated[str, typer.Argument(help=f"one of {', '.join(VENUES)}")],
    symbols: Annotated[str, typer.Option(help="comma list, e.g. BTC-USDT,ETH-USDT")] = ",".join(DEFAULT_SYMBOLS),
    types: Annotated[str | None, typer.Option(help="comma list of data types (default: all)")] = None,
    source: SourceOpt = "live",
    record: Annotated[
        Path | None,
        typer.Option(
            help="write every received frame, the status records and a REST depth snapshot per "
            "(re)subscription to this capture file (verifiable alone: marketprism book verify)"
        ),
    ] = None,
    duration: DurationOpt = None,
    nats_url: NatsOpt = None,
    data_dir: DataDirOpt = Path("data"),
    stall_timeout: Annotated[float, typer.Option(help="seconds without a frame before reconnecting")] = 30.0,
    verbose: Annotated[bool, typer.Option("--verbose", "-v")] = False,
) -> None:
    """Collect one venue into JetStream.

    With ``--record`` the capture holds what ``marketprism book verify`` needs on its own: for venues whose
    books sync from REST snapshots, the collector fetches one per depth stream after each (re)subscription
    (from the simulator with ``--source sim``); without it the collector sends no REST request.
    """
    _logging(verbose)
    _check_source(source)
    try:
        get_venue(venue)
    except ValueError as exc:
        raise typer.BadParameter(str(exc)) from None
    spec = CollectorSpec(venue, tuple(_csv(symbols)), _data_types(types))
    _run([spec], nats_url=nats_url, data_dir=data_dir, source=source, record=record,
         duration_s=duration, session_config=SessionConfig(stall_timeout_s=stall_timeout))  # fmt: skip


@app.command()
def up(
    source: SourceOpt = "live",
    venues: Annotated[str, typer.Option(help="comma list of venues")] = ",".join(VENUES),
    duration: DurationOpt = None,
    nats_url: NatsOpt = None,
    data_dir: DataDirOpt = Path("data"),
    metrics_port: Annotated[int, typer.Option(envvar="MARKETPRISM_METRICS_PORT", help="0 picks a free port")] = 0,
    verbose: Annotated[bool, typer.Option("--verbose", "-v")] = False,
) -> None:
    """Run the platform under Prefect: bus, Prefect server and UI, metrics, every deployment, a live status table.

    Symbols and channels come from the venue blocks (`marketprism config show`); with `--source sim` the
    simulator serves them.
    """
    from deployments.stack import StackOptions, StackStatus, run_stack

    _logging(verbose)
    _check_source(source)
    names = _csv(venues)
    for name in names:
        try:
            get_venue(name)
        except ValueError as exc:
            raise typer.BadParameter(str(exc)) from None
    opts = StackOptions(source=source, venues=names, duration_s=duration, data_dir=data_dir, nats_url=nats_url,
                        metrics_port=metrics_port)  # fmt: skip

    async def main() -> Any:
        stop = asyncio.Event()
        with Live(console=console, auto_refresh=False) as live:

            def show(status: StackStatus) -> None:
                table = status_table(status.venues, names, time.monotonic() - status.started)
                table.caption = f"Prefect UI {status.prefect_ui}   metrics {status.metrics_url}   bus {status.nats_url}"
                live.update(table, refresh=True)

            def ready(status: StackStatus) -> None:
                health = status.metrics_url.removesuffix("/metrics") + "/health"
                console.print(f"MarketPrism is up: Prefect UI {status.prefect_ui}  metrics {status.metrics_url}  "
                              f"health {health}  bus {status.nats_url}")  # fmt: skip

            return await run_stack(opts, stop, show, ready)

    try:
        report = asyncio.run(main())
    except ConfigError as exc:
        console.print(f"[red]invalid configuration[/red]: {exc}")
        raise typer.Exit(2) from None
    console.print_json(data={"flow_runs": report.flow_runs, "venues": report.status.venues})


@app.command()
def tail(
    pattern: Annotated[str, typer.Argument(help="subject pattern, e.g. md.trade.binance.>")] = "md.>",
    nats_url: Annotated[str, typer.Option(envvar="MARKETPRISM_NATS_URL")] = "nats://127.0.0.1:4222",
    count: Annotated[int | None, typer.Option(help="stop after N records")] = None,
    duration: DurationOpt = None,
) -> None:
    """Print decoded records from the bus as they arrive (one JSON object per line)."""
    import nats

    async def main() -> None:
        nc = await nats.connect(nats_url, connect_timeout=5)
        done = asyncio.Event()
        seen = 0

        async def on_msg(msg: Any) -> None:
            nonlocal seen
            try:
                record = decode_subject(msg.subject, msg.data)
                line = orjson.dumps({"subject": msg.subject, **msgspec.to_builtins(record)}).decode()
            except Exception as exc:  # a foreign message on the subject: show it, don't die
                line = orjson.dumps({"subject": msg.subject, "error": str(exc)}).decode()
            print(line, flush=True)
            seen += 1
            if count is not None and seen >= count:
                done.set()

        await nc.subscribe(pattern, cb=on_msg)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(done.wait(), duration)
        await nc.drain()

    asyncio.run(main())


@app.command()
def sim(
    mode: Annotated[str, typer.Option(help="synthetic or replay")] = "synthetic",
    port: Annotated[int, typer.Option(help="0 picks a free port")] = 0,
    venues: Annotated[str | None, typer.Option(help="comma list of venues (default: all, or the replayed)")] = None,
    symbols: Annotated[str, typer.Option(help="comma list of symbols (synthetic)")] = ",".join(DEFAULT_SYMBOLS),
    rate: Annotated[float, typer.Option(help="updates per second per symbol and channel (synthetic)")] = 10.0,
    replay: Annotated[list[str] | None, typer.Option(help="VENUE=FILE[,FILE] (replay), repeatable")] = None,
    speed: Annotated[float, typer.Option(help="replay pace multiplier; 0 = as fast as possible")] = 1.0,
    seed: Annotated[int, typer.Option()] = 1,
    faults: Annotated[
        list[str] | None, typer.Option("--fault", help="VENUE:field=value,... e.g. binance_spot:drop_every_n=50")
    ] = None,
) -> None:
    """Serve the venues' WebSocket and REST protocols on loopback (synthetic books or replayed captures)."""
    from marketprism.sim import SimConfig, parse_faults_arg, parse_replay_args, run_sim_forever

    try:
        files = parse_replay_args(replay or [])
        fault_map = dict(parse_faults_arg(f) for f in faults or [])
        cfg = SimConfig(
            mode=mode,  # type: ignore[arg-type]  # SimConfig validates it
            venues=_csv(venues) or None,
            symbols=_csv(symbols), rate=rate, seed=seed, replay_files=files, speed=speed, faults=fault_map,
        )  # fmt: skip
    except ValueError as exc:
        raise typer.BadParameter(str(exc)) from None
    run_sim_forever(cfg, "127.0.0.1", port)


def main() -> None:  # pragma: no cover - console entry point
    app()


if __name__ == "__main__":  # pragma: no cover
    main()
