"""The Yxanul decoder: one single-device, precision-agnostic model.

Decoder-only transformer: factorized token embedding (vocab x r, then r x hidden; r=0 is a plain
embedding), pre-norm blocks of grouped-query causal attention with RoPE and a SwiGLU MLP, RMSNorm
(eps 1e-6), final norm, and an output head (untied, or tied to a plain embedding). Shapes follow
Hugging Face ``LlamaForCausalLM`` exactly (rotate-half RoPE, RMSNorm in fp32), so weights export to
it (:mod:`yxanul.export`) and a test checks the logits match.

The vocabulary is padded up to a multiple of 128 (FP8 GEMMs need dims divisible by 16; tensor cores
like multiples of 128). Padded logits are set to -inf in :meth:`Yxanul.forward` and excluded from
the loss, so they never win.

Precision is not this module's business: :mod:`yxanul.precision` swaps the linear layers named by
:meth:`Yxanul.linear_names` and owns the autocast context. The loss lives here too, in one implementation
of the chunked cross-entropy: :func:`cross_entropy` over given logits (the fp32 copy of a 200k-wide logit row
exists for one chunk of tokens at a time), and :func:`linear_cross_entropy`, the head fused with it, which
never holds the whole tokens x vocabulary logits at all. ``model(tokens, targets=targets)`` returns the summed
loss through the head path ``model.head_chunk_tokens`` chooses; training, validation and the memory
measurement all take it.
"""

from __future__ import annotations

import contextlib
import inspect
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.attention import SDPBackend, sdpa_kernel

from yxanul.config import LAYER_GROUPS, ModelConfig
from yxanul.errors import ConfigError
from yxanul.profiling import LOSS_REGION

__all__ = [
    "IGNORE_INDEX",
    "VOCAB_MULTIPLE",
    "ParameterCount",
    "RMSNorm",
    "Yxanul",
    "attention_priority",
    "bits_per_byte",
    "cross_entropy",
    "linear_cross_entropy",
    "next_token_targets",
    "padded_vocab_size",
    "parameter_count",
    "resolve_head_chunk_tokens",
    "resolve_vocab_size",
]

VOCAB_MULTIPLE = 128
"""The embedding and head have ``padded_vocab_size(vocab)`` rows, a multiple of this."""
IGNORE_INDEX = -100
"""Target value that contributes nothing to the loss (the last position of every sequence)."""
HEAD_CHUNK_AUTO_TOKENS = 8192
"""``model.head_chunk_tokens: auto`` chunks the head by this many tokens (when it chunks at all)."""
HEAD_CHUNK_AUTO_MIN_COLUMNS = 65536
"""``model.head_chunk_tokens: auto`` chunks heads with at least this many (padded) vocabulary columns: there the
whole logits of a 32k-token micro-batch are 4 GiB or more in BF16 (13 GB at 200k), before any fp32 copy or FP8
gradient. Below it, the plain head until the GPU measurement (docs/benchmarks.md) says otherwise."""


def padded_vocab_size(vocab_size: int, multiple: int = VOCAB_MULTIPLE) -> int:
    """``vocab_size`` rounded up to a multiple of ``multiple`` (200005 -> 200064)."""
    return -(-vocab_size // multiple) * multiple


def resolve_head_chunk_tokens(cfg: ModelConfig, padded_vocab: int) -> int:
    """Tokens per chunk of the fused head + loss, 0 for the plain head (``model.head_chunk_tokens``)."""
    if cfg.head_chunk_tokens != "auto":
        return int(cfg.head_chunk_tokens)
    return HEAD_CHUNK_AUTO_TOKENS if padded_vocab >= HEAD_CHUNK_AUTO_MIN_COLUMNS else 0


def resolve_vocab_size(cfg: ModelConfig, vocab_size: int | None = None) -> int:
    """The tokenizer vocabulary the model is built for: ``vocab_size`` if given, else ``model.vocab_size``."""
    if vocab_size is not None and cfg.vocab_size is not None and vocab_size != cfg.vocab_size:
        raise ConfigError(
            f"model.vocab_size={cfg.vocab_size} disagrees with the tokenizer's vocabulary of {vocab_size}; "
            "remove model.vocab_size or use the matching tokenizer"
        )
    resolved = vocab_size if vocab_size is not None else cfg.vocab_size
    if resolved is None:
        raise ConfigError("model.vocab_size is not set and no tokenizer vocabulary was given; set model.vocab_size=N")
    return int(resolved)


@dataclass(frozen=True)
class ParameterCount:
    """Exact parameter counts of a model shape (padded vocabulary included)."""

    total: int
    embedding: int
    """Token embedding (and its r x hidden projection when factorized)."""
    blocks: int
    """All transformer blocks (attention, MLP, norms)."""
    head: int
    """Output head (0 when tied to the embedding)."""
    final_norm: int

    @property
    def non_embedding(self) -> int:
        """Everything but the token embedding (the head counts, as it is a full matmul)."""
        return self.total - self.embedding


def parameter_count(cfg: ModelConfig, vocab_size: int | None = None) -> ParameterCount:
    """Exact number of parameters of ``Yxanul(cfg, vocab_size)``, computed without building it."""
    vocab = padded_vocab_size(resolve_vocab_size(cfg, vocab_size))
    h, hd = cfg.hidden, cfg.hidden // cfg.n_heads
    embedding = vocab * cfg.embed_rank + cfg.embed_rank * h if cfg.embed_rank else vocab * h
    attn = h * (cfg.n_heads + 2 * cfg.n_kv_heads) * hd + cfg.n_heads * hd * h
    mlp = h * 2 * cfg.ffn_hidden + cfg.ffn_hidden * h
    blocks = cfg.n_layers * (attn + mlp + 2 * h)
    head = 0 if cfg.tie_embeddings else vocab * h
    total = embedding + blocks + head + h
    return ParameterCount(total=total, embedding=embedding, blocks=blocks, head=head, final_norm=h)


# ---------------------------------------------------------------------------------------------------
# Layers


class RMSNorm(nn.Module):
    """RMSNorm computed in fp32 whatever the input dtype (as Hugging Face Llama does)."""

    def __init__(self, dim: int, eps: float = 1e-6) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        dtype = x.dtype
        x32 = x.float()
        x32 = x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * x32.to(dtype)


def _rope_tables(positions: int, head_dim: int, theta: float, device: torch.device | None = None
                 ) -> tuple[torch.Tensor, torch.Tensor]:
    """cos, sin of shape (positions, head_dim) in fp32, rotate-half layout."""
    inv_freq = 1.0 / (theta ** (torch.arange(0, head_dim, 2, dtype=torch.int64, device=device).float() / head_dim))
    t = torch.arange(positions, dtype=torch.int64, device=device).float()
    freqs = torch.outer(t, inv_freq)  # (T, hd/2)
    emb = torch.cat((freqs, freqs), dim=-1)  # (T, hd)
    return emb.cos(), emb.sin()


def _rotate_half(x: torch.Tensor) -> torch.Tensor:
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat((-x2, x1), dim=-1)


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate (B, heads, T, hd) by position; cos/sin are (T, hd), cast to x's dtype (as HF does)."""
    cos, sin = cos.to(x.dtype), sin.to(x.dtype)
    return x * cos + _rotate_half(x) * sin


_SDPA_BACKENDS = {"cudnn": SDPBackend.CUDNN_ATTENTION, "flash": SDPBackend.FLASH_ATTENTION,
                  "efficient": SDPBackend.EFFICIENT_ATTENTION, "math": SDPBackend.MATH}
_TORCH_ORDER = (SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION, SDPBackend.MATH,
                SDPBackend.CUDNN_ATTENTION)
"""torch's own priority among the backends (``torch._C._get_sdp_priority_order()`` of torch 2.11 to 2.13)."""

AttentionOrder = tuple[SDPBackend, ...] | None
"""The SDPA backends in the order to try them (:func:`attention_priority`); None: torch's own order. A tuple, so
that Dynamo can guard on it where the model hands it into its compiled blocks."""


def attention_priority(choice: str, device: torch.device) -> AttentionOrder:
    """The order in which ``scaled_dot_product_attention`` should try its backends for ``model.attention_backend =
    choice`` on ``device``; None: torch's own order. Every backend stays in the order, the chosen one first, so a
    shape it cannot serve falls back to the next.

    auto = cuDNN first on compute capability 9.x (H100, H200), torch's order elsewhere. Why: torch tries
    FlashAttention-2 first wherever it runs, and on Hopper cuDNN's fused attention was 1.7-2.3x faster for training
    shapes at the same accuracy, while slower on Ampere and Blackwell and even on Ada (Hugging Face transformers
    PR 48163, six cards, 2026-08); our own measurement is in docs/benchmarks.md."""
    if choice == "auto":
        hopper = device.type == "cuda" and torch.cuda.get_device_capability(device)[0] == 9
        choice = "cudnn" if hopper else "torch"
    if choice == "torch":
        return None
    if choice not in _SDPA_BACKENDS:
        raise ConfigError(f"model.attention_backend={choice!r} is not one of auto, torch, "
                          f"{', '.join(_SDPA_BACKENDS)}")
    first = _SDPA_BACKENDS[choice]
    return (first, *(b for b in _TORCH_ORDER if b != first))


class CausalSelfAttention(nn.Module):
    """RoPE + grouped-query causal scaled-dot-product attention on a fused (B, T, q|k|v) input.

    No parameters: the projections live in :class:`Attention`, so this whole module can be compiled
    even when the projections are Transformer Engine modules.

    ``order`` (from ``model.attention_backend``, resolved per device by :meth:`Yxanul.hidden_states`) is entered
    here, around the SDPA call and inside the compiled region, so that it is part of what is compiled: Dynamo
    guards on it (a model with another backend compiles its own graph instead of reusing one traced under another
    priority) and the graph sets it itself. Entered outside a compiled region, the priority only steers the first
    trace: Dynamo does not guard on it and AOTAutograd's on-disk cache does not key on it, so a later model or
    process compiling the same graph under another priority silently got the first one's kernels
    (pytorch/pytorch#185449; reproduced on the CPU with the math and flash backends, torch 2.13). The price: a
    graph that sets the priority bypasses AOTAutograd's cache (pytorch/pytorch#194007) and retraces in each
    process (seconds); Inductor's own cache still serves its kernels, keyed by the lowered graph, which names the
    backend's op. With ``order`` None (torch's order, the default off Hopper) nothing is entered.

    With cuDNN first, K/V go to SDPA at their own heads (``enable_gqa``) instead of being copied to every query head
    first: cuDNN's fused attention reads the shared heads itself, and so does FlashAttention-2, its fallback (the
    memory-efficient kernel does not). Measured alone on an H100 (16 x 2048, BF16, forward + backward,
    docs/model.md): cuDNN 1.08 -> 0.98 ms at yxanul-270m, 3.34 -> 2.94 ms at width 2048, the same results to BF16
    rounding. Other orders keep the copy: where torch picks the memory-efficient kernel, GQA would fall to math.
    """

    def __init__(self, n_heads: int, n_kv_heads: int, head_dim: int) -> None:
        super().__init__()
        self.n_heads, self.n_kv_heads, self.head_dim = n_heads, n_kv_heads, head_dim

    def forward(self, qkv: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, order: AttentionOrder = None
                ) -> torch.Tensor:
        b, t, _ = qkv.shape
        nh, nkv, hd = self.n_heads, self.n_kv_heads, self.head_dim
        q, k, v = qkv.split((nh * hd, nkv * hd, nkv * hd), dim=-1)
        q = q.view(b, t, nh, hd).transpose(1, 2)  # (B, nh, T, hd)
        k = k.view(b, t, nkv, hd).transpose(1, 2)  # (B, nkv, T, hd)
        v = v.view(b, t, nkv, hd).transpose(1, 2)
        q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
        gqa = nkv != nh and order is not None and order[0] is SDPBackend.CUDNN_ATTENTION
        if nkv != nh and not gqa:  # repeat each KV head for its group of query heads (as HF's repeat_kv)
            group = nh // nkv
            k = k[:, :, None].expand(b, nkv, group, t, hd).reshape(b, nh, t, hd)
            v = v[:, :, None].expand(b, nkv, group, t, hd).reshape(b, nh, t, hd)
        # sdpa_kernel takes a list, not the tuple Dynamo guards on
        with contextlib.nullcontext() if order is None else sdpa_kernel(list(order), set_priority=True):
            y = F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=gqa)
        return y.transpose(1, 2).reshape(b, t, nh * hd)


class Attention(nn.Module):
    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        hd = cfg.hidden // cfg.n_heads
        self.qkv = nn.Linear(cfg.hidden, (cfg.n_heads + 2 * cfg.n_kv_heads) * hd, bias=False)
        self.core = CausalSelfAttention(cfg.n_heads, cfg.n_kv_heads, hd)
        self.proj = nn.Linear(cfg.n_heads * hd, cfg.hidden, bias=False)

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, order: AttentionOrder = None
                ) -> torch.Tensor:
        return self.proj(self.core(self.qkv(x), cos, sin, order))


class SwiGLU(nn.Module):
    """silu(gate) * up on the fused (..., 2 * ffn) output of the gate|up projection."""

    def forward(self, gate_up: torch.Tensor) -> torch.Tensor:
        gate, up = gate_up.chunk(2, dim=-1)
        return F.silu(gate) * up


class MLP(nn.Module):
    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.gate_up = nn.Linear(cfg.hidden, 2 * cfg.ffn_hidden, bias=False)
        self.act = SwiGLU()
        self.down = nn.Linear(cfg.ffn_hidden, cfg.hidden, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down(self.act(self.gate_up(x)))


class Block(nn.Module):
    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.attn_norm = RMSNorm(cfg.hidden, cfg.norm_eps)
        self.attn = Attention(cfg)
        self.mlp_norm = RMSNorm(cfg.hidden, cfg.norm_eps)
        self.mlp = MLP(cfg)

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, order: AttentionOrder = None
                ) -> torch.Tensor:
        x = x + self.attn(self.attn_norm(x), cos, sin, order)
        return x + self.mlp(self.mlp_norm(x))


class Embedding(nn.Module):
    """Token embedding, factorized (vocab x r, then r x hidden) when ``rank`` > 0."""

    def __init__(self, vocab: int, hidden: int, rank: int) -> None:
        super().__init__()
        self.rank = rank
        self.tok = nn.Embedding(vocab, rank or hidden)
        self.proj = nn.Linear(rank, hidden, bias=False) if rank else None

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        x = self.tok(tokens)
        return self.proj(x) if self.proj is not None else x

    def full_weight(self) -> torch.Tensor:
        """The (vocab, hidden) matrix this embedding is equivalent to (factors multiplied out)."""
        if self.proj is None:
            return self.tok.weight
        return self.tok.weight @ self.proj.weight.t()


def _caches_weight(head: nn.Module) -> bool:
    """Whether ``head`` takes Transformer Engine's ``is_first_microbatch`` (it then caches its FP8 weight)."""
    found = _CACHES_WEIGHT.get(type(head))
    if found is None:
        found = _CACHES_WEIGHT[type(head)] = "is_first_microbatch" in inspect.signature(head.forward).parameters
    return found


_CACHES_WEIGHT: dict[type, bool] = {}


# ---------------------------------------------------------------------------------------------------
# Model


class Yxanul(nn.Module):
    """The decoder. ``Yxanul(cfg, vocab_size)(tokens (B, T)) -> logits (B, T, padded_vocab)``;
    ``model(tokens, targets=targets)`` -> the summed next-token loss (nats), through the head path of
    ``model.head_chunk_tokens``."""

    def __init__(self, cfg: ModelConfig, vocab_size: int | None = None) -> None:
        super().__init__()
        self.cfg = cfg
        self.vocab_size = resolve_vocab_size(cfg, vocab_size)
        self.padded_vocab = padded_vocab_size(self.vocab_size)
        self.head_dim = cfg.hidden // cfg.n_heads
        self.embed = Embedding(self.padded_vocab, cfg.hidden, cfg.embed_rank)
        self.blocks = nn.ModuleList(Block(cfg) for _ in range(cfg.n_layers))
        self.final_norm = RMSNorm(cfg.hidden, cfg.norm_eps)
        self.head = None if cfg.tie_embeddings else nn.Linear(cfg.hidden, self.padded_vocab, bias=False)
        self.head_chunk_tokens = resolve_head_chunk_tokens(cfg, self.padded_vocab)
        """Tokens per chunk of the fused head + loss (:func:`linear_cross_entropy`); 0: the plain head."""
        cos, sin = _rope_tables(cfg.max_positions, self.head_dim, cfg.rope_theta)
        # Not in the state dict: derived from the config, identical in every checkpoint.
        self.register_buffer("rope_cos", cos, persistent=False)
        self.register_buffer("rope_sin", sin, persistent=False)
        self.reset_parameters()

    @torch.no_grad()
    def reset_parameters(self) -> None:
        """Normal(0, init_std) weights; residual output projections scaled by 1/sqrt(2 n_layers);
        padded vocabulary rows zero. The factorized embedding: the token factor at init_std like every
        other table, its projection at 1/sqrt(rank) (unit gain), so the product has std init_std.

        Why not a unit-std token factor (the rule until 2026-12-06): AdamW moves every element by about
        the learning rate whatever its size, so a factor at std 1 changes 50x more slowly, relative to
        itself, than the 0.02 matrices: the token vectors stayed near their random draw (2.5% of their
        norm moved in 600 steps on an H100). Whether it is why seeds drift apart on one data order is not
        settled: in a CPU probe (docs/results/calibration/README.md, 6 seeds each) the seeds' training-loss
        sd fell from 0.037 to 0.024 nats, within chance, at the same mean."""
        std = self.cfg.init_std
        for module in self.modules():
            if isinstance(module, nn.Linear):
                nn.init.normal_(module.weight, std=std)
            elif isinstance(module, RMSNorm):
                nn.init.ones_(module.weight)
        for block in self.blocks:
            block.attn.proj.weight.mul_(1 / math.sqrt(2 * self.cfg.n_layers))
            block.mlp.down.weight.mul_(1 / math.sqrt(2 * self.cfg.n_layers))
        if self.embed.proj is not None:
            nn.init.normal_(self.embed.proj.weight, std=1 / math.sqrt(self.cfg.embed_rank))
        nn.init.normal_(self.embed.tok.weight, std=std)
        self.embed.tok.weight[self.vocab_size:].zero_()
        if self.head is not None:
            self.head.weight[self.vocab_size:].zero_()

    def linear_names(self, group: str) -> list[str]:
        """Qualified names of the ``nn.Linear`` modules in a precision group (attention, mlp, head).

        The factorized embedding's projection is in no group: embeddings stay in high precision.
        The head of a tied model is the embedding matrix, not a module, so its list is empty.
        """
        if group == "attention":
            return [f"blocks.{i}.attn.{n}" for i in range(len(self.blocks)) for n in ("qkv", "proj")]
        if group == "mlp":
            return [f"blocks.{i}.mlp.{n}" for i in range(len(self.blocks)) for n in ("gate_up", "down")]
        if group == "head":
            return [] if self.head is None else ["head"]
        raise ConfigError(f"unknown linear group {group!r}; expected one of {', '.join(LAYER_GROUPS)}")

    def rope(self, seq_len: int) -> tuple[torch.Tensor, torch.Tensor]:
        """cos, sin for positions 0..seq_len-1; beyond model.max_positions they are computed on the fly."""
        if seq_len <= self.rope_cos.shape[0]:
            return self.rope_cos[:seq_len], self.rope_sin[:seq_len]
        return _rope_tables(seq_len, self.head_dim, self.cfg.rope_theta, self.rope_cos.device)

    def hidden_states(self, tokens: torch.Tensor) -> torch.Tensor:
        """(B, T) token ids -> (B, T, hidden) after the final norm.

        ``model.attention_backend`` is resolved for the tokens' device here, in eager code (:func:`attention_priority`
        reads the card's compute capability), and handed to every block: each attention call enters it itself,
        inside the compiled region (:class:`CausalSelfAttention` says why). Backward runs the backward of the
        forward's kernel."""
        cos, sin = self.rope(tokens.shape[1])
        x = self.embed(tokens)
        order = attention_priority(self.cfg.attention_backend, tokens.device)
        for block in self.blocks:
            x = block(x, cos, sin, order)
        return self.final_norm(x)

    def forward(self, tokens: torch.Tensor, mask_padding: bool = True, targets: torch.Tensor | None = None
                ) -> torch.Tensor:
        """(B, T) token ids -> (B, T, padded_vocab) logits, or with ``targets`` (B, T) the summed next-token loss
        in nats over the targets that are not IGNORE_INDEX (divide by their count yourself, e.g. over
        gradient-accumulation micro-batches).

        The loss goes through :meth:`loss`: with ``head_chunk_tokens`` the whole logits never exist. With
        ``mask_padding`` the padded logit columns are -inf (an out-of-place copy of the logits); the loss
        excludes those columns itself.
        """
        h = self.hidden_states(tokens)
        if targets is not None:
            return self.loss(h, targets)
        logits = self.logits(h)
        if mask_padding and self.padded_vocab != self.vocab_size:
            pad = torch.arange(self.padded_vocab, device=logits.device) >= self.vocab_size
            logits = logits.masked_fill(pad, float("-inf"))
        return logits

    def logits(self, hidden: torch.Tensor, chunk_index: int | None = None) -> torch.Tensor:
        """The head: (..., hidden) -> (..., padded_vocab) logits, padding included.

        ``chunk_index`` (the fused loss's chunks, 0 first): a head that can keep its low-precision weight between
        calls whose weights do not change (Transformer Engine's ``is_first_microbatch``) quantizes it on chunk 0
        only, instead of once per chunk."""
        if self.head is None:
            return F.linear(hidden, self.embed.tok.weight)
        if chunk_index is not None and _caches_weight(self.head):
            return self.head(hidden, is_first_microbatch=chunk_index == 0)
        return self.head(hidden)

    def weight_groups(self) -> dict[str, list[torch.Tensor]]:
        """The weights by role, for their RMS in the training log (``train/weight_rms/<group>``): the token
        embedding (``embed``; its projection ``embed_proj`` apart when factorized), the attention and MLP
        projections, and the head (absent when tied). Padded vocabulary rows included (zero, and kept so)."""
        groups = {"embed": [self.embed.tok.weight]}
        if self.embed.proj is not None:
            groups["embed_proj"] = [self.embed.proj.weight]
        for group in LAYER_GROUPS:
            names = self.linear_names(group)
            if names:
                groups[group] = [self.get_submodule(name).weight for name in names]
        return groups

    def head_parameters(self) -> list[torch.Tensor]:
        """The parameters the head computes with (the embedding matrix when tied)."""
        return [self.embed.tok.weight] if self.head is None else list(self.head.parameters())

    def loss(self, hidden: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """Summed next-token loss (nats) of the head on ``hidden`` (..., hidden) against ``targets`` (...):
        the fused chunked head when ``head_chunk_tokens`` > 0, else the whole logits and :func:`cross_entropy`."""
        if self.head_chunk_tokens:
            return linear_cross_entropy(hidden, self.logits, self.head_parameters(), targets, self.vocab_size,
                                        chunk_tokens=self.head_chunk_tokens,
                                        plain=self.head is None or type(self.head) is nn.Linear)
        return cross_entropy(self.logits(hidden), targets, self.vocab_size)

    def num_parameters(self) -> int:
        """Parameters actually held (shared ones counted once)."""
        return sum(p.numel() for p in self.parameters())


# ---------------------------------------------------------------------------------------------------
# Loss


def next_token_targets(tokens: torch.Tensor) -> torch.Tensor:
    """Targets for a (B, L) batch fed whole to the model: position t predicts token t+1; the last
    position has no target (IGNORE_INDEX). So a sequence of L tokens gives L-1 predictions."""
    targets = torch.full_like(tokens, IGNORE_INDEX, dtype=torch.long)
    targets[:, :-1] = tokens[:, 1:]
    return targets


_DEFAULT_CHUNK_TOKENS = 2048


def _ce_forward_chunk(logits: torch.Tensor, targets: torch.Tensor, vocab: int
                      ) -> tuple[torch.Tensor, torch.Tensor]:
    """(n, V_padded) logits of any dtype, (n,) targets -> (lse (n,) fp32, summed loss) for one chunk;
    columns >= vocab are excluded."""
    x = logits.float()
    # Masked unconditionally (a no-op without padded columns): a branch on vocab < columns is one more graph.
    x = x.masked_fill(torch.arange(x.shape[1], device=x.device) >= vocab, float("-inf"))
    # torch.logsumexp (two passes over the row on a GPU), not Inductor's one-pass online softmax: spelled as that
    # pattern, the chunk ran 2.7% slower on an H100 (scripts/ce_chunk_bench.py, ways model and online, 2026-12-07).
    lse = torch.logsumexp(x, dim=-1)
    valid = targets != IGNORE_INDEX
    picked = x.gather(1, targets.clamp(min=0)[:, None]).squeeze(1)
    return lse, torch.where(valid, lse - picked, 0.0).sum()


def _ce_backward_chunk(logits: torch.Tensor, targets: torch.Tensor, lse: torch.Tensor,
                       scale: torch.Tensor, vocab: int) -> torch.Tensor:
    """d(loss_sum)/d(logits) * scale for one chunk: softmax - onehot; zero on ignored rows and on
    padded columns."""
    x = logits.float()
    cols = torch.arange(x.shape[1], device=x.device)
    probs = torch.where(cols < vocab, torch.exp(x - lse[:, None]), 0.0)
    valid = targets != IGNORE_INDEX
    grad = probs - (cols == targets.clamp(min=0)[:, None]).to(probs.dtype)
    return (grad * (valid[:, None].to(probs.dtype) * scale)).to(logits.dtype)


_compiled_chunks: dict[str, Callable[..., object]] = {}


def compile_chunk_fn(fn: Callable[..., object], backend: str | Callable[..., object] = "inductor"
                     ) -> Callable[..., object]:
    """``fn`` (a chunk kernel) compiled once per width of logits (a model's padded vocabulary) for every chunk it
    will see: the rows and the vocabulary symbolic, the columns static, always called outside autocast (the
    kernels choose their own dtypes), without gradient tracking and on detached tensors (the kernels compute
    gradients themselves; nothing differentiates through them).

    Dynamo guards on each of these: compiled with static sizes, every remainder chunk, model vocabulary and
    autocast state was a new graph, and so was every caller whose logits did or did not require grad (the plain
    head in training, in validation, the fused head), and past Dynamo's recompile limit (8) the kernel silently
    ran eagerly: an fp32 copy, softmax and gradient of the chunk, several times its BF16 logits (H100 test
    sessions, 2026-12-06: the fused head of 32,768 tokens x 200k peaked at 5.1 GiB where its arithmetic allows
    3.6). The columns stay static (``torch._dynamo.mark_static``): they are the kernels' reduction, and with a
    symbolic width (2026-12-06 to -07) Inductor's reductions over 200k columns cost jobs.bench BF16 9% of its
    speed at yxanul-270m (scripts/bisect_speed.sh and scripts/ce_chunk_bench.py, H100, 2026-12-07). One graph
    per padded vocabulary and dtype of logits: a process that builds many models of one tokenizer compiles once."""
    compiled = torch.compile(fn, dynamic=True, backend=backend)

    def call(*args: object) -> object:
        device = next(a for a in args if isinstance(a, torch.Tensor)).device
        args = tuple(_static_columns(a.detach()) if isinstance(a, torch.Tensor) else a for a in args)
        with torch.autocast(device.type, enabled=False), torch.no_grad():
            return compiled(*args)

    return call


def _static_columns(tensor: torch.Tensor) -> torch.Tensor:
    """``tensor`` with every dimension after the first (the rows) marked static for Dynamo."""
    for dim in range(1, tensor.dim()):
        torch._dynamo.mark_static(tensor, dim)
    return tensor


def _chunk_fns(device: torch.device) -> tuple[Callable[..., object], Callable[..., object]]:
    """Eager on CPU; on CUDA, compiled so each chunk is one or two fused passes over the bf16 logits
    instead of an fp32 copy plus several elementwise kernels. Each call runs in the profiler's cross-entropy
    region (:data:`yxanul.profiling.LOSS_REGION`), so a profiled step's device time names what the loss costs."""
    if device.type != "cuda":
        return _in_loss_region(_ce_forward_chunk), _in_loss_region(_ce_backward_chunk)
    if not _compiled_chunks:
        _compiled_chunks["fwd"] = _in_loss_region(compile_chunk_fn(_ce_forward_chunk))
        _compiled_chunks["bwd"] = _in_loss_region(compile_chunk_fn(_ce_backward_chunk))
    return _compiled_chunks["fwd"], _compiled_chunks["bwd"]


def _chunk_loss_and_grad_fn(device: torch.device) -> Callable[..., tuple[torch.Tensor, torch.Tensor]]:
    """``(logits, targets, vocab, scale) -> (summed loss, d loss / d logits * scale)`` for one chunk of the fused
    head, whose logits are not needed afterwards. On CUDA one Triton kernel that writes the gradient over the logits
    (:mod:`yxanul.loss_kernel`: three passes over the chunk instead of the compiled kernels' four, and no second
    chunk-sized buffer); elsewhere the reference, :func:`_ce_forward_chunk` then :func:`_ce_backward_chunk`."""
    if device.type == "cuda":
        return _in_loss_region(_triton_loss_and_grad)  # type: ignore[return-value]
    fwd, bwd = _chunk_fns(device)

    def reference(logits: torch.Tensor, targets: torch.Tensor, vocab: int, scale: torch.Tensor
                  ) -> tuple[torch.Tensor, torch.Tensor]:
        lse, loss = fwd(logits, targets, vocab)  # type: ignore[misc]
        return loss, bwd(logits, targets, lse, scale, vocab)  # type: ignore[return-value]

    return reference


def _triton_loss_and_grad(logits: torch.Tensor, targets: torch.Tensor, vocab: int, scale: torch.Tensor
                          ) -> tuple[torch.Tensor, torch.Tensor]:
    from yxanul.loss_kernel import chunk_loss_and_grad_

    return chunk_loss_and_grad_(logits, targets, vocab, scale, IGNORE_INDEX), logits


def _in_loss_region(fn: Callable[..., object]) -> Callable[..., object]:
    """``fn`` inside ``record_function(LOSS_REGION)`` (an op call of a few microseconds when nothing profiles)."""
    def call(*args: object) -> object:
        with torch.autograd.profiler.record_function(LOSS_REGION):
            return fn(*args)

    return call


class _ChunkedCrossEntropy(torch.autograd.Function):
    """Summed next-token loss over (N, V_padded) logits, computed ``chunk`` rows at a time.

    Saves only the input logits (which exist anyway) and one fp32 log-sum-exp per row; the fp32
    upcast, softmax and gradient exist for one chunk at a time.
    """

    @staticmethod
    def forward(ctx, logits: torch.Tensor, targets: torch.Tensor, vocab: int, chunk: int  # type: ignore[override]
                ) -> torch.Tensor:
        fwd, _ = _chunk_fns(logits.device)
        lses, total = [], logits.new_zeros((), dtype=torch.float32)
        for start in range(0, logits.shape[0], chunk):
            lse, loss = fwd(logits[start:start + chunk], targets[start:start + chunk], vocab)
            lses.append(lse)
            total = total + loss
        ctx.save_for_backward(logits, targets, torch.cat(lses))
        ctx.vocab, ctx.chunk = vocab, chunk
        return total

    @staticmethod
    def backward(ctx, grad_out: torch.Tensor):  # type: ignore[override]
        logits, targets, lse = ctx.saved_tensors
        _, bwd = _chunk_fns(logits.device)
        grad = torch.empty_like(logits)
        scale = grad_out.float()
        for start in range(0, logits.shape[0], ctx.chunk):
            sl = slice(start, start + ctx.chunk)
            grad[sl] = bwd(logits[sl], targets[sl], lse[sl], scale, ctx.vocab)
        return grad, None, None, None


def _reduce(total: torch.Tensor, targets: torch.Tensor, reduction: str) -> torch.Tensor:
    if reduction == "sum":
        return total
    if reduction == "mean":
        return total / (targets != IGNORE_INDEX).sum().clamp(min=1)
    raise ValueError(f"reduction must be 'sum' or 'mean', got {reduction!r}")


def cross_entropy(logits: torch.Tensor, targets: torch.Tensor, vocab_size: int | None = None, *,
                  reduction: str = "sum", chunk_tokens: int = _DEFAULT_CHUNK_TOKENS) -> torch.Tensor:
    """Next-token cross-entropy in nats, chunked over tokens: the same value and gradient as
    ``F.cross_entropy`` on fp32 logits, without an fp32 copy of all logits.

    ``logits`` (..., V_padded) in any dtype, ``targets`` (...) with IGNORE_INDEX where there is no
    target. Only the first ``vocab_size`` columns take part (the padding is excluded).
    ``reduction``: ``"sum"`` (divide by the token count yourself, e.g. over gradient-accumulation
    micro-batches) or ``"mean"`` over non-ignored targets.
    """
    vocab = logits.shape[-1] if vocab_size is None else int(vocab_size)
    flat = logits.reshape(-1, logits.shape[-1])
    total = _ChunkedCrossEntropy.apply(flat, targets.reshape(-1).long(), vocab, int(chunk_tokens))
    return _reduce(total, targets, reduction)


Head = Callable[[torch.Tensor, int], torch.Tensor]
"""(hidden chunk (n, hidden), chunk index) -> (n, V_padded) logits: the output head, called once per chunk."""


class _LinearCrossEntropy(torch.autograd.Function):
    """Summed next-token loss of ``head(hidden)``, ``chunk`` tokens at a time, never holding all the logits.

    Per chunk, in the forward: the chunk's logits (the head as the model runs it: BF16 autocast, or a Transformer
    Engine FP8 module under the caller's ``te.autocast``), its loss and d loss / d logits (softmax - one-hot: on a
    GPU one kernel that writes it over the logits, :func:`_chunk_loss_and_grad_fn`), then the gradients taken
    through the head's own backward to the hidden chunk and the head's parameters (``torch.autograd.grad``; for a
    plain weight, the two GEMMs run directly, :func:`_plain_head_loss`). Nothing is accumulated into ``.grad``
    here, so DDP and FSDP hooks fire once, in the real backward. Then the chunk's logits are freed. Saved:
    d loss_sum / d hidden (tokens x hidden) and d loss_sum / d parameters (vocab x hidden, fp32); the backward only
    multiplies them by the upstream gradient.

    Why gradients in the forward and not a recomputation in the backward: the same three GEMMs as the plain
    head (no second forward GEMM, which would add a third of the head's FLOPs: at yxanul-270m the head is ~40%
    of the model's), and the head runs only inside the forward's own autocast region, so a Transformer Engine
    head needs no FP8 scaling state stashed and restored for a recompute outside it (docs/model.md, "The head").
    """

    @staticmethod
    def forward(ctx, hidden: torch.Tensor, targets: torch.Tensor, head: Head, vocab: int,  # type: ignore[override]
                chunk: int, plain: bool, *params: torch.Tensor) -> torch.Tensor:
        want_hidden = ctx.needs_input_grad[0]  # (linear_cross_entropy calls this only when some gradient is wanted)
        want_params = list(ctx.needs_input_grad[6:])
        loss_and_grad = _chunk_loss_and_grad_fn(hidden.device)
        total = hidden.new_zeros((), dtype=torch.float32)
        grad_hidden = torch.empty_like(hidden) if want_hidden else None
        grad_params: list[torch.Tensor | None] = [None] * len(params)
        ctx.param_dtypes = [p.dtype for p in params]
        if plain:
            total, grad_params[0] = _plain_head_loss(hidden, targets, params[0], vocab, chunk, loss_and_grad,
                                                     grad_hidden, want_params[0])
            ctx.save_for_backward(grad_hidden, *grad_params)
            return total
        one = torch.ones((), device=hidden.device)
        for index, start in enumerate(range(0, hidden.shape[0], chunk)):
            rows = slice(start, start + chunk)
            with torch.enable_grad():
                h = hidden[rows].detach().requires_grad_(want_hidden)
                logits = head(h, index)  # (n, V_padded)
            loss, grad_logits = loss_and_grad(logits.detach(), targets[rows], vocab, one)
            total = total + loss
            wanted = ([h] if want_hidden else []) + [p for p, w in zip(params, want_params) if w]
            # Backward ops in the dtypes the forward chose, as a backward outside autocast runs them.
            with torch.autocast(hidden.device.type, enabled=False):
                grads = list(torch.autograd.grad(logits, wanted, grad_logits, allow_unused=True))
            del logits, grad_logits
            if want_hidden:
                grad_hidden[rows] = grads.pop(0)  # type: ignore[index]
            for i, wants in enumerate(want_params):
                if not wants:
                    continue
                g = grads.pop(0)
                if g is not None:
                    grad_params[i] = g.float() if grad_params[i] is None else grad_params[i].add_(g)
        ctx.save_for_backward(grad_hidden, *grad_params)
        return total

    @staticmethod
    def backward(ctx, grad_out: torch.Tensor):  # type: ignore[override]
        grad_hidden, *grad_params = ctx.saved_tensors
        scale = grad_out.float()
        return (None if grad_hidden is None else (grad_hidden * scale).to(grad_hidden.dtype), None, None, None, None,
                None, *(None if g is None else (g * scale).to(dtype)
                        for g, dtype in zip(grad_params, ctx.param_dtypes)))


def _plain_head_loss(hidden: torch.Tensor, targets: torch.Tensor, weight: torch.Tensor, vocab: int, chunk: int,
                     loss_and_grad: Callable[..., tuple[torch.Tensor, torch.Tensor]], grad_hidden: torch.Tensor | None,
                     want_weight: bool) -> tuple[torch.Tensor, torch.Tensor | None]:
    """:class:`_LinearCrossEntropy`'s forward for a head that is ``F.linear(h, weight)``: the summed loss, and d loss
    / d weight in fp32 (when ``want_weight``); d loss / d hidden goes into ``grad_hidden`` (when given).

    The GEMMs autocast and autograd would run, run here: the weight and each chunk cast once to the autocast dtype,
    the logits, then d hidden = g @ W and d weight = g^T @ h. On CUDA in BF16 or FP16, the weight's gradient is
    summed over the chunks by the GEMM itself, in fp32 (``addmm(..., out_dtype=float32)``: cuBLAS adds into its fp32
    output; :func:`_addmm_adds_into_fp32`), where autograd's returned each chunk's in BF16, then cast it to fp32 and
    added it in two more passes over the 200k x hidden matrix."""
    device = hidden.device.type
    dtype = torch.get_autocast_dtype(device) if torch.is_autocast_enabled(device) else weight.dtype
    one = torch.ones((), device=hidden.device)
    total = hidden.new_zeros((), dtype=torch.float32)
    grad_weight: torch.Tensor | None = None
    in_gemm = hidden.is_cuda and dtype in (torch.bfloat16, torch.float16)
    with torch.autocast(device, enabled=False), torch.no_grad():
        w = weight.detach().to(dtype)
        for start in range(0, hidden.shape[0], chunk):
            rows = slice(start, start + chunk)
            h = hidden[rows].detach().to(dtype)
            loss, g = loss_and_grad(h @ w.t(), targets[rows], vocab, one)  # (n, V_padded) logits, then gradient
            total = total + loss
            if grad_hidden is not None:
                grad_hidden[rows] = g @ w
            if want_weight and in_gemm:
                if grad_weight is None:
                    grad_weight = torch.mm(g.t(), h, out_dtype=torch.float32)
                elif _addmm_adds_into_fp32(hidden.device):
                    grad_weight = torch.addmm(grad_weight, g.t(), h, out_dtype=torch.float32)
                else:
                    grad_weight.add_(torch.mm(g.t(), h, out_dtype=torch.float32))
            elif want_weight:
                part = (g.t() @ h).float()
                grad_weight = part if grad_weight is None else grad_weight.add_(part)
            del g
    return total, grad_weight


def _addmm_adds_into_fp32(device: torch.device) -> bool:
    """Whether this torch's CUDA ``addmm(fp32 input, bf16, bf16, out_dtype=float32)`` runs: newer releases add the
    BF16 product into an fp32 input inside the GEMM; older ones refuse an input whose dtype is not the matrices'.
    Either way the sum is fp32 (refused: an fp32 GEMM output added in one more pass). Tried once per device."""
    if device not in _ADDMM_INTO_FP32:
        m = torch.zeros(2, 2, dtype=torch.bfloat16, device=device)
        try:
            torch.addmm(torch.zeros(2, 2, device=device), m, m, out_dtype=torch.float32)
            _ADDMM_INTO_FP32[device] = True
        except RuntimeError:
            _ADDMM_INTO_FP32[device] = False
    return _ADDMM_INTO_FP32[device]


_ADDMM_INTO_FP32: dict[torch.device, bool] = {}


def linear_cross_entropy(hidden: torch.Tensor, head: Head, params: Sequence[torch.Tensor], targets: torch.Tensor,
                         vocab_size: int, *, chunk_tokens: int, reduction: str = "sum",
                         plain: bool = False) -> torch.Tensor:
    """Next-token cross-entropy of the output head on ``hidden``, fused and chunked: at most ``chunk_tokens``
    rows of logits exist at any time, in the forward and in the backward (:class:`_LinearCrossEntropy`). The
    same value and gradients as ``cross_entropy(head(hidden), targets, vocab_size)``, up to the rounding of
    chunk-sized GEMMs (tests/unit/test_loss.py).

    ``hidden`` (..., hidden); ``head(h, chunk_index)`` -> logits (n, V_padded), computed with ``params`` (every
    tensor the head differentiates: its weight, and bias if any); ``targets`` (...) with IGNORE_INDEX where
    there is no target; columns >= ``vocab_size`` are excluded. ``reduction`` as in :func:`cross_entropy`.
    ``plain``: the head is exactly ``F.linear(h, params[0])`` (no bias, no module of its own, such as a Transformer
    Engine layer): its gradients are then two GEMMs run here (:func:`_plain_head_loss`) instead of the head's
    backward through autograd.
    """
    if plain and len(params) != 1:
        raise ValueError(f"plain=True takes the head's one weight as params, got {len(params)} tensors")
    flat, flat_targets, vocab, chunk = hidden.reshape(-1, hidden.shape[-1]), targets.reshape(-1).long(), int(
        vocab_size), int(chunk_tokens)
    if torch.is_grad_enabled() and (flat.requires_grad or any(p.requires_grad for p in params)):
        total = _LinearCrossEntropy.apply(flat, flat_targets, head, vocab, chunk, plain, *params)
    else:  # no gradients wanted (validation): the loss only, chunk by chunk
        fwd, _ = _chunk_fns(flat.device)
        total = flat.new_zeros((), dtype=torch.float32)
        for index, start in enumerate(range(0, flat.shape[0], chunk)):
            rows = slice(start, start + chunk)
            total = total + fwd(head(flat[rows], index), flat_targets[rows], vocab)[1]
    return _reduce(total, targets, reduction)


def bits_per_byte(nats_per_token: float | torch.Tensor, bytes_per_token: float) -> float | torch.Tensor:
    """Convert a loss in nats per token to bits per UTF-8 byte (tokenizer-independent)."""
    return nats_per_token / (math.log(2) * bytes_per_token)
