"""Training instability flags: loss spikes and gradient-norm spikes against their medians.

Pure (no torch, no I/O): the training loop feeds it, at each logging interval, the LARGEST gradient norm
and loss of the steps in that interval (so a one-step spike between two logging points is seen); tests
feed it synthetic curves.

    detector = SpikeDetector(start_tokens=spike_start_tokens(max_tokens, warmup_tokens))
    for tokens, loss, grad_norm in points:
        for spike in detector.observe(tokens, loss=loss, grad_norm=grad_norm):
            print(spike.describe())
    detector.status()            # "checked 74 points from 1.05M tokens: no spike" or "not checked: ..."

Points before ``start_tokens`` (early training and the learning-rate warm-up, which are not steady) are
neither checked nor remembered. After that, a point is checked once ``min_history`` earlier points of its
signal exist, against a baseline that is the smaller of two medians of those points: the trailing median of
the last ``window`` and the median of the whole run so far. The run's median keeps a spike that follows
another (5.75 right after 3.27 in a series whose median is 0.9) from hiding behind a window the first one
lifted; the trailing median follows a slow drift. A point is a spike when the gradient norm is more than
``grad_norm_factor`` x the baseline, or the loss more than ``loss_nats`` above it. A falling loss (normal
training) stays below its medians, so it never fires; a single bad interval does.
"""

from __future__ import annotations

import bisect
import math
import statistics
from collections import deque
from dataclasses import dataclass, field

__all__ = ["Spike", "SpikeDetector", "format_spikes", "spike_start_tokens"]

START_FRACTION = 0.05
"""Checks start after this fraction of the run (or after the LR warm-up, whichever is later)."""


def spike_start_tokens(max_tokens: int, warmup_tokens: int = 0) -> int:
    """Tokens after which a run's points are checked: the LR warm-up or :data:`START_FRACTION` of the run."""
    return max(int(warmup_tokens), int(START_FRACTION * max_tokens))


@dataclass(frozen=True)
class Spike:
    kind: str
    """``grad_norm`` or ``loss``."""
    tokens: int
    """Training tokens at the logging point where it was seen."""
    value: float
    median: float
    """The baseline it was compared with (the smaller of the trailing and the run median)."""

    def describe(self) -> str:
        if self.kind == "grad_norm":
            return (f"grad-norm spike at {self.tokens} tokens: {self.value:.3g} = "
                    f"{self.value / self.median:.1f}x its median {self.median:.3g}")
        return (f"loss spike at {self.tokens} tokens: {self.value:.4f} nats, {self.value - self.median:+.3f} "
                f"above its median {self.median:.4f}")

    @property
    def size(self) -> float:
        """How far above the median: a factor for grad norms, nats for losses (the logged metric value)."""
        return self.value / self.median if self.kind == "grad_norm" else self.value - self.median


@dataclass
class SpikeDetector:
    grad_norm_factor: float = 5.0
    loss_nats: float = 0.5
    start_tokens: int = 0
    """Points before this many tokens are neither checked nor part of a median."""
    min_history: int = 3
    """Earlier points of a signal (from ``start_tokens`` on) needed before it is checked."""
    window: int = 20
    """Points the trailing median is taken over."""
    spikes: list[Spike] = field(default_factory=list)
    checked: int = 0
    """Logging points at which at least one signal was checked."""
    seen: int = 0
    """Logging points observed (before and after ``start_tokens``)."""
    _trailing: dict[str, deque] = field(default_factory=dict)
    _sorted: dict[str, list[float]] = field(default_factory=dict)

    def observe(self, tokens: int, *, loss: float | None = None, grad_norm: float | None = None) -> list[Spike]:
        """Feed one logging point; returns the spikes found at it (also kept in ``spikes``)."""
        self.seen += 1
        if tokens < self.start_tokens:
            return []
        found: list[Spike] = []
        checked = False
        for kind, value in (("grad_norm", grad_norm), ("loss", loss)):
            if value is None or not math.isfinite(value):
                continue
            trailing = self._trailing.setdefault(kind, deque(maxlen=self.window))
            run = self._sorted.setdefault(kind, [])
            if len(run) >= self.min_history:
                checked = True
                baseline = min(statistics.median(trailing), _median_sorted(run))
                if (kind == "grad_norm" and baseline > 0 and value > self.grad_norm_factor * baseline) or (
                        kind == "loss" and value > baseline + self.loss_nats):
                    found.append(Spike(kind, int(tokens), float(value), float(baseline)))
            trailing.append(float(value))
            bisect.insort(run, float(value))
        self.checked += checked
        self.spikes.extend(found)
        return found

    def status(self) -> str:
        """One line for the run's ``yxanul.spike_check`` tag and the report: what was checked and found, or
        why nothing was (an empty spike list alone would read as "no spike")."""
        start = _tokens(self.start_tokens)
        if not self.checked:
            return (f"not checked: {self.seen} logging points, a check needs more than {self.min_history} from "
                    f"{start} tokens on")
        found = f"{len(self.spikes)} spike{'s' if len(self.spikes) != 1 else ''}" if self.spikes else "no spike"
        return f"checked {self.checked} logging points (interval maxima) from {start} tokens: {found}"


def _median_sorted(values: list[float]) -> float:
    n = len(values)
    return values[n // 2] if n % 2 else 0.5 * (values[n // 2 - 1] + values[n // 2])


def _tokens(n: int) -> str:
    from yxanul.formatting import human_count

    return human_count(n) if n else "0"


def format_spikes(spikes: list[Spike], limit: int = 20) -> str:
    """``grad_norm@2621440 (10.2x), loss@3145728 (+0.61 nats)`` (the ``yxanul.spikes`` tag value)."""
    parts = [f"{s.kind}@{s.tokens} ({s.size:.1f}x)" if s.kind == "grad_norm"
             else f"{s.kind}@{s.tokens} ({s.size:+.2f} nats)" for s in spikes[:limit]]
    if len(spikes) > limit:
        parts.append(f"... {len(spikes) - limit} more")
    return ", ".join(parts)
