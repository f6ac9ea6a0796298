"""Shared fixtures: one real local Ray for the whole session, scratch dirs, test corpora."""

from __future__ import annotations

import os

import pytest

# Ray 2.60 enables token auth for local clusters; CLI clients default to it disabled. Pin one mode
# for every server and client the tests start so results never depend on test order.
os.environ.setdefault("RAY_AUTH_MODE", "disabled")
os.environ.setdefault("RAY_DEDUP_LOGS", "0")
os.environ.setdefault("RAY_ENABLE_UV_RUN_RUNTIME_ENV", "0")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


FAKE_PEAK_TFLOPS = "0.001"
"""The BF16 peak the session's Ray workers declare (yxanul.metrics.PEAK_ENV): 1 GFLOP/s, a CPU's order."""


@pytest.fixture(scope="session")
def ray_cluster():
    """A real local Ray with 4 logical CPUs (more than the 2 real cores: Ray Data actor pools need
    room next to their read tasks). ``address="local"`` never attaches to a head started elsewhere."""
    import ray

    if not ray.is_initialized():
        # A declared peak makes the workers compute MFU on CPU, so the per-GPU accounting is tested for real.
        ray.init(address="local", num_cpus=4, include_dashboard=False, log_to_driver=True,
                 configure_logging=False, runtime_env={"env_vars": {"YXANUL_PEAK_TFLOPS": FAKE_PEAK_TFLOPS}})
    yield ray
    ray.shutdown()
