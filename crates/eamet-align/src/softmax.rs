//! Temperature, numerically stable softmax / log-softmax / log-sum-exp (all in `f64`).

use crate::error::{AlignError, Operand, Result};

/// The temperature EAMET uses for every neighbourhood distribution (`tau` in the reference
/// hyperparameters).
pub const EAMET_TAU: f64 = 0.07;

/// A softmax temperature τ, validated once: finite and > 0 (and `1/τ` finite).
///
/// ```
/// use eamet_align::Temperature;
/// let tau = Temperature::new(0.07)?;
/// assert_eq!(tau.get(), 0.07);
/// assert_eq!(Temperature::default(), tau);
/// assert!(Temperature::new(-1.0).is_err() && Temperature::new(f64::NAN).is_err());
/// # Ok::<(), eamet_align::AlignError>(())
/// ```
#[derive(Debug, Clone, Copy, PartialEq, PartialOrd)]
pub struct Temperature(f64);

impl Temperature {
    /// Checks that `tau` is finite and > 0, with `1/τ` finite (no subnormal τ).
    ///
    /// # Errors
    /// [`AlignError::InvalidTemperature`] otherwise.
    pub fn new(tau: f64) -> Result<Self> {
        if tau.is_finite() && tau > 0.0 && (1.0 / tau).is_finite() {
            Ok(Self(tau))
        } else {
            Err(AlignError::InvalidTemperature(tau))
        }
    }

    /// The value of τ.
    pub fn get(self) -> f64 {
        self.0
    }
}

impl Default for Temperature {
    /// τ = [`EAMET_TAU`] = 0.07.
    fn default() -> Self {
        Self(EAMET_TAU)
    }
}

impl std::fmt::Display for Temperature {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.0)
    }
}

fn check_logits(logits: &[f64]) -> Result<()> {
    match logits
        .iter()
        .position(|x| x.is_nan() || *x == f64::INFINITY)
    {
        Some(i) => Err(AlignError::NonFinite {
            operand: Operand::Logits,
            row: 0,
            column: i,
            value: logits[i],
        }),
        None => Ok(()),
    }
}

/// `ln Σ exp(x_j)`, stable (shifted by the maximum); `-inf` for an empty slice or all `-inf`.
/// `-inf` entries are allowed (they stand for probability 0).
///
/// ```
/// use eamet_align::log_sum_exp;
/// let v = log_sum_exp(&[1000.0, 1000.0])?;
/// assert!((v - (1000.0 + 2f64.ln())).abs() < 1e-12);
/// # Ok::<(), eamet_align::AlignError>(())
/// ```
///
/// # Errors
/// [`AlignError::NonFinite`] (operand [`Operand::Logits`]) for NaN or `+inf`.
pub fn log_sum_exp(logits: &[f64]) -> Result<f64> {
    check_logits(logits)?;
    Ok(lse(logits, 1.0))
}

/// `softmax(x)_j = exp(x_j − LSE(x))`, stable. Empty in, empty out.
///
/// ```
/// use eamet_align::softmax;
/// let p = softmax(&[0.0, 2f64.ln()])?;
/// assert!((p[0] - 1.0 / 3.0).abs() < 1e-15 && (p[1] - 2.0 / 3.0).abs() < 1e-15);
/// # Ok::<(), eamet_align::AlignError>(())
/// ```
///
/// # Errors
/// As [`log_sum_exp`]; also when every entry is `-inf` (no distribution exists).
pub fn softmax(logits: &[f64]) -> Result<Vec<f64>> {
    let mut out = log_softmax(logits)?;
    out.iter_mut().for_each(|x| *x = x.exp());
    Ok(out)
}

/// `log softmax(x)_j = x_j − LSE(x)`, stable. Empty in, empty out.
///
/// ```
/// use eamet_align::log_softmax;
/// let l = log_softmax(&[5.0, 5.0])?;
/// assert!((l[0] + 2f64.ln()).abs() < 1e-15);
/// # Ok::<(), eamet_align::AlignError>(())
/// ```
///
/// # Errors
/// As [`softmax`].
pub fn log_softmax(logits: &[f64]) -> Result<Vec<f64>> {
    check_logits(logits)?;
    let z = lse(logits, 1.0);
    if z == f64::NEG_INFINITY && !logits.is_empty() {
        return Err(AlignError::NonFinite {
            operand: Operand::Logits,
            row: 0,
            column: 0,
            value: f64::NEG_INFINITY,
        });
    }
    Ok(logits.iter().map(|x| x - z).collect())
}

/// `LSE(scale·x)` for finite or `-inf` `x` (unchecked).
pub(crate) fn lse(x: &[f64], scale: f64) -> f64 {
    let m = x.iter().fold(f64::NEG_INFINITY, |m, &v| m.max(v * scale));
    if m == f64::NEG_INFINITY {
        return m;
    }
    m + x.iter().map(|&v| (v * scale - m).exp()).sum::<f64>().ln()
}

/// `softmax(scale·x)` for finite `x` (unchecked, non-empty).
pub(crate) fn softmax_scaled(x: &[f64], scale: f64) -> Vec<f64> {
    let m = x.iter().fold(f64::NEG_INFINITY, |m, &v| m.max(v * scale));
    let mut out: Vec<f64> = x.iter().map(|&v| (v * scale - m).exp()).collect();
    let z: f64 = out.iter().sum();
    out.iter_mut().for_each(|p| *p /= z);
    out
}

/// `KL(softmax(scale·x) ‖ softmax(scale·y))` for finite `x`, `y` of equal, non-zero length
/// (unchecked). Computed in the log domain, `Σ_j p_j [(u_j − LSE u) − (v_j − LSE v)]` with
/// `u = scale·x`, `v = scale·y`: exactly 0 when `x == y`, finite even where `p_j` or `q_j`
/// underflow. Not clamped: rounding can leave values of order −1e−16.
pub(crate) fn kl_scaled(x: &[f64], y: &[f64], scale: f64) -> f64 {
    let mx = x.iter().fold(f64::NEG_INFINITY, |m, &v| m.max(v * scale));
    let my = y.iter().fold(f64::NEG_INFINITY, |m, &v| m.max(v * scale));
    let ex: Vec<f64> = x.iter().map(|&v| (v * scale - mx).exp()).collect();
    let zx: f64 = ex.iter().sum();
    let ly = my + y.iter().map(|&v| (v * scale - my).exp()).sum::<f64>().ln();
    let lx = mx + zx.ln();
    let mut acc = 0.0;
    for ((&e, &u), &v) in ex.iter().zip(x).zip(y) {
        if e > 0.0 {
            acc += e * ((u * scale - lx) - (v * scale - ly));
        }
    }
    acc / zx
}
