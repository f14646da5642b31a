//! End to end on Gemma 3 270M (when set-up fetched it: `cargo xtask setup --model gemma3-270m`;
//! skipped otherwise): a MEMIT edit with the Gemma presets (one layer, 4) makes greedy decoding
//! of each edit prompt produce the new object; the written residuals of this post-FFN-norm
//! model are measured in the space the residuals were optimized in (`Δ k`, the change of the
//! `W_out` output), so they point the way the optimized ones do; restoring gives the original
//! logits bit for bit.

use eamet::hooks::{Batch, EditableLm, LlamaModel, Padding};
use eamet::{EditHparams, EditOptions, Editor, Fact, Method};

fn greedy(m: &LlamaModel, text: &str, n: usize) -> Vec<u32> {
    let ids = m.tokenizer().encode(text).unwrap();
    m.generate(&[ids], n, &[]).unwrap().remove(0).tokens
}

fn cosine(a: ndarray::ArrayView1<f32>, b: ndarray::ArrayView1<f32>) -> f32 {
    a.dot(&b) / (a.dot(&a).sqrt() * b.dot(&b).sqrt())
}

#[test]
fn memit_edits_gemma3_at_one_layer() {
    let Some(path) = eamet::hooks::paths::gemma3_model().filter(|p| p.exists()) else {
        eprintln!(
            "skipped: the Gemma 3 270M GGUF is not set up (cargo xtask setup --model gemma3-270m)"
        );
        return;
    };
    let mut m = LlamaModel::from_gguf(&path, eamet::hooks::tch::Device::Cpu).unwrap();
    let facts = vec![
        Fact::new("Danielle Darrieux", "The mother tongue of {} is", "English"),
        Fact::new("Toko Yasuda", "{} plays the instrument called the", "piano"),
    ];
    let prompts: Vec<String> = facts
        .iter()
        .map(|f| f.prompt.replace("{}", &f.subject))
        .collect();
    let targets: Vec<Vec<u32>> = facts
        .iter()
        .map(|f| eamet::optim::target_ids(m.tokenizer(), &f.target_new).unwrap())
        .collect();
    for ((p, t), f) in prompts.iter().zip(&targets).zip(&facts) {
        assert_ne!(
            &greedy(&m, p, t.len()),
            t,
            "the unedited model already says {:?}",
            f.target_new
        );
    }
    let ids: Vec<Vec<u32>> = prompts
        .iter()
        .map(|p| m.tokenizer().encode(p).unwrap())
        .collect();
    let batch = Batch::new(&ids, m.tokenizer().pad_id, Padding::Right, m.device()).unwrap();
    let before = m.last_logits(&batch).unwrap();

    let mut hp = EditHparams::gemma3_270m(Method::Memit);
    // Statistics from 128 short documents the model writes (4096 tokens for d_ff = 2048):
    // enough for a well-posed solve, cheap enough for a test.
    hp.mom2_n_samples = 128;
    hp.mom2_max_tokens = 32;
    hp.prefixes.seeds.truncate(2);
    let cache = tempfile::tempdir().unwrap();
    let opts = EditOptions {
        cache_dir: Some(cache.path().to_path_buf()),
        ..Default::default()
    };
    let out = Editor::new(&mut m, Method::Memit, hp, opts)
        .unwrap()
        .edit(&facts)
        .unwrap();
    assert_eq!(out.deltas.len(), 1);
    assert_eq!(out.deltas[0].0, eamet::GEMMA3_270M_LAYER);
    assert_eq!(m.edited_layers(), [eamet::GEMMA3_270M_LAYER]);
    for (i, s) in out.residuals.stats.iter().enumerate() {
        let c = cosine(out.written.row(i), out.residuals.deltas.row(i));
        eprintln!(
            "fact {i}: p(target) {:.3} after {} steps, |delta| {:.2}, |written| {:.2}, cos(written, optimized) {c:.3}",
            s.p_target,
            s.steps,
            s.delta_norm,
            out.written.row(i).dot(&out.written.row(i)).sqrt()
        );
        // Written in the optimized space: the solve writes most of each residual's direction.
        // Measured as a block-output difference (after the post-FFN norm's gains), the two
        // vectors would not be comparable at all.
        assert!(
            c > 0.7,
            "fact {i}: written and optimized residuals differ: cos {c}"
        );
    }
    for ((p, t), f) in prompts.iter().zip(&targets).zip(&facts) {
        let got = greedy(&m, p, t.len());
        assert_eq!(
            &got,
            t,
            "{p:?} continues with {:?} after the edit, not {:?}",
            m.tokenizer().decode(&got).unwrap(),
            f.target_new
        );
    }
    m.restore();
    assert!(m.edited_layers().is_empty());
    assert!(m.last_logits(&batch).unwrap().equal(&before));
}
