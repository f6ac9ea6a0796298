"""Stopping a job cleanly: SIGINT (Ctrl-C) or SIGTERM (``kill``, ``timeout``) ends ``jobs.sweep`` or ``jobs.train``
with one line, ``interrupted at 4.19M tokens in trial t04; the same command resumes``, and exit code 130 (SIGINT)
or 143 (SIGTERM); the same command then continues from the latest checkpoint.

    with Console(log), signals_handled():    # a job's main; ensure_ray() puts the handlers back after ray.init
        run_sweep(spec)                      # raises Interrupted(signum, message) after a signal

Why the job handles SIGTERM itself: a Ray driver left with the default action dies inside Ray's C++ failure
handler, which prints ~100 lines of stack dump and says nothing about resuming (GOTCHAS). ``ray.init`` installs
that handler, so :func:`reinstall` runs after it (:func:`yxanul.ray_session.ensure_ray`).

How the stop reaches the work:

- a sweep: Ray Tune stops gracefully on SIGUSR1 (it saves the experiment state and stops the trials), so while
  Tune runs (:func:`forwarding`) the first signal is handed to Tune as SIGUSR1; the sweep then records the
  interruption and raises :class:`Interrupted`. Tune's own SIGINT handler is turned off
  (``TUNE_DISABLE_SIGINT_HANDLER``), so SIGINT and SIGTERM take the same path;
- a training run: :func:`yxanul.train.launch.train` waits for ``TorchTrainer.fit()`` in a helper thread (Ray
  Train then leaves SIGINT alone), so the signal raises :class:`Interrupted` in the main thread at once; the
  job then shuts Ray down (:func:`stop_ray`), which ends the workers.

A second signal raises :class:`Interrupted` wherever the job is. What a run or sweep was interrupted at is
recorded on its MLflow run (:func:`record_interruption`, :func:`record_resume`).
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from yxanul.formatting import human_count, timestamp
from yxanul.tags import (
    INTERRUPTIONS_TAG,
    LAST_INTERRUPTION_TAG,
    LAST_RESTART_TAG,
    LAST_RESUME_TAG,
    RESTARTS_TAG,
    RESUMES_TAG,
)

__all__ = ["HANDLED", "Interrupted", "active", "checkpoint_tokens", "forwarding", "latest_checkpoint_tokens", "received",
           "record_interruption", "record_restart", "record_resume", "reinstall", "resume_point", "signals_handled",
           "stop_ray"]

HANDLED = (signal.SIGINT, signal.SIGTERM)


class Interrupted(KeyboardInterrupt):
    """A job stopped by a signal. ``message`` is the one line the job prints; the exit code is 128 + signal."""

    def __init__(self, signum: int, message: str = "") -> None:
        self.signum = signum
        self.message = message or "interrupted; the same command resumes"
        super().__init__(self.message)

    @property
    def exit_code(self) -> int:
        return 128 + self.signum


class _State:
    installed = False
    received: int | None = None
    forward: int | None = None


def _handler(signum: int, frame: Any) -> None:
    first = _State.received is None
    if first:
        _State.received = signum
    target = _State.forward
    # Hand the first signal to the library's graceful stop, if its handler is in place (SIGUSR1's default
    # action would end the process).
    if first and target is not None and callable(signal.getsignal(target)):
        os.kill(os.getpid(), target)
        return
    raise Interrupted(_State.received or signum)


def received() -> int | None:
    """The signal that interrupted the job (None: none so far)."""
    return _State.received


@contextlib.contextmanager
def signals_handled() -> Iterator[None]:
    """Handle SIGINT and SIGTERM in this block (main thread only); afterwards the previous handlers return."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {sig: signal.getsignal(sig) for sig in HANDLED}
    _State.installed, _State.received, _State.forward = True, None, None
    reinstall()
    try:
        yield
    except BaseException:
        # Inside the job's console (entered before this block): Ray's last words (the log monitor's late lines,
        # a stopping cluster's) go to its log, not under the job's one error line.
        stop_ray()
        raise
    finally:
        _State.installed, _State.forward = False, None
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def reinstall() -> None:
    """Put the handlers back (after ``ray.init``, which installs Ray's C++ failure handler for SIGTERM)."""
    if _State.installed and threading.current_thread() is threading.main_thread():
        for sig in HANDLED:
            signal.signal(sig, _handler)


def active() -> bool:
    """Whether a job handles the signals (:func:`signals_handled`)."""
    return _State.installed


@contextlib.contextmanager
def forwarding(target: int) -> Iterator[None]:
    """While the block runs, the first signal is sent to this process as ``target`` instead (Ray Tune: SIGUSR1)."""
    _State.forward = target
    try:
        yield
    finally:
        _State.forward = None


def stop_ray() -> None:
    """Shut down the Ray this job connected to (:func:`yxanul.ray_session.ensure_ray`): a local Ray stops with its
    workers; a cluster's (``$RAY_ADDRESS``) ends this job's actors, the training workers among them. A Ray that a
    caller initialised before (a test session's) is left alone. Called inside the job's console, so Ray's last
    words go to the log file, not the terminal."""
    import sys

    from yxanul.ray_session import connected_here

    if "ray" in sys.modules and connected_here():
        import ray

        if ray.is_initialized():
            ray.shutdown()


# ---------------------------------------------------------------------------------------------------
# Where a run resumes, and the record of it


def latest_checkpoint_tokens(run_dir: str) -> int | None:
    """Training tokens of the latest complete checkpoint in a Ray Train run folder (``state.json`` is written
    last), or None (none yet, or a URI storage: not read here)."""
    folder = Path(run_dir)
    found = [checkpoint_tokens(str(state.parent)) for state in folder.glob("checkpoint_*/state.json")]
    return max((t for t in found if t is not None), default=None)


def checkpoint_tokens(checkpoint_dir: str) -> int | None:
    """Training tokens of one complete checkpoint folder (its ``state.json``), or None (incomplete, unreadable, a
    URI)."""
    try:
        return int(json.loads((Path(checkpoint_dir) / "state.json").read_text())["tokens"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


def resume_point(run_dir: str, what: str) -> str:
    """``at 4.19M tokens in trial t04``, or ``in trial t04 before its first checkpoint``."""
    tokens = latest_checkpoint_tokens(run_dir)
    return f"at {human_count(tokens)} tokens in {what}" if tokens else f"in {what} before its first checkpoint"


def record_interruption(uri: str, run_id: str, what: str) -> None:
    """Count an interruption on an MLflow run: :data:`INTERRUPTIONS_TAG` + 1, and the last one's time, signal
    and place in :data:`LAST_INTERRUPTION_TAG`."""
    signame = signal.Signals(_State.received).name if _State.received else "interrupt"
    _count_on_run(uri, run_id, INTERRUPTIONS_TAG, LAST_INTERRUPTION_TAG, f"{timestamp(time.time())} {signame} {what}")


def record_resume(uri: str, run_id: str) -> None:
    """Count a resume on an MLflow run: :data:`RESUMES_TAG` + 1, and its time in :data:`LAST_RESUME_TAG`."""
    _count_on_run(uri, run_id, RESUMES_TAG, LAST_RESUME_TAG, timestamp(time.time()))


def record_restart(uri: str, run_id: str, what: str, at: float | None = None) -> None:
    """Count a sweep's restart of a failed trial on its MLflow run: :data:`RESTARTS_TAG` + 1, and the last one's
    time (``at``, ``time.time()``; now by default), place and cause in :data:`LAST_RESTART_TAG`."""
    _count_on_run(uri, run_id, RESTARTS_TAG, LAST_RESTART_TAG, f"{timestamp(time.time() if at is None else at)} {what}")


def _count_on_run(uri: str, run_id: str, count_tag: str, last_tag: str, last: str) -> None:
    """``count_tag`` + 1 on the run (0 where it has none) and ``last_tag`` = ``last``."""
    from yxanul.tracking import client

    mlflow = client(uri)
    count = int(mlflow.get_run(run_id).data.tags.get(count_tag) or 0) + 1
    mlflow.set_tag(run_id, count_tag, str(count))
    mlflow.set_tag(run_id, last_tag, last)
