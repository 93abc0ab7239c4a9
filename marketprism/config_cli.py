"""``marketprism config``: show the effective config, import a YAML file into blocks, migrate the original.

Prefect is imported only inside the commands that talk to it, so ``import marketprism.cli`` stays
Prefect-free and ``config show --offline`` / ``config migrate`` work without Prefect.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

from marketprism.config import (
    ConfigError,
    MigrationReport,
    env_name,
    leaves,
    masked_dict,
    migrate_original,
    resolve,
    secret_paths,
    to_yaml,
)

config_app = typer.Typer(help="Show, import and migrate the platform's configuration.", no_args_is_help=True)
out = Console(soft_wrap=True)
err = Console(stderr=True, soft_wrap=True)

_SOURCE_STYLE = {"env": "bold yellow", "block": "cyan", "default": "dim"}


def _fail(exc: Exception) -> typer.Exit:
    err.print(f"[red]{exc}[/red]", highlight=False, markup=True)
    return typer.Exit(code=1)


def _read_blocks(offline: bool) -> tuple[dict[str, Any], str]:
    """Block values and where they came from; on any Prefect problem, none and a notice saying why."""
    if offline:
        return {}, "--offline: blocks not read; showing environment + defaults"
    try:
        import blocks
    except ImportError as exc:  # pragma: no cover - prefect is a dependency
        return {}, f"Prefect is not importable ({exc}); showing environment + defaults"
    problem = blocks.api_problem()
    if problem:
        return {}, f"{problem}: blocks not read; showing environment + defaults"
    from prefect.settings import get_current_settings

    return blocks.load_block_values(), f"blocks from the Prefect API at {get_current_settings().api.url}"


@config_app.command()
def show(
    as_json: Annotated[bool, typer.Option("--json", help="print JSON: config, source per value")] = False,
    offline: Annotated[bool, typer.Option("--offline", help="do not contact Prefect (environment + defaults)")] = False,
) -> None:
    """The effective config and where each value comes from (env, block, default). Secrets are masked."""
    values, origin = _read_blocks(offline)
    try:
        config, sources = resolve(values)
    except ConfigError as exc:
        raise _fail(exc) from None
    flat = leaves(config)
    if as_json:
        if not values:
            err.print(f"notice: {origin}", highlight=False, markup=False)
        payload = {"origin": origin, "config": masked_dict(config), "sources": sources}
        typer.echo(json.dumps(payload, indent=2, default=str))
        return
    if not values:
        err.print(f"[yellow]notice:[/yellow] {origin}", highlight=False)
    table = Table(title="MarketPrism config", caption=origin)
    table.add_column("key", no_wrap=True)
    table.add_column("value", overflow="fold")
    table.add_column("source", no_wrap=True)
    for path, value in flat.items():
        shown = value if isinstance(value, str) else json.dumps(value)
        source = sources[path]
        table.add_row(path, shown, f"[{_SOURCE_STYLE[source]}]{source}[/]")
    out.print(table)


@config_app.command("import")
def import_(
    file: Annotated[Path, typer.Argument(help="a config YAML file (e.g. from `config migrate --write`)")],
) -> None:
    """Write Prefect blocks from a YAML file; nothing is written unless the whole file is valid."""
    if not file.is_file():
        raise _fail(FileNotFoundError(f"no such file: {file}"))
    import blocks

    problem = blocks.api_problem()
    if problem:
        raise _fail(RuntimeError(f"cannot import: {problem}"))
    try:
        written = blocks.import_yaml(file)
    except ConfigError as exc:
        raise _fail(exc) from None
    for name in written:
        out.print(f"wrote block {name}", highlight=False)
    out.print(f"{len(written)} block(s) written from {file}", highlight=False)


def _print_report(report: MigrationReport) -> None:
    out.print(f"[bold]Migrated[/bold] {len(report.files)} file(s): {', '.join(report.files)}", highlight=False)
    maps = Table(title=f"maps ({len(report.maps)})")
    for col in ("source", "target", "note"):
        maps.add_column(col, overflow="fold")
    for source, target, note in report.maps:
        maps.add_row(source, target, note)
    out.print(maps)
    dropped = Table(title=f"dropped ({len(report.dropped)})")
    dropped.add_column("source", overflow="fold")
    dropped.add_column("why", overflow="fold")
    for source, reason in report.dropped:
        dropped.add_row(source, reason)
    out.print(dropped)
    out.print(f"[bold]warnings ({len(report.warnings)})[/bold]")
    for warning in report.warnings:
        out.print(f"  [yellow]![/yellow] {warning}", highlight=False)


@config_app.command()
def migrate(
    paths: Annotated[list[Path], typer.Argument(help="the original's config directory or YAML files")],
    write: Annotated[Path | None, typer.Option("--write", help="write this project's YAML here")] = None,
    include_secrets: Annotated[bool, typer.Option(help="write secrets (DSNs, passwords) into --write")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="print the report as JSON")] = False,
) -> None:
    """Convert the original MarketPrism YAML into this project's config; report maps, drops and warnings."""
    try:
        config, report = migrate_original(paths, env=os.environ)
    except ConfigError as exc:
        raise _fail(exc) from None
    if as_json:
        typer.echo(json.dumps({**report.as_dict(), "config": masked_dict(config)}, indent=2))
    else:
        _print_report(report)
    if write is not None:
        write.parent.mkdir(parents=True, exist_ok=True)
        write.write_text(to_yaml(config, include_secrets=include_secrets), encoding="utf-8")
        err.print(f"wrote {write} (import it with `marketprism config import {write}`)", highlight=False)
        left_out = [] if include_secrets else secret_paths(config)
        for path in left_out:
            err.print(f"[yellow]notice:[/yellow] secret {path} not written: set {env_name(path)} "
                      "or rerun with --include-secrets", highlight=False)  # fmt: skip


@config_app.command()
def defaults(overwrite: Annotated[bool, typer.Option(help="reset existing blocks to the defaults")] = False) -> None:
    """Create the default blocks that do not exist yet."""
    import blocks

    problem = blocks.api_problem()
    if problem:
        raise _fail(RuntimeError(f"cannot write blocks: {problem}"))
    written = blocks.save_defaults(overwrite=overwrite)
    out.print(f"wrote {', '.join(written)}" if written else "all default blocks exist already", highlight=False)
