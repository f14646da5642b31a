//! # eamet-align
//!
//! Embedding-misalignment math for massive knowledge editing, on `ndarray` + `rayon`, with no
//! libtorch. Its one job: measure and target how far the neighbourhood structure of the edit
//! residuals `r_i` departs from that of the keys `k_i`.
//!
//! * [`cosine_matrix`] / [`NormalizedRows`]: row-normalized cosine similarity by blocked GEMM.
//! * [`misalignment`]: the per-fact score `A(i)` — a divergence (default the paper's
//!   `KL(P_r^(i) ‖ P_k^(i))`, see [`KlDirection`]) between the neighbourhood distributions
//!   `P_k = softmax(s_k/τ)` and `P_r = softmax(s_r/τ)` over `j ≠ i` or `j < i`
//!   ([`Neighbourhood`]) — its total and [`Summary`] statistics, streamed over row blocks in
//!   `O(threads · block · N)` memory.
//! * [`AlignmentStream`] / [`FactTargets`]: the constant targets EAMET's alignment loss needs
//!   for fact `i` (key cosines, `P_k` over `j < i`, top-M neighbours and weights), and the loss
//!   values and gradients in `f64` as a reference for an autograd implementation.
//!
//! Performance: `A(i)` over `N` facts is `O(N²·d)`. [`misalignment`] normalizes the rows once,
//! then row blocks of [`ScoreConfig::block_rows`] facts run in parallel on rayon, each one GEMM
//! (`block × N`, ndarray's `dot`) per matrix followed by the per-row divergence; the block is
//! dropped before the next, so the working memory is `O(threads · block · N)` and no `N × N` (let
//! alone `N × N × d`) array is formed. The `j < i` form computes only the columns it needs (half
//! the work). The GEMM is ndarray's pure-Rust `matrixmultiply` by default; the crate feature
//! `blas` routes it through the system OpenBLAS (1.1–1.7× faster in our runs on a 2-core
//! AVX-512 Xeon, see `BENCHMARKS.md`). [`AlignmentStream`] works per fact in `O(i·d)`.
//!
//! Conventions: cosine products run in the input type (`f32` or `f64`, [`Real`]); softmax,
//! log-sum-exp and divergences in `f64`. Zero rows are rejected unless
//! [`ZeroVectors::CosineZero`] is chosen; a fact with an empty neighbourhood (fact 0 under
//! `j < i`, `N = 1` under `j ≠ i`) scores 0. Errors ([`AlignError`]) name the input and row;
//! nothing panics on user input.
//!
//! ```
//! use eamet_align::{misalignment, AlignmentStream, KlDirection, Neighbourhood, ScoreConfig, TargetConfig};
//! use ndarray::array;
//!
//! // Four facts: keys (N × d_key) and the residuals found for them (N × d_res).
//! let keys = array![[1.0_f64, 0.1, 0.0], [0.9, 0.3, 0.1], [0.0, 1.0, 0.2], [0.1, 0.2, 1.0]];
//! let residuals = array![[1.0_f64, 0.0], [0.9, 0.4], [-0.3, 1.0], [0.8, -0.6]];
//!
//! // The paper's score: KL(P_r || P_k) over the earlier facts, τ = 0.07.
//! let m = misalignment(keys.view(), residuals.view(), &ScoreConfig::default())?;
//! assert_eq!(m.per_fact().len(), 4);
//! assert_eq!(*m.divergence(), KlDirection::ResidualKey);
//! let summary = m.summary().unwrap(); // over facts 1..4 (fact 0 has no neighbours)
//! assert!((summary.total - m.total()).abs() < 1e-12);
//!
//! // The same with the reference loss's direction, over all other facts.
//! let cfg = ScoreConfig {
//!     divergence: KlDirection::KeyResidual,
//!     neighbourhood: Neighbourhood::AllOthers,
//!     ..ScoreConfig::default()
//! };
//! assert!(misalignment(keys.view(), residuals.view(), &cfg)?.total() > 0.0);
//!
//! // Streaming, as the optimizer sees it: save residuals one by one.
//! let mut stream = AlignmentStream::new(keys.view(), 2, TargetConfig::default())?;
//! for (i, r) in residuals.rows().into_iter().enumerate() {
//!     let targets = stream.targets(i)?; // constant during fact i's optimization
//!     let loss = stream.loss(&targets, r)?; // at the final δ_i
//!     assert!(loss.kl.is_finite() && loss.mse >= 0.0);
//!     stream.push(r)?;
//! }
//! // The streaming prior-form score agrees with the batch one.
//! let a3 = stream.prior_score(3, &KlDirection::ResidualKey)?;
//! assert!((a3 - m.per_fact()[3]).abs() < 1e-12);
//! # Ok::<(), eamet_align::AlignError>(())
//! ```
#![deny(missing_docs)]

mod cosine;
mod divergence;
mod error;
mod score;
mod softmax;
mod targets;

pub use cosine::{cosine_matrix, NormalizedRows, Real, ZeroVectors};
pub use divergence::{Divergence, KlDirection, Neighbourhood};
pub use error::{AlignError, Operand, Result};
pub use score::{
    misalignment, misalignment_normalized, Misalignment, ScoreConfig, Summary, DEFAULT_BLOCK_ROWS,
};
pub use softmax::{log_softmax, log_sum_exp, softmax, Temperature, EAMET_TAU};
pub use targets::{
    AlignmentGradient, AlignmentLoss, AlignmentStream, FactTargets, TargetConfig, DEFAULT_TOP_M,
    KL_EPSILON,
};
