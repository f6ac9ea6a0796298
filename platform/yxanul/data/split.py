"""The train/validation split rule, one place for jobs.prepare and the tokenizer's training sample.

A document belongs to the validation slice when a stable hash of its key falls below
``data.validation_fraction``. The key is the document id (``data.id_column``; built-in corpora: their
``id`` column, or for ``builtin:installed-python`` the top-level package, so that a whole package is on
one side), else the text itself. jobs.prepare holds that slice out of training, and the tokenizer
never trains on it, because both ask this module.
"""

from __future__ import annotations

import hashlib
from typing import Any

__all__ = ["held_out", "split_key_column"]


def split_key_column(source: Any) -> str | None:
    """Column whose value decides the split for ``source`` (a :class:`yxanul.corpora.Source`):
    ``data.id_column`` for user sources, a built-in corpus's own key column, or None (the text itself)."""
    return source.split_column


def held_out(doc_key: str, fraction: float) -> bool:
    """Whether a document (by its id, or its text when it has none) belongs to the validation slice.

    A stable hash (sha256), so the slice never changes between runs or machines.
    """
    if fraction <= 0:
        return False
    digest = hashlib.sha256(doc_key.encode("utf-8", "surrogatepass")).digest()
    return int.from_bytes(digest[:8], "big") / 2**64 < fraction
