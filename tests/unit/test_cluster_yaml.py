"""cluster.yaml and k8s/raycluster.yaml, checked offline with Ray's own schema and functions.

Ray 2.60 has no `ray up --dry-run`. What runs here without a cloud account: the autoscaler's JSON
schema (ray/autoscaler/ray-schema.json), Ray's `prepare_config` (merges the AWS defaults, checks
the docker section, fills per-type min/max) and `validate_config`, and the autoscaler's own
bin-packing planner (`get_nodes_for`) deciding which node type a Ray Train worker bundle launches.
What needs AWS (AMI lookup, subnets, security group and IAM checks, instance-type resource
detection) is not run.
"""

from __future__ import annotations

import copy
import json
import re
from collections.abc import Iterable
from functools import partial
from pathlib import Path

import jsonschema
import pytest
import yaml

from yxanul.accelerators import SPECS, cluster_config_accelerator_types, fp8_capable_types, placement_for

ROOT = Path(__file__).resolve().parents[2]
CLUSTER_YAML = ROOT / "cluster.yaml"
KUBERAY_YAML = ROOT / "k8s" / "raycluster.yaml"

# AWS instance facts (aws.amazon.com/ec2/instance-types): GPU model, GPU count, vCPUs.
AWS_INSTANCES = {
    "p5.48xlarge": ("H100", 8, 192),
    "p4d.24xlarge": ("A100", 8, 96),
    "g6e.12xlarge": ("L40S", 4, 48),
    "g6.12xlarge": ("L4", 4, 48),
    "m7i.8xlarge": (None, 0, 32),
    "m7i.2xlarge": (None, 0, 8),
}


@pytest.fixture(scope="module")
def cluster() -> dict:
    return yaml.safe_load(CLUSTER_YAML.read_text())


@pytest.fixture(scope="module")
def prepared(cluster) -> dict:
    from ray.autoscaler._private.util import prepare_config

    return prepare_config(copy.deepcopy(cluster))


def _node_types(cfg: dict) -> dict:
    return cfg["available_node_types"]


def _accelerator_of(settings: dict) -> str | None:
    types = [k.split(":", 1)[1] for k in settings.get("resources", {}) if k.startswith("accelerator_type:")]
    assert len(types) <= 1, f"one accelerator type per node type, got {types}"
    return types[0] if types else None


# --- Ray's own checks ------------------------------------------------------------------------------

def test_matches_the_schema_shipped_in_ray(cluster):
    import ray.autoscaler

    schema = json.loads((Path(ray.autoscaler.__file__).parent / "ray-schema.json").read_text())
    jsonschema.validate(cluster, schema)


def test_schema_check_is_real():
    # The same validation rejects what Ray rejects: fractional resources, unknown keys.
    import ray.autoscaler

    schema = json.loads((Path(ray.autoscaler.__file__).parent / "ray-schema.json").read_text())
    bad = yaml.safe_load(CLUSTER_YAML.read_text())
    bad["available_node_types"]["gpu.l4"]["resources"]["GPU"] = 0.5
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(bad, schema)
    bad = yaml.safe_load(CLUSTER_YAML.read_text())
    bad["available_node_types"]["gpu.l4"]["gpus"] = 4
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(bad, schema)


def test_ray_prepare_and_validate_config(prepared):
    from ray.autoscaler._private.util import validate_config

    validate_config(prepared)  # raises on any problem
    assert prepared["head_node_type"] == "head"
    # prepare_config merged the common setup into both head and worker setup, in order.
    assert prepared["worker_setup_commands"][-1].startswith("pip install --no-cache-dir -c /tmp/torch-constraint.txt -e")
    assert "boto3" in prepared["head_setup_commands"][-1]
    assert _node_types(prepared)["head"]["max_workers"] == 0


# --- node types ------------------------------------------------------------------------------------

def test_gpu_node_types_expose_their_accelerator(cluster):
    by_accelerator = {}
    for name, settings in _node_types(cluster).items():
        instance = settings["node_config"]["InstanceType"]
        assert instance in AWS_INSTANCES, f"{name}: add {instance} to AWS_INSTANCES with its GPU facts"
        gpu_model, gpus, vcpus = AWS_INSTANCES[instance]
        resources = settings["resources"]
        assert resources.get("GPU", 0) == gpus, f"{name}: {instance} has {gpus} GPUs"
        assert resources.get("CPU", 0) <= vcpus, f"{name}: {instance} has {vcpus} vCPUs"
        assert _accelerator_of(settings) == gpu_model, f"{name}: {instance} carries {gpu_model}"
        if gpu_model:
            assert resources[f"accelerator_type:{gpu_model}"] == 1  # Ray's convention: 1 per node
            assert gpu_model in SPECS
            by_accelerator[gpu_model] = name
    assert set(by_accelerator) == {"H100", "A100", "L40S", "L4"}
    assert cluster_config_accelerator_types(cluster) == ["A100", "H100", "L4", "L40S"]


def test_worker_counts(cluster):
    types = _node_types(cluster)
    workers = {n: s for n, s in types.items() if n != cluster["head_node_type"]}
    for name, settings in workers.items():
        assert 0 <= settings["min_workers"] <= settings["max_workers"], name
    assert sum(s["max_workers"] for s in workers.values()) <= cluster["max_workers"]
    assert types["head"]["resources"] == {"CPU": 0}  # no training or data tasks on the head
    assert cluster["idle_timeout_minutes"] > 0


def test_fp8_and_bf16_trials_can_be_placed_on_this_cluster(cluster):
    available = cluster_config_accelerator_types(cluster)
    assert set(available) & set(fp8_capable_types())
    assert placement_for("fp8", "H100", available) == (True, "precision.mode=fp8 runs on H100")
    assert placement_for("fp8", "L40S", available)[0] and placement_for("fp8", "L4", available)[0]
    ok, reason = placement_for("fp8", "A100", available)
    assert not ok and "A100 has compute capability 8.0" in reason
    ok, reason = placement_for("fp8", None, available)  # mixed cluster: FP8 trials must be pinned
    assert not ok and "could land on A100" in reason
    assert placement_for("bf16", None, available)[0]


# --- what the autoscaler would launch --------------------------------------------------------------

def _plan(prepared: dict, bundles: list[dict]) -> tuple[dict, list]:
    """Node types Ray's autoscaler planner launches for these bundles, from an empty cluster."""
    from ray.autoscaler._private.node_provider_availability_tracker import NodeAvailabilitySummary
    from ray.autoscaler._private.resource_demand_scheduler import _default_utilization_scorer, get_nodes_for

    scorer = partial(_default_utilization_scorer, node_availability_summary=NodeAvailabilitySummary({}))
    to_add, residual = get_nodes_for(
        _node_types(prepared), {prepared["head_node_type"]: 1}, prepared["head_node_type"],
        prepared["max_workers"], bundles, scorer,
    )
    return dict(to_add), residual


def _train_bundles(num_workers: int, accelerator_type: str | None, cpus_per_worker: float = 1.0) -> list[dict]:
    """Per-worker resource bundles exactly as Ray Train's ScalingConfig builds them."""
    import ray.train

    scaling = ray.train.ScalingConfig(num_workers=num_workers, use_gpu=True, accelerator_type=accelerator_type,
                                      resources_per_worker={"CPU": cpus_per_worker, "GPU": 1})
    return [dict(scaling._resources_per_worker_not_none) for _ in range(num_workers)]


@pytest.mark.parametrize(
    ("accelerator", "num_workers", "expected"),
    [
        ("H100", 1, {"gpu.h100": 1}),
        ("H100", 8, {"gpu.h100": 1}),
        ("A100", 4, {"gpu.a100": 1}),
        ("L40S", 1, {"gpu.l40s": 1}),
        ("L40S", 8, {"gpu.l40s": 2}),
        ("L4", 4, {"gpu.l4": 1}),
    ],
)
def test_train_workers_launch_their_accelerator_node_type(prepared, accelerator, num_workers, expected):
    to_add, residual = _plan(prepared, _train_bundles(num_workers, accelerator))
    assert (to_add, residual) == (expected, [])


def test_unavailable_requests_stay_unfulfilled(prepared):
    to_add, residual = _plan(prepared, _train_bundles(1, "B200"))
    assert to_add == {} and len(residual) == 1
    to_add, residual = _plan(prepared, _train_bundles(16, "H100"))  # max one p5 node
    assert to_add == {"gpu.h100": 1} and len(residual) == 8


def test_cpu_work_does_not_launch_gpu_nodes(prepared):
    to_add, residual = _plan(prepared, [{"CPU": 1}] * 40)  # e.g. jobs.prepare tokenize tasks
    assert residual == [] and set(to_add) == {"cpu"}


# --- experiments reference only node types that exist ----------------------------------------------

def referenced_accelerator_types(tree: object) -> set[str]:
    """Every accelerator type an experiment or sweep YAML asks for, in whatever shape it is written:
    ``scaling: {accelerator_type: X}``, a dotted ``scaling.accelerator_type: X`` override (also as a
    ``k=v`` string), an axis ``{key: scaling.accelerator_type, values: [...]}``, lists of them."""
    found: set[str] = set()

    def add(value: object) -> None:
        if isinstance(value, str):
            found.add(value)
        elif isinstance(value, list):
            for item in value:
                add(item)

    def walk(node: object) -> None:
        if isinstance(node, dict):
            key = node.get("key")
            if isinstance(key, str) and key.split(".")[-1] == "accelerator_type":
                add(node.get("values"))
            for k, v in node.items():
                if str(k).split(".")[-1] == "accelerator_type":
                    add(v)
                walk(v)
        elif isinstance(node, list):
            for item in node:
                walk(item)
        elif isinstance(node, str):
            m = re.fullmatch(r"\s*[\w.]*accelerator_type\s*=\s*(\S+)\s*", node)
            if m:
                found.add(m.group(1))

    walk(tree)
    return found


def missing_node_types(paths: Iterable[Path], cluster_types: Iterable[str]) -> dict[str, list[str]]:
    """{file: [accelerator types it references that no node type of the cluster provides]}."""
    available = set(cluster_types)
    missing = {}
    for path in paths:
        wanted = referenced_accelerator_types(yaml.safe_load(path.read_text()))
        if wanted - available:
            missing[str(path)] = sorted(wanted - available)
    return missing


def _experiment_files() -> list[Path]:
    return sorted([*ROOT.glob("experiments/runs/*.yaml"), *ROOT.glob("experiments/sweeps/*.yaml")])


def test_experiments_only_reference_existing_node_types(cluster):
    # One deliberate exception: the autoscaler rehearsal has an arm on a type the cluster lacks, to show it
    # recorded as not runnable (tests/integration/test_autoscaler.py).
    rehearsal = str(ROOT / "experiments" / "sweeps" / "autoscale-rehearsal.yaml")
    assert missing_node_types(_experiment_files(), cluster_config_accelerator_types(cluster)) == {rehearsal: ["B200"]}


def test_the_reference_check_finds_every_shape_and_flags_missing_types(tmp_path, cluster):
    run = tmp_path / "run.yaml"
    run.write_text("precision: {mode: fp8}\nscaling: {num_workers: 2, use_gpu: true, accelerator_type: L4}\n")
    sweep = tmp_path / "sweep.yaml"
    sweep.write_text(
        "base:\n  overrides:\n    scaling.accelerator_type: H100\n    precision.mode: fp8\n"
        "axes:\n  hardware:\n    key: scaling.accelerator_type\n    values: [L40S, B200]\n"
        "  arms:\n    variants:\n      small: {scaling.accelerator_type: L4, model.preset: tiny}\n"
        "extra_overrides: ['scaling.accelerator_type=A10', 'train.max_tokens=2e6']\n"
    )
    assert referenced_accelerator_types(yaml.safe_load(run.read_text())) == {"L4"}
    assert referenced_accelerator_types(yaml.safe_load(sweep.read_text())) == {"H100", "L40S", "B200", "L4", "A10"}
    types = cluster_config_accelerator_types(cluster)
    assert missing_node_types([run, sweep], types) == {str(sweep): ["A10", "B200"]}
    assert missing_node_types([run], types) == {}


def test_experiment_files_parse():
    for path in _experiment_files():
        assert isinstance(yaml.safe_load(path.read_text()), dict), path


# --- security: what must never be in the file ------------------------------------------------------

def test_no_credentials_and_ssh_only_ingress(cluster):
    text = CLUSTER_YAML.read_text()
    assert not re.search(r"AKIA[0-9A-Z]{16}", text)  # AWS access key ids

    def keys(node: object) -> set[str]:
        if isinstance(node, dict):
            return {str(k).lower() for k in node} | set().union(*(keys(v) for v in node.values()))
        if isinstance(node, list):
            return set().union(*(keys(v) for v in node)) if node else set()
        return set()

    # provider.aws_credentials is a real Ray option: credentials must come from the environment.
    secret_keys = {"aws_credentials", "aws_access_key_id", "aws_secret_access_key", "aws_session_token",
                   "password", "token"}
    assert not keys(cluster) & secret_keys
    assert "ssh_private_key" not in cluster["auth"]  # Ray generates and keeps its own key pair
    # Ray's auto-created security group opens SSH to 0.0.0.0/0; every node type brings its own.
    assert "security_group" not in cluster["provider"]
    for name, settings in _node_types(cluster).items():
        assert settings["node_config"].get("SecurityGroupIds"), name
    assert "0.0.0.0/0" not in json.dumps(cluster)  # no world-open CIDR anywhere in the settings
    for cmd in (cluster["head_start_ray_commands"][1], cluster["worker_start_ray_commands"][1]):
        assert "RAY_AUTH_MODE=token" in cmd and "MLFLOW_TRACKING_URI=" in cmd


# Values that look like a secret: long hex/base64 runs (Ray's tokens are 64 hex characters), and any
# assignment of a literal (not a $variable, a ~/ or / path, a <placeholder> or ...) to a name that says
# token or password.
_SECRET_RUN = re.compile(r"[A-Za-z0-9+=_-]{32,}")
_SECRET_ASSIGNMENT = re.compile(
    r"(?i)(token|password|passwd|secret)[\w]*\s*(?:=|:(?!-))\s*['\"]?(?![$~/{<\s]|\.\.\.|$)[^\s'\"}]+")


_SECRET_K8S_ENV = re.compile(r"(?i)name:\s*\w*(token|password|secret)\w*\s*,?\s*value:")  # not valueFrom


def _secret_literals(text: str) -> list[str]:
    runs = [m.group(0) for m in _SECRET_RUN.finditer(text) if re.search(r"\d", m.group(0)) and re.search(r"[a-z]", m.group(0), re.I)]
    code = re.sub(r"(?m)(^|\s)#.*$", "", text)  # comments are prose ("CSRF tokens: made once")
    return runs + [m.group(0) for pattern in (_SECRET_ASSIGNMENT, _SECRET_K8S_ENV) for m in pattern.finditer(code)]


def test_secret_literal_check_is_real():
    assert _secret_literals("RAY_AUTH_TOKEN=" + "ab12" * 16) != []
    assert _secret_literals("- {name: RAY_AUTH_TOKEN, value: hunter2}") != []
    assert _secret_literals("MLFLOW_TRACKING_PASSWORD: 'correct horse'") != []
    assert _secret_literals("admin_password = s3cret!") != []
    assert _secret_literals("Bearer " + "0f9a" * 8 + "c3") != []
    # What the files legitimately say about secrets.
    assert _secret_literals("set -a; . ~/.yxanul/mlflow.env; set +a; export RAY_AUTH_MODE=token") == []
    assert _secret_literals("~/.ray/auth_token: ~/.ray/auth_token\n- secretRef: {name: yxanul-mlflow}") == []


@pytest.mark.parametrize("path", [CLUSTER_YAML, KUBERAY_YAML, ROOT / "scripts" / "mlflow_server.sh"])
def test_no_token_or_password_literal(path):
    assert _secret_literals(path.read_text()) == []


def test_ray_token_auth_on_every_node_type(prepared):
    # file_mounts reach every node (head and workers) and the container: the token at Ray's default path.
    mounts = prepared["file_mounts"]
    assert mounts["~/.ray/auth_token"] == "~/.ray/auth_token"  # made by `ray get-auth-token --generate`
    assert mounts["~/.yxanul/mlflow.env"] == "~/.yxanul/mlflow.env"
    assert not [m for m in mounts.values() if Path(m).expanduser().resolve().is_relative_to(ROOT)
                and m != "."]  # no secret comes from inside the repository
    text = CLUSTER_YAML.read_text()
    assert "RAY_AUTH_MODE=disabled" not in text
    for name, settings in _node_types(prepared).items():
        head = name == prepared["head_node_type"]
        commands = settings.get("head_start_ray_commands" if head else "worker_start_ray_commands") or \
            prepared["head_start_ray_commands" if head else "worker_start_ray_commands"]
        starts = [c for c in commands if "ray start" in c]
        assert len(starts) == 1, name
        before = starts[0][:starts[0].index("ray start")]
        assert "RAY_AUTH_MODE=token" in before and ". ~/.yxanul/mlflow.env" in before, name
    # Interactive shells on the nodes (`ray exec ... 'ray status'`) get the mode too.
    assert any("export RAY_AUTH_MODE=token" in c and ".bashrc" in c for c in prepared["setup_commands"])


def test_start_commands_hand_the_secrets_to_ray_start_not_to_its_command_line(cluster, tmp_path):
    """Run each node's start command in bash with a stand-in `ray` that records its arguments and environment:
    what `ray start` sees is what every process of the node inherits."""
    import os
    import subprocess
    import sys

    home, bin_dir = tmp_path / "home", tmp_path / "bin"
    (home / ".yxanul").mkdir(parents=True)
    bin_dir.mkdir()
    (home / ".yxanul" / "mlflow.env").write_text("MLFLOW_TRACKING_USERNAME=alice\nMLFLOW_TRACKING_PASSWORD=pw-0123456789\n")
    (bin_dir / "ray").write_text('#!/bin/sh\necho "ARGS $*"\n'
                                 'env | grep -E "^(RAY_AUTH_MODE|RAY_enable|MLFLOW_)" | sort\n')
    (bin_dir / "ray").chmod(0o755)
    env = {"HOME": str(home), "RAY_HEAD_IP": "10.0.0.5",
           "PATH": f"{bin_dir}{os.pathsep}{Path(sys.executable).parent}{os.pathsep}/usr/bin:/bin"}
    uris = []
    for cmd in (cluster["head_start_ray_commands"][1], cluster["worker_start_ray_commands"][1]):
        out = subprocess.run(["bash", "-c", cmd], env=env, capture_output=True, text=True, timeout=120).stdout
        assert "RAY_AUTH_MODE=token" in out.splitlines()
        assert "RAY_enable_metrics_collection=0" in out.splitlines()  # no anonymous Prometheus exporter
        assert "MLFLOW_TRACKING_USERNAME=alice" in out and "MLFLOW_TRACKING_PASSWORD=pw-0123456789" in out
        assert "MLFLOW_AUTH_ADMIN" not in out  # the MLflow admin is in no Ray process's environment
        args = next(line for line in out.splitlines() if line.startswith("ARGS "))
        assert args.startswith("ARGS start") and "pw-0123456789" not in args and "alice" not in args
        uris.append(next(line for line in out.splitlines() if line.startswith("MLFLOW_TRACKING_URI=")))
    assert uris[1] == "MLFLOW_TRACKING_URI=http://10.0.0.5:5000"  # the worker's view of the head
    # The head's own URI is its network address, never loopback: the driver on the head hands it to Train
    # workers on other nodes, where 127.0.0.1 would be their own machine.
    head_host = uris[0].split("//", 1)[1].rsplit(":", 1)[0]
    assert head_host and not head_host.startswith("127.") and head_host != "localhost", uris[0]
    head_args = next(line for line in subprocess.run(["bash", "-c", cluster["head_start_ray_commands"][1]], env=env,
                                                     capture_output=True, text=True, timeout=120).stdout.splitlines()
                     if line.startswith("ARGS "))
    assert "--dashboard-host=127.0.0.1" in head_args  # reached through `ray dashboard` (SSH), not the network


def test_head_metrics_endpoints_are_dropped_from_outside_the_host(cluster, tmp_path):
    """Ray 2.60 binds the head's autoscaler (:44217) and dashboard (:44227) Prometheus endpoints to all interfaces
    on a node with a network address, answering without the token: every host drops what reaches those ports
    from outside (run with stand-ins for sudo and iptables that record the rule; idempotent)."""
    import os
    import subprocess

    (rule,) = [c for c in cluster["initialization_commands"] if "iptables" in c]
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "sudo").write_text('#!/bin/sh\nexec "$@"\n')
    (bin_dir / "iptables").write_text(f'#!/bin/sh\necho "$*" >> {tmp_path}/calls\n'
                                      f'case "$1" in -C) grep -q -- "-I" {tmp_path}/calls ;; esac\n')
    for tool in ("sudo", "iptables"):
        (bin_dir / tool).chmod(0o755)
    env = {"PATH": f"{bin_dir}{os.pathsep}/usr/bin:/bin"}
    for _ in range(2):  # `ray up` again: the rule is not added twice
        assert subprocess.run(["bash", "-c", rule], env=env, timeout=60).returncode == 0
    calls = (tmp_path / "calls").read_text().splitlines()
    inserted = [c for c in calls if c.startswith("-I ")]
    assert inserted == ["-I INPUT -p tcp -m multiport --dports 44217,44227 ! -i lo -j DROP"]
    assert calls[0].startswith("-C INPUT") and calls[-1].startswith("-C INPUT")


def test_mlflow_on_the_head_and_shared_storage(cluster):
    from ray.autoscaler._private.docker import docker_start_cmds

    mlflow_cmd = next(c for c in cluster["head_start_ray_commands"] if "mlflow_server.sh" in c)
    # The authenticated server (scripts/mlflow_server.sh, tested for real in tests/integration) with its
    # stores in /mlflow: sqlite:////mlflow/mlflow.db for runs, /mlflow/basic_auth.db for users.
    assert "/workspace/yxanul/scripts/mlflow_server.sh /mlflow --artifacts" in mlflow_cmd
    assert ". ~/.yxanul/mlflow.env" in mlflow_cmd  # its admin account
    assert "--artifacts-destination s3://" in mlflow_cmd
    assert "/efs/yxanul/mlflow-backup.db" in mlflow_cmd  # restored on a fresh head
    assert "/efs/yxanul/mlflow-users-backup.db" in mlflow_cmd
    # The container command Ray builds for the head: host networking (so MLflow and the dashboard
    # are on the head's own interfaces, reachable through SSH forwarding), EFS and the MLflow dir.
    docker = cluster["docker"]
    run = docker_start_cmds("ubuntu", docker["image"], cluster["file_mounts"], docker["container_name"],
                            docker["run_options"] + docker["head_run_options"], cluster["cluster_name"],
                            "/root", "docker")
    assert "--net=host" in run and "-v /efs:/efs" in run and "-v /home/ubuntu/mlflow:/mlflow" in run
    # The secrets inside the container, at the paths the start commands read (its home is /root).
    assert ":/root/.ray/auth_token " in run and ":/root/.yxanul/mlflow.env " in run
    assert any("mount -t nfs4" in c and " /efs" in c for c in cluster["initialization_commands"])


# --- KubeRay -------------------------------------------------------------------------------------

def test_kuberay_cluster_has_the_same_gpu_groups(cluster):
    docs = [d for d in yaml.safe_load_all(KUBERAY_YAML.read_text()) if d]
    ray_clusters = [d for d in docs if d.get("kind") == "RayCluster"]
    assert len(ray_clusters) == 1
    spec = ray_clusters[0]["spec"]
    assert spec["enableInTreeAutoscaling"] is True
    assert spec["rayVersion"] == "2.60.0"
    head_params = spec["headGroupSpec"]["rayStartParams"]
    assert head_params.get("num-cpus") == "0"
    groups = {}
    for group in spec["workerGroupSpecs"]:
        assert 0 <= group["minReplicas"] <= group["maxReplicas"], group["groupName"]
        # KubeRay passes the value to `ray start --resources` through a shell: a quoted JSON string.
        resources = json.loads(group["rayStartParams"].get("resources", '"{}"'))
        resources = json.loads(resources) if isinstance(resources, str) else resources
        container = group["template"]["spec"]["containers"][0]
        gpus = int(container["resources"]["limits"].get("nvidia.com/gpu", 0))
        accel = [k.split(":", 1)[1] for k in resources if k.startswith("accelerator_type:")]
        groups[group["groupName"]] = (accel[0] if accel else None, gpus)
        if accel:
            assert resources[f"accelerator_type:{accel[0]}"] == 1
            assert gpus > 0
    yaml_types = {
        _accelerator_of(s): s["resources"].get("GPU", 0)
        for n, s in _node_types(cluster).items() if n != cluster["head_node_type"]
    }
    assert {a: g for a, g in groups.values()} == yaml_types


def test_kuberay_auth_on_every_group():
    (spec,) = [d["spec"] for d in yaml.safe_load_all(KUBERAY_YAML.read_text()) if d and d.get("kind") == "RayCluster"]
    # KubeRay >= 1.5.1: the operator makes the token Secret and sets RAY_AUTH_MODE=token and RAY_AUTH_TOKEN in
    # every Ray container; nothing in the file may override the mode.
    assert spec["authOptions"] == {"mode": "token"}
    groups = {"head": spec["headGroupSpec"], **{g["groupName"]: g for g in spec["workerGroupSpecs"]}}
    assert len(groups) == 6
    for name, group in groups.items():
        container = group["template"]["spec"]["containers"][0]
        env = {e["name"]: e for e in container.get("env", [])}
        assert "RAY_AUTH_MODE" not in env and "RAY_AUTH_TOKEN" not in env, name
        assert container["envFrom"] == [{"secretRef": {"name": "yxanul-mlflow"}}], name  # the jobs' account
        # Every Ray container, the head's included, logs to the head's MLflow through its Service: the driver on
        # the head hands its URI to Train workers on GPU pods, where 127.0.0.1 is their own pod.
        assert env["MLFLOW_TRACKING_URI"]["value"] == "http://yxanul-head-svc:5000", name
        assert env["RAY_enable_metrics_collection"]["value"] == "0", name  # no anonymous Prometheus exporter
        assert not container.get("volumeMounts"), name  # MLflow's stores and admin are not in a Ray container
        assert "lifecycle" not in container, name


def test_kuberay_mlflow_runs_apart_with_its_admin_and_only_the_cluster_reaches_its_pods():
    docs = [d for d in yaml.safe_load_all(KUBERAY_YAML.read_text()) if d]
    (spec,) = [d["spec"] for d in docs if d.get("kind") == "RayCluster"]
    pod = spec["headGroupSpec"]["template"]["spec"]
    ray_head, mlflow = pod["containers"]
    assert ray_head["name"] == "ray-head" and mlflow["name"] == "mlflow"  # KubeRay's Ray container is the first
    command = " ".join(mlflow["command"])
    assert command.startswith("/workspace/yxanul/scripts/mlflow_server.sh /mlflow ") and "--port 5000" in command
    assert mlflow["envFrom"] == [{"secretRef": {"name": "yxanul-mlflow"}}]  # to create the jobs' account
    assert mlflow["volumeMounts"] == [{"name": "mlflow-state", "mountPath": "/mlflow"}]  # admin.env lives here
    assert [v["name"] for v in pod["volumes"]] == ["mlflow-state"]
    (policy,) = [d for d in docs if d.get("kind") == "NetworkPolicy"]
    assert policy["spec"]["podSelector"] == {"matchLabels": {"ray.io/cluster": "yxanul"}}
    assert policy["spec"]["policyTypes"] == ["Ingress"]
    assert policy["spec"]["ingress"] == [{"from": [{"podSelector": {"matchLabels": {"ray.io/cluster": "yxanul"}}}]}]
