"""REST depth snapshots as ``Depth`` records (``is_snapshot=True``), the form every sync machine takes.

A snapshot is just a depth record whose levels are the whole book, so REST snapshots, venue snapshot
pushes and the ``book_delta`` snapshot markers made from them all carry the venue's levels byte for byte.

Binance spot ``GET /api/v3/depth``: ``{"lastUpdateId": L, "bids": [[px, qty]...], "asks": [...]}``.
Binance USDⓈ-M ``GET /fapi/v1/depth``: the same plus ``E`` (message time) and ``T`` (transaction time), ms.
The snapshot's ``seq`` is ``lastUpdateId``; its ``ts`` is ``E`` when present, else the receive time
(spot bodies carry no time at all).

Bybit v5 ``GET /v5/market/orderbook``: ``{"retCode": 0, "result": {"s", "b": [[px, sz]...], "a", "ts", "u",
"seq"}}`` (ms). The snapshot has the same fields as the stream's own ``orderbook.N`` snapshot
(``marketprism.venues.bybit``): ``seq`` is ``u`` (the update id the stream's deltas continue with
``u + 1``), ``cross_seq`` the cross sequence ``seq``, ``ts`` is ``result.ts``. A ``retCode`` other than 0
is not a snapshot.

``REST_SNAPSHOTS`` maps an exchange to its body parser: the order-book processor resyncs the books of
these exchanges by REST (the others by asking the collector to resubscribe).
"""

from __future__ import annotations

from typing import Protocol
from urllib.parse import parse_qs, urlsplit

import msgspec

from marketprism.records import Depth, Exchange, Market, split_concatenated


class _BinanceDepthBody(msgspec.Struct, gc=False):
    lastUpdateId: int
    bids: msgspec.Raw
    asks: msgspec.Raw
    E: int | None = None


_binance_depth_body = msgspec.json.Decoder(_BinanceDepthBody)

# REST path -> market, for recognising a recorded request (paths as in marketprism.venues.binance).
BINANCE_DEPTH_PATHS: dict[str, Market] = {"/api/v3/depth": Market.SPOT, "/fapi/v1/depth": Market.PERPETUAL}


class SnapshotError(ValueError):
    """A REST body that is not a depth snapshot."""


def binance_depth_snapshot(
    body: str | bytes, *, market: str, instrument: str, recv_ts: int, symbol: str | None = None
) -> Depth:
    """A Binance REST depth body as a snapshot ``Depth``. ``symbol`` defaults to the normalised instrument."""
    try:
        snap = _binance_depth_body.decode(body)
    except (msgspec.DecodeError, msgspec.ValidationError) as exc:
        raise SnapshotError(f"not a Binance depth snapshot body ({exc})") from None
    return Depth(
        exchange=Exchange.BINANCE.value, market=market, symbol=symbol or split_concatenated(instrument),
        instrument=instrument.upper(), ts=snap.E * 1000 if snap.E else recv_ts, recv_ts=recv_ts,
        is_snapshot=True, bids=snap.bids, asks=snap.asks, seq=snap.lastUpdateId,
    )  # fmt: skip


class _BybitBook(msgspec.Struct, gc=False):
    s: str
    b: msgspec.Raw
    a: msgspec.Raw
    u: int
    ts: int | None = None
    seq: int | None = None


class _BybitBody(msgspec.Struct, gc=False):
    retCode: int
    retMsg: str = ""
    result: msgspec.Raw = msgspec.Raw(b"")


_bybit_body = msgspec.json.Decoder(_BybitBody)
_bybit_book = msgspec.json.Decoder(_BybitBook)


def bybit_orderbook_snapshot(
    body: str | bytes, *, market: str, instrument: str, recv_ts: int, symbol: str | None = None
) -> Depth:
    """A Bybit v5 ``/v5/market/orderbook`` body as a snapshot ``Depth``, shaped like the stream's snapshot."""
    try:
        envelope = _bybit_body.decode(body)
        if envelope.retCode != 0:
            raise SnapshotError(f"Bybit orderbook request failed: retCode {envelope.retCode} {envelope.retMsg!r}")
        book = _bybit_book.decode(envelope.result)
    except (msgspec.DecodeError, msgspec.ValidationError) as exc:
        raise SnapshotError(f"not a Bybit orderbook body ({exc})") from None
    return Depth(
        exchange=Exchange.BYBIT.value, market=market, symbol=symbol or split_concatenated(book.s or instrument),
        instrument=book.s or instrument, ts=book.ts * 1000 if book.ts else recv_ts, recv_ts=recv_ts,
        is_snapshot=True, bids=book.b, asks=book.a, seq=book.u, cross_seq=book.seq,
    )  # fmt: skip


class SnapshotParser(Protocol):
    def __call__(
        self, body: str | bytes, *, market: str, instrument: str, recv_ts: int, symbol: str | None = None
    ) -> Depth: ...


# exchange -> parser of its REST depth snapshot body (books of these exchanges resync by REST)
REST_SNAPSHOTS: dict[str, SnapshotParser] = {
    Exchange.BINANCE.value: binance_depth_snapshot,
    Exchange.BYBIT.value: bybit_orderbook_snapshot,
}


def is_binance_depth_body(body: str | bytes) -> bool:
    """Whether a body looks like a Binance depth snapshot (hftbacktest records them without a URL)."""
    head = body[:20] if isinstance(body, str) else body[:20].decode("latin-1")
    return head.lstrip().startswith('{"lastUpdateId"')


def binance_depth_request(url: str) -> tuple[str, str] | None:
    """``(market, instrument)`` of a Binance REST depth URL (also under a simulator's ``/<venue>`` prefix),
    None for any other URL."""
    parts = urlsplit(url)
    for path, market in BINANCE_DEPTH_PATHS.items():
        if parts.path.endswith(path):
            symbols = parse_qs(parts.query).get("symbol")
            if symbols:
                return market.value, symbols[0].upper()
    return None
