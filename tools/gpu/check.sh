#!/usr/bin/env bash
# The GPU checks of issue 14, run from the repository root on a machine with an NVIDIA GPU and
# PyTorch (the `device` tool's machine), with the bundle of tools/gpu/bundle.sh in .gpu/:
#
#   tools/gpu/check.sh          # results under $OUT (default /tmp/gpu-out)
#
# 1. the parity and end-to-end tests (tiny Llama / Qwen2 / GPT-2 / GPT-J checkpoints against
#    transformers' golden logits; the optimizer on tiny Llama; MEMIT through the Editor on tiny
#    GPT-2 / GPT-J) with EAMET_TEST_DEVICE=cuda;
# 2. timings (dtype_bench) on a SmolLM2-shaped model with random weights, on the GPU in f32, bf16
#    and f16 and on the machine's CPU in f32;
# 3. `eamet edit` of the bundled demo facts on that model with --device cuda, then on the CPU;
#    then MEMIT, and EAMET in bf16, on the GPU.
# GPU_CHECK_DRY=1 runs it all on the CPU, shortened (to try the script where no GPU is); then
# TORCH_LIB (the bundle's libtorch version's lib/) and PYTHON (one with torch and transformers)
# stand in for the machine's PyTorch.
set -uo pipefail
OUT=${OUT:-/tmp/gpu-out}
mkdir -p "$OUT"
DEV=cuda
[ -n "${GPU_CHECK_DRY:-}" ] && DEV=cpu
B=/tmp/eamet-gpu
rm -rf "$B" && mkdir -p "$B" && tar -C "$B" -xJf .gpu/bundle.tar.xz || exit 1
PY=${PYTHON:-python3}
TL=${TORCH_LIB:-$($PY -c 'import os, torch; print(os.path.join(os.path.dirname(torch.__file__), "lib"))')}
[ -n "$TL" ] || { echo "no PyTorch found ($PY): set TORCH_LIB" >&2; exit 1; }
export LD_LIBRARY_PATH=$TL:$B/lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}
# Test executables find their golden files by the absolute path they were built at.
built=$(cat "$B/root")
if [ "$built" != "$PWD" ]; then
    if [ -e "$built" ] && [ ! -L "$built" ]; then
        echo "warning: $built exists and is not a link here: the tests read their golden files from it" >&2
    else
        mkdir -p "$(dirname "$built")" && ln -sfn "$PWD" "$built"
    fi
fi
export EAMET_HOME=/tmp/eamet-home EAMET_DATA_DIR=/tmp/no-data
# A machine still warm from an earlier call keeps /tmp: start clean (caches would skew timings).
rm -rf "$EAMET_HOME" /tmp/run-cuda /tmp/run-cpu /tmp/edit-cuda.safetensors /tmp/edit-cpu.safetensors
mkdir -p "$EAMET_HOME"
failed=0
{
    date -u
    nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv 2>&1
    $PY -c 'import torch; print("torch", torch.__version__, "cuda", torch.cuda.is_available())'
    echo "cpus $(nproc)"; grep -m1 "model name" /proc/cpuinfo
} 2>&1 | tee "$OUT/machine.txt"

step() { echo; echo "== $(date -u +%T) $*"; }
{
    for t in parity gpt tiny edit_tiny_gpt; do
        step "test $t on $DEV"
        EAMET_TEST_DEVICE=$DEV timeout 300 "$B/tests/$t" --test-threads=1 --skip smollm2
        echo "exit $?"
    done
} 2>&1 | tee "$OUT/tests.log"
grep -q '^exit [^0]' "$OUT/tests.log" && failed=1

{
    step "random SmolLM2-shaped model"
    $PY tools/gpu/random_model.py "$B/smollm2" /tmp/smolrand
    step "eamet info on $DEV"
    timeout 120 "$B/bin/eamet" info --model /tmp/smolrand --device "$DEV" --prompt "The capital of France is"
    step "dtype_bench on $DEV"
    if [ "$DEV" = cpu ]; then export BENCH_REPS=1 BENCH_DTYPES=f32; fi
    BENCH_MODEL=/tmp/smolrand BENCH_REPS=${BENCH_REPS:-9} timeout 240 "$B/bin/dtype_bench" "$DEV"
    if [ "$DEV" != cpu ]; then
        step "dtype_bench on the cpu (f32)"
        BENCH_MODEL=/tmp/smolrand BENCH_REPS=5 BENCH_DTYPES=f32 timeout 180 "$B/bin/dtype_bench" cpu
    fi
} 2>&1 | tee "$OUT/bench.log"

{
    for d in $DEV cpu; do
        step "eamet edit (demo facts, EAMET) on $d"
        limit=300
        [ "$d" = cpu ] && limit=150
        time timeout $limit "$B/bin/eamet" edit --model /tmp/smolrand --device "$d" \
            --facts facts/demo.jsonl --run-dir "/tmp/run-$d" --patch "/tmp/edit-$d.safetensors" \
            2>&1 | grep -v "^\s*$" | tail -60
        [ "$d" = cpu ] && break
    done
    if [ "$DEV" != cpu ]; then
        for extra in "--method memit" "--dtype bf16"; do
            step "eamet edit (demo facts) on $DEV with $extra"
            # shellcheck disable=SC2086
            time timeout 150 "$B/bin/eamet" edit --model /tmp/smolrand --device "$DEV" $extra \
                --facts facts/demo.jsonl 2>&1 | grep -E "^(model|method|edited|final|misal|timings)"
        done
    fi
} 2>&1 | tee "$OUT/edit.log"
grep -q '^edited: ' "$OUT/edit.log" || failed=1
echo "== done $(date -u +%T) (failures: $failed)"
exit "$failed"
