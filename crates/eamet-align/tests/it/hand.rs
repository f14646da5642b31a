//! Small cases whose values are written down by hand.

use std::num::NonZeroUsize;

use approx::assert_abs_diff_eq;
use eamet_align::*;
use ndarray::array;

fn nz(n: usize) -> NonZeroUsize {
    NonZeroUsize::new(n).unwrap()
}

fn cfg(tau: f64, nb: Neighbourhood, dir: KlDirection) -> ScoreConfig {
    ScoreConfig {
        tau: Temperature::new(tau).unwrap(),
        neighbourhood: nb,
        divergence: dir,
        ..ScoreConfig::default()
    }
}

/// Two-point distribution softmax(x1, x2) written out: (1/(1+e^{x2-x1}), 1/(1+e^{x1-x2})).
fn two(x1: f64, x2: f64) -> [f64; 2] {
    [1.0 / (1.0 + (x2 - x1).exp()), 1.0 / (1.0 + (x1 - x2).exp())]
}

/// Keys k0 = (1,0), k1 = (0,1), k2 = (1,1): cos(k0,k1) = 0, cos(k0,k2) = cos(k1,k2) = 1/√2.
/// Residuals r0 = (1,0), r1 = (-1,0), r2 = (2,0): cos(r0,r1) = -1, cos(r0,r2) = 1, cos(r1,r2) = -1.
fn three_facts() -> (ndarray::Array2<f64>, ndarray::Array2<f64>) {
    (
        array![[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]],
        array![[1.0, 0.0], [-1.0, 0.0], [2.0, 0.0]],
    )
}

#[test]
fn cosines_of_three_facts() {
    let (k, r) = three_facts();
    let ck = cosine_matrix(k.view(), k.view(), ZeroVectors::Reject, nz(2)).unwrap();
    let h = std::f64::consts::FRAC_1_SQRT_2;
    let want = array![[1.0, 0.0, h], [0.0, 1.0, h], [h, h, 1.0]];
    assert_abs_diff_eq!(ck, want, epsilon = 1e-15);
    let cr = cosine_matrix(r.view(), r.view(), ZeroVectors::Reject, nz(2)).unwrap();
    assert_abs_diff_eq!(
        cr,
        array![[1.0, -1.0, 1.0], [-1.0, 1.0, -1.0], [1.0, -1.0, 1.0]],
        epsilon = 1e-15
    );
}

#[test]
fn prior_scores_by_hand_tau_one() {
    let (k, r) = three_facts();
    // Fact 2: P_k = (1/2, 1/2); P_r = softmax(1, -1) = (a, b), a = 1/(1+e^-2).
    let a = 1.0 / (1.0 + (-2.0f64).exp());
    let b = 1.0 - a;
    let paper = std::f64::consts::LN_2 + a * a.ln() + b * b.ln(); // Σ P_r ln(P_r / ½)
    let code = -std::f64::consts::LN_2 - 0.5 * (a.ln() + b.ln()); // Σ ½ ln(½ / P_r)
    let m = misalignment(
        k.view(),
        r.view(),
        &cfg(1.0, Neighbourhood::Prior, KlDirection::ResidualKey),
    )
    .unwrap();
    // Facts 0 and 1 have 0 and 1 neighbours: a single-point distribution is always aligned.
    assert_eq!(m.per_fact()[0], 0.0);
    assert_abs_diff_eq!(m.per_fact()[1], 0.0, epsilon = 1e-15);
    assert_abs_diff_eq!(m.per_fact()[2], paper, epsilon = 1e-14);
    assert_abs_diff_eq!(paper, 0.327_813_3, epsilon = 1e-7); // ln 2 − H(0.881, 0.119)
    let m = misalignment(
        k.view(),
        r.view(),
        &cfg(1.0, Neighbourhood::Prior, KlDirection::KeyResidual),
    )
    .unwrap();
    assert_abs_diff_eq!(m.per_fact()[2], code, epsilon = 1e-14);
    assert_abs_diff_eq!(code, 0.433_780_8, epsilon = 1e-7);
    assert_abs_diff_eq!(m.total(), code, epsilon = 1e-14);
}

#[test]
fn all_others_scores_by_hand_tau_half() {
    let (k, r) = three_facts();
    let tau = 0.5;
    let h = std::f64::consts::FRAC_1_SQRT_2;
    let kl2 = |p: [f64; 2], q: [f64; 2]| p[0] * (p[0] / q[0]).ln() + p[1] * (p[1] / q[1]).ln();
    // Fact 0: neighbours (1, 2): s_k = (0, h), s_r = (-1, 1).
    // Fact 1: neighbours (0, 2): s_k = (0, h), s_r = (-1, -1).
    // Fact 2: neighbours (0, 1): s_k = (h, h), s_r = (1, -1).
    let pk = [two(0.0, h / tau), two(0.0, h / tau), two(h / tau, h / tau)];
    let pr = [
        two(-1.0 / tau, 1.0 / tau),
        two(-1.0 / tau, -1.0 / tau),
        two(1.0 / tau, -1.0 / tau),
    ];
    for (dir, paper) in [
        (KlDirection::ResidualKey, true),
        (KlDirection::KeyResidual, false),
    ] {
        let m = misalignment(k.view(), r.view(), &cfg(tau, Neighbourhood::AllOthers, dir)).unwrap();
        for i in 0..3 {
            let want = if paper {
                kl2(pr[i], pk[i])
            } else {
                kl2(pk[i], pr[i])
            };
            assert_abs_diff_eq!(m.per_fact()[i], want, epsilon = 1e-13);
        }
        assert_eq!(m.neighbourhood(), Neighbourhood::AllOthers);
        assert_eq!(*m.divergence(), dir);
    }
    // Fact 1 by hand: P_r is uniform; P_k = (1/(1+e^{2h}), 1/(1+e^{-2h})) with 2h = √2.
    let m = misalignment(
        k.view(),
        r.view(),
        &cfg(tau, Neighbourhood::AllOthers, KlDirection::ResidualKey),
    )
    .unwrap();
    let p0 = 1.0 / (1.0 + 2f64.sqrt().exp());
    let want = 0.5 * (0.5 / p0).ln() + 0.5 * (0.5 / (1.0 - p0)).ln();
    assert_abs_diff_eq!(m.per_fact()[1], want, epsilon = 1e-14);
}

#[test]
fn summary_quantiles_by_hand() {
    let tau = Temperature::default();
    let m = Misalignment::from_scores(
        vec![4.0, 0.0, 3.0, 1.0, 2.0],
        KlDirection::ResidualKey,
        Neighbourhood::AllOthers,
        tau,
    );
    let s = m.summary().unwrap();
    assert_eq!(s.count, 5);
    assert_eq!((s.total, s.mean, s.min, s.max), (10.0, 2.0, 0.0, 4.0));
    assert_abs_diff_eq!(s.p25, 1.0, epsilon = 1e-15);
    assert_abs_diff_eq!(s.median, 2.0, epsilon = 1e-15);
    assert_abs_diff_eq!(s.p75, 3.0, epsilon = 1e-15);
    assert_abs_diff_eq!(s.p90, 3.6, epsilon = 1e-12);
    assert_abs_diff_eq!(s.p99, 3.96, epsilon = 1e-12);
    assert_eq!(m.quantile(0.5), Some(2.0));
    assert_eq!(m.quantile(f64::NAN), None);
    // Prior form: fact 0 (score 4.0 here) has no neighbours and is left out of the summary.
    let m = Misalignment::from_scores(
        vec![4.0, 0.0, 3.0],
        KlDirection::ResidualKey,
        Neighbourhood::Prior,
        tau,
    );
    let s = m.summary().unwrap();
    assert_eq!((s.count, s.total, s.median), (2, 3.0, 1.5));
    assert_eq!(m.total(), 7.0); // the total is the plain sum
    let text = m.to_string();
    assert!(
        text.starts_with("A(i) = KL(P_r || P_k) over j < i, τ = 0.07, N = 3"),
        "{text}"
    );
}

#[test]
fn targets_by_hand() {
    // k3 = (1, 0); earlier keys at angles 0°, 60°, 90°, 180° → cosines 1, ½, 0, −1.
    let s3 = 3f64.sqrt() / 2.0;
    let keys = array![[2.0, 0.0], [0.5, s3], [0.0, 3.0], [-1.0, 0.0], [1.0, 0.0]];
    let cfg = TargetConfig {
        tau: Temperature::new(0.5).unwrap(),
        top_m: nz(2),
        ..TargetConfig::default()
    };
    let stream = AlignmentStream::new(keys.view(), 3, cfg).unwrap();
    let t = stream.targets(4).unwrap();
    assert_eq!(t.fact(), 4);
    assert_abs_diff_eq!(t.key_cosines(), &[1.0, 0.5, 0.0, -1.0][..], epsilon = 1e-15);
    // P_k ∝ e^{2}, e^{1}, e^{0}, e^{-2}.
    let z = 2f64.exp() + 1f64.exp() + 1.0 + (-2f64).exp();
    let want = [2f64.exp() / z, 1f64.exp() / z, 1.0 / z, (-2f64).exp() / z];
    assert_abs_diff_eq!(t.key_probs(), &want[..], epsilon = 1e-15);
    // Top-2: facts 0 and 1, weights softmax(2, 1) = (e/(e+1), 1/(e+1)).
    assert_eq!(t.top_indices(), &[0, 1]);
    assert_abs_diff_eq!(t.top_cosines(), &[1.0, 0.5][..], epsilon = 1e-15);
    let e = 1f64.exp();
    assert_abs_diff_eq!(
        t.top_weights(),
        &[e / (e + 1.0), 1.0 / (e + 1.0)][..],
        epsilon = 1e-15
    );
    // Losses at s_r = (0, 0, 0, 0): MSE = w0·1 + w1·¼; KL = Σ p ln((p+ε)/(¼+ε)).
    let s_r = [0.0; 4];
    let mse = e / (e + 1.0) + 0.25 / (e + 1.0);
    assert_abs_diff_eq!(t.mse_loss(&s_r).unwrap(), mse, epsilon = 1e-15);
    let kl: f64 = want
        .iter()
        .map(|p| p * ((p + 1e-8) / (0.25 + 1e-8)).ln())
        .sum();
    assert_abs_diff_eq!(t.kl_loss(&s_r).unwrap(), kl, epsilon = 1e-15);
    // Fact 0: all empty, both losses 0.
    let t0 = stream.targets(0).unwrap();
    assert!(t0.key_cosines().is_empty() && t0.top_indices().is_empty());
    assert_eq!(t0.loss(&[]).unwrap(), AlignmentLoss { kl: 0.0, mse: 0.0 });
}

#[test]
fn top_m_ties_go_to_the_lower_index() {
    let t =
        FactTargets::from_key_cosines(&[0.5, 0.9, 0.5, 0.5, 0.1], Temperature::default(), nz(3))
            .unwrap();
    assert_eq!(t.top_indices(), &[1, 0, 2]);
    // M larger than i: all earlier facts.
    let t = FactTargets::from_key_cosines(&[0.2, 0.3], Temperature::default(), nz(50)).unwrap();
    assert_eq!(t.top_indices(), &[1, 0]);
}

#[test]
fn kl_handles_extreme_logits() {
    // τ tiny: logits ±1e6; naive exp would overflow, the log-domain form stays finite.
    let d = KlDirection::KeyResidual;
    let tau = Temperature::new(1e-6).unwrap();
    let v = d.divergence(&[1.0, 0.0], &[0.0, 1.0], tau);
    assert!(v.is_finite());
    assert_abs_diff_eq!(v, 1e6, epsilon = 1e-3); // ≈ (1 − 0)/τ
    assert_eq!(
        d.divergence(&[0.3, 0.1, -0.2], &[0.3, 0.1, -0.2], Temperature::default()),
        0.0
    );
    // The public softmax helpers.
    // (1000 + ln 3 is itself rounded to a multiple of 2^-43 ≈ 1.1e-13.)
    let p = softmax(&[1000.0, 1000.0 + 3f64.ln()]).unwrap();
    assert_abs_diff_eq!(&p[..], &[0.25, 0.75][..], epsilon = 1e-12);
    assert_abs_diff_eq!(
        log_sum_exp(&[f64::NEG_INFINITY, 0.0]).unwrap(),
        0.0,
        epsilon = 0.0
    );
    assert_eq!(log_sum_exp(&[]).unwrap(), f64::NEG_INFINITY);
    assert!(softmax(&[]).unwrap().is_empty());
}

#[test]
fn zero_vectors_as_cosine_zero() {
    // Residual 1 is zero: its cosines are 0, so P_r over {0, 2} is uniform.
    let k = array![[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]];
    let r = array![[1.0, 0.0], [0.0, 0.0], [1.0, 0.0]];
    let c = ScoreConfig {
        tau: Temperature::new(1.0).unwrap(),
        neighbourhood: Neighbourhood::AllOthers,
        divergence: KlDirection::ResidualKey,
        zero_vectors: ZeroVectors::CosineZero,
        ..ScoreConfig::default()
    };
    let m = misalignment(k.view(), r.view(), &c).unwrap();
    let h = std::f64::consts::FRAC_1_SQRT_2;
    let pk = two(0.0, h);
    let want = 0.5 * (0.5 / pk[0]).ln() + 0.5 * (0.5 / pk[1]).ln();
    assert_abs_diff_eq!(m.per_fact()[1], want, epsilon = 1e-14);
    let cm = cosine_matrix(r.view(), r.view(), ZeroVectors::CosineZero, nz(1)).unwrap();
    assert_eq!(cm.row(1).to_vec(), vec![0.0, 0.0, 0.0]);
}

#[test]
fn empty_and_single_fact() {
    let e = ndarray::Array2::<f64>::zeros((0, 3));
    let m = misalignment(e.view(), e.view(), &ScoreConfig::default()).unwrap();
    assert!(m.per_fact().is_empty() && m.summary().is_none() && m.total() == 0.0);
    let k = array![[1.0, 2.0]];
    let r = array![[3.0]];
    for nb in [Neighbourhood::Prior, Neighbourhood::AllOthers] {
        let m = misalignment(
            k.view(),
            r.view(),
            &ScoreConfig {
                neighbourhood: nb,
                ..ScoreConfig::default()
            },
        )
        .unwrap();
        assert_eq!(m.per_fact(), &[0.0]);
        assert!(m.summary().is_none());
        assert_eq!(m.quantile(0.5), None);
    }
}

#[test]
fn norms_are_robust_to_scale() {
    let x = array![[3e300, 4e300], [3e-310, 4e-310], [-6.0, 8.0]];
    let n = NormalizedRows::new(x.view(), Operand::Keys, ZeroVectors::Reject).unwrap();
    for i in 0..3 {
        let row: Vec<f64> = n.view().row(i).to_vec();
        assert_abs_diff_eq!(row[0].abs(), 0.6, epsilon = 1e-15);
        assert_abs_diff_eq!(row[1], 0.8, epsilon = 1e-15);
    }
    assert_abs_diff_eq!(n.norms()[0] / 5e300, 1.0, epsilon = 1e-15);
    assert_eq!(n.norms()[2], 10.0);
}
