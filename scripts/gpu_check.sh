#!/usr/bin/env bash
# The whole GPU check on the lent H100 machine, writing logs under $OUT (default ./outputs/gpu).
#   scripts/gpu_check.sh [tests|bench-270m|bench-270m-recipes|bench-ladder|bench-270m-mb16|all]
# (each stage fits the device tool's 10-minute command limit; `all` runs them in order)
# Needs Transformer Engine in /tmp/site (see ../shared/gpu/prepare_te.sh) and no Ray/MLflow: the
# model, precision, step and bench modules import neither.
set -uo pipefail
cd "$(dirname "$0")/.."
stage=${1:-all}
out=${OUT:-./outputs/gpu}
mkdir -p "$out"
export PYTHONPATH=/tmp/site:$PWD/platform${PYTHONPATH:+:$PYTHONPATH}
export PYTHONDONTWRITEBYTECODE=1 TOKENIZERS_PARALLELISM=false
py=${PYTHON:-python3}
rc=0
info() {
    { date -u +%FT%TZ; nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
      $py -c 'import torch, transformers, transformer_engine as te; print("torch", torch.__version__, "cuda", torch.version.cuda, "transformers", transformers.__version__, "TE", te.__version__, torch.cuda.get_device_name(), torch.cuda.get_device_capability())'
    } 2>&1 | tee "$out/env.txt"
}
tests() {
    $py -m pytest -m gpu tests/gpu -p no:cacheprovider -q -rA -s --timeout 500 2>&1 | tee "$out/gpu_tests.log" | grep -v "^$" | tail -60
    return "${PIPESTATUS[0]}"
}
bench() {  # $1 = config name, rest = overrides
    local name=$1; shift
    $py -m jobs.bench "experiments/bench/$name.yaml" "output=$out/bench-$name.jsonl" "$@" 2>&1 | tee "$out/bench-$name.log" | grep -v "^$" | tail -40
    return "${PIPESTATUS[0]}"
}
case $stage in
    tests) info; tests || rc=$? ;;
    bench-270m) bench h100-270m || rc=$? ;;
    bench-270m-recipes) bench h100-270m-recipes || rc=$? ;;
    bench-ladder) bench h100-ladder || rc=$? ;;
    bench-270m-mb16) bench h100-270m-mb16 || rc=$? ;;
    all) info; tests || rc=$?; for b in h100-270m h100-270m-recipes h100-ladder h100-270m-mb16; do bench $b || rc=$?; done ;;
    *) echo "usage: $0 [tests|bench-270m|bench-270m-recipes|bench-ladder|bench-270m-mb16|all]" >&2; exit 2 ;;
esac
exit $rc
