"""What a person sees while a job runs: one line per event, Ray's and Tune's own output in a log file.

Training workers print their lines (progress, validation, warnings) through :func:`worker_print`, which
marks them with the run's name (:func:`worker_line`). Ray forwards every worker's output to the driver; inside a
:class:`Console` the driver's ``sys.stdout``/``sys.stderr`` go to the log file, and only the marked lines
come through to the terminal, with the trial's name in front (``t01 curriculum=none | step 4/16 ...``).
The job's own lines go through :func:`say`. ``--verbose`` turns the filter off: everything is shown, as
Ray and Tune print it.

    with Console(log_path, verbose=args.verbose) as console:
        console.name_run("grid-t01", "t01 curriculum=none")
        say("sweep grid: 4 trials")       # terminal and log
        run_the_sweep()                   # Ray/Tune output -> log; marked worker lines -> terminal
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import sys
import threading
import time
from pathlib import Path
from typing import IO, Any

__all__ = ["Console", "log_path", "name_run", "say", "to_log", "worker_line", "worker_print"]

_MARK = re.compile(r"yxanul\[(?P<run>[^\]\s]+)\] (?P<text>.*)$")
_ANSI = re.compile(r"\x1b\[[0-9;]*m")
_active: Console | None = None

_NEVER_DEDUP = r"yxanul\["
"""Ray's driver deduplicates the worker lines it forwards (Ray 2.60, ``ray._private.ray_logging.LogDeduplicator``):
lines of different processes that are equal once every word holding a digit is dropped, within
``RAY_DEDUP_LOGS_AGG_WINDOW_S`` (5 s), are held back and shown once, as ``[repeated 3x across cluster]`` with the last
one's text. Two trials' marked lines differ in numbers only (their run names included), so a console lost whole lines
(stage 1's profile line of a trial, merged into stage 2's) and showed others up to 5 s late: after the trial's verdict,
or after the job had ended, raw, on the terminal. Lines matching ``RAY_DEDUP_LOGS_ALLOW_REGEX`` are never held: the
marked lines join it (:func:`_keep_marked_lines`)."""


def _with_marked(pattern: str | None) -> str:
    """``pattern`` (an allow pattern, or none) that also matches the marked lines."""
    if not pattern:
        return _NEVER_DEDUP
    return pattern if _NEVER_DEDUP in pattern else f"(?:{pattern})|{_NEVER_DEDUP}"


def _keep_marked_lines() -> None:
    """Exempt the marked worker lines from Ray's deduplication: in the environment Ray reads when it is imported, and
    in the deduplicators of a Ray imported already. Any other pattern the user allowed stays allowed."""
    os.environ["RAY_DEDUP_LOGS_ALLOW_REGEX"] = _with_marked(os.environ.get("RAY_DEDUP_LOGS_ALLOW_REGEX"))
    logging_module = sys.modules.get("ray._private.ray_logging")
    if logging_module is None:
        return
    with contextlib.suppress(AttributeError, re.error):  # another Ray's internals: its output stays as Ray shows it
        for dedup in (logging_module.stdout_deduplicator, logging_module.stderr_deduplicator):
            dedup.allow_re = re.compile(_with_marked(dedup.allow_re.pattern if dedup.allow_re is not None else None))


def _flush_held_ray_lines() -> None:
    """Print the lines Ray's deduplicators still hold (other than the marked ones, which are never held) now, into
    the console's log, rather than on the terminal when Ray shuts down after the job."""
    logging_module, worker = sys.modules.get("ray._private.ray_logging"), sys.modules.get("ray._private.worker")
    if logging_module is None or worker is None:
        return
    with contextlib.suppress(Exception):  # best effort: the log loses a held line, nothing else
        for dedup, stream in ((logging_module.stdout_deduplicator, sys.stdout),
                              (logging_module.stderr_deduplicator, sys.stderr)):
            for batch in dedup.flush():
                worker.print_worker_logs(batch, stream)


def worker_line(run_name: str, text: str) -> str:
    """A line a training worker prints for the console: marked with its run, so the driver shows it under the
    trial's name (and with the run's name where no console filters, e.g. a library caller). Every line of a
    multi-line ``text`` is marked (the FP8 plan's table): Ray forwards, and the console filters, line by line."""
    return "\n".join(f"yxanul[{run_name}] {line}" for line in (text.splitlines() or [""]))


def worker_print(run_name: str, text: str, *, err: bool = False) -> None:
    """Print a worker's :func:`worker_line` once, to the process's own stdout (stderr with ``err``).

    Not ``print``: Ray Train (2.60) patches ``print`` in its workers to go through the root logger as
    well (``RAY_TRAIN_ENABLE_PRINT_PATCH``), and every line then reached the driver twice."""
    stream = sys.stderr if err else sys.stdout
    stream.write(worker_line(run_name, text) + "\n")
    stream.flush()


def say(text: str, *, err: bool = False) -> None:
    """Print a line of the job's own for the person at the terminal (and into the log when a console is on)."""
    if _active is not None:
        _active.say(text)
    else:
        print(text, file=sys.stderr if err else sys.stdout, flush=True)


def to_log(text: str) -> bool:
    """Write ``text`` into the active console's log file only (e.g. the traceback behind a one-line error);
    False when no console keeps a log (a library caller, ``--verbose``: the caller sees Ray's output anyway)."""
    if _active is None or _active._log is None:
        return False
    with _active.lock:
        _active._log.write(text.rstrip("\n") + "\n")
        _active._log.flush()
    return True


def log_path() -> Path | None:
    """The active console's log file (where Ray's output and tracebacks go), or None."""
    return _active.log_path if _active is not None and _active._log is not None else None


def name_run(run_name: str, shown_as: str) -> None:
    """Show the active console's marked lines of ``run_name`` as ``shown_as`` (no console: nothing to do)."""
    if _active is not None:
        _active.name_run(run_name, shown_as)


class _Filter:
    """Stands in for sys.stdout/sys.stderr: every line to the log; marked worker lines to the terminal."""

    def __init__(self, console: Console) -> None:
        self._console = console
        self._pending = ""

    def write(self, text: str) -> int:
        with self._console.lock:
            self._pending += text
            *lines, self._pending = self._pending.split("\n")
        for line in lines:
            self._console.from_output(line)
        return len(text)

    def flush(self) -> None:
        self._console.flush()

    def isatty(self) -> bool:  # Ray and Tune print plain text (no live tables or colours) into a file
        return False

    @property
    def encoding(self) -> str:
        return "utf-8"

    def fileno(self) -> int:  # some libraries ask; the log file's descriptor is where bytes would land
        return self._console.log_fileno()


class Console:
    """Route a job's output: see the module docstring. ``log_path`` None (or ``verbose``): no redirection."""

    def __init__(self, log_path: str | Path | None, *, verbose: bool = False) -> None:
        self.log_path = Path(log_path) if log_path is not None else None
        self.verbose = verbose or log_path is None
        self.lock = threading.RLock()
        self._names: dict[str, str] = {}
        self._log: IO[str] | None = None
        self._terminal: Any = None
        self._saved: tuple[Any, Any] | None = None
        self._handlers: list[tuple[logging.StreamHandler, Any]] = []

    def name_run(self, run_name: str, shown_as: str) -> None:
        """Show the marked lines of ``run_name`` as ``shown_as`` (e.g. a sweep trial's number and variant)."""
        self._names[run_name] = shown_as

    def say(self, text: str) -> None:
        with self.lock:
            if self._terminal is not None:
                self._terminal.write(text + "\n")
                self._terminal.flush()
            if self._log is not None:
                self._log.write(text + "\n")
                self._log.flush()

    def from_output(self, line: str) -> None:
        """A line printed in this process (by Ray's log forwarding, Tune, a library): to the log; when it is a
        marked worker line, also to the terminal under the run's name."""
        with self.lock:
            if self._log is not None:
                self._log.write(line + "\n")
        found = _MARK.search(_ANSI.sub("", line))
        if found and self._terminal is not None:
            run = found.group("run")
            with self.lock:
                self._terminal.write(f"{self._names.get(run, run)} | {found.group('text').rstrip()}\n")
                self._terminal.flush()

    def flush(self) -> None:
        with self.lock:
            if self._log is not None:
                self._log.flush()

    def log_fileno(self) -> int:
        if self._log is None:
            raise OSError("no log file")
        return self._log.fileno()

    def __enter__(self) -> Console:
        global _active
        self._terminal = sys.stdout
        if not self.verbose and self.log_path is not None:
            try:
                self.log_path.parent.mkdir(parents=True, exist_ok=True)
                self._log = open(self.log_path, "a", encoding="utf-8", buffering=1)
            except OSError as exc:  # e.g. a read-only run.storage_path: one line, before anything starts
                from yxanul.errors import ConfigError, first_line

                raise ConfigError(f"cannot write the job's log file {self.log_path} ({first_line(exc)}); choose a "
                                  f"writable run.storage_path (or pass --verbose to print Ray's output here)") from None
            self._log.write(f"--- {time.strftime('%Y-%m-%d %H:%M:%S')} {' '.join(sys.argv)}\n")
            self._saved = (sys.stdout, sys.stderr)
            out, err = _Filter(self), _Filter(self)  # one each: a partial line on one never joins the other's
            # Handlers bound to the terminal streams when they were made (not Ray's: it looks sys.stderr up
            # at each record) would bypass the swap below: point them at the filter too, until exit.
            for logger in [logging.getLogger(), *logging.Logger.manager.loggerDict.values()]:
                for handler in getattr(logger, "handlers", []):
                    if isinstance(handler, logging.StreamHandler) and handler.stream in self._saved:
                        self._handlers.append((handler, handler.stream))
                        handler.setStream(err)  # type: ignore[arg-type]
            sys.stdout, sys.stderr = out, err  # type: ignore[assignment]
            _keep_marked_lines()
        _active = self
        return self

    def __exit__(self, *exc: object) -> None:
        global _active
        _active = None
        if self._saved is not None:
            _flush_held_ray_lines()
            for stream in (sys.stdout, sys.stderr):
                if isinstance(stream, _Filter) and stream._pending:
                    self.from_output(stream._pending)
                    stream._pending = ""
            sys.stdout, sys.stderr = self._saved
            for handler, stream in self._handlers:
                handler.setStream(stream)
            self._saved, self._handlers = None, []
        if self._log is not None:
            self._log.close()
            self._log = None
        self._terminal = None
