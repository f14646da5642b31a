#!/usr/bin/env bash
# The hyperparameter sweep of docs/hparams.md, on the development slice only: CounterFact
# EasyEdit *train* records 9000..9199 (never the test file). SmolLM2 by default; another model
# starts from the SmolLM2 presets (or its own, SWEEP_PRESET) with the layer sets to try:
#
#   tools/sweep_hparams.sh [OUT]        (default OUT: runs/sweep)
#   SWEEP_MODEL=${EAMET_HOME:-$HOME/.cache/eamet}/models/gemma-3-270m-q4_k_m.gguf \
#     SWEEP_LAYERS="4 3 6" tools/sweep_hparams.sh runs/sweep-gemma3   (one layer: its post-FFN norm)
#
# One report per setting under OUT/<name>/report, one residual run directory per setting that
# changes the residuals (method, layers, gate) under OUT/residuals/<name>: settings that only
# change the solve (λ, key statistics) reuse those residuals and the pre-edit evaluation, so the
# whole sweep costs one residual optimization per (method, layers, gate). Every step is
# resumable: a setting whose report exists is skipped, and residual run directories resume.
# Environment: EAMET (the CLI binary; default: a copy of target/release/eamet pinned in
# OUT/bin on the first run), EAMET_DATA_DIR,
# SWEEP_N (200), SWEEP_OFFSET (9000), SWEEP_LAMBDAS ("30 100 300 1000 3000"), SWEEP_MODEL
# (default: the set-up's SmolLM2), SWEEP_PRESET (the presets every setting starts from,
# hparams/<METHOD>/<stem>.json; default smollm2-135m),
# SWEEP_LAYERS ("3,4 2,3,4,5,6 8,9"; the first set is the one the gate and statistics runs use),
# SWEEP_DONE (a directory of finished settings, e.g. docs/sweep/smollm2-135m, whose
# <setting>/report.json, committed by tools/compact_report.py, marks a setting to skip),
# SWEEP_METHODS ("memit eamet"; the methods of the layer and clamp stages),
# SWEEP_PRE (a finished report of this sweep whose pre-edit evaluation the first new setting
# reuses; default: the first finished report the sweep meets),
# SWEEP_STAGES ("layers stats gate": λ × layer sets, 4096-document key statistics, the gate;
# "clamp" also: the `fix_ks` clamp factors SWEEP_CLAMPS, default "1 3", at the first layer set;
# "nullspace" also: AlphaEdit's threshold SWEEP_THRESHOLDS ("0.0002 0.002 0.02") × ridge SWEEP_L2S
# ("1 10") on the MEMIT residuals of the first layer set).
# Across machines: copy the committed residual run directories (docs/sweep/<model>/residuals,
# tools/compact_report.py does not make them) into OUT/residuals first, and they resume.
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${1:-runs/sweep}
# One binary for the whole sweep, across resumes: without EAMET, the release build is copied to
# $OUT/bin/eamet on the first run and that copy is used from then on (a later rebuild could
# sample other context documents, and --pre-from would then refuse the first report).
if [ -z "${EAMET:-}" ]; then
    EAMET=$OUT/bin/eamet
    if [ ! -x "$EAMET" ]; then
        [ -x target/release/eamet ] || cargo build --release -p eamet-cli
        mkdir -p "$OUT/bin"
        cp target/release/eamet "$EAMET"
    fi
fi
DATA=${EAMET_DATA_DIR:-../shared/data}
FILE="$DATA/counterfact_easyedit_train.json"
N=${SWEEP_N:-200}
OFFSET=${SWEEP_OFFSET:-9000}
LAMBDAS=${SWEEP_LAMBDAS:-"30 100 300 1000 3000"}
WIKI="$DATA/wikitext2/wiki.train.tokens"
PRESET=${SWEEP_PRESET:-smollm2-135m}
read -r -a LAYER_SETS <<< "${SWEEP_LAYERS:-3,4 2,3,4,5,6 8,9}"
[ ${#LAYER_SETS[@]} -gt 0 ] || { echo "SWEEP_LAYERS names no layer set"; exit 2; }
BASE_LAYERS=${LAYER_SETS[0]}
read -r -a METHODS <<< "${SWEEP_METHODS:-memit eamet}"
STAGES=" ${SWEEP_STAGES:-layers stats gate} "
MODEL_ARGS=()
[ -n "${SWEEP_MODEL:-}" ] && MODEL_ARGS=(--model "$SWEEP_MODEL")
[ -f "$FILE" ] || { echo "missing $FILE (EAMET_DATA_DIR)"; exit 1; }
[ -x "$EAMET" ] || { echo "EAMET=$EAMET is not an executable"; exit 1; }
mkdir -p "$OUT/hparams" "$OUT/residuals"

# hparams file from a preset with overrides: hp <out> <preset> key=json ...
hp() {
    local out=$1 preset=$2
    shift 2
    python3 - "$out" "$preset" "$@" <<'EOF'
import json, sys
out, preset, *kv = sys.argv[1:]
d = json.load(open(preset))
for item in kv:
    k, v = item.split("=", 1)
    d[k] = json.loads(v)
json.dump(d, open(out, "w"), indent=2)
EOF
}

# run <name> <method> <hparams file> <residual dir name> [extra eval args...]
PRE=${SWEEP_PRE:-}
run() {
    local name=$1 method=$2 hpf=$3 res=$4
    shift 4
    local report="$OUT/$name/report"
    if [ -n "${SWEEP_DONE:-}" ] && [ -f "$SWEEP_DONE/$name/report.json" ]; then
        echo "== $name: done in $SWEEP_DONE"
        return
    fi
    if [ -f "$report/report.json" ]; then
        echo "== $name: done"
        [ -n "$PRE" ] || PRE=$report
        return
    fi
    echo "== $name"
    local pre_args=()
    [ -n "$PRE" ] && pre_args=(--pre-from "$PRE")
    rm -rf "$report"
    "$EAMET" eval "${MODEL_ARGS[@]}" --dataset "$FILE" --offset "$OFFSET" --n "$N" --method "$method" \
        --hparams "$hpf" --run-dir "$OUT/residuals/$res" --no-robustness --no-fluency \
        --report "$report" "${pre_args[@]}" "$@" --json > "$OUT/$name.json"
    [ -n "$PRE" ] || PRE=$report
}

stage() { [[ $STAGES == *" $1 "* ]]; }

stage layers && for method in "${METHODS[@]}"; do
    preset=hparams/${method^^}/$PRESET.json
    for layers in "${LAYER_SETS[@]}"; do
        tag=$method-L${layers//,/-}
        for lam in $LAMBDAS; do
            f="$OUT/hparams/$tag-lam$lam.json"
            hp "$f" "$preset" "layers=[$layers]" "mom2_update_weight=$lam"
            run "$tag-lam$lam" "$method" "$f" "$tag"
        done
    done
done
BASE_TAG=L${BASE_LAYERS//,/-}
# Key statistics: 4096 documents of WikiText-2 and of model-written text (the first layer set;
# the residuals of its runs are reused: statistics only enter the solve). WikiText first: the
# 4096 model-written documents must be generated first (about 16 times the 256 default ones).
# The context prefixes of the metrics stay cut from the preset's model-written documents
# (--prefix-docs), so these reports share the pre-edit evaluation of the others.
PREFIX_DOCS=$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["mom2_n_samples"])' \
    "hparams/MEMIT/$PRESET.json")
stage stats && for corpus in wiki gen; do
    for method in memit eamet; do
        preset=hparams/${method^^}/$PRESET.json
        for lam in $LAMBDAS; do
            f="$OUT/hparams/$method-$BASE_TAG-gen4096-lam$lam.json"
            hp "$f" "$preset" "layers=[$BASE_LAYERS]" "mom2_update_weight=$lam" "mom2_n_samples=4096"
            if [ $corpus = gen ]; then
                run "$method-$BASE_TAG-gen4096-lam$lam" "$method" "$f" "$method-$BASE_TAG" \
                    --prefix-docs "$PREFIX_DOCS"
            elif [ -f "$WIKI" ]; then
                run "$method-$BASE_TAG-wiki4096-lam$lam" "$method" "$f" "$method-$BASE_TAG" \
                    --stats-corpus "$WIKI" --prefix-docs "$PREFIX_DOCS"
            fi
        done
    done
done
# The alignment gate (EAMET, the first layer set): threshold 0.25 and 1.0 besides the preset's 0.5.
# The residual clamp ‖δ‖ ≤ clamp_ks_factor·‖k‖ (`fix_ks`; the first layer set; not in the default
# stages). MEMIT's preset clamps by the block output instead (`norm`, 0.75‖h‖), which on Gemma 3
# (‖h‖ ≈ 2000 against a W_out output of ≈ 3) bounds nothing: this stage switches to `fix_ks`.
stage clamp && for method in "${METHODS[@]}"; do
    for clamp in ${SWEEP_CLAMPS:-1 3}; do
        tag=$method-$BASE_TAG-clamp$clamp
        for lam in $LAMBDAS; do
            f="$OUT/hparams/$tag-lam$lam.json"
            hp "$f" "hparams/${method^^}/$PRESET.json" "layers=[$BASE_LAYERS]" \
                "mom2_update_weight=$lam" "clamp_ks_factor=$clamp" 'weight_decay_method="fix_ks"'
            run "$tag-lam$lam" "$method" "$f" "$tag"
        done
    done
done
# AlphaEdit's null-space solve (not in the default stages): the eigenvalue threshold of its
# projector (an absolute bound on the eigenvalues of E[k kᵀ], so its meaning depends on the
# model's key scale) and its ridge L2, on the MEMIT residuals of the first layer set (AlphaEdit
# optimizes residuals exactly as MEMIT does). Each report lists the projector's null-space
# dimension under "Solves".
stage nullspace && for l2 in ${SWEEP_L2S:-1 10}; do
    for thr in ${SWEEP_THRESHOLDS:-0.0002 0.002 0.02}; do
        tag=alphaedit-$BASE_TAG-null$thr-l2$l2
        f="$OUT/hparams/$tag.json"
        hp "$f" "hparams/ALPHAEDIT/$PRESET.json" "layers=[$BASE_LAYERS]" \
            "nullspace_threshold=$thr" "L2=$l2"
        run "$tag" alphaedit "$f" "memit-$BASE_TAG"
    done
done
stage gate && for gate in 0.25 1.0; do
    tag=eamet-$BASE_TAG-gate$gate
    for lam in $LAMBDAS; do
        f="$OUT/hparams/$tag-lam$lam.json"
        hp "$f" "hparams/EAMET/$PRESET.json" "layers=[$BASE_LAYERS]" "mom2_update_weight=$lam" \
            "alignment_schedule={\"kind\": \"nll_gated\", \"threshold\": $gate}"
        run "$tag-lam$lam" eamet "$f" "$tag"
    done
done
echo "sweep done: $OUT"
