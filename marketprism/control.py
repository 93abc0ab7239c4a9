"""Control plane over NATS request/reply: ``mp.control.<venue>.<verb>``.

Every process that runs a collector answers for its venue:

``status``   reply: the collector's counters and symbols (JSON)
``symbols``  request ``{"symbols": [...], "data_types": [...]?}``: hot reload, reply: the symbols now collected
``resubscribe`` request ``{"symbols": [...]}``: unsubscribe + subscribe those symbols (OKX/Bybit send a fresh
             book snapshot: the order-book processor's per-symbol resync), reply ``{"resubscribed": [...]}``
``stop``     reply ``{"ok": true}``, then that collector stops; a run ends when all its collectors have
             stopped, flushing what it holds

Requests carry JSON; replies are JSON objects, with ``error`` set when a request was refused.
"""

from __future__ import annotations

import asyncio
import logging
import os
from dataclasses import asdict
from typing import Any

import orjson
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription

from marketprism.records import DataType
from marketprism.stream.collector import Collector

log = logging.getLogger(__name__)

PREFIX = "mp.control"


def control_subject(venue: str, verb: str) -> str:
    return f"{PREFIX}.{venue}.{verb}"


class CollectorControl:
    """Answers control requests for the collectors running in this process."""

    def __init__(self, nc: NATS, collectors: list[Collector]):
        self.nc = nc
        self.collectors = {c.venue.name: c for c in collectors}
        self._subs: list[Subscription] = []
        self._pending: set[asyncio.Task[None]] = set()

    async def start(self) -> CollectorControl:
        for venue in self.collectors:
            verbs = (("status", self._status), ("symbols", self._symbols), ("resubscribe", self._resubscribe),
                     ("stop", self._stop))  # fmt: skip
            for verb, handler in verbs:
                self._subs.append(await self.nc.subscribe(control_subject(venue, verb), cb=handler))
        return self

    async def close(self) -> None:
        for sub in self._subs:
            await sub.unsubscribe()
        self._subs.clear()

    def _collector(self, msg: Msg) -> Collector:
        return self.collectors[msg.subject.split(".")[2]]

    async def _reply(self, msg: Msg, body: dict[str, Any]) -> None:
        if msg.reply:
            await msg.respond(orjson.dumps(body))

    async def _status(self, msg: Msg) -> None:
        collector = self._collector(msg)
        current = collector.stats
        stats = asdict(current)
        # asdict() turns a Counter into a Counter of pairs; StrEnum keys would not serialise either
        stats["records_by_type"] = {str(k): v for k, v in current.records_by_type.items()}
        await self._reply(msg, {**stats, "symbols": collector.symbols, "pid": os.getpid()})

    async def _symbols(self, msg: Msg) -> None:
        collector = self._collector(msg)
        try:
            body = orjson.loads(msg.data)
            types = [DataType(t) for t in body["data_types"]] if body.get("data_types") else None
            await collector.set_symbols(list(body["symbols"]), types)
        except (ValueError, KeyError, TypeError) as exc:  # orjson.JSONDecodeError is a ValueError
            log.warning("control: refused symbols request for %s: %s", collector.venue.name, exc)
            await self._reply(msg, {"error": f"{type(exc).__name__}: {exc}"})
            return
        log.info("control: %s now collects %s", collector.venue.name, ", ".join(collector.symbols))
        await self._reply(msg, {"symbols": collector.symbols})

    async def _resubscribe(self, msg: Msg) -> None:
        collector = self._collector(msg)
        try:
            symbols = list(orjson.loads(msg.data)["symbols"])
        except (ValueError, KeyError, TypeError) as exc:
            await self._reply(msg, {"error": f"{type(exc).__name__}: {exc}"})
            return
        done = await collector.resubscribe(symbols)
        log.info("control: %s resubscribed %s", collector.venue.name, ", ".join(done) or "nothing")
        await self._reply(msg, {"resubscribed": done})

    async def _stop(self, msg: Msg) -> None:
        collector = self._collector(msg)
        await self._reply(msg, {"ok": True})
        log.info("control: stop requested for %s", collector.venue.name)
        collector.stop()


async def request(nc: NATS, venue: str, verb: str, body: dict[str, Any] | None = None, timeout_s: float = 2.0) -> Any:
    """Send one control request and decode the reply (raises ``TimeoutError``/``NoRespondersError``)."""
    msg = await nc.request(control_subject(venue, verb), orjson.dumps(body or {}), timeout=timeout_s)
    return orjson.loads(msg.data)
