#!/usr/bin/env bash
# Shows that the libtorch crates' docs build where libtorch cannot be had (docs.rs): a copy of
# the working tree without `.cargo/config.toml` (which points LIBTORCH at the set-up), no
# LIBTORCH / LIBTORCH_LIB in the environment, and each crate's `doc-only` feature (tch's
# declarations only, as `[package.metadata.docs.rs]` asks docs.rs to build).
#
#   tools/docs_without_libtorch.sh [TARGET_DIR]   (default: target/doc-only; first run ~5 min)
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
TARGET=${1:-$ROOT/target/doc-only}
COPY=$(mktemp -d)
trap 'rm -rf "$COPY"' EXIT
git ls-files -z --cached --others --exclude-standard | \
    while IFS= read -r -d '' f; do [ -e "$f" ] && printf '%s\0' "$f"; done | \
    xargs -0 cp --parents -t "$COPY"
rm -f "$COPY/.cargo/config.toml"
cd "$COPY"
[ ! -e .eamet ] || { echo "the copy must not see the libtorch set-up" >&2; exit 1; }
env -u LIBTORCH -u LIBTORCH_LIB -u LIBTORCH_USE_PYTORCH DOCS_RS=1 \
    RUSTDOCFLAGS="-D warnings" CARGO_TARGET_DIR="$TARGET" \
    cargo doc --no-deps --locked \
    -p eamet-hooks -p eamet-optim -p eamet-eval -p eamet \
    --features eamet-hooks/doc-only,eamet-optim/doc-only,eamet-eval/doc-only,eamet/doc-only
for c in eamet_hooks eamet_optim eamet_eval eamet; do
    test -f "$TARGET/doc/$c/index.html" || { echo "no docs for $c" >&2; exit 1; }
done
echo "docs built without libtorch: $TARGET/doc/{eamet_hooks,eamet_optim,eamet_eval,eamet}"
