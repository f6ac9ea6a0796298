"""Batch tokenization with bounded memory: the work each Ray Data actor does (and the benchmark's
single-process baseline), kept free of Ray so both run exactly the same code.

Memory: a ``tokenizers.Encoding`` holds ids, offsets, type ids and token strings, about a hundred
bytes per token, so a 50 MB document encoded in one call would need gigabytes. Texts are therefore
encoded in calls of at most ``call_chars`` characters, and a text longer than ``piece_chars`` is cut
into pieces at a single space between two non-space characters. For the byte-level BPE tokenizers of
:mod:`yxanul.tokenizer` (whose pre-tokenizer never joins a space to the token before it) such a cut
falls on a pre-token boundary, so the ids are identical to encoding the whole text at once; a
tokenizer whose merges cross spaces (SuperBPE) may differ by a token or two at each cut.
"""

from __future__ import annotations

from collections.abc import Sequence
from itertools import chain

import numpy as np

PIECE_CHARS = 1 << 18
"""Texts longer than this many characters are encoded in pieces of at most this size."""

CALL_CHARS = 1 << 20
"""Characters per ``encode_batch`` call (bounds the memory of the Encoding objects)."""


def split_long(text: str, piece_chars: int = PIECE_CHARS) -> list[str]:
    """``text`` cut into pieces of at most ``piece_chars`` characters, each cut before a single space
    between two non-space characters when one exists in the last half of the window."""
    if len(text) <= piece_chars:
        return [text]
    pieces, start, n = [], 0, len(text)
    while n - start > piece_chars:
        end = start + piece_chars
        cut = text.rfind(" ", start + piece_chars // 2, end)
        while cut > start and (text[cut - 1].isspace() or cut + 1 >= n or text[cut + 1].isspace()):
            cut = text.rfind(" ", start + piece_chars // 2, cut)
        if cut <= start:
            cut = end  # no suitable space (e.g. one 50 MB word): cut anywhere
        pieces.append(text[start:cut])
        start = cut
    pieces.append(text[start:])
    return pieces


def flatten_ids(ids: Sequence[Sequence[int]]) -> tuple[np.ndarray, np.ndarray]:
    """(all ids in one uint32 array, int64 length of each list): the compact form the pipeline keeps
    instead of millions of Python ints."""
    lengths = np.fromiter(map(len, ids), np.int64, count=len(ids))
    return np.fromiter(chain.from_iterable(ids), np.uint32, count=int(lengths.sum())), lengths


def encode_documents(tok, texts: Sequence[str], eos_id: int | None, *, piece_chars: int = PIECE_CHARS,
                     call_chars: int = CALL_CHARS) -> tuple[np.ndarray, np.ndarray]:
    """Token ids of ``texts`` (``eos_id`` appended to each unless None) as (flat uint32 ids, offsets).

    Document ``i`` is ``ids[offsets[i]:offsets[i + 1]]``. ``tok`` is a ``tokenizers.Tokenizer``.
    """
    doc_lengths = np.zeros(len(texts), np.int64)
    chunks: list[np.ndarray] = []
    pending: list[str] = []
    owners: list[int] = []
    pending_chars = 0

    def flush() -> None:
        nonlocal pending_chars
        if not pending:
            return
        # encode_batch_fast: the same ids without character offsets, which nothing here uses; in the
        # 2-core data benchmark (docs/benchmarks.md) it cut the pipeline's CPU time by about a fifth.
        flat, lengths = flatten_ids([enc.ids for enc in tok.encode_batch_fast(pending, add_special_tokens=False)])
        chunks.append(flat)
        np.add.at(doc_lengths, np.asarray(owners, np.int64), lengths)
        pending.clear()
        owners.clear()
        pending_chars = 0

    for index, text in enumerate(texts):
        for piece in split_long(text, piece_chars):
            pending.append(piece)
            owners.append(index)
            pending_chars += len(piece)
            if pending_chars >= call_chars:
                flush()
    flush()
    flat = np.concatenate(chunks) if chunks else np.empty(0, np.uint32)
    if eos_id is not None:
        ends = np.cumsum(doc_lengths)
        flat = np.insert(flat, ends, np.uint32(eos_id))
        doc_lengths += 1
    offsets = np.zeros(len(texts) + 1, np.int64)
    np.cumsum(doc_lengths, out=offsets[1:])
    return flat, offsets


class TokenizeBatch:
    """Ray Data actor: one tokenizer per actor; tokenizes the kept rows of a normalized batch.

    Output columns: ``source``, ``skip``, ``heldout``, ``num_bytes`` (passed through), ``tokens``
    (list<uint32>, EOS appended; empty for skipped rows) and ``pieces`` (list<int32>: for training
    rows in decompose mode, the chunk lengths of :func:`~yxanul.data.decompose.chunk_lengths`
    followed by the leftover length; empty otherwise).
    """

    def __init__(self, tokenizer: str, eos_id: int, decompose: tuple[int, int] | None) -> None:
        import os

        # One actor per core: the tokenizer's own thread pool would only oversubscribe the cores.
        os.environ["TOKENIZERS_PARALLELISM"] = "false"
        from yxanul.tokenizer import load_tokenizer

        self.tok = load_tokenizer(tokenizer)
        self.eos_id = eos_id
        self.decompose = decompose

    def __call__(self, batch):
        import pyarrow as pa

        from yxanul.data.decompose import chunk_lengths_batch

        n = batch.num_rows
        kept = batch.column("skip").is_null().to_numpy(zero_copy_only=False)
        texts = batch.column("text").filter(pa.array(kept)).to_pylist()
        flat, offsets = encode_documents(self.tok, texts, self.eos_id)
        doc_lengths = np.zeros(n, np.int64)
        doc_lengths[kept] = np.diff(offsets)
        row_offsets = np.zeros(n + 1, np.int32)
        np.cumsum(doc_lengths, out=row_offsets[1:])
        tokens = pa.ListArray.from_arrays(pa.array(row_offsets), pa.array(flat, pa.uint32()))

        piece_offsets = np.zeros(n + 1, np.int32)
        piece_values = np.empty(0, np.int32)
        if self.decompose is not None:
            lo, hi = self.decompose
            train = kept & ~batch.column("heldout").to_numpy(zero_copy_only=False)
            piece_values, per_doc = chunk_lengths_batch(doc_lengths[train], lo, hi)
            counts = np.zeros(n, np.int64)
            counts[train] = per_doc
            np.cumsum(counts, out=piece_offsets[1:])
        pieces = pa.ListArray.from_arrays(pa.array(piece_offsets), pa.array(piece_values.astype(np.int32)))
        return pa.table({
            "source": batch.column("source"),
            "skip": batch.column("skip"),
            "heldout": batch.column("heldout"),
            "num_bytes": batch.column("num_bytes"),
            "tokens": tokens,
            "pieces": pieces,
        })
