#!/usr/bin/env python3
"""A Llama checkpoint with random weights (transformers' initialisation, seed 0) of the shape a
config.json gives, saved in f32 as safetensors beside a copy of the tokenizer.json: for timings
on a machine where the real weights cannot travel.

    python3 tools/gpu/random_model.py <dir with config.json + tokenizer.json> <out dir>
"""
import shutil
import sys
from pathlib import Path

import torch
from transformers import LlamaConfig, LlamaForCausalLM

src, out = Path(sys.argv[1]), Path(sys.argv[2])
torch.manual_seed(0)
cfg = LlamaConfig.from_json_file(src / "config.json")
model = LlamaForCausalLM(cfg).to(torch.float32)
model.save_pretrained(out, safe_serialization=True)
shutil.copy(src / "tokenizer.json", out / "tokenizer.json")
n = sum(p.numel() for p in model.parameters())
print(f"{out}: random {cfg.model_type}, {n / 1e6:.1f} M parameters")
