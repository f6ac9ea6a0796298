"""Experiment tracking: a small Tracker interface, MLflow behind it, and run provenance.

Only rank 0 of a training run logs. The driver (``yxanul.train.launch``) resolves the tracking URI,
checks that the store answers *before* training starts (:func:`connect`), creates the MLflow run (or
finds the one a resumed run already has), logs params, provenance tags and the resolved config, and
passes the run id to the workers; rank 0 logs metrics into it with ``step = tokens seen``.

Naming (the contract that sweeps and compare read): metrics ``train/*``, ``val/<domain>/*``,
``val/bpb``; tags ``yxanul.*``; params ``ExperimentConfig.flat_params()``.

A run's lifecycle lives here alone: :func:`create_run`, :func:`reopen_run` and :func:`end_run` create it,
mark it running again and end it, always writing MLflow's status and the ``yxanul.status`` tag
(:data:`STATUS_TAG`, one of the ``Status`` values below) together. Nothing else writes that tag.

Resumes never log a step twice: :class:`MLflowTracker` reads, per metric key, the highest step the run
already holds and drops anything at or below it (a resumed run replays from its last checkpoint).
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import platform as _platform
import subprocess
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Mapping
from importlib import metadata
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

from yxanul.errors import TrackingError, first_line
from yxanul.tags import (
    CONFIG_HASH_TAG,
    CUDA_VERSION_TAG,
    DATA_MODE_TAG,
    ERROR_TAG,
    EXPERIMENT_KIND,
    EXPERIMENT_KIND_TAG,
    GIT_DIFF_SHA256_TAG,
    GIT_DIRTY_TAG,
    GIT_SHA_TAG,
    GPU_COUNT_TAG,
    GPU_DRIVER_TAG,
    GPU_NAME_TAG,
    HOST_TAG,
    MANIFEST_SHA256_TAG,
    NODE_ID_TAG,
    NODE_TYPE_TAG,
    NUM_WORKERS_TAG,
    REASON_TAG,
    STATUS_TAG,
    TOKENIZER_SHA256_TAG,
    TORCH_VERSION_TAG,
    VERSION_TAG_PREFIX,
)

__all__ = [
    "REASON_TAG",
    "STATUS_TAG",
    "MLflowTracker",
    "NullTracker",
    "Status",
    "Tracker",
    "check_reachable",
    "client",
    "connect",
    "create_run",
    "end_run",
    "git_state",
    "provenance_tags",
    "reopen_run",
    "resolve_tracking_uri",
]


class Status:
    """Values of :data:`STATUS_TAG`."""

    RUNNING = "running"
    FINISHED = "finished"
    """Reached train.max_tokens."""
    STOPPED = "stopped"
    """Stopped by train.stop_after_tokens (resumable)."""
    STOPPED_EARLY = "stopped_early"
    """A sweep's scheduler (ASHA) stopped the trial at a milestone."""
    KILLED = "killed"
    """Interrupted (Ctrl-C, a killed driver) before its end."""
    INTERRUPTED = "interrupted"
    """A sweep parent run whose sweep was interrupted."""
    FAILED = "failed"
    NOT_RUNNABLE = "not_runnable"
    """A sweep trial that cannot run on the cluster (recorded with the reason, never run)."""


_MLFLOW_STATUS = {Status.FINISHED: "FINISHED", Status.FAILED: "FAILED", Status.STOPPED: "KILLED",
                  Status.STOPPED_EARLY: "KILLED", Status.KILLED: "KILLED", Status.INTERRUPTED: "KILLED",
                  Status.NOT_RUNNABLE: "KILLED"}

DEFAULT_STORE = "outputs/mlflow.db"
"""Local SQLite store used when neither tracking.uri nor $MLFLOW_TRACKING_URI is set (artifacts beside it)."""

_PACKAGES = ("torch", "ray", "mlflow", "pyarrow", "tokenizers", "pydantic", "numpy", "transformer_engine")


@runtime_checkable
class Tracker(Protocol):
    """What the training loop needs from a tracker."""

    run_id: str | None

    def log_metrics(self, metrics: Mapping[str, float], step: int) -> None: ...

    def set_tags(self, tags: Mapping[str, str]) -> None: ...

    def log_artifact(self, local_path: str | Path, artifact_path: str | None = None) -> None: ...

    def log_text(self, text: str, artifact_file: str) -> None: ...


class NullTracker:
    """Records nothing durable; keeps what was logged in memory (unit tests, non-zero ranks)."""

    def __init__(self) -> None:
        self.run_id: str | None = None
        self.metrics: list[tuple[int, dict[str, float]]] = []
        self.tags: dict[str, str] = {}

    def log_metrics(self, metrics: Mapping[str, float], step: int) -> None:
        self.metrics.append((step, dict(metrics)))

    def set_tags(self, tags: Mapping[str, str]) -> None:
        self.tags.update(tags)

    def log_artifact(self, local_path: str | Path, artifact_path: str | None = None) -> None:
        pass

    def log_text(self, text: str, artifact_file: str) -> None:
        pass


# ---------------------------------------------------------------------------------------------------
# Where the store is, and whether it answers


def resolve_tracking_uri(uri: str | None) -> str:
    """``tracking.uri``, else ``$MLFLOW_TRACKING_URI``, else ``sqlite:///<cwd>/outputs/mlflow.db``.

    Relative SQLite paths are made absolute here (the driver resolves once; workers may run elsewhere).
    """
    if not uri and urllib.parse.urlsplit(os.environ.get("MLFLOW_TRACKING_URI", "")).password is not None:
        raise TrackingError("$MLFLOW_TRACKING_URI must not contain a password (runs record their URI); set "
                            "MLFLOW_TRACKING_USERNAME and MLFLOW_TRACKING_PASSWORD instead")
    uri = uri or os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{Path(DEFAULT_STORE).resolve()}"
    if uri.startswith("sqlite:///") and not uri.startswith("sqlite:////"):
        path = Path(uri.removeprefix("sqlite:///"))
        if not path.is_absolute():
            uri = f"sqlite:///{path.resolve()}"
    return uri


def _artifact_root(uri: str) -> str | None:
    """For a local SQLite store: artifacts in a folder beside the database (not ./mlruns of whatever cwd)."""
    if uri.startswith("sqlite:///"):
        db = Path(uri.removeprefix("sqlite:///"))
        return (db.parent / "mlartifacts").as_uri()
    return None


def check_reachable(uri: str, timeout_s: float = 10.0) -> None:
    """Raise :class:`TrackingError` naming ``uri`` and the fix unless the HTTP(S) tracking server answers
    ``/health`` within ``timeout_s`` (in seconds, rather than after MLflow's retries). Other URIs pass."""
    if not uri.startswith(("http://", "https://")):
        return
    try:
        with urllib.request.urlopen(f"{uri.rstrip('/')}/health", timeout=timeout_s) as resp:
            if resp.status == 200:
                return _check_credentials(uri, timeout_s)
            problem = f"HTTP {resp.status}"
    except urllib.error.HTTPError as exc:
        problem = f"HTTP {exc.code}"
    except (OSError, ValueError) as exc:
        problem = str(getattr(exc, "reason", exc))
    raise TrackingError(
        f"the MLflow tracking server {uri} is not reachable ({problem}); start it (e.g. `mlflow server --host "
        f"127.0.0.1 --port 5000`), fix tracking.uri / $MLFLOW_TRACKING_URI, or set tracking.enabled=false")


def _check_credentials(uri: str, timeout_s: float) -> None:
    """A server with authentication (``mlflow server --app-name basic-auth``) answers /health to anyone: ask
    for one experiment with the credentials MLflow's client will send, so a 401 is one line, not a retry loop."""
    user, password = os.environ.get("MLFLOW_TRACKING_USERNAME"), os.environ.get("MLFLOW_TRACKING_PASSWORD")
    request = urllib.request.Request(f"{uri.rstrip('/')}/api/2.0/mlflow/experiments/search?max_results=1")
    if user and password:
        token = base64.b64encode(f"{user}:{password}".encode()).decode()
        request.add_header("Authorization", f"Basic {token}")
    try:
        urllib.request.urlopen(request, timeout=timeout_s).close()
    except urllib.error.HTTPError as exc:
        if exc.code == 401:
            problem = (f"refused user {user!r} (HTTP 401): check" if user and password
                       else "requires a login (HTTP 401): set")
            raise TrackingError(f"the MLflow tracking server {uri} {problem} MLFLOW_TRACKING_USERNAME and "
                                f"MLFLOW_TRACKING_PASSWORD (an account of that server; docs/cluster.md, "
                                f"Security model)") from None
        if exc.code == 403:
            raise TrackingError(f"the MLflow tracking server {uri} refuses user {user!r} (HTTP 403): ask its admin "
                                f"for permission, or use another MLFLOW_TRACKING_USERNAME") from None
    except (OSError, ValueError):
        pass  # /health answered; let MLflow's own requests report anything else


def connect(uri: str, experiment: str, timeout_s: float = 10.0) -> str:
    """Check that the store answers and return the id of ``experiment`` (created if missing).

    Raises :class:`TrackingError` naming the URI and the fix, in seconds rather than after MLflow's retries.
    """
    check_reachable(uri, timeout_s)
    if uri.startswith("sqlite:///"):
        db = Path(uri.removeprefix("sqlite:///"))
        try:
            db.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise TrackingError(f"cannot create the MLflow store folder {db.parent} for tracking.uri={uri}: {exc}") from None
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=uri)
    try:
        found = client.get_experiment_by_name(experiment)
        if found is not None:
            if found.lifecycle_stage == "deleted":
                raise TrackingError(f"MLflow experiment {experiment!r} at {uri} is deleted; restore it in the MLflow UI "
                                    f"or choose another tracking.experiment")
            if found.tags.get(EXPERIMENT_KIND_TAG) is None:  # created before the platform set it
                client.set_experiment_tag(found.experiment_id, EXPERIMENT_KIND_TAG, EXPERIMENT_KIND)
            return found.experiment_id
        # The kind makes MLflow 3.x's UI open the experiment as model training, not in its GenAI view.
        return client.create_experiment(experiment, artifact_location=_artifact_root(uri),
                                        tags={EXPERIMENT_KIND_TAG: EXPERIMENT_KIND})
    except TrackingError:
        raise
    except Exception as exc:  # MLflow raises many types (MlflowException, OperationalError, requests errors)
        raise TrackingError(f"MLflow store {uri} cannot be used for experiment {experiment!r}: {first_line(exc)}") from None


# ---------------------------------------------------------------------------------------------------
# A run's lifecycle: create, reopen, end


def client(uri: str) -> Any:
    """An ``MlflowClient`` for ``uri`` (no global active-run state: safe in Ray workers and Tune trials)."""
    from mlflow import MlflowClient

    return MlflowClient(tracking_uri=uri)


def create_run(uri: str, experiment_id: str, run_name: str, tags: Mapping[str, str] | None = None,
               params: Mapping[str, str] | None = None) -> str:
    """Create a RUNNING run with ``tags`` (``yxanul.status=running`` unless they set it) and ``params``;
    return its id."""
    from mlflow.entities import Param

    mlflow = client(uri)
    run = mlflow.create_run(experiment_id, run_name=run_name, tags={STATUS_TAG: Status.RUNNING, **(tags or {})})
    items = [Param(k, str(v)[:6000]) for k, v in (params or {}).items()]
    for i in range(0, len(items), 100):  # MLflow accepts at most 100 params per batch
        mlflow.log_batch(run.info.run_id, params=items[i:i + 100])
    return run.info.run_id


def reopen_run(uri: str, run_id: str, tags: Mapping[str, str] | None = None) -> None:
    """Mark an ended run RUNNING again (a resumed run or sweep), with ``tags``."""
    from mlflow.entities import RunTag

    mlflow = client(uri)
    mlflow.update_run(run_id, status="RUNNING")
    merged = {**(tags or {}), STATUS_TAG: Status.RUNNING}
    mlflow.log_batch(run_id, tags=[RunTag(k, str(v)) for k, v in merged.items()])


def end_run(uri: str, run_id: str, status: str, *, reason: str = "", error: str = "",
            tags: Mapping[str, str] | None = None, only_if_running: bool = False) -> bool:
    """End a run with the verdict ``status`` (a :class:`Status` value): MLflow's status follows from it.

    ``reason`` goes to :data:`REASON_TAG`, ``error`` to :data:`ERROR_TAG`. Tags are written before the
    run is terminated, so a reader that sees the run ended sees its verdict. ``only_if_running`` leaves
    a run that is already ended alone; returns whether this call ended the run.
    """
    from mlflow.entities import RunTag

    if status not in _MLFLOW_STATUS:
        raise ValueError(f"unknown run status {status!r}; one of {sorted(_MLFLOW_STATUS)}")
    mlflow = client(uri)
    if only_if_running and mlflow.get_run(run_id).info.status != "RUNNING":
        return False
    merged = dict(tags or {})
    if reason:
        merged[REASON_TAG] = reason[:5000]
    if error:
        merged[ERROR_TAG] = error[:5000]
    merged[STATUS_TAG] = status
    mlflow.log_batch(run_id, tags=[RunTag(k, str(v)) for k, v in merged.items()])
    mlflow.set_terminated(run_id, _MLFLOW_STATUS[status])
    return True


# ---------------------------------------------------------------------------------------------------
# The MLflow tracker


class MLflowTracker:
    """Logs into one existing MLflow run through ``MlflowClient`` (no global "active run" state, so it is safe
    in Ray workers and Tune trials). ``skip_logged=True`` drops metrics at steps the run already has."""

    def __init__(self, uri: str, run_id: str, skip_logged: bool = True) -> None:
        from mlflow import MlflowClient

        self.uri = uri
        self.run_id: str | None = run_id
        self._client = MlflowClient(tracking_uri=uri)
        self._logged_up_to: dict[str, int] = {}
        if skip_logged:
            run = self._client.get_run(run_id)
            for key in run.data.metrics:
                steps = [m.step for m in self._client.get_metric_history(run_id, key)]
                if steps:
                    self._logged_up_to[key] = max(steps)

    @classmethod
    def create(cls, uri: str, experiment_id: str, run_name: str, tags: Mapping[str, str] | None = None,
               params: Mapping[str, str] | None = None) -> MLflowTracker:
        """Create a new run (:func:`create_run`) and return a tracker for it."""
        return cls(uri, create_run(uri, experiment_id, run_name, tags, params), skip_logged=False)

    def last_step(self, key: str) -> int | None:
        """Highest step already logged for ``key`` (None if none)."""
        return self._logged_up_to.get(key)

    def log_metrics(self, metrics: Mapping[str, float], step: int) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        batch = [Metric(k, float(v), now, int(step)) for k, v in metrics.items()
                 if step > self._logged_up_to.get(k, -1)]
        if not batch:
            return
        self._client.log_batch(self.run_id, metrics=batch)
        for m in batch:
            self._logged_up_to[m.key] = m.step

    def set_tags(self, tags: Mapping[str, str]) -> None:
        from mlflow.entities import RunTag

        if tags:
            self._client.log_batch(self.run_id, tags=[RunTag(k, str(v)) for k, v in tags.items()])

    def log_artifact(self, local_path: str | Path, artifact_path: str | None = None) -> None:
        path = Path(local_path)
        if path.is_dir():
            self._client.log_artifacts(self.run_id, str(path), artifact_path)
        else:
            self._client.log_artifact(self.run_id, str(path), artifact_path)

    def log_text(self, text: str, artifact_file: str) -> None:
        self._client.log_text(self.run_id, text, artifact_file)

    def status(self) -> str:
        """The run's MLflow status now (RUNNING, FINISHED, FAILED, KILLED)."""
        return self._client.get_run(self.run_id).info.status


# ---------------------------------------------------------------------------------------------------
# Provenance


def git_state(path: str | Path | None = None) -> dict[str, str]:
    """SHA, dirty flag and (when dirty) the diff of the checkout holding ``path`` (default: this package)."""
    where = Path(path) if path else Path(__file__).resolve().parent

    def git(*args: str) -> str | None:
        try:
            out = subprocess.run(["git", *args], cwd=where, capture_output=True, text=True, timeout=20)
        except (OSError, subprocess.TimeoutExpired):
            return None
        return out.stdout if out.returncode == 0 else None

    sha = git("rev-parse", "HEAD")
    if sha is None:
        return {"sha": "unknown", "dirty": "unknown", "diff": ""}
    status = git("status", "--porcelain", "--untracked-files=no") or ""
    diff = (git("diff", "HEAD") or "") if status.strip() else ""
    return {"sha": sha.strip(), "dirty": str(bool(status.strip())).lower(), "diff": diff}


def _versions() -> dict[str, str]:
    found = {}
    for name in _PACKAGES:
        try:
            found[name] = metadata.version(name.replace("_", "-"))
        except metadata.PackageNotFoundError:
            continue
    found["python"] = _platform.python_version()
    return found


def file_sha256(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def provenance_tags(config_hash: str, manifest_path: str | Path | None = None,
                    git: Mapping[str, str] | None = None) -> dict[str, str]:
    """Tags for the run: git SHA + dirty flag, package versions, config hash, tokenizer and manifest hashes.

    GPU name and count are added by rank 0 (the driver may run on a machine without the training GPUs).
    """
    git = git if git is not None else git_state()
    tags = {GIT_SHA_TAG: git["sha"], GIT_DIRTY_TAG: git["dirty"], CONFIG_HASH_TAG: config_hash,
            HOST_TAG: _platform.node(), **git_diff_tags(git)}
    tags.update({f"{VERSION_TAG_PREFIX}{k}": v for k, v in _versions().items()})
    if manifest_path is not None and Path(manifest_path).is_file():
        tags[MANIFEST_SHA256_TAG] = file_sha256(manifest_path)
        manifest: dict[str, Any] = json.loads(Path(manifest_path).read_text())
        tokenizer = manifest.get("tokenizer") or {}
        if tokenizer.get("sha256"):
            tags[TOKENIZER_SHA256_TAG] = str(tokenizer["sha256"])
        if manifest.get("mode"):
            tags[DATA_MODE_TAG] = str(manifest["mode"])
    return tags


GIT_DIFF_ARTIFACT = "provenance/git_diff.patch"
"""Where a dirty checkout's diff goes among the run's artifacts (its sha256 is a tag)."""


def git_diff_tags(git: Mapping[str, str]) -> dict[str, str]:
    """The diff's sha256 when the checkout was dirty (the diff itself goes to :data:`GIT_DIFF_ARTIFACT`), so
    two runs say whether they ran the same uncommitted code."""
    diff = git.get("diff") or ""
    return {GIT_DIFF_SHA256_TAG: hashlib.sha256(diff.encode()).hexdigest()} if diff else {}


def node_tags() -> dict[str, str]:
    """The Ray node the calling process runs on: its id, and the cluster-launcher node type that started it
    (``RAY_NODE_TYPE_NAME``, which Ray's autoscalers and KubeRay set on the nodes they start; the
    ``ray.io/node-group`` label where Ray sets that instead; empty on a node started by hand)."""
    import ray

    if not ray.is_initialized():
        return {}
    ctx = ray.get_runtime_context()
    node_type = ctx.get_node_labels().get("ray.io/node-group") or os.environ.get("RAY_NODE_TYPE_NAME", "")
    return {NODE_ID_TAG: ctx.get_node_id(), NODE_TYPE_TAG: node_type}


def device_tags(use_gpu: bool, num_workers: int) -> dict[str, str]:
    """GPU name and count, and the torch build, CUDA and NVIDIA driver versions as seen by the calling (rank 0)
    process (the driver process may run on a machine without the training GPUs)."""
    import torch

    tags = {TORCH_VERSION_TAG: torch.__version__, NUM_WORKERS_TAG: str(num_workers)}
    if not use_gpu:
        return {**tags, GPU_NAME_TAG: "none", GPU_COUNT_TAG: "0"}
    name = torch.cuda.get_device_name() if torch.cuda.is_available() else "unavailable"
    tags.update({GPU_NAME_TAG: name, GPU_COUNT_TAG: str(num_workers), CUDA_VERSION_TAG: str(torch.version.cuda)})
    driver = _nvidia_driver()
    if driver:
        tags[GPU_DRIVER_TAG] = driver
    return tags


def _nvidia_driver() -> str | None:
    """The NVIDIA driver version from ``nvidia-smi`` (None where it is missing or fails: the tag is left out)."""
    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
                             capture_output=True, text=True, timeout=20)
    except (OSError, subprocess.TimeoutExpired):
        return None
    lines = out.stdout.strip().splitlines() if out.returncode == 0 else []
    return lines[0].strip() if lines else None
