//! End to end on the real SmolLM2-135M: EAMET and MEMIT edits of counterfactual facts the model
//! knows; after the edit, greedy decoding of each edit prompt starts with the new object.

use eamet::hooks::tch::Device;
use eamet::hooks::{EditableLm, LlamaModel};
use eamet::{EditHparams, EditOptions, Editor, Fact, Method};

fn facts() -> Vec<Fact> {
    let text =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/facts/demo.jsonl")).unwrap();
    text.lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

fn greedy_first(model: &LlamaModel, f: &Fact) -> String {
    let tok = model.tokenizer();
    let ids = tok.encode(&f.prompt.replace("{}", &f.subject)).unwrap();
    let g = model.generate(&[ids], 4, &[]).unwrap();
    tok.decode(&g[0].tokens).unwrap()
}

fn edit(method: Method) {
    let path = eamet::hooks::paths::default_model().unwrap();
    assert!(path.exists(), "run `cargo xtask setup` first");
    let mut model = LlamaModel::from_gguf(&path, Device::Cpu).unwrap();
    let facts: Vec<Fact> = facts().into_iter().take(4).collect();
    for f in &facts {
        let before = greedy_first(&model, f);
        assert!(
            before.starts_with(&format!(" {}", f.target_true.as_deref().unwrap())),
            "{before:?}"
        );
    }
    let mut hp = EditHparams::smollm2(method);
    hp.mom2_n_samples = 24;
    hp.mom2_max_tokens = 24;
    let cache = tempfile::tempdir().unwrap();
    let opts = EditOptions {
        cache_dir: Some(cache.path().to_path_buf()),
        ..Default::default()
    };
    let out = Editor::new(&mut model, method, hp, opts)
        .unwrap()
        .edit(&facts)
        .unwrap();
    eprintln!("{method:?} timings: {:?}", out.timings);
    assert_eq!(
        out.deltas.iter().map(|(l, _)| *l).collect::<Vec<_>>(),
        vec![3, 4]
    );
    assert_eq!(out.misalignment.len(), facts.len());
    assert!(out.misalignment_total.is_finite());
    let mut hits = 0;
    for f in &facts {
        let after = greedy_first(&model, f);
        if after.starts_with(&format!(" {}", f.target_new)) {
            hits += 1;
        }
        eprintln!(
            "{method:?}: {} -> {after:?}",
            f.prompt.replace("{}", &f.subject)
        );
    }
    assert!(hits >= 3, "{method:?}: only {hits}/4 edits took");
    assert_eq!(model.edited_layers(), vec![3, 4]);
}

#[test]
fn eamet_edits_smollm2() {
    edit(Method::Eamet);
}

#[test]
fn memit_edits_smollm2() {
    edit(Method::Memit);
}
