//! `cargo bench -p eamet-solve`: MEMIT solve time and KeyStats update throughput, next to a
//! numpy/scipy baseline run in the same invocation (benches/solve_numpy.py).
//!
//! Environment:
//! * `EAMET_BENCH_QUICK=1`: only the SmolLM2-sized cases (seconds instead of minutes).
//! * `EAMET_BENCH_THREADS` (default 2): BLAS threads on both sides.
//! * `EAMET_BENCH_PYTHON`: the Python to run the baseline with (needs numpy + scipy); default
//!   `$HOME/.cache/eamet/pyenv/bin/python` if it exists, else the baseline is skipped.
//!
//! Prints a markdown table. No assertion on timings anywhere.

use std::ffi::{c_char, c_int, CStr};
use std::path::PathBuf;
use std::process::Command;
use std::time::Instant;

use eamet_solve::{KeyStats, MemitSolver, UpdateSolver};
use ndarray::{Array1, Array2};
use serde_json::{json, Value};

extern "C" {
    fn openblas_set_num_threads(n: c_int);
    fn openblas_get_num_threads() -> c_int;
    fn openblas_get_config() -> *const c_char;
    fn openblas_get_corename() -> *const c_char;
}

struct MemitCase {
    model: &'static str,
    d_k: usize,
    d_r: usize,
    n: usize,
    lambda: f64,
    reps: usize,
}

struct StatsCase {
    d: usize,
    batch: usize,
    batches: usize,
}

/// splitmix64 + Box–Muller: standard normal data (values do not change dense-LAPACK timings).
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> f64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        ((z ^ (z >> 31)) >> 11) as f64 / (1u64 << 53) as f64
    }
    fn normal(&mut self) -> f64 {
        let u1 = self.next().max(1e-300);
        let u2 = self.next();
        (-2.0 * u1.ln()).sqrt() * (2.0 * std::f64::consts::PI * u2).cos()
    }
    fn matrix(&mut self, rows: usize, cols: usize) -> Array2<f64> {
        Array2::from_shape_simple_fn((rows, cols), || self.normal())
    }
}

/// `C = GᵀG/64 + 0.5 I` (dense SPD) as statistics over 64 tokens, the same recipe as the Python
/// side.
fn synthetic_stats(rng: &mut Rng, d: usize) -> KeyStats {
    let g = rng.matrix(64, d);
    let mut st = KeyStats::new(d);
    st.update(g.view()).expect("finite");
    let mut so = st.sum_outer();
    so.diag_mut().mapv_inplace(|x| x + 32.0);
    KeyStats::from_sums(so, Array1::zeros(d), 64, 1).expect("valid sums")
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn cpu_model() -> String {
    std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split(':').nth(1))
                .map(|m| m.trim().to_string())
        })
        .unwrap_or_else(|| "unknown".into())
}

fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|_| "?".into())
}

fn cstr(p: *const c_char) -> String {
    if p.is_null() {
        return "?".into();
    }
    // SAFETY: OpenBLAS returns pointers to static NUL-terminated strings.
    unsafe { CStr::from_ptr(p) }.to_string_lossy().into_owned()
}

fn python() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("EAMET_BENCH_PYTHON") {
        return Some(PathBuf::from(p));
    }
    let home = std::env::var_os("HOME")?;
    let p = PathBuf::from(home).join(".cache/eamet/pyenv/bin/python");
    p.exists().then_some(p)
}

fn fmt_s(s: f64) -> String {
    if s < 1.0 {
        format!("{:.3}", s)
    } else {
        format!("{:.2}", s)
    }
}

fn main() {
    let quick = std::env::var("EAMET_BENCH_QUICK").is_ok_and(|v| !v.is_empty() && v != "0");
    let threads: usize = std::env::var("EAMET_BENCH_THREADS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(2);
    // SAFETY: plain OpenBLAS API calls.
    unsafe { openblas_set_num_threads(threads as c_int) };
    let (blas_threads, blas_config, blas_core) = unsafe {
        (
            openblas_get_num_threads(),
            cstr(openblas_get_config()),
            cstr(openblas_get_corename()),
        )
    };

    // SmolLM2-135M: d_ff 1536, d_model 576. Llama-2-7B: d_ff 11008, d_model 4096.
    let mut memit = vec![
        MemitCase {
            model: "SmolLM2-135M",
            d_k: 1536,
            d_r: 576,
            n: 1000,
            lambda: 15000.0,
            reps: 5,
        },
        MemitCase {
            model: "SmolLM2-135M",
            d_k: 1536,
            d_r: 576,
            n: 10000,
            lambda: 15000.0,
            reps: 3,
        },
    ];
    let mut stats = vec![StatsCase {
        d: 1536,
        batch: 2048,
        batches: 10,
    }];
    if !quick {
        memit.push(MemitCase {
            model: "Llama-2-7B",
            d_k: 11008,
            d_r: 4096,
            n: 1000,
            lambda: 15000.0,
            reps: 1,
        });
        memit.push(MemitCase {
            model: "Llama-2-7B",
            d_k: 11008,
            d_r: 4096,
            n: 10000,
            lambda: 15000.0,
            reps: 1,
        });
        stats.push(StatsCase {
            d: 11008,
            batch: 1024,
            batches: 3,
        });
    }

    let load_start = loadavg();
    eprintln!(
        "eamet-solve bench: {} MEMIT cases, {} stats cases, {threads} threads",
        memit.len(),
        stats.len()
    );
    let mut rng = Rng(0x1234_5678);
    let mut rust_memit = Vec::new();
    for c in &memit {
        let st = synthetic_stats(&mut rng, c.d_k);
        let k = rng.matrix(c.n, c.d_k);
        let r = rng.matrix(c.n, c.d_r);
        let mut solver = MemitSolver::new(c.lambda).expect("valid λ");
        let mut times = Vec::new();
        let mut diag = None;
        for _ in 0..c.reps {
            let t = Instant::now();
            let up = solver.solve(k.view(), r.view(), &st).expect("solve");
            times.push(t.elapsed().as_secs_f64());
            diag = Some(up.diagnostics);
        }
        let diag = diag.expect("at least one rep");
        eprintln!(
            "  rust memit {} n={}: {:.3}s (cond≈{:.2e}, rel. residual {:.1e}, {:?})",
            c.model,
            c.n,
            median(times.clone()),
            diag.condition_estimate,
            diag.relative_residual,
            diag.factorization
        );
        rust_memit.push((median(times), diag));
    }
    let mut rust_stats = Vec::new();
    for c in &stats {
        let k = rng.matrix(c.batch, c.d);
        let mut st = KeyStats::new(c.d);
        st.update(k.view()).expect("warm-up");
        let t = Instant::now();
        for _ in 0..c.batches {
            st.update(k.view()).expect("update");
        }
        let s = t.elapsed().as_secs_f64();
        eprintln!(
            "  rust stats d={}: {:.0} rows/s",
            c.d,
            (c.batch * c.batches) as f64 / s
        );
        rust_stats.push((c.batch * c.batches) as f64 / s);
    }

    // numpy / scipy baseline, in a child process.
    let plan = json!({
        "memit": memit.iter().map(|c| json!({"d_k": c.d_k, "d_r": c.d_r, "n": c.n, "lambda": c.lambda, "reps": c.reps})).collect::<Vec<_>>(),
        "stats": stats.iter().map(|c| json!({"d": c.d, "batch": c.batch, "batches": c.batches})).collect::<Vec<_>>(),
    });
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/benches/solve_numpy.py");
    let mut baseline: Option<Value> = None;
    let mut skipped = String::new();
    match python() {
        None => {
            skipped =
                "no Python found (set EAMET_BENCH_PYTHON or create ~/.cache/eamet/pyenv)".into()
        }
        Some(py) => {
            eprintln!("  running numpy baseline with {}", py.display());
            let out = Command::new(&py)
                .arg(script)
                .arg(plan.to_string())
                .env_remove("OPENBLAS_CORETYPE")
                .env_remove("OPENBLAS_L2_SIZE")
                .env("OPENBLAS_NUM_THREADS", threads.to_string())
                .env("OMP_NUM_THREADS", threads.to_string())
                .env("MKL_NUM_THREADS", threads.to_string())
                .output();
            match out {
                Err(e) => skipped = format!("could not run {}: {e}", py.display()),
                Ok(o) if !o.status.success() => {
                    skipped = format!(
                        "{} exited with {}: {}",
                        py.display(),
                        o.status,
                        String::from_utf8_lossy(&o.stderr)
                            .lines()
                            .last()
                            .unwrap_or("")
                    )
                }
                Ok(o) => match serde_json::from_slice::<Value>(&o.stdout) {
                    Ok(v) if v.get("error").is_some() => skipped = v["error"].to_string(),
                    Ok(v) => baseline = Some(v),
                    Err(e) => skipped = format!("unreadable baseline output: {e}"),
                },
            }
        }
    }

    // Report.
    println!("### eamet-solve benchmark\n");
    println!(
        "- machine: {} ({} logical CPUs)",
        cpu_model(),
        std::thread::available_parallelism().map_or(0, |n| n.get())
    );
    println!("- Rust: OpenBLAS `{blas_config}` (core {blas_core}), {blas_threads} threads");
    match &baseline {
        Some(b) => {
            let rt = &b["blas"]["runtime"];
            println!(
                "- Python {}: numpy {} (OpenBLAS `{}`), scipy {} (OpenBLAS `{}`), {} threads each",
                b["python"].as_str().unwrap_or("?"),
                b["numpy"].as_str().unwrap_or("?"),
                rt["numpy"]["config"].as_str().unwrap_or("?"),
                b["scipy"].as_str().unwrap_or("?"),
                rt["scipy"]["config"].as_str().unwrap_or("?"),
                threads,
            );
            if let Some(tp) = b["blas"].get("threadpoolctl") {
                println!("- threadpoolctl: `{tp}`");
            }
        }
        None => println!("- numpy baseline skipped: {skipped}"),
    }
    println!(
        "- mode: {}",
        if quick {
            "quick (EAMET_BENCH_QUICK)"
        } else {
            "full"
        }
    );
    println!(
        "- load average (1/5/15 min) at start: {load_start}; at end: {}\n",
        loadavg()
    );

    println!("MEMIT solve `Δ (λC + KᵀK) = RᵀK`, median wall time (form A, B = RᵀK, Cholesky, multi-RHS solve; the Rust time also includes input validation, the condition estimate and the residual check):\n");
    println!("| model | d_k | d_r | N | reps | eamet-solve (s) | numpy+scipy idiomatic (s) | scipy BLAS/LAPACK direct (s) | fastest Python / eamet |");
    println!("|---|---:|---:|---:|---:|---:|---:|---:|---:|");
    for (i, c) in memit.iter().enumerate() {
        let rust = rust_memit[i].0;
        let get = |k: &str| baseline.as_ref().and_then(|b| b["memit"][i][k].as_f64());
        let (idiomatic, direct) = (get("idiomatic"), get("direct"));
        let best = match (idiomatic, direct) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        println!(
            "| {} | {} | {} | {} | {} | {} | {} | {} | {} |",
            c.model,
            c.d_k,
            c.d_r,
            c.n,
            c.reps,
            fmt_s(rust),
            idiomatic.map_or("—".into(), fmt_s),
            direct.map_or("—".into(), fmt_s),
            best.map_or("—".into(), |p| format!("{:.2}", p / rust)),
        );
    }
    println!(
        "\nKeyStats update throughput (`Σ kkᵀ += KᵀK`, `Σ k += colsum`, one batch per call):\n"
    );
    println!(
        "| d | batch rows | batches | eamet-solve (rows/s) | numpy (rows/s) | eamet / numpy |"
    );
    println!("|---:|---:|---:|---:|---:|---:|");
    for (i, c) in stats.iter().enumerate() {
        let rust = rust_stats[i];
        let py = baseline
            .as_ref()
            .and_then(|b| b["stats"][i]["rows_per_s"].as_f64());
        println!(
            "| {} | {} | {} | {:.0} | {} | {} |",
            c.d,
            c.batch,
            c.batches,
            rust,
            py.map_or("—".into(), |p| format!("{p:.0}")),
            py.map_or("—".into(), |p| format!("{:.2}", rust / p)),
        );
    }
}
