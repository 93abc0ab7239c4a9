"""JetStream publish throughput with acks: records/s through JetStreamPublisher into a real nats-server.

Records are the normalised trades and depth updates of the recorded Binance fixture frames, each with its
own natural key (so no publish is a duplicate). Usage:
    .venv/bin/python bench/bench_publish.py [--records 200000] [--in-flight 4096]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run as a script: make the bench package importable

from bench.fixtures import FIX
from marketprism.bus.publisher import JetStreamPublisher, connect
from marketprism.bus.server import LocalNatsServer
from marketprism.bus.stream import MarketDataStream, ensure_stream
from marketprism.records import Depth, Record, Trade
from marketprism.venues import get_venue


def sample_records(kind: str, n: int) -> list[Record]:
    files = {
        "trade": "binance/spot_trade_BTCUSDT_2024-08-08_first500.jsonl",
        "depth": "binance/spot_depthUpdate_BTCUSDT_2024-08-08_first400.jsonl",
    }
    parser = get_venue("binance_spot").new_parser()
    base = [r for line in (FIX / files[kind]).read_text().splitlines() for r in parser.parse(line, 0)]
    out: list[Record] = []
    for i in range(n):  # distinct natural keys: shift ids per copy
        r = base[i % len(base)]
        if isinstance(r, Trade):
            out.append(Trade(**{**_fields(r), "trade_id": str(i)}))
        elif isinstance(r, Depth):
            out.append(Depth(**{**_fields(r), "seq": i}))
    return out


def _fields(r: Record) -> dict:
    return {f: getattr(r, f) for f in r.__struct_fields__}


async def run(kind: str, n: int, in_flight: int) -> float:
    records = sample_records(kind, n)
    with tempfile.TemporaryDirectory() as tmp, LocalNatsServer(Path(tmp)) as server:
        nc = await connect(server.url)
        await ensure_stream(nc.jetstream(), MarketDataStream(max_bytes=8 << 30))
        pub = JetStreamPublisher(nc, max_in_flight=in_flight, buffer_size=n + 1).start()
        t0 = time.perf_counter()
        for r in records:
            pub.submit(r)
            if pub.buffered > 50_000:
                await asyncio.sleep(0)  # let the publisher run while we produce, as a collector would
        await pub.flush(300)
        elapsed = time.perf_counter() - t0
        await pub.close()
        await nc.close()
        assert pub.stats.published == n and pub.stats.dropped == 0, pub.stats
        return n / elapsed


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--records", type=int, default=200_000)
    ap.add_argument("--in-flight", type=int, default=4096)
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()
    print(f"python {platform.python_version()}, {os.cpu_count()} cores")
    print("| records | in-flight | records/s (best of rounds) |\n|---|---:|---:|")
    for kind in ("trade", "depth"):
        best = max(asyncio.run(run(kind, args.records, args.in_flight)) for _ in range(args.rounds))
        print(f"| binance spot {kind} | {args.in_flight} | {best:,.0f} |")


if __name__ == "__main__":
    main()
