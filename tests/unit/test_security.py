"""Secure defaults that need no running service: Ray token auth for every job, one error line when Ray refuses
the client, no password in a tracking URI, and local servers bound to loopback only. The refusals by real
servers are tested in tests/integration (test_job_submit.py, test_mlflow_auth.py)."""

from __future__ import annotations

import inspect
import os
import re
from pathlib import Path

import pytest

from yxanul.cli import run_job
from yxanul.config import load_config
from yxanul.errors import ConfigError, TrackingError
from yxanul.tracking import resolve_tracking_uri

ROOT = Path(__file__).resolve().parents[2]


def test_tests_run_with_token_auth_and_their_own_token():
    # tests/conftest.py: never the developer's ~/.ray/auth_token, never a token shared with another session.
    assert os.environ["RAY_AUTH_MODE"] == "token" and "RAY_AUTH_TOKEN" not in os.environ
    token_file = Path(os.environ["RAY_AUTH_TOKEN_PATH"])
    assert token_file != Path.home() / ".ray" / "auth_token"
    assert re.fullmatch(r"[0-9a-f]{64}", token_file.read_text())
    assert token_file.stat().st_mode & 0o077 == 0  # readable by its owner only


def test_jobs_turn_token_auth_on_unless_the_user_opted_out(monkeypatch):
    seen = []
    monkeypatch.delenv("RAY_AUTH_MODE")
    assert run_job(lambda argv: seen.append(os.environ.get("RAY_AUTH_MODE"))) == 0
    monkeypatch.setenv("RAY_AUTH_MODE", "disabled")  # the documented, explicit opt-out is respected
    assert run_job(lambda argv: seen.append(os.environ.get("RAY_AUTH_MODE"))) == 0
    assert seen == ["token", "disabled"]


def test_ray_refusing_the_client_is_one_error_line(capsys):
    from ray.exceptions import AuthenticationError

    def main(argv):
        raise AuthenticationError("Authentication failed: Forbidden: Invalid authentication token\n\nmore text")

    assert run_job(main) == 2
    err = capsys.readouterr().err
    assert err.splitlines() == [
        "error: Ray refused this client: Authentication failed: Forbidden: Invalid authentication token; give it the "
        "cluster's token (RAY_AUTH_TOKEN_PATH=<file>, RAY_AUTH_TOKEN, or ~/.ray/auth_token) with RAY_AUTH_MODE=token "
        "(docs/cluster.md, Security model)"]

    def bug(argv):
        raise RuntimeError("a bug keeps its traceback")

    with pytest.raises(RuntimeError):
        run_job(bug)


def test_no_password_in_a_tracking_uri(monkeypatch):
    pulse = ROOT / "experiments" / "runs" / "pulse.yaml"
    with pytest.raises(ConfigError, match="tracking.uri must not contain a password") as err:
        load_config(pulse, ["tracking.uri=http://alice:pw-123@10.0.0.5:5000"])
    assert "pw-123" not in str(err.value)
    assert load_config(pulse, ["tracking.uri=http://10.0.0.5:5000"]).tracking.uri == "http://10.0.0.5:5000"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://alice:pw-123@10.0.0.5:5000")
    with pytest.raises(TrackingError, match=r"\$MLFLOW_TRACKING_URI must not contain a password") as err:
        resolve_tracking_uri(None)
    assert "pw-123" not in str(err.value)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://10.0.0.5:5000")
    assert resolve_tracking_uri(None) == "http://10.0.0.5:5000"


# Where this repository starts servers on the local machine (cluster.yaml and k8s/ are the multi-node exceptions,
# checked in test_cluster_yaml.py): the jobs' local Ray, ./dev, the scripts, the tests' Ray heads and MLflow servers.
_LOCAL_SOURCES = [*ROOT.glob("platform/**/*.py"), *ROOT.glob("jobs/*.py"), *ROOT.glob("tests/**/*.py"),
                  *ROOT.glob("scripts/*.sh"), *ROOT.glob("scripts/*.py"), ROOT / "dev"]
_BIND = re.compile(r"""(dashboard[-_]host|--host|node[-_]ip[-_]address)["']?\s*[=,]?\s*["']?([0-9a-zA-Z.:]+)""")


def _binds(path: Path) -> list[tuple[str, str]]:
    code = re.sub(r"(?m)(^|\s)#.*$", "", path.read_text())  # usage comments may show the cluster's command
    return [(m.group(1), m.group(2)) for m in _BIND.finditer(code)]


def test_local_servers_bind_to_loopback_only():
    # A local `ray.init()` (the jobs, the demo, the tests) keeps the dashboard on loopback: Ray's default,
    # which no call here overrides.
    import ray

    assert inspect.signature(ray.init).parameters["dashboard_host"].default == "127.0.0.1"
    found = {path.relative_to(ROOT).as_posix(): _binds(path) for path in _LOCAL_SOURCES}
    assert found["tests/integration/test_job_submit.py"]  # the check sees the head's options
    assert found["tests/integration/conftest.py"] == [("--host", "127.0.0.1")]  # both MLflow servers
    wrong = {path: binds for path, binds in found.items() if any(value != "127.0.0.1" for _, value in binds)}
    assert wrong == {}
    assert not [path for path in _LOCAL_SOURCES if "0.0.0.0" in re.sub(r"(?m)(^|\s)#.*$", "", path.read_text())
                and path.name not in ("test_cluster_yaml.py", "test_security.py")]  # these assert on it


@pytest.mark.parametrize("uri", ["http://alice:pw-123@10.0.0.5:5000", "https://alice:pw-123@mlflow.example",
                                 "http://:pw-123@10.0.0.5:5000", "postgresql://u:pw-123@db/mlflow",
                                 "http://10.0.0.5:5000/?password=pw-123", "databricks://u:pw-123@workspace"])
def test_a_password_in_any_uri_form_is_refused_and_never_echoed(uri, capsys, monkeypatch):
    from yxanul.files import uri_secret

    assert uri_secret(uri) is not None
    with pytest.raises(TrackingError, match="must not contain") as err:
        resolve_tracking_uri(uri)
    assert "pw-123" not in str(err.value)
    # The probe: `jobs.compare --tracking-uri http://user:PW@host` printed the password in its error.
    import jobs.compare

    assert run_job(jobs.compare.main, ["--sweep", "s", "--out", "unused", "--tracking-uri", uri]) == 2
    captured = capsys.readouterr()
    assert captured.err.splitlines() == [
        f"error: the tracking URI must not contain {uri_secret(uri)} (runs record their URI, and errors print it); "
        f"set MLFLOW_TRACKING_USERNAME and MLFLOW_TRACKING_PASSWORD instead"]
    assert "pw-123" not in captured.out + captured.err


def test_uris_without_secrets_pass():
    from yxanul.files import uri_secret

    for uri in ("http://10.0.0.5:5000", "http://alice@10.0.0.5:5000", "sqlite:////tmp/mlflow.db", "s3://bucket/x",
                "http://10.0.0.5:5000/?experiment=tokens"):
        assert uri_secret(uri) is None, uri


def test_secrets_are_written_0600_in_a_0700_folder_and_ray_tokens_tightened(tmp_path):
    from yxanul.files import secure_secret_file, write_secret

    folder = tmp_path / "secrets"
    folder.mkdir(mode=0o755)
    path = write_secret(folder / "auth_token", "ab" * 32)
    assert path.read_text() == "ab" * 32
    assert path.stat().st_mode & 0o777 == 0o600 and folder.stat().st_mode & 0o777 == 0o700
    assert [p.name for p in folder.iterdir()] == ["auth_token"]  # no temporary file left
    # What Ray 2.60 leaves behind (`ray get-auth-token --generate`, a local ray.init): 0644 in a 0755 folder.
    ray_dir = tmp_path / "home" / ".ray"
    ray_dir.mkdir(parents=True, mode=0o755)
    token = ray_dir / "auth_token"
    token.write_text("cd" * 32)
    token.chmod(0o644)
    ray_dir.chmod(0o755)
    assert secure_secret_file(token)
    assert token.stat().st_mode & 0o777 == 0o600 and ray_dir.stat().st_mode & 0o777 == 0o700
    assert not secure_secret_file(token)  # already private: nothing to change


def test_a_local_ray_listens_on_loopback_unless_switched_off(monkeypatch):
    """The switch the platform uses (yxanul.ray_session): Ray's local-only mode, which this session has on
    (tests/conftest.py) and which ensure_ray sets before its ray.init; YXANUL_RAY_LOOPBACK=0 turns it off.
    The listening sockets of a real head: tests/integration/test_job_submit.py."""
    import ray._private.ray_constants as ray_constants
    import ray._private.services as services

    from yxanul import ray_session

    assert os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] == "0" and not ray_constants.ENABLE_RAY_CLUSTER
    assert services.get_node_ip_address() == "127.0.0.1"  # what Ray binds its servers and exporters to
    assert services.resolve_ip_for_localhost("127.0.0.1") == "127.0.0.1"  # `ray start --node-ip-address=127.0.0.1`
    assert ray_session.local_server_env() == {"RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0"}
    monkeypatch.setenv("YXANUL_RAY_LOOPBACK", "0")
    assert ray_session.local_server_env() == {}
    monkeypatch.setattr(ray_constants, "ENABLE_RAY_CLUSTER", True)
    monkeypatch.setenv("YXANUL_RAY_LOOPBACK", "1")
    ray_session._use_loopback()  # Ray already imported (the jobs import ray.train first): its constant follows
    assert not ray_constants.ENABLE_RAY_CLUSTER


def test_jobs_make_the_ray_token_private_before_and_after_ray_writes_it(tmp_path, monkeypatch):
    from yxanul import ray_session

    token = tmp_path / ".ray" / "auth_token"
    token.parent.mkdir(mode=0o755)
    token.write_text("ef" * 32)
    token.chmod(0o644)  # as `ray get-auth-token --generate` and a local ray.init leave it
    token.parent.chmod(0o755)
    monkeypatch.setenv("HOME", str(tmp_path))
    ray_session._secure_tokens()  # what ensure_ray does around its ray.init
    assert token.stat().st_mode & 0o777 == 0o600 and token.parent.stat().st_mode & 0o777 == 0o700
    session_token = Path(os.environ["RAY_AUTH_TOKEN_PATH"])
    assert session_token.stat().st_mode & 0o077 == 0 and session_token.parent.stat().st_mode & 0o077 == 0
