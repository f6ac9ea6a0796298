"""Every MLflow tag name the platform writes or reads, in one place (as MLflow keeps its own in
``mlflow/utils/mlflow_tags.py``).

Writers and readers import the constant, never spell the name: a renamed tag is one edit here, and
``tests/unit/test_tags.py`` fails on a tag name spelled as a literal anywhere else. Tags say what ran
and how it ended; params (``ExperimentConfig.flat_params()``) say what was asked. A reader that wants
to know what ran (the resolved FP8 plan, the arm, the card) reads the tag.

Who writes what:

- MLflow's own names (``mlflow.*``): the parent-child link, the run's note, the experiment's kind.
- A run's lifecycle (:mod:`yxanul.tracking` alone): status, reason, error.
- A sweep (:mod:`yxanul.sweep`): the parent run's identity and each child's place in the sweep.
- Provenance (the driver, :func:`yxanul.tracking.provenance_tags` and :mod:`yxanul.train.launch`) and
  where it ran (rank 0, :func:`yxanul.tracking.device_tags`).
- What the build decided on the card (rank 0, :mod:`yxanul.train.loop`).
"""

from __future__ import annotations

# ---------------------------------------------------------------------------------------------------
# MLflow's own

PARENT_RUN_ID_TAG = "mlflow.parentRunId"
"""The parent run of a child run (MLflow's UI nests runs by it)."""
NOTE_TAG = "mlflow.note.content"
"""The run's description in MLflow's UI (a sweep parent: the sweep file's ``description``)."""
EXPERIMENT_KIND_TAG = "mlflow.experimentKind"
"""An experiment tag: MLflow 3.x's UI opens an experiment without it in its GenAI view."""
EXPERIMENT_KIND = "custom_model_development"
"""The :data:`EXPERIMENT_KIND_TAG` value of every experiment the platform creates (training runs)."""

# ---------------------------------------------------------------------------------------------------
# A run's lifecycle: written by yxanul.tracking only

STATUS_TAG = "yxanul.status"
"""The run's verdict in words (a :class:`yxanul.tracking.Status` value); MLflow's own status says only
RUNNING/FINISHED/FAILED/KILLED. Reports read this tag first."""
REASON_TAG = "yxanul.reason"
"""Why a run was stopped, not run or failed, in one line."""
ERROR_TAG = "yxanul.error"
"""A failed run's error message (up to 5000 characters)."""
RESUMED_TAG = "yxanul.resumed"
"""``true`` on a run that was started again and continued from its checkpoint."""
INTERRUPTIONS_TAG = "yxanul.interruptions"
"""How many times the run (or sweep) was interrupted before it ended (shown by the report when present)."""
RESUMES_TAG = "yxanul.resumes"
"""How many times the run (or sweep) was resumed (shown by the report when present)."""
LAST_INTERRUPTION_TAG = "yxanul.last_interruption"
"""The latest interruption: when (UTC), the signal, and where (``at 4.19M tokens in trial t04``)."""
LAST_RESUME_TAG = "yxanul.last_resume"
"""When (UTC) the run (or sweep) was last resumed."""
RESTARTS_TAG = "yxanul.restarts"
"""How many times a sweep trial's run was started again by the sweep itself after a failure (``trial_restarts``)."""
LAST_RESTART_TAG = "yxanul.last_restart"
"""The latest such restart: when (UTC), from where, and the failure it followed (e.g. a fatal error's line)."""

# ---------------------------------------------------------------------------------------------------
# Sweeps

SWEEP_TAG = "yxanul.sweep"
"""The sweep's name, on the parent run and on every child run."""
ROLE_TAG = "yxanul.role"
"""``sweep`` on a sweep's parent run."""
ROLE_SWEEP = "sweep"
TUNE_PATH_TAG = "yxanul.tune_path"
"""The Ray Tune experiment folder (a resumed sweep finds its parent run by it)."""
SEEDS_AUTO_TAG = "yxanul.seeds_auto"
"""On a ``seeds: auto`` sweep's parent run: where the stopping rule stood at the end (seeds, each decision)."""
SWEEP_HASH_TAG = "yxanul.sweep_hash"
"""Fingerprint of the base and the trials: a resumed sweep must have the same."""
COMMAND_TAG = "yxanul.command"
"""The command line that started the sweep."""
VARIANT_TAG = "yxanul.variant"
"""A trial's label ``axis=value,...`` including ``seed=`` / ``sample=`` (for people; readers use the tags below)."""
ARM_TAG = "yxanul.arm"
"""The trial's arm: its label without seed and sample. The runs of one arm are its seed replicates."""
AXES_TAG = "yxanul.axes"
"""JSON object ``{axis: value label}`` of the trial's grid point, in the sweep file's axis order."""
PAIR_TAG = "yxanul.pair"
"""The label without precision axes: the arms of an FP8/BF16 pair share it (with the seed)."""
TRIAL_TAG = "yxanul.trial"
"""The trial's index in the sweep's trial table."""
TUNE_TRIAL_ID_TAG = "yxanul.tune_trial_id"
RUN_NAME_TAG = "yxanul.run_name"
"""``run.name`` of the run (a sweep finds a trial's child run by it)."""
STOPPED_AT_TOKENS_TAG = "yxanul.stopped_at_tokens"
"""Tokens at which the sweep's scheduler (ASHA) stopped the trial."""
JOB_TAG = "yxanul.job"
"""The job that created a run that is not a training run (e.g. ``tokenizer_report``)."""

# ---------------------------------------------------------------------------------------------------
# Provenance: written by the driver when it creates the run

GIT_SHA_TAG = "yxanul.git_sha"
GIT_DIRTY_TAG = "yxanul.git_dirty"
"""``true`` when the checkout had uncommitted changes (the diff is the artifact ``provenance/git_diff.patch``)."""
GIT_DIFF_SHA256_TAG = "yxanul.git_diff_sha256"
"""sha256 of the uncommitted diff (``git diff HEAD``) when the checkout was dirty."""
CONFIG_HASH_TAG = "yxanul.config_hash"
HOST_TAG = "yxanul.host"
VERSION_TAG_PREFIX = "yxanul.version."
"""``yxanul.version.<package>`` = the installed version (torch, ray, mlflow, transformer_engine, python, ...)."""
MANIFEST_SHA256_TAG = "yxanul.manifest_sha256"
"""sha256 of the prepared dataset's manifest.json (which records when it was made: differs between preparations)."""
DATA_SHA256_TAG = "yxanul.data_sha256"
"""sha256 of the prepared dataset's files (its manifest's ``content_sha256``): equal wherever the same data was
prepared; absent for datasets prepared before 2026-12-06."""
TOKENIZER_SHA256_TAG = "yxanul.tokenizer_sha256"
DATA_MODE_TAG = "yxanul.data_mode"
DATA_TRAIN_TOKENS_TAG = "yxanul.data_train_tokens"
"""Training tokens in the prepared dataset (its manifest): epochs = tokens trained / this."""
TOKENIZER_VOCAB_TAG = "yxanul.tokenizer_vocab"
"""The vocabulary of the tokenizer that prepared the dataset (its manifest)."""
VOCAB_SIZE_TAG = "yxanul.vocab_size"
"""The model's vocabulary (``model.vocab_size``, else the tokenizer's), before padding to a multiple of 128."""
MODEL_PARAMS_TAG = "yxanul.model_params"
"""The model's parameter count (exact, :func:`yxanul.model.parameter_count`)."""
MODEL_PARAMS_NON_EMBEDDING_TAG = "yxanul.model_params_non_embedding"
"""Parameters outside the token embedding (the output head counts: it is a full matmul)."""
RUN_DIR_TAG = "yxanul.run_dir"
CURRICULUM_TAG = "yxanul.curriculum"
PRECISION_TAG = "yxanul.precision"
"""``precision.mode`` as asked (what ran is :data:`PRECISION_PLAN_TAG`)."""

# ---------------------------------------------------------------------------------------------------
# Where it ran: written by rank 0

NODE_ID_TAG = "yxanul.node_id"
NODE_TYPE_TAG = "yxanul.node_type"
GPU_NAME_TAG = "yxanul.gpu_name"
"""The full device name (``NVIDIA H200``), ``none`` without GPUs, ``unavailable`` if CUDA was not."""
GPU_COUNT_TAG = "yxanul.gpu_count"
GPU_UUID_TAG = "yxanul.gpu_uuid"
"""The UUID of the card rank 0 trained on (``GPU-<uuid>``, as ``nvidia-smi -L`` prints it)."""
BOOT_ID_TAG = "yxanul.boot_id"
"""The Linux boot id of the machine rank 0 ran on (``/proc/sys/kernel/random/boot_id``): runs with different ones
ran on different machines (or across a reboot), and two machines with cards of one model can differ in speed (two
lent H100 80GB HBM3 of 2026-12-06: 7% in BF16 tokens/s). Trials on the GPUs of one node share it. Absent where
the file is (not Linux)."""
NUM_WORKERS_TAG = "yxanul.num_workers"
GPU_DRIVER_TAG = "yxanul.gpu_driver"
"""The NVIDIA driver version (``nvidia-smi``), when it could be read."""
CUDA_VERSION_TAG = "yxanul.cuda_version"
"""The CUDA version torch was built with (``torch.version.cuda``)."""
TORCH_VERSION_TAG = "yxanul.torch_version"
"""``torch.__version__`` on the training worker (the build, e.g. ``2.11.0+cu130``)."""

# ---------------------------------------------------------------------------------------------------
# What the build decided on the card: written by rank 0

COMPILED_TAG = "yxanul.compiled"
PRECISION_PLAN_TAG = "yxanul.precision_plan"
"""The resolved precision in words (``Precision.describe()``: ``bf16``, ``fp8 (delayed; attention,mlp)``)."""
FP8_LAYERS_TAG = "yxanul.fp8_layers"
"""The layer groups that ran in FP8, ``+``-joined (``attention+mlp+head``), or ``none``; FP8 runs only."""
FP8_PLAN_TAG_PREFIX = "yxanul.fp8_plan."
"""``yxanul.fp8_plan.<group>`` = the measured BF16 and FP8 times and peak memory of a layer group
(``fp8_layers: auto``)."""
MICROBATCH_TOKENS_TAG = "yxanul.microbatch_tokens"
BUILD_SECONDS_TAG = "yxanul.build_seconds"
"""Where the timeline's ``build`` phase went, in the build's order (``init 1.204 s, to_device 0.310 s, ...``; the
device synchronised at each boundary): a process's first trial builds in seconds where later ones take a fraction."""
SIMULATED_TAG = "yxanul.simulated_accelerators"
"""``true`` when the run trained under ``scaling.simulate_accelerators`` (fp32 on CPU, logical GPUs)."""
PRECISION_RAN_TAG = "yxanul.precision_ran"
"""The precision a simulated run really trained in."""
SIMULATION_TAG = "yxanul.simulation"
"""The sentence saying which precision ran instead of which, and why."""
SPIKES_TAG = "yxanul.spikes"
"""The loss / gradient-norm spikes seen since the run's latest start (the metrics are the record)."""
COMPILE_CACHE_TAG = "yxanul.compile_cache"
"""Where the compiled model's Inductor caches were (``<storage>/compile-cache``), ``inductor default`` with
``precision.compile_cache=false``, or ``not compiled``."""
EXECUTION_TAG = "yxanul.execution"
"""How the run's training executed (:attr:`yxanul.train.session.Session.kind`): ``ray_train`` (a ``TorchTrainer``'s
workers) or ``in_process`` (inside a sweep trial's own Ray Tune process, ``sweep.in_process``)."""
COMPILE_SCOPE_TAG = "yxanul.compile_s_scope"
"""``run``: the run's ``train/compile_s`` counts every process's compilation, restarts included (checkpointed with
the clock). Runs without it logged each process's own seconds from 0, and the report joins the segments."""
WORKER_PID_TAG = "yxanul.worker_pid"
"""The process id of rank 0's training (of its latest start): in-process trials of one sweep slot share it."""
WORKER_TIMELINE_TAG = "yxanul.worker_timeline"
"""Rank 0's timeline phases as JSON (``{"phases": {...}, "start": t, "end": t}``, wall-clock times): the driver
merges them with its own into the ``timeline/*`` metrics (:mod:`yxanul.timeline`)."""
CURRICULUM_STAGES_TAG = "yxanul.curriculum_stages"
"""The stages that ran, as JSON ``[[index, seq_len, start_tokens, end_tokens], ...]`` (the plan after the measured
micro-batch budget; stage ends in tokens land on whole steps): the report's tokens per stage and which stage a
profiled step belongs to. A plan too long for a tag (over 6000 characters) is not written."""
SPIKE_CHECK_TAG = "yxanul.spike_check"
"""What the spike check covered ("checked N logging points ... from X tokens: no spike") or "not checked: ..."
for a run too short to check: an empty spike list alone would read as "no spike"."""

# ---------------------------------------------------------------------------------------------------
# Metric names that one module writes and another reads (the rest follow train/*, val/<domain>/*)

UNIGRAM_BPB_METRIC = "val/unigram_bpb"
"""Bits/byte of the unigram (token frequency) model on the validation set: the trivial baseline a trained
model must beat. The report draws it as a reference line when a run logged it."""
ATTENTION_SHARE_METRIC = "train/attention_share"
"""The attention core's share (0..1) of one profiled step per curriculum stage (:mod:`yxanul.profiling`): device time
on a GPU, CPU time on CPU. Logged at that step's tokens with ``train/attention_ms`` and ``train/profiled_step_ms``
(share = attention_ms / profiled_step_ms); the report's per-stage table reads it."""
ATTENTION_MS_METRIC = "train/attention_ms"
PROFILED_STEP_MS_METRIC = "train/profiled_step_ms"
DEVICE_MS_METRIC_PREFIX = "train/device_ms/"
"""On a GPU, the profiled step's device time by kind (``train/device_ms/gemm``, ``.../attention``,
``.../cross_entropy``, ``.../optimizer``, ``.../other``: :data:`yxanul.profiling.DEVICE_KINDS`), logged beside
``train/profiled_step_ms``, which they add up to; ``scripts/train_vs_bench.py`` rows carry them."""
ATTENTION_KERNELS_TAG = "yxanul.attention_kernels"
"""What computed attention in the run's profiled steps, comma-separated (``AttentionShare.kernels``: the kernels on a
GPU, the ops on CPU): which backend PyTorch's scaled-dot-product attention picked, shown by the report."""
BF16_EVAL_SUFFIX = "_bf16_eval"
"""Appended to every val/* metric of a run's final validation when it runs again through the BF16 path
(``eval.bf16_eval``): ``val/<domain>/loss_bf16_eval``, ``val/<domain>/bpb_bf16_eval``, ``val/bpb_bf16_eval``."""
BF16_EVAL_BPB_METRIC = f"val/bpb{BF16_EVAL_SUFFIX}"
"""An FP8 run's final weights evaluated as a BF16 run's are (mean over domains, as val/bpb); the report sets it
beside val/bpb, the same weights in the run's training numerics."""
