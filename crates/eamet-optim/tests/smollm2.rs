//! The real model: SmolLM2-135M (run `cargo xtask setup` first). One test, a few facts.

use std::time::Instant;

use eamet_hooks::tch::{Device, Kind, Tensor};
use eamet_hooks::{Batch, Edit, EditableLm, LlamaModel, LogProbs, Padding, Plan};
use eamet_optim::*;

#[test]
fn smollm2_learns_rome_at_layer_4() {
    let path = eamet_hooks::paths::default_model().expect("no cache directory");
    assert!(
        path.exists(),
        "{} is missing: run `cargo xtask setup`",
        path.display()
    );
    let t0 = Instant::now();
    let m = LlamaModel::from_gguf(&path, Device::Cpu).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let prefixes = ContextPrefixes::load_or_generate(
        &m,
        &PrefixSpec::eamet(),
        &dir.path().join("prefixes.json"),
    )
    .unwrap();
    assert_eq!(prefixes.templates.len(), 13);
    eprintln!(
        "load + prefixes {:.1}s: {:?}",
        t0.elapsed().as_secs_f64(),
        &prefixes.templates[1..4]
    );
    let facts = vec![
        Fact::new("Danielle Darrieux", "The mother tongue of {} is", "English"),
        Fact::new("Toko Yasuda", "{} plays the", "piano"),
        Fact::new("Eiffel Tower", "The {} is located in the city of", "Rome"),
    ];
    let prepared = prepare_facts(m.tokenizer(), &facts, &prefixes).unwrap();
    let layer = 4;
    let keys = compute_keys(&m, &prepared, layer).unwrap();
    assert_eq!(keys.dim(), (3, 1536));
    for row in keys.rows() {
        let n = row.iter().map(|x| x * x).sum::<f32>().sqrt();
        assert!(n.is_finite() && n > 0.1 && n < 1e3, "key norm {n}");
    }
    // EAMET, sequential, with the gated alignment schedule and a clamp wide enough for this
    // model (ALGORITHM.md §3: ‖k‖ ≈ 4–8 vs ‖h‖ ≈ 90).
    let h = ResidualHparams {
        clamp_ks_factor: 12.0,
        alignment_schedule: AlignmentSchedule::NllGated { threshold: 0.5 },
        ..ResidualHparams::eamet()
    }
    .check()
    .unwrap();
    let t1 = Instant::now();
    let r = optimize_residuals(
        &m,
        &prepared,
        keys.view(),
        layer,
        &h,
        Schedule::Sequential,
        &RunOptions {
            run_dir: Some(dir.path()),
            ..Default::default()
        },
    )
    .unwrap();
    eprintln!("optimize 3 facts {:.1}s", t1.elapsed().as_secs_f64());
    for s in &r.stats {
        eprintln!("{s:?}");
    }
    let rome = &r.stats[2];
    assert!(rome.p_target > 0.5, "{rome:?}");
    // Inject δ at layer 4 in a plain forward of the bare prompt: greedy first token is " Rome".
    let f = &prepared[2];
    let b = Batch::new(&[f.key_prompts[0].clone()], 0, Padding::Right, Device::Cpu).unwrap();
    let last = f.key_prompts[0].len() - 1;
    let delta = Tensor::from_slice(r.deltas.row(2).as_slice().unwrap());
    let lp = m
        .forward(
            &b,
            &Plan {
                edits: vec![Edit {
                    layer,
                    at: vec![(0, f.subject_last[0])],
                    delta,
                }],
                logprobs: Some(LogProbs::Full {
                    at: vec![(0, last)],
                }),
                ..Default::default()
            },
        )
        .unwrap()
        .logprobs
        .unwrap();
    let top = lp.argmax(-1, false).int64_value(&[0]) as u32;
    assert_eq!(
        top,
        f.target_ids[0],
        "greedy token {:?}",
        m.tokenizer().decode(&[top])
    );
    assert_eq!(m.tokenizer().decode(&[top]).unwrap(), " Rome");
    let p = lp
        .get(0)
        .get(top as i64)
        .to_kind(Kind::Double)
        .exp()
        .double_value(&[]);
    assert!(p > 0.5, "P(Rome) = {p}");
    // The unedited model does not say Rome.
    let plain = m
        .forward(
            &b,
            &Plan {
                logprobs: Some(LogProbs::Full {
                    at: vec![(0, last)],
                }),
                ..Default::default()
            },
        )
        .unwrap()
        .logprobs
        .unwrap();
    assert_ne!(plain.argmax(-1, false).int64_value(&[0]) as u32, top);
    // h_i is the real residual stream (‖h‖ ≈ 90 at this depth, per ALGORITHM.md).
    assert!(
        rome.h_norm > 10.0 && rome.h_norm < 1000.0,
        "{}",
        rome.h_norm
    );
}
