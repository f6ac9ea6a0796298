"""The one way every job gets a Ray: the cluster in ``$RAY_ADDRESS``, the Ray already initialised, or a
local one started here.

    local = ensure_ray()            # train, sweep, prepare
    ensure_ray(min_cpus=4)          # the demo: Ray Data actor pools need more logical CPUs than 2 cores

Token authentication is Ray's to decide (``RAY_AUTH_MODE``, ``~/.ray/auth_token``): nothing here turns
it off.
"""

from __future__ import annotations

import os

__all__ = ["ensure_ray"]


def ensure_ray(*, min_cpus: int | None = None) -> bool:
    """Make sure this process is connected to Ray; return True when that Ray runs on this machine.

    ``$RAY_ADDRESS`` set (``ray job submit`` sets it, or a user pointing at a head): attach to that
    cluster. Otherwise start a local Ray (``address="local"`` never attaches to a head started
    elsewhere by accident) with at least ``min_cpus`` logical CPUs (default: the machine's cores).
    An already initialised Ray is used as it is. Ray's log lines from workers are not deduplicated,
    so every worker's warning is seen.
    """
    import ray

    remote = bool(os.environ.get("RAY_ADDRESS"))
    if ray.is_initialized():
        return not remote
    os.environ.setdefault("RAY_DEDUP_LOGS", "0")
    from yxanul.interrupt import reinstall

    if remote:
        ray.init(configure_logging=False)
        reinstall()  # ray.init installed Ray's C++ SIGTERM handler over the job's (yxanul.interrupt)
        return False
    cpus = max(os.cpu_count() or 1, min_cpus) if min_cpus else None
    ray.init(address="local", num_cpus=cpus, configure_logging=False)
    reinstall()
    return True
