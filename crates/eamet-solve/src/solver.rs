//! The `UpdateSolver` seam, its result type and shared helpers.

use std::fmt;

use ndarray::{Array2, ArrayView2};
use serde::Serialize;

use crate::check;
use crate::error::{Result, SolveError};
use crate::linalg;
use crate::stats::KeyStats;

/// Computes the update `Δ` of one layer's output projection from the facts of one batch.
///
/// **Orientation** (the same for every solver of this crate):
/// * `keys` `K` is `N × d_k`, **one fact per row** (row `i` = key `k_i`, the input of `W_out`);
/// * `residuals` `R` is `N × d_r`, one fact per row, in the same order (row `i` = `r_i`, the
///   change wanted in the output of `W_out` for key `k_i`);
/// * the result `Δ` is `d_r × d_k` and maps keys to residuals: `Δ k_i ≈ r_i`, i.e.
///   `K Δᵀ ≈ R`. It is added to a weight that computes `y = W k` (PyTorch `nn.Linear.weight`,
///   shape `out × in`); a weight stored as `in × out` (GPT-2 `Conv1D`) takes `Δᵀ`.
///
/// In this orientation MEMIT's normal equation (ALGORITHM.md §5, written there with keys as
/// columns) reads `Δ (λC + KᵀK) = RᵀK`.
///
/// A solver owns whatever state it carries between batches (for example AlphaEdit's `K_p K_pᵀ`);
/// the caller owns the solver, so nothing is hidden. For sequential editing the caller reports
/// the keys of each finished batch, recomputed on the edited model, with
/// [`after_batch`](Self::after_batch).
///
/// A new solver is one `impl`:
///
/// ```
/// use eamet_solve::{Diagnostics, Factorization, KeyStats, SolveError, Update, UpdateSolver};
/// use ndarray::{Array2, ArrayView2};
///
/// /// Δ = Rᵀ K / N: a (bad) Hebbian update.
/// struct Hebbian;
///
/// impl UpdateSolver for Hebbian {
///     fn name(&self) -> &str { "hebbian" }
///     fn solve(
///         &mut self,
///         keys: ArrayView2<'_, f64>,
///         residuals: ArrayView2<'_, f64>,
///         stats: &KeyStats,
///     ) -> Result<Update, SolveError> {
///         let shape = eamet_solve::validate_problem(keys, residuals, stats)?;
///         let delta: Array2<f64> = residuals.t().dot(&keys) / shape.n as f64;
///         Ok(Update { delta, diagnostics: Diagnostics::new("hebbian", Factorization::None) })
///     }
/// }
/// ```
pub trait UpdateSolver {
    /// Short name for logs and reports (`"memit"`, `"alphaedit"`, ...).
    fn name(&self) -> &str;

    /// Computes `Δ` (`d_r × d_k`) for keys `K` (`N × d_k`) and residuals `R` (`N × d_r`), given
    /// the statistics of preserved keys (`stats.dim()` must be `d_k`).
    fn solve(
        &mut self,
        keys: ArrayView2<'_, f64>,
        residuals: ArrayView2<'_, f64>,
        stats: &KeyStats,
    ) -> Result<Update>;

    /// Sequential editing: after every layer of a batch was written, the caller passes the keys
    /// of that batch recomputed on the edited model (`N × d_k`). The default ignores them.
    fn after_batch(&mut self, edited_keys: ArrayView2<'_, f64>) -> Result<()> {
        let _ = edited_keys;
        Ok(())
    }

    /// Whether [`after_batch`](Self::after_batch) uses the keys, so that a caller can skip
    /// recomputing them for solvers that ignore them. Default: `false`.
    fn wants_edited_keys(&self) -> bool {
        false
    }
}

/// A solver's result: the update and how it was obtained.
#[derive(Debug, Clone)]
pub struct Update {
    /// `Δ`, `d_r × d_k`: `Δ k ≈ r`.
    pub delta: Array2<f64>,
    /// Numerical diagnostics.
    pub diagnostics: Diagnostics,
}

/// Which factorization produced `Δ`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
#[non_exhaustive]
pub enum Factorization {
    /// Cholesky `LLᵀ` of the symmetric positive definite system matrix (`dpotrf`/`dpotrs`).
    Cholesky,
    /// Symmetric eigendecomposition (`dsyevr`) used as a pseudo-inverse, because Cholesky failed
    /// or the system was numerically singular; `dropped` eigen-directions (eigenvalues at or
    /// below `λ_max · d · ε`) were left out.
    SymmetricEigen {
        /// Number of eigen-directions left out of the pseudo-inverse.
        dropped: usize,
    },
    /// LU with partial pivoting (`dgetrf`/`dgetrs`) of a non-symmetric system matrix.
    Lu,
    /// No factorization (closed form, or a custom solver).
    None,
}

/// How [`Diagnostics::relative_residual`] was measured.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
#[non_exhaustive]
pub enum ResidualCheck {
    /// On the full matrices (used for `d_k ≤ 512`).
    Exact,
    /// Estimated on `count` fixed pseudo-random ±1 probe vectors `V`:
    /// `‖(ΔA − B)V‖_F / ‖BV‖_F` (an unbiased estimate of the squared Frobenius norms).
    Probes {
        /// Number of probe vectors.
        count: usize,
    },
    /// Not measured.
    NotMeasured,
}

/// Numerical diagnostics of one solve.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[non_exhaustive]
pub struct Diagnostics {
    /// The solver's name.
    pub solver: String,
    /// Which factorization was used.
    pub factorization: Factorization,
    /// Estimated condition number of the system matrix: `1/rcond` from LAPACK's 1-norm
    /// estimator after Cholesky or LU; `λ_max/λ_min` (2-norm, `∞` if `λ_min ≤ 0`) after the
    /// eigen fallback; NaN if not computed.
    pub condition_estimate: f64,
    /// Relative residual of the linear system that defines `Δ`, `‖ΔA − B‖_F / ‖B‖_F` (for
    /// MEMIT `A = λC + KᵀK`, `B = RᵀK`); see [`ResidualCheck`]. If `‖B‖ = 0` the absolute
    /// residual is reported. NaN if not measured.
    pub relative_residual: f64,
    /// How the residual was measured.
    pub residual_check: ResidualCheck,
    /// For AlphaEdit: the dimension of the null space `P` projects onto.
    pub null_space_dim: Option<usize>,
    /// Anything the caller should know (fallbacks, degenerate projectors, ...).
    pub warnings: Vec<String>,
}

impl Diagnostics {
    /// Diagnostics with nothing measured yet (for custom solvers).
    pub fn new(solver: impl Into<String>, factorization: Factorization) -> Self {
        Diagnostics {
            solver: solver.into(),
            factorization,
            condition_estimate: f64::NAN,
            relative_residual: f64::NAN,
            residual_check: ResidualCheck::NotMeasured,
            null_space_dim: None,
            warnings: Vec::new(),
        }
    }
}

/// One line for logs and reports, e.g. `alphaedit (LU): condition ≈ 1.2e5, relative residual
/// 3.1e-13 (exact), null space 412`; quantities not measured are left out.
impl fmt::Display for Diagnostics {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let fact = match self.factorization {
            Factorization::Cholesky => "Cholesky".to_string(),
            Factorization::SymmetricEigen { dropped } => {
                format!("eigen pseudo-inverse, {dropped} directions dropped")
            }
            Factorization::Lu => "LU".to_string(),
            Factorization::None => "no factorization".to_string(),
        };
        write!(f, "{} ({fact})", self.solver)?;
        let mut parts = Vec::new();
        if !self.condition_estimate.is_nan() {
            parts.push(format!("condition ≈ {:.2e}", self.condition_estimate));
        }
        if !self.relative_residual.is_nan() {
            let how = match self.residual_check {
                ResidualCheck::Exact => "exact".to_string(),
                ResidualCheck::Probes { count } => format!("{count} probes"),
                ResidualCheck::NotMeasured => "not measured".to_string(),
            };
            parts.push(format!(
                "relative residual {:.2e} ({how})",
                self.relative_residual
            ));
        }
        if let Some(n) = self.null_space_dim {
            parts.push(format!("null space {n}"));
        }
        if !parts.is_empty() {
            write!(f, ": {}", parts.join(", "))?;
        }
        if !self.warnings.is_empty() {
            write!(f, "; warnings: {}", self.warnings.join("; "))?;
        }
        Ok(())
    }
}

/// The dimensions of a validated problem.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProblemShape {
    /// Number of facts `N` (rows of `K` and `R`).
    pub n: usize,
    /// Key dimension `d_k` (columns of `K`, dimension of the statistics).
    pub d_k: usize,
    /// Residual dimension `d_r` (columns of `R`).
    pub d_r: usize,
}

/// Validates the inputs of [`UpdateSolver::solve`]: `K` and `R` have the same non-zero number
/// of rows, `K` has `stats.dim()` columns, `d_k, d_r > 0`, every entry is finite, and the
/// statistics hold at least one token and are finite.
pub fn validate_problem(
    keys: ArrayView2<'_, f64>,
    residuals: ArrayView2<'_, f64>,
    stats: &KeyStats,
) -> Result<ProblemShape> {
    let (n, d_k) = keys.dim();
    let (n_r, d_r) = residuals.dim();
    if n != n_r {
        return Err(SolveError::ShapeMismatch {
            rule: "keys and residuals need one row per fact",
            left_name: "keys K (N×d_k)",
            left_shape: vec![n, d_k],
            right_name: "residuals R (N×d_r)",
            right_shape: vec![n_r, d_r],
        });
    }
    if d_k != stats.dim() {
        return Err(SolveError::ShapeMismatch {
            rule: "keys need one column per dimension of the key statistics",
            left_name: "keys K (N×d_k)",
            left_shape: vec![n, d_k],
            right_name: "key statistics C (d×d)",
            right_shape: vec![stats.dim(), stats.dim()],
        });
    }
    if n == 0 || d_k == 0 {
        return Err(SolveError::EmptyBatch {
            what: "keys K",
            shape: vec![n, d_k],
        });
    }
    if d_r == 0 {
        return Err(SolveError::EmptyBatch {
            what: "residuals R",
            shape: vec![n_r, d_r],
        });
    }
    check::finite("keys K", keys)?;
    check::finite("residuals R", residuals)?;
    stats.check_usable()?;
    Ok(ProblemShape { n, d_k, d_r })
}

/// Below this key dimension the residual is measured exactly.
const EXACT_RESIDUAL_MAX_DK: usize = 512;
/// Probe vectors used above it.
const RESIDUAL_PROBES: usize = 8;

/// Deterministic ±1 probe matrix (d × p) from a splitmix64 stream.
fn probes(d: usize, p: usize) -> Array2<f64> {
    let mut state: u64 = 0x9E37_79B9_7F4A_7C15;
    Array2::from_shape_simple_fn((d, p), || {
        state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = state;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^= z >> 31;
        if z & 1 == 0 {
            1.0
        } else {
            -1.0
        }
    })
}

/// `‖Δ·(A V) − B V‖_F / ‖B V‖_F` with `V = I` (small `d_k`) or ±1 probes; `apply(V)` returns
/// `(A V, B V)` (d_k × p and d_r × p).
pub(crate) fn residual(
    delta: &Array2<f64>,
    apply: impl Fn(&Array2<f64>) -> Result<(Array2<f64>, Array2<f64>)>,
) -> Result<(f64, ResidualCheck)> {
    let d_k = delta.ncols();
    let (v, how) = if d_k <= EXACT_RESIDUAL_MAX_DK {
        (Array2::eye(d_k), ResidualCheck::Exact)
    } else {
        (
            probes(d_k, RESIDUAL_PROBES),
            ResidualCheck::Probes {
                count: RESIDUAL_PROBES,
            },
        )
    };
    let (av, mut diff) = apply(&v)?;
    let denom = diff.iter().map(|x| x * x).sum::<f64>().sqrt();
    // diff = Δ (A V) − B V
    linalg::gemm(1.0, delta.view(), false, av.view(), false, -1.0, &mut diff)?;
    let num = diff.iter().map(|x| x * x).sum::<f64>().sqrt();
    Ok((if denom > 0.0 { num / denom } else { num }, how))
}

/// `op(a) · op(b)` into a new standard-layout array.
pub(crate) fn matmul(
    a: ArrayView2<'_, f64>,
    ta: bool,
    b: ArrayView2<'_, f64>,
    tb: bool,
) -> Result<Array2<f64>> {
    let m = if ta { a.ncols() } else { a.nrows() };
    let n = if tb { b.nrows() } else { b.ncols() };
    let mut c = Array2::zeros((m, n));
    linalg::gemm(1.0, a, ta, b, tb, 0.0, &mut c)?;
    Ok(c)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn diagnostics_line_names_what_was_measured_and_leaves_out_the_rest() {
        // Nothing measured (a custom solver): the name and factorization only.
        let d = Diagnostics::new("custom", Factorization::None);
        assert_eq!(d.to_string(), "custom (no factorization)");
        // The eigen fallback with everything measured, and a warning.
        let mut d = Diagnostics::new("memit", Factorization::SymmetricEigen { dropped: 3 });
        d.condition_estimate = f64::INFINITY;
        d.relative_residual = 2.5e-9;
        d.residual_check = ResidualCheck::Exact;
        d.warnings.push("Cholesky failed".into());
        assert_eq!(
            d.to_string(),
            "memit (eigen pseudo-inverse, 3 directions dropped): condition ≈ inf, \
             relative residual 2.50e-9 (exact); warnings: Cholesky failed"
        );
        // A null-space dimension without a condition estimate.
        let mut d = Diagnostics::new("alphaedit", Factorization::Lu);
        d.null_space_dim = Some(0);
        assert_eq!(d.to_string(), "alphaedit (LU): null space 0");
    }
}
