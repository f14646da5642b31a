#!/usr/bin/env python3
"""Greedy completions of fact prompts by llama.cpp itself (through llama-cpp-python).

Shows that llama.cpp loads a GGUF file (e.g. one eamet wrote after an edit) and what it says:

    $EAMET_HOME/pyenv/bin/python tools/llama_cpp_complete.py \
        --model X.gguf --facts facts/demo.jsonl [--tokens 8] [--json]

Install llama-cpp-python first with tools/llama_cpp.sh. Each line of the facts file is a JSON
object with subject, prompt ("{}" marks the subject), target_new, target_true and case_id.
For each fact the prompt is filled with the subject (first "{}", as the Rust side does),
tokenized by llama.cpp exactly as eamet tokenizes it (BOS only when the GGUF's
tokenizer.ggml.add_bos_token is true; no special-token parsing), and completed greedily
(temperature 0, top-k 1, no repetition penalty) from the token ids, stopping at an
end-of-generation token. `new` / `true`: the stripped completion starts with target_new /
target_true. llama.cpp's warnings and errors (e.g. about an unknown pre-tokenizer) are collected
and reported, since verbose=False would hide them.
"""

import argparse
import ctypes
import json
import os
import sys

_LOG_CALLBACK = None


def load_facts(path):
    facts = []
    with open(path, encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            line = line.strip()
            if not line:
                continue
            try:
                fact = json.loads(line)
            except json.JSONDecodeError as e:
                sys.exit(f"{path}:{n}: not JSON: {e}")
            missing = [k for k in ("subject", "prompt", "target_new", "target_true") if k not in fact]
            if missing:
                sys.exit(f"{path}:{n}: missing field(s) {', '.join(missing)}")
            if "{}" not in fact["prompt"]:
                sys.exit(f"{path}:{n}: prompt has no {{}} for the subject: {fact['prompt']!r}")
            fact.setdefault("case_id", f"line-{n}")
            facts.append(fact)
    if not facts:
        sys.exit(f"{path}: no facts")
    return facts


def detokenize(llama_cpp, vocab, tokens):
    """Bytes of `tokens`. Llama.detokenize uses a 32-byte buffer per piece and silently garbles a
    longer one (47 SmolLM2 pieces are longer, up to 81 bytes), so size the buffer as llama.cpp asks."""
    out = b""
    size = 256
    buf = ctypes.create_string_buffer(size)
    for tok in tokens:
        n = llama_cpp.llama_token_to_piece(vocab, llama_cpp.llama_token(tok), buf, size, 0, False)
        if n < 0:
            size = -n
            buf = ctypes.create_string_buffer(size)
            n = llama_cpp.llama_token_to_piece(vocab, llama_cpp.llama_token(tok), buf, size, 0, False)
        out += buf.raw[:n]
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", required=True, help="GGUF file")
    ap.add_argument("--facts", required=True, help="JSON lines: subject, prompt, target_new, target_true, case_id")
    ap.add_argument("--tokens", type=int, default=8, help="tokens to generate per prompt (default 8)")
    ap.add_argument("--json", action="store_true", help="print one JSON object instead of text")
    ap.add_argument("--threads", type=int, default=2, help="CPU threads (default 2)")
    ap.add_argument("--n-ctx", type=int, default=256, help="context length (default 256)")
    a = ap.parse_args()
    if a.tokens < 1:
        sys.exit("--tokens must be at least 1")
    if not os.path.isfile(a.model):
        sys.exit(f"no such model file: {a.model}")
    facts = load_facts(a.facts)

    # ggml's CPU backend uses OpenMP; libgomp's default busy-wait makes 2 threads on a loaded
    # 2-core machine 10-20x slower (35-70 s instead of 3 s for the demo). Read when libgomp loads.
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    try:
        import llama_cpp
    except ImportError as e:
        sys.exit(f"cannot import llama_cpp ({e})\nfix: run tools/llama_cpp.sh, then use $EAMET_HOME/pyenv/bin/python")

    # Collect llama.cpp's warnings and errors ourselves, replacing llama-cpp-python's log callback
    # (verbose=False would hide warnings). Levels as in ggml.h of the vendored ggml: 0 NONE,
    # 1 DEBUG, 2 INFO, 3 WARN, 4 ERROR, 5 CONT (continues the previous message). Note that
    # llama-cpp-python 0.3.36's own _logger.py still uses an older numbering (2 WARN, 3 ERROR).
    log = {"messages": [], "last": 0}

    @llama_cpp.llama_log_callback
    def on_log(level, text, _user):
        msg = text.decode("utf-8", errors="replace")
        if level == 5:
            if log["last"] in (3, 4) and log["messages"]:
                log["messages"][-1] += msg
            return
        log["last"] = level
        if level in (3, 4):
            log["messages"].append(msg)

    # Keep the ctypes callback alive as long as llama.cpp may call it (until the process ends).
    global _LOG_CALLBACK
    _LOG_CALLBACK = on_log
    llama_cpp.llama_log_set(on_log, ctypes.c_void_p(0))

    try:
        llm = llama_cpp.Llama(
            model_path=a.model,
            n_ctx=a.n_ctx,
            n_threads=a.threads,
            n_threads_batch=a.threads,
            n_gpu_layers=0,
            seed=0,
            verbose=False,
        )
    except Exception as e:  # llama.cpp's reasons are in its log, not in the exception
        for m in log["messages"]:
            print(f"llama.cpp: {m.rstrip()}", file=sys.stderr)
        sys.exit(f"llama.cpp could not load {a.model}: {e}")

    # BOS exactly as eamet decides it: the GGUF key, false when absent. llama.cpp's own default
    # (llama_vocab_get_add_bos) is reported beside it.
    meta = llm.metadata
    raw = meta.get("tokenizer.ggml.add_bos_token")
    add_bos = str(raw).lower() == "true"
    llama_add_bos = bool(llm._model.add_bos_token())
    vocab = llm._model.vocab

    results = []
    for fact in facts:
        prompt = fact["prompt"].replace("{}", fact["subject"], 1)
        ids = llm.tokenize(prompt.encode("utf-8"), add_bos=add_bos, special=False)
        if len(ids) + a.tokens > a.n_ctx:
            sys.exit(f"{fact['case_id']}: {len(ids)} prompt tokens + {a.tokens} do not fit --n-ctx {a.n_ctx}")
        llm.reset()  # every prompt from an empty cache: results do not depend on the order of facts
        out = []
        for tok in llm.generate(ids, top_k=1, top_p=1.0, min_p=0.0, typical_p=1.0, temp=0.0,
                                repeat_penalty=1.0, frequency_penalty=0.0, presence_penalty=0.0):
            if llama_cpp.llama_vocab_is_eog(vocab, tok):
                break
            out.append(tok)
            if len(out) >= a.tokens:
                break
        completion = detokenize(llama_cpp, vocab, out).decode("utf-8", errors="replace")
        stripped = completion.strip()
        results.append({
            "case_id": fact["case_id"],
            "prompt": prompt,
            "prompt_tokens": ids,
            "completion": completion,
            "completion_tokens": out,
            "target_new": fact["target_new"],
            "target_true": fact["target_true"],
            "new": stripped.startswith(fact["target_new"]),
            "true": stripped.startswith(fact["target_true"]),
        })

    llm.close()
    n = len(results)
    n_new = sum(r["new"] for r in results)
    n_true = sum(r["true"] for r in results)
    summary = f"{n_new}/{n} start with the new object"
    warnings = [m.rstrip("\n") for m in log["messages"]]
    if a.json:
        print(json.dumps({
            "model": a.model,
            "llama_cpp_python": llama_cpp.__version__,
            "system_info": llama_cpp.llama_print_system_info().decode("utf-8", errors="replace").strip(),
            "add_bos": add_bos,
            "gguf_add_bos_token": raw,
            "llama_cpp_default_add_bos": llama_add_bos,
            "pre_tokenizer": meta.get("tokenizer.ggml.pre"),
            "tokens": a.tokens,
            "facts": results,
            "n": n,
            "n_new": n_new,
            "n_true": n_true,
            "summary": summary,
            "llama_cpp_warnings": warnings,
        }, indent=2, ensure_ascii=False))
    else:
        print(f"model {a.model}")
        print(f"llama-cpp-python {llama_cpp.__version__}; add_bos={add_bos} "
              f"(GGUF tokenizer.ggml.add_bos_token={raw}, llama.cpp default {llama_add_bos}); "
              f"pre-tokenizer {meta.get('tokenizer.ggml.pre')}")
        for r in results:
            mark = "NEW " if r["new"] else ("true" if r["true"] else "    ")
            print(f"[{mark}] {r['case_id']}: {r['prompt']}|{r['completion']!r}   "
                  f"(new {r['target_new']!r}, true {r['target_true']!r})")
        print(f"{summary} ({n_true}/{n} with the true object)")
        for w in warnings:
            print(f"llama.cpp: {w}", file=sys.stderr)
    # The fact count and verdicts are the output; the tool itself succeeded.
    return 0


if __name__ == "__main__":
    sys.exit(main())
