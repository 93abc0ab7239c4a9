"""The CLI as a user runs it: `collect`, `tail`, and clear errors on bad input (`up`: tests/test_up.py)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

from typer.testing import CliRunner

from marketprism.bus.server import LocalNatsServer
from marketprism.cli import app

runner = CliRunner()


def last_json(output: str) -> dict:
    start = output.rindex("\n{") + 1 if "\n{" in output else output.index("{")
    return json.loads(output[start:])


def test_collect_records_a_capture_and_tail_decodes_the_bus(tmp_path: Path, nats_server: LocalNatsServer) -> None:
    env = {**os.environ, "MARKETPRISM_NATS_URL": nats_server.url}
    tail = subprocess.Popen(
        [sys.executable, "-m", "marketprism.cli", "tail", "md.trade.binance.>", "--count", "5", "--duration", "60"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env, text=True,
    )  # fmt: skip
    time.sleep(1.5)  # let tail subscribe
    capture = tmp_path / "cap.jsonl"
    result = runner.invoke(
        app, ["collect", "binance_spot", "--symbols", "BTC-USDT", "--types", "trade,ticker", "--source", "sim",
              "--record", str(capture), "--duration", "3", "--nats-url", nats_server.url],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    report = last_json(result.output)
    assert report["venues"]["binance_spot"]["by_type"]["trade"] > 0
    assert report["venues"]["binance_spot"]["by_type"].get("depth", 0) == 0
    sources = [json.loads(line)["source"] for line in capture.read_text().splitlines()]
    assert sources.count("ws") == report["venues"]["binance_spot"]["frames"]  # every received frame...
    assert "status" in sources and set(sources) <= {"ws", "status"}  # ...and the session's status records
    out, err = tail.communicate(timeout=60)
    lines = [json.loads(line) for line in out.splitlines()]
    assert len(lines) == 5, err
    assert all(line["subject"] == "md.trade.binance.spot.BTC-USDT" and line["price"] for line in lines)


def test_bad_input_is_named() -> None:
    result = runner.invoke(app, ["collect", "nasdaq"])
    assert result.exit_code != 0 and "unknown venue 'nasdaq'" in result.output
    result = runner.invoke(app, ["collect", "okx_spot", "--types", "trades"])
    assert result.exit_code != 0 and "--types" in result.output
    result = runner.invoke(app, ["up", "--venues", "binance_spot,kraken"])
    assert result.exit_code != 0 and "kraken" in result.output
