#!/usr/bin/env python3
"""Golden files for eamet-hooks' GPT-2 and GPT-J parity tests, made with PyTorch + transformers.

Writes into crates/eamet-hooks/tests/golden/:
  tiny-gpt2/   random-weight GPT-2 checkpoint: 64 wide, 4 heads, 3 layers, 128 learned
               positions, n_inner null (d_ff = 4·64), tied head; weights stored as float16
  tiny-gptj/   random-weight GPT-J checkpoint: 64 wide, 4 heads of 16, rotary_dim 8 (partial
               rotary), n_inner 128, 3 layers, untied LM head with bias; weights stored as bfloat16
  tiny-gpt2.json, tiny-gptj.json   prompts, token ids, greedy completions (10 new tokens)
  tiny-gpt2.logits.f32, tiny-gptj.logits.f32   last-position logits, float32 LE, [6, vocab]
  tiny-gpt2.edited.logits.f32   the same for GPT-2 after a hand-made rank-one update of layer 1's
               mlp.c_proj (u, v and the layer are in tiny-gpt2.json under "rank_one")
  tiny-gpt2.unscaled.logits.f32   the same for GPT-2's weights with scale_attn_weights = false

Every parameter is random, LayerNorm weights and biases included (so that every bias matters).
The checkpoints are saved in 16-bit formats to keep the fixtures small (< 1 MB in all); the
golden outputs are computed in float32 from the rounded weights, which is what eamet-hooks
loads. The tokenizer is a byte-level BPE trained here on a few sentences (as in
golden_models.py), with `<|endoftext|>` (id 0) as BOS, EOS and padding.

Rank-one update: GPT-2's `Conv1D` weight `c_proj.weight` is stored [d_ff, d_model] (input
first), so adding `outer(v, u)` there adds `(v·key)·u` to the MLP output: in eamet-hooks'
key→residual orientation that is `Δ = u vᵀ` ([d_model, d_ff]).

Run with the project's Python venv (`cargo xtask pyenv`):
    ~/.cache/eamet/pyenv/bin/python tools/golden_gpt.py
"""
import copy
import json
import os
import sys

import numpy as np
import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import GPT2Config, GPT2LMHeadModel, GPTJConfig, GPTJForCausalLM

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from golden_models import PROMPTS, TINY_TEXT  # noqa: E402  (the same six prompts)

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")
OUT = os.path.join(ROOT, "crates", "eamet-hooks", "tests", "golden")
EOT = "<|endoftext|>"
RANK_ONE_LAYER = 1


def tokenizer():
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=320, special_tokens=[EOT],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator([TINY_TEXT], trainer)
    return tok


def randomize(model, seed):
    """Random weights of a healthy scale; `Conv1D` (GPT-2) weights are [in, out]."""
    g = torch.Generator().manual_seed(seed)
    conv1d = isinstance(model, GPT2LMHeadModel)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if ".ln_" in name or name.startswith("ln_") or "ln_f" in name:
                if name.endswith("weight"):
                    p.copy_(1.0 + 0.2 * torch.randn(p.shape, generator=g))
                else:
                    p.copy_(0.2 * torch.randn(p.shape, generator=g))
            elif name.endswith("bias"):
                p.copy_(0.2 * torch.randn(p.shape, generator=g))
            else:
                fan_in = p.shape[0] if conv1d and p.dim() == 2 and ".h." in name else p.shape[-1]
                p.copy_(torch.randn(p.shape, generator=g) / fan_in ** 0.5 * 1.5)


def round_to(model, dtype):
    """Round every parameter to `dtype` and back (what the saved checkpoint holds)."""
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(p.to(dtype).float())


def last_logits(model, ids_list):
    with torch.no_grad():
        return np.stack([model(torch.tensor([ids])).logits[0, -1].float().numpy() for ids in ids_list])


def greedy(model, ids_list):
    out, margins = [], []
    with torch.no_grad():
        for ids in ids_list:
            x = torch.tensor([ids])
            gen = model.generate(x, attention_mask=torch.ones_like(x), max_new_tokens=10, do_sample=False,
                                 pad_token_id=0, eos_token_id=None, output_logits=True,
                                 return_dict_in_generate=True)
            out.append(gen.sequences[0, len(ids):].tolist())
            for step in gen.logits:
                top = torch.topk(step[0].float(), 2).values
                margins.append(float(top[0] - top[1]))
    return out, min(margins)


def write_logits(name, arr):
    with open(os.path.join(OUT, name), "wb") as f:
        f.write(arr.astype("<f4").tobytes())


def pick_seed(make, dtype, ids_list, first):
    """The first seed from `first` on whose random model decodes greedily with no near-tie (a
    top-1/top-2 margin under 1e-2 would make the greedy test depend on rounding)."""
    for seed in range(first, first + 50):
        m = make()
        randomize(m, seed)
        round_to(m, dtype)
        m.eval()
        gen, margin = greedy(m, ids_list)
        if margin >= 1e-2:
            return m, seed, gen, margin
        print(f"  seed {seed}: smallest greedy margin {margin:.4f}, trying the next one")
    sys.exit("no seed without near-ties")


def save(make, name, tok, dtype, ids_list, first_seed):
    m, seed, gen, margin = pick_seed(make, dtype, ids_list, first_seed)
    d = os.path.join(OUT, name)
    os.makedirs(d, exist_ok=True)
    # A 16-bit copy is saved; `m` keeps float32 parameters (already rounded) and buffers (GPT-J's
    # sin/cos table would be rounded too by a round trip through the 16-bit type).
    copy.deepcopy(m).to(dtype).save_pretrained(d, safe_serialization=True)
    tok.save(os.path.join(d, "tokenizer.json"))
    for f in ("generation_config.json", "tokenizer_config.json", "special_tokens_map.json", "chat_template.jinja"):
        p = os.path.join(d, f)
        if os.path.exists(p):
            os.remove(p)
    logits = last_logits(m, ids_list)
    # The checkpoint on disk, loaded in float32, computes the same.
    again = last_logits(type(m).from_pretrained(d, dtype=torch.float32).eval(), ids_list)
    assert np.array_equal(again, logits), np.abs(again - logits).max()
    write_logits(f"{name}.logits.f32", logits)
    doc = {"prompts": PROMPTS, "ids": ids_list, "greedy": gen, "vocab": int(logits.shape[1]), "seed": seed}
    print(f"{name}: seed {seed}, vocab {logits.shape[1]}, max |logit| {np.abs(logits).max():.3f}, "
          f"smallest top-1/top-2 margin in greedy decoding {margin:.4f}")
    for ids, g in zip(ids_list[:2], gen[:2]):
        print("   ", ids[:8], "->", g)
    return m, doc, logits


def gpt2(tok, ids_list):
    cfg = GPT2Config(vocab_size=tok.get_vocab_size(), n_embd=64, n_head=4, n_layer=3, n_positions=128,
                     n_inner=None, activation_function="gelu_new", layer_norm_epsilon=1e-5,
                     tie_word_embeddings=True, bos_token_id=0, eos_token_id=0)
    m, doc, base = save(lambda: GPT2LMHeadModel(cfg), "tiny-gpt2", tok, torch.float16, ids_list, 3)
    assert m.lm_head.weight.data_ptr() == m.transformer.wte.weight.data_ptr(), "tied head"
    # The same weights without the 1/sqrt(head_dim) attention scale (scale_attn_weights=False).
    unscaled = GPT2LMHeadModel(GPT2Config(**{**cfg.to_dict(), "scale_attn_weights": False}))
    unscaled.load_state_dict(m.state_dict())
    unscaled.eval()
    raw = last_logits(unscaled, ids_list)
    write_logits("tiny-gpt2.unscaled.logits.f32", raw)
    print(f"tiny-gpt2 with scale_attn_weights=False: max |logit change| {np.abs(raw - base).max():.3f}")
    # The rank-one update, in Conv1D orientation.
    g = torch.Generator().manual_seed(11)
    d_model, d_ff = cfg.n_embd, 4 * cfg.n_embd
    u = torch.randn(d_model, generator=g) * 0.5
    v = torch.randn(d_ff, generator=g) / d_ff ** 0.5
    w = m.transformer.h[RANK_ONE_LAYER].mlp.c_proj.weight
    assert tuple(w.shape) == (d_ff, d_model), w.shape
    with torch.no_grad():
        w += torch.outer(v, u)
    edited = last_logits(m, ids_list)
    write_logits("tiny-gpt2.edited.logits.f32", edited)
    moved = float(np.abs(edited - base).max())
    print(f"tiny-gpt2 rank-one update of layer {RANK_ONE_LAYER}: max |logit change| {moved:.3f}")
    assert moved > 0.1, moved
    doc["rank_one"] = {"layer": RANK_ONE_LAYER, "u": u.tolist(), "v": v.tolist(),
                       "max_logit_change": moved}
    with open(os.path.join(OUT, "tiny-gpt2.json"), "w") as f:
        json.dump(doc, f, indent=1, ensure_ascii=False)


def gptj(tok, ids_list):
    cfg = GPTJConfig(vocab_size=tok.get_vocab_size(), n_embd=64, n_head=4, n_layer=3, n_positions=128,
                     rotary_dim=8, n_inner=128, activation_function="gelu_new", layer_norm_epsilon=1e-5,
                     tie_word_embeddings=False, bos_token_id=0, eos_token_id=0)
    m, doc, _ = save(lambda: GPTJForCausalLM(cfg), "tiny-gptj", tok, torch.bfloat16, ids_list, 100)
    assert m.lm_head.bias is not None
    with open(os.path.join(OUT, "tiny-gptj.json"), "w") as f:
        json.dump(doc, f, indent=1, ensure_ascii=False)


if __name__ == "__main__":
    torch.set_num_threads(2)
    tok = tokenizer()
    ids_list = [tok.encode(p).ids for p in PROMPTS]
    gpt2(tok, ids_list)
    gptj(tok, ids_list)
