"""Errors a user can act on.

Every job catches :class:`YxanulError` at its entry point and prints ``error: <message>`` as one
line, without a traceback, then exits non-zero. Messages name the file, the key, the value and the
fix. Anything else that escapes is a bug and keeps its traceback.
"""

from __future__ import annotations

from collections.abc import Iterator


class YxanulError(Exception):
    """Base class: a problem with the user's input, config or environment."""


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


def first_line(exc: BaseException | str, limit: int = 2000) -> str:
    """The first non-empty line of an error message, at most ``limit`` characters; the exception's type
    name when its message is empty (for one-line ``error: ...`` output and MLflow tags)."""
    text = exc if isinstance(exc, str) else str(exc)
    for line in text.splitlines():
        if line.strip():
            return line.strip()[:limit]
    return "" if isinstance(exc, str) else type(exc).__name__


def error_chain(exc: BaseException) -> Iterator[BaseException]:
    """``exc`` and every error behind it, each once: Ray's ``cause`` (a task or actor error), Python's
    ``__cause__`` and ``__context__``, and the ``worker_failures`` of a Ray Train failure."""
    seen: set[int] = set()
    stack: list[BaseException | None] = [exc]
    while stack:
        err = stack.pop()
        if err is None or id(err) in seen:
            continue
        seen.add(id(err))
        yield err
        failures = list((getattr(err, "worker_failures", None) or {}).values())
        stack += [*reversed(failures), err.__context__, err.__cause__, getattr(err, "cause", None)]


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


def worker_death(exc: BaseException) -> str | None:
    """``"training worker rank 1 (pid 31363, node 10.0.0.7) died: <why>"`` when a Ray Train failure comes from a
    worker process that died, else None. Ray Train 2.60 reports it as a failed health check of that rank,
    next to the other ranks' errors (gloo's "Connection reset by peer"), which say nothing of the cause."""
    import re

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
            where = ", ".join(filter(None, (f"pid {pid.group(1)}" if pid else "",
                                            f"node {node.group(1)}" if node else "")))
            why = first_line(health if health is not None else failure, 300)
            return f"training worker rank {rank}{f' ({where})' if where else ''} died: {why}"
    return None
