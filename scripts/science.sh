#!/usr/bin/env bash
# The science setup on one GPU machine: its data, and the calibration that chose its recipe.
#   scripts/science.sh STAGE [STAGE ...]
#
#   prepare   tokenizer (16k BPE on the science sources) + packed 2048 dataset, timed
#   decomposed  the same tokens decomposed 64..2048 (curriculum-variants needs it; the calibration does not), timed
#   lr        the learning-rate sweep at seed 0 (experiments/sweeps/science-calibration.yaml)
#   seeds     seeds 1 and 2 at the best rate of `lr` (seed 0 is the lr sweep's run), timed
#   noise     seeds 0, 1, 2 at science.yaml's rate, timed: the noise floor first, where device time is short;
#             NOISE_RATES="[0.001,0.0005]" runs the seeds at each of those rates instead (seed by seed, the rates
#             rotated, so a round cut short still has whole seeds); `collect` then picks the rate by its seeds' mean
#   lr-check  then the sweep's other rates at seed 0 (`lr` less the rate `noise` ran): was that rate the best?
#             LR_CHECK_RATES="[0.004]" runs only those (rates measured in an earlier round on the same recipe)
#   collect   runs.jsonl + criteria.json (scripts/calibration.py) of everything above
#   fp8       the shipped comparison fp8-vs-bf16 (issue 24), then its report (jobs.compare) into $OUT/fp8-vs-bf16
#   curricula the shipped comparison curriculum-variants (issue 25; needs `decomposed`), report into
#             $OUT/curriculum-variants; COMPARE_OVERRIDES="key=value ..." (split at spaces) is added to either,
#             e.g. "sweep.seeds=[0,1]"; the same command resumes an interrupted sweep (same machine, ./outputs).
#             A comparison run in parts (seed 0 on one machine, seeds 1-2 on the next): STORE=path/mlflow.db[.gz]
#             seeds ./outputs/mlflow.db with the earlier machine's store (when there is none yet), and
#             COMPARE_WITH="fp8-vs-bf16" compares those earlier sweeps with this one in one report, e.g.
#             STORE=docs/results/fp8-vs-bf16/mlflow.db.gz COMPARE_WITH=fp8-vs-bf16 COMPARE_OVERRIDES="sweep.name=fp8-vs-bf16-s12
#             sweep.seeds=[1,2]" scripts/science.sh prepare fp8; COMPARE_ARGS="--reference precision=bf16" is added
#             to that report's command (where the parts fixed different references)
#   tests     pytest -m gpu tests/gpu, its whole output in $OUT/gpu_tests.log (GPU_TESTS="tests/gpu/test_x.py ...":
#             only those; all of them take ~10 minutes)
#
# Everything runs from the repository root with the default relative paths of experiments/runs/science.yaml
# (./outputs/...); on the GPU machine ./outputs is a link into $WORK (default /tmp/yxanul-science), which
# outlives one call on a warm machine. Results go to $OUT (default ./outputs/science): prepare.jsonl, the
# calibration rows, logs, a copy of the MLflow store and fatal.tgz (any training process's fatal error with every
# thread's stack, yxanul.fatal: the run folders stay on the machine). Needs no network. CPU machines can run `prepare`;
# SCIENCE_OVERRIDES="key=value ..." is added to every job and SCIENCE_SWEEP_OVERRIDES to the sweeps only. A CPU
# rehearsal of every stage but tests (2026-12-05, ~12 min on 2 cores):
#   SCIENCE_OVERRIDES="data.builtin_max_bytes=20M tokenizer.train_sample_bytes=2M tokenizer.vocab_size=2048
#     model.n_layers=2 precision.mode=fp32 scaling.use_gpu=false train.max_tokens=196608 train.tokens_per_step=16384
#     train.max_tokens_per_microbatch=16384 optim.warmup_tokens=32768 eval.every_tokens=65536
#     eval.max_tokens_per_domain=8192" SCIENCE_SWEEP_OVERRIDES="sweep.resources.gpus_per_worker=0" \
#   OUT=/tmp/science-rehearsal scripts/science.sh prepare lr seeds collect   (and, 2026-12-06, `noise lr-check collect`)
set -uo pipefail
cd "$(dirname "$0")/.."
out=${OUT:-./outputs/science}
source scripts/device_env.sh
run=experiments/runs/science.yaml
read -r -a extra <<< "${SCIENCE_OVERRIDES:-}"  # e.g. "data.builtin_max_bytes=20M" for a quick CPU rehearsal
read -r -a sweep_extra <<< "${SCIENCE_SWEEP_OVERRIDES:-}"  # e.g. "sweep.resources.gpus_per_worker=0" on a CPU
uri="sqlite:///$PWD/outputs/mlflow.db"
if [ -n "${STORE:-}" ] && [ ! -e outputs/mlflow.db ]; then  # an earlier machine's store (.db or .db.gz): go on in it
    if [[ $STORE == *.gz ]]; then gzip -dc "$STORE" > outputs/mlflow.db.part; else cp "$STORE" outputs/mlflow.db.part; fi \
        && mv outputs/mlflow.db.part outputs/mlflow.db \
        || { rm -f outputs/mlflow.db.part; echo "science.sh: cannot copy STORE=$STORE to outputs/mlflow.db" >&2; exit 2; }
    echo "MLflow store: a copy of $STORE"
fi
rc=0

timed() {  # $1 = step name, rest = command; appends {"step", "seconds", "rc"} to $out/prepare.jsonl
    local name=$1 start end status; shift
    start=$(date +%s%N)
    "$@" 2>&1 | tee -a "$out/$name.log" | grep -v "^$" | tail -4
    status=${PIPESTATUS[0]}
    end=$(date +%s%N)
    printf '{"step": "%s", "seconds": %s, "rc": %d, "host": "%s", "date": "%s"}\n' "$name" \
        "$(awk "BEGIN {printf \"%.1f\", ($end - $start) / 1e9}")" "$status" "$(hostname)" "$(date -u +%FT%TZ)" \
        >> "$out/prepare.jsonl"
    return "$status"
}
prepare() {
    timed tokenizer $py -m jobs.tokenizer $run "${extra[@]}" || return 1
    timed prepare-packed $py -m jobs.prepare $run "${extra[@]}" || return 1
    describe science-code-2048
}
decomposed() {
    timed prepare-decomposed $py -m jobs.prepare $run data.mode=decompose \
        data.output_dir=./outputs/data/science-code-decomposed "${extra[@]}" || return 1
    describe science-code-decomposed
}
describe() {  # $1 = dataset name under outputs/data: one row of datasets.jsonl
    $py - "$out" "$1" <<'EOF'
import json, sys
from pathlib import Path
out = Path(sys.argv[1])
for name in sys.argv[2:]:
    m = json.loads(Path(f"outputs/data/{name}/manifest.json").read_text())
    code = next(s for s in m["sources"] if s["uri"] == "builtin:installed-python")
    corpus = code.get("corpus", {})
    row = {"dataset": name, "train_tokens": m["train"]["tokens"], "train_bytes": m["train"]["bytes"],
           "train_documents": m["train"]["documents"], "bytes_per_token": m["train"]["bytes_per_token"],
           "validation": {d: {k: v[k] for k in ("documents", "tokens", "bytes")} for d, v in m["validation"].items()},
           "installed_python": {k: corpus.get(k) for k in ("python", "roots", "files", "bytes", "skipped")},
           "packages": {side: len(p) for side, p in corpus.get("packages", {}).items()},
           "validation_packages": corpus.get("packages", {}).get("validation"),
           "prepare_seconds": m["seconds"], "tokenizer_sha256": m["tokenizer"]["sha256"],
           "content_sha256": m.get("content_sha256")}
    print(json.dumps({k: row[k] for k in ("dataset", "train_tokens", "train_bytes", "prepare_seconds")}))
    with open(out / "datasets.jsonl", "a") as fh:
        fh.write(json.dumps(row) + "\n")
EOF
}
sweep_name() {  # $1 = the sweep file's name, rest = jobs.sweep arguments: the name the sweep runs under
    local name=$1 arg; shift
    for arg in "$@"; do [[ $arg == sweep.name=* ]] && name=${arg#sweep.name=}; done
    echo "$name"
}
sweep_of() {  # $1 = sweep file, $2 = log name, rest = jobs.sweep arguments; its wall time goes into sweeps.jsonl
    local file=$1 name=$2 start called; shift 2
    called=$(sweep_name "$file" "$@")
    start=$(date +%s)
    $py -m jobs.sweep "$file" "tracking.uri=$uri" "${extra[@]}" "${sweep_extra[@]}" "$@" 2>&1 | tee -a "$out/$name.log" \
        | grep -v "^$" | grep -v "Failed to query Ray Train Controller" | tail -25
    local status=${PIPESTATUS[0]}
    echo "{\"sweep\": \"$name\", \"name\": \"$called\", \"wall_s\": $(( $(date +%s) - start )), \"rc\": $status," \
         "\"date\": \"$(date -u +%Y-%m-%dT%H:%M:%SZ)\"}" >> "$out/sweeps.jsonl"
    fatal_stacks
    return "$status"
}
sweep() { sweep_of science-calibration "$@"; }  # $1 = log name, rest = jobs.sweep arguments
seeds() {
    local lr
    lr=$($py scripts/calibration.py choose --tracking-uri "$uri") || return 1
    echo "best learning rate at seed 0: $lr"
    sweep seeds sweep.name=science-seeds 'sweep.axes={}' 'sweep.seeds=[1,2]' "optim.lr=$lr"
}
science_lr() {  # science.yaml's learning rate
    $py -c "import yaml; print(yaml.safe_load(open('$run'))['optim']['lr'])"
}
noise() {
    local lr
    if [ -n "${NOISE_RATES:-}" ]; then
        echo "noise floor at the learning rates $NOISE_RATES"
        sweep seeds sweep.name=science-seeds "sweep.axes.lr.values=$NOISE_RATES" 'sweep.seeds=[0,1,2]'
        return
    fi
    lr=$(science_lr) || return 1
    echo "noise floor at science.yaml's learning rate $lr"
    sweep seeds sweep.name=science-seeds 'sweep.axes={}' 'sweep.seeds=[0,1,2]' "optim.lr=$lr"
}
lr_check() {
    local lr rates
    lr=$(science_lr) || return 1
    rates=$($py - "$lr" <<'EOF'
import sys, yaml
axis = yaml.safe_load(open("experiments/sweeps/science-calibration.yaml"))["axes"]["lr"]["values"]
print("[" + ",".join(repr(float(v)) for v in axis if float(v) != float(sys.argv[1])) + "]")
EOF
) || return 1
    rates=${LR_CHECK_RATES:-$rates}
    echo "the other learning rates at seed 0: $rates"
    sweep lr "sweep.axes.lr.values=$rates"
}
collect() {
    local wall
    wall=$($py -c "import json; print(sum(json.loads(l)['wall_s'] for l in open('$out/sweeps.jsonl') if '\"seeds\"' in l))" 2>/dev/null)
    $py scripts/calibration.py collect --tracking-uri "$uri" --out "$out" ${wall:+--sweep-wall-s "$wall"} | tail -40
    cp outputs/mlflow.db "$out/mlflow.db" 2>/dev/null
}
comparison() {  # $1 = a shipped sweep: run it on the science setup, then its report into $out/$1
    local name=$1 compared status part
    local -a narrow report_args earlier=()
    read -r -a narrow <<< "${COMPARE_OVERRIDES:-}"
    for part in ${COMPARE_WITH:-}; do earlier+=(--sweep "$part"); done  # earlier parts of this comparison
    read -r -a report_args <<< "${COMPARE_ARGS:-}"  # e.g. "--reference precision=bf16" where the parts disagree
    compared=$(sweep_name "$name" "${narrow[@]}")  # a renamed sweep is compared under its own name, not the file's
    sweep_of "$name" "$name" "${narrow[@]}"
    status=$?
    $py -m jobs.compare "${earlier[@]}" --sweep "$compared" "${report_args[@]}" --out "$out/$name" --tracking-uri "$uri" 2>&1 | tee -a "$out/$name.log" | tail -30
    cp outputs/mlflow.db "$out/mlflow.db" 2>/dev/null
    return "$status"
}
tests() {
    local -a chosen
    read -r -a chosen <<< "${GPU_TESTS:-tests/gpu}"
    $py -m pytest -m gpu "${chosen[@]}" -p no:cacheprovider -q -rA -s --timeout 500 --durations=40 2>&1 | tee "$out/gpu_tests.log" \
        | grep -v "^$" | tail -40
    return "${PIPESTATUS[0]}"
}
[ $# -gt 0 ] || { awk 'NR > 1 { if (!/^#/) exit; print }' "$0"; exit 2; }
{ date -u +%FT%TZ; nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>/dev/null; } \
    >> "$out/env.txt"
for stage in "$@"; do
    case $stage in
        prepare) prepare || rc=$? ;;
        decomposed) decomposed || rc=$? ;;
        lr) sweep lr || rc=$? ;;
        seeds) seeds || rc=$? ;;
        noise) noise || rc=$? ;;
        lr-check) lr_check || rc=$? ;;
        collect) collect || rc=$? ;;
        fp8) comparison fp8-vs-bf16 || rc=$? ;;
        curricula) comparison curriculum-variants || rc=$? ;;
        tests) tests || rc=$? ;;
        *) echo "unknown stage $stage" >&2; exit 2 ;;
    esac
done
exit "$rc"
