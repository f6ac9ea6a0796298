"""What the report says in sentences: the title, the headline per comparison (built from what the runs
recorded), the design and its minimal detectable effect, the time-to-target summary with censoring, the
warnings, the provenance, and the method. Every number goes through :mod:`yxanul.formatting`, so the page, the
Markdown and the console read the same."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from yxanul.formatting import bpb, human_count, percent, ratio, shown_paths, signed
from yxanul.report.analysis import ArmSummary, Comparison, ComparisonReport, RunRow, status_text
from yxanul.report.fetch import SweepRecord
from yxanul.report.runs import RunSeries, int_tag, model_config, ran_precision, run_spikes, spike_check, vocabularies
from yxanul.stats import LEVEL, MOST_SEEDS, NO_DIFFERENCE, POWER, Estimate, seeds_needed, t_quantile
from yxanul.tags import (
    ATTENTION_KERNELS_TAG,
    DATA_SHA256_TAG,
    DATA_TRAIN_TOKENS_TAG,
    GIT_DIFF_SHA256_TAG,
    GIT_DIRTY_TAG,
    GIT_SHA_TAG,
    INTERRUPTIONS_TAG,
    LAST_INTERRUPTION_TAG,
    LAST_RESTART_TAG,
    LAST_RESUME_TAG,
    MANIFEST_SHA256_TAG,
    MODEL_PARAMS_NON_EMBEDDING_TAG,
    MODEL_PARAMS_TAG,
    RESTARTS_TAG,
    RESUMED_TAG,
    RESUMES_TAG,
    TORCH_VERSION_TAG,
    VERSION_TAG_PREFIX,
)

__all__ = ["BF16_EVAL_METHOD", "METHOD", "Fact", "arm_names", "design_lines", "display_uri", "facts",
           "headline", "mlflow_link", "provenance_lines", "seeds_to_decide", "title", "warnings"]

PER_RUN_KEYS = ("run.name", "run.seed", "run.storage_path", "tracking.uri", "tracking.experiment", "data.output_dir",
                "tokenizer.path", "data.cache_dir")
"""Params that differ between runs by construction (names, seeds) or are machine paths: never a difference
between arms, and never printed (a committed report holds no machine's paths)."""


# ---------------------------------------------------------------------------------------------------
# Names


def _precision_key(key: str) -> bool:
    return key == "precision" or key.startswith("precision.")


def _short_precision(arm: ArmSummary) -> str:
    """``FP8`` / ``BF16`` for a sentence that names the arms often: what ran (an FP8 arm whose plan kept no
    FP8 layer is BF16)."""
    ran = [ran_precision(r.run) for r in arm.rows] or [ran_precision(r) for r in arm.runs]
    modes = {"BF16 (FP8 asked)" if p.mode == "fp8" and p.layers == () else p.mode.upper() for p in ran}
    return "/".join(sorted(modes))


def _differing(arm: ArmSummary, other: ArmSummary) -> list[tuple[str, str]]:
    """The (key, value) of ``arm`` that ``other`` does not share: grid axes when both recorded them, else the
    params that differ (runs without ``yxanul.axes``)."""
    if arm.axes is not None and other.axes is not None and list(arm.axes) == list(other.axes):
        return [(k, v) for k, v in arm.axes.items() if other.axes.get(k) != v]
    mine, theirs = _arm_params(arm), _arm_params(other)
    return [(k, mine.get(k, "unset")) for k in sorted(set(mine) | set(theirs))
            if mine.get(k) != theirs.get(k) and k not in PER_RUN_KEYS]


def _arm_params(arm: ArmSummary) -> dict[str, str]:
    runs = [r.run for r in arm.rows] or arm.runs
    return dict(runs[0].params) if runs else {}


def arm_names(c: Comparison) -> tuple[str, str, str, str, str]:
    """(arm, reference, shared context, arm short, reference short) of a comparison, built from what ran: the
    keys the arms differ in, with the precision keys replaced by the resolved precision (``FP8 (delayed) on
    attention+mlp+head``) whenever either arm asked for FP8, so a headline names the FP8 layers actually used."""
    def name(arm: ArmSummary, other: ArmSummary) -> tuple[str, str]:
        diff = _differing(arm, other)
        fp8 = "fp8" in (arm.asked_precision, other.asked_precision)
        parts = [f"{k}={v}" for k, v in diff if not (fp8 and _precision_key(k))]
        if len(parts) > 3:  # runs without axes differing in many params: the table of differences has them all
            parts = [*parts[:3], f"+{len(parts) - 3} more keys"]
        if fp8 or any(_precision_key(k) for k, _ in diff):
            parts.append(arm.precision_text)
            ran = _short_precision(arm)  # + the variant's own name where it says more (two FP8 arms: which one)
            named = [v for k, v in diff if _precision_key(k) and v.lower() not in (ran.lower(), "bf16", "fp8", "fp32")]
            ran += f" ({', '.join(named)})" if named else ""
            short = ", ".join(p for p in parts[:-1]) + (", " if len(parts) > 1 else "") + ran
        else:
            short = ", ".join(parts)
        return ", ".join(parts) or arm.arm, short or arm.arm

    arm, arm_short = name(c.arm, c.reference)
    ref, ref_short = name(c.reference, c.arm)
    shared = ""
    if c.arm.axes is not None and c.reference.axes is not None:
        shared = ", ".join(f"{k}={v}" for k, v in c.arm.axes.items() if c.reference.axes.get(k) == v)
    return arm, ref, shared, arm_short, ref_short


# ---------------------------------------------------------------------------------------------------
# Numbers in words


def interval(e: Estimate | None, fmt: Callable[[float], str]) -> str:
    """``-0.0424 (95% CI -0.4537 to +0.3689)``; one seed: ``-0.0424 (1 seed: no interval)``."""
    if e is None:
        return "no data"
    if e.low is None or e.high is None:
        return f"{fmt(e.mean)} (1 seed: no interval)"
    return f"{fmt(e.mean)} ({LEVEL:.0%} CI {fmt(e.low)} to {fmt(e.high)})"


def _said(what: str, e: Estimate | None, fmt: Callable[[float], str], verdict_word: str) -> str:
    if e is not None and e.low is None:  # one seed: the number, never a verdict
        return f"{what} {fmt(e.mean)} (1 seed: no interval, no verdict)"
    return f"{what} {interval(e, fmt)}: {verdict_word}"


def _machine(runs: list[RunSeries]) -> str:
    """``1x NVIDIA H200`` (several: joined by `` / ``); '' when no run recorded its card."""
    return " / ".join(sorted({r.machine.split(" (")[0] for r in runs if r.card}))


def time_sentence(report: ComparisonReport, c: Comparison) -> str | None:
    """The censoring-aware time-to-target summary: how many seeds each arm reached the target at, the ratio
    where both did, and a bound where only one did (a run that did not reach it is censored at its budget)."""
    if report.target_bpb is None or not c.pairs:
        return None
    _, _, _, arm, ref = arm_names(c)
    n = c.n
    k_arm, k_ref = c.reached
    text = (f"time to {bpb(report.target_bpb)} bpb (compile excluded): {arm} reached it at {k_arm}/{n} "
            f"seed{'s' if n != 1 else ''}, {ref} at {k_ref}/{n}")
    both = [p for p in c.pairs if p.time_ratio is not None]
    if both:
        word = "no verdict" if c.time_speedup is None or c.time_speedup.low is None else c.time_verdict
        text += (f"; where both did ({len(both)} seed{'s' if len(both) != 1 else ''}), {arm} got there "
                 f"{interval(c.time_speedup, ratio)} as fast as {ref}: {word}")
    for p in c.pairs:
        bound = p.time_bound
        if bound is not None:
            faster, who = (arm, ref) if bound[0] == ">=" else (ref, arm)
            factor = bound[1] if bound[0] == ">=" else 1 / bound[1]
            text += (f"; seed {p.seed}: only {faster} reached it, at least {ratio(factor)} faster than {who}'s "
                     "whole run")
    neither = [p.seed for p in c.pairs if not p.arm.reached and not p.reference.reached]
    if neither:
        text += f"; neither reached it at seed{'s' if len(neither) > 1 else ''} {', '.join(map(str, neither))}"
    return text


def headline(report: ComparisonReport, c: Comparison) -> str:
    """One sentence of answer, e.g. ``FP8 (delayed) on attention+mlp+head vs BF16 on 1x NVIDIA H200, 3 matched
    seeds: final val/bpb -0.0040 (95% CI -0.0150 to +0.0070): no difference detected; tokens/s 1.040x (95% CI
    1.010x to 1.071x): faster; time to 2.8000 bpb ...``."""
    arm, ref, shared, _, _ = arm_names(c)
    runs = [r for p in c.pairs for r in (p.arm.run, p.reference.run)]
    machine = _machine(runs)
    head = f"{arm} vs {ref}" + (f" ({shared})" if shared else "") + (f" on {machine}" if machine else "")
    n = c.n
    if n == 0:
        why = "; ".join(c.unpaired) or "no finished runs"
        return f"{head}: no seed where both arms finished ({why}): no comparison."
    if c.bf16_gap is None:
        parts = [_said("final val/bpb", c.bpb_gap, signed, c.quality_verdict)]
    else:  # the same weights twice: as each arm trained, and both evaluated as BF16 computes
        parts = [_said("final val/bpb in training numerics", c.bpb_gap, signed, c.quality_verdict),
                 _said("both evaluated in BF16", c.bf16_gap, signed, c.bf16_verdict)]
    if c.speedup is not None:
        parts.append(_said("tokens/s", c.speedup, ratio, c.speed_verdict))
    time_text = time_sentence(report, c)
    if time_text:
        parts.append(time_text)
    text = f"{head}, {n} matched seed{'s' if n != 1 else ''}: " + "; ".join(parts) + "."
    if c.unpaired:
        text += " Not paired: " + "; ".join(c.unpaired) + "."
    spiking = c.spiking
    if spiking:
        text += " Rests on a run with a spike: " + "; ".join(
            f"{r.arm} seed {r.replicate} ({', '.join(s.describe() for s in run_spikes(r)[:3])})" for r in spiking) + "."
    unchecked = [r for p in c.pairs for r in (p.reference.run, p.arm.run) if spike_check(r) == "not checked"]
    if unchecked:
        text += " Spikes not checked (too short a run): " + ", ".join(
            f"{r.arm} seed {r.replicate}" for r in unchecked) + "."
    return text


def title(report: ComparisonReport) -> str:
    """``fp8-vs-bf16: FP8 vs BF16, 1x NVIDIA H200, 2026-12-01, 2.62M tokens per run``: which question, card,
    date and budget (two reports of one sweep differ in their titles)."""
    name = report.source.split(" ", 1)[-1]
    if len(report.comparisons) == 1 and report.comparisons[0].pairs:
        _, _, _, arm, ref = arm_names(report.comparisons[0])
        what = f"{arm} vs {ref}"
    else:
        what = f"{len(report.measured_arms)} arms"
    budgets = _budgets(report.runs)
    parts = [what, _machine(report.runs), _dates(report.runs, short=True)]
    if budgets:
        parts.append(f"{budgets} tokens per run")
    return f"{name}: " + ", ".join(p for p in parts if p)


def _budgets(runs: list[RunSeries]) -> str:
    values = sorted({int(r.params["train.max_tokens"]) for r in runs if r.params.get("train.max_tokens", "").isdigit()})
    return " / ".join(human_count(v) for v in values)


def _dates(runs: list[RunSeries], short: bool = False) -> str:
    starts = [r.start_time_ms / 1000 for r in runs if r.start_time_ms]
    if not starts:
        return ""
    first, last = min(starts), max(starts)
    if short:  # the day, or the first and last days of runs that spanned several
        days = [time.strftime("%Y-%m-%d", time.gmtime(t)) for t in (first, last)]
        return days[0] if days[0] == days[1] else f"{days[0]} to {days[1]}"
    fmt = "%Y-%m-%d %H:%M"
    return time.strftime(fmt, time.gmtime(first)) + (
        f" to {time.strftime(fmt, time.gmtime(last))}" if last - first >= 60 else "") + " UTC (run starts)"


# ---------------------------------------------------------------------------------------------------
# The design, warnings


def design_lines(report: ComparisonReport) -> list[str]:
    """Seeds and matching, the noise floor, the target and its rule, each comparison's minimal detectable effect."""
    arms = report.measured_arms
    seeds = report.seeds
    lines = [f"{len(arms)} arm{'s' if len(arms) != 1 else ''} x seeds {', '.join(map(str, seeds))}; "
             f"matched seeds (every arm finished): {', '.join(map(str, report.matched_seeds)) or 'none'}"
             + (f"; {len(report.unmatched)} run{'s' if len(report.unmatched) != 1 else ''} listed apart"
                if report.unmatched else "")]
    order = data_order_text(report.runs)
    if order:
        lines.append(order)
    floor = report.noise_floor
    if floor is not None and floor.std is not None:
        lines.append(f"noise floor: {bpb(floor.std)} bits/byte (seed standard deviation of the reference arm's final "
                     f"val/bpb over the {floor.n} seeds it finished)")
    else:
        lines.append("noise floor: not measured (the reference arm finished fewer than 2 seeds)")
    lines.append(target_text(report))
    design = report.sequential
    if design is not None:
        lines.append(design.describe())
        for c in report.comparisons:
            if c.pairs:
                _, _, _, arm, ref_short = arm_names(c)
                d = c.decision(design)
                where = (f" (level {d.alpha:.4f}: {signed(d.low)} to {signed(d.high)})" if d.alpha is not None else "")
                lines.append(f"stopping rule, {arm} vs {ref_short}: {d.state} at {d.n} seed pairs{where}")
    for c in report.comparisons:
        if not c.pairs:
            continue  # no comparison (its headline says why)
        _, _, shared, arm, ref_short = arm_names(c)
        if shared:
            ref_short += f" ({shared})"
        if c.mde_bpb is None:
            lines.append(f"minimal detectable effect, {arm} vs {ref_short}: not computable with {c.n} seed pair"
                         f"{'s' if c.n != 1 else ''} (needs 2 or more)")
            continue
        speed = f", tokens/s {percent(c.mde_speed)}" if c.mde_speed is not None else ""
        in_bf16 = f", evaluated in BF16 {bpb(c.mde_bf16)} bits/byte" if c.mde_bf16 is not None else ""
        lines.append(f"minimal detectable effect, {arm} vs {ref_short} ({c.n} seed pairs, paired t, "
                     f"{LEVEL:.0%} two-sided, {POWER:.0%} power): final val/bpb {bpb(c.mde_bpb)} bits/byte{speed}"
                     f"{in_bf16}")
        needed = seeds_to_decide(c, report.target_effect)
        if needed:
            lines.append(f"seeds to decide, {arm} vs {ref_short}: {needed}")
    return lines


def seeds_to_decide(c: Comparison, target_effect: float | None) -> str:
    """How many seed pairs would detect a difference in final val/bpb (paired t, the report's level and power, at the
    spread of the per-seed differences measured here): of ``sweep.target_effect`` when the sweep set one, and, where
    the verdict is "no difference detected", of the size measured (a planning figure: the measured difference is
    itself uncertain). "" when nothing is to say (no spread measured, or a difference already detected without a
    target effect)."""
    gap = c.bpb_gap
    if gap is None or gap.std is None:
        return ""
    parts = []

    def count(effect: float) -> str:
        n = seeds_needed(gap.std, effect)
        return f"{n} seed pairs" if n is not None else f"more than {MOST_SEEDS} seed pairs"

    if target_effect is not None:
        parts.append(f"{count(target_effect)} for a difference of {bpb(target_effect)} bits/byte "
                     "(sweep.target_effect)")
    if c.quality_verdict == NO_DIFFERENCE and abs(gap.mean) > 0:
        parts.append(f"{count(abs(gap.mean))} for one the size measured here ({signed(gap.mean)} bits/byte; a "
                     "planning figure, the measured difference is itself uncertain)")
    if not parts:
        return ""
    return "; ".join(parts) + f", at the per-seed difference spread measured here (sd {bpb(gap.std)} bits/byte)"


def data_order_text(runs: list[RunSeries]) -> str:
    """How the training data order relates to the seeds, from the runs' ``data.order_seed`` param: one fixed order
    for every seed, or an order drawn per seed (shared by the arms at that seed). Empty where no run recorded it."""
    values = {r.params["data.order_seed"] for r in runs if "data.order_seed" in r.params}
    if not values:
        return ""
    if values == {"null"}:
        return ("data order: drawn per seed (run.seed), the same in every arm at a seed; the seed spread includes "
                "which part of the corpus each seed trained on")
    if len(values) == 1:
        return (f"data order: one token sequence for every seed and arm (data.order_seed={values.pop()}); seeds "
                "vary the initialisation only")
    return f"data order: mixed across runs (data.order_seed {', '.join(sorted(values))})"


def target_text(report: ComparisonReport) -> str:
    if report.target_bpb is None:
        return f"target: {report.target_source}"
    return f"target: {bpb(report.target_bpb)} bits/byte ({report.target_source})"


def _elsewhere(a: RunSeries, b: RunSeries) -> bool:
    """Whether two runs trained on different cards: another model, or (both recorded) another machine. The GPUs of
    one node count as one card: sweeps put concurrent trials on them, and they share the machine's state."""
    return a.card != b.card or (a.boot_id is not None and b.boot_id is not None and a.boot_id != b.boot_id)


def _card_of(run: RunSeries, other: RunSeries) -> str:
    """The card's model, and its machine (the boot id's first 8 digits) where the other run's card is of the same
    model."""
    return f"{run.card} on machine {run.boot_id[:8]}" if run.card == other.card and run.boot_id else str(run.card)


def warnings(report: ComparisonReport) -> list[str]:
    """What a reader must know before trusting the numbers."""
    out = []
    for c in report.comparisons:
        _, _, _, arm, ref = arm_names(c)
        if c.n == 2:
            t = t_quantile(0.5 + LEVEL / 2, 1)
            mde = f" (the minimal detectable bpb gap is {bpb(c.mde_bpb)})" if c.mde_bpb is not None else ""
            out.append(f"{arm} vs {ref}: only 2 seed pairs. The {LEVEL:.0%} interval uses t = {t:.2f} (1 degree of "
                       f"freedom), so it is wide and only large effects can be detected{mde}: run 3 or more seeds "
                       "before reading a verdict.")
        elif c.n == 1:
            out.append(f"{arm} vs {ref}: 1 seed pair: one run per arm, no interval and no verdict.")
    for c in report.comparisons:  # a speed ratio pairs two runs: on different cards or machines it measures them
        _, _, _, arm, ref = arm_names(c)
        crossed = [f"seed {p.arm.seed}: {_card_of(p.reference.run, p.arm.run)} / {_card_of(p.arm.run, p.reference.run)}"
                   for p in c.pairs if _elsewhere(p.reference.run, p.arm.run)]
        if crossed:
            out.append(f"{arm} vs {ref}: {len(crossed)} of {len(c.pairs)} seed pairs trained on different cards ("
                       + "; ".join(crossed) + "): their tokens/s ratios and times compare the cards as well as the "
                       "arms; the bits/byte gaps do not depend on the card.")
    for a in report.measured_arms:  # one arm is one configuration: sweeps compared as one must agree
        runs = [r.run for r in a.rows]
        keys = sorted({k for r in runs for k in r.params} - set(PER_RUN_KEYS))
        split = [k for k in keys if len({r.params.get(k) for r in runs}) > 1]
        if split:
            out.append(f"{a.arm}: its runs did not all train the same configuration ("
                       + "; ".join(f"{k}: " + ", ".join(f"{r.params.get(k, 'unset')} (seed {r.replicate})" for r in runs)
                                   for k in split[:3]) + (f"; +{len(split) - 3} more keys" if len(split) > 3 else "")
                       + "): its seeds are not replicates of one arm.")
    simulated = report.simulated
    if simulated:
        out.append(f"{len(simulated)} of {len(report.runs)} runs are simulated (scaling.simulate_accelerators): they "
                   "trained in fp32 on CPU with logical GPUs, whatever their precision.mode, so their speed, memory "
                   "and precision differences say nothing about GPUs.")
    oversized = {a.arm: v for a in report.measured_arms if (v := vocabularies(a.rows[0].run))[0] and v[1]
                 and v[0] > 2 * v[1]}
    for (vocab, tokenizer), arms in _grouped(oversized).items():
        where = "every arm" if len(arms) == len(report.measured_arms) else ", ".join(arms)
        out.append(f"the model's vocabulary ({vocab:,}) is {vocab / tokenizer:.0f}x the tokenizer's ({tokenizer:,}) in "
                   f"{where}: the head computes {vocab - tokenizer:,} logits per token that are never a target, "
                   "which costs time and memory.")
    epochs = [e for a in report.measured_arms for r in a.rows if (e := _epochs(r.run, r.final_tokens)) is not None]
    if epochs and max(epochs) > 1:
        out.append(f"runs trained {max(epochs):.2f} epochs of their data: repeated text, so validation is not on a "
                   "single pass.")
    return out


def _grouped(values: dict[str, tuple]) -> dict[tuple, list[str]]:
    out: dict[tuple, list[str]] = {}
    for key, value in values.items():
        out.setdefault(value, []).append(key)
    return out


def _epochs(run: RunSeries, tokens: int) -> float | None:
    data = int_tag(run, DATA_TRAIN_TOKENS_TAG)
    return tokens / data if data else None


# ---------------------------------------------------------------------------------------------------
# What was compared: facts per arm


@dataclass
class Fact:
    name: str
    values: list[str]
    """One per measured arm, in the report's arm order."""

    @property
    def shared(self) -> bool:
        return len(set(self.values)) == 1


def _model_text(run: RunSeries) -> str:
    p = run.params
    shape = (f"{p.get('model.preset') or 'custom'}: {p.get('model.n_layers', '?')} layers x "
             f"{p.get('model.hidden', '?')} wide, {p.get('model.n_heads', '?')} heads "
             f"({p.get('model.n_kv_heads', '?')} kv)")
    total, non_embedding = int_tag(run, MODEL_PARAMS_TAG), int_tag(run, MODEL_PARAMS_NON_EMBEDDING_TAG)
    if total is None:
        counted = _count_from_params(run)
        if counted is None:
            return f"{shape}; parameters not recorded"
        total, non_embedding = counted
        return f"{shape}; {human_count(total)} parameters ({human_count(non_embedding)} without the embedding; " \
               "computed from the recorded model.* params)"
    extra = f" ({human_count(non_embedding)} without the embedding)" if non_embedding else ""
    return f"{shape}; {human_count(total)} parameters{extra}"


def _count_from_params(run: RunSeries) -> tuple[int, int] | None:
    """Runs recorded before the parameter-count tag: the exact count from their model.* params."""
    from yxanul.model import parameter_count

    model = model_config(run)
    if model is None:
        return None
    try:
        count = parameter_count(model, model.vocab_size)
    except Exception:  # no vocabulary recorded (ConfigError), or an older schema: "not recorded" rather than a guess
        return None
    return count.total, count.non_embedding


def _vocab_text(run: RunSeries) -> str:
    vocab, tokenizer = vocabularies(run)
    kind = run.params.get("tokenizer.kind", "")
    return (f"model {vocab:,}" if vocab else "model: not recorded") + (
        f"; tokenizer {kind} {tokenizer:,}" if tokenizer else "")


def _lr_text(run: RunSeries) -> str:
    p = run.params
    warmup = p.get("optim.warmup_tokens", "")
    warmup_text = f", warm-up {human_count(int(warmup))} tokens" if warmup.isdigit() else ""
    return (f"{p.get('optim.schedule', '?')}, peak {p.get('optim.lr', '?')}{warmup_text}, floor "
            f"{p.get('optim.min_lr_ratio', '?')}x peak, weight decay {p.get('optim.weight_decay', '?')}, "
            f"grad clip {p.get('optim.grad_clip', '?')}")


def _data_text(run: RunSeries, tokens_trained: float) -> str:
    p = run.params
    sources = p.get("data.sources", "?").replace('"', "")
    text = f"{sources} ({p.get('data.mode', '?')}"
    if p.get("data.mode") == "packed" and p.get("data.seq_len"):
        text += f" to {p['data.seq_len']} tokens"
    text += ")"
    data_sha, sha = run.tags.get(DATA_SHA256_TAG), run.tags.get(MANIFEST_SHA256_TAG)
    text += (f"; data {data_sha[:12]}" if data_sha else f"; manifest {sha[:12]}" if sha else "; manifest not recorded")
    data = int_tag(run, DATA_TRAIN_TOKENS_TAG)
    if data:
        text += f"; {human_count(data)} training tokens, {tokens_trained / data:.2f} epochs trained"
    else:
        text += "; training tokens not recorded by these runs (no epoch count)"
    return text


def facts(report: ComparisonReport) -> list[Fact]:
    """What was compared, per measured arm, from what the runs recorded; then every param whose value differs
    between the arms (the config diff)."""
    arms = report.measured_arms
    if not arms:
        return []

    def per_arm(fn: Callable[[RunSeries, RunRow], str]) -> list[str]:
        out = []
        for a in arms:
            texts = list(dict.fromkeys(fn(r.run, r) for r in a.rows))
            out.append(texts[0] if len(texts) == 1 else " / ".join(texts) + " (differs between seeds)")
        return out

    rows = [
        Fact("precision (ran)", [a.precision_text for a in arms]),
        Fact("model", per_arm(lambda run, row: _model_text(run))),
        Fact("vocabulary", per_arm(lambda run, row: _vocab_text(run))),
        Fact("tokens per step", per_arm(lambda run, row: _count_param(run, "train.tokens_per_step"))),
        Fact("tokens per run", per_arm(lambda run, row: f"{human_count(row.final_tokens)} trained of "
                                                         f"{_count_param(run, 'train.max_tokens')} planned")),
        Fact("learning rate", per_arm(lambda run, row: _lr_text(run))),
        Fact("curriculum", per_arm(lambda run, row: run.params.get("curriculum.preset", "null")
                                   if run.params.get("curriculum.preset", "null") != "null" else "custom stages")),
        Fact("data", per_arm(lambda run, row: _data_text(run, row.final_tokens))),
        Fact("card", per_arm(lambda run, row: run.machine)),
    ]
    if any(r.run.tags.get(ATTENTION_KERNELS_TAG) for a in arms for r in a.rows):  # runs that profiled a step
        rows.append(Fact("attention kernels", per_arm(
            lambda run, row: run.tags.get(ATTENTION_KERNELS_TAG) or "not recorded")))
    params: dict[str, list[set[str]]] = {}
    for i, a in enumerate(arms):
        for row in a.rows:
            for k, v in row.run.params.items():
                params.setdefault(k, [set() for _ in arms])[i].add(v)
    for key in sorted(params):
        values = params[key]
        texts = [" / ".join(sorted(v)) if v else "unset" for v in values]
        if key not in PER_RUN_KEYS and len(set(texts)) > 1:
            rows.append(Fact(key, texts))
    return [Fact(f.name, [shown_paths(v) for v in f.values]) for f in rows]


def _count_param(run: RunSeries, key: str) -> str:
    text = run.params.get(key, "")
    return human_count(int(text)) if text.isdigit() else (text or "not recorded")


def overrides_text(report: ComparisonReport) -> str:
    """What each sweep's command line changed on its sweep file (named per sweep when there are several)."""
    return _per_sweep(report, _overrides)


def _overrides(parent: SweepRecord) -> str:
    given = parent.command_overrides
    if given is not None:
        return " ".join(given) if given else "none (the sweep file as it is)"
    base = parent.params.get("sweep.base_overrides", "")
    return ("not recorded separately by this sweep (it predates sweep.command_overrides); the sweep file's and "
            f"the command line's together: {base}" if base else "not recorded")


def _per_sweep(report: ComparisonReport, text: Callable[[SweepRecord], str]) -> str:
    """``text`` of the one sweep, or ``name: text`` per sweep joined by ``; `` when the report compares several
    ("" for none)."""
    if len(report.parents) == 1:
        return text(report.parents[0])
    return "; ".join(f"{p.name}: {text(p)}" for p in report.parents)


# ---------------------------------------------------------------------------------------------------
# Provenance


def display_uri(uri: str) -> str:
    """A local SQLite store as `mlflow ui` takes it from the current folder: relative when under it (a committed
    report's store is in the repository), else as it is, so the command stays exact."""
    if uri.startswith("sqlite:///"):
        try:
            return "sqlite:///" + str(Path(uri.removeprefix("sqlite:///")).resolve().relative_to(Path.cwd().resolve()))
        except (ValueError, OSError):
            return uri
    return uri


def mlflow_link(report: ComparisonReport) -> str:
    """The MLflow UI's page of the sweep (an HTTP store), else the exact command that serves this store."""
    uri = report.tracking_uri
    parent = report.parent  # one sweep: its page; several: their experiment's
    if uri.startswith(("http://", "https://")):
        if parent is not None:
            return f"{uri.rstrip('/')}/#/experiments/{parent.experiment_id}/runs/{parent.run_id}"
        ids = sorted({r.experiment_id for r in report.runs if r.experiment_id})
        return f"{uri.rstrip('/')}/#/experiments/{ids[0]}" if ids else uri
    return f"mlflow ui --backend-store-uri {display_uri(uri)}"


def _versions(runs: list[RunSeries]) -> str:
    def one(tag: str) -> str:
        values = sorted({r.tags[tag] for r in runs if r.tags.get(tag)})
        return " / ".join(values) if values else "not recorded"

    torch = sorted({r.tags.get(TORCH_VERSION_TAG) or r.tags.get(f"{VERSION_TAG_PREFIX}torch", "") for r in runs} - {""})
    return (f"torch {' / '.join(torch) or 'not recorded'}, Transformer Engine "
            f"{one(f'{VERSION_TAG_PREFIX}transformer_engine')}, Python {one(f'{VERSION_TAG_PREFIX}python')}, "
            f"Ray {one(f'{VERSION_TAG_PREFIX}ray')}, MLflow {one(f'{VERSION_TAG_PREFIX}mlflow')}")


def _git(report: ComparisonReport) -> str:
    states = set()
    for r in report.runs:
        sha = r.tags.get(GIT_SHA_TAG)
        if not sha:
            continue
        if r.tags.get(GIT_DIRTY_TAG) == "true":
            diff = r.tags.get(GIT_DIFF_SHA256_TAG)
            states.add(f"{sha} + uncommitted diff " + (f"sha256 {diff[:16]} (artifact provenance/git_diff.patch)"
                                                        if diff else "(its hash was not recorded)"))
        else:
            states.add(f"{sha} (clean)")
    if not states:
        states = {p.git_sha + (" (dirty)" if p.git_dirty == "true" else "") for p in report.parents if p.git_sha}
    return "; ".join(sorted(states)) or "not recorded"


def _run_history(report: ComparisonReport) -> str:
    parts = [_per_sweep(report, _sweep_history)] if report.parents else []
    resumed = [r for r in report.runs if r.tags.get(RESUMED_TAG) == "true" or r.tags.get(RESUMES_TAG)]
    if resumed:
        parts.append("resumed runs: " + ", ".join(
            f"{r.arm} seed {r.replicate}" + (f" ({r.tags[RESUMES_TAG]} resumes)" if r.tags.get(RESUMES_TAG) else "")
            for r in resumed))
    restarted = [r for r in report.runs if r.tags.get(RESTARTS_TAG)]
    if restarted:  # started again by the sweep after a failure (sweep.trial_restarts), e.g. a process that died
        parts.append("restarted after a failure: " + ", ".join(
            f"{r.arm} seed {r.replicate} ({r.tags[RESTARTS_TAG]}; last: {r.tags.get(LAST_RESTART_TAG, '?')})"
            for r in restarted))
    interrupted = [r for r in report.runs if r.tags.get(INTERRUPTIONS_TAG)]
    if interrupted:
        parts.append("interrupted runs: " + ", ".join(f"{r.arm} seed {r.replicate} ({r.tags[INTERRUPTIONS_TAG]})"
                                                      for r in interrupted))
    not_finished = [r for r in report.runs if not r.finished]
    if not_finished:
        parts.append("; ".join(f"{r.arm} seed {r.replicate}: {status_text(r)}" for r in not_finished))
    return "; ".join(parts)


def _sweep_history(parent: SweepRecord) -> str:
    parts = [f"sweep run {parent.status}"]
    for tag, word, last in ((INTERRUPTIONS_TAG, "interruptions", LAST_INTERRUPTION_TAG),
                            (RESUMES_TAG, "resumes", LAST_RESUME_TAG)):
        if parent.tags.get(tag):
            parts.append(f"{parent.tags[tag]} {word}" + (f" (last: {parent.tags[last]})" if parent.tags.get(last) else ""))
    return "; ".join(parts)


def provenance_lines(report: ComparisonReport) -> list[tuple[str, str]]:
    machines = sorted({r.machine for r in report.runs if r.card})
    out = [("card", "; ".join(machines) or "not recorded"), ("software", _versions(report.runs)),
           ("date", _dates(report.runs)), ("code", _git(report)),
           ("budget", (f"{_budgets(report.runs)} tokens per run; " if _budgets(report.runs) else "")
            + f"{human_count(sum(r.final_tokens for r in report.rows))} trained in all ({len(report.runs)} runs)"),
           ("sweep command" if len(report.parents) < 2 else "sweep commands",
            _per_sweep(report, lambda p: p.command or "not recorded by this sweep")),
           ("overrides on the sweep file", overrides_text(report)),
           ("report command", report.compare_command),
           ("MLflow", mlflow_link(report)),
           ("sweep run" if len(report.parents) < 2 else "sweep runs",
            _per_sweep(report, lambda p: f"{p.run_id} (experiment {p.experiment_id})")),
           ("history", _run_history(report))]
    # the MLflow command stays exact; every other machine path is shortened
    return [(k, v if k == "MLflow" else shown_paths(v)) for k, v in out if v]


BF16_EVAL_METHOD = """\
- evaluated in BF16: runs that logged val/bpb_bf16_eval (eval.bf16_eval: an FP8 run's final validation run again
  with FP8 off, its Transformer Engine layers computing in BF16 as a BF16 run's do) have two final numbers for the
  same weights: val/bpb in their training numerics and val/bpb_bf16_eval. A run trained without FP8 has one, its
  val/bpb. "Evaluated in BF16" gaps pair these BF16 numbers by seed (runs that ended at the same tokens), with the
  same t interval, verdict and MDE as val/bpb: a difference there is in the weights, not in the arithmetic that
  evaluates them; the difference column is what the FP8 evaluation adds to the same weights."""
"""The method's paragraph for reports whose runs logged val/bpb_bf16_eval (others read as before it existed)."""

METHOD = """\
- arms and seeds: an arm is a grid point of the sweep; its runs are seed replicates (same initialisation and
  data order per seed in every arm; with data.order_seed set, one data order for every seed). Arm summaries and
  plots use the matched seeds, those every arm with a finished run finished; every other run is listed apart with
  its real status.
- intervals: two-sided 95% Student t. bits/byte and their gaps: arithmetic mean with the t interval. Ratios
  (tokens/s, time to target) and other positive quantities (tokens/s per arm, tokens and seconds to target):
  geometric mean with the t interval of the logs, exponentiated (never negative).
- comparisons: every arm one axis apart from the reference arm, and each FP8 arm vs the non-FP8 arm of its
  precision pair, over the seeds both finished. Per seed: val/bpb gap = arm - reference at the last token count
  both validated at; tokens/s ratio = arm / reference; time ratio = reference seconds / arm seconds to the target.
  Verdict better/worse (faster/slower) when the interval excludes 0 (1 for ratios), else "no difference detected"
  (the data allow every value in the interval, including none); 1 seed: no verdict.
- minimal detectable effect: (t(0.975, n-1) + t(0.80, n-1)) x sd / sqrt(n) for n seed pairs, sd the standard
  deviation of the per-seed differences (of the log ratios for tokens/s, shown as a percent): the smallest true
  effect a paired t test of this design detects with 80% power at 95%.
- noise floor: the seed standard deviation of the reference arm's final val/bpb over every seed it finished.
- {target}. Tokens and seconds to target: the first validation point at or below it, linearly interpolated with
  the point before; seconds are the training clock (val/elapsed_s, validation excluded) minus the compilation and
  warm-up seconds up to that point (train/compile_s, summed over the run's processes: a restarted run compiles
  again), which tokens/s leaves out too. A run that does not reach
  the target is censored at its budget: "reached k/n" counts seeds, means are over those that reached it, and a
  seed where only one arm reached it bounds the speedup by the other arm's whole training time.
- tokens/s and MFU: medians of a run's logged intervals, per GPU; peak memory: the maximum logged.
- curriculum stages (shown when an arm trained more than one): per arm and stage, the matched seeds pooled: the
  tokens trained in it (the stage bounds the run recorded), FLOPs per token = 6 x weight-matmul parameters + 12 x
  layers x hidden x seq_len and the attention term's share, the median tokens/s per GPU of the logging intervals
  wholly inside the stage, and the median share of one profiled step per stage spent in scaled-dot-product
  attention (device time on a GPU, CPU time on CPU; train/attention_share), "not recorded" where a run did not
  profile.
- spikes: the largest gradient norm (loss) of each logging interval > 5x (0.5 nats above) the smaller of its
  trailing and its run median, checked from the end of the LR warm-up (or 5% of the run), detected in training
  and logged as train/spike_* (the spikes tag); "not checked" where the run was too short to check (the
  spike-check tag), "not recorded" for runs from before that tag."""
