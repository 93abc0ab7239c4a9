"""Queries answered by the running storage writer, for processes that cannot open the hot DuckDB file.

DuckDB lets one process open the file, and the writer holds it while it runs; so ``marketprism query`` and the
data-quality checkpoint send their SQL to the writer (``mp.control.storage_writer.query``), which runs it over hot +
cold and answers with the path of a Parquet file holding the result (a result can be larger than a NATS message).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import polars as pl


class WriterQueryError(RuntimeError):
    """The writer answered, but could not run the query (its reason is the message)."""


def writer_bus_url(nats: str | None, duckdb: str | None) -> str | None:
    """Where the running stack's bus is: ``nats``, else the configured servers, else the URL ``up`` left in
    ``<data dir>/nats/url`` next to the hot file; None when there is none."""
    from marketprism.config import ConfigError, resolve
    from marketprism.store.query import storage_defaults

    if nats:
        return nats
    try:
        servers = resolve()[0].nats.servers
    except ConfigError:
        servers = []
    if servers:
        return servers[0]
    left_by_up = Path(duckdb or storage_defaults()[0]).parent / "nats" / "url"
    return left_by_up.read_text().strip() if left_by_up.is_file() else None


async def query_through_writer(
    queries: Sequence[tuple[str, str]],
    parquet_root: str | Path | None,
    *,
    nats: str | None,
    duckdb: str | Path | None,
    name: str,
    timeout_s: float = 600.0,
) -> dict[str, pl.DataFrame] | None:
    """``{label: result}`` for every ``(label, sql)``, run by the writer; None when no writer answers (no bus, no
    responder, a timeout). Raises :class:`WriterQueryError` when the writer answers with an error."""
    from marketprism.bus.publisher import connect
    from marketprism.control import request
    from marketprism.store.writer import WRITER

    url = writer_bus_url(nats, str(duckdb) if duckdb is not None else None)
    if not url:
        return None
    try:
        nc = await connect(url, name=name, allow_reconnect=False, max_reconnect_attempts=1, connect_timeout=2)
    except Exception:
        return None
    root = str(parquet_root) if parquet_root is not None else None
    out: dict[str, pl.DataFrame] = {}
    try:
        for label, sql in queries:
            try:
                reply = await request(nc, WRITER, "query", {"sql": sql, "parquet_root": root}, timeout_s=timeout_s)
            except Exception:  # no responders, timeout: no writer here
                return None
            if not reply.get("ok"):
                raise WriterQueryError(str(reply.get("error")))
            try:
                out[label] = pl.read_parquet(reply["path"])
            finally:
                os.unlink(reply["path"])
    finally:
        await nc.close()
    return out
