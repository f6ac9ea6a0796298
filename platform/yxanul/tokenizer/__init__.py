"""Tokenizers: load a ``tokenizer.json`` (or a Hugging Face hub id), train byte-level BPE or SuperBPE.

Every tokenizer here is a plain Hugging Face ``tokenizers.Tokenizer``: a BPE model, a ``Split``
pre-tokenizer with a regex followed by ``ByteLevel`` (no regex of its own), and a ``ByteLevel``
decoder. Byte-level means every string round-trips exactly (``decode(encode(x)) == x``) and no
token is ever unknown. The one special token is :data:`EOS` (id 0 in tokenizers trained here).

    tok = load_tokenizer("outputs/tokenizer/bpe-8k/tokenizer.json")   # or a folder, or "org/name"
    train_bpe(texts, vocab_size=8192, out_path=Path("outputs/tokenizer/bpe-8k/tokenizer.json"))

Trained files get a sidecar ``tokenizer.meta.json`` next to them (sha256, kind, vocabulary size,
training bytes, seconds, regexes); :func:`tokenizer_sha256` is what manifests record.

Modules: ``core`` (the format: EOS, regexes, loading, hashing, saving with the sidecar), ``bpe``
(byte-level BPE training), ``superbpe`` (SuperBPE stage 2), ``sample`` (training and validation text
from data.sources, split by :mod:`yxanul.data.split`), ``train`` (train what a config describes),
``report`` (the tokenizer comparison report).
"""

from yxanul.tokenizer.bpe import byte_level_pre_tokenizer, new_byte_level_bpe, train_bpe, train_stage1
from yxanul.tokenizer.core import (
    EOS,
    EOS_ID_TRAINED,
    META_SUFFIX,
    STAGE1_REGEX,
    STAGE2_REGEX,
    TokenizerError,
    eos_id,
    load_tokenizer,
    meta_path,
    read_meta,
    save_tokenizer,
    tokenizer_sha256,
    vocab_size,
)
from yxanul.tokenizer.report import (
    REPORT_COLUMNS,
    compare_tokenizers,
    format_markdown,
    measure,
    tokenizer_label,
    write_report,
)
from yxanul.tokenizer.sample import TextSample, sample_texts, validation_texts
from yxanul.tokenizer.superbpe import MAX_WORDS_PER_TOKEN, default_transition, train_superbpe
from yxanul.tokenizer.train import train_from_config

__all__ = [
    "EOS",
    "EOS_ID_TRAINED",
    "MAX_WORDS_PER_TOKEN",
    "META_SUFFIX",
    "REPORT_COLUMNS",
    "STAGE1_REGEX",
    "STAGE2_REGEX",
    "TextSample",
    "TokenizerError",
    "byte_level_pre_tokenizer",
    "compare_tokenizers",
    "default_transition",
    "eos_id",
    "format_markdown",
    "load_tokenizer",
    "measure",
    "meta_path",
    "new_byte_level_bpe",
    "read_meta",
    "sample_texts",
    "save_tokenizer",
    "tokenizer_label",
    "tokenizer_sha256",
    "train_bpe",
    "train_from_config",
    "train_stage1",
    "train_superbpe",
    "validation_texts",
    "vocab_size",
    "write_report",
]
