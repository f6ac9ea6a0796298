"""Real services for integration tests: `mlflow server`s over HTTP on 127.0.0.1 (one plain, one with
authentication), and helpers for servers the tests start themselves."""

from __future__ import annotations

import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def outside_address() -> str:
    """This machine's address on its default-route interface (what another machine would connect to)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.connect(("192.0.2.1", 9))  # TEST-NET-1: no packet is sent, the kernel only picks the route
        address = sock.getsockname()[0]
    assert not address.startswith("127."), "this machine has no non-loopback interface to test from"
    return address


def listens_beyond_loopback(port: int) -> bool:
    """True when something accepts TCP connections on ``port`` at this machine's non-loopback address."""
    with socket.socket() as sock:
        sock.settimeout(2)
        return sock.connect_ex((outside_address(), port)) == 0


def ray_auth_headers() -> dict[str, str]:
    """The header a Ray client sends under token authentication, with this test session's token
    (tests/conftest.py)."""
    return {"Authorization": f"Bearer {Path(os.environ['RAY_AUTH_TOKEN_PATH']).read_text().strip()}"}


def wait_http(url: str, timeout_s: float, proc: subprocess.Popen | None = None,
              headers: dict[str, str] | None = None) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"server exited with code {proc.returncode} before {url} answered")
        try:
            with urllib.request.urlopen(urllib.request.Request(url, headers=headers or {}), timeout=2) as resp:
                if resp.status == 200:
                    return
        except OSError:
            time.sleep(0.5)
    raise TimeoutError(f"{url} did not answer within {timeout_s:.0f}s")


def start_mlflow_server(root: Path, cmd: list[str], env: dict[str, str] | None = None) -> tuple[subprocess.Popen, str]:
    """Start ``cmd`` (an MLflow server command ending in its options) on 127.0.0.1 and a free port, in its
    own process group, logging to ROOT/server.log; returns the process and its URI once /health answers."""
    port = free_port()
    log = open(root / "server.log", "w")
    proc = subprocess.Popen([*cmd, "--host", "127.0.0.1", "--port", str(port), "--workers", "1"], stdout=log,
                            stderr=subprocess.STDOUT, start_new_session=True, env=env)
    log.close()  # the child keeps its own descriptor
    uri = f"http://127.0.0.1:{port}"
    try:
        wait_http(f"{uri}/health", timeout_s=120, proc=proc)
    except Exception:
        kill_group(proc)
        raise RuntimeError((root / "server.log").read_text()[-3000:]) from None
    return proc, uri


def mlflow_exe() -> str:
    exe = Path(sys.executable).with_name("mlflow")
    return str(exe) if exe.exists() else shutil.which("mlflow")


@pytest.fixture(scope="session")
def mlflow_server(tmp_path_factory):
    """A real MLflow tracking server (SQLite backend, local artifacts) for the session; yields its URI."""
    root: Path = tmp_path_factory.mktemp("mlflow-server")
    proc, uri = start_mlflow_server(root, [mlflow_exe(), "server", "--backend-store-uri",
                                           f"sqlite:///{root / 'mlflow.db'}",
                                           "--artifacts-destination", str(root / "artifacts")])
    yield uri
    # The server forks gunicorn/uvicorn workers and a job runner with huey consumers: end the whole
    # process group (start_new_session made the server its leader), not only the parent.
    kill_group(proc)


class AuthServer(tuple):
    """(URI, the jobs' account as environment variables), plus ``.admin`` (the admin account the server made in
    its state folder, which only the machine running the server has) and ``.state`` (that folder)."""

    admin: dict[str, str]
    state: Path


@pytest.fixture(scope="session")
def mlflow_auth_server(tmp_path_factory):
    """A real MLflow server with authentication, started by scripts/mlflow_server.sh exactly as the cluster's
    head starts it (basic-auth app; the jobs' non-admin account from MLFLOW_TRACKING_USERNAME /
    MLFLOW_TRACKING_PASSWORD, the admin made by the script in STATE_DIR/admin.env), on 127.0.0.1. Yields an
    :class:`AuthServer`; the tests' own environment stays without the credentials, so a client is anonymous
    unless a test hands them over."""
    root: Path = tmp_path_factory.mktemp("mlflow-auth")
    creds = {"MLFLOW_TRACKING_USERNAME": "yxanul", "MLFLOW_TRACKING_PASSWORD": secrets.token_hex(16)}
    env = {**os.environ, **creds, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    proc, uri = start_mlflow_server(root, ["bash", str(REPO / "scripts" / "mlflow_server.sh"), str(root / "state"),
                                           "--artifacts-destination", str(root / "artifacts")], env=env)
    server = AuthServer((uri, creds))
    admin = dict(line.split("=", 1) for line in (root / "state" / "admin.env").read_text().splitlines())
    server.admin = {"MLFLOW_TRACKING_USERNAME": admin["MLFLOW_AUTH_ADMIN_USERNAME"],
                    "MLFLOW_TRACKING_PASSWORD": admin["MLFLOW_AUTH_ADMIN_PASSWORD"]}
    server.state = root / "state"
    yield server
    kill_group(proc)


def kill_group(proc: subprocess.Popen) -> None:
    """Stop a server started in its own process group (``start_new_session=True``): SIGTERM, then SIGKILL, each
    given 15 s, so none of the group's processes outlives the test."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            return
        try:
            proc.wait(timeout=15)
            time.sleep(0.5)  # let the group's other members go too
        except subprocess.TimeoutExpired:
            continue
