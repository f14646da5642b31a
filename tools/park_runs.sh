#!/usr/bin/env bash
# Carries unfinished long runs from one machine to the next through git:
#
#   tools/park_runs.sh save      copy the run directories of unfinished runs under runs/ to parked/
#   tools/park_runs.sh restore   copy parked/ back into runs/ (never over a file that is there)
#   tools/park_runs.sh list      what parked/ holds: facts done per run directory
#
# A run directory is what `eamet eval/edit --run-dir` writes: prefixes.json, the pre-edit
# evaluation (pre-eval.json) and one file per finished residual (residuals/fact-*.bin), about
# 8 KB per SmolLM2 fact. A session's machine is new each time and runs/ is not committed, so a
# run of several hours is saved here before the session ends, committed, restored on the next
# machine and resumed with the same command: the CLI reuses every finished fact and refuses a
# directory made with other settings. A run is unfinished when the report beside its run
# directory (../report/report.json) does not exist; finished runs are not parked, and parked
# copies of runs that have since finished are removed by `save`.
set -euo pipefail
cd "$(dirname "$0")/.."
cmd=${1:-list}
case $cmd in
    save)
        mkdir -p parked
        while IFS= read -r -d '' pj; do
            dir=$(dirname "$pj")
            rel=${dir#runs/}
            # The sweep's residual directories (OUT/residuals/<setting>) are carried by
            # docs/sweep/<model>/residuals instead (tools/sweep_hparams.sh).
            [ "$(basename "$(dirname "$dir")")" = residuals ] && continue
            report=$(dirname "$dir")/report/report.json
            if [ -f "$report" ]; then
                [ -d "parked/$rel" ] && rm -rf "parked/$rel" && echo "unparked $rel (finished)"
                continue
            fi
            mkdir -p "parked/$rel"
            cp -r "$dir/." "parked/$rel/"
            n=$(find "parked/$rel" -name 'fact-*.bin' | wc -l)
            echo "parked $rel: $n facts"
        done < <(find runs -name prefixes.json -print0 2>/dev/null)
        ;;
    restore)
        [ -d parked ] || { echo "nothing parked"; exit 0; }
        mkdir -p runs
        cp -rn parked/. runs/
        echo "restored into runs/:"
        "$0" list
        ;;
    list)
        [ -d parked ] || { echo "nothing parked"; exit 0; }
        while IFS= read -r -d '' pj; do
            dir=$(dirname "$pj")
            echo "${dir#parked/}: $(find "$dir" -name 'fact-*.bin' | wc -l) facts"
        done < <(find parked -name prefixes.json -print0)
        ;;
    *)
        echo "usage: tools/park_runs.sh save|restore|list" >&2
        exit 2
        ;;
esac
