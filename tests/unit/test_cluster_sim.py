"""The simulated autoscaling cluster's config, generated from the real cluster.yaml (yxanul.cluster_sim), and
the scaling.simulate_accelerators flag: validated, placed like a real trial, never a silent switch.
The cluster itself runs in tests/integration/test_autoscaler.py."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import jsonschema
import pytest
import yaml

from yxanul.accelerators import AUTOSCALER_CONFIG_ENV, launcher_accelerator_types
from yxanul.cluster_sim import HEAD_NODE_TYPE, simulated_config, submit_args, write_simulated_config
from yxanul.config import load_config
from yxanul.errors import ConfigError
from yxanul.sweep import ClusterView, load_sweep, plan_sweep

ROOT = Path(__file__).resolve().parents[2]
CLUSTER = yaml.safe_load((ROOT / "cluster.yaml").read_text())


def test_generated_from_cluster_yaml_same_types_and_labels_scaled_down():
    cfg = simulated_config(CLUSTER, gcs_port=6390)
    types = cfg["available_node_types"]
    workers = {n for n in CLUSTER["available_node_types"] if n != CLUSTER["head_node_type"]}
    assert set(types) == workers | {HEAD_NODE_TYPE} and cfg["head_node_type"] == HEAD_NODE_TYPE
    assert types["gpu.h100"]["resources"] == {"CPU": 2, "GPU": 2, "accelerator_type:H100": 1}  # 192 CPU, 8 GPU
    assert types["gpu.l40s"]["resources"] == {"CPU": 2, "GPU": 2, "accelerator_type:L40S": 1}
    assert types["cpu"]["resources"] == {"CPU": 2}
    assert types[HEAD_NODE_TYPE] == {"resources": {"CPU": 0}, "node_config": {}, "max_workers": 0}
    for name in workers:  # every custom resource kept, counts capped at 1 node per type
        real = CLUSTER["available_node_types"][name]
        custom = {k: v for k, v in real["resources"].items() if k not in ("CPU", "GPU")}
        assert {k: v for k, v in types[name]["resources"].items() if k not in ("CPU", "GPU")} == custom
        assert types[name]["max_workers"] == 1 and types[name]["min_workers"] == 0
    assert cfg["max_workers"] == len(workers)
    assert cfg["idle_timeout_minutes"] == CLUSTER["idle_timeout_minutes"] == 10
    assert cfg["provider"] == {"type": "fake_multinode", "gcs_address": "127.0.0.1:6390", "use_node_id_as_ip": True,
                               "disable_node_updaters": True, "disable_launch_config_check": True}
    assert simulated_config(CLUSTER, gcs_port=1, idle_timeout_minutes=0.1, cpus_per_node=1,
                            gpus_per_node=1)["available_node_types"]["gpu.l4"]["resources"]["GPU"] == 1


def test_generated_config_passes_rays_schema_and_validation():
    import ray.autoscaler
    from ray.autoscaler._private.util import validate_config

    schema = json.loads((Path(ray.autoscaler.__file__).parent / "ray-schema.json").read_text())
    cfg = simulated_config(CLUSTER, gcs_port=6390, idle_timeout_minutes=0.1)
    jsonschema.validate(cfg, schema)
    validate_config(cfg)


def test_bad_cluster_configs_are_refused_with_the_key(tmp_path):
    bad = copy.deepcopy(CLUSTER)
    bad["head_node_type"] = "nope"
    with pytest.raises(ConfigError, match="head_node_type 'nope' is not one of available_node_types"):
        simulated_config(bad, gcs_port=1)
    bad = copy.deepcopy(CLUSTER)
    del bad["available_node_types"]["gpu.l4"]["resources"]["CPU"]
    with pytest.raises(ConfigError, match="node type 'gpu.l4' must state resources.CPU"):
        simulated_config(bad, gcs_port=1)
    with pytest.raises(ConfigError, match="must be at least 1"):
        simulated_config(CLUSTER, gcs_port=1, gpus_per_node=0)
    with pytest.raises(ConfigError, match="does not exist"):
        write_simulated_config(tmp_path / "missing.yaml", tmp_path / "out.yaml", gcs_port=1)
    out = write_simulated_config(ROOT / "cluster.yaml", tmp_path / "sim" / "autoscaler.yaml", gcs_port=7)
    assert yaml.safe_load(out.read_text())["provider"]["gcs_address"] == "127.0.0.1:7"


def test_job_submission_uses_the_checkout_in_place():
    args = submit_args("http://127.0.0.1:1", ROOT, ["python", "-m", "jobs.sweep", "x"], submission_id="j")
    assert args[:3] == ["job", "submit", "--address=http://127.0.0.1:1"]
    assert f"--working-dir=local://{ROOT}" in args and "--submission-id=j" in args
    assert args[args.index("--") + 1:] == ["python", "-m", "jobs.sweep", "x"]


def test_the_sweep_reads_launchable_types_from_the_autoscaler_config(tmp_path, monkeypatch):
    out = write_simulated_config(ROOT / "cluster.yaml", tmp_path / "autoscaler.yaml", gcs_port=1)
    monkeypatch.setenv("HOME", str(tmp_path))  # no ~/ray_bootstrap_config.yaml
    monkeypatch.delenv(AUTOSCALER_CONFIG_ENV, raising=False)
    assert launcher_accelerator_types() == []
    monkeypatch.setenv(AUTOSCALER_CONFIG_ENV, str(out))
    assert launcher_accelerator_types() == ["A100", "H100", "L4", "L40S"]


# --- scaling.simulate_accelerators ------------------------------------------------------------------

def test_simulate_accelerators_needs_gpu_workers():
    with pytest.raises(ConfigError, match="scaling.simulate_accelerators=true stands in for GPU workers, but "
                                          "scaling.use_gpu is false: set scaling.use_gpu=true"):
        load_config(None, ["scaling.simulate_accelerators=true"])
    cfg = load_config(None, ["scaling.simulate_accelerators=true", "scaling.use_gpu=true"])
    assert cfg.scaling.simulate_accelerators and cfg.flat_params()["scaling.simulate_accelerators"] == "true"
    assert load_config(None).scaling.simulate_accelerators is False


def test_rehearsal_sweep_places_like_the_real_sweep_without_transformer_engine():
    # The simulated cluster has no Transformer Engine (and no GPU): under the flag the FP8 trial is placed as
    # on the real cluster (it will run in fp32, tagged); without it, it is not runnable, with the reason.
    simulated = ClusterView(("A100", "H100", "L4", "L40S"), False, "test: simulated")
    plan = plan_sweep(*load_sweep("autoscale-rehearsal"), cluster=simulated)
    by_label = {t.label: t for t in plan.trials}
    assert [t.label for t in plan.runnable] == ["arm=fp8", "arm=bf16", "arm=bf16-lr"]
    pair = {by_label[f"arm={a}"].cfg.scaling.accelerator_type for a in ("fp8", "bf16")}
    assert pair == {"H100"}
    assert by_label["arm=bf16-lr"].cfg.scaling.accelerator_type is None
    assert all(t.cfg.scaling.simulate_accelerators and t.cfg.scaling.use_gpu for t in plan.trials)
    assert by_label["arm=b200"].reason == ("not runnable: scaling.accelerator_type=B200 is not a node type of the "
                                           "cluster (available: A100, H100, L4, L40S)")
    real = plan_sweep(*load_sweep("autoscale-rehearsal", ["scaling.simulate_accelerators=false"]), cluster=simulated)
    fp8 = next(t for t in real.trials if t.label == "arm=fp8")
    assert not fp8.runnable and "needs Transformer Engine" in fp8.reason
