//! Compute dtype on SmolLM2-135M (the GGUF of `cargo xtask setup`): speed and accuracy of bf16
//! and f16 against f32, measured in one run on this machine's CPU (or `--device`).
//!
//! ```sh
//! cargo run --release -p eamet-hooks --example dtype_bench            # CPU
//! BENCH_REPS=9 cargo run --release -p eamet-hooks --example dtype_bench -- cuda
//! BENCH_MODEL=path/to/hf-dir-or.gguf cargo run --release -p eamet-hooks --example dtype_bench
//! ```
//!
//! `BENCH_DTYPES=f32,bf16` measures only those (f32, the reference, is always measured first).
//! `BENCH_MODEL` swaps in another checkpoint (a GGUF file or a Hugging Face directory); the
//! accuracy prompts are then re-encoded from text, so any tokenizer works.
//!
//! - **forward**: 16 prompts × 20 tokens (seeded random ids, no padding), no grad, log-probs at
//!   the last position; median of `BENCH_REPS` (default 7) runs after two warm-up runs.
//! - **optimizer step**: the residual optimizer's inner step on the same batch: from the saved
//!   causal prefix at layer 4 (slots 0..10), an f32 `δ` (requires grad) added at slot 10, the
//!   log-probs of 3 target tokens per row at the last 3 positions, backward to `δ`.
//! - **accuracy**: last-position logits of 16 real prompts (the 6 golden prompts of
//!   `tests/golden/smollm2.json` and the 10 demo facts' prompts, left-padded batch) against f32:
//!   max and mean |Δlogit|, the same over the logits' standard deviation, and greedy next-token
//!   agreement.

use eamet_hooks::llama::ModelSource;
use eamet_hooks::tch::{self, Device, Kind, Tensor};
use eamet_hooks::{
    Batch, Dtype, Edit, EditableLm, LlamaModel, LoadOptions, LogProbs, Padding, Plan,
};
use serde_json::Value;
use std::path::PathBuf;
use std::time::Instant;

const LAYER: usize = 4;
const SUBJECT_SLOT: usize = 10;

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

/// The 16 accuracy prompts: the golden prompts, then the demo facts' prompts.
fn prompts(m: &LlamaModel) -> Vec<Vec<u32>> {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let doc: Value = serde_json::from_str(
        &std::fs::read_to_string(root.join("tests/golden/smollm2.json")).unwrap(),
    )
    .unwrap();
    // Encoded here (the golden ids are SmolLM2's), so that any tokenizer works.
    let mut ids: Vec<Vec<u32>> = doc["prompts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| m.tokenizer().encode(p.as_str().unwrap()).unwrap())
        .collect();
    let demo = std::fs::read_to_string(root.join("../../facts/demo.jsonl")).unwrap();
    for line in demo.lines().filter(|l| l.trim_start().starts_with('{')) {
        let v: Value = serde_json::from_str(line).unwrap();
        let p = v["prompt"]
            .as_str()
            .unwrap()
            .replace("{}", v["subject"].as_str().unwrap());
        ids.push(m.tokenizer().encode(&p).unwrap());
    }
    ids
}

struct Row {
    dtype: Dtype,
    load_s: f64,
    forward_s: f64,
    step_s: f64,
    logits: Tensor,
}

fn measure(source: &ModelSource, opts: LoadOptions, reps: usize, acc_ids: &[Vec<u32>]) -> Row {
    let t = Instant::now();
    let m = LlamaModel::from_source(source, opts).expect("run `cargo xtask setup` first");
    let load_s = t.elapsed().as_secs_f64();
    let dev = opts.device;
    tch::manual_seed(0);
    let vocab = m.config().vocab_size as i64;
    let ids: Vec<Vec<u32>> =
        Vec::<Vec<i64>>::try_from(Tensor::randint(vocab, [16, 20], (Kind::Int64, Device::Cpu)))
            .unwrap()
            .into_iter()
            .map(|r| r.into_iter().map(|v| v as u32).collect())
            .collect();
    let batch = Batch::new(&ids, 0, Padding::Right, dev).unwrap();
    let last: Vec<(usize, usize)> = (0..16).map(|r| (r, 19)).collect();
    let sync = || {
        if let Device::Cuda(n) = dev {
            tch::Cuda::synchronize(n as i64);
        }
    };
    let forward_s = median(reps, || {
        let _g = tch::no_grad_guard();
        let _ = m
            .forward(
                &batch,
                &Plan {
                    logprobs: Some(LogProbs::Full { at: last.clone() }),
                    ..Default::default()
                },
            )
            .unwrap();
        sync();
    });
    // The optimizer's step: causal prefix saved once, δ at the subject slot, 3 target tokens.
    let state = m.prefix_state(&batch, LAYER, SUBJECT_SLOT).unwrap();
    let at: Vec<(usize, usize)> = (0..16)
        .flat_map(|r| (17..20).map(move |s| (r, s)))
        .collect();
    let tokens: Vec<u32> = (0..16)
        .flat_map(|_| [ids[0][3], ids[1][5], ids[2][7]])
        .collect();
    let delta = (Tensor::randn([m.config().d_model as i64], (Kind::Float, dev)) * 0.1)
        .set_requires_grad(true);
    let step_s = median(reps, || {
        let mut d = delta.shallow_clone();
        d.zero_grad();
        let lp = m
            .forward(
                &batch,
                &Plan {
                    start: Some(state.shallow_clone()),
                    edits: vec![Edit {
                        layer: LAYER,
                        at: (0..16).map(|r| (r, SUBJECT_SLOT)).collect(),
                        delta: d.shallow_clone(),
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
        assert!(d.grad().defined());
        sync();
    });
    let b = Batch::new(acc_ids, m.tokenizer().pad_id, Padding::Left, dev).unwrap();
    let logits = m.last_logits(&b).unwrap().to_device(Device::Cpu);
    Row {
        dtype: opts.dtype,
        load_s,
        forward_s,
        step_s,
        logits,
    }
}

fn main() {
    let reps: usize = std::env::var("BENCH_REPS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(7);
    let device = std::env::args()
        .nth(1)
        .map(|d| eamet_hooks::compute::parse_device(&d).unwrap())
        .unwrap_or(Device::Cpu);
    let source = match std::env::var_os("BENCH_MODEL").map(PathBuf::from) {
        Some(p) if p.is_dir() => ModelSource::HfDir(p),
        Some(p) => ModelSource::Gguf(p),
        None => ModelSource::Gguf(eamet_hooks::paths::default_model().expect("a cache directory")),
    };
    let name = match &source {
        ModelSource::Gguf(p) | ModelSource::HfDir(p) => p
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default(),
    };
    let acc_ids = {
        let m = LlamaModel::from_source(&source, LoadOptions::default())
            .expect("run `cargo xtask setup` first");
        prompts(&m)
    };
    let wanted: Vec<Dtype> = match std::env::var("BENCH_DTYPES") {
        Ok(v) if !v.trim().is_empty() => v
            .split(',')
            .map(|d| d.trim().parse().expect("BENCH_DTYPES: f32, bf16 or f16"))
            .collect(),
        _ => Dtype::ALL.to_vec(),
    };
    let rows: Vec<Row> = Dtype::ALL
        .iter()
        .filter(|d| **d == Dtype::F32 || wanted.contains(d))
        .map(|&dtype| {
            let opts = LoadOptions { device, dtype };
            eprintln!("measuring {} ...", opts.describe());
            measure(&source, opts, reps, &acc_ids)
        })
        .collect();
    let f32r = &rows[0];
    println!(
        "{name} on {}, {} libtorch threads, median of {reps} runs\n",
        eamet_hooks::compute::device_name(device),
        tch::get_num_threads()
    );
    println!("| dtype | load | forward 16×20 | vs f32 | optimizer step 16×20 | vs f32 | max \\|Δlogit\\| | mean \\|Δlogit\\| | max \\|Δ\\|/std | greedy agrees |");
    println!("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
    for r in &rows {
        let n = acc_ids.len() as i64;
        let (mut max_abs, mut mean_abs, mut max_rel, mut agree) = (0f64, 0f64, 0f64, 0);
        for i in 0..n {
            let (g, w) = (r.logits.get(i), f32r.logits.get(i));
            let d = (&g - &w).abs();
            let m = d.max().double_value(&[]);
            max_abs = max_abs.max(m);
            mean_abs += d.mean(Kind::Double).double_value(&[]) / n as f64;
            max_rel = max_rel.max(m / w.std(true).double_value(&[]));
            agree += usize::from(
                g.argmax(-1, false).int64_value(&[]) == w.argmax(-1, false).int64_value(&[]),
            );
        }
        println!(
            "| {} | {:.1} s | {:.1} ms | {:.2}× | {:.1} ms | {:.2}× | {:.3} | {:.4} | {:.3} | {agree}/{n} |",
            r.dtype,
            r.load_s,
            r.forward_s * 1e3,
            r.forward_s / f32r.forward_s,
            r.step_s * 1e3,
            r.step_s / f32r.step_s,
            max_abs,
            mean_abs,
            max_rel,
        );
    }
    let std: f64 = (0..acc_ids.len() as i64)
        .map(|i| f32r.logits.get(i).std(true).double_value(&[]))
        .sum::<f64>()
        / acc_ids.len() as f64;
    println!("\n(f32 logits: mean standard deviation over the vocabulary {std:.2}; times are wall clock, ratios > 1 are slower than f32)");
}
