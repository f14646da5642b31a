//! Properties of `quant::quantize` against `quant::dequantize`:
//!
//! 1. Error bound: `dequantize(quantize(x))` is within half a quantization step of `x`, plus
//!    what storing the step (and Q4_1 / Q5_1's minimum) as f16 moves the levels; Q4_0 / Q5_0
//!    clamp values at the top (positive) end to one step. Derived per format in [`bound`].
//! 2. Idempotence: `quantize(dequantize(b)) == b` for blocks `b` made by `quantize`, where it
//!    holds (derived and tested per format in `idempotent_*`).
//!
//! Plus measured round-trip errors on typical data (`roundtrip_error_stats`, printed with
//! `--nocapture`), and the real SmolLM2 blocks, which re-quantize to the model file's own bytes
//! (the four golden blocks per type, and every Q4_1 / Q8_0 block of the model file).

use eamet_hooks::gguf::GgmlType;
use eamet_hooks::quant::{dequantize, quantize, QuantError};
use half::{bf16, f16};
use proptest::prelude::*;
use std::path::PathBuf;

/// The block formats with their level count `K` (see [`bound`]).
const BLOCK_TYPES: [(GgmlType, f64); 5] = [
    (GgmlType::Q8_0, 127.0),
    (GgmlType::Q4_0, 8.0),
    (GgmlType::Q5_0, 16.0),
    (GgmlType::Q4_1, 15.0),
    (GgmlType::Q5_1, 31.0),
];

/// The most round-to-nearest f16 moves `v` (|v| ≤ 65504): half an ulp, at least half the
/// smallest subnormal 2⁻²⁴.
fn half_ulp_f16(v: f64) -> f64 {
    (v.abs() * 2f64.powi(-11)).max(2f64.powi(-25))
}

/// (exact step `s`, per-value error bound) of one 32-value block, derived from the input alone.
///
/// With `k` the integer level a value gets and `d`, `m` the block's f16 scale and minimum:
/// - Q8_0: `s = max|x| / 127`, value `k·d` with `|k| ≤ 127`:
///   `|x − k·d| ≤ |x − k·s| + |k|·|s − d| ≤ s/2 + 127·δ(s)`.
/// - Q4_0 / Q5_0 (`K` = 8 / 16): `s = −M / K` with `M` the first value of largest magnitude,
///   `t = x / s ∈ [−K, K]`, levels `−K ..= K−1`: `t` rounds half up to `k` (error ≤ s/2),
///   except `t > K − ½` (values of the opposite sign to `M`), clamped to `K − 1` (error
///   `(t − K + 1)·s ≤ s`); plus `K·δ(s)`.
/// - Q4_1 / Q5_1 (`K` = 15 / 31): `s = (max − min) / K`, value `k·d + m` with `0 ≤ k ≤ K`:
///   `≤ s/2 + K·δ(s) + δ(min)`.
///
/// `δ` is [`half_ulp_f16`]. The slack covers the `f32` arithmetic (`x · (1/d)` can cross a
/// rounding boundary by a few ulps, and decoding rounds `k·d + m`).
fn bound(dtype: GgmlType, x: &[f32]) -> (f64, Vec<f64>) {
    let x: Vec<f64> = x.iter().map(|&v| f64::from(v)).collect();
    let amax = x.iter().fold(0f64, |a, v| a.max(v.abs()));
    let (min, max) = x
        .iter()
        .fold((f64::MAX, f64::MIN), |(lo, hi), &v| (lo.min(v), hi.max(v)));
    let k = BLOCK_TYPES.iter().find(|(t, _)| *t == dtype).unwrap().1;
    let slack = |s: f64| 2f64.powi(-20) * (amax + k * s.abs()) + 1e-40;
    match dtype {
        GgmlType::Q8_0 => {
            let s = amax / k;
            let b = 0.5 * s + k * half_ulp_f16(s) + slack(s);
            (s, vec![b; 32])
        }
        GgmlType::Q4_0 | GgmlType::Q5_0 => {
            let big = x
                .iter()
                .copied()
                .fold(0f64, |m, v| if m.abs() < v.abs() { v } else { m });
            let s = -big / k;
            let b = x
                .iter()
                .map(|&v| {
                    let t = if s == 0.0 { 0.0 } else { v / s };
                    let e = if t > k - 0.5 { t - (k - 1.0) } else { 0.5 };
                    e * s.abs() + k * half_ulp_f16(s) + slack(s)
                })
                .collect();
            (s.abs(), b)
        }
        _ => {
            let s = (max - min) / k;
            let b = 0.5 * s + k * half_ulp_f16(s) + half_ulp_f16(min) + slack(s);
            (s, vec![b; 32])
        }
    }
}

/// Check property 1 on whole blocks; returns the largest `|error| / s` seen (over blocks with
/// `s > 0`).
fn check_bound(dtype: GgmlType, x: &[f32]) -> f64 {
    let b = quantize(dtype, x).unwrap();
    let y = dequantize("x", dtype, &b, x.len()).unwrap();
    let mut worst = 0f64;
    for (blk, (xb, yb)) in x.chunks(32).zip(y.chunks(32)).enumerate() {
        let (s, limit) = bound(dtype, xb);
        for (i, ((&a, &q), &l)) in xb.iter().zip(yb).zip(&limit).enumerate() {
            let err = (f64::from(q) - f64::from(a)).abs();
            assert!(
                err <= l,
                "{dtype:?} block {blk} value {i}: {a} -> {q}, error {err:e} > bound {l:e} (step {s:e}); block {xb:?}"
            );
            if s > 0.0 {
                worst = worst.max(err / s);
            }
        }
    }
    worst
}

/// The f16 scale of each block (at byte 0 in every block format).
fn scales(dtype: GgmlType, b: &[u8]) -> Vec<f32> {
    let per = dtype.block_layout().1 as usize;
    b.chunks(per)
        .map(|c| f16::from_le_bytes([c[0], c[1]]).to_f32())
        .collect()
}

/// Property 2 for the block formats, per block of `b = quantize(x)`:
/// - Q8_0, Q4_0, Q5_0: a block decodes to `k·d`, exact in `f32` (8-bit × 11-bit); its largest
///   `|k|` is the top level (127, or −8 / −16 for the first value of largest magnitude), so
///   re-quantizing finds the same `d` exactly and `k·d · (1/d)` rounds back to `k`: idempotent
///   whenever `d ≠ 0`. A block whose f32 scale underflowed f16 (`d = 0` with non-zero
///   levels) decodes to zeros and re-quantizes to the zero block instead.
/// - Q4_1, Q5_1: the same argument needs `k·d + m` exact in `f32`; it is not when the minimum
///   is large against the step (e.g. 1000 ± 0.001, where f32 cannot hold the levels), and then
///   the re-quantized block can differ. Asserted when `d ≠ 0` and every `k·d + m` is exact,
///   up to the sign of a zero minimum: `m = −0.0` decodes its bottom level as `+0.0`, which
///   re-quantizes to `m = +0.0`.
///
/// Returns (blocks checked, blocks skipped by the condition).
fn check_idempotent(dtype: GgmlType, x: &[f32]) -> (usize, usize) {
    let b = quantize(dtype, x).unwrap();
    let y = dequantize("x", dtype, &b, x.len()).unwrap();
    let b2 = quantize(dtype, &y).unwrap();
    let per = dtype.block_layout().1 as usize;
    let asymmetric = matches!(dtype, GgmlType::Q4_1 | GgmlType::Q5_1);
    let (mut checked, mut skipped) = (0, 0);
    for (i, ((blk, blk2), d)) in b
        .chunks(per)
        .zip(b2.chunks(per))
        .zip(scales(dtype, &b))
        .enumerate()
    {
        let yb = &y[32 * i..32 * i + 32];
        if d == 0.0 {
            // Decodes to a constant (0, or Q4_1 / Q5_1's minimum): re-quantizes to that.
            let c = quantize(dtype, &[yb[0]; 32]).unwrap();
            assert_eq!(blk2, &c[..], "{dtype:?} block {i}");
            skipped += 1;
            continue;
        }
        if asymmetric {
            let m = f64::from(f16::from_le_bytes([blk[2], blk[3]]).to_f32());
            let exact = (0..=if dtype == GgmlType::Q4_1 { 15 } else { 31 }).all(|k| {
                let v = f64::from(k) * f64::from(d) + m;
                f64::from(v as f32) == v
            });
            if !exact {
                skipped += 1;
                continue;
            }
        }
        let mut want = blk.to_vec();
        if asymmetric && want[2..4] == [0x00, 0x80] {
            // A -0.0 minimum (a tiny negative one that f16 rounds to -0.0) decodes as
            // 0 · d + -0.0 = +0.0, so the re-quantized block stores +0.0.
            want[3] = 0;
        }
        assert_eq!(
            want, blk2,
            "{dtype:?} block {i} not idempotent; values {yb:?}"
        );
        checked += 1;
    }
    (checked, skipped)
}

/// Blocks of 32: plain, 24 binades of dynamic range, offset, on a grid (ties), sparse,
/// constant; scales from 2⁻⁴⁵ (f32-subnormal territory) to 2¹⁴; |x| ≤ 60000 so no f16
/// scale or minimum overflows.
fn block() -> impl Strategy<Value = Vec<f32>> {
    (
        prop::collection::vec((-1.0f64..1.0, 0i32..24), 32),
        -45i32..15,
        0u8..6,
        -200.0f64..200.0,
    )
        .prop_map(|(v, e, kind, off)| {
            let scale = 2f64.powi(e);
            let mut x: Vec<f64> = v
                .iter()
                .map(|&(a, k)| match kind {
                    0 => a * scale,
                    1 => a * scale * 2f64.powi(-k),
                    2 => (off + a) * scale,
                    3 => (a * 16.0).round() / 16.0 * scale,
                    4 if k % 3 == 0 => 0.0,
                    4 => a * scale,
                    _ => v[0].0 * scale,
                })
                .collect();
            let amax = x.iter().fold(0f64, |m, v| m.max(v.abs()));
            if amax > 6.0e4 {
                x.iter_mut().for_each(|v| *v *= 6.0e4 / amax);
            }
            x.iter().map(|&v| v as f32).collect()
        })
}

fn blocks(n: usize) -> impl Strategy<Value = Vec<f32>> {
    prop::collection::vec(block(), n).prop_map(|b| b.concat())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, .. ProptestConfig::default() })]

    #[test]
    fn block_roundtrip_within_bound(x in blocks(4)) {
        for (t, _) in BLOCK_TYPES {
            check_bound(t, &x);
        }
    }

    #[test]
    fn block_requantize_idempotent(x in blocks(4)) {
        for (t, _) in BLOCK_TYPES {
            check_idempotent(t, &x);
        }
    }

    /// F16: round-to-nearest moves a value by at most half an ulp; BF16 likewise (8 significant
    /// bits); F32 is exact. Values F16 / BF16 cannot hold are an `Overflow` error, non-finite
    /// values are stored as such. Re-quantizing the decoded values gives the same bytes for all
    /// three, NaNs included (only quiet NaNs are written, and they survive the round trip).
    #[test]
    fn float_roundtrip_and_idempotent(x in prop::collection::vec(any::<f32>(), 1..64)) {
        for t in [GgmlType::F32, GgmlType::F16, GgmlType::BF16] {
            let b = match quantize(t, &x) {
                Ok(b) => b,
                Err(QuantError::Overflow { index, .. }) => {
                    let v = x[index];
                    prop_assert!(v.is_finite());
                    match t {
                        GgmlType::F16 => prop_assert!(v.abs() >= 65520.0, "{v}"),
                        _ => prop_assert!(v.abs() > 3.38e38, "{v}"),
                    }
                    continue;
                }
                Err(e) => panic!("{t:?}: {e}"),
            };
            let y = dequantize("x", t, &b, x.len()).unwrap();
            for (&a, &q) in x.iter().zip(&y) {
                if a.is_nan() {
                    prop_assert!(q.is_nan());
                    continue;
                }
                let err = (f64::from(q) - f64::from(a)).abs();
                let a = f64::from(a).abs();
                let limit = match t {
                    GgmlType::F32 => 0.0,
                    GgmlType::F16 => half_ulp_f16(a),
                    _ => (a * 2f64.powi(-8)).max(2f64.powi(-134)),
                };
                prop_assert!(err <= limit || a.is_infinite(), "{t:?}: {a} -> {q}");
            }
            let b2 = quantize(t, &y).unwrap();
            prop_assert_eq!(&b, &b2, "{:?}", t);
        }
    }
}

#[test]
fn float_nans_stay_quiet_and_stable() {
    let nans = [0x7F80_0001u32, 0xFFC0_0000, 0x7FBF_FFFF, 0x7FC1_2345].map(f32::from_bits);
    for t in [GgmlType::F16, GgmlType::BF16] {
        let b = quantize(t, &nans).unwrap();
        for c in b.chunks(2) {
            let bits = u16::from_le_bytes([c[0], c[1]]);
            let quiet = match t {
                GgmlType::F16 => f16::from_bits(bits).is_nan() && bits & 0x0200 != 0,
                _ => bf16::from_bits(bits).is_nan() && bits & 0x0040 != 0,
            };
            assert!(quiet, "{t:?}: {bits:#06x}");
        }
        let y = dequantize("x", t, &b, nans.len()).unwrap();
        assert_eq!(quantize(t, &y).unwrap(), b, "{t:?}");
    }
}

/// Deterministic normal samples (xorshift64* + Box–Muller), no extra dependency.
struct Normal(u64);

impl Normal {
    fn uniform(&mut self) -> f64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        ((self.0.wrapping_mul(0x2545_F491_4F6C_DD1D) >> 11) as f64 + 0.5) / (1u64 << 53) as f64
    }
    fn next(&mut self) -> f64 {
        let (u, v) = (self.uniform(), self.uniform());
        (-2.0 * u.ln()).sqrt() * (2.0 * std::f64::consts::PI * v).cos()
    }
}

/// Round-trip errors on weight-like data (N(0, 0.02²), 4096 blocks) and the same with a
/// heavy-tailed outlier per block: the bound holds, the worst error is about half a step
/// (one step for the clamped top of Q4_0 / Q5_0), and the RMS error relative to the data's
/// RMS is what the format's bits give.
#[test]
fn roundtrip_error_stats() {
    let mut rng = Normal(0x5EED_1234_ABCD_0001);
    let plain: Vec<f32> = (0..32 * 4096).map(|_| (rng.next() * 0.02) as f32).collect();
    let mut tails = plain.clone();
    for b in tails.chunks_mut(32) {
        let i = (rng.uniform() * 32.0) as usize;
        b[i] = (rng.next() * 0.3) as f32;
    }
    for (name, x) in [("N(0, 0.02^2)", &plain), ("with outliers", &tails)] {
        let rms = (x.iter().map(|&v| f64::from(v).powi(2)).sum::<f64>() / x.len() as f64).sqrt();
        for (t, _) in BLOCK_TYPES {
            let worst = check_bound(t, x);
            let y = dequantize("x", t, &quantize(t, x).unwrap(), x.len()).unwrap();
            let (mut se, mut max_abs) = (0f64, 0f64);
            for (&a, &q) in x.iter().zip(&y) {
                let e = f64::from(q) - f64::from(a);
                se += e * e;
                max_abs = max_abs.max(e.abs());
            }
            let rel_rms = (se / x.len() as f64).sqrt() / rms;
            println!(
                "{name:>14} {t:?}: max |err| / step {worst:.4}, max |err| {max_abs:.3e}, RMS err / RMS x {rel_rms:.4}"
            );
            let top = if matches!(t, GgmlType::Q4_0 | GgmlType::Q5_0) {
                1.01
            } else {
                0.56
            };
            assert!(worst <= top, "{t:?}: {worst}");
            let (checked, skipped) = check_idempotent(t, x);
            assert_eq!(checked + skipped, 4096);
            assert!(skipped <= 4, "{t:?}: {skipped} blocks skipped");
        }
    }
}

/// Q4_1 / Q5_1 blocks whose levels `f32` cannot hold exactly (large minimum, tiny step) are
/// the only ones that can fail to re-quantize to themselves; count them on such data.
#[test]
fn asymmetric_idempotence_needs_exact_levels() {
    let mut rng = Normal(7);
    let x: Vec<f32> = (0..4000)
        .flat_map(|_| {
            let off = rng.next() * 1000.0;
            (0..32)
                .map(|_| (off + rng.next() * 1e-3) as f32)
                .collect::<Vec<_>>()
        })
        .collect();
    for t in [GgmlType::Q4_1, GgmlType::Q5_1] {
        let b = quantize(t, &x).unwrap();
        let y = dequantize("x", t, &b, x.len()).unwrap();
        let b2 = quantize(t, &y).unwrap();
        let per = t.block_layout().1 as usize;
        let differ = b
            .chunks(per)
            .zip(b2.chunks(per))
            .filter(|(a, b)| a != b)
            .count();
        let (checked, skipped) = check_idempotent(t, &x);
        println!("{t:?}: {checked} exact blocks idempotent, {skipped} not exact, {differ} of those differ");
        assert!(differ <= skipped);
    }
}

/// The real SmolLM2 blocks (Q4_1, Q8_0; golden files of the dequantizer tests) decode and
/// re-quantize to the model file's own bytes, as llama.cpp's quantizer wrote them.
#[test]
fn real_smollm2_blocks_requantize_to_themselves() {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/golden/quant");
    for (name, t) in [("real_Q4_1", GgmlType::Q4_1), ("real_Q8_0", GgmlType::Q8_0)] {
        let b = std::fs::read(dir.join(format!("{name}.blocks"))).unwrap();
        let n = b.len() / t.block_layout().1 as usize * 32;
        let y = dequantize(name, t, &b, n).unwrap();
        assert_eq!(quantize(t, &y).unwrap(), b, "{name}");
    }
}

/// Every Q4_1 / Q8_0 block of the SmolLM2 model file (written by llama.cpp's quantizer:
/// 3 317 760 Q4_1 and 884 736 Q8_0 blocks) decodes and re-quantizes to the file's own bytes.
#[test]
fn smollm2_file_blocks_requantize_to_themselves() {
    use eamet_hooks::gguf::GgufFile;
    let path = eamet_hooks::paths::default_model().expect("no cache directory");
    assert!(
        path.exists(),
        "the SmolLM2 model is missing at {}; run `cargo xtask setup`",
        path.display()
    );
    let f = GgufFile::open(&path).unwrap();
    let mut total = std::collections::BTreeMap::new();
    for info in &f.tensors {
        if !matches!(info.dtype, GgmlType::Q4_1 | GgmlType::Q8_0) {
            continue;
        }
        let b = f.tensor_bytes(info);
        let y = eamet_hooks::quant::dequantize_tensor(&f, info).unwrap();
        let b2 = quantize(info.dtype, &y).unwrap();
        let per = info.dtype.block_layout().1 as usize;
        let differ = b
            .chunks(per)
            .zip(b2.chunks(per))
            .filter(|(a, b)| a != b)
            .count();
        let e = total
            .entry(format!("{:?}", info.dtype))
            .or_insert((0usize, 0usize));
        e.0 += b.len() / per;
        e.1 += differ;
        assert_eq!(
            differ,
            0,
            "{}: {differ} of {} blocks differ",
            info.name,
            b.len() / per
        );
    }
    assert_eq!(total["Q4_1"], (3_317_760, 0));
    assert_eq!(total["Q8_0"], (884_736, 0));
}
