"""One query surface over hot and cold: SQL (``marketprism query "SQL"``) and ``read(...)`` -> polars.

With the DuckDB hot store (the default): a DuckDB connection with one view per record type under the table's
own name (``trades``, ``depths``...): the hot DuckDB table ``UNION ALL BY NAME`` the cold Parquet of that
table (``read_parquet`` over ``<root>/<table>/*/*/*/*.parquet`` with hive partitioning; exchange/market/date
are typed from the path and the view keeps exactly the hot table's columns, in its order and with its
types). A view over a table that exists on neither side is empty, with the right columns.

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

ClickHouse as the hot store (``storage.hot_backend = "clickhouse"``, or ``clickhouse=`` a
:class:`ClickHouseStore` or its URL). The SQL stays DuckDB's, whichever the hot backend, and the cold side is
read by DuckDB exactly as above; only the hot branch of each view changes. ClickHouse serves concurrent
clients, so there is no lock to work around: the surface has a client of its own, and hot rows are always read
``FINAL`` (the ``ReplacingMergeTree`` collapses a record stored twice only at merge time; ``FINAL`` is exact
before that).

* ``read()`` pushes its filters (exchange, market, symbol, ``start <= ts < end``) into one ClickHouse query per
  call, ``SELECT ... FROM <table> FINAL WHERE ...`` (the table is ordered by (exchange, market, symbol, ts,
  key) and partitioned by month, so ClickHouse reads only the matching ranges), fetched as Arrow and unioned in
  DuckDB with the cold Parquet pruned by the same filters and the hive date;
* ``sql()`` (``marketprism query``) runs arbitrary SQL in DuckDB. Before it runs, each record table the
  statement names is fetched once from ClickHouse, ``FINAL``, as an Arrow
  stream into a DuckDB temporary table (DuckDB spills it to disk past its memory limit); the view unions that
  with the Parquet. So a query moves at most the hot retention (days) of the tables it names, whatever its
  filters, while the year of cold data is read by DuckDB with partition and row-group pruning. Why not run the
  SQL in ClickHouse over hot + cold (its ``file()``/``s3()`` table functions read Parquet, and chDB's server
  does): the statement would then be in ClickHouse's dialect on one backend and DuckDB's on the other, and a
  ClickHouse server generally cannot see the cold root (``file()`` is confined to its ``user_files_path``;
  ``memory://`` or other fsspec roots not at all). For large hot scans, use ``read()`` (pushed down) or
  query ClickHouse directly.

The ClickHouse *cold database* alternative (``storage.cold_backend = "clickhouse"``) is not built: cold is
Parquet.

While a migration commits a partition and before it deletes the partition from hot (seconds), a query in
another connection can see that partition's rows on both sides; run queries that must be exact outside a
migration, or deduplicate on ``key``. (With ClickHouse, a ``sql()`` that fetched a hot table before the
migration's delete keeps that snapshot for the surface's lifetime: open a new surface per query, as the CLI
does.)
"""

from __future__ import annotations

import contextlib
import re
import sys
from collections.abc import Sequence
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import duckdb
import polars as pl
import pyarrow as pa

from marketprism.store.duck import DuckDBStore
from marketprism.store.migrate import (
    ColdRoot,
    HotStoreLocked,
    ch_columns,
    ch_time,
    cold_scan,
    column_list,
    conform,
    sql_str,
    typed_columns,
)
from marketprism.store.schema import TableSpec, all_specs, table_spec

if TYPE_CHECKING:
    from marketprism.config import StorageConfig
    from marketprism.store.clickhouse import ClickHouseStore

HotMode = Literal["auto", "require", "skip"]
TimeLike = datetime | date | int | str

HOT_CATALOG = "hot"


def storage_config() -> StorageConfig:
    """The platform's storage configuration (env ``MARKETPRISM_STORAGE__*``...), or the defaults."""
    from marketprism.config import ConfigError, StorageConfig, resolve

    try:
        return resolve()[0].storage
    except ConfigError:
        return StorageConfig()


def storage_defaults() -> tuple[str, str]:
    """(DuckDB file, Parquet root) from the platform configuration (env ``MARKETPRISM_STORAGE__*``)."""
    storage = storage_config()
    return storage.duckdb_path, storage.parquet_path


def configured_clickhouse() -> str | None:
    """The ClickHouse hot store's URL when the configuration makes ClickHouse the hot backend, else None."""
    storage = storage_config()
    if storage.hot_backend != "clickhouse":
        return None
    if storage.clickhouse_url is None:
        raise ValueError("storage.hot_backend is clickhouse but storage.clickhouse_url is not set")
    return storage.clickhouse_url.get_secret_value()


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
        clickhouse: ClickHouseStore | str | None = None,
    ):
        if duckdb_path is None and store is None and clickhouse is None:
            clickhouse = configured_clickhouse()  # the configured hot backend, unless told otherwise
        if duckdb_path is None or parquet_root is None:
            default_hot, default_cold = storage_defaults()
            duckdb_path = default_hot if duckdb_path is None else duckdb_path
            parquet_root = default_cold if parquet_root is None else parquet_root
        self.cold = ColdRoot(parquet_root, storage_options)
        self.hot_status = "skipped"
        self.hot_note = ""
        self._attached = False
        self._ch: Any = None  # ClickHouse hot: a client of our own, the database, the tables fetched so far
        self._ch_db = ""
        self._ch_loaded: set[str] = set()
        if clickhouse is not None:
            self.con = duckdb.connect()
            self.hot_catalog: str | None = None
            if hot != "skip":
                self._connect_clickhouse(clickhouse, hot)
        elif store is not None:
            with store._lock:
                self.con = store.con.cursor()
            self.hot_catalog = str(self.con.execute("SELECT current_database()").fetchall()[0][0])
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

    def _connect_clickhouse(self, clickhouse: ClickHouseStore | str, mode: HotMode) -> None:
        from marketprism.store.clickhouse import reader_client

        try:
            if isinstance(clickhouse, str):
                self._ch, self._ch_db = reader_client(clickhouse)
            else:
                self._ch, self._ch_db = clickhouse.new_client(), clickhouse.database
            self._ch.command("SELECT 1")
        except Exception as exc:
            if mode == "require" or isinstance(exc, ValueError):
                raise
            self._ch = None
            self.hot_status = "unreachable"
            self.hot_note = f"the ClickHouse hot store is unreachable ({exc}); answering from cold Parquet only"
            return
        self.hot_status = "clickhouse"

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.con.close()
        if self._ch is not None:
            with contextlib.suppress(Exception):
                self._ch.close()

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
        elif self._ch is not None:
            rows = self._ch.query(
                "SELECT name FROM system.tables WHERE database = {d:String}", parameters={"d": self._ch_db}
            ).result_rows
            hot_tables = {r[0] for r in rows}
        for spec in all_specs():
            hot_ref = None
            if spec.table in hot_tables and self._ch is not None:
                # Filled from ClickHouse when a statement names the table (see _fetch_hot).
                hot_ref = f'"{_HOT_PREFIX}{spec.table}"'
                cols = ", ".join(f'"{c.name}" {c.duckdb_type()}' for c in spec.columns)
                self.con.execute(f"CREATE OR REPLACE TEMP TABLE {hot_ref} ({cols})")
            elif spec.table in hot_tables:
                hot_ref = f'"{self.hot_catalog}".main."{spec.table}"'

            cold_ref = None
            if self.cold.has_files(spec.table):
                cold_ref = cold_scan(self.cold.url(self.cold.table_glob(spec.table)))
            self.sources[spec.table] = (hot_ref, cold_ref)
            self.con.execute(f'CREATE OR REPLACE TEMP VIEW "{spec.table}" AS {self._union(spec)}')

    def _union(self, spec: TableSpec, hot_where: str = "", cold_where: str = "", hot_ref: str | None = None) -> str:
        view_hot_ref, cold_ref = self.sources[spec.table]
        hot_ref = hot_ref or view_hot_ref
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
        if self._ch is not None:
            self._fetch_hot(sql)
        table: pa.Table = self.con.sql(sql, params=list(params) if params else None).to_arrow_table()
        return table

    def _fetch_hot(self, sql: str) -> None:
        """ClickHouse hot: the record tables ``sql`` names, fetched FINAL into their temp tables (once each)."""
        # Every table whose name appears as a word in the statement: a superset of what it reads (views, CTEs,
        # quoted names included), never less. (duckdb.get_table_names binds USING joins, so it can fail.)
        words = {w.lower() for w in re.findall(r"\w+", sql)}
        for spec in all_specs():
            hot_ref = self.sources[spec.table][0]
            if spec.table in words and spec.table not in self._ch_loaded and hot_ref is not None:
                query = f"SELECT {ch_columns(spec)} FROM `{self._ch_db}`.`{spec.table}` FINAL"
                with self._ch.query_arrow_stream(query) as stream:
                    batches = (b for t in stream for b in conform(spec, _as_table(t)).to_batches())
                    reader = pa.RecordBatchReader.from_batches(spec.arrow_schema(), batches)
                    self.con.register("_mp_hot_stream", reader)
                    try:
                        self.con.execute(f"INSERT INTO {hot_ref} SELECT {column_list(spec)} FROM _mp_hot_stream")
                    finally:
                        self.con.unregister("_mp_hot_stream")
                self._ch_loaded.add(spec.table)

    def _read_hot(self, spec: TableSpec, filters: dict[str, str], lo: datetime | None, hi: datetime | None) -> str:
        """ClickHouse hot, for ``read()``: the matching rows, FINAL, registered in DuckDB; returns the relation."""
        conds = [f"`{c}` = {{{c}:String}}" for c in filters]
        params: dict[str, str] = dict(filters)
        if lo is not None:
            conds.append("ts >= {lo:DateTime64(6, 'UTC')}")
            params["lo"] = ch_time(lo)
        if hi is not None:
            conds.append("ts < {hi:DateTime64(6, 'UTC')}")
            params["hi"] = ch_time(hi)
        where = ("WHERE " + " AND ".join(conds)) if conds else ""
        query = f"SELECT {ch_columns(spec)} FROM `{self._ch_db}`.`{spec.table}` FINAL {where}"
        self.con.register("_mp_read_hot", conform(spec, self._ch.query_arrow(query, parameters=params)))
        return "_mp_read_hot"

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
        read_ref = None
        if self._ch is not None and hot_ref is not None:  # ClickHouse hot: the filters run in ClickHouse
            filters = {c: v for c, v in (("exchange", exchange), ("market", market), ("symbol", symbol))
                       if v is not None}  # fmt: skip
            read_ref, hot_where, params = self._read_hot(spec, filters, lo, hi), "", []
        all_params = (params if hot_ref else []) + (cold_params if cold_ref else [])
        union = self._union(spec, hot_where, cold_where, hot_ref=read_ref)
        try:
            rel = self.con.sql(f"SELECT * FROM ({union}) ORDER BY ts, key", params=all_params or None)
            table = rel.to_arrow_table()
        finally:
            if read_ref is not None:
                self.con.unregister(read_ref)
        df = pl.DataFrame(pl.from_arrow(table))
        return df.cast({c.name: c.polars_type for c in spec.columns})


_HOT_PREFIX = "_mp_hot_"


def _as_table(part: pa.Table | pa.RecordBatch) -> pa.Table:
    return part if isinstance(part, pa.Table) else pa.Table.from_batches([part])


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
    clickhouse: ClickHouseStore | str | None = None,
) -> pl.DataFrame:
    """Rows of ``data_type`` (``"trade"``, ``"depth"``...) from hot and cold together, as a polars frame.

    ``start`` is inclusive, ``end`` exclusive (datetimes, dates, µs integers or ISO strings; naive = UTC).
    Paths and the hot backend default to the platform configuration; pass ``store`` inside the writer's
    process, ``clickhouse`` (a store or URL) for a ClickHouse hot store. See the module docstring for what
    ``hot`` does while another process holds the hot DuckDB file.
    """
    with QuerySurface(duckdb_path, parquet_root, store=store, hot=hot, clickhouse=clickhouse) as surface:
        if surface.hot_status in ("locked", "unreachable"):
            print(f"warning: {surface.hot_note}", file=sys.stderr)
        return surface.read(data_type, exchange=exchange, symbol=symbol, start=start, end=end, market=market)
