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
from yxanul.tags import ARM_TAG, AXES_TAG, PAIR_TAG, RUN_NAME_TAG, TRIAL_TAG, VARIANT_TAG

__all__ = ["PRECISION_PREFIX", "TOKENS_ATTR", "SweepPlan", "Trial", "build_config", "is_precision_key",
           "override_text", "runs_in_process", "total_tokens", "trial_tags"]

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
    """The variant label without seed and sample: the trials of one arm are its seed replicates (tag yxanul.arm)."""
    axes: dict[str, str] = field(default_factory=dict)
    """The grid point, ``{axis: value label}`` in the label's order (tag yxanul.axes)."""

    @property
    def run_name(self) -> str:
        return self.cfg.run.name

    def to_param(self) -> dict[str, Any]:
        """What Ray Tune carries for this trial (plain JSON data; the config is rebuilt in the trial)."""
        return {"index": self.index, "label": self.label, "pair": self.pair, "seed": self.seed,
                "run_name": self.run_name, "overrides": self.overrides, "arm": self.arm, "axes": self.axes}

    def identity_tags(self) -> dict[str, str]:
        """The tags that place the trial's MLflow run in its sweep (the sweep's name is added by the caller)."""
        return trial_tags(self.to_param())


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
    run_overrides: list[str] = field(default_factory=list)
    """The command line's overrides alone (what this sweep changed on top of its file)."""
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



def trial_tags(param: dict[str, Any]) -> dict[str, str]:
    """MLflow tags of a trial from what Ray Tune carries for it (:meth:`Trial.to_param`). A trial of a sweep
    started before the arm and axes were carried has no arm/axes tags (readers fall back on the label)."""
    tags = {VARIANT_TAG: param["label"], PAIR_TAG: param["pair"], TRIAL_TAG: str(param["index"]),
            RUN_NAME_TAG: param["run_name"]}
    if param.get("arm"):
        tags[ARM_TAG] = param["arm"]
    if param.get("axes") is not None:
        tags[AXES_TAG] = json.dumps(param["axes"])
    return tags


def override_text(key: str, value: Any) -> str:
    return f"{key}={json.dumps(value) if not isinstance(value, str) else value}"


def build_config(base_path: Path | None, base_overrides: list[str], trial: dict[str, Any]) -> ExperimentConfig:
    from yxanul.config import load_config

    return load_config(base_path, [*base_overrides, *(override_text(k, v) for k, v in trial.items())])


def is_precision_key(key: str) -> bool:
    return key == PRECISION_PREFIX or key.startswith(PRECISION_PREFIX + ".")


def runs_in_process(cfg: ExperimentConfig, setting: str | bool) -> bool:
    """Whether a trial trains inside its own Tune trial process (``sweep.in_process``): one worker, and not turned
    off; otherwise it starts a TorchTrainer."""
    return setting == "auto" and cfg.scaling.num_workers == 1


def total_tokens(cfg: ExperimentConfig) -> int:
    from yxanul.curriculum import build_plan

    return build_plan(cfg).total_tokens
