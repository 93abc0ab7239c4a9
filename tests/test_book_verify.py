"""``marketprism book verify`` through the CLI, on capture files written with ``CaptureWriter`` from the
recorded fixtures (WebSocket frames with their connection URL, REST depth bodies where they were received),
and on the raw recordings themselves (cryptofeed, hftbacktest layout, ``.jsonl`` + ``--snapshot``)."""

from __future__ import annotations

import gzip
import re
from pathlib import Path
from typing import Any

import msgspec
import orjson
import pytest
from typer.testing import CliRunner

from marketprism.book.verify import venue_for_frame, venue_for_url
from marketprism.cli import app
from marketprism.records import Status
from marketprism.stream.capture import CaptureWriter, read_recording
from tests.fixtures_util import FIXTURES, fixture_path, jsonl_frames, raw_ws_lines, requires_fixtures
from tests.test_book_sync import cryptofeed_rest

pytestmark = requires_fixtures
runner = CliRunner()

SPOT_WS = "wss://stream.binance.com:9443/stream"
USDM_WS = "wss://fstream.binance.com/stream"
SPOT_REST = "https://api.binance.com/api/v3/depth?symbol={}&limit=1000"
USDM_REST = "https://fapi.binance.com/fapi/v1/depth?symbol={}&limit=1000"
OKX_WS = "wss://ws.okx.com:8443/ws/v5/public"
BYBIT_WS = "wss://stream.bybit.com/v5/public/linear"

Item = tuple[int, str, str, str]  # (recv_ts µs, source, url, data)


def raw_capture_items(prefix: str) -> list[Item]:
    """A cryptofeed recording as capture lines: frames with their connection URL, REST bodies with theirs."""
    items: list[Item] = []
    url = ""
    for kind, epoch, text in raw_ws_lines(prefix + ".ws.raw.txt"):
        if kind == "connect":
            url = text
        elif kind == "recv":
            items.append((round(epoch * 1e6), "ws", url, text))
    http = Path(FIXTURES / (prefix + ".http.raw.txt"))
    if http.is_file():
        items += [(ts, "rest", u, body) for ts, u, body in cryptofeed_rest(prefix + ".http.raw.txt")]
    return sorted(items, key=lambda item: item[0])


def jsonl_capture_items(rel: str, url: str, rest: tuple[int, str, str] | None = None) -> list[Item]:
    """A derived .jsonl as capture lines (1 ms apart); ``rest`` = (insert after N frames, url, fixture)."""
    t0 = 1_723_161_255_000_000
    items: list[Item] = [(t0 + 1000 * i, "ws", url, f) for i, f in enumerate(jsonl_frames(rel))]
    if rest is not None:
        after, rest_url, body_rel = rest
        body = fixture_path(body_rel).read_text(encoding="utf-8")
        items.insert(after, (items[after - 1][0], "rest", rest_url, body))
    return items


def write_capture(path: Path, items: list[Item]) -> Path:
    with CaptureWriter(path) as w:
        for recv_ts, source, url, data in items:
            w.write(recv_ts, source, url, data)
    return path


def verify(*args: str | Path) -> tuple[int, dict[str, Any]]:
    result = runner.invoke(app, ["book", "verify", *map(str, args)])
    lines = [line for line in result.output.splitlines() if line.startswith("{")]
    return result.exit_code, (orjson.loads(lines[-1]) if lines else {"output": result.output})


SPOT_2021 = "binance/spot_cryptofeed_2021-10-12"
USDM_2021 = "binance/usdm_cryptofeed_2021-07-22"
OKX_2022 = "okx/okx_cryptofeed_2022-05-13"


def test_capture_of_binance_spot_2021_verifies(tmp_path):
    code, out = verify(write_capture(tmp_path / "spot.jsonl", raw_capture_items(SPOT_2021)))
    assert code == 0 and out["ok"], out
    assert out["venues"] == ["binance_spot"] and out["input_frames"] == 265 and out["rest_snapshots"] == 4
    totals = {k: out[k] for k in ("frames", "applied", "dropped_before_bridge", "gaps", "resyncs", "checksum_ok",
                                  "checksum_failed", "snapshots")}  # fmt: skip
    assert totals == {"frames": 181, "applied": 172, "dropped_before_bridge": 5, "gaps": 0, "resyncs": 0,
                      "checksum_ok": 0, "checksum_failed": 0, "snapshots": 4}  # fmt: skip
    nkn = out["symbols"]["binance:spot:NKN-USDT"]
    assert nkn["state"] == "synced" and nkn["applied"] == 149 and nkn["seq"] == 499870179
    assert nkn["best_bid"] == ["0.35270000", "9602.00000000"] and out["never_synced"] == []


def test_capture_of_binance_usdm_2021_verifies(tmp_path):
    code, out = verify(write_capture(tmp_path / "usdm.jsonl.gz", raw_capture_items(USDM_2021)))
    assert code == 0 and out["ok"], out
    assert len(out["symbols"]) == 4 and out["gaps"] == 0 and out["frames"] == 764 + 4
    assert all(s["state"] == "synced" for s in out["symbols"].values())


def test_capture_of_okx_books_verifies_290_checksums(tmp_path):
    code, out = verify(write_capture(tmp_path / "okx.jsonl", raw_capture_items(OKX_2022)))
    assert code == 0 and out["ok"], out
    assert (out["checksum_ok"], out["checksum_failed"], out["frames"], out["gaps"]) == (290, 0, 290, 0)
    per_symbol = {k: v["checksum_ok"] for k, v in out["symbols"].items()}
    assert per_symbol == {"okx:spot:BTC-USDT": 98, "okx:perpetual:UNI-USD": 93, "okx:future:BTC-USD": 99}


@pytest.mark.parametrize(
    ("rel", "ws", "rest"),
    [
        ("binance/spot_depthUpdate_BTCUSDT_2024-08-08_first400.jsonl", SPOT_WS,
         (3, SPOT_REST.format("BTCUSDT"), "binance/spot_rest_depth_BTCUSDT_limit1000_2024-08-08.json")),
        ("binance/usdm_depthUpdate_BTCUSDT_2024-08-08_first400.jsonl", USDM_WS,
         (6, USDM_REST.format("BTCUSDT"), "binance/usdm_rest_depth_BTCUSDT_limit1000_2024-08-08.json")),
        ("bybit/v5_orderbook500_XRPUSDT_2024-12-01.jsonl", BYBIT_WS, None),
    ],
)  # fmt: skip
def test_captures_of_2024_sequences_verify(tmp_path, rel, ws, rest):
    code, out = verify(write_capture(tmp_path / "c.jsonl", jsonl_capture_items(rel, ws, rest)))
    assert code == 0 and out["ok"] and out["gaps"] == 0, out
    assert out["applied"] + out["dropped_before_bridge"] == len(jsonl_frames(rel)) - (rest is None)


def test_a_dropped_frame_fails_with_a_gap_on_that_symbol(tmp_path):
    items = raw_capture_items(SPOT_2021)
    nkn = [i for i, it in enumerate(items) if it[1] == "ws" and it[3].startswith('{"stream":"nknusdt@depth')]
    del items[nkn[60]]
    code, out = verify(write_capture(tmp_path / "dropped.jsonl", items))
    assert code == 1 and not out["ok"]
    assert out["gaps"] == 1 and out["resyncs_by_reason"] == {"gap": 1}
    assert out["symbols"]["binance:spot:NKN-USDT"]["state"] == "resync_needed"
    assert sum(s["gaps"] for s in out["symbols"].values()) == 1


def test_a_corrupted_okx_checksum_fails(tmp_path):
    items = raw_capture_items(OKX_2022)
    books = [i for i, it in enumerate(items) if '"channel":"books"' in it[3][:60] and '"action":"update"' in it[3]]
    i = books[100]
    ts, source, url, data = items[i]
    items[i] = (ts, source, url, re.sub(r'"checksum":(-?\d+)', lambda m: f'"checksum":{int(m.group(1)) + 1}', data))
    code, out = verify(write_capture(tmp_path / "bad.jsonl", items))
    assert code == 1 and out["checksum_failed"] == 1 and out["resyncs_by_reason"] == {"checksum": 1}
    assert out["checksum_ok"] == 290 - 1 - out["dropped_before_bridge"]


def test_simulator_urls_name_the_venue(tmp_path):
    items = [(ts, src, "ws://127.0.0.1:8765/binance_spot/stream" if src == "ws"
              else url.replace("https://api.binance.com", "http://127.0.0.1:8765/binance_spot"), data)
             for ts, src, url, data in raw_capture_items(SPOT_2021)]  # fmt: skip
    code, out = verify(write_capture(tmp_path / "sim.jsonl", items))
    assert code == 0 and out["applied"] == 172 and out["rest_snapshots"] == 4


def test_raw_cryptofeed_recordings_with_their_rest_companion():
    code, out = verify(FIXTURES / (SPOT_2021 + ".ws.raw.txt"))
    assert code == 0 and out["applied"] == 172 and len(out["files"]) == 2
    code, out = verify(FIXTURES / (SPOT_2021 + ".ws.raw.txt"), "--no-rest-companions")
    assert code == 1 and len(out["never_synced"]) == 4 and out["applied"] == 0
    code, out = verify(FIXTURES / (OKX_2022 + ".ws.raw.txt"))
    assert code == 0 and out["checksum_ok"] == 290


def test_jsonl_with_snapshot_option_and_without():
    rel = "binance/spot_depthUpdate_BTCUSDT_2024-08-08_first400.jsonl"
    snap = fixture_path("binance/spot_rest_depth_BTCUSDT_limit1000_2024-08-08.json")
    code, out = verify(fixture_path(rel), "--snapshot", snap)
    assert code == 0 and out["applied"] == 398 and out["dropped_before_bridge"] == 2
    code, out = verify(fixture_path(rel), "--snapshot", f"BTCUSDT={snap}", "--venue", "binance_spot")
    assert code == 0 and out["applied"] == 398
    code, out = verify(fixture_path(rel))
    assert code == 1 and out["never_synced"] == ["binance:spot:BTC-USDT"] and out["buffered"] == 400


def test_hftbacktest_layout_with_its_bare_rest_line(tmp_path):
    """The hftbacktest recorder's layout (``<ns> <frame>``, the REST body as a bare line after 3 updates),
    rebuilt from the fixture excerpt (the full recording is not in the fixtures folder), gzipped."""
    frames = list(jsonl_frames("binance/spot_depthUpdate_BTCUSDT_2024-08-08_first400.jsonl"))
    body = fixture_path("binance/spot_rest_depth_BTCUSDT_limit1000_2024-08-08.json").read_text(encoding="utf-8")
    lines = [f"{1723161253931000000 + i * 100_000_000} {f}" for i, f in enumerate(frames)]
    lines.insert(3, f"1723161254200000000 {body}")
    path = tmp_path / "btcusdt_20240808.gz"
    with gzip.open(path, "wt", encoding="utf-8") as f:
        f.write("\n".join(lines) + "\n")
    code, out = verify(path)
    assert code == 0 and out["applied"] == 398 and out["rest_snapshots"] == 1 and out["venues"] == ["binance_spot"]


def test_bad_arguments(tmp_path):
    capture = write_capture(tmp_path / "c.jsonl", raw_capture_items(OKX_2022)[:5])
    result = runner.invoke(app, ["book", "verify", str(capture), "--venue", "nasdaq"])
    assert result.exit_code == 2 and "unknown venue" in result.output
    result = runner.invoke(app, ["book", "verify", str(tmp_path / "missing.jsonl")])
    assert result.exit_code == 2 and "no such file" in result.output
    result = runner.invoke(app, ["book", "verify", str(capture), "--snapshot", str(tmp_path / "nope.json")])
    assert result.exit_code == 2 and "snapshot file not found" in result.output
    (tmp_path / "empty.jsonl").write_text("")
    code, out = verify(tmp_path / "empty.jsonl")
    assert code == 1 and out["frames"] == 0
    assert "verify" in runner.invoke(app, ["book", "--help"]).output


def spot_depth(first: int, last: int, bid: str = "100.0") -> str:
    data = {
        "e": "depthUpdate",
        "E": last,
        "s": "BTCUSDT",
        "U": first,
        "u": last,
        "b": [[bid, "1"]],
        "a": [["101.0", "2"]],
    }
    return orjson.dumps({"stream": "btcusdt@depth@100ms", "data": data}).decode()


def test_status_lines_explain_a_reconnect_and_a_later_snapshot_resyncs(tmp_path):
    """A collector's capture: deltas buffered before the REST snapshot, a disconnect (status line), the next
    connection's deltas starting past a break, and the snapshot fetched after resubscribing."""
    ws, rest = "ws://127.0.0.1:1/binance_spot/stream", "http://127.0.0.1:1/binance_spot/api/v3/depth?symbol=BTCUSDT"
    status = Status(exchange="binance", market="spot", symbol="BTC-USDT", instrument="BTCUSDT", ts=5, recv_ts=5,
                    event="disconnected", connection="binance_spot/0#1@5", reason="closed: 1001")  # fmt: skip
    items: list[Item] = [
        (1, "ws", ws, spot_depth(101, 105)),
        (2, "rest", rest, '{"lastUpdateId":103,"bids":[["99.0","1"]],"asks":[["101.0","1"]]}'),
        (3, "ws", ws, spot_depth(106, 110)),
        (5, "status", ws, msgspec.json.encode(status).decode()),
        (6, "ws", ws, spot_depth(120, 125, "100.5")),
        (7, "rest", rest, '{"lastUpdateId":122,"bids":[["99.5","1"]],"asks":[["101.0","1"]]}'),
        (8, "ws", ws, spot_depth(126, 130, "100.2")),
    ]
    code, out = verify(write_capture(tmp_path / "reconnect.jsonl", items))
    assert code == 0 and out["ok"] and out["gaps"] == 0, out
    assert (out["rest_snapshots"], out["status_records"], out["resyncs_by_reason"]) == (2, 1, {"disconnect": 1})
    btc = out["symbols"]["binance:spot:BTC-USDT"]
    assert btc["state"] == "synced" and btc["seq"] == 130 and btc["applied"] == 4
    assert btc["best_bid"] == ["100.5", "1"] and btc["bid_levels"] == 3  # 99.5 100.2 100.5: 100.0 went with the book
    # Without the status line nothing tells the break from lost frames: a gap.
    code, out = verify(write_capture(tmp_path / "no_status.jsonl", [i for i in items if i[1] != "status"]))
    assert code == 1 and out["gaps"] == 1 and out["resyncs_by_reason"] == {"gap": 1}, out


def test_readers_and_venue_inference(tmp_path):
    assert venue_for_url(SPOT_WS).name == "binance_spot"  # type: ignore[union-attr]
    assert venue_for_url(USDM_REST.format("X")).name == "binance_usdm"  # type: ignore[union-attr]
    assert venue_for_url(OKX_WS).name == "okx_spot"  # type: ignore[union-attr]
    assert venue_for_url(BYBIT_WS).name == "bybit_linear"  # type: ignore[union-attr]
    assert venue_for_url("ws://127.0.0.1:1/okx_swap/ws/v5/public").name == "okx_swap"  # type: ignore[union-attr]
    assert venue_for_url("wss://example.com/ws") is None and venue_for_url(None) is None
    spot = jsonl_frames("binance/spot_depthUpdate_NKNUSDT_2021-10-12.jsonl")[0]
    usdm = jsonl_frames("binance/usdm_depthUpdate_SUSHIUSDT_2021-07-22.jsonl")[0]
    assert venue_for_frame(spot).name == "binance_spot" and venue_for_frame(usdm).name == "binance_usdm"  # type: ignore[union-attr]
    assert venue_for_frame(jsonl_frames("binance/spot_aggTrade_2021-10-12.jsonl")[0]) is None
    path = tmp_path / "mixed.txt"
    path.write_text('wss://x/ws <-> 1.5\nwss://x/ws <- 1.6: {"op":"ping"}\n1.7: {}\n\nnot a line\n')
    with pytest.raises(ValueError, match="unrecognised line"):
        list(read_recording(path))
