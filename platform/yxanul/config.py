"""Typed experiment config: one YAML file plus dotted command-line overrides.

Precedence is command line > YAML file > defaults (here). Every section rejects unknown keys, and
every field documents itself (the docstring under a field is its description). Presets (model
shapes, curricula) live as YAML files under ``experiments/`` and are selected by name.

    cfg = load_config("experiments/runs/pulse.yaml", ["train.max_tokens=2e6", "precision.mode=bf16"])
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import urllib.parse
from pathlib import Path
from typing import Annotated, Any, Literal, get_args

import yaml
from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, ValidationError, model_validator

from yxanul.errors import ConfigError, first_line

# ---------------------------------------------------------------------------------------------------
# Helpers


LayerGroup = Literal["attention", "mlp", "head"]
"""A group of linear layers that can run in FP8 (``precision.fp8_layers``): attention = qkv + output projection,
mlp = gate|up + down, head = the output head."""
LAYER_GROUPS: tuple[str, ...] = get_args(LayerGroup)
"""Every :data:`LayerGroup`, in the order the model runs them."""
AttentionBackend = Literal["auto", "torch", "cudnn", "flash", "efficient", "math"]
"""``model.attention_backend``: which fused attention kernels SDPA tries first (yxanul.model.attention_priority)."""


def experiments_dir() -> Path:
    """Folder holding presets (``models/``, ``curricula/``), runs and sweeps.

    ``YXANUL_EXPERIMENTS_DIR`` overrides; otherwise the ``experiments/`` folder of this checkout.
    """
    env = os.environ.get("YXANUL_EXPERIMENTS_DIR")
    if env:
        return Path(env)
    return Path(__file__).resolve().parents[2] / "experiments"


class _Loader(yaml.SafeLoader):
    """SafeLoader that also reads ``1e-3`` and ``2e6`` as numbers (YAML 1.1 wants a dot: ``1.0e-3``)."""


_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"""^(?:[-+]?(?:[0-9][0-9_]*)\.[0-9_]*(?:[eE][-+]?[0-9]+)?
    |[-+]?(?:[0-9][0-9_]*)(?:[eE][-+]?[0-9]+)
    |\.[0-9_]+(?:[eE][-+][0-9]+)?
    |[-+]?\.(?:inf|Inf|INF)
    |\.(?:nan|NaN|NAN))$""", re.X),
    list("-+0123456789."),
)


def yaml_load(text: str) -> Any:
    """Parse YAML with :class:`_Loader` (safe; numbers like 1e-3 are floats)."""
    return yaml.load(text, Loader=_Loader)  # noqa: S506 - _Loader derives from SafeLoader


_SUFFIXES = {"k": 1e3, "m": 1e6, "b": 1e9, "g": 1e9, "t": 1e12}


def parse_count(value: Any) -> Any:
    """Accept token counts as ``2000000``, ``2e6``, ``"2e6"``, ``"2M"``, ``"1.5B"``, ``"2_000_000"``."""
    if isinstance(value, bool):
        return value  # let pydantic reject it
    if isinstance(value, float):
        if not value.is_integer():
            raise ValueError(f"expected a whole number of tokens, got {value}")
        return int(value)
    if isinstance(value, str):
        text = value.strip().replace("_", "").lower()
        scale = 1.0
        if text and text[-1] in _SUFFIXES:
            scale, text = _SUFFIXES[text[-1]], text[:-1]
        try:
            number = float(text) * scale
        except ValueError:
            raise ValueError(f"expected a token count like 2000000, 2e6 or 2M, got {value!r}") from None
        if not number.is_integer():
            raise ValueError(f"expected a whole number of tokens, got {value!r}")
        return int(number)
    return value


Count = Annotated[int, BeforeValidator(parse_count), Field(ge=0)]
"""A non-negative integer count (tokens, steps) that also accepts ``2e6`` / ``"2M"`` spellings."""


def _is_power_of_two(n: int) -> bool:
    return n > 0 and (n & (n - 1)) == 0


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, use_attribute_docstrings=True)


def _load_preset(kind: str, name: str) -> dict[str, Any]:
    path = experiments_dir() / kind / f"{name}.yaml"
    if not path.is_file():
        available = sorted(p.stem for p in (experiments_dir() / kind).glob("*.yaml"))
        raise ValueError(f"unknown {kind} preset {name!r} (no {path}); available: {', '.join(available)}")
    data = yaml_load(path.read_text()) or {}
    if not isinstance(data, dict):
        raise ValueError(f"preset file {path} must hold a mapping, got {type(data).__name__}")
    return data


# ---------------------------------------------------------------------------------------------------
# Sections


class RunConfig(_Section):
    name: str = "yxanul"
    """Run name. A run started again with the same name and storage path resumes from its latest checkpoint."""
    seed: int = 0
    """Seed for initialisation, data order and dropout; two runs with the same seed see the same tokens."""
    storage_path: str = "./outputs/ray"
    """Where Ray Train keeps checkpoints and run state (a local folder, or s3://... on a cluster)."""


class DataConfig(_Section):
    sources: list[str] = ["builtin:wiki-en", "builtin:python-code"]
    """Training text: parquet files, directories, globs, pyarrow-filesystem URIs (s3://...), or builtin:NAME."""
    validation_sources: dict[str, list[str]] = {
        "math": ["builtin:gsm8k-test"],
        "code": ["builtin:humaneval"],
    }
    """Extra validation-only text per domain name (in addition to the held-out slice of `sources`)."""
    validation_fraction: float = Field(0.02, ge=0.0, lt=1.0)
    """Fraction of training documents held out for validation, chosen by a stable hash of the document id."""
    output_dir: str = "./outputs/data/default"
    """Prepared dataset folder: manifest.json, bucket=<len>/ and validation/<domain>/."""
    text_column: str = "text"
    """Column holding the document text in parquet sources."""
    id_column: str | None = None
    """Column holding a stable document id (hash of the text when unset); drives the train/validation split."""
    mode: Literal["decompose", "packed"] = "decompose"
    """decompose: power-of-two chunks into length buckets (curricula); packed: concatenate + EOS + cut to seq_len."""
    min_bucket: int = 8
    """Shortest bucket length (a power of two); shorter leftovers are packed together into this bucket."""
    max_bucket: int = 2048
    """Longest bucket length (a power of two); longer documents fill chunks of this length first."""
    seq_len: int = Field(2048, gt=1)
    """Row length in packed mode."""
    on_bad_file: Literal["error", "skip"] = "error"
    """What to do with an unreadable parquet file: stop with an error, or skip it and count it in the manifest."""
    max_documents: int | None = Field(None, gt=0)
    """Read at most this many documents per source (quick runs); None reads everything."""
    cache_dir: str = "~/.cache/yxanul"
    """Where built-in corpora are materialised as parquet, once."""
    builtin_max_bytes: Count | None = None
    """Cap on builtin:installed-python (the other built-ins are a few MB): files are taken in the order of their
    content hash until this many bytes, a deterministic sample; None takes every file."""
    default_domain: str = Field("english", pattern=r"^[A-Za-z0-9_\-]+$")
    """Validation domain of held-out documents from user sources (built-in corpora carry their own)."""
    tokenize_actors: int | None = Field(None, gt=0)
    """Tokenizer actors in the Ray Data pool (one tokenizer each); None: one per CPU of the cluster."""
    shuffle_window: int = Field(16, gt=0)
    """Training, not preparation: row groups whose rows are shuffled together. Each epoch's row-group order is cut
    into windows of this many and the rows of a window are permuted together, so one optimizer step mixes rows of
    that many row groups instead of taking a slice of one (~1 MiB of consecutive packed text). Memory: a worker
    holds one window's row groups at a time (16 x ~1 MiB). 1 = the per-row-group order of runs before it
    existed. Left out of the dataset's config hash (docs/training.md, Order and sharding)."""
    order_seed: int | None = None
    """Training, not preparation: the seed of the training data order; None follows run.seed. Set it (e.g. 0) and
    seed replicates differ in their initialisation only: every seed of every arm trains on the same token sequence,
    so the seed spread of a comparison is not also the spread of which part of the corpus each seed happened to
    see (the science setup fixes it: docs/results/calibration/README.md). Left out of the dataset's config hash."""

    @model_validator(mode="after")
    def _check_buckets(self) -> DataConfig:
        for key in ("min_bucket", "max_bucket"):
            value = getattr(self, key)
            if not _is_power_of_two(value):
                raise ValueError(f"data.{key} must be a power of two, got {value}")
        if self.min_bucket > self.max_bucket:
            raise ValueError(
                f"data.min_bucket ({self.min_bucket}) is larger than data.max_bucket ({self.max_bucket})"
            )
        return self


class TokenizerConfig(_Section):
    path: str = "./outputs/tokenizer/bpe-8k/tokenizer.json"
    """A tokenizer.json file, or a Hugging Face hub id (org/name) when online. jobs.tokenizer writes here."""
    kind: Literal["bpe", "superbpe"] = "bpe"
    """What jobs.tokenizer trains: byte-level BPE, or SuperBPE (superword merges after `transition`)."""
    vocab_size: int = Field(8192, ge=260)
    """Vocabulary size of a trained tokenizer, special tokens included."""
    transition: int | None = Field(None, gt=0)
    """SuperBPE: vocabulary size at which stage 1 (words) stops and stage 2 (superwords) begins; None: 90% of vocab_size."""
    train_sample_bytes: Count = 20_000_000
    """Bytes of text sampled from data.sources to train the tokenizer (split evenly over the sources)."""
    min_frequency: int = Field(2, ge=1)
    """A pair of tokens must occur at least this often in the sample to become a merge."""
    max_words_per_token: int = Field(4, ge=1)
    """SuperBPE: no superword token spans more than this many whitespace-separated words."""
    compare: list[str] = []
    """More tokenizers (tokenizer.json paths, folders or hub ids) that jobs.tokenizer_report measures beside `path`."""
    report_bytes_per_domain: Count = 2_000_000
    """jobs.tokenizer_report: at most this many bytes of validation text per domain."""

    @model_validator(mode="after")
    def _check_transition(self) -> TokenizerConfig:
        if self.transition is not None and not 258 <= self.transition < self.vocab_size:
            raise ValueError(f"tokenizer.transition ({self.transition}) must be at least 258 and below "
                             f"tokenizer.vocab_size ({self.vocab_size})")
        return self


class ModelConfig(_Section):
    preset: str | None = "tiny"
    """Shape preset from experiments/models/<preset>.yaml; keys given here override the preset's."""
    vocab_size: int | None = Field(None, gt=0)
    """Tokenizer vocabulary size; None (the default: leave it unset) takes it from the tokenizer. Padded to a
    multiple of 128 in the model. Training refuses a vocabulary larger than the tokenizer's beyond that padding
    (logits that are never a target cost compute and memory) unless allow_unused_vocab is set."""
    allow_unused_vocab: bool = False
    """Let model.vocab_size exceed the tokenizer's vocabulary (speed benchmarks of the seed's 200k head on a
    smaller tokenizer's data); the extra rows are never a target. Never for experiments."""
    hidden: int = Field(128, gt=0)
    """Model width."""
    n_layers: int = Field(2, gt=0)
    """Number of transformer blocks."""
    n_heads: int = Field(4, gt=0)
    """Query heads."""
    n_kv_heads: int = Field(2, gt=0)
    """Key/value heads (grouped-query attention); must divide n_heads."""
    ffn_hidden: int = Field(344, gt=0)
    """SwiGLU inner width."""
    embed_rank: int = Field(0, ge=0)
    """Factorized embedding rank r (vocab x r, then r x hidden); 0 means a plain vocab x hidden embedding."""
    rope_theta: float = Field(10000.0, gt=0)
    """RoPE base."""
    context: int = Field(2048, gt=0)
    """Longest training sequence length."""
    max_positions: int = Field(4096, gt=0)
    """Longest sequence the RoPE tables cover (may exceed the training context)."""
    norm_eps: float = Field(1e-6, gt=0)
    """RMSNorm epsilon."""
    tie_embeddings: bool = False
    """Share the output head with the token embedding (only with embed_rank=0)."""
    head_chunk_tokens: Count | Literal["auto"] = "auto"
    """Tokens per chunk of the fused output head + loss: chunk by chunk, the head's logits, their loss and their
    gradients are computed and freed, so the whole tokens x vocabulary logits never exist (13 GB of BF16 for a
    32k-token micro-batch at a 200k vocabulary). 0 = the plain head (all logits, then the chunked loss). auto =
    8192 when the padded vocabulary has at least 65,536 columns, else 0 (yxanul.model.HEAD_CHUNK_AUTO_TOKENS; the
    GPU measurement in docs/benchmarks.md decided it). A multiple of 128, so FP8 GEMMs take every chunk."""
    attention_backend: AttentionBackend = "auto"
    """Which fused attention kernels ``scaled_dot_product_attention`` tries first (the others stay behind it, so a
    shape one cannot serve falls back): torch = torch's own order (FlashAttention-2 first, cuDNN last); cudnn,
    flash, efficient, math = that backend first; auto = cudnn on compute capability 9.x (H100, H200), torch's
    order elsewhere (yxanul.model.attention_priority; measurement: docs/benchmarks.md). The same attention either
    way, to rounding: it chooses kernels, not the model."""
    init_std: float = Field(0.02, gt=0)
    """Standard deviation of the normal initialisation of linear and embedding weights."""

    @model_validator(mode="before")
    @classmethod
    def _apply_preset(cls, data: Any) -> Any:
        if isinstance(data, dict) and data.get("preset"):
            merged = _load_preset("models", str(data["preset"]))
            merged.pop("preset", None)
            merged.update(data)
            return merged
        return data

    @model_validator(mode="after")
    def _check_shape(self) -> ModelConfig:
        if self.hidden % self.n_heads:
            raise ValueError(f"model.hidden ({self.hidden}) must be divisible by model.n_heads ({self.n_heads})")
        if self.n_heads % self.n_kv_heads:
            raise ValueError(
                f"model.n_heads ({self.n_heads}) must be divisible by model.n_kv_heads ({self.n_kv_heads})"
            )
        if (self.hidden // self.n_heads) % 2:
            raise ValueError(f"head dim hidden/n_heads = {self.hidden // self.n_heads} must be even for RoPE")
        if self.tie_embeddings and self.embed_rank:
            raise ValueError("model.tie_embeddings needs a plain embedding: set model.embed_rank=0")
        if self.head_chunk_tokens != "auto" and self.head_chunk_tokens % 128:
            raise ValueError(f"model.head_chunk_tokens={self.head_chunk_tokens} must be 0 or a multiple of 128 "
                             "(FP8 GEMMs need the token dimension divisible by 16, 32 for MXFP8); e.g. 4096")
        if self.max_positions < self.context:
            raise ValueError(f"model.max_positions ({self.max_positions}) is below model.context ({self.context})")
        return self


def _on_off(value: Any) -> Any:
    """YAML 1.1 reads a bare ``on``/``off`` as a boolean: accept both spellings."""
    if isinstance(value, bool):
        return "on" if value else "off"
    return value


class PrecisionConfig(_Section):
    mode: Literal["fp32", "bf16", "fp8", "auto"] = "fp32"
    """fp32 (CPU tests), bf16 autocast, fp8 (Transformer Engine on compute capability >= 8.9), or auto:
    fp8 where the card and software support it, else bf16 on a GPU, else fp32 (resolved per worker)."""
    recipe: Literal["delayed", "current", "block", "mxfp8"] = "delayed"
    """FP8 scaling recipe: delayed (DelayedScaling, HYBRID), current, block (>= 9.0), mxfp8 (>= 10.0)."""
    fp8_layers: list[LayerGroup] | Literal["auto"] = "auto"
    """Which linear layers run in FP8 (fp8 mode only); embeddings and norms always stay in high precision.
    auto (the default) times each group (attention, mlp, head) in BF16 and FP8 at start-up on the run's card,
    shape and recipe and keeps FP8 where it is at least 2% faster (at hidden 640 only the head pays; from
    hidden 1024 up all three; docs/benchmarks.md); the plan and its timings are logged. A list forces groups."""
    compile: Annotated[Literal["auto", "on", "off"], BeforeValidator(_on_off)] = "auto"
    """torch.compile the model region by region (blocks; around Transformer Engine modules): auto = on for
    CUDA, off for CPU (a first compiled step of even a tiny model takes minutes on CPU)."""
    compile_cache: bool = True
    """Keep Inductor's FX-graph and AOT-autograd caches (and Triton's kernels) in ``<run.storage_path>/compile-cache``,
    shared by every run and sweep trial on that storage, instead of Inductor's per-machine default under /tmp.
    false leaves Inductor's defaults alone (the before/after measurement, scripts/sweep_overhead.sh)."""

    @model_validator(mode="after")
    def _check_layers(self) -> PrecisionConfig:
        if self.mode == "fp8" and not self.fp8_layers:
            raise ValueError("precision.mode=fp8 with an empty precision.fp8_layers would train in BF16; name layers, "
                             "use auto, or use bf16")
        return self

    def compiles(self, device_type: str) -> bool:
        """Whether the model is compiled on a device of this type (``cuda``, ``cpu``)."""
        return self.compile == "on" or (self.compile == "auto" and device_type == "cuda")


class StageConfig(_Section):
    until_tokens: Count | None = None
    """This stage runs until the run has seen this many tokens (or give until_fraction; the last stage may omit both)."""
    until_fraction: float | None = Field(None, gt=0, le=1)
    """This stage runs until this fraction of train.max_tokens (presets that scale with the token budget)."""
    seq_len: int = Field(gt=1)
    """Sequence length of this stage."""
    buckets: list[int] | None = None
    """Dataset buckets this stage samples from; each must be a multiple of seq_len (longer rows are cut into
    seq_len pieces). Default: the bucket equal to seq_len (decomposed data) or the packed row length."""
    lr_scale: float = Field(1.0, gt=0)
    """Multiplier on the learning rate during this stage."""

    @model_validator(mode="after")
    def _check_until(self) -> StageConfig:
        if self.until_tokens is not None and self.until_fraction is not None:
            raise ValueError(f"a curriculum stage gives both until_tokens ({self.until_tokens}) and "
                             f"until_fraction ({self.until_fraction}); keep one")
        return self


class LinearWarmupConfig(_Section):
    start_seq_len: int = Field(8, gt=1)
    """Sequence length at the first step."""
    end_seq_len: int = Field(2048, gt=1)
    """Sequence length reached at the end of the warmup."""
    fraction: float = Field(0.25, gt=0, le=1)
    """Fraction of train.max_tokens over which seq_len grows linearly."""
    multiple: int = Field(8, gt=0)
    """seq_len is always a multiple of this (FP8 GEMMs need multiples of 8/16)."""


class CurriculumConfig(_Section):
    preset: str | None = None
    """Curriculum preset from experiments/curricula/<preset>.yaml."""
    stages: list[StageConfig] = [StageConfig(until_tokens=10**15, seq_len=256)]
    """Stages in order; the last one runs to train.max_tokens."""
    linear_warmup: LinearWarmupConfig | None = None
    """When set, seq_len first grows linearly (generated stages), then `stages` take over."""

    @model_validator(mode="before")
    @classmethod
    def _apply_preset(cls, data: Any) -> Any:
        if isinstance(data, str):
            data = {"preset": data}
        if isinstance(data, dict) and data.get("preset"):
            merged = _load_preset("curricula", str(data["preset"]))
            merged.pop("preset", None)
            merged.update(data)
            return merged
        return data


class OptimConfig(_Section):
    lr: float = Field(3e-3, gt=0)
    """Peak learning rate (AdamW)."""
    min_lr_ratio: float = Field(0.1, ge=0, le=1)
    """Final learning rate as a fraction of the peak."""
    schedule: Literal["cosine", "wsd"] = "cosine"
    """Warmup then cosine decay, or warmup-stable-decay; both as functions of tokens seen."""
    warmup_tokens: Count = 0
    """Linear warmup length in tokens."""
    decay_fraction: float = Field(0.2, gt=0, le=1)
    """wsd: fraction of train.max_tokens spent in the final decay."""
    weight_decay: float = Field(0.1, ge=0)
    """AdamW decoupled weight decay (not applied to norms, biases or embeddings)."""
    beta1: float = Field(0.9, ge=0, lt=1)
    """AdamW beta1."""
    beta2: float = Field(0.95, ge=0, lt=1)
    """AdamW beta2."""
    eps: float = Field(1e-8, gt=0)
    """AdamW epsilon."""
    grad_clip: float = Field(1.0, ge=0)
    """Clip the global gradient norm to this value; 0 disables clipping."""


class TrainConfig(_Section):
    max_tokens: Count = 1_000_000
    """Stop after this many training tokens."""
    tokens_per_step: Count = 16384
    """Tokens per optimizer step, over all workers; constant across curriculum stages."""
    max_tokens_per_microbatch: Count | Literal["auto"] = 16384
    """Per-worker memory budget: micro-batch size x seq_len never exceeds this. auto (GPU): at start-up, measure
    the memory of one and two sequences of the longest stage on the run's card and take the largest power of
    two sequences that fits in 85% of the card's memory (with the optimizer state); the choice is logged.
    On CPU auto means 16384."""
    on_nan: Literal["stop", "skip"] = "stop"
    """A NaN/inf loss stops the run with the step and stage named, or skips that optimizer step."""
    stop_after_tokens: Count | None = None
    """Stop (with a checkpoint) once this many tokens are seen, without changing the schedule, which still
    runs to max_tokens; a later run with the same run.name resumes. None: train to max_tokens."""
    profile_attention: bool = True
    """Profile one optimizer step per curriculum stage (rank 0; the step after the stage's warm-up) with
    torch.profiler and log the attention core's share of its time (train/attention_share): why a curriculum is
    faster or not. The profiled step is kept out of tokens/s; the results are unchanged (docs/training.md)."""


class EvalConfig(_Section):
    every_tokens: Count = 250_000
    """Validate every this many training tokens (and at the end); 0 validates only at the end."""
    seq_len: int = Field(256, gt=1)
    """Sequence length used for validation."""
    max_tokens_per_domain: Count = 65536
    """Validation tokens per domain (the same tokens every time). A domain with more is sampled over its whole
    split: every k-th document (k = ceil(domain tokens / this)), then the skipped ones in order until full."""
    bf16_eval: Annotated[Literal["auto", "on", "off"], BeforeValidator(_on_off)] = "auto"
    """At the run's final validation, validate the final weights a second time through the BF16 path (FP8 off:
    Transformer Engine's layers compute in BF16, as a BF16 run's do) and log ``val/bpb_bf16_eval``, so an FP8
    arm's quality is told apart from its evaluation numerics. auto = runs with layers in FP8; on = every run (a
    run without FP8 evaluates its own path again: the value equals val/bpb exactly); off = never."""


class LogConfig(_Section):
    every_steps: int = Field(10, gt=0)
    """Log metrics (and sync the device) every this many optimizer steps."""


class CheckpointConfig(_Section):
    every_tokens: Count | None = None
    """Checkpoint every this many tokens (and at the end). None (the default): at every validation point
    (``eval.every_tokens``), so an interrupted run or sweep trial resumes from its latest validation; 0: only
    at the end (a stop loses everything since the start)."""
    keep_last: int = Field(2, gt=0)
    """Checkpoints kept."""
    asynchronous: bool = True
    """Write checkpoints off the training thread: training waits only while the state is copied to host memory
    (a copy of the checkpoint's size, held until it is written); writing, hashing and the copy to
    ``run.storage_path`` run in Ray Train's upload thread (``CheckpointUploadMode.ASYNC``), in report order, and
    the run ends after the last one. One checkpoint is in flight at most: the next waits for it. False: training
    waits for the whole checkpoint (the timeline's ``checkpoint`` phase then holds all of it), as it does in Ray
    Train's local mode (``num_workers=0``), which persists no checkpoint."""


class TrackingConfig(_Section):
    enabled: bool = True
    """Log to MLflow (rank 0 only)."""
    uri: str | None = None
    """MLflow tracking URI; None uses $MLFLOW_TRACKING_URI, else the local store sqlite:///outputs/mlflow.db.
    A server with a login takes its account from $MLFLOW_TRACKING_USERNAME / $MLFLOW_TRACKING_PASSWORD."""
    experiment: str = "yxanul"
    """MLflow experiment name."""
    log_model: bool = False
    """Log the final model (Hugging Face format) as an artifact."""
    send_every_s: float = Field(10.0, ge=0)
    """The training loop sends its metrics to MLflow at most every this many seconds, in one batch, and everything
    pending at every validation/checkpoint report and at the end (a checkpoint never leaves metrics only in a
    batch: a resumed run does not log again what came before it). 0: each logging step's metrics at once. Each
    request waits the training thread: on the development VM 120 one-step sends to a SQLite store took 0.63 s, one
    batch of 60 steps 0.05 s; a remote server adds its round trip to every request."""

    @model_validator(mode="after")
    def _no_password_in_uri(self) -> TrackingConfig:
        # The URI is a run param and part of the logged config: a password in it would be stored in clear.
        if self.uri and urllib.parse.urlsplit(self.uri).password is not None:
            raise ValueError("tracking.uri must not contain a password (it is logged with every run); "
                             "set MLFLOW_TRACKING_USERNAME and MLFLOW_TRACKING_PASSWORD instead")
        return self


class ScalingConfig(_Section):
    num_workers: int = Field(1, gt=0)
    """Ray Train workers (one per GPU when use_gpu)."""
    use_gpu: bool = False
    """Train on GPUs (NCCL) instead of CPUs (gloo)."""
    accelerator_type: str | None = None
    """Ray accelerator type to request, e.g. H100, A100, L40S, L4 (passed to ScalingConfig); known
    types are spelled as Ray spells them (h100 -> H100, RTX4090 -> GeForce-RTX-4090)."""
    cpus_per_worker: float = Field(1.0, gt=0)
    """Logical CPUs reserved per worker."""
    max_failures: int = Field(0, ge=-1)
    """Restarts from the latest checkpoint after a worker failure (-1: unlimited)."""
    strategy: Literal["ddp", "fsdp"] = "ddp"
    """Data parallelism over the workers: ddp replicates the model (fastest when it fits on one GPU); fsdp
    shards weights, gradients and optimizer state per transformer block (FSDP2), for models that do not fit."""
    simulate_accelerators: bool = False
    """Rehearsal only, on a cluster whose GPUs are simulated (Ray's fake_multinode autoscaler, docs/cluster.md
    "Try the autoscaler locally"): every worker requests exactly what the real run requests (one GPU, the
    accelerator_type resource) so the autoscaler places it the same way, but trains on CPU in fp32 over gloo
    whatever precision.mode says. The MLflow run is tagged yxanul.simulated_accelerators=true with the
    precision it stood in for. Its speed and loss say nothing about GPUs; never set it for a real run."""

    @model_validator(mode="before")
    @classmethod
    def _canonical_accelerator(cls, data: Any) -> Any:
        # Ray matches resource names exactly: a request for "accelerator_type:h100" waits forever.
        # Types outside the capability table (a custom node label) are kept as written.
        if isinstance(data, dict) and isinstance(data.get("accelerator_type"), str):
            from yxanul.accelerators import SPECS, get_spec

            name = data["accelerator_type"]
            known = {k.lower() for k in SPECS} | {a.lower() for s in SPECS.values() for a in s.aliases}
            if name.strip().lower() in known:
                data = {**data, "accelerator_type": get_spec(name).name}
        return data

    @model_validator(mode="after")
    def _check_simulation(self) -> ScalingConfig:
        if self.simulate_accelerators and not self.use_gpu:
            raise ValueError("scaling.simulate_accelerators=true stands in for GPU workers, but scaling.use_gpu is "
                             "false: set scaling.use_gpu=true (resources.gpus_per_worker: 1 in a sweep), or drop "
                             "simulate_accelerators")
        return self


class ExperimentConfig(_Section):
    """A whole training run. Jobs that need only part of it read only that part."""

    run: RunConfig = RunConfig()
    data: DataConfig = DataConfig()
    tokenizer: TokenizerConfig = TokenizerConfig()
    model: ModelConfig = ModelConfig()
    precision: PrecisionConfig = PrecisionConfig()
    curriculum: CurriculumConfig = CurriculumConfig()
    optim: OptimConfig = OptimConfig()
    train: TrainConfig = TrainConfig()
    eval: EvalConfig = EvalConfig()
    log: LogConfig = LogConfig()
    checkpoint: CheckpointConfig = CheckpointConfig()
    tracking: TrackingConfig = TrackingConfig()
    scaling: ScalingConfig = ScalingConfig()

    def checkpoint_every_tokens(self) -> int:
        """The checkpoint interval in tokens: ``checkpoint.every_tokens``, or the validation interval when it is
        unset (None), so that by default a run checkpoints where it validates; 0: only at the end."""
        every = self.checkpoint.every_tokens
        return self.eval.every_tokens if every is None else every

    def data_order_seed(self) -> int:
        """The seed of the training data order: ``data.order_seed``, or ``run.seed`` when it is unset (None)."""
        return self.run.seed if self.data.order_seed is None else self.data.order_seed

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-compatible dict (what YAML, hashing and MLflow params use)."""
        return self.model_dump(mode="json")

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False)

    def flat_params(self) -> dict[str, str]:
        """Dotted key -> string value, for MLflow params."""
        return {key: json.dumps(value) if not isinstance(value, str) else value
                for key, value in _flatten(self.to_dict()).items()}

    def config_hash(self) -> str:
        """sha256 of the canonical JSON of the resolved config (first 16 hex digits)."""
        blob = json.dumps(self.to_dict(), sort_keys=True, separators=(",", ":")).encode()
        return hashlib.sha256(blob).hexdigest()[:16]


# ---------------------------------------------------------------------------------------------------
# Loading


def _flatten(tree: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    flat: dict[str, Any] = {}
    for key, value in tree.items():
        dotted = f"{prefix}{key}"
        if isinstance(value, dict) and value:
            flat.update(_flatten(value, dotted + "."))
        else:
            flat[dotted] = value
    return flat


_OVERRIDE = re.compile(r"^([A-Za-z_][\w\-]*(?:\.[A-Za-z_][\w\-]*)*)=(.*)$", re.S)


def parse_override(text: str) -> tuple[list[str], Any]:
    """``"a.b=1e6"`` -> (["a", "b"], value). Values are parsed as YAML (lists, numbers, booleans)."""
    match = _OVERRIDE.match(text)
    if not match:
        raise ConfigError(f"bad override {text!r}: expected dotted.key=value, e.g. train.max_tokens=2e6")
    key, raw = match.groups()
    try:
        value = yaml_load(raw) if raw.strip() else ""
    except yaml.YAMLError:
        value = raw
    return key.split("."), value


def apply_overrides(tree: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Apply dotted overrides to a nested dict (copying along the way), creating sections as needed."""
    tree = json.loads(json.dumps(tree))  # deep copy of plain data
    for text in overrides:
        path, value = parse_override(text)
        node = tree
        for part in path[:-1]:
            child = node.get(part)
            if isinstance(child, str) and part == "curriculum":
                child = {"preset": child}  # curriculum: NAME is shorthand for curriculum.preset: NAME
            if not isinstance(child, dict):
                child = {}
            node[part] = child
            node = child
        node[path[-1]] = value
    return tree


def read_yaml(path: str | Path) -> dict[str, Any]:
    """Read a YAML mapping, with errors that name the file."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file {path} does not exist")
    try:
        data = yaml_load(path.read_text())
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path} is not valid YAML: {first_line(exc)}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path} must hold a mapping of sections (run, data, model, ...), got {type(data).__name__}")
    return data


def format_validation_error(exc: ValidationError, source: str, overridden: set[str] = frozenset()) -> str:
    """One readable line per problem: the dotted key, where it came from, what is wrong."""
    problems = []
    for err in exc.errors():
        loc = [str(part) for part in err["loc"] if not str(part).startswith("function-")]
        key = ".".join(loc) or "(top level)"
        if any(key == o or key.startswith(o + ".") for o in overridden):
            origin = "on the command line"
        elif any(o.startswith(key + ".") for o in overridden):
            origin = f"in {source} or on the command line"
        else:
            origin = f"in {source}"
        if err["type"] == "extra_forbidden":
            problems.append(f"unknown key {key!r} {origin}")
        else:
            msg = err["msg"].removeprefix("Value error, ")
            value = err.get("input")
            if isinstance(value, dict):
                # A section-level validator: its message already names the keys involved.
                problems.append(f"{msg} ({origin})")
            else:
                shown = "" if repr(value) in msg else f" (got {value!r})"
                problems.append(f"{key} {origin}: {msg}{shown}")
    return "; ".join(problems)


def load_config(path: str | Path | None = None, overrides: list[str] | None = None,
                model: type[BaseModel] = ExperimentConfig) -> Any:
    """Load ``path`` (YAML; None for defaults), apply dotted ``overrides``, validate into ``model``."""
    overrides = list(overrides or [])
    tree = read_yaml(path) if path is not None else {}
    tree = apply_overrides(tree, overrides)
    source = str(path) if path is not None else "the defaults"
    try:
        return model.model_validate(tree)
    except ValidationError as exc:
        overridden = {".".join(parse_override(o)[0]) for o in overrides}
        raise ConfigError(format_validation_error(exc, source, overridden)) from None
