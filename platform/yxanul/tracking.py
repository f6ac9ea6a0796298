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

Training survives its tracker: the workers log through :class:`ResilientTracker`, which keeps what MLflow
refuses (a rotated password: HTTP 401; a missing permission: 403; a server down or answering 5xx), says so in
one warning line, retries with back-off and sends everything, in order, once MLflow takes it again. What is
still unsent when training ends goes to the run's storage (:data:`SPOOL_DIR`), as does a verdict the driver
could not write (:func:`end_run_or_spool`); ``python -m jobs.replay <run folder>`` sends both
(:func:`replay_spool`). Training itself never waits more than one request's timeout for MLflow.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import json
import os
import platform as _platform
import re
import shutil
import subprocess
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator, Mapping
from importlib import metadata
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

from yxanul.errors import TrackingError, first_line
from yxanul.files import sha256_file, uri_secret
from yxanul.tags import (
    BOOT_ID_TAG,
    CONFIG_HASH_TAG,
    CUDA_VERSION_TAG,
    DATA_MODE_TAG,
    DATA_SHA256_TAG,
    ERROR_TAG,
    EXPERIMENT_KIND,
    EXPERIMENT_KIND_TAG,
    GIT_DIFF_SHA256_TAG,
    GIT_DIRTY_TAG,
    GIT_SHA_TAG,
    GPU_COUNT_TAG,
    GPU_DRIVER_TAG,
    GPU_NAME_TAG,
    GPU_UUID_TAG,
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
    "SPOOL_DIR",
    "MLflowTracker",
    "NullTracker",
    "ResilientTracker",
    "Status",
    "Tracker",
    "check_reachable",
    "client",
    "connect",
    "create_run",
    "describe_failure",
    "end_run",
    "end_run_or_spool",
    "git_state",
    "provenance_tags",
    "reopen_run",
    "replay_spool",
    "resolve_tracking_uri",
    "spooled",
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
    NOT_NEEDED = "not_needed"
    """A ``seeds: auto`` trial stopped because the stopping rule had decided before its seed was needed."""


_MLFLOW_STATUS = {Status.FINISHED: "FINISHED", Status.FAILED: "FAILED", Status.STOPPED: "KILLED",
                  Status.STOPPED_EARLY: "KILLED", Status.KILLED: "KILLED", Status.INTERRUPTED: "KILLED",
                  Status.NOT_RUNNABLE: "KILLED", Status.NOT_NEEDED: "KILLED"}

DEFAULT_STORE = "outputs/mlflow.db"
"""Local SQLite store used when neither tracking.uri nor $MLFLOW_TRACKING_URI is set (artifacts beside it)."""

_PACKAGES = ("torch", "ray", "mlflow", "pyarrow", "tokenizers", "pydantic", "numpy", "transformer_engine")


@runtime_checkable
class Tracker(Protocol):
    """What the training loop needs from a tracker."""

    run_id: str | None

    def log_metrics(self, metrics: Mapping[str, float], step: int) -> None: ...

    def flush(self) -> None: ...

    def set_tags(self, tags: Mapping[str, str]) -> None: ...

    def log_artifact(self, local_path: str | Path, artifact_path: str | None = None) -> None: ...

    def log_text(self, text: str, artifact_file: str) -> None: ...

    def close(self) -> None: ...


class NullTracker:
    """Records nothing durable; keeps what was logged in memory (unit tests, non-zero ranks)."""

    def __init__(self) -> None:
        self.run_id: str | None = None
        self.metrics: list[tuple[int, dict[str, float]]] = []
        self.tags: dict[str, str] = {}

    def log_metrics(self, metrics: Mapping[str, float], step: int) -> None:
        self.metrics.append((step, dict(metrics)))

    def flush(self) -> None:
        pass

    def set_tags(self, tags: Mapping[str, str]) -> None:
        self.tags.update(tags)

    def log_artifact(self, local_path: str | Path, artifact_path: str | None = None) -> None:
        pass

    def log_text(self, text: str, artifact_file: str) -> None:
        pass

    def close(self) -> None:
        pass


# ---------------------------------------------------------------------------------------------------
# Where the store is, and whether it answers


def resolve_tracking_uri(uri: str | None) -> str:
    """``tracking.uri``, else ``$MLFLOW_TRACKING_URI``, else ``sqlite:///<cwd>/outputs/mlflow.db``.

    Relative SQLite paths are made absolute here (the driver resolves once; workers may run elsewhere).
    """
    where = "the tracking URI" if uri else "$MLFLOW_TRACKING_URI"
    uri = uri or os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{Path(DEFAULT_STORE).resolve()}"
    secret = uri_secret(uri)
    if secret:  # checked before any use, and never echoed: the URI itself is not in the message
        raise TrackingError(f"{where} must not contain {secret} (runs record their URI, and errors print it); set "
                            f"MLFLOW_TRACKING_USERNAME and MLFLOW_TRACKING_PASSWORD instead")
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
                try:
                    client.set_experiment_tag(found.experiment_id, EXPERIMENT_KIND_TAG, EXPERIMENT_KIND)
                except Exception as exc:
                    # Tagging an experiment needs MANAGE on it; the jobs' account may only have EDIT (enough to log
                    # runs). The tag only chooses the UI's view: go on without it. Whether this account can write
                    # runs is checked when the run is created, with the error that says so.
                    if not describe_failure(exc).startswith("HTTP 403"):
                        raise
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

    def log_metrics(self, metrics: Mapping[str, float], step: int, timestamp_ms: int | None = None) -> None:
        self.log_records([(step, dict(metrics), timestamp_ms or int(time.time() * 1000))])

    def flush(self) -> None:
        """Nothing to do: every call sends at once."""

    def log_records(self, records: list[tuple[int, dict[str, float], int]]) -> None:
        """Log ``(step, metrics, timestamp_ms)`` records in one request (at most 1000 values: MLflow's limit),
        dropping values at steps the run already holds."""
        from mlflow.entities import Metric

        before = dict(self._logged_up_to)
        batch = []
        for step, metrics, stamp in records:
            for k, v in metrics.items():
                if step > self._logged_up_to.get(k, -1):
                    batch.append(Metric(k, float(v), int(stamp), int(step)))
                    self._logged_up_to[k] = int(step)
        if batch:
            try:
                self._client.log_batch(self.run_id, metrics=batch)
            except BaseException:
                self._logged_up_to = before  # not logged after all: a retry sends them again
                raise

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

    def close(self) -> None:
        pass


# ---------------------------------------------------------------------------------------------------
# Training survives its tracker: retries, a buffer, a spool in the run's storage, and replay

SPOOL_DIR = "mlflow-spool"
"""In a run folder: what MLflow did not take before the run ended (``<run id>-<writer>-<pid>.jsonl``, one record
per line, files beside it for artifacts). ``python -m jobs.replay <run folder>`` sends it (:func:`replay_spool`)."""

def describe_failure(exc: BaseException) -> str:
    """What went wrong with an MLflow request, in a few words without secrets: ``HTTP 401 (login refused)``,
    ``HTTP 403 (permission denied)``, ``HTTP 503``, ``connection failed: Connection refused``."""
    text = str(exc)
    # MLflow's "... failed with error code 401 != 200", or urllib3's retries ending on the same status: "Max retries
    # exceeded ... (Caused by ResponseError('too many 500 error responses'))": the server answered, with that code
    found = re.search(r"error code (\d{3})\b", text) or re.search(r"too many (\d{3}) error responses", text)
    code = int(found.group(1)) if found else {"UNAUTHENTICATED": 401, "PERMISSION_DENIED": 403}.get(
        str(getattr(exc, "error_code", "")))
    if code is None and ("failed with exception" in text or isinstance(exc, OSError)):  # requests' ConnectionError
        reason = re.search(r"(Connection refused|Name or service not known|timed out|Connection reset by peer)", text)
        return f"connection failed: {reason.group(1) if reason else first_line(exc, 160)}"
    if code is None:
        return first_line(exc, 160)
    return {401: "HTTP 401 (login refused)", 403: "HTTP 403 (permission denied)"}.get(code, f"HTTP {code}")


def _is_auth(problem: str) -> bool:
    """Credentials do not change inside a running process: retrying a 401/403 at the end is pointless."""
    return problem.startswith(("HTTP 401", "HTTP 403"))


def _fs(path: str) -> tuple[Any, str]:
    import pyarrow.fs

    return pyarrow.fs.FileSystem.from_uri(path) if "://" in path else (pyarrow.fs.LocalFileSystem(), path)


def _copy_tree(src_fs: Any, src: str, dst_fs: Any, dst: str) -> None:
    """Copy a file or a folder between pyarrow filesystems (local disk, S3), creating folders on the way."""
    import pyarrow.fs

    info = src_fs.get_file_info(src)
    if info.type == pyarrow.fs.FileType.File:
        dst_fs.create_dir(dst.rsplit("/", 1)[0], recursive=True)
        with src_fs.open_input_stream(src) as reader, dst_fs.open_output_stream(dst) as writer:
            writer.write(reader.read())
        return
    for item in src_fs.get_file_info(pyarrow.fs.FileSelector(src, recursive=True)):
        if item.type == pyarrow.fs.FileType.File:
            _copy_tree(src_fs, item.path, dst_fs, f"{dst}/{item.path[len(src.rstrip('/')) + 1:]}")


def _write_spool(spool_dir: str, name: str, header: dict[str, Any], ops: list[dict[str, Any]],
                 files: Mapping[str, str] | None = None) -> str:
    """Write records (and the local files ``files`` maps to spool names) into ``spool_dir``; return the file.
    Records go last, so a spool file that exists is complete."""
    import pyarrow.fs

    fs, base = _fs(spool_dir)
    fs.create_dir(base, recursive=True)
    stem = name.removesuffix(".jsonl")  # artifact folders per spool file: two writers never share one
    ops = [{**op, "path": f"{stem}.{op['path']}"} if op["op"] == "artifact" else op for op in ops]
    files = {local: f"{stem}.{spooled_name}" for local, spooled_name in (files or {}).items()}
    for local, spooled_name in files.items():
        _copy_tree(pyarrow.fs.LocalFileSystem(), local, fs, f"{base}/{spooled_name}")
    text = "".join(json.dumps(record) + "\n" for record in [header, *ops])
    tmp = f"{base}/.{name}.tmp"
    with fs.open_output_stream(tmp) as stream:
        stream.write(text.encode())
    fs.move(tmp, f"{base}/{name}")
    return f"{spool_dir.rstrip('/')}/{name}"


def spooled(run_folder: str, run_id: str | None = None) -> list[tuple[str, dict[str, Any], int]]:
    """The spool files of a run folder (of ``run_id`` only, when given): (path, header, record count)."""
    import pyarrow.fs

    fs, base = _fs(f"{run_folder.rstrip('/')}/{SPOOL_DIR}")
    try:
        infos = fs.get_file_info(pyarrow.fs.FileSelector(base))
    except (OSError, FileNotFoundError):
        return []
    found = []
    for info in sorted(infos, key=lambda i: i.path):
        if info.type != pyarrow.fs.FileType.File or not info.base_name.endswith(".jsonl"):
            continue
        with fs.open_input_stream(info.path) as stream:
            lines = stream.read().decode().splitlines()
        header = json.loads(lines[0])
        if run_id is None or header.get("run_id") == run_id:
            found.append((info.path, header, len(lines) - 1))
    return found


class ResilientTracker:
    """A :class:`Tracker` that never stops training: what MLflow refuses is kept and sent again later.

    Every call records first and then tries to send, unless the previous try failed less than the back-off
    ago (5 s, doubling up to 5 min), so a training step waits at most one request's timeout, and only at a
    retry. Metrics alone are sent at most every ``send_every_s`` seconds, in one batch (the loop's logging
    interval is a fraction of a second on a GPU, and every request waits the training thread); tags, texts,
    artifacts and :meth:`flush` send everything pending at once. The first failure is one warning line through
    ``say``; the recovery another. :meth:`close` (end of training) tries once more and writes what is left, with
    the problem, to ``spool_dir``. MLflow's own client retries (up to ~4 min per request by default) are turned
    down in this process: the back-off here replaces them.
    """

    def __init__(self, uri: str, run_id: str, *, spool_dir: str | None = None,
                 say: Callable[[str], None] | None = None, first_delay_s: float = 5.0, max_delay_s: float = 300.0,
                 close_wait_s: float = 30.0, clock: Callable[[], float] = time.monotonic,
                 connect: Callable[[], Any] | None = None, send_every_s: float = 0.0) -> None:
        os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
        os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "30")
        self.uri = uri
        self.run_id: str | None = run_id
        self.spool_dir = spool_dir
        self._say = say or (lambda text: print(text, flush=True))
        self._connect = connect or (lambda: MLflowTracker(uri, run_id, skip_logged=True))
        self._inner: Any = None
        self._pending: list[dict[str, Any]] = []
        self._files: dict[str, str] = {}  # local copies of artifacts MLflow has not taken yet -> spool names
        self._tmp: str | None = None
        self._first_delay_s, self._max_delay_s, self._close_wait_s = first_delay_s, max_delay_s, close_wait_s
        self._delay_s = first_delay_s
        self._clock = clock
        self._next_try = 0.0
        self._send_every_s = send_every_s
        self._next_send = 0.0  # metrics wait for this (send_every_s after the last send)
        self.problem: str | None = None
        """The last failure (:func:`describe_failure`), None while MLflow takes everything."""
        self.spool_file: str | None = None
        self._try(force=True)

    # -- the Tracker interface: record, then try to send ----------------------------------------------

    def log_metrics(self, metrics: Mapping[str, float], step: int) -> None:
        self._pending.append({"op": "metrics", "step": int(step), "metrics": {k: float(v) for k, v in metrics.items()},
                              "time_ms": int(time.time() * 1000)})
        if self._clock() >= self._next_send:
            self._try()

    def flush(self) -> None:
        """Send what is pending now (unless MLflow failed less than the back-off ago): before a checkpoint, so
        that what a resumed run will not log again is in MLflow or still kept here, never only in a batch."""
        if self._pending:
            self._try()

    def set_tags(self, tags: Mapping[str, str]) -> None:
        if tags:
            self._pending.append({"op": "tags", "tags": {k: str(v) for k, v in tags.items()}})
            self._try()

    def log_text(self, text: str, artifact_file: str) -> None:
        self._pending.append({"op": "text", "text": text, "file": artifact_file})
        self._try()

    def log_artifact(self, local_path: str | Path, artifact_path: str | None = None) -> None:
        # The caller may delete the file when this returns (a temporary export): keep a copy until MLflow has it.
        if self._tmp is None:
            self._tmp = tempfile.mkdtemp(prefix="yxanul-tracking-")
        name = f"artifact-{len(self._files)}/{Path(local_path).name}"  # the file keeps its name in MLflow
        copy = Path(self._tmp) / name
        copy.parent.mkdir()
        (shutil.copytree if Path(local_path).is_dir() else shutil.copy2)(local_path, copy)
        self._files[str(copy)] = name
        self._pending.append({"op": "artifact", "path": name, "artifact_path": artifact_path})
        self._try()

    def last_step(self, key: str) -> int | None:
        return self._inner.last_step(key) if self._inner is not None else None

    # -- sending ---------------------------------------------------------------------------------------

    def _try(self, force: bool = False) -> bool:
        """Send what is pending, oldest first; False (and the back-off) when MLflow fails."""
        if not force and self._clock() < self._next_try:
            return False
        sent = 0
        try:
            if self._inner is None:
                self._inner = self._connect()
            while self._pending:
                sent += self._send_next()
        except Exception as exc:  # MLflow raises many types; none of them may end training
            first = self.problem is None
            self.problem = describe_failure(exc)
            self._next_try = self._clock() + self._delay_s
            if first:
                where = f", then written to {self.spool_dir}" if self.spool_dir else ""
                self._say(f"warning: MLflow {self.uri} failed for run {self.run_id}: {self.problem}; training goes on, "
                          f"its metrics are kept and sent again with back-off (next try in {self._delay_s:.0f} s)"
                          f"{where} if MLflow still fails when training ends")
            self._delay_s = min(self._delay_s * 2, self._max_delay_s)
            return False
        self._next_send = self._clock() + self._send_every_s
        if self.problem is not None:
            self._say(f"MLflow {self.uri} takes the run's records again: {sent} kept record(s) sent")
            self.problem, self._delay_s = None, self._first_delay_s
        return True

    def _send_next(self) -> int:
        """Send the oldest pending record (consecutive metric records together, up to 1000 values); return how
        many records left the queue."""
        op = self._pending[0]
        if op["op"] == "metrics":
            count, values = 0, 0
            while count < len(self._pending) and self._pending[count]["op"] == "metrics" and values < 900:
                values += len(self._pending[count]["metrics"])
                count += 1
            self._inner.log_records([(o["step"], o["metrics"], o["time_ms"]) for o in self._pending[:count]])
        else:
            count = 1
            if op["op"] == "tags":
                self._inner.set_tags(op["tags"])
            elif op["op"] == "text":
                self._inner.log_text(op["text"], op["file"])
            else:
                local = next(path for path, name in self._files.items() if name == op["path"])
                self._inner.log_artifact(local, op["artifact_path"])
                self._files.pop(local)
                shutil.rmtree(Path(local).parent)
        del self._pending[:count]
        return count

    def close(self) -> None:
        """Send what is left; network and server failures are retried for up to ``close_wait_s``, a refused
        login is not (it will not change in this process). Whatever is still unsent goes to ``spool_dir``."""
        deadline = self._clock() + self._close_wait_s
        while self._pending or self._inner is None:
            if self._try(force=True):
                break
            if self.problem is None or _is_auth(self.problem) or self._clock() >= deadline:
                break
            time.sleep(max(0.0, min(self._next_try, deadline) - self._clock()))
        if self._pending and self.spool_dir:
            name = f"{self.run_id}-worker-{os.getpid()}-{int(time.time())}.jsonl"
            header = {"op": "run", "uri": self.uri, "run_id": self.run_id, "problem": self.problem}
            self.spool_file = _write_spool(self.spool_dir, name, header, self._pending, self._files)
            self._pending = []
        if self._tmp is not None:
            shutil.rmtree(self._tmp, ignore_errors=True)
            self._tmp = None


@contextlib.contextmanager
def _client_retries(count: int) -> Iterator[None]:
    """MLflow's client retries for the calls in the block only (it reads the variable at each request)."""
    from yxanul.environ import temporary_env

    with temporary_env("MLFLOW_HTTP_REQUEST_MAX_RETRIES", str(count)):
        yield


def end_run_or_spool(uri: str, run_id: str, status: str, *, spool_dir: str | None, error: str = "",
                     only_if_running: bool = False, wait_s: float = 30.0,
                     say: Callable[[str], None] | None = None) -> bool:
    """:func:`end_run`, which must not turn a finished training into a crash: a network or server failure is
    retried for up to ``wait_s`` (a refused login is not); then the verdict goes to ``spool_dir`` for
    ``python -m jobs.replay`` and ``say`` gets one warning line. Returns whether the run was ended now.

    Also reports, in the same one line, records the workers left in the spool for this run."""
    say = say or (lambda text: print(text, flush=True))
    delay, deadline, problem = 1.0, time.monotonic() + wait_s, ""
    while True:
        try:
            with _client_retries(0):  # the back-off here replaces MLflow's (up to ~4 min per request)
                end_run(uri, run_id, status, error=error, only_if_running=only_if_running)
            problem = ""
            break
        except Exception as exc:  # the verdict is kept below, whatever MLflow raised
            problem = describe_failure(exc)
            if _is_auth(problem) or time.monotonic() + delay > deadline:
                break
            time.sleep(delay)
            delay *= 2
    if problem and spool_dir:
        header = {"op": "run", "uri": uri, "run_id": run_id, "problem": problem}
        _write_spool(spool_dir, f"{run_id}-driver-{os.getpid()}-{int(time.time())}.jsonl", header,
                     [{"op": "end", "status": status, "error": error[:5000], "only_if_running": only_if_running}])
    waiting = spooled(spool_dir.rsplit("/", 1)[0], run_id) if spool_dir else []
    records = sum(count for *_, count in waiting)
    run_folder = spool_dir.rsplit("/", 1)[0] if spool_dir else ""
    if problem:
        say(f"warning: MLflow {uri} failed to end run {run_id} as {status}: {problem}; the verdict"
            + (f" and {records - 1} other record(s)" if records > 1 else "")
            + (f" wait in {spool_dir}: once MLflow takes your login again, `python -m jobs.replay {run_folder}` "
               f"sends them" if spool_dir else " is lost (no run folder to keep it in)"))
    elif waiting:
        worker_problem = waiting[0][1].get("problem") or "unknown"
        say(f"warning: {records} tracking record(s) of run {run_id} did not reach MLflow {uri} ({worker_problem}) and "
            f"wait in {spool_dir}: `python -m jobs.replay {run_folder}` sends them")
    return not problem


def replay_spool(run_folder: str, uri: str | None = None, *, say: Callable[[str], None] | None = None) -> int:
    """Send a run folder's spool to MLflow (``uri``, else the one each spool file names), oldest file first: metrics
    (never a step the run already holds), tags, texts, artifacts, then the verdicts. A file is removed once
    all of it is sent. Returns the number of records sent; raises :class:`TrackingError` in one line when
    MLflow still fails (the spool stays as it was)."""
    import pyarrow.fs

    say = say or (lambda text: print(text, flush=True))
    files = spooled(run_folder)
    if not files:
        raise TrackingError(f"nothing to replay: {run_folder}/{SPOOL_DIR} holds no spool file (*.jsonl)")
    sent: list[tuple[str, Any, str, int]] = []
    ends = []
    for path, header, _ in files:  # first everything but the verdicts, oldest file first
        target = uri or header["uri"]
        fs, _ = _fs(path)
        with fs.open_input_stream(path) as stream:
            ops = [json.loads(line) for line in stream.read().decode().splitlines()[1:]]
        folder = path.rsplit("/", 1)[0]
        try:
            tracker = MLflowTracker(target, header["run_id"], skip_logged=True)
            metrics = [o for o in ops if o["op"] == "metrics"]
            for i in range(0, len(metrics), 100):
                tracker.log_records([(o["step"], o["metrics"], o["time_ms"]) for o in metrics[i:i + 100]])
            with tempfile.TemporaryDirectory(prefix="yxanul-replay-") as tmp:
                for op in ops:
                    if op["op"] == "tags":
                        tracker.set_tags(op["tags"])
                    elif op["op"] == "text":
                        tracker.log_text(op["text"], op["file"])
                    elif op["op"] == "artifact":
                        local = f"{tmp}/{op['path']}"
                        _copy_tree(fs, f"{folder}/{op['path']}", pyarrow.fs.LocalFileSystem(), local)
                        tracker.log_artifact(local, op["artifact_path"])
        except Exception as exc:  # one line: the spool stays for the next try (sending again is harmless)
            raise _replay_error(target, path, header["run_id"], exc) from None
        ends += [(target, path, header["run_id"], o) for o in ops if o["op"] == "end"]
        sent.append((path, fs, folder, len(ops)))
        say(f"replayed {len(ops)} record(s) of run {header['run_id']} from {path} into {target}")
    for target, path, run_id, op in ends:  # verdicts last: a reader who sees the run ended sees all its metrics
        try:
            end_run(target, run_id, op["status"], error=op.get("error", ""),
                    only_if_running=op.get("only_if_running", False))
        except Exception as exc:
            raise _replay_error(target, path, run_id, exc) from None
        say(f"ended run {run_id} as {op['status']}")
    for path, fs, folder, _ in sent:
        with fs.open_input_stream(path) as stream:
            ops = [json.loads(line) for line in stream.read().decode().splitlines()[1:]]
        for op in ops:
            if op["op"] == "artifact":
                fs.delete_dir(f"{folder}/{op['path'].split('/', 1)[0]}")
        fs.delete_file(path)
    return sum(count for *_, count in sent)


def _replay_error(uri: str, path: str, run_id: str, exc: BaseException) -> TrackingError:
    return TrackingError(f"MLflow {uri} refused the replay of {path} for run {run_id}: {describe_failure(exc)}; check "
                         f"MLFLOW_TRACKING_USERNAME / MLFLOW_TRACKING_PASSWORD (or --tracking-uri) and run it again; "
                         f"records already sent are not sent twice")


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
        tags[MANIFEST_SHA256_TAG] = sha256_file(manifest_path)
        manifest: dict[str, Any] = json.loads(Path(manifest_path).read_text())
        tokenizer = manifest.get("tokenizer") or {}
        if tokenizer.get("sha256"):
            tags[TOKENIZER_SHA256_TAG] = str(tokenizer["sha256"])
        if manifest.get("content_sha256"):
            tags[DATA_SHA256_TAG] = str(manifest["content_sha256"])
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
    boot = _boot_id()
    if boot:
        tags[BOOT_ID_TAG] = boot
    if not use_gpu:
        return {**tags, GPU_NAME_TAG: "none", GPU_COUNT_TAG: "0"}
    name = torch.cuda.get_device_name() if torch.cuda.is_available() else "unavailable"
    tags.update({GPU_NAME_TAG: name, GPU_COUNT_TAG: str(num_workers), CUDA_VERSION_TAG: str(torch.version.cuda)})
    uuid = getattr(torch.cuda.get_device_properties(torch.cuda.current_device()), "uuid", None) \
        if torch.cuda.is_available() else None
    if uuid is not None:
        tags[GPU_UUID_TAG] = f"GPU-{uuid}"
    driver = _nvidia_driver()
    if driver:
        tags[GPU_DRIVER_TAG] = driver
    return tags


def _boot_id() -> str | None:
    """This machine's Linux boot id (None elsewhere: the tag is left out)."""
    try:
        return Path("/proc/sys/kernel/random/boot_id").read_text().strip() or None
    except OSError:
        return None


def _nvidia_driver() -> str | None:
    """The NVIDIA driver version from ``nvidia-smi`` (None where it is missing or fails: the tag is left out)."""
    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
                             capture_output=True, text=True, timeout=20)
    except (OSError, subprocess.TimeoutExpired):
        return None
    lines = out.stdout.strip().splitlines() if out.returncode == 0 else []
    return lines[0].strip() if lines else None
