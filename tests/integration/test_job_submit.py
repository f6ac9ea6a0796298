"""`ray job submit` against a real head with token authentication: start `ray start --head` on 127.0.0.1 (from this
venv, own ports and temp dir, its own process group, RAY_AUTH_MODE=token with the test session's token, the MLflow
credentials in its environment as cluster.yaml gives them to every node), check that clients without the token are
refused, submit jobs.train with the pulse config, wait for SUCCEEDED, check the MLflow run on the authenticated
server, then kill the head's process group (never `ray stop`: it would kill every Ray on the machine)."""

from __future__ import annotations

import ipaddress
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from tests.integration.conftest import free_port, kill_group, listens_beyond_loopback, ray_auth_headers, wait_http
from tests.train_helpers import make_dataset
from yxanul.ray_session import local_server_env

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
RAY = str(Path(sys.executable).parent / "ray")
# Not part of the project: hidden tool/cache folders and stray wheels in a shared checkout (Ray refuses uploads
# over 100 MiB). The job needs only jobs/ and experiments/ (yxanul is installed in the venv).
HEAD: dict[str, int] = {}
"""The running head's process-group id (its `ray start`) and metrics export port, for the listening-socket test."""
UPLOAD_EXCLUDES = [".ray*", ".te*", ".gk*", ".gl", ".whl", ".hypothesis", ".pytest_cache", "*.whl", "outputs"]


@pytest.fixture(scope="module")
def ray_head(mlflow_auth_server):
    """Yields (dashboard address, dashboard port, GCS address, the head's environment)."""
    bin_dir = Path(sys.executable).parent
    # RAY_AUTH_MODE=token and RAY_AUTH_TOKEN_PATH come from tests/conftest.py, as every node's come from cluster.yaml;
    # local_server_env() keeps every process of the head on 127.0.0.1, as docs/cluster.md's local head does.
    env = {**os.environ, **local_server_env(), **mlflow_auth_server[1],
           "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}"}
    assert env["RAY_AUTH_MODE"] == "token"
    env.pop("RAY_ADDRESS", None)
    temp = tempfile.mkdtemp(prefix="/tmp/rayj")  # short: Ray's unix socket paths must stay < 108 bytes
    dashboard, gcs, metrics = free_port(), free_port(), free_port()
    cmd = [RAY, "start", "--head", "--block", "--node-ip-address=127.0.0.1",
           f"--port={gcs}", "--include-dashboard=true", "--dashboard-host=127.0.0.1",
           f"--dashboard-port={dashboard}", f"--dashboard-agent-listen-port={free_port()}",
           f"--dashboard-agent-grpc-port={free_port()}", f"--runtime-env-agent-port={free_port()}",
           f"--ray-client-server-port={free_port()}", f"--metrics-export-port={metrics}",
           "--num-cpus=4", f"--temp-dir={temp}", "--disable-usage-stats"]
    log = open(Path(temp) / "head.log", "w")
    proc = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    address = f"http://127.0.0.1:{dashboard}"
    try:
        wait_http(f"{address}/api/version", timeout_s=120, proc=proc, headers=ray_auth_headers())
        HEAD.update(pid=proc.pid, metrics_port=metrics)
        yield address, dashboard, f"127.0.0.1:{gcs}", env
    finally:
        kill_group(proc)
        log.close()


def _http_status(url: str, headers: dict[str, str]) -> int:
    try:
        with urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=30) as resp:
            return resp.status
    except urllib.error.HTTPError as exc:
        return exc.code


def test_clients_without_the_token_are_refused(ray_head, tmp_path):
    address, dashboard, gcs, env = ray_head
    with urllib.request.urlopen(f"{address}/api/authentication_mode", timeout=30) as resp:
        assert json.load(resp) == {"authentication_mode": "token"}
    # The dashboard's HTTP API (Jobs API included): 401 without a token, 403 with a wrong one.
    for path in ("/api/version", "/api/jobs/", "/api/v0/nodes"):
        assert _http_status(address + path, {}) == 401, path
        assert _http_status(address + path, {"Authorization": "Bearer " + "0" * 64}) == 403, path
        assert _http_status(address + path, ray_auth_headers()) == 200, path
    assert not listens_beyond_loopback(dashboard)  # and only this machine reaches it at all

    # `ray job submit` from a client without the token (no auth settings at all), and from one with a wrong token.
    anonymous = {k: v for k, v in env.items() if not k.startswith("RAY_AUTH_")}
    wrong = {**anonymous, "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": "0" * 64}
    submit = [RAY, "job", "submit", "--address", address, "--", "python", "-c", "print('should never run')"]
    for client_env, expected in ((anonymous, "Authentication required: Unauthorized: Missing authentication token"),
                                 (wrong, "Authentication failed: Forbidden: Invalid authentication token")):
        done = subprocess.run(submit, env=client_env, cwd=REPO, capture_output=True, text=True, timeout=120)
        assert done.returncode == 1
        # Ray's CLI prints a traceback above it; the line that says what happened is this one.
        errors = [line for line in done.stderr.splitlines() if line.startswith("ray.exceptions.AuthenticationError")]
        assert errors == [f"ray.exceptions.AuthenticationError: {expected}"], done.stderr[-2000:]
    from ray.job_submission import JobSubmissionClient

    assert JobSubmissionClient(address).list_jobs() == []  # nothing was submitted

    # A job started by hand against the cluster (RAY_ADDRESS) on a machine without the token: one error line.
    data = make_dataset(tmp_path / "data", {32: 64, 64: 32})
    no_token = {**anonymous, "RAY_ADDRESS": gcs, "HOME": str(tmp_path)}  # no ~/.ray/auth_token either
    done = subprocess.run([sys.executable, "-m", "jobs.train", "experiments/runs/pulse.yaml", f"data.output_dir={data}",
                           f"run.storage_path={tmp_path / 'ray'}", "tracking.enabled=false"],
                          env=no_token, cwd=REPO, capture_output=True, text=True, timeout=300)
    assert done.returncode == 2, done.stderr[-3000:]
    assert done.stderr.strip().splitlines() == [
        "error: Ray refused this client: Token authentication is enabled but no authentication token was found; "
        "give it the cluster's token (RAY_AUTH_TOKEN_PATH=<file>, RAY_AUTH_TOKEN, or ~/.ray/auth_token) with "
        "RAY_AUTH_MODE=token (docs/cluster.md, Security model)"]
    # ...and with another cluster's token: one line too, in about a second (Ray's own ray.init waits ~20 s and
    # ends in a 64-line traceback with "Failed to connect to Ray cluster").
    started = time.monotonic()
    done = subprocess.run([sys.executable, "-m", "jobs.train", "experiments/runs/pulse.yaml", f"data.output_dir={data}",
                           f"run.storage_path={tmp_path / 'ray'}", "tracking.enabled=false"],
                          env={**no_token, "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": "0" * 64}, cwd=REPO,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 2, done.stderr[-3000:]
    assert done.stderr.strip().splitlines() == [
        "error: Ray refused this client: RPC error: InvalidAuthToken: Authentication token is missing or incorrect; "
        "give it the cluster's token (RAY_AUTH_TOKEN_PATH=<file>, RAY_AUTH_TOKEN, or ~/.ray/auth_token) with "
        "RAY_AUTH_MODE=token (docs/cluster.md, Security model)"]
    assert time.monotonic() - started < 60


def test_ray_job_submit_runs_pulse_and_logs_to_mlflow(tmp_path, ray_head, mlflow_auth_server, monkeypatch):
    from mlflow import MlflowClient

    address, _, _, env = ray_head
    uri, creds = mlflow_auth_server
    data = make_dataset(tmp_path / "data", {32: 200, 64: 100})
    job_id = f"yxanul-pulse-{os.getpid()}-{int(time.time())}"
    cmd = [RAY, "job", "submit", "--address", address, "--submission-id", job_id,
           "--working-dir", str(REPO), "--runtime-env-json", json.dumps({"excludes": UPLOAD_EXCLUDES}), "--", "python", "-m", "jobs.train", "experiments/runs/pulse.yaml",
           f"data.output_dir={data}", f"run.storage_path={tmp_path / 'ray'}", f"tracking.uri={uri}",
           "train.max_tokens=16384", "eval.every_tokens=8192", "checkpoint.every_tokens=8192", "log.every_steps=2"]
    # The client has the token (RAY_AUTH_MODE=token, RAY_AUTH_TOKEN_PATH) but no MLflow credentials: the job's
    # driver and Train workers get those from the head's environment, as on the cluster.
    client_env = {k: v for k, v in env.items() if k not in creds}
    done = subprocess.run(cmd, env={**client_env, "RAY_ADDRESS": address}, cwd=REPO, capture_output=True, text=True,
                          timeout=540)
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-4000:]

    from ray.job_submission import JobStatus, JobSubmissionClient

    assert JobSubmissionClient(address).get_job_status(job_id) == JobStatus.SUCCEEDED
    assert "training finished at 16.4k tokens" in done.stdout
    # Rank 0 speaks, under the run's name; Ray's own output (every worker's, the controller's) is in the log.
    progress = [line for line in done.stdout.splitlines() if line.startswith("pulse | ") and "% step " in line]
    assert [line.split(" step ")[1].split()[0] for line in progress] == ["2/8", "4/8", "6/8", "8/8"], done.stdout
    assert "RayTrainWorker" not in done.stdout and "TrainController" not in done.stdout
    log = (tmp_path / "ray" / "pulse.log").read_text()
    assert "yxanul[pulse] " in log and "RayTrainWorker" in log

    for key, value in creds.items():
        monkeypatch.setenv(key, value)
    client = MlflowClient(uri)
    (run,) = client.search_runs([client.get_experiment_by_name("pulse").experiment_id])
    assert run.info.status == "FINISHED" and run.data.tags["yxanul.run_name"] == "pulse"
    steps = [m.step for m in client.get_metric_history(run.info.run_id, "train/loss")]
    assert steps == [4096 * k for k in range(1, 5)]  # every 2 steps of 2048 tokens
    assert [m.step for m in client.get_metric_history(run.info.run_id, "val/bpb")] == [8192, 16384]
    # No secret in what the run recorded: params, tags, the resolved config.
    secrets = [creds["MLFLOW_TRACKING_PASSWORD"], Path(os.environ["RAY_AUTH_TOKEN_PATH"]).read_text().strip()]
    recorded = [*run.data.params.items(), *run.data.tags.items()]
    assert len(run.data.params) > 20 and run.data.params["tracking.uri"] == uri
    assert not [(k, v) for k, v in recorded for secret in secrets if secret in k or secret in v]
    config = Path(client.download_artifacts(run.info.run_id, "config.yaml", str(tmp_path))).read_text()
    assert "pulse" in config and not [secret for secret in secrets if secret in config]


def _head_processes(pgid: int) -> list:
    """Every process of the head: its process group (GCS, raylet, dashboard, agents, autoscaler, Ray's workers and
    job drivers) and their children."""
    import psutil
    import ray  # noqa: F401  (Ray ships psutil and puts it on sys.path)

    found = {}
    for proc in psutil.process_iter():
        try:
            if os.getpgid(proc.pid) == pgid:
                found[proc.pid] = proc
                found.update({child.pid: child for child in proc.children(recursive=True)})
        except (ProcessLookupError, psutil.Error):
            continue
    return list(found.values())


def _answers_anonymously(host: str, port: int) -> str | None:
    """What an HTTP GET without a token gets back, when it gets an answer (2xx/3xx) rather than a refusal (401/403),
    a non-HTTP protocol (gRPC) or nothing."""
    import http.client

    try:
        conn = http.client.HTTPConnection(host, port, timeout=5)
        conn.request("GET", "/")
        resp = conn.getresponse()
        body = resp.read(120)
    except (OSError, http.client.HTTPException):
        return None
    return None if resp.status in (401, 403) or resp.status >= 500 else f"HTTP {resp.status} {body!r}"


def test_no_socket_of_the_head_answers_anonymously_beyond_loopback(ray_head):
    """Issue 26: Ray 2.60 replaced --node-ip-address=127.0.0.1 by the machine's address and three Prometheus
    endpoints answered on all interfaces without a token. List what the head (started as docs/cluster.md says) listens
    on, connect to every non-loopback one through this machine's own non-loopback address (a local interface,
    found with psutil: nothing leaves the machine) and GET it without a token."""
    import psutil
    import ray  # noqa: F401

    processes = _head_processes(HEAD["pid"])
    pids = {p.pid for p in processes}
    assert len(pids) >= 5, "GCS, raylet, dashboard, agents, autoscaler"
    sockets = [c for c in psutil.net_connections("inet") if c.status == psutil.CONN_LISTEN and c.pid in pids]
    assert len(sockets) >= 5, sockets  # GCS, raylet, dashboard, agents (44217/44227 may be taken by another Ray)
    local = [a.address for addrs in psutil.net_if_addrs().values() for a in addrs
             if a.family in (socket.AF_INET, socket.AF_INET6)
             and not ipaddress.ip_address(a.address.split("%")[0]).is_loopback]
    assert local, "this machine has no non-loopback interface to test from"
    answered = []
    for conn in sockets:
        ip = ipaddress.ip_address(conn.laddr.ip)
        mapped = getattr(ip, "ipv4_mapped", None)
        if ip.is_loopback or (mapped is not None and mapped.is_loopback):
            continue
        targets = local if ip.is_unspecified or (mapped is not None and mapped.is_unspecified) else [str(mapped or ip)]
        for host in targets:  # only this machine's own addresses
            if host in local and (found := _answers_anonymously(host, conn.laddr.port)):
                answered.append((conn.laddr.ip, conn.laddr.port, psutil.Process(conn.pid).name(), found))
    assert answered == []
    beyond = sorted({(c.laddr.ip, c.laddr.port) for c in sockets
                     if not ipaddress.ip_address(c.laddr.ip.replace("::ffff:", "")).is_loopback})
    assert beyond == []  # the loopback switch: nothing of the head listens beyond 127.0.0.1 at all
    # Not vacuous: the metrics exporter runs, on loopback, and answers there (Prometheus on this machine can scrape).
    assert ("127.0.0.1", HEAD["metrics_port"]) in {(c.laddr.ip, c.laddr.port) for c in sockets}
    assert (_answers_anonymously("127.0.0.1", HEAD["metrics_port"]) or "").startswith("HTTP 200")


def test_a_token_client_meeting_a_head_without_authentication_is_one_line(tmp_path):
    """A head started without RAY_AUTH_MODE=token (here: explicitly disabled) accepts anyone. A job holding a token
    used to connect without a word and fail later with an unrelated ActorDiedError; now it stops at once."""
    env = {**os.environ, **local_server_env(), "RAY_AUTH_MODE": "disabled",
           "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    env.pop("RAY_ADDRESS", None)
    temp = tempfile.mkdtemp(prefix="/tmp/rayn")
    dashboard, gcs = free_port(), free_port()
    cmd = [RAY, "start", "--head", "--block", "--node-ip-address=127.0.0.1", f"--port={gcs}",
           "--include-dashboard=true", "--dashboard-host=127.0.0.1", f"--dashboard-port={dashboard}",
           f"--dashboard-agent-listen-port={free_port()}",
           f"--dashboard-agent-grpc-port={free_port()}", f"--runtime-env-agent-port={free_port()}",
           f"--ray-client-server-port={free_port()}", f"--metrics-export-port={free_port()}", "--num-cpus=1",
           f"--temp-dir={temp}", "--disable-usage-stats"]
    with open(Path(temp) / "head.log", "w") as log:
        proc = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        wait_http(f"http://127.0.0.1:{dashboard}/api/version", timeout_s=120, proc=proc)
        data = make_dataset(tmp_path / "data", {32: 64, 64: 32})
        client = {**os.environ, "RAY_ADDRESS": f"127.0.0.1:{gcs}"}  # RAY_AUTH_MODE=token and the session's token
        done = subprocess.run([sys.executable, "-m", "jobs.train", "experiments/runs/pulse.yaml",
                               f"data.output_dir={data}", f"run.storage_path={tmp_path / 'ray'}",
                               "tracking.enabled=false"], env=client, cwd=REPO, capture_output=True, text=True,
                              timeout=300)
        assert done.returncode == 2, done.stderr[-3000:]
        assert done.stderr.strip().splitlines() == [
            f"error: the Ray cluster at 127.0.0.1:{gcs} has token authentication off (its head runs without "
            f"RAY_AUTH_MODE=token): anyone who reaches its ports can run code on it, and jobs of a token client fail "
            f"there; restart its head with RAY_AUTH_MODE=token (docs/cluster.md, Security model), or set "
            f"RAY_AUTH_MODE=disabled for this client to use it as it is"]
    finally:
        kill_group(proc)
