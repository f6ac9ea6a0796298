# Sourced by the GPU-machine scripts (science.sh, sweep_overhead.sh) after they set `out` (their $OUT default):
# the work folder that outlives one call on a warm machine ($WORK, default /tmp/yxanul-science; on the GPU
# machine ./outputs links there), the kit's site folder on PYTHONPATH, the interpreter ($PYTHON), and fatal_stacks
# (the stacks of any dead training process under ./outputs into $out/fatal.tgz).
work=${WORK:-/tmp/yxanul-science}
if [ -n "${OUT:-}" ] && [ ! -e outputs ]; then mkdir -p "$work" && ln -s "$work" outputs; fi  # the GPU machine
mkdir -p "$out" outputs
export PYTHONPATH=/tmp/site:$PWD/platform:$PWD${PYTHONPATH:+:$PYTHONPATH}
export TOKENIZERS_PARALLELISM=false PYTHONUNBUFFERED=1
source scripts/site_bytecode.sh
export MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR=false  # calibration.py reads artifacts: no progress bars in the logs
py=${PYTHON:-python3}
fatal_stacks() {  # every training process's fatal error with all its threads' stacks (yxanul.fatal), into $out/fatal.tgz
    local -a found
    mapfile -t found < <(find -L outputs -name '*.fatal' -size +0 2>/dev/null)
    [ ${#found[@]} -gt 0 ] || return 0
    tar czf "$out/fatal.tgz" "${found[@]}" \
        && echo "$(basename "$0"): ${#found[@]} fatal error(s) with their stacks in $out/fatal.tgz"
}
