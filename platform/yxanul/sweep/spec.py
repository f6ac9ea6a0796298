"""The sweep file: a base run, axes over config keys or named variants, seeds, metric, scheduler, resources."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from yxanul.config import Count, apply_overrides, experiments_dir, format_validation_error, parse_override, read_yaml
from yxanul.errors import ConfigError

__all__ = ["AxisSpec", "BaseSpec", "ResourcesSpec", "SchedulerSpec", "SweepSpec", "find_sweep", "load_sweep",
           "spec_yaml", "value_label"]


def value_label(value: Any) -> str:
    """How an axis value appears in labels: strings as they are, anything else as compact JSON."""
    return value if isinstance(value, str) else json.dumps(value, separators=(",", ":"))


class _Spec(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, use_attribute_docstrings=True)


class BaseSpec(_Spec):
    config: str | None = None
    """Run YAML the trials start from (relative to the current folder, else to the repository root);
    None starts from the defaults."""
    overrides: dict[str, Any] = {}
    """Dotted ``key: value`` overrides applied on top of ``config`` for every trial."""


class AxisSpec(_Spec):
    """One axis: a list of values for one dotted config key, or named variants (bundles of overrides).

    In the sweep file an axis may also be written as a bare list, ``precision.mode: [bf16, fp8]``,
    which means ``{key: precision.mode, values: [bf16, fp8]}``.
    """

    key: str | None = None
    """Dotted config key this axis sets (defaults to the axis name); not used with ``variants``."""
    values: list[Any] | None = None
    """Values of ``key``, one trial each (grid) or drawn from (choice)."""
    variants: dict[str, dict[str, Any]] | None = None
    """Named bundles of dotted overrides, e.g. ``none: {curriculum: none, data.mode: packed}``."""
    sample: Literal["grid", "choice"] = "grid"
    """grid: every value is a trial (cartesian product with the other grid axes); choice: each of
    ``num_samples`` samples draws one value at random (seeded by ``sample_seed``)."""

    @model_validator(mode="after")
    def _check(self) -> AxisSpec:
        if (self.values is None) == (self.variants is None):
            raise ValueError("an axis needs exactly one of `values` (with `key`) or `variants`")
        options = self.values if self.values is not None else list(self.variants or {})
        if not options:
            raise ValueError("an axis needs at least one value or variant")
        if self.variants is not None:
            if self.key is not None:
                raise ValueError("`key` is for `values` axes; a variant names its own keys")
            for name, bundle in self.variants.items():
                if not bundle:
                    raise ValueError(f"variant {name!r} sets no keys")
        return self


class SchedulerSpec(_Spec):
    type: Literal["asha"] = "asha"
    """Early-stopping scheduler (ASHA, Ray Tune's AsyncHyperBandScheduler)."""
    grace_tokens: Count
    """First milestone: no trial is stopped before it has trained this many tokens."""
    reduction_factor: float = Field(2.0, gt=1)
    """At each milestone only the best 1/reduction_factor of the trials go on."""
    max_tokens: Count | None = None
    """Last milestone horizon (default: the trials' train.max_tokens)."""


class ResourcesSpec(_Spec):
    num_workers: int | None = Field(None, gt=0)
    """Ray Train workers per trial (scaling.num_workers); None keeps the base config's."""
    gpus_per_worker: Literal[0, 1] | None = None
    """1: each worker takes one GPU (scaling.use_gpu=true); 0: CPU workers; None keeps the base's."""
    cpus_per_worker: float | None = Field(None, gt=0)
    """Logical CPUs per worker (scaling.cpus_per_worker); None keeps the base config's."""
    accelerator_type: str | None = None
    """Pin every trial to this Ray accelerator type (e.g. H100). Unset, FP8 trials are pinned to an
    FP8-capable type of the cluster and BF16 arms of FP8 pairs to the same type."""

    def overrides(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        if self.num_workers is not None:
            out["scaling.num_workers"] = self.num_workers
        if self.gpus_per_worker is not None:
            out["scaling.use_gpu"] = bool(self.gpus_per_worker)
        if self.cpus_per_worker is not None:
            out["scaling.cpus_per_worker"] = self.cpus_per_worker
        if self.accelerator_type is not None:
            out["scaling.accelerator_type"] = self.accelerator_type
        return out


class SweepSpec(_Spec):
    """A sweep: trials = grid axes x seeds x samples of the choice axes, each one training run."""

    name: str = ""
    """Sweep name (MLflow tag yxanul.sweep, Ray Tune experiment name); defaults to the file name."""
    description: str = ""
    """What the sweep compares, in one or two sentences (shown in the dry run and on the parent run)."""
    base: BaseSpec = BaseSpec()
    """The run every trial starts from."""
    axes: dict[str, AxisSpec] = {}
    """Axis name -> axis. The variant label of a trial is ``axis=value`` for every axis, in order."""
    seeds: list[int] | Literal["auto"] = [0]
    """run.seed values; every trial is repeated per seed (a seed fixes initialisation and data order). ``auto``:
    seeds 0, 1, ... one at a time until every comparison is decided or ``max_seeds`` (yxanul.sequential)."""
    max_seeds: int = Field(6, ge=3, le=50)
    """With ``seeds: auto``: the most seeds per arm (the rule looks from 3 seeds on)."""
    target_effect: float | None = Field(None, gt=0)
    """The smallest difference in ``metric`` worth detecting (e.g. 0.01 bpb): the dry run prints how many seeds
    detect it 80% of the time at 95% from the measured noise floor."""
    equivalence_margin: float | None = Field(None, gt=0)
    """With ``seeds: auto``: a comparison may also stop as "equivalent within ±margin" (two one-sided tests)."""
    num_samples: int = Field(1, gt=0)
    """Samples of the choice axes per grid point and seed (must be 1 without choice axes)."""
    sample_seed: int = 0
    """Seed of the random draws of choice axes (the trial list is the same on every run)."""
    metric: str = "val/bpb"
    """Reported metric that the scheduler and 'best trial' use."""
    mode: Literal["min", "max"] = "min"
    """Whether lower or higher ``metric`` is better."""
    scheduler: SchedulerSpec | None = None
    """Optional ASHA early stopping with milestones in tokens; None runs every trial to the end."""
    resources: ResourcesSpec = ResourcesSpec()
    """Per-trial resources (override the base config's scaling section)."""
    in_process: Literal["auto", False] = "auto"
    """auto: a one-worker trial (scaling.num_workers=1) trains inside its Ray Tune trial's own process, which Tune
    reuses for the next trial, so imports, CUDA context, compiled-code state and the MLflow client outlive a trial;
    the trial then holds the worker's resources itself (its GPU, its CPUs). Trials of several workers, and every
    trial with ``false``, start a Ray Train ``TorchTrainer`` (a controller and worker processes) each."""
    max_concurrent_trials: int | None = Field(None, gt=0)
    """Trials running at once; None lets Ray Tune start as many as the cluster's resources allow."""
    trial_restarts: int = Field(1, ge=0)
    """How many times a failed trial starts again from its latest checkpoint before it counts as failed (Ray Tune's
    ``FailureConfig.max_failures``): a trial whose process died (a segmentation fault, a lost node) trains on into the
    same MLflow run, which records the restart and why; a deterministic error fails again, after replaying the steps
    since that checkpoint. 0: the first failure ends the trial."""
    exclude: list[dict[str, Any]] = []
    """Grid points left out, each ``{axis name: value or variant name, ...}``: a point matching every
    entry of one item is not run (e.g. to keep only one-change ablations of a factorial grid)."""
    reference: dict[str, Any] | None = None
    """The reference arm ``{axis name: value or variant name}`` that jobs.compare compares the other arms
    with and whose runs set the default target; None: the first grid point."""
    target_bpb: float | None = Field(None, gt=0)
    """Target validation bits/byte for time-to-target, fixed before the results (jobs.compare
    --target-bpb overrides); None: the worst final val/bpb among the reference arm's runs (so that every
    reference run reaches it)."""

    @property
    def seed_list(self) -> list[int]:
        """The seeds trials are planned for: the list, or 0 .. max_seeds - 1 with ``seeds: auto``."""
        return list(range(self.max_seeds)) if self.seeds == "auto" else list(self.seeds)

    def sequential(self) -> Any:
        """The stopping rule of ``seeds: auto`` (a :class:`yxanul.sequential.SequentialDesign`)."""
        from yxanul.sequential import SequentialDesign

        return SequentialDesign(max_seeds=self.max_seeds, margin=self.equivalence_margin)

    @field_validator("axes", mode="before")
    @classmethod
    def _short_axes(cls, value: Any) -> Any:
        if isinstance(value, dict):
            return {name: ({"key": name, "values": axis} if isinstance(axis, list) else axis)
                    for name, axis in value.items()}
        return value

    @model_validator(mode="after")
    def _check(self) -> SweepSpec:
        if self.name and not re.fullmatch(r"[A-Za-z0-9][\w.\-]*", self.name):
            raise ValueError(f"sweep name {self.name!r} may hold only letters, digits, '.', '-' and '_'")
        if self.seeds != "auto" and (not self.seeds or len(set(self.seeds)) != len(self.seeds)):
            raise ValueError(f"seeds must be a non-empty list of distinct integers or auto, got {self.seeds}")
        if self.equivalence_margin is not None and self.seeds != "auto":
            raise ValueError("equivalence_margin is the stopping rule of seeds: auto; with a fixed seed list the "
                             "report's interval says what the data allow")
        has_choice = any(axis.sample == "choice" for axis in self.axes.values())
        if self.num_samples > 1 and not has_choice:
            raise ValueError("num_samples > 1 without a `sample: choice` axis would repeat identical trials; "
                             "list replicas under `seeds` instead")
        for name, axis in self.axes.items():
            if axis.key == "run.seed" or (axis.variants and any("run.seed" in b for b in axis.variants.values())):
                raise ValueError(f"axis {name!r} sets run.seed: use the `seeds` list")
        named = [("exclude", e) for e in self.exclude] + ([("reference", self.reference)] if self.reference else [])
        for what, point in named:
            if not point:
                raise ValueError(f"an empty `{what}` entry matches every grid point")
            for name, value in point.items():
                axis = self.axes.get(name)
                if axis is None:
                    raise ValueError(f"{what} names axis {name!r}, which the sweep does not have "
                                     f"(axes: {', '.join(self.axes) or 'none'})")
                if axis.sample != "grid":
                    raise ValueError(f"{what} names axis {name!r}, a `sample: choice` axis; only grid axes can be named")
                options = list(axis.variants) if axis.variants is not None else [value_label(v) for v in axis.values or []]
                if value_label(value) not in options:
                    raise ValueError(f"{what} gives axis {name!r} the value {value_label(value)!r}; its values are "
                                     f"{', '.join(options)}")
        if self.reference and any(all(value_label(self.reference.get(k)) == value_label(v) for k, v in e.items()) and
                                  set(e) <= set(self.reference) for e in self.exclude):
            raise ValueError(f"reference {self.reference} is excluded by `exclude`")
        return self



def find_sweep(name_or_path: str) -> Path:
    """A sweep file path, or a bare name looked up as experiments/sweeps/<name>.yaml."""
    path = Path(name_or_path)
    if path.is_file():
        return path
    candidate = experiments_dir() / "sweeps" / f"{name_or_path.removesuffix('.yaml')}.yaml"
    if candidate.is_file():
        return candidate
    available = sorted(p.stem for p in (experiments_dir() / "sweeps").glob("*.yaml"))
    raise ConfigError(f"sweep {name_or_path!r} not found (no such file, and no {candidate}); "
                      f"available: {', '.join(available) or 'none'}")


def load_sweep(path: str | Path, overrides: list[str] | None = None) -> tuple[SweepSpec, list[str]]:
    """Read a sweep file. Overrides ``sweep.<field>=value`` change the sweep itself (e.g.
    ``sweep.name=try2``, ``sweep.seeds=[0,1]``); all others are returned as base run overrides."""
    path = find_sweep(str(path))
    tree = read_yaml(path)
    sweep_overrides = [o for o in overrides or [] if o.startswith("sweep.")]
    run_overrides = [o for o in overrides or [] if not o.startswith("sweep.")]
    tree = apply_overrides(tree, [o.removeprefix("sweep.") for o in sweep_overrides])
    tree.setdefault("name", path.stem)
    try:
        spec = SweepSpec.model_validate(tree)
    except ValidationError as exc:
        overridden = {".".join(parse_override(o.removeprefix("sweep."))[0]) for o in sweep_overrides}
        raise ConfigError(format_validation_error(exc, str(path), overridden)) from None
    return spec, run_overrides



def spec_yaml(spec: SweepSpec) -> str:
    """The resolved sweep spec as YAML (logged on the parent run)."""
    return yaml.safe_dump(spec.model_dump(mode="json"), sort_keys=False)
