"""Training end to end on real local Ray (2 CPU workers, gloo) and a real MLflow store: metrics, params,
provenance, checkpoints, exact resume across a curriculum stage boundary, and the NaN guard."""

from __future__ import annotations

import hashlib
import json
import math
import time
from pathlib import Path

import pytest
import yaml

from tests.conftest import FAKE_PEAK_TFLOPS
from tests.train_helpers import checkpoint_on_storage, make_dataset
from yxanul.config import ExperimentConfig, load_config
from yxanul.errors import ConfigError
from yxanul.metrics import flops_per_token
from yxanul.train.launch import run_dir, train
from yxanul.train.loop import NonFiniteLossError

pytestmark = pytest.mark.integration

TPS = 1024  # 2 workers x 512 tokens; stage 0: 16 x 32, stage 1: 8 x 64 per worker
STEPS = 12


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    root = tmp_path_factory.mktemp("train")
    data = make_dataset(root / "data", {32: 300, 64: 150}, row_group_rows=32, validation={"english": 10, "code": 6})
    return {"root": root, "data": data, "uri": f"sqlite:///{root / 'mlflow.db'}"}


PULSE = Path(__file__).parents[2] / "experiments/runs/pulse.yaml"


def config(env, name: str, *extra: str) -> ExperimentConfig:
    return load_config(PULSE, overrides(env, name, *extra))


def overrides(env, name: str, *extra: str) -> list[str]:
    return [
        f"data.output_dir={env['data']}", f"run.storage_path={env['root'] / 'ray'}", f"run.name={name}",
        f"tracking.uri={env['uri']}", "tracking.experiment=test-train",
        "curriculum.stages=[{seq_len: 32, until_tokens: 6144}, {seq_len: 64}]",
        f"train.tokens_per_step={TPS}", f"train.max_tokens={STEPS * TPS}", "train.max_tokens_per_microbatch=512",
        "optim.warmup_tokens=2048", "log.every_steps=1", "eval.every_tokens=6144", "eval.seq_len=32",
        "eval.max_tokens_per_domain=256", "checkpoint.every_tokens=4096", "checkpoint.keep_last=2",
        "scaling.num_workers=2", *extra]


def history(client, run_id: str, key: str) -> list[tuple[int, float]]:
    return sorted((m.step, m.value) for m in client.get_metric_history(run_id, key))


@pytest.fixture(scope="module")
def uninterrupted(env, ray_cluster):
    cfg = config(env, "full", "tracking.log_model=true", "eval.bf16_eval=on")
    return cfg, train(cfg)


def test_two_worker_run_logs_metrics_params_provenance_and_checkpoints(env, uninterrupted):
    from mlflow import MlflowClient

    cfg, result = uninterrupted
    assert result.finished and result.tokens == STEPS * TPS
    client = MlflowClient(env["uri"])
    run = client.get_run(result.run_id)
    assert run.info.status == "FINISHED" and run.data.tags["yxanul.status"] == "finished"
    # flat params, provenance tags
    assert run.data.params == cfg.flat_params()
    tags = run.data.tags
    assert tags["yxanul.config_hash"] == cfg.config_hash()
    assert tags["yxanul.manifest_sha256"] == hashlib.sha256((env["data"] / "manifest.json").read_bytes()).hexdigest()
    assert tags["yxanul.tokenizer_sha256"] == "0" * 64
    assert tags["yxanul.gpu_name"] == "none" and tags["yxanul.num_workers"] == "2"
    assert {"yxanul.git_sha", "yxanul.git_dirty", "yxanul.version.torch", "yxanul.version.ray"} <= set(tags)
    # what the report says about the model and the data: from the run, not from the sweep file
    from yxanul.model import parameter_count

    manifest = json.loads((env["data"] / "manifest.json").read_text())
    assert tags["yxanul.model_params"] == str(parameter_count(cfg.model, 256).total)
    assert (tags["yxanul.vocab_size"], tags["yxanul.tokenizer_vocab"]) == ("256", "256")
    assert tags["yxanul.data_train_tokens"] == str(manifest["train"]["tokens"])
    assert tags["yxanul.torch_version"] and "yxanul.fp8_layers" not in tags  # not an FP8 run
    # the resolved config is an artifact and reloads to the same config
    text = Path(client.download_artifacts(result.run_id, "config.yaml", str(env["root"] / "dl"))).read_text()
    assert ExperimentConfig.model_validate(yaml.safe_load(text)) == cfg
    # tracking.log_model: the final model in Hugging Face format
    model_files = {f.path for f in client.list_artifacts(result.run_id, "model")}
    assert {"model/config.json", "model/model.safetensors"} <= model_files
    # step axis = tokens; one train/loss per step; seq_len and stage switch at the 6144-token boundary
    loss = history(client, result.run_id, "train/loss")
    assert [s for s, _ in loss] == [TPS * k for k in range(1, STEPS + 1)]
    assert all(math.isfinite(v) for _, v in loss)
    assert abs(loss[0][1] - math.log(256)) < 0.3  # random init on a 256-token vocabulary
    seq = history(client, result.run_id, "train/seq_len")
    assert [v for s, v in seq if s <= 6144] == [32.0] * 6 and [v for s, v in seq if s > 6144] == [64.0] * 6
    assert [v for _, v in history(client, result.run_id, "train/stage")] == [0.0] * 6 + [1.0] * 6
    for key in ("train/lr", "train/grad_norm", "train/elapsed_s", "train/compile_s"):
        assert len(history(client, result.run_id, key)) == STEPS
    # rates: the first step of each batch shape (steps 1 and 7: compilation / warm-up) and the profiled step after it
    # (2 and 8) are kept out of tokens/s; MFU comes from the per-GPU rate against one card's peak (the session
    # declares 0.001 TFLOP/s)
    rates = history(client, result.run_id, "train/tokens_per_s")
    assert [s for s, _ in rates] == [TPS * k for k in range(1, STEPS + 1) if k not in (1, 2, 7, 8)]
    per_gpu = dict(history(client, result.run_id, "train/tokens_per_s_per_gpu"))
    mfu = dict(history(client, result.run_id, "train/mfu_bf16"))
    seq_len = dict(seq)
    for step, rate in rates:
        assert per_gpu[step] == pytest.approx(rate / 2, rel=1e-12)
        flops = flops_per_token(cfg.model, int(seq_len[step]), 256)
        assert mfu[step] == pytest.approx(per_gpu[step] * flops / (float(FAKE_PEAK_TFLOPS) * 1e12), rel=1e-9)
    compile_s = [v for _, v in history(client, result.run_id, "train/compile_s")]
    assert compile_s[0] > 0 and compile_s == sorted(compile_s) and compile_s[6] > compile_s[5]
    assert tags["yxanul.compiled"] == "false" and tags["yxanul.microbatch_tokens"] == "512"
    assert tags["yxanul.compile_cache"] == "not compiled"
    # the build phase by part, in the build's order (eager fp32 on CPU: no FP8 plan, no micro-batch measurement,
    # no compile wrapping), each part's seconds within the timeline's build phase
    laps = [part.rsplit(" ", 2) for part in tags["yxanul.build_seconds"].split(", ")]
    assert [name for name, _, unit in laps] == ["init", "to_device", "precision", "parallel", "optimizer"]
    assert {unit for _, _, unit in laps} == {"s"}
    assert sum(float(v) for _, v, _ in laps) <= run.data.metrics["timeline/build_s"] + 5 * 0.0005 + 0.5e-4  # rounding
    # the attention share of one profiled step per stage (rank 0), logged at that step's tokens with its parts
    share = history(client, result.run_id, "train/attention_share")
    assert [s for s, _ in share] == [2 * TPS, 8 * TPS] and all(0 < v < 1 for _, v in share)
    attention_ms = dict(history(client, result.run_id, "train/attention_ms"))
    step_ms = dict(history(client, result.run_id, "train/profiled_step_ms"))
    for step, value in share:
        assert 0 < attention_ms[step] < step_ms[step] and value == pytest.approx(attention_ms[step] / step_ms[step],
                                                                                 rel=1e-12)
    assert not any(k.startswith("train/device_ms/") for k in run.data.metrics)  # CPU time is not split by kind
    # what computed attention (on CPU the flash ops for CPU, forward and backward)
    assert tags["yxanul.attention_kernels"] == ("aten::_scaled_dot_product_flash_attention_for_cpu, "
                                                "aten::_scaled_dot_product_flash_attention_for_cpu_backward")
    assert json.loads(tags["yxanul.curriculum_stages"]) == [[0, 32, 0, 6144], [1, 64, 6144, STEPS * TPS]]
    # the timeline: exclusive phases that add up to the wall-clock of the train() call, logged at the last step
    timeline = {k: v for k, v in run.data.metrics.items() if k.startswith("timeline/")}
    assert timeline == result.timeline
    phases = {k for k in timeline if k.endswith("_s") and k != "timeline/wall_s"}
    assert {f"timeline/{p}_s" for p in ("data", "mlflow", "worker_start", "build", "compile", "profile", "steps",
                                        "validation", "checkpoint", "teardown", "other")} <= phases
    assert timeline["timeline/profile_s"] > 0
    assert sum(timeline[k] for k in phases) == pytest.approx(timeline["timeline/wall_s"])
    assert 0 < timeline["timeline/efficiency"] < 1 and timeline["timeline/other_s"] > -1
    # the first step of each shape; the worker sends its phases rounded to 4 decimals (yxanul.timeline), so half a unit
    assert timeline["timeline/compile_s"] == pytest.approx(compile_s[-1], abs=0.5e-4 + 1e-12)
    assert history(client, result.run_id, "timeline/steps_s")[0][0] == STEPS * TPS
    # validation at 6144 and at the end, per domain, bits/byte = nats/token / (4 bytes/token) / ln 2
    for domain in ("english", "code"):
        val_loss = history(client, result.run_id, f"val/{domain}/loss")
        bpb = history(client, result.run_id, f"val/{domain}/bpb")
        assert [s for s, _ in val_loss] == [6144, STEPS * TPS]
        for (_, nats), (_, bits) in zip(val_loss, bpb):
            assert bits == pytest.approx(nats / 4 / math.log(2), rel=1e-9)
    mean = history(client, result.run_id, "val/bpb")
    english, code = history(client, result.run_id, "val/english/bpb"), history(client, result.run_id, "val/code/bpb")
    assert mean[-1][1] == pytest.approx((english[-1][1] + code[-1][1]) / 2)
    assert result.metrics["val/bpb"] == pytest.approx(mean[-1][1])
    # checkpoints every 4096 tokens, the last two kept
    kept = sorted(p.name for p in Path(run_dir(cfg)).glob("checkpoint_*") if p.is_dir())
    assert len(kept) == 2 and Path(result.checkpoint_path).name == kept[-1]
    assert {p.name for p in Path(result.checkpoint_path).iterdir()} == {
        "state.json", "model.pt", "optimizer.pt", "rank0.json", "rank1.json", "manifest.rank0.json",
        "manifest.rank1.json"}  # data only: tensors (weights_only) and JSON, each rank's manifest last


def test_the_final_validation_runs_again_with_fp8_off_once(env, uninterrupted):
    """eval.bf16_eval=on: the final validation (and only it, not the one at 6144) runs a second time through the BF16
    path, logged with the suffix _bf16_eval. This run is fp32 (CPU), which has no other path: Precision.autocast
    (fp8=False) is the same context, so the same forward on the same weights and rows adds the same nats in the same
    order, and CPU kernels are deterministic (the resume test relies on that too): equal exactly, not approximately."""
    from mlflow import MlflowClient

    _, result = uninterrupted
    client = MlflowClient(env["uri"])
    for key in ("val/bpb", "val/english/bpb", "val/code/bpb", "val/english/loss", "val/code/loss"):
        assert history(client, result.run_id, f"{key}_bf16_eval") == [history(client, result.run_id, key)[-1]], key
    assert result.metrics["val/bpb_bf16_eval"] == result.metrics["val/bpb"]  # in the final ray.train.report too


def test_interrupted_and_resumed_run_has_identical_losses(env, uninterrupted, capfd):
    """Stopped at 8192 tokens (checkpoints at 4096 and 8192, written asynchronously), the latest checkpoint
    truncated as a failed upload or a full disk would leave it: the resume says so in one line naming the file,
    falls back to the checkpoint at 4096, and the run's losses are still bit-identical to the uninterrupted run's."""
    from mlflow import MlflowClient

    _, full = uninterrupted
    first = train(config(env, "resumed", "train.stop_after_tokens=8192", "eval.bf16_eval=on"))
    assert not first.finished and first.tokens == 8192  # stopped after the second checkpoint, in stage 1
    client = MlflowClient(env["uri"])
    assert client.get_run(first.run_id).data.tags["yxanul.status"] == "stopped"
    checkpoints = sorted(p for p in Path(run_dir(config(env, "resumed"))).glob("checkpoint_*") if p.is_dir())
    assert [json.loads((p / "state.json").read_text())["tokens"] for p in checkpoints] == [4096, 8192]
    saved_compile = json.loads((checkpoints[0] / "state.json").read_text())["compile_s"]
    assert saved_compile == dict(history(client, first.run_id, "train/compile_s"))[4096] > 0  # the clock's part
    latest = checkpoints[-1] / "model.pt"
    size = latest.stat().st_size
    with open(latest, "r+b") as fh:
        fh.truncate(size // 2)
    capfd.readouterr()
    # same run.name + storage: resumes, from 4096; the first part wrote its checkpoints in Ray's upload thread (the
    # default), this part writes them in the training thread: either way the losses continue exactly
    second = train(config(env, "resumed", "eval.bf16_eval=on", "checkpoint.asynchronous=false"))
    assert second.finished and second.run_id == first.run_id and second.tokens == STEPS * TPS
    warning = (f"warning: checkpoint file {latest} is corrupt: {size // 2} bytes, manifest.rank0.json says {size} "
               f"(truncated or overwritten); resuming from the previous valid checkpoint {checkpoints[0]}")
    seen = ""
    for _ in range(40):  # Ray forwards the workers' lines to this process asynchronously
        out, err = capfd.readouterr()
        seen += out + err
        if warning in seen:
            break
        time.sleep(0.25)
    assert len([line for line in seen.splitlines() if "warning: checkpoint" in line]) == 1, seen[-3000:]
    assert warning in seen and f"resumed from {checkpoints[0]}: step 4, 4.1k tokens" in seen
    resumed = history(client, second.run_id, "train/loss")
    reference = history(client, full.run_id, "train/loss")
    assert [s for s, _ in resumed] == [s for s, _ in reference]  # every step once, none twice
    assert resumed == reference  # bit-identical on CPU fp32, across the stage boundary at 6144
    assert history(client, second.run_id, "val/bpb") == history(client, full.run_id, "val/bpb")
    # the resumed process's compilation adds to the checkpoint's: train/compile_s is the run's, across the resume.
    # Steps 5-8 keep the first process's values (a resume never logs a step twice), so only the resumed process's
    # own points, after 8192, continue from the checkpoint's counter; the first process's stage-2 compilation (at
    # 7168) may be more or less than the resumed one's: no order across the two processes
    compile_s = history(client, second.run_id, "train/compile_s")
    resumed_part = [v for s, v in compile_s if s > 8192]
    assert [s for s, _ in compile_s] == [s for s, _ in reference]
    assert resumed_part == sorted(resumed_part) and resumed_part[0] > saved_compile
    assert client.get_run(second.run_id).data.tags["yxanul.compile_s_scope"] == "run"
    # the stop at 8192 was not the run's end: the FP8-off pass ran once, at the end of the resumed part
    assert history(client, second.run_id, "val/bpb_bf16_eval") == history(client, full.run_id, "val/bpb_bf16_eval")
    assert client.get_run(second.run_id).info.status == "FINISHED"


def test_sigterm_to_jobs_train_is_one_line_and_the_same_command_resumes_exactly(env, uninterrupted, ray_cluster):
    """A real SIGTERM to `python -m jobs.train` after its first checkpoint: one line on stderr, exit code 143, no
    stack dump; the run records the interruption; the same command resumes from the checkpoint and the losses
    are bit-identical to the uninterrupted run's. The job attaches to the session's Ray (as under `ray job
    submit`), so only the job's own driver gets the signal."""
    import os
    import re
    import signal
    import subprocess
    import sys
    import time

    from mlflow import MlflowClient

    cfg = config(env, "sig")
    command = [sys.executable, "-m", "jobs.train", str(PULSE), *overrides(env, "sig")]
    environ = {**os.environ, "RAY_ADDRESS": ray_cluster.get_runtime_context().gcs_address}
    proc = subprocess.Popen(command, cwd=PULSE.parents[2], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=environ)
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline and proc.poll() is None and not checkpoint_on_storage(run_dir(cfg)):
        time.sleep(0.05)
    assert proc.poll() is None, proc.communicate()
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 143, (out, err)
    assert re.fullmatch(r"interrupted at \S+ tokens in run sig; the same command resumes\n", err), err
    assert "SIGTERM received" not in out + err and "Traceback" not in out + err
    client = MlflowClient(env["uri"])
    [run] = client.search_runs([client.get_experiment_by_name("test-train").experiment_id],
                               filter_string="tags.`yxanul.run_name` = 'sig'")
    assert run.data.tags["yxanul.status"] == "killed" and run.data.tags["yxanul.interruptions"] == "1"
    assert re.match(r"\d{4}-\d\d-\d\dT[\d:]+Z SIGTERM at \S+ tokens in run sig$", run.data.tags["yxanul.last_interruption"])

    again = subprocess.run(command, cwd=PULSE.parents[2], capture_output=True, text=True, env=environ, timeout=300)
    assert again.returncode == 0, again.stderr[-3000:]
    assert "training finished" in again.stdout
    _, full = uninterrupted
    assert history(client, run.info.run_id, "train/loss") == history(client, full.run_id, "train/loss")
    tags = client.get_run(run.info.run_id).data.tags
    assert tags["yxanul.status"] == "finished" and tags["yxanul.resumes"] == "1" and tags["yxanul.resumed"] == "true"


def test_resume_with_another_worker_count_is_refused(env, uninterrupted):
    with pytest.raises(ConfigError, match=r"scaling.num_workers was 2, now 1 .* choose a new run.name"):
        train(config(env, "full", "scaling.num_workers=1", "train.tokens_per_step=1024"))


def test_non_finite_loss_stops_with_step_and_stage_named(env, ray_cluster):
    from mlflow import MlflowClient

    cfg = config(env, "nan", "optim.lr=1e30", "optim.warmup_tokens=0", "optim.grad_clip=0", "scaling.num_workers=1")
    with pytest.raises(NonFiniteLossError, match=r"non-finite loss or gradient at step 1 \(tokens 1024, curriculum "
                                                 r"stage 0, seq_len 32.*train.on_nan=skip"):
        train(cfg)
    client = MlflowClient(env["uri"])
    (run,) = client.search_runs(client.get_experiment_by_name("test-train").experiment_id,
                                "tags.`yxanul.run_name` = 'nan'")
    assert run.info.status == "FAILED" and "step 1" in run.data.tags["yxanul.error"]


def test_on_nan_skip_skips_non_finite_steps_and_finishes(env, tmp_path):
    """Ray Train's local mode (num_workers=0) runs the real loop in this process: no cluster needed."""
    from ray.train import RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    from yxanul.data.loader import PreparedDataset
    from yxanul.train.launch import loop_config
    from yxanul.train.loop import train_loop_per_worker

    cfg = config(env, "skip", "optim.lr=1e30", "optim.warmup_tokens=0", "optim.grad_clip=0", "train.on_nan=skip",
                 "scaling.num_workers=1", "tracking.enabled=false", "eval.every_tokens=0")
    trainer = TorchTrainer(train_loop_per_worker, train_loop_config=loop_config(cfg, PreparedDataset.open(env["data"])),
                           scaling_config=ScalingConfig(num_workers=0),
                           run_config=RunConfig(name="skip", storage_path=str(tmp_path)))
    result = trainer.fit()
    # step 0 applies lr 1e30 (finite), so every later step is non-finite and skipped, never applied
    assert result.metrics["tokens"] == STEPS * TPS
    assert result.metrics["train/skipped_steps"] == STEPS - 1
    assert "train/loss" not in result.metrics  # the last log interval had only skipped steps


def test_profiling_each_stage_leaves_the_losses_bit_identical(env, tmp_path):
    """train.profile_attention runs rank 0's second step of each stage under torch.profiler: the same losses, step for
    step, as with it off. Exact, not within a tolerance: both runs execute the same kernels on the same tensors (the
    profiler only records what runs; CPU tensors are 64-byte aligned whatever else is allocated, so the vectorised
    reductions split their work the same way), as the bit-identical resume above relies on too. Ray Train's local
    mode (num_workers=0) runs the loop in this process: one worker, 4 steps, 2 per stage."""
    from mlflow import MlflowClient
    from ray.train import RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    from yxanul.data.loader import PreparedDataset
    from yxanul.train.launch import loop_config
    from yxanul.train.loop import train_loop_per_worker

    client = MlflowClient(env["uri"])
    experiment = client.create_experiment("test-profile")
    runs = {}
    for on in (True, False):
        cfg = config(env, f"profile-{on}", "scaling.num_workers=1", f"train.max_tokens={4 * TPS}",
                     "curriculum.stages=[{seq_len: 32, until_tokens: 2048}, {seq_len: 64}]", "eval.every_tokens=0",
                     "checkpoint.every_tokens=0", f"train.profile_attention={str(on).lower()}")
        runs[on] = client.create_run(experiment).info.run_id
        tracking = {"uri": env["uri"], "run_id": runs[on]}
        TorchTrainer(train_loop_per_worker, train_loop_config=loop_config(cfg, PreparedDataset.open(env["data"]),
                                                                           tracking),
                     scaling_config=ScalingConfig(num_workers=0),
                     run_config=RunConfig(name=f"profile-{on}", storage_path=str(tmp_path))).fit()
    on, off = (history(client, runs[k], "train/loss") for k in (True, False))
    assert [s for s, _ in on] == [TPS * k for k in range(1, 5)]
    assert on == off
    assert history(client, runs[True], "val/bpb") == history(client, runs[False], "val/bpb")
    share = history(client, runs[True], "train/attention_share")
    assert [s for s, _ in share] == [2 * TPS, 4 * TPS] and all(0 < v < 1 for _, v in share)
    assert history(client, runs[False], "train/attention_share") == []
    # the profiled steps (2 and 4), like the warm-ups (1 and 3), are kept out of tokens/s: with a log point per step,
    # no step of this run has a rate with profiling on; off, the profiled steps have theirs
    assert history(client, runs[True], "train/tokens_per_s") == []
    assert [s for s, _ in history(client, runs[False], "train/tokens_per_s")] == [2 * TPS, 4 * TPS]


def test_fsdp_run_matches_the_ddp_run(env, uninterrupted):
    """scaling.strategy=fsdp shards the same model over the same 2 workers: same data, same losses up to
    floating-point summation order, and a checkpoint keyed like the DDP one."""
    from mlflow import MlflowClient

    _, ddp = uninterrupted
    result = train(config(env, "fsdp", "scaling.strategy=fsdp"))
    assert result.finished and result.tokens == STEPS * TPS
    client = MlflowClient(env["uri"])
    fsdp_loss = history(client, result.run_id, "train/loss")
    ddp_loss = history(client, ddp.run_id, "train/loss")
    assert [s for s, _ in fsdp_loss] == [s for s, _ in ddp_loss]
    assert [v for _, v in fsdp_loss] == pytest.approx([v for _, v in ddp_loss], rel=1e-4)
    assert result.metrics["val/bpb"] == pytest.approx(ddp.metrics["val/bpb"], rel=1e-4)
    # the weights' RMS per group: summed over the shards under FSDP, whole on each rank under DDP
    for group in ("embed", "attention", "mlp", "head"):
        fsdp_rms, ddp_rms = (history(client, run, f"train/weight_rms/{group}") for run in (result.run_id, ddp.run_id))
        assert fsdp_rms and [v for _, v in fsdp_rms] == pytest.approx([v for _, v in ddp_rms], rel=1e-4), group
    import torch

    fsdp_weights = torch.load(Path(result.checkpoint_path) / "model.pt", weights_only=True)
    ddp_weights = torch.load(Path(ddp.checkpoint_path) / "model.pt", weights_only=True)
    assert fsdp_weights.keys() == ddp_weights.keys()
