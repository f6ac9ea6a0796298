"""Training instability flags: loss spikes and gradient-norm spikes against their running medians.

Pure (no torch, no I/O): the training loop feeds it the loss and gradient norm it already reads at the
logging interval; tests feed it synthetic curves.

    detector = SpikeDetector()
    for tokens, loss, grad_norm in points:
        for spike in detector.observe(tokens, loss=loss, grad_norm=grad_norm):
            print(spike.describe())

A point is a spike when, after ``warmup`` earlier points of that signal, the gradient norm is more than
``grad_norm_factor`` x the running median of the previous ``window`` gradient norms, or the loss is more
than ``loss_nats`` above the running median of the previous ``window`` losses. A falling loss (normal
training) stays below its trailing median, so it never fires; a single bad interval does.
"""

from __future__ import annotations

import math
import statistics
from collections import deque
from dataclasses import dataclass, field

__all__ = ["Spike", "SpikeDetector", "format_spikes"]


@dataclass(frozen=True)
class Spike:
    kind: str
    """``grad_norm`` or ``loss``."""
    tokens: int
    """Training tokens at the logging point where it was seen."""
    value: float
    median: float
    """The running median it was compared with."""

    def describe(self) -> str:
        if self.kind == "grad_norm":
            return (f"grad-norm spike at {self.tokens} tokens: {self.value:.3g} = "
                    f"{self.value / self.median:.1f}x its running median {self.median:.3g}")
        return (f"loss spike at {self.tokens} tokens: {self.value:.4f} nats, {self.value - self.median:+.3f} "
                f"above its running median {self.median:.4f}")

    @property
    def size(self) -> float:
        """How far above the median: a factor for grad norms, nats for losses (the logged metric value)."""
        return self.value / self.median if self.kind == "grad_norm" else self.value - self.median


@dataclass
class SpikeDetector:
    grad_norm_factor: float = 5.0
    loss_nats: float = 0.5
    warmup: int = 10
    """Points of a signal seen before it can flag (early training is not steady)."""
    window: int = 20
    """Previous points the running median is taken over."""
    spikes: list[Spike] = field(default_factory=list)
    _history: dict[str, deque] = field(default_factory=dict)

    def observe(self, tokens: int, *, loss: float | None = None, grad_norm: float | None = None) -> list[Spike]:
        """Feed one logging point; returns the spikes found at it (also kept in ``spikes``)."""
        found = []
        for kind, value in (("grad_norm", grad_norm), ("loss", loss)):
            if value is None or not math.isfinite(value):
                continue
            history = self._history.setdefault(kind, deque(maxlen=self.window))
            seen = len(history)
            if seen >= self.warmup:
                median = statistics.median(history)
                if (kind == "grad_norm" and median > 0 and value > self.grad_norm_factor * median) or (
                        kind == "loss" and value > median + self.loss_nats):
                    found.append(Spike(kind, int(tokens), float(value), float(median)))
            history.append(float(value))
        self.spikes.extend(found)
        return found


def format_spikes(spikes: list[Spike], limit: int = 20) -> str:
    """``grad_norm@2621440 (10.2x), loss@3145728 (+0.61 nats)`` (the ``yxanul.spikes`` tag value)."""
    parts = [f"{s.kind}@{s.tokens} ({s.size:.1f}x)" if s.kind == "grad_norm"
             else f"{s.kind}@{s.tokens} ({s.size:+.2f} nats)" for s in spikes[:limit]]
    if len(spikes) > limit:
        parts.append(f"... {len(spikes) - limit} more")
    return ", ".join(parts)
