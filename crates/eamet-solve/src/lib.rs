//! # eamet-solve
//!
//! Closed-form weight updates for locate-then-edit methods, on `ndarray` + LAPACK (OpenBLAS),
//! with no libtorch. Its one job: from keys `K`, residuals `R` and second-moment statistics `C`
//! of generic keys, compute the update `Δ` of an MLP output projection — the MEMIT normal
//! equation or AlphaEdit's null-space projected form — plus the streaming, mergeable, cacheable
//! accumulator for `C`.
//!
//! * [`KeyStats`]: `Σ k kᵀ`, `Σ k` and the token count in `f64`, one `dsyrk` per batch;
//!   [`merge`](KeyStats::merge) of shards; `C = E[k kᵀ]` ([`KeyStats::second_moment`]) and the
//!   centred covariance; [`save`](KeyStats::save) / [`load`](KeyStats::load) as safetensors +
//!   JSON metadata ([`StatsProvenance`]), atomic and never clobbering unless asked.
//! * [`UpdateSolver`]: `(K, R, stats) → Δ` + [`Diagnostics`]. Implementations:
//!   [`MemitSolver`] (Cholesky, eigen fallback) and [`AlphaEditSolver`] (null-space projector,
//!   sequential state in [`AlphaEditState`], LU).
//!
//! **Orientation.** `K` is `N × d_k` and `R` is `N × d_r`, **one fact per row**; `Δ` is
//! `d_r × d_k` and maps keys to residuals, `Δ k ≈ r` (add it to a PyTorch-style `out × in`
//! weight). MEMIT's equation reads `Δ (λC + KᵀK) = RᵀK` in this orientation.
//!
//! All errors are typed ([`SolveError`]) and name the input at fault; nothing panics on user
//! input. BLAS/LAPACK threading follows OpenBLAS (`OPENBLAS_NUM_THREADS`). LAPACK calls run on
//! a short-lived helper thread with a 64 MiB stack, because OpenBLAS's threaded LU overflows the
//! 2 MiB stacks of threads Rust spawns (a segfault, not an error); BLAS-3 calls run inline.
//!
//! ```
//! use eamet_solve::{KeyStats, MemitSolver, UpdateSolver};
//! use ndarray::Array2;
//!
//! let (d_k, d_r, n) = (8, 3, 4);
//! // Statistics of "generic" keys: 64 pseudo-random rows.
//! let generic = Array2::from_shape_fn((64, d_k), |(i, j)| ((i * 7 + j * 3) % 11) as f64 - 5.0);
//! let mut stats = KeyStats::new(d_k);
//! stats.update(generic.view())?;
//!
//! // Four facts: keys and the residuals their outputs should move by.
//! let keys = Array2::from_shape_fn((n, d_k), |(i, j)| if i == j { 1.0 } else { 0.1 });
//! let residuals = Array2::from_shape_fn((n, d_r), |(i, j)| (i + j) as f64);
//!
//! let update = MemitSolver::new(1e-6)?.solve(keys.view(), residuals.view(), &stats)?;
//! assert_eq!(update.delta.dim(), (d_r, d_k));
//! // With a tiny λ the facts are written: K Δᵀ ≈ R.
//! let written = keys.dot(&update.delta.t());
//! assert!((&written - &residuals).iter().all(|e| e.abs() < 1e-4));
//! assert!(update.diagnostics.relative_residual < 1e-8);
//! # Ok::<(), eamet_solve::SolveError>(())
//! ```
#![deny(missing_docs)]

// Links OpenBLAS (ndarray-linalg → lax → openblas-src) for the CBLAS / LAPACK calls.
use ndarray_linalg as _;

mod alphaedit;
mod check;
mod error;
mod linalg;
mod memit;
mod solver;
mod stats;
mod store;

pub use alphaedit::{AlphaEditSolver, AlphaEditState, NullSpaceProjector};
pub use error::{FieldMismatch, Result, SolveError};
pub use memit::MemitSolver;
pub use solver::{
    validate_problem, Diagnostics, Factorization, ProblemShape, ResidualCheck, Update, UpdateSolver,
};
pub use stats::{KeyStats, StatsFingerprint};
pub use store::{StatsMeta, StatsProvenance, StatsRequest, WriteMode};
