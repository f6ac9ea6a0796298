"""Errors a user can act on.

Every job catches :class:`YxanulError` at its entry point and prints ``error: <message>`` as one
line, without a traceback, then exits with the error's ``exit_code`` (2: something the user can change).
Messages name the file, the key, the value and the fix. Anything else that escapes is a bug and keeps its
traceback; a bug inside a training worker is one line too (:class:`WorkerFailedError`, exit code 1, the
traceback in the job's log), because the user must see which exception it was, not Ray's log lines.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass


class YxanulError(Exception):
    """Base class: a problem with the user's input, config or environment."""

    exit_code = 2
    """What a job exits with when this error ends it (yxanul.cli.run_job)."""


class ConfigError(YxanulError):
    """A config file, key or value is wrong."""


class DataError(YxanulError):
    """Input data is missing, unreadable or malformed."""


class PrecisionError(YxanulError):
    """The requested precision cannot run here (no CUDA, card too old, Transformer Engine missing)."""


class TrackingError(YxanulError):
    """The MLflow tracking server or store cannot be used."""


class CheckpointError(YxanulError):
    """A checkpoint is incomplete, corrupt, or holds something other than data (e.g. a crafted pickle)."""


class WorkerDiedError(YxanulError):
    """A training worker process died (killed, out of memory, its node lost) and no restart was left."""


class DeviceMemoryError(YxanulError):
    """The GPU ran out of memory; the message names the micro-batch, the precision, the memory and the fix."""


class WorkerFailedError(YxanulError):
    """A training worker raised an exception that is not a user error (a bug, a library or driver failure): one
    line with its type and message; the full traceback is in the job's log."""

    exit_code = 1


_ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")
_RAY_PREFIX = re.compile(r"^\([^()]*\bpid=\d+[^()]*\)\s*")
_RAY_REPEATED = re.compile(r"\s*\[repeated \d+x across cluster\]\s*$")
_MARKERS = re.compile(r"^[\s^~]*$")


def clean_line(line: str) -> str:
    """``line`` as a person reads it: no ANSI colour codes, no Ray log prefix (``(TrainController pid=16130)``) or
    ``[repeated 2x across cluster]`` suffix; "" for a line of traceback markers only (``^^^^^^^^``)."""
    line = _RAY_REPEATED.sub("", _RAY_PREFIX.sub("", _ANSI.sub("", line).strip()))
    return "" if _MARKERS.match(line) else line.strip()


def first_line(exc: BaseException | str, limit: int = 2000) -> str:
    """The first line of an error message that says something (:func:`clean_line`), at most ``limit``
    characters; the exception's type name when its message is empty (for one-line ``error: ...`` output and
    MLflow tags)."""
    text = exc if isinstance(exc, str) else str(exc)
    for line in text.splitlines():
        cleaned = clean_line(line)
        if cleaned:
            return cleaned[:limit]
    return "" if isinstance(exc, str) else type(exc).__name__


def _wrapped(err: BaseException) -> list[BaseException | None]:
    """The errors ``err`` wraps, innermost-meaningful first: Ray Train's ``worker_failures`` (rank order), the user
    exception inside its ``UserExceptionWithTraceback`` (``_base_exc``), a ``ControllerError``'s
    ``controller_failure``, Ray's ``cause``, Python's ``__cause__`` and ``__context__``."""
    failures = list((getattr(err, "worker_failures", None) or {}).values())
    return [*failures, getattr(err, "_base_exc", None), getattr(err, "controller_failure", None),
            getattr(err, "cause", None), err.__cause__, err.__context__]


def error_chain(exc: BaseException) -> Iterator[BaseException]:
    """``exc`` and every error behind it (:func:`_wrapped`), each once, depth first."""
    seen: set[int] = set()
    stack: list[BaseException | None] = [exc]
    while stack:
        err = stack.pop()
        if err is None or id(err) in seen:
            continue
        seen.add(id(err))
        yield err
        stack += list(reversed(_wrapped(err)))


def user_error(exc: BaseException) -> YxanulError | None:
    """The first :class:`YxanulError` behind ``exc`` (raised in a Ray task, actor or Train worker), or None.

    Ray re-raises a task's error as a class deriving from both ``RayTaskError`` and the original class,
    with the remote traceback in its message: that wrapper is skipped for the original behind it."""
    try:
        from ray.exceptions import RayError
    except ImportError:  # no Ray here: nothing wraps
        RayError = ()  # type: ignore[assignment]  # noqa: N806
    for err in error_chain(exc):
        if isinstance(err, YxanulError) and not isinstance(err, RayError):
            return err
    return None


def root_cause(exc: BaseException) -> BaseException:
    """The innermost explicit cause of ``exc`` (Ray's ``cause``, else ``__cause__``)."""
    seen = set()
    while id(exc) not in seen:
        seen.add(id(exc))
        nxt = getattr(exc, "cause", None) or exc.__cause__
        if nxt is None:
            break
        exc = nxt
    return exc


@dataclass(frozen=True)
class WorkerDeath:
    """A training worker process that died (of itself: a crash, out of memory, its node lost), as Ray reports it;
    ``str()`` is its one line: ``training worker rank 1 (pid 31363, node 10.0.0.7) died: <why>``."""

    rank: int
    pid: int | None
    node: str | None
    why: str

    def __str__(self) -> str:
        where = ", ".join(filter(None, (f"pid {self.pid}" if self.pid is not None else "",
                                        f"node {self.node}" if self.node else "")))
        return f"training worker rank {self.rank}{f' ({where})' if where else ''} died: {self.why}"


def worker_death(exc: BaseException) -> WorkerDeath | None:
    """The worker whose process died when a Ray Train failure comes from one, else None. Ray Train 2.60 reports it
    as a failed health check of that rank, next to the other ranks' errors (gloo's "Connection reset by peer"),
    which say nothing of the cause."""
    for err in error_chain(exc):
        for rank, failure in (getattr(err, "worker_failures", None) or {}).items():
            health = getattr(failure, "health_check_failure", None)
            died = health is not None or type(failure).__name__ in ("ActorDiedError", "ActorUnavailableError",
                                                                   "WorkerCrashedError", "NodeDiedError")
            if not died:
                continue
            text = str(getattr(failure, "_message", "")) or str(failure)
            pid = re.search(r"\bpid=(\d+)", text)
            node = re.search(r"\bnode_ip='([^']+)'", text)
            return WorkerDeath(int(rank), int(pid.group(1)) if pid else None, node.group(1) if node else None,
                               first_line(health if health is not None else failure, 300))
    return None


DIED_OF_ITSELF = ("WORKER_DIED", "OUT_OF_MEMORY", "NODE_DIED")
"""Ray's reasons for an actor's death that are the worker's own end (killed, out of memory, its node lost), not
Ray Train stopping the worker group after a failure (``RAY_KILL``)."""


PEER_LOST = ("reset by peer", "closed by peer", "Broken pipe", "communicator was aborted", "remote process exited")
"""What a collective (gloo, NCCL) says when another rank's process is gone."""


def lost_peer(exc: BaseException) -> bool:
    """Whether a Ray Train failure is a rank's collective that lost a peer (gloo's "Connection reset by peer", NCCL's
    "remote process exited"): the failure of a rank that survived another's death."""
    return any(p in str(err) for err in error_chain(exc) for p in PEER_LOST)  # the chain holds the workers' errors


def dead_rank(marker_dir: str | None, wait_s: float = 3.0) -> WorkerDeath | None:
    """A rank of this run whose process Ray records as dead of itself, found by the pid each rank wrote in its
    marker (:func:`yxanul.fatal.worker_markers`); else None (no markers, none died within ``wait_s`` seconds, or
    Ray's state API did not answer).

    Ray Train 2.60 names a dead worker only when its health check fails before another rank's error reaches the
    controller: when a peer's collective fails first (gloo's "Connection reset by peer"), the failure holds only
    that error, and :func:`worker_death` finds nothing. Ray's actor table still says which process died and why
    (a death is recorded within moments: ``wait_s`` allows for it)."""
    import time

    from yxanul.fatal import worker_markers

    ranks = {rank: marker["pid"] for rank, marker in worker_markers(marker_dir).items() if "pid" in marker}
    if not ranks:
        return None
    try:
        import ray
        from ray.util.state import list_actors

        # This job's Ray, named: without an address the state API may find another cluster on the machine.
        address = ray.get_runtime_context().gcs_address if ray.is_initialized() else None
        deadline = time.monotonic() + wait_s
        while True:
            for rank, pid in ranks.items():
                for actor in list_actors(address=address, filters=[("pid", "=", int(pid)), ("state", "=", "DEAD")],
                                         detail=True, raise_on_missing_output=False, timeout=10):
                    context = (actor.death_cause or {}).get("actor_died_error_context") or {}
                    if context.get("reason") in DIED_OF_ITSELF:
                        return WorkerDeath(rank, int(pid), context.get("node_ip_address"),
                                           first_line(str(context.get("error_message") or context["reason"]), 300))
            if time.monotonic() >= deadline:
                return None
            time.sleep(0.5)
    except Exception:  # noqa: BLE001 - no state API (no dashboard): the failure's own line
        return None


def _is_wrapper(err: BaseException) -> bool:
    """Ray's and Ray Train's own exceptions, which carry a user's error rather than being one."""
    module = type(err).__module__
    return module.startswith("ray.") or type(err).__name__.startswith("RayTaskError")


def worker_failure(exc: BaseException) -> str:
    """One line for a Ray Train failure whose cause is not a user error: the rank and the real exception's type and
    message (``training worker rank 0 failed: RuntimeError: CUDA error: an illegal memory access``), never Ray's
    wrapper text, a traceback line, caret markers or colour codes. Falls back to the first meaningful line of the
    failure itself when no worker exception is inside it (e.g. a controller error)."""
    for err in error_chain(exc):
        for rank, failure in (getattr(err, "worker_failures", None) or {}).items():
            original = next((e for e in error_chain(failure) if not _is_wrapper(e)), None)
            if original is not None:
                return f"training worker rank {rank} failed: {type(original).__name__}: {first_line(original, 500)}"
    original = next((e for e in error_chain(exc) if not _is_wrapper(e)), None)
    if original is not None:
        return f"training failed: {type(original).__name__}: {first_line(original, 500)}"
    return f"training failed: {first_line(exc, 500)}"
