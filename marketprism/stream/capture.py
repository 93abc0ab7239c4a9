"""Capture files, and the one reader of recordings that the simulator and the book verifier share (DESIGN §6).

A capture is JSON Lines, one received frame per line:
``{"recv_ts": <µs>, "source": "ws"|"rest"|"status", "url": "...", "data": "<frame exactly as received>"}``.
``ws`` lines are WebSocket frames (``url`` = the connection), ``rest`` lines REST bodies (``url`` = the full
request URL, query included). ``status`` lines are the collector's own connection events for one symbol
(``data`` = the ``Status`` record as JSON, as published on the bus): they say where a connection ended and
began again, so a reader knows which sequence breaks a reconnect explains. A ``.gz`` suffix writes gzip.

``read_recording`` reads captures and every other recording layout the project meets, gzip or zstd
(detected by content), one item per received frame or REST body:

* MarketPrism captures (above);
* plain frame-per-line files (the fixtures' ``*.jsonl``), without receive times;
* cryptofeed raw recordings: ``<epoch>: <frame>``, the ``<url> <-> <epoch>`` connect line naming the
  connection of the frames after it, ``<url> -> <epoch>: <body>`` for a REST body (the ``*.http.raw.txt``),
  and ``<url> <- <epoch>: <sent>`` lines, which are skipped;
* hftbacktest recordings: ``<ns> <frame>``, whose REST depth body is a bare line among the frames (it comes
  out as a ``ws`` item: only its shape tells it apart);
* whole REST bodies: a file named ``*.json`` (``.json.gz``, ``.json.zst``) is one ``rest`` item without URL.
"""

from __future__ import annotations

import gzip
import io
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO

import orjson

WS, REST, STATUS = "ws", "rest", "status"  # capture line sources

_CRYPTOFEED_REST = re.compile(r"^(\S+) -> (\d+(?:\.\d+)?): (.*)$", re.S)
_CRYPTOFEED_RECV = re.compile(r"^(\d{9,11}(?:\.\d+)?): (.*)$", re.S)
_CRYPTOFEED_CONNECT = re.compile(r"^(\S+) <-> (\d+(?:\.\d+)?)$")
_CRYPTOFEED_SENT = re.compile(r"^\S+ <- \d+(?:\.\d+)?: ")
_HFTBACKTEST = re.compile(r"^(\d{16,20}) (.*)$", re.S)
_GZIP_MAGIC = b"\x1f\x8b"
_ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"


class CaptureWriter:
    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._file: IO[bytes] = (
            gzip.open(self.path, "ab")  # type: ignore[assignment]  # noqa: SIM115
            if self.path.suffix == ".gz"
            else open(self.path, "ab")  # noqa: SIM115
        )
        self.frames = 0  # lines written, of every source

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


@dataclass(slots=True)
class RecordedItem:
    """One received WebSocket frame, REST body or status line. ``recv_ts`` in µs (None: the file has no times)."""

    recv_ts: int | None
    source: str  # WS | REST | STATUS
    url: str | None
    data: str


def open_text(path: str | Path) -> IO[str]:
    """A recording as text, gzip or zstd decompressed when its first bytes say so."""
    with open(path, "rb") as f:
        magic = f.read(4)
    if magic.startswith(_GZIP_MAGIC):
        return gzip.open(path, "rt", encoding="utf-8")
    if magic == _ZSTD_MAGIC:
        return io.TextIOWrapper(_zstd_reader(path), encoding="utf-8")
    return open(path, encoding="utf-8")


def _zstd_reader(path: str | Path) -> IO[bytes]:
    try:
        from compression import zstd  # Python 3.14
    except ImportError:
        try:
            from backports import zstd
        except ImportError:
            try:
                import zstandard
            except ImportError:  # pragma: no cover - depends on the environment
                raise ValueError(f"{path}: reading zstd needs the 'backports.zstd' or 'zstandard' package") from None
            return zstandard.ZstdDecompressor().stream_reader(open(path, "rb"))
    return zstd.open(path, "rb")


def is_whole_body(path: str | Path) -> bool:
    """A file holding one whole REST body: named ``*.json``, optionally compressed."""
    name = Path(path).name
    for ext in (".gz", ".zst"):
        name = name.removesuffix(ext)
    return name.endswith(".json")


def read_recording(path: str | Path, *, strict: bool = True) -> Iterator[RecordedItem]:
    """Every received frame, REST body and status line of one recording, in file order (format detected per
    line; see the module doc). A line of no known layout raises ``ValueError``, or is skipped when not
    ``strict``. A JSON line that does not decode is returned as a frame, to be counted where it is parsed."""
    with open_text(path) as f:
        if is_whole_body(path):
            yield RecordedItem(None, REST, None, f.read())
            return
        url: str | None = None  # the connection a cryptofeed recording's frames arrived on
        for raw in f:
            line = raw.rstrip("\r\n")
            if not line.strip():
                continue
            if line.startswith("{"):
                yield _capture_line(line) or RecordedItem(None, WS, None, line)
            elif m := _CRYPTOFEED_RECV.match(line):
                yield RecordedItem(round(float(m.group(1)) * 1e6), WS, url, m.group(2))
            elif m := _HFTBACKTEST.match(line):
                yield RecordedItem(int(m.group(1)) // 1000, WS, None, m.group(2))
            elif m := _CRYPTOFEED_REST.match(line):
                yield RecordedItem(round(float(m.group(2)) * 1e6), REST, m.group(1), m.group(3))
            elif m := _CRYPTOFEED_CONNECT.match(line):
                url = m.group(1)
            elif strict and not _CRYPTOFEED_SENT.match(line):
                raise ValueError(f"{path}: unrecognised line {line[:80]!r}")


def _capture_line(line: str) -> RecordedItem | None:
    """A capture line's item; None for any other JSON line (a venue frame never has a ``"recv_ts"`` key)."""
    if '"recv_ts"' not in line:
        return None
    try:
        obj = orjson.loads(line)
    except orjson.JSONDecodeError:
        return None  # e.g. the last line of a capture whose writer was killed mid-line
    if not isinstance(obj, dict) or not isinstance(obj.get("data"), str) or "recv_ts" not in obj:
        return None
    ts, url = obj["recv_ts"], obj.get("url")
    return RecordedItem(int(ts) if isinstance(ts, int | float) else None, str(obj.get("source", WS)),
                        url if isinstance(url, str) else None, obj["data"])  # fmt: skip


__all__ = ["REST", "STATUS", "WS", "CaptureWriter", "RecordedItem", "is_whole_body", "open_text", "read_recording"]
