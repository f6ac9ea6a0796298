"""yxanul.tokenizer: loading (files, folders, hub ids offline), byte-level BPE training, sidecar."""

from __future__ import annotations

import hashlib
import json
import sysconfig
from pathlib import Path

import pytest
from tokenizers import Tokenizer, pre_tokenizers

from yxanul.errors import ConfigError, YxanulError
from yxanul.tokenizer import (
    EOS,
    TokenizerError,
    eos_id,
    load_tokenizer,
    read_meta,
    tokenizer_sha256,
    train_bpe,
    vocab_size,
)

ROUND_TRIP = [
    "The quick brown fox jumps over the lazy dog. It's 1,234,567.89 dollars!",
    "def f(x):\n    return {'a': [x, 2]}  # comment\n\n\nclass A:\n\tpass\n",
    "emoji 😀🎉👩‍👩‍👧 and flags 🇫🇷",
    "日本語のテキスト、中文文本，한국어 텍스트",
    "     leading spaces",
    "trailing spaces     ",
    "tabs\t\tand\t\t\ttabs\t",
    "\n\n\nnewlines\r\n\r\nwindows\n",
    "  mixed \t \n \u00a0 nbsp\u2009thin\u3000ideographic  ",
    "",
    " ",
    "ÿ\x00\x01control\x7f",
]


def _stdlib_texts(limit: int = 40) -> list[str]:
    files = sorted(Path(sysconfig.get_paths()["stdlib"]).glob("*.py"))[:limit]
    return [f.read_text(encoding="utf-8", errors="replace") for f in files]


@pytest.fixture(scope="module")
def bpe_path(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("bpe") / "tok" / "tokenizer.json"
    return train_bpe(_stdlib_texts(), vocab_size=600, out_path=out, show_progress=False)


def test_train_bpe_writes_loadable_file_with_eos_at_zero(bpe_path: Path) -> None:
    tok = Tokenizer.from_file(str(bpe_path))
    assert vocab_size(tok) == 600
    assert eos_id(tok) == 0
    assert tok.id_to_token(0) == EOS
    # the 256 byte-level symbols follow EOS, so nothing is ever unknown
    assert all(tok.token_to_id(ch) is not None for ch in pre_tokenizers.ByteLevel.alphabet())
    assert tok.encode("def").ids and len(tok.encode("def return")) < len("def return")


def test_sidecar_records_sha256_and_training_facts(bpe_path: Path) -> None:
    meta = read_meta(bpe_path)
    assert meta is not None
    assert meta["sha256"] == hashlib.sha256(bpe_path.read_bytes()).hexdigest() == tokenizer_sha256(bpe_path)
    assert tokenizer_sha256(bpe_path.parent) == meta["sha256"]
    assert meta["kind"] == "bpe" and meta["vocab_size"] == 600 and meta["eos_id"] == 0
    assert meta["train_bytes"] == sum(len(t.encode()) for t in _stdlib_texts())
    assert meta["train_documents"] == 40
    # no temporary files left next to the outputs
    assert sorted(p.name for p in bpe_path.parent.iterdir()) == ["tokenizer.json", "tokenizer.meta.json"]


@pytest.mark.parametrize("text", ROUND_TRIP)
def test_round_trip_is_exact(bpe_path: Path, text: str) -> None:
    tok = load_tokenizer(bpe_path)
    assert tok.decode(tok.encode(text).ids) == text


def test_load_from_folder_and_file_agree(bpe_path: Path) -> None:
    a, b = load_tokenizer(bpe_path), load_tokenizer(str(bpe_path.parent))
    assert a.to_str() == b.to_str()


def test_missing_path_offline_names_both_options(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    import huggingface_hub.constants as constants
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    with pytest.raises(TokenizerError) as info:
        load_tokenizer("no-such-org/no-such-tokenizer")
    msg = str(info.value)
    assert "no file at no-such-org/no-such-tokenizer" in msg
    assert "hub id no-such-org/no-such-tokenizer could not be fetched" in msg
    assert "tokenizer.json path" in msg and "python -m jobs.tokenizer CONFIG" in msg
    assert isinstance(info.value, ConfigError) and isinstance(info.value, YxanulError)


def test_hub_id_from_the_local_cache_works_offline(bpe_path: Path, tmp_path: Path, monkeypatch) -> None:
    """A hub id downloaded before (Hugging Face cache layout) loads with HF_HUB_OFFLINE set."""
    import huggingface_hub.constants as constants
    cache = tmp_path / "hub"
    snapshot = cache / "models--some-org--some-tokenizer" / "snapshots" / ("0" * 40)
    snapshot.mkdir(parents=True)
    (snapshot / "tokenizer.json").write_bytes(bpe_path.read_bytes())
    (cache / "models--some-org--some-tokenizer" / "refs").mkdir()
    (cache / "models--some-org--some-tokenizer" / "refs" / "main").write_text("0" * 40)
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))
    tok = load_tokenizer("some-org/some-tokenizer")
    assert tok.to_str() == load_tokenizer(bpe_path).to_str()


def test_unreachable_hub_fails_fast(tmp_path: Path, monkeypatch) -> None:
    """Not offline-flagged but no network (this machine): the connection probe answers, no retries."""
    import huggingface_hub.constants as constants
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setattr(constants, "ENDPOINT", "http://127.0.0.1:9")  # discard port: refused
    with pytest.raises(TokenizerError, match=r"could not be fetched \(offline\? 127\.0\.0\.1:9 unreachable"):
        load_tokenizer("some-org/some-name")


def test_path_that_is_not_a_hub_id(tmp_path: Path) -> None:
    missing = tmp_path / "nope" / "tokenizer.json"
    with pytest.raises(TokenizerError, match="no file at .*nope/tokenizer.json.*not a hub id"):
        load_tokenizer(missing)


def test_corrupt_file_is_named(tmp_path: Path) -> None:
    bad = tmp_path / "tokenizer.json"
    bad.write_text('{"version": "1.0", "model": ')
    with pytest.raises(TokenizerError, match=r"tokenizer.json is not a valid tokenizer.json"):
        load_tokenizer(bad)


def test_eos_missing_is_a_clear_error() -> None:
    from tokenizers.models import WordLevel

    tok = Tokenizer(WordLevel({"a": 0, "[UNK]": 1}, unk_token="[UNK]"))
    with pytest.raises(TokenizerError, match=r"no <\|endoftext\|> token"):
        eos_id(tok)


def test_empty_training_text_is_an_error(tmp_path: Path) -> None:
    out = tmp_path / "tokenizer.json"
    with pytest.raises(TokenizerError, match="no training text"):
        train_bpe(["", ""], vocab_size=300, out_path=out, show_progress=False)
    assert not out.exists()


def test_too_small_vocab_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(TokenizerError, match="too small"):
        train_bpe(["abc"], vocab_size=100, out_path=tmp_path / "t.json", show_progress=False)


def test_retraining_replaces_atomically(tmp_path: Path) -> None:
    out = tmp_path / "tokenizer.json"
    train_bpe(["aaaa bbbb"] * 10, vocab_size=270, out_path=out, show_progress=False)
    first = tokenizer_sha256(out)
    train_bpe(["cccc dddd eeee"] * 10, vocab_size=270, out_path=out, show_progress=False)
    assert tokenizer_sha256(out) != first
    assert json.loads((tmp_path / "tokenizer.meta.json").read_text())["sha256"] == tokenizer_sha256(out)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["tokenizer.json", "tokenizer.meta.json"]
