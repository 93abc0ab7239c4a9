"""Simulator configuration: modes, symbols, replay files and injectable faults.

Everything here is plain data so that the CLI, tests and ``POST /_sim/faults`` build the same objects.
"""

from __future__ import annotations

import glob
import os
from dataclasses import asdict, dataclass, field, fields
from typing import Any, Literal

from marketprism.venues import VENUES

Mode = Literal["synthetic", "replay"]
ALL_VENUES = "*"  # key of ``SimConfig.faults`` that applies to every venue without an entry of its own


@dataclass(slots=True)
class Faults:
    """Faults injected into one venue (0 / None = off). Replaced as a whole by ``set_faults``.

    WebSocket faults count per connection, so every connection sees the same pattern:
      ``disconnect_every_s``  the server closes each connection this many seconds after it opened
                              (``disconnect_abort``: drop the TCP connection without a close frame).
      ``drop_every_n``        every Nth data frame is not sent (a sequence gap).
      ``corrupt_checksum_every_n``  every Nth frame carrying an OKX ``checksum`` gets a wrong one.
      ``malformed_every_n``   every Nth data frame is preceded by a truncated copy of itself (invalid
                              JSON). The good frame still follows, so counts of good frames stay exact.
      ``stall_s``             once, ``stall_after_s`` after the faults are set, nothing at all (data,
                              replies, pings) is sent for ``stall_s`` seconds; connections stay open and
                              frames produced meanwhile are delivered afterwards (no gap).
    REST faults apply to every REST endpoint of the venue:
      ``rest_status``         429, 418, 500, 503 ... (429/418/503 carry ``Retry-After: rest_retry_after_s``)
      ``rest_fail_count``     how many requests fail before requests succeed again; None = all fail.
    """

    disconnect_every_s: float = 0.0
    disconnect_abort: bool = False
    drop_every_n: int = 0
    corrupt_checksum_every_n: int = 0
    malformed_every_n: int = 0
    stall_s: float = 0.0
    stall_after_s: float = 0.0
    rest_status: int = 0
    rest_fail_count: int | None = None
    rest_retry_after_s: int = 1

    def __post_init__(self) -> None:
        for name in ("drop_every_n", "corrupt_checksum_every_n", "malformed_every_n"):
            if getattr(self, name) < 0:
                raise ValueError(f"Faults.{name} must be >= 0")
        if self.drop_every_n == 1:
            raise ValueError("Faults.drop_every_n=1 would drop every frame; use 2 or more")
        if self.rest_status and not 400 <= self.rest_status <= 599:
            raise ValueError(f"Faults.rest_status must be an HTTP error status, got {self.rest_status}")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Faults:
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"unknown fault field(s): {', '.join(unknown)}; known: {', '.join(sorted(known))}")
        return cls(**data)


@dataclass(slots=True)
class SimConfig:
    """What the simulator serves. ``venues`` defaults to every venue (synthetic) or the replayed ones."""

    mode: Mode = "synthetic"
    venues: list[str] | None = None
    symbols: list[str] = field(default_factory=lambda: ["BTC-USDT", "ETH-USDT"])
    rate: float = 10.0  # synthetic: updates per second per symbol per channel
    seed: int = 1
    replay_files: dict[str, list[str]] = field(default_factory=dict)
    speed: float = 0.0  # replay: recorded pace x speed; 0 = as fast as possible
    replay_overlap: int = 5  # replay: frames re-sent when a stream is subscribed again after a disconnect
    faults: dict[str, Faults] = field(default_factory=dict)  # venue name or "*" -> faults
    ping_interval_s: float = 20.0  # server WebSocket pings (venues whose heartbeat is server_ping)
    client_idle_timeout_s: float = 0.0  # close client-heartbeat connections silent this long (0 = off)
    tick_s: float = 0.01  # synthetic generation tick: frames are produced in batches per tick
    book_levels: int = 40  # synthetic book: at most this many levels per side
    book_history: int = 20_000  # level changes kept to rebuild the book at a past sequence id
    max_backlog: int = 200_000  # frames queued for one connection before it is cut as a slow consumer
    # Synthetic ids (trade ids, sequence ids) start this far up. None: the start time in ms, so a restarted
    # simulator never repeats the ids of an earlier run (JetStream would drop those as duplicates).
    id_offset: int | None = None

    def __post_init__(self) -> None:
        if self.mode not in ("synthetic", "replay"):
            raise ValueError(f"mode must be 'synthetic' or 'replay', got {self.mode!r}")
        for name in self.venue_names():
            if name not in VENUES:
                raise ValueError(f"unknown venue {name!r}; known: {', '.join(VENUES)}")
        for name in self.faults:
            if name != ALL_VENUES and name not in VENUES:
                raise ValueError(f"faults for unknown venue {name!r}")
        if self.rate < 0 or self.speed < 0 or self.replay_overlap < 0:
            raise ValueError("rate, speed and replay_overlap must be >= 0")
        if not 0.001 <= self.tick_s <= 1.0:
            raise ValueError("tick_s must be within [0.001, 1]")
        if not 2 <= self.book_levels <= 400:
            raise ValueError("book_levels must be within [2, 400]")
        if self.mode == "replay" and not self.replay_files:
            raise ValueError("replay mode needs replay_files, e.g. {'binance_spot': ['frames.jsonl']}")

    def venue_names(self) -> list[str]:
        if self.venues is not None:
            return list(self.venues)
        if self.mode == "replay":
            return list(self.replay_files)
        return list(VENUES)

    def faults_for(self, venue: str) -> Faults:
        return self.faults.get(venue) or self.faults.get(ALL_VENUES) or Faults()


def parse_replay_arg(text: str) -> tuple[str, list[str]]:
    """``"binance_spot=a.jsonl,dir/*.ws.raw.txt"`` -> ``("binance_spot", [paths])`` (globs expanded)."""
    venue, sep, rest = text.partition("=")
    venue = venue.strip()
    if not sep or not venue or not rest.strip():
        raise ValueError(f"expected VENUE=PATH[,PATH...], got {text!r}")
    if venue not in VENUES:
        raise ValueError(f"unknown venue {venue!r}; known: {', '.join(VENUES)}")
    paths: list[str] = []
    for item in (p.strip() for p in rest.split(",")):
        if not item:
            continue
        matches = sorted(glob.glob(os.path.expanduser(item)))
        if not matches:
            raise ValueError(f"no file matches {item!r}")
        paths.extend(matches)
    return venue, paths


def parse_replay_args(items: list[str]) -> dict[str, list[str]]:
    """Several ``--replay`` options; the same venue may appear more than once."""
    out: dict[str, list[str]] = {}
    for item in items:
        venue, paths = parse_replay_arg(item)
        out.setdefault(venue, []).extend(paths)
    return out


def parse_faults_arg(text: str) -> tuple[str, Faults]:
    """``"binance_spot:drop_every_n=10,stall_s=2"`` or ``"*:rest_status=429"`` -> (venue, Faults)."""
    venue, sep, rest = text.partition(":")
    if not sep:
        venue, rest = ALL_VENUES, text
    venue = venue.strip() or ALL_VENUES
    if venue != ALL_VENUES and venue not in VENUES:
        raise ValueError(f"unknown venue {venue!r}; known: {', '.join(VENUES)}")
    types = {f.name: f.type for f in fields(Faults)}
    values: dict[str, Any] = {}
    for item in (p.strip() for p in rest.split(",")):
        if not item:
            continue
        key, eq, raw = item.partition("=")
        key = key.strip()
        if not eq or key not in types:
            raise ValueError(f"expected FIELD=VALUE with FIELD in {', '.join(types)}, got {item!r}")
        values[key] = _coerce(str(types[key]), raw.strip())
    return venue, Faults.from_dict(values)


def _coerce(type_name: str, raw: str) -> Any:
    if raw.lower() == "none":
        return None
    if "bool" in type_name:
        return raw.lower() in ("1", "true", "yes", "on")
    if "float" in type_name:
        return float(raw)
    return int(raw)
