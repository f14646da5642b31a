//! Every user error is a typed error naming the input and row; nothing panics.

use std::num::NonZeroUsize;

use eamet_align::*;
use ndarray::{array, Array2};

fn nz(n: usize) -> NonZeroUsize {
    NonZeroUsize::new(n).unwrap()
}

#[test]
fn non_finite_inputs_name_operand_row_and_column() {
    let mut k = Array2::<f64>::ones((4, 3));
    let r = Array2::<f64>::ones((4, 2));
    k[[2, 1]] = f64::NAN;
    k[[3, 0]] = f64::INFINITY;
    let err = misalignment(k.view(), r.view(), &ScoreConfig::default()).unwrap_err();
    assert!(
        matches!(err, AlignError::NonFinite { operand: Operand::Keys, row: 2, column: 1, value } if value.is_nan()),
        "{err:?}"
    );
    assert!(
        err.to_string().contains("keys") && err.to_string().contains("row 2"),
        "{err}"
    );

    let k = Array2::<f32>::ones((3, 3));
    let mut r = Array2::<f32>::ones((3, 2));
    r[[1, 1]] = f32::NEG_INFINITY;
    let err = misalignment(k.view(), r.view(), &ScoreConfig::default()).unwrap_err();
    assert_eq!(
        err,
        AlignError::NonFinite {
            operand: Operand::Residuals,
            row: 1,
            column: 1,
            value: f64::NEG_INFINITY
        }
    );
}

#[test]
fn zero_rows_are_rejected_by_default() {
    let k = array![[1.0, 0.0], [0.0, 0.0], [0.0, 0.0]];
    let r = array![[1.0], [1.0], [1.0]];
    let err = misalignment(k.view(), r.view(), &ScoreConfig::default()).unwrap_err();
    assert_eq!(
        err,
        AlignError::ZeroVector {
            operand: Operand::Keys,
            row: 1
        }
    );
    let err = cosine_matrix(r.view(), k.view(), ZeroVectors::Reject, nz(1)).unwrap_err();
    assert!(matches!(
        err,
        AlignError::DimensionMismatch {
            operand: Operand::Right,
            expected: 1,
            found: 2
        }
    ));
    let k2 = array![[1.0], [0.0]];
    let err = cosine_matrix(r.view(), k2.view(), ZeroVectors::Reject, nz(1)).unwrap_err();
    assert_eq!(
        err,
        AlignError::ZeroVector {
            operand: Operand::Right,
            row: 1
        }
    );
    // A zero-width matrix has only zero rows.
    let e = Array2::<f64>::zeros((2, 0));
    assert!(matches!(
        misalignment(e.view(), e.view(), &ScoreConfig::default()),
        Err(AlignError::ZeroVector {
            operand: Operand::Keys,
            row: 0
        })
    ));
}

#[test]
fn row_count_mismatch() {
    let k = Array2::<f64>::ones((3, 2));
    let r = Array2::<f64>::ones((2, 2));
    let err = misalignment(k.view(), r.view(), &ScoreConfig::default()).unwrap_err();
    assert_eq!(
        err,
        AlignError::RowCountMismatch {
            keys: 3,
            residuals: 2
        }
    );
}

#[test]
fn bad_temperatures() {
    for tau in [0.0, -0.07, f64::NAN, f64::INFINITY, -0.0, 1e-310] {
        assert!(
            matches!(
                Temperature::new(tau),
                Err(AlignError::InvalidTemperature(_))
            ),
            "{tau}"
        );
    }
    assert!(Temperature::new(f64::MIN_POSITIVE).is_ok());
    // N = 0: no fact index is valid.
    let s = AlignmentStream::new(
        Array2::<f32>::zeros((0, 2)).view(),
        2,
        TargetConfig::default(),
    )
    .unwrap();
    assert_eq!(
        s.targets(0).unwrap_err(),
        AlignError::FactOutOfRange { fact: 0, end: 0 }
    );
}

#[test]
fn bad_logits() {
    assert!(matches!(
        softmax(&[0.0, f64::NAN]),
        Err(AlignError::NonFinite {
            operand: Operand::Logits,
            column: 1,
            ..
        })
    ));
    assert!(log_sum_exp(&[f64::INFINITY]).is_err());
    assert!(log_softmax(&[f64::NEG_INFINITY, f64::NEG_INFINITY]).is_err());
}

#[test]
fn stream_errors() {
    let k = array![[1.0, 0.0], [0.0, 1.0]];
    let mut s = AlignmentStream::new(k.view(), 3, TargetConfig::default()).unwrap();
    // Wrong length, non-finite, zero: nothing saved.
    assert_eq!(
        s.push(array![1.0, 2.0].view()).unwrap_err(),
        AlignError::DimensionMismatch {
            operand: Operand::Residuals,
            expected: 3,
            found: 2
        }
    );
    assert!(matches!(
        s.push(array![1.0, f64::NAN, 0.0].view()),
        Err(AlignError::NonFinite {
            operand: Operand::Residuals,
            row: 0,
            column: 1,
            ..
        })
    ));
    assert_eq!(
        s.push(array![0.0, 0.0, 0.0].view()).unwrap_err(),
        AlignError::ZeroVector {
            operand: Operand::Residuals,
            row: 0
        }
    );
    assert_eq!(s.saved(), 0);
    // prior_score needs the fact's residual; residual_cosines at most `saved`.
    assert_eq!(
        s.prior_score(0, &KlDirection::default()).unwrap_err(),
        AlignError::FactOutOfRange { fact: 0, end: 0 }
    );
    assert!(matches!(
        s.residual_cosines(1, array![1.0, 0.0, 0.0].view()),
        Err(AlignError::FactOutOfRange { fact: 1, end: 1 })
    ));
    assert!(s
        .residual_cosines(0, array![1.0, 0.0, 0.0].view())
        .unwrap()
        .is_empty());
    assert!(matches!(
        s.targets(2),
        Err(AlignError::FactOutOfRange { fact: 2, end: 2 })
    ));
    s.push(array![1.0, 0.0, 0.0].view()).unwrap();
    assert_eq!(
        s.residual_cosines(1, array![0.0, 0.0].view()).unwrap_err(),
        AlignError::DimensionMismatch {
            operand: Operand::LiveResidual,
            expected: 3,
            found: 2
        }
    );
    assert_eq!(
        s.residual_cosines(1, array![0.0, 0.0, 0.0].view())
            .unwrap_err(),
        AlignError::ZeroVector {
            operand: Operand::LiveResidual,
            row: 1
        }
    );
    s.push(array![0.0, 1.0, 0.0].view()).unwrap();
    assert_eq!(
        s.push(array![0.0, 1.0, 0.0].view()).unwrap_err(),
        AlignError::StreamFull { facts: 2 }
    );
    // Loss helpers check the residual cosines.
    let t = s.targets(1).unwrap();
    assert_eq!(
        t.kl_loss(&[0.1, 0.2]).unwrap_err(),
        AlignError::DimensionMismatch {
            operand: Operand::ResidualCosines,
            expected: 1,
            found: 2
        }
    );
    assert!(matches!(
        t.mse_loss(&[f64::NAN]),
        Err(AlignError::NonFinite {
            operand: Operand::ResidualCosines,
            row: 1,
            column: 0,
            ..
        })
    ));
    assert!(
        FactTargets::from_key_cosines(&[0.1, f64::INFINITY], Temperature::default(), nz(1))
            .is_err()
    );
    // Keys with a zero row.
    let bad = array![[1.0, 0.0], [0.0, 0.0]];
    assert_eq!(
        AlignmentStream::new(bad.view(), 1, TargetConfig::default()).unwrap_err(),
        AlignError::ZeroVector {
            operand: Operand::Keys,
            row: 1
        }
    );
}

#[test]
fn zero_live_residual_under_cosine_zero() {
    let k = array![[1.0, 0.0], [0.6, 0.8], [0.0, 1.0]];
    let cfg = TargetConfig {
        zero_vectors: ZeroVectors::CosineZero,
        ..TargetConfig::default()
    };
    let mut s = AlignmentStream::new(k.view(), 2, cfg).unwrap();
    s.push(array![1.0, 0.0].view()).unwrap();
    s.push(array![0.0, 1.0].view()).unwrap();
    let t = s.targets(2).unwrap();
    // δ = 0: cosines 0, the loss is defined; its gradient is not.
    assert_eq!(
        s.residual_cosines(2, array![0.0, 0.0].view()).unwrap(),
        vec![0.0, 0.0]
    );
    let loss = s.loss(&t, array![0.0, 0.0].view()).unwrap();
    assert!(loss.kl > 0.0 && loss.mse > 0.0);
    assert_eq!(
        s.loss_gradient(&t, array![0.0, 0.0].view()).unwrap_err(),
        AlignError::ZeroVector {
            operand: Operand::LiveResidual,
            row: 2
        }
    );
}
