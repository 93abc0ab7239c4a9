"""Capture files: every received frame, exactly as received, one JSON line each (DESIGN §6).

``{"recv_ts": <µs>, "source": "ws"|"rest", "url": "...", "data": "<frame>"}``; a ``.gz`` suffix writes gzip.
The simulator replays these files and the book verifier reads them.
"""

from __future__ import annotations

import gzip
from collections.abc import Iterator
from pathlib import Path
from typing import IO

import orjson


class CaptureWriter:
    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._file: IO[bytes] = (
            gzip.open(self.path, "ab")  # type: ignore[assignment]  # noqa: SIM115
            if self.path.suffix == ".gz"
            else open(self.path, "ab")  # noqa: SIM115
        )
        self.frames = 0

    def write(self, recv_ts: int, source: str, url: str, frame: str | bytes) -> None:
        data = frame if isinstance(frame, str) else frame.decode("utf-8", "replace")
        self._file.write(orjson.dumps({"recv_ts": recv_ts, "source": source, "url": url, "data": data}))
        self._file.write(b"\n")
        self.frames += 1

    def flush(self) -> None:
        self._file.flush()

    def close(self) -> None:
        if not self._file.closed:
            self._file.close()

    def __enter__(self) -> CaptureWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def read_capture(path: str | Path) -> Iterator[dict[str, object]]:
    """Yields each captured frame as a dict with recv_ts, source, url and data."""
    p = Path(path)
    opener = gzip.open if p.suffix == ".gz" else open
    with opener(p, "rb") as f:
        for line in f:
            if line.strip():
                yield orjson.loads(line)
