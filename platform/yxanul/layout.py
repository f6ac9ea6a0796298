"""The storage layout: every path the platform writes under ``run.storage_path``, decided here and nowhere else.

    layout = Layout(cfg.run.storage_path)      # or Layout.of(cfg)
    layout.run_dir("pulse")                     # <storage>/pulse              Ray Train's run folder
    layout.run_log("pulse")                     # <storage>/pulse.log          Ray's output of jobs.train
    layout.sweep_dir("fp8-vs-bf16")             # <storage>/sweeps/fp8-vs-bf16 the Ray Tune experiment
    layout.sweep_log("fp8-vs-bf16")             # <storage>/sweeps/fp8-vs-bf16.log
    layout.fp8_plans                            # <storage>/fp8-plans          measured FP8 plans (shared)
    layout.compile_cache                        # <storage>/compile-cache      Inductor's caches (shared)
    layout.worker_markers("pulse")              # <storage>/pulse/workers      pid/step markers per rank

Everything a sweep's trials share (FP8 plans, the compile cache) sits at the top of the storage, because the
trials of a sweep share the base config's ``run.storage_path``; so do later sweeps and runs on the same
storage, which is what a cache is for (every entry is keyed by what it depends on).

The storage may be a URI (``s3://...``): Ray Train and Tune write there through pyarrow, but logs, caches and
markers are local files, so they go to ``outputs/logs`` and ``~/.cache/yxanul`` instead (markers: none).
Local paths are made absolute when the layout is made: drivers resolve once, because Ray workers and Tune
trials run in other folders.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from yxanul.files import absolute_path, is_uri

__all__ = ["Layout"]

SWEEPS = "sweeps"
FP8_PLANS = "fp8-plans"
COMPILE_CACHE = "compile-cache"
WORKERS = "workers"


class Layout:
    """Paths under one ``run.storage_path`` (see the module docstring)."""

    def __init__(self, storage_path: str) -> None:
        self.root = absolute_path(storage_path).rstrip("/")
        """The storage itself: an absolute local path, or a URI unchanged."""
        self.is_local = not is_uri(self.root)

    @classmethod
    def of(cls, cfg: Any) -> Layout:
        """The layout of an :class:`~yxanul.config.ExperimentConfig`'s ``run.storage_path``."""
        return cls(cfg.run.storage_path)

    def __repr__(self) -> str:
        return f"Layout({self.root!r})"

    # -- runs -----------------------------------------------------------------------------------------

    def run_dir(self, name: str) -> str:
        """Ray Train's run folder of run ``name`` (checkpoints, Ray's state, the MLflow run file)."""
        return f"{self.root}/{name}"

    def run_log(self, name: str) -> Path:
        """Ray's and Ray Train's own output of ``jobs.train`` for run ``name``, beside its run folder."""
        return self._log(name)

    def worker_markers(self, name: str) -> str | None:
        """``<run folder>/workers``: each worker's pid/step marker files (None for a URI storage)."""
        return f"{self.run_dir(name)}/{WORKERS}" if self.is_local else None

    # -- sweeps ---------------------------------------------------------------------------------------

    @property
    def sweeps(self) -> str:
        """The folder of Ray Tune experiments (Tune's ``storage_path``)."""
        return f"{self.root}/{SWEEPS}"

    def sweep_dir(self, name: str) -> str:
        """The Ray Tune experiment of sweep ``name`` (a resumed sweep is restored from it)."""
        return f"{self.sweeps}/{name}"

    def sweep_log(self, name: str) -> Path:
        """Ray's and Tune's own output of sweep ``name``, beside its Tune folder; appended to on resume."""
        return self._log(name, SWEEPS)

    # -- shared caches --------------------------------------------------------------------------------

    @property
    def fp8_plans(self) -> Path:
        """Measured FP8 plans (JSON per card, shape and versions), shared by every run on this storage."""
        return self._cache(FP8_PLANS)

    @property
    def compile_cache(self) -> Path:
        """Inductor's FX-graph and AOT-autograd caches (and Triton's kernels), shared by every run on this storage."""
        return self._cache(COMPILE_CACHE)

    def report_dir(self, name: str) -> Path:
        """Where ``jobs.demo`` writes the comparison report of sweep ``name``: ``reports/<name>`` beside the
        storage (``outputs/demo/ray`` -> ``outputs/demo/reports/<name>``; ``outputs/reports`` for a URI)."""
        base = Path(self.root).parent if self.is_local else Path("outputs").resolve()
        return base / "reports" / name

    # -------------------------------------------------------------------------------------------------

    def _log(self, name: str, *under: str) -> Path:
        if not self.is_local:
            return Path("outputs/logs").resolve() / f"{name}.log"
        return Path(self.root, *under, f"{name}.log")

    def _cache(self, name: str) -> Path:
        if not self.is_local:
            return Path.home() / ".cache" / "yxanul" / name
        return Path(self.root, name)
