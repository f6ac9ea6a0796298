"""Paths and files: URIs versus local paths, local paths made absolute, and atomic writes.

    storage = absolute_path(cfg.run.storage_path)     # "s3://b/x" unchanged; "outputs/ray" -> "/abs/outputs/ray"
    atomic_write(path, text)                           # readers see the old file or the new one, never half
    with atomic_path(out) as tmp:                      # for writers that want a path (pyarrow, torch.save)
        pq.write_table(table, tmp)
    sha256_file(path)                                  # hex digest, read in 1 MiB blocks (or into a digest)
    write_secret(path, token)                          # 0600 file in a 0700 folder, never readable by others
    uri_secret(uri)                                    # "a password" when the URI carries one, else None
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
import tempfile
import urllib.parse
from collections.abc import Iterator
from pathlib import Path
from typing import Any

__all__ = ["absolute_path", "atomic_path", "atomic_write", "check_writable", "is_uri", "secure_secret_file",
           "sha256_file", "uri_secret", "write_secret"]

_SCHEME = re.compile(r"^[A-Za-z][A-Za-z0-9+.\-]*://")


def is_uri(spec: str) -> bool:
    """``scheme://...`` (s3, gs, hdfs, abfs, file, ...): passed through to pyarrow / Ray Data."""
    return _SCHEME.match(spec) is not None


def absolute_path(path: str) -> str:
    """A URI unchanged; a local path with ``~`` expanded and made absolute (against the current folder).

    Drivers resolve once: Ray workers and Tune trials run in other folders."""
    if is_uri(path):
        return path
    return str(Path(path).expanduser().resolve())


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a fresh temporary path beside ``path`` (same folder, so the rename is atomic); when the
    block ends without an error, rename it over ``path``; otherwise remove it.

    The temporary name is unique per call (``mkstemp``), so concurrent writers never share one; the
    last rename wins, and a reader never sees a partly written file.
    """
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp")
    os.close(fd)
    tmp = Path(name)
    try:
        yield tmp
        os.replace(tmp, target)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def check_writable(folder: str, key: str) -> None:
    """Raise a one-line :class:`~yxanul.errors.ConfigError` naming ``key`` unless ``folder`` (a path or a URI)
    can be created and written: checked before anything is started that would then be left half done (an
    MLflow run nothing ends, a Ray run folder without its files)."""
    from yxanul.errors import ConfigError, first_line

    try:
        if is_uri(folder):
            import pyarrow.fs

            fs, base = pyarrow.fs.FileSystem.from_uri(folder)
            probe = f"{base.rstrip('/')}/.yxanul-write-probe-{os.getpid()}"
            with fs.open_output_stream(probe) as stream:  # object stores have no folders to create first
                stream.write(b"")
            fs.delete_file(probe)
        else:
            # Probe in the deepest folder that exists, and leave nothing behind: creating the folder is the
            # job's, later (a failing check of something else must not leave an empty run folder).
            existing = Path(folder)
            while not existing.exists() and existing != existing.parent:
                existing = existing.parent
            os.rmdir(tempfile.mkdtemp(prefix=".yxanul-write-probe-", dir=existing))
    except (OSError, ValueError) as exc:
        raise ConfigError(f"{key}: cannot write {folder} ({first_line(exc)}); choose a folder (or bucket) this job "
                          f"can write") from None


def atomic_write(path: str | os.PathLike[str], data: str | bytes) -> Path:
    """Write ``data`` (text as UTF-8, or bytes) to ``path`` atomically (:func:`atomic_path`); return the path."""
    with atomic_path(path) as tmp:
        tmp.write_bytes(data.encode("utf-8") if isinstance(data, str) else data)
    return Path(path)


def sha256_file(path: str | os.PathLike[str], digest: Any = None) -> str:
    """The sha256 hex digest of a file (read in 1 MiB blocks: checkpoints are gigabytes); with ``digest`` (a
    ``hashlib`` object) the file's bytes are added to it and its digest so far is returned (several files, one hash)."""
    digest = digest if digest is not None else hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def write_secret(path: str | os.PathLike[str], text: str) -> Path:
    """Write a secret (a token, a password file) readable by its owner only: the file 0600, its folder 0700.

    The file is created with mode 0600 (never briefly world-readable, as ``write_text`` then ``chmod`` would
    leave it), in a temporary name beside it that is renamed over ``path``."""
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    secure_secret_file(target)  # the folder (and an old file) of this user: 0700 / 0600
    fd, name = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp")  # mode 0600
    try:
        with os.fdopen(fd, "w") as fh:
            fh.write(text)
        os.replace(name, target)
    except BaseException:
        Path(name).unlink(missing_ok=True)
        raise
    return target


def secure_secret_file(path: str | os.PathLike[str]) -> bool:
    """Make an existing secret file of this user 0600 and its folder 0700 (Ray 2.60 writes ``~/.ray/auth_token``
    0644 in a 0755 folder); return whether anything changed. Files of other users are left alone."""
    target = Path(path)
    changed = False
    for item, mode in ((target.parent, 0o700), (target, 0o600)):
        try:
            info = item.stat()
        except OSError:
            continue
        if info.st_uid == os.getuid() and info.st_mode & 0o077:
            os.chmod(item, mode)
            changed = True
    return changed


_SECRET_QUERY = re.compile(r"(?i)(password|passwd|pwd|secret|token|api[_-]?key)")


def uri_secret(uri: str) -> str | None:
    """What secret a URI carries, in words (``"a password"``, ``"a token in its query"``), or None.

    Userinfo passwords in any scheme (``http://user:PW@host``, ``postgresql://u:PW@h/db``, ``http://:PW@h``) and
    query parameters named like a secret. The secret itself is never part of the answer, so callers can put
    the answer in an error line."""
    try:
        parts = urllib.parse.urlsplit(uri.strip())
    except ValueError:
        return None
    if parts.password is not None or (parts.username is not None and ":" in parts.netloc.split("@", 1)[0]):
        return "a password"
    if any(_SECRET_QUERY.search(key) for key, _ in urllib.parse.parse_qsl(parts.query, keep_blank_values=True)):
        return "a secret in its query"
    return None
