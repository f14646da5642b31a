//! Test helpers: a tiny deterministic RNG and reference linear algebra on plain ndarray
//! (`dot` = matrixmultiply, not the crate's BLAS path) and ndarray-linalg.
#![allow(dead_code)]

use ndarray::{Array1, Array2, ArrayView2};
use ndarray_linalg::QR;

/// splitmix64 stream.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Rng(seed ^ 0x5DEE_CE66_D1CE_4E5B)
    }
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    /// Uniform in [0, 1).
    pub fn uniform(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }
    /// Standard normal (Box–Muller).
    pub fn normal(&mut self) -> f64 {
        let u1 = self.uniform().max(1e-300);
        let u2 = self.uniform();
        (-2.0 * u1.ln()).sqrt() * (2.0 * std::f64::consts::PI * u2).cos()
    }
    pub fn matrix(&mut self, rows: usize, cols: usize) -> Array2<f64> {
        Array2::from_shape_simple_fn((rows, cols), || self.normal())
    }
    /// Small integers in -4..=4 (sums of their products are exact in f64).
    pub fn int_matrix(&mut self, rows: usize, cols: usize) -> Array2<f64> {
        Array2::from_shape_simple_fn((rows, cols), || (self.next_u64() % 9) as f64 - 4.0)
    }
    /// Random orthogonal matrix (Q of a QR of a Gaussian matrix).
    pub fn orthogonal(&mut self, d: usize) -> Array2<f64> {
        let (q, _) = self.matrix(d, d).qr().unwrap();
        q
    }
}

pub fn fro(a: &Array2<f64>) -> f64 {
    a.iter().map(|x| x * x).sum::<f64>().sqrt()
}

/// ‖a − b‖_F / ‖b‖_F.
pub fn rel_err(a: &Array2<f64>, b: &Array2<f64>) -> f64 {
    assert_eq!(a.dim(), b.dim());
    fro(&(a - b)) / fro(b).max(f64::MIN_POSITIVE)
}

/// Σ k kᵀ computed naively.
pub fn gram(k: ArrayView2<'_, f64>) -> Array2<f64> {
    k.t().dot(&k)
}

/// Column sums.
pub fn colsum(k: ArrayView2<'_, f64>) -> Array1<f64> {
    k.sum_axis(ndarray::Axis(0))
}

pub fn bits(a: &Array2<f64>) -> Vec<u64> {
    a.iter().map(|x| x.to_bits()).collect()
}
