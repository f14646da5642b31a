//! # eamet-eval
//!
//! Datasets and metrics for knowledge editing. Its one job: read the standard benchmarks
//! (CounterFact in ROME and EasyEdit formats, ZsRE, our JSONL facts) and tell the truth about
//! an edit: classic probability metrics, strict generation metrics, fluency and robustness,
//! always next to the unedited model's numbers.
//!
//! | module | what | needs libtorch |
//! |---|---|---|
//! | [`atomic`] | atomic writes of report, summary and plot files | no |
//! | [`data`] | dataset loaders (streaming, typed errors with record index) | no |
//! | [`text`] | text statistics: n-gram entropy (fluency), word-boundary matching | no |
//! | [`plot`] | SVG/PNG plots for reports | no |
//! | `metrics` (feature `metrics`, default) | strict, classic, lenient, fluency, robustness metrics through the hooks API | yes |
//! | `summary` (feature `metrics`) | many reports side by side: a table and plots against the number of edits | no (reads reports) |
//! | `drift` (feature `metrics`) | neighbourhood KL and drawdown of an edited model against the unedited one | yes |
//!
//! The main path: load records, score them before and after an edit (the facade's `Editor`
//! or any other change of the model's weights), and summarize:
//!
//! ```no_run
//! # #[cfg(feature = "metrics")] {
//! use eamet_eval::data::{load, LoadOptions};
//! use eamet_eval::metrics::{evaluate, summarize, ContextPrefixes, EvalConfig};
//! use eamet_hooks::{tch::Device, LlamaModel};
//!
//! let opts = LoadOptions { limit: Some(20), ..Default::default() };
//! let records = load("counterfact_rome_format_1000.json", &opts)?.into_edits()?;
//! let path = eamet_hooks::paths::default_model().expect("a cache directory");
//! let model = LlamaModel::from_gguf(&path, Device::Cpu)?;
//! let cfg = EvalConfig::default();
//! let prefixes = ContextPrefixes::none(); // or ContextPrefixes::from_corpus(..)
//! let pre = evaluate(&model, &records, &prefixes, &cfg, None)?;
//! // ... edit the model here ...
//! let post = evaluate(&model, &records, &prefixes, &cfg, Some(&pre))?;
//! for (metric, (value, n)) in summarize(&post) {
//!     println!("{metric}: {value:.3} over {n} records");
//! }
//! # }
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
#![deny(missing_docs)]

pub mod atomic;
pub mod data;
#[cfg(feature = "metrics")]
pub mod drift;
#[cfg(feature = "metrics")]
pub mod metrics;
pub mod plot;
#[cfg(feature = "metrics")]
pub mod report;
#[cfg(feature = "metrics")]
pub mod summary;
pub mod text;
