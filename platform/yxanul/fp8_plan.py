"""The FP8 plan, measured on the run's own card: which layer groups pay in FP8.

Whether Transformer Engine FP8 is faster than BF16 depends on the GEMM shapes and the card: at hidden 640
only the 640 -> 200k head gains (an FP8 GEMM must quantize its inputs, which costs more than it saves
on small matrices); from hidden ~1024 up every group gains (docs/benchmarks.md). So
``precision.fp8_layers: auto`` (the default for ``precision.mode=fp8``) times, at start-up, forward +
backward of each layer group's linears at the run's shape, micro-batch and recipe, in BF16 (autocast) and
in FP8 (``te.Linear`` under ``te.autocast``), and keeps FP8 only where it is at least ``MIN_GAIN`` faster:

    plan = measure_fp8_plan(model_cfg, vocab, tokens_per_microbatch=16 * 2048, recipe="delayed",
                            device=torch.device("cuda"), cache_dir=Path("outputs/ray/fp8-plans"))
    plan.layers    # ("head",) on an H200 at hidden 640; ("attention", "mlp", "head") at 2048
    print(plan.table())

A group's time is one block's linears (attention: qkv and proj; mlp: gate_up and down) times the number
of blocks, or the head. Timing uses CUDA events (median of ``iters`` after ``warmup``), on fresh
random inputs, inside ``torch.random.fork_rng`` so the run's own random state is untouched (the FP8 and
BF16 arms of a comparison initialise identically). The result is cached as JSON per (card, shape,
micro-batch, recipe, Transformer Engine and torch versions), so trials of a sweep measure once.
"""

from __future__ import annotations

import hashlib
import json
import statistics
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from yxanul.config import ModelConfig
from yxanul.files import atomic_write
from yxanul.model import padded_vocab_size, resolve_vocab_size

__all__ = ["GROUPS", "MIN_GAIN", "Fp8Plan", "group_shapes", "measure_fp8_plan", "plan_key"]

GROUPS: tuple[str, ...] = ("attention", "mlp", "head")
MIN_GAIN = 0.02
"""A group goes to FP8 only when its FP8 time is at most (1 - MIN_GAIN) x its BF16 time: a gain smaller
than that is within the timing noise seen between repeated measurements, and FP8 costs some accuracy."""


@dataclass
class Fp8Plan:
    """Which groups run in FP8, and the measurement that decided it."""

    layers: tuple[str, ...]
    """The groups kept in FP8 (may be empty: nothing pays at this shape)."""
    timings: dict[str, dict[str, float]]
    """group -> {"bf16_ms": ..., "fp8_ms": ..., "ratio": bf16/fp8} per optimizer-step micro-batch."""
    key: dict[str, Any]
    """What the measurement depends on (card, shape, micro-batch tokens, recipe, versions)."""
    measure_s: float = 0.0
    """Seconds the measurement took (0 when it came from the cache)."""
    cached: bool = False
    source: str = ""
    """The cache file it was read from or written to ("" without a cache)."""
    extra: dict[str, Any] = field(default_factory=dict)

    def describe(self) -> str:
        """One line: ``auto -> head (measured in 6.1 s)``."""
        chosen = "+".join(self.layers) if self.layers else "none (every group is faster in BF16)"
        how = f"cached, {self.source}" if self.cached else f"measured in {self.measure_s:.1f} s"
        return f"fp8_layers auto -> {chosen} ({how})"

    def table(self) -> str:
        """The timing table, as a person reads it on the console."""
        lines = [f"FP8 plan on {self.key.get('card')} ({self.key.get('recipe')} scaling, "
                 f"{self.key.get('tokens_per_microbatch'):,} tokens per micro-batch): forward+backward ms",
                 f"  {'group':<10} {'bf16 ms':>9} {'fp8 ms':>9} {'bf16/fp8':>9}  decision"]
        for group, row in self.timings.items():
            decision = "fp8" if group in self.layers else "bf16"
            lines.append(f"  {group:<10} {row['bf16_ms']:>9.2f} {row['fp8_ms']:>9.2f} {row['ratio']:>8.3f}x  {decision}")
        lines.append(f"  {self.describe()}")
        return "\n".join(lines)

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def group_shapes(cfg: ModelConfig, vocab_size: int | None = None) -> dict[str, tuple[int, list[tuple[int, int]]]]:
    """group -> (repeats, [(in_features, out_features), ...]) of the model's linear layers in that group.
    A tied head is the embedding matrix (no linear): no "head" group then."""
    hd = cfg.hidden // cfg.n_heads
    shapes: dict[str, tuple[int, list[tuple[int, int]]]] = {
        "attention": (cfg.n_layers, [(cfg.hidden, (cfg.n_heads + 2 * cfg.n_kv_heads) * hd),
                                     (cfg.n_heads * hd, cfg.hidden)]),
        "mlp": (cfg.n_layers, [(cfg.hidden, 2 * cfg.ffn_hidden), (cfg.ffn_hidden, cfg.hidden)]),
    }
    if not cfg.tie_embeddings:
        shapes["head"] = (1, [(cfg.hidden, padded_vocab_size(resolve_vocab_size(cfg, vocab_size)))])
    return shapes


def plan_key(cfg: ModelConfig, vocab_size: int | None, tokens_per_microbatch: int, recipe: str,
             device: torch.device) -> dict[str, Any]:
    """What a plan depends on; its hash names the cache file."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        te_version = version("transformer_engine")
    except PackageNotFoundError:
        te_version = None
    return {
        "card": torch.cuda.get_device_name(device) if device.type == "cuda" else str(device),
        "shapes": {g: [r, [list(s) for s in ss]] for g, (r, ss) in group_shapes(cfg, vocab_size).items()},
        "tokens_per_microbatch": int(tokens_per_microbatch),
        "recipe": recipe,
        "transformer_engine": te_version,
        "torch": torch.__version__,
        "min_gain": MIN_GAIN,
    }


def _key_hash(key: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]


def _median_ms(fn: Callable[[], None], warmup: int, iters: int) -> float:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(iters):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end))
    return statistics.median(times)


def _time_group(layers: list[tuple[int, int]], tokens: int, fp8: bool, recipe_obj: Any, device: torch.device,
                warmup: int, iters: int) -> float:
    """Median ms of forward + backward through each of ``layers`` (separately, as in the model)."""
    import transformer_engine.pytorch as te

    mods, inputs, grads = [], [], []
    for fan_in, fan_out in layers:
        if fp8:
            mods.append(te.Linear(fan_in, fan_out, bias=False, params_dtype=torch.float32, device=device))
        else:
            mods.append(torch.nn.Linear(fan_in, fan_out, bias=False, device=device))
        inputs.append(torch.randn(tokens, fan_in, device=device, dtype=torch.bfloat16, requires_grad=True))
        grads.append(torch.randn(tokens, fan_out, device=device, dtype=torch.bfloat16))

    def once() -> None:
        for mod, x, g in zip(mods, inputs, grads):
            with torch.autocast("cuda", dtype=torch.bfloat16):
                if fp8:
                    with te.autocast(enabled=True, recipe=recipe_obj):
                        y = mod(x)
                else:
                    y = mod(x)
            y.backward(g)

    return _median_ms(once, warmup, iters)


def measure_fp8_plan(cfg: ModelConfig, vocab_size: int | None, *, tokens_per_microbatch: int, recipe: str,
                     device: torch.device, cache_dir: Path | None = None, warmup: int = 3, iters: int = 10,
                     log: Callable[[str], None] | None = None) -> Fp8Plan:
    """Measure (or read from ``cache_dir``) which layer groups are faster in FP8 at this shape."""
    from yxanul.errors import PrecisionError
    from yxanul.precision import build_recipe

    if device.type != "cuda":
        raise PrecisionError("precision.fp8_layers=auto measures FP8 against BF16 on the GPU; this process has no "
                             "CUDA device (FP8 needs one anyway)")
    key = plan_key(cfg, vocab_size, tokens_per_microbatch, recipe, device)
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
    recipe_obj = build_recipe(recipe)
    timings: dict[str, dict[str, float]] = {}
    with torch.random.fork_rng(devices=[device]):  # the run's random state stays as it was
        torch.manual_seed(0)
        for group, (repeats, layers) in group_shapes(cfg, vocab_size).items():
            bf16 = repeats * _time_group(layers, tokens_per_microbatch, False, recipe_obj, device, warmup, iters)
            fp8 = repeats * _time_group(layers, tokens_per_microbatch, True, recipe_obj, device, warmup, iters)
            timings[group] = {"bf16_ms": bf16, "fp8_ms": fp8, "ratio": bf16 / fp8}
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
