"""jobs.tokenizer and jobs.tokenizer_report through run_job: exit codes, outputs, sampling, MLflow."""

from __future__ import annotations

import csv
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from jobs.tokenizer import main as tokenizer_main
from jobs.tokenizer_report import main as report_main
from tests.output import own_lines
from yxanul.cli import run_job
from yxanul.config import load_config
from yxanul.data.split import held_out
from yxanul.tokenizer import load_tokenizer, read_meta, sample_texts, tokenizer_sha256


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("corpora")


@pytest.fixture(scope="module")
def two_tokenizers(tmp_path_factory, cache_dir: Path) -> list[Path]:
    out = tmp_path_factory.mktemp("toks")
    paths = []
    for kind in ("bpe", "superbpe"):
        path = out / kind / "tokenizer.json"
        assert run_job(tokenizer_main, ["experiments/runs/tokenizer-bpe-16k.yaml", f"tokenizer.kind={kind}",
                                        "tokenizer.vocab_size=1024", f"tokenizer.path={path}",
                                        "tokenizer.train_sample_bytes=400k", f"data.cache_dir={cache_dir}",
                                        "--quiet"]) == 0
        paths.append(path)
    return paths


def test_tokenizer_job_writes_file_and_summary(two_tokenizers, capsys) -> None:
    bpe, superbpe = two_tokenizers
    for path, kind in ((bpe, "bpe"), (superbpe, "superbpe")):
        meta = read_meta(path)
        assert meta["kind"] == kind and meta["vocab_size"] == 1024
        assert meta["sha256"] == tokenizer_sha256(path)
        assert load_tokenizer(path).get_vocab_size() == 1024
    # superbpe without a transition takes 90% of the vocabulary
    assert read_meta(superbpe)["transition"] == 922


def test_tokenizer_job_dry_run_writes_nothing(tmp_path: Path, capsys) -> None:
    out = tmp_path / "t" / "tokenizer.json"
    assert run_job(tokenizer_main, ["experiments/runs/tokenizer-superbpe-16k.yaml", f"tokenizer.path={out}",
                                    "--dry-run"]) == 0
    printed = capsys.readouterr().out
    assert "plan: train superbpe with 16384 tokens (stage 1 to 13107, then superwords)" in printed
    assert "vocab_size: 16384" in printed
    assert not out.exists()


@pytest.mark.parametrize("override, message", [
    ("data.sources=[/no/such/file.parquet]", "error: data.sources entry '/no/such/file.parquet': no such file"),
    ("tokenizer.transition=20000", "error: tokenizer.transition (20000) must be at least 258 and below"),
    ("tokenizer.vocab_size=12", "error: tokenizer.vocab_size"),
])
def test_tokenizer_job_errors_are_one_line(tmp_path: Path, capsys, override: str, message: str) -> None:
    out = tmp_path / "tokenizer.json"
    code = run_job(tokenizer_main, ["experiments/runs/tokenizer-superbpe-16k.yaml", f"tokenizer.path={out}",
                                    override])
    err = capsys.readouterr().err
    assert code == 2
    lines = own_lines(err)
    assert len(lines) == 1 and lines[0].startswith(message), err
    assert not out.exists()


def test_sampling_splits_budget_skips_held_out_and_bad_rows(tmp_path: Path) -> None:
    small = tmp_path / "small.parquet"
    big = tmp_path / "big.parquet"
    # ids: "d" falls in the 10% validation slice, "e" does not (sha256-based, fixed forever)
    assert held_out("d", 0.1) and not held_out("e", 0.1)
    pq.write_table(pa.table({"body": ["tiny doc", None, "   ", "held-out doc", "another tiny doc"],
                             "id": ["a", "b", "c", "d", "e"]}), small)
    docs = [f"document number {i} " * 20 for i in range(400)]
    pq.write_table(pa.table({"body": docs, "id": [f"doc-{i}" for i in range(400)]}), big)
    cfg = load_config(None, [f"data.sources=[{small},{big}]", "data.text_column=body", "data.id_column=id",
                             "data.validation_fraction=0.1"])
    sample = sample_texts(cfg.data, 20_000)
    assert sample.per_source[str(small)] == {"documents": 2, "bytes": 24, "held_out": 1, "skipped": 2}
    big_stats = sample.per_source[str(big)]
    # what the small source could not use goes to the big one; the last document is cut to fit
    assert big_stats["bytes"] == 20_000 - 24 == sample.bytes - 24
    expected_held = sum(held_out(f"doc-{i}", 0.1) for i in range(big_stats["documents"] + big_stats["held_out"]))
    assert big_stats["held_out"] == expected_held > 0
    assert not any(t in sample.texts for i, t in enumerate(docs) if held_out(f"doc-{i}", 0.1))


def test_sampling_names_a_missing_text_column(tmp_path: Path) -> None:
    from yxanul.errors import DataError

    path = tmp_path / "x.parquet"
    pq.write_table(pa.table({"content": ["a"], "id": ["1"]}), path)
    cfg = load_config(None, [f"data.sources=[{path}]"])
    with pytest.raises(DataError, match=r"x.parquet has no text column 'text' \(columns: content, id\)"):
        sample_texts(cfg.data, 1000)


def _run_report(tokenizers: list[Path], cache_dir: Path, out: Path, *extra: str) -> int:
    return run_job(report_main, [
        "--tokenizers", ",".join(str(p) for p in tokenizers), "--out", str(out), "--repeats", "1",
        f"data.cache_dir={cache_dir}", "tokenizer.report_bytes_per_domain=60k", *extra])


def _read_rows(out: Path) -> list[dict[str, str]]:
    with open(out / "tokenizer_report.csv") as fh:
        return list(csv.DictReader(fh))


def test_report_job_measures_every_tokenizer_and_domain(two_tokenizers, cache_dir: Path, tmp_path: Path,
                                                       capsys, monkeypatch) -> None:
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    out = tmp_path / "report"
    assert _run_report(two_tokenizers, cache_dir, out) == 0, capsys.readouterr().err
    assert "logged to MLflow" not in capsys.readouterr().out  # no tracking URI: nothing logged
    rows = _read_rows(out)
    assert {(r["tokenizer"], r["domain"]) for r in rows} == {
        (k, d) for k in ("bpe", "superbpe") for d in ("english", "code", "math")}
    for row in rows:
        assert row["round_trip_exact"] == "True" and row["round_trip_failures"] == "0"
        assert float(row["encode_mb_per_cpu_s"]) > 0
        assert float(row["bytes_per_token"]) == pytest.approx(int(row["bytes"]) / int(row["tokens"]), abs=1e-3)
    english = {r["tokenizer"]: float(r["chars_per_token"]) for r in rows if r["domain"] == "english"}
    assert english["superbpe"] > english["bpe"]
    # the measured English text is exactly the held-out slice of wiki-en (capped at 60 kB)
    english_rows = [r for r in rows if r["domain"] == "english"]
    assert len({r["bytes"] for r in english_rows}) == 1 and 55_000 <= int(english_rows[0]["bytes"]) <= 62_000
    markdown = (out / "tokenizer_report.md").read_text()
    assert "| bpe | bpe | 1024 | english |" in markdown and "SuperBPE vs BPE:" in markdown


@pytest.mark.integration
def test_report_job_logs_to_mlflow(two_tokenizers, cache_dir: Path, tmp_path: Path, capsys) -> None:
    """A real MLflow store (SQLite; creating its tables takes ~20 s on this machine)."""
    db = tmp_path / "mlflow.db"
    out = tmp_path / "report"
    assert _run_report(two_tokenizers[1:], cache_dir, out, f"tracking.uri=sqlite:///{db}",
                       "tracking.experiment=tok-report-test") == 0, capsys.readouterr().err
    rows = _read_rows(out)
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=f"sqlite:///{db}")
    experiment = client.get_experiment_by_name("tok-report-test")
    (run,) = client.search_runs([experiment.experiment_id])
    assert run.info.status == "FINISHED"
    for row in rows:
        key = f"tok/superbpe/{row['domain']}/chars_per_token"
        assert run.data.metrics[key] == pytest.approx(float(row["chars_per_token"]))
    assert run.data.metrics["tok/superbpe/vocab_size"] == 1024
    assert run.data.params["tokenizers"] == str(two_tokenizers[1])
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id, "tokenizer_report")}
    assert artifacts == {"tokenizer_report/tokenizer_report.csv", "tokenizer_report/tokenizer_report.md"}


def test_report_job_missing_tokenizer_is_one_line(tmp_path: Path, capsys) -> None:
    code = run_job(report_main, ["--tokenizers", str(tmp_path / "missing"), "--out", str(tmp_path / "r")])
    err = capsys.readouterr().err
    lines = own_lines(err)
    assert code == 2 and len(lines) == 1 and lines[0].startswith("error: no file at ")
    assert not (tmp_path / "r").exists()
