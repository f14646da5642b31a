//! Neighbourhood drift (KL and drawdown): a hand-computed case, "same model → exactly 0", and
//! an edited tiny Llama against an independent one-prompt-at-a-time computation.

use eamet_eval::data::{load_str, LoadOptions};
use eamet_eval::drift::{kl_rows, percentile, DriftReference, DriftSummary};
use eamet_eval::metrics::{evaluate, ContextPrefixes, EvalConfig, PromptKind};
use eamet_eval::report::{Report, WrittenFit};
use eamet_hooks::tch::{Device, Kind, Tensor};
use eamet_hooks::{Batch, EditableLm, LlamaModel, LogProbs, Padding, Plan};
use std::path::PathBuf;

fn tiny() -> LlamaModel {
    let dir =
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../eamet-hooks/tests/golden/tiny-llama");
    LlamaModel::from_hf_dir(dir, Device::Cpu).unwrap()
}

#[test]
fn kl_of_a_hand_computed_pair() {
    // p = (0.5, 0.5), q = (0.9, 0.1): 0.5 ln(0.5/0.9) + 0.5 ln(0.5/0.1) = 0.510825623765991.
    let p = Tensor::from_slice(&[0.5f64, 0.5]).log().view([1, 2]);
    let q = Tensor::from_slice(&[0.9f64, 0.1]).log().view([1, 2]);
    let kl = Vec::<f64>::try_from(kl_rows(&p, &q)).unwrap();
    assert!((kl[0] - 0.510_825_623_765_991).abs() < 1e-12, "{kl:?}");
    // KL(p‖p) = 0; a zero-probability entry of p contributes nothing even where q is 0 too.
    let z = Tensor::from_slice(&[1.0f64, 0.0]).log().view([1, 2]);
    let kl = Vec::<f64>::try_from(kl_rows(&z, &z)).unwrap();
    assert_eq!(kl, vec![0.0]);
    assert_eq!(percentile(&[3.0, 1.0, 2.0, 4.0], 0.95), 4.0);
    assert_eq!(percentile(&[3.0, 1.0, 2.0, 4.0], 0.5), 2.0);
    assert!(percentile(&[], 0.5).is_nan());
}

const RECORDS: &str = r#"
{"subject": "Paris", "prompt": "{} is the capital of", "target_new": "Italy", "target_true": "France", "neighbourhood": [{"prompt": "Rome is the capital of", "target": "Italy"}, {"prompt": "The river that runs through Berlin is the", "target": "Spree"}], "generation_prompts": ["Paris is"]}
{"subject": "Danielle Darrieux", "prompt": "The mother tongue of {} is", "target_new": "English", "target_true": "French", "neighbourhood": [{"prompt": "The mother tongue of Leonardo is", "target": "Italian"}], "generation_prompts": ["English is"]}
"#;

/// Per prompt, independently: the next-token log-probs at the prompt's end, and the
/// continuation's log-probs, each prompt alone in an unpadded batch.
fn alone(m: &LlamaModel, prompt: &[u32], cont: &[u32]) -> (Vec<f64>, Vec<f64>) {
    let mut ids = prompt.to_vec();
    if !cont.is_empty() {
        ids.extend_from_slice(&cont[..cont.len() - 1]);
    }
    let at: Vec<(usize, usize)> = (0..cont.len().max(1))
        .map(|k| (0, prompt.len() - 1 + k))
        .collect();
    let batch = Batch::new(&[ids], m.tokenizer().pad_id, Padding::Right, Device::Cpu).unwrap();
    let lp = m
        .forward(
            &batch,
            &Plan {
                logprobs: Some(LogProbs::Full { at }),
                ..Default::default()
            },
        )
        .unwrap()
        .logprobs
        .unwrap()
        .to_kind(Kind::Double);
    let next = Vec::<f64>::try_from(lp.get(0)).unwrap();
    let picked = cont
        .iter()
        .enumerate()
        .map(|(k, &t)| lp.double_value(&[k as i64, i64::from(t)]))
        .collect();
    (next, picked)
}

#[test]
fn same_model_gives_zero_and_an_edit_matches_an_independent_computation() {
    let mut m = tiny();
    let records = load_str("drift.jsonl", RECORDS, &LoadOptions::default())
        .unwrap()
        .into_edits()
        .unwrap();
    let cfg = EvalConfig {
        fluency_tokens: 0,
        robustness_lens: Vec::new(),
        prefixed_len: None,
        batch_size: 2,
        ..Default::default()
    };
    let none = ContextPrefixes::none();
    let pre = evaluate(&m, &records, &none, &cfg, None).unwrap();
    let reference = DriftReference::new(&m, &pre, cfg.lenient_tokens, 2).unwrap();
    assert_eq!(reference.len(), 3, "three neighbourhood prompts");

    // The unedited model against itself: exactly 0 (same batches, same bits).
    let same = reference.measure(&m).unwrap();
    assert!(same.iter().all(|d| d.kl == 0.0), "{same:?}");
    assert!(same.iter().all(|d| d.drawdown == Some(0.0)), "{same:?}");

    // A random edit of W_out at layer 0.
    let c = m.config().clone();
    let delta = Tensor::randn(
        [c.d_model as i64, c.d_ff as i64],
        (Kind::Float, Device::Cpu),
    ) * 0.5;
    m.apply_delta(0, &delta).unwrap();
    let drift = reference.measure(&m).unwrap();
    let mut post = evaluate(&m, &records, &none, &cfg, Some(&pre)).unwrap();
    reference.annotate(&mut post, &drift).unwrap();

    // Independently: the edited and a fresh unedited model, one prompt at a time, KL summed
    // by hand over the vocabulary.
    let fresh = tiny();
    let mut k = 0;
    let (mut kls, mut dds) = (Vec::new(), Vec::new());
    for (pre_rec, post_rec) in pre.iter().zip(&post) {
        for (p0, p1) in pre_rec.prompts.iter().zip(&post_rec.prompts) {
            if p0.kind != PromptKind::Neighbourhood {
                assert!(p1.kl.is_none());
                continue;
            }
            let prompt = m.tokenizer().encode(&p0.prompt).unwrap();
            let cont = p0.generation_ids.clone().unwrap();
            let (a, ca) = alone(&fresh, &prompt, &cont);
            let (b, cb) = alone(&m, &prompt, &cont);
            let kl: f64 = a.iter().zip(&b).map(|(x, y)| x.exp() * (x - y)).sum();
            let got = drift[k];
            assert!(kl > 1e-6, "the edit must move the distribution: {kl}");
            assert!(
                (got.kl - kl).abs() <= 1e-4 * kl.max(1e-3),
                "prompt {k}: {} vs {kl}",
                got.kl
            );
            assert_eq!(p1.kl, Some(got.kl));
            if cont.is_empty() {
                assert_eq!(got.drawdown, None);
            } else {
                let dd = ca.iter().zip(&cb).map(|(x, y)| x - y).sum::<f64>() / cont.len() as f64;
                let g = got.drawdown.unwrap();
                assert!((g - dd).abs() < 1e-4, "prompt {k}: drawdown {g} vs {dd}");
                dds.push(g);
            }
            kls.push(got.kl);
            k += 1;
        }
    }
    assert_eq!(k, 3);
    // Per-record means and the report's summary over prompts.
    let rec0 = post[0].metrics["neighbourhood.kl"];
    assert!((rec0 - (kls[0] + kls[1]) / 2.0).abs() < 1e-12);
    let s = DriftSummary::of(&post).unwrap();
    assert_eq!(s.prompts, 3);
    assert!((s.kl_mean - kls.iter().sum::<f64>() / 3.0).abs() < 1e-12);
    assert_eq!(s.kl_p95, kls.iter().copied().fold(f64::MIN, f64::max));
    assert_eq!(s.drawdown_prompts, dds.len());
    assert!(!dds.is_empty());
    let dd_mean = dds.iter().sum::<f64>() / dds.len() as f64;
    assert!((s.drawdown_mean.unwrap() - dd_mean).abs() < 1e-9);
    // No continuation at all: no drawdown (None, never NaN), and the report says so.
    let mut no_dd = post.clone();
    for r in &mut no_dd {
        for p in &mut r.prompts {
            p.drawdown = None;
        }
    }
    let s0 = DriftSummary::of(&no_dd).unwrap();
    assert_eq!(
        (s0.drawdown_prompts, s0.drawdown_mean, s0.drawdown_p95),
        (0, None, None)
    );
    let report = Report::new(
        eamet_eval::report::RunInfo {
            tool_version: "test".into(),
            created: "now".into(),
            command: None,
            model: "tiny".into(),
            model_sha256: "-".into(),
            dataset: "drift.jsonl".into(),
            dataset_format: "facts".into(),
            offset: 0,
            n: 2,
            method: "random".into(),
            hparams: serde_json::Value::Null,
            eval_config: cfg.clone(),
            seed: 0,
            schedule: "-".into(),
            environment: Default::default(),
            dtype: "f32".into(),
            device: "cpu".into(),
            prefix_docs_sha256: None,
            stats_corpus: None,
        },
        pre,
        post,
        Vec::new(),
    );
    assert_eq!(report.drift.as_ref(), Some(&s));
    let md = report.to_markdown();
    assert!(md.contains("Neighbourhood drift over 3 prompts"), "{md}");
    let dir = tempfile::tempdir().unwrap();
    let files = report.write(dir.path()).unwrap();
    assert!(files.iter().any(|f| f.ends_with("neighbourhood_kl.svg")));
    let back: Report =
        serde_json::from_str(&std::fs::read_to_string(dir.path().join("report.json")).unwrap())
            .unwrap();
    assert_eq!(back.drift, report.drift);

    // Solver diagnostics: listed in the markdown when present, kept through JSON, and absent
    // from reports written before they existed (serde default).
    assert!(!md.contains("Solves:"), "{md}");
    let mut solved = report.clone();
    solved.solves = vec!["layer 3: alphaedit (LU): condition ≈ 1.00e3, null space 7".into()];
    assert!(solved
        .to_markdown()
        .contains("Solves:\n\n- `layer 3: alphaedit (LU): condition ≈ 1.00e3, null space 7`\n"));
    let mut json = serde_json::to_value(&solved).unwrap();
    let again: Report = serde_json::from_value(json.clone()).unwrap();
    assert_eq!(again.solves, solved.solves);
    json.as_object_mut().unwrap().remove("solves");
    let old: Report = serde_json::from_value(json).unwrap();
    assert!(old.solves.is_empty());

    // How much of each residual was written: the means in the markdown, kept through JSON,
    // absent from older reports, a non-finite value refused.
    assert!(!md.contains("Written residuals"), "{md}");
    let fit = |norm, share, cosine| WrittenFit {
        norm,
        share,
        cosine,
    };
    let mut fitted = report.clone();
    fitted.written_fit = vec![fit(2.0, 0.25, 0.5), fit(4.0, 0.75, 1.0)];
    assert!(fitted.to_markdown().contains(
        "Written residuals, mean over 2 facts: share of δ written ⟨w, δ⟩/‖δ‖² = 0.500, cos(w, δ) = 0.750, ‖δ‖ = 3.00."
    ));
    let mut json = serde_json::to_value(&fitted).unwrap();
    assert_eq!(
        serde_json::from_value::<Report>(json.clone())
            .unwrap()
            .written_fit,
        fitted.written_fit
    );
    json.as_object_mut().unwrap().remove("written_fit");
    assert!(serde_json::from_value::<Report>(json)
        .unwrap()
        .written_fit
        .is_empty());
    fitted.written_fit[1].share = f64::NAN;
    let e = fitted
        .write(tempfile::tempdir().unwrap().path())
        .unwrap_err();
    assert!(
        e.to_string().contains("written residual share of fact 1"),
        "{e}"
    );

    // A NaN anywhere is a typed error naming the metric and the record; nothing is written.
    let mut broken = report.clone();
    broken.records[1]
        .1
        .metrics
        .insert("strict.efficacy".into(), f64::NAN);
    let empty = tempfile::tempdir().unwrap();
    let e = broken.write(empty.path()).unwrap_err();
    let text = e.to_string();
    assert!(
        matches!(e, eamet_eval::report::ReportError::NonFinite { .. })
            && text.contains("strict.efficacy")
            && text.contains("record 1")
            && text.contains("post-edit"),
        "{text}"
    );
    assert_eq!(std::fs::read_dir(empty.path()).unwrap().count(), 0);
    let mut broken = report.clone();
    broken.timings.push(("solve".into(), f64::INFINITY));
    assert!(broken
        .check_finite()
        .unwrap_err()
        .to_string()
        .contains("timing solve"));
    report.check_finite().unwrap();
}

#[test]
fn annotate_refuses_mismatched_results() {
    let m = tiny();
    let records = load_str("drift.jsonl", RECORDS, &LoadOptions::default())
        .unwrap()
        .into_edits()
        .unwrap();
    let cfg = EvalConfig {
        fluency_tokens: 0,
        robustness_lens: Vec::new(),
        prefixed_len: None,
        ..Default::default()
    };
    let none = ContextPrefixes::none();
    let pre = evaluate(&m, &records, &none, &cfg, None).unwrap();
    let reference = DriftReference::new(&m, &pre, 4, 8).unwrap();
    let drift = reference.measure(&m).unwrap();
    let mut post = pre.clone();
    assert!(reference.annotate(&mut post, &drift[..2]).is_err());
    let mut fewer = pre[..1].to_vec();
    assert!(reference.annotate(&mut fewer, &drift).is_err());
}

#[test]
fn the_extra_sample_is_seeded_sorted_and_complete_when_large() {
    use eamet_eval::metrics::extra_sample;
    let a = extra_sample(1000, Some(100), 7);
    assert_eq!(a, extra_sample(1000, Some(100), 7));
    assert_ne!(a, extra_sample(1000, Some(100), 8));
    assert_eq!(a.len(), 100);
    assert!(a.windows(2).all(|w| w[0] < w[1]) && a[99] < 1000);
    assert_eq!(extra_sample(50, Some(100), 7), (0..50).collect::<Vec<_>>());
    assert_eq!(extra_sample(50, None, 7), (0..50).collect::<Vec<_>>());
}

#[test]
fn fluency_runs_on_the_extra_sample_only() {
    let m = tiny();
    let records = load_str("drift.jsonl", RECORDS, &LoadOptions::default())
        .unwrap()
        .into_edits()
        .unwrap();
    let cfg = EvalConfig {
        fluency_tokens: 4,
        robustness_lens: Vec::new(),
        prefixed_len: None,
        extra_sample: Some(1),
        extra_seed: 3,
        ..Default::default()
    };
    let out = evaluate(&m, &records, &ContextPrefixes::none(), &cfg, None).unwrap();
    let with: Vec<usize> = (0..2)
        .filter(|&i| out[i].metrics.contains_key("fluency"))
        .collect();
    assert_eq!(with, eamet_eval::metrics::extra_sample(2, Some(1), 3));
    let all = evaluate(
        &m,
        &records,
        &ContextPrefixes::none(),
        &EvalConfig {
            extra_sample: None,
            ..cfg
        },
        None,
    )
    .unwrap();
    assert!(all.iter().all(|r| r.metrics.contains_key("fluency")));
}

#[test]
fn prefixed_prompts_follow_their_scope() {
    use eamet_eval::metrics::PrefixedScope;
    let m = tiny();
    let records = load_str("drift.jsonl", RECORDS, &LoadOptions::default())
        .unwrap()
        .into_edits()
        .unwrap();
    let docs = vec![
        "The history of the city begins in the early middle ages, when a small settlement grew around the river crossing and its market.".to_string();
        2
    ];
    let prefixes = ContextPrefixes::from_corpus(m.tokenizer(), &docs, &[5], 3, 1).unwrap();
    let cfg = EvalConfig {
        fluency_tokens: 0,
        robustness_lens: Vec::new(),
        prefixed_len: Some(5),
        extra_sample: Some(1),
        extra_seed: 5,
        ..Default::default()
    };
    // The default scope: only the sampled record is scored under prefixes, and the unprefixed
    // metrics do not change with the scope.
    assert_eq!(cfg.prefixed_scope, PrefixedScope::Sample);
    let sampled = evaluate(&m, &records, &prefixes, &cfg, None).unwrap();
    let with = |out: &[eamet_eval::metrics::RecordEval]| -> Vec<usize> {
        (0..out.len())
            .filter(|&i| out[i].metrics.contains_key("strict.efficacy_prefixed"))
            .collect()
    };
    assert_eq!(
        with(&sampled),
        eamet_eval::metrics::extra_sample(2, Some(1), 5)
    );
    let all_cfg = EvalConfig {
        prefixed_scope: PrefixedScope::All,
        ..cfg.clone()
    };
    let all = evaluate(&m, &records, &prefixes, &all_cfg, None).unwrap();
    assert_eq!(with(&all), vec![0, 1]);
    for (a, b) in sampled.iter().zip(&all) {
        assert_eq!(a.metrics["strict.efficacy"], b.metrics["strict.efficacy"]);
        assert_eq!(
            a.metrics["strict.specificity"],
            b.metrics["strict.specificity"]
        );
        // Other metrics agree up to float rounding: the prefixed prompts change the batch
        // shapes, and a GEMM's blocking (so its summation order) follows its shape.
        for (k, v) in &a.metrics {
            let w = *b.metrics.get(k).unwrap_or_else(|| panic!("{k} missing"));
            assert!(
                (v - w).abs() <= 1e-4 * v.abs().max(w.abs()) + 1e-9,
                "{k}: {v} vs {w}"
            );
        }
    }
    // Reports written before the setting existed meant every record.
    let mut v = serde_json::to_value(&cfg).unwrap();
    v.as_object_mut().unwrap().remove("prefixed_scope");
    let old: EvalConfig = serde_json::from_value(v).unwrap();
    assert_eq!(old.prefixed_scope, PrefixedScope::All);
}
