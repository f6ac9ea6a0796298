"""GPU proof of ``model.attention_backend`` (yxanul.model.attention_priority): the chosen backend's kernels are the
ones that run, eager and in the regionally compiled model, and the backends compute the same attention to BF16
rounding. On compute capability 9.x ``auto`` must run cuDNN's fused attention; elsewhere torch's own choice
(FlashAttention-2). Run: ``pytest -m gpu tests/gpu``; the step time each backend takes is printed (the speed
comparison itself is ``scripts/sdpa_bench.py`` and the bench, docs/benchmarks.md)."""

from __future__ import annotations

import pytest
import torch
from torch.autograd import DeviceType

from tests.gpu.test_fp8 import CC, DEV
from yxanul.config import ModelConfig, OptimConfig, PrecisionConfig
from yxanul.profiling import profiled
from yxanul.train.build import build_training

pytestmark = pytest.mark.gpu

VOCAB = 16384
FLASH, CUDNN = "flash_fwd", "sdpa"
"""Kernel-name fragments: FlashAttention-2's forward ``pytorch_flash::flash_fwd_kernel``; cuDNN's fused attention
``cudnn_generated_fort_native_sdpa_sm90_*`` (forward and backward)."""


def _run(backend: str, compiled: bool) -> tuple[set[str], float, torch.Tensor]:
    """One forward + backward of the 270m body (4 layers, 16k vocabulary) at 8 x 2048 tokens: the attention kernels
    the profiler saw, the loss, and the first block's qkv weight gradient."""
    torch.manual_seed(0)
    cfg = ModelConfig(preset="yxanul-270m", vocab_size=VOCAB, n_layers=4, attention_backend=backend)
    built = build_training(cfg, PrecisionConfig(mode="bf16", compile="on" if compiled else "off"), OptimConfig(), DEV)
    tokens = torch.randint(1, VOCAB, (8, 2048), generator=torch.Generator().manual_seed(1)).to(DEV)

    def step() -> torch.Tensor:
        built.model.zero_grad(set_to_none=True)
        with built.precision.autocast():
            loss = built.step_model(tokens, targets=tokens) / tokens.numel()
        loss.backward()
        return loss

    step()  # compiles
    with profiled(DEV) as prof:  # synchronises the device on exit
        loss = step()
    kernels = {e.name for e in prof.function_events if e.device_type == DeviceType.CUDA}
    attention = {k[:70] for k in kernels if "flash" in k.lower() or "sdpa" in k.lower() or "fmha" in k.lower()}
    grad = built.model.blocks[0].attn.qkv.weight.grad.detach().float().clone()
    return attention, loss.item(), grad


@pytest.mark.parametrize("compiled", [False, True])
def test_the_chosen_attention_kernels_run_and_agree(compiled):
    runs = {backend: _run(backend, compiled) for backend in ("flash", "cudnn", "auto")}
    for backend, (kernels, loss, _) in runs.items():
        print(f"{'compiled' if compiled else 'eager'} {backend}: loss {loss:.6f}, kernels {sorted(kernels)}")
    flash_kernels, cudnn_kernels, auto_kernels = (runs[b][0] for b in ("flash", "cudnn", "auto"))
    assert any(FLASH in k for k in flash_kernels) and not any(CUDNN in k for k in flash_kernels)
    assert any(CUDNN in k for k in cudnn_kernels) and not any(FLASH in k for k in cudnn_kernels)
    auto_runs = CUDNN if CC[0] == 9 else FLASH  # auto: cuDNN on Hopper, torch's own choice elsewhere
    assert any(auto_runs in k for k in auto_kernels)
    assert not any((FLASH if CC[0] == 9 else CUDNN) in k for k in auto_kernels)
    # the same attention in other kernels: the loss within BF16's rounding of it (2^-8 relative), the gradients
    # pointing the same way (a relative error e in every element keeps the cosine above 1 - e^2 / 2: 1 - 2^-10
    # allows e = 2^-4.5, BF16 rounding (2^-8) compounded through 4 layers and the backward with room to spare)
    loss_flash, loss_cudnn = runs["flash"][1], runs["cudnn"][1]
    assert loss_cudnn == pytest.approx(loss_flash, rel=2**-8)
    g_flash, g_cudnn = runs["flash"][2], runs["cudnn"][2]
    cosine = torch.nn.functional.cosine_similarity(g_flash.flatten(), g_cudnn.flatten(), dim=0).item()
    print(f"qkv weight gradient cosine flash vs cudnn: {cosine:.6f}")
    assert cosine > 1 - 2**-10
