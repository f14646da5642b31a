//! The intervention API against independent computations: captures against the block's own
//! weights, additive edits against a manual forward, cached starts against full passes,
//! autograd against finite differences, patches round-tripped through a file.

use eamet_hooks::patch::Patch;
use eamet_hooks::tch::{Device, Kind, Tensor};
use eamet_hooks::{
    Batch, Capture, Edit, EditableLm, JoinedStart, LlamaModel, LogProbs, ModelError, Padding, Plan,
    Site, Start,
};
use std::path::PathBuf;

fn tiny() -> LlamaModel {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/golden/tiny-llama");
    LlamaModel::from_hf_dir(dir, Device::Cpu).unwrap()
}

fn batch(m: &LlamaModel, texts: &[&str], padding: Padding) -> Batch {
    let ids: Vec<Vec<u32>> = texts
        .iter()
        .map(|t| m.tokenizer().encode(t).unwrap())
        .collect();
    Batch::new(&ids, m.tokenizer().pad_id, padding, Device::Cpu).unwrap()
}

const TEXTS: [&str; 3] = [
    "The Eiffel Tower is located in the city of",
    "Toko Yasuda plays the",
    "The capital of Japan is",
];

fn max_diff(a: &Tensor, b: &Tensor) -> f64 {
    (a - b).abs().max().double_value(&[])
}

#[test]
fn mlp_out_is_w_out_times_key() {
    let m = tiny();
    let b = batch(&m, &TEXTS, Padding::Right);
    let at = vec![(0, 3), (1, 0), (2, 2)];
    let plan = Plan {
        captures: vec![
            Capture {
                layer: 1,
                site: Site::MlpKey,
                at: Some(at.clone()),
            },
            Capture {
                layer: 1,
                site: Site::MlpOut,
                at: Some(at.clone()),
            },
            Capture {
                layer: 1,
                site: Site::MlpKey,
                at: None,
            },
        ],
        ..Default::default()
    };
    let out = m.forward(&b, &plan).unwrap();
    let (k, o, all) = (&out.captures[0], &out.captures[1], &out.captures[2]);
    assert_eq!(k.size(), [3, m.config().d_ff as i64]);
    assert_eq!(o.size(), [3, m.config().d_model as i64]);
    assert_eq!(all.size(), [3, b.width as i64, m.config().d_ff as i64]);
    // mlp_out = W_out · key, with W_out in key->residual orientation.
    let w = m.w_out(1).unwrap();
    assert!(max_diff(&k.matmul(&w.tr()), o) < 1e-5);
    // The selected rows are the right rows of the full capture.
    for (i, &(r, s)) in at.iter().enumerate() {
        assert!(max_diff(&all.get(r as i64).get(s as i64), &k.get(i as i64)) < 1e-7);
    }
}

#[test]
fn edit_equals_apply_delta_on_a_rank_one_update() {
    // Adding v to the MLP output where the key is k is what W_out += v kᵀ/(kᵀk) does there.
    let m = tiny();
    let b = batch(&m, &TEXTS[..1], Padding::Right);
    let pos = b.last_slots()[0];
    let key = m
        .forward(
            &b,
            &Plan {
                captures: vec![Capture {
                    layer: 2,
                    site: Site::MlpKey,
                    at: Some(vec![(0, pos)]),
                }],
                ..Default::default()
            },
        )
        .unwrap()
        .captures
        .remove(0)
        .view([-1]);
    let v = Tensor::randn([m.config().d_model as i64], (Kind::Float, Device::Cpu)) * 0.5;
    let edited = m
        .forward(
            &b,
            &Plan {
                edits: vec![Edit {
                    layer: 2,
                    at: vec![(0, pos)],
                    delta: v.shallow_clone(),
                }],
                logprobs: Some(LogProbs::Full { at: vec![(0, pos)] }),
                ..Default::default()
            },
        )
        .unwrap()
        .logprobs
        .unwrap();
    let mut m2 = m;
    let delta = v.outer(&key) / key.dot(&key);
    m2.apply_delta(2, &delta).unwrap();
    let patched = m2
        .forward(
            &b,
            &Plan {
                logprobs: Some(LogProbs::Full { at: vec![(0, pos)] }),
                ..Default::default()
            },
        )
        .unwrap()
        .logprobs
        .unwrap();
    assert!(
        max_diff(&edited, &patched) < 1e-4,
        "{}",
        max_diff(&edited, &patched)
    );
    // And the edit changed something.
    m2.restore();
    let plain = m2
        .forward(
            &b,
            &Plan {
                logprobs: Some(LogProbs::Full { at: vec![(0, pos)] }),
                ..Default::default()
            },
        )
        .unwrap()
        .logprobs
        .unwrap();
    assert!(max_diff(&plain, &edited) > 1e-3);
}

#[test]
fn starting_from_cached_hidden_states_equals_the_full_pass() {
    let m = tiny();
    for padding in [Padding::Right, Padding::Left] {
        let b = batch(&m, &TEXTS, padding);
        let at: Vec<(usize, usize)> = b.last_slots().into_iter().enumerate().collect();
        let full = m
            .forward(
                &b,
                &Plan {
                    captures: vec![Capture {
                        layer: 1,
                        site: Site::BlockIn,
                        at: None,
                    }],
                    logprobs: Some(LogProbs::Full { at: at.clone() }),
                    ..Default::default()
                },
            )
            .unwrap();
        let resumed = m
            .forward(
                &b,
                &Plan {
                    start: Some(Start::at_layer(1, full.captures[0].shallow_clone())),
                    logprobs: Some(LogProbs::Full { at: at.clone() }),
                    ..Default::default()
                },
            )
            .unwrap();
        assert!(
            max_diff(
                full.logprobs.as_ref().unwrap(),
                resumed.logprobs.as_ref().unwrap()
            ) < 1e-6
        );
    }
}

#[test]
fn token_logprobs_are_the_full_distribution_gathered() {
    let m = tiny();
    let b = batch(&m, &TEXTS, Padding::Left);
    let at = vec![(0, b.width - 1), (2, b.width - 2)];
    let tokens = vec![17u32, 250];
    let full = m
        .forward(
            &b,
            &Plan {
                logprobs: Some(LogProbs::Full { at: at.clone() }),
                ..Default::default()
            },
        )
        .unwrap();
    let some = m
        .forward(
            &b,
            &Plan {
                logprobs: Some(LogProbs::Tokens {
                    at,
                    tokens: tokens.clone(),
                }),
                ..Default::default()
            },
        )
        .unwrap();
    let full = full.logprobs.unwrap();
    let some = some.logprobs.unwrap();
    // log-softmax rows normalise.
    let mass = full.exp().sum_dim_intlist(-1, false, Kind::Float);
    assert!(max_diff(&mass, &Tensor::ones([2], (Kind::Float, Device::Cpu))) < 1e-5);
    for (i, &t) in tokens.iter().enumerate() {
        let want = full.get(i as i64).get(t as i64).double_value(&[]);
        assert!((some.get(i as i64).double_value(&[]) - want).abs() < 1e-6);
    }
}

#[test]
fn gradient_flows_into_the_edit_vector_and_matches_finite_differences() {
    let m = tiny();
    let b = batch(&m, &TEXTS[..1], Padding::Right);
    let last = b.last_slots()[0];
    let subj = 2usize;
    let d = m.config().d_model as i64;
    let run = |v: &Tensor| {
        m.forward(
            &b,
            &Plan {
                edits: vec![Edit {
                    layer: 1,
                    at: vec![(0, subj)],
                    delta: v.shallow_clone(),
                }],
                logprobs: Some(LogProbs::Tokens {
                    at: vec![(0, last)],
                    tokens: vec![42],
                }),
                ..Default::default()
            },
        )
        .unwrap()
        .logprobs
        .unwrap()
        .sum(Kind::Double)
    };
    let v0 = Tensor::randn([d], (Kind::Double, Device::Cpu)).to_kind(Kind::Float) * 0.1;
    let v = v0.copy().set_requires_grad(true);
    let lp = run(&v);
    lp.backward();
    let g = v.grad();
    assert!(
        g.abs().sum(Kind::Double).double_value(&[]) > 0.0,
        "no gradient reached the edit"
    );
    // Central difference along the gradient direction.
    let _ng = eamet_hooks::tch::no_grad_guard();
    let dir = &g / g.norm();
    let eps = 1e-2;
    let up = run(&(&v0 + &dir * eps)).double_value(&[]);
    let down = run(&(&v0 - &dir * eps)).double_value(&[]);
    let numeric = (up - down) / (2.0 * eps);
    let analytic = g.norm().double_value(&[]);
    assert!(
        (numeric - analytic).abs() < 2e-2 * analytic.max(1e-3),
        "numeric {numeric} vs autograd {analytic}"
    );
}

#[test]
fn stop_after_returns_captures_without_the_head() {
    let m = tiny();
    let b = batch(&m, &TEXTS, Padding::Right);
    let out = m
        .forward(
            &b,
            &Plan {
                captures: vec![Capture {
                    layer: 0,
                    site: Site::MlpKey,
                    at: None,
                }],
                stop_after: Some(0),
                ..Default::default()
            },
        )
        .unwrap();
    assert!(out.logprobs.is_none());
    assert_eq!(out.captures[0].size()[2], m.config().d_ff as i64);
}

#[test]
fn bad_requests_are_typed_errors() {
    let m = tiny();
    let b = batch(&m, &TEXTS, Padding::Right);
    let d = m.config().d_model as i64;
    let err = |plan: Plan| m.forward(&b, &plan).unwrap_err();
    assert!(matches!(
        err(Plan {
            captures: vec![Capture {
                layer: 99,
                site: Site::MlpKey,
                at: None
            }],
            ..Default::default()
        }),
        ModelError::BadLayer { layer: 99, .. }
    ));
    let e = err(Plan {
        captures: vec![Capture {
            layer: 0,
            site: Site::MlpKey,
            at: Some(vec![(5, 0)]),
        }],
        ..Default::default()
    });
    assert!(e.to_string().contains("row 5"), "{e}");
    let e = err(Plan {
        edits: vec![Edit {
            layer: 0,
            at: vec![(0, 0)],
            delta: Tensor::zeros([d + 1], (Kind::Float, Device::Cpu)),
        }],
        ..Default::default()
    });
    assert!(e.to_string().contains("delta has shape"), "{e}");
    let e = err(Plan {
        logprobs: Some(LogProbs::Tokens {
            at: vec![(0, 0)],
            tokens: vec![100_000],
        }),
        ..Default::default()
    });
    assert!(e.to_string().contains("outside the vocabulary"), "{e}");
    let e = err(Plan {
        start: Some(Start::at_layer(
            1,
            Tensor::zeros([1, 2, d], (Kind::Float, Device::Cpu)),
        )),
        ..Default::default()
    });
    assert!(e.to_string().contains("start hidden state"), "{e}");
    assert!(Batch::new(&[], 0, Padding::Right, Device::Cpu).is_err());
    assert!(Batch::new(&[vec![1], vec![]], 0, Padding::Right, Device::Cpu).is_err());
    let mut m = m;
    let nan = Tensor::full(
        [d, m.config().d_ff as i64],
        f64::NAN,
        (Kind::Float, Device::Cpu),
    );
    assert!(m
        .apply_delta(0, &nan)
        .unwrap_err()
        .to_string()
        .contains("NaN"));
    assert!(m
        .apply_delta(0, &Tensor::zeros([2, 2], (Kind::Float, Device::Cpu)))
        .is_err());
    assert!(
        m.edited_layers().is_empty(),
        "a rejected delta must not count as an edit"
    );
}

#[test]
fn patch_round_trip_and_restore() {
    let dir = tempfile::tempdir().unwrap();
    let mut m = tiny();
    let b = batch(&m, &TEXTS, Padding::Right);
    let at: Vec<(usize, usize)> = b.last_slots().into_iter().enumerate().collect();
    let logits = |m: &LlamaModel| {
        m.forward(
            &b,
            &Plan {
                logprobs: Some(LogProbs::Full { at: at.clone() }),
                ..Default::default()
            },
        )
        .unwrap()
        .logprobs
        .unwrap()
    };
    let before = logits(&m);
    let (dm, dff) = (m.config().d_model as i64, m.config().d_ff as i64);
    for l in [0usize, 2] {
        m.apply_delta(
            l,
            &(Tensor::randn([dm, dff], (Kind::Float, Device::Cpu)) * 0.05),
        )
        .unwrap();
    }
    m.apply_delta(
        2,
        &(Tensor::randn([dm, dff], (Kind::Float, Device::Cpu)) * 0.05),
    )
    .unwrap();
    assert_eq!(m.edited_layers(), vec![0, 2]);
    let edited = logits(&m);
    assert!(max_diff(&before, &edited) > 1e-3);

    let path = dir.path().join("edit.patch.safetensors");
    let patch = Patch::from_model(&m, "test").unwrap();
    patch.save(&path, &[], false).unwrap();
    // No overwrite without asking; never over an input file.
    assert!(patch.save(&path, &[], false).is_err());
    let input = m.source().identity_files().unwrap();
    let e = patch.save(&input[0], &input, true).unwrap_err();
    assert!(e.to_string().contains("input model file"), "{e}");

    let mut fresh = tiny();
    let loaded = Patch::load(&path).unwrap();
    assert_eq!(loaded.meta.method, "test");
    assert_eq!(
        loaded.deltas.keys().copied().collect::<Vec<_>>(),
        vec![0, 2]
    );
    loaded.apply(&mut fresh, &path).unwrap();
    let reloaded = logits(&fresh);
    assert!(
        max_diff(&edited, &reloaded) <= 1e-6,
        "{}",
        max_diff(&edited, &reloaded)
    );

    m.restore();
    assert!(m.edited_layers().is_empty());
    assert_eq!(
        max_diff(&before, &logits(&m)),
        0.0,
        "restore must give the original weights exactly"
    );
}

#[test]
fn patch_refuses_another_base_model_and_garbage() {
    let dir = tempfile::tempdir().unwrap();
    let mut m = tiny();
    let (dm, dff) = (m.config().d_model as i64, m.config().d_ff as i64);
    m.apply_delta(1, &Tensor::ones([dm, dff], (Kind::Float, Device::Cpu)))
        .unwrap();
    let path = dir.path().join("p.safetensors");
    let mut patch = Patch::from_model(&m, "memit").unwrap();
    patch.meta.base_sha256 = "0".repeat(64);
    patch.save(&path, &[], false).unwrap();
    let mut other = tiny();
    let e = Patch::load(&path)
        .unwrap()
        .apply(&mut other, &path)
        .unwrap_err();
    assert!(e.to_string().contains("refusing to apply"), "{e}");
    assert!(other.edited_layers().is_empty());

    let junk = dir.path().join("junk.safetensors");
    std::fs::write(&junk, b"\x10\x00\x00\x00\x00\x00\x00\x00{not json at all}").unwrap();
    assert!(matches!(Patch::load(&junk), Err(ModelError::Patch { .. })));
}

#[test]
fn resuming_after_a_causal_prefix_equals_the_full_pass_with_gradients() {
    // Left padding puts every row's suffix at the same slots; an edit at slot s0 leaves slots
    // before it untouched, so a pass that recomputes only s0..T must agree with the full one,
    // log-probs and gradients alike.
    let m = tiny();
    for layer in [0usize, 1, 2] {
        let b = batch(&m, &TEXTS, Padding::Left);
        let s0 = b.width - 3;
        let last = b.width - 1;
        let d = m.config().d_model as i64;
        let at: Vec<(usize, usize)> = (0..3).map(|r| (r, last)).collect();
        let subj: Vec<(usize, usize)> = (0..3).map(|r| (r, s0)).collect();
        let v0 = Tensor::randn([d], (Kind::Float, Device::Cpu)) * 0.3;
        let run = |start: Option<Start>| {
            let v = v0.copy().set_requires_grad(true);
            let lp = m
                .forward(
                    &b,
                    &Plan {
                        start,
                        edits: vec![Edit {
                            layer,
                            at: subj.clone(),
                            delta: v.shallow_clone(),
                        }],
                        captures: vec![Capture {
                            layer,
                            site: Site::MlpKey,
                            at: Some(subj.clone()),
                        }],
                        logprobs: Some(LogProbs::Full { at: at.clone() }),
                        ..Default::default()
                    },
                )
                .unwrap();
            let out = lp.logprobs.unwrap();
            out.sum(Kind::Float).backward();
            (out.detach(), v.grad(), lp.captures[0].detach())
        };
        let (full, g_full, k_full) = run(None);
        let state = m.prefix_state(&b, layer, s0).unwrap();
        assert_eq!(state.hidden.size(), [3, (b.width - s0) as i64, d]);
        let (part, g_part, k_part) = run(Some(state));
        assert!(
            max_diff(&full, &part) < 1e-5,
            "layer {layer}: {}",
            max_diff(&full, &part)
        );
        assert!(
            max_diff(&g_full, &g_part) < 1e-4,
            "layer {layer}: grad {}",
            max_diff(&g_full, &g_part)
        );
        assert!(max_diff(&k_full, &k_part) < 1e-5);
    }
    // Positions before the saved prefix are refused.
    let b = batch(&m, &TEXTS, Padding::Left);
    let state = m.prefix_state(&b, 1, b.width - 3).unwrap();
    let e = m
        .forward(
            &b,
            &Plan {
                start: Some(state.shallow_clone()),
                logprobs: Some(LogProbs::Full { at: vec![(0, 0)] }),
                ..Default::default()
            },
        )
        .unwrap_err();
    assert!(e.to_string().contains("before slot"), "{e}");
    assert!(m.prefix_state(&b, 1, b.width).is_err());
}

/// Log-probs of every row's last `k` tokens with `delta` added at `edit_at`, through a plan that
/// starts from `start`, for positions given in the batch's own coordinates mapped by `map`.
fn tail_logprobs(
    m: &LlamaModel,
    batch: &Batch,
    start: Start,
    edit_at: Vec<(usize, usize)>,
    at: Vec<(usize, usize)>,
    delta: &Tensor,
) -> Tensor {
    m.forward(
        batch,
        &Plan {
            start: Some(start),
            edits: vec![Edit {
                layer: 1,
                at: edit_at,
                delta: delta.shallow_clone(),
            }],
            logprobs: Some(LogProbs::Full { at }),
            ..Default::default()
        },
    )
    .unwrap()
    .logprobs
    .unwrap()
}

#[test]
fn joined_starts_compute_what_each_part_computes_alone() {
    let m = tiny();
    // Parts of different widths, row counts and saved-prefix lengths (one with none).
    let texts: [&[&str]; 3] = [
        &TEXTS,
        &[
            "Paris is the capital of",
            "He plays all day long in the park",
        ],
        &["It is on"],
    ];
    let keep = [3usize, 5, 2];
    let tch_delta = Tensor::randn([m.config().d_model as i64], (Kind::Float, Device::Cpu)) * 0.5;
    let mut parts = Vec::new();
    for (t, k) in texts.iter().zip(keep) {
        let b = batch(&m, t, Padding::Left);
        let from = if t.len() == 1 { 0 } else { b.width - k };
        let s = m.prefix_state(&b, 1, from).unwrap();
        parts.push((b, s));
    }
    let refs: Vec<(&Batch, &Start)> = parts.iter().map(|(b, s)| (b, s)).collect();
    let joined = JoinedStart::join(&refs, m.tokenizer().pad_id).unwrap();
    assert_eq!(joined.parts(), 3);
    assert_eq!(joined.batch.rows(), 6);
    let (mut edit_at, mut at, mut alone) = (vec![], vec![], vec![]);
    for (p, (b, s)) in parts.iter().enumerate() {
        // Edit every row's last token; read the last two tokens.
        let e: Vec<(usize, usize)> = b.last_slots().into_iter().enumerate().collect();
        let a: Vec<(usize, usize)> = e
            .iter()
            .flat_map(|&(r, sl)| [(r, sl - 1), (r, sl)])
            .filter(|&(_, sl)| sl >= s.from_slot)
            .collect();
        alone.push(tail_logprobs(
            &m,
            b,
            s.shallow_clone(),
            e.clone(),
            a.clone(),
            &tch_delta,
        ));
        edit_at.extend(joined.map_all(p, &e).unwrap());
        at.extend(joined.map_all(p, &a).unwrap());
    }
    let together = tail_logprobs(
        &m,
        &joined.batch,
        joined.start.shallow_clone(),
        edit_at,
        at,
        &tch_delta,
    );
    let want = Tensor::cat(&alone, 0);
    assert_eq!(together.size(), want.size());
    assert!(
        max_diff(&together, &want) < 1e-4,
        "{}",
        max_diff(&together, &want)
    );
    // One part joins to itself, bit for bit.
    let one = JoinedStart::join(&refs[..1], m.tokenizer().pad_id).unwrap();
    assert_eq!(one.map(0, (1, 7)).unwrap(), (1, 7));
    let (b, s) = &parts[0];
    let e: Vec<(usize, usize)> = b.last_slots().into_iter().enumerate().collect();
    let a = e.clone();
    let x = tail_logprobs(&m, b, s.shallow_clone(), e.clone(), a.clone(), &tch_delta);
    let y = tail_logprobs(&m, &one.batch, one.start.shallow_clone(), e, a, &tch_delta);
    assert!(x.equal(&y));
    // Errors: no parts, another layer, positions outside a part.
    assert!(JoinedStart::join(&[], 0).is_err());
    let other = m.prefix_state(&parts[1].0, 2, 0).unwrap();
    let e = JoinedStart::join(&[refs[0], (&parts[1].0, &other)], 0).unwrap_err();
    assert!(e.to_string().contains("layer"), "{e}");
    assert!(joined.map(3, (0, 0)).is_err());
    assert!(joined.map(0, (3, 0)).is_err());
    assert!(joined.map(2, (0, 99)).is_err());
}
