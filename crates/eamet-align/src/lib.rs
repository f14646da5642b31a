//! # eamet-align
//!
//! Embedding-misalignment math for massive knowledge editing, on `ndarray`, with no libtorch.
//! Its one job: measure and target how far the neighbourhood structure of the edit residuals
//! `r_i` departs from that of the keys `k_i` — cosine neighbourhood distributions with a
//! temperature, the per-fact score `A(i) = KL(P_r^(i) || P_k^(i))` and its total, and the
//! constant targets EAMET's alignment loss needs for fact `i` given the residuals saved so far.
//!
//! This crate is a skeleton until its issue lands; it compiles and is documented.
#![deny(missing_docs)]
