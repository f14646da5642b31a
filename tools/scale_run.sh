#!/usr/bin/env bash
# One scale run of issue 11 (one-shot: all N edits at once), resumable:
#
#   tools/scale_run.sh <method> <N> [dataset file] [extra eval args...]
#
# Report: runs/scale/<dataset stem>-<N>-<method>/report; residual run directory beside it
# (re-running the same command resumes: finished residual blocks are reused). Default dataset:
# $EAMET_DATA_DIR/counterfact_easyedit_edit.json (the test slice: never tune on it).
# Environment:
#   RESIDUALS=DIR  residual run directory to use instead of the run's own, to share residuals
#                  between methods that optimize them the same way (MEMIT and AlphaEdit; EAMET
#                  and AlphaEdit-aligned): the CLI refuses one made with other settings.
#   PRE_FROM=DIR   a report of the same records whose pre-edit evaluation is reused (checked).
#   GROW_FROM=DIR  a residual run directory of the same method on the first records (a smaller
#                  N), copied in before the run starts when the run has none of its own yet: the
#                  run grows it (its residuals are reused; the CLI checks that they are the first
#                  records'), so N = 3000 pays only for records 1000..2999. DIR is not changed.
#   TAG=NAME       appended to the run's directory name, for runs of another protocol on the
#                  same records, e.g. sequential batches:
#                  TAG=seq100 tools/scale_run.sh alphaedit 1000 "" --batch-size 100 --checkpoint-sample 100
set -euo pipefail
cd "$(dirname "$0")/.."
METHOD=$1
N=$2
DATA=${EAMET_DATA_DIR:-../shared/data}
FILE=${3:-}
[ -n "$FILE" ] || FILE=$DATA/counterfact_easyedit_edit.json
shift $(( $# >= 3 ? 3 : $# ))
STEM=$(basename "$FILE" .json)
DIR=runs/scale/$STEM-$N-$METHOD${TAG:+-$TAG}
EAMET=${EAMET:-target/release/eamet}
[ -x "$EAMET" ] || cargo build --release -p eamet-cli
mkdir -p "$DIR"
if [ -f "$DIR/report/report.json" ]; then
    echo "$DIR: done"
    exit 0
fi
rm -rf "$DIR/report"
if [ -n "${GROW_FROM:-}" ]; then
    RES=${RESIDUALS:-$DIR/residuals}
    [ -f "$GROW_FROM/residuals/manifest.json" ] || { echo "GROW_FROM=$GROW_FROM holds no residuals/manifest.json"; exit 2; }
    if [ ! -e "$RES/residuals/manifest.json" ]; then
        mkdir -p "$RES"
        cp -r "$GROW_FROM/." "$RES/"
    fi
fi
PRE=()
[ -n "${PRE_FROM:-}" ] && PRE=(--pre-from "$PRE_FROM")
exec "$EAMET" eval --dataset "$FILE" --n "$N" --method "$METHOD" --no-robustness \
    --run-dir "${RESIDUALS:-$DIR/residuals}" --report "$DIR/report" "${PRE[@]}" "$@"
