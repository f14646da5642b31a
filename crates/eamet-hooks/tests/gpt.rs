//! GPT-2 and GPT-J against PyTorch + transformers (golden files from `tools/golden_gpt.py`):
//! tiny random-weight checkpoints (GPT-2: learned positions, fused Conv1D q/k/v, tied head,
//! float16; GPT-J: partial interleaved rotary, parallel block, untied head with bias, bfloat16).
//! Last-position logits within 1e-3, identical greedy completions, a rank-one update of GPT-2's
//! Conv1D `c_proj` in transformers' orientation, the hooks, and typed errors.

use eamet_hooks::config::{Family, MlpKind, NormKind, PositionKind};
use eamet_hooks::export::{
    save_gguf, save_safetensors_dir, EditMetadata, EditedType, ExportError, OutputOptions,
};
use eamet_hooks::tch::{Device, Kind, Tensor};
use eamet_hooks::{
    Batch, Capture, Edit, EditableLm, LlamaModel, LogProbs, ModelConfig, ModelError, Padding, Plan,
    Site,
};
use serde_json::Value;
use std::collections::HashMap;
use std::path::{Path, PathBuf};

/// `EAMET_TEST_DEVICE` (default cpu): run these checks on a GPU when one is present.
fn dev() -> Device {
    eamet_hooks::compute::device_from_env("EAMET_TEST_DEVICE").unwrap()
}

fn golden_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/golden")
}

fn doc(name: &str) -> Value {
    let text = std::fs::read_to_string(golden_dir().join(format!("{name}.json"))).unwrap();
    serde_json::from_str(&text).unwrap()
}

/// `[prompts][vocab]` logits from a golden `.f32` file.
fn logits_file(file: &str, vocab: usize) -> Vec<Vec<f32>> {
    let raw = std::fs::read(golden_dir().join(file)).unwrap();
    let vals: Vec<f32> = raw
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect();
    vals.chunks(vocab).map(<[f32]>::to_vec).collect()
}

fn ids_of(v: &Value) -> Vec<Vec<u32>> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|r| {
            r.as_array()
                .unwrap()
                .iter()
                .map(|x| x.as_u64().unwrap() as u32)
                .collect()
        })
        .collect()
}

fn floats(v: &Value) -> Vec<f32> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_f64().unwrap() as f32)
        .collect()
}

fn load(name: &str) -> LlamaModel {
    LlamaModel::from_hf_dir(golden_dir().join(name), dev()).unwrap()
}

fn max_abs_diff(a: &Tensor, b: &[f32]) -> f64 {
    (a.to_device(Device::Cpu) - Tensor::from_slice(b))
        .abs()
        .max()
        .double_value(&[])
}

/// Last-position logits of every prompt, one at a time: `[prompts, vocab]`.
fn each_prompt_logits(m: &LlamaModel, ids: &[Vec<u32>]) -> Vec<Tensor> {
    ids.iter()
        .map(|p| {
            let b = Batch::new(std::slice::from_ref(p), 0, Padding::Right, m.device()).unwrap();
            m.last_logits(&b).unwrap().get(0)
        })
        .collect()
}

/// Logits one prompt at a time and as right- and left-padded batches against `want`; returns
/// the largest difference seen.
fn check_logits(m: &LlamaModel, ids: &[Vec<u32>], want: &[Vec<f32>], what: &str) -> f64 {
    let mut worst = 0f64;
    for (i, got) in each_prompt_logits(m, ids).iter().enumerate() {
        let d = max_abs_diff(got, &want[i]);
        assert!(d < 1e-3, "{what} prompt {i}: max |logit diff| {d}");
        worst = worst.max(d);
    }
    for padding in [Padding::Right, Padding::Left] {
        let b = Batch::new(ids, m.tokenizer().pad_id, padding, m.device()).unwrap();
        let got = m.last_logits(&b).unwrap();
        for (i, w) in want.iter().enumerate() {
            let d = max_abs_diff(&got.get(i as i64), w);
            assert!(
                d < 1e-3,
                "{what} {padding:?}-padded row {i}: max |logit diff| {d}"
            );
            worst = worst.max(d);
        }
    }
    worst
}

fn check_greedy(m: &LlamaModel, name: &str) {
    let d = doc(name);
    let ids = ids_of(&d["ids"]);
    let want = ids_of(&d["greedy"]);
    for (i, p) in ids.iter().enumerate() {
        let g = m.generate(std::slice::from_ref(p), 10, &[]).unwrap();
        assert_eq!(g[0].tokens, want[i], "{name} prompt {i} alone");
    }
    // All together: left-padded, KV cache.
    let g = m.generate(&ids, 10, &[]).unwrap();
    for (i, w) in want.iter().enumerate() {
        assert_eq!(&g[i].tokens, w, "{name} prompt {i} in a batch");
    }
}

fn parity(name: &str) -> f64 {
    let m = load(name);
    let d = doc(name);
    let ids = ids_of(&d["ids"]);
    // The tokenizer trained by the script encodes the prompts as transformers did.
    for (i, p) in d["prompts"].as_array().unwrap().iter().enumerate() {
        assert_eq!(m.tokenizer().encode(p.as_str().unwrap()).unwrap(), ids[i]);
    }
    let want = logits_file(
        &format!("{name}.logits.f32"),
        d["vocab"].as_u64().unwrap() as usize,
    );
    let worst = check_logits(&m, &ids, &want, name);
    check_greedy(&m, name);
    eprintln!("{name}: max |logit - transformers| = {worst:.3e}");
    worst
}

#[test]
fn gpt2_matches_transformers() {
    let m = load("tiny-gpt2");
    let c = m.config();
    assert_eq!(c.family, Family::Gpt2);
    assert_eq!((c.d_model, c.d_ff, c.n_heads, c.head_dim), (64, 256, 4, 16));
    assert_eq!(c.position_kind, PositionKind::Learned);
    assert_eq!((c.norm, c.mlp), (NormKind::Layer, MlpKind::Plain));
    assert!(c.tied_embeddings && c.qkv_bias && c.attn_out_bias && c.mlp_bias);
    assert!(!c.parallel_block && !c.lm_head_bias);
    assert_eq!(c.max_positions, 128);
    parity("tiny-gpt2");
}

#[test]
fn gptj_matches_transformers() {
    let m = load("tiny-gptj");
    let c = m.config();
    assert_eq!(c.family, Family::Gptj);
    assert_eq!((c.d_model, c.d_ff, c.n_heads, c.head_dim), (64, 128, 4, 16));
    assert_eq!(c.position_kind, PositionKind::RotaryInterleaved);
    assert_eq!((c.rotary_dim, c.rotary_width()), (Some(8), 8));
    assert!(c.parallel_block && c.lm_head_bias && c.mlp_bias);
    assert!(!c.tied_embeddings && !c.qkv_bias && !c.attn_out_bias);
    parity("tiny-gptj");
    // The partial rotary matters: turning the whole head (rotary_dim null) changes the logits.
    let tmp = tempfile::tempdir().unwrap();
    let dir = copy_checkpoint("tiny-gptj", tmp.path());
    edit_config(&dir, |c| c["rotary_dim"] = Value::Null);
    let full = LlamaModel::from_hf_dir(&dir, dev()).unwrap();
    assert_eq!(
        (full.config().rotary_dim, full.config().rotary_width()),
        (None, 16)
    );
    let d = doc("tiny-gptj");
    let want = logits_file("tiny-gptj.logits.f32", 320);
    let got = each_prompt_logits(&full, &ids_of(&d["ids"]));
    let moved = got
        .iter()
        .zip(&want)
        .map(|(g, w)| max_abs_diff(g, w))
        .fold(0f64, f64::max);
    assert!(
        moved > 1e-2,
        "rotating the whole head changes nothing ({moved})"
    );
}

#[test]
fn gpt2_without_attention_scaling_matches_transformers() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = copy_checkpoint("tiny-gpt2", tmp.path());
    edit_config(&dir, |c| c["scale_attn_weights"] = Value::Bool(false));
    let m = LlamaModel::from_hf_dir(&dir, dev()).unwrap();
    assert_eq!(m.config().attn_scale, Some(1.0));
    let d = doc("tiny-gpt2");
    let want = logits_file("tiny-gpt2.unscaled.logits.f32", 320);
    let worst = check_logits(&m, &ids_of(&d["ids"]), &want, "unscaled");
    eprintln!("tiny-gpt2 unscaled: max |logit - transformers| = {worst:.3e}");
}

/// The file's tensors as f32, by name.
fn file_tensors(dir: &Path) -> HashMap<String, Tensor> {
    let bytes = std::fs::read(dir.join("model.safetensors")).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    st.tensors()
        .into_iter()
        .map(|(name, v)| {
            let data: Vec<f32> = match v.dtype() {
                safetensors::Dtype::F16 => v
                    .data()
                    .chunks_exact(2)
                    .map(|c| half::f16::from_le_bytes([c[0], c[1]]).to_f32())
                    .collect(),
                safetensors::Dtype::BF16 => v
                    .data()
                    .chunks_exact(2)
                    .map(|c| half::bf16::from_le_bytes([c[0], c[1]]).to_f32())
                    .collect(),
                other => panic!("{name}: {other:?}"),
            };
            let shape: Vec<i64> = v.shape().iter().map(|&d| d as i64).collect();
            (name, Tensor::from_slice(&data).reshape(shape))
        })
        .collect()
}

#[test]
fn w_out_is_the_projection_weight_key_to_residual() {
    for (name, w_name) in [
        ("tiny-gpt2", "mlp.c_proj.weight"),
        ("tiny-gptj", "mlp.fc_out.weight"),
    ] {
        let m = load(name);
        let file = file_tensors(&golden_dir().join(name));
        let (d, f) = (m.config().d_model as i64, m.config().d_ff as i64);
        for l in 0..m.config().n_layers {
            let w = m.w_out(l).unwrap().to_device(Device::Cpu);
            assert_eq!(w.size(), [d, f], "{name} layer {l}");
            let stored = &file[&format!("transformer.h.{l}.{w_name}")];
            // GPT-2's Conv1D holds [d_ff, d_model]: W_out is its transpose; GPT-J's Linear is
            // W_out as it is.
            let want = if name == "tiny-gpt2" {
                stored.transpose(0, 1)
            } else {
                stored.shallow_clone()
            };
            assert!(w.equal(&want), "{name} layer {l}");
        }
        assert!(m.w_out(m.config().n_layers).is_err());
    }
}

#[test]
fn named_weights_are_the_checkpoint_tensors() {
    for name in ["tiny-gpt2", "tiny-gptj"] {
        let m = load(name);
        let file = file_tensors(&golden_dir().join(name));
        let named = m.named_weights();
        let names: Vec<&String> = named.iter().map(|(n, _)| n).collect();
        let mut want: Vec<&String> = file.keys().collect();
        want.sort();
        let mut got = names.clone();
        got.sort();
        assert_eq!(got, want, "{name}");
        for (n, t) in &named {
            assert!(t.to_device(Device::Cpu).equal(&file[n]), "{name}: {n}");
        }
    }
}

#[test]
fn gpt2_rank_one_update_matches_transformers() {
    let mut m = load("tiny-gpt2");
    let d = doc("tiny-gpt2");
    let ids = ids_of(&d["ids"]);
    let r1 = &d["rank_one"];
    let layer = r1["layer"].as_u64().unwrap() as usize;
    let u = Tensor::from_slice(&floats(&r1["u"]));
    let v = Tensor::from_slice(&floats(&r1["v"]));
    // Δ = u vᵀ: [d_model, d_ff], key -> residual.
    let delta = u.view([-1, 1]).matmul(&v.view([1, -1]));
    assert_eq!(delta.size(), [64, 256]);
    let before = each_prompt_logits(&m, &ids);
    let w0 = m.w_out(layer).unwrap();
    m.apply_delta(layer, &delta).unwrap();
    let added = (m.w_out(layer).unwrap() - &w0).to_device(Device::Cpu);
    let err = (&added - &delta).abs().max().double_value(&[]);
    assert!(err < 1e-6, "W_out moved by Δ ({err})");
    let want = logits_file("tiny-gpt2.edited.logits.f32", 320);
    let worst = check_logits(&m, &ids, &want, "rank-one edited");
    eprintln!("tiny-gpt2 rank-one edited: max |logit - transformers| = {worst:.3e}");
    // The transposed orientation would be a different (and here wrong-shaped) update.
    assert!(m.apply_delta(layer, &delta.transpose(0, 1)).is_err());
    m.restore();
    assert!(m.w_out(layer).unwrap().equal(&w0));
    for (a, b) in each_prompt_logits(&m, &ids).iter().zip(&before) {
        assert!(
            a.equal(b),
            "restore gives the loaded model back bit for bit"
        );
    }
    let base = logits_file("tiny-gpt2.logits.f32", 320);
    check_logits(&m, &ids, &base, "restored");
}

/// `apply_delta(Δ)` equals adding `Δ·key` at the MLP output, with the key captured at
/// `Site::MlpKey`; `Site::MlpOut` moves by exactly that.
#[test]
fn hooks_sit_at_the_output_projection() {
    for name in ["tiny-gpt2", "tiny-gptj"] {
        let mut m = load(name);
        let (d, f) = (m.config().d_model as i64, m.config().d_ff as i64);
        let ids = m.tokenizer().encode("The capital of Japan is").unwrap();
        let n = ids.len();
        let batch = Batch::new(&[ids], 0, Padding::Right, m.device()).unwrap();
        let at: Vec<(usize, usize)> = (0..n).map(|s| (0, s)).collect();
        let layer = 1;
        let caps = vec![
            Capture {
                layer,
                site: Site::MlpKey,
                at: Some(at.clone()),
            },
            Capture {
                layer,
                site: Site::MlpOut,
                at: Some(at.clone()),
            },
        ];
        let lp = Some(LogProbs::Full { at: at.clone() });
        let run = |m: &LlamaModel, edits: Vec<Edit>| {
            m.forward(
                &batch,
                &Plan {
                    captures: caps.clone(),
                    edits,
                    logprobs: lp.clone(),
                    ..Default::default()
                },
            )
            .unwrap()
        };
        let base = run(&m, vec![]);
        let key = &base.captures[0];
        assert_eq!(key.size(), [n as i64, f], "{name}: the key is d_ff wide");
        // The key is post-GELU: tanh-GELU is bounded below by about -0.17.
        assert!(key.min().double_value(&[]) > -0.2, "{name}");
        eamet_hooks::tch::manual_seed(3);
        let delta = Tensor::randn([d, f], (Kind::Float, m.device())) * 0.05;
        let added = key.matmul(&delta.transpose(0, 1)); // [n, d]: Δ·k per position
        let via_hook = run(
            &m,
            vec![Edit {
                layer,
                at: at.clone(),
                delta: added.shallow_clone(),
            }],
        );
        m.apply_delta(layer, &delta).unwrap();
        let via_weights = run(&m, vec![]);
        let moved = (&via_weights.captures[1] - &base.captures[1] - &added)
            .abs()
            .max()
            .double_value(&[]);
        assert!(moved < 1e-4, "{name}: MlpOut moved by Δ·k ({moved})");
        let a = via_hook.logprobs.unwrap();
        let b = via_weights.logprobs.unwrap();
        let diff = (&a - &b).abs().max().double_value(&[]);
        assert!(diff < 1e-4, "{name}: hook vs weights {diff}");
        let change = (&b - base.logprobs.unwrap()).abs().max().double_value(&[]);
        assert!(
            change > 1e-2,
            "{name}: the update changes the output ({change})"
        );
    }
}

/// Copies a golden checkpoint directory into `into`; returns the copy.
fn copy_checkpoint(name: &str, into: &Path) -> PathBuf {
    let dst = into.join(name);
    std::fs::create_dir_all(&dst).unwrap();
    for e in std::fs::read_dir(golden_dir().join(name)).unwrap() {
        let e = e.unwrap();
        std::fs::copy(e.path(), dst.join(e.file_name())).unwrap();
    }
    dst
}

fn edit_config(dir: &Path, f: impl FnOnce(&mut Value)) {
    let p = dir.join("config.json");
    let mut c: Value = serde_json::from_str(&std::fs::read_to_string(&p).unwrap()).unwrap();
    f(&mut c);
    std::fs::write(&p, serde_json::to_string_pretty(&c).unwrap()).unwrap();
}

/// Rewrites `model.safetensors` with `keep` deciding each tensor's fate: `None` drops it,
/// `Some(name)` keeps it under that name.
fn rewrite_tensors(dir: &Path, keep: impl Fn(&str) -> Option<String>) {
    let p = dir.join("model.safetensors");
    let bytes = std::fs::read(&p).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let views: Vec<(String, safetensors::tensor::TensorView<'_>)> = st
        .tensors()
        .into_iter()
        .filter_map(|(n, v)| keep(&n).map(|n| (n, v)))
        .collect();
    let out = safetensors::tensor::serialize(views, None).unwrap();
    std::fs::write(&p, out).unwrap();
}

#[test]
fn missing_tensors_are_named() {
    for (name, gone) in [
        ("tiny-gpt2", "transformer.h.1.mlp.c_fc.bias"),
        ("tiny-gpt2", "transformer.wpe.weight"),
        ("tiny-gptj", "lm_head.bias"),
        ("tiny-gptj", "transformer.h.2.ln_1.bias"),
    ] {
        let tmp = tempfile::tempdir().unwrap();
        let dir = copy_checkpoint(name, tmp.path());
        rewrite_tensors(&dir, |n| (n != gone).then(|| n.to_string()));
        let e = LlamaModel::from_hf_dir(&dir, dev()).unwrap_err();
        assert!(
            matches!(&e, ModelError::MissingTensor { name, .. } if name == gone),
            "{e:?}"
        );
        assert!(e.to_string().contains(gone), "{e}");
    }
}

#[test]
fn gpt2_checkpoint_without_the_transformer_prefix_loads() {
    // As saved from the bare GPT2Model (the original `gpt2` checkpoint): `h.0.ln_1.weight`, ...
    let tmp = tempfile::tempdir().unwrap();
    let dir = copy_checkpoint("tiny-gpt2", tmp.path());
    rewrite_tensors(&dir, |n| {
        Some(n.strip_prefix("transformer.").unwrap_or(n).to_string())
    });
    let m = LlamaModel::from_hf_dir(&dir, dev()).unwrap();
    let d = doc("tiny-gpt2");
    let want = logits_file("tiny-gpt2.logits.f32", 320);
    check_logits(&m, &ids_of(&d["ids"]), &want, "unprefixed");
}

#[test]
fn unsupported_settings_are_typed_errors() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = copy_checkpoint("tiny-gpt2", tmp.path());
    edit_config(&dir, |c| c["activation_function"] = "relu".into());
    let e = LlamaModel::from_hf_dir(&dir, dev()).unwrap_err();
    assert!(
        matches!(&e, ModelError::UnsupportedSetting { arch, field, value, supported }
            if arch == "gpt2" && field == "activation_function" && value == "\"relu\""
                && supported.contains("gelu_new")),
        "{e:?}"
    );
    assert!(e.to_string().contains("relu"), "{e}");
    let text = std::fs::read_to_string(golden_dir().join("tiny-gpt2/config.json")).unwrap();
    let base: Value = serde_json::from_str(&text).unwrap();
    for field in [
        "scale_attn_by_inverse_layer_idx",
        "reorder_and_upcast_attn",
        "add_cross_attention",
    ] {
        let mut c = base.clone();
        c[field] = Value::Bool(true);
        let e = ModelConfig::from_hf_json(&c.to_string()).unwrap_err();
        assert!(
            matches!(&e, ModelError::UnsupportedSetting { field: f, .. } if f == field),
            "{field}: {e:?}"
        );
    }
    let text = std::fs::read_to_string(golden_dir().join("tiny-gptj/config.json")).unwrap();
    let mut c: Value = serde_json::from_str(&text).unwrap();
    c["activation_function"] = "gelu".into();
    let e = ModelConfig::from_hf_json(&c.to_string()).unwrap_err();
    assert!(
        matches!(&e, ModelError::UnsupportedSetting { arch, .. } if arch == "gptj"),
        "{e:?}"
    );
    // A rotary width that does not fit the head.
    c["activation_function"] = "gelu_new".into();
    c["rotary_dim"] = 32.into();
    let e = ModelConfig::from_hf_json(&c.to_string()).unwrap_err();
    assert!(
        matches!(&e, ModelError::Config(m) if m.contains("rotary")),
        "{e:?}"
    );
}

#[test]
fn learned_positions_are_bounded() {
    let m = load("tiny-gpt2");
    let tok = m.tokenizer();
    let long: Vec<u32> = tok
        .encode(&"The capital of Japan is Tokyo. ".repeat(40))
        .unwrap();
    assert!(long.len() > 128);
    let b = Batch::new(std::slice::from_ref(&long), 0, Padding::Right, m.device()).unwrap();
    let e = m.last_logits(&b).unwrap_err();
    assert!(
        matches!(&e, ModelError::Request(s) if s.contains("128")),
        "{e:?}"
    );
    // 120 prompt tokens and 10 new ones: the last ones would need positions 128 and 129.
    let e = m.generate(&[long[..120].to_vec()], 10, &[]).unwrap_err();
    assert!(
        matches!(&e, ModelError::Request(s) if s.contains("128")),
        "{e:?}"
    );
    // 119 + 10 fits exactly (the tenth new token is never fed back).
    let g = m.generate(&[long[..119].to_vec()], 10, &[]).unwrap();
    assert_eq!(g[0].tokens.len(), 10);
}

#[test]
fn exports_refuse_gpt_models_naming_the_family() {
    for (name, family) in [("tiny-gpt2", "Gpt2"), ("tiny-gptj", "Gptj")] {
        let mut m = load(name);
        let d = m.w_out(0).unwrap().zeros_like();
        m.apply_delta(0, &d).unwrap();
        let tmp = tempfile::tempdir().unwrap();
        let opts = OutputOptions::default();
        let e = save_safetensors_dir(&m, &tmp.path().join("out"), None, &opts).unwrap_err();
        let msg = format!("{e}");
        assert!(
            matches!(&e, ModelError::Export(x) if matches!(**x, ExportError::Unsupported(_))),
            "{e:?}"
        );
        assert!(msg.contains(family), "{msg}");
        let meta = EditMetadata {
            method: "test".into(),
            facts: 0,
            patch_sha256: None,
        };
        let e = save_gguf(
            &m,
            &tmp.path().join("out.gguf"),
            EditedType::F32,
            &meta,
            &opts,
        )
        .unwrap_err();
        let msg = format!("{e}");
        assert!(
            matches!(&e, ModelError::Export(x) if matches!(**x, ExportError::Unsupported(_))),
            "{e:?}"
        );
        assert!(msg.contains(family), "{msg}");
        assert!(std::fs::read_dir(tmp.path()).unwrap().next().is_none());
    }
}

const TEXTS: [&str; 3] = [
    "The Eiffel Tower is located in the city of",
    "Toko Yasuda plays the",
    "The capital of Japan is",
];

fn max_diff(a: &Tensor, b: &Tensor) -> f64 {
    (a - b).abs().max().double_value(&[])
}

/// The optimizer's fast paths on GPT models: a pass resumed after a causal prefix (saved keys
/// and values, learned positions already in the saved hidden states) equals the full pass,
/// log-probs and gradients alike; and a right-padded batch whose plan reads only real tokens
/// (run packed) gives what each row gives alone.
#[test]
fn prefix_resume_and_packing_are_exact() {
    for name in ["tiny-gpt2", "tiny-gptj"] {
        let m = load(name);
        let ids: Vec<Vec<u32>> = TEXTS
            .iter()
            .map(|t| m.tokenizer().encode(t).unwrap())
            .collect();
        let d = m.config().d_model as i64;
        eamet_hooks::tch::manual_seed(5);
        let v0 = Tensor::randn([d], (Kind::Float, m.device())) * 0.3;
        for layer in [0usize, 1, 2] {
            let b = Batch::new(&ids, m.tokenizer().pad_id, Padding::Left, m.device()).unwrap();
            let s0 = b.width - 3;
            let at: Vec<(usize, usize)> = (0..3).map(|r| (r, b.width - 1)).collect();
            let subj: Vec<(usize, usize)> = (0..3).map(|r| (r, s0)).collect();
            let run = |start: Option<eamet_hooks::Start>| {
                let v = v0.copy().set_requires_grad(true);
                let out = m
                    .forward(
                        &b,
                        &Plan {
                            start,
                            edits: vec![Edit {
                                layer,
                                at: subj.clone(),
                                delta: v.shallow_clone(),
                            }],
                            logprobs: Some(LogProbs::Full { at: at.clone() }),
                            ..Default::default()
                        },
                    )
                    .unwrap();
                let lp = out.logprobs.unwrap();
                lp.sum(Kind::Float).backward();
                (lp.detach(), v.grad())
            };
            let (full, g_full) = run(None);
            let (part, g_part) = run(Some(m.prefix_state(&b, layer, s0).unwrap()));
            assert!(max_diff(&full, &part) < 1e-5, "{name} layer {layer}");
            assert!(
                max_diff(&g_full, &g_part) < 1e-4,
                "{name} layer {layer} grad"
            );
        }
        // Packed: keys and log-probs at real tokens of a right-padded batch.
        let b = Batch::new(&ids, m.tokenizer().pad_id, Padding::Right, m.device()).unwrap();
        let real: Vec<(usize, usize)> = ids
            .iter()
            .enumerate()
            .flat_map(|(r, s)| (0..s.len()).map(move |i| (r, i)))
            .collect();
        let plan = |at: Vec<(usize, usize)>| Plan {
            captures: vec![Capture {
                layer: 1,
                site: Site::MlpKey,
                at: Some(at.clone()),
            }],
            logprobs: Some(LogProbs::Full { at }),
            ..Default::default()
        };
        let together = m.forward(&b, &plan(real.clone())).unwrap();
        let mut row = 0i64;
        for (r, s) in ids.iter().enumerate() {
            let one = Batch::new(std::slice::from_ref(s), 0, Padding::Right, m.device()).unwrap();
            let alone = m
                .forward(&one, &plan((0..s.len()).map(|i| (0, i)).collect()))
                .unwrap();
            let n = s.len() as i64;
            let lp = together.logprobs.as_ref().unwrap().narrow(0, row, n);
            let key = together.captures[0].narrow(0, row, n);
            assert!(
                max_diff(&lp, alone.logprobs.as_ref().unwrap()) < 1e-5,
                "{name} row {r}"
            );
            assert!(
                max_diff(&key, &alone.captures[0]) < 1e-5,
                "{name} row {r} key"
            );
            row += n;
        }
    }
}
