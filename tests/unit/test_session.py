"""The in-process session (yxanul.train.session.TuneSession) without Ray running: the GPU it trains on, and the
training report as Tune sees it."""

from __future__ import annotations

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


class _TuneFunctionSession:
    """The part of Ray Tune's function-trainable session (``ray.train._internal.session._TrainSession``) the
    in-process session registers checkpoints through, over a real ``StorageContext`` on a local folder."""

    def __init__(self, storage):
        self.storage, self.results, self.loaded_checkpoint = storage, [], None

    def _auto_fill_metrics(self, metrics):
        return {**metrics, "training_iteration": len(self.results) + 1}

    def _report_training_result(self, result):
        import threading

        assert threading.current_thread() is threading.main_thread()  # Tune's rule: the trainable's thread
        self.loaded_checkpoint = result.checkpoint
        self.results.append(result)


def test_in_process_checkpoints_are_written_in_place_off_the_training_thread_and_registered_by_the_next_report(
        monkeypatch, tmp_path):
    """Tune's report must run in the trainable's thread and would copy a checkpoint there, so the session writes
    the files straight into their folder of the trial (numbered as Tune numbers them) in its own thread and
    registers them with the next report; the last report (``done``) writes its own checkpoint in place, a
    superseded or failed checkpoint leaves no folder, and a write that fails surfaces in the training thread."""
    import threading

    import ray.train._internal.session as ray_session
    from ray import tune
    from ray.train._internal.storage import StorageContext
    from ray.train.constants import CHECKPOINT_DIR_NAME

    storage = StorageContext(str(tmp_path), "exp", trial_dir_name="trial")
    storage._create_validation_file()
    trial = tmp_path / "exp" / "trial"
    fake = _TuneFunctionSession(storage)
    monkeypatch.setattr(ray_session, "get_session", lambda: fake)
    plain: list[dict] = []
    monkeypatch.setattr(tune, "report", lambda metrics, checkpoint=None: plain.append(metrics))
    monkeypatch.setattr(tune, "get_checkpoint", lambda: fake.loaded_checkpoint)

    def registered(k):
        result = fake.results[k]
        return ({key: v for key, v in result.metrics.items() if key != "training_iteration"},
                Path(result.checkpoint.path).name, (Path(result.checkpoint.path) / "state").read_text())

    def folders():
        return sorted(p.name for p in trial.iterdir() if p.is_dir())

    release = threading.Event()

    def writer(text, gate=None):
        def write(folder):
            assert threading.current_thread() is not threading.main_thread() or gate == "inline"
            if gate not in (None, "inline"):
                gate.wait(10)
            (Path(folder) / "state").write_text(text)
        return write

    markers: list[str] = []
    session = TuneSession()
    done = session.report({"step": 1}, writer("step 1"), lambda: markers.append("1"), asynchronous=True)
    assert plain == [{"step": 1}] and fake.results == []  # nothing written yet to go with it
    assert done.wait(10)
    assert folders() == ["checkpoint_000000"]  # written in its place: no staging folder, no copy left behind
    session.report({"step": 2})  # the next report registers it, with its own metrics
    assert registered(0) == ({"step": 2, CHECKPOINT_DIR_NAME: "checkpoint_000000"}, "checkpoint_000000", "step 1")
    assert markers == ["1"] and session.metrics == {"step": 1} and len(plain) == 1
    assert session.checkpoint.path == str(trial / "checkpoint_000000")
    (trial / "checkpoint_000001").mkdir()  # left unregistered by an interrupted earlier start: replaced
    (trial / "checkpoint_000001" / "junk").write_text("x")
    slow = session.report({"step": 3}, writer("step 3", gate=release), lambda: markers.append("3"), asynchronous=True)
    session.report({"step": 4})  # step 3 still being written: not waited for
    assert plain[-1] == {"step": 4} and len(fake.results) == 1 and not slow.is_set()
    release.set()
    session.report({"step": 5, "done": 1.0}, writer("step 5", gate="inline"), lambda: markers.append("5"),
                   asynchronous=True)
    # the last report writes its own checkpoint here, in the place of step 3's, which it supersedes: no gap in
    # the numbering (a restored trial counts on it: its next folder must not be a registered checkpoint)
    assert registered(1) == ({"finished": 1.0, "step": 5, CHECKPOINT_DIR_NAME: "checkpoint_000001"},
                             "checkpoint_000001", "step 5")
    assert markers == ["1", "5"] and session.metrics == {"step": 5, "done": 1.0}
    assert folders() == ["checkpoint_000000", "checkpoint_000001"]
    assert sorted(p.name for p in (trial / "checkpoint_000001").iterdir()) == ["state"]
    assert storage.current_checkpoint_index == 1  # as Tune's driver counts the two registered checkpoints

    def broken(folder):
        (Path(folder) / "half").write_text("x")
        raise OSError("disk full")

    failed = TuneSession()
    assert failed.report({"step": 6}, broken, None, asynchronous=True).wait(10)
    with pytest.raises(OSError, match="disk full"):
        failed.report({"step": 7})
    assert folders() == ["checkpoint_000000", "checkpoint_000001"]  # nothing of the failed one, staging included


def test_in_process_checkpoints_on_storage_other_than_a_local_path_are_copied_there_by_the_writer(
        monkeypatch, tmp_path):
    """Storage that is not the local filesystem (S3, GCS, a custom pyarrow filesystem; here a sub-tree one over a
    local folder, which Ray treats as remote): the writer writes a local folder and copies it into place, off the
    training thread; a dropped checkpoint leaves nothing there."""
    import pyarrow.fs
    import ray.train._internal.session as ray_session
    from ray import tune
    from ray.train._internal.storage import StorageContext

    bucket = tmp_path / "bucket"
    bucket.mkdir()
    storage = StorageContext("/", "exp", storage_filesystem=pyarrow.fs.SubTreeFileSystem(
        str(bucket), pyarrow.fs.LocalFileSystem()), trial_dir_name="trial")
    storage._create_validation_file()
    fake = _TuneFunctionSession(storage)
    monkeypatch.setattr(ray_session, "get_session", lambda: fake)
    monkeypatch.setattr(tune, "report", lambda metrics, checkpoint=None: None)
    monkeypatch.setattr(tune, "get_checkpoint", lambda: fake.loaded_checkpoint)

    def write(folder):
        (Path(folder) / "state").write_text(f"written in {Path(folder).name}")

    session = TuneSession()
    assert session.report({"step": 1}, write, None, asynchronous=True).wait(10)
    session.report({"step": 2})
    trial = bucket / "exp" / "trial"
    assert [p.name for p in trial.iterdir()] == ["checkpoint_000000"]
    assert (trial / "checkpoint_000000" / "state").read_text().startswith("written in yxanul-ckpt-")  # a local copy
    assert fake.results[0].checkpoint.path == "/exp/trial/checkpoint_000000"
    (trial / "checkpoint_000001").mkdir()  # left unregistered by an interrupted earlier start: replaced
    (trial / "checkpoint_000001" / "junk").write_text("x")
    session.report({"step": 3}, write, None, asynchronous=True).wait(10)
    assert [p.name for p in (trial / "checkpoint_000001").iterdir()] == ["state"]
    session.close()  # the run ended before the next report: the unregistered copy goes
    assert [p.name for p in trial.iterdir()] == ["checkpoint_000000"]
