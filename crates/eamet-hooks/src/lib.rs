//! # eamet-hooks
//!
//! The model layer of eamet-rs: everything a locate-then-edit method needs from a causal
//! language model, on libtorch (via [`tch`]). Its one job is to run real pretrained
//! transformers with *hooks*: read keys (the input of the MLP output projection `W_out`),
//! add vectors to MLP outputs, return log-probabilities only where asked, and patch `W_out`.
//!
//! Available now:
//! - [`gguf`]: a bounds-checked reader for GGUF v2/v3 headers, typed metadata and tensor
//!   descriptors over a memory map. Malformed files give a [`gguf::GgufError`] naming the
//!   field and offset, never a panic or a giant allocation.
//! - [`info`]: the hyperparameters editing needs, read from a GGUF header.
//! - [`paths`]: where the per-user cache and the default model live.
//! - [`quant`]: dequantization of GGML blocks (F32/F16/BF16, Q4_0/1, Q5_0/1, Q8_0,
//!   Q4_K/Q5_K/Q6_K) to `f32`, checked against the `gguf` Python package.
//! - [`runtime`]: a check that libtorch is linked and computes (including autograd).
//!
//! - [`llama`]: the Llama family (Llama 2, Mistral, Qwen2, SmolLM2) from GGUF or Hugging Face
//!   safetensors, with the hookable forward ([`EditableLm`]) and generation.
//! - [`patch`]: an edit's `W_out` deltas as a file, applicable to the same base model.
//! - [`export`]: the edited model as GGUF (llama.cpp) or as a safetensors directory
//!   (transformers).
#![deny(missing_docs)]

pub mod config;
pub mod error;
pub mod export;
pub mod gguf;
pub mod info;
pub mod llama;
pub mod model;
pub mod patch;
pub mod paths;
pub mod quant;
pub mod runtime;
pub mod tokenizer;

pub use config::ModelConfig;
pub use error::{ModelError, Result};
pub use llama::LlamaModel;
pub use model::{
    Batch, Capture, Edit, EditableLm, JoinedStart, LogProbs, Output, Padding, Plan, Site, Start,
    TokenPicker,
};
pub use tch;
