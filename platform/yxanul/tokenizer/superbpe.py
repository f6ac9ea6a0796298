"""SuperBPE training (arXiv 2503.13423) with stock Hugging Face ``tokenizers``.

Stage 1 is ordinary byte-level BPE under the word-level regex (:data:`yxanul.tokenizer.core.STAGE1_REGEX`)
up to ``transition`` tokens. Stage 2 keeps those merges and learns more on text pre-tokenized only
by :data:`yxanul.tokenizer.core.STAGE2_REGEX`, so merges may cross single spaces ("superwords"), until the
vocabulary holds ``vocab_size`` tokens. Stage 2 is done with the stock trainer:

1. encode every training text with the stage-1 merges under the stage-2 pre-tokenizer: each
   stage-2 pre-token becomes a sequence of stage-1 token ids;
2. cut those sequences between a token ending in ":" and one starting with a space, so no merge can
   ever join ": " (a stage-1 token never contains ": " itself: the stage-1 regex keeps spaces out
   of punctuation runs);
3. write each stage-1 id as one private-use character (``U+E000 + id``; any scalar value above the
   surrogates works, so vocabularies past 6400 tokens still map one id to one character) and train
   a plain BPE on those strings, with no pre-tokenizer;
4. translate each learned merge back to byte-level strings, drop merges whose token would span more
   than ``max_words`` words (whitespace-separated runs) and merges that build on a dropped token,
   and append the survivors after the stage-1 merges until the vocabulary is full.

Because every stage-2 merge ranks after every stage-1 merge and no stage-2 token is an operand of a
stage-1 merge, a stock BPE model applying the combined merge list by rank reproduces step 1 then
the stage-2 merges: the result is an ordinary ``tokenizer.json`` (BPE + Split(stage-2 regex) +
ByteLevel), the layout of the published ``UW/OLMo2-8B-SuperBPE-*`` tokenizers.
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from tokenizers import Tokenizer
from tokenizers.models import BPE
from tokenizers.trainers import BpeTrainer

from yxanul.tokenizer.bpe import new_byte_level_bpe, train_stage1
from yxanul.tokenizer.core import EOS, STAGE1_REGEX, STAGE2_REGEX, TokenizerError, save_tokenizer

MAX_WORDS_PER_TOKEN = 4
"""No stage-2 token spans more than this many whitespace-separated words (the paper's limit)."""

_PUA_BASE = 0xE000
_ENCODE_BATCH_CHARS = 1 << 18


def _batches(texts: list[str], max_chars: int) -> Iterable[list[str]]:
    """Consecutive texts in groups of about ``max_chars`` characters (progress granularity)."""
    batch: list[str] = []
    size = 0
    for text in texts:
        batch.append(text)
        size += len(text)
        if size >= max_chars:
            yield batch
            batch, size = [], 0
    if batch:
        yield batch


def default_transition(vocab_size: int) -> int:
    """Transition point when none is configured: 90% of the vocabulary (the paper's best, t=180k of 200k)."""
    return max(258, int(round(vocab_size * 0.9)))


def bytes_to_unicode() -> dict[int, str]:
    """GPT-2's reversible byte -> printable character map used by the ByteLevel pre-tokenizer."""
    printable = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) \
        + list(range(ord("®"), ord("ÿ") + 1))
    chars = printable[:]
    extra = 0
    for b in range(256):
        if b not in printable:
            printable.append(b)
            chars.append(256 + extra)
            extra += 1
    return {b: chr(c) for b, c in zip(printable, chars)}


_BYTE_DECODER = {ch: b for b, ch in bytes_to_unicode().items()}


def token_bytes(token: str) -> bytes:
    """Raw bytes of a byte-level token string (``"Ġthe"`` -> ``b" the"``)."""
    return bytes(_BYTE_DECODER[ch] for ch in token)


def token_words(raw: bytes) -> int:
    """Words a token spans: its whitespace-separated runs (``b" of the"`` -> 2)."""
    return len(raw.split())


def violates_stage2_rules(raw: bytes, max_words: int = MAX_WORDS_PER_TOKEN) -> str | None:
    """Why a token may not exist (``"words"`` or ``"colon"``), or None when it is allowed."""
    if b": " in raw:
        return "colon"
    if token_words(raw) > max_words:
        return "words"
    return None


def _log(message: str) -> None:
    print(f"[superbpe] {message}", file=sys.stderr, flush=True)


def _stage2_sequences(stage1: Tokenizer, texts: list[str], id_to_token: list[str],
                      show_progress: bool) -> list[str]:
    """Stage-1 ids of every stage-2 pre-token, as private-use strings, cut at ": " junctions."""
    d = json.loads(stage1.to_str())
    d["pre_tokenizer"] = json.loads(new_byte_level_bpe(STAGE2_REGEX).to_str())["pre_tokenizer"]
    encoder = Tokenizer.from_str(json.dumps(d))

    raws = [token_bytes(t) for t in id_to_token]
    ends_colon = [r.endswith(b":") for r in raws]
    starts_space = [r.startswith(b" ") for r in raws]
    pua = [chr(_PUA_BASE + i) for i in range(len(id_to_token))]
    eos = stage1.token_to_id(EOS)

    total = sum(len(t) for t in texts)
    bar = None
    if show_progress:
        from tqdm import tqdm

        # a log file (no terminal) gets a line every 10 s instead of a redrawn bar
        bar = tqdm(total=total, unit="char", unit_scale=True, desc="[superbpe] stage 2 encode",
                   file=sys.stderr, mininterval=0.5 if sys.stderr.isatty() else 10.0)
    sequences: list[str] = []
    for batch in _batches(texts, _ENCODE_BATCH_CHARS):
        for enc in encoder.encode_batch(batch, add_special_tokens=False):
            segment: list[int] = []
            prev_word: int | None = -1
            for token_id, word in zip(enc.ids, enc.word_ids):
                if word != prev_word or word is None or token_id == eos or (
                        segment and ends_colon[segment[-1]] and starts_space[token_id]):
                    if len(segment) > 1:  # one token has no pair to merge
                        sequences.append("".join([pua[i] for i in segment]))
                    segment = []
                    prev_word = word
                if word is None or token_id == eos:
                    continue
                segment.append(token_id)
            if len(segment) > 1:
                sequences.append("".join([pua[i] for i in segment]))
        if bar is not None:
            bar.update(sum(len(t) for t in batch))
    if bar is not None:
        bar.close()
    return sequences


def _train_pua_merges(sequences: list[str], n_merges: int, min_frequency: int,
                      show_progress: bool) -> list[tuple[str, str]]:
    alphabet = {ch for seq in sequences for ch in seq}
    tok = Tokenizer(BPE())
    trainer = BpeTrainer(vocab_size=len(alphabet) + n_merges, min_frequency=min_frequency,
                         show_progress=show_progress, special_tokens=[])
    tok.train_from_iterator(sequences, trainer=trainer)
    merges = json.loads(tok.to_str())["model"]["merges"]
    return [_pair(m) for m in merges]


def _pair(merge: Any) -> tuple[str, str]:
    """A merge as serialised by tokenizers: ``["a", "b"]`` (current) or ``"a b"`` (older files)."""
    if isinstance(merge, str):
        left, right = merge.split(" ", 1)
        return left, right
    return merge[0], merge[1]


def _translate(pua_merges: list[tuple[str, str]], id_to_token: list[str], vocab: dict[str, int],
               seen_pairs: set[tuple[str, str]], vocab_size: int, max_words: int,
               ) -> tuple[list[list[str]], dict[str, int]]:
    """Append allowed stage-2 merges (as byte-level strings) to ``vocab`` until it holds ``vocab_size``."""
    cache: dict[str, str] = {}

    def to_bytelevel(pua_string: str) -> str:
        text = cache.get(pua_string)
        if text is None:
            text = "".join(id_to_token[ord(ch) - _PUA_BASE] for ch in pua_string)
            cache[pua_string] = text
        return text

    kept_tokens: set[str] = set()
    merges: list[list[str]] = []
    dropped = {"words": 0, "colon": 0, "dependent": 0, "duplicate": 0}
    for left, right in pua_merges:
        if len(vocab) >= vocab_size:
            break
        if (len(left) > 1 and left not in kept_tokens) or (len(right) > 1 and right not in kept_tokens):
            dropped["dependent"] += 1
            continue
        a, b = to_bytelevel(left), to_bytelevel(right)
        why = violates_stage2_rules(token_bytes(a + b), max_words)
        if why:
            dropped[why] += 1
            continue
        kept_tokens.add(left + right)
        if (a, b) in seen_pairs:  # two private-use spellings of the same bytes
            dropped["duplicate"] += 1
            continue
        seen_pairs.add((a, b))
        merges.append([a, b])
        if a + b not in vocab:
            vocab[a + b] = len(vocab)
    return merges, dropped


def train_superbpe(texts: Iterable[str], vocab_size: int, out_path: Path, *, transition: int | None = None,
                   show_progress: bool = True, min_frequency: int = 2,
                   max_words: int = MAX_WORDS_PER_TOKEN, sources: dict[str, Any] | None = None) -> Path:
    """Train SuperBPE: stage 1 to ``transition`` tokens, stage 2 to ``vocab_size``; write ``out_path``.

    ``transition`` defaults to :func:`default_transition`. Writes the tokenizer atomically with its
    ``tokenizer.meta.json`` sidecar (stage sizes, dropped merges, seconds) and returns ``out_path``.
    """
    transition = default_transition(vocab_size) if transition is None else transition
    if not 258 <= transition < vocab_size:
        raise TokenizerError(
            f"tokenizer.transition={transition} must be at least 258 and below tokenizer.vocab_size="
            f"{vocab_size} (e.g. {default_transition(vocab_size)}, 90% of the vocabulary)")
    start = time.perf_counter()
    corpus = [t for t in texts if isinstance(t, str) and t]
    if not corpus:
        raise TokenizerError("no training text: every sampled document was empty; check data.sources")
    train_bytes = sum(len(t.encode("utf-8")) for t in corpus)

    _log(f"stage 1: byte-level BPE to {transition} tokens on {train_bytes / 1e6:.2f} MB "
         f"({len(corpus)} documents)")
    stage1 = train_stage1(corpus, transition, show_progress=show_progress, min_frequency=min_frequency)
    stage1_seconds = time.perf_counter() - start
    d = json.loads(stage1.to_str())
    vocab: dict[str, int] = dict(d["model"]["vocab"])
    id_to_token = [""] * len(vocab)
    for token, idx in vocab.items():
        id_to_token[idx] = token
    stage1_merges = [list(_pair(m)) for m in d["model"]["merges"]]

    _log(f"stage 1: {len(vocab)} tokens in {stage1_seconds:.1f} s; stage 2: encoding with the "
         "superword pre-tokenizer")
    sequences = _stage2_sequences(stage1, corpus, id_to_token, show_progress)
    need = vocab_size - len(vocab)
    request = int(need * 1.25) + 64
    while True:
        _log(f"stage 2: learning up to {request} merges on {len(sequences)} multi-token pre-tokens")
        pua_merges = _train_pua_merges(sequences, request, min_frequency, show_progress)
        trial_vocab = dict(vocab)
        merges, dropped = _translate(pua_merges, id_to_token, trial_vocab,
                                     {tuple(m) for m in stage1_merges}, vocab_size, max_words)
        exhausted = len(pua_merges) < request
        if len(trial_vocab) >= vocab_size or exhausted:
            break
        request *= 2  # too many merges were dropped by the word rules: learn more and filter again
    vocab = trial_vocab
    _log(f"stage 2: kept {len(merges)} merges; dropped {dropped['words']} over {max_words} words, "
         f"{dropped['colon']} with ': ', {dropped['dependent']} built on dropped tokens, "
         f"{dropped['duplicate']} duplicates")
    if len(vocab) < vocab_size:
        _log(f"warning: the training text supports only {len(vocab)} tokens (asked {vocab_size}) at "
             f"min_frequency={min_frequency}; give more text (tokenizer.train_sample_bytes)")

    d["pre_tokenizer"] = json.loads(new_byte_level_bpe(STAGE2_REGEX).to_str())["pre_tokenizer"]
    d["model"]["vocab"] = vocab
    d["model"]["merges"] = stage1_merges + merges
    tok = Tokenizer.from_str(json.dumps(d))
    facts: dict[str, Any] = {
        "kind": "superbpe", "transition": transition, "stage1_vocab_size": len(id_to_token),
        "stage1_regex": STAGE1_REGEX, "regex": STAGE2_REGEX, "max_words_per_token": max_words,
        "stage2_merges": len(merges), "stage2_dropped": dropped, "train_bytes": train_bytes,
        "train_documents": len(corpus), "min_frequency": min_frequency,
        "seconds": round(time.perf_counter() - start, 3), "stage1_seconds": round(stage1_seconds, 3),
    }
    if sources is not None:
        facts["sources"] = sources
    return save_tokenizer(tok, Path(out_path), facts)
