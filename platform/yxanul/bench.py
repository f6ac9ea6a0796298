"""Training-throughput benchmark on one device: model preset x precision x recipe x fp8_layers,
against a peer baseline (Hugging Face ``LlamaForCausalLM`` of the same shape under
``torch.compile``, BF16 autocast, fused AdamW) measured in the same process on the same card.

Each run builds the model, applies the precision, compiles (regionally, around TE modules), runs
``warmup_steps`` full optimizer steps (compilation happens here), then times ``steps`` steps of
random tokens with one host sync at each end. The runs of a matrix are independent: a run that
fails (out of memory, an unsupported recipe) is reported with its error and the others go on.

Used by ``python -m jobs.bench`` (see experiments/bench/*.yaml).
"""

from __future__ import annotations

import datetime as _dt
import itertools
import json
import time
import traceback
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch
from pydantic import BaseModel, ConfigDict, Field

from yxanul.config import AttentionBackend, LayerGroup, ModelConfig, OptimConfig, PrecisionConfig
from yxanul.errors import first_line
from yxanul.files import atomic_write
from yxanul.metrics import device_spec, flops_per_token, mfu, peak_memory_gib, reset_peak_memory
from yxanul.model import parameter_count, resolve_vocab_size
from yxanul.precision import preload_te

__all__ = ["BenchConfig", "BenchResult", "plan", "run_bench", "format_table"]


class BenchConfig(BaseModel):
    """What jobs.bench measures (YAML + dotted overrides, like every job)."""

    model_config = ConfigDict(extra="forbid", frozen=True, use_attribute_docstrings=True)

    presets: list[str] = ["yxanul-270m"]
    """Model presets (experiments/models/<name>.yaml)."""
    vocab_size: int | None = Field(None, gt=0)
    """Vocabulary for presets that do not set one (e.g. tiny)."""
    n_layers: int | None = Field(None, gt=0)
    """Override every preset's depth (quick runs)."""
    precisions: list[Literal["fp32", "bf16", "fp8"]] = ["bf16", "fp8"]
    """Precision modes of our model."""
    recipes: list[Literal["delayed", "current", "block", "mxfp8"]] = ["delayed"]
    """FP8 recipes (fp8 runs only)."""
    head_chunk_tokens: list[int | Literal["auto"]] = ["auto"]
    """Head paths of our model (``model.head_chunk_tokens``: 0 = the whole logits, N = the fused head in chunks of
    N tokens, auto = the model's default); every precision is run with every head path."""
    attention_backends: list[AttentionBackend] = ["auto"]
    """Attention kernels of our model (``model.attention_backend``: auto, torch, cudnn, flash, efficient, math);
    every precision and head path is run with each."""
    fp8_layer_sets: list[list[LayerGroup] | Literal["auto"]] = ["auto"]
    """FP8 layer selections (fp8 runs only), each a list of groups or auto (the plan measured on this card,
    as training measures it); every recipe is run with every selection."""
    micro_batch: int = Field(8, gt=0)
    """Sequences per step (one micro-batch per optimizer step)."""
    seq_len: int = Field(2048, gt=1)
    """Tokens per sequence."""
    warmup_steps: int = Field(3, ge=1)
    """Untimed steps first (compilation, allocator warm-up)."""
    steps: int = Field(20, gt=0)
    """Timed optimizer steps."""
    compile: bool = True
    """torch.compile our model (regionally) and the peer."""
    peer: bool = True
    """Also measure the Hugging Face LlamaForCausalLM baseline of each preset."""
    device: str = "cuda"
    """cuda or cpu (cpu only checks the code paths)."""
    seed: int = 0
    """Seed of the weights and the random tokens."""
    output: str | None = None
    """Write one JSON object per run to this file (JSON lines), plus the table next to it (.md)."""
    optim: OptimConfig = OptimConfig()
    """Optimizer settings (AdamW) for every run."""


@dataclass
class BenchResult:
    preset: str
    impl: str
    """"yxanul" or "hf-peer"."""
    precision: str
    recipe: str | None
    fp8_layers: str | None
    micro_batch: int
    seq_len: int
    params: int
    flops_per_token: float
    step_ms: float | None = None
    tokens_per_s: float | None = None
    mfu_bf16: float | None = None
    mfu_fp8: float | None = None
    peak_mem_gib: float | None = None
    warmup_s: float | None = None
    loss_first: float | None = None
    loss_last: float | None = None
    vs_peer: float | None = None
    vs_bf16: float | None = None
    error: str | None = None
    card: str = ""
    head: str | None = None
    """Our model's head path as built (``plain`` or ``chunk 4096``); None for the peer."""
    head_in_label: bool = False
    """The matrix varies the head path, so the label names it."""
    attention: str | None = None
    """Our model's ``model.attention_backend`` (None for the peer: torch's own choice)."""
    attention_in_label: bool = False
    """The matrix varies the attention backend, so the label names it."""
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def label(self) -> str:
        if self.impl == "hf-peer":
            return "HF Llama peer (bf16" + (", compiled)" if self.extra.get("compiled") else ")")
        if self.precision == "fp8":
            return f"fp8 {self.recipe} [{self.fp8_layers}]{self._variant_label}"
        return f"{self.precision}{self._variant_label}"

    @property
    def _variant_label(self) -> str:
        """The head path and the attention backend, each where the matrix varies it."""
        head = f", {self.head} head" if self.head_in_label and self.head else ""
        return head + (f", {self.attention} attention" if self.attention_in_label and self.attention else "")


def _model_cfg(cfg: BenchConfig, preset: str, head_chunk_tokens: int | str = "auto", attention: str = "auto"
               ) -> ModelConfig:
    data: dict[str, Any] = {"preset": preset, "head_chunk_tokens": head_chunk_tokens, "attention_backend": attention}
    if cfg.n_layers is not None:
        data["n_layers"] = cfg.n_layers
    if cfg.vocab_size is not None:
        data["vocab_size"] = cfg.vocab_size
    return ModelConfig.model_validate(data)


def plan(cfg: BenchConfig) -> list[tuple[str, PrecisionConfig | None, int | str, str]]:
    """(preset, precision, head_chunk_tokens, attention_backend) for every run; None precision = the peer (its own
    head and torch's own attention)."""
    runs: list[tuple[str, PrecisionConfig | None, int | str, str]] = []
    for preset in cfg.presets:
        if cfg.peer:
            runs.append((preset, None, "auto", "auto"))
        for mode, head, attention in itertools.product(cfg.precisions, cfg.head_chunk_tokens, cfg.attention_backends):
            if mode != "fp8":
                runs.append((preset, PrecisionConfig(mode=mode), head, attention))
                continue
            for recipe, layers in itertools.product(cfg.recipes, cfg.fp8_layer_sets):
                runs.append((preset, PrecisionConfig(mode="fp8", recipe=recipe,
                                                     fp8_layers=layers if layers == "auto" else list(layers)),
                             head, attention))
    return runs


def _head(mcfg: ModelConfig) -> str:
    from yxanul.model import padded_vocab_size, resolve_head_chunk_tokens

    chunk = resolve_head_chunk_tokens(mcfg, padded_vocab_size(resolve_vocab_size(mcfg)))
    return f"chunk {chunk}" if chunk else "plain"


def describe_plan(cfg: BenchConfig) -> str:
    lines = []
    for preset, prec, head, attention in plan(cfg):
        mcfg = _model_cfg(cfg, preset, head, attention)
        count = parameter_count(mcfg).total
        what = "HF LlamaForCausalLM peer, bf16" if prec is None else (
            f"yxanul {prec.mode}" + (f" recipe={prec.recipe} fp8_layers={_layers_label(prec.fp8_layers)}"
                                     if prec.mode == "fp8" else "") + f", {_head(mcfg)} head"
            + (f", {attention} attention" if len(cfg.attention_backends) > 1 else ""))
        lines.append(f"{preset:<14} {count:>14,d} params  {flops_per_token(mcfg, cfg.seq_len) / 1e9:7.3f} "
                     f"GFLOP/token  {what}")
    return "\n".join(lines)


def _layers_label(layers: list[str] | str) -> str:
    return layers if isinstance(layers, str) else "+".join(layers)


def _tokens(cfg: BenchConfig, vocab: int, device: torch.device) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(cfg.seed)
    return [torch.randint(0, vocab, (cfg.micro_batch, cfg.seq_len), generator=g).to(device) for _ in range(4)]


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _time_steps(cfg: BenchConfig, step: Any, batches: list[torch.Tensor], device: torch.device
                ) -> tuple[float, float, float, float]:
    """(warmup seconds, seconds per timed step, first loss, last loss)."""
    t0 = time.perf_counter()
    losses = []
    for i in range(cfg.warmup_steps):
        losses.append(step(batches[i % len(batches)]))
    _sync(device)
    warmup_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    for i in range(cfg.steps):
        last = step(batches[i % len(batches)])
    _sync(device)  # the only sync of the timed region
    step_s = (time.perf_counter() - t0) / cfg.steps
    return warmup_s, step_s, float(losses[0]), float(last)


def _run_ours(cfg: BenchConfig, mcfg: ModelConfig, prec_cfg: PrecisionConfig, device: torch.device,
              result: BenchResult) -> None:
    from yxanul.precision import fp8_modules
    from yxanul.train.build import build_training
    from yxanul.train.step import train_step

    torch.manual_seed(cfg.seed)
    prec_cfg = prec_cfg.model_copy(update={"compile": "on" if cfg.compile else "off"})
    built = build_training(mcfg, prec_cfg, cfg.optim, device, max_tokens_per_microbatch=cfg.micro_batch * cfg.seq_len,
                           log=print)
    model, optimizer, precision = built.model, built.optimizer, built.precision
    result.extra["te_modules"] = len(fp8_modules(model))
    if built.fp8_plan is not None:
        result.fp8_layers = "auto->" + ("+".join(built.fp8_plan.layers) or "none")
        result.extra["fp8_plan"] = built.fp8_plan.timings
        result.extra["fp8_plan_s"] = built.fp8_plan.measure_s
    batches = _tokens(cfg, model.vocab_size, device)

    def step(batch: torch.Tensor) -> torch.Tensor:
        return train_step(model, optimizer, [batch], lr=cfg.optim.lr, precision=precision,
                          grad_clip=cfg.optim.grad_clip).loss

    _measure(cfg, step, batches, device, result)


def _run_peer(cfg: BenchConfig, mcfg: ModelConfig, device: torch.device, result: BenchResult) -> None:
    from transformers import LlamaForCausalLM

    from yxanul.export import hf_config

    torch.manual_seed(cfg.seed)
    vocab = resolve_vocab_size(mcfg)
    model = LlamaForCausalLM(hf_config(mcfg, vocab)).to(device)  # fp32 master weights
    result.params = sum(p.numel() for p in model.parameters())
    optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.optim.lr, betas=(cfg.optim.beta1, cfg.optim.beta2),
                                  weight_decay=cfg.optim.weight_decay, fused=device.type == "cuda")
    forward = torch.compile(model) if cfg.compile else model
    result.extra["compiled"] = cfg.compile
    batches = _tokens(cfg, vocab, device)

    def step(batch: torch.Tensor) -> torch.Tensor:
        with torch.autocast(device.type, dtype=torch.bfloat16):
            loss = forward(input_ids=batch, labels=batch).loss
        loss.backward()
        if cfg.optim.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.optim.grad_clip, foreach=device.type == "cuda")
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        return loss.detach()

    _measure(cfg, step, batches, device, result)


def _measure(cfg: BenchConfig, step: Any, batches: list[torch.Tensor], device: torch.device,
             result: BenchResult) -> None:
    reset_peak_memory(device)
    warmup_s, step_s, first, last = _time_steps(cfg, step, batches, device)
    tokens = cfg.micro_batch * cfg.seq_len
    spec = device_spec(device)
    result.warmup_s = warmup_s
    result.step_ms = step_s * 1e3
    result.tokens_per_s = tokens / step_s
    result.mfu_bf16 = mfu(result.tokens_per_s, result.flops_per_token, spec.bf16_tflops if spec else None)
    result.mfu_fp8 = mfu(result.tokens_per_s, result.flops_per_token, spec.fp8_tflops if spec else None)
    result.peak_mem_gib = peak_memory_gib(device)
    result.loss_first, result.loss_last = first, last


def run_bench(cfg: BenchConfig, log: Any = print) -> list[BenchResult]:
    """Run the whole matrix; returns one result per run (errors included)."""
    from yxanul.train.build import release_built

    device = torch.device(cfg.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        from yxanul.errors import ConfigError

        raise ConfigError("device=cuda but no CUDA GPU is visible; use device=cpu to check the code paths")
    card = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    if device.type == "cuda" and "fp8" in cfg.precisions:
        preload_te()  # before the peer's attention loads torch's cuDNN
    results: list[BenchResult] = []
    for preset, prec, head, attention in plan(cfg):
        mcfg = _model_cfg(cfg, preset, head, attention)
        result = BenchResult(
            preset=preset, impl="hf-peer" if prec is None else "yxanul",
            precision="bf16" if prec is None else prec.mode,
            recipe=prec.recipe if prec is not None and prec.mode == "fp8" else None,
            fp8_layers=_layers_label(prec.fp8_layers) if prec is not None and prec.mode == "fp8" else None,
            micro_batch=cfg.micro_batch, seq_len=cfg.seq_len, params=parameter_count(mcfg).total,
            flops_per_token=flops_per_token(mcfg, cfg.seq_len), card=card,
            head=None if prec is None else _head(mcfg), head_in_label=len(cfg.head_chunk_tokens) > 1,
            attention=None if prec is None else attention, attention_in_label=len(cfg.attention_backends) > 1)
        log(f"[bench] {preset}: {result.label} ...")
        try:
            if prec is None:
                _run_peer(cfg, mcfg, device, result)
            else:
                _run_ours(cfg, mcfg, prec, device, result)
        except Exception as exc:  # a benchmark matrix reports a failed cell and goes on
            result.error = f"{type(exc).__name__}: {first_line(str(exc))}"[:300]
            log(traceback.format_exc())
        release_built()
        log(f"[bench]   -> {_summary(result)}")
        results.append(result)
    _ratios(results)
    if cfg.output:
        _write(cfg, results)
    return results


def _summary(r: BenchResult) -> str:
    if r.error:
        return f"error: {r.error}"
    return (f"{r.tokens_per_s:,.0f} tokens/s, {r.step_ms:.1f} ms/step, peak {r.peak_mem_gib or 0:.1f} GiB, "
            f"warmup {r.warmup_s:.0f}s, loss {r.loss_first:.3f} -> {r.loss_last:.3f}")


def _ratios(results: list[BenchResult]) -> None:
    for preset in {r.preset for r in results}:
        rows = [r for r in results if r.preset == preset and r.tokens_per_s]
        peer = next((r for r in rows if r.impl == "hf-peer"), None)
        for r in rows:
            if peer is not None and r is not peer:
                r.vs_peer = r.tokens_per_s / peer.tokens_per_s
            # against our BF16 with the same head path and attention, else the first BF16 row
            bf16 = next((b for b in rows if b.impl == "yxanul" and b.precision == "bf16" and b.head == r.head
                         and b.attention == r.attention),
                        next((b for b in rows if b.impl == "yxanul" and b.precision == "bf16"), None))
            if bf16 is not None and r.impl == "yxanul":
                r.vs_bf16 = r.tokens_per_s / bf16.tokens_per_s


def _fmt(value: float | None, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{100 * value:.1f}%"


def format_table(results: list[BenchResult]) -> str:
    """Markdown table of the results."""
    head = ("| preset | run | tokens/s | step ms | MFU bf16 | MFU fp8 | peak GiB | vs peer | vs our bf16 |\n"
            "|---|---|---:|---:|---:|---:|---:|---:|---:|")
    rows = []
    for r in results:
        if r.error:
            rows.append(f"| {r.preset} | {r.label} | error: {r.error} | | | | | | |")
            continue
        rows.append(f"| {r.preset} | {r.label} | {r.tokens_per_s:,.0f} | {r.step_ms:.1f} | "
                    f"{_pct(r.mfu_bf16)} | {_pct(r.mfu_fp8)} | "
                    f"{_fmt(r.peak_mem_gib, '.1f')} | {_fmt(r.vs_peer, '.2f')} | {_fmt(r.vs_bf16, '.2f')} |")
    return "\n".join([head, *rows])


def environment() -> dict[str, Any]:
    """Card, versions and date of this measurement."""
    env: dict[str, Any] = {
        "date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "card": torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu",
    }
    # Versions from package metadata: importing transformer_engine after torch has loaded its
    # cuDNN fails on the H100 image (see run_bench).
    from importlib.metadata import PackageNotFoundError, version

    for key, dist in (("transformers", "transformers"), ("transformer_engine", "transformer_engine")):
        try:
            env[key] = version(dist)
        except PackageNotFoundError:
            pass
    return env


def _write(cfg: BenchConfig, results: list[BenchResult]) -> None:
    out = Path(cfg.output)  # type: ignore[arg-type]
    out.parent.mkdir(parents=True, exist_ok=True)
    env = environment()
    atomic_write(out, "".join(json.dumps({**asdict(r), **env, "label": r.label}) + "\n" for r in results))
    out.with_suffix(".md").write_text(
        f"{env['card']}, torch {env['torch']}, {env['date']}\n\n{format_table(results)}\n")
