"""Order-book processor throughput, JetStream in -> books -> JetStream out (depth records/s).

The recorded OKX books (3 instruments, 290 frames, each starting with its snapshot, every message with a
checksum) are replayed as N independent symbols (the frames renamed per copy), published to a real
nats-server, and consumed by ``OrderBookProcessor``, which verifies every checksum and publishes a
``book_delta`` per message plus top-20 ``book`` records every 100 ms.
    .venv/bin/python bench/bench_processor.py [--copies 100]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.fixtures import FIX
from marketprism.bus.publisher import JetStreamPublisher, connect
from marketprism.bus.server import LocalNatsServer
from marketprism.bus.stream import MarketDataStream, ensure_stream
from marketprism.processor import OrderBookProcessor
from marketprism.records import Depth
from marketprism.venues import VENUES

FILES = ["okx/books_BTC-USDT_2022-05-13.jsonl", "okx/books_UNI-USD-SWAP_2022-05-13.jsonl",
         "okx/books_BTC-USD-220527_2022-05-13.jsonl"]  # fmt: skip


def records(copies: int) -> list[Depth]:
    parser = VENUES["okx_spot"].new_parser()
    base = [r for f in FILES for line in (FIX / f).read_text().splitlines() for r in parser.parse(line, 1)]
    out = []
    for i in range(copies):
        for r in base:
            assert isinstance(r, Depth)
            fields = {f: getattr(r, f) for f in r.__struct_fields__}
            out.append(Depth(**{**fields, "symbol": f"C{i}{r.symbol}", "instrument": f"C{i}{r.instrument}"}))
    return out


async def run(copies: int) -> None:
    recs = records(copies)
    with tempfile.TemporaryDirectory() as tmp, LocalNatsServer(Path(tmp)) as server:
        nc = await connect(server.url)
        await ensure_stream(nc.jetstream(), MarketDataStream(max_bytes=8 << 30))
        feeder = JetStreamPublisher(nc, buffer_size=len(recs) + 1).start()
        for r in recs:  # the backlog first: the processor is timed alone
            feeder.submit(r)
        await feeder.close()
        out = JetStreamPublisher(nc, buffer_size=len(recs) * 3).start()
        processor = OrderBookProcessor(nc, out, top_n=20, interval_s=0.1, from_start=True)
        t0 = time.perf_counter()
        task = asyncio.create_task(processor.run())
        while processor.stats.consumed < len(recs):
            await asyncio.sleep(0.01)
        elapsed = time.perf_counter() - t0
        await out.flush(120)
        total_out = time.perf_counter() - t0
        totals = processor.books.totals()
        processor.stop()
        await task
        await out.close()
        await nc.close()
    print(f"python {sys.version.split()[0]}, {os.cpu_count()} cores; {copies} copies x 290 OKX frames = {len(recs):,}")
    print("| depth records | consumed+applied/s | book_delta + book published/s (acked) | checksum ok/failed | gaps |")
    print("|---:|---:|---:|---:|---:|")
    s = processor.stats
    print(f"| {len(recs):,} | {len(recs) / elapsed:,.0f} | {(s.deltas_published + s.books_published) / total_out:,.0f} "
          f"| {totals.checksum_ok}/{totals.checksum_failed} | {totals.gaps} |")  # fmt: skip


if __name__ == "__main__":
    ap = argparse.ArgumentParser()
    ap.add_argument("--copies", type=int, default=100)
    asyncio.run(run(ap.parse_args().copies))
