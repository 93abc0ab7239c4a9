"""Market data storage: the hot store, hot -> cold migration, and one query surface over both."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from marketprism.store.query import read as read

__all__ = ["read"]


def __getattr__(name: str) -> Any:
    # Lazy: ``import marketprism.store.writer`` must not pay for the query surface's imports.
    if name == "read":
        from marketprism.store.query import read

        return read
    raise AttributeError(f"module 'marketprism.store' has no attribute {name!r}")
