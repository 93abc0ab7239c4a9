"""Scheduled REST pulls, run once: fetch the latest buckets of each pull for each symbol, publish the records.

The engine behind ``flows/pulls.py``. One ``RestClient`` per venue (its weight budget and circuit breaker are shared by
every pull of that venue); pulls of different venues run concurrently. Records go to JetStream with their natural
key as ``Nats-Msg-Id``, so a bucket fetched again (every run re-fetches ``lookback`` buckets) is stored once. A pull
that fails (venue errors after retries, an open circuit, an unparseable answer) is reported, never fatal to the
others; the next run re-fetches its buckets, so nothing is lost once the venue recovers.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from marketprism.bus.publisher import JetStreamPublisher
from marketprism.records import now_us
from marketprism.rest import RestClient
from marketprism.venues import PULLS, VENUES
from marketprism.venues.pull import PullContext, RestPull


@dataclass
class PullOutcome:
    pull: str
    symbol: str
    records: int = 0
    first_ts: int | None = None  # µs
    last_ts: int | None = None
    error: str = ""


@dataclass
class PullReport:
    outcomes: list[PullOutcome] = field(default_factory=list)
    submitted: int = 0
    rest: dict[str, dict[str, Any]] = field(default_factory=dict)  # venue -> client stats and circuit state
    seconds: float = 0.0

    @property
    def failed(self) -> list[PullOutcome]:
        return [o for o in self.outcomes if o.error]

    def markdown(self) -> str:
        lines = ["| pull | symbol | records | first bucket (UTC) | last bucket (UTC) | error |",
                 "|---|---|---:|---|---|---|"]  # fmt: skip
        for o in self.outcomes:
            first, last = _utc(o.first_ts), _utc(o.last_ts)
            lines.append(f"| {o.pull} | {o.symbol} | {o.records} | {first} | {last} | {o.error[:120]} |")
        lines.append("\n| venue | requests | statuses | retries | waited s | circuit | opened | rejected |")
        lines.append("|---|---:|---|---:|---:|---|---:|---:|")
        for venue, r in sorted(self.rest.items()):
            lines.append(f"| {venue} | {r['requests']} | {r['by_status']} | {r['retries']} | {r['waited_s']:.1f} | "
                         f"{r['circuit']} | {r['circuit_opened']} | {r['circuit_rejected']} |")  # fmt: skip
        lines.append(f"\n{self.submitted} records submitted to JetStream in {self.seconds:.1f}s; "
                     f"{len(self.failed)} pull(s) failed.")  # fmt: skip
        return "\n".join(lines)


def _utc(ts: int | None) -> str:
    return "" if ts is None else time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(ts / 1e6))


def select_pulls(names: Sequence[str] | None = None, venues: Sequence[str] | None = None) -> list[RestPull]:
    """Pulls by name (default: all), restricted to streaming ``venues`` plus the REST-only ones when given."""
    chosen = [PULLS[n] if n in PULLS else _unknown(n) for n in names] if names else list(PULLS.values())
    if venues is not None:
        chosen = [p for p in chosen if p.venue in venues or p.venue not in VENUES]
    return chosen


def _unknown(name: str) -> RestPull:
    raise ValueError(f"unknown REST pull {name!r}; known: {', '.join(PULLS)}")


def client_for(pull: RestPull, venue_base: str | None = None, **kwargs: Any) -> RestClient:
    return RestClient(pull.base_url(venue_base), pull.rest_limits, name=pull.venue, exchange=pull.exchange.value,
                      market=pull.market.value, **kwargs)  # fmt: skip


async def fetch(client: RestClient, pull: RestPull, symbol: str, period: str | None = None,
                attempts: int = 1, retry_wait_s: float = 0.0) -> list[Any]:  # fmt: skip
    """The records of one pull for one symbol (``attempts`` > 1: try again after ``retry_wait_s`` on failure)."""
    for attempt in range(attempts):
        try:
            path, params = pull.request(symbol, period)
            body = await client.get(path, params, pull.weight)
            ctx = PullContext(symbol, pull.to_instrument(symbol), pull.venue_period(period), now_us())
            return pull.parse(body, ctx)
        except Exception:
            if attempt + 1 >= attempts:
                raise
            await asyncio.sleep(retry_wait_s)
    return []  # pragma: no cover - attempts >= 1


async def run_pulls(
    pulls: Sequence[RestPull],
    publisher: JetStreamPublisher,
    symbols: Mapping[str, Sequence[str]] | None = None,
    period: str | None = None,
    rest_bases: Mapping[str, str] | None = None,
    clients: Mapping[str, RestClient] | None = None,
    attempts: int = 1,
    retry_wait_s: float = 0.0,
) -> PullReport:
    """Run every pull once for its venue's symbols (``symbols[venue]``, else the pull's defaults) and submit the
    records to ``publisher`` (the caller flushes). ``rest_bases``: venue -> base URL prefix (the simulator)."""
    t0 = time.monotonic()
    report = PullReport()
    own: dict[str, RestClient] = {}
    by_venue: dict[str, list[RestPull]] = {}
    for pull in pulls:
        by_venue.setdefault(pull.venue, []).append(pull)

    def client(pull: RestPull) -> RestClient:
        if clients and pull.venue in clients:
            return clients[pull.venue]
        if pull.venue not in own:
            own[pull.venue] = client_for(pull, (rest_bases or {}).get(pull.venue))
        return own[pull.venue]

    async def venue_pulls(venue_pulls: list[RestPull]) -> None:
        for pull in venue_pulls:
            wanted = list((symbols or {}).get(pull.venue) or pull.default_symbols)
            seen: set[str] = set()
            for symbol in wanted:
                instrument = pull.to_instrument(symbol)
                if instrument in seen:  # e.g. OKX's currency ratio: BTC-USDT and BTC-USD are both "BTC"
                    continue
                seen.add(instrument)
                outcome = PullOutcome(pull.name, symbol)
                report.outcomes.append(outcome)
                try:
                    records = await fetch(client(pull), pull, symbol, period, attempts, retry_wait_s)
                except Exception as exc:
                    outcome.error = f"{type(exc).__name__}: {exc}"
                    continue
                for record in records:
                    publisher.submit(record)
                outcome.records = len(records)
                report.submitted += len(records)
                if records:
                    outcome.first_ts = min(r.ts for r in records)
                    outcome.last_ts = max(r.ts for r in records)

    try:
        await asyncio.gather(*(venue_pulls(v) for v in by_venue.values()))
    finally:
        for venue in by_venue:
            c = (clients or {}).get(venue) or own.get(venue)
            if c is not None:
                s = c.stats
                report.rest[venue] = {
                    "requests": s.requests, "by_status": dict(s.by_status), "retries": s.retries,
                    "waited_s": s.waited_s, "circuit": c.circuit.state, "circuit_opened": s.circuit_opened,
                    "circuit_closed": s.circuit_closed, "circuit_rejected": s.circuit_rejected,
                }  # fmt: skip
        for c in own.values():
            await c.close()
    report.seconds = time.monotonic() - t0
    return report
