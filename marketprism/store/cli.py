"""``marketprism store ...``: the storage writer and the hot store's housekeeping."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import sys
from typing import TYPE_CHECKING, Annotated

import orjson
import polars as pl
import typer

from marketprism.store.open import open_hot_store
from marketprism.store.writer import StorageWriter

if TYPE_CHECKING:
    from marketprism.config import StorageConfig

store_app = typer.Typer(help="Storage: the exactly-once writer, hot -> cold migration.", no_args_is_help=True)


@store_app.command()
def write(
    nats: Annotated[str, typer.Option(help="NATS URL")] = "nats://127.0.0.1:4222",
    backend: Annotated[str, typer.Option(help="hot store: duckdb or clickhouse")] = "duckdb",
    duckdb: Annotated[str, typer.Option(help="DuckDB file (backend duckdb)")] = "data/hot.duckdb",
    clickhouse: Annotated[str | None, typer.Option(help="ClickHouse URL http://user:pw@host:8123/db")] = None,
    consumer: Annotated[str, typer.Option(help="durable consumer name (its position is stored with the rows)")] = (
        "storage_writer"
    ),
    batch_rows: Annotated[int, typer.Option(help="rows per insert batch")] = 100_000,
    batch_seconds: Annotated[float, typer.Option(help="max seconds a batch waits")] = 1.0,
    verbose: Annotated[bool, typer.Option("--verbose", "-v")] = False,
) -> None:
    """Store every record on the bus in the hot store, exactly once, until SIGINT/SIGTERM."""
    logging.basicConfig(level=logging.INFO if verbose else logging.WARNING,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")  # fmt: skip
    stats = asyncio.run(_write(nats, backend, duckdb, clickhouse, consumer, batch_rows, batch_seconds))
    typer.echo(orjson.dumps(stats).decode())


async def _write(
    nats_url: str, backend: str, duckdb: str, clickhouse: str | None, consumer: str, batch_rows: int, batch_s: float
) -> dict[str, object]:
    from marketprism.bus.publisher import connect

    store = open_hot_store(backend, duckdb_path=duckdb, clickhouse_url=clickhouse)
    nc = await connect(nats_url)
    writer = StorageWriter(nc, store, consumer=consumer, batch_rows=batch_rows, batch_seconds=batch_s)
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, writer.stop)
    try:
        await writer.run()
    finally:
        with contextlib.suppress(Exception):
            await nc.drain()
        store.close()
    s = writer.stats
    return {"stored": s.stored, "duplicates": s.duplicates, "batches": s.batches, "dead_lettered": s.dead_lettered,
            "store_errors": s.store_errors, "redelivered_skipped": s.redelivered_skipped, "position": s.position,
            "stored_by_table": dict(s.stored_by_table)}  # fmt: skip


_NATS_HELP = "NATS URL of the running stack (default: nats.servers, or the URL `up` left in <data dir>/nats/url)"
_COLD_HELP = "cold root, any fsspec path (default: storage.parquet_path)"


_BACKEND_HELP = "hot store: duckdb or clickhouse (default: storage.hot_backend)"
_CLICKHOUSE_HELP = "ClickHouse hot store URL http(s)://user:pw@host:8123/db (default: storage.clickhouse_url)"


def _storage() -> StorageConfig:
    from marketprism.config import ConfigError, StorageConfig, resolve

    try:
        return resolve()[0].storage
    except ConfigError:
        return StorageConfig()


def _hot_backend(storage: StorageConfig, backend: str | None, clickhouse: str | None) -> tuple[str, str | None]:
    """(backend, ClickHouse URL or None): the options (``--clickhouse URL`` alone means ClickHouse), else the
    configuration. Exits 1 when ClickHouse has no URL."""
    chosen = backend or ("clickhouse" if clickhouse else storage.hot_backend)  # a URL alone means ClickHouse
    if chosen not in ("duckdb", "clickhouse"):
        raise typer.BadParameter("--backend must be duckdb or clickhouse")
    if chosen == "duckdb":
        return chosen, None
    url = clickhouse or (storage.clickhouse_url.get_secret_value() if storage.clickhouse_url else None)
    if not url:
        typer.echo("error: the ClickHouse hot store needs a URL: --clickhouse or storage.clickhouse_url", err=True)
        raise typer.Exit(1)
    return chosen, url


@store_app.command()
def migrate(
    retention_days: Annotated[int | None, typer.Option(help="days kept hot (default: storage.hot_retention_days)")] = (
        None
    ),
    duckdb: Annotated[str | None, typer.Option(help="hot DuckDB file (default: storage.duckdb_path)")] = None,
    parquet_root: Annotated[str | None, typer.Option(help=_COLD_HELP)] = None,
    table: Annotated[list[str] | None, typer.Option(help="only this table (repeatable)")] = None,
    details: Annotated[bool, typer.Option("--details", help="one entry per partition in the summary")] = False,
    backend: Annotated[str | None, typer.Option(help=_BACKEND_HELP)] = None,
    clickhouse: Annotated[str | None, typer.Option(help=_CLICKHOUSE_HELP)] = None,
) -> None:
    """Move hot partitions older than the retention to hive-partitioned Parquet (verified, then deleted from hot).

    The hot store is the DuckDB file or, with --backend clickhouse (or storage.hot_backend), the ClickHouse
    database. Prints a JSON summary. Exits 1 when a partition failed verification (it stays hot), 2 when the hot
    DuckDB file is held by a running writer.
    """
    from marketprism.store.migrate import HotStoreLocked
    from marketprism.store.migrate import migrate as run_migration

    storage = _storage()
    if storage.cold_backend != "parquet":
        typer.echo("error: storage.cold_backend clickhouse (a ClickHouse cold database) is not built: use parquet",
                   err=True)  # fmt: skip
        raise typer.Exit(1)
    chosen, url = _hot_backend(storage, backend, clickhouse)
    try:
        summary = run_migration(
            url if chosen == "clickhouse" and url else (duckdb or storage.duckdb_path),
            parquet_root or storage.parquet_path,
            retention_days=storage.hot_retention_days if retention_days is None else retention_days,
            tables=table or None,
        )
    except HotStoreLocked as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from None
    except FileNotFoundError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(1) from None
    typer.echo(orjson.dumps(summary.as_dict(details), default=str).decode())
    if summary.errors:
        raise typer.Exit(1)


@store_app.command("query")
def query(
    sql: Annotated[str, typer.Argument(help='SQL over the tables trades, depths, ... (hot + cold), e.g. "SELECT ..."')],
    format: Annotated[str, typer.Option("--format", "-f", help="table | csv | parquet")] = "table",
    output: Annotated[str | None, typer.Option("--output", "-o", help="write to this file (parquet: required)")] = None,
    duckdb: Annotated[str | None, typer.Option(help="hot DuckDB file (default: storage.duckdb_path)")] = None,
    parquet_root: Annotated[str | None, typer.Option(help=_COLD_HELP)] = None,
    hot: Annotated[str, typer.Option(help="auto: hot if not locked by the writer, else cold only | require | skip")] = (
        "auto"
    ),
    nats: Annotated[str | None, typer.Option(help=_NATS_HELP)] = None,
    backend: Annotated[str | None, typer.Option(help=_BACKEND_HELP)] = None,
    clickhouse: Annotated[str | None, typer.Option(help=_CLICKHOUSE_HELP)] = None,
) -> None:
    """Run SQL (DuckDB's dialect) over hot and cold together. With a DuckDB hot store held by the storage writer,
    the query runs inside the writer (asked over NATS); when no writer answers, --hot auto answers from cold only
    (with a warning) and --hot require fails. With ClickHouse as the hot store, the hot rows of the tables the
    query names are read from ClickHouse (FINAL) and the query runs in DuckDB over them and the cold Parquet."""
    if format not in ("table", "csv", "parquet"):
        raise typer.BadParameter("--format must be table, csv or parquet")
    if hot not in ("auto", "require", "skip"):
        raise typer.BadParameter("--hot must be auto, require or skip")
    if format == "parquet" and not output:
        raise typer.BadParameter("--format parquet needs --output FILE")
    import duckdb as ddb

    from marketprism.store.migrate import HotStoreLocked
    from marketprism.store.query import QuerySurface

    chosen, url = _hot_backend(_storage(), backend if backend or clickhouse or not duckdb else "duckdb", clickhouse)
    try:
        if chosen == "clickhouse":
            surface = QuerySurface(parquet_root=parquet_root, hot=hot, clickhouse=url)  # type: ignore[arg-type]
        else:
            surface = QuerySurface(duckdb or _storage().duckdb_path, parquet_root, hot=hot)  # type: ignore[arg-type]
    except HotStoreLocked as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from None
    if surface.hot_status == "unreachable":
        typer.echo(f"warning: {surface.hot_note}", err=True)
    with surface:
        locked = surface.hot_status == "locked"
        if not locked:
            try:
                df = surface.sql(sql)
            except ddb.Error as exc:
                typer.echo(f"error: {exc}", err=True)
                raise typer.Exit(1) from None
        note = surface.hot_note
    if locked:
        via_writer = asyncio.run(_query_writer(sql, parquet_root, nats, duckdb))
        if isinstance(via_writer, str) and via_writer.startswith("error:"):
            typer.echo(via_writer, err=True)
            raise typer.Exit(1)
        if via_writer is None:
            typer.echo(f"warning: {note}; no storage writer answered: cold data only", err=True)
            with QuerySurface(duckdb, parquet_root, hot="skip") as cold_only:
                df = cold_only.sql(sql)
        else:
            assert isinstance(via_writer, pl.DataFrame)
            df = via_writer
    _emit(df, format, output)


async def _query_writer(sql: str, parquet_root: str | None, nats: str | None, duckdb: str | None) -> object:
    """The result from the running writer (a DataFrame), an "error: ..." string, or None if no writer answered."""
    from marketprism.store.via_writer import WriterQueryError, query_through_writer

    try:
        got = await query_through_writer([("q", sql)], parquet_root, nats=nats, duckdb=duckdb, name="marketprism-query")
    except WriterQueryError as exc:
        return f"error: {exc}"
    return None if got is None else got["q"]


def _emit(df: pl.DataFrame, format: str, output: str | None) -> None:
    if format == "parquet":
        assert output is not None
        df.write_parquet(output)
        typer.echo(f"{df.height} rows -> {output}", err=True)
        return
    if format == "csv":
        # CSV has no nested values: book levels (lists of lists) are written as JSON text.
        flat = df.with_columns(
            pl.Series(c, [None if v is None else orjson.dumps(v).decode() for v in df[c].to_list()], dtype=pl.String)
            for c, t in df.schema.items()
            if isinstance(t, pl.List | pl.Array | pl.Struct)
        )
        if output:
            flat.write_csv(output)
            typer.echo(f"{df.height} rows -> {output}", err=True)
        else:
            sys.stdout.write(flat.write_csv())
        return
    from rich.console import Console
    from rich.table import Table

    table = Table(show_lines=False, caption=f"{df.height} rows")
    for name in df.columns:
        table.add_column(name, overflow="fold")
    for row in df.iter_rows():
        table.add_row(*("" if v is None else str(v) for v in row))
    console = Console(file=open(output, "w") if output else None, width=None if not output else 240)  # noqa: SIM115
    console.print(table)
    if output:
        console.file.close()
