"""Training survives its tracker: MLflow failures are retried with back-off, kept in order, reported in one warning
line, sent when MLflow is back, and otherwise kept in the run folder and replayed by `python -m jobs.replay`.
(Against a real authenticated server with a password rotated mid-run: tests/integration/test_mlflow_auth.py.)"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from yxanul.errors import TrackingError
from yxanul.tracking import (
    SPOOL_DIR,
    ResilientTracker,
    Status,
    connect,
    create_run,
    describe_failure,
    end_run_or_spool,
    replay_spool,
    spooled,
)

ROOT = Path(__file__).resolve().parents[2]


class _Refused(Exception):
    """What MLflow's client raises when the server refuses a login (its message, verbatim)."""

    def __init__(self, code: int = 401) -> None:
        super().__init__(f"API request to endpoint /api/2.0/mlflow/runs/log-batch failed with error code {code} "
                         "!= 200. Response body: 'You are not authenticated.'")


class _Server:
    """Stands in for MLflowTracker: records what arrives, or raises while ``failing``."""

    def __init__(self) -> None:
        self.failing: Exception | None = None
        self.calls = 0
        self.metrics: list[tuple[int, dict]] = []
        self.tags: dict[str, str] = {}
        self.texts: dict[str, str] = {}

    def _check(self) -> None:
        self.calls += 1
        if self.failing is not None:
            raise self.failing

    def log_records(self, records):
        self._check()
        self.metrics += [(step, metrics) for step, metrics, _ in records]

    def set_tags(self, tags):
        self._check()
        self.tags.update(tags)

    def log_text(self, text, artifact_file):
        self._check()
        self.texts[artifact_file] = text

    def log_artifact(self, local_path, artifact_path=None):
        self._check()
        self.texts[f"{artifact_path}/{Path(local_path).name}"] = Path(local_path).read_text()

    def last_step(self, key):
        return None


class _Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def _tracker(server, clock, lines, spool_dir=None, **kw):
    return ResilientTracker("http://127.0.0.1:5000", "run1", spool_dir=spool_dir, say=lines.append, clock=clock,
                            connect=lambda: server, **kw)


def test_metrics_are_sent_in_batches_every_send_every_s_and_all_at_a_flush():
    """tracking.send_every_s: the loop logs every few hundred milliseconds on a GPU, and every request waits the
    training thread. Metrics wait for the interval and go in one request; a flush (every validation or checkpoint
    report) and tags send everything at once, in order."""
    server, clock, lines = _Server(), _Clock(), []
    tracker = _tracker(server, clock, lines, send_every_s=10.0)
    for step in range(1, 30):  # connecting (at t=0) opened the interval
        clock.now = step * 0.3
        tracker.log_metrics({"train/loss": 5.0 - step / 100}, step=step)
    assert server.calls == 0 and server.metrics == []  # 8.7 s after the last contact: all kept
    clock.now = 10.0
    tracker.log_metrics({"train/loss": 4.0}, step=30)
    assert server.calls == 1 and [s for s, _ in server.metrics] == list(range(1, 31))  # one batch, in order
    clock.now = 11.0
    tracker.log_metrics({"train/loss": 3.9}, step=31)
    tracker.log_metrics({"train/loss": 3.8}, step=32)
    assert server.calls == 1
    tracker.flush()  # a checkpoint report: nothing may stay only in a batch
    assert server.calls == 2 and [s for s, _ in server.metrics] == list(range(1, 33))
    tracker.flush()  # nothing pending: no request
    assert server.calls == 2
    tracker.log_metrics({"train/loss": 3.7}, step=33)
    tracker.set_tags({"yxanul.spikes": "none"})  # a tag goes at once, with the metrics before it
    assert [s for s, _ in server.metrics][-1] == 33 and server.tags == {"yxanul.spikes": "none"} and lines == []


def test_send_every_s_zero_sends_each_logging_step():
    server, clock, lines = _Server(), _Clock(), []
    tracker = _tracker(server, clock, lines)
    for step in range(1, 4):
        tracker.log_metrics({"train/loss": 1.0}, step=step)
        assert server.calls == step


def test_failures_are_kept_retried_with_back_off_and_sent_in_order_when_mlflow_is_back(tmp_path):
    server, clock, lines = _Server(), _Clock(), []
    tracker = _tracker(server, clock, lines)
    tracker.log_metrics({"train/loss": 5.0}, step=1)
    server.failing = _Refused(401)  # the password was rotated
    tracker.log_metrics({"train/loss": 4.0}, step=2)
    assert lines == ["warning: MLflow http://127.0.0.1:5000 failed for run run1: HTTP 401 (login refused); training "
                     "goes on, its metrics are kept and sent again with back-off (next try in 5 s) if MLflow still "
                     "fails when training ends"]
    calls = server.calls
    for step in range(3, 9):  # within the back-off: no request at all, training does not wait
        tracker.log_metrics({"train/loss": 4.0 - step / 10}, step=step)
    tracker.set_tags({"yxanul.spikes": "none"})
    assert server.calls == calls
    clock.now = 5.0  # the retry fails again: the next waits 10 s, still one warning line
    tracker.log_metrics({"train/loss": 3.0}, step=9)
    assert server.calls == calls + 1 and len(lines) == 1
    clock.now = 14.0
    tracker.log_text("{}", "fp8_plan.json")
    assert server.calls == calls + 1
    server.failing = None
    clock.now = 15.0
    tracker.log_metrics({"train/loss": 2.0}, step=10)
    assert [step for step, _ in server.metrics] == list(range(1, 11))  # nothing lost, in order, once
    assert server.tags == {"yxanul.spikes": "none"} and server.texts == {"fp8_plan.json": "{}"}
    assert lines[1] == "MLflow http://127.0.0.1:5000 takes the run's records again: 11 kept record(s) sent"
    report = Path(tmp_path / "report.txt")
    report.write_text("table")
    tracker.log_artifact(report, "comparison")  # sent at once: the file keeps its name
    assert server.texts["comparison/report.txt"] == "table"
    server.failing = _Refused(503)  # a later outage is reported again, once
    tracker.log_metrics({"train/loss": 1.0}, step=11)
    assert "HTTP 503" in lines[2] and "(next try in 5 s)" in lines[2] and len(lines) == 3


def test_a_refused_login_at_the_end_is_spooled_at_once_and_replayed_into_mlflow(tmp_path, capsys):
    from mlflow import MlflowClient

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    run_id = create_run(uri, connect(uri, "resilience"), "r")
    server, clock, lines = _Server(), _Clock(), []
    spool_dir = str(tmp_path / "run" / SPOOL_DIR)
    tracker = _tracker(server, clock, lines, spool_dir=spool_dir)
    tracker.run_id = run_id
    tracker.log_metrics({"train/loss": 5.0}, step=1024)
    server.failing = _Refused(401)
    for step in (2048, 3072):
        tracker.log_metrics({"train/loss": 6.0 - step / 1024, "train/lr": 1e-3}, step=step)
    tracker.set_tags({"yxanul.gpu_name": "none"})
    model = tmp_path / "export"
    model.mkdir()
    (model / "config.json").write_text("{}")
    tracker.log_artifact(model, "model")
    (model / "config.json").unlink()  # the caller's temporary export is gone: the tracker kept a copy
    tracker.close()  # a refused login will not change in this process: no waiting
    assert clock.now == 0.0
    ((path, header, count),) = spooled(str(tmp_path / "run"))
    assert header == {"op": "run", "uri": "http://127.0.0.1:5000", "run_id": run_id,
                      "problem": "HTTP 401 (login refused)"}
    assert count == 4 and path == tracker.spool_file

    # The driver cannot end the run either: its verdict joins the spool, in one warning line.
    said = []
    assert not end_run_or_spool("http://127.0.0.1:1", run_id, Status.FINISHED, spool_dir=spool_dir, wait_s=0,
                                say=said.append)
    assert len(said) == 1 and said[0].startswith(f"warning: MLflow http://127.0.0.1:1 failed to end run {run_id} as "
                                                 f"finished: connection failed: Connection refused; the verdict and 4 "
                                                 f"other record(s) wait in {spool_dir}")
    assert said[0].endswith(f"`python -m jobs.replay {tmp_path / 'run'}` sends them")

    # MLflow is back (here: the right store): the command sends everything, then the verdict, and clears the spool.
    done = subprocess.run([sys.executable, "-m", "jobs.replay", str(tmp_path / "run"), "--tracking-uri", uri],
                          cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines()[-2:] == [f"ended run {run_id} as finished", "done: 5 record(s) sent"]
    client = MlflowClient(uri)
    run = client.get_run(run_id)
    assert sorted((m.step, m.value) for m in client.get_metric_history(run_id, "train/loss")) == [
        (2048, 4.0), (3072, 3.0)]  # 1024 went to the stand-in server before the outage
    assert run.info.status == "FINISHED" and run.data.tags["yxanul.status"] == "finished"
    assert run.data.tags["yxanul.gpu_name"] == "none"
    assert "model/config.json" in {f.path for f in client.list_artifacts(run_id, "model")}
    assert spooled(str(tmp_path / "run")) == [] and not list(Path(spool_dir).iterdir())
    with pytest.raises(TrackingError, match="nothing to replay"):
        replay_spool(str(tmp_path / "run"), uri)


def test_network_failures_are_retried_at_the_end_for_a_bounded_time(tmp_path):
    server, lines = _Server(), []
    clock = _Clock()
    server.failing = ConnectionError("Connection refused")
    tracker = _tracker(server, clock, lines, spool_dir=str(tmp_path / SPOOL_DIR), close_wait_s=0.0)
    tracker.log_metrics({"train/loss": 1.0}, step=1)
    tracker.close()
    assert "connection failed: Connection refused" in lines[0]
    assert json.loads(Path(tracker.spool_file).read_text().splitlines()[1])["step"] == 1


def test_failures_are_described_without_secrets():
    assert describe_failure(_Refused(401)) == "HTTP 401 (login refused)"
    assert describe_failure(_Refused(403)) == "HTTP 403 (permission denied)"
    assert describe_failure(_Refused(502)) == "HTTP 502"
    wrapped = Exception("API request to http://10.0.0.5:5000/api/2.0/mlflow/runs/get failed with exception "
                        "HTTPConnectionPool(host='10.0.0.5', port=5000): Max retries exceeded (Connection refused)")
    assert describe_failure(wrapped) == "connection failed: Connection refused"
    # the server answered 500 every time urllib3 retried (seen when MLflow's basic auth raced a password change)
    answered = Exception("API request to http://127.0.0.1:37717/api/2.0/mlflow/runs/log-batch failed with exception "
                         "HTTPConnectionPool(host='127.0.0.1', port=37717): Max retries exceeded with url: "
                         "/api/2.0/mlflow/runs/log-batch (Caused by ResponseError('too many 500 error responses'))")
    assert describe_failure(answered) == "HTTP 500"
