"""``marketprism quality``: run the data-quality checkpoint over the last window and print a summary."""

from __future__ import annotations

import re
from datetime import timedelta
from typing import Annotated

import typer

_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def parse_since(text: str) -> timedelta:
    """``90s``, ``15m``, ``1h``, ``2d`` (or a bare number of minutes) -> a timedelta."""
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([smhd]?)\s*", text)
    if not m or float(m.group(1)) <= 0:
        raise typer.BadParameter(f"--since: a duration such as 90s, 15m, 1h or 2d, got {text!r}")
    return timedelta(seconds=float(m.group(1)) * _UNITS[m.group(2) or "m"])


def quality(
    since: Annotated[
        str | None, typer.Option(help="window to check, e.g. 15m, 1h, 2d (default: quality.window_minutes)")
    ] = None,
    open_docs: Annotated[bool, typer.Option("--open", help="open the Data Docs in a browser afterwards")] = False,
    duckdb: Annotated[str | None, typer.Option(help="hot DuckDB file (default: storage.duckdb_path)")] = None,
    parquet_root: Annotated[str | None, typer.Option(help="cold Parquet root (default: storage.parquet_path)")] = None,
    docs: Annotated[str | None, typer.Option(help="GX project / Data Docs dir (default: quality.data_docs_path)")] = (
        None
    ),
    nats: Annotated[
        str | None,
        typer.Option(
            help="NATS URL of a running stack (to read hot rows through the "
            "storage writer); default: config, or data/nats/url"
        ),
    ] = None,
    venues: Annotated[
        str | None, typer.Option(help="comma list of venues whose feeds must be fresh (default: the enabled venues)")
    ] = None,
) -> None:
    """Run the data-quality checkpoint (the same as the scheduled flow) and print a summary. Exit 1 when a critical
    expectation failed."""
    from rich.console import Console
    from rich.table import Table

    from marketprism.config import ConfigError, resolve
    from marketprism.quality import Rules, run_quality
    from marketprism.quality.runner import expected_feeds

    try:
        config = resolve()[0]
    except ConfigError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from None
    window = parse_since(since) if since else timedelta(minutes=config.quality.window_minutes)
    names = [v.strip() for v in venues.split(",") if v.strip()] if venues else [v.venue for v in
                                                                                 config.enabled_venues()]  # fmt: skip
    thresholds = dict(config.quality.freshness_s)
    console = Console()
    with console.status("running the data-quality checkpoint..."):
        report = run_quality(
            window, docs_path=docs or config.quality.data_docs_path, rules=Rules(freshness_s=thresholds),
            expected=expected_feeds(names, thresholds), duckdb_path=duckdb or config.storage.duckdb_path,
            parquet_root=parquet_root or config.storage.parquet_path,
            nats_url=nats or (config.nats.servers[0] if config.nats.servers else None),
        )  # fmt: skip
    colour = {"passed": "green", "warning": "yellow", "failed": "red"}[report.result]
    table = Table(title=f"Data quality: {report.start:%Y-%m-%d %H:%M} – {report.end:%H:%M} UTC "
                        f"(rows from {report.source})")  # fmt: skip
    for col in ("suite", "rows", "expectations", "failed", "critical", "result"):
        table.add_column(col, justify="left" if col in ("suite", "result") else "right")
    for s in report.suites:
        result = "[green]pass" if s.success else "[red]FAIL" if s.critical else "[yellow]warn"
        table.add_row(s.name, f"{s.rows:,}", str(s.evaluated), str(len(s.failures)), str(len(s.critical)), result)
    console.print(table)
    if report.failures:
        failing = Table(title="Failing expectations", show_lines=False)
        for col in ("suite", "check", "severity", "column", "unexpected", "examples"):
            failing.add_column(col, overflow="fold")
        for f in report.failures:
            sev = "[red]critical" if f.severity == "critical" else "[yellow]warning"
            failing.add_row(f.suite, f.check, sev, f.column, "" if f.unexpected is None else str(f.unexpected),
                            "\n".join(f.examples[:3]) or f.error)  # fmt: skip
        console.print(failing)
    if report.note:
        console.print(f"[dim]{report.note}")
    console.print(f"[{colour}]{report.result}[/] in {report.seconds:.1f}s; Data Docs: {report.docs_url}")
    if open_docs:
        import webbrowser

        webbrowser.open(report.docs_url)
    if report.critical_failures:
        raise typer.Exit(1)
