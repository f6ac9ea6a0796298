"""The sweep's text tables: the trial plan (--dry-run, the parent run's trials.txt) and the results."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from yxanul.formatting import human_count
from yxanul.sweep.plan import prepare_command
from yxanul.sweep.trials import SweepPlan, override_text, runs_in_process
from yxanul.text import table

__all__ = ["format_plan", "format_rows"]


def _short(text: str, width: int = 48) -> str:
    return text if len(text) <= width else text[:width - 3] + "..."


def format_plan(plan: SweepPlan) -> str:
    """The trial table: index, variant, seed, keys set, resources, placement verdict."""
    spec = plan.spec
    lines = [f"sweep {spec.name}: {len(plan.trials)} trials ({len(plan.runnable)} runnable)"
             + (f" - {spec.description}" if spec.description else ""),
             f"base: {plan.base_path or 'defaults'}"
             + (f" + {' '.join(plan.base_overrides)}" if plan.base_overrides else ""),
             f"metric: {spec.metric} ({spec.mode}); placement checked against {plan.cluster.source}"]
    arms = list(dict.fromkeys(t.arm for t in plan.trials))
    per_trial = sorted({t.cfg.train.max_tokens for t in plan.trials})
    total = sum(t.cfg.train.max_tokens for t in plan.trials)
    runnable = sum(t.cfg.train.max_tokens for t in plan.runnable)
    seed_list = spec.seed_list
    seeds = (f"{len(seed_list)} seed{'s' if len(seed_list) > 1 else ''} ({', '.join(map(str, seed_list))}"
             + (", auto: run one at a time until decided" if spec.seeds == "auto" else ""))
    lines.append(f"{len(arms)} variants x {seeds}; shared by every variant) = {len(plan.trials)} trials; token budget "
                 f"{'/'.join(map(human_count, per_trial))} per trial, {human_count(total)} in all"
                 + (f" ({human_count(runnable)} in the {len(plan.runnable)} runnable here)" if runnable != total else ""))
    target = (f"{spec.target_bpb:g} bits/byte (fixed in the sweep)" if spec.target_bpb is not None
              else "the worst final val/bpb of the reference arm's runs (every reference run reaches it)")
    lines.append(f"reference arm: {plan.reference}; target for time-to-target: {target}")
    if len(seed_list) > 1 and len(arms) > 1:
        lines.append("trials run in the order of the table: seed by seed, the arms rotated by one place per seed "
                     "(no arm always first)")
    inside = sum(runs_in_process(t.cfg, spec.in_process) for t in plan.runnable)
    if plan.runnable:
        lines.append(f"training: {inside} trial(s) in their Tune trial's own process, {len(plan.runnable) - inside} on "
                     f"a Ray Train TorchTrainer each (in_process: {str(spec.in_process).lower()})")
    if spec.scheduler is not None:
        lines.append(f"scheduler: ASHA at tokens {', '.join(human_count(m) for m in plan.milestones)} "
                     f"(keep 1/{spec.scheduler.reduction_factor:g} at each)")
    rows = [("#", "variant", "pair", "keys", "resources", "tokens", "data", "placement")]
    for t in plan.trials:
        sc = t.cfg.scaling
        res = f"{sc.num_workers}x " + (f"GPU {sc.accelerator_type or 'any'}" if sc.use_gpu
                                        else f"{sc.cpus_per_worker:g} CPU")
        keys = " ".join(_short(override_text(k, v)) for k, v in t.keys.items())
        data = "ready" if (Path(t.cfg.data.output_dir) / "manifest.json").is_file() else "missing"
        rows.append((str(t.index), t.label, t.pair, keys, res, human_count(t.cfg.train.max_tokens), data, t.reason))
    lines += table(rows)
    missing = sorted({t.cfg.data.output_dir for t in plan.trials
                      if not (Path(t.cfg.data.output_dir) / "manifest.json").is_file()})
    for folder in missing:
        t = next(t for t in plan.trials if t.cfg.data.output_dir == folder)
        lines.append(f"data missing: {folder}: prepare it with `{prepare_command(plan, t)}`")
    return "\n".join(lines)



def format_rows(rows: list[dict[str, Any]]) -> str:
    if not rows:
        return "(no trials)"
    metric = next(k for k in rows[0] if k not in ("index", "variant", "status", "tokens", "reason", "run_id"))
    rows_text = [("#", "variant", "status", "tokens", metric, "run", "reason")]
    for r in rows:
        value = r[metric]
        rows_text.append((str(r["index"]), r["variant"], r["status"], human_count(r["tokens"]) if r["tokens"] else "",
                      f"{value:.4f}" if value is not None else "", r["run_id"][:12], r["reason"]))
    return "\n".join(table(rows_text))
