//! Evaluation cost on SmolLM2-135M: N CounterFact EasyEdit records (default 200, records 0..N of
//! `counterfact_easyedit_edit.json`) evaluated the way `eamet eval --no-robustness --no-fluency`
//! does, once with the prefixed prompts on every record (`--prefixed-all`, the reference's
//! protocol) and once on the `--extra-sample` records only (the default), in one invocation on
//! the same machine, threads, model, records and prefixes. Each row times the four passes of a
//! pre + post evaluation (pre-edit metrics, the drift reference, post-edit metrics, the drift
//! measurement; post runs on the same unedited model, which costs the same as an edited one),
//! and projects them to 1000 records with the default sample of 100 (the sample fraction here
//! is the same 10%). It also prints how far the unprefixed metrics of the two runs differ (they
//! share forward batches with other prompts, so only float rounding may differ).
//!
//! Run: `cargo bench --bench evaluate` (release). Environment: `EAMET_BENCH_N` (200),
//! `EAMET_DATA_DIR` (default `../shared/data`). The context documents come from the per-user
//! cache of model-written text (the first run fills it, as `eamet eval` does).

mod common;

use eamet::eval::data::{load, LoadOptions};
use eamet::eval::drift::DriftReference;
use eamet::eval::metrics::{evaluate, ContextPrefixes, EvalConfig, PrefixedScope};
use eamet::hooks::tch::Device;
use eamet::hooks::{EditableLm, LlamaModel};
use std::path::PathBuf;
use std::time::Instant;

fn main() {
    let n: usize = std::env::var("EAMET_BENCH_N")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(200);
    let dir = std::env::var_os("EAMET_DATA_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../shared/data")));
    let file = dir.join("counterfact_easyedit_edit.json");
    if !file.exists() {
        eprintln!("skipped: {} is absent (set EAMET_DATA_DIR)", file.display());
        return;
    }
    let records = load(
        &file,
        &LoadOptions {
            limit: Some(n),
            ..Default::default()
        },
    )
    .and_then(|l| l.into_edits())
    .expect("CounterFact loads");
    let path = eamet::hooks::paths::default_model().expect("model path");
    assert!(path.exists(), "run `cargo xtask setup` first");
    let model = LlamaModel::from_gguf(&path, Device::Cpu).unwrap();
    let cache = eamet::hooks::paths::cache_dir().expect("a cache directory");
    let docs = eamet::stats::generated_corpus(&model, 256, 64, &cache, true)
        .expect("context documents")
        .docs;
    let prefixes = ContextPrefixes::from_corpus(model.tokenizer(), &docs, &[5], 10, 0).unwrap();
    let sample = (n / 10).max(1);
    println!(
        "evaluation of {n} CounterFact EasyEdit records (no robustness, no fluency; sample {sample}), {}, {} threads",
        common::cpu_name(),
        eamet::hooks::tch::get_num_threads()
    );
    println!(
        "| prefixed prompts on | pre metrics s | drift reference s | post metrics s | drift measure s | pre + post s | s / record | projected 1000 records, min |"
    );
    println!("|---|---|---|---|---|---|---|---|");
    let mut results = Vec::new();
    let mut totals = Vec::new();
    for scope in [PrefixedScope::All, PrefixedScope::Sample] {
        let cfg = EvalConfig {
            fluency_tokens: 0,
            robustness_lens: Vec::new(),
            extra_sample: Some(sample),
            prefixed_scope: scope,
            ..Default::default()
        };
        let t = Instant::now();
        let pre = evaluate(&model, &records, &prefixes, &cfg, None).unwrap();
        let t_pre = t.elapsed().as_secs_f64();
        let t = Instant::now();
        let reference =
            DriftReference::new(&model, &pre, cfg.lenient_tokens, cfg.batch_size).unwrap();
        let t_ref = t.elapsed().as_secs_f64();
        let t = Instant::now();
        let post = evaluate(&model, &records, &prefixes, &cfg, Some(&pre)).unwrap();
        let t_post = t.elapsed().as_secs_f64();
        let t = Instant::now();
        let drift = reference.measure(&model).unwrap();
        let t_measure = t.elapsed().as_secs_f64();
        assert!(drift.iter().all(|d| d.kl.abs() < 1e-4), "same model, KL 0");
        let total = t_pre + t_ref + t_post + t_measure;
        println!(
            "| {} | {t_pre:.1} | {t_ref:.1} | {t_post:.1} | {t_measure:.1} | {total:.1} | {:.3} | {:.1} |",
            match scope {
                PrefixedScope::All => "every record",
                PrefixedScope::Sample => "the sample",
            },
            total / n as f64,
            total / n as f64 * 1000.0 / 60.0
        );
        results.push(post);
        totals.push(total);
    }
    println!(
        "\nsample / every record: {:.2}x the time",
        totals[1] / totals[0]
    );
    // The unprefixed prompts are the same in both, but they share forward batches with other
    // prompts, so float rounding may differ in the last bits: report the largest difference
    // and how many records changed a strict (0/1-valued) outcome.
    let (mut max_diff, mut strict_flips, mut worst) = (0.0f64, 0usize, String::new());
    for (a, b) in results[0].iter().zip(&results[1]) {
        for (k, v) in b.metrics.iter().filter(|(k, _)| !k.ends_with("_prefixed")) {
            let d = a.metrics.get(k).map_or(f64::INFINITY, |w| (w - v).abs());
            if d > max_diff {
                max_diff = d;
                worst = k.clone();
            }
            if k.starts_with("strict.") && d > 0.0 {
                strict_flips += 1;
            }
        }
    }
    println!(
        "unprefixed metrics, every record vs sample: largest difference {max_diff:.2e} ({worst}); strict outcomes changed: {strict_flips}"
    );
}
