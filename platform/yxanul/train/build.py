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
2. ``max_tokens_per_microbatch: auto`` measures memory on that model, before any layer is swapped
   (BF16 activations; TE's FP8 layers save less, so the estimate is conservative for FP8);
3. ``fp8_layers: auto`` measures each layer group in BF16 and FP8 at that micro-batch
   (:mod:`yxanul.fp8_plan`), then :meth:`Precision.apply` swaps only the groups that pay;
4. regional ``torch.compile`` (``precision.compile``), then data parallelism (DDP/FSDP2), then AdamW.

With several workers, rank 0 measures and broadcasts, so every rank builds the same model.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch
from torch import nn

from yxanul.config import ModelConfig, OptimConfig, PrecisionConfig
from yxanul.fp8_plan import Fp8Plan, measure_fp8_plan
from yxanul.precision import Precision, compile_model

__all__ = ["AUTO_HEADROOM", "Built", "build_training", "fit_microbatch", "use_compile_cache"]

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
    extra: dict[str, Any] = field(default_factory=dict)

    def describe(self) -> str:
        parts = [self.precision.describe(), "compiled" if self.compiled else "eager"]
        if self.tokens_per_microbatch is not None:
            how = " (auto)" if self.microbatch_fit else ""
            parts.append(f"micro-batch budget {self.tokens_per_microbatch:,} tokens{how}")
        return ", ".join(parts)


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


def fit_microbatch(model: nn.Module, precision: Precision, seq_len: int, max_sequences: int,
                   device: torch.device, headroom: float = AUTO_HEADROOM) -> tuple[int, dict[str, Any]]:
    """The largest power of two ``n <= max_sequences`` whose micro-batch of ``n x seq_len`` tokens fits.

    Peak memory is measured for forward + backward of 1 and 2 sequences (eager, the run's autocast); the
    difference is the memory per sequence, the rest is fixed (weights, gradients). AdamW's two fp32 moments
    (8 bytes per parameter) are added, and the sum must stay under ``headroom`` x the card's memory.
    """
    from yxanul.model import cross_entropy, next_token_targets

    total = torch.cuda.get_device_properties(device).total_memory
    adam = 8 * sum(p.numel() for p in model.parameters())
    peaks = []
    for n in (1, 2):
        model.zero_grad(set_to_none=True)
        torch.cuda.synchronize(device)
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
        tokens = torch.zeros((n, seq_len), dtype=torch.long, device=device)  # ids do not change the memory
        with precision.autocast():
            logits = model(tokens, mask_padding=False)
            loss = cross_entropy(logits, next_token_targets(tokens), model.vocab_size)  # type: ignore[arg-type]
        loss.backward()
        del logits, loss
        torch.cuda.synchronize(device)
        peaks.append(torch.cuda.max_memory_allocated(device))
    model.zero_grad(set_to_none=True)
    torch.cuda.empty_cache()
    per_sequence = max(peaks[1] - peaks[0], 1)
    fixed = peaks[0] - per_sequence + adam
    n = 1
    while n * 2 <= max_sequences and fixed + 2 * n * per_sequence <= headroom * total:
        n *= 2
    info = {"seq_len": seq_len, "sequences": n, "tokens": n * seq_len, "bytes_per_sequence": per_sequence,
            "fixed_bytes": fixed, "card_bytes": total, "headroom": headroom, "max_sequences": max_sequences,
            "predicted_peak_gib": (fixed + n * per_sequence) / 2**30,
            "fits": fixed + n * per_sequence <= headroom * total}
    return n * seq_len, info


COMPILE_CACHE_ENV = {
    "TORCHINDUCTOR_FX_GRAPH_CACHE": "1",  # Inductor's compiled graphs, keyed by graph, inputs and versions
    "TORCHINDUCTOR_AUTOGRAD_CACHE": "1",  # AOT autograd's joint forward/backward graphs (needs the FX cache)
}
"""Forced on for a shared compile cache: both are on by default in torch 2.13, but a user's or an image's
environment may have turned them off, and a cache that is silently off measures nothing."""


def use_compile_cache(folder: Path) -> dict[str, str]:
    """Point Inductor's persistent caches at ``folder`` for this process and the compile workers it starts
    (they read the environment): ``TORCHINDUCTOR_CACHE_DIR`` (FX-graph and AOT-autograd caches) and
    ``TRITON_CACHE_DIR`` (``<folder>/triton``, Triton's compiled kernels), and force both caches on. Call before
    the first compilation; returns what was set.

    Why: by default Inductor caches under ``/tmp/torchinductor_<user>``, per machine and lost with it; a sweep's
    trials, a resumed run and a later sweep on the same storage share this folder instead (on a cluster, with a
    shared storage, across nodes too). Every entry is keyed by what it was compiled from (graph, shapes, torch
    and Triton versions, the card), so a stale entry is never used."""
    import os

    folder.mkdir(parents=True, exist_ok=True)
    env = {"TORCHINDUCTOR_CACHE_DIR": str(folder), "TRITON_CACHE_DIR": str(folder / "triton"), **COMPILE_CACHE_ENV}
    os.environ.update(env)
    # The config flags read the environment when torch._inductor.config is first imported, which may have
    # happened already in this process (Ray Train imports torch early): set them too.
    import torch._functorch.config as functorch_config
    import torch._inductor.config as inductor_config

    inductor_config.fx_graph_cache = True
    functorch_config.enable_autograd_cache = True
    return env


def build_training(model_cfg: ModelConfig, precision_cfg: PrecisionConfig, optim_cfg: OptimConfig,
                   device: torch.device, *, vocab_size: int | None = None,
                   max_tokens_per_microbatch: int | Literal["auto"] | None = None, seq_len: int | None = None,
                   max_sequences: int | None = None, strategy: str = "ddp", plan_cache_dir: Path | None = None,
                   compile_cache_dir: Path | None = None, log: Callable[[str], None] | None = None) -> Built:
    """Build everything a train step needs, the same way for the loop and the benchmark (module docstring).

    ``max_tokens_per_microbatch``: the budget, or "auto" (with ``seq_len``, the longest sequence, and
    ``max_sequences``, the most sequences a micro-batch can usefully hold). The FP8 plan is measured at
    this budget (or at ``seq_len`` x ``max_sequences`` when no budget is given). ``compile_cache_dir``: Inductor's
    persistent caches there (:func:`use_compile_cache`), when the model is compiled. Seed the RNG before calling.
    """
    from yxanul.model import Yxanul
    from yxanul.train.parallel import wrap_model
    from yxanul.train.step import build_optimizer

    say = log or (lambda _msg: None)
    precision = Precision(precision_cfg, device)  # checks support first: fails before any work
    model = Yxanul(model_cfg, vocab_size).to(device)

    budget: int | None = None if max_tokens_per_microbatch == "auto" else max_tokens_per_microbatch
    fit = None
    if max_tokens_per_microbatch == "auto":
        if seq_len is None or max_sequences is None:
            raise ValueError("max_tokens_per_microbatch='auto' needs seq_len and max_sequences")
        if device.type == "cuda":
            measured = fit_microbatch(model, precision, seq_len, max(1, max_sequences), device) if _rank() == 0 else None
            budget, fit = _from_rank0(measured)
            say(f"micro-batch auto: {fit['sequences']} x {seq_len} = {budget:,} tokens per micro-batch "
                f"({fit['bytes_per_sequence'] / 2**30:.2f} GiB per sequence, {fit['fixed_bytes'] / 2**30:.1f} GiB "
                f"fixed incl. optimizer state, predicted peak {fit['predicted_peak_gib']:.1f} of "
                f"{fit['card_bytes'] / 2**30:.0f} GiB)")
        else:
            from yxanul.curriculum import AUTO_MICROBATCH_CPU

            budget = max(AUTO_MICROBATCH_CPU, seq_len)

    plan = None
    if precision.mode == "fp8" and precision.fp8_layers is None:  # fp8_layers: auto
        tokens = budget if budget is not None else (seq_len or 2048) * (max_sequences or 1)
        measured_plan = measure_fp8_plan(model_cfg, vocab_size, tokens_per_microbatch=tokens,
                                         recipe=precision_cfg.recipe, device=device, cache_dir=plan_cache_dir,
                                         log=say) if _rank() == 0 else None
        plan = _from_rank0(measured_plan)
        precision.use_plan(plan)
    precision.apply(model)
    compiled = precision_cfg.compiles(device.type)
    if compiled:
        if compile_cache_dir is not None:
            use_compile_cache(compile_cache_dir)
        compile_model(model)
    step_model = wrap_model(model, strategy, device)  # type: ignore[arg-type]
    optimizer = build_optimizer(model, optim_cfg)  # after FSDP sharding: the shards
    return Built(model=model, step_model=step_model, optimizer=optimizer, precision=precision, compiled=compiled,
                 tokens_per_microbatch=budget, microbatch_fit=fit, fp8_plan=plan)
