"""Times causal scaled-dot-product attention forward + backward per SDPA backend at our presets' shapes, and checks
each backend's output and gradients against FlashAttention's. K and V have the presets' fewer heads (GQA): each
backend is timed as the model calls it (K/V expanded to every query head first, a copy) and with ``enable_gqa=True``
(the backend reads the shared K/V heads itself, where it can), to show what dropping the expand would save.

    PYTHONPATH=platform python scripts/sdpa_bench.py      # on a GPU: yxanul-270m and width-2048 attention, 16 x 2048
    PYTHONPATH=platform python scripts/sdpa_bench.py --device cpu --batch 1 --seq 64   # a CPU check that it runs

torch's SDPA picks FlashAttention-2 first wherever it can run; cuDNN's fused attention comes last in its default
order. A backend is forced here with ``sdpa_kernel([backend])``; "compiled" runs the same call under
``torch.compile`` with the priority (cuDNN first) entered inside the compiled function, as the model does
(yxanul.model.CausalSelfAttention), and reports which attention kernels the profiler saw.
"""

from __future__ import annotations

import argparse
import itertools
import json
import statistics

import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel

SHAPES = {"yxanul-270m": (10, 2, 64), "width-2048": (32, 8, 64)}  # query heads, K/V heads, head_dim
BACKENDS = {"flash": SDPBackend.FLASH_ATTENTION, "cudnn": SDPBackend.CUDNN_ATTENTION,
            "efficient": SDPBackend.EFFICIENT_ATTENTION, "math": SDPBackend.MATH}


def expand_kv(k: torch.Tensor, v: torch.Tensor, heads: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Each K/V head repeated for its group of query heads, as yxanul.model.CausalSelfAttention does."""
    b, nkv, t, hd = k.shape
    group = heads // nkv
    return tuple(x[:, :, None].expand(b, nkv, group, t, hd).reshape(b, heads, t, hd) for x in (k, v))


def fwd_bwd(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, grad: torch.Tensor, fn=None,
            gqa: bool = False) -> list[torch.Tensor]:
    """Forward + backward of causal attention; K/V (fewer heads than Q) expanded first unless ``gqa``."""
    for t in (q, k, v):
        t.grad = None
    if gqa:
        out = (fn or F.scaled_dot_product_attention)(q, k, v, is_causal=True, enable_gqa=True)
    else:
        out = (fn or F.scaled_dot_product_attention)(q, *expand_kv(k, v, q.shape[1]), is_causal=True)
    out.backward(grad)
    return [out.detach(), q.grad, k.grad, v.grad]


def relative_diffs(got: list[torch.Tensor], ref: list[torch.Tensor]) -> list[float]:
    """max |got - ref| / max |ref| per tensor (output, dq, dk, dv): in units of the largest element, so one BF16
    rounding of it is 2^-8 whatever the tensor's scale."""
    return [float((a.float() - b.float()).abs().max() / b.float().abs().max()) for a, b in zip(got, ref)]


def timed_ms(run, device: torch.device, iters: int, rounds: int = 3) -> float:
    """Median over ``rounds`` of the time per call of ``iters`` calls back to back (the FP8 plan's timing)."""
    from yxanul.precision.fp8_plan import per_call_ms

    if device.type != "cuda":
        return float("nan")
    return statistics.median(per_call_ms(run, warmup=3 if i == 0 else 0, iters=iters) for i in range(rounds))


def kernels(run, device: torch.device) -> list[str]:
    if device.type != "cuda":
        return []
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        run()
        torch.cuda.synchronize()
    names = {e.key for e in prof.key_averages()}
    return sorted(n[:60] for n in names if any(s in n.lower() for s in ("flash", "fmha", "sdpa", "cudnn", "attention")))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--seq", type=int, default=2048)
    parser.add_argument("--iters", type=int, default=20)
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    dtype = torch.bfloat16
    card = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    for preset, (heads, kv_heads, hd) in SHAPES.items():
        gen = torch.Generator(device=device).manual_seed(0)
        shape, kv_shape = (args.batch, heads, args.seq, hd), (args.batch, kv_heads, args.seq, hd)
        q, k, v = (torch.randn(s, device=device, dtype=dtype, generator=gen).requires_grad_()
                   for s in (shape, kv_shape, kv_shape))
        grad = torch.randn(shape, device=device, dtype=dtype, generator=gen)
        flops = 3.5 * 4 * args.batch * heads * args.seq ** 2 * hd / 2  # causal half; backward 2.5x forward
        ref = None
        rows = []
        for (name, backend), gqa in itertools.product(BACKENDS.items(), (False, True)):
            if name == "math" and device.type == "cuda":
                continue  # materializes B x H x T x T: minutes and ~20 GB at 16 x 2048
            label = name + (", enable_gqa" if gqa else "")
            try:
                with sdpa_kernel([backend]):
                    got = fwd_bwd(q, k, v, grad, gqa=gqa)
                    ms = timed_ms(lambda: fwd_bwd(q, k, v, grad, gqa=gqa), device, args.iters)
            except RuntimeError as exc:
                rows.append({"preset": preset, "backend": label, "error": str(exc).splitlines()[0][:200]})
                continue
            ref = ref or got
            diff = relative_diffs(got, ref)
            rows.append({"preset": preset, "backend": label, "ms": ms, "tflops": flops / ms / 1e9,
                         "max_rel_diff_vs_first": dict(zip(("out", "dq", "dk", "dv"), diff))})
        order = [SDPBackend.CUDNN_ATTENTION, SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION,
                 SDPBackend.MATH]

        @torch.compile
        def compiled(q, k, v, **kwargs):
            with sdpa_kernel(order, set_priority=True):  # inside the compiled function, as the model does
                return F.scaled_dot_product_attention(q, k, v, **kwargs)

        got = fwd_bwd(q, k, v, grad, compiled)
        ms = timed_ms(lambda: fwd_bwd(q, k, v, grad, compiled), device, args.iters)
        seen = kernels(lambda: fwd_bwd(q, k, v, grad, compiled), device)
        diff = relative_diffs(got, ref) if ref else []
        rows.append({"preset": preset, "backend": "compiled, cudnn first", "ms": ms, "tflops": flops / ms / 1e9,
                     "kernels": seen,
                     "max_rel_diff_vs_first": dict(zip(("out", "dq", "dk", "dv"), diff))})
        for row in rows:
            row.update(card=card, batch=args.batch, seq=args.seq, heads=heads, kv_heads=kv_heads, head_dim=hd,
                       torch=torch.__version__)
            print(json.dumps(row), flush=True)


if __name__ == "__main__":
    main()
