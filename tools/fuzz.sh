#!/usr/bin/env bash
# Fuzzes the readers of untrusted files for a bounded time each (cargo-fuzz, libFuzzer):
#   gguf_reader   GGUF header, metadata, tensor descriptors, hyperparameters, dequantization
#   patch_reader  patch files (safetensors container + eamet metadata)
#
#   tools/fuzz.sh [SECONDS per target, default 60] [TARGET ...]
#
# Needs a nightly toolchain (`rustup toolchain list`); installs cargo-fuzz once (crates.io).
# Seeds: the head of the set-up's SmolLM2 GGUF and a small patch written here. Crashes land in
# fuzz/artifacts/<target>/ and the script exits non-zero. FUZZ_SANITIZER=none|address
# (default none: libtorch, linked for the patch reader, is not instrumented).
set -euo pipefail
cd "$(dirname "$0")/.."
SECS=${1:-60}
shift || true
TARGETS=("$@")
[ ${#TARGETS[@]} -gt 0 ] || TARGETS=(gguf_reader patch_reader)
rustup toolchain list | grep -q '^nightly' || { echo "cargo-fuzz needs a nightly toolchain" >&2; exit 1; }
command -v cargo-fuzz >/dev/null || cargo install cargo-fuzz --version 0.13.1 --locked

# Seeds (idempotent).
mkdir -p fuzz/corpus/gguf_reader fuzz/corpus/patch_reader
MODEL=$(cargo xtask paths 2>/dev/null | awk '$1 == "model" {print $NF; exit}')
if [ -n "${MODEL:-}" ] && [ -f "$MODEL" ] && [ ! -f fuzz/corpus/gguf_reader/smollm2-head ]; then
    head -c 262144 "$MODEL" > fuzz/corpus/gguf_reader/smollm2-head
fi
[ -f fuzz/corpus/patch_reader/seed.safetensors ] || python3 - <<'PY'
import json, struct
d_model, d_ff = 2, 3
data = struct.pack("<6f", 0.5, -1.0, 0.0, 2.0, 0.25, 1.5)
header = {
    "layers.1.delta": {"dtype": "F32", "shape": [d_model, d_ff], "data_offsets": [0, len(data)]},
    "__metadata__": {"format": "eamet-patch", "format_version": "1", "base_sha256": "00" * 32,
                     "arch": "llama", "d_model": str(d_model), "d_ff": str(d_ff), "layers": "1",
                     "orientation": "key_to_residual: W_out[d_model, d_ff] += delta", "method": "eamet"},
}
h = json.dumps(header).encode()
h += b" " * (-len(h) % 8)
open("fuzz/corpus/patch_reader/seed.safetensors", "wb").write(struct.pack("<Q", len(h)) + h + data)
PY

status=0
for t in "${TARGETS[@]}"; do
    echo "== fuzzing $t for ${SECS}s"
    (cd fuzz && cargo +nightly fuzz run --sanitizer "${FUZZ_SANITIZER:-none}" "$t" "corpus/$t" -- \
        -max_total_time="$SECS" -rss_limit_mb=4096 -max_len=1048576) || status=1
done
exit $status
