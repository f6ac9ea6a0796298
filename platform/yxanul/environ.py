"""Environment variables set for the calls inside a block only, for libraries that read them at call time
(MLflow's client retries, Transformer Engine's pickle guard, the tokenizers thread pool).

    with temporary_env("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0"):
        client.set_terminated(run_id)
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator

__all__ = ["temporary_env"]


@contextlib.contextmanager
def temporary_env(name: str, value: str) -> Iterator[None]:
    """``name=value`` inside the block; the previous value (or its absence) restored after it, error or not."""
    before = os.environ.get(name)
    os.environ[name] = value
    try:
        yield
    finally:
        if before is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = before
