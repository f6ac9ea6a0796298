"""The autoscaling cluster of ``cluster.yaml``, simulated on one machine with Ray's own autoscaler.

Ray ships a ``fake_multinode`` node provider: the autoscaler "launches" a node by starting another raylet
on the same machine with the node type's resources. Fed a config derived from the real ``cluster.yaml``
(same node type names, same custom resources such as ``accelerator_type:L4``, CPU and GPU counts scaled
down), Ray's autoscaler plans, starts and retires nodes for the resource demands of a real sweep, with
the same node types and the same demands as on AWS. GPUs there are logical resources only: nothing runs
on a GPU, which is why trials in the simulation set ``scaling.simulate_accelerators=true`` (they request
the same resources and train on CPU in fp32, tagged as simulated).

    config = simulated_config(yaml.safe_load(open("cluster.yaml")), gcs_port=6390)  # the config only
    with SimulatedCluster("cluster.yaml", workdir, idle_timeout_minutes=0.2) as cluster:  # ray start --head
        cluster.ray_cli(*submit_args(cluster.dashboard_url, repo, ["python", "-m", "jobs.sweep", ...]))
        print(cluster.status())                            # ray status
        cluster.nodes()                                    # Ray's node table, with node types

What differs from the cloud (Ray 2.60):
- The head node type is renamed ``ray.head.default``: the fake provider registers its head under that
  name and no other.
- Autoscaler v1 runs, not v2 (which ``ray up`` uses by default since 2.50): v2 reads the provider's
  defaults from ``fake_multi_node/example.yaml``, a file the Ray wheel does not ship.
- No node setup: no container, no file mounts, no setup commands (the provider starts raylets directly).
- Every simulated node shares this machine's CPUs; the CPU counts are logical.
- Every simulated node shares the head's session folder, so jobs use their working directory in place
  (``local://``, :func:`submit_args`) instead of uploading it.

Processes: the head is started in its own process group and the fake nodes are the head's
autoscaler's children; :meth:`SimulatedCluster.stop` ends that group and any process still using the
cluster's temp folder. It never runs ``ray stop`` (which stops every Ray on the machine).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from yxanul.accelerators import AUTOSCALER_CONFIG_ENV
from yxanul.errors import ConfigError

__all__ = [
    "HEAD_NODE_TYPE",
    "NodeInfo",
    "SimulatedCluster",
    "simulated_config",
    "submit_args",
    "write_simulated_config",
]

HEAD_NODE_TYPE = "ray.head.default"
"""The head node type name the fake provider requires (it registers its head under this name only)."""



def simulated_config(cluster: Mapping[str, Any], *, gcs_port: int, cpus_per_node: int = 2, gpus_per_node: int = 2,
                     max_workers_per_type: int = 1, idle_timeout_minutes: float | None = None,
                     source: str = "cluster.yaml") -> dict[str, Any]:
    """The ``fake_multinode`` autoscaler config for a cluster-launcher config (``cluster.yaml``).

    Kept: every worker node type's name, its custom resources (``accelerator_type:<T>``) and labels,
    ``min_workers``, ``upscaling_speed`` and ``idle_timeout_minutes`` (unless given). Scaled down to fit
    a small machine: a node's CPUs to at most ``cpus_per_node``, its (logical) GPUs to at most
    ``gpus_per_node`` (0 stays 0; two by default, so that two 1-GPU trials can share a node as they share
    an 8-GPU node in the cloud), ``max_workers`` per type to at most ``max_workers_per_type``. The head
    keeps its resources (scaled the same way) under the name :data:`HEAD_NODE_TYPE`. Dropped: provider,
    auth, docker, file mounts and commands (the fake provider starts raylets directly, with no setup).
    """
    if min(cpus_per_node, gpus_per_node, max_workers_per_type) < 1:
        raise ConfigError(f"cpus_per_node ({cpus_per_node}), gpus_per_node ({gpus_per_node}) and "
                          f"max_workers_per_type ({max_workers_per_type}) must be at least 1")
    types = cluster.get("available_node_types")
    head = cluster.get("head_node_type")
    if not isinstance(types, Mapping) or not types:
        raise ConfigError(f"{source}: available_node_types must map node type names to their settings")
    if head not in types:
        raise ConfigError(f"{source}: head_node_type {head!r} is not one of available_node_types "
                          f"({', '.join(types)})")
    if HEAD_NODE_TYPE in types and head != HEAD_NODE_TYPE:
        raise ConfigError(f"{source}: a worker node type is named {HEAD_NODE_TYPE!r}, the name the simulation "
                          "gives the head; rename it")

    def scaled(name: str, settings: Mapping[str, Any]) -> dict[str, Any]:
        resources = dict(settings.get("resources") or {})
        if "CPU" not in resources:
            # Without it Ray detects the instance type's CPUs on AWS; there is nothing to detect here.
            raise ConfigError(f"{source}: node type {name!r} must state resources.CPU (and GPU when it has "
                              "GPUs) so the simulation can scale them")
        if resources["CPU"]:
            resources["CPU"] = min(int(resources["CPU"]), cpus_per_node)
        if resources.get("GPU"):
            resources["GPU"] = min(int(resources["GPU"]), gpus_per_node)
        out: dict[str, Any] = {"resources": resources, "node_config": {}}
        if settings.get("labels"):
            out["labels"] = dict(settings["labels"])
        if name == head:
            out["max_workers"] = 0
        else:
            out["min_workers"] = min(int(settings.get("min_workers", 0)), max_workers_per_type)
            out["max_workers"] = min(int(settings.get("max_workers", max_workers_per_type)), max_workers_per_type)
        return out

    node_types = {(HEAD_NODE_TYPE if name == head else name): scaled(name, settings)
                  for name, settings in types.items()}
    workers = sum(t["max_workers"] for n, t in node_types.items() if n != HEAD_NODE_TYPE)
    idle = cluster.get("idle_timeout_minutes", 5) if idle_timeout_minutes is None else idle_timeout_minutes
    return {
        "cluster_name": f"{cluster.get('cluster_name', 'cluster')}-simulated",
        "max_workers": workers,
        "upscaling_speed": cluster.get("upscaling_speed", 1.0),
        "idle_timeout_minutes": idle,
        "provider": {
            "type": "fake_multinode",
            # Nodes are raylets on this machine; the provider would otherwise look for the GCS on :6379.
            "gcs_address": f"127.0.0.1:{gcs_port}",
            "use_node_id_as_ip": True,
            "disable_node_updaters": True,
            "disable_launch_config_check": True,
        },
        "auth": {"ssh_user": "ubuntu"},
        "head_node_type": HEAD_NODE_TYPE,
        "available_node_types": node_types,
        "file_mounts": {},
        "cluster_synced_files": [],
        "file_mounts_sync_continuously": False,
        "initialization_commands": [],
        "setup_commands": [],
        "head_setup_commands": [],
        "worker_setup_commands": [],
        "head_start_ray_commands": [],
        "worker_start_ray_commands": [],
    }


def write_simulated_config(cluster_yaml: str | Path, out: str | Path, **kwargs: Any) -> Path:
    """Read ``cluster_yaml``, write its :func:`simulated_config` to ``out`` (a YAML file); return ``out``."""
    path = Path(cluster_yaml)
    if not path.is_file():
        raise ConfigError(f"cluster config {path} does not exist")
    try:
        cluster = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path} is not valid YAML: {str(exc).splitlines()[0]}") from None
    if not isinstance(cluster, Mapping):
        raise ConfigError(f"{path} must hold a Ray cluster-launcher config (a mapping)")
    config = simulated_config(cluster, source=str(path), **kwargs)
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(f"# Generated from {path} by yxanul.cluster_sim: Ray's fake_multinode provider, for a local\n"
                   "# rehearsal of the autoscaler (docs/cluster.md, 'Try the autoscaler locally').\n"
                   + yaml.safe_dump(config, sort_keys=False))
    return out


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@dataclass
class NodeInfo:
    """One node of the Ray node table."""

    node_id: str
    node_type: str
    """The node type it was launched as (its resources identify it: see :meth:`SimulatedCluster.nodes`)."""
    alive: bool
    """False once the node was removed (removed nodes stay in Ray's node table as DEAD)."""
    started_at: float | None = None
    """When the node registered with the head (Unix time, seconds)."""
    ended_at: float | None = None
    """When it was removed (Unix time, seconds), None while alive."""


class SimulatedCluster:
    """A ``ray start --head --autoscaling-config`` head with the fake provider, token auth on, own ports.

    ``workdir`` holds the config, the auth token (made for this cluster, never ``~/.ray/auth_token``),
    the head's log and Ray's temp folder (whose path must stay short: Ray's socket paths are limited to
    107 bytes, so the temp folder goes under /tmp).
    """

    def __init__(self, cluster_yaml: str | Path, workdir: str | Path, *, idle_timeout_minutes: float | None = None,
                 cpus_per_node: int = 2, gpus_per_node: int = 2, max_workers_per_type: int = 1) -> None:
        self.workdir = Path(workdir).resolve()
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.gcs_port = _free_port()
        self.dashboard_port = _free_port()
        self.config_path = write_simulated_config(
            cluster_yaml, self.workdir / "autoscaler.yaml", gcs_port=self.gcs_port, cpus_per_node=cpus_per_node,
            gpus_per_node=gpus_per_node, max_workers_per_type=max_workers_per_type,
            idle_timeout_minutes=idle_timeout_minutes)
        self.config = yaml.safe_load(self.config_path.read_text())
        self.token_path = self.workdir / "auth_token"
        if not self.token_path.is_file():
            import secrets

            from yxanul.files import write_secret

            write_secret(self.token_path, secrets.token_hex(32))  # what `ray get-auth-token --generate` writes, 0600
        self.temp_dir = tempfile.mkdtemp(prefix="/tmp/raysim")
        self._proc: subprocess.Popen[bytes] | None = None
        self._log: Any = None
        self._started_at = time.time()
        self._seen: dict[str, tuple[str, bool]] = {}

    # -- addresses and environment -----------------------------------------------------------------

    @property
    def gcs_address(self) -> str:
        return f"127.0.0.1:{self.gcs_port}"

    @property
    def dashboard_url(self) -> str:
        return f"http://127.0.0.1:{self.dashboard_port}"

    def client_env(self) -> dict[str, str]:
        """Environment for a client (``ray status``, ``ray job submit``, a driver): token auth on, this
        cluster's token file, the venv's executables first on PATH."""
        from yxanul.ray_session import local_server_env

        bin_dir = str(Path(sys.executable).parent)
        # local_server_env: the simulated nodes listen on 127.0.0.1 only, and a client (`ray status`) must then
        # not rewrite 127.0.0.1 into the machine's address (Ray 2.60 does, outside its local-only mode).
        env = {**os.environ, **local_server_env(), "RAY_AUTH_MODE": "token",
               "RAY_AUTH_TOKEN_PATH": str(self.token_path), "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}"}
        env.pop("RAY_AUTH_TOKEN", None)  # it would take precedence over the file
        env.pop("RAY_ADDRESS", None)
        return env

    # -- lifecycle ----------------------------------------------------------------------------------

    def start(self, timeout_s: float = 180) -> SimulatedCluster:
        """Start the head (its autoscaler starts worker nodes on demand); return when its Jobs API answers."""
        head = self.config["available_node_types"][HEAD_NODE_TYPE]["resources"]
        cpus = head.get("CPU", 0)
        custom = {k: v for k, v in head.items() if k not in ("CPU", "GPU", "memory", "object_store_memory")}
        env = {**self.client_env(), "RAY_FAKE_CLUSTER": "1", "AUTOSCALER_UPDATE_INTERVAL_S": "1",
               AUTOSCALER_CONFIG_ENV: str(self.config_path)}
        ray = str(Path(sys.executable).with_name("ray"))
        cmd = [ray, "start", "--head", "--block", "--node-ip-address=127.0.0.1", f"--port={self.gcs_port}",
               f"--autoscaling-config={self.config_path}", f"--num-cpus={cpus:g}", f"--num-gpus={head.get('GPU', 0)}",
               "--include-dashboard=true", "--dashboard-host=127.0.0.1", f"--dashboard-port={self.dashboard_port}",
               f"--dashboard-agent-listen-port={_free_port()}", f"--dashboard-agent-grpc-port={_free_port()}",
               f"--runtime-env-agent-port={_free_port()}", f"--ray-client-server-port={_free_port()}",
               f"--metrics-export-port={_free_port()}", f"--temp-dir={self.temp_dir}", "--disable-usage-stats"]
        if custom:
            cmd.append(f"--resources={json.dumps(custom)}")
        self._started_at = time.time()
        self._log = open(self.workdir / "head.log", "w")
        self._proc = subprocess.Popen(cmd, env=env, stdout=self._log, stderr=subprocess.STDOUT,
                                      start_new_session=True)
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                raise RuntimeError(f"ray start --head exited with {self._proc.returncode}: "
                                   + (self.workdir / "head.log").read_text()[-3000:])
            try:  # the Jobs API answers, and the head is in the node table
                if any(n.alive for n in self.nodes()):
                    return self
            except OSError:
                pass
            time.sleep(0.5)
        self.stop()
        raise TimeoutError(f"the simulated cluster's head did not answer within {timeout_s:.0f}s "
                           f"(log: {self.workdir / 'head.log'})")

    def stop(self) -> None:
        """End the head's process group, then any process left using this cluster's temp folder (the fake
        nodes' raylets are the autoscaler's children, but a worker may outlive its parent)."""
        if self._proc is not None:
            for sig, grace in ((signal.SIGTERM, 10), (signal.SIGKILL, 5)):
                try:
                    os.killpg(self._proc.pid, sig)
                except ProcessLookupError:
                    break
                try:
                    self._proc.wait(timeout=grace)
                    break
                except subprocess.TimeoutExpired:
                    continue
        for pid in _pids_using(self.temp_dir):
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        if self._log is not None:
            self._log.close()
            self._log = None
        shutil.rmtree(self.temp_dir, ignore_errors=True)

    def __enter__(self) -> SimulatedCluster:
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()

    # -- clients ------------------------------------------------------------------------------------

    def _get(self, path: str) -> Any:
        """GET a dashboard endpoint with the cluster's token (token auth refuses anonymous requests)."""
        request = urllib.request.Request(f"{self.dashboard_url}{path}", headers={
            "Authorization": f"Bearer {self.token_path.read_text().strip()}"})
        with urllib.request.urlopen(request, timeout=10) as resp:
            return json.loads(resp.read().decode() or "null")

    def ray_cli(self, *args: str, timeout_s: float = 120, check: bool = True) -> subprocess.CompletedProcess[str]:
        """Run ``ray <args>`` as a client of this cluster (token auth)."""
        ray = str(Path(sys.executable).with_name("ray"))
        done = subprocess.run([ray, *args], env=self.client_env(), capture_output=True, text=True, timeout=timeout_s)
        if check and done.returncode != 0:
            raise RuntimeError(f"ray {' '.join(args)} failed ({done.returncode}): {done.stdout[-2000:]}"
                               f"{done.stderr[-2000:]}")
        return done

    def watch(self, until: Callable[[], bool], every_s: float = 2.0,
              say: Callable[[str], None] | None = None) -> None:
        """Print each node's start and removal (times from Ray's node table, relative to the cluster's start),
        with ``ray status`` after each change, until ``until()`` is true."""
        say = say or _say
        while True:
            changed = False
            for node in self.nodes():
                if self._seen.get(node.node_id) != (node.node_type, node.alive):
                    event, at = ("up", node.started_at) if node.alive else ("removed", node.ended_at)
                    say(f"+{(at or time.time()) - self._started_at:.0f}s node {node.node_type} "
                        f"({node.node_id[-5:]}) {event}")
                    self._seen[node.node_id] = (node.node_type, node.alive)
                    changed = True
            if changed:
                say(self.status().strip())
            if until():
                return
            time.sleep(every_s)

    def workers_alive(self) -> bool:
        """Whether a worker node was seen alive by the last :meth:`watch` poll."""
        return any(alive for kind, alive in self._seen.values() if kind != HEAD_NODE_TYPE)

    def rehearse(self, entrypoint: Sequence[str], repo: str | Path, say: Callable[[str], None] | None = None) -> int:
        """Submit ``entrypoint`` with ``ray job submit`` (log in ``<workdir>/job.log``), print node events while
        it runs, then wait for the idle nodes to be removed (the idle timeout plus a minute at most). Returns
        the job's exit code."""
        say = say or _say
        log_path = self.workdir / "job.log"
        args = submit_args(self.dashboard_url, repo, entrypoint)
        say(f"submitting: ray {' '.join(args)}\njob log: {log_path}")
        with open(log_path, "w") as log:
            job = subprocess.Popen([str(Path(sys.executable).with_name("ray")), *args], env=self.client_env(),
                                   stdout=log, stderr=subprocess.STDOUT, cwd=repo)
            self.watch(until=lambda: job.poll() is not None, say=say)
        tail = [line for line in log_path.read_text().splitlines() if line.strip()][-12:]
        say(f"job {'succeeded' if job.returncode == 0 else 'failed'} at +{time.time() - self._started_at:.0f}s; "
            "its last lines:\n" + "\n".join(tail))
        deadline = time.monotonic() + 60 * float(self.config["idle_timeout_minutes"]) + 60
        self.watch(until=lambda: not self.workers_alive() or time.monotonic() > deadline, say=say)
        say(f"+{time.time() - self._started_at:.0f}s: "
            + ("all worker nodes removed" if not self.workers_alive() else "worker nodes still up")
            + "; stopping the cluster")
        return job.returncode

    def status(self) -> str:
        """``ray status`` of this cluster (nodes by type, pending nodes, resource demands)."""
        return self.ray_cli("status", f"--address={self.gcs_address}").stdout

    def nodes(self) -> list[NodeInfo]:
        """The Ray node table with each node's type, read from its resources: the head is the node with
        ``node:__internal_head__``; a worker is the type whose custom resources it has (the generated
        config gives every type other than the head distinct custom resources, or none for one type)."""
        types = self.config["available_node_types"]
        table = self._get("/api/v0/nodes?limit=10000&detail=true")["data"]["result"]["result"]
        out = []
        for node in table:
            resources = node.get("resources_total") or {}
            kind = HEAD_NODE_TYPE if node.get("is_head_node") else _type_of(resources, types)
            started, ended = node.get("start_time_ms"), node.get("end_time_ms")
            out.append(NodeInfo(node["node_id"], kind, node["state"] == "ALIVE", started / 1000 if started else None,
                                ended / 1000 if ended else None))
        return out


def _say(message: str) -> None:
    print(message, flush=True)


def _type_of(resources: Mapping[str, float], types: Mapping[str, Mapping[str, Any]]) -> str:
    own = {k for k in resources if not k.startswith(("node:", "CPU", "GPU", "memory", "object_store_memory"))}
    matches = [name for name, t in types.items() if name != HEAD_NODE_TYPE
               and {k for k in t["resources"] if k not in ("CPU", "GPU")} == own
               and bool(t["resources"].get("GPU")) == bool(resources.get("GPU"))]
    return matches[0] if len(matches) == 1 else "unknown"


def _pids_using(folder: str) -> list[int]:
    """Processes whose command line mentions ``folder`` (Ray passes its temp folder to every process)."""
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if folder in cmdline:
            pids.append(int(entry.name))
    return pids


def submit_args(address: str, repo: str | Path, entrypoint: Sequence[str], *,
                submission_id: str | None = None) -> list[str]:
    """``ray job submit`` arguments for the simulated cluster: as docs/cluster.md submits to the cloud
    cluster (the checkout as the working directory, ``PYTHONPATH=platform``), except that the working
    directory is ``local://<repo>``, used in place. Every simulated node is this machine and shares the
    head's session folder, so an uploaded working directory would be unpacked again into the same folder
    by each new node (Ray 2.60 overwrites it), deleting the folder the running job driver is in."""
    runtime_env = {"env_vars": {"PYTHONPATH": "platform"}}
    args = ["job", "submit", f"--address={address}", f"--working-dir=local://{Path(repo).resolve()}",
            f"--runtime-env-json={json.dumps(runtime_env)}"]
    if submission_id:
        args.append(f"--submission-id={submission_id}")
    return [*args, "--", *entrypoint]
