"""L2Book: apply/load semantics, exact strings, numeric order, the sorted window, respelled prices, the OKX
checksum (against the 290 recorded OKX checksums), and a property test against a plain reference model.

Every test runs twice: with the compiled kernel (``_l2fast``, skipped when it is not built or
``MARKETPRISM_PURE_PYTHON`` is set) and with the pure-Python code. The cross-checks at the end run both on
the same inputs (every recorded book fixture, and generated JSON with odd spellings and malformed levels)
and require the same books, byte for byte, the same checksums and the same errors."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import zlib
from collections.abc import Callable, Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import msgspec
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from marketprism.book import l2
from marketprism.book.l2 import L2Book, okx_checksum
from marketprism.book.snapshots import binance_depth_snapshot
from marketprism.records import Depth
from marketprism.venues import VENUES
from tests.fixtures_util import fixture_path, jsonl_frames, requires_fixtures

COMPILED = l2._l2fast  # the built kernel, whatever the environment says
IN_USE = l2._fast  # what this process runs: None under MARKETPRISM_PURE_PYTHON=1 or without the kernel
needs_compiled = pytest.mark.skipif(COMPILED is None, reason="the compiled kernel (_l2fast) is not built")

OKX_BOOK_FILES = {
    "okx/books_BTC-USDT_2022-05-13.jsonl": 98,
    "okx/books_UNI-USD-SWAP_2022-05-13.jsonl": 93,
    "okx/books_BTC-USD-220527_2022-05-13.jsonl": 99,
}


@pytest.fixture(autouse=True, params=["compiled", "python"])
def implementation(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Run the test with the compiled kernel, then with the pure-Python code (the cross-checks, named
    ``test_compiled_*``, run once: they compare both)."""
    if request.function.__name__.startswith("test_compiled_"):
        if request.param == "python":
            pytest.skip("compares both implementations in one run")
        return "both"
    if request.param == "compiled":
        if IN_USE is None:
            pytest.skip("compiled kernel not built or MARKETPRISM_PURE_PYTHON set")
        monkeypatch.setattr(l2, "_fast", IN_USE)
    else:
        monkeypatch.setattr(l2, "_fast", None)
    return str(request.param)


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


# --- the compiled kernel against the pure-Python code ------------------------------------------------------
def test_accelerated_reports_the_implementation_and_the_environment_forces_python():
    assert l2.accelerated() == (l2._fast is not None)
    code = "from marketprism.book import l2; print(l2.accelerated(), l2._l2fast is not None)"
    env = {**os.environ, "MARKETPRISM_PURE_PYTHON": "1"}
    root = Path(__file__).resolve().parents[1]
    out = subprocess.run([sys.executable, "-c", code], env=env, cwd=root, capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["False", str(COMPILED is not None)]


def _run(fast: Any, fn: Callable[[], Any]) -> tuple[Any, ...]:
    """``fn()`` with the kernel ``fast`` (None: pure Python): ("ok", result) or ("error", type, message)."""
    saved = l2._fast
    l2._fast = fast
    try:
        return ("ok", fn())
    except Exception as e:
        return ("error", type(e), str(e))
    finally:
        l2._fast = saved


def _state(book: L2Book) -> tuple[Any, ...]:
    """Everything the book holds, in order: the dicts' insertion order included."""
    sides = [
        (list(s.size.items()), [k.hex() for k in s.keys], list(s.prices), s.bound.hex(), s.window)  # hex: nan == nan
        for s in (book._bids, book._asks)
    ]
    return (*sides, book._respelled)


def _reads(book: L2Book, deep: bool = True) -> list[str]:
    """What the book answers, as repr (nan == nan)."""
    return [
        repr(outcome)
        for outcome in (
            _run(
                None, lambda: (book.bids() if deep else [], book.asks() if deep else [], book.top(5), book.best_bid())
            ),
            _run(None, lambda: (book.best_ask(), book.best_bid_price(), book.best_ask_price(), book.is_crossed())),
            _run(None, book.okx_checksum),  # pure-Python checksum...
            _run(COMPILED, book.okx_checksum),  # ...and the kernel's, on the same book
        )
    ]


def _same_after(op: Callable[[L2Book], Any], pure: L2Book, fast: L2Book, deep: bool = True) -> None:
    """``op`` on both books (pure Python on one, the kernel on the other): same outcome, same books after.
    ``deep``: also compare every level in order (sorts the levels below the window)."""
    want = _run(None, lambda: op(pure))
    got = _run(COMPILED, lambda: op(fast))
    assert got == want
    assert _state(fast) == _state(pure)
    reads = _reads(pure, deep)
    assert _reads(fast, deep) == reads
    assert reads[2] == reads[3]


def _book_streams() -> Iterator[tuple[str, list[Depth]]]:
    def parsed(venue: str, rel: str) -> list[Depth]:
        parser = VENUES[venue].new_parser()
        return [r for i, f in enumerate(jsonl_frames(rel)) for r in parser.parse(f, i) if isinstance(r, Depth)]

    for venue, market, prefix in (("binance_spot", "spot", "spot"), ("binance_usdm", "perpetual", "usdm")):
        rest = fixture_path(f"binance/{prefix}_rest_depth_BTCUSDT_limit1000_2024-08-08.json").read_bytes()
        snap = binance_depth_snapshot(rest, market=market, instrument="BTCUSDT", recv_ts=0)
        yield venue, [snap, *parsed(venue, f"binance/{prefix}_depthUpdate_BTCUSDT_2024-08-08_first400.jsonl")]
    for rel in sorted(OKX_BOOK_FILES):
        yield rel, parsed("okx_spot", rel)
    yield "bybit", parsed("bybit_linear", "bybit/v5_orderbook500_XRPUSDT_2024-12-01.jsonl")


@needs_compiled
@requires_fixtures
@pytest.mark.parametrize("window", [4, l2.DEFAULT_WINDOW])
def test_compiled_and_python_build_the_same_books_from_every_recorded_stream(window):
    """Same levels, same strings, same sorted windows, same checksums after every recorded message; small
    windows make the real streams refill and trim all the time."""
    for name, records in _book_streams():
        books: dict[str, tuple[L2Book, L2Book]] = {}
        for i, depth in enumerate(records):
            pure, fast = books.setdefault(depth.symbol, (L2Book(window), L2Book(window)))

            def op(book: L2Book, depth: Depth = depth) -> None:
                (book.load_raw if depth.is_snapshot else book.apply_raw)(depth.bids, depth.asks)

            _same_after(op, pure, fast, deep=i % 20 == 0 or i == len(records) - 1)
            if name.startswith("okx") and depth.checksum:
                assert fast.okx_checksum() == depth.checksum, name
        assert books, name


# Spellings that take every path of the kernel: plain decimals (its fast path, several spellings of one
# value), what only float() parses (exponents, signs, spaces, underscores, inf/nan, too many digits,
# non-ASCII digits), and what float() rejects.
_PRICES = ["1.25", "1.250", "01.25", "1.5", "2", "2.0", "0.75", "3.1", "125e-2", "+2", " 1.5", "1_0", "10",
           "inf", "nan", "-0", "0", ".5", "0.5", "5.", "9007199254740993", "0.1000000000000000000000001", "\u0661",
           "", "abc", "1.2.3"]  # fmt: skip
_SIZES = ["0", "0.000", "0E-8", "-0", " 0", "1", "2.50", "0.001", "1e1", "nan", "\u0661", "", "x", "1..0"]


@st.composite
def _raw_levels(draw: st.DrawFn) -> bytes:
    def text(s: str) -> str:
        if s.startswith("\\u"):  # a JSON escape (of a non-ASCII digit)
            return f'"{s}"'
        if draw(st.integers(0, 9)) == 0:  # the same text as JSON escapes: msgspec has to decode it
            return '"' + "".join(f"\\u{ord(c):04x}" for c in s) + '"'
        return json.dumps(s)

    ws = st.sampled_from(["", "", " ", "\n "])
    levels = []
    for _ in range(draw(st.integers(0, 6))):
        parts = [text(draw(st.sampled_from(_PRICES))), text(draw(st.sampled_from(_SIZES)))]
        shape = draw(st.integers(0, 19))
        if shape == 0:
            parts = parts[:1]  # too short: msgspec.ValidationError
        elif shape == 1:
            parts[0] = "1.5"  # a number, not a string
        elif shape in (2, 3):
            parts += ['"0"', '"4"']  # OKX's extra elements
        elif shape == 4:
            parts += ["7", "null"]  # extra elements of other types
        sep = draw(ws) + "," + draw(ws)
        levels.append("[" + draw(ws) + sep.join(parts) + draw(ws) + "]")
    body = draw(ws) + "[" + draw(ws) + ("," + draw(ws)).join(levels) + draw(ws) + "]" + draw(ws)
    if draw(st.integers(0, 19)) == 0:
        body += draw(st.sampled_from(["x", "]", ","]))  # trailing garbage: msgspec.DecodeError
    return body.encode()


@needs_compiled
@settings(max_examples=400, deadline=None)
@given(
    ops=st.lists(
        st.tuples(st.sampled_from(["apply_raw", "load_raw", "apply"]), _raw_levels(), _raw_levels()), max_size=12
    ),
    window=st.sampled_from([4, 8, l2.DEFAULT_WINDOW]),
    raw_type=st.sampled_from([bytes, msgspec.Raw, bytearray]),
)
def test_compiled_and_python_agree_on_any_json(ops, window, raw_type):
    """Generated level arrays (odd spellings, respelled prices, malformed JSON, escapes, extra elements):
    the same result or the same exception, then the same book, byte for byte."""
    pure, fast = L2Book(window), L2Book(window)
    for name, bids, asks in ops:
        if name == "apply":

            def op(book: L2Book, bids: bytes = bids, asks: bytes = asks) -> None:
                book.apply(msgspec.json.decode(bids), msgspec.json.decode(asks))

        else:

            def op(book: L2Book, name: str = name, bids: bytes = bids, asks: bytes = asks) -> None:
                getattr(book, name)(raw_type(bids), raw_type(asks))

        _same_after(op, pure, fast)


@needs_compiled
def test_compiled_crc32_is_zlibs():
    assert COMPILED is not None
    data = bytes(range(256)) * 5
    for start in range(9):
        for n in (0, 1, 7, 8, 9, 15, 16, 17, 63, 64, 65, 1000):
            chunk = memoryview(data)[start : start + n]
            assert COMPILED.crc32(chunk) == zlib.crc32(chunk)
    book = L2Book()
    book.load(bids=[("\u0661", "2")], asks=[("3", "4")])  # non-ASCII (float() reads it 1): UTF-8 in the checksum
    assert _run(COMPILED, book.okx_checksum) == _run(None, book.okx_checksum)
