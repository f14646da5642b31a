//! Whole-edit benchmark on SmolLM2-135M (issue 5): N CounterFact facts (default 32) edited with
//! EAMET and with MEMIT, time per phase and per fact, and the residual optimizer's cost per Adam
//! step next to one reference-style step (full forward + backward) in PyTorch + transformers,
//! run in the same invocation on the same machine, threads, model and prompts.
//!
//! Run: `cargo bench --bench edit` (release). Environment: `EAMET_BENCH_N` (32),
//! `EAMET_DATA_DIR` (CounterFact ROME file; falls back to the bundled demo facts),
//! `EAMET_BENCH_PYTHON` (default `$EAMET_HOME/pyenv/bin/python`, made by `cargo xtask pyenv`),
//! `BENCH_REPS` (7). The statistics phase uses the per-user cache; the first run fills it.

use eamet::eval::data::{load, LoadOptions};
use eamet::hooks::tch::Device;
use eamet::hooks::{EditableLm, LlamaModel};
use eamet::optim::{prepare_facts, ContextPrefixes};
use eamet::{EditHparams, EditOptions, EditOutcome, Editor, Fact, Method};
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

fn main() {
    let n: usize = std::env::var("EAMET_BENCH_N")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(32);
    let reps: usize = std::env::var("BENCH_REPS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(7);
    let path = eamet::hooks::paths::default_model().expect("model path");
    assert!(path.exists(), "run `cargo xtask setup` first");
    let mut model = LlamaModel::from_gguf(&path, Device::Cpu).unwrap();
    let (facts, source) = facts(n);

    let mut rows = Vec::new();
    for method in [Method::Eamet, Method::Memit] {
        let hp = EditHparams::smollm2(method);
        let out = Editor::new(&mut model, method, hp, EditOptions::default())
            .unwrap()
            .edit(&facts)
            .unwrap();
        model.restore();
        rows.push(out);
    }

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

    println!(
        "\nSmolLM2-135M (f32, CPU, {} libtorch threads), {source}, layers {:?}, l_R = {l_r}\n",
        eamet::hooks::tch::get_num_threads(),
        hp.layers
    );
    println!("| phase | EAMET | MEMIT |");
    println!("|---|---|---|");
    let phases = [
        "prefixes",
        "keys",
        "residuals",
        "statistics",
        "solve",
        "misalignment",
    ];
    for name in phases {
        println!(
            "| {name} | {:.2} s | {:.2} s |",
            phase(&rows[0], name),
            phase(&rows[1], name)
        );
    }
    let total = |o: &EditOutcome| o.timings.iter().map(|(_, s)| s).sum::<f64>();
    println!(
        "| **whole edit of {} facts** | **{:.1} s** | **{:.1} s** |",
        facts.len(),
        total(&rows[0]),
        total(&rows[1])
    );
    let per_fact = |o: &EditOutcome| phase(o, "residuals") / facts.len() as f64;
    println!(
        "| residual optimization per fact | {:.2} s | {:.2} s |",
        per_fact(&rows[0]),
        per_fact(&rows[1])
    );
    let steps = |o: &EditOutcome| o.residuals.stats.iter().map(|s| s.steps).sum::<usize>();
    let per_step = |o: &EditOutcome| phase(o, "residuals") / steps(o).max(1) as f64;
    println!(
        "| Adam steps (all facts) | {} | {} |",
        steps(&rows[0]),
        steps(&rows[1])
    );
    println!(
        "| optimizer time per step (incl. per-fact set-up) | {:.1} ms | {:.1} ms |",
        per_step(&rows[0]) * 1e3,
        per_step(&rows[1]) * 1e3
    );
    let seq = &rows[0].residuals.stats;
    let k = (seq.len() / 4).max(1);
    let mean =
        |s: &[eamet::optim::FactStats]| s.iter().map(|f| f.seconds).sum::<f64>() / s.len() as f64;
    println!(
        "| EAMET seconds per fact, first {k} vs last {k} facts | {:.2} s vs {:.2} s | - |",
        mean(&seq[..k]),
        mean(&seq[seq.len() - k..])
    );
    match (torch_step, base.as_ref()) {
        (Some(t), Some(b)) => {
            println!(
                "| PyTorch reference-style step ({} rows, width {}, torch {}) | {:.1} ms | - |",
                b["rows"],
                b["width"],
                b["torch"].as_str().unwrap_or("?"),
                t * 1e3
            );
            println!(
                "| **speed-up per step vs PyTorch** | **{:.2}x** | **{:.2}x** |",
                t / per_step(&rows[0]),
                t / per_step(&rows[1])
            );
        }
        _ => println!("| PyTorch baseline | skipped (run `cargo xtask pyenv`) | - |"),
    }
    println!(
        "\nmisalignment total (optimized residuals): EAMET {:.2}, MEMIT {:.2} (ratio {:.3}); written: EAMET {:.2}, MEMIT {:.2}",
        rows[0].misalignment_total,
        rows[1].misalignment_total,
        rows[0].misalignment_total / rows[1].misalignment_total,
        rows[0].written_misalignment_total,
        rows[1].written_misalignment_total
    );
}
