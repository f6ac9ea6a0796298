"""jobs.compare against real MLflow stores (local SQLite and an HTTP `mlflow server`), on synthetic runs logged with
the MLflow client under the naming contract (yxanul.tags). Numbers are checked exactly where the report only adds
and divides, and to 1e-6 where a t quantile enters: a 1-seed sweep recorded before the arm/axes tags existed, and a
3-seed sweep whose FP8 seed 2 was left running by an interrupted sweep (matched seeds, geometric-mean ratios with
log-scale intervals, the minimal detectable effect, a censored time to target, the FP8 layers that ran). The page
is rendered in a real headless Chromium at a laptop's width."""

from __future__ import annotations

import csv
import json
import math
import subprocess
import sys
from pathlib import Path

import pytest
from mlflow import MlflowClient
from mlflow.entities import Metric, Param, RunTag

from jobs import compare
from yxanul import tags as T
from yxanul.errors import TrackingError

ROOT = Path(__file__).resolve().parents[2]
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
PLOTS = ("val_bpb_vs_tokens.png", "val_bpb_vs_seconds.png", "paired_difference.png", "train_loss.png",
         "grad_norm.png", "throughput.png")

# A sweep recorded before yxanul.arm / yxanul.axes: (variant, pair, precision, val/bpb, val/elapsed_s, english
# loss, code loss, tokens/s)
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
    parent = client.create_run(exp_id, run_name=sweep, tags={T.SWEEP_TAG: sweep}).info.run_id
    for i, (variant, pair, precision, bpb, clock, eng, code, tps) in enumerate(RUNS):
        rid = client.create_run(exp_id, run_name=f"{sweep}-t{i:02d}", start_time=1_000 + i, tags={
            T.PARENT_RUN_ID_TAG: parent, T.SWEEP_TAG: sweep, T.VARIANT_TAG: variant, T.PAIR_TAG: pair,
            T.STATUS_TAG: "finished"}).info.run_id
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
        T.PARENT_RUN_ID_TAG: parent, T.SWEEP_TAG: sweep, T.VARIANT_TAG: "precision.mode=fp8,curriculum=seed-ultra",
        T.PAIR_TAG: "curriculum=seed-ultra", T.STATUS_TAG: "not_runnable",
        T.REASON_TAG: "not runnable: precision.mode=fp8 needs FP8 tensor cores"}).info.run_id
    client.log_batch(skipped, params=[Param("precision.mode", "fp8")], tags=[RunTag("x", "y")])
    client.set_terminated(skipped, "KILLED")
    return parent


def rows(path: Path) -> list[dict[str, str]]:
    with open(path) as fh:
        return list(csv.DictReader(fh))


def check_report(out: Path) -> None:
    from matplotlib.image import imread

    runs = {r["variant"]: r for r in rows(out / "comparison.csv")}
    assert len(runs) == 4
    bf16, fp8, ultra = (runs[v[0]] for v in RUNS)
    assert bf16["seed"] == "0" and bf16["spikes"] == "" and bf16["matched"] == "true"
    # no train/compile_s logged: the training clock is val/elapsed_s as it is
    assert (bf16["tokens_to_target"], bf16["seconds_to_target"], bf16["reached_target"]) == ("2500", "25", "true")
    assert (fp8["tokens_to_target"], fp8["seconds_to_target"]) == ("3000", "24")
    assert (ultra["tokens_to_target"], ultra["seconds_to_target"]) == ("1750", "17.5")
    assert (bf16["tokens_per_s"], fp8["tokens_per_s"]) == ("100", "125")
    assert bf16["val_english_loss"] == "1.5" and bf16["val_code_bpb"] == "0.75" and bf16["peak_mem_gib"] == "1.5"
    skipped = runs["precision.mode=fp8,curriculum=seed-ultra"]
    assert skipped["status"] == "not runnable: precision.mode=fp8 needs FP8 tensor cores" and skipped["tokens"] == ""
    [pair] = [p for p in rows(out / "pairs.csv") if p["arm"] == RUNS[1][0]]
    assert pair["reference"] == RUNS[0][0]
    assert (pair["at_tokens"], pair["loss_gap"], pair["bpb_gap"], pair["speedup_tokens_per_s"]) == \
        ("3000", "0.25", "0.25", "1.25")
    assert float(pair["time_ratio"]) == 25.0 / 24.0
    md = (out / "comparison.md").read_text()
    assert "not runnable: precision.mode=fp8 needs FP8 tensor cores" in md
    assert "target: 1.7500 bits/byte (given by --target-bpb)" in md
    for name in PLOTS:
        assert (out / name).read_bytes().startswith(PNG_SIGNATURE)
        image = imread(out / name)
        assert image.ndim == 3 and image.shape[0] > 100 and image.shape[1] > 100
    page = (out / "report.html").read_text()
    assert page.count("data:image/png;base64,") == len(PLOTS) and "<table" in page and "src='http" not in page
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
    # runs from before the plan tag: the mode ran as asked, its FP8 groups unknown
    assert ("FP8 (layer groups not recorded) vs BF16, 1 matched seed: final val/bpb +0.2500 (1 seed: no interval, "
            "no verdict); tokens/s 1.250x (1 seed: no interval, no verdict)") in printed

    # The same parent by id (what jobs.sweep --compare and jobs.demo pass), and a wrong id refused.
    assert compare.main(["--sweep", "syn-sweep", "--parent-run-id", parent, "--out", str(tmp_path / "by-id"),
                         "--tracking-uri", uri, "--target-bpb", "1.75", "--no-log"]) == 0
    check_report(tmp_path / "by-id")

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
    exp_id = MlflowClient(mlflow_server).get_experiment_by_name("syn-http").experiment_id
    assert f"MLflow: {mlflow_server}/#/experiments/{exp_id}/runs/{parent}" in (out / "comparison.md").read_text()


def test_compare_errors_are_one_line_and_write_nothing(local_store, tmp_path):

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
    with pytest.raises(TrackingError, match="reference arm 'nope' is not among the runs' arms: .*; check --reference"):
        compare.main(["--sweep", "syn-sweep", "--out", str(tmp_path / "o"), "--tracking-uri", local_store[0],
                      "--reference", "nope"])
    assert not (tmp_path / "o").exists()


# ---------------------------------------------------------------------------------------------------
# A 3-seed sweep with today's tags, interrupted: FP8 seed 2 left running. Matched seeds 0 and 1. Both arms trained a
# two-stage curriculum (seq 32 to 1500 tokens, then 64) and profiled each stage once.

SEED_BF16 = {0: (2.80, 100.0), 1: (2.84, 110.0), 2: (2.70, 90.0)}   # final val/bpb, tokens/s per GPU
SEED_FP8 = {0: (2.76, 80.0), 1: (2.79, 99.0)}                       # gaps -0.04, -0.05; ratios 0.8x, 0.9x
TARGET = 2.795  # fixed in the sweep file: FP8 reaches it at both matched seeds, BF16 at neither
STAGES = [[0, 32, 0, 1500], [1, 64, 1500, 3000]]
ATTENTION = {"bf16": (0.10, 0.25), "fp8": (0.12, 0.30)}  # the measured share of stage 0's and stage 1's profiled step
T975_1, T80_1 = 12.706205, math.tan(0.3 * math.pi)  # t(0.975, 1) and t(0.80, 1)
HEADLINE = ("FP8 (delayed) on head, planned by measurement vs BF16 on 1x NVIDIA H100 80GB HBM3, 2 matched seeds: "
            "final val/bpb -0.0450 (95% CI -0.1085 to +0.0185): no difference detected; tokens/s 0.849x (95% CI ")


def log_seeded_sweep(uri: str, root: Path) -> str:
    client = MlflowClient(tracking_uri=uri)
    exp_id = client.create_experiment("seeded", artifact_location=(root / "artifacts").as_uri())
    parent = client.create_run(exp_id, run_name="sweep-seeded", tags={
        T.SWEEP_TAG: "seeded", T.ROLE_TAG: T.ROLE_SWEEP, T.NOTE_TAG: "BF16 vs FP8 (layers planned by measurement)",
        T.COMMAND_TAG: "python -m jobs.sweep seeded train.max_tokens=3000 data.output_dir=/tmp/gpu-box/data",
        T.GIT_SHA_TAG: "0123456789abcdef" * 2 + "01234567", T.INTERRUPTIONS_TAG: "1"}).info.run_id
    client.log_batch(parent, params=[Param("sweep.reference", "precision.mode=bf16"),
                                     Param("sweep.target_bpb", repr(TARGET)),
                                     Param("sweep.command_overrides", '["train.max_tokens=3000"]')])
    trial = 0
    for precision, table in (("bf16", SEED_BF16), ("fp8", SEED_FP8)):
        for seed in range(3):
            tags = {T.PARENT_RUN_ID_TAG: parent, T.SWEEP_TAG: "seeded", T.VARIANT_TAG: f"precision.mode={precision},"
                    f"seed={seed}", T.ARM_TAG: f"precision.mode={precision}", T.AXES_TAG: f'{{"precision.mode": '
                    f'"{precision}"}}', T.PAIR_TAG: f"seed={seed}", T.TRIAL_TAG: str(trial),
                    T.GPU_NAME_TAG: "NVIDIA H100 80GB HBM3", T.GPU_COUNT_TAG: "1", T.GPU_DRIVER_TAG: "580.95.05",
                    T.CUDA_VERSION_TAG: "12.8", T.GIT_SHA_TAG: "0123456789abcdef" * 2 + "01234567",
                    T.GIT_DIRTY_TAG: "true", T.GIT_DIFF_SHA256_TAG: "ab" * 32, T.TORCH_VERSION_TAG: "2.11.0+cu130",
                    f"{T.VERSION_TAG_PREFIX}transformer_engine": "2.20.2", f"{T.VERSION_TAG_PREFIX}python": "3.12.3"}
            params = [Param("precision.mode", precision), Param("run.seed", str(seed)),
                      Param("train.max_tokens", "3000"), Param("precision.recipe", "delayed")]
            if precision == "fp8":
                params.append(Param("precision.fp8_layers", "auto"))
                tags.update({T.PRECISION_PLAN_TAG: "fp8 (delayed; auto -> head)", T.FP8_LAYERS_TAG: "head"})
            else:
                tags[T.PRECISION_PLAN_TAG] = "bf16"
            if seed not in table:  # the sweep was interrupted while this trial trained: left RUNNING
                rid = client.create_run(exp_id, run_name=f"seeded-t{trial:02d}", start_time=1_000 + trial,
                                        tags={**tags, T.STATUS_TAG: "running"}).info.run_id
                client.log_batch(rid, params=params)
                trial += 1
                continue
            final, tps = table[seed]
            rid = client.create_run(exp_id, run_name=f"seeded-t{trial:02d}", start_time=1_000 + trial,
                                    tags={**tags, T.STATUS_TAG: "finished",
                                          T.CURRICULUM_STAGES_TAG: str(STAGES)}).info.run_id
            compile_s, per_k = (20.0, 8.0) if precision == "fp8" else (10.0, 10.0)
            metrics = [Metric("train/compile_s", compile_s, 0, t) for t in (500, 1000, 2000, 3000)]
            for tokens, bpb in ((1000, final + 0.4), (2000, final + 0.2), (3000, final)):
                metrics += [Metric("val/bpb", bpb, 0, tokens), Metric("val/english/bpb", bpb, 0, tokens),
                            Metric("val/english/loss", bpb, 0, tokens),
                            Metric("val/elapsed_s", compile_s + per_k * tokens / 1000, 0, tokens),
                            Metric("train/loss", bpb + 1, 0, tokens), Metric("train/grad_norm", 1.0, 0, tokens)]
            metrics += [Metric("train/tokens_per_s_per_gpu", tps, 0, t) for t in (1500, 3000)]
            metrics += [m for t in range(500, 3001, 500) for m in (
                Metric("train/stage", float(t > 1500), 0, t), Metric("train/seq_len", 64.0 if t > 1500 else 32.0, 0, t))]
            metrics += [Metric(T.ATTENTION_SHARE_METRIC, share, 0, t) for t, share in zip((1000, 2000),
                                                                                          ATTENTION[precision])]
            metrics.append(Metric(T.UNIGRAM_BPB_METRIC, 4.5, 0, 0))
            if precision == "fp8" and seed == 0:
                metrics.append(Metric("train/spike_grad_norm", 10.2, 0, 2000))
            client.log_batch(rid, metrics=metrics, params=params)
            client.set_terminated(rid, "FINISHED")
            trial += 1
    client.set_tag(parent, T.STATUS_TAG, "interrupted")
    client.set_terminated(parent, "KILLED")
    return parent


@pytest.fixture(scope="module")
def seeded_report(tmp_path_factory):
    root = tmp_path_factory.mktemp("seeded")
    uri = f"sqlite:///{root / 'mlflow.db'}"
    parent = log_seeded_sweep(uri, root)
    out = root / "report"
    assert compare.main(["--sweep", "seeded", "--out", str(out), "--tracking-uri", uri]) == 0
    return out, parent


def test_seed_statistics_from_a_real_store(seeded_report):
    out, parent = seeded_report
    arms = {r["arm"]: r for r in rows(out / "arms.csv")}
    bf16, fp8 = arms["precision.mode=bf16"], arms["precision.mode=fp8"]
    # matched seeds only: BF16's seed 2 is not averaged in while FP8's seed 2 never finished
    assert (bf16["seeds"], fp8["seeds"], fp8["runs"], fp8["spiking_seeds"]) == ("0 1", "0 1", "3", "0")
    assert float(bf16["val_bpb_mean"]) == pytest.approx(2.82) and float(fp8["val_bpb_mean"]) == pytest.approx(2.775)
    assert fp8["precision_ran"] == "FP8 (delayed) on head, planned by measurement"
    assert (bf16["reached_target"], fp8["reached_target"]) == ("0", "2")
    [c] = rows(out / "comparisons.csv")
    assert (c["arm"], c["reference"], c["kind"], c["seeds_paired"]) == (
        "precision.mode=fp8", "precision.mode=bf16", "precision pair", "2")
    # bpb gap: arithmetic mean, t interval, MDE = (t(.975,1) + t(.80,1)) sd / sqrt(2)
    sd_gap = 0.01 / math.sqrt(2)
    assert float(c["bpb_gap_mean"]) == pytest.approx(-0.045)
    assert float(c["bpb_gap_high"]) == pytest.approx(-0.045 + T975_1 * sd_gap / math.sqrt(2), rel=1e-6)
    assert float(c["mde_bpb"]) == pytest.approx((T975_1 + T80_1) * sd_gap / math.sqrt(2), rel=1e-6)
    assert c["quality_verdict"] == "no difference detected"
    # tokens/s: geometric mean of 0.8x and 0.9x with the t interval of the log ratios
    logs = [math.log(0.8), math.log(0.9)]
    sd_log = abs(logs[0] - logs[1]) / math.sqrt(2)
    assert float(c["speedup_mean"]) == pytest.approx(math.sqrt(0.72), rel=1e-12)
    assert float(c["speedup_low"]) == pytest.approx(math.exp(sum(logs) / 2 - T975_1 * sd_log / math.sqrt(2)), rel=1e-6)
    assert float(c["speedup_high"]) == pytest.approx(math.exp(sum(logs) / 2 + T975_1 * sd_log / math.sqrt(2)), rel=1e-6)
    # time to target: FP8 reached it at both seeds, BF16 at neither: bounds, no ratio
    assert (c["arm_reached"], c["reference_reached"], c["time_speedup_mean"]) == ("2", "0", "")
    fp8_s = {0: 16 + (2.96 - TARGET) / 0.2 * 8, 1: 16 + (2.99 - TARGET) / 0.2 * 8}  # compile (20 s) left out
    for p in rows(out / "pairs.csv"):
        assert p["time_bound"].startswith(">=") and float(p["time_bound"][2:]) == pytest.approx(30 / fp8_s[int(p["seed"])])
    assert c["unpaired"] == "seed 2: arm did not finish: sweep interrupted"
    runs = {(r["arm"], r["seed"]): r for r in rows(out / "comparison.csv")}
    assert runs["precision.mode=fp8", "2"]["status"] == "did not finish: sweep interrupted"
    assert runs["precision.mode=bf16", "2"]["matched"] == "false"
    assert float(runs["precision.mode=fp8", "0"]["seconds_to_target"]) == pytest.approx(fp8_s[0])
    assert runs["precision.mode=fp8", "0"]["compile_seconds"] == "20"
    # per curriculum stage, matched seeds pooled: each interval (1000, 1500] and (2500, 3000] lies in one stage
    stages = {(r["arm"], r["stage"]): r for r in rows(out / "stages.csv")}
    assert [(k, r["seq_len"], r["seeds"], r["tokens"], r["bounds"]) for k, r in stages.items()] == [
        (("precision.mode=bf16", "0"), "32", "2", "1500", "exact"), (("precision.mode=bf16", "1"), "64", "2", "1500", "exact"),
        (("precision.mode=fp8", "0"), "32", "2", "1500", "exact"), (("precision.mode=fp8", "1"), "64", "2", "1500", "exact")]
    assert float(stages["precision.mode=fp8", "1"]["tokens_per_s_median"]) == (80.0 + 99.0) / 2
    assert float(stages["precision.mode=bf16", "1"]["attention_share_median"]) == 0.25
    assert stages["precision.mode=bf16", "0"]["flops_per_token"] == ""  # the runs recorded no model.* params
    md = (out / "comparison.md").read_text()
    assert HEADLINE in md and "at least 1.327x faster than BF16's whole run" in md
    assert "| precision.mode=fp8 | 2 | 1 | 64 | 1.5k | not recorded | not recorded | 89.5 | 30.0% |" in md
    assert "FP8 reached it at 2/2 seeds, BF16 at 0/2" in md
    assert "target: 2.7950 bits/byte (fixed in the sweep file (target_bpb))" in md
    assert "noise floor: 0.0721 bits/byte (seed standard deviation of the reference arm's final val/bpb over the 3 " \
           "seeds it finished)" in md  # sqrt((0.02^2 + 0.06^2 + 0.08^2) / 2)
    assert "# seeded: FP8 vs BF16, 1x NVIDIA H100 80GB HBM3, 1970-01-01, 3k tokens per run" in md
    assert "*The sweep file says: BF16 vs FP8 (layers planned by measurement)*" in md
    for line in ("- card: 1x NVIDIA H100 80GB HBM3 (driver 580.95.05, CUDA 12.8)",
                 "- software: torch 2.11.0+cu130, Transformer Engine 2.20.2, Python 3.12.3",
                 f"- code: {'0123456789abcdef' * 2}01234567 + uncommitted diff sha256 abababababababab",
                 "- sweep command: python -m jobs.sweep seeded train.max_tokens=3000 data.output_dir=.../gpu-box/data",
                 "- overrides on the sweep file: train.max_tokens=3000",
                 f"- sweep run: {parent} (experiment ",
                 "- history: sweep run interrupted; 1 interruptions; precision.mode=fp8 seed 2: did not finish"):
        assert line in md, line
    assert "/tmp/gpu-box" not in md



def test_seeds_run_as_two_sweeps_compare_as_one(tmp_path, capsys):
    """A comparison larger than one machine's session (the science-scale fp8-vs-bf16 is 9 trials, ~30 minutes of an
    H100): seeds 0-1 as one sweep, seed 2 later as another (its own sweep.name, the same MLflow store), then
    `jobs.compare --sweep A --sweep B` (or `--experiment`) pairs the arms over all three seeds (docs/sweeps.md), with
    the reference, target and target effect both sweeps fixed, each sweep's command, and the report on both."""
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = MlflowClient(tracking_uri=uri)
    exp_id = client.create_experiment("split", artifact_location=(tmp_path / "artifacts").as_uri())
    finals = {"bf16": {0: 1.230, 1: 1.240, 2: 1.235}, "fp8": {0: 1.232, 1: 1.241, 2: 1.239}}  # gaps +.002 +.001 +.004
    speed = {"bf16": {0: 300.0, 1: 300.0, 2: 300.0}, "fp8": {0: 330.0, 1: 324.0, 2: 336.0}}  # 1.10x 1.08x 1.12x
    trial, parents = 0, []
    for sweep, seeds in (("split-a", (0, 1)), ("split-b", (2,))):
        parent = client.create_run(exp_id, run_name=sweep, tags={
            T.SWEEP_TAG: sweep, T.ROLE_TAG: T.ROLE_SWEEP,
            T.COMMAND_TAG: f"python -m jobs.sweep fp8-vs-bf16 sweep.name={sweep} sweep.seeds={list(seeds)}"}).info
        parents.append(parent.run_id)
        client.log_batch(parent.run_id, params=[Param("sweep.reference", "precision.mode=bf16"),
                                                Param("sweep.target_bpb", "1.25"), Param("sweep.target_effect", "0.01"),
                                                Param("sweep.command_overrides", json.dumps([f"sweep.name={sweep}"]))])
        for seed in seeds:
            for precision in ("bf16", "fp8"):
                rid = client.create_run(exp_id, run_name=f"{sweep}-t{trial:02d}", start_time=1_000 + trial, tags={
                    T.PARENT_RUN_ID_TAG: parent.run_id, T.SWEEP_TAG: sweep, T.STATUS_TAG: "finished",
                    T.VARIANT_TAG: f"precision.mode={precision},seed={seed}", T.ARM_TAG: f"precision.mode={precision}",
                    T.AXES_TAG: f'{{"precision.mode": "{precision}"}}', T.PAIR_TAG: f"seed={seed}",
                    T.TRIAL_TAG: str(trial), T.GPU_NAME_TAG: "NVIDIA H100 80GB HBM3"}).info.run_id
                final = finals[precision][seed]
                metrics = [Metric("val/bpb", final + 0.5 - 0.25 * i, 0, 1000 * i) for i in (1, 2)]
                metrics += [Metric("val/bpb", final, 0, 3000), Metric("train/loss", final + 1, 0, 3000),
                            Metric("train/tokens_per_s_per_gpu", speed[precision][seed], 0, 3000),
                            Metric("val/elapsed_s", 3000 / speed[precision][seed], 0, 3000)]
                client.log_batch(rid, metrics=metrics, params=[Param("precision.mode", precision),
                                                               Param("run.seed", str(seed))])
                client.set_terminated(rid, "FINISHED")
                trial += 1
        client.set_tag(parent.run_id, T.STATUS_TAG, "finished")
        client.set_terminated(parent.run_id, "FINISHED")
    out = tmp_path / "report"
    assert compare.main(["--sweep", "split-a", "--sweep", "split-b", "--out", str(out), "--tracking-uri", uri]) == 0
    [c] = rows(out / "comparisons.csv")
    assert (c["arm"], c["reference"], c["seeds_paired"]) == ("precision.mode=fp8", "precision.mode=bf16", "3")
    assert float(c["bpb_gap_mean"]) == pytest.approx((0.002 + 0.001 + 0.004) / 3)
    assert float(c["speedup_mean"]) == pytest.approx((1.10 * 1.08 * 1.12) ** (1 / 3), rel=1e-9)
    arms = {r["arm"]: r for r in rows(out / "arms.csv")}
    assert arms["precision.mode=bf16"]["seeds"] == arms["precision.mode=fp8"]["seeds"] == "0 1 2"
    said = capsys.readouterr().out
    assert "3 matched seeds" in said and f"logged to MLflow runs {parents[0]}, {parents[1]}" in said
    md = (out / "comparison.md").read_text()
    assert "target: 1.2500 bits/byte (fixed in the sweep file (target_bpb))" in md
    # seeds to decide come from the sweeps' target effect (both fixed 0.01) at the gaps' sd (0.0015)
    assert "seed pairs for a difference of 0.0100 bits/byte (sweep.target_effect)" in md
    for line in ("- sweep commands: split-a: python -m jobs.sweep fp8-vs-bf16 sweep.name=split-a sweep.seeds=[0, 1]; "
                 "split-b: python -m jobs.sweep fp8-vs-bf16 sweep.name=split-b sweep.seeds=[2]",
                 "- overrides on the sweep file: split-a: sweep.name=split-a; split-b: sweep.name=split-b",
                 f"- sweep runs: split-a: {parents[0]} (experiment {exp_id}); split-b: {parents[1]} (experiment {exp_id})",
                 "- history: split-a: sweep run finished; split-b: sweep run finished"):
        assert line in md, line
    for parent in parents:
        assert "comparison.md" in logged_files(uri, parent)
    # the same runs as one experiment: every parent's sweep.* agree, so the same reference and target
    assert compare.main(["--experiment", "split", "--out", str(tmp_path / "by-experiment"), "--tracking-uri", uri,
                         "--no-log"]) == 0
    assert rows(tmp_path / "by-experiment" / "comparisons.csv") == rows(out / "comparisons.csv")
    # sweeps that fixed different targets are not one design: the report says so and writes nothing
    client.log_param(client.create_run(exp_id, run_name="split-c", tags={T.SWEEP_TAG: "split-c"}).info.run_id,
                     "sweep.target_bpb", "1.3")
    with pytest.raises(TrackingError, match=r"the sweeps disagree on their target_bpb: split-a: 1.25, split-c: 1.3; "
                                            "give --target-bpb to compare them anyway"):
        compare.main(["--sweep", "split-a", "--sweep", "split-c", "--out", str(tmp_path / "mixed"), "--tracking-uri", uri])
    assert not (tmp_path / "mixed").exists()

def test_report_html_renders_in_headless_chromium(seeded_report, tmp_path):
    """The page as a person sees it: Chromium (Debian package `chromium`; .ci/run installs it) loads it at a
    laptop's width; a script added to a copy opens every folded section and records, after the load event, how
    many images decoded, how wide the page is, and every table wider than its column."""
    import json
    import re
    import shutil

    browser = shutil.which("chromium") or shutil.which("chromium-browser")
    assert browser, "headless Chromium is needed for this test: apt-get install chromium (.ci/run does)"
    probe = ("<script>addEventListener('load', () => {"
             " document.querySelectorAll('details').forEach(d => { d.open = true; });"
             " const imgs = [...document.images];"
             " const wide = [...document.querySelectorAll('table')].filter(t =>"
             "   t.getBoundingClientRect().width > t.parentElement.clientWidth + 0.5)"
             "   .map(t => t.id + ':' + Math.round(t.getBoundingClientRect().width));"
             " document.body.dataset.images = imgs.length;"
             " document.body.dataset.loaded = imgs.filter(i => i.complete && i.naturalWidth > 0).length;"
             " document.body.dataset.width = document.documentElement.scrollWidth;"
             " document.body.dataset.tables = document.querySelectorAll('table').length;"
             " document.body.dataset.wide = JSON.stringify(wide); });</script>")
    page = tmp_path / "report.html"
    page.write_text((seeded_report[0] / "report.html").read_text().replace("</body>", probe + "</body>"))
    proc = subprocess.run([browser, "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                           f"--user-data-dir={tmp_path / 'profile'}", "--window-size=1366,768",
                           "--virtual-time-budget=5000", "--dump-dom", page.as_uri()],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    dom = proc.stdout
    body = re.search(r"<body([^>]*)>", dom).group(1)
    attrs = dict(re.findall(r'data-(\w+)="([^"]*)"', body))
    assert attrs["images"] == str(len(PLOTS)) and attrs["loaded"] == str(len(PLOTS)), body  # every plot decoded
    assert int(attrs["width"]) <= 1366, body  # no horizontal scrolling at a laptop's width
    assert int(attrs["tables"]) >= 10, body
    assert json.loads(attrs["wide"].replace("&quot;", '"')) == [], body  # no table wider than its column
    assert HEADLINE in dom
    assert "Not paired: seed 2: arm did not finish: sweep interrupted." in dom
    assert "Rests on a run with a spike: precision.mode=fp8 seed 0" in dom
    assert "<details open=\"\"><summary>Per seed: FP8 vs BF16</summary>" in dom  # the per-seed view is open
