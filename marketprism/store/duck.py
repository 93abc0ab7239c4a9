"""The hot store in a DuckDB file (the embedded default).

Exactly once: the rows of a batch and the bus position they came from (the JetStream stream sequence of the
batch's last message) are committed in one transaction. After a crash the writer reads the position back
and skips every redelivered message at or below it, so a batch is stored entirely or not at all, and never
twice. Records replayed onto the bus outside its duplicate window (a new stream sequence, the same record)
are caught by their natural key: a batch is inserted with an anti-join against the rows already stored in
the batch's own ``ts`` range (the same record always has the same ``ts``, and DuckDB prunes row groups by
their ``ts`` min/max, so this reads only recent data).
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import duckdb
import polars as pl

from marketprism.store.schema import TableSpec, all_specs

POSITIONS_DDL = """CREATE TABLE IF NOT EXISTS _bus_positions (
  consumer VARCHAR PRIMARY KEY,
  stream_seq BIGINT NOT NULL,
  updated TIMESTAMPTZ NOT NULL DEFAULT now()
)"""


class DuckDBStore:
    """One DuckDB file; every method is safe to call from a worker thread (one connection, one lock)."""

    backend = "duckdb"

    def __init__(self, path: str | Path, *, read_only: bool = False, checkpoint_mb: int = 256):
        self.path = str(path)
        if self.path != ":memory:":
            Path(self.path).parent.mkdir(parents=True, exist_ok=True)
        self.con = duckdb.connect(self.path, read_only=read_only)
        self._lock = threading.Lock()
        self._tables: set[str] = set()
        if not read_only:
            _exec(self.con, POSITIONS_DDL)
            # DuckDB checkpoints (rewrites the WAL into the file) whenever the WAL passes 16 MB: with batches of
            # tens of thousands of records that is every commit, which then costs twice the insert. A larger
            # threshold checkpoints every few batches instead; the WAL stays durable and replays on open.
            _exec(self.con, f"SET checkpoint_threshold = '{checkpoint_mb}MB'")

    def close(self) -> None:
        with self._lock:
            self.con.close()

    def __enter__(self) -> DuckDBStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def ensure_tables(self, specs: Sequence[TableSpec] | None = None) -> None:
        with self._lock:
            for spec in specs or all_specs():
                if spec.table not in self._tables:
                    _exec(self.con, spec.duckdb_ddl())
                    self._tables.add(spec.table)

    def position(self, consumer: str) -> int:
        """The stream sequence of the last message committed by ``consumer`` (0: none yet)."""
        with self._lock:
            rows = _exec(self.con, "SELECT stream_seq FROM _bus_positions WHERE consumer = ?", [consumer])
        return int(rows[0][0]) if rows else 0

    def resume(self, consumer: str) -> tuple[int, int | None]:
        """Where ``consumer`` resumes: rows and position commit together, so there is never a half batch."""
        return self.position(consumer), None

    def commit(
        self, frames: Sequence[tuple[TableSpec, pl.DataFrame]], consumer: str, last_seq: int, first_seq: int = 0
    ) -> int:
        """Insert every frame and move ``consumer`` to ``last_seq``, atomically. Returns rows inserted."""
        self.ensure_tables([spec for spec, _ in frames])
        inserted = 0
        with self._lock:
            con = self.con
            _exec(con, "BEGIN TRANSACTION")
            try:
                for spec, df in frames:
                    if df.height:
                        inserted += _insert_new(con, spec, df)
                _exec(
                    con,
                    "INSERT INTO _bus_positions (consumer, stream_seq) VALUES (?, ?) "
                    "ON CONFLICT (consumer) DO UPDATE SET stream_seq = excluded.stream_seq, updated = now()",
                    [consumer, last_seq],
                )
                _exec(con, "COMMIT")
            except BaseException:
                _exec(con, "ROLLBACK")
                raise
        return inserted

    def count(self, table: str) -> int:
        with self._lock:
            rows = _exec(self.con, f'SELECT count(*) FROM "{table}"')
        return int(rows[0][0])

    def query(self, sql: str, params: Sequence[object] | None = None) -> pl.DataFrame:
        with self._lock:
            table = self.con.sql(sql, params=list(params) if params else None).to_arrow_table()
        return pl.DataFrame(pl.from_arrow(table))

    def tables(self) -> list[str]:
        with self._lock:
            rows = _exec(
                self.con,
                "SELECT table_name FROM information_schema.tables WHERE table_schema = 'main' AND table_catalog = "
                "current_database() AND table_name NOT LIKE '\\_%' ESCAPE '\\' ORDER BY 1",
            )
        return [r[0] for r in rows]


def _insert_new(con: duckdb.DuckDBPyConnection, spec: TableSpec, df: pl.DataFrame) -> int:
    batch = df.unique(subset=["key"], keep="first", maintain_order=True)
    lo, hi = df["ts"].min(), df["ts"].max()
    cols = ", ".join(f'"{n}"' for n in spec.names)
    con.register("_mp_batch", batch.to_arrow())
    try:
        rows = _exec(
            con,
            f'INSERT INTO "{spec.table}" ({cols}) SELECT {cols} FROM _mp_batch '
            f'WHERE key NOT IN (SELECT key FROM "{spec.table}" WHERE ts BETWEEN ? AND ?)',
            [lo, hi],
        )
    finally:
        con.unregister("_mp_batch")
    return int(rows[0][0])  # DuckDB answers an INSERT with the number of rows it inserted


def _exec(con: duckdb.DuckDBPyConnection, sql: str, params: Sequence[object] | None = None) -> list[tuple[Any, ...]]:
    # Every result is read to its end: DuckDB refuses new work on a connection with an unfinished result.
    return con.execute(sql, params or []).fetchall()
