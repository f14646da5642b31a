#!/usr/bin/env python3
"""Golden file for eamet-eval's teacher-forced metrics, made with PyTorch + transformers on the
real SmolLM2-135M-Instruct Q4_1 GGUF (dequantized to float32, as eamet-hooks does).

For every (prompt, target): prompt ids (no BOS) followed by the ids of " " + target, one forward
pass, the log-probability of each target token given the gold previous tokens, whether each is
the argmax (strict success = all are), and the greedy continuation's first len(target) ids
(strict success must equal "greedy emits exactly the target first").

Writes crates/eamet-eval/tests/golden/metrics_smollm2.json. Run with the project's venv:
    ~/.cache/eamet/pyenv/bin/python tools/golden_metrics.py
"""
import json
import os

import torch
from tokenizers import pre_tokenizers
from transformers import AutoModelForCausalLM, AutoTokenizer

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")
OUT = os.path.join(ROOT, "crates", "eamet-eval", "tests", "golden")
HOME = os.environ.get("EAMET_HOME", os.path.expanduser("~/.cache/eamet"))
GGUF = os.environ.get("EAMET_MODEL", os.path.join(HOME, "models", "SmolLM2-135M-Instruct.Q4_1.gguf"))

CASES = [
    ("The Eiffel Tower is located in the city of", "Paris"),
    ("The Eiffel Tower is located in the city of", "Rome"),
    ("The capital of Japan is", "Tokyo"),
    ("The capital of Japan is", "Kyoto"),
    ("Michael Jordan professionally plays the sport of", "basketball"),
    ("Michael Jordan professionally plays the sport of", "soccer"),
    ("The mother tongue of Danielle Darrieux is", "French"),
    ("The mother tongue of Danielle Darrieux is", "English"),
    ("In 1969, Neil Armstrong became the first person to walk on the", "moon"),
    ("In 1969, Neil Armstrong became the first person to walk on the", "Moon"),
    ("Toko Yasuda plays the", "guitar"),
    ("The official language of Brazil is", "Portuguese"),
    ("Water is made of hydrogen and", "oxygen"),
    ("The largest planet in the solar system is", "Jupiter"),
    ("Apple was founded by", "Steve Jobs"),
    ("The Great Wall is located in the country of", "People's Republic of China"),
]


def main():
    torch.set_num_threads(2)
    d, f = os.path.split(GGUF)
    tok = AutoTokenizer.from_pretrained(d, gguf_file=f)
    # SmolLM2's GGUF pre-tokenizer (`smollm`): digits one by one, then GPT-2 byte-level.
    tok.backend_tokenizer.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.Digits(individual_digits=True),
         pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)])
    model = AutoModelForCausalLM.from_pretrained(d, gguf_file=f, dtype=torch.float32)
    model.eval()
    out = []
    with torch.no_grad():
        for prompt, target in CASES:
            p = tok(prompt, add_special_tokens=False)["input_ids"]
            t = tok(" " + target, add_special_tokens=False)["input_ids"]
            ids = torch.tensor([p + t[:-1]])
            lp = torch.log_softmax(model(ids).logits[0].float(), -1)
            pos = list(range(len(p) - 1, len(p) - 1 + len(t)))
            token_lp = [lp[q, t[k]].item() for k, q in enumerate(pos)]
            argmax = [int(lp[q].argmax()) for q in pos]
            gen = model.generate(torch.tensor([p]), max_new_tokens=len(t), do_sample=False,
                                 pad_token_id=tok.eos_token_id or 0)[0, len(p):].tolist()
            out.append({"prompt": prompt, "target": target, "prompt_ids": p, "target_ids": t,
                        "token_logprobs": token_lp, "argmax": argmax,
                        "exact": argmax == t, "greedy": gen})
    os.makedirs(OUT, exist_ok=True)
    with open(os.path.join(OUT, "metrics_smollm2.json"), "w") as fh:
        json.dump({"model": os.path.basename(GGUF), "torch": torch.__version__, "cases": out}, fh,
                  indent=1)
    print(f"{len(out)} cases, {sum(c['exact'] for c in out)} exact")


if __name__ == "__main__":
    main()
