"""JetStream stream for market data: created or updated idempotently from configuration."""

from __future__ import annotations

import logging
from dataclasses import dataclass

from nats.js import JetStreamContext
from nats.js.api import DiscardPolicy, RetentionPolicy, StorageType, StreamConfig
from nats.js.errors import NotFoundError

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class MarketDataStream:
    """Limits-retention, file-backed stream over ``md.>``. Sizes in bytes, durations in seconds."""

    name: str = "MARKET_DATA"
    subjects: tuple[str, ...] = ("md.>",)
    max_age_s: float = 7 * 24 * 3600.0
    max_bytes: int = 20 * 1024**3
    duplicate_window_s: float = 120.0
    replicas: int = 1

    def __post_init__(self) -> None:
        if self.max_age_s <= 0:
            raise ValueError(f"stream max_age_s must be > 0, got {self.max_age_s}")
        if self.max_bytes <= 0 and self.max_bytes != -1:
            raise ValueError(f"stream max_bytes must be > 0 (or -1 for unlimited), got {self.max_bytes}")
        if not 0 < self.duplicate_window_s <= self.max_age_s:
            raise ValueError(f"stream duplicate_window_s must be in (0, max_age_s], got {self.duplicate_window_s}")

    def config(self) -> StreamConfig:
        return StreamConfig(
            name=self.name,
            subjects=list(self.subjects),
            retention=RetentionPolicy.LIMITS,
            storage=StorageType.FILE,
            discard=DiscardPolicy.OLD,
            max_age=self.max_age_s,
            max_bytes=self.max_bytes,
            duplicate_window=self.duplicate_window_s,
            num_replicas=self.replicas,
        )


def _differs(current: StreamConfig, wanted: StreamConfig) -> list[str]:
    fields = ("subjects", "max_age", "max_bytes", "duplicate_window", "storage", "retention")
    return [f for f in fields if getattr(current, f) != getattr(wanted, f)]


async def ensure_stream(js: JetStreamContext, spec: MarketDataStream) -> str:
    """Create the stream, or update it when its config differs. Returns "created", "updated" or "unchanged"."""
    wanted = spec.config()
    try:
        info = await js.stream_info(spec.name)
    except NotFoundError:
        await js.add_stream(wanted)
        log.info("created JetStream stream %s on %s", spec.name, ",".join(spec.subjects))
        return "created"
    changed = _differs(info.config, wanted)
    if not changed:
        return "unchanged"
    await js.update_stream(wanted)
    log.info("updated JetStream stream %s (%s)", spec.name, ", ".join(changed))
    return "updated"
