"""The cross-entropy chunk kernels (yxanul.model) under each way of compiling them, on one CUDA card.

    python scripts/ce_chunk_bench.py [--rows 4096] [--columns 200064] [--vocab 200005] [--reps 30] [--device cuda]

Prints milliseconds per chunk of BF16 logits, forward (log-sum-exp and loss) and backward (the logits' gradient),
and the graphs each way compiled while it also ran a remainder chunk and a second model's width. Ways:
``static`` (``dynamic=False``, the 2026-12-05 code), ``dynamic`` (every size symbolic, 2026-12-06 to -07),
``model`` (:func:`yxanul.model.compile_chunk_fn` as it is now) and ``eager``. Why: jobs.bench BF16 lost 9% between
those two commits (scripts/bisect_speed.sh, H100, 2026-12-07). ``--device cpu`` (small sizes) checks the script.
"""

from __future__ import annotations

import argparse
import json
import sys
import time

import torch


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=4096)
    parser.add_argument("--columns", type=int, default=200064)
    parser.add_argument("--vocab", type=int, default=200005)
    parser.add_argument("--reps", type=int, default=30)
    parser.add_argument("--device", default="cuda")
    args = parser.parse_args(argv)
    from torch._dynamo.testing import CompileCounterWithBackend

    from yxanul.model import _ce_backward_chunk, _ce_forward_chunk, compile_chunk_fn

    device = torch.device(args.device)
    g = torch.Generator(device=device).manual_seed(0)

    def inputs(rows: int, columns: int, vocab: int) -> tuple[torch.Tensor, torch.Tensor]:
        logits = torch.randn(rows, columns, device=device, generator=g).to(torch.bfloat16)
        return logits, torch.randint(0, vocab, (rows,), device=device, generator=g)

    def ways() -> dict[str, tuple[object, object, list[CompileCounterWithBackend]]]:
        def plain(dynamic: bool | None):
            counters = [CompileCounterWithBackend("inductor"), CompileCounterWithBackend("inductor")]
            fwd = torch.compile(_ce_forward_chunk, dynamic=dynamic, backend=counters[0])
            bwd = torch.compile(_ce_backward_chunk, dynamic=dynamic, backend=counters[1])
            return (lambda *a: fwd(*a)), (lambda *a: bwd(*a)), counters

        counters = [CompileCounterWithBackend("inductor"), CompileCounterWithBackend("inductor")]
        return {"static": plain(False), "dynamic": plain(True),
                "model": (compile_chunk_fn(_ce_forward_chunk, backend=counters[0]),
                          compile_chunk_fn(_ce_backward_chunk, backend=counters[1]), counters),
                "eager": (_ce_forward_chunk, _ce_backward_chunk, [])}

    rows = []
    one = torch.ones((), device=device)
    for name in ("static", "dynamic", "model", "eager"):
        torch._dynamo.reset()  # ways compile the same functions: each starts from an empty cache
        fwd, bwd, counters = ways()[name]
        with torch.no_grad():
            # the shapes a run sees: full chunks, a remainder, a second model's width
            for r, c, v in ((args.rows, args.columns, args.vocab), (args.rows // 3, args.columns, args.vocab),
                            (args.rows, 8192, 8000)):
                logits, targets = inputs(r, c, v)
                lse, _ = fwd(logits, targets, v)
                bwd(logits, targets, lse, one, args.vocab if c == args.columns else v)
            logits, targets = inputs(args.rows, args.columns, args.vocab)
            times = {"fwd": [], "bwd": []}
            for _ in range(args.reps):
                for part in ("fwd", "bwd"):
                    if device.type == "cuda":
                        torch.cuda.synchronize(device)
                    t0 = time.perf_counter()
                    if part == "fwd":
                        lse, loss = fwd(logits, targets, args.vocab)
                    else:
                        bwd(logits, targets, lse, one, args.vocab)
                    if device.type == "cuda":
                        torch.cuda.synchronize(device)
                    times[part].append(1000 * (time.perf_counter() - t0))
        gbytes = logits.numel() * logits.element_size() / 1e9
        row = {"way": name, "fwd_ms": sorted(times["fwd"])[len(times["fwd"]) // 2],
               "bwd_ms": sorted(times["bwd"])[len(times["bwd"]) // 2],
               "graphs": [c.frame_count for c in counters], "logits_gb": round(gbytes, 3),
               "card": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu", "rows": args.rows, "columns": args.columns}
        rows.append(row)
        print(f"{name:<8} fwd {row['fwd_ms']:7.3f} ms  bwd {row['bwd_ms']:7.3f} ms  "
              f"({gbytes:.2f} GB of logits per chunk)  graphs fwd/bwd {row['graphs']}", flush=True)
    for row in rows:
        print(json.dumps(row))
    return 0


if __name__ == "__main__":
    sys.exit(main())
