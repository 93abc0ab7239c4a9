"""One query surface over hot and cold: SQL (``marketprism query "SQL"``) and ``read(...)`` -> polars.

A DuckDB connection with one view per record type under the table's own name (``trades``, ``depths``...):
the hot DuckDB table ``UNION ALL BY NAME`` the cold Parquet of that table (``read_parquet`` over
``<root>/<table>/*/*/*/*.parquet`` with hive partitioning; exchange/market/date are typed from the path and
the view keeps exactly the hot table's columns, in its order and with its types). A view over a table that
exists on neither side is empty, with the right columns.

The hot file and the running writer. DuckDB lets one process open a database file read-write, and while it
does, no other process can open the file at all, not even read-only (checked with DuckDB 2.0.1:
``IO Error: Could not set lock on file ... Conflicting lock is held``); conversely, while a reader holds the
file read-only, the writer cannot start. So:

* in the writer's own process (a flow or task that holds the :class:`DuckDBStore`), pass ``store=``: the
  views are built on a cursor of the writer's connection and see every committed row;
* from another process (the CLI), the hot file is attached read-only only for the duration of the query,
  when it can be; if the writer holds it, ``hot="auto"`` (the default) answers from the cold Parquet alone
  and says so (``QuerySurface.hot_status == "locked"``, a warning on stderr from the CLI), ``hot="require"``
  raises :class:`HotStoreLocked` instead, ``hot="skip"`` never touches the hot file. The rows inside the hot
  retention are then not visible to another process until the writer stops: exposing them needs a query
  endpoint in the writer process (or ClickHouse as the hot store, which serves concurrent readers).

While a migration commits a partition and before it deletes the partition from hot (seconds), a query in
another connection can see that partition's rows on both sides; run queries that must be exact outside a
migration, or deduplicate on ``key``.
"""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Sequence
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any, Literal

import duckdb
import polars as pl
import pyarrow as pa

from marketprism.store.duck import DuckDBStore
from marketprism.store.migrate import ColdRoot, HotStoreLocked, cold_scan, column_list, sql_str, typed_columns
from marketprism.store.schema import TableSpec, all_specs, table_spec

HotMode = Literal["auto", "require", "skip"]
TimeLike = datetime | date | int | str

HOT_CATALOG = "hot"


def storage_defaults() -> tuple[str, str]:
    """(DuckDB file, Parquet root) from the platform configuration (env ``MARKETPRISM_STORAGE__*``)."""
    from marketprism.config import ConfigError, StorageConfig, resolve

    try:
        storage = resolve()[0].storage
    except ConfigError:
        storage = StorageConfig()
    return storage.duckdb_path, storage.parquet_path


class QuerySurface:
    """DuckDB views over hot + cold, one per table. Close it promptly: it may hold the hot file read-only."""

    def __init__(
        self,
        duckdb_path: str | Path | None = None,
        parquet_root: str | Path | None = None,
        *,
        store: DuckDBStore | None = None,
        hot: HotMode = "auto",
        storage_options: dict[str, Any] | None = None,
    ):
        if duckdb_path is None or parquet_root is None:
            default_hot, default_cold = storage_defaults()
            duckdb_path = default_hot if duckdb_path is None else duckdb_path
            parquet_root = default_cold if parquet_root is None else parquet_root
        self.cold = ColdRoot(parquet_root, storage_options)
        self.hot_status = "skipped"
        self.hot_note = ""
        self._attached = False
        if store is not None:
            with store._lock:
                self.con = store.con.cursor()
            self.hot_catalog: str | None = str(self.con.execute("SELECT current_database()").fetchall()[0][0])
            self.hot_status = "in-process"
        else:
            self.con = duckdb.connect()
            self.hot_catalog = None
            if hot != "skip":
                self._attach(str(duckdb_path), hot)
        self.con.execute("SET SESSION TimeZone = 'UTC'")
        self.cold.attach(self.con)
        self.sources: dict[str, tuple[str | None, str | None]] = {}
        self._build_views()

    def _attach(self, path: str, mode: HotMode) -> None:
        if path != ":memory:" and not Path(path).exists():
            self.hot_status, self.hot_note = "missing", f"no hot store at {path}"
            return
        try:
            self.con.execute(f"ATTACH {sql_str(path)} AS {HOT_CATALOG} (READ_ONLY)")
        except duckdb.IOException as exc:
            if "lock" not in str(exc).lower():
                raise
            note = f"the hot store {path} is held by another process (the storage writer?): {exc}"
            if mode == "require":
                raise HotStoreLocked(note) from exc
            self.hot_status, self.hot_note = "locked", note + "; answering from cold Parquet only"
            return
        self._attached = True
        self.hot_catalog = HOT_CATALOG
        self.hot_status = "attached"

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.con.close()

    def __enter__(self) -> QuerySurface:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --- views --------------------------------------------------------------------------------------------

    def _build_views(self) -> None:
        hot_tables: set[str] = set()
        if self.hot_catalog is not None:
            rows = self.con.execute(
                "SELECT table_name FROM duckdb_tables() WHERE database_name = ? AND schema_name = 'main'",
                [self.hot_catalog],
            ).fetchall()
            hot_tables = {r[0] for r in rows}
        for spec in all_specs():
            hot_ref = f'"{self.hot_catalog}".main."{spec.table}"' if spec.table in hot_tables else None
            cold_ref = None
            if self.cold.has_files(spec.table):
                cold_ref = cold_scan(self.cold.url(self.cold.table_glob(spec.table)))
            self.sources[spec.table] = (hot_ref, cold_ref)
            self.con.execute(f'CREATE OR REPLACE TEMP VIEW "{spec.table}" AS {self._union(spec)}')

    def _union(self, spec: TableSpec, hot_where: str = "", cold_where: str = "") -> str:
        hot_ref, cold_ref = self.sources[spec.table]
        branches = []
        if hot_ref:
            branches.append(f"SELECT {column_list(spec)} FROM {hot_ref} {hot_where}")
        if cold_ref:
            branches.append(f"SELECT {typed_columns(spec)} FROM {cold_ref} {cold_where}")
        if not branches:
            nulls = ", ".join(f'CAST(NULL AS {c.duckdb_type()}) AS "{c.name}"' for c in spec.columns)
            return f"SELECT {nulls} WHERE false"
        return " UNION ALL BY NAME ".join(branches)

    # --- queries ------------------------------------------------------------------------------------------

    def arrow(self, sql: str, params: Sequence[object] | None = None) -> pa.Table:
        table: pa.Table = self.con.sql(sql, params=list(params) if params else None).to_arrow_table()
        return table

    def sql(self, sql: str, params: Sequence[object] | None = None) -> pl.DataFrame:
        return pl.DataFrame(pl.from_arrow(self.arrow(sql, params)))

    def read(
        self,
        data_type: str,
        exchange: str | None = None,
        symbol: str | None = None,
        start: TimeLike | None = None,
        end: TimeLike | None = None,
        market: str | None = None,
    ) -> pl.DataFrame:
        """Rows of one record type, hot and cold, ordered by ``ts`` then ``key``; ``start`` <= ts < ``end``."""
        spec = table_spec(data_type)
        conds: list[str] = []
        params: list[object] = []
        for column, value in (("exchange", exchange), ("market", market), ("symbol", symbol)):
            if value is not None:
                conds.append(f'"{column}" = ?')
                params.append(value)
        lo = to_datetime(start) if start is not None else None
        hi = to_datetime(end) if end is not None else None
        if lo is not None:
            conds.append("ts >= ?")
            params.append(lo)
        if hi is not None:
            conds.append("ts < ?")
            params.append(hi)
        # The cold side also prunes whole directories by the hive date.
        cold_conds, cold_params = list(conds), list(params)
        if lo is not None:
            cold_conds.append("date >= ?")
            cold_params.append(lo.date())
        if hi is not None:
            cold_conds.append("date <= ?")
            cold_params.append((hi - timedelta(microseconds=1)).date())
        hot_ref, cold_ref = self.sources[spec.table]
        hot_where = ("WHERE " + " AND ".join(conds)) if conds else ""
        cold_where = ("WHERE " + " AND ".join(cold_conds)) if cold_conds else ""
        all_params = (params if hot_ref else []) + (cold_params if cold_ref else [])
        table = self.arrow(f"SELECT * FROM ({self._union(spec, hot_where, cold_where)}) ORDER BY ts, key", all_params)
        df = pl.DataFrame(pl.from_arrow(table))
        return df.cast({c.name: c.polars_type for c in spec.columns})


def to_datetime(value: TimeLike) -> datetime:
    """An instant: an aware datetime, a naive one (UTC), a date (its UTC midnight), µs since the epoch, or ISO."""
    if isinstance(value, datetime):
        return value if value.tzinfo else value.replace(tzinfo=UTC)
    if isinstance(value, date):
        return datetime(value.year, value.month, value.day, tzinfo=UTC)
    if isinstance(value, int):
        return datetime(1970, 1, 1, tzinfo=UTC) + timedelta(microseconds=value)
    return to_datetime(datetime.fromisoformat(value))


def read(
    data_type: str,
    exchange: str | None = None,
    symbol: str | None = None,
    start: TimeLike | None = None,
    end: TimeLike | None = None,
    market: str | None = None,
    *,
    duckdb_path: str | Path | None = None,
    parquet_root: str | Path | None = None,
    store: DuckDBStore | None = None,
    hot: HotMode = "auto",
) -> pl.DataFrame:
    """Rows of ``data_type`` (``"trade"``, ``"depth"``...) from hot and cold together, as a polars frame.

    ``start`` is inclusive, ``end`` exclusive (datetimes, dates, µs integers or ISO strings; naive = UTC).
    Paths default to the platform configuration; pass ``store`` inside the writer's process. See the module
    docstring for what ``hot`` does while another process holds the hot file.
    """
    with QuerySurface(duckdb_path, parquet_root, store=store, hot=hot) as surface:
        if surface.hot_status == "locked":
            print(f"warning: {surface.hot_note}", file=sys.stderr)
        return surface.read(data_type, exchange=exchange, symbol=symbol, start=start, end=end, market=market)
