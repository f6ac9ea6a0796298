"""The cross-entropy chunk kernels (yxanul.model) under each way of compiling them, on one CUDA card.

    python scripts/ce_chunk_bench.py [--rows 4096] [--columns 200064] [--vocab 200005] [--reps 30] [--device cuda]
                                     [--ways model,online]

Prints the median milliseconds of one chunk's loss and gradient (the forward kernel's log-sum-exp and loss, then
the backward kernel's gradient of the BF16 logits, as the fused head runs them) and the graphs each way compiled
while it also ran a remainder chunk and a second model's width. Ways: ``static`` (``dynamic=False``, the
2026-12-05 code), ``dynamic`` (every size symbolic, 2026-12-06 to -07), ``model``
(:func:`yxanul.model.compile_chunk_fn` as it is now: the plain head's loss and validation; the fused head's until
2026-12-08), ``online`` (the model's way with the forward kernel spelled as Inductor's online-softmax pattern: one
pass over the row instead of two, measured 2.7% slower), ``fused`` (both kernels in one function, compiled as the
model's are: a candidate the model does not use), ``triton`` (:mod:`yxanul.loss_kernel`, the fused head's kernel on
a GPU since 2026-12-08: the gradient written over the logits; ``triton:BLOCKxWARPS`` launches it with another
shape, e.g. ``triton:8192x16``) and ``eager``. Each row also gives the largest difference of the way's gradient from
the eager reference kernels' on the same logits. Why: jobs.bench BF16 lost 9% between the static and dynamic commits
(scripts/bisect_speed.sh, H100, 2026-12-07). ``--device cpu`` (small sizes) checks the script; the ``triton`` ways
need a GPU, or Triton's interpreter (``TRITON_INTERPRET=1``) on the CPU.
"""

from __future__ import annotations

import argparse
import json
import statistics
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
    parser.add_argument("--ways", default="", help="comma-separated ways to run (default: all)")
    args = parser.parse_args(argv)
    from torch._dynamo.testing import CompileCounterWithBackend

    from yxanul.loss_kernel import BLOCK_COLUMNS, NUM_WARPS, chunk_loss_and_grad_
    from yxanul.model import IGNORE_INDEX, _ce_backward_chunk, _ce_forward_chunk, compile_chunk_fn

    device = torch.device(args.device)
    g = torch.Generator(device=device).manual_seed(0)

    def inputs(rows: int, columns: int, vocab: int) -> tuple[torch.Tensor, torch.Tensor]:
        logits = torch.randn(rows, columns, device=device, generator=g).to(torch.bfloat16)
        return logits, torch.randint(0, vocab, (rows,), device=device, generator=g)

    def two(fwd: object, bwd: object) -> object:
        """One chunk's pass as the fused head runs it: the forward kernel, then the backward kernel's gradient."""
        def run(logits: torch.Tensor, targets: torch.Tensor, vocab: int) -> torch.Tensor:
            lse, _ = fwd(logits, targets, vocab)
            return bwd(logits, targets, lse, one, vocab)
        return run

    def plain(dynamic: bool) -> tuple[object, list[CompileCounterWithBackend]]:
        counters = [CompileCounterWithBackend("inductor"), CompileCounterWithBackend("inductor")]
        return two(torch.compile(_ce_forward_chunk, dynamic=dynamic, backend=counters[0]),
                   torch.compile(_ce_backward_chunk, dynamic=dynamic, backend=counters[1])), counters

    def model() -> tuple[object, list[CompileCounterWithBackend]]:
        counters = [CompileCounterWithBackend("inductor"), CompileCounterWithBackend("inductor")]
        return two(compile_chunk_fn(_ce_forward_chunk, backend=counters[0]),
                   compile_chunk_fn(_ce_backward_chunk, backend=counters[1])), counters

    def loss_and_grad(logits: torch.Tensor, targets: torch.Tensor, vocab: int, scale: torch.Tensor
                      ) -> tuple[torch.Tensor, torch.Tensor]:
        lse, loss = _ce_forward_chunk(logits, targets, vocab)
        return loss, _ce_backward_chunk(logits, targets, lse, scale, vocab)

    def online_forward(logits: torch.Tensor, targets: torch.Tensor, vocab: int
                       ) -> tuple[torch.Tensor, torch.Tensor]:
        """The forward kernel spelled as Inductor's online-softmax pattern (amax -> subtract -> exp -> sum, kept
        dims), which a GPU compiles as one pass over the row where torch.logsumexp is two (the model's kernel
        between db136f2 and its revert, 2026-12-07: 2.7% slower on an H100)."""
        x = logits.float()
        x = x.masked_fill(torch.arange(x.shape[1], device=x.device) >= vocab, float("-inf"))
        row_max = x.amax(dim=-1, keepdim=True)
        lse = ((x - row_max).exp().sum(dim=-1, keepdim=True).log() + row_max).squeeze(1)
        picked = x.gather(1, targets.clamp(min=0)[:, None]).squeeze(1)
        return lse, torch.where(targets != IGNORE_INDEX, lse - picked, 0.0).sum()

    def online() -> tuple[object, list[CompileCounterWithBackend]]:
        counters = [CompileCounterWithBackend("inductor"), CompileCounterWithBackend("inductor")]
        return two(compile_chunk_fn(online_forward, backend=counters[0]),
                   compile_chunk_fn(_ce_backward_chunk, backend=counters[1])), counters

    def fused() -> tuple[object, list[CompileCounterWithBackend]]:
        counters = [CompileCounterWithBackend("inductor")]
        fn = compile_chunk_fn(loss_and_grad, backend=counters[0])
        return (lambda logits, targets, vocab: fn(logits, targets, vocab, one)[1]), counters

    def triton(block: int, num_warps: int) -> tuple[object, list[CompileCounterWithBackend]]:
        def run(logits: torch.Tensor, targets: torch.Tensor, vocab: int) -> torch.Tensor:
            chunk_loss_and_grad_(logits, targets, vocab, one, IGNORE_INDEX, block=block, num_warps=num_warps)
            return logits  # the gradient, written over the logits
        return run, []

    # name -> a fresh (pass(logits, targets, vocab) -> gradient of the logits, its graph counters)
    ways = {"static": lambda: plain(False), "dynamic": lambda: plain(True), "model": model, "online": online,
            "fused": fused, "triton": lambda: triton(BLOCK_COLUMNS, NUM_WARPS),
            "eager": lambda: (two(_ce_forward_chunk, _ce_backward_chunk), [])}

    chosen = [w for w in args.ways.split(",") if w] or list(ways)
    for name in chosen:  # triton:BLOCKxWARPS, another launch shape of the Triton kernel
        if name.startswith("triton:"):
            block, _, warps = name.removeprefix("triton:").partition("x")
            if not (block.isdigit() and warps.isdigit()):
                parser.error(f"--ways: {name!r} is not triton:BLOCKxWARPS (e.g. triton:8192x16)")
            ways[name] = lambda b=int(block), w=int(warps): triton(b, w)
    unknown = sorted(set(chosen) - set(ways))
    if unknown:
        parser.error(f"--ways: unknown {', '.join(unknown)}; the ways are {', '.join(ways)}, triton:BLOCKxWARPS")
    reference = None
    rows = []
    one = torch.ones((), device=device)
    for name in chosen:
        make = ways[name]
        torch._dynamo.reset()  # ways compile the same functions: each starts from an empty cache
        run, counters = make()
        with torch.no_grad():
            # the shapes a run sees: full chunks, a remainder, a second model's width
            for r, c, v in ((args.rows, args.columns, args.vocab), (args.rows // 3, args.columns, args.vocab),
                            (args.rows, 8192, 8000)):
                run(*inputs(r, c, v), v)
            if reference is None:  # every way times the same logits (a fresh copy: the triton ways write over them)
                base, targets = inputs(args.rows, args.columns, args.vocab)
                reference = two(_ce_forward_chunk, _ce_backward_chunk)(base, targets, args.vocab).float()
            grad_diff = (run(base.clone(), targets, args.vocab).float() - reference).abs().max().item()
            logits = base.clone()
            times = []
            for _ in range(args.reps):
                if device.type == "cuda":
                    torch.cuda.synchronize(device)
                t0 = time.perf_counter()
                run(logits, targets, args.vocab)
                if device.type == "cuda":
                    torch.cuda.synchronize(device)
                times.append(1000 * (time.perf_counter() - t0))
        gbytes = logits.numel() * logits.element_size() / 1e9
        ms = statistics.median(times)
        row = {"way": name, "ms": ms, "logits_gb": round(gbytes, 3), "gb_per_s": round(gbytes / ms * 1e3, 1),
               "graphs": [c.frame_count for c in counters],
               "card": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu", "rows": args.rows,
               "columns": args.columns, "vocab": args.vocab, "max_grad_diff": grad_diff}
        rows.append(row)
        print(f"{name:<9} {ms:7.3f} ms for loss + gradient of {gbytes:.2f} GB of BF16 logits "
              f"({row['gb_per_s']:,.0f} GB/s of logits)  graphs {row['graphs']}  "
              f"max |grad - reference| {grad_diff:.2e}",
              flush=True)
    for row in rows:
        print(json.dumps(row))
    return 0


if __name__ == "__main__":
    sys.exit(main())
