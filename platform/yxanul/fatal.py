"""Why a training process died: Python's fault handler writes a process's fatal error (a segmentation fault, an
abort, a bus error, with every thread's Python stack) into a file of the run, and whoever sees the process gone
(the sweep's driver, the job) reads it back as one line.

Why: a worker killed by a signal raises nothing. Ray reports "The actor died unexpectedly before finishing this
task" and the stack goes to the worker's stderr in Ray's session logs, on the machine that ran it, under a name
nobody knows (a sweep trial's seed-ultra process on an H100, 2026-12-06: the report said only "failed (see the
trial's error file)"). Here each training process writes ``<run dir>/workers/rank<r>-<pid>.fatal`` while it trains
(an in-process sweep trial's process from the trial's start: one died opening its MLflow run on an H100, 2026-12-07)
(:func:`recording`; empty and removed when it ends normally), and :func:`summary` makes the line::

    Fatal Python error: Segmentation fault in yxanul/profiling.py:120 (profiled) <- yxanul/train/loop.py:555
    (_profiled_step); every thread's stack: /runs/x/workers/rank0-4242.fatal

The file is written by the interpreter's signal handler itself (:mod:`faulthandler`), so it holds what the process
could say at the moment it died; a SIGKILL (the kernel's OOM killer, ``ray stop --force``) leaves it empty.
"""

from __future__ import annotations

import contextlib
import faulthandler
import os
import re
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

__all__ = ["fatal_log", "marker_path", "recording", "summary", "worker_markers"]

_FRAME = re.compile(r'^\s+File "(?P<path>[^"]+)", line (?P<line>\d+) in (?P<name>\S+)')


def fatal_log(marker_dir: str, rank: int, pid: int | None = None) -> Path:
    """``<marker_dir>/rank<rank>-<pid>.fatal`` (this process's by default)."""
    return Path(marker_dir) / f"rank{rank}-{os.getpid() if pid is None else pid}.fatal"


_active: Path | None = None
"""The file this process's fault handler writes to while inside :func:`recording`."""


@contextlib.contextmanager
def recording(marker_dir: str | None, rank: int) -> Iterator[Path | None]:
    """While inside: a fatal error of this process (every thread's stack) goes to :func:`fatal_log`; after, the fault
    handler writes to stderr again, as Ray's workers have it, and the file is removed if nothing was written. Without
    a local ``marker_dir`` (a URI storage) nothing changes. Inside a recording to the same file (an in-process sweep
    trial records from its start, its training loop again) it changes nothing: the outer one owns the file."""
    global _active
    if not marker_dir:
        yield None
        return
    path = fatal_log(marker_dir, rank)
    if _active == path:
        yield path
        return
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        handle = open(path, "w")  # noqa: SIM115 - must stay open for the signal handler while the run trains
    except OSError:
        yield None
        return
    faulthandler.enable(file=handle, all_threads=True)
    _active = path
    try:
        yield path
    finally:
        _active = None
        faulthandler.enable(file=sys.__stderr__ or sys.stderr, all_threads=True)
        handle.close()
        with contextlib.suppress(OSError):
            if path.stat().st_size == 0:
                path.unlink()


def marker_path(marker_dir: str | os.PathLike[str], rank: int) -> Path:
    """``<marker_dir>/rank<rank>.json``: the marker each rank's training process keeps (its pid, rank, step, tokens
    and last event; written by the loop), which says which process is, or was last, that rank."""
    return Path(marker_dir) / f"rank{rank}.json"


def worker_markers(marker_dir: str | os.PathLike[str] | None) -> dict[int, dict[str, Any]]:
    """Each rank's marker (:func:`marker_path`) in ``marker_dir``, by rank; none where the folder or a marker is
    missing or unreadable (a process that never started, a marker half-written by a crash)."""
    import json

    if not marker_dir or not Path(marker_dir).is_dir():
        return {}
    markers = {}
    for path in sorted(Path(marker_dir).glob("rank*.json")):
        with contextlib.suppress(OSError, ValueError, KeyError, TypeError):
            marker = json.loads(path.read_text())
            markers[int(marker["rank"])] = marker
    return markers


def summary(marker_dir: str | None, rank: int | None = None, pid: int | None = None,
            latest: bool = False) -> str | None:
    """One line for the fatal error a training process of the run wrote (:func:`recording`): the newest non-empty
    ``rank<rank>-<pid>.fatal`` (any rank or pid where not given; with ``latest``, the pid of the rank's latest
    process, from its marker (:func:`worker_markers`), so that an earlier process's fault is not taken for a later
    death), or None when there is none (the process ended normally, or was killed without a chance to write:
    SIGKILL)."""
    if not marker_dir or not Path(marker_dir).is_dir():
        return None
    if latest and rank is not None and pid is None:
        try:
            pid = int(worker_markers(marker_dir)[rank]["pid"])
        except (KeyError, ValueError, TypeError):
            return None
    pattern = f"rank{'*' if rank is None else rank}-{'*' if pid is None else pid}.fatal"
    logs = []
    for path in Path(marker_dir).glob(pattern):
        with contextlib.suppress(OSError):
            if path.stat().st_size > 0:
                logs.append((path.stat().st_mtime, path))
    if not logs:
        return None
    path = max(logs)[1]
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return None
    return f"{describe(text)}; every thread's stack: {path}"


def describe(text: str, frames: int = 2) -> str:
    """``Fatal Python error: Segmentation fault in a/b.py:120 (fn) <- c/d.py:555 (caller)`` from a fault handler's
    output: its first line and the innermost ``frames`` frames of the thread that faulted ("Current thread"), paths
    shortened to their last two parts; ``... in the garbage collector, in a/b.py:120 ...`` where the fault struck
    while that frame's allocation ran the collector (the handler's "Garbage-collecting" line)."""
    lines = text.splitlines()
    head = next((line.strip() for line in lines if line.strip()), "the process died")
    current = next((i for i, line in enumerate(lines) if line.startswith("Current thread")), None)
    if current is None:
        return head
    where, collecting = [], False
    for line in lines[current + 1:]:
        if not where and not collecting and line.strip() == "Garbage-collecting":  # Python 3.12's marker
            collecting = True
            continue
        match = _FRAME.match(line)
        if not match:
            break
        where.append(f"{'/'.join(Path(match['path']).parts[-2:])}:{match['line']} ({match['name']})")
        if len(where) == frames:
            break
    gc = " in the garbage collector," if collecting else ""
    if not where:
        return f"{head}{gc} in a thread with no Python frame"
    return f"{head}{gc} in {' <- '.join(where)}"
