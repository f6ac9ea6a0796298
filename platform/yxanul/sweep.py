"""Sweeps: a base run config, the axes to vary, and a Ray Tune run of one training run per trial.

A sweep file (``experiments/sweeps/<name>.yaml``) is a :class:`SweepSpec`. It expands,
deterministically and before anything starts, into a list of :class:`Trial` s: one resolved
:class:`~yxanul.config.ExperimentConfig` per (grid point x seed x sample). The dry-run table, the
fairness checks and the Ray Tune run all use that same list, so what ``--dry-run`` prints is what
runs.

    spec = load_sweep("experiments/sweeps/fp8-vs-bf16.yaml", ["train.max_tokens=2e6"])
    plan = plan_sweep(spec, cluster=local_cluster_view())
    print(format_plan(plan))
    run_sweep(plan)                     # Ray Tune; MLflow parent run + one child run per trial

Fairness rules enforced here (see docs/sweeps.md):

- Trials whose labels differ only in precision keys form a *pair* (tag ``yxanul.pair``). Their
  resolved configs must be identical outside ``precision.*`` (same seed, so the same data order;
  same learning rate and schedule; same token budget) or the sweep is refused.
- All arms of a pair that contains an FP8 arm run on the same accelerator type, chosen among the
  FP8-capable ones, so the speedup is not confounded with the card.
- ASHA milestones are in tokens and must fall on validation points, so trials are cut at equal
  tokens (``time_attr`` is the reported ``tokens``), whatever their curriculum's batch shapes.
- An FP8 trial that cannot run on the cluster is never run in BF16: it is recorded as not runnable
  (trial table and an MLflow child run tagged ``yxanul.status=not_runnable``) with the reason.
"""

from __future__ import annotations

import itertools
import json
import random
import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from yxanul.config import (
    Count,
    ExperimentConfig,
    apply_overrides,
    experiments_dir,
    format_validation_error,
    human_count,
    parse_override,
    read_yaml,
)
from yxanul.errors import ConfigError

__all__ = [
    "AxisSpec",
    "BaseSpec",
    "ClusterView",
    "ResourcesSpec",
    "SchedulerSpec",
    "SweepPlan",
    "SweepSpec",
    "Trial",
    "find_sweep",
    "format_plan",
    "load_sweep",
    "local_cluster_view",
    "plan_sweep",
    "ray_cluster_view",
    "run_sweep",
]

PRECISION_PREFIX = "precision"
"""Keys under this section are the precision keys: pairs differ only in them."""

TOKENS_ATTR = "tokens"
"""The metric every training report carries: tokens seen so far (ASHA's time attribute)."""


class _Spec(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, use_attribute_docstrings=True)


# ---------------------------------------------------------------------------------------------------
# The sweep file


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
    seeds: list[int] = [0]
    """run.seed values; every trial is repeated per seed (a seed fixes initialisation and data order)."""
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
    max_concurrent_trials: int | None = Field(None, gt=0)
    """Trials running at once; None lets Ray Tune start as many as the cluster's resources allow."""
    exclude: list[dict[str, Any]] = []
    """Grid points left out, each ``{axis name: value or variant name, ...}``: a point matching every
    entry of one item is not run (e.g. to keep only one-change ablations of a factorial grid)."""
    reference: dict[str, Any] | None = None
    """The reference arm ``{axis name: value or variant name}`` that jobs.compare compares the other arms
    with and whose mean final val/bpb is the default target; None: the first grid point."""
    target_bpb: float | None = Field(None, gt=0)
    """Target validation bits/byte for time-to-target, fixed before the results (jobs.compare
    --target-bpb overrides); None: the reference arm's mean final val/bpb."""

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
        if not self.seeds or len(set(self.seeds)) != len(self.seeds):
            raise ValueError(f"seeds must be a non-empty list of distinct integers, got {self.seeds}")
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
                options = list(axis.variants) if axis.variants is not None else [_fmt(v) for v in axis.values or []]
                if _fmt(value) not in options:
                    raise ValueError(f"{what} gives axis {name!r} the value {_fmt(value)!r}; its values are "
                                     f"{', '.join(options)}")
        if self.reference and any(all(_fmt(self.reference.get(k)) == _fmt(v) for k, v in e.items()) and
                                  set(e) <= set(self.reference) for e in self.exclude):
            raise ValueError(f"reference {self.reference} is excluded by `exclude`")
        return self


# ---------------------------------------------------------------------------------------------------
# Where trials can run


@dataclass(frozen=True)
class ClusterView:
    """What the placement check knows about the cluster."""

    accelerator_types: tuple[str, ...]
    """Ray accelerator types of the cluster's GPU nodes (empty: no GPUs)."""
    transformer_engine: bool | None
    """Whether Transformer Engine is importable where trials run (None: unknown, a remote cluster)."""
    source: str
    """Where this view comes from, for the table header."""


def local_cluster_view() -> ClusterView:
    """This machine, without starting Ray: its CUDA devices (via torch) and Transformer Engine."""
    import importlib.util

    from yxanul.accelerators import spec_for_device_name

    types: list[str] = []
    try:
        import torch

        if torch.cuda.is_available():
            for i in range(torch.cuda.device_count()):
                name = torch.cuda.get_device_name(i)
                spec = spec_for_device_name(name)
                types.append(spec.name if spec else name)
    except ImportError:
        pass
    te = importlib.util.find_spec("transformer_engine") is not None
    what = ", ".join(sorted(set(types))) or "no GPU"
    return ClusterView(tuple(sorted(set(types))), te, f"this machine ({what}; Ray not started)")


def ray_cluster_view(local: bool) -> ClusterView:
    """The connected Ray cluster's accelerator types; Transformer Engine is checked only when the
    cluster is this machine (``local``)."""
    import importlib.util

    import ray

    from yxanul.accelerators import available_accelerator_types, launcher_accelerator_types

    # Nodes running now, plus the node types the autoscaler may start (a cluster scaling from zero
    # has no GPU node yet, but FP8 trials are still placeable there).
    running = available_accelerator_types(ray.cluster_resources())
    types = tuple(dict.fromkeys([*running, *launcher_accelerator_types()]))
    te = importlib.util.find_spec("transformer_engine") is not None if local else None
    where = "local Ray" if local else "Ray cluster"
    return ClusterView(types, te, f"{where} ({', '.join(types) or 'no GPU'})")


# ---------------------------------------------------------------------------------------------------
# Trials


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
        return _build_config(self.base_path, self.base_overrides, overrides)


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


def _resolve_base(config: str | None, sweep_file: Path | None = None) -> Path | None:
    if config is None:
        return None
    path = Path(config).expanduser()
    for candidate in (path, experiments_dir().parent / path, experiments_dir() / path):
        if candidate.is_file():
            return candidate.resolve()
    raise ConfigError(f"base.config {config!r} of the sweep does not exist (looked in the current folder "
                      f"and {experiments_dir().parent})")


def _text(key: str, value: Any) -> str:
    return f"{key}={json.dumps(value) if not isinstance(value, str) else value}"


def _build_config(base_path: Path | None, base_overrides: list[str], trial: dict[str, Any]) -> ExperimentConfig:
    from yxanul.config import load_config

    return load_config(base_path, [*base_overrides, *(_text(k, v) for k, v in trial.items())])


def _fmt(value: Any) -> str:
    return value if isinstance(value, str) else json.dumps(value, separators=(",", ":"))


def _is_precision_key(key: str) -> bool:
    return key == PRECISION_PREFIX or key.startswith(PRECISION_PREFIX + ".")


def _expand(spec: SweepSpec) -> list[tuple[list[tuple[str, str, dict[str, Any]]], int, int]]:
    """[(choices, seed, sample index)], each choice = (axis name, value label, overrides)."""
    def options(name: str, axis: AxisSpec) -> list[tuple[str, str, dict[str, Any]]]:
        if axis.variants is not None:
            return [(name, v, dict(bundle)) for v, bundle in axis.variants.items()]
        key = axis.key or name
        return [(key, _fmt(v), {key: v}) for v in axis.values or []]

    grid_names = [n for n, a in spec.axes.items() if a.sample == "grid"]
    grid = [options(n, spec.axes[n]) for n in grid_names]
    choice = [(n, options(n, a)) for n, a in spec.axes.items() if a.sample == "choice"]
    rng = random.Random(spec.sample_seed)
    order = list(spec.axes)
    out = []
    for point in itertools.product(*grid):
        if any(_matches(dict(zip(grid_names, (c[1] for c in point))), e) for e in spec.exclude):
            continue
        for seed in spec.seeds:
            for sample in range(spec.num_samples):
                drawn = [rng.choice(opts) for _, opts in choice]
                chosen = {c[0]: c for c in (*point, *drawn)}
                # Label in the order the axes are written.
                ordered = []
                for n in order:
                    axis = spec.axes[n]
                    ordered.append(chosen[n if axis.variants is not None else (axis.key or n)])
                out.append((ordered, seed, sample))
    return out


def _matches(point: dict[str, str], condition: dict[str, Any]) -> bool:
    """Whether a grid point ``{axis name: value label}`` has every ``{axis: value}`` of ``condition``."""
    return all(point.get(name) == _fmt(value) for name, value in condition.items())


def plan_sweep(spec: SweepSpec, run_overrides: list[str] | None = None,
               cluster: ClusterView | None = None) -> SweepPlan:
    """Expand the sweep into trials, build and validate every trial's config, check pairs, and place
    each trial on the cluster (``cluster`` defaults to :func:`local_cluster_view`)."""
    cluster = cluster if cluster is not None else local_cluster_view()
    run_overrides = list(run_overrides or [])
    base_path = _resolve_base(spec.base.config)
    base_overrides = [_text(k, v) for k, v in spec.base.overrides.items()] + run_overrides

    varied = {k for axis in spec.axes.values() for k in ([axis.key] if axis.values is not None else
                                                          [k for b in (axis.variants or {}).values() for k in b])}
    for text in run_overrides:
        key = ".".join(parse_override(text)[0])
        if key in varied or any(key.startswith(v + ".") or v.startswith(key + ".") for v in varied):
            raise ConfigError(f"override {text!r} on the command line sets a key the sweep varies; "
                              "change the axis in the sweep file instead")
        if key == "run.seed":
            raise ConfigError("run.seed is set per trial from the sweep's `seeds`; use sweep.seeds=[...]")

    multi_seed = len(spec.seeds) > 1
    trials: list[Trial] = []
    reference = ""
    for index, (choices, seed, sample) in enumerate(_expand(spec)):
        label_parts = [f"{axis}={value}" for axis, value, _ in choices]
        arm = ",".join(label_parts) or "base"
        point = {name: value for name, (_, value, _) in zip(spec.axes, choices)}
        if not reference and (spec.reference is None or _matches(point, spec.reference)):
            reference = arm
        pair_parts = [f"{axis}={value}" for axis, value, bundle in choices
                      if not all(_is_precision_key(k) for k in bundle)]
        for axis, value, bundle in choices:
            keys = list(bundle)
            if any(_is_precision_key(k) for k in keys) and not all(_is_precision_key(k) for k in keys):
                raise ConfigError(f"axis {axis!r} variant {value!r} mixes precision keys with other keys "
                                  f"({', '.join(keys)}): FP8/BF16 pairs could not differ in precision only; "
                                  "split it into two axes")
        if multi_seed:
            label_parts.append(f"seed={seed}")
            pair_parts.append(f"seed={seed}")
        if spec.num_samples > 1:  # draws may repeat a value: the sample index keeps trials apart
            label_parts.append(f"sample={sample}")
            pair_parts.append(f"sample={sample}")
        keys: dict[str, Any] = {}
        for _, _, bundle in choices:
            keys.update(bundle)
        overrides: dict[str, Any] = {**spec.resources.overrides(), **keys, "run.seed": seed,
                                     "run.name": f"{spec.name}-t{index:02d}"}
        label = ",".join(label_parts) or "base"
        try:
            cfg = _build_config(base_path, base_overrides, overrides)
            overrides.update(_absolute_paths(cfg))
            cfg = _build_config(base_path, base_overrides, overrides)
        except ConfigError as exc:
            raise ConfigError(f"sweep {spec.name}, trial {index} ({label}): {exc}") from None
        trials.append(Trial(index, label, ",".join(pair_parts) or "base", seed, keys, overrides, cfg, arm=arm))
    if not trials:
        raise ConfigError(f"sweep {spec.name}: `exclude` leaves no trial to run")
    if not reference:
        raise ConfigError(f"sweep {spec.name}: reference {spec.reference} matches no trial (`exclude` removes it)")

    _check_pairs(trials)
    _place(trials, spec, cluster, base_path, base_overrides)
    milestones = _milestones(spec, trials)
    return SweepPlan(spec, base_path, base_overrides, trials, cluster, milestones, reference=reference)


def _absolute_paths(cfg: ExperimentConfig) -> dict[str, Any]:
    """Relative paths resolved against the current folder: trials run in Ray actors whose working
    folder is not the driver's."""
    from yxanul.tracking import resolve_tracking_uri

    out: dict[str, Any] = {}
    for key, value in (("data.output_dir", cfg.data.output_dir), ("tokenizer.path", cfg.tokenizer.path),
                       ("run.storage_path", cfg.run.storage_path)):
        if "://" not in value and not Path(value).expanduser().is_absolute():
            out[key] = str(Path(value).expanduser().resolve())
    if cfg.tracking.enabled:
        uri = resolve_tracking_uri(cfg.tracking.uri)
        if uri != cfg.tracking.uri:
            out["tracking.uri"] = uri
    return out


_NOT_COMPARED = ("run.name", "scaling.accelerator_type")


def _check_pairs(trials: list[Trial]) -> None:
    """Arms of a pair must be identical outside precision.* (one variable per comparison)."""
    groups: dict[str, list[Trial]] = {}
    for trial in trials:
        groups.setdefault(trial.pair, []).append(trial)
    for pair, members in groups.items():
        if len(members) < 2:
            continue
        first = members[0].cfg.flat_params()
        for other in members[1:]:
            params = other.cfg.flat_params()
            differ = sorted(k for k in set(first) | set(params)
                            if first.get(k) != params.get(k) and not _is_precision_key(k) and k not in _NOT_COMPARED)
            if differ:
                raise ConfigError(
                    f"trials {members[0].label!r} and {other.label!r} form a precision pair ({pair}) but differ "
                    f"outside precision.*: {', '.join(differ)}; a fair FP8/BF16 comparison changes precision only")
            if all(first.get(k) == params.get(k) for k in first if _is_precision_key(k)):
                raise ConfigError(f"trials {members[0].label!r} and {other.label!r} are identical runs")


def _place(trials: list[Trial], spec: SweepSpec, cluster: ClusterView,
           base_path: Path | None, base_overrides: list[str]) -> None:
    """Decide where each trial runs; pin FP8 trials (and their pair partners) to an FP8-capable type."""
    from yxanul.accelerators import fp8_capable_types, placement_for

    available = list(cluster.accelerator_types)
    groups: dict[str, list[Trial]] = {}
    for trial in trials:
        groups.setdefault(trial.pair, []).append(trial)
    for members in groups.values():
        fp8 = [t for t in members if t.cfg.precision.mode == "fp8"]
        pinned = spec.resources.accelerator_type or (fp8[0].cfg.scaling.accelerator_type if fp8 else None)
        if fp8 and pinned is None:
            recipes = {t.cfg.precision.recipe for t in fp8}
            capable = [a for a in available if a in fp8_capable_types()
                       and all(placement_for("fp8", a, available, recipe=r)[0] for r in recipes)]
            pinned = capable[0] if capable else None
        for trial in members:
            mode = trial.cfg.precision.mode
            if (pinned is not None and trial.cfg.scaling.use_gpu and trial.cfg.scaling.accelerator_type != pinned
                    and (fp8 or spec.resources.accelerator_type)):
                trial.overrides["scaling.accelerator_type"] = pinned
                trial.cfg = _build_config(base_path, base_overrides, trial.overrides)
            accel = trial.cfg.scaling.accelerator_type
            recipe = trial.cfg.precision.recipe if mode == "fp8" else None
            if mode == "fp8" and not trial.cfg.scaling.use_gpu and available:
                # On a GPU cluster the fix is the sweep's resources; without GPUs placement_for says so.
                ok, reason = False, ("not runnable: precision.mode=fp8 needs GPU workers; set "
                                     "resources.gpus_per_worker: 1 in the sweep (scaling.use_gpu=true)")
            elif (mode == "fp8" and cluster.transformer_engine is False and available
                  and not trial.cfg.scaling.simulate_accelerators):  # simulated: trains in fp32 (tagged)
                ok, reason = False, ("not runnable: precision.mode=fp8 needs Transformer Engine, which is not "
                                     "installed (pip install -e '.[gpu]')")
            else:
                ok, reason = placement_for(mode, accel, available, recipe=recipe)
            if ok and trial.cfg.scaling.use_gpu and not available:
                ok, reason = False, "not runnable: scaling.use_gpu=true but the cluster has no GPU"
            trial.runnable, trial.reason = ok, reason


def _milestones(spec: SweepSpec, trials: list[Trial]) -> list[int]:
    if spec.scheduler is None:
        return []
    budgets = {t.cfg.train.max_tokens for t in trials}
    if len(budgets) > 1 and spec.scheduler.max_tokens is None:
        raise ConfigError(f"scheduler: trials have different train.max_tokens ({sorted(budgets)}); "
                          "ASHA needs one horizon: set scheduler.max_tokens")
    horizon = spec.scheduler.max_tokens or budgets.pop()
    rf, m = spec.scheduler.reduction_factor, spec.scheduler.grace_tokens
    if m <= 0 or m >= horizon:
        raise ConfigError(f"scheduler.grace_tokens ({m}) must be above 0 and below the horizon ({horizon})")
    milestones = []
    while m < horizon:
        milestones.append(int(round(m)))
        m *= rf
    for trial in trials:
        every = trial.cfg.eval.every_tokens
        bad = [x for x in milestones if every == 0 or x % every]
        if bad:
            raise ConfigError(
                f"scheduler milestones {', '.join(map(str, bad))} tokens are not validation points of trial "
                f"{trial.label!r} (eval.every_tokens={every}); trials are cut at validation points, so make "
                "scheduler.grace_tokens a multiple of eval.every_tokens and reduction_factor an integer")
    return milestones


def _short(text: str, width: int = 48) -> str:
    return text if len(text) <= width else text[:width - 3] + "..."


def format_plan(plan: SweepPlan) -> str:
    """The trial table: index, variant, seed, keys set, resources, placement verdict."""
    spec = plan.spec
    lines = [f"sweep {spec.name}: {len(plan.trials)} trials ({len(plan.runnable)} runnable)"
             + (f" - {spec.description}" if spec.description else ""),
             f"base: {plan.base_path or 'defaults'}"
             + (f" + {' '.join(plan.base_overrides)}" if plan.base_overrides else ""),
             f"metric: {spec.metric} ({spec.mode}); placement checked against {plan.cluster.source}"]
    arms = list(dict.fromkeys(t.arm for t in plan.trials))
    per_trial = sorted({t.cfg.train.max_tokens for t in plan.trials})
    total = sum(t.cfg.train.max_tokens for t in plan.trials)
    runnable = sum(t.cfg.train.max_tokens for t in plan.runnable)
    seeds = f"{len(spec.seeds)} seed{'s' if len(spec.seeds) > 1 else ''} ({', '.join(map(str, spec.seeds))}"
    lines.append(f"{len(arms)} variants x {seeds}; shared by every variant) = {len(plan.trials)} trials; token budget "
                 f"{'/'.join(map(human_count, per_trial))} per trial, {human_count(total)} in all"
                 + (f" ({human_count(runnable)} in the {len(plan.runnable)} runnable here)" if runnable != total else ""))
    target = (f"{spec.target_bpb:g} bits/byte (fixed in the sweep)" if spec.target_bpb is not None
              else "the reference arm's mean final val/bpb")
    lines.append(f"reference arm: {plan.reference}; target for time-to-target: {target}")
    if spec.scheduler is not None:
        lines.append(f"scheduler: ASHA at tokens {', '.join(human_count(m) for m in plan.milestones)} "
                     f"(keep 1/{spec.scheduler.reduction_factor:g} at each)")
    rows = [("#", "variant", "pair", "keys", "resources", "tokens", "data", "placement")]
    for t in plan.trials:
        sc = t.cfg.scaling
        res = f"{sc.num_workers}x " + (f"GPU {sc.accelerator_type or 'any'}" if sc.use_gpu
                                        else f"{sc.cpus_per_worker:g} CPU")
        keys = " ".join(_short(_text(k, v)) for k, v in t.keys.items())
        data = "ready" if (Path(t.cfg.data.output_dir) / "manifest.json").is_file() else "missing"
        rows.append((str(t.index), t.label, t.pair, keys, res, human_count(t.cfg.train.max_tokens), data, t.reason))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]) - 1)]
    for r in rows:
        lines.append("  ".join(c.ljust(w) for c, w in zip(r, widths)) + "  " + r[-1])
    missing = sorted({t.cfg.data.output_dir for t in plan.trials
                      if not (Path(t.cfg.data.output_dir) / "manifest.json").is_file()})
    for folder in missing:
        t = next(t for t in plan.trials if t.cfg.data.output_dir == folder)
        lines.append(f"data missing: {folder}: prepare it with `{prepare_command(plan, t)}`")
    return "\n".join(lines)


def prepare_command(plan: SweepPlan, trial: Trial) -> str:
    """The jobs.prepare command line that builds the dataset a trial reads."""
    cfg = trial.cfg
    data = [o for o in plan.base_overrides if o.startswith(("data.", "tokenizer."))
            and not o.startswith(("data.mode=", "data.output_dir=", "data.seq_len=", "tokenizer.path="))]
    parts = ["python -m jobs.prepare", str(plan.base_path or "CONFIG"), *data, f"data.mode={cfg.data.mode}",
             f"data.output_dir={cfg.data.output_dir}", f"tokenizer.path={cfg.tokenizer.path}"]
    if cfg.data.mode == "packed":
        parts.append(f"data.seq_len={cfg.data.seq_len}")
    return " ".join(dict.fromkeys(parts))


def spec_yaml(spec: SweepSpec) -> str:
    """The resolved sweep spec as YAML (logged on the parent run)."""
    return yaml.safe_dump(spec.model_dump(mode="json"), sort_keys=False)


# ---------------------------------------------------------------------------------------------------
# Running: Ray Tune over TorchTrainer runs, MLflow parent + child runs


def sweep_storage(plan: SweepPlan) -> str:
    """Ray Tune experiment folder of the sweep: ``<base run.storage_path>/sweeps/<sweep name>``."""
    base = _build_config(plan.base_path, plan.base_overrides, {})
    storage = base.run.storage_path
    if "://" not in storage:
        storage = str(Path(storage).expanduser().resolve())
    return f"{storage.rstrip('/')}/sweeps"


def _fingerprint(plan: SweepPlan) -> str:
    import hashlib

    blob = json.dumps({"base": str(plan.base_path), "base_overrides": plan.base_overrides,
                       "trials": [t.to_param() for t in plan.trials]}, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def _ensure_ray() -> bool:
    """Connect to $RAY_ADDRESS, use an initialised Ray, or start a local one. True when Ray is local."""
    import os

    import ray

    if ray.is_initialized():
        return not os.environ.get("RAY_ADDRESS")
    if os.environ.get("RAY_ADDRESS"):
        ray.init(configure_logging=False)
        return False
    ray.init(address="local", configure_logging=False)
    return True


def check_data(plan: SweepPlan) -> None:
    """Every runnable trial's prepared dataset exists and serves its curriculum (before any trial starts)."""
    from yxanul.curriculum import build_plan
    from yxanul.data.loader import PreparedDataset
    from yxanul.errors import DataError

    for trial in plan.runnable:
        cfg = trial.cfg
        try:
            dataset = PreparedDataset.open(cfg.data.output_dir)
            curriculum = build_plan(cfg, cfg.scaling.num_workers, dataset.seq_len_ok)
            dataset.check_plan(curriculum, cfg.curriculum.preset or "custom")
        except DataError as exc:
            hint = f"; prepare it with `{prepare_command(plan, trial)}`"
            raise DataError(f"sweep {plan.name}, trial {trial.index} ({trial.label}): {exc}"
                            + (hint if "manifest" in str(exc) or "does not exist" in str(exc) else "")) from None


def _client(uri: str) -> Any:
    from mlflow import MlflowClient

    return MlflowClient(tracking_uri=uri)


def _quote(value: str) -> str:
    return "'" + value.replace("'", "\\'") + "'"


def _children(uri: str, experiment_id: str, parent_id: str) -> list[Any]:
    return _client(uri).search_runs([experiment_id], filter_string=f"tags.`mlflow.parentRunId` = {_quote(parent_id)}",
                                    max_results=5000)


def _open_parent(plan: SweepPlan, uri: str, experiment_id: str, tune_path: str, resume: bool) -> str:
    """The sweep's parent MLflow run: the one a resumed sweep already has, else a new one."""
    client = _client(uri)
    fingerprint = _fingerprint(plan)
    if resume:
        found = client.search_runs(
            [experiment_id], order_by=["attributes.start_time DESC"], max_results=1,
            filter_string=f"tags.`yxanul.sweep` = {_quote(plan.name)} and tags.`yxanul.tune_path` = {_quote(tune_path)}")
        if found:
            parent = found[0]
            if parent.data.tags.get("yxanul.sweep_hash") != fingerprint:
                raise ConfigError(
                    f"sweep {plan.name!r} at {tune_path} was started with different trials (other axes, overrides "
                    "or base config); resuming would mix them. Start a new sweep with sweep.name=<new name>")
            client.update_run(parent.info.run_id, status="RUNNING")
            client.set_tag(parent.info.run_id, "yxanul.status", "running")
            return parent.info.run_id
        raise ConfigError(
            f"sweep {plan.name!r} has a Ray Tune experiment at {tune_path} but no parent run in {uri} "
            f"(tag yxanul.tune_path); its trials would log to a missing run. Start a new sweep with "
            "sweep.name=<new name>, or point tracking.uri at the store it used")
    spec = plan.spec
    tags = {"yxanul.sweep": plan.name, "yxanul.role": "sweep", "yxanul.tune_path": tune_path,
            "yxanul.sweep_hash": fingerprint, "yxanul.status": "running", "mlflow.note.content": spec.description}
    from yxanul.tracking import git_state

    git = git_state()
    tags.update({"yxanul.git_sha": git["sha"], "yxanul.git_dirty": git["dirty"], "yxanul.command": _command_line()})
    run = client.create_run(experiment_id, run_name=f"sweep-{plan.name}", tags=tags)
    rid = run.info.run_id
    params = {"sweep.metric": spec.metric, "sweep.mode": spec.mode, "sweep.trials": str(len(plan.trials)),
              "sweep.reference": plan.reference,
              "sweep.seeds": json.dumps(spec.seeds), "sweep.base": str(plan.base_path or "defaults"),
              "sweep.base_overrides": " ".join(plan.base_overrides)[:6000],
              "sweep.milestones_tokens": json.dumps(plan.milestones)}
    if spec.target_bpb is not None:
        params["sweep.target_bpb"] = repr(spec.target_bpb)
    for key, value in params.items():
        client.log_param(rid, key, value)
    client.log_text(rid, spec_yaml(spec), "sweep.yaml")
    client.log_text(rid, format_plan(plan) + "\n", "trials.txt")
    return rid


def _command_line() -> str:
    """The command that started this process, as a user would type it (``python -m jobs.sweep ...``)."""
    import shlex
    import sys

    argv = list(sys.argv)
    head = Path(argv[0]) if argv else Path("?")
    if head.parent.name == "jobs" and head.suffix == ".py":
        argv[0:1] = ["python", "-m", f"jobs.{head.stem}"]
    return shlex.join(argv)[:5000]


def _record_not_runnable(plan: SweepPlan, uri: str, experiment_id: str, parent_id: str) -> None:
    """One ended child run per trial that cannot run here, with the reason (never silently run in BF16)."""
    client = _client(uri)
    existing = {r.data.tags.get("yxanul.run_name") for r in _children(uri, experiment_id, parent_id)}
    for trial in plan.trials:
        if trial.runnable or trial.run_name in existing:
            continue
        run = client.create_run(experiment_id, run_name=trial.run_name, tags={
            "mlflow.parentRunId": parent_id, "yxanul.sweep": plan.name, "yxanul.variant": trial.label,
            "yxanul.pair": trial.pair, "yxanul.trial": str(trial.index), "yxanul.run_name": trial.run_name,
            "yxanul.status": "not_runnable", "yxanul.reason": trial.reason,
            "yxanul.precision": trial.cfg.precision.mode})
        from mlflow.entities import Param

        items = [Param(k, v[:6000]) for k, v in trial.cfg.flat_params().items()]
        for i in range(0, len(items), 100):
            client.log_batch(run.info.run_id, params=items[i:i + 100])
        client.set_terminated(run.info.run_id, "KILLED")


def _tune_report_callback() -> Any:
    """Ray Train -> Ray Tune bridge (rank 0's reports become trial results).

    The training loop reports ``done`` (1.0 at the last step); in Tune, ``done`` is the reserved key that
    ends a trial, so a true value would stop the trial before the run is finished and its MLflow run
    ended. It is forwarded as ``finished`` instead."""
    from ray.tune.integration.ray_train import TuneReportCallback

    class _SweepReport(TuneReportCallback):
        def after_report(self, run_context: Any, metrics: list[dict[str, Any]], checkpoint: Any) -> None:
            renamed = [{("finished" if k == "done" else k): v for k, v in m.items()} for m in metrics]
            super().after_report(run_context, renamed, checkpoint)

    return _SweepReport()


def _trial_fn(config: dict[str, Any]) -> None:
    """Ray Tune function trainable: one TorchTrainer run (via yxanul.train.launch.train) per trial."""
    from ray import tune

    from yxanul.train.launch import train

    sweep, trial = config["sweep"], config["trial"]
    base = Path(sweep["base_path"]) if sweep["base_path"] else None
    cfg = _build_config(base, sweep["base_overrides"], trial["overrides"])
    tags = {"yxanul.sweep": sweep["name"], "yxanul.variant": trial["label"], "yxanul.pair": trial["pair"],
            "yxanul.trial": str(trial["index"]), "yxanul.tune_trial_id": tune.get_context().get_trial_id()}
    train(cfg, run_config_callbacks=[_tune_report_callback()], extra_tags=tags, parent_run_id=sweep["parent_run_id"])


def _end_trial_run_callback(uri: str, experiment_id: str, parent_id: str, horizons: dict[str, int]) -> Any:
    """A Tune callback (driver side) that ends the MLflow run of a trial Tune stopped or lost.

    A trial stopped by ASHA is killed with its TorchTrainer, so nothing in it ends its MLflow run: this
    does, as KILLED with ``yxanul.status=stopped_early`` and the tokens it reached."""
    from ray.tune import Callback

    class _EndTrialRuns(Callback):
        def _finish(self, trial: Any, error: bool) -> None:
            name = trial.config["trial"]["run_name"]
            client = _client(uri)
            found = client.search_runs([experiment_id], max_results=1, filter_string=(
                f"tags.`mlflow.parentRunId` = {_quote(parent_id)} and tags.`yxanul.run_name` = {_quote(name)}"))
            if not found:
                if error:  # failed before its run was created (bad data, config): record it anyway
                    _record_failed(uri, experiment_id, parent_id, trial)
                return
            run = found[0]
            last = trial.last_result or {}
            tokens = int(last.get(TOKENS_ATTR, 0) or 0)
            reached_end = tokens >= horizons.get(name, 0) > 0
            if error:
                if run.info.status == "RUNNING":
                    client.set_tag(run.info.run_id, "yxanul.status", "failed")
                    client.set_terminated(run.info.run_id, "FAILED")
                client.set_tag(run.info.run_id, "yxanul.reason", _error_line(trial))
                return
            if not reached_end:
                # The trial's own handler (yxanul.train.launch) may still be ending the run as "killed":
                # let it finish first, so that the scheduler's verdict below is the one that stays.
                deadline = time.monotonic() + 20.0
                while run.info.status == "RUNNING" and time.monotonic() < deadline:
                    time.sleep(0.5)
                    run = client.get_run(run.info.run_id)
                # Ended first, tagged after: a trial handler that comes later than the wait above sees
                # the run ended and leaves it (launch._finish_mlflow_run(only_if_running=True)).
                if run.info.status == "RUNNING":
                    client.set_terminated(run.info.run_id, "KILLED")
                client.set_tag(run.info.run_id, "yxanul.stopped_at_tokens", str(tokens))
                client.set_tag(run.info.run_id, "yxanul.reason", f"stopped by the ASHA scheduler at {tokens} tokens")
                client.set_tag(run.info.run_id, "yxanul.status", "stopped_early")
            elif run.info.status == "RUNNING":  # finished training, but Tune ended the trial first
                client.set_tag(run.info.run_id, "yxanul.status", "finished")
                client.set_terminated(run.info.run_id, "FINISHED")

        def on_trial_complete(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
            self._finish(trial, error=False)

        def on_trial_error(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
            self._finish(trial, error=True)

    return _EndTrialRuns()


def _error_line(trial: Any) -> str:
    """The last line of a trial's error (the user-facing message, for YxanulErrors)."""
    try:
        text = str(trial.get_error() or "")
    except Exception:  # the error file may be gone; the status still says failed
        text = ""
    lines = [line.strip() for line in text.strip().splitlines() if line.strip()]
    return lines[-1][:2000] if lines else "failed (see the trial's error file in the Ray Tune folder)"


def _record_failed(uri: str, experiment_id: str, parent_id: str, trial: Any) -> None:
    params = trial.config["trial"]
    run = _client(uri).create_run(experiment_id, run_name=params["run_name"], tags={
        "mlflow.parentRunId": parent_id, "yxanul.sweep": trial.config["sweep"]["name"],
        "yxanul.variant": params["label"], "yxanul.pair": params["pair"], "yxanul.trial": str(params["index"]),
        "yxanul.run_name": params["run_name"], "yxanul.status": "failed", "yxanul.reason": _error_line(trial)})
    _client(uri).set_terminated(run.info.run_id, "FAILED")


def _default_concurrency(plan: SweepPlan) -> int:
    """How many trials fit the cluster at once (Train workers are not Tune trial resources)."""
    import ray

    resources = ray.cluster_resources()
    counts = []
    for t in plan.runnable:
        sc = t.cfg.scaling
        if sc.use_gpu:
            counts.append(int(resources.get("GPU", 0) // sc.num_workers))
        else:
            counts.append(int(resources.get("CPU", 0) // (sc.num_workers * sc.cpus_per_worker)))
    return max(1, min(counts)) if counts else 1


@dataclass
class SweepOutcome:
    parent_run_id: str
    experiment_id: str
    tracking_uri: str
    tune_path: str
    resumed: bool
    rows: list[dict[str, Any]]
    """Per trial (MLflow's view): index, variant, status, tokens, metric value, reason, run id."""


def run_sweep(spec: SweepSpec, run_overrides: list[str] | None = None) -> SweepOutcome:
    """Plan against the Ray cluster, open the MLflow parent run, run (or resume) the Tune experiment,
    end every trial's MLflow run, and return the per-trial outcome."""
    import os

    from ray import tune
    from ray.tune.schedulers import ASHAScheduler

    from yxanul.tracking import connect

    local = _ensure_ray()
    plan = plan_sweep(spec, run_overrides, cluster=ray_cluster_view(local))
    check_data(plan)
    first = plan.trials[0].cfg
    if not first.tracking.enabled:
        raise ConfigError("sweeps record every trial in MLflow: tracking.enabled=false is not supported here")
    uri = first.tracking.uri or ""
    experiment_id = connect(uri, first.tracking.experiment)
    storage = sweep_storage(plan)
    tune_path = f"{storage}/{plan.name}"
    resume = tune.Tuner.can_restore(tune_path)
    parent_id = _open_parent(plan, uri, experiment_id, tune_path, resume)
    _record_not_runnable(plan, uri, experiment_id, parent_id)
    print(format_plan(plan), flush=True)
    print(f"MLflow parent run {parent_id} ({uri}); Ray Tune folder {tune_path}"
          + (" (resuming)" if resume else ""), flush=True)

    # Log-only reports carry train/* but not the metric; Tune's strict check would reject them.
    os.environ["TUNE_DISABLE_STRICT_METRIC_CHECKING"] = "1"
    errored = False
    if plan.runnable:
        horizons = {t.run_name: _total_tokens(t.cfg) for t in plan.runnable}
        # The trial itself only waits on its TorchTrainer, whose workers hold the real resources. It runs on
        # the head (a token share of the resource only the head has; Tune refuses an empty request): asking
        # for CPU instead would make an autoscaling cluster, whose head has no CPUs, launch a CPU node just
        # to host trial drivers (seen with the simulated cluster, yxanul.cluster_sim).
        trainable = tune.with_resources(_trial_fn, {"cpu": 0, "node:__internal_head__": 0.01})
        if resume:
            tuner = tune.Tuner.restore(tune_path, trainable=trainable, resume_unfinished=True, resume_errored=True)
        else:
            consts = {"name": plan.name, "base_path": str(plan.base_path) if plan.base_path else None,
                      "base_overrides": plan.base_overrides, "parent_run_id": parent_id}
            scheduler = None
            if plan.milestones:
                scheduler = ASHAScheduler(time_attr=TOKENS_ATTR, grace_period=plan.milestones[0],
                                          reduction_factor=spec.scheduler.reduction_factor,
                                          max_t=plan.milestones[-1] + 1, stop_last_trials=False)
            tuner = tune.Tuner(
                trainable,
                param_space={"sweep": consts, "trial": tune.grid_search([t.to_param() for t in plan.runnable])},
                tune_config=tune.TuneConfig(metric=spec.metric, mode=spec.mode, scheduler=scheduler,
                                            max_concurrent_trials=spec.max_concurrent_trials or _default_concurrency(plan)),
                run_config=tune.RunConfig(name=plan.name, storage_path=storage, verbose=1, callbacks=[
                    _end_trial_run_callback(uri, experiment_id, parent_id, horizons)]))
        try:
            results = tuner.fit()
        except BaseException:
            _client(uri).set_tag(parent_id, "yxanul.status", "interrupted")
            _client(uri).set_terminated(parent_id, "KILLED")
            raise
        errored = any(r.error is not None for r in results)
    rows = summarize(uri, experiment_id, parent_id, spec.metric)
    client = _client(uri)
    client.set_tag(parent_id, "yxanul.status", "failed" if errored else "finished")
    client.log_text(parent_id, format_rows(rows) + "\n", "results.txt")
    client.set_terminated(parent_id, "FAILED" if errored else "FINISHED")
    return SweepOutcome(parent_id, experiment_id, uri, tune_path, resume, rows)


def _total_tokens(cfg: ExperimentConfig) -> int:
    from yxanul.curriculum import build_plan

    return build_plan(cfg).total_tokens


def summarize(uri: str, experiment_id: str, parent_id: str, metric: str) -> list[dict[str, Any]]:
    """Per child run of the sweep: index, variant, status, tokens, final metric, reason, run id."""
    client = _client(uri)
    rows = []
    for run in _children(uri, experiment_id, parent_id):
        tags = run.data.tags
        tokens = None
        history = client.get_metric_history(run.info.run_id, metric) if metric in run.data.metrics else []
        if history:
            tokens = max(m.step for m in history)
        rows.append({"index": int(tags.get("yxanul.trial", -1)), "variant": tags.get("yxanul.variant", ""),
                     "status": tags.get("yxanul.status") or run.info.status.lower(),
                     "tokens": tokens, metric: run.data.metrics.get(metric),
                     "reason": tags.get("yxanul.reason", ""), "run_id": run.info.run_id})
    return sorted(rows, key=lambda r: r["index"])


def format_rows(rows: list[dict[str, Any]]) -> str:
    if not rows:
        return "(no trials)"
    metric = next(k for k in rows[0] if k not in ("index", "variant", "status", "tokens", "reason", "run_id"))
    table = [("#", "variant", "status", "tokens", metric, "run", "reason")]
    for r in rows:
        value = r[metric]
        table.append((str(r["index"]), r["variant"], r["status"], human_count(r["tokens"]) if r["tokens"] else "",
                      f"{value:.4f}" if value is not None else "", r["run_id"][:12], r["reason"]))
    widths = [max(len(row[i]) for row in table) for i in range(len(table[0]) - 1)]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(row, widths)) + "  " + row[-1] for row in table)
