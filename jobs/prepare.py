"""Tokenize and bucket the training text into a prepared dataset (see docs/data.md).

    python -m jobs.prepare experiments/runs/prepare-default.yaml [data.mode=packed ...] [--dry-run] [--force]
"""

from __future__ import annotations

import sys
from collections.abc import Sequence

from yxanul.cli import job_parser, run_job
from yxanul.config import load_config


def describe(plan) -> str:
    d = plan.cfg.data
    lines = ["plan:"]
    for source, is_val in plan.sources:
        where = source.uri or (f"{len(source.files)} file(s): {source.files[0]}" + (" ..." if len(source.files) > 1 else ""))
        role = f"validation[{source.domain}]" if is_val else f"train (held-out -> validation[{source.domain}])"
        lines.append(f"  source {source.spec}: {where}  {role}")
    buckets = ", ".join(map(str, plan.buckets))
    lines.append(f"  mode: {d.mode}; buckets: {buckets}; validation_fraction: {d.validation_fraction}")
    lines.append(f"  tokenizer: {plan.tokenizer_path}" + ("" if plan.tokenizer_sha256 else
                 "  (missing: run `python -m jobs.tokenizer CONFIG` first)"))
    lines.append(f"  output: {plan.output_dir}")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = job_parser(__doc__.strip().splitlines()[0])
    parser.add_argument("--force", action="store_true", help="rebuild even if an up-to-date dataset exists")
    args = parser.parse_intermixed_args(argv)
    cfg = load_config(args.config, args.overrides)

    from yxanul.data.prepare import make_plan, run, summary, validation_warning

    plan = make_plan(cfg, args.config, dry_run=args.dry_run)
    if args.dry_run:
        print(cfg.to_yaml())
        print(describe(plan))
        return 0
    manifest = run(plan, force=args.force)
    if manifest is None:
        print(f"{plan.output_dir} is up to date (config hash {plan.config_hash}); use --force to rebuild")
        return 0
    print(summary(manifest) + f" -> {plan.output_dir}")
    warning = validation_warning(manifest, cfg.data)
    if warning:
        print(warning, file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(run_job(main))
