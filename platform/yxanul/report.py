"""The comparison report: MLflow runs -> a table (CSV + Markdown), plots (PNG) and one HTML page.

Reads MLflow only (never local side files), so the report is the same wherever the runs were
trained, and it works against the local SQLite store and a remote ``mlflow server`` alike.
Metric names follow the platform's naming contract (step = tokens seen for every metric):
``val/<domain>/loss``, ``val/<domain>/bpb``, ``val/bpb``, ``val/elapsed_s``, ``train/tokens_per_s``,
``train/mfu_bf16``, ``train/mfu_fp8``, ``train/peak_mem_gib``, ``train/elapsed_s``.

How the numbers are made (also printed in the report):

- **Target bits/byte**: by default the worst (highest) final ``val/bpb`` among the runs, so every
  run reaches it; ``target_bpb=`` overrides.
- **Tokens / seconds to target**: the first validation point at or below the target, linearly
  interpolated with the validation point before it: ``t = t0 + (b0 - target) / (b0 - b1) x (t1 - t0)``;
  seconds use the same fraction between the two points' ``val/elapsed_s`` (training clock,
  validation excluded). Reached at the first validation point: that point, no interpolation.
- **tokens/s, MFU**: medians of the logged ``train/tokens_per_s`` / ``train/mfu_*`` (steady state;
  the first, compile-heavy interval does not dominate). **Peak memory**: the maximum logged.
- **Pairs** (same ``yxanul.pair`` tag, differing only in precision): the reference arm is the
  non-FP8 one. *Gap at equal tokens* = arm minus reference, in mean validation loss (nats/token,
  mean over domains) and in ``val/bpb``, at the last token count both arms validated at (the arm's
  curve linearly interpolated at the reference's validation tokens when they differ). *Speedup* =
  arm tokens/s / reference tokens/s; *time-to-target speedup* = reference seconds / arm seconds.
"""

from __future__ import annotations

import base64
import csv
import html
import math
import os
import statistics
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from yxanul.errors import TrackingError

__all__ = ["ComparisonReport", "PairRow", "RunRow", "RunSeries", "build_report", "fetch_runs",
           "interpolate_crossing", "value_at_tokens", "write_report"]

Series = list[tuple[int, float]]
"""(tokens, value) points sorted by tokens."""

PLOTS = ("val_bpb_vs_tokens.png", "val_bpb_vs_seconds.png", "throughput.png")


@dataclass
class RunSeries:
    """One MLflow run as the report needs it."""

    run_id: str
    name: str
    variant: str
    pair: str | None
    precision: str | None
    status: str
    """yxanul.status tag when set (finished, stopped_early, not_runnable, ...), else MLflow's status."""
    reason: str = ""
    """Why the run is not runnable / was stopped (yxanul.reason)."""
    metrics: dict[str, Series] = field(default_factory=dict)

    def series(self, key: str) -> Series:
        return self.metrics.get(key, [])

    @property
    def domains(self) -> list[str]:
        return sorted(k.split("/")[1] for k in self.metrics
                      if k.startswith("val/") and k.endswith("/bpb") and k.count("/") == 2)


@dataclass
class RunRow:
    run: RunSeries
    final_tokens: int | None
    val_bpb: float | None
    domain_loss: dict[str, float]
    domain_bpb: dict[str, float]
    tokens_to_target: float | None
    seconds_to_target: float | None
    tokens_per_s: float | None
    mfu_bf16: float | None
    mfu_fp8: float | None
    peak_mem_gib: float | None
    train_seconds: float | None


@dataclass
class PairRow:
    pair: str
    reference: RunSeries
    arm: RunSeries
    tokens: int | None
    """Tokens at which the gap is measured."""
    loss_gap: float | None
    """arm - reference mean validation loss (nats/token) at ``tokens``."""
    bpb_gap: float | None
    speedup: float | None
    """arm tokens/s / reference tokens/s."""
    time_to_target_speedup: float | None
    """reference seconds to target / arm seconds to target."""


@dataclass
class ComparisonReport:
    title: str
    target_bpb: float | None
    target_source: str
    rows: list[RunRow]
    pairs: list[PairRow]
    skipped: list[RunSeries]
    """Runs without validation metrics (not runnable, failed early): listed with their status."""
    domains: list[str]
    parent_run_id: str | None


# ---------------------------------------------------------------------------------------------------
# Numbers


def interpolate_crossing(points: Series, target: float, clock: Series | None = None) -> tuple[float | None, float | None]:
    """(tokens, seconds) at which a decreasing-is-better curve first reaches ``target``.

    Linear interpolation between the first point at or below the target and the point before it
    (none before: that point itself). ``clock`` holds the training seconds at the same tokens
    (``val/elapsed_s``); seconds use the same fraction. (None, None) when never reached.
    """
    seconds_at = dict(clock or [])
    for i, (tokens, value) in enumerate(points):
        if value <= target:
            if i == 0 or points[i - 1][1] == value:
                return float(tokens), seconds_at.get(tokens)
            t0, v0 = points[i - 1]
            frac = (v0 - target) / (v0 - value)
            at_tokens = t0 + frac * (tokens - t0)
            s0, s1 = seconds_at.get(t0), seconds_at.get(tokens)
            seconds = s0 + frac * (s1 - s0) if s0 is not None and s1 is not None else None
            return at_tokens, seconds
    return None, None


def value_at_tokens(points: Series, tokens: float) -> float | None:
    """The curve's value at ``tokens``: exact at a point, linear between points, None outside."""
    for i, (t, v) in enumerate(points):
        if t == tokens:
            return v
        if t > tokens:
            if i == 0:
                return None
            t0, v0 = points[i - 1]
            return v0 + (tokens - t0) / (t - t0) * (v - v0)
    return None


def _median(points: Series) -> float | None:
    values = [v for _, v in points if math.isfinite(v)]
    return statistics.median(values) if values else None


def _last(points: Series) -> float | None:
    return points[-1][1] if points else None


def _mean_loss(run: RunSeries) -> Series:
    """Mean over domains of val/<domain>/loss at the tokens where every domain has a value."""
    per = [dict(run.series(f"val/{d}/loss")) for d in run.domains]
    if not per or not all(per):
        return []
    common = sorted(set.intersection(*(set(p) for p in per)))
    return [(t, sum(p[t] for p in per) / len(per)) for t in common]


def build_report(runs: Sequence[RunSeries], title: str, target_bpb: float | None = None,
                 parent_run_id: str | None = None) -> ComparisonReport:
    """Compute every number of the report from the runs' metric series."""
    measured = [r for r in runs if r.series("val/bpb")]
    skipped = [r for r in runs if not r.series("val/bpb")]
    if target_bpb is None and measured:
        # Runs cut early by the scheduler would make the target trivially easy: leave them out.
        full = [r for r in measured if r.status != "stopped_early"] or measured
        target_bpb = max(_last(r.series("val/bpb")) for r in full)
        source = "worst final val/bpb among the runs" + (" trained to the end" if len(full) < len(measured) else "")
    else:
        source = "given" if target_bpb is not None else "no run has val/bpb"
    domains = sorted({d for r in measured for d in r.domains})
    rows = []
    for run in measured:
        bpb = run.series("val/bpb")
        tokens, seconds = (interpolate_crossing(bpb, target_bpb, run.series("val/elapsed_s"))
                           if target_bpb is not None else (None, None))
        peak = run.series("train/peak_mem_gib")
        rows.append(RunRow(
            run=run, final_tokens=bpb[-1][0], val_bpb=bpb[-1][1],
            domain_loss={d: v for d in run.domains if (v := _last(run.series(f"val/{d}/loss"))) is not None},
            domain_bpb={d: v for d in run.domains if (v := _last(run.series(f"val/{d}/bpb"))) is not None},
            tokens_to_target=tokens, seconds_to_target=seconds,
            tokens_per_s=_median(run.series("train/tokens_per_s")),
            mfu_bf16=_median(run.series("train/mfu_bf16")), mfu_fp8=_median(run.series("train/mfu_fp8")),
            peak_mem_gib=max(v for _, v in peak) if peak else None,
            train_seconds=_last(run.series("train/elapsed_s"))))
    by_id = {row.run.run_id: row for row in rows}
    pairs = []
    groups: dict[str, list[RunSeries]] = {}
    for run in measured:
        if run.pair is not None:
            groups.setdefault(run.pair, []).append(run)
    for pair, members in sorted(groups.items()):
        if len(members) < 2:
            continue
        ref = next((m for m in members if m.precision != "fp8"), members[0])
        for arm in members:
            if arm is ref:
                continue
            pairs.append(_pair_row(pair, ref, arm, by_id[ref.run_id], by_id[arm.run_id]))
    return ComparisonReport(title, target_bpb, source, rows, pairs, skipped, domains, parent_run_id)


def _pair_row(pair: str, ref: RunSeries, arm: RunSeries, ref_row: RunRow, arm_row: RunRow) -> PairRow:
    ref_loss, arm_loss = _mean_loss(ref), _mean_loss(arm)
    ref_bpb, arm_bpb = ref.series("val/bpb"), arm.series("val/bpb")
    # The last reference validation point the arm's curve also covers.
    limit = min(ref_bpb[-1][0], arm_bpb[-1][0])
    candidates = [t for t, _ in ref_bpb if t <= limit]
    tokens = candidates[-1] if candidates else None

    def gap(a: Series, r: Series) -> float | None:
        if tokens is None:
            return None
        va, vr = value_at_tokens(a, tokens), value_at_tokens(r, tokens)
        return va - vr if va is not None and vr is not None else None

    speed = (arm_row.tokens_per_s / ref_row.tokens_per_s
             if arm_row.tokens_per_s and ref_row.tokens_per_s else None)
    time_speed = (ref_row.seconds_to_target / arm_row.seconds_to_target
                  if ref_row.seconds_to_target and arm_row.seconds_to_target else None)
    return PairRow(pair, ref, arm, tokens, gap(arm_loss, ref_loss), gap(arm_bpb, ref_bpb), speed, time_speed)


# ---------------------------------------------------------------------------------------------------
# MLflow


def _client(tracking_uri: str):
    from mlflow.tracking import MlflowClient

    from yxanul.tracking import _check_http

    if tracking_uri.startswith(("http://", "https://")):
        _check_http(tracking_uri, timeout_s=10.0)  # fail in seconds, not after MLflow's retries
    elif tracking_uri.startswith("sqlite:///") and not Path(tracking_uri.removeprefix("sqlite://")).is_file():
        raise TrackingError(f"no MLflow store at {tracking_uri} (the file does not exist); check --tracking-uri")
    try:
        client = MlflowClient(tracking_uri=tracking_uri)
        client.search_experiments(max_results=1)
    except Exception as exc:  # MLflow raises many types (MlflowException, OperationalError, requests errors)
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise TrackingError(f"cannot read the MLflow tracking store {tracking_uri}: {first}") from None
    return client


def _run_series(client: Any, run: Any) -> RunSeries:
    tags, params = run.data.tags, run.data.params
    wanted = [k for k in run.data.metrics if k.startswith("val/") or k in (
        "train/tokens_per_s", "train/mfu_bf16", "train/mfu_fp8", "train/peak_mem_gib", "train/elapsed_s")]
    metrics: dict[str, Series] = {}
    for key in wanted:
        history = client.get_metric_history(run.info.run_id, key)
        points: dict[int, float] = {}
        for m in sorted(history, key=lambda m: (m.step, m.timestamp)):
            points[int(m.step)] = float(m.value)  # a step logged twice (after a restart): the latest wins
        metrics[key] = sorted(points.items())
    return RunSeries(
        run_id=run.info.run_id, name=run.info.run_name or run.info.run_id,
        variant=tags.get("yxanul.variant") or run.info.run_name or run.info.run_id,
        pair=tags.get("yxanul.pair"), precision=params.get("precision.mode"),
        status=tags.get("yxanul.status") or run.info.status.lower(), reason=tags.get("yxanul.reason", ""),
        metrics=metrics)


def fetch_runs(tracking_uri: str, *, sweep: str | None = None,
               experiment: str | None = None) -> tuple[list[RunSeries], str | None, str]:
    """Runs of a sweep (children of its latest parent run) or of an experiment.

    Returns (runs, parent run id or None, title). Raises TrackingError when nothing matches.
    """
    if (sweep is None) == (experiment is None):
        raise TrackingError("give exactly one of --sweep NAME or --experiment NAME")
    client = _client(tracking_uri)
    parent_id: str | None = None
    if sweep is not None:
        experiment_ids = [e.experiment_id for e in client.search_experiments()]
        quoted = sweep.replace("'", "\\'")
        found = client.search_runs(experiment_ids, filter_string=f"tags.`yxanul.sweep` = '{quoted}'",
                                   order_by=["attributes.start_time DESC"], max_results=5000)
        parents = [r for r in found if "mlflow.parentRunId" not in r.data.tags]
        if not parents:
            raise TrackingError(f"no sweep named {sweep!r} in {tracking_uri} "
                                "(no run tagged yxanul.sweep without a parent); check the name and --tracking-uri")
        parent = parents[0]  # the latest run of this sweep name
        parent_id = parent.info.run_id
        children = [r for r in found if r.data.tags.get("mlflow.parentRunId") == parent_id]
        title = f"sweep {sweep}"
    else:
        exp = client.get_experiment_by_name(experiment)
        if exp is None:
            names = [e.name for e in client.search_experiments()]
            raise TrackingError(f"no MLflow experiment named {experiment!r}; experiments: {', '.join(names) or 'none'}")
        found = client.search_runs([exp.experiment_id], order_by=["attributes.start_time ASC"], max_results=5000)
        has_children = {r.data.tags.get("mlflow.parentRunId") for r in found}
        children = [r for r in found if r.info.run_id not in has_children]
        parents = {r.data.tags.get("mlflow.parentRunId") for r in children} - {None}
        parent_id = parents.pop() if len(parents) == 1 else None
        title = f"experiment {experiment}"
    if not children:
        raise TrackingError(f"{title} has no runs to compare")
    children.sort(key=lambda r: (r.info.start_time or 0, r.info.run_name or ""))
    return [_run_series(client, r) for r in children], parent_id, title


# ---------------------------------------------------------------------------------------------------
# Writing


def _num(value: float | None, digits: int = 4, raw: bool = False) -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return ""
    if raw:  # CSV: full precision
        return str(int(value)) if isinstance(value, int) or float(value).is_integer() else repr(float(value))
    if isinstance(value, int) or float(value).is_integer() and abs(value) >= 1000:
        return str(int(value))
    return f"{value:.{digits}g}"


def _run_table(report: ComparisonReport, raw: bool = False) -> tuple[list[str], list[list[str]]]:
    head = ["variant", "precision", "status", "tokens", "val_bpb"]
    for d in report.domains:
        head += [f"val_{d}_loss", f"val_{d}_bpb"]
    head += ["tokens_to_target", "seconds_to_target", "tokens_per_s", "mfu_bf16", "mfu_fp8", "peak_mem_gib",
             "train_seconds", "run_id"]
    body = []
    for row in report.rows:
        cells = [row.run.variant, row.run.precision or "", row.run.status, _num(row.final_tokens, raw=raw),
                 _num(row.val_bpb, raw=raw)]
        for d in report.domains:
            cells += [_num(row.domain_loss.get(d), raw=raw), _num(row.domain_bpb.get(d), raw=raw)]
        cells += [_num(row.tokens_to_target, 6, raw), _num(row.seconds_to_target, raw=raw),
                  _num(row.tokens_per_s, raw=raw), _num(row.mfu_bf16, 3, raw), _num(row.mfu_fp8, 3, raw),
                  _num(row.peak_mem_gib, 3, raw), _num(row.train_seconds, raw=raw), row.run.run_id]
        body.append(cells)
    return head, body


def _pair_table(report: ComparisonReport, raw: bool = False) -> tuple[list[str], list[list[str]]]:
    head = ["pair", "arm", "reference", "at_tokens", "loss_gap", "bpb_gap", "speedup_tokens_per_s",
            "speedup_time_to_target"]
    body = [[p.pair or "(all)", p.arm.variant, p.reference.variant, _num(p.tokens, raw=raw),
             _num(p.loss_gap, raw=raw), _num(p.bpb_gap, raw=raw), _num(p.speedup, raw=raw),
             _num(p.time_to_target_speedup, raw=raw)] for p in report.pairs]
    return head, body


def _md_table(head: list[str], body: list[list[str]]) -> str:
    def esc(c: str) -> str:
        return c.replace("|", "\\|")
    lines = ["| " + " | ".join(head) + " |", "|" + "|".join("---" for _ in head) + "|"]
    lines += ["| " + " | ".join(esc(c) for c in row) + " |" for row in body]
    return "\n".join(lines)


METHOD = """\
- target bits/byte: {target}.
- tokens/seconds to target: first validation point at or below the target, linearly interpolated with the
  validation point before it (seconds: same fraction of the training clock `val/elapsed_s`, validation excluded).
- tokens/s and MFU: medians of the logged values; peak memory: maximum logged.
- pairs (same `yxanul.pair`): reference = the non-FP8 arm; gap = arm - reference at the last token count both
  validated at (mean validation loss over domains in nats/token, and val/bpb); speedup = arm tokens/s /
  reference tokens/s; time-to-target speedup = reference seconds / arm seconds."""


def _markdown(report: ComparisonReport) -> str:
    target = (f"{report.target_bpb:.4f} bits/byte ({report.target_source})" if report.target_bpb is not None
              else report.target_source)
    parts = [f"# Comparison: {report.title}", "", "## Runs", "", _md_table(*_run_table(report)), ""]
    if report.pairs:
        parts += ["## FP8 / BF16 pairs", "", _md_table(*_pair_table(report)), ""]
    if report.skipped:
        parts += ["## Runs without validation results", "",
                  _md_table(["variant", "status", "reason", "run_id"],
                            [[r.variant, r.status, r.reason, r.run_id] for r in report.skipped]), ""]
    parts += ["## How the numbers are made", "", METHOD.format(target=target), ""]
    return "\n".join(parts)


def _plots(report: ComparisonReport, out: Path) -> list[Path]:
    """Write the PNGs with matplotlib's object API (no pyplot, no global backend state)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    paths = []
    for name, xkey, xlabel in (("val_bpb_vs_tokens.png", None, "training tokens"),
                               ("val_bpb_vs_seconds.png", "val/elapsed_s", "training seconds (validation excluded)")):
        fig = Figure(figsize=(7, 4.5), dpi=100)
        FigureCanvasAgg(fig)
        ax = fig.add_subplot()
        for row in report.rows:
            bpb = row.run.series("val/bpb")
            if xkey is None:
                xs, ys = [t for t, _ in bpb], [v for _, v in bpb]
            else:
                clock = dict(row.run.series(xkey))
                pts = [(clock[t], v) for t, v in bpb if t in clock]
                xs, ys = [x for x, _ in pts], [y for _, y in pts]
            ax.plot(xs, ys, marker="o", markersize=3, label=row.run.variant)
        if report.target_bpb is not None:
            ax.axhline(report.target_bpb, color="grey", linestyle="--", linewidth=1, label="target")
        ax.set_xlabel(xlabel)
        ax.set_ylabel("validation bits/byte (mean over domains)")
        ax.grid(alpha=0.3)
        if report.rows:
            ax.legend(fontsize=7)
        fig.tight_layout()
        fig.savefig(out / name)
        paths.append(out / name)
    fig = Figure(figsize=(7, max(2.5, 0.45 * len(report.rows) + 1.2)), dpi=100)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    labels = [row.run.variant for row in report.rows]
    values = [row.tokens_per_s or 0.0 for row in report.rows]
    ax.barh(range(len(labels)), values, color="tab:blue")
    ax.set_yticks(range(len(labels)), labels, fontsize=7)
    ax.set_xlabel("training tokens/s (median of logged intervals)")
    ax.grid(axis="x", alpha=0.3)
    fig.tight_layout()
    fig.savefig(out / "throughput.png")
    paths.append(out / "throughput.png")
    return paths


def _html(report: ComparisonReport, markdown_method: str, plots: list[Path]) -> str:
    def table(head: list[str], body: list[list[str]]) -> str:
        rows = "".join("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in r) + "</tr>" for r in body)
        return ("<table><thead><tr>" + "".join(f"<th>{html.escape(h)}</th>" for h in head)
                + f"</tr></thead><tbody>{rows}</tbody></table>")

    parts = [f"<h1>Comparison: {html.escape(report.title)}</h1>", "<h2>Runs</h2>", table(*_run_table(report))]
    if report.pairs:
        parts += ["<h2>FP8 / BF16 pairs</h2>", table(*_pair_table(report))]
    if report.skipped:
        parts += ["<h2>Runs without validation results</h2>",
                  table(["variant", "status", "reason", "run_id"],
                        [[r.variant, r.status, r.reason, r.run_id] for r in report.skipped])]
    parts.append("<h2>Plots</h2>")
    for path in plots:
        data = base64.b64encode(path.read_bytes()).decode()
        parts.append(f'<figure><img alt="{html.escape(path.stem)}" src="data:image/png;base64,{data}">'
                     f"<figcaption>{html.escape(path.stem.replace('_', ' '))}</figcaption></figure>")
    parts += ["<h2>How the numbers are made</h2>",
              "<ul>" + "".join(f"<li>{html.escape(line.lstrip('- ').strip())}</li>"
                               for line in markdown_method.split("\n- ")) + "</ul>"]
    style = ("body{font-family:sans-serif;margin:2em;max-width:110em}table{border-collapse:collapse;font-size:12px}"
             "td,th{border:1px solid #ccc;padding:3px 6px;text-align:right}th{background:#f0f0f0}"
             "td:first-child{text-align:left}img{max-width:100%}")
    return (f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(report.title)}</title>"
            f"<style>{style}</style></head><body>{''.join(parts)}</body></html>\n")


def write_report(report: ComparisonReport, out_dir: str | Path) -> list[Path]:
    """Write comparison.csv, pairs.csv, comparison.md, the PNGs and report.html into ``out_dir``.

    Everything is written to a temporary folder beside ``out_dir`` first and moved into place file by
    file only when all of it succeeded, so a failure never leaves a half-written report.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=out, prefix=".report-") as tmp_name:
        tmp = Path(tmp_name)
        head, body = _run_table(report, raw=True)
        with open(tmp / "comparison.csv", "w", newline="") as fh:
            writer = csv.writer(fh)
            writer.writerow(head)
            writer.writerows(body)
        head, body = _pair_table(report, raw=True)
        with open(tmp / "pairs.csv", "w", newline="") as fh:
            writer = csv.writer(fh)
            writer.writerow(head)
            writer.writerows(body)
        (tmp / "comparison.md").write_text(_markdown(report))
        plots = _plots(report, tmp)
        target = (f"{report.target_bpb:.4f} bits/byte ({report.target_source})" if report.target_bpb is not None
                  else report.target_source)
        (tmp / "report.html").write_text(_html(report, METHOD.format(target=target), plots))
        names = ["comparison.csv", "pairs.csv", "comparison.md", *PLOTS, "report.html"]
        for name in names:
            os.replace(tmp / name, out / name)
    return [out / name for name in names]


def log_report(tracking_uri: str, parent_run_id: str, files: Sequence[Path]) -> None:
    """Attach the report files to the sweep's parent run (artifact folder ``comparison/``)."""
    client = _client(tracking_uri)
    try:
        for path in files:
            client.log_artifact(parent_run_id, str(path), artifact_path="comparison")
    except Exception as exc:  # MLflow raises many types; the report files are already written
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise TrackingError(f"the report was written, but logging it to MLflow run {parent_run_id} at {tracking_uri} "
                            f"failed: {first} (use --no-log to skip)") from None


def format_summary(report: ComparisonReport) -> str:
    """A short fixed-width table for the console."""
    head = ["variant", "status", "tokens", "val_bpb", "tokens_to_target", "tokens_per_s"]
    body = [[r.run.variant, r.run.status, _num(r.final_tokens), _num(r.val_bpb), _num(r.tokens_to_target, 6),
             _num(r.tokens_per_s)] for r in report.rows]
    body += [[r.variant, r.reason or r.status, "", "", "", ""] for r in report.skipped]
    widths = [max(len(h), *(len(b[i]) for b in body)) if body else len(h) for i, h in enumerate(head)]
    lines = ["  ".join(c.ljust(w) for c, w in zip(head, widths))]
    lines += ["  ".join(c.ljust(w) for c, w in zip(row, widths)) for row in body]
    if report.target_bpb is not None:
        lines.append(f"target: {report.target_bpb:.4f} bits/byte ({report.target_source})")
    for p in report.pairs:
        lines.append(f"pair {p.pair}: {p.arm.variant} vs {p.reference.variant}: loss gap {_num(p.loss_gap)} nats "
                     f"at {_num(p.tokens)} tokens, speedup {_num(p.speedup)}x tokens/s")
    return "\n".join(lines)
