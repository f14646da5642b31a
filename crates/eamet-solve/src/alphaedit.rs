//! AlphaEdit: null-space projected updates with sequential state.

use std::path::Path;

use ndarray::{s, Array1, Array2, ArrayView1, ArrayView2};
use serde::{Deserialize, Serialize};

use crate::check;
use crate::error::{Result, SolveError};
use crate::linalg;
use crate::solver::{
    matmul, residual, validate_problem, Diagnostics, Factorization, Update, UpdateSolver,
};
use crate::stats::{KeyStats, StatsFingerprint};
use crate::store::{write_file, FileIn, TensorOut, TensorSource, WriteMode};

/// The projector `P = U₀U₀ᵀ` onto the (approximate) null space of the preserved keys: `U₀` are
/// the eigenvectors of `C = E[k kᵀ]` whose eigenvalues fall **below** an absolute threshold
/// (AlphaEdit's `nullspace_threshold`, 2e-2 in the reference, on the per-token moment).
///
/// Computing it costs one symmetric eigendecomposition of `C` (`dsyevr`; minutes at
/// `d_k ≈ 10⁴`), so it is built once per layer and kept in the [`AlphaEditState`].
#[derive(Debug, Clone)]
pub struct NullSpaceProjector {
    matrix: Array2<f64>,
    eigenvalues: Array1<f64>,
    null_dim: usize,
    threshold: f64,
    fingerprint: StatsFingerprint,
}

fn check_threshold(threshold: f64) -> Result<()> {
    if !(threshold.is_finite() && threshold > 0.0) {
        return Err(SolveError::InvalidParameter {
            name: "null_threshold",
            value: threshold,
            expected: "a finite number > 0 (an absolute bound on the eigenvalues of E[k kᵀ])",
        });
    }
    Ok(())
}

impl NullSpaceProjector {
    /// Builds the projector from the eigendecomposition of `C = E[k kᵀ]` of `stats`, keeping the
    /// eigenvectors with eigenvalue `< threshold` (`threshold` finite and `> 0`).
    pub fn from_stats(stats: &KeyStats, threshold: f64) -> Result<Self> {
        check_threshold(threshold)?;
        stats.check_usable()?;
        let d = stats.dim();
        let n = stats.tokens() as f64;
        let mut c = stats.upper().mapv(|x| x / n);
        let (w, vt) = linalg::syevr(&mut c)?;
        drop(c);
        let null_dim = w.iter().take_while(|&&x| x < threshold).count();
        let mut p = Array2::zeros((d, d));
        if null_dim <= d / 2 {
            // P = U₀U₀ᵀ, U₀ = the first null_dim eigenvectors (rows of vt).
            linalg::syrk_upper(1.0, vt.slice(s![..null_dim, ..]), 0.0, &mut p)?;
        } else {
            // P = I − U₁U₁ᵀ with the (fewer) kept eigenvectors.
            linalg::syrk_upper(-1.0, vt.slice(s![null_dim.., ..]), 0.0, &mut p)?;
            p.diag_mut().mapv_inplace(|x| x + 1.0);
        }
        linalg::symmetrize_from_upper(&mut p);
        Ok(NullSpaceProjector {
            matrix: p,
            eigenvalues: Array1::from(w),
            null_dim,
            threshold,
            fingerprint: stats.fingerprint(),
        })
    }

    /// `P` (d × d, symmetric, idempotent).
    pub fn matrix(&self) -> ArrayView2<'_, f64> {
        self.matrix.view()
    }

    /// Eigenvalues of `C`, ascending.
    pub fn eigenvalues(&self) -> ArrayView1<'_, f64> {
        self.eigenvalues.view()
    }

    /// Rank of `P`: how many eigenvalues were below the threshold.
    pub fn null_dim(&self) -> usize {
        self.null_dim
    }

    /// The threshold used.
    pub fn threshold(&self) -> f64 {
        self.threshold
    }

    /// Key dimension.
    pub fn dim(&self) -> usize {
        self.matrix.nrows()
    }

    /// Identity of the statistics it was built from.
    pub fn fingerprint(&self) -> StatsFingerprint {
        self.fingerprint
    }
}

/// AlphaEdit's state across sequential batches of one layer: the projector (built on first use)
/// and `K_pᵀK_p`, the Gram matrix of the keys of all earlier batches (`K_p K_pᵀ` in the paper's
/// keys-as-columns notation). It is a plain value the caller owns: inspect it, [`reset`] it,
/// [`save`] it, [`load`] it. Keep one per edited layer.
///
/// [`reset`]: Self::reset
/// [`save`]: Self::save
/// [`load`]: Self::load
#[derive(Debug, Clone, Default)]
pub struct AlphaEditState {
    projector: Option<NullSpaceProjector>,
    /// Σ over earlier batches of KᵀK; upper triangle valid.
    prev_gram: Option<Array2<f64>>,
    batches: u64,
    rows: u64,
}

#[derive(Serialize, Deserialize)]
struct StateMeta {
    format: String,
    version: u32,
    d: Option<usize>,
    batches: u64,
    rows: u64,
    projector: Option<ProjectorMeta>,
}

#[derive(Serialize, Deserialize)]
struct ProjectorMeta {
    null_dim: usize,
    threshold: f64,
    fingerprint: StatsFingerprint,
}

const STATE_FORMAT: &str = "eamet.alphaedit_state";
const STATE_VERSION: u32 = 1;
const STATE_KIND: &str = "AlphaEdit state";

impl AlphaEditState {
    /// Empty state: no projector yet, no earlier batches.
    pub fn new() -> Self {
        Self::default()
    }

    /// Forgets the earlier batches (`K_p = 0`), keeping the projector.
    pub fn reset(&mut self) {
        self.prev_gram = None;
        self.batches = 0;
        self.rows = 0;
    }

    /// Forgets everything, projector included.
    pub fn clear(&mut self) {
        *self = Self::default();
    }

    /// The projector, once built.
    pub fn projector(&self) -> Option<&NullSpaceProjector> {
        self.projector.as_ref()
    }

    /// Installs a projector (for example one built ahead of time, or for another threshold).
    pub fn set_projector(&mut self, projector: NullSpaceProjector) -> Result<()> {
        if let Some(d) = self.gram_dim() {
            if d != projector.dim() {
                return Err(SolveError::StateMismatch {
                    detail: format!(
                        "the projector is {}×{} but the accumulated keys have dimension {d}",
                        projector.dim(),
                        projector.dim()
                    ),
                });
            }
        }
        self.projector = Some(projector);
        Ok(())
    }

    /// `K_pᵀK_p` (full symmetric copy), `None` before the first recorded batch.
    pub fn prev_gram(&self) -> Option<Array2<f64>> {
        self.prev_gram.as_ref().map(|g| {
            let mut g = g.clone();
            linalg::symmetrize_from_upper(&mut g);
            g
        })
    }

    /// Number of batches recorded.
    pub fn batches(&self) -> u64 {
        self.batches
    }

    /// Number of key rows recorded over all batches.
    pub fn rows(&self) -> u64 {
        self.rows
    }

    fn gram_dim(&self) -> Option<usize> {
        self.prev_gram.as_ref().map(|g| g.nrows())
    }

    /// Adds a finished batch's keys, recomputed on the edited model (`N × d_k`):
    /// `K_pᵀK_p += KᵀK`.
    pub fn record_batch(&mut self, edited_keys: ArrayView2<'_, f64>) -> Result<()> {
        let (n, d) = edited_keys.dim();
        let expected = self.gram_dim().or(self.projector.as_ref().map(|p| p.dim()));
        if let Some(e) = expected {
            if e != d {
                return Err(SolveError::ShapeMismatch {
                    rule: "edited keys need one column per key dimension of the AlphaEdit state",
                    left_name: "edited keys (N×d_k)",
                    left_shape: vec![n, d],
                    right_name: "AlphaEdit state (d×d)",
                    right_shape: vec![e, e],
                });
            }
        }
        if n == 0 || d == 0 {
            return Err(SolveError::EmptyBatch {
                what: "edited keys",
                shape: vec![n, d],
            });
        }
        check::finite("edited keys", edited_keys)?;
        let g = self.prev_gram.get_or_insert_with(|| Array2::zeros((d, d)));
        linalg::syrk_upper(1.0, edited_keys, 1.0, g)?;
        self.batches += 1;
        self.rows += n as u64;
        Ok(())
    }

    /// Saves the state (safetensors: `prev_gram` and, if built, `projector` and `eigenvalues`;
    /// JSON metadata under `__metadata__["eamet"]`). Atomic, like [`KeyStats::save`].
    pub fn save(&self, path: impl AsRef<Path>, mode: WriteMode) -> Result<()> {
        let meta = StateMeta {
            format: STATE_FORMAT.into(),
            version: STATE_VERSION,
            d: self.gram_dim().or(self.projector.as_ref().map(|p| p.dim())),
            batches: self.batches,
            rows: self.rows,
            projector: self.projector.as_ref().map(|p| ProjectorMeta {
                null_dim: p.null_dim,
                threshold: p.threshold,
                fingerprint: p.fingerprint,
            }),
        };
        let json = serde_json::to_string(&meta).expect("serializing plain metadata cannot fail");
        let mut tensors = Vec::new();
        if let Some(g) = &self.prev_gram {
            tensors.push(TensorOut {
                name: "prev_gram",
                shape: vec![g.nrows(), g.ncols()],
                source: TensorSource::SymmetricUpper(g),
            });
        }
        if let Some(p) = &self.projector {
            let d = p.dim();
            tensors.push(TensorOut {
                name: "projector",
                shape: vec![d, d],
                source: TensorSource::Dense(p.matrix.as_slice().expect("standard layout")),
            });
            tensors.push(TensorOut {
                name: "eigenvalues",
                shape: vec![d],
                source: TensorSource::Dense(p.eigenvalues.as_slice().expect("contiguous")),
            });
        }
        write_file(path.as_ref(), mode, json, &tensors)
    }

    /// Loads a state written by [`save`](Self::save).
    pub fn load(path: impl AsRef<Path>) -> Result<Self> {
        let file = FileIn::read(path.as_ref(), STATE_KIND)?;
        let value: serde_json::Value = serde_json::from_str(&file.meta_json)
            .map_err(|e| file.corrupt(format!("metadata is not JSON: {e}")))?;
        let format = value
            .get("format")
            .and_then(|v| v.as_str())
            .unwrap_or("<none>");
        let version = value.get("version").and_then(|v| v.as_u64()).unwrap_or(0);
        if format != STATE_FORMAT || version != u64::from(STATE_VERSION) {
            return Err(SolveError::UnsupportedFormat {
                path: file.path.clone(),
                found: format!("{format} v{version}"),
                supported: format!("{STATE_FORMAT} v{STATE_VERSION}"),
            });
        }
        let meta: StateMeta =
            serde_json::from_value(value).map_err(|e| file.corrupt(format!("metadata: {e}")))?;
        file.verify_crc()?;
        let mut state = AlphaEditState {
            batches: meta.batches,
            rows: meta.rows,
            ..Default::default()
        };
        let Some(d) = meta.d else {
            return Ok(state);
        };
        if file.has_tensor("prev_gram") {
            let g = file.tensor("prev_gram", &[d, d])?;
            state.prev_gram =
                Some(Array2::from_shape_vec((d, d), g).map_err(|e| file.corrupt(e.to_string()))?);
        }
        if let Some(pm) = meta.projector {
            let p = file.tensor("projector", &[d, d])?;
            let w = file.tensor("eigenvalues", &[d])?;
            state.projector = Some(NullSpaceProjector {
                matrix: Array2::from_shape_vec((d, d), p)
                    .map_err(|e| file.corrupt(e.to_string()))?,
                eigenvalues: Array1::from(w),
                null_dim: pm.null_dim,
                threshold: pm.threshold,
                fingerprint: pm.fingerprint,
            });
        }
        Ok(state)
    }
}

/// AlphaEdit's update (ALGORITHM.md §6) in this crate's orientation (keys as rows):
///
/// `Δ (G P + α I) = RᵀK P`, with `G = K_pᵀK_p + KᵀK`,
///
/// i.e. the paper's `Δ = R Kᵀ P (K_p K_pᵀ P + K Kᵀ P + α I)⁻¹` with keys as columns. `P` projects
/// onto the null space of the preserved keys ([`NullSpaceProjector`]), so `Δ u = 0` for every
/// `u` with `P u = 0`: outputs of preserved keys are untouched. There is no `λC` term; the
/// preservation comes from `P`. The system matrix is not symmetric: it is solved by LU with
/// partial pivoting (one multi-RHS `dgetrs`), never inverted.
///
/// State (projector and `K_p`) lives in the solver's [`AlphaEditState`], which the caller can
/// read, reset, replace and save. The projector is built from the statistics on the first solve
/// and then reused; solving with other statistics afterwards is a [`SolveError::StateMismatch`]
/// (keep one solver per layer). After a batch, pass its keys recomputed on the edited model to
/// [`UpdateSolver::after_batch`] (or [`AlphaEditState::record_batch`]).
///
/// ```
/// use eamet_solve::{AlphaEditSolver, KeyStats, UpdateSolver};
/// use ndarray::array;
///
/// // Preserved keys span the first axis only: the second axis is free.
/// let mut stats = KeyStats::new(2);
/// stats.update(array![[1.0, 0.0]].view())?;
/// let mut solver = AlphaEditSolver::new(2e-2, 1e-9)?;
/// let update = solver.solve(array![[1.0, 1.0]].view(), array![[2.0]].view(), &stats)?;
/// assert!(update.delta[[0, 0]].abs() < 1e-9); // the preserved direction is untouched
/// assert!((update.delta[[0, 1]] - 2.0).abs() < 1e-6); // the new key is written
/// assert_eq!(update.diagnostics.null_space_dim, Some(1));
/// # Ok::<(), eamet_solve::SolveError>(())
/// ```
#[derive(Debug, Clone)]
pub struct AlphaEditSolver {
    null_threshold: f64,
    l2: f64,
    state: AlphaEditState,
}

impl AlphaEditSolver {
    /// A solver with eigenvalue threshold `null_threshold` (finite, `> 0`; reference 2e-2) and
    /// ridge `l2` = `α` (finite, `≥ 0`; reference 1 or 10), with empty state.
    pub fn new(null_threshold: f64, l2: f64) -> Result<Self> {
        Self::with_state(null_threshold, l2, AlphaEditState::new())
    }

    /// Same as [`new`](Self::new), continuing from a saved or reused state. If the state holds a
    /// projector, its threshold must equal `null_threshold`.
    pub fn with_state(null_threshold: f64, l2: f64, state: AlphaEditState) -> Result<Self> {
        check_threshold(null_threshold)?;
        if !(l2.is_finite() && l2 >= 0.0) {
            return Err(SolveError::InvalidParameter {
                name: "l2",
                value: l2,
                expected: "a finite number ≥ 0",
            });
        }
        if let Some(p) = &state.projector {
            if p.threshold.to_bits() != null_threshold.to_bits() {
                return Err(SolveError::StateMismatch {
                    detail: format!(
                        "the state's projector was built with threshold {} but the solver uses {null_threshold}",
                        p.threshold
                    ),
                });
            }
        }
        Ok(AlphaEditSolver {
            null_threshold,
            l2,
            state,
        })
    }

    /// The eigenvalue threshold.
    pub fn null_threshold(&self) -> f64 {
        self.null_threshold
    }

    /// `α`.
    pub fn l2(&self) -> f64 {
        self.l2
    }

    /// The sequential state.
    pub fn state(&self) -> &AlphaEditState {
        &self.state
    }

    /// The sequential state, mutably (reset, record batches, install a projector).
    pub fn state_mut(&mut self) -> &mut AlphaEditState {
        &mut self.state
    }

    /// Gives the state back, consuming the solver.
    pub fn into_state(self) -> AlphaEditState {
        self.state
    }

    fn projector_for(&mut self, stats: &KeyStats) -> Result<&NullSpaceProjector> {
        if self.state.projector.is_none() {
            let p = NullSpaceProjector::from_stats(stats, self.null_threshold)?;
            self.state.set_projector(p)?;
        }
        let p = self.state.projector.as_ref().expect("set above");
        if p.fingerprint != stats.fingerprint() {
            return Err(SolveError::StateMismatch {
                detail: format!(
                    "the projector was built from other key statistics ({:?}) than these ({:?}); keep one AlphaEdit solver per layer, or clear the state",
                    p.fingerprint,
                    stats.fingerprint()
                ),
            });
        }
        if p.threshold.to_bits() != self.null_threshold.to_bits() {
            return Err(SolveError::StateMismatch {
                detail: format!(
                    "the projector was built with threshold {} but the solver uses {}",
                    p.threshold, self.null_threshold
                ),
            });
        }
        Ok(p)
    }
}

impl UpdateSolver for AlphaEditSolver {
    fn name(&self) -> &str {
        "alphaedit"
    }

    fn solve(
        &mut self,
        keys: ArrayView2<'_, f64>,
        residuals: ArrayView2<'_, f64>,
        stats: &KeyStats,
    ) -> Result<Update> {
        let shape = validate_problem(keys, residuals, stats)?;
        let d = shape.d_k;
        if let Some(gd) = self.state.gram_dim() {
            if gd != d {
                return Err(SolveError::StateMismatch {
                    detail: format!(
                        "the recorded earlier keys have dimension {gd}, these keys {d}"
                    ),
                });
            }
        }
        let alpha = self.l2;
        let null_threshold = self.null_threshold;
        self.projector_for(stats)?;
        let state = &self.state;
        let proj = state.projector.as_ref().expect("built by projector_for");
        let p = &proj.matrix;

        // G = K_pᵀK_p + KᵀK (upper), M = G P + α I (full).
        let mut g = match &state.prev_gram {
            Some(prev) => prev.clone(),
            None => Array2::zeros((d, d)),
        };
        linalg::syrk_upper(1.0, keys, 1.0, &mut g)?;
        let mut m = Array2::zeros((d, d));
        linalg::symm_upper(true, 1.0, &g, p.view(), 0.0, &mut m)?;
        drop(g);
        m.diag_mut().mapv_inplace(|x| x + alpha);
        // LAPACK factors the column-major view of M's buffer, i.e. Mᵀ = P G + α I, and solves
        // Mᵀ Δᵀ = (RᵀKP)ᵀ with B = RᵀKP in row-major = Bᵀ in column-major.
        let anorm = linalg::colmajor_one_norm(&m);
        let (ipiv, zero_pivot) = linalg::getrf(&mut m)?;
        let singular_detail = "AlphaEdit's G P + α I needs α = l2 > 0 unless P = I";
        if zero_pivot.is_some() {
            return Err(SolveError::Singular {
                matrix: "G P + α I",
                rcond: 0.0,
                detail: singular_detail,
            });
        }
        let rcond = linalg::gecon(&m, anorm)?;
        if rcond.is_nan() || rcond <= f64::EPSILON {
            return Err(SolveError::Singular {
                matrix: "G P + α I",
                rcond,
                detail: singular_detail,
            });
        }
        let rk = matmul(residuals, true, keys, false)?;
        let mut b = Array2::zeros(rk.dim());
        linalg::symm_upper(false, 1.0, p, rk.view(), 0.0, &mut b)?;
        drop(rk);
        linalg::getrs(&m, &ipiv, &mut b)?;
        drop(m);
        let delta = b;

        let mut diag = Diagnostics::new(self.name(), Factorization::Lu);
        diag.condition_estimate = 1.0 / rcond;
        diag.null_space_dim = Some(proj.null_dim);
        if proj.null_dim == 0 {
            diag.warnings.push(format!(
                "no eigenvalue of C is below null_threshold {null_threshold}: P = 0 and the update is zero"
            ));
        } else if proj.null_dim == d {
            diag.warnings.push(format!(
                "every eigenvalue of C is below null_threshold {null_threshold}: P = I and no key is preserved"
            ));
        }
        let prev = state.prev_gram.as_ref();
        let (rel, how) = residual(&delta, |v| {
            // M V = K_pᵀK_p (P V) + Kᵀ (K P V) + α V,  B V = Rᵀ (K P V)
            let pv = matmul(p.view(), false, v.view(), false)?;
            let kpv = matmul(keys, false, pv.view(), false)?;
            let mut mv = matmul(keys, true, kpv.view(), false)?;
            if let Some(prev) = prev {
                linalg::symm_upper(true, 1.0, prev, pv.view(), 1.0, &mut mv)?;
            }
            mv.scaled_add(alpha, v);
            Ok((mv, matmul(residuals, true, kpv.view(), false)?))
        })?;
        diag.relative_residual = rel;
        diag.residual_check = how;
        Ok(Update {
            delta,
            diagnostics: diag,
        })
    }

    fn after_batch(&mut self, edited_keys: ArrayView2<'_, f64>) -> Result<()> {
        self.state.record_batch(edited_keys)
    }

    fn wants_edited_keys(&self) -> bool {
        true
    }
}
