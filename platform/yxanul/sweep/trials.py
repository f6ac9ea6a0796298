"""A trial (one training run of the sweep, its resolved config) and the plan (all trials, the cluster they
were placed on, the ASHA milestones)."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from yxanul.config import ExperimentConfig
from yxanul.sweep.cluster import ClusterView
from yxanul.sweep.spec import SweepSpec

__all__ = ["PRECISION_PREFIX", "TOKENS_ATTR", "SweepPlan", "Trial", "build_config", "is_precision_key",
           "override_text", "total_tokens"]

PRECISION_PREFIX = "precision"
"""Keys under this section are the precision keys: pairs differ only in them."""

TOKENS_ATTR = "tokens"
"""The metric every training report carries: tokens seen so far (ASHA's time attribute)."""


@dataclass
class Trial:
    """One training run of the sweep."""

    index: int
    label: str
    """Variant label, ``axis=value,...`` (tag yxanul.variant)."""
    pair: str
    """The label without precision axes (tag yxanul.pair); arms of an FP8/BF16 pair share it."""
    seed: int
    keys: dict[str, Any]
    """The axis values this trial sets (what the table shows)."""
    overrides: dict[str, Any]
    """Every dotted override on top of the base: resources, axis values, run.seed, run.name, absolute
    paths (trials run in other processes and folders), placement."""
    cfg: ExperimentConfig
    runnable: bool = True
    reason: str = ""
    """Placement verdict: where it runs, or ``not runnable: <why>``."""
    arm: str = ""
    """The variant label without seed and sample: the trials of one arm are its seed replicates."""

    @property
    def run_name(self) -> str:
        return self.cfg.run.name

    def to_param(self) -> dict[str, Any]:
        """What Ray Tune carries for this trial (plain JSON data; the config is rebuilt in the trial)."""
        return {"index": self.index, "label": self.label, "pair": self.pair, "seed": self.seed,
                "run_name": self.run_name, "overrides": self.overrides}


@dataclass
class SweepPlan:
    spec: SweepSpec
    base_path: Path | None
    base_overrides: list[str]
    """Every base override as ``key=value`` text (the sweep file's, then the command line's)."""
    trials: list[Trial]
    cluster: ClusterView
    milestones: list[int] = field(default_factory=list)
    """ASHA milestones in tokens (empty without a scheduler)."""
    reference: str = ""
    """Arm label of the reference arm (the sweep's ``reference``, else the first grid point)."""

    @property
    def name(self) -> str:
        return self.spec.name

    @property
    def runnable(self) -> list[Trial]:
        return [t for t in self.trials if t.runnable]

    def trial_config(self, overrides: dict[str, Any]) -> ExperimentConfig:
        return build_config(self.base_path, self.base_overrides, overrides)



def override_text(key: str, value: Any) -> str:
    return f"{key}={json.dumps(value) if not isinstance(value, str) else value}"


def build_config(base_path: Path | None, base_overrides: list[str], trial: dict[str, Any]) -> ExperimentConfig:
    from yxanul.config import load_config

    return load_config(base_path, [*base_overrides, *(override_text(k, v) for k, v in trial.items())])


def is_precision_key(key: str) -> bool:
    return key == PRECISION_PREFIX or key.startswith(PRECISION_PREFIX + ".")


def total_tokens(cfg: ExperimentConfig) -> int:
    from yxanul.curriculum import build_plan

    return build_plan(cfg).total_tokens
