"""L2Book: apply/load semantics, exact strings, numeric order, the sorted window, respelled prices, the OKX
checksum (against the 290 recorded OKX checksums), and a property test against a plain reference model."""

from __future__ import annotations

from decimal import Decimal

import msgspec
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from marketprism.book.l2 import L2Book, okx_checksum
from marketprism.records import Depth
from marketprism.venues import VENUES
from tests.fixtures_util import jsonl_frames, requires_fixtures

OKX_BOOK_FILES = {
    "okx/books_BTC-USDT_2022-05-13.jsonl": 98,
    "okx/books_UNI-USD-SWAP_2022-05-13.jsonl": 93,
    "okx/books_BTC-USD-220527_2022-05-13.jsonl": 99,
}


def test_apply_keeps_exact_strings_and_orders_numerically():
    book = L2Book()
    book.load(bids=[("9.50", "1.000"), ("10.00", "2"), ("100", "0.5")], asks=[("101.0", "3"), ("1000", "1")])
    assert book.bids() == [("100", "0.5"), ("10.00", "2"), ("9.50", "1.000")]  # numeric, not string order
    assert book.asks() == [("101.0", "3"), ("1000", "1")]
    assert book.best_bid() == ("100", "0.5") and book.best_ask() == ("101.0", "3")
    assert book.best_bid_price() == 100.0 and book.best_ask_price() == 101.0
    assert (book.bid_count, book.ask_count, len(book)) == (3, 2, 5)
    book.apply(bids=[("10.00", "7.25"), ("99.9", "1")], asks=[("100.5", "4")])
    assert book.bids(2) == [("100", "0.5"), ("99.9", "1")]
    assert book.top(1) == ([("100", "0.5")], [("100.5", "4")])
    assert book.bids()[2] == ("10.00", "7.25")  # a new size, the price string as first sent


@pytest.mark.parametrize("zero", ["0", "0.0", "0.00000000", "0E-8"])
def test_a_zero_size_in_any_spelling_deletes(zero):
    book = L2Book()
    book.load(bids=[("1.5", "2"), ("1.4", "3")], asks=[("1.6", "1")])
    book.apply(bids=[("1.5", zero), ("1.0", zero)], asks=[("1.6", zero)])  # 1.0 was never there: no-op
    assert book.bids() == [("1.4", "3")] and book.asks() == [] and book.best_ask() is None
    book.load(bids=[("2", zero), ("3", "1")])
    assert book.bids() == [("3", "1")]


def test_crossed_and_locked_books_are_detected():
    book = L2Book()
    book.load(bids=[("10", "1")], asks=[("11", "1")])
    assert not book.is_crossed()
    book.apply(bids=[("11", "1")])  # locked: bid == ask is impossible on a venue too
    assert book.is_crossed()
    book.apply(bids=[("11", "0")], asks=[("9", "1")])
    assert book.is_crossed()
    assert not L2Book().is_crossed()


def test_malformed_levels_raise():
    book = L2Book()
    with pytest.raises(msgspec.ValidationError):
        book.apply_raw(b'[["1.0"]]', b"[]")
    with pytest.raises(ValueError):
        book.apply_raw(b'[["abc","1"]]', b"[]")
    with pytest.raises(ValueError):
        book.apply(bids=[("1",)])
    with pytest.raises(ValueError):
        L2Book(window=2)


def test_raw_levels_with_extra_elements_decode_like_pairs():
    book = L2Book()
    book.load_raw(b'[["30243.4","0.5","0","3"]]', b'[["30243.5","1.44679","0","6"]]')
    book.apply_raw(b'[["30243.4","0","0","0"],["30243.3","2","0","1"]]', b"[]")
    assert book.bids() == [("30243.3", "2")] and book.asks() == [("30243.5", "1.44679")]


def test_a_second_spelling_of_a_price_is_the_same_level():
    book = L2Book()
    book.load(bids=[("100.0", "1"), ("99", "1")])
    book.apply(bids=[("100.00", "2")])  # the venue respelled it: one level, the last spelling kept
    assert book.bids() == [("100.00", "2"), ("99", "1")]
    book.apply(bids=[("100.000", "0"), ("99.0", "0")])  # deletes now match by value too
    assert book.bids() == []


def test_the_sorted_window_refills_trims_and_serves_deep_reads():
    book = L2Book(window=8)  # sorted between 2 and 32 levels per side
    book.load(bids=[(str(p), "1") for p in range(1, 101)])
    assert book.bid_count == 100 and book.best_bid() == ("100", "1")
    assert [p for p, _ in book.bids(None)] == [str(p) for p in range(100, 0, -1)]  # deeper than the window
    book.apply(bids=[(str(p), "0") for p in range(100, 90, -1)])  # the top 10 go: the window refills
    assert book.best_bid() == ("90", "1") and [p for p, _ in book.bids(3)] == ["90", "89", "88"]
    book.apply(bids=[(f"{p}.5", "2") for p in range(90, 50, -1)])  # 40 new levels above the deep ones
    assert book.bid_count == 130
    assert [p for p, _ in book.bids(5)] == ["90.5", "90", "89.5", "89", "88.5"]
    assert book.bids(None) == sorted(book.bids(None), key=lambda lv: -float(lv[0]))
    book.apply(bids=[("1", "0"), ("2", "5")])  # far below the window
    assert book.bids(None)[-2:] == [("3", "1"), ("2", "5")]


def _reference_top(levels: dict[Decimal, tuple[str, str]], descending: bool) -> list[tuple[str, str]]:
    return [levels[k] for k in sorted(levels, reverse=descending)]


_price = st.integers(min_value=1, max_value=60).map(lambda t: Decimal(t) / 4)
_size = st.sampled_from(["0", "0.000", "1", "2.50", "0.001", "10"])
_side_updates = st.lists(st.tuples(_price, _size), max_size=12)


@settings(max_examples=300, deadline=None)
@given(
    snapshot=st.tuples(_side_updates, _side_updates),
    updates=st.lists(st.tuples(_side_updates, _side_updates), max_size=25),
    window=st.sampled_from([4, 6, 16]),
)
def test_matches_a_plain_reference_book(snapshot, updates, window):
    """Any sequence of snapshot + updates gives the same levels, top N and checksum as a dict by value."""

    def spell(p: Decimal) -> str:
        return f"{p:.2f}"  # one spelling per price, as venues do

    book = L2Book(window=window)
    ref: dict[str, dict[Decimal, tuple[str, str]]] = {"bids": {}, "asks": {}}
    for side, levels in zip(("bids", "asks"), snapshot, strict=True):
        for p, sz in levels:
            if Decimal(sz):
                ref[side][p] = (spell(p), sz)
            else:
                ref[side].pop(p, None)
    book.load(*[[(spell(p), sz) for p, sz in levels] for levels in snapshot])
    for bid_updates, ask_updates in [((), ()), *updates]:
        book.apply(bids=[(spell(p), sz) for p, sz in bid_updates], asks=[(spell(p), sz) for p, sz in ask_updates])
        for side, levels in (("bids", bid_updates), ("asks", ask_updates)):
            for p, sz in levels:
                if Decimal(sz):
                    ref[side][p] = (spell(p), sz)
                else:
                    ref[side].pop(p, None)
        want_bids = _reference_top(ref["bids"], descending=True)
        want_asks = _reference_top(ref["asks"], descending=False)
        assert book.bids() == want_bids and book.asks() == want_asks
        for n in (1, 3, 25):
            assert book.top(n) == (want_bids[:n], want_asks[:n])
        assert book.best_bid() == (want_bids[0] if want_bids else None)
        assert book.bid_count == len(want_bids) and book.ask_count == len(want_asks)
        assert book.okx_checksum() == okx_checksum(want_bids, want_asks)
        crossed = bool(want_bids and want_asks) and Decimal(want_bids[0][0]) >= Decimal(want_asks[0][0])
        assert book.is_crossed() == crossed


def test_okx_checksum_rule_on_short_and_empty_sides():
    # bid1:bidsz1:ask1:asksz1:bid2:bidsz2 (the asks ran out; the bids continue alone)
    import zlib

    text = "3366.1:7:3366.8:9:3366:6"
    crc = zlib.crc32(text.encode())
    assert okx_checksum([("3366.1", "7"), ("3366", "6")], [("3366.8", "9")]) == (crc - 2**32 if crc >= 2**31 else crc)
    assert okx_checksum([], []) == 0
    book = L2Book()
    book.load(bids=[("3366.1", "7"), ("3366", "6")], asks=[("3366.8", "9")])
    assert book.okx_checksum() == okx_checksum(book.bids(), book.asks())


@requires_fixtures
@pytest.mark.parametrize("rel", sorted(OKX_BOOK_FILES))
def test_every_recorded_okx_checksum_matches_the_book(rel):
    """The L2 book alone (no sync machine) reproduces every checksum OKX sent: 98 + 93 + 99 = 290."""
    parser = VENUES["okx_spot"].new_parser()
    book = L2Book()
    matched = 0
    for frame in jsonl_frames(rel):
        for depth in parser.parse(frame, 0):
            assert isinstance(depth, Depth)
            if depth.is_snapshot:
                book.load_raw(depth.bids, depth.asks)
            else:
                book.apply_raw(depth.bids, depth.asks)
            assert book.okx_checksum() == depth.checksum
            assert not book.is_crossed()
            matched += 1
    assert matched == OKX_BOOK_FILES[rel]


@requires_fixtures
def test_documented_okx_snapshot_checksums():
    parser = VENUES["okx_spot"].new_parser()
    want = {"okx/books_BTC-USDT_2022-05-13.jsonl": 47640993, "okx/books_UNI-USD-SWAP_2022-05-13.jsonl": 555605283,
            "okx/books_BTC-USD-220527_2022-05-13.jsonl": 1054815633}  # fmt: skip
    for rel, checksum in want.items():
        snap = parser.parse(jsonl_frames(rel)[0], 0)[0]
        assert isinstance(snap, Depth) and snap.is_snapshot
        book = L2Book()
        book.load_raw(snap.bids, snap.asks)
        assert book.okx_checksum() == checksum == snap.checksum
