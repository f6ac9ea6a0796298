"""Run a sweep: Ray Tune, one Ray Train run per trial, an MLflow parent run with one child run per trial.

    python -m jobs.sweep fp8-vs-bf16 [dotted.key=value ...] [sweep.field=value ...] [--dry-run]
    python -m jobs.sweep experiments/sweeps/curriculum-variants.yaml train.max_tokens=4M --dry-run

SWEEP is a file or a name under experiments/sweeps/. Overrides apply to the base run config of every
trial, except `sweep.<field>=...` which change the sweep itself (e.g. sweep.name=try2, sweep.seeds=[0,1]).
Started again with the same name (and storage), the sweep resumes: finished trials are kept, unfinished
ones continue from their latest checkpoint. --dry-run prints the trial table and exits without Ray.
The terminal shows one line per trial event; Ray's and Tune's own output goes to
<run.storage_path>/sweeps/<sweep name>.log (--verbose shows it here instead).
"""

from __future__ import annotations

import sys
from collections.abc import Sequence

from yxanul.cli import job_parser, run_job


def main(argv: Sequence[str] | None = None) -> int:
    parser = job_parser(__doc__.splitlines()[0], verbose=True)
    parser.add_argument("--compare", metavar="DIR", default=None,
                        help="after the sweep, write the comparison report (jobs.compare) into DIR")
    parser.add_argument("--cluster", metavar="FILE", default=None,
                        help="cluster-launcher config whose GPU node types the plan prices (default: this checkout's "
                             "cluster.yaml; prices from cluster-prices.yaml beside it)")
    parser.add_argument("--noise-floor", metavar="SD", type=float, default=None,
                        help="seed standard deviation of the sweep's metric to plan seeds with (default: from earlier "
                             "runs of the reference configuration in the tracking store)")
    parser.add_argument("--bench", metavar="JSONL", action="append", default=None,
                        help="jobs.bench / train_vs_bench result rows for the rates (repeatable; default: "
                             "docs/results/bench/*.jsonl)")
    args = parser.parse_intermixed_args(argv)

    from yxanul.console import Console, say
    from yxanul.interrupt import signals_handled
    from yxanul.sweep import format_plan, format_rows, load_sweep, plan_sweep, run_sweep, sweep_layout
    from yxanul.sweep.budget import sweep_budget

    spec, overrides = load_sweep(args.config, args.overrides)
    budget = {"cluster_file": args.cluster, "noise_floor": args.noise_floor, "bench_files": args.bench}
    if args.dry_run:
        plan = plan_sweep(spec, overrides)
        print(format_plan(plan))
        print(sweep_budget(plan, **budget).text())
        if spec.seeds == "auto":
            print(spec.sequential().describe())
        return 0
    log = sweep_layout(spec, overrides).sweep_log(spec.name)
    with Console(log, verbose=args.verbose), signals_handled():  # SIGINT/SIGTERM: one line, 130/143
        if not args.verbose:
            say(f"Ray and Tune output: {log} (--verbose shows it here)")
        budget_text = sweep_budget(plan_sweep(spec, overrides), **budget).text()
        outcome = run_sweep(spec, overrides, budget_text)
        say(format_rows(outcome.rows))
        say(f"MLflow: parent run {outcome.parent_run_id} at {outcome.tracking_uri}")
        if args.compare:
            from jobs import compare

            compare.main(["--sweep", spec.name, "--parent-run-id", outcome.parent_run_id, "--out", args.compare,
                          "--tracking-uri", outcome.tracking_uri])
        else:
            say(f"compare: python -m jobs.compare --sweep {spec.name} --out outputs/reports/{spec.name} "
                f"--tracking-uri {outcome.tracking_uri}")
    failed = [r for r in outcome.rows if r["status"] == "failed"]
    if failed:
        print(f"{len(failed)} trial(s) failed (reasons above); run the same command again to retry them",
              file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(run_job(main))
