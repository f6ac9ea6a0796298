"""The precision policy of one process: support checks, the FP8 layer swap, autocast.

    precision = Precision(cfg.precision, device)   # checks support up front, raises PrecisionError
    model = precision.apply(Yxanul(cfg.model, vocab).to(device))  # FP8: swaps the chosen linears
    with precision.autocast():
        loss = model(tokens, targets=targets)
    with precision.autocast(fp8=False):              # the BF16 evaluation path: TE layers, FP8 off
        bf16_loss = model(tokens, targets=targets)

- ``fp32``: no autocast (CPU tests, references).
- ``bf16``: ``torch.autocast(dtype=bfloat16)``; weights, gradients and optimizer state stay fp32.
- ``fp8``: the linear layers named by ``precision.fp8_layers`` (attention, mlp, head) become
  ``transformer_engine.pytorch.Linear`` (fp32 master weights, copied over), and the forward runs
  under ``torch.autocast(bf16)`` plus ``te.autocast(recipe=...)``. Embeddings, norms, attention
  softmax and the loss stay in bf16/fp32.

FP8 fails loudly: no CUDA, compute capability below 8.9, Transformer Engine not installed, a recipe
the card cannot run, or a GEMM dimension FP8 cannot take all raise :class:`PrecisionError` with what
is needed. Nothing ever falls back to BF16 silently. Transformer Engine is imported only when FP8 is
asked for, so the CPU install never needs it.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import torch
from torch import nn

from yxanul.config import PrecisionConfig
from yxanul.errors import PrecisionError

__all__ = ["Precision", "build_recipe", "fp8_modules", "import_te", "is_te_module", "reset_te_state"]

_GPU_INSTALL = "install Transformer Engine with `pip install .[gpu]` (transformer-engine[pytorch]==2.20.2) on the GPU machine"


def import_te() -> Any:
    """``transformer_engine.pytorch``, or the PrecisionError that says how to install it."""
    try:
        import transformer_engine.pytorch as te
    except ImportError as exc:
        raise PrecisionError(
            f"precision.mode=fp8 needs NVIDIA Transformer Engine, which is not importable here ({exc}); "
            f"{_GPU_INSTALL}, or use precision.mode=bf16"
        ) from None
    return te


def preload_te() -> bool:
    """Load Transformer Engine's libraries now, if it is installed (True): before torch loads its own cuDNN. The
    other order (a peer model's attention first) gave "libcudnn_cnn.so.9: undefined symbol" on the H100 machine.
    Not installed, or not loadable: False, and each FP8 run reports its own error later (a BF16 run never fails on
    Transformer Engine)."""
    try:
        import transformer_engine.pytorch  # noqa: F401
    except (ImportError, OSError):
        return False
    return True


def reset_te_state() -> None:
    """Reset Transformer Engine's process-global FP8 state (TE 2.x ``FP8GlobalStateManager``: amax and scale buffers
    keyed by autocast, which hold the last model's scaling tensors) where TE was imported; a process where it never
    ran does not import it for that. For a process that builds model after model
    (:func:`yxanul.train.build.release_built`)."""
    import sys

    quantization = sys.modules.get("transformer_engine.pytorch.quantization")
    if quantization is not None:
        quantization.FP8GlobalStateManager.reset()


def is_te_module(module: nn.Module) -> bool:
    """True for Transformer Engine modules (their class lives in the transformer_engine package)."""
    return type(module).__module__.startswith("transformer_engine")


def fp8_modules(model: nn.Module) -> dict[str, nn.Module]:
    """Qualified name -> Transformer Engine module, for every TE module in ``model``."""
    return {name: m for name, m in model.named_modules() if is_te_module(m)}


def build_recipe(name: str) -> Any:
    """The Transformer Engine recipe object for ``precision.recipe``."""
    from transformer_engine.common import recipe as te_recipe

    if name == "delayed":
        return te_recipe.DelayedScaling(fp8_format=te_recipe.Format.HYBRID)
    if name == "current":
        return te_recipe.Float8CurrentScaling()
    if name == "block":
        return te_recipe.Float8BlockScaling()
    if name == "mxfp8":
        return te_recipe.MXFP8BlockScaling()
    raise PrecisionError(f"unknown precision.recipe {name!r}; expected delayed, current, block or mxfp8")


def _cuda_version() -> tuple[int, int] | None:
    if not torch.version.cuda:
        return None
    major, minor = torch.version.cuda.split(".")[:2]
    return int(major), int(minor)


def _resolve_mode(mode: str, device: torch.device) -> str:
    if mode != "auto":
        return mode
    from yxanul.accelerators import resolve_auto_precision

    if device.type != "cuda":
        return "fp32"
    # The capability, not the marketing name: every card resolves, listed in our table or not.
    mode = resolve_auto_precision(tuple(torch.cuda.get_device_capability(device)))
    if mode == "fp8":
        try:
            import transformer_engine.pytorch  # noqa: F401
        except ImportError:
            return "bf16"  # auto means "the best this machine can run"; the resolved mode is logged
    return mode


class Precision:
    """Precision policy for one process: support check, layer swap, autocast.

    Constructing it checks support (raises :class:`PrecisionError`); nothing is swapped until
    :meth:`apply`.
    """

    def __init__(self, cfg: PrecisionConfig, device: torch.device | str | None = None) -> None:
        self.cfg = cfg
        self.device = torch.device(device) if device is not None else (
            torch.device("cuda") if torch.cuda.is_available() else torch.device("cpu"))
        self.mode: str = _resolve_mode(cfg.mode, self.device)
        self.recipe_name: str | None = cfg.recipe if self.mode == "fp8" else None
        # None until measured when fp8_layers is auto (see use_plan); () outside fp8.
        self.fp8_layers: tuple[str, ...] | None = () if self.mode != "fp8" else (
            None if cfg.fp8_layers == "auto" else tuple(cfg.fp8_layers))
        self.fp8_plan: Any = None
        self.recipe: Any = None
        self._te: Any = None
        self.check()
        if self.mode == "fp8":
            self._te = import_te()
            self.recipe = build_recipe(cfg.recipe)

    # -- support -------------------------------------------------------------------------------

    def check(self) -> None:
        """Raise PrecisionError unless this mode (and recipe) can run on ``self.device``."""
        if self.mode == "fp32":
            return
        if self.mode == "bf16":
            if self.device.type == "cuda" and not torch.cuda.is_bf16_supported():
                raise PrecisionError(
                    f"precision.mode=bf16 needs a GPU with BF16 support (compute capability >= 8.0); "
                    f"{torch.cuda.get_device_name(self.device)} has none; use precision.mode=fp32"
                )
            return
        if self.mode != "fp8":
            raise PrecisionError(f"unknown precision.mode {self.mode!r}; expected fp32, bf16 or fp8")
        if self.device.type != "cuda" or not torch.cuda.is_available():
            raise PrecisionError(
                "precision.mode=fp8 needs a CUDA GPU with compute capability >= 8.9 (H100, H200, L40S, L4, "
                f"RTX 4090, B200) and Transformer Engine; this process has {self._describe_device()}. "
                "Use precision.mode=bf16 (GPU) or fp32 (CPU), or run on an FP8-capable GPU"
            )
        from yxanul.accelerators import fp8_recipes_for_capability

        cc = torch.cuda.get_device_capability(self.device)
        name = torch.cuda.get_device_name(self.device)
        if cc < (8, 9):
            raise PrecisionError(
                f"precision.mode=fp8 needs compute capability >= 8.9; {name} has {cc[0]}.{cc[1]}. "
                "Use precision.mode=bf16 on this card, or an FP8-capable GPU (H100, H200, L40S, L4, B200)"
            )
        allowed = fp8_recipes_for_capability(cc, _cuda_version())
        if self.cfg.recipe not in allowed:
            raise PrecisionError(
                f"precision.recipe={self.cfg.recipe} cannot run on {name} (compute capability {cc[0]}.{cc[1]}, "
                f"CUDA {torch.version.cuda}); this card supports: {', '.join(allowed)}"
            )
        te = import_te()
        checks = {
            "delayed": te.is_fp8_available, "current": te.is_fp8_available,
            "block": te.is_fp8_block_scaling_available, "mxfp8": te.is_mxfp8_available,
        }
        ok, reason = checks[self.cfg.recipe](return_reason=True)
        if not ok:
            raise PrecisionError(f"Transformer Engine refuses precision.recipe={self.cfg.recipe} on {name}: {reason}")

    def _describe_device(self) -> str:
        if not torch.cuda.is_available():
            return "no CUDA device (torch.cuda.is_available() is False)"
        return f"device {self.device}"

    # -- model ---------------------------------------------------------------------------------

    @property
    def computes_fp8(self) -> bool:
        """Whether some layer group runs in FP8: an FP8 run whose measured plan kept no group computes in BF16
        (and so has no separate BF16 path to evaluate)."""
        return self.mode == "fp8" and bool(self.fp8_layers)

    @property
    def gemm_multiple(self) -> int:
        """FP8 GEMM dimensions must be divisible by this (16; 32 for MXFP8)."""
        return 32 if self.recipe_name == "mxfp8" else 16

    def use_plan(self, plan: Any) -> None:
        """Take the layer groups of a measured :class:`~yxanul.precision.fp8_plan.Fp8Plan` (``fp8_layers: auto``). An
        empty plan is kept as measured: every GEMM stays BF16, and :meth:`describe` says so."""
        self.fp8_layers = tuple(plan.layers)
        self.fp8_plan = plan

    def apply(self, model: nn.Module) -> nn.Module:
        """FP8: replace the linears of ``precision.fp8_layers`` by ``te.Linear`` (weights copied, fp32
        master weights). Other modes leave the model as it is. Returns the same model object."""
        if self.mode != "fp8":
            return model
        if self.fp8_layers is None:
            raise PrecisionError("precision.fp8_layers=auto has not been measured yet: build the model with "
                                 "yxanul.train.build.build_training, which measures the plan first")
        te = self._te
        names: list[str] = []
        for group in self.fp8_layers:
            group_names = model.linear_names(group)  # type: ignore[operator]
            if group == "head" and not group_names:
                raise PrecisionError(
                    "precision.fp8_layers includes 'head' but model.tie_embeddings=true: a tied head is the "
                    "embedding matrix, which stays in high precision; remove 'head' or untie the head"
                )
            names.extend(group_names)
        bad = []
        for name in names:
            lin = model.get_submodule(name)
            if lin.in_features % self.gemm_multiple or lin.out_features % self.gemm_multiple:
                bad.append(f"{name} ({lin.in_features} -> {lin.out_features})")
        if bad:
            raise PrecisionError(
                f"FP8 GEMMs need every dimension divisible by {self.gemm_multiple}, but {', '.join(bad[:4])}"
                f"{' ...' if len(bad) > 4 else ''} are not; change model.hidden / model.ffn_hidden / "
                "model.n_heads, or leave those layers out of precision.fp8_layers"
            )
        for name in names:
            old = model.get_submodule(name)
            if is_te_module(old):
                continue
            new = te.Linear(old.in_features, old.out_features, bias=old.bias is not None,
                            params_dtype=torch.float32, device=old.weight.device)
            with torch.no_grad():
                new.weight.copy_(old.weight)
                if old.bias is not None:
                    new.bias.copy_(old.bias)
            model.set_submodule(name, new)
        return model

    def check_batch(self, tokens_per_microbatch: int) -> None:
        """FP8 GEMMs take the token dimension as a GEMM dimension: it must be divisible by 16."""
        if self.mode == "fp8" and tokens_per_microbatch % self.gemm_multiple:
            raise PrecisionError(
                f"precision.mode=fp8: a micro-batch of {tokens_per_microbatch} tokens is not divisible by "
                f"{self.gemm_multiple} (FP8 GEMM requirement); use a micro-batch size x seq_len that is"
            )

    # -- execution -----------------------------------------------------------------------------

    @contextlib.contextmanager
    def autocast(self, *, fp8: bool = True) -> Iterator[None]:
        """Context for the forward pass (and the loss); backward runs outside it.

        ``fp8=False`` is this precision's BF16 evaluation path: the same ``torch.autocast(bf16)`` without
        ``te.autocast``, so the model's Transformer Engine layers (the same modules, the same fp32 master weights)
        compute in BF16 and nothing is quantized, which is how a BF16 run computes. Swapping TE's layers in is not
        itself a difference (the implementation A/A, ``tests/gpu/test_build_gpu.py::test_null_b_...``), so the FP8
        arm's final weights evaluated here are evaluated as the BF16 arm's are (``eval.bf16_eval``). Outside FP8
        it is the same context as ``autocast()``: an fp32 or bf16 run has no other path.
        """
        if self.mode == "fp32":
            yield
            return
        with torch.autocast(self.device.type, dtype=torch.bfloat16):
            if self.mode == "fp8" and fp8:
                with self._te.autocast(enabled=True, recipe=self.recipe):
                    yield
            else:
                yield

    def describe(self) -> str:
        """E.g. ``fp8 (current; attention,mlp)`` or ``bf16``."""
        if self.mode == "fp8":
            if self.fp8_layers is None:
                return f"fp8 ({self.recipe_name}; auto, not measured yet)"
            layers = ",".join(self.fp8_layers) or "no layer pays: all GEMMs bf16"
            return f"fp8 ({self.recipe_name}; {'auto -> ' if self.fp8_plan is not None else ''}{layers})"
        return self.mode
