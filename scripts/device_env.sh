# Sourced by the GPU-machine scripts (science.sh, sweep_overhead.sh) after they set `out` (their $OUT default):
# the work folder that outlives one call on a warm machine ($WORK, default /tmp/yxanul-science; on the GPU
# machine ./outputs links there), the kit's site folder on PYTHONPATH, and the interpreter ($PYTHON).
work=${WORK:-/tmp/yxanul-science}
if [ -n "${OUT:-}" ] && [ ! -e outputs ]; then mkdir -p "$work" && ln -s "$work" outputs; fi  # the GPU machine
mkdir -p "$out" outputs
export PYTHONPATH=/tmp/site:$PWD/platform:$PWD${PYTHONPATH:+:$PYTHONPATH}
export TOKENIZERS_PARALLELISM=false PYTHONUNBUFFERED=1
source scripts/site_bytecode.sh
export MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR=false  # calibration.py reads artifacts: no progress bars in the logs
py=${PYTHON:-python3}
