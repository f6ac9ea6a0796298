"""Comparison numbers on fixed curves: target reach (interpolated), gap at equal tokens, speedup."""

from __future__ import annotations

import pytest

from yxanul.report import RunSeries, build_report, interpolate_crossing, value_at_tokens


def run(run_id, variant, pair, precision, bpb, clock, eng, code, tps, status="finished"):
    metrics = {
        "val/bpb": bpb, "val/elapsed_s": clock,
        "val/english/loss": eng, "val/code/loss": code,
        "val/english/bpb": [(t, v + 0.5) for t, v in bpb], "val/code/bpb": [(t, v - 0.5) for t, v in bpb],
        "train/tokens_per_s": tps, "train/peak_mem_gib": [(500, 1.0), (1500, 1.5), (2500, 1.25)],
        "train/mfu_bf16": [(500, 0.25), (1500, 0.5), (2500, 0.375)],
        "train/elapsed_s": [(bpb[-1][0], clock[-1][1])],
    }
    return RunSeries(run_id, run_id, variant, pair, precision, status, metrics=metrics)


BF16 = run("a", "precision.mode=bf16,curriculum=none", "curriculum=none", "bf16",
           bpb=[(1000, 3.0), (2000, 2.0), (3000, 1.5), (4000, 1.25)],
           clock=[(1000, 10.0), (2000, 20.0), (3000, 30.0), (4000, 40.0)],
           eng=[(1000, 2.5), (2000, 2.0), (3000, 1.75), (4000, 1.5)],
           code=[(1000, 3.5), (2000, 3.0), (3000, 2.5), (4000, 2.25)],
           tps=[(500, 80.0), (1000, 100.0), (1500, 100.0), (2000, 110.0), (2500, 100.0)])
FP8 = run("b", "precision.mode=fp8,curriculum=none", "curriculum=none", "fp8",
          bpb=[(1000, 3.25), (2000, 2.5), (3000, 1.75)],
          clock=[(1000, 8.0), (2000, 16.0), (3000, 24.0)],
          eng=[(1000, 2.75), (2000, 2.25), (3000, 2.0)],
          code=[(1000, 3.75), (2000, 3.25), (3000, 2.75)],
          tps=[(500, 100.0), (1000, 125.0), (1500, 130.0)])
ULTRA = run("c", "precision.mode=bf16,curriculum=seed-ultra", "curriculum=seed-ultra", "bf16",
            bpb=[(1000, 2.5), (2000, 1.5)], clock=[(1000, 10.0), (2000, 20.0)],
            eng=[(1000, 2.0), (2000, 1.5)], code=[(1000, 3.0), (2000, 2.5)], tps=[(500, 90.0)])
SKIPPED = RunSeries("d", "d", "precision.mode=fp8,curriculum=seed-ultra", "curriculum=seed-ultra", "fp8",
                    "not_runnable", reason="not runnable: no GPU")


def test_crossing_is_interpolated_between_bracketing_validation_points():
    pts = [(1000, 3.0), (2000, 2.0), (3000, 1.5)]
    clock = [(1000, 10.0), (2000, 20.0), (3000, 30.0)]
    assert interpolate_crossing(pts, 1.75, clock) == (2500.0, 25.0)
    assert interpolate_crossing(pts, 3.5, clock) == (1000.0, 10.0)  # reached at the first point
    assert interpolate_crossing(pts, 2.0, clock) == (2000.0, 20.0)  # exactly at a point
    assert interpolate_crossing(pts, 1.0, clock) == (None, None)  # never reached
    assert value_at_tokens(pts, 1500) == 2.5
    assert value_at_tokens(pts, 3500) is None


def test_report_numbers_are_exact():
    report = build_report([BF16, FP8, ULTRA, SKIPPED], "sweep syn")
    assert report.target_bpb == 1.75  # worst final val/bpb: the fp8 arm's
    rows = {r.run.run_id: r for r in report.rows}
    assert (rows["a"].tokens_to_target, rows["a"].seconds_to_target) == (2500.0, 25.0)
    assert (rows["b"].tokens_to_target, rows["b"].seconds_to_target) == (3000.0, 24.0)
    assert (rows["c"].tokens_to_target, rows["c"].seconds_to_target) == (1750.0, 17.5)
    assert rows["a"].tokens_per_s == 100.0 and rows["b"].tokens_per_s == 125.0
    assert rows["a"].peak_mem_gib == 1.5 and rows["a"].mfu_bf16 == 0.375 and rows["a"].mfu_fp8 is None
    assert rows["a"].final_tokens == 4000 and rows["a"].val_bpb == 1.25
    assert rows["a"].domain_loss == {"code": 2.25, "english": 1.5}
    assert rows["a"].train_seconds == 40.0
    assert report.domains == ["code", "english"]
    assert [r.run_id for r in report.skipped] == ["d"]

    [pair] = report.pairs  # seed-ultra has one measured arm only: no pair row
    assert (pair.reference.run_id, pair.arm.run_id) == ("a", "b")
    assert pair.tokens == 3000  # last token count both arms validated at
    assert pair.loss_gap == (2.0 + 2.75) / 2 - (1.75 + 2.5) / 2 == 0.25
    assert pair.bpb_gap == 0.25
    assert pair.speedup == 1.25
    assert pair.time_to_target_speedup == 25.0 / 24.0


def test_gap_interpolates_the_arm_at_the_reference_tokens():
    arm = run("e", "precision.mode=fp8", "", "fp8", bpb=[(1500, 2.5), (3500, 1.5)],
              clock=[(1500, 1.0), (3500, 2.0)], eng=[(1500, 2.5), (3500, 1.5)], code=[(1500, 3.5), (3500, 2.5)],
              tps=[(1, 1.0)])
    ref = run("f", "precision.mode=bf16", "", "bf16", bpb=[(1000, 3.0), (3000, 2.0), (4000, 1.0)],
              clock=[(1000, 1.0), (3000, 2.0), (4000, 3.0)], eng=[(1000, 3.0), (3000, 2.0), (4000, 1.0)],
              code=[(1000, 4.0), (3000, 3.0), (4000, 2.0)], tps=[(1, 2.0)])
    [pair] = build_report([ref, arm], "t").pairs
    assert pair.tokens == 3000
    assert pair.bpb_gap == pytest.approx(1.75 - 2.0, abs=0)  # arm at 3000 = 2.5 - 0.75
    assert pair.speedup == 0.5


def test_explicit_target_and_unreached_target():
    report = build_report([BF16, FP8], "t", target_bpb=1.4)
    rows = {r.run.run_id: r for r in report.rows}
    assert rows["a"].tokens_to_target == 3000 + (1.5 - 1.4) / (1.5 - 1.25) * 1000
    assert rows["b"].tokens_to_target is None and rows["b"].seconds_to_target is None
    assert report.pairs[0].time_to_target_speedup is None
