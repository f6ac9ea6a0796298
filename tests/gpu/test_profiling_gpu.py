"""GPU proof of the attention share (yxanul.profiling) on the one build path (yxanul-270m, BF16, compiled by blocks):
every fused attention kernel (flash / memory-efficient / cuDNN SDPA, forward and backward) is found inside the
attention ops, even under torch.compile; the sums equal those of PyTorch's own event tree (``prof.function_events``) and the
step's device time the total PyTorch's own table prints; and the share grows with the sequence length, as the FLOPs
say it must. The seconds each way of reading the events takes are printed (the loop's ``profile`` phase). Run: ``pytest -m gpu tests/gpu``; the printed shares
are the numbers the curriculum comparison reads."""

from __future__ import annotations

import time

import pytest
import torch
from torch.autograd import DeviceType

from tests.gpu.test_fp8 import DEV
from yxanul.config import ModelConfig, OptimConfig, PrecisionConfig
from yxanul.metrics import flops_split
from yxanul.profiling import (
    DEVICE_KINDS,
    LOSS_REGION,
    OPTIMIZER_REGION,
    attention_share,
    is_attention_op,
    profiled,
    recorded_events,
)
from yxanul.train.build import build_training
from yxanul.train.step import train_step

pytestmark = pytest.mark.gpu

VOCAB = 16384
M270 = ModelConfig(preset="yxanul-270m", vocab_size=VOCAB)  # the preset's 200k head would be most of the step
FUSED = ("flash", "fmha", "sdpa")
"""Kernel-name fragments of the fused attention kernels (FlashAttention-2 ``flash_fwd_kernel`` / ``flash_bwd_*``,
memory-efficient ``fmha_cutlass*``, cuDNN ``*sdpa*``): a name check independent of the op tree the share uses."""


def test_every_fused_attention_kernel_is_counted_and_the_share_grows_with_the_sequence():
    shares = {}
    for seq_len in (128, 2048):
        torch.manual_seed(0)
        built = build_training(M270, PrecisionConfig(mode="bf16", compile="on"), OptimConfig(), DEV)
        assert built.compiled
        batches = list(torch.randint(1, VOCAB, (32768 // seq_len, seq_len)).split(16384 // seq_len))  # 2 x 16k tokens
        for _ in range(2):  # compile and warm up, as the loop's first step of a shape does
            train_step(built.step_model, built.optimizer, batches, lr=1e-4, precision=built.precision)
        with profiled(DEV) as prof:
            train_step(built.step_model, built.optimizer, batches, lr=1e-4, precision=built.precision)
        began = time.perf_counter()
        measured = attention_share(recorded_events(prof), "cuda")
        read_s = time.perf_counter() - began
        events = prof.function_events  # PyTorch's own tree of the same records: the reference sums
        tree_s = time.perf_counter() - began - read_s
        kernels = [e for e in events if e.device_type == DeviceType.CUDA and not e.is_user_annotation]
        fused = sum(e.device_time_total for e in kernels if any(k in e.name.lower() for k in FUSED)) / 1000
        table_total = sum(e.self_device_time_total for e in prof.key_averages()
                          if e.device_type == DeviceType.CUDA and not e.is_user_annotation) / 1000
        outermost = [e for e in events if e.device_type == DeviceType.CPU and not e.is_async
                     and is_attention_op(e.name) and not _has_attention_parent(e)]
        tree_attention = sum(e.device_time_total for e in outermost) / 1000
        print(f"seq_len {seq_len}: attention {measured.attention_ms:.2f} of {measured.step_ms:.2f} ms device time "
              f"({100 * measured.share:.1f}%; fused kernels by name {fused:.2f} ms); attention FLOPs "
              f"{100 * flops_split(M270, seq_len, VOCAB).attention_share:.1f}%; {len(events)} events read in "
              f"{read_s:.3f} s (PyTorch's tree: {tree_s:.3f} s); kernels: "
              f"{sorted({e.name[:60] for e in kernels if any(k in e.name.lower() for k in FUSED)})}")
        assert measured.attention_ms == pytest.approx(tree_attention, rel=1e-9)
        # which backend ran, as the run's yxanul.attention_kernels tag says it: fused kernels, named without templates
        print(f"seq_len {seq_len}: attention kernels {measured.kernels}")
        assert any(k in name.lower() for name in measured.kernels for k in FUSED)
        assert all("<" not in name and "(" not in name for name in measured.kernels)
        assert measured.step_ms == pytest.approx(table_total, rel=1e-9)  # one GPU: no NCCL kernel to leave out
        assert fused > 0, "no fused attention kernel ran"
        assert fused <= measured.attention_ms * (1 + 1e-9), "a fused attention kernel ran outside the attention ops"
        assert 0 < measured.share < 1
        # where the step went, by kind: every kind ran, they add up to the step, and the loss's and the optimizer's
        # regions hold what PyTorch's own tree puts under them
        by_kind = dict(measured.device_ms)
        print(f"seq_len {seq_len}: device ms by kind " + ", ".join(f"{k} {v:.2f}" for k, v in measured.device_ms))
        assert list(by_kind) == list(DEVICE_KINDS) and all(ms > 0 for ms in by_kind.values()), by_kind
        assert sum(by_kind.values()) == pytest.approx(measured.step_ms, rel=1e-9)
        assert by_kind["attention"] == measured.attention_ms
        # This vocabulary takes the plain head (its compiled chunk kernels); where the fused head's Triton kernel runs
        # (yxanul.loss_kernel), PyTorch's tree hangs it under no event (it links to no op; tests/gpu/
        # test_loss_kernel_gpu.py holds our split to it), so it is added to the tree's sum here.
        loss_kernel = sum(e.device_time_total for e in kernels if "_ce_chunk_kernel" in e.name)
        for kind, region in (("cross_entropy", LOSS_REGION), ("optimizer", OPTIMIZER_REGION)):
            found = [e for e in events if e.device_type == DeviceType.CPU and e.name == region]
            tree = sum(e.device_time_total for e in found)
            if kind == "cross_entropy":
                tree += loss_kernel - sum(_kernel_us_under(e, "_ce_chunk_kernel") for e in found)
            assert by_kind[kind] == pytest.approx(tree / 1000, rel=1e-9), kind
        assert by_kind["gemm"] > by_kind["other"]  # a 270M-wide model at 16k tokens: the linear layers dominate
        shares[seq_len] = measured.share
        del built
        torch.cuda.empty_cache()
    assert shares[128] < shares[2048]


def _kernel_us_under(event, name: str) -> float:
    """Device time of the kernels called ``name`` that PyTorch's tree hangs under ``event`` or its children."""
    return (sum(k.duration for k in event.kernels if name in k.name)
            + sum(_kernel_us_under(child, name) for child in event.cpu_children))


def _has_attention_parent(event) -> bool:
    parent = event.cpu_parent
    while parent is not None and not is_attention_op(parent.name):
        parent = parent.cpu_parent
    return parent is not None
