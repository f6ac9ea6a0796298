"""Pure dataset-decomposition and packing arithmetic (no Ray, no I/O; unit-tested on its own).

Decomposition (Pouransari et al. 2024, "Dataset Decomposition"): a document of ``n`` tokens (EOS
included) is cut, in order, into ``n // max_bucket`` chunks of ``max_bucket`` tokens, then one chunk
per set bit of the remainder that is at least ``min_bucket`` (largest first), then a leftover of
``n % min_bucket`` tokens. Example (8..2048): 1000 = 512 + 256 + 128 + 64 + 32 + 8, leftover 0;
5000 = 2048 + 2048 + 512 + 256 + 128 + 8, leftover 0; 13 = 8, leftover 5.

The leftover is always the document's tail (it ends with its EOS); leftovers of consecutive
documents are packed together into ``min_bucket``-token rows by :class:`Packer`, so document
boundaries inside such a row are marked by EOS.
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np


def bucket_lengths(min_bucket: int, max_bucket: int) -> list[int]:
    """All bucket lengths: the powers of two from ``min_bucket`` to ``max_bucket``."""
    _check_bounds(min_bucket, max_bucket)
    out, length = [], min_bucket
    while length <= max_bucket:
        out.append(length)
        length *= 2
    return out


def chunk_lengths(n: int, min_bucket: int, max_bucket: int) -> tuple[list[int], int]:
    """(chunk lengths in document order, leftover length) for a document of ``n`` tokens.

    Invariants: ``sum(chunks) + leftover == n``; every chunk is a power of two in
    ``[min_bucket, max_bucket]``; ``0 <= leftover < min_bucket``.
    """
    _check_bounds(min_bucket, max_bucket)
    if n < 0:
        raise ValueError(f"document length must be >= 0, got {n}")
    chunks = [max_bucket] * (n // max_bucket)
    rest = n % max_bucket
    bit = max_bucket >> 1
    while bit >= min_bucket:
        if rest & bit:
            chunks.append(bit)
        bit >>= 1
    return chunks, rest % min_bucket


def chunk_lengths_batch(lengths: np.ndarray, min_bucket: int, max_bucket: int) -> tuple[np.ndarray, np.ndarray]:
    """:func:`chunk_lengths` of many documents at once, vectorised: (piece lengths, pieces per document).

    The pieces of document ``i`` are its chunk lengths in order followed by its leftover length
    (always present, possibly 0), i.e. ``chunk_lengths(n, ...)[0] + [leftover]``; they are the
    ``counts[i]`` consecutive entries of ``pieces`` after those of documents ``0..i-1``.
    """
    _check_bounds(min_bucket, max_bucket)
    n = np.asarray(lengths, np.int64)
    if n.size and n.min() < 0:
        raise ValueError(f"document length must be >= 0, got {int(n.min())}")
    bits = [max_bucket >> k for k in range(1, max_bucket.bit_length()) if max_bucket >> k >= min_bucket]
    rest = n % max_bucket
    # one column per kind of piece, in document order: max_bucket chunks, one per bit, the leftover
    counts = np.empty((n.size, len(bits) + 2), np.int64)
    values = np.empty_like(counts)
    counts[:, 0], values[:, 0] = n // max_bucket, max_bucket
    for j, bit in enumerate(bits, 1):
        counts[:, j], values[:, j] = (rest & bit) != 0, bit
    counts[:, -1], values[:, -1] = 1, rest % min_bucket
    return np.repeat(values.ravel(), counts.ravel()), counts.sum(axis=1)


def decompose(tokens: np.ndarray, min_bucket: int, max_bucket: int) -> tuple[list[np.ndarray], np.ndarray]:
    """Cut one document's tokens into (power-of-two chunks, leftover); views of ``tokens``, in order."""
    lengths, leftover = chunk_lengths(len(tokens), min_bucket, max_bucket)
    chunks, start = [], 0
    for length in lengths:
        chunks.append(tokens[start:start + length])
        start += length
    return chunks, tokens[start:start + leftover]


class Packer:
    """Concatenates token arrays and cuts them into rows of exactly ``length`` tokens.

    ``add`` returns the completed rows (shape ``(k, length)``); tokens that do not fill a row yet
    are carried to the next call. ``residual`` is what is left at the end (fewer than ``length``).
    """

    def __init__(self, length: int, dtype: np.dtype | type = np.uint32) -> None:
        if length <= 0:
            raise ValueError(f"row length must be > 0, got {length}")
        self.length = length
        self._dtype = np.dtype(dtype)
        self._carry = np.empty(0, self._dtype)

    def add(self, tokens: np.ndarray | Iterable[np.ndarray]) -> np.ndarray:
        parts = [tokens] if isinstance(tokens, np.ndarray) else list(tokens)
        if self._carry.size:
            parts.insert(0, self._carry)
        stream = np.concatenate(parts).astype(self._dtype, copy=False) if parts else self._carry
        rows = stream.size // self.length
        cut = rows * self.length
        self._carry = stream[cut:].copy()
        return stream[:cut].reshape(rows, self.length)

    @property
    def residual(self) -> np.ndarray:
        """Tokens not yet in a row (always fewer than ``length``)."""
        return self._carry


def pack(documents: Iterable[np.ndarray], length: int) -> tuple[np.ndarray, np.ndarray]:
    """(rows of ``length`` tokens, residual) of the documents concatenated in order."""
    packer = Packer(length)
    rows = [packer.add(doc) for doc in documents]
    rows = [r for r in rows if r.size]
    out = np.concatenate(rows) if rows else np.empty((0, length), np.uint32)
    return out, packer.residual


def _check_bounds(min_bucket: int, max_bucket: int) -> None:
    for value in (min_bucket, max_bucket):
        if value <= 0 or value & (value - 1):
            raise ValueError(f"bucket lengths must be powers of two, got {value}")
    if min_bucket > max_bucket:
        raise ValueError(f"min_bucket {min_bucket} > max_bucket {max_bucket}")
