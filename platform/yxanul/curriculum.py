"""Sequence-length curriculum: a stage table in tokens -> the batch shape of every optimizer step.

Pure (no torch, no Ray, no I/O). Every optimizer step sees exactly ``train.tokens_per_step`` tokens
over all workers, whatever the stage: per worker that is ``tokens_per_step / num_workers`` tokens,
i.e. ``micro_batch x grad_accum`` sequences of the stage's ``seq_len``. The micro-batch is the
largest one whose ``micro_batch x seq_len`` fits ``train.max_tokens_per_microbatch``.

Stage boundaries are in tokens but land on whole steps: a step belongs to the stage whose
``until`` it has not yet reached (tokens seen *before* the step), so a stage covers
``ceil(until / tokens_per_step)`` steps in total. The run has ``ceil(max_tokens / tokens_per_step)``
steps; the last stage always runs to the end. Stages that get no step at this budget are dropped.

    plan = build_plan(cfg)
    print(plan.table())
    stage = plan.stage_for_step(step)
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

from yxanul.config import ExperimentConfig, StageConfig
from yxanul.errors import ConfigError
from yxanul.formatting import human_count
from yxanul.text import table as text_table

__all__ = ["AUTO_MICROBATCH_CPU", "CurriculumPlan", "Stage", "build_plan", "microbatch_budget", "unmeasured_budget"]


@dataclass(frozen=True)
class Stage:
    """One resolved curriculum stage: a contiguous range of optimizer steps with one batch shape."""

    index: int
    """Position in the plan (0-based), also part of the data-order seed."""
    start_step: int
    """First optimizer step of the stage (0-based, inclusive)."""
    end_step: int
    """One past the last optimizer step of the stage."""
    tokens_per_step: int
    """Tokens per optimizer step over all workers."""
    seq_len: int
    """Sequence length of every micro-batch in the stage."""
    micro_batch: int
    """Sequences per micro-batch per worker."""
    grad_accum: int
    """Micro-batches per optimizer step per worker."""
    lr_scale: float
    """Multiplier on the scheduled learning rate."""
    buckets: tuple[int, ...] | None
    """Dataset buckets to sample from; None: the dataset's default for this seq_len."""

    @property
    def steps(self) -> int:
        return self.end_step - self.start_step

    @property
    def start_tokens(self) -> int:
        return self.start_step * self.tokens_per_step

    @property
    def end_tokens(self) -> int:
        return self.end_step * self.tokens_per_step

    @property
    def sequences_per_step(self) -> int:
        """Sequences one worker consumes per optimizer step."""
        return self.micro_batch * self.grad_accum


@dataclass(frozen=True)
class CurriculumPlan:
    """The whole run: stages in order, covering steps ``0 .. total_steps``."""

    stages: tuple[Stage, ...]
    tokens_per_step: int
    num_workers: int
    max_tokens: int
    dropped: tuple[str, ...] = ()
    """Human-readable notes on configured stages that got no step at this budget."""

    @property
    def total_steps(self) -> int:
        return self.stages[-1].end_step

    @property
    def total_tokens(self) -> int:
        """Tokens actually trained: whole steps, so ``max_tokens`` rounded up to ``tokens_per_step``."""
        return self.total_steps * self.tokens_per_step

    def stage_for_step(self, step: int) -> Stage:
        """The stage that optimizer step ``step`` (0-based) belongs to."""
        if step < 0 or step >= self.total_steps:
            raise IndexError(f"step {step} is outside the run (0..{self.total_steps - 1})")
        for stage in self.stages:
            if step < stage.end_step:
                return stage
        raise AssertionError("unreachable: stages cover every step")

    def rows(self) -> list[dict[str, object]]:
        """The stage table as plain dicts (dry-run output, MLflow artifact)."""
        return [
            {"stage": s.index, "start_tokens": s.start_tokens, "end_tokens": s.end_tokens,
             "tokens": s.end_tokens - s.start_tokens, "seq_len": s.seq_len,
             "buckets": list(s.buckets) if s.buckets else None, "micro_batch": s.micro_batch,
             "grad_accum": s.grad_accum, "steps": s.steps, "lr_scale": s.lr_scale}
            for s in self.stages
        ]

    def table(self) -> str:
        """A fixed-width text table for ``--dry-run``."""
        head = ("stage", "tokens", "from", "to", "seq_len", "buckets", "micro_batch", "accum", "steps", "lr_scale")
        body = [(str(s.index), human_count(s.end_tokens - s.start_tokens), human_count(s.start_tokens),
                 human_count(s.end_tokens), str(s.seq_len),
                 ",".join(map(str, s.buckets)) if s.buckets else "default",
                 str(s.micro_batch), str(s.grad_accum), str(s.steps), f"{s.lr_scale:g}")
                for s in self.stages]
        lines = text_table([head, *body], align="right")
        lines.append(f"{self.total_steps} steps x {human_count(self.tokens_per_step)} tokens/step "
                     f"= {human_count(self.total_tokens)} tokens over {self.num_workers} worker(s)")
        lines += [f"note: {note}" for note in self.dropped]
        return "\n".join(lines)


def _batch_shape(tokens_per_step: int, num_workers: int, max_tokens_per_microbatch: int,
                 seq_len: int, where: str) -> tuple[int, int]:
    """(micro_batch, grad_accum) for one worker, or a ConfigError that says which number to change."""
    if tokens_per_step % num_workers:
        raise ConfigError(
            f"train.tokens_per_step={tokens_per_step} is not divisible by scaling.num_workers={num_workers}; "
            f"use a multiple of {num_workers}")
    per_worker = tokens_per_step // num_workers
    if per_worker % seq_len:
        need = num_workers * seq_len
        raise ConfigError(
            f"{where} (seq_len {seq_len}): train.tokens_per_step={tokens_per_step} over scaling.num_workers="
            f"{num_workers} gives {per_worker} tokens per worker per step, which is not a whole number of "
            f"{seq_len}-token sequences; set train.tokens_per_step to a multiple of num_workers x seq_len = {need} "
            f"(e.g. {max(1, round(tokens_per_step / need)) * need})")
    if seq_len > max_tokens_per_microbatch:
        raise ConfigError(
            f"{where}: seq_len {seq_len} exceeds train.max_tokens_per_microbatch={max_tokens_per_microbatch} "
            f"(one sequence must fit a micro-batch); raise train.max_tokens_per_microbatch to at least {seq_len}")
    sequences = per_worker // seq_len
    limit = max_tokens_per_microbatch // seq_len
    micro_batch = max(d for d in range(1, min(sequences, limit) + 1) if sequences % d == 0)
    return micro_batch, sequences // micro_batch


def _until(stage: StageConfig, max_tokens: int) -> int | None:
    if stage.until_tokens is not None:
        return stage.until_tokens
    if stage.until_fraction is not None:
        return round(stage.until_fraction * max_tokens)
    return None


def _linear_warmup_stages(cfg: ExperimentConfig, per_worker: int,
                          seq_len_ok: Callable[[int], bool], budget: int) -> list[StageConfig]:
    """seq_len(t) = start + (end - start) * t / warmup_tokens, rounded down to the nearest length that is
    a multiple of `multiple`, divides the per-worker tokens of a step and the data can serve."""
    warm = cfg.curriculum.linear_warmup
    assert warm is not None
    tps, max_tokens = cfg.train.tokens_per_step, cfg.train.max_tokens
    cap = min(warm.end_seq_len, budget)
    lengths = [n for n in range(warm.multiple, cap + 1, warm.multiple)
               if per_worker % n == 0 and seq_len_ok(n)]
    if not lengths:
        raise ConfigError(
            f"curriculum.linear_warmup: no sequence length <= {cap} is a multiple of {warm.multiple}, divides the "
            f"{per_worker} tokens per worker per step and is served by the dataset; check train.tokens_per_step "
            f"and curriculum.linear_warmup.end_seq_len")
    warm_tokens = warm.fraction * max_tokens
    warm_steps = math.ceil(warm_tokens / tps)
    stages: list[StageConfig] = []
    for step in range(warm_steps):
        target = warm.start_seq_len + (warm.end_seq_len - warm.start_seq_len) * (step * tps) / warm_tokens
        fitting = [n for n in lengths if n <= target]
        length = fitting[-1] if fitting else lengths[0]
        if stages and stages[-1].seq_len == length:
            stages[-1] = stages[-1].model_copy(update={"until_tokens": (step + 1) * tps})
        else:
            stages.append(StageConfig(until_tokens=(step + 1) * tps, seq_len=length))
    return stages


AUTO_MICROBATCH_CPU = 16384
"""What ``train.max_tokens_per_microbatch: auto`` means where there is no GPU memory to measure (CPU), and
the budget the driver plans with before a GPU worker has measured it."""


def unmeasured_budget(longest_seq_len: int) -> int:
    """The one rule for an ``auto`` micro-batch budget that nothing measured (CPU, or the driver before a GPU
    worker measures): :data:`AUTO_MICROBATCH_CPU` tokens, or the longest sequence if that is longer (one
    sequence must fit). The measured rule is ``yxanul.train.build.fit_microbatch``."""
    return max(AUTO_MICROBATCH_CPU, longest_seq_len)


def microbatch_budget(cfg: ExperimentConfig) -> int:
    """``train.max_tokens_per_microbatch`` as a number: auto gives :func:`unmeasured_budget` of the longest
    sequence the curriculum asks for."""
    value = cfg.train.max_tokens_per_microbatch
    if value != "auto":
        return int(value)
    return unmeasured_budget(max([s.seq_len for s in cfg.curriculum.stages]
                                 + ([cfg.curriculum.linear_warmup.end_seq_len] if cfg.curriculum.linear_warmup else [])))


def build_plan(cfg: ExperimentConfig, num_workers: int | None = None,
               seq_len_ok: Callable[[int], bool] | None = None,
               max_tokens_per_microbatch: int | None = None) -> CurriculumPlan:
    """Resolve ``cfg.curriculum`` against the token budget and the workers into a :class:`CurriculumPlan`.

    ``seq_len_ok`` (optional) says which sequence lengths the dataset can serve; only the generated stages of
    a linear warmup use it (the data loader checks explicit stages and names the fix).
    ``max_tokens_per_microbatch`` replaces the config's value (a GPU worker's measured ``auto`` budget).
    """
    budget = max_tokens_per_microbatch or microbatch_budget(cfg)
    workers = num_workers or cfg.scaling.num_workers
    tps, max_tokens = cfg.train.tokens_per_step, cfg.train.max_tokens
    if tps <= 0:
        raise ConfigError("train.tokens_per_step must be positive")
    if max_tokens <= 0:
        raise ConfigError("train.max_tokens must be positive")
    if tps % workers:
        raise ConfigError(f"train.tokens_per_step={tps} is not divisible by scaling.num_workers={workers}; "
                          f"use a multiple of {workers}")
    configured = list(cfg.curriculum.stages)
    if cfg.curriculum.linear_warmup is not None:
        configured = _linear_warmup_stages(cfg, tps // workers, seq_len_ok or (lambda n: True), budget) + configured
    if not configured:
        raise ConfigError("curriculum.stages is empty; give at least one stage {seq_len: ...}")

    total_steps = math.ceil(max_tokens / tps)
    stages: list[Stage] = []
    dropped: list[str] = []
    start, previous_until = 0, -1
    for i, stage_cfg in enumerate(configured):
        where = f"curriculum stage {i}"
        last = i == len(configured) - 1
        until = _until(stage_cfg, max_tokens)
        if until is None and not last:
            raise ConfigError(f"{where} (seq_len {stage_cfg.seq_len}) has neither until_tokens nor until_fraction; "
                              f"only the last stage may omit them")
        if until is not None and not last and until < previous_until:
            raise ConfigError(f"{where} ends at {until} tokens, before the previous stage's end ({previous_until}); "
                              f"stages must be in increasing order of until_tokens / until_fraction")
        previous_until = until if until is not None else previous_until
        end = total_steps if last else min(total_steps, math.ceil(until / tps))
        micro_batch, grad_accum = _batch_shape(tps, workers, budget, stage_cfg.seq_len, where)
        if stage_cfg.buckets is not None:
            for bucket in stage_cfg.buckets:
                if bucket % stage_cfg.seq_len:
                    raise ConfigError(f"{where}: bucket {bucket} is not a multiple of seq_len {stage_cfg.seq_len}; "
                                      f"a stage cuts longer bucket rows into seq_len pieces, so list buckets that are "
                                      f"multiples of its seq_len")
        if end <= start:
            dropped.append(f"stage {i} (seq_len {stage_cfg.seq_len}, until {human_count(until or 0)} tokens) "
                           f"gets no step at train.max_tokens={human_count(max_tokens)}")
            continue
        stages.append(Stage(index=len(stages), start_step=start, end_step=end, tokens_per_step=tps,
                            seq_len=stage_cfg.seq_len, micro_batch=micro_batch, grad_accum=grad_accum,
                            lr_scale=stage_cfg.lr_scale,
                            buckets=tuple(stage_cfg.buckets) if stage_cfg.buckets else None))
        start = end
    return CurriculumPlan(stages=tuple(stages), tokens_per_step=tps, num_workers=workers,
                          max_tokens=max_tokens, dropped=tuple(dropped))
