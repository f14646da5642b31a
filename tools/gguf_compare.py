#!/usr/bin/env python3
"""Reads an exported GGUF with the `gguf` Python package (independent of our reader) and
compares it with its input: every tensor's name, type, shape and SHA-256, and every metadata
field. Prints one line per differing tensor and a summary; exits 1 if anything other than the
expected edited tensors and `eamet.*` keys differs.

    $EAMET_HOME/pyenv/bin/python tools/gguf_compare.py INPUT.gguf EDITED.gguf [--edited blk.3.ffn_down.weight ...]

Without --edited, the edited tensors are read from the file's `eamet.layers` key.
"""
import argparse
import hashlib
import json
import sys

import gguf


def field_value(f):
    """A metadata field's value as plain Python (strings decoded, arrays as lists)."""
    t = f.types[0] if f.types else None
    if t == gguf.GGUFValueType.STRING:
        return bytes(f.parts[f.data[0]]).decode("utf-8", "replace")
    if t == gguf.GGUFValueType.ARRAY:
        sub = f.types[1] if len(f.types) > 1 else None
        if sub == gguf.GGUFValueType.STRING:
            return [bytes(f.parts[i]).decode("utf-8", "replace") for i in f.data]
        return [one(f.parts[i].tolist()) for i in f.data]
    return one(f.parts[f.data[0]].tolist())


def one(v):
    """numpy hands single values back as one-element lists."""
    return v[0] if isinstance(v, list) and len(v) == 1 else v


def tensors(reader):
    out = {}
    for t in reader.tensors:
        out[t.name] = {
            "type": t.tensor_type.name,
            "shape": [int(x) for x in t.shape],
            "sha256": hashlib.sha256(bytes(t.data.tobytes())).hexdigest(),
        }
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("input")
    ap.add_argument("edited")
    ap.add_argument("--edited", dest="names", nargs="*", default=None)
    ap.add_argument("--json", action="store_true")
    a = ap.parse_args()
    src, dst = gguf.GGUFReader(a.input), gguf.GGUFReader(a.edited)
    ts, td = tensors(src), tensors(dst)
    meta_src = {k: field_value(f) for k, f in src.fields.items() if not k.startswith("GGUF.")}
    meta_dst = {k: field_value(f) for k, f in dst.fields.items() if not k.startswith("GGUF.")}
    names = a.names
    if names is None:
        names = [f"blk.{l}.ffn_down.weight" for l in meta_dst.get("eamet.layers", [])]
    problems = []
    if list(ts) != list(td):
        problems.append("tensor names or order differ")
    same, changed = 0, []
    for n, s in ts.items():
        d = td.get(n)
        if d is None:
            continue
        if d["shape"] != s["shape"]:
            problems.append(f"{n}: shape {s['shape']} -> {d['shape']}")
        if d["sha256"] == s["sha256"] and d["type"] == s["type"]:
            same += 1
        else:
            changed.append(n)
            if n not in names:
                problems.append(f"{n}: changed but not an edited tensor")
    for n in names:
        if n not in changed:
            problems.append(f"{n}: expected to be edited, but identical")
    for k, v in meta_src.items():
        if meta_dst.get(k) != v:
            problems.append(f"metadata {k} differs")
    added = {k: v for k, v in meta_dst.items() if k not in meta_src}
    for k in added:
        if not k.startswith("eamet."):
            problems.append(f"metadata {k} added")
    report = {
        "tensors": len(ts),
        "identical": same,
        "edited": {n: {"from": ts[n]["type"], "to": td[n]["type"]} for n in changed},
        "metadata_identical": sum(1 for k, v in meta_src.items() if meta_dst.get(k) == v),
        "metadata_added": added,
        "problems": problems,
    }
    if a.json:
        print(json.dumps(report, indent=1))
    else:
        print(f"gguf {gguf.__version__ if hasattr(gguf, '__version__') else ''} read both files")
        print(f"tensors: {len(ts)}, byte-identical: {same}, edited: {len(changed)}")
        for n in changed:
            print(f"  {n}: {ts[n]['type']} -> {td[n]['type']}")
        print(f"metadata: {report['metadata_identical']}/{len(meta_src)} input fields identical; added:")
        for k, v in added.items():
            print(f"  {k} = {v}")
        for p in problems:
            print(f"PROBLEM: {p}")
        print("OK" if not problems else f"{len(problems)} problems")
    sys.exit(1 if problems else 0)


if __name__ == "__main__":
    main()
