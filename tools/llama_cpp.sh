#!/usr/bin/env bash
# Install llama-cpp-python (the Python bindings with llama.cpp vendored inside) into the
# project's Python venv, built from its PyPI sdist for the CPU, so that tools/llama_cpp_complete.py
# can show that llama.cpp itself loads and runs the GGUF files eamet writes.
#
#   tools/llama_cpp.sh            install (skips when llama_cpp 0.3.36 already imports)
#   tools/llama_cpp.sh --force    rebuild and reinstall even if present
#
# Idempotent: when `python -c "import llama_cpp; print(llama_cpp.__version__)"` prints the
# pinned version, nothing is done. Otherwise the sdist is fetched with pip into
# $EAMET_HOME/downloads, its SHA-256 is checked against the pinned value (the hash PyPI
# publishes for it), and pip builds it with scikit-build-core, CMake and Ninja from PyPI wheels
# (pinned below, never built from source).
#
# The build is CPU-only and portable: no -march=native (GGML_NATIVE=OFF; on x86-64 that means
# the SSE4.2/AVX/AVX2/FMA/F16C/BMI2 baseline, i.e. x86-64-v3), no BLAS, no GPU backends, no
# multimodal (mtmd) library, no OpenSSL (llama.cpp's HTTPS model downloads), no ccache. It is
# gentle by default: nice 19 and one compile job, about 20-40 minutes on a small machine;
# EAMET_BUILD_JOBS=N and EAMET_NICE=0 make it faster.
#
# Environment (same conventions as `cargo xtask`):
#   EAMET_HOME        cache directory; default ${XDG_CACHE_HOME:-~/.cache}/eamet
#   EAMET_PYENV       the venv to install into; default $EAMET_HOME/pyenv (`cargo xtask pyenv`)
#   EAMET_BUILD_JOBS  parallel compile jobs; default 1
#   EAMET_NICE        nice level of the build; default 19
#   CMAKE_ARGS        appended after the flags below (a later -D wins), e.g. -DGGML_NATIVE=ON
set -euo pipefail

VERSION=0.3.36
SDIST=llama_cpp_python-$VERSION.tar.gz
# SHA-256 of $SDIST as published by PyPI (pip's report: download_info.archive_info), 76,589,250 bytes.
SHA256=832db0699007f1be95a7e41ef12e88926b02ba836461e36a36372db2760c1a2e
# Build requirements (wheels only) and the one runtime dependency the pyenv lacks, pinned.
BUILD_PINS=("scikit-build-core==1.1.2" "cmake==4.4.5" "ninja==1.13.2" "diskcache==5.6.3")
PORTABLE_CMAKE_ARGS="-DGGML_NATIVE=OFF -DGGML_BLAS=OFF -DGGML_CUDA=OFF -DGGML_VULKAN=OFF \
-DGGML_METAL=OFF -DGGML_HIP=OFF -DGGML_SYCL=OFF -DGGML_OPENCL=OFF -DGGML_RPC=OFF \
-DGGML_CCACHE=OFF -DLLAVA_BUILD=OFF -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF \
-DLLAMA_BUILD_TOOLS=OFF -DLLAMA_BUILD_SERVER=OFF -DLLAMA_OPENSSL=OFF"

FORCE=0
case "${1:-}" in
    "") ;;
    --force) FORCE=1 ;;
    -h|--help) sed -n '2,25p' "$0"; exit 0 ;;
    *) echo "usage: $0 [--force]" >&2; exit 2 ;;
esac

say() { echo "[llama-cpp] $*"; }
die() { echo "[llama-cpp] error: $1" >&2; [ -n "${2:-}" ] && echo "fix: $2" >&2; exit 1; }

if [ -n "${EAMET_HOME:-}" ]; then
    HOME_DIR=$EAMET_HOME
else
    BASE=${XDG_CACHE_HOME:-}
    if [ -z "$BASE" ]; then
        [ -n "${HOME:-}" ] || die "neither EAMET_HOME nor HOME is set" "export EAMET_HOME=/some/cache/dir"
        BASE=$HOME/.cache
    fi
    HOME_DIR=$BASE/eamet
fi
case "$HOME_DIR" in /*) ;; *) HOME_DIR=$PWD/$HOME_DIR ;; esac
PYENV=${EAMET_PYENV:-$HOME_DIR/pyenv}
case "$PYENV" in /*) ;; *) PYENV=$PWD/$PYENV ;; esac
PY=$PYENV/bin/python
[ -x "$PY" ] || die "no Python venv at $PYENV" "run \`cargo xtask pyenv\` first (or set EAMET_PYENV to a venv)"

installed() {
    # Run from / so that a llama_cpp directory in the current directory cannot shadow the venv's.
    (cd / && "$PY" -c "import llama_cpp; print(llama_cpp.__version__)" 2>/dev/null) || true
}

have=$(installed)
if [ "$have" = "$VERSION" ] && [ "$FORCE" = 0 ]; then
    say "llama-cpp-python $VERSION present in $PYENV (skipped)"
    exit 0
fi
[ -n "$have" ] && say "found llama-cpp-python $have in $PYENV; installing $VERSION"

sha_of() { "$PY" -c 'import hashlib,sys
h = hashlib.sha256()
with open(sys.argv[1], "rb") as f:
    for b in iter(lambda: f.read(1 << 20), b""): h.update(b)
print(h.hexdigest())' "$1"; }

DL=$HOME_DIR/downloads
mkdir -p "$DL"
FILE=$DL/$SDIST
if [ -f "$FILE" ] && [ "$(sha_of "$FILE")" != "$SHA256" ]; then
    say "$FILE has the wrong SHA-256: fetching again"
    rm -f "$FILE"
fi
# Build deps come from wheels only: an sdist of cmake would take an hour to build. The constraint
# file is inherited by pip's isolated build environment through PIP_CONSTRAINT.
CONSTRAINTS=$(mktemp "${TMPDIR:-/tmp}/eamet-llama-cpp-constraints.XXXXXX")
trap 'rm -f "$CONSTRAINTS"' EXIT
printf '%s\n' "${BUILD_PINS[@]}" > "$CONSTRAINTS"
export PIP_CONSTRAINT=$CONSTRAINTS PIP_ONLY_BINARY=scikit-build-core,cmake,ninja
export PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_INPUT=1
if [ ! -f "$FILE" ]; then
    say "downloading $SDIST (77 MB) with pip"
    # pip prepares the metadata of an sdist it downloads; that needs the build deps (seconds).
    "$PY" -m pip download --quiet --no-deps --no-binary llama-cpp-python -d "$DL" \
        "llama-cpp-python==$VERSION" \
        || die "pip download of llama-cpp-python==$VERSION failed" \
               "check that PyPI is reachable: \`$PY -m pip download --no-deps llama-cpp-python==$VERSION\`"
    [ -f "$FILE" ] || die "pip left no $SDIST in $DL" "report this: the sdist name changed"
fi
got=$(sha_of "$FILE")
if [ "$got" != "$SHA256" ]; then
    rm -f "$FILE"
    die "$SDIST has SHA-256 $got, expected $SHA256" \
        "the file on PyPI changed; verify it and update SHA256 in tools/llama_cpp.sh"
fi
say "$SDIST SHA-256 ok"

JOBS=${EAMET_BUILD_JOBS:-1}
NICE=${EAMET_NICE:-19}
export CMAKE_ARGS="$PORTABLE_CMAKE_ARGS ${CMAKE_ARGS:-}"
export CMAKE_BUILD_PARALLEL_LEVEL=$JOBS MAX_JOBS=$JOBS
export FORCE_CMAKE=1
say "building from source: nice $NICE, $JOBS job(s); CMAKE_ARGS=$CMAKE_ARGS"
start=$(date +%s)
# -v streams the CMake/Ninja output, so a log shows progress ([n/N] lines).
nice -n "$NICE" "$PY" -m pip install -v --no-cache-dir --force-reinstall --no-deps \
    --no-binary llama-cpp-python "$FILE" \
    || die "building llama-cpp-python $VERSION failed" \
           "read the compiler/CMake error above; a C/C++ compiler (gcc, g++) is required"
# Runtime deps (numpy, jinja2, typing-extensions come with the pyenv; diskcache is pinned).
"$PY" -m pip install --quiet "llama-cpp-python==$VERSION" \
    || die "installing the runtime dependencies of llama-cpp-python failed" "check that PyPI is reachable"
have=$(installed)
[ "$have" = "$VERSION" ] || die "after the build, import llama_cpp gives '${have:-an error}'" \
    "run \`$PY -c 'import llama_cpp'\` and read its error"
say "installed llama-cpp-python $VERSION into $PYENV in $(( $(date +%s) - start )) s"
