//! AlphaEditSolver: projector, preservation, writing, sequential state.

mod common;

use common::{fro, gram, rel_err, Rng};
use eamet_solve::{
    AlphaEditSolver, AlphaEditState, Factorization, KeyStats, NullSpaceProjector, SolveError,
    UpdateSolver, WriteMode,
};
use ndarray::{s, Array1, Array2};
use ndarray_linalg::Inverse;
use proptest::prelude::*;

/// Statistics whose `C = E[kkᵀ]` is exactly `Q diag(w) Qᵀ`, with the eigenvalues of the last
/// `null` eigenvectors (columns of Q) below 2e-2 and the others well above. Returns the stats
/// and Q.
fn spectrum_stats(rng: &mut Rng, d: usize, null: usize) -> (KeyStats, Array2<f64>) {
    let q = rng.orthogonal(d);
    let w = Array1::from_shape_fn(d, |i| if i < d - null { 1.0 + i as f64 } else { 1e-4 });
    let tokens = 1000u64;
    let c = q.dot(&Array2::from_diag(&w)).dot(&q.t());
    let c = (&c + &c.t()) * 0.5; // exactly symmetric
    let stats = KeyStats::from_sums(c * tokens as f64, Array1::zeros(d), tokens, 1).unwrap();
    (stats, q)
}

const THRESHOLD: f64 = 2e-2;

#[test]
fn projector_is_the_orthogonal_projector_onto_small_eigenvectors() {
    let mut rng = Rng::new(21);
    for (d, null) in [(10, 3), (10, 8), (7, 0), (6, 6)] {
        let (stats, q) = spectrum_stats(&mut rng, d, null);
        let p = NullSpaceProjector::from_stats(&stats, THRESHOLD).unwrap();
        assert_eq!(p.null_dim(), null);
        let pm = p.matrix().to_owned();
        let q0 = q.slice(s![.., d - null..]).to_owned();
        let expected = q0.dot(&q0.t());
        assert!(fro(&(&pm - &expected)) < 1e-10, "d={d} null={null}");
        assert!(fro(&(&pm - &pm.t())) == 0.0);
        assert!(fro(&(pm.dot(&pm) - &pm)) < 1e-10);
        assert_eq!(p.eigenvalues().len(), d);
        assert!(p.eigenvalues().windows(2).into_iter().all(|w| w[0] <= w[1]));
    }
}

#[test]
fn update_annihilates_the_preserved_subspace() {
    let mut rng = Rng::new(22);
    let (d, null, n, d_r) = (16, 6, 5, 4);
    let (stats, q) = spectrum_stats(&mut rng, d, null);
    let k = rng.matrix(n, d); // generic keys, not in the null space
    let r = rng.matrix(n, d_r);
    let mut solver = AlphaEditSolver::new(THRESHOLD, 1.0).unwrap();
    let up = solver.solve(k.view(), r.view(), &stats).unwrap();
    assert_eq!(up.diagnostics.factorization, Factorization::Lu);
    assert_eq!(up.diagnostics.null_space_dim, Some(null));
    let line = up.diagnostics.to_string();
    assert!(
        line.starts_with("alphaedit (LU): condition ≈ ") && line.ends_with(", null space 6"),
        "{line}"
    );
    let kept = q.slice(s![.., ..d - null]); // preserved directions (large eigenvalues)
    let leak = up.delta.dot(&kept);
    assert!(fro(&up.delta) > 1e-3);
    assert!(fro(&leak) < 1e-12 * fro(&up.delta), "leak {}", fro(&leak));
    // and any combination of them
    let u = kept.dot(&rng.matrix(d - null, 3));
    assert!(fro(&up.delta.dot(&u)) < 1e-12 * fro(&up.delta) * fro(&u));
}

#[test]
fn keys_in_the_null_space_are_written() {
    let mut rng = Rng::new(23);
    let (d, null, n, d_r) = (16, 8, 5, 3);
    let (stats, q) = spectrum_stats(&mut rng, d, null);
    let q0 = q.slice(s![.., d - null..]);
    let k = rng.matrix(n, null).dot(&q0.t()); // rows in span(U₀)
    let r = rng.matrix(n, d_r);
    let mut solver = AlphaEditSolver::new(THRESHOLD, 1e-9).unwrap();
    let up = solver.solve(k.view(), r.view(), &stats).unwrap();
    assert!(
        rel_err(&k.dot(&up.delta.t()), &r) < 1e-6,
        "{}",
        rel_err(&k.dot(&up.delta.t()), &r)
    );
}

/// Independent evaluation of ALGORITHM.md §6 in keys-as-rows orientation:
/// Δ = RᵀK P (K_pᵀK_p P + KᵀK P + α I)⁻¹.
fn reference(
    p: &Array2<f64>,
    kp: Option<&Array2<f64>>,
    k: &Array2<f64>,
    r: &Array2<f64>,
    alpha: f64,
) -> Array2<f64> {
    let d = p.nrows();
    let mut m = gram(k.view()).dot(p) + Array2::<f64>::eye(d) * alpha;
    if let Some(kp) = kp {
        m = m + gram(kp.view()).dot(p);
    }
    r.t().dot(k).dot(p).dot(&m.inv().unwrap())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 32, ..ProptestConfig::default() })]

    /// Two sequential batches: the second solve uses K_p = the first batch's edited keys.
    #[test]
    fn sequential_batches_follow_the_formula(
        seed in any::<u64>(), d in 2usize..12, null_frac in 0.2f64..0.9,
        n1 in 1usize..6, n2 in 1usize..6, d_r in 1usize..5, alpha in 0.1f64..10.0,
    ) {
        let mut rng = Rng::new(seed);
        let null = ((d as f64 * null_frac).round() as usize).clamp(1, d - 1);
        let (stats, _) = spectrum_stats(&mut rng, d, null);
        let mut solver = AlphaEditSolver::new(THRESHOLD, alpha).unwrap();
        let (k1, r1) = (rng.matrix(n1, d), rng.matrix(n1, d_r));
        let up1 = solver.solve(k1.view(), r1.view(), &stats).unwrap();
        let p = solver.state().projector().unwrap().matrix().to_owned();
        prop_assert!(rel_err(&up1.delta, &reference(&p, None, &k1, &r1, alpha)) < 1e-8);
        prop_assert!(up1.diagnostics.relative_residual < 1e-8);

        let k1_edited = rng.matrix(n1, d); // keys recomputed on the edited model
        solver.after_batch(k1_edited.view()).unwrap();
        prop_assert_eq!(solver.state().batches(), 1);
        prop_assert!(rel_err(&solver.state().prev_gram().unwrap(), &gram(k1_edited.view())) < 1e-13);
        let (k2, r2) = (rng.matrix(n2, d), rng.matrix(n2, d_r));
        let up2 = solver.solve(k2.view(), r2.view(), &stats).unwrap();
        let expected = reference(&p, Some(&k1_edited), &k2, &r2, alpha);
        prop_assert!(rel_err(&up2.delta, &expected) < 1e-8, "{}", rel_err(&up2.delta, &expected));
        prop_assert!(up2.diagnostics.relative_residual < 1e-8);
    }
}

#[test]
fn state_reset_save_and_load() {
    let dir = tempfile::tempdir().unwrap();
    let mut rng = Rng::new(24);
    let (d, null) = (80, 30); // > 64 rows: several blocks in the writer
    let (stats, _) = spectrum_stats(&mut rng, d, null);
    let (k1, r1) = (rng.matrix(4, d), rng.matrix(4, 3));
    let (k2, r2) = (rng.matrix(5, d), rng.matrix(5, 3));

    let mut solver = AlphaEditSolver::new(THRESHOLD, 2.0).unwrap();
    let first = solver.solve(k1.view(), r1.view(), &stats).unwrap();
    solver.after_batch(k1.view()).unwrap();
    let path = dir.path().join("state.safetensors");
    solver.state().save(&path, WriteMode::CreateNew).unwrap();
    assert!(matches!(
        solver.state().save(&path, WriteMode::CreateNew),
        Err(SolveError::AlreadyExists { .. })
    ));
    let second = solver.solve(k2.view(), r2.view(), &stats).unwrap();

    // Loaded state continues identically.
    let loaded = AlphaEditState::load(&path).unwrap();
    assert_eq!((loaded.batches(), loaded.rows()), (1, 4));
    assert_eq!(loaded.projector().unwrap().null_dim(), null);
    let mut resumed = AlphaEditSolver::with_state(THRESHOLD, 2.0, loaded).unwrap();
    let again = resumed.solve(k2.view(), r2.view(), &stats).unwrap();
    assert_eq!(again.delta, second.delta);

    // Reset forgets K_p (keeps the projector): the first batch solves as before.
    solver.state_mut().reset();
    assert!(solver.state().prev_gram().is_none());
    assert!(solver.state().projector().is_some());
    let redo = solver.solve(k1.view(), r1.view(), &stats).unwrap();
    assert_eq!(redo.delta, first.delta);

    // Wrong threshold for a saved projector.
    let loaded = AlphaEditState::load(&path).unwrap();
    assert!(matches!(
        AlphaEditSolver::with_state(0.5, 2.0, loaded),
        Err(SolveError::StateMismatch { .. })
    ));
    // Damaged state file.
    let mut bytes = std::fs::read(&path).unwrap();
    let last = bytes.len() - 3;
    bytes[last] ^= 1;
    std::fs::write(&path, &bytes).unwrap();
    assert!(matches!(
        AlphaEditState::load(&path),
        Err(SolveError::CorruptFile { .. })
    ));
}

#[test]
fn refuses_statistics_other_than_the_projectors() {
    let mut rng = Rng::new(25);
    let (a, _) = spectrum_stats(&mut rng, 6, 2);
    let (b, _) = spectrum_stats(&mut rng, 6, 2);
    let (k, r) = (rng.matrix(2, 6), rng.matrix(2, 2));
    let mut solver = AlphaEditSolver::new(THRESHOLD, 1.0).unwrap();
    solver.solve(k.view(), r.view(), &a).unwrap();
    let err = solver.solve(k.view(), r.view(), &b).unwrap_err();
    assert!(matches!(err, SolveError::StateMismatch { .. }), "{err}");
    solver.state_mut().clear();
    solver.solve(k.view(), r.view(), &b).unwrap();
    let err = solver.after_batch(rng.matrix(2, 5).view()).unwrap_err();
    assert!(matches!(err, SolveError::ShapeMismatch { .. }), "{err}");
}

#[test]
fn degenerate_projectors_and_parameters() {
    let mut rng = Rng::new(26);
    let (k, r) = (rng.matrix(3, 5), rng.matrix(3, 2));
    // no eigenvalue below the threshold: P = 0, Δ = 0, warned
    let (full, _) = spectrum_stats(&mut rng, 5, 0);
    let up = AlphaEditSolver::new(THRESHOLD, 1.0)
        .unwrap()
        .solve(k.view(), r.view(), &full)
        .unwrap();
    assert_eq!(fro(&up.delta), 0.0);
    assert_eq!(up.diagnostics.null_space_dim, Some(0));
    assert_eq!(up.diagnostics.warnings.len(), 1);
    let line = up.diagnostics.to_string();
    assert!(
        line.contains("null space 0; warnings: ") && line.contains(&up.diagnostics.warnings[0]),
        "{line}"
    );
    // α = 0 with P ≠ I: singular
    let (some, _) = spectrum_stats(&mut rng, 5, 2);
    let err = AlphaEditSolver::new(THRESHOLD, 0.0)
        .unwrap()
        .solve(k.view(), r.view(), &some)
        .unwrap_err();
    assert!(matches!(err, SolveError::Singular { .. }), "{err}");

    for bad in [0.0, -1.0, f64::NAN, f64::INFINITY] {
        assert!(matches!(
            AlphaEditSolver::new(bad, 1.0),
            Err(SolveError::InvalidParameter {
                name: "null_threshold",
                ..
            })
        ));
    }
    for bad in [-1.0, f64::NAN] {
        assert!(matches!(
            AlphaEditSolver::new(THRESHOLD, bad),
            Err(SolveError::InvalidParameter { name: "l2", .. })
        ));
    }
    assert!(matches!(
        AlphaEditSolver::new(THRESHOLD, 1.0)
            .unwrap()
            .solve(k.view(), r.view(), &KeyStats::new(5)),
        Err(SolveError::EmptyStats)
    ));
    let mut kn = k.clone();
    kn[[1, 4]] = f64::NAN;
    assert!(matches!(
        AlphaEditSolver::new(THRESHOLD, 1.0)
            .unwrap()
            .solve(kn.view(), r.view(), &some),
        Err(SolveError::NonFinite {
            matrix: "keys K",
            row: 1,
            column: 4,
            ..
        })
    ));
}

#[test]
fn large_key_dimension_uses_probe_residual() {
    let mut rng = Rng::new(27);
    let (d, null, n, d_r) = (520, 200, 30, 4);
    let (stats, q) = spectrum_stats(&mut rng, d, null);
    let (k, r) = (rng.matrix(n, d), rng.matrix(n, d_r));
    let up = AlphaEditSolver::new(THRESHOLD, 1.0)
        .unwrap()
        .solve(k.view(), r.view(), &stats)
        .unwrap();
    assert_eq!(
        up.diagnostics.residual_check,
        eamet_solve::ResidualCheck::Probes { count: 8 }
    );
    assert!(
        up.diagnostics.relative_residual < 1e-10,
        "{}",
        up.diagnostics.relative_residual
    );
    let kept = q.slice(s![.., ..d - null]);
    assert!(fro(&up.delta.dot(&kept)) < 1e-10 * fro(&up.delta));
}

/// OpenBLAS's threaded LU needs more stack than the 2 MiB Rust gives spawned threads (it
/// segfaulted here before LAPACK calls moved to a big-stack helper thread).
#[test]
fn solvers_work_on_threads_with_default_small_stacks() {
    std::thread::Builder::new()
        .stack_size(2 << 20)
        .spawn(|| {
            let mut rng = Rng::new(28);
            let (d, null) = (560, 100);
            let (stats, _) = spectrum_stats(&mut rng, d, null);
            let (k, r) = (rng.matrix(20, d), rng.matrix(20, 3));
            let a = AlphaEditSolver::new(THRESHOLD, 1.0)
                .unwrap()
                .solve(k.view(), r.view(), &stats);
            assert!(a.unwrap().diagnostics.relative_residual < 1e-10);
            let m = eamet_solve::MemitSolver::new(0.0)
                .unwrap()
                .solve(k.view(), r.view(), &stats);
            assert!(m.unwrap().diagnostics.relative_residual < 1e-8);
        })
        .unwrap()
        .join()
        .unwrap();
}
