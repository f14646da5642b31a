//! Dequantizers against the `gguf` Python package (golden files from `tools/golden_quant.py`):
//! random blocks of every supported type, and real blocks from the SmolLM2 model.

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
