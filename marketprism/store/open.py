"""Open the configured hot store."""

from __future__ import annotations

from marketprism.store.duck import DuckDBStore
from marketprism.store.writer import HotStore


def open_hot_store(
    backend: str, *, duckdb_path: str = "data/hot.duckdb", clickhouse_url: str | None = None
) -> HotStore:
    if backend == "duckdb":
        return DuckDBStore(duckdb_path)
    if backend == "clickhouse":
        if not clickhouse_url:
            raise ValueError("backend clickhouse needs a ClickHouse URL (storage.clickhouse_url)")
        from marketprism.store.clickhouse import ClickHouseStore

        return ClickHouseStore(clickhouse_url)
    raise ValueError(f"unknown hot store backend {backend!r}: use duckdb or clickhouse")
