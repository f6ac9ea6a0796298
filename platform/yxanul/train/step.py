"""The pure train step: forward, loss, backward over micro-batches, clip, optimizer step.

No Ray, no I/O, no host syncs (unless ``skip_nonfinite``): callable from a unit test, from the
training loop and from the benchmark alike.

    optimizer = build_optimizer(model, cfg.optim)
    result = train_step(model, optimizer, micro_batches, lr=lr, precision=precision, grad_clip=1.0)
    result.loss, result.grad_norm  # device tensors; read them (a sync) only at the logging interval
"""

from __future__ import annotations

import contextlib
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from yxanul.config import OptimConfig
from yxanul.model import IGNORE_INDEX, RMSNorm, next_token_targets
from yxanul.precision import Precision
from yxanul.profiling import OPTIMIZER_REGION

__all__ = ["MicroBatch", "ParamRow", "StepResult", "build_optimizer", "param_group_table", "param_groups", "train_step"]

MicroBatch = torch.Tensor | tuple[torch.Tensor, torch.Tensor]
"""Either (B, L) tokens (inputs = all L tokens, targets = the next token, none for the last
position), or an ``(inputs, targets)`` pair of (B, L) tensors with IGNORE_INDEX where no loss."""


@dataclass
class StepResult:
    loss: torch.Tensor
    """Mean next-token loss over the step's predicted tokens, nats/token (fp32 device scalar)."""
    grad_norm: torch.Tensor
    """Global gradient norm before clipping (fp32 device scalar)."""
    tokens: int
    """Input tokens processed (sum of B x L over micro-batches): what the curriculum counts."""
    skipped: bool = False
    """True when ``skip_nonfinite`` found a NaN/inf gradient and the optimizer step was skipped."""


def param_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """Two AdamW groups: decay for matrix weights of linear layers (head included); no decay for
    embeddings (the factorized embedding's projection too), norms and biases."""
    no_decay_ids: set[int] = set()
    embed = getattr(model, "embed", None)
    if embed is not None:
        no_decay_ids.update(id(p) for p in embed.parameters())
    for module in model.modules():
        if isinstance(module, (nn.Embedding, RMSNorm)):
            no_decay_ids.update(id(p) for p in module.parameters(recurse=False))
    decay, no_decay = [], []
    for p in model.parameters():
        if not p.requires_grad:
            continue
        (no_decay if id(p) in no_decay_ids or p.ndim < 2 else decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


@dataclass(frozen=True)
class ParamRow:
    """One parameter as the optimizer sees it (the row of :func:`param_group_table`)."""

    name: str
    shape: tuple[int, ...]
    group: str
    """``decay`` or ``no_decay``."""
    weight_decay: float
    lr: float
    """Peak learning rate of its group (the schedule scales every group alike, as a function of tokens)."""


def param_group_table(model: nn.Module, optim_cfg: OptimConfig) -> list[ParamRow]:
    """Every trainable parameter with its optimizer group, weight decay and learning rate, sorted by name:
    what :func:`build_optimizer` gives AdamW. Two arms that must differ in precision only (FP8 vs BF16)
    must have identical tables; works on a ``meta``-device model (no memory, no GPU)."""
    names = {id(p): n for n, p in model.named_parameters()}
    rows = [ParamRow(names[id(p)], tuple(p.shape), "decay" if group["weight_decay"] else "no_decay",
                     float(group["weight_decay"]), float(optim_cfg.lr))
            for group in param_groups(model, optim_cfg.weight_decay) for p in group["params"]]
    return sorted(rows, key=lambda r: r.name)


def build_optimizer(model: nn.Module, optim_cfg: OptimConfig) -> torch.optim.AdamW:
    """AdamW over fp32 master weights (fused kernel on CUDA); the caller sets the LR each step."""
    params = [p for p in model.parameters() if p.requires_grad]
    wrong = sorted({str(p.dtype) for p in params if p.dtype != torch.float32})
    if wrong:
        raise TypeError(f"master weights must be fp32 (precision is applied by autocast); found {wrong}")
    fused = bool(params) and all(p.device.type == "cuda" for p in params)
    return torch.optim.AdamW(param_groups(model, optim_cfg.weight_decay), lr=optim_cfg.lr,
                             betas=(optim_cfg.beta1, optim_cfg.beta2), eps=optim_cfg.eps, fused=fused)


def _split(batch: MicroBatch, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    if isinstance(batch, (tuple, list)):
        inputs, targets = batch
    else:
        inputs, targets = batch, None
    # uint32 from parquet -> int64 ids; non_blocking so a pinned host batch overlaps with compute.
    inputs = inputs.to(device, non_blocking=True).long()
    targets = next_token_targets(inputs) if targets is None else targets.to(device, non_blocking=True).long()
    return inputs, targets


def _gradient_sync(model: nn.Module, enabled: bool) -> contextlib.AbstractContextManager:
    """DDP's ``no_sync`` / FSDP2's ``set_requires_gradient_sync`` for accumulation; no-op otherwise."""
    if not enabled and isinstance(model, DistributedDataParallel):
        return model.no_sync()
    if hasattr(model, "set_requires_gradient_sync"):  # FSDP2 (fully_shard) module
        model.set_requires_gradient_sync(enabled)
    return contextlib.nullcontext()


def train_step(model: nn.Module, optimizer: torch.optim.Optimizer, micro_batches: Sequence[MicroBatch], *,
               lr: float, precision: Precision, grad_clip: float = 1.0, skip_nonfinite: bool = False) -> StepResult:
    """One optimizer step over ``micro_batches`` (gradient accumulation).

    The loss is the mean over all predicted tokens of all micro-batches (each micro-batch's summed
    loss is divided by the step's total count, so unequal micro-batches weigh by tokens).
    ``grad_clip`` 0 disables clipping (the norm is still measured). With ``skip_nonfinite`` the
    step reads the gradient norm on the host (a deliberate sync) and skips the update when it is
    NaN/inf; otherwise nothing here syncs.
    """
    if not micro_batches:
        raise ValueError("train_step needs at least one micro-batch")
    device = next(model.parameters()).device
    batches = [_split(b, device) for b in micro_batches]
    tokens = 0
    for inputs, _ in batches:
        precision.check_batch(inputs.numel())
        tokens += inputs.numel()
    count = sum((t != IGNORE_INDEX).sum() for _, t in batches).clamp(min=1)  # device tensor, no sync

    for group in optimizer.param_groups:
        group["lr"] = lr
    optimizer.zero_grad(set_to_none=True)
    loss_sum = torch.zeros((), device=device, dtype=torch.float32)
    last = len(batches) - 1
    for i, (inputs, targets) in enumerate(batches):
        # Data parallel: reduce gradients once per step (on the last micro-batch), not per micro-batch.
        with _gradient_sync(model, enabled=i == last):
            with precision.autocast():  # forward only: backward runs outside autocast, as TE and torch expect
                loss = model(inputs, targets=targets)  # summed nats, through the model's head path
            (loss / count).backward()
        loss_sum += loss.detach()

    params = [p for p in model.parameters() if p.grad is not None]
    with torch.autograd.profiler.record_function(OPTIMIZER_REGION):  # a profiled step's "optimizer" device time
        if grad_clip > 0:
            grad_norm = torch.nn.utils.clip_grad_norm_(params, grad_clip, foreach=device.type == "cuda")
        else:
            grad_norm = torch.nn.utils.get_total_norm([p.grad for p in params], foreach=device.type == "cuda")
        skipped = False
        if skip_nonfinite and not bool(torch.isfinite(grad_norm)):  # deliberate host sync
            skipped = True
            optimizer.zero_grad(set_to_none=True)
        else:
            optimizer.step()
    return StepResult(loss=loss_sum / count, grad_norm=grad_norm.detach().float(), tokens=tokens, skipped=skipped)
