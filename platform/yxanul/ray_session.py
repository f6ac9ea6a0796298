"""The one way every job gets a Ray: the cluster in ``$RAY_ADDRESS``, the Ray already initialised, or a
local one started here, listening on 127.0.0.1 only.

    local = ensure_ray()            # train, sweep, prepare
    ensure_ray(min_cpus=4)          # the demo: Ray Data actor pools need more logical CPUs than 2 cores
    env = {**os.environ, **local_server_env()}   # for a `ray start --head` this machine runs (tests, cluster_sim)

**Nothing answers anonymously.** Ray 2.60 replaces a node address of 127.0.0.1 by the machine's address:
its Prometheus endpoints (autoscaler :44217, dashboard :44227, each agent's export port) then listen on
all interfaces and answer without a token, and GCS, raylets and agents listen on every interface too. Ray has one
switch that keeps a node on loopback, ``RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0`` (its "local Ray only" mode;
on Linux it is on by default): every Ray process then binds 127.0.0.1, metrics included (checked with
``ss -ltn``; tests/integration/test_job_submit.py lists the sockets). A Ray on this machine only is what the
platform starts (``ensure_ray``, the tests, cluster_sim, the docs' local head), so it is set for them;
``YXANUL_RAY_LOOPBACK=0`` leaves Ray's own choice (for a Prometheus on another machine, or a second
``ray start`` node, which cannot join a loopback head). Multi-node clusters (cluster.yaml, k8s/) turn the
metrics exporters off instead (docs/cluster.md, Security model).

Token authentication is Ray's to decide (``RAY_AUTH_MODE``, ``~/.ray/auth_token``): nothing here turns
it off. A client holding a token that meets a head without authentication stops with one line (it would
fail later with an unrelated actor error), and a wrong token is one line in a second instead of a
traceback after 20 s.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import sys
import urllib.request
from collections.abc import Iterator
from pathlib import Path

from yxanul.errors import YxanulError

__all__ = ["LOOPBACK_SWITCH", "connected_here", "ensure_ray", "local_server_env", "loopback"]

_connected_here = False
"""Whether :func:`ensure_ray` called ``ray.init`` in this process (a Ray already initialised by a caller is
theirs to shut down)."""


def connected_here() -> bool:
    """Whether this process's Ray connection was made by :func:`ensure_ray` (not by a caller before it)."""
    return _connected_here

LOOPBACK_SWITCH = "YXANUL_RAY_LOOPBACK"
"""``0`` lets a Ray the platform starts listen where Ray puts it (the machine's address) instead of 127.0.0.1."""

_RAY_LOCAL_ONLY = "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"


def loopback() -> bool:
    """Whether a Ray the platform starts on this machine listens on 127.0.0.1 only (the default)."""
    return os.environ.get(LOOPBACK_SWITCH, "1") != "0"


def local_server_env() -> dict[str, str]:
    """Environment for a Ray head this machine starts (``ray start --head``, ``ray.init``): every process of it
    on 127.0.0.1, Prometheus endpoints included; empty when ``YXANUL_RAY_LOOPBACK=0``."""
    return {_RAY_LOCAL_ONLY: "0"} if loopback() else {}


def _use_loopback() -> None:
    """Put this process (and the Ray processes it starts) in Ray's local-only mode. Ray reads the variable once,
    at import, into ``ray_constants.ENABLE_RAY_CLUSTER``, which it consults at each use: set both, since the
    jobs import Ray (ray.train) before they start one."""
    env = local_server_env()
    os.environ.update(env)
    if env and "ray._private.ray_constants" in sys.modules:
        sys.modules["ray._private.ray_constants"].ENABLE_RAY_CLUSTER = False


def _is_loopback_address(address: str) -> bool:
    host = address.split("://")[-1].rsplit(":", 1)[0].strip("[]")
    return host in ("localhost", "::1") or host.startswith("127.")


def _secure_tokens() -> None:
    """Ray 2.60 writes ``~/.ray/auth_token`` 0644 in a 0755 folder: make the token files this user owns 0600 in
    a 0700 folder before and after Ray may have written one."""
    from yxanul.files import secure_secret_file

    for path in filter(None, (os.environ.get("RAY_AUTH_TOKEN_PATH"), str(Path.home() / ".ray" / "auth_token"))):
        secure_secret_file(path)


@contextlib.contextmanager
def _quiet_stderr() -> Iterator[None]:
    """File descriptor 2 to /dev/null for the block (C++ logging writes to it directly, past sys.stderr)."""
    sys.stderr.flush()
    saved = os.dup(2)
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, 2)
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        os.close(devnull)


def _check_cluster(address: str) -> None:
    """Before ``ray.init`` attaches to a GCS at ``address`` with token authentication on: a token the cluster
    refuses raises Ray's ``AuthenticationError`` now (``yxanul.cli`` makes it one line), and a cluster that
    runs without authentication is refused in one line (found through its dashboard's
    ``/api/authentication_mode``; a cluster without a dashboard cannot be asked)."""
    if os.environ.get("RAY_AUTH_MODE", "").lower() != "token" or not re.fullmatch(r"[\w.\-\[\]:]+:\d+", address):
        return
    from ray._raylet import AuthenticationTokenLoader, GcsClient

    if not AuthenticationTokenLoader.instance().has_token(ignore_auth_mode=True):
        return  # no token at all: ray.init raises Ray's own AuthenticationError (GcsClient would abort the process)
    try:
        with _quiet_stderr():  # Ray's C++ client logs a line per refused try; the refusal is reported below
            dashboard = GcsClient(address=address).internal_kv_get(b"dashboard", namespace=b"dashboard", timeout=10)
    except (ConnectionError, TimeoutError, OSError):
        return  # unreachable: ray.init says so in its own words
    except Exception as exc:
        if type(exc).__name__ == "AuthenticationError":
            raise
        return
    if not dashboard:
        return
    try:
        url = f"http://{dashboard.decode()}/api/authentication_mode"
        with urllib.request.urlopen(url, timeout=10) as resp:
            mode = json.load(resp).get("authentication_mode")
    except (OSError, ValueError):
        return
    if mode == "disabled":
        raise YxanulError(f"the Ray cluster at {address} has token authentication off (its head runs without "
                          f"RAY_AUTH_MODE=token): anyone who reaches its ports can run code on it, and jobs of a "
                          f"token client fail there; restart its head with RAY_AUTH_MODE=token (docs/cluster.md, "
                          f"Security model), or set RAY_AUTH_MODE=disabled for this client to use it as it is")


def _set_connected() -> None:
    global _connected_here
    _connected_here = True


def ensure_ray(*, min_cpus: int | None = None) -> bool:
    """Make sure this process is connected to Ray; return True when that Ray runs on this machine.

    ``$RAY_ADDRESS`` set (``ray job submit`` sets it, or a user pointing at a head): attach to that
    cluster, after checking its authentication (:func:`_check_cluster`). Otherwise start a local Ray
    (``address="local"`` never attaches to a head started elsewhere by accident) on 127.0.0.1 (module
    docstring) with at least ``min_cpus`` logical CPUs (default: the machine's cores). An already initialised
    Ray is used as it is. Ray's log lines from workers are not deduplicated, so every worker's warning is seen.
    """
    import ray

    address = os.environ.get("RAY_ADDRESS", "")
    if ray.is_initialized():
        return not address
    os.environ.setdefault("RAY_DEDUP_LOGS", "0")
    from yxanul.interrupt import reinstall

    _secure_tokens()
    if address:
        if _is_loopback_address(address):  # a head on this machine's loopback: this driver must be on it too
            _use_loopback()
        _check_cluster(address)
        ray.init(configure_logging=False)
        _set_connected()
        reinstall()  # ray.init installed Ray's C++ SIGTERM handler over the job's (yxanul.interrupt)
        return False
    _use_loopback()
    cpus = max(os.cpu_count() or 1, min_cpus) if min_cpus else None
    try:
        ray.init(address="local", num_cpus=cpus, configure_logging=False)
    finally:
        _secure_tokens()
    _set_connected()
    reinstall()  # ray.init installed Ray's C++ SIGTERM handler over the job's (yxanul.interrupt)
    return True
