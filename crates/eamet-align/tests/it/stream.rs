//! Streaming form vs batch form.

use approx::assert_abs_diff_eq;
use eamet_align::*;
use ndarray::Array2;
use proptest::prelude::*;

fn matrix(n: usize, d: usize) -> impl Strategy<Value = Array2<f64>> {
    proptest::collection::vec(-1.0..1.0f64, n * d)
        .prop_map(move |v| Array2::from_shape_vec((n, d), v).unwrap())
        .prop_filter("rows must be clearly non-zero", |m| {
            m.rows().into_iter().all(|r| r.dot(&r) > 1e-4)
        })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    #[test]
    fn streaming_prior_scores_equal_batch(
        (k, r) in (1..=12usize, 1..=6usize, 1..=5usize).prop_flat_map(|(n, dk, dr)| (matrix(n, dk), matrix(n, dr))),
        block in 1..6usize,
    ) {
        for dir in [KlDirection::ResidualKey, KlDirection::KeyResidual] {
            let cfg = ScoreConfig {
                divergence: dir,
                block_rows: std::num::NonZeroUsize::new(block).unwrap(),
                ..ScoreConfig::default()
            };
            let batch = misalignment(k.view(), r.view(), &cfg).unwrap();
            let mut stream = AlignmentStream::new(k.view(), r.ncols(), TargetConfig::default()).unwrap();
            let mut streamed = Vec::new();
            for (i, row) in r.rows().into_iter().enumerate() {
                prop_assert_eq!(stream.push(row).unwrap(), i);
                // Scoring the newest fact needs only what is saved so far.
                streamed.push(stream.prior_score(i, &dir).unwrap());
            }
            for (i, (a, b)) in streamed.iter().zip(batch.per_fact()).enumerate() {
                prop_assert!((a - b).abs() <= 1e-10 * b.abs() + 1e-12, "fact {i}: {a} vs {b}");
            }
            let again = Misalignment::from_scores(streamed, dir, Neighbourhood::Prior, Temperature::default());
            prop_assert!((again.total() - batch.total()).abs() <= 1e-9 * batch.total().abs() + 1e-11);
            // The saved residuals are the normalized rows, with their norms.
            let n = NormalizedRows::new(r.view(), Operand::Residuals, ZeroVectors::Reject).unwrap();
            assert_abs_diff_eq!(stream.saved_residuals(), n.view(), epsilon = 1e-15);
            prop_assert_eq!(stream.saved_residual_norms(), n.norms());
        }
    }
}

#[test]
fn stream_accessors() {
    let k = ndarray::array![[1.0_f32, 0.0], [0.0, 1.0], [1.0, 1.0]];
    let mut s = AlignmentStream::new(k.view(), 4, TargetConfig::default()).unwrap();
    assert_eq!((s.facts(), s.saved(), s.residual_dim()), (3, 0, 4));
    assert_eq!(s.keys().nrows(), 3);
    assert_eq!(s.config().top_m.get(), DEFAULT_TOP_M);
    s.push(ndarray::array![0.0_f32, 3.0, 0.0, 4.0].view())
        .unwrap();
    assert_eq!(s.saved(), 1);
    assert_eq!(s.saved_residual_norms(), &[5.0]);
    assert_eq!(
        s.saved_residuals().row(0).to_vec(),
        vec![0.0, 0.6, 0.0, 0.8]
    );
    // Targets for any fact, independent of what is saved.
    assert_eq!(s.targets(2).unwrap().fact(), 2);
}
