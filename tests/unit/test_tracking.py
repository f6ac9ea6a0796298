"""Tracking: URI resolution, reachability check before training, no duplicate steps on resume, provenance."""

from __future__ import annotations

import hashlib
import json
import socket
import subprocess
from pathlib import Path

import pytest

from yxanul.errors import TrackingError
from yxanul.tracking import (
    MLflowTracker,
    NullTracker,
    Status,
    Tracker,
    check_reachable,
    connect,
    create_run,
    end_run,
    git_state,
    provenance_tags,
    reopen_run,
    resolve_tracking_uri,
)


def test_uri_precedence_config_then_env_then_local_store(monkeypatch, tmp_path):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://tracking.example:5000")
    assert resolve_tracking_uri("http://other:1") == "http://other:1"
    assert resolve_tracking_uri(None) == "http://tracking.example:5000"
    monkeypatch.delenv("MLFLOW_TRACKING_URI")
    monkeypatch.chdir(tmp_path)
    assert resolve_tracking_uri(None) == f"sqlite:///{tmp_path}/outputs/mlflow.db"
    assert resolve_tracking_uri("sqlite:///rel/x.db") == f"sqlite:///{tmp_path}/rel/x.db"  # made absolute for workers


def test_unreachable_server_is_a_tracking_error_naming_uri_and_fix():
    with socket.socket() as sock:  # a port nobody listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    uri = f"http://127.0.0.1:{port}"
    with pytest.raises(TrackingError, match=rf"{uri} is not reachable .*tracking.enabled=false"):
        connect(uri, "x", timeout_s=2)


def test_local_store_experiment_created_once_with_artifacts_beside_the_db(tmp_path):
    uri = f"sqlite:///{tmp_path / 'store' / 'mlflow.db'}"
    first = connect(uri, "exp")
    assert connect(uri, "exp") == first
    from mlflow import MlflowClient

    location = MlflowClient(uri).get_experiment(first).artifact_location
    assert location == (tmp_path / "store" / "mlartifacts").as_uri()


def test_experiments_are_custom_model_development_in_the_mlflow_ui(tmp_path):
    """MLflow 3.x's UI opens an experiment without mlflow.experimentKind in its GenAI view: every experiment the
    platform creates carries the training kind, and one created before (without it) gets it when used."""
    from mlflow import MlflowClient

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = MlflowClient(uri)
    created = connect(uri, "new")
    assert client.get_experiment(created).tags["mlflow.experimentKind"] == "custom_model_development"
    older = client.create_experiment("older")
    assert "mlflow.experimentKind" not in client.get_experiment(older).tags
    assert connect(uri, "older") == older
    assert client.get_experiment(older).tags["mlflow.experimentKind"] == "custom_model_development"


def test_resumed_tracker_never_logs_a_step_twice(tmp_path):
    from mlflow import MlflowClient

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    exp = connect(uri, "resume")
    tracker = MLflowTracker.create(uri, exp, "r", tags={"yxanul.status": "running"}, params={"a.b": "1"})
    for step in (100, 200, 300):
        tracker.log_metrics({"train/loss": step / 100}, step=step)
    tracker.log_metrics({"val/bpb": 2.0}, step=200)
    resumed = MLflowTracker(uri, tracker.run_id)  # a restarted worker replays from a checkpoint at 100
    assert resumed.last_step("train/loss") == 300
    for step in (200, 300, 400):
        resumed.log_metrics({"train/loss": 9.0, "val/bpb": 1.0}, step=step)
    client = MlflowClient(uri)
    history = sorted((m.step, m.value) for m in client.get_metric_history(tracker.run_id, "train/loss"))
    assert history == [(100, 1.0), (200, 2.0), (300, 3.0), (400, 9.0)]
    val = sorted((m.step, m.value) for m in client.get_metric_history(tracker.run_id, "val/bpb"))
    assert val == [(200, 2.0), (300, 1.0), (400, 1.0)]
    assert client.get_run(tracker.run_id).data.params == {"a.b": "1"}
    end_run(uri, tracker.run_id, Status.FINISHED)
    run = client.get_run(tracker.run_id)
    assert run.info.status == "FINISHED" and run.data.tags["yxanul.status"] == "finished"


def test_null_tracker_satisfies_the_protocol_and_records():
    tracker = NullTracker()
    assert isinstance(tracker, Tracker)
    tracker.log_metrics({"train/loss": 1.5}, step=10)
    assert tracker.metrics == [(10, {"train/loss": 1.5})]


def test_git_state_reports_sha_and_dirty_flag(tmp_path):
    def git(*args):
        subprocess.run(["git", *args], cwd=tmp_path, check=True, capture_output=True)

    git("init", "-q")
    git("-c", "user.email=t@t", "-c", "user.name=t", "commit", "-q", "--allow-empty", "-m", "x")
    (tmp_path / "f.txt").write_text("a\n")
    git("add", "f.txt")
    git("-c", "user.email=t@t", "-c", "user.name=t", "commit", "-q", "-m", "f")
    clean = git_state(tmp_path)
    assert len(clean["sha"]) == 40 and clean["dirty"] == "false" and clean["diff"] == ""
    (tmp_path / "f.txt").write_text("b\n")
    dirty = git_state(tmp_path)
    assert dirty["dirty"] == "true" and "+b" in dirty["diff"]
    assert git_state(tmp_path.parent / "nowhere-git")["sha"] == "unknown"


def test_provenance_tags_hash_the_manifest_and_name_the_tokenizer(tmp_path):
    manifest = tmp_path / "manifest.json"
    manifest.write_text(json.dumps({"mode": "decompose", "tokenizer": {"sha256": "ab" * 32}}))
    tags = provenance_tags("cafe", manifest, git={"sha": "1" * 40, "dirty": "false", "diff": ""})
    assert tags["yxanul.manifest_sha256"] == hashlib.sha256(manifest.read_bytes()).hexdigest()
    assert tags["yxanul.tokenizer_sha256"] == "ab" * 32
    assert tags["yxanul.config_hash"] == "cafe" and tags["yxanul.git_sha"] == "1" * 40
    assert "yxanul.version.torch" in tags and "yxanul.version.mlflow" in tags
    assert "yxanul.git_diff_sha256" not in tags  # a clean checkout has no diff
    assert "yxanul.data_sha256" not in tags  # a dataset prepared before content_sha256: the manifest's hash only
    manifest.write_text(json.dumps({"mode": "packed", "content_sha256": "cd" * 32}))
    assert provenance_tags("cafe", manifest, git={"sha": "1" * 40, "dirty": "false"})["yxanul.data_sha256"] == "cd" * 32
    dirty = provenance_tags("cafe", manifest, git={"sha": "1" * 40, "dirty": "true", "diff": "+b\n"})
    assert dirty["yxanul.git_diff_sha256"] == hashlib.sha256(b"+b\n").hexdigest()


def test_device_tags_name_the_torch_build_and_the_worker_count():
    import torch

    from yxanul.tracking import device_tags

    tags = device_tags(use_gpu=False, num_workers=2)
    boot = tags.pop("yxanul.boot_id")  # the machine: the report names speed pairs split across machines
    assert boot == Path("/proc/sys/kernel/random/boot_id").read_text().strip() and len(boot) == 36
    assert tags == {"yxanul.torch_version": torch.__version__, "yxanul.num_workers": "2", "yxanul.gpu_name": "none",
                    "yxanul.gpu_count": "0"}


def test_an_interrupted_trial_does_not_overwrite_the_schedulers_verdict(tmp_path):
    # A sweep's Tune callback ends an ASHA-stopped trial's run as KILLED + stopped_early; an end_run with
    # only_if_running (what may still come later from elsewhere) leaves that alone.
    from mlflow import MlflowClient

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    experiment = connect(uri, "verdict")
    client = MlflowClient(uri)
    stopped = create_run(uri, experiment, "stopped")
    assert end_run(uri, stopped, Status.STOPPED_EARLY, reason="stopped by the ASHA scheduler at 2048 tokens")
    assert not end_run(uri, stopped, Status.KILLED, only_if_running=True)
    run = client.get_run(stopped)
    assert run.info.status == "KILLED" and run.data.tags["yxanul.status"] == "stopped_early"
    assert run.data.tags["yxanul.reason"] == "stopped by the ASHA scheduler at 2048 tokens"

    running = MLflowTracker.create(uri, experiment, "running")  # nobody ended it: the handler does
    assert running.status() == "RUNNING"
    assert end_run(uri, running.run_id, Status.KILLED, only_if_running=True)
    run = client.get_run(running.run_id)
    assert run.info.status == "KILLED" and run.data.tags["yxanul.status"] == "killed"


def test_run_lifecycle_writes_mlflow_status_and_verdict_together(tmp_path):
    from mlflow import MlflowClient

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    experiment = connect(uri, "lifecycle")
    client = MlflowClient(uri)
    params = {f"p{i:03d}": str(i) for i in range(250)}  # more than one MLflow batch of 100
    rid = create_run(uri, experiment, "r", tags={"yxanul.sweep": "s"}, params=params)
    run = client.get_run(rid)
    assert run.info.status == "RUNNING" and run.data.tags["yxanul.status"] == "running"
    assert run.data.params == params and run.data.tags["yxanul.sweep"] == "s"
    expected = {Status.FINISHED: "FINISHED", Status.FAILED: "FAILED", Status.STOPPED: "KILLED",
                Status.STOPPED_EARLY: "KILLED", Status.NOT_RUNNABLE: "KILLED", Status.INTERRUPTED: "KILLED"}
    for status, mlflow_status in expected.items():
        reopen_run(uri, rid, {"yxanul.resumed": "true"})
        assert client.get_run(rid).data.tags["yxanul.status"] == "running"
        assert end_run(uri, rid, status, error="boom" if status == Status.FAILED else "")
        run = client.get_run(rid)
        assert (run.info.status, run.data.tags["yxanul.status"]) == (mlflow_status, status)
    assert run.data.tags["yxanul.error"] == "boom" and run.data.tags["yxanul.resumed"] == "true"
    with pytest.raises(ValueError, match="unknown run status"):
        end_run(uri, rid, "done")


def test_check_reachable_passes_local_stores_and_a_live_server_only(tmp_path):
    check_reachable(f"sqlite:///{tmp_path / 'x.db'}")  # nothing to reach: no error
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    with pytest.raises(TrackingError, match=f"http://127.0.0.1:{port} is not reachable"):
        check_reachable(f"http://127.0.0.1:{port}", timeout_s=2)
