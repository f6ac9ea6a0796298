"""The report's files and its console view: CSV (full precision), Markdown, the PNGs and one HTML page, all from
the same tables and sentences, so every view formats a number the same way."""

from __future__ import annotations

import base64
import csv
import html
import os
import tempfile
from collections.abc import Sequence
from pathlib import Path

from yxanul.errors import TrackingError, first_line
from yxanul.report.analysis import ComparisonReport
from yxanul.report.plots import PLOTS, write_plots
from yxanul.report.tables import Table, arms_csv, comparisons_csv, pairs_csv, runs_csv, stages_csv, tables
from yxanul.report.words import (
    BF16_EVAL_METHOD,
    METHOD,
    design_lines,
    headline,
    provenance_lines,
    target_text,
    title,
    warnings,
)
from yxanul.text import table as text_table

__all__ = ["FILES", "format_summary", "log_report", "write_report"]

CSV_FILES = ("comparison.csv", "arms.csv", "comparisons.csv", "pairs.csv", "stages.csv")
FILES = (*CSV_FILES, "comparison.md", *PLOTS, "report.html")
"""Everything :func:`write_report` writes, report.html last."""


def _subtitle(report: ComparisonReport) -> str:
    return f"The sweep file says: {report.description}" if report.description else ""


# ---------------------------------------------------------------------------------------------------
# Markdown and console


def _md_table(t: Table) -> str:
    def esc(c: str) -> str:
        return c.replace("|", "\\|")
    lines = ["| " + " | ".join(esc(h) for h in t.head) + " |", "|" + "|".join("---" for _ in t.head) + "|"]
    lines += ["| " + " | ".join(esc(c) for c in row) + " |" for row in t.body]
    return "\n".join(lines)


def _method(report: ComparisonReport) -> str:
    return METHOD.format(target=target_text(report)) + ("\n" + BF16_EVAL_METHOD if report.bf16_eval else "")


def markdown(report: ComparisonReport) -> str:
    parts = [f"# {title(report)}", ""]
    if report.description:
        parts += [f"*{_subtitle(report)}*", ""]
    for w in warnings(report):
        parts += [f"> **Warning:** {w}", ""]
    if report.comparisons:
        parts += ["**Answer:**", ""] + [f"- {headline(report, c)}" for c in report.comparisons] + [""]
    parts += ["**Design:**", ""] + [f"- {line}" for line in design_lines(report)] + [""]
    for t in tables(report):
        parts += [f"## {t.title}", ""] + ([f"*{t.note}*", ""] if t.note else []) + [_md_table(t), ""]
    parts += ["## Provenance", "", *(f"- {k}: {v}" for k, v in provenance_lines(report)), ""]
    parts += ["## How the numbers are made", "", _method(report), ""]
    return "\n".join(parts)


CONSOLE_TABLES = ("arms", "arms_bf16", "arms_speed", "stages", "run_ids")


def format_summary(report: ComparisonReport) -> str:
    """The console view: title, warnings, one sentence per comparison, the design, the per-seed tables, the arm
    tables and every run's status, formatted as on the page."""
    lines = [title(report)]
    if report.description:
        lines.append(_subtitle(report))
    lines += [f"warning: {w}" for w in warnings(report)]
    lines += [headline(report, c) for c in report.comparisons]
    lines += design_lines(report)
    for t in tables(report):
        if t.key in CONSOLE_TABLES or t.key.startswith("seeds_"):
            lines += ["", t.title + ":", *text_table([t.head, *t.body])]
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------------
# HTML

_STYLE = """
body{font-family:sans-serif;margin:1.5em auto;max-width:72em;padding:0 1em;line-height:1.4;color:#222}
h1{font-size:1.5em;margin-bottom:.2em}.subtitle{color:#555;margin-top:0}
table{border-collapse:collapse;font-size:12.5px;max-width:100%}
td,th{border:1px solid #ccc;padding:3px 6px;text-align:right;white-space:nowrap;vertical-align:top}
th{background:#f0f0f0;white-space:normal}
td.text,th.text{text-align:left;white-space:normal;overflow-wrap:anywhere}
.tbl{max-width:100%;overflow-x:auto;margin:.3em 0 1em}
.note{color:#555;font-size:12px;margin:.2em 0}
.warning{background:#fff4d6;border-left:4px solid #e0a000;padding:.4em .8em;margin:.4em 0}
.verdict{margin:.5em 0}
.plots{display:grid;grid-template-columns:1fr 1fr;gap:14px}
.plots figure{margin:0}.plots img{width:100%;height:auto}
figcaption{font-size:12px;color:#555}
dl.prov{display:grid;grid-template-columns:max-content minmax(0,1fr);gap:2px 12px;font-size:13px}
dl.prov dt{color:#555}dl.prov dd{margin:0;overflow-wrap:anywhere}
summary{cursor:pointer;margin:.6em 0;font-weight:bold}
code{font-size:12px}
"""


def _html_table(t: Table) -> str:
    e = html.escape

    def cell(tag: str, i: int, text: str) -> str:
        cls = " class='text'" if i in t.text_columns else ""
        return f"<{tag}{cls}>{e(text)}</{tag}>"

    head = "".join(cell("th", i, h) for i, h in enumerate(t.head))
    body = "".join("<tr>" + "".join(cell("td", i, c) for i, c in enumerate(row)) + "</tr>" for row in t.body)
    note = f"<p class='note'>{e(t.note)}</p>" if t.note else ""
    return f"{note}<div class='tbl'><table id='{t.key}'><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table></div>"


def render_html(report: ComparisonReport, plots: Sequence[Path]) -> str:
    e = html.escape
    page_title = title(report)
    parts = [f"<h1>{e(page_title)}</h1>"]
    if report.description:
        parts.append(f"<p class='subtitle'>{e(_subtitle(report))}</p>")
    parts += [f"<p class='warning'><b>Warning:</b> {e(w)}</p>" for w in warnings(report)]
    if report.comparisons:
        parts.append("<h2>Answer</h2><ul class='verdicts'>" + "".join(
            f"<li class='verdict'>{e(headline(report, c))}</li>" for c in report.comparisons) + "</ul>")
    else:
        parts.append("<p>No comparison: the runs form no pair with the reference arm.</p>")
    parts.append("<h2>Design</h2><ul class='design'>" + "".join(f"<li>{e(line)}</li>" for line in design_lines(report))
                 + "</ul>")
    all_tables = tables(report)
    for t in all_tables:
        if t.key in ("domains", "runs", "runs_speed", "unmatched", "run_ids"):
            continue  # below the plots
        if t.key.startswith("seeds_"):  # the per-seed view: open, a reader checks the headline against it
            parts.append(f"<details open><summary>{e(t.title)}</summary>{_html_table(t)}</details>")
        else:
            parts.append(f"<h2>{e(t.title)}</h2>{_html_table(t)}")
    parts.append("<h2>Plots</h2><div class='plots'>")
    for path in plots:
        data = base64.b64encode(path.read_bytes()).decode()
        parts.append(f"<figure><img alt='{e(path.stem)}' src='data:image/png;base64,{data}'>"
                     f"<figcaption>{e(path.stem.replace('_', ' '))}</figcaption></figure>")
    parts.append("</div><h2>Details</h2>")
    for t in all_tables:
        if t.key in ("domains", "runs", "runs_speed", "unmatched", "run_ids"):
            opened = " open" if t.key == "unmatched" else ""
            parts.append(f"<details{opened}><summary>{e(t.title)}</summary>{_html_table(t)}</details>")
    parts.append("<h2>Provenance</h2><dl class='prov'>" + "".join(
        f"<dt>{e(k)}</dt><dd>{e(v)}</dd>" for k, v in provenance_lines(report)) + "</dl>")
    method = _method(report)
    parts.append("<details><summary>How the numbers are made</summary><ul>" + "".join(
        f"<li>{e(' '.join(item.split()))}</li>" for item in method.removeprefix("- ").split("\n- ")) + "</ul></details>")
    return (f"<!doctype html><html lang='en'><head><meta charset='utf-8'>"
            f"<meta name='viewport' content='width=device-width'><title>{e(page_title)}</title>"
            f"<style>{_STYLE}</style></head><body>{''.join(parts)}</body></html>\n")


# ---------------------------------------------------------------------------------------------------
# Files


def write_report(report: ComparisonReport, out_dir: str | Path) -> list[Path]:
    """Write :data:`FILES` into ``out_dir`` (report.html last in the returned list).

    Everything is written to a temporary folder beside ``out_dir`` first and moved into place file by file only
    when all of it succeeded, so a failure never leaves a half-written report.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=out, prefix=".report-") as tmp_name:
        tmp = Path(tmp_name)
        for name, (head, body) in zip(CSV_FILES, (runs_csv(report), arms_csv(report), comparisons_csv(report),
                                                   pairs_csv(report), stages_csv(report)), strict=True):
            with open(tmp / name, "w", newline="") as fh:
                writer = csv.writer(fh)
                writer.writerow(head)
                writer.writerows(body)
        (tmp / "comparison.md").write_text(markdown(report))
        plots = write_plots(report, tmp)
        (tmp / "report.html").write_text(render_html(report, plots))
        for name in FILES:
            os.replace(tmp / name, out / name)
    return [out / name for name in FILES]


def log_report(tracking_uri: str, parent_run_id: str, files: Sequence[Path]) -> None:
    """Attach the report files to the sweep's parent run (artifact folder ``comparison/``)."""
    from yxanul.tracking import client

    try:
        mlflow = client(tracking_uri)
        for path in files:
            mlflow.log_artifact(parent_run_id, str(path), artifact_path="comparison")
    except Exception as exc:  # MLflow raises many types; the report files are already written
        raise TrackingError(f"the report was written, but logging it to MLflow run {parent_run_id} at {tracking_uri} "
                            f"failed: {first_line(exc)} (use --no-log to skip)") from None
