"""Compare runs from MLflow: seed statistics and verdicts, tables (CSV + Markdown), plots (PNG), one HTML page.

    python -m jobs.compare --sweep fp8-vs-bf16 --out outputs/reports/fp8-vs-bf16
    python -m jobs.compare --sweep fp8-vs-bf16 --sweep fp8-vs-bf16-seed2 --out outputs/reports/fp8-vs-bf16
    python -m jobs.compare --experiment yxanul --out outputs/reports/all --tracking-uri http://127.0.0.1:5000

Reads MLflow only. Says what ran (the arms' recorded configuration, resolved FP8 plan, model, data), then
per arm means with 95% intervals over the matched seeds, per comparison seed-paired gaps and ratios (geometric
means, log-scale intervals) with a verdict (better / worse / no difference detected), the design's minimal
detectable effect and a censoring-aware time to target. The files are also logged to the sweep's parent run
(artifact folder comparison/).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from yxanul.cli import run_job


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    which = parser.add_mutually_exclusive_group(required=True)
    which.add_argument("--sweep", action="append",
                       help="sweep name (tag yxanul.sweep): compares the children of its latest parent run; give it "
                            "again to compare several sweeps as one (a comparison run in parts, e.g. seeds 0-1 and "
                            "later seed 2 under another sweep.name in the same store)")
    which.add_argument("--experiment", help="MLflow experiment name: compares all its runs")
    parser.add_argument("--parent-run-id", default=None,
                        help="with --sweep: this parent run rather than the latest of that name")
    parser.add_argument("--out", required=True, help="folder for comparison.csv/.md, the PNGs and report.html")
    parser.add_argument("--tracking-uri", default=None,
                        help="MLflow tracking URI (default: $MLFLOW_TRACKING_URI, else sqlite:///outputs/mlflow.db)")
    parser.add_argument("--target-bpb", type=float, default=None,
                        help="bits/byte target for time-to-target (default: the sweep's target_bpb, else the "
                             "worst final val/bpb of the reference arm's runs); fix it before looking at the results")
    parser.add_argument("--reference", default=None,
                        help="reference arm label, e.g. 'precision.mode=bf16' (default: the sweep's reference, "
                             "else the first arm)")
    parser.add_argument("--no-log", action="store_true", help="do not log the report to the parent run")
    args = parser.parse_intermixed_args(argv)

    import shlex

    from yxanul.console import say
    from yxanul.report import compare_runs, format_summary, log_report, write_report
    from yxanul.tracking import resolve_tracking_uri

    uri = resolve_tracking_uri(args.tracking_uri)
    command = shlex.join(["python", "-m", "jobs.compare", *(sys.argv[1:] if argv is None else argv)])
    report = compare_runs(uri, sweep=args.sweep, experiment=args.experiment, target_bpb=args.target_bpb,
                          reference=args.reference, command=command, parent_run_id=args.parent_run_id)
    files = write_report(report, args.out)
    say(format_summary(report))
    # every sweep compared keeps the report; an experiment's runs only when they are one sweep's
    parent_ids = [p.run_id for p in report.parents] if args.sweep else [report.parent.run_id] if report.parent else []
    if parent_ids and not args.no_log:
        for parent_id in parent_ids:
            log_report(uri, parent_id, files)
        say(f"logged to MLflow run{'s' if len(parent_ids) > 1 else ''} {', '.join(parent_ids)} (artifacts: comparison/)")
    say(f"report: {files[-1]}")
    return 0


if __name__ == "__main__":
    sys.exit(run_job(main))
