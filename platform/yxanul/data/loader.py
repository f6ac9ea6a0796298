"""Reading a prepared dataset in training workers: seeded, sharded, lazy, resumable.

How a curriculum stage maps to data
-----------------------------------
A stage of sequence length ``S`` reads rows of one or more buckets ``L`` (``L`` a multiple of ``S``);
each ``L``-token row is cut into ``L / S`` consecutive pieces, each piece one training sequence.

- packed dataset (one bucket ``R = data.seq_len``): any stage whose ``S`` divides ``R`` (rows reshaped);
- decomposed dataset: by default the stage reads the bucket ``L = S`` (coherent chunks of documents);
  ``buckets: [...]`` in a stage lists others (each a multiple of ``S``).

A stage whose buckets the dataset does not hold is a :class:`~yxanul.errors.DataError` naming the dataset,
the curriculum and the fix, raised before training starts (:meth:`PreparedDataset.check_plan`).

Order and sharding
------------------
The unit of reading is a parquet row group. For stage ``k`` and epoch ``e`` the row groups of the stage's
buckets are put in an order drawn from ``numpy.random.default_rng([seed, k, e])``, and that order is cut into
consecutive windows of ``w = data.shuffle_window`` row groups (the epoch's last window may be shorter). The rows
of all row groups of a window are permuted together, by ``default_rng([seed, k, e, u])`` with ``u`` the
window's first row group (its index in the stage's list), so consecutive sequences, and so one optimizer
step, mix rows of up to ``w`` row groups rather than a slice of one (~1 MiB of consecutive packed text). The
``L / S`` pieces of one row stay consecutive. With ``w = 1`` this is the per-row-group order that came before
the window. That fixes one global sequence order per epoch, independent of precision, hardware and timing.
Worker ``r`` of ``W`` takes the contiguous slice ``[r*M, (r+1)*M)`` of it (``M = N // W``; the last
``N mod W`` sequences of an epoch are dropped), so each worker reads only the row groups its slice touches,
each once per epoch, and holds at most one window's row groups (``w`` of ~1 MiB each) in memory at a time.

Position
--------
A stream's position is the number of sequences it has handed out in the stage (:meth:`TrainStream.state`);
:meth:`TrainStream.seek` jumps there from metadata alone (no data is read to skip), which is how a resumed
run continues exactly where its checkpoint was taken.
"""

from __future__ import annotations

import bisect
import json
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from yxanul.errors import DataError

__all__ = ["PreparedDataset", "TrainStream", "ValidationSet", "load_validation", "unigram_bpb"]


@dataclass(frozen=True)
class _Unit:
    bucket: int
    file: Path
    row_group: int
    rows: int


@dataclass
class PreparedDataset:
    """A prepared dataset directory (see the contract in docs/data.md): manifest + bucket files."""

    path: Path
    manifest: dict[str, Any]
    bucket_files: dict[int, list[Path]]
    validation_files: dict[str, list[Path]]
    _units: dict[int, list[_Unit]] = field(default_factory=dict, repr=False)

    @classmethod
    def open(cls, path: str | Path) -> PreparedDataset:
        """Open ``path``; a missing or incomplete dataset is a DataError that says how to make it."""
        path = Path(path).expanduser()
        manifest_path = path / "manifest.json"
        if not manifest_path.is_file():
            raise DataError(f"no prepared dataset at {path} (manifest.json is missing, so it was never prepared or "
                            f"preparation did not finish); run `python -m jobs.prepare CONFIG` with data.output_dir="
                            f"{path}, or point data.output_dir at a prepared dataset")
        try:
            manifest = json.loads(manifest_path.read_text())
        except json.JSONDecodeError as exc:
            raise DataError(f"{manifest_path} is not valid JSON ({exc}); prepare the dataset again") from None
        buckets: dict[int, list[Path]] = {}
        for key, info in (manifest.get("buckets") or {}).items():
            files = [path / f for f in info.get("files", [])] or sorted((path / f"bucket={key}").glob("*.parquet"))
            if int(info.get("sequences", 1)) > 0 and files:
                buckets[int(key)] = files
        validation: dict[str, list[Path]] = {}
        for domain, info in (manifest.get("validation") or {}).items():
            files = [path / f for f in info.get("files", [])] or sorted((path / "validation" / domain).glob("*.parquet"))
            if files:
                validation[domain] = files
        return cls(path=path, manifest=manifest, bucket_files=buckets, validation_files=validation)

    @property
    def mode(self) -> str:
        return str(self.manifest.get("mode", "decompose"))

    @property
    def vocab_size(self) -> int | None:
        value = (self.manifest.get("tokenizer") or {}).get("vocab_size")
        return int(value) if value is not None else None

    @property
    def buckets(self) -> list[int]:
        return sorted(self.bucket_files)

    def seq_len_ok(self, seq_len: int) -> bool:
        """Whether a stage of this length can be served with its default buckets."""
        return bool(self.default_buckets(seq_len))

    def default_buckets(self, seq_len: int) -> tuple[int, ...]:
        if self.mode == "packed":
            return tuple(b for b in self.buckets if b % seq_len == 0)
        return (seq_len,) if seq_len in self.bucket_files else ()

    def stage_buckets(self, seq_len: int, buckets: Iterable[int] | None, where: str, curriculum: str) -> tuple[int, ...]:
        """The buckets a stage reads, or a DataError naming the dataset, the curriculum and the fix."""
        have = ", ".join(map(str, self.buckets)) or "none"
        if buckets is None:
            chosen = self.default_buckets(seq_len)
            if not chosen:
                if self.mode == "packed":
                    fix = (f"use a curriculum whose seq_lens divide the packed row length, or prepare the data with "
                           f"data.mode=packed data.seq_len=<a multiple of {seq_len}>")
                else:
                    fix = (f"prepare the data with data.min_bucket <= {seq_len} <= data.max_bucket, or list existing "
                           f"buckets (multiples of {seq_len}) in the stage's `buckets`")
                raise DataError(f"{where} of curriculum {curriculum!r} needs {seq_len}-token sequences, but the "
                                f"{self.mode} dataset {self.path} has buckets [{have}]; {fix}")
            return chosen
        missing = [b for b in buckets if b not in self.bucket_files]
        if missing:
            raise DataError(f"{where} of curriculum {curriculum!r} reads buckets {missing} that the {self.mode} dataset "
                            f"{self.path} does not have (it has [{have}]); prepare it with data.mode=decompose and "
                            f"data.min_bucket/max_bucket covering them, or change the stage's buckets")
        return tuple(sorted(set(buckets)))

    def check_plan(self, plan: Any, curriculum: str) -> None:
        """Fail before training if any stage of ``plan`` (a CurriculumPlan) cannot be served."""
        for stage in plan.stages:
            where = f"stage {stage.index} (seq_len {stage.seq_len})"
            chosen = self.stage_buckets(stage.seq_len, stage.buckets, where, curriculum)
            sequences = sum(self._bucket_rows(b) * (b // stage.seq_len) for b in chosen)
            if sequences // plan.num_workers == 0:
                raise DataError(f"{where} of curriculum {curriculum!r}: buckets {list(chosen)} of {self.path} hold "
                                f"{sequences} sequences, fewer than the {plan.num_workers} workers; prepare more data")

    def units(self, bucket: int) -> list[_Unit]:
        """Row groups of one bucket, in manifest file order (parquet footers only; no data is read)."""
        if bucket not in self._units:
            import pyarrow.parquet as pq

            found = []
            for file in self.bucket_files[bucket]:
                try:
                    meta = pq.ParquetFile(file).metadata
                except (OSError, ValueError) as exc:
                    raise DataError(f"cannot read {file} of the prepared dataset {self.path}: {exc}") from None
                found += [_Unit(bucket, file, i, meta.row_group(i).num_rows) for i in range(meta.num_row_groups)
                          if meta.row_group(i).num_rows > 0]
            self._units[bucket] = found
        return self._units[bucket]

    def _bucket_rows(self, bucket: int) -> int:
        return sum(u.rows for u in self.units(bucket))


def _read_rows(unit: _Unit) -> np.ndarray:
    """Decode one row group of a bucket file into a (rows, L) uint32 array."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    table = pq.ParquetFile(unit.file).read_row_group(unit.row_group, columns=["tokens"])
    column = table.column("tokens").combine_chunks()
    if not pa.types.is_fixed_size_list(column.type) and not pa.types.is_list(column.type):
        raise DataError(f"{unit.file}: column 'tokens' has type {column.type}, expected fixed_size_list<uint32>")
    flat = column.flatten().to_numpy(zero_copy_only=False)
    if flat.size != unit.rows * unit.bucket:
        raise DataError(f"{unit.file} (bucket {unit.bucket}): row group {unit.row_group} holds {flat.size} tokens for "
                        f"{unit.rows} rows, not {unit.bucket} per row; prepare the dataset again")
    return flat.reshape(unit.rows, unit.bucket)


class _Window:
    """One shuffle window of an epoch: which sequence of the window's units each position is, and the units'
    rows, read when a position first needs them and dropped with the window."""

    def __init__(self, stream: TrainStream, epoch: int, index: int, units: np.ndarray) -> None:
        self.epoch, self.index = epoch, index
        rows = stream._rows[units]
        self._members = [stream._units[int(u)] for u in units]
        self._row_start = np.concatenate([[0], np.cumsum(rows)])  # window row of each unit's first row
        # Keyed by the window's first unit, so a window of one unit draws exactly the per-row-group order.
        key = [stream.seed, stream.stage_index, epoch, int(units[0])]
        self._row_order = np.random.default_rng(key).permutation(int(self._row_start[-1]))
        pieces = np.repeat(stream._pieces[units], rows)[self._row_order]  # pieces of each row along the order
        self._seq_start = np.concatenate([[0], np.cumsum(pieces)])
        self._seq_len = stream.seq_len
        self._loaded: dict[int, np.ndarray] = {}

    @property
    def sequences(self) -> int:
        return int(self._seq_start[-1])

    def take(self, start: int, count: int) -> np.ndarray:
        """Sequences ``[start, start + count)`` of the window as a (count, seq_len) array."""
        position = np.arange(start, start + count)
        slot = np.searchsorted(self._seq_start, position, side="right") - 1
        piece = position - self._seq_start[slot]
        row = self._row_order[slot]  # (count,) window rows
        member = np.searchsorted(self._row_start, row, side="right") - 1  # which of the window's units
        local = row - self._row_start[member]
        out = np.empty((count, self._seq_len), dtype=np.int64)
        for m in map(int, np.unique(member)):
            if m not in self._loaded:
                self._loaded[m] = _read_rows(self._members[m])
            rows = self._loaded[m]
            chunks = rows.reshape(len(rows), -1, self._seq_len)  # (rows, pieces, seq_len)
            mask = member == m
            out[mask] = chunks[local[mask], piece[mask]]
        return out


class TrainStream:
    """The sequences one worker trains on in one curriculum stage, as an endless seeded stream.
    ``shuffle_window``: row groups whose rows are shuffled together (``data.shuffle_window``)."""

    def __init__(self, dataset: PreparedDataset, seq_len: int, buckets: tuple[int, ...], seed: int,
                 stage_index: int, rank: int, world_size: int, *, shuffle_window: int) -> None:
        if shuffle_window < 1:
            raise ValueError(f"shuffle_window must be at least 1, got {shuffle_window}")
        self.seq_len, self.seed, self.stage_index = seq_len, seed, stage_index
        self.rank, self.world_size, self.shuffle_window = rank, world_size, shuffle_window
        self._units = [u for b in sorted(buckets) for u in dataset.units(b)]
        self._rows = np.array([u.rows for u in self._units], dtype=np.int64)
        self._pieces = np.array([u.bucket // seq_len for u in self._units], dtype=np.int64)
        total = int((self._rows * self._pieces).sum())
        self.per_epoch = total // world_size
        if self.per_epoch == 0:
            raise DataError(f"buckets {list(buckets)} of {dataset.path} hold {total} sequences of {seq_len} tokens, "
                            f"fewer than the {world_size} workers; prepare more data")
        self.position = 0
        self._epoch_cache: tuple[int, np.ndarray, np.ndarray] | None = None  # (epoch, unit order, window starts)
        self._window: _Window | None = None

    def state(self) -> dict[str, int]:
        """Where the stream stands (saved in checkpoints)."""
        return {"stage": self.stage_index, "position": self.position, "rank": self.rank,
                "world_size": self.world_size, "seq_len": self.seq_len}

    def seek(self, position: int) -> None:
        self.position = int(position)

    def _epoch(self, epoch: int) -> tuple[np.ndarray, np.ndarray]:
        """(unit order, the epoch position of each window's first sequence plus the epoch's end) of one epoch."""
        if self._epoch_cache is None or self._epoch_cache[0] != epoch:
            order = np.random.default_rng([self.seed, self.stage_index, epoch]).permutation(len(self._units))
            sizes = (self._rows * self._pieces)[order]
            per_window = np.add.reduceat(sizes, np.arange(0, len(order), self.shuffle_window))
            self._epoch_cache = (epoch, order, np.concatenate([[0], np.cumsum(per_window)]))
        return self._epoch_cache[1], self._epoch_cache[2]

    def _window_at(self, epoch: int, index: int) -> _Window:
        if self._window is None or (self._window.epoch, self._window.index) != (epoch, index):
            order, _ = self._epoch(epoch)
            self._window = None  # drop the previous window's rows before reading the next one's
            units = order[index * self.shuffle_window:(index + 1) * self.shuffle_window]
            self._window = _Window(self, epoch, index, units)
        return self._window

    def take(self, count: int) -> np.ndarray:
        """The next ``count`` sequences as a (count, seq_len) int64 array; advances the position."""
        out = np.empty((count, self.seq_len), dtype=np.int64)
        filled = 0
        while filled < count:
            epoch, offset = divmod(self.position, self.per_epoch)
            _, starts = self._epoch(epoch)
            g = self.rank * self.per_epoch + offset  # position in the epoch's global order
            index = bisect.bisect_right(starts, g) - 1
            within = g - int(starts[index])
            window = self._window_at(epoch, index)
            n = min(count - filled, window.sequences - within, self.per_epoch - offset)
            out[filled:filled + n] = window.take(within, n)
            filled += n
            self.position += n
        return out


@dataclass(frozen=True)
class ValidationSet:
    """The fixed validation tokens of one domain, concatenated and cut into rows of ``seq_len``, plus the UTF-8
    bytes those tokens stand for: the whole domain in file order when it fits the budget, else documents at a
    regular stride across the whole split (:func:`load_validation`)."""

    domain: str
    rows: np.ndarray
    """(n, seq_len) int64 token ids."""
    num_bytes: float
    """Bytes of text covered by ``rows`` (a partly used last document counts pro rata)."""

    @property
    def num_tokens(self) -> int:
        return int(self.rows.size)

    @property
    def bytes_per_token(self) -> float:
        return self.num_bytes / self.num_tokens


def _documents(files: list[Path]) -> Iterator[tuple[np.ndarray, int]]:
    """(tokens, bytes) of every non-empty validation document, in file order."""
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    for file in files:
        for batch in pq.ParquetFile(file).iter_batches(batch_size=256, columns=["tokens", "num_bytes"]):
            column = batch.column("tokens")
            lengths = pc.list_value_length(column).fill_null(0).to_numpy(zero_copy_only=False)
            values = column.flatten().to_numpy(zero_copy_only=False)
            ends = np.cumsum(lengths)
            for i, size in enumerate(batch.column("num_bytes").to_pylist()):
                if lengths[i]:
                    yield values[ends[i] - lengths[i]:ends[i]].astype(np.int64), size


def _domain_tokens(dataset: PreparedDataset, domain: str) -> int:
    """Tokens of a validation domain: the manifest's count, else counted from the files' list lengths."""
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    counted = ((dataset.manifest.get("validation") or {}).get(domain) or {}).get("tokens")
    if counted is not None:
        return int(counted)
    total = 0
    for file in dataset.validation_files[domain]:
        for batch in pq.ParquetFile(file).iter_batches(batch_size=4096, columns=["tokens"]):
            total += int(pc.sum(pc.list_value_length(batch.column("tokens"))).as_py() or 0)
    return total


def load_validation(dataset: PreparedDataset, seq_len: int, max_tokens: int) -> dict[str, ValidationSet]:
    """Every validation domain with at least one full row (same tokens every call). Empty domains are left out.

    Up to ``max_tokens`` (rounded down to whole rows) per domain. A domain within that budget is read whole, in
    file order. A larger one takes whole documents at a regular stride so the sample spreads over the whole
    split, not its first files: every ``k``-th non-empty document, ``k = ceil(domain tokens / budget)``, then,
    while the budget is not full, the skipped documents in file order; the last document taken is cut to fit.
    Deterministic (no random draw), so every call, rank and run validates on the same tokens."""
    budget = (max_tokens // seq_len) * seq_len
    found: dict[str, ValidationSet] = {}
    if budget == 0:
        return found
    for domain, files in sorted(dataset.validation_files.items()):
        stride = max(1, -(-_domain_tokens(dataset, domain) // budget))
        pieces: list[np.ndarray] = []
        have, num_bytes = 0, 0.0
        # the first pass takes documents 0, k, 2k, ...; a second (when k > 1) the others, while the budget lasts
        for strided in (True, False) if stride > 1 else (True,):
            for index, (doc, size) in enumerate(_documents(files)):
                if (index % stride == 0) != strided:
                    continue
                use = min(len(doc), budget - have)
                pieces.append(doc[:use])
                num_bytes += size * use / len(doc)
                have += use
                if have >= budget:
                    break
            if have >= budget:
                break
        usable = (have // seq_len) * seq_len
        if usable == 0:
            continue
        tokens = np.concatenate(pieces)
        if usable < have:  # drop the ragged end and its share of bytes
            num_bytes *= usable / have
        found[domain] = ValidationSet(domain, tokens[:usable].reshape(-1, seq_len), num_bytes)
    return found


def unigram_bpb(dataset: PreparedDataset, valset: ValidationSet) -> float | None:
    """Bits per byte of the trivial model on ``valset``: every predicted token (a row's tokens after its first,
    as in validation) costs -log2 of its frequency in the training split (``manifest.train.token_counts``,
    add-one smoothed). A model that does not beat this has learned nothing but token frequencies. None for a
    dataset prepared without the counts."""
    name = (dataset.manifest.get("train") or {}).get("token_counts")
    if not name or not (dataset.path / name).is_file():
        return None
    counts = np.load(dataset.path / name, allow_pickle=False).astype(np.float64)
    vocab = max(counts.size, int(valset.rows.max()) + 1)
    probs = np.ones(vocab)
    probs[:counts.size] += counts
    nats = -np.log(probs / probs.sum())
    predicted = valset.rows[:, 1:]
    mean_nats = float(nats[predicted].mean())
    # The same conversion as validation's: nats per predicted token over the bytes per token of the rows.
    return mean_nats / (np.log(2) * valset.bytes_per_token)
