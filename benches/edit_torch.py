#!/usr/bin/env python3
"""PyTorch/transformers baseline for benches/edit.rs: one residual-optimizer step as the
reference code (ROME/MEMIT/EAMET `compute_v`) runs it, on the same model, prompts and threads.

One step = full-model forward of every rewriting prompt of one fact plus its essence prompt
(right-padded, as the reference pads), delta added to the output of block LAYER at each row's
subject-last token through a forward hook, log_softmax over the vocabulary at every position
(as the reference does), NLL of the target tokens + KL of the essence row, backward to delta.
Weights are frozen (requires_grad False): the fastest form of the reference step.

Usage: edit_torch.py MODEL.gguf SPEC.json REPS
SPEC.json: {"layer": L, "rows": [[ids]...], "subject_last": [..], "targets": [ids],
            "essence": [ids], "essence_subject_last": s}
Prints one JSON object with the median step time in seconds.
"""
import json
import os
import sys
import time

import torch
from transformers import AutoModelForCausalLM

path, spec_path, reps = sys.argv[1], sys.argv[2], int(sys.argv[3])
spec = json.load(open(spec_path))
torch.set_num_threads(int(os.environ.get("BENCH_THREADS", "2")))
d, f = os.path.split(path)
model = AutoModelForCausalLM.from_pretrained(d, gguf_file=f, dtype=torch.float32)
model.eval()
for p in model.parameters():
    p.requires_grad_(False)

layer = spec["layer"]
rows = spec["rows"] + [spec["essence"]]
lookup = spec["subject_last"] + [spec["essence_subject_last"]]
n_rewrite = len(spec["rows"])
targets = spec["targets"]
width = max(len(r) for r in rows)
ids = torch.tensor([r + [0] * (width - len(r)) for r in rows])
mask = torch.tensor([[1] * len(r) + [0] * (width - len(r)) for r in rows])
# Each rewriting row is prompt + target[:-1]: its last |targets| positions predict the target.
tgt_pos = [list(range(len(r) - len(targets), len(r))) for r in spec["rows"]]
delta = torch.zeros(model.config.hidden_size, requires_grad=True)
with torch.no_grad():
    init = torch.log_softmax(model(ids[-1:], attention_mask=mask[-1:]).logits, -1)[
        0, spec["essence_subject_last"]
    ]


def hook(module, inp, out):
    hidden = out[0] if isinstance(out, tuple) else out
    add = torch.zeros_like(hidden)
    for r, s in enumerate(lookup):
        add[r, s] = delta
    hidden = hidden + add
    return (hidden,) + tuple(out[1:]) if isinstance(out, tuple) else hidden


handle = model.model.layers[layer].register_forward_hook(hook)
opt = torch.optim.Adam([delta], lr=0.5)


def step():
    opt.zero_grad()
    logits = model(ids, attention_mask=mask).logits
    lp = torch.log_softmax(logits, dim=2)
    nll = 0.0
    for r in range(n_rewrite):
        p = tgt_pos[r]
        nll = nll - lp[r, p, targets].mean()
    nll = nll / n_rewrite
    ess = lp[-1, spec["essence_subject_last"]]
    kl = torch.nn.functional.kl_div(init, ess, log_target=True, reduction="batchmean")
    loss = nll + 0.0625 * kl
    loss.backward()
    opt.step()


step()
step()
ts = []
for _ in range(reps):
    t = time.perf_counter()
    step()
    ts.append(time.perf_counter() - t)
ts.sort()
handle.remove()
print(json.dumps({"step": ts[len(ts) // 2], "rows": len(rows), "width": width,
                  "torch": torch.__version__, "threads": torch.get_num_threads()}))
