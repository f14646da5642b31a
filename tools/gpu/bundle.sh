#!/usr/bin/env bash
# Builds what the GPU checks run (tools/gpu/check.sh) for a machine whose PyTorch is another
# version than ours, and packs it into .gpu/ (git-ignored) for the `device` tool to carry.
#
#   tools/gpu/bundle.sh                      # for PyTorch 2.11.0 (cu130), the lent H200's
#   TORCH_VERSION=2.12.0 tools/gpu/bundle.sh
#
# Why: libtorch's CUDA libraries are about 1 GB, far above what may travel (64 MiB). The GPU
# machine has PyTorch (with CUDA) installed, so we link against the same version's libtorch
# here (headers and libraries from its PyPI wheel, cached in $EAMET_HOME/gpu-<version>) and let
# the binaries load the machine's own copy at run time (LD_LIBRARY_PATH). tch 0.26 wraps libtorch
# 2.13; tools/gpu/stub_missing_ops.py makes its C wrapper compile against the older headers.
# The build uses its own target directory and leaves Cargo.lock as it was.
#
# Packs (xz): the `eamet` CLI, the dtype_bench example, the test executables of the checks that
# take EAMET_TEST_DEVICE (parity, gpt, tiny, edit_tiny_gpt), OpenBLAS with its Fortran
# run-time, SmolLM2's config and tokenizer (tools/gpu/random_model.py builds a model of that
# shape with random weights there: the real GGUF is 98 MB).
#
# Needs: `cargo xtask setup` (SmolLM2) and `cargo xtask pyenv` (transformers, for the config and
# tokenizer), tch's sources in the cargo registry (any earlier build fetched them), pip.
set -euo pipefail
cd "$(dirname "$0")/../.."
ROOT=$PWD
TV=${TORCH_VERSION:-2.11.0}
HOME_DIR=${EAMET_HOME:-$HOME/.cache/eamet}
W=$HOME_DIR/gpu-$TV
OUTB=$ROOT/.gpu
mkdir -p "$W" "$OUTB"

if [ ! -f "$W/torch/lib/libtorch_cuda.so" ]; then
    echo "== libtorch $TV from PyPI's torch wheel (headers and libraries, for linking)"
    python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 \
        --implementation cp --platform manylinux_2_28_x86_64 -d "$W" "torch==$TV"
    (cd "$W" && unzip -q -o torch-"$TV"-*.whl 'torch/include/*' 'torch/lib/*' 'torch/version.py' \
        && rm -f torch-"$TV"-*.whl)
fi
grep __version__ "$W/torch/version.py"

if [ ! -f "$W/torch-sys/.stubbed" ]; then
    echo "== torch-sys 0.26 for libtorch $TV"
    src=$(ls -d "${CARGO_HOME:-$HOME/.cargo}"/registry/src/*/torch-sys-0.26.0 | head -1)
    rm -rf "$W/torch-sys" && cp -r "$src" "$W/torch-sys"
    python3 tools/gpu/stub_missing_ops.py "$W/torch-sys/libtch" "$W/torch" > "$W/stub.log"
    cat "$W/stub.log" && mv "$W/stub.log" "$W/torch-sys/.stubbed"
fi

echo "== build (release, CUDA linked) into $W/target"
# The patch entry rewrites Cargo.lock for the build; it is put back from git afterwards.
git diff --quiet -- Cargo.lock || { echo "Cargo.lock has uncommitted changes: commit them first" >&2; exit 1; }
trap 'git -C "$ROOT" checkout -- Cargo.lock' EXIT
export LIBTORCH=$W/torch LIBTORCH_BYPASS_VERSION_CHECK=1 EAMET_CUDA=1 CARGO_TARGET_DIR=$W/target
patch=(--config "patch.crates-io.torch-sys.path=\"$W/torch-sys\"")
cargo build --release "${patch[@]}" -p eamet-cli --bin eamet
cargo build --release "${patch[@]}" -p eamet-hooks --example dtype_bench
cargo test --release --no-run "${patch[@]}" -p eamet-hooks -p eamet-optim -p eamet \
    --test parity --test gpt --test tiny --test edit_tiny_gpt --message-format=json-render-diagnostics \
    | python3 -c '
import json, sys
for line in sys.stdin:
    m = json.loads(line)
    if m.get("reason") == "compiler-artifact" and m.get("executable") and m["target"]["kind"] == ["test"]:
        print(m["target"]["name"], m["executable"])
' > "$W/tests.txt"
cat "$W/tests.txt"

echo "== pack"
S=$W/stage
rm -rf "$S" && mkdir -p "$S/bin" "$S/tests" "$S/lib"
cp "$W/target/release/eamet" "$W/target/release/examples/dtype_bench" "$S/bin/"
while read -r name exe; do cp "$exe" "$S/tests/$name"; done < "$W/tests.txt"
strip "$S"/bin/* "$S"/tests/*
for l in libopenblas.so.0 libgfortran.so.5 libquadmath.so.0; do
    cp -L "/lib/x86_64-linux-gnu/$l" "$S/lib/"
done
"$HOME_DIR/pyenv/bin/python" tools/gpu/smollm2_shape.py "$S/smollm2"
echo "$ROOT" > "$S/root"
tar -C "$S" -cJf "$OUTB/bundle.tar.xz" .
ls -la "$OUTB"
