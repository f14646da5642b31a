//! Row normalization and blocked cosine-similarity products.

use std::num::NonZeroUsize;

use ndarray::parallel::prelude::*;
use ndarray::{
    linalg::general_mat_mul, s, Array2, ArrayView1, ArrayView2, ArrayViewMut1, Axis, LinalgScalar,
};

use crate::error::{AlignError, Operand, Result};

mod sealed {
    pub trait Sealed {}
    impl Sealed for f32 {}
    impl Sealed for f64 {}
}

/// The element types this crate computes with: `f32` and `f64` (sealed).
///
/// Cosine products (GEMM / GEMV) run in `Self`; norms, softmax, log-sum-exp and divergences are
/// always accumulated in `f64`.
///
/// ```
/// use eamet_align::Real;
/// assert_eq!(<f32 as Real>::from_f64(0.5).to_f64(), 0.5);
/// ```
pub trait Real: LinalgScalar + Send + Sync + std::fmt::Debug + sealed::Sealed {
    /// Widens (or copies) to `f64`.
    fn to_f64(self) -> f64;
    /// Rounds (or copies) from `f64`.
    fn from_f64(x: f64) -> Self;
}

impl Real for f32 {
    #[inline]
    fn to_f64(self) -> f64 {
        f64::from(self)
    }
    #[inline]
    fn from_f64(x: f64) -> Self {
        x as f32
    }
}

impl Real for f64 {
    #[inline]
    fn to_f64(self) -> f64 {
        self
    }
    #[inline]
    fn from_f64(x: f64) -> Self {
        x
    }
}

/// What to do with an all-zero row, whose direction (and so cosine similarity) is undefined.
///
/// ```
/// use eamet_align::ZeroVectors;
/// assert_eq!(ZeroVectors::default(), ZeroVectors::Reject);
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum ZeroVectors {
    /// Fail with [`AlignError::ZeroVector`] naming the row (default).
    #[default]
    Reject,
    /// Define `cos(0, x) = 0` for every `x` (what `torch.nn.functional.cosine_similarity` returns,
    /// since it clamps norms away from zero). A zero row then sees a uniform neighbourhood.
    CosineZero,
}

/// Rows scaled to unit Euclidean norm (or left at zero under [`ZeroVectors::CosineZero`]), with
/// the original norms. Built once, reused for any number of cosine products.
///
/// Norms are computed in `f64` with a max-abs rescaling, so huge or subnormal rows normalize
/// correctly; every entry is checked to be finite.
///
/// ```
/// use eamet_align::{NormalizedRows, Operand, ZeroVectors};
/// use ndarray::array;
/// let x = array![[3.0_f64, 4.0], [0.0, 2.0]];
/// let n = NormalizedRows::new(x.view(), Operand::Keys, ZeroVectors::Reject)?;
/// assert_eq!(n.norms(), &[5.0, 2.0]);
/// assert_eq!(n.view()[[0, 0]], 0.6);
/// # Ok::<(), eamet_align::AlignError>(())
/// ```
#[derive(Debug, Clone, PartialEq)]
pub struct NormalizedRows<T> {
    rows: Array2<T>,
    norms: Vec<f64>,
}

impl<T: Real> NormalizedRows<T> {
    /// Normalizes every row of `x` (rows in parallel). `operand` names `x` in errors.
    ///
    /// # Errors
    /// [`AlignError::NonFinite`] for a NaN/infinite entry and, under [`ZeroVectors::Reject`],
    /// [`AlignError::ZeroVector`] for an all-zero row; in both cases the lowest offending row.
    pub fn new(x: ArrayView2<'_, T>, operand: Operand, zero: ZeroVectors) -> Result<Self> {
        let mut rows = Array2::<T>::zeros(x.raw_dim());
        let results: Vec<Result<f64>> = rows
            .axis_iter_mut(Axis(0))
            .into_par_iter()
            .zip(x.axis_iter(Axis(0)).into_par_iter())
            .enumerate()
            .map(|(i, (out, row))| normalize_into(row, out, operand, i, zero))
            .collect();
        let norms = results.into_iter().collect::<Result<Vec<f64>>>()?;
        Ok(Self { rows, norms })
    }

    /// The normalized rows (`nrows × ncols`, standard layout).
    pub fn view(&self) -> ArrayView2<'_, T> {
        self.rows.view()
    }

    /// The Euclidean norm of each original row (0 for zero rows).
    pub fn norms(&self) -> &[f64] {
        &self.norms
    }

    /// Number of rows (facts).
    pub fn nrows(&self) -> usize {
        self.rows.nrows()
    }

    /// Number of columns (the vectors' dimension).
    pub fn ncols(&self) -> usize {
        self.rows.ncols()
    }
}

/// Normalizes `row` into `out`; returns the original norm.
pub(crate) fn normalize_into<T: Real>(
    row: ArrayView1<'_, T>,
    mut out: ArrayViewMut1<'_, T>,
    operand: Operand,
    row_index: usize,
    zero: ZeroVectors,
) -> Result<f64> {
    let mut max_abs = 0.0_f64;
    for (column, &x) in row.iter().enumerate() {
        let v = x.to_f64();
        if !v.is_finite() {
            return Err(AlignError::NonFinite {
                operand,
                row: row_index,
                column,
                value: v,
            });
        }
        max_abs = max_abs.max(v.abs());
    }
    if max_abs == 0.0 {
        return match zero {
            ZeroVectors::Reject => Err(AlignError::ZeroVector {
                operand,
                row: row_index,
            }),
            ZeroVectors::CosineZero => {
                out.fill(T::zero());
                Ok(0.0)
            }
        };
    }
    // Scale by the largest magnitude first: no overflow or underflow in the sum of squares.
    let scaled_norm = row
        .iter()
        .map(|&x| {
            let y = x.to_f64() / max_abs;
            y * y
        })
        .sum::<f64>()
        .sqrt();
    let norm = max_abs * scaled_norm;
    if norm.is_normal() {
        out.zip_mut_with(&row, |o, &x| *o = T::from_f64(x.to_f64() / norm));
    } else {
        // Overflowed or subnormal norm: divide in two steps.
        out.zip_mut_with(&row, |o, &x| {
            *o = T::from_f64(x.to_f64() / max_abs / scaled_norm)
        });
    }
    Ok(norm)
}

/// The full cosine-similarity matrix `C[i, j] = cos(a_i, b_j)` (`a.nrows() × b.nrows()`), by a
/// blocked GEMM of the normalized rows: row blocks of `block_rows` rows of `a` run in parallel
/// (rayon), each one GEMM against all of `b` written straight into its rows of the output. No
/// `N×N×d` intermediate; extra memory beyond the output is the two normalized copies.
///
/// For scores over many facts prefer [`misalignment`](crate::misalignment), which never holds the
/// whole `N×N` matrix.
///
/// ```
/// use eamet_align::{cosine_matrix, ZeroVectors};
/// use ndarray::array;
/// use std::num::NonZeroUsize;
/// let a = array![[1.0_f64, 0.0], [1.0, 1.0]];
/// let c = cosine_matrix(a.view(), a.view(), ZeroVectors::Reject, NonZeroUsize::new(1).unwrap())?;
/// assert!((c[[0, 1]] - 0.5_f64.sqrt()).abs() < 1e-15);
/// # Ok::<(), eamet_align::AlignError>(())
/// ```
///
/// # Errors
/// [`AlignError::DimensionMismatch`] if `a` and `b` have different column counts; the errors of
/// [`NormalizedRows::new`] (operands [`Operand::Left`] / [`Operand::Right`]).
pub fn cosine_matrix<T: Real>(
    a: ArrayView2<'_, T>,
    b: ArrayView2<'_, T>,
    zero: ZeroVectors,
    block_rows: NonZeroUsize,
) -> Result<Array2<T>> {
    if a.ncols() != b.ncols() {
        return Err(AlignError::DimensionMismatch {
            operand: Operand::Right,
            expected: a.ncols(),
            found: b.ncols(),
        });
    }
    let a = NormalizedRows::new(a, Operand::Left, zero)?;
    let b = NormalizedRows::new(b, Operand::Right, zero)?;
    Ok(normalized_cosine_matrix(&a, &b, block_rows))
}

/// [`cosine_matrix`] on rows that are already normalized. Callers guarantee equal column counts
/// (`general_mat_mul` would panic otherwise).
pub(crate) fn normalized_cosine_matrix<T: Real>(
    a: &NormalizedRows<T>,
    b: &NormalizedRows<T>,
    block_rows: NonZeroUsize,
) -> Array2<T> {
    let block = block_rows.get();
    let mut out = Array2::<T>::zeros((a.nrows(), b.nrows()));
    let av = a.view();
    let bt = b.view().reversed_axes();
    out.axis_chunks_iter_mut(Axis(0), block)
        .into_par_iter()
        .enumerate()
        .for_each(|(bi, mut out_block)| {
            let start = bi * block;
            let rows = av.slice(s![start..start + out_block.nrows(), ..]);
            general_mat_mul(T::one(), &rows, &bt, T::zero(), &mut out_block);
        });
    out
}
