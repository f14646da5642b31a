//! Gemma 3 270M (Q4_K_M GGUF) against transformers (golden data from
//! `tools/golden_gemma3.py`: transformers loading the same GGUF, float32, eager attention).
//!
//! Logits within 1e-3 at the stored ids (top 32 and 64 seeded random ids per position, and the
//! logsumexp over the whole vocabulary), alone and in right-/left-padded batches, identical
//! greedy completions (alone and batched), identical token ids and decodes. A prompt of 721
//! tokens exercises the 512-position sliding window. Further checks without a reference:
//! resuming after a saved prefix longer than the window, joined prefix states, and
//! `apply_delta` against the equivalent additive edit at a sliding and a global layer.
//!
//! The GGUF is not in the repository: set `EAMET_GEMMA3_GGUF` (default
//! `$EAMET_HOME/models/gemma-3-270m-q4_k_m.gguf`). Without it every test here passes after
//! printing why it skipped.

use eamet_hooks::config::{Activation, Family};
use eamet_hooks::tch::{Device, Kind, Tensor};
use eamet_hooks::{
    Batch, Capture, Edit, EditableLm, JoinedStart, LlamaModel, LogProbs, Padding, Plan, Site,
};
use serde_json::Value;
use std::path::PathBuf;
use std::sync::{Mutex, MutexGuard, OnceLock};

/// What these tests accept between our logits and transformers'.
const TOL: f64 = 1e-3;

fn golden(name: &str) -> Value {
    let p = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/golden/gemma3")
        .join(name);
    serde_json::from_str(&std::fs::read_to_string(&p).unwrap()).unwrap()
}

fn u32s(v: &Value) -> Vec<u32> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_u64().unwrap() as u32)
        .collect()
}

fn f64s(v: &Value) -> Vec<f64> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_f64().unwrap())
        .collect()
}

/// The model, loaded once per test binary (tensors are not `Sync`, hence the mutex); `None`
/// (with a message) when the GGUF is absent.
fn gemma3() -> Option<MutexGuard<'static, LlamaModel>> {
    static M: OnceLock<Option<Mutex<LlamaModel>>> = OnceLock::new();
    let m = M.get_or_init(|| {
        let path = eamet_hooks::paths::gemma3_model()?;
        if !path.exists() {
            return None;
        }
        let t = std::time::Instant::now();
        let m = LlamaModel::from_gguf(&path, Device::Cpu).unwrap();
        eprintln!("Gemma 3 loaded in {:.1}s", t.elapsed().as_secs_f64());
        Some(Mutex::new(m))
    });
    match m {
        Some(m) => Some(m.lock().unwrap_or_else(|e| e.into_inner())),
        None => {
            eprintln!(
                "SKIPPED: Gemma 3 GGUF not found ({}); set EAMET_GEMMA3_GGUF",
                eamet_hooks::paths::gemma3_model()
                    .map(|p| p.display().to_string())
                    .unwrap_or_else(|| "no cache directory".into())
            );
            None
        }
    }
}

/// One golden position: logsumexp, and (id, logit) pairs.
struct At {
    position: usize,
    lse: f64,
    ids: Vec<u32>,
    logits: Vec<f64>,
}

struct Prompt {
    ids: Vec<u32>,
    at: Vec<At>,
    greedy: Vec<u32>,
}

fn prompts() -> Vec<Prompt> {
    let doc = golden("logits.json");
    doc["prompts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| Prompt {
            ids: u32s(&p["ids"]),
            greedy: u32s(&p["greedy"]),
            at: p["at"]
                .as_array()
                .unwrap()
                .iter()
                .map(|a| {
                    let mut ids = u32s(&a["top_ids"]);
                    ids.extend(u32s(&a["sampled_ids"]));
                    let mut logits = f64s(&a["top_logits"]);
                    logits.extend(f64s(&a["sampled_logits"]));
                    At {
                        position: a["position"].as_u64().unwrap() as usize,
                        lse: a["logsumexp"].as_f64().unwrap(),
                        ids,
                        logits,
                    }
                })
                .collect(),
        })
        .collect()
}

/// Max |Δ| between a row of logits `[vocab]` and the golden ids/logits, logsumexp included.
fn logit_diff(row: &Tensor, want: &At) -> f64 {
    let v = Vec::<f32>::try_from(row.to_kind(Kind::Float).contiguous()).unwrap();
    let mut d = want
        .ids
        .iter()
        .zip(&want.logits)
        .map(|(&i, &w)| (f64::from(v[i as usize]) - w).abs())
        .fold(0f64, f64::max);
    let lse = row
        .to_kind(Kind::Double)
        .logsumexp([0], false)
        .double_value(&[]);
    d = d.max((lse - want.lse).abs());
    d
}

/// Max |Δ| between log-probabilities `[vocab]` and the golden logit − logsumexp.
fn logprob_diff(row: &Tensor, want: &At) -> f64 {
    let v = Vec::<f32>::try_from(row.to_kind(Kind::Float).contiguous()).unwrap();
    want.ids
        .iter()
        .zip(&want.logits)
        .map(|(&i, &w)| (f64::from(v[i as usize]) - (w - want.lse)).abs())
        .fold(0f64, f64::max)
}

#[test]
fn gemma3_config_is_read_from_the_header() {
    let Some(m) = gemma3() else { return };
    let c = m.config();
    assert_eq!(c.family, Family::Gemma3);
    assert_eq!(c.arch_name, "gemma3");
    assert_eq!(
        (c.vocab_size, c.d_model, c.d_ff, c.n_layers),
        (262_144, 640, 2048, 18)
    );
    assert_eq!((c.n_heads, c.n_kv_heads, c.head_dim), (4, 1, 256));
    assert_eq!(c.activation, Activation::GeluTanh);
    assert!(c.qk_norm && c.sandwich_norms && c.tied_embeddings && !c.qkv_bias);
    assert_eq!(c.attn_scale, Some(1.0 / 16.0));
    assert_eq!(c.embed_scale, Some(640f64.sqrt()));
    assert_eq!(c.sliding_window, Some(512));
    assert_eq!((c.rope_theta, c.rope_theta_local), (1e6, Some(1e4)));
    let global: Vec<usize> = (0..18).filter(|&l| !c.is_sliding(l)).collect();
    assert_eq!(global, [5, 11, 17]);
    assert_eq!(c.final_logit_softcap, None);
    assert_eq!(m.w_out(0).unwrap().size(), [640, 2048]);
}

#[test]
fn gemma3_tokenizer_matches_transformers() {
    let Some(m) = gemma3() else { return };
    let tok = m.tokenizer();
    assert!(tok.add_bos, "Gemma wants BOS");
    assert_eq!((tok.bos_id, tok.eos_id, tok.pad_id), (Some(2), Some(1), 0));
    assert_eq!(tok.vocab_size(), 262_144);
    let doc = golden("tokenizer.json");
    let texts = doc["texts"].as_array().unwrap();
    assert!(texts.len() >= 12);
    for (i, text) in texts.iter().enumerate() {
        let text = text.as_str().unwrap();
        let want = u32s(&doc["ids"][i]);
        let ids = tok.encode(text).unwrap();
        assert_eq!(ids, want, "text {i}: {text:?}");
        assert_eq!(
            tok.decode(&ids[1..]).unwrap(),
            doc["decoded"][i].as_str().unwrap(),
            "decode of text {i}"
        );
    }
    assert_eq!(
        tok.encode("The capital of France is").unwrap(),
        [2, 818, 5279, 529, 7001, 563]
    );
}

#[test]
fn gemma3_logits_match_transformers() {
    let Some(m) = gemma3() else { return };
    let ps = prompts();
    assert!(
        ps.iter().any(|p| p.ids.len() > 512),
        "a prompt beyond the window"
    );
    let mut worst = (0f64, 0f64);
    for (i, p) in ps.iter().enumerate() {
        // Raw logits at the last position.
        let b = Batch::new(std::slice::from_ref(&p.ids), 0, Padding::Right, Device::Cpu).unwrap();
        let last = p.at.last().unwrap();
        assert_eq!(last.position, p.ids.len() - 1);
        let d = logit_diff(&m.last_logits(&b).unwrap().get(0), last);
        assert!(d < TOL, "prompt {i}: max |logit diff| {d}");
        worst.0 = worst.0.max(d);
        // Log-probabilities at every recorded position, from one forward pass.
        let at: Vec<(usize, usize)> = p.at.iter().map(|a| (0, a.position)).collect();
        let out = m
            .forward(
                &b,
                &Plan {
                    logprobs: Some(LogProbs::Full { at }),
                    ..Default::default()
                },
            )
            .unwrap();
        let lp = out.logprobs.unwrap();
        for (k, a) in p.at.iter().enumerate() {
            let d = logprob_diff(&lp.get(k as i64), a);
            assert!(
                d < TOL,
                "prompt {i} position {}: max |log-prob diff| {d}",
                a.position
            );
            worst.1 = worst.1.max(d);
        }
    }
    eprintln!(
        "Gemma 3 vs transformers: max |logit diff| {:.2e} (last positions), max |log-prob diff| {:.2e} (all recorded positions)",
        worst.0, worst.1
    );
}

#[test]
fn gemma3_padded_batches_match_transformers() {
    let Some(m) = gemma3() else { return };
    let ps = prompts();
    let long = ps.iter().position(|p| p.ids.len() > 512).unwrap();
    // The long prompt between two short ones: every short row is padded by hundreds of slots.
    let rows = [0, long, 3];
    let ids: Vec<Vec<u32>> = rows.iter().map(|&r| ps[r].ids.clone()).collect();
    let mut worst = 0f64;
    for padding in [Padding::Right, Padding::Left] {
        let b = Batch::new(&ids, m.tokenizer().pad_id, padding, Device::Cpu).unwrap();
        // Padded layout (last_logits) and packed layout (forward with positions).
        let logits = m.last_logits(&b).unwrap();
        let at: Vec<(usize, usize)> = b.last_slots().into_iter().enumerate().collect();
        let lp = m
            .forward(
                &b,
                &Plan {
                    logprobs: Some(LogProbs::Full { at }),
                    ..Default::default()
                },
            )
            .unwrap()
            .logprobs
            .unwrap();
        for (k, &r) in rows.iter().enumerate() {
            let want = ps[r].at.last().unwrap();
            let d = logit_diff(&logits.get(k as i64), want);
            let dl = logprob_diff(&lp.get(k as i64), want);
            assert!(
                d < TOL && dl < TOL,
                "{padding:?}-padded row {k}: |logit diff| {d}, |log-prob diff| {dl}"
            );
            worst = worst.max(d).max(dl);
        }
    }
    eprintln!("Gemma 3 padded batches: max diff {worst:.2e}");
}

#[test]
fn gemma3_greedy_matches_transformers() {
    let Some(m) = gemma3() else { return };
    let ps = prompts();
    for (i, p) in ps.iter().enumerate() {
        let g = m
            .generate(std::slice::from_ref(&p.ids), p.greedy.len(), &[])
            .unwrap();
        assert_eq!(g[0].tokens, p.greedy, "prompt {i} alone");
    }
    // All together: left padding, KV cache, the window moving past the long prompt's start.
    let ids: Vec<Vec<u32>> = ps.iter().map(|p| p.ids.clone()).collect();
    let g = m.generate(&ids, 8, &[]).unwrap();
    for (i, p) in ps.iter().enumerate() {
        assert_eq!(g[i].tokens, p.greedy, "prompt {i} in a batch");
    }
    let text = m.tokenizer().decode(&g[0].tokens).unwrap();
    assert!(text.starts_with(" Paris"), "{text:?}");
}

/// Log-probabilities at the last slot of every row.
fn last_logprobs(m: &LlamaModel, b: &Batch, plan: Plan) -> Tensor {
    let at: Vec<(usize, usize)> = b.last_slots().into_iter().enumerate().collect();
    m.forward(
        b,
        &Plan {
            logprobs: Some(LogProbs::Full { at }),
            ..plan
        },
    )
    .unwrap()
    .logprobs
    .unwrap()
}

fn max_diff(a: &Tensor, b: &Tensor) -> f64 {
    (a - b).abs().max().double_value(&[])
}

#[test]
fn gemma3_prefix_resume_beyond_the_window_is_exact() {
    let Some(m) = gemma3() else { return };
    let ps = prompts();
    let long = ps.iter().find(|p| p.ids.len() > 512).unwrap();
    let short = &ps[0];
    let bl = Batch::new(
        std::slice::from_ref(&long.ids),
        0,
        Padding::Right,
        Device::Cpu,
    )
    .unwrap();
    let bs = Batch::new(
        std::slice::from_ref(&short.ids),
        0,
        Padding::Right,
        Device::Cpu,
    )
    .unwrap();
    let full_l = last_logprobs(&m, &bl, Plan::default());
    let full_s = last_logprobs(&m, &bs, Plan::default());
    let layer = 3;
    let sl = m.prefix_state(&bl, layer, 600).unwrap();
    let ss = m.prefix_state(&bs, layer, 5).unwrap();
    let resumed = last_logprobs(
        &m,
        &bl,
        Plan {
            start: Some(sl.shallow_clone()),
            ..Default::default()
        },
    );
    let d = max_diff(&resumed, &full_l);
    assert!(d < 1e-4, "resume from slot 600: {d}");
    // Joined: the short part's saved slots sit after 595 slots of inner padding.
    let j = JoinedStart::join(&[(&bs, &ss), (&bl, &sl)], 0).unwrap();
    let at = vec![
        j.map(0, (0, short.ids.len() - 1)).unwrap(),
        j.map(1, (0, long.ids.len() - 1)).unwrap(),
    ];
    let lp = m
        .forward(
            &j.batch,
            &Plan {
                start: Some(j.start.shallow_clone()),
                logprobs: Some(LogProbs::Full { at }),
                ..Default::default()
            },
        )
        .unwrap()
        .logprobs
        .unwrap();
    let d0 = max_diff(&lp.get(0), &full_s.get(0));
    let d1 = max_diff(&lp.get(1), &full_l.get(0));
    assert!(d0 < 1e-4 && d1 < 1e-4, "joined: {d0}, {d1}");
    eprintln!("Gemma 3 resume: {d:.2e}; joined: {d0:.2e} / {d1:.2e}");
}

#[test]
fn gemma3_apply_delta_equals_the_additive_edit() {
    let Some(mut m) = gemma3() else { return };
    let ps = prompts();
    let ids = ps[0].ids.clone();
    let b = Batch::new(std::slice::from_ref(&ids), 0, Padding::Right, Device::Cpu).unwrap();
    let t = ids.len();
    eamet_hooks::tch::manual_seed(7);
    let base = last_logprobs(&m, &b, Plan::default());
    for layer in [3, 5] {
        // The MLP keys of every token at this layer, and a rank-one W_out update.
        let keys = m
            .forward(
                &b,
                &Plan {
                    captures: vec![Capture {
                        layer,
                        site: Site::MlpKey,
                        at: None,
                    }],
                    stop_after: Some(layer),
                    ..Default::default()
                },
            )
            .unwrap()
            .captures
            .remove(0)
            .view([t as i64, 2048]);
        let k = keys.get(t as i64 - 3);
        let r = Tensor::randn([640, 1], (Kind::Float, Device::Cpu)) * 3.0;
        let delta = r.matmul(&k.view([1, -1])) / k.dot(&k);
        // The additive edit that the update amounts to: delta · key at every token.
        let per_token = keys.matmul(&delta.tr());
        let edited = last_logprobs(
            &m,
            &b,
            Plan {
                edits: vec![Edit {
                    layer,
                    at: (0..t).map(|s| (0, s)).collect(),
                    delta: per_token,
                }],
                ..Default::default()
            },
        );
        m.apply_delta(layer, &delta).unwrap();
        let patched = last_logprobs(&m, &b, Plan::default());
        m.restore();
        let d = max_diff(&edited, &patched);
        let moved = max_diff(&edited, &base);
        assert!(d < 1e-3, "layer {layer}: patched vs edited {d}");
        assert!(
            moved > 1e-2,
            "layer {layer}: the edit changed nothing ({moved})"
        );
        eprintln!(
            "Gemma 3 layer {layer}: apply_delta vs edit {d:.2e} (the edit moved {moved:.2e})"
        );
    }
    let again = last_logprobs(&m, &b, Plan::default());
    assert_eq!(max_diff(&again, &base), 0.0, "restore is exact");
}

#[test]
fn gemma3_mlp_out_is_before_the_post_norm() {
    let Some(m) = gemma3() else { return };
    let ids = m.tokenizer().encode("The capital of France is").unwrap();
    let b = Batch::new(std::slice::from_ref(&ids), 0, Padding::Right, Device::Cpu).unwrap();
    let at = Some(vec![(0, 3)]);
    let cap = |site| Capture {
        layer: 4,
        site,
        at: at.clone(),
    };
    let out = m
        .forward(
            &b,
            &Plan {
                captures: vec![cap(Site::MlpKey), cap(Site::MlpOut)],
                stop_after: Some(4),
                ..Default::default()
            },
        )
        .unwrap();
    let (key, mlp_out) = (&out.captures[0], &out.captures[1]);
    assert_eq!(key.size(), [1, 2048]);
    assert_eq!(mlp_out.size(), [1, 640]);
    // MlpOut = W_out · key exactly (no norm after it).
    let w = m.w_out(4).unwrap();
    let d = max_diff(&key.matmul(&w.tr()), mlp_out);
    assert!(d < 1e-4, "{d}");
}
