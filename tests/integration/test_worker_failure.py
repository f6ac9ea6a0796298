"""A worker failure is one line a user can act on, through real Ray Train: the real exception type and message, never
Ray's log lines, a traceback's caret markers or colour codes; the same line on the console, as the job's exit and in
the MLflow run. The failures are injected in the workers by the test-only YXANUL_TEST_FAILURE
(yxanul.train.setup.TEST_FAILURE_ENV)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.output import own_lines
from tests.train_helpers import make_dataset
from yxanul.train.setup import TEST_FAILURE_ENV

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
ONE_WORKER = ["scaling.num_workers=1", "eval.every_tokens=0", "checkpoint.every_tokens=0", "train.max_tokens=16384"]


def _failed_run(uri: str) -> object:
    from mlflow import MlflowClient

    client = MlflowClient(uri)
    (run,) = client.search_runs([client.get_experiment_by_name("pulse").experiment_id])
    assert run.info.status == "FAILED"
    return run


def _readable(line: str) -> None:
    assert "\x1b" not in line and "^^^" not in line and "pid=" not in line and "Traceback" not in line, line


def test_a_cuda_out_of_memory_in_a_worker_is_one_line_with_shape_precision_memory_and_fix(tmp_path, monkeypatch,
                                                                                          capsys, ray_cluster):
    from jobs.train import main
    from yxanul.cli import run_job

    data = make_dataset(tmp_path / "data", {32: 300, 64: 150})
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv(TEST_FAILURE_ENV, "oom@2")  # the driver hands it to the workers (WorkerSetup)
    code = run_job(main, ["experiments/runs/pulse.yaml", f"data.output_dir={data}", f"run.storage_path={tmp_path}",
                          f"tracking.uri={uri}", *ONE_WORKER])
    err = capsys.readouterr().err
    lines = own_lines(err)
    assert code == 2, err[-3000:]
    assert lines == [
        "error: CUDA out of memory at micro-batch 32x32, fp32, 78.2 of 79.2 GiB in use (tried to allocate 3.05 GiB): "
        "set train.max_tokens_per_microbatch=auto or lower it (now 1,024)"], err[-3000:]
    _readable(lines[0])
    assert _failed_run(uri).data.tags["yxanul.error"] == lines[0].removeprefix("error: ")


def test_any_other_worker_exception_is_its_type_and_message_and_exit_code_1(tmp_path):
    data = make_dataset(tmp_path / "data", {32: 300, 64: 150})
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    env = {**os.environ, TEST_FAILURE_ENV: "runtime@1"}
    done = subprocess.run(
        [sys.executable, "-m", "jobs.train", "experiments/runs/pulse.yaml", f"data.output_dir={data}",
         f"run.storage_path={tmp_path}", f"tracking.uri={uri}", *ONE_WORKER],
        cwd=REPO, capture_output=True, text=True, timeout=400, env=env)
    assert done.returncode == 1, done.stdout[-3000:] + done.stderr[-3000:]
    (line,) = done.stderr.strip().splitlines()  # one line: nothing of Ray's, no traceback
    log = tmp_path / "pulse.log"
    assert line == (f"error: training worker rank 0 failed: RuntimeError: injected test failure at step 1 "
                    f"({TEST_FAILURE_ENV}=runtime@1) (traceback in {log})")
    _readable(line)
    assert _failed_run(uri).data.tags["yxanul.error"] == line.removeprefix("error: ")
    text = log.read_text()
    assert re.search(r"Traceback \(most recent call last\)", text) and "_inject_test_failure" in text
