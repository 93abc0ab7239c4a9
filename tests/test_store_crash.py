"""Exactly once across crashes: the writer is SIGKILLed again and again while collectors publish the replay of
recorded frames; at the end the store holds exactly the simulator's ground truth, each record once."""

from __future__ import annotations

import asyncio
import os
import random
import signal
import subprocess
import sys
from collections import Counter
from pathlib import Path

from marketprism.bus.publisher import connect
from marketprism.runner import run_collectors
from marketprism.sim import Faults, SimConfig, SimServer
from marketprism.store.schema import TABLE_NAMES
from tests.test_collectors import FAST, REPLAY_SPECS, expected_subjects, replay_files


def writer_cmd(nats_url: str, store_args: list[str]) -> list[str]:
    return [sys.executable, "-m", "marketprism.cli", "store", "write", "--nats", nats_url, *store_args,
            "--batch-rows", "150", "--batch-seconds", "0.4"]  # fmt: skip


class WriterProcess:
    """The writer as its own process, so that it can be killed like a crashed one."""

    def __init__(self, cmd: list[str], log: Path):
        self.cmd, self.log = cmd, log
        self.proc: subprocess.Popen[bytes] | None = None
        self.kills = 0

    def start(self) -> None:
        with self.log.open("ab") as out:
            self.proc = subprocess.Popen(self.cmd, stdout=out, stderr=out, env={**os.environ, "PYTHONPATH": "."})

    def kill(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(10)
        self.kills += 1

    def stop(self) -> int:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(30)


async def stream_last_seq(nc) -> int:
    info = await nc.jetstream().stream_info("MARKET_DATA")
    return int(info.state.last_seq)


async def crash_while_collecting(tmp_path: Path, nats_url: str, store_args: list[str]) -> tuple[Counter, dict]:
    """Runs the replay through the collectors while killing the writer at random moments; returns the subjects
    the simulator's source holds and the writer's last run report."""
    rng = random.Random(7)
    writer = WriterProcess(writer_cmd(nats_url, store_args), tmp_path / "writer.log")
    faults = {spec.venue: Faults(disconnect_every_s=1.5) for spec in REPLAY_SPECS}
    cfg = SimConfig(mode="replay", venues=[s.venue for s in REPLAY_SPECS], replay_files=replay_files(), speed=4.0,
                    replay_overlap=5, faults=faults)  # fmt: skip
    writer.start()
    async with SimServer(cfg, host="127.0.0.1", port=0) as sim:
        stop = asyncio.Event()

        async def chaos() -> None:
            while not sim.truth().get("replay_done", False):
                await asyncio.sleep(rng.uniform(0.4, 1.2))
                writer.kill()  # mid-batch: the writer holds up to 0.4 s of messages at any time
                writer.start()
            await asyncio.sleep(1.0)
            stop.set()

        task = asyncio.create_task(chaos())
        bases = {s.venue: sim.ws_base(s.venue) for s in REPLAY_SPECS}
        await run_collectors(REPLAY_SPECS, nats_url=nats_url, data_dir=tmp_path, source="live", stop=stop,
                             session_config=FAST, ws_bases=bases)  # fmt: skip
        await task
        truth = sim.truth()
    assert writer.kills >= 3
    nc = await connect(nats_url)
    last = await stream_last_seq(nc)
    js = nc.jetstream()

    async def acked() -> int:
        info = await js.consumer_info("MARKET_DATA", "storage_writer")
        return int(info.ack_floor.stream_seq)

    floor = [0]

    async def poll() -> bool:
        floor[0] = await acked()
        return floor[0] >= last

    deadline = asyncio.get_running_loop().time() + 60
    while not await poll() and asyncio.get_running_loop().time() < deadline:
        await asyncio.sleep(0.2)
    await nc.close()
    assert floor[0] >= last, f"writer acked up to {floor[0]} of {last}"
    assert writer.stop() == 0
    report = __import__("orjson").loads(writer.log.read_bytes().splitlines()[-1])
    return expected_subjects(truth, REPLAY_SPECS), report


def stored_by_subject(rows: list[tuple[str, str, str, str, int]]) -> Counter[str]:
    plural_to_type = {v: k for k, v in TABLE_NAMES.items()}
    return Counter({f"md.{plural_to_type[t]}.{e}.{m}.{s}": n for t, e, m, s, n in rows})


async def test_duckdb_writer_killed_repeatedly_stores_exactly_the_ground_truth(tmp_path: Path, nats_server) -> None:
    db = tmp_path / "hot.duckdb"
    want, report = await crash_while_collecting(tmp_path, nats_server.url, ["--duckdb", str(db)])
    import duckdb

    con = duckdb.connect(str(db), read_only=True)
    rows = []
    tables = {r[0] for r in con.execute("SELECT table_name FROM information_schema.tables").fetchall()}
    for table in sorted(tables & {"trades", "depths", "tickers"}):
        rows += con.execute(
            f"SELECT '{table}', exchange, market, symbol, count(*) FROM {table} GROUP BY ALL"
        ).fetchall()
        dups = con.execute(f"SELECT count(*) - count(DISTINCT key) FROM {table}").fetchone()
        assert dups == (0,), table
    con.close()
    assert sum(want.values()) > 1500
    assert stored_by_subject(rows) == want  # every record of the source, exactly once
    assert report["store_errors"] == 0 and report["dead_lettered"] == 0
