"""End to end: simulator (own process) -> collector (WebSocket, parse, publish) -> JetStream with acks.

The simulator runs in its own process so it does not share the collector's event loop; nats-server is a
third process. Reports records/s acknowledged by JetStream, drops, parse errors and the collector's CPU.
    .venv/bin/python bench/bench_end_to_end.py [--venue binance_spot] [--symbols 50] [--rate 100] [--seconds 20]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import resource
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

from marketprism.bus.server import LocalNatsServer, free_port
from marketprism.runner import CollectorSpec, run_collectors
from marketprism.stream.session import SessionConfig


def wait_http(url: str, timeout_s: float = 20.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            urllib.request.urlopen(url, timeout=1).read()
            return
        except OSError:
            time.sleep(0.1)
    raise RuntimeError(f"simulator did not answer {url}")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--venue", default="binance_spot")
    ap.add_argument("--symbols", type=int, default=50)
    ap.add_argument("--rate", type=float, default=100.0, help="frames/s per symbol and channel")
    ap.add_argument("--seconds", type=float, default=20.0)
    args = ap.parse_args()
    symbols = [f"S{i}-USDT" for i in range(args.symbols)]
    port = free_port()
    sim = subprocess.Popen(
        [sys.executable, "-m", "marketprism.cli", "sim", "--port", str(port), "--venues", args.venue,
         "--symbols", ",".join(symbols), "--rate", str(args.rate)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        wait_http(f"http://127.0.0.1:{port}/_sim/health")
        with tempfile.TemporaryDirectory() as tmp, LocalNatsServer(Path(tmp) / "nats") as nats:
            cpu0 = resource.getrusage(resource.RUSAGE_SELF)
            report = asyncio.run(
                run_collectors(
                    [CollectorSpec(args.venue, tuple(symbols))], nats_url=nats.url, data_dir=Path(tmp),
                    duration_s=args.seconds, session_config=SessionConfig(stall_timeout_s=10),
                    ws_bases={args.venue: f"ws://127.0.0.1:{port}/{args.venue}"},
                )
            )  # fmt: skip
            cpu1 = resource.getrusage(resource.RUSAGE_SELF)
    finally:
        sim.terminate()
        sim.wait(10)
    c, p = report.collectors[0], report.publisher
    cpu = (cpu1.ru_utime + cpu1.ru_stime) - (cpu0.ru_utime + cpu0.ru_stime)
    offered = args.symbols * 3 * args.rate
    print(f"python {sys.version.split()[0]}, {os.cpu_count()} cores; {args.venue}, {args.symbols} symbols x 3 "
          f"channels x {args.rate:g}/s = {offered:,.0f} frames/s offered, {report.seconds:.1f} s")  # fmt: skip
    print("| frames received/s | records published+acked/s | dropped | parse errors | collector CPU |")
    print("|---:|---:|---:|---:|---:|")
    print(f"| {c.frames / report.seconds:,.0f} | {p.published / report.seconds:,.0f} | {p.dropped} | "
          f"{c.parse_errors} | {100 * cpu / report.seconds:.0f}% of one core |")  # fmt: skip


if __name__ == "__main__":
    main()
