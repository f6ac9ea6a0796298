#!/usr/bin/env bash
# The curriculum answer's later parts on the GPU machine (with the kit; docs/results/curriculum-variants/README.md),
# each seeded with the committed store and reported together with the sweeps before it:
#   seed2          every arm at seed 2 (sweep curriculum-variants-s2: none, seed-ultra, decomposition, linear-warmup on
#                  one card), after preparing the data
#   linear-warmup  linear-warmup at seeds 0 and 1 (sweep curriculum-variants-lw, its own reference; after seed2)
# e.g. scripts/detach.sh start cur bash docs/results/curriculum-variants/part2.sh seed2 linear-warmup
# Results in $OUT (default /tmp/science-out), the store in /tmp/yxanul-science/mlflow.db.
set -uo pipefail
cd "$(dirname "$0")/../../.."
export OUT=${OUT:-/tmp/science-out}
export STORE=docs/results/curriculum-variants/mlflow.db.gz  # used only while the machine has no store yet
export COMPARE_ARGS="--reference curriculum=none"
[ $# -gt 0 ] || { sed -n '2,8p' "$0"; exit 2; }
rc=0
for part in "$@"; do
    case $part in
        seed2)
            COMPARE_WITH="curriculum-variants curriculum-variants-r0" COMPARE_OVERRIDES='sweep.name=curriculum-variants-s2 sweep.seeds=[2]' \
              bash scripts/science.sh prepare decomposed curricula || rc=$?
            ;;
        linear-warmup)
            [ -d outputs/data/science-code-decomposed ] || bash scripts/science.sh prepare decomposed || rc=$?
            COMPARE_WITH="curriculum-variants curriculum-variants-r0 curriculum-variants-s2" COMPARE_OVERRIDES='sweep.name=curriculum-variants-lw sweep.seeds=[0,1] sweep.reference={"curriculum":"linear-warmup"} sweep.exclude=[{"curriculum":"none"},{"curriculum":"seed-ultra"},{"curriculum":"decomposition"}]' \
              bash scripts/science.sh curricula || rc=$?
            ;;
        *) echo "part2.sh: unknown part '$part' (seed2 or linear-warmup)" >&2; exit 2 ;;
    esac
    echo "part2.sh: $part done (exit status so far $rc)"
done
exit "$rc"
