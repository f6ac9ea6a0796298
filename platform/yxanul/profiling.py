"""The attention core's share of a training step, measured: one step under PyTorch's (Kineto) profiler.

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

How the time is summed without counting anything twice. The profiler records CPU events (ops, and on a GPU the
runtime calls that launch kernels) with their thread and time span, and device events (kernels, copies) each linked
to the op that launched it (its correlation id). On one thread the CPU events nest by time (an op contains the ops
it calls), which is the tree PyTorch's ``prof.function_events`` builds from the same records:

- attention = the time of every *outermost* attention event (not inside another attention event of its thread), so
  ``aten::scaled_dot_product_attention`` is counted once with the flash op inside it; the autograd engine's wrapper
  (``autograd::engine::evaluate_function: ...``) is not an attention event, because it also adds the produced
  gradients into the next nodes' buffers.
- on a GPU the time is device time: attention = the kernels launched by those events or by ops inside them (what
  PyTorch's :attr:`FunctionEvent.device_time_total` of the outermost events adds up); the step = the duration of
  every device activity (kernels, memcpy, memset), as PyTorch's own "Self CUDA time total" sums it, less the GPU
  ranges of ``record_function`` annotations (they span kernels already counted) and communication kernels (NCCL:
  they overlap compute and wait for the other ranks).
- on CPU the time is CPU time: attention = the outermost attention events' spans; the step = the spans of the
  events no other event of their thread contains, which is PyTorch's "Self CPU time total" (each microsecond inside
  some op counted once).

On a GPU the same pass splits the step's device time by kind (:data:`DEVICE_KINDS`): a kernel launched inside an
attention op, inside the cross-entropy region (:data:`LOSS_REGION`, the loss's chunk kernels) or inside the
optimizer region (:data:`OPTIMIZER_REGION`, gradient clipping and the optimizer's step) is of that kind; any other
is a GEMM by its name (:func:`is_gemm_kernel`) or "other". The kinds add up to the step: the run logs them as
``train/device_ms/<kind>``, the first place to look when a step is slower than its arithmetic says.

The events are read as the profiler recorded them (``prof.kineto_results``, :func:`recorded_events`), not
through PyTorch's ``prof.function_events``: for a 19k-event CPU step on the 2-core development VM (2026-12-07, 6 profiles, one-off
timing) building PyTorch's :class:`FunctionEvent` tree took 0.8-1.8 s (43-95 us an event), the spans here 0.07-0.12 s.
The tests check both give the same sums (on a GPU too: ``tests/gpu/test_profiling_gpu.py`` prints both times).
Events PyTorch's own tables leave out (its ``_filter_name`` list: memory records, the ``record_function``
enter/exit ops, ``aten::is_leaf`` and such) are left out here too.

Costs: the profiled step runs with the profiler's per-op bookkeeping and the events are read afterwards; the loop
keeps both out of tokens/s and times them as the ``profile`` phase of the run's timeline.

The profiler object is ``torch.autograd.profiler.profile``, which ``torch.profiler.profile`` wraps: the wrapper
refers to itself (its action table holds its own bound methods), so it and the recorded results it owns outlive the
step as garbage in a reference cycle, freed by whichever later allocation in the process runs the collector (another
thread, another trial of a sweep). The inner object has no cycle: its results go when the caller drops it.
"""

from __future__ import annotations

import bisect
import contextlib
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any

import torch

__all__ = ["DEVICE_KINDS", "LOSS_REGION", "OPTIMIZER_REGION", "AttentionShare", "attention_share", "is_attention_op",
           "is_gemm_kernel", "profiled", "recorded_events"]

_ATTENTION_NAMES = ("scaled_dot_product", "scaleddotproduct", "flash_attention", "flashattention",
                    "efficient_attention", "efficientattention", "cudnn_attention", "cudnnattention")
"""Lower-case fragments of the names of attention ops and their autograd nodes (see the module docstring)."""
_WRAPPERS = ("autograd::engine::evaluate_function",)
_COMMUNICATION = ("nccl",)

LOSS_REGION = "yxanul::cross_entropy"
"""``record_function`` name around the cross-entropy chunk kernels (``yxanul.model``): their kernels are the
``cross_entropy`` kind of a step's device time."""
OPTIMIZER_REGION = "yxanul::optimizer"
"""``record_function`` name around gradient clipping and the optimizer's step (``yxanul.train.step.train_step``)."""
DEVICE_KINDS = ("gemm", "attention", "cross_entropy", "optimizer", "other")
"""What a GPU step's device time is split into (:attr:`AttentionShare.device_ms`): kernels launched inside the
attention ops, inside :data:`LOSS_REGION`, inside :data:`OPTIMIZER_REGION`, else matrix multiplies by kernel name
(:func:`is_gemm_kernel`: the linear layers, the head), else the rest (norms, RoPE, activations, residual adds,
the embedding, copies and fills)."""
_GEMM_NAMES = ("gemm", "gemv", "nvjet", "xmma", "cutlass", "splitkreduce", "triton_tem_")
"""Lower-case fragments of matrix-multiply kernel names: cuBLAS / cuBLASLt (``nvjet_tst_*``, ``sm90_xmma_gemm_*``,
``*s16816gemm*``, ``gemv2T_kernel``, ``splitKreduce_kernel``), CUTLASS (``cutlass3x_sm90_*gemm*``, Transformer
Engine's), Inductor's Triton matmul templates (``triton_tem_fused_mm*``)."""


_CUDA_API = re.compile(r"cu(da)?[A-Z]")
"""Names of CUDA runtime and driver calls as the profiler records them (``cudaLaunchKernel``, ``cuLaunchKernelEx``)."""


def is_attention_op(name: str) -> bool:
    """Whether a profiler event of this name is an attention op or autograd node (its wrappers are not)."""
    lower = name.lower()
    return not lower.startswith(_WRAPPERS) and any(part in lower for part in _ATTENTION_NAMES)


def is_gemm_kernel(name: str) -> bool:
    """Whether a GPU kernel of this name is a matrix multiply (``_GEMM_NAMES``)."""
    lower = name.lower()
    return any(part in lower for part in _GEMM_NAMES)


def _region(name: str) -> str | None:
    """The kind of device time a CPU event of this name claims for the kernels launched inside it, if any."""
    if is_attention_op(name):
        return "attention"
    if name == OPTIMIZER_REGION or name.startswith("Optimizer.step#"):  # torch's own annotation of any step()
        return "optimizer"
    return "cross_entropy" if name == LOSS_REGION else None


@dataclass(frozen=True)
class AttentionShare:
    """One profiled step: how much of its time went to the attention core."""

    attention_ms: float
    step_ms: float
    """The step's device time on a GPU (kernels, communication excluded), its CPU time in ops on CPU."""
    device: str
    """``cuda`` (device time) or ``cpu`` (CPU time)."""
    kernels: tuple[str, ...] = ()
    """What computed the attention, sorted: on a GPU the kernels counted as attention, on CPU the innermost
    attention ops (:func:`short_name`). It says which backend PyTorch's attention picked (FlashAttention's
    ``pytorch_flash::flash_fwd_kernel``, cuDNN's ``*sdpa*``, the memory-efficient ``fmha_cutlass*``), which can
    differ between two runs of one config (on an H100 it moved attention's time by ~30%, 2026-12-07)."""

    device_ms: tuple[tuple[str, float], ...] = ()
    """On a GPU, the step's device time by kind, in :data:`DEVICE_KINDS` order, summing to ``step_ms``: where a step
    goes (issue 22: what stands between the job and a speed target). Empty on CPU."""

    @property
    def share(self) -> float:
        return self.attention_ms / self.step_ms


_LEFT_OUT = frozenset(("[memory]", "[OutOfMemory]", "profiler::_record_function_enter",
                       "profiler::_record_function_enter_new", "profiler::_record_function_exit", "aten::is_leaf",
                       "aten::output_nr", "aten::_version"))
"""Events PyTorch's own tables leave out (``torch.autograd.profiler_util._filter_name``)."""


def recorded_events(prof: Any) -> Iterable[Any]:
    """The events a finished :func:`profiled` recorded, unparsed (``_KinetoEvent`` s), for :func:`attention_share`."""
    return prof.kineto_results.events()


def short_name(name: str) -> str:
    """A kernel's or op's name without its return type, template and argument lists:
    ``void pytorch_flash::flash_fwd_kernel<Flash_fwd_kernel_traits<...>>(Flash_fwd_params)`` ->
    ``pytorch_flash::flash_fwd_kernel``; ``(anonymous namespace)::`` is dropped, its parentheses are no argument
    list."""
    name = name.strip().replace("(anonymous namespace)::", "")
    if name.startswith("void "):
        name = name[5:]
    cut = min((i for i in (name.find("<"), name.find("(")) if i > 0), default=len(name))
    return name[:cut].strip()


def _outermost(spans: list[tuple[int, int, str]]) -> list[tuple[int, int, str]]:
    """The (start, end, name) spans of one thread that no other span of the list contains, in start order."""
    out: list[tuple[int, int, str]] = []
    for span in sorted(spans, key=lambda span: (span[0], -span[1])):
        if not out or span[0] >= out[-1][1]:
            out.append(span)
    return out


def _inside(spans: list[tuple[int, int, str]], starts: list[int], at: int) -> bool:
    """Whether ``at`` falls in one of the disjoint, start-ordered ``spans`` (``starts``: their starts)."""
    i = bisect.bisect_right(starts, at) - 1
    return i >= 0 and at < spans[i][1]


def attention_share(events: Iterable[Any], device_type: str) -> AttentionShare | None:
    """The attention share of a profiled step from the events the profiler recorded (:func:`recorded_events`);
    ``device_type`` ``cuda`` measures device time (and splits it by kind: :attr:`AttentionShare.device_ms`),
    anything else CPU time. None when the events hold no time at all (nothing was recorded)."""
    cuda = device_type == "cuda"
    spans: dict[int, list[tuple[int, int, str]]] = {}  # CPU: thread -> every event's (start, end, name): the step
    regions: dict[str, dict[int, list[tuple[int, int, str]]]] = {}  # kind -> thread -> its events' (start, end, name)
    ops: dict[int, tuple[int, int]] = {}  # GPU: correlation id -> (thread, start) of the op that launched kernels
    launches: dict[int, tuple[int, int]] = {}  # GPU: CUPTI correlation id -> (thread, start) of a CUDA API call
    kernels: list[tuple[int, int, int, str]] = []  # GPU: (launching op's id, own CUPTI id, ns, name) of each activity
    for event in events:
        name = event.name()
        if name in _LEFT_OUT or getattr(event, "is_hidden_event", lambda: False)():
            continue
        thread = event.start_thread_id()
        if event.is_async() or thread != event.end_thread_id():
            continue
        start, end = event.start_ns(), event.end_ns()
        if event.device_type() == torch.autograd.DeviceType.CPU:
            kind = _region(name)
            if kind is not None:
                regions.setdefault(kind, {}).setdefault(thread, []).append((start, end, name))
            if not cuda:
                spans.setdefault(thread, []).append((start, end, name))
            elif _CUDA_API.match(name):  # a runtime or driver call: the kernel it launched has its correlation id
                launches[event.correlation_id()] = (thread, start)
            elif event.linked_correlation_id() == 0 and event.correlation_id():  # an op or a region
                ops[event.correlation_id()] = (thread, start)
        elif cuda and not event.is_user_annotation() and not any(part in name.lower() for part in _COMMUNICATION):
            kernels.append((event.linked_correlation_id(), event.correlation_id(), end - start, name))
    attention = regions.get("attention", {})
    outer = {kind: {thread: _outermost(found) for thread, found in by_thread.items()}
             for kind, by_thread in regions.items()}
    device_ms: tuple[tuple[str, float], ...] = ()
    if cuda:
        starts = {kind: {thread: [span[0] for span in found] for thread, found in by_thread.items()}
                  for kind, by_thread in outer.items()}
        by_kind = dict.fromkeys(DEVICE_KINDS, 0)
        ran = set()
        for launched_by, correlation, ns, name in kernels:
            # A kernel launched outside any op (a Triton kernel launched from Python, as yxanul.loss_kernel's) links
            # to no op: where its launch call was made says which region it belongs to.
            op = ops.get(launched_by) or launches.get(correlation)  # (no op is registered under id 0)
            kind = next((k for k in ("attention", "cross_entropy", "optimizer") if op is not None
                         and op[0] in outer.get(k, {}) and _inside(outer[k][op[0]], starts[k][op[0]], op[1])), None)
            if kind is None:
                kind = "gemm" if is_gemm_kernel(name) else "other"
            elif kind == "attention":
                ran.add(short_name(name))
            by_kind[kind] += ns
        step_ns, attention_ns = sum(by_kind.values()), by_kind["attention"]
        device_ms = tuple((kind, ns / 1e6) for kind, ns in by_kind.items())
    else:
        step_ns = sum(end - start for found in spans.values() for start, end, _ in _outermost(found))
        attention_ns = sum(end - start for found in outer.get("attention", {}).values() for start, end, _ in found)
        ran = {short_name(name) for found in attention.values() for name in _innermost(found)}
    if step_ns <= 0:
        return None
    return AttentionShare(attention_ns / 1e6, step_ns / 1e6, "cuda" if cuda else "cpu", tuple(sorted(ran)), device_ms)


def _innermost(spans: list[tuple[int, int, str]]) -> list[str]:
    """The names of the (start, end, name) spans of one thread that contain no other span of the list."""
    ordered = sorted(spans, key=lambda span: (span[0], -span[1]))
    return [name for i, (start, end, name) in enumerate(ordered)
            if not (i + 1 < len(ordered) and ordered[i + 1][0] < end)]


@contextlib.contextmanager
def profiled(device: torch.device) -> Iterator[Any]:
    """``torch.autograd.profiler.profile`` (Kineto) of what runs inside, with CPU activity and, on a CUDA device,
    CUDA activity; nothing else recorded (no shapes, stacks or memory: the cheapest profile that has the times). On
    exit the device is synchronised first, so every kernel of the step is in the profile. Its results are freed when
    the caller drops the object it yields (no reference cycle: the module's docstring says why that matters)."""
    from torch.autograd.profiler import profile

    with profile(use_kineto=True, use_device="cuda" if device.type == "cuda" else None, record_shapes=False,
                 profile_memory=False, with_stack=False) as prof:
        yield prof
        if device.type == "cuda":
            torch.cuda.synchronize(device)  # deliberate sync: the profiled step's kernels must have run
