"""The report's two numbers for an FP8 arm (eval.bf16_eval): its final val/bpb in training numerics beside the same
weights evaluated in BF16 (``val/bpb_bf16_eval``), and the seed-paired comparison of the BF16 numbers against the
reference arm with the same statistics as val/bpb; and a report whose runs did not log it reads as before. Synthetic
runs with known per-seed values; tolerances as in test_report.py (exact where the report adds and divides, 1e-6
relative where a t quantile enters)."""

from __future__ import annotations

import math

import pytest

from tests.unit.test_report import BF16, FP8_HEAD, FP8_PARAMS, T975, _sd, seeded
from yxanul.report import build_report
from yxanul.report.render import format_summary, markdown
from yxanul.report.tables import arms_csv, comparisons_csv, pairs_csv, runs_csv, tables
from yxanul.report.words import BF16_EVAL_METHOD, design_lines, headline

T80 = {2: math.sqrt(1.125)}  # t(0.80, 2): F(t) = 1/2 + t / (2 sqrt(2 + t^2)) = 0.8  =>  t^2 = 1.125

FP8 = {0: 2.76, 1: 2.79, 2: 2.66}          # final val/bpb in training numerics: gaps -0.04, -0.05, -0.04
FP8_IN_BF16 = {0: 2.79, 1: 2.845, 2: 2.698}  # the same weights evaluated in BF16: gaps -0.010, +0.005, -0.002


def runs(bf16_eval: bool = True) -> list:
    out = [seeded("precision.mode=bf16", s, f, t, tags={"yxanul.precision_plan": "bf16"}) for s, (f, t) in BF16.items()]
    for seed, final in FP8.items():
        run = seeded("precision.mode=fp8", seed, final, 90.0, precision="fp8", tags=FP8_HEAD, params=FP8_PARAMS)
        if bf16_eval:
            run.metrics["val/bpb_bf16_eval"] = [(3000, FP8_IN_BF16[seed])]  # once, at the final validation
        out.append(run)
    return out


def test_an_fp8_arm_shows_both_numbers_and_the_bf16_numbers_are_compared_by_seed():
    report = build_report(runs(), "sweep fp8-vs-bf16")
    assert report.bf16_eval
    bf16, fp8 = report.arms
    assert bf16.bf16_eval_bpb is None and fp8.bf16_eval_bpb.mean == pytest.approx(sum(FP8_IN_BF16.values()) / 3)
    numerics = [FP8[s] - FP8_IN_BF16[s] for s in range(3)]  # what the FP8 evaluation adds to the same weights
    assert fp8.eval_numerics.mean == pytest.approx(sum(numerics) / 3, abs=1e-12)
    assert fp8.eval_numerics.std == pytest.approx(_sd(numerics), rel=1e-9)
    [c] = report.comparisons
    # the reference trained without FP8: its val/bpb is its BF16 number
    gaps = [FP8_IN_BF16[s] - BF16[s][0] for s in range(3)]
    assert [p.bf16_gap for p in c.pairs] == [pytest.approx(g, abs=1e-12) for g in gaps]
    sd = _sd(gaps)
    assert c.bf16_gap.mean == pytest.approx(sum(gaps) / 3, abs=1e-12) and c.bf16_gap.std == pytest.approx(sd, rel=1e-9)
    half = T975[2] * sd / math.sqrt(3)
    assert (c.bf16_gap.low, c.bf16_gap.high) == (pytest.approx(c.bf16_gap.mean - half, rel=1e-6),
                                                 pytest.approx(c.bf16_gap.mean + half, rel=1e-6))
    assert c.mde_bf16 == pytest.approx((T975[2] + T80[2]) * sd / math.sqrt(3), rel=1e-6)
    # training numerics say better (every gap -0.04 or lower); evaluated the same way, no difference is detected
    assert c.quality_verdict == "better" and c.bf16_verdict == "no difference detected"
    text = headline(report, c)
    assert (f"final val/bpb in training numerics {c.bpb_gap.mean:+.4f} (95% CI {c.bpb_gap.low:+.4f} to "
            f"{c.bpb_gap.high:+.4f}): better; both evaluated in BF16 {c.bf16_gap.mean:+.4f} (95% CI "
            f"{c.bf16_gap.low:+.4f} to {c.bf16_gap.high:+.4f}): no difference detected; tokens/s") in text
    assert f"final val/bpb {c.mde_bpb:.4f} bits/byte, tokens/s " in design_lines(report)[3]
    assert design_lines(report)[3].endswith(f", evaluated in BF16 {c.mde_bf16:.4f} bits/byte")


def test_the_tables_and_files_carry_the_bf16_numbers():
    report = build_report(runs(), "sweep fp8-vs-bf16")
    [c] = report.comparisons
    by_key = {t.key: t for t in tables(report)}
    side = by_key["arms_bf16"]
    assert side.head == ["arm", "seeds", "training numerics", "95% CI", "evaluated in BF16", "95% CI", "difference",
                         "95% CI"]
    fp8 = report.arms[1]
    assert side.body[0][:3] == ["precision.mode=bf16 (reference)", "3", "2.7800"]
    assert side.body[0][4:] == ["= val/bpb", "", "", ""]  # trained without FP8: one number
    assert side.body[1][2] == f"{fp8.val_bpb.mean:.4f}" and side.body[1][4] == f"{fp8.bf16_eval_bpb.mean:.4f}"
    assert side.body[1][6] == f"{fp8.eval_numerics.mean:+.4f}"
    [row] = by_key["quality_bf16"].body
    assert row == [by_key["quality"].body[0][0], "3", f"{c.bf16_gap.mean:+.4f}",
                   f"{c.bf16_gap.low:+.4f} to {c.bf16_gap.high:+.4f}", f"{c.mde_bf16:.4f}", "no difference detected"]
    seeds = by_key["seeds_0"]
    assert seeds.head[:6] == ["seed", "BF16 bpb", "FP8 bpb", "gap", "FP8 in BF16", "gap in BF16"]
    assert [r[4:6] for r in seeds.body] == [[f"{FP8_IN_BF16[s]:.4f}", f"{FP8_IN_BF16[s] - BF16[s][0]:+.4f}"]
                                            for s in range(3)]
    quality = by_key["runs"]
    column = quality.head.index("val/bpb in BF16")
    assert [r[column] for r in quality.body] == ["", "", "", "2.7900", "2.8450", "2.6980"]
    # the files keep full precision
    head, body = runs_csv(report)
    assert [r[head.index("val_bpb_bf16_eval")] for r in body] == ["", "", "", "2.79", "2.845", "2.698"]
    head, body = comparisons_csv(report)
    assert float(body[0][head.index("bpb_gap_bf16_eval_mean")]) == c.bf16_gap.mean
    assert body[0][head.index("quality_bf16_eval_verdict")] == "no difference detected"
    head, body = pairs_csv(report)
    assert [float(r[head.index("bpb_gap_bf16_eval")]) for r in body] == [p.bf16_gap for p in c.pairs]
    head, body = arms_csv(report)
    assert float(body[1][head.index("val_bpb_bf16_eval_mean")]) == fp8.bf16_eval_bpb.mean
    assert float(body[1][head.index("val_bpb_minus_bf16_eval_mean")]) == fp8.eval_numerics.mean
    assert BF16_EVAL_METHOD.splitlines()[0] in markdown(report)
    assert side.title + ":" in format_summary(report)  # on the console too


def test_an_fp8_run_without_the_metric_is_not_given_one():
    """Seed 2 of the FP8 arm did not log val/bpb_bf16_eval (e.g. run before eval.bf16_eval existed): its FP8 number is
    not a BF16 one, so that seed has no BF16 gap; the others still do. Runs that ended at different tokens have none
    either (the BF16 numbers exist only at each run's end)."""
    data = runs()
    del data[5].metrics["val/bpb_bf16_eval"]
    report = build_report(data, "t")
    [c] = report.comparisons
    assert [p.bf16_gap is None for p in c.pairs] == [False, False, True] and c.bf16_gap.n == 2
    assert report.arms[1].bf16_eval_bpb.n == 2
    rows = {(r.run.arm, r.seed): r for r in report.rows}
    assert rows["precision.mode=fp8", 2].bf16_path_bpb is None  # its only number is in FP8 arithmetic
    assert rows["precision.mode=bf16", 2].bf16_path_bpb == BF16[2][0]  # no FP8 to turn off: its val/bpb
    data = runs()
    data[3].metrics["val/bpb"] = data[3].metrics["val/bpb"][:2]  # seed 0 of FP8 ended at 2000 tokens
    data[3].metrics["val/bpb_bf16_eval"] = [(2000, 2.9)]
    [c] = build_report(data, "t").comparisons
    assert c.pairs[0].bf16_gap is None and c.bf16_gap.n == 2


def test_a_report_whose_runs_did_not_log_it_reads_as_before():
    report = build_report(runs(bf16_eval=False), "sweep fp8-vs-bf16")
    assert not report.bf16_eval and report.comparisons[0].bf16_gap is None
    keys = [t.key for t in tables(report)]
    assert "arms_bf16" not in keys and "quality_bf16" not in keys
    for head, _ in (runs_csv(report), arms_csv(report), comparisons_csv(report), pairs_csv(report)):
        assert not any("bf16_eval" in h for h in head)
    text = markdown(report)
    assert "in BF16" not in text and "training numerics" not in text
    assert "2 arms x seeds 0, 1, 2" in design_lines(report)[0]
    assert headline(report, report.comparisons[0]).split(": ", 1)[1].startswith("final val/bpb -0.0433 (95% CI")
