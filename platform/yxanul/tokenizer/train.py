"""Train the tokenizer an experiment config describes (tokenizer.kind: bpe or superbpe)."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from yxanul.tokenizer.bpe import train_bpe
from yxanul.tokenizer.core import read_meta
from yxanul.tokenizer.sample import sample_texts
from yxanul.tokenizer.superbpe import train_superbpe

__all__ = ["train_from_config"]


def train_from_config(cfg: Any, *, show_progress: bool = True, log: Any = print) -> dict[str, Any]:
    """Train the tokenizer an :class:`~yxanul.config.ExperimentConfig` describes; write tokenizer.path.

    Returns the summary (path, kind, vocab_size, transition, bytes, documents, seconds, sha256).
    """
    tcfg = cfg.tokenizer
    out = Path(tcfg.path).expanduser()
    if out.suffix != ".json":
        out = out / "tokenizer.json"
    start = time.perf_counter()
    sample = sample_texts(cfg.data, tcfg.train_sample_bytes, log=log)
    if tcfg.kind == "superbpe":
        train_superbpe(sample.texts, tcfg.vocab_size, out, transition=tcfg.transition,
                       show_progress=show_progress, min_frequency=tcfg.min_frequency,
                       max_words=tcfg.max_words_per_token, sources=sample.per_source)
    else:
        train_bpe(sample.texts, tcfg.vocab_size, out, show_progress=show_progress,
                  min_frequency=tcfg.min_frequency, sources=sample.per_source)
    meta = read_meta(out) or {}
    return {"path": str(out), "kind": tcfg.kind, "vocab_size": meta.get("vocab_size"),
            "transition": meta.get("transition"), "bytes": sample.bytes, "documents": len(sample.texts),
            "seconds": round(time.perf_counter() - start, 2), "sha256": meta.get("sha256")}
