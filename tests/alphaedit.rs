//! AlphaEdit through the Editor (tiny Llama): the projected update leaves the keys of the
//! preserved corpus (what the statistics saw) unchanged while it still writes the edits.

use eamet::hooks::tch::Device;
use eamet::hooks::{Batch, Capture, EditableLm, LlamaModel, Padding, Plan, Site};
use eamet::stats::Corpus;
use eamet::{EditHparams, EditOptions, Editor, Fact, Method};
use ndarray::Array2;
use std::path::PathBuf;

fn corpus_keys(m: &LlamaModel, c: &Corpus, layer: usize) -> Array2<f64> {
    let d = m.config().d_ff;
    let mut rows = Vec::new();
    for doc in &c.docs {
        let ids = m.tokenizer().encode(doc).unwrap();
        let b = Batch::new(std::slice::from_ref(&ids), 0, Padding::Right, Device::Cpu).unwrap();
        let plan = Plan {
            captures: vec![Capture {
                layer,
                site: Site::MlpKey,
                at: None,
            }],
            ..Default::default()
        };
        let k = m.forward(&b, &plan).unwrap().captures.remove(0);
        rows.extend(
            Vec::<f32>::try_from(k.reshape([-1]))
                .unwrap()
                .into_iter()
                .map(f64::from),
        );
    }
    let n = rows.len() / d;
    Array2::from_shape_vec((n, d), rows).unwrap()
}

#[test]
fn alphaedit_preserves_corpus_keys_and_writes_edits() {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("crates/eamet-hooks/tests/golden/tiny-llama");
    let mut m = LlamaModel::from_hf_dir(dir, Device::Cpu).unwrap();
    let corpus = Corpus::from_docs(
        "tiny",
        [
            "Rome is the capital of Italy.",
            "The capital of Japan is Tokyo.",
            "Berlin is in Germany.",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect(),
    );
    let facts = vec![
        Fact::new("Eiffel Tower", "The {} is located in the city of", "Rome"),
        Fact::new("Toko Yasuda", "{} plays the", "guitar"),
    ];
    let mut hp = EditHparams::smollm2(Method::AlphaEdit);
    hp.layers = vec![1, 2];
    hp.residual.v_num_grad_steps = 5;
    hp.nullspace_threshold = 1e-3;
    hp.prefixes.seeds.truncate(2);
    let cache = tempfile::tempdir().unwrap();
    let opts = EditOptions {
        cache_dir: Some(cache.path().to_path_buf()),
        corpus: Some(corpus.clone()),
        ..Default::default()
    };
    let keys_before: Vec<Array2<f64>> = [1, 2]
        .iter()
        .map(|&l| corpus_keys(&m, &corpus, l))
        .collect();
    let out = Editor::new(&mut m, Method::AlphaEdit, hp, opts)
        .unwrap()
        .edit(&facts)
        .unwrap();
    for ((layer, delta), k_pres) in out.deltas.iter().zip(&keys_before) {
        let delta = delta.mapv(f64::from);
        let kept = k_pres.dot(&delta.t()); // preserved keys through Δ
        let kept_norm =
            kept.iter().map(|v| v * v).sum::<f64>().sqrt() / (k_pres.nrows() as f64).sqrt();
        let key_norm =
            k_pres.iter().map(|v| v * v).sum::<f64>().sqrt() / (k_pres.nrows() as f64).sqrt();
        let delta_norm = delta.iter().map(|v| v * v).sum::<f64>().sqrt();
        assert!(delta_norm > 0.0, "layer {layer}: no update");
        // ‖Δ k‖ for preserved keys is negligible next to what a generic update of that size does.
        assert!(
            kept_norm < 1e-3 * delta_norm * key_norm,
            "layer {layer}: preserved keys moved by {kept_norm} (‖Δ‖ {delta_norm}, ‖k‖ {key_norm})"
        );
    }
    // The edits themselves are written: at l_R the update moves the facts' own keys by a
    // non-negligible share of what it could (the preserved keys above: < 1e-3).
    let (_, delta) = out.deltas.last().unwrap();
    let delta = delta.mapv(f64::from);
    let dn = delta.iter().map(|v| v * v).sum::<f64>().sqrt();
    for (i, k) in out.keys.rows().into_iter().enumerate() {
        let k = k.mapv(f64::from);
        let moved = delta.dot(&k).iter().map(|v| v * v).sum::<f64>().sqrt();
        let kn = k.iter().map(|v| v * v).sum::<f64>().sqrt();
        assert!(
            moved > 1e-2 * dn * kn,
            "fact {i}: edit key moved only {moved} (‖Δ‖ {dn}, ‖k‖ {kn})"
        );
    }
}
