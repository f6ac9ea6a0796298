"""The report's numbers and words on synthetic runs with known per-seed values: crossings and gaps, matched seeds,
geometric-mean ratios with log-scale intervals, the minimal detectable effect, compile time kept out of the time to
target, censored time-to-target sentences that agree with the per-seed table, headlines naming the FP8 layers that
ran, and numbers formatted as people read them. Tolerances follow from the arithmetic: exact where the report only
adds and divides, 1e-6 relative where a t quantile (bisection to 1e-12) enters."""

from __future__ import annotations

import math
import re

import pytest

from yxanul.report import RunSeries, build_report, interpolate_crossing, legacy_arm, ran_precision, value_at_tokens
from yxanul.report.analysis import training_clock
from yxanul.report.fetch import DID_NOT_FINISH
from yxanul.report.render import format_summary, markdown
from yxanul.report.tables import tables
from yxanul.report.words import arm_names, design_lines, facts, headline, title, warnings


def _sd(xs: list[float]) -> float:
    mean = sum(xs) / len(xs)
    return math.sqrt(sum((x - mean) ** 2 for x in xs) / (len(xs) - 1))


T975 = {1: 12.706205, 2: 4.302653}  # Student t 97.5% quantiles (published tables)
T80 = {1: math.tan(0.3 * math.pi)}  # t(0.80, 1) in closed form


def seeded(arm: str, seed: int, final: float, tps: float, *, precision: str = "bf16", compile_s: float = 10.0,
           per_k: float = 10.0, status: str = "finished", tags: dict | None = None, params: dict | None = None,
           reason: str = "") -> RunSeries:
    """val/bpb final+0.4, +0.2, final at 1000/2000/3000 tokens; the training clock ``per_k`` seconds per 1000
    tokens plus ``compile_s`` of compilation spent before the first logging point (val/elapsed_s includes it)."""
    bpb = [(1000, final + 0.4), (2000, final + 0.2), (3000, final)]
    metrics = {
        "val/bpb": bpb, "val/english/bpb": [(t, v + 0.25) for t, v in bpb], "val/english/loss": bpb,
        "val/elapsed_s": [(t, compile_s + per_k * t / 1000) for t, _ in bpb],
        "train/compile_s": [(500, compile_s), (1000, compile_s), (2000, compile_s), (3000, compile_s)],
        "train/tokens_per_s_per_gpu": [(1500, tps), (3000, tps)],
        "train/loss": [(500, 5.0), (1000, 4.0), (2000, 3.5), (3000, 3.2)],
        "train/grad_norm": [(500, 1.0), (1000, 0.8), (2000, 0.7), (3000, 0.6)],
    }
    if status != "finished":
        metrics = {}
    run_params = {"precision.mode": precision, "run.seed": str(seed), "train.max_tokens": "3000",
                  "run.name": f"t-{arm}-{seed}", "model.preset": "tiny", **(params or {})}
    run_tags = {"yxanul.gpu_name": "NVIDIA H100 80GB HBM3", "yxanul.gpu_count": "1", **(tags or {})}
    return RunSeries(f"{arm}-{seed}", f"r{seed}", f"{arm},seed={seed}", arm, pair=f"seed={seed}",
                     axes={"precision.mode": precision}, seed=seed, status=status, reason=reason, metrics=metrics,
                     tags=run_tags, params=run_params, start_time_ms=1_796_126_141_188 + seed)


FP8_HEAD = {"yxanul.precision_plan": "fp8 (delayed; auto -> head)", "yxanul.fp8_layers": "head"}
FP8_PARAMS = {"precision.recipe": "delayed", "precision.fp8_layers": "auto"}
BF16 = {0: (2.80, 100.0), 1: (2.84, 110.0), 2: (2.70, 90.0)}   # final val/bpb, tokens/s
FP8 = {0: (2.76, 80.0), 1: (2.79, 99.0)}                        # seed 2 never finished: gaps -0.04, -0.05


def sweep_runs(fp8_tags: dict | None = None) -> list[RunSeries]:
    runs = [seeded("precision.mode=bf16", s, f, t, tags={"yxanul.precision_plan": "bf16"}) for s, (f, t) in BF16.items()]
    runs += [seeded("precision.mode=fp8", s, f, t, precision="fp8", compile_s=20.0, per_k=8.0,
                    tags=fp8_tags or FP8_HEAD, params=FP8_PARAMS) for s, (f, t) in FP8.items()]
    runs.append(seeded("precision.mode=fp8", 2, 0, 0, precision="fp8", status=DID_NOT_FINISH,
                       reason="sweep interrupted", params=FP8_PARAMS))
    return runs


def test_crossing_is_interpolated_between_bracketing_validation_points():
    pts = [(1000, 3.0), (2000, 2.0), (3000, 1.5)]
    clock = [(1000, 10.0), (2000, 20.0), (3000, 30.0)]
    assert interpolate_crossing(pts, 1.75, clock) == (2500.0, 25.0)
    assert interpolate_crossing(pts, 3.5, clock) == (1000.0, 10.0)  # reached at the first point
    assert interpolate_crossing(pts, 2.0, clock) == (2000.0, 20.0)  # exactly at a point
    assert interpolate_crossing(pts, 1.0, clock) == (None, None)  # never reached
    assert value_at_tokens(pts, 1500) == 2.5
    assert value_at_tokens(pts, 3500) is None


def test_the_training_clock_leaves_compilation_out_across_a_resume():
    """val/elapsed_s includes the first step of each batch shape (compilation); runs before yxanul.compile_s_scope
    logged train/compile_s from 0 in each process, so the compile seconds are summed over the segments."""
    run = seeded("a", 0, 2.0, 1.0, compile_s=10.0)
    assert training_clock(run) == [(1000, 10.0), (2000, 20.0), (3000, 30.0)]
    run.metrics["train/compile_s"] = [(500, 10.0), (1000, 12.0), (2000, 3.0), (3000, 3.0)]  # resumed after 1000
    run.metrics["val/elapsed_s"] = [(1000, 32.0), (2000, 45.0), (3000, 55.0)]
    assert training_clock(run) == [(1000, 20.0), (2000, 30.0), (3000, 40.0)]
    # the resumed process compiled longer (14 s) than its predecessor had by its last point (12 s): no drop, but its
    # points were logged after the run's last resume (an H100 decomposition trial, 2026-12-07)
    run.metrics["train/compile_s"] = [(500, 10.0), (1000, 12.0), (2000, 14.0), (3000, 14.0)]
    run.metrics["val/elapsed_s"] = [(1000, 32.0), (2000, 56.0), (3000, 66.0)]
    resumed = 1_796_616_270_000  # 2026-12-07T04:04:30Z
    run.tags["yxanul.last_resume"] = "2026-12-07T04:04:30Z"
    run.logged_ms["train/compile_s"] = [resumed - 60_000, resumed - 30_000, resumed + 40_000, resumed + 50_000]
    assert training_clock(run) == [(1000, 20.0), (2000, 30.0), (3000, 40.0)]
    run.logged_ms.clear()  # a store that gave no times: only a drop can tell (here it cannot)
    assert training_clock(run) == [(1000, 20.0), (2000, 42.0), (3000, 52.0)]
    # runs that checkpoint the counter log the run's total: a resume starts no segment
    run.logged_ms["train/compile_s"] = [resumed - 60_000, resumed - 30_000, resumed + 40_000, resumed + 50_000]
    run.tags["yxanul.compile_s_scope"] = "run"
    run.metrics["train/compile_s"] = [(500, 10.0), (1000, 12.0), (2000, 26.0), (3000, 26.0)]
    assert training_clock(run) == [(1000, 20.0), (2000, 30.0), (3000, 40.0)]
    # ... and may drop: stopped at 2000 after compiling 30 s in all, resumed from its checkpoint at 1000 (12 s), the
    # steps to 2000 keep the first process's points and the resumed one logs from 3000 on (12 + 6 s; a CI run)
    run.metrics["train/compile_s"] = [(500, 10.0), (1000, 12.0), (2000, 30.0), (3000, 18.0)]
    run.metrics["val/elapsed_s"] = [(1000, 32.0), (2000, 60.0), (3000, 58.0)]
    assert training_clock(run) == [(1000, 20.0), (2000, 30.0), (3000, 40.0)]


def test_arms_use_matched_seeds_and_unmatched_runs_are_listed_with_their_real_status():
    report = build_report(sweep_runs(), "sweep fp8-vs-bf16", reference="precision.mode=bf16")
    bf16, fp8 = report.arms
    assert report.matched_seeds == [0, 1]
    assert bf16.seeds == [0, 1] and fp8.seeds == [0, 1]  # not BF16 over 3 seeds and FP8 over 2
    assert bf16.val_bpb.mean == pytest.approx(2.82) and fp8.val_bpb.mean == pytest.approx(2.775)
    # the arms' difference is the paired gap: both on seeds 0 and 1
    [c] = report.comparisons
    assert fp8.val_bpb.mean - bf16.val_bpb.mean == pytest.approx(c.bpb_gap.mean, abs=1e-12)
    apart = {(run.arm, run.replicate): why for run, why in report.unmatched}
    assert apart == {("precision.mode=bf16", 2): "finished; seed 2 not matched (precision.mode=fp8: did not finish: "
                                                 "sweep interrupted)",
                     ("precision.mode=fp8", 2): "did not finish: sweep interrupted"}
    assert c.unpaired == ["seed 2: arm did not finish: sweep interrupted"]
    assert design_lines(report)[0] == "2 arms x seeds 0, 1, 2; matched seeds (every arm finished): 0, 1; 2 runs listed apart"
    # the noise floor is the reference arm's seed spread over every seed it finished (a property of the arm)
    assert report.noise_floor.std == pytest.approx(_sd([2.80, 2.84, 2.70]), rel=1e-12)
    assert design_lines(report)[1] == (f"noise floor: {_sd([2.80, 2.84, 2.70]):.4f} bits/byte (seed standard deviation "
                                       "of the reference arm's final val/bpb over the 3 seeds it finished)")


def test_ratios_are_geometric_means_with_log_scale_intervals_and_the_design_states_its_mde():
    report = build_report(sweep_runs(), "sweep fp8-vs-bf16")
    [c] = report.comparisons
    logs = [math.log(80 / 100), math.log(99 / 110)]  # 0.8x and 0.9x
    mean_log, sd_log = sum(logs) / 2, abs(logs[0] - logs[1]) / math.sqrt(2)
    assert c.speedup.mean == pytest.approx(math.sqrt(0.8 * 0.9), rel=1e-12)
    assert c.speedup.std == pytest.approx(sd_log, rel=1e-12)
    half = T975[1] * sd_log / math.sqrt(2)
    assert c.speedup.low == pytest.approx(math.exp(mean_log - half), rel=1e-6)
    assert c.speedup.high == pytest.approx(math.exp(mean_log + half), rel=1e-6)
    assert c.speedup.low > 0  # a linear interval would go to 0.849 - 12.7 x 0.05 / sqrt(2) ...
    sd_gap = 0.01 / math.sqrt(2)  # gaps -0.04 and -0.05
    assert c.bpb_gap.mean == pytest.approx(-0.045) and c.bpb_gap.std == pytest.approx(sd_gap, rel=1e-9)
    assert c.mde_bpb == pytest.approx((T975[1] + T80[1]) * sd_gap / math.sqrt(2), rel=1e-6)
    assert c.mde_speed == pytest.approx(math.exp((T975[1] + T80[1]) * sd_log / math.sqrt(2)) - 1, rel=1e-6)
    assert f"final val/bpb {c.mde_bpb:.4f} bits/byte, tokens/s {100 * c.mde_speed:.1f}%" in design_lines(report)[3]
    # per arm, tokens/s is a geometric mean too (never a negative lower bound)
    assert report.arms[1].tokens_per_s.mean == pytest.approx(math.sqrt(80 * 99), rel=1e-12)


def test_default_target_is_the_worst_reference_run_and_compile_time_is_excluded():
    report = build_report(sweep_runs(), "sweep fp8-vs-bf16")
    assert report.target_bpb == 2.84  # the worst final of the reference arm's matched runs (seed 1): all reach it
    assert report.target_source.startswith("by rule: the worst final val/bpb of the reference arm's 2 runs (seed 1)")
    rows = {(r.run.arm, r.seed): r for r in report.rows}
    bf16_0, bf16_1 = rows["precision.mode=bf16", 0], rows["precision.mode=bf16", 1]
    fp8_0, fp8_1 = rows["precision.mode=fp8", 0], rows["precision.mode=fp8", 1]
    # BF16 seed 0 crosses 2.84 at 80% of the way from 2000 (3.00) to 3000 (2.80): 2800 tokens, 28 s of training
    # (val/elapsed_s 38 s minus 10 s of compilation); seed 1 ends exactly on it.
    assert bf16_0.tokens_to_target == pytest.approx(2800) and bf16_0.seconds_to_target == pytest.approx(28.0)
    assert (bf16_1.tokens_to_target, bf16_1.seconds_to_target) == (3000.0, 30.0)
    assert fp8_0.seconds_to_target == pytest.approx(16 + 0.6 * 8) and fp8_1.seconds_to_target == pytest.approx(22.0)
    assert (bf16_0.compile_seconds, fp8_0.compile_seconds, fp8_0.train_seconds) == (10.0, 20.0, 24.0)
    [c] = report.comparisons
    assert [p.time_ratio for p in c.pairs] == [pytest.approx(28 / 20.8), pytest.approx(30 / 22)]
    assert c.time_speedup.mean == pytest.approx(math.sqrt(28 / 20.8 * 30 / 22), rel=1e-12)


def test_censored_time_to_target_sentences_agree_with_the_per_seed_table():
    """Target 2.795 fixed in advance: FP8 reaches it at both seeds, BF16 at neither. The pairs are not dropped: each
    bounds the speedup by BF16's whole training time (30 s without compilation)."""
    report = build_report(sweep_runs(), "sweep fp8-vs-bf16", target_bpb=2.795, target_source="fixed in the sweep file")
    [c] = report.comparisons
    assert c.reached == (2, 0) and c.time_speedup is None
    fp8_s = [16 + (2.96 - 2.795) / 0.2 * 8, 16 + (2.99 - 2.795) / 0.2 * 8]
    assert [p.time_bound for p in c.pairs] == [(">=", pytest.approx(30 / fp8_s[0])), (">=", pytest.approx(30 / fp8_s[1]))]
    text = headline(report, c)
    assert ("time to 2.7950 bpb (compile excluded): FP8 reached it at 2/2 seeds, BF16 at 0/2; "
            f"seed 0: only FP8 reached it, at least {30 / fp8_s[0]:.3f}x faster than BF16's whole run; "
            f"seed 1: only FP8 reached it, at least {30 / fp8_s[1]:.3f}x faster than BF16's whole run") in text
    [seed_table] = [t for t in tables(report) if t.key == "seeds_0"]
    assert [row[-3:] for row in seed_table.body] == [
        ["not reached", f"{fp8_s[0]:.1f} s", f">= {30 / fp8_s[0]:.3f}x"],
        ["not reached", f"{fp8_s[1]:.1f} s", f">= {30 / fp8_s[1]:.3f}x"]]
    [arms] = [t for t in tables(report) if t.key == "arms"]
    assert [row[4] for row in arms.body] == ["0/2", "2/2"]
    # neither arm reaches an unreachable target: said per seed, never a ratio
    none = build_report(sweep_runs(), "s", target_bpb=1.0)
    assert "FP8 reached it at 0/2 seeds, BF16 at 0/2; neither reached it at seeds 0, 1" in headline(none, none.comparisons[0])


def test_headline_names_the_fp8_layers_that_ran_not_the_ones_asked():
    report = build_report(sweep_runs(), "sweep fp8-vs-bf16")
    [c] = report.comparisons
    text = headline(report, c)
    assert text.startswith("FP8 (delayed) on head, planned by measurement vs BF16 on 1x NVIDIA H100 80GB HBM3, "
                           "2 matched seeds: final val/bpb -0.0450 (95% CI -0.1085 to +0.0185): no difference "
                           "detected; tokens/s 0.849x (95% CI ")
    assert title(report) == "fp8-vs-bf16: FP8 vs BF16, 1x NVIDIA H100 80GB HBM3, 2026-12-01, 3k tokens per run"
    later = sweep_runs()
    later[-1].start_time_ms += 86_400_000  # a later part of the comparison, run the next day
    assert "2026-12-01 to 2026-12-02, 3k tokens per run" in title(build_report(later, "sweep fp8-vs-bf16"))
    # a measured plan that kept no FP8 group did not train in FP8, whatever precision.mode says
    none = build_report(sweep_runs({"yxanul.precision_plan": "fp8 (delayed; auto -> no layer pays: all GEMMs bf16)"}),
                        "sweep fp8-vs-bf16")
    assert headline(none, none.comparisons[0]).startswith("BF16 (FP8 asked; the plan kept no layer in FP8) vs BF16 on")
    assert arm_names(none.comparisons[0])[3] == "BF16 (FP8 asked)"
    # runs from before yxanul.fp8_layers: the worker's plan sentence, never the precision.fp8_layers param
    legacy = build_report(sweep_runs({"yxanul.precision_plan": "fp8 (delayed; attention,mlp,head)"}), "s")
    assert headline(legacy, legacy.comparisons[0]).startswith("FP8 (delayed) on attention+mlp+head vs BF16 on")
    run = sweep_runs()[3]
    run.tags = {"yxanul.precision_plan": "fp8 (delayed; attention,mlp)"}
    run.params = {**run.params, "precision.fp8_layers": '["attention", "mlp", "head"]'}
    assert ran_precision(run).describe() == "FP8 (delayed) on attention+mlp"


def test_what_was_compared_comes_from_the_runs_params_and_tags():
    runs = sweep_runs()
    for run in runs:
        run.params.update({"model.vocab_size": "200005", "tokenizer.vocab_size": "8192", "tokenizer.kind": "bpe",
                           "train.tokens_per_step": "65536", "data.sources": '["builtin:wiki-en"]',
                           "data.mode": "packed", "data.output_dir": "/tmp/gpu-machine/data",
                           "optim.schedule": "cosine", "optim.lr": "0.001", "optim.warmup_tokens": "262144"})
        run.tags.update({"yxanul.data_train_tokens": "1500", "yxanul.manifest_sha256": "7b9dbe3c744ed2" + "0" * 50,
                         "yxanul.model_params": "273000000", "yxanul.model_params_non_embedding": "248000000"})
    report = build_report(runs, "sweep fp8-vs-bf16")
    found = {f.name: f.values for f in facts(report)}
    assert found["precision (ran)"] == ["BF16", "FP8 (delayed) on head, planned by measurement"]
    assert found["precision.mode"] == ["bf16", "fp8"] and found["precision.fp8_layers"] == ["unset", "auto"]
    assert found["vocabulary"] == ["model 200,005; tokenizer bpe 8,192"] * 2
    assert found["tokens per step"] == ["65.5k"] * 2 and found["model"][0].endswith("273M parameters (248M without "
                                                                                    "the embedding)")
    assert found["data"][0] == ("[builtin:wiki-en] (packed); manifest 7b9dbe3c744e; 1.5k training tokens, 2.00 epochs "
                                "trained")
    assert "run.name" not in found and "data.output_dir" not in found  # per run / a machine's path: never a difference
    # the data named by its files' hash where recorded: two preparations of the same data (their manifests' hashes
    # differ with when they were made) are one dataset
    for i, run in enumerate(runs):
        run.tags.update({"yxanul.manifest_sha256": f"{i:02d}" * 32, "yxanul.data_sha256": "d47a5e7" + "0" * 57})
    found = {f.name: f.values for f in facts(build_report(runs, "sweep fp8-vs-bf16"))}
    assert found["data"] == ["[builtin:wiki-en] (packed); data d47a5e700000; 1.5k training tokens, 2.00 epochs "
                             "trained"] * 2
    assert "attention kernels" not in found  # no run profiled a step: nothing to say
    # which attention backend ran, per arm; seeds of one arm that ran different kernels are flagged
    flash, cudnn = "pytorch_flash::flash_bwd_kernel, pytorch_flash::flash_fwd_kernel", "cudnn_sdpa_fprop, cudnn_sdpa_bprop"
    for run in runs:
        run.tags["yxanul.attention_kernels"] = cudnn if (run.arm, run.replicate) == ("precision.mode=fp8", 0) else flash
    found = {f.name: f.values for f in facts(build_report(runs, "sweep fp8-vs-bf16"))}
    assert found["attention kernels"] == [flash, f"{cudnn} / {flash} (differs between seeds)"]
    said = " ".join(warnings(report))
    assert "the model's vocabulary (200,005) is 24x the tokenizer's (8,192) in every arm" in said
    assert "runs trained 2.00 epochs of their data" in said
    assert "only 2 seed pairs. The 95% interval uses t = 12.71" in said


def test_one_seed_gives_numbers_without_interval_or_verdict():
    runs = [r for r in sweep_runs() if r.replicate == 0]
    report = build_report(runs, "t")
    [c] = report.comparisons
    assert c.bpb_gap.n == 1 and c.bpb_gap.low is None and c.quality_verdict == "1 seed: no verdict"
    assert report.noise_floor.std is None and c.mde_bpb is None
    text = headline(report, c)
    assert "1 matched seed: final val/bpb -0.0400 (1 seed: no interval, no verdict); tokens/s 0.800x (1 seed: no " \
           "interval, no verdict)" in text
    assert "not computable with 1 seed pair" in design_lines(report)[3]


def test_a_verdict_needs_an_interval_that_excludes_the_null():
    runs = sweep_runs()
    for run, final in ((runs[3], 2.70), (runs[4], 2.75)):  # gaps -0.10, -0.09: every seed lower
        run.metrics["val/bpb"][-1] = (3000, final)
    runs.append(seeded("precision.mode=fp8", 2, 2.61, 76.5, precision="fp8", params=FP8_PARAMS, tags=FP8_HEAD))
    report = build_report(runs, "t")
    [c] = report.comparisons
    assert c.n == 3 and c.bpb_gap.mean == pytest.approx(-0.28 / 3, abs=1e-12)  # gaps -0.10, -0.09, -0.09
    assert c.bpb_gap.high == pytest.approx(c.bpb_gap.mean + T975[2] * c.bpb_gap.std / math.sqrt(3), rel=1e-6)
    assert c.quality_verdict == "better" and c.speed_verdict == "slower"  # tokens/s 0.80x, 0.90x, 0.85x


def test_a_spike_is_marked_in_the_sentence_the_tables_and_the_plot_data():
    runs = sweep_runs()
    runs[3].metrics["train/spike_grad_norm"] = [(2000, 10.2)]
    report = build_report(runs, "t")
    assert "Rests on a run with a spike: precision.mode=fp8 seed 0 (grad norm at 2k tokens (10.2x median))" in \
        headline(report, report.comparisons[0])
    [speed] = [t for t in tables(report) if t.key == "runs_speed"]
    assert speed.body[2][-1] == "1: grad norm at 2k tokens (10.2x median)"


def test_an_unchecked_run_never_reads_as_spike_free():
    """yxanul.spike_check: "not checked" (too short) is said in the sentence and the table; a checked run reads
    "none"; a run from before the tag "not recorded". The plot uses the interval maxima where logged."""
    from yxanul.report.runs import grad_norm_series

    runs = sweep_runs()
    runs[0].tags["yxanul.spike_check"] = "not checked: 3 logging points, a check needs more than 3 from 1k tokens on"
    runs[3].tags["yxanul.spike_check"] = "checked 40 logging points (interval maxima) from 1k tokens: no spike"
    runs[3].metrics["train/grad_norm_max"] = [(1000, 2.5), (2000, 1.5)]
    report = build_report(runs, "t")
    assert "Spikes not checked (too short a run): precision.mode=bf16 seed 0." in headline(report, report.comparisons[0])
    [speed] = [t for t in tables(report) if t.key == "runs_speed"]
    # the matched seeds 0 and 1 of both arms (bf16 seed 2 is outside them)
    assert sorted(row[-1] for row in speed.body) == ["none", "not checked", "not recorded", "not recorded"]
    assert grad_norm_series(runs[3]) == [(1000, 2.5), (2000, 1.5)]
    assert grad_norm_series(runs[1]) == runs[1].metrics["train/grad_norm"]


def test_legacy_runs_without_arm_and_axes_tags():
    assert legacy_arm('precision.fp8_layers=["head","mlp"],curriculum=none,seed=2') == \
        'precision.fp8_layers=["head","mlp"],curriculum=none'
    assert legacy_arm("seed=0") == "seed=0" and legacy_arm("lr=1,sample=3,seed=1") == "lr=1"
    runs = sweep_runs()
    for run in runs:
        run.axes = None  # recorded before yxanul.axes: names come from the params the arms differ in
    report = build_report(runs, "t")
    assert arm_names(report.comparisons[0])[:2] == ("FP8 (delayed) on head, planned by measurement", "BF16")


def test_the_console_formats_numbers_as_the_page_does():
    report = build_report(sweep_runs(), "sweep fp8-vs-bf16")
    text = format_summary(report)
    assert not re.search(r"\d\.\d+e[+-]\d", text), "exponent notation"
    assert not re.search(r"(?<![\w.])\d{5,}(?![\w.])", text.replace(report.runs[0].run_id, "")), "a raw integer"
    for line in (headline(report, report.comparisons[0]), *design_lines(report)):
        assert line in text and line in markdown(report)
    assert "2.80  " not in text and "2.8000" in text  # bpb with 4 decimals everywhere


def test_the_unigram_baseline_is_read_when_runs_logged_it():
    runs = sweep_runs()
    assert build_report(runs, "t").unigram_bpb == []
    for run in runs[:5]:
        run.metrics["val/unigram_bpb"] = [(0, 4.5)]
    assert build_report(runs, "t").unigram_bpb == [4.5]


def test_the_mlflow_ui_is_a_link_for_a_server_and_an_exact_command_for_a_local_store(tmp_path, monkeypatch):
    from yxanul.report.fetch import SweepRecord
    from yxanul.report.words import mlflow_link

    parent = SweepRecord("p" * 32, "s", "7", "interrupted", running=False)
    report = build_report(sweep_runs(), "sweep s", parents=[parent], tracking_uri="http://mlflow.example:5000/")
    assert mlflow_link(report) == f"http://mlflow.example:5000/#/experiments/7/runs/{'p' * 32}"
    monkeypatch.chdir(tmp_path)
    local = build_report(sweep_runs(), "sweep s", parents=[parent], tracking_uri=f"sqlite:///{tmp_path}/store/mlflow.db")
    assert mlflow_link(local) == "mlflow ui --backend-store-uri sqlite:///store/mlflow.db"
    elsewhere = build_report(sweep_runs(), "sweep s", parents=[parent], tracking_uri="sqlite:////srv/runs/mlflow.db")
    assert mlflow_link(elsewhere) == "mlflow ui --backend-store-uri sqlite:////srv/runs/mlflow.db"


def test_simulated_runs_are_flagged():
    runs = [r for r in sweep_runs() if r.replicate == 0]
    for run in runs:
        run.tags.update({"yxanul.simulated_accelerators": "true", "yxanul.precision_ran": "fp32"})
    report = build_report(runs, "t")
    assert any(w.startswith("2 of 2 runs are simulated (scaling.simulate_accelerators)") for w in warnings(report))
    assert "FP32 (simulated; FP8 asked)" in headline(report, report.comparisons[0])


def test_a_seeds_auto_sweep_states_its_stopping_rule_and_each_comparisons_decision():
    from yxanul.report.fetch import SweepRecord
    from yxanul.sequential import SequentialDesign

    bf16 = {s: (2.80 + 0.01 * s, 100.0) for s in range(4)}
    runs = [seeded("precision.mode=bf16", s, f, t) for s, (f, t) in bf16.items()]
    runs += [seeded("precision.mode=fp8", s, f - 0.05 - 0.001 * s, t, precision="fp8", params=FP8_PARAMS,
                    tags=FP8_HEAD) for s, (f, t) in bf16.items()]
    parent = SweepRecord("p" * 32, "s", "7", "finished", running=False,
                         params={"sweep.seeds": '"auto"', "sweep.max_seeds": "6", "sweep.equivalence_margin": "0.01"})
    report = build_report(runs, "sweep s", parents=[parent])
    design = report.sequential
    assert design == SequentialDesign(max_seeds=6, margin=0.01)
    [c] = report.comparisons
    decision = c.decision(design)
    # gaps -0.050 .. -0.053 (arm - reference, seed order): the rule's own call on them, at 4 pairs
    expected = design.decide([-0.05 - 0.001 * s for s in range(4)])
    assert (decision.state, decision.n) == ("different", 4)
    assert decision.mean == pytest.approx(expected.mean, abs=1e-12) and decision.alpha == expected.alpha
    lines = design_lines(report)
    assert design.describe() in lines
    assert any(line.startswith("stopping rule, ") and ": different at " in line for line in lines)
    assert build_report(runs, "sweep s").sequential is None  # a fixed seed list has no stopping rule


def test_the_design_says_whether_the_seeds_share_one_data_order():
    from yxanul.report.words import data_order_text

    def runs(order: str | None) -> list[RunSeries]:
        extra = {} if order is None else {"data.order_seed": order}
        return [seeded("a", s, 2.0 + s / 100, 1.0, params=extra) for s in (0, 1, 2)]

    fixed = build_report(runs("0"), "sweep s", reference="a")
    assert design_lines(fixed)[1] == ("data order: one token sequence for every seed and arm (data.order_seed=0); "
                                      "seeds vary the initialisation only")
    assert design_lines(fixed)[2].startswith("noise floor: ")
    assert data_order_text(runs("null")).startswith("data order: drawn per seed (run.seed)")
    assert data_order_text(runs(None)) == ""  # runs from before data.order_seed: nothing claimed
    mixed = runs("0")[:2] + runs("null")[2:]
    assert data_order_text(mixed) == "data order: mixed across runs (data.order_seed 0, null)"


def test_the_design_says_how_many_seeds_would_decide_a_comparison_it_could_not():
    """#24: with no difference detected, the design says how many seed pairs would detect the sweep's target effect
    and one of the size measured, at the spread of the per-seed differences measured (paired t, 95%, 80% power).
    Gaps -0.04 and -0.05: sd 0.00707. By the published t tables, MDE(n) = (t.975(n-1) + t.80(n-1)) sd / sqrt(n):
    n=2 0.0704, n=3 (4.303 + 1.061) 0.00707 / 1.732 = 0.0219 <= 0.045, so 3 pairs for 0.045; for 0.01, n=6
    (2.571 + 0.920) 0.00707 / 2.449 = 0.01008 > 0.01 and n=7 (2.447 + 0.906) 0.00707 / 2.646 = 0.00896, so 7."""
    from yxanul.report.fetch import SweepRecord

    parent = SweepRecord("p" * 32, "s", "7", "finished", running=False, params={"sweep.target_effect": "0.01"})
    report = build_report(sweep_runs(), "sweep fp8-vs-bf16", parents=[parent])
    [c] = report.comparisons
    assert c.quality_verdict == "no difference detected"
    [line] = [line for line in design_lines(report) if line.startswith("seeds to decide, ")]
    assert line.endswith(": 7 seed pairs for a difference of 0.0100 bits/byte (sweep.target_effect); 3 seed pairs for "
                         "one the size measured here (-0.0450 bits/byte; a planning figure, the measured difference is "
                         "itself uncertain), at the per-seed difference spread measured here (sd 0.0071 bits/byte)"), line
    # without a target effect, only the measured size; a difference already detected and no target: nothing to say
    plain = build_report(sweep_runs(), "sweep fp8-vs-bf16")
    [line] = [line for line in design_lines(plain) if line.startswith("seeds to decide, ")]
    assert ": 3 seed pairs for one the size measured here (-0.0450" in line and "target_effect" not in line
    bf16 = {s: (2.80 + 0.01 * s, 100.0) for s in range(4)}
    runs = [seeded("precision.mode=bf16", s, f, t) for s, (f, t) in bf16.items()]
    runs += [seeded("precision.mode=fp8", s, f - 0.05 - 0.001 * s, t, precision="fp8", params=FP8_PARAMS,
                    tags=FP8_HEAD) for s, (f, t) in bf16.items()]
    detected = build_report(runs, "sweep s")
    assert detected.comparisons[0].quality_verdict == "better"
    assert not [line for line in design_lines(detected) if line.startswith("seeds to decide, ")]


def test_an_arm_whose_seeds_trained_different_configurations_is_flagged():
    """Sweeps compared as one (seeds run in parts) must have trained one configuration per arm: a seed run at
    another learning rate is named, key, values and seeds, and an arm whose seeds agree is not."""
    runs = sweep_runs()
    assert not [w for w in warnings(build_report(runs, "s")) if "did not all train the same" in w]
    bf16_seed1 = next(r for r in runs if r.arm == "precision.mode=bf16" and r.replicate == 1)
    bf16_seed1.params["optim.lr"] = "0.0005"
    for r in runs:
        r.params.setdefault("optim.lr", "0.00025")
    said = [w for w in warnings(build_report(runs, "s")) if "did not all train the same" in w]
    assert said == ["precision.mode=bf16: its runs did not all train the same configuration (optim.lr: 0.00025 "
                    "(seed 0), 0.0005 (seed 1)): its seeds are not replicates of one arm."]


def test_seed_pairs_trained_on_different_cards_are_named():
    """A comparison run in parts may pair a seed's arms across machines: where the card models differ, the report
    names the pairs, since their speed ratios measure the cards too; pairs on one card model say nothing."""
    runs = sweep_runs()
    assert not [w for w in warnings(build_report(runs, "s")) if "different cards" in w]
    fp8_seed1 = next(r for r in runs if r.arm == "precision.mode=fp8" and r.replicate == 1)
    fp8_seed1.tags["yxanul.gpu_name"] = "NVIDIA H200"
    [said] = [w for w in warnings(build_report(runs, "s")) if "different cards" in w]
    assert "1 of 2 seed pairs trained on different cards (seed 1: NVIDIA H100 80GB HBM3 / NVIDIA H200)" in said


def test_seed_pairs_trained_on_two_machines_with_cards_of_one_model_are_named():
    """Two machines with cards of one model differ in speed too (two lent H100 80GB HBM3 of 2026-12-06: 7% in BF16
    tokens/s): where both runs of a pair recorded their machine's boot id and the ids differ, the report names the
    pair. Two GPUs of one node (another card UUID, one boot id: a sweep's concurrent trials), or a boot id missing on
    either side (runs before the tag), say nothing."""
    runs = sweep_runs()
    for i, r in enumerate(runs):
        r.tags.update({"yxanul.boot_id": "aaaaaaaa-1111", "yxanul.gpu_uuid": f"GPU-{i}"})  # one node, many GPUs
    assert not [w for w in warnings(build_report(runs, "s")) if "different cards" in w]
    fp8_seed1 = next(r for r in runs if r.arm == "precision.mode=fp8" and r.replicate == 1)
    fp8_seed1.tags["yxanul.boot_id"] = "bbbbbbbb-2222"
    [said] = [w for w in warnings(build_report(runs, "s")) if "different cards" in w]
    assert ("1 of 2 seed pairs trained on different cards (seed 1: NVIDIA H100 80GB HBM3 on machine aaaaaaaa / "
            "NVIDIA H100 80GB HBM3 on machine bbbbbbbb)") in said
    next(r for r in runs if r.arm == "precision.mode=bf16" and r.replicate == 1).tags.pop("yxanul.boot_id")
    assert not [w for w in warnings(build_report(runs, "s")) if "different cards" in w]


def test_two_fp8_arms_are_told_apart_by_their_variant_names():
    """Two FP8 arms against one BF16 reference (the measured plan and every group forced) both ran "FP8": their
    short names, which head the per-seed tables and the design lines, add the sweep's variant names."""
    runs = []
    for seed in (0, 1):
        for name, mode, final in (("bf16", "bf16", 2.80), ("fp8-auto", "fp8", 2.79), ("fp8-all", "fp8", 2.78)):
            run = seeded(f"precision={name}", seed, final + seed / 100, 100.0, precision=mode,
                         tags={} if mode == "bf16" else FP8_HEAD, params={} if mode == "bf16" else FP8_PARAMS)
            run.axes = {"precision": name}
            runs.append(run)
    report = build_report(runs, "s", reference="precision=bf16")
    assert sorted(arm_names(c)[3] for c in report.comparisons) == ["FP8 (fp8-all)", "FP8 (fp8-auto)"]
    assert {arm_names(c)[4] for c in report.comparisons} == {"BF16"}  # the variant name bf16 says nothing more
    assert sum("minimal detectable effect, FP8 (fp8-auto) vs BF16" in line for line in design_lines(report)) == 1
