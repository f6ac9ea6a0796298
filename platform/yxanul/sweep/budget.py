"""Plan a sweep before paying for it: how long and how much on each node type, and how many seeds it needs.

Time per trial on a node type = training tokens / tokens per second + the per-trial overhead (start-up,
compilation, validation, checkpoints, MLflow), with the rate taken from, in this order:

1. **store**: the tracking store's earlier finished runs of the same model shape, vocabulary, precision
   (mode, recipe, FP8 layers), curriculum, batch shape and worker count on that card type (the median of
   their final ``train/tokens_per_s``); their overhead is their MLflow run's wall seconds minus tokens /
   their rate (median);
2. **bench**: ``jobs.bench`` / ``scripts/train_vs_bench.py`` result rows (JSONL) of the same preset and
   precision on that card (``jobs.train`` rows before ``jobs.bench`` rows);
3. **peak**: the card's dense BF16 peak x :data:`DEFAULT_MFU` / the model's training FLOPs per token
   (token-weighted over the curriculum's stages), BF16 peak for FP8 arms too (at small widths FP8 is not
   faster), and :data:`DEFAULT_OVERHEAD_S` of overhead (:data:`IN_PROCESS_OVERHEAD_S` for a trial that trains in
   its reused Tune process, ``sweep.in_process``).

Each row says which. Cost = GPU-hours x the node type's hourly price / its GPUs, from ``cluster-prices.yaml``
beside ``cluster.yaml`` (a dated table the user edits; nothing is looked up on the network); wall time =
trial-seconds / the trials that run at once there (one per GPU of the node type's ``max_workers`` nodes, or
the sweep's ``max_concurrent_trials``), ignoring node start-up.

Seeds: the noise floor is the seed standard deviation of the sweep's metric at the reference arm's
configuration, from earlier finished runs in the store with the same configuration (any sweep: the
calibration's runs count; run name, seed, storage and tracking keys aside), or ``--noise-floor``. The
paired difference's standard deviation is taken as sqrt(2) x that (arms as independent: pairing by seed
can only lower it), unless earlier runs of this sweep give paired differences directly. Then
``minimal_detectable_effect`` at the sweep's seeds and ``seeds_needed`` for ``sweep.target_effect``
(paired t, 95%, 80% power; docs/sweeps.md).
"""

from __future__ import annotations

import json
import math
import statistics
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from yxanul.formatting import clock, human_count
from yxanul.stats import MOST_SEEDS
from yxanul.text import table

__all__ = ["DEFAULT_MFU", "DEFAULT_OVERHEAD_S", "IN_PROCESS_OVERHEAD_S", "PRICES_FILE", "Budget", "NodeType", "Power", "StoreRun", "node_types",
           "plan_budget", "store_runs", "sweep_budget"]

PRICES_FILE = "cluster-prices.yaml"
DEFAULT_MFU = 0.35
"""MFU assumed where nothing was measured (the science model ran at 38% on an H100, 2026-12-05)."""
DEFAULT_OVERHEAD_S = 60.0
"""Per-trial overhead assumed where nothing was measured, a trial on a TorchTrainer (43-61 s per trial on an H100,
2026-12-05: docs/results/calibration/README.md)."""
IN_PROCESS_OVERHEAD_S = 30.0
"""The same for a one-worker trial trained in its reused Tune process: wall - tokens / rate was 17-21 s for
a process's later trials and 39-55 s for its first (H100, 2026-12-06, the science setup's 600-step trials:
docs/benchmarks.md), so about 30 s over a sweep of a few trials."""

_SHAPE_KEYS = ("model.hidden", "model.n_layers", "model.n_heads", "model.n_kv_heads", "model.ffn_hidden",
               "model.embed_rank", "precision.mode", "precision.recipe", "precision.fp8_layers", "curriculum.preset",
               "train.tokens_per_step", "train.max_tokens_per_microbatch", "scaling.num_workers")
"""Params that decide a run's speed (with the model vocabulary and the card)."""
_VOLATILE = ("run.name", "run.seed", "run.storage_path", "data.output_dir", "data.cache_dir", "tokenizer.path",
             "train.profile_attention")
"""Params that name a run rather than configure it, or only measure it (profiling leaves the losses bit-identical):
ignored when matching a configuration."""


@dataclass(frozen=True)
class NodeType:
    name: str
    accelerator: str
    gpus: int
    max_workers: int
    instance: str
    price_per_hour: float | None
    """On-demand USD per node-hour (None: not in the price table)."""

    @property
    def price_per_gpu_hour(self) -> float | None:
        return None if self.price_per_hour is None else self.price_per_hour / self.gpus


def node_types(cluster_file: str | Path) -> tuple[list[NodeType], dict[str, Any]]:
    """The GPU node types of a cluster-launcher config, with prices from ``cluster-prices.yaml`` beside it, and
    the price table's header (``as_of``, ``source``, ``currency``); a missing table gives no prices."""
    import yaml

    from yxanul.accelerators import available_accelerator_types
    from yxanul.errors import ConfigError

    path = Path(cluster_file)
    try:
        config = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as exc:
        raise ConfigError(f"cannot read the cluster config {path}: {exc}") from None
    prices_path = path.with_name(PRICES_FILE)
    prices: dict[str, Any] = {}
    if prices_path.is_file():
        try:
            prices = yaml.safe_load(prices_path.read_text()) or {}
        except yaml.YAMLError as exc:
            raise ConfigError(f"{prices_path} is not valid YAML: {exc}") from None
    priced = prices.get("node_types") or {}
    out = []
    for name, settings in (config.get("available_node_types") or {}).items():
        resources = settings.get("resources") or {}
        types = available_accelerator_types(resources)
        if not types or not resources.get("GPU"):
            continue
        entry = priced.get(name) or {}
        price = entry.get("per_hour")
        if price is not None and not (isinstance(price, (int, float)) and price >= 0):
            raise ConfigError(f"{prices_path}: node_types.{name}.per_hour must be a number of {prices.get('currency', 'USD')} "
                              f"per node-hour, got {price!r}")
        out.append(NodeType(name, types[0], int(resources["GPU"]), int(settings.get("max_workers", 1)),
                            str((settings.get("node_config") or {}).get("InstanceType", "")),
                            float(price) if price is not None else None))
    header = {k: prices.get(k) for k in ("as_of", "source", "currency") if prices.get(k)}
    if prices_path.is_file():
        header["file"] = str(prices_path)
    return out, header


@dataclass(frozen=True)
class StoreRun:
    """What the planner reads of an earlier finished run."""

    params: dict[str, str]
    tags: dict[str, str]
    metrics: dict[str, float]
    wall_s: float | None


def store_runs(uri: str, limit: int = 5000) -> tuple[list[StoreRun], str]:
    """Finished runs of every experiment in the tracking store, and a note on where they came from (or why
    there are none: a local store that does not exist yet is not created)."""
    from yxanul.tags import STATUS_TAG
    from yxanul.tracking import Status

    if uri.startswith("sqlite:///"):
        local = Path(uri.removeprefix("sqlite:///"))
        if not local.is_file():
            return [], f"no store at {uri} yet"
    try:
        from yxanul.tracking import client

        mlflow = client(uri)
        ids = [e.experiment_id for e in mlflow.search_experiments()]
        runs = mlflow.search_runs(ids, filter_string=f"tags.`{STATUS_TAG}` = '{Status.FINISHED}'",
                                  max_results=limit) if ids else []
    except Exception as exc:  # an unreachable server, a login: the plan is still useful without the store
        from yxanul.errors import first_line

        return [], f"store {uri} not read ({first_line(exc)})"
    out = [StoreRun(dict(r.data.params), dict(r.data.tags), dict(r.data.metrics),
                    (r.info.end_time - r.info.start_time) / 1000 if r.info.end_time else None) for r in runs]
    return out, f"{len(out)} finished runs in {uri}"


def _vocab(cfg: Any) -> int | None:
    """The model vocabulary a trial will have: model.vocab_size, else its prepared dataset's, else the tokenizer
    config's size."""
    if cfg.model.vocab_size:
        return int(cfg.model.vocab_size)
    manifest = Path(cfg.data.output_dir) / "manifest.json"
    if manifest.is_file():
        try:
            return int(json.loads(manifest.read_text())["tokenizer"]["vocab_size"])
        except (OSError, ValueError, KeyError, TypeError):
            pass
    return int(cfg.tokenizer.vocab_size)


def _card(run: StoreRun) -> str | None:
    """The Ray accelerator type (family) of the card a run trained on."""
    from yxanul.accelerators import ray_family, spec_for_device_name
    from yxanul.tags import GPU_NAME_TAG

    name = run.tags.get(GPU_NAME_TAG)
    spec = spec_for_device_name(name) if name else None
    return ray_family(spec.name) if spec else None


def _run_vocab(run: StoreRun) -> int | None:
    from yxanul.tags import VOCAB_SIZE_TAG

    value = run.tags.get(VOCAB_SIZE_TAG) or run.params.get("model.vocab_size")
    if value in (None, "null"):  # runs from before the vocabulary tag: the model took the tokenizer's
        value = run.params.get("tokenizer.vocab_size")
    try:
        return int(value) if value not in (None, "null") else None
    except ValueError:
        return None


def _same_speed(run: StoreRun, flat: dict[str, str], vocab: int | None, card: str) -> bool:
    from yxanul.accelerators import ray_family

    return (_card(run) == ray_family(card) and all(run.params.get(k) == flat.get(k) for k in _SHAPE_KEYS)
            and _run_vocab(run) == vocab and run.metrics.get("train/tokens_per_s", 0) > 0)


def _same_config(run: StoreRun, flat: dict[str, str]) -> bool:
    keys = [k for k in flat if k not in _VOLATILE and not k.startswith("tracking.")]
    return all(run.params.get(k) == flat[k] for k in keys)


@dataclass(frozen=True)
class Rate:
    tokens_per_s: float
    overhead_s: float
    source: str


def _flops_per_token(cfg: Any, vocab: int | None) -> float:
    """Training FLOPs per token, token-weighted over the curriculum's stages."""
    from yxanul.curriculum import build_plan
    from yxanul.metrics import flops_per_token

    plan = build_plan(cfg, cfg.scaling.num_workers)
    total = sum(s.end_tokens - s.start_tokens for s in plan.stages) or 1
    return sum((s.end_tokens - s.start_tokens) * flops_per_token(cfg.model, s.seq_len, vocab)
               for s in plan.stages) / total


def trial_rate(cfg: Any, node: NodeType, runs: Sequence[StoreRun], bench: Sequence[dict[str, Any]],
               in_process: bool = False) -> Rate:
    """The expected tokens/s and overhead of a trial ``cfg`` on ``node`` (``in_process``: trained in its Tune trial
    process, which changes the overhead assumed where the store measured none), and where they come from."""
    from yxanul.accelerators import get_spec, ray_family, spec_for_device_name

    default_overhead = IN_PROCESS_OVERHEAD_S if in_process else DEFAULT_OVERHEAD_S
    flat = cfg.flat_params()
    vocab = _vocab(cfg)
    matched = [r for r in runs if _same_speed(r, flat, vocab, node.accelerator)]
    if matched:
        rates = [r.metrics["train/tokens_per_s"] for r in matched]
        overheads = [r.wall_s - float(r.params.get("train.max_tokens", 0)) / rate
                     for r, rate in zip(matched, rates) if r.wall_s]
        overhead = statistics.median(overheads) if overheads else default_overhead
        return Rate(statistics.median(rates), max(0.0, overhead),
                    f"store: {len(matched)} run{'s' if len(matched) != 1 else ''}")
    workers = cfg.scaling.num_workers
    for runner in ("train", "bench"):
        rows = [b for b in bench if b.get("runner") == runner and b.get("preset") == cfg.model.preset
                and b.get("precision") == cfg.precision.mode and not b.get("error") and b.get("tokens_per_s")
                and (spec := spec_for_device_name(str(b.get("card", "")))) is not None
                and ray_family(spec.name) == ray_family(node.accelerator)]
        if rows:
            rate = statistics.median(b["tokens_per_s"] for b in rows) * workers
            return Rate(rate, default_overhead, f"jobs.{runner} result ({len(rows)} row{'s' if len(rows) != 1 else ''})")
    peak = get_spec(node.accelerator).peak_tflops("bf16")
    rate = DEFAULT_MFU * peak * 1e12 / _flops_per_token(cfg, vocab) * workers
    return Rate(rate, default_overhead, f"peak x {DEFAULT_MFU:.0%} MFU (not measured)")


@dataclass(frozen=True)
class Power:
    """What the design's seeds can detect."""

    metric: str
    seeds: int
    floor: float | None
    """Seed standard deviation of the metric at the reference arm's configuration."""
    sd_diff: float | None
    """Standard deviation of a per-seed paired difference (measured, or sqrt(2) x floor)."""
    source: str
    mde: float | None
    target_effect: float | None
    needed: int | None

    def lines(self) -> list[str]:
        if self.sd_diff is None:
            return [f"power: no noise floor for {self.metric} ({self.source}); give --noise-floor SD, or run the "
                    "reference arm at 2+ seeds first, to learn the smallest effect this design detects"]
        out = [f"power: noise floor {self.floor:.4f} ({self.source}); paired sd {self.sd_diff:.4f}; with "
               f"{self.seeds} seed{'s' if self.seeds != 1 else ''} the smallest difference in {self.metric} "
               "detected 80% of the time at 95%: "
               + (f"{self.mde:.4f}" if self.mde is not None else "none (1 seed: no test)")]
        if self.target_effect is not None:
            out.append(f"target effect {self.target_effect:g} (sweep.target_effect): "
                       + (f"needs {self.needed} seeds" if self.needed else f"needs more than {MOST_SEEDS} seeds"))
        return out


def power(plan: Any, runs: Sequence[StoreRun], store_note: str, noise_floor: float | None) -> Power:
    from yxanul.stats import minimal_detectable_effect, seeds_needed
    from yxanul.tags import ARM_TAG, SWEEP_TAG

    spec = plan.spec
    seeds = len(spec.seed_list) if spec.seeds != "auto" else spec.max_seeds
    reference = [t for t in plan.trials if t.arm == plan.reference] or plan.trials[:1]
    floor = sd_diff = None
    source = store_note
    if noise_floor is not None:
        floor, source = noise_floor, "--noise-floor"
    elif reference:
        flat = reference[0].cfg.flat_params()
        values = [r.metrics[spec.metric] for r in runs if spec.metric in r.metrics and _same_config(r, flat)]
        if len(values) >= 2:
            floor = statistics.stdev(values)
            source = f"{len(values)} earlier runs of the reference configuration"
        else:
            source = f"{len(values)} earlier run{'s' if len(values) != 1 else ''} of the reference configuration"
        # Earlier runs of this very sweep: the paired differences themselves, when an arm and the reference
        # share two or more seeds.
        mine = [r for r in runs if r.tags.get(SWEEP_TAG) == plan.name and spec.metric in r.metrics]
        by_arm: dict[str, dict[str, float]] = {}
        for r in mine:
            by_arm.setdefault(r.tags.get(ARM_TAG, ""), {})[r.params.get("run.seed", "")] = r.metrics[spec.metric]
        ref = by_arm.get(plan.reference, {})
        sds = []
        for arm, values_by_seed in by_arm.items():
            shared = sorted(set(values_by_seed) & set(ref))
            if arm != plan.reference and len(shared) >= 2:
                sds.append(statistics.stdev(values_by_seed[s] - ref[s] for s in shared))
        if sds:
            sd_diff = max(sds)
            source += f"; paired differences of {plan.name}'s earlier runs"
    if floor is not None and sd_diff is None:
        sd_diff = math.sqrt(2) * floor
    mde = minimal_detectable_effect(sd_diff, seeds) if sd_diff is not None else None
    needed = (seeds_needed(sd_diff, spec.target_effect) if sd_diff is not None and spec.target_effect
              else None)
    return Power(spec.metric, seeds, floor, sd_diff, source, mde, spec.target_effect, needed)


@dataclass
class Budget:
    rows: list[tuple[str, ...]]
    totals: list[tuple[str, ...]]
    notes: list[str]
    power: Power
    totals_by_node: dict[str, dict[str, float]] = field(default_factory=dict)

    def text(self) -> str:
        lines = ["time and cost per node type (rates: store = earlier runs in the tracking store, jobs.* = "
                 "benchmark rows, peak = not measured):"]
        lines += table(self.rows) if len(self.rows) > 1 else ["  (no GPU node type of the cluster config can run "
                                                              "these trials)"]
        if len(self.totals) > 1:
            lines += table(self.totals)
        lines += self.notes + self.power.lines()
        return "\n".join(lines)


def _money(value: float | None, currency: str) -> str:
    return "" if value is None else (f"${value:,.2f}" if currency == "USD" else f"{value:,.2f} {currency}")


def plan_budget(plan: Any, *, cluster_file: str | Path, tracking_uri: str, noise_floor: float | None = None,
                bench_files: Iterable[str | Path] = ()) -> Budget:
    """The dry run's time, cost and power section for ``plan`` (a :class:`~yxanul.sweep.trials.SweepPlan`)."""
    from yxanul.accelerators import supports_fp8
    from yxanul.sweep.trials import runs_in_process

    runs, store_note = store_runs(tracking_uri)
    bench = []
    for file in bench_files:
        try:
            bench += [json.loads(line) for line in Path(file).read_text().splitlines() if line.strip()]
        except (OSError, ValueError):
            continue
    nodes, header = node_types(cluster_file)
    currency = str(header.get("currency", "USD"))
    rows = [("node type", "card", "arm", "trials", "tokens/s", "rate from", "per trial", "GPU-hours", "cost")]
    totals = [("node type", "trials", "at once", "GPU-hours", "wall", "cost")]
    by_node: dict[str, dict[str, float]] = {}
    trials = [t for t in plan.trials if t.cfg.scaling.use_gpu]
    # An FP8 arm and the arms paired with it run on one card type (yxanul.sweep.placement): a card without
    # FP8 takes none of them. A pin the user set (resources.accelerator_type) holds; the plan's own pin, made
    # for the cluster at hand, does not (this is a what-if per node type).
    fp8_pairs = {t.pair for t in trials if t.cfg.precision.mode == "fp8"}
    pinned = plan.spec.resources.accelerator_type
    notes: list[str] = []
    for node in nodes:
        fits = [t for t in trials if (t.pair not in fp8_pairs or supports_fp8(node.accelerator))
                and pinned in (None, node.accelerator)]
        if not fits:
            notes.append(f"{node.name} ({node.accelerator}): runs none of these trials"
                         + (" (FP8 arms and their pairs need FP8 tensor cores)" if fp8_pairs else ""))
            continue
        gpu_seconds = 0.0
        for arm in dict.fromkeys(t.arm for t in fits):
            group = [t for t in fits if t.arm == arm]
            rate = trial_rate(group[0].cfg, node, runs, bench, runs_in_process(group[0].cfg, plan.spec.in_process))
            per_trial = group[0].cfg.train.max_tokens / rate.tokens_per_s + rate.overhead_s
            gpus = group[0].cfg.scaling.num_workers
            hours = per_trial * len(group) * gpus / 3600
            price = node.price_per_gpu_hour
            rows.append((node.name, node.accelerator, arm, str(len(group)), human_count(rate.tokens_per_s),
                         rate.source, clock(per_trial), f"{hours:.2f}",
                         _money(hours * price if price is not None else None, currency)))
            gpu_seconds += per_trial * len(group) * gpus
        at_once = max(1, node.gpus * node.max_workers // max(1, fits[0].cfg.scaling.num_workers))
        if plan.spec.max_concurrent_trials:
            at_once = min(at_once, plan.spec.max_concurrent_trials)
        at_once = min(at_once, len(fits))
        wall = gpu_seconds / at_once / max(1, fits[0].cfg.scaling.num_workers)
        cost = gpu_seconds / 3600 * node.price_per_gpu_hour if node.price_per_gpu_hour is not None else None
        share = str(len(fits)) if len(fits) == len(trials) else f"{len(fits)} of {len(trials)}"
        totals.append((node.name, share, str(at_once), f"{gpu_seconds / 3600:.2f}", clock(wall),
                       _money(cost, currency)))
        by_node[node.name] = {"gpu_hours": gpu_seconds / 3600, "wall_s": wall, "cost": cost if cost is not None else -1}
    notes += [f"tracking store: {store_note}; overhead per trial: measured with the rate where the store had runs, "
             f"else {IN_PROCESS_OVERHEAD_S:.0f} s for a trial in its Tune process, {DEFAULT_OVERHEAD_S:.0f} s on a "
             "TorchTrainer (not measured here)"]
    if header:
        notes.append(f"prices: {header.get('file', PRICES_FILE)} ({currency} per node-hour, as of "
                     f"{header.get('as_of', '?')}: edit it for your account and region)")
    else:
        notes.append(f"prices: no {PRICES_FILE} beside {cluster_file}: times only")
    return Budget(rows, totals, notes, power(plan, runs, store_note, noise_floor), by_node)


def sweep_budget(plan: Any, *, cluster_file: str | Path | None = None, noise_floor: float | None = None,
                 bench_files: Sequence[str | Path] | None = None) -> Budget:
    """:func:`plan_budget` with the defaults of a checkout: its ``cluster.yaml``, the trials' tracking store, and
    the benchmark rows committed under ``docs/results/bench/``."""
    from yxanul.config import experiments_dir
    from yxanul.tracking import resolve_tracking_uri

    root = experiments_dir().parent
    cluster = Path(cluster_file) if cluster_file else root / "cluster.yaml"
    if bench_files is None:
        bench_files = sorted((root / "docs" / "results" / "bench").glob("*.jsonl"))
    uri = resolve_tracking_uri(plan.trials[0].cfg.tracking.uri) if plan.trials else ""
    return plan_budget(plan, cluster_file=cluster, tracking_uri=uri, noise_floor=noise_floor, bench_files=bench_files)
