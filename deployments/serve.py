"""Serve every deployment in this process: ``python -m deployments.serve`` (``marketprism up`` does more)."""

from __future__ import annotations

from prefect import serve

from deployments.definitions import collector_deployments

if __name__ == "__main__":  # pragma: no cover
    serve(*collector_deployments())
