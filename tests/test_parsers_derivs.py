"""Derivatives streams: funding rate, mark price, open interest and liquidations, per venue.

The canonical payloads below are the venues' own DOCUMENTATION EXAMPLES, written inline (developers.binance.com
USDⓈ-M "Mark Price Stream" and "Liquidation Order Streams"; OKX v5 "Funding rate", "Open interest", "Mark price"
and "Liquidation orders" channels; Bybit v5 "Ticker" (linear) and "All Liquidation"). They are docs examples, NOT
captures: real captures of these streams are rare (../shared/fixtures/SOURCES.md §6). Binance frames are wrapped
in the combined-stream envelope the collector uses.
"""

from __future__ import annotations

import asyncio
from collections import Counter

import msgspec
import orjson
import pytest
import websockets

from marketprism.bus.publisher import connect
from marketprism.records import RECORD_TYPES, DataType, FundingRate, Liquidation, OpenInterest
from marketprism.runner import CollectorSpec, run_collectors
from marketprism.sim import Faults, SimConfig, SimServer
from marketprism.stream.session import SessionConfig
from marketprism.venues import VENUES, ParseError
from tests.fixtures_util import record_fields
from tests.test_bus import stream_messages

RECV_TS = 1_700_000_000_123_456

# --- docs examples (not captures) -------------------------------------------------------------------------

BINANCE_MARK_PRICE = (
    '{"stream":"btcusdt@markPrice@1s","data":{"e":"markPriceUpdate","E":1562305380000,"s":"BTCUSDT",'
    '"p":"11794.15000000","i":"11784.62659091","P":"11784.25641265","r":"0.00038167","T":1562306400000}}'
)
BINANCE_FORCE_ORDER = (
    '{"stream":"btcusdt@forceOrder","data":{"e":"forceOrder","E":1568014460893,"o":{"s":"BTCUSDT","S":"SELL",'
    '"o":"LIMIT","f":"IOC","q":"0.014","p":"9910","ap":"9910","X":"FILLED","l":"0.014","z":"0.014",'
    '"T":1568014460893}}}'
)
OKX_FUNDING = (
    '{"arg":{"channel":"funding-rate","instId":"BTC-USD-SWAP"},"data":[{"formulaType":"noRate",'
    '"fundingRate":"0.0001875391284828","fundingTime":"1700726400000","impactValue":"","instId":"BTC-USD-SWAP",'
    '"instType":"SWAP","interestRate":"","maxFundingRate":"0.00375","method":"current_period",'
    '"minFundingRate":"-0.00375","nextFundingRate":"","nextFundingTime":"1700755200000",'
    '"premium":"0.0001233824646391","settFundingRate":"0.0001699799259033","settState":"settled",'
    '"ts":"1700724675402"}]}'
)
OKX_OPEN_INTEREST = (
    '{"arg":{"channel":"open-interest","instId":"LTC-USD-SWAP"},"data":[{"instId":"LTC-USD-SWAP",'
    '"instType":"SWAP","oi":"5000","oiCcy":"555.55","oiUsd":"50000","ts":"1597026383085"}]}'
)
OKX_MARK_PRICE = (
    '{"arg":{"channel":"mark-price","instId":"LTC-USD-SWAP"},"data":[{"instType":"SWAP",'
    '"instId":"LTC-USD-SWAP","markPx":"0.1","ts":"1597026383085"}]}'
)
OKX_LIQUIDATIONS = (
    '{"arg":{"channel":"liquidation-orders","instType":"SWAP"},"data":[{"details":[{"bkLoss":"0",'
    '"bkPx":"0.007831","ccy":"","posSide":"short","side":"buy","sz":"13","ts":"1692266434010"}],'
    '"instFamily":"IOST-USDT","instId":"IOST-USDT-SWAP","instType":"SWAP","uly":"IOST-USDT"}]}'
)
BYBIT_TICKER_SNAPSHOT = (
    '{"topic":"tickers.BTCUSDT","type":"snapshot","data":{"symbol":"BTCUSDT","tickDirection":"PlusTick",'
    '"price24hPcnt":"0.017103","lastPrice":"17216.00","prevPrice24h":"16926.50","highPrice24h":"17281.50",'
    '"lowPrice24h":"16915.00","prevPrice1h":"17238.00","markPrice":"17217.33","indexPrice":"17227.36",'
    '"openInterest":"68744.761","openInterestValue":"1183601235.91","turnover24h":"1570383121.943499",'
    '"volume24h":"91705.276","nextFundingTime":"1673280000000","fundingRate":"-0.000212","bid1Price":"17215.50",'
    '"bid1Size":"84.489","ask1Price":"17216.00","ask1Size":"83.020"},"cs":24987956059,"ts":1673272861686}'
)
BYBIT_ALL_LIQUIDATION = (
    '{"topic":"allLiquidation.ROSEUSDT","type":"snapshot","ts":1739502303204,"data":[{"T":1739502302929,'
    '"s":"ROSEUSDT","S":"Sell","v":"20000","p":"0.04499"}]}'
)


def parse(venue: str, frame: str, symbols: dict[str, str] | None = None) -> list:
    return VENUES[venue].new_parser(symbols).parse(frame, RECV_TS)


def base(exchange: str, symbol: str, instrument: str, ts_ms: int, market: str = "perpetual") -> dict:
    return {"exchange": exchange, "market": market, "symbol": symbol, "instrument": instrument, "ts": ts_ms * 1000,
            "recv_ts": RECV_TS}  # fmt: skip


def funding(**fields) -> dict:
    return {**{f: None for f in FundingRate.__struct_fields__ if f not in fields}, **fields}


def liquidation(**fields) -> dict:
    return {**{f: None for f in Liquidation.__struct_fields__ if f not in fields}, **fields}


# --- the documented frames, field by field ----------------------------------------------------------------


def test_binance_mark_price_update_is_a_funding_rate():
    (r,) = parse("binance_usdm", BINANCE_MARK_PRICE)
    assert isinstance(r, FundingRate) and r.data_type is DataType.FUNDING_RATE
    assert record_fields(r) == funding(
        **base("binance", "BTC-USDT", "BTCUSDT", 1562305380000), funding_rate="0.00038167",
        funding_time=1562306400000 * 1000, mark_price="11794.15000000", index_price="11784.62659091",
        estimated_settle_price="11784.25641265",
    )  # fmt: skip
    assert r.subject() == "md.funding_rate.binance.perpetual.BTC-USDT"


def test_binance_mark_price_of_a_delivery_contract_has_no_funding():
    frame = BINANCE_MARK_PRICE.replace('"r":"0.00038167","T":1562306400000', '"r":"","T":0')
    (r,) = parse("binance_usdm", frame)
    assert (r.funding_rate, r.funding_time, r.mark_price) == (None, None, "11794.15000000")


def test_binance_force_order_is_a_liquidation_with_every_order_field():
    (r,) = parse("binance_usdm", BINANCE_FORCE_ORDER)
    assert isinstance(r, Liquidation)
    assert record_fields(r) == liquidation(
        **base("binance", "BTC-USDT", "BTCUSDT", 1568014460893), side="sell", price="9910", size="0.014",
        status="FILLED", avg_price="9910", filled_size="0.014", last_filled_size="0.014", order_type="LIMIT",
        time_in_force="IOC",
    )  # fmt: skip
    (buy,) = parse("binance_usdm", BINANCE_FORCE_ORDER.replace('"S":"SELL"', '"S":"BUY"'))
    assert buy.side == "buy"


def test_okx_funding_rate_keeps_every_field():
    (r,) = parse("okx_swap", OKX_FUNDING)
    assert record_fields(r) == funding(
        **base("okx", "BTC-USD", "BTC-USD-SWAP", 1700724675402), funding_rate="0.0001875391284828",
        funding_time=1700726400000 * 1000, next_funding_time=1700755200000 * 1000, min_funding_rate="-0.00375",
        max_funding_rate="0.00375", premium="0.0001233824646391", settled_rate="0.0001699799259033",
        settle_state="settled", method="current_period", formula_type="noRate",
    )  # fmt: skip
    # nextFundingRate, impactValue and interestRate are "" in the example (no value): stored as None
    predicted = parse("okx_swap", OKX_FUNDING.replace('"nextFundingRate":""', '"nextFundingRate":"0.00012"'))
    assert predicted[0].predicted_rate == "0.00012"


def test_okx_open_interest():
    (r,) = parse("okx_swap", OKX_OPEN_INTEREST)
    assert isinstance(r, OpenInterest)
    assert record_fields(r) == {**base("okx", "LTC-USD", "LTC-USD-SWAP", 1597026383085), "open_interest": "5000",
                                "open_interest_value": "50000", "open_interest_ccy": "555.55"}  # fmt: skip
    assert r.subject() == "md.open_interest.okx.perpetual.LTC-USD"


def test_okx_mark_price_is_a_mark_only_funding_record_with_its_own_key():
    (r,) = parse("okx_swap", OKX_MARK_PRICE)
    assert record_fields(r) == funding(**base("okx", "LTC-USD", "LTC-USD-SWAP", 1597026383085), mark_price="0.1")
    # a funding push in the same millisecond is a different record: neither may be dropped as a duplicate
    same_ms = OKX_FUNDING.replace("BTC-USD-SWAP", "LTC-USD-SWAP").replace("1700724675402", "1597026383085")
    (f,) = parse("okx_swap", same_ms)
    assert f.ts == r.ts and f.natural_key() != r.natural_key()


def test_okx_liquidation_orders():
    (r,) = parse("okx_swap", OKX_LIQUIDATIONS)
    assert record_fields(r) == liquidation(
        **base("okx", "IOST-USDT", "IOST-USDT-SWAP", 1692266434010), side="buy", price="0.007831", size="13",
        position_side="short", bankruptcy_loss="0",
    )  # fmt: skip


def test_okx_liquidation_orders_are_filtered_to_the_subscribed_instruments():
    """liquidation-orders carries every swap: a session keeps its own instruments only (so shards never publish
    a liquidation twice and nothing lands under an unconfigured symbol); a parser without a symbol map keeps all."""
    two = OKX_LIQUIDATIONS.replace(
        '"data":[', '"data":[{"details":[{"bkLoss":"1.5","bkPx":"61000.1","ccy":"","posSide":"long","side":"sell",'
        '"sz":"2","ts":"1692266434011"},{"bkLoss":"0","bkPx":"61000.2","ccy":"","posSide":"long","side":"sell",'
        '"sz":"3","ts":"1692266434012"}],"instFamily":"BTC-USDT","instId":"BTC-USDT-SWAP","instType":"SWAP",'
        '"uly":"BTC-USDT"},', 1)  # fmt: skip
    mine = parse("okx_swap", two, {"BTC-USDT-SWAP": "BTC-USDT"})
    assert [(r.symbol, r.side, r.position_side, r.price, r.size) for r in mine] == [
        ("BTC-USDT", "sell", "long", "61000.1", "2"), ("BTC-USDT", "sell", "long", "61000.2", "3")]  # fmt: skip
    assert parse("okx_swap", two, {"ETH-USDT-SWAP": "ETH-USDT"}) == []
    assert [r.instrument for r in parse("okx_swap", two)] == ["BTC-USDT-SWAP"] * 2 + ["IOST-USDT-SWAP"]


def test_bybit_ticker_snapshot_gives_ticker_funding_and_open_interest():
    ticker, fr, oi = parse("bybit_linear", BYBIT_TICKER_SNAPSHOT)
    b = base("bybit", "BTC-USDT", "BTCUSDT", 1673272861686)
    assert (ticker.bid_price, ticker.ask_price, ticker.seq) == ("17215.50", "17216.00", 24987956059)
    assert record_fields(fr) == funding(**b, funding_rate="-0.000212", funding_time=1673280000000 * 1000,
                                        mark_price="17217.33", index_price="17227.36")  # fmt: skip
    assert record_fields(oi) == {**b, "open_interest": "68744.761", "open_interest_value": "1183601235.91",
                                 "open_interest_ccy": None}  # fmt: skip


def test_bybit_ticker_deltas_emit_what_changed_with_the_merged_state():
    parser = VENUES["bybit_linear"].new_parser()
    parser.parse(BYBIT_TICKER_SNAPSHOT, RECV_TS)

    def delta(data: str, ts: int) -> list:
        frame = '{"topic":"tickers.BTCUSDT","type":"delta","data":{"symbol":"BTCUSDT",' + data + '},"cs":1,"ts":'
        return parser.parse(frame + str(ts) + "}", RECV_TS)

    (fr,) = delta('"markPrice":"17218.00"', 1673272861786)  # only the mark moved: no ticker, no OI
    assert isinstance(fr, FundingRate)
    assert (fr.ts, fr.funding_rate, fr.mark_price, fr.index_price) == (
        1673272861786000, "-0.000212", "17218.00", "17227.36")  # fmt: skip
    (oi,) = delta('"openInterest":"68745.001","openInterestValue":"1183605000.00"', 1673272861886)
    assert isinstance(oi, OpenInterest) and (oi.open_interest, oi.open_interest_value) == (
        "68745.001", "1183605000.00")  # fmt: skip
    assert delta('"markPrice":"17218.00","volume24h":"1"', 1673272861986) == []  # nothing of ours changed
    (t,) = delta('"bid1Price":"17215.60"', 1673272862086)
    assert t.data_type is DataType.TICKER


def test_bybit_all_liquidation_names_the_position_side():
    """Bybit's S is the side of the liquidated position (Buy = a long was liquidated, by a sell order)."""
    (r,) = parse("bybit_linear", BYBIT_ALL_LIQUIDATION)
    assert record_fields(r) == liquidation(**base("bybit", "ROSE-USDT", "ROSEUSDT", 1739502302929), side="buy",
                                           position_side="short", price="0.04499", size="20000")  # fmt: skip
    (long_liq,) = parse("bybit_linear", BYBIT_ALL_LIQUIDATION.replace('"S":"Sell"', '"S":"Buy"'))
    assert (long_liq.side, long_liq.position_side) == ("sell", "long")


# --- unknown fields are ignored ----------------------------------------------------------------------------

CASES = [
    ("binance_usdm", BINANCE_MARK_PRICE, '"data":{', '"data":{"zz":{"a":[1]},"nf":"x",'),
    ("binance_usdm", BINANCE_FORCE_ORDER, '"o":{"s"', '"o":{"zz":[1,{"b":null}],"new":"1","s"'),
    ("okx_swap", OKX_FUNDING, '"data":[{', '"data":[{"zz":{"a":1},"newField":"0.1",'),
    ("okx_swap", OKX_OPEN_INTEREST, '"data":[{', '"data":[{"zz":[1,2],'),
    ("okx_swap", OKX_MARK_PRICE, '"data":[{', '"data":[{"idxPx":"0.1",'),
    ("okx_swap", OKX_LIQUIDATIONS, '"details":[{', '"details":[{"zz":{"q":1},"extra":"y",'),
    ("bybit_linear", BYBIT_TICKER_SNAPSHOT, '"data":{', '"data":{"fundingIntervalHour":"8","fundingCap":"0.005",'),
    ("bybit_linear", BYBIT_ALL_LIQUIDATION, '"data":[{', '"data":[{"zz":{"q":[1]},'),
]


@pytest.mark.parametrize(("venue", "frame", "old", "new"), CASES)
def test_unknown_fields_are_ignored(venue, frame, old, new):
    want = parse(venue, frame)
    assert want
    for variant in (frame.replace(old, new, 1), "{" + '"zz":{"top":[1]},"id2":7,' + frame[1:]):
        assert orjson.loads(variant)
        assert parse(venue, variant) == want


# --- malformed frames raise ParseError naming the venue ---------------------------------------------------

MALFORMED = [
    ("binance_usdm", BINANCE_MARK_PRICE.replace('"p":"11794.15000000",', "")),  # no mark price
    ("binance_usdm", BINANCE_MARK_PRICE.replace('"E":1562305380000', '"E":"soon"')),
    ("binance_usdm", BINANCE_MARK_PRICE.replace('"s":"BTCUSDT"', '"s":"ETHUSDT"')),  # not this stream's symbol
    ("binance_usdm", BINANCE_FORCE_ORDER.replace('"q":"0.014",', "")),
    ("binance_usdm", BINANCE_FORCE_ORDER.replace('"S":"SELL"', '"S":"SIDEWAYS"')),
    ("binance_usdm", BINANCE_FORCE_ORDER.replace('"o":{', '"o":[{', 1)),
    ("okx_swap", OKX_FUNDING.replace('"fundingRate":"0.0001875391284828",', "")),
    ("okx_swap", OKX_FUNDING.replace('"ts":"1700724675402"', '"ts":"later"')),
    ("okx_swap", OKX_OPEN_INTEREST.replace('"oi":"5000",', "")),
    ("okx_swap", OKX_MARK_PRICE.replace('"markPx":"0.1"', '"markPx":0.1')),
    ("okx_swap", OKX_LIQUIDATIONS.replace('"bkPx":"0.007831",', "")),
    ("okx_swap", OKX_LIQUIDATIONS.replace('"side":"buy"', '"side":"up"')),
    ("okx_swap", OKX_LIQUIDATIONS.replace('"ts":"1692266434010"', '"ts":"x"')),
    ("bybit_linear", BYBIT_TICKER_SNAPSHOT.replace('"fundingRate":"-0.000212"', '"fundingRate":-0.000212')),
    ("bybit_linear", BYBIT_TICKER_SNAPSHOT.replace('"nextFundingTime":"1673280000000"', '"nextFundingTime":"x"')),
    ("bybit_linear", BYBIT_ALL_LIQUIDATION.replace('"v":"20000",', "")),
    ("bybit_linear", BYBIT_ALL_LIQUIDATION.replace('"S":"Sell"', '"S":"Hold"')),
]


@pytest.mark.parametrize(("venue", "frame"), MALFORMED + [(v, f[: len(f) // 2]) for v, f, _, _ in CASES])
def test_malformed_frames_raise_a_parse_error_naming_the_venue(venue, frame):
    with pytest.raises(ParseError) as info:
        parse(venue, frame)
    assert info.value.venue == venue and str(info.value).startswith(f"{venue}: ")


# --- declarations: channels, shared wire streams, record filtering ----------------------------------------


def test_derivative_channels_are_declared_per_venue():
    assert VENUES["binance_usdm"].channels[DataType.FUNDING_RATE] == "markPrice@1s"
    assert VENUES["binance_usdm"].channels[DataType.LIQUIDATION] == "forceOrder"
    assert DataType.OPEN_INTEREST not in VENUES["binance_usdm"].channels  # REST only (a scheduled pull)
    okx = VENUES["okx_swap"]
    assert okx.channels_of(DataType.FUNDING_RATE) == ("funding-rate", "mark-price")
    assert (okx.channels[DataType.OPEN_INTEREST], okx.channels[DataType.LIQUIDATION]) == (
        "open-interest", "liquidation-orders")  # fmt: skip
    bybit = VENUES["bybit_linear"]
    assert [bybit.channels[dt] for dt in (DataType.FUNDING_RATE, DataType.OPEN_INTEREST, DataType.LIQUIDATION)] == [
        "tickers", "tickers", "allLiquidation"]  # fmt: skip
    for name in ("binance_spot", "okx_spot"):  # spot venues stream none of these
        assert not {DataType.FUNDING_RATE, DataType.OPEN_INTEREST, DataType.LIQUIDATION} & set(VENUES[name].channels)


def test_okx_liquidation_orders_are_subscribed_once_per_inst_type():
    okx = VENUES["okx_swap"]
    types = [DataType.TRADE, DataType.FUNDING_RATE, DataType.LIQUIDATION]
    subs = okx.subscriptions(["BTC-USDT", "ETH-USDT"], types)
    assert len(subs) == 8  # trades, funding-rate, mark-price, liquidation-orders per symbol
    (msg,) = okx.subscribe_messages(okx.wire_streams(subs), 1)
    args = orjson.loads(msg)["args"]
    assert args.count({"channel": "liquidation-orders", "instType": "SWAP"}) == 1
    assert {"channel": "mark-price", "instId": "ETH-USDT-SWAP"} in args and len(args) == 7
    # dropping one symbol keeps the shared stream while the other still uses it
    btc = [s for s in subs if s.symbol == "BTC-USDT"]
    eth = [s for s in subs if s.symbol == "ETH-USDT"]
    gone = okx.wire_streams(btc, exclude=eth)
    assert {s.channel for s in gone} == {"trades", "funding-rate", "mark-price"}
    assert [s.channel for s in okx.wire_streams(eth, exclude=[])] == [
        "trades", "funding-rate", "mark-price", "liquidation-orders"]  # fmt: skip


def test_bybit_tickers_is_one_wire_stream_for_three_data_types():
    bybit = VENUES["bybit_linear"]
    all_types = [DataType.TICKER, DataType.FUNDING_RATE, DataType.OPEN_INTEREST]
    subs = bybit.subscriptions(["BTC-USDT"], all_types)
    (msg,) = bybit.subscribe_messages(bybit.wire_streams(subs), 1)
    assert orjson.loads(msg)["args"] == ["tickers.BTCUSDT"]
    assert bybit.record_types(subs) is None  # everything tickers yields is wanted
    only_funding = bybit.subscriptions(["BTC-USDT"], [DataType.FUNDING_RATE, DataType.TRADE])
    assert bybit.record_types(only_funding) == {DataType.FUNDING_RATE, DataType.TRADE}
    assert VENUES["binance_usdm"].record_types(VENUES["binance_usdm"].subscriptions(["BTC-USDT"], [DataType.TRADE])) \
        is None  # fmt: skip


def test_records_round_trip_through_the_bus_codec():
    frames = [("binance_usdm", BINANCE_MARK_PRICE), ("binance_usdm", BINANCE_FORCE_ORDER), ("okx_swap", OKX_FUNDING),
              ("okx_swap", OKX_OPEN_INTEREST), ("okx_swap", OKX_LIQUIDATIONS), ("bybit_linear", BYBIT_TICKER_SNAPSHOT),
              ("bybit_linear", BYBIT_ALL_LIQUIDATION)]  # fmt: skip
    for venue, frame in frames:
        for r in parse(venue, frame):
            assert msgspec.json.decode(msgspec.json.encode(r), type=type(r)) == r


# --- end to end: simulator -> collectors -> real nats-server ------------------------------------------------

E2E_SPECS = {
    "binance_usdm": (DataType.FUNDING_RATE, DataType.LIQUIDATION),
    "okx_swap": (DataType.FUNDING_RATE, DataType.OPEN_INTEREST, DataType.LIQUIDATION),
    # no ticker asked for: the tickers stream's Ticker records must not reach the bus
    "bybit_linear": (DataType.FUNDING_RATE, DataType.OPEN_INTEREST, DataType.LIQUIDATION),
}
E2E_SYMBOLS = ("BTC-USDT", "ETH-USDT")


async def _observe(url: str, messages: list[str], frames: list[str], stop: asyncio.Event) -> None:
    """A plain WebSocket client on the same streams: the simulator broadcasts the same frames to every subscriber,
    so what it receives is what the sim sent the collectors (the sim's values, read without our parsers)."""
    async with websockets.connect(url) as ws:
        for m in messages:
            await ws.send(m)
        while not stop.is_set():
            try:
                frames.append(await asyncio.wait_for(ws.recv(), 0.2))
            except TimeoutError:
                continue


def _sim_values(venue: str, frames: list[str]) -> dict[tuple[str, str, int], list[dict]]:
    """(data type, instrument, ts µs) -> the field values the sim sent, extracted with orjson from the raw frames."""
    out: dict[tuple[str, str, int], list[dict]] = {}
    merged: dict[str, dict] = {}  # bybit tickers: snapshot + deltas, merged here independently of the parser

    def add(dt: str, inst: str, ts_ms: int | str, values: dict) -> None:
        out.setdefault((dt, inst, int(ts_ms) * 1000), []).append(values)

    for text in frames:
        try:
            obj = orjson.loads(text)
        except orjson.JSONDecodeError:
            continue  # the injected malformed copies
        if venue == "binance_usdm" and "stream" in obj:
            d = obj["data"]
            if d.get("e") == "markPriceUpdate":
                add(
                    "funding_rate",
                    d["s"],
                    d["E"],
                    {
                        "funding_rate": d["r"],
                        "mark_price": d["p"],
                        "index_price": d["i"],
                        "estimated_settle_price": d["P"],
                        "funding_time": d["T"] * 1000,
                    },
                )
            elif d.get("e") == "forceOrder":
                o = d["o"]
                add("liquidation", o["s"], o["T"], {"side": o["S"].lower(), "price": o["p"], "size": o["q"],
                    "avg_price": o["ap"], "status": o["X"], "filled_size": o["z"]})  # fmt: skip
        elif venue == "okx_swap" and "arg" in obj and "data" in obj:
            ch = obj["arg"]["channel"]
            for d in obj["data"]:
                if ch == "funding-rate":
                    add("funding_rate", d["instId"], d["ts"], {"funding_rate": d["fundingRate"],
                        "funding_time": int(d["fundingTime"]) * 1000, "settled_rate": d["settFundingRate"],
                        "max_funding_rate": d["maxFundingRate"], "premium": d["premium"]})  # fmt: skip
                elif ch == "mark-price":
                    add("funding_rate", d["instId"], d["ts"], {"mark_price": d["markPx"], "funding_rate": None})
                elif ch == "open-interest":
                    add("open_interest", d["instId"], d["ts"], {"open_interest": d["oi"],
                        "open_interest_ccy": d["oiCcy"], "open_interest_value": d["oiUsd"]})  # fmt: skip
                elif ch == "liquidation-orders":
                    for x in d["details"]:
                        add("liquidation", d["instId"], x["ts"], {"side": x["side"], "price": x["bkPx"],
                            "size": x["sz"], "position_side": x["posSide"]})  # fmt: skip
        elif venue == "bybit_linear" and "topic" in obj:
            if obj["topic"].startswith("tickers."):
                d = obj["data"]
                state = merged.setdefault(d["symbol"], {})
                if obj["type"] == "snapshot":
                    state.clear()
                state.update(d)
                add("funding_rate", d["symbol"], obj["ts"], {"funding_rate": state["fundingRate"],
                    "mark_price": state["markPrice"], "index_price": state["indexPrice"],
                    "funding_time": int(state["nextFundingTime"]) * 1000})  # fmt: skip
                add("open_interest", d["symbol"], obj["ts"], {"open_interest": state["openInterest"],
                    "open_interest_value": state["openInterestValue"]})  # fmt: skip
            elif obj["topic"].startswith("allLiquidation."):
                for x in obj["data"]:
                    add("liquidation", x["s"], x["T"], {"position_side": "long" if x["S"] == "Buy" else "short",
                        "price": x["p"], "size": x["v"]})  # fmt: skip
    return out


async def test_derivatives_streams_flow_from_the_sim_to_their_subjects(tmp_path, nats_server) -> None:
    faults = {name: Faults(malformed_every_n=9) for name in E2E_SPECS}  # fault injection applies to these streams
    cfg = SimConfig(mode="synthetic", venues=list(E2E_SPECS), symbols=list(E2E_SYMBOLS), rate=25.0, faults=faults)
    specs = [CollectorSpec(name, E2E_SYMBOLS, types) for name, types in E2E_SPECS.items()]
    observed: dict[str, list[str]] = {name: [] for name in E2E_SPECS}
    async with SimServer(cfg, host="127.0.0.1", port=0) as sim:
        stop = asyncio.Event()
        observers = []
        for name, types in E2E_SPECS.items():
            venue = VENUES[name]
            messages = venue.subscribe_messages(venue.wire_streams(venue.subscriptions(list(E2E_SYMBOLS), types)), 1)
            observers.append(asyncio.create_task(_observe(sim.ws_url(name), messages, observed[name], stop)))
        await asyncio.sleep(0.3)
        report = await run_collectors(
            specs, nats_url=nats_server.url, data_dir=tmp_path, source="live", duration_s=4.0,
            session_config=SessionConfig(stall_timeout_s=3.0, backoff_initial_s=0.05, backoff_max_s=0.5),
            ws_bases={name: sim.ws_base(name) for name in E2E_SPECS},
        )  # fmt: skip
        await asyncio.sleep(0.3)
        stop.set()
        await asyncio.gather(*observers)
        truth = sim.truth()

    nc = await connect(nats_server.url)
    msgs = [m for m in await stream_messages(nc) if not m.subject.startswith("md.status.")]
    await nc.close()
    assert report.publisher.dropped == 0
    assert len({m.headers["Nats-Msg-Id"] for m in msgs}) == len(msgs)
    by_subject = Counter(m.subject for m in msgs)
    for c in report.collectors:
        assert c.parse_errors > 0, c.venue  # the malformed copies were seen and skipped
    for name, types in E2E_SPECS.items():
        venue = VENUES[name]
        values = _sim_values(name, observed[name])
        for dt in types:
            for symbol in E2E_SYMBOLS:
                subject = f"md.{dt}.{venue.exchange}.perpetual.{symbol}"
                assert by_subject[subject] > 0, subject
        assert not any(s.startswith(f"md.ticker.{venue.exchange}.") for s in by_subject), name
        checked = 0
        for m in msgs:
            _, dt, exchange, _, symbol = m.subject.split(".")
            if exchange != venue.exchange:
                continue
            record = msgspec.json.decode(m.data, type=RECORD_TYPES[DataType(dt)])
            assert (record.data_type, record.symbol, record.market) == (dt, symbol, "perpetual")
            assert record.natural_key() == m.headers["Nats-Msg-Id"]
            sent = values.get((dt, record.instrument, record.ts))
            if sent is None:
                continue  # sent before the observer subscribed
            fields = msgspec.structs.asdict(record)
            assert any(all(fields[k] == v for k, v in want.items()) for want in sent), (record, sent)
            checked += 1
        assert checked >= 10, name
        # ground truth counts them like any stream (Bybit's funding and open interest ride on its tickers frames)
        per_venue = truth["venues"][name]["instruments"]
        for dt in types:
            key = "ticker" if venue.channels[dt] == "tickers" else str(dt)
            counts = [per[key] for per in per_venue.values() if key in per]
            assert sum(c["frames"] for c in counts) > 0 and sum(c["malformed"] for c in counts) > 0, (name, dt)
