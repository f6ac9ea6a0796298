"""Launching a training run: checks, the MLflow run, the Ray Train ``TorchTrainer``; the API sweeps build on.

    result = train(cfg)                       # check, fit, finish the MLflow run; -> TrainResult
    result = train(cfg, session=TuneSession())  # the same, in this process (a one-worker sweep trial's)
    trainer = build_trainer(cfg)              # the same TorchTrainer, for callers that fit it themselves
    print(describe(cfg))                      # what --dry-run prints (no Ray, no MLflow)

Everything that can be wrong with a config, the dataset or the tracking store is raised here, before
Ray starts a worker: a :class:`~yxanul.errors.ConfigError`, :class:`~yxanul.errors.DataError` or
:class:`~yxanul.errors.TrackingError` naming the key and the fix.

Run identity: ``<run.storage_path>/<run.name>/`` is Ray Train's run folder (checkpoints, state); the
driver keeps ``yxanul_run.json`` there with the MLflow run id. Starting a run whose folder already exists
resumes it: Ray Train hands the workers the latest checkpoint and rank 0 keeps logging into the same
MLflow run, dropping metrics at steps the run already holds. In process (a sweep trial's ``TuneSession``) the
run folder holds the same run file; the checkpoints are Tune's, in the trial's folder, and Tune hands the latest
to a restored trial.
"""

from __future__ import annotations

import contextlib
import json
import os
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from yxanul import interrupt
from yxanul.config import ExperimentConfig
from yxanul.curriculum import CurriculumPlan, build_plan
from yxanul.data.loader import PreparedDataset
from yxanul.errors import (
    ConfigError,
    DataError,
    TrackingError,
    WorkerDeath,
    WorkerDiedError,
    WorkerFailedError,
    YxanulError,
    dead_rank,
    first_line,
    lost_peer,
    user_error,
    worker_death,
    worker_failure,
)
from yxanul.files import check_writable
from yxanul.formatting import human_count
from yxanul.layout import Layout
from yxanul.tags import (
    CURRICULUM_TAG,
    DATA_TRAIN_TOKENS_TAG,
    MODEL_PARAMS_NON_EMBEDDING_TAG,
    MODEL_PARAMS_TAG,
    PARENT_RUN_ID_TAG,
    PRECISION_TAG,
    RESUMED_TAG,
    RUN_DIR_TAG,
    RUN_NAME_TAG,
    STATUS_TAG,
    TOKENIZER_VOCAB_TAG,
    VOCAB_SIZE_TAG,
    WORKER_TIMELINE_TAG,
)
from yxanul.timeline import Timeline, format_timeline, timeline_metrics

if TYPE_CHECKING:
    from yxanul.train.session import TuneSession

__all__ = ["RUN_FILE", "TrainResult", "build_trainer", "describe", "find_run_id", "run_dir", "train",
           "worker_resources"]

RUN_FILE = "yxanul_run.json"
"""In the Ray run folder: the MLflow run id and the settings a resume must keep."""
TRAIN_POLL_ENV, TRAIN_POLL_S = "RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", "0.2"
"""How often Ray Train's controller polls its workers (Ray's default: 2 s), unless the environment sets it. The
controller learns that training ended at a poll, and shuts the worker group down over several: a run's teardown
(rank 0's training function returning to ``fit()`` returning) took 6.5-8.6 s at 2 s and 0.7-0.9 s at 0.2 s
(2-core CPU VM, 2026-12-06, 4 one-worker sweep trials each). Ray Train hands it from the process that calls
``fit()`` to the controller and the workers, on a cluster too."""


@dataclass(frozen=True)
class TrainResult:
    """What :func:`train` returns."""

    run_id: str | None
    """MLflow run id (None with tracking.enabled=false)."""
    tokens: int
    """Training tokens seen when the run stopped."""
    metrics: dict[str, Any] = field(default_factory=dict)
    """Metrics of the last report with a checkpoint (the final train/* and val/* values)."""
    checkpoint_path: str | None = None
    """The latest checkpoint (a folder under run_dir, or a URI; in process, a folder of the Tune trial's)."""
    finished: bool = False
    """True when the run reached train.max_tokens (False when train.stop_after_tokens stopped it early)."""
    timeline: dict[str, float] = field(default_factory=dict)
    """Where this start's wall-clock went: the ``timeline/*`` metrics (:mod:`yxanul.timeline`); empty without
    tracking (rank 0's phases reach the driver through the MLflow run)."""


# ---------------------------------------------------------------------------------------------------
# Paths and the run file


def run_dir(cfg: ExperimentConfig) -> str:
    """Ray Train's run folder, ``<run.storage_path>/<run.name>`` (:class:`yxanul.layout.Layout`)."""
    return Layout.of(cfg).run_dir(cfg.run.name)


def _fs(path: str) -> tuple[Any, str]:
    import pyarrow.fs

    return pyarrow.fs.FileSystem.from_uri(path)


def _read_run_file(cfg: ExperimentConfig) -> dict[str, Any] | None:
    import pyarrow.fs

    fs, base = _fs(run_dir(cfg))
    path = f"{base}/{RUN_FILE}"
    if fs.get_file_info(path).type != pyarrow.fs.FileType.File:
        return None
    with fs.open_input_stream(path) as stream:
        return json.loads(stream.read().decode())


def _write_run_file(cfg: ExperimentConfig, content: dict[str, Any]) -> None:
    fs, base = _fs(run_dir(cfg))
    fs.create_dir(base, recursive=True)
    with fs.open_output_stream(f"{base}/{RUN_FILE}") as stream:
        stream.write(json.dumps(content, indent=2).encode())


def find_run_id(cfg: ExperimentConfig) -> str | None:
    """The MLflow run id of the run ``cfg`` names (run.name + run.storage_path), if it was started before."""
    content = _read_run_file(cfg)
    return content.get("mlflow_run_id") if content else None


def _check_resume(cfg: ExperimentConfig, previous: dict[str, Any]) -> None:
    from yxanul.train.checkpoint import resume_changes, resume_values

    changed = resume_changes(previous.get("kept", {}), resume_values(cfg))
    if changed:
        raise ConfigError(f"run {cfg.run.name!r} in {Layout.of(cfg).root} already exists and would resume, but "
                          f"{'; '.join(changed)} (these fix the data order and the learning-rate schedule); restore "
                          f"them, or choose a new run.name")


# ---------------------------------------------------------------------------------------------------
# Checks and the plan


def _curriculum_label(cfg: ExperimentConfig) -> str:
    return cfg.curriculum.preset or "custom"


def _check(cfg: ExperimentConfig) -> tuple[PreparedDataset, CurriculumPlan]:
    """Dataset present, curriculum servable by it, shapes valid: everything but Ray and MLflow."""
    dataset = PreparedDataset.open(cfg.data.output_dir)
    plan = build_plan(cfg, cfg.scaling.num_workers, dataset.seq_len_ok)
    dataset.check_plan(plan, _curriculum_label(cfg))
    if cfg.model.vocab_size is None and dataset.vocab_size is None:
        raise DataError(f"{dataset.path}/manifest.json has no tokenizer.vocab_size; set model.vocab_size")
    if cfg.model.vocab_size and dataset.vocab_size:
        check_vocab(cfg, dataset.vocab_size, f"the tokenizer that prepared {dataset.path}")
    longest = max(s.seq_len for s in plan.stages)
    if longest > cfg.model.max_positions or cfg.eval.seq_len > cfg.model.max_positions:
        raise ConfigError(f"sequences of {max(longest, cfg.eval.seq_len)} tokens (curriculum / eval.seq_len) exceed "
                          f"model.max_positions={cfg.model.max_positions}; raise model.max_positions or shorten them")
    if cfg.scaling.use_gpu is False and cfg.precision.mode == "fp8":
        raise ConfigError("precision.mode=fp8 needs GPUs: set scaling.use_gpu=true (FP8 runs on CUDA only)")
    return dataset, plan


def check_vocab(cfg: ExperimentConfig, tokenizer_vocab: int, what: str) -> None:
    """``model.vocab_size`` against the tokenizer's vocabulary: never smaller, and never larger beyond the
    padding to a multiple of 128 unless ``model.allow_unused_vocab`` says so (the rows past the tokenizer's
    are never a target: a 200k head on an 8k tokenizer computes 25x the logits it needs)."""
    from yxanul.model import padded_vocab_size

    model_vocab = cfg.model.vocab_size
    if model_vocab is None:
        return
    if model_vocab < tokenizer_vocab:
        raise ConfigError(f"model.vocab_size={model_vocab} is smaller than the vocabulary of {what} "
                          f"({tokenizer_vocab}); unset model.vocab_size (model.vocab_size=null) to take the "
                          "tokenizer's")
    if model_vocab > padded_vocab_size(tokenizer_vocab) and not cfg.model.allow_unused_vocab:
        raise ConfigError(f"model.vocab_size={model_vocab} is larger than the vocabulary of {what} "
                          f"({tokenizer_vocab}): {model_vocab - tokenizer_vocab:,} logits per position would never "
                          "be a target; unset model.vocab_size (model.vocab_size=null) to take the tokenizer's, or "
                          "set model.allow_unused_vocab=true for a speed benchmark")


def describe(cfg: ExperimentConfig) -> str:
    """The --dry-run text: resolved config, parameter count, stage table (and the dataset check)."""
    from yxanul.model import parameter_count

    lines = ["# resolved config", cfg.to_yaml().rstrip(), ""]
    dataset: PreparedDataset | None = None
    try:
        dataset = PreparedDataset.open(cfg.data.output_dir)
    except DataError as exc:
        lines.append(f"# dataset: not usable yet ({exc})")
    vocab = cfg.model.vocab_size or (dataset.vocab_size if dataset else None) or cfg.tokenizer.vocab_size
    count = parameter_count(cfg.model, vocab)
    lines.append(f"# model: {human_count(count.total)} parameters ({count.total:,}; "
                 f"{count.non_embedding:,} non-embedding) at vocabulary {vocab}")
    plan = build_plan(cfg, cfg.scaling.num_workers, dataset.seq_len_ok if dataset else None)
    if dataset is not None:
        dataset.check_plan(plan, _curriculum_label(cfg))
        lines.append(f"# dataset: {dataset.path} ({dataset.mode}, buckets {dataset.buckets}, "
                     f"validation domains {sorted(dataset.validation_files)})")
    lines += [f"# curriculum: {_curriculum_label(cfg)}", plan.table()]
    if cfg.train.max_tokens_per_microbatch == "auto":
        lines.append("# micro-batch: auto: measured on each run's card at start-up (largest power of two sequences "
                     "that fits); the table above plans with the CPU value "
                     f"{plan.stages[0].micro_batch * plan.stages[0].seq_len if plan.stages else '-'} tokens")
    lines.append(f"# build: {_build_plan_text(cfg)}")
    bf16_eval, may_fp8 = cfg.eval.bf16_eval, cfg.precision.mode in ("fp8", "auto")
    if bf16_eval == "on" or (bf16_eval == "auto" and may_fp8):
        how = ("with FP8 off" + (" when a layer group runs in FP8" if bf16_eval == "auto" else "") if may_fp8
               else "through the same path (no FP8 to turn off: equal to val/bpb)")
        lines.append(f"# final validation: again {how}, logged as val/bpb_bf16_eval (eval.bf16_eval={bf16_eval})")
    lines.append(f"# run folder: {run_dir(cfg)}")
    return "\n".join(lines)


def _build_plan_text(cfg: ExperimentConfig) -> str:
    """How the workers will build the model (what --dry-run can say without a GPU)."""
    device = "cuda" if cfg.scaling.use_gpu else "cpu"
    parts = [f"precision {cfg.precision.mode}"]
    if cfg.precision.mode in ("fp8", "auto"):
        parts.append(f"recipe {cfg.precision.recipe}")
        if cfg.precision.fp8_layers == "auto":
            parts.append("fp8_layers auto: each layer group (attention, mlp, head) is timed in BF16 and FP8 on the "
                         "card at start-up and kept in FP8 only where faster (cached per card and shape)")
        else:
            parts.append(f"fp8_layers {'+'.join(cfg.precision.fp8_layers)} (forced)")
    parts.append("torch.compile per block" if cfg.precision.compiles(device) else "eager (not compiled)")
    return "; ".join(parts)


# ---------------------------------------------------------------------------------------------------
# MLflow run


def _open_mlflow_run(cfg: ExperimentConfig, plan: CurriculumPlan, dataset: PreparedDataset,
                     extra_tags: Mapping[str, str] | None, parent_run_id: str | None) -> dict[str, str] | None:
    """Create (or reopen, on resume) the MLflow run; return {"uri", "run_id"} for the workers."""
    if not cfg.tracking.enabled:
        return None
    from yxanul.tracking import (
        GIT_DIFF_ARTIFACT,
        SPOOL_DIR,
        MLflowTracker,
        connect,
        git_state,
        provenance_tags,
        reopen_run,
        resolve_tracking_uri,
    )

    uri = resolve_tracking_uri(cfg.tracking.uri)
    experiment_id = connect(uri, cfg.tracking.experiment)
    previous = _read_run_file(cfg)
    if previous is not None:
        _check_resume(cfg, previous)
    tags = dict(extra_tags or {})
    if parent_run_id:
        tags[PARENT_RUN_ID_TAG] = parent_run_id
    spool = f"{run_dir(cfg)}/{SPOOL_DIR}"
    if previous and previous.get("mlflow_run_id") and previous.get("tracking_uri") == uri:
        try:
            from yxanul.interrupt import record_resume
            from yxanul.tracking import Status, client

            ended = client(uri).get_run(previous["mlflow_run_id"]).data.tags.get(STATUS_TAG)
            reopen_run(uri, previous["mlflow_run_id"], {**tags, RESUMED_TAG: "true"})
            if ended != Status.FINISHED:  # a finished run started again only reports its end: not a resume
                record_resume(uri, previous["mlflow_run_id"])
        except Exception as exc:  # the run was deleted, the store is another one, or the account may not write
            raise _refusal(uri, cfg, exc, f"cannot reopen MLflow run {previous['mlflow_run_id']} of run "
                                          f"{cfg.run.name!r}") from None
        return {"uri": uri, "run_id": previous["mlflow_run_id"], "spool_dir": spool}

    from yxanul.train.checkpoint import resume_values

    git = git_state()
    tags.update(provenance_tags(cfg.config_hash(), dataset.path / "manifest.json", git))
    tags.update({RUN_NAME_TAG: cfg.run.name, RUN_DIR_TAG: run_dir(cfg),
                 CURRICULUM_TAG: _curriculum_label(cfg), PRECISION_TAG: cfg.precision.mode,
                 **_model_and_data_tags(cfg, dataset)})
    try:
        tracker = MLflowTracker.create(uri, experiment_id, cfg.run.name, tags=tags, params=cfg.flat_params())
    except Exception as exc:  # e.g. HTTP 403: an account without write access to the experiment
        raise _refusal(uri, cfg, exc, "cannot create the run") from None
    try:
        tracker.log_text(cfg.to_yaml(), "config.yaml")
        tracker.log_text(plan.table() + "\n", "curriculum_plan.txt")
        tracker.log_text(json.dumps(dataset.manifest, indent=2), "data_manifest.json")
        if git.get("diff"):
            tracker.log_text(git["diff"], GIT_DIFF_ARTIFACT)
        _write_run_file(cfg, {"mlflow_run_id": tracker.run_id, "tracking_uri": uri,
                              "experiment": cfg.tracking.experiment,
                              "kept": resume_values(cfg)})
    except BaseException as exc:  # never leave a RUNNING run behind that nothing will end
        from yxanul.tracking import Status, end_run

        with contextlib.suppress(Exception):
            end_run(uri, tracker.run_id, Status.FAILED, error=first_line(exc))
        if isinstance(exc, OSError):
            raise ConfigError(f"cannot write the run folder {run_dir(cfg)} (run.storage_path={cfg.run.storage_path}): "
                              f"{first_line(exc)}; choose a writable run.storage_path") from None
        if isinstance(exc, Exception) and not isinstance(exc, YxanulError):
            raise _refusal(uri, cfg, exc, f"cannot log to run {tracker.run_id}") from None
        raise
    return {"uri": uri, "run_id": tracker.run_id, "spool_dir": spool}


def _refusal(uri: str, cfg: ExperimentConfig, exc: BaseException, what: str) -> TrackingError:
    """One line for an MLflow request the server refused while the run is set up."""

    from yxanul.tracking import describe_failure

    problem = describe_failure(exc)
    user = os.environ.get("MLFLOW_TRACKING_USERNAME")
    if problem.startswith("HTTP 403"):
        return TrackingError(f"the MLflow tracking server {uri} refuses user {user!r} write access to experiment "
                             f"{cfg.tracking.experiment!r} (HTTP 403): {what}; ask its admin to give that account EDIT "
                             f"permission on the experiment (docs/cluster.md, Security model), or use another "
                             f"tracking.experiment")
    if problem.startswith("HTTP 401"):
        return TrackingError(f"the MLflow tracking server {uri} refused user {user!r} (HTTP 401): {what}; check "
                             f"MLFLOW_TRACKING_USERNAME and MLFLOW_TRACKING_PASSWORD")
    return TrackingError(f"MLflow {uri}: {what} ({problem}); use a new run.name, or fix the tracking store")


def _model_and_data_tags(cfg: ExperimentConfig, dataset: PreparedDataset) -> dict[str, str]:
    """What the report needs to say what ran, as the run sees it: the model's vocabulary and parameter count,
    the tokenizer's vocabulary and the training tokens of the prepared dataset (for epochs)."""
    from yxanul.model import parameter_count

    vocab = cfg.model.vocab_size or dataset.vocab_size
    count = parameter_count(cfg.model, vocab)
    tags = {VOCAB_SIZE_TAG: str(vocab), MODEL_PARAMS_TAG: str(count.total),
            MODEL_PARAMS_NON_EMBEDDING_TAG: str(count.non_embedding)}
    if dataset.vocab_size:
        tags[TOKENIZER_VOCAB_TAG] = str(dataset.vocab_size)
    train_tokens = (dataset.manifest.get("train") or {}).get("tokens")
    if train_tokens is not None:
        tags[DATA_TRAIN_TOKENS_TAG] = str(int(train_tokens))
    return tags


def _end_mlflow_run(tracking: dict[str, str] | None, status: str, error: str = "",
                    *, only_if_running: bool = False, wait_s: float = 30.0) -> None:
    """End the run with the verdict ``status`` (:class:`yxanul.tracking.Status`). MLflow failing here never turns
    a training that ran into a crash: the verdict is kept in the run folder and one line says how to send it."""
    if not tracking:
        return
    from yxanul.console import say
    from yxanul.tracking import end_run_or_spool

    end_run_or_spool(tracking["uri"], tracking["run_id"], status, spool_dir=tracking.get("spool_dir"), error=error,
                     only_if_running=only_if_running, wait_s=wait_s, say=lambda text: say(text, err=True))


# ---------------------------------------------------------------------------------------------------
# The trainer


def loop_config(cfg: ExperimentConfig, dataset: PreparedDataset,
                tracking: dict[str, str] | None = None) -> dict[str, Any]:
    """The ``train_loop_config`` of :func:`yxanul.train.loop.train_loop_per_worker`: the config as a dict
    and a :class:`~yxanul.train.setup.WorkerSetup` (absolute paths: workers may run in another folder,
    e.g. the working-dir copy of `ray job submit`)."""

    from yxanul.train.setup import TEST_FAILURE_ENV, WorkerSetup

    layout = Layout.of(cfg)
    setup = WorkerSetup(data_dir=str(dataset.path.resolve()), curriculum_label=_curriculum_label(cfg),
                        tracking_uri=tracking["uri"] if tracking else None,
                        run_id=tracking["run_id"] if tracking else None,
                        marker_dir=layout.worker_markers(cfg.run.name), run_dir=layout.run_dir(cfg.run.name),
                        fp8_plan_dir=str(layout.fp8_plans),
                        compile_cache_dir=str(layout.compile_cache) if cfg.precision.compile_cache else None,
                        test_failure=os.environ.get(TEST_FAILURE_ENV) or None)
    return {"cfg": cfg.to_dict(), "setup": setup}


def worker_resources(cfg: ExperimentConfig) -> dict[str, float]:
    """What one training worker asks Ray for: ``scaling.cpus_per_worker`` CPUs and, with ``scaling.use_gpu``, one GPU.
    A ``TorchTrainer`` asks it per worker; a sweep trial that trains in its own process asks it for itself."""
    return {"CPU": cfg.scaling.cpus_per_worker, **({"GPU": 1} if cfg.scaling.use_gpu else {})}


def _prepare(cfg: ExperimentConfig, extra_tags: Mapping[str, str] | None, parent_run_id: str | None,
             timeline: Timeline) -> tuple[PreparedDataset, dict[str, str] | None]:
    """Everything before training starts, wherever it runs: the checks, the run folder, the MLflow run."""
    with timeline.phase("data"):
        dataset, plan = _check(cfg)
    check_writable(run_dir(cfg), "run.storage_path")  # before the MLflow run exists: none is left RUNNING
    _inject_test_failure_before_mlflow(cfg)
    with timeline.phase("mlflow"):
        tracking = _open_mlflow_run(cfg, plan, dataset, extra_tags, parent_run_id)
    return dataset, tracking


def _inject_test_failure_before_mlflow(cfg: ExperimentConfig) -> None:
    """Test-only (:data:`yxanul.train.setup.TEST_FAILURE_ENV` ``segv@mlflow``): a real segmentation fault of the
    process that opens the run, just before it does, where one struck an in-process sweep trial on an H100
    (2026-12-07: its reused process died in the garbage collector at the next trial's start); only while no process
    of the run has left a fatal error (:mod:`yxanul.fatal`), so that a restarted trial trains."""
    from yxanul.fatal import summary
    from yxanul.train.setup import TEST_FAILURE_ENV

    if os.environ.get(TEST_FAILURE_ENV) != "segv@mlflow":  # every real run
        return
    if summary(Layout.of(cfg).worker_markers(cfg.run.name)) is None:
        import faulthandler

        faulthandler._sigsegv()


def _trainer(cfg: ExperimentConfig, config: dict[str, Any], run_config_callbacks: Sequence[Any] | None) -> Any:
    """The ``TorchTrainer`` that runs :func:`yxanul.train.loop.train_loop_per_worker` with ``config``."""
    from ray.train import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchConfig, TorchTrainer

    from yxanul.train.loop import train_loop_per_worker

    layout = Layout.of(cfg)
    scaling = ScalingConfig(num_workers=cfg.scaling.num_workers, use_gpu=cfg.scaling.use_gpu,
                            accelerator_type=cfg.scaling.accelerator_type, resources_per_worker=worker_resources(cfg))
    # Simulated accelerators: the same resource request, but the (logical) GPUs cannot run NCCL.
    torch_config = TorchConfig(backend="gloo") if cfg.scaling.simulate_accelerators else None
    run_config = RunConfig(name=cfg.run.name, storage_path=layout.root,
                           failure_config=FailureConfig(max_failures=cfg.scaling.max_failures),
                           checkpoint_config=CheckpointConfig(num_to_keep=cfg.checkpoint.keep_last),
                           callbacks=list(run_config_callbacks or []))
    os.environ.setdefault(TRAIN_POLL_ENV, TRAIN_POLL_S)  # read by fit(): the controller's poll interval
    return TorchTrainer(train_loop_per_worker, train_loop_config=config, scaling_config=scaling,
                        run_config=run_config, torch_config=torch_config)


def build_trainer(cfg: ExperimentConfig, *, run_config_callbacks: Sequence[Any] | None = None,
                  extra_tags: Mapping[str, str] | None = None, parent_run_id: str | None = None) -> Any:
    """A ready ``TorchTrainer`` for ``cfg`` (checks done, MLflow run created or reopened, its id in
    ``trainer.train_loop_config["setup"].run_id``). Fitting it is the caller's job, and so is ending the
    MLflow run; :func:`train` does both and is what most callers want."""
    dataset, tracking = _prepare(cfg, extra_tags, parent_run_id, Timeline())
    return _trainer(cfg, loop_config(cfg, dataset, tracking), run_config_callbacks)


@dataclass(frozen=True)
class _Outcome:
    """What a run left, wherever it ran: the metrics of its last report with a checkpoint, and that checkpoint."""

    metrics: dict[str, Any]
    checkpoint: Any


def _on_ray_train(trainer: Any) -> _Outcome:
    from yxanul.ray_session import ensure_ray

    ensure_ray()
    result = _fit(trainer)
    if result.error is not None:
        raise result.error
    return _Outcome(dict(result.metrics or {}), result.checkpoint)


def _in_process(config: dict[str, Any], session: TuneSession) -> _Outcome:
    from yxanul.train.loop import train_in_process

    train_in_process(config, session)
    return _Outcome(dict(session.metrics), session.checkpoint)


def _is_failure(exc: BaseException, in_process: bool) -> bool:
    """Whether ``exc`` says the training failed (else it was stopped: a signal, or Tune ending the trial, which
    raises ``SystemExit`` in the trial's thread). Ray Train wraps every failure of its workers in one type."""
    if in_process:
        return isinstance(exc, Exception)
    from ray.train import TrainingFailedError

    return isinstance(exc, TrainingFailedError)


def train(cfg: ExperimentConfig, *, run_config_callbacks: Sequence[Any] | None = None,
          extra_tags: Mapping[str, str] | None = None, parent_run_id: str | None = None,
          end_unfinished: bool = True, started_at: float | None = None, before: Mapping[str, float] | None = None,
          session: TuneSession | None = None, print_timeline: bool = True) -> TrainResult:
    """Run (or resume) the training ``cfg`` describes and return its :class:`TrainResult`: on Ray Train (a
    ``TorchTrainer``), or with ``session`` (a :class:`~yxanul.train.session.TuneSession`: one-worker sweep trials)
    in this process, reporting to it; ``run_config_callbacks`` are the ``TorchTrainer``'s.

    The MLflow run ends ``finished`` (reached train.max_tokens), ``stopped`` (by train.stop_after_tokens),
    ``killed`` (interrupted) or ``failed`` (with the error in the ``yxanul.error`` tag). A worker's
    user-facing error (e.g. a non-finite loss, the GPU out of memory) is raised again here as a
    :class:`~yxanul.errors.YxanulError`; any other worker exception as a :class:`~yxanul.errors.WorkerFailedError`
    whose one line names its real type and message (never Ray's log text), the same line the MLflow run records.

    ``end_unfinished=False`` (sweep trials): a run that neither finished nor failed is left RUNNING, because
    only the caller knows why it ended early; a sweep's scheduler side records "stopped_early" or
    "killed" itself, so no two writers race for the verdict.

    The run's timeline (:mod:`yxanul.timeline`) covers the wall-clock from ``started_at`` (``time.time()``; a
    sweep trial passes its own start, and in ``before`` the phases it measured before this call: its imports) or
    this call, to the end of the MLflow run: logged as ``timeline/*``
    metrics and printed as one line under the run's name (``print_timeline=False``: not printed; a sweep's driver
    prints each trial's from the metrics, in order with its verdict).
    """
    from yxanul.tracking import Status

    started_at = started_at if started_at is not None else time.time()
    timeline = Timeline()
    timeline.merge(before or {})
    dataset, tracking = _prepare(cfg, extra_tags, parent_run_id, timeline)
    config = loop_config(cfg, dataset, tracking)
    trainer = _trainer(cfg, config, run_config_callbacks) if session is None else None
    try:
        fit_start = time.time()
        outcome = _on_ray_train(trainer) if session is None else _in_process(config, session)
        fit_end = time.time()
    except BaseException as exc:
        if interrupt.received() is not None:
            raise _interrupted(cfg, tracking, end_unfinished) from None
        if not _is_failure(exc, in_process=session is not None):
            if end_unfinished:
                _end_mlflow_run(tracking, Status.KILLED, wait_s=5.0)
            raise
        # Ray Train's text of a failure goes to the job's log (_failure_line); in process, the error keeps its
        # traceback (Tune's error file of the trial).
        raise _failed(cfg, tracking, exc, in_process=session is not None) from (exc if session is not None else None)
    tokens = int(outcome.metrics.get("tokens", 0))
    checkpoint_path = outcome.checkpoint.path if outcome.checkpoint else None
    if outcome.checkpoint is not None:
        from yxanul.train.checkpoint import read_state

        with outcome.checkpoint.as_directory() as directory:
            tokens = read_state(directory).tokens
    finished = tokens >= build_plan(cfg).total_tokens
    with timeline.phase("mlflow"):
        worker = _worker_timeline(tracking)
        if finished:
            _end_mlflow_run(tracking, Status.FINISHED)
        elif end_unfinished:
            _end_mlflow_run(tracking, Status.STOPPED)
    metrics = _log_timeline(cfg, tracking, timeline, worker, tokens, started_at, fit_start, fit_end)
    if metrics and print_timeline:
        from yxanul.console import worker_print

        worker_print(cfg.run.name, f"timeline: {format_timeline(metrics)}")
    return TrainResult(run_id=tracking["run_id"] if tracking else None, tokens=tokens, metrics=outcome.metrics,
                       checkpoint_path=checkpoint_path, finished=finished, timeline=metrics)


def _failed(cfg: ExperimentConfig, tracking: dict[str, str] | None, exc: BaseException,
            in_process: bool = False) -> YxanulError:
    """A training that failed: its one line (the user's error, a dead worker, or the failure's real type and
    message) recorded on the MLflow run, which ends ``failed``; the error to raise. On Ray Train a dead worker is
    found in the failure or, where another rank's error reached the controller first, in Ray's actor table
    (:func:`yxanul.errors.dead_rank`)."""
    from yxanul.tracking import Status

    user = user_error(exc)
    death, died = None, None
    if user is None:
        death = worker_death(exc)
        if death is None and not in_process and lost_peer(exc):  # a collective saw the death before Ray Train did
            death = dead_rank(Layout.of(cfg).worker_markers(cfg.run.name))
    if death:  # not a bug: one line that says a worker died, instead of ~100 ending in gloo's connection reset
        died = (f"{_with_fatal_error(death, Layout.of(cfg).worker_markers(cfg.run.name))}; "
                f"scaling.max_failures={cfg.scaling.max_failures} left no restart. The run resumes from its last "
                f"checkpoint in {run_dir(cfg)}: run the same command again (raise scaling.max_failures to restart "
                "by itself)")
    message = str(user) if user else died or _failure_line(exc)
    _end_mlflow_run(tracking, Status.FAILED, message)
    if user is not None:
        return type(user)(str(user))
    if died:
        return WorkerDiedError(died)
    return WorkerFailedError(message)


def _with_fatal_error(died: WorkerDeath, marker_dir: str | None) -> str:
    """``died``'s line and, where that process wrote one, its fatal error (:mod:`yxanul.fatal`: "Fatal Python error:
    Segmentation fault in ...; every thread's stack: <file>")."""
    from yxanul.fatal import summary

    fatal = summary(marker_dir, died.rank, died.pid) if died.pid is not None else None
    return f"{died}; {fatal}" if fatal else str(died)


def _failure_line(exc: BaseException) -> str:
    """A worker's exception that is not a user error (a bug, a CUDA or library failure) as one line: its real type
    and message (:func:`yxanul.errors.worker_failure`), and where its traceback is: the job's log, where Ray's
    text of the failure (the worker's traceback) is written now."""
    from yxanul.console import log_path, to_log

    line = worker_failure(exc)
    if to_log(f"{line}\n{exc}"):
        return f"{line} (traceback in {log_path()})"
    return line


def _interrupted(cfg: ExperimentConfig, tracking: dict[str, str] | None, end_unfinished: bool) -> BaseException:
    """A signal reached this job (:mod:`yxanul.interrupt`), whatever error it caused on the way (workers gone
    with it): record the interruption where the run will resume, end the run ``killed``; the one-line exception."""
    from yxanul.tracking import Status

    where = interrupt.resume_point(run_dir(cfg), f"run {cfg.run.name}")
    if tracking:
        with contextlib.suppress(Exception):  # MLflow down: the stop is still one line, and the run resumes
            interrupt.record_interruption(tracking["uri"], tracking["run_id"], where)
    if end_unfinished:
        _end_mlflow_run(tracking, Status.KILLED)
    return interrupt.Interrupted(interrupt.received() or 2, f"interrupted {where}; the same command resumes")


def _fit(trainer: Any) -> Any:
    """``trainer.fit()``; in a job that handles SIGINT/SIGTERM itself (:mod:`yxanul.interrupt`), in a helper thread
    while the main thread waits, so that Ray Train does not take SIGINT over (it does so only in the main thread)
    and a signal interrupts the wait at once."""
    import threading

    if not interrupt.active() or threading.current_thread() is not threading.main_thread():
        return trainer.fit()
    box: dict[str, Any] = {}

    def fit() -> None:
        try:
            box["result"] = trainer.fit()
        except BaseException as exc:  # handed to the main thread below
            box["error"] = exc

    thread = threading.Thread(target=fit, name="yxanul-fit", daemon=True)  # daemon: an interrupted job exits
    thread.start()
    while thread.is_alive():
        thread.join(0.2)
    if "error" in box:
        raise box["error"]
    return box["result"]


def _worker_timeline(tracking: dict[str, str] | None) -> dict[str, Any] | None:
    """Rank 0's timeline, as it left it on the MLflow run (None without tracking, if rank 0 never got there, or if
    MLflow does not answer now: the timeline is a measurement, never a reason for a run to fail)."""
    if not tracking:
        return None
    from yxanul.tracking import client

    try:
        text = client(tracking["uri"]).get_run(tracking["run_id"]).data.tags.get(WORKER_TIMELINE_TAG)
        return json.loads(text) if text else None
    except Exception:  # MLflow down or refusing (a rotated password): no timeline, the run goes on
        return None


def _log_timeline(cfg: ExperimentConfig, tracking: dict[str, str] | None, timeline: Timeline,
                  worker: dict[str, Any] | None, tokens: int, started_at: float, fit_start: float,
                  fit_end: float) -> dict[str, float]:
    """The run's ``timeline/*`` metrics (the driver's phases and rank 0's; worker start and teardown from rank 0's
    start and end against ``fit()``'s), logged at step ``tokens``; {} without rank 0's."""
    if worker is None:
        return {}
    from yxanul.tracking import client

    timeline.merge(worker["phases"])
    timeline.add("worker_start", max(0.0, worker["start"] - fit_start))
    timeline.add("teardown", max(0.0, fit_end - worker["end"]))
    metrics = timeline_metrics(timeline.seconds, time.time() - started_at)
    from mlflow.entities import Metric

    now = int(time.time() * 1000)
    with contextlib.suppress(Exception):  # best effort, like _worker_timeline: a measurement never fails the run
        client(tracking["uri"]).log_batch(tracking["run_id"],
                                          metrics=[Metric(k, v, now, tokens) for k, v in metrics.items()])
    return metrics
