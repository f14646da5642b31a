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
//! - [`compute`]: the compute dtype ([`Dtype`]: f32, bf16, f16) and device of a model
//!   ([`LoadOptions`], for [`LlamaModel::from_gguf_with`] / [`LlamaModel::from_hf_dir_with`]);
//!   CUDA devices are checked before loading ([`compute::check_device`]).
//!
//! - [`llama`]: the Llama family (Llama 2, Mistral, Qwen2, SmolLM2) from GGUF or Hugging Face
//!   safetensors, Gemma 3 from GGUF, and GPT-2 and GPT-J from Hugging Face safetensors, with
//!   the hookable forward ([`EditableLm`]) and generation.
//! - [`patch`]: an edit's `W_out` deltas as a file, applicable to the same base model.
//! - [`atomic`]: atomic outputs (temporary file beside the destination, then a rename).
//! - [`export`]: the edited model as GGUF (llama.cpp) or as a safetensors directory
//!   (transformers).
//!
//! The main path: load a model, read the key of `W_out` at a token, add a vector to an MLP
//! output there and see the prediction move, then patch `W_out` and restore it.
//!
//! ```no_run
//! use eamet_hooks::tch::{Device, Kind, Tensor};
//! use eamet_hooks::{Batch, Capture, Edit, EditableLm, LlamaModel, LogProbs, Padding, Plan, Site};
//!
//! let path = eamet_hooks::paths::default_model().expect("a cache directory");
//! let mut model = LlamaModel::from_gguf(&path, Device::Cpu)?; // or LlamaModel::from_hf_dir
//! let ids = model.tokenizer().encode("The Eiffel Tower is located in the city of")?;
//! let (subject_last, pad) = (4, model.tokenizer().pad_id);
//! let batch = Batch::new(&[ids], pad, Padding::Right, Device::Cpu)?;
//! let last = batch.last_slots()[0];
//! let key = Capture { layer: 4, site: Site::MlpKey, at: Some(vec![(0, subject_last)]) };
//! let out = model.forward(&batch, &Plan {
//!     captures: vec![key],
//!     logprobs: Some(LogProbs::Full { at: vec![(0, last)] }),
//!     ..Default::default()
//! })?;
//! let k = out.captures[0].view([-1]); // d_ff values
//! // A vector added to block 4's MLP output at the subject's last token:
//! let d = model.config().d_model as i64;
//! let delta = Tensor::randn([1, d], (Kind::Float, Device::Cpu)) * 5.0;
//! let edit = Edit { layer: 4, at: vec![(0, subject_last)], delta };
//! let moved = model.forward(&batch, &Plan {
//!     edits: vec![edit],
//!     logprobs: Some(LogProbs::Full { at: vec![(0, last)] }),
//!     ..Default::default()
//! })?;
//! let (before, after) = (out.logprobs.unwrap(), moved.logprobs.unwrap());
//! println!("‖k‖ = {:.2}, top token {} -> {}", k.norm().double_value(&[]),
//!          before.argmax(-1, false).int64_value(&[0]), after.argmax(-1, false).int64_value(&[0]));
//! // An edit written into the weights: a rank-one update of W_out that adds r wherever the
//! // MLP's key is k (and less for other keys).
//! let r = Tensor::randn([d, 1], (Kind::Float, Device::Cpu));
//! let update = r.matmul(&k.view([1, -1])) / k.dot(&k);
//! model.apply_delta(4, &update)?;
//! assert_eq!(model.edited_layers(), [4]);
//! model.restore(); // every W_out back to the loaded weights, bit for bit
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
#![deny(missing_docs)]

pub mod atomic;
pub mod compute;
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
pub mod rng;
pub mod runtime;
pub mod tokenizer;

pub use compute::{Dtype, LoadOptions};
pub use config::ModelConfig;
pub use error::{ModelError, Result};
pub use llama::LlamaModel;
pub use model::{
    Batch, Capture, Edit, EditableLm, JoinedStart, LogProbs, Output, Padding, Plan, Site, Start,
    TokenPicker,
};
pub use tch;
