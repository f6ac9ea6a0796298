"""FLOPs per token, MFU, the throughput meter, and jobs.bench on the CPU."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.output import own_lines
from yxanul.accelerators import get_spec
from yxanul.config import ModelConfig
from yxanul.metrics import ThroughputMeter, flops_per_token, flops_split, mfu

ROOT = Path(__file__).resolve().parents[2]


def test_flops_per_token_of_the_270m_preset():
    f = flops_per_token(ModelConfig(preset="yxanul-270m"), 2048)
    assert f == pytest.approx(1.92651264e9)
    # The figure: the BF16 ceiling at 800 TFLOP/s is about 415k tokens/s.
    assert 800e12 / f == pytest.approx(415_258, rel=1e-4)


def test_flops_per_token_counts_matmuls_and_attention():
    c = ModelConfig(preset="tiny", vocab_size=128)  # hidden 64, 2 layers, ffn 176, 4 heads / 2 kv
    per_layer = 64 * (4 + 2 * 2) * 16 + 64 * 64 + 3 * 64 * 176
    assert flops_per_token(c, 100) == 6 * (2 * per_layer + 128 * 64) + 12 * 2 * 64 * 100


def test_flops_split_into_matmuls_and_attention_sums_to_flops_per_token():
    c = ModelConfig(preset="tiny", vocab_size=128)
    per_layer = 64 * (4 + 2 * 2) * 16 + 64 * 64 + 3 * 64 * 176
    for seq_len in (8, 64, 2048):
        split = flops_split(c, seq_len)
        assert split.matmul == 6 * (2 * per_layer + 128 * 64)  # the same at every length
        assert split.attention == 12 * 2 * 64 * seq_len
        assert split.total == flops_per_token(c, seq_len)  # exactly: one formula
        assert split.attention_share == split.attention / (split.matmul + split.attention)
    big = ModelConfig(preset="yxanul-270m")
    assert flops_split(big, 2048).total == flops_per_token(big, 2048)
    # attention's share grows with the sequence: 12 L h T against 6 N
    assert flops_split(big, 64).attention_share < flops_split(big, 2048).attention_share


def test_mfu_against_the_card_peaks():
    h100 = get_spec("H100")
    assert mfu(500_000, 2e9, h100.bf16_tflops) == pytest.approx(1e15 / (989.4e12))
    assert mfu(500_000, 2e9, h100.fp8_tflops) == pytest.approx(1e15 / (1978.9e12))
    assert mfu(1.0, 1.0, None) is None


def test_throughput_meter_counts_only_running_time():
    meter = ThroughputMeter(flops_per_tok=1.0, device="cpu")
    meter.start()
    meter.add(1000)
    meter.pause()
    paused_elapsed = meter._elapsed
    meter.start()
    meter.add(500)
    t = meter.read()
    assert t.tokens_per_s > 0 and t.mfu_bf16 is None and t.peak_mem_gib is None
    assert t.elapsed_s >= paused_elapsed
    assert meter.read().tokens_per_s == 0.0 or meter._window_tokens == 0


def _job(capsys, *args: str) -> tuple[int, str, str]:
    """Run jobs.bench in this process (its CLI contract: exit code, stdout, one-line stderr)."""
    from jobs.bench import main
    from yxanul.cli import run_job

    code = run_job(main, list(args))
    out = capsys.readouterr()
    return code, out.out, out.err


def test_bench_dry_run_prints_exact_parameter_counts(capsys):
    code, out, err = _job(capsys, str(ROOT / "experiments/bench/h100-270m.yaml"), "--dry-run")
    assert code == 0, err
    assert "273,329,792 params" in out and "1.927 GFLOP/token" in out
    assert "HF LlamaForCausalLM peer" in out and "recipe=delayed fp8_layers=mlp+head" in out


def test_bench_bad_key_is_one_error_line(capsys):
    code, _, err = _job(capsys, str(ROOT / "experiments/bench/cpu-smoke.yaml"), "micro_bach=2")
    assert code == 2
    lines = own_lines(err)
    assert len(lines) == 1 and lines[0].startswith("error: unknown key 'micro_bach'")


def test_bench_runs_on_cpu_with_the_peer(capsys, tmp_path):
    out = tmp_path / "bench.jsonl"
    code, stdout, err = _job(capsys, str(ROOT / "experiments/bench/cpu-smoke.yaml"), f"output={out}", "steps=1")
    assert code == 0, err
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert [row["label"] for row in rows] == ["HF Llama peer (bf16)", "fp32", "bf16"]
    for row in rows:
        assert row["error"] is None and row["tokens_per_s"] > 0 and row["card"] == "cpu"
    assert rows[2]["vs_peer"] == pytest.approx(rows[2]["tokens_per_s"] / rows[0]["tokens_per_s"])
    assert "| tiny | bf16 |" in out.with_suffix(".md").read_text() and "| tiny | bf16 |" in stdout


def _smoke_rows(capsys, tmp_path, *overrides: str) -> list[dict]:
    """The rows of experiments/bench/cpu-smoke.yaml, one step, no peer, with ``overrides``."""
    out = tmp_path / "bench.jsonl"
    code, _, err = _job(capsys, str(ROOT / "experiments/bench/cpu-smoke.yaml"), f"output={out}", "steps=1",
                        "peer=false", *overrides)
    assert code == 0, err
    return [json.loads(line) for line in out.read_text().splitlines()]


def test_bench_measures_each_attention_backend_against_bf16_with_the_same_backend(capsys, tmp_path):
    rows = _smoke_rows(capsys, tmp_path, "precisions=[fp32,bf16]", "attention_backends=[torch,cudnn]")
    assert [row["label"] for row in rows] == ["fp32, torch attention", "fp32, cudnn attention",
                                              "bf16, torch attention", "bf16, cudnn attention"]
    assert [row["attention"] for row in rows] == ["torch", "cudnn", "torch", "cudnn"]
    # each against the BF16 row of its own backend
    assert rows[2]["vs_bf16"] == rows[3]["vs_bf16"] == 1.0
    assert rows[1]["vs_bf16"] == pytest.approx(rows[1]["tokens_per_s"] / rows[3]["tokens_per_s"])
    # the CPU runs the same attention kernel whatever the priority: the same seeded loss to the bit
    assert rows[0]["loss_first"] == rows[1]["loss_first"] and rows[2]["loss_first"] == rows[3]["loss_first"]
    code, stdout, _ = _job(capsys, str(ROOT / "experiments/bench/cpu-smoke.yaml"), "--dry-run",
                           "attention_backends=[torch,cudnn]")
    assert code == 0 and "bf16, plain head, torch attention" in stdout and "cudnn attention" in stdout


def test_bench_measures_each_head_path_against_bf16_with_the_same_head(capsys, tmp_path):
    rows = _smoke_rows(capsys, tmp_path, "precisions=[bf16]", "head_chunk_tokens=[0,128]")
    assert [row["label"] for row in rows] == ["bf16, plain head", "bf16, chunk 128 head"]
    assert [row["head"] for row in rows] == ["plain", "chunk 128"]
    assert [row["vs_bf16"] for row in rows] == [1.0, 1.0]  # each against the BF16 row of its own head path
    # the same seeded weights and tokens: the first loss differs by the chunked GEMMs' rounding only
    # (a bf16 logit moves by at most one ulp, 2^-7 relative; the loss by at most twice the largest logit change;
    # logits of freshly initialised weights stay far below ln 1000 = 6.9)
    assert rows[1]["loss_first"] == pytest.approx(rows[0]["loss_first"], abs=2 * 2**-7 * 6.9)
    code, stdout, _ = _job(capsys, str(ROOT / "experiments/bench/cpu-smoke.yaml"), "--dry-run",
                           "head_chunk_tokens=[0,128]")
    assert code == 0 and "yxanul bf16, plain head" in stdout and "yxanul bf16, chunk 128 head" in stdout
