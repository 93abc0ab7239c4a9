"""REST-pull parsers per venue and type: documentation shapes, both timestamp encodings, unknown fields, errors."""

from __future__ import annotations

import json
from decimal import Decimal
from pathlib import Path

import pytest

from marketprism.records import FundingRate, LongShortRatio, OpenInterest, VolatilityIndex
from marketprism.venues import PULLS, ParseError
from marketprism.venues.pull import PullContext, period_seconds, ratio_text

DOCS = Path(__file__).resolve().parents[2] / "shared/fixtures/binance/docs_examples_NOT_REAL"
RECV = 1_700_000_000_000_000


def ctx(symbol: str, instrument: str, period: str = "") -> PullContext:
    return PullContext(symbol, instrument, period, RECV)


def parse(pull: str, body: object, symbol: str = "BTC-USDT", period: str | None = None) -> list:
    p = PULLS[pull]
    raw = body if isinstance(body, bytes) else json.dumps(body).encode()
    return p.parse(raw, ctx(symbol, p.to_instrument(symbol), p.venue_period(period)))


@pytest.mark.parametrize(
    ("pull", "doc"),
    [("binance_usdm.top_position", "usdm_top_long_short_position_ratio"),
     ("binance_usdm.top_account", "usdm_top_long_short_account_ratio"),
     ("binance_usdm.global_account", "usdm_global_long_short_account_ratio")],
)  # fmt: skip
def test_binance_ratios_from_the_docs_examples_with_string_and_number_timestamps(pull: str, doc: str) -> None:
    rows = json.loads((DOCS / f"{doc}.docs_example.json").read_text())
    assert all(isinstance(r["timestamp"], str) for r in rows)  # the USDⓈ-M docs: a string
    as_numbers = [{**r, "timestamp": int(r["timestamp"]), "brandNewField": {"x": 1}} for r in rows]  # COIN-M: number
    kind = pull.split(".")[1]
    for body in (rows, as_numbers):
        recs = parse(pull, body)
        assert [type(r) for r in recs] == [LongShortRatio, LongShortRatio]
        first = recs[0]
        assert (first.exchange, first.market, first.symbol, first.instrument) == ("binance", "perpetual", "BTC-USDT",
                                                                                  "BTCUSDT")  # fmt: skip
        assert first.ts == int(rows[0]["timestamp"]) * 1000 and first.recv_ts == RECV
        assert (first.kind, first.period) == (kind, "5m")
        # kept exactly as the venue sent them (the docs' own numbers do not all agree with long/short)
        assert (first.long_short_ratio, first.long_ratio, first.short_ratio) == (
            rows[0]["longShortRatio"],
            rows[0]["longAccount"],
            rows[0]["shortAccount"],
        )
        assert first.natural_key() == f"long_short_ratio:binance:perpetual:BTC-USDT:{kind}:5m:{first.ts}"


def test_binance_ratio_numbers_coin_m_field_names_and_bad_buckets() -> None:
    coin_m = [{"pair": "BTCUSD", "longShortRatio": 1.5, "longPosition": 0.6, "shortPosition": 0.4,
               "timestamp": 1583139600000}]  # fmt: skip
    (rec,) = parse("binance_usdm.top_position", coin_m)
    assert (rec.long_short_ratio, rec.long_ratio, rec.short_ratio, rec.instrument) == ("1.5", "0.6", "0.4", "BTCUSDT")
    for bad in ([{"longShortRatio": "1", "timestamp": "12x"}], [{"timestamp": "1"}], {"code": -1121}, b"<html>"):
        with pytest.raises(ParseError):
            parse("binance_usdm.global_account", bad)
    assert parse("binance_usdm.global_account", []) == []


def test_binance_open_interest_from_the_docs_example() -> None:
    body = json.loads((DOCS / "usdm_open_interest.docs_example.json").read_text())
    for b in (body, {**body, "time": str(body["time"]), "unknown": [1, 2]}):
        (rec,) = parse("binance_usdm.open_interest", b)
        assert isinstance(rec, OpenInterest)
        assert (rec.open_interest, rec.ts, rec.instrument) == ("10659.509", 1589437530011000, "BTCUSDT")
        assert rec.open_interest_value is None


@pytest.mark.parametrize("kind", ["global_account", "top_account", "top_position"])
def test_okx_rubik_ratios_newest_first_with_string_or_number_times(kind: str) -> None:
    body = {"code": "0", "msg": "", "data": [["1729323600000", "0.9398602814619824"], [1729323300000, 1.25, "x"]],
            "extra": True}  # fmt: skip
    recs = parse(f"okx_swap.{kind}", body)
    assert [r.ts for r in recs] == [1729323600000000, 1729323300000000]
    assert [r.long_short_ratio for r in recs] == ["0.9398602814619824", "1.25"]
    assert all(r.long_ratio is None and r.short_ratio is None and r.kind == kind for r in recs)  # only the ratio
    assert recs[0].instrument == ("BTC" if kind == "global_account" else "BTC-USDT-SWAP")
    assert recs[0].period == "5m" and parse(f"okx_swap.{kind}", body, period="1h")[0].period == "1H"
    with pytest.raises(ParseError, match="51001"):
        parse(f"okx_swap.{kind}", {"code": "51001", "msg": "Instrument ID does not exist", "data": []})


def test_okx_open_interest_keeps_contracts_coin_and_usd() -> None:
    body = {"code": "0", "msg": "", "data": [{"instType": "SWAP", "instId": "BTC-USDT-SWAP", "oi": "2125419",
            "oiCcy": "21254.19", "oiUsd": "1324829153.33", "ts": "1701936000000", "new": "field"}]}  # fmt: skip
    (rec,) = parse("okx_swap.open_interest", body)
    assert (rec.market, rec.instrument, rec.ts) == ("perpetual", "BTC-USDT-SWAP", 1701936000000000)
    assert (rec.open_interest, rec.open_interest_ccy, rec.open_interest_value) == ("2125419", "21254.19",
                                                                                   "1324829153.33")  # fmt: skip


def test_bybit_account_ratio_computes_the_ratio_exactly_in_decimal() -> None:
    body = {"retCode": 0, "retMsg": "OK", "result": {"list": [
        {"symbol": "BTCUSDT", "buyRatio": "0.5777", "sellRatio": "0.4223", "timestamp": "1695772800000"},
        {"symbol": "BTCUSDT", "buyRatio": "0.5", "sellRatio": "0.5", "timestamp": 1695772500000, "more": 1}],
        "nextPageCursor": ""}, "retExtInfo": {}, "time": 1695785131028}  # fmt: skip
    recs = parse("bybit_linear.global_account", body)
    assert [r.ts for r in recs] == [1695772800000000, 1695772500000000]
    first = recs[0]
    assert (first.long_ratio, first.short_ratio, first.kind, first.period) == ("0.5777", "0.4223", "global_account",
                                                                               "5min")  # fmt: skip
    assert first.long_short_ratio == "1.36798484489699266"  # 0.5777 / 0.4223 to 18 significant digits
    assert abs(Decimal(first.long_short_ratio) * Decimal("0.4223") - Decimal("0.5777")) < Decimal("1e-17")
    assert recs[1].long_short_ratio == "1"
    assert ratio_text("1", "0") == "Infinity"
    with pytest.raises(ParseError, match="10001"):
        parse("bybit_linear.global_account", {"retCode": 10001, "retMsg": "params error", "result": {}})


def test_deribit_dvol_candles_keep_the_numbers_text() -> None:
    body = (b'{"jsonrpc":"2.0","result":{"data":[[1598019300000,0.210084879,0.2101,0.2099,0.21],'
            b'[1598019360000,53.42,55.0,52.1,5.35e1,"extra"]],"continuation":null},"usIn":1,"usOut":2,"usDiff":1,'
            b'"testnet":false,"new":1}')  # fmt: skip
    recs = parse("deribit.volatility_index", body, symbol="BTC-USD")
    assert all(isinstance(r, VolatilityIndex) for r in recs)
    a, b = recs
    assert (a.exchange, a.market, a.symbol, a.instrument, a.resolution) == ("deribit", "option", "BTC-USD", "BTC",
                                                                            "60")  # fmt: skip
    assert (a.ts, a.open, a.high, a.low, a.close) == (1598019300000000, "0.210084879", "0.2101", "0.2099", "0.21")
    assert b.close == "5.35e1"  # exactly as sent
    assert parse("deribit.volatility_index", body, symbol="BTC-USD", period="1h")[0].resolution == "3600"
    with pytest.raises(ParseError, match="-32602"):
        parse("deribit.volatility_index", {"jsonrpc": "2.0", "error": {"code": -32602, "message": "Invalid params"}})
    with pytest.raises(ParseError):
        parse("deribit.volatility_index", {"jsonrpc": "2.0", "result": {"data": [[1, 2, 3]]}})


def test_deribit_funding_history() -> None:
    body = (b'{"jsonrpc":"2.0","result":[{"timestamp":1569891600000,"index_price":8222.87,"prev_index_price":8305.72,'
            b'"interest_8h":-0.00009234260068476106,"interest_1h":-4.739622041017375e-7,"new":"x"},'
            b'{"timestamp":"1569895200000","interest_8h":0.0004}]}')  # fmt: skip
    a, b = parse("deribit.funding_rate", body, symbol="BTC-USD")
    assert isinstance(a, FundingRate) and a.instrument == "BTC-PERPETUAL" and a.market == "perpetual"
    assert (a.ts, a.funding_time, a.funding_rate, a.index_price) == (1569891600000000, 1569891600000000,
                                                                     "-0.00009234260068476106", "8222.87")  # fmt: skip
    assert (b.ts, b.funding_rate, b.index_price) == (1569895200000000, "0.0004", None)
    assert PULLS["deribit.funding_rate"].to_instrument("ETH-USDC") == "ETH_USDC-PERPETUAL"


def test_requests_are_declared_as_data() -> None:
    path, params = PULLS["binance_usdm.top_position"].request("BTC-USDT", "1h", now_ms=1_000_000_000)
    assert (path, params) == ("/futures/data/topLongShortPositionRatio",
                              {"symbol": "BTCUSDT", "period": "1h", "limit": "30"})  # fmt: skip
    _, params = PULLS["okx_swap.global_account"].request("ETH-USDT", None, now_ms=10_000_000_000)
    assert params == {"ccy": "ETH", "period": "5m", "begin": str(10_000_000_000 - 30 * 300_000),
                      "end": "10000000000"}  # fmt: skip
    _, params = PULLS["deribit.volatility_index"].request("BTC-USD", "1h", now_ms=10_000_000_000)
    assert params["resolution"] == "3600" and params["currency"] == "BTC"
    assert params["start_timestamp"] == str(10_000_000_000 - 30 * 3_600_000)
    _, params = PULLS["deribit.funding_rate"].request("BTC-USD", now_ms=10_000_000_000)
    assert params["start_timestamp"] == str(10_000_000_000 - 86_400_000)
    assert PULLS["bybit_linear.global_account"].venue_period("15m") == "15min"
    with pytest.raises(ValueError, match="not offered"):
        PULLS["okx_swap.global_account"].venue_period("15m")  # the currency ratio has 5m/1H/1D only
    assert period_seconds("5min") == 300 and period_seconds("1H") == 3600
