//! Forward and optimizer-step throughput on SmolLM2-135M, next to PyTorch + transformers run in
//! the same invocation (ratios reported). `cargo bench -p eamet-hooks --bench forward`.
//!
//! - full forward: 16 x 32 tokens, no grad; ours with logits at every position (like HF) and
//!   with the LM head at the last position only.
//! - optimizer step: 11 rewriting prompts (~20 tokens: random prefix + the same subject, template
//!   and target), a delta added at layer L at the subject's last token, log-probs of 3 target
//!   tokens per prompt, backward to the delta. Ours: all layers with a sparse LM head; from
//!   hidden states of layer L cached once; and from layer L recomputing only the slots from the
//!   subject on (causal prefix). The baseline runs the full model with a hook and full logits,
//!   as reference MEMIT code does.
//!
//! Environment: EAMET_BENCH_PYTHON (default ~/.cache/eamet/pyenv/bin/python), BENCH_REPS (5).

use eamet_hooks::tch::{Device, Kind, Tensor};
use eamet_hooks::{Batch, Edit, EditableLm, LlamaModel, LogProbs, Padding, Plan};
use std::time::Instant;

const LAYER: usize = 4;

fn median(reps: usize, mut f: impl FnMut()) -> f64 {
    f();
    f();
    let mut ts: Vec<f64> = (0..reps)
        .map(|_| {
            let t = Instant::now();
            f();
            t.elapsed().as_secs_f64()
        })
        .collect();
    ts.sort_by(f64::total_cmp);
    ts[ts.len() / 2]
}

fn main() {
    let reps: usize = std::env::var("BENCH_REPS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(5);
    let path = eamet_hooks::paths::default_model().expect("cache dir");
    let m = LlamaModel::from_gguf(&path, Device::Cpu).expect("run `cargo xtask setup` first");
    let vocab = m.config().vocab_size as i64;
    eamet_hooks::tch::manual_seed(0);
    let rand_ids = |b: i64, t: i64| -> Vec<Vec<u32>> {
        let x = Tensor::randint(vocab, [b, t], (Kind::Int64, Device::Cpu));
        Vec::<Vec<i64>>::try_from(x)
            .unwrap()
            .into_iter()
            .map(|r| r.into_iter().map(|v| v as u32).collect())
            .collect()
    };

    // Full forward.
    let ids = rand_ids(16, 32);
    let batch = Batch::new(&ids, 0, Padding::Right, Device::Cpu).unwrap();
    let all: Vec<(usize, usize)> = (0..16).flat_map(|r| (0..32).map(move |s| (r, s))).collect();
    let full_all = median(reps, || {
        let _g = eamet_hooks::tch::no_grad_guard();
        m.forward(
            &batch,
            &Plan {
                logprobs: Some(LogProbs::Full { at: all.clone() }),
                ..Default::default()
            },
        )
        .unwrap();
    });
    let full_last = median(reps, || {
        let _ = m.last_logits(&batch).unwrap();
    });

    // Optimizer step on a realistic rewriting batch: 11 prompts = random prefix (6..16 tokens)
    // + the same subject (3), rest of the template (4) and target minus its last token (2),
    // left-padded so every row's subject ends at the same slot s0.
    let shared = rand_ids(1, 9).remove(0);
    let prefix_lens = [6i64, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16];
    let ids: Vec<Vec<u32>> = prefix_lens
        .iter()
        .map(|&n| {
            rand_ids(1, n)
                .remove(0)
                .into_iter()
                .chain(shared.iter().copied())
                .collect()
        })
        .collect();
    let batch = Batch::new(&ids, 0, Padding::Left, Device::Cpu).unwrap();
    let width = batch.width;
    let s0 = width - 7; // last subject token
    let subj: Vec<(usize, usize)> = (0..11).map(|r| (r, s0)).collect();
    let at: Vec<(usize, usize)> = (0..11)
        .flat_map(|r| (width - 3..width).map(move |s| (r, s)))
        .collect();
    let targets = rand_ids(1, 3).remove(0);
    let tokens: Vec<u32> = (0..11).flat_map(|_| targets.iter().copied()).collect();
    let tokens_total: usize = ids.iter().map(Vec::len).sum();
    let delta = Tensor::zeros([m.config().d_model as i64], (Kind::Float, Device::Cpu))
        .set_requires_grad(true);
    let step_with = |start: &Option<eamet_hooks::Start>| {
        let mut delta = delta.shallow_clone();
        delta.zero_grad();
        let lp = m
            .forward(
                &batch,
                &Plan {
                    start: start.as_ref().map(|s| s.shallow_clone()),
                    edits: vec![Edit {
                        layer: LAYER,
                        at: subj.clone(),
                        delta: delta.shallow_clone(),
                    }],
                    logprobs: Some(LogProbs::Tokens {
                        at: at.clone(),
                        tokens: tokens.clone(),
                    }),
                    ..Default::default()
                },
            )
            .unwrap()
            .logprobs
            .unwrap();
        (-lp.mean(Kind::Float)).backward();
    };
    let step_full = median(reps, || step_with(&None));
    let lower = Some(m.prefix_state(&batch, LAYER, 0).unwrap());
    let step_lower = median(reps, || step_with(&lower));
    let state_time = median(reps, || {
        let _ = m.prefix_state(&batch, LAYER, s0).unwrap();
    });
    let causal = Some(m.prefix_state(&batch, LAYER, s0).unwrap());
    let step_causal = median(reps, || step_with(&causal));
    let spec = serde_json::json!({"ids": ids, "s0": s0, "targets": targets});
    let spec_path = std::env::temp_dir().join(format!("eamet-bench-{}.json", std::process::id()));
    std::fs::write(&spec_path, spec.to_string()).unwrap();

    let py = std::env::var("EAMET_BENCH_PYTHON").unwrap_or_else(|_| {
        format!(
            "{}/.cache/eamet/pyenv/bin/python",
            std::env::var("HOME").unwrap_or_default()
        )
    });
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/benches/forward_torch.py");
    let base = std::process::Command::new(&py)
        .args([
            script,
            &path.to_string_lossy(),
            &LAYER.to_string(),
            &reps.to_string(),
            &spec_path.to_string_lossy(),
        ])
        .env_remove("OPENBLAS_CORETYPE")
        .env_remove("OPENBLAS_L2_SIZE")
        .stderr(std::process::Stdio::null())
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

    println!(
        "SmolLM2-135M (f32, CPU, {} libtorch threads), median of {reps} runs\n",
        eamet_hooks::tch::get_num_threads()
    );
    println!("| measurement | eamet-hooks | PyTorch transformers | speed-up |");
    println!("|---|---|---|---|");
    let row = |name: &str, ours: f64, tokens: f64, theirs: Option<f64>| {
        let (t, r) = match theirs {
            Some(b) => (
                format!("{:.1} ms ({:.0} tok/s)", b * 1e3, tokens / b),
                format!("{:.2}x", b / ours),
            ),
            None => ("skipped".into(), "-".into()),
        };
        println!(
            "| {name} | {:.1} ms ({:.0} tok/s) | {t} | {r} |",
            ours * 1e3,
            tokens / ours
        );
    };
    let get = |k: &str| base.as_ref().and_then(|b| b[k].as_f64());
    row(
        "full forward 16x32, logits at all positions",
        full_all,
        512.0,
        get("full_forward"),
    );
    row(
        "full forward 16x32, LM head at last position",
        full_last,
        512.0,
        get("full_forward"),
    );
    let tt = tokens_total as f64;
    row(
        &format!("optimizer step, {tokens_total} tokens in 11 prompts, all layers, sparse head"),
        step_full,
        tt,
        get("opt_step"),
    );
    row(
        &format!("optimizer step, from cached layer {LAYER}"),
        step_lower,
        tt,
        get("opt_step"),
    );
    row(
        &format!("optimizer step, from cached layer {LAYER} + causal prefix (slots {s0}..{width})"),
        step_causal,
        tt,
        get("opt_step"),
    );
    println!(
        "| (once per fact) saved prefix state for the causal step | {:.1} ms | - | - |",
        state_time * 1e3
    );
    let _ = std::fs::remove_file(&spec_path);
    match &base {
        Some(b) => println!("\nbaseline: torch {} with {} threads, {py}", b["torch"], b["threads"]),
        None => println!("\nbaseline skipped: no Python with torch+transformers at {py} (run `cargo xtask pyenv`)"),
    }
}
