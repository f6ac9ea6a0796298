"""Train one model on a prepared dataset with Ray Train (DDP over scaling.num_workers), logging to MLflow.

    python -m jobs.train experiments/runs/pulse.yaml [dotted.key=value ...] [--dry-run]
    ray job submit --working-dir . -- python -m jobs.train CONFIG data.output_dir=/abs/path ...

A run started again with the same run.name and run.storage_path resumes from its latest checkpoint.
--dry-run prints the resolved config, the parameter count and the curriculum stage table, and exits
without starting Ray. Rank 0's progress and validation lines are shown; Ray's own output goes to
<run.storage_path>/<run.name>.log (--verbose shows it here instead).
"""

from __future__ import annotations

import sys
from collections.abc import Sequence

from yxanul.cli import job_parser, run_job
from yxanul.config import load_config
from yxanul.formatting import human_count


def main(argv: Sequence[str] | None = None) -> int:
    args = job_parser(__doc__.splitlines()[0], verbose=True).parse_intermixed_args(argv)
    cfg = load_config(args.config, args.overrides)

    from yxanul.console import Console, name_run, say
    from yxanul.interrupt import signals_handled
    from yxanul.layout import Layout
    from yxanul.train.launch import describe, train

    if args.dry_run:
        print(describe(cfg))
        return 0
    log = Layout.of(cfg).run_log(cfg.run.name)
    with Console(log, verbose=args.verbose), signals_handled():  # SIGINT/SIGTERM: one line, 130/143
        name_run(cfg.run.name, cfg.run.name)
        say(f"training {cfg.run.name}: {cfg.scaling.num_workers} worker(s), {human_count(cfg.train.max_tokens)} "
            "tokens; rank 0 reports here" + ("" if args.verbose else f"; Ray's output: {log} (--verbose shows it)"))
        result = train(cfg)
        state = "finished" if result.finished else "stopped (resume with the same run.name)"
        say(f"training {state} at {human_count(result.tokens)} tokens")
        for key in sorted(k for k in result.metrics if k.startswith(("val/", "train/loss"))):
            say(f"  {key} = {result.metrics[key]:.4f}")
        if result.run_id:
            from yxanul.tracking import resolve_tracking_uri

            say(f"MLflow run {result.run_id} in {resolve_tracking_uri(cfg.tracking.uri)}")
        if result.checkpoint_path:
            say(f"checkpoint: {result.checkpoint_path}")
    return 0


if __name__ == "__main__":
    sys.exit(run_job(main))
