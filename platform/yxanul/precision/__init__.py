"""Everything that knows about fp32, bf16 and FP8 (Transformer Engine), in one package.

    precision = Precision(cfg.precision, device)          # policy: support checks, the FP8 swap, autocast
    plan = measure_fp8_plan(model, tokens_per_microbatch=..., recipe="delayed", device=device)   # fp8_layers: auto
    precision.use_plan(plan); precision.apply(model)
    compile_model(model)                                  # regional torch.compile around TE modules
    weights, fp8_state = split_state_dict(model.state_dict())   # checkpoints portable across precisions

- :mod:`~yxanul.precision.policy`: :class:`Precision`, recipes, which modules are Transformer Engine's;
- :mod:`~yxanul.precision.fp8_plan`: the FP8 plan measured on the run's card (time and memory per layer group,
  layer shapes read from the model);
- :mod:`~yxanul.precision.state`: TE's FP8 scaling state in checkpoints;
- :mod:`~yxanul.precision.compile`: regional compilation and the shared Inductor cache.

Outside this package, FP8 appears only as data: the card table (``yxanul.accelerators``: which cards and
recipes can run FP8, their peaks), the placement of FP8 sweep trials on such cards (``yxanul.sweep``), and the
model's layer groups (``Yxanul.linear_names``), which this package swaps. Transformer Engine is imported only
inside the functions that need it: the CPU install never imports it.
"""

from yxanul.precision.compile import COMPILE_CACHE_ENV, compile_model, use_compile_cache
from yxanul.precision.fp8_plan import GROUPS, MIN_GAIN, Fp8Plan, LayerShape, layer_shapes, measure_fp8_plan
from yxanul.precision.policy import (
    Precision,
    build_recipe,
    fp8_modules,
    import_te,
    is_te_module,
    preload_te,
    reset_te_state,
)
from yxanul.precision.state import EXTRA_STATE_SUFFIX, load_model_state, split_state_dict

__all__ = [
    "COMPILE_CACHE_ENV",
    "EXTRA_STATE_SUFFIX",
    "GROUPS",
    "MIN_GAIN",
    "Fp8Plan",
    "LayerShape",
    "Precision",
    "build_recipe",
    "compile_model",
    "fp8_modules",
    "import_te",
    "is_te_module",
    "layer_shapes",
    "load_model_state",
    "measure_fp8_plan",
    "preload_te",
    "reset_te_state",
    "split_state_dict",
    "use_compile_cache",
]
