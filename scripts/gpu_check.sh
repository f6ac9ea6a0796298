#!/usr/bin/env bash
# The whole GPU check on a lent GPU machine (H100/H200): tests, the train-vs-bench benchmark, the bench matrices.
#   scripts/gpu_check.sh STAGE [STAGE ...]
#
#   info             card, driver, torch / TE / Ray / MLflow versions
#   tests            pytest -m gpu ${GPU_TESTS:-tests/gpu} (FP8 proof, compiled == eager, FP8 plan, auto micro-batch, null A/A, attention share, BF16 eval path, fused head, in-process sweep trials)
#   prepare          8k BPE tokenizer + packed 2048-token dataset of the built-in corpora (humaneval validation)
#   train-vs-bench   yxanul-270m at 16 x 2048: HF peer, jobs.bench bf16 / fp8 auto, jobs.train bf16 / fp8 auto
#   train-vs-bench-2048  the same for the width-2048 preset, bench and train (FP8 auto vs BF16 at width 2048)
#                    (TVB_RUNNERS / TVB_RUNNERS_2048 = another list of runners, e.g. peer,train / train when time is short)
#   bench-270m | bench-270m-recipes | bench-ladder | bench-270m-mb16 | bench-270m-head   the jobs.bench matrices
#                    (experiments/bench; -head: the fused chunked head vs the plain head, BF16 and FP8)
#   sdpa             scripts/sdpa_bench.py: the attention kernels alone (FlashAttention-2, cuDNN, ...) at the models' shapes
#   ce-chunk         scripts/ce_chunk_bench.py: the cross-entropy chunk kernels alone, each way of writing and compiling them
#   bench-attention  model.attention_backend flash vs cudnn, BF16 and FP8 auto, yxanul-270m and width-2048
#                    (experiments/bench/h100-attention.yaml), after the sdpa stage
#   bench-rev        our BF16 speed at this commit (plain and fused head) and at an older one, alternating twice on
#                    one card (experiments/bench/h100-270m-bf16.yaml; REV_ROUNDS=1: once each): REV_DIR=<that
#                    commit's platform, jobs and experiments>, laid out here by `git archive REV platform jobs
#                    experiments | tar -x -C .rev` (a folder .git/info/exclude ignores, named in the call's carry)
#
# Every stage fits the device tool's 10-minute command limit; give several in one call when they fit together.
# Work (tokenizer, dataset, MLflow store, Ray storage) stays in $WORK (default /tmp/yxanul-gpu), which outlives
# one call on a warm machine; logs and results are copied into $OUT (default ./outputs/gpu), which the device
# tool empties before every call and from which at most 8 files come back.
#
# The GPU image lacks Ray, MLflow and Transformer Engine: ../shared/gpu/kit.sh lays them out as 7 folders carried
# one per call; the last call runs kit_setup.sh, which installs into /tmp/site (PYTHONPATH below).
set -uo pipefail
cd "$(dirname "$0")/.."
out=${OUT:-./outputs/gpu}
work=${WORK:-/tmp/yxanul-gpu}
mkdir -p "$out" "$work"
out=$(cd "$out" && pwd)  # absolute: a stage may run from another directory
export PYTHONPATH=/tmp/site:$PWD/platform:$PWD${PYTHONPATH:+:$PYTHONPATH}
export TOKENIZERS_PARALLELISM=false PYTHONUNBUFFERED=1
source scripts/site_bytecode.sh
py=${PYTHON:-python3}
rc=0
info() {
    { date -u +%FT%TZ; nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
      $py -c 'import torch, transformers, transformer_engine as te; print("torch", torch.__version__, "cuda", torch.version.cuda, "transformers", transformers.__version__, "TE", te.__version__, torch.cuda.get_device_name(), torch.cuda.get_device_capability())'
      $py -c 'import ray, mlflow; print("ray", ray.__version__, "mlflow", mlflow.__version__)'
    } 2>&1 | tee "$out/env.txt"
}
tests() {
    $py -m pytest -m gpu ${GPU_TESTS:-tests/gpu} -p no:cacheprovider -q -rA -s --timeout 500 --durations=40 2>&1 | tee "$out/gpu_tests.log" | grep -v "^$" | tail -60
    return "${PIPESTATUS[0]}"
}
prepare() { bash scripts/gpu_prepare.sh "$work"; }
tvb() {  # $@ = train_vs_bench.py arguments
    $py scripts/train_vs_bench.py --data "$work/data" --out "$work/tvb" "$@" 2>&1 | tee -a "$work/tvb.log" \
        | grep -v "^$" | grep -v "Failed to query Ray Train Controller" | tail -30
    local status=${PIPESTATUS[0]}
    cp "$work"/tvb/train-vs-bench-*.jsonl "$work"/tvb/train-vs-bench-*.md "$out/" 2>/dev/null
    return "$status"
}
sdpa() {  # the attention kernels alone, one row per shape and backend
    $py scripts/sdpa_bench.py > "$out/sdpa_bench.jsonl" 2> "$out/sdpa_bench.log"
    local status=$?
    tail -12 "$out/sdpa_bench.jsonl"
    return "$status"
}
ce_chunk() {  # one chunk's loss + gradient, 4,096 x 200k BF16 logits, each way (rows in ce_chunk.jsonl)
    $py scripts/ce_chunk_bench.py 2>&1 | tee "$out/ce_chunk.log" | grep -v '^{' | tail -8
    local status=${PIPESTATUS[0]}
    grep '^{' "$out/ce_chunk.log" > "$out/ce_chunk.jsonl"
    return "$status"
}
usage() { awk 'NR > 1 { if (!/^#/) exit; print }' "$0"; }  # the header comment: no line range to keep up to date
bench() {  # $1 = config name, rest = overrides
    local name=$1; shift
    $py -m jobs.bench "experiments/bench/$name.yaml" "output=$out/bench-$name.jsonl" "$@" 2>&1 | tee "$out/bench-$name.log" | grep -v "^$" | tail -40
    return "${PIPESTATUS[0]}"
}
bench_rev() {  # HEAD, REV, HEAD, REV: drift on the card lands on both. $REV_ARGS: overrides for both (a CPU check)
    local rev=${REV_DIR:-} round
    [ -d "$rev/platform/yxanul" ] || { echo "bench-rev: set REV_DIR to an older commit's tree (usage above)" >&2; return 2; }
    for round in $(seq "${REV_ROUNDS:-2}"); do
        bench h100-270m-bf16 "head_chunk_tokens=[0,auto]" ${REV_ARGS:-} || return
        mv "$out/bench-h100-270m-bf16.jsonl" "$out/bench-rev-head-$round.jsonl"
        (cd "$rev" && PYTHONPATH=/tmp/site:$PWD/platform:$PWD $py -m jobs.bench "$OLDPWD/experiments/bench/h100-270m-bf16.yaml" \
            "output=$out/bench-rev-old-$round.jsonl" ${REV_ARGS:-} 2>&1 | tee "$out/bench-rev-old-$round.log" | grep -v "^$" | tail -8
         exit "${PIPESTATUS[0]}") || return
    done
    rm -f "$out"/bench-h100-270m-bf16.md "$out"/bench-rev-old-*.md  # its own tables only: other stages keep theirs
}
[ $# -gt 0 ] || { usage; exit 2; }
for stage in "$@"; do
    case $stage in
        info) info ;;
        tests) tests || rc=$? ;;
        prepare) prepare || rc=$? ;;
        train-vs-bench) prepare && tvb --preset yxanul-270m --runners "${TVB_RUNNERS:-peer,bench,train}" --micro-batch 16 \
                            --steps 40 || rc=$? ;;
        train-vs-bench-2048) prepare && tvb --preset width-2048 --runners "${TVB_RUNNERS_2048:-bench,train}" \
                                 --micro-batch 16 --steps 30 || rc=$? ;;
        bench-270m) bench h100-270m || rc=$? ;;
        bench-270m-recipes) bench h100-270m-recipes || rc=$? ;;
        bench-ladder) bench h100-ladder || rc=$? ;;
        bench-270m-mb16) bench h100-270m-mb16 || rc=$? ;;
        bench-270m-head) bench h100-270m-head || rc=$? ;;
        sdpa) sdpa || rc=$? ;;
        bench-attention) sdpa || rc=$?; bench h100-attention || rc=$? ;;
        bench-rev) bench_rev || rc=$? ;;
        ce-chunk) ce_chunk || rc=$? ;;
        *) echo "unknown stage $stage; usage:" >&2; usage >&2; exit 2 ;;
    esac
done
exit $rc
