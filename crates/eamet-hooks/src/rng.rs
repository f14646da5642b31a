//! The seeded generator behind what eamet samples from models and datasets: the context
//! prefixes and the generic-text corpus the model writes (`eamet-optim`, `eamet`), the
//! evaluation's context prefixes and its fluency/robustness record sample (`eamet-eval`).
//! (`eamet-solve`, which depends on no model crate, draws its residual-check probe vectors from
//! its own copy of the same recurrence.)
//!
//! It is SplitMix64 (Steele, Lea and Flood, "Fast splittable pseudorandom number generators",
//! OOPSLA 2014): 64 bits of state, a Weyl sequence through a 64-bit finalizer. Written out here
//! rather than taken from a crate, so that the same seed gives the same prefixes, corpora and
//! samples whatever the dependency versions: they feed caches and run directories.
//!
//! ```
//! use eamet_hooks::rng::SplitMix64;
//! let mut r = SplitMix64::new(7);
//! let u = r.uniform();
//! assert!((0.0..1.0).contains(&u));
//! assert!(r.below(10) < 10);
//! ```

/// SplitMix64: a small, fast, seeded generator (not for cryptography).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SplitMix64 {
    state: u64,
}

impl SplitMix64 {
    /// Short name recorded with what it generates (corpus and cache identities).
    pub const NAME: &'static str = "splitmix64";

    /// A generator whose first output depends only on `seed`.
    pub fn new(seed: u64) -> Self {
        SplitMix64 { state: seed }
    }

    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.state = self.state.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.state;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in `[0, 1)`, from the top 53 bits of [`next_u64`](Self::next_u64).
    pub fn uniform(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 * (1.0 / (1u64 << 53) as f64)
    }

    /// An index in `0..n` (`n > 0`), as `next_u64() % n`: the modulo bias is below `n / 2⁶⁴`,
    /// negligible for the list lengths drawn from here.
    ///
    /// # Panics
    /// When `n` is 0 (a caller's bug: there is nothing to draw from).
    pub fn below(&mut self, n: u64) -> u64 {
        assert!(n > 0, "SplitMix64::below(0)");
        self.next_u64() % n
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn matches_the_published_sequence() {
        // The reference outputs of SplitMix64 seeded with 0 (as in the paper's and Vigna's
        // C implementation).
        let mut r = SplitMix64::new(0);
        assert_eq!(r.next_u64(), 0xE220_A839_7B1D_CDAF);
        assert_eq!(r.next_u64(), 0x6E78_9E6A_A1B9_65F4);
        assert_eq!(r.next_u64(), 0x06C4_5D18_8009_454F);
    }

    #[test]
    fn uniform_and_below_stay_in_range_and_are_balanced() {
        let mut r = SplitMix64::new(42);
        let n = 100_000;
        let mut sum = 0.0;
        let mut counts = [0usize; 7];
        for _ in 0..n {
            let u = r.uniform();
            assert!((0.0..1.0).contains(&u));
            sum += u;
            counts[r.below(7) as usize] += 1;
        }
        // Mean 0.5 ± 5 standard errors (1/√(12n) ≈ 0.0009).
        assert!((sum / n as f64 - 0.5).abs() < 0.005, "{}", sum / n as f64);
        for c in counts {
            // n/7 ≈ 14286 per bin, standard deviation ≈ 111.
            assert!((c as f64 - n as f64 / 7.0).abs() < 600.0, "{counts:?}");
        }
    }

    #[test]
    fn same_seed_same_stream() {
        let a: Vec<u64> = (0..5)
            .scan(SplitMix64::new(9), |r, _| Some(r.next_u64()))
            .collect();
        let b: Vec<u64> = (0..5)
            .scan(SplitMix64::new(9), |r, _| Some(r.next_u64()))
            .collect();
        assert_eq!(a, b);
        assert_ne!(a[0], SplitMix64::new(10).next_u64());
    }
}
