#!/usr/bin/env python3
"""Copies evaluation reports into the repository without their per-prompt detail.

    tools/compact_report.py DEST REPORT_DIR...   (each REPORT_DIR holds report.json, report.md)

DEST/<name>/report.json keeps everything `eamet summarize` and tools/paired.py read (run info,
hyperparameters, timings, metric means, drift, per-record metrics) but empties each record's
`prompts` list (prompts, continuations, token log-probabilities), which is ~95% of a report's
size; report.md is copied as is. <name> is the report directory's parent's name when the
directory is called `report` (the sweep's layout OUT/<setting>/report), else its own name.
A report already copied is overwritten only when its source is newer.
"""
import json
import os
import shutil
import sys
import tempfile


def name_of(d):
    d = os.path.normpath(d)
    base = os.path.basename(d)
    return os.path.basename(os.path.dirname(d)) if base == "report" else base


def main():
    if len(sys.argv) < 3:
        sys.exit(__doc__)
    dest = sys.argv[1]
    for src in sys.argv[2:]:
        j = os.path.join(src, "report.json")
        if not os.path.isfile(j):
            print(f"skip {src}: no report.json", file=sys.stderr)
            continue
        out = os.path.join(dest, name_of(src))
        oj = os.path.join(out, "report.json")
        if os.path.exists(oj) and os.path.getmtime(oj) >= os.path.getmtime(j):
            continue
        rep = json.load(open(j))
        for pair in rep.get("records", []):
            for r in pair:
                r["prompts"] = []
        os.makedirs(out, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=out, suffix=".tmp")
        with os.fdopen(fd, "w") as f:
            json.dump(rep, f, separators=(",", ":"))
        os.replace(tmp, oj)
        md = os.path.join(src, "report.md")
        if os.path.isfile(md):
            shutil.copyfile(md, os.path.join(out, "report.md"))
        print(f"{src} -> {out}")


if __name__ == "__main__":
    main()
