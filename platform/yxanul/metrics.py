"""Throughput accounting: FLOPs per token, tokens/s, MFU against the card's BF16 and FP8 peaks,
peak memory.

FLOPs per trained token follow the PaLM / nanoGPT convention: ``6 * N_matmul`` (forward + backward
of every weight matrix that does a matmul: attention, MLP, head, the factorized embedding's
projection; lookups are free) ``+ 12 * n_layers * hidden * seq_len`` (attention scores and values,
causal masking not discounted). For yxanul-270m at seq_len 2048 this is 1.926 GFLOP/token, so the
989 TFLOP/s dense BF16 peak of an H100 SXM is 514k tokens/s. :func:`flops_split` gives the two terms apart: the
attention scores grow with ``seq_len``, the rest does not, which is the arithmetic behind a sequence-length
curriculum (a short stage spends a smaller share of its FLOPs on attention; the measured share of step time is
:mod:`yxanul.profiling`'s).

MFU is reported against both the BF16 and the FP8 dense peak of the card
(:mod:`yxanul.accelerators`): an FP8 run's ``mfu_fp8`` says how much of the FP8 tensor-core rate
it used, its ``mfu_bf16`` how it compares with the BF16 ceiling.

MFU is per GPU: a run of W workers divides its global tokens/s by W before comparing with one card's
peak (``train/tokens_per_s`` is global, ``train/tokens_per_s_per_gpu`` per worker). A card the table does
not know (or a CPU rehearsal) can declare its peaks with ``YXANUL_PEAK_TFLOPS=<bf16>[,<fp8>]``.

Nothing here syncs the device except :meth:`ThroughputMeter.read`, called at the logging interval.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass

import torch

from yxanul.accelerators import AcceleratorSpec, spec_for_device_name
from yxanul.config import ModelConfig
from yxanul.model import padded_vocab_size, resolve_vocab_size

__all__ = ["PEAK_ENV", "FlopsSplit", "ThroughputMeter", "Throughput", "device_spec", "flops_per_token", "flops_split",
           "mfu", "peak_memory_gib", "peak_tflops", "reset_peak_memory"]

PEAK_ENV = "YXANUL_PEAK_TFLOPS"
"""``<bf16>[,<fp8>]`` dense TFLOP/s of the card this process uses, overriding the capability table."""


@dataclass(frozen=True)
class FlopsSplit:
    """Training FLOPs per token at one ``seq_len``, in the two terms of the module docstring's formula."""

    matmul: float
    """``6 * N_matmul``: every weight matrix's forward + backward; the same at every sequence length."""
    attention: float
    """``12 * n_layers * hidden * seq_len``: attention scores and values (``QK^T`` and ``PV``), forward +
    backward; linear in ``seq_len``."""

    @property
    def total(self) -> float:
        """:func:`flops_per_token` (the same sum, so the same float)."""
        return self.matmul + self.attention

    @property
    def attention_share(self) -> float:
        return self.attention / self.total


def flops_split(cfg: ModelConfig, seq_len: int, vocab_size: int | None = None) -> FlopsSplit:
    """Training FLOPs per token at ``seq_len``, split into the weight matmuls and the attention scores."""
    vocab = padded_vocab_size(resolve_vocab_size(cfg, vocab_size))
    h, hd = cfg.hidden, cfg.hidden // cfg.n_heads
    per_layer = h * (cfg.n_heads + 2 * cfg.n_kv_heads) * hd + cfg.n_heads * hd * h + 3 * h * cfg.ffn_hidden
    matmul_params = cfg.n_layers * per_layer + vocab * h + cfg.embed_rank * h
    return FlopsSplit(matmul=6.0 * matmul_params, attention=12.0 * cfg.n_layers * h * seq_len)


def flops_per_token(cfg: ModelConfig, seq_len: int, vocab_size: int | None = None) -> float:
    """Training FLOPs (forward + backward) per token at ``seq_len`` (see the module docstring)."""
    return flops_split(cfg, seq_len, vocab_size).total


def mfu(tokens_per_s: float, flops_per_tok: float, peak_tflops: float | None) -> float | None:
    """Model FLOPs utilisation in [0, 1]; None when the peak is unknown (CPU, a card without FP8)."""
    if not peak_tflops:
        return None
    return tokens_per_s * flops_per_tok / (peak_tflops * 1e12)


def device_spec(device: torch.device | str | None = None) -> AcceleratorSpec | None:
    """The capability-table entry of the CUDA device this process uses; None on CPU or an unknown card."""
    if not torch.cuda.is_available() or (device is not None and torch.device(device).type != "cuda"):
        return None
    return spec_for_device_name(torch.cuda.get_device_name(device))


def peak_tflops(device: torch.device | str | None = None) -> tuple[float | None, float | None]:
    """(BF16, FP8) dense peaks of this process's card: ``$YXANUL_PEAK_TFLOPS`` if set, else the table
    (None, None on CPU or an unknown card)."""
    declared = os.environ.get(PEAK_ENV, "").strip()
    if declared:
        try:
            values = [float(v) for v in declared.split(",")]
            if not 1 <= len(values) <= 2 or min(values) <= 0:
                raise ValueError
        except ValueError:
            from yxanul.errors import ConfigError

            raise ConfigError(f"{PEAK_ENV}={declared!r} is not '<bf16 TFLOP/s>[,<fp8 TFLOP/s>]' "
                              f"(positive numbers, e.g. 989,1979)") from None
        return values[0], values[1] if len(values) > 1 else None
    spec = device_spec(device)
    return (spec.bf16_tflops, spec.fp8_tflops) if spec else (None, None)


def reset_peak_memory(device: torch.device | str | None = None) -> None:
    if torch.cuda.is_available() and (device is None or torch.device(device).type == "cuda"):
        torch.cuda.reset_peak_memory_stats(device)


def peak_memory_gib(device: torch.device | str | None = None) -> float | None:
    """Peak memory allocated by tensors since the last reset, GiB; None on CPU."""
    if not torch.cuda.is_available() or (device is not None and torch.device(device).type != "cuda"):
        return None
    return torch.cuda.max_memory_allocated(device) / 2**30


@dataclass(frozen=True)
class Throughput:
    tokens_per_s: float
    """Global: all workers together."""
    tokens_per_s_per_gpu: float
    """Per worker (GPU): what MFU is computed from."""
    mfu_bf16: float | None
    mfu_fp8: float | None
    peak_mem_gib: float | None
    elapsed_s: float
    """Training wall-clock so far (paused time excluded)."""


class ThroughputMeter:
    """Tokens/s and MFU over the time the clock runs; :meth:`pause` during validation.

    ``add(tokens)`` is free (no sync); tokens are global (all ``world`` workers). ``read()`` synchronizes
    the device once (a deliberate sync: the work queued so far must be finished for the clock to mean
    anything) and reports the rate since the previous ``read()``. ``add_untimed(seconds)`` counts wall time
    that belongs to the run (``elapsed_s``) but not to a rate (the first step of a new shape: compilation).
    """

    def __init__(self, flops_per_tok: float, device: torch.device | str | None = None, world: int = 1) -> None:
        self.flops_per_tok = flops_per_tok
        self.device = torch.device(device) if device is not None else None
        self.world = max(1, world)
        self.peak_bf16, self.peak_fp8 = peak_tflops(self.device)
        self._elapsed = 0.0
        self._window_elapsed = 0.0
        self._window_tokens = 0
        self._started: float | None = None

    def _sync(self) -> None:
        if self.device is not None and self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    def start(self) -> None:
        if self._started is None:
            self._sync()
            self._started = time.perf_counter()

    def pause(self) -> None:
        if self._started is not None:
            self._sync()
            now = time.perf_counter()
            self._window_elapsed += now - self._started
            self._elapsed += now - self._started
            self._started = None

    def add(self, tokens: int) -> None:
        self._window_tokens += tokens

    def add_untimed(self, seconds: float) -> None:
        self._elapsed += seconds

    def read(self) -> Throughput:
        running = self._started is not None
        self.pause()
        rate = self._window_tokens / self._window_elapsed if self._window_elapsed > 0 else 0.0
        per_gpu = rate / self.world
        out = Throughput(rate, per_gpu, mfu(per_gpu, self.flops_per_tok, self.peak_bf16),
                         mfu(per_gpu, self.flops_per_tok, self.peak_fp8), peak_memory_gib(self.device), self._elapsed)
        self._window_tokens, self._window_elapsed = 0, 0.0
        if running:
            self.start()
        return out
