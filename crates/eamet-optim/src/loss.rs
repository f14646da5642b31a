//! The terms of the per-fact objective behind one small trait (ALGORITHM.md §3).

use eamet_align::{FactTargets, KL_EPSILON};
use eamet_hooks::tch::{Device, Kind, Tensor};

use crate::error::Result;
use crate::fact::PreparedFact;
use crate::hparams::{CheckedResidualHparams, WeightDecayMethod};

/// Whether a term is scaled by the [`AlignmentSchedule`](crate::AlignmentSchedule).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TermGroup {
    /// Part of fitting the edit (NLL, essence, norm): never rescaled.
    Fit,
    /// An alignment term: multiplied by the schedule's factor each step.
    Alignment,
}

/// EAMET's constant alignment targets of one fact as tensors (`f64`), with the residuals they
/// refer to. Built by the optimizer from [`eamet_align::FactTargets`].
///
/// The residuals `δ_j`, `j < i`, come in two parts: the saved final residuals of earlier
/// blocks (`saved_unit`, rows `0..s`) and, under [`Schedule::Blocked`](crate::Schedule), the
/// current residuals of the earlier facts of fact `i`'s own block (`block_unit`, rows `s..i`),
/// which the optimizer refreshes every step.
#[derive(Debug)]
pub struct AlignmentTargets {
    /// The fact `i` (= number of residuals `j < i` used).
    pub fact: usize,
    /// Unit saved residuals `δ̂_j`, `j < s`: `[s, d_model]` (zero rows stay zero).
    pub saved_unit: Tensor,
    /// Unit current residuals `δ̂_j`, `s ≤ j < i`, of the same block (constants: no gradient
    /// flows into them): `[i − s, d_model]`, or `None` when `s = i`.
    pub block_unit: Option<Tensor>,
    /// `P_k(j) = softmax_{j<i}(s_k/τ)`: `[i]`.
    pub key_probs: Tensor,
    /// Indices of the top-M key neighbours: `[m]` (i64).
    pub top_indices: Tensor,
    /// Their key cosines `s_k(j)`: `[m]`.
    pub top_cosines: Tensor,
    /// Their weights `w_j = softmax_{j∈T}(s_k/τ)`: `[m]`.
    pub top_weights: Tensor,
    /// τ.
    pub tau: f64,
}

impl AlignmentTargets {
    /// Tensors of `targets` against the unit saved residuals `saved_unit` (`[s, d]`, `s ≤ i`,
    /// any float kind; converted to `f64`); the rows `s..i` are set later in `block_unit`.
    pub fn new(targets: &FactTargets, saved_unit: &Tensor) -> Self {
        let f = |v: &[f64]| Tensor::from_slice(v).to_device(saved_unit.device());
        let idx: Vec<i64> = targets.top_indices().iter().map(|&j| j as i64).collect();
        AlignmentTargets {
            fact: targets.fact(),
            saved_unit: saved_unit.to_kind(Kind::Double),
            block_unit: None,
            key_probs: f(targets.key_probs()),
            top_indices: Tensor::from_slice(&idx).to_device(saved_unit.device()),
            top_cosines: f(targets.top_cosines()),
            top_weights: f(targets.top_weights()),
            tau: targets.tau().get(),
        }
    }

    /// `s_r(j) = cos(δ, δ_j)` for `j < i` (`f64`, differentiable in `δ`).
    ///
    /// At `δ = 0` the cosines are 0 **with zero gradient** (a constant). The reference's
    /// `torch.cosine_similarity` (ε = 1e-8) instead has a gradient of order `1/ε` there, which
    /// fills Adam's second moment in the first step and all but freezes `δ` afterwards (facts
    /// with `‖h_i‖ ≥ 100` under `target_init`, and every fact under `delta_init = zero`, start
    /// there). In our SmolLM2 test run the two facts starting at `δ = 0` ended at NLL 6–7 with
    /// the ε form and below 0.01 with this one. Everywhere else the two agree.
    pub fn residual_cosines(&self, delta: &Tensor) -> Tensor {
        let d = delta.to_kind(Kind::Double);
        let n = d.norm();
        if n.double_value(&[]) < 1e-12 {
            return Tensor::zeros([self.fact as i64], (Kind::Double, d.device()));
        }
        let u = d / n;
        let saved = self.saved_unit.mv(&u);
        match &self.block_unit {
            Some(b) if b.size()[0] > 0 => Tensor::cat(&[saved, b.mv(&u)], 0),
            _ => saved,
        }
    }

    /// `L_KL = Σ_j p_j ln((p_j+ε)/(q_j+ε))`, `q = softmax(s_r/τ)`; 0 for fact 0.
    pub fn kl(&self, delta: &Tensor) -> Tensor {
        if self.fact == 0 {
            return zero(delta.device());
        }
        let q = (self.residual_cosines(delta) / self.tau).softmax(0, Kind::Double);
        let p = &self.key_probs;
        (p * ((p + KL_EPSILON).log() - (q + KL_EPSILON).log())).sum(Kind::Double)
    }

    /// `L_MSE = Σ_{j∈T} w_j (s_k(j) − s_r(j))²`; 0 for fact 0.
    pub fn mse(&self, delta: &Tensor) -> Tensor {
        if self.fact == 0 {
            return zero(delta.device());
        }
        let s_r = self
            .residual_cosines(delta)
            .index_select(0, &self.top_indices);
        (&self.top_weights * (&self.top_cosines - s_r).square()).sum(Kind::Double)
    }
}

fn zero(device: Device) -> Tensor {
    Tensor::zeros([], (Kind::Double, device))
}

/// What a term sees at one optimizer step of one fact.
#[derive(Debug)]
pub struct StepContext<'a> {
    /// The fact.
    pub fact: &'a PreparedFact,
    /// The optimizer iteration (0-based).
    pub step: usize,
    /// The live `δ` (`[d_model]`, requires grad).
    pub delta: &'a Tensor,
    /// Mean token NLL of the target per rewriting prompt under `δ`: `[templates]`.
    pub prompt_nll: &'a Tensor,
    /// Next-token log-probs at the essence prompt's subject-last token under `δ`: `[vocab]`.
    pub essence_logprobs: &'a Tensor,
    /// The essence term's reference log-probs (constant): `[vocab]`.
    pub essence_reference: &'a Tensor,
    /// `h_i`, the unedited block output at the bare prompt's subject-last token: `[d_model]`.
    pub h: &'a Tensor,
    /// `‖k_i‖` of the fact's key at `l_R`.
    pub key_norm: f64,
    /// The alignment targets (sequential schedule only).
    pub alignment: Option<&'a AlignmentTargets>,
}

/// One term of the per-fact objective. A new term is one impl; the optimizer adds the terms up
/// (alignment-group terms scaled by the schedule), backpropagates into `δ` and reports each
/// term by name.
pub trait LossTerm: Send + Sync {
    /// Short name for reports (`"nll"`, `"essence_kl"`, ...).
    fn name(&self) -> &str;
    /// The name with its parameters, recorded (hashed) in the run directory's manifest.
    fn describe(&self) -> String {
        self.name().to_string()
    }
    /// Whether the alignment schedule rescales the term.
    fn group(&self) -> TermGroup {
        TermGroup::Fit
    }
    /// The weighted term: a scalar tensor, differentiable in `ctx.delta`.
    ///
    /// # Errors
    /// Whatever the term cannot compute.
    fn loss(&self, ctx: &StepContext<'_>) -> Result<Tensor>;
}

/// Prefix-augmented NLL: mean over rewriting prompts of the mean token NLL of the target.
#[derive(Debug, Clone, Copy, Default)]
pub struct PrefixNll;

impl LossTerm for PrefixNll {
    fn name(&self) -> &str {
        "nll"
    }
    fn loss(&self, ctx: &StepContext<'_>) -> Result<Tensor> {
        Ok(ctx.prompt_nll.mean(Kind::Double))
    }
}

/// `factor · KL(P_δ ‖ P_ref)` at the essence prompt's subject-last token (batch-mean over one
/// prompt, as `F.kl_div(ref, cur, log_target=True, reduction="batchmean")`).
#[derive(Debug, Clone, Copy)]
pub struct EssenceKl {
    /// `kl_factor`.
    pub factor: f64,
}

impl LossTerm for EssenceKl {
    fn name(&self) -> &str {
        "essence_kl"
    }
    fn describe(&self) -> String {
        format!("essence_kl*{}", self.factor)
    }
    fn loss(&self, ctx: &StepContext<'_>) -> Result<Tensor> {
        let cur = ctx.essence_logprobs.to_kind(Kind::Double);
        let r = ctx.essence_reference.to_kind(Kind::Double);
        Ok((cur.exp() * (&cur - r)).sum(Kind::Double) * self.factor)
    }
}

/// `factor · Σ_j p_j ln((p_j+ε)/(q_j+ε))` over the saved residuals (EAMET, `cs_factor`).
#[derive(Debug, Clone, Copy)]
pub struct AlignmentKl {
    /// `cs_factor`.
    pub factor: f64,
}

impl LossTerm for AlignmentKl {
    fn name(&self) -> &str {
        "align_kl"
    }
    fn describe(&self) -> String {
        format!("align_kl*{}", self.factor)
    }
    fn group(&self) -> TermGroup {
        TermGroup::Alignment
    }
    fn loss(&self, ctx: &StepContext<'_>) -> Result<Tensor> {
        Ok(match ctx.alignment {
            Some(a) => a.kl(ctx.delta) * self.factor,
            None => zero(ctx.delta.device()),
        })
    }
}

/// `factor · Σ_{j∈T} w_j (s_k(j) − s_r(j))²` over the top-M key neighbours (EAMET,
/// `mse_factor`).
#[derive(Debug, Clone, Copy)]
pub struct NeighbourMse {
    /// `mse_factor`.
    pub factor: f64,
}

impl LossTerm for NeighbourMse {
    fn name(&self) -> &str {
        "align_mse"
    }
    fn describe(&self) -> String {
        format!("align_mse*{}", self.factor)
    }
    fn group(&self) -> TermGroup {
        TermGroup::Alignment
    }
    fn loss(&self, ctx: &StepContext<'_>) -> Result<Tensor> {
        Ok(match ctx.alignment {
            Some(a) => a.mse(ctx.delta) * self.factor,
            None => zero(ctx.delta.device()),
        })
    }
}

/// MEMIT's norm penalty as its code computes it: `factor · ‖δ‖ / ‖h_i‖²` (`v_weight_decay`,
/// `weight_decay_method = norm`).
#[derive(Debug, Clone, Copy)]
pub struct NormPenalty {
    /// `v_weight_decay`.
    pub factor: f64,
}

impl LossTerm for NormPenalty {
    fn name(&self) -> &str {
        "norm"
    }
    fn describe(&self) -> String {
        format!("norm*{}", self.factor)
    }
    fn loss(&self, ctx: &StepContext<'_>) -> Result<Tensor> {
        let h2 = ctx.h.to_kind(Kind::Double).square().sum(Kind::Double);
        Ok(ctx.delta.to_kind(Kind::Double).norm() / h2.clamp_min(1e-12) * self.factor)
    }
}

/// The list of terms whose sum is minimized.
#[derive(Default)]
pub struct Objective {
    terms: Vec<Box<dyn LossTerm>>,
}

impl std::fmt::Debug for Objective {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list()
            .entries(self.terms.iter().map(|t| t.describe()))
            .finish()
    }
}

impl Objective {
    /// No terms.
    pub fn new() -> Self {
        Self::default()
    }

    /// The terms the hyperparameters ask for: NLL, essence KL (if `kl_factor > 0`), alignment
    /// KL and MSE (if their factors are > 0), the norm penalty (in `norm` mode with
    /// `v_weight_decay > 0`).
    pub fn from_hparams(hp: &CheckedResidualHparams) -> Self {
        let h = hp.get();
        let mut o = Self::new().with(PrefixNll);
        if h.kl_factor > 0.0 {
            o = o.with(EssenceKl {
                factor: h.kl_factor,
            });
        }
        if h.cs_factor > 0.0 {
            o = o.with(AlignmentKl {
                factor: h.cs_factor,
            });
        }
        if h.mse_factor > 0.0 {
            o = o.with(NeighbourMse {
                factor: h.mse_factor,
            });
        }
        if h.weight_decay_method == WeightDecayMethod::Norm && h.v_weight_decay > 0.0 {
            o = o.with(NormPenalty {
                factor: h.v_weight_decay,
            });
        }
        o
    }

    /// Adds a term.
    pub fn with(mut self, term: impl LossTerm + 'static) -> Self {
        self.terms.push(Box::new(term));
        self
    }

    /// The terms, in order.
    pub fn terms(&self) -> &[Box<dyn LossTerm>] {
        &self.terms
    }

    /// The descriptions of the terms.
    pub fn describe(&self) -> Vec<String> {
        self.terms.iter().map(|t| t.describe()).collect()
    }
}
