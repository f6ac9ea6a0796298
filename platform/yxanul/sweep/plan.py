"""Planning: the sweep expanded, deterministically and before anything starts, into trials with resolved
configs; pair checks (one variable per comparison); placement; the data check. What --dry-run prints is
what runs."""

from __future__ import annotations

import itertools
import json
import random
from pathlib import Path
from typing import Any

from yxanul.config import ExperimentConfig, experiments_dir, parse_override
from yxanul.errors import ConfigError
from yxanul.files import absolute_path, is_uri
from yxanul.layout import Layout
from yxanul.sweep.asha import milestones as asha_milestones
from yxanul.sweep.cluster import ClusterView, local_cluster_view
from yxanul.sweep.placement import place
from yxanul.sweep.spec import AxisSpec, SweepSpec, value_label
from yxanul.sweep.trials import SweepPlan, Trial, build_config, is_precision_key, override_text

__all__ = ["check_data", "plan_sweep", "prepare_command", "sweep_layout"]

def _resolve_base(config: str | None, sweep_file: Path | None = None) -> Path | None:
    if config is None:
        return None
    path = Path(config).expanduser()
    for candidate in (path, experiments_dir().parent / path, experiments_dir() / path):
        if candidate.is_file():
            return candidate.resolve()
    raise ConfigError(f"base.config {config!r} of the sweep does not exist (looked in the current folder "
                      f"and {experiments_dir().parent})")


def _expand(spec: SweepSpec) -> list[tuple[list[tuple[str, str, dict[str, Any]]], int, int]]:
    """[(choices, seed, sample index)], each choice = (axis name, value label, overrides)."""
    def options(name: str, axis: AxisSpec) -> list[tuple[str, str, dict[str, Any]]]:
        if axis.variants is not None:
            return [(name, v, dict(bundle)) for v, bundle in axis.variants.items()]
        key = axis.key or name
        return [(key, value_label(v), {key: v}) for v in axis.values or []]

    grid_names = [n for n, a in spec.axes.items() if a.sample == "grid"]
    grid = [options(n, spec.axes[n]) for n in grid_names]
    choice = [(n, options(n, a)) for n, a in spec.axes.items() if a.sample == "choice"]
    rng = random.Random(spec.sample_seed)
    order = list(spec.axes)
    out = []
    for point in itertools.product(*grid):
        if any(_matches(dict(zip(grid_names, (c[1] for c in point))), e) for e in spec.exclude):
            continue
        for seed in spec.seed_list:
            for sample in range(spec.num_samples):
                drawn = [rng.choice(opts) for _, opts in choice]
                chosen = {c[0]: c for c in (*point, *drawn)}
                # Label in the order the axes are written.
                ordered = []
                for n in order:
                    axis = spec.axes[n]
                    ordered.append(chosen[n if axis.variants is not None else (axis.key or n)])
                out.append((ordered, seed, sample))
    return _run_order(out, spec.seed_list)


def _run_order(expanded: list[tuple[list[tuple[str, str, dict[str, Any]]], int, int]],
               seeds: list[int]) -> list[tuple[list[tuple[str, str, dict[str, Any]]], int, int]]:
    """The trials in the order they run: seed by seed (then sample by sample), the arms (grid points) of each
    seed rotated by one place per seed: A B C at the first seed, B C A at the second, C A B at the third; with
    two arms, bf16 fp8 | fp8 bf16 | bf16 fp8. So no arm always runs first or last: drift, cold caches and the
    card's thermal state do not line up with one arm, and a sweep stopped early has whole seeds of every arm.
    The random draws of ``choice`` axes happen before (in the expansion's own order), so they do not change."""
    points: dict[str, int] = {}
    for choices, _, _ in expanded:
        points.setdefault(json.dumps([c[:2] for c in choices]), len(points))
    position = {seed: i for i, seed in enumerate(seeds)}

    def key(item: tuple[list[tuple[str, str, dict[str, Any]]], int, int]) -> tuple[int, int, int]:
        choices, seed, sample = item
        point = points[json.dumps([c[:2] for c in choices])]
        return position[seed], sample, (point - position[seed]) % len(points)

    return sorted(expanded, key=key)


def _matches(point: dict[str, str], condition: dict[str, Any]) -> bool:
    """Whether a grid point ``{axis name: value label}`` has every ``{axis: value}`` of ``condition``."""
    return all(point.get(name) == value_label(value) for name, value in condition.items())


def _base(spec: SweepSpec, run_overrides: list[str]) -> tuple[Path | None, list[str]]:
    """The base run file and every base override as ``key=value`` text (the sweep file's, then the command's)."""
    return (_resolve_base(spec.base.config),
            [override_text(k, v) for k, v in spec.base.overrides.items()] + list(run_overrides))


def sweep_layout(spec: SweepSpec, run_overrides: list[str] | None = None) -> Layout:
    """The storage layout of the sweep (its base config's ``run.storage_path``, which every trial shares), from
    the base config alone: what a job needs before anything is planned (the log file's path)."""
    base_path, base_overrides = _base(spec, list(run_overrides or []))
    return Layout.of(build_config(base_path, base_overrides, {}))


def plan_sweep(spec: SweepSpec, run_overrides: list[str] | None = None,
               cluster: ClusterView | None = None) -> SweepPlan:
    """Expand the sweep into trials, build and validate every trial's config, check pairs, and place
    each trial on the cluster (``cluster`` defaults to :func:`local_cluster_view`)."""
    cluster = cluster if cluster is not None else local_cluster_view()
    run_overrides = list(run_overrides or [])
    base_path, base_overrides = _base(spec, run_overrides)

    varied = {k for axis in spec.axes.values() for k in ([axis.key] if axis.values is not None else
                                                          [k for b in (axis.variants or {}).values() for k in b])}
    for text in run_overrides:
        key = ".".join(parse_override(text)[0])
        if key in varied or any(key.startswith(v + ".") or v.startswith(key + ".") for v in varied):
            raise ConfigError(f"override {text!r} on the command line sets a key the sweep varies; "
                              "change the axis in the sweep file instead")
        if key == "run.seed":
            raise ConfigError("run.seed is set per trial from the sweep's `seeds`; use sweep.seeds=[...]")

    multi_seed = len(spec.seed_list) > 1
    trials: list[Trial] = []
    reference = ""
    for index, (choices, seed, sample) in enumerate(_expand(spec)):
        label_parts = [f"{axis}={value}" for axis, value, _ in choices]
        arm = ",".join(label_parts) or "base"
        point = {name: value for name, (_, value, _) in zip(spec.axes, choices)}
        if not reference and (spec.reference is None or _matches(point, spec.reference)):
            reference = arm
        pair_parts = [f"{axis}={value}" for axis, value, bundle in choices
                      if not all(is_precision_key(k) for k in bundle)]
        for axis, value, bundle in choices:
            keys = list(bundle)
            if any(is_precision_key(k) for k in keys) and not all(is_precision_key(k) for k in keys):
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
            cfg = build_config(base_path, base_overrides, overrides)
            overrides.update(_absolute_paths(cfg))
            cfg = build_config(base_path, base_overrides, overrides)
        except ConfigError as exc:
            raise ConfigError(f"sweep {spec.name}, trial {index} ({label}): {exc}") from None
        trials.append(Trial(index, label, ",".join(pair_parts) or "base", seed, keys, overrides, cfg, arm=arm,
                            axes={axis: value for axis, value, _ in choices}))
    if not trials:
        raise ConfigError(f"sweep {spec.name}: `exclude` leaves no trial to run")
    if not reference:
        raise ConfigError(f"sweep {spec.name}: reference {spec.reference} matches no trial (`exclude` removes it)")

    _check_pairs(trials)
    place(trials, spec, cluster, base_path, base_overrides)
    return SweepPlan(spec, base_path, base_overrides, trials, cluster, asha_milestones(spec, trials),
                     reference=reference, run_overrides=run_overrides)


def _absolute_paths(cfg: ExperimentConfig) -> dict[str, Any]:
    """Relative paths resolved against the current folder: trials run in Ray actors whose working
    folder is not the driver's."""
    from yxanul.tracking import resolve_tracking_uri

    out: dict[str, Any] = {}
    for key, value in (("data.output_dir", cfg.data.output_dir), ("tokenizer.path", cfg.tokenizer.path),
                       ("run.storage_path", cfg.run.storage_path)):
        if not is_uri(value) and not Path(value).expanduser().is_absolute():
            out[key] = absolute_path(value)
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
                            if first.get(k) != params.get(k) and not is_precision_key(k) and k not in _NOT_COMPARED)
            if differ:
                raise ConfigError(
                    f"trials {members[0].label!r} and {other.label!r} form a precision pair ({pair}) but differ "
                    f"outside precision.*: {', '.join(differ)}; a fair FP8/BF16 comparison changes precision only")
            if all(first.get(k) == params.get(k) for k in first if is_precision_key(k)):
                raise ConfigError(f"trials {members[0].label!r} and {other.label!r} are identical runs")



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
