"""Where the training loop runs: the one interface between :mod:`yxanul.train.loop` and Ray.

The loop asks its session who it is (rank, world size), which device it trains on, which checkpoint it resumes
from, and hands it its reports; nothing else in the loop names Ray. Two sessions:

- :class:`RayTrainSession`: a Ray Train worker of a ``TorchTrainer`` (``jobs.train``, multi-worker trials, and
  sweeps with ``sweep.in_process: false``). Checkpoints may be written in Ray Train's upload thread.
- :class:`TuneSession`: a one-worker sweep trial run inside the Ray Tune trial's own process (``sweep.in_process:
  auto``): no Train controller or worker processes to start per trial, so the trial process's imports, CUDA
  context and MLflow client outlive the trial (docs/sweeps.md). Reports go to Tune, checkpoints to Tune's trial
  folder, written in a thread of the session and registered by the next report (Tune's ``report`` has no
  asynchronous upload of its own).
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
class _Pending:
    """A checkpoint being written off the training thread, reported to Tune once written."""
    directory: Path
    metrics: dict[str, Any]
    stored: Callable[[], None] | None
    done: threading.Event = field(default_factory=threading.Event)
    """Set once the writer has finished, with or without ``error``."""
    error: BaseException | None = None


class TuneSession:
    """The one worker of a run that executes inside a Ray Tune function trainable's own process and thread: Tune's
    ``report`` / ``get_checkpoint`` instead of Ray Train's. Remembers what a ``TorchTrainer``'s result would hold:
    the metrics of the last report with a checkpoint, and that checkpoint.

    Asynchronous checkpoints (``checkpoint.asynchronous``): Tune's ``report`` copies a checkpoint into the trial
    folder in the calling thread and must be called from the trainable's thread, so the files are written in a
    thread of this session and the checkpoint is handed to Tune by the next report once they are complete: a
    checkpoint is registered one report late (Ray Train's asynchronous uploads register it late too), with the
    metrics of that report, its contents its own step's. The last report (``done``) writes its own checkpoint in
    this thread (a pending one, superseded, is dropped) or, without one, waits for the pending files and registers
    them, so a finished trial ends on its final checkpoint. A checkpoint still being written when the run stops is
    dropped (:meth:`close`); the resume takes the one before."""

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
            self.close()  # superseded by this checkpoint, written here and now
            # Tune persists the checkpoint into the trial folder before report returns; get_checkpoint() is then it.
            _report_written(lambda checkpoint: tune.report(for_tune(metrics), checkpoint=checkpoint), tune.Checkpoint,
                            write, stored)
            self.metrics, self.checkpoint = dict(metrics), tune.get_checkpoint()
            return None
        # A written checkpoint goes with this report; the last report waits for one still being written.
        ready = self._written(wait=final or write is not None)
        started = self._start(metrics, write, stored) if write is not None else None
        try:
            tune.report(for_tune(metrics), checkpoint=None if ready is None else tune.Checkpoint.from_directory(
                str(ready.directory)))
        finally:
            if ready is not None:
                shutil.rmtree(ready.directory, ignore_errors=True)  # Tune copied it into the trial folder
        if ready is not None:
            self.metrics, self.checkpoint = ready.metrics, tune.get_checkpoint()
            if ready.stored is not None:
                ready.stored()
        return started

    def _start(self, metrics: dict[str, Any], write: Write, stored: Callable[[], None] | None) -> threading.Event:
        pending = self._pending = _Pending(Path(tempfile.mkdtemp(prefix="yxanul-ckpt-")), dict(metrics), stored)

        def run() -> None:
            try:
                write(str(pending.directory))
            except BaseException as exc:  # handed to the training thread by the next report
                pending.error = exc
            finally:
                pending.done.set()

        threading.Thread(target=run, name="yxanul-checkpoint-writer", daemon=True).start()
        return pending.done

    def _written(self, wait: bool) -> _Pending | None:
        """The pending checkpoint once its files are complete (waiting for them if ``wait``), else None; a failure
        to write it is raised here, in the training thread."""
        pending = self._pending
        if pending is None or not (wait or pending.done.is_set()):
            return None
        pending.done.wait()
        self._pending = None
        if pending.error is not None:
            shutil.rmtree(pending.directory, ignore_errors=True)
            raise pending.error
        return pending

    def close(self) -> None:
        """Drop a checkpoint not yet reported (the run ended without another report): waits for its writer and
        removes its files. Called by the run's end, whatever way it ends."""
        pending, self._pending = self._pending, None
        if pending is not None:
            pending.done.wait()
            shutil.rmtree(pending.directory, ignore_errors=True)
