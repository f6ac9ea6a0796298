"""The report's figures (matplotlib's object API: no pyplot, no global backend state).

Per-seed lines under each arm's mean and min-max band, a paired-difference panel, training loss and gradient
norm with spikes marked, the target and the unigram baseline as reference lines, tokens in millions and
seconds without offset notation, 10-pt legends, one colour per arm in every figure. Matched seeds only.
"""

from __future__ import annotations

import math
import statistics
from pathlib import Path
from typing import Any

from yxanul.report.analysis import ArmSummary, ComparisonReport, training_clock, value_at_tokens
from yxanul.report.runs import grad_norm_series, run_spikes
from yxanul.report.words import arm_names
from yxanul.stats import LEVEL, t_quantile

__all__ = ["PLOTS", "arm_colours", "write_plots"]

PLOTS = ("val_bpb_vs_tokens.png", "val_bpb_vs_seconds.png", "paired_difference.png", "train_loss.png",
         "grad_norm.png", "throughput.png")
"""File names, in page order (two per row)."""

FONT_PT = 10
"""Legend, tick and label size: readable where the page shows the figure at half its width."""
_SIZE = (5.8, 4.0)  # inches at 100 dpi: 580 px, about the width of one of two columns of the page


def arm_colours(report: ComparisonReport) -> dict[str, Any]:
    """One colour per arm, the same in every figure (matplotlib's tab10 in the report's arm order)."""
    from matplotlib import colormaps

    cmap = colormaps["tab10"]
    return {a.arm: cmap(i % 10) for i, a in enumerate(report.arms)}


def _figure(height: float = _SIZE[1]) -> tuple[Any, Any]:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(_SIZE[0], height), dpi=100)
    FigureCanvasAgg(fig)
    return fig, fig.add_subplot()


def _plain_axes(ax: Any, xlabel: str, ylabel: str, title: str, axes: str = "xy") -> None:
    """No offset or scientific notation on the numeric axes (a reader sees 2.6, not 1e7 + 0.3, and 0.6, not
    6 x 10^-1 on a log scale)."""
    from matplotlib.ticker import FuncFormatter, NullFormatter, ScalarFormatter

    for name in axes:
        axis = ax.xaxis if name == "x" else ax.yaxis
        if axis.get_scale() == "linear":
            formatter = ScalarFormatter(useOffset=False)
            formatter.set_scientific(False)
            axis.set_major_formatter(formatter)
        else:
            axis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
            axis.set_minor_formatter(NullFormatter())
    ax.set_xlabel(xlabel, fontsize=FONT_PT)
    ax.set_ylabel(ylabel, fontsize=FONT_PT)
    ax.set_title(title, fontsize=FONT_PT)
    ax.tick_params(labelsize=FONT_PT)
    ax.grid(alpha=0.3)


def _legend(ax: Any) -> None:
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=FONT_PT, framealpha=0.85)


def _save(fig: Any, path: Path) -> Path:
    fig.tight_layout()
    fig.savefig(path)
    return path


def _label(arm: ArmSummary) -> str:
    n = len(arm.rows)
    return f"{arm.arm} ({n} seed{'s' if n != 1 else ''})"


def _reference_lines(report: ComparisonReport, ax: Any) -> None:
    if report.target_bpb is not None:
        ax.axhline(report.target_bpb, color="grey", linestyle="--", linewidth=1, label="target")
    for i, value in enumerate(report.unigram_bpb):
        ax.axhline(value, color="black", linestyle=":", linewidth=1.2, label="unigram baseline" if i == 0 else None)


def _curves(report: ComparisonReport, colours: dict[str, Any], out: Path, seconds_axis: bool) -> Path:
    fig, ax = _figure()
    for arm in report.measured_arms:
        colour = colours[arm.arm]
        curves = []
        for row in arm.rows:
            bpb = dict(row.run.series("val/bpb"))
            clock = dict(training_clock(row.run)) if seconds_axis else {t: t / 1e6 for t in bpb}
            points = [(clock[t], v) for t, v in sorted(bpb.items()) if t in clock]
            curves.append((bpb, clock))
            if points:
                ax.plot(*zip(*points), color=colour, linewidth=0.8, alpha=0.45)
        common = sorted(set.intersection(*(set(b) & set(c) for b, c in curves))) if curves else []
        if not common:
            continue
        xs = [statistics.fmean(c[t] for _, c in curves) for t in common]
        values = [[b[t] for b, _ in curves] for t in common]
        ax.plot(xs, [statistics.fmean(v) for v in values], color=colour, marker="o", markersize=3, linewidth=2,
                label=_label(arm))
        if len(curves) > 1:
            ax.fill_between(xs, [min(v) for v in values], [max(v) for v in values], color=colour, alpha=0.15,
                            linewidth=0)
    _reference_lines(report, ax)
    _plain_axes(ax, "training seconds (validation and compilation excluded)" if seconds_axis
                else "training tokens (M)", "validation bits/byte (mean over domains)",
                "thin: each seed; bold: mean; band: min-max across seeds")
    _legend(ax)
    return _save(fig, out / ("val_bpb_vs_seconds.png" if seconds_axis else "val_bpb_vs_tokens.png"))


def _paired(report: ComparisonReport, colours: dict[str, Any], out: Path) -> Path:
    """arm - reference val/bpb per seed at every validation point both have; mean and 95% t interval."""
    fig, ax = _figure()
    for c in report.comparisons:
        if not c.pairs:
            continue
        _, _, _, arm, ref = arm_names(c)
        colour = colours[c.arm.arm]
        gaps: dict[int, list[float]] = {}
        for p in c.pairs:
            ref_bpb, arm_bpb = p.reference.run.series("val/bpb"), dict(p.arm.run.series("val/bpb"))
            points = [(t, arm_bpb[t] - v) for t, v in ref_bpb if t in arm_bpb]
            if not points:  # different validation points: the arm's curve at the reference's tokens
                points = [(t, a - v) for t, v in ref_bpb if (a := value_at_tokens(list(arm_bpb.items()), t)) is not None]
            for t, g in points:
                gaps.setdefault(t, []).append(g)
            if points:
                ax.plot([t / 1e6 for t, _ in points], [g for _, g in points], color=colour, linewidth=0.8, alpha=0.45)
        full = sorted(t for t, g in gaps.items() if len(g) == len(c.pairs))
        if not full:
            continue
        xs = [t / 1e6 for t in full]
        means = [statistics.fmean(gaps[t]) for t in full]
        ax.plot(xs, means, color=colour, linewidth=2, marker="o", markersize=3, label=f"{arm} - {ref} ({c.n} seeds)")
        if c.n > 1:
            t_crit = t_quantile(0.5 + LEVEL / 2, c.n - 1)
            half = [t_crit * statistics.stdev(gaps[t]) / math.sqrt(c.n) for t in full]
            ax.fill_between(xs, [m - h for m, h in zip(means, half)], [m + h for m, h in zip(means, half)],
                            color=colour, alpha=0.15, linewidth=0)
    ax.axhline(0.0, color="black", linewidth=1)
    _plain_axes(ax, "training tokens (M)", "val/bpb gap, arm - reference (lower: arm better)",
                f"thin: each seed; bold: mean; band: {LEVEL:.0%} t interval")
    _legend(ax)
    return _save(fig, out / "paired_difference.png")


def _training(report: ComparisonReport, colours: dict[str, Any], out: Path, grad: bool) -> Path:
    fig, ax = _figure()
    kind = "grad_norm" if grad else "loss"
    marked = False
    for arm in report.measured_arms:
        colour = colours[arm.arm]
        for i, row in enumerate(arm.rows):
            series = grad_norm_series(row.run) if grad else row.run.series("train/loss")
            if not series:
                continue
            ax.plot([t / 1e6 for t, _ in series], [v for _, v in series], color=colour, linewidth=0.9, alpha=0.75,
                    label=_label(arm) if i == 0 else None)
            values = dict(series)
            spikes = [s for s in run_spikes(row.run) if s.kind == kind and s.tokens in values]
            if spikes:
                ax.plot([s.tokens / 1e6 for s in spikes], [values[s.tokens] for s in spikes], linestyle="none",
                        marker="x", markersize=9, markeredgewidth=2, color="red",
                        label=None if marked else "spike")
                marked = True
    if grad:
        ax.set_yscale("log")
    _plain_axes(ax, "training tokens (M)", "gradient norm (log scale)" if grad else "training loss (nats/token)",
                "each line one seed; x: spike flagged in training")
    _legend(ax)
    return _save(fig, out / ("grad_norm.png" if grad else "train_loss.png"))


def _throughput(report: ComparisonReport, colours: dict[str, Any], out: Path) -> Path:
    import textwrap

    arms = report.measured_arms
    fig, ax = _figure(max(2.6, 0.6 * len(arms) + 1.6))
    for i, arm in enumerate(arms):
        rates = [r.tokens_per_s / 1e3 for r in arm.rows if r.tokens_per_s]
        est = arm.tokens_per_s
        if est is None:
            continue
        colour = colours[arm.arm]
        ax.barh(i, est.mean / 1e3, color=colour, alpha=0.45)
        if est.low is not None and est.high is not None:
            ax.errorbar(est.mean / 1e3, i, xerr=[[(est.mean - est.low) / 1e3], [(est.high - est.mean) / 1e3]],
                        color="black", capsize=4)
        ax.plot(rates, [i] * len(rates), linestyle="none", marker="o", color=colour, markeredgecolor="black")
    ax.set_yticks(range(len(arms)), ["\n".join(textwrap.wrap(_label(a), 24, break_on_hyphens=False)) for a in arms],
                  fontsize=FONT_PT)
    ax.invert_yaxis()  # the first arm on top, as in the tables
    _plain_axes(ax, "training tokens/s per GPU (thousands)", "", f"bar: geometric mean; whisker: {LEVEL:.0%} "
                "interval; dots: seeds", axes="x")
    ax.set_xlim(left=0)
    return _save(fig, out / "throughput.png")


def write_plots(report: ComparisonReport, out: Path) -> list[Path]:
    """Every figure of :data:`PLOTS` into ``out``, in that order."""
    colours = arm_colours(report)
    return [_curves(report, colours, out, seconds_axis=False), _curves(report, colours, out, seconds_axis=True),
            _paired(report, colours, out), _training(report, colours, out, grad=False),
            _training(report, colours, out, grad=True), _throughput(report, colours, out)]
