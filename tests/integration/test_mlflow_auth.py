"""The authenticated MLflow server of the cluster (scripts/mlflow_server.sh: MLflow's basic-auth app), run on
127.0.0.1: anonymous and wrong-password clients are refused, the project's jobs say so in one line naming
MLFLOW_TRACKING_USERNAME / MLFLOW_TRACKING_PASSWORD, and with those set `jobs.compare` works end to end."""

from __future__ import annotations

import base64
import os
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
    for key, value in creds.items():
        monkeypatch.setenv(key, value)
    get_app_client("basic-auth", tracking_uri=uri).create_user("rotating", "first-password-0")
    assert _status(search, "rotating", "first-password-0") == 200
    monkeypatch.setenv("MLFLOW_TRACKING_USERNAME", "rotating")
    monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", "first-password-0")
    get_app_client("basic-auth", tracking_uri=uri).update_user_password(
        "rotating", "second-password-1", current_password="first-password-0")
    assert _status(search, "rotating", "first-password-0") == 401
    assert _status(search, "rotating", "second-password-1") == 200
