//! Dequantizers and quantizers against the `gguf` Python package (golden files from
//! `tools/golden_quant.py`): for dequantization, random blocks of every supported type and real
//! blocks from the SmolLM2 model; for quantization, the bytes `gguf.quants.quantize` makes of
//! assorted inputs (module `quantize_golden`).

use eamet_hooks::gguf::GgmlType;
use eamet_hooks::quant::dequantize;
use std::path::PathBuf;

fn golden(name: &str) -> (Vec<u8>, Vec<f32>) {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/golden/quant");
    let blocks = std::fs::read(dir.join(format!("{name}.blocks"))).unwrap();
    let values = std::fs::read(dir.join(format!("{name}.f32")))
        .unwrap()
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect();
    (blocks, values)
}

fn check(name: &str, dtype: GgmlType) {
    let (blocks, want) = golden(name);
    let got = dequantize(name, dtype, &blocks, want.len()).unwrap();
    assert_eq!(got.len(), want.len());
    let scale = want.iter().fold(0f32, |m, v| m.max(v.abs())).max(1e-30);
    for (i, (g, w)) in got.iter().zip(&want).enumerate() {
        assert!(
            (g - w).abs() <= 1e-6 * scale,
            "{name}[{i}] (block {}): got {g}, gguf gives {w}",
            i / dtype.block_layout().0 as usize
        );
    }
}

#[test]
fn q4_0() {
    check("Q4_0", GgmlType::Q4_0);
}
#[test]
fn q4_1() {
    check("Q4_1", GgmlType::Q4_1);
}
#[test]
fn q5_0() {
    check("Q5_0", GgmlType::Q5_0);
}
#[test]
fn q5_1() {
    check("Q5_1", GgmlType::Q5_1);
}
#[test]
fn q8_0() {
    check("Q8_0", GgmlType::Q8_0);
}
#[test]
fn q4_k() {
    check("Q4_K", GgmlType::Q4K);
}
#[test]
fn q5_k() {
    check("Q5_K", GgmlType::Q5K);
}
#[test]
fn q6_k() {
    check("Q6_K", GgmlType::Q6K);
}
#[test]
fn f16() {
    check("F16", GgmlType::F16);
}
#[test]
fn bf16() {
    check("BF16", GgmlType::BF16);
}
#[test]
fn real_smollm2_blocks() {
    check("real_Q4_1", GgmlType::Q4_1);
    check("real_Q8_0", GgmlType::Q8_0);
}

// ---------------------------------------------------------------------------------------------
// Quantization: our bytes against `gguf.quants.quantize` (numpy ports of ggml's
// `quantize_row_*_ref`), golden files in tests/golden/quantize/ from `tools/golden_quant.py`.
//
// The inputs (`input.f32`, labelled per block in `input.labels`) cover normal and weight-sized
// values, heavy tails, outliers, 12 decades of dynamic range in a block, offsets, constant and
// all-zero blocks, exact rounding ties, f16-subnormal scales, f32-subnormal blocks (where
// `1 / d` overflows) and values near the f16 limit; F16 and BF16 also get edge values
// (`*_special.f32`: ties, subnormals, range limits, signed zeros, infinities, NaNs).
//
// Every byte agrees, ties included (numpy does the same f32 operations in the same order), except
// two documented cases where numpy and ggml's C reference differ, neither a rounding tie:
// - Signed zeros. ggml scans a block with `amax < fabsf(v)` from `max = 0.0f` (Q4_0 / Q5_0) and
//   `v < min` from `FLT_MAX` (Q4_1 / Q5_1), so an all-zero block with -0.0 in it gets scale
//   `+0.0 / -8 = -0.0` and the first of the equal zeros as its minimum; numpy's `argmax` / `min`
//   pick another zero. Only the sign bit of a zero f16 field differs; the values decode the
//   same. Exactly the two "signed-zero" blocks: one differs for Q4_0 / Q5_0 (the scale), both
//   for Q4_1 / Q5_1 (the minimum).
// - Signalling NaNs in F16. numpy keeps them signalling (0x7C00 | payload >> 13); x86 F16C, the
//   `half` crate and ggml's portable converter make them quiet. Exactly the two signalling NaNs
//   of `F16_special.f32`.

mod quantize_golden {
    use eamet_hooks::gguf::GgmlType;
    use eamet_hooks::quant::{dequantize, quantize};
    use half::f16;
    use std::path::PathBuf;

    fn read(name: &str) -> Vec<u8> {
        let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/golden/quantize");
        std::fs::read(dir.join(name)).unwrap_or_else(|e| panic!("{name}: {e}"))
    }

    fn f32s(name: &str) -> Vec<f32> {
        read(name)
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect()
    }

    fn input() -> (Vec<f32>, Vec<String>) {
        let x = f32s("input.f32");
        let labels: Vec<String> = String::from_utf8(read("input.labels"))
            .unwrap()
            .lines()
            .map(str::to_string)
            .collect();
        assert_eq!(labels.len() * 32, x.len());
        (x, labels)
    }

    /// Quantize the shared input and compare with gguf-py block by block. Every differing block
    /// must be labelled "signed-zero", differ only in the sign bit of the zero f16 field at byte
    /// `zero_field` (with ours the sign ggml's scan gives) and decode to the same values;
    /// returns the indices of the differing blocks.
    fn check_blocks(dtype: GgmlType, zero_field: usize) -> Vec<usize> {
        let (x, labels) = input();
        let want = read(&format!("{dtype:?}.bin"));
        let got = quantize(dtype, &x).unwrap();
        assert_eq!(got.len(), want.len(), "{dtype:?}");
        let per = got.len() / labels.len();
        let mut differ = Vec::new();
        for (i, (g, w)) in got
            .chunks_exact(per)
            .zip(want.chunks_exact(per))
            .enumerate()
        {
            if g == w {
                continue;
            }
            let ctx = format!(
                "{dtype:?} block {i} ({}): ours {g:02x?}, gguf {w:02x?}",
                labels[i]
            );
            assert_eq!(labels[i], "signed-zero", "{ctx}");
            let field = |b: &[u8]| u16::from_le_bytes([b[zero_field], b[zero_field + 1]]);
            assert_eq!(field(g) & 0x7FFF, 0, "{ctx}");
            assert_eq!(field(g) ^ field(w), 0x8000, "{ctx}");
            let (mut g2, mut w2) = (g.to_vec(), w.to_vec());
            g2[zero_field + 1] &= 0x7F;
            w2[zero_field + 1] &= 0x7F;
            assert_eq!(g2, w2, "{ctx}");
            let dg = dequantize("g", dtype, g, 32).unwrap();
            let dw = dequantize("w", dtype, w, 32).unwrap();
            assert_eq!(dg, dw, "{ctx}");
            // Ours is what ggml's scan gives.
            let first_negative = x[32 * i].is_sign_negative();
            let ours_negative = field(g) == 0x8000;
            match dtype {
                // scale = (+0.0 initial maximum) / -8 = -0.0, whatever the zeros' signs
                GgmlType::Q4_0 | GgmlType::Q5_0 => assert!(ours_negative, "{ctx}"),
                // minimum = the first of the equal zeros
                _ => assert_eq!(ours_negative, first_negative, "{ctx}"),
            }
            differ.push(i);
        }
        differ
    }

    fn signed_zero_blocks() -> Vec<usize> {
        let (_, labels) = input();
        let b: Vec<usize> = (0..labels.len())
            .filter(|&i| labels[i] == "signed-zero")
            .collect();
        assert_eq!(b.len(), 2);
        b
    }

    #[test]
    fn q8_0_bytes_equal_gguf_py() {
        assert_eq!(check_blocks(GgmlType::Q8_0, 0), Vec::<usize>::new());
    }

    #[test]
    fn q4_0_bytes_equal_gguf_py_but_a_signed_zero_scale() {
        // Block [-0.0, 0.0, …]: numpy's maximum is the -0.0, scale -0.0 / -8 = +0.0.
        let z = signed_zero_blocks();
        assert_eq!(check_blocks(GgmlType::Q4_0, 0), vec![z[0]]);
    }

    #[test]
    fn q5_0_bytes_equal_gguf_py_but_a_signed_zero_scale() {
        let z = signed_zero_blocks();
        assert_eq!(check_blocks(GgmlType::Q5_0, 0), vec![z[0]]);
    }

    #[test]
    fn q4_1_bytes_equal_gguf_py_but_signed_zero_minimums() {
        assert_eq!(check_blocks(GgmlType::Q4_1, 2), signed_zero_blocks());
    }

    #[test]
    fn q5_1_bytes_equal_gguf_py_but_signed_zero_minimums() {
        assert_eq!(check_blocks(GgmlType::Q5_1, 2), signed_zero_blocks());
    }

    #[test]
    fn f16_bf16_f32_of_the_block_inputs_equal_gguf_py() {
        assert_eq!(check_blocks(GgmlType::F16, 0), Vec::<usize>::new());
        assert_eq!(check_blocks(GgmlType::BF16, 0), Vec::<usize>::new());
        let (x, _) = input();
        assert_eq!(quantize(GgmlType::F32, &x).unwrap(), read("input.f32"));
    }

    #[test]
    fn bf16_edge_values_equal_gguf_py() {
        let x = f32s("BF16_special.f32");
        assert_eq!(
            quantize(GgmlType::BF16, &x).unwrap(),
            read("BF16_special.bin")
        );
    }

    #[test]
    fn f16_edge_values_equal_gguf_py_but_signalling_nans() {
        let x = f32s("F16_special.f32");
        let want = read("F16_special.bin");
        let got = quantize(GgmlType::F16, &x).unwrap();
        let mut differ = 0;
        for (i, (g, w)) in got.chunks_exact(2).zip(want.chunks_exact(2)).enumerate() {
            if g == w {
                continue;
            }
            let (g, w) = (
                u16::from_le_bytes([g[0], g[1]]),
                u16::from_le_bytes([w[0], w[1]]),
            );
            let bits = x[i].to_bits();
            let ctx = format!("F16 value {i} ({bits:#010x}): ours {g:#06x}, gguf {w:#06x}");
            assert!(
                x[i].is_nan() && bits & 0x0040_0000 == 0,
                "not a signalling NaN: {ctx}"
            );
            assert!(
                f16::from_bits(g).is_nan() && f16::from_bits(w).is_nan(),
                "{ctx}"
            );
            // Ours: quiet, with the top 10 payload bits; numpy's: still signalling.
            let quiet =
                ((bits >> 16) & 0x8000) as u16 | 0x7E00 | ((bits & 0x007F_FFFF) >> 13) as u16;
            assert_eq!(g, quiet, "{ctx}");
            assert_eq!(w & 0x0200, 0, "{ctx}");
            differ += 1;
        }
        assert_eq!(differ, 2);
    }
}
