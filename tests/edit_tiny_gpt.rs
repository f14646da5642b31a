//! End to end on the tiny random-weight GPT-2 and GPT-J checkpoints: a MEMIT edit through the
//! Editor (key statistics from 16 documents the model writes itself) makes greedy decoding of
//! each edit prompt produce the new target's tokens, which the unedited model did not;
//! restoring gives the original logits bit for bit.

use eamet::hooks::tch::{Device, Tensor};
use eamet::hooks::{Batch, EditableLm, LlamaModel, Padding};
use eamet::{EditHparams, EditOptions, Editor, Fact, Method};
use std::path::PathBuf;

/// `EAMET_TEST_DEVICE` (default cpu): run these checks on a GPU when one is present.
fn dev() -> Device {
    eamet::hooks::compute::device_from_env("EAMET_TEST_DEVICE").unwrap()
}

fn load(name: &str) -> LlamaModel {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("crates/eamet-hooks/tests/golden")
        .join(name);
    LlamaModel::from_hf_dir(dir, dev()).unwrap()
}

/// Made-up facts with one-token targets (the tiny tokenizer has few merges) and the subject at
/// the end of the prompt: a random 3-layer model barely moves information between positions,
/// so the residual written at the subject's last token must predict the target there.
fn facts() -> Vec<Fact> {
    vec![
        Fact::new("Eiffel Tower", "Tourists in Paris visit the {}", "capital"),
        Fact::new("Michael Jordan", "The sport of {}", "plays"),
    ]
}

fn prompt(f: &Fact) -> String {
    f.prompt.replace("{}", &f.subject)
}

/// Greedy continuation of `n` tokens.
fn greedy(m: &LlamaModel, text: &str, n: usize) -> Vec<u32> {
    let ids = m.tokenizer().encode(text).unwrap();
    m.generate(&[ids], n, &[]).unwrap().remove(0).tokens
}

fn logits(m: &LlamaModel, texts: &[String]) -> Tensor {
    let ids: Vec<Vec<u32>> = texts
        .iter()
        .map(|t| m.tokenizer().encode(t).unwrap())
        .collect();
    let b = Batch::new(&ids, m.tokenizer().pad_id, Padding::Right, m.device()).unwrap();
    m.last_logits(&b).unwrap()
}

fn memit_lands(name: &str) {
    let mut m = load(name);
    let facts = facts();
    let prompts: Vec<String> = facts.iter().map(prompt).collect();
    let targets: Vec<Vec<u32>> = facts
        .iter()
        .map(|f| eamet::optim::target_ids(m.tokenizer(), &f.target_new).unwrap())
        .collect();
    for ((p, t), f) in prompts.iter().zip(&targets).zip(&facts) {
        assert_ne!(
            &greedy(&m, p, t.len()),
            t,
            "{name}: the random model already says {:?}",
            f.target_new
        );
    }
    let before = logits(&m, &prompts);
    // Layers 0 and 1 (l_R = 1): the last block must stay unedited to carry the residual on.
    let mut hp = EditHparams::smollm2(Method::Memit);
    hp.layers = vec![0, 1];
    hp.mom2_n_samples = 16;
    hp.mom2_max_tokens = 24;
    hp.prefixes.seeds.truncate(2);
    // A random model needs a residual larger than MEMIT's 0.75‖h‖ clamp to say anything.
    hp.residual.clamp_norm_factor = 1.5;
    let cache = tempfile::tempdir().unwrap();
    let opts = EditOptions {
        cache_dir: Some(cache.path().to_path_buf()),
        // corpus None: statistics from documents the model writes (seeded), cached in `cache`.
        ..Default::default()
    };
    let out = Editor::new(&mut m, Method::Memit, hp, opts)
        .unwrap()
        .edit(&facts)
        .unwrap();
    for s in &out.residuals.stats {
        eprintln!(
            "{name} fact {}: p(target) {:.3} after {} steps, |delta| {:.1} (|h| {:.1})",
            s.index, s.p_target, s.steps, s.delta_norm, s.h_norm
        );
        assert!(s.p_target > 0.5, "{name}: the residual does not fit: {s:?}");
    }
    assert_eq!(out.deltas.len(), 2);
    for (layer, delta) in &out.deltas {
        assert_eq!(
            delta.dim(),
            (m.config().d_model, m.config().d_ff),
            "{name} layer {layer}"
        );
    }
    assert_eq!(m.edited_layers(), [0, 1]);
    for ((p, t), f) in prompts.iter().zip(&targets).zip(&facts) {
        let got = greedy(&m, p, t.len());
        assert_eq!(
            &got,
            t,
            "{name}: {p:?} continues with {:?} after the edit, not {:?}",
            m.tokenizer().decode(&got).unwrap(),
            f.target_new
        );
    }
    m.restore();
    assert!(m.edited_layers().is_empty());
    assert!(
        logits(&m, &prompts).equal(&before),
        "{name}: restore gives the original logits"
    );
}

#[test]
fn memit_edits_tiny_gpt2() {
    memit_lands("tiny-gpt2");
}

#[test]
fn memit_edits_tiny_gptj() {
    memit_lands("tiny-gptj");
}
