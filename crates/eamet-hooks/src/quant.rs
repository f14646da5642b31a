//! Conversion between GGML tensor blocks and `f32`: dequantization of stored tensors and
//! quantization of (edited) `f32` values for writing GGUF files.
//!
//! [`dequantize`] reads F32, F16, BF16, F64, Q8_0, Q4_0, Q4_1, Q5_0, Q5_1, Q4_K, Q5_K, Q6_K (what
//! SmolLM2 uses — Q4_1, Q8_0, F32 — and the formats people download most). Each block format
//! is checked against the `gguf` Python package on real and random blocks (golden files in
//! `tests/golden/quant/`, made by `tools/golden_quant.py`).
//!
//! [`quantize`] writes F32, F16, BF16, Q8_0, Q4_0, Q4_1, Q5_0 and Q5_1 ([`can_quantize`]),
//! following ggml's reference row quantizers (`quantize_row_*_ref` in `ggml-quants.c`, the ones
//! llama.cpp uses to make model files deterministically) operation by operation in `f32`, so
//! the bytes are those ggml writes. F16 is IEEE binary16 with round-to-nearest-even, BF16 is
//! ggml's `fp32_to_bf16` (round-to-nearest-even, NaN forced quiet); both go through the `half`
//! crate, as the dequantizer does. The bytes are checked against `gguf.quants.quantize` (a numpy
//! port of the same reference code) in `tests/quant_golden.rs` (golden files in
//! `tests/golden/quantize/`); the round-trip error bounds are property-tested in
//! `tests/quant_roundtrip.rs`.
//!
//! Where the reference code has undefined or platform-dependent behaviour, this module fixes
//! one, documented at [`quantize`]. It also refuses what would silently corrupt a model file:
//! non-finite values in block formats (a NaN or infinity spoils the whole block's scale) and
//! finite values whose stored form (the value itself, or a block's f16 scale or minimum) would
//! overflow to infinity.

use crate::gguf::{GgmlType, GgufFile, TensorInfo};
use half::{bf16, f16};

/// Why a tensor cannot be dequantized or quantized.
#[derive(Debug, thiserror::Error)]
pub enum QuantError {
    /// The storage type has no dequantizer here.
    #[error("tensor {name}: GGML type {dtype} is not supported for dequantization")]
    Unsupported {
        /// Tensor name.
        name: String,
        /// Its type.
        dtype: GgmlType,
    },
    /// The byte length does not match a whole number of blocks of the element count.
    #[error("tensor {name}: {bytes} bytes cannot hold {elements} elements of type {dtype}")]
    BadLength {
        /// Tensor name.
        name: String,
        /// Its type.
        dtype: GgmlType,
        /// Bytes given.
        bytes: usize,
        /// Elements expected.
        elements: usize,
    },
    /// [`quantize`] has no encoder for this type (K-quants, I-quants, integer types, F64, …).
    #[error(
        "GGML type {dtype} is not supported for quantization (supported: {})",
        supported_quantize_names()
    )]
    QuantizeUnsupported {
        /// The type asked for.
        dtype: GgmlType,
    },
    /// The number of values is not a whole number of blocks.
    #[error(
        "{len} values cannot be quantized to {dtype}: not a multiple of its block size {block}"
    )]
    NotWholeBlocks {
        /// The type asked for.
        dtype: GgmlType,
        /// Number of values given.
        len: usize,
        /// Elements per block of `dtype`.
        block: usize,
    },
    /// A tensor's rows (its contiguous `dims[0]` values) are not whole blocks of the type, as
    /// GGML readers require, even where the whole tensor would be.
    #[error("rows of {row} values are not whole {dtype} blocks of {block}")]
    RowNotWholeBlocks {
        /// The type asked for.
        dtype: GgmlType,
        /// Values per row.
        row: usize,
        /// Elements per block of `dtype`.
        block: usize,
    },
    /// A value is NaN or infinite, which the block formats cannot store.
    #[error("value {index} is {value}: {dtype} blocks cannot store non-finite values")]
    NonFinite {
        /// The type asked for.
        dtype: GgmlType,
        /// Index of the first non-finite value.
        index: usize,
        /// The value.
        value: f32,
    },
    /// A finite value would be stored as infinity: the value itself (F16, BF16) or the f16
    /// scale or minimum of its block is out of range.
    #[error("{dtype}: the {field} of value {index} is {value}, which overflows to infinity")]
    Overflow {
        /// The type asked for.
        dtype: GgmlType,
        /// Index of the value (F16, BF16) or of the first value of the block.
        index: usize,
        /// What overflows: `"value"`, `"block scale"` or `"block minimum"`.
        field: &'static str,
        /// Its `f32` value before conversion.
        value: f32,
    },
}

/// The types [`quantize`] can write.
pub const QUANTIZE_TYPES: [GgmlType; 8] = [
    GgmlType::F32,
    GgmlType::F16,
    GgmlType::BF16,
    GgmlType::Q8_0,
    GgmlType::Q4_0,
    GgmlType::Q4_1,
    GgmlType::Q5_0,
    GgmlType::Q5_1,
];

fn supported_quantize_names() -> String {
    QUANTIZE_TYPES.map(|t| t.to_string()).join(", ")
}

#[inline]
fn h(b: &[u8], at: usize) -> f32 {
    f16::from_le_bytes([b[at], b[at + 1]]).to_f32()
}

/// Dequantize `elements` values of type `dtype` from `bytes` (the tensor's raw data).
pub fn dequantize(
    name: &str,
    dtype: GgmlType,
    bytes: &[u8],
    elements: usize,
) -> Result<Vec<f32>, QuantError> {
    let (block, block_bytes) = dtype.block_layout();
    let (block, block_bytes) = (block as usize, block_bytes as usize);
    let bad = || QuantError::BadLength {
        name: name.to_string(),
        dtype,
        bytes: bytes.len(),
        elements,
    };
    if elements % block != 0 || (elements / block).checked_mul(block_bytes) != Some(bytes.len()) {
        return Err(bad());
    }
    let mut out = vec![0f32; elements];
    let blocks = bytes
        .chunks_exact(block_bytes)
        .zip(out.chunks_exact_mut(block));
    match dtype {
        GgmlType::F32 => {
            for (b, y) in blocks {
                y[0] = f32::from_le_bytes([b[0], b[1], b[2], b[3]]);
            }
        }
        GgmlType::F16 => {
            for (b, y) in blocks {
                y[0] = h(b, 0);
            }
        }
        GgmlType::BF16 => {
            for (b, y) in blocks {
                y[0] = bf16::from_le_bytes([b[0], b[1]]).to_f32();
            }
        }
        GgmlType::F64 => {
            for (b, y) in blocks {
                let mut a = [0u8; 8];
                a.copy_from_slice(b);
                y[0] = f64::from_le_bytes(a) as f32;
            }
        }
        GgmlType::Q8_0 => {
            for (b, y) in blocks {
                let d = h(b, 0);
                for (yi, &q) in y.iter_mut().zip(&b[2..34]) {
                    *yi = (q as i8) as f32 * d;
                }
            }
        }
        GgmlType::Q4_0 => {
            for (b, y) in blocks {
                let d = h(b, 0);
                let qs = &b[2..18];
                for j in 0..16 {
                    y[j] = ((qs[j] & 0x0F) as i32 - 8) as f32 * d;
                    y[j + 16] = ((qs[j] >> 4) as i32 - 8) as f32 * d;
                }
            }
        }
        GgmlType::Q4_1 => {
            for (b, y) in blocks {
                let (d, m) = (h(b, 0), h(b, 2));
                let qs = &b[4..20];
                for j in 0..16 {
                    y[j] = (qs[j] & 0x0F) as f32 * d + m;
                    y[j + 16] = (qs[j] >> 4) as f32 * d + m;
                }
            }
        }
        GgmlType::Q5_0 => {
            for (b, y) in blocks {
                let d = h(b, 0);
                let qh = u32::from_le_bytes([b[2], b[3], b[4], b[5]]);
                let qs = &b[6..22];
                for j in 0..16 {
                    let hi0 = ((qh >> j) & 1) << 4;
                    let hi1 = ((qh >> (j + 16)) & 1) << 4;
                    y[j] = (((qs[j] & 0x0F) as u32 | hi0) as i32 - 16) as f32 * d;
                    y[j + 16] = (((qs[j] >> 4) as u32 | hi1) as i32 - 16) as f32 * d;
                }
            }
        }
        GgmlType::Q5_1 => {
            for (b, y) in blocks {
                let (d, m) = (h(b, 0), h(b, 2));
                let qh = u32::from_le_bytes([b[4], b[5], b[6], b[7]]);
                let qs = &b[8..24];
                for j in 0..16 {
                    let hi0 = ((qh >> j) & 1) << 4;
                    let hi1 = ((qh >> (j + 16)) & 1) << 4;
                    y[j] = ((qs[j] & 0x0F) as u32 | hi0) as f32 * d + m;
                    y[j + 16] = ((qs[j] >> 4) as u32 | hi1) as f32 * d + m;
                }
            }
        }
        GgmlType::Q4K => {
            for (b, y) in blocks {
                let (d, dmin) = (h(b, 0), h(b, 2));
                let scales = &b[4..16];
                let qs = &b[16..144];
                for chunk in 0..4 {
                    let (sc1, m1) = k_scale_min(2 * chunk, scales);
                    let (sc2, m2) = k_scale_min(2 * chunk + 1, scales);
                    let (d1, m1) = (d * sc1 as f32, dmin * m1 as f32);
                    let (d2, m2) = (d * sc2 as f32, dmin * m2 as f32);
                    let q = &qs[32 * chunk..32 * chunk + 32];
                    let y = &mut y[64 * chunk..64 * chunk + 64];
                    for l in 0..32 {
                        y[l] = d1 * (q[l] & 0x0F) as f32 - m1;
                        y[l + 32] = d2 * (q[l] >> 4) as f32 - m2;
                    }
                }
            }
        }
        GgmlType::Q5K => {
            for (b, y) in blocks {
                let (d, dmin) = (h(b, 0), h(b, 2));
                let scales = &b[4..16];
                let qh = &b[16..48];
                let qs = &b[48..176];
                for chunk in 0..4 {
                    let (sc1, m1) = k_scale_min(2 * chunk, scales);
                    let (sc2, m2) = k_scale_min(2 * chunk + 1, scales);
                    let (d1, m1) = (d * sc1 as f32, dmin * m1 as f32);
                    let (d2, m2) = (d * sc2 as f32, dmin * m2 as f32);
                    let (u1, u2) = (1u8 << (2 * chunk), 2u8 << (2 * chunk));
                    let q = &qs[32 * chunk..32 * chunk + 32];
                    let y = &mut y[64 * chunk..64 * chunk + 64];
                    for l in 0..32 {
                        let h1 = if qh[l] & u1 != 0 { 16 } else { 0 };
                        let h2 = if qh[l] & u2 != 0 { 16 } else { 0 };
                        y[l] = d1 * ((q[l] & 0x0F) + h1) as f32 - m1;
                        y[l + 32] = d2 * ((q[l] >> 4) + h2) as f32 - m2;
                    }
                }
            }
        }
        GgmlType::Q6K => {
            for (b, y) in blocks {
                let ql = &b[0..128];
                let qh = &b[128..192];
                let sc = &b[192..208];
                let d = h(b, 208);
                for half_ in 0..2 {
                    let ql = &ql[64 * half_..64 * half_ + 64];
                    let qh = &qh[32 * half_..32 * half_ + 32];
                    let sc = &sc[8 * half_..8 * half_ + 8];
                    let y = &mut y[128 * half_..128 * half_ + 128];
                    for l in 0..32 {
                        let is = l / 16;
                        let q1 = ((ql[l] & 0x0F) | ((qh[l] & 3) << 4)) as i32 - 32;
                        let q2 = ((ql[l + 32] & 0x0F) | (((qh[l] >> 2) & 3) << 4)) as i32 - 32;
                        let q3 = ((ql[l] >> 4) | (((qh[l] >> 4) & 3) << 4)) as i32 - 32;
                        let q4 = ((ql[l + 32] >> 4) | (((qh[l] >> 6) & 3) << 4)) as i32 - 32;
                        y[l] = d * (sc[is] as i8) as f32 * q1 as f32;
                        y[l + 32] = d * (sc[is + 2] as i8) as f32 * q2 as f32;
                        y[l + 64] = d * (sc[is + 4] as i8) as f32 * q3 as f32;
                        y[l + 96] = d * (sc[is + 6] as i8) as f32 * q4 as f32;
                    }
                }
            }
        }
        other => {
            return Err(QuantError::Unsupported {
                name: name.to_string(),
                dtype: other,
            })
        }
    }
    Ok(out)
}

/// The 6-bit scale and min of sub-block `j` (0..8) packed in the 12 `scales` bytes of a
/// Q4_K / Q5_K super-block.
#[inline]
fn k_scale_min(j: usize, q: &[u8]) -> (u8, u8) {
    if j < 4 {
        (q[j] & 63, q[j + 4] & 63)
    } else {
        (
            (q[j + 4] & 0x0F) | ((q[j - 4] >> 6) << 4),
            (q[j + 4] >> 4) | ((q[j] >> 6) << 4),
        )
    }
}

/// Dequantize a whole tensor of a GGUF file.
pub fn dequantize_tensor(file: &GgufFile, info: &TensorInfo) -> Result<Vec<f32>, QuantError> {
    let elements = usize::try_from(info.elements()).map_err(|_| QuantError::BadLength {
        name: info.name.clone(),
        dtype: info.dtype,
        bytes: info.size as usize,
        elements: usize::MAX,
    })?;
    dequantize(&info.name, info.dtype, file.tensor_bytes(info), elements)
}

/// Whether [`quantize`] can write `dtype` (one of [`QUANTIZE_TYPES`]).
pub fn can_quantize(dtype: GgmlType) -> bool {
    QUANTIZE_TYPES.contains(&dtype)
}

/// Encode `values` as tensor data of type `dtype`, the inverse of [`dequantize`].
///
/// `values` is in GGML data order (`dims[0]` contiguous), so consecutive runs of the block size
/// (32 for the Q formats, 1 for F32 / F16 / BF16) become consecutive blocks; its length must be
/// a multiple of the block size. The result has `values.len() / block * block_bytes` bytes
/// ([`GgmlType::block_layout`]).
///
/// Per type, as ggml writes it:
/// - F32: the values' bits, little-endian (NaN payloads included).
/// - F16: IEEE binary16, round-to-nearest-even (subnormals included); NaN stays NaN, made quiet
///   with the top 10 payload bits kept (what x86 F16C and the `half` crate do; ggml's
///   portable fallback writes a canonical NaN instead, numpy keeps a signalling NaN signalling).
/// - BF16: ggml's `fp32_to_bf16`: round-to-nearest-even on the top 16 bits; NaN keeps its top
///   bits and gets the quiet bit (`| 0x40`).
/// - Q8_0: `d = max|x| / 127`, `q = round(x / d)` (ties away from zero).
/// - Q4_0 / Q5_0: `d = m / -8` (`m / -16`) with `m` the first value of largest magnitude,
///   `q = min(15, trunc(x / d + 8.5))` (`min(31, trunc(x / d + 16.5))`): round half up, and the
///   values of the opposite sign to `m` that land on the top level are clamped to it.
/// - Q4_1 / Q5_1: `d = (max - min) / 15` (`/ 31`), `m = min`,
///   `q = trunc((x - min) / d + 0.5)` (round half up; Q4_1 also clamps to 15).
///
/// "`x / d`" is `x * (1 / d)` in `f32` with `1 / d` taken as 0 when `d == 0`, exactly as in the
/// reference; scales and minimums are stored as f16 (round-to-nearest-even).
///
/// Besides F16 NaN payloads (above), one result the reference leaves to the platform is fixed
/// here: when a block's scale is so small (`|d| < 2^-128`, a block of f32-subnormal values)
/// that `1 / d` overflows to infinity, the reference converts NaN / ±inf to an integer
/// (undefined in C); x86-64 builds of ggml and numpy yield 0 there, and so does this. Such a block's f16 scale is 0, so it decodes to zeros
/// (Q4_1 / Q5_1: to its f16 minimum) whatever its quants.
///
/// # Errors
/// - [`QuantError::QuantizeUnsupported`] for a type other than [`QUANTIZE_TYPES`].
/// - [`QuantError::NotWholeBlocks`] when `values.len()` is not a multiple of the block size.
/// - [`QuantError::NonFinite`] for a NaN or infinite value in a block format (F32, F16 and BF16
///   store them as given).
/// - [`QuantError::Overflow`] for a finite value that would be stored as infinity (where ggml
///   silently writes ±inf): 65520 or more in magnitude for F16, about 3.3962e38 or more
///   (`0x7F7F8000`) for BF16, or a block whose f16 scale or minimum is 65520 or more in magnitude (for example
///   `max|x| ≥ 127 · 65520` for Q8_0, or any value ≤ −65520 for Q4_1 / Q5_1).
pub fn quantize(dtype: GgmlType, values: &[f32]) -> Result<Vec<u8>, QuantError> {
    if !can_quantize(dtype) {
        return Err(QuantError::QuantizeUnsupported { dtype });
    }
    let (block, block_bytes) = dtype.block_layout();
    let (block, block_bytes) = (block as usize, block_bytes as usize);
    if values.len() % block != 0 {
        return Err(QuantError::NotWholeBlocks {
            dtype,
            len: values.len(),
            block,
        });
    }
    if block > 1 {
        if let Some(index) = values.iter().position(|v| !v.is_finite()) {
            return Err(QuantError::NonFinite {
                dtype,
                index,
                value: values[index],
            });
        }
    }
    if dtype == GgmlType::F32 {
        return Ok(values.iter().flat_map(|v| v.to_le_bytes()).collect());
    }
    let mut out = vec![0u8; values.len() / block * block_bytes];
    let blocks = values
        .chunks_exact(block)
        .zip(out.chunks_exact_mut(block_bytes))
        .enumerate();
    let overflow = |i: usize, (field, value): (&'static str, f32)| QuantError::Overflow {
        dtype,
        index: i * block,
        field,
        value,
    };
    match dtype {
        GgmlType::F16 => {
            for (i, (x, b)) in blocks {
                let h = f16::from_f32(x[0]);
                if h.is_infinite() && x[0].is_finite() {
                    return Err(overflow(i, ("value", x[0])));
                }
                b.copy_from_slice(&h.to_le_bytes());
            }
        }
        GgmlType::BF16 => {
            for (i, (x, b)) in blocks {
                let h = bf16::from_f32(x[0]);
                if h.is_infinite() && x[0].is_finite() {
                    return Err(overflow(i, ("value", x[0])));
                }
                b.copy_from_slice(&h.to_le_bytes());
            }
        }
        GgmlType::Q8_0 => {
            for (i, (x, b)) in blocks {
                encode_q8_0(x, b).map_err(|e| overflow(i, e))?;
            }
        }
        GgmlType::Q4_0 => {
            for (i, (x, b)) in blocks {
                encode_q4_0(x, b).map_err(|e| overflow(i, e))?;
            }
        }
        GgmlType::Q4_1 => {
            for (i, (x, b)) in blocks {
                encode_q4_1(x, b).map_err(|e| overflow(i, e))?;
            }
        }
        GgmlType::Q5_0 => {
            for (i, (x, b)) in blocks {
                encode_q5_0(x, b).map_err(|e| overflow(i, e))?;
            }
        }
        GgmlType::Q5_1 => {
            for (i, (x, b)) in blocks {
                encode_q5_1(x, b).map_err(|e| overflow(i, e))?;
            }
        }
        other => return Err(QuantError::QuantizeUnsupported { dtype: other }),
    }
    Ok(out)
}

/// What overflowed while encoding a block: the field's name and its `f32` value.
type Overflowed = (&'static str, f32);

/// `v` as the little-endian f16 a block field stores (round-to-nearest-even), unless it is
/// out of the f16 range.
#[inline]
fn f16_field(v: f32, field: &'static str) -> Result<[u8; 2], Overflowed> {
    let h = f16::from_f32(v);
    if h.is_infinite() || h.is_nan() {
        Err((field, v))
    } else {
        Ok(h.to_le_bytes())
    }
}

/// The reference's `d ? 1.0f/d : 0.0f`.
#[inline]
fn recip(d: f32) -> f32 {
    if d != 0.0 {
        1.0 / d
    } else {
        0.0
    }
}

/// C's float-to-integer conversion (truncation toward zero) as the reference code meets it.
/// In a normal block every argument is finite and small; NaN and ±inf arise only when `1 / d`
/// overflowed (see [`quantize`]) and give 0, as x86-64's `cvttss2si` (whose out-of-range result
/// 0x80000000 has low byte 0) and numpy do.
#[inline]
fn c_int(v: f32) -> i32 {
    if v.is_finite() {
        v as i32
    } else {
        0
    }
}

/// The value of largest magnitude, the first one on ties; 0 for an all-zero block (the
/// reference's `amax < fabsf(v)` scan).
#[inline]
fn signed_absmax(x: &[f32]) -> f32 {
    let (mut amax, mut max) = (0f32, 0f32);
    for &v in x {
        if amax < v.abs() {
            amax = v.abs();
            max = v;
        }
    }
    max
}

/// (min, max) as the reference scans them (`v < min`, `v > max`, from ±`f32::MAX`).
#[inline]
fn min_max(x: &[f32]) -> (f32, f32) {
    let (mut min, mut max) = (f32::MAX, -f32::MAX);
    for &v in x {
        if v < min {
            min = v;
        }
        if v > max {
            max = v;
        }
    }
    (min, max)
}

/// Q8_0 block: f16 `d`, 32 × i8.
fn encode_q8_0(x: &[f32], b: &mut [u8]) -> Result<(), Overflowed> {
    let amax = x
        .iter()
        .fold(0f32, |a, v| if a > v.abs() { a } else { v.abs() });
    let d = amax / 127.0;
    let id = recip(d);
    b[0..2].copy_from_slice(&f16_field(d, "block scale")?);
    for (q, &v) in b[2..34].iter_mut().zip(x) {
        *q = c_int((v * id).round()) as i8 as u8;
    }
    Ok(())
}

/// Q4_0 block: f16 `d`, 16 bytes of nibbles (low: values 0..16, high: values 16..32).
fn encode_q4_0(x: &[f32], b: &mut [u8]) -> Result<(), Overflowed> {
    let d = signed_absmax(x) / -8.0;
    let id = recip(d);
    b[0..2].copy_from_slice(&f16_field(d, "block scale")?);
    for j in 0..16 {
        let q0 = c_int(x[j] * id + 8.5).clamp(0, 15) as u8;
        let q1 = c_int(x[j + 16] * id + 8.5).clamp(0, 15) as u8;
        b[2 + j] = q0 | (q1 << 4);
    }
    Ok(())
}

/// Q4_1 block: f16 `d`, f16 `m`, 16 bytes of nibbles.
fn encode_q4_1(x: &[f32], b: &mut [u8]) -> Result<(), Overflowed> {
    let (min, max) = min_max(x);
    let d = (max - min) / 15.0;
    let id = recip(d);
    b[0..2].copy_from_slice(&f16_field(d, "block scale")?);
    b[2..4].copy_from_slice(&f16_field(min, "block minimum")?);
    for j in 0..16 {
        let q0 = c_int((x[j] - min) * id + 0.5).clamp(0, 15) as u8;
        let q1 = c_int((x[j + 16] - min) * id + 0.5).clamp(0, 15) as u8;
        b[4 + j] = q0 | (q1 << 4);
    }
    Ok(())
}

/// Pack 32 five-bit quants: low nibbles as in Q4 (`qs`), fifth bits as a little-endian u32
/// (`qh`, bit `j` for value `j`).
#[inline]
fn pack_q5(q: &[u8; 32], qh: &mut [u8], qs: &mut [u8]) {
    let mut high = 0u32;
    for j in 0..16 {
        qs[j] = (q[j] & 0x0F) | ((q[j + 16] & 0x0F) << 4);
        high |= u32::from((q[j] >> 4) & 1) << j;
        high |= u32::from((q[j + 16] >> 4) & 1) << (j + 16);
    }
    qh.copy_from_slice(&high.to_le_bytes());
}

/// Q5_0 block: f16 `d`, u32 `qh`, 16 bytes of nibbles.
fn encode_q5_0(x: &[f32], b: &mut [u8]) -> Result<(), Overflowed> {
    let d = signed_absmax(x) / -16.0;
    let id = recip(d);
    b[0..2].copy_from_slice(&f16_field(d, "block scale")?);
    let mut q = [0u8; 32];
    for (q, &v) in q.iter_mut().zip(x) {
        *q = c_int(v * id + 16.5).clamp(0, 31) as u8;
    }
    let (qh, qs) = b[2..22].split_at_mut(4);
    pack_q5(&q, qh, qs);
    Ok(())
}

/// Q5_1 block: f16 `d`, f16 `m`, u32 `qh`, 16 bytes of nibbles.
fn encode_q5_1(x: &[f32], b: &mut [u8]) -> Result<(), Overflowed> {
    let (min, max) = min_max(x);
    let d = (max - min) / 31.0;
    let id = recip(d);
    b[0..2].copy_from_slice(&f16_field(d, "block scale")?);
    b[2..4].copy_from_slice(&f16_field(min, "block minimum")?);
    let mut q = [0u8; 32];
    for (q, &v) in q.iter_mut().zip(x) {
        // The reference does not clamp here: (max - min) / d stays below 31.5.
        *q = c_int((v - min) * id + 0.5).clamp(0, 31) as u8;
    }
    let (qh, qs) = b[4..24].split_at_mut(4);
    pack_q5(&q, qh, qs);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn q8_0_by_hand() {
        let mut b = f16::from_f32(0.5).to_le_bytes().to_vec();
        b.extend((0..32).map(|i| (i as i8 - 16) as u8));
        let y = dequantize("t", GgmlType::Q8_0, &b, 32).unwrap();
        assert_eq!(y[0], -8.0);
        assert_eq!(y[31], 7.5);
    }

    #[test]
    fn q4_1_by_hand() {
        // d = 2, m = -1; nibble pair 0x3A: low 0xA -> element j, high 0x3 -> element j + 16.
        let mut b = f16::from_f32(2.0).to_le_bytes().to_vec();
        b.extend(f16::from_f32(-1.0).to_le_bytes());
        b.extend([0x3Au8; 16]);
        let y = dequantize("t", GgmlType::Q4_1, &b, 32).unwrap();
        assert_eq!(y[0], 19.0);
        assert_eq!(y[16], 5.0);
    }

    #[test]
    fn wrong_length_is_an_error() {
        let e = dequantize("w", GgmlType::Q4_0, &[0u8; 17], 32).unwrap_err();
        assert!(e.to_string().contains("17 bytes"), "{e}");
        assert!(dequantize("w", GgmlType::Q4_0, &[0u8; 18], 31).is_err());
        assert!(matches!(
            dequantize("w", GgmlType::Q2K, &[0u8; 84], 256),
            Err(QuantError::Unsupported { .. })
        ));
    }

    fn f16_at(b: &[u8], at: usize) -> f32 {
        f16::from_le_bytes([b[at], b[at + 1]]).to_f32()
    }

    #[test]
    fn can_quantize_lists_exactly_the_encoders() {
        for id in 0..40 {
            let Some(t) = GgmlType::from_id(id) else {
                continue;
            };
            let (block, _) = t.block_layout();
            let r = quantize(t, &vec![0.5f32; block as usize]);
            assert_eq!(can_quantize(t), r.is_ok(), "{t}: {r:?}");
        }
    }

    #[test]
    fn unsupported_type_names_the_supported_ones() {
        let e = quantize(GgmlType::Q4K, &[0.0; 256]).unwrap_err();
        assert!(matches!(
            e,
            QuantError::QuantizeUnsupported {
                dtype: GgmlType::Q4K
            }
        ));
        let msg = e.to_string();
        assert!(msg.contains("Q4_K"), "{msg}");
        assert!(
            msg.contains("supported: F32, F16, BF16, Q8_0, Q4_0, Q4_1, Q5_0, Q5_1"),
            "{msg}"
        );
        for t in [GgmlType::I8, GgmlType::F64, GgmlType::Q8_1, GgmlType::Q6K] {
            assert!(matches!(
                quantize(t, &[]),
                Err(QuantError::QuantizeUnsupported { .. })
            ));
        }
    }

    #[test]
    fn partial_block_is_an_error() {
        let e = quantize(GgmlType::Q8_0, &[1.0; 33]).unwrap_err();
        assert!(
            matches!(
                e,
                QuantError::NotWholeBlocks {
                    len: 33,
                    block: 32,
                    ..
                }
            ),
            "{e:?}"
        );
        assert!(e.to_string().contains("33 values"), "{e}");
        assert!(quantize(GgmlType::Q4_1, &[1.0; 16]).is_err());
        assert_eq!(quantize(GgmlType::Q5_0, &[]).unwrap(), Vec::<u8>::new());
        assert_eq!(quantize(GgmlType::F16, &[1.0; 3]).unwrap().len(), 6);
    }

    #[test]
    fn non_finite_values_are_refused_by_block_formats_only() {
        for t in [
            GgmlType::Q8_0,
            GgmlType::Q4_0,
            GgmlType::Q4_1,
            GgmlType::Q5_0,
            GgmlType::Q5_1,
        ] {
            for bad in [f32::NAN, f32::INFINITY, f32::NEG_INFINITY] {
                let mut x = vec![0.25f32; 64];
                x[40] = bad;
                x[50] = f32::NAN;
                let e = quantize(t, &x).unwrap_err();
                assert!(
                    matches!(e, QuantError::NonFinite { index: 40, .. }),
                    "{t}: {e:?}"
                );
                assert!(e.to_string().contains("value 40"), "{e}");
            }
        }
        let x = [f32::NAN, f32::INFINITY, -f32::INFINITY, 1.0];
        let b = quantize(GgmlType::F32, &x).unwrap();
        assert_eq!(b[0..4], f32::NAN.to_le_bytes());
        let h = quantize(GgmlType::F16, &x).unwrap();
        assert_eq!(h, [0x00, 0x7E, 0x00, 0x7C, 0x00, 0xFC, 0x00, 0x3C]);
        let b = quantize(GgmlType::BF16, &x).unwrap();
        assert_eq!(b, [0xC0, 0x7F, 0x80, 0x7F, 0x80, 0xFF, 0x80, 0x3F]);
        // ggml's fp32_to_bf16 makes a signalling NaN quiet and keeps its top payload bits.
        let snan = f32::from_bits(0xFF81_2345);
        assert_eq!(quantize(GgmlType::BF16, &[snan]).unwrap(), [0xC1, 0xFF]);
    }

    #[test]
    fn overflow_to_infinity_is_an_error() {
        assert_eq!(
            quantize(GgmlType::F16, &[65519.0, -65504.0]).unwrap(),
            [0xFF, 0x7B, 0xFF, 0xFB]
        );
        let e = quantize(GgmlType::F16, &[1.0, -65520.0]).unwrap_err();
        assert!(
            matches!(
                e,
                QuantError::Overflow {
                    index: 1,
                    field: "value",
                    ..
                }
            ),
            "{e:?}"
        );
        assert!(quantize(GgmlType::BF16, &[3.0e38]).is_ok());
        assert!(matches!(
            quantize(GgmlType::BF16, &[f32::MAX]),
            Err(QuantError::Overflow { index: 0, .. })
        ));
        let mut x = vec![1.0f32; 96];
        x[70] = 1.0e7; // Q8_0 scale 1e7 / 127 > 65504
        let e = quantize(GgmlType::Q8_0, &x).unwrap_err();
        assert!(
            matches!(
                e,
                QuantError::Overflow {
                    index: 64,
                    field: "block scale",
                    ..
                }
            ),
            "{e:?}"
        );
        assert!(e.to_string().contains("block scale of value 64"), "{e}");
        x[70] = 8.0e6; // scale 62992: fine
        assert!(quantize(GgmlType::Q8_0, &x).is_ok());
        x[70] = -7.0e4; // Q4_1: minimum below -65504, scale 4667
        assert!(matches!(
            quantize(GgmlType::Q4_1, &x),
            Err(QuantError::Overflow {
                index: 64,
                field: "block minimum",
                ..
            })
        ));
        x[70] = -3.0e38; // max - min stays finite in Q4_0's m / -8, overflows f16
        assert!(matches!(
            quantize(GgmlType::Q4_0, &x),
            Err(QuantError::Overflow {
                field: "block scale",
                ..
            })
        ));
        x[71] = 3.0e38; // max - min overflows f32
        assert!(matches!(
            quantize(GgmlType::Q5_1, &x),
            Err(QuantError::Overflow {
                field: "block scale",
                ..
            })
        ));
    }

    #[test]
    fn q8_0_rounds_half_away_from_zero() {
        // max |x| = 127 makes d = 1 and 1/d exact.
        let mut x = [0f32; 32];
        x[0] = 127.0;
        x[1] = 2.5;
        x[2] = -2.5;
        x[3] = 0.49999997;
        x[4] = -126.5;
        let b = quantize(GgmlType::Q8_0, &x).unwrap();
        assert_eq!(f16_at(&b, 0), 1.0);
        assert_eq!(b[2..7], [127, 3, (-3i8) as u8, 0, (-127i8) as u8]);
        assert_eq!(
            dequantize("t", GgmlType::Q8_0, &b, 32).unwrap()[..5],
            [127.0, 3.0, -3.0, 0.0, -127.0]
        );
    }

    #[test]
    fn q4_0_scale_sign_and_clamp() {
        // The first value of largest magnitude sets d = m / -8; values of the other sign at
        // the top (x / d = 8) clamp to level 15, i.e. 7 · d.
        let mut x = [0f32; 32];
        x[0] = 1.0;
        x[1] = -1.0;
        x[16] = 0.5;
        x[17] = -0.0625; // x / d = 0.5: a tie, rounds up
        let b = quantize(GgmlType::Q4_0, &x).unwrap();
        assert_eq!(f16_at(&b, 0), -0.125);
        assert_eq!(b[2] & 0x0F, 0); // 1.0 -> level 0 -> -8 · d
        assert_eq!(b[3] & 0x0F, 15); // -1.0 -> 16 -> clamped
        assert_eq!(b[2] >> 4, 4); // 0.5 -> -4 + 8
        assert_eq!(b[3] >> 4, 9); // tie 8.5 + 0.5 -> 9
        let y = dequantize("t", GgmlType::Q4_0, &b, 32).unwrap();
        assert_eq!((y[0], y[1], y[16], y[17]), (1.0, -0.875, 0.5, -0.125));
    }

    #[test]
    fn q4_1_and_q5_1_cover_min_to_max() {
        let x: Vec<f32> = (0..32).map(|i| -2.0 + 0.125 * i as f32).collect();
        for (t, top) in [(GgmlType::Q4_1, 15.0f32), (GgmlType::Q5_1, 31.0)] {
            let b = quantize(t, &x).unwrap();
            assert_eq!(f16_at(&b, 2), -2.0, "{t}");
            assert_eq!(f16_at(&b, 0), f16::from_f32(3.875 / top).to_f32(), "{t}");
            let y = dequantize("t", t, &b, 32).unwrap();
            assert_eq!(y[0], -2.0, "{t}");
            let step = f16_at(&b, 0);
            for (a, b) in x.iter().zip(&y) {
                assert!(
                    (a - b).abs() <= step * 0.5 + 3.875 * 1e-3,
                    "{t}: {a} -> {b}"
                );
            }
        }
    }

    #[test]
    fn q5_0_high_bits() {
        let x: Vec<f32> = (0..32).map(|i| (i as f32 - 16.0) / 16.0).collect();
        let b = quantize(GgmlType::Q5_0, &x).unwrap();
        // m = x[0] = -1 -> d = 1/16, level = 16 · x + 16 = i: the fifth bit is set for i >= 16.
        assert_eq!(f16_at(&b, 0), 0.0625);
        assert_eq!(u32::from_le_bytes([b[2], b[3], b[4], b[5]]), 0xFFFF_0000);
        assert_eq!(dequantize("t", GgmlType::Q5_0, &b, 32).unwrap(), x);
    }

    #[test]
    fn zero_blocks_and_subnormal_scales() {
        for t in [
            GgmlType::Q8_0,
            GgmlType::Q4_0,
            GgmlType::Q4_1,
            GgmlType::Q5_0,
            GgmlType::Q5_1,
        ] {
            let y = dequantize("t", t, &quantize(t, &[0.0; 32]).unwrap(), 32).unwrap();
            assert!(y.iter().all(|&v| v == 0.0), "{t}");
            // 1 / d overflows: every quant is 0 (what ggml on x86-64 and numpy write).
            let mut x = [0f32; 32];
            x[3] = 1.0e-40;
            x[5] = -3.0e-41;
            let b = quantize(t, &x).unwrap();
            let (_, bytes) = t.block_layout();
            let fields = if matches!(t, GgmlType::Q4_1 | GgmlType::Q5_1) {
                4
            } else {
                2
            };
            let quants = &b[fields..bytes as usize];
            // (For Q4_0 / Q5_0 that is level 0, not the zero level 8 / 16; d is 0 either way.)
            assert!(quants.iter().all(|&q| q == 0), "{t}: {b:?}");
            let y = dequantize("t", t, &b, 32).unwrap();
            assert!(y.iter().all(|&v| v == 0.0), "{t}: {y:?}");
        }
    }
}
