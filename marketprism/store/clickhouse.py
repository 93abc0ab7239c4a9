"""The hot store in ClickHouse (through clickhouse-connect), for users who outgrow one machine.

ClickHouse has no transaction spanning the rows and the bus position, so exactly once is built from two of
its guarantees instead:

* **Write-ahead batch marks.** Before inserting a batch the store records ``(consumer, first_seq, last_seq,
  committed=0)``; after every table's insert it records ``committed=1``. After a crash, ``resume`` reports a
  batch that was marked but not committed, and the writer re-forms exactly that batch (the same stream
  messages ``first_seq..last_seq``, so the same rows) before anything else.
* **Insert deduplication tokens.** Each table's insert of a batch carries the token
  ``<consumer>:<first_seq>:<last_seq>:<table>``; the tables keep the recent tokens
  (``non_replicated_deduplication_window``), so re-inserting a batch that did reach ClickHouse before the
  crash is dropped by the server, and one that did not is inserted.

Records replayed onto the bus outside its duplicate window (new stream sequence, same natural key) land in
a ``ReplacingMergeTree`` ordered by ``(exchange, market, symbol, ts, key)``: they collapse at merge time, and
reads with ``FINAL`` (what the query surface uses) are exact before that.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from typing import Any
from urllib.parse import unquote, urlsplit

import clickhouse_connect
import polars as pl

from marketprism.store.schema import TableSpec, all_specs

POSITIONS_TABLE = "_bus_batches"


class ClickHouseStore:
    backend = "clickhouse"

    def __init__(self, url: str, *, database: str | None = None):
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https", "clickhouse") or not parts.hostname:
            raise ValueError(f"ClickHouse URL must be http(s)://[user:password@]host:port[/database], got {url!r}")
        self.database = database or (parts.path.strip("/") or "marketprism")
        self._connect: dict[str, Any] = {
            "host": parts.hostname,
            "port": parts.port or (8443 if parts.scheme == "https" else 8123),
            "username": unquote(parts.username or "default"),
            "password": unquote(parts.password or ""),
            "secure": parts.scheme == "https",
        }
        admin = clickhouse_connect.get_client(**self._connect)
        admin.command(f"CREATE DATABASE IF NOT EXISTS `{self.database}`")
        admin.close()
        self.client = clickhouse_connect.get_client(**self._connect, database=self.database)
        self._lock = threading.Lock()
        self._tables: set[str] = set()
        self.client.command(
            f"CREATE TABLE IF NOT EXISTS `{POSITIONS_TABLE}` (consumer String, first_seq UInt64, last_seq UInt64, "
            "committed UInt8, at DateTime64(6) DEFAULT now64(6)) ENGINE = MergeTree ORDER BY (consumer, last_seq)"
        )

    def close(self) -> None:
        self.client.close()

    def new_client(self) -> Any:
        """A client of its own on the same server and database (one client runs one query at a time): the query
        surface and the migration use one, so they never wait on, or interleave with, the writer's inserts."""
        # No HTTP session: nothing here needs one, and a session refuses a query while another is still streaming.
        return clickhouse_connect.get_client(**self._connect, database=self.database, autogenerate_session_id=False)

    def __enter__(self) -> ClickHouseStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def ensure_tables(self, specs: Sequence[TableSpec] | None = None) -> None:
        with self._lock:
            for spec in specs or all_specs():
                if spec.table not in self._tables:
                    self.client.command(spec.clickhouse_ddl(self.database))
                    self._tables.add(spec.table)

    def _last_mark(self, consumer: str) -> tuple[int, int, int] | None:
        rows = self.client.query(
            f"SELECT first_seq, last_seq, committed FROM `{POSITIONS_TABLE}` WHERE consumer = %(c)s "
            "ORDER BY last_seq DESC, committed DESC LIMIT 1",
            parameters={"c": consumer},
        ).result_rows
        return (int(rows[0][0]), int(rows[0][1]), int(rows[0][2])) if rows else None

    def position(self, consumer: str) -> int:
        return self.resume(consumer)[0]

    def resume(self, consumer: str) -> tuple[int, int | None]:
        """(position to resume after, last_seq of a batch to re-form first or None)."""
        with self._lock:
            mark = self._last_mark(consumer)
        if mark is None:
            return 0, None
        first, last, committed = mark
        return (last, None) if committed else (first - 1, last)

    def commit(
        self, frames: Sequence[tuple[TableSpec, pl.DataFrame]], consumer: str, last_seq: int, first_seq: int = 0
    ) -> int:
        self.ensure_tables([spec for spec, _ in frames])
        inserted = 0
        with self._lock:
            self._mark(consumer, first_seq, last_seq, committed=0)
            for spec, df in frames:
                if not df.height:
                    continue
                token = f"{consumer}:{first_seq}:{last_seq}:{spec.table}"
                table = df.unique(subset=["key"], keep="first", maintain_order=True).to_arrow()
                summary = self.client.insert_arrow(
                    spec.table, table, settings={"insert_deduplication_token": token, "insert_deduplicate": 1}
                )
                inserted += int(getattr(summary, "written_rows", table.num_rows) or 0)
            self._mark(consumer, first_seq, last_seq, committed=1)
        return inserted

    def _mark(self, consumer: str, first_seq: int, last_seq: int, *, committed: int) -> None:
        self.client.insert(
            POSITIONS_TABLE,
            [[consumer, first_seq, last_seq, committed]],
            column_names=["consumer", "first_seq", "last_seq", "committed"],
        )

    def count(self, table: str) -> int:
        with self._lock:
            return int(self.client.command(f"SELECT count() FROM `{table}` FINAL"))  # type: ignore[arg-type]

    def query(self, sql: str, params: dict[str, Any] | None = None) -> pl.DataFrame:
        with self._lock:
            table = self.client.query_arrow(sql, parameters=params or {})
        return pl.DataFrame(pl.from_arrow(table))

    def tables(self) -> list[str]:
        with self._lock:
            rows = self.client.query(
                "SELECT name FROM system.tables WHERE database = %(d)s AND NOT startsWith(name, '_') ORDER BY name",
                parameters={"d": self.database},
            ).result_rows
        return [r[0] for r in rows]


def reader_client(url: str, *, database: str | None = None) -> tuple[Any, str]:
    """(a clickhouse-connect client, database) for ``url``, for readers: unlike :class:`ClickHouseStore` it creates
    nothing (no database, no bookkeeping table). The URL has the store's shape."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https", "clickhouse") or not parts.hostname:
        raise ValueError(f"ClickHouse URL must be http(s)://[user:password@]host:port[/database], got {url!r}")
    db = database or (parts.path.strip("/") or "marketprism")
    client = clickhouse_connect.get_client(
        host=parts.hostname,
        port=parts.port or (8443 if parts.scheme == "https" else 8123),
        username=unquote(parts.username or "default"),
        password=unquote(parts.password or ""),
        secure=parts.scheme == "https",
        autogenerate_session_id=False,
    )
    return client, db
