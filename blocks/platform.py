"""Prefect Blocks as the platform's config store: one block per venue, plus NATS, storage and quality.

Each block subclasses its engine model from ``marketprism.config``, so a block has exactly the engine's
fields, defaults and validators (and the same error messages). The engine never imports this module.

Block documents: ``venue-<venue with - for _>`` (e.g. ``venue-binance-spot``), ``nats``, ``storage``,
``quality``. :func:`load_platform_config` reads the documents that exist and applies ``MARKETPRISM_...``
environment variables over them (:func:`marketprism.config.resolve`); absent documents fall back to the
defaults.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any, ClassVar

from prefect.blocks.core import Block
from prefect.client.orchestration import get_client
from prefect.exceptions import ObjectNotFound
from pydantic import BaseModel

from marketprism.config import (
    NatsConfig,
    PlatformConfig,
    QualityConfig,
    StorageConfig,
    VenueConfig,
    resolve,
    yaml_values,
)
from marketprism.venues import VENUES


def _values(block: BaseModel, model: type[BaseModel]) -> dict[str, Any]:
    return {name: getattr(block, name) for name in model.model_fields}


class VenueBlock(Block, VenueConfig):
    """A streaming venue: symbols, data types, URLs, book depth and interval, connection limits."""

    _block_type_name: ClassVar[str | None] = "MarketPrism Venue"
    _block_type_slug: ClassVar[str | None] = "marketprism-venue"
    _description: ClassVar[str | None] = "What one MarketPrism collector streams from a venue, and how."

    def to_config(self) -> VenueConfig:
        return VenueConfig.model_validate(_values(self, VenueConfig))


class NatsBlock(Block, NatsConfig):
    """The bus: NATS servers, credentials (secret) and the market-data stream's limits."""

    _block_type_name: ClassVar[str | None] = "MarketPrism NATS"
    _block_type_slug: ClassVar[str | None] = "marketprism-nats"
    _description: ClassVar[str | None] = "NATS servers, credentials and JetStream limits for MarketPrism."

    def to_config(self) -> NatsConfig:
        return NatsConfig.model_validate(_values(self, NatsConfig))


class StorageBlock(Block, StorageConfig):
    """Hot and cold stores: backends, paths and DSNs (secret), retention, batching."""

    _block_type_name: ClassVar[str | None] = "MarketPrism Storage"
    _block_type_slug: ClassVar[str | None] = "marketprism-storage"
    _description: ClassVar[str | None] = "MarketPrism hot/cold storage backends, paths, retention and batching."

    def to_config(self) -> StorageConfig:
        return StorageConfig.model_validate(_values(self, StorageConfig))


class QualityBlock(Block, QualityConfig):
    """Data-quality checks: schedule, window, freshness thresholds, Data Docs location."""

    _block_type_name: ClassVar[str | None] = "MarketPrism Quality"
    _block_type_slug: ClassVar[str | None] = "marketprism-quality"
    _description: ClassVar[str | None] = "MarketPrism data-quality schedule and thresholds."

    def to_config(self) -> QualityConfig:
        return QualityConfig.model_validate(_values(self, QualityConfig))


SECTION_BLOCKS: dict[str, type[Block]] = {"nats": NatsBlock, "storage": StorageBlock, "quality": QualityBlock}
ENGINE_MODELS: dict[type[Block], type[BaseModel]] = {
    VenueBlock: VenueConfig, NatsBlock: NatsConfig, StorageBlock: StorageConfig, QualityBlock: QualityConfig,
}  # fmt: skip


def venue_block_name(venue: str) -> str:
    """``binance_spot`` -> ``venue-binance-spot``."""
    return "venue-" + venue.replace("_", "-")


def block_documents() -> list[tuple[str, type[Block], str, str | None]]:
    """Every block document the platform reads: ``(document name, block class, section, venue)``."""
    out: list[tuple[str, type[Block], str, str | None]] = [
        (venue_block_name(v), VenueBlock, "venues", v) for v in VENUES
    ]
    out.extend((section, cls, section, None) for section, cls in SECTION_BLOCKS.items())
    return out


def _to_values(found: Mapping[tuple[str, str | None], dict[str, Any]]) -> dict[str, Any]:
    values: dict[str, Any] = {}
    for (section, venue), data in found.items():
        if section == "venues":
            values.setdefault("venues", {})[venue] = {**data, "venue": data.get("venue", venue)}
        else:
            values[section] = data
    return values


def _known(cls: type[Block], data: Mapping[str, Any]) -> dict[str, Any]:
    fields = ENGINE_MODELS[cls].model_fields
    return {k: v for k, v in data.items() if k in fields}


def load_block_values() -> dict[str, Any]:
    """The stored values of every platform block that exists, as ``resolve()`` values (secrets revealed)."""
    found: dict[tuple[str, str | None], dict[str, Any]] = {}
    with get_client(sync_client=True) as client:
        for name, cls, section, venue in block_documents():
            try:
                doc = client.read_block_document_by_name(name, cls.get_block_type_slug(), include_secrets=True)
            except ObjectNotFound:
                continue
            found[(section, venue)] = _known(cls, doc.data)
    return _to_values(found)


async def aload_block_values() -> dict[str, Any]:
    """:func:`load_block_values` for async callers (flows)."""
    found: dict[tuple[str, str | None], dict[str, Any]] = {}
    async with get_client() as client:
        for name, cls, section, venue in block_documents():
            try:
                doc = await client.read_block_document_by_name(name, cls.get_block_type_slug(), include_secrets=True)
            except ObjectNotFound:
                continue
            found[(section, venue)] = _known(cls, doc.data)
    return _to_values(found)


def load_platform_config(env: Mapping[str, str] | None = None) -> tuple[PlatformConfig, dict[str, str]]:
    """Blocks that exist, then ``env`` (default ``os.environ``) over them. Returns (config, source per leaf)."""
    return resolve(load_block_values(), os.environ if env is None else env)


async def aload_platform_config(env: Mapping[str, str] | None = None) -> tuple[PlatformConfig, dict[str, str]]:
    return resolve(await aload_block_values(), os.environ if env is None else env)


def blocks_for(config: PlatformConfig, values: Mapping[str, Any] | None = None) -> dict[str, Block]:
    """Block objects for ``config``: every section, or only those named in ``values`` (a file's sections)."""
    out: dict[str, Block] = {}
    for name, venue in config.venues.items():
        if values is None or name in (values.get("venues") or {}):
            out[venue_block_name(name)] = VenueBlock.model_validate(_values(venue, VenueConfig))
    for section, cls in SECTION_BLOCKS.items():
        if values is None or section in values:
            model = getattr(config, section)
            out[section] = cls.model_validate(_values(model, type(model)))
    return out


def save_blocks(blocks: Mapping[str, Block], overwrite: bool = True) -> list[str]:
    for name, block in blocks.items():
        block.save(name, overwrite=overwrite, _sync=True)  # type: ignore[call-arg]
    return list(blocks)


def existing_blocks() -> set[str]:
    """Names of the platform's block documents that exist."""
    with get_client(sync_client=True) as client:
        out: set[str] = set()
        for name, cls, _, _ in block_documents():
            try:
                client.read_block_document_by_name(name, cls.get_block_type_slug(), include_secrets=False)
            except ObjectNotFound:
                continue
            out.add(name)
        return out


def save_defaults(overwrite: bool = False) -> list[str]:
    """Create the default blocks that do not exist yet (all of them with ``overwrite``). Returns names written."""
    wanted = blocks_for(PlatformConfig())
    if not overwrite:
        present = existing_blocks()
        wanted = {name: block for name, block in wanted.items() if name not in present}
    return save_blocks(wanted)


def import_yaml(path: str | Path) -> list[str]:
    """Write blocks from a config YAML file (this project's format, see ``marketprism config migrate``).

    Every section in the file is validated (over the defaults, without the environment) before any block
    is written; a bad file raises ``ConfigError`` naming the field and writes nothing. Only the sections
    and venues present in the file are written. Returns the block document names written.
    """
    path = Path(path)
    values = yaml_values(path.read_text(encoding="utf-8"), source=str(path))
    config, _ = resolve(values, env={})
    return save_blocks(blocks_for(config, values))


def api_problem() -> str | None:
    """None when a Prefect API is configured and answers; otherwise why not (for a notice)."""
    from prefect.settings import get_current_settings

    url = get_current_settings().api.url
    if not url:
        return "PREFECT_API_URL is not set"
    with get_client(sync_client=True) as client:
        error = client.api_healthcheck()
    return None if error is None else f"the Prefect API at {url} is not reachable ({type(error).__name__}: {error})"


__all__ = [
    "NatsBlock",
    "QualityBlock",
    "StorageBlock",
    "VenueBlock",
    "aload_block_values",
    "aload_platform_config",
    "api_problem",
    "block_documents",
    "blocks_for",
    "existing_blocks",
    "import_yaml",
    "load_block_values",
    "load_platform_config",
    "save_defaults",
    "venue_block_name",
]
