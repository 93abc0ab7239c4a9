"""Run the suites as GX checkpoints over one window, build the Data Docs, and summarise the outcome.

The GX project lives in ``QualityConfig.data_docs_path`` (default ``data/gx``: ``great_expectations.yml``,
suites, validation results, and the Data Docs site under ``uncommitted/data_docs/local_site/``). Each suite is
stored with its validation definition (a pandas DataFrame asset: GX validates DataFrames the engine read with
DuckDB, DESIGN §8) and a checkpoint ``marketprism-<suite>``. GX runs a checkpoint over one set of batch
parameters (one DataFrame) and every suite validates its own frame, so a run is one checkpoint per suite, all
under one run id (the Data Docs show them as one run), then one Data Docs build for the run's pages and the index
(an ``UpdateDataDocsAction`` per checkpoint would rebuild the index once per suite). Stored suites are reused while
their definition (``fingerprint``) is unchanged; results older than ``KEEP_HISTORY`` are pruned.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import polars as pl

from marketprism.quality.checks import Rules, derived_frames, row_frame
from marketprism.quality.load import Window

log = logging.getLogger(__name__)

DATASOURCE = "marketprism"
RUN_NAME = "marketprism-quality"
EXAMPLES = 5
os.environ.setdefault("GX_ANALYTICS_ENABLED", "false")


@dataclass
class Failure:
    """One failing expectation: what it checks, how many rows broke it, a few of them."""

    suite: str
    check: str
    severity: str
    expectation: str
    column: str
    about: str
    unexpected: int | None
    rows: int | None
    examples: list[str] = field(default_factory=list)
    error: str = ""


@dataclass
class SuiteOutcome:
    name: str
    rows: int
    success: bool
    evaluated: int
    failures: list[Failure]
    checks: dict[tuple[str, str], int]  # (check, severity) -> rows failing it (0: passed); the metrics' source

    @property
    def critical(self) -> list[Failure]:
        return [f for f in self.failures if f.severity == "critical"]


@dataclass
class QualityReport:
    start: datetime
    end: datetime
    suites: list[SuiteOutcome]
    docs_url: str
    docs_index: str
    source: str
    note: str
    seconds: float
    run_time: datetime

    @property
    def success(self) -> bool:
        return all(s.success for s in self.suites)

    @property
    def critical_failures(self) -> list[Failure]:
        return [f for s in self.suites for f in s.critical]

    @property
    def failures(self) -> list[Failure]:
        return [f for s in self.suites for f in s.failures]

    @property
    def result(self) -> str:
        """``passed``, ``warning`` (only warnings failed) or ``failed`` (a critical expectation failed)."""
        return "failed" if self.critical_failures else "passed" if self.success else "warning"

    def suite(self, name: str) -> SuiteOutcome:
        return next(s for s in self.suites if s.name == name)

    def failed_checks(self) -> set[str]:
        return {f.check for f in self.failures}

    def as_dict(self) -> dict[str, Any]:
        return {
            "result": self.result, "start": self.start.isoformat(), "end": self.end.isoformat(),
            "source": self.source, "note": self.note, "seconds": round(self.seconds, 2), "docs_url": self.docs_url,
            "suites": {s.name: {"rows": s.rows, "success": s.success, "evaluated": s.evaluated,
                                "failed": [asdict(f) for f in s.failures]} for s in self.suites},
        }  # fmt: skip


class QualityCheckFailed(RuntimeError):
    """A critical expectation failed: the data in the window cannot be trusted."""

    def __init__(self, report: QualityReport):
        self.report = report
        names = sorted({f"{f.suite}.{f.check}" for f in report.critical_failures})
        super().__init__(f"data quality: {len(report.critical_failures)} critical expectation(s) failed: "
                         f"{', '.join(names)}; Data Docs: {report.docs_url}")  # fmt: skip


def frames_for(window: Window, rules: Rules, expected: Iterable[tuple[str, str, str]] = ()) -> dict[str, pl.DataFrame]:
    """Every suite's frame: row frames per table, then the derived ones."""
    frames = {table: row_frame(table, df, rules) for table, df in window.rows.items()}
    frames.update(derived_frames(window.rows, window.newest, window.end, rules, expected))
    return frames


def _context(root: Path) -> Any:
    import great_expectations as gx
    from great_expectations.data_context.types.base import ProgressBarsConfig

    root.mkdir(parents=True, exist_ok=True)
    ctx = gx.get_context(mode="file", context_root_dir=str(root))
    bars = ctx.variables.progress_bars
    globally = bars.get("globally") if isinstance(bars, dict) else getattr(bars, "globally", None)
    if globally is not False:
        ctx.variables.progress_bars = ProgressBarsConfig(globally=False)
        ctx.variables.save()
    return ctx


KEEP_HISTORY = timedelta(days=7)


def prune_history(root: Path, keep: timedelta = KEEP_HISTORY, now: datetime | None = None) -> int:
    """Delete stored validation results and their Data Docs pages older than ``keep`` (an hourly run adds one per
    suite; the docs index lists them all). Returns the run directories removed."""
    import shutil

    cutoff = (now or datetime.now(UTC)) - keep
    removed = 0
    uncommitted = root / "uncommitted"
    for base in (uncommitted / "validations", uncommitted / "data_docs" / "local_site" / "validations"):
        for run_dir in base.glob(f"*/{RUN_NAME}/*") if base.is_dir() else []:
            try:
                when = datetime.strptime(run_dir.name, "%Y%m%dT%H%M%S.%fZ").replace(tzinfo=UTC)
            except ValueError:
                continue
            if when < cutoff:
                shutil.rmtree(run_dir, ignore_errors=True)
                removed += 1
    return removed


def fingerprint(rules: Rules) -> str:
    """Identifies the suites' definitions: the source of ``suites`` plus the rules. A stored suite with the same
    fingerprint is reused as is (GX's add_or_update compares every expectation, ~0.5 s per suite)."""
    import hashlib
    import inspect

    from marketprism.quality import suites

    return hashlib.sha256((inspect.getsource(suites) + repr(rules)).encode()).hexdigest()[:16]


def _checkpoint(ctx: Any, spec: Any, fp: str) -> Any:
    import great_expectations as gx

    from marketprism.quality.suites import gx_suite

    name = spec.name
    try:
        stored = ctx.suites.get(name)
        if (stored.meta or {}).get("fingerprint") == fp:
            return ctx.checkpoints.get(f"marketprism-{name}")
    except Exception:  # not stored yet (or unreadable): (re)create it below
        pass
    try:  # add_or_update_pandas would replace the datasource, dropping the other suites' assets
        source = ctx.data_sources.get(DATASOURCE)
    except (KeyError, LookupError, ValueError):
        source = ctx.data_sources.add_pandas(DATASOURCE)
    try:
        asset = source.get_asset(name)
    except LookupError:
        asset = source.add_dataframe_asset(name)
    try:
        batch = asset.get_batch_definition("window")
    except (KeyError, LookupError):
        batch = asset.add_batch_definition_whole_dataframe("window")
    suite = gx_suite(spec)
    suite.meta["fingerprint"] = fp
    suite = ctx.suites.add_or_update(suite)
    vd = ctx.validation_definitions.add_or_update(gx.ValidationDefinition(name=name, data=batch, suite=suite))
    # No UpdateDataDocsAction: it rebuilds the docs index once per checkpoint; run_checkpoint builds them once.
    return ctx.checkpoints.add_or_update(gx.Checkpoint(
        name=f"marketprism-{name}", validation_definitions=[vd], actions=[],
        result_format={"result_format": "SUMMARY", "unexpected_index_column_names": ["key"],
                       "partial_unexpected_count": EXAMPLES},
    ))  # fmt: skip


def _pandas(df: pl.DataFrame) -> Any:
    return df.to_pandas()


def _short(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.6g}"
    if isinstance(value, tuple):
        return "(" + ", ".join(_short(v) for v in value) + ")"
    return str(value)


def _examples(result: Mapping[str, Any], column: str) -> list[str]:
    rows = result.get("partial_unexpected_index_list") or []
    out: list[str] = []
    for row in rows[:EXAMPLES]:
        if isinstance(row, Mapping):
            key = row.get("key")
            values = {k: v for k, v in row.items() if k != "key"}
            shown = ", ".join(f"{k}={_short(v)}" for k, v in values.items())
            out.append(f"{key}: {shown}" if key is not None else shown)
        else:
            out.append(_short(row))
    if not out:
        out = [_short(v) for v in (result.get("partial_unexpected_list") or [])[:EXAMPLES]]
    if not out and "observed_value" in result:
        out = [f"observed {_short(result['observed_value'])}"]
    return out


def _outcome(name: str, rows: int, validation: Any) -> SuiteOutcome:
    failures: list[Failure] = []
    checks: dict[tuple[str, str], int] = {}
    for r in validation.results:
        cfg = r.expectation_config
        meta = cfg.meta or {}
        check, severity = str(meta.get("check", cfg.type)), str(meta.get("severity", "critical"))
        kwargs = cfg.kwargs
        column = str(kwargs.get("column") or ",".join(str(kwargs.get(k)) for k in ("column_A", "column_B")
                                                        if kwargs.get(k)))  # fmt: skip
        result = r.result or {}
        error = ""
        if r.exception_info and r.exception_info.get("raised_exception"):
            error = str(r.exception_info.get("exception_message") or "raised")
        unexpected = result.get("unexpected_count")
        bad = 0 if r.success else int(unexpected) if unexpected is not None else 1
        checks[(check, severity)] = checks.get((check, severity), 0) + bad
        if not r.success:
            failures.append(Failure(
                suite=name, check=check, severity=severity, expectation=cfg.type, column=column,
                about=str(meta.get("about", "")), unexpected=unexpected, rows=result.get("element_count", rows),
                examples=_examples(result, column), error=error,
            ))  # fmt: skip
    return SuiteOutcome(name, rows, bool(validation.success), len(validation.results), failures, checks)


def run_checkpoint(
    frames: Mapping[str, pl.DataFrame],
    docs_path: str | Path,
    *,
    rules: Rules | None = None,
    start: datetime | None = None,
    end: datetime | None = None,
    source: str = "",
    note: str = "",
) -> QualityReport:
    """Validate every suite's frame (one checkpoint per suite, one run id), update the Data Docs, summarise."""
    from great_expectations.core.run_identifier import RunIdentifier
    from great_expectations.data_context.types.resource_identifiers import ExpectationSuiteIdentifier

    from marketprism.quality.suites import build_suites

    t0 = time.monotonic()
    rules = rules or Rules()
    root = Path(docs_path).resolve()
    ctx = _context(root)
    prune_history(root)
    fp = fingerprint(rules)
    run_time = datetime.now(UTC)
    run_id = RunIdentifier(run_name=RUN_NAME, run_time=run_time)
    outcomes = []
    built: list[Any] = []
    for spec in build_suites(rules):
        frame = frames.get(spec.name)
        if frame is None:
            raise KeyError(f"no frame for suite {spec.name!r}")
        checkpoint = _checkpoint(ctx, spec, fp)
        result = checkpoint.run(batch_parameters={"dataframe": _pandas(frame)}, run_id=run_id)
        key, validation = next(iter(result.run_results.items()))
        built += [key, ExpectationSuiteIdentifier(name=spec.name)]
        outcomes.append(_outcome(spec.name, frame.height, validation))
    ctx.build_data_docs(resource_identifiers=built)  # this run's pages and the index, once
    index = root / "uncommitted" / "data_docs" / "local_site" / "index.html"
    sites = ctx.get_docs_sites_urls()
    url = sites[0]["site_url"] if sites else index.as_uri()
    end = end or run_time
    return QualityReport(start=start or end, end=end, suites=outcomes, docs_url=str(url), docs_index=str(index),
                         source=source, note=note, seconds=time.monotonic() - t0, run_time=run_time)  # fmt: skip


def check_window(window: Window, docs_path: str | Path, rules: Rules | None = None,
                 expected: Iterable[tuple[str, str, str]] = ()) -> QualityReport:  # fmt: skip
    """Frames of ``window`` -> checkpoint -> report."""
    rules = rules or Rules()
    t0 = time.monotonic()
    report = run_checkpoint(frames_for(window, rules, expected), docs_path, rules=rules, start=window.start,
                            end=window.end, source=window.source, note=window.note)  # fmt: skip
    report.seconds = time.monotonic() - t0
    return report


async def arun_quality(
    window: timedelta,
    *,
    docs_path: str | Path,
    rules: Rules | None = None,
    expected: Iterable[tuple[str, str, str]] = (),
    duckdb_path: str | Path | None = None,
    parquet_root: str | Path | None = None,
    nats_url: str | None = None,
    store: Any = None,
    now: datetime | None = None,
    lookback: timedelta = timedelta(days=1),
) -> QualityReport:
    """Read the last ``window`` (hot + cold) and run the checkpoint; ``lookback`` bounds the search for the newest
    record per feed (a feed silent longer than that shows with no age, and fails as stale when expected)."""
    import asyncio

    from marketprism.quality.load import aload_window

    end = now or datetime.now(UTC)
    start = end - window
    data = await aload_window(start, end, since=end - max(lookback, window), duckdb_path=duckdb_path,
                              parquet_root=parquet_root, nats_url=nats_url, store=store)  # fmt: skip
    return await asyncio.to_thread(check_window, data, docs_path, rules, list(expected))


def run_quality(window: timedelta, **kwargs: Any) -> QualityReport:
    import asyncio

    return asyncio.run(arun_quality(window, **kwargs))


def expected_feeds(venues: Iterable[str], freshness_s: Mapping[str, float]) -> list[tuple[str, str, str]]:
    """(exchange, market, data_type) of every channel of ``venues`` (names, e.g. binance_spot) that has a freshness
    threshold: the feeds that must be fresh even when they sent nothing at all."""
    from marketprism.venues import VENUES

    out = set()
    for name in venues:
        venue = VENUES[name]
        for data_type in venue.channels:
            if str(data_type) in freshness_s:
                out.add((str(venue.exchange), str(venue.market), str(data_type)))
    return sorted(out)


def export_metrics(report: QualityReport) -> None:
    """The run as Prometheus metrics (``marketprism_quality_*``, see ``marketprism.metrics.record_quality``)."""
    from marketprism import metrics

    metrics.record_quality(
        report.result,
        [(s.name, s.rows, s.evaluated, {"critical": len(s.critical), "warning": len(s.failures) - len(s.critical)},
          s.checks) for s in report.suites],
        report.seconds,
    )  # fmt: skip


# --- presentation ----------------------------------------------------------------------------------------------


def markdown(report: QualityReport) -> str:
    """The Prefect artifact: a table of suites, then every failing expectation with examples."""
    icon = {"passed": "✅ passed", "warning": "⚠️ warnings", "failed": "❌ failed"}[report.result]
    lines = [
        f"**Data quality {icon}** for {report.start:%Y-%m-%d %H:%M:%S} – {report.end:%Y-%m-%d %H:%M:%S} UTC "
        f"(rows read from: {report.source}{'; ' + report.note if report.note else ''}; {report.seconds:.1f}s).",
        "",
        f"Data Docs: [{report.docs_index}]({report.docs_url})",
        "",
        "| suite | rows | expectations | failed | critical failed | result |",
        "|---|---:|---:|---:|---:|---|",
    ]
    for s in report.suites:
        result = "pass" if s.success else ("**FAIL**" if s.critical else "warn")
        lines.append(f"| {s.name} | {s.rows} | {s.evaluated} | {len(s.failures)} | {len(s.critical)} | {result} |")
    if report.failures:
        lines += ["", "### Failing expectations", "",
                  "| suite | check | severity | column | expects | unexpected | examples |",
                  "|---|---|---|---|---|---:|---|"]  # fmt: skip
        for f in report.failures:
            examples = "; ".join(e.replace("|", "\\|") for e in f.examples) or f.error
            count = "" if f.unexpected is None else f"{f.unexpected} of {f.rows}"
            lines.append(f"| {f.suite} | {f.check} | {f.severity} | {f.column} | {f.about} | {count} | {examples} |")
    return "\n".join(lines)
