"""jobs.compare against real MLflow stores (local SQLite and an HTTP `mlflow server`), on synthetic runs
logged with the MLflow client under the naming contract. Numbers are checked exactly."""

from __future__ import annotations

import csv
import subprocess
import sys
from pathlib import Path

import pytest
from mlflow import MlflowClient
from mlflow.entities import Metric, Param, RunTag

from jobs import compare

ROOT = Path(__file__).resolve().parents[2]
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"

# (variant, pair, precision, val/bpb points, val/elapsed_s, english loss, code loss, tokens/s)
RUNS = [
    ("precision.mode=bf16,curriculum=none", "curriculum=none", "bf16",
     [(1000, 3.0), (2000, 2.0), (3000, 1.5), (4000, 1.25)], [10.0, 20.0, 30.0, 40.0],
     [2.5, 2.0, 1.75, 1.5], [3.5, 3.0, 2.5, 2.25], [80.0, 100.0, 100.0, 110.0, 100.0]),
    ("precision.mode=fp8,curriculum=none", "curriculum=none", "fp8",
     [(1000, 3.25), (2000, 2.5), (3000, 1.75)], [8.0, 16.0, 24.0],
     [2.75, 2.25, 2.0], [3.75, 3.25, 2.75], [100.0, 125.0, 130.0]),
    ("precision.mode=bf16,curriculum=seed-ultra", "curriculum=seed-ultra", "bf16",
     [(1000, 2.5), (2000, 1.5)], [10.0, 20.0], [2.0, 1.5], [3.0, 2.5], [90.0]),
]


def log_synthetic_sweep(uri: str, experiment: str, sweep: str, artifact_location: str | None = None) -> str:
    client = MlflowClient(tracking_uri=uri)
    exp_id = client.create_experiment(experiment, artifact_location=artifact_location)
    parent = client.create_run(exp_id, run_name=sweep, tags={"yxanul.sweep": sweep}).info.run_id
    for i, (variant, pair, precision, bpb, clock, eng, code, tps) in enumerate(RUNS):
        rid = client.create_run(exp_id, run_name=f"{sweep}-t{i:02d}", start_time=1_000 + i, tags={
            "mlflow.parentRunId": parent, "yxanul.sweep": sweep, "yxanul.variant": variant,
            "yxanul.pair": pair, "yxanul.status": "finished"}).info.run_id
        metrics = []
        for (tokens, b), s, e, c in zip(bpb, clock, eng, code):
            metrics += [Metric("val/bpb", b, 0, tokens), Metric("val/elapsed_s", s, 0, tokens),
                        Metric("val/english/loss", e, 0, tokens), Metric("val/code/loss", c, 0, tokens),
                        Metric("val/english/bpb", b + 0.5, 0, tokens), Metric("val/code/bpb", b - 0.5, 0, tokens)]
        metrics += [Metric("train/tokens_per_s", v, 0, 500 * (j + 1)) for j, v in enumerate(tps)]
        metrics += [Metric("train/peak_mem_gib", 1.5, 0, 500), Metric("train/elapsed_s", clock[-1], 0, bpb[-1][0])]
        client.log_batch(rid, metrics=metrics, params=[Param("precision.mode", precision)])
        client.set_terminated(rid, "FINISHED")
    skipped = client.create_run(exp_id, run_name=f"{sweep}-t03", start_time=2_000, tags={
        "mlflow.parentRunId": parent, "yxanul.sweep": sweep, "yxanul.variant": "precision.mode=fp8,curriculum=seed-ultra",
        "yxanul.pair": "curriculum=seed-ultra", "yxanul.status": "not_runnable",
        "yxanul.reason": "not runnable: precision.mode=fp8 needs FP8 tensor cores"}).info.run_id
    client.log_batch(skipped, params=[Param("precision.mode", "fp8")], tags=[RunTag("x", "y")])
    client.set_terminated(skipped, "KILLED")
    return parent


def check_report(out: Path) -> None:
    from matplotlib.image import imread

    rows = {r["variant"]: r for r in csv.DictReader(open(out / "comparison.csv"))}
    assert len(rows) == 3
    bf16, fp8, ultra = (rows[v[0]] for v in RUNS)
    assert (bf16["tokens_to_target"], bf16["seconds_to_target"]) == ("2500", "25")
    assert (fp8["tokens_to_target"], fp8["seconds_to_target"]) == ("3000", "24")
    assert (ultra["tokens_to_target"], ultra["seconds_to_target"]) == ("1750", "17.5")
    assert (bf16["tokens_per_s"], fp8["tokens_per_s"]) == ("100", "125")
    assert bf16["val_english_loss"] == "1.5" and bf16["val_code_bpb"] == "0.75" and bf16["peak_mem_gib"] == "1.5"
    [pair] = list(csv.DictReader(open(out / "pairs.csv")))
    assert pair["arm"] == RUNS[1][0] and pair["reference"] == RUNS[0][0]
    assert (pair["at_tokens"], pair["loss_gap"], pair["bpb_gap"], pair["speedup_tokens_per_s"]) == \
        ("3000", "0.25", "0.25", "1.25")
    assert float(pair["speedup_time_to_target"]) == 25.0 / 24.0
    md = (out / "comparison.md").read_text()
    assert "not runnable: precision.mode=fp8 needs FP8 tensor cores" in md
    assert "1.7500 bits/byte (worst final val/bpb among the runs)" in md
    for name in ("val_bpb_vs_tokens.png", "val_bpb_vs_seconds.png", "throughput.png"):
        data = (out / name).read_bytes()
        assert data.startswith(PNG_SIGNATURE)
        image = imread(out / name)
        assert image.ndim == 3 and image.shape[0] > 100 and image.shape[1] > 100
    page = (out / "report.html").read_text()
    assert page.count("data:image/png;base64,") == 3 and "<table>" in page and "src=\"http" not in page
    assert not list(out.glob(".report-*"))  # the staging folder is gone


def logged_files(uri: str, parent: str) -> set[str]:
    return {Path(f.path).name for f in MlflowClient(tracking_uri=uri).list_artifacts(parent, "comparison")}


@pytest.fixture(scope="module")
def local_store(tmp_path_factory):
    root = tmp_path_factory.mktemp("compare")
    uri = f"sqlite:///{root / 'mlflow.db'}"
    parent = log_synthetic_sweep(uri, "syn", "syn-sweep", artifact_location=(root / "artifacts").as_uri())
    return uri, parent


def test_compare_local_sqlite_store(local_store, tmp_path, capsys):
    uri, parent = local_store
    assert compare.main(["--sweep", "syn-sweep", "--out", str(tmp_path / "report"), "--tracking-uri", uri]) == 0
    check_report(tmp_path / "report")
    assert {"comparison.csv", "comparison.md", "report.html", "throughput.png"} <= logged_files(uri, parent)
    printed = capsys.readouterr().out
    assert "report: " in printed and "loss gap 0.25 nats at 3000 tokens, speedup 1.25x" in printed

    # The same runs by experiment name.
    assert compare.main(["--experiment", "syn", "--out", str(tmp_path / "by-exp"), "--tracking-uri", uri,
                         "--no-log"]) == 0
    check_report(tmp_path / "by-exp")


def test_compare_http_server(mlflow_server, tmp_path):
    parent = log_synthetic_sweep(mlflow_server, "syn-http", "syn-http-sweep")
    out = tmp_path / "report"
    proc = subprocess.run([sys.executable, "-m", "jobs.compare", "--sweep", "syn-http-sweep", "--out", str(out),
                           "--tracking-uri", mlflow_server], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    check_report(out)
    assert {"comparison.csv", "pairs.csv", "report.html", "val_bpb_vs_tokens.png"} <= logged_files(mlflow_server, parent)


def test_compare_errors_are_one_line_and_write_nothing(local_store, tmp_path):
    from yxanul.errors import TrackingError

    proc = subprocess.run([sys.executable, "-m", "jobs.compare", "--sweep", "nope", "--out", str(tmp_path / "o"),
                           "--tracking-uri", f"sqlite:///{tmp_path / 'none.db'}"],
                          cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert proc.stderr.strip().startswith("error: no MLflow store at") and "Traceback" not in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1
    with pytest.raises(TrackingError, match="no sweep named 'other'"):
        compare.main(["--sweep", "other", "--out", str(tmp_path / "o"), "--tracking-uri", local_store[0]])
    with pytest.raises(TrackingError, match="no MLflow experiment named 'x'; experiments: .*syn"):
        compare.main(["--experiment", "x", "--out", str(tmp_path / "o"), "--tracking-uri", local_store[0]])
    assert not (tmp_path / "o").exists()
