"""Tokenization throughput: the Ray Data prepare pipeline vs a plain single-process encode_batch loop.

    python -m jobs.bench_data experiments/runs/prepare-default.yaml [--target-mb 64] [--batch 512]

Both tokenize the same text (data.sources, repeated up to --target-mb); prints tokens/s per CPU core
for each and their ratio, and exits 1 unless the outputs are identical token for token.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Sequence

from yxanul.cli import job_parser, run_job
from yxanul.config import load_config


def main(argv: Sequence[str] | None = None) -> int:
    parser = job_parser(__doc__.strip().splitlines()[0])
    parser.add_argument("--target-mb", type=float, default=64.0, help="repeat the text up to this many MB")
    parser.add_argument("--batch", type=int, default=512, help="documents per encode_batch call (baseline)")
    args = parser.parse_intermixed_args(argv)
    cfg = load_config(args.config, args.overrides)
    if args.dry_run:
        print(cfg.to_yaml())
        print(f"plan: {', '.join(cfg.data.sources)} repeated to {args.target_mb:g} MB; baseline: one process "
              f"on 1 core; pipeline: Ray Data on {len(os.sched_getaffinity(0))} cores; tokenizer {cfg.tokenizer.path}")
        return 0

    from yxanul.data.bench import run_benchmark

    r = run_benchmark(cfg, args.config, target_mb=args.target_mb, batch=args.batch,
                      log=lambda line: print(line, flush=True))
    print(f"tokens/s per core: baseline {r['baseline_tokens_per_s_per_core']:,}, pipeline "
          f"{r['pipeline_tokens_per_s_per_core']:,}, ratio {r['ratio']:.2f}")
    print(f"tokens per CPU-second: baseline {r['baseline_tokens_per_cpu_s']:,}, pipeline "
          f"{r['pipeline_tokens_per_cpu_s']:,}, ratio {r['ratio_cpu']:.2f}; identical: {r['identical']}")
    print(f"against a baseline making the pipeline's own call (encode_batch_fast): tokens/s per core "
          f"{r['baseline_fast_tokens_per_s_per_core']:,}, ratio {r['ratio_vs_fast']:.2f}; per CPU-second "
          f"ratio {r['ratio_cpu_vs_fast']:.2f}")
    print(json.dumps(r))
    if not r["identical"]:
        print("error: the pipeline's tokens differ from the baseline's", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(run_job(main))
