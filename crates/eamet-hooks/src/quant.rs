//! Dequantization of GGML tensor blocks to `f32`.
//!
//! Supported: F32, F16, BF16, F64, Q8_0, Q4_0, Q4_1, Q5_0, Q5_1, Q4_K, Q5_K, Q6_K (what
//! SmolLM2 uses — Q4_1, Q8_0, F32 — and the formats people download most). Each block format
//! is checked against the `gguf` Python package on real and random blocks (golden files in
//! `tests/golden/`, made by `tools/golden_quant.py`).

use crate::gguf::{GgmlType, GgufFile, TensorInfo};
use half::{bf16, f16};

/// Why a tensor cannot be dequantized.
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
}
