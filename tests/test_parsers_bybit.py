"""Bybit v5 linear parser: the real orderbook.500 capture field by field, synthetic publicTrade and tickers
frames (documented v5 shape; no real capture exists, SOURCES.md §6), malformed and control frames."""

from __future__ import annotations

import itertools

import msgspec
import orjson
import pytest

from marketprism.records import DataType
from marketprism.venues import VENUES, ParseError
from tests.fixtures_util import frames_of, record_fields, requires_fixtures

RECV_TS = 1_733_011_201_000_000
BOOK_FILE = "bybit/v5_orderbook500_XRPUSDT_2024-12-01.jsonl"


def new_parser():
    return VENUES["bybit_linear"].new_parser()


def expected_depth(frame: str, recv_ts: int) -> dict:
    obj = orjson.loads(frame)
    d = obj["data"]
    return {"exchange": "bybit", "market": "perpetual", "symbol": "XRP-USDT", "instrument": d["s"],
            "ts": obj["ts"] * 1000, "recv_ts": recv_ts, "is_snapshot": obj["type"] == "snapshot",
            "bids": [tuple(lv) for lv in d["b"]], "asks": [tuple(lv) for lv in d["a"]], "seq": d["u"],
            "first_seq": None, "prev_seq": None, "cross_seq": d["seq"], "checksum": None}  # fmt: skip


@requires_fixtures
def test_orderbook_records_equal_the_source_frames():
    parser = new_parser()
    depths = []
    for recv_ts, frame in frames_of(BOOK_FILE):
        (d,) = parser.parse(frame, recv_ts)
        assert record_fields(d) == expected_depth(frame, recv_ts)
        for px, sz in d.bid_levels()[:3] + d.ask_levels()[:3]:
            assert f'["{px}","{sz}"]' in frame
        depths.append(d)
    assert [d.is_snapshot for d in depths] == [True] + [False] * 49
    assert (len(depths[0].bid_levels()), len(depths[0].ask_levels())) == (500, 500)
    assert [d.seq for d in depths] == list(range(20254869, 20254919))  # SOURCES.md §3: u is +1 per message
    assert all(b.cross_seq > a.cross_seq for a, b in itertools.pairwise(depths))


@requires_fixtures
def test_unknown_fields_are_ignored():
    parser = new_parser()
    frames = frames_of(BOOK_FILE)
    for recv_ts, frame in frames[::5]:
        want = parser.parse(frame, recv_ts)
        for variant in (
            frame.replace('"data":{', '"data":{"pn":5,"st":1,"zz":{"n":[1,{"k":null}]},', 1),
            "{" + '"id":"abc","zz":{"a":[1,2]},' + frame[1:],
            frame[:-1] + ',"zz":{"x":[true]}}',
        ):
            assert orjson.loads(variant)
            assert parser.parse(variant, recv_ts) == want


# --- synthetic frames in the documented v5 shape ----------------------------------------------------------

SYNTH_TRADES = (  # synthetic (documented v5 publicTrade shape)
    '{"topic":"publicTrade.BTCUSDT","type":"snapshot","ts":1672304486868,"data":['
    '{"T":1672304486865,"s":"BTCUSDT","S":"Buy","v":"0.001","p":"16578.50","L":"PlusTick",'
    '"i":"20f43950-d8dd-5b31-9112-a178eb6023af","BT":false},'
    '{"T":1672304486866,"s":"BTCUSDT","S":"Sell","v":"0.010","p":"16578.00","L":"MinusTick",'
    '"i":"20f43950-d8dd-5b31-9112-a178eb6023b0","BT":false,"RPI":false,"seq":1783284617}]}'
)


def test_synthetic_public_trades():
    trades = new_parser().parse(SYNTH_TRADES, RECV_TS)
    assert [msgspec.structs.asdict(t) for t in trades] == [
        {"exchange": "bybit", "market": "perpetual", "symbol": "BTC-USDT", "instrument": "BTCUSDT",
         "ts": 1672304486865000, "recv_ts": RECV_TS, "trade_id": "20f43950-d8dd-5b31-9112-a178eb6023af",
         "price": "16578.50", "size": "0.001", "side": "buy", "aggregate": False, "first_trade_id": None,
         "last_trade_id": None},
        {"exchange": "bybit", "market": "perpetual", "symbol": "BTC-USDT", "instrument": "BTCUSDT",
         "ts": 1672304486866000, "recv_ts": RECV_TS, "trade_id": "20f43950-d8dd-5b31-9112-a178eb6023b0",
         "price": "16578.00", "size": "0.010", "side": "sell", "aggregate": False, "first_trade_id": None,
         "last_trade_id": None},
    ]  # fmt: skip
    assert trades[0].natural_key() == "trade:bybit:perpetual:BTC-USDT:20f43950-d8dd-5b31-9112-a178eb6023af"


def _ticker(kind: str, cs: int, ts: int, symbol: str = "BTCUSDT", **fields: str) -> str:
    """A synthetic tickers push in the documented v5 linear shape (deltas carry only changed fields)."""
    return orjson.dumps({"topic": f"tickers.{symbol}", "type": kind, "data": {"symbol": symbol, **fields},
                         "cs": cs, "ts": ts}).decode()  # fmt: skip


SNAPSHOT_FIELDS = dict(
    tickDirection="PlusTick", price24hPcnt="0.017103", lastPrice="17216.00", prevPrice24h="16926.50",
    highPrice24h="17281.50", lowPrice24h="16915.00", markPrice="17217.33", indexPrice="17227.36",
    openInterest="68744.761", fundingRate="-0.000212", nextFundingTime="1673280000000",
    bid1Price="17215.50", bid1Size="84.489", ask1Price="17216.00", ask1Size="83.020",
)  # fmt: skip


def _bbo(t) -> tuple:
    return (t.bid_price, t.bid_size, t.ask_price, t.ask_size, t.last_price, t.seq, t.ts)


def _tickers(records: list) -> list:
    """Ticker records only: tickers also yields funding_rate and open_interest (test_parsers_derivs.py)."""
    return [r for r in records if r.data_type is DataType.TICKER]


def test_synthetic_tickers_snapshot_then_partial_deltas_are_merged():
    p = new_parser()
    (t,) = _tickers(p.parse(_ticker("snapshot", 100, 1673272861686, **SNAPSHOT_FIELDS), RECV_TS))
    assert t.data_type is DataType.TICKER
    assert (t.symbol, t.instrument, t.market) == ("BTC-USDT", "BTCUSDT", "perpetual")
    assert _bbo(t) == ("17215.50", "84.489", "17216.00", "83.020", "17216.00", 100, 1673272861686000)
    # only the bid moved: ask side and last price come from the snapshot
    (t,) = _tickers(p.parse(_ticker("delta", 101, 1673272861786, bid1Price="17215.00", bid1Size="87.321"), RECV_TS))
    assert _bbo(t) == ("17215.00", "87.321", "17216.00", "83.020", "17216.00", 101, 1673272861786000)
    # a delta that moves only mark price / funding is not a best bid/ask update
    assert _tickers(p.parse(_ticker("delta", 102, 1673272861886, markPrice="17213.08", fundingRate="-0.0002"), 0)) == []
    # last price alone: no record, but it is remembered
    assert _tickers(p.parse(_ticker("delta", 103, 1673272861986, lastPrice="17215.50"), RECV_TS)) == []
    # same best bid/ask repeated: no record
    assert _tickers(p.parse(_ticker("delta", 104, 1673272862086, bid1Price="17215.00"), RECV_TS)) == []
    (t,) = _tickers(p.parse(_ticker("delta", 105, 1673272862186, ask1Size="3.126"), RECV_TS))
    assert _bbo(t) == ("17215.00", "87.321", "17216.00", "3.126", "17215.50", 105, 1673272862186000)
    # another symbol has its own state: a delta before its snapshot gives nothing
    assert _tickers(p.parse(_ticker("delta", 7, 1673272862286, symbol="ETHUSDT", bid1Price="1200.1"), RECV_TS)) == []
    # a new snapshot replaces the state (fields missing from it are not carried over)
    partial = {k: v for k, v in SNAPSHOT_FIELDS.items() if k != "ask1Size"}
    assert _tickers(p.parse(_ticker("snapshot", 200, 1673272863000, **partial), RECV_TS)) == []
    (t,) = _tickers(p.parse(_ticker("delta", 201, 1673272863100, ask1Size="1.000"), RECV_TS))
    assert _bbo(t) == ("17215.50", "84.489", "17216.00", "1.000", "17216.00", 201, 1673272863100000)


def test_synthetic_orderbook_restart_snapshot_u_equals_1():
    frame = (
        '{"topic":"orderbook.50.BTCUSDT","type":"snapshot","ts":1687940967466,"data":{"s":"BTCUSDT",'
        '"b":[["30247.20","30.028"]],"a":[["30248.70","0.8"]],"u":1,"seq":7961638724},"cts":1687940967464}'
    )
    (d,) = new_parser().parse(frame, RECV_TS)
    assert (d.is_snapshot, d.seq, d.cross_seq, d.bid_levels(), d.ask_levels()) == (
        True,
        1,
        7961638724,
        [("30247.20", "30.028")],
        [("30248.70", "0.8")],
    )


# --- malformed frames -------------------------------------------------------------------------------------

BOOK = (
    '{"topic":"orderbook.50.XRPUSDT","type":"delta","ts":1733011200693,"data":{"s":"XRPUSDT",'
    '"b":[["1.9531","6198"]],"a":[["1.9532","10"]],"u":20254870,"seq":80000},"cts":1733011200690}'
)
TRADE = ('{"topic":"publicTrade.BTCUSDT","type":"snapshot","ts":1672304486868,"data":[{"T":1672304486865,'
         '"s":"BTCUSDT","S":"Buy","v":"0.001","p":"16578.50","i":"20f4"}]}')  # fmt: skip

MALFORMED = {
    "truncated half": BOOK[: len(BOOK) // 2],
    "truncated last brace": TRADE[:-1],
    "trailing garbage": BOOK + "}",
    "price as number": TRADE.replace('"p":"16578.50"', '"p":16578.5'),
    "size missing": TRADE.replace('"v":"0.001",', ""),
    "side missing": TRADE.replace('"S":"Buy",', ""),
    "trade time as string": TRADE.replace('"T":1672304486865', '"T":"1672304486865"'),
    "trade id as number": TRADE.replace('"i":"20f4"', '"i":204'),
    "trade data is an object": TRADE.replace('"data":[{', '"data":{').replace("}]}", "}}"),
    "update id as string": BOOK.replace('"u":20254870', '"u":"20254870"'),
    "update id missing": BOOK.replace(',"u":20254870', ""),
    "bids missing": BOOK.replace('"b":[["1.9531","6198"]],', ""),
    "level as numbers": BOOK.replace('["1.9531","6198"]', "[1.9531,6198]"),
    "level with 3 items": BOOK.replace('["1.9531","6198"]', '["1.9531","6198","x"]'),
    "book data is a list": BOOK.replace('"data":{', '"data":[{').replace(',"cts"', '],"cts"'),
    "frame ts missing": BOOK.replace('"ts":1733011200693,', ""),
    "frame ts as string": BOOK.replace('"ts":1733011200693', '"ts":"1733011200693"'),
    "data missing": '{"topic":"orderbook.50.XRPUSDT","type":"delta","ts":1}',
    "data null": '{"topic":"publicTrade.BTCUSDT","type":"snapshot","ts":1,"data":null}',
    "topic as number": '{"topic":5,"ts":1,"data":{}}',
    "unsplittable symbol": BOOK.replace('"s":"XRPUSDT"', '"s":"XYZ"'),
    "ticker without symbol": '{"topic":"tickers.BTCUSDT","type":"snapshot","ts":1,"data":{"bid1Price":"1"}}',
    "subscribe failure": '{"success":false,"ret_msg":"error:handler not found","conn_id":"c1","req_id":"",'
    '"op":"subscribe"}',
    "failure without op": '{"success":false,"ret_msg":"Params Error"}',
    "empty string": "",
    "binary garbage": b"\x89PNG\r\n\x1a\n\x00\x00\xff\xfe",
    "empty bytes": b"",
    "null": "null",
    "array": "[]",
    "empty object": "{}",
    "text pong": "pong",
}


# Depth levels stay the venue's raw JSON in the collector (records.Depth: materialising them costs more than
# everything else in a depth frame). They are checked where they are decoded: Depth.bid_levels()/ask_levels(),
# used by the order-book processor and the store. Extra elements after [price, size] are allowed (OKX has 4).
MALFORMED_LEVELS = {case: MALFORMED.pop(case) for case in ["level as numbers", "level with 3 items"]}


@pytest.mark.parametrize("case", sorted(MALFORMED))
def test_malformed_frames_raise_parse_error_naming_the_venue(case):
    with pytest.raises(ParseError) as info:
        new_parser().parse(MALFORMED[case], RECV_TS)
    assert str(info.value).startswith("bybit_linear: ")
    assert info.value.venue == "bybit_linear" and info.value.reason


def test_subscribe_failure_message_carries_ret_msg():
    with pytest.raises(ParseError, match=r"^bybit_linear: subscribe failed: error:handler not found"):
        new_parser().parse(MALFORMED["subscribe failure"], RECV_TS)


def test_lone_surrogate_text_raises_parse_error():
    """Cannot come from websockets (strict UTF-8), but must not escape as UnicodeEncodeError."""
    for frame in ('{"op":"pong","x":"\ud800"}',):
        with pytest.raises(ParseError, match=r"^bybit_linear: "):
            VENUES["bybit_linear"].new_parser().parse(frame, RECV_TS)


CONTROL = [
    '{"success":true,"ret_msg":"","conn_id":"3cd84cb1","req_id":"1","op":"subscribe"}',
    '{"success":true,"ret_msg":"pong","conn_id":"0970e817","op":"ping"}',
    '{"req_id":"100001","op":"pong","args":["1672916271846"],"conn_id":"2324d924"}',
    '{"success":true,"ret_msg":"","conn_id":"3cd84cb1","req_id":"2","op":"unsubscribe"}',
    '{"topic":"kline.1.BTCUSDT","type":"snapshot","ts":1672324988882,"data":[{"start":1672324800000}]}',
]


@pytest.mark.parametrize("frame", CONTROL)
def test_control_frames_return_nothing(frame):
    assert new_parser().parse(frame, RECV_TS) == []


# --- subscribe messages ---------------------------------------------------------------------------------


def test_subscribe_message_exact_json():
    venue = VENUES["bybit_linear"]
    subs = venue.subscriptions(["BTC-USDT"], [DataType.TRADE, DataType.DEPTH, DataType.TICKER])
    assert venue.subscribe_messages(subs, 1) == [
        '{"op":"subscribe","args":["publicTrade.BTCUSDT","orderbook.50.BTCUSDT","tickers.BTCUSDT"],"req_id":"1"}'
    ]
    assert venue.unsubscribe_messages(subs[:1], 8) == [
        '{"op":"unsubscribe","args":["publicTrade.BTCUSDT"],"req_id":"8"}'
    ]
    assert venue.depth_levels == 50 and venue.channels[DataType.DEPTH] == "orderbook.50"


def test_subscribe_messages_chunk_by_ten_with_consecutive_req_ids():
    venue = VENUES["bybit_linear"]
    assert venue.limits.args_per_subscribe == 10
    subs = venue.subscriptions([f"C{i}-USDT" for i in range(23)], [DataType.TRADE])
    msgs = [orjson.loads(m) for m in venue.subscribe_messages(subs, 5)]
    assert [(len(m["args"]), m["req_id"]) for m in msgs] == [(10, "5"), (10, "6"), (3, "7")]
    assert [a for m in msgs for a in m["args"]] == [f"publicTrade.C{i}USDT" for i in range(23)]


@pytest.mark.parametrize(("symbol", "instrument"), [("BTC-USDT", "BTCUSDT"), ("xrp-usdt", "XRPUSDT")])
def test_to_instrument(symbol, instrument):
    assert VENUES["bybit_linear"].to_instrument(symbol) == instrument
