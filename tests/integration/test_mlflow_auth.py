"""The authenticated MLflow server of the cluster (scripts/mlflow_server.sh: MLflow's basic-auth app), run on
127.0.0.1: anonymous and wrong-password clients are refused, the project's jobs say so in one line naming
MLFLOW_TRACKING_USERNAME / MLFLOW_TRACKING_PASSWORD, and with those set `jobs.compare` works end to end."""

from __future__ import annotations

import base64
import os
import re
import subprocess
import sys
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

import pytest

from tests.integration.conftest import listens_beyond_loopback
from tests.integration.test_compare import check_report, log_synthetic_sweep, logged_files

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]


def _status(url: str, user: str | None = None, password: str | None = None) -> int:
    request = urllib.request.Request(url)
    if user is not None:
        request.add_header("Authorization", "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode())
    try:
        with urllib.request.urlopen(request, timeout=60) as resp:  # a loaded machine hashes slowly
            return resp.status
    except urllib.error.HTTPError as exc:
        return exc.code


def _anonymous_env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if k not in ("MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD")}


def test_anonymous_and_wrong_password_clients_are_refused(mlflow_auth_server, tmp_path):
    uri, creds = mlflow_auth_server
    user, password = creds["MLFLOW_TRACKING_USERNAME"], creds["MLFLOW_TRACKING_PASSWORD"]
    search = f"{uri}/api/2.0/mlflow/experiments/search?max_results=1"
    assert _status(f"{uri}/health") == 200  # MLflow keeps /health open: reachability says nothing about auth
    assert _status(search) == 401
    assert _status(search, user, "not-the-password") == 401
    assert _status(search, "someone-else", password) == 401
    assert _status(search, user, password) == 200
    assert not listens_beyond_loopback(int(urllib.parse.urlsplit(uri).port))

    # MLflow's own client, anonymous: refused (MLflow raises after its request; the message names the code).
    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException

    with pytest.raises(MlflowException, match="401"):
        MlflowClient(uri).search_experiments(max_results=1)

    # The project's jobs: one error line that names the variables to set, before any work.
    out = tmp_path / "report"
    cmd = [sys.executable, "-m", "jobs.compare", "--sweep", "any", "--out", str(out), "--tracking-uri", uri]
    done = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=120, env=_anonymous_env())
    assert done.returncode == 2
    assert done.stderr.strip().splitlines() == [
        f"error: the MLflow tracking server {uri} requires a login (HTTP 401): set MLFLOW_TRACKING_USERNAME and "
        f"MLFLOW_TRACKING_PASSWORD (an account of that server; docs/cluster.md, Security model)"]
    wrong = {**_anonymous_env(), "MLFLOW_TRACKING_USERNAME": user, "MLFLOW_TRACKING_PASSWORD": "not-the-password"}
    done = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=120, env=wrong)
    assert done.returncode == 2
    assert done.stderr.strip().splitlines() == [
        f"error: the MLflow tracking server {uri} refused user '{user}' (HTTP 401): check MLFLOW_TRACKING_USERNAME "
        f"and MLFLOW_TRACKING_PASSWORD (an account of that server; docs/cluster.md, Security model)"]
    assert "not-the-password" not in done.stderr and not out.exists()


def test_compare_with_credentials_from_the_environment(mlflow_auth_server, tmp_path, monkeypatch):
    uri, creds = mlflow_auth_server
    for key, value in creds.items():
        monkeypatch.setenv(key, value)  # MLflow's client reads them on every request
    parent = log_synthetic_sweep(uri, "syn-auth", "syn-auth-sweep")
    out = tmp_path / "report"
    done = subprocess.run([sys.executable, "-m", "jobs.compare", "--sweep", "syn-auth-sweep", "--out", str(out),
                           "--tracking-uri", uri, "--target-bpb", "1.75"], cwd=ROOT, capture_output=True, text=True,
                          timeout=300, env={**os.environ})
    assert done.returncode == 0, done.stderr
    check_report(out)
    assert {"comparison.csv", "pairs.csv", "report.html"} <= logged_files(uri, parent)  # artifacts uploaded too
    assert creds["MLFLOW_TRACKING_PASSWORD"] not in done.stdout + done.stderr


def test_password_rotation_through_the_api(mlflow_auth_server, monkeypatch):
    """The rotation docs/cluster.md gives (MLflow keeps a stored password across restarts, so a new one goes
    through the API): done here on a second account, so the session's admin account stays as it is."""
    from mlflow.server import get_app_client

    uri, creds = mlflow_auth_server
    search = f"{uri}/api/2.0/mlflow/experiments/search?max_results=1"
    for key, value in mlflow_auth_server.admin.items():  # creating accounts is the admin's
        monkeypatch.setenv(key, value)
    get_app_client("basic-auth", tracking_uri=uri).create_user("rotating", "first-password-0")
    assert _status(search, "rotating", "first-password-0") == 200
    monkeypatch.setenv("MLFLOW_TRACKING_USERNAME", "rotating")
    monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", "first-password-0")
    get_app_client("basic-auth", tracking_uri=uri).update_user_password(
        "rotating", "second-password-1", current_password="first-password-0")
    assert _status(search, "rotating", "first-password-0") == 401
    assert _status(search, "rotating", "second-password-1") == 200


def test_least_privilege_the_jobs_account_is_not_an_admin_and_the_admin_stays_in_the_state_folder(mlflow_auth_server,
                                                                                                   monkeypatch):
    from mlflow.server import get_app_client

    uri, creds = mlflow_auth_server
    state = mlflow_auth_server.state
    assert (state / "admin.env").stat().st_mode & 0o777 == 0o600 and state.stat().st_mode & 0o777 == 0o700
    admin = mlflow_auth_server.admin
    assert admin["MLFLOW_TRACKING_USERNAME"] != creds["MLFLOW_TRACKING_USERNAME"]
    assert admin["MLFLOW_TRACKING_PASSWORD"] not in (state / "basic_auth.ini").read_text()
    for key, value in creds.items():
        monkeypatch.setenv(key, value)
    with pytest.raises(Exception, match="403"):  # user management is the admin's
        get_app_client("basic-auth", tracking_uri=uri).create_user("intruder", "intruder-password-0")
    search = f"{uri}/api/2.0/mlflow/experiments/search?max_results=1"
    assert _status(search, admin["MLFLOW_TRACKING_USERNAME"], admin["MLFLOW_TRACKING_PASSWORD"]) == 200


def test_an_account_without_write_access_is_one_error_line_and_leaves_no_run(mlflow_auth_server, tmp_path):
    """A non-admin account may read an experiment another account made, not write to it (HTTP 403)."""
    from mlflow import MlflowClient

    from tests.train_helpers import make_dataset

    uri, creds = mlflow_auth_server
    env = {**_anonymous_env(), **mlflow_auth_server.admin}
    admin = subprocess.run([sys.executable, "-c", "import sys; from mlflow import MlflowClient; "
                            "MlflowClient(sys.argv[1]).create_experiment('admins-only')", uri],
                           env=env, capture_output=True, text=True, timeout=120)
    assert admin.returncode == 0, admin.stderr
    data = make_dataset(tmp_path / "data", {32: 64, 64: 32})
    done = subprocess.run([sys.executable, "-m", "jobs.train", "experiments/runs/pulse.yaml", f"data.output_dir={data}",
                           f"run.storage_path={tmp_path / 'ray'}", f"tracking.uri={uri}",
                           "tracking.experiment=admins-only"], cwd=ROOT, capture_output=True, text=True, timeout=300,
                          env={**_anonymous_env(), **creds})
    assert done.returncode == 2, done.stdout[-2000:] + done.stderr[-2000:]
    assert done.stderr.strip().splitlines() == [
        f"error: the MLflow tracking server {uri} refuses user 'yxanul' write access to experiment 'admins-only' "
        f"(HTTP 403): cannot create the run; ask its admin to give that account EDIT permission on the experiment "
        f"(docs/cluster.md, Security model), or use another tracking.experiment"]
    os.environ.update(mlflow_auth_server.admin)
    try:
        client = MlflowClient(uri)
        assert client.search_runs([client.get_experiment_by_name("admins-only").experiment_id]) == []
    finally:
        for key in mlflow_auth_server.admin:
            os.environ.pop(key)


def test_password_rotated_mid_run_training_finishes_and_replay_sends_every_metric(mlflow_auth_server, tmp_path):
    """The issue's probe: rotating the MLflow password during a run crashed training and left the run RUNNING.
    Now the run finishes (exit 0) with one warning line from the workers and one from the driver, keeps what
    MLflow refused in the run folder, and `python -m jobs.replay` with the new password sends every metric and
    ends the run FINISHED."""
    import json
    import time

    from mlflow import MlflowClient
    from mlflow.server import get_app_client

    from tests.train_helpers import make_dataset

    uri, _ = mlflow_auth_server
    admin_env = {**_anonymous_env(), **mlflow_auth_server.admin}
    old, new = "trainer-password-0", "trainer-password-1"
    os.environ.update(mlflow_auth_server.admin)
    try:
        get_app_client("basic-auth", tracking_uri=uri).create_user("trainer", old)
    finally:
        for key in mlflow_auth_server.admin:
            os.environ.pop(key)
    data = make_dataset(tmp_path / "data", {32: 300, 64: 150}, row_group_rows=32)
    steps, tps = 120, 1024
    storage = tmp_path / "ray"
    cmd = [sys.executable, "-m", "jobs.train", "experiments/runs/pulse.yaml", f"data.output_dir={data}",
           f"run.storage_path={storage}", f"tracking.uri={uri}", "tracking.experiment=rotation", "run.name=rotated",
           "scaling.num_workers=1", f"train.tokens_per_step={tps}", f"train.max_tokens={steps * tps}",
           "train.max_tokens_per_microbatch=1024", "log.every_steps=1", "eval.every_tokens=0", "eval.seq_len=32",
           "checkpoint.every_tokens=4096"]
    trainer_env = {**_anonymous_env(), "MLFLOW_TRACKING_USERNAME": "trainer", "MLFLOW_TRACKING_PASSWORD": old}
    job = subprocess.Popen(cmd, cwd=ROOT, env=trainer_env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    marker = storage / "rotated" / "workers" / "rank0.json"
    rotated_at = None
    deadline = time.monotonic() + 400
    while job.poll() is None and time.monotonic() < deadline:
        if rotated_at is None and marker.exists():
            info = json.loads(marker.read_text() or "{}")
            if info.get("event") == "checkpoint" and info["tokens"] >= 8192:  # metrics have been logged by now
                changed = subprocess.run(
                    [sys.executable, "-c", "import sys; from mlflow.server import get_app_client; get_app_client("
                     "'basic-auth', tracking_uri=sys.argv[1]).update_user_password('trainer', sys.argv[2])", uri, new],
                    env=admin_env, capture_output=True, text=True, timeout=120)
                assert changed.returncode == 0, changed.stderr
                rotated_at = info["tokens"]
        time.sleep(0.05)
    out, err = job.communicate(timeout=max(1, deadline - time.monotonic()))
    assert rotated_at is not None, "the run ended before the password could be rotated"
    assert job.returncode == 0, out[-3000:] + err[-3000:]
    assert "Traceback" not in out + err
    assert "training finished at 123k tokens" in out
    warnings = [line for line in out.splitlines() if "MLflow" in line and "warning:" in line]
    assert len(warnings) == 2, out[-4000:]  # one per party: the workers' outage, the driver's verdict
    assert warnings[0].startswith("rotated | warning: MLflow ")
    # The workers' first refused request: a 401, or a 500 when it straddled the rotation (MLflow 3.17's basic auth
    # authenticates a log-batch twice; a password changed in between fails the second check with an AttributeError
    # on the server: seen in a CI rehearsal, GOTCHAS.md). Either way the server answered, and training went on.
    assert re.search(r"failed for run [0-9a-f]{32}: HTTP (401 \(login refused\)|500); training goes on",
                     warnings[0]), warnings[0]
    run_folder = storage / "rotated"
    assert warnings[1].startswith(f"warning: MLflow {uri} failed to end run ")
    assert "as finished: HTTP 401" in warnings[1]
    assert warnings[1].endswith(f"`python -m jobs.replay {run_folder}` sends them")
    assert old not in out + err and new not in out + err

    # The run is not lost: the replay with the new password sends every metric, then the verdict.
    replay = subprocess.run([sys.executable, "-m", "jobs.replay", str(run_folder)], cwd=ROOT, capture_output=True,
                            text=True, timeout=300, env={**trainer_env, "MLFLOW_TRACKING_PASSWORD": new})
    assert replay.returncode == 0, replay.stderr[-3000:]
    os.environ.update({"MLFLOW_TRACKING_USERNAME": "trainer", "MLFLOW_TRACKING_PASSWORD": new})
    try:
        client = MlflowClient(uri)
        (run,) = client.search_runs([client.get_experiment_by_name("rotation").experiment_id])
        steps_logged = sorted(m.step for m in client.get_metric_history(run.info.run_id, "train/loss"))
        assert steps_logged == [tps * k for k in range(1, steps + 1)]  # none lost, none twice
        assert run.info.status == "FINISHED" and run.data.tags["yxanul.status"] == "finished"
        assert run.data.tags["yxanul.num_workers"] == "1"
    finally:
        for key in ("MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD"):
            os.environ.pop(key)
    assert not list((run_folder / "mlflow-spool").glob("*.jsonl"))
