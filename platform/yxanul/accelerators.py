"""GPU capability table: the one place that knows what each accelerator type can do.

Used by MFU (peak TFLOP/s of the card), by the FP8 support check (compute capability and the
Transformer Engine recipes it allows), by ``precision.mode=auto`` and by trial placement in
heterogeneous Ray clusters (FP8 trials only on FP8-capable node types).

Names are Ray accelerator type strings: what Ray 2.60 puts in the ``accelerator_type:<name>``
resource of a node (auto-detected from the NVML device name, or set by hand in ``cluster.yaml``).
Ray labels every H100 variant ``H100`` and every A100 ``A100``; the extra entries (``H100-PCIe``,
``A100-80G``, ...) exist so that MFU can use the exact peaks of the card the process runs on
(:func:`spec_for_device_name` maps ``torch.cuda.get_device_name()`` to them).

Peaks are datasheet figures for dense math (no 2:4 sparsity), tensor cores with FP32 accumulation.
``memory_gib`` is the nominal capacity printed on the datasheet (the "80GB" of an H100); the memory
that ``torch.cuda.get_device_properties().total_memory`` reports is slightly smaller.

This module imports nothing heavy (no torch) so that CPU-only processes (the Ray head, sweeps,
tests) can use it.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

from yxanul.errors import ConfigError

__all__ = [
    "AUTOSCALER_CONFIG_ENV",
    "FP8_RECIPES",
    "SPECS",
    "AcceleratorSpec",
    "available_accelerator_types",
    "cluster_config_accelerator_types",
    "launcher_accelerator_types",
    "fp8_capable_types",
    "fp8_recipes_for_capability",
    "get_spec",
    "placement_for",
    "resolve_auto_precision",
    "spec_for_device_name",
    "supports_fp8",
]

FP8_RECIPES: tuple[str, ...] = ("delayed", "current", "block", "mxfp8")
"""Transformer Engine FP8 recipes, in the spelling of ``precision.recipe``."""

# Transformer Engine's own gates, read from TE 2.20.2 transformer_engine/pytorch/quantization.py
# (_compute_fp8_support, _compute_fp8_block_scaling_support, _compute_mxfp8_support):
#   delayed, current (per-tensor FP8): cc >= 9.0, or cc 8.9 with CUDA >= 12.1 (and cuBLASLt >= 12.1.3)
#   block (Float8BlockScaling):        cc >= 9.0 and CUDA >= 12.9 (Blackwell included)
#   mxfp8 (MXFP8BlockScaling):         10.0 <= cc < 12.0 ("not supported on 12.0+ architectures yet")
_FP8_MIN_CC = (8, 9)
_BF16_MIN_CC = (8, 0)
_ADA_FP8_MIN_CUDA = (12, 1)
_BLOCK_MIN_CC = (9, 0)
_BLOCK_MIN_CUDA = (12, 9)
_MXFP8_CC_RANGE = ((10, 0), (12, 0))


@dataclass(frozen=True)
class AcceleratorSpec:
    """What one accelerator type can do (datasheet figures)."""

    name: str
    """Ray accelerator type string (the ``accelerator_type:<name>`` resource)."""
    compute_capability: tuple[int, int]
    """CUDA compute capability (major, minor)."""
    memory_gib: float
    """Nominal device memory from the datasheet."""
    bf16_tflops: float
    """Dense BF16 tensor-core peak, TFLOP/s (FP32 accumulate, no sparsity)."""
    fp8_tflops: float | None
    """Dense FP8 tensor-core peak, TFLOP/s; None when the card has no FP8 tensor cores."""
    fp8_recipes: tuple[str, ...]
    """Transformer Engine FP8 recipes this card can run (subset of FP8_RECIPES)."""
    source: str
    """Where the figures come from."""
    aliases: tuple[str, ...] = ()
    """Other spellings accepted by :func:`get_spec` (case-insensitive)."""

    @property
    def supports_fp8(self) -> bool:
        """True when Transformer Engine can run FP8 GEMMs on this card."""
        return bool(self.fp8_recipes)

    def peak_tflops(self, precision_mode: str) -> float | None:
        """Dense peak for a precision mode (``bf16`` or ``fp8``); None for fp32 or no FP8."""
        if precision_mode == "bf16":
            return self.bf16_tflops
        if precision_mode == "fp8":
            return self.fp8_tflops
        return None


def fp8_recipes_for_capability(
    cc: tuple[int, int], cuda_version: tuple[int, int] | None = None
) -> tuple[str, ...]:
    """FP8 recipes Transformer Engine 2.20 allows on a card of compute capability ``cc``.

    ``cuda_version`` (e.g. ``(12, 8)`` parsed from ``torch.version.cuda``) matters for FP8 on
    Ada (CUDA >= 12.1) and for the block recipe (CUDA >= 12.9); when None, a toolkit that new is
    assumed (the NGC container of cluster.yaml ships one).
    """
    cc = (int(cc[0]), int(cc[1]))
    cuda = None if cuda_version is None else (int(cuda_version[0]), int(cuda_version[1]))
    if cc < _FP8_MIN_CC or (cc < (9, 0) and cuda is not None and cuda < _ADA_FP8_MIN_CUDA):
        return ()
    recipes = ["delayed", "current"]
    if cc >= _BLOCK_MIN_CC and (cuda is None or cuda >= _BLOCK_MIN_CUDA):
        recipes.append("block")
    if _MXFP8_CC_RANGE[0] <= cc < _MXFP8_CC_RANGE[1]:
        recipes.append("mxfp8")
    return tuple(recipes)


def _spec(
    name: str,
    cc: tuple[int, int],
    memory_gib: float,
    bf16_tflops: float,
    fp8_tflops: float | None,
    source: str,
    aliases: tuple[str, ...] = (),
) -> AcceleratorSpec:
    recipes = fp8_recipes_for_capability(cc) if fp8_tflops is not None else ()
    return AcceleratorSpec(name, cc, memory_gib, bf16_tflops, fp8_tflops, recipes, source, aliases)


_H100_SHEET = ("NVIDIA H100 Tensor Core GPU datasheet (2023): BF16 / FP8 TFLOPS with sparsity SXM 1,979 / 3,958, "
               "PCIe 1,513 / 3,026, NVL 1,671 / 3,341 (94 GB); dense = half")
_H200_SHEET = ("NVIDIA H200 Tensor Core GPU datasheet (2024): BF16 / FP8 TFLOPS with sparsity SXM 1,979 / 3,958, "
               "NVL 1,671 / 3,341; 141 GB; dense = half")
_A100_SHEET = "NVIDIA A100 Tensor Core GPU datasheet (2021): BF16 312 TFLOPS dense (624 with sparsity); no FP8"

_SPECS: tuple[AcceleratorSpec, ...] = (
    _spec("H100", (9, 0), 80.0, 989.4, 1978.9,
          _H100_SHEET + "; SXM5 dense figures 989.4 / 1978.9 from the NVIDIA H100 architecture whitepaper",
          ("H100-SXM", "H100-SXM5")),
    _spec("H100-PCIe", (9, 0), 80.0, 756.5, 1513.0, _H100_SHEET, ("H100-PCIE", "H100PCIe")),
    _spec("H100-NVL", (9, 0), 94.0, 835.5, 1670.5, _H100_SHEET),
    _spec("H200", (9, 0), 141.0, 989.4, 1978.9, _H200_SHEET, ("H200-SXM",)),
    _spec("H200-NVL", (9, 0), 141.0, 835.5, 1670.5, _H200_SHEET),
    _spec("A100", (8, 0), 40.0, 312.0, None,
          _A100_SHEET + "; Ray labels both sizes A100, so memory is the smaller 40 GB",
          ("A100-SXM4", "A100-PCIE")),
    _spec("A100-40G", (8, 0), 40.0, 312.0, None, _A100_SHEET, ("A100-40GB",)),
    _spec("A100-80G", (8, 0), 80.0, 312.0, None, _A100_SHEET, ("A100-80GB",)),
    _spec("L40S", (8, 9), 48.0, 362.05, 733.0,
          "NVIDIA L40S datasheet (2023): BF16 362.05 / FP8 733 TFLOPS dense (733 / 1,466 with sparsity); 48 GB"),
    _spec("L4", (8, 9), 24.0, 121.0, 242.5,
          "NVIDIA L4 datasheet (2023): BF16 242 / FP8 485 TFLOPS with sparsity; 24 GB; dense = half"),
    _spec("A10", (8, 6), 24.0, 125.0, None,
          "NVIDIA A10 datasheet (2021): BF16 125 TFLOPS dense (250 with sparsity); 24 GB; no FP8"),
    _spec("B200", (10, 0), 180.0, 2250.0, 4500.0,
          "NVIDIA HGX B200 specifications: per GPU FP16/BF16 4.5 / FP8 9 PFLOPS with sparsity, 180 GB HBM3e; dense = half"),
    _spec("GeForce-RTX-4090", (8, 9), 24.0, 165.2, 330.3,
          "NVIDIA Ada GPU architecture whitepaper (GeForce RTX 4090): BF16 165.2 / FP8 330.3 TFLOPS dense with FP32 accumulate; 24 GB",
          ("RTX4090", "RTX-4090")),
)

SPECS: dict[str, AcceleratorSpec] = {s.name: s for s in _SPECS}
"""Accelerator type -> spec, keyed by the canonical Ray accelerator type string."""

_BY_KEY: dict[str, AcceleratorSpec] = {}
for _s in _SPECS:
    for _key in (_s.name, *_s.aliases):
        _BY_KEY[_key.lower()] = _s

# torch.cuda.get_device_name() / NVML names, matched in order (first hit wins, so the specific
# variants come before the generic family). Ray's own parse of these names gives only the family
# ("NVIDIA H100 PCIe" -> "H100"), which would overstate a PCIe card's peak by 31%.
_DEVICE_PATTERNS: tuple[tuple[re.Pattern[str], str], ...] = tuple(
    (re.compile(p, re.IGNORECASE), name)
    for p, name in (
        (r"\bH100\b.*\bPCIe\b", "H100-PCIe"),
        (r"\bH100\b.*\bNVL\b", "H100-NVL"),
        (r"\bH100\b", "H100"),  # "NVIDIA H100 80GB HBM3" (SXM5)
        (r"\bH200\b.*\bNVL\b", "H200-NVL"),
        (r"\bH200\b", "H200"),
        (r"\bA100\b.*\b80\s*GB\b", "A100-80G"),
        (r"\bA100\b.*\b40\s*GB\b", "A100-40G"),
        (r"\bA100\b", "A100"),
        (r"\bL40S\b", "L40S"),
        (r"\bL4\b", "L4"),
        (r"\bA10\b", "A10"),
        (r"\bB200\b", "B200"),
        (r"\bRTX\s*4090\b", "GeForce-RTX-4090"),
    )
)


def _known_names() -> str:
    return ", ".join(sorted(SPECS))


def get_spec(name: str) -> AcceleratorSpec:
    """The spec of a Ray accelerator type (case-insensitive; aliases such as ``RTX4090`` accepted).

    Raises ConfigError naming the known types when ``name`` is not in the table.
    """
    spec = _BY_KEY.get(str(name).strip().lower())
    if spec is None:
        raise ConfigError(
            f"unknown accelerator type {name!r}: known types are {_known_names()} "
            "(add a datasheet entry to yxanul/accelerators.py for a new card)"
        )
    return spec


def spec_for_device_name(name: str) -> AcceleratorSpec | None:
    """The spec for a ``torch.cuda.get_device_name()`` string, or None for a card not in the table."""
    for pattern, spec_name in _DEVICE_PATTERNS:
        if pattern.search(name):
            return SPECS[spec_name]
    return None


def _lookup(name: str) -> AcceleratorSpec | None:
    """Ray type or alias first, then a device name; None if neither matches."""
    return _BY_KEY.get(str(name).strip().lower()) or spec_for_device_name(str(name))


def ray_family(name: str) -> str:
    """The Ray accelerator type a card of this table's type (or alias, or device name) is labelled with: Ray
    labels by family, so ``A100-80G`` and ``A100-40G`` are both ``A100``, ``H100-PCIe`` is ``H100``."""
    spec = _lookup(name)
    canonical = spec.name if spec is not None else str(name)
    return canonical if canonical.startswith("GeForce-") else canonical.split("-")[0]


def supports_fp8(name: str) -> bool:
    """True when the accelerator type (or device name) has FP8 tensor cores usable by TE."""
    spec = _lookup(name)
    return (spec if spec is not None else get_spec(name)).supports_fp8


def fp8_capable_types() -> list[str]:
    """Ray accelerator types of the table that can run FP8 (sorted)."""
    return sorted(s.name for s in _SPECS if s.supports_fp8)


def available_accelerator_types(resources: Mapping[str, float]) -> list[str]:
    """Accelerator types present in a Ray resource dict (e.g. ``ray.cluster_resources()``)."""
    prefix = "accelerator_type:"
    return sorted(k[len(prefix):] for k, v in resources.items() if k.startswith(prefix) and v > 0)


def cluster_config_accelerator_types(cluster_config: Mapping[str, object]) -> list[str]:
    """Accelerator types a Ray cluster-launcher config can scale to (its node types' resources).

    Use this rather than :func:`available_accelerator_types` when the cluster autoscales from zero:
    before the first trial starts, no GPU node exists yet. On a cluster started with ``ray up``
    the head holds the config as ``~/ray_bootstrap_config.yaml``.
    """
    node_types = cluster_config.get("available_node_types") or {}
    if not isinstance(node_types, Mapping):
        raise ConfigError("cluster config: available_node_types must be a mapping of node type -> settings")
    found: set[str] = set()
    for settings in node_types.values():
        resources = (settings.get("resources") or {}) if isinstance(settings, Mapping) else {}
        found.update(available_accelerator_types(resources))
    return sorted(found)


AUTOSCALER_CONFIG_ENV = "YXANUL_AUTOSCALER_CONFIG"
"""Environment variable naming the autoscaler config file of a cluster not started by ``ray up`` (the
simulated cluster of :mod:`yxanul.cluster_sim` sets it on its head, so job drivers inherit it)."""


def launcher_accelerator_types(path: str | Path | None = None) -> list[str]:
    """Accelerator types the cluster launcher may start, read from the head's copy of its config.

    ``ray up`` leaves the cluster config on the head as ``~/ray_bootstrap_config.yaml``; nodes of
    these types may not exist yet (min_workers 0) but the autoscaler starts them on demand. ``path``
    None reads ``$YXANUL_AUTOSCALER_CONFIG`` when set, else that file. Returns ``[]`` where there is no
    such file (a local cluster, KubeRay). Combine with :func:`available_accelerator_types` of
    ``ray.cluster_resources()``.
    """
    if path is None:
        path = os.environ.get(AUTOSCALER_CONFIG_ENV) or "~/ray_bootstrap_config.yaml"
    file = Path(path).expanduser()
    if not file.is_file():
        return []
    import yaml

    try:
        config = yaml.safe_load(file.read_text())
    except (OSError, yaml.YAMLError) as exc:
        raise ConfigError(f"cannot read the cluster launcher config {file}: {exc}") from None
    if not isinstance(config, Mapping):
        raise ConfigError(f"cluster launcher config {file} is not a mapping")
    return cluster_config_accelerator_types(config)


def resolve_auto_precision(accelerator: str | tuple[int, int] | None) -> str:
    """What ``precision.mode=auto`` means on a card: ``fp8``, ``bf16`` or ``fp32``.

    ``accelerator`` is a Ray accelerator type, a ``torch.cuda.get_device_name()`` string, a
    compute capability tuple, or None / ``"cpu"`` for no GPU (-> fp32). FP8 where the card has FP8
    tensor cores (compute capability >= 8.9), else BF16 where it has BF16 tensor cores (>= 8.0),
    else FP32. An unknown name raises ConfigError rather than guessing: a silent downgrade would
    make the comparison meaningless.
    """
    if accelerator is None or (isinstance(accelerator, str) and accelerator.strip().lower() == "cpu"):
        return "fp32"
    if isinstance(accelerator, tuple):
        cc = (int(accelerator[0]), int(accelerator[1]))
    else:
        spec = _lookup(accelerator)
        if spec is None:
            raise ConfigError(
                f"precision.mode=auto: unknown accelerator {accelerator!r} (known types: {_known_names()}); "
                "set precision.mode to fp8, bf16 or fp32 explicitly"
            )
        cc = spec.compute_capability
    if cc >= _FP8_MIN_CC:
        return "fp8"
    if cc >= _BF16_MIN_CC:
        return "bf16"
    return "fp32"


def placement_for(
    precision_mode: str,
    accelerator_type: str | None,
    available_types: Iterable[str],
    *,
    recipe: str | None = None,
) -> tuple[bool, str]:
    """Can a trial with this precision run on this (or any) accelerator type of the cluster?

    Returns ``(ok, reason)``; when not ok, ``reason`` starts with ``"not runnable: "`` and says
    what to change. Rules: fp8 only on FP8-capable types (and, when ``recipe`` is given, on types
    whose compute capability allows that recipe); bf16 only on known types with BF16 tensor cores;
    fp32 anywhere; auto anywhere (it resolves per card). A trial without ``accelerator_type``
    may land on any node, so an fp8 trial needs every available type to be FP8-capable.
    ``available_types`` are the accelerator types the cluster has or can autoscale to.
    """
    available = sorted(set(available_types))
    if precision_mode not in ("fp32", "bf16", "fp8", "auto"):
        return False, f"not runnable: unknown precision.mode {precision_mode!r} (fp32, bf16, fp8 or auto)"
    if recipe is not None and recipe not in FP8_RECIPES:
        return False, f"not runnable: unknown precision.recipe {recipe!r} (one of {', '.join(FP8_RECIPES)})"

    def fits(spec: AcceleratorSpec) -> bool:
        if precision_mode == "fp8":
            return recipe in spec.fp8_recipes if recipe else spec.supports_fp8
        if precision_mode == "bf16":
            return spec.compute_capability >= _BF16_MIN_CC
        return True

    what = f"precision.mode={precision_mode}"
    if recipe and precision_mode == "fp8":
        what += f" with precision.recipe={recipe}"
    if accelerator_type is not None:
        if accelerator_type not in available:
            return False, (
                f"not runnable: scaling.accelerator_type={accelerator_type} is not a node type of the cluster "
                f"(available: {', '.join(available) or 'none'})"
            )
        spec = _lookup(accelerator_type)
        if spec is None:
            if precision_mode in ("fp32", "auto"):
                return True, f"{what} runs on {accelerator_type}"
            return False, f"not runnable: {what} on {accelerator_type}, a card not in the capability table ({_known_names()})"
        if not fits(spec):
            capable = [t for t in available if (s := _lookup(t)) is not None and fits(s)]
            hint = f"use one of {', '.join(capable)}" if capable else "the cluster has no type that can"
            return False, (
                f"not runnable: {what} needs {_needs(precision_mode, recipe)}; {accelerator_type} has compute "
                f"capability {spec.compute_capability[0]}.{spec.compute_capability[1]} ({hint})"
            )
        return True, f"{what} runs on {accelerator_type}"

    # Unpinned trial: Ray may place it on any node type.
    if precision_mode in ("fp32", "auto"):
        return True, f"{what} runs on any node type"
    unfit = [t for t in available if (s := _lookup(t)) is None or not fits(s)]
    if precision_mode == "fp8" and not available:
        return False, f"not runnable: {what} needs {_needs(precision_mode, recipe)} and the cluster has no GPU node types"
    if unfit:
        capable = [t for t in available if t not in unfit]
        fix = (
            f"set scaling.accelerator_type to one of {', '.join(capable)}"
            if capable
            else "the cluster has no type that can run it"
        )
        return False, (
            f"not runnable: {what} without scaling.accelerator_type could land on {', '.join(unfit)}, which "
            f"lack {_needs(precision_mode, recipe)}; {fix}"
        )
    return True, f"{what} runs on any node type ({', '.join(available) or 'no GPU types'})"


def _needs(precision_mode: str, recipe: str | None) -> str:
    if precision_mode == "bf16":
        return "BF16 tensor cores (compute capability >= 8.0)"
    if recipe == "block":
        return "FP8 block scaling (compute capability >= 9.0, CUDA >= 12.9)"
    if recipe == "mxfp8":
        return "MXFP8 (compute capability 10.x or 11.x; TE 2.20 does not run it on 12.x)"
    return "FP8 tensor cores (compute capability >= 8.9)"
