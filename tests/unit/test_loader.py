"""Worker data reading: seeded order, disjoint shards, lazy row groups, exact seek, stage->bucket mapping,
fixed validation tokens and bytes."""

from __future__ import annotations

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


def test_same_seed_same_order_other_seed_other_order(decomposed):
    a = TrainStream(decomposed, 16, (16,), seed=1, stage_index=0, rank=0, world_size=1).take(50)
    b = TrainStream(decomposed, 16, (16,), seed=1, stage_index=0, rank=0, world_size=1).take(50)
    c = TrainStream(decomposed, 16, (16,), seed=2, stage_index=0, rank=0, world_size=1).take(50)
    assert np.array_equal(a, b)
    assert not np.array_equal(a, c)


def test_an_epoch_is_a_permutation_of_the_bucket_and_shards_are_disjoint(decomposed):
    rows = all_rows(decomposed, 16)  # 100 rows
    shards = [TrainStream(decomposed, 16, (16,), seed=3, stage_index=0, rank=r, world_size=3) for r in range(3)]
    assert shards[0].per_epoch == 33  # 100 // 3, the remainder dropped
    taken = np.concatenate([s.take(33) for s in shards])
    as_set = {tuple(r) for r in taken}
    assert len(as_set) == 99 and as_set <= {tuple(r) for r in rows}
    # the order is shuffled (not file order)
    assert not np.array_equal(taken[:10], rows[:10])


def test_next_epoch_reshuffles_and_covers_again(decomposed):
    stream = TrainStream(decomposed, 16, (16,), seed=0, stage_index=0, rank=0, world_size=1)
    first, second = stream.take(100), stream.take(100)
    assert {tuple(r) for r in first} == {tuple(r) for r in second}
    assert not np.array_equal(first, second)


def test_seek_reproduces_the_stream_exactly_without_reading_to_skip(decomposed, monkeypatch):
    full = TrainStream(decomposed, 16, (16, 32), seed=5, stage_index=2, rank=1, world_size=2).take(170)
    resumed = TrainStream(decomposed, 16, (16, 32), seed=5, stage_index=2, rank=1, world_size=2)
    reads = []
    original = loader_mod._read_rows
    monkeypatch.setattr(loader_mod, "_read_rows", lambda unit: reads.append(unit) or original(unit))
    resumed.seek(123)
    assert reads == []  # seeking touches no data
    assert np.array_equal(resumed.take(47), full[123:])
    assert resumed.state()["position"] == 170


def test_longer_buckets_are_cut_into_seq_len_pieces(decomposed):
    rows = all_rows(decomposed, 64)  # 10 rows of 64 -> 40 pieces of 16
    stream = TrainStream(decomposed, 16, (64,), seed=0, stage_index=0, rank=0, world_size=1)
    pieces = stream.take(40)
    expected = {tuple(p) for p in rows.reshape(-1, 16)}
    assert {tuple(p) for p in pieces} == expected and len(pieces) == 40


def test_reads_one_row_group_at_a_time(decomposed, monkeypatch):
    sizes = []
    original = loader_mod._read_rows
    monkeypatch.setattr(loader_mod, "_read_rows", lambda unit: sizes.append(unit.rows) or original(unit))
    TrainStream(decomposed, 32, (32,), seed=0, stage_index=0, rank=0, world_size=2).take(30)
    assert max(sizes) <= 8  # row groups of 8 rows, never a whole file or bucket
    assert sum(sizes) <= 30 + 2 * 8  # only the row groups of this worker's slice


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


def test_validation_is_fixed_and_bytes_match_the_tokens_used(decomposed):
    a = load_validation(decomposed, 32, 1000)
    b = load_validation(decomposed, 32, 1000)
    assert sorted(a) == ["code", "english"]
    for domain in a:
        assert np.array_equal(a[domain].rows, b[domain].rows)
        assert a[domain].rows.shape[1] == 32 and a[domain].num_tokens <= 1000
    # the helper writes num_bytes = 4 x tokens per document, so the bytes of any prefix are 4 per token
    assert a["english"].bytes_per_token == pytest.approx(4.0)
    # the rows are the documents' tokens in file order
    import pyarrow.parquet as pq

    docs = pq.read_table(decomposed.validation_files["english"][0]).column("tokens").to_pylist()
    flat = [t for d in docs for t in d]
    assert a["english"].rows.reshape(-1).tolist() == flat[:a["english"].num_tokens]


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
