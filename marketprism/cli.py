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

from marketprism.bus.codec import decode_subject
from marketprism.bus.publisher import JetStreamPublisher
from marketprism.records import DataType
from marketprism.runner import DEFAULT_SYMBOLS, CollectorSpec, RunReport, run_collectors
from marketprism.stream.collector import Collector
from marketprism.stream.session import SessionConfig
from marketprism.venues import VENUES, get_venue

app = typer.Typer(help="MarketPrism: exact crypto market data into NATS JetStream.", no_args_is_help=True)
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


def _status_table(collectors: list[Collector], publisher: JetStreamPublisher, started: float) -> Table:
    elapsed = max(time.monotonic() - started, 1e-9)
    table = Table(title=f"MarketPrism collectors ({elapsed:.0f}s)")
    for col in ("venue", "conn", "records", "rec/s", "reconn", "errors"):
        table.add_column(col, no_wrap=True, justify="left" if col == "venue" else "right")
    table.add_column("last error", overflow="ellipsis")
    for c in collectors:
        st = c.stats
        table.add_row(
            st.venue, f"{st.connected}/{st.connections}", str(st.records), f"{st.records / elapsed:,.0f}",
            str(st.reconnects), str(st.parse_errors), st.last_error[:60],
        )  # fmt: skip
    p = publisher.stats
    table.caption = (
        f"bus: published {p.published:,}  duplicates {p.duplicates:,}  buffered {publisher.buffered:,}  "
        f"dropped {p.dropped:,}"
    )
    return table


def _run(specs: list[CollectorSpec], show_table: bool, **kwargs: Any) -> RunReport:
    async def main() -> RunReport:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        started = time.monotonic()
        live = Live(console=console, auto_refresh=False) if show_table else None
        with live or contextlib.nullcontext():

            def tick(collectors: list[Collector], publisher: JetStreamPublisher) -> None:
                if live is not None:
                    live.update(_status_table(collectors, publisher, started), refresh=True)

            return await run_collectors(specs, stop=stop, on_tick=tick, **kwargs)

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
    record: Annotated[Path | None, typer.Option(help="write every received frame to this capture file")] = None,
    duration: DurationOpt = None,
    nats_url: NatsOpt = None,
    data_dir: DataDirOpt = Path("data"),
    stall_timeout: Annotated[float, typer.Option(help="seconds without a frame before reconnecting")] = 30.0,
    verbose: Annotated[bool, typer.Option("--verbose", "-v")] = False,
) -> None:
    """Collect one venue into JetStream."""
    _logging(verbose)
    _check_source(source)
    try:
        get_venue(venue)
    except ValueError as exc:
        raise typer.BadParameter(str(exc)) from None
    spec = CollectorSpec(venue, tuple(_csv(symbols)), _data_types(types))
    _run([spec], show_table=False, nats_url=nats_url, data_dir=data_dir, source=source, record=record,
         duration_s=duration, session_config=SessionConfig(stall_timeout_s=stall_timeout))  # fmt: skip


@app.command()
def up(
    source: SourceOpt = "live",
    venues: Annotated[str, typer.Option(help="comma list of venues")] = ",".join(VENUES),
    symbols: Annotated[str, typer.Option(help="comma list of symbols")] = ",".join(DEFAULT_SYMBOLS),
    duration: DurationOpt = None,
    nats_url: NatsOpt = None,
    data_dir: DataDirOpt = Path("data"),
    verbose: Annotated[bool, typer.Option("--verbose", "-v")] = False,
) -> None:
    """Run the platform: every venue's collector into JetStream, with a live status table."""
    _logging(verbose)
    _check_source(source)
    specs = [CollectorSpec(v, tuple(_csv(symbols))) for v in _csv(venues)]
    for s in specs:
        try:
            get_venue(s.venue)
        except ValueError as exc:
            raise typer.BadParameter(str(exc)) from None
    _run(specs, show_table=True, nats_url=nats_url, data_dir=data_dir, source=source, duration_s=duration)


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
