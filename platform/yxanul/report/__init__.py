"""The comparison report: MLflow runs -> what was compared, statistics over seeds, verdicts, tables (CSV +
Markdown), plots (PNG) and one HTML page that a person reads in a minute.

    report = compare_runs("sqlite:///outputs/mlflow.db", sweep="fp8-vs-bf16", command="python -m jobs.compare ...")
    files = write_report(report, "outputs/reports/fp8-vs-bf16")    # report.html last
    print(format_summary(report))

Modules, in the order the data flows: ``runs`` (a run and what its tags say ran: arm, seed, status, resolved
precision, spikes), ``fetch`` (MLflow reads), ``analysis`` (every number: matched seeds, paired comparisons,
time to target with censoring, the minimal detectable effect), ``words`` (sentences, facts, provenance),
``tables``, ``plots``, ``render`` (the files and the console view). The method is in ``analysis``'s docstring
and printed in every report (``words.METHOD``).
"""

from __future__ import annotations

from collections.abc import Sequence

from yxanul.report.analysis import (
    ArmSummary,
    Comparison,
    ComparisonReport,
    RunRow,
    SeedPair,
    build_report,
    interpolate_crossing,
    value_at_tokens,
)
from yxanul.report.fetch import Fetched, SweepRecord, fetch_runs
from yxanul.report.render import FILES, format_summary, log_report, write_report
from yxanul.report.runs import RanPrecision, RunSeries, legacy_arm, ran_precision
from yxanul.report.words import headline, title

__all__ = ["FILES", "ArmSummary", "Comparison", "ComparisonReport", "Fetched", "RanPrecision", "RunRow", "RunSeries",
           "SeedPair", "SweepRecord", "build_report", "compare_runs", "fetch_runs", "format_summary", "headline",
           "interpolate_crossing", "legacy_arm", "log_report", "ran_precision", "title", "value_at_tokens",
           "write_report"]


def compare_runs(tracking_uri: str, *, sweep: str | Sequence[str] | None = None, experiment: str | None = None,
                 target_bpb: float | None = None, reference: str | None = None, command: str = "",
                 parent_run_id: str | None = None) -> ComparisonReport:
    """Fetch the runs and build the report, with the sweep's own reference arm and target (from its parent run:
    ``parent_run_id``, else the latest of the sweep's name; several sweeps: what they all say) unless
    ``target_bpb`` / ``reference`` are given."""
    fetched = fetch_runs(tracking_uri, sweep=sweep, experiment=experiment, parent_run_id=parent_run_id)
    return build_report(fetched.runs, fetched.source, reference=reference, target_bpb=target_bpb,
                        target_source="given by --target-bpb" if target_bpb is not None else None,
                        parents=fetched.parents, tracking_uri=tracking_uri, compare_command=command)
