//! eamet-align alone, on vectors you already have (no model, no libtorch): the misalignment
//! score A(i) of a set of residuals against their keys, and its summary.
//!
//! Here the "keys" are 200 points in 4 clusters and two candidate sets of residuals are
//! compared: one that keeps the clusters (aligned, as EAMET aims for) and one drawn at random
//! (what independently optimized residuals drift towards at scale).
//!
//!     cargo run -p eamet-align --example misalignment_only

use eamet_align::{misalignment, ScoreConfig};
use ndarray::Array2;

/// A small deterministic generator (SplitMix64) mapped to [-1, 1).
fn noise(seed: &mut u64) -> f64 {
    *seed = seed.wrapping_add(0x9E37_79B9_7F4A_7C15);
    let mut z = *seed;
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    ((z ^ (z >> 31)) >> 11) as f64 / (1u64 << 52) as f64 - 1.0
}

fn main() -> Result<(), eamet_align::AlignError> {
    let (n, d_key, d_res, clusters) = (200, 64, 32, 4);
    let mut seed = 42;
    let centre_k = Array2::from_shape_fn((clusters, d_key), |_| noise(&mut seed));
    let centre_r = Array2::from_shape_fn((clusters, d_res), |_| noise(&mut seed));
    // Fact i belongs to cluster i % 4; keys and aligned residuals share that structure.
    let keys = Array2::from_shape_fn((n, d_key), |(i, j)| {
        centre_k[[i % clusters, j]] + 0.3 * noise(&mut seed)
    });
    let aligned = Array2::from_shape_fn((n, d_res), |(i, j)| {
        centre_r[[i % clusters, j]] + 0.3 * noise(&mut seed)
    });
    let random = Array2::from_shape_fn((n, d_res), |_| noise(&mut seed));

    // The paper's score: KL(P_r || P_k) over earlier facts j < i, temperature 0.07.
    let cfg = ScoreConfig::default();
    println!("A(i) = KL(P_r || P_k) over j < i, {n} facts");
    println!("| residuals | total | mean | median | p90 | max |");
    println!("|---|---:|---:|---:|---:|---:|");
    for (name, r) in [("aligned", &aligned), ("random", &random)] {
        let m = misalignment(keys.view(), r.view(), &cfg)?;
        let s = m.summary().expect("facts 1.. have neighbours");
        println!(
            "| {name} | {:.2} | {:.4} | {:.4} | {:.4} | {:.4} |",
            s.total, s.mean, s.median, s.p90, s.max
        );
    }
    let worst = misalignment(keys.view(), random.view(), &cfg)?;
    let (i, a) = worst
        .per_fact()
        .iter()
        .enumerate()
        .fold((0, f64::MIN), |b, (i, &a)| if a > b.1 { (i, a) } else { b });
    println!("most misaligned random residual: fact {i}, A = {a:.4}");
    Ok(())
}
