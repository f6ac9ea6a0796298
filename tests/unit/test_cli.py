"""Every job takes its options and its KEY=VALUE overrides in any order (argparse's intermixed parsing):
``python -m jobs.sweep fp8-vs-bf16 --dry-run key=value`` works as ``... key=value --dry-run`` does. Each job
runs in-process, in its dry run where it has one, with an option between the config and an override."""

from __future__ import annotations

import importlib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

# job, its argv before the option, the override, what the dry run prints only if the override was applied
DRY_RUNS = [
    ("sweep", ["fp8-vs-bf16"], "train.max_tokens=4M", "token budget 4M per trial"),
    ("train", [str(ROOT / "experiments/runs/pulse.yaml")], "train.max_tokens=12345", "max_tokens: 12345"),
    ("prepare", [str(ROOT / "experiments/runs/prepare-default.yaml")], "data.min_bucket=16", "min_bucket: 16"),
    ("tokenizer", [str(ROOT / "experiments/runs/tokenizer-bpe-8k.yaml")], "tokenizer.vocab_size=4096",
     "plan: train bpe with 4096 tokens"),
    ("tokenizer_report", [str(ROOT / "experiments/runs/tokenizer-report.yaml")],
     "tokenizer.report_bytes_per_domain=300000", "on up to 0.3 MB per validation domain"),
    ("bench", [str(ROOT / "experiments/bench/cpu-smoke.yaml")], "steps=7", "steps=7"),
    ("bench_data", [str(ROOT / "experiments/runs/prepare-default.yaml")], "data.max_documents=3",
     "max_documents: 3"),
]


@pytest.mark.parametrize(("job", "head", "override", "shown"), DRY_RUNS, ids=[d[0] for d in DRY_RUNS])
def test_options_and_overrides_in_any_order(job, head, override, shown, capsys):
    main = importlib.import_module(f"jobs.{job}").main
    outputs = []
    for argv in ([*head, "--dry-run", override], [*head, override, "--dry-run"], ["--dry-run", *head, override]):
        assert main(argv) == 0, argv
        outputs.append(capsys.readouterr().out)
    assert shown in outputs[0]
    assert outputs[0] == outputs[1] == outputs[2]


def test_cluster_sim_takes_a_sweep_override_after_an_option(capsys):
    """cluster_sim's overrides go to the sweep; one after an option is parsed (the dry run then ignores it)."""
    from jobs import cluster_sim

    config = str(ROOT / "cluster.yaml")
    assert cluster_sim.main([config, "--dry-run", "--idle-timeout-minutes=0.5", "sweep.name=x"]) == 0
    assert "idle_timeout_minutes: 0.5" in capsys.readouterr().out


def test_compare_options_in_any_order(tmp_path):
    """jobs.compare has options only (no overrides): any order reaches the store (here a missing one, refused)."""
    from jobs import compare
    from yxanul.errors import TrackingError

    store = f"sqlite:///{tmp_path / 'none.db'}"
    for argv in (["--sweep", "s", "--out", str(tmp_path / "o"), "--tracking-uri", store, "--no-log"],
                 ["--no-log", "--tracking-uri", store, "--out", str(tmp_path / "o"), "--sweep", "s"]):
        with pytest.raises(TrackingError, match="no MLflow store at"):
            compare.main(argv)


def test_demo_options_in_any_order(monkeypatch):
    """jobs.demo has flags only: in either order they reach the sweep loading with --smoke applied."""
    import yxanul.sweep
    from jobs import demo

    seen = []

    def stop(name, overrides):
        seen.append(name)
        raise RuntimeError("stop after parsing")

    monkeypatch.setattr(yxanul.sweep, "load_sweep", stop)
    for argv in (["--smoke", "--verbose"], ["--verbose", "--smoke"]):
        with pytest.raises(RuntimeError, match="stop after parsing"):
            demo.main(argv)
    assert seen == ["demo-smoke", "demo-smoke"]
