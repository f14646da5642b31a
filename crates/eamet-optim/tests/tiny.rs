//! Fast tests on the tiny Llama fixture: validation, shapes, positions against an independent
//! full forward, schedules, resume bit-identity, and the alignment terms against eamet-align.

use std::path::PathBuf;

use eamet_align::{AlignmentStream, TargetConfig};
use eamet_hooks::tch::{self, Device, Kind, Tensor};
use eamet_hooks::{Batch, Edit, EditableLm, LlamaModel, LogProbs, Padding, Plan};
use eamet_optim::*;
use ndarray::Array2;

/// `EAMET_TEST_DEVICE` (default cpu): run these checks on a GPU when one is present.
fn dev() -> Device {
    eamet_hooks::compute::device_from_env("EAMET_TEST_DEVICE").unwrap()
}

fn tiny() -> LlamaModel {
    let dir =
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../eamet-hooks/tests/golden/tiny-llama");
    LlamaModel::from_hf_dir(dir, dev()).unwrap()
}

fn facts() -> Vec<Fact> {
    let mk = |s: &str, p: &str, t: &str, c: &str| Fact {
        case_id: Some(c.into()),
        ..Fact::new(s, p, t)
    };
    vec![
        mk(
            "Eiffel Tower",
            "The {} is located in the city of",
            "Rome",
            "0",
        ),
        mk("Toko Yasuda", "{} plays the", "piano", "1"),
        mk("Japan", "The capital of {} is", "Berlin", "2"),
        mk("Paris", "{} is the capital of", "Germany", "3"),
    ]
}

fn prefixes() -> ContextPrefixes {
    ContextPrefixes::from_prefixes(&["The ball is", "He plays all day", "It is on"])
}

fn setup(m: &LlamaModel) -> (Vec<PreparedFact>, Array2<f32>) {
    let prepared = prepare_facts(m.tokenizer(), &facts(), &prefixes()).unwrap();
    let keys = compute_keys(m, &prepared, 1).unwrap();
    (prepared, keys)
}

fn hp(steps: usize) -> CheckedResidualHparams {
    ResidualHparams {
        v_num_grad_steps: steps,
        clamp_ks_factor: 10.0,
        early_stop_loss: 0.0,
        ..ResidualHparams::eamet()
    }
    .check()
    .unwrap()
}

#[test]
fn invalid_facts_are_typed_errors_naming_the_fact() {
    let m = tiny();
    let p = prefixes();
    let mut fs = facts();
    fs[1].prompt = "no placeholder".into();
    let e = prepare_facts(m.tokenizer(), &fs, &p).unwrap_err();
    assert!(
        matches!(&e, OptimError::Fact { index: 1, case_id: Some(c), problem: FactProblem::MissingPlaceholder(_) } if c == "1"),
        "{e}"
    );
    assert!(e.to_string().contains("fact 1 (case 1)"), "{e}");
    let mut fs = facts();
    fs[2].subject = "  ".into();
    assert!(matches!(
        prepare_facts(m.tokenizer(), &fs, &p).unwrap_err(),
        OptimError::Fact {
            index: 2,
            problem: FactProblem::EmptySubject,
            ..
        }
    ));
    let mut fs = facts();
    fs[0].target_new = "".into();
    assert!(matches!(
        validate_facts(&fs).unwrap_err(),
        OptimError::Fact {
            index: 0,
            problem: FactProblem::EmptyTarget,
            ..
        }
    ));
    let mut fs = facts();
    fs[3].case_id = Some("1".into());
    assert!(matches!(
        validate_facts(&fs).unwrap_err(),
        OptimError::DuplicateCaseId {
            first: 1,
            second: 3,
            ..
        }
    ));
    let mut fs = facts();
    fs[0].prompt = "The {} and {}".into();
    assert!(matches!(
        validate_facts(&fs).unwrap_err(),
        OptimError::Fact {
            problem: FactProblem::ExtraPlaceholder(_),
            ..
        }
    ));
    // A subject whose last character the tokenizer merges with what follows (punctuation, at
    // a word boundary) gets that merged token as its last token, whenever the tokenizer merges.
    let fs = vec![Fact::new(
        "Athletic F.C.",
        "{}'s headquarters are in",
        "Dublin",
    )];
    let prepared = prepare_facts(m.tokenizer(), &fs, &p).unwrap();
    let (ids, offsets) = m
        .tokenizer()
        .encode_with_offsets("Athletic F.C.'s headquarters are in")
        .unwrap();
    let at = prepared[0].subject_last[0];
    assert_eq!(prepared[0].key_prompts[0], ids);
    let (s, e) = offsets[at];
    assert!(
        s < 13 && e >= 13,
        "token {at} {:?} must hold the subject's last character",
        (s, e)
    );
    // " capital" is one token: a subject ending inside it has no last token.
    let fs = vec![Fact::new("cap", "The {}ital of Japan is", "Tokyo")];
    let e = prepare_facts(m.tokenizer(), &fs, &p).unwrap_err();
    assert!(
        matches!(
            &e,
            OptimError::Fact {
                index: 0,
                problem: FactProblem::SubjectBoundary { .. },
                ..
            }
        ),
        "{e}"
    );
}

#[test]
fn prepared_facts_point_at_the_subject_and_the_target() {
    let m = tiny();
    let tok = m.tokenizer();
    let prepared = prepare_facts(tok, &facts(), &prefixes()).unwrap();
    for f in &prepared {
        assert_eq!(f.templates(), 4);
        for t in 0..4 {
            // Decoding up to the subject-last token ends with the subject.
            let upto = tok.decode(&f.key_prompts[t][..=f.subject_last[t]]).unwrap();
            assert!(upto.ends_with(&f.fact.subject), "{upto:?}");
            let r = f.rewrite_prompt(t);
            assert_eq!(r.len(), f.key_prompts[t].len() + f.target_ids.len() - 1);
        }
        let tgt = tok.decode(&f.target_ids).unwrap();
        assert_eq!(tgt, format!(" {}", f.fact.target_new));
        let e = tok
            .decode(&f.essence_prompt[..=f.essence_subject_last])
            .unwrap();
        assert_eq!(e, f.fact.subject);
    }
    let keys = compute_keys(&m, &prepared, 2).unwrap();
    assert_eq!(keys.dim(), (4, m.config().d_ff));
    assert!(keys.iter().all(|x| x.is_finite()));
    assert!(compute_keys(&m, &prepared, 99).is_err());
}

#[test]
fn keys_are_half_bare_half_mean_of_prefixed() {
    let m = tiny();
    let (prepared, keys) = setup(&m);
    // Independent computation, one prompt at a time.
    let f = &prepared[1];
    let key_of = |t: usize| {
        let b = Batch::new(&[f.key_prompts[t].clone()], 0, Padding::Right, m.device()).unwrap();
        m.forward(
            &b,
            &Plan {
                captures: vec![eamet_hooks::Capture {
                    layer: 1,
                    site: eamet_hooks::Site::MlpKey,
                    at: Some(vec![(0, f.subject_last[t])]),
                }],
                ..Default::default()
            },
        )
        .unwrap()
        .captures[0]
            .view([-1])
            .to_device(Device::Cpu)
    };
    let rest = (key_of(1) + key_of(2) + key_of(3)) / 3.0;
    let want = (key_of(0) + rest) * 0.5;
    let got = Tensor::from_slice(keys.row(1).as_slice().unwrap());
    let diff = (want - got).abs().max().double_value(&[]);
    assert!(diff < 1e-5, "{diff}");
}

#[test]
fn optimizer_positions_match_an_independent_full_forward() {
    // The stats NLL comes from the left-padded, causal-prefix forward; recompute it with a
    // right-padded full forward per prompt with δ added at the subject's last token.
    let m = tiny();
    let (prepared, keys) = setup(&m);
    let h = ResidualHparams::memit().check().unwrap();
    let r = optimize_residuals(
        &m,
        &prepared[..2],
        keys.slice(ndarray::s![..2, ..]),
        1,
        &h,
        Schedule::Independent,
        &RunOptions::default(),
    )
    .unwrap();
    for (i, f) in prepared[..2].iter().enumerate() {
        let delta = Tensor::from_slice(r.deltas.row(i).as_slice().unwrap());
        let mut nlls = Vec::new();
        for t in 0..f.templates() {
            let ids = f.rewrite_prompt(t);
            let b = Batch::new(&[ids], 0, Padding::Right, m.device()).unwrap();
            let last = f.key_prompts[t].len() - 1;
            let at: Vec<(usize, usize)> = (0..f.target_ids.len()).map(|k| (0, last + k)).collect();
            let lp = m
                .forward(
                    &b,
                    &Plan {
                        edits: vec![Edit {
                            layer: 1,
                            at: vec![(0, f.subject_last[t])],
                            delta: delta.shallow_clone(),
                        }],
                        logprobs: Some(LogProbs::Tokens {
                            at,
                            tokens: f.target_ids.clone(),
                        }),
                        ..Default::default()
                    },
                )
                .unwrap()
                .logprobs
                .unwrap();
            nlls.push(-lp.mean(Kind::Double).double_value(&[]));
        }
        let want = nlls.iter().sum::<f64>() / nlls.len() as f64;
        let got = r.stats[i].final_nll;
        assert!((want - got).abs() < 1e-4, "fact {i}: {want} vs {got}");
        // And the optimization did something.
        assert!(r.stats[i].steps > 0);
        assert!(r.stats[i].delta_norm > 0.0);
        assert!(r.stats[i].delta_norm <= 0.75 * r.stats[i].h_norm * (1.0 + 1e-5));
    }
}

#[test]
fn nll_falls_and_shapes_are_right() {
    let m = tiny();
    let (prepared, keys) = setup(&m);
    let one = |steps| {
        let h = ResidualHparams {
            v_num_grad_steps: steps,
            ..ResidualHparams::memit()
        }
        .check()
        .unwrap();
        optimize_residuals(
            &m,
            &prepared[..1],
            keys.slice(ndarray::s![..1, ..]),
            1,
            &h,
            Schedule::Independent,
            &RunOptions::default(),
        )
        .unwrap()
    };
    let before = one(1);
    assert_eq!(before.stats[0].steps, 0);
    assert_eq!(
        before.deltas.row(0).iter().map(|x| x.abs()).sum::<f32>(),
        0.0
    );
    let after = one(15);
    assert_eq!(after.deltas.dim(), (1, m.config().d_model));
    assert_eq!(after.h.dim(), (1, m.config().d_model));
    assert_eq!(after.h, before.h);
    assert!(
        after.stats[0].final_nll < before.stats[0].final_nll - 0.2,
        "{} -> {}",
        before.stats[0].final_nll,
        after.stats[0].final_nll
    );
    assert!(after.stats[0].p_target > before.stats[0].p_target);
}

fn same_stats(a: &[FactStats], b: &[FactStats]) {
    assert_eq!(a.len(), b.len());
    for (x, y) in a.iter().zip(b) {
        let mut y = y.clone();
        y.seconds = x.seconds;
        assert_eq!(x, &y);
    }
}

#[test]
fn sequential_differs_from_independent_after_fact_zero() {
    let m = tiny();
    let (prepared, keys) = setup(&m);
    let h = hp(6);
    let run = |s| {
        optimize_residuals(&m, &prepared, keys.view(), 1, &h, s, &RunOptions::default()).unwrap()
    };
    let ind = run(Schedule::Independent);
    let seq = run(Schedule::Sequential);
    assert_eq!(
        ind.deltas.row(0),
        seq.deltas.row(0),
        "fact 0 has no neighbours"
    );
    for i in 1..4 {
        let diff = (&ind.deltas.row(i) - &seq.deltas.row(i))
            .mapv(f32::abs)
            .sum();
        assert!(diff > 1e-4, "fact {i} ignores the saved residuals ({diff})");
        let term = |name: &str| {
            seq.stats[i]
                .terms
                .iter()
                .find(|(n, _)| n == name)
                .unwrap()
                .1
        };
        assert!(term("align_mse") > 0.0);
        // A one-element neighbourhood distribution is always matched.
        assert!(if i == 1 {
            term("align_kl").abs() < 1e-12
        } else {
            term("align_kl") > 0.0
        });
        // Independent: the alignment terms are present but see no saved residuals.
        for (n, v) in &ind.stats[i].terms {
            assert!(!n.starts_with("align") || *v == 0.0, "{n} = {v}");
        }
    }
    assert_eq!(ind.h, seq.h);
    // Zero alignment weights make the schedules agree exactly.
    let h0 = ResidualHparams {
        cs_factor: 0.0,
        mse_factor: 0.0,
        ..hp(6).get().clone()
    }
    .check()
    .unwrap();
    let a = optimize_residuals(
        &m,
        &prepared,
        keys.view(),
        1,
        &h0,
        Schedule::Independent,
        &RunOptions::default(),
    )
    .unwrap();
    let b = optimize_residuals(
        &m,
        &prepared,
        keys.view(),
        1,
        &h0,
        Schedule::Sequential,
        &RunOptions::default(),
    )
    .unwrap();
    assert_eq!(a.deltas, b.deltas);
}

#[test]
fn resume_is_bit_identical_and_mismatches_are_refused() {
    let m = tiny();
    let (prepared, keys) = setup(&m);
    let h = ResidualHparams {
        essence_reference: EssenceReference::FirstStep,
        alignment_schedule: AlignmentSchedule::NllGated { threshold: 1.0 },
        ..hp(5).get().clone()
    }
    .check()
    .unwrap();
    let full = optimize_residuals(
        &m,
        &prepared,
        keys.view(),
        1,
        &h,
        Schedule::Sequential,
        &RunOptions::default(),
    )
    .unwrap();

    let dir = tempfile::tempdir().unwrap();
    let opts = |stop| RunOptions {
        run_dir: Some(dir.path()),
        stop_after: stop,
        ..Default::default()
    };
    let e = optimize_residuals(
        &m,
        &prepared,
        keys.view(),
        1,
        &h,
        Schedule::Sequential,
        &opts(Some(2)),
    )
    .unwrap_err();
    assert!(matches!(e, OptimError::Interrupted { finished: 2 }), "{e}");
    let resumed = optimize_residuals(
        &m,
        &prepared,
        keys.view(),
        1,
        &h,
        Schedule::Sequential,
        &opts(None),
    )
    .unwrap();
    assert_eq!(resumed.resumed, 2);
    assert_eq!(resumed.deltas, full.deltas, "resumed deltas differ");
    assert_eq!(resumed.h, full.h);
    same_stats(&resumed.stats, &full.stats);
    // Delete a later fact (as if killed before it was written): recomputed identically.
    std::fs::remove_file(dir.path().join("residuals/fact-00000003.bin")).unwrap();
    let again = optimize_residuals(
        &m,
        &prepared,
        keys.view(),
        1,
        &h,
        Schedule::Sequential,
        &opts(None),
    )
    .unwrap();
    assert_eq!(again.resumed, 3);
    assert_eq!(again.deltas, full.deltas);
    // Another configuration, another schedule or other facts: refused.
    let other = hp(6);
    let e = optimize_residuals(
        &m,
        &prepared,
        keys.view(),
        1,
        &other,
        Schedule::Sequential,
        &opts(None),
    )
    .unwrap_err();
    assert!(matches!(e, OptimError::RunMismatch { .. }), "{e}");
    let e = optimize_residuals(
        &m,
        &prepared,
        keys.view(),
        1,
        &h,
        Schedule::Independent,
        &opts(None),
    )
    .unwrap_err();
    assert!(matches!(e, OptimError::RunMismatch { .. }), "{e}");
    let e = optimize_residuals(
        &m,
        &prepared[..3],
        keys.slice(ndarray::s![..3, ..]),
        1,
        &h,
        Schedule::Sequential,
        &opts(None),
    )
    .unwrap_err();
    assert!(
        matches!(
            e,
            OptimError::RunMismatch {
                what: "fact list",
                ..
            }
        ),
        "{e}"
    );
    // A corrupt fact file is a typed error, not a panic.
    std::fs::write(
        dir.path().join("residuals/fact-00000001.bin"),
        b"EAMETRS1junk",
    )
    .unwrap();
    let e = optimize_residuals(
        &m,
        &prepared,
        keys.view(),
        1,
        &h,
        Schedule::Sequential,
        &opts(None),
    )
    .unwrap_err();
    assert!(matches!(e, OptimError::Format { .. }), "{e}");
}

#[test]
fn alignment_terms_and_gradients_match_eamet_align() {
    tch::manual_seed(7);
    let (n, dk, d) = (9usize, 12usize, 16usize);
    let keys = Tensor::randn([n as i64, dk as i64], (Kind::Double, Device::Cpu));
    let deltas = Tensor::randn([n as i64, d as i64], (Kind::Double, Device::Cpu));
    let to_arr = |t: &Tensor, r: usize, c: usize| {
        Array2::from_shape_vec(
            (r, c),
            Vec::<f64>::try_from(t.contiguous().view([-1])).unwrap(),
        )
        .unwrap()
    };
    let keys_a = to_arr(&keys, n, dk);
    let deltas_a = to_arr(&deltas, n, d);
    for top_m in [3usize, 50] {
        let cfg = TargetConfig {
            top_m: std::num::NonZeroUsize::new(top_m).unwrap(),
            tau: eamet_align::Temperature::new(0.3).unwrap(),
            ..TargetConfig::default()
        };
        let mut stream = AlignmentStream::new(keys_a.view(), d, cfg).unwrap();
        for i in 0..n - 1 {
            stream.push(deltas_a.row(i)).unwrap();
        }
        let i = n - 1;
        let targets = stream.targets(i).unwrap();
        let saved = Tensor::from_slice(stream.saved_residuals().as_slice().unwrap())
            .view([i as i64, d as i64]);
        let at = AlignmentTargets::new(&targets, &saved);
        let live = deltas_a.row(i).to_owned();
        let want = stream.loss_gradient(&targets, live.view()).unwrap();
        for (which, want_v, want_g) in [
            ("kl", want.loss.kl, &want.kl),
            ("mse", want.loss.mse, &want.mse),
        ] {
            let x = Tensor::from_slice(live.as_slice().unwrap()).set_requires_grad(true);
            let v = if which == "kl" { at.kl(&x) } else { at.mse(&x) };
            v.backward();
            let got_v = v.double_value(&[]);
            assert!(
                (got_v - want_v).abs() < 1e-10 * want_v.abs().max(1.0),
                "{which}: {got_v} vs {want_v}"
            );
            assert!(want_v > 0.0);
            let g = Vec::<f64>::try_from(x.grad()).unwrap();
            for (a, b) in g.iter().zip(want_g.iter()) {
                assert!(
                    (a - b).abs() < 1e-9 * want_g.iter().map(|x| x.abs()).fold(0.0, f64::max),
                    "{which} grad {a} vs {b}"
                );
            }
        }
        // The weighted terms scale.
        let x = Tensor::from_slice(live.as_slice().unwrap());
        let kl = AlignmentKl { factor: 2.0 };
        let mse = NeighbourMse { factor: 8.0 };
        let zero = Tensor::zeros([1], (Kind::Float, Device::Cpu));
        let fact = prepare_facts(tiny().tokenizer(), &facts()[..1], &prefixes())
            .unwrap()
            .remove(0);
        let ctx = StepContext {
            fact: &fact,
            step: 0,
            delta: &x,
            prompt_nll: &zero,
            essence_logprobs: &zero,
            essence_reference: &zero,
            h: &x,
            key_norm: 1.0,
            alignment: Some(&at),
        };
        assert!((kl.loss(&ctx).unwrap().double_value(&[]) - 2.0 * want.loss.kl).abs() < 1e-9);
        assert!((mse.loss(&ctx).unwrap().double_value(&[]) - 8.0 * want.loss.mse).abs() < 1e-9);
        assert_eq!(kl.group(), TermGroup::Alignment);
        // δ = 0: cosines 0 (q uniform), finite loss, no gradient from the alignment terms.
        let z = Tensor::zeros([d as i64], (Kind::Double, Device::Cpu)).set_requires_grad(true);
        let v = at.kl(&z) + at.mse(&z);
        assert!(v.double_value(&[]).is_finite() && v.double_value(&[]) > 0.0);
        assert!(
            !v.requires_grad() || {
                v.backward();
                z.grad().abs().sum(Kind::Double).double_value(&[]) == 0.0
            }
        );
    }
}

#[test]
fn prefixes_are_seeded_saved_and_checked() {
    let m = tiny();
    let spec = PrefixSpec::eamet();
    let a = ContextPrefixes::generate(&m, &spec).unwrap();
    let b = ContextPrefixes::generate(&m, &spec).unwrap();
    assert_eq!(a, b, "same seed, same prefixes");
    assert_eq!(a.templates.len(), 13);
    assert_eq!(a.templates[0], "{}");
    for (t, seed) in a.templates[1..].iter().zip(&spec.seeds) {
        assert!(t.ends_with(". {}") && t.starts_with(seed.as_str()), "{t:?}");
        assert_eq!(t.matches("{}").count(), 1);
    }
    let c = ContextPrefixes::generate(
        &m,
        &PrefixSpec {
            seed: 1,
            ..spec.clone()
        },
    )
    .unwrap();
    assert_ne!(a.templates, c.templates);
    let memit = ContextPrefixes::generate(&m, &PrefixSpec::memit()).unwrap();
    assert_eq!(memit.templates.len(), 6);

    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("prefixes.json");
    let loaded = ContextPrefixes::load_or_generate(&m, &spec, &path).unwrap();
    assert_eq!(loaded, a);
    assert_eq!(
        ContextPrefixes::load(&path, Some(&a.model_sha256)).unwrap(),
        a
    );
    let e = ContextPrefixes::load(&path, Some("beef")).unwrap_err();
    assert!(
        matches!(e, OptimError::RunMismatch { what: "model", .. }),
        "{e}"
    );
    // The generator is recorded; a file from before it was (ChaCha20-sampled) still loads,
    // as it was saved, with no generator named.
    assert_eq!(a.generator.as_deref(), Some("splitmix64"));
    let mut old_file: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    old_file.as_object_mut().unwrap().remove("generator");
    std::fs::write(&path, old_file.to_string()).unwrap();
    let old = ContextPrefixes::load(&path, Some(&a.model_sha256)).unwrap();
    assert_eq!(old.templates, a.templates);
    assert_eq!(old.generator, None);
    // The sampled prefixes work for preparation.
    prepare_facts(m.tokenizer(), &facts(), &a).unwrap();
}

#[test]
fn hparams_are_checked_and_read_from_reference_json() {
    let json = r#"{"layers": [3, 4], "fact_token": "subject_last", "v_num_grad_steps": 25,
        "v_lr": 0.04, "v_loss_layer": 31, "v_weight_decay": 0.5, "clamp_norm_factor": 1.5,
        "clamp_ks_factor": 2, "kl_factor": 0.0625, "cs_factor": 2, "mse_factor": 8, "tau": 0.07,
        "weight_decay_method": "fix_ks", "delta_init": "target_init", "mom2_update_weight": [4000, 4000]}"#;
    let h: ResidualHparams = serde_json::from_str(json).unwrap();
    assert_eq!(h.v_loss_layer, Some(31));
    assert_eq!(h.top_m, 50);
    h.check().unwrap();
    let bad = |h: ResidualHparams, field: &str| {
        let e = h.check().unwrap_err();
        assert!(
            matches!(&e, OptimError::Hparams { field: f, .. } if *f == field),
            "{e}"
        );
    };
    bad(
        ResidualHparams {
            v_lr: 0.0,
            ..h.clone()
        },
        "v_lr",
    );
    bad(
        ResidualHparams {
            tau: -1.0,
            ..h.clone()
        },
        "tau",
    );
    bad(
        ResidualHparams {
            v_num_grad_steps: 0,
            ..h.clone()
        },
        "v_num_grad_steps",
    );
    bad(
        ResidualHparams {
            cs_factor: f64::NAN,
            ..h.clone()
        },
        "cs_factor",
    );
    bad(
        ResidualHparams {
            top_m: 0,
            ..h.clone()
        },
        "top_m",
    );
    bad(
        ResidualHparams {
            alignment_schedule: AlignmentSchedule::NllGated { threshold: 0.0 },
            ..h.clone()
        },
        "alignment_schedule",
    );
    let g: ResidualHparams =
        serde_json::from_str(r#"{"alignment_schedule": {"kind": "nll_gated", "threshold": 0.5}}"#)
            .unwrap();
    assert_eq!(
        g.alignment_schedule,
        AlignmentSchedule::NllGated { threshold: 0.5 }
    );
    // v_loss_layer must be the last layer of the model at run time.
    let m = tiny();
    let (prepared, keys) = setup(&m);
    let e = optimize_residuals(
        &m,
        &prepared,
        keys.view(),
        1,
        &h.check().unwrap(),
        Schedule::Independent,
        &RunOptions::default(),
    )
    .unwrap_err();
    assert!(e.to_string().contains("v_loss_layer"), "{e}");
    let e = optimize_residuals(
        &m,
        &prepared,
        keys.slice(ndarray::s![..2, ..]),
        1,
        &hp(2),
        Schedule::Independent,
        &RunOptions::default(),
    )
    .unwrap_err();
    assert!(matches!(e, OptimError::Input(_)), "{e}");
}

fn run_schedule(
    m: &LlamaModel,
    prepared: &[PreparedFact],
    keys: &Array2<f32>,
    h: &CheckedResidualHparams,
    schedule: Schedule,
) -> Residuals {
    optimize_residuals(
        m,
        prepared,
        keys.view(),
        1,
        h,
        schedule,
        &RunOptions::default(),
    )
    .unwrap()
}

/// Per fact: same step count and stop reason, `δ` within `tol` (max abs, relative to `‖δ‖`).
fn close_per_fact(a: &Residuals, b: &Residuals, tol: f32) {
    for i in 0..a.stats.len() {
        assert_eq!(a.stats[i].steps, b.stats[i].steps, "fact {i}: steps");
        assert_eq!(
            a.stats[i].early_stopped, b.stats[i].early_stopped,
            "fact {i}: early stop"
        );
        let diff = (&a.deltas.row(i) - &b.deltas.row(i))
            .mapv(f32::abs)
            .fold(0.0f32, |x, &y| x.max(y));
        let scale = a.stats[i].delta_norm as f32;
        assert!(diff <= tol * scale, "fact {i}: |Δδ| {diff} vs ‖δ‖ {scale}");
        assert!(
            (a.stats[i].final_nll - b.stats[i].final_nll).abs()
                < 1e-3 * a.stats[i].final_nll.abs().max(1.0)
        );
    }
    assert_eq!(a.h, b.h, "h_i is computed per fact, the same way");
}

/// Hyperparameters under which the tiny facts stop at different steps, so that continuous
/// batching really swaps facts in and out.
fn staggered() -> CheckedResidualHparams {
    ResidualHparams {
        v_num_grad_steps: 12,
        early_stop_loss: 6.5,
        ..ResidualHparams::memit()
    }
    .check()
    .unwrap()
}

#[test]
fn batched_equals_one_at_a_time_per_fact() {
    let m = tiny();
    let (prepared, keys) = setup(&m);
    let h = staggered();
    let one = run_schedule(&m, &prepared, &keys, &h, Schedule::Independent);
    let steps: Vec<usize> = one.stats.iter().map(|s| s.steps).collect();
    assert!(
        steps.iter().any(|&s| s != steps[0]),
        "the facts must stop at different steps for this test to mean something: {steps:?}"
    );
    // Work counts: one pass per iteration (updates + the final evaluation) one at a time; the
    // same per-fact work in fewer passes when batched.
    let w = one.work;
    assert_eq!(w.first_layer, 1);
    let iterations: usize = steps.iter().map(|s| s + 1).sum();
    assert_eq!(w.passes, iterations as u64);
    assert!(w.forward_tokens > 0 && w.backward_tokens < w.forward_tokens);
    assert!(w.backward_logprob_rows < w.logprob_rows);
    for batch in [2, 3, 4, 9] {
        let b = run_schedule(&m, &prepared, &keys, &h, Schedule::Batched { batch });
        close_per_fact(&one, &b, 1e-4);
        assert_eq!(b.work.forward_tokens, w.forward_tokens, "batch {batch}");
        assert_eq!(b.work.logprob_rows, w.logprob_rows, "batch {batch}");
        assert!(b.work.passes < w.passes, "batch {batch}");
    }
    assert_eq!(
        run_schedule(&m, &prepared, &keys, &h, Schedule::Batched { batch: 1 }).deltas,
        one.deltas,
        "Batched {{ batch: 1 }} is Independent"
    );
    // An aligned schedule with no alignment terms is an independent one, blocked or not.
    let no_align = ResidualHparams {
        cs_factor: 0.0,
        mse_factor: 0.0,
        ..h.get().clone()
    }
    .check()
    .unwrap();
    let blocked = run_schedule(
        &m,
        &prepared,
        &keys,
        &no_align,
        Schedule::Blocked { block: 3 },
    );
    close_per_fact(&one, &blocked, 1e-4);
}

#[test]
fn blocked_with_one_fact_per_block_is_sequential() {
    let m = tiny();
    let (prepared, keys) = setup(&m);
    let h = hp(6);
    let seq = run_schedule(&m, &prepared, &keys, &h, Schedule::Sequential);
    let b1 = run_schedule(&m, &prepared, &keys, &h, Schedule::Blocked { block: 1 });
    assert_eq!(seq.deltas, b1.deltas);
    same_stats(&seq.stats, &b1.stats);
}

/// The alignment terms a blocked fact reports at its final step equal eamet-align's loss
/// against the final residuals of the facts before it (facts of a block step in lockstep and
/// all run every step here, so at the last evaluation every earlier δ_j is final).
#[test]
fn blocked_facts_align_to_earlier_blocks_and_to_their_block_mates() {
    let m = tiny();
    let (prepared, keys) = setup(&m);
    let h = hp(6);
    let hv = h.get();
    for block in [2usize, 4] {
        let r = run_schedule(&m, &prepared, &keys, &h, Schedule::Blocked { block });
        let keys64 = keys.mapv(f64::from);
        let cfg = TargetConfig {
            tau: h.tau(),
            top_m: std::num::NonZeroUsize::new(hv.top_m).unwrap(),
            zero_vectors: eamet_align::ZeroVectors::CosineZero,
        };
        let mut stream = AlignmentStream::new(keys64.view(), r.deltas.ncols(), cfg).unwrap();
        for i in 0..r.stats.len() {
            assert_eq!(r.stats[i].steps, 5, "every fact runs all updates here");
            let targets = stream.targets(i).unwrap();
            let delta = r.deltas.row(i).mapv(f64::from);
            let s_r = stream.residual_cosines(i, delta.view()).unwrap();
            let want = targets.loss(&s_r).unwrap();
            let term = |name: &str| r.stats[i].terms.iter().find(|(n, _)| n == name).unwrap().1;
            let (kl, mse) = (term("align_kl"), term("align_mse"));
            assert!(
                (kl - hv.cs_factor * want.kl).abs() < 1e-5 * kl.abs().max(1e-3),
                "block {block}, fact {i}: kl {kl} vs {}",
                hv.cs_factor * want.kl
            );
            assert!(
                (mse - hv.mse_factor * want.mse).abs() < 1e-5 * mse.abs().max(1e-3),
                "block {block}, fact {i}: mse {mse} vs {}",
                hv.mse_factor * want.mse
            );
            if i > 0 {
                assert!(mse > 0.0, "fact {i} sees its predecessors");
            }
            stream.push(r.deltas.row(i).mapv(f64::from).view()).unwrap();
        }
        // Fact 0 has no neighbours: the same as on its own.
        let one = run_schedule(
            &m,
            &prepared[..1],
            &keys.slice(ndarray::s![..1, ..]).to_owned(),
            &h,
            Schedule::Independent,
        );
        let diff = (&one.deltas.row(0) - &r.deltas.row(0)).mapv(f32::abs).sum();
        assert!(diff < 1e-3, "fact 0: {diff}");
    }
}

#[test]
fn blocked_resume_replays_unfinished_blocks_bit_identically() {
    let m = tiny();
    let (prepared, keys) = setup(&m);
    let h = hp(5);
    let schedule = Schedule::Blocked { block: 2 };
    let full = run_schedule(&m, &prepared, &keys, &h, schedule);
    let dir = tempfile::tempdir().unwrap();
    let run = |stop| {
        optimize_residuals(
            &m,
            &prepared,
            keys.view(),
            1,
            &h,
            schedule,
            &RunOptions {
                run_dir: Some(dir.path()),
                stop_after: stop,
                ..Default::default()
            },
        )
    };
    // Stops at the first block boundary at or after 1 finished fact.
    let e = run(Some(1)).unwrap_err();
    assert!(matches!(e, OptimError::Interrupted { finished: 2 }), "{e}");
    let resumed = run(None).unwrap();
    assert_eq!(resumed.resumed, 2);
    assert_eq!(resumed.deltas, full.deltas);
    same_stats(&resumed.stats, &full.stats);
    // Killed while block 1 was being written: fact 2 saved, fact 3 not. The block is replayed.
    std::fs::remove_file(dir.path().join("residuals/fact-00000003.bin")).unwrap();
    let again = run(None).unwrap();
    assert_eq!(again.resumed, 2, "only the complete block is reused");
    assert_eq!(again.deltas, full.deltas);
    same_stats(&again.stats, &full.stats);
    // The block size is part of the run.
    let e = optimize_residuals(
        &m,
        &prepared,
        keys.view(),
        1,
        &h,
        Schedule::Blocked { block: 3 },
        &RunOptions {
            run_dir: Some(dir.path()),
            ..Default::default()
        },
    )
    .unwrap_err();
    assert!(matches!(e, OptimError::RunMismatch { .. }), "{e}");
    // Sequential and Blocked { block: 1 } are the same run.
    let dir1 = tempfile::tempdir().unwrap();
    let opts = RunOptions {
        run_dir: Some(dir1.path()),
        ..Default::default()
    };
    optimize_residuals(
        &m,
        &prepared,
        keys.view(),
        1,
        &h,
        Schedule::Sequential,
        &opts,
    )
    .unwrap();
    let r = optimize_residuals(
        &m,
        &prepared,
        keys.view(),
        1,
        &h,
        Schedule::Blocked { block: 1 },
        &opts,
    )
    .unwrap();
    assert_eq!(r.resumed, 4);
}

#[test]
fn batched_resume_keeps_finished_facts() {
    let m = tiny();
    let (prepared, keys) = setup(&m);
    let h = staggered();
    let schedule = Schedule::Batched { batch: 2 };
    let full = run_schedule(&m, &prepared, &keys, &h, schedule);
    let dir = tempfile::tempdir().unwrap();
    let run = |stop| {
        optimize_residuals(
            &m,
            &prepared,
            keys.view(),
            1,
            &h,
            schedule,
            &RunOptions {
                run_dir: Some(dir.path()),
                stop_after: stop,
                ..Default::default()
            },
        )
    };
    let e = run(Some(1)).unwrap_err();
    let OptimError::Interrupted { finished } = e else {
        panic!("{e}")
    };
    assert!((1..4).contains(&finished));
    let resumed = run(None).unwrap();
    assert_eq!(resumed.resumed, finished);
    close_per_fact(&full, &resumed, 1e-4);
}

#[test]
fn zero_batch_or_block_is_an_input_error() {
    let m = tiny();
    let (prepared, keys) = setup(&m);
    for s in [
        Schedule::Batched { batch: 0 },
        Schedule::Blocked { block: 0 },
    ] {
        let e = optimize_residuals(
            &m,
            &prepared,
            keys.view(),
            1,
            &hp(2),
            s,
            &RunOptions::default(),
        )
        .unwrap_err();
        assert!(
            matches!(&e, OptimError::Input(m) if m.contains("at least 1")),
            "{e}"
        );
    }
    assert_eq!(Schedule::with_width(true, 1), Schedule::Sequential);
    assert_eq!(
        Schedule::with_width(false, 8),
        Schedule::Batched { batch: 8 }
    );
    assert_eq!(
        Schedule::Independent.normalized(),
        Schedule::Batched { batch: 1 }
    );
}

#[test]
fn split_alignment_targets_equal_one_saved_set() {
    // Rows 0..s saved and rows s..i given as the block's current residuals: the same loss and
    // gradient as all i rows saved.
    tch::manual_seed(3);
    let (n, dk, d) = (7usize, 10usize, 12usize);
    let keys = Array2::from_shape_fn((n, dk), |(i, j)| ((i * 7 + j * 3) % 11) as f64 - 5.0);
    let deltas = Array2::from_shape_fn((n, d), |(i, j)| ((i * 5 + j * 2) % 13) as f64 - 6.0);
    let mut stream = AlignmentStream::new(keys.view(), d, TargetConfig::default()).unwrap();
    for i in 0..n - 1 {
        stream.push(deltas.row(i)).unwrap();
    }
    let i = n - 1;
    let targets = stream.targets(i).unwrap();
    let saved =
        Tensor::from_slice(stream.saved_residuals().as_slice().unwrap()).view([i as i64, d as i64]);
    let whole = AlignmentTargets::new(&targets, &saved);
    for s in 0..i {
        let mut split = AlignmentTargets::new(&targets, &saved.narrow(0, 0, s as i64));
        split.block_unit = Some(saved.narrow(0, s as i64, (i - s) as i64));
        let x = Tensor::from_slice(deltas.row(i).as_slice().unwrap());
        for (a, b) in [(whole.kl(&x), split.kl(&x)), (whole.mse(&x), split.mse(&x))] {
            assert!(
                (a.double_value(&[]) - b.double_value(&[])).abs() < 1e-12,
                "s = {s}"
            );
        }
    }
}

#[test]
fn early_stop_on_the_nll_stops_a_fact_where_its_fit_crosses_the_threshold() {
    let m = tiny();
    let (prepared, keys) = setup(&m);
    let run = |steps: usize, nll: Option<f64>| {
        let h = ResidualHparams {
            v_num_grad_steps: steps,
            early_stop_loss: 0.0,
            early_stop_nll: nll,
            ..ResidualHparams::memit()
        }
        .check()
        .unwrap();
        run_schedule(&m, &prepared, &keys, &h, Schedule::Independent)
    };
    let full = run(12, None);
    assert!(full.stats.iter().all(|s| s.steps == 11 && !s.early_stopped));
    // A threshold fact 0 crosses between its first and its last iteration.
    let start = run(1, None).stats[0].final_nll;
    let t = 0.5 * (start + full.stats[0].final_nll);
    assert!(full.stats[0].final_nll < t && t < start, "{start} -> {t}");
    let stopped = run(12, Some(t));
    let s = &stopped.stats[0];
    assert!(s.early_stopped && (1..11).contains(&s.steps), "{s:?}");
    assert!(s.final_nll < t, "{} >= {t}", s.final_nll);
    // It is the uninterrupted trajectory cut at that step: the same δ as a run with exactly
    // that many updates, and the iteration before it was still above the threshold.
    let cut = run(s.steps + 1, None);
    assert_eq!(stopped.deltas.row(0), cut.deltas.row(0));
    assert_eq!(s.final_nll, cut.stats[0].final_nll);
    assert!(run(s.steps, None).stats[0].final_nll >= t);
    // Invalid thresholds are refused, naming the field.
    for bad in [0.0, -1.0, f64::NAN] {
        let e = ResidualHparams {
            early_stop_nll: Some(bad),
            ..ResidualHparams::eamet()
        }
        .check()
        .unwrap_err()
        .to_string();
        assert!(e.contains("early_stop_nll"), "{e}");
    }
}

/// The first `n` facts (and their keys) optimized with `dir` as the run directory.
fn in_dir(
    m: &LlamaModel,
    (prepared, keys): (&[PreparedFact], &Array2<f32>),
    n: usize,
    schedule: Schedule,
    dir: &std::path::Path,
) -> Result<Residuals, OptimError> {
    optimize_residuals(
        m,
        &prepared[..n],
        keys.slice(ndarray::s![..n, ..]),
        1,
        &hp(5),
        schedule,
        &RunOptions {
            run_dir: Some(dir),
            ..Default::default()
        },
    )
}

/// A run directory made for the first facts of a list serves the whole list: the saved facts
/// are reused and the rest optimized, with the residuals of a run that never stopped. A list
/// whose first facts or keys differ is refused, and the manifest records the growth.
#[test]
fn a_run_directory_grows_with_its_fact_list() {
    let m = tiny();
    let (prepared, keys) = setup(&m);
    let all = prepared.len();
    for (schedule, first, reused) in [
        (Schedule::Sequential, 2, 2),
        // Facts 0..3 were blocks [0, 1] and [2]: the partial block is optimized again whole.
        (Schedule::Blocked { block: 2 }, 3, 2),
        (Schedule::Independent, 3, 3),
    ] {
        let full = run_schedule(&m, &prepared, &keys, &hp(5), schedule);
        let dir = tempfile::tempdir().unwrap();
        let run = |n| in_dir(&m, (&prepared, &keys), n, schedule, dir.path());
        assert_eq!(run(first).unwrap().resumed, 0);
        let grown = run(all).unwrap();
        assert_eq!(grown.resumed, reused, "{schedule:?}");
        assert_eq!(grown.deltas, full.deltas, "{schedule:?}");
        assert_eq!(grown.h, full.h, "{schedule:?}");
        same_stats(&grown.stats, &full.stats);
        let manifest: serde_json::Value = serde_json::from_str(
            &std::fs::read_to_string(dir.path().join("residuals/manifest.json")).unwrap(),
        )
        .unwrap();
        assert_eq!(manifest["n_facts"], all);
        assert_eq!(manifest["grown_from"], serde_json::json!([first]));
        // Now a run of every fact: a shorter list is another run.
        let e = run(first).unwrap_err();
        assert!(
            matches!(
                e,
                OptimError::RunMismatch {
                    what: "fact list",
                    ..
                }
            ),
            "{e}"
        );
    }

    // A longer list whose first facts are not the recorded ones, or the same first facts
    // recorded with other keys (another key layer, say): refused, nothing rewritten.
    let order = [1, 0, 2, 3];
    let swapped: Vec<PreparedFact> = order
        .iter()
        .enumerate()
        .map(|(pos, &i)| PreparedFact {
            index: pos,
            ..prepared[i].clone()
        })
        .collect();
    let mut other_keys = keys.clone();
    other_keys[[0, 0]] += 1.0;
    let recorded = [
        (&swapped, keys.select(ndarray::Axis(0), &order), "fact list"),
        (&prepared, other_keys, "key set"),
    ];
    for (facts, facts_keys, differs) in recorded {
        let dir = tempfile::tempdir().unwrap();
        let manifest = dir.path().join("residuals/manifest.json");
        in_dir(
            &m,
            (facts, &facts_keys),
            2,
            Schedule::Independent,
            dir.path(),
        )
        .unwrap();
        let before = std::fs::read(&manifest).unwrap();
        let e = in_dir(
            &m,
            (&prepared, &keys),
            all,
            Schedule::Independent,
            dir.path(),
        )
        .unwrap_err();
        let OptimError::RunMismatch { what, now, .. } = &e else {
            panic!("{e}")
        };
        assert_eq!(*what, differs);
        assert!(now.contains("the first 2 of 4 facts"), "{now}");
        assert_eq!(std::fs::read(&manifest).unwrap(), before);
    }
}
