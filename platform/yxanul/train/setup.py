"""What the launcher hands every Ray Train worker besides the config: a typed, picklable record."""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["TEST_FAILURE_ENV", "WorkerSetup"]

TEST_FAILURE_ENV = "YXANUL_TEST_FAILURE"
"""Test-only fault injection; never set it for a real run. ``<kind>@<step>`` (kind ``runtime`` or ``oom``) in the
driver's environment makes every worker raise, just before that optimizer step, a ``RuntimeError`` or a
``torch.OutOfMemoryError`` with CUDA's message: the worker failures whose one-line report the tests check through
real Ray Train (tests/integration/test_worker_failure.py). ``segv@<step>`` is a real segmentation fault there (a run
that did not resume), ``segv@mlflow`` one of the process that opens the MLflow run, just before it does
(tests/integration/test_sweep.py). :func:`yxanul.train.launch.loop_config` copies it into
:attr:`WorkerSetup.test_failure` (workers do not see the driver's later environment)."""


@dataclass(frozen=True)
class WorkerSetup:
    """Built by :func:`yxanul.train.launch.loop_config` on the driver; read by the training loop.
    Paths are absolute: workers may run in another folder (the working-dir copy of `ray job submit`)."""

    data_dir: str
    """The prepared dataset (a folder with manifest.json)."""
    curriculum_label: str = "custom"
    """The curriculum preset's name, for messages ("custom" for hand-written stages)."""
    tracking_uri: str | None = None
    """MLflow tracking URI, resolved by the driver (None: tracking.enabled=false)."""
    run_id: str | None = None
    """The MLflow run rank 0 logs into, also recorded in checkpoints (None: tracking.enabled=false)."""
    marker_dir: str | None = None
    """<run dir>/workers for each worker's pid/step marker files (None when the run dir is a URI)."""
    run_dir: str | None = None
    """The run folder (a path or a URI): rank 0 keeps there what MLflow did not take (yxanul.tracking.SPOOL_DIR)."""
    fp8_plan_dir: str | None = None
    """Where measured FP8 plans are cached (:attr:`yxanul.layout.Layout.fp8_plans`); None: not cached."""
    compile_cache_dir: str | None = None
    """Inductor's persistent caches (:attr:`yxanul.layout.Layout.compile_cache`); None: Inductor's defaults
    (``precision.compile_cache=false``)."""
    test_failure: str | None = None
    """Test-only (:data:`TEST_FAILURE_ENV`): the failure the workers inject; None in every real run."""

    @property
    def tracking(self) -> bool:
        """Whether rank 0 logs to MLflow."""
        return bool(self.tracking_uri and self.run_id)
