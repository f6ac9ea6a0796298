"""Ordered parquet writing of the prepared dataset (driver side): part files per bucket / domain."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

ROW_GROUP_BYTES = 1 << 20
"""Buffered bytes per output directory before a row group is written. A row group is the unit the training
stream reads and orders (yxanul.data.loader; it mixes the rows of data.shuffle_window row groups at a time), so
it is kept small: 1 MiB is 128 rows of 2048 tokens, and a run reads consecutive steps from many places of the
corpus. At 8 MiB (2M tokens of consecutive packed text per row group) ~32 steps in a row came from one stretch
of the corpus: with a second source written after the first, a whole block of English steps late in a code run
(docs/results/calibration/README.md)."""

FILE_BYTES = 256 << 20
"""A part file is closed and the next one opened after about this many bytes."""


def bucket_schema(length: int) -> pa.Schema:
    return pa.schema([pa.field("tokens", pa.list_(pa.uint32(), length), nullable=False)])


VALIDATION_SCHEMA = pa.schema([pa.field("tokens", pa.list_(pa.uint32()), nullable=False),
                               pa.field("num_bytes", pa.int64(), nullable=False)])


class PartWriter:
    """Writes tables to ``<root>/<subdir>/part-00000.parquet``, ``part-00001...`` in arrival order."""

    def __init__(self, root: Path, row_group_bytes: int = ROW_GROUP_BYTES, file_bytes: int = FILE_BYTES) -> None:
        self.root = root
        self.row_group_bytes = row_group_bytes
        self.file_bytes = file_bytes
        self._schemas: dict[str, pa.Schema] = {}
        self._buffers: dict[str, list[pa.Table]] = {}
        self._buffered: dict[str, int] = {}
        self._writers: dict[str, pq.ParquetWriter] = {}
        self._written: dict[str, int] = {}
        self.files: dict[str, list[str]] = {}
        """subdir -> part files (relative to root), in order."""
        self.rows: dict[str, int] = {}

    def add(self, subdir: str, table: pa.Table) -> None:
        if table.num_rows == 0:
            return
        schema = self._schemas.setdefault(subdir, table.schema)
        self._buffers.setdefault(subdir, []).append(table.cast(schema))
        self._buffered[subdir] = self._buffered.get(subdir, 0) + table.nbytes
        self.rows[subdir] = self.rows.get(subdir, 0) + table.num_rows
        if self._buffered[subdir] >= self.row_group_bytes:
            self._flush(subdir)

    def add_fixed(self, subdir: str, rows: np.ndarray | pa.Array, length: int) -> None:
        """Add token rows of exactly ``length`` (a (k, length) array, or the flat values of k rows)."""
        values = rows.reshape(-1) if isinstance(rows, np.ndarray) else rows
        if len(values) == 0:
            return
        array = pa.FixedSizeListArray.from_arrays(pa.array(values, pa.uint32()), length)
        self.add(subdir, pa.Table.from_arrays([array], schema=bucket_schema(length)))

    def _flush(self, subdir: str) -> None:
        tables = self._buffers.pop(subdir, [])
        self._buffered[subdir] = 0
        if not tables:
            return
        table = pa.concat_tables(tables)
        writer = self._writers.get(subdir)
        if writer is None:
            parts = self.files.setdefault(subdir, [])
            rel = f"{subdir}/part-{len(parts):05d}.parquet"
            (self.root / subdir).mkdir(parents=True, exist_ok=True)
            writer = pq.ParquetWriter(self.root / rel, self._schemas[subdir])
            self._writers[subdir] = writer
            self._written[subdir] = 0
            parts.append(rel)
        writer.write_table(table, row_group_size=table.num_rows)
        self._written[subdir] += table.nbytes
        if self._written[subdir] >= self.file_bytes:
            writer.close()
            del self._writers[subdir]

    def close(self) -> None:
        for subdir in list(self._buffers):
            self._flush(subdir)
        for writer in self._writers.values():
            writer.close()
        self._writers.clear()

    def abort(self) -> None:
        for writer in self._writers.values():
            try:
                writer.close()
            except Exception:  # the output is being thrown away; a second error would hide the first
                pass
        self._writers.clear()
