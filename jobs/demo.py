"""The end-to-end demo on the embedded default: built-in corpus -> tokenizer -> prepared data -> a sweep of
curricula x the precisions this machine can run (Ray Tune + Train, MLflow) -> the comparison report.

    python -m jobs.demo            # experiments/sweeps/demo.yaml, everything under outputs/demo/
    python -m jobs.demo --smoke    # experiments/sweeps/demo-smoke.yaml: the same chain, a test-suite budget
    python -m jobs.demo --verbose  # Ray's, Ray Data's and Tune's own output here too (else in the sweep's log)

The tokenizer and the prepared datasets are reused when present; every run is a new sweep (named with the
time) in the local MLflow store. FP8 trials run only on a GPU with Transformer Engine; elsewhere they are
listed as not runnable, with the reason.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from yxanul.cli import add_verbose, run_job
from yxanul.console import say


def machine_overrides() -> list[str]:
    """Precisions (and GPU workers) this machine can run: bf16 + fp8 on a GPU, fp32 + fp8 on CPU."""
    import torch

    if torch.cuda.is_available():
        return ["sweep.axes.precision.values=[bf16, fp8]", "sweep.resources.gpus_per_worker=1"]
    return ["sweep.axes.precision.values=[fp32, fp8]"]


def tokenizer_stage(cfg) -> str:
    """Train the tokenizer of ``cfg`` unless a tokenizer of the same kind and size is already there."""
    from yxanul.tokenizer import read_meta, train_from_config

    meta = read_meta(cfg.tokenizer.path) if Path(cfg.tokenizer.path).is_file() else None
    if meta and meta.get("vocab_size") == cfg.tokenizer.vocab_size and meta.get("kind", "bpe") == cfg.tokenizer.kind:
        say(f"tokenizer: reusing {cfg.tokenizer.path}")
        return cfg.tokenizer.path
    summary = train_from_config(cfg, show_progress=False, log=say)
    say(f"tokenizer: trained {summary['kind']} {summary['vocab_size']} in {summary['seconds']} s -> {summary['path']}")
    return summary["path"]


def prepare_stage(plan) -> None:
    """Prepare every dataset the runnable trials read (packed and/or decomposed), reusing complete ones."""
    from yxanul.data.prepare import make_plan, run, summary

    done: set[str] = set()
    for trial in plan.runnable:
        if trial.cfg.data.output_dir in done:
            continue
        done.add(trial.cfg.data.output_dir)
        manifest = run(make_plan(trial.cfg))
        say(f"data: {'reusing' if manifest is None else summary(manifest)} {trial.cfg.data.output_dir}")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--smoke", action="store_true", help="a much smaller budget (the test suite runs this)")
    add_verbose(parser)
    args = parser.parse_intermixed_args(argv)
    start = time.perf_counter()

    from yxanul.console import Console
    from yxanul.ray_session import ensure_ray
    from yxanul.report import compare_runs, format_summary, log_report, write_report
    from yxanul.sweep import load_sweep, plan_sweep, run_sweep, sweep_layout

    name = "demo-smoke" if args.smoke else "demo"
    stamp = time.strftime("%Y%m%d-%H%M%S")
    spec, overrides = load_sweep(name, [*machine_overrides(), f"sweep.name={name}-{stamp}"])
    plan = plan_sweep(spec, overrides)
    layout = sweep_layout(spec, overrides)
    log = layout.sweep_log(spec.name)
    with Console(log, verbose=args.verbose):
        if not args.verbose:
            say(f"Ray, Ray Data and Tune output: {log} (--verbose shows it here)")
        ensure_ray(min_cpus=4)  # Ray Data needs more logical CPUs than 2 real cores (docs/sweeps.md)
        tokenizer_stage(plan.trials[0].cfg)
        prepare_stage(plan)
        outcome = run_sweep(spec, overrides)

        report = compare_runs(outcome.tracking_uri, sweep=spec.name, parent_run_id=outcome.parent_run_id,
                              command="python -m jobs.demo" + " --smoke" * args.smoke)
        out = layout.report_dir(spec.name)
        files = write_report(report, out)
        log_report(outcome.tracking_uri, outcome.parent_run_id, files)
        say(f"\n{format_summary(report)}\n")
        say(f"report: {files[-1]}")
        say(f"MLflow UI: mlflow ui --backend-store-uri {outcome.tracking_uri}")
        say(f"demo finished in {time.perf_counter() - start:.0f} s")
    return 1 if any(r["status"] == "failed" for r in outcome.rows) else 0


if __name__ == "__main__":
    sys.exit(run_job(main))
