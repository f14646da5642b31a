//! Neighbourhood choice and divergence between key and residual neighbourhood distributions.

use std::ops::Range;

use crate::softmax::{kl_scaled, Temperature};

/// Which facts `j` form fact `i`'s neighbourhood.
///
/// ```
/// use eamet_align::Neighbourhood;
/// assert_eq!(Neighbourhood::AllOthers.len(1, 4), 3);
/// assert_eq!(Neighbourhood::Prior.len(1, 4), 1);
/// assert_eq!(Neighbourhood::AllOthers.spans(1, 4), [0..1, 2..4]);
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum Neighbourhood {
    /// Every other fact, `j ≠ i` (ALGORITHM.md §4, diagnostic form). Order-independent: permuting
    /// the facts permutes the scores.
    AllOthers,
    /// The earlier facts, `j < i` (the set EAMET's loss optimizes, §3, and the paper's score).
    /// Fact 0 has an empty neighbourhood. Default.
    #[default]
    Prior,
}

impl Neighbourhood {
    /// The neighbourhood of fact `i` among `n` facts as (at most) two index ranges, in column order.
    pub fn spans(self, i: usize, n: usize) -> [Range<usize>; 2] {
        let i = i.min(n);
        match self {
            Neighbourhood::AllOthers => [0..i, (i + 1).min(n)..n],
            Neighbourhood::Prior => [0..i, i..i],
        }
    }

    /// Size of fact `i`'s neighbourhood among `n` facts.
    pub fn len(self, i: usize, n: usize) -> usize {
        self.spans(i, n).iter().map(|r| r.len()).sum()
    }

    /// Columns that the rows of a row block ending (exclusive) at `block_end` can touch.
    pub(crate) fn column_limit(self, block_end: usize, n: usize) -> usize {
        match self {
            Neighbourhood::AllOthers => n,
            Neighbourhood::Prior => block_end.min(n),
        }
    }
}

impl std::fmt::Display for Neighbourhood {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Neighbourhood::AllOthers => "j ≠ i",
            Neighbourhood::Prior => "j < i",
        })
    }
}

/// A per-fact divergence between fact `i`'s key and residual neighbourhoods: the seam for
/// scoring with something other than KL.
///
/// Implementors receive the cosine similarities over the neighbourhood (same length ≥ 1, same
/// column order, finite, in `[-1, 1]` up to rounding) and the temperature; they are called from
/// several threads at once.
///
/// ```
/// use eamet_align::{Divergence, Temperature};
/// /// Mean squared difference of the raw cosines.
/// #[derive(Clone)]
/// struct CosineMse;
/// impl Divergence for CosineMse {
///     fn divergence(&self, k: &[f64], r: &[f64], _tau: Temperature) -> f64 {
///         k.iter().zip(r).map(|(a, b)| (a - b).powi(2)).sum::<f64>() / k.len() as f64
///     }
///     fn formula(&self) -> String {
///         "mean (s_k - s_r)^2".into()
///     }
/// }
/// assert_eq!(CosineMse.divergence(&[1.0, 0.0], &[0.0, 0.0], Temperature::default()), 0.5);
/// ```
pub trait Divergence: Sync {
    /// The divergence for one fact, from its key cosines `s_k(j)` and residual cosines `s_r(j)`.
    fn divergence(&self, key_cosines: &[f64], residual_cosines: &[f64], tau: Temperature) -> f64;
    /// A short formula naming what is computed, for reports (e.g. `KL(P_r || P_k)`).
    fn formula(&self) -> String;
}

/// Direction of the KL divergence between `P_k = softmax(s_k/τ)` and `P_r = softmax(s_r/τ)`.
///
/// The paper writes `A(i) = KL(P_r ‖ P_k)`; the reference code's loss computes `KL(P_k ‖ P_r)`.
/// [`Default`] is the paper's direction, for reporting. The exact KL is computed here, from
/// log-softmax in `f64`, with no ε (the ε-smoothed form of the loss lives in
/// [`FactTargets::kl_loss`](crate::FactTargets::kl_loss)).
///
/// ```
/// use eamet_align::{Divergence, KlDirection, Temperature};
/// let tau = Temperature::new(1.0)?;
/// let (k, r) = ([0.0, 1.0], [1.0, 0.0]);
/// let paper = KlDirection::default();
/// assert_eq!(paper, KlDirection::ResidualKey);
/// assert_eq!(paper.formula(), "KL(P_r || P_k)");
/// // Symmetric case: both directions agree here.
/// let a = paper.divergence(&k, &r, tau);
/// let b = KlDirection::KeyResidual.divergence(&k, &r, tau);
/// assert!((a - b).abs() < 1e-15 && a > 0.0);
/// # Ok::<(), eamet_align::AlignError>(())
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum KlDirection {
    /// `KL(P_r ‖ P_k) = Σ_j P_r(j) ln(P_r(j)/P_k(j))`, the paper's `A(i)`. Default.
    #[default]
    ResidualKey,
    /// `KL(P_k ‖ P_r) = Σ_j P_k(j) ln(P_k(j)/P_r(j))`, the direction of the reference loss.
    KeyResidual,
}

impl Divergence for KlDirection {
    fn divergence(&self, key_cosines: &[f64], residual_cosines: &[f64], tau: Temperature) -> f64 {
        if key_cosines.is_empty() || key_cosines.len() != residual_cosines.len() {
            return 0.0;
        }
        let scale = 1.0 / tau.get();
        match self {
            KlDirection::ResidualKey => kl_scaled(residual_cosines, key_cosines, scale),
            KlDirection::KeyResidual => kl_scaled(key_cosines, residual_cosines, scale),
        }
    }

    fn formula(&self) -> String {
        match self {
            KlDirection::ResidualKey => "KL(P_r || P_k)".to_owned(),
            KlDirection::KeyResidual => "KL(P_k || P_r)".to_owned(),
        }
    }
}

impl std::fmt::Display for KlDirection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.formula())
    }
}
