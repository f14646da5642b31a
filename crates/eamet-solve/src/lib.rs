//! # eamet-solve
//!
//! Closed-form weight updates for locate-then-edit methods, on `ndarray` + LAPACK, with no
//! libtorch. Its one job: from keys `K`, residuals `R` and second-moment statistics `C` of
//! generic keys, compute the update `Δ` of an MLP output projection — the MEMIT normal
//! equation `Δ (λC + K Kᵀ) = R Kᵀ` or AlphaEdit's null-space projected form — plus the
//! streaming, mergeable, cacheable accumulator for `C`.
//!
//! This crate is a skeleton until its issue lands; it compiles and is documented.
#![deny(missing_docs)]
