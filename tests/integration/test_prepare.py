"""jobs.prepare end to end on a real local Ray: buckets, packing, validation, skips, bad files,
idempotence, --force, determinism and a single 50 MB document."""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from jobs.prepare import main
from yxanul.cli import run_job
from yxanul.data.split import held_out
from yxanul.data.tokenize import encode_documents
from yxanul.tokenizer import load_tokenizer, train_bpe

pytestmark = pytest.mark.integration

INTL = ["Tokyo (東京) is the capital of Japan 🇯🇵.", "Der Fluß fließt; naïve café, résumé.",
        "Москва — столица России.", "مرحبا بالعالم", "emoji only: 🙂🚀👩‍👩‍👧‍👦", "𝔘𝔫𝔦𝔠𝔬𝔡𝔢 and \u200b zero width"]
WIKI_DOCS = 120
MiB = 1 << 20


@pytest.fixture(scope="module")
def env(tmp_path_factory, ray_cluster):
    root = tmp_path_factory.mktemp("prepare")
    # "=" runs in the sample: the 50 MB document of "=" * 199 runs becomes ~1.5M tokens, not ~50M
    tok_path = train_bpe(INTL * 30 + ["The quick brown fox jumps over the lazy dog. " * 20] * 30
                         + [("=" * 199 + " ") * 5] * 30, 400, root / "tok" / "tokenizer.json", show_progress=False)
    edge = pa.table({"text": pa.array([b"a good document", None, b"", b"  \n\t ", b"\xff\xfe broken",
                                       "second good one 🙂".encode()], pa.binary()).view(pa.string())})
    pq.write_table(edge, root / "edge.parquet")
    pq.write_table(pa.table({"text": INTL}), root / "intl.parquet")
    return root, tok_path


def _prepare(env, out: str, *overrides: str) -> tuple[int, dict | None]:
    root, tok = env
    argv = ["experiments/runs/prepare-default.yaml", f"tokenizer.path={tok}", f"data.output_dir={root / out}",
            f"data.cache_dir={root / 'cache'}", f"data.sources=[builtin:wiki-en,'file://{root / 'edge.parquet'}']",
            f"data.validation_sources={{intl: [{root / 'intl.parquet'}]}}", f"data.max_documents={WIKI_DOCS}",
            "data.tokenize_actors=1", *overrides]
    code = run_job(main, argv)
    manifest = root / out / "manifest.json"
    return code, json.loads(manifest.read_text()) if manifest.exists() else None


@pytest.fixture(scope="module")
def dec(env):
    """The decompose dataset, prepared once and shared by the tests that only read it."""
    code, m = _prepare(env, "dec", "data.tokenize_actors=2")  # two actors: order across the pool
    assert code == 0
    return m


def _bucket_tables(out: Path, manifest: dict) -> dict[str, pa.Table]:
    return {length: pa.concat_tables([pq.read_table(out / f) for f in b["files"]])
            for length, b in manifest["buckets"].items() if b["files"]}


def test_decompose_end_to_end(env, dec, capsys):
    root, tok_path = env
    m = dec
    assert m["format_version"] == 1 and m["mode"] == "decompose"
    tok = load_tokenizer(tok_path)
    assert m["tokenizer"]["eos_id"] == tok.token_to_id("<|endoftext|>") and m["tokenizer"]["vocab_size"] == 400

    # skipped rows, by reason, from the edge-case file
    assert m["skipped"] == {"empty": 1, "invalid_utf8": 1, "null": 1, "whitespace": 1}
    wiki, edge, intl = m["sources"]
    assert (wiki["rows"], edge["rows"], intl["rows"]) == (WIKI_DOCS, 6, len(INTL))
    assert edge["skipped"] == m["skipped"] and intl["role"] == "validation"
    assert edge["paths"] == [f"file://{root / 'edge.parquet'}"]  # a URI, passed to Ray Data untouched

    # the split is the stable hash of the wiki id (the same rule the tokenizer sample uses)
    ids = pq.read_table(wiki["paths"][0]).column("id").to_pylist()[:WIKI_DOCS]
    expected_val = sum(held_out(i, 0.02) for i in ids)
    assert m["validation"]["english"]["documents"] == expected_val + sum(
        held_out(t, 0.02) for t in ["a good document", "second good one 🙂"])
    assert m["train"]["documents"] == WIKI_DOCS + 2 - m["validation"]["english"]["documents"]

    # buckets: fixed-size uint32 rows of their length; counts match the manifest; every token is there
    tables = _bucket_tables(root / "dec", m)
    total = 0
    for length, table in tables.items():
        assert table.schema.field("tokens").type == pa.list_(pa.uint32(), int(length))
        assert table.num_rows == m["buckets"][length]["sequences"]
        assert m["buckets"][length]["tokens"] == table.num_rows * int(length)
        total += table.num_rows * int(length)
    assert set(m["buckets"]) == {str(2 ** k) for k in range(3, 12)}
    assert total + m["train"]["dropped_tokens"] == m["train"]["tokens"]
    assert m["train"]["dropped_tokens"] < 8
    assert m["train"]["bytes_per_token"] == pytest.approx(m["train"]["bytes"] / m["train"]["tokens"])
    assert m["train"]["bytes_per_token"] > 1.0

    # validation: one document per row, EOS appended, exact round trip of non-English text and emoji
    val = pq.read_table(root / "dec" / m["validation"]["intl"]["files"][0])
    assert val.schema.field("tokens").type == pa.list_(pa.uint32()) and val.num_rows == len(INTL)
    eos = m["tokenizer"]["eos_id"]
    for row, text, nbytes in zip(val.column("tokens").to_pylist(), INTL, val.column("num_bytes").to_pylist()):
        assert row[-1] == eos and tok.decode(row[:-1]) == text and nbytes == len(text.encode())
    assert not list(root.glob(".dec.tmp-*"))


def _files_sha256(root: Path) -> str:
    digest = hashlib.sha256()
    for path in sorted(p for p in root.rglob("*") if p.is_file() and p.name != "manifest.json"):
        data = path.read_bytes()
        digest.update(f"{path.relative_to(root).as_posix()}\0{len(data)}\0".encode() + data)
    return digest.hexdigest()


def test_rerun_is_a_noop_and_force_rebuilds_identically(env, dec, capsys):
    root, _ = env
    shutil.copytree(root / "dec", root / "idem")  # a complete dataset; output_dir is not in the hash
    before = {p.relative_to(root / "idem"): p.read_bytes() for p in (root / "idem").rglob("*.parquet")}
    capsys.readouterr()
    code, again = _prepare(env, "idem", "data.tokenize_actors=2")
    assert code == 0 and "is up to date" in capsys.readouterr().out
    assert again["created_at"] == dec["created_at"] and again["seconds"] == dec["seconds"]
    code, forced = _prepare(env, "idem", "--force")  # one actor instead of two: same bytes
    out = capsys.readouterr().out
    assert code == 0 and forced["config_hash"] == dec["config_hash"]
    assert "prepared" in out and "tokens/s" in out and "skipped: " in out  # the summary line
    after = {p.relative_to(root / "idem"): p.read_bytes() for p in (root / "idem").rglob("*.parquet")}
    assert before.keys() == after.keys() and before == after  # deterministic, byte for byte
    assert {k: v for k, v in forced.items() if k not in ("created_at", "seconds")} == \
        {k: v for k, v in dec.items() if k not in ("created_at", "seconds")}
    # the data's hash (the run tag yxanul.data_sha256) is equal where the manifest's own sha256 is not: every file
    # but the manifest, path and bytes in path order, recomputed here from the files
    assert forced["content_sha256"] == dec["content_sha256"] == _files_sha256(root / "idem")
    # a changed setting gives a new hash and replaces the dataset
    code, changed = _prepare(env, "idem", "data.max_bucket=256")
    assert code == 0 and changed["config_hash"] != dec["config_hash"] and "512" not in changed["buckets"]
    assert not (root / "idem" / "bucket=512").exists()
    assert changed["train"]["tokens"] == dec["train"]["tokens"]
    assert changed["content_sha256"] == _files_sha256(root / "idem") != dec["content_sha256"]  # other buckets


def test_packed_mode_is_the_token_stream_cut_into_rows(env):
    root, tok_path = env
    code, m = _prepare(env, "packed", "data.mode=packed", "data.seq_len=64", "data.validation_fraction=0")
    assert code == 0 and list(m["buckets"]) == ["64"]
    rows = _bucket_tables(root / "packed", m)["64"].column("tokens").combine_chunks().flatten().to_numpy()
    wiki = pq.read_table(m["sources"][0]["paths"][0]).column("text").to_pylist()[:WIKI_DOCS]
    texts = wiki + ["a good document", "second good one 🙂"]
    stream, _ = encode_documents(load_tokenizer(tok_path), texts, m["tokenizer"]["eos_id"])
    assert m["train"]["tokens"] == len(stream) and len(rows) == len(stream) // 64 * 64
    assert np.array_equal(rows, stream[:len(rows)])  # source order, EOS between documents


def test_bad_file_mid_read_errors_or_is_skipped(env, capsys):
    root, _ = env
    data = root / "mixed"
    data.mkdir()
    rng = np.random.default_rng(0)
    texts = ["".join(rng.choice(list("abcdefgh "), 200)) for _ in range(2000)]
    pq.write_table(pa.table({"text": texts}), data / "a-bad.parquet", compression="snappy")
    blob = bytearray((data / "a-bad.parquet").read_bytes())
    blob[150_000:150_064] = bytes(64)  # inside the dictionary page: footer fine, data corrupt
    (data / "a-bad.parquet").write_bytes(bytes(blob))
    pq.write_table(pa.table({"text": ["fine text here"] * 10}), data / "b-good.parquet")
    (data / "c-truncated.parquet").write_bytes((data / "b-good.parquet").read_bytes()[:100])
    common = [f"data.sources=[{data}]", "data.validation_sources={}", "data.tokenize_actors=1"]

    code, m = _prepare(env, "bad", *common, "data.on_bad_file=skip")
    assert code == 0 and m["skipped"]["bad_file"] == 2
    assert set(m["bad_files"]) == {str(data / "a-bad.parquet"), str(data / "c-truncated.parquet")}
    assert m["sources"][0]["rows"] == 10

    (data / "c-truncated.parquet").unlink()
    capsys.readouterr()
    code, _ = _prepare(env, "bad2", *common)
    err = capsys.readouterr().err
    assert code == 2 and f"error: {data / 'a-bad.parquet'} is not a readable parquet file" in err
    assert not (root / "bad2").exists() and not list(root.glob(".bad2.tmp-*"))


def test_a_single_50mb_document(env):
    root, _ = env
    doc = ("=" * 199 + " ") * 250_000 + " ".join(INTL)
    assert len(doc.encode()) > 50_000_000
    pq.write_table(pa.table({"text": [doc, "small one"]}), root / "big.parquet")
    code, m = _prepare(env, "big", f"data.sources=[{root / 'big.parquet'}]", "data.validation_sources={}",
                       "data.validation_fraction=0", "data.tokenize_actors=1")
    assert code == 0 and m["train"]["documents"] == 2 and m["train"]["bytes"] == len(doc.encode()) + 9
    assert m["buckets"]["2048"]["sequences"] >= m["train"]["tokens"] // 2048 - 1
    assert sum(b["tokens"] for b in m["buckets"].values()) + m["train"]["dropped_tokens"] == m["train"]["tokens"]


def test_installed_python_holds_out_whole_packages_and_counts_training_tokens(env):
    """builtin:installed-python through jobs.prepare: a package is on one side of the split only, the manifest
    lists the packages per side, the validation documents are exactly the held-out packages' files, and
    token_counts.npy (the unigram baseline's counts) sums to the training tokens."""
    root, _ = env
    fraction = 0.3
    code, m = _prepare(env, "pysrc", "data.sources=[builtin:installed-python]", "data.builtin_max_bytes=400000",
                       "data.validation_sources={}", f"data.validation_fraction={fraction}", "data.mode=packed",
                       "data.seq_len=256", "data.max_documents=null")
    assert code == 0
    [source] = m["sources"]
    corpus = source["corpus"]
    train_pkgs, val_pkgs = set(corpus["packages"]["train"]), set(corpus["packages"]["validation"])
    assert train_pkgs and val_pkgs and not train_pkgs & val_pkgs
    assert all(held_out(p, fraction) for p in val_pkgs) and not any(held_out(p, fraction) for p in train_pkgs)
    assert corpus["files"] == source["rows"] and corpus["bytes"] <= 400_000
    table = pq.read_table(source["paths"][0], columns=["package"])
    packages = table.column("package").to_pylist()
    assert m["validation"]["code"]["documents"] == sum(p in val_pkgs for p in packages)
    assert m["train"]["documents"] == sum(p in train_pkgs for p in packages)
    counts = np.load(root / "pysrc" / m["train"]["token_counts"], allow_pickle=False)
    assert counts.sum() == m["train"]["tokens"] and counts.size == m["tokenizer"]["vocab_size"]
