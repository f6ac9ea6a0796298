"""The prepare pipeline: parquet text -> tokenized, decomposed (or packed) dataset + manifest.

Ray Data does the reading, cleaning and tokenizing (an actor pool, one tokenizer per actor); the
driver consumes the ordered stream and writes part files per bucket, so the output is deterministic
(``preserve_order``) and leftovers are packed across the whole stream, not per block. Everything is
written into a temporary sibling of ``data.output_dir`` that is renamed into place after
``manifest.json`` (written last) is complete: a failed run leaves no manifest and never touches a
previous complete dataset.

    plan = make_plan(cfg)            # resolve sources, tokenizer, hash (no Ray)
    manifest = run(plan)             # or None when the dataset is already up to date
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from yxanul.config import ExperimentConfig
from yxanul.corpora import Source, corpus_summary, is_uri, resolve_sources
from yxanul.data.decompose import Packer, bucket_lengths
from yxanul.data.split import split_key_column
from yxanul.errors import DataError, YxanulError, first_line, root_cause, user_error
from yxanul.files import atomic_write, sha256_file
from yxanul.ray_session import ensure_ray

FORMAT_VERSION = 1
MANIFEST = "manifest.json"
TOKEN_COUNTS = "token_counts.npy"
"""How often each token id occurs in the training split (int64, one entry per vocabulary id): the unigram
baseline that validation is measured against (:func:`yxanul.data.loader.unigram_bpb`)."""
_MAX_RETRIES = 8


@dataclass
class Plan:
    """Everything ``run`` needs, resolved up front (no Ray yet)."""

    cfg: ExperimentConfig
    config_path: str | None
    train: list[Source]
    validation: list[Source]
    output_dir: Path
    tokenizer_path: str
    tokenizer_sha256: str | None = None
    config_hash: str | None = None
    bad_files: dict[str, str] = field(default_factory=dict)
    """Unreadable local parquet files skipped under on_bad_file=skip -> reason."""

    @property
    def sources(self) -> list[tuple[Source, bool]]:
        """(source, is_validation_only) in stream order; the index is the ``source`` column."""
        return [(s, False) for s in self.train] + [(s, True) for s in self.validation]

    @property
    def buckets(self) -> list[int]:
        d = self.cfg.data
        return bucket_lengths(d.min_bucket, d.max_bucket) if d.mode == "decompose" else [d.seq_len]

    def is_up_to_date(self) -> bool:
        manifest = read_manifest(self.output_dir)
        return manifest is not None and manifest.get("config_hash") == self.config_hash


def read_manifest(output_dir: str | os.PathLike[str]) -> dict[str, Any] | None:
    """The manifest of a complete prepared dataset, or None when there is none."""
    path = Path(output_dir) / MANIFEST
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return None


def _is_file_path(spec: str) -> bool:
    """A tokenizer.path that names a file (rather than a hub id org/name)."""
    return spec.endswith(".json") or spec.startswith((".", "/", "~")) or os.path.isdir(os.path.expanduser(spec))


def make_plan(cfg: ExperimentConfig, config_path: str | None = None, *, dry_run: bool = False) -> Plan:
    """Resolve sources and the tokenizer, check inputs, compute the config hash. Raises on bad input."""
    data = cfg.data
    if is_uri(data.output_dir):
        raise DataError(f"data.output_dir={data.output_dir!r}: write the prepared dataset to a local or "
                        "shared-filesystem path (training reads it from there)")
    for domain in data.validation_sources:
        if not domain or not all(c.isalnum() or c in "-_" for c in domain):
            raise DataError(f"data.validation_sources key {domain!r} is not a valid domain name "
                            "(letters, digits, - and _)")
    train, validation = resolve_sources(data, materialise_builtin=not dry_run)
    plan = Plan(cfg, config_path, train, validation, Path(data.output_dir).expanduser(), cfg.tokenizer.path)
    tok_path = Path(cfg.tokenizer.path).expanduser()
    if _is_file_path(cfg.tokenizer.path):
        if tok_path.is_dir():
            tok_path = tok_path / "tokenizer.json"
        if tok_path.is_file():
            from yxanul.tokenizer import tokenizer_sha256

            plan.tokenizer_path = str(tok_path)
            plan.tokenizer_sha256 = tokenizer_sha256(tok_path)
        elif not dry_run:
            raise DataError(
                f"tokenizer.path {cfg.tokenizer.path} does not exist: train it first with "
                f"`python -m jobs.tokenizer {config_path or 'CONFIG'}` (same config), or point "
                "tokenizer.path at an existing tokenizer.json"
            )
    if dry_run:
        return plan
    if plan.tokenizer_sha256 is None:  # a hub id: hash its serialized form
        from yxanul.tokenizer import load_tokenizer

        plan.tokenizer_sha256 = hashlib.sha256(load_tokenizer(cfg.tokenizer.path).to_str().encode()).hexdigest()
    _check_local_files(plan)
    plan.config_hash = _config_hash(plan)
    return plan


def _config_hash(plan: Plan) -> str:
    """What decides the dataset's content: data settings, tokenizer bytes, input files (size, mtime)."""
    data = plan.cfg.data.model_dump(mode="json")
    # not content: how the dataset is made or read
    for key in ("output_dir", "cache_dir", "tokenize_actors", "shuffle_window", "order_seed"):
        data.pop(key, None)
    inputs = []
    for source, _ in plan.sources:
        if source.uri is not None:
            inputs.append([source.spec, source.uri])
        for path in source.files:
            st = os.stat(path)
            inputs.append([source.spec, os.path.abspath(path), st.st_size, st.st_mtime_ns])
    blob = json.dumps({"format_version": FORMAT_VERSION, "data": data, "tokenizer": plan.tokenizer_sha256,
                       "inputs": inputs, "bad_files": sorted(plan.bad_files)}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def _check_local_files(plan: Plan) -> None:
    """Footer, column and type of every local parquet file, before any Ray work."""
    import pyarrow.parquet as pq

    from yxanul.data.normalize import is_text_type

    for source, _ in plan.sources:
        key_column = split_key_column(source)
        columns = [source.text_column] + ([key_column] if key_column else [])
        for path in source.files:
            try:
                schema = pq.read_schema(path)
            except Exception as exc:  # pyarrow raises ArrowInvalid / OSError for corrupt or truncated files
                _bad_file(plan, path, first_line(exc))
                continue
            for column in columns:
                if column not in schema.names:
                    key = "data.text_column" if column == source.text_column else "data.id_column"
                    raise DataError(f"{path} has no column {column!r} ({key}); its columns: "
                                    f"{', '.join(schema.names) or '(none)'}")
            dtype = schema.field(source.text_column).type
            if not is_text_type(dtype):
                raise DataError(f"{path}: column {source.text_column!r} has type {dtype}, not text; set "
                                "data.text_column to the column holding the document text")


def _bad_file(plan: Plan, path: str, reason: str) -> None:
    if plan.cfg.data.on_bad_file == "error":
        raise DataError(f"{path} is not a readable parquet file ({reason}); fix or remove it, or set "
                        "data.on_bad_file=skip to skip unreadable files")
    plan.bad_files[path] = reason


# ---------------------------------------------------------------------------------------------------
# Running


def build_dataset(plan: Plan, eos_id: int, sources: list[tuple[Source, bool]] | None = None):
    """The Ray Data pipeline up to tokenization (a lazy ``ray.data.Dataset``)."""
    import ray
    import ray.data

    from yxanul.data.normalize import normalize_batch
    from yxanul.data.tokenize import TokenizeBatch

    data = plan.cfg.data
    ctx = ray.data.DataContext.get_current()
    ctx.execution_options.preserve_order = True  # deterministic output: same config -> same bytes
    # Small blocks: the actor pool is fed one block per call, so a 5 MB source read as one block
    # would keep a single actor busy while the others idle.
    ctx.target_max_block_size = _BLOCK_BYTES
    parts = []
    for index, (source, is_val) in enumerate(sources if sources is not None else plan.sources):
        paths = [p for p in source.paths if p not in plan.bad_files]
        if not paths:
            continue
        id_column = split_key_column(source)
        columns = [source.text_column] + ([id_column] if id_column else [])
        try:
            with footer_readers(None if source.uri is not None else len(paths)):
                ds = ray.data.read_parquet(paths, file_extensions=None if source.uri is None else ["parquet"])
            ds = ds.select_columns(columns)  # pushed down into the read
        except YxanulError:
            raise
        except Exception as exc:
            raise DataError(f"cannot read data.sources entry {source.spec!r}: {first_line(exc)}") from None
        if data.max_documents:
            ds = ds.limit(data.max_documents)
        ds = ds.map_batches(normalize_batch, batch_format="pyarrow", batch_size=None, fn_kwargs=dict(
            source_index=index, spec=source.spec, text_column=source.text_column, id_column=id_column,
            validation_fraction=data.validation_fraction, validation=is_val))
        parts.append(ds)
    if not parts:
        raise DataError("no readable input: every source file was skipped as unreadable")
    ds = parts[0].union(*parts[1:]) if len(parts) > 1 else parts[0]
    cpus = float(ray.cluster_resources().get("CPU", 1))
    actors = data.tokenize_actors or max(1, int(cpus))
    # Fractional CPUs: actors must never take every CPU, or the read tasks feeding them cannot run
    # (a silent deadlock on 2-CPU machines).
    num_cpus = min(1.0, 0.5 * cpus / actors)
    decompose = (data.min_bucket, data.max_bucket) if data.mode == "decompose" else None
    # One call per block (batch_size=None, zero-copy): no re-slicing of blocks into row batches, and
    # each call hands the tokenizer about a block's worth of text (encode_documents splits it into
    # encode_batch calls of at most CALL_CHARS characters).
    return ds.map_batches(TokenizeBatch, batch_format="pyarrow", batch_size=None, zero_copy_batch=True,
                          compute=ray.data.ActorPoolStrategy(size=actors), num_cpus=num_cpus,
                          fn_constructor_kwargs=dict(tokenizer=plan.tokenizer_path, eos_id=eos_id,
                                                     decompose=decompose))


_BLOCK_BYTES = 1 << 20

_FOOTER_ACTORS_ENV = "RAY_DATA_PARQUET_FOOTER_NUM_ACTORS"


@contextlib.contextmanager
def footer_readers(files: int | None) -> Iterator[None]:
    """Size the pool of parquet footer-reading actors of a ``read_parquet`` called inside to the files
    (``None``: not known before Ray lists them, e.g. an ``s3://`` prefix; Ray's default is kept).

    Ray 2.60's parquet reader indexes row groups on a pool of ``FooterReader`` actors, 32 by default
    whatever the input: new processes, each importing Ray Data, which on a 2-core machine delayed the
    first tokenized block by seconds (docs/benchmarks.md, "Data pipeline"). Each actor reads footers in
    batches of 10 files, so one actor per 10 files (at most 32) loses nothing. The pool size is read
    from the environment when ``read_parquet`` builds its file indexer, in the calling process; a value
    the user set is kept.
    """
    if files is None or _FOOTER_ACTORS_ENV in os.environ:
        yield
        return
    os.environ[_FOOTER_ACTORS_ENV] = str(min(32, max(1, -(-files // 10))))
    try:
        yield
    finally:
        os.environ.pop(_FOOTER_ACTORS_ENV, None)


class _Collector:
    """Consumes the ordered tokenized stream: counts, cuts into buckets, writes part files."""

    def __init__(self, plan: Plan, root: Path, vocab: int) -> None:
        from yxanul.data.writer import PartWriter

        self.plan = plan
        self.token_counts = np.zeros(vocab, np.int64)
        self.data = plan.cfg.data
        self.writer = PartWriter(root)
        nsrc = len(plan.sources)
        self.rows = np.zeros(nsrc, np.int64)
        self.bytes = np.zeros(nsrc, np.int64)
        self.skipped: Counter[tuple[int, str]] = Counter()
        self.domains = [s.domain for s, _ in plan.sources]
        self.train = {"documents": 0, "tokens": 0, "bytes": 0}
        self.validation: dict[str, dict[str, int]] = {}
        length = self.data.min_bucket if self.data.mode == "decompose" else self.data.seq_len
        self.packer = Packer(length)

    def add(self, batch) -> None:
        import pyarrow as pa
        import pyarrow.compute as pc

        def column(name: str) -> pa.Array:
            return batch.column(name).combine_chunks()

        src = column("source").to_numpy()
        nb = column("num_bytes").to_numpy().astype(np.int64)
        np.add.at(self.rows, src, 1)
        np.add.at(self.bytes, src, nb)
        skip = column("skip").to_numpy(zero_copy_only=False)
        kept = np.equal(skip, None)
        for i in np.flatnonzero(~kept):
            self.skipped[(int(src[i]), skip[i])] += 1
        heldout = column("heldout").to_numpy(zero_copy_only=False)
        tokens = column("tokens")
        lengths = pc.list_value_length(tokens).to_numpy(zero_copy_only=False).astype(np.int64)

        val = kept & heldout
        if val.any():
            domains = np.array(self.domains, object)[src]
            for domain in sorted(set(domains[val])):
                mask = val & (domains == domain)
                table = pa.table({"tokens": tokens.filter(pa.array(mask)), "num_bytes": pa.array(nb[mask])})
                self.writer.add(f"validation/{domain}", table)
                stats = self.validation.setdefault(domain, {"documents": 0, "tokens": 0, "bytes": 0})
                stats["documents"] += int(mask.sum())
                stats["tokens"] += int(lengths[mask].sum())
                stats["bytes"] += int(nb[mask].sum())

        train = kept & ~heldout
        if not train.any():
            return
        self.train["documents"] += int(train.sum())
        self.train["tokens"] += int(lengths[train].sum())
        self.train["bytes"] += int(nb[train].sum())
        docs = tokens.filter(pa.array(train))
        flat = docs.flatten()
        ids = flat.to_numpy(zero_copy_only=False)
        if ids.size:
            self.token_counts += np.bincount(ids, minlength=self.token_counts.size)[:self.token_counts.size]
        if self.data.mode == "packed":
            self.writer.add_fixed(f"bucket={self.data.seq_len}", self.packer.add(flat.to_numpy()), self.data.seq_len)
            return
        pieces = column("pieces").filter(pa.array(train))
        per_doc = pc.list_value_length(pieces).to_numpy(zero_copy_only=False)
        piece_len = pieces.flatten().to_numpy().astype(np.int64)
        bounds = np.zeros(len(piece_len) + 1, np.int64)
        np.cumsum(piece_len, out=bounds[1:])
        cut = pa.LargeListArray.from_arrays(pa.array(bounds), flat)  # every piece, zero-copy
        leftover = np.zeros(len(piece_len), bool)
        leftover[np.cumsum(per_doc) - 1] = True
        for length in self.plan.buckets:
            sel = (~leftover) & (piece_len == length)
            if sel.any():
                self.writer.add_fixed(f"bucket={length}", cut.filter(pa.array(sel)).flatten(), length)
        tails = cut.filter(pa.array(leftover & (piece_len > 0))).flatten().to_numpy()
        self.writer.add_fixed(f"bucket={self.data.min_bucket}", self.packer.add(tails), self.data.min_bucket)


def run(plan: Plan, *, force: bool = False) -> dict[str, Any] | None:
    """Prepare the dataset of ``plan``; None when it is already complete with the same config hash."""
    if plan.is_up_to_date() and not force:
        return None
    out = plan.output_dir
    if out.exists() and read_manifest(out) is None and (not out.is_dir() or any(out.iterdir())):
        raise DataError(f"data.output_dir {out} exists and is not a prepared dataset (no {MANIFEST}); "
                        "remove it or choose another data.output_dir")
    from yxanul.tokenizer import eos_id, load_tokenizer, vocab_size

    tok = load_tokenizer(plan.tokenizer_path)
    eos = eos_id(tok)
    vocab = vocab_size(tok)
    out.parent.mkdir(parents=True, exist_ok=True)
    _remove_stale_siblings(out)
    ensure_ray()
    start = time.perf_counter()
    for _attempt in range(_MAX_RETRIES):
        tmp = out.with_name(f".{out.name}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}")
        tmp.mkdir()
        collector = _Collector(plan, tmp, vocab)
        try:
            for batch in build_dataset(plan, eos).iter_batches(batch_format="pyarrow", batch_size=None):
                collector.add(batch)
            collector.writer.close()
            np.save(tmp / TOKEN_COUNTS, collector.token_counts, allow_pickle=False)
            manifest = _manifest(plan, collector, tok, eos, time.perf_counter() - start)
            manifest["content_sha256"] = content_sha256(tmp)
            _write_json(tmp / MANIFEST, manifest)
            _publish(tmp, out)
            return manifest
        except BaseException as exc:
            collector.writer.abort()
            shutil.rmtree(tmp, ignore_errors=True)
            if not isinstance(exc, Exception):
                raise
            user = user_error(exc)
            if user is not None:
                raise user from None
            bad = _find_unreadable(plan)
            uris = [src.uri for src, _ in plan.sources if src.uri is not None]
            if bad is None and uris:  # remote input cannot be re-checked file by file from here
                raise DataError(f"reading {', '.join(uris)} failed ({first_line(root_cause(exc))}); check "
                                "the path, credentials and that every file has the text column") from None
            if bad is None:
                raise
            _bad_file(plan, *bad)  # raises under on_bad_file=error; otherwise retry without the file
            plan.config_hash = _config_hash(plan)
    raise DataError(f"gave up after {_MAX_RETRIES} unreadable files: {', '.join(plan.bad_files)}")


def _remove_stale_siblings(out: Path) -> None:
    """Temporary dirs of runs that were killed (their process is gone) and half-swapped old copies."""
    for path in out.parent.glob(f".{out.name}.*"):
        kind, _, rest = path.name[len(out.name) + 2:].partition("-")
        if kind == "tmp":
            try:
                os.kill(int(rest.split("-")[0]), 0)
                continue  # a run in progress
            except (ValueError, ProcessLookupError):
                pass
            except PermissionError:
                continue
        elif kind != "old" or not out.exists():
            continue
        shutil.rmtree(path, ignore_errors=True)


def _find_unreadable(plan: Plan) -> tuple[str, str] | None:
    """After a failed run: the first local file whose text column cannot be read in full."""
    import pyarrow.parquet as pq

    for source, _ in plan.sources:
        for path in source.files:
            if path in plan.bad_files:
                continue
            try:
                pq.read_table(path, columns=[source.text_column])
            except Exception as exc:  # any pyarrow failure here means the file is damaged
                return path, first_line(exc)
    return None


def _manifest(plan: Plan, col: _Collector, tok, eos: int, seconds: float) -> dict[str, Any]:
    from yxanul.tokenizer import vocab_size

    data = plan.cfg.data
    buckets = {}
    for length in plan.buckets:
        key = f"bucket={length}"
        rows = col.writer.rows.get(key, 0)
        buckets[str(length)] = {"sequences": rows, "tokens": rows * length, "files": col.writer.files.get(key, [])}
    validation = {}
    for domain, stats in sorted(col.validation.items()):
        validation[domain] = {**stats, "files": col.writer.files.get(f"validation/{domain}", [])}
    sources = []
    for index, (source, is_val) in enumerate(plan.sources):
        skipped = {r: n for (i, r), n in sorted(col.skipped.items()) if i == index}
        entry = {"uri": source.spec, "paths": list(source.paths), "role": "validation" if is_val else "train",
                 "domain": source.domain, "rows": int(col.rows[index]), "bytes": int(col.bytes[index]),
                 "skipped": skipped}
        corpus = corpus_summary(source)
        if corpus is not None:
            entry["corpus"] = _split_packages(corpus, data.validation_fraction, is_val)
        sources.append(entry)
    skipped: Counter[str] = Counter()
    for (_, reason), n in col.skipped.items():
        skipped[reason] += n
    if plan.bad_files:
        skipped["bad_file"] = len(plan.bad_files)
    train = dict(col.train)
    if train["documents"] == 0:
        raise DataError("no training documents left: every document was skipped or held out "
                        f"(skipped: {dict(skipped) or 'none'}); check data.sources and data.validation_fraction")
    train["bytes_per_token"] = train["bytes"] / train["tokens"] if train["tokens"] else 0.0
    train["token_counts"] = TOKEN_COUNTS
    train["dropped_tokens"] = int(col.packer.residual.size)
    return {
        "format_version": FORMAT_VERSION,
        "mode": data.mode,
        "created_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "config_hash": plan.config_hash,
        "tokenizer": {"path": str(Path(plan.tokenizer_path).resolve()) if _is_file_path(plan.tokenizer_path)
                      else plan.tokenizer_path, "sha256": plan.tokenizer_sha256,
                      "vocab_size": vocab_size(tok), "eos_id": eos},
        "seq_len": data.seq_len if data.mode == "packed" else None,
        "min_bucket": data.min_bucket,
        "max_bucket": data.max_bucket,
        "sources": sources,
        "buckets": buckets,
        "validation": validation,
        "train": train,
        "skipped": dict(sorted(skipped.items())),
        "bad_files": dict(sorted(plan.bad_files.items())),
        "seconds": round(seconds, 3),
    }


def _split_packages(corpus: dict[str, Any], fraction: float, validation_only: bool) -> dict[str, Any]:
    """A corpus summary (installed-python) with its packages listed by the side of the split they fall on."""
    from yxanul.data.split import held_out

    packages = corpus.pop("packages", {})
    sides: dict[str, dict[str, int]] = {"train": {}, "validation": {}}
    for name, info in packages.items():
        side = "validation" if validation_only or held_out(name, fraction) else "train"
        sides[side][name] = info["bytes"]
    return {**corpus, "packages": sides,
            "split": "whole top-level packages by a stable hash of the package name (data.validation_fraction)"}


def content_sha256(root: Path) -> str:
    """What the dataset is, whenever and wherever it was made: one sha256 over every file under ``root`` but the
    manifest (the token parquet files and the token counts), each as its path relative to ``root`` and its bytes, in
    path order. Preparation is deterministic byte for byte (the same sources, tokenizer and settings give the same
    files, whatever the number of tokenize actors), so two machines that prepared the same data agree; the manifest's
    own sha256 does not (it records when and how fast). Files written by another pyarrow version may differ."""
    digest = hashlib.sha256()
    for path in sorted(p for p in root.rglob("*") if p.is_file() and p.name != MANIFEST):
        digest.update(path.relative_to(root).as_posix().encode() + b"\0" + str(path.stat().st_size).encode() + b"\0")
        sha256_file(path, digest)
    return digest.hexdigest()


def _publish(tmp: Path, out: Path) -> None:
    """Move the finished ``tmp`` into place; a previous dataset is removed only after that."""
    if out.exists():
        old = out.with_name(f".{out.name}.old-{uuid.uuid4().hex[:8]}")
        os.rename(out, old)
        os.rename(tmp, out)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.rename(tmp, out)


def summary(manifest: dict[str, Any]) -> str:
    """One line: documents, tokens, buckets, skipped, seconds, tokens/s."""
    from yxanul.formatting import human_count

    train = manifest["train"]
    val_tokens = sum(v["tokens"] for v in manifest["validation"].values())
    val_docs = sum(v["documents"] for v in manifest["validation"].values())
    nonempty = sum(1 for b in manifest["buckets"].values() if b["sequences"])
    skipped = ", ".join(f"{k}={v}" for k, v in manifest["skipped"].items()) or "none"
    seconds = manifest["seconds"]
    rate = (train["tokens"] + val_tokens) / seconds if seconds else 0.0
    return (f"prepared {train['documents']} train + {val_docs} validation documents, "
            f"{human_count(train['tokens'])} train + {human_count(val_tokens)} validation tokens, "
            f"{nonempty} buckets ({manifest['mode']}), skipped: {skipped}, {seconds:.1f} s, "
            f"{human_count(rate)} tokens/s")


def validation_warning(manifest: dict[str, Any], data: Any) -> str | None:
    """A warning when the prepared dataset holds no validation documents although some were asked for
    (``data.validation_fraction`` or ``data.validation_sources``): training would log no ``val/*`` metric and a
    sweep on ``val/bpb`` could not rank its trials. Says why when the split is by whole packages (a small
    ``data.builtin_max_bytes`` sample may hold none of the held-out ones) and what to change."""
    if sum(v["documents"] for v in manifest["validation"].values()) or not (data.validation_fraction or
                                                                             data.validation_sources):
        return None
    why = ""
    for source in manifest.get("sources", []):
        packages = (source.get("corpus") or {}).get("packages")
        if packages:
            read = sum(len(side) for side in packages.values())
            why = (f" ({source['uri']} is split by whole packages: none of the {read} packages read is on the "
                   f"held-out side{'; data.builtin_max_bytes keeps a sample of the files' if data.builtin_max_bytes else ''})")
    return (f"warning: no validation documents in this dataset: data.validation_fraction={data.validation_fraction} "
            f"held out none{why}, so training logs no val/* metric and a sweep on val/bpb cannot rank its trials; "
            f"raise data.builtin_max_bytes or data.validation_fraction, or name data.validation_sources")


def _write_json(path: Path, obj: Any) -> None:
    atomic_write(path, json.dumps(obj, indent=2) + "\n")
