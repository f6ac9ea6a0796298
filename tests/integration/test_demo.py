"""`python -m jobs.demo --smoke`: the README's main job end to end on the embedded default (built-in
corpus -> tokenizer -> prepared packed + decomposed data -> sweep -> report), in a fresh folder."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from mlflow import MlflowClient

from jobs import demo

pytestmark = pytest.mark.integration


def test_demo_smoke_runs_the_whole_chain(tmp_path, monkeypatch, ray_cluster, capsys):
    from matplotlib.image import imread

    monkeypatch.chdir(tmp_path)  # the demo writes under ./outputs/demo-smoke/
    assert demo.main(["--smoke"]) == 0
    out = capsys.readouterr().out
    report = Path(re.search(r"^report: (.+)$", out, re.M).group(1))
    assert report.is_file() and report.is_relative_to(tmp_path / "outputs" / "demo-smoke" / "reports")
    uri = re.search(r"^MLflow UI: mlflow ui --backend-store-uri (\S+)$", out, re.M).group(1)
    assert uri == f"sqlite:///{tmp_path / 'outputs/demo-smoke/mlflow.db'}"
    for name in ("comparison.csv", "comparison.md", "val_bpb_vs_tokens.png", "throughput.png"):
        assert (report.parent / name).is_file()
    assert imread(report.parent / "val_bpb_vs_tokens.png").ndim == 3
    # the report's table of every run: both curricula trained to the end in fp32 (human token counts, bpb with 4
    # decimals, the full run id), fp8 listed with the reason it cannot run here
    assert re.search(r"curriculum=none,precision\.mode=fp32\s+0\s+finished\s+32\.8k\s+\d\.\d{4}\s+[0-9a-f]{32}", out)
    assert re.search(r"curriculum=seed-ultra,precision\.mode=fp32\s+0\s+finished\s+32\.8k\s+\d\.\d{4}", out)
    assert re.search(r"curriculum=none,precision\.mode=fp8\s+0\s+not runnable: precision\.mode=fp8", out)

    client = MlflowClient(uri)
    exp = client.get_experiment_by_name("demo-smoke")
    [parent] = client.search_runs([exp.experiment_id], filter_string="tags.`yxanul.role` = 'sweep'")
    assert parent.info.status == "FINISHED"
    kids = client.search_runs([exp.experiment_id],
                              filter_string=f"tags.`mlflow.parentRunId` = '{parent.info.run_id}'")
    status = sorted((r.data.tags["yxanul.variant"], r.data.tags["yxanul.status"]) for r in kids)
    assert status == [("curriculum=none,precision.mode=fp32", "finished"),
                      ("curriculum=none,precision.mode=fp8", "not_runnable"),
                      ("curriculum=seed-ultra,precision.mode=fp32", "finished"),
                      ("curriculum=seed-ultra,precision.mode=fp8", "not_runnable")]
    for run in kids:
        if run.data.tags["yxanul.status"] == "finished":
            steps = [m.step for m in client.get_metric_history(run.info.run_id, "val/bpb")]
            assert steps == [16384, 32768]
            assert {"val/english/bpb", "val/code/bpb", "val/math/bpb"} <= set(run.data.metrics)
    logged = {Path(f.path).name for f in client.list_artifacts(parent.info.run_id, "comparison")}
    assert {"report.html", "comparison.csv"} <= logged

    # A second run reuses the tokenizer and the prepared datasets.
    from yxanul.sweep import load_sweep, plan_sweep

    plan = plan_sweep(*load_sweep("demo-smoke", demo.machine_overrides()))
    demo.tokenizer_stage(plan.trials[0].cfg)
    demo.prepare_stage(plan)
    again = capsys.readouterr().out
    assert again.count("reusing") == 3
