"""The Great Expectations suites: one per table (row frames) plus the derived ones (continuity, freshness).

Every expectation carries ``meta``: ``check`` (a short stable name, the metric label and what the report shows),
``severity`` (``critical``: the data cannot be trusted, the flow run fails; ``warning``: reported, not failing)
and ``about`` (one line for the reader of the Data Docs). The frames come from ``marketprism.quality.checks``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import great_expectations as gx
import great_expectations.expectations as gxe
import pandas as pd

from marketprism.quality.checks import DECIMAL_COLUMNS, Rules
from marketprism.records import Exchange, Market, Side
from marketprism.store.schema import all_specs

CRITICAL = "critical"
WARNING = "warning"
ROW_SUITES: tuple[str, ...] = tuple(s.table for s in all_specs())
DERIVED_SUITES: tuple[str, ...] = ("trade_continuity", "book_delta_continuity", "freshness")
# What GX reports for a string column: pandas 3 has a string dtype ("str"), pandas 2 stores strings as objects.
STRING_TYPE = "str" if int(pd.__version__.split(".")[0]) >= 3 else "object"
_SYMBOL = r"^[A-Z0-9]+-[A-Z0-9]+$"


def _meta(check: str, severity: str, about: str) -> dict[str, Any]:
    return {"check": check, "severity": severity, "about": about}


@dataclass
class SuiteSpec:
    name: str
    expectations: list[Any]
    about: str


def _common(table: str, rules: Rules) -> list[Any]:
    out: list[Any] = []
    for col in ("exchange", "market", "symbol", "instrument", "ts", "recv_ts", "key"):
        out.append(gxe.ExpectColumnValuesToNotBeNull(column=col, meta=_meta("not_null", CRITICAL, f"{col} is set")))
    for col in ("exchange", "market", "symbol", "instrument", "key"):
        out.append(gxe.ExpectColumnValuesToBeOfType(column=col, type_=STRING_TYPE,
                                                    meta=_meta("types", CRITICAL, f"{col} is a string")))  # fmt: skip
    for col in ("ts", "recv_ts"):
        about = f"{col} is a UTC timestamp"
        meta = _meta("types", CRITICAL, about)
        out.append(gxe.ExpectColumnValuesToBeOfType(column=col, type_="Timestamp", meta=meta))
    out += [
        gxe.ExpectColumnValuesToBeInSet(column="exchange", value_set=[e.value for e in Exchange],
                                        meta=_meta("known_venue", CRITICAL, "exchange is a known venue")),
        gxe.ExpectColumnValuesToBeInSet(column="market", value_set=[m.value for m in Market],
                                        meta=_meta("known_venue", CRITICAL, "market is a known market")),
        gxe.ExpectColumnValuesToMatchRegex(column="symbol", regex=_SYMBOL,
                                           meta=_meta("symbol_normalised", CRITICAL, "symbol is BASE-QUOTE")),
        gxe.ExpectColumnValuesToBeUnique(column="key",
                                         meta=_meta("duplicate_key", CRITICAL, "no natural key is stored twice")),
    ]  # fmt: skip
    delay = rules.delay_bound(table)
    about = f"exchange time is at most {rules.max_lead_s:g}s after" + (
        f" and {delay:g}s before the receive time" if delay is not None else " the receive time"
    )
    out.append(gxe.ExpectColumnValuesToBeBetween(column="recv_lag_s", min_value=-rules.max_lead_s, max_value=delay,
                                                 meta=_meta("exchange_time_window", WARNING, about)))  # fmt: skip
    if DECIMAL_COLUMNS.get(table):
        out.append(
            gxe.ExpectColumnValuesToBeBetween(
                column="unparseable",
                min_value=0,
                max_value=0,
                meta=_meta("decimal_parse", CRITICAL, f"{', '.join(DECIMAL_COLUMNS[table])} are decimal strings"),
            )
        )
    return out


def _positive(col: str, *, strict: bool = True, check: str = "positive_values", required: bool = True) -> list[Any]:
    out: list[Any] = []
    if required:
        out.append(gxe.ExpectColumnValuesToNotBeNull(column=col, meta=_meta("not_null", CRITICAL, f"{col} is set")))
    out.append(
        gxe.ExpectColumnValuesToBeBetween(
            column=col,
            min_value=0,
            strict_min=strict,
            meta=_meta(check, CRITICAL, f"{col} is {'> 0' if strict else '>= 0'} where given"),
        )
    )
    return out


def _in_set(col: str, values: list[str], check: str, severity: str = CRITICAL) -> Any:
    return gxe.ExpectColumnValuesToBeInSet(column=col, value_set=values,
                                           meta=_meta(check, severity, f"{col} in {values}"))  # fmt: skip


def _zero(col: str, check: str, about: str, severity: str = CRITICAL) -> Any:
    return gxe.ExpectColumnValuesToBeBetween(column=col, min_value=0, max_value=0, meta=_meta(check, severity, about))


def _true(col: str, check: str, about: str, severity: str = CRITICAL) -> Any:
    return gxe.ExpectColumnValuesToBeInSet(column=col, value_set=[True], meta=_meta(check, severity, about))


def _specific(table: str, rules: Rules) -> list[Any]:
    sides = [s.value for s in Side]
    if table == "trades":
        return [
            *_positive("price"), *_positive("size"), _in_set("side", sides, "side_in_set"),
            gxe.ExpectColumnValuesToNotBeNull(column="trade_id", meta=_meta("not_null", CRITICAL, "trade_id is set")),
            _true("id_range_ok", "aggtrade_id_range", "an aggTrade's first_trade_id <= last_trade_id"),
        ]  # fmt: skip
    if table == "tickers":
        return [
            *_positive("bid_price"), *_positive("ask_price"),
            *_positive("bid_size", strict=False), *_positive("ask_size", strict=False),
            *_positive("last_price", required=False),
            gxe.ExpectColumnPairValuesAToBeGreaterThanB(
                column_A="ask_price", column_B="bid_price", or_equal=False, ignore_row_if="either_value_is_missing",
                meta=_meta("ticker_crossed", WARNING, "best ask > best bid")),
        ]  # fmt: skip
    if table == "books":
        return [
            gxe.ExpectColumnPairValuesAToBeGreaterThanB(
                column_A="best_ask", column_B="best_bid", or_equal=False, ignore_row_if="either_value_is_missing",
                meta=_meta("book_crossed", CRITICAL, "a book is never crossed: best ask > best bid")),
            _true("bids_sorted", "book_sorted", "bids strictly descending by price"),
            _true("asks_sorted", "book_sorted", "asks strictly ascending by price"),
            _zero("bad_levels", "positive_values", "every level has a positive price and size"),
            _zero("excess_levels", "book_depth", "no side holds more levels than the book's depth"),
            gxe.ExpectColumnValuesToBeBetween(column="depth", min_value=1,
                                              meta=_meta("positive_values", CRITICAL, "depth >= 1")),
        ]  # fmt: skip
    if table == "depths":
        return [_zero("bad_levels", "positive_values", "levels: price > 0, size >= 0 (0 deletes)")]
    if table == "book_deltas":
        return [
            _zero("bad_levels", "positive_values", "levels: price > 0, size >= 0 (0 deletes)"),
            gxe.ExpectColumnValuesToNotBeNull(column="resync", meta=_meta("not_null", CRITICAL, "resync is set")),
            gxe.ExpectColumnValuesToNotBeNull(column="is_snapshot",
                                              meta=_meta("not_null", CRITICAL, "is_snapshot is set")),
        ]  # fmt: skip
    if table == "statuses":
        return [_in_set("event", ["connected", "disconnected"], "event_in_set")]
    if table == "funding_rates":
        bound = rules.max_abs_funding_rate
        return [
            *(gxe.ExpectColumnValuesToBeBetween(
                column=c, min_value=-bound, max_value=bound,
                meta=_meta("funding_bounds", CRITICAL, f"|{c}| <= {bound:g} per interval")) for c in
              ("funding_rate", "predicted_rate")),
            *_positive("mark_price", required=False), *_positive("index_price", required=False),
        ]  # fmt: skip
    if table == "open_interests":
        return [*_positive("open_interest", strict=False), *_positive("open_interest_value", strict=False,
                                                                      required=False)]  # fmt: skip
    if table == "liquidations":
        return [*_positive("price"), *_positive("size"), _in_set("side", sides, "side_in_set")]
    if table == "long_short_ratios":
        return [
            _in_set("kind", ["top_position", "top_account", "global_account"], "kind_in_set"),
            *_positive("long_short_ratio", strict=False),
            *(gxe.ExpectColumnValuesToBeBetween(column=c, min_value=0, max_value=1,
                                                meta=_meta("ratio_bounds", CRITICAL, f"{c} is a share in [0, 1]"))
              for c in ("long_ratio", "short_ratio")),
            gxe.ExpectColumnValuesToBeBetween(
                column="ratio_error", min_value=0, max_value=rules.ratio_rel_tolerance,
                meta=_meta("ratio_consistency", CRITICAL,
                           f"long_short_ratio = long/short within {rules.ratio_rel_tolerance:g} (relative)")),
            gxe.ExpectColumnValuesToBeBetween(
                column="share_sum_error", min_value=0, max_value=rules.share_sum_tolerance,
                meta=_meta("ratio_consistency", CRITICAL,
                           f"long_ratio + short_ratio = 1 within {rules.share_sum_tolerance:g}")),
        ]  # fmt: skip
    if table == "volatility_indices":
        return [*(x for c in ("open", "high", "low", "close") for x in _positive(c)),
                _true("ohlc_consistent", "ohlc_consistency", "low <= open, close <= high")]  # fmt: skip
    return []


def _derived(name: str, rules: Rules) -> list[Any]:
    if name == "trade_continuity":
        return [_zero("missing_trades", "trade_id_gap",
                      "Binance trade ids are contiguous per symbol: none is missing")]  # fmt: skip
    if name == "book_delta_continuity":
        return [
            _zero("broken_links", "book_delta_gap",
                  "every book_delta update's prev_seq is the seq of the stored record before it"),
            gxe.ExpectColumnValuesToBeBetween(
                column="resyncs", min_value=0, max_value=rules.max_resyncs,
                meta=_meta("book_resyncs", WARNING, f"at most {rules.max_resyncs} resyncs per symbol and window")),
        ]  # fmt: skip
    if name == "freshness":
        return [
            gxe.ExpectColumnPairValuesAToBeGreaterThanB(
                column_A="max_age_s", column_B="age_s", or_equal=True, ignore_row_if="neither",
                meta=_meta("feed_stale", CRITICAL, "newest record per feed is younger than freshness_s")),
            gxe.ExpectColumnPairValuesAToBeGreaterThanB(
                column_A="max_age_s", column_B="max_gap_s", or_equal=True, ignore_row_if="neither",
                meta=_meta("feed_gap", CRITICAL, "no silence in the window longer than freshness_s")),
        ]  # fmt: skip
    raise KeyError(name)


def build_suites(rules: Rules | None = None) -> list[SuiteSpec]:
    """Every suite, rows first, then the derived ones."""
    rules = rules or Rules()
    out = []
    for table in ROW_SUITES:
        out.append(SuiteSpec(table, [*_common(table, rules), *_specific(table, rules)], f"rows of {table}"))
    for name in DERIVED_SUITES:
        out.append(SuiteSpec(name, _derived(name, rules), name.replace("_", " ")))
    return out


def gx_suite(spec: SuiteSpec) -> gx.ExpectationSuite:
    # Expectations given to the constructor: add_expectation() would write the stored suite once per expectation.
    return gx.ExpectationSuite(name=spec.name, expectations=list(spec.expectations), meta={"notes": spec.about})
