//! The crate's error type.

use std::fmt;
use std::path::PathBuf;

use thiserror::Error;

/// One field of a statistics file that differs from what the caller asked for.
///
/// ```
/// use eamet_solve::FieldMismatch;
/// let m = FieldMismatch { field: "layer", expected: "3".into(), found: "4".into() };
/// assert_eq!(m.to_string(), "layer: expected 3, found 4");
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldMismatch {
    /// The metadata field (`model_hash`, `layer`, `samples`, ...).
    pub field: &'static str,
    /// The value the caller asked for.
    pub expected: String,
    /// The value stored in the file.
    pub found: String,
}

impl fmt::Display for FieldMismatch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}: expected {}, found {}",
            self.field, self.expected, self.found
        )
    }
}

fn list(mismatches: &[FieldMismatch]) -> String {
    mismatches
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join("; ")
}

/// Everything that can go wrong in this crate. No function of the crate panics on user input;
/// each failure is one of these variants and says which input (and, where there is one, which
/// row) is at fault.
///
/// ```
/// use eamet_solve::{MemitSolver, SolveError};
/// assert!(matches!(
///     MemitSolver::new(-1.0),
///     Err(SolveError::InvalidParameter { name: "lambda", .. })
/// ));
/// ```
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum SolveError {
    /// Two inputs whose shapes must agree do not.
    #[error("shape mismatch ({rule}): {left_name} has shape {left_shape:?}, {right_name} has shape {right_shape:?}")]
    ShapeMismatch {
        /// The rule that was broken, e.g. "keys and residuals need one row per fact".
        rule: &'static str,
        /// Name of the first input.
        left_name: &'static str,
        /// Shape of the first input.
        left_shape: Vec<usize>,
        /// Name of the second input.
        right_name: &'static str,
        /// Shape of the second input.
        right_shape: Vec<usize>,
    },
    /// A NaN or infinite entry in an input.
    #[error("{matrix}: non-finite value {value} at row {row}, column {column}")]
    NonFinite {
        /// The input holding the value.
        matrix: &'static str,
        /// Row index (for key and residual matrices: the fact / token index).
        row: usize,
        /// Column index.
        column: usize,
        /// The offending value.
        value: f64,
    },
    /// A batch with no rows (or no columns) where at least one is needed.
    #[error("{what} is empty (shape {shape:?}); at least one row and one column are needed")]
    EmptyBatch {
        /// Which input.
        what: &'static str,
        /// Its shape.
        shape: Vec<usize>,
    },
    /// Key statistics with no accumulated tokens: `E[k kᵀ]` is undefined.
    #[error("key statistics hold 0 tokens: their mean and second moment are undefined (accumulate keys with `update` first)")]
    EmptyStats,
    /// A hyper-parameter outside its valid range.
    #[error("invalid parameter {name} = {value}: expected {expected}")]
    InvalidParameter {
        /// Parameter name (`lambda`, `null_threshold`, `l2`, ...).
        name: &'static str,
        /// The value given.
        value: f64,
        /// The valid range, in words.
        expected: &'static str,
    },
    /// A matrix that must be symmetric positive definite is not (and no fallback was allowed or
    /// possible).
    #[error("{matrix} is not positive definite: {detail}")]
    NotPositiveDefinite {
        /// Which matrix, e.g. "λC + KᵀK".
        matrix: &'static str,
        /// What was found (failing pivot, smallest eigenvalue, ...).
        detail: String,
    },
    /// A matrix that must be symmetric is not.
    #[error("{matrix} is not symmetric: entry ({row}, {column}) = {value} but ({column}, {row}) = {mirror}")]
    NotSymmetric {
        /// Which matrix.
        matrix: &'static str,
        /// Row of the first entry.
        row: usize,
        /// Column of the first entry.
        column: usize,
        /// The entry at (row, column).
        value: f64,
        /// The entry at (column, row).
        mirror: f64,
    },
    /// A linear system that is singular to working precision.
    #[error("{matrix} is singular to working precision (reciprocal condition estimate {rcond:e}): {detail}")]
    Singular {
        /// Which matrix.
        matrix: &'static str,
        /// LAPACK's reciprocal condition estimate (0 when a pivot was exactly zero).
        rcond: f64,
        /// What to do about it.
        detail: &'static str,
    },
    /// A dimension too large for the 32-bit integers of the BLAS/LAPACK interface.
    #[error("{what} = {value} exceeds the BLAS/LAPACK index range (i32)")]
    TooLarge {
        /// Which dimension.
        what: &'static str,
        /// Its value.
        value: usize,
    },
    /// LAPACK reported an argument error (a bug in this crate, please report it).
    #[error("LAPACK routine {routine} failed with info = {info}")]
    Lapack {
        /// The routine, e.g. `dpotrs`.
        routine: &'static str,
        /// Its `info` output.
        info: i32,
    },
    /// The helper thread LAPACK runs on could not be started (see the crate docs).
    #[error("could not start a thread for LAPACK: {0}")]
    Thread(#[source] std::io::Error),
    /// Sequential AlphaEdit state that does not belong to this problem.
    #[error("AlphaEdit state does not match this problem: {detail}")]
    StateMismatch {
        /// What differs and how to fix it.
        detail: String,
    },
    /// An I/O error on a file.
    #[error("{op} {path}: {source}")]
    Io {
        /// What was being done ("create temporary file in", "read", ...).
        op: &'static str,
        /// The path involved.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// The destination exists and the write mode does not allow replacing it.
    #[error("{path} already exists (pass WriteMode::Overwrite to replace it)")]
    AlreadyExists {
        /// The destination.
        path: PathBuf,
    },
    /// A file that is not a valid file of the expected kind (truncated, corrupt, wrong tensors).
    #[error("{path} is corrupt or not an eamet {kind} file: {reason}")]
    CorruptFile {
        /// The file.
        path: PathBuf,
        /// "key statistics" or "AlphaEdit state".
        kind: &'static str,
        /// What check failed.
        reason: String,
    },
    /// A valid statistics file computed from something else than what was requested.
    #[error(
        "{path} holds statistics for something else than requested: {}",
        list(mismatches)
    )]
    CacheMismatch {
        /// The file.
        path: PathBuf,
        /// Every field that differs.
        mismatches: Vec<FieldMismatch>,
    },
    /// A file of a format version this build cannot read.
    #[error("{path}: unsupported format {found} (this build reads {supported})")]
    UnsupportedFormat {
        /// The file.
        path: PathBuf,
        /// The format and version found in the file.
        found: String,
        /// The format and version this build reads.
        supported: String,
    },
}

/// Shorthand for results of this crate.
pub type Result<T, E = SolveError> = std::result::Result<T, E>;
