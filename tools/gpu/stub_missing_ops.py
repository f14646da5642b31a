#!/usr/bin/env python3
"""Make tch's C wrapper (torch-sys `libtch/`) compile against an older libtorch.

    tools/gpu/stub_missing_ops.py <torch-sys libtch dir> <libtorch dir>

tch 0.26 wraps every op of libtorch 2.13. A GPU machine may carry an older PyTorch (the lent
H200 has 2.11). Compiling the wrapper against that version's headers fails only on the ops that
version lacks or declares differently. This script compiles each wrapper source with
`g++ -fsyntax-only`, finds the wrapper functions holding errors, and replaces their bodies with
a C++ exception ("not in this libtorch"), which tch turns into a Rust error if such an op is
ever called. eamet calls none of them. It repeats until the sources compile (at most 4 rounds
of stubs)
and prints what it stubbed. A run that fails leaves the sources half-stubbed: start again from
a fresh copy (tools/gpu/bundle.sh does).
"""
import re
import subprocess
import sys
from pathlib import Path

libtch, torch = Path(sys.argv[1]), Path(sys.argv[2])
flags = [
    "g++", "-fsyntax-only", "-std=c++17", "-D_GLIBCXX_USE_CXX11_ABI=1", "-w",
    f"-I{torch / 'include'}", f"-I{torch / 'include/torch/csrc/api/include'}",
]
# A wrapper function's first line: `void atg_abs(tensor *out__, tensor self) {` (the prefixes
# in use: at_, atg_, ato_, ats_, atc_, atm_, ati_).
FUNC = re.compile(r"^[A-Za-z_][\w\s\*]*\bat[a-z]?_\w+\(.*\)\s*\{\s*$")
stubbed = []
for src in ["torch_api_generated.cpp", "torch_api.cpp"]:
    path = libtch / src
    for round_ in range(5):
        r = subprocess.run(flags + [str(path)], capture_output=True, text=True)
        lines_with_errors = sorted({
            int(m.group(1))
            for m in re.finditer(rf"{re.escape(src)}:(\d+):\d+: error", r.stderr)
        })
        if r.returncode == 0:
            break
        if round_ == 4:
            sys.exit(f"{src}: still failing after 4 rounds of stubs:\n{r.stderr[-4000:]}")
        if not lines_with_errors:
            sys.exit(f"{src}: g++ failed outside the wrapper functions:\n{r.stderr[-4000:]}")
        text = path.read_text().split("\n")
        owner = {}  # error line (0-based) -> first line of the function above it
        for ln in lines_with_errors:
            i = ln - 1
            while i >= 0 and not FUNC.match(text[i]):
                i -= 1
            if i < 0:
                sys.exit(f"{src}:{ln}: error outside a wrapper function:\n{r.stderr[-4000:]}")
            owner[ln - 1] = i
        for i in sorted(set(owner.values()), reverse=True):
            if not text[i].startswith("void "):
                sys.exit(f"{src}:{i + 1}: will only stub functions returning void: {text[i]}")
            j = i + 1
            while text[j] != "}":
                j += 1
            if any(not i < e < j for e, k in owner.items() if k == i):
                sys.exit(f"{src}:{i + 1}: an error lies past the end of the function above it")
            name = re.search(r"\b(at\w+)\(", text[i]).group(1)
            stubbed.append(name)
            text[i + 1:j] = [
                f'  PROTECT(throw std::runtime_error("{name}: not in this libtorch (tch wraps a newer one)");)'
            ]
        path.write_text("\n".join(text))
print(f"stubbed {len(stubbed)} wrapper functions: {' '.join(sorted(stubbed))}")
