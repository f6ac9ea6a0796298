#!/usr/bin/env bash
# Which commit made our BF16 training step slower: a bisection of jobs.bench tokens/s over first-parent history,
# on one card (the GPU machine; its .git holds the session's commits).
#   scripts/bisect_speed.sh GOOD BAD THRESHOLD [CONFIG]
# Each probe lays out one commit's platform/, jobs/ and experiments/ under $WORK/rev/<commit> (git archive: the working tree is not
# touched) and runs that code's jobs.bench on CONFIG (default experiments/bench/h100-270m-bf16.yaml, read from
# this tree once, so every commit runs the same matrix; keys only the oldest commit knows too). A commit at or
# above THRESHOLD tokens/s is good. A probe that fails is reported and its neighbour probed instead.
# Prints and writes $OUT/bisect.txt: every probe (commit, tokens/s) and the first slow commit.
set -uo pipefail
cd "$(dirname "$0")/.."
[ $# -ge 3 ] || { awk 'NR > 1 { if (!/^#/) exit; print }' "$0"; exit 2; }
good=$1 bad=$2 threshold=$3 config=${4:-experiments/bench/h100-270m-bf16.yaml}
out=${OUT:-./outputs/gpu} work=${WORK:-/tmp/yxanul-gpu}
mkdir -p "$out" "$work/rev"
cp "$config" "$work/rev/config.yaml"
py=${PYTHON:-python3}
mapfile -t commits < <(git rev-list --reverse --first-parent "$good..$bad")
[ ${#commits[@]} -gt 0 ] || { echo "bisect_speed: no commits in $good..$bad" >&2; exit 2; }
log() { echo "$*" | tee -a "$out/bisect.txt"; }
probe() {  # $1 = commit -> prints tokens/s, or nothing when the bench failed
    local c=$1 dir=$work/rev/$1
    rm -rf "$dir" && mkdir -p "$dir" && git archive "$c" platform jobs experiments | tar -x -C "$dir" || return
    (cd "$dir" && PYTHONPATH=/tmp/site:$PWD/platform:$PWD $py -m jobs.bench "$work/rev/config.yaml" \
        "output=$dir.jsonl" > "$dir.log" 2>&1) || { tail -5 "$dir.log" >&2; return; }
    $py -c 'import json, sys; print(round(max(json.loads(l)["tokens_per_s"] or 0 for l in open(sys.argv[1]))))' "$dir.jsonl"
}
log "bisect $good..$bad (${#commits[@]} commits), good >= $threshold tokens/s, $(nvidia-smi --query-gpu=name --format=csv,noheader 2>/dev/null)"
lo=-1 hi=$((${#commits[@]} - 1))  # commits[lo] good (lo=-1: GOOD itself), commits[hi] bad
while [ $((hi - lo)) -gt 1 ]; do
    mid=$(((lo + hi) / 2)) tps=""
    while [ "$mid" -lt "$hi" ]; do
        tps=$(probe "${commits[$mid]}")
        [ -n "$tps" ] && break
        log "$(git log -1 --format='%h %s' "${commits[$mid]}" | cut -c1-100)  FAILED"
        mid=$((mid + 1))
    done
    [ -n "$tps" ] || { log "no measurable commit between ${commits[$lo]:-$good} and ${commits[$hi]}"; break; }
    log "$(git log -1 --format='%h %s' "${commits[$mid]}" | cut -c1-100)  $tps"
    if [ "$tps" -ge "$threshold" ]; then lo=$mid; else hi=$mid; fi
done
log "first slow commit: $(git log -1 --format='%h %cI %s' "${commits[$hi]}")"
