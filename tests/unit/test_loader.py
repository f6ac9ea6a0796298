"""Worker data reading: seeded order, shuffle windows, disjoint shards, lazy row groups, exact seek,
stage->bucket mapping, fixed validation tokens spread over the split, and their bytes."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest

from tests.train_helpers import make_dataset
from yxanul.config import load_config
from yxanul.curriculum import build_plan
from yxanul.data import loader as loader_mod
from yxanul.data.loader import PreparedDataset, TrainStream, load_validation
from yxanul.errors import DataError


@pytest.fixture(scope="module")
def decomposed(tmp_path_factory):
    return PreparedDataset.open(make_dataset(tmp_path_factory.mktemp("dec"), {16: 100, 32: 60, 64: 10},
                                             row_group_rows=8, files_per_bucket=3))


@pytest.fixture(scope="module")
def packed(tmp_path_factory):
    return PreparedDataset.open(make_dataset(tmp_path_factory.mktemp("packed"), {64: 40}, mode="packed"))


def all_rows(dataset: PreparedDataset, bucket: int) -> np.ndarray:
    return np.concatenate([loader_mod._read_rows(u) for u in dataset.units(bucket)])


def stream(dataset: PreparedDataset, seq_len: int, buckets: tuple[int, ...], *, seed: int = 0, stage_index: int = 0,
           rank: int = 0, world_size: int = 1, window: int) -> TrainStream:
    return TrainStream(dataset, seq_len, buckets, seed=seed, stage_index=stage_index, rank=rank,
                       world_size=world_size, shuffle_window=window)


def unit_of_sequence(dataset: PreparedDataset, seq_len: int, buckets: tuple[int, ...]) -> dict[tuple, int]:
    """Each seq_len piece of the buckets' rows -> the index of its row group in the stage's unit list (the
    fixture's rows are random, so every piece is distinct)."""
    units = [u for b in sorted(buckets) for u in dataset.units(b)]
    return {tuple(piece): i for i, u in enumerate(units) for piece in loader_mod._read_rows(u).reshape(-1, seq_len)}


def per_row_group_order(dataset: PreparedDataset, seq_len: int, buckets: tuple[int, ...], seed: int, stage: int,
                        epoch: int) -> np.ndarray:
    """The order before shuffle windows, written out again: row groups by default_rng([seed, stage, epoch]), the
    rows of each by default_rng([seed, stage, epoch, unit]), a row's pieces consecutive."""
    units = [u for b in sorted(buckets) for u in dataset.units(b)]
    out = []
    for unit in np.random.default_rng([seed, stage, epoch]).permutation(len(units)):
        rows = loader_mod._read_rows(units[unit])
        row_order = np.random.default_rng([seed, stage, epoch, unit]).permutation(len(rows))
        pieces = units[unit].bucket // seq_len
        out += [rows[r].reshape(pieces, seq_len)[p] for r in row_order for p in range(pieces)]
    return np.array(out, dtype=np.int64)


WINDOWS = pytest.mark.parametrize("window", [1, 4])


@WINDOWS
def test_same_seed_same_order_other_seed_other_order(decomposed, window):
    a = stream(decomposed, 16, (16,), seed=1, window=window).take(50)
    b = stream(decomposed, 16, (16,), seed=1, window=window).take(50)
    c = stream(decomposed, 16, (16,), seed=2, window=window).take(50)
    assert np.array_equal(a, b)
    assert not np.array_equal(a, c)


@WINDOWS
def test_an_epoch_is_a_permutation_of_the_bucket_and_shards_are_disjoint(decomposed, window):
    rows = all_rows(decomposed, 16)  # 100 rows
    shards = [stream(decomposed, 16, (16,), seed=3, rank=r, world_size=3, window=window) for r in range(3)]
    assert shards[0].per_epoch == 33  # 100 // 3, the remainder dropped
    taken = np.concatenate([s.take(33) for s in shards])
    as_set = {tuple(r) for r in taken}
    assert len(as_set) == 99 and as_set <= {tuple(r) for r in rows}
    # the order is shuffled (not file order)
    assert not np.array_equal(taken[:10], rows[:10])
    # worker r's slice is [r*33, (r+1)*33) of the one global order a single worker reads
    assert np.array_equal(taken, stream(decomposed, 16, (16,), seed=3, window=window).take(99))


@WINDOWS
def test_next_epoch_reshuffles_and_covers_again(decomposed, window):
    s = stream(decomposed, 16, (16,), window=window)
    first, second = s.take(100), s.take(100)
    assert {tuple(r) for r in first} == {tuple(r) for r in second}
    assert not np.array_equal(first, second)


@WINDOWS
def test_seek_reproduces_the_stream_exactly_without_reading_to_skip(decomposed, monkeypatch, window):
    full = stream(decomposed, 16, (16, 32), seed=5, stage_index=2, rank=1, world_size=2, window=window).take(170)
    resumed = stream(decomposed, 16, (16, 32), seed=5, stage_index=2, rank=1, world_size=2, window=window)
    reads = []
    original = loader_mod._read_rows
    monkeypatch.setattr(loader_mod, "_read_rows", lambda unit: reads.append(unit) or original(unit))
    resumed.seek(123)  # 110 per epoch: inside the second epoch
    assert reads == []  # seeking touches no data
    assert np.array_equal(resumed.take(47), full[123:])
    assert resumed.state()["position"] == 170


@WINDOWS
def test_longer_buckets_are_cut_into_seq_len_pieces(decomposed, window):
    rows = all_rows(decomposed, 64)  # 10 rows of 64 -> 40 pieces of 16
    pieces = stream(decomposed, 16, (64,), window=window).take(40)
    expected = {tuple(p) for p in rows.reshape(-1, 16)}
    assert {tuple(p) for p in pieces} == expected and len(pieces) == 40


def test_reads_one_row_group_at_a_time(decomposed, monkeypatch):
    sizes = []
    original = loader_mod._read_rows
    monkeypatch.setattr(loader_mod, "_read_rows", lambda unit: sizes.append(unit.rows) or original(unit))
    stream(decomposed, 32, (32,), world_size=2, window=1).take(30)
    assert max(sizes) <= 8  # row groups of 8 rows, never a whole file or bucket
    assert sum(sizes) <= 30 + 2 * 8  # only the row groups of this worker's slice


@pytest.mark.parametrize("window", [1, 4, 7, 50])
def test_every_sequence_of_an_epoch_comes_once_whatever_the_window(decomposed, window):
    buckets = (16, 64)  # 18 row groups (4 and 7 do not divide it, 50 exceeds it); 64-token rows in 4 pieces
    units = unit_of_sequence(decomposed, 16, buckets)
    assert len({u for u in units.values()}) == 18 and len(units) == 100 + 40
    s = stream(decomposed, 16, buckets, seed=4, window=window)
    assert s.per_epoch == 140
    for _ in range(2):  # two epochs, each a permutation of all sequences
        assert sorted(tuple(r) for r in s.take(140)) == sorted(units)


def test_a_window_mixes_the_rows_of_its_row_groups(decomposed):
    units = unit_of_sequence(decomposed, 16, (16,))  # 15 row groups
    order = np.random.default_rng([6, 1, 0]).permutation(15)  # the epoch's row-group order (seed 6, stage 1)
    by_window = {window: [units[tuple(r)] for r in stream(decomposed, 16, (16,), seed=6, stage_index=1,
                                                          window=window).take(100)] for window in (1, 4)}
    changes = {w: sum(a != b for a, b in zip(seq, seq[1:])) for w, seq in by_window.items()}
    assert changes[1] == 15 - 1  # one row group after the other
    assert changes[4] > 3 * 15  # rows of different row groups interleave
    # the first window is the epoch's first 4 row groups: all of their rows, and only theirs
    rows = [u.rows for u in decomposed.units(16)]
    size = sum(rows[i] for i in order[:4])
    assert set(by_window[4][:size]) == set(order[:4].tolist()) and order[4] not in by_window[4][:size]
    # so every batch of 8 consecutive sequences holds rows of several row groups, not a slice of one
    assert min(len(set(by_window[4][i:i + 8])) for i in range(0, 96, 8)) >= 3


def test_window_one_is_the_per_row_group_order(decomposed):
    buckets = (16, 64)
    old = np.concatenate([per_row_group_order(decomposed, 16, buckets, seed=7, stage=3, epoch=e) for e in (0, 1)])
    assert np.array_equal(stream(decomposed, 16, buckets, seed=7, stage_index=3, window=1).take(280), old)
    # and with workers: worker 1 of 2 takes the second half of each epoch
    worker = stream(decomposed, 16, buckets, seed=7, stage_index=3, rank=1, world_size=2, window=1)
    assert np.array_equal(worker.take(140), np.concatenate([old[70:140], old[210:280]]))


def test_a_window_is_read_lazily_and_held_alone(decomposed, monkeypatch):
    window = 4
    units = list(decomposed.units(32))  # 9 row groups of 8, 8 and 4 rows: 60 sequences
    reads = []
    original = loader_mod._read_rows
    monkeypatch.setattr(loader_mod, "_read_rows", lambda unit: reads.append(unit) or original(unit))
    s = stream(decomposed, 32, (32,), seed=2, world_size=2, window=window)
    s.take(1)
    assert len(reads) == 1  # one sequence reads its own row group, not the whole window
    held = []
    for count in (5, 5, 5, 5, 5, 4):  # the rest of worker 0's half of the epoch
        s.take(count)
        held.append(len(s._window._loaded))
    assert max(held) <= window  # one window's row groups in memory at a time
    assert len(reads) == len(set(reads))  # each row group read once
    # only the row groups of the windows that worker 0's slice [0, 30) touches
    order = np.random.default_rng([2, 0, 0]).permutation(9)
    sizes = np.array([units[i].rows for i in order])
    starts = np.concatenate([[0], np.cumsum(np.add.reduceat(sizes, np.arange(0, 9, window)))])
    touched = {units[i] for w in range(3) if starts[w] < 30 for i in order[w * window:(w + 1) * window]}
    assert set(reads) <= touched


def test_stage_mapping_packed_and_decomposed(decomposed, packed):
    assert packed.stage_buckets(16, None, "stage 0", "c") == (64,)  # 64-token rows reshaped
    assert decomposed.stage_buckets(32, None, "stage 0", "c") == (32,)
    with pytest.raises(DataError, match=r"stage 0 of curriculum 'none' needs 128-token sequences.*packed dataset"
                                        r".*buckets \[64\]"):
        packed.stage_buckets(128, None, "stage 0", "none")
    with pytest.raises(DataError, match=r"needs 8-token sequences.*decompose dataset.*data.min_bucket <= 8"):
        decomposed.stage_buckets(8, None, "stage 0", "seed-ultra")
    with pytest.raises(DataError, match=r"reads buckets \[128\] .* does not have"):
        decomposed.stage_buckets(32, [32, 128], "stage 1", "decomposition")


def test_check_plan_rejects_a_curriculum_the_dataset_cannot_serve(packed):
    cfg = load_config(None, ["curriculum=none", "train.max_tokens=1e5", "train.tokens_per_step=4096",
                             "train.max_tokens_per_microbatch=4096"])
    with pytest.raises(DataError, match=r"curriculum 'none' needs 2048-token sequences.*data.mode=packed"):
        packed.check_plan(build_plan(cfg, 1), "none")


def test_missing_dataset_says_to_prepare(tmp_path):
    with pytest.raises(DataError, match=r"no prepared dataset at .*run `python -m jobs.prepare CONFIG`"):
        PreparedDataset.open(tmp_path / "nothing")


def validation_documents(dataset: PreparedDataset, domain: str) -> list[list[int]]:
    import pyarrow.parquet as pq

    return [d for f in dataset.validation_files[domain] for d in pq.read_table(f).column("tokens").to_pylist()]


def documents_taken(valset, docs: list[list[int]]) -> list[int]:
    """Indices into ``docs`` of the documents in ``valset``'s rows, in order: the rows are whole documents, each
    ending with EOS (0, which no other token is), except the last, which may be cut."""
    flat = valset.rows.reshape(-1).tolist()
    index = {tuple(d): i for i, d in enumerate(docs)}
    taken, start = [], 0
    while start < len(flat):
        end = flat.index(0, start) + 1 if 0 in flat[start:] else len(flat)
        piece = tuple(flat[start:end])
        found = index.get(piece)
        if found is None:  # the cut last document: a prefix of exactly one document
            (found,) = [i for i, d in enumerate(docs) if tuple(d[:len(piece)]) == piece]
            assert end == len(flat)
        taken.append(found)
        start = end
    return taken


def test_validation_of_a_domain_that_fits_is_every_document_in_file_order(decomposed):
    a = load_validation(decomposed, 32, 1000)
    b = load_validation(decomposed, 32, 1000)
    assert sorted(a) == ["code", "english"]
    for domain in a:
        assert decomposed.manifest["validation"][domain]["tokens"] <= 1000  # 622 and 510: both fit
        assert np.array_equal(a[domain].rows, b[domain].rows)
        assert a[domain].rows.shape[1] == 32 and a[domain].num_tokens <= 1000
        # the rows are the documents' tokens in file order (the ragged end dropped)
        flat = [t for d in validation_documents(decomposed, domain) for t in d]
        assert a[domain].rows.reshape(-1).tolist() == flat[:a[domain].num_tokens]
    # the helper writes num_bytes = 4 x tokens per document, so the bytes of any prefix are 4 per token
    assert a["english"].bytes_per_token == pytest.approx(4.0)


@pytest.fixture(scope="module")
def long_validation(tmp_path_factory):
    # 300 documents of 21-90 tokens (~17k, EOS included) in one file, read in batches of 256
    return PreparedDataset.open(make_dataset(tmp_path_factory.mktemp("val"), {16: 4}, validation={"code": 300}))


def test_validation_of_a_larger_domain_is_spread_over_the_whole_split(long_validation):
    docs = validation_documents(long_validation, "code")
    total = long_validation.manifest["validation"]["code"]["tokens"]
    stride = -(-total // 2048)
    assert len(docs) == 300 and stride > 2
    valset = load_validation(long_validation, 32, 2048)["code"]
    assert valset.num_tokens == 2048  # the budget is full
    taken = documents_taken(valset, docs)
    assert len(taken) == len(set(taken))  # no document twice
    # documents from the start, the middle and the end of the split, not the first ~35 documents
    assert min(taken) < 30 and any(100 <= i < 200 for i in taken) and max(taken) >= 270
    # every k-th document first (in order), then the skipped ones from the start
    strided = [i for i in taken if i % stride == 0]
    assert strided == list(range(0, 300, stride))[:len(strided)] and taken[:len(strided)] == strided
    rest = taken[len(strided):]
    assert rest == [i for i in range(300) if i % stride][:len(rest)]
    # bytes: 4 per token, the cut document pro rata
    assert valset.bytes_per_token == pytest.approx(4.0)
    # the same tokens on every call, and without the manifest's count (counted from the files)
    again = load_validation(long_validation, 32, 2048)["code"]
    assert np.array_equal(again.rows, valset.rows) and again.num_bytes == valset.num_bytes
    manifest = {**long_validation.manifest, "validation": {"code": {
        k: v for k, v in long_validation.manifest["validation"]["code"].items() if k != "tokens"}}}
    counted = load_validation(replace(long_validation, manifest=manifest), 32, 2048)["code"]
    assert np.array_equal(counted.rows, valset.rows)


def test_validation_fills_the_budget_with_the_skipped_documents_in_order(long_validation):
    docs = validation_documents(long_validation, "code")
    total = long_validation.manifest["validation"]["code"]["tokens"]
    budget = (total - 100) // 32 * 32  # k = 2: the odd documents fill what the even ones leave
    valset = load_validation(long_validation, 32, budget)["code"]
    taken = documents_taken(valset, docs)
    assert valset.num_tokens == budget and len(taken) == len(set(taken)) >= 298
    assert taken[:150] == list(range(0, 300, 2)) and taken[150:] == list(range(1, 300, 2))[:len(taken) - 150]


def test_unigram_bpb_is_the_training_frequencies_cost_of_the_validation_rows(tmp_path):
    import json
    import math

    from yxanul.data.loader import ValidationSet, unigram_bpb

    root = make_dataset(tmp_path / "d", {64: 4}, mode="packed")
    dataset = PreparedDataset.open(root)
    rows = np.array([[1, 2, 2, 3], [3, 1, 1, 1]], np.int64)
    valset = ValidationSet("code", rows, num_bytes=16.0)  # 2 bytes per token
    assert unigram_bpb(dataset, valset) is None  # prepared without counts: no baseline, not a wrong one
    counts = np.zeros(5, np.int64)
    counts[[1, 2, 3]] = [5, 3, 1]  # training frequencies; ids 0 and 4 never seen
    np.save(root / "token_counts.npy", counts, allow_pickle=False)
    manifest = json.loads((root / "manifest.json").read_text())
    manifest["train"]["token_counts"] = "token_counts.npy"
    (root / "manifest.json").write_text(json.dumps(manifest))
    dataset = PreparedDataset.open(root)
    # add-one smoothing over the 5 ids: p = (count + 1) / (9 + 5); predicted tokens are rows[:, 1:]
    p = {1: 6 / 14, 2: 4 / 14, 3: 2 / 14}
    predicted = [2, 2, 3, 1, 1, 1]
    nats = -sum(math.log(p[t]) for t in predicted) / len(predicted)
    assert unigram_bpb(dataset, valset) == pytest.approx(nats / (math.log(2) * 2.0), rel=1e-12)
