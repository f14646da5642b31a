//! A summary of a model file: the hyperparameters editing cares about.

use crate::gguf::{GgufFile, MetaValue, Result};
use std::collections::BTreeMap;
use std::fmt;

/// Hyperparameters and storage facts read from a GGUF header.
#[derive(Debug, Clone, PartialEq)]
pub struct ModelInfo {
    /// `general.name`, if present.
    pub name: Option<String>,
    /// `general.architecture`, e.g. `llama`.
    pub architecture: String,
    /// Number of transformer blocks.
    pub blocks: u64,
    /// Residual-stream width d_model.
    pub d_model: u64,
    /// MLP hidden width d_ff (the key dimension of `W_out`).
    pub d_ff: u64,
    /// Attention heads.
    pub heads: u64,
    /// Key/value heads (grouped-query attention); equals `heads` without GQA.
    pub kv_heads: u64,
    /// Context length the model was trained for.
    pub context: u64,
    /// Vocabulary size (length of `tokenizer.ggml.tokens`).
    pub vocab: u64,
    /// Whether the LM head shares the token embedding (no `output.weight` tensor).
    pub tied_embeddings: bool,
    /// Count of tensors per storage type.
    pub tensor_types: BTreeMap<String, usize>,
    /// Total parameters (elements of all tensors).
    pub parameters: u64,
    /// File size in bytes.
    pub file_bytes: u64,
}

impl ModelInfo {
    /// Read the summary; errors name the missing or mistyped key.
    pub fn from_gguf(f: &GgufFile) -> Result<Self> {
        let mut tensor_types = BTreeMap::new();
        for t in &f.tensors {
            *tensor_types.entry(t.dtype.to_string()).or_insert(0) += 1;
        }
        let heads = f.arch_u64("attention.head_count")?;
        let vocab = match f.get("tokenizer.ggml.tokens") {
            Some(MetaValue::Array(v)) => v.len() as u64,
            _ => f
                .tensor("token_embd.weight")
                .and_then(|t| t.dims.get(1).copied())
                .unwrap_or(0),
        };
        Ok(ModelInfo {
            name: f
                .get("general.name")
                .and_then(|v| v.as_str())
                .map(str::to_string),
            architecture: f.architecture()?.to_string(),
            blocks: f.arch_u64("block_count")?,
            d_model: f.arch_u64("embedding_length")?,
            d_ff: f.arch_u64("feed_forward_length")?,
            heads,
            kv_heads: f.arch_u64("attention.head_count_kv").unwrap_or(heads),
            context: f.arch_u64("context_length").unwrap_or(0),
            vocab,
            tied_embeddings: f.tensor("output.weight").is_none(),
            tensor_types,
            parameters: f.tensors.iter().map(|t| t.elements()).sum(),
            file_bytes: f.file_len(),
        })
    }
}

impl fmt::Display for ModelInfo {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "name           {}",
            self.name.as_deref().unwrap_or("(unnamed)")
        )?;
        writeln!(f, "architecture   {}", self.architecture)?;
        writeln!(f, "blocks         {}", self.blocks)?;
        writeln!(f, "d_model        {}", self.d_model)?;
        writeln!(f, "d_ff (keys)    {}", self.d_ff)?;
        writeln!(f, "heads          {} (kv {})", self.heads, self.kv_heads)?;
        writeln!(f, "context        {}", self.context)?;
        writeln!(f, "vocabulary     {}", self.vocab)?;
        writeln!(f, "tied embedding {}", self.tied_embeddings)?;
        writeln!(f, "parameters     {:.1} M", self.parameters as f64 / 1e6)?;
        let types: Vec<String> = self
            .tensor_types
            .iter()
            .map(|(k, v)| format!("{k}: {v}"))
            .collect();
        writeln!(f, "tensor types   {}", types.join(", "))?;
        write!(f, "file size      {:.1} MB", self.file_bytes as f64 / 1e6)
    }
}
