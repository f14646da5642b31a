//! Metrics on the real SmolLM2-135M against PyTorch + transformers (golden file from
//! `tools/golden_metrics.py`) and against identities: strict success ⇔ greedy decoding emits
//! exactly the target first; an unedited model evaluated twice is unchanged.

use eamet_eval::data::{load, LoadOptions};
use eamet_eval::metrics::{
    evaluate, greedy, target_ids, teacher_forced, ContextPrefixes, EvalConfig, ScoreRequest,
};
use eamet_hooks::tch::Device;
use eamet_hooks::{EditableLm, LlamaModel};

fn model() -> Option<LlamaModel> {
    let path = eamet_hooks::paths::default_model()?;
    if !path.exists() {
        eprintln!(
            "skipped: {} missing; run `cargo xtask setup`",
            path.display()
        );
        return None;
    }
    Some(LlamaModel::from_gguf(&path, Device::Cpu).unwrap())
}

#[test]
fn teacher_forcing_matches_transformers_and_greedy_decoding() {
    let Some(m) = model() else { return };
    let golden: serde_json::Value =
        serde_json::from_str(include_str!("golden/metrics_smollm2.json")).unwrap();
    let cases = golden["cases"].as_array().unwrap();
    let reqs: Vec<ScoreRequest> = cases
        .iter()
        .map(|c| ScoreRequest {
            prompt: c["prompt"].as_str().unwrap().into(),
            target: c["target"].as_str().unwrap().into(),
        })
        .collect();
    // Batch size 5: rows of different lengths share padded batches.
    let scores = teacher_forced(&m, &reqs, 5).unwrap();
    let prompts: Vec<String> = reqs.iter().map(|r| r.prompt.clone()).collect();
    let gens = greedy(&m, &prompts, 8, 7).unwrap();
    let mut exact = 0;
    for ((c, s), g) in cases.iter().zip(&scores).zip(&gens) {
        let t: Vec<u32> = serde_json::from_value(c["target_ids"].clone()).unwrap();
        assert_eq!(
            target_ids(m.tokenizer(), c["target"].as_str().unwrap()).unwrap(),
            t
        );
        let want: Vec<f64> = serde_json::from_value(c["token_logprobs"].clone()).unwrap();
        assert_eq!(s.token_logprobs.len(), want.len());
        for (a, b) in s.token_logprobs.iter().zip(&want) {
            assert!((f64::from(*a) - b).abs() < 2e-3, "{c}: {a} vs {b}");
        }
        assert_eq!(s.exact, c["exact"].as_bool().unwrap(), "{c}");
        // Identity: strict success iff greedy decoding starts with exactly the target ids.
        assert_eq!(s.exact, g.ids.starts_with(&t), "{c}: greedy {:?}", g.ids);
        let hf_greedy: Vec<u32> = serde_json::from_value(c["greedy"].clone()).unwrap();
        assert_eq!(&g.ids[..hf_greedy.len().min(g.ids.len())], &hf_greedy[..]);
        exact += usize::from(s.exact);
    }
    // Both outcomes occur, so the comparison above is not vacuous.
    assert!(exact > 0 && exact < cases.len());
}

#[test]
fn unedited_model_twice_is_unchanged_and_strict_matches_the_edit_prompt() {
    let Some(m) = model() else { return };
    let fixture = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/fixtures/counterfact_rome_3.json"
    );
    let records = load(fixture, &LoadOptions::default())
        .unwrap()
        .into_edits()
        .unwrap();
    let docs = vec![
        "The history of the city begins in the early middle ages, when a small settlement grew around the river crossing and its market.".to_string();
        3
    ];
    let prefixes = ContextPrefixes::from_corpus(m.tokenizer(), &docs, &[5, 20], 3, 7).unwrap();
    // Deterministic for a seed.
    assert_eq!(
        prefixes,
        ContextPrefixes::from_corpus(m.tokenizer(), &docs, &[5, 20], 3, 7).unwrap()
    );
    assert!(ContextPrefixes::from_corpus(m.tokenizer(), &docs, &[5000], 3, 7).is_err());
    let cfg = EvalConfig {
        fluency_tokens: 16,
        fluency_prompts: 2,
        prefixed_len: Some(5),
        robustness_lens: vec![20],
        ..Default::default()
    };
    let pre = evaluate(&m, &records, &prefixes, &cfg, None).unwrap();
    let again = evaluate(&m, &records, &prefixes, &cfg, Some(&pre)).unwrap();
    assert!(records.iter().any(|r| !r.neighborhood.is_empty()));
    for ((a, b), r) in pre.iter().zip(&again).zip(&records) {
        assert_eq!(a.prompts, b.prompts);
        if !r.neighborhood.is_empty() {
            assert_eq!(b.metrics["neighbourhood.unchanged"], 1.0);
        }
        for (k, v) in &a.metrics {
            assert_eq!(b.metrics[k], *v, "{k}");
        }
    }
    for (r, e) in records.iter().zip(&pre) {
        // Strict efficacy on the edit prompt = teacher-forced exactness of target_new there.
        let s = teacher_forced(
            &m,
            &[ScoreRequest {
                prompt: r.rewrite.filled_prompt(),
                target: r.rewrite.target_new.clone(),
            }],
            1,
        )
        .unwrap();
        assert_eq!(
            e.metrics["strict.efficacy"],
            f64::from(u8::from(s[0].exact))
        );
        assert!(e.metrics.contains_key("strict.efficacy_prefixed"));
        assert!(e.metrics.contains_key("robust.efficacy_prefix20"));
        assert_eq!(
            e.metrics.contains_key("fluency"),
            !r.generation_prompts.is_empty()
        );
        if let Some(&f) = e.metrics.get("fluency") {
            assert!(f > 0.0);
        }
        assert_eq!(
            e.metrics.contains_key("strict.generalization"),
            !r.paraphrase_prompts.is_empty()
        );
        if let Some(&spec) = e.metrics.get("classic.specificity") {
            assert!((0.0..=1.0).contains(&spec));
        }
    }
    // Independently of teacher forcing: strict efficacy is 1 exactly when greedy decoding (the
    // KV-cache generation path) emits the target's tokens first. With the true objects as
    // targets the unedited model succeeds on some records, so both outcomes are exercised.
    let mut known = records.clone();
    for r in &mut known {
        if let Some(t) = r.rewrite.target_true.clone() {
            r.rewrite.target_new = t;
        }
    }
    let plain = EvalConfig {
        fluency_prompts: 0,
        prefixed_len: None,
        robustness_lens: vec![],
        ..Default::default()
    };
    let scored = evaluate(&m, &known, &ContextPrefixes::none(), &plain, None).unwrap();
    let mut outcomes = [0usize; 2];
    for (r, e) in known.iter().zip(&scored) {
        let target = target_ids(m.tokenizer(), &r.rewrite.target_new).unwrap();
        let g = greedy(&m, &[r.rewrite.filled_prompt()], target.len(), 1).unwrap();
        let emitted = g[0].ids == target;
        assert_eq!(
            e.metrics["strict.efficacy"],
            f64::from(u8::from(emitted)),
            "{}: greedy {:?} vs target {:?}",
            r.rewrite.subject,
            g[0].ids,
            target
        );
        outcomes[usize::from(emitted)] += 1;
    }
    assert!(
        outcomes[1] > 0,
        "no record where the model knows the object: {outcomes:?}"
    );

    // An empty target is a typed error naming the request.
    let err = teacher_forced(
        &m,
        &[ScoreRequest {
            prompt: "x".into(),
            target: String::new(),
        }],
        1,
    )
    .unwrap_err();
    assert!(err.to_string().contains("record 0"), "{err}");
}
