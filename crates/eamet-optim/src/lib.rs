//! # eamet-optim
//!
//! Per-fact residual optimization for locate-then-edit knowledge editing (ALGORITHM.md §1–§3).
//! Its one job: find, for each fact, the vector `δ_i` added to the hidden state at the
//! subject's last token at block `l_R` that makes the model say the new object —
//! independently per fact (MEMIT: [`Schedule::Independent`], or [`Schedule::Batched`] with
//! many facts per forward/backward pass) or one fact after another with EAMET's alignment
//! terms against the residuals saved so far ([`Schedule::Sequential`], or
//! [`Schedule::Blocked`]: blocks of facts optimized together) — with loss terms behind one
//! small trait ([`LossTerm`]) and runs that resume after a kill.
//!
//! Pipeline:
//! 1. [`ContextPrefixes::load_or_generate`]: the context templates, sampled once per model
//!    with the unedited model and stored in the run directory.
//! 2. [`prepare_facts`]: validation ([`Fact`]) and tokenization ([`PreparedFact`]).
//! 3. [`compute_keys`] at `l_R` on the unedited model.
//! 4. [`optimize_residuals`] → [`Residuals`] (`δ_i`, `h_i`, per-fact [`FactStats`]).
//!
//! The hyperparameters use the reference code's names ([`ResidualHparams`], presets
//! [`ResidualHparams::eamet`] and [`ResidualHparams::memit`]) and are checked once into
//! [`CheckedResidualHparams`]. [`AlignmentSchedule::NllGated`] is this crate's answer to the
//! alignment terms defeating the edit on small models (ALGORITHM.md §3, last paragraph);
//! [`AlignmentSchedule::Constant`] is the faithful objective.
//!
//! The main path, one fact on SmolLM2 (the facade crate `eamet` wraps it with the solve in
//! its `Editor`):
//!
//! ```no_run
//! use eamet_hooks::{tch::Device, EditableLm, LlamaModel};
//! use eamet_optim::{compute_keys, optimize_residuals, prepare_facts, ContextPrefixes, Fact};
//! use eamet_optim::{PrefixSpec, ResidualHparams, RunOptions, Schedule};
//!
//! let path = eamet_hooks::paths::default_model().expect("a cache directory");
//! let model = LlamaModel::from_gguf(&path, Device::Cpu)?;
//! let facts = [Fact::new("Eiffel Tower", "The {} is located in the city of", "Rome")];
//! let prefixes = ContextPrefixes::generate(&model, &PrefixSpec::eamet())?;
//! let prepared = prepare_facts(model.tokenizer(), &facts, &prefixes)?;
//! let layer = 4; // l_R, the last edited layer
//! let keys = compute_keys(&model, &prepared, layer)?;
//! let hp = ResidualHparams { clamp_ks_factor: 12.0, ..ResidualHparams::eamet() }.check()?;
//! let blocked = Schedule::Blocked { block: 8 };
//! let res = optimize_residuals(&model, &prepared, keys.view(), layer, &hp, blocked,
//!                              &RunOptions::default())?;
//! let s = &res.stats[0];
//! println!("‖δ‖ = {:.1}, NLL {:.3} after {} steps", s.delta_norm, s.final_nll, s.steps);
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
#![deny(missing_docs)]

mod error;
mod fact;
mod hparams;
mod keys;
mod loss;
mod optimize;
mod prefixes;
mod rundir;

pub use error::{FactProblem, OptimError, Result};
pub use fact::{prepare_facts, target_ids, validate_facts, Fact, PreparedFact};
pub use hparams::{
    AlignmentSchedule, CheckedResidualHparams, DeltaInit, EssenceReference, ResidualHparams,
    WeightDecayMethod,
};
pub use keys::{compute_keys, KEY_BATCH_ROWS};
pub use loss::{
    AlignmentKl, AlignmentTargets, EssenceKl, LossTerm, NeighbourMse, NormPenalty, Objective,
    PrefixNll, StepContext, TermGroup,
};
pub use optimize::{optimize_residuals, FactStats, Residuals, RunOptions, Schedule, Work};
pub use prefixes::{ContextPrefixes, PrefixLength, PrefixSpec, Sampler};

use eamet_hooks::tch::{Device, Kind, Tensor};
use ndarray::Array2;

/// A 2-D tensor as an `f32` array (copied to the CPU).
pub(crate) fn tensor_to_array2(t: &Tensor) -> Result<Array2<f32>> {
    let size = t.size();
    if size.len() != 2 {
        return Err(OptimError::Input(format!(
            "expected a 2-D tensor, got shape {size:?}"
        )));
    }
    let v = Vec::<f32>::try_from(
        t.detach()
            .to_kind(Kind::Float)
            .to_device(Device::Cpu)
            .contiguous()
            .view([-1]),
    )
    .map_err(|e| OptimError::Input(format!("tensor to vector: {e}")))?;
    Array2::from_shape_vec((size[0] as usize, size[1] as usize), v)
        .map_err(|e| OptimError::Input(e.to_string()))
}
