//! # eamet
//!
//! Massive knowledge editing of large language models in Rust: EAMET (embedding-aligned
//! MEMIT, ICLR 2026) and the MEMIT family it extends (MEMIT, AlphaEdit), on real pretrained
//! models through libtorch.
//!
//! This facade re-exports the workspace crates, each usable alone:
//!
//! | crate | one job | libtorch |
//! |---|---|---|
//! | [`hooks`] (`eamet-hooks`) | load models, hookable forward, patch `W_out` | yes |
//! | [`align`] (`eamet-align`) | misalignment score `A(i)` and alignment targets | no |
//! | [`solve`] (`eamet-solve`) | key statistics and closed-form update solvers | no |
//! | [`optim`] (`eamet-optim`) | per-fact residual optimization (MEMIT / EAMET schedules) | yes |
//! | [`eval`] (`eamet-eval`) | datasets and metrics | yes |
//!
//! The main path: an [`Editor`] edits facts into a model in place (residuals, key statistics,
//! one solve per edited layer) and returns an [`EditOutcome`]; the edit can be saved as a
//! patch, exported as a model file, or undone.
//!
//! ```no_run
//! use eamet::hooks::{tch::Device, EditableLm, LlamaModel};
//! use eamet::{EditHparams, EditOptions, Editor, Fact, Method};
//!
//! let path = eamet::hooks::paths::default_model().expect("a cache directory");
//! let mut model = LlamaModel::from_gguf(&path, Device::Cpu)?;
//! let facts = [
//!     Fact::new("Eiffel Tower", "The {} is located in the city of", "Rome"),
//!     Fact::new("Japan", "The capital of {} is", "Berlin"),
//! ];
//! let hp = EditHparams::smollm2(Method::Eamet);
//! let outcome = Editor::new(&mut model, Method::Eamet, hp, EditOptions::default())?.edit(&facts)?;
//! println!("Σ A(i) = {:.3}; {:?}", outcome.misalignment_total, outcome.solves);
//! let said = eamet::eval::metrics::greedy(&model, &[facts[0].filled_prompt()], 4, 1)?;
//! println!("{} ->{}", facts[0].filled_prompt(), said[0].text);
//! let patch = eamet::hooks::patch::Patch::from_model(&model, "eamet")?;
//! patch.save("edit.safetensors".as_ref(), &model.source().identity_files()?, false)?;
//! model.restore();
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! [`inspect_model`] checks a model file and libtorch (the `eamet info` command).
#![deny(missing_docs)]

pub use eamet_align as align;
pub use eamet_eval as eval;
pub use eamet_hooks as hooks;
pub use eamet_optim as optim;
pub use eamet_solve as solve;

use std::path::Path;

pub mod editor;
pub mod evaluation;
pub mod stats;

pub use eamet_eval::report::WrittenFit;
pub use eamet_optim::Fact;
pub use editor::{
    written_fit, EditHparams, EditOptions, EditOutcome, Editor, LayerWeights, Method,
    GEMMA3_270M_CLAMP_KS, GEMMA3_270M_LAMBDA, GEMMA3_270M_LAYER, REFERENCE_ONLY_FIELDS,
    SMOLLM2_LAMBDA, SMOLLM2_LAMBDA_ALIGNED,
};

/// Errors of the facade.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The model file could not be read or is malformed.
    #[error(transparent)]
    Gguf(#[from] hooks::gguf::GgufError),
    /// libtorch failed its self-check.
    #[error(transparent)]
    Runtime(#[from] hooks::runtime::RuntimeError),
    /// Loading or running the model failed.
    #[error(transparent)]
    Model(#[from] hooks::ModelError),
    /// A statistics or solver step failed.
    #[error(transparent)]
    Solve(#[from] solve::SolveError),
    /// Fact validation or the residual optimization failed (names the fact).
    #[error(transparent)]
    Optim(#[from] optim::OptimError),
    /// libtorch raised an error.
    #[error("libtorch: {0}")]
    Torch(#[from] hooks::tch::TchError),
    /// Writing a report or a run-directory file failed (names the file).
    #[error(transparent)]
    Report(#[from] eval::report::ReportError),
    /// Bad user input (corpus, facts, hyperparameters), with what and where.
    #[error("{0}")]
    Input(String),
}

/// What [`inspect_model`] found.
#[derive(Debug, Clone)]
pub struct Inspection {
    /// Hyperparameters from the model header.
    pub info: hooks::info::ModelInfo,
    /// libtorch's self-check.
    pub runtime: hooks::runtime::RuntimeReport,
}

/// Open a GGUF model, read its hyperparameters, and check that libtorch computes.
pub fn inspect_model(path: &Path) -> Result<Inspection, Error> {
    let file = hooks::gguf::GgufFile::open(path)?;
    let info = hooks::info::ModelInfo::from_gguf(&file)?;
    let runtime = hooks::runtime::self_check()?;
    Ok(Inspection { info, runtime })
}

/// The README's code blocks, compiled as doctests so the documented usage cannot rot.
#[doc = include_str!("../README.md")]
#[cfg(doctest)]
pub struct ReadmeDoctests;
