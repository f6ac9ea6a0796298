"""Does a ``torch.profiler.profile`` left to the garbage collector crash the process when a later collection frees
it in another thread, after the thread that recorded it ended and another profile started? (The question behind the
segmentation faults of reused sweep-trial processes, docs/sweeps.md "A trial whose process dies".) Needs only torch.

    python scripts/profiler_gc_check.py gc 40     # each round: a thread profiles an SDPA step and leaves the profile
                                                  # in its reference cycle; another thread collects while profiling
    python scripts/profiler_gc_check.py free 40   # the same, the profile's results freed in the recording thread

H100, 2026-12-07 (six processes of 40 rounds each way, ``for k in 1 2 3 4 5 6; do ...; done``): no crash either way.
"""

import faulthandler
import gc
import sys
import threading

import torch
from torch.profiler import ProfilerActivity, profile

faulthandler.enable()
variant, rounds = sys.argv[1], int(sys.argv[2])
dev = torch.device("cuda" if torch.cuda.is_available() else "cpu")
activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if dev.type == "cuda" else [])
x = torch.randn(4, 8, 256, 64, device=dev, requires_grad=True)
linear = torch.nn.Linear(64, 64, device=dev)
gc.disable()  # collect only where this script says


def recorded() -> None:
    with profile(activities=activities) as prof:
        y = torch.nn.functional.scaled_dot_product_attention(linear(x), x, x, is_causal=True)
        y.sum().backward()
        if dev.type == "cuda":
            torch.cuda.synchronize()
    assert any(event.name() for event in prof.profiler.kineto_results.events())
    if variant == "free":
        prof.profiler = None  # the results go now, in this thread


def collected(i: int) -> None:
    with profile(activities=activities):
        freed = gc.collect()
        linear(x).sum().backward()
    print(i, "collected", freed, flush=True)


for i in range(rounds):
    for target, args in ((recorded, ()), (collected, (i,))):
        thread = threading.Thread(target=target, args=args)
        thread.start()
        thread.join()
print("survived", rounds)
