//! MEMIT's normal equation.

use ndarray::{s, Array2, ArrayView2};

use crate::error::{Result, SolveError};
use crate::linalg;
use crate::solver::{
    matmul, residual, validate_problem, Diagnostics, Factorization, Update, UpdateSolver,
};
use crate::stats::KeyStats;

/// MEMIT's closed-form update (ALGORITHM.md §5): `Δ (λC + KᵀK) = RᵀK`, with `C = E[k kᵀ]` the
/// per-token second moment of the statistics ([`KeyStats::second_moment`]) and `λ` =
/// `mom2_update_weight` (so `λ` acts like a number of preserved tokens).
///
/// It is the minimiser of `‖K Δᵀ − R‖²_F + λ · tr(Δ C Δᵀ)`: write the new facts, disturb the
/// outputs of generic keys as little as possible.
///
/// Solved by Cholesky of the symmetric positive definite `A = λC + KᵀK` and one multi-RHS
/// triangular solve; never an explicit inverse. If Cholesky fails, or succeeds on a matrix that is
/// singular to working precision (reciprocal condition below `d_k · ε`, e.g. `λ = 0` with
/// `N < d_k`), it falls back to a symmetric eigendecomposition used as a pseudo-inverse (the
/// minimum-norm solution), and says so in [`Diagnostics::warnings`]; disable that with
/// [`without_fallback`](Self::without_fallback) to get an error instead.
///
/// Cost: `O(N d_k² + N d_k d_r + d_k³/3 + d_k² d_r)`; memory: two `d_k × d_k` matrices (the
/// statistics and `A`) plus `d_r × d_k`.
///
/// ```
/// use eamet_solve::{KeyStats, MemitSolver, UpdateSolver};
/// use ndarray::array;
///
/// let mut stats = KeyStats::new(2);
/// stats.update(array![[1.0, 0.0], [0.0, 1.0]].view())?; // C = I/2
/// let keys = array![[1.0, 0.0]];
/// let residuals = array![[3.0]];
/// let update = MemitSolver::new(1.0)?.solve(keys.view(), residuals.view(), &stats)?;
/// // Δ (0.5 I + k kᵀ) = r kᵀ  →  Δ = [3/1.5, 0]
/// assert!((update.delta[[0, 0]] - 2.0).abs() < 1e-12);
/// assert!(update.delta[[0, 1]].abs() < 1e-12);
/// # Ok::<(), eamet_solve::SolveError>(())
/// ```
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct MemitSolver {
    lambda: f64,
    eigen_fallback: bool,
}

impl MemitSolver {
    /// A solver with covariance weight `λ ≥ 0` (finite). Errors with
    /// [`SolveError::InvalidParameter`] otherwise.
    pub fn new(lambda: f64) -> Result<Self> {
        if !(lambda.is_finite() && lambda >= 0.0) {
            return Err(SolveError::InvalidParameter {
                name: "lambda",
                value: lambda,
                expected: "a finite number ≥ 0",
            });
        }
        Ok(MemitSolver {
            lambda,
            eigen_fallback: true,
        })
    }

    /// Fail with [`SolveError::NotPositiveDefinite`] / [`SolveError::Singular`] instead of
    /// falling back to the eigendecomposition.
    pub fn without_fallback(mut self) -> Self {
        self.eigen_fallback = false;
        self
    }

    /// `λ`.
    pub fn lambda(&self) -> f64 {
        self.lambda
    }

    /// Whether the eigen fallback is enabled (default: yes).
    pub fn eigen_fallback(&self) -> bool {
        self.eigen_fallback
    }

    /// `A = (λ/n) Σkkᵀ + KᵀK`, upper triangle valid, in `a`.
    fn system(
        &self,
        keys: ArrayView2<'_, f64>,
        stats: &KeyStats,
        a: &mut Array2<f64>,
    ) -> Result<()> {
        let scale = self.lambda / stats.tokens() as f64;
        a.zip_mut_with(stats.upper(), |x, &s| *x = scale * s);
        linalg::syrk_upper(1.0, keys, 1.0, a)
    }
}

impl UpdateSolver for MemitSolver {
    fn name(&self) -> &str {
        "memit"
    }

    fn solve(
        &mut self,
        keys: ArrayView2<'_, f64>,
        residuals: ArrayView2<'_, f64>,
        stats: &KeyStats,
    ) -> Result<Update> {
        let shape = validate_problem(keys, residuals, stats)?;
        let d_k = shape.d_k;
        let mut a = Array2::zeros((d_k, d_k));
        self.system(keys, stats, &mut a)?;
        let anorm = linalg::sym_one_norm(&a);
        // B = RᵀK (d_r × d_k), row-major; LAPACK sees it as Bᵀ = KᵀR (d_k × d_r), the
        // right-hand side of A Δᵀ = KᵀR, and leaves Δᵀ there, i.e. Δ in row-major.
        let mut b = matmul(residuals, true, keys, false)?;
        let mut diag = Diagnostics::new(self.name(), Factorization::Cholesky);

        let rcond_min = d_k as f64 * f64::EPSILON;
        let failure = match linalg::potrf(&mut a)? {
            None => {
                let rcond = linalg::pocon(&a, anorm)?;
                if rcond > rcond_min {
                    linalg::potrs(&a, &mut b)?;
                    diag.condition_estimate = 1.0 / rcond;
                    None
                } else {
                    Some((
                        format!(
                            "Cholesky of λC + KᵀK succeeded but the matrix is singular to working precision (reciprocal condition estimate {rcond:e})"
                        ),
                        rcond,
                    ))
                }
            }
            Some(k) => Some((
                format!(
                    "Cholesky of λC + KᵀK failed: the leading minor of order {k} is not positive definite"
                ),
                0.0,
            )),
        };
        let delta = match failure {
            None => b,
            Some((why, rcond)) => {
                if !self.eigen_fallback {
                    return Err(if rcond > 0.0 {
                        SolveError::Singular {
                            matrix: "λC + KᵀK",
                            rcond,
                            detail: "increase λ, add facts, or allow the eigen fallback",
                        }
                    } else {
                        SolveError::NotPositiveDefinite {
                            matrix: "λC + KᵀK",
                            detail: format!("{why}; increase λ or allow the eigen fallback"),
                        }
                    });
                }
                // `a` holds a partial factor: rebuild it and solve through the eigenbasis.
                self.system(keys, stats, &mut a)?;
                let (w, vt) = linalg::syevr(&mut a)?;
                drop(a);
                let w_max = w.last().copied().unwrap_or(0.0);
                let w_min = w.first().copied().unwrap_or(0.0);
                if w_max.is_nan() || w_max <= 0.0 {
                    return Err(SolveError::Singular {
                        matrix: "λC + KᵀK",
                        rcond: 0.0,
                        detail: "the matrix is zero: no key and no covariance weight to solve with",
                    });
                }
                if w_min < -f64::EPSILON.sqrt() * w_max {
                    return Err(SolveError::NotPositiveDefinite {
                        matrix: "λC + KᵀK",
                        detail: format!(
                            "it has eigenvalue {w_min:e} (largest {w_max:e}): the key statistics are not positive semidefinite"
                        ),
                    });
                }
                let tol = w_max * d_k as f64 * f64::EPSILON;
                let first = w.iter().position(|&x| x > tol).unwrap_or(d_k);
                let vk = vt.slice(s![first.., ..]);
                // Δ = B V diag(1/w) Vᵀ over the kept eigenpairs (rows of vk are eigenvectors).
                let mut t = matmul(b.view(), false, vk, true)?;
                for (mut col, &wj) in t.columns_mut().into_iter().zip(&w[first..]) {
                    col /= wj;
                }
                let delta = matmul(t.view(), false, vk, false)?;
                diag.factorization = Factorization::SymmetricEigen { dropped: first };
                diag.condition_estimate = if w_min > 0.0 {
                    w_max / w_min
                } else {
                    f64::INFINITY
                };
                diag.warnings.push(format!(
                    "{why}; solved with a symmetric eigendecomposition instead, as a pseudo-inverse leaving out {first} of {d_k} eigen-directions (eigenvalues ≤ {tol:e}): Δ is the minimum-norm solution"
                ));
                delta
            }
        };

        let scale = self.lambda / stats.tokens() as f64;
        let (rel, how) = residual(&delta, |v| {
            // A V = λ C V + Kᵀ (K V),  B V = Rᵀ (K V)
            let kv = matmul(keys, false, v.view(), false)?;
            let mut av = matmul(keys, true, kv.view(), false)?;
            linalg::symm_upper(true, scale, stats.upper(), v.view(), 1.0, &mut av)?;
            Ok((av, matmul(residuals, true, kv.view(), false)?))
        })?;
        diag.relative_residual = rel;
        diag.residual_check = how;
        Ok(Update {
            delta,
            diagnostics: diag,
        })
    }
}
