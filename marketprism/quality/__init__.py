"""Data quality: Great Expectations suites per record type, plus continuity and freshness checks.

``checks`` computes the frames (polars), ``suites`` declares the expectations (GX), ``load`` reads a window from
hot + cold (DuckDB, or the running writer over NATS), ``runner`` runs the checkpoints, builds the Data Docs and
summarises. Importing this package does not import GX (~2.4 s); running a checkpoint does.
"""

from marketprism.quality.checks import Rules
from marketprism.quality.runner import (
    Failure,
    QualityCheckFailed,
    QualityReport,
    SuiteOutcome,
    arun_quality,
    check_window,
    markdown,
    run_checkpoint,
    run_quality,
)

__all__ = [
    "Failure", "QualityCheckFailed", "QualityReport", "Rules", "SuiteOutcome", "arun_quality", "check_window",
    "markdown", "run_checkpoint", "run_quality",
]  # fmt: skip
