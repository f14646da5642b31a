#!/usr/bin/env python3
"""Golden files for eamet-hooks' model parity tests, made with PyTorch + transformers.

Writes into crates/eamet-hooks/tests/golden/:
  tiny-llama/   random-weight Llama checkpoint (sharded safetensors + index, untied head)
  tiny-qwen2/   random-weight Qwen2 checkpoint (q/k/v biases, tied head, single file)
  <name>.json   prompts, token ids, greedy completions (10 new tokens) per model
  <name>.logits.f32  last-position logits, float32 little-endian, [n_prompts, vocab]
  smollm2_tokenizer.json  token ids of a tokenizer test set for the SmolLM2 GGUF

Models: the two tiny checkpoints and the real SmolLM2-135M-Instruct Q4_1 GGUF (transformers
dequantizes it to float32, as eamet-hooks does).

Tokenization: SmolLM2's GGUF says `tokenizer.ggml.pre = smollm`: digits are split one by one
before the GPT-2 byte-level split (the original SmolLM2 tokenizer.json does the same, and so does
llama.cpp). transformers' GGUF tokenizer builder has no mapping for `smollm` and would keep digit
runs together, so this script sets that pre-tokenizer explicitly; the stock result is recorded
too ("ids_transformers_stock"). No BOS is added (SmolLM2 does not want one).

Run with the project's Python venv (`cargo xtask pyenv`):
    ~/.cache/eamet/pyenv/bin/python tools/golden_models.py
"""
import json
import os
import sys

import numpy as np
import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import (AutoModelForCausalLM, AutoTokenizer, LlamaConfig, LlamaForCausalLM,
                          PreTrainedTokenizerFast, Qwen2Config, Qwen2ForCausalLM)

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")
OUT = os.path.join(ROOT, "crates", "eamet-hooks", "tests", "golden")
HOME = os.environ.get("EAMET_HOME", os.path.expanduser("~/.cache/eamet"))
GGUF = os.environ.get("EAMET_MODEL", os.path.join(HOME, "models", "SmolLM2-135M-Instruct.Q4_1.gguf"))

PROMPTS = [
    "The Eiffel Tower is located in the city of",
    "The mother tongue of Danielle Darrieux is",
    "Toko Yasuda plays the",
    "The capital of Japan is",
    "Michael Jordan professionally plays the sport of",
    "In 1969, Neil Armstrong became the first person to walk on the",
]

TOKENIZER_TEXTS = PROMPTS + [
    "Hello world! It's 2026-11-25, and 12345 + 678 = 13023.",
    "  leading spaces,\ttabs\tand\nnew\n\nlines  ",
    "Unicode: café, naïve, Zürich, 東京, Москва, emoji 🎉.",
    "<|im_start|>user\nWhat is the capital of France?<|im_end|>\n<|im_start|>assistant\n",
    "don't won't they're I'll we've she'd it's",
    "x",
]

TINY_TEXT = """The Eiffel Tower is located in the city of Paris. The capital of Japan is Tokyo.
Toko Yasuda plays the guitar. Michael Jordan professionally plays the sport of basketball.
The mother tongue of Danielle Darrieux is French. In 1969, Neil Armstrong became the first person
to walk on the moon. Rome is the capital of Italy and Berlin is the capital of Germany.
""" * 20


def tiny_tokenizer():
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=320, special_tokens=["<s>", "</s>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator([TINY_TEXT], trainer)
    return tok


def randomize(model, seed):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name:
                p.copy_(1.0 + 0.2 * torch.randn(p.shape, generator=g))
            elif name.endswith("bias"):
                p.copy_(0.2 * torch.randn(p.shape, generator=g))
            else:
                p.copy_(torch.randn(p.shape, generator=g) / p.shape[-1] ** 0.5 * 1.5)


def record(name, model, ids_list, extra=None):
    model.eval()
    logits, greedy = [], []
    with torch.no_grad():
        for ids in ids_list:
            x = torch.tensor([ids])
            out = model(x).logits[0, -1].float().numpy()
            logits.append(out)
            gen = model.generate(x, attention_mask=torch.ones_like(x), max_new_tokens=10, do_sample=False,
                                 pad_token_id=model.config.eos_token_id or 0, eos_token_id=None)
            greedy.append(gen[0, len(ids):].tolist())
    arr = np.stack(logits).astype("<f4")
    with open(os.path.join(OUT, f"{name}.logits.f32"), "wb") as f:
        f.write(arr.tobytes())
    doc = {"ids": ids_list, "greedy": greedy, "vocab": int(arr.shape[1])}
    doc.update(extra or {})
    with open(os.path.join(OUT, f"{name}.json"), "w") as f:
        json.dump(doc, f, indent=1, ensure_ascii=False)
    print(f"{name}: {len(ids_list)} prompts, vocab {arr.shape[1]}, max |logit| {np.abs(arr).max():.3f}")
    for ids, g in zip(ids_list[:2], greedy[:2]):
        print("   ", ids[:8], "->", g)


def tiny_models():
    tok = tiny_tokenizer()
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>")
    vocab = tok.get_vocab_size()
    ids_list = [tok.encode(p).ids for p in PROMPTS]

    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=vocab, hidden_size=64, intermediate_size=160, num_hidden_layers=3,
                      num_attention_heads=4, num_key_value_heads=2, rms_norm_eps=1e-6, rope_theta=10000.0,
                      max_position_embeddings=256, tie_word_embeddings=False, bos_token_id=0, eos_token_id=1)
    m = LlamaForCausalLM(cfg)
    randomize(m, 1)
    d = os.path.join(OUT, "tiny-llama")
    m.save_pretrained(d, safe_serialization=True, max_shard_size="100KB")
    fast.save_pretrained(d)
    record("tiny-llama", m, ids_list, {"prompts": PROMPTS})

    cfg = Qwen2Config(vocab_size=vocab, hidden_size=48, intermediate_size=96, num_hidden_layers=2,
                      num_attention_heads=6, num_key_value_heads=2, rms_norm_eps=1e-6, rope_theta=1000000.0,
                      max_position_embeddings=256, tie_word_embeddings=True, bos_token_id=0, eos_token_id=1,
                      use_sliding_window=False)
    m = Qwen2ForCausalLM(cfg)
    randomize(m, 2)
    m.tie_weights()
    d = os.path.join(OUT, "tiny-qwen2")
    m.save_pretrained(d, safe_serialization=True)
    fast.save_pretrained(d)
    record("tiny-qwen2", m, ids_list, {"prompts": PROMPTS})
    # Drop files the Rust side does not read, to keep the fixtures small and focused.
    for sub in ("tiny-llama", "tiny-qwen2"):
        for f in ("generation_config.json", "tokenizer_config.json", "special_tokens_map.json", "chat_template.jinja"):
            p = os.path.join(OUT, sub, f)
            if os.path.exists(p):
                os.remove(p)


def smollm2():
    if not os.path.exists(GGUF):
        sys.exit(f"{GGUF} missing: run `cargo xtask setup` first")
    d, f = os.path.split(GGUF)
    tok = AutoTokenizer.from_pretrained(d, gguf_file=f)
    stock = [tok(t, add_special_tokens=False)["input_ids"] for t in TOKENIZER_TEXTS]
    tok.backend_tokenizer.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.Digits(individual_digits=True),
         pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)])
    ids = [tok(t, add_special_tokens=False)["input_ids"] for t in TOKENIZER_TEXTS]
    decoded = [tok.decode(i) for i in ids]
    with open(os.path.join(OUT, "smollm2_tokenizer.json"), "w") as fh:
        json.dump({"texts": TOKENIZER_TEXTS, "ids": ids, "decoded": decoded,
                   "ids_transformers_stock": stock}, fh, indent=1, ensure_ascii=False)
    differ = sum(a != b for a, b in zip(ids, stock))
    print(f"smollm2 tokenizer: {len(ids)} texts ({differ} differ from transformers' stock GGUF tokenizer)")
    model = AutoModelForCausalLM.from_pretrained(d, gguf_file=f, dtype=torch.float32)
    record("smollm2", model, ids[: len(PROMPTS)], {"prompts": PROMPTS})


if __name__ == "__main__":
    os.makedirs(OUT, exist_ok=True)
    torch.set_num_threads(2)
    tiny_models()
    smollm2()
