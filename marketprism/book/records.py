"""Records the book engine produces: ``book`` (top-N snapshots) and ``book_delta`` (the validated stream).

Both follow ``marketprism.records``: msgspec Structs subclassing ``Record`` (exchange, market, symbol,
instrument, ts, recv_ts in µs), prices and sizes as the venue's strings, a natural key unique per book
state (it becomes the ``Nats-Msg-Id``), subjects ``md.book.<exchange>.<market>.<symbol>`` and
``md.book_delta.<exchange>.<market>.<symbol>``. ``ts``/``recv_ts`` are those of the last venue message
applied to the book, so the same book state always gives the same record.

Rebuilding a book from ``book_delta`` records alone, in stream order:

* ``is_snapshot``: clear the book, then apply ``bids``/``asks`` (the whole book as the venue sent it:
  a REST snapshot body's levels, or an OKX/Bybit snapshot push);
* otherwise, without ``resync``: apply ``bids``/``asks`` level by level (size "0" deletes);
  ``prev_seq`` equals the ``seq`` of the record before it (a snapshot's or an update's), so a reader can
  prove it missed nothing (venues without sequence ids, e.g. OKX before 2023, carry ``None``);
* ``resync``: the book is invalid from here (``reason`` says why) until the next ``is_snapshot``.

This module registers both types in ``marketprism.records.RECORD_TYPES`` (records.py imports it last).
"""

from __future__ import annotations

from typing import ClassVar

import msgspec

from marketprism.records import RECORD_TYPES, DataType, Level, Record, decode_levels

EMPTY_LEVELS = msgspec.Raw(b"[]")


class Book(Record, kw_only=True, gc=False):
    """The best ``depth`` levels per side of a validated local book, best first, as ``[price, size]``.

    ``seq`` is the venue sequence the book is at (Binance ``u``, OKX ``seqId``, Bybit ``u``; None for OKX
    books without seqId). A side may hold fewer than ``depth`` levels when the book is thinner.
    """

    data_type: ClassVar[DataType] = DataType.BOOK

    depth: int
    bids: list[tuple[str, str]]
    asks: list[tuple[str, str]]
    seq: int | None = None

    def natural_key(self) -> str:
        ident = self.seq if self.seq is not None else f"t{self.ts}"
        return f"book:{self.exchange}:{self.market}:{self.symbol}:{self.depth}:{ident}"


class BookDelta(Record, kw_only=True, gc=False):
    """One change of a validated book: a snapshot, an update, or a resync marker (see the module doc).

    ``bids``/``asks`` are the venue's own JSON level arrays, byte for byte (as in ``Depth``; OKX levels
    keep their 4 elements); ``bid_levels()``/``ask_levels()`` decode them. ``seq`` is the venue sequence
    after the change; ``prev_seq`` the sequence the change was validated against (for the first update
    after a Binance REST snapshot, the snapshot's ``lastUpdateId``). ``checksum`` is the venue checksum
    that was verified against the local book after this change (OKX), None when the venue sent none.
    ``reason`` is set on resync markers (gap, checksum, crossed, disconnect, ...) and on snapshots that
    replaced a book the venue restarted (``reset``).
    """

    data_type: ClassVar[DataType] = DataType.BOOK_DELTA

    is_snapshot: bool = False
    resync: bool = False
    reason: str = ""
    seq: int | None = None
    prev_seq: int | None = None
    checksum: int | None = None
    bids: msgspec.Raw = EMPTY_LEVELS
    asks: msgspec.Raw = EMPTY_LEVELS

    def bid_levels(self) -> list[Level]:
        return decode_levels(self.bids)

    def ask_levels(self) -> list[Level]:
        return decode_levels(self.asks)

    def natural_key(self) -> str:
        kind = "resync" if self.resync else "snap" if self.is_snapshot else "upd"
        ident = self.seq if self.seq is not None else f"t{self.ts}:{self.checksum}"
        suffix = f":{self.reason}" if self.resync else ""
        return f"book_delta:{self.exchange}:{self.market}:{self.symbol}:{kind}:{ident}{suffix}"


RECORD_TYPES[DataType.BOOK] = Book
RECORD_TYPES[DataType.BOOK_DELTA] = BookDelta
