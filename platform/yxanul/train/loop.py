"""The per-worker training loop: run by Ray Train on each worker (``train_loop_per_worker``), or by a one-worker
sweep trial inside its own Ray Tune process (``train_in_process``). Everything the loop asks of Ray goes through
its :class:`~yxanul.train.session.Session`.

The loop owns the schedule: which curriculum stage and batch shape a step has, its learning rate, when
to log, validate and checkpoint. The step itself is :func:`yxanul.train.step.train_step` (pure); side
effects are the three explicit hooks ``_log``, ``_validate`` and ``_checkpoint``, each at whole steps.

Host syncs, all deliberate: the NaN/inf guard reads one scalar (the global gradient norm) per step, so
that a non-finite step is never applied; the logging interval reads the loss and the clock; validation
and checkpoints sync by nature; the first step of each batch shape, and on rank 0 the one step per stage
profiled for its attention share (``train.profile_attention``), are timed apart. Nothing else waits for the
device.

Every worker reports (``Session.report``) at the same steps (validation and checkpoint points, where the
latest train/* metrics are logged too), at most once per step. MLflow gets train/* every log interval.
"""

from __future__ import annotations

import functools
import json
import math
import os
import re
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from yxanul.config import ExperimentConfig, PrecisionConfig
from yxanul.console import worker_print
from yxanul.curriculum import CurriculumPlan, Stage, build_plan, microbatch_budget
from yxanul.data.loader import PreparedDataset, TrainStream, ValidationSet, load_validation
from yxanul.errors import DeviceMemoryError, YxanulError
from yxanul.fatal import marker_path, recording
from yxanul.files import atomic_write
from yxanul.formatting import clock, human_count, percent
from yxanul.profiling import AttentionShare
from yxanul.spikes import SpikeDetector, format_spikes, spike_start_tokens
from yxanul.tags import (
    ATTENTION_KERNELS_TAG,
    ATTENTION_MS_METRIC,
    ATTENTION_SHARE_METRIC,
    BF16_EVAL_SUFFIX,
    BUILD_SECONDS_TAG,
    COMPILE_CACHE_TAG,
    COMPILE_SCOPE_TAG,
    COMPILED_TAG,
    CURRICULUM_STAGES_TAG,
    DEVICE_MS_METRIC_PREFIX,
    EXECUTION_TAG,
    FP8_LAYERS_TAG,
    FP8_PLAN_TAG_PREFIX,
    MICROBATCH_TOKENS_TAG,
    PRECISION_PLAN_TAG,
    PRECISION_RAN_TAG,
    PROFILED_STEP_MS_METRIC,
    SIMULATED_TAG,
    SIMULATION_TAG,
    SPIKE_CHECK_TAG,
    SPIKES_TAG,
    WORKER_PID_TAG,
    WORKER_TIMELINE_TAG,
)
from yxanul.timeline import Timeline, timed
from yxanul.tracking import SPOOL_DIR, NullTracker, ResilientTracker, Tracker, device_tags, node_tags
from yxanul.train.checkpoint import (
    HostBuffers,
    TrainState,
    check_compatible,
    load_checkpoint,
    resume_values,
    snapshot,
    write_snapshot,
)
from yxanul.train.session import RayTrainSession, Session
from yxanul.train.setup import WorkerSetup

__all__ = ["NonFiniteLossError", "out_of_memory_fix", "out_of_memory_message", "train_in_process",
           "train_loop_per_worker"]

UPLOAD_WAIT_S = 600.0
"""How long a checkpoint waits for the previous one to be written (checkpoint.asynchronous) before a warning."""


class NonFiniteLossError(YxanulError):
    """A step produced a NaN/inf loss or gradient and train.on_nan=stop."""


def out_of_memory_message(torch_message: str, where: str, precision: str, fix: str,
                          memory: tuple[float, float] | None = None) -> str:
    """``CUDA out of memory at micro-batch 16x2048, fp8 (delayed; auto -> attention,mlp,head), 78.2 of 79.2 GiB in
    use (tried to allocate 3.05 GiB): <fix>``. The memory figures are the allocator's own at the failure (parsed
    from torch's message: total capacity and what was free), else ``memory`` (used GiB, card GiB) read after it."""
    tried = re.search(r"Tried to allocate ([\d.]+ [KMG]iB)", torch_message)
    capacity = re.search(r"total capacity of ([\d.]+) GiB of which ([\d.]+) ([KMG])iB is free", torch_message)
    if capacity:
        total = float(capacity.group(1))
        free = float(capacity.group(2)) / {"K": 2**20, "M": 2**10, "G": 1}[capacity.group(3)]
        memory = (total - free, total)
    figures = f", {memory[0]:.1f} of {memory[1]:.1f} GiB in use" if memory else ""
    return (f"CUDA out of memory at {where}, {precision}{figures}"
            f"{f' (tried to allocate {tried.group(1)})' if tried else ''}: {fix}")


def out_of_memory_fix(cfg: ExperimentConfig, *, params: int, world: int, card_gib: float | None,
                      chosen_tokens: int | None, unchunked_columns: int | None) -> str:
    """The fix an out-of-memory message names. ``card_gib``: the card's memory when the model is not built yet
    (the model itself may be what does not fit: fp32 weights, gradients and AdamW's two moments, 16 bytes per
    parameter, sharded by FSDP); ``chosen_tokens``: what ``max_tokens_per_microbatch: auto`` chose;
    ``unchunked_columns``: the padded vocabulary of a head that holds its whole logits."""
    from yxanul.model import HEAD_CHUNK_AUTO_MIN_COLUMNS

    state_gib = 16 * params / 2**30
    per_gpu = state_gib / (world if cfg.scaling.strategy == "fsdp" else 1)
    configured = cfg.train.max_tokens_per_microbatch
    if card_gib is not None and per_gpu > 0.9 * card_gib:
        fix = (f"the model alone does not fit: {params:,} parameters x 16 bytes (fp32 weights, gradients, AdamW "
               f"state) = {state_gib:.1f} GiB{f', {per_gpu:.1f} GiB per GPU' if per_gpu != state_gib else ''} of "
               f"{card_gib:.1f}; use a smaller model (model.preset, model.n_layers), or shard it with "
               f"scaling.strategy=fsdp over more GPUs")
    elif configured != "auto":
        fix = f"set train.max_tokens_per_microbatch=auto or lower it (now {configured:,})"
    elif chosen_tokens:
        fix = (f"train.max_tokens_per_microbatch=auto chose {chosen_tokens:,} tokens, which do not fit here: set a "
               f"number, e.g. train.max_tokens_per_microbatch={chosen_tokens // 2}")
    else:
        fix = "set train.max_tokens_per_microbatch to a number of tokens this card holds"
    if unchunked_columns is not None and unchunked_columns >= HEAD_CHUNK_AUTO_MIN_COLUMNS:
        fix += "; or model.head_chunk_tokens=auto, so the head never holds the whole logits"
    return fix


def _inject_test_failure(spec: str, step: int, resumed: bool) -> None:
    """Test-only (yxanul.train.setup.TEST_FAILURE_ENV): the failure ``<kind>@<step>`` names at that step: ``oom``,
    ``segv`` (a real segmentation fault of this process, only in a run that did not resume: its restart trains on),
    anything else a RuntimeError."""
    kind, _, at = spec.partition("@")
    if not (at or "0").isdigit() or step != int(at or 0):  # not a step (segv@mlflow: launch.py's)
        return
    if kind == "segv":
        if not resumed:
            import faulthandler

            faulthandler._sigsegv()
        return
    if kind == "oom":
        raise torch.OutOfMemoryError(
            "CUDA out of memory. Tried to allocate 3.05 GiB. GPU 0 has a total capacity of 79.19 GiB of which 1.02 GiB "
            "is free. Of the allocated memory 75.80 GiB is allocated by PyTorch (injected by YXANUL_TEST_FAILURE)")
    raise RuntimeError(f"injected test failure at step {step} (YXANUL_TEST_FAILURE={spec})")


def _seed_everything(seed: int) -> None:
    import random

    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def _crossed(before: int, after: int, every: int) -> bool:
    """Whether a multiple of ``every`` lies in (before, after]."""
    return every > 0 and after // every > before // every


def _eta_s(tokens_left: int, steady_tokens_per_s: float, tokens: int, elapsed_s: float) -> float:
    """Seconds to the end of the run for the progress line: at the steady rate of the last interval's timed steps
    (the first step of each shape, which compiles, and profiled steps are not in it), else at the run's average so
    far, else nan. The average alone would read a 2.5-minute run as 30 minutes after its first compile."""
    rate = steady_tokens_per_s if steady_tokens_per_s > 0 else (tokens / elapsed_s if elapsed_s > 0 else math.nan)
    return tokens_left / rate


def _bar(done: int, total: int, width: int = 20) -> str:
    filled = int(width * done / total) if total else width
    return "[" + "#" * filled + "." * (width - filled) + f"] {100 * done / total:5.1f}%"


class _Loop:
    def __init__(self, cfg: ExperimentConfig, setup: WorkerSetup, session: Session) -> None:
        self.cfg = cfg
        self.setup = setup
        self.session = session
        self.rank, self.world = session.rank, session.world
        # Checkpoints are written off the training thread (Ray Train's upload thread, or the in-process session's
        # writer), unless checkpoint.asynchronous=false or Ray Train's local mode, which never uploads.
        self.asynchronous = cfg.checkpoint.asynchronous and session.uploads_async
        self.device = self._device()
        self.timeline = Timeline()  # rank 0's is logged (yxanul.timeline); the driver adds its own phases
        self.where = "start-up (building the model: memory measurement, FP8 plan, compilation)"
        """What the worker is doing, for a one-line out-of-memory error."""
        self.started_at = time.time()
        self.upload_done: threading.Event | None = None
        """Set once the last asynchronously written checkpoint is written and on storage."""
        self.host_buffers = HostBuffers()
        """Host memory of the checkpoint snapshots, reused from one to the next (one checkpoint in flight)."""
        with self.timeline.phase("data"):
            self.dataset = PreparedDataset.open(setup.data_dir)
        self.plan: CurriculumPlan = build_plan(cfg, self.world, self.dataset.seq_len_ok)
        self.vocab = cfg.model.vocab_size or self.dataset.vocab_size
        self.curriculum_label = setup.curriculum_label
        # Fed at the logging interval with the interval's largest grad norm and loss (already on the host).
        self.spikes = SpikeDetector(start_tokens=spike_start_tokens(cfg.train.max_tokens, cfg.optim.warmup_tokens))

    def _device(self) -> torch.device:
        if not self.cfg.scaling.use_gpu or self.cfg.scaling.simulate_accelerators:
            return torch.device("cpu")
        device = self.session.device()
        torch.cuda.set_device(device)
        return device

    # -- setup -----------------------------------------------------------------------------------

    def _build(self) -> None:
        from yxanul.train.build import build_training

        _seed_everything(self.cfg.run.seed)
        longest = max(s.seq_len for s in self.plan.stages)
        say = (lambda msg: worker_print(self.cfg.run.name, msg)) if self.rank == 0 else None
        # scaling.simulate_accelerators, and nothing else, makes a bf16/fp8 run train in fp32 (on CPU, with
        # logical GPUs); the run's tags say so (_tracker).
        precision_cfg = (PrecisionConfig(mode="fp32") if self.cfg.scaling.simulate_accelerators
                         else self.cfg.precision)
        with self.timeline.phase("build"):
            built = build_training(
                self.cfg.model, precision_cfg, self.cfg.optim, self.device, vocab_size=self.vocab,
                max_tokens_per_microbatch=self.cfg.train.max_tokens_per_microbatch, seq_len=longest,
                max_sequences=self.cfg.train.tokens_per_step // self.world // longest,
                strategy=self.cfg.scaling.strategy, log=say,
                plan_cache_dir=Path(self.setup.fp8_plan_dir) if self.setup.fp8_plan_dir else None,
                compile_cache_dir=Path(self.setup.compile_cache_dir) if self.setup.compile_cache_dir else None)
        if built.fp8_plan is not None and not built.fp8_plan.cached:  # measured inside the build: its own phase
            self.timeline.add("build", -built.fp8_plan.measure_s)
            self.timeline.add("fp8_plan", built.fp8_plan.measure_s)
        self.built = built
        if self.cfg.train.max_tokens_per_microbatch == "auto":  # the measured budget changes the batch shapes
            self.plan = build_plan(self.cfg, self.world, self.dataset.seq_len_ok, built.tokens_per_microbatch)
            if say is not None:
                say(self.plan.table())
        self.tokens_per_microbatch = built.tokens_per_microbatch or microbatch_budget(self.cfg)
        self.precision = built.precision
        # self.model: the model itself (DDP's inner module; under FSDP the sharded model, which is both);
        # self.step_model: what the train step runs (the DDP wrapper, or the same sharded model).
        self.model, self.step_model, self.optimizer = built.model, built.step_model, built.optimizer
        self.state = TrainState(num_workers=self.world, tokens_per_step=self.cfg.train.tokens_per_step,
                                seed=self.cfg.run.seed, max_tokens=self.cfg.train.max_tokens,
                                shuffle_window=self.cfg.data.shuffle_window, order_seed=self.cfg.data.order_seed,
                                config_hash=self.cfg.config_hash(), run_id=self.setup.run_id)
        self.data_position: dict[str, Any] | None = None
        with self.timeline.phase("restore"):
            self._restore()

    def _log_build(self) -> None:
        """What the build decided on the card (compiled, micro-batch budget, FP8 plan): tags, an artifact, the
        console. Tags, not params: MLflow params are written by the driver and cannot change on resume."""
        built = self.built
        cache = (self.setup.compile_cache_dir or "inductor default") if built.compiled else "not compiled"
        tags = {COMPILED_TAG: str(built.compiled).lower(), PRECISION_PLAN_TAG: built.precision.describe(),
                COMPILE_CACHE_TAG: cache,
                MICROBATCH_TOKENS_TAG: str(self.tokens_per_microbatch),
                BUILD_SECONDS_TAG: ", ".join(f"{name} {value:.3f} s" for name, value in built.seconds.items())}
        stages = json.dumps([[s.index, s.seq_len, s.start_tokens, s.end_tokens] for s in self.plan.stages])
        if len(stages) <= 6000:  # MLflow takes 8000 characters; the report falls back to the logged points
            tags[CURRICULUM_STAGES_TAG] = stages
        if built.precision.mode == "fp8":  # forced or measured: the groups that really run in FP8 (the report's word)
            tags[FP8_LAYERS_TAG] = "+".join(built.precision.fp8_layers or ()) or "none"
        if built.fp8_plan is not None:
            for group in built.fp8_plan.timings:
                tags[f"{FP8_PLAN_TAG_PREFIX}{group}"] = built.fp8_plan.group_line(group)
            self.tracker.log_text(json.dumps(built.fp8_plan.to_json(), indent=2), "fp8_plan.json")
        if built.microbatch_fit is not None:
            self.tracker.log_text(json.dumps(built.microbatch_fit, indent=2), "microbatch_fit.json")
        self.tracker.set_tags(tags)
        if self.rank == 0:
            worker_print(self.cfg.run.name, f"model: {built.describe()}")

    def _log_unigram(self) -> None:
        """The trivial baseline on the validation rows (``val/<domain>/unigram_bpb``, ``val/unigram_bpb`` as the
        same mean over domains as ``val/bpb``), logged once at token 0 for the report's reference line."""
        from yxanul.data.loader import unigram_bpb

        values = {d: unigram_bpb(self.dataset, v) for d, v in self.valsets.items()}
        if not values or None in values.values():
            return
        metrics = {f"val/{d}/unigram_bpb": v for d, v in values.items()}
        metrics["val/unigram_bpb"] = sum(values.values()) / len(values)
        self.tracker.log_metrics(metrics, step=0)
        if self.rank == 0 and self.state.step == 0:
            worker_print(self.cfg.run.name, f"unigram baseline (training-split token frequencies): bpb "
                         f"{metrics['val/unigram_bpb']:.4f} (" + " ".join(f"{d} {v:.4f}" for d, v in values.items())
                         + ")")

    def _restore(self) -> None:
        latest = self.session.latest_checkpoint()
        if latest is None:
            return
        checkpoint = self._usable_checkpoint(latest)
        with checkpoint.as_directory() as directory:
            state, data = load_checkpoint(directory, rank=self.rank, model=self.step_model, optimizer=self.optimizer)
        check_compatible(state, {**resume_values(self.cfg), "scaling.num_workers": self.world}, where=checkpoint.path)
        if self.rank == 0 and self.setup.run_id and state.run_id and state.run_id != self.setup.run_id:
            worker_print(self.cfg.run.name, f"warning: checkpoint was logged to MLflow run {state.run_id}, "
                         f"continuing in {self.setup.run_id}", err=True)
        state.run_id = self.setup.run_id or state.run_id
        state.config_hash = self.cfg.config_hash()
        self.state, self.data_position = state, data
        if self.rank == 0:
            worker_print(self.cfg.run.name, f"resumed from {checkpoint.path}: step {state.step}, "
                         f"{human_count(state.tokens)} tokens, stage {state.stage}")

    def _usable_checkpoint(self, latest: Any) -> Any:
        """The newest checkpoint of the run that verifies (every file the size and hash its manifest says).

        Rank 0 checks them newest first and the others take its choice (a broadcast index), so every rank
        loads the same one; a skipped checkpoint is one warning line naming the file. None usable: one
        CheckpointError line."""
        from yxanul.errors import CheckpointError
        from yxanul.train.checkpoint import candidates, verify_checkpoint

        found = candidates(latest)
        chosen, problems = -1, []
        if self.rank == 0:
            for index, candidate in enumerate(found):
                try:
                    with candidate.as_directory() as directory:
                        verify_checkpoint(directory)
                except CheckpointError as exc:
                    problems.append(str(exc))
                    continue
                except OSError as exc:  # a folder Ray lists but storage no longer has
                    problems.append(f"checkpoint {candidate.path} cannot be read ({exc})")
                    continue
                chosen = index
                break
        if self.world > 1:
            chosen = int(self._broadcast(torch.tensor([chosen], device=self.device)).item())
        if chosen < 0:
            first = problems[0] if problems else "rank 0 found none that verifies"
            older = f" (and {len(problems) - 1} older ones)" if len(problems) > 1 else ""
            raise CheckpointError(f"no usable checkpoint for run {self.cfg.run.name!r}: {first}{older}; start a new "
                                  f"run.name, or remove the run folder {latest.path.rsplit('/', 1)[0]}")
        if problems:
            worker_print(self.cfg.run.name, f"warning: {problems[0]}; resuming from the previous valid checkpoint "
                         f"{found[chosen].path}", err=True)
        return found[chosen]

    def _tracker(self) -> Tracker:
        if self.rank != 0 or not self.setup.tracking:
            return NullTracker()
        # Resilient: an MLflow failure (a rotated password, a server down) is one warning line, never the end of
        # training; what MLflow does not take by the end is kept in the run folder for `python -m jobs.replay`.
        tracker = ResilientTracker(self.setup.tracking_uri, self.setup.run_id,
                                   spool_dir=f"{self.setup.run_dir}/{SPOOL_DIR}" if self.setup.run_dir else None,
                                   say=lambda text: worker_print(self.cfg.run.name, text, err=True),
                                   send_every_s=self.cfg.tracking.send_every_s)
        simulated = self.cfg.scaling.simulate_accelerators
        tags = {**device_tags(self.cfg.scaling.use_gpu and not simulated, self.world), **node_tags(),
                EXECUTION_TAG: self.session.kind, WORKER_PID_TAG: str(os.getpid()),
                COMPILE_SCOPE_TAG: "run"}
        if simulated:
            ran = self.precision.mode
            tags.update({SIMULATED_TAG: "true", PRECISION_RAN_TAG: ran,
                         SIMULATION_TAG: f"precision.mode={self.cfg.precision.mode} ran as {ran} on CPU because "
                                         "scaling.simulate_accelerators=true (logical GPUs only)"})
        tracker.set_tags(tags)
        return tracker

    def _write_marker(self, event: str, step: int | None = None, tokens: int | None = None) -> None:
        """<run dir>/workers/rank<r>.json: pid, step, tokens of this worker process (for operators and tests).
        ``checkpoint``: this rank's part of the checkpoint at ``step``/``tokens`` is on the run's storage."""
        folder = self.setup.marker_dir
        if not folder:
            return
        step = self.state.step if step is None else step
        tokens = self.state.tokens if tokens is None else tokens
        atomic_write(marker_path(folder, self.rank), json.dumps({
            "pid": os.getpid(), "rank": self.rank, "step": step, "tokens": tokens, "event": event,
            "time": time.time()}))
        with open(Path(folder) / f"rank{self.rank}.log", "a") as log:
            log.write(f"{os.getpid()} {event} {step} {tokens}\n")

    # -- the loop --------------------------------------------------------------------------------

    def run(self) -> None:
        # A fault that kills this process (SIGSEGV, SIGABRT) leaves its stack where the driver reads it (yxanul.fatal).
        with recording(self.setup.marker_dir, self.rank):
            self._run()

    def _run(self) -> None:
        try:
            self._build()
            with self.timeline.phase("mlflow"):
                self.tracker = timed(self._tracker(), self.timeline, "mlflow")
            try:
                self._train()
            finally:
                self.tracker.close()  # sends what is left, or keeps it in the run folder
        except torch.OutOfMemoryError as exc:  # one line the user can act on, not torch's paragraph under Ray's
            raise DeviceMemoryError(self._out_of_memory(exc)) from None

    def _out_of_memory(self, exc: BaseException) -> str:
        """What ran out of memory where (:attr:`where`), in which precision, with how much memory, and the fix."""
        from yxanul.model import parameter_count

        built = getattr(self, "built", None)
        model = getattr(self, "model", None)
        card_gib = None
        memory = None
        if self.device.type == "cuda":
            free, total = torch.cuda.mem_get_info(self.device)
            memory, card_gib = ((total - free) / 2**30, total / 2**30), total / 2**30
        fix = out_of_memory_fix(
            self.cfg, params=parameter_count(self.cfg.model, self.vocab).total, world=self.world,
            card_gib=card_gib if built is None else None, chosen_tokens=getattr(self, "tokens_per_microbatch", None),
            unchunked_columns=model.padded_vocab if model is not None and not model.head_chunk_tokens else None)
        precision = built.precision.describe() if built is not None else self.cfg.precision.mode
        return out_of_memory_message(str(exc), self.where, precision, fix, memory)

    def _train(self) -> None:
        from yxanul.metrics import ThroughputMeter, flops_per_token, reset_peak_memory
        from yxanul.schedule import lr_for_step
        from yxanul.train.step import train_step

        self._log_build()
        with self.timeline.phase("data"):
            self.valsets: dict[str, ValidationSet] = load_validation(
                self.dataset, self.cfg.eval.seq_len, self.cfg.eval.max_tokens_per_domain)
        if self.rank == 0 and not self.valsets:
            worker_print(self.cfg.run.name, f"warning: {self.dataset.path} has no validation rows of "
                         f"{self.cfg.eval.seq_len} tokens; no validation metrics", err=True)
        with self.timeline.phase("data"):
            self._log_unigram()
        tps = self.cfg.train.tokens_per_step
        total_steps = self.plan.total_steps
        stop_tokens = self.cfg.train.stop_after_tokens
        stop_step = min(total_steps, math.ceil(stop_tokens / tps)) if stop_tokens else total_steps
        self._write_marker("start")
        started_at_step = self.state.step  # > 0: resumed from a checkpoint

        meter = ThroughputMeter(1.0, self.device, world=self.world)
        reset_peak_memory(self.device)
        shapes_seen: set[tuple[int, int]] = set()
        profiled_stages: set[int] = set()  # per process: a resumed run profiles the stage it resumes in again
        self.attention_kernels: set[str] = set()  # what computed attention in this process's profiled steps
        self.profile_attention = self.cfg.train.profile_attention and self.rank == 0
        stream: TrainStream | None = None
        stage: Stage | None = None
        loss_sum = torch.zeros((), device=self.device)
        loss_steps = 0
        grad_norm = torch.zeros((), device=self.device)
        peaks = self._no_peaks()  # (largest grad norm, largest loss) of the steps since the last log
        lr = 0.0
        elapsed_base = self.state.elapsed_s
        meter.start()
        steps_phase = self.timeline.phase("steps")  # the loop's time less the phases measured inside it
        steps_phase.__enter__()
        while self.state.step < stop_step:
            step = self.state.step
            if stage is None or step >= stage.end_step:
                stage = self.plan.stage_for_step(step)
                stream = self._stream(stage)
                meter.flops_per_tok = flops_per_token(self.cfg.model, stage.seq_len, self.vocab)
            assert stream is not None
            batch = torch.from_numpy(stream.take(stage.sequences_per_step))  # (n, seq_len) int64 on the host
            if self.device.type == "cuda":
                batch = batch.pin_memory()
            lr = lr_for_step(step, tps, self.cfg.optim, self.cfg.train.max_tokens, stage.lr_scale)
            self.where = f"micro-batch {stage.micro_batch}x{stage.seq_len}"
            if self.setup.test_failure:
                _inject_test_failure(self.setup.test_failure, step, resumed=started_at_step > 0)
            first_of_shape = (stage.seq_len, stage.micro_batch) not in shapes_seen
            # Once per stage, the first step after its shape's warm-up runs under the profiler (rank 0); kept out of
            # tokens/s like the warm-up, its own seconds still count in train/elapsed_s (those tokens were trained).
            profile = self.profile_attention and not first_of_shape and stage.index not in profiled_stages
            if first_of_shape or profile:
                meter.pause()
            if first_of_shape:  # compiles (or warms up): timed apart, kept out of tokens/s
                shapes_seen.add((stage.seq_len, stage.micro_batch))
                started = time.perf_counter()
            run_step = functools.partial(train_step, self.step_model, self.optimizer, list(batch.split(stage.micro_batch)),
                                         lr=lr, precision=self.precision, grad_clip=self.cfg.optim.grad_clip,
                                         skip_nonfinite=True)  # one scalar sync per step: the NaN/inf guard
            measured = None
            if profile:
                profiled_stages.add(stage.index)
                result, measured, seconds = self._profiled_step(run_step)
                meter.add_untimed(seconds)
            else:
                result = run_step()
            if first_of_shape:
                if self.device.type == "cuda":
                    torch.cuda.synchronize(self.device)  # deliberate sync: once per batch shape
                seconds = time.perf_counter() - started
                self.state.compile_s += seconds
                self.timeline.took("compile", seconds)
                meter.add_untimed(seconds)
                if self.rank == 0:
                    worker_print(self.cfg.run.name, f"first step at seq_len {stage.seq_len} x {stage.micro_batch}: "
                                 f"{seconds:.1f} s ({'compilation + ' if self.built.compiled else ''}warm-up; not "
                                 "counted in tokens/s)")
            if result.skipped:
                where = (f"step {step} (tokens {self.state.tokens}, curriculum stage {stage.index}, seq_len "
                         f"{stage.seq_len}, lr {lr:.3g})")
                if self.cfg.train.on_nan == "stop":
                    raise NonFiniteLossError(
                        f"non-finite loss or gradient at {where}; nothing was applied. Lower optim.lr, check the "
                        f"data, or set train.on_nan=skip to skip such steps")
                self.state.skipped_steps += 1
                if self.rank == 0:
                    worker_print(self.cfg.run.name, f"warning: skipped {where}: non-finite gradient", err=True)
            else:
                loss_sum += result.loss
                loss_steps += 1
                grad_norm = result.grad_norm
                if hasattr(grad_norm, "full_tensor"):  # a DTensor under FSDP (every rank calls: collective)
                    grad_norm = grad_norm.full_tensor()
                peaks = torch.maximum(peaks, torch.stack([grad_norm.float(), result.loss.detach().float()]))
            before = self.state.tokens
            self.state.step += 1
            self.state.tokens += tps
            if first_of_shape or profile:
                meter.start()
            else:
                meter.add(tps)
            if profile:
                self._log_attention(stage, measured)
            final = self.state.step == stop_step
            if self.state.step < total_steps:
                self.state.stage = self.plan.stage_for_step(self.state.step).index
            self.data_position = stream.state()

            do_eval = (final and self.state.step == total_steps) or _crossed(before, self.state.tokens,
                                                                            self.cfg.eval.every_tokens)
            do_ckpt = final or _crossed(before, self.state.tokens, self.cfg.checkpoint_every_tokens())
            metrics: dict[str, float] = {}
            if self.state.step % self.cfg.log.every_steps == 0 or do_eval or do_ckpt:
                throughput = meter.read()  # deliberate sync: the clock must cover finished work
                self.state.elapsed_s = elapsed_base + throughput.elapsed_s
                metrics.update(self._log(stage, lr, loss_sum, loss_steps, grad_norm, throughput, stop_step, peaks))
                loss_sum = torch.zeros((), device=self.device)
                loss_steps = 0
                peaks = self._no_peaks()
            if do_eval or do_ckpt:
                meter.pause()  # the training clock stops for validation and checkpoints
            if do_eval and self.valsets:
                with self.timeline.phase("validation"):
                    metrics.update(self._validate(final=self.state.step == total_steps))
            if do_eval or do_ckpt:  # Ray reports only here: each one is a barrier across workers
                with self.timeline.phase("checkpoint"):
                    self._report(metrics, do_ckpt)
                meter.start()
        meter.pause()
        steps_phase.__exit__(None, None, None)
        trained_here = stream is not None  # a finished run started again has nothing to train or export
        if trained_here and self.state.step >= total_steps:
            with self.timeline.phase("mlflow"):
                self._export()
        # What the driver cannot see: rank 0's phases and when its training function ran (yxanul.timeline).
        self.tracker.set_tags({WORKER_TIMELINE_TAG: json.dumps({
            "phases": {k: round(v, 4) for k, v in self.timeline.seconds.items()},
            "start": self.started_at, "end": time.time()})})

    def _profiled_step(self, run_step: Any) -> tuple[Any, AttentionShare | None, float]:
        """``run_step()`` under ``torch.profiler`` (:mod:`yxanul.profiling`): (its result, the attention share of
        its time, the step's own seconds). The whole of it (the profiler's start and stop, reading the events) is
        the timeline's ``profile`` phase; only the step's seconds go to the training clock."""
        from yxanul.profiling import attention_share, profiled, recorded_events

        begun = time.perf_counter()
        with profiled(self.device) as prof:
            started = time.perf_counter()
            result = run_step()
            if self.device.type == "cuda":
                torch.cuda.synchronize(self.device)  # deliberate sync: once per stage, the step's own time
            seconds = time.perf_counter() - started
        measured = attention_share(recorded_events(prof), self.device.type)
        self.timeline.took("profile", time.perf_counter() - begun)
        return result, measured, seconds

    def _log_attention(self, stage: Stage, measured: AttentionShare | None) -> None:
        """The profiled step's attention share: metrics at its tokens, one console line (rank 0 only profiles)."""
        where = f"stage {stage.index} (seq {stage.seq_len})"
        if measured is None:
            worker_print(self.cfg.run.name, f"warning: {where}: the profiler recorded no time in step "
                         f"{self.state.step}; attention share not measured", err=True)
            return
        self.tracker.log_metrics({ATTENTION_SHARE_METRIC: measured.share, ATTENTION_MS_METRIC: measured.attention_ms,
                                  PROFILED_STEP_MS_METRIC: measured.step_ms,
                                  **{DEVICE_MS_METRIC_PREFIX + kind: ms for kind, ms in measured.device_ms}},
                                 step=self.state.tokens)
        if not set(measured.kernels) <= self.attention_kernels:  # which backend ran: a tag, updated as stages add
            self.attention_kernels |= set(measured.kernels)
            self.tracker.set_tags({ATTENTION_KERNELS_TAG: ", ".join(sorted(self.attention_kernels))})
        clock_name = "device" if measured.device == "cuda" else "CPU"
        split = "; by kind: " + ", ".join(f"{kind} {ms:,.1f}" for kind, ms in measured.device_ms) + " ms" \
            if measured.device_ms else ""
        worker_print(self.cfg.run.name, f"{where}: attention {percent(measured.share)} of step time "
                     f"({measured.attention_ms:,.1f} of {measured.step_ms:,.1f} ms {clock_name} time; profiled step "
                     f"{self.state.step}{split})")

    def _stream(self, stage: Stage) -> TrainStream:
        where = f"stage {stage.index} (seq_len {stage.seq_len})"
        buckets = self.dataset.stage_buckets(stage.seq_len, stage.buckets, where, self.curriculum_label)
        stream = TrainStream(self.dataset, stage.seq_len, buckets, self.cfg.data_order_seed(), stage.index, self.rank,
                             self.world, shuffle_window=self.cfg.data.shuffle_window)
        expected = (self.state.step - stage.start_step) * stage.sequences_per_step
        saved = self.data_position
        if saved is not None and saved.get("stage") == stage.index and saved.get("position") != expected:
            raise YxanulError(f"checkpoint data position {saved} does not match step {self.state.step} of stage "
                              f"{stage.index} (expected position {expected}); the checkpoint is inconsistent")
        stream.seek(expected)
        return stream

    # -- hooks -------------------------------------------------------------------------------------

    def _broadcast(self, tensor: torch.Tensor) -> torch.Tensor:
        """Rank 0's ``tensor`` on every rank."""
        import torch.distributed as dist

        dist.broadcast(tensor, src=0)
        return tensor

    def _all_reduce(self, tensor: torch.Tensor, op: str = "sum") -> torch.Tensor:
        if self.world > 1:
            import torch.distributed as dist

            dist.all_reduce(tensor, op=dist.ReduceOp.MAX if op == "max" else dist.ReduceOp.SUM)
        return tensor

    def _no_peaks(self) -> torch.Tensor:
        return torch.full((2,), -math.inf, device=self.device)

    def _log(self, stage: Stage, lr: float, loss_sum: torch.Tensor, loss_steps: int, grad_norm: torch.Tensor,
             throughput: Any, stop_step: int, peaks: torch.Tensor) -> dict[str, float]:
        packed = torch.stack([loss_sum.float(), torch.tensor(float(loss_steps), device=self.device)])
        loss_total, steps_total = self._all_reduce(packed).tolist()  # deliberate sync: the logging interval
        # The largest per-worker step loss and the (global) grad norm of the interval: a one-step spike
        # between two logging points is seen.
        grad_norm_max, loss_max = self._all_reduce(peaks.clone(), op="max").tolist()
        if hasattr(grad_norm, "full_tensor"):  # a DTensor under FSDP
            grad_norm = grad_norm.full_tensor()
        metrics = {"train/lr": lr, "train/grad_norm": float(grad_norm), "train/seq_len": float(stage.seq_len),
                   "train/stage": float(stage.index), "train/elapsed_s": self.state.elapsed_s,
                   "train/compile_s": self.state.compile_s}
        if throughput.tokens_per_s > 0:  # a window of only first-of-shape steps has no rate
            metrics["train/tokens_per_s"] = throughput.tokens_per_s
            metrics["train/tokens_per_s_per_gpu"] = throughput.tokens_per_s_per_gpu
        if steps_total:
            metrics["train/loss"] = loss_total / steps_total
            metrics["train/grad_norm_max"] = grad_norm_max
            metrics["train/loss_max"] = loss_max
        for key, value in (("train/mfu_bf16", throughput.mfu_bf16), ("train/mfu_fp8", throughput.mfu_fp8),
                           ("train/peak_mem_gib", throughput.peak_mem_gib)):
            if value is not None and (key == "train/peak_mem_gib" or throughput.tokens_per_s > 0):
                metrics[key] = value
        if self.state.skipped_steps:
            metrics["train/skipped_steps"] = float(self.state.skipped_steps)
        metrics.update(self._weight_rms())
        for spike in self.spikes.observe(self.state.tokens, loss=metrics.get("train/loss_max"),
                                         grad_norm=metrics.get("train/grad_norm_max")):
            metrics[f"train/spike_{spike.kind}"] = spike.size  # the record (survives resumes); the tag is for the UI
            self.tracker.set_tags({SPIKES_TAG: format_spikes(self.spikes.spikes)})
            if self.rank == 0:
                worker_print(self.cfg.run.name, f"warning: {spike.describe()}", err=True)
        self.tracker.log_metrics(metrics, step=self.state.tokens)
        if self.rank == 0:
            tokens_left = (stop_step - self.state.step) * self.cfg.train.tokens_per_step
            eta = _eta_s(tokens_left, throughput.tokens_per_s, self.state.tokens, self.state.elapsed_s)
            loss = f"{metrics['train/loss']:.4f}" if "train/loss" in metrics else "skipped"
            mfu = f" mfu {100 * throughput.mfu_bf16:.1f}%" if throughput.mfu_bf16 is not None else ""
            mem = f" mem {throughput.peak_mem_gib:.1f}GiB" if throughput.peak_mem_gib is not None else ""
            per_gpu = f" ({throughput.tokens_per_s_per_gpu:,.0f}/gpu)" if self.world > 1 else ""
            worker_print(self.cfg.run.name, f"{_bar(self.state.step, stop_step)} step {self.state.step}/{stop_step} "
                         f"tokens {human_count(self.state.tokens)} stage {stage.index} seq {stage.seq_len} loss {loss} "
                         f"lr {lr:.2e} gnorm {metrics['train/grad_norm']:.3f} {throughput.tokens_per_s:,.0f} tok/s"
                         f"{per_gpu}{mfu}{mem} eta {clock(eta)}")
        return metrics

    @torch.no_grad()
    def _weight_rms(self) -> dict[str, float]:
        """``train/weight_rms/<group>`` (:meth:`yxanul.model.Yxanul.weight_groups`): how large each group's weights
        have grown, at every logging interval. Two seeds on one data order that drift apart (calibration round 5)
        leave a trace here first. Every rank calls it; sharded weights (FSDP) sum their squares across ranks."""
        groups = self.model.weight_groups()
        squares, sharded = [], False
        for weights in groups.values():
            total = torch.zeros((), device=self.device)
            for w in weights:
                if hasattr(w, "to_local"):  # a DTensor shard
                    w, sharded = w.to_local(), True
                total += torch.linalg.vector_norm(w.detach(), dtype=torch.float32).square()
            squares.append(total)
        summed = torch.stack(squares)
        if sharded:
            summed = self._all_reduce(summed)
        return {f"train/weight_rms/{group}": math.sqrt(value / sum(w.numel() for w in groups[group]))
                for group, value in zip(groups, summed.tolist())}

    def _bf16_eval(self) -> bool:
        """Whether the final validation runs a second time through the BF16 path (``eval.bf16_eval``: auto = when
        some layer computes in FP8; a run without FP8 layers has no other path, its val/bpb is its BF16 number)."""
        setting = self.cfg.eval.bf16_eval
        return setting == "on" or (setting == "auto" and self.precision.computes_fp8)

    @torch.no_grad()
    def _evaluate(self, fp8: bool = True) -> dict[str, float]:
        """``val/<domain>/loss`` and ``val/<domain>/bpb`` and their mean ``val/bpb`` over the validation rows, through
        the training step's head path (no whole logits) in the run's precision, or with FP8 off (``fp8=False``:
        :meth:`~yxanul.precision.Precision.autocast`'s BF16 path). Every rank calls it (the sums are all-reduced)."""
        from yxanul.model import bits_per_byte, next_token_targets

        self.model.eval()
        rows_per_batch = max(1, self.tokens_per_microbatch // self.cfg.eval.seq_len)
        self.where = f"validation{'' if fp8 else ' (BF16 path)'} batch {rows_per_batch}x{self.cfg.eval.seq_len}"
        metrics: dict[str, float] = {}
        for domain, valset in self.valsets.items():
            mine = torch.from_numpy(valset.rows[self.rank::self.world])
            sums = torch.zeros(2, device=self.device, dtype=torch.float64)  # nats, predicted tokens
            # Every rank runs the same number of batches (FSDP's forward is collective); a rank whose share
            # ran out repeats row 0 and does not count it.
            per_rank = -(-len(valset.rows) // self.world)
            for start in range(0, per_rank, rows_per_batch):
                batch = mine[start:start + rows_per_batch]
                real = len(batch)
                if real == 0:
                    batch = torch.from_numpy(valset.rows[:1])
                tokens = batch.to(self.device)
                targets = next_token_targets(tokens)
                with self.precision.autocast(fp8=fp8):
                    nats = self.model(tokens, targets=targets)
                if real:
                    sums[0] += nats.double()
                    sums[1] += (targets >= 0).sum()
            nats_total, count = self._all_reduce(sums).tolist()
            loss = nats_total / count
            metrics[f"val/{domain}/loss"] = loss
            metrics[f"val/{domain}/bpb"] = float(bits_per_byte(loss, valset.bytes_per_token))
        self.model.train()
        metrics["val/bpb"] = sum(metrics[f"val/{d}/bpb"] for d in self.valsets) / len(self.valsets)
        return metrics

    def _validate(self, final: bool) -> dict[str, float]:
        """Validation metrics, logged at the current tokens. At the run's final validation (``final``) with
        :meth:`_bf16_eval`, the same rows again with FP8 off, each metric suffixed ``_bf16_eval``
        (``val/bpb_bf16_eval``, ``val/<domain>/bpb_bf16_eval``): training numerics and evaluation numerics apart."""
        metrics = self._evaluate()
        bf16 = {f"{k}{BF16_EVAL_SUFFIX}": v for k, v in self._evaluate(fp8=False).items()} \
            if final and self._bf16_eval() else {}
        metrics.update(bf16)
        metrics["val/elapsed_s"] = self.state.elapsed_s
        self.tracker.log_metrics(metrics, step=self.state.tokens)
        if self.rank == 0:
            domains = " ".join(f"{d} {metrics[f'val/{d}/bpb']:.4f}" for d in self.valsets)
            line = f"validation at {human_count(self.state.tokens)} tokens: bpb {metrics['val/bpb']:.4f} ({domains})"
            if bf16:
                domains = " ".join(f"{d} {bf16[f'val/{d}/bpb{BF16_EVAL_SUFFIX}']:.4f}" for d in self.valsets)
                line += f"; FP8 off (BF16 path): bpb {bf16[f'val/bpb{BF16_EVAL_SUFFIX}']:.4f} ({domains})"
            worker_print(self.cfg.run.name, line)
        return metrics

    def _report(self, metrics: dict[str, float], with_checkpoint: bool) -> None:
        self.where = "a checkpoint" if with_checkpoint else "a report"
        # What the spike check covered so far: "not checked" must never read as "no spike".
        self.tracker.set_tags({SPIKE_CHECK_TAG: self.spikes.status()})
        self.tracker.flush()  # the metrics batched since the last send: before a checkpoint, never after
        payload = {**metrics, "tokens": self.state.tokens, "step": self.state.step,
                   "done": float(self.state.step >= self.plan.total_steps)}
        if not with_checkpoint:
            self.session.report(payload)
            return
        # One checkpoint in flight at most (host memory for one snapshot), but never a hang: Ray skips the upload of
        # a report it drops (a worker of the group died), and then nothing sets the event.
        if self.upload_done is not None and not self.upload_done.wait(timeout=UPLOAD_WAIT_S):
            worker_print(self.cfg.run.name, f"warning: the checkpoint before step {self.state.step} is not on "
                         f"storage after {UPLOAD_WAIT_S:.0f} s; taking the next one anyway", err=True)
            self.host_buffers = HostBuffers()  # the snapshot still being written keeps its memory
        taken = snapshot(rank=self.rank, state=self.state, model=self.step_model, optimizer=self.optimizer,
                         data_state=self.data_position or {}, buffers=self.host_buffers)
        persisted = functools.partial(self._write_marker, "checkpoint", self.state.step, self.state.tokens)
        self.upload_done = self.session.report(payload, write=lambda folder: write_snapshot(Path(folder), taken),
                                               stored=persisted, asynchronous=self.asynchronous)

    def _export(self) -> None:
        """The final model in Hugging Face format as an MLflow artifact (every rank calls: FSDP gathers)."""
        if not (self.setup.tracking and self.cfg.tracking.log_model):
            return
        from yxanul.export import export_hf
        from yxanul.model import Yxanul
        from yxanul.precision import load_model_state, split_state_dict
        from yxanul.train.parallel import full_state_dict, is_sharded

        model = self.model
        if is_sharded(self.model):
            weights, _ = split_state_dict(full_state_dict(self.model))  # rank 0 gets the weights
            if self.rank != 0:
                return
            model = Yxanul(self.cfg.model, self.vocab)
            load_model_state(model, weights)
        if self.rank != 0:
            return
        with tempfile.TemporaryDirectory(prefix="yxanul-export-") as tmp:
            out = export_hf(model, Path(tmp) / "model", vocab_size=self.vocab)
            self.tracker.log_artifact(out, "model")
        worker_print(self.cfg.run.name, "logged the final model (Hugging Face format) to MLflow under "
                     "artifacts/model")


def train_loop_per_worker(config: dict[str, Any]) -> None:
    """Ray Train entry point. ``config``: {"cfg": ExperimentConfig as a dict, "setup": a
    :class:`~yxanul.train.setup.WorkerSetup`} (built by :func:`yxanul.train.launch.loop_config`)."""
    cfg = ExperimentConfig.model_validate(config["cfg"])
    _Loop(cfg, config["setup"], RayTrainSession()).run()


def train_in_process(config: dict[str, Any], session: Session) -> None:
    """The same loop in the calling process, a Ray Tune trial's, which runs many trials one after the other. After
    the run, whatever way it ends, everything it held (model, optimizer, validation rows, CUDA cache) and Dynamo's
    state are released (:func:`yxanul.train.build.release_built`), so the next trial's model builds and compiles
    as in a fresh process, short of the imports and the CUDA context."""
    import traceback

    from yxanul.train.build import release_built

    loop = _Loop(ExperimentConfig.model_validate(config["cfg"]), config["setup"], session)
    try:
        loop.run()
    except BaseException as exc:
        # The exception travels on to Tune; the locals of its frames (model, optimizer, batches) must not.
        traceback.clear_frames(exc.__traceback__)
        raise
    finally:
        del loop
        session.close()  # a checkpoint still being written is dropped before the memory it holds is released
        release_built()
