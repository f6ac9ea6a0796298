"""Tiny prepared datasets in the contract format (manifest.json + bucket=<L>/ + validation/<domain>/), written
with pyarrow directly so training tests do not depend on jobs.prepare."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

VOCAB = 256
EOS = 0


def _fixed_rows(rows: np.ndarray) -> pa.Table:
    length = rows.shape[1]
    values = pa.array(rows.reshape(-1).astype(np.uint32), type=pa.uint32())
    return pa.table({"tokens": pa.FixedSizeListArray.from_arrays(values, length)})


def _markov(rng: np.random.Generator, successors: np.ndarray, count: int, length: int) -> np.ndarray:
    """``count`` sequences of ``length`` tokens, each token one of its ``successors`` row's (uniformly)."""
    rows = np.empty((count, length), dtype=np.int64)
    rows[:, 0] = rng.integers(1, successors.shape[0], size=count)
    for t in range(1, length):
        rows[:, t] = successors[rows[:, t - 1], rng.integers(0, successors.shape[1], size=count)]
    return rows


def make_dataset(root: Path, buckets: dict[int, int], *, mode: str = "decompose", files_per_bucket: int = 2,
                 row_group_rows: int = 16, validation: dict[str, int] | None = None, seed: int = 0,
                 vocab: int = VOCAB, successors: int = 0) -> Path:
    """Write a dataset with ``buckets[L]`` rows of length L (row i of bucket L starts with a distinct token
    pattern so tests can recognise rows) and ``validation[domain]`` documents per domain. Tokens are uniform at
    random, or with ``successors`` > 0 learnable text: every token is followed by one of its own ``successors``
    tokens (a fixed random table shared by training and validation), so a model can learn log(successors) nats."""
    rng = np.random.default_rng(seed)
    succ = rng.integers(1, vocab, size=(vocab, successors), dtype=np.int64) if successors else None
    root.mkdir(parents=True, exist_ok=True)
    manifest_buckets = {}
    for length, count in sorted(buckets.items()):
        rows = (_markov(rng, succ, count, length) if succ is not None
                else rng.integers(1, vocab, size=(count, length), dtype=np.int64))
        folder = root / f"bucket={length}"
        folder.mkdir(exist_ok=True)
        files = []
        for i, part in enumerate(np.array_split(rows, files_per_bucket)):
            if len(part) == 0:
                continue
            name = f"bucket={length}/part-{i:05d}.parquet"
            pq.write_table(_fixed_rows(part), root / name, row_group_size=row_group_rows)
            files.append(name)
        manifest_buckets[str(length)] = {"sequences": count, "tokens": count * length, "files": files}
    manifest_validation = {}
    for domain, docs in (validation or {"english": 12, "code": 8}).items():
        folder = root / "validation" / domain
        folder.mkdir(parents=True, exist_ok=True)
        tokens = []
        for _ in range(docs):  # the size, then the tokens, document by document (the random stream tests rely on)
            size = int(rng.integers(20, 90))
            doc = _markov(rng, succ, 1, size)[0] if succ is not None else rng.integers(1, vocab, size=size)
            tokens.append([*doc, EOS])
        num_bytes = [4 * len(t) for t in tokens]  # 4 bytes per token, exactly
        table = pa.table({"tokens": pa.array(tokens, type=pa.list_(pa.uint32())),
                          "num_bytes": pa.array(num_bytes, type=pa.int64())})
        name = f"validation/{domain}/part-00000.parquet"
        pq.write_table(table, root / name)
        manifest_validation[domain] = {"documents": docs, "tokens": sum(map(len, tokens)),
                                       "bytes": sum(num_bytes), "files": [name]}
    train_tokens = sum(b["tokens"] for b in manifest_buckets.values())
    manifest = {
        "format_version": 1, "mode": mode, "created_at": "2026-11-25T00:00:00Z", "config_hash": "test",
        "tokenizer": {"path": "test", "sha256": "0" * 64, "vocab_size": vocab, "eos_id": EOS},
        "sources": [{"uri": "synthetic", "rows": 0, "bytes": 0}], "buckets": manifest_buckets,
        "validation": manifest_validation,
        "train": {"documents": 0, "tokens": train_tokens, "bytes": int(train_tokens * 3.5), "bytes_per_token": 3.5},
        "skipped": {}, "seconds": 0.0,
    }
    (root / "manifest.json").write_text(json.dumps(manifest, indent=2))
    return root


def checkpoint_on_storage(run_dir: str | Path) -> bool:
    """Rank 0's worker marker (``<run dir>/workers/rank0.json``) says ``checkpoint``: a checkpoint is whole on the
    run's storage (written in Ray's upload thread). A ``state.json`` seen in the storage folder may still be
    mid-copy, and a job stopped then rightly counts no checkpoint."""
    try:
        return json.loads((Path(run_dir) / "workers" / "rank0.json").read_text())["event"] == "checkpoint"
    except (OSError, ValueError, KeyError):
        return False
