"""The polars side of the data-quality checks (no GX, no services): continuity, freshness, level facts, pruning."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import polars as pl

from marketprism.quality.checks import Rules, book_delta_continuity, freshness, row_frame, trade_continuity
from marketprism.quality.runner import RUN_NAME, expected_feeds, prune_history

T0 = datetime(2026, 1, 1, tzinfo=UTC)


def _ts(i: int) -> datetime:
    return T0 + timedelta(milliseconds=100 * i)


def deltas(rows: list[tuple[int, int | None, bool, bool]], symbol: str = "BTC-USDT") -> pl.DataFrame:
    """(seq, prev_seq, is_snapshot, resync) in stream order."""
    return pl.DataFrame(
        {
            "exchange": ["binance"] * len(rows),
            "market": ["spot"] * len(rows),
            "symbol": [symbol] * len(rows),
            "ts": [_ts(i) for i in range(len(rows))],
            "seq": [r[0] for r in rows],
            "prev_seq": [r[1] for r in rows],
            "is_snapshot": [r[2] for r in rows],
            "resync": [r[3] for r in rows],
            "reason": ["gap" if r[3] else "" for r in rows],
        }
    )


def test_book_delta_continuity_finds_a_lost_update_and_not_the_window_start_or_a_resync() -> None:
    clean = deltas([(10, 9, False, False), (11, 10, False, False), (12, 11, False, False)])  # starts mid-stream
    assert book_delta_continuity(clean)["broken_links"].to_list() == [0]
    lost = deltas([(10, 9, False, False), (11, 10, False, False), (13, 12, False, False), (14, 13, False, False)])
    out = book_delta_continuity(lost).row(0, named=True)
    assert out["broken_links"] == 1 and out["first_missing_seq"] == 12
    # A gap the processor saw: resync marker, then a snapshot, then updates linked to the snapshot: no broken link.
    resynced = deltas([(10, 9, False, False), (15, 10, False, True), (20, None, True, False), (21, 20, False, False)])
    out = book_delta_continuity(resynced).row(0, named=True)
    assert out["broken_links"] == 0 and out["resyncs"] == 1 and out["resync_reasons"] == "gap"
    assert out["key"] == "binance:spot:BTC-USDT"


def test_trade_continuity_only_judges_contiguous_venues_and_plain_trades() -> None:
    df = pl.DataFrame(
        {
            "exchange": ["binance"] * 4 + ["okx"] * 2 + ["binance"] * 2,
            "market": ["spot"] * 8,
            "symbol": ["BTC-USDT"] * 6 + ["ETH-USDT"] * 2,
            "trade_id": ["100", "101", "104", "105", "7", "90", "5", "50"],
            "aggregate": [False] * 6 + [True, True],
        }
    )
    out = trade_continuity(df, Rules())
    assert out["key"].to_list() == ["binance:spot:BTC-USDT"]  # OKX ids are not contiguous; aggTrades not trades
    row = out.row(0, named=True)
    assert row["missing_trades"] == 2 and row["gaps"] == 1 and row["first_gap_after_id"] == 101


def test_freshness_lists_expected_feeds_that_sent_nothing_and_the_longest_silence() -> None:
    now = T0 + timedelta(seconds=100)
    newest = pl.DataFrame(
        {"data_type": ["trade"], "exchange": ["binance"], "market": ["spot"], "newest": [T0 + timedelta(seconds=95)]}
    )
    trades = pl.DataFrame(
        {"exchange": ["binance"] * 3, "market": ["spot"] * 3, "recv_ts": [T0, T0 + timedelta(seconds=40), _ts(950)]}
    )
    expected = expected_feeds(["binance_spot", "okx_swap"], {"trade": 60.0})
    assert expected == [("binance", "spot", "trade"), ("okx", "perpetual", "trade")]
    out = freshness(newest, {"trades": trades}, now, Rules(freshness_s={"trade": 60.0}), expected)
    rows = {r["key"]: r for r in out.iter_rows(named=True)}
    assert rows["binance:spot:trade"]["age_s"] == 5.0 and rows["binance:spot:trade"]["max_gap_s"] == 55.0
    assert rows["okx:perpetual:trade"]["age_s"] is None  # never sent: fails the not-stale expectation


def test_book_row_facts_crossed_unsorted_and_bad_levels() -> None:
    books = pl.DataFrame(
        {
            "ts": [T0] * 3,
            "recv_ts": [T0] * 3,
            "depth": [2, 2, 2],
            "bids": [[["10", "1"], ["9", "1"]], [["9", "1"], ["10", "1"]], [["12", "1"], ["9", "0"]]],
            "asks": [[["11", "1"], ["12", "1"]], [["11", "1"], ["12", "1"]], [["11", "1"], ["x", "1"], ["13", "1"]]],
        },
        schema_overrides={"bids": pl.List(pl.List(pl.String)), "asks": pl.List(pl.List(pl.String))},
    )
    out = row_frame("books", books)
    assert "bids" not in out.columns  # level lists are dropped once their facts are computed
    assert out["bids_sorted"].to_list() == [True, False, True]
    assert out["best_bid"].to_list() == [10.0, 9.0, 12.0] and out["best_ask"].to_list() == [11.0, 11.0, 11.0]
    assert out["bad_levels"].to_list() == [0, 0, 2]  # size 0 in a book, a price that is not a decimal
    assert out["excess_levels"].to_list() == [0, 0, 1]


def test_prune_history_removes_old_runs_only(tmp_path: Path) -> None:
    now = datetime(2026, 6, 1, tzinfo=UTC)
    for base in ("uncommitted/validations", "uncommitted/data_docs/local_site/validations"):
        for when in ("20260501T000000.000000Z", "20260531T120000.000000Z"):
            (tmp_path / base / "trades" / RUN_NAME / when).mkdir(parents=True)
    assert prune_history(tmp_path, now=now) == 2
    left = sorted(p.name for p in tmp_path.rglob("2026*"))
    assert left == ["20260531T120000.000000Z"] * 2
