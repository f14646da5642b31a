//! The facade with a model computing in bf16 (tiny fixtures): key statistics and the model-written
//! corpus get their own cache entries (f32 ones keep their names), and a MEMIT edit through the
//! Editor lands and restores exactly, as in f32.

use eamet::hooks::tch::{Device, Tensor};
use eamet::hooks::{Batch, Dtype, EditableLm, LlamaModel, LoadOptions, Padding};
use eamet::stats::{load_or_collect, stats_path, stats_path_dtype, Corpus, StatsConfig};
use eamet::{EditHparams, EditOptions, Editor, Fact, Method};
use std::path::PathBuf;

fn load(name: &str, dtype: Dtype) -> LlamaModel {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("crates/eamet-hooks/tests/golden")
        .join(name);
    LlamaModel::from_hf_dir_with(dir, LoadOptions::default().with_dtype(dtype)).unwrap()
}

#[test]
fn statistics_of_another_dtype_are_another_cache_entry() {
    let (m32, m16) = (
        load("tiny-llama", Dtype::F32),
        load("tiny-llama", Dtype::Bf16),
    );
    let c = Corpus::from_docs(
        "test",
        vec![
            "The Eiffel Tower is located in the city of Paris.".into(),
            "Rome is the capital of Italy.".into(),
        ],
    );
    let cfg = StatsConfig {
        max_tokens: 16,
        batch_size: 2,
        progress: false,
    };
    let dir = tempfile::tempdir().unwrap();
    let sha = m32.base_sha256().unwrap();
    let (s32, cached) = load_or_collect(&m32, &c, &[1], &cfg, dir.path()).unwrap();
    assert_eq!(cached, [false]);
    // The f32 file keeps the name it always had.
    let f32_path = stats_path(dir.path(), &sha, &c, 1);
    assert!(f32_path.exists());
    assert_eq!(
        stats_path_dtype(dir.path(), &sha, &c, 1, Dtype::F32),
        f32_path
    );
    let (s16, cached) = load_or_collect(&m16, &c, &[1], &cfg, dir.path()).unwrap();
    assert_eq!(cached, [false], "bf16 statistics are not the f32 ones");
    let bf16_path = stats_path_dtype(dir.path(), &sha, &c, 1, Dtype::Bf16);
    assert!(bf16_path.exists(), "{}", bf16_path.display());
    assert!(bf16_path.to_string_lossy().ends_with("-bf16.safetensors"));
    let (_, cached) = load_or_collect(&m16, &c, &[1], &cfg, dir.path()).unwrap();
    assert_eq!(cached, [true]);
    // Close to the f32 statistics (keys reach the accumulators in f32), not equal.
    let (a, b) = (s32[0].sum_outer(), s16[0].sum_outer());
    let scale = a.iter().fold(0f64, |m, v| m.max(v.abs()));
    let diff = (&a - &b).iter().fold(0f64, |m, v| m.max(v.abs()));
    assert!(diff > 0.0 && diff < 0.05 * scale, "{diff} vs {scale}");
    // A file recording another dtype is refused, not used.
    std::fs::copy(&f32_path, &bf16_path).unwrap();
    let e = load_or_collect(&m16, &c, &[1], &cfg, dir.path()).unwrap_err();
    assert!(e.to_string().contains("dtype"), "{e}");
}

fn logits(m: &LlamaModel, texts: &[String]) -> Tensor {
    let ids: Vec<Vec<u32>> = texts
        .iter()
        .map(|t| m.tokenizer().encode(t).unwrap())
        .collect();
    let b = Batch::new(&ids, m.tokenizer().pad_id, Padding::Right, Device::Cpu).unwrap();
    m.last_logits(&b).unwrap()
}

/// As `edit_tiny_gpt.rs`, on the bf16 model: greedy decoding of the edit prompts gives the new
/// targets, the model-written corpus is cached under a bf16 name, restore is exact.
#[test]
fn memit_edits_tiny_gpt2_in_bf16() {
    let mut m = load("tiny-gpt2", Dtype::Bf16);
    let facts = vec![
        Fact::new("Eiffel Tower", "Tourists in Paris visit the {}", "capital"),
        Fact::new("Michael Jordan", "The sport of {}", "plays"),
    ];
    let prompts: Vec<String> = facts
        .iter()
        .map(|f| f.prompt.replace("{}", &f.subject))
        .collect();
    let before = logits(&m, &prompts);
    let mut hp = EditHparams::smollm2(Method::Memit);
    hp.layers = vec![0, 1];
    hp.mom2_n_samples = 16;
    hp.mom2_max_tokens = 24;
    hp.prefixes.seeds.truncate(2);
    hp.residual.clamp_norm_factor = 1.5;
    let cache = tempfile::tempdir().unwrap();
    let opts = EditOptions {
        cache_dir: Some(cache.path().to_path_buf()),
        ..Default::default()
    };
    let out = Editor::new(&mut m, Method::Memit, hp, opts)
        .unwrap()
        .edit(&facts)
        .unwrap();
    for s in &out.residuals.stats {
        eprintln!(
            "bf16 fact {}: p(target) {:.3} after {} steps",
            s.index, s.p_target, s.steps
        );
        assert!(s.p_target > 0.5, "{s:?}");
    }
    for (p, f) in prompts.iter().zip(&facts) {
        let t = eamet::optim::target_ids(m.tokenizer(), &f.target_new).unwrap();
        let ids = m.tokenizer().encode(p).unwrap();
        let got = m.generate(&[ids], t.len(), &[]).unwrap().remove(0).tokens;
        assert_eq!(got, t, "{p:?} after the bf16 edit");
    }
    let corpus: Vec<String> = std::fs::read_dir(cache.path().join("corpus"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert!(
        corpus.iter().all(|n| n.ends_with("-bf16.json")),
        "{corpus:?}"
    );
    m.restore();
    assert!(logits(&m, &prompts).equal(&before), "restore is exact");
}
