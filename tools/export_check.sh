#!/usr/bin/env bash
# The evidence of docs/export.md: edit the demo facts on SmolLM2 (EAMET), export the edited model
# as GGUF with every edited-tensor type and as a safetensors directory, then check each export
# with our loader, the Python `gguf` package, llama.cpp (llama-cpp-python, tools/llama_cpp.sh)
# and transformers. Writes everything under OUT (default runs/export); resumable (finished
# steps are skipped).
#
#   tools/export_check.sh [OUT]
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${1:-runs/export}
EAMET=${EAMET:-target/release/eamet}
HOME_DIR=${EAMET_HOME:-${XDG_CACHE_HOME:-$HOME/.cache}/eamet}
PY=${EAMET_PYENV:-$HOME_DIR/pyenv}/bin/python
MODEL=${EAMET_MODEL:-$HOME_DIR/models/SmolLM2-135M-Instruct.Q4_1.gguf}
FACTS=${FACTS:-facts/demo.jsonl}
[ -x "$EAMET" ] || cargo build --release -p eamet-cli
mkdir -p "$OUT"
# Long libtorch / llama.cpp jobs on few cores: no spinning threads.
export OMP_WAIT_POLICY=PASSIVE

if [ ! -f "$OUT/demo.patch.safetensors" ]; then
    "$EAMET" edit --facts "$FACTS" --patch "$OUT/demo.patch.safetensors" | tee "$OUT/edit.txt"
fi
prompts=()
while IFS= read -r p; do prompts+=(--prompt "$p"); done < <(
    "$PY" -c 'import json,sys
for l in open(sys.argv[1]):
    if l.strip():
        f = json.loads(l); print(f["prompt"].replace("{}", f["subject"], 1))' "$FACTS")

score() { # completions JSON on stdin -> "k/n" start with target_new
    "$PY" -c 'import json,sys
rows = json.load(sys.stdin); facts = [json.loads(l) for l in open(sys.argv[1]) if l.strip()]
hits = sum(r["completion"].strip().startswith(f["target_new"].strip()) for r, f in zip(rows, facts))
print(f"{hits}/{len(facts)}")' "$FACTS"
}

for t in f32 f16 q8_0 source; do
    g="$OUT/demo-$t.gguf"
    [ -f "$g" ] || "$EAMET" export --model "$MODEL" --patch "$OUT/demo.patch.safetensors" \
        --out "$g" --edited-type "$t" | tee "$OUT/export-$t.txt"
    "$PY" tools/gguf_compare.py "$MODEL" "$g" > "$OUT/gguf-compare-$t.txt" || {
        cat "$OUT/gguf-compare-$t.txt"; exit 1; }
    "$EAMET" generate --model "$g" "${prompts[@]}" --max-new 8 --json > "$OUT/ours-$t.json"
    "$PY" tools/llama_cpp_complete.py --model "$g" --facts "$FACTS" --tokens 8 --json \
        > "$OUT/llama-cpp-$t.json"
    ours=$(score < "$OUT/ours-$t.json")
    lcpp=$("$PY" -c 'import json,sys; d = json.load(open(sys.argv[1])); print("%d/%d" % (d["n_new"], len(d["facts"])))' "$OUT/llama-cpp-$t.json")
    echo "$t: new object first (greedy, 8 tokens): eamet $ours, llama.cpp $lcpp" | tee -a "$OUT/summary.txt"
done

hf="$OUT/demo-hf"
[ -d "$hf" ] || "$EAMET" export --model "$MODEL" --patch "$OUT/demo.patch.safetensors" --out "$hf"
OMP_NUM_THREADS=2 "$PY" tools/hf_complete.py "$hf" --facts "$FACTS" --tokens 8 | tee "$OUT/transformers-from-gguf.txt"

# A Hugging Face checkpoint written by transformers itself (SmolLM2 from the GGUF, saved in
# bf16), edited by eamet, exported as a directory with the same names and dtypes, and completed
# by transformers.
fixture="$OUT/smollm2-hf-bf16"
if [ ! -d "$fixture" ]; then
    OMP_NUM_THREADS=2 "$PY" - "$MODEL" "$fixture" <<'PYEOF'
import os, sys, torch
from transformers import AutoModelForCausalLM, AutoTokenizer, GgufConfig
gguf, out = sys.argv[1], sys.argv[2]
d, f = os.path.dirname(gguf), os.path.basename(gguf)
tok = AutoTokenizer.from_pretrained(d, gguf_file=f, add_bos_token=False)
model = AutoModelForCausalLM.from_pretrained(
    d, gguf_file=f, dtype=torch.bfloat16, quantization_config=GgufConfig(dequantize=True))
model.save_pretrained(out)
tok.save_pretrained(out)
PYEOF
fi
edited="$OUT/smollm2-hf-bf16-edited"
[ -d "$edited" ] || "$EAMET" edit --model "$fixture" --facts "$FACTS" --out "$edited" | tee "$OUT/edit-hf.txt"
OMP_NUM_THREADS=2 "$PY" tools/hf_complete.py "$edited" --facts "$FACTS" --tokens 8 | tee "$OUT/transformers-from-hf.txt"
