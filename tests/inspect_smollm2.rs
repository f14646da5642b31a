//! The facade's `inspect_model` on the real SmolLM2 model (fetched by `cargo xtask setup`).

#[test]
fn inspect_smollm2() {
    let path = eamet::hooks::paths::default_model().unwrap();
    assert!(
        path.exists(),
        "run `cargo xtask setup` first: {} missing",
        path.display()
    );
    let r = eamet::inspect_model(&path).unwrap();
    assert_eq!(r.info.architecture, "llama");
    assert_eq!(
        (r.info.blocks, r.info.d_model, r.info.d_ff),
        (30, 576, 1536)
    );
    assert_eq!((r.info.heads, r.info.kv_heads), (9, 3));
    assert_eq!(r.info.vocab, 49152);
    assert!(r.info.tied_embeddings);
    // 134.5 M parameters published for SmolLM2-135M (tied head counted once).
    assert!(
        (134_000_000..136_000_000).contains(&r.info.parameters),
        "{}",
        r.info.parameters
    );
    assert_eq!(r.runtime.dot, 14.0);
}

#[test]
fn inspect_rejects_a_non_gguf_file() {
    let dir = std::env::temp_dir().join(format!("eamet-inspect-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let p = dir.join("not-a-model.gguf");
    std::fs::write(&p, b"PK\x03\x04 this is a zip, not a GGUF file").unwrap();
    let e = eamet::inspect_model(&p).unwrap_err();
    assert!(e.to_string().contains("not a GGUF file"), "{e}");
    std::fs::remove_dir_all(&dir).unwrap();
}
