"""Serve one collector deployment per venue in this process (``python -m deployments.serve``)."""

from __future__ import annotations

from prefect import serve

from flows.collector import collector
from marketprism.runner import DEFAULT_SYMBOLS
from marketprism.venues import VENUES


def collector_deployments(source: str = "live") -> list:
    return [
        collector.to_deployment(
            name=f"collector-{name.replace('_', '-')}",
            parameters={"venue": name, "symbols": list(DEFAULT_SYMBOLS), "source": source},
        )
        for name in VENUES
    ]


if __name__ == "__main__":  # pragma: no cover
    serve(*collector_deployments())
