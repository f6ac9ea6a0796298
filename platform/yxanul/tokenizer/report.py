"""The tokenizer comparison report: compression, throughput and exactness per validation domain."""

from __future__ import annotations

import json
import os
import re
import time
from pathlib import Path
from typing import Any

from tokenizers import Tokenizer

from yxanul.files import atomic_write
from yxanul.tokenizer.core import STAGE2_REGEX, load_tokenizer, read_meta, tokenizer_sha256, vocab_size

__all__ = ["REPORT_COLUMNS", "compare_tokenizers", "format_markdown", "measure", "tokenizer_label", "write_report"]

REPORT_COLUMNS = ("tokenizer", "kind", "vocab_size", "domain", "documents", "bytes", "tokens",
                  "chars_per_token", "bytes_per_token", "encode_mb_per_cpu_s", "round_trip_exact",
                  "round_trip_failures", "sha256")
"""Columns of the tokenizer report (CSV header, Markdown table)."""



def tokenizer_label(spec: str) -> str:
    """Short name of a tokenizer for tables and metric keys: its folder name, or the hub id."""
    path = Path(spec)
    if path.name == "tokenizer.json" or path.suffix == ".json":
        name = path.parent.name if path.name == "tokenizer.json" else path.stem
    else:
        name = path.name if path.exists() else spec
    return re.sub(r"[^\w.\-/]", "_", name) or "tokenizer"


def measure(tok: Tokenizer, texts: list[str], *, repeats: int = 3) -> dict[str, Any]:
    """Compression, encode throughput and round-trip exactness of ``tok`` on ``texts``.

    Throughput is bytes per CPU-second of this process (``time.process_time``), with the
    tokenizers thread pool off: a per-core rate that other processes on a shared machine do not
    distort. Each of the ``repeats`` encodes starts from a freshly loaded tokenizer (cold word
    cache); the best one counts.
    """
    from yxanul.environ import temporary_env

    spec = tok.to_str()
    with temporary_env("TOKENIZERS_PARALLELISM", "false"):
        cpu_seconds = []
        for _ in range(repeats):
            fresh = Tokenizer.from_str(spec)  # a cold BPE word cache every time, as a new process has
            start = time.process_time()
            encodings = fresh.encode_batch(texts, add_special_tokens=False)
            cpu_seconds.append(time.process_time() - start)
    ids = [enc.ids for enc in encodings]
    decoded = tok.decode_batch(ids, skip_special_tokens=False)
    failures = sum(1 for text, back in zip(texts, decoded) if text != back)
    n_bytes = sum(len(t.encode("utf-8", "replace")) for t in texts)
    n_chars = sum(len(t) for t in texts)
    n_tokens = sum(len(i) for i in ids)
    best = max(min(cpu_seconds), 1e-9)
    return {"documents": len(texts), "bytes": n_bytes, "tokens": n_tokens,
            "chars_per_token": round(n_chars / max(n_tokens, 1), 4),
            "bytes_per_token": round(n_bytes / max(n_tokens, 1), 4),
            "encode_mb_per_cpu_s": round(n_bytes / 1e6 / best, 3),
            "round_trip_exact": failures == 0, "round_trip_failures": failures}


def compare_tokenizers(specs: list[str], domains: dict[str, list[str]], *, repeats: int = 3,
                       log: Any = None) -> list[dict[str, Any]]:
    """One row (:data:`REPORT_COLUMNS`) per tokenizer and domain."""
    rows = []
    labels: list[str] = []
    for spec in specs:
        label = tokenizer_label(spec)
        if label in labels:  # two folders of the same name: keep metric keys apart
            label = f"{label}-{len(labels) + 1}"
        labels.append(label)
        tok = load_tokenizer(spec)
        path = Path(spec).expanduser()
        path = path / "tokenizer.json" if path.is_dir() else path
        meta = read_meta(path) if path.is_file() else None
        kind = (meta or {}).get("kind") or _guess_kind(tok)
        sha = tokenizer_sha256(path) if path.is_file() else ""
        for domain, texts in domains.items():
            row = {"tokenizer": label, "kind": kind, "vocab_size": vocab_size(tok),
                   "domain": domain, **measure(tok, texts, repeats=repeats), "sha256": sha[:12]}
            rows.append(row)
            if log is not None:
                log(f"{row['tokenizer']:>24} {domain:>8}: {row['chars_per_token']:.3f} chars/token, "
                    f"{row['encode_mb_per_cpu_s']:.2f} MB/s per core, round trip "
                    f"{'exact' if row['round_trip_exact'] else 'NOT exact'}")
    return rows


def _guess_kind(tok: Tokenizer) -> str:
    """superbpe when the pre-tokenizer regex is the stage-2 one (published SuperBPE files), else bpe."""
    blob = json.loads(tok.to_str()).get("pre_tokenizer") or {}
    return "superbpe" if STAGE2_REGEX in json.dumps(blob).replace("\\\\", "\\") else "bpe"


def format_markdown(rows: list[dict[str, Any]]) -> str:
    """The report as a Markdown table, plus SuperBPE-vs-BPE gains per domain at equal vocabulary."""
    lines = ["| " + " | ".join(REPORT_COLUMNS) + " |", "|" + "---|" * len(REPORT_COLUMNS)]
    for row in rows:
        lines.append("| " + " | ".join(str(row[c]) for c in REPORT_COLUMNS) + " |")
    gains = []
    for sb in (r for r in rows if r["kind"] == "superbpe"):
        for base in (r for r in rows if r["kind"] == "bpe" and r["vocab_size"] == sb["vocab_size"]
                     and r["domain"] == sb["domain"]):
            gain = sb["chars_per_token"] / base["chars_per_token"] - 1
            gains.append(f"- {sb['domain']}: {sb['tokenizer']} has {gain:+.1%} characters per token "
                         f"vs {base['tokenizer']} (same vocabulary, {sb['vocab_size']})")
    if gains:
        lines += ["", "SuperBPE vs BPE:", *gains]
    return "\n".join(lines) + "\n"


def write_report(rows: list[dict[str, Any]], out_dir: str | os.PathLike[str]) -> list[Path]:
    """tokenizer_report.csv and tokenizer_report.md in ``out_dir`` (each written atomically)."""
    import csv
    import io

    out = Path(out_dir).expanduser()
    out.mkdir(parents=True, exist_ok=True)
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(REPORT_COLUMNS))
    writer.writeheader()
    writer.writerows(rows)
    csv_path, md_path = out / "tokenizer_report.csv", out / "tokenizer_report.md"
    atomic_write(csv_path, buffer.getvalue())
    atomic_write(md_path, format_markdown(rows))
    return [csv_path, md_path]
