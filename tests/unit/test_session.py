"""The in-process session (yxanul.train.session.TuneSession) without Ray running: the GPU it trains on, and the
training report as Tune sees it."""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

import pytest
import torch

from yxanul.train.session import TuneSession, for_tune


def test_an_in_process_trial_trains_on_the_gpu_ray_gave_it(monkeypatch):
    import ray

    monkeypatch.setattr(ray, "get_gpu_ids", lambda: [3])
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "3")  # Ray narrows it to the trial's GPU
    assert TuneSession().device() == torch.device("cuda", 0)
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0,1,2,3")  # RAY_EXPERIMENTAL_NOSET_CUDA_VISIBLE_DEVICES
    assert TuneSession().device() == torch.device("cuda", 3)


def test_the_loops_done_reaches_tune_as_finished():
    """``done`` is Tune's reserved "trial over" key: a true value would end the trial before its run is ended."""
    assert for_tune({"done": 1.0, "tokens": 8, "val/bpb": 0.5}) == {"finished": 1.0, "tokens": 8, "val/bpb": 0.5}


def test_in_process_checkpoints_are_written_off_the_training_thread_and_reported_by_the_next_report(
        monkeypatch, tmp_path):
    """Tune's report must run in the trainable's thread and copies the checkpoint there, so the session writes the
    files in its own thread and hands them to the next report; the last report (``done``) writes its own
    checkpoint in place, and a write that fails surfaces in the training thread."""
    import threading

    from ray import tune

    reported: list[tuple[dict, list[str] | None]] = []
    stored_copies: list[Path] = []

    def fake_report(metrics, checkpoint=None):
        assert threading.current_thread() is threading.main_thread()
        files = None
        if checkpoint is not None:  # Tune copies the folder into the trial's storage before it returns
            copy = tmp_path / f"stored-{len(stored_copies)}"
            shutil.copytree(checkpoint.path, copy)
            stored_copies.append(copy)
            files = sorted(p.read_text() for p in copy.iterdir())
        reported.append((metrics, files))

    monkeypatch.setattr(tune, "report", fake_report)
    monkeypatch.setattr(tune, "get_checkpoint", lambda: stored_copies[-1] if stored_copies else None)
    release = threading.Event()

    def writer(text, gate=None):
        def write(folder):
            if gate is not None:
                gate.wait(10)
            (Path(folder) / "state").write_text(text)
        return write

    markers: list[str] = []
    session = TuneSession()
    done = session.report({"step": 1}, writer("step 1"), lambda: markers.append("1"), asynchronous=True)
    assert reported == [({"step": 1}, None)]  # nothing written yet to go with it
    assert done.wait(10)
    session.report({"step": 2})  # a plain report carries the written checkpoint
    assert reported[-1] == ({"step": 2}, ["step 1"]) and markers == ["1"] and session.metrics == {"step": 1}
    written = [p for p in Path(tempfile.gettempdir()).glob("yxanul-ckpt-*") if (p / "state").exists()
               and (p / "state").read_text() == "step 1"]
    assert written == []  # the local copy is gone once Tune has its own
    slow = session.report({"step": 3}, writer("step 3", gate=release), lambda: markers.append("3"), asynchronous=True)
    session.report({"step": 4})  # step 3 still being written: not waited for
    assert reported[-1] == ({"step": 4}, None) and not slow.is_set()
    release.set()
    session.report({"step": 5, "done": 1.0}, writer("step 5"), lambda: markers.append("5"), asynchronous=True)
    # the last report writes its own checkpoint in place; step 3's, superseded, is dropped
    assert reported[-1] == ({"finished": 1.0, "step": 5}, ["step 5"]) and markers == ["1", "5"]
    assert session.metrics == {"step": 5, "done": 1.0}

    def broken(folder):
        raise OSError("disk full")

    failed = TuneSession()
    assert failed.report({"step": 1}, broken, None, asynchronous=True).wait(10)
    with pytest.raises(OSError, match="disk full"):
        failed.report({"step": 2})
