"""The report's tables, built once and rendered as HTML, Markdown, console text or CSV.

A page that fits a laptop: no table is wider than its column at 1366 px, so the runs are split into a quality
table and a speed/memory table, the comparisons into quality, speed and time-to-target, and long text (arm
names, statuses) wraps. Numbers have fixed decimals per quantity (:mod:`yxanul.formatting`). The CSV
variants (``raw=True``) keep full precision.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field

from yxanul.formatting import bpb, count_or_blank, gib, human_count, percent, ratio, seconds, signed
from yxanul.report.analysis import Comparison, ComparisonReport, RunRow, StageRow, status_text
from yxanul.report.runs import ran_precision, run_spikes, spike_check
from yxanul.report.words import arm_names, facts
from yxanul.stats import Estimate

__all__ = ["Table", "arms_csv", "comparisons_csv", "pairs_csv", "runs_csv", "stages_csv", "tables"]


@dataclass
class Table:
    key: str
    """Stable name (HTML id, file names)."""
    title: str
    head: list[str]
    body: list[list[str]]
    note: str = ""
    text_columns: set[int] = field(default_factory=lambda: {0})
    """Columns of words that may wrap (the others are numbers and stay on one line)."""
    folded: bool = False
    """Shown folded (``<details>``) on the page."""


def _ci(e: Estimate | None, fmt: Callable[[float], str]) -> tuple[str, str]:
    """(mean, '95% CI' cell) with fixed decimals; one seed: the mean and 'no interval'."""
    if e is None:
        return "", ""
    if e.low is None or e.high is None:
        return fmt(e.mean), "1 seed: none"
    return fmt(e.mean), f"{fmt(e.low)} to {fmt(e.high)}"


def _reached_cell(row: RunRow, value: float | None, fmt: Callable[[float | None], str]) -> str:
    if row.reached is None:
        return ""
    return fmt(value) if row.reached else "not reached"


def _spike_cell(row: RunRow) -> str:
    spikes = run_spikes(row.run)
    if not spikes:
        return spike_check(row.run)  # none / not checked / not recorded: an empty cell would read as "none"
    return f"{len(spikes)}: " + ", ".join(s.describe() for s in spikes[:2]) + (" ..." if len(spikes) > 2 else "")


def _comparison_name(c: Comparison) -> str:
    """``FP8 vs BF16`` (with the shared grid point when there is one: ``FP8 vs BF16 (curriculum=none)``)."""
    _, _, shared, arm, ref = arm_names(c)
    return f"{arm} vs {ref}" + (f" ({shared})" if shared else "")


def tables(report: ComparisonReport) -> list[Table]:
    """Every table of the page, in page order."""
    arms = report.measured_arms
    target = bpb(report.target_bpb) if report.target_bpb is not None else None
    out: list[Table] = []

    for i, c in enumerate(report.comparisons):  # the evidence for each headline first
        if c.pairs:
            out.append(_seed_table(report, c, i))

    all_facts = facts(report)
    shared = [f for f in all_facts if f.shared]
    differ = [f for f in all_facts if not f.shared]
    if shared:
        out.append(Table("setup", "What ran: shared by the arms", ["", "value"],
                         [[f.name, f.values[0]] for f in shared], text_columns={0, 1}))
    if differ:
        out.append(Table("differences", "What differs between the arms (from what the runs recorded)",
                         ["", *(a.arm for a in arms)], [[f.name, *f.values] for f in differ],
                         text_columns=set(range(len(arms) + 1))))

    body = []
    for a in arms:
        n = len(a.rows)
        mean, ci = _ci(a.val_bpb, bpb)
        row = [a.arm + (" (reference)" if a.arm == report.reference else ""), str(n), mean, ci]
        if target is not None:
            row.append(f"{a.reached}/{n}")
            row += list(_ci(a.tokens_to_target, count_or_blank)) if a.reached else ["", ""]
            row.append(_ci(a.seconds_to_target, seconds)[0] if a.reached else "")
        body.append(row)
    head = ["arm", "seeds", "final val/bpb", "95% CI"]
    if target is not None:
        head += [f"reached {target}", "tokens to it", "95% CI", "seconds to it"]
    out.append(Table("arms", "Arms: quality (matched seeds)", head, body,
                     note="bits/byte: mean and t interval; tokens and seconds to the target: geometric mean over the "
                          "seeds that reached it (seconds: training clock without compilation)"))
    if report.bf16_eval:
        out.append(_bf16_arms_table(report))

    out.append(Table("arms_speed", "Arms: speed and memory (matched seeds)",
                     ["arm", "tokens/s per GPU", "95% CI", "MFU (BF16 peak)", "peak memory", "compile", "training"],
                     [[a.arm, *_ci(a.tokens_per_s, count_or_blank),
                       percent(_mean([r.mfu_bf16 for r in a.rows])), gib(_max([r.peak_mem_gib for r in a.rows])),
                       seconds(_mean([r.compile_seconds for r in a.rows])),
                       seconds(_mean([r.train_seconds for r in a.rows]))] for a in arms],
                     note="tokens/s: geometric mean of each run's median; compile: first step of each batch shape "
                          "(mean per run), kept out of tokens/s and of the time to target; training: the training "
                          "clock at the end without compilation (mean per run)"))

    if report.curriculum:  # a report without a curriculum arm reads as before
        out.append(_stage_table(report.stages))

    if report.comparisons:
        out.append(Table("quality", "Comparisons: final val/bpb (seed-paired, lower is better)",
                         ["comparison", "seeds", "gap", "95% CI", "MDE", "verdict"],
                         [[_comparison_name(c), f"{c.n}" + (f" of {c.n + len(c.unpaired)}" if c.unpaired else ""),
                           *_ci(c.bpb_gap, signed), bpb(c.mde_bpb) if c.mde_bpb is not None else "",
                           c.quality_verdict] for c in report.comparisons],
                         note="gap: arm - reference per seed, mean and t interval; MDE: the smallest gap this design "
                              "detects (95%, 80% power)", text_columns={0, 5}))
        in_bf16 = [c for c in report.comparisons if c.bf16_gap is not None]
        if in_bf16:
            out.append(Table("quality_bf16", "Comparisons: final val/bpb evaluated in BF16 (seed-paired, lower is "
                                             "better)", ["comparison", "seeds", "gap", "95% CI", "MDE", "verdict"],
                             [[_comparison_name(c), str(c.bf16_gap.n), *_ci(c.bf16_gap, signed),
                               bpb(c.mde_bf16) if c.mde_bf16 is not None else "", c.bf16_verdict] for c in in_bf16],
                             note="both arms' final weights evaluated the same way: an FP8 arm's through its BF16 path "
                                  "(val/bpb_bf16_eval), an arm trained without FP8 by its own val/bpb; what remains "
                                  "is the quality of the weights, not the arithmetic of their evaluation",
                             text_columns={0, 5}))
        out.append(Table("speed", "Comparisons: speed (seed-paired ratios arm / reference)",
                         ["comparison", "tokens/s", "95% CI", "MDE", "verdict", "time to target", "95% CI", "verdict"],
                         [[_comparison_name(c), *_ci(c.speedup, ratio),
                           percent(c.mde_speed) if c.mde_speed is not None else "", c.speed_verdict,
                           *(_ci(c.time_speedup, ratio) if c.time_speedup else (_time_cell(report, c), "")),
                           c.time_verdict if c.time_speedup else ""] for c in report.comparisons],
                         note="geometric means of the per-seed ratios with log-scale t intervals; time to target: "
                              "reference seconds / arm seconds over the seeds where both reached it (> 1: the arm "
                              "is faster)", text_columns={0, 4, 5, 7}))

    domain_head = ["arm", *(f"{d} bpb" for d in report.domains)]
    if report.domains:
        out.append(Table("domains", "Validation bits/byte per domain (matched seeds, mean and 95% CI)", domain_head,
                         [[a.arm, *(_interval_cell(a.domain_bpb.get(d)) for d in report.domains)] for a in arms],
                         folded=True))
    matched = [r for a in arms for r in a.rows]
    in_bf16 = ["val/bpb in BF16"] if report.bf16_eval else []
    quality_head = ["arm", "seed", "tokens", "val/bpb", *in_bf16, *(f"{d}" for d in report.domains)]
    if target is not None:
        quality_head += [f"tokens to {target}", "seconds to it"]
    out.append(Table("runs", f"Runs: quality ({len(matched)} on matched seeds)", quality_head,
                     [[r.run.arm, str(r.seed), count_or_blank(r.final_tokens), bpb(r.val_bpb),
                       *([bpb(r.bf16_eval_bpb)] if in_bf16 else []),
                       *(bpb(r.domain_bpb.get(d)) for d in report.domains),
                       *([_reached_cell(r, r.tokens_to_target, count_or_blank),
                          _reached_cell(r, r.seconds_to_target, seconds)] if target is not None else [])]
                      for r in matched], folded=True))
    out.append(Table("runs_speed", "Runs: speed and memory", ["arm", "seed", "tokens/s per GPU", "MFU (BF16)",
                                                              "MFU (FP8)", "peak memory", "compile", "training",
                                                              "spikes"],
                     [[r.run.arm, str(r.seed), count_or_blank(r.tokens_per_s), percent(r.mfu_bf16), percent(r.mfu_fp8),
                       gib(r.peak_mem_gib), seconds(r.compile_seconds), seconds(r.train_seconds), _spike_cell(r)]
                      for r in matched], folded=True, text_columns={0, 8}))
    if report.unmatched:
        out.append(Table("unmatched", f"Runs outside the matched seeds ({len(report.unmatched)})",
                         ["arm", "seed", "status", "run id"],
                         [[run.arm, str(run.replicate), why, run.run_id] for run, why in report.unmatched],
                         text_columns={0, 2}))
    measured = {r.run.run_id: r for r in report.rows}
    out.append(Table("run_ids", f"Every run ({len(report.runs)})", ["arm", "seed", "status", "tokens", "val/bpb",
                                                                    "run id"],
                     [[r.arm, str(r.replicate), status_text(r),
                       count_or_blank(measured[r.run_id].final_tokens) if r.run_id in measured else "",
                       bpb(measured[r.run_id].val_bpb) if r.run_id in measured else "", r.run_id] for r in report.runs],
                     folded=True, text_columns={0, 2}))
    return out


def _bf16_arms_table(report: ComparisonReport) -> Table:
    """Each arm's final val/bpb in its training numerics beside the same weights evaluated in BF16."""
    body = []
    for a in report.measured_arms:
        row = [a.arm + (" (reference)" if a.arm == report.reference else ""), str(len(a.rows)), *_ci(a.val_bpb, bpb)]
        if a.bf16_eval_bpb is None:
            row += ["= val/bpb" if not any(ran_precision(r.run).fp8_used for r in a.rows) else "not logged", "", "", ""]
        else:
            row += [*_ci(a.bf16_eval_bpb, bpb), *_ci(a.eval_numerics, signed)]
        body.append(row)
    return Table("arms_bf16", "Arms: final val/bpb in training numerics and evaluated in BF16 (matched seeds)",
                 ["arm", "seeds", "training numerics", "95% CI", "evaluated in BF16", "95% CI", "difference", "95% CI"],
                 body, note="training numerics: the run's own validation (an FP8 arm's FP8 layers in FP8); "
                            "evaluated in BF16: the same final weights with FP8 off (val/bpb_bf16_eval: Transformer "
                            "Engine's layers in BF16, as a BF16 run computes); difference: training numerics - BF16 "
                            "per seed. An arm that trained without FP8 has one number (= val/bpb).",
                 text_columns={0, 4})


def _seed_table(report: ComparisonReport, c: Comparison, index: int) -> Table:
    """The per-seed view of one comparison (open on the page): every number the headline rests on."""
    _, _, _, arm, ref = arm_names(c)
    head = ["seed", f"{ref} bpb", f"{arm} bpb", "gap", f"{ref} tok/s", f"{arm} tok/s", "ratio"]
    name = _comparison_name(c)
    ref_bf16 = c.bf16_gap is not None and any(p.reference.bf16_eval_bpb is not None for p in c.pairs)
    if c.bf16_gap is not None:  # after the bpb columns: every number of the headline's BF16 part too
        head[4:4] = [*([f"{ref} in BF16"] if ref_bf16 else []), f"{arm} in BF16", "gap in BF16"]
    if report.target_bpb is not None:
        head += [f"{ref} s to target", f"{arm} s to target", "time ratio"]
    body = []
    for p in c.pairs:
        row = [str(p.seed), bpb(p.reference.val_bpb), bpb(p.arm.val_bpb), signed(p.bpb_gap),
               count_or_blank(p.reference.tokens_per_s), count_or_blank(p.arm.tokens_per_s), ratio(p.speed_ratio)]
        if c.bf16_gap is not None:
            row[4:4] = [*([bpb(p.reference.bf16_path_bpb)] if ref_bf16 else []), bpb(p.arm.bf16_path_bpb),
                        signed(p.bf16_gap)]
        if report.target_bpb is not None:
            bound = p.time_bound
            time_cell = (ratio(p.time_ratio) if p.time_ratio is not None else
                         f"{bound[0]} {ratio(bound[1])}" if bound else "neither")
            row += [_reached_cell(p.reference, p.reference.seconds_to_target, seconds),
                    _reached_cell(p.arm, p.arm.seconds_to_target, seconds), time_cell]
        body.append(row)
    note = ("gap: arm - reference final val/bpb; ratio: arm / reference tokens/s; time ratio: reference / arm seconds "
            "to the target (>= x: only the arm reached it, x = the reference's whole run / the arm's time)")
    if c.bf16_gap is not None:
        note += ("; in BF16: the final weights evaluated with FP8 off (a run trained without FP8: its val/bpb), gap in "
                 "BF16: arm - reference of those")
    if c.unpaired:
        note += "; not paired: " + "; ".join(c.unpaired)
    return Table(f"seeds_{index}", f"Per seed: {name}", head, body, note=note, text_columns=set())


NOT_RECORDED = "not recorded"


def _stage_table(stages: list[StageRow]) -> Table:
    """Per arm and curriculum stage: what a token cost there by arithmetic (FLOPs, attention's share of them) and
    as measured (tokens/s, attention's share of the profiled step's time): why a curriculum is faster or not."""
    body = []
    for row in stages:
        flops = row.flops
        body.append([row.arm, str(row.seeds), str(row.index), str(row.seq_len),
                     ("" if row.exact else "~") + human_count(row.tokens),
                     human_count(flops.total) if flops else NOT_RECORDED,
                     percent(flops.attention_share) if flops else NOT_RECORDED,
                     count_or_blank(row.tokens_per_s) if row.tokens_per_s is not None else NOT_RECORDED,
                     percent(row.attention_share) if row.attention_share is not None else NOT_RECORDED])
    note = ("matched seeds pooled (seeds: the runs pooled); FLOPs per token: 6 x weight-matmul parameters + 12 x layers "
            "x hidden x seq_len, attention FLOPs: the second term's share; tokens/s per GPU: median over the logging "
            "intervals wholly inside the stage; attention time: median share of the stage's profiled step (device "
            "time on a GPU, CPU time on CPU) spent in scaled-dot-product attention. A short stage is cheaper per token "
            "by its attention FLOPs; it is faster only if its measured tokens/s is higher")
    if not all(row.exact for row in stages):
        note += "; ~: stage bounds read off the logging points (runs recorded before the stage tag)"
    return Table("stages", "Curriculum stages: throughput and attention per stage", [
        "arm", "seeds", "stage", "seq_len", "tokens", "FLOPs per token", "attention FLOPs", "tokens/s per GPU",
        "attention time"], body, note=note)


def _time_cell(report: ComparisonReport, c: Comparison) -> str:
    if report.target_bpb is None or not c.pairs:
        return ""
    k_arm, k_ref = c.reached
    return f"reached {k_arm}/{c.n} vs {k_ref}/{c.n}"


def _interval_cell(e: Estimate | None) -> str:
    mean, ci = _ci(e, bpb)
    return f"{mean} ({ci})" if ci else mean


def _mean(values: list[float | None]) -> float | None:
    xs = [v for v in values if v is not None and math.isfinite(v)]
    return sum(xs) / len(xs) if xs else None


def _max(values: list[float | None]) -> float | None:
    xs = [v for v in values if v is not None and math.isfinite(v)]
    return max(xs) if xs else None


# ---------------------------------------------------------------------------------------------------
# CSV: full precision


def _raw(value: float | int | None) -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return ""
    if isinstance(value, int) or float(value).is_integer():
        return str(int(value))
    return repr(float(value))


def _raw_est(e: Estimate | None) -> list[str]:
    if e is None:
        return ["", "", "", "", "0"]
    return [_raw(e.mean), _raw(e.low), _raw(e.high), _raw(e.std), str(e.n)]


def _est_head(name: str) -> list[str]:
    return [f"{name}_mean", f"{name}_low", f"{name}_high", f"{name}_std", f"{name}_n"]


def runs_csv(report: ComparisonReport) -> tuple[list[str], list[list[str]]]:
    """Every run: measured values for those with validation results, and whether its seed is matched."""
    in_bf16 = report.bf16_eval
    head = ["variant", "arm", "seed", "status", "matched", "note", "precision_ran", "tokens", "val_bpb",
            *(["val_bpb_bf16_eval"] if in_bf16 else [])]
    for d in report.domains:
        head += [f"val_{d}_loss", f"val_{d}_bpb"]
    head += ["reached_target", "tokens_to_target", "seconds_to_target", "tokens_per_s", "mfu_bf16", "mfu_fp8",
             "peak_mem_gib", "train_seconds", "compile_seconds", "spikes", "run_id"]
    rows = {r.run.run_id: r for r in report.rows}
    used = {r.run.run_id for a in report.arms for r in a.rows}
    why = {run.run_id: text for run, text in report.unmatched}
    body = []
    for run in report.runs:
        row = rows.get(run.run_id)
        cells = [run.variant, run.arm, str(run.replicate), status_text(run), str(run.run_id in used).lower(),
                 why.get(run.run_id, ""), ran_precision(run).describe()]
        if row is None:
            cells += [""] * (len(head) - len(cells) - 1) + [run.run_id]
        else:
            cells += [_raw(row.final_tokens), _raw(row.val_bpb), *([_raw(row.bf16_eval_bpb)] if in_bf16 else [])]
            for d in report.domains:
                cells += [_raw(row.domain_loss.get(d)), _raw(row.domain_bpb.get(d))]
            cells += ["" if row.reached is None else str(row.reached).lower(), _raw(row.tokens_to_target),
                      _raw(row.seconds_to_target), _raw(row.tokens_per_s), _raw(row.mfu_bf16), _raw(row.mfu_fp8),
                      _raw(row.peak_mem_gib), _raw(row.train_seconds), _raw(row.compile_seconds),
                      " ".join(f"{s.kind}@{s.tokens}={s.size!r}" for s in run_spikes(run)), run.run_id]
        body.append(cells)
    return head, body


def arms_csv(report: ComparisonReport) -> tuple[list[str], list[list[str]]]:
    in_bf16 = ["val_bpb_bf16_eval", "val_bpb_minus_bf16_eval"] if report.bf16_eval else []
    stats = ["val_bpb", *in_bf16, *(f"val_{d}_bpb" for d in report.domains), "tokens_to_target", "seconds_to_target",
             "tokens_per_s"]
    head = ["arm", "precision_ran", "seeds", "runs", "reached_target", "spiking_seeds"]
    for name in stats:
        head += _est_head(name)
    body = []
    for a in report.arms:
        row = [a.arm, a.precision_text, " ".join(map(str, a.seeds)), str(len(a.runs)), str(a.reached),
               " ".join(str(r.replicate) for r in a.spiking)]
        for e in (a.val_bpb, *((a.bf16_eval_bpb, a.eval_numerics) if in_bf16 else ()),
                  *(a.domain_bpb.get(d) for d in report.domains), a.tokens_to_target, a.seconds_to_target,
                  a.tokens_per_s):
            row += _raw_est(e)
        body.append(row)
    return head, body


def comparisons_csv(report: ComparisonReport) -> tuple[list[str], list[list[str]]]:
    in_bf16 = report.bf16_eval
    head = ["arm", "reference", "kind", "seeds_paired", *_est_head("bpb_gap"), "mde_bpb", "quality_verdict",
            *([*_est_head("bpb_gap_bf16_eval"), "mde_bpb_bf16_eval", "quality_bf16_eval_verdict"] if in_bf16 else []),
            *_est_head("loss_gap"), *_est_head("speedup"), "mde_speedup_share", "speed_verdict",
            *_est_head("time_speedup"), "time_verdict", "arm_reached", "reference_reached", "unpaired", "spiking_runs"]
    body = []
    for c in report.comparisons:
        k_arm, k_ref = c.reached
        bf16 = [*_raw_est(c.bf16_gap), _raw(c.mde_bf16), c.bf16_verdict if c.bf16_gap else ""] if in_bf16 else []
        body.append([c.arm.arm, c.reference.arm, c.kind, str(c.n), *_raw_est(c.bpb_gap), _raw(c.mde_bpb),
                     c.quality_verdict, *bf16, *_raw_est(c.loss_gap), *_raw_est(c.speedup), _raw(c.mde_speed),
                     c.speed_verdict, *_raw_est(c.time_speedup), c.time_verdict, str(k_arm), str(k_ref),
                     "; ".join(c.unpaired), " ".join(r.run_id for r in c.spiking)])
    return head, body


def pairs_csv(report: ComparisonReport) -> tuple[list[str], list[list[str]]]:
    in_bf16 = report.bf16_eval
    head = ["arm", "reference", "seed", "at_tokens", "loss_gap", "bpb_gap", *(["bpb_gap_bf16_eval"] if in_bf16 else []),
            "speedup_tokens_per_s", "time_ratio", "time_bound", "arm_run_id", "reference_run_id"]
    body = []
    for c in report.comparisons:
        for p in c.pairs:
            bound = p.time_bound
            body.append([c.arm.arm, c.reference.arm, str(p.seed), _raw(p.tokens), _raw(p.loss_gap), _raw(p.bpb_gap),
                         *([_raw(p.bf16_gap)] if in_bf16 else []), _raw(p.speed_ratio), _raw(p.time_ratio),
                         f"{bound[0]}{bound[1]!r}" if bound else "", p.arm.run.run_id, p.reference.run.run_id])
    return head, body


def stages_csv(report: ComparisonReport) -> tuple[list[str], list[list[str]]]:
    """Every measured arm's curriculum stages (one row for an arm without a curriculum), full precision."""
    head = ["arm", "stage", "seq_len", "seeds", "tokens", "bounds", "flops_per_token", "attention_flops_per_token",
            "attention_flops_share", "tokens_per_s_median", "tokens_per_s_points", "attention_share_median",
            "attention_share_points"]
    body = []
    for row in report.stages:
        flops = row.flops
        body.append([row.arm, str(row.index), str(row.seq_len), str(row.seeds), _raw(row.tokens),
                     "exact" if row.exact else "logging points", _raw(flops.total if flops else None),
                     _raw(flops.attention if flops else None), _raw(flops.attention_share if flops else None),
                     _raw(row.tokens_per_s), str(row.rate_points), _raw(row.attention_share),
                     str(row.attention_points)])
    return head, body
