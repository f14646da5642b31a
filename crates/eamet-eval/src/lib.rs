//! # eamet-eval
//!
//! Datasets and metrics for knowledge editing. Its one job: read the standard benchmarks
//! (CounterFact in ROME and EasyEdit formats, ZsRE, our JSONL facts) and tell the truth about
//! an edit: classic probability metrics, strict generation metrics, fluency and robustness,
//! always next to the unedited model's numbers.
//!
//! | module | what | needs libtorch |
//! |---|---|---|
//! | [`data`] | dataset loaders (streaming, typed errors with record index) | no |
//! | [`text`] | text statistics: n-gram entropy (fluency), word-boundary matching | no |
//! | [`plot`] | SVG/PNG plots for reports | no |
//! | `metrics` (feature `metrics`, default) | strict, classic, lenient, fluency, robustness metrics through the hooks API | yes |
//! | `summary` (feature `metrics`) | many reports side by side: a table and plots against the number of edits | no (reads reports) |
//! | `drift` (feature `metrics`) | neighbourhood KL and drawdown of an edited model against the unedited one | yes |
#![deny(missing_docs)]

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
