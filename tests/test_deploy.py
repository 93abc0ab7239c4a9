"""`prefect deploy --all` registers every deployment in prefect.yaml against a real Prefect server."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from pathlib import Path

import yaml

from deployments.definitions import QUALITY_CRON, pull_deployment_args
from marketprism.config import QualityConfig
from marketprism.venues import VENUES

ROOT = Path(__file__).resolve().parents[1]


def test_prefect_deploy_all_registers_every_deployment(prefect_api: str) -> None:
    env = {**os.environ, "PREFECT_API_URL": prefect_api}
    prefect = [sys.executable, "-m", "prefect"]
    pool = subprocess.run([*prefect, "work-pool", "create", "marketprism-process", "--type", "process"],
                          env=env, capture_output=True, text=True, timeout=120)  # fmt: skip
    assert pool.returncode == 0 or "already exists" in pool.stdout + pool.stderr, pool.stdout + pool.stderr
    done = subprocess.run([*prefect, "--no-prompt", "deploy", "--all"], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=300)  # fmt: skip
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]

    declared = {d["name"]: d for d in yaml.safe_load((ROOT / "prefect.yaml").read_text())["deployments"]}
    assert set(declared) == {f"collector-{v.replace('_', '-')}" for v in VENUES} | {
        "book-processor",
        "storage-writer",
        "hot-to-cold",
        "data-quality",
    } | {a["name"] for a in pull_deployment_args()}
    pulls = {a["name"]: a for a in pull_deployment_args()}  # what `marketprism up` serves: prefect.yaml must match

    async def registered() -> list:
        from prefect.client.orchestration import get_client

        async with get_client() as client:
            return await client.read_deployments()

    found = {d.name: d for d in asyncio.run(registered()) if d.name in declared}
    assert set(found) == set(declared)
    for name, d in found.items():
        assert d.entrypoint == declared[name]["entrypoint"]
        assert d.entrypoint in (
            "flows/collector.py:collector",
            "flows/book_processor.py:book_processor",
            "flows/storage_writer.py:storage_writer",
            "flows/hot_to_cold.py:hot_to_cold",
            "flows/pulls.py:rest_pull",
            "flows/quality.py:data_quality",
        )
        assert d.work_pool_name == "marketprism-process"
        assert d.parameters == declared[name]["parameters"]
        if name == "hot-to-cold":  # scheduled, not long-running
            assert [s.schedule.cron for s in d.schedules] == ["17 * * * *"]
        elif name == "data-quality":  # scheduled GX checkpoint: quality.schedule_cron's default
            assert QualityConfig().schedule_cron == QUALITY_CRON
            assert [s.schedule.cron for s in d.schedules] == [QUALITY_CRON]
        elif name in pulls:  # scheduled REST pulls: the cadence of the endpoint's granularity
            assert d.entrypoint == "flows/pulls.py:rest_pull" and d.parameters == pulls[name]["parameters"]
            if "cron" in pulls[name]:
                assert [s.schedule.cron for s in d.schedules] == [pulls[name]["cron"]]
            else:
                assert [s.schedule.interval.total_seconds() for s in d.schedules] == [pulls[name]["interval"]]
        else:
            assert [s.schedule.interval.total_seconds() for s in d.schedules] == [60.0]
        assert d.global_concurrency_limit is not None and d.global_concurrency_limit.limit == 1
        assert d.concurrency_options is not None and d.concurrency_options.collision_strategy.value == "CANCEL_NEW"
