"""The one build path (model, precision, compile, optimizer), per-GPU throughput accounting and the
config knobs behind them (precision.compile, precision.fp8_layers=auto, max_tokens_per_microbatch=auto)."""

from __future__ import annotations

import pytest
import torch

from yxanul.config import ExperimentConfig, ModelConfig, OptimConfig, PrecisionConfig, load_config
from yxanul.curriculum import AUTO_MICROBATCH_CPU, build_plan, microbatch_budget
from yxanul.errors import ConfigError, PrecisionError
from yxanul.metrics import PEAK_ENV, ThroughputMeter, peak_tflops
from yxanul.model import Yxanul
from yxanul.precision import Precision
from yxanul.train.build import build_training

TINY = ModelConfig(preset="tiny", vocab_size=500)


def test_meter_reports_global_and_per_gpu_rates_and_mfu_from_the_per_gpu_rate(monkeypatch):
    monkeypatch.setenv(PEAK_ENV, "100,200")
    meter = ThroughputMeter(flops_per_tok=1e6, device="cpu", world=2)
    meter.start()
    meter.add(4000)
    meter._started -= 2.0  # 2 s of running time, without sleeping
    t = meter.read()
    assert t.tokens_per_s == pytest.approx(2000, rel=1e-3)
    assert t.tokens_per_s_per_gpu == pytest.approx(t.tokens_per_s / 2)
    assert t.mfu_bf16 == pytest.approx(t.tokens_per_s_per_gpu * 1e6 / 100e12)
    assert t.mfu_fp8 == pytest.approx(t.tokens_per_s_per_gpu * 1e6 / 200e12)


def test_untimed_seconds_count_in_elapsed_but_not_in_the_rate():
    meter = ThroughputMeter(flops_per_tok=1.0, device="cpu")
    meter.start()
    meter.add(100)
    meter._started -= 1.0
    meter.add_untimed(5.0)
    t = meter.read()
    assert t.tokens_per_s == pytest.approx(100, rel=1e-3)
    assert t.elapsed_s == pytest.approx(6.0, rel=1e-3)


@pytest.mark.parametrize("value", ["abc", "0", "1,2,3", "-5"])
def test_a_bad_declared_peak_is_one_clear_error(monkeypatch, value):
    monkeypatch.setenv(PEAK_ENV, value)
    with pytest.raises(ConfigError, match=PEAK_ENV):
        peak_tflops("cpu")


def test_declared_peak_with_bf16_only(monkeypatch):
    monkeypatch.setenv(PEAK_ENV, "312")
    assert peak_tflops("cpu") == (312.0, None)
    monkeypatch.delenv(PEAK_ENV)
    assert peak_tflops("cpu") == (None, None)


@pytest.mark.parametrize(("given", "expected"), [("on", "on"), (True, "on"), (False, "off"), ("auto", "auto")])
def test_precision_compile_accepts_yaml_booleans(given, expected):
    assert PrecisionConfig(compile=given).compile == expected


def test_compile_auto_means_cuda_only():
    auto = PrecisionConfig()
    assert auto.compiles("cuda") and not auto.compiles("cpu")
    assert PrecisionConfig(compile="on").compiles("cpu") and not PrecisionConfig(compile="off").compiles("cuda")


def test_fp8_layers_default_to_the_measured_plan_and_an_empty_list_is_refused():
    assert PrecisionConfig(mode="fp8").fp8_layers == "auto"
    assert PrecisionConfig(mode="fp8", fp8_layers=["head"]).fp8_layers == ["head"]
    with pytest.raises(ValueError, match="empty precision.fp8_layers"):
        PrecisionConfig(mode="fp8", fp8_layers=[])
    cfg = load_config(None, ["precision.fp8_layers=[attention, head]", "train.max_tokens_per_microbatch=auto"])
    assert cfg.precision.fp8_layers == ["attention", "head"] and cfg.train.max_tokens_per_microbatch == "auto"


def test_auto_microbatch_plans_with_the_cpu_budget_until_a_worker_measures():
    cfg = load_config(None, ["curriculum.stages=[{seq_len: 256}]", "train.tokens_per_step=131072",
                             "train.max_tokens=1e6", "train.max_tokens_per_microbatch=auto"])
    assert microbatch_budget(cfg) == AUTO_MICROBATCH_CPU
    assert build_plan(cfg, 1).stages[0].micro_batch == AUTO_MICROBATCH_CPU // 256
    measured = build_plan(cfg, 1, max_tokens_per_microbatch=65536).stages[0]
    assert (measured.micro_batch, measured.grad_accum) == (256, 2)
    long = load_config(None, ["curriculum.stages=[{seq_len: 32768}]", "train.tokens_per_step=65536",
                              "train.max_tokens=1e6", "train.max_tokens_per_microbatch=auto",
                              "model.max_positions=32768", "model.context=32768"])
    assert microbatch_budget(long) == 32768  # one sequence must fit


def test_build_on_cpu_is_eager_fp32_with_the_callers_initial_weights():
    torch.manual_seed(7)
    reference = Yxanul(TINY)
    torch.manual_seed(7)
    built = build_training(TINY, PrecisionConfig(mode="fp32"), OptimConfig(), torch.device("cpu"),
                           max_tokens_per_microbatch="auto", seq_len=64, max_sequences=8)
    assert not built.compiled and built.fp8_plan is None and built.microbatch_fit is None
    assert built.tokens_per_microbatch == AUTO_MICROBATCH_CPU
    assert built.step_model is built.model  # one process: no DDP wrapper
    for (name, a), b in zip(reference.state_dict().items(), built.model.state_dict().values()):
        assert torch.equal(a, b), name
    groups = built.optimizer.param_groups
    assert [g["weight_decay"] for g in groups] == [OptimConfig().weight_decay, 0.0]
    assert "eager" in built.describe() and "fp32" in built.describe()


def test_fp8_on_cpu_is_refused_before_any_model_is_built():
    with pytest.raises(PrecisionError, match="needs a CUDA GPU"):
        build_training(TINY, PrecisionConfig(mode="fp8"), OptimConfig(), torch.device("cpu"))


def test_dry_run_says_how_the_workers_will_build(tmp_path):
    from yxanul.train.launch import describe

    cfg = load_config(None, [f"data.output_dir={tmp_path / 'none'}", "precision.mode=fp8", "scaling.use_gpu=true",
                             "train.max_tokens_per_microbatch=auto"])
    text = describe(cfg)
    assert "fp8_layers auto: each layer group (attention, mlp, head) is timed in BF16 and FP8" in text
    assert "torch.compile per block" in text
    assert "# micro-batch: auto: measured on each run's card at start-up" in text
    forced = describe(ExperimentConfig.model_validate({**cfg.to_dict(), "precision": {
        "mode": "fp8", "fp8_layers": ["head"], "compile": "off"}}))
    assert "fp8_layers head (forced)" in forced and "eager (not compiled)" in forced


def test_precision_refuses_to_apply_an_unmeasured_auto_plan():
    precision = Precision.__new__(Precision)  # an fp8 Precision cannot be constructed on CPU; test apply's guard
    precision.mode, precision.fp8_layers = "fp8", None
    with pytest.raises(PrecisionError, match="has not been measured yet"):
        precision.apply(Yxanul(TINY))
