"""SuperBPE: stage-2 rules on the trained vocabulary, exact round trips, better compression than
BPE on held-out English, a plain tokenizer.json, and the published (OLMo2-SuperBPE) layout."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from tokenizers import Tokenizer

from tests.unit.test_tokenizer import ROUND_TRIP, _stdlib_texts
from yxanul.corpora import materialise
from yxanul.data.split import held_out
from yxanul.tokenizer import (
    EOS,
    STAGE1_REGEX,
    STAGE2_REGEX,
    TokenizerError,
    eos_id,
    load_tokenizer,
    read_meta,
    tokenizer_sha256,
    train_bpe,
    vocab_size,
)
from yxanul.tokenizer.superbpe import (
    MAX_WORDS_PER_TOKEN,
    default_transition,
    token_bytes,
    token_words,
    train_superbpe,
    violates_stage2_rules,
)

VOCAB, TRANSITION = 2048, 1536


@pytest.fixture(scope="module")
def wiki(tmp_path_factory) -> tuple[list[str], list[str]]:
    """(training texts ~600 kB, held-out texts) of builtin:wiki-en, split by the stable id hash."""
    table = pq.read_table(materialise("wiki-en", tmp_path_factory.mktemp("cache")))
    train, held, size = [], [], 0
    for doc_id, text in zip(table.column("id").to_pylist(), table.column("text").to_pylist()):
        if held_out(doc_id, 0.02):
            held.append(text)
        elif size < 600_000:
            train.append(text)
            size += len(text)
    return train, held


@pytest.fixture(scope="module")
def trained(wiki, tmp_path_factory) -> dict[str, Path]:
    train, _ = wiki
    texts = train + _stdlib_texts(15)
    out = tmp_path_factory.mktemp("tok")
    return {
        "bpe": train_bpe(texts, VOCAB, out / "bpe" / "tokenizer.json", show_progress=False),
        "superbpe": train_superbpe(texts, VOCAB, out / "superbpe" / "tokenizer.json",
                                   transition=TRANSITION, show_progress=False),
    }


def _superwords(tok: Tokenizer) -> list[bytes]:
    return [token_bytes(t) for t in tok.get_vocab() if t != EOS and " " in token_bytes(t).strip().decode("utf-8", "replace")]


def test_saved_file_is_plain_tokenizer_json_with_stage2_layout(trained) -> None:
    tok = Tokenizer.from_file(str(trained["superbpe"]))
    assert vocab_size(tok) == VOCAB
    assert eos_id(tok) == 0
    spec = json.loads(trained["superbpe"].read_text())
    assert spec["model"]["type"] == "BPE"
    split, byte_level = spec["pre_tokenizer"]["pretokenizers"]
    assert split["type"] == "Split" and split["pattern"]["Regex"] == STAGE2_REGEX
    assert split["behavior"] == "Isolated"
    assert byte_level == {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True, "use_regex": False}
    assert spec["decoder"]["type"] == "ByteLevel"
    # the stage-1 merges come first, unchanged: the first (t - 257) merges equal a stage-1-only run
    meta = read_meta(trained["superbpe"])
    assert meta["kind"] == "superbpe" and meta["transition"] == TRANSITION
    assert meta["stage1_vocab_size"] == TRANSITION and meta["stage1_regex"] == STAGE1_REGEX
    assert meta["sha256"] == tokenizer_sha256(trained["superbpe"])
    assert len(spec["model"]["merges"]) == meta["stage1_vocab_size"] - 257 + meta["stage2_merges"]


def test_stage2_learned_superwords(trained) -> None:
    tok = load_tokenizer(trained["superbpe"])
    superwords = _superwords(tok)
    assert len(superwords) > 50, "stage 2 should learn tokens that cross a space"
    assert b" of the" in superwords or b" in the" in superwords
    # plain BPE never crosses a space between words
    assert _superwords(load_tokenizer(trained["bpe"])) == []


def test_stage2_rules_hold_on_the_whole_vocabulary(trained) -> None:
    tok = load_tokenizer(trained["superbpe"])
    raws = [token_bytes(t) for t in tok.get_vocab() if t != EOS]
    assert max(token_words(r) for r in raws) <= MAX_WORDS_PER_TOKEN
    assert not [r for r in raws if b": " in r]


def test_stage2_rules_stop_merges_a_repetitive_corpus_would_make(tmp_path: Path) -> None:
    """Phrases repeated hundreds of times would become whole-phrase tokens without the rules."""
    texts = ["the cat sat on the mat with a hat and a bat. Note: keep it short.\n"] * 300
    texts += [f"entry {i}: the value of item {i} is here. key: value\n" for i in range(300)]
    path = train_superbpe(texts, 700, tmp_path / "tokenizer.json", transition=300, show_progress=False)
    tok = load_tokenizer(path)
    raws = [token_bytes(t) for t in tok.get_vocab() if t != EOS]
    assert max(token_words(r) for r in raws) == MAX_WORDS_PER_TOKEN  # the limit is reached, not passed
    assert not [r for r in raws if b": " in r]
    assert b"Note:" in raws or b" Note:" in raws or b". Note:" in raws
    assert read_meta(path)["stage2_dropped"]["words"] > 0
    for text in texts[:2] + texts[-2:]:
        assert tok.decode(tok.encode(text).ids) == text


def test_encoding_never_produces_a_forbidden_token(trained) -> None:
    tok = load_tokenizer(trained["superbpe"])
    text = ("Note: the city of the United States of America is in the north of the country. "
            "Key: value: other: thing. one two three four five six seven eight nine ten")
    for token in tok.encode(text).tokens:
        assert violates_stage2_rules(token_bytes(token)) is None, token


@pytest.mark.parametrize("text", ROUND_TRIP + [
    "The history of the United States of America is the history of the people of the country.",
    "key: value\nother:  two spaces\t: tab",
])
def test_round_trip_is_exact(trained, text: str) -> None:
    tok = load_tokenizer(trained["superbpe"])
    assert tok.decode(tok.encode(text).ids) == text


def test_superbpe_beats_bpe_on_held_out_english(trained, wiki) -> None:
    _, held = wiki
    text = "\n\n".join(held[:200])
    chars_per_token = {name: len(text) / len(load_tokenizer(path).encode(text).ids)
                       for name, path in trained.items()}
    # measured here: +5.5% at this tiny scale (1.1 MB, 2k vocabulary); +19% at 16k on 8 MB (docs/benchmarks.md)
    assert chars_per_token["superbpe"] > chars_per_token["bpe"] * 1.03, chars_per_token


def test_transition_must_be_inside_the_vocabulary(tmp_path: Path) -> None:
    with pytest.raises(TokenizerError, match="transition=2048 must be at least 258 and below"):
        train_superbpe(["a b c"], 2048, tmp_path / "t.json", transition=2048, show_progress=False)
    assert not (tmp_path / "t.json").exists()
    assert default_transition(200_000) == 180_000


def test_rule_helpers() -> None:
    assert token_words(b" of the United States") == 4
    assert violates_stage2_rules(b" of the United States") is None
    assert violates_stage2_rules(b" of the United States of") == "words"
    assert violates_stage2_rules(b"Note: the") == "colon"
    assert violates_stage2_rules(b"http://x") is None
    assert token_bytes("ĠtheĊ") == b" the\n"


def _as_published_layout(src: Path, dst: Path) -> Path:
    """Rewrite a SuperBPE tokenizer.json the way the UW/OLMo2-8B-SuperBPE files are laid out: merges
    as "a b" strings, EOS and a pad token as added tokens at the end of the vocabulary, a ByteLevel
    post-processor."""
    spec = json.loads(src.read_text())
    vocab = spec["model"]["vocab"]
    del vocab[EOS]
    vocab = {token: idx - 1 for token, idx in vocab.items()}
    eos, pad = len(vocab), len(vocab) + 1
    vocab[EOS], vocab["<|pad|>"] = eos, pad
    spec["model"]["vocab"] = vocab
    spec["model"]["merges"] = [f"{a} {b}" for a, b in spec["model"]["merges"]]
    added = dict(single_word=False, lstrip=False, rstrip=False, normalized=False, special=True)
    spec["added_tokens"] = [{"id": eos, "content": EOS, **added}, {"id": pad, "content": "<|pad|>", **added}]
    spec["post_processor"] = {"type": "ByteLevel", "add_prefix_space": True, "trim_offsets": False,
                              "use_regex": True}
    dst.parent.mkdir(parents=True, exist_ok=True)
    dst.write_text(json.dumps(spec, ensure_ascii=False))
    return dst


def test_loads_the_published_superbpe_layout(trained, tmp_path: Path) -> None:
    published = _as_published_layout(trained["superbpe"], tmp_path / "olmo2-superbpe" / "tokenizer.json")
    tok = load_tokenizer(published.parent)
    ours = load_tokenizer(trained["superbpe"])
    assert eos_id(tok) == VOCAB - 1 and vocab_size(tok) == VOCAB + 1
    text = "The history of the United States of America: a summary of the war in the north."
    assert tok.encode(text).tokens == ours.encode(text).tokens
    assert tok.decode(tok.encode(text).ids) == text


def test_job_trains_superbpe_from_config(tmp_path: Path) -> None:
    from jobs.tokenizer import main
    from yxanul.cli import run_job

    out = tmp_path / "sb" / "tokenizer.json"
    code = run_job(main, ["experiments/runs/tokenizer-superbpe-16k.yaml", f"tokenizer.path={out}",
                          "tokenizer.vocab_size=1024", "tokenizer.transition=800",
                          "tokenizer.train_sample_bytes=300k", f"data.cache_dir={tmp_path / 'cache'}",
                          "--quiet"])
    assert code == 0
    meta = read_meta(out)
    assert meta["kind"] == "superbpe" and meta["vocab_size"] == 1024 and meta["transition"] == 800
    assert set(meta["sources"]) == {"builtin:wiki-en", "builtin:python-code"}
    assert 290_000 <= meta["train_bytes"] <= 300_000


def test_training_is_deterministic(tmp_path: Path) -> None:
    """Same text, same settings -> byte-identical tokenizer.json (dataset manifests key on its sha256)."""
    texts = _stdlib_texts(20)
    first, second = (train_superbpe(texts, 900, tmp_path / name / "tokenizer.json", transition=700,
                                    show_progress=False) for name in ("a", "b"))
    assert tokenizer_sha256(first) == tokenizer_sha256(second)
