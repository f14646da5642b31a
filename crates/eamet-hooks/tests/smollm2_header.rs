//! The real SmolLM2-135M-Instruct GGUF, fetched by `cargo xtask setup`: header, metadata and
//! tensor descriptors as published for the model (30 blocks, d = 576, d_ff = 1536, GQA 9/3).

use eamet_hooks::gguf::{GgmlType, GgufFile};
use eamet_hooks::paths;

fn model() -> GgufFile {
    let path = paths::default_model().expect("no cache directory could be determined");
    assert!(
        path.exists(),
        "the SmolLM2 model is missing at {}; run `cargo xtask setup` (or `cargo xtask test`)",
        path.display()
    );
    GgufFile::open(&path).unwrap()
}

#[test]
fn smollm2_header_and_hyperparameters() {
    let f = model();
    assert_eq!(f.version, 3);
    assert_eq!(f.architecture().unwrap(), "llama");
    assert_eq!(f.arch_u64("block_count").unwrap(), 30);
    assert_eq!(f.arch_u64("embedding_length").unwrap(), 576);
    assert_eq!(f.arch_u64("feed_forward_length").unwrap(), 1536);
    assert_eq!(f.arch_u64("attention.head_count").unwrap(), 9);
    assert_eq!(f.arch_u64("attention.head_count_kv").unwrap(), 3);
    assert_eq!(f.metadata_str("tokenizer.ggml.model").unwrap(), "gpt2");
    let eps = f
        .metadata_f64("llama.attention.layer_norm_rms_epsilon")
        .unwrap();
    assert!((eps - 1e-5).abs() < 1e-9, "rms eps {eps}");
}

#[test]
fn smollm2_tensors_are_where_the_architecture_says() {
    let f = model();
    // 30 blocks x 9 tensors (attn q/k/v/output, ffn gate/up/down, two norms) + embedding +
    // output norm; the output head is tied to the embedding and not stored.
    assert_eq!(f.tensors.len(), 30 * 9 + 2);
    assert!(f.tensor("output.weight").is_none());
    let emb = f.tensor("token_embd.weight").unwrap();
    assert_eq!(emb.dims, vec![576, 49152]);
    for l in 0..30 {
        let down = f.tensor(&format!("blk.{l}.ffn_down.weight")).unwrap();
        // GGML order: dims[0] is the input (key) dimension d_ff, dims[1] the output d_model.
        assert_eq!(down.dims, vec![1536, 576], "layer {l}");
        assert!(
            matches!(down.dtype, GgmlType::Q4_1 | GgmlType::Q8_0),
            "{:?}",
            down.dtype
        );
        let norm = f.tensor(&format!("blk.{l}.attn_norm.weight")).unwrap();
        assert_eq!(norm.dtype, GgmlType::F32);
    }
    let vocab = match f.get("tokenizer.ggml.tokens").unwrap() {
        eamet_hooks::gguf::MetaValue::Array(v) => v.len(),
        other => panic!("tokens is {}", other.type_name()),
    };
    assert_eq!(vocab, 49152);
    // Every tensor's data lies inside the file and after the header.
    for t in &f.tensors {
        assert!(
            t.offset >= f.data_offset && t.offset + t.size <= f.file_len(),
            "{}",
            t.name
        );
    }
}

#[test]
fn libtorch_is_linked_and_computes() {
    let r = eamet_hooks::runtime::self_check().unwrap();
    assert_eq!(r.dot, 14.0);
    assert_eq!(r.grad, vec![2.0, 4.0, 6.0]);
    assert!(r.threads >= 1);
}
