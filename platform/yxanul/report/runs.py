"""A run as the report reads it (:class:`RunSeries`) and what its tags say ran: arm and grid point, seed,
real status, card, resolved precision, spikes. Pure: no MLflow here (``fetch`` builds these).

Everything the report says about a run comes from what the run recorded: tags for what ran (the resolved FP8
plan, the card, the arm), params for what was asked (the config), metrics for what happened. Runs recorded
before a tag existed fall back in one place each (:func:`legacy_arm`, :func:`ran_precision`), and say so.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from yxanul.formatting import human_count
from yxanul.tags import (
    ARM_TAG,
    AXES_TAG,
    BOOT_ID_TAG,
    CUDA_VERSION_TAG,
    CURRICULUM_STAGES_TAG,
    FP8_LAYERS_TAG,
    GPU_COUNT_TAG,
    GPU_DRIVER_TAG,
    GPU_NAME_TAG,
    PRECISION_PLAN_TAG,
    PRECISION_RAN_TAG,
    SIMULATED_TAG,
    SPIKE_CHECK_TAG,
    TOKENIZER_VOCAB_TAG,
    VOCAB_SIZE_TAG,
)

if TYPE_CHECKING:
    from yxanul.config import ModelConfig

__all__ = ["RanPrecision", "RunSeries", "RunStage", "Series", "Spike", "int_tag", "legacy_arm", "model_config",
           "ran_precision", "run_spikes", "run_stages", "spike_check", "vocabularies", "without_replicate"]

Series = list[tuple[int, float]]
"""(tokens, value) points sorted by tokens (every metric's step is the tokens seen)."""

SPIKE_METRICS = ("train/spike_grad_norm", "train/spike_loss")


@dataclass
class RunSeries:
    """One MLflow run: identity, verdict, params, tags and the metric series the report uses."""

    run_id: str
    name: str
    variant: str
    """The trial's label (``yxanul.variant``), for people; the arm comes from its own tag."""
    arm: str
    """The arm (``yxanul.arm``; runs recorded before it: :func:`legacy_arm` of the label)."""
    pair: str | None = None
    """The precision pair with its seed (``yxanul.pair``); arms of an FP8/BF16 pair share it without the seed."""
    axes: dict[str, str] | None = None
    """The grid point ``{axis: value}`` (``yxanul.axes``); None for runs that did not record it."""
    seed: int | None = None
    status: str = "finished"
    """``yxanul.status`` (else MLflow's), reconciled with the parent run: a run left ``running`` by a sweep that
    ended is ``did_not_finish``."""
    reason: str = ""
    metrics: dict[str, Series] = field(default_factory=dict)
    tags: dict[str, str] = field(default_factory=dict)
    params: dict[str, str] = field(default_factory=dict)
    start_time_ms: int | None = None
    end_time_ms: int | None = None
    experiment_id: str = ""
    logged_ms: dict[str, list[int]] = field(default_factory=dict)
    """When each point of a series was logged (ms since the epoch, aligned with :meth:`series`), for the series
    whose reading needs it (``train/compile_s`` of runs before ``yxanul.compile_s_scope``)."""

    def series(self, key: str) -> Series:
        return self.metrics.get(key, [])

    @property
    def replicate(self) -> int:
        """The seed (0 when the run recorded none)."""
        return self.seed if self.seed is not None else 0

    @property
    def finished(self) -> bool:
        return self.status == "finished"

    @property
    def pair_group(self) -> str | None:
        """The precision pair without the seed: the arms of one FP8/BF16 pair share it (None: not in a sweep)."""
        return None if self.pair is None else without_replicate(self.pair)

    @property
    def precision(self) -> str | None:
        """``precision.mode`` as asked (what ran: :func:`ran_precision`)."""
        return self.params.get("precision.mode")

    @property
    def domains(self) -> list[str]:
        return sorted(k.split("/")[1] for k in self.metrics
                      if k.startswith("val/") and k.endswith("/bpb") and k.count("/") == 2)

    @property
    def card(self) -> str | None:
        """The full device name (``NVIDIA H200``), ``CPU``, or None when not recorded."""
        name = self.tags.get(GPU_NAME_TAG)
        if not name:
            return None
        return "CPU" if name in ("none", "unavailable") else name

    @property
    def boot_id(self) -> str | None:
        """The boot id of the machine rank 0 ran on: another one is another machine; None where not recorded (runs
        before 2026-12-06, not Linux)."""
        return self.tags.get(BOOT_ID_TAG) or None

    @property
    def gpu_count(self) -> int | None:
        text = self.tags.get(GPU_COUNT_TAG, "")
        return int(text) if text.isdigit() else None

    @property
    def machine(self) -> str:
        """``1x NVIDIA H200 (driver 580.159.04, CUDA 13.0)``; what was not recorded is said."""
        card = self.card
        if card is None:
            return "card not recorded"
        if card == "CPU":
            return "CPU"
        extra = [f"driver {self.tags[GPU_DRIVER_TAG]}" if self.tags.get(GPU_DRIVER_TAG) else "driver not recorded",
                 f"CUDA {self.tags[CUDA_VERSION_TAG]}" if self.tags.get(CUDA_VERSION_TAG) else "CUDA not recorded"]
        count = self.gpu_count
        return f"{count if count is not None else '?'}x {card} ({', '.join(extra)})"


def without_replicate(label: str) -> str:
    """``label`` without its trailing ``seed=N`` and ``sample=N`` parts, which the sweep's planner always
    appends last (values may contain commas, so only those trailing parts are looked at); may be empty."""
    parts = label.split(",")
    while parts:
        key, _, value = parts[-1].partition("=")
        if key not in ("seed", "sample") or not value.lstrip("-").isdigit():
            break
        parts.pop()
    return ",".join(parts)


def legacy_arm(label: str) -> str:
    """The arm of a run recorded before ``yxanul.arm``: its label without seed and sample."""
    return without_replicate(label) or label


def legacy_seed(label: str) -> int | None:
    """The ``seed=N`` part of a label (runs that recorded no ``run.seed`` param)."""
    for part in reversed(label.split(",")):
        key, _, value = part.partition("=")
        if key == "seed" and value.lstrip("-").isdigit():
            return int(value)
    return None


def arm_and_axes(tags: dict[str, str], variant: str) -> tuple[str, dict[str, str] | None]:
    """(arm, grid point) from the run's tags; runs without them: (:func:`legacy_arm` of the label, None)."""
    axes = None
    if tags.get(AXES_TAG):
        try:
            loaded = json.loads(tags[AXES_TAG])
            axes = {str(k): str(v) for k, v in loaded.items()} if isinstance(loaded, dict) else None
        except json.JSONDecodeError:
            axes = None
    return tags.get(ARM_TAG) or legacy_arm(variant), axes


# ---------------------------------------------------------------------------------------------------
# What precision ran


@dataclass(frozen=True)
class RanPrecision:
    """The precision a run trained in, from the tags its worker wrote after building the model."""

    asked: str
    """``precision.mode`` as configured."""
    mode: str
    """What ran: ``fp32``, ``bf16`` or ``fp8`` (a run without the plan tag: as asked, its FP8 groups unknown)."""
    recipe: str | None = None
    layers: tuple[str, ...] | None = None
    """FP8 only: the layer groups that ran in FP8 (empty: the plan kept none); None when not recorded."""
    measured: bool = False
    """The FP8 groups were chosen by measurement (``precision.fp8_layers: auto``)."""
    simulated: bool = False

    @property
    def fp8_used(self) -> bool:
        return self.mode == "fp8" and bool(self.layers)

    def describe(self) -> str:
        """``FP8 (delayed) on attention+mlp+head``, ``BF16``, ``BF16 (FP8 asked; the plan kept no layer in FP8)``."""
        if self.simulated:
            return f"{self.mode.upper()} (simulated; {self.asked.upper()} asked)"
        if self.mode != "fp8":
            return self.mode.upper()
        recipe = f" ({self.recipe})" if self.recipe else ""
        if self.layers is None:
            return f"FP8{recipe} (layer groups not recorded)"
        if not self.layers:
            return "BF16 (FP8 asked; the plan kept no layer in FP8)"
        return f"FP8{recipe} on {'+'.join(self.layers)}" + (", planned by measurement" if self.measured else "")


def ran_precision(run: RunSeries) -> RanPrecision:
    """What precision ``run`` trained in: ``yxanul.fp8_layers`` (every FP8 run since it was written for forced
    plans too), else the worker's ``yxanul.precision_plan`` sentence (``fp8 (delayed; attention,mlp)``,
    ``fp8 (delayed; auto -> head)``; older runs), never the ``precision.fp8_layers`` param: that is what was
    asked, and a measured plan may have kept no FP8 group at all."""
    asked = run.params.get("precision.mode") or "unknown"
    recipe = run.params.get("precision.recipe")
    measured = run.params.get("precision.fp8_layers") == "auto"
    if run.tags.get(SIMULATED_TAG) == "true":
        return RanPrecision(asked, run.tags.get(PRECISION_RAN_TAG, "fp32"), simulated=True)
    plan = run.tags.get(PRECISION_PLAN_TAG)
    if plan is None:  # never built, or recorded before the tag: the mode ran as asked (never a silent fallback)
        return RanPrecision(asked, asked, recipe if asked == "fp8" else None)
    mode = plan.split(" ", 1)[0]
    if mode != "fp8":
        return RanPrecision(asked, mode)
    layers: tuple[str, ...] | None = None
    if run.tags.get(FP8_LAYERS_TAG):
        text = run.tags[FP8_LAYERS_TAG]
        layers = () if text == "none" else tuple(text.split("+"))
    elif plan.startswith("fp8 (") and plan.endswith(")"):  # Precision.describe(): "fp8 (<recipe>; <groups>)"
        recipe, _, groups = plan[len("fp8 ("):-1].partition("; ")
        measured = groups.startswith("auto")
        groups = groups.removeprefix("auto -> ")
        if groups.startswith("no layer pays"):
            layers = ()
        elif "not measured" not in groups:
            layers = tuple(g for g in groups.split(",") if g)
    return RanPrecision(asked, "fp8", recipe, layers, measured)


# ---------------------------------------------------------------------------------------------------
# Spikes and gradients: behind two small functions, so a change of what the loop logs is one edit here


@dataclass(frozen=True)
class Spike:
    kind: str
    """``grad_norm`` or ``loss``."""
    tokens: int
    size: float
    """x the running median (grad norm) or nats above it (loss)."""

    def describe(self) -> str:
        if self.kind == "grad_norm":
            return f"grad norm at {human_count(self.tokens)} tokens ({self.size:.1f}x median)"
        return f"loss at {human_count(self.tokens)} tokens (+{self.size:.2f} nats)"


def run_spikes(run: RunSeries) -> list[Spike]:
    """The spikes the training loop logged (``train/spike_grad_norm``, ``train/spike_loss`` at their tokens)."""
    out = [Spike(key.removeprefix("train/spike_"), t, v) for key in SPIKE_METRICS for t, v in run.series(key)
           if math.isfinite(v)]
    return sorted(out, key=lambda s: s.tokens)


def spike_check(run: RunSeries) -> str:
    """What the training loop's spike check covered: ``none`` (checked, nothing found), ``not checked`` (the run
    was too short to check: never read as "no spike"), ``not recorded`` (a run from before the check tag), or
    the number of spikes found."""
    spikes = run_spikes(run)
    if spikes:
        return f"{len(spikes)} spike{'s' if len(spikes) != 1 else ''}"
    status = run.tags.get(SPIKE_CHECK_TAG)
    if status is None:
        return "not recorded"
    return "not checked" if status.startswith("not checked") else "none"


def grad_norm_series(run: RunSeries) -> Series:
    """The gradient norm of each logging interval: its largest step (``train/grad_norm_max``, what the spike check
    reads) where the run logged it, else the interval's last step (``train/grad_norm``, older runs)."""
    return run.series("train/grad_norm_max") or run.series("train/grad_norm")


# ---------------------------------------------------------------------------------------------------
# The model and the curriculum the run trained


def int_tag(run: RunSeries, tag: str) -> int | None:
    text = run.tags.get(tag, "")
    return int(text) if text.isdigit() else None


def vocabularies(run: RunSeries) -> tuple[int | None, int | None]:
    """(the model's vocabulary, the tokenizer's) as the run recorded them (tags; params for older runs)."""
    vocab, tokenizer = int_tag(run, VOCAB_SIZE_TAG), int_tag(run, TOKENIZER_VOCAB_TAG)
    if vocab is None and run.params.get("model.vocab_size", "").isdigit():
        vocab = int(run.params["model.vocab_size"])
    if tokenizer is None and run.params.get("tokenizer.vocab_size", "").isdigit():
        tokenizer = int(run.params["tokenizer.vocab_size"])
    return vocab, tokenizer


def model_config(run: RunSeries) -> ModelConfig | None:
    """The model the run trained, from its ``model.*`` params (which hold the preset's resolved fields); None for a
    run of an older config schema, or one that recorded no model: the caller says "not recorded" rather than guess."""
    import yaml

    from yxanul.config import ModelConfig

    fields = {k.removeprefix("model."): yaml.safe_load(v) for k, v in run.params.items() if k.startswith("model.")}
    fields.pop("preset", None)
    if not fields:
        return None
    try:
        return ModelConfig.model_validate(fields)
    except Exception:  # pydantic's ValidationError, or YAML that is not a field value
        return None


@dataclass(frozen=True)
class RunStage:
    """One curriculum stage of a run: its sequence length and the tokens it spans, ``(start_tokens, end_tokens]``."""

    index: int
    seq_len: int
    start_tokens: int
    end_tokens: int


def run_stages(run: RunSeries) -> tuple[list[RunStage], bool]:
    """The curriculum stages the run trained and whether their bounds are exact: the worker's
    ``yxanul.curriculum_stages`` tag (the plan that ran), else, for runs recorded before it, read off the logged
    ``train/stage`` and ``train/seq_len`` points (a stage then starts at the last point of the stage before: its
    bounds are known to within a logging interval). No stage at all: ``([], False)``."""
    text = run.tags.get(CURRICULUM_STAGES_TAG)
    if text:
        try:
            return [RunStage(int(i), int(seq), int(start), int(end)) for i, seq, start, end in json.loads(text)], True
        except (ValueError, TypeError):
            pass  # not the format this reader knows: the logged points still say it
    seq_len = dict(run.series("train/seq_len"))
    bounds: list[list[int]] = []  # [index, seq_len, start, end]
    previous = 0
    for tokens, value in run.series("train/stage"):
        index = int(value)
        if bounds and bounds[-1][0] == index:
            bounds[-1][3] = tokens
        else:
            bounds.append([index, int(seq_len.get(tokens, 0)), previous, tokens])
        previous = tokens
    return [RunStage(*b) for b in bounds], False
