//! Model configuration: the hyperparameters of a decoder-only transformer, read from a GGUF
//! header or a Hugging Face `config.json`.

use crate::error::{ModelError, Result};
use crate::gguf::GgufFile;
use serde::{Deserialize, Serialize};

/// Architecture family. The Llama family (Llama 2, Mistral, Qwen2/2.5, DeepSeek-LLM, SmolLM2)
/// shares one implementation: RMSNorm, rotary embeddings, grouped-query attention, SwiGLU MLP.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Family {
    /// Llama-style decoder (no attention biases unless `qkv_bias`).
    Llama,
}

/// Hyperparameters of a Llama-family model.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ModelConfig {
    /// Architecture family.
    pub family: Family,
    /// Name of the architecture as the source file states it (`llama`, `qwen2`, `mistral`, ...).
    pub arch_name: String,
    /// Vocabulary size.
    pub vocab_size: usize,
    /// Residual-stream width.
    pub d_model: usize,
    /// MLP hidden width (the key dimension of `W_out`).
    pub d_ff: usize,
    /// Number of transformer blocks.
    pub n_layers: usize,
    /// Attention heads.
    pub n_heads: usize,
    /// Key/value heads (GQA); divides `n_heads`.
    pub n_kv_heads: usize,
    /// Width of one head.
    pub head_dim: usize,
    /// RMSNorm epsilon.
    pub rms_eps: f64,
    /// Rotary embedding base.
    pub rope_theta: f64,
    /// Context length the model was trained with (0 if unknown).
    pub max_positions: usize,
    /// LM head shares the token embedding.
    pub tied_embeddings: bool,
    /// Biases on the q, k, v projections (Qwen2).
    pub qkv_bias: bool,
}

impl ModelConfig {
    /// Check internal consistency; every loader calls this.
    pub fn validate(&self) -> Result<()> {
        let bad = |m: String| Err(ModelError::Config(m));
        if self.vocab_size == 0 || self.d_model == 0 || self.d_ff == 0 || self.n_layers == 0 {
            return bad(format!(
                "zero size in vocab {} d_model {} d_ff {} layers {}",
                self.vocab_size, self.d_model, self.d_ff, self.n_layers
            ));
        }
        if self.n_heads == 0 || self.n_kv_heads == 0 || self.n_heads % self.n_kv_heads != 0 {
            return bad(format!(
                "{} attention heads cannot be grouped over {} key/value heads",
                self.n_heads, self.n_kv_heads
            ));
        }
        if self.head_dim == 0 || self.head_dim % 2 != 0 {
            return bad(format!(
                "head width {} must be positive and even (rotary pairs)",
                self.head_dim
            ));
        }
        if !(self.rms_eps > 0.0 && self.rms_eps.is_finite()) {
            return bad(format!("rms_eps {} must be positive", self.rms_eps));
        }
        if !(self.rope_theta > 0.0 && self.rope_theta.is_finite()) {
            return bad(format!("rope_theta {} must be positive", self.rope_theta));
        }
        Ok(())
    }

    /// Read from a GGUF header (`llama` and `qwen2` architectures).
    pub fn from_gguf(f: &GgufFile) -> Result<Self> {
        let arch = f.architecture()?.to_string();
        let qkv_bias = match arch.as_str() {
            "llama" | "mistral" => false,
            "qwen2" => true,
            other => {
                return Err(ModelError::Config(format!(
                "GGUF architecture {other:?} is not supported (supported: llama, mistral, qwen2)"
            )))
            }
        };
        let u = |k: &str| -> Result<usize> { Ok(f.arch_u64(k)? as usize) };
        let d_model = u("embedding_length")?;
        let n_heads = u("attention.head_count")?;
        let n_kv_heads = u("attention.head_count_kv").unwrap_or(n_heads);
        let head_dim = match f.arch_u64("attention.key_length") {
            Ok(v) => v as usize,
            Err(_) if n_heads > 0 => d_model / n_heads,
            Err(e) => return Err(e.into()),
        };
        let vocab_size = match f.get("tokenizer.ggml.tokens") {
            Some(crate::gguf::MetaValue::Array(v)) => v.len(),
            _ => f
                .tensor("token_embd.weight")
                .and_then(|t| t.dims.get(1).copied())
                .unwrap_or(0) as usize,
        };
        let cfg = ModelConfig {
            family: Family::Llama,
            arch_name: arch.clone(),
            vocab_size,
            d_model,
            d_ff: u("feed_forward_length")?,
            n_layers: u("block_count")?,
            n_heads,
            n_kv_heads,
            head_dim,
            rms_eps: f.metadata_f64(&format!("{arch}.attention.layer_norm_rms_epsilon"))?,
            rope_theta: f
                .metadata_f64(&format!("{arch}.rope.freq_base"))
                .unwrap_or(10_000.0),
            max_positions: u("context_length").unwrap_or(0),
            tied_embeddings: f.tensor("output.weight").is_none(),
            qkv_bias,
        };
        cfg.validate()?;
        Ok(cfg)
    }

    /// Read a Hugging Face `config.json` (model types `llama`, `mistral`, `qwen2`).
    pub fn from_hf_json(text: &str) -> Result<Self> {
        #[derive(Deserialize)]
        struct Hf {
            model_type: Option<String>,
            vocab_size: usize,
            hidden_size: usize,
            intermediate_size: usize,
            num_hidden_layers: usize,
            num_attention_heads: usize,
            num_key_value_heads: Option<usize>,
            head_dim: Option<usize>,
            rms_norm_eps: f64,
            rope_theta: Option<f64>,
            max_position_embeddings: Option<usize>,
            tie_word_embeddings: Option<bool>,
            attention_bias: Option<bool>,
            rope_scaling: Option<serde_json::Value>,
            /// transformers >= 5 writes `{"rope_theta": .., "rope_type": ..}` here instead.
            rope_parameters: Option<serde_json::Value>,
            hidden_act: Option<String>,
        }
        let hf: Hf = serde_json::from_str(text)
            .map_err(|e| ModelError::Config(format!("config.json: {e}")))?;
        let model_type = hf.model_type.unwrap_or_default();
        let qkv_bias = match model_type.as_str() {
            "llama" | "mistral" => hf.attention_bias.unwrap_or(false),
            "qwen2" => true,
            other => {
                return Err(ModelError::Config(format!(
                    "config.json model_type {other:?} is not supported (supported: llama, mistral, qwen2)"
                )))
            }
        };
        let mut rope_theta = hf.rope_theta;
        if let Some(p) = hf.rope_parameters.as_ref().filter(|v| !v.is_null()) {
            let kind = p
                .get("rope_type")
                .and_then(|t| t.as_str())
                .unwrap_or("default");
            if kind != "default" {
                return Err(ModelError::Config(format!(
                    "rope_parameters.rope_type {kind:?} is not supported yet (default only)"
                )));
            }
            if let Some(t) = p.get("rope_theta").and_then(|t| t.as_f64()) {
                rope_theta = Some(t);
            }
        }
        if let Some(s) = hf.rope_scaling.as_ref().filter(|v| !v.is_null()) {
            return Err(ModelError::Config(format!(
                "rope_scaling {s} is not supported yet (plain rotary embeddings only)"
            )));
        }
        if let Some(act) = hf.hidden_act.as_deref().filter(|a| *a != "silu") {
            return Err(ModelError::Config(format!(
                "hidden_act {act:?} is not supported (silu only)"
            )));
        }
        let n_heads = hf.num_attention_heads;
        let cfg = ModelConfig {
            family: Family::Llama,
            arch_name: model_type,
            vocab_size: hf.vocab_size,
            d_model: hf.hidden_size,
            d_ff: hf.intermediate_size,
            n_layers: hf.num_hidden_layers,
            n_heads,
            n_kv_heads: hf.num_key_value_heads.unwrap_or(n_heads),
            head_dim: hf
                .head_dim
                .unwrap_or(hf.hidden_size.checked_div(n_heads).unwrap_or(0)),
            rms_eps: hf.rms_norm_eps,
            rope_theta: rope_theta.unwrap_or(10_000.0),
            max_positions: hf.max_position_embeddings.unwrap_or(0),
            tied_embeddings: hf.tie_word_embeddings.unwrap_or(false),
            qkv_bias,
        };
        cfg.validate()?;
        Ok(cfg)
    }
}
