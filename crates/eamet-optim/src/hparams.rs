//! Hyperparameters of the residual optimization, in the reference code's names, and their
//! checked form.

use eamet_align::Temperature;
use serde::{Deserialize, Serialize};

use crate::error::{OptimError, Result};

/// How `δ` is kept small (`weight_decay_method`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum WeightDecayMethod {
    /// EAMET: after each step project `δ` into `‖δ‖ ≤ clamp_ks_factor·‖k_i‖`; no penalty.
    FixKs,
    /// MEMIT: penalty `v_weight_decay·‖δ‖/‖h_i‖²` (the reference code's form) and clamp
    /// `‖δ‖ ≤ clamp_norm_factor·‖h_i‖`.
    Norm,
}

/// How `δ` starts (`delta_init`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DeltaInit {
    /// `δ = 0` (MEMIT).
    Zero,
    /// `δ = ‖k_i‖·h_i/‖h_i‖` if `‖h_i‖ < 100`, else 0 (EAMET).
    TargetInit,
}

/// Which next-token distribution the essence KL compares against.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum EssenceReference {
    /// The unedited model's (default; what the term means).
    #[default]
    Unedited,
    /// The distribution at the first step, i.e. with the initial `δ` (the EAMET reference
    /// code's behaviour under `target_init`).
    FirstStep,
}

/// How the alignment weights (`cs_factor`, `mse_factor`) are applied over the steps of one
/// fact (ALGORITHM.md §3, last paragraph).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case", tag = "kind")]
pub enum AlignmentSchedule {
    /// Constant weights: the reference objective (parity).
    #[default]
    Constant,
    /// Weights multiplied, at every step, by `g = min(1, threshold / NLL)²`, where `NLL` is the
    /// current (detached) prompt NLL of that step: while the edit is far from its target the
    /// alignment barely pulls, and it reaches full weight once `NLL ≤ threshold`. If alignment
    /// pushes the NLL back up, its own weight shrinks again, so it cannot defeat the edit the
    /// way constant weights do when the alignment KL is 5–15 nats on a small model. The total
    /// loss used for early stopping includes the gated terms.
    NllGated {
        /// NLL (nats per target token) at and below which the alignment has full weight (> 0).
        threshold: f64,
    },
}

impl AlignmentSchedule {
    /// The factor on the alignment terms at a step whose prompt NLL is `nll`.
    ///
    /// ```
    /// use eamet_optim::AlignmentSchedule;
    /// let g = AlignmentSchedule::NllGated { threshold: 0.5 };
    /// assert_eq!(g.factor(0.2), 1.0);
    /// assert_eq!(g.factor(1.0), 0.25);
    /// assert_eq!(AlignmentSchedule::Constant.factor(9.0), 1.0);
    /// ```
    pub fn factor(&self, nll: f64) -> f64 {
        match *self {
            AlignmentSchedule::Constant => 1.0,
            AlignmentSchedule::NllGated { threshold } => {
                if nll <= threshold {
                    1.0
                } else {
                    (threshold / nll).powi(2)
                }
            }
        }
    }
}

fn default_top_m() -> usize {
    eamet_align::DEFAULT_TOP_M
}

/// Hyperparameters of the per-fact residual optimization. Field names follow the reference
/// JSON files (unknown fields such as `layers` or `mom2_update_weight` are ignored, missing ones
/// take [`ResidualHparams::eamet`]'s values). The layer `l_R` is not here: it is an argument
/// of [`optimize_residuals`](crate::optimize_residuals).
///
/// ```
/// use eamet_optim::ResidualHparams;
/// let h: ResidualHparams = serde_json::from_str(r#"{"v_lr": 0.04, "layers": [3, 4]}"#)?;
/// assert_eq!(h.v_lr, 0.04);
/// assert_eq!(h.top_m, 50);
/// let checked = h.check()?;
/// assert_eq!(checked.get().v_num_grad_steps, 25);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct ResidualHparams {
    /// Optimizer iterations; at most `v_num_grad_steps − 1` updates (the last only evaluates).
    pub v_num_grad_steps: usize,
    /// Adam learning rate.
    pub v_lr: f64,
    /// Layer whose output gives the log-probs; only the last layer (the model's own logits)
    /// is supported, so when given it must equal `n_layers − 1`.
    pub v_loss_layer: Option<usize>,
    /// Weight of the essence KL.
    pub kl_factor: f64,
    /// Weight of the alignment KL (`λ_KL`).
    pub cs_factor: f64,
    /// Weight of the top-M neighbour MSE (`λ_MSE`).
    pub mse_factor: f64,
    /// Temperature τ of the neighbourhood distributions.
    pub tau: f64,
    /// Size M of the top key-neighbour set.
    #[serde(default = "default_top_m")]
    pub top_m: usize,
    /// `fix_ks` clamp: `‖δ‖ ≤ clamp_ks_factor·‖k_i‖`.
    pub clamp_ks_factor: f64,
    /// `norm` clamp: `‖δ‖ ≤ clamp_norm_factor·‖h_i‖`.
    pub clamp_norm_factor: f64,
    /// Clamp mode.
    pub weight_decay_method: WeightDecayMethod,
    /// Start of `δ`.
    pub delta_init: DeltaInit,
    /// Weight of the norm penalty in `norm` mode.
    pub v_weight_decay: f64,
    /// Early stop once the total loss is below this (EAMET 0.01, MEMIT 0.05).
    pub early_stop_loss: f64,
    /// First iteration at which early stopping is checked (EAMET's code: 1; MEMIT: 0).
    pub early_stop_min_step: usize,
    /// Also stop early once the fit alone (the mean NLL of the rewriting prompts) is below
    /// this, whatever the other terms say. `None` (the reference's rule, and every preset):
    /// only [`early_stop_loss`](Self::early_stop_loss) stops a fact. Why it exists: EAMET's
    /// total loss carries the alignment terms, which rarely fall below 0.01, so every fact
    /// runs all its iterations; an NLL threshold trades some alignment for time
    /// (docs/benchmarks.md, "Stopping on the NLL"). Not serialized when `None`, so run
    /// directories made before it existed still resume.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub early_stop_nll: Option<f64>,
    /// Reference distribution of the essence KL.
    pub essence_reference: EssenceReference,
    /// Schedule of the alignment weights.
    pub alignment_schedule: AlignmentSchedule,
}

impl Default for ResidualHparams {
    fn default() -> Self {
        Self::eamet()
    }
}

impl ResidualHparams {
    /// EAMET's reference values (ALGORITHM.md §3): 25 iterations, lr 0.5 (what the reference
    /// launch script passes; its JSON says 0.04), kl 0.0625, cs 2, mse 8, τ 0.07, M 50,
    /// `fix_ks` with factor 2, `target_init`, early stop < 0.01 from iteration 1, constant
    /// alignment weights. For SmolLM2 the clamp of 2‖k‖ is far too small (ALGORITHM.md §3).
    pub fn eamet() -> Self {
        ResidualHparams {
            v_num_grad_steps: 25,
            v_lr: 0.5,
            v_loss_layer: None,
            kl_factor: 0.0625,
            cs_factor: 2.0,
            mse_factor: 8.0,
            tau: eamet_align::EAMET_TAU,
            top_m: eamet_align::DEFAULT_TOP_M,
            clamp_ks_factor: 2.0,
            clamp_norm_factor: 1.5,
            weight_decay_method: WeightDecayMethod::FixKs,
            delta_init: DeltaInit::TargetInit,
            v_weight_decay: 0.5,
            early_stop_loss: 0.01,
            early_stop_min_step: 1,
            early_stop_nll: None,
            essence_reference: EssenceReference::Unedited,
            alignment_schedule: AlignmentSchedule::Constant,
        }
    }

    /// MEMIT's values: 25 iterations, lr 0.5, kl 0.0625, no alignment, `δ = 0`, `norm` mode
    /// with penalty 0.5 and clamp 0.75‖h‖, early stop < 0.05.
    pub fn memit() -> Self {
        ResidualHparams {
            cs_factor: 0.0,
            mse_factor: 0.0,
            clamp_norm_factor: 0.75,
            weight_decay_method: WeightDecayMethod::Norm,
            delta_init: DeltaInit::Zero,
            early_stop_loss: 0.05,
            early_stop_min_step: 0,
            ..Self::eamet()
        }
    }

    /// Validates every field.
    ///
    /// # Errors
    /// [`OptimError::Hparams`] naming the first bad field.
    pub fn check(&self) -> Result<CheckedResidualHparams> {
        let bad = |field: &'static str, reason: &str| {
            Err(OptimError::Hparams {
                field,
                reason: reason.into(),
            })
        };
        let nonneg = |x: f64| x.is_finite() && x >= 0.0;
        let pos = |x: f64| x.is_finite() && x > 0.0;
        if self.v_num_grad_steps == 0 {
            return bad("v_num_grad_steps", "must be at least 1");
        }
        if !pos(self.v_lr) {
            return bad(
                "v_lr",
                &format!("must be finite and > 0, got {}", self.v_lr),
            );
        }
        for (field, v) in [
            ("kl_factor", self.kl_factor),
            ("cs_factor", self.cs_factor),
            ("mse_factor", self.mse_factor),
            ("v_weight_decay", self.v_weight_decay),
            ("early_stop_loss", self.early_stop_loss),
        ] {
            if !nonneg(v) {
                return bad(field, &format!("must be finite and >= 0, got {v}"));
            }
        }
        let tau = match Temperature::new(self.tau) {
            Ok(t) => t,
            Err(e) => return bad("tau", &e.to_string()),
        };
        if self.top_m == 0 {
            return bad("top_m", "must be at least 1");
        }
        if !pos(self.clamp_ks_factor) {
            return bad("clamp_ks_factor", "must be finite and > 0");
        }
        if !pos(self.clamp_norm_factor) {
            return bad("clamp_norm_factor", "must be finite and > 0");
        }
        if let Some(t) = self.early_stop_nll {
            if !pos(t) {
                return bad(
                    "early_stop_nll",
                    &format!("must be finite and > 0 when given, got {t}"),
                );
            }
        }
        if let AlignmentSchedule::NllGated { threshold } = self.alignment_schedule {
            if !pos(threshold) {
                return bad(
                    "alignment_schedule",
                    "nll_gated threshold must be finite and > 0",
                );
            }
        }
        Ok(CheckedResidualHparams {
            inner: self.clone(),
            tau,
        })
    }
}

/// [`ResidualHparams`] that passed [`ResidualHparams::check`]; cannot be invalid.
#[derive(Debug, Clone, PartialEq)]
pub struct CheckedResidualHparams {
    inner: ResidualHparams,
    tau: Temperature,
}

impl CheckedResidualHparams {
    /// The values.
    pub fn get(&self) -> &ResidualHparams {
        &self.inner
    }

    /// τ as a checked temperature.
    pub fn tau(&self) -> Temperature {
        self.tau
    }

    /// Whether any alignment weight is non-zero.
    pub fn has_alignment(&self) -> bool {
        self.inner.cs_factor > 0.0 || self.inner.mse_factor > 0.0
    }
}
