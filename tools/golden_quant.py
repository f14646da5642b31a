#!/usr/bin/env python3
"""Golden files for eamet-hooks' GGML dequantizers and quantizers, made with the `gguf` Python package.

For every supported block type it writes `<TYPE>.blocks` (raw block bytes) and `<TYPE>.f32`
(the values `gguf.quants.dequantize` gives for them, little-endian float32) into
crates/eamet-hooks/tests/golden/quant/. Blocks are random bytes with sane f16 scale fields,
plus, for the types SmolLM2 stores (Q4_1, Q8_0), real blocks read from the model file.

Quantization goldens go to crates/eamet-hooks/tests/golden/quantize/ (see `quantize_goldens`):
`input.f32` (blocks of 32 values of different kinds, one label per block in `input.labels`),
`<TYPE>.bin` (what `gguf.quants.quantize` makes of it, for Q8_0, Q4_0, Q4_1, Q5_0, Q5_1, F16,
BF16), and `<TYPE>_special.f32` / `<TYPE>_special.bin` (edge values for F16 and BF16: rounding
ties, subnormals, range limits, signed zeros, infinities, NaNs). They are independent of the
dequantization goldens (own random generator), so those stay byte-identical.

Run with the project's Python venv (`cargo xtask pyenv`):
    ~/.cache/eamet/pyenv/bin/python tools/golden_quant.py [path/to/SmolLM2-135M-Instruct.Q4_1.gguf]
"""
import os
import sys

import numpy as np
from gguf import GGMLQuantizationType as T
from gguf import GGUFReader
from gguf.quants import dequantize, quantize

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
    quantize_goldens()


QOUT = os.path.join(os.path.dirname(__file__), "..", "crates", "eamet-hooks", "tests", "golden", "quantize")


def quantize_blocks_input(rng):
    """(labels, values[n_blocks, 32] float32): the kinds of blocks quantize is tested on."""
    f32 = np.float32
    blocks, labels = [], []

    def add(label, x):
        x = np.asarray(x, dtype=f32).reshape(-1, 32)
        blocks.append(x)
        labels.extend([label] * x.shape[0])

    add("normal", rng.standard_normal((16, 32)))
    add("weights", rng.standard_normal((16, 32)) * 0.02)
    add("heavy-tails", rng.standard_t(1.5, (12, 32)) * 0.1)
    add("cauchy", rng.standard_cauchy((4, 32)))
    add("outlier", np.where(np.arange(32) == 7, 40.0, rng.standard_normal((4, 32)) * 0.01))
    # Magnitudes over 12 decades within a block.
    add("dynamic-range", rng.standard_normal((8, 32)) * 10.0 ** rng.uniform(-9, 3, (8, 32)))
    add("offset", rng.standard_normal((4, 1)) * 100 + rng.standard_normal((4, 32)) * 0.01)
    add("positive", rng.uniform(0.5, 1.5, (4, 32)))
    add("negative", -rng.uniform(0.5, 1.5, (4, 32)))
    add("constant", np.repeat(np.array([[0.7], [-3.25], [1e-3], [1000.3]]), 32, axis=1))
    add("zero", np.zeros((1, 32)))
    # Zero blocks with -0.0: ggml keeps its initial +0.0 maximum (Q4_0 / Q5_0) and the first of
    # equal minimums (Q4_1 / Q5_1); numpy takes the -0.0 (see tests/quant_golden.rs).
    add("signed-zero", [[-0.0] + [0.0] * 31, [0.0, -0.0] * 16])
    # Exact rounding ties: scales 1 (Q8_0: max 127; Q4_0: m = -8; Q4_1: range 15) and
    # level + 0.5 values.
    t = np.zeros((3, 32))
    t[0, 0] = 127.0
    t[0, 1:] = rng.integers(-126, 126, 31) + 0.5
    t[1, 0] = -8.0
    t[1, 1:] = rng.integers(-8, 7, 31) + 0.5
    t[2, 0], t[2, 1] = 0.0, 15.0
    t[2, 2:] = rng.integers(0, 15, 30) + 0.5
    add("ties", t)
    # f16 scales in the subnormal range, and blocks whose 1 / d overflows f32.
    add("tiny", rng.standard_normal((2, 32)) * 1e-6)
    add("subnormal-f32", rng.standard_normal((2, 32)) * 1e-39)
    # Near the top of what the f16 scale and minimum hold.
    add("large", rng.uniform(-6e4, 6e4, (2, 32)))
    return labels, np.concatenate(blocks).astype(f32)


def f16_special(rng):
    f = np.float32
    ulp_tie = [1 + 2.0 ** -11, 1 + 3 * 2.0 ** -11, 2.0 ** -25, 3 * 2.0 ** -25, 5 * 2.0 ** -25,
               2.0 ** -14 - 2.0 ** -25, 2.0 ** -14 + 2.0 ** -25, 1000 + 2.0 ** -1, 1001 + 2.0 ** -1,
               65504 + 8, 2.0 ** -26, 2.0 ** -26 + 2.0 ** -40]
    near = [1 + 2.0 ** -11 + 2.0 ** -23, 1 + 2.0 ** -11 - 2.0 ** -23, 65519.996, 65504.0, 6.1e-5,
            5.96e-8, 2.98e-8, 2.99e-8, 1e-8, 1e-30, 1.4e-45, 0.1, 1 / 3]
    special = [0.0, -0.0, np.inf, -np.inf, np.nan, -np.nan]
    x = np.array(ulp_tie + [-v for v in ulp_tie] + near + [-v for v in near] + special, dtype=f)
    # NaNs with payloads, the last two signalling (numpy keeps those signalling, ggml does not).
    nans = np.array([0x7FC12345, 0xFFE00001, 0x7F812345, 0xFF800001], dtype=np.uint32).view(f)
    x = np.concatenate([x, nans])
    rand = rng.standard_normal(64) * 10.0 ** rng.uniform(-9, 4.5, 64)
    return np.concatenate([x, rand.astype(f)])


def bf16_special(rng):
    f = np.float32
    bits = np.array([0x3F808000, 0x3F818000, 0x3F808001, 0x3F807FFF, 0x00008000, 0x00018000,
                     0x00000001, 0x007FFFFF, 0x7F7F7FFF, 0x7F7F0000, 0x7F800000, 0xFF800000,
                     0x7FC00000, 0xFFC00000, 0x7F800001, 0xFF812345, 0x7FFFFFFF, 0x7FA00000,
                     0x00000000, 0x80000000], dtype=np.uint32)
    x = np.concatenate([bits.view(f), -bits[:10].view(f)])
    rand = (rng.standard_normal(64) * 10.0 ** rng.uniform(-38, 38, 64)).astype(f)
    return np.concatenate([x, rand])


def quantize_goldens():
    """Inputs and `gguf.quants.quantize` outputs for the types eamet-hooks can write."""
    rng = np.random.default_rng(20261126)
    labels, x = quantize_blocks_input(rng)
    os.makedirs(QOUT, exist_ok=True)
    with open(os.path.join(QOUT, "input.f32"), "wb") as f:
        f.write(x.astype("<f4").tobytes())
    with open(os.path.join(QOUT, "input.labels"), "w") as f:
        f.write("\n".join(labels) + "\n")
    with np.errstate(all="ignore"):  # 1/d overflows for the subnormal-f32 blocks
        for qtype in (T.Q8_0, T.Q4_0, T.Q4_1, T.Q5_0, T.Q5_1, T.F16, T.BF16):
            out = np.ascontiguousarray(quantize(x, qtype)).view(np.uint8)
            with open(os.path.join(QOUT, f"{qtype.name}.bin"), "wb") as f:
                f.write(out.tobytes())
            print(f"{qtype.name:>12}: {x.shape[0]} blocks of 32 -> {out.size:6d} bytes")
        for qtype, special in ((T.F16, f16_special(rng)), (T.BF16, bf16_special(rng))):
            out = np.ascontiguousarray(quantize(special, qtype)).view(np.uint8)
            with open(os.path.join(QOUT, f"{qtype.name}_special.f32"), "wb") as f:
                f.write(special.astype("<f4").tobytes())
            with open(os.path.join(QOUT, f"{qtype.name}_special.bin"), "wb") as f:
                f.write(out.tobytes())
            print(f"{qtype.name + '_special':>12}: {special.size} values -> {out.size:6d} bytes")


if __name__ == "__main__":
    main()
