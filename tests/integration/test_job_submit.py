"""`ray job submit` against a real head: start `ray start --head` on 127.0.0.1 (from this venv, own ports and
temp dir, its own process group), submit jobs.train with the pulse config, wait for SUCCEEDED, check the MLflow
run, then kill the head's process group (never `ray stop`: it would kill every Ray on the machine)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from tests.integration.conftest import free_port, wait_http
from tests.train_helpers import make_dataset

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
# Not part of the project: hidden tool/cache folders and stray wheels in a shared checkout (Ray refuses uploads
# over 100 MiB). The job needs only jobs/ and experiments/ (yxanul is installed in the venv).
UPLOAD_EXCLUDES = [".ray*", ".te*", ".hypothesis", ".pytest_cache", "*.whl", "outputs"]


@pytest.fixture
def ray_head():
    bin_dir = Path(sys.executable).parent
    env = {**os.environ, "RAY_AUTH_MODE": "disabled", "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}"}
    env.pop("RAY_ADDRESS", None)
    temp = tempfile.mkdtemp(prefix="/tmp/rayj")  # short: Ray's unix socket paths must stay < 108 bytes
    dashboard = free_port()
    cmd = [str(bin_dir / "ray"), "start", "--head", "--block", "--node-ip-address=127.0.0.1",
           f"--port={free_port()}", "--include-dashboard=true", "--dashboard-host=127.0.0.1",
           f"--dashboard-port={dashboard}", f"--dashboard-agent-listen-port={free_port()}",
           f"--dashboard-agent-grpc-port={free_port()}", f"--runtime-env-agent-port={free_port()}",
           f"--ray-client-server-port={free_port()}", f"--metrics-export-port={free_port()}",
           "--num-cpus=4", f"--temp-dir={temp}", "--disable-usage-stats"]
    log = open(Path(temp) / "head.log", "w")
    proc = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    address = f"http://127.0.0.1:{dashboard}"
    try:
        wait_http(f"{address}/api/version", timeout_s=120, proc=proc)
        yield address, env
    finally:
        for sig, grace in ((signal.SIGTERM, 15), (signal.SIGKILL, 5)):
            try:
                os.killpg(proc.pid, sig)
            except ProcessLookupError:
                break
            try:
                proc.wait(timeout=grace)
                break
            except subprocess.TimeoutExpired:
                continue
        log.close()


def test_ray_job_submit_runs_pulse_and_logs_to_mlflow(tmp_path, ray_head):
    from mlflow import MlflowClient

    address, env = ray_head
    data = make_dataset(tmp_path / "data", {32: 200, 64: 100})
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    job_id = f"yxanul-pulse-{os.getpid()}-{int(time.time())}"
    cmd = [str(Path(sys.executable).parent / "ray"), "job", "submit", "--address", address, "--submission-id", job_id,
           "--working-dir", str(REPO), "--runtime-env-json", json.dumps({"excludes": UPLOAD_EXCLUDES}), "--", "python", "-m", "jobs.train", "experiments/runs/pulse.yaml",
           f"data.output_dir={data}", f"run.storage_path={tmp_path / 'ray'}", f"tracking.uri={uri}",
           "train.max_tokens=16384", "eval.every_tokens=8192", "checkpoint.every_tokens=8192", "log.every_steps=2"]
    done = subprocess.run(cmd, env={**env, "RAY_ADDRESS": address}, cwd=REPO, capture_output=True, text=True,
                          timeout=540)
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-4000:]

    from ray.job_submission import JobStatus, JobSubmissionClient

    assert JobSubmissionClient(address).get_job_status(job_id) == JobStatus.SUCCEEDED
    assert "training finished at 16.4k tokens" in done.stdout

    client = MlflowClient(uri)
    (run,) = client.search_runs([client.get_experiment_by_name("pulse").experiment_id])
    assert run.info.status == "FINISHED" and run.data.tags["yxanul.run_name"] == "pulse"
    steps = [m.step for m in client.get_metric_history(run.info.run_id, "train/loss")]
    assert steps == [4096 * k for k in range(1, 5)]  # every 2 steps of 2048 tokens
    assert [m.step for m in client.get_metric_history(run.info.run_id, "val/bpb")] == [8192, 16384]
