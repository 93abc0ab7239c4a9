"""Sync state machines on every recorded depth sequence (0 gaps, every OKX checksum), the venue rules'
edge cases, and faults: gaps, bad checksums, crossed books, buffer caps, disconnects, venue resets.

Frames marked *synthetic* are real recorded frames with sequence fields added or rewritten (the 2022 OKX
recordings predate seqId/prevSeqId); their levels stay byte-identical.
"""

from __future__ import annotations

import re
from bisect import bisect_right
from collections.abc import Iterator

import msgspec
import orjson
import pytest

from marketprism.book.l2 import L2Book, okx_checksum
from marketprism.book.records import Book, BookDelta
from marketprism.book.snapshots import binance_depth_snapshot
from marketprism.book.sync import (
    BinanceFuturesSync,
    BinanceSpotSync,
    BookKey,
    BybitBookSync,
    OkxBookSync,
    ResyncAction,
    ResyncReason,
    ResyncRequest,
    SymbolBooks,
    SyncCounters,
    SyncResult,
    SyncState,
    sync_class_for,
)
from marketprism.bus.codec import decode_subject, encode
from marketprism.records import RECORD_TYPES, DataType, Depth, Status
from marketprism.venues import VENUES
from tests.fixtures_util import fixture_path, jsonl_frames, raw_ws_received, requires_fixtures

pytestmark = requires_fixtures

SPOT_2021 = "binance/spot_cryptofeed_2021-10-12"
USDM_2021 = "binance/usdm_cryptofeed_2021-07-22"
SPOT_2024 = "binance/spot_depthUpdate_BTCUSDT_2024-08-08_first400.jsonl"
SPOT_2024_REST = "binance/spot_rest_depth_BTCUSDT_limit1000_2024-08-08.json"
USDM_2024 = "binance/usdm_depthUpdate_BTCUSDT_2024-08-08_first400.jsonl"
USDM_2024_REST = "binance/usdm_rest_depth_BTCUSDT_limit1000_2024-08-08.json"
OKX_FILES = {
    "okx/books_BTC-USDT_2022-05-13.jsonl": ("spot", "BTC-USDT", 98),
    "okx/books_UNI-USD-SWAP_2022-05-13.jsonl": ("perpetual", "UNI-USD", 93),
    "okx/books_BTC-USD-220527_2022-05-13.jsonl": ("future", "BTC-USD", 99),
}
BYBIT = "bybit/v5_orderbook500_XRPUSDT_2024-12-01.jsonl"
_CF_REST = re.compile(r"^(\S+) -> (\d+(?:\.\d+)?): (.*)$", re.S)


# --- helpers ------------------------------------------------------------------------------------------
def cryptofeed_rest(relative: str) -> list[tuple[int, str, str]]:
    """``(recv_ts µs, url, body)`` of every REST response in a cryptofeed ``*.http.raw.txt`` recording."""
    out = []
    for line in fixture_path(relative).read_text(encoding="utf-8").split("\n"):
        if line:
            m = _CF_REST.match(line)
            assert m, line[:80]
            out.append((round(float(m.group(2)) * 1e6), m.group(1), m.group(3)))
    return out


def depth_records(venue: str, frames: list[tuple[int, str]] | tuple[tuple[int, str], ...]) -> list[Depth]:
    parser = VENUES[venue].new_parser()
    return [r for ts, f in frames for r in parser.parse(f, ts) if isinstance(r, Depth)]


def rest_snapshot(url: str, body: str | bytes, recv_ts: int) -> Depth:
    market = "spot" if "/api/v3/" in url else "perpetual"
    instrument = re.search(r"symbol=([A-Z0-9]+)", url).group(1)  # type: ignore[union-attr]
    return binance_depth_snapshot(body, market=market, instrument=instrument, recv_ts=recv_ts)


def binance_recording(prefix: str, venue: str) -> list[Depth]:
    """A cryptofeed Binance recording's depth updates and REST snapshots, in receive order."""
    updates = depth_records(venue, raw_ws_received(prefix + ".ws.raw.txt"))
    snaps = [rest_snapshot(url, body, ts) for ts, url, body in cryptofeed_rest(prefix + ".http.raw.txt")]
    return sorted(updates + snaps, key=lambda d: d.recv_ts)  # stable: equal times keep their order


def feed_all(books: SymbolBooks, records: list[Depth]) -> list[SyncResult]:
    return [books.snapshot(r) if r.is_snapshot and r.exchange == "binance" else books.feed(r) for r in records]


def spot_2024(after: int = 3) -> list[Depth]:
    """The 2024 spot excerpt with its REST snapshot placed where it was received (after 3 updates)."""
    updates = depth_records("binance_spot", [(i, f) for i, f in enumerate(jsonl_frames(SPOT_2024))])
    body = fixture_path(SPOT_2024_REST).read_bytes()
    snap = binance_depth_snapshot(body, market="spot", instrument="BTCUSDT", recv_ts=updates[after - 1].recv_ts)
    return [*updates[:after], snap, *updates[after:]]


def usdm_2024(after: int = 6) -> list[Depth]:
    updates = depth_records("binance_usdm", [(i, f) for i, f in enumerate(jsonl_frames(USDM_2024))])
    body = fixture_path(USDM_2024_REST).read_bytes()
    snap = binance_depth_snapshot(body, market="perpetual", instrument="BTCUSDT", recv_ts=updates[after - 1].recv_ts)
    return [*updates[:after], snap, *updates[after:]]


def okx_records(rel: str) -> list[Depth]:
    return depth_records("okx_spot", [(i, f) for i, f in enumerate(jsonl_frames(rel))])


def with_okx_seq(frame: str, seq: int, prev: int, checksum: int | None = None) -> str:
    """*Synthetic*: a real OKX books frame with ``seqId``/``prevSeqId`` added (levels untouched)."""
    head = '"data":[{'
    assert frame.count(head) == 1
    out = frame.replace(head, f'{head}"seqId":{seq},"prevSeqId":{prev},')
    if checksum is not None:
        out = re.sub(r'"checksum":-?\d+', f'"checksum":{checksum}', out)
    return out


def rebuild(deltas: list[BookDelta]) -> tuple[L2Book | None, list[int | None]]:
    """A book rebuilt from book_delta records alone (None while invalid), and the chain of seqs it used."""
    book: L2Book | None = None
    last_seq: int | None = None
    for d in deltas:
        if d.resync:
            book = None
        elif d.is_snapshot:
            book = L2Book()
            book.load(d.bid_levels(), d.ask_levels())
            last_seq = d.seq
        else:
            assert book is not None, "an update with no snapshot before it"
            if d.prev_seq is not None:
                assert d.prev_seq == last_seq, (d.prev_seq, last_seq)
            book.apply(d.bid_levels(), d.ask_levels())
            last_seq = d.seq
    return book, [d.seq for d in deltas]


def via_bus(records: list[BookDelta]) -> Iterator[BookDelta]:
    """Each record encoded and decoded as the bus does (subject -> type)."""
    for r in records:
        out = decode_subject(r.subject(), encode(r))
        assert out == r
        assert isinstance(out, BookDelta)
        yield out


# --- every recorded sequence syncs --------------------------------------------------------------------
SPOT_2021_DROPPED = {"NKN-USDT": 1, "BLZ-ETH": 1, "LRC-BTC": 2, "RUNE-EUR": 1}
USDM_2021_DROPPED = {"SUSHI-USDT": 3, "AKRO-USDT": 1, "KEEP-USDT": 3, "CTK-USDT": 5}
USDM_2021_UPDATES = {"SUSHI-USDT": 255, "AKRO-USDT": 189, "KEEP-USDT": 135, "CTK-USDT": 185}


def test_binance_spot_2021_four_symbols_sync_and_bridge_at_exactly_L_plus_1():
    records = binance_recording(SPOT_2021, "binance_spot")
    deltas: list[BookDelta] = []
    books = SymbolBooks(on_delta=deltas.append)
    feed_all(books, records)
    assert len(books) == 4
    by_seq = {(r.symbol, r.seq): r for r in records if not r.is_snapshot}
    for (ex, market, symbol), machine in ((m.key, m) for m in books.machines()):
        c = machine.counters
        assert (ex, market) == ("binance", "spot")
        assert machine.state is SyncState.SYNCED and c.gaps == 0 and c.resyncs_total == 0
        assert c.snapshots == 1 and c.dropped_before_bridge == SPOT_2021_DROPPED[symbol]
        assert c.applied == c.frames - 1 - c.dropped_before_bridge
        snap = next(d for d in deltas if d.symbol == symbol and d.is_snapshot)
        first = next(d for d in deltas if d.symbol == symbol and not d.is_snapshot)
        assert first.prev_seq == snap.seq
        assert by_seq[(symbol, first.seq)].first_seq == snap.seq + 1  # the 2021 edge case: U == L+1
    assert books.totals().applied == 177 - sum(SPOT_2021_DROPPED.values())


def test_binance_spot_2024_bridges_with_U_below_L():
    records = spot_2024()
    deltas: list[BookDelta] = []
    books = SymbolBooks(on_delta=deltas.append)
    results = feed_all(books, records)
    assert results[:3] == [SyncResult.BUFFERED] * 3 and results[3] is SyncResult.SNAPSHOT
    machine = books[("binance", "spot", "BTC-USDT")]
    c = machine.counters
    assert machine.synced and c.gaps == 0 and c.snapshots == 1 and c.applied == 398 and c.dropped_before_bridge == 2
    snap = records[3]
    first = next(d for d in deltas if not d.is_snapshot)
    bridging = next(r for r in records if r.seq == first.seq)
    assert bridging.first_seq is not None and snap.seq is not None
    assert bridging.first_seq <= snap.seq < bridging.seq  # the 2024 case: U <= L, L inside [U; u]
    assert machine.last_seq == records[-1].seq == 50093256899


def test_binance_usdm_2021_four_symbols_and_2024_sync():
    books = SymbolBooks()
    feed_all(books, binance_recording(USDM_2021, "binance_usdm"))
    assert len(books) == 4
    for machine in books.machines():
        c, symbol = machine.counters, machine.key.symbol
        assert machine.synced and c.gaps == 0 and c.resyncs_total == 0 and c.snapshots == 1
        assert c.frames - 1 == USDM_2021_UPDATES[symbol]
        assert c.dropped_before_bridge == USDM_2021_DROPPED[symbol]
        assert c.applied == USDM_2021_UPDATES[symbol] - USDM_2021_DROPPED[symbol]
    books = SymbolBooks()
    feed_all(books, usdm_2024())
    machine = books[("binance", "perpetual", "BTC-USDT")]
    assert machine.synced and machine.counters.gaps == 0 and machine.counters.applied + 4 == 400


def test_binance_usdm_first_event_rule_is_U_le_L_le_u():
    snap, *updates = [r for r in usdm_2024() if r.is_snapshot] + [r for r in usdm_2024() if not r.is_snapshot]
    assert snap.seq is not None
    machine = BinanceFuturesSync("binance", "perpetual", "BTC-USDT", "BTCUSDT")
    machine.snapshot(snap)
    for u in updates:
        result = machine.feed(u)
        if result is SyncResult.APPLIED:
            assert u.first_seq is not None and u.seq is not None
            assert u.first_seq <= snap.seq <= u.seq
            break
        assert result is SyncResult.DROPPED and u.seq is not None and u.seq < snap.seq
    assert machine.synced


@pytest.mark.parametrize("rel", sorted(OKX_FILES))
def test_okx_books_sync_with_every_checksum_verified(rel):
    market, symbol, frames = OKX_FILES[rel]
    machine = OkxBookSync("okx", market, symbol)
    results = [machine.feed(r) for r in okx_records(rel)]
    c = machine.counters
    assert results[0] is SyncResult.SNAPSHOT and set(results[1:]) == {SyncResult.APPLIED}
    assert (c.frames, c.checksum_ok, c.checksum_failed, c.gaps, c.snapshots) == (frames, frames, 0, 0, 1)
    assert machine.last_checksum == okx_records(rel)[-1].checksum


def test_okx_raw_recording_290_checksums_in_one_books_container():
    books = SymbolBooks()
    for r in depth_records("okx_spot", raw_ws_received("okx/okx_cryptofeed_2022-05-13.ws.raw.txt")):
        books.feed(r)
    t = books.totals()
    assert (t.checksum_ok, t.checksum_failed, t.gaps, t.snapshots, len(books)) == (290, 0, 0, 3, 3)


def test_bybit_orderbook500_syncs_with_u_continuity():
    records = depth_records("bybit_linear", [(i, f) for i, f in enumerate(jsonl_frames(BYBIT))])
    machine = BybitBookSync("bybit", "perpetual", "XRP-USDT", "XRPUSDT")
    results = [machine.feed(r) for r in records]
    assert results[0] is SyncResult.SNAPSHOT and results.count(SyncResult.APPLIED) == 49
    assert machine.last_seq == 20254918 and machine.counters.gaps == 0
    assert machine.book.bid_count > 0 and not machine.book.is_crossed()


@pytest.mark.parametrize("kind", ["spot", "usdm"])
def test_top_of_book_equals_binance_book_ticker(kind):
    """After each update, the local best bid/ask equal Binance's own bookTicker with the latest update id
    not after the depth update's ``u`` (same id space), wherever the recorded tickers cover it."""
    records = spot_2024() if kind == "spot" else usdm_2024()
    venue = "binance_spot" if kind == "spot" else "binance_usdm"
    parser = VENUES[venue].new_parser()
    tickers = sorted((t for f in jsonl_frames(f"binance/{kind}_bookTicker_BTCUSDT_2024-08-08_first500.jsonl")
                      for t in parser.parse(f, 0)), key=lambda t: t.seq)  # fmt: skip
    ids = [t.seq for t in tickers]
    books = SymbolBooks()
    compared = 0
    for r in records:
        books.feed(r) if not r.is_snapshot else books.snapshot(r)
        machine = books[(r.exchange, r.market, r.symbol)]
        if not machine.synced:
            continue
        i = bisect_right(ids, machine.last_seq) - 1
        if 0 <= i < len(ids) - 1:
            t = tickers[i]
            assert (machine.book.best_bid(), machine.book.best_ask()) == ((t.bid_price, t.bid_size),
                                                                          (t.ask_price, t.ask_size))  # fmt: skip
            compared += 1
    assert compared >= 40


def test_book_delta_stream_rebuilds_the_book_through_the_bus():
    for records in (spot_2024(), usdm_2024(), okx_records("okx/books_BTC-USDT_2022-05-13.jsonl")):
        deltas: list[BookDelta] = []
        books = SymbolBooks(on_delta=deltas.append)
        feed_all(books, records)
        rebuilt, _ = rebuild(list(via_bus(deltas)))
        machine = books.machines()[0]
        assert rebuilt is not None and machine.synced
        assert rebuilt.bids() == machine.book.bids() and rebuilt.asks() == machine.book.asks()
        keys = [d.natural_key() for d in deltas]
        assert len(keys) == len(set(keys))
        assert all(d.checksum is not None for d in deltas) == (records[0].exchange == "okx")


def test_book_records_top_n_and_publishing_only_changes():
    books = SymbolBooks()
    feed_all(books, spot_2024())
    [book] = books.book_records(5)
    machine = books[("binance", "spot", "BTC-USDT")]
    assert isinstance(book, Book) and book.depth == 5 and book.seq == machine.last_seq
    assert (book.bids, book.asks) == machine.book.top(5) and len(book.bids) == 5
    assert book.subject() == "md.book.binance.spot.BTC-USDT"
    assert book.natural_key() == f"book:binance:spot:BTC-USDT:5:{machine.last_seq}"
    assert decode_subject(book.subject(), encode(book)) == book
    assert books.book_records(5) == []  # unchanged since
    assert len(books.book_records(5, changed_only=False)) == 1
    assert RECORD_TYPES[DataType.BOOK] is Book and RECORD_TYPES[DataType.BOOK_DELTA] is BookDelta


# --- faults: one symbol resyncs, the others carry on -------------------------------------------------
def test_a_dropped_update_resyncs_that_symbol_only_and_a_new_snapshot_recovers_it():
    records = binance_recording(SPOT_2021, "binance_spot")
    nkn = [i for i, r in enumerate(records) if r.symbol == "NKN-USDT" and not r.is_snapshot]
    dropped_at = nkn[80]
    baseline = SymbolBooks()
    feed_all(baseline, records)
    deltas: list[BookDelta] = []
    books = SymbolBooks(on_delta=deltas.append)
    feed_all(books, records[:dropped_at] + records[dropped_at + 1 :])
    requests = books.take_requests()
    assert [(r.key.symbol, r.reason) for r in requests if r.reason is not ResyncReason.START] == [
        ("NKN-USDT", ResyncReason.GAP)
    ]
    nkn_machine = books[("binance", "spot", "NKN-USDT")]
    assert nkn_machine.state is SyncState.RESYNC_NEEDED and nkn_machine.wants is ResyncAction.FETCH_SNAPSHOT
    assert nkn_machine.counters.gaps == 1 and nkn_machine.counters.resyncs == {"gap": 1}
    assert nkn_machine.book_record() is None and nkn_machine.buffered == len(nkn) - 81
    assert [d.reason for d in deltas if d.resync] == ["gap"]
    for other in ("BLZ-ETH", "LRC-BTC", "RUNE-EUR"):
        m, base = books[("binance", "spot", other)], baseline[("binance", "spot", other)]
        assert m.synced and m.counters == base.counters and m.book.bids() == base.book.bids()

    # Recovery: a snapshot of the true book at an update inside the buffer bridges it.
    truth = SymbolBooks()
    at = nkn[100]
    feed_all(truth, records[: at + 1])
    true_book = truth[("binance", "spot", "NKN-USDT")].book
    body = orjson.dumps({"lastUpdateId": records[at].seq, "bids": true_book.bids(), "asks": true_book.asks()})
    assert books.snapshot(rest_snapshot("https://api.binance.com/api/v3/depth?symbol=NKNUSDT", body, 0)) is (
        SyncResult.SNAPSHOT
    )
    assert nkn_machine.synced and nkn_machine.wants is None and nkn_machine.buffered == 0
    base = baseline[("binance", "spot", "NKN-USDT")]
    assert nkn_machine.book.bids() == base.book.bids() and nkn_machine.book.asks() == base.book.asks()
    rebuilt, _ = rebuild([d for d in deltas if d.symbol == "NKN-USDT"])
    assert rebuilt is not None and rebuilt.bids() == base.book.bids()


def test_a_corrupted_okx_checksum_fails_resyncs_and_a_resubscription_recovers():
    rel = "okx/books_BTC-USDT_2022-05-13.jsonl"
    frames = list(jsonl_frames(rel))
    bad_at = 40
    frames[bad_at] = re.sub(r'"checksum":(-?\d+)', lambda m: f'"checksum":{int(m.group(1)) ^ 1}', frames[bad_at])
    records = depth_records("okx_spot", list(enumerate(frames)))
    deltas: list[BookDelta] = []
    books = SymbolBooks(on_delta=deltas.append)
    results = [books.feed(r) for r in records[: bad_at + 5]]
    machine = books[("okx", "spot", "BTC-USDT")]
    assert results[bad_at] is SyncResult.RESYNC and results[bad_at + 1 :] == [SyncResult.DROPPED] * 4
    assert machine.counters.checksum_failed == 1 and machine.counters.checksum_ok == bad_at
    assert machine.state is SyncState.RESYNC_NEEDED and machine.resync_reason is ResyncReason.CHECKSUM
    assert books.take_requests() == [
        ResyncRequest(BookKey("okx", "spot", "BTC-USDT"), "BTC-USDT", ResyncAction.RESUBSCRIBE, ResyncReason.CHECKSUM)
    ]
    assert deltas[-1].resync and deltas[-1].reason == "checksum"
    assert books.wanting() == [machine]

    # The resubscription's snapshot: the true book at the last frame seen, with its checksum (synthetic).
    truth = L2Book()
    for r in depth_records("okx_spot", list(enumerate(jsonl_frames(rel))))[: bad_at + 5]:
        (truth.load_raw if r.is_snapshot else truth.apply_raw)(r.bids, r.asks)
    snap = msgspec.structs.replace(records[bad_at + 4], is_snapshot=True, bids=Depth.levels(truth.bids()),
                                   asks=Depth.levels(truth.asks()), checksum=truth.okx_checksum())  # fmt: skip
    assert books.feed(snap) is SyncResult.SNAPSHOT and machine.synced and books.wanting() == []
    assert [books.feed(r) for r in records[bad_at + 5 :]] == [SyncResult.APPLIED] * (len(records) - bad_at - 5)
    assert machine.counters.checksum_failed == 1 and machine.counters.checksum_ok == len(records) - 4


def test_a_crossed_book_is_detected_and_never_published():
    records = depth_records("bybit_linear", [(i, f) for i, f in enumerate(jsonl_frames(BYBIT))])
    deltas: list[BookDelta] = []
    machine = BybitBookSync("bybit", "perpetual", "XRP-USDT", "XRPUSDT", on_delta=deltas.append)
    for r in records[:10]:
        machine.feed(r)
    best_ask = machine.book.best_ask()
    assert best_ask is not None
    crossing = msgspec.structs.replace(records[10], bids=Depth.levels([(best_ask[0], "100")]))
    assert machine.feed(crossing) is SyncResult.RESYNC
    assert machine.counters.crossed == 1 and machine.resync_reason is ResyncReason.CROSSED
    assert machine.book_record() is None and not machine.has_book
    assert deltas[-1].resync and deltas[-1].reason == "crossed" and deltas[-1].seq == records[10].seq
    # later deltas are dropped until a snapshot; the stream's next snapshot restores the book
    assert machine.feed(records[11]) is SyncResult.DROPPED
    assert machine.feed(records[0]) is SyncResult.SNAPSHOT and machine.synced


def test_buffer_cap_while_waiting_for_a_snapshot_counts_drops_and_bounds_memory():
    records = [r for r in spot_2024() if not r.is_snapshot]
    requests: list[ResyncRequest] = []
    machine = BinanceSpotSync("binance", "spot", "BTC-USDT", "BTCUSDT", buffer_limit=10, on_request=requests.append)
    assert machine.state is SyncState.BUFFERING and requests[0].reason is ResyncReason.START
    results = [machine.feed(r) for r in records]
    assert set(results) == {SyncResult.BUFFERED}
    c = machine.counters
    assert (c.buffered, c.buffer_overflow, machine.buffered) == (400, 390, 10)
    # The snapshot now predates everything buffered: a newer one is requested, the buffer is kept.
    snap = next(r for r in spot_2024() if r.is_snapshot)
    assert machine.feed(snap) is SyncResult.RESYNC
    assert c.stale_snapshots == 1 and machine.buffered == 10 and not machine.has_book
    assert [r.reason for r in requests] == [ResyncReason.START, ResyncReason.STALE_SNAPSHOT]


def test_a_late_rest_snapshot_does_not_replace_a_newer_valid_book():
    records = spot_2024()
    books = SymbolBooks()
    feed_all(books, records)
    machine = books[("binance", "spot", "BTC-USDT")]
    assert books.snapshot(records[3]) is SyncResult.DUPLICATE
    assert machine.synced and machine.last_seq == records[-1].seq and machine.counters.snapshots == 1


def test_a_gap_inside_the_buffer_restarts_it():
    records = [r for r in spot_2024() if not r.is_snapshot]
    machine = BinanceSpotSync("binance", "spot", "BTC-USDT", "BTCUSDT")
    for r in records[:5] + records[6:10]:
        machine.feed(r)
    assert machine.counters.gaps == 1 and machine.buffered == 4 and machine.counters.dropped_before_bridge == 5


def test_binance_duplicates_are_ignored_not_gaps():
    records = spot_2024()
    books = SymbolBooks()
    feed_all(books, records[:20])
    assert books.feed(records[15]) is SyncResult.DUPLICATE and books.feed(records[19]) is SyncResult.DUPLICATE
    feed_all(books, records[20:])
    machine = books[("binance", "spot", "BTC-USDT")]
    assert machine.counters.duplicates == 2 and machine.counters.gaps == 0 and machine.synced


def test_a_first_update_beyond_the_snapshot_is_a_stale_snapshot():
    records = [r for r in spot_2024() if not r.is_snapshot]
    snap = next(r for r in spot_2024() if r.is_snapshot)
    machine = BinanceSpotSync("binance", "spot", "BTC-USDT", "BTCUSDT")
    assert machine.feed(snap) is SyncResult.SNAPSHOT and machine.state is SyncState.BRIDGING
    assert machine.book_record(3) is not None  # the snapshot's book is valid while it waits for its bridge
    assert machine.feed(records[50]) is SyncResult.RESYNC  # U far above lastUpdateId + 1
    assert machine.resync_reason is ResyncReason.STALE_SNAPSHOT and machine.counters.gaps == 0


def test_a_gap_right_after_the_dropped_updates_is_a_gap():
    records = [r for r in spot_2024() if not r.is_snapshot]
    snap = next(r for r in spot_2024() if r.is_snapshot)
    machine = BinanceSpotSync("binance", "spot", "BTC-USDT", "BTCUSDT")
    machine.feed(snap)
    assert machine.feed(records[0]) is SyncResult.DROPPED  # u <= lastUpdateId
    assert machine.feed(records[3]) is SyncResult.RESYNC  # records[1..2] lost
    assert machine.resync_reason is ResyncReason.GAP and machine.counters.gaps == 1


def test_disconnect_status_invalidates_one_book():
    books = SymbolBooks()
    feed_all(books, binance_recording(SPOT_2021, "binance_spot"))
    for r in okx_records("okx/books_UNI-USD-SWAP_2022-05-13.jsonl"):
        books.feed(r)
    books.take_requests()

    def status(exchange: str, market: str, symbol: str, event: str = "disconnected") -> Status:
        return Status(exchange=exchange, market=market, symbol=symbol, instrument=symbol, ts=1, recv_ts=1,
                      event=event, connection="c1@1", reason="closed")  # fmt: skip

    assert books.feed(status("binance", "spot", "LRC-BTC", "connected")) is SyncResult.IGNORED
    assert books.feed(status("binance", "spot", "LRC-BTC")) is SyncResult.RESYNC
    assert books.feed(status("okx", "perpetual", "UNI-USD")) is SyncResult.RESYNC
    assert books.feed(status("okx", "spot", "NOT-THERE")) is SyncResult.IGNORED
    lrc, uni = books[("binance", "spot", "LRC-BTC")], books[("okx", "perpetual", "UNI-USD")]
    assert lrc.state is SyncState.RESYNC_NEEDED and lrc.resync_reason is ResyncReason.DISCONNECT
    # OKX: the collector's reconnect resubscribes, and that brings a snapshot: nothing to request.
    assert uni.state is SyncState.WAITING_SNAPSHOT and uni.wants is None
    assert [(r.key.symbol, r.action) for r in books.take_requests()] == [("LRC-BTC", ResyncAction.FETCH_SNAPSHOT)]
    assert sum(m.synced for m in books.machines()) == 3
    assert books.totals().resyncs == {"disconnect": 2}


def test_okx_updates_without_a_snapshot_request_one_resubscription():
    records = okx_records("okx/books_BTC-USDT_2022-05-13.jsonl")
    books = SymbolBooks()
    assert [books.feed(r) for r in records[1:6]] == [SyncResult.DROPPED] * 5
    requests = books.take_requests()
    assert [(r.action, r.reason) for r in requests] == [(ResyncAction.RESUBSCRIBE, ResyncReason.NO_SNAPSHOT)]
    assert books.feed(records[0]) is SyncResult.SNAPSHOT


def test_okx_seq_chain_keepalive_and_maintenance_reset():
    """*Synthetic* seqId/prevSeqId on the real BTC-USDT frames: steps of varying size (equality, not +1),
    a keep-alive (seqId == prevSeqId, empty sides), a maintenance reset (seqId < prevSeqId), then a gap."""
    rel = "okx/books_BTC-USDT_2022-05-13.jsonl"
    frames = list(jsonl_frames(rel))
    steps = [7, 12, 13, 20, 45, 93]
    seq, out = 1000, [with_okx_seq(frames[0], 1000, -1)]
    for i, frame in enumerate(frames[1:30]):
        prev, seq = seq, seq + steps[i % len(steps)]
        out.append(with_okx_seq(frame, seq, prev))
    records = depth_records("okx_spot", list(enumerate(out)))
    machine = OkxBookSync("okx", "spot", "BTC-USDT")
    assert [machine.feed(r) for r in records] == [SyncResult.SNAPSHOT] + [SyncResult.APPLIED] * 29
    checksum = machine.book.okx_checksum()
    keepalive = ('{"arg":{"channel":"books","instId":"BTC-USDT"},"action":"update","data":[{"asks":[],"bids":[],'
                 f'"ts":"1652459236000","checksum":{checksum},"seqId":{seq},"prevSeqId":{seq}}}]}}')  # fmt: skip
    [ka] = depth_records("okx_spot", [(0, keepalive)])
    assert machine.feed(ka) is SyncResult.KEEPALIVE and machine.last_seq == seq
    [reset] = depth_records("okx_spot", [(0, with_okx_seq(frames[30], 3, seq))])
    assert machine.feed(reset) is SyncResult.APPLIED and machine.last_seq == 3
    [after] = depth_records("okx_spot", [(0, with_okx_seq(frames[31], 5, 3))])
    assert machine.feed(after) is SyncResult.APPLIED
    c = machine.counters
    assert (c.keepalives, c.seq_resets, c.gaps, c.checksum_failed, c.checksum_ok) == (1, 1, 0, 0, 33)
    [dup] = depth_records("okx_spot", [(0, with_okx_seq(frames[31], 5, 3))])
    assert machine.feed(dup) is SyncResult.DUPLICATE
    [gap] = depth_records("okx_spot", [(0, with_okx_seq(frames[33], 20, 9))])  # prevSeqId 9 != 5
    assert machine.feed(gap) is SyncResult.RESYNC and machine.counters.gaps == 1


def test_okx_checksum_zero_or_absent_means_not_provided():
    rel = "okx/books_UNI-USD-SWAP_2022-05-13.jsonl"
    frames = [re.sub(r'"checksum":-?\d+', '"checksum":0', f) for f in jsonl_frames(rel)]
    machine = OkxBookSync("okx", "perpetual", "UNI-USD")
    for r in depth_records("okx_spot", list(enumerate(frames))):
        assert r.checksum == 0
        machine.feed(r)
    assert machine.synced and machine.counters.checksum_ok == machine.counters.checksum_failed == 0


def test_okx_repeated_snapshot_replaces_the_book_as_a_venue_reset():
    records = okx_records("okx/books_BTC-USD-220527_2022-05-13.jsonl")
    deltas: list[BookDelta] = []
    machine = OkxBookSync("okx", "future", "BTC-USD", on_delta=deltas.append)
    for r in records[:20]:
        machine.feed(r)
    assert machine.feed(records[0]) is SyncResult.SNAPSHOT
    assert machine.counters.resyncs == {"reset": 1} and deltas[-1].is_snapshot and deltas[-1].reason == "reset"
    book = L2Book()
    book.load_raw(records[0].bids, records[0].asks)
    assert machine.book.bids() == book.bids() and machine.book.okx_checksum() == records[0].checksum


def test_bybit_u_1_snapshot_resets_the_book():
    """*Synthetic*: the recorded snapshot re-sent with ``u`` = 1 (a Bybit service restart), then a real
    delta renumbered ``u`` = 2."""
    frames = list(jsonl_frames(BYBIT))
    records = depth_records("bybit_linear", list(enumerate(frames)))
    machine = BybitBookSync("bybit", "perpetual", "XRP-USDT", "XRPUSDT")
    for r in records:
        machine.feed(r)
    restart = msgspec.structs.replace(records[0], seq=1)
    assert machine.feed(restart) is SyncResult.SNAPSHOT
    assert machine.counters.resyncs == {"reset": 1} and machine.last_seq == 1
    assert machine.feed(msgspec.structs.replace(records[1], seq=2)) is SyncResult.APPLIED
    assert machine.counters.gaps == 0
    # a plain re-sent snapshot further along the chain is a refresh, not a reset
    assert machine.feed(msgspec.structs.replace(records[0], seq=10)) is SyncResult.SNAPSHOT
    assert machine.counters.resyncs == {"reset": 1}


def test_bybit_gap_and_malformed_levels():
    records = depth_records("bybit_linear", [(i, f) for i, f in enumerate(jsonl_frames(BYBIT))])
    machine = BybitBookSync("bybit", "perpetual", "XRP-USDT", "XRPUSDT")
    for r in records[:5]:
        machine.feed(r)
    assert machine.feed(records[3]) is SyncResult.DUPLICATE
    assert machine.feed(records[7]) is SyncResult.RESYNC and machine.resync_reason is ResyncReason.GAP
    machine.feed(records[0])
    bad = msgspec.structs.replace(records[1], bids=msgspec.Raw(b'[["1.9"]]'))
    assert machine.feed(bad) is SyncResult.RESYNC and machine.resync_reason is ResyncReason.MALFORMED


def test_invalidate_and_unsupported_venues():
    books = SymbolBooks()
    deribit = Depth(exchange="deribit", market="option", symbol="BTC-USD", instrument="BTC-24SEP21-8000-P", ts=1,
                    recv_ts=1, is_snapshot=True, bids=Depth.levels([]), asks=Depth.levels([]), seq=1)  # fmt: skip
    assert books.feed(deribit) is SyncResult.IGNORED and books.unsupported == 1 and len(books) == 0
    assert books.snapshot(deribit) is SyncResult.IGNORED
    assert sync_class_for("binance", "future") is BinanceFuturesSync
    assert sync_class_for("bybit", "spot") is BybitBookSync and sync_class_for("deribit", "option") is None
    for r in okx_records("okx/books_UNI-USD-SWAP_2022-05-13.jsonl")[:3]:
        books.feed(r)
    machine = books[BookKey("okx", "perpetual", "UNI-USD")]
    assert machine.invalidate() is SyncResult.RESYNC and machine.wants is ResyncAction.RESUBSCRIBE
    assert books.remove(("okx", "perpetual", "UNI-USD")) is machine and ("okx", "perpetual", "UNI-USD") not in books


def test_counters_add_and_as_dict():
    a, b = SyncCounters(applied=2, gaps=1), SyncCounters(applied=3)
    a.count_resync("gap")
    b.count_resync("gap")
    b.count_resync("checksum")
    a.add(b)
    d = a.as_dict()
    assert d["applied"] == 5 and d["gaps"] == 1 and d["resyncs"] == 3
    assert d["resyncs_by_reason"] == {"checksum": 1, "gap": 2}


def test_okx_checksum_helper_agrees_with_book_on_a_recorded_snapshot():
    snap = okx_records("okx/books_BTC-USDT_2022-05-13.jsonl")[0]
    assert okx_checksum(snap.bid_levels(), snap.ask_levels()) == snap.checksum


# --- against the simulator's synthetic market ----------------------------------------------------------
@pytest.mark.parametrize(
    ("venue", "symbol", "sub"),
    [("okx_spot", "BTC-USDT", "books"), ("binance_spot", "BTC-USDT", "btcusdt@depth@100ms"),
     ("binance_usdm", "ETH-USDT", "ethusdt@depth@100ms"), ("bybit_linear", "SOL-USDT", "orderbook.500.SOLUSDT")],
)  # fmt: skip
def test_engine_matches_the_simulators_true_book(venue, symbol, sub):
    """1000 depth events from the simulator's generator (its own wire encoders: OKX seqIds in random steps
    with checksums, Binance U/u/pu, Bybit u) through the venue parser and the engine; the local book ends
    equal to the generator's true book. Binance gets a REST snapshot body after 5 events."""
    import random

    from marketprism.sim.binance import BinanceWire
    from marketprism.sim.book import InstrumentSpec
    from marketprism.sim.bybit import BybitWire
    from marketprism.sim.frames import Sub
    from marketprism.sim.market import SyntheticInstrument
    from marketprism.sim.okx import OkxWire

    v = VENUES[venue]
    wire = {"okx": OkxWire, "binance": BinanceWire, "bybit": BybitWire}[v.exchange.value](v, True)
    inst_id = v.to_instrument(symbol)
    spec = InstrumentSpec.for_symbol(symbol, 1)
    inst = SyntheticInstrument(inst_id, spec, wire.number_format(spec), random.Random(7), wire.seq_style, 200, 2000)
    parser = v.new_parser()
    books = SymbolBooks()
    texts = [f.text for f in wire.subscribe_frames(inst, (inst_id, DataType.DEPTH), Sub(name=sub), 1)]
    for i in range(1000):
        texts += [f.text for f in wire.depth_frames(inst, inst.depth_event(), ["depth"], 2 + i)]
        if v.exchange.value == "binance" and i == 5:
            snap = inst.snapshot(1)
            body = orjson.dumps({"lastUpdateId": snap.seq, "bids": [[p, s] for p, s, _ in snap.bids],
                                 "asks": [[p, s] for p, s, _ in snap.asks]})  # fmt: skip
            texts.append("REST " + body.decode())
    for text in texts:
        if text.startswith("REST "):
            books.snapshot(binance_depth_snapshot(text[5:], market=v.market.value, instrument=inst_id, recv_ts=0))
        else:
            for r in parser.parse(text, 0):
                books.feed(r)
    [machine] = books.machines()
    truth = inst.book_at(None)
    assert truth is not None and machine.synced and machine.counters.gaps == 0
    assert machine.last_seq == truth[0]
    assert machine.book.bids() == [tuple(lv) for lv in truth[1]] and machine.book.asks() == [
        tuple(lv) for lv in truth[2]
    ]
    if venue == "okx_spot":
        assert machine.counters.checksum_ok == 1001 and machine.counters.checksum_failed == 0


def test_bybit_rest_snapshot_mid_stream_replays_the_deltas_held_since_the_loss():
    """A gap loses the book; the REST snapshot (the true book at u = 20th delta, built from the recording) arrives
    after more deltas went by: those past it are replayed from the hold, and the book then follows the stream to the
    end exactly as a book that never lost anything."""
    records = depth_records("bybit_linear", [(i, f) for i, f in enumerate(jsonl_frames(BYBIT))])
    truth = BybitBookSync("bybit", "perpetual", "XRP-USDT", "XRPUSDT")
    for r in records[:21]:
        truth.feed(r)
    bids, asks = truth.book.top(1000)
    rest = Depth(exchange="bybit", market="perpetual", symbol="XRP-USDT", instrument="XRPUSDT", ts=records[20].ts,
                 recv_ts=records[20].recv_ts, is_snapshot=True, bids=Depth.levels([list(b) for b in bids]),
                 asks=Depth.levels([list(a) for a in asks]), seq=truth.last_seq)  # fmt: skip
    machine = BybitBookSync("bybit", "perpetual", "XRP-USDT", "XRPUSDT")
    for r in records[:11]:
        machine.feed(r)
    assert machine.feed(records[12]) is SyncResult.RESYNC  # records[11] lost
    for r in records[13:31]:
        machine.feed(r)  # held while the snapshot is on its way
    assert not machine.synced
    assert machine.snapshot(rest) is SyncResult.SNAPSHOT
    assert machine.synced and machine.last_seq == records[30].seq  # 21..30 replayed from the hold
    for r in records[31:]:
        assert machine.feed(r) is SyncResult.APPLIED
    for r in records[21:]:
        truth.feed(r)
    assert machine.book.top(1000) == truth.book.top(1000) and machine.last_seq == truth.last_seq
    # A late REST answer, older than the book in sync, leaves the book alone.
    assert machine.snapshot(rest) is SyncResult.DUPLICATE and machine.last_seq == truth.last_seq
    assert machine.counters.stale_snapshots == 1
    # Held deltas that start past the snapshot cannot bridge it: dropped, and the next live delta finds the gap.
    late = BybitBookSync("bybit", "perpetual", "XRP-USDT", "XRPUSDT")
    late.feed(records[0])
    late.feed(records[25])  # gap: lost, held
    late.feed(records[26])
    assert late.snapshot(rest) is SyncResult.SNAPSHOT and late.last_seq == rest.seq
    assert late.feed(records[27]) is SyncResult.RESYNC and late.counters.gaps == 2
    late.disconnect()
    assert late.counters.dropped_before_bridge >= 2
