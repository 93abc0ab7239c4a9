"""REST requests that never get the IP banned: weight budgets, Retry-After, 418, capped backoff, counted.

One ``RestClient`` per venue and host. Before each request it takes the request's weight from a budget that
never lets more than the venue's per-minute limit (kept below the documented maximum) through in any 60 s
window, so a storm of order-book resyncs is spread out instead of bursting. A 429 or 418 answer stops *every*
request to that venue until the time the venue gave (``Retry-After``; a 418 without one waits the longest
backoff), other errors and timeouts back off exponentially with a cap. Every request, answer status, wait and
retry is counted.

A circuit breaker per client stops hammering a venue that keeps failing: after ``threshold`` consecutive failed
attempts (5xx, timeouts, connection errors, 429/418) it opens and every call is refused at once (``CircuitOpenError``,
no request sent) for ``cooldown_s``; then it is half-open and lets exactly one trial request through: a success
closes it, a failure opens it again for another cool-down. A 4xx answer other than 429/418 is the request's fault,
not the venue's, and counts as the venue answering. Its state is ``RestClient.circuit.state``, counted in
``RestStats`` and exported as ``marketprism_rest_open_circuits`` (1 while open or half-open).
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

from marketprism import metrics
from marketprism.venues.base import RestLimits

log = logging.getLogger(__name__)


class RestError(RuntimeError):
    """A request that failed for good (after retries, or with an answer that retrying cannot fix)."""

    def __init__(self, url: str, status: int | None, reason: str):
        super().__init__(f"GET {url}: {status or ''} {reason}".replace("  ", " "))
        self.status = status


class CircuitOpenError(RestError):
    """Refused without a request: the venue's circuit is open (it failed repeatedly and is cooling down)."""

    def __init__(self, url: str, retry_in_s: float):
        super().__init__(url, None, f"circuit open, next trial in {retry_in_s:.1f}s")
        self.retry_in_s = retry_in_s


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
    circuit_opened: int = 0  # closed/half-open -> open
    circuit_closed: int = 0  # half-open -> closed (recovered)
    circuit_trials: int = 0  # trial requests let through while half-open
    circuit_rejected: int = 0  # calls refused while open


CLOSED, OPEN, HALF_OPEN = "closed", "open", "half_open"


class CircuitBreaker:
    """Opens after ``threshold`` consecutive failures; half-open (one trial) after ``cooldown_s``; closes on success.

    ``stats`` (a ``RestStats``) counts the transitions; ``on_change(state)`` is called on each one.
    """

    def __init__(self, threshold: int = 10, cooldown_s: float = 15.0, *, stats: RestStats | None = None,
                 clock: Callable[[], float] = time.monotonic,
                 on_change: Callable[[str], None] = lambda state: None):  # fmt: skip
        if threshold < 1 or cooldown_s < 0:
            raise ValueError("CircuitBreaker: threshold must be >= 1 and cooldown_s >= 0")
        self.threshold = threshold
        self.cooldown_s = cooldown_s
        self.stats = stats if stats is not None else RestStats()
        self.clock = clock
        self.on_change = on_change
        self.consecutive_failures = 0
        self._state = CLOSED
        self._opened_at = 0.0
        self._trial_in_flight = False

    @property
    def state(self) -> str:
        """``closed``, ``open`` or ``half_open`` (an open circuit whose cool-down has passed reports half_open)."""
        if self._state == OPEN and self.retry_in_s() <= 0:
            return HALF_OPEN
        return self._state

    def retry_in_s(self) -> float:
        return max(0.0, self._opened_at + self.cooldown_s - self.clock()) if self._state == OPEN else 0.0

    def rejects(self) -> bool:
        """Would a call be refused right now? (No state change: for failing fast before waiting for budget.)"""
        state = self.state
        return state == OPEN or (state == HALF_OPEN and self._trial_in_flight)

    def acquire(self) -> bool:
        """Right before a request: True to send it (a half-open circuit lets one trial through), False to refuse."""
        if self._state == OPEN and self.retry_in_s() <= 0:
            self._set(HALF_OPEN)
        if self._state == CLOSED:
            return True
        if self._state == HALF_OPEN and not self._trial_in_flight:
            self._trial_in_flight = True
            self.stats.circuit_trials += 1
            return True
        self.stats.circuit_rejected += 1
        return False

    def success(self) -> None:
        self.consecutive_failures = 0
        self._trial_in_flight = False
        if self._state != CLOSED:
            self.stats.circuit_closed += 1
            self._set(CLOSED)

    def failure(self) -> None:
        self.consecutive_failures += 1
        was_trial, self._trial_in_flight = self._trial_in_flight, False
        if was_trial or (self._state == CLOSED and self.consecutive_failures >= self.threshold):
            self._opened_at = self.clock()
            self.stats.circuit_opened += 1
            self._set(OPEN)

    def release(self) -> None:
        """A trial that ended without an answer either way (cancelled): let the next caller try."""
        self._trial_in_flight = False

    def _set(self, state: str) -> None:
        if state != self._state:
            log.warning("circuit %s -> %s after %d consecutive failure(s)", self._state, state,
                        self.consecutive_failures)  # fmt: skip
            self._state = state
            self.on_change(state)


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
    def __init__(self, base_url: str, limits: RestLimits, *, name: str = "", rng: random.Random | None = None,
                 exchange: str = "", market: str = "", breaker_threshold: int = 10,
                 breaker_cooldown_s: float = 15.0):  # fmt: skip
        self.base_url = base_url.rstrip("/")
        self.limits = limits
        self.name = name or base_url
        self.stats = RestStats()
        self._m = metrics.RestMetrics(*_labels(self.name, exchange, market))
        self.circuit = CircuitBreaker(breaker_threshold, breaker_cooldown_s, stats=self.stats,
                                      on_change=self._m.circuit)  # fmt: skip
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
            self._m.waited(delay)
            await asyncio.sleep(delay)

    def _refuse(self, url: str) -> CircuitOpenError:
        self._m.rejected()
        return CircuitOpenError(url, self.circuit.retry_in_s())

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
            if self.circuit.rejects():  # fail fast: no waiting for budget or a pause while the circuit is open
                self.stats.circuit_rejected += 1
                raise self._refuse(url)
            await self._wait_turn(weight)
            async with self._gate:
                if not self.circuit.acquire():  # opened (or another caller took the trial) while this one waited
                    raise self._refuse(url)
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
                except BaseException:  # cancelled mid-request: neither a success nor a failure of the venue
                    self.circuit.release()
                    raise
            self.stats.by_status[status] += 1
            self._m.answer(status)
            if 200 <= status < 300:
                self.circuit.success()
                return body
            if status in (429, 418):
                self.circuit.failure()
                self._pause(status, retry_after)
            elif status and status < 500:  # 4xx other than rate limits: retrying cannot help
                self.circuit.success()  # the venue answered: the request was wrong, not the venue
                self.stats.failures += 1
                raise RestError(url, status, body[:200].decode("utf-8", "replace"))
            else:
                self.circuit.failure()
                last = last if status == 0 else f"HTTP {status}"
                delay = self._backoff(attempt)
                log.warning("%s: %s on %s, retrying in %.1fs", self.name, last, path, delay)
                self.stats.waited_s += delay
                self._m.waited(delay)
                await asyncio.sleep(delay)
            self.stats.retries += 1
            self._m.retried()
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


def _labels(name: str, exchange: str, market: str) -> tuple[str, str]:
    """Metric labels of a client: given, else from the venue registry by name (``binance_usdm`` ...)."""
    if exchange:
        return exchange, market
    from marketprism.venues import VENUES  # late: the registry imports every venue module

    venue = VENUES.get(name.split()[0]) if name else None
    if venue is not None:
        return venue.exchange.value, venue.market.value
    return (name.split("_")[0] if name and "://" not in name else "unknown"), market
