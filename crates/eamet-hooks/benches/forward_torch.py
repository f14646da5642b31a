#!/usr/bin/env python3
"""PyTorch/transformers baseline for benches/forward.rs (same shapes, same model, same threads).

Prints one JSON object: median seconds of
  full_forward: 16 x 32 tokens, no grad, logits at every position (what a plain HF forward does)
  opt_step:     the rewriting batch of SPEC.json (11 left-padded prompts), delta added to the MLP
                output of layer L at slot s0 via a forward hook, full forward + log_softmax +
                gather of 3 target tokens per prompt, backward to delta (weights frozen), as
                MEMIT-style reference code does each optimizer step.
Usage: forward_torch.py MODEL.gguf LAYER REPS SPEC.json
"""
import json
import os
import sys
import time

import torch
from transformers import AutoModelForCausalLM

path, layer, reps = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
spec = json.load(open(sys.argv[4]))
torch.set_num_threads(int(os.environ.get("BENCH_THREADS", "2")))
d, f = os.path.split(path)
model = AutoModelForCausalLM.from_pretrained(d, gguf_file=f, dtype=torch.float32)
model.eval()
for p in model.parameters():
    p.requires_grad_(False)
g = torch.Generator().manual_seed(0)
vocab = model.config.vocab_size


def median(fn):
    fn()
    fn()
    ts = []
    for _ in range(reps):
        t = time.perf_counter()
        fn()
        ts.append(time.perf_counter() - t)
    ts.sort()
    return ts[len(ts) // 2]


x = torch.randint(0, vocab, (16, 32), generator=g)


def full_forward():
    with torch.no_grad():
        model(x).logits


rows = spec["ids"]
width = max(len(r) for r in rows)
ids = torch.tensor([[0] * (width - len(r)) + r for r in rows])
mask = torch.tensor([[0] * (width - len(r)) + [1] * len(r) for r in rows])
pos = (mask.cumsum(-1) - 1).clamp(min=0)
s0 = spec["s0"]
n = len(rows)
targets = torch.tensor([spec["targets"]] * n)
delta = torch.zeros(model.config.hidden_size, requires_grad=True)


def hook(module, inp, out):
    add = torch.zeros_like(out)
    add[:, s0] = delta
    return out + add


handle = model.model.layers[layer].mlp.register_forward_hook(hook)


def opt_step():
    delta.grad = None
    logits = model(ids, attention_mask=mask, position_ids=pos).logits
    lp = torch.log_softmax(logits[:, -3:], dim=-1)
    loss = -lp.gather(2, targets.unsqueeze(-1)).mean()
    loss.backward()


res = {"full_forward": median(full_forward), "opt_step": median(opt_step),
       "torch": torch.__version__, "threads": torch.get_num_threads()}
handle.remove()
print(json.dumps(res))
