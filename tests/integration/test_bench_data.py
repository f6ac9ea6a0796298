"""jobs.bench_data on a real local Ray: both baselines and the pipeline agree token for token and the
report carries every rate; the footer-reader pool of Ray's parquet reader is sized to the input."""

from __future__ import annotations

import json
import os

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from jobs.bench_data import main
from tests.output import own_lines
from yxanul.cli import run_job
from yxanul.data.prepare import footer_readers
from yxanul.tokenizer import train_bpe

pytestmark = pytest.mark.integration

DOCS = ["The quick brown fox jumps over the lazy dog.", "Tokyo (東京) is the capital of Japan 🇯🇵.",
        "def f(x):\n    return x * 2\n", "Der Fluß fließt; naïve café, résumé."]


def test_bench_data_reports_identical_tokens_and_all_rates(tmp_path, capsys, ray_cluster):
    texts = [f"{doc} {i}" * (1 + i % 7) for i in range(400) for doc in DOCS]
    pq.write_table(pa.table({"text": texts}), tmp_path / "small.parquet")
    tok = train_bpe(texts[:400], 500, tmp_path / "tok" / "tokenizer.json", show_progress=False)
    code = run_job(main, ["experiments/runs/prepare-default.yaml", f"tokenizer.path={tok}",
                          f"data.sources=[{tmp_path / 'small.parquet'}]", "data.validation_sources={}",
                          f"data.cache_dir={tmp_path / 'cache'}", "data.tokenize_actors=2", "--target-mb", "0.5"])
    out, err = capsys.readouterr()
    assert code == 0, err
    r = json.loads(own_lines(out)[-1])
    assert r["identical"] is True
    assert r["mb"] >= 0.5 and r["documents"] == len(texts) * -(-500_000 // sum(len(t.encode()) for t in texts))
    assert r["pipeline_tokens"] == r["baseline_tokens"] > 0
    for key in ("ratio", "ratio_cpu", "ratio_vs_fast", "ratio_cpu_vs_fast"):
        assert 0 < r[key] < 100, key
    # (how many actors are still alive at the end, and so counted as started, depends on timing: a
    # small input can go to one actor and the other may be shut down first; its CPU is then under
    # "exited processes" once reaped)
    roles = r["pipeline_cpu_s_by_role"]
    assert roles.get("tokenize actors", 0) + roles.get("exited processes", 0) > 0
    assert abs(sum(r["pipeline_cpu_s_by_role"].values()) - r["pipeline_cpu_s"]) < 0.05
    assert "tokens/s per core: baseline" in out and "against a baseline making the pipeline's own call" in out
    assert not [line for line in own_lines(err) if line.startswith("error")]


def test_footer_reader_pool_is_sized_to_the_files(monkeypatch):
    from ray.data._internal.datasource_v2.formats.parquet.footer_file_indexer import FooterFileIndexer

    monkeypatch.delenv("RAY_DATA_PARQUET_FOOTER_NUM_ACTORS", raising=False)
    default = FooterFileIndexer(ignore_missing_paths=False)._num_actors
    for files, actors in [(1, 1), (10, 1), (25, 3), (10_000, 32)]:
        with footer_readers(files):
            assert FooterFileIndexer(ignore_missing_paths=False)._num_actors == actors
        assert "RAY_DATA_PARQUET_FOOTER_NUM_ACTORS" not in os.environ
    with footer_readers(None):  # an s3:// prefix: file count unknown, Ray's default
        assert FooterFileIndexer(ignore_missing_paths=False)._num_actors == default
    monkeypatch.setenv("RAY_DATA_PARQUET_FOOTER_NUM_ACTORS", "5")  # the user's choice wins
    with footer_readers(1):
        assert FooterFileIndexer(ignore_missing_paths=False)._num_actors == 5
    assert os.environ["RAY_DATA_PARQUET_FOOTER_NUM_ACTORS"] == "5"
