//! Whole-edit benchmark on SmolLM2-135M: N CounterFact facts (default 32) edited with MEMIT and
//! EAMET one fact at a time and batched / blocked, each variant's time per phase, per fact and
//! per Adam step, strict efficacy of the edit prompts after the edit and Σ A(i), and the
//! residual optimizer's cost per Adam step next to one reference-style step (full forward +
//! backward) in PyTorch + transformers, all in one invocation on the same machine, threads,
//! model and prompts.
//!
//! Run: `cargo bench --bench edit` (release). Environment: `EAMET_BENCH_N` (32),
//! `EAMET_BENCH_VARIANTS` (default `memit:1,memit:16,eamet:1,eamet:8,eamet:16,eamet:32`:
//! method:facts per pass), `EAMET_DATA_DIR` (CounterFact ROME file; falls back to the bundled
//! demo facts), `EAMET_BENCH_PYTHON` (default `$EAMET_HOME/pyenv/bin/python`, made by
//! `cargo xtask pyenv`), `BENCH_REPS` (7), `EAMET_BENCH_OUT` (JSON lines, one per variant as it
//! finishes; default `target/bench-edit.jsonl`). The statistics phase uses the per-user cache;
//! the first run fills it. After the tables it prints a roofline: each variant's model FLOP/s
//! in the optimizer's forward and backward passes (from `Residuals::work`) against a lone
//! libtorch matrix product of the passes' largest shape.

mod common;

use eamet::eval::data::{load, LoadOptions};
use eamet::hooks::tch::Device;
use eamet::hooks::{EditableLm, LlamaModel};
use eamet::optim::{prepare_facts, target_ids, ContextPrefixes};
use eamet::{EditHparams, EditOptions, EditOutcome, Editor, Fact, Method};
use std::io::Write;
use std::path::PathBuf;
use std::process::{Command, Stdio};

fn facts(n: usize) -> (Vec<Fact>, String) {
    let dir = std::env::var_os("EAMET_DATA_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../shared/data")));
    let file = dir.join("counterfact_rome_format_1000.json");
    if file.exists() {
        let opts = LoadOptions {
            limit: Some(n),
            ..Default::default()
        };
        let records = load(&file, &opts)
            .and_then(|l| l.into_edits())
            .expect("CounterFact loads");
        let facts = records.iter().map(|r| r.rewrite.to_fact()).collect();
        (facts, format!("CounterFact records 0..{n}"))
    } else {
        let text = include_str!("../facts/demo.jsonl");
        let facts: Vec<Fact> = text
            .lines()
            .filter(|l| !l.trim().is_empty())
            .map(|l| serde_json::from_str(l).unwrap())
            .take(n)
            .collect();
        let k = facts.len();
        (facts, format!("bundled demo facts ({k})"))
    }
}

fn python() -> String {
    std::env::var("EAMET_BENCH_PYTHON").unwrap_or_else(|_| {
        let home = eamet::hooks::paths::cache_dir()
            .map(|p| p.display().to_string())
            .unwrap_or_default();
        format!("{home}/pyenv/bin/python")
    })
}

fn phase(out: &EditOutcome, name: &str) -> f64 {
    out.timings
        .iter()
        .filter(|(n, _)| n == name)
        .map(|(_, s)| s)
        .sum()
}

/// Share of facts whose greedy continuation of the bare edit prompt starts with exactly the
/// new object's tokens (strict efficacy, ALGORITHM.md §7).
fn strict_efficacy(model: &LlamaModel, facts: &[Fact]) -> f64 {
    let prompts: Vec<String> = facts.iter().map(Fact::filled_prompt).collect();
    let targets: Vec<Vec<u32>> = facts
        .iter()
        .map(|f| target_ids(model.tokenizer(), &f.target_new).expect("target tokenizes"))
        .collect();
    let longest = targets.iter().map(Vec::len).max().unwrap_or(1);
    let got = eamet::eval::metrics::greedy(model, &prompts, longest, 32).expect("greedy");
    let hits = got
        .iter()
        .zip(&targets)
        .filter(|(c, t)| c.ids.len() >= t.len() && c.ids[..t.len()] == t[..])
        .count();
    hits as f64 / facts.len() as f64
}

/// Model FLOPs of the optimizer's passes (matrix products only: projections, MLP, LM head;
/// attention scores over these short prompts and the element-wise work are left out). The
/// backward pass needs input gradients only (weights are frozen), the same count as the forward.
fn optimizer_flops(model: &LlamaModel, w: &eamet::optim::Work) -> f64 {
    let c = model.config();
    let (d, q, kv, ff) = (
        c.d_model as f64,
        (c.n_heads * c.head_dim) as f64,
        (c.n_kv_heads * c.head_dim) as f64,
        c.d_ff as f64,
    );
    let per_token_block = 2.0 * (d * q + 2.0 * d * kv + q * d + 3.0 * d * ff);
    let blocks = (c.n_layers - w.first_layer) as f64;
    let per_row_head = 2.0 * d * c.vocab_size as f64;
    let tokens = (w.forward_tokens + w.backward_tokens) as f64;
    let rows = (w.logprob_rows + w.backward_logprob_rows) as f64;
    tokens * blocks * per_token_block + rows * per_row_head
}

/// libtorch's f32 matrix-product throughput on this machine (GFLOP/s) for the optimizer's
/// largest product shape: `tokens × d_model` times `d_model × d_ff`, best of a few runs.
fn gemm_gflops(model: &LlamaModel, tokens: i64) -> f64 {
    use eamet::hooks::tch::{Kind, Tensor};
    let c = model.config();
    let (d, ff) = (c.d_model as i64, c.d_ff as i64);
    let a = Tensor::randn([tokens, d], (Kind::Float, Device::Cpu));
    let b = Tensor::randn([d, ff], (Kind::Float, Device::Cpu));
    let _ = a.matmul(&b);
    let mut best = f64::INFINITY;
    for _ in 0..5 {
        let t = std::time::Instant::now();
        for _ in 0..20 {
            let _ = a.matmul(&b);
        }
        best = best.min(t.elapsed().as_secs_f64() / 20.0);
    }
    2.0 * (tokens * d * ff) as f64 / best / 1e9
}

struct Row {
    label: String,
    out: EditOutcome,
    efficacy: f64,
    total: f64,
}

fn variants() -> Vec<(Method, usize)> {
    let spec = std::env::var("EAMET_BENCH_VARIANTS")
        .unwrap_or_else(|_| "memit:1,memit:16,eamet:1,eamet:8,eamet:16,eamet:32".into());
    spec.split(',')
        .map(|v| {
            let (m, b) = v.split_once(':').expect("method:facts-per-pass");
            (
                Method::parse(m.trim()).expect("method"),
                b.trim().parse().expect("facts per pass"),
            )
        })
        .collect()
}

fn main() {
    let n: usize = std::env::var("EAMET_BENCH_N")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(32);
    let reps: usize = std::env::var("BENCH_REPS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(7);
    let out_path = std::env::var("EAMET_BENCH_OUT").unwrap_or_else(|_| {
        concat!(env!("CARGO_MANIFEST_DIR"), "/target/bench-edit.jsonl").to_string()
    });
    let path = eamet::hooks::paths::default_model().expect("model path");
    assert!(path.exists(), "run `cargo xtask setup` first");
    let mut model = LlamaModel::from_gguf(&path, Device::Cpu).unwrap();
    let (facts, source) = facts(n);
    let cpu = common::cpu_name();

    // One reference-style step on the first fact's real prompts.
    let hp = EditHparams::smollm2(Method::Eamet);
    let l_r = *hp.layers.last().unwrap();
    let prefixes = ContextPrefixes::generate(&model, &hp.prefixes).unwrap();
    let prepared = prepare_facts(model.tokenizer(), &facts[..1], &prefixes).unwrap();
    let p = &prepared[0];
    let spec = serde_json::json!({
        "layer": l_r,
        "rows": (0..p.templates()).map(|t| p.rewrite_prompt(t)).collect::<Vec<_>>(),
        "subject_last": p.subject_last,
        "targets": p.target_ids,
        "essence": p.essence_prompt,
        "essence_subject_last": p.essence_subject_last,
    });
    let spec_path =
        std::env::temp_dir().join(format!("eamet-edit-bench-{}.json", std::process::id()));
    std::fs::write(&spec_path, spec.to_string()).unwrap();
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/benches/edit_torch.py");
    let base = Command::new(python())
        .args([
            script,
            &path.to_string_lossy(),
            &spec_path.to_string_lossy(),
            &reps.to_string(),
        ])
        // Baseline only: the bundled numpy/torch wheels do not need these OpenBLAS overrides.
        .env_remove("OPENBLAS_CORETYPE")
        .env_remove("OPENBLAS_L2_SIZE")
        .stderr(Stdio::inherit())
        .output()
        .ok()
        .filter(|o| o.status.success())
        .and_then(|o| {
            let line = String::from_utf8_lossy(&o.stdout)
                .lines()
                .last()?
                .to_string();
            serde_json::from_str::<serde_json::Value>(&line).ok()
        });
    let _ = std::fs::remove_file(&spec_path);
    let torch_step = base.as_ref().and_then(|b| b["step"].as_f64());
    if let (Some(t), Ok(mut f)) = (
        torch_step,
        std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&out_path),
    ) {
        let _ = writeln!(
            f,
            "{}",
            serde_json::json!({"label": "pytorch reference-style step", "cpu": cpu, "step": t, "n": facts.len()})
        );
    }

    let mut rows: Vec<Row> = Vec::new();
    for (method, block) in variants() {
        let mut hp = EditHparams::smollm2(method);
        hp.block = block;
        let schedule = method.schedule(&hp);
        let label = format!(
            "{} {}",
            method.name(),
            eamet::evaluation::describe_residual_schedule(schedule)
        );
        eprintln!("== {label}, {} facts", facts.len());
        let opts = EditOptions {
            progress: true,
            ..Default::default()
        };
        let out = Editor::new(&mut model, method, hp, opts)
            .unwrap()
            .edit(&facts)
            .unwrap();
        let efficacy = strict_efficacy(&model, &facts);
        model.restore();
        let total = out.timings.iter().map(|(_, s)| s).sum::<f64>();
        let steps: usize = out.residuals.stats.iter().map(|s| s.steps).sum();
        let line = serde_json::json!({
            "label": label, "method": method.name(), "block": block, "n": facts.len(),
            "source": source, "cpu": cpu, "threads": eamet::hooks::tch::get_num_threads(),
            "timings": out.timings, "steps": steps, "strict_efficacy": efficacy,
            "misalignment_total": out.misalignment_total,
            "written_misalignment_total": out.written_misalignment_total,
            "converged": out.residuals.stats.iter().filter(|s| s.final_nll < 0.5).count(),
            "profile": out.residuals.profile,
            "work": out.residuals.work,
            "optimizer_gflop": optimizer_flops(&model, &out.residuals.work) / 1e9,
        });
        if let Ok(mut f) = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&out_path)
        {
            let _ = writeln!(f, "{line}");
        }
        eprintln!("{line}");
        rows.push(Row {
            label,
            out,
            efficacy,
            total,
        });
    }

    println!(
        "\nSmolLM2-135M (f32, CPU: {cpu}, {} libtorch threads), {source}, layers {:?}, l_R = {l_r}\n",
        eamet::hooks::tch::get_num_threads(),
        hp.layers
    );
    println!("| variant | residuals | per fact | Adam steps | per step | speed-up per fact | whole edit | strict efficacy | Σ A(i) optimized / written | converged (NLL < 0.5) |");
    println!("|---|---|---|---|---|---|---|---|---|---|");
    let nf = facts.len() as f64;
    for r in &rows {
        let res = phase(&r.out, "residuals");
        let steps: usize = r.out.residuals.stats.iter().map(|s| s.steps).sum();
        // Against the one-at-a-time row of the same method in this run.
        let base = rows
            .iter()
            .find(|b| b.out.method == r.out.method && b.out.schedule.width() == 1);
        let speedup = base
            .map(|b| format!("{:.2}x", phase(&b.out, "residuals") / res))
            .unwrap_or_else(|| "-".into());
        println!(
            "| {} | {:.1} s | {:.2} s | {} | {:.1} ms | {} | {:.1} s | {:.3} | {:.3} / {:.3} | {}/{} |",
            r.label,
            res,
            res / nf,
            steps,
            res / steps.max(1) as f64 * 1e3,
            speedup,
            r.total,
            r.efficacy,
            r.out.misalignment_total,
            r.out.written_misalignment_total,
            r.out.residuals.stats.iter().filter(|s| s.final_nll < 0.5).count(),
            facts.len()
        );
    }
    println!("\nphases (s):");
    for r in &rows {
        let parts: Vec<String> = r
            .out
            .timings
            .iter()
            .map(|(n, s)| format!("{n} {s:.1}"))
            .collect();
        let prof: Vec<String> = r
            .out
            .residuals
            .profile
            .iter()
            .map(|(n, s)| format!("{n} {s:.1}"))
            .collect();
        println!(
            "- {}: {}; inside residuals: {}",
            r.label,
            parts.join(", "),
            prof.join(", ")
        );
    }
    // Roofline: the optimizer's model FLOPs over its forward + backward seconds, against
    // libtorch's own matrix-product throughput at the batch sizes the passes use.
    println!("\nthroughput of the optimizer's forward + backward (matrix products only):");
    for r in &rows {
        let w = &r.out.residuals.work;
        let secs: f64 = r
            .out
            .residuals
            .profile
            .iter()
            .filter(|(n, _)| n == "forward" || n == "backward")
            .map(|(_, s)| s)
            .sum();
        let per_pass = w.forward_tokens / w.passes.max(1);
        let gemm = gemm_gflops(&model, per_pass.max(1) as i64);
        let got = optimizer_flops(&model, w) / secs.max(1e-9) / 1e9;
        println!(
            "- {}: {} passes, {:.0} tokens per pass, {:.1} GFLOP per fact, {:.1} GFLOP/s; a lone {}x{}x{} product: {:.1} GFLOP/s ({:.0}%)",
            r.label,
            w.passes,
            per_pass,
            optimizer_flops(&model, w) / 1e9 / nf,
            got,
            per_pass,
            model.config().d_model,
            model.config().d_ff,
            gemm,
            100.0 * got / gemm
        );
    }
    match (torch_step, base.as_ref()) {
        (Some(t), Some(b)) => {
            println!(
                "\nPyTorch reference-style step ({} rows, width {}, torch {}): {:.1} ms, same run",
                b["rows"],
                b["width"],
                b["torch"].as_str().unwrap_or("?"),
                t * 1e3
            );
            for r in &rows {
                let res = phase(&r.out, "residuals");
                let steps: usize = r.out.residuals.stats.iter().map(|s| s.steps).sum();
                println!(
                    "- {}: per fact-step {:.1} ms, {:.2}x faster than PyTorch's step",
                    r.label,
                    res / steps.max(1) as f64 * 1e3,
                    t / (res / steps.max(1) as f64)
                );
            }
        }
        _ => println!("\nPyTorch baseline: skipped (run `cargo xtask pyenv`)"),
    }
}
