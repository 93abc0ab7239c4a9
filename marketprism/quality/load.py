"""Read the window to check from the hot store and cold Parquet, as polars frames (no GX here).

GX over DuckDB through SQLAlchemy is broken (DESIGN §8), so the rows are read with DuckDB (the query surface:
hot tables ``UNION ALL`` cold Parquet) and validated as DataFrames. Where the rows come from:

* ``store=``: the caller holds the DuckDB store (the writer's own process): a cursor on its connection;
* otherwise the hot file is attached read-only when it can be; while the running storage writer holds it, each
  query runs inside the writer, asked over NATS (``mp.control.storage_writer.query``, the path ``marketprism
  query`` takes; the reply names a Parquet file); when no writer answers, cold Parquet only, and ``source`` says so.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import polars as pl

from marketprism.store.duck import DuckDBStore
from marketprism.store.schema import all_specs

WRITER_TIMEOUT_S = 600.0


@dataclass
class Window:
    """Stored rows of ``start`` <= ts < ``end`` by table, the newest receive time per feed, and where they came
    from (``in-process``, ``attached``, ``writer``, ``missing``, ``cold-only``)."""

    start: datetime
    end: datetime
    rows: dict[str, pl.DataFrame]
    newest: pl.DataFrame  # data_type, exchange, market, newest
    source: str
    note: str = ""


def _ts(value: datetime) -> str:
    return f"TIMESTAMPTZ '{value.isoformat()}'"


def window_sql(table: str, start: datetime, end: datetime) -> str:
    return f'SELECT * FROM "{table}" WHERE ts >= {_ts(start)} AND ts < {_ts(end)}'


def newest_sql(since: datetime) -> str:
    """The newest receive time per (data_type, exchange, market) since ``since``, over every table."""
    parts = [
        f"SELECT '{s.data_type}' AS data_type, exchange, market, max(recv_ts) AS newest "
        f'FROM "{s.table}" WHERE ts >= {_ts(since)} GROUP BY exchange, market'
        for s in all_specs()
    ]
    return " UNION ALL ".join(parts)


def _queries(start: datetime, end: datetime, since: datetime) -> list[tuple[str, str]]:
    return [(s.table, window_sql(s.table, start, end)) for s in all_specs()] + [("_newest", newest_sql(since))]


def _typed(table: str, df: pl.DataFrame) -> pl.DataFrame:
    if table == "_newest":
        return df.cast({"newest": pl.Datetime("us", "UTC")}) if df.height else pl.DataFrame(
            schema={"data_type": pl.String, "exchange": pl.String, "market": pl.String,
                    "newest": pl.Datetime("us", "UTC")})  # fmt: skip
    spec = next(s for s in all_specs() if s.table == table)
    return df.cast({c.name: c.polars_type for c in spec.columns})


def _local(queries: Sequence[tuple[str, str]], surface: Any) -> dict[str, pl.DataFrame]:
    return {name: _typed(name, surface.sql(sql)) for name, sql in queries}


async def aload_window(
    start: datetime,
    end: datetime,
    *,
    since: datetime | None = None,
    duckdb_path: str | Path | None = None,
    parquet_root: str | Path | None = None,
    nats_url: str | None = None,
    store: DuckDBStore | None = None,
) -> Window:
    """The window's rows (see the module doc). ``since``: how far back the newest-per-feed looks (default: start)."""
    import asyncio

    from marketprism.store.query import QuerySurface

    since = since or start
    queries = _queries(start, end, since)
    if store is not None:

        def in_process() -> dict[str, pl.DataFrame]:
            with QuerySurface(parquet_root=parquet_root, store=store) as surface:
                return _local(queries, surface)

        return _window(start, end, await asyncio.to_thread(in_process), "in-process")

    def attached() -> tuple[dict[str, pl.DataFrame] | None, str, str]:
        with QuerySurface(duckdb_path, parquet_root, hot="auto") as surface:
            if surface.hot_status == "locked":
                return None, surface.hot_status, surface.hot_note
            return _local(queries, surface), surface.hot_status, surface.hot_note

    frames, status, note = await asyncio.to_thread(attached)
    if frames is not None:
        return _window(start, end, frames, status, note)
    via_writer = await _ask_writer(queries, parquet_root, nats_url, duckdb_path)
    if via_writer is not None:
        return _window(start, end, via_writer, "writer", "hot rows read inside the running storage writer")

    def cold_only() -> dict[str, pl.DataFrame]:
        with QuerySurface(duckdb_path, parquet_root, hot="skip") as surface:
            return _local(queries, surface)

    return _window(start, end, await asyncio.to_thread(cold_only), "cold-only",
                   f"{note}; no storage writer answered: cold Parquet only")  # fmt: skip


def _window(start: datetime, end: datetime, frames: dict[str, pl.DataFrame], source: str, note: str = "") -> Window:
    newest = frames.pop("_newest")
    return Window(start, end, frames, newest, source, note)


async def _ask_writer(queries: Sequence[tuple[str, str]], parquet_root: str | Path | None, nats_url: str | None,
                      duckdb_path: str | Path | None) -> dict[str, pl.DataFrame] | None:  # fmt: skip
    """Every query answered by the running storage writer, or None when none answers."""
    from marketprism.store.via_writer import WriterQueryError, query_through_writer

    try:
        got = await query_through_writer(queries, parquet_root, nats=nats_url, duckdb=duckdb_path,
                                         name="marketprism-quality", timeout_s=WRITER_TIMEOUT_S)  # fmt: skip
    except WriterQueryError as exc:
        raise RuntimeError(f"the storage writer could not run a quality query: {exc}") from None
    return None if got is None else {name: _typed(name, df) for name, df in got.items()}
