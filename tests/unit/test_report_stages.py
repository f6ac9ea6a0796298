"""The report's curriculum stages on synthetic runs with known per-stage values: tokens per stage from the stage tag,
FLOPs per token and their attention share from the recorded model, medians of tokens/s over the logging intervals
that lie wholly inside a stage (an interval across a boundary is dropped), the measured attention share, "not
recorded" where a run did not profile, runs recorded before the stage tag, and reports without a curriculum that
read as before. Exact where the report only picks and averages values; FLOPs from the one formula."""

from __future__ import annotations

import json
import re

import pytest

from yxanul.config import ModelConfig
from yxanul.metrics import flops_split
from yxanul.report import RunSeries, build_report
from yxanul.report.render import format_summary, markdown
from yxanul.report.tables import stages_csv, tables

MODEL = {"model.preset": "tiny", "model.vocab_size": "null", "model.allow_unused_vocab": "false", "model.hidden": "64",
         "model.n_layers": "2", "model.n_heads": "4", "model.n_kv_heads": "2", "model.ffn_hidden": "176",
         "model.embed_rank": "0", "model.rope_theta": "10000.0", "model.context": "256", "model.max_positions": "512",
         "model.norm_eps": "1e-06", "model.tie_embeddings": "false", "model.init_std": "0.02"}
"""The model.* params a run of the tiny preset records (ExperimentConfig.flat_params())."""
TINY = ModelConfig(preset="tiny")
EVERY = 500  # a logging point every 500 tokens (2 steps of 250)


def run(arm: str, seed: int, stages: list[list[int]], rates: dict[int, float], shares: dict[int, float], *,
        tagged: bool = True) -> RunSeries:
    """A finished run of ``arm`` over 4000 tokens: ``stages`` as the loop's tag writes them ([index, seq_len, start,
    end]), train/stage and train/seq_len at every logging point, tokens/s per GPU at the points ``rates`` gives (none
    where a window held only the warm-up or profiled step), the attention share at the profiled steps' tokens."""
    points = range(EVERY, 4001, EVERY)

    def stage_at(tokens: int) -> list[int]:
        return next(s for s in stages if s[2] < tokens <= s[3])

    metrics = {
        "val/bpb": [(2000, 3.0), (4000, 2.5)], "val/english/bpb": [(2000, 3.0), (4000, 2.5)],
        "val/english/loss": [(2000, 2.0), (4000, 1.7)], "val/elapsed_s": [(2000, 10.0), (4000, 20.0)],
        "train/stage": [(t, float(stage_at(t)[0])) for t in points],
        "train/seq_len": [(t, float(stage_at(t)[1])) for t in points],
        "train/tokens_per_s_per_gpu": sorted(rates.items()),
        "train/attention_share": sorted(shares.items()),
    }
    tags = {"yxanul.vocab_size": "256", "yxanul.gpu_name": "NVIDIA H100 80GB HBM3", "yxanul.gpu_count": "1"}
    if tagged:
        tags["yxanul.curriculum_stages"] = json.dumps(stages)
    return RunSeries(f"{arm}-{seed}", f"r-{arm}-{seed}", f"{arm},seed={seed}", arm, axes={"curriculum": arm},
                     seed=seed, metrics=metrics, tags=tags,
                     params={**MODEL, "run.seed": str(seed), "train.max_tokens": "4000", "precision.mode": "bf16"})


# the curriculum arm: seq 64 until 2250 tokens, then 256; the boundary falls inside the logging interval (2000, 2500]
SHORT = [[0, 64, 0, 2250], [1, 256, 2250, 4000]]
SHORT_RATES = {0: {1000: 100.0, 1500: 110.0, 2000: 120.0, 2500: 999.0, 3000: 50.0, 3500: 52.0, 4000: 54.0},
               1: {1000: 104.0, 1500: 108.0, 2500: 999.0, 3000: 56.0, 3500: 58.0, 4000: 60.0}}
SHORT_SHARES = {0: {750: 0.10, 2750: 0.30}, 1: {750: 0.14, 2750: 0.34}}
NONE = [[0, 256, 0, 4000]]


def sweep(tagged: bool = True) -> list[RunSeries]:
    runs = [run("curriculum=none", s, NONE, {t: 50.0 + s for t in range(1000, 4001, EVERY)}, {}, tagged=tagged)
            for s in (0, 1)]
    return runs + [run("curriculum=short", s, SHORT, SHORT_RATES[s], SHORT_SHARES[s], tagged=tagged) for s in (0, 1)]


def test_per_stage_tokens_flops_rates_and_attention_pool_the_matched_seeds():
    report = build_report(sweep(), "sweep curricula", reference="curriculum=none")
    assert report.curriculum
    rows = {(r.arm, r.index): r for r in report.stages}
    none, short0, short1 = rows["curriculum=none", 0], rows["curriculum=short", 0], rows["curriculum=short", 1]
    assert [(r.seq_len, r.seeds, r.tokens, r.exact) for r in (none, short0, short1)] == [
        (256, 2, 4000, True), (64, 2, 2250, True), (256, 2, 1750, True)]
    # FLOPs from the recorded model (the tiny preset, the model's vocabulary 256): the one formula
    assert short0.flops == flops_split(TINY, 64, 256) and short1.flops == flops_split(TINY, 256, 256)
    assert short0.flops.attention_share < short1.flops.attention_share
    # the interval (2000, 2500] crosses the boundary at 2250: its 999 is in neither stage
    assert (short0.tokens_per_s, short0.rate_points) == (108.0, 5)  # median of 100, 110, 120, 104, 108
    assert (short1.tokens_per_s, short1.rate_points) == (55.0, 6)  # median of 50, 52, 54, 56, 58, 60
    assert (none.tokens_per_s, none.rate_points) == (50.5, 14)
    assert (short0.attention_share, short1.attention_share) == (pytest.approx(0.12), pytest.approx(0.32))
    assert (none.attention_share, none.attention_points) == (None, 0)


def test_the_stage_table_says_not_recorded_and_keeps_the_page_layout():
    report = build_report(sweep(), "sweep curricula", reference="curriculum=none")
    keys = [t.key for t in tables(report)]
    assert keys.index("stages") == keys.index("arms_speed") + 1  # beside the arms' speed
    [table] = [t for t in tables(report) if t.key == "stages"]
    assert table.head == ["arm", "seeds", "stage", "seq_len", "tokens", "FLOPs per token", "attention FLOPs",
                          "tokens/s per GPU", "attention time"]
    # tiny: 6 x (2 x 46,080 + 256 x 64) = 651,264 matmul FLOPs per token; attention 12 x 2 x 64 x seq_len
    assert table.body == [
        ["curriculum=none", "2", "0", "256", "4k", "1.04M", "37.6%", "50.5", "not recorded"],  # 393,216 / 1,044,480
        ["curriculum=short", "2", "0", "64", "2.25k", "750k", "13.1%", "108", "12.0%"],  # 98,304 / 749,568
        ["curriculum=short", "2", "1", "256", "1.75k", "1.04M", "37.6%", "55", "32.0%"]]
    assert "~" not in table.note
    text = format_summary(report)
    assert "Curriculum stages: throughput and attention per stage:" in text
    assert not re.search(r"\d\.\d+e[+-]\d", text + markdown(report)), "exponent notation"
    # the raw file: full precision, every arm
    head, body = stages_csv(report)
    csv = [dict(zip(head, row)) for row in body]
    assert [(r["arm"], r["stage"], r["tokens"], r["bounds"]) for r in csv] == [
        ("curriculum=none", "0", "4000", "exact"), ("curriculum=short", "0", "2250", "exact"),
        ("curriculum=short", "1", "1750", "exact")]
    assert float(csv[1]["flops_per_token"]) == flops_split(TINY, 64, 256).total
    # the median of two shares is their mean: (0.10 + 0.14) / 2, one rounding away from 0.12
    assert float(csv[1]["attention_share_median"]) == pytest.approx(0.12, rel=1e-15)
    assert (csv[0]["attention_share_median"], csv[0]["attention_share_points"]) == ("", "0")


def test_runs_recorded_before_the_stage_tag_read_their_stages_off_the_logging_points():
    report = build_report(sweep(tagged=False), "sweep curricula", reference="curriculum=none")
    rows = {(r.arm, r.index): r for r in report.stages}
    short0, short1 = rows["curriculum=short", 0], rows["curriculum=short", 1]
    # stage 1 starts at the last point of stage 0 (2000): bounds to within a logging interval, said with a ~
    assert (short0.tokens, short1.tokens, short0.exact) == (2000, 2000, False)
    assert short1.rate_points == 8  # the interval across the boundary can no longer be told apart
    [table] = [t for t in tables(report) if t.key == "stages"]
    assert table.body[1][4] == "~2k" and "~: stage bounds read off the logging points" in table.note


def test_a_report_without_a_curriculum_reads_as_before():
    """Arms of one stage each (an FP8-vs-BF16 sweep): no stage table on the page or the console, the same tables as a
    report of runs that logged no stage at all; stages.csv still has each arm's one row."""
    single = [run(f"precision={p}", s, NONE, {t: 50.0 for t in range(1000, 4001, EVERY)}, {1000: 0.2})
              for p in ("bf16", "fp8") for s in (0, 1)]
    report = build_report(single, "sweep fp8")
    assert not report.curriculum and [r.attention_share for r in report.stages] == [0.2, 0.2]
    bare = [run(f"precision={p}", s, NONE, {t: 50.0 for t in range(1000, 4001, EVERY)}, {})
            for p in ("bf16", "fp8") for s in (0, 1)]
    for r in bare:
        del r.metrics["train/stage"], r.metrics["train/seq_len"], r.metrics["train/attention_share"]
        del r.tags["yxanul.curriculum_stages"]
    before = build_report(bare, "sweep fp8")
    assert before.stages == []
    assert [t.key for t in tables(report)] == [t.key for t in tables(before)]
    assert "stages" not in [t.key for t in tables(report)]
    assert markdown(report) == markdown(before) and format_summary(report) == format_summary(before)
    assert len(stages_csv(report)[1]) == 2 and stages_csv(before)[1] == []
