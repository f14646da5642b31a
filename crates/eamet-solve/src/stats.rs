//! Streaming, mergeable second-moment statistics of keys.

use ndarray::{Array1, Array2, ArrayView1, ArrayView2, Axis};
use serde::{Deserialize, Serialize};

use crate::check;
use crate::error::{Result, SolveError};
use crate::linalg;

/// Streaming second-moment statistics of keys `k ∈ R^d`: `Σ k kᵀ`, `Σ k` and the number of keys
/// (tokens), accumulated in `f64`.
///
/// This is MEMIT's `C = E[k kᵀ]` (ALGORITHM.md §5): the **non-centred** second moment averaged
/// over tokens, [`second_moment`](Self::second_moment). The centred covariance is available too
/// ([`covariance`](Self::covariance)), but the solvers use the non-centred moment, as the
/// reference code does.
///
/// * Orientation: a batch is a matrix with **one key per row** (`rows × d`), the layout in which
///   a model's activations arrive. [`update`](Self::update) adds `KᵀK` with one BLAS `dsyrk`
///   call per batch.
/// * Shards: statistics are a sum, so [`merge`](Self::merge) of shards equals one pass over the
///   union (up to floating-point summation order; exactly for data whose sums are exact).
/// * Files: [`save`](Self::save) / [`load`](Self::load) in a portable safetensors file with JSON
///   metadata; see [`StatsProvenance`](crate::StatsProvenance).
///
/// Only the upper triangle of `Σ k kᵀ` is maintained internally (half the work); every accessor
/// returns the full symmetric matrix.
///
/// ```
/// use eamet_solve::KeyStats;
/// use ndarray::array;
///
/// let mut stats = KeyStats::new(2);
/// stats.update(array![[1.0, 2.0], [3.0, 4.0]].view())?;
/// stats.add_samples(1);
/// assert_eq!(stats.tokens(), 2);
/// assert_eq!(stats.second_moment()?, array![[5.0, 7.0], [7.0, 10.0]]);
/// assert_eq!(stats.mean()?, array![2.0, 3.0]);
/// # Ok::<(), eamet_solve::SolveError>(())
/// ```
#[derive(Clone, Debug)]
pub struct KeyStats {
    /// Σ k kᵀ; only the upper triangle (i ≤ j) is meaningful.
    upper: Array2<f64>,
    /// Σ k.
    sum: Array1<f64>,
    tokens: u64,
    samples: u64,
}

/// Enough of a [`KeyStats`] to tell whether two values are the same statistics (used by the
/// AlphaEdit state to refuse a projector built from other statistics). Cheap: O(d).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct StatsFingerprint {
    /// Key dimension.
    pub d: usize,
    /// Tokens accumulated.
    pub tokens: u64,
    /// Samples (documents) recorded.
    pub samples: u64,
    /// Bits of the trace of `Σ k kᵀ`.
    pub trace_bits: u64,
    /// Bits of the sum of `Σ k` over its entries.
    pub sum_bits: u64,
}

/// Largest number of `f64` values one f32 → f64 conversion chunk of
/// [`KeyStats::update_f32`] holds (128 MiB).
const F32_CHUNK_VALUES: usize = 1 << 24;

impl KeyStats {
    /// Empty statistics for keys of dimension `d`.
    pub fn new(d: usize) -> Self {
        KeyStats {
            upper: Array2::zeros((d, d)),
            sum: Array1::zeros(d),
            tokens: 0,
            samples: 0,
        }
    }

    /// Statistics from sums computed elsewhere (for example `KᵀK` and `Σk` accumulated on a GPU
    /// with libtorch and moved over once at the end): `sum_outer = Σ k kᵀ` (d×d, symmetric),
    /// `sum = Σ k` (d), over `tokens` keys from `samples` documents.
    ///
    /// `sum_outer` must be square, match `sum`, be finite and symmetric to within
    /// `1e-6 · max|entry|` (a GEMM-computed `KᵀK` is symmetric only up to rounding; the upper
    /// triangle is kept).
    pub fn from_sums(
        sum_outer: Array2<f64>,
        sum: Array1<f64>,
        tokens: u64,
        samples: u64,
    ) -> Result<Self> {
        let (r, c) = sum_outer.dim();
        if r != c || sum.len() != r {
            return Err(SolveError::ShapeMismatch {
                rule: "Σ k kᵀ must be d×d and Σ k must have d entries",
                left_name: "sum_outer",
                left_shape: vec![r, c],
                right_name: "sum",
                right_shape: vec![sum.len()],
            });
        }
        check::finite("sum_outer", sum_outer.view())?;
        check::finite_vec("sum", sum.view())?;
        let scale = sum_outer.iter().fold(0.0f64, |m, v| m.max(v.abs()));
        let tol = 1e-6 * scale;
        // Blocked so the mirrored (column) reads stay in cache at d ≈ 10⁴.
        const B: usize = 64;
        for i0 in (0..r).step_by(B) {
            for j0 in (i0..r).step_by(B) {
                for i in i0..(i0 + B).min(r) {
                    for j in j0.max(i + 1)..(j0 + B).min(r) {
                        let (a, b) = (sum_outer[[i, j]], sum_outer[[j, i]]);
                        if (a - b).abs() > tol {
                            return Err(SolveError::NotSymmetric {
                                matrix: "sum_outer",
                                row: i,
                                column: j,
                                value: a,
                                mirror: b,
                            });
                        }
                    }
                }
            }
        }
        let upper = sum_outer.as_standard_layout().into_owned();
        Ok(KeyStats {
            upper,
            sum,
            tokens,
            samples,
        })
    }

    /// Key dimension `d`.
    pub fn dim(&self) -> usize {
        self.sum.len()
    }

    /// Number of keys (tokens) accumulated.
    pub fn tokens(&self) -> u64 {
        self.tokens
    }

    /// Number of samples (documents / sequences) the tokens came from, as recorded with
    /// [`add_samples`](Self::add_samples). Informational, summed by [`merge`](Self::merge), and
    /// part of the cache identity of a saved file.
    pub fn samples(&self) -> u64 {
        self.samples
    }

    /// Records that `n` more samples (documents) were processed.
    pub fn add_samples(&mut self, n: u64) {
        self.samples = self.samples.saturating_add(n);
    }

    /// Adds a batch of keys, **one key per row** (`rows × d`, any memory layout): `Σ k kᵀ += KᵀK`
    /// (one `dsyrk`), `Σ k += column sums`, `tokens += rows`. A batch with no rows is a no-op.
    ///
    /// Errors: [`SolveError::ShapeMismatch`] if the batch does not have `d` columns,
    /// [`SolveError::NonFinite`] (naming the row) for NaN / ±∞; on error nothing is added.
    pub fn update(&mut self, batch: ArrayView2<'_, f64>) -> Result<()> {
        self.check_batch(batch.dim())?;
        if batch.nrows() == 0 {
            return Ok(());
        }
        check::finite("key batch", batch)?;
        linalg::syrk_upper(1.0, batch, 1.0, &mut self.upper)?;
        self.sum += &batch.sum_axis(Axis(0));
        self.tokens = self.tokens.saturating_add(batch.nrows() as u64);
        Ok(())
    }

    /// [`update`](Self::update) for `f32` keys (the usual activation dtype): rows are converted to
    /// `f64` in chunks of at most 128 MiB, each added with one `dsyrk`. Validation happens before
    /// anything is added.
    pub fn update_f32(&mut self, batch: ArrayView2<'_, f32>) -> Result<()> {
        self.check_batch(batch.dim())?;
        if batch.nrows() == 0 {
            return Ok(());
        }
        check::finite_f32("key batch", batch)?;
        let rows_per_chunk = (F32_CHUNK_VALUES / self.dim().max(1)).max(1);
        for chunk in batch.axis_chunks_iter(Axis(0), rows_per_chunk) {
            let converted = chunk.mapv(f64::from);
            linalg::syrk_upper(1.0, converted.view(), 1.0, &mut self.upper)?;
            self.sum += &converted.sum_axis(Axis(0));
        }
        self.tokens = self.tokens.saturating_add(batch.nrows() as u64);
        Ok(())
    }

    fn check_batch(&self, (rows, cols): (usize, usize)) -> Result<()> {
        if cols != self.dim() {
            return Err(SolveError::ShapeMismatch {
                rule: "a key batch needs one column per key dimension d",
                left_name: "key batch",
                left_shape: vec![rows, cols],
                right_name: "statistics (d×d)",
                right_shape: vec![self.dim(), self.dim()],
            });
        }
        Ok(())
    }

    /// Adds the statistics of another shard (same `d`): sums, tokens and samples add up.
    /// Associative and commutative up to floating-point summation order.
    pub fn merge(&mut self, other: &KeyStats) -> Result<()> {
        if other.dim() != self.dim() {
            return Err(SolveError::ShapeMismatch {
                rule: "only statistics of the same key dimension can be merged",
                left_name: "statistics",
                left_shape: vec![self.dim(), self.dim()],
                right_name: "other statistics",
                right_shape: vec![other.dim(), other.dim()],
            });
        }
        // The whole matrix, lower triangle included: it is never read, and a full add is one
        // contiguous pass.
        self.upper += &other.upper;
        self.sum += &other.sum;
        self.tokens = self.tokens.saturating_add(other.tokens);
        self.samples = self.samples.saturating_add(other.samples);
        Ok(())
    }

    /// `Σ k kᵀ` as a full symmetric d×d matrix (a copy).
    pub fn sum_outer(&self) -> Array2<f64> {
        let mut full = self.upper.clone();
        linalg::symmetrize_from_upper(&mut full);
        full
    }

    /// `Σ k` (d entries).
    pub fn sum(&self) -> ArrayView1<'_, f64> {
        self.sum.view()
    }

    fn nonempty(&self) -> Result<f64> {
        if self.tokens == 0 {
            return Err(SolveError::EmptyStats);
        }
        Ok(self.tokens as f64)
    }

    /// The mean key `E[k] = Σ k / tokens`. Errors with [`SolveError::EmptyStats`] when no token
    /// was accumulated.
    pub fn mean(&self) -> Result<Array1<f64>> {
        let n = self.nonempty()?;
        Ok(&self.sum / n)
    }

    /// MEMIT's `C = E[k kᵀ] = Σ k kᵀ / tokens`: the non-centred second moment averaged over
    /// tokens (full symmetric d×d copy). Errors with [`SolveError::EmptyStats`] on no tokens.
    pub fn second_moment(&self) -> Result<Array2<f64>> {
        let n = self.nonempty()?;
        let mut c = self.sum_outer();
        c /= n;
        Ok(c)
    }

    /// The centred covariance `E[k kᵀ] − E[k] E[k]ᵀ` (population form: divided by `tokens`, not
    /// `tokens − 1`). Errors with [`SolveError::EmptyStats`] on no tokens.
    pub fn covariance(&self) -> Result<Array2<f64>> {
        let mut c = self.second_moment()?;
        let mu = self.mean()?;
        let d = self.dim();
        for i in 0..d {
            for j in 0..d {
                c[[i, j]] -= mu[i] * mu[j];
            }
        }
        Ok(c)
    }

    /// The upper triangle of `Σ k kᵀ` (the strict lower triangle is unspecified).
    pub(crate) fn upper(&self) -> &Array2<f64> {
        &self.upper
    }

    /// Checks the statistics are usable by a solver: non-empty and finite.
    pub(crate) fn check_usable(&self) -> Result<()> {
        self.nonempty()?;
        check::finite_upper("key statistics Σ k kᵀ", self.upper.view())
    }

    /// A cheap identity of these statistics.
    pub fn fingerprint(&self) -> StatsFingerprint {
        let trace: f64 = self.upper.diag().sum();
        StatsFingerprint {
            d: self.dim(),
            tokens: self.tokens,
            samples: self.samples,
            trace_bits: trace.to_bits(),
            sum_bits: self.sum.sum().to_bits(),
        }
    }

    pub(crate) fn from_parts_unchecked(
        upper: Array2<f64>,
        sum: Array1<f64>,
        tokens: u64,
        samples: u64,
    ) -> Self {
        KeyStats {
            upper,
            sum,
            tokens,
            samples,
        }
    }
}
