"""OKX v5 parser: every record field against the source frame (orjson), instrument -> market/symbol,
unknown fields, malformed frames, control frames and subscribe messages."""

from __future__ import annotations

import orjson
import pytest

from marketprism.records import DataType, Depth
from marketprism.venues import VENUES, ParseError
from marketprism.venues.okx import instrument_market
from tests.fixtures_util import frames_of, raw_ws_lines, record_fields, requires_fixtures

RECV_TS = 1_652_459_230_000_000

# instId -> (market, symbol), from the OKX instrument naming rules.
INSTRUMENTS = {
    "BTC-USDT": ("spot", "BTC-USDT"),
    "UNI-USD-SWAP": ("perpetual", "UNI-USD"),
    "BTC-USD-220527": ("future", "BTC-USD"),
}

FILES = [
    "okx/okx_cryptofeed_2022-05-13.ws.raw.txt",
    "okx/books_BTC-USDT_2022-05-13.jsonl",
    "okx/books_UNI-USD-SWAP_2022-05-13.jsonl",
    "okx/books_BTC-USD-220527_2022-05-13.jsonl",
    "okx/trades_2022-05-13.jsonl",
    "okx/tickers_2022-05-13.jsonl",
    "okx/ws_subscribe_events_2022-05-13.jsonl",
]


def expected_records(frame: str, recv_ts: int) -> list[dict]:
    """What the parser must produce, written from the OKX v5 docs and orjson only."""
    obj = orjson.loads(frame)
    if "event" in obj:
        return []
    channel, inst = obj["arg"]["channel"], obj["arg"]["instId"]
    out = []
    for item in obj["data"]:
        market, symbol = INSTRUMENTS[item.get("instId", inst)]
        base = {"exchange": "okx", "market": market, "symbol": symbol, "instrument": item.get("instId", inst),
                "ts": int(item["ts"]) * 1000, "recv_ts": recv_ts}  # fmt: skip
        if channel == "trades":
            out.append({**base, "trade_id": item["tradeId"], "price": item["px"], "size": item["sz"],
                        "side": item["side"], "aggregate": False, "first_trade_id": None,
                        "last_trade_id": None})  # fmt: skip
        elif channel == "books":
            assert obj["action"] in ("snapshot", "update")
            out.append({**base, "is_snapshot": obj["action"] == "snapshot",
                        "bids": [tuple(lv) for lv in item["bids"]],
                        "asks": [tuple(lv) for lv in item["asks"]],
                        "seq": item.get("seqId"), "first_seq": None, "prev_seq": item.get("prevSeqId"),
                        "cross_seq": None, "checksum": item["checksum"]})  # fmt: skip
        elif channel == "tickers":
            out.append({**base, "bid_price": item["bidPx"], "bid_size": item["bidSz"],
                        "ask_price": item["askPx"],
                        "ask_size": item["askSz"], "seq": None, "last_price": item["last"]})  # fmt: skip
        else:
            raise AssertionError(channel)
    return out


@requires_fixtures
@pytest.mark.parametrize("rel", FILES)
def test_every_record_field_equals_the_source_frame(rel):
    parser = VENUES["okx_spot"].new_parser()
    for recv_ts, frame in frames_of(rel):
        records = parser.parse(frame, recv_ts)
        assert [record_fields(r) for r in records] == expected_records(frame, recv_ts)
        for r in records:
            for text in (getattr(r, "price", None), getattr(r, "size", None), getattr(r, "bid_price", None)):
                assert text is None or f'"{text}"' in frame
            for px, sz, *_ in r.bid_levels()[:3] + r.ask_levels()[:3] if isinstance(r, Depth) else []:
                assert f'["{px}","{sz}",' in frame


@requires_fixtures
@pytest.mark.parametrize(
    ("rel", "bids", "asks", "checksum"),
    [
        ("okx/books_BTC-USDT_2022-05-13.jsonl", 400, 400, 47640993),
        # SOURCES.md §2.4 says "119 bids, 121 asks" and "64 bids, 72 asks": it swapped the two sides; the
        # frames themselves hold 121 bids / 119 asks and 72 bids / 64 asks (best bid < best ask confirms).
        ("okx/books_UNI-USD-SWAP_2022-05-13.jsonl", 121, 119, 555605283),
        ("okx/books_BTC-USD-220527_2022-05-13.jsonl", 72, 64, 1054815633),
    ],
)
def test_book_snapshot_sizes_and_checksums_from_sources_md(rel, bids, asks, checksum):
    parser = VENUES["okx_swap"].new_parser()
    depths = [parser.parse(f, ts)[0] for ts, f in frames_of(rel)]
    snap, updates = depths[0], depths[1:]
    assert snap.is_snapshot and not any(d.is_snapshot for d in updates)
    assert (len(snap.bid_levels()), len(snap.ask_levels()), snap.checksum) == (bids, asks, checksum)
    assert float(snap.bid_levels()[0][0]) < float(snap.ask_levels()[0][0])
    assert [float(p) for p, *_ in snap.bid_levels()] == sorted((float(p) for p, *_ in snap.bid_levels()), reverse=True)
    assert [float(p) for p, *_ in snap.ask_levels()] == sorted(float(p) for p, *_ in snap.ask_levels())
    assert all(d.seq is None and d.prev_seq is None for d in depths)  # 2022 frames predate seqId
    assert [d.ts for d in depths] == sorted(d.ts for d in depths)  # SOURCES.md: ts never decreases
    assert any(sz == "0" for d in updates for _, sz, *_ in d.bid_levels() + d.ask_levels())  # deletions kept as "0"


@requires_fixtures
def test_first_trade_after_subscribing_is_the_older_one():
    """SOURCES.md §2.4: the first push is an older trade (ts 1652459199958)."""
    recv_ts, frame = frames_of("okx/trades_2022-05-13.jsonl")[0]
    (t,) = VENUES["okx_spot"].new_parser().parse(frame, recv_ts)
    got = (t.ts, t.trade_id, t.market, t.symbol, t.side)
    assert got == (1652459199958000, "7849", "future", "BTC-USD", "buy")


@requires_fixtures
def test_raw_recording_sent_frames_are_subscribe_requests_the_parser_never_sees():
    lines = raw_ws_lines("okx/okx_cryptofeed_2022-05-13.ws.raw.txt")
    sent = [frame for kind, _, frame in lines if kind == "sent"]
    assert len(sent) == 3 and all(orjson.loads(f)["op"] == "subscribe" for f in sent)


@pytest.mark.parametrize(
    ("inst", "market"),
    [("BTC-USDT", "spot"), ("BTC-USDT-SWAP", "perpetual"), ("BTC-USD-220527", "future"),
     ("BTC-USD-220527-30000-C", "option"), ("UNI-USD-SWAP", "perpetual")],
)  # fmt: skip
def test_instrument_market(inst, market):
    assert instrument_market(inst).value == market


# --- synthetic frames in the documented v5 shape (no real capture exists; SOURCES.md §5/§6) ----------------

SYNTH_BOOK_SNAPSHOT = (  # synthetic: a real 2022 shape plus the seqId/prevSeqId OKX added in 2023
    '{"arg":{"channel":"books","instId":"BTC-USDT-SWAP"},"action":"snapshot","data":[{"asks":[["30243.5",'
    '"1.2112","0","4"]],"bids":[["30243.4","0.5","0","2"]],"ts":"1652459225000","checksum":0,'
    '"prevSeqId":-1,"seqId":123456}]}'
)
SYNTH_KEEPALIVE = (  # synthetic: the documented keep-alive update, empty sides and seqId == prevSeqId
    '{"arg":{"channel":"books","instId":"BTC-USDT-SWAP"},"action":"update","data":[{"asks":[],"bids":[],'
    '"ts":"1652459226000","checksum":0,"prevSeqId":123460,"seqId":123460}]}'
)
SYNTH_BBO = (  # synthetic: bbo-tbt push (the OKX venues' TICKER channel), documented shape
    '{"arg":{"channel":"bbo-tbt","instId":"BTC-USDT"},"data":[{"asks":[["8476.98","415","0","13"]],'
    '"bids":[["8476.97","256","0","12"]],"ts":"1597026383085","seqId":789}]}'
)


def test_synthetic_seqid_fields_and_zero_checksum():
    parser = VENUES["okx_swap"].new_parser()
    (snap,) = parser.parse(SYNTH_BOOK_SNAPSHOT, RECV_TS)
    assert (snap.is_snapshot, snap.seq, snap.prev_seq, snap.checksum) == (True, 123456, -1, 0)
    assert (snap.market, snap.symbol, snap.instrument) == ("perpetual", "BTC-USDT", "BTC-USDT-SWAP")
    assert snap.natural_key() == "depth:okx:perpetual:BTC-USDT:snap:123456"
    (keep,) = parser.parse(SYNTH_KEEPALIVE, RECV_TS)
    got = (keep.is_snapshot, keep.bid_levels(), keep.ask_levels(), keep.seq, keep.prev_seq)
    assert got == (False, [], [], 123460, 123460)


def test_synthetic_bbo_tbt_is_a_ticker():
    (t,) = VENUES["okx_spot"].new_parser().parse(SYNTH_BBO, RECV_TS)
    assert t.data_type is DataType.TICKER
    assert (t.bid_price, t.bid_size, t.ask_price, t.ask_size, t.seq, t.ts) == (
        "8476.97",
        "256",
        "8476.98",
        "415",
        789,
        1597026383085000,
    )


def test_synthetic_trade_with_count_field_and_multiple_trades_per_frame():
    frame = (
        '{"arg":{"channel":"trades","instId":"BTC-USDT"},"data":['
        '{"instId":"BTC-USDT","tradeId":"1","px":"1.5","sz":"2","side":"sell","ts":"1","count":"3"},'
        '{"instId":"BTC-USDT","tradeId":"2","px":"1.6","sz":"3","side":"buy","ts":"2","source":"0"}]}'
    )
    trades = VENUES["okx_spot"].new_parser().parse(frame, RECV_TS)
    assert [(t.trade_id, t.price, t.size, t.side, t.ts) for t in trades] == [
        ("1", "1.5", "2", "sell", 1000),
        ("2", "1.6", "3", "buy", 2000),
    ]


# --- unknown fields -------------------------------------------------------------------------------------


def _inject(frame: str) -> list[str]:
    extra = '"count":"3","st":1,"ps":"BOTH","zz":{"nested":[1,{"k":null}],"lv":[["1","2","0","1"]]},'
    return [
        frame.replace('"data":[{', '"data":[{' + extra, 1),
        frame.replace('"arg":{', '"arg":{"instType":"SPOT","uid":"77",', 1),
        "{" + '"connId":"a4d3ae55","zz":{"a":[1,2,{"b":"c"}]},' + frame[1:],
        frame[:-1] + ',"zz":{"x":[true,false]}}',
    ]


@requires_fixtures
@pytest.mark.parametrize("rel", FILES)
def test_unknown_fields_are_ignored(rel):
    frames = frames_of(rel)
    parser = VENUES["okx_spot"].new_parser()
    for recv_ts, frame in frames[:: max(1, len(frames) // 25)] + frames[-1:]:
        want = parser.parse(frame, recv_ts)
        for variant in _inject(frame):
            assert orjson.loads(variant)
            assert parser.parse(variant, recv_ts) == want, variant[:200]


# --- malformed frames -------------------------------------------------------------------------------------

TRADE = ('{"arg":{"channel":"trades","instId":"BTC-USDT"},"data":[{"instId":"BTC-USDT","tradeId":"7849",'
         '"px":"30218.8","sz":"1","side":"buy","ts":"1652459199958"}]}')  # fmt: skip
BOOK = (
    '{"arg":{"channel":"books","instId":"BTC-USDT"},"action":"update","data":[{"asks":[["30243.5",'
    '"1.2112","0","4"]],"bids":[["30243.4","0","0","0"]],"ts":"1652459225000","checksum":-855196043}]}'
)
TICKER = ('{"arg":{"channel":"tickers","instId":"BTC-USDT"},"data":[{"instType":"SPOT","instId":"BTC-USDT",'
          '"last":"30218.8","lastSz":"1","askPx":"30220.1","askSz":"3","bidPx":"30210.4","bidSz":"4",'
          '"ts":"1652459223003"}]}')  # fmt: skip

MALFORMED = {
    "truncated half": TRADE[: len(TRADE) // 2],
    "truncated last brace": BOOK[:-1],
    "trailing garbage": TICKER + "]",
    "price as number": TRADE.replace('"px":"30218.8"', '"px":30218.8'),
    "ts as number": TRADE.replace('"ts":"1652459199958"', '"ts":1652459199958'),
    "ts not numeric": TRADE.replace('"ts":"1652459199958"', '"ts":"soon"'),
    "book ts not numeric": BOOK.replace('"ts":"1652459225000"', '"ts":""'),
    "missing price": TRADE.replace('"px":"30218.8",', ""),
    "missing trade id": TRADE.replace('"tradeId":"7849",', ""),
    "missing book bids": BOOK.replace(',"bids":[["30243.4","0","0","0"]]', ""),
    "missing book ts": BOOK.replace(',"ts":"1652459225000"', ""),
    "checksum as string": BOOK.replace('"checksum":-855196043', '"checksum":"-855196043"'),
    "level as numbers": BOOK.replace('["30243.5","1.2112","0","4"]', "[30243.5,1.2112,0,4]"),
    "level with one item": BOOK.replace('["30243.5","1.2112","0","4"]', '["30243.5"]'),
    "level empty": BOOK.replace('["30243.5","1.2112","0","4"]', "[]"),
    "ticker bid as number": TICKER.replace('"bidPx":"30210.4"', '"bidPx":30210.4'),
    "ticker missing ask": TICKER.replace('"askPx":"30220.1",', ""),
    "data is an object": '{"arg":{"channel":"trades","instId":"BTC-USDT"},"data":{"px":"1"}}',
    "data is null": '{"arg":{"channel":"trades","instId":"BTC-USDT"},"data":null}',
    "arg without data": '{"arg":{"channel":"trades","instId":"BTC-USDT"}}',
    "arg is a string": '{"arg":"trades","data":[]}',
    "unsplittable instId": BOOK.replace('"instId":"BTC-USDT"', '"instId":"BTCUSDT"'),
    "missing instId": BOOK.replace('"instId":"BTC-USDT"', '"x":1'),
    "code as number": '{"event":"error","code":60012,"msg":"Invalid request"}',
    "empty string": "",
    "binary garbage": b"\x89PNG\r\n\x1a\n\x00\x00\xff\xfe",
    "empty bytes": b"",
    "pong with newline": "pong\n",
    "ping": "ping",
    "null": "null",
    "array": "[]",
    "empty object": "{}",
    "error event": '{"event":"error","code":"60012","msg":"Invalid request: {\\"op\\": \\"subscribe\\"}"}',
    "error event with connId": '{"event":"error","code":"60018","msg":"Wrong URL","connId":"a4"}',
}


# Depth levels stay the venue's raw JSON in the collector (records.Depth: materialising them costs more than
# everything else in a depth frame). They are checked where they are decoded: Depth.bid_levels()/ask_levels(),
# used by the order-book processor and the store. Extra elements after [price, size] are allowed (OKX has 4).
MALFORMED_LEVELS = {case: MALFORMED.pop(case) for case in ["level as numbers", "level with one item", "level empty"]}


@pytest.mark.parametrize("venue", ["okx_spot", "okx_swap"])
@pytest.mark.parametrize("case", sorted(MALFORMED))
def test_malformed_frames_raise_parse_error_naming_the_venue(venue, case):
    with pytest.raises(ParseError) as info:
        VENUES[venue].new_parser().parse(MALFORMED[case], RECV_TS)
    assert str(info.value).startswith(f"{venue}: ")
    assert info.value.venue == venue and info.value.reason


def test_error_event_message_carries_code_and_text():
    with pytest.raises(ParseError, match=r"^okx_spot: error event code 60012: Invalid request"):
        VENUES["okx_spot"].new_parser().parse('{"event":"error","code":"60012","msg":"Invalid request"}', 0)


def test_lone_surrogate_text_raises_parse_error():
    """Cannot come from websockets (strict UTF-8), but must not escape as UnicodeEncodeError."""
    for frame in ('{"event":"subscribe","x":"\ud800"}',):
        with pytest.raises(ParseError, match=r"^okx_spot: "):
            VENUES["okx_spot"].new_parser().parse(frame, RECV_TS)


# --- control frames ---------------------------------------------------------------------------------------

CONTROL = [
    "pong",
    b"pong",
    '{"event":"subscribe","arg":{"channel":"books","instId":"BTC-USDT"}}',
    '{"event":"subscribe","arg":{"channel":"books","instId":"BTC-USDT"},"connId":"a4d3ae55"}',
    '{"event":"unsubscribe","arg":{"channel":"trades","instId":"BTC-USDT"},"connId":"a4d3ae55"}',
    '{"event":"channel-conn-count","channel":"books","connCount":"2","connId":"a4d3ae55"}',
    '{"arg":{"channel":"candle1m","instId":"BTC-USDT"},"data":[["1597026383085","8533","8553","8527","8548"]]}',
    '{"arg":{"channel":"trades","instId":"BTC-USDT"},"data":[]}',
]


@pytest.mark.parametrize("frame", CONTROL)
def test_control_frames_return_nothing(frame):
    assert VENUES["okx_spot"].new_parser().parse(frame, RECV_TS) == []


@requires_fixtures
def test_real_subscribe_acks_return_nothing():
    parser = VENUES["okx_spot"].new_parser()
    frames = frames_of("okx/ws_subscribe_events_2022-05-13.jsonl")
    assert len(frames) == 18 and all(parser.parse(f, ts) == [] for ts, f in frames)


# --- subscribe messages ---------------------------------------------------------------------------------


def test_subscribe_message_exact_json():
    spot, swap = VENUES["okx_spot"], VENUES["okx_swap"]
    types = [DataType.TRADE, DataType.DEPTH, DataType.TICKER]
    assert spot.subscribe_messages(spot.subscriptions(["BTC-USDT"], types), 1) == [
        '{"op":"subscribe","args":[{"channel":"trades","instId":"BTC-USDT"},{"channel":"books","instId":'
        '"BTC-USDT"},{"channel":"bbo-tbt","instId":"BTC-USDT"}]}'
    ]
    assert swap.unsubscribe_messages(swap.subscriptions(["eth-usdt"], [DataType.DEPTH]), 9) == [
        '{"op":"unsubscribe","args":[{"channel":"books","instId":"ETH-USDT-SWAP"}]}'
    ]


def test_subscribe_messages_chunk_by_args_per_subscribe():
    venue = VENUES["okx_swap"]
    per = venue.limits.args_per_subscribe
    subs = venue.subscriptions([f"C{i}-USDT" for i in range(2 * per + 5)], [DataType.TRADE])
    msgs = [orjson.loads(m) for m in venue.subscribe_messages(subs, 1)]
    assert [len(m["args"]) for m in msgs] == [per, per, 5]
    assert [a["instId"] for m in msgs for a in m["args"]] == [f"C{i}-USDT-SWAP" for i in range(2 * per + 5)]
    assert all(len(m.encode()) < 64 * 1024 for m in venue.subscribe_messages(subs, 1))  # OKX args limit


@pytest.mark.parametrize(
    ("name", "symbol", "instrument"),
    [
        ("okx_spot", "BTC-USDT", "BTC-USDT"), ("okx_spot", "btc-usdt", "BTC-USDT"),
        ("okx_swap", "BTC-USDT", "BTC-USDT-SWAP"), ("okx_swap", "btc-usdt-swap", "BTC-USDT-SWAP"),
        ("okx_swap", "BTC-USD-220527", "BTC-USD-220527"),
    ],
)  # fmt: skip
def test_to_instrument(name, symbol, instrument):
    assert VENUES[name].to_instrument(symbol) == instrument
