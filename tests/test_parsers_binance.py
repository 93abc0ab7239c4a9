"""Binance spot / USDⓈ-M parser: every record field against the source frame (orjson), unknown fields,
malformed frames, control frames and the SUBSCRIBE messages."""

from __future__ import annotations

import itertools

import orjson
import pytest

from marketprism.records import DataType, Depth
from marketprism.venues import VENUES, ParseError
from tests.fixtures_util import frames_of, raw_ws_lines, record_fields, requires_fixtures

RECV_TS = 1_723_161_300_000_000

# Instrument -> normalised symbol for every instrument in the Binance fixtures (BASE-QUOTE from exchangeInfo).
SYMBOLS = {
    "BTCUSDT": "BTC-USDT", "NKNUSDT": "NKN-USDT", "BLZETH": "BLZ-ETH", "LRCBTC": "LRC-BTC",
    "RUNEEUR": "RUNE-EUR", "SUSHIUSDT": "SUSHI-USDT", "AKROUSDT": "AKRO-USDT", "KEEPUSDT": "KEEP-USDT",
    "CTKUSDT": "CTK-USDT",
}  # fmt: skip

FILES = {
    "binance/spot_cryptofeed_2021-10-12.ws.raw.txt": "binance_spot",
    "binance/spot_aggTrade_2021-10-12.jsonl": "binance_spot",
    "binance/spot_bookTicker_2021-10-12.jsonl": "binance_spot",
    "binance/spot_bookTicker_BTCUSDT_2024-08-08_first500.jsonl": "binance_spot",
    "binance/spot_depthUpdate_BTCUSDT_2024-08-08_first400.jsonl": "binance_spot",
    "binance/spot_depthUpdate_NKNUSDT_2021-10-12.jsonl": "binance_spot",
    "binance/spot_depthUpdate_all4symbols_2021-10-12.jsonl": "binance_spot",
    "binance/spot_trade_BTCUSDT_2024-08-08_first500.jsonl": "binance_spot",
    "binance/usdm_cryptofeed_2021-07-22.ws.raw.txt": "binance_usdm",
    "binance/usdm_aggTrade_2021-07-22.jsonl": "binance_usdm",
    "binance/usdm_bookTicker_2021-07-22.jsonl": "binance_usdm",
    "binance/usdm_bookTicker_BTCUSDT_2024-08-08_first500.jsonl": "binance_usdm",
    "binance/usdm_depthUpdate_BTCUSDT_2024-08-08_first400.jsonl": "binance_usdm",
    "binance/usdm_depthUpdate_SUSHIUSDT_2021-07-22.jsonl": "binance_usdm",
    "binance/usdm_trade_BTCUSDT_2024-08-08_first500.jsonl": "binance_usdm",
}
MARKET = {"binance_spot": "spot", "binance_usdm": "perpetual"}


def expected_records(frame: str, venue: str, recv_ts: int) -> list[dict]:
    """What the parser must produce, written from the Binance docs and orjson only."""
    obj = orjson.loads(frame)
    channel = obj["stream"].split("@", 1)[1]
    d = obj["data"]
    base = {"exchange": "binance", "market": MARKET[venue], "symbol": SYMBOLS[d["s"]], "instrument": d["s"],
            "recv_ts": recv_ts}  # fmt: skip
    if channel in ("trade", "aggTrade"):
        agg = channel == "aggTrade"
        assert d["e"] == channel
        return [{**base, "ts": d["T"] * 1000, "trade_id": str(d["a"] if agg else d["t"]), "price": d["p"],
                 "size": d["q"], "side": "sell" if d["m"] else "buy", "aggregate": agg,
                 "first_trade_id": d["f"] if agg else None,
                 "last_trade_id": d["l"] if agg else None}]  # fmt: skip
    if channel.startswith("depth"):
        assert d["e"] == "depthUpdate"
        return [{**base, "ts": d["E"] * 1000, "is_snapshot": False, "bids": [tuple(lv) for lv in d["b"]],
                 "asks": [tuple(lv) for lv in d["a"]], "seq": d["u"], "first_seq": d["U"],
                 "prev_seq": d.get("pu"), "cross_seq": None, "checksum": None}]  # fmt: skip
    if channel == "bookTicker":
        ts = d["E"] * 1000 if "E" in d else recv_ts  # spot bookTicker has no time at all
        return [{**base, "ts": ts, "bid_price": d["b"], "bid_size": d["B"], "ask_price": d["a"],
                 "ask_size": d["A"], "seq": d["u"], "last_price": None}]  # fmt: skip
    assert channel.startswith("kline_")
    return []


@requires_fixtures
@pytest.mark.parametrize("rel", sorted(FILES))
def test_every_record_field_equals_the_source_frame(rel):
    venue = FILES[rel]
    parser = VENUES[venue].new_parser()
    checked = 0
    for recv_ts, frame in frames_of(rel):
        records = parser.parse(frame, recv_ts)
        assert [record_fields(r) for r in records] == expected_records(frame, venue, recv_ts)
        for r in records:
            # prices and sizes are the exchange's own strings, byte for byte
            texts = (getattr(r, "price", None), getattr(r, "bid_price", None), getattr(r, "ask_size", None))
            for text in texts:
                assert text is None or f'"{text}"' in frame
            for px, sz, *_ in r.bid_levels()[:3] + r.ask_levels()[:3] if isinstance(r, Depth) else []:
                assert f'["{px}","{sz}"]' in frame
            checked += 1
    assert checked > 0


@requires_fixtures
def test_side_mapping_m_true_means_the_taker_sold():
    parser = VENUES["binance_spot"].new_parser()
    sides = {}
    for recv_ts, frame in frames_of("binance/spot_trade_BTCUSDT_2024-08-08_first500.jsonl"):
        (t,) = parser.parse(frame, recv_ts)
        sides.setdefault(orjson.loads(frame)["data"]["m"], set()).add(t.side)
    assert sides == {True: {"sell"}, False: {"buy"}}


@requires_fixtures
@pytest.mark.parametrize(
    ("rel", "first", "last"),
    [
        ("binance/spot_trade_BTCUSDT_2024-08-08_first500.jsonl", 3735683259, 3735683758),
        ("binance/usdm_trade_BTCUSDT_2024-08-08_first500.jsonl", 5266583935, 5266584434),
    ],
)
def test_trade_ids_run_without_gaps(rel, first, last):
    parser = VENUES[FILES[rel]].new_parser()
    ids = [int(parser.parse(f, ts)[0].trade_id) for ts, f in frames_of(rel)]
    assert ids == list(range(first, last + 1))


@requires_fixtures
@pytest.mark.parametrize(
    ("rel", "chain"),
    [
        ("binance/spot_depthUpdate_BTCUSDT_2024-08-08_first400.jsonl", "spot"),
        ("binance/spot_depthUpdate_NKNUSDT_2021-10-12.jsonl", "spot"),
        ("binance/usdm_depthUpdate_BTCUSDT_2024-08-08_first400.jsonl", "usdm"),
        ("binance/usdm_depthUpdate_SUSHIUSDT_2021-07-22.jsonl", "usdm"),
    ],
)
def test_depth_sequence_fields_are_continuous(rel, chain):
    """SOURCES.md §3: spot U = previous u + 1; USDⓈ-M pu = previous u. The records keep U/u/pu intact."""
    parser = VENUES[FILES[rel]].new_parser()
    depths = [parser.parse(f, ts)[0] for ts, f in frames_of(rel)]
    for prev, cur in itertools.pairwise(depths):
        assert cur.first_seq <= cur.seq
        if chain == "spot":
            assert cur.prev_seq is None and cur.first_seq == prev.seq + 1
        else:
            assert cur.prev_seq == prev.seq


@requires_fixtures
def test_spot_book_ticker_ts_is_the_raw_receive_time():
    """Spot bookTicker has no E: ts falls back to the receive time, taken from the raw line's epoch."""
    rel = "binance/spot_cryptofeed_2021-10-12.ws.raw.txt"
    parser = VENUES["binance_spot"].new_parser()
    n = 0
    for kind, epoch, frame in raw_ws_lines(rel):
        if kind == "recv" and "@bookTicker" in frame:
            (t,) = parser.parse(frame, round(epoch * 1_000_000))
            assert t.ts == t.recv_ts == round(epoch * 1_000_000)
            n += 1
    assert n == 84


# --- unknown fields -------------------------------------------------------------------------------------

EXTRA_DATA = '"st":1,"ps":"BOTH","count":"3","zz":{"nested":[1,{"k":null,"s":"x"}],"b":[["1","2"]]},'
EXTRA_TOP = '"zz":{"a":[1,2,{"b":"c"}]},"id":null,'


def _inject(frame: str) -> list[str]:
    variants = [frame.replace('"data":{', '"data":{' + EXTRA_DATA, 1)]
    variants.append(frame[:-1] + ',"zz":{"nested":{"x":[true,false]}}}')  # after data: fast path
    variants.append("{" + EXTRA_TOP + frame[1:])  # before "stream": the envelope path
    variants.append(frame.replace('"data":{', '"data":{"e2":"x",', 1)[:-2] + ',"ps":"LONG","o":{}}}')
    return variants


@requires_fixtures
@pytest.mark.parametrize("rel", sorted(FILES))
def test_unknown_fields_are_ignored(rel):
    venue = FILES[rel]
    frames = frames_of(rel)
    parser = VENUES[venue].new_parser()
    for recv_ts, frame in frames[:: max(1, len(frames) // 25)] + frames[-1:]:
        want = parser.parse(frame, recv_ts)
        for variant in _inject(frame):
            assert orjson.loads(variant)  # still valid JSON
            assert parser.parse(variant, recv_ts) == want, variant[:200]


# --- malformed frames -------------------------------------------------------------------------------------

TRADE = ('{"stream":"btcusdt@trade","data":{"e":"trade","E":1723161255343,"s":"BTCUSDT","t":3735683259,'
         '"p":"61837.63000000","q":"0.02000000","T":1723161255342,"m":true,"M":true}}')  # fmt: skip
AGG = ('{"stream":"ctkusdt@aggTrade","data":{"e":"aggTrade","E":1626992741575,"a":16599292,"s":"CTKUSDT",'
       '"p":"1.01100","q":"10","f":23961322,"l":23961322,"T":1626992741421,"m":false}}')  # fmt: skip
DEPTH = ('{"stream":"sushiusdt@depth@100ms","data":{"e":"depthUpdate","E":1626992741037,"T":1626992741024,'
         '"s":"SUSHIUSDT","U":600859599090,"u":600859600917,"pu":600859598061,"b":[["7.5040","813"]],'
         '"a":[["7.6150","1563"]]}}')  # fmt: skip
TICKER = ('{"stream":"nknusdt@bookTicker","data":{"u":499869768,"s":"NKNUSDT","b":"0.35210000",'
          '"B":"672.00000000","a":"0.35260000","A":"3199.00000000"}}')  # fmt: skip

MALFORMED = {
    "truncated half": TRADE[: len(TRADE) // 2],
    "truncated last brace": TRADE[:-1],
    "truncated depth": DEPTH[:-40],
    "trailing garbage": TRADE + "x",
    "price as number": TRADE.replace('"p":"61837.63000000"', '"p":61837.63'),
    "size as number": AGG.replace('"q":"10"', '"q":10'),
    "trade id as string": TRADE.replace('"t":3735683259', '"t":"3735683259"'),
    "time as string": TRADE.replace('"T":1723161255342', '"T":"1723161255342"'),
    "maker flag as string": TRADE.replace('"m":true', '"m":"true"'),
    "maker flag null": TRADE.replace('"m":true', '"m":null'),
    "missing price": TRADE.replace('"p":"61837.63000000",', ""),
    "missing symbol": TRADE.replace('"s":"BTCUSDT",', ""),
    "missing agg id": AGG.replace('"a":16599292,', ""),
    "missing depth bids": DEPTH.replace('"b":[["7.5040","813"]],', ""),
    "missing depth U": DEPTH.replace('"U":600859599090,', ""),
    "level as numbers": DEPTH.replace('["7.5040","813"]', "[7.5040,813]"),
    "level with 3 items": DEPTH.replace('["7.5040","813"]', '["7.5040","813","1"]'),
    "level with 1 item": DEPTH.replace('["7.5040","813"]', '["7.5040"]'),
    "levels not a list": DEPTH.replace('[["7.5040","813"]]', '{"7.5040":"813"}'),
    "ticker bid as number": TICKER.replace('"b":"0.35210000"', '"b":0.3521'),
    "ticker missing ask size": TICKER.replace(',"A":"3199.00000000"', ""),
    "data is a list": '{"stream":"btcusdt@trade","data":[1,2]}',
    "data is null": '{"stream":"btcusdt@trade","data":null}',
    "data empty object": '{"stream":"btcusdt@depth@100ms","data":{}}',
    "unsplittable instrument": TRADE.replace('"s":"BTCUSDT"', '"s":"XYZ"'),
    "stream is a number": '{"stream":5,"data":{}}',
    "empty string": "",
    "whitespace": "   ",
    "binary garbage": b"\x89PNG\r\n\x1a\n\x00\x00\xff\xfe",
    "invalid utf-8 in a string": b'{"stream":"btcusdt@trade","data":{"e":"trade","s":"\xff\xfe"}}',
    "empty bytes": b"",
    "null": "null",
    "array": "[]",
    "number": "1",
    "string": '"pong"',
    "empty object": "{}",
    "error reply": '{"code":2,"msg":"Invalid request","id":1}',
    "error reply without id": '{"code":0,"msg":"Unknown property"}',
    "error reply null id": '{"code":3,"msg":"Invalid JSON: expected value at line 1 column 1","id":null}',
}


# Depth levels stay the venue's raw JSON in the collector (records.Depth: materialising them costs more than
# everything else in a depth frame). They are checked where they are decoded: Depth.bid_levels()/ask_levels(),
# used by the order-book processor and the store. Extra elements after [price, size] are allowed (OKX has 4).
MALFORMED_LEVELS = {
    case: MALFORMED.pop(case)
    for case in ["level as numbers", "level with 3 items", "level with 1 item", "levels not a list"]
}


@pytest.mark.parametrize("venue", ["binance_spot", "binance_usdm"])
@pytest.mark.parametrize("case", sorted(MALFORMED))
def test_malformed_frames_raise_parse_error_naming_the_venue(venue, case):
    parser = VENUES[venue].new_parser()
    with pytest.raises(ParseError) as info:
        parser.parse(MALFORMED[case], RECV_TS)
    assert str(info.value).startswith(f"{venue}: ")
    assert info.value.venue == venue and info.value.reason


ODD_STREAMS = [
    '{"stream":"btcusdt","data":{"e":"trade"}}',  # no channel (recursed forever before the one-line fix)
    '{"data":{"e":"trade"},"stream":"btcusdt"}',  # same, keys reordered
    '{"stream":"","data":{}}',
    '{"stream":"@","data":{}}',
    '{"stream":"btcusdt@","data":{"e":"trade"}}',
    '{"stream":"btcusdt@trade"}',
    '{"stream":"btcusdt@trade","data":{}}',
    '{"stream":"btcusdt@trade\\"x","data":{}}',
    '{"stream":"btcusdt\\u0040trade","data":{"e":"trade"}}',
    '{"id":1,"stream":"btcusdt@trade","data":{"e":"trade","s":"BTCUSDT"}}',
]


@pytest.mark.parametrize("venue", ["binance_spot", "binance_usdm"])
@pytest.mark.parametrize("frame", ODD_STREAMS)
def test_odd_stream_names_give_nothing_or_parse_error_never_another_exception(venue, frame):
    try:
        assert VENUES[venue].new_parser().parse(frame, RECV_TS) == []
    except ParseError as exc:
        assert str(exc).startswith(f"{venue}: ")


def test_very_long_stream_name_gives_nothing_or_parse_error():
    """Used to recurse forever: the stream name ran past the parser's prefix window."""
    for n in (90, 120, 500):
        frame = '{"stream":"' + "a" * n + '@trade","data":{"e":"trade"}}'
        with pytest.raises(ParseError, match=r"^binance_spot: "):
            VENUES["binance_spot"].new_parser().parse(frame, RECV_TS)


def test_nested_error_reply_raises_parse_error():
    """The shape live servers send (the docs show the flat one): was taken for a SUBSCRIBE ack."""
    with pytest.raises(ParseError, match=r"^binance_spot: error reply code 2: Invalid request"):
        VENUES["binance_spot"].new_parser().parse('{"error":{"code":2,"msg":"Invalid request"},"id":1}', 0)


def test_lone_surrogate_text_raises_parse_error():
    """Cannot come from websockets (strict UTF-8), but must not escape as UnicodeEncodeError."""
    for frame in (
        '{"result":null,"id":1,"x":"\ud800"}',
        '{"stream":"btcusdt@trade","data":{"s":"\ud800"}}',
    ):
        with pytest.raises(ParseError, match=r"^binance_spot: "):
            VENUES["binance_spot"].new_parser().parse(frame, RECV_TS)


def test_error_reply_message_carries_code_and_text():
    with pytest.raises(ParseError, match=r"^binance_spot: error reply code 2: Invalid request"):
        VENUES["binance_spot"].new_parser().parse('{"code":2,"msg":"Invalid request","id":1}', RECV_TS)


# --- control frames ---------------------------------------------------------------------------------------

CONTROL = [
    '{"result":null,"id":1}',  # SUBSCRIBE / UNSUBSCRIBE ack
    '{"id":7,"result":null}',
    '{"result":["btcusdt@trade","btcusdt@depth@100ms"],"id":3}',  # LIST_SUBSCRIPTIONS
    '{"result":true,"id":2}',  # GET_PROPERTY combined
    b'{"result":null,"id":1}',
    '{"stream":"btcusdt@kline_1m","data":{"e":"kline","E":1,"s":"BTCUSDT","k":{"t":1}}}',
    '{"stream":"btcusdt@miniTicker","data":{"e":"24hrMiniTicker","E":1,"s":"BTCUSDT","c":"1"}}',
    # markPrice and forceOrder are normalised now (funding_rate, liquidation): see test_parsers_derivs.py
]


@pytest.mark.parametrize("venue", ["binance_spot", "binance_usdm"])
@pytest.mark.parametrize("frame", CONTROL)
def test_control_frames_and_unnormalised_streams_return_nothing(venue, frame):
    assert VENUES[venue].new_parser().parse(frame, RECV_TS) == []


@pytest.mark.parametrize("speed", ["", "@0ms", "@100ms", "@250ms", "@500ms", "@1000ms", "@10ms"])
def test_every_depth_speed_suffix_is_a_depth_stream(speed):
    frame = DEPTH.replace("@depth@100ms", "@depth" + speed)
    (d,) = VENUES["binance_usdm"].new_parser().parse(frame, RECV_TS)
    assert (d.seq, d.first_seq, d.prev_seq, d.bid_levels(), d.ask_levels()) == (
        600859600917,
        600859599090,
        600859598061,
        [("7.5040", "813")],
        [("7.6150", "1563")],
    )


# --- subscribe messages ---------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["binance_spot", "binance_usdm"])
def test_subscribe_message_exact_json(name):
    venue = VENUES[name]
    subs = venue.subscriptions(["BTC-USDT", "eth-usdt"], [DataType.TRADE, DataType.DEPTH, DataType.TICKER])
    assert venue.subscribe_messages(subs, 1) == [
        '{"method":"SUBSCRIBE","params":["btcusdt@trade","btcusdt@depth@100ms","btcusdt@bookTicker",'
        '"ethusdt@trade","ethusdt@depth@100ms","ethusdt@bookTicker"],"id":1}'
    ]
    unsub = '{"method":"UNSUBSCRIBE","params":["btcusdt@trade"],"id":42}'
    assert venue.unsubscribe_messages(subs[:1], 42) == [unsub]


def test_subscribe_messages_chunk_with_consecutive_ids():
    venue = VENUES["binance_spot"]
    assert venue.limits.args_per_subscribe == 200
    subs = venue.subscriptions([f"C{i}-USDT" for i in range(450)], [DataType.TRADE])
    msgs = [orjson.loads(m) for m in venue.subscribe_messages(subs, 10)]
    assert [(m["method"], len(m["params"]), m["id"]) for m in msgs] == [
        ("SUBSCRIBE", 200, 10),
        ("SUBSCRIBE", 200, 11),
        ("SUBSCRIBE", 50, 12),
    ]
    assert [p for m in msgs for p in m["params"]] == [f"c{i}usdt@trade" for i in range(450)]


@pytest.mark.parametrize(
    ("symbol", "instrument"),
    [
        ("BTC-USDT", "BTCUSDT"),
        ("btc-usdt", "BTCUSDT"),
        ("BTCUSDT", "BTCUSDT"),
        ("1000SHIB-USDT", "1000SHIBUSDT"),
    ],
)
def test_to_instrument(symbol, instrument):
    assert VENUES["binance_spot"].to_instrument(symbol) == instrument
    assert VENUES["binance_usdm"].to_instrument(symbol) == instrument
