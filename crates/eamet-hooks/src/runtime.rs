//! A self-check that libtorch is linked, loads, and computes — forward and backward.

use tch::{Kind, Tensor};

/// What [`self_check`] found.
#[derive(Debug, Clone, PartialEq)]
pub struct RuntimeReport {
    /// Whether CUDA is usable from this process.
    pub cuda: bool,
    /// Threads libtorch uses for intra-op parallelism.
    pub threads: i32,
    /// `x·x` for `x = [1, 2, 3]` computed by libtorch (14).
    pub dot: f64,
    /// `d/dx sum(x²)` at `x = [1, 2, 3]` computed by autograd (`[2, 4, 6]`).
    pub grad: Vec<f64>,
}

/// Why the self-check failed.
#[derive(Debug, thiserror::Error)]
pub enum RuntimeError {
    /// libtorch raised an error.
    #[error("libtorch error: {0}")]
    Torch(#[from] tch::TchError),
    /// libtorch computed something other than the known answer.
    #[error("libtorch computed {what} = {got}, expected {expected}")]
    WrongAnswer {
        /// Which quantity.
        what: &'static str,
        /// What came out.
        got: String,
        /// What is right.
        expected: String,
    },
}

/// Run a tiny forward and backward pass through libtorch and compare with the known answers.
pub fn self_check() -> Result<RuntimeReport, RuntimeError> {
    let x = Tensor::from_slice(&[1.0f64, 2.0, 3.0]).set_requires_grad(true);
    let dot = x.f_dot(&x)?.f_double_value(&[])?;
    let loss = x.f_mul(&x)?.f_sum(Kind::Double)?;
    loss.f_backward()?;
    let g = x.grad();
    let grad: Vec<f64> = Vec::<f64>::try_from(&g)?;
    if dot != 14.0 {
        return Err(RuntimeError::WrongAnswer {
            what: "[1,2,3]·[1,2,3]",
            got: dot.to_string(),
            expected: "14".into(),
        });
    }
    if grad != [2.0, 4.0, 6.0] {
        return Err(RuntimeError::WrongAnswer {
            what: "grad sum(x²)",
            got: format!("{grad:?}"),
            expected: "[2, 4, 6]".into(),
        });
    }
    Ok(RuntimeReport {
        cuda: tch::Cuda::is_available(),
        threads: tch::get_num_threads(),
        dot,
        grad,
    })
}
