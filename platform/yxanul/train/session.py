"""Where the training loop runs: the one interface between :mod:`yxanul.train.loop` and Ray.

The loop asks its session who it is (rank, world size), which device it trains on, which checkpoint it resumes
from, and hands it its reports; nothing else in the loop names Ray. Two sessions:

- :class:`RayTrainSession`: a Ray Train worker of a ``TorchTrainer`` (``jobs.train``, multi-worker trials, and
  sweeps with ``sweep.in_process: false``). Checkpoints may be written in Ray Train's upload thread.
- :class:`TuneSession`: a one-worker sweep trial run inside the Ray Tune trial's own process (``sweep.in_process:
  auto``): no Train controller or worker processes to start per trial, so the trial process's imports, CUDA
  context and MLflow client outlive the trial (docs/sweeps.md). Reports go to Tune, checkpoints straight into
  Tune's trial folder, written in a thread of the session and registered by the next report (Tune's ``report``
  has no asynchronous upload of its own, and copies a checkpoint in the calling thread).
"""

from __future__ import annotations

import functools
import shutil
import tempfile
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import torch

__all__ = ["RayTrainSession", "Session", "TuneSession", "for_tune"]

Write = Callable[[str], None]
"""Puts a checkpoint's files into the (empty) folder it is given."""


class Session(Protocol):
    rank: int
    """This worker's rank (0 in process)."""
    world: int
    """Workers of the run (1 in process)."""
    uploads_async: bool
    """Whether :meth:`report` can write a checkpoint off the training thread (``asynchronous=True``)."""
    kind: str
    """How the run executes, for the run's tags: ``ray_train`` or ``in_process``."""

    def device(self) -> torch.device:
        """The GPU this worker was given (called only when it trains on one)."""

    def latest_checkpoint(self) -> Any:
        """The checkpoint to resume from (a ``ray.train.Checkpoint``), or None for a fresh start."""

    def report(self, metrics: dict[str, Any], write: Write | None = None, stored: Callable[[], None] | None = None,
               asynchronous: bool = False) -> threading.Event | None:
        """Report ``metrics``, with a checkpoint whose files ``write`` produces when given; ``stored()`` once it is
        on the run's storage. Asynchronous (only where :attr:`uploads_async`): returns an event set once the
        checkpoint is written, and training goes on meanwhile; otherwise returns None after it is stored."""

    def close(self) -> None:
        """The run has ended (whatever way): nothing of it may stay in flight in this process."""


def _report_written(report: Callable[[Any], None], checkpoint_cls: Any, write: Write,
                    stored: Callable[[], None] | None) -> None:
    """The synchronous checkpoint: written into a temporary folder, reported (Ray copies it to storage), removed."""
    directory = Path(tempfile.mkdtemp(prefix="yxanul-ckpt-"))
    try:
        write(str(directory))
        report(checkpoint_cls.from_directory(str(directory)))
    finally:
        shutil.rmtree(directory, ignore_errors=True)
    if stored is not None:
        stored()


class RayTrainSession:
    """A Ray Train worker (``train_loop_per_worker`` inside a ``TorchTrainer``)."""

    kind = "ray_train"

    def __init__(self) -> None:
        import ray.train
        from ray.train.v2.api.context import DistributedTrainContext

        ctx = ray.train.get_context()
        self.rank, self.world = ctx.get_world_rank(), ctx.get_world_size()
        # Ray Train's local mode (num_workers=0) takes reports but never persists or uploads a checkpoint.
        self.uploads_async = isinstance(ctx, DistributedTrainContext)

    def close(self) -> None:
        """Nothing to do: Ray Train waits for a worker's uploads before its run ends, and the process ends with it."""

    def device(self) -> torch.device:
        import ray.train.torch

        return ray.train.torch.get_device()

    def latest_checkpoint(self) -> Any:
        import ray.train

        return ray.train.get_checkpoint()

    def report(self, metrics: dict[str, Any], write: Write | None = None, stored: Callable[[], None] | None = None,
               asynchronous: bool = False) -> threading.Event | None:
        import ray.train

        if write is None:
            ray.train.report(metrics)
            return None
        if not asynchronous:
            _report_written(lambda checkpoint: ray.train.report(metrics, checkpoint=checkpoint), ray.train.Checkpoint,
                            write, stored)
            return None
        done = threading.Event()
        directory = tempfile.mkdtemp(prefix="yxanul-ckpt-")
        # Ray's upload thread writes the checkpoint into the (empty) local folder, copies it to storage the way a
        # synchronous report does, and deletes the local folder; training goes on meanwhile.
        ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(directory),
                         checkpoint_upload_mode=ray.train.CheckpointUploadMode.ASYNC,
                         checkpoint_upload_fn=functools.partial(_write_and_persist, write, stored, done),
                         delete_local_checkpoint_after_upload=True)
        return done


def _write_and_persist(write: Write, stored: Callable[[], None] | None, done: threading.Event, local: Any,
                       dir_name: str) -> Any:
    """Ray Train's ``checkpoint_upload_fn`` (its upload thread): write the checkpoint into the local folder, then
    copy it to the run's storage as Ray's own synchronous upload does (``persist_current_checkpoint``, which also
    checks that the storage is reachable from this node), then ``stored()`` (the worker marker). Ray hands the report
    to its controller after this returns, once the previous report was taken (a queue of one): so when the marker
    says checkpoint k, checkpoint k - 2 is registered, as it is with synchronous reports."""
    import ray.train

    try:
        write(local.path)
        checkpoint = ray.train.get_context().get_storage().persist_current_checkpoint(local, dir_name)
        if stored is not None:
            stored()
        return checkpoint
    finally:
        done.set()  # the training thread may take the next snapshot (a failure reaches it through Ray)


def for_tune(metrics: dict[str, Any]) -> dict[str, Any]:
    """A training report as a Tune result. The loop reports ``done`` (1.0 at the last step); in Tune, ``done`` is
    the reserved key that ends a trial, so a true value would stop the trial before the run is finished and its
    MLflow run ended. It is forwarded as ``finished`` instead."""
    return {("finished" if k == "done" else k): v for k, v in metrics.items()}


@dataclass
class _Place:
    """Where one checkpoint of an in-process trial goes: its folder in Tune's trial folder (``checkpoint_000003``)
    on the trial's storage filesystem, reserved in Tune's numbering before its files are written."""
    filesystem: Any
    path: str
    name: str

    @property
    def _local(self) -> bool:
        import pyarrow.fs

        return isinstance(self.filesystem, pyarrow.fs.LocalFileSystem)

    @property
    def _staging(self) -> Path:
        """On local storage, the hidden sibling folder the files are written into before the rename."""
        return Path(self.path).with_name(f".{self.name}.writing")

    def fill(self, write: Write) -> None:
        """Write the checkpoint into its place (any thread), replacing what an interrupted earlier start left there
        unregistered. On local storage the files are written into a hidden sibling folder renamed into place once
        complete, so nothing is copied and a folder named ``checkpoint_*`` is always whole; elsewhere (S3, GCS, a
        custom pyarrow filesystem) into a local folder, then copied there."""
        self.discard()
        if self._local:
            self._staging.mkdir(parents=True)
            write(str(self._staging))
            self._staging.rename(self.path)
            return
        from ray.train._internal.storage import _pyarrow_fs_copy_files

        local = Path(tempfile.mkdtemp(prefix="yxanul-ckpt-"))
        try:
            write(str(local))
            self.filesystem.create_dir(self.path)
            _pyarrow_fs_copy_files(str(local), self.path, destination_filesystem=self.filesystem)
        finally:
            shutil.rmtree(local, ignore_errors=True)

    def discard(self) -> None:
        """Remove whatever was written of a checkpoint that will not be registered."""
        if self._local:
            shutil.rmtree(self._staging, ignore_errors=True)
            shutil.rmtree(self.path, ignore_errors=True)
            return
        try:
            self.filesystem.delete_dir(self.path)
        except OSError:
            pass  # nothing there


@dataclass
class _Pending:
    """A checkpoint being written into its place off the training thread, registered with Tune once written."""
    place: _Place
    metrics: dict[str, Any]
    stored: Callable[[], None] | None
    done: threading.Event = field(default_factory=threading.Event)
    """Set once the writer has finished, with or without ``error``."""
    error: BaseException | None = None


class TuneSession:
    """The one worker of a run that executes inside a Ray Tune function trainable's own process and thread: Tune's
    report and checkpoints instead of Ray Train's. Remembers what a ``TorchTrainer``'s result would hold: the
    metrics of the last report with a checkpoint, and that checkpoint.

    Checkpoints are written straight into their folder in Tune's trial folder and then registered with Tune, the
    way Ray's own ``DataParallelTrainer`` registers checkpoints its workers persisted (``_report_training_result``
    with a checkpoint already on storage). Tune's public ``report(checkpoint=...)`` would instead copy a finished
    folder there, in the calling thread, which must be the trainable's: 1.6 GB of weights and AdamW state for the
    science model, most of a trial's checkpoint time on an H100 (docs/benchmarks.md). Asynchronous checkpoints
    (``checkpoint.asynchronous``) are written in a thread of this session and registered by the next report once
    complete: one report late (Ray Train's asynchronous uploads register late too), with the metrics of that
    report, its contents its own step's. The last report (``done``) writes its own checkpoint in this thread, in
    the place of a pending one it supersedes (dropped), or, without one, waits for the pending one and registers
    it, so a finished trial ends on its final checkpoint. A checkpoint still being written when the run stops is
    dropped with its files (:meth:`close`); the resume takes the one before. The folders are numbered without a
    gap before a registered one, as Tune numbers them, so a restored trial's next folder is never a registered
    checkpoint: a folder found there was left by an interrupted start and is replaced."""

    kind = "in_process"
    rank, world, uploads_async = 0, 1, True

    def __init__(self) -> None:
        self.metrics: dict[str, Any] = {}
        """The metrics of the step whose checkpoint was reported last (a ``TorchTrainer`` result's ``metrics``)."""
        self.checkpoint: Any = None
        """That checkpoint, persisted in Tune's trial folder."""
        self._pending: _Pending | None = None

    def device(self) -> torch.device:
        """The GPU Ray gave the trial (``ray.train.torch.get_device`` refuses to run outside a Train worker): its id's
        place in ``CUDA_VISIBLE_DEVICES``, which Ray narrows to the trial's GPU unless told not to."""
        import os

        import ray

        gpu = str(ray.get_gpu_ids()[0])
        visible = os.environ.get("CUDA_VISIBLE_DEVICES", "").split(",")
        return torch.device("cuda", visible.index(gpu) if gpu in visible else int(gpu))

    def latest_checkpoint(self) -> Any:
        from ray import tune

        return tune.get_checkpoint()

    def report(self, metrics: dict[str, Any], write: Write | None = None, stored: Callable[[], None] | None = None,
               asynchronous: bool = False) -> threading.Event | None:
        from ray import tune

        final = float(metrics.get("done", 0.0)) >= 1.0
        if write is not None and (final or not asynchronous):
            # Written here and now, in the place of a pending checkpoint it supersedes (dropped with its files).
            self._start(metrics, write, stored, threaded=False, place=self._drop())
            self._register(self._written(wait=True), metrics)
            return None
        # A written checkpoint goes with this report; a new one (at most one in flight) or the last report waits for
        # one still being written.
        ready = self._written(wait=final or write is not None)
        started = self._start(metrics, write, stored, threaded=True) if write is not None else None
        if ready is None:
            tune.report(for_tune(metrics))
        else:
            self._register(ready, metrics)
        return started

    def _start(self, metrics: dict[str, Any], write: Write, stored: Callable[[], None] | None, threaded: bool,
               place: _Place | None = None) -> threading.Event:
        """Write the checkpoint into ``place`` or, without one, the next place in Tune's numbering (reserved in this,
        the trainable's thread), in a writer thread or here."""
        if place is None:
            from ray.train._internal.session import get_session

            storage = get_session().storage
            storage._check_validation_file()  # as Tune's own persist: a local storage path must be this node's
            storage._update_checkpoint_index(metrics)
            place = _Place(storage.storage_filesystem, storage.checkpoint_fs_path, storage.checkpoint_dir_name)
        pending = self._pending = _Pending(place, dict(metrics), stored)

        def run() -> None:
            try:
                place.fill(write)
            except BaseException as exc:  # handed to the training thread by the next report
                pending.error = exc
            finally:
                pending.done.set()

        if threaded:
            threading.Thread(target=run, name="yxanul-checkpoint-writer", daemon=True).start()
        else:
            run()
        return pending.done

    def _register(self, ready: _Pending, metrics: dict[str, Any]) -> None:
        """Report ``metrics`` to Tune with the written checkpoint ``ready``: what Tune's ``report`` does once it
        has copied a checkpoint (auto-filled metrics, the checkpoint's folder name, the trial's artifacts synced,
        the result handed to Tune, which may end the trial here), its files already in place."""
        from ray import tune
        from ray.train._internal.session import _TrainingResult, get_session
        from ray.train.constants import CHECKPOINT_DIR_NAME

        session = get_session()
        result = session._auto_fill_metrics(for_tune(metrics))
        result[CHECKPOINT_DIR_NAME] = ready.place.name
        session.storage.persist_artifacts(force=session.storage.sync_config.sync_artifacts_on_checkpoint)
        checkpoint = tune.Checkpoint(filesystem=ready.place.filesystem, path=ready.place.path)
        session._report_training_result(_TrainingResult(checkpoint=checkpoint, metrics=result))
        self.metrics, self.checkpoint = ready.metrics, tune.get_checkpoint()
        if ready.stored is not None:
            ready.stored()

    def _written(self, wait: bool) -> _Pending | None:
        """The pending checkpoint once its files are complete (waiting for them if ``wait``), else None; a failure
        to write it is raised here, in the training thread."""
        pending = self._pending
        if pending is None or not (wait or pending.done.is_set()):
            return None
        pending.done.wait()
        self._pending = None
        if pending.error is not None:
            pending.place.discard()
            raise pending.error
        return pending

    def _drop(self) -> _Place | None:
        """Drop the checkpoint not yet registered, if any: wait for its writer, remove its files, return its place."""
        pending, self._pending = self._pending, None
        if pending is None:
            return None
        pending.done.wait()
        pending.place.discard()
        return pending.place

    def close(self) -> None:
        """The run has ended, whatever way: a checkpoint not yet registered is dropped with its files."""
        self._drop()
