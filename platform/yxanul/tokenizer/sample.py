"""Text from ``data.sources`` for the tokenizer: a training sample that never includes the validation
slice, and the validation texts per domain. The split rule is :mod:`yxanul.data.split`'s, the one
jobs.prepare uses, so the tokenizer never trains on documents prepare holds out."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from yxanul.data.split import held_out, split_key_column
from yxanul.errors import DataError, first_line

__all__ = ["TextSample", "sample_texts", "validation_texts"]


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

    id_column = split_key_column(source)
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
                            f"{first_line(str(exc))}); set data.on_bad_file=skip "
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
