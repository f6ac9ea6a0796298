"""The attention core's share of a training step, measured: one step under ``torch.profiler``.

Why: a sequence-length curriculum trains its early tokens on short sequences. Per token, the attention scores
cost ``12 * n_layers * hidden * seq_len`` FLOPs and everything else a constant (:func:`yxanul.metrics.flops_split`),
so short stages should run more tokens per second. Whether they do depends on what the card really spends in
attention at each length (a fused attention kernel is not as efficient as a GEMM, and small shapes leave the
card idle): the training loop profiles one step per curriculum stage and logs the attention share of that
step (``train/attention_share``, docs/training.md).

What counts as attention: the scaled-dot-product-attention ops and everything inside them. That is
``aten::scaled_dot_product_attention`` and the backend op it dispatches to (``aten::_scaled_dot_product_flash_attention``,
``..._efficient_attention``, ``..._cudnn_attention``, ``..._flash_attention_for_cpu``, ``..._attention_math``, and the
lower ``aten::_flash_attention_*`` / ``aten::_efficient_attention_*``), their backward ops, and their autograd nodes
(``ScaledDotProductFlashAttentionBackward0``, ...), with the kernels they launch. Not counted: the Q/K/V and output
projections, RoPE, the repeat of KV heads for GQA: those are GEMMs and copies whose cost per token does not grow
with the sequence. The math fallback (no fused kernel for a shape or dtype) differentiates through generic
matmuls, so only its forward is found; the platform's causal SDPA runs a fused kernel on CPU (fp32) and on GPU.

How the time is summed without counting anything twice. The profiler's CPU events form one tree per thread (an
op contains the ops it calls; :attr:`FunctionEvent.cpu_parent`):

- attention = the inclusive time of every *outermost* attention event (no ancestor is an attention event), so
  ``aten::scaled_dot_product_attention`` is counted once with the flash op inside it; the autograd engine's wrapper
  (``autograd::engine::evaluate_function: ...``) is not an attention event, because it also adds the produced
  gradients into the next nodes' buffers.
- on a GPU the time is device time: attention = the kernels launched inside those events
  (:attr:`FunctionEvent.device_time_total`: an op's own kernels plus its children's); the step = the duration of
  every device activity (kernels, memcpy, memset), as PyTorch's own "Self CUDA time total" sums it (the GPU
  ranges of ``record_function`` annotations left out: they span kernels already counted), less communication
  kernels (NCCL: they overlap compute and wait for the other ranks).
- on CPU the time is CPU time: the step = the sum of every event's self time, PyTorch's "Self CPU time total"
  (each microsecond inside some op counted once: the time covered by the top-level ops).

Costs: the profiled step runs with the profiler's per-op bookkeeping and the events are parsed afterwards; the
loop keeps both out of tokens/s and times them as the ``profile`` phase of the run's timeline.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any

import torch

__all__ = ["AttentionShare", "attention_share", "is_attention_op", "profiled"]

_ATTENTION_NAMES = ("scaled_dot_product", "scaleddotproduct", "flash_attention", "flashattention",
                    "efficient_attention", "efficientattention", "cudnn_attention", "cudnnattention")
"""Lower-case fragments of the names of attention ops and their autograd nodes (see the module docstring)."""
_WRAPPERS = ("autograd::engine::evaluate_function",)
_COMMUNICATION = ("nccl",)


def is_attention_op(name: str) -> bool:
    """Whether a profiler event of this name is an attention op or autograd node (its wrappers are not)."""
    lower = name.lower()
    return not lower.startswith(_WRAPPERS) and any(part in lower for part in _ATTENTION_NAMES)


@dataclass(frozen=True)
class AttentionShare:
    """One profiled step: how much of its time went to the attention core."""

    attention_ms: float
    step_ms: float
    """The step's device time on a GPU (kernels, communication excluded), its CPU time in ops on CPU."""
    device: str
    """``cuda`` (device time) or ``cpu`` (CPU time)."""

    @property
    def share(self) -> float:
        return self.attention_ms / self.step_ms


def _is_cpu(event: Any) -> bool:
    return event.device_type == torch.autograd.DeviceType.CPU


def _outermost_attention(events: list[Any]) -> list[Any]:
    out = []
    for event in events:
        if not _is_cpu(event) or event.is_async or not is_attention_op(event.name):
            continue
        parent = event.cpu_parent
        while parent is not None and not is_attention_op(parent.name):
            parent = parent.cpu_parent
        if parent is None:
            out.append(event)
    return out


def attention_share(events: Iterable[Any], device_type: str) -> AttentionShare | None:
    """The attention share of a profiled step from its events (``prof.events()``: :class:`FunctionEvent` s with
    their tree built); ``device_type`` ``cuda`` measures device time, anything else CPU time. None when the
    events hold no time at all (nothing was recorded)."""
    events = list(events)
    outer = _outermost_attention(events)
    if device_type == "cuda":
        step_us = sum(e.device_time_total for e in events if not _is_cpu(e) and not e.is_async
                      and not e.is_user_annotation and not any(part in e.name.lower() for part in _COMMUNICATION))
        attention_us = sum(e.device_time_total for e in outer)
    else:
        step_us = sum(e.self_cpu_time_total for e in events if _is_cpu(e) and not e.is_async)
        attention_us = sum(e.cpu_time_total for e in outer)
    if step_us <= 0:
        return None
    return AttentionShare(attention_us / 1000, step_us / 1000, "cuda" if device_type == "cuda" else "cpu")


@contextlib.contextmanager
def profiled(device: torch.device) -> Iterator[Any]:
    """``torch.profiler.profile`` of what runs inside, with CPU activity and, on a CUDA device, CUDA activity;
    nothing else recorded (no shapes, stacks or memory: the cheapest profile that has the times). On exit the
    device is synchronised first, so every kernel of the step is in the profile."""
    from torch.profiler import ProfilerActivity, profile

    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    with profile(activities=activities, record_shapes=False, profile_memory=False, with_stack=False) as prof:
        yield prof
        if device.type == "cuda":
            torch.cuda.synchronize(device)  # deliberate sync: the profiled step's kernels must have run
