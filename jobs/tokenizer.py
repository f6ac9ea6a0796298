"""Train a tokenizer (byte-level BPE or SuperBPE) on a sample of data.sources; write tokenizer.path.

    python -m jobs.tokenizer experiments/runs/tokenizer-bpe-8k.yaml
    python -m jobs.tokenizer experiments/runs/tokenizer-superbpe-16k.yaml tokenizer.transition=12800
    python -m jobs.tokenizer CONFIG tokenizer.kind=superbpe tokenizer.vocab_size=32768 --dry-run

Writes tokenizer.json atomically plus tokenizer.meta.json (sha256, sizes, sample, seconds).
"""

from __future__ import annotations

import sys
import time
from collections.abc import Sequence

from yxanul.cli import job_parser, run_job


def main(argv: Sequence[str] | None = None) -> int:
    parser = job_parser(__doc__.splitlines()[0])
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    args = parser.parse_intermixed_args(argv)

    from yxanul.config import load_config
    from yxanul.formatting import human_count

    cfg = load_config(args.config, args.overrides)
    tok = cfg.tokenizer
    transition = tok.transition
    if tok.kind == "superbpe" and transition is None:
        from yxanul.tokenizer import default_transition

        transition = default_transition(tok.vocab_size)
    plan = (f"plan: train {tok.kind} with {tok.vocab_size} tokens"
            + (f" (stage 1 to {transition}, then superwords)" if tok.kind == "superbpe" else "")
            + f" on {human_count(tok.train_sample_bytes)}B of text from {', '.join(cfg.data.sources)}"
            + f" (validation slice {cfg.data.validation_fraction:g} excluded) -> {tok.path}")
    if args.dry_run:
        print(cfg.to_yaml())
        print(plan)
        return 0
    print(plan, flush=True)

    from yxanul.tokenizer import train_from_config

    start = time.perf_counter()
    summary = train_from_config(cfg, show_progress=not args.quiet,
                                log=lambda line: print(line, flush=True))
    print(f"done: {summary['kind']} vocab {summary['vocab_size']}"
          + (f" (transition {summary['transition']})" if summary["transition"] else "")
          + f", trained on {summary['bytes'] / 1e6:.2f} MB ({summary['documents']} documents)"
          + f" in {time.perf_counter() - start:.1f} s; sha256 {summary['sha256']}")
    print(f"wrote {summary['path']}")
    return 0


if __name__ == "__main__":
    sys.exit(run_job(main))
