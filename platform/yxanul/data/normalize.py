"""Per-source cleaning (a Ray Data task per read block): text checks, skip reasons, held-out split.

Every row of a source comes out, with ``skip`` set to the reason when its text is unusable, so the
driver can count skipped rows by reason and source. Columns out: ``text`` (large_string; null when
skipped), ``skip`` (string: ``null``, ``empty``, ``whitespace``, ``invalid_utf8``, ``null_id``, or
null when kept), ``source`` (int32 index), ``heldout`` (bool: validation rather than training),
``num_bytes`` (int64: UTF-8 bytes of the text).
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from yxanul.data.split import held_out
from yxanul.errors import DataError

SKIP_REASONS = ("null", "empty", "whitespace", "invalid_utf8", "null_id")


def is_text_type(dtype: pa.DataType) -> bool:
    return (pa.types.is_string(dtype) or pa.types.is_large_string(dtype) or pa.types.is_binary(dtype)
            or pa.types.is_large_binary(dtype) or pa.types.is_null(dtype))


def _as_text(col: pa.Array) -> tuple[pa.Array, np.ndarray]:
    """(large_string array with invalid UTF-8 rows nulled, mask of invalid rows)."""
    n = len(col)
    invalid = np.zeros(n, bool)
    if pa.types.is_null(col.type):
        return pa.nulls(n, pa.large_string()), invalid
    if pa.types.is_string(col.type) or pa.types.is_large_string(col.type):
        col = col.cast(pa.large_string())
        try:
            col.validate(full=True)  # parquet does not validate UTF-8 on read
            return col, invalid
        except pa.ArrowInvalid:
            col = col.view(pa.large_binary())
    values = []
    for i, raw in enumerate(col.cast(pa.large_binary()).to_pylist()):
        if raw is None:
            values.append(None)
            continue
        try:
            values.append(raw.decode("utf-8"))
        except UnicodeDecodeError:
            invalid[i] = True
            values.append(None)
    return pa.array(values, pa.large_string()), invalid


def normalize_batch(batch: pa.Table, *, source_index: int, spec: str, text_column: str,
                    id_column: str | None, validation_fraction: float, validation: bool) -> pa.Table:
    """Clean one block of a source; see the module docstring for the columns."""
    for column in [text_column] + ([id_column] if id_column else []):
        if column not in batch.column_names:
            raise DataError(f"{spec} has no column {column!r}; its columns: {', '.join(batch.column_names)}")
    col = batch.column(text_column).combine_chunks()
    if not is_text_type(col.type):
        raise DataError(f"{spec}: column {text_column!r} has type {col.type}, not text; set data.text_column "
                        "to the column holding the document text")
    text, invalid = _as_text(col)
    n = len(text)
    nbytes = pc.binary_length(text).fill_null(0).to_numpy(zero_copy_only=False).astype(np.int64)
    is_null = text.is_null().to_numpy(zero_copy_only=False) & ~invalid
    empty = (nbytes == 0) & ~is_null & ~invalid
    trimmed = pc.binary_length(pc.utf8_trim_whitespace(text)).fill_null(0).to_numpy(zero_copy_only=False)
    blank = (trimmed == 0) & ~empty & ~is_null & ~invalid
    reason = np.full(n, None, object)
    reason[is_null] = "null"
    reason[empty] = "empty"
    reason[blank] = "whitespace"
    reason[invalid] = "invalid_utf8"

    if validation:
        heldout = np.ones(n, bool)
    elif validation_fraction <= 0:
        heldout = np.zeros(n, bool)
    else:
        # The split key is the document id (data.id_column; built-in corpora: their `id`), else the
        # text itself, hashed by yxanul.data.split.held_out: the tokenizer never trains on this slice.
        if id_column:
            keys = [None if v is None else str(v) for v in batch.column(id_column).to_pylist()]
            for i, key in enumerate(keys):
                if key is None and reason[i] is None:
                    reason[i] = "null_id"
        else:
            keys = text.to_pylist()
        heldout = np.fromiter(
            (key is not None and held_out(key, validation_fraction) for key in keys), bool, count=n)
    kept = pa.array(np.equal(reason, None))
    return pa.table({
        "text": pc.if_else(kept, text, pa.scalar(None, pa.large_string())),
        "skip": pa.array(reason, pa.string()),
        "source": pa.array(np.full(n, source_index, np.int32)),
        "heldout": pa.array(heldout),
        "num_bytes": pa.array(nbytes),
    })
