#!/usr/bin/env bash
# Runs a command while every long `eamet eval` / `eamet edit` run of this machine is paused.
#
#   tools/pause_runs.sh cargo test -p eamet-hooks
#
# On 2 cores a compile or test beside a libtorch run slows the run far more than the compile
# takes (OpenMP threads wait at barriers while the compiler holds a core), so heavy commands
# stop the runs (SIGSTOP) and resume them (SIGCONT) when done, on failure or on Ctrl-C too. A
# stopped run loses nothing: it continues where it was.
set -uo pipefail
# Only command lines that start with an eamet binary (target/release/eamet, a pinned copy such as
# runs/scale/bin/eamet-<tag>): never this script or a shell whose arguments name one.
pids=$(pgrep -f '^[^ ]*eamet[^ ]* (eval|edit) ' | tr '\n' ' ')
if [ -n "$pids" ]; then
    kill -STOP $pids 2>/dev/null
    trap 'kill -CONT $pids 2>/dev/null' EXIT
    echo "[pause_runs] paused $pids" >&2
fi
"$@"
