//! The constant targets of EAMET's alignment loss, the loss helpers, and the streaming state.

use std::num::NonZeroUsize;

use ndarray::{s, Array1, Array2, ArrayView1, ArrayView2};

use crate::cosine::{normalize_into, NormalizedRows, Real, ZeroVectors};
use crate::divergence::Divergence;
use crate::error::{AlignError, Operand, Result};
use crate::softmax::{softmax_scaled, Temperature};

/// The ε inside the logarithm of the reference alignment KL loss: `Σ p_j ln((p_j+ε)/(q_j+ε))`.
pub const KL_EPSILON: f64 = 1e-8;

/// The number of top key neighbours in the MSE term (hard-coded 50 in the reference).
pub const DEFAULT_TOP_M: usize = 50;

/// Parameters of the alignment targets: τ, top-M and the zero-row policy.
///
/// ```
/// use eamet_align::TargetConfig;
/// let cfg = TargetConfig::default();
/// assert_eq!((cfg.tau.get(), cfg.top_m.get()), (0.07, 50));
/// ```
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct TargetConfig {
    /// Temperature τ of both neighbourhood distributions and of the top-M weights (default 0.07).
    pub tau: Temperature,
    /// Size `M` of the top key-neighbour set `T` (default 50; fewer when `i < M`).
    pub top_m: NonZeroUsize,
    /// Zero rows among keys, saved residuals and the live residual: reject (default) or give
    /// them cosine 0 with everything. The reference optimizer may start from `δ_i = 0`; use
    /// [`ZeroVectors::CosineZero`] to evaluate the loss there.
    pub zero_vectors: ZeroVectors,
}

impl Default for TargetConfig {
    fn default() -> Self {
        Self {
            tau: Temperature::default(),
            top_m: NonZeroUsize::new(DEFAULT_TOP_M).unwrap_or(NonZeroUsize::MIN),
            zero_vectors: ZeroVectors::default(),
        }
    }
}

/// What EAMET's alignment loss for fact `i` needs that does not depend on `δ_i` (ALGORITHM.md §3):
/// the key cosines `s_k(j) = cos(k_i, k_j)` for `j < i`, `P_k = softmax_{j<i}(s_k/τ)`, the top set
/// `T` (the `M` largest `s_k(j)`, ties to the lower index, ordered by decreasing cosine) with
/// their cosines and weights `w = softmax_{j∈T}(s_k/τ)`. All in `f64`. For fact 0 everything is
/// empty and both losses are 0.
///
/// ```
/// use eamet_align::{AlignmentStream, TargetConfig};
/// use ndarray::array;
/// let keys = array![[1.0_f64, 0.0], [0.0, 1.0], [1.0, 1.0]];
/// let stream = AlignmentStream::new(keys.view(), 2, TargetConfig::default())?;
/// let t = stream.targets(2)?;
/// assert_eq!(t.key_cosines().len(), 2);
/// assert!((t.key_cosines()[0] - 0.5_f64.sqrt()).abs() < 1e-15);
/// assert!((t.key_probs()[0] - 0.5).abs() < 1e-15); // equal cosines: uniform
/// // Residual cosines equal to the key cosines: the MSE is 0, the KL ~0.
/// let loss = t.loss(t.key_cosines())?;
/// assert!(loss.mse == 0.0 && loss.kl.abs() < 1e-15);
/// # Ok::<(), eamet_align::AlignError>(())
/// ```
#[derive(Debug, Clone, PartialEq)]
pub struct FactTargets {
    fact: usize,
    tau: Temperature,
    key_cosines: Vec<f64>,
    key_probs: Vec<f64>,
    top_indices: Vec<usize>,
    top_cosines: Vec<f64>,
    top_weights: Vec<f64>,
}

/// Values of the two alignment loss terms, unweighted (multiply by `cs_factor` / `mse_factor`).
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct AlignmentLoss {
    /// `L_KL = Σ_{j<i} p_j ln((p_j+ε)/(q_j+ε))`, `p = P_k`, `q = softmax(s_r/τ)`, ε = 1e-8
    /// (direction `KL(P_k ‖ P_r)`, as in the reference loss).
    pub kl: f64,
    /// `L_MSE = Σ_{j∈T} w_j (s_k(j) − s_r(j))²`.
    pub mse: f64,
}

/// Gradients of the two loss terms with respect to the live residual `δ_i` (`f64`, length
/// `d_res`), for checking an autograd implementation.
#[derive(Debug, Clone, PartialEq)]
pub struct AlignmentGradient {
    /// The loss values at `δ_i`.
    pub loss: AlignmentLoss,
    /// `∂L_KL/∂δ_i`.
    pub kl: Array1<f64>,
    /// `∂L_MSE/∂δ_i`.
    pub mse: Array1<f64>,
}

impl FactTargets {
    /// Builds the targets of fact `fact` from its key cosines to the earlier facts
    /// (`key_cosines[j] = cos(k_fact, k_j)`, `j < fact`; so `fact = key_cosines.len()`).
    ///
    /// ```
    /// use eamet_align::{FactTargets, Temperature};
    /// use std::num::NonZeroUsize;
    /// let t = FactTargets::from_key_cosines(&[0.1, 0.9, 0.5], Temperature::default(), NonZeroUsize::new(2).unwrap())?;
    /// assert_eq!(t.fact(), 3);
    /// assert_eq!(t.top_indices(), &[1, 2]);
    /// # Ok::<(), eamet_align::AlignError>(())
    /// ```
    ///
    /// # Errors
    /// [`AlignError::NonFinite`] (operand [`Operand::Keys`], row = `fact`) for a NaN/infinite cosine.
    pub fn from_key_cosines(
        key_cosines: &[f64],
        tau: Temperature,
        top_m: NonZeroUsize,
    ) -> Result<Self> {
        let fact = key_cosines.len();
        if let Some(j) = key_cosines.iter().position(|x| !x.is_finite()) {
            return Err(AlignError::NonFinite {
                operand: Operand::Keys,
                row: fact,
                column: j,
                value: key_cosines[j],
            });
        }
        let scale = 1.0 / tau.get();
        let key_probs = if fact == 0 {
            Vec::new()
        } else {
            softmax_scaled(key_cosines, scale)
        };
        let by_rank =
            |a: &usize, b: &usize| key_cosines[*b].total_cmp(&key_cosines[*a]).then(a.cmp(b));
        let m = top_m.get().min(fact);
        let mut top_indices: Vec<usize> = (0..fact).collect();
        if m < fact {
            top_indices.select_nth_unstable_by(m - 1, by_rank);
            top_indices.truncate(m);
        }
        top_indices.sort_unstable_by(by_rank);
        let top_cosines: Vec<f64> = top_indices.iter().map(|&j| key_cosines[j]).collect();
        let top_weights = if m == 0 {
            Vec::new()
        } else {
            softmax_scaled(&top_cosines, scale)
        };
        Ok(Self {
            fact,
            tau,
            key_cosines: key_cosines.to_vec(),
            key_probs,
            top_indices,
            top_cosines,
            top_weights,
        })
    }

    /// The fact `i` these targets belong to (= the number of earlier facts).
    pub fn fact(&self) -> usize {
        self.fact
    }

    /// The temperature used.
    pub fn tau(&self) -> Temperature {
        self.tau
    }

    /// `s_k(j) = cos(k_i, k_j)` for `j < i`.
    pub fn key_cosines(&self) -> &[f64] {
        &self.key_cosines
    }

    /// `P_k(j) = softmax_{j<i}(s_k/τ)`.
    pub fn key_probs(&self) -> &[f64] {
        &self.key_probs
    }

    /// The top set `T`: indices `j < i` of the `M` largest key cosines, by decreasing cosine.
    pub fn top_indices(&self) -> &[usize] {
        &self.top_indices
    }

    /// `s_k(j)` for `j ∈ T`, aligned with [`top_indices`](Self::top_indices).
    pub fn top_cosines(&self) -> &[f64] {
        &self.top_cosines
    }

    /// `w_j = softmax_{j∈T}(s_k/τ)`, aligned with [`top_indices`](Self::top_indices).
    pub fn top_weights(&self) -> &[f64] {
        &self.top_weights
    }

    fn check_residual_cosines(&self, s_r: &[f64]) -> Result<()> {
        if s_r.len() != self.fact {
            return Err(AlignError::DimensionMismatch {
                operand: Operand::ResidualCosines,
                expected: self.fact,
                found: s_r.len(),
            });
        }
        match s_r.iter().position(|x| !x.is_finite()) {
            Some(j) => Err(AlignError::NonFinite {
                operand: Operand::ResidualCosines,
                row: self.fact,
                column: j,
                value: s_r[j],
            }),
            None => Ok(()),
        }
    }

    /// `L_KL = Σ_{j<i} p_j ln((p_j+ε)/(q_j+ε))` with `q = softmax(s_r/τ)` and ε = [`KL_EPSILON`],
    /// given the residual cosines `s_r(j) = cos(δ_i, δ_j)`, `j < i`. 0 for fact 0.
    ///
    /// # Errors
    /// [`AlignError::DimensionMismatch`] unless `s_r.len() == fact`; [`AlignError::NonFinite`].
    pub fn kl_loss(&self, residual_cosines: &[f64]) -> Result<f64> {
        self.check_residual_cosines(residual_cosines)?;
        Ok(self.kl_unchecked(residual_cosines))
    }

    fn kl_unchecked(&self, s_r: &[f64]) -> f64 {
        if self.fact == 0 {
            return 0.0;
        }
        let q = softmax_scaled(s_r, 1.0 / self.tau.get());
        self.key_probs
            .iter()
            .zip(&q)
            .map(|(&p, &q)| p * ((p + KL_EPSILON) / (q + KL_EPSILON)).ln())
            .sum()
    }

    /// `L_MSE = Σ_{j∈T} w_j (s_k(j) − s_r(j))²`, given `s_r(j)` for all `j < i`. 0 for fact 0.
    ///
    /// # Errors
    /// As [`kl_loss`](Self::kl_loss).
    pub fn mse_loss(&self, residual_cosines: &[f64]) -> Result<f64> {
        self.check_residual_cosines(residual_cosines)?;
        Ok(self.mse_unchecked(residual_cosines))
    }

    fn mse_unchecked(&self, s_r: &[f64]) -> f64 {
        self.top_indices
            .iter()
            .zip(&self.top_cosines)
            .zip(&self.top_weights)
            .map(|((&j, &sk), &w)| w * (sk - s_r[j]).powi(2))
            .sum()
    }

    /// Both terms, [`kl_loss`](Self::kl_loss) and [`mse_loss`](Self::mse_loss).
    ///
    /// # Errors
    /// As [`kl_loss`](Self::kl_loss).
    pub fn loss(&self, residual_cosines: &[f64]) -> Result<AlignmentLoss> {
        self.check_residual_cosines(residual_cosines)?;
        Ok(AlignmentLoss {
            kl: self.kl_unchecked(residual_cosines),
            mse: self.mse_unchecked(residual_cosines),
        })
    }

    /// `∂L_KL/∂s_r(j)` and `∂L_MSE/∂s_r(j)` for `j < i` (checked inputs).
    fn cosine_gradients(&self, s_r: &[f64]) -> (Vec<f64>, Vec<f64>) {
        let i = self.fact;
        let mut g_kl = vec![0.0; i];
        let mut g_mse = vec![0.0; i];
        if i == 0 {
            return (g_kl, g_mse);
        }
        let inv_tau = 1.0 / self.tau.get();
        let q = softmax_scaled(s_r, inv_tau);
        // L = Σ p_j ln(p_j+ε) − Σ p_j ln(q_j+ε); ∂q_j/∂s_l = q_j (δ_jl − q_l)/τ.
        let c: f64 = self
            .key_probs
            .iter()
            .zip(&q)
            .map(|(&p, &q)| p * q / (q + KL_EPSILON))
            .sum();
        for ((g, &p), &q) in g_kl.iter_mut().zip(&self.key_probs).zip(&q) {
            *g = inv_tau * q * (c - p / (q + KL_EPSILON));
        }
        for ((&j, &sk), &w) in self
            .top_indices
            .iter()
            .zip(&self.top_cosines)
            .zip(&self.top_weights)
        {
            g_mse[j] = -2.0 * w * (sk - s_r[j]);
        }
        (g_kl, g_mse)
    }
}

/// The streaming form used while optimizing facts in order: it holds the normalized keys of all
/// `N` facts and the normalized residuals `δ_0 … δ_{s−1}` saved so far. [`push`](Self::push)
/// saves one residual in `O(d_res)`; [`targets`](Self::targets) and
/// [`residual_cosines`](Self::residual_cosines) for fact `i` cost `O(i·d)` (one GEMV); nothing
/// recomputes an `N × N` matrix.
///
/// ```
/// use eamet_align::{AlignmentStream, KlDirection, TargetConfig};
/// use ndarray::array;
/// let keys = array![[1.0_f32, 0.0, 0.0], [0.8, 0.6, 0.0], [0.0, 0.6, 0.8]];
/// let mut stream = AlignmentStream::new(keys.view(), 2, TargetConfig::default())?;
/// stream.push(array![1.0_f32, 0.0].view())?; // δ_0
/// // Optimizing fact 1: targets once, then per step the cosines of the live δ_1.
/// let targets = stream.targets(1)?;
/// let delta = array![0.8_f32, 0.6];
/// let s_r = stream.residual_cosines(1, delta.view())?;
/// let loss = targets.loss(&s_r)?;
/// assert!(loss.mse < 1e-12); // cos(δ_1, δ_0) = 0.8 = cos(k_1, k_0)
/// stream.push(delta.view())?;
/// assert_eq!(stream.saved(), 2);
/// let a1 = stream.prior_score(1, &KlDirection::default())?;
/// assert_eq!(a1, 0.0); // a one-element neighbourhood is always aligned
/// # Ok::<(), eamet_align::AlignError>(())
/// ```
#[derive(Debug, Clone)]
pub struct AlignmentStream<T> {
    keys: NormalizedRows<T>,
    residuals: Array2<T>,
    residual_norms: Vec<f64>,
    config: TargetConfig,
}

impl<T: Real> AlignmentStream<T> {
    /// Normalizes the keys (N × d_key, one row per fact, in editing order) and reserves room for
    /// `N` residuals of dimension `residual_dim`.
    ///
    /// # Errors
    /// [`AlignError::NonFinite`] / [`AlignError::ZeroVector`] for a key row ([`Operand::Keys`]).
    pub fn new(keys: ArrayView2<'_, T>, residual_dim: usize, config: TargetConfig) -> Result<Self> {
        let keys = NormalizedRows::new(keys, Operand::Keys, config.zero_vectors)?;
        let residuals = Array2::zeros((keys.nrows(), residual_dim));
        let residual_norms = Vec::with_capacity(keys.nrows());
        Ok(Self {
            keys,
            residuals,
            residual_norms,
            config,
        })
    }

    /// Number of facts `N`.
    pub fn facts(&self) -> usize {
        self.keys.nrows()
    }

    /// Number of residuals saved so far (the index of the next fact to optimize).
    pub fn saved(&self) -> usize {
        self.residual_norms.len()
    }

    /// The residual dimension `d_res`.
    pub fn residual_dim(&self) -> usize {
        self.residuals.ncols()
    }

    /// The configuration.
    pub fn config(&self) -> &TargetConfig {
        &self.config
    }

    /// The normalized keys.
    pub fn keys(&self) -> &NormalizedRows<T> {
        &self.keys
    }

    /// The saved residuals, normalized (`saved × d_res`).
    pub fn saved_residuals(&self) -> ArrayView2<'_, T> {
        self.residuals.slice(s![..self.saved(), ..])
    }

    /// The norms of the saved residuals.
    pub fn saved_residual_norms(&self) -> &[f64] {
        &self.residual_norms
    }

    /// Saves the residual `δ_i` of the next fact `i = saved()` and returns `i`. `O(d_res)`.
    ///
    /// # Errors
    /// [`AlignError::StreamFull`] once all `N` are saved; [`AlignError::DimensionMismatch`] for a
    /// wrong length; [`AlignError::NonFinite`] / [`AlignError::ZeroVector`] ([`Operand::Residuals`],
    /// row `i`). Nothing is saved on error.
    pub fn push(&mut self, residual: ArrayView1<'_, T>) -> Result<usize> {
        let i = self.saved();
        if i >= self.facts() {
            return Err(AlignError::StreamFull {
                facts: self.facts(),
            });
        }
        self.check_dim(Operand::Residuals, residual.len())?;
        let norm = normalize_into(
            residual,
            self.residuals.row_mut(i),
            Operand::Residuals,
            i,
            self.config.zero_vectors,
        )?;
        self.residual_norms.push(norm);
        Ok(i)
    }

    fn check_dim(&self, operand: Operand, found: usize) -> Result<()> {
        if found == self.residual_dim() {
            Ok(())
        } else {
            Err(AlignError::DimensionMismatch {
                operand,
                expected: self.residual_dim(),
                found,
            })
        }
    }

    /// Checks `fact < end`.
    fn check_fact(fact: usize, end: usize) -> Result<()> {
        if fact < end {
            Ok(())
        } else {
            Err(AlignError::FactOutOfRange { fact, end })
        }
    }

    /// `s_k(j) = cos(k_fact, k_j)` for `j < fact`, in `f64`. `O(fact · d_key)`.
    fn key_cosines(&self, fact: usize) -> Vec<f64> {
        let k = self.keys.view();
        k.slice(s![..fact, ..])
            .dot(&k.row(fact))
            .iter()
            .map(|x| x.to_f64())
            .collect()
    }

    /// The constant targets of fact `fact` (any `fact < N`; they depend on the keys only).
    /// `O(fact · d_key)`.
    ///
    /// # Errors
    /// [`AlignError::FactOutOfRange`] if `fact ≥ N`.
    pub fn targets(&self, fact: usize) -> Result<FactTargets> {
        let n = self.facts();
        Self::check_fact(fact, n)?;
        FactTargets::from_key_cosines(&self.key_cosines(fact), self.config.tau, self.config.top_m)
    }

    /// The cosines `s_r(j) = cos(δ, δ_j)` of a live residual `δ` with the saved residuals
    /// `j < fact` (`fact ≤ saved()`), in `f64`. `O(fact · d_res)`.
    ///
    /// # Errors
    /// [`AlignError::FactOutOfRange`] if `fact > saved()`; [`AlignError::DimensionMismatch`];
    /// [`AlignError::NonFinite`] / [`AlignError::ZeroVector`] ([`Operand::LiveResidual`]).
    pub fn residual_cosines(&self, fact: usize, delta: ArrayView1<'_, T>) -> Result<Vec<f64>> {
        Ok(self.live(fact, delta)?.0)
    }

    /// Checks and normalizes `δ`; returns its cosines with the saved `δ_j`, `j < fact`, the
    /// normalized `δ` and its norm.
    fn live(&self, fact: usize, delta: ArrayView1<'_, T>) -> Result<(Vec<f64>, Array1<T>, f64)> {
        Self::check_fact(fact, self.saved() + 1)?;
        self.check_dim(Operand::LiveResidual, delta.len())?;
        let mut unit = Array1::zeros(delta.len());
        let norm = normalize_into(
            delta,
            unit.view_mut(),
            Operand::LiveResidual,
            fact,
            self.config.zero_vectors,
        )?;
        let cos = self
            .residuals
            .slice(s![..fact, ..])
            .dot(&unit)
            .iter()
            .map(|x| x.to_f64())
            .collect();
        Ok((cos, unit, norm))
    }

    /// Both loss terms for fact `targets.fact()` at the live residual `δ`:
    /// `targets.loss(&self.residual_cosines(targets.fact(), δ)?)`.
    ///
    /// # Errors
    /// As [`residual_cosines`](Self::residual_cosines).
    pub fn loss(&self, targets: &FactTargets, delta: ArrayView1<'_, T>) -> Result<AlignmentLoss> {
        targets.loss(&self.residual_cosines(targets.fact(), delta)?)
    }

    /// Loss values and their gradients with respect to `δ` (in `f64`), through
    /// `∂cos(δ, δ_j)/∂δ = (δ̂_j − cos(δ, δ_j) δ̂)/‖δ‖`. A reference for an autograd version.
    ///
    /// ```
    /// use eamet_align::{AlignmentStream, TargetConfig};
    /// use ndarray::array;
    /// let keys = array![[1.0_f64, 0.0], [0.6, 0.8]];
    /// let mut stream = AlignmentStream::new(keys.view(), 2, TargetConfig::default())?;
    /// stream.push(array![0.0_f64, 1.0].view())?;
    /// let t = stream.targets(1)?;
    /// let g = stream.loss_gradient(&t, array![1.0, 0.0].view())?;
    /// // s_r = 0 < s_k = 0.6: the MSE pulls δ towards δ_0 = e_2.
    /// assert!(g.mse[1] < 0.0);
    /// # Ok::<(), eamet_align::AlignError>(())
    /// ```
    ///
    /// # Errors
    /// As [`residual_cosines`](Self::residual_cosines); a zero `δ` is always rejected
    /// ([`AlignError::ZeroVector`]), since the gradient does not exist there.
    pub fn loss_gradient(
        &self,
        targets: &FactTargets,
        delta: ArrayView1<'_, T>,
    ) -> Result<AlignmentGradient> {
        let fact = targets.fact();
        let (s_r, unit, norm) = self.live(fact, delta)?;
        if norm == 0.0 {
            return Err(AlignError::ZeroVector {
                operand: Operand::LiveResidual,
                row: fact,
            });
        }
        let loss = targets.loss(&s_r)?;
        let (c_kl, c_mse) = targets.cosine_gradients(&s_r);
        let unit: Array1<f64> = unit.mapv(T::to_f64);
        let saved: Array2<f64> = self.residuals.slice(s![..fact, ..]).mapv(T::to_f64);
        let chain = |c: Vec<f64>| -> Array1<f64> {
            let c = Array1::from(c);
            let cs: f64 = c.iter().zip(&s_r).map(|(a, b)| a * b).sum();
            (saved.t().dot(&c) - unit.mapv(|u| u * cs)) / norm
        };
        Ok(AlignmentGradient {
            loss,
            kl: chain(c_kl),
            mse: chain(c_mse),
        })
    }

    /// `A(fact)` over the earlier facts `j < fact` with the saved residuals (`fact < saved()`):
    /// `divergence(s_k, s_r)`, or 0 for fact 0. Equals
    /// [`misalignment`](crate::misalignment) with [`Neighbourhood::Prior`](crate::Neighbourhood::Prior)
    /// on the same inputs. `O(fact · d)`.
    ///
    /// # Errors
    /// [`AlignError::FactOutOfRange`] if `fact ≥ saved()`.
    pub fn prior_score<D: Divergence>(&self, fact: usize, divergence: &D) -> Result<f64> {
        Self::check_fact(fact, self.saved())?;
        if fact == 0 {
            return Ok(0.0);
        }
        let s_k = self.key_cosines(fact);
        let r = self.residuals.view();
        let s_r: Vec<f64> = r
            .slice(s![..fact, ..])
            .dot(&r.row(fact))
            .iter()
            .map(|x| x.to_f64())
            .collect();
        Ok(divergence.divergence(&s_k, &s_r, self.config.tau))
    }
}
