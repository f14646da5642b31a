#!/usr/bin/env python3
"""Golden data for eamet-hooks' Gemma 3 270M parity test (crates/eamet-hooks/tests/gemma3.rs).

Reference: transformers (5.24) loading the Q4_K_M GGUF itself (`gguf_file=`), dequantized to
float32, eager attention, CPU. Writes small files into
crates/eamet-hooks/tests/golden/gemma3/:

  logits.json     per prompt: token ids (BOS included, as the tokenizer returns them), and at a
                  few positions (always the last; for the long prompt also positions around the
                  512-token sliding window) the logsumexp of the logits, the top-32 ids and
                  logits, and 64 more ids drawn with a fixed seed and their logits; greedy
                  completions of 8 tokens (KV cache, `generate`).
  tokenizer.json  ids (with BOS) and decodes (without BOS) of a set of tokenizer texts.

Full logits would be 1 MiB per position (262,144-token vocabulary); the sampled ids keep the
files at a few KB while still checking the whole LM head.

The GGUF is not committed. Path: $EAMET_GEMMA3_GGUF, else
$EAMET_HOME/models/gemma-3-270m-q4_k_m.gguf (EAMET_HOME defaults to ~/.cache/eamet).

Run with the project's Python venv, niced and single-threaded (≈ 3 minutes, ≈ 4 GB RAM):
    OMP_NUM_THREADS=1 nice -n 19 ~/.cache/eamet/pyenv/bin/python tools/golden_gemma3.py
"""
import json
import os
import sys
import time

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")
OUT = os.path.join(ROOT, "crates", "eamet-hooks", "tests", "golden", "gemma3")
HOME = os.environ.get("EAMET_HOME", os.path.expanduser("~/.cache/eamet"))
GGUF = os.environ.get("EAMET_GEMMA3_GGUF") or os.path.join(HOME, "models", "gemma-3-270m-q4_k_m.gguf")

TOP_K = 32
SAMPLED = 64
NEW_TOKENS = 8
SEED = 20261130

# A natural text well over 512 tokens, so that the sliding-window layers (window 512, by token
# position) see fewer keys than the global ones at its end.
LONG = " ".join([
    "The history of the bicycle begins in the early nineteenth century, when inventors in Europe",
    "experimented with two-wheeled machines that riders pushed along with their feet. The German",
    "forester Karl Drais built his running machine in 1817 in Mannheim; it had a wooden frame, iron",
    "tyres and a simple steering bar, and it could cover the distance between two towns faster than",
    "a walking man. In the 1860s French mechanics attached pedals and cranks directly to the front",
    "wheel, producing the velocipede, which was heavy and uncomfortable enough to earn the nickname",
    "boneshaker. Makers soon enlarged the front wheel so that each turn of the pedals carried the",
    "rider further, and the high-wheeler, or penny-farthing, became the fashionable machine of the",
    "1870s. It was fast but dangerous: a rider sat far above the ground, and a stone in the road",
    "could throw him over the handlebars. The safety bicycle of the 1880s solved the problem with",
    "two wheels of equal size, a chain that drove the rear wheel, and a diamond-shaped frame of steel",
    "tubes. John Kemp Starley's Rover of 1885 is usually named as the first successful design of",
    "this kind. Three years later John Boyd Dunlop, a veterinary surgeon in Belfast, fitted his son's",
    "tricycle with air-filled rubber tyres, and the pneumatic tyre made cycling smoother and quicker.",
    "By the 1890s millions of people in Europe and North America owned bicycles. The machine gave",
    "workers a cheap way to travel to factories, let young people court partners in the next village,",
    "and offered women a new freedom of movement that changed fashions in clothing as well as ideas",
    "about independence. Road surfaces improved because cyclists' clubs campaigned for them, and many",
    "techniques first developed for bicycle production, such as ball bearings, precision tubing and",
    "mass manufacture of interchangeable parts, were later taken up by the makers of motor cars and",
    "aeroplanes. The Wright brothers themselves ran a bicycle shop in Dayton, Ohio, before they built",
    "their flying machine. In the twentieth century the bicycle spread across Asia, where it became",
    "the ordinary vehicle of hundreds of millions of people, especially in China and India. Racing",
    "grew into a major sport: the Tour de France was first held in 1903, and its stages through the",
    "Alps and the Pyrenees still draw huge crowds every July. Gears with several sprockets, derailleurs",
    "and lighter frames of aluminium, titanium and carbon fibre followed. After the oil crisis of the",
    "1970s, and again in recent decades, cities such as Amsterdam, Copenhagen and Paris invested in",
    "separate lanes, parking racks and public sharing schemes, and the electric bicycle, with a small",
    "battery and motor that assist the rider, has become one of the best-selling vehicles in the",
    "world. Engineers describe the bicycle as one of the most efficient machines ever made: a person",
    "on a bicycle uses less energy to travel a kilometre than any animal or vehicle of similar mass.",
    "Its basic form has changed little for more than a century, which suggests that the designers of",
    "the 1880s found something close to an optimum. Historians of technology often use the bicycle as",
    "an example of how a simple invention can reshape daily life, city planning, sport and even the",
    "social position of women. Today bicycles are built in many sizes and styles, from folding models",
    "for commuters to mountain bikes with suspension and cargo bikes that carry children and shopping.",
    "The oldest surviving running machine by Karl Drais can be seen in a museum in the city of",
])

PROMPTS = [
    "The Eiffel Tower is located in the city of",
    "The mother tongue of Danielle Darrieux is",
    "Toko Yasuda plays the",
    "The capital of Japan is",
    "Michael Jordan professionally plays the sport of",
    "The capital of France is",
    LONG,
]

TOKENIZER_TEXTS = [
    "The Eiffel Tower is located in the city of",
    "The capital of France is",
    " hello  world",
    "Hello world! It's 2026-11-25, and 12345 + 678 = 13023.",
    "  leading spaces,\ttabs\tand\nnew\n\nlines  ",
    "Unicode: café, naïve, Zürich, 東京, Москва, emoji 🎉.",
    "<start_of_turn>user\nWhat is the capital of France?<end_of_turn>\n<start_of_turn>model\n",
    "don't won't they're I'll we've she'd it's",
    "x",
    "a<b>c</b> <table><tr><td>1</td></tr></table>",
    "\u0000\u0007 control bytes \x7f",
    "𝔘𝔫𝔦𝔠𝔬𝔡𝔢 ⅧⅨ ﬁ",
    "def f(x):\n    return x**2  # comment",
    "<bos>literal bos<eos>",
    "<unused0> <mask> [multimodal] <start_of_image>",
    "   ",
]


def position_record(logits_row, gen):
    """logsumexp, top-k and seeded sampled ids with their logits at one position."""
    row = logits_row.double()
    lse = float(torch.logsumexp(row, -1))
    top_v, top_i = row.topk(TOP_K)
    ids = torch.randperm(row.shape[0], generator=gen)[:SAMPLED]
    return {
        "logsumexp": lse,
        "top_ids": top_i.tolist(),
        "top_logits": [float(x) for x in top_v.float()],
        "sampled_ids": ids.tolist(),
        "sampled_logits": [float(x) for x in logits_row[ids]],
    }


def main():
    if not os.path.exists(GGUF):
        sys.exit(f"{GGUF} missing (set EAMET_GEMMA3_GGUF)")
    torch.set_num_threads(1)
    os.makedirs(OUT, exist_ok=True)
    d, f = os.path.split(os.path.abspath(GGUF))
    t0 = time.time()
    tok = AutoTokenizer.from_pretrained(d, gguf_file=f)
    print(f"tokenizer in {time.time() - t0:.0f}s", flush=True)

    ids = [tok(t)["input_ids"] for t in TOKENIZER_TEXTS]
    decoded = [tok.decode(i[1:]) for i in ids]
    with open(os.path.join(OUT, "tokenizer.json"), "w") as fh:
        json.dump({"texts": TOKENIZER_TEXTS, "ids": ids, "decoded": decoded}, fh, ensure_ascii=False)
        fh.write("\n")

    t1 = time.time()
    model = AutoModelForCausalLM.from_pretrained(d, gguf_file=f, dtype=torch.float32,
                                                 attn_implementation="eager")
    model.eval()
    c = model.config
    print(f"model in {time.time() - t1:.0f}s: attention {c._attn_implementation}, "
          f"head_dim {c.head_dim}, window {c.sliding_window}, vocab {c.vocab_size}", flush=True)
    assert c._attn_implementation == "eager"

    gen = torch.Generator().manual_seed(SEED)
    records = []
    with torch.no_grad():
        for p in PROMPTS:
            x = tok(p, return_tensors="pt")["input_ids"]
            n = x.shape[1]
            assert x[0, 0].item() == tok.bos_token_id == 2
            logits = model(x).logits[0]
            positions = [n - 1]
            if n > 512:
                positions = sorted({510, 511, 512, 513, 600, n - 1})
            at = []
            for pos in positions:
                r = position_record(logits[pos], gen)
                r["position"] = pos
                at.append(r)
            g = model.generate(x, attention_mask=torch.ones_like(x), max_new_tokens=NEW_TOKENS,
                               do_sample=False, pad_token_id=0)
            greedy = g[0, n:].tolist()
            records.append({"prompt": p, "ids": x[0].tolist(), "at": at, "greedy": greedy})
            print(f"{n:4d} tokens: top {at[-1]['top_ids'][:3]} -> {greedy} {tok.decode(greedy)!r}",
                  flush=True)
    assert any(len(r["ids"]) > 512 for r in records)
    doc = {
        "source": "transformers %s, torch %s, eager attention, float32" % (
            __import__("transformers").__version__, torch.__version__),
        "gguf_sha256": "a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818",
        "vocab": int(c.vocab_size),
        "prompts": records,
    }
    with open(os.path.join(OUT, "logits.json"), "w") as fh:
        json.dump(doc, fh, ensure_ascii=False)
        fh.write("\n")
    print(f"done in {time.time() - t0:.0f}s")


if __name__ == "__main__":
    main()
