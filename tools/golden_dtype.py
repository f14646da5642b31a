#!/usr/bin/env python3
"""Golden logits of the tiny Llama and Qwen2 checkpoints loaded by transformers in bfloat16 and
float16, for eamet-hooks' compute-dtype test (`crates/eamet-hooks/tests/dtype.rs`).

Writes crates/eamet-hooks/tests/golden/<name>.<bf16|f16>.logits.f32: the last-position logits of
every golden prompt (`<name>.json` "ids", one prompt at a time, no padding), computed with
`AutoModelForCausalLM.from_pretrained(dir, dtype=..., attn_implementation="sdpa")` and widened to
float32, little-endian, [n_prompts, vocab].

With the set-up's libtorch (LIBTORCH points into the same PyTorch 2.13 wheel this script imports),
eamet-hooks reproduces these bit for bit: the same kernels, and the same casts (LlamaRMSNorm's
f32 normalization then cast back before the weight; rotary tables in f32 cast to the dtype;
logits widened at the end).

Run with the project's Python venv (`cargo xtask pyenv`):
    ~/.cache/eamet/pyenv/bin/python tools/golden_dtype.py
"""
import json
import os

import numpy as np
import torch
from transformers import AutoModelForCausalLM

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")
OUT = os.path.join(ROOT, "crates", "eamet-hooks", "tests", "golden")

torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))
for name in ["tiny-llama", "tiny-qwen2"]:
    ids = json.load(open(os.path.join(OUT, f"{name}.json")))["ids"]
    for short, dtype in [("bf16", torch.bfloat16), ("f16", torch.float16)]:
        m = AutoModelForCausalLM.from_pretrained(
            os.path.join(OUT, name), dtype=dtype, attn_implementation="sdpa")
        m.eval()
        with torch.no_grad():
            rows = [m(torch.tensor([p])).logits[0, -1].float().numpy() for p in ids]
        arr = np.stack(rows).astype("<f4")
        path = os.path.join(OUT, f"{name}.{short}.logits.f32")
        with open(path, "wb") as f:
            f.write(arr.tobytes())
        print(f"{name} {short}: {arr.shape} -> {os.path.relpath(path, ROOT)}")
