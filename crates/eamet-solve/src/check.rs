//! Input validation shared by the statistics and the solvers.

use ndarray::{ArrayView1, ArrayView2};

use crate::error::{Result, SolveError};

/// Whether every value is finite; branch-free inner loop so it vectorizes (the scan runs over
/// every key and residual of a solve).
fn all_finite(values: &[f64]) -> bool {
    values
        .chunks(1024)
        .all(|c| c.iter().fold(true, |ok, x| ok & x.is_finite()))
}

/// First non-finite entry of `m`, reported with its row and column.
pub(crate) fn finite(matrix: &'static str, m: ArrayView2<'_, f64>) -> Result<()> {
    if m.as_slice_memory_order().is_some_and(all_finite) {
        return Ok(());
    }
    for (row, r) in m.outer_iter().enumerate() {
        if let Some((column, &value)) = r.iter().enumerate().find(|(_, v)| !v.is_finite()) {
            return Err(SolveError::NonFinite {
                matrix,
                row,
                column,
                value,
            });
        }
    }
    Ok(())
}

/// Same as [`finite`] for `f32` input (reported as `f64`).
pub(crate) fn finite_f32(matrix: &'static str, m: ArrayView2<'_, f32>) -> Result<()> {
    for (row, r) in m.outer_iter().enumerate() {
        if let Some((column, &value)) = r.iter().enumerate().find(|(_, v)| !v.is_finite()) {
            return Err(SolveError::NonFinite {
                matrix,
                row,
                column,
                value: f64::from(value),
            });
        }
    }
    Ok(())
}

/// First non-finite entry of a vector (reported as row 0).
pub(crate) fn finite_vec(matrix: &'static str, v: ArrayView1<'_, f64>) -> Result<()> {
    match v.iter().enumerate().find(|(_, v)| !v.is_finite()) {
        Some((column, &value)) => Err(SolveError::NonFinite {
            matrix,
            row: 0,
            column,
            value,
        }),
        None => Ok(()),
    }
}

/// First non-finite entry of the upper triangle of a square matrix.
pub(crate) fn finite_upper(matrix: &'static str, m: ArrayView2<'_, f64>) -> Result<()> {
    for (row, r) in m.outer_iter().enumerate() {
        let tail = r.slice(ndarray::s![row..]);
        if tail.as_slice().is_some_and(all_finite) {
            continue;
        }
        if let Some((c, &value)) = tail.iter().enumerate().find(|(_, v)| !v.is_finite()) {
            return Err(SolveError::NonFinite {
                matrix,
                row,
                column: row + c,
                value,
            });
        }
    }
    Ok(())
}
