"""Comparison numbers on fixed curves: target reach (interpolated), gap at equal tokens, speedup; seed
statistics (means, 95% intervals, paired verdicts), one seed, a failed seed, spikes, the target rule."""

from __future__ import annotations

import math

import pytest

from yxanul.report import RunSeries, arm_of, build_report, human, interpolate_crossing, sentence, value_at_tokens


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
    default = build_report([BF16, FP8, ULTRA, SKIPPED], "sweep syn")
    assert default.target_bpb == 1.25  # the reference arm's (first arm: bf16, none) mean final val/bpb
    assert default.target_source == "the mean final val/bpb of the reference arm precision.mode=bf16,curriculum=none over 1 seed"
    rows = {r.run.run_id: r for r in default.rows}
    assert rows["b"].tokens_to_target is None and rows["a"].tokens_to_target == 4000.0  # not reached: None

    report = build_report([BF16, FP8, ULTRA, SKIPPED], "sweep syn", target_bpb=1.75)
    assert report.target_bpb == 1.75 and report.target_source == "given"
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

    # seed-ultra's fp8 arm did not run: its precision pair has no seed pair; ultra vs none is one axis apart
    [pair] = [p for p in report.pairs if p.arm.precision == "fp8"]
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


# ---------------------------------------------------------------------------------------------------
# Seeds: exact means, intervals and verdicts on synthetic replicates

T975_2 = 4.302653  # Student t, 97.5% quantile, 2 degrees of freedom (3 seeds)


def seeded(variant, seed, final, tps, precision="bf16", pair="base", status="finished", spikes=None, seconds=30.0):
    """val/bpb final+1, final+0.5, final at 1000/2000/3000 tokens; the training clock linear to ``seconds``."""
    bpb = [(1000, final + 1.0), (2000, final + 0.5), (3000, final)]
    metrics = {"val/bpb": bpb, "val/elapsed_s": [(t, seconds * t / 3000) for t, _ in bpb],
               "val/english/bpb": [(t, v + 0.25) for t, v in bpb], "val/english/loss": bpb,
               "train/tokens_per_s": [(1500, tps), (3000, tps)]}
    if spikes:
        metrics["train/spike_grad_norm"] = spikes
    return RunSeries(f"{variant}-{seed}", f"r{seed}", f"{variant},seed={seed}", f"{pair},seed={seed}", precision,
                     status, metrics=metrics, params={"train.max_tokens": "3000"})


BF16_FINALS, FP8_FINALS = (2.79, 2.83, 2.78), (2.70, 2.73, 2.67)  # paired gaps -0.09, -0.10, -0.11
BF16_TPS, FP8_TPS = (100.0, 110.0, 90.0), (104.0, 115.5, 92.7)   # ratios 1.04, 1.05, 1.03


def three_seeds(fp8_extra=None):
    runs = [seeded("precision.mode=bf16", s, BF16_FINALS[s], BF16_TPS[s]) for s in range(3)]
    runs += [seeded("precision.mode=fp8", s, FP8_FINALS[s], FP8_TPS[s], precision="fp8",
                    **({"seconds": 24.0} | (fp8_extra or {}).get(s, {}))) for s in range(3)]
    return runs


def test_three_seeds_give_exact_means_intervals_and_verdicts():
    report = build_report(three_seeds(), "sweep fp8-vs-bf16")
    assert report.seeds == [0, 1, 2] and report.reference == "precision.mode=bf16"
    bf16, fp8 = report.arms
    std = math.sqrt((0.01 ** 2 + 0.03 ** 2 + 0.02 ** 2) / 2)
    assert bf16.val_bpb.mean == pytest.approx(2.80) and bf16.val_bpb.std == pytest.approx(std)
    assert bf16.val_bpb.half_width == pytest.approx(T975_2 * std / math.sqrt(3), rel=1e-6)
    assert report.noise_floor == pytest.approx(std)
    assert report.target_bpb == pytest.approx(2.80)  # the reference arm's mean final val/bpb
    assert fp8.domain_bpb["english"].mean == pytest.approx(2.70 + 0.25)
    assert fp8.tokens_per_s.mean == pytest.approx((104.0 + 115.5 + 92.7) / 3)
    # bf16 seed 1 ends at 2.83 > 2.80: never reaches the target; seeds 0 and 2 do (at 2980 and 2960 tokens)
    assert bf16.reached == 2 and bf16.tokens_to_target.mean == pytest.approx((2980 + 2960) / 2)
    assert bf16.seconds_to_target.mean == pytest.approx((29.8 + 29.6) / 2)
    assert fp8.reached == 3

    [c] = report.comparisons
    assert c.kind == "precision pair" and len(c.pairs) == 3 and not c.unpaired
    assert c.bpb_gap.mean == pytest.approx(-0.10) and c.bpb_gap.std == pytest.approx(0.01)
    assert c.bpb_gap.half_width == pytest.approx(T975_2 * 0.01 / math.sqrt(3), rel=1e-6)
    assert c.quality_verdict == "better"
    assert c.speedup.mean == pytest.approx(1.04) and c.speed_verdict == "faster"
    assert c.time_pairs == 2  # bf16 seed 1 did not reach the target: no time pair at seed 1
    text = sentence(c, report.target_bpb)
    assert text.startswith("precision.mode=fp8 vs precision.mode=bf16 on unknown card, 3 seeds: final val/bpb "
                           "-0.1000 ± 0.0248 (better); tokens/s 1.040x ± 0.025 (faster); time to 2.8000 bpb ")
    assert "; 2 of 3 seeds reached it in both arms)" in text


def test_within_noise_when_the_interval_contains_zero():
    runs = three_seeds()
    for run, final in zip(runs[3:], (2.81, 2.80, 2.79)):  # gaps +0.01, -0.02, +0.01
        run.metrics["val/bpb"][-1] = (3000, final)
    [c] = build_report(runs, "t").comparisons
    assert c.bpb_gap.mean == pytest.approx(0.0, abs=1e-12) and c.quality_verdict == "within noise"
    assert "(within noise)" in sentence(c, None)


def test_one_seed_gives_no_interval_and_no_verdict():
    report = build_report([r for r in three_seeds() if r.seed == 0], "t")
    [c] = report.comparisons
    assert c.bpb_gap.n == 1 and c.bpb_gap.half_width is None and c.quality_verdict == "1 seed: no verdict"
    assert report.noise_floor is None
    text = sentence(c, report.target_bpb)
    assert "1 seed: final val/bpb -0.0900 (1 seed: no interval, no verdict); tokens/s 1.040x (1 seed: no " \
           "interval, no verdict)" in text


def test_a_failed_seed_is_reported_not_dropped():
    runs = three_seeds()
    runs[5] = RunSeries("fp8-2", "r", "precision.mode=fp8,seed=2", "base,seed=2", "fp8", "failed",
                        reason="CUDA error: out of memory")
    report = build_report(runs, "t")
    [c] = report.comparisons
    assert len(c.pairs) == 2 and c.unpaired == ["seed 2: arm: failed (CUDA error: out of memory)"]
    assert c.bpb_gap.mean == pytest.approx(-0.095) and c.bpb_gap.n == 2
    assert "Not paired: seed 2: arm: failed (CUDA error: out of memory)." in sentence(c, report.target_bpb)
    fp8 = report.arms[1]
    assert [r.run_id for r in fp8.unfinished] == ["fp8-2"] and fp8.val_bpb.n == 2
    assert [r.run_id for r in report.skipped] == ["fp8-2"]


def test_a_verdict_resting_on_a_spiking_run_says_so():
    report = build_report(three_seeds({0: {"spikes": [(2000, 10.2)]}}), "t")
    [c] = report.comparisons
    assert [r.run_id for r in c.spiking] == ["precision.mode=fp8-0"]
    assert "Rests on a run with a spike: precision.mode=fp8 seed 0 (grad_norm at 2k tokens (10.2x median))" in \
        sentence(c, report.target_bpb)


def test_target_rule_and_one_axis_comparisons_against_the_sweep_reference():
    runs = [seeded(f"data={d},precision=bf16", s, f, 100.0, pair=f"data={d}") for d, f in (("bpe", 2.8), ("superbpe", 2.7))
            for s in range(2)]
    report = build_report(runs, "t", reference="data=superbpe,precision=bf16")
    assert report.target_bpb == pytest.approx(2.7) and report.target_source.endswith("arm data=superbpe,precision=bf16 over 2 seeds")
    [c] = report.comparisons
    assert (c.arm.arm, c.reference.arm, c.kind) == ("data=bpe,precision=bf16", "data=superbpe,precision=bf16", "vs reference")
    assert c.names() == ("data=bpe", "data=superbpe", "precision=bf16")
    fixed = build_report(runs, "t", target_bpb=3.0, target_source="fixed in the sweep file (target_bpb)")
    assert fixed.target_bpb == 3.0 and fixed.target_source == "fixed in the sweep file (target_bpb)"
    with pytest.raises(Exception, match="reference arm 'nope' is not among"):
        build_report(runs, "t", reference="nope")


def test_labels_and_human_numbers():
    assert arm_of('precision.fp8_layers=["head","mlp"],curriculum=none,seed=2') == \
        'precision.fp8_layers=["head","mlp"],curriculum=none'
    assert human(6_248_990) == "6.25M" and human(132_500) == "132.5k" and human(20_971_520) == "21M"
    assert human(0.375) == "0.375" and human(None) == ""


def test_tokens_per_s_is_per_gpu_when_the_run_logged_it():
    """A 2-worker arm logs a global rate twice its per-GPU rate: the report compares per-GPU rates (what MFU is
    computed from); a run without the per-GPU series (older runs) falls back to the global one."""
    two_gpus = run("e", "precision.mode=bf16,curriculum=none", "curriculum=none", "bf16",
                   bpb=[(1000, 3.0)], clock=[(1000, 10.0)], eng=[(1000, 2.5)], code=[(1000, 3.5)],
                   tps=[(500, 200.0), (1000, 220.0), (1500, 240.0)])
    two_gpus.metrics["train/tokens_per_s_per_gpu"] = [(500, 100.0), (1000, 110.0), (1500, 120.0)]
    rows = {r.run.run_id: r for r in build_report([two_gpus, FP8], "sweep gpus").rows}
    assert rows["e"].tokens_per_s == 110.0
    assert rows["b"].tokens_per_s == 125.0  # global series only


def test_simulated_runs_are_flagged_in_every_view():
    from dataclasses import replace

    from yxanul.report import _markdown, format_summary

    runs = [r for r in three_seeds() if r.seed == 0]
    assert build_report(runs, "t").simulation_note is None
    runs = [replace(r, tags={"yxanul.simulated_accelerators": "true"}) for r in runs]
    report = build_report(runs, "t")
    assert report.simulation_note.startswith("2 of 2 runs are simulated (scaling.simulate_accelerators): they "
                                             "trained in fp32 on CPU")
    assert f"**Simulated:** {report.simulation_note}." in _markdown(report)
    assert format_summary(report).endswith(f"simulated: {report.simulation_note}")
