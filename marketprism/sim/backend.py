"""What feeds a venue's connections: the synthetic market or a replay. Both answer REST reads too."""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Any

from marketprism.sim.book import InstrumentSpec
from marketprism.sim.connection import Connection
from marketprism.sim.frames import BookSnapshot, Frame, StreamKey, Sub
from marketprism.sim.protocol import RestKey


class VenueBackend(ABC):
    @abstractmethod
    def on_subscribe(self, conn: Connection, key: StreamKey, sub: Sub) -> None: ...

    @abstractmethod
    def on_unsubscribe(self, conn: Connection, key: StreamKey, sub: Sub) -> None: ...

    def on_close(self, conn: Connection) -> None:
        for key, subs in list(conn.subs.items()):
            for sub in list(subs):
                self.on_unsubscribe(conn, key, sub)

    @abstractmethod
    def known(self, instrument: str) -> bool: ...

    # --- REST reads (MarketBackend) ------------------------------------------------------------------

    def rest_book(self, instrument: str, limit: int) -> BookSnapshot | None:
        return None

    def recorded_rest(self, key: RestKey) -> str | None:
        return None

    @abstractmethod
    def specs(self) -> list[tuple[str, InstrumentSpec]]: ...

    def instrument_ids(self) -> list[str]:
        """Every instrument this venue serves (streams subscribed by instrument type cover them all)."""
        return [name for name, _ in self.specs()]

    # --- delivery bookkeeping ------------------------------------------------------------------------

    def is_resent(self, frame: Frame) -> bool:
        return False

    def on_sent(self, frame: Frame) -> None:
        return None

    def book_at(self, instrument: str, seq: int | None) -> dict[str, Any] | None:
        """Ground-truth book at ``seq`` (None: now), or None when unknown."""
        return None

    def tick(self, dt: float, now_ms: int) -> None:
        """Called every generation tick (synthetic mode)."""
        return None

    async def aclose(self) -> None:
        return None
