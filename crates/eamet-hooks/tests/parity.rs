//! Parity with PyTorch + transformers (golden files from `tools/golden_models.py`):
//! the real SmolLM2 GGUF and tiny random-weight Llama (sharded, untied) and Qwen2 (q/k/v biases,
//! tied) checkpoints. Last-position logits within 1e-3 (f32), identical greedy completions,
//! identical token ids.

use eamet_hooks::tch::{Device, Tensor};
use eamet_hooks::{Batch, EditableLm, LlamaModel, Padding};
use serde_json::Value;
use std::path::PathBuf;
use std::sync::{Mutex, MutexGuard, OnceLock};

/// `EAMET_TEST_DEVICE` (default cpu): run these checks on a GPU when one is present.
fn dev() -> Device {
    eamet_hooks::compute::device_from_env("EAMET_TEST_DEVICE").unwrap()
}

fn golden_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/golden")
}

fn golden(name: &str) -> (Value, Vec<Vec<f32>>) {
    let dir = golden_dir();
    let doc: Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join(format!("{name}.json"))).unwrap())
            .unwrap();
    let vocab = doc["vocab"].as_u64().unwrap() as usize;
    let raw = std::fs::read(dir.join(format!("{name}.logits.f32"))).unwrap();
    let vals: Vec<f32> = raw
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect();
    (doc, vals.chunks(vocab).map(<[f32]>::to_vec).collect())
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

/// The model is loaded once per test binary; tensors are not `Sync`, hence the mutex.
fn smollm2() -> MutexGuard<'static, LlamaModel> {
    static M: OnceLock<Mutex<LlamaModel>> = OnceLock::new();
    M.get_or_init(|| {
        let path = eamet_hooks::paths::default_model().unwrap();
        assert!(
            path.exists(),
            "run `cargo xtask setup`: {} missing",
            path.display()
        );
        Mutex::new(LlamaModel::from_gguf(&path, dev()).unwrap())
    })
    .lock()
    .unwrap_or_else(|e| e.into_inner())
}

fn max_abs_diff(a: &Tensor, b: &[f32]) -> f64 {
    let b = Tensor::from_slice(b);
    (a.to_device(Device::Cpu) - b).abs().max().double_value(&[])
}

/// Logits one prompt at a time, and as right- and left-padded batches, against the golden.
fn check_logits(model: &LlamaModel, name: &str) {
    let (doc, want) = golden(name);
    let ids = ids_of(&doc["ids"]);
    for (i, p) in ids.iter().enumerate() {
        let b = Batch::new(std::slice::from_ref(p), 0, Padding::Right, model.device()).unwrap();
        let got = model.last_logits(&b).unwrap().get(0);
        let d = max_abs_diff(&got, &want[i]);
        assert!(d < 1e-3, "{name} prompt {i}: max |logit diff| {d}");
    }
    for padding in [Padding::Right, Padding::Left] {
        let b = Batch::new(&ids, model.tokenizer().pad_id, padding, model.device()).unwrap();
        let got = model.last_logits(&b).unwrap();
        for (i, w) in want.iter().enumerate() {
            let d = max_abs_diff(&got.get(i as i64), w);
            assert!(
                d < 1e-3,
                "{name} {padding:?}-padded batch row {i}: max |logit diff| {d}"
            );
        }
    }
}

fn check_greedy(model: &LlamaModel, name: &str) {
    let (doc, _) = golden(name);
    let ids = ids_of(&doc["ids"]);
    let want = ids_of(&doc["greedy"]);
    // One at a time and all together (left-padded, KV cache).
    for (i, p) in ids.iter().enumerate() {
        let g = model.generate(std::slice::from_ref(p), 10, &[]).unwrap();
        assert_eq!(g[0].tokens, want[i], "{name} prompt {i} alone");
    }
    let g = model.generate(&ids, 10, &[]).unwrap();
    for (i, w) in want.iter().enumerate() {
        assert_eq!(&g[i].tokens, w, "{name} prompt {i} in a batch");
        assert!(!g[i].stopped);
    }
}

#[test]
fn smollm2_logits_match_transformers() {
    check_logits(&smollm2(), "smollm2");
}

#[test]
fn smollm2_greedy_matches_transformers() {
    check_greedy(&smollm2(), "smollm2");
}

#[test]
fn smollm2_knows_the_eiffel_tower() {
    let m = smollm2();
    let tok = m.tokenizer();
    let ids = tok
        .encode("The Eiffel Tower is located in the city of")
        .unwrap();
    let g = m.generate(&[ids], 3, &[]).unwrap();
    let text = tok.decode(&g[0].tokens).unwrap();
    assert!(text.starts_with(" Paris"), "{text:?}");
}

#[test]
fn smollm2_tokenizer_matches_transformers() {
    let doc: Value = serde_json::from_str(
        &std::fs::read_to_string(golden_dir().join("smollm2_tokenizer.json")).unwrap(),
    )
    .unwrap();
    let m = smollm2();
    let tok = m.tokenizer();
    assert!(!tok.add_bos, "SmolLM2 adds no BOS");
    let want = ids_of(&doc["ids"]);
    for (i, text) in doc["texts"].as_array().unwrap().iter().enumerate() {
        let text = text.as_str().unwrap();
        let ids = tok.encode(text).unwrap();
        assert_eq!(ids, want[i], "text {i}: {text:?}");
        assert_eq!(
            tok.decode(&ids).unwrap(),
            doc["decoded"][i].as_str().unwrap()
        );
    }
}

fn tiny(name: &str) -> LlamaModel {
    LlamaModel::from_hf_dir(golden_dir().join(name), dev()).unwrap()
}

#[test]
fn tiny_llama_sharded_untied_matches_transformers() {
    let m = tiny("tiny-llama");
    assert!(!m.config().tied_embeddings);
    assert!(!m.config().qkv_bias);
    check_logits(&m, "tiny-llama");
    check_greedy(&m, "tiny-llama");
}

#[test]
fn tiny_qwen2_biases_tied_matches_transformers() {
    let m = tiny("tiny-qwen2");
    assert!(m.config().tied_embeddings);
    assert!(m.config().qkv_bias);
    check_logits(&m, "tiny-qwen2");
    check_greedy(&m, "tiny-qwen2");
}

#[test]
fn tiny_tokenizer_json_matches_transformers() {
    let m = tiny("tiny-llama");
    let (doc, _) = golden("tiny-llama");
    let want = ids_of(&doc["ids"]);
    for (i, p) in doc["prompts"].as_array().unwrap().iter().enumerate() {
        assert_eq!(m.tokenizer().encode(p.as_str().unwrap()).unwrap(), want[i]);
    }
}
