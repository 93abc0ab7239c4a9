"""Parsers over every recorded Binance, OKX and Bybit WebSocket fixture: golden counts, keys, round trips.

Per-venue field-by-field checks, malformed frames and subscribe messages are in ``test_parsers_<venue>.py``.
Fixtures are read in place from ``../shared/fixtures`` (``MARKETPRISM_FIXTURES`` overrides); tests that need
them skip with the path they tried when the folder is absent.
"""

from __future__ import annotations

import collections
import gzip
import re
from dataclasses import dataclass

import msgspec
import orjson
import pytest

from marketprism.records import (
    QUOTE_ASSETS,
    RECORD_TYPES,
    DataType,
    Depth,
    Exchange,
    Market,
    Record,
    Status,
    SymbolError,
    Ticker,
    Trade,
    split_concatenated,
    split_dashed,
)
from marketprism.venues import VENUES, ParseError, get_venue
from marketprism.venues.base import Subscription, chunks
from tests.fixtures_util import FIXTURES, fixture_path, frames_of, raw_ws_lines, requires_fixtures

# --------------------------------------------------------------------------------------------------------
# Golden counts, hard-coded per file and per (data_type, market, symbol).
# ``frames`` = received frames (raw recordings: "<epoch>: <frame>" lines only; connect and sent lines
# skipped); ``ignored`` = frames that yield no record (kline streams, subscribe acks).


@dataclass(frozen=True)
class Golden:
    venue: str
    frames: int
    ignored: int
    counts: dict[tuple[str, str, str], int]


GOLDEN: dict[str, Golden] = {
    "binance/spot_cryptofeed_2021-10-12.ws.raw.txt": Golden("binance_spot", frames=265, ignored=2, counts={
        ("depth", "spot", "NKN-USDT"): 150, ("depth", "spot", "LRC-BTC"): 15,
        ("depth", "spot", "BLZ-ETH"): 10, ("depth", "spot", "RUNE-EUR"): 2,
        ("ticker", "spot", "NKN-USDT"): 74, ("ticker", "spot", "LRC-BTC"): 9,
        ("ticker", "spot", "BLZ-ETH"): 1,
        ("trade", "spot", "NKN-USDT"): 1, ("trade", "spot", "LRC-BTC"): 1,
    }),
    "binance/usdm_cryptofeed_2021-07-22.ws.raw.txt": Golden("binance_usdm", frames=1535, ignored=67, counts={
        ("depth", "perpetual", "SUSHI-USDT"): 255, ("depth", "perpetual", "AKRO-USDT"): 189,
        ("depth", "perpetual", "KEEP-USDT"): 135, ("depth", "perpetual", "CTK-USDT"): 185,
        ("ticker", "perpetual", "SUSHI-USDT"): 305, ("ticker", "perpetual", "CTK-USDT"): 145,
        ("ticker", "perpetual", "AKRO-USDT"): 88, ("ticker", "perpetual", "KEEP-USDT"): 75,
        ("trade", "perpetual", "SUSHI-USDT"): 40, ("trade", "perpetual", "CTK-USDT"): 38,
        ("trade", "perpetual", "AKRO-USDT"): 8, ("trade", "perpetual", "KEEP-USDT"): 5,
    }),
    "okx/okx_cryptofeed_2022-05-13.ws.raw.txt": Golden("okx_spot", frames=410, ignored=18, counts={
        ("depth", "spot", "BTC-USDT"): 98, ("depth", "perpetual", "UNI-USD"): 93,
        ("depth", "future", "BTC-USD"): 99,
        ("trade", "spot", "BTC-USDT"): 69, ("trade", "perpetual", "UNI-USD"): 1,
        ("trade", "future", "BTC-USD"): 4,
        ("ticker", "spot", "BTC-USDT"): 25, ("ticker", "perpetual", "UNI-USD"): 1,
        ("ticker", "future", "BTC-USD"): 2,
    }),
    "binance/spot_aggTrade_2021-10-12.jsonl": Golden("binance_spot", frames=2, ignored=0, counts={
        ("trade", "spot", "NKN-USDT"): 1, ("trade", "spot", "LRC-BTC"): 1,
    }),
    "binance/spot_bookTicker_2021-10-12.jsonl": Golden("binance_spot", frames=84, ignored=0, counts={
        ("ticker", "spot", "NKN-USDT"): 74, ("ticker", "spot", "LRC-BTC"): 9,
        ("ticker", "spot", "BLZ-ETH"): 1,
    }),
    "binance/spot_bookTicker_BTCUSDT_2024-08-08_first500.jsonl": Golden(
        "binance_spot", frames=500, ignored=0, counts={("ticker", "spot", "BTC-USDT"): 500}),
    "binance/spot_depthUpdate_BTCUSDT_2024-08-08_first400.jsonl": Golden(
        "binance_spot", frames=400, ignored=0, counts={("depth", "spot", "BTC-USDT"): 400}),
    "binance/spot_depthUpdate_NKNUSDT_2021-10-12.jsonl": Golden(
        "binance_spot", frames=150, ignored=0, counts={("depth", "spot", "NKN-USDT"): 150}),
    "binance/spot_depthUpdate_all4symbols_2021-10-12.jsonl": Golden(
        "binance_spot", frames=177, ignored=0, counts={
        ("depth", "spot", "NKN-USDT"): 150, ("depth", "spot", "LRC-BTC"): 15,
        ("depth", "spot", "BLZ-ETH"): 10, ("depth", "spot", "RUNE-EUR"): 2,
    }),
    "binance/spot_trade_BTCUSDT_2024-08-08_first500.jsonl": Golden(
        "binance_spot", frames=500, ignored=0, counts={("trade", "spot", "BTC-USDT"): 500}),
    "binance/usdm_aggTrade_2021-07-22.jsonl": Golden("binance_usdm", frames=91, ignored=0, counts={
        ("trade", "perpetual", "SUSHI-USDT"): 40, ("trade", "perpetual", "CTK-USDT"): 38,
        ("trade", "perpetual", "AKRO-USDT"): 8, ("trade", "perpetual", "KEEP-USDT"): 5,
    }),
    "binance/usdm_bookTicker_2021-07-22.jsonl": Golden("binance_usdm", frames=613, ignored=0, counts={
        ("ticker", "perpetual", "SUSHI-USDT"): 305, ("ticker", "perpetual", "CTK-USDT"): 145,
        ("ticker", "perpetual", "AKRO-USDT"): 88, ("ticker", "perpetual", "KEEP-USDT"): 75,
    }),
    "binance/usdm_bookTicker_BTCUSDT_2024-08-08_first500.jsonl": Golden(
        "binance_usdm", frames=500, ignored=0, counts={("ticker", "perpetual", "BTC-USDT"): 500}),
    "binance/usdm_depthUpdate_BTCUSDT_2024-08-08_first400.jsonl": Golden(
        "binance_usdm", frames=400, ignored=0, counts={("depth", "perpetual", "BTC-USDT"): 400}),
    "binance/usdm_depthUpdate_SUSHIUSDT_2021-07-22.jsonl": Golden(
        "binance_usdm", frames=255, ignored=0, counts={("depth", "perpetual", "SUSHI-USDT"): 255}),
    "binance/usdm_trade_BTCUSDT_2024-08-08_first500.jsonl": Golden(
        "binance_usdm", frames=500, ignored=0, counts={("trade", "perpetual", "BTC-USDT"): 500}),
    "okx/books_BTC-USDT_2022-05-13.jsonl": Golden(
        "okx_spot", frames=98, ignored=0, counts={("depth", "spot", "BTC-USDT"): 98}),
    "okx/books_UNI-USD-SWAP_2022-05-13.jsonl": Golden(
        "okx_swap", frames=93, ignored=0, counts={("depth", "perpetual", "UNI-USD"): 93}),
    "okx/books_BTC-USD-220527_2022-05-13.jsonl": Golden(
        "okx_swap", frames=99, ignored=0, counts={("depth", "future", "BTC-USD"): 99}),
    "okx/trades_2022-05-13.jsonl": Golden("okx_spot", frames=74, ignored=0, counts={
        ("trade", "spot", "BTC-USDT"): 69, ("trade", "perpetual", "UNI-USD"): 1,
        ("trade", "future", "BTC-USD"): 4,
    }),
    "okx/tickers_2022-05-13.jsonl": Golden("okx_spot", frames=28, ignored=0, counts={
        ("ticker", "spot", "BTC-USDT"): 25, ("ticker", "perpetual", "UNI-USD"): 1,
        ("ticker", "future", "BTC-USD"): 2,
    }),
    "okx/ws_subscribe_events_2022-05-13.jsonl": Golden("okx_spot", frames=18, ignored=18, counts={}),
    "bybit/v5_orderbook500_XRPUSDT_2024-12-01.jsonl": Golden(
        "bybit_linear", frames=50, ignored=0, counts={("depth", "perpetual", "XRP-USDT"): 50}),
}  # fmt: skip

# Totals exactly as SOURCES.md states them (section in the comment), independent of the table above.
SOURCES_STATED: dict[str, dict[str, int]] = {
    # §2.1 "265 frames ...: 177 depthUpdate, 84 bookTicker, 2 aggTrade, 2 kline"
    "binance/spot_cryptofeed_2021-10-12.ws.raw.txt": {
        "frames": 265,
        "depth": 177,
        "ticker": 84,
        "trade": 2,
        "ignored": 2,
    },
    # §2.2 "1,535 frames ...: 764 depth, 613 bookTicker, 91 aggTrade, 67 kline"
    "binance/usdm_cryptofeed_2021-07-22.ws.raw.txt": {
        "frames": 1535,
        "depth": 764,
        "ticker": 613,
        "trade": 91,
        "ignored": 67,
    },
    # §2.4 "18 {"event":"subscribe"} acks, 290 books pushes, 74 trades and 28 tickers" (+3 sent frames)
    "okx/okx_cryptofeed_2022-05-13.ws.raw.txt": {
        "frames": 410,
        "depth": 290,
        "trade": 74,
        "ticker": 28,
        "ignored": 18,
    },
    "binance/spot_aggTrade_2021-10-12.jsonl": {"frames": 2, "trade": 2},
    "binance/spot_bookTicker_2021-10-12.jsonl": {"frames": 84, "ticker": 84},
    "binance/spot_bookTicker_BTCUSDT_2024-08-08_first500.jsonl": {"frames": 500, "ticker": 500},
    "binance/spot_depthUpdate_BTCUSDT_2024-08-08_first400.jsonl": {"frames": 400, "depth": 400},
    "binance/spot_depthUpdate_NKNUSDT_2021-10-12.jsonl": {"frames": 150, "depth": 150},
    "binance/spot_depthUpdate_all4symbols_2021-10-12.jsonl": {"frames": 177, "depth": 177},
    "binance/spot_trade_BTCUSDT_2024-08-08_first500.jsonl": {"frames": 500, "trade": 500},
    "binance/usdm_aggTrade_2021-07-22.jsonl": {"frames": 91, "trade": 91},
    "binance/usdm_bookTicker_2021-07-22.jsonl": {"frames": 613, "ticker": 613},
    "binance/usdm_bookTicker_BTCUSDT_2024-08-08_first500.jsonl": {"frames": 500, "ticker": 500},
    "binance/usdm_depthUpdate_BTCUSDT_2024-08-08_first400.jsonl": {"frames": 400, "depth": 400},
    "binance/usdm_depthUpdate_SUSHIUSDT_2021-07-22.jsonl": {"frames": 255, "depth": 255},
    "binance/usdm_trade_BTCUSDT_2024-08-08_first500.jsonl": {"frames": 500, "trade": 500},
    "okx/books_BTC-USDT_2022-05-13.jsonl": {"frames": 98, "depth": 98, "snapshots": 1},
    "okx/books_UNI-USD-SWAP_2022-05-13.jsonl": {"frames": 93, "depth": 93, "snapshots": 1},
    "okx/books_BTC-USD-220527_2022-05-13.jsonl": {"frames": 99, "depth": 99, "snapshots": 1},
    "okx/trades_2022-05-13.jsonl": {"frames": 74, "trade": 74},
    "okx/tickers_2022-05-13.jsonl": {"frames": 28, "ticker": 28},
    "okx/ws_subscribe_events_2022-05-13.jsonl": {"frames": 18, "ignored": 18},
    "bybit/v5_orderbook500_XRPUSDT_2024-12-01.jsonl": {"frames": 50, "depth": 50, "snapshots": 1},
}

FILES = sorted(GOLDEN)
VENUE_DIRS = ("binance", "okx", "bybit")
RECV_TS = 1_700_000_000_123_456


@dataclass
class Parsed:
    frames: list[tuple[int, str]]
    per_frame: list[list[Record]]

    @property
    def records(self) -> list[Record]:
        return [r for recs in self.per_frame for r in recs]


_parsed_cache: dict[str, Parsed] = {}


def parse_file(rel: str) -> Parsed:
    """Every frame of a fixture through a fresh parser of the file's venue (cached per file)."""
    if rel not in _parsed_cache:
        frames = list(frames_of(rel))
        parser = VENUES[GOLDEN[rel].venue].new_parser()
        _parsed_cache[rel] = Parsed(frames, [parser.parse(frame, ts) for ts, frame in frames])
    return _parsed_cache[rel]


def _kind_counts(parsed: Parsed) -> collections.Counter[str]:
    c: collections.Counter[str] = collections.Counter()
    for recs in parsed.per_frame:
        if not recs:
            c["ignored"] += 1
        for r in recs:
            c[str(r.data_type)] += 1
            if isinstance(r, Depth) and r.is_snapshot:
                c["snapshots"] += 1
    return c


# --- coverage of the fixture folder -------------------------------------------------------------------------


@requires_fixtures
def test_every_websocket_fixture_file_of_binance_okx_bybit_is_covered():
    """A WS fixture added later fails here until it gets golden counts. REST bodies are out of scope."""
    on_disk = {
        str(p.relative_to(FIXTURES))
        for d in VENUE_DIRS
        for pattern in ("*.jsonl", "*.ws.raw.txt")
        for p in (FIXTURES / d).glob(pattern)
    }
    assert on_disk == set(GOLDEN)


@pytest.mark.parametrize("rel", FILES)
def test_golden_table_agrees_with_sources_md(rel):
    """The hard-coded per-symbol table sums to the totals SOURCES.md states (no parser involved)."""
    golden, stated = GOLDEN[rel], SOURCES_STATED[rel]
    sums: collections.Counter[str] = collections.Counter()
    for (data_type, _market, _symbol), n in golden.counts.items():
        sums[data_type] += n
    assert golden.frames == stated["frames"]
    for kind in ("depth", "ticker", "trade"):
        assert sums[kind] == stated.get(kind, 0), kind
    assert golden.ignored == stated.get("ignored", 0)


# --- counts ----------------------------------------------------------------------------------------------


@requires_fixtures
@pytest.mark.parametrize("rel", FILES)
def test_parser_counts_match_golden(rel):
    golden, parsed = GOLDEN[rel], parse_file(rel)
    assert len(parsed.frames) == golden.frames
    counts = collections.Counter((str(r.data_type), r.market, r.symbol) for r in parsed.records)
    assert dict(counts) == golden.counts
    kinds = _kind_counts(parsed)
    assert kinds["ignored"] == golden.ignored
    if "snapshots" in SOURCES_STATED[rel]:
        assert kinds["snapshots"] == SOURCES_STATED[rel]["snapshots"]


def _independent_count(rel: str, frame: str) -> list[tuple[str, str]]:
    """(data_type, venue instrument) per record a frame should give, from orjson and the venue docs only."""
    obj = orjson.loads(frame)
    if rel.startswith("binance/"):
        channel = obj["stream"].split("@", 1)[1]
        kind = ("trade" if channel in ("trade", "aggTrade") else "depth" if channel.startswith("depth")
                else "ticker" if channel == "bookTicker" else None)  # fmt: skip
        return [(kind, obj["data"]["s"])] if kind else []
    if rel.startswith("okx/"):
        if "event" in obj:
            return []
        channel, inst = obj["arg"]["channel"], obj["arg"]["instId"]
        kind = {"books": "depth", "trades": "trade", "tickers": "ticker"}[channel]
        return [(kind, item.get("instId", inst)) for item in obj["data"]]
    assert rel.startswith("bybit/")
    kind = {"orderbook": "depth", "publicTrade": "trade", "tickers": "ticker"}[obj["topic"].split(".")[0]]
    return [(kind, obj["data"]["s"])]


@requires_fixtures
@pytest.mark.parametrize("rel", FILES)
def test_parser_counts_match_an_independent_orjson_count(rel):
    parsed = parse_file(rel)
    expected = collections.Counter(k for _, frame in parsed.frames for k in _independent_count(rel, frame))
    got = collections.Counter((str(r.data_type), r.instrument) for r in parsed.records)
    assert got == expected
    # frame by frame too: the same number of records from each frame
    for (_, frame), recs in zip(parsed.frames, parsed.per_frame, strict=True):
        assert len(recs) == len(_independent_count(rel, frame)), frame[:120]


@requires_fixtures
@pytest.mark.parametrize(
    ("rel", "connects", "sent"),
    [
        ("binance/spot_cryptofeed_2021-10-12.ws.raw.txt", 1, 0),
        ("binance/usdm_cryptofeed_2021-07-22.ws.raw.txt", 1, 0),
        ("okx/okx_cryptofeed_2022-05-13.ws.raw.txt", 1, 3),
    ],
)
def test_raw_recordings_line_kinds(rel, connects, sent):
    kinds = collections.Counter(kind for kind, _, _ in raw_ws_lines(rel))
    assert kinds == collections.Counter(connect=connects, sent=sent, recv=GOLDEN[rel].frames)
    # receive times are epoch seconds inside the recording's window and never go backwards
    times = [epoch for kind, epoch, _ in raw_ws_lines(rel) if kind == "recv"]
    assert times == sorted(times)
    assert times[-1] - times[0] < 60


# --- per-record invariants ---------------------------------------------------------------------------

_SUBJECT_TOKEN = re.compile(r"^[A-Za-z0-9_-]+$")


@requires_fixtures
@pytest.mark.parametrize("rel", FILES)
def test_natural_keys_are_unique_per_file(rel):
    keys = [r.natural_key() for r in parse_file(rel).records]
    dupes = [k for k, n in collections.Counter(keys).items() if n > 1]
    assert not dupes


@requires_fixtures
@pytest.mark.parametrize("rel", FILES)
def test_subjects_and_common_fields(rel):
    venue = VENUES[GOLDEN[rel].venue]
    for r in parse_file(rel).records:
        tokens = r.subject().split(".")
        assert tokens == ["md", str(r.data_type), r.exchange, r.market, r.symbol]
        assert all(_SUBJECT_TOKEN.match(t) for t in tokens), r.subject()
        assert r.exchange == venue.exchange.value
        assert r.market in {m.value for m in Market}
        assert r.symbol.count("-") == 1 and r.symbol == r.symbol.upper()
        assert isinstance(r.ts, int) and isinstance(r.recv_ts, int)
        assert 1_500_000_000_000_000 < r.ts < 2_000_000_000_000_000  # µs since the epoch, 2017..2033


@requires_fixtures
@pytest.mark.parametrize("rel", FILES)
def test_msgspec_json_round_trip_of_every_record(rel):
    encode = msgspec.json.Encoder().encode
    for r in parse_file(rel).records:
        cls = RECORD_TYPES[r.data_type]
        assert type(r) is cls
        payload = encode(r)
        assert payload == msgspec.json.encode(r)
        assert msgspec.json.decode(payload, type=cls) == r
        sent = set(orjson.loads(payload))
        for field in msgspec.structs.fields(cls):  # a field is omitted only when it equals its default
            assert field.name in sent or getattr(r, field.name) == field.default, field.name


@requires_fixtures
@pytest.mark.parametrize("rel", FILES)
def test_bytes_frames_give_the_same_records_as_text(rel):
    parsed = parse_file(rel)
    parser = VENUES[GOLDEN[rel].venue].new_parser()
    for (ts, frame), recs in zip(parsed.frames, parsed.per_frame, strict=True):
        assert parser.parse(frame.encode(), ts) == recs


def test_round_trip_of_each_record_type_built_by_hand():
    common = dict(exchange="okx", market="perpetual", symbol="BTC-USDT", instrument="BTC-USDT-SWAP",
                  ts=1_652_459_225_000_000, recv_ts=1_652_459_225_001_234)  # fmt: skip
    records = [
        Trade(**common, trade_id="7849", price="30218.8", size="1", side="buy"),
        Trade(
            **common,
            trade_id="16599292",
            price="1.01100",
            size="10",
            side="sell",
            aggregate=True,
            first_trade_id=23961322,
            last_trade_id=23961325,
        ),
        Depth(
            **common,
            is_snapshot=True,
            bids=Depth.levels([("30218.8", "1.5")]),
            asks=Depth.levels([]),
            seq=10,
            prev_seq=-1,
            checksum=-9,
        ),
        Depth(
            **common,
            is_snapshot=False,
            bids=Depth.levels([]),
            asks=Depth.levels([("1", "0")]),
            seq=2**62,
            first_seq=1,
            cross_seq=3,
        ),
        Ticker(**common, bid_price="1", bid_size="2", ask_price="3", ask_size="4", seq=9, last_price="2"),
        Ticker(**common, bid_price="", bid_size="", ask_price="", ask_size=""),
        Status(**common, event="disconnected", connection="okx_swap:0:3", reason="ping timeout"),
    ]
    for r in records:
        payload = msgspec.json.Encoder().encode(r)
        assert msgspec.json.decode(payload, type=type(r)) == r
    assert records[0].natural_key() == "trade:okx:perpetual:BTC-USDT:7849"
    assert records[1].natural_key() == "aggtrade:okx:perpetual:BTC-USDT:16599292"
    assert records[2].natural_key() == "depth:okx:perpetual:BTC-USDT:snap:10"
    assert records[5].natural_key() == "ticker:okx:perpetual:BTC-USDT:1652459225000000"
    assert records[6].natural_key() == "status:okx:perpetual:BTC-USDT:okx_swap:0:3:disconnected"
    assert records[6].subject() == "md.status.okx.perpetual.BTC-USDT"
    no_seq = Depth(**common, is_snapshot=False, bids=Depth.levels([]), asks=Depth.levels([]), checksum=47640993)
    assert no_seq.natural_key() == "depth:okx:perpetual:BTC-USDT:upd:1652459225000000:47640993"


# --- symbol normalisation ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("instrument", "symbol"),
    [
        ("BTCUSDT", "BTC-USDT"), ("btcusdt", "BTC-USDT"), ("ETHBTC", "ETH-BTC"), ("NKNUSDT", "NKN-USDT"),
        ("BLZETH", "BLZ-ETH"), ("LRCBTC", "LRC-BTC"), ("RUNEEUR", "RUNE-EUR"), ("XRPUSDT", "XRP-USDT"),
        ("ETHFDUSD", "ETH-FDUSD"),  # not ETHFD-USD: longest quote wins
        ("BTCTUSD", "BTC-TUSD"), ("BTCUSDC", "BTC-USDC"), ("XRPBUSD", "XRP-BUSD"), ("BTCUSD", "BTC-USD"),
        ("USDCUSDT", "USDC-USDT"), ("USDTTRY", "USDT-TRY"), ("1000SHIBUSDT", "1000SHIB-USDT"),
        ("BNBETH", "BNB-ETH"), ("DOGEBTC", "DOGE-BTC"), ("BTCAEUR", "BTC-AEUR"),
    ],
)  # fmt: skip
def test_split_concatenated(instrument, symbol):
    assert split_concatenated(instrument) == symbol


@pytest.mark.parametrize("instrument", ["", "USDT", "BTC", "FOOBAR", "usd", "BTCUSDT_240927"])
def test_split_concatenated_rejects(instrument):
    with pytest.raises(SymbolError, match="cannot split"):
        split_concatenated(instrument)
    assert issubclass(SymbolError, ValueError)


def test_split_concatenated_known_map_wins():
    known = {"ADAEUR": "ADA-EUR", "WBTCBTC": "WBTC-BTC"}
    assert split_concatenated("ADAEUR", known) == "ADA-EUR"
    assert split_concatenated("adaeur", known) == "ADA-EUR"
    assert split_concatenated("BTCUSDT", known) == "BTC-USDT"  # not in the map: suffix rule


def test_quote_assets_are_ordered_longest_first():
    lengths = [len(q) for q in QUOTE_ASSETS]
    assert lengths == sorted(lengths, reverse=True)
    assert len(set(QUOTE_ASSETS)) == len(QUOTE_ASSETS)


def _exchange_info_symbols() -> list[tuple[str, str, str]]:
    """(file, instrument, BASE-QUOTE) for every TRADING symbol of both Binance exchangeInfo bodies."""
    out = []
    for rel in ("binance/spot_rest_exchangeInfo_full_2021-10-12.json.gz",
                "binance/usdm_rest_exchangeInfo_full_2021-07-22.json"):  # fmt: skip
        raw = fixture_path(rel).read_bytes()
        info = orjson.loads(gzip.decompress(raw) if rel.endswith(".gz") else raw)
        for s in info["symbols"]:
            if s.get("status") == "TRADING" and "_" not in s["symbol"]:  # USD-M quarterlies: BTCUSDT_210924
                out.append((rel, s["symbol"], f"{s['baseAsset']}-{s['quoteAsset']}"))
    return out


# Instruments where the longest-quote-suffix rule cannot know the answer: "AEUR" is itself a quote asset.
AMBIGUOUS_WITHOUT_EXCHANGE_INFO = {"ADAEUR", "LUNAEUR", "THETAEUR"}


@requires_fixtures
def test_split_concatenated_agrees_with_exchange_info_except_aeur_ambiguity():
    rows = _exchange_info_symbols()
    assert len(rows) > 1000
    got = {inst: split_concatenated(inst) for _, inst, _ in rows}
    wrong = {inst: (got[inst], sym) for _, inst, sym in rows if got[inst] != sym}
    assert set(wrong) == AMBIGUOUS_WITHOUT_EXCHANGE_INFO, wrong
    known = {inst: sym for _, inst, sym in rows}
    assert all(split_concatenated(inst, known) == sym for _, inst, sym in rows)


def test_binance_parser_seeded_with_subscription_symbols_gets_ambiguous_instruments_right():
    """ADAEUR is ADA-EUR, but the suffix rule alone says AD-AEUR (AEUR is a quote asset): the parser takes
    the subscriptions' instrument -> symbol map (the user wrote "ADA-EUR")."""
    venue = VENUES["binance_spot"]
    subs = venue.subscriptions(["ADA-EUR", "BTC-AEUR"], [DataType.TRADE])
    assert [(s.instrument, s.symbol) for s in subs] == [("ADAEUR", "ADA-EUR"), ("BTCAEUR", "BTC-AEUR")]
    parser = venue.new_parser({s.instrument: s.symbol for s in subs})
    for inst, symbol in (("ADAEUR", "ADA-EUR"), ("BTCAEUR", "BTC-AEUR"), ("ETHUSDT", "ETH-USDT")):
        frame = (f'{{"stream":"{inst.lower()}@trade","data":{{"e":"trade","E":1,"s":"{inst}","t":1,'
                 '"p":"1.0","q":"2.0","T":1,"m":true,"M":true}}')  # fmt: skip
        (rec,) = parser.parse(frame, RECV_TS)
        assert rec.symbol == symbol


@pytest.mark.parametrize(
    ("instrument", "symbol"),
    [
        ("BTC-USDT", "BTC-USDT"), ("BTC-USDT-SWAP", "BTC-USDT"), ("BTC-USD-220527", "BTC-USD"),
        ("UNI-USD-SWAP", "UNI-USD"), ("btc-usdt-swap", "BTC-USDT"), ("BTC-USD-220527-30000-C", "BTC-USD"),
    ],
)  # fmt: skip
def test_split_dashed(instrument, symbol):
    assert split_dashed(instrument) == symbol


@pytest.mark.parametrize("instrument", ["", "BTCUSDT", "-USDT", "BTC-", "-", "--SWAP"])
def test_split_dashed_rejects(instrument):
    with pytest.raises(SymbolError, match="cannot split"):
        split_dashed(instrument)


# --- venue declarations ---------------------------------------------------------------------------------

SYMBOLS = ["BTC-USDT", "ETH-USDT", "ETH-FDUSD", "1000SHIB-USDT", "NKN-USDT", "LRC-BTC"]


def test_registry():
    assert set(VENUES) == {"binance_spot", "binance_usdm", "okx_spot", "okx_swap", "bybit_linear"}
    for name, venue in VENUES.items():
        assert venue.name == name and get_venue(name) is venue
        assert venue.url().startswith("wss://") and venue.url().endswith(venue.ws_path)
        assert venue.url("ws://127.0.0.1:8765/") == "ws://127.0.0.1:8765" + venue.ws_path
        # trades, books and tickers everywhere; derivatives streams where the venue has them (test_parsers_derivs)
        assert {DataType.TRADE, DataType.DEPTH, DataType.TICKER} <= set(venue.channels)
        assert venue.limits.args_per_subscribe <= venue.limits.streams_per_connection
    with pytest.raises(ValueError, match="unknown venue 'nope'"):
        get_venue("nope")


@pytest.mark.parametrize("name", sorted(VENUES))
def test_subscriptions_are_symbol_major_with_venue_ids(name):
    venue = VENUES[name]
    types = [DataType.TRADE, DataType.DEPTH, DataType.TICKER]
    subs = venue.subscriptions(SYMBOLS[:2], types)
    assert all(isinstance(s, Subscription) for s in subs)
    assert [(s.data_type, s.channel, s.instrument, s.symbol) for s in subs] == [
        (dt, venue.channels[dt], venue.to_instrument(sym), sym) for sym in SYMBOLS[:2] for dt in types
    ]

    assert venue.subscriptions([], types) == []
    with pytest.raises(ValueError, match=f"{name} has no channel for data type.*status"):
        venue.subscriptions(SYMBOLS[:1], [DataType.TRADE, DataType.STATUS])


@pytest.mark.parametrize(
    ("name", "venue_id"),
    [
        ("binance_spot", "ETHBTC"),
        ("binance_usdm", "ETHBTC"),
        ("bybit_linear", "ETHBTC"),
        ("okx_spot", "ETH-BTC"),
        ("okx_spot", "ETH-BTC-SWAP"),
        ("okx_swap", "ETH-BTC-SWAP"),
        ("okx_swap", "eth-btc-swap"),
    ],
)
def test_subscription_symbol_from_a_venue_id(name, venue_id):
    """A venue id is accepted where a symbol is expected; the subscription's symbol is still BASE-QUOTE."""
    (sub,) = VENUES[name].subscriptions([venue_id], [DataType.TRADE])
    assert (sub.instrument, sub.symbol) == (venue_id.upper(), "ETH-BTC")


@pytest.mark.parametrize("name", sorted(VENUES))
def test_to_instrument_round_trips_through_the_parser_normalisation(name):
    venue = VENUES[name]
    split = split_dashed if venue.exchange is Exchange.OKX else split_concatenated
    for symbol in SYMBOLS:
        assert split(venue.to_instrument(symbol)) == symbol
        assert venue.to_instrument(symbol.lower()) == venue.to_instrument(symbol)


@pytest.mark.parametrize("name", sorted(VENUES))
def test_subscribe_messages_chunk_by_args_per_subscribe(name):
    venue = VENUES[name]
    per = venue.limits.args_per_subscribe
    symbols = [f"C{i}-USDT" for i in range(per + 1)]  # per+1 trade subscriptions -> two requests
    subs = venue.subscriptions(symbols, [DataType.TRADE])
    for make in (venue.subscribe_messages, venue.unsubscribe_messages):
        msgs = [orjson.loads(m) for m in make(subs, 1)]
        arg_key = "params" if venue.exchange is Exchange.BINANCE else "args"
        assert [len(m[arg_key]) for m in msgs] == [per, 1]
        assert make([], 1) == []
    assert [len(c) for c in chunks(subs, per)] == [per, 1]


def test_parse_error_names_the_venue_and_truncates_the_frame():
    err = ParseError("okx_spot", "bad books payload", "x" * 10_000)
    assert str(err).startswith("okx_spot: bad books payload: 'xxx")
    assert len(str(err)) < 250 and err.venue == "okx_spot" and err.reason == "bad books payload"
    assert isinstance(err, ValueError)
    assert "\\xff" not in str(ParseError("b", "r", b"\xff\xfe"))  # bytes are decoded with replacement


def _malformed_levels() -> list[tuple[str, str, str]]:
    from tests import test_parsers_binance, test_parsers_bybit, test_parsers_okx

    modules = (
        (test_parsers_binance, ("binance_spot", "binance_usdm")),
        (test_parsers_bybit, ("bybit_linear",)),
        (test_parsers_okx, ("okx_spot", "okx_swap")),
    )
    cases = []
    for module, venues in modules:
        cases += [(venue, case, frame) for venue in venues for case, frame in module.MALFORMED_LEVELS.items()]
    return cases


@pytest.mark.parametrize(("venue", "case", "frame"), _malformed_levels())
def test_malformed_levels_are_kept_raw_and_rejected_when_decoded(venue, case, frame):
    """Depth levels stay the venue's raw JSON in the collector; Depth.bid_levels()/ask_levels() check them."""
    (depth,) = VENUES[venue].new_parser().parse(frame, RECV_TS)
    assert bytes(depth.bids) in frame.encode() and bytes(depth.asks) in frame.encode()  # byte-exact
    if "3 items" in case:  # extra elements after [price, size] are allowed (OKX sends 4)
        levels = depth.bid_levels() + depth.ask_levels()
        assert sum(len(level) == 3 for level in levels) == 1 and all(len(level) >= 2 for level in levels)
    else:
        with pytest.raises(ValueError, match="malformed depth level"):
            depth.bid_levels() + depth.ask_levels()


@pytest.mark.parametrize(
    ("venue", "frame"),
    [
        ("binance_spot", '{"error":{"code":2,"msg":"Invalid request"},"id":1}'),
        ("okx_spot", '{"event":"error","code":"60012","msg":"Invalid request"}'),
        ("bybit_linear", '{"success":false,"ret_msg":"error:handler not found","op":"subscribe"}'),
    ],
)
def test_venue_error_replies_carry_their_own_error_code(venue, frame):
    """An operator must tell "the venue refused us" from "the venue sent garbage" (errors taxonomy)."""
    with pytest.raises(ParseError) as info:
        VENUES[venue].new_parser().parse(frame, RECV_TS)
    assert info.value.code == "PARSE_VENUE_ERROR"
    with pytest.raises(ParseError) as info:
        VENUES[venue].new_parser().parse(frame[:-2], RECV_TS)
    assert info.value.code == "PARSE_MALFORMED"
