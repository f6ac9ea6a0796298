"""Curriculum derivation: constant tokens per step, stage boundaries on whole steps, errors, presets."""

from __future__ import annotations

import pytest

from yxanul.config import experiments_dir, load_config
from yxanul.curriculum import build_plan
from yxanul.errors import ConfigError


def plan_for(*overrides: str, workers: int | None = None):
    return build_plan(load_config(None, list(overrides)), num_workers=workers)


def test_every_step_sees_exactly_tokens_per_step_in_every_stage():
    plan = plan_for("curriculum=seed-ultra", "train.max_tokens=5e6", "train.tokens_per_step=16384",
                    "train.max_tokens_per_microbatch=4096", "scaling.num_workers=4")
    assert [s.seq_len for s in plan.stages] == [8, 16, 32, 64, 128, 256, 512, 1024, 2048]
    for stage in plan.stages:
        assert stage.micro_batch * stage.seq_len <= 4096
        assert stage.micro_batch * stage.grad_accum * stage.seq_len * 4 == 16384
    # seq 2048 on 4 workers: 4096 tokens per worker = 2 sequences, micro-batch budget fits 2 -> no accumulation
    assert (plan.stages[-1].micro_batch, plan.stages[-1].grad_accum) == (2, 1)
    # seq 8: 512 sequences per worker, at most 512 per micro-batch
    assert (plan.stages[0].micro_batch, plan.stages[0].grad_accum) == (512, 1)


def test_micro_batch_budget_forces_accumulation():
    plan = plan_for("curriculum.stages=[{seq_len: 256}]", "train.tokens_per_step=8192",
                    "train.max_tokens_per_microbatch=1024", "train.max_tokens=1e5", workers=2)
    (stage,) = plan.stages
    assert (stage.micro_batch, stage.grad_accum) == (4, 4)  # 16 sequences per worker, 4 fit the budget


def test_stage_boundaries_land_on_whole_steps_and_the_last_stage_runs_to_the_end():
    plan = plan_for("curriculum.stages=[{seq_len: 16, until_tokens: 2500}, {seq_len: 32, until_fraction: 0.5}, "
                    "{seq_len: 64, until_tokens: 1}]", "train.tokens_per_step=1024", "train.max_tokens=10000",
                    "train.max_tokens_per_microbatch=1024", workers=1)
    # ceil(2500/1024)=3 steps, then until 5000 -> ceil(5000/1024)=5, last to ceil(10000/1024)=10
    assert [(s.start_step, s.end_step) for s in plan.stages] == [(0, 3), (3, 5), (5, 10)]
    assert plan.total_tokens == 10 * 1024
    assert plan.stage_for_step(2).seq_len == 16 and plan.stage_for_step(3).seq_len == 32
    assert plan.stage_for_step(9).seq_len == 64
    with pytest.raises(IndexError):
        plan.stage_for_step(10)


def test_stages_without_steps_at_a_small_budget_are_dropped_and_noted():
    plan = plan_for("curriculum=seed-ultra", "train.max_tokens=65536", "train.tokens_per_step=8192",
                    "train.max_tokens_per_microbatch=8192", workers=1)
    assert sum(s.steps for s in plan.stages) == 8
    assert plan.stages[-1].seq_len == 2048
    assert plan.dropped and "gets no step" in plan.dropped[0]


@pytest.mark.parametrize("overrides,message", [
    (["curriculum.stages=[{seq_len: 96}]", "train.tokens_per_step=1024"],
     r"curriculum stage 0 \(seq_len 96\).*1024 tokens per worker.*multiple of num_workers x seq_len = 96"),
    (["curriculum.stages=[{seq_len: 512}]", "train.max_tokens_per_microbatch=256"],
     r"seq_len 512 exceeds train.max_tokens_per_microbatch=256"),
    (["scaling.num_workers=3"], r"tokens_per_step=16384 is not divisible by scaling.num_workers=3"),
    (["curriculum.stages=[{seq_len: 16}, {seq_len: 32}]"], r"stage 0 .* neither until_tokens nor until_fraction"),
    (["curriculum.stages=[{seq_len: 16, until_tokens: 900}, {seq_len: 32, until_tokens: 500}, {seq_len: 64}]"],
     r"stage 1 ends at 500 tokens, before the previous stage's end \(900\)"),
    (["curriculum.stages=[{seq_len: 64, buckets: [32, 128]}]"], r"bucket 32 is not a multiple of seq_len 64"),
])
def test_impossible_shapes_are_config_errors_naming_stage_and_numbers(overrides, message):
    with pytest.raises(ConfigError, match=message):
        plan_for(*overrides)


def test_both_until_keys_is_rejected():
    with pytest.raises(ConfigError, match="both until_tokens .* and until_fraction"):
        load_config(None, ["curriculum.stages=[{seq_len: 8, until_tokens: 10, until_fraction: 0.5}]"])


def test_linear_warmup_grows_in_valid_multiples_then_holds():
    plan = plan_for("curriculum=linear-warmup", "train.max_tokens=4e6", "train.tokens_per_step=24576",
                    "train.max_tokens_per_microbatch=24576", workers=1)
    lengths = [s.seq_len for s in plan.stages]
    assert lengths == sorted(lengths) and lengths[-1] == 2048
    assert all(n % 8 == 0 and 24576 % n == 0 for n in lengths)
    assert 48 in lengths and 96 in lengths  # the factor 3 in tokens_per_step allows non-powers of two
    warm_end = next(s for s in plan.stages if s.seq_len == 2048).start_tokens
    assert 0.25 * 4e6 <= warm_end < 0.25 * 4e6 + 24576
    # linear growth: at the midpoint of the warmup the length is about halfway
    mid = plan.stage_for_step(round(0.125 * 4e6 / 24576)).seq_len
    assert 768 <= mid <= 1032


def test_linear_warmup_respects_what_the_dataset_serves():
    cfg = load_config(None, ["curriculum=linear-warmup", "train.max_tokens=4e6", "train.tokens_per_step=24576",
                             "train.max_tokens_per_microbatch=24576"])
    plan = build_plan(cfg, seq_len_ok=lambda n: 2048 % n == 0)
    assert all(2048 % s.seq_len == 0 for s in plan.stages)


def test_dry_run_table_lists_each_stage():
    plan = plan_for("curriculum=decomposition", "train.max_tokens=1e7", "train.tokens_per_step=32768",
                    "train.max_tokens_per_microbatch=8192", workers=2)
    text = plan.table()
    lines = text.splitlines()
    assert lines[0].split() == ["stage", "tokens", "from", "to", "seq_len", "buckets", "micro_batch", "accum",
                                "steps", "lr_scale"]
    assert lines[3].split()[4:9] == ["256", "256,512", "32", "2", str(plan.stages[2].steps)]
    assert "306 steps x 32.8k tokens/step" in text
    assert sum(r["steps"] for r in plan.rows()) == plan.total_steps == 306


@pytest.mark.parametrize("name", sorted(p.stem for p in (experiments_dir() / "curricula").glob("*.yaml")))
def test_every_curriculum_preset_plans_at_a_normal_budget(name):
    plan = plan_for(f"curriculum={name}", "train.max_tokens=1e8", "train.tokens_per_step=65536",
                    "train.max_tokens_per_microbatch=16384", workers=2)
    assert plan.stages[-1].seq_len == 2048
    assert plan.total_tokens >= 1e8
