"""Shared fixtures: one real local Ray for the whole session, scratch dirs, test corpora."""

from __future__ import annotations

import atexit
import os
import secrets
import shutil
import tempfile
from pathlib import Path

import pytest

from yxanul.ray_session import local_server_env  # imports no Ray


def _session_ray_token() -> Path:
    """Token authentication on for every Ray server and client the tests start, with a token of this test
    session only: a fresh file named by RAY_AUTH_TOKEN_PATH (Ray reads it before ~/.ray/auth_token), so the
    tests neither read nor write the developer's ~/.ray/auth_token, and concurrent sessions never share one.
    Set here, before anything imports Ray, so that every Ray process and subprocess inherits it."""
    folder = tempfile.mkdtemp(prefix="yxanul-ray-auth-")  # mode 700
    atexit.register(shutil.rmtree, folder, True)
    path = Path(folder) / "auth_token"
    path.touch(mode=0o600)
    path.write_text(secrets.token_hex(32))
    os.environ["RAY_AUTH_MODE"] = "token"
    os.environ["RAY_AUTH_TOKEN_PATH"] = str(path)
    os.environ.pop("RAY_AUTH_TOKEN", None)  # it would take precedence over the file
    return path


RAY_AUTH_TOKEN_FILE = _session_ray_token()
# Every Ray the tests start (the session's ray.init, the `ray start` heads, cluster_sim) listens on 127.0.0.1 only,
# as the platform's own do (yxanul.ray_session); set before anything imports Ray, which reads it once.
os.environ.update(local_server_env())
os.environ.setdefault("RAY_DEDUP_LOGS", "0")
os.environ.setdefault("RAY_ENABLE_UV_RUN_RUNTIME_ENV", "0")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


FAKE_PEAK_TFLOPS = "0.1"
"""The BF16 peak the session's Ray workers declare (yxanul.metrics.PEAK_ENV): 100 GFLOP/s, about a 2-core CPU's."""


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
