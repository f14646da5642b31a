#!/usr/bin/env python3
"""Golden files for eamet-hooks' GGML dequantizers, made with the `gguf` Python package.

For every supported block type it writes `<TYPE>.blocks` (raw block bytes) and `<TYPE>.f32`
(the values `gguf.quants.dequantize` gives for them, little-endian float32) into
crates/eamet-hooks/tests/golden/quant/. Blocks are random bytes with sane f16 scale fields,
plus, for the types SmolLM2 stores (Q4_1, Q8_0), real blocks read from the model file.

Run with the project's Python venv (`cargo xtask pyenv`):
    ~/.cache/eamet/pyenv/bin/python tools/golden_quant.py [path/to/SmolLM2-135M-Instruct.Q4_1.gguf]
"""
import os
import sys

import numpy as np
from gguf import GGMLQuantizationType as T
from gguf import GGUFReader
from gguf.quants import dequantize

OUT = os.path.join(os.path.dirname(__file__), "..", "crates", "eamet-hooks", "tests", "golden", "quant")
# (type, block bytes, offsets of f16 scale fields inside a block)
LAYOUT = {
    T.Q4_0: (18, [0]),
    T.Q4_1: (20, [0, 2]),
    T.Q5_0: (22, [0]),
    T.Q5_1: (24, [0, 2]),
    T.Q8_0: (34, [0]),
    T.Q4_K: (144, [0, 2]),
    T.Q5_K: (176, [0, 2]),
    T.Q6_K: (210, [208]),
}
N_BLOCKS = 6


def write(name, blocks: np.ndarray, qtype):
    blocks = np.ascontiguousarray(blocks, dtype=np.uint8)
    values = dequantize(blocks, qtype).astype("<f4").reshape(-1)
    os.makedirs(OUT, exist_ok=True)
    with open(os.path.join(OUT, f"{name}.blocks"), "wb") as f:
        f.write(blocks.tobytes())
    with open(os.path.join(OUT, f"{name}.f32"), "wb") as f:
        f.write(values.tobytes())
    print(f"{name:>12}: {blocks.size:6d} bytes -> {values.size:6d} values, max |x| {np.abs(values).max():.4g}")


def main():
    rng = np.random.default_rng(20261125)
    for qtype, (nbytes, scale_offsets) in LAYOUT.items():
        blocks = rng.integers(0, 256, size=(N_BLOCKS, nbytes), dtype=np.uint8)
        for off in scale_offsets:
            scales = (rng.standard_normal(N_BLOCKS) * 0.05).astype(np.float16)
            blocks[:, off:off + 2] = scales.view(np.uint8).reshape(N_BLOCKS, 2)
        write(qtype.name, blocks, qtype)
    # Plain float types: random finite values.
    f16 = (rng.standard_normal(64) * 3).astype(np.float16)
    write("F16", f16.view(np.uint8).reshape(-1, 2), T.F16)
    bf = (rng.standard_normal(64) * 3).astype(np.float32).view(np.uint32)
    bf16 = (bf >> 16).astype(np.uint16)
    write("BF16", bf16.view(np.uint8).reshape(-1, 2), T.BF16)

    model = sys.argv[1] if len(sys.argv) > 1 else os.path.expanduser(
        "~/.cache/eamet/models/SmolLM2-135M-Instruct.Q4_1.gguf")
    reader = GGUFReader(model)
    seen = set()
    for t in reader.tensors:
        qtype = T(t.tensor_type)
        if qtype in (T.Q4_1, T.Q8_0) and qtype not in seen:
            seen.add(qtype)
            nbytes = LAYOUT[qtype][0]
            raw = np.asarray(t.data).view(np.uint8).reshape(-1)[: 4 * nbytes].reshape(4, nbytes)
            write(f"real_{qtype.name}", raw, qtype)
            print(f"             (first 4 blocks of {t.name})")


if __name__ == "__main__":
    main()
