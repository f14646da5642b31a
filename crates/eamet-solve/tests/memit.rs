//! MemitSolver: normal equation, exactness limits, fallback, input validation.

mod common;

use common::{fro, gram, rel_err, Rng};
use eamet_solve::{Factorization, KeyStats, MemitSolver, ResidualCheck, SolveError, UpdateSolver};
use ndarray::{array, Array2, ShapeBuilder};
use ndarray_linalg::Inverse;
use proptest::prelude::*;

/// Statistics of `rows` Gaussian keys (full rank when rows ≥ d).
fn random_stats(rng: &mut Rng, rows: usize, d: usize) -> KeyStats {
    let mut st = KeyStats::new(d);
    st.update(rng.matrix(rows, d).view()).unwrap();
    st
}

/// ‖Δ(λC + KᵀK) − RᵀK‖_F / ‖RᵀK‖_F with plain ndarray products.
fn normal_equation_residual(
    delta: &Array2<f64>,
    lambda: f64,
    stats: &KeyStats,
    k: &Array2<f64>,
    r: &Array2<f64>,
) -> f64 {
    let a = stats.second_moment().unwrap() * lambda + gram(k.view());
    let b = r.t().dot(k);
    rel_err(&delta.dot(&a), &b)
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

    #[test]
    fn solves_the_normal_equation(
        seed in any::<u64>(), d_k in 1usize..12, d_r in 1usize..6, n in 1usize..16,
        lambda in 0.1f64..10.0,
    ) {
        let mut rng = Rng::new(seed);
        let stats = random_stats(&mut rng, 2 * d_k + 3, d_k);
        let k = rng.matrix(n, d_k);
        let r = rng.matrix(n, d_r);
        let up = MemitSolver::new(lambda).unwrap().solve(k.view(), r.view(), &stats).unwrap();
        prop_assert_eq!(up.delta.dim(), (d_r, d_k));
        let res = normal_equation_residual(&up.delta, lambda, &stats, &k, &r);
        prop_assert!(res < 1e-8, "residual {}", res);
        prop_assert_eq!(up.diagnostics.factorization, Factorization::Cholesky);
        prop_assert_eq!(up.diagnostics.residual_check, ResidualCheck::Exact);
        prop_assert!(up.diagnostics.relative_residual < 1e-8);
        prop_assert!(up.diagnostics.condition_estimate >= 1.0 - 1e-12);
        prop_assert!(up.diagnostics.warnings.is_empty());
    }
}

#[test]
fn agrees_with_the_explicit_inverse_formula() {
    let mut rng = Rng::new(11);
    let (d_k, d_r, n, lambda) = (40, 9, 25, 3.5);
    let stats = random_stats(&mut rng, 100, d_k);
    let k = rng.matrix(n, d_k);
    let r = rng.matrix(n, d_r);
    let up = MemitSolver::new(lambda)
        .unwrap()
        .solve(k.view(), r.view(), &stats)
        .unwrap();
    let a = stats.second_moment().unwrap() * lambda + gram(k.view());
    let expected = r.t().dot(&k).dot(&a.inv().unwrap());
    assert!(rel_err(&up.delta, &expected) < 1e-10);
}

#[test]
fn lambda_zero_full_rank_square_keys_write_exactly() {
    let mut rng = Rng::new(12);
    let d_k = 10;
    let stats = random_stats(&mut rng, 30, d_k);
    let k = rng.matrix(d_k, d_k); // N = d_k, invertible
    let r = rng.matrix(d_k, 4);
    for lambda in [0.0, 1e-12] {
        let up = MemitSolver::new(lambda)
            .unwrap()
            .solve(k.view(), r.view(), &stats)
            .unwrap();
        let written = k.dot(&up.delta.t());
        assert!(
            rel_err(&written, &r) < 1e-8,
            "λ = {lambda}: {}",
            rel_err(&written, &r)
        );
    }
}

#[test]
fn lambda_zero_overdetermined_consistent_recovers_the_map() {
    let mut rng = Rng::new(13);
    let (d_k, d_r, n) = (8, 5, 30);
    let stats = random_stats(&mut rng, 30, d_k);
    let w = rng.matrix(d_r, d_k);
    let k = rng.matrix(n, d_k);
    let r = k.dot(&w.t()); // R = K Wᵀ: every fact can be written by the same Δ
    let up = MemitSolver::new(0.0)
        .unwrap()
        .solve(k.view(), r.view(), &stats)
        .unwrap();
    assert!(rel_err(&up.delta, &w) < 1e-10);
    assert!(rel_err(&k.dot(&up.delta.t()), &r) < 1e-10);
}

#[test]
fn fewer_facts_than_dimensions_with_a_tiny_ridge_still_write_the_facts() {
    let mut rng = Rng::new(14);
    let (d_k, d_r, n) = (24, 6, 7);
    let stats = random_stats(&mut rng, 100, d_k);
    let k = rng.matrix(n, d_k);
    let r = rng.matrix(n, d_r);
    let up = MemitSolver::new(1e-10)
        .unwrap()
        .solve(k.view(), r.view(), &stats)
        .unwrap();
    assert_eq!(up.diagnostics.factorization, Factorization::Cholesky);
    assert!(rel_err(&k.dot(&up.delta.t()), &r) < 1e-6);
    assert!(up.diagnostics.relative_residual < 1e-6);
}

#[test]
fn singular_system_falls_back_to_eigen_pseudo_inverse() {
    let mut rng = Rng::new(15);
    let (d_k, d_r, n) = (24, 6, 7);
    let stats = random_stats(&mut rng, 100, d_k);
    let k = rng.matrix(n, d_k);
    let r = rng.matrix(n, d_r);
    // λ = 0 and N < d_k: KᵀK has rank 7 < 24.
    let up = MemitSolver::new(0.0)
        .unwrap()
        .solve(k.view(), r.view(), &stats)
        .unwrap();
    let Factorization::SymmetricEigen { dropped } = up.diagnostics.factorization else {
        panic!(
            "expected the eigen fallback, got {:?}",
            up.diagnostics.factorization
        )
    };
    assert_eq!(dropped, d_k - n);
    assert_eq!(up.diagnostics.warnings.len(), 1);
    assert!(up.diagnostics.warnings[0].contains("eigen"));
    // The facts are written exactly, with the minimum-norm Δ = R (K Kᵀ)⁻¹ K (rows in span(K)).
    assert!(rel_err(&k.dot(&up.delta.t()), &r) < 1e-8);
    let min_norm = r.t().dot(&k.dot(&k.t()).inv().unwrap()).dot(&k);
    assert!(rel_err(&up.delta, &min_norm) < 1e-8);

    let err = MemitSolver::new(0.0)
        .unwrap()
        .without_fallback()
        .solve(k.view(), r.view(), &stats)
        .unwrap_err();
    assert!(
        matches!(
            err,
            SolveError::Singular { .. } | SolveError::NotPositiveDefinite { .. }
        ),
        "{err}"
    );
}

#[test]
fn all_zero_system_is_singular() {
    let mut stats = KeyStats::new(3);
    stats.update(Array2::<f64>::zeros((4, 3)).view()).unwrap();
    let k = Array2::<f64>::zeros((2, 3));
    let r = array![[1.0], [2.0]];
    let err = MemitSolver::new(1.0)
        .unwrap()
        .solve(k.view(), r.view(), &stats)
        .unwrap_err();
    assert!(matches!(err, SolveError::Singular { .. }), "{err}");
}

#[test]
fn large_key_dimension_uses_probe_residual() {
    let mut rng = Rng::new(16);
    let (d_k, d_r, n, lambda) = (600, 5, 40, 50.0);
    let stats = random_stats(&mut rng, 700, d_k);
    let k = rng.matrix(n, d_k);
    let r = rng.matrix(n, d_r);
    let up = MemitSolver::new(lambda)
        .unwrap()
        .solve(k.view(), r.view(), &stats)
        .unwrap();
    assert_eq!(
        up.diagnostics.residual_check,
        ResidualCheck::Probes { count: 8 }
    );
    assert!(up.diagnostics.relative_residual < 1e-10);
    let line = up.diagnostics.to_string();
    assert!(
        line.starts_with("memit (Cholesky): condition ≈ ")
            && line.contains(" (8 probes)")
            && !line.contains("null space"),
        "{line}"
    );
    assert!(normal_equation_residual(&up.delta, lambda, &stats, &k, &r) < 1e-10);
}

#[test]
fn memory_layout_of_inputs_does_not_matter() {
    let mut rng = Rng::new(17);
    let stats = random_stats(&mut rng, 30, 6);
    let k = rng.matrix(9, 6);
    let r = rng.matrix(9, 3);
    let mut kf = Array2::zeros((9, 6).f());
    kf.assign(&k);
    let rt = r.t().to_owned();
    let mut s = MemitSolver::new(2.0).unwrap();
    let a = s.solve(k.view(), r.view(), &stats).unwrap();
    let b = s.solve(kf.view(), rt.t(), &stats).unwrap();
    assert!(rel_err(&a.delta, &b.delta) < 1e-14);
}

#[test]
fn rejects_bad_input_with_typed_errors() {
    let mut rng = Rng::new(18);
    let stats = random_stats(&mut rng, 20, 4);
    let k = rng.matrix(3, 4);
    let r = rng.matrix(3, 2);
    let mut s = MemitSolver::new(1.0).unwrap();

    for bad in [-1.0, f64::NAN, f64::INFINITY] {
        assert!(matches!(
            MemitSolver::new(bad),
            Err(SolveError::InvalidParameter { name: "lambda", .. })
        ));
    }
    let r5 = rng.matrix(5, 2);
    let err = s.solve(k.view(), r5.view(), &stats).unwrap_err();
    assert!(matches!(err, SolveError::ShapeMismatch { .. }));
    let msg = err.to_string();
    assert!(msg.contains("[3, 4]") && msg.contains("[5, 2]"), "{msg}");

    let k5 = rng.matrix(3, 5);
    let err = s.solve(k5.view(), r.view(), &stats).unwrap_err();
    assert!(err.to_string().contains("[4, 4]"), "{err}");

    let mut kn = k.clone();
    kn[[2, 1]] = f64::NAN;
    assert!(matches!(
        s.solve(kn.view(), r.view(), &stats),
        Err(SolveError::NonFinite {
            matrix: "keys K",
            row: 2,
            column: 1,
            ..
        })
    ));
    let mut rn = r.clone();
    rn[[1, 0]] = f64::NEG_INFINITY;
    assert!(matches!(
        s.solve(k.view(), rn.view(), &stats),
        Err(SolveError::NonFinite {
            matrix: "residuals R",
            row: 1,
            column: 0,
            ..
        })
    ));

    let k0 = Array2::<f64>::zeros((0, 4));
    let r0 = Array2::<f64>::zeros((0, 2));
    assert!(matches!(
        s.solve(k0.view(), r0.view(), &stats),
        Err(SolveError::EmptyBatch { .. })
    ));
    let rz = Array2::<f64>::zeros((3, 0));
    assert!(matches!(
        s.solve(k.view(), rz.view(), &stats),
        Err(SolveError::EmptyBatch { .. })
    ));
    assert!(matches!(
        s.solve(k.view(), r.view(), &KeyStats::new(4)),
        Err(SolveError::EmptyStats)
    ));
    assert!(fro(&s.solve(k.view(), r.view(), &stats).unwrap().delta) > 0.0);
}
