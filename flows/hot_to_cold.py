"""Hot->cold migration as a scheduled Prefect flow (engine: ``marketprism.store.migrate``).

A DuckDB hot file belongs to one process (DuckDB locks it): while the storage writer runs, the flow asks the
writer over the control plane (``mp.control.storage_writer.migrate``) to migrate in its own process; when no
writer answers, the flow opens the file and migrates itself. A ClickHouse hot store (``storage.hot_backend``
``clickhouse``) serves concurrent clients: the flow migrates directly, on a client of its own, without asking
the writer.
"""

from __future__ import annotations

import asyncio
from typing import Any

from prefect import flow, get_run_logger
from prefect.artifacts import acreate_markdown_artifact

from flows.collector import load_config
from marketprism.bus.publisher import connect
from marketprism.control import request
from marketprism.store.migrate import migrate
from marketprism.store.writer import WRITER


@flow(name="hot-to-cold", log_prints=True)
async def hot_to_cold(
    nats_url: str | None = None,
    duckdb_path: str | None = None,
    parquet_root: str | None = None,
    retention_days: int | None = None,
) -> dict[str, Any]:
    """Move whole partitions older than the hot retention to Parquet, verified, then delete them from hot."""
    config = await load_config()
    storage = config.storage
    root = parquet_root or storage.parquet_path
    days = retention_days if retention_days is not None else storage.hot_retention_days
    logger = get_run_logger()
    summary: dict[str, Any] | None = None
    if storage.cold_backend != "parquet":
        raise RuntimeError("storage.cold_backend clickhouse (a ClickHouse cold database) is not built: use parquet")
    if storage.hot_backend == "clickhouse":
        if storage.clickhouse_url is None:
            raise RuntimeError("storage.hot_backend is clickhouse but storage.clickhouse_url is not set")
        url = storage.clickhouse_url.get_secret_value()
        summary = (await asyncio.to_thread(migrate, url, root, retention_days=days)).as_dict()
        logger.info("migrated from the ClickHouse hot store")
    servers = nats_url or config.nats.servers
    if servers and summary is None:
        try:
            nc = await connect(
                servers,
                name="marketprism-hot-to-cold",
                allow_reconnect=False,
                max_reconnect_attempts=1,
                connect_timeout=5,
            )
        except Exception as exc:  # no bus: nobody to ask, so the file is free
            logger.info("no NATS (%s): migrating directly", exc)
        else:
            try:
                reply = await request(nc, WRITER, "migrate", {"parquet_root": root, "retention_days": days},
                                      timeout_s=3600)  # fmt: skip
                if not reply.get("ok"):
                    raise RuntimeError(f"the storage writer could not migrate: {reply.get('error')}")
                summary = reply["summary"]
                logger.info("the running storage writer migrated in its process")
            except (TimeoutError, OSError) as exc:
                logger.info("no storage writer answered (%s): migrating directly", type(exc).__name__)
            except Exception as exc:
                if "NoResponders" not in type(exc).__name__:
                    raise
                logger.info("no storage writer running: migrating directly")
            finally:
                await nc.close()
    if summary is None:
        summary = migrate(duckdb_path or storage.duckdb_path, root, retention_days=days).as_dict()
    tables = "\n".join(f"| {t} | {n} |" for t, n in sorted(summary["tables"].items())) or "| (none) | 0 |"
    await acreate_markdown_artifact(
        key="hot-to-cold",
        markdown=(
            f"Cold root `{summary['cold_root']}`, dates before {summary['cutoff']}: {summary['partitions']} "
            f"partitions, {summary['rows_migrated']} rows migrated and verified, {summary['rows_deleted']} deleted "
            f"from hot, {summary['held_back']} held back, {summary['errors']} errors.\n\n"
            f"| table | rows migrated |\n|---|---:|\n{tables}"
        ),
    )
    if summary["errors"]:
        raise RuntimeError(f"hot->cold: {summary['errors']} partitions failed verification (left hot)")
    return summary
