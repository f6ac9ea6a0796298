"""The training side of the prepared-dataset contract, on a dataset written by the real jobs.prepare
(built-in English corpus, a small trained BPE): the loader serves its buckets, and the real loop trains on it
and validates on its held-out domains."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest

from jobs.prepare import main as prepare_main
from yxanul.cli import run_job
from yxanul.config import load_config
from yxanul.data.loader import PreparedDataset, TrainStream, load_validation
from yxanul.tokenizer import train_bpe

pytestmark = pytest.mark.integration
REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def prepared(tmp_path_factory, ray_cluster):
    root = tmp_path_factory.mktemp("prepared")
    tok = train_bpe(["The quick brown fox jumps over the lazy dog, again and again. " * 8] * 60, 400,
                    root / "tok" / "tokenizer.json", show_progress=False)
    code = run_job(prepare_main, [
        "experiments/runs/prepare-default.yaml", f"tokenizer.path={tok}", f"data.output_dir={root / 'data'}",
        f"data.cache_dir={root / 'cache'}", "data.sources=[builtin:wiki-en]", "data.validation_sources={}",
        "data.max_documents=150", "data.validation_fraction=0.1", "data.min_bucket=8", "data.max_bucket=64"])
    assert code == 0
    return root / "data"


def test_loader_serves_the_buckets_jobs_prepare_writes(prepared):
    dataset = PreparedDataset.open(prepared)
    assert dataset.mode == "decompose" and dataset.buckets == [8, 16, 32, 64]
    vocab = dataset.vocab_size  # what the BPE reached (<= 400 on this little text), from the manifest
    assert 257 <= vocab <= 400
    for length in dataset.buckets:
        stream = TrainStream(dataset, length, (length,), seed=0, stage_index=0, rank=0, world_size=1,
                             shuffle_window=4)
        rows = stream.take(min(stream.per_epoch, 50))
        assert rows.shape[1] == length and rows.min() >= 0 and rows.max() < vocab
    # 64-token rows serve a 16-token stage as 4 pieces each
    pieces = TrainStream(dataset, 16, (64,), seed=0, stage_index=1, rank=0, world_size=1, shuffle_window=4)
    assert pieces.per_epoch == 4 * dataset.manifest["buckets"]["64"]["sequences"]
    valsets = load_validation(dataset, 32, 512)
    assert list(valsets) == ["english"] and valsets["english"].num_tokens == 512
    assert 1.0 < valsets["english"].bytes_per_token < 8.0  # a real BPE on English text


def test_loop_trains_on_a_prepared_dataset(prepared, tmp_path):
    from ray.train import RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    from yxanul.train.launch import loop_config
    from yxanul.train.loop import train_loop_per_worker

    cfg = load_config(REPO / "experiments/runs/pulse.yaml", [
        f"data.output_dir={prepared}", "scaling.num_workers=1", "tracking.enabled=false",
        "curriculum.stages=[{seq_len: 16, until_tokens: 4096}, {seq_len: 32, buckets: [32, 64]}]",
        "train.max_tokens=8192", "train.tokens_per_step=1024", "train.max_tokens_per_microbatch=512",
        "eval.every_tokens=0", "eval.seq_len=32", "eval.max_tokens_per_domain=512"])
    trainer = TorchTrainer(train_loop_per_worker, train_loop_config=loop_config(cfg, PreparedDataset.open(prepared)),
                           scaling_config=ScalingConfig(num_workers=0),
                           run_config=RunConfig(name="prepared", storage_path=str(tmp_path)))
    metrics = trainer.fit().metrics
    assert metrics["tokens"] == 8192 and metrics["train/seq_len"] == 32
    assert math.isfinite(metrics["val/english/loss"]) and metrics["val/english/loss"] < math.log(PreparedDataset.open(prepared).vocab_size)
    assert np.isclose(metrics["val/bpb"], metrics["val/english/bpb"])
