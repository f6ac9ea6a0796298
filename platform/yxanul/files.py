"""Paths and files: URIs versus local paths, local paths made absolute, and atomic writes.

    storage = absolute_path(cfg.run.storage_path)     # "s3://b/x" unchanged; "outputs/ray" -> "/abs/outputs/ray"
    atomic_write(path, text)                           # readers see the old file or the new one, never half
    with atomic_path(out) as tmp:                      # for writers that want a path (pyarrow, torch.save)
        pq.write_table(table, tmp)
"""

from __future__ import annotations

import contextlib
import os
import re
import tempfile
from collections.abc import Iterator
from pathlib import Path

__all__ = ["absolute_path", "atomic_path", "atomic_write", "is_uri"]

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


def atomic_write(path: str | os.PathLike[str], data: str | bytes) -> Path:
    """Write ``data`` (text as UTF-8, or bytes) to ``path`` atomically (:func:`atomic_path`); return the path."""
    with atomic_path(path) as tmp:
        tmp.write_bytes(data.encode("utf-8") if isinstance(data, str) else data)
    return Path(path)
