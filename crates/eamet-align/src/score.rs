//! The misalignment score `A(i)` over all facts, blocked and streamed over row blocks.

use std::num::NonZeroUsize;

use ndarray::parallel::prelude::*;
use ndarray::{s, ArrayView2};

use crate::cosine::{NormalizedRows, Real, ZeroVectors};
use crate::divergence::{Divergence, KlDirection, Neighbourhood};
use crate::error::{AlignError, Operand, Result};
use crate::softmax::Temperature;

/// Default number of rows per block in the blocked score.
pub const DEFAULT_BLOCK_ROWS: usize = 128;

/// How to score: temperature, neighbourhood, divergence, zero-row policy and block size. Every
/// field is valid by construction ([`Temperature`] and [`NonZeroUsize`] are checked types).
///
/// ```
/// use eamet_align::{KlDirection, Neighbourhood, ScoreConfig, Temperature};
/// let cfg = ScoreConfig::default();
/// assert_eq!(cfg.tau, Temperature::default()); // 0.07
/// assert_eq!(cfg.neighbourhood, Neighbourhood::Prior);
/// assert_eq!(cfg.divergence, KlDirection::ResidualKey); // the paper's KL(P_r || P_k)
/// let loss_direction = ScoreConfig { divergence: KlDirection::KeyResidual, ..cfg };
/// # let _ = loss_direction;
/// ```
#[derive(Debug, Clone, PartialEq)]
pub struct ScoreConfig<D = KlDirection> {
    /// Softmax temperature τ (default 0.07).
    pub tau: Temperature,
    /// Which facts form each fact's neighbourhood (default [`Neighbourhood::Prior`], `j < i`).
    pub neighbourhood: Neighbourhood,
    /// The per-fact divergence (default [`KlDirection::ResidualKey`], `KL(P_r ‖ P_k)`).
    pub divergence: D,
    /// Zero rows: reject (default) or give them cosine 0 with everything.
    pub zero_vectors: ZeroVectors,
    /// Rows per block (default [`DEFAULT_BLOCK_ROWS`]): the working memory is about
    /// `2 · threads · block_rows · N` elements.
    pub block_rows: NonZeroUsize,
}

impl Default for ScoreConfig<KlDirection> {
    fn default() -> Self {
        Self {
            tau: Temperature::default(),
            neighbourhood: Neighbourhood::default(),
            divergence: KlDirection::default(),
            zero_vectors: ZeroVectors::default(),
            block_rows: NonZeroUsize::new(DEFAULT_BLOCK_ROWS).unwrap_or(NonZeroUsize::MIN),
        }
    }
}

/// Per-fact misalignment scores `A(i)`, stating how they were computed.
///
/// A fact whose neighbourhood is empty (fact 0 under [`Neighbourhood::Prior`]; the only fact
/// when `N = 1` under [`Neighbourhood::AllOthers`]) gets `A(i) = 0`, as in the reference loss
/// ("for fact 0 both are 0"), and is left out of [`Misalignment::summary`].
///
/// ```
/// use eamet_align::{misalignment, ScoreConfig};
/// use ndarray::array;
/// let keys = array![[1.0_f64, 0.0], [0.0, 1.0], [1.0, 1.0]];
/// let residuals = array![[1.0_f64, 0.0], [0.0, 1.0], [1.0, -1.0]];
/// let m = misalignment(keys.view(), residuals.view(), &ScoreConfig::default())?;
/// assert_eq!(m.per_fact().len(), 3);
/// assert_eq!(m.per_fact()[0], 0.0); // empty neighbourhood
/// assert!(m.total() > 0.0);
/// let s = m.summary().unwrap();
/// assert_eq!(s.count, 2);
/// println!("{m}"); // "A(i) = KL(P_r || P_k) over j < i, τ = 0.07, N = 3: total …"
/// # Ok::<(), eamet_align::AlignError>(())
/// ```
#[derive(Debug, Clone, PartialEq)]
pub struct Misalignment<D = KlDirection> {
    per_fact: Vec<f64>,
    divergence: D,
    neighbourhood: Neighbourhood,
    tau: Temperature,
}

/// Summary statistics of the per-fact scores over the facts with a non-empty neighbourhood.
/// Quantiles interpolate linearly between order statistics (NumPy's default, type 7).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Summary {
    /// Number of facts summarized.
    pub count: usize,
    /// Sum of their scores (equals [`Misalignment::total`]).
    pub total: f64,
    /// Mean score.
    pub mean: f64,
    /// Smallest score.
    pub min: f64,
    /// 25th percentile.
    pub p25: f64,
    /// Median.
    pub median: f64,
    /// 75th percentile.
    pub p75: f64,
    /// 90th percentile.
    pub p90: f64,
    /// 99th percentile.
    pub p99: f64,
    /// Largest score.
    pub max: f64,
}

impl<D: Divergence> Misalignment<D> {
    /// Assembles a result from per-fact scores (for callers that compute `A(i)` themselves, e.g.
    /// from [`AlignmentStream::prior_score`](crate::AlignmentStream::prior_score)).
    pub fn from_scores(
        per_fact: Vec<f64>,
        divergence: D,
        neighbourhood: Neighbourhood,
        tau: Temperature,
    ) -> Self {
        Self {
            per_fact,
            divergence,
            neighbourhood,
            tau,
        }
    }

    /// `A(i)` for every fact, in input order.
    pub fn per_fact(&self) -> &[f64] {
        &self.per_fact
    }

    /// The divergence used (e.g. which KL direction).
    pub fn divergence(&self) -> &D {
        &self.divergence
    }

    /// The neighbourhood used.
    pub fn neighbourhood(&self) -> Neighbourhood {
        self.neighbourhood
    }

    /// The temperature used.
    pub fn tau(&self) -> Temperature {
        self.tau
    }

    /// Total misalignment `Σ_i A(i)`.
    pub fn total(&self) -> f64 {
        self.per_fact.iter().sum()
    }

    fn scored(&self) -> Vec<f64> {
        let n = self.per_fact.len();
        self.per_fact
            .iter()
            .enumerate()
            .filter(|&(i, _)| self.neighbourhood.len(i, n) > 0)
            .map(|(_, &a)| a)
            .collect()
    }

    /// The `q`-quantile (`0 ≤ q ≤ 1`, clamped) of the scores of facts with a non-empty
    /// neighbourhood; `None` if there are none or `q` is NaN.
    pub fn quantile(&self, q: f64) -> Option<f64> {
        let mut v = self.scored();
        v.sort_by(f64::total_cmp);
        quantile_sorted(&v, q)
    }

    /// Count, total, mean and quantiles over facts with a non-empty neighbourhood; `None` if
    /// there are none (`N ≤ 1`).
    pub fn summary(&self) -> Option<Summary> {
        let mut v = self.scored();
        if v.is_empty() {
            return None;
        }
        v.sort_by(f64::total_cmp);
        let total: f64 = v.iter().sum();
        let q = |p| quantile_sorted(&v, p).unwrap_or(f64::NAN);
        Some(Summary {
            count: v.len(),
            total,
            mean: total / v.len() as f64,
            min: v[0],
            p25: q(0.25),
            median: q(0.5),
            p75: q(0.75),
            p90: q(0.9),
            p99: q(0.99),
            max: v[v.len() - 1],
        })
    }
}

fn quantile_sorted(v: &[f64], q: f64) -> Option<f64> {
    if v.is_empty() || q.is_nan() {
        return None;
    }
    let h = q.clamp(0.0, 1.0) * (v.len() - 1) as f64;
    let lo = h.floor() as usize;
    let hi = (lo + 1).min(v.len() - 1);
    Some(v[lo] + (h - lo as f64) * (v[hi] - v[lo]))
}

impl<D: Divergence> std::fmt::Display for Misalignment<D> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "A(i) = {} over {}, τ = {}, N = {}: total {:.6}",
            self.divergence.formula(),
            self.neighbourhood,
            self.tau,
            self.per_fact.len(),
            self.total()
        )?;
        if let Some(s) = self.summary() {
            write!(
                f,
                ", mean {:.6}, median {:.6}, p90 {:.6}, max {:.6}",
                s.mean, s.median, s.p90, s.max
            )?;
        }
        Ok(())
    }
}

/// Scores every fact: `A(i) = D(s_k(i, ·), s_r(i, ·))` over fact `i`'s neighbourhood, with
/// `s_k`, `s_r` the cosine similarities between rows of `keys` (N × d_key) and of `residuals`
/// (N × d_res).
///
/// Row blocks of `cfg.block_rows` facts run in parallel (rayon); each computes its block of both
/// cosine matrices by one GEMM per matrix (`block × N`, or `block × block_end` for
/// [`Neighbourhood::Prior`], which so does half the work), turns each row into the divergence,
/// and drops the block. Memory beyond the normalized copies of the inputs is
/// `O(threads · block_rows · N)`; the `N × N` matrices are never held. Softmax and divergence run
/// in `f64`. `N = 0` gives an empty result.
///
/// ```
/// use eamet_align::{misalignment, KlDirection, Neighbourhood, ScoreConfig};
/// use ndarray::array;
/// // Residuals are the keys rotated by 90°: same neighbourhoods, zero misalignment.
/// let keys = array![[1.0_f64, 0.2], [0.3, 1.0], [-1.0, 0.5]];
/// let residuals = array![[-0.2_f64, 1.0], [-1.0, 0.3], [-0.5, -1.0]];
/// let cfg = ScoreConfig { neighbourhood: Neighbourhood::AllOthers, ..ScoreConfig::default() };
/// let m = misalignment(keys.view(), residuals.view(), &cfg)?;
/// assert!(m.total().abs() < 1e-12);
/// assert_eq!(*m.divergence(), KlDirection::ResidualKey);
/// # Ok::<(), eamet_align::AlignError>(())
/// ```
///
/// # Errors
/// [`AlignError::RowCountMismatch`] if the row counts differ; [`AlignError::NonFinite`] /
/// [`AlignError::ZeroVector`] naming [`Operand::Keys`] or [`Operand::Residuals`] and the row.
pub fn misalignment<T: Real, D: Divergence + Clone>(
    keys: ArrayView2<'_, T>,
    residuals: ArrayView2<'_, T>,
    cfg: &ScoreConfig<D>,
) -> Result<Misalignment<D>> {
    check_rows(keys.nrows(), residuals.nrows())?;
    let k = NormalizedRows::new(keys, Operand::Keys, cfg.zero_vectors)?;
    let r = NormalizedRows::new(residuals, Operand::Residuals, cfg.zero_vectors)?;
    misalignment_normalized(&k, &r, cfg)
}

fn check_rows(keys: usize, residuals: usize) -> Result<()> {
    if keys == residuals {
        Ok(())
    } else {
        Err(AlignError::RowCountMismatch { keys, residuals })
    }
}

/// [`misalignment`] on inputs normalized beforehand (e.g. keys normalized once and scored
/// against several residual sets). `cfg.zero_vectors` is not consulted: the policy given to
/// [`NormalizedRows::new`] already applied.
///
/// ```
/// use eamet_align::{misalignment_normalized, NormalizedRows, Operand, ScoreConfig, ZeroVectors};
/// use ndarray::array;
/// let keys = array![[1.0_f32, 0.0], [0.0, 1.0], [1.0, 1.0]];
/// let k = NormalizedRows::new(keys.view(), Operand::Keys, ZeroVectors::Reject)?;
/// let score = |residuals: ndarray::Array2<f32>| -> Result<f64, eamet_align::AlignError> {
///     let r = NormalizedRows::new(residuals.view(), Operand::Residuals, ZeroVectors::Reject)?;
///     Ok(misalignment_normalized(&k, &r, &ScoreConfig::default())?.total())
/// };
/// assert_eq!(score(keys.clone())?, 0.0); // residuals = keys: aligned
/// assert!(score(array![[1.0, 0.0], [1.0, 1.0], [0.0, 1.0]])? > 0.0);
/// # Ok::<(), eamet_align::AlignError>(())
/// ```
///
/// # Errors
/// [`AlignError::RowCountMismatch`] if the row counts differ.
pub fn misalignment_normalized<T: Real, D: Divergence + Clone>(
    keys: &NormalizedRows<T>,
    residuals: &NormalizedRows<T>,
    cfg: &ScoreConfig<D>,
) -> Result<Misalignment<D>> {
    check_rows(keys.nrows(), residuals.nrows())?;
    let n = keys.nrows();
    let block = cfg.block_rows.get();
    let kv = keys.view();
    let rv = residuals.view();
    let nb = cfg.neighbourhood;
    let per_block: Vec<Vec<f64>> = (0..n.div_ceil(block))
        .into_par_iter()
        .map(|bi| {
            let start = bi * block;
            let end = (start + block).min(n);
            let cols = nb.column_limit(end, n);
            let sk = kv
                .slice(s![start..end, ..])
                .dot(&kv.slice(s![..cols, ..]).t());
            let sr = rv
                .slice(s![start..end, ..])
                .dot(&rv.slice(s![..cols, ..]).t());
            let mut kbuf = Vec::with_capacity(cols);
            let mut rbuf = Vec::with_capacity(cols);
            (start..end)
                .map(|i| {
                    kbuf.clear();
                    rbuf.clear();
                    let (krow, rrow) = (sk.row(i - start), sr.row(i - start));
                    for span in nb.spans(i, n) {
                        kbuf.extend(krow.slice(s![span.clone()]).iter().map(|x| x.to_f64()));
                        rbuf.extend(rrow.slice(s![span]).iter().map(|x| x.to_f64()));
                    }
                    if kbuf.is_empty() {
                        0.0
                    } else {
                        cfg.divergence.divergence(&kbuf, &rbuf, cfg.tau)
                    }
                })
                .collect()
        })
        .collect();
    Ok(Misalignment {
        per_fact: per_block.into_iter().flatten().collect(),
        divergence: cfg.divergence.clone(),
        neighbourhood: nb,
        tau: cfg.tau,
    })
}
