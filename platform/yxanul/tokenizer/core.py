"""The tokenizer format: the EOS token, the pre-tokenization regexes, loading (file, folder, hub id),
hashing, and saving a trained tokenizer with its ``tokenizer.meta.json`` sidecar."""

from __future__ import annotations

import hashlib
import json
import os
import re
import socket
import time
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from tokenizers import Tokenizer

from yxanul.errors import ConfigError, first_line
from yxanul.files import atomic_write

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
        raise TokenizerError(
            f"{path} is not a valid tokenizer.json ({first_line(exc)}): point tokenizer.path at a file written by "
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
        return None, f"not a valid hub id: {first_line(exc)}"
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
        return None, f"{type(exc).__name__}: {first_line(str(exc))}"


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



def meta_path(path: Path) -> Path:
    """Sidecar path of a tokenizer file: ``.../tokenizer.json`` -> ``.../tokenizer.meta.json``."""
    return path.with_name(path.name.removesuffix(".json") + META_SUFFIX)


def save_tokenizer(tok: Tokenizer, out_path: Path, facts: dict[str, Any]) -> Path:
    """Write ``tok`` to ``out_path`` atomically, then its sidecar (sha256, vocabulary, ``facts``)."""
    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    blob = tok.to_str(pretty=False).encode("utf-8")
    atomic_write(out_path, blob)
    meta = {"path": out_path.name, "sha256": hashlib.sha256(blob).hexdigest(),
            "vocab_size": vocab_size(tok), "eos": EOS, "eos_id": eos_id(tok),
            "created_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "tokenizers_version": _tokenizers_version(), **facts}
    atomic_write(meta_path(out_path), (json.dumps(meta, indent=2) + "\n").encode("utf-8"))
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
