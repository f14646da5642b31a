//! The error type of model loading, forward passes and patches.

use std::path::PathBuf;

/// Everything that can go wrong between a model file and a forward pass.
#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    /// Malformed or unreadable GGUF file.
    #[error(transparent)]
    Gguf(#[from] crate::gguf::GgufError),
    /// A tensor could not be dequantized.
    #[error(transparent)]
    Quant(#[from] crate::quant::QuantError),
    /// The tokenizer could not be built.
    #[error(transparent)]
    Tokenizer(#[from] crate::tokenizer::TokenizerError),
    /// A file could not be read or written.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// A safetensors file is malformed.
    #[error("safetensors file {path}: {detail}")]
    Safetensors {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        detail: String,
    },
    /// The configuration is missing a field, has a bad value, or names an unsupported model.
    #[error("model config: {0}")]
    Config(String),
    /// The file names an architecture (GGUF `general.architecture`, or `model_type` of a
    /// `config.json`) that this crate does not implement.
    #[error("{format} architecture {name:?} is not supported (supported: {supported})")]
    UnsupportedArchitecture {
        /// The architecture as the file names it.
        name: String,
        /// Where it was read: `GGUF` or `config.json`.
        format: &'static str,
        /// The architectures that are supported from that format, comma-separated.
        supported: String,
    },
    /// The configuration asks for a variant of a supported architecture that is not
    /// implemented (e.g. a GPT-2 `activation_function` other than `gelu_new`).
    #[error("{arch} setting {field} = {value} is not supported (supported: {supported})")]
    UnsupportedSetting {
        /// The architecture (`config.json` model type).
        arch: String,
        /// The configuration field.
        field: String,
        /// Its value, as JSON.
        value: String,
        /// The values that are supported, comma-separated.
        supported: String,
    },
    /// A weight the architecture needs is not in the checkpoint.
    #[error("tensor {name} is missing from {source_desc}")]
    MissingTensor {
        /// The tensor name.
        name: String,
        /// Where it was looked for.
        source_desc: String,
    },
    /// A tensor has another shape than the configuration implies.
    #[error("tensor {name} has shape {got:?}, expected {expected:?}")]
    Shape {
        /// The tensor.
        name: String,
        /// What the config implies.
        expected: Vec<i64>,
        /// What the file holds.
        got: Vec<i64>,
    },
    /// A layer index outside the model.
    #[error("layer {layer} does not exist (the model has {n_layers} layers)")]
    BadLayer {
        /// Requested layer.
        layer: usize,
        /// Layers in the model.
        n_layers: usize,
    },
    /// An invalid request to the forward pass (position out of range, empty batch, ...).
    #[error("invalid request: {0}")]
    Request(String),
    /// A patch file cannot be used.
    #[error("patch {path}: {detail}")]
    Patch {
        /// The patch file.
        path: PathBuf,
        /// What is wrong.
        detail: String,
    },
    /// An export (GGUF file or safetensors directory) cannot be written.
    #[error(transparent)]
    Export(Box<crate::export::ExportError>),
    /// The requested device cannot be used (e.g. CUDA with a CPU-only libtorch).
    #[error("device {device} is not available: {reason}")]
    DeviceUnavailable {
        /// The device as requested (`cuda:0`).
        device: String,
        /// What is missing.
        reason: String,
    },
    /// libtorch raised an error.
    #[error("libtorch: {0}")]
    Torch(#[from] tch::TchError),
}

/// Result alias.
pub type Result<T> = std::result::Result<T, ModelError>;

pub(crate) fn io_err(path: impl Into<PathBuf>) -> impl FnOnce(std::io::Error) -> ModelError {
    let path = path.into();
    move |source| ModelError::Io { path, source }
}
