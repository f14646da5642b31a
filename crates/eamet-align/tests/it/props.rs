//! Property tests: non-negativity, invariances, equivariance, agreement with the naive code.

use std::num::NonZeroUsize;

use approx::{assert_abs_diff_eq, assert_relative_eq};
use eamet_align::*;
use ndarray::{Array1, Array2};
use proptest::prelude::*;

use crate::naive;

const CASES: u32 = 64;

/// An `n × d` matrix with entries in [-1, 1] and no (near-)zero row.
fn matrix(n: usize, d: usize) -> impl Strategy<Value = Array2<f64>> {
    proptest::collection::vec(-1.0..1.0f64, n * d)
        .prop_map(move |v| Array2::from_shape_vec((n, d), v).unwrap())
        .prop_filter("rows must be clearly non-zero", |m| {
            m.rows().into_iter().all(|r| r.dot(&r) > 1e-4)
        })
}

/// Keys and residuals for the same `n` facts, with independent dimensions.
fn keys_residuals(max_n: usize) -> impl Strategy<Value = (Array2<f64>, Array2<f64>)> {
    (1..=max_n, 1..=6usize, 1..=5usize).prop_flat_map(|(n, dk, dr)| (matrix(n, dk), matrix(n, dr)))
}

/// A random orthogonal `d × d` matrix by modified Gram–Schmidt of a random one.
fn orthogonal(d: usize) -> impl Strategy<Value = Array2<f64>> {
    proptest::collection::vec(-1.0..1.0f64, d * d).prop_filter_map("degenerate", move |v| {
        let mut q = Array2::from_shape_vec((d, d), v).unwrap();
        for c in 0..d {
            for p in 0..c {
                let proj = q.column(c).dot(&q.column(p));
                let prev = q.column(p).to_owned();
                q.column_mut(c).scaled_add(-proj, &prev);
            }
            let norm = q.column(c).dot(&q.column(c)).sqrt();
            if norm < 1e-3 {
                return None;
            }
            q.column_mut(c).mapv_inplace(|x| x / norm);
        }
        Some(q)
    })
}

fn config(tau: f64, nb: Neighbourhood, dir: KlDirection, block: usize) -> ScoreConfig {
    ScoreConfig {
        tau: Temperature::new(tau).unwrap(),
        neighbourhood: nb,
        divergence: dir,
        zero_vectors: ZeroVectors::Reject,
        block_rows: NonZeroUsize::new(block).unwrap(),
    }
}

const ALL: [(Neighbourhood, KlDirection); 4] = [
    (Neighbourhood::AllOthers, KlDirection::ResidualKey),
    (Neighbourhood::AllOthers, KlDirection::KeyResidual),
    (Neighbourhood::Prior, KlDirection::ResidualKey),
    (Neighbourhood::Prior, KlDirection::KeyResidual),
];

proptest! {
    #![proptest_config(ProptestConfig::with_cases(CASES))]

    #[test]
    fn kl_is_nonnegative_and_matches_naive((k, r) in keys_residuals(9), tau in 0.05..2.0f64, block in 1..12usize) {
        let (kn, rn) = (naive::to_rows(&k), naive::to_rows(&r));
        for (nb, dir) in ALL {
            let m = misalignment(k.view(), r.view(), &config(tau, nb, dir, block)).unwrap();
            let want = naive::scores(&kn, &rn, tau, nb == Neighbourhood::Prior, dir == KlDirection::ResidualKey);
            for (i, (&a, &w)) in m.per_fact().iter().zip(&want).enumerate() {
                prop_assert!(a >= -1e-13, "A({i}) = {a} < 0");
                prop_assert!((a - w).abs() <= 1e-9 * w.abs() + 1e-11, "A({i}) = {a}, naive {w}");
            }
        }
    }

    #[test]
    fn zero_when_residuals_are_rotated_keys(
        (k, q) in (2..=9usize, 1..=6usize).prop_flat_map(|(n, d)| (matrix(n, d), orthogonal(d))),
        scales in proptest::collection::vec(0.01..100.0f64, 9),
    ) {
        // R = diag(scales) · K · Q: the same cosines, hence the same neighbourhoods.
        let mut r = k.dot(&q);
        for (mut row, s) in r.rows_mut().into_iter().zip(&scales) {
            row.mapv_inplace(|x| x * s);
        }
        for (nb, dir) in ALL {
            let m = misalignment(k.view(), r.view(), &config(0.07, nb, dir, 4)).unwrap();
            for &a in m.per_fact() {
                prop_assert!(a.abs() <= 1e-12, "A = {a}");
            }
        }
        // And the MSE target term is 0 too: s_r = s_k.
        let mut stream = AlignmentStream::new(k.view(), r.ncols(), TargetConfig::default()).unwrap();
        for i in 0..k.nrows() {
            let t = stream.targets(i).unwrap();
            let loss = stream.loss(&t, r.row(i)).unwrap();
            prop_assert!(loss.mse <= 1e-24 && loss.kl.abs() <= 1e-12, "{loss:?}");
            stream.push(r.row(i)).unwrap();
        }
    }

    #[test]
    fn invariant_to_positive_row_rescaling(
        (k, r) in keys_residuals(8),
        ks in proptest::collection::vec(-3.0..3.0f64, 8),
        rs in proptest::collection::vec(-3.0..3.0f64, 8),
    ) {
        let mut k2 = k.clone();
        let mut r2 = r.clone();
        for (i, mut row) in k2.rows_mut().into_iter().enumerate() {
            row.mapv_inplace(|x| x * 10f64.powf(ks[i]));
        }
        for (i, mut row) in r2.rows_mut().into_iter().enumerate() {
            row.mapv_inplace(|x| x * 10f64.powf(rs[i]));
        }
        for (nb, dir) in ALL {
            let c = config(0.07, nb, dir, 3);
            let a = misalignment(k.view(), r.view(), &c).unwrap();
            let b = misalignment(k2.view(), r2.view(), &c).unwrap();
            for (x, y) in a.per_fact().iter().zip(b.per_fact()) {
                prop_assert!((x - y).abs() <= 1e-9 * x.abs() + 1e-11, "{x} vs {y}");
            }
        }
    }

    #[test]
    fn permuting_facts_permutes_scores(
        (k, r, perm) in keys_residuals(9).prop_flat_map(|(k, r)| {
            let n = k.nrows();
            (Just(k), Just(r), Just((0..n).collect::<Vec<usize>>()).prop_shuffle())
        }),
    ) {
        let kp = k.select(ndarray::Axis(0), &perm);
        let rp = r.select(ndarray::Axis(0), &perm);
        for dir in [KlDirection::ResidualKey, KlDirection::KeyResidual] {
            let c = config(0.07, Neighbourhood::AllOthers, dir, 2);
            let a = misalignment(k.view(), r.view(), &c).unwrap();
            let b = misalignment(kp.view(), rp.view(), &c).unwrap();
            for (i, &p) in perm.iter().enumerate() {
                let (x, y) = (b.per_fact()[i], a.per_fact()[p]);
                prop_assert!((x - y).abs() <= 1e-9 * y.abs() + 1e-11, "fact {i} <- {p}: {x} vs {y}");
            }
            prop_assert!((a.total() - b.total()).abs() <= 1e-9 * a.total().abs() + 1e-10);
        }
    }

    #[test]
    fn blocked_cosines_match_naive(
        (a, b) in (1..=11usize, 1..=9usize, 1..=7usize).prop_flat_map(|(n1, n2, d)| (matrix(n1, d), matrix(n2, d))),
        block in 1..14usize,
    ) {
        let c = cosine_matrix(a.view(), b.view(), ZeroVectors::Reject, NonZeroUsize::new(block).unwrap()).unwrap();
        let want = naive::cos_matrix(&naive::to_rows(&a), &naive::to_rows(&b));
        prop_assert_eq!(c.dim(), (a.nrows(), b.nrows()));
        for i in 0..a.nrows() {
            for j in 0..b.nrows() {
                prop_assert!((c[[i, j]] - want[i][j]).abs() <= 1e-14, "({i},{j}) block {block}");
            }
        }
        // f32 input: same to f32 precision.
        let c32 = cosine_matrix(a.mapv(|x| x as f32).view(), b.mapv(|x| x as f32).view(), ZeroVectors::Reject,
            NonZeroUsize::new(block).unwrap()).unwrap();
        for (x, y) in c32.iter().zip(c.iter()) {
            prop_assert!((f64::from(*x) - y).abs() <= 1e-6);
        }
    }

    #[test]
    fn block_size_does_not_change_scores((k, r) in keys_residuals(13), b1 in 1..15usize, b2 in 1..15usize) {
        for (nb, dir) in ALL {
            let x = misalignment(k.view(), r.view(), &config(0.07, nb, dir, b1)).unwrap();
            let y = misalignment(k.view(), r.view(), &config(0.07, nb, dir, b2)).unwrap();
            for (p, q) in x.per_fact().iter().zip(y.per_fact()) {
                prop_assert!((p - q).abs() <= 1e-10 * p.abs() + 1e-12);
            }
        }
    }

    #[test]
    fn f32_scores_track_f64((k, r) in keys_residuals(8)) {
        let c = config(0.07, Neighbourhood::AllOthers, KlDirection::ResidualKey, 3);
        let a = misalignment(k.view(), r.view(), &c).unwrap();
        let b = misalignment(k.mapv(|x| x as f32).view(), r.mapv(|x| x as f32).view(), &c).unwrap();
        for (x, y) in a.per_fact().iter().zip(b.per_fact()) {
            prop_assert!((x - y).abs() <= 1e-4 * x.abs() + 1e-4, "{x} vs {y}");
        }
    }

    #[test]
    fn targets_and_losses_match_naive(
        (k, r) in keys_residuals(10), m in 1..6usize, tau in 0.05..1.0f64,
        live in proptest::collection::vec(-1.0..1.0f64, 5),
    ) {
        let cfg = TargetConfig { tau: Temperature::new(tau).unwrap(), top_m: NonZeroUsize::new(m).unwrap(), ..TargetConfig::default() };
        let kn = naive::to_rows(&k);
        let rn = naive::to_rows(&r);
        let mut stream = AlignmentStream::new(k.view(), r.ncols(), cfg).unwrap();
        let delta = Array1::from(live[..r.ncols()].to_vec());
        prop_assume!(delta.dot(&delta) > 1e-4);
        for i in 0..k.nrows() {
            let t = stream.targets(i).unwrap();
            let (sk, pk, top, w) = naive::targets(&kn, i, tau, m);
            assert_abs_diff_eq!(t.key_cosines(), &sk[..], epsilon = 1e-14);
            assert_relative_eq!(t.key_probs(), &pk[..], max_relative = 1e-10);
            // The top set: the naive one, up to swaps among cosines equal to rounding (e.g. d = 1,
            // where every cosine is ±1). So check it is *a* valid top-M of the naive cosines.
            let ours = t.top_indices();
            prop_assert_eq!(ours.len(), top.len());
            let worst_in = ours.iter().map(|&j| sk[j]).fold(f64::INFINITY, f64::min);
            let best_out = (0..i).filter(|j| !ours.contains(j)).map(|j| sk[j]).fold(f64::NEG_INFINITY, f64::max);
            prop_assert!(worst_in >= best_out - 1e-12, "{ours:?} vs {top:?}");
            prop_assert!(ours.windows(2).all(|p| sk[p[0]] >= sk[p[1]] - 1e-12), "not sorted: {ours:?}");
            let ours_cos: Vec<f64> = ours.iter().map(|&j| sk[j]).collect();
            assert_abs_diff_eq!(t.top_cosines(), &ours_cos[..], epsilon = 1e-14);
            let naive_w = if ours.is_empty() { vec![] } else { naive::softmax(&ours_cos, tau) };
            assert_relative_eq!(t.top_weights(), &naive_w[..], max_relative = 1e-10);
            // Sorted weights agree with the naive top set's weights whatever the tie order.
            let sorted = |v: &[f64]| { let mut v = v.to_vec(); v.sort_by(f64::total_cmp); v };
            assert_relative_eq!(&sorted(t.top_weights())[..], &sorted(&w)[..], max_relative = 1e-10);
            // Loss at a live δ against the saved δ_j, j < i.
            let s_r = stream.residual_cosines(i, delta.view()).unwrap();
            let dv = delta.to_vec();
            let want_sr: Vec<f64> = (0..i).map(|j| naive::cos(&dv, &rn[j])).collect();
            assert_abs_diff_eq!(&s_r[..], &want_sr[..], epsilon = 1e-14);
            let loss = stream.loss(&t, delta.view()).unwrap();
            let want_kl = naive::kl_loss(&pk, &want_sr, tau);
            let want_mse: f64 = ours.iter().zip(&naive_w).map(|(&j, wj)| wj * (sk[j] - want_sr[j]).powi(2)).sum();
            prop_assert!((loss.kl - want_kl).abs() <= 1e-9 * want_kl.abs() + 1e-12, "{} vs {want_kl}", loss.kl);
            prop_assert!((loss.mse - want_mse).abs() <= 1e-12 * want_mse + 1e-15);
            stream.push(r.row(i)).unwrap();
        }
    }

    #[test]
    fn gradient_matches_finite_differences(
        (k, r) in keys_residuals(8).prop_filter("need two facts", |(k, _)| k.nrows() >= 2),
        live in proptest::collection::vec(-1.0..1.0f64, 5),
    ) {
        let n = k.nrows();
        let cfg = TargetConfig { tau: Temperature::new(0.3).unwrap(), top_m: NonZeroUsize::new(3).unwrap(), ..TargetConfig::default() };
        let mut stream = AlignmentStream::new(k.view(), r.ncols(), cfg).unwrap();
        for i in 0..n - 1 {
            stream.push(r.row(i)).unwrap();
        }
        let t = stream.targets(n - 1).unwrap();
        let delta = Array1::from(live[..r.ncols()].to_vec());
        prop_assume!(delta.dot(&delta) > 0.05);
        let g = stream.loss_gradient(&t, delta.view()).unwrap();
        let h = 1e-6;
        for c in 0..delta.len() {
            let mut plus = delta.clone();
            let mut minus = delta.clone();
            plus[c] += h;
            minus[c] -= h;
            let lp = stream.loss(&t, plus.view()).unwrap();
            let lm = stream.loss(&t, minus.view()).unwrap();
            let (fd_kl, fd_mse) = ((lp.kl - lm.kl) / (2.0 * h), (lp.mse - lm.mse) / (2.0 * h));
            prop_assert!((g.kl[c] - fd_kl).abs() <= 1e-5 * (1.0 + fd_kl.abs()), "kl[{c}]: {} vs {fd_kl}", g.kl[c]);
            prop_assert!((g.mse[c] - fd_mse).abs() <= 1e-5 * (1.0 + fd_mse.abs()), "mse[{c}]: {} vs {fd_mse}", g.mse[c]);
        }
        prop_assert_eq!(g.loss, stream.loss(&t, delta.view()).unwrap());
    }
}
