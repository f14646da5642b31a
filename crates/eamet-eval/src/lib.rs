//! # eamet-eval
//!
//! Datasets and metrics for knowledge editing. Its one job: read the standard benchmarks
//! (CounterFact in ROME and EasyEdit formats, ZsRE, our JSONL facts) and tell the truth about
//! an edit: classic probability metrics, strict generation metrics, fluency and robustness,
//! always next to the unedited model's numbers.
//!
//! This crate is a skeleton until its issue lands; it compiles and is documented.
#![deny(missing_docs)]
