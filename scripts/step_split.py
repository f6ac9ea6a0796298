"""Where one training step of our model goes on a GPU: its device time by kind, its idle time, its wall-clock.

    python scripts/step_split.py [--preset yxanul-270m] [--micro-batch 16] [--seq-len 2048] [--device cuda] [--top N]

Builds the model as the training job does (``build_training``, BF16, compiled by regions), runs 6 warm-up steps of
random tokens, then prints:

1. one step profiled after a synchronisation: its device time by kind (:data:`yxanul.profiling.DEVICE_KINDS`, as the
   job logs ``train/device_ms/<kind>``); with ``--top N``, also the N kernels with the most device time in it;
2. 6 steps profiled back to back (steady state): kernel time per step, the span of device activity, the idle
   difference, and the largest gaps between kernels;
3. the wall-clock per step over 8 steps with the batch on the host, in pinned host memory and on the device.

Why (issue 22): the job's BF16 step is ~160 ms at yxanul-270m where 2.2x the peer needs 155.9; this says whether the
difference is kernels (and which) or a GPU waiting for its host. ``--device cpu --preset tiny`` checks the script.
"""

from __future__ import annotations

import argparse
import sys
import time

import torch


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="yxanul-270m")
    parser.add_argument("--vocab", type=int, default=None, help="for presets without a vocabulary (tiny)")
    parser.add_argument("--micro-batch", type=int, default=16)
    parser.add_argument("--seq-len", type=int, default=2048)
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--top", type=int, default=0, help="also list the N kernels with the most device time")
    args = parser.parse_args(argv)
    from yxanul.config import ModelConfig, OptimConfig, PrecisionConfig
    from yxanul.profiling import attention_share, is_gemm_kernel, profiled, recorded_events, short_name
    from yxanul.train.build import build_training
    from yxanul.train.step import train_step

    dev = torch.device(args.device)
    cuda = dev.type == "cuda"
    torch.manual_seed(0)
    model_cfg = ModelConfig(preset=args.preset, **({"vocab_size": args.vocab} if args.vocab else {}))
    built = build_training(model_cfg, PrecisionConfig(mode="bf16" if cuda else "fp32", compile="on" if cuda else "off"),
                           OptimConfig(), dev)
    vocab = built.model.vocab_size
    host = [torch.randint(1, vocab, (args.micro_batch, args.seq_len))]
    batches = {"host memory": host, "pinned host memory": [host[0].pin_memory()] if cuda else host,
               "device memory": [host[0].to(dev)]}

    def steps(batch: list[torch.Tensor], n: int) -> None:
        for _ in range(n):
            train_step(built.step_model, built.optimizer, batch, lr=1e-4, precision=built.precision)

    def sync() -> None:
        if cuda:
            torch.cuda.synchronize(dev)

    steps(batches["device memory"], 6)
    sync()
    with profiled(dev) as prof:
        steps(batches["device memory"], 1)
    one = attention_share(recorded_events(prof), dev.type)
    split = ", ".join(f"{kind} {ms:.2f}" for kind, ms in one.device_ms) or "(CPU time: not split)"
    print(f"one step after a sync: {one.step_ms:.2f} ms {'device' if cuda else 'CPU'} time; {split}", flush=True)
    if cuda and args.top:
        by_name: dict[str, list[float]] = {}
        for e in recorded_events(prof):
            if e.device_type() != torch.autograd.DeviceType.CPU and not e.is_user_annotation():
                by_name.setdefault(short_name(e.name())[:90], []).append((e.end_ns() - e.start_ns()) / 1e6)
        print(f"the {args.top} kernels with the most device time in that step (ms in all, launches):")
        for name, ms in sorted(by_name.items(), key=lambda item: -sum(item[1]))[:args.top]:
            print(f"  {sum(ms):7.2f}  {len(ms):4d}  {'gemm ' if is_gemm_kernel(name) else ''}{name}")
    del prof
    if cuda:
        with profiled(dev) as prof:
            steps(batches["device memory"], 6)
        kernels = sorted((e.start_ns(), e.end_ns(), e.name()) for e in recorded_events(prof)
                         if e.device_type() != torch.autograd.DeviceType.CPU and not e.is_user_annotation())
        busy = sum(end - start for start, end, _ in kernels)
        span = kernels[-1][1] - kernels[0][0]
        print(f"6 steps back to back: {len(kernels)} kernels, busy {busy / 6e6:.2f} ms a step, span {span / 6e6:.2f} "
              f"ms a step, idle {(span - busy) / 6e6:.2f} ms a step", flush=True)
        gaps = sorted(((kernels[i + 1][0] - kernels[i][1], kernels[i][2][:50], kernels[i + 1][2][:50])
                       for i in range(len(kernels) - 1)), reverse=True)[:6]
        for gap, before, after in gaps:
            print(f"  gap {gap / 1e3:8.1f} us after {before} | before {after}")
        del prof
    tokens = args.micro_batch * args.seq_len
    for name, batch in batches.items():
        sync()
        began = time.perf_counter()
        steps(batch, 8)
        sync()
        ms = (time.perf_counter() - began) / 8 * 1000
        print(f"wall-clock, batch in {name}: {ms:.2f} ms a step, {tokens / ms * 1000:,.0f} tokens/s", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
