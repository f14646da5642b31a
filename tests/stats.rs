//! Key statistics from a corpus: against per-document captures summed independently, shard
//! merging, and the on-disk cache.

use eamet::hooks::tch::Device;
use eamet::hooks::{Batch, Capture, EditableLm, LlamaModel, Padding, Plan, Site};
use eamet::stats::{collect_key_stats, load_or_collect, Corpus, StatsConfig};
use ndarray::Array2;
use std::path::PathBuf;

fn tiny() -> LlamaModel {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("crates/eamet-hooks/tests/golden/tiny-llama");
    LlamaModel::from_hf_dir(dir, Device::Cpu).unwrap()
}

fn corpus() -> Corpus {
    Corpus::from_docs(
        "test",
        [
            "The Eiffel Tower is located in the city of Paris.",
            "Rome is the capital of Italy.",
            "Toko Yasuda plays the guitar and Michael Jordan plays basketball, the sport he loves.",
            "The capital of Japan is Tokyo.",
            "Berlin",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect(),
    )
}

/// Σ k kᵀ by capturing every document alone (no padding) and summing in f64 with ndarray.
fn independent(m: &LlamaModel, c: &Corpus, layer: usize, max_tokens: usize) -> (Array2<f64>, u64) {
    let d = m.config().d_ff;
    let mut acc = Array2::<f64>::zeros((d, d));
    let mut n = 0;
    for doc in &c.docs {
        let mut ids = m.tokenizer().encode(doc).unwrap();
        ids.truncate(max_tokens);
        let b = Batch::new(&[ids.clone()], 0, Padding::Right, Device::Cpu).unwrap();
        let plan = Plan {
            captures: vec![Capture {
                layer,
                site: Site::MlpKey,
                at: None,
            }],
            ..Default::default()
        };
        let k = m.forward(&b, &plan).unwrap().captures.remove(0);
        let v = Vec::<f32>::try_from(k.reshape([-1])).unwrap();
        let k =
            Array2::from_shape_vec((ids.len(), d), v.into_iter().map(f64::from).collect()).unwrap();
        acc = acc + k.t().dot(&k);
        n += ids.len() as u64;
    }
    (acc, n)
}

#[test]
fn batched_statistics_equal_per_document_sums() {
    let m = tiny();
    let c = corpus();
    let cfg = StatsConfig {
        max_tokens: 12,
        batch_size: 2,
        progress: false,
    };
    let st = collect_key_stats(&m, &c, &[0, 2], &cfg).unwrap();
    for (i, layer) in [0usize, 2].into_iter().enumerate() {
        let (want, n) = independent(&m, &c, layer, 12);
        assert_eq!(st[i].tokens(), n, "padding tokens must not be counted");
        let got = st[i].sum_outer();
        let scale = want.iter().fold(0f64, |a, v| a.max(v.abs()));
        let diff = (&got - &want).iter().fold(0f64, |a, v| a.max(v.abs()));
        assert!(
            diff <= 1e-5 * scale,
            "layer {layer}: max diff {diff} vs scale {scale}"
        );
    }
}

#[test]
fn shards_merge_to_one_pass_and_the_cache_is_keyed() {
    let m = tiny();
    let c = corpus();
    let cfg = StatsConfig {
        max_tokens: 16,
        batch_size: 3,
        progress: false,
    };
    let whole = collect_key_stats(&m, &c, &[1], &cfg).unwrap().remove(0);
    let mut merged = collect_key_stats(&m, &c.shard(0, 2).unwrap(), &[1], &cfg)
        .unwrap()
        .remove(0);
    merged
        .merge(&collect_key_stats(&m, &c.shard(1, 2).unwrap(), &[1], &cfg).unwrap()[0])
        .unwrap();
    assert_eq!(merged.tokens(), whole.tokens());
    // Different batch shapes round f32 keys differently; sums agree to f32 precision.
    let scale = whole.sum_outer().iter().fold(0f64, |a, v| a.max(v.abs()));
    let diff = (&merged.sum_outer() - &whole.sum_outer())
        .iter()
        .fold(0f64, |a, v| a.max(v.abs()));
    assert!(diff <= 1e-5 * scale, "{diff} vs scale {scale}");
    assert!(c.shard(2, 2).is_err());

    let dir = tempfile::tempdir().unwrap();
    let (a, cached) = load_or_collect(&m, &c, &[1, 2], &cfg, dir.path()).unwrap();
    assert_eq!(cached, vec![false, false]);
    let (b, cached) = load_or_collect(&m, &c, &[2, 1], &cfg, dir.path()).unwrap();
    assert_eq!(cached, vec![true, true]);
    assert_eq!(
        a[0].sum_outer(),
        b[1].sum_outer(),
        "cache round trip is exact"
    );
    // Another corpus (or document count) is a different cache entry, not a silent reuse.
    let (_, cached) = load_or_collect(&m, &c.take(3), &[1], &cfg, dir.path()).unwrap();
    assert_eq!(cached, vec![false]);
}

#[test]
fn corpus_files_are_read_and_bad_ones_rejected() {
    let dir = tempfile::tempdir().unwrap();
    let txt = dir.path().join("a.txt");
    std::fs::write(
        &txt,
        " = Heading = \n\n First paragraph . \n Second one .\n",
    )
    .unwrap();
    let jsonl = dir.path().join("b.jsonl");
    std::fs::write(&jsonl, "{\"text\": \"third\"}\n\n{\"text\": \"fourth\"}\n").unwrap();
    let c = Corpus::from_files(&[txt, jsonl.clone()]).unwrap();
    assert_eq!(
        c.docs,
        vec!["First paragraph .", "Second one .", "third", "fourth"]
    );
    std::fs::write(&jsonl, "{\"text\": 3}\n").unwrap();
    let e = Corpus::from_files(&[jsonl]).unwrap_err();
    assert!(e.to_string().contains("line 1"), "{e}");
}
