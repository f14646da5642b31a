//! KeyStats: streaming sums, views, merge, layouts, validation.

mod common;

use common::{bits, colsum, gram, rel_err, Rng};
use eamet_solve::{KeyStats, SolveError};
use ndarray::{array, s, Array1, Array2, Axis, ShapeBuilder};
use proptest::prelude::*;

fn one_pass(k: &Array2<f64>) -> KeyStats {
    let mut st = KeyStats::new(k.ncols());
    st.update(k.view()).unwrap();
    st
}

#[test]
fn update_matches_direct_sums_over_several_batches() {
    let mut rng = Rng::new(1);
    for d in [13, 150] {
        // 150 > 64: several blocks of the blocked symmetrization
        let k = rng.matrix(57, d);
        let mut st = KeyStats::new(d);
        for chunk in k.axis_chunks_iter(Axis(0), 10) {
            st.update(chunk).unwrap();
        }
        assert_eq!(st.tokens(), 57);
        assert!(rel_err(&st.sum_outer(), &gram(k.view())) < 1e-13);
        let sum = st.sum().to_owned().insert_axis(Axis(0));
        assert!(rel_err(&sum, &colsum(k.view()).insert_axis(Axis(0))) < 1e-13);
        // full symmetric, exactly
        let so = st.sum_outer();
        assert_eq!(so, so.t());
    }
}

#[test]
fn moments_match_independent_formulas() {
    let mut rng = Rng::new(2);
    let k = rng.matrix(40, 6) + 0.5; // non-zero mean so centred ≠ non-centred
    let st = one_pass(&k);
    let n = 40.0;
    let mean: Array1<f64> = colsum(k.view()) / n;
    let c = gram(k.view()) / n;
    let centred = &k - &mean.view().insert_axis(Axis(0));
    let cov = centred.t().dot(&centred) / n;
    assert!((&st.mean().unwrap() - &mean)
        .iter()
        .all(|e| e.abs() < 1e-14));
    assert!(rel_err(&st.second_moment().unwrap(), &c) < 1e-13);
    assert!(rel_err(&st.covariance().unwrap(), &cov) < 1e-12);
}

#[test]
fn any_memory_layout_gives_the_same_sums() {
    let mut rng = Rng::new(3);
    let k = rng.int_matrix(20, 7);
    let reference = one_pass(&k);
    // Fortran order
    let mut f = Array2::zeros((20, 7).f());
    f.assign(&k);
    // every other row of a taller matrix (row stride 2·7)
    let mut tall = Array2::zeros((40, 7));
    tall.slice_mut(s![..;2, ..]).assign(&k);
    // every other column of a wider matrix (column stride 2: needs a copy)
    let mut wide = Array2::zeros((20, 14));
    wide.slice_mut(s![.., ..;2]).assign(&k);
    // a transposed view of the transpose
    let kt = k.t().to_owned();
    for view in [
        f.view(),
        tall.slice(s![..;2, ..]),
        wide.slice(s![.., ..;2]),
        kt.t(),
    ] {
        let mut st = KeyStats::new(7);
        st.update(view).unwrap();
        assert_eq!(bits(&st.sum_outer()), bits(&reference.sum_outer()));
        assert_eq!(st.sum(), reference.sum());
    }
}

#[test]
fn update_f32_equals_update_of_converted() {
    let mut rng = Rng::new(4);
    let k32 = rng.matrix(33, 5).mapv(|x| x as f32);
    let mut a = KeyStats::new(5);
    a.update_f32(k32.view()).unwrap();
    let b = one_pass(&k32.mapv(f64::from));
    assert_eq!(bits(&a.sum_outer()), bits(&b.sum_outer()));
    assert_eq!(a.tokens(), 33);
}

#[test]
fn empty_batch_is_a_no_op_and_bad_batches_change_nothing() {
    let mut st = KeyStats::new(3);
    st.update(Array2::<f64>::zeros((0, 3)).view()).unwrap();
    assert_eq!(st.tokens(), 0);
    assert!(matches!(st.second_moment(), Err(SolveError::EmptyStats)));
    assert!(matches!(st.mean(), Err(SolveError::EmptyStats)));
    assert!(matches!(st.covariance(), Err(SolveError::EmptyStats)));

    st.update(array![[1.0, 2.0, 3.0]].view()).unwrap();
    let before = st.sum_outer();
    let err = st.update(array![[1.0, 2.0]].view()).unwrap_err();
    assert!(matches!(err, SolveError::ShapeMismatch { .. }), "{err}");
    assert!(
        err.to_string().contains("[1, 2]") && err.to_string().contains("[3, 3]"),
        "{err}"
    );
    let err = st
        .update(array![[1.0, 2.0, 3.0], [0.0, f64::NAN, 1.0]].view())
        .unwrap_err();
    assert!(
        matches!(
            err,
            SolveError::NonFinite {
                matrix: "key batch",
                row: 1,
                column: 1,
                ..
            }
        ),
        "{err}"
    );
    let err = st
        .update_f32(array![[f32::INFINITY, 0.0, 0.0]].view())
        .unwrap_err();
    assert!(
        matches!(
            err,
            SolveError::NonFinite {
                row: 0,
                column: 0,
                ..
            }
        ),
        "{err}"
    );
    assert_eq!(st.sum_outer(), before);
    assert_eq!(st.tokens(), 1);
}

#[test]
fn merge_rejects_other_dimension() {
    let mut a = KeyStats::new(3);
    let err = a.merge(&KeyStats::new(4)).unwrap_err();
    assert!(matches!(err, SolveError::ShapeMismatch { .. }), "{err}");
}

#[test]
fn from_sums_validates() {
    let ok = KeyStats::from_sums(array![[2.0, 1.0], [1.0, 3.0]], array![1.0, 1.0], 4, 1).unwrap();
    assert_eq!(
        ok.second_moment().unwrap(),
        array![[0.5, 0.25], [0.25, 0.75]]
    );
    assert!(matches!(
        KeyStats::from_sums(array![[2.0, 1.0], [0.0, 3.0]], array![1.0, 1.0], 4, 1),
        Err(SolveError::NotSymmetric {
            row: 0,
            column: 1,
            ..
        })
    ));
    assert!(matches!(
        KeyStats::from_sums(array![[2.0, 1.0], [1.0, 3.0]], array![1.0], 4, 1),
        Err(SolveError::ShapeMismatch { .. })
    ));
    assert!(matches!(
        KeyStats::from_sums(array![[2.0, f64::NAN], [1.0, 3.0]], array![1.0, 1.0], 4, 1),
        Err(SolveError::NonFinite {
            matrix: "sum_outer",
            row: 0,
            column: 1,
            ..
        })
    ));
}

fn split_stats(k: &Array2<f64>, cuts: &[usize]) -> Vec<KeyStats> {
    let mut bounds = vec![0];
    bounds.extend(cuts.iter().copied());
    bounds.push(k.nrows());
    bounds.sort_unstable();
    bounds
        .windows(2)
        .enumerate()
        .map(|(i, w)| {
            let mut st = KeyStats::new(k.ncols());
            st.update(k.slice(s![w[0]..w[1], ..])).unwrap();
            st.add_samples(i as u64 + 1);
            st
        })
        .collect()
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]

    /// Integer-valued keys make every sum exact, so merge(shards) must equal one pass bit for bit
    /// whatever the split points.
    #[test]
    fn merge_of_shards_equals_one_pass_exactly(
        seed in any::<u64>(), rows in 1usize..40, d in 1usize..9,
        cuts in proptest::collection::vec(0usize..40, 0..5),
    ) {
        let k = Rng::new(seed).int_matrix(rows, d);
        let cuts: Vec<usize> = cuts.into_iter().map(|c| c % (rows + 1)).collect();
        let shards = split_stats(&k, &cuts);
        let mut merged = KeyStats::new(d);
        for sh in &shards {
            merged.merge(sh).unwrap();
        }
        let one = one_pass(&k);
        prop_assert_eq!(bits(&merged.sum_outer()), bits(&one.sum_outer()));
        prop_assert_eq!(merged.sum(), one.sum());
        prop_assert_eq!(merged.tokens(), rows as u64);
        let n = shards.len() as u64;
        prop_assert_eq!(merged.samples(), n * (n + 1) / 2);
    }

    /// Real-valued keys: equal up to summation order.
    #[test]
    fn merge_of_shards_equals_one_pass_float(
        seed in any::<u64>(), rows in 1usize..40, d in 1usize..9,
        cuts in proptest::collection::vec(0usize..40, 0..5),
    ) {
        let k = Rng::new(seed).matrix(rows, d);
        let cuts: Vec<usize> = cuts.into_iter().map(|c| c % (rows + 1)).collect();
        let mut merged = KeyStats::new(d);
        for sh in split_stats(&k, &cuts) {
            merged.merge(&sh).unwrap();
        }
        let one = one_pass(&k);
        prop_assert!(rel_err(&merged.sum_outer(), &one.sum_outer()) < 1e-13);
    }

    /// (a ⊕ b) ⊕ c == a ⊕ (b ⊕ c) and a ⊕ b == b ⊕ a (exact data).
    #[test]
    fn merge_is_associative_and_commutative(seed in any::<u64>(), d in 1usize..7) {
        let mut rng = Rng::new(seed);
        let (a, b, c) = (one_pass(&rng.int_matrix(5, d)), one_pass(&rng.int_matrix(3, d)), one_pass(&rng.int_matrix(7, d)));
        let mut left = a.clone();
        left.merge(&b).unwrap();
        left.merge(&c).unwrap();
        let mut bc = b.clone();
        bc.merge(&c).unwrap();
        let mut right = a.clone();
        right.merge(&bc).unwrap();
        prop_assert_eq!(bits(&left.sum_outer()), bits(&right.sum_outer()));
        let mut ba = b.clone();
        ba.merge(&a).unwrap();
        let mut ab = a.clone();
        ab.merge(&b).unwrap();
        prop_assert_eq!(bits(&ab.sum_outer()), bits(&ba.sum_outer()));
        prop_assert_eq!(left.tokens(), 15);
    }
}
