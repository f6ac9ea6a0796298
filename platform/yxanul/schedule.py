"""Learning rate as a function of tokens seen (not steps: curriculum stages change the batch shape).

    lr = learning_rate(tokens, cfg.optim, cfg.train.max_tokens) * stage.lr_scale

- ``cosine``: linear warmup over ``warmup_tokens`` from 0 to ``lr``, then cosine decay to
  ``lr * min_lr_ratio`` at ``max_tokens``.
- ``wsd`` (warmup-stable-decay): linear warmup, constant ``lr``, then a linear decay to
  ``lr * min_lr_ratio`` over the last ``decay_fraction`` of ``max_tokens``.

The loop uses :func:`lr_for_step`: the decay is evaluated at the tokens seen before the step, the
warmup at the tokens seen after it (so the first step of a warmup does not run at lr 0).
"""

from __future__ import annotations

import math

from yxanul.config import OptimConfig

__all__ = ["learning_rate", "lr_for_step"]


def learning_rate(tokens: float, optim: OptimConfig, max_tokens: int) -> float:
    """Scheduled learning rate after ``tokens`` tokens (before any stage ``lr_scale``)."""
    peak, floor = optim.lr, optim.lr * optim.min_lr_ratio
    tokens = min(max(tokens, 0.0), float(max_tokens))
    warmup = min(optim.warmup_tokens, max_tokens)
    if warmup and tokens < warmup:
        return peak * tokens / warmup
    if optim.schedule == "cosine":
        span = max_tokens - warmup
        progress = (tokens - warmup) / span if span > 0 else 1.0
        return floor + (peak - floor) * 0.5 * (1.0 + math.cos(math.pi * progress))
    # wsd
    decay_start = max(warmup, max_tokens * (1.0 - optim.decay_fraction))
    if tokens < decay_start:
        return peak
    span = max_tokens - decay_start
    progress = (tokens - decay_start) / span if span > 0 else 1.0
    return peak + (floor - peak) * progress


def lr_for_step(step: int, tokens_per_step: int, optim: OptimConfig, max_tokens: int,
                lr_scale: float = 1.0) -> float:
    """Learning rate of optimizer step ``step`` (0-based): warmup counts the step's own tokens (so the first
    step is not wasted at lr 0); decay is evaluated at the tokens seen before the step."""
    before = step * tokens_per_step
    warmup = min(optim.warmup_tokens, max_tokens)
    if warmup and before < warmup:
        return lr_scale * optim.lr * min(1.0, (before + tokens_per_step) / warmup)
    return lr_scale * learning_rate(before, optim, max_tokens)
