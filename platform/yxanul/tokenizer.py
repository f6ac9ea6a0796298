"""Tokenizers: load a ``tokenizer.json`` (or a Hugging Face hub id), train byte-level BPE or SuperBPE.

Every tokenizer here is a plain Hugging Face ``tokenizers.Tokenizer``: a BPE model, a ``Split``
pre-tokenizer with a regex followed by ``ByteLevel`` (no regex of its own), and a ``ByteLevel``
decoder. Byte-level means every string round-trips exactly (``decode(encode(x)) == x``) and no
token is ever unknown. The one special token is :data:`EOS` (id 0 in tokenizers trained here).

    tok = load_tokenizer("outputs/tokenizer/bpe-8k/tokenizer.json")   # or a folder, or "org/name"
    train_bpe(texts, vocab_size=8192, out_path=Path("outputs/tokenizer/bpe-8k/tokenizer.json"))

Trained files get a sidecar ``tokenizer.meta.json`` next to them (sha256, kind, vocabulary size,
training bytes, seconds, regexes); :func:`tokenizer_sha256` is what manifests record.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import socket
import tempfile
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from tokenizers import Regex, Tokenizer, decoders, pre_tokenizers
from tokenizers.models import BPE
from tokenizers.trainers import BpeTrainer

from yxanul.errors import ConfigError

EOS = "<|endoftext|>"
"""End-of-text token appended to every document; id 0 in tokenizers trained by this module."""

EOS_ID_TRAINED = 0
"""Id of :data:`EOS` in tokenizers trained here (first special token, before the 256 byte tokens)."""

# Stage-1 (word-level) pre-tokenization, used for plain BPE and SuperBPE stage 1: the regex of the
# SuperBPE reference code (scripts/train_tokenizer.sh of github.com/PythonNut/superbpe), an
# o200k-style split: a word with at most one leading non-letter (space, quote, bracket) and its
# combining marks, digits in groups of at most 3 (as the stage-2 regex cuts them, so stage-1 number
# merges stay valid in stage 2), punctuation runs, newlines, whitespace.
STAGE1_REGEX = (
    r"[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]*[\p{Ll}\p{Lm}\p{Lo}\p{M}]+"
    r"|[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]+[\p{Ll}\p{Lm}\p{Lo}\p{M}]*"
    r"|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n/]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
"""Word-level pre-tokenization regex (plain BPE, SuperBPE stage 1)."""

STAGE2_REGEX = r"\p{N}{1,3}| ?[^\s\p{L}\p{N}]{2,}[\r\n/]*| +(?!\S)"
"""SuperBPE stage-2 regex (arXiv 2503.13423; the published UW/OLMo2-*-SuperBPE tokenizers use it):
text between matches, single spaces included, is one pre-token, so merges may cross spaces."""

META_SUFFIX = ".meta.json"
"""Sidecar written next to a trained tokenizer.json: ``tokenizer.json`` -> ``tokenizer.meta.json``."""

_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.\-]*/[\w.\-]+$")
_HUB_PROBE_TIMEOUT_S = 3.0


class TokenizerError(ConfigError):
    """A tokenizer cannot be loaded or trained (missing file, hub unreachable, bad training input)."""


# ---------------------------------------------------------------------------------------------------
# Loading


def load_tokenizer(spec: str | os.PathLike[str]) -> Tokenizer:
    """Load a tokenizer from a ``tokenizer.json`` path, a folder holding one, or a hub id ``org/name``.

    A hub id is tried only when no such file exists: first the local Hugging Face cache, then (unless
    ``HF_HUB_OFFLINE`` is set) the hub, after a connection probe of a few seconds so that an offline
    machine fails fast instead of retrying for half a minute.
    """
    text = os.fspath(spec)
    path = Path(text).expanduser()
    if path.is_dir():
        path = path / "tokenizer.json"
    if path.is_file():
        return _from_file(path)
    if _HUB_ID.match(text) and not text.endswith(".json"):
        tok, why = _from_hub(text)
        if tok is not None:
            return tok
        raise TokenizerError(
            f"no file at {path}, and hub id {text} could not be fetched ({why}): give a "
            "tokenizer.json path or run python -m jobs.tokenizer CONFIG to train one"
        )
    raise TokenizerError(
        f"no file at {path}, and {text!r} is not a hub id of the form org/name: give a tokenizer.json "
        "path or run python -m jobs.tokenizer CONFIG to train one"
    )


def _from_file(path: Path) -> Tokenizer:
    try:
        return Tokenizer.from_file(str(path))
    except Exception as exc:  # tokenizers raises a bare Exception for malformed JSON
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise TokenizerError(
            f"{path} is not a valid tokenizer.json ({first}): point tokenizer.path at a file written by "
            "tokenizers' Tokenizer.save, or retrain with python -m jobs.tokenizer CONFIG"
        ) from None


def _hub_reachable(endpoint: str) -> str | None:
    """None when a TCP connection to the hub endpoint opens within a few seconds, else the reason."""
    url = urlparse(endpoint)
    host = url.hostname or "huggingface.co"
    port = url.port or (443 if url.scheme == "https" else 80)
    try:
        with socket.create_connection((host, port), timeout=_HUB_PROBE_TIMEOUT_S):
            return None
    except OSError as exc:
        return f"offline? {host}:{port} unreachable: {exc.strerror or exc}"


def _from_hub(repo_id: str) -> tuple[Tokenizer | None, str]:
    from huggingface_hub import constants, hf_hub_download
    from huggingface_hub.errors import HFValidationError, LocalEntryNotFoundError

    try:  # a cached copy works offline
        cached = hf_hub_download(repo_id, "tokenizer.json", local_files_only=True)
    except HFValidationError as exc:
        return None, f"not a valid hub id: {str(exc).splitlines()[0]}"
    except LocalEntryNotFoundError:
        cached = None  # not downloaded before: ask the hub below
    if cached is not None:
        return _from_file(Path(cached)), ""
    if constants.HF_HUB_OFFLINE:
        return None, "offline: HF_HUB_OFFLINE is set and it is not in the local cache"
    why = _hub_reachable(constants.ENDPOINT)
    if why:
        return None, why
    try:
        return _from_file(Path(hf_hub_download(repo_id, "tokenizer.json", etag_timeout=10))), ""
    except TokenizerError:
        raise
    except Exception as exc:  # huggingface_hub raises many types (not found, gated, HTTP, timeouts)
        return None, f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"


def tokenizer_sha256(path: str | os.PathLike[str]) -> str:
    """Hex sha256 of a tokenizer.json file's bytes (a folder means its tokenizer.json)."""
    path = Path(path)
    if path.is_dir():
        path = path / "tokenizer.json"
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def eos_id(tok: Tokenizer) -> int:
    """Id of :data:`EOS` in ``tok``; raises :class:`TokenizerError` when the tokenizer lacks it."""
    token_id = tok.token_to_id(EOS)
    if token_id is None:
        raise TokenizerError(
            f"tokenizer has no {EOS} token (vocabulary of {tok.get_vocab_size()}): train one with "
            "python -m jobs.tokenizer CONFIG, or use a tokenizer whose end-of-text token is " + EOS
        )
    return token_id


def vocab_size(tok: Tokenizer) -> int:
    """Number of token ids (added/special tokens included): what the model's embedding must cover."""
    return tok.get_vocab_size(with_added_tokens=True)


# ---------------------------------------------------------------------------------------------------
# Training


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


def meta_path(path: Path) -> Path:
    """Sidecar path of a tokenizer file: ``.../tokenizer.json`` -> ``.../tokenizer.meta.json``."""
    return path.with_name(path.name.removesuffix(".json") + META_SUFFIX)


def _atomic_write_bytes(path: Path, data: bytes) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def save_tokenizer(tok: Tokenizer, out_path: Path, facts: dict[str, Any]) -> Path:
    """Write ``tok`` to ``out_path`` atomically, then its sidecar (sha256, vocabulary, ``facts``)."""
    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    blob = tok.to_str(pretty=False).encode("utf-8")
    _atomic_write_bytes(out_path, blob)
    meta = {"path": out_path.name, "sha256": hashlib.sha256(blob).hexdigest(),
            "vocab_size": vocab_size(tok), "eos": EOS, "eos_id": eos_id(tok),
            "created_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "tokenizers_version": _tokenizers_version(), **facts}
    _atomic_write_bytes(meta_path(out_path), (json.dumps(meta, indent=2) + "\n").encode("utf-8"))
    return out_path


def read_meta(path: str | os.PathLike[str]) -> dict[str, Any] | None:
    """The sidecar of a trained tokenizer, or None when there is none (e.g. a downloaded tokenizer)."""
    side = meta_path(Path(path))
    if not side.is_file():
        return None
    return json.loads(side.read_text())


def _tokenizers_version() -> str:
    import tokenizers

    return tokenizers.__version__


# ---------------------------------------------------------------------------------------------------
# Training text from data.sources


def held_out(doc_key: str, fraction: float) -> bool:
    """Whether a document (by its id, or its text when it has none) belongs to the validation slice.

    A stable hash (sha256), so the slice never changes between runs or machines.
    """
    if fraction <= 0:
        return False
    digest = hashlib.sha256(doc_key.encode("utf-8", "surrogatepass")).digest()
    return int.from_bytes(digest[:8], "big") / 2**64 < fraction


@dataclass
class TextSample:
    """Training text drawn from ``data.sources``, with what was taken from where."""

    texts: list[str] = field(default_factory=list)
    bytes: int = 0
    per_source: dict[str, dict[str, int]] = field(default_factory=dict)
    """spec -> {documents, bytes, held_out (validation documents skipped), skipped (empty/not text)}."""


def _iter_source_texts(source: Any, data: Any) -> Iterator[tuple[str, Any]]:
    """(document key, text) of one resolved source, file by file, in a fixed order."""
    import pyarrow.dataset as pads
    import pyarrow.parquet as pq

    from yxanul.errors import DataError

    id_column = source.split_key_column(data.id_column)
    text_column = source.text_column

    def batches_of(path: str, names: list[str], reader: Any) -> Iterator[tuple[str, Any]]:
        if text_column not in names:
            raise DataError(f"{path} has no text column {text_column!r} (columns: {', '.join(names)}): "
                            "set data.text_column")
        columns = [text_column] + ([id_column] if id_column and id_column in names else [])
        for batch in reader(columns):
            texts = batch.column(0).to_pylist()
            ids = batch.column(1).to_pylist() if len(columns) > 1 else [None] * len(texts)
            for doc_id, text in zip(ids, texts):
                key = str(doc_id) if doc_id is not None else (text if isinstance(text, str) else "")
                yield key, text

    if source.uri is not None:
        try:
            dataset = pads.dataset(source.uri, format="parquet")
        except Exception as exc:
            raise DataError(f"cannot read {source.uri} ({type(exc).__name__}: {exc})") from None
        yield from batches_of(source.uri, dataset.schema.names,
                              lambda cols: dataset.to_batches(columns=cols, batch_size=1024))
        return
    for path in source.files:
        try:
            handle = pq.ParquetFile(path)
            names = handle.schema_arrow.names
        except Exception as exc:
            if data.on_bad_file == "skip":
                continue
            raise DataError(f"{path} is not a readable parquet file ({type(exc).__name__}: "
                            f"{str(exc).splitlines()[0] if str(exc) else ''}); set data.on_bad_file=skip "
                            "to skip it") from None
        try:
            yield from batches_of(path, names, lambda cols: handle.iter_batches(batch_size=1024, columns=cols))
        except DataError:
            raise
        except Exception as exc:
            if data.on_bad_file == "skip":
                continue
            raise DataError(f"{path} could not be read to the end ({type(exc).__name__}): "
                            "set data.on_bad_file=skip to skip it") from None


def sample_texts(data: Any, max_bytes: int, *, log: Any = None) -> TextSample:
    """About ``max_bytes`` of UTF-8 text from ``data.sources`` (a :class:`~yxanul.config.DataConfig`).

    The budget is split evenly over the sources (what a small source cannot fill goes to the ones
    after it); documents are taken in file order; the validation slice (``data.validation_fraction``
    by :func:`held_out` of the document id) is never trained on; empty or non-string texts are
    skipped; a document longer than what is left of its source's budget is cut.
    """
    from yxanul.corpora import resolve_source
    from yxanul.errors import DataError

    if not data.sources:
        raise DataError("data.sources is empty: name at least one parquet path, URI or builtin:NAME")
    sources = [resolve_source(spec, data) for spec in data.sources]
    sample = TextSample()
    for index, source in enumerate(sources):
        budget = (max_bytes - sample.bytes) // (len(sources) - index)
        stats = {"documents": 0, "bytes": 0, "held_out": 0, "skipped": 0}
        sample.per_source[source.spec] = stats
        for key, text in _iter_source_texts(source, data):
            if stats["bytes"] >= budget:
                break
            if not isinstance(text, str) or not text.strip():
                stats["skipped"] += 1
                continue
            if held_out(key, data.validation_fraction):
                stats["held_out"] += 1
                continue
            raw = text.encode("utf-8", "replace")
            if len(raw) > budget - stats["bytes"]:
                raw = raw[:budget - stats["bytes"]]
                text = raw.decode("utf-8", "ignore")
            sample.texts.append(text)
            stats["documents"] += 1
            stats["bytes"] += len(raw)
        sample.bytes += stats["bytes"]
        if log is not None:
            log(f"sampled {stats['bytes'] / 1e6:.2f} MB from {source.spec} ({stats['documents']} documents, "
                f"{stats['held_out']} held out for validation)")
    if not sample.texts:
        raise DataError(f"no training text in data.sources ({', '.join(data.sources)}): every document "
                        "was empty, held out or not a string")
    return sample


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
        from yxanul.superbpe import train_superbpe

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


# ---------------------------------------------------------------------------------------------------
# Comparison report: compression, throughput and exactness per validation domain

REPORT_COLUMNS = ("tokenizer", "kind", "vocab_size", "domain", "documents", "bytes", "tokens",
                  "chars_per_token", "bytes_per_token", "encode_mb_per_cpu_s", "round_trip_exact",
                  "round_trip_failures", "sha256")
"""Columns of the tokenizer report (CSV header, Markdown table)."""


def validation_texts(data: Any, max_bytes_per_domain: int) -> dict[str, list[str]]:
    """Validation text per domain: the held-out slice (:func:`held_out`) of every ``data.sources``
    entry under its domain, then every document of ``data.validation_sources``; at most
    ``max_bytes_per_domain`` UTF-8 bytes per domain, documents in file order."""
    from yxanul.corpora import resolve_source

    entries = [(resolve_source(spec, data), True) for spec in data.sources]
    entries += [(resolve_source(spec, data, domain=domain), False)
                for domain, specs in data.validation_sources.items() for spec in specs]
    domains: dict[str, list[str]] = {}
    sizes: dict[str, int] = {}
    for source, only_held_out in entries:
        texts = domains.setdefault(source.domain, [])
        for key, text in _iter_source_texts(source, data):
            if sizes.get(source.domain, 0) >= max_bytes_per_domain:
                break
            if not isinstance(text, str) or not text.strip():
                continue
            if only_held_out and not held_out(key, data.validation_fraction):
                continue
            texts.append(text)
            sizes[source.domain] = sizes.get(source.domain, 0) + len(text.encode("utf-8", "replace"))
    return {domain: texts for domain, texts in domains.items() if texts}


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
    previous = os.environ.get("TOKENIZERS_PARALLELISM")
    os.environ["TOKENIZERS_PARALLELISM"] = "false"
    spec = tok.to_str()
    try:
        cpu_seconds = []
        for _ in range(repeats):
            fresh = Tokenizer.from_str(spec)  # a cold BPE word cache every time, as a new process has
            start = time.process_time()
            encodings = fresh.encode_batch(texts, add_special_tokens=False)
            cpu_seconds.append(time.process_time() - start)
    finally:
        if previous is None:
            os.environ.pop("TOKENIZERS_PARALLELISM", None)
        else:
            os.environ["TOKENIZERS_PARALLELISM"] = previous
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
    _atomic_write_bytes(csv_path, buffer.getvalue().encode("utf-8"))
    _atomic_write_bytes(md_path, format_markdown(rows).encode("utf-8"))
    return [csv_path, md_path]
