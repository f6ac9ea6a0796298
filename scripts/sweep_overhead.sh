#!/usr/bin/env bash
# Sweep overhead on one GPU machine (issue 21): where a short science-setup sweep's wall-clock goes, per trial
# and per sweep, before and after the shared compile cache, as JSONL.
#   scripts/sweep_overhead.sh MODE [MODE ...]
#
#   prepare  the science data if missing (scripts/science.sh prepare: tokenizer + datasets, a few minutes)
#   before   precision.compile_cache=false and Inductor's cache in a fresh empty folder: a new machine
#   after    precision.compile_cache=true on a fresh storage, run twice: cold (first sweep) then warm (a second
#            sweep on the same storage: what a resumed or repeated sweep gets)
#   trainer  precision.compile_cache=true on a fresh storage, sweep.in_process=false: every trial on a TorchTrainer
#   inproc   the same with sweep.in_process=auto (the default, also of before/after): the one-worker trials train
#            in their reused Tune trial process
#
# Each sweep is fp8-vs-bf16 on the science setup with ARMS (default: bf16 and fp8-auto), SEEDS (default [0]) and
# TOKENS per trial (default 13107200 = 200 steps, ~45 s of BF16 training on an H100; 39321600 = the science
# setup's 600 steps, ~2-3 min trials, the issue's target regime: run one MODE per device call then). Results in
# $OUT (default ./outputs/overhead): overhead.jsonl (one row per trial and one per sweep: every timeline/* metric,
# the sweep efficiency, the card, the mode), the sweeps' logs, a copy of the MLflow store and fatal.tgz (any training
# process's fatal error with every thread's stack). OVERRIDES="key=value ..." is added to every sweep, e.g. a CPU
# rehearsal (2 cores, 2 trials at once: ~10 min for these 4, prepare included):
#   ARMS='{a: {precision.mode: fp32}, b: {precision.mode: fp32, precision.recipe: current}}' SEEDS='[0,1]' TOKENS=196608
#   OVERRIDES="data.builtin_max_bytes=20M tokenizer.train_sample_bytes=2M tokenizer.vocab_size=2048 model.n_layers=2
#     scaling.use_gpu=false sweep.resources.gpus_per_worker=0 sweep.reference.precision=a train.tokens_per_step=16384
#     train.max_tokens_per_microbatch=16384 optim.warmup_tokens=32768 eval.every_tokens=65536
#     eval.max_tokens_per_domain=8192" SCIENCE_OVERRIDES="<the same less the sweep.* keys>" OUT=/tmp/overhead \
#   scripts/sweep_overhead.sh prepare inproc
set -uo pipefail
cd "$(dirname "$0")/.."
out=${OUT:-./outputs/overhead}
source scripts/device_env.sh
tokens=${TOKENS:-13107200}
seeds=${SEEDS:-[0]}
arms=${ARMS:-'{bf16: {precision.mode: bf16}, fp8-auto: {precision.mode: fp8, precision.fp8_layers: auto}}'}
read -r -a extra <<< "${OVERRIDES:-}"
uri="sqlite:///$PWD/outputs/overhead-mlflow.db"
stamp=$(date -u +%Y%m%d-%H%M%S)
rc=0

sweep() {  # $1 = mode label, $2 = storage folder, rest = extra overrides; one sweep, then its rows
    local mode=$1 storage=$2 name="overhead-$1-$stamp"; shift 2
    echo "== $mode: sweep $name (storage $storage)"
    $py -m jobs.sweep fp8-vs-bf16 "sweep.name=$name" "sweep.seeds=$seeds" "sweep.axes={precision: {variants: $arms}}" \
        "train.max_tokens=$tokens" "run.storage_path=$storage" "tracking.uri=$uri" "${extra[@]}" "$@" 2>&1 \
        | tee -a "$out/$name.log" | grep -E "timeline:|sweep efficiency|finished|failed|interrupted|error" | tail -20
    local status=${PIPESTATUS[0]}
    cp "$storage/sweeps/$name.log" "$out/" 2>/dev/null
    $py - "$uri" "$name" "$mode" "$out/overhead.jsonl" <<'EOF' || status=1
import json, subprocess, sys
from mlflow import MlflowClient
from yxanul.tags import COMPILE_CACHE_TAG, GPU_NAME_TAG, ROLE_SWEEP, ROLE_TAG, RUN_NAME_TAG, STATUS_TAG, SWEEP_TAG, VARIANT_TAG
uri, name, mode, path = sys.argv[1:]
client = MlflowClient(uri)
exp = client.get_experiment_by_name("fp8-vs-bf16")
if exp is None:
    sys.exit(f"sweep_overhead.sh: no MLflow experiment fp8-vs-bf16 in {uri}: the sweep {name} logged no run")
runs = client.search_runs([exp.experiment_id], filter_string=f"tags.`{SWEEP_TAG}` = '{name}'")
try:
    smi = subprocess.run(["nvidia-smi", "--query-gpu=name,driver_version", "--format=csv,noheader"],
                         capture_output=True, text=True).stdout.strip()
except FileNotFoundError:  # a CPU rehearsal
    smi = "no GPU (nvidia-smi not found)"
with open(path, "a") as fh:
    for run in sorted(runs, key=lambda r: r.info.start_time):
        timeline = {k: v for k, v in run.data.metrics.items() if k.startswith("timeline/")}
        row = {"sweep": name, "mode": mode, "card": run.data.tags.get(GPU_NAME_TAG) or smi,
               "status": run.data.tags.get(STATUS_TAG, ""),
               **timeline}
        if run.data.tags.get(ROLE_TAG) == ROLE_SWEEP:
            row["row"] = "sweep"
        else:
            row.update({"row": "trial", "run": run.data.tags.get(RUN_NAME_TAG), "variant": run.data.tags.get(VARIANT_TAG),
                        "compile_cache": run.data.tags.get(COMPILE_CACHE_TAG),
                        "tokens_per_s": run.data.metrics.get("train/tokens_per_s")})
        fh.write(json.dumps(row) + "\n")
        print(json.dumps({k: row[k] for k in ("row", "mode", "run", "timeline/efficiency", "timeline/wall_s",
                                               "timeline/steps_s", "timeline/compile_s") if k in row}))
EOF
    return "$status"
}
before() {
    local inductor
    inductor=$(mktemp -d /tmp/inductor-before-XXXX)  # empty: every trial's first compile starts cold
    TORCHINDUCTOR_CACHE_DIR=$inductor TRITON_CACHE_DIR=$inductor/triton \
        sweep before "$PWD/outputs/overhead-before-$stamp" precision.compile_cache=false
}
after() {
    local storage="$PWD/outputs/overhead-after-$stamp"
    sweep after-cold "$storage" precision.compile_cache=true || return 1
    sweep after-warm "$storage" precision.compile_cache=true
}
[ $# -gt 0 ] || { awk 'NR > 1 { if (!/^#/) exit; print }' "$0"; exit 2; }
{ date -u +%FT%TZ; nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>/dev/null; } \
    >> "$out/env.txt"
for mode in "$@"; do
    case $mode in
        prepare) [ -f outputs/data/science-code-2048/manifest.json ] || scripts/science.sh prepare || rc=$? ;;
        before) before || rc=$? ;;
        after) after || rc=$? ;;
        trainer) sweep trainer "$PWD/outputs/overhead-trainer-$stamp" precision.compile_cache=true \
                     sweep.in_process=false || rc=$? ;;
        inproc) sweep inproc "$PWD/outputs/overhead-inproc-$stamp" precision.compile_cache=true || rc=$? ;;
        *) echo "unknown mode $mode" >&2; exit 2 ;;
    esac
done
cp "${uri#sqlite:///}" "$out/overhead-mlflow.db" 2>/dev/null
fatal_stacks
exit "$rc"
