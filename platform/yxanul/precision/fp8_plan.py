"""The FP8 plan, measured on the run's own card: which layer groups pay in FP8, and what each costs in memory.

Whether Transformer Engine FP8 is faster than BF16 depends on the GEMM shapes and the card: at hidden 640
only the 640 -> 200k head gains (an FP8 GEMM must quantize its inputs, which costs more than it saves
on small matrices); from hidden ~1024 up every group gains (docs/benchmarks.md). So
``precision.fp8_layers: auto`` (the default for ``precision.mode=fp8``) times, at start-up, forward +
backward of each layer group's linears at the run's shape, micro-batch and recipe, in BF16 (autocast) and
in FP8 (``te.Linear`` under ``te.autocast``), and keeps FP8 only where it is at least ``MIN_GAIN`` faster:

    plan = measure_fp8_plan(model, tokens_per_microbatch=16 * 2048, recipe="delayed",
                            device=torch.device("cuda"), cache_dir=Path("outputs/ray/fp8-plans"))
    plan.layers    # ("head",) on an H200 at hidden 640; ("attention", "mlp", "head") at 2048
    print(plan.table())

The layer shapes are read from the model as built (:func:`layer_shapes`: every linear of a group, counted by
shape; the head as it runs, per chunk of ``model.head_chunk_tokens`` when the model chunks it), never
recomputed from the config. A group's time is the sum over its shapes of calls x the time of one call (CUDA
events around ``iters`` calls run back to back after ``warmup``, as training runs them; then the median of
``rounds`` such measurements, BF16 and FP8 of a shape taken side by side in each round); its memory is the
largest extra memory one call allocates during forward + backward (the inputs and weights it is given excluded):
what FP8 adds or saves per layer, e.g. the FP8 copies of a 200k-wide head's gradient. Fresh random inputs,
inside ``torch.random.fork_rng`` so the run's own random state is untouched (the FP8 and BF16 arms of a
comparison initialise identically). The result is cached as JSON per (card, shapes, micro-batch, recipe,
Transformer Engine and torch versions), so trials of a sweep measure once. ``measure`` replaces the CUDA
measurement (tests drive the plan with a fake one on CPU).
"""

from __future__ import annotations

import hashlib
import json
import statistics
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from yxanul.config import LAYER_GROUPS
from yxanul.files import atomic_write

__all__ = ["GROUPS", "MIN_GAIN", "Fp8Plan", "LayerShape", "Measure", "layer_shapes", "measure_fp8_plan", "per_call_ms",
           "plan_key"]

GROUPS: tuple[str, ...] = LAYER_GROUPS
MIN_GAIN = 0.02
"""A group goes to FP8 only when its FP8 time is at most (1 - MIN_GAIN) x its BF16 time: a gain smaller
than that is within the timing noise seen between repeated measurements, and FP8 costs some accuracy."""
_FORMAT = 4
"""Version of the cached plan's content (2: memory per group, shapes read from the model; 3: medians of rounds;
4: the time of calls run back to back)."""


@dataclass(frozen=True)
class LayerShape:
    """One distinct linear shape of a layer group, as one micro-batch runs it."""

    in_features: int
    out_features: int
    tokens: int
    """Tokens per call: the micro-batch, or a chunk of it for a chunked head."""
    calls: int
    """Calls per micro-batch: layers of this shape x chunks."""


Measure = Callable[[LayerShape, bool], tuple[float, int]]
"""(shape, fp8) -> (milliseconds of one forward + backward call, peak extra bytes of that call)."""


@dataclass
class Fp8Plan:
    """Which groups run in FP8, and the measurement that decided it."""

    layers: tuple[str, ...]
    """The groups kept in FP8 (may be empty: nothing pays at this shape)."""
    timings: dict[str, dict[str, float]]
    """group -> {"bf16_ms", "fp8_ms", "ratio" (bf16/fp8), "bf16_mib", "fp8_mib"} per optimizer-step micro-batch;
    the MiB are the largest extra memory one call of the group's layers allocates in forward + backward."""
    key: dict[str, Any]
    """What the measurement depends on (card, shapes, micro-batch tokens, recipe, versions)."""
    measure_s: float = 0.0
    """Seconds the measurement took (0 when it came from the cache)."""
    cached: bool = False
    source: str = ""
    """The cache file it was read from or written to ("" without a cache)."""

    def describe(self) -> str:
        """One line: ``auto -> head (measured in 6.1 s)``."""
        chosen = "+".join(self.layers) if self.layers else "none (every group is faster in BF16)"
        how = f"cached, {self.source}" if self.cached else f"measured in {self.measure_s:.1f} s"
        return f"fp8_layers auto -> {chosen} ({how})"

    def group_line(self, group: str) -> str:
        """``bf16 39.50 ms 4,352 MiB, fp8 29.88 ms 5,120 MiB`` (the ``yxanul.fp8_plan.<group>`` tag)."""
        row = self.timings[group]
        return (f"bf16 {row['bf16_ms']:.2f} ms {row['bf16_mib']:,.0f} MiB, "
                f"fp8 {row['fp8_ms']:.2f} ms {row['fp8_mib']:,.0f} MiB")

    def table(self) -> str:
        """The timing and memory table, as a person reads it on the console."""
        lines = [f"FP8 plan on {self.key.get('card')} ({self.key.get('recipe')} scaling, "
                 f"{self.key.get('tokens_per_microbatch'):,} tokens per micro-batch): forward+backward ms per "
                 "micro-batch, peak extra MiB of one layer call",
                 f"  {'group':<10} {'bf16 ms':>9} {'fp8 ms':>9} {'bf16/fp8':>9} {'bf16 MiB':>9} {'fp8 MiB':>9}  decision"]
        for group, row in self.timings.items():
            decision = "fp8" if group in self.layers else "bf16"
            lines.append(f"  {group:<10} {row['bf16_ms']:>9.2f} {row['fp8_ms']:>9.2f} {row['ratio']:>8.3f}x "
                         f"{row['bf16_mib']:>9,.0f} {row['fp8_mib']:>9,.0f}  {decision}")
        lines.append(f"  {self.describe()}")
        return "\n".join(lines)

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def layer_shapes(model: nn.Module, tokens_per_microbatch: int) -> dict[str, list[LayerShape]]:
    """group -> the distinct linear shapes of that group in ``model`` as built, with their calls per micro-batch
    of ``tokens_per_microbatch`` tokens. Read from the model's modules (``model.linear_names(group)``), so a
    shape the config would compute differently cannot go unmeasured. The head runs per chunk of
    ``model.head_chunk_tokens`` when the model chunks it (yxanul.model.linear_cross_entropy). A tied head is the
    embedding matrix, not a linear: no "head" group then."""
    chunk = int(getattr(model, "head_chunk_tokens", 0) or 0)
    shapes: dict[str, list[LayerShape]] = {}
    for group in GROUPS:
        counts = Counter((m.in_features, m.out_features)
                         for m in (model.get_submodule(n) for n in model.linear_names(group)))  # type: ignore[operator]
        rows: list[LayerShape] = []
        for (fan_in, fan_out), count in counts.items():
            if group == "head" and 0 < chunk < tokens_per_microbatch:
                full, rest = divmod(tokens_per_microbatch, chunk)
                rows.append(LayerShape(fan_in, fan_out, chunk, count * full))
                if rest:
                    rows.append(LayerShape(fan_in, fan_out, rest, count))
            else:
                rows.append(LayerShape(fan_in, fan_out, tokens_per_microbatch, count))
        if rows:
            shapes[group] = rows
    return shapes


def plan_key(model: nn.Module, tokens_per_microbatch: int, recipe: str, device: torch.device, rounds: int
             ) -> dict[str, Any]:
    """What a plan depends on; its hash names the cache file."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        te_version = version("transformer_engine")
    except PackageNotFoundError:
        te_version = None
    return {
        "format": _FORMAT,
        "card": torch.cuda.get_device_name(device) if device.type == "cuda" else str(device),
        "shapes": {g: [[s.in_features, s.out_features, s.tokens, s.calls] for s in rows]
                   for g, rows in layer_shapes(model, tokens_per_microbatch).items()},
        "tokens_per_microbatch": int(tokens_per_microbatch),
        "recipe": recipe,
        "transformer_engine": te_version,
        "torch": torch.__version__,
        "min_gain": MIN_GAIN,
        "rounds": int(rounds),
    }


def _key_hash(key: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]


def per_call_ms(fn: Callable[[], None], warmup: int, iters: int) -> float:
    """Milliseconds per call of ``fn``: ``iters`` calls back to back between two CUDA events (after ``warmup``
    calls), their mean. Back to back, as training runs its layers: the host queues the next call while the GPU
    runs this one, so a call's Python and launch work counts where it outlasts its GPU work and not on top of
    it. Timed one synchronised call at a time (until 2026-12-07), FP8 varied between processes where BF16 did
    not: attention at width 2048, FP8 37.6 ms in the bench's plan and 47.1 ms in the job's, BF16 40.4 and 40.6
    (one H100); FP8 calls carry more host work (Transformer Engine's quantization bookkeeping), a likely cause."""
    for _ in range(warmup):
        fn()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(iters):
        fn()
    end.record()
    end.synchronize()
    return start.elapsed_time(end) / iters


def _cuda_measure(recipe_obj: Any, device: torch.device, warmup: int, iters: int) -> Measure:
    """The real measurement: one linear of the shape, forward + backward on fresh inputs, BF16 autocast or
    ``te.Linear`` under ``te.autocast``; its time per call (:func:`per_call_ms`), then the peak memory of one more
    call above what was allocated before it (inputs, weights and their gradients of the earlier calls)."""
    import transformer_engine.pytorch as te

    def measure(shape: LayerShape, fp8: bool) -> tuple[float, int]:
        if fp8:
            mod = te.Linear(shape.in_features, shape.out_features, bias=False, params_dtype=torch.float32,
                            device=device)
        else:
            mod = nn.Linear(shape.in_features, shape.out_features, bias=False, device=device)
        x = torch.randn(shape.tokens, shape.in_features, device=device, dtype=torch.bfloat16, requires_grad=True)
        grad = torch.randn(shape.tokens, shape.out_features, device=device, dtype=torch.bfloat16)

        def once() -> None:
            with torch.autocast("cuda", dtype=torch.bfloat16):
                if fp8:
                    with te.autocast(enabled=True, recipe=recipe_obj):
                        y = mod(x)
                else:
                    y = mod(x)
            y.backward(grad)

        ms = per_call_ms(once, warmup, iters)
        torch.cuda.synchronize(device)
        before = torch.cuda.memory_allocated(device)
        torch.cuda.reset_peak_memory_stats(device)
        once()
        torch.cuda.synchronize(device)
        return ms, torch.cuda.max_memory_allocated(device) - before  # the layer is freed on return

    return measure


def measure_fp8_plan(model: nn.Module, *, tokens_per_microbatch: int, recipe: str, device: torch.device,
                     cache_dir: Path | None = None, warmup: int = 3, iters: int = 10, rounds: int = 3,
                     log: Callable[[str], None] | None = None, measure: Measure | None = None) -> Fp8Plan:
    """Measure (or read from ``cache_dir``) which layer groups of ``model`` are faster in FP8 at this micro-batch,
    and what one call of each costs in memory. ``model`` is the model as it will train, before the FP8 swap.

    Every shape is measured ``rounds`` times in BF16 and FP8 side by side (their order flipped each round) and each
    arm's median taken: measured one group and one precision after the other, a card's drift (clocks, caches, the
    first calls of a kernel) landed on one arm, and one process's plan kept attention at width 2048 in BF16 where
    the bench's had it 1.08x faster in FP8 (H100, 2026-12-07)."""
    from yxanul.errors import PrecisionError
    from yxanul.precision.policy import build_recipe

    if measure is None and device.type != "cuda":
        raise PrecisionError("precision.fp8_layers=auto measures FP8 against BF16 on the GPU; this process has no "
                             "CUDA device (FP8 needs one anyway)")
    if rounds < 1:
        raise ValueError(f"rounds must be at least 1, got {rounds}")
    key = plan_key(model, tokens_per_microbatch, recipe, device, rounds)
    path = cache_dir / f"fp8-plan-{_key_hash(key)}.json" if cache_dir is not None else None
    if path is not None and path.is_file():
        try:
            data = json.loads(path.read_text())
            if data.get("key") == key:
                plan = Fp8Plan(layers=tuple(data["layers"]), timings=data["timings"], key=key, cached=True,
                               source=str(path))
                if log:
                    log(plan.table())
                return plan
        except (OSError, ValueError, KeyError):
            pass  # a damaged cache file is measured again and rewritten
    t0 = time.perf_counter()
    run = measure or _cuda_measure(build_recipe(recipe), device, warmup, iters)
    shapes_by_group = layer_shapes(model, tokens_per_microbatch)
    samples: dict[tuple[str, int, bool], list[tuple[float, int]]] = {}
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):  # the run's RNG stays as it was
        torch.manual_seed(0)
        for round_ in range(rounds):  # BF16 and FP8 of a shape side by side, their order flipped each round
            for group, shapes in shapes_by_group.items():
                for i, shape in enumerate(shapes):
                    for fp8 in ((False, True) if round_ % 2 == 0 else (True, False)):
                        samples.setdefault((group, i, fp8), []).append(run(shape, fp8))
    timings: dict[str, dict[str, float]] = {}
    for group, shapes in shapes_by_group.items():
        row: dict[str, float] = {}
        for label, fp8 in (("bf16", False), ("fp8", True)):
            measured = [samples[(group, i, fp8)] for i in range(len(shapes))]
            row[f"{label}_ms"] = sum(shape.calls * statistics.median(ms for ms, _ in runs)
                                     for shape, runs in zip(shapes, measured))
            row[f"{label}_mib"] = max(peak for runs in measured for _, peak in runs) / 2**20  # one call at a time
        row["ratio"] = row["bf16_ms"] / row["fp8_ms"]
        timings[group] = row
    if device.type == "cuda":
        torch.cuda.empty_cache()
    layers_kept = tuple(g for g in GROUPS if g in timings and timings[g]["fp8_ms"] <= (1 - MIN_GAIN) * timings[g]["bf16_ms"])
    plan = Fp8Plan(layers=layers_kept, timings=timings, key=key, measure_s=time.perf_counter() - t0)
    if path is not None:
        plan.source = str(path)
        atomic_write(path, json.dumps({"layers": list(plan.layers), "timings": timings, "key": key,  # concurrent
                                       "measure_s": plan.measure_s}, indent=2))  # trials write identical content
    if log:
        log(plan.table())
    return plan
