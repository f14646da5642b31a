#!/usr/bin/env python3
"""Write SmolLM2-135M's config.json and tokenizer.json (read from the set-up's GGUF) into a
directory, for tools/gpu/random_model.py to build a model of the same shape elsewhere.

    $EAMET_HOME/pyenv/bin/python tools/gpu/smollm2_shape.py <out dir>
"""
import os
import sys
from pathlib import Path

from transformers import AutoConfig, AutoTokenizer

home = Path(os.environ.get("EAMET_HOME", Path.home() / ".cache/eamet"))
gguf = home / "models/SmolLM2-135M-Instruct.Q4_1.gguf"
out = Path(sys.argv[1])
out.mkdir(parents=True, exist_ok=True)
cfg = AutoConfig.from_pretrained(gguf.parent, gguf_file=gguf.name)
cfg.architectures = ["LlamaForCausalLM"]
cfg.to_json_file(out / "config.json")
tok = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
tok.save_pretrained(out)
for extra in out.iterdir():
    if extra.name not in ("config.json", "tokenizer.json"):
        extra.unlink()
print(f"{out}: {sorted(p.name for p in out.iterdir())}; {cfg.num_hidden_layers} layers, d {cfg.hidden_size}, vocab {cfg.vocab_size}")
