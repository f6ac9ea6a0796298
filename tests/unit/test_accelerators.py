"""yxanul.accelerators: the capability table, device-name mapping, FP8 recipes, placement, auto precision."""

from __future__ import annotations

import subprocess
import sys

import pytest

from yxanul.accelerators import (
    FP8_RECIPES,
    SPECS,
    AcceleratorSpec,
    available_accelerator_types,
    cluster_config_accelerator_types,
    fp8_capable_types,
    fp8_recipes_for_capability,
    get_spec,
    launcher_accelerator_types,
    placement_for,
    resolve_auto_precision,
    spec_for_device_name,
    supports_fp8,
)
from yxanul.errors import ConfigError

# --- the table -------------------------------------------------------------------------------------

def test_datasheet_peaks_of_the_cards_the_cluster_uses():
    # Dense figures: half of the datasheets' "with sparsity" numbers.
    h100 = get_spec("H100")
    assert (h100.bf16_tflops, h100.fp8_tflops, h100.memory_gib) == (989.4, 1978.9, 80.0)
    assert get_spec("H100-PCIe").bf16_tflops == 1513 / 2 and get_spec("H100-PCIe").fp8_tflops == 3026 / 2
    assert (get_spec("A100").bf16_tflops, get_spec("A100").fp8_tflops) == (312.0, None)
    assert (get_spec("L40S").bf16_tflops, get_spec("L40S").fp8_tflops, get_spec("L40S").memory_gib) == (362.05, 733.0, 48.0)
    assert (get_spec("L4").bf16_tflops, get_spec("L4").fp8_tflops) == (242 / 2, 485 / 2)
    assert (get_spec("B200").bf16_tflops, get_spec("B200").fp8_tflops) == (4500 / 2, 9000 / 2)
    assert get_spec("H200").memory_gib == 141.0


@pytest.mark.parametrize("spec", list(SPECS.values()), ids=list(SPECS))
def test_every_entry_is_consistent(spec: AcceleratorSpec):
    assert spec.source, "every figure needs its datasheet"
    assert set(spec.fp8_recipes) <= set(FP8_RECIPES)
    # FP8 tensor cores <=> a FP8 peak <=> TE recipes; FP8 doubles the BF16 rate on every such card
    # (within 2%: the L40S datasheet itself gives 362.05 BF16 next to 733 FP8).
    assert (spec.fp8_tflops is not None) == spec.supports_fp8 == (spec.compute_capability >= (8, 9))
    if spec.fp8_tflops is not None:
        assert spec.fp8_tflops == pytest.approx(2 * spec.bf16_tflops, rel=0.02)
    assert spec.fp8_recipes == fp8_recipes_for_capability(spec.compute_capability) or not spec.supports_fp8
    assert spec.peak_tflops("bf16") == spec.bf16_tflops and spec.peak_tflops("fp8") == spec.fp8_tflops
    assert spec.peak_tflops("fp32") is None
    assert get_spec(spec.name) is spec
    for alias in spec.aliases:
        assert get_spec(alias) is spec


def test_names_are_ray_accelerator_type_strings():
    # ray.util.accelerators re-exports only some constants (no H200, B200, L40S); its inner module
    # holds them all.
    from ray.util.accelerators import accelerators as ray_acc

    ray_names = {v for k, v in vars(ray_acc).items() if k.isupper() and isinstance(v, str)}
    for name in ("H100", "H200", "A100", "A100-40G", "A100-80G", "L40S", "L4", "B200"):
        assert name in SPECS and name in ray_names
    # Ray derives a node's type from the NVML name; the table must use the same strings.
    from ray._private.accelerators.nvidia_gpu import NvidiaGPUAcceleratorManager as nv

    assert nv._gpu_name_to_accelerator_type("NVIDIA GeForce RTX 4090") == "GeForce-RTX-4090" == get_spec("RTX4090").name
    assert nv._gpu_name_to_accelerator_type("NVIDIA L40S") == "L40S"
    assert nv._gpu_name_to_accelerator_type("NVIDIA H100 80GB HBM3") == "H100"


def test_get_spec_is_case_insensitive_and_accepts_aliases():
    assert get_spec("h100") is SPECS["H100"]
    assert get_spec(" l40s ") is SPECS["L40S"]
    assert get_spec("RTX4090") is get_spec("rtx-4090") is SPECS["GeForce-RTX-4090"]
    assert get_spec("H100-SXM") is SPECS["H100"]


def test_unknown_type_names_the_known_ones():
    with pytest.raises(ConfigError) as err:
        get_spec("V100")
    msg = str(err.value)
    assert "'V100'" in msg and "H100" in msg and "L4" in msg and "accelerators.py" in msg


@pytest.mark.parametrize(
    ("device_name", "expected"),
    [
        ("NVIDIA H100 80GB HBM3", "H100"),
        ("NVIDIA H100 PCIe", "H100-PCIe"),
        ("NVIDIA H100 NVL", "H100-NVL"),
        ("NVIDIA H200", "H200"),
        ("NVIDIA H200 NVL", "H200-NVL"),
        ("NVIDIA A100-SXM4-80GB", "A100-80G"),
        ("NVIDIA A100-SXM4-40GB", "A100-40G"),
        ("NVIDIA A100 80GB PCIe", "A100-80G"),
        ("NVIDIA L40S", "L40S"),
        ("NVIDIA L4", "L4"),
        ("NVIDIA A10", "A10"),
        ("NVIDIA B200", "B200"),
        ("NVIDIA GeForce RTX 4090", "GeForce-RTX-4090"),
    ],
)
def test_device_names_map_to_the_exact_card(device_name: str, expected: str):
    assert spec_for_device_name(device_name) is SPECS[expected]


@pytest.mark.parametrize("device_name", ["NVIDIA L40", "NVIDIA A10G", "NVIDIA GH200 480GB", "Tesla T4", "cpu", ""])
def test_device_names_not_in_the_table_give_none(device_name: str):
    # L40 is not L40S/L4, A10G is not A10, GH200 is not H200: near-misses must not borrow peaks.
    assert spec_for_device_name(device_name) is None


def test_pcie_h100_does_not_get_sxm_peaks():
    # Ray labels both "H100"; MFU must use the device name to get the card's own peak.
    assert spec_for_device_name("NVIDIA H100 PCIe").bf16_tflops < spec_for_device_name("NVIDIA H100 80GB HBM3").bf16_tflops


# --- FP8 recipes (Transformer Engine 2.20 gates) ------------------------------------------------

@pytest.mark.parametrize(
    ("cc", "cuda", "expected"),
    [
        ((7, 5), None, ()),
        ((8, 0), None, ()),
        ((8, 6), None, ()),
        ((8, 9), None, ("delayed", "current")),
        ((8, 9), (12, 0), ()),                      # Ada FP8 needs CUDA >= 12.1
        ((8, 9), (12, 1), ("delayed", "current")),
        ((9, 0), None, ("delayed", "current", "block")),
        ((9, 0), (12, 8), ("delayed", "current")),  # block scaling needs CUDA >= 12.9
        ((9, 0), (12, 9), ("delayed", "current", "block")),
        ((10, 0), None, ("delayed", "current", "block", "mxfp8")),
        ((10, 3), (13, 0), ("delayed", "current", "block", "mxfp8")),
        ((12, 0), None, ("delayed", "current", "block")),  # MXFP8 not on 12.x in TE 2.20
    ],
)
def test_fp8_recipes_for_capability(cc, cuda, expected):
    assert fp8_recipes_for_capability(cc, cuda) == expected


def test_supports_fp8_by_type_and_by_device_name():
    assert supports_fp8("H100") and supports_fp8("l4") and supports_fp8("NVIDIA L40S")
    assert not supports_fp8("A100") and not supports_fp8("NVIDIA A100-SXM4-80GB")
    with pytest.raises(ConfigError):
        supports_fp8("V100")


def test_fp8_capable_types():
    types = fp8_capable_types()
    assert types == sorted(types)
    assert {"H100", "H200", "L40S", "L4", "B200", "GeForce-RTX-4090"} <= set(types)
    assert not {"A100", "A100-80G", "A10"} & set(types)


# --- cluster resources ------------------------------------------------------------------------------

def test_available_accelerator_types_from_ray_resources():
    resources = {"CPU": 96.0, "GPU": 12.0, "accelerator_type:H100": 1.0, "accelerator_type:L4": 1.0,
                 "accelerator_type:A100": 0.0, "memory": 1e12}
    assert available_accelerator_types(resources) == ["H100", "L4"]
    assert available_accelerator_types({"CPU": 4.0}) == []


def test_cluster_config_accelerator_types():
    cfg = {"available_node_types": {
        "head": {"resources": {"CPU": 0}},
        "h100": {"resources": {"GPU": 8, "accelerator_type:H100": 1}},
        "l4": {"resources": {"GPU": 4, "accelerator_type:L4": 1}},
        "noresources": {"node_config": {}},
    }}
    assert cluster_config_accelerator_types(cfg) == ["H100", "L4"]
    with pytest.raises(ConfigError, match="available_node_types"):
        cluster_config_accelerator_types({"available_node_types": ["h100"]})


def test_launcher_accelerator_types_reads_the_bootstrap_config(tmp_path):
    from pathlib import Path

    assert launcher_accelerator_types(tmp_path / "missing.yaml") == []
    repo_cluster = Path(__file__).resolve().parents[2] / "cluster.yaml"
    assert launcher_accelerator_types(repo_cluster) == ["A100", "H100", "L4", "L40S"]
    bad = tmp_path / "bad.yaml"
    bad.write_text("- just\n- a list\n")
    with pytest.raises(ConfigError, match="not a mapping"):
        launcher_accelerator_types(bad)
    bad.write_text("key: [unclosed\n")
    with pytest.raises(ConfigError, match="cannot read"):
        launcher_accelerator_types(bad)


# --- placement -------------------------------------------------------------------------------------

MIXED = ["A100", "H100", "L4"]


@pytest.mark.parametrize(
    ("mode", "acc", "available", "ok", "fragment"),
    [
        ("fp8", "H100", MIXED, True, "runs on H100"),
        ("fp8", "L4", MIXED, True, "runs on L4"),
        ("fp8", "A100", MIXED, False, "A100 has compute capability 8.0 (use one of H100, L4)"),
        ("fp8", None, MIXED, False, "could land on A100"),
        ("fp8", None, ["H100", "L4"], True, "any node type"),
        ("fp8", None, [], False, "no GPU node types"),
        ("fp8", "L40S", MIXED, False, "not a node type of the cluster (available: A100, H100, L4)"),
        ("fp8", "A100", ["A100"], False, "the cluster has no type that can"),
        ("bf16", "A100", MIXED, True, "runs on A100"),
        ("bf16", None, MIXED, True, "any node type"),
        ("bf16", "T4", ["T4"], False, "not in the capability table"),
        ("bf16", None, ["H100", "T4"], False, "could land on T4"),
        ("fp32", "T4", ["T4"], True, "runs on T4"),
        ("fp32", None, [], True, "any node type"),
        ("auto", "A100", MIXED, True, "runs on A100"),
        ("int8", None, MIXED, False, "unknown precision.mode 'int8'"),
    ],
)
def test_placement(mode, acc, available, ok, fragment):
    got_ok, reason = placement_for(mode, acc, available)
    assert got_ok is ok
    assert fragment in reason
    assert reason.startswith("not runnable: ") is (not ok)


def test_placement_checks_the_recipe():
    assert placement_for("fp8", "B200", ["B200", "H100"], recipe="mxfp8")[0]
    ok, reason = placement_for("fp8", "H100", ["B200", "H100"], recipe="mxfp8")
    assert not ok and "MXFP8" in reason and "use one of B200" in reason
    ok, reason = placement_for("fp8", "L4", ["L4", "H100"], recipe="block")
    assert not ok and "block scaling" in reason and "use one of H100" in reason
    ok, reason = placement_for("fp8", None, ["L4", "H100"], recipe="block")
    assert not ok and "could land on L4" in reason
    ok, reason = placement_for("fp8", "H100", ["H100"], recipe="tensorwise")
    assert not ok and "unknown precision.recipe" in reason


# --- precision.mode=auto ---------------------------------------------------------------------------

@pytest.mark.parametrize(
    ("accelerator", "mode"),
    [
        ("H100", "fp8"), ("L4", "fp8"), ("NVIDIA L40S", "fp8"), ("NVIDIA H100 PCIe", "fp8"),
        ("A100", "bf16"), ("NVIDIA A100-SXM4-80GB", "bf16"), ("A10", "bf16"),
        ((9, 0), "fp8"), ((8, 9), "fp8"), ((8, 6), "bf16"), ((7, 5), "fp32"),
        (None, "fp32"), ("cpu", "fp32"),
    ],
)
def test_resolve_auto_precision(accelerator, mode):
    assert resolve_auto_precision(accelerator) == mode


def test_auto_precision_refuses_to_guess_on_unknown_cards():
    with pytest.raises(ConfigError, match="set precision.mode to fp8, bf16 or fp32"):
        resolve_auto_precision("NVIDIA Tesla V100-SXM2-16GB")


def test_module_does_not_import_torch():
    code = "import sys, yxanul.accelerators; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_config_spells_known_accelerator_types_as_ray_does():
    from yxanul.config import load_config

    def accel(value: str) -> str | None:
        return load_config(None, [f"scaling.accelerator_type={value}"]).scaling.accelerator_type

    assert accel("h100") == "H100" and accel("l40s") == "L40S" and accel("RTX4090") == "GeForce-RTX-4090"
    assert accel("T4") == "T4" and accel("my-label") == "my-label"  # not in the table: kept as written
    assert load_config(None, []).scaling.accelerator_type is None


def test_ray_labels_cards_by_family():
    from yxanul.accelerators import ray_family

    assert [ray_family(n) for n in ("A100-80G", "A100-40G", "H100-PCIe", "H200", "RTX4090", "L4")] == \
        ["A100", "A100", "H100", "H200", "GeForce-RTX-4090", "L4"]
