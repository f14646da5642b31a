#!/usr/bin/env python3
"""Loads an exported safetensors directory with transformers (AutoModelForCausalLM,
AutoTokenizer) and greedy-completes each fact's prompt: the check that an edit made by eamet
survives in the Python ecosystem.

    OMP_NUM_THREADS=2 $EAMET_HOME/pyenv/bin/python tools/hf_complete.py DIR [--facts facts/demo.jsonl] [--tokens 8] [--json]
"""
import argparse
import json

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("model_dir")
    ap.add_argument("--facts", default="facts/demo.jsonl")
    ap.add_argument("--tokens", type=int, default=8)
    ap.add_argument("--json", action="store_true")
    a = ap.parse_args()
    tok = AutoTokenizer.from_pretrained(a.model_dir)
    model = AutoModelForCausalLM.from_pretrained(a.model_dir, dtype=torch.float32)
    model.eval()
    facts = [json.loads(l) for l in open(a.facts) if l.strip()]
    rows = []
    for f in facts:
        prompt = f["prompt"].replace("{}", f["subject"])
        ids = tok(prompt, return_tensors="pt").input_ids
        with torch.no_grad():
            out = model.generate(
                ids,
                max_new_tokens=a.tokens,
                do_sample=False,
                pad_token_id=tok.eos_token_id,
            )
        completion = tok.decode(out[0, ids.shape[1]:], skip_special_tokens=True)
        rows.append(
            {
                "prompt": prompt,
                "completion": completion,
                "target_new": f["target_new"],
                "target_true": f.get("target_true"),
                "new": completion.strip().startswith(f["target_new"].strip()),
                "true": bool(f.get("target_true"))
                and completion.strip().startswith(f["target_true"].strip()),
                "prompt_ids": ids[0].tolist(),
            }
        )
    hits = sum(r["new"] for r in rows)
    if a.json:
        print(json.dumps({"rows": rows, "new": hits, "n": len(rows)}, indent=1))
    else:
        print("| prompt | completion | new object |\n|---|---|---|")
        for r in rows:
            c = r["completion"].replace("\n", " ").replace("|", "/")
            print(f"| {r['prompt']} | {c} | {r['target_new']} {'yes' if r['new'] else 'no'} |")
        print(f"{hits}/{len(rows)} start with the new object")


if __name__ == "__main__":
    main()
