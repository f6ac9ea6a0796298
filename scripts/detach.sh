#!/usr/bin/env bash
# GPU-machine work longer than one device call (10 minutes): start it detached, then wait for it over several
# calls. The machine must stay warm between calls (about 30 s idle): make the `wait` calls back to back.
#
#   scripts/detach.sh start NAME COMMAND [ARG ...]
#       copies the repository (without .gk*, outputs, .venv) to /tmp/detached/NAME/repo and runs COMMAND there in
#       a new process session (setsid), which outlives the call and ends when the machine goes back. A copy, so
#       that the next call's refresh of the working tree cannot touch files the run is using. Log:
#       /tmp/detached/NAME/log; exit status: /tmp/detached/NAME/rc once it ends. COMMAND's $OUT is
#       /tmp/detached/NAME/out, not the call's: the device empties the call's $OUT before the next call, and what a
#       detached run wrote there between calls was lost (2026-12-07); a `wait` call copies from it into its own $OUT.
#   scripts/detach.sh wait NAME [SECONDS]
#       waits until NAME ends or SECONDS (default 540) pass, then prints the log's last $TAIL (default 30)
#       lines. Exit status: NAME's own once it ended, 3 while it still runs, 2 if it was never started.
#
# Example (science.sh's calibration is ~20 minutes):
#   call 1: scripts/detach.sh start science env OUT=/tmp/science-out scripts/science.sh prepare lr seeds collect
#   call 2..: scripts/detach.sh wait science 560
set -uo pipefail
cd "$(dirname "$0")/.."
action=${1:-}; name=${2:-}
[ -n "$action" ] && [ -n "$name" ] || { awk 'NR > 1 { if (!/^#/) exit; print }' "$0"; exit 2; }
dir=/tmp/detached/$name
case $action in
    start)
        shift 2
        [ $# -gt 0 ] || { echo "detach.sh start $name: no command given" >&2; exit 2; }
        if [ -e "$dir/pid" ] && [ ! -e "$dir/rc" ] && kill -0 "$(cat "$dir/pid")" 2>/dev/null; then
            echo "detach.sh: $name is already running (pid $(cat "$dir/pid")); wait for it or pick another NAME" >&2
            exit 2
        fi
        rm -rf "$dir" && mkdir -p "$dir/repo" "$dir/out"
        tar --exclude='./.gk*' --exclude=./outputs --exclude=./.venv -cf - . | tar -xf - -C "$dir/repo" || exit 1
        date +%s > "$dir/started"
        (cd "$dir/repo" && OUT="$dir/out" setsid bash -c '"$@"; echo $? > "'"$dir"'/rc"' _ "$@" > "$dir/log" 2>&1 < /dev/null &
         echo $! > "$dir/pid")
        echo "started $name (pid $(cat "$dir/pid")) in $dir/repo: $*; log $dir/log; its \$OUT $dir/out"
        ;;
    wait)
        [ -e "$dir/started" ] || { echo "detach.sh: $name was never started on this machine ($dir is missing)" >&2; exit 2; }
        deadline=$((SECONDS + ${3:-540}))
        while [ ! -e "$dir/rc" ] && [ "$SECONDS" -lt "$deadline" ]; do sleep 5; done
        tail -n "${TAIL:-30}" "$dir/log"
        elapsed=$(( $(date +%s) - $(cat "$dir/started") ))
        if [ -e "$dir/rc" ]; then
            echo "$name ended after ${elapsed} s: exit status $(cat "$dir/rc")"
            exit "$(cat "$dir/rc")"
        fi
        echo "$name still running after ${elapsed} s"
        exit 3
        ;;
    *) echo "detach.sh: unknown action '$action' (start or wait)" >&2; exit 2 ;;
esac
