"""REST requests that never get the IP banned: weight budgets, Retry-After, 418, capped backoff, counted.

One ``RestClient`` per venue and host. Before each request it takes the request's weight from a budget that
never lets more than the venue's per-minute limit (kept below the documented maximum) through in any 60 s
window, so a storm of order-book resyncs is spread out instead of bursting. A 429 or 418 answer stops *every*
request to that venue until the time the venue gave (``Retry-After``; a 418 without one waits the longest
backoff), other errors and timeouts back off exponentially with a cap. Every request, answer status, wait and
retry is counted.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections import Counter, deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import orjson

from marketprism.venues.base import RestLimits

log = logging.getLogger(__name__)


class RestError(RuntimeError):
    """A request that failed for good (after retries, or with an answer that retrying cannot fix)."""

    def __init__(self, url: str, status: int | None, reason: str):
        super().__init__(f"GET {url}: {status or ''} {reason}".replace("  ", " "))
        self.status = status


@dataclass
class RestStats:
    requests: int = 0
    weight_used: int = 0
    by_status: Counter[int] = field(default_factory=Counter)
    rate_limited: int = 0  # 429 answers
    banned: int = 0  # 418 answers
    retries: int = 0
    failures: int = 0
    waited_s: float = 0.0  # time spent waiting for budget or a ban to end


class WeightBudget:
    """Request weight over a sliding 60 s window, never above ``per_minute`` in any window.

    A token bucket that starts full and refills continuously lets up to twice its size through in one
    minute; venues count weight per minute, so the budget keeps the log of what it spent instead.
    """

    WINDOW_S = 60.0

    def __init__(self, per_minute: int, clock: Callable[[], float] = time.monotonic):
        self.capacity = per_minute
        self.clock = clock
        self.spent: deque[tuple[float, int]] = deque()  # (when, weight), oldest first
        self.in_window = 0

    def delay_for(self, weight: int) -> float:
        """Take ``weight`` now if the last minute allows it (returns 0), else say how long until it will."""
        now = self.clock()
        while self.spent and self.spent[0][0] <= now - self.WINDOW_S:
            self.in_window -= self.spent.popleft()[1]
        if self.in_window + weight <= self.capacity:
            self.spent.append((now, weight))
            self.in_window += weight
            return 0.0
        # Wait until enough of the oldest spending leaves the window.
        need = self.in_window + weight - self.capacity
        for when, w in self.spent:
            need -= w
            if need <= 0:
                return max(1e-3, when + self.WINDOW_S - now)
        return self.WINDOW_S  # heavier than the whole budget: the caller's weight is misconfigured


class RestClient:
    def __init__(self, base_url: str, limits: RestLimits, *, name: str = "", rng: random.Random | None = None):
        self.base_url = base_url.rstrip("/")
        self.limits = limits
        self.name = name or base_url
        self.stats = RestStats()
        self._budget = WeightBudget(limits.weight_per_minute)
        self._gate = asyncio.Semaphore(limits.max_concurrent)
        self._paused_until = 0.0  # set by 429/418: no request to this venue before then
        self._rng = rng or random.Random()
        self._session: aiohttp.ClientSession | None = None

    async def __aenter__(self) -> RestClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    def _http(self) -> aiohttp.ClientSession:
        if self._session is None:
            self._session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=self.limits.timeout_s))
        return self._session

    async def _wait_turn(self, weight: int) -> None:
        while True:
            pause = self._paused_until - time.monotonic()
            delay = max(pause, 0.0) or self._budget.delay_for(weight)
            if delay <= 0:
                return
            self.stats.waited_s += delay
            await asyncio.sleep(delay)

    def _backoff(self, attempt: int) -> float:
        cap = min(self.limits.backoff_max_s, self.limits.backoff_initial_s * 2**attempt)
        return self._rng.uniform(cap / 2, cap)  # jitter, but never hammer: at least half the step

    async def get_json(self, path: str, params: dict[str, Any] | None = None, weight: int = 1) -> Any:
        """GET ``path`` and decode its JSON body, within the budget and retrying what can be retried."""
        body = await self.get(path, params, weight)
        try:
            return orjson.loads(body)
        except orjson.JSONDecodeError:
            self.stats.failures += 1
            raise RestError(self.base_url + path, 200, f"body is not JSON: {body[:120]!r}") from None

    async def get(self, path: str, params: dict[str, Any] | None = None, weight: int = 1) -> bytes:
        """GET ``path``: the body of a 2xx answer exactly as received, within the budget and retrying what can be
        retried."""
        url = self.base_url + path
        last = ""
        for attempt in range(self.limits.max_attempts):
            await self._wait_turn(weight)
            async with self._gate:
                self.stats.requests += 1
                self.stats.weight_used += weight
                try:
                    async with self._http().get(url, params=params) as resp:
                        body = await resp.read()
                        status = resp.status
                        retry_after = resp.headers.get("Retry-After")
                except (aiohttp.ClientError, TimeoutError) as exc:
                    status, body, retry_after = 0, b"", None
                    last = f"{type(exc).__name__}: {exc}"
            self.stats.by_status[status] += 1
            if 200 <= status < 300:
                return body
            if status in (429, 418):
                self._pause(status, retry_after)
            elif status and status < 500:  # 4xx other than rate limits: retrying cannot help
                self.stats.failures += 1
                raise RestError(url, status, body[:200].decode("utf-8", "replace"))
            else:
                last = last if status == 0 else f"HTTP {status}"
                delay = self._backoff(attempt)
                log.warning("%s: %s on %s, retrying in %.1fs", self.name, last, path, delay)
                self.stats.waited_s += delay
                await asyncio.sleep(delay)
            self.stats.retries += 1
        self.stats.failures += 1
        raise RestError(url, None, f"gave up after {self.limits.max_attempts} attempts ({last or 'rate limited'})")

    def _pause(self, status: int, retry_after: str | None) -> None:
        """Stop every request to this venue for as long as it asked (418 = banned: longest backoff if unsaid)."""
        if status == 429:
            self.stats.rate_limited += 1
        else:
            self.stats.banned += 1
        try:
            wait = float(retry_after) if retry_after is not None else None
        except ValueError:
            wait = None
        if wait is None:
            wait = self.limits.backoff_max_s if status == 418 else self.limits.backoff_initial_s * 4
        self._paused_until = max(self._paused_until, time.monotonic() + wait)
        log.warning("%s: HTTP %d, pausing every request for %.1fs", self.name, status, wait)
