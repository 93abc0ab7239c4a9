"""Hot -> cold: whole partitions older than the hot retention, from the hot store (DuckDB or ClickHouse) to Parquet.

This docstring describes the DuckDB path; :func:`migrate_clickhouse` describes how the same steps run against a
ClickHouse hot store (same layout, same manifest columns, in a ``_migrations`` table of the ClickHouse
database). The *ClickHouse cold database* alternative (``storage.cold_backend = "clickhouse"``) is not built:
cold is always Parquet, and :func:`migrate` refuses nothing on that account (the CLI and flow do).

Layout (DESIGN §5: type/exchange/market/date), on any fsspec path (local disk by default, ``memory://``,
``s3://``...)::

    <root>/<table>/exchange=<e>/market=<m>/date=<YYYY-MM-DD>/part-<n>.parquet

A partition is (table, exchange, market, UTC date of ``ts``). Partition values are percent-encoded in the
directory names (``urllib.parse.quote``; DuckDB's hive reader decodes them), so any string round-trips. The
files hold every column of the hot table, ``exchange`` and ``market`` included, so a file read on its own
gives whole rows; the hive columns a reader derives from the path carry the same values (checked by the
verification, which reads the file back through the hive reader).

Per partition, each step restartable:

a. **export**: the partition's hot rows whose ``key`` is not already in a cold file of that partition are
   written to ``part-<n>.parquet.tmp`` in the partition directory (``n`` = one past the highest committed
   part). Late data, rows arriving in hot for a date already migrated, thus becomes one more part file and
   never repeats a row already cold;
b. **verify**: DuckDB reads the temp file back; its row count and an order-independent content hash
   (``sum(hash(every column))``, one SQL expression over the hot table and over ``read_parquet``) must
   equal those of the hot rows with the same keys, and the keys must be unique;
c. **commit**: the temp file is renamed to ``part-<n>.parquet`` (atomic on a local disk; a single object
   on S3) and recorded in the ``_migrations`` table of the hot DuckDB file (the manifest: path, rows,
   hash, time). Only verified files ever carry a final name;
d. **delete**: in one transaction, hot rows of the partition that are present *verbatim* in the
   partition's committed files (same key and same row hash) are deleted. A row that was not verified is
   never deleted: one that arrived after the export stays hot until the next run.

A crash at any point converges on the next run: a leftover temp file is rewritten; a committed file that
the crash kept out of the manifest is recorded then; hot rows already cold are not exported again (their
keys are in cold) and are deleted; an interrupted delete rolled back with its transaction. Nothing is lost,
nothing is stored twice, and hot ends with only the partitions inside the retention (plus rows whose key is
cold with *different* content, reported as ``held_back``: never exported twice, never deleted).

Locking: DuckDB lets one process open a database file for writing, and no other process may open it at all
meanwhile. ``migrate`` therefore accepts the writer's own :class:`DuckDBStore` (it works on a cursor of
the store's connection, so it can run inside the writer process, concurrently with its commits), or a path
(``marketprism store migrate``), which fails with :class:`HotStoreLocked` while a writer holds the file.

Test hook: ``MARKETPRISM_MIGRATE_PAUSE_AT=<step>`` (``export``, ``verify``, ``commit`` or ``delete``) makes
the first partition reaching the end of that step print ``MIGRATE PAUSED AT <step>`` to stderr and block,
so a test can SIGKILL the process exactly there (``delete`` pauses inside the delete's transaction, before
its commit). The ``on_step`` callback is the in-process equivalent.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import sys
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast
from urllib.parse import quote

import duckdb
import fsspec
import pyarrow as pa
import pyarrow.parquet as pq
from fsspec.core import url_to_fs

from marketprism.store.duck import DuckDBStore
from marketprism.store.schema import TableSpec, all_specs

if TYPE_CHECKING:
    from marketprism.store.clickhouse import ClickHouseStore

log = logging.getLogger(__name__)

STEPS = ("export", "verify", "commit", "delete")
PAUSE_ENV = "MARKETPRISM_MIGRATE_PAUSE_AT"
MANIFEST_TABLE = "_migrations"
MANIFEST_DDL = f"""CREATE TABLE IF NOT EXISTS {MANIFEST_TABLE} (
  path VARCHAR PRIMARY KEY,
  "table" VARCHAR NOT NULL,
  exchange VARCHAR NOT NULL,
  market VARCHAR NOT NULL,
  date DATE NOT NULL,
  part INTEGER NOT NULL,
  rows BIGINT NOT NULL,
  content_hash VARCHAR NOT NULL,
  migrated_at TIMESTAMPTZ NOT NULL DEFAULT now()
)"""
ROW_GROUP_ROWS = 122_880  # DuckDB's row group size: ts min/max per group prune range reads
_PART = re.compile(r"^part-(\d+)\.parquet$")
_HIVE_NULL = "__HIVE_DEFAULT_PARTITION__"


class HotStoreLocked(RuntimeError):
    """The hot DuckDB file is held by another process (the running writer)."""


class VerificationError(RuntimeError):
    """A written Parquet file does not match the hot rows it was made from."""


# --- the cold layout ----------------------------------------------------------------------------------------


def encode_value(value: str) -> str:
    """A partition value as a directory name component; DuckDB's hive reader decodes it back exactly."""
    text = quote(value, safe="")
    return "%5F" + text[1:] if text == _HIVE_NULL else text  # that literal would read back as NULL


class ColdRoot:
    """The Parquet root on its fsspec filesystem, and how DuckDB reaches the same files."""

    def __init__(self, root: str | Path, storage_options: dict[str, Any] | None = None):
        fs, path = url_to_fs(str(root), **(storage_options or {}))
        self.fs: fsspec.AbstractFileSystem = fs
        self.root = path.rstrip("/")
        protocols = (fs.protocol,) if isinstance(fs.protocol, str) else tuple(fs.protocol)
        self.local = "file" in protocols or "local" in protocols

    def __repr__(self) -> str:
        return f"ColdRoot({self.url(self.root)!r})"

    def url(self, path: str) -> str:
        """``path`` (on ``fs``) as DuckDB opens it: a local path, or a URL of a filesystem registered with it."""
        return path if self.local else self.fs.unstrip_protocol(path)

    def attach(self, con: duckdb.DuckDBPyConnection) -> None:
        """Let ``con`` read this root (non-local filesystems are registered with DuckDB through fsspec)."""
        if not self.local:
            registered = set(con.list_filesystems())
            if type(self.fs).__name__ not in registered and self.fs.protocol not in registered:
                with contextlib.suppress(Exception):  # registered already (same filesystem class)
                    con.register_filesystem(self.fs)

    def table_dir(self, table: str) -> str:
        return f"{self.root}/{table}"

    def partition_dir(self, table: str, exchange: str, market: str, day: date) -> str:
        return f"{self.root}/{table}/exchange={encode_value(exchange)}/market={encode_value(market)}/date={day}"

    def table_glob(self, table: str) -> str:
        return f"{self.table_dir(table)}/*/*/*/*.parquet"

    def parts(self, directory: str) -> list[tuple[int, str]]:
        """The committed part files of a partition directory, by part number."""
        try:
            names = self.fs.ls(directory, detail=False)
        except FileNotFoundError:
            return []
        found = []
        for name in names:
            m = _PART.match(str(name).rstrip("/").rsplit("/", 1)[-1])
            if m:
                found.append((int(m.group(1)), str(name)))
        return sorted(found)

    def has_files(self, table: str) -> bool:
        return self.fs.exists(self.table_dir(table)) and bool(self.fs.glob(self.table_glob(table)))


def sql_str(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


def cold_scan(files: str | Sequence[str]) -> str:
    """A ``read_parquet`` over cold files (a glob or a list of DuckDB paths) with typed hive columns."""
    source = sql_str(files) if isinstance(files, str) else "[" + ", ".join(sql_str(f) for f in files) + "]"
    return (
        f"read_parquet({source}, hive_partitioning = true, union_by_name = true, "
        "hive_types = {'exchange': VARCHAR, 'market': VARCHAR, 'date': DATE})"
    )


def column_list(spec: TableSpec, alias: str = "") -> str:
    return ", ".join(f'{alias}"{c.name}"' for c in spec.columns)


def typed_columns(spec: TableSpec) -> str:
    """Every column cast to its hot type, so hot and cold branches (and their hashes) agree exactly."""
    return ", ".join(f'CAST("{c.name}" AS {c.duckdb_type()}) AS "{c.name}"' for c in spec.columns)


def row_hash(spec: TableSpec, alias: str = "") -> str:
    """One row's hash over every column: the same expression over the hot table and over the Parquet."""
    return "hash(" + ", ".join(f'CAST({alias}"{c.name}" AS {c.duckdb_type()})' for c in spec.columns) + ")"


# --- the migration ------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Partition:
    table: str
    exchange: str
    market: str
    date: date

    def __str__(self) -> str:
        return f"{self.table}/{self.exchange}/{self.market}/{self.date}"


@dataclass
class PartitionResult:
    partition: str
    exported: int = 0  # rows written to a new part file
    deleted: int = 0  # hot rows deleted (already verified in cold)
    held_back: int = 0  # hot rows left: their key is cold with different content
    file: str | None = None  # the new part, relative to the root
    error: str | None = None


@dataclass
class MigrationSummary:
    cold_root: str
    cutoff: str  # partitions of dates before this (UTC) were migrated
    retention_days: int
    partitions: int = 0
    rows_migrated: int = 0
    rows_deleted: int = 0
    files_written: int = 0
    held_back: int = 0
    errors: int = 0
    seconds: float = 0.0
    rows_per_s: float = 0.0
    tables: dict[str, int] = field(default_factory=dict)
    details: list[PartitionResult] = field(default_factory=list)

    def as_dict(self, details: bool = False) -> dict[str, Any]:
        out = asdict(self)
        if not details:
            out["details"] = [d for d in out["details"] if d["error"]]
        return out


StepHook = Callable[[str, Partition], None]


def _pause_point(step: str, part: Partition, hook: StepHook | None) -> None:
    if hook is not None:
        hook(step, part)
    if os.environ.get(PAUSE_ENV) == step:  # test hook: block here so a test can SIGKILL us at this step
        print(f"MIGRATE PAUSED AT {step} {part}", file=sys.stderr, flush=True)
        while True:
            time.sleep(3600)


def cutoff_date(retention_days: int, now: datetime | None = None) -> date:
    """Dates before this one are wholly older than the retention (``now`` - ``retention_days``)."""
    if retention_days < 0:
        raise ValueError("retention_days must be >= 0")
    now = now or datetime.now(UTC)
    return (now.astimezone(UTC) - timedelta(days=retention_days)).date()


def open_hot(path: str | Path, *, read_only: bool = False) -> DuckDBStore:
    try:
        return DuckDBStore(path, read_only=read_only)
    except duckdb.IOException as exc:
        if "lock" in str(exc).lower():
            raise HotStoreLocked(
                f"{path} is held by another process (the storage writer?): DuckDB lets one process open it at a "
                f"time. Stop the writer, or run the migration inside it. ({exc})"
            ) from exc
        raise


@contextlib.contextmanager
def _hot_connection(hot: DuckDBStore | str | Path) -> Iterator[duckdb.DuckDBPyConnection]:
    if isinstance(hot, DuckDBStore):
        with hot._lock:  # its own connection to the writer's database: MVCC against the writer's commits
            con = hot.con.cursor()
        try:
            yield con
        finally:
            con.close()
        return
    if str(hot) != ":memory:" and not Path(hot).exists():
        raise FileNotFoundError(f"no hot store at {hot}")
    store = open_hot(hot)
    try:
        con = store.con.cursor()
        try:
            yield con
        finally:
            con.close()
    finally:
        store.close()


def migrate(
    hot: DuckDBStore | ClickHouseStore | str | Path,
    parquet_root: str | Path,
    *,
    retention_days: int = 7,
    now: datetime | None = None,
    tables: Sequence[str] | None = None,
    storage_options: dict[str, Any] | None = None,
    on_step: StepHook | None = None,
) -> MigrationSummary:
    """Move every hot partition dated before ``now - retention_days`` (UTC) to Parquet under ``parquet_root``.

    ``hot`` is the writer's open store (migration inside the writer process) or the DuckDB file's path; or a
    ClickHouse hot store: a :class:`ClickHouseStore` or its URL (``http(s)://...``), see
    :func:`migrate_clickhouse`. ``tables`` limits the run to these tables. Raises :class:`HotStoreLocked`
    when the path is locked; a partition that fails verification is reported (``errors``, ``details``) and
    left hot.
    """
    if is_clickhouse(hot):
        return migrate_clickhouse(
            cast("ClickHouseStore | str", hot),
            parquet_root,
            retention_days=retention_days,
            now=now,
            tables=tables,
            storage_options=storage_options,
            on_step=on_step,
        )
    cold = ColdRoot(parquet_root, storage_options)
    cutoff = cutoff_date(retention_days, now)
    summary = MigrationSummary(cold_root=cold.url(cold.root), cutoff=str(cutoff), retention_days=retention_days)
    t0 = time.perf_counter()
    with _hot_connection(cast("DuckDBStore | str | Path", hot)) as con:
        con.execute("SET SESSION TimeZone = 'UTC'")
        con.execute(MANIFEST_DDL)
        cold.attach(con)
        present = {r[0] for r in con.execute("SELECT table_name FROM duckdb_tables() WHERE database_name = "
                                             "current_database() AND schema_name = 'main'").fetchall()}  # fmt: skip
        for spec in all_specs():
            if spec.table not in present or (tables is not None and spec.table not in tables):
                continue
            for part in _partitions(con, spec, cutoff):
                _tally(summary, spec, _migrate_partition(con, cold, spec, part, on_step))
    return _finish(summary, t0)


def _tally(summary: MigrationSummary, spec: TableSpec, result: PartitionResult) -> None:
    summary.details.append(result)
    summary.partitions += 1
    summary.rows_migrated += result.exported
    summary.rows_deleted += result.deleted
    summary.held_back += result.held_back
    summary.files_written += result.file is not None
    summary.errors += result.error is not None
    if result.exported:
        summary.tables[spec.table] = summary.tables.get(spec.table, 0) + result.exported


def _finish(summary: MigrationSummary, t0: float) -> MigrationSummary:
    summary.seconds = round(time.perf_counter() - t0, 3)
    summary.rows_per_s = round(summary.rows_migrated / summary.seconds, 1) if summary.seconds else 0.0
    return summary


def _partitions(con: duckdb.DuckDBPyConnection, spec: TableSpec, cutoff: date) -> list[Partition]:
    rows = con.execute(
        f"""SELECT exchange, market, CAST(ts AT TIME ZONE 'UTC' AS DATE) AS d FROM "{spec.table}"
            WHERE ts < ? GROUP BY ALL ORDER BY d, exchange, market""",
        [_midnight(cutoff)],
    ).fetchall()
    return [Partition(spec.table, e, m, d) for e, m, d in rows]


def _midnight(day: date) -> datetime:
    return datetime(day.year, day.month, day.day, tzinfo=UTC)


def _migrate_partition(
    con: duckdb.DuckDBPyConnection, cold: ColdRoot, spec: TableSpec, part: Partition, hook: StepHook | None
) -> PartitionResult:
    result = PartitionResult(str(part))
    directory = cold.partition_dir(spec.table, part.exchange, part.market, part.date)
    where = "exchange = ? AND market = ? AND ts >= ? AND ts < ?"
    params: list[object] = [part.exchange, part.market, _midnight(part.date), _midnight(part.date + timedelta(1))]
    parts = cold.parts(directory)
    _record_unlisted(con, cold, spec, part, parts)
    committed = [cold.url(p) for _, p in parts]

    # (a) export what is not cold yet
    already = f"AND key NOT IN (SELECT key FROM {cold_scan(committed)})" if committed else ""
    sql = f'SELECT {column_list(spec)} FROM "{spec.table}" WHERE {where} {already} ORDER BY ts, key'
    table: pa.Table = con.sql(sql, params=params).to_arrow_table()
    if table.num_rows and not _export_part(
        cold, spec, part, directory, parts, table, committed, result, hook,
        # (b) verify against the hot rows with the same keys
        verify=lambda tmp: _verify(con, cold, spec, tmp, table.num_rows, where, params),
        record=lambda n, final, digest: _record(con, cold, spec, part, n, final, table.num_rows, digest),
    ):  # fmt: skip
        return result
    if not committed:
        return result

    # (d) delete from hot exactly the rows that are cold verbatim
    t = f'"{spec.table}"'
    con.execute("BEGIN TRANSACTION")
    try:
        deleted = con.execute(
            f"""DELETE FROM {t} USING (SELECT key AS _k, {row_hash(spec)} AS _h FROM {cold_scan(committed)}) AS _cold
                WHERE {t}.key = _cold._k AND {row_hash(spec, t + ".")} = _cold._h
                AND {t}.exchange = ? AND {t}.market = ? AND {t}.ts >= ? AND {t}.ts < ?""",
            params,
        ).fetchall()
        _pause_point("delete", part, hook)
        con.execute("COMMIT")
    except BaseException:
        with contextlib.suppress(Exception):
            con.execute("ROLLBACK")
        raise
    result.deleted = int(deleted[0][0])
    left = con.execute(f"SELECT count(*) FROM {t} WHERE {where}", params).fetchall()
    result.held_back = int(left[0][0])  # rows of this old partition still hot: their key is cold, content differs
    if result.held_back:
        log.warning("migration: %s: %d hot rows have keys already cold with other content", part, result.held_back)
    return result


def _write_parquet(cold: ColdRoot, path: str, table: pa.Table) -> None:
    cold.fs.makedirs(path.rsplit("/", 1)[0], exist_ok=True)
    if cold.local:  # flushed to the disk before the rename makes it visible
        with open(path, "wb") as f:
            pq.write_table(table, f, compression="zstd", row_group_size=ROW_GROUP_ROWS)
            f.flush()
            os.fsync(f.fileno())
        return
    with cold.fs.open(path, "wb") as f:
        pq.write_table(table, f, compression="zstd", row_group_size=ROW_GROUP_ROWS)


def _digest(con: duckdb.DuckDBPyConnection, sql: str, params: Sequence[object] = ()) -> tuple[int, int, str]:
    row = con.execute(sql, list(params)).fetchall()[0]
    return int(row[0]), int(row[1]), str(row[2] if row[2] is not None else 0)


def _verify(
    con: duckdb.DuckDBPyConnection,
    cold: ColdRoot,
    spec: TableSpec,
    tmp: str,
    expected_rows: int,
    where: str,
    params: list[object],
    source: str | None = None,
) -> str:
    """The file's rows against the hot rows with the same keys (``source``: the hot relation, default the table)."""
    scan = cold_scan([cold.url(tmp)])
    n_cold, keys_cold, h_cold = _digest(con, f"SELECT count(*), count(DISTINCT key), sum({row_hash(spec)}) FROM {scan}")
    n_hot, keys_hot, h_hot = _digest(
        con,
        f"SELECT count(*), count(DISTINCT key), sum({row_hash(spec)}) FROM {source or _quoted(spec.table)} "
        f"WHERE {where} AND key IN (SELECT key FROM {scan})",
        params,
    )
    if not (n_cold == expected_rows == n_hot == keys_cold == keys_hot and h_cold == h_hot):
        raise VerificationError(
            f"{tmp}: written {expected_rows} rows; read back {n_cold} rows ({keys_cold} keys, hash {h_cold}); "
            f"hot has {n_hot} rows ({keys_hot} keys, hash {h_hot}) for those keys"
        )
    return h_cold


def _quoted(table: str) -> str:
    return f'"{table}"'


def _relative(cold: ColdRoot, path: str) -> str:
    return path[len(cold.root) + 1 :] if path.startswith(cold.root + "/") else path


def _export_part(
    cold: ColdRoot,
    spec: TableSpec,
    part: Partition,
    directory: str,
    parts: list[tuple[int, str]],
    table: pa.Table,
    committed: list[str],
    result: PartitionResult,
    hook: StepHook | None,
    *,
    verify: Callable[[str], str],
    record: Callable[[int, str, str], None],
) -> bool:
    """Steps (a)-(c) for the rows of ``table``, whatever the hot store: write them to the next part's temp file,
    verify it (``verify(tmp)`` returns its digest or raises ``VerificationError``), rename it into place and record
    it (``record(n, final, digest)``). False when verification failed: the temp file is gone, nothing committed."""
    n = parts[-1][0] + 1 if parts else 0
    final = f"{directory}/part-{n}.parquet"
    tmp = final + ".tmp"
    for stale in cold.fs.glob(f"{directory}/*.tmp"):
        cold.fs.rm(stale)
    _write_parquet(cold, tmp, table.cast(spec.arrow_schema()))
    _pause_point("export", part, hook)
    try:
        digest = verify(tmp)
    except VerificationError as exc:
        cold.fs.rm(tmp)
        result.error = str(exc)
        log.error("migration: %s", exc)
        return False
    _pause_point("verify", part, hook)
    # (c) commit: the final name, then the manifest
    cold.fs.mv(tmp, final)
    record(n, final, digest)
    committed.append(cold.url(final))
    result.exported = table.num_rows
    result.file = _relative(cold, final)
    _pause_point("commit", part, hook)
    return True


def _record(
    con: duckdb.DuckDBPyConnection,
    cold: ColdRoot,
    spec: TableSpec,
    part: Partition,
    n: int,
    path: str,
    rows: int,
    digest: str,
) -> None:
    con.execute(
        f"""INSERT INTO {MANIFEST_TABLE} (path, "table", exchange, market, date, part, rows, content_hash)
            VALUES (?, ?, ?, ?, ?, ?, ?, ?)
            ON CONFLICT (path) DO UPDATE SET rows = excluded.rows, content_hash = excluded.content_hash,
            migrated_at = now()""",
        [_relative(cold, path), spec.table, part.exchange, part.market, part.date, n, rows, digest],
    )


def _record_unlisted(
    con: duckdb.DuckDBPyConnection, cold: ColdRoot, spec: TableSpec, part: Partition, parts: list[tuple[int, str]]
) -> None:
    """Committed files a crash kept out of the manifest (renamed, not yet recorded): record them now."""
    if not parts:
        return
    paths = [_relative(cold, p) for _, p in parts]
    sql = f"SELECT path FROM {MANIFEST_TABLE} WHERE list_contains(?, path)"
    listed = {r[0] for r in con.execute(sql, [paths]).fetchall()}
    for n, path in parts:
        if _relative(cold, path) not in listed:
            scan = cold_scan([cold.url(path)])
            rows, _, digest = _digest(con, f"SELECT count(*), 0, sum({row_hash(spec)}) FROM {scan}")
            _record(con, cold, spec, part, n, path, rows, digest)


# --- from a ClickHouse hot store ----------------------------------------------------------------------------

CH_MANIFEST_DDL = f"""CREATE TABLE IF NOT EXISTS `{MANIFEST_TABLE}` (
  path String,
  `table` String,
  exchange String,
  market String,
  date Date32,
  part Int32,
  rows Int64,
  content_hash String,
  migrated_at DateTime64(6, 'UTC') DEFAULT now64(6)
) ENGINE = ReplacingMergeTree(migrated_at) ORDER BY path"""
CH_DELETE_PREFIX = "_migration_delete_"  # per-delete helper tables: (key, ClickHouse content hash) verified cold
_CH_WHERE = (
    "exchange = {exchange:String} AND market = {market:String} "
    "AND ts >= {lo:DateTime64(6, 'UTC')} AND ts < {hi:DateTime64(6, 'UTC')}"
)
_CH_SCHEMES = ("http", "https", "clickhouse")


def is_clickhouse(hot: object) -> bool:
    """A :class:`ClickHouseStore`, or a ClickHouse URL (``http(s)://...``) rather than a DuckDB path."""
    if getattr(hot, "backend", None) == "clickhouse":
        return True
    return isinstance(hot, str) and hot.split("://", 1)[0] in _CH_SCHEMES and "://" in hot


def ch_time(value: datetime) -> str:
    """A UTC instant as a ``DateTime64(6, 'UTC')`` query parameter."""
    return value.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S.%f")


def ch_columns(spec: TableSpec) -> str:
    return ", ".join(f"`{c.name}`" for c in spec.columns)


def ch_content_hash(spec: TableSpec) -> str:
    """ClickHouse's own hash of a stored row (``tuple`` keeps NULLs distinct), evaluated by the delete itself."""
    return f"cityHash64(tuple({ch_columns(spec)}))"


def conform(spec: TableSpec, table: pa.Table) -> pa.Table:
    """An Arrow result from ClickHouse in the table's Arrow schema (LowCardinality, binary strings -> string)."""
    return table.select(spec.names).cast(spec.arrow_schema())


def migrate_clickhouse(
    hot: ClickHouseStore | str,
    parquet_root: str | Path,
    *,
    retention_days: int = 7,
    now: datetime | None = None,
    tables: Sequence[str] | None = None,
    storage_options: dict[str, Any] | None = None,
    on_step: StepHook | None = None,
) -> MigrationSummary:
    """Hot -> cold from a ClickHouse hot store: the same partitions, layout, steps and guarantees as the DuckDB path.

    Per partition (table, exchange, market, UTC date), on a client of its own (ClickHouse serves the writer
    concurrently, so nothing has to be stopped or asked):

    a. **export**: the partition is read ``FINAL`` (exact: replayed duplicates collapsed) as Arrow, with
       ClickHouse's own content hash of each row (``cityHash64(tuple(every column))``), into an in-memory
       DuckDB; the rows whose key is not already in a committed part of the partition go to
       ``part-<n>.parquet.tmp``, exactly as from DuckDB. One partition (a day of one venue and market) is in
       memory at a time;
    b. **verify**: DuckDB reads the temp file back through the hive reader; its row count, distinct keys and
       ``sum(hash(every column cast to its hot type))`` must equal those of the exported ClickHouse rows with
       the same keys: one SQL expression, computed by the same engine on both sides;
    c. **commit**: the rename, then a row in the ``_migrations`` table of the ClickHouse database
       (``ReplacingMergeTree(migrated_at) ORDER BY path``; read with ``FINAL``). A committed file a crash kept
       out of the manifest is recorded by the next run;
    d. **delete**: the hot rows present *verbatim* in the partition's committed files (same key, same DuckDB
       row hash) are written with their ClickHouse content hash to a helper table, then one lightweight
       ``DELETE FROM <table> WHERE <partition> AND (key, cityHash64(tuple(...))) IN (helper)`` (synchronous)
       removes them. The content hash is evaluated by the delete itself, so a row whose key is cold but whose
       content changed after the read (or that was not verified) is never deleted; an identical copy
       replayed later is (it is cold verbatim). The helper table is dropped afterwards; one left by a killed
       run is dropped by the next run.

    The pause points (``MARKETPRISM_MIGRATE_PAUSE_AT``, ``on_step``) are the same; ``delete`` pauses after
    the helper table is filled, before the ``DELETE`` is sent. A kill there deletes nothing; a ``DELETE``
    that reached the server completes or not as a whole mutation, and the rerun deletes what is left.
    Run one migration at a time per database (a second one would drop the first's helper table: its delete
    then fails, deleting nothing).
    """
    from marketprism.store.clickhouse import ClickHouseStore

    store = hot if isinstance(hot, ClickHouseStore) else ClickHouseStore(str(hot))
    cold = ColdRoot(parquet_root, storage_options)
    cutoff = cutoff_date(retention_days, now)
    summary = MigrationSummary(cold_root=cold.url(cold.root), cutoff=str(cutoff), retention_days=retention_days)
    t0 = time.perf_counter()
    client = store.new_client()
    duck = duckdb.connect()
    try:
        duck.execute("SET TimeZone = 'UTC'")
        cold.attach(duck)
        client.command(CH_MANIFEST_DDL)
        present = set()
        for (name,) in client.query("SELECT name FROM system.tables WHERE database = currentDatabase()").result_rows:
            if name.startswith(CH_DELETE_PREFIX):
                client.command(f"DROP TABLE IF EXISTS `{name}`")  # left by a killed run
            present.add(name)
        for spec in all_specs():
            if spec.table not in present or (tables is not None and spec.table not in tables):
                continue
            for part in _ch_partitions(client, spec, cutoff):
                _tally(summary, spec, _ch_migrate_partition(client, duck, cold, spec, part, on_step))
    finally:
        duck.close()
        client.close()
        if store is not hot:
            store.close()
    return _finish(summary, t0)


def _ch_partitions(client: Any, spec: TableSpec, cutoff: date) -> list[Partition]:
    rows = client.query(
        f"SELECT exchange, market, toDate32(ts) AS d FROM `{spec.table}` WHERE ts < {{cutoff:DateTime64(6, 'UTC')}} "
        "GROUP BY exchange, market, d ORDER BY d, exchange, market",
        parameters={"cutoff": ch_time(_midnight(cutoff))},
    ).result_rows
    return [Partition(spec.table, e, m, d) for e, m, d in rows]


def _ch_params(part: Partition) -> dict[str, str]:
    lo, hi = _midnight(part.date), _midnight(part.date + timedelta(1))
    return {"exchange": part.exchange, "market": part.market, "lo": ch_time(lo), "hi": ch_time(hi)}


def _ch_where_literal(part: Partition) -> str:
    """The partition's condition with inline literals (strings as hex: any bytes, no escaping to get wrong)."""
    lo, hi = _midnight(part.date), _midnight(part.date + timedelta(1))
    return (
        f"exchange = unhex('{part.exchange.encode().hex()}') AND market = unhex('{part.market.encode().hex()}') "
        f"AND ts >= toDateTime64('{ch_time(lo)}', 6, 'UTC') AND ts < toDateTime64('{ch_time(hi)}', 6, 'UTC')"
    )


def _ch_migrate_partition(
    client: Any,
    duck: duckdb.DuckDBPyConnection,
    cold: ColdRoot,
    spec: TableSpec,
    part: Partition,
    hook: StepHook | None,
) -> PartitionResult:
    result = PartitionResult(str(part))
    directory = cold.partition_dir(spec.table, part.exchange, part.market, part.date)
    params = _ch_params(part)
    parts = cold.parts(directory)
    _ch_record_unlisted(client, duck, cold, spec, part, parts)
    committed = [cold.url(p) for _, p in parts]

    # (a) the partition as ClickHouse serves it (FINAL), then what of it is not cold yet
    fetched = client.query_arrow(
        f"SELECT {ch_columns(spec)}, {ch_content_hash(spec)} AS _ch_hash FROM `{spec.table}` FINAL "
        f"WHERE {_CH_WHERE} ORDER BY ts, key",
        parameters=params,
    )
    hot = conform(spec, fetched).append_column("_ch_hash", fetched.column("_ch_hash").cast(pa.uint64()))
    duck.register("_mp_hot", hot)
    try:
        already = f"WHERE key NOT IN (SELECT key FROM {cold_scan(committed)})" if committed else ""
        table = duck.sql(f"SELECT {column_list(spec)} FROM _mp_hot {already} ORDER BY ts, key").to_arrow_table()
        if table.num_rows and not _export_part(
            cold, spec, part, directory, parts, table, committed, result, hook,
            # (b) verify the file against the exported ClickHouse rows with the same keys
            verify=lambda tmp: _verify(duck, cold, spec, tmp, table.num_rows, "true", [], source="_mp_hot"),
            record=lambda n, final, digest: _ch_record(client, cold, spec, part, n, final, table.num_rows, digest),
        ):  # fmt: skip
            return result
        if not committed:
            return result

        # (d) delete from hot exactly the rows that are cold verbatim, guarded by ClickHouse's content hash
        verified = duck.sql(
            f"""SELECT h.key, h._ch_hash AS h FROM _mp_hot AS h
                JOIN (SELECT key AS _k, {row_hash(spec)} AS _h FROM {cold_scan(committed)}) AS c
                ON h.key = c._k AND {row_hash(spec, "h.")} = c._h"""
        ).to_arrow_table()
    finally:
        duck.unregister("_mp_hot")
    if verified.num_rows:
        helper = f"{CH_DELETE_PREFIX}{uuid.uuid4().hex}"
        client.command(f"CREATE TABLE `{helper}` (key String, h UInt64) ENGINE = MergeTree ORDER BY (key, h)")
        try:
            client.insert_arrow(helper, verified)
            _pause_point("delete", part, hook)
            # Literals, not query parameters: a mutation is stored as text, and ClickHouse 26.9 writes a
            # DateTime64 parameter there as a number that it cannot parse back for dates near 1970.
            client.command(
                f"DELETE FROM `{spec.table}` WHERE {_ch_where_literal(part)} AND (key, {ch_content_hash(spec)}) IN "
                f"(SELECT key, h FROM `{helper}`)",
                settings={"lightweight_deletes_sync": 2},
            )
        finally:
            client.command(f"DROP TABLE IF EXISTS `{helper}`")
    result.deleted = verified.num_rows
    left = client.command(f"SELECT count() FROM `{spec.table}` FINAL WHERE {_CH_WHERE}", parameters=params)
    result.held_back = int(left)
    if result.held_back:
        log.warning("migration: %s: %d hot rows have keys already cold with other content", part, result.held_back)
    return result


def _ch_record(
    client: Any, cold: ColdRoot, spec: TableSpec, part: Partition, n: int, path: str, rows: int, digest: str
) -> None:
    client.insert(
        MANIFEST_TABLE,
        [[_relative(cold, path), spec.table, part.exchange, part.market, part.date, n, rows, digest]],
        column_names=["path", "table", "exchange", "market", "date", "part", "rows", "content_hash"],
    )


def _ch_record_unlisted(
    client: Any,
    duck: duckdb.DuckDBPyConnection,
    cold: ColdRoot,
    spec: TableSpec,
    part: Partition,
    parts: list[tuple[int, str]],
) -> None:
    if not parts:
        return
    paths = [_relative(cold, p) for _, p in parts]
    listed = {
        r[0]
        for r in client.query(
            f"SELECT path FROM `{MANIFEST_TABLE}` FINAL WHERE has({{paths:Array(String)}}, path)",
            parameters={"paths": paths},
        ).result_rows
    }
    for n, path in parts:
        if _relative(cold, path) not in listed:
            rows, _, digest = _digest(
                duck, f"SELECT count(*), 0, sum({row_hash(spec)}) FROM {cold_scan([cold.url(path)])}"
            )
            _ch_record(client, cold, spec, part, n, path, rows, digest)
