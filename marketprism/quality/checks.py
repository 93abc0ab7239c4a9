"""The frames the data-quality suites validate, computed with polars from stored rows (no Great Expectations here).

Two kinds of frame:

* **Row frames**, one per table (``trades``, ``books``...): the stored rows with the venue's decimal strings cast
  to numbers (a string that does not parse becomes null and is counted in ``unparseable``), ``recv_lag_s``
  (receive time minus exchange time), and per-row facts that live in nested level lists (``best_bid``,
  ``bids_sorted``, ``bad_levels``...). The level lists themselves are dropped: they are what makes a frame big.
* **Derived frames**, for what a per-row expectation cannot see: trade-id continuity per symbol
  (``trade_continuity``: ``missing_trades``), book-delta sequence continuity and resync counts per symbol
  (``book_delta_continuity``: ``broken_links``, ``resyncs``) and freshness per (exchange, market, data_type)
  (``freshness``: ``age_s``, ``max_gap_s`` against ``max_age_s``). They are small (one row per symbol or feed)
  and are validated through GX like the rest, so one report holds every check.

Every frame has a ``key`` column: the stored natural key for row frames, ``exchange:market:symbol`` (or
``exchange:market:data_type``) for derived ones. GX reports failing rows by it.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import polars as pl

from marketprism.store.schema import TABLE_NAMES

# Venues whose trade ids are contiguous per symbol (Binance @trade ids: a gap is a missed trade). aggTrade ids are
# contiguous too but are not trades; OKX and Bybit ids are not contiguous.
CONTIGUOUS_TRADE_IDS: frozenset[str] = frozenset({"binance"})
LEVEL_TABLES = ("depths", "books", "book_deltas")
# REST-pulled series: the event time may be far older than the receive time (history, slow buckets).
_REST_TABLES = {"funding_rates", "open_interests", "long_short_ratios", "volatility_indices"}

DECIMAL_COLUMNS: dict[str, tuple[str, ...]] = {
    "trades": ("price", "size"),
    "tickers": ("bid_price", "bid_size", "ask_price", "ask_size", "last_price"),
    "funding_rates": ("funding_rate", "predicted_rate", "mark_price", "index_price"),
    "open_interests": ("open_interest", "open_interest_value"),
    "liquidations": ("price", "size"),
    "long_short_ratios": ("long_short_ratio", "long_ratio", "short_ratio"),
    "volatility_indices": ("open", "high", "low", "close"),
}


@dataclass(frozen=True)
class Rules:
    """Thresholds of the checks. ``freshness_s`` comes from ``QualityConfig.freshness_s`` (data_type -> seconds)."""

    freshness_s: Mapping[str, float] = field(default_factory=lambda: {"trade": 120.0, "depth": 30.0, "ticker": 30.0})
    max_lead_s: float = 5.0  # exchange time may be at most this far after the receive time (clock skew)
    max_delay_s: float = 60.0  # ...and at most this far before it, for streamed records
    max_rest_delay_s: float | None = None  # REST-pulled series (history, slow buckets): no lower bound by default
    max_abs_funding_rate: float = 0.05  # per funding interval; venues cap far below (Binance +-3 % at most)
    ratio_rel_tolerance: float = 0.01  # |long_short_ratio - long/short| / long_short_ratio (4-decimal rounding)
    share_sum_tolerance: float = 0.001  # |long_ratio + short_ratio - 1|
    max_resyncs: int = 10  # per symbol and window before the resync count turns into a warning
    contiguous_trade_ids: frozenset[str] = CONTIGUOUS_TRADE_IDS

    def delay_bound(self, table: str) -> float | None:
        return self.max_rest_delay_s if table in _REST_TABLES else self.max_delay_s


def _decimal(name: str) -> pl.Expr:
    return pl.col(name).cast(pl.Float64, strict=False)


def _unparseable(columns: Iterable[str]) -> pl.Expr:
    parts = [(pl.col(c).is_not_null() & _decimal(c).is_null()).cast(pl.Int32) for c in columns]
    return pl.sum_horizontal(parts).alias("unparseable") if parts else pl.lit(0, pl.Int32).alias("unparseable")


def _side_prices(name: str) -> pl.Expr:
    return pl.col(name).list.eval(pl.element().list.get(0, null_on_oob=True).cast(pl.Float64, strict=False))


def _bad_levels(name: str, *, zero_size_ok: bool) -> pl.Expr:
    """Levels whose price is not a positive decimal or whose size is not a non-negative (books: positive) one."""
    price = pl.element().list.get(0, null_on_oob=True).cast(pl.Float64, strict=False)
    size = pl.element().list.get(1, null_on_oob=True).cast(pl.Float64, strict=False)
    bad_size = size < 0 if zero_size_ok else size <= 0
    bad = price.is_null() | (price <= 0) | size.is_null() | bad_size
    return pl.col(name).list.eval(bad.cast(pl.Int32)).list.sum().fill_null(0)


def _strictly(prices: pl.Expr, descending: bool) -> pl.Expr:
    step = pl.element().diff()
    ok = (step < 0) if descending else (step > 0)
    return prices.list.eval(ok.fill_null(True)).list.all().fill_null(True)


def row_frame(table: str, df: pl.DataFrame, rules: Rules | None = None) -> pl.DataFrame:
    """The frame the ``table`` suite validates (see the module doc). ``df``: stored rows as ``read()`` gives them."""
    decimals = [c for c in DECIMAL_COLUMNS.get(table, ()) if c in df.columns]
    lag = ((pl.col("recv_ts") - pl.col("ts")).dt.total_microseconds() / 1e6).alias("recv_lag_s")
    out = df.with_columns(_unparseable(decimals), lag, *[_decimal(c) for c in decimals])
    if table == "books":
        bids, asks = _side_prices("bids"), _side_prices("asks")
        out = out.with_columns(
            bids.list.first().alias("best_bid"),
            asks.list.first().alias("best_ask"),
            _strictly(bids, descending=True).alias("bids_sorted"),
            _strictly(asks, descending=False).alias("asks_sorted"),
            (_bad_levels("bids", zero_size_ok=False) + _bad_levels("asks", zero_size_ok=False)).alias("bad_levels"),
            (pl.max_horizontal(pl.col("bids").list.len(), pl.col("asks").list.len()) - pl.col("depth"))
            .clip(lower_bound=0)
            .fill_null(0)
            .alias("excess_levels"),
        )
    elif table in ("depths", "book_deltas"):
        out = out.with_columns(
            (_bad_levels("bids", zero_size_ok=True) + _bad_levels("asks", zero_size_ok=True)).alias("bad_levels")
        )
    elif table == "trades":
        agg = pl.col("aggregate").fill_null(False)
        out = out.with_columns(
            (~agg | (pl.col("first_trade_id") <= pl.col("last_trade_id")).fill_null(False)).alias("id_range_ok")
        )
    elif table == "long_short_ratios":
        long_, short = pl.col("long_ratio"), pl.col("short_ratio")
        lsr = pl.col("long_short_ratio")
        out = out.with_columns(
            pl.when(short > 0)
            .then((lsr - long_ / short).abs() / pl.max_horizontal(lsr.abs(), pl.lit(1e-12)))
            .otherwise(None)
            .alias("ratio_error"),
            (long_ + short - 1).abs().alias("share_sum_error"),
        )
    elif table == "volatility_indices":
        o, h, lo, c = (pl.col(x) for x in ("open", "high", "low", "close"))
        ok = (h >= pl.max_horizontal(o, c, lo)) & (lo <= pl.min_horizontal(o, c, h))
        out = out.with_columns(ok.fill_null(False).alias("ohlc_consistent"))
    levels = [c for c in ("bids", "asks") if c in out.columns and table in LEVEL_TABLES]
    return out.drop(levels)


def trade_continuity(trades: pl.DataFrame, rules: Rules | None = None) -> pl.DataFrame:
    """Per symbol of a venue with contiguous trade ids: ``missing_trades`` (ids skipped) and ``gaps`` (where)."""
    rules = rules or Rules()
    ids = (
        trades.lazy()
        .filter(pl.col("exchange").is_in(list(rules.contiguous_trade_ids)) & ~pl.col("aggregate").fill_null(False))
        .select("exchange", "market", "symbol", pl.col("trade_id").cast(pl.Int64, strict=False).alias("id"))
        .drop_nulls("id")
        .unique()
        .sort("exchange", "market", "symbol", "id")
        .with_columns((pl.col("id").diff().over("exchange", "market", "symbol") - 1).clip(lower_bound=0).alias("skip"))
    )
    out = (
        ids.group_by("exchange", "market", "symbol")
        .agg(
            pl.len().alias("trades"),
            pl.col("id").min().alias("first_id"),
            pl.col("id").max().alias("last_id"),
            pl.col("skip").sum().fill_null(0).alias("missing_trades"),
            (pl.col("skip") > 0).sum().alias("gaps"),
            pl.col("id").shift(1).filter(pl.col("skip") > 0).first().alias("first_gap_after_id"),
        )
        .with_columns(_key("exchange", "market", "symbol"))
        .sort("key")
        .collect()
    )
    return out.select("key", pl.exclude("key"))


def book_delta_continuity(deltas: pl.DataFrame) -> pl.DataFrame:
    """Per symbol: updates whose ``prev_seq`` names no stored snapshot or update (``broken_links``: the validated
    stream lost records), and resync markers (``resyncs``).

    Order-free: every update outside a resync must link to the ``seq`` of a stored record of its symbol. The
    window's first update links to a record before the window: updates with ``prev_seq`` below every stored
    ``seq`` of the symbol, or at the symbol's first ``ts``, are not judged.
    """
    by = ("exchange", "market", "symbol")
    lf = deltas.lazy()
    anchors = (
        lf.filter(~pl.col("resync") & pl.col("seq").is_not_null())
        .group_by(*by)
        .agg(pl.col("seq").min().alias("min_seq"))
    )
    firsts = lf.group_by(*by).agg(pl.col("ts").min().alias("first_ts"))
    links = lf.filter(~pl.col("resync") & pl.col("seq").is_not_null()).select(*by, pl.col("seq").alias("prev_seq"))
    updates = (
        lf.filter(~pl.col("resync") & ~pl.col("is_snapshot") & pl.col("prev_seq").is_not_null())
        .join(anchors, on=by, how="left")
        .join(firsts, on=by, how="left")
        .filter((pl.col("prev_seq") >= pl.col("min_seq")) & (pl.col("ts") > pl.col("first_ts")))
    )
    broken = (
        updates.join(links.unique(), on=[*by, "prev_seq"], how="anti")
        .group_by(*by)
        .agg(pl.len().alias("broken_links"), pl.col("prev_seq").min().alias("first_missing_seq"))
    )
    counts = lf.group_by(*by).agg(
        pl.len().alias("deltas"),
        pl.col("is_snapshot").sum().alias("snapshots"),
        pl.col("resync").sum().alias("resyncs"),
        pl.col("reason").filter(pl.col("resync")).unique().sort().str.join(",").alias("resync_reasons"),
    )
    out = (
        counts.join(broken, on=by, how="left")
        .with_columns(pl.col("broken_links").fill_null(0), _key(*by))
        .sort("key")
        .collect()
    )
    return out.select("key", "exchange", "market", "symbol", "deltas", "snapshots", "resyncs", "resync_reasons",
                      "broken_links", "first_missing_seq")  # fmt: skip


def freshness(
    newest: pl.DataFrame,
    rows: Mapping[str, pl.DataFrame],
    now: datetime,
    rules: Rules | None = None,
    expected: Iterable[tuple[str, str, str]] = (),
) -> pl.DataFrame:
    """Per (exchange, market, data_type) with a threshold: ``age_s`` (now - newest receive time; null when nothing
    arrived) and ``max_gap_s`` (longest silence between consecutive receive times in the window), both against
    ``max_age_s``. ``newest``: columns data_type, exchange, market, newest (over a lookback, so a feed silent for
    the whole window still shows); ``expected`` feeds appear even if they never sent anything."""
    rules = rules or Rules()
    thresholds = {dt: s for dt, s in rules.freshness_s.items()}
    feeds: dict[tuple[str, str, str], dict[str, object]] = {}
    for exchange, market, data_type in expected:
        if data_type in thresholds:
            feeds[(exchange, market, data_type)] = {"newest": None, "max_gap_s": None}
    for r in newest.iter_rows(named=True):
        if r["data_type"] in thresholds:
            feeds.setdefault((r["exchange"], r["market"], r["data_type"]), {"max_gap_s": None})["newest"] = r["newest"]
    for data_type in thresholds:
        df = rows.get(TABLE_NAMES.get(data_type, f"{data_type}s"))
        if df is None or df.is_empty():
            continue
        gaps = (
            df.lazy()
            .select("exchange", "market", "recv_ts")
            .sort("exchange", "market", "recv_ts")
            .group_by("exchange", "market")
            .agg((pl.col("recv_ts").diff().dt.total_microseconds().max() / 1e6).alias("max_gap_s"))
            .collect()
        )
        for r in gaps.iter_rows(named=True):
            feeds.setdefault((r["exchange"], r["market"], data_type), {"newest": None})["max_gap_s"] = r["max_gap_s"]
    records = []
    for (exchange, market, data_type), f in sorted(feeds.items()):
        newest_ts = f.get("newest")
        age = (now - newest_ts).total_seconds() if isinstance(newest_ts, datetime) else None
        gap = f.get("max_gap_s")
        records.append({
            "key": f"{exchange}:{market}:{data_type}", "exchange": exchange, "market": market,
            "data_type": data_type, "newest": newest_ts, "age_s": age,
            "max_gap_s": float(gap) if isinstance(gap, int | float) else 0.0,
            "max_age_s": float(thresholds[data_type]),
        })  # fmt: skip
    schema: dict[str, Any] = {"key": pl.String, "exchange": pl.String, "market": pl.String, "data_type": pl.String,
              "newest": pl.Datetime("us", "UTC"), "age_s": pl.Float64, "max_gap_s": pl.Float64,
              "max_age_s": pl.Float64}  # fmt: skip
    return pl.DataFrame(records, schema=schema)


def _key(*columns: str) -> pl.Expr:
    return pl.concat_str([pl.col(c) for c in columns], separator=":").alias("key")


def derived_frames(
    rows: Mapping[str, pl.DataFrame],
    newest: pl.DataFrame,
    now: datetime,
    rules: Rules | None = None,
    expected: Iterable[tuple[str, str, str]] = (),
) -> dict[str, pl.DataFrame]:
    """The derived frames by suite name."""
    rules = rules or Rules()
    return {
        "trade_continuity": trade_continuity(rows["trades"], rules),
        "book_delta_continuity": book_delta_continuity(rows["book_deltas"]),
        "freshness": freshness(newest, rows, now, rules, expected),
    }
