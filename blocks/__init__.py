"""Prefect Blocks: the typed config store for venues, NATS, storage and quality (see ``blocks.platform``)."""

from blocks.platform import (
    NatsBlock,
    QualityBlock,
    StorageBlock,
    VenueBlock,
    aload_block_values,
    aload_platform_config,
    api_problem,
    block_documents,
    blocks_for,
    existing_blocks,
    import_yaml,
    load_block_values,
    load_platform_config,
    save_defaults,
    venue_block_name,
)

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
