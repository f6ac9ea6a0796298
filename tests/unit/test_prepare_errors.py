"""Bad input to jobs.prepare: exit code 2 and one readable error line, never a traceback.

These are all caught while planning, before Ray starts, so they run through the real entry point
quickly; failures that only show while reading (a corrupt page, skipped rows) are in
tests/integration/test_prepare.py.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from jobs.prepare import main
from tests.output import own_lines
from yxanul.cli import run_job
from yxanul.tokenizer import train_bpe

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("tok") / "tokenizer.json"
    return train_bpe(["hello world, the quick brown fox"] * 50, 300, out, show_progress=False)


def _run(capsys, tmp_path, tokenizer, *overrides: str) -> tuple[int, str]:
    argv = ["experiments/runs/prepare-default.yaml", f"tokenizer.path={tokenizer}",
            f"data.output_dir={tmp_path / 'out'}", f"data.cache_dir={tmp_path / 'cache'}",
            "data.validation_sources={}", *overrides]
    code = run_job(main, argv)
    err = capsys.readouterr().err
    return code, err


def _one_error_line(err: str) -> str:
    lines = own_lines(err)
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    assert "Traceback" not in err
    return lines[0]


def _write(path: Path, table: pa.Table) -> Path:
    pq.write_table(table, path)
    return path


def test_missing_path(capsys, tmp_path, tokenizer):
    code, err = _run(capsys, tmp_path, tokenizer, f"data.sources=[{tmp_path}/nope.parquet]")
    assert code == 2
    assert f"{tmp_path}/nope.parquet" in _one_error_line(err) and "no such file or directory" in err


def test_empty_directory(capsys, tmp_path, tokenizer):
    (tmp_path / "empty").mkdir()
    code, err = _run(capsys, tmp_path, tokenizer, f"data.sources=[{tmp_path}/empty]")
    assert code == 2 and "holds no .parquet files" in _one_error_line(err)


def test_glob_without_match(capsys, tmp_path, tokenizer):
    code, err = _run(capsys, tmp_path, tokenizer, f"data.sources=['{tmp_path}/x-*.parquet']")
    assert code == 2 and "glob matches no files" in _one_error_line(err)


def test_file_without_text_column_names_file_and_columns(capsys, tmp_path, tokenizer):
    path = _write(tmp_path / "notext.parquet", pa.table({"body": ["a"], "url": ["u"]}))
    code, err = _run(capsys, tmp_path, tokenizer, f"data.sources=[{path}]")
    line = _one_error_line(err)
    assert code == 2 and str(path) in line and "'text'" in line and "body, url" in line


def test_text_column_of_wrong_type(capsys, tmp_path, tokenizer):
    path = _write(tmp_path / "ints.parquet", pa.table({"text": [1, 2, 3]}))
    code, err = _run(capsys, tmp_path, tokenizer, f"data.sources=[{path}]")
    assert code == 2 and "has type int64, not text" in _one_error_line(err)


@pytest.mark.parametrize("damage", ["truncated", "garbage"])
def test_corrupt_or_truncated_parquet_names_the_file(capsys, tmp_path, tokenizer, damage):
    good = _write(tmp_path / "good.parquet", pa.table({"text": ["some text"] * 100}))
    bad = tmp_path / "bad.parquet"
    blob = good.read_bytes()
    bad.write_bytes(blob[: len(blob) // 2] if damage == "truncated" else b"PAR1" + os.urandom(300))
    code, err = _run(capsys, tmp_path, tokenizer, f"data.sources=[{tmp_path}]")
    line = _one_error_line(err)
    assert code == 2 and str(bad) in line and "data.on_bad_file=skip" in line


def test_missing_tokenizer_says_to_train_it(capsys, tmp_path, tokenizer):
    code, err = _run(capsys, tmp_path, tmp_path / "no-tok" / "tokenizer.json")
    line = _one_error_line(err)
    assert code == 2 and "python -m jobs.tokenizer experiments/runs/prepare-default.yaml" in line


def test_output_dir_that_is_not_a_dataset_is_left_alone(capsys, tmp_path, tokenizer):
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "precious.txt").write_text("mine")
    src = _write(tmp_path / "t.parquet", pa.table({"text": ["hello"]}))
    code, err = _run(capsys, tmp_path, tokenizer, f"data.sources=[{src}]")
    assert code == 2 and "is not a prepared dataset" in _one_error_line(err)
    assert (tmp_path / "out" / "precious.txt").read_text() == "mine"


def test_bad_config_value(capsys, tmp_path, tokenizer):
    code, err = _run(capsys, tmp_path, tokenizer, "data.on_bad_file=ignore")
    assert code == 2 and "data.on_bad_file" in _one_error_line(err)


def test_dry_run_prints_config_and_plan_without_writing(capsys, tmp_path, tokenizer):
    code = run_job(main, ["experiments/runs/prepare-default.yaml", f"tokenizer.path={tmp_path}/none.json",
                          f"data.output_dir={tmp_path / 'out'}", f"data.cache_dir={tmp_path / 'cache'}",
                          "--dry-run"])
    out = capsys.readouterr().out
    assert code == 0
    assert "min_bucket: 8" in out and "mode: decompose; buckets: 8, 16, 32, 64, 128, 256, 512, 1024, 2048" in out
    assert "source builtin:wiki-en" in out and "validation[math]" in out and "run `python -m jobs.tokenizer" in out
    assert not (tmp_path / "out").exists() and not (tmp_path / "cache").exists()


def test_subprocess_prints_one_line_and_exits_2(tmp_path, tokenizer):
    proc = subprocess.run(
        [sys.executable, "-m", "jobs.prepare", "experiments/runs/prepare-default.yaml",
         f"tokenizer.path={tokenizer}", f"data.sources=[{tmp_path}/missing]", f"data.cache_dir={tmp_path}"],
        cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [
        f"error: data.sources entry '{tmp_path}/missing': no such file or directory ({tmp_path}/missing)"]


def test_a_dataset_without_validation_documents_is_warned_about_with_the_fix():
    from yxanul.config import load_config
    from yxanul.data.prepare import validation_warning

    data = load_config(None, ["data.sources=[builtin:installed-python]", "data.validation_sources={}",
                              "data.validation_fraction=0.05", "data.builtin_max_bytes=6M"]).data
    empty = {"validation": {}, "sources": [{"uri": "builtin:installed-python",
                                            "corpus": {"packages": {"train": {"numpy": 10, "os": 3}, "validation": {}}}}]}
    assert validation_warning(empty, data) == (
        "warning: no validation documents in this dataset: data.validation_fraction=0.05 held out none "
        "(builtin:installed-python is split by whole packages: none of the 2 packages read is on the held-out side; "
        "data.builtin_max_bytes keeps a sample of the files), so training logs no val/* metric and a sweep on val/bpb "
        "cannot rank its trials; raise data.builtin_max_bytes or data.validation_fraction, or name "
        "data.validation_sources")
    held = {**empty, "validation": {"code": {"documents": 3, "tokens": 100, "bytes": 400}}}
    assert validation_warning(held, data) is None
    none_asked = load_config(None, ["data.validation_sources={}", "data.validation_fraction=0"]).data
    assert validation_warning(empty, none_asked) is None  # no validation was asked for: nothing to warn about
