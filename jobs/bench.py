"""Training throughput on one GPU: model preset x precision x recipe x fp8_layers, with the
Hugging Face LlamaForCausalLM peer (torch.compile, BF16 autocast, fused AdamW) in the same run.

    python -m jobs.bench experiments/bench/h100-270m.yaml [micro_batch=8 seq_len=2048 ...] [--dry-run]
"""

from __future__ import annotations

import sys
from collections.abc import Sequence

from yxanul.cli import job_parser, run_job
from yxanul.config import load_config


def main(argv: Sequence[str] | None = None) -> int:
    args = job_parser(__doc__.splitlines()[0]).parse_intermixed_args(argv)
    from yxanul.bench import BenchConfig, describe_plan, environment, format_table, run_bench

    cfg = load_config(args.config, args.overrides, model=BenchConfig)
    print(f"micro_batch={cfg.micro_batch} seq_len={cfg.seq_len} warmup_steps={cfg.warmup_steps} "
          f"steps={cfg.steps} compile={cfg.compile} device={cfg.device}")
    print(describe_plan(cfg))
    if args.dry_run:
        return 0
    results = run_bench(cfg)
    env = environment()
    print(f"\n{env['card']} | torch {env['torch']} | TE {env.get('transformer_engine', '-')} | {env['date']}")
    print(format_table(results))
    return 1 if all(r.error for r in results) else 0


if __name__ == "__main__":
    sys.exit(run_job(main))
