"""jobs.compare against real MLflow stores (local SQLite and an HTTP `mlflow server`), on synthetic runs
logged with the MLflow client under the naming contract. Numbers are checked exactly: single runs, and a
3-seed sweep (means, 95% intervals, paired verdicts, a failed seed, a spiking run, the sweep's fixed
target); report.html is rendered in a real headless Chromium."""

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
    assert bf16["seed"] == "0" and bf16["spikes"] == ""
    assert (bf16["tokens_to_target"], bf16["seconds_to_target"]) == ("2500", "25")
    assert (fp8["tokens_to_target"], fp8["seconds_to_target"]) == ("3000", "24")
    assert (ultra["tokens_to_target"], ultra["seconds_to_target"]) == ("1750", "17.5")
    assert (bf16["tokens_per_s"], fp8["tokens_per_s"]) == ("100", "125")
    assert bf16["val_english_loss"] == "1.5" and bf16["val_code_bpb"] == "0.75" and bf16["peak_mem_gib"] == "1.5"
    [pair] = [p for p in csv.DictReader(open(out / "pairs.csv")) if p["arm"] == RUNS[1][0]]
    assert pair["arm"] == RUNS[1][0] and pair["reference"] == RUNS[0][0]
    assert (pair["at_tokens"], pair["loss_gap"], pair["bpb_gap"], pair["speedup_tokens_per_s"]) == \
        ("3000", "0.25", "0.25", "1.25")
    assert float(pair["speedup_time_to_target"]) == 25.0 / 24.0
    md = (out / "comparison.md").read_text()
    assert "not runnable: precision.mode=fp8 needs FP8 tensor cores" in md
    assert "1.7500 bits/byte (given by --target-bpb)" in md
    for name in ("val_bpb_vs_tokens.png", "val_bpb_vs_seconds.png", "throughput.png"):
        data = (out / name).read_bytes()
        assert data.startswith(PNG_SIGNATURE)
        image = imread(out / name)
        assert image.ndim == 3 and image.shape[0] > 100 and image.shape[1] > 100
    page = (out / "report.html").read_text()
    assert page.count("data:image/png;base64,") == 3 and "<table>" in page and "src=\"http" not in page
    assert "1 seed: no interval, no verdict" in page
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
    assert compare.main(["--sweep", "syn-sweep", "--out", str(tmp_path / "report"), "--tracking-uri", uri,
                         "--target-bpb", "1.75"]) == 0
    check_report(tmp_path / "report")
    assert {"comparison.csv", "comparison.md", "report.html", "throughput.png"} <= logged_files(uri, parent)
    printed = capsys.readouterr().out
    assert "report: " in printed
    assert ("precision.mode=fp8 vs precision.mode=bf16 (curriculum=none) on unknown card, 1 seed: final val/bpb "
            "+0.2500 (1 seed: no interval, no verdict); tokens/s 1.250x (1 seed: no interval, no verdict)") in printed

    # The same parent by id (what jobs.sweep --compare and jobs.demo pass), and a wrong id refused.
    assert compare.main(["--sweep", "syn-sweep", "--parent-run-id", parent, "--out", str(tmp_path / "by-id"),
                         "--tracking-uri", uri, "--target-bpb", "1.75", "--no-log"]) == 0
    check_report(tmp_path / "by-id")
    from yxanul.errors import TrackingError

    with pytest.raises(TrackingError, match="no parent run 0123456789abcdef"):
        compare.main(["--sweep", "syn-sweep", "--parent-run-id", "0123456789abcdef", "--out", str(tmp_path / "x"),
                      "--tracking-uri", uri])

    # The same runs by experiment name.
    assert compare.main(["--experiment", "syn", "--out", str(tmp_path / "by-exp"), "--tracking-uri", uri,
                         "--no-log", "--target-bpb", "1.75"]) == 0
    check_report(tmp_path / "by-exp")


def test_compare_http_server(mlflow_server, tmp_path):
    parent = log_synthetic_sweep(mlflow_server, "syn-http", "syn-http-sweep")
    out = tmp_path / "report"
    proc = subprocess.run([sys.executable, "-m", "jobs.compare", "--sweep", "syn-http-sweep", "--out", str(out),
                           "--tracking-uri", mlflow_server, "--target-bpb", "1.75"], cwd=ROOT, capture_output=True,
                          text=True, timeout=300)
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


# ---------------------------------------------------------------------------------------------------
# A 3-seed sweep: statistics, verdicts, a failed seed, a spike, the sweep's own target; the page in Chromium

SEED_BF16 = {0: (2.79, 100.0), 1: (2.83, 110.0), 2: (2.78, 90.0)}   # final val/bpb, tokens/s
SEED_FP8 = {0: (2.70, 104.0), 1: (2.73, 115.5)}                      # seed 2 fails: reported, not dropped
T975_1 = 12.706205  # Student t 97.5% quantile, 1 degree of freedom (2 paired seeds)


def log_seeded_sweep(uri: str, root: Path) -> str:
    client = MlflowClient(tracking_uri=uri)
    exp_id = client.create_experiment("seeded", artifact_location=(root / "artifacts").as_uri())
    parent = client.create_run(exp_id, run_name="sweep-seeded", tags={
        "yxanul.sweep": "seeded", "yxanul.role": "sweep", "mlflow.note.content": "BF16 vs FP8, 3 seeds",
        "yxanul.command": "python -m jobs.sweep seeded", "yxanul.git_sha": "0123456789abcdef"}).info.run_id
    client.log_batch(parent, params=[Param("sweep.reference", "precision.mode=bf16"), Param("sweep.target_bpb", "2.8")])
    trial = 0
    for precision, table in (("bf16", SEED_BF16), ("fp8", SEED_FP8)):
        for seed in range(3):
            variant = f"precision.mode={precision},seed={seed}"
            tags = {"mlflow.parentRunId": parent, "yxanul.sweep": "seeded", "yxanul.variant": variant,
                    "yxanul.pair": f"seed={seed}", "yxanul.trial": str(trial), "yxanul.gpu_name": "NVIDIA H200",
                    "yxanul.git_sha": "0123456789abcdef", "yxanul.git_dirty": "false"}
            params = [Param("precision.mode", precision), Param("run.seed", str(seed)), Param("train.max_tokens", "3000")]
            if seed not in table:
                rid = client.create_run(exp_id, run_name=f"seeded-t{trial:02d}", start_time=1_000 + trial, tags={
                    **tags, "yxanul.status": "failed", "yxanul.reason": "CUDA error: out of memory"}).info.run_id
                client.log_batch(rid, params=params)
                client.set_terminated(rid, "FAILED")
                trial += 1
                continue
            final, tps = table[seed]
            rid = client.create_run(exp_id, run_name=f"seeded-t{trial:02d}", start_time=1_000 + trial,
                                    tags={**tags, "yxanul.status": "finished"}).info.run_id
            clock = 24.0 if precision == "fp8" else 30.0
            metrics = []
            for tokens, bpb in ((1000, final + 1.0), (2000, final + 0.5), (3000, final)):
                metrics += [Metric("val/bpb", bpb, 0, tokens), Metric("val/english/bpb", bpb, 0, tokens),
                            Metric("val/english/loss", bpb, 0, tokens),
                            Metric("val/elapsed_s", clock * tokens / 3000, 0, tokens)]
            metrics += [Metric("train/tokens_per_s", tps, 0, 1500), Metric("train/tokens_per_s", tps, 0, 3000)]
            if precision == "fp8" and seed == 0:
                metrics.append(Metric("train/spike_grad_norm", 10.2, 0, 2000))
            client.log_batch(rid, metrics=metrics, params=params)
            client.set_terminated(rid, "FINISHED")
            trial += 1
    client.set_terminated(parent, "FINISHED")
    return parent


@pytest.fixture(scope="module")
def seeded_report(tmp_path_factory):
    root = tmp_path_factory.mktemp("seeded")
    uri = f"sqlite:///{root / 'mlflow.db'}"
    log_seeded_sweep(uri, root)
    out = root / "report"
    assert compare.main(["--sweep", "seeded", "--out", str(out), "--tracking-uri", uri]) == 0
    return out


def test_seed_statistics_and_verdicts_from_a_real_store(seeded_report):
    import math

    out = seeded_report
    arms = {r["arm"]: r for r in csv.DictReader(open(out / "arms.csv"))}
    bf16, fp8 = arms["precision.mode=bf16"], arms["precision.mode=fp8"]
    std = math.sqrt((0.01 ** 2 + 0.03 ** 2 + 0.02 ** 2) / 2)
    assert float(bf16["val_bpb_mean"]) == pytest.approx(2.80) and float(bf16["val_bpb_std"]) == pytest.approx(std)
    assert float(bf16["val_bpb_half_width"]) == pytest.approx(4.302653 * std / math.sqrt(3), rel=1e-6)
    assert (bf16["seeds"], fp8["seeds"], fp8["runs"], fp8["spiking_seeds"]) == ("0 1 2", "0 1", "3", "0")
    assert bf16["reached_target"] == "2" and fp8["reached_target"] == "2"  # target 2.8 fixed in the sweep
    [c] = list(csv.DictReader(open(out / "comparisons.csv")))
    assert (c["arm"], c["reference"], c["kind"], c["seeds_paired"]) == (
        "precision.mode=fp8", "precision.mode=bf16", "precision pair", "2")
    assert float(c["bpb_gap_mean"]) == pytest.approx(-0.095)
    assert float(c["bpb_gap_half_width"]) == pytest.approx(T975_1 * 0.005, rel=1e-6)
    assert c["quality_verdict"] == "better"
    assert float(c["speedup_mean"]) == pytest.approx(1.045) and c["speed_verdict"] == "within noise"
    assert c["unpaired"] == "seed 2: arm: failed (CUDA error: out of memory)"  # reported, not dropped
    runs = {r["variant"]: r for r in csv.DictReader(open(out / "comparison.csv"))}
    assert runs["precision.mode=bf16,seed=1"]["tokens_to_target"] == "not reached"
    assert runs["precision.mode=fp8,seed=0"]["spikes"].startswith("1: grad_norm at 2k tokens")
    md = (out / "comparison.md").read_text()
    assert "target: 2.8000 bits/byte (fixed in the sweep file (target_bpb))" in md
    assert "noise floor: 0.0265 bits/byte" in md and "3 seeds (0, 1, 2)" in md
    assert "- card: H200" in md and "- git SHA: 0123456789ab" in md and "python -m jobs.sweep seeded" in md


def test_report_html_renders_in_headless_chromium(seeded_report, tmp_path):
    """The page as a person sees it: Chromium (Debian package `chromium`; .ci/run installs it) loads it at
    a laptop's width; a script added to a copy records, after the load event, how many images decoded and
    how wide the page is."""
    import re
    import shutil

    browser = shutil.which("chromium") or shutil.which("chromium-browser")
    assert browser, "headless Chromium is needed for this test: apt-get install chromium (.ci/run does)"
    probe = ("<script>addEventListener('load', () => { const imgs = [...document.images];"
             " document.body.dataset.images = imgs.length;"
             " document.body.dataset.loaded = imgs.filter(i => i.complete && i.naturalWidth > 0).length;"
             " document.body.dataset.width = document.documentElement.scrollWidth; });</script>")
    page = tmp_path / "report.html"
    page.write_text((seeded_report / "report.html").read_text().replace("</body>", probe + "</body>"))
    proc = subprocess.run([browser, "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                           f"--user-data-dir={tmp_path / 'profile'}", "--window-size=1366,768",
                           "--virtual-time-budget=5000", "--dump-dom", page.as_uri()],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    dom = proc.stdout
    body = re.search(r"<body([^>]*)>", dom).group(1)
    attrs = dict(re.findall(r'data-(\w+)="(\d+)"', body))
    assert attrs["images"] == "3" and attrs["loaded"] == "3", body  # every plot decoded
    assert int(attrs["width"]) <= 1366, body  # no horizontal scrolling at a laptop's width
    assert ("precision.mode=fp8 vs precision.mode=bf16 on H200, 2 seeds: final val/bpb -0.0950 ± 0.0635 (better); "
            "tokens/s 1.045x ± 0.064 (within noise)") in dom
    assert "Not paired: seed 2: arm: failed (CUDA error: out of memory)." in dom
    assert "Rests on a run with a spike: precision.mode=fp8 seed 0" in dom
    assert dom.count("<details>") >= 3  # the detail tables are folded
