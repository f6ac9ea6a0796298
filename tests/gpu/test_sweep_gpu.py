"""GPU proof of one-worker sweep trials trained in their reused Tune trial process (``sweep.in_process: auto``;
run: ``pytest -m gpu tests/gpu``): what the CPU tests cannot show. The trial trains on the GPU Tune gave it; one
process serves every trial, FP8 and BF16 in turn, and a trial that follows others in that process trains exactly as
the same trial did earlier in it (``release_built``: Transformer Engine's FP8 global state, Dynamo's caches and the
CUDA allocator are reset between trials, so no scaling factor or compiled graph is inherited); and the same
trial on a ``TorchTrainer`` (``sweep.in_process=false``, a fresh worker process) gives the same losses.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from tests.gpu.test_fp8 import ALL_LAYERS
from tests.train_helpers import make_dataset
from yxanul.profiling import DEVICE_KINDS
from yxanul.tags import DEVICE_MS_METRIC_PREFIX

pytestmark = pytest.mark.gpu

REPO = Path(__file__).resolve().parents[2]


def _sweep(tmp_path: Path, name: str, body: str, *overrides: str, buckets: dict[int, int] | None = None) -> list:
    """Run ``jobs.sweep`` on a sweep file of the pulse run (Markov text, seq_len 64, compiled, 32 steps) in a fresh
    process (its own Ray, which sees the GPU); the sweep's child runs, oldest first. ``buckets``: the dataset's rows
    per sequence length (default 4,096 of 64)."""
    data = tmp_path / "data"
    if not data.exists():
        make_dataset(data, buckets or {64: 4096}, validation={"english": 48, "code": 48}, successors=4)
    path = tmp_path / f"{name}.yaml"
    path.write_text(f"""
base:
  config: experiments/runs/pulse.yaml
  overrides:
    data.output_dir: {data}
    run.storage_path: {tmp_path / 'ray'}
    tracking.uri: sqlite:///{tmp_path / 'm.db'}
    tracking.experiment: sweeps
    precision.recipe: delayed
    precision.compile: "on"
    curriculum.stages: [{{seq_len: 64}}]
    train.max_tokens: 131072
    train.tokens_per_step: 4096
    train.max_tokens_per_microbatch: 4096
    optim.warmup_tokens: 16384
    eval.every_tokens: 65536
    eval.seq_len: 64
    eval.max_tokens_per_domain: 2048
    checkpoint.every_tokens: 65536
    log.every_steps: 1
resources: {{num_workers: 1, gpus_per_worker: 1}}
max_concurrent_trials: 1
{body}""")
    done = subprocess.run([sys.executable, "-m", "jobs.sweep", str(path), f"sweep.name={name}", *overrides],
                          cwd=REPO, capture_output=True, text=True, timeout=500, env=os.environ.copy())
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    from mlflow import MlflowClient

    client = MlflowClient(f"sqlite:///{tmp_path / 'm.db'}")
    experiment = client.get_experiment_by_name("sweeps").experiment_id
    [parent] = client.search_runs([experiment], filter_string=f"tags.`yxanul.sweep` = '{name}' and "
                                                              "tags.`yxanul.role` = 'sweep'")
    runs = client.search_runs([experiment], filter_string=f"tags.`mlflow.parentRunId` = '{parent.info.run_id}'",
                              order_by=["attributes.start_time ASC"])
    return [(run, {key: sorted((m.step, m.value) for m in client.get_metric_history(run.info.run_id, key))
                   for key in ("train/loss", "train/grad_norm", "val/bpb", "train/attention_share")}) for run in runs]


def test_in_process_trials_share_one_process_and_a_later_trial_trains_as_an_earlier_one(tmp_path):
    """Four trials in one process, FP8 (every group forced, delayed scaling) and BF16 at two values of a key that
    changes nothing in training (``checkpoint.keep_last``): each arm's second trial, which ran after other trials in the
    same process (at least one of them in the other precision), repeats its first trial's losses, gradient norms and
    bits/byte exactly. BF16 trains first: its attention may load torch's cuDNN before an FP8 trial loads Transformer
    Engine in the same process (the order that failed every fp8-auto trial of 2026-12-06's fp8-vs-bf16 on an H100).
    The FP8 trial on a TorchTrainer gives the same losses again."""
    fp8 = f"{{precision.mode: fp8, precision.fp8_layers: [{', '.join(ALL_LAYERS)}]}}"
    runs = _sweep(tmp_path, "inproc-gpu", f"""
axes:
  checkpoint.keep_last: [2, 3]
  precision:
    variants:
      bf16: {{precision.mode: bf16}}
      fp8: {fp8}
""")
    assert len(runs) == 4
    card = torch.cuda.get_device_name()
    for run, metrics in runs:
        tags = run.data.tags
        assert run.info.status == "FINISHED" and tags["yxanul.status"] == "finished", tags.get("yxanul.error")
        assert tags["yxanul.execution"] == "in_process" and tags["yxanul.gpu_name"] == card
        assert tags["yxanul.gpu_uuid"] == f"GPU-{torch.cuda.get_device_properties(0).uuid}"  # as nvidia-smi -L
        assert [s for s, _ in metrics["val/bpb"]] == [65536, 131072] and len(metrics["train/loss"]) == 32
    assert len({run.data.tags["yxanul.worker_pid"] for run, _ in runs}) == 1  # one process trained all four
    by_arm: dict[str, list] = {}
    for run, metrics in runs:
        by_arm.setdefault(run.data.params["precision.mode"], []).append((run, metrics))
    order = [run.data.params["precision.mode"] for run, _ in runs]
    for mode in by_arm:  # the later trial of each arm followed a trial in the other precision in that process
        later = [i for i, m in enumerate(order) if m == mode][1]
        assert any(m != mode for m in order[:later]), order
    for mode, ((first, a), (second, b)) in by_arm.items():
        assert first.data.params["checkpoint.keep_last"] != second.data.params["checkpoint.keep_last"]
        for key in ("train/loss", "train/grad_norm", "val/bpb"):
            assert a[key] == b[key], (mode, key, a[key][:4], b[key][:4])
    assert by_arm["fp8"][0][0].data.tags["yxanul.fp8_layers"] == "attention+mlp+head"
    assert "yxanul.fp8_layers" not in by_arm["bf16"][0][0].data.tags

    [(ray_train, metrics)] = _sweep(tmp_path, "ray-train-gpu", f"""
axes:
  checkpoint.keep_last: [2]
  precision:
    variants:
      fp8: {fp8}
""", "sweep.in_process=false")
    assert ray_train.data.tags["yxanul.execution"] == "ray_train"
    reference = by_arm["fp8"][0][1]
    for key in ("train/loss", "val/bpb"):
        assert metrics[key] == reference[key], (key, metrics[key][:4], reference[key][:4])


def test_a_curriculum_trial_follows_a_flat_one_in_its_process_and_profiles_every_stage(tmp_path):
    """A BF16 sweep of a flat arm (seq_len 64) and a three-stage curriculum (16, 32, 64), seeds 0 and 1, one process:
    the curriculum trial of seed 0 follows the flat one, the flat one of seed 1 follows the curriculum. Every trial
    finishes in that process without a restart, and each profiled its stages (the curriculum three, the flat one),
    on fused attention kernels. Why: on an H100 (2026-12-07) the curriculum-variants sweep's seed-ultra trial failed
    at its start in the process that had just trained the flat arm and ran again in a new one (its error text was
    not kept then; a failure here shows it in the assertion)."""
    ramp = "[{seq_len: 16, until_fraction: 0.25}, {seq_len: 32, until_fraction: 0.5}, {seq_len: 64}]"
    runs = _sweep(tmp_path, "curriculum-gpu", f"""
seeds: [0, 1]
axes:
  curriculum:
    variants:
      flat: {{curriculum.stages: [{{seq_len: 64}}]}}
      ramp: {{curriculum.stages: {ramp}}}
""", "precision.mode=bf16", buckets={16: 4096, 32: 2048, 64: 4096})
    assert len(runs) == 4
    order = [run.data.params["curriculum.stages"].count("seq_len") for run, _ in runs]
    assert order == [1, 3, 3, 1], order  # interleaved: flat s0, ramp s0, ramp s1, flat s1
    for run, metrics in runs:
        tags = run.data.tags
        assert run.info.status == "FINISHED" and tags["yxanul.status"] == "finished", tags.get("yxanul.error")
        assert "yxanul.restarts" not in tags, tags.get("yxanul.last_restart")
        stages = json.loads(tags["yxanul.curriculum_stages"])
        shares = metrics["train/attention_share"]
        assert len(shares) == len(stages), (stages, shares)  # one profiled step per stage
        for (_, _, start, end), (tokens, share) in zip(stages, shares):
            assert start < tokens <= end and 0 < share < 1
        kernels = tags["yxanul.attention_kernels"].lower()
        assert any(k in kernels for k in ("flash", "fmha", "sdpa")), kernels
        # the last profiled step's device time by kind, logged beside the step's total, which it adds up to
        by_kind = {k.removeprefix(DEVICE_MS_METRIC_PREFIX): v for k, v in run.data.metrics.items()
                   if k.startswith(DEVICE_MS_METRIC_PREFIX)}
        assert set(by_kind) == set(DEVICE_KINDS), by_kind
        assert sum(by_kind.values()) == pytest.approx(run.data.metrics["train/profiled_step_ms"], rel=1e-9)
    assert len({run.data.tags["yxanul.worker_pid"] for run, _ in runs}) == 1  # one process trained all four


LOAD_ORDER = """
import sys
import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel

if sys.argv[1] == "trial":  # what an in-process sweep trial does first (yxanul.sweep.tune._trial_fn)
    from yxanul.precision import preload_te
    assert preload_te()
q = torch.randn(2, 8, 2048, 64, device="cuda", dtype=torch.bfloat16)
with sdpa_kernel([SDPBackend.CUDNN_ATTENTION]):  # a BF16 trial's attention: torch loads its own cuDNN
    F.scaled_dot_product_attention(q, q, q, is_causal=True).sum().item()
import transformer_engine.pytorch as te  # a later FP8 trial in the same process
from yxanul.precision import build_recipe
layer = te.Linear(256, 256, params_dtype=torch.bfloat16).cuda()
x = torch.randn(64, 256, device="cuda", dtype=torch.bfloat16, requires_grad=True)
with te.autocast(enabled=True, recipe=build_recipe("delayed")):
    y = layer(x)
y.float().sum().backward()
print("ok", torch.isfinite(x.grad).all().item())
"""


def test_an_fp8_trial_loads_transformer_engine_after_a_bf16_trials_cudnn_attention():
    """The process of an in-process sweep trial loads Transformer Engine before anything else (preload_te), so an FP8
    trial that follows a BF16 one whose attention ran on torch's cuDNN still loads TE's libraries and trains. A fresh
    Python, since this test's own process already loaded TE (conftest.py); without the preload the same script
    failed on the lent H100 image ("libcudnn_cnn.so.9: undefined symbol"), which the second run records."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO / "platform"), str(REPO),
                                                         os.environ.get("PYTHONPATH", "")])}
    done = subprocess.run([sys.executable, "-c", LOAD_ORDER, "trial"], capture_output=True, text=True, timeout=300,
                          env=env, cwd=REPO)
    assert done.returncode == 0 and done.stdout.strip().endswith("ok True"), done.stdout[-2000:] + done.stderr[-3000:]
    bare = subprocess.run([sys.executable, "-c", LOAD_ORDER, "bare"], capture_output=True, text=True, timeout=300,
                          env=env, cwd=REPO)
    print("without the preload:", "ok" if bare.returncode == 0 else (bare.stderr.strip().splitlines() or ["?"])[-1])
