"""Decomposition and packing invariants (pure functions, no Ray), checked as properties."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from yxanul.data.decompose import Packer, bucket_lengths, chunk_lengths, chunk_lengths_batch, decompose, pack

bounds = st.tuples(st.integers(0, 6), st.integers(0, 6)).map(
    lambda ab: (2 ** min(ab[0], ab[1]) * 2, 2 ** max(ab[0], ab[1]) * 2))  # (min, max), powers of two >= 2


def test_examples_from_the_design():
    assert chunk_lengths(1000, 8, 2048) == ([512, 256, 128, 64, 32, 8], 0)
    assert chunk_lengths(5000, 8, 2048) == ([2048, 2048, 512, 256, 128, 8], 0)
    assert chunk_lengths(13, 8, 2048) == ([8], 5)
    assert chunk_lengths(7, 8, 2048) == ([], 7)
    assert chunk_lengths(0, 8, 2048) == ([], 0)
    assert bucket_lengths(8, 64) == [8, 16, 32, 64]


@settings(max_examples=300, deadline=None)
@given(n=st.integers(0, 20000), b=bounds)
def test_chunk_lengths_are_powers_of_two_in_bounds_and_cover_the_document(n, b):
    lo, hi = b
    chunks, leftover = chunk_lengths(n, lo, hi)
    assert sum(chunks) + leftover == n
    assert 0 <= leftover < lo
    for c in chunks:
        assert lo <= c <= hi and c & (c - 1) == 0
    # longer documents fill max-length chunks first, then strictly decreasing powers of two
    full = n // hi
    assert chunks[:full] == [hi] * full
    rest = chunks[full:]
    assert rest == sorted(set(rest), reverse=True) and all(c < hi for c in rest)


@settings(max_examples=200, deadline=None)
@given(docs=st.lists(st.integers(0, 3000), min_size=1, max_size=20), b=bounds)
def test_every_token_lands_in_exactly_one_chunk(docs, b):
    lo, hi = b
    # distinct token values, so "exactly once" is checked by identity, not by count
    total = sum(docs)
    stream = np.arange(total, dtype=np.uint32)
    offsets = np.concatenate([[0], np.cumsum(docs)])
    buckets: dict[int, list[np.ndarray]] = {}
    leftovers = []
    for i in range(len(docs)):
        doc = stream[offsets[i]:offsets[i + 1]]
        chunks, leftover = decompose(doc, lo, hi)
        assert np.array_equal(np.concatenate(chunks + [leftover]), doc)  # in order, contiguous
        for c in chunks:
            buckets.setdefault(len(c), []).append(c)
        leftovers.append(leftover)
    rows, residual = pack(leftovers, lo)
    assert rows.shape[1] == lo and residual.size < lo
    seen = np.concatenate([c for cs in buckets.values() for c in cs] + [rows.reshape(-1), residual])
    assert np.array_equal(np.sort(seen), stream)  # each token exactly once
    assert set(buckets) <= set(bucket_lengths(lo, hi))


@settings(max_examples=200, deadline=None)
@given(docs=st.lists(st.integers(0, 20000), max_size=40), b=bounds)
def test_vectorised_chunk_lengths_equal_the_per_document_ones(docs, b):
    lo, hi = b
    pieces, counts = chunk_lengths_batch(np.array(docs, np.int64), lo, hi)
    expected = [(chunks + [leftover]) for chunks, leftover in (chunk_lengths(n, lo, hi) for n in docs)]
    assert counts.tolist() == [len(e) for e in expected]
    assert pieces.tolist() == [p for e in expected for p in e]


@settings(max_examples=200, deadline=None)
@given(docs=st.lists(st.integers(0, 500), max_size=30), length=st.integers(1, 300))
def test_packer_matches_one_shot_packing(docs, length):
    rng = np.random.default_rng(len(docs))
    arrays = [rng.integers(0, 1000, size=n).astype(np.uint32) for n in docs]
    packer = Packer(length)
    rows = [packer.add(a) for a in arrays]
    flat = np.concatenate(arrays) if arrays else np.empty(0, np.uint32)
    got = np.concatenate([r.reshape(-1) for r in rows] + [packer.residual])
    assert np.array_equal(got, flat)
    assert all(r.shape[1] == length for r in rows)
    assert packer.residual.size == flat.size % length


def test_bad_bounds_are_rejected():
    with pytest.raises(ValueError, match="powers of two"):
        chunk_lengths(10, 6, 64)
    with pytest.raises(ValueError, match="min_bucket"):
        bucket_lengths(64, 8)
    with pytest.raises(ValueError, match=">= 0"):
        chunk_lengths_batch(np.array([3, -1]), 8, 64)
