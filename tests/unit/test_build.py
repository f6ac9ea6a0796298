"""The one build path (model, precision, compile, optimizer), per-GPU throughput accounting and the
config knobs behind them (precision.compile, precision.fp8_layers=auto, max_tokens_per_microbatch=auto)."""

from __future__ import annotations

import pytest
import torch

from yxanul.config import ExperimentConfig, ModelConfig, OptimConfig, PrecisionConfig, load_config
from yxanul.curriculum import AUTO_MICROBATCH_CPU, build_plan, microbatch_budget, unmeasured_budget
from yxanul.errors import ConfigError, PrecisionError
from yxanul.metrics import PEAK_ENV, ThroughputMeter, peak_tflops
from yxanul.model import Yxanul
from yxanul.precision import Precision
from yxanul.train.build import build_training, choose_sequences, measured_sizes

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
    # where the build's seconds went, step by step, in the order they ran (the timeline's `build` phase is their sum)
    assert list(built.seconds) == ["init", "to_device", "precision", "parallel", "optimizer"]
    assert all(v >= 0 for v in built.seconds.values())
    assert f"built in {sum(built.seconds.values()):.1f} s (init " in built.describe()


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
    # the final validation's second pass (eval.bf16_eval): said where it will run, silent where it will not
    assert ("# final validation: again with FP8 off when a layer group runs in FP8, logged as val/bpb_bf16_eval "
            "(eval.bf16_eval=auto)") in text
    bf16 = {**cfg.to_dict(), "precision": {"mode": "bf16"}}
    assert "# final validation" not in describe(ExperimentConfig.model_validate(bf16))
    assert "# final validation: again through the same path (no FP8 to turn off: equal to val/bpb), logged as " \
           "val/bpb_bf16_eval (eval.bf16_eval=on)" in describe(ExperimentConfig.model_validate(
               {**bf16, "eval": {**cfg.to_dict()["eval"], "bf16_eval": "on"}}))
    assert "# final validation" not in describe(ExperimentConfig.model_validate(
        {**cfg.to_dict(), "eval": {**cfg.to_dict()["eval"], "bf16_eval": "off"}}))


def test_precision_refuses_to_apply_an_unmeasured_auto_plan():
    precision = Precision.__new__(Precision)  # an fp8 Precision cannot be constructed on CPU; test apply's guard
    precision.mode, precision.fp8_layers = "fp8", None
    with pytest.raises(PrecisionError, match="has not been measured yet"):
        precision.apply(Yxanul(TINY))


def test_one_rule_for_an_unmeasured_budget_in_the_curriculum_and_the_build():
    cfg = load_config(None, ["curriculum.stages=[{seq_len: 32768}]", "train.tokens_per_step=65536",
                             "train.max_tokens=1e6", "train.max_tokens_per_microbatch=auto",
                             "model.max_positions=32768", "model.context=32768"])
    built = build_training(TINY, PrecisionConfig(mode="fp32"), OptimConfig(), torch.device("cpu"),
                           max_tokens_per_microbatch="auto", seq_len=32768, max_sequences=2)
    assert built.tokens_per_microbatch == microbatch_budget(cfg) == unmeasured_budget(32768) == 32768
    assert unmeasured_budget(64) == AUTO_MICROBATCH_CPU


def test_memory_is_measured_on_micro_batches_holding_a_whole_head_chunk():
    assert measured_sizes(2048, 0, 64) == (1, 2)  # plain head: one and two sequences
    assert measured_sizes(2048, 4096, 64) == (2, 4)  # both hold a whole 4096-token chunk
    assert measured_sizes(1024, 4096, 64) == (4, 8)
    assert measured_sizes(8192, 4096, 64) == (1, 2)
    assert measured_sizes(1024, 4096, 4) == (2, 4)  # never beyond the largest micro-batch the run can use
    assert measured_sizes(2048, 4096, 1) == (1, 2)


def test_the_auto_choice_from_two_measured_peaks():
    gib = 2**30
    # 2 and 4 sequences peak at 12 and 16 GiB: 2 GiB per sequence, 8 GiB fixed, + 2 GiB of optimizer state
    n, info = choose_sequences((12 * gib, 16 * gib), (2, 4), 2 * gib, 80 * gib, max_sequences=64, headroom=0.85)
    assert info["bytes_per_sequence"] == 2 * gib and info["fixed_bytes"] == 10 * gib
    assert n == 16 and info["fits"]  # 10 + 16 x 2 = 42 GiB <= 68; 32 sequences would need 74
    assert info["predicted_peak_gib"] == pytest.approx(42.0)
    assert choose_sequences((12 * gib, 16 * gib), (2, 4), 2 * gib, 80 * gib, max_sequences=8)[0] == 8
    tight, info = choose_sequences((70 * gib, 75 * gib), (1, 2), 0, 80 * gib, max_sequences=64)
    assert tight == 1 and not info["fits"]  # even one sequence is over the headroom: said, not hidden


def test_release_built_resets_transformer_engines_fp8_state_where_te_ran(monkeypatch):
    """A sweep's in-process trials build model after model in one process: Transformer Engine's process-global FP8
    state (amax and scale buffers keyed by autocast) would keep the last model's scaling tensors, so it is reset
    with the rest; a process where TE never ran does not import it for that."""
    import sys
    import types

    from yxanul.train.build import release_built

    resets: list[str] = []
    manager = type("FP8GlobalStateManager", (), {"reset": classmethod(lambda cls: resets.append("reset"))})
    monkeypatch.delitem(sys.modules, "transformer_engine.pytorch.quantization", raising=False)
    release_built()
    assert resets == [] and "transformer_engine.pytorch.quantization" not in sys.modules
    monkeypatch.setitem(sys.modules, "transformer_engine.pytorch.quantization",
                        types.SimpleNamespace(FP8GlobalStateManager=manager))
    release_built()
    assert resets == ["reset"]


def test_release_built_leaves_no_compiled_graph_to_the_garbage_collector():
    """Dynamo's reset turns a compiled model's graphs into garbage in reference cycles; release_built collects them
    then, so that the next trial's allocations do not run the collector over them (in another thread, among that
    trial's compiled code). ``gc.get_objects()`` lists tracked objects, garbage not yet collected included."""
    import gc

    from torch._inductor.output_code import CompiledFxGraph

    from yxanul.train.build import release_built

    def compiled_graphs() -> int:
        return sum(type(o) is CompiledFxGraph for o in gc.get_objects())  # type(): proxies among them

    def train_a_compiled_model() -> None:
        model = torch.compile(torch.nn.Sequential(torch.nn.Linear(16, 16), torch.nn.GELU(), torch.nn.Linear(16, 1)))
        model(torch.randn(4, 16)).sum().backward()

    release_built()
    gc.disable()  # only release_built may collect
    try:
        train_a_compiled_model()
        assert compiled_graphs() >= 2  # forward and backward, alive while Dynamo holds them
        release_built()
        assert compiled_graphs() == 0
    finally:
        gc.enable()
