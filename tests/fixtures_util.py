"""Locating and reading the recorded exchange fixtures (``../shared/fixtures`` next to the repository).

The fixtures are read in place, never copied. ``MARKETPRISM_FIXTURES`` overrides the location. Tests that
need them use the ``requires_fixtures`` marker (or call ``require_fixtures()``), which skips with a reason
naming the path that was tried, so a checkout without the shared folder still runs every other test.

File formats (see ``SOURCES.md`` in the fixtures folder):

* ``*.jsonl`` (derived): one received frame per line, byte-identical to the raw recording.
* ``*.ws.raw.txt`` (cryptofeed raw recorder): ``<url> <-> <epoch>`` opens a connection,
  ``<url> <- <epoch>: <frame>`` is a frame the client sent, and ``<epoch float>: <frame>`` is a received
  frame (split on the first ``": "``).
"""

from __future__ import annotations

import os
from functools import cache
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
ENV_VAR = "MARKETPRISM_FIXTURES"


def fixtures_root() -> Path:
    """``$MARKETPRISM_FIXTURES`` if set, else ``<repo>/../shared/fixtures``."""
    override = os.environ.get(ENV_VAR)
    path = Path(override).expanduser() if override else REPO_ROOT.parent / "shared" / "fixtures"
    return path.resolve()


FIXTURES: Path = fixtures_root()
SKIP_REASON = f"fixtures folder not found at {FIXTURES}; set {ENV_VAR}"


def fixtures_available() -> bool:
    return FIXTURES.is_dir()


requires_fixtures = pytest.mark.skipif(not fixtures_available(), reason=SKIP_REASON)


def require_fixtures() -> Path:
    """Skip the calling test when the fixtures folder is absent; return it otherwise."""
    if not fixtures_available():
        pytest.skip(SKIP_REASON)
    return FIXTURES


def fixture_path(relative: str) -> Path:
    path = require_fixtures() / relative
    if not path.is_file():
        pytest.fail(f"fixture file {relative!r} is missing from {FIXTURES}")
    return path


@cache
def jsonl_frames(relative: str) -> tuple[str, ...]:
    """The frames of a derived ``.jsonl`` file, verbatim (no trailing newline)."""
    text = fixture_path(relative).read_text(encoding="utf-8")
    return tuple(line for line in text.split("\n") if line)


@cache
def raw_ws_lines(relative: str) -> tuple[tuple[str, float, str], ...]:
    """Every line of a cryptofeed ``.ws.raw.txt`` recording as ``(kind, epoch, frame)``.

    ``kind`` is ``"connect"`` (frame is the URL), ``"sent"`` or ``"recv"``.
    """
    out: list[tuple[str, float, str]] = []
    for line in fixture_path(relative).read_text(encoding="utf-8").split("\n"):
        if not line:
            continue
        head, sep, rest = line.partition(": ")
        if not sep:
            url, arrow, epoch = line.rpartition(" <-> ")
            if not arrow:
                raise ValueError(f"unrecognised line in {relative}: {line[:80]!r}")
            out.append(("connect", float(epoch), url))
        elif " <- " in head:
            out.append(("sent", float(head.rpartition(" <- ")[2]), rest))
        else:
            out.append(("recv", float(head), rest))
    return tuple(out)


def raw_ws_received(relative: str) -> tuple[tuple[int, str], ...]:
    """Received frames of a raw recording as ``(recv_ts in µs, frame)``."""
    return tuple((round(epoch * 1_000_000), frame) for kind, epoch, frame in raw_ws_lines(relative)
                 if kind == "recv")  # fmt: skip


def frames_of(relative: str) -> tuple[tuple[int, str], ...]:
    """``(recv_ts µs, frame)`` for any WebSocket fixture; derived files get a synthetic recv_ts (index)."""
    if relative.endswith(".ws.raw.txt"):
        return raw_ws_received(relative)
    return tuple((1_700_000_000_000_000 + i, frame) for i, frame in enumerate(jsonl_frames(relative)))


def record_fields(record) -> dict:
    """A record's fields as a dict, with depth levels decoded from their raw JSON to tuples of strings."""
    import msgspec

    from marketprism.records import Depth

    out = msgspec.structs.asdict(record)
    if isinstance(record, Depth):
        out["bids"], out["asks"] = record.bid_levels(), record.ask_levels()
    return out
