"""Byte-level BPE training (plain BPE, and SuperBPE's stage 1)."""

from __future__ import annotations

import time
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from tokenizers import Regex, Tokenizer, decoders, pre_tokenizers
from tokenizers.models import BPE
from tokenizers.trainers import BpeTrainer

from yxanul.tokenizer.core import EOS, STAGE1_REGEX, TokenizerError, save_tokenizer

__all__ = ["byte_level_pre_tokenizer", "new_byte_level_bpe", "train_bpe", "train_stage1"]


def byte_level_pre_tokenizer(regex: str) -> pre_tokenizers.PreTokenizer:
    """``Split(regex, isolated)`` then ``ByteLevel`` without its own regex (the OLMo2/SuperBPE layout)."""
    return pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(regex), behavior="isolated", invert=False),
        pre_tokenizers.ByteLevel(add_prefix_space=False, trim_offsets=True, use_regex=False),
    ])


def new_byte_level_bpe(regex: str = STAGE1_REGEX, **bpe_kwargs: Any) -> Tokenizer:
    """An untrained (or given-vocabulary, via ``vocab=``/``merges=``) byte-level BPE tokenizer."""
    tok = Tokenizer(BPE(**bpe_kwargs))
    tok.pre_tokenizer = byte_level_pre_tokenizer(regex)
    tok.decoder = decoders.ByteLevel()
    return tok


class _ByteCounter:
    """Wraps the training texts to count bytes and documents as the trainer consumes them."""

    def __init__(self, texts: Iterable[str]) -> None:
        self._texts = texts
        self.bytes = 0
        self.documents = 0

    def __iter__(self) -> Iterator[str]:
        for text in self._texts:
            if not isinstance(text, str) or not text:
                continue
            self.bytes += len(text.encode("utf-8"))
            self.documents += 1
            yield text


def train_bpe(texts: Iterable[str], vocab_size: int, out_path: Path, *, show_progress: bool = True,
              min_frequency: int = 2, regex: str = STAGE1_REGEX,
              sources: dict[str, Any] | None = None) -> Path:
    """Train a byte-level BPE of ``vocab_size`` tokens (EOS and the 256 bytes included) on ``texts``.

    Writes ``out_path`` atomically and its ``tokenizer.meta.json`` sidecar (``sources``: what the
    text was sampled from, recorded as given); returns ``out_path``.
    """
    start = time.perf_counter()
    texts_counter = _ByteCounter(texts)
    tok = train_stage1(texts_counter, vocab_size, show_progress=show_progress,
                       min_frequency=min_frequency, regex=regex)
    facts = {"kind": "bpe", "regex": regex, "train_bytes": texts_counter.bytes,
             "train_documents": texts_counter.documents, "min_frequency": min_frequency,
             "seconds": round(time.perf_counter() - start, 3)}
    if sources is not None:
        facts["sources"] = sources
    return save_tokenizer(tok, Path(out_path), facts)


def train_stage1(texts: Iterable[str], vocab_size: int, *, show_progress: bool = True,
                 min_frequency: int = 2, regex: str = STAGE1_REGEX) -> Tokenizer:
    """Byte-level BPE training (in memory): EOS at id 0, the 256 byte tokens, then merges."""
    if vocab_size < 257 + 1:
        raise TokenizerError(f"tokenizer.vocab_size={vocab_size} is too small: byte-level BPE needs "
                             "at least 258 (EOS + 256 bytes + one merge)")
    tok = new_byte_level_bpe(regex)
    trainer = BpeTrainer(vocab_size=vocab_size, min_frequency=min_frequency, show_progress=show_progress,
                         special_tokens=[EOS], initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(texts, trainer=trainer)
    if isinstance(texts, _ByteCounter) and texts.documents == 0:
        raise TokenizerError("no training text: every sampled document was empty; check data.sources")
    return tok
