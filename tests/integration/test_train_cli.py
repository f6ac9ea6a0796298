"""`python -m jobs.train` as a user runs it: --dry-run plan, and bad input stopped before Ray starts with one
readable error line and exit code 2."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from tests.train_helpers import make_dataset

REPO = Path(__file__).resolve().parents[2]
PULSE = "experiments/runs/pulse.yaml"


def job(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "jobs.train", *args], cwd=REPO, capture_output=True, text=True,
                          timeout=300, env={"PATH": "/usr/bin:/bin", "RAY_AUTH_MODE": "token",
                                            "RAY_AUTH_TOKEN_PATH": os.environ["RAY_AUTH_TOKEN_PATH"]})


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return make_dataset(tmp_path_factory.mktemp("cli") / "data", {32: 64, 64: 32})


def test_dry_run_prints_config_parameters_and_stage_table(data, tmp_path):
    done = job(PULSE, f"data.output_dir={data}", f"run.storage_path={tmp_path}", "--dry-run")
    assert done.returncode == 0, done.stderr
    out = done.stdout
    assert "# resolved config" in out and "tokens_per_step: 2048" in out
    from yxanul.config import load_config
    from yxanul.model import parameter_count

    count = parameter_count(load_config(REPO / PULSE).model, 256).total
    assert f"({count:,};" in out  # exact parameter count at the dataset's vocabulary (256)
    table = out[out.index("stage  tokens"):].splitlines()
    assert table[1].split()[:9] == ["0", "32.8k", "0", "32.8k", "32", "default", "32", "1", "16"]
    assert table[2].split()[:9] == ["1", "32.8k", "32.8k", "65.5k", "64", "default", "16", "1", "16"]
    assert "32 steps x 2.05k tokens/step = 65.5k tokens over 2 worker(s)" in out
    assert not (tmp_path / "pulse").exists()  # nothing started, nothing written


def test_curriculum_the_dataset_cannot_serve_is_one_error_line(data, tmp_path):
    done = job(PULSE, f"data.output_dir={data}", f"run.storage_path={tmp_path}", "curriculum=none",
               "train.max_tokens_per_microbatch=4096", "train.tokens_per_step=8192", "model.max_positions=4096",
               "model.context=2048")
    assert done.returncode == 2
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ")
    assert "curriculum 'none' needs 2048-token sequences" in lines[0] and str(data) in lines[0]
    assert "Traceback" not in done.stderr


def test_unreachable_tracking_server_fails_before_training(data, tmp_path):
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    done = job(PULSE, f"data.output_dir={data}", f"run.storage_path={tmp_path}",
               f"tracking.uri=http://127.0.0.1:{port}")
    assert done.returncode == 2
    assert done.stderr.strip().splitlines() == [
        f"error: the MLflow tracking server http://127.0.0.1:{port} is not reachable ([Errno 111] Connection refused);"
        f" start it (e.g. `mlflow server --host 127.0.0.1 --port 5000`), fix tracking.uri / $MLFLOW_TRACKING_URI, "
        f"or set tracking.enabled=false"]
    assert not (tmp_path / "pulse").exists()


def test_missing_dataset_says_how_to_prepare(tmp_path):
    done = job(PULSE, f"data.output_dir={tmp_path / 'none'}", f"run.storage_path={tmp_path}")
    assert done.returncode == 2 and "run `python -m jobs.prepare CONFIG`" in done.stderr


def test_build_trainer_passes_scaling_failure_and_checkpoint_settings(data, tmp_path, monkeypatch):
    from ray.train.v2._internal.constants import get_env_vars_to_propagate

    from yxanul.config import load_config
    from yxanul.train.launch import TRAIN_POLL_ENV, build_trainer, run_dir

    monkeypatch.delenv(TRAIN_POLL_ENV, raising=False)

    cfg = load_config(REPO / PULSE, [f"data.output_dir={data}", f"run.storage_path={tmp_path}", "run.name=b",
                                     "tracking.enabled=false", "scaling.use_gpu=true", "scaling.accelerator_type=H100",
                                     "scaling.num_workers=4", "train.tokens_per_step=4096", "scaling.max_failures=3",
                                     "checkpoint.keep_last=5"])
    trainer = build_trainer(cfg)
    scaling, run = trainer.scaling_config, trainer.run_config
    assert (scaling.num_workers, scaling.use_gpu, scaling.accelerator_type) == (4, True, "H100")
    assert run.failure_config.max_failures == 3 and run.checkpoint_config.num_to_keep == 5
    assert f"{run.storage_path}/{run.name}" == run_dir(cfg) == f"{tmp_path}/b"
    setup = trainer.train_loop_config["setup"]
    assert setup.data_dir == str(data) and setup.run_id is None and setup.marker_dir == f"{tmp_path}/b/workers"
    # the shared caches: where yxanul.layout puts them, the compile cache only when precision.compile_cache is on
    assert (setup.fp8_plan_dir, setup.compile_cache_dir) == (f"{tmp_path}/fp8-plans", f"{tmp_path}/compile-cache")
    off = build_trainer(cfg.model_copy(update={"precision": cfg.precision.model_copy(update={"compile_cache": False})}))
    assert off.train_loop_config["setup"].compile_cache_dir is None
    # Ray Train's controller polls its workers every 0.2 s (Ray: 2 s), handed on by Ray to controller and workers;
    # a value the user set is kept
    assert get_env_vars_to_propagate()[TRAIN_POLL_ENV] == "0.2"
    monkeypatch.setenv(TRAIN_POLL_ENV, "1.5")
    build_trainer(cfg)
    assert get_env_vars_to_propagate()[TRAIN_POLL_ENV] == "1.5"


def _read_only_folder(tmp_path: Path) -> Path | None:
    """A folder this process cannot create anything in: a 0555 folder, unless this runs as root (which writes
    anyway); then sysfs, which refuses new entries even to root. None when neither refuses here."""
    folder = tmp_path / "read-only"
    folder.mkdir()
    folder.chmod(0o555)
    for candidate in (folder, Path("/sys/yxanul-read-only")):
        try:
            (candidate / "probe").mkdir(parents=True)
        except OSError:
            return candidate
        (candidate / "probe").rmdir()
    return None


def test_read_only_storage_is_one_line_and_leaves_no_mlflow_run(data, tmp_path):
    """Issue 26: a read-only run.storage_path gave a traceback and, with --verbose, an orphan RUNNING run."""
    from mlflow import MlflowClient

    storage = _read_only_folder(tmp_path)
    if storage is None:
        pytest.skip("no folder here refuses writes to this user")
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    for verbose in ([], ["--verbose"]):
        done = job(PULSE, f"data.output_dir={data}", f"run.storage_path={storage}", f"tracking.uri={uri}", *verbose)
        assert done.returncode == 2, done.stderr[-3000:]
        (line,) = done.stderr.strip().splitlines()
        assert line.startswith("error: ") and str(storage) in line and "run.storage_path" in line, line
    if (tmp_path / "mlflow.db").exists():
        client = MlflowClient(uri)
        assert client.search_runs([e.experiment_id for e in client.search_experiments()]) == []
