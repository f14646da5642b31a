//! The crate's error type.

use std::fmt;

use thiserror::Error;

/// Which input an error refers to.
///
/// ```
/// use eamet_align::Operand;
/// assert_eq!(Operand::Keys.to_string(), "keys");
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Operand {
    /// The key matrix `K` (one row per fact).
    Keys,
    /// The residual matrix `R` (one row per fact), or a residual passed to
    /// [`AlignmentStream::push`](crate::AlignmentStream::push).
    Residuals,
    /// The live residual `δ_i` being optimized (never stored).
    LiveResidual,
    /// The first matrix of [`cosine_matrix`](crate::cosine_matrix).
    Left,
    /// The second matrix of [`cosine_matrix`](crate::cosine_matrix).
    Right,
    /// Residual cosine similarities passed to a loss helper.
    ResidualCosines,
    /// Logits passed to [`softmax`](crate::softmax) and friends.
    Logits,
}

impl fmt::Display for Operand {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Operand::Keys => "keys",
            Operand::Residuals => "residuals",
            Operand::LiveResidual => "live residual",
            Operand::Left => "left matrix",
            Operand::Right => "right matrix",
            Operand::ResidualCosines => "residual cosines",
            Operand::Logits => "logits",
        })
    }
}

/// Everything that can go wrong in this crate. No function of the crate panics on user input;
/// each failure is one of these variants, naming the input and, where there is one, the row.
///
/// ```
/// use eamet_align::{AlignError, Temperature};
/// assert!(matches!(Temperature::new(0.0), Err(AlignError::InvalidTemperature(_))));
/// ```
#[derive(Debug, Clone, PartialEq, Error)]
#[non_exhaustive]
pub enum AlignError {
    /// A NaN or infinite entry.
    #[error("{operand}: non-finite value {value} at row {row}, column {column}")]
    NonFinite {
        /// The input holding the value.
        operand: Operand,
        /// Row (fact) index; for vectors, 0.
        row: usize,
        /// Column (coordinate) index.
        column: usize,
        /// The offending value, widened to f64.
        value: f64,
    },
    /// A zero row: its cosine similarity with anything is undefined. Rejected under
    /// [`ZeroVectors::Reject`](crate::ZeroVectors::Reject) (the default).
    #[error(
        "{operand}: row {row} is the zero vector, whose cosine similarity is undefined \
         (ZeroVectors::CosineZero defines it as 0)"
    )]
    ZeroVector {
        /// The input holding the row.
        operand: Operand,
        /// Row (fact) index.
        row: usize,
    },
    /// Keys and residuals describe different numbers of facts.
    #[error("keys have {keys} rows but residuals have {residuals}: one row per fact in both")]
    RowCountMismatch {
        /// Rows of the key matrix.
        keys: usize,
        /// Rows of the residual matrix.
        residuals: usize,
    },
    /// A vector or matrix has the wrong number of columns (coordinates) or entries.
    #[error("{operand}: expected length {expected}, found {found}")]
    DimensionMismatch {
        /// The input with the wrong size.
        operand: Operand,
        /// The size required.
        expected: usize,
        /// The size given.
        found: usize,
    },
    /// The temperature τ is not a finite number > 0 with a finite reciprocal.
    #[error("temperature must be finite and > 0 (with 1/τ finite), got {0}")]
    InvalidTemperature(f64),
    /// A fact index beyond what the call allows (see the method's documentation).
    #[error("fact {fact} is out of range: this call takes facts 0..{end}")]
    FactOutOfRange {
        /// The index asked for.
        fact: usize,
        /// The exclusive upper bound of the indices this call takes now.
        end: usize,
    },
    /// [`AlignmentStream::push`](crate::AlignmentStream::push) after every fact's residual was saved.
    #[error("all {facts} residuals are already saved")]
    StreamFull {
        /// Number of facts (rows of the key matrix).
        facts: usize,
    },
}

/// Result alias of this crate.
pub type Result<T, E = AlignError> = std::result::Result<T, E>;
