//! Misalignment-score benchmark: the blocked GEMM path (`misalignment`) against a naive triple
//! loop, at SmolLM2 sizes (d_key = 1536, d_res = 576; N = 1k, 5k, 10k) and 7B sizes
//! (d_key = 11008, d_res = 4096; N = 2k). Prints a markdown table: wall time, peak extra heap
//! (a counting global allocator, reset per case), and the naive/blocked ratio.
//!
//! The naive loop is timed on the first `rows` facts only where the full run would be slow, and
//! its full time is extrapolated linearly (`× N/rows`: every row costs the same, `N·d`).
//!
//! Run: `cargo bench -p eamet-align` (add `--features blas` for OpenBLAS GEMM).
//! Quick mode (N = 1k and a 7B slice only): `EAMET_BENCH_QUICK=1 cargo bench -p eamet-align`
//! or `cargo bench -p eamet-align -- --quick`. `EAMET_BENCH_N=5000,10000` keeps only those N;
//! `EAMET_BENCH_BLOCK=128` sets the rows per block; `EAMET_BENCH_NAIVE=0` times the naive loop
//! on one row only.

use std::alloc::{GlobalAlloc, Layout, System};
use std::hint::black_box;
use std::num::NonZeroUsize;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Instant;

use eamet_align::{
    misalignment, AlignmentStream, Divergence, KlDirection, Neighbourhood, ScoreConfig,
    TargetConfig, Temperature,
};
use ndarray::{Array2, ArrayView2};
use rayon::prelude::*;

/// Counts live heap bytes and their high-water mark.
struct Counting;

static CURRENT: AtomicUsize = AtomicUsize::new(0);
static PEAK: AtomicUsize = AtomicUsize::new(0);

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let p = unsafe { System.alloc(layout) };
        if !p.is_null() {
            let now = CURRENT.fetch_add(layout.size(), Ordering::Relaxed) + layout.size();
            PEAK.fetch_max(now, Ordering::Relaxed);
        }
        p
    }
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        let p = unsafe { System.alloc_zeroed(layout) };
        if !p.is_null() {
            let now = CURRENT.fetch_add(layout.size(), Ordering::Relaxed) + layout.size();
            PEAK.fetch_max(now, Ordering::Relaxed);
        }
        p
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        unsafe { System.dealloc(ptr, layout) };
        CURRENT.fetch_sub(layout.size(), Ordering::Relaxed);
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        let p = unsafe { System.realloc(ptr, layout, new_size) };
        if !p.is_null() {
            if new_size >= layout.size() {
                let now = CURRENT.fetch_add(new_size - layout.size(), Ordering::Relaxed)
                    + (new_size - layout.size());
                PEAK.fetch_max(now, Ordering::Relaxed);
            } else {
                CURRENT.fetch_sub(layout.size() - new_size, Ordering::Relaxed);
            }
        }
        p
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

/// Runs `f`, returning its value, wall seconds and peak heap above the level at the start (MiB).
fn measure<R>(f: impl FnOnce() -> R) -> (R, f64, f64) {
    let base = CURRENT.load(Ordering::Relaxed);
    PEAK.store(base, Ordering::Relaxed);
    let t = Instant::now();
    let r = f();
    let secs = t.elapsed().as_secs_f64();
    let peak = PEAK.load(Ordering::Relaxed).saturating_sub(base);
    (r, secs, peak as f64 / (1024.0 * 1024.0))
}

/// Deterministic uniform(-1, 1) matrix (splitmix64).
fn random(n: usize, d: usize, seed: u64) -> Array2<f32> {
    let mut s = seed;
    Array2::from_shape_simple_fn((n, d), || {
        s = s.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = s;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^= z >> 31;
        ((z >> 11) as f64 / (1u64 << 53) as f64 * 2.0 - 1.0) as f32
    })
}

/// The naive path: per fact i (rows in parallel, as the blocked path), cosines to every j by a
/// plain loop over the coordinates (f64 accumulation, norms computed once), then the same
/// divergence. Returns A(i) for the first `rows` facts.
fn naive(keys: ArrayView2<f32>, res: ArrayView2<f32>, rows: usize, tau: Temperature) -> Vec<f64> {
    let n = keys.nrows();
    let norms = |m: ArrayView2<f32>| -> Vec<f64> {
        m.rows()
            .into_iter()
            .map(|r| {
                r.iter()
                    .map(|&x| f64::from(x) * f64::from(x))
                    .sum::<f64>()
                    .sqrt()
            })
            .collect()
    };
    let (nk, nr) = (norms(keys), norms(res));
    let cos = |m: ArrayView2<f32>, norms: &[f64], i: usize, j: usize| -> f64 {
        let (a, b) = (m.row(i), m.row(j));
        let (a, b) = (a.as_slice().unwrap(), b.as_slice().unwrap());
        let mut acc = 0.0f64;
        for t in 0..a.len() {
            acc += f64::from(a[t]) * f64::from(b[t]);
        }
        acc / (norms[i] * norms[j])
    };
    (0..rows)
        .into_par_iter()
        .map(|i| {
            let js = (0..n).filter(|&j| j != i);
            let sk: Vec<f64> = js.clone().map(|j| cos(keys, &nk, i, j)).collect();
            let sr: Vec<f64> = js.map(|j| cos(res, &nr, i, j)).collect();
            KlDirection::ResidualKey.divergence(&sk, &sr, tau)
        })
        .collect()
}

/// The 1/5/15-minute load averages (other processes share these 2 cores).
fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|_| "unavailable".into())
}

struct Case {
    n: usize,
    dk: usize,
    dr: usize,
    naive_rows: usize,
}

fn main() {
    let quick =
        std::env::var_os("EAMET_BENCH_QUICK").is_some() || std::env::args().any(|a| a == "--quick");
    let cases: Vec<Case> = if quick {
        vec![
            Case {
                n: 1000,
                dk: 1536,
                dr: 576,
                naive_rows: 1000,
            },
            Case {
                n: 500,
                dk: 11008,
                dr: 4096,
                naive_rows: 64,
            },
        ]
    } else {
        vec![
            Case {
                n: 1000,
                dk: 1536,
                dr: 576,
                naive_rows: 1000,
            },
            Case {
                n: 5000,
                dk: 1536,
                dr: 576,
                naive_rows: 1000,
            },
            Case {
                n: 10000,
                dk: 1536,
                dr: 576,
                naive_rows: 500,
            },
            Case {
                n: 2000,
                dk: 11008,
                dr: 4096,
                naive_rows: 256,
            },
        ]
    };
    // Optional knobs: EAMET_BENCH_N=5000,10000 keeps only those N; EAMET_BENCH_BLOCK sets block_rows.
    let only: Option<Vec<usize>> = std::env::var("EAMET_BENCH_N")
        .ok()
        .map(|v| v.split(',').filter_map(|x| x.trim().parse().ok()).collect());
    let cases: Vec<Case> = cases
        .into_iter()
        .filter(|c| only.as_ref().is_none_or(|o| o.contains(&c.n)))
        .collect();
    let block_rows = std::env::var("EAMET_BENCH_BLOCK")
        .ok()
        .and_then(|v| v.parse().ok())
        .and_then(NonZeroUsize::new)
        .unwrap_or(ScoreConfig::default().block_rows);
    // EAMET_BENCH_NAIVE=0: time the naive loop on one row only (for quick A/B runs of backends).
    let skip_naive = std::env::var("EAMET_BENCH_NAIVE").is_ok_and(|v| v == "0");
    let backend = if cfg!(feature = "blas") {
        "OpenBLAS (ndarray `blas`)"
    } else {
        "matrixmultiply (ndarray default)"
    };
    let tau = Temperature::default();
    let cfg = ScoreConfig {
        neighbourhood: Neighbourhood::AllOthers,
        divergence: KlDirection::ResidualKey,
        block_rows,
        ..ScoreConfig::default()
    };
    let prior_cfg = ScoreConfig {
        neighbourhood: Neighbourhood::Prior,
        ..cfg.clone()
    };
    println!(
        "eamet-align score bench: f32 inputs, τ = {tau}, block_rows = {}, rayon threads = {}, GEMM = {backend}{}\n",
        cfg.block_rows,
        rayon::current_num_threads(),
        if quick { ", QUICK mode" } else { "" }
    );
    println!("load average at start (/proc/loadavg): {}\n", loadavg());
    // Warm up the thread pool and code paths.
    {
        let k = random(256, 64, 1);
        let r = random(256, 32, 2);
        black_box(misalignment(k.view(), r.view(), &cfg).unwrap());
    }
    println!("| N | d_key | d_res | inputs (MiB) | blocked j≠i (s) | blocked j<i (s) | peak extra heap, blocked j≠i (MiB) | naive rows timed | naive timed (s) | naive full (s) | naive / blocked | peak extra heap, naive (MiB) | max \\|ΔA\\| naive vs blocked |");
    println!("|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
    let mut stream_rows = Vec::new();
    for c in &cases {
        let keys = random(c.n, c.dk, 11 + c.n as u64);
        let res = random(c.n, c.dr, 17 + c.n as u64);
        let inputs = (c.n * (c.dk + c.dr) * 4) as f64 / (1024.0 * 1024.0);
        let (m, t_block, mem_block) =
            measure(|| misalignment(keys.view(), res.view(), &cfg).unwrap());
        let (_, t_prior, _) =
            measure(|| black_box(misalignment(keys.view(), res.view(), &prior_cfg).unwrap()));
        let rows = if skip_naive { 1 } else { c.naive_rows.min(c.n) };
        let (a_naive, t_naive, mem_naive) = measure(|| naive(keys.view(), res.view(), rows, tau));
        let full = t_naive * c.n as f64 / rows as f64;
        let max_diff = a_naive
            .iter()
            .zip(m.per_fact())
            .map(|(a, b)| (a - b).abs())
            .fold(0.0f64, f64::max);
        let extrapolated = rows < c.n;
        println!(
            "| {} | {} | {} | {:.0} | {:.2} | {:.2} | {:.1} | {}{} | {:.2} | {:.1}{} | {:.0}× | {:.1} | {:.1e} |",
            c.n,
            c.dk,
            c.dr,
            inputs,
            t_block,
            t_prior,
            mem_block,
            rows,
            if extrapolated { " (subset)" } else { "" },
            t_naive,
            full,
            if extrapolated { " (extrapolated)" } else { "" },
            full / t_block,
            mem_naive,
            max_diff
        );
        // Streaming: targets and live cosines of the last fact, with all others saved.
        let mut stream = AlignmentStream::new(keys.view(), c.dr, TargetConfig::default()).unwrap();
        let (_, t_push, _) = measure(|| {
            for r in res.rows().into_iter().take(c.n - 1) {
                stream.push(r).unwrap();
            }
        });
        let last = c.n - 1;
        let (t, t_targets, _) = measure(|| stream.targets(last).unwrap());
        let (_, t_loss, _) = measure(|| stream.loss(&t, res.row(last)).unwrap());
        stream_rows.push((
            c.n,
            c.dk,
            c.dr,
            t_push / (c.n - 1) as f64,
            t_targets,
            t_loss,
        ));
    }
    println!(
        "\nload average after the scoring cases (/proc/loadavg): {}",
        loadavg()
    );
    println!("\nStreaming form (`AlignmentStream`), fact i = N−1 with N−1 residuals saved:\n");
    println!(
        "| N | d_key | d_res | push, per residual (µs) | targets(N−1) (ms) | loss at δ (ms) |"
    );
    println!("|---:|---:|---:|---:|---:|---:|");
    for (n, dk, dr, push, targets, loss) in stream_rows {
        println!(
            "| {n} | {dk} | {dr} | {:.1} | {:.2} | {:.2} |",
            push * 1e6,
            targets * 1e3,
            loss * 1e3
        );
    }
}
