"""The one build path: model, precision, compilation and optimizer, for training and benchmarks alike.

The training loop (every Ray Train worker), ``jobs.bench`` and therefore every sweep trial call
:func:`build_training`, so the tokens/s the benchmark prints is the tokens/s a training job gets:

    built = build_training(cfg.model, cfg.precision, cfg.optim, device, vocab_size=vocab,
                           max_tokens_per_microbatch="auto", seq_len=2048, max_sequences=64)
    built.step_model, built.optimizer, built.precision   # what train_step takes
    built.tokens_per_microbatch                           # the measured budget when "auto"
    built.fp8_plan                                        # the measured FP8 plan when fp8_layers=auto

Order, and why:
1. the model is built on the caller's seeded RNG (the FP8 and BF16 arms of a comparison get the same
   initial weights: nothing below consumes the run's random state);
2. ``fp8_layers: auto`` measures each layer group in BF16 and FP8 at the run's micro-batch
   (:mod:`yxanul.precision.fp8_plan`, shapes read from this model, the head as it runs); with
   ``max_tokens_per_microbatch: auto`` that micro-batch is first estimated on the model before the swap;
3. :meth:`Precision.apply` swaps the groups that pay (or the forced ones);
4. ``max_tokens_per_microbatch: auto`` measures memory on the model as it will train: after the swap, with its
   precision and its head path (``model.head_chunk_tokens``). FP8 is not assumed to save memory: with the whole
   logits, a TE head's FP8 gradient copies cost more than BF16 (+25% measured at yxanul-270m, issue 22);
5. regional ``torch.compile`` (``precision.compile``), then data parallelism (DDP/FSDP2), then AdamW.

With several workers, rank 0 measures and broadcasts, so every rank builds the same model.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch
from torch import nn

from yxanul.config import ModelConfig, OptimConfig, PrecisionConfig
from yxanul.precision import Fp8Plan, Precision, compile_model, measure_fp8_plan, reset_te_state, use_compile_cache

__all__ = ["AUTO_HEADROOM", "Built", "build_training", "choose_sequences", "fit_microbatch", "measured_sizes",
           "release_built"]

AUTO_HEADROOM = 0.85
"""``max_tokens_per_microbatch: auto`` keeps the measured peak (plus the optimizer state) under this
fraction of the card's memory: the rest is for the allocator's fragmentation, compiled kernels'
workspaces and validation batches."""


@dataclass
class Built:
    """What :func:`build_training` returns."""

    model: nn.Module
    """The model itself (compiled regions in place; DDP's inner module; under FSDP the sharded model)."""
    step_model: nn.Module
    """What the train step runs: the DDP wrapper, the FSDP-sharded model, or the model."""
    optimizer: torch.optim.Optimizer
    precision: Precision
    compiled: bool
    tokens_per_microbatch: int | None
    """The per-worker micro-batch budget in tokens: measured when the config said auto, else the config's."""
    microbatch_fit: dict[str, Any] | None = None
    """The memory measurement behind an auto budget (bytes per sequence, fixed bytes, card memory)."""
    fp8_plan: Fp8Plan | None = None
    seconds: dict[str, float] = field(default_factory=dict)
    """Wall seconds of each build step that ran, in order: ``init`` (the model on the host), ``to_device``,
    ``fp8_plan`` (with the micro-batch estimated for it), ``precision`` (the swap), ``microbatch`` (the auto
    measurement), ``compile`` (wrapping the regions; compilation itself happens at the first step), ``parallel``
    (DDP/FSDP), ``optimizer``."""

    def describe(self) -> str:
        parts = [self.precision.describe(), "compiled" if self.compiled else "eager"]
        if self.tokens_per_microbatch is not None:
            how = " (auto)" if self.microbatch_fit else ""
            parts.append(f"micro-batch budget {self.tokens_per_microbatch:,} tokens{how}")
        if self.seconds:
            steps = ", ".join(f"{name.replace('_', ' ')} {value:.1f}" for name, value in self.seconds.items())
            parts.append(f"built in {sum(self.seconds.values()):.1f} s ({steps})")
        return ", ".join(parts)


class _Stopwatch:
    """Seconds per named step, the device synchronized at each boundary so that a step's queued GPU work is its
    own."""

    def __init__(self, device: torch.device) -> None:
        self.device, self.seconds = device, {}
        self._last = self._now()

    def _now(self) -> float:
        if self.device.type == "cuda" and torch.cuda.is_initialized():
            torch.cuda.synchronize(self.device)
        return time.perf_counter()

    def lap(self, name: str) -> None:
        now = self._now()
        self.seconds[name] = now - self._last
        self._last = now


def _rank() -> int:
    import torch.distributed as dist

    return dist.get_rank() if dist.is_available() and dist.is_initialized() else 0


def _from_rank0(value: Any) -> Any:
    """Rank 0's ``value`` on every rank (a no-op in a single process)."""
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return value
    box = [value]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def measured_sizes(seq_len: int, head_chunk_tokens: int, max_sequences: int) -> tuple[int, int]:
    """(lo, hi): how many sequences :func:`fit_microbatch` measures. The difference of their peaks must be memory
    that grows with the micro-batch only, so both hold at least one whole chunk of a chunked head (whose
    transient memory is the same for every micro-batch of a chunk or more); hi = 2 lo, lo at most half of
    ``max_sequences`` (nothing larger than 2 x max_sequences is ever run)."""
    lo = max(1, -(-head_chunk_tokens // seq_len)) if head_chunk_tokens else 1
    lo = max(1, min(lo, max_sequences // 2))
    return lo, 2 * lo


def choose_sequences(peaks: tuple[int, int], sizes: tuple[int, int], optimizer_bytes: int, card_bytes: int,
                     max_sequences: int, headroom: float = AUTO_HEADROOM) -> tuple[int, dict[str, Any]]:
    """The largest power of two ``n <= max_sequences`` whose predicted peak fits ``headroom`` x the card, from
    the measured peaks of ``sizes`` sequences: their difference is the memory per sequence, the rest is fixed
    (weights, gradients, the head's per-chunk memory), plus the optimizer state (allocated at the first step).
    A micro-batch smaller than ``sizes[0]`` is predicted high (its head chunk is smaller): conservative."""
    (lo, hi), (peak_lo, peak_hi) = sizes, peaks
    per_sequence = max((peak_hi - peak_lo) // (hi - lo), 1)
    fixed = peak_lo - lo * per_sequence + optimizer_bytes
    n = 1
    while n * 2 <= max_sequences and fixed + 2 * n * per_sequence <= headroom * card_bytes:
        n *= 2
    return n, {"sequences": n, "bytes_per_sequence": per_sequence, "fixed_bytes": fixed, "card_bytes": card_bytes,
               "headroom": headroom, "max_sequences": max_sequences, "measured_sequences": [lo, hi],
               "measured_peak_bytes": [peak_lo, peak_hi], "predicted_peak_gib": (fixed + n * per_sequence) / 2**30,
               "fits": fixed + n * per_sequence <= headroom * card_bytes}


def fit_microbatch(model: nn.Module, precision: Precision, seq_len: int, max_sequences: int,
                   device: torch.device, headroom: float = AUTO_HEADROOM) -> tuple[int, dict[str, Any]]:
    """The largest power of two ``n <= max_sequences`` whose micro-batch of ``n x seq_len`` tokens fits.

    Peak memory is measured for forward + backward of :func:`measured_sizes` sequences (eager, the run's autocast
    and precision plan, the model's own loss path: ``model(tokens, targets=...)``, so a chunked head is measured
    as it runs); :func:`choose_sequences` turns the two peaks into the choice. AdamW's two fp32 moments (8 bytes
    per parameter) are added; the sum must stay under ``headroom`` x the card's memory.
    """
    from yxanul.model import next_token_targets

    sizes = measured_sizes(seq_len, int(getattr(model, "head_chunk_tokens", 0) or 0), max_sequences)
    peaks = []
    for n in sizes:
        model.zero_grad(set_to_none=True)
        torch.cuda.synchronize(device)
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
        tokens = torch.zeros((n, seq_len), dtype=torch.long, device=device)  # ids do not change the memory
        with precision.autocast():
            loss = model(tokens, targets=next_token_targets(tokens))
        loss.backward()
        del loss
        torch.cuda.synchronize(device)
        peaks.append(torch.cuda.max_memory_allocated(device))
    model.zero_grad(set_to_none=True)
    torch.cuda.empty_cache()
    n, info = choose_sequences((peaks[0], peaks[1]), sizes, 8 * sum(p.numel() for p in model.parameters()),
                               torch.cuda.get_device_properties(device).total_memory, max_sequences, headroom)
    return n * seq_len, {"seq_len": seq_len, "tokens": n * seq_len, **info}


def _fit_on_rank0(model: nn.Module, precision: Precision, seq_len: int, max_sequences: int,
                  device: torch.device) -> tuple[int, dict[str, Any]]:
    measured = fit_microbatch(model, precision, seq_len, max(1, max_sequences), device) if _rank() == 0 else None
    return _from_rank0(measured)


def build_training(model_cfg: ModelConfig, precision_cfg: PrecisionConfig, optim_cfg: OptimConfig,
                   device: torch.device, *, vocab_size: int | None = None,
                   max_tokens_per_microbatch: int | Literal["auto"] | None = None, seq_len: int | None = None,
                   max_sequences: int | None = None, strategy: str = "ddp", plan_cache_dir: Path | None = None,
                   compile_cache_dir: Path | None = None, log: Callable[[str], None] | None = None) -> Built:
    """Build everything a train step needs, the same way for the loop and the benchmark (module docstring).

    ``max_tokens_per_microbatch``: the budget, or "auto" (with ``seq_len``, the longest sequence, and
    ``max_sequences``, the most sequences a micro-batch can usefully hold): measured on a GPU, the unmeasured
    rule (:func:`yxanul.curriculum.unmeasured_budget`) elsewhere. The FP8 plan is measured at this budget (or
    at ``seq_len`` x ``max_sequences`` when no budget is given). ``compile_cache_dir``: Inductor's
    persistent caches there (:func:`use_compile_cache`), when the model is compiled. Seed the RNG before calling.
    """
    from yxanul.model import Yxanul
    from yxanul.train.parallel import wrap_model
    from yxanul.train.step import build_optimizer

    say = log or (lambda _msg: None)
    precision = Precision(precision_cfg, device)  # checks support first: fails before any work
    clock = _Stopwatch(device)
    model = Yxanul(model_cfg, vocab_size)
    clock.lap("init")
    model = model.to(device)
    clock.lap("to_device")

    auto = max_tokens_per_microbatch == "auto"
    if auto and (seq_len is None or max_sequences is None):
        raise ValueError("max_tokens_per_microbatch='auto' needs seq_len and max_sequences")
    measure_memory = auto and device.type == "cuda"
    budget: int | None = None if auto else max_tokens_per_microbatch  # type: ignore[assignment]

    plan = None
    if precision.mode == "fp8" and precision.fp8_layers is None:  # fp8_layers: auto
        tokens = budget
        if tokens is None and measure_memory:  # the plan needs the micro-batch: estimated before the swap
            tokens, _ = _fit_on_rank0(model, precision, seq_len, max_sequences, device)  # type: ignore[arg-type]
            say(f"micro-batch auto, before the FP8 swap (for the FP8 plan): {tokens:,} tokens")
        if tokens is None:
            tokens = (seq_len or 2048) * (max_sequences or 1)
        measured_plan = measure_fp8_plan(model, tokens_per_microbatch=tokens, recipe=precision_cfg.recipe,
                                         device=device, cache_dir=plan_cache_dir, log=say) if _rank() == 0 else None
        plan = _from_rank0(measured_plan)
        precision.use_plan(plan)
        clock.lap("fp8_plan")
    precision.apply(model)
    clock.lap("precision")

    fit = None
    if measure_memory:  # on the model as it will train: its precision plan and its head path
        budget, fit = _fit_on_rank0(model, precision, seq_len, max_sequences, device)  # type: ignore[arg-type]
        head = f"head in chunks of {model.head_chunk_tokens:,} tokens" if model.head_chunk_tokens else "whole logits"
        say(f"micro-batch auto: {fit['sequences']} x {seq_len} = {budget:,} tokens per micro-batch "
            f"({precision.describe()}, {head}; {fit['bytes_per_sequence'] / 2**30:.2f} GiB per sequence, "
            f"{fit['fixed_bytes'] / 2**30:.1f} GiB fixed incl. optimizer state, predicted peak "
            f"{fit['predicted_peak_gib']:.1f} of {fit['card_bytes'] / 2**30:.0f} GiB)")
        if plan is not None and plan.key["tokens_per_microbatch"] != budget:
            say(f"note: the FP8 plan was measured at {plan.key['tokens_per_microbatch']:,} tokens per micro-batch")
        clock.lap("microbatch")
    elif auto:
        from yxanul.curriculum import unmeasured_budget

        budget = unmeasured_budget(seq_len)  # type: ignore[arg-type]
    compiled = precision_cfg.compiles(device.type)
    if compiled:
        if compile_cache_dir is not None:
            use_compile_cache(compile_cache_dir)
        compile_model(model)
        clock.lap("compile")
    step_model = wrap_model(model, strategy, device)  # type: ignore[arg-type]
    clock.lap("parallel")
    optimizer = build_optimizer(model, optim_cfg)  # after FSDP sharding: the shards
    clock.lap("optimizer")
    return Built(model=model, step_model=step_model, optimizer=optimizer, precision=precision, compiled=compiled,
                 tokens_per_microbatch=budget, microbatch_fit=fit, fp8_plan=plan, seconds=clock.seconds)


def release_built() -> None:
    """Free what the models built so far in this process left behind, before another is built in it (the
    benchmark's matrix; a sweep's in-process trials): Transformer Engine's process-global FP8 state
    (:func:`yxanul.precision.reset_te_state`), Dynamo's state, whose recompile limit counts across models, so that
    later models' graphs are not refused (Inductor's on-disk caches keep their recompiles warm), unreferenced
    tensors and the CUDA allocator's cache. Drop the references to the last model first.

    The collector runs after Dynamo's reset: the reset turns the compiled graphs (Inductor's ``CompiledFxGraph`` s
    with their kernels, AOT Autograd's metadata) into garbage in reference cycles, which would otherwise be freed by
    whichever allocation of the next trial ran the collector, in another thread and among that trial's compiled
    code: two reused GPU trial processes died of a segmentation fault in the collector at the next trial's start
    (2026-12-07; docs/sweeps.md, "A trial whose process dies")."""
    import gc
    import sys

    reset_te_state()
    if "torch._dynamo" in sys.modules:  # a process that never compiled does not pay for importing Dynamo
        torch._dynamo.reset()
    gc.collect()
    if torch.cuda.is_initialized():
        torch.cuda.empty_cache()
