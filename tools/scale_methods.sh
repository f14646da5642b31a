#!/usr/bin/env bash
# Every one-shot method of issue 11 at one N, sharing what can be shared:
#
#   tools/scale_methods.sh <N> [dataset file] [method ...]
#
# Order and sharing (default methods: eamet memit alphaedit-aligned alphaedit):
#   eamet              its own residual run directory and pre-edit evaluation;
#   memit              the pre-edit evaluation of the EAMET report (checked, same records);
#   alphaedit-aligned  EAMET's residuals (same optimization, null-space solve);
#   alphaedit          MEMIT's residuals (same optimization, null-space solve).
# So every method sees the same prefixes, statistics, keys and pre-edit numbers. Each step is
# tools/scale_run.sh: resumable, and skipped when its report exists. Run one at a time (two
# libtorch processes on 2 cores slow each other about 5x).
set -euo pipefail
cd "$(dirname "$0")/.."
N=$1
DATA=${EAMET_DATA_DIR:-../shared/data}
FILE=${2:-$DATA/counterfact_easyedit_edit.json}
shift $(( $# >= 2 ? 2 : $# ))
METHODS=("$@")
[ ${#METHODS[@]} -gt 0 ] || METHODS=(eamet memit alphaedit-aligned alphaedit)
STEM=$(basename "$FILE" .json)
D=runs/scale/$STEM-$N
for m in "${METHODS[@]}"; do
    pre=""
    res=""
    case $m in
        eamet) ;;
        memit) pre=$D-eamet/report ;;
        alphaedit-aligned) pre=$D-eamet/report res=$D-eamet/residuals ;;
        alphaedit) pre=$D-eamet/report res=$D-memit/residuals ;;
        *) echo "unknown method $m" >&2; exit 2 ;;
    esac
    [ -n "$pre" ] && [ ! -f "$pre/report.json" ] && pre=""
    echo "== $(date -u +%FT%TZ) $m N=$N${pre:+ pre-from $pre}${res:+ residuals $res}"
    PRE_FROM=$pre RESIDUALS=$res tools/scale_run.sh "$m" "$N" "$FILE"
done
echo "== $(date -u +%FT%TZ) all done"
