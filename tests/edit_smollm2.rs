//! End to end on the real SmolLM2-135M: EAMET and MEMIT edits of 8 counterfactual facts the
//! model knows. After the edit, greedy decoding of ≥ 7/8 edit prompts starts with the new
//! object; 8 unrelated prompts keep their greedy continuation; restoring gives the original
//! logits exactly.

use eamet::hooks::tch::{Device, Tensor};
use eamet::hooks::{Batch, EditableLm, LlamaModel, Padding};
use eamet::{EditHparams, EditOptions, Editor, Fact, Method};

fn facts() -> Vec<Fact> {
    let text =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/facts/demo.jsonl")).unwrap();
    text.lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

const UNRELATED: [&str; 8] = [
    "The Statue of Liberty is located in the city of",
    "The capital of Italy is",
    "The Great Wall is located in the country of",
    "Big Ben is located in the city of",
    "The capital of France is",
    "The official language of Brazil is",
    "Water is made of hydrogen and",
    "The largest planet in the solar system is",
];

fn greedy(model: &LlamaModel, prompts: &[String]) -> Vec<String> {
    let tok = model.tokenizer();
    let ids: Vec<Vec<u32>> = prompts.iter().map(|p| tok.encode(p).unwrap()).collect();
    model
        .generate(&ids, 4, &[])
        .unwrap()
        .iter()
        .map(|g| tok.decode(&g.tokens).unwrap())
        .collect()
}

fn greedy_ids(model: &LlamaModel, prompts: &[String]) -> Vec<Vec<u32>> {
    let ids: Vec<Vec<u32>> = prompts
        .iter()
        .map(|p| model.tokenizer().encode(p).unwrap())
        .collect();
    model
        .generate(&ids, 4, &[])
        .unwrap()
        .into_iter()
        .map(|g| g.tokens)
        .collect()
}

fn last_logits(model: &LlamaModel, prompts: &[String]) -> Tensor {
    let ids: Vec<Vec<u32>> = prompts
        .iter()
        .map(|p| model.tokenizer().encode(p).unwrap())
        .collect();
    let b = Batch::new(&ids, model.tokenizer().pad_id, Padding::Right, Device::Cpu).unwrap();
    model.last_logits(&b).unwrap()
}

fn edit(method: Method) {
    let path = eamet::hooks::paths::default_model().unwrap();
    assert!(path.exists(), "run `cargo xtask setup` first");
    let mut model = LlamaModel::from_gguf(&path, Device::Cpu).unwrap();
    let facts: Vec<Fact> = facts().into_iter().take(8).collect();
    let edit_prompts: Vec<String> = facts
        .iter()
        .map(|f| f.prompt.replace("{}", &f.subject))
        .collect();
    let unrelated: Vec<String> = UNRELATED.iter().map(|s| s.to_string()).collect();
    let before = greedy(&model, &edit_prompts);
    for (f, b) in facts.iter().zip(&before) {
        assert!(
            b.starts_with(&format!(" {}", f.target_true.as_deref().unwrap())),
            "{b:?}"
        );
    }
    let unrelated_before = greedy_ids(&model, &unrelated);
    let logits_before = last_logits(&model, &edit_prompts);

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
    assert_eq!(model.edited_layers(), vec![3, 4]);

    let after = greedy(&model, &edit_prompts);
    let hits = facts
        .iter()
        .zip(&after)
        .filter(|(f, a)| a.starts_with(&format!(" {}", f.target_new)))
        .count();
    eprintln!("{method:?}: {hits}/8 edited: {after:?}");
    assert!(hits >= 7, "{method:?}: only {hits}/8 edits took: {after:?}");
    // Unrelated prompts: the answer (first two new tokens) is unchanged on all of them, and the
    // whole 4-token continuation on at least 7 of 8 (measured: 8/8 answers, 7/8 continuations
    // for both methods; "Big Ben ... New York.\n" became "... New York. He").
    let unrelated_after = greedy_ids(&model, &unrelated);
    let unrelated_before_ids = unrelated_before;
    let answers = unrelated_before_ids
        .iter()
        .zip(&unrelated_after)
        .filter(|(a, b)| a[..2] == b[..2])
        .count();
    let whole = unrelated_before_ids
        .iter()
        .zip(&unrelated_after)
        .filter(|(a, b)| a == b)
        .count();
    assert_eq!(
        answers, 8,
        "{method:?}: unrelated answers changed: {unrelated_before_ids:?} -> {unrelated_after:?}"
    );
    assert!(
        whole >= 7,
        "{method:?}: only {whole}/8 unrelated continuations unchanged"
    );

    model.restore();
    assert!(model.edited_layers().is_empty());
    let logits_restored = last_logits(&model, &edit_prompts);
    assert!(
        logits_before.equal(&logits_restored),
        "restore must give the original logits exactly"
    );
}

#[test]
fn eamet_edits_smollm2() {
    edit(Method::Eamet);
}

#[test]
fn memit_edits_smollm2() {
    edit(Method::Memit);
}
