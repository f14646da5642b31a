//! Model configuration: the hyperparameters of a decoder-only transformer, read from a GGUF
//! header or a Hugging Face `config.json`.

use crate::error::{ModelError, Result};
use crate::gguf::{GgufFile, MetaValue};
use serde::{Deserialize, Serialize};

/// Architecture family. The Llama family (Llama 2, Mistral, Qwen2/2.5, DeepSeek-LLM, SmolLM2)
/// shares one implementation: RMSNorm, rotary embeddings, grouped-query attention, SwiGLU MLP.
/// Gemma 3 runs on the same code with the per-architecture switches of [`ModelConfig`] turned on
/// (q/k norms, post-attention and post-MLP norms, GeGLU, scaled embedding, sliding-window
/// layers with their own rotary base), and so do GPT-2 and GPT-J (LayerNorm with bias, a plain
/// two-matrix MLP with biases; GPT-2: learned absolute positions, fused and biased q/k/v;
/// GPT-J: partial interleaved rotary, attention and MLP in parallel, LM head with a bias). See
/// `docs/design/gpt2-gptj.md`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Family {
    /// Llama-style decoder (no attention biases unless `qkv_bias`).
    Llama,
    /// Gemma 3 text decoder (GGUF architecture `gemma3`).
    Gemma3,
    /// GPT-2 (`config.json` model type `gpt2`).
    Gpt2,
    /// GPT-J (`config.json` model type `gptj`).
    Gptj,
}

/// The GGUF architectures [`ModelConfig::from_gguf`] reads.
pub const SUPPORTED_GGUF_ARCHITECTURES: &[&str] = &["llama", "mistral", "qwen2", "gemma3"];

/// The `config.json` model types [`ModelConfig::from_hf_json`] reads.
pub const SUPPORTED_HF_MODEL_TYPES: &[&str] = &["llama", "mistral", "qwen2", "gpt2", "gptj"];

/// The `activation_function` values GPT-2 and GPT-J configurations may name (both are the tanh
/// approximation of GELU, [`Activation::GeluTanh`]).
pub const SUPPORTED_GPT_ACTIVATIONS: &[&str] = &["gelu_new", "gelu_pytorch_tanh"];

/// The MLP nonlinearity: of the gate in a gated MLP (`key = act(x·W_gate) ⊙ (x·W_up)`), or of
/// the hidden layer in a plain one (`key = act(x·W_up + b_up)`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Activation {
    /// SiLU (SwiGLU; the Llama family).
    #[default]
    Silu,
    /// GELU with the tanh approximation (GeGLU; Gemma's `gelu_pytorch_tanh`; GPT-2's and
    /// GPT-J's `gelu_new`).
    GeluTanh,
}

impl Activation {
    fn is_silu(&self) -> bool {
        *self == Activation::Silu
    }
}

/// The normalization of the blocks and of the final hidden states.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum NormKind {
    /// RMSNorm with a weight (Llama, Gemma).
    #[default]
    Rms,
    /// LayerNorm with a weight and a bias (GPT-2, GPT-J).
    Layer,
}

impl NormKind {
    fn is_rms(&self) -> bool {
        *self == NormKind::Rms
    }
}

/// How token positions enter the model.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PositionKind {
    /// Rotary embeddings on queries and keys, rotating the two halves of the rotary part of
    /// each head against each other (transformers' `rotate_half`: Llama, Gemma).
    #[default]
    Rotary,
    /// Rotary embeddings rotating adjacent pairs `(2i, 2i+1)` (GPT-J's `rotate_every_two`).
    RotaryInterleaved,
    /// Learned absolute position embeddings added to the token embeddings (GPT-2); no rotary.
    Learned,
}

impl PositionKind {
    fn is_rotary(&self) -> bool {
        *self == PositionKind::Rotary
    }
}

/// The shape of the MLP.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum MlpKind {
    /// `W_out · (act(W_gate x) ⊙ W_up x)` (Llama, Gemma).
    #[default]
    Gated,
    /// `W_out · act(W_up x + b_up) + b_out` (GPT-2's `c_fc`/`c_proj`, GPT-J's `fc_in`/`fc_out`).
    Plain,
}

impl MlpKind {
    fn is_gated(&self) -> bool {
        *self == MlpKind::Gated
    }
}

/// Hyperparameters of a supported decoder (Llama family, Gemma 3, GPT-2, GPT-J).
///
/// The fields after `qkv_bias` switch on Gemma 3's, GPT-2's and GPT-J's departures from Llama;
/// their defaults (and every Llama-family loader) leave them off, and they are not serialized
/// when off, so a Llama configuration reads and writes exactly as before they existed.
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
    /// Epsilon of the norms (RMSNorm, or LayerNorm when [`norm`](ModelConfig::norm) says so;
    /// the name is kept from when every model used RMSNorm).
    pub rms_eps: f64,
    /// Rotary embedding base (unused with learned positions).
    pub rope_theta: f64,
    /// Context length the model was trained with (0 if unknown); with learned positions, the
    /// number of position embeddings (a longer input is refused).
    pub max_positions: usize,
    /// LM head shares the token embedding.
    pub tied_embeddings: bool,
    /// Biases on the q, k, v projections (Qwen2).
    pub qkv_bias: bool,
    /// Gate nonlinearity of the MLP.
    #[serde(default, skip_serializing_if = "Activation::is_silu")]
    pub activation: Activation,
    /// Factor on the looked-up token embeddings (Gemma: `sqrt(d_model)`, applied in f32); the
    /// tied LM head uses the unscaled matrix.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub embed_scale: Option<f64>,
    /// Scale of the attention scores; `None` is `1/sqrt(head_dim)`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub attn_scale: Option<f64>,
    /// RMSNorm over each head's queries and keys (weights shared by the heads), before the
    /// rotary embedding.
    #[serde(default, skip_serializing_if = "is_false")]
    pub qk_norm: bool,
    /// RMSNorm on the attention output and on the MLP output before each is added to the
    /// residual stream (Gemma's post-attention and post-feed-forward norms).
    #[serde(default, skip_serializing_if = "is_false")]
    pub sandwich_norms: bool,
    /// Width of the local attention window in token positions: a query at position `i` sees
    /// keys at positions `j` with `i - j < window`, on the layers that [`sliding_layers`]
    /// marks.
    ///
    /// [`sliding_layers`]: ModelConfig::sliding_layers
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sliding_window: Option<usize>,
    /// Which layers use the sliding window (and [`rope_theta_local`]); empty: none.
    ///
    /// [`rope_theta_local`]: ModelConfig::rope_theta_local
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub sliding_layers: Vec<bool>,
    /// Rotary base of the sliding-window layers (`None`: [`rope_theta`](ModelConfig::rope_theta)).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rope_theta_local: Option<f64>,
    /// `c·tanh(logits / c)` on the LM head's output when set.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub final_logit_softcap: Option<f64>,
    /// RMSNorm or LayerNorm (GPT-2, GPT-J), in the blocks and before the LM head.
    #[serde(default, skip_serializing_if = "NormKind::is_rms")]
    pub norm: NormKind,
    /// Rotary (half-split or interleaved) or learned absolute positions.
    #[serde(default, skip_serializing_if = "PositionKind::is_rotary")]
    pub position_kind: PositionKind,
    /// Rotary embedding on the first `rotary_dim` values of each head only (GPT-J); `None`: the
    /// whole head. See [`rotary_width`](ModelConfig::rotary_width).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rotary_dim: Option<usize>,
    /// Gated or plain MLP.
    #[serde(default, skip_serializing_if = "MlpKind::is_gated")]
    pub mlp: MlpKind,
    /// Biases on the MLP's input and output projections (GPT-2, GPT-J).
    #[serde(default, skip_serializing_if = "is_false")]
    pub mlp_bias: bool,
    /// Bias on the attention output projection (GPT-2).
    #[serde(default, skip_serializing_if = "is_false")]
    pub attn_out_bias: bool,
    /// Attention and MLP read the same normalized input and are added to the residual stream
    /// together: `h + attn(ln(h)) + mlp(ln(h))` (GPT-J; no second norm).
    #[serde(default, skip_serializing_if = "is_false")]
    pub parallel_block: bool,
    /// Bias on the LM head (GPT-J).
    #[serde(default, skip_serializing_if = "is_false")]
    pub lm_head_bias: bool,
}

fn is_false(b: &bool) -> bool {
    !*b
}

/// A GGUF `…sliding_window_pattern` value: a period `n` (layer `l` slides iff `l % n < n - 1`)
/// or one boolean per layer.
fn sliding_pattern(v: Option<&MetaValue>, n_layers: usize) -> Result<Vec<bool>> {
    let bad = |m: String| Err(ModelError::Config(m));
    match v {
        None => Ok((0..n_layers).map(|l| l % 6 < 5).collect()),
        Some(MetaValue::Array(items)) => {
            if items.len() != n_layers {
                return bad(format!(
                    "attention.sliding_window_pattern has {} entries for {n_layers} layers",
                    items.len()
                ));
            }
            items
                .iter()
                .map(|x| match x {
                    MetaValue::Bool(b) => Ok(*b),
                    other => Err(ModelError::Config(format!(
                        "attention.sliding_window_pattern holds {}, expected bool",
                        other.type_name()
                    ))),
                })
                .collect()
        }
        Some(x) => match x.as_u64() {
            Some(n) if n > 0 => {
                let n = n as usize;
                Ok((0..n_layers).map(|l| l % n < n - 1).collect())
            }
            _ => bad(format!(
                "attention.sliding_window_pattern is {x:?}, expected a positive period or bools"
            )),
        },
    }
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
        if self.head_dim == 0 {
            return bad("head width must be positive".into());
        }
        if self.position_kind == PositionKind::Learned {
            if self.max_positions == 0 {
                return bad("learned positions need a positive number of positions".into());
            }
        } else {
            let r = self.rotary_width();
            if r == 0 || r % 2 != 0 || r > self.head_dim {
                return bad(format!(
                    "rotary width {r} must be positive, even (rotary pairs) and at most the head width {}",
                    self.head_dim
                ));
            }
        }
        if !(self.rms_eps > 0.0 && self.rms_eps.is_finite()) {
            return bad(format!("rms_eps {} must be positive", self.rms_eps));
        }
        if !(self.rope_theta > 0.0 && self.rope_theta.is_finite()) {
            return bad(format!("rope_theta {} must be positive", self.rope_theta));
        }
        let positive = |x: Option<f64>| x.is_none_or(|v| v > 0.0 && v.is_finite());
        for (name, v) in [
            ("embed_scale", self.embed_scale),
            ("attn_scale", self.attn_scale),
            ("rope_theta_local", self.rope_theta_local),
            ("final_logit_softcap", self.final_logit_softcap),
        ] {
            if !positive(v) {
                return bad(format!("{name} {v:?} must be positive and finite"));
            }
        }
        if !self.sliding_layers.is_empty() && self.sliding_layers.len() != self.n_layers {
            return bad(format!(
                "sliding_layers has {} entries for {} layers",
                self.sliding_layers.len(),
                self.n_layers
            ));
        }
        if self.sliding_window == Some(0) {
            return bad("sliding_window must be positive".into());
        }
        if self.sliding_layers.iter().any(|&s| s) && self.sliding_window.is_none() {
            return bad("sliding layers are marked but no sliding_window is set".into());
        }
        Ok(())
    }

    /// How many values of each head the rotary embedding turns: [`rotary_dim`] or the whole
    /// head.
    ///
    /// [`rotary_dim`]: ModelConfig::rotary_dim
    pub fn rotary_width(&self) -> usize {
        self.rotary_dim.unwrap_or(self.head_dim)
    }

    /// Whether layer `layer` attends within [`sliding_window`](ModelConfig::sliding_window).
    pub fn is_sliding(&self, layer: usize) -> bool {
        self.sliding_window.is_some() && self.sliding_layers.get(layer).copied().unwrap_or(false)
    }

    /// Read from a GGUF header (architectures in [`SUPPORTED_GGUF_ARCHITECTURES`]).
    ///
    /// # Errors
    /// [`ModelError::UnsupportedArchitecture`] for any other architecture; a GGUF error or
    /// [`ModelError::Config`] for a missing or inconsistent hyperparameter.
    pub fn from_gguf(f: &GgufFile) -> Result<Self> {
        let arch = f.architecture()?.to_string();
        let qkv_bias = match arch.as_str() {
            "llama" | "mistral" | "gemma3" => false,
            "qwen2" => true,
            other => {
                return Err(ModelError::UnsupportedArchitecture {
                    name: other.to_string(),
                    format: "GGUF",
                    supported: SUPPORTED_GGUF_ARCHITECTURES.join(", "),
                })
            }
        };
        if arch == "gemma3" {
            return Self::gemma3_from_gguf(f, &arch);
        }
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
            ..Self::llama_defaults()
        };
        cfg.validate()?;
        Ok(cfg)
    }

    /// The Gemma 3 switches off (what every Llama-family loader starts from).
    fn llama_defaults() -> Self {
        ModelConfig {
            family: Family::Llama,
            arch_name: String::new(),
            vocab_size: 0,
            d_model: 0,
            d_ff: 0,
            n_layers: 0,
            n_heads: 0,
            n_kv_heads: 0,
            head_dim: 0,
            rms_eps: 0.0,
            rope_theta: 0.0,
            max_positions: 0,
            tied_embeddings: false,
            qkv_bias: false,
            activation: Activation::Silu,
            embed_scale: None,
            attn_scale: None,
            qk_norm: false,
            sandwich_norms: false,
            sliding_window: None,
            sliding_layers: Vec::new(),
            rope_theta_local: None,
            final_logit_softcap: None,
            norm: NormKind::Rms,
            position_kind: PositionKind::Rotary,
            rotary_dim: None,
            mlp: MlpKind::Gated,
            mlp_bias: false,
            attn_out_bias: false,
            parallel_block: false,
            lm_head_bias: false,
        }
    }

    /// Gemma 3 (text decoder) from a GGUF header; see `docs/design/gemma3.md` §2.1.
    fn gemma3_from_gguf(f: &GgufFile, arch: &str) -> Result<Self> {
        let u = |k: &str| -> Result<usize> { Ok(f.arch_u64(k)? as usize) };
        let key = |k: &str| format!("{arch}.{k}");
        let d_model = u("embedding_length")?;
        let n_heads = u("attention.head_count")?;
        let n_layers = u("block_count")?;
        // Gemma's head width is not d_model / heads (640 / 4 = 160 for 270M, but 256 in use).
        let head_dim = u("attention.key_length")?;
        if let Ok(v) = u("attention.value_length") {
            if v != head_dim {
                return Err(ModelError::Config(format!(
                    "attention.value_length {v} differs from key_length {head_dim}"
                )));
            }
        }
        if let Some(kind) = f.get(&key("rope.scaling.type")) {
            let kind = kind.as_str().unwrap_or("(not a string)");
            if kind != "none" {
                return Err(ModelError::Config(format!(
                    "{arch}: rope scaling {kind:?} is not supported (plain rotary embeddings only)"
                )));
            }
        }
        let vocab_size = match f.get("tokenizer.ggml.tokens") {
            Some(MetaValue::Array(v)) => v.len(),
            _ => f
                .tensor("token_embd.weight")
                .and_then(|t| t.dims.get(1).copied())
                .unwrap_or(0) as usize,
        };
        let softcap = match f.get(&key("final_logit_softcapping")) {
            None => None,
            Some(v) => Some(v.as_f64().ok_or_else(|| {
                ModelError::Config(format!(
                    "{arch}.final_logit_softcapping is {}, expected a number",
                    v.type_name()
                ))
            })?),
        };
        // llama.cpp's one exception (Gemma 3 27B, 62 layers) scales by d_model / heads.
        let scale_dim = if n_layers == 62 && n_heads > 0 {
            d_model / n_heads
        } else {
            head_dim
        };
        let cfg = ModelConfig {
            family: Family::Gemma3,
            arch_name: arch.to_string(),
            vocab_size,
            d_model,
            d_ff: u("feed_forward_length")?,
            n_layers,
            n_heads,
            n_kv_heads: u("attention.head_count_kv").unwrap_or(n_heads),
            head_dim,
            rms_eps: f.metadata_f64(&key("attention.layer_norm_rms_epsilon"))?,
            rope_theta: f
                .metadata_f64(&key("rope.freq_base"))
                .unwrap_or(1_000_000.0),
            max_positions: u("context_length").unwrap_or(0),
            tied_embeddings: f.tensor("output.weight").is_none(),
            qkv_bias: false,
            activation: Activation::GeluTanh,
            embed_scale: Some((d_model as f64).sqrt()),
            attn_scale: (scale_dim > 0).then(|| 1.0 / (scale_dim as f64).sqrt()),
            qk_norm: true,
            sandwich_norms: true,
            sliding_window: Some(u("attention.sliding_window")?),
            sliding_layers: sliding_pattern(
                f.get(&key("attention.sliding_window_pattern")),
                n_layers,
            )?,
            // Not stored in the file: llama.cpp and transformers both fix it at 10,000.
            rope_theta_local: Some(10_000.0),
            final_logit_softcap: softcap,
            ..Self::llama_defaults()
        };
        cfg.validate()?;
        Ok(cfg)
    }

    /// Read a Hugging Face `config.json` (model types in [`SUPPORTED_HF_MODEL_TYPES`]).
    ///
    /// # Errors
    /// [`ModelError::UnsupportedArchitecture`] for any other model type (Gemma 3 loads from
    /// GGUF only for now); [`ModelError::UnsupportedSetting`] for a GPT-2 or GPT-J setting that
    /// is not implemented (another activation, GPT-2's layer-scaled or reordered attention,
    /// cross-attention); [`ModelError::Config`] for malformed or unsupported settings.
    pub fn from_hf_json(text: &str) -> Result<Self> {
        #[derive(Deserialize)]
        struct Hf {
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
        let raw: serde_json::Value = serde_json::from_str(text)
            .map_err(|e| ModelError::Config(format!("config.json: {e}")))?;
        // The model type first: another architecture's config has other fields.
        let model_type = raw
            .get("model_type")
            .and_then(|t| t.as_str())
            .unwrap_or_default()
            .to_string();
        if !SUPPORTED_HF_MODEL_TYPES.contains(&model_type.as_str()) {
            return Err(ModelError::UnsupportedArchitecture {
                name: model_type,
                format: "config.json",
                supported: SUPPORTED_HF_MODEL_TYPES.join(", "),
            });
        }
        match model_type.as_str() {
            "gpt2" => return Self::gpt2_from_hf(&raw),
            "gptj" => return Self::gptj_from_hf(&raw),
            _ => {}
        }
        let hf: Hf = serde_json::from_value(raw)
            .map_err(|e| ModelError::Config(format!("config.json: {e}")))?;
        let qkv_bias = match model_type.as_str() {
            "llama" | "mistral" => hf.attention_bias.unwrap_or(false),
            "qwen2" => true,
            other => {
                return Err(ModelError::UnsupportedArchitecture {
                    name: other.to_string(),
                    format: "config.json",
                    supported: SUPPORTED_HF_MODEL_TYPES.join(", "),
                })
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
            ..Self::llama_defaults()
        };
        cfg.validate()?;
        Ok(cfg)
    }

    /// GPT-2 from its `config.json` (transformers' field names, with their defaults for absent
    /// fields); see `docs/design/gpt2-gptj.md`.
    fn gpt2_from_hf(raw: &serde_json::Value) -> Result<Self> {
        let f = HfFields { raw, arch: "gpt2" };
        for field in [
            "scale_attn_by_inverse_layer_idx",
            "reorder_and_upcast_attn",
            "add_cross_attention",
        ] {
            f.refuse_true(field)?;
        }
        let cfg = ModelConfig {
            qkv_bias: true,
            // `scale_attn_weights = false`: raw dot products.
            attn_scale: (!f.bool("scale_attn_weights")?.unwrap_or(true)).then_some(1.0),
            position_kind: PositionKind::Learned,
            attn_out_bias: true,
            ..Self::gpt_common(&f, Family::Gpt2, 1024, true)?
        };
        cfg.validate()?;
        Ok(cfg)
    }

    /// GPT-J from its `config.json`; see `docs/design/gpt2-gptj.md`.
    fn gptj_from_hf(raw: &serde_json::Value) -> Result<Self> {
        let f = HfFields { raw, arch: "gptj" };
        // transformers' default when the field is absent is 64; an explicit null turns the
        // whole head.
        let rotary_dim = match raw.get("rotary_dim") {
            None => Some(64),
            Some(serde_json::Value::Null) => None,
            Some(_) => f.usize(&["rotary_dim"])?,
        };
        let cfg = ModelConfig {
            qkv_bias: false,
            position_kind: PositionKind::RotaryInterleaved,
            rotary_dim,
            parallel_block: true,
            lm_head_bias: true,
            ..Self::gpt_common(&f, Family::Gptj, 2048, false)?
        };
        cfg.validate()?;
        Ok(cfg)
    }

    /// What GPT-2 and GPT-J configs share: the widths and depth under their GPT or generic
    /// names, LayerNorm, a plain MLP with biases, the activation. The context length and tied
    /// embeddings default per family, as transformers' config classes do.
    fn gpt_common(
        f: &HfFields,
        family: Family,
        default_positions: usize,
        default_tied: bool,
    ) -> Result<Self> {
        let (d_model, n_heads, head_dim) = f.width_and_heads()?;
        Ok(ModelConfig {
            family,
            arch_name: f.arch.into(),
            vocab_size: f.need_usize(&["vocab_size"])?,
            d_model,
            d_ff: f.usize(&["n_inner"])?.unwrap_or(4 * d_model),
            n_layers: f.need_usize(&["n_layer", "num_hidden_layers"])?,
            n_heads,
            n_kv_heads: n_heads,
            head_dim,
            rms_eps: f.f64("layer_norm_epsilon")?.unwrap_or(1e-5),
            // GPT-2 has no rotary embedding and GPT-J's base is fixed: a valid value either way.
            rope_theta: 10_000.0,
            max_positions: f
                .usize(&["n_positions", "max_position_embeddings"])?
                .unwrap_or(default_positions),
            tied_embeddings: f.bool("tie_word_embeddings")?.unwrap_or(default_tied),
            activation: f.activation()?,
            norm: NormKind::Layer,
            mlp: MlpKind::Plain,
            mlp_bias: true,
            ..Self::llama_defaults()
        })
    }
}

/// Fields of a GPT-2 / GPT-J `config.json`, read by hand: transformers accepts the generic names
/// (`hidden_size`, ...) as aliases of the GPT ones, and a null means "absent".
struct HfFields<'a> {
    raw: &'a serde_json::Value,
    arch: &'static str,
}

impl<'a> HfFields<'a> {
    fn get<'n>(&self, names: &[&'n str]) -> Option<(&'n str, &'a serde_json::Value)> {
        names
            .iter()
            .find_map(|&n| self.raw.get(n).filter(|v| !v.is_null()).map(|v| (n, v)))
    }

    fn bad(name: &str, v: &serde_json::Value, want: &str) -> ModelError {
        ModelError::Config(format!("config.json: {name} is {v}, expected {want}"))
    }

    fn usize(&self, names: &[&str]) -> Result<Option<usize>> {
        self.get(names)
            .map(|(n, v)| {
                v.as_u64()
                    .map(|x| x as usize)
                    .ok_or_else(|| Self::bad(n, v, "a non-negative integer"))
            })
            .transpose()
    }

    fn need_usize(&self, names: &[&str]) -> Result<usize> {
        self.usize(names)?.ok_or_else(|| {
            ModelError::Config(format!(
                "config.json ({}): missing field `{}`",
                self.arch, names[0]
            ))
        })
    }

    fn f64(&self, name: &str) -> Result<Option<f64>> {
        self.get(&[name])
            .map(|(n, v)| v.as_f64().ok_or_else(|| Self::bad(n, v, "a number")))
            .transpose()
    }

    fn bool(&self, name: &str) -> Result<Option<bool>> {
        self.get(&[name])
            .map(|(n, v)| v.as_bool().ok_or_else(|| Self::bad(n, v, "true or false")))
            .transpose()
    }

    /// An error when the flag is set: the setting is not implemented.
    fn refuse_true(&self, name: &str) -> Result<()> {
        if self.bool(name)? == Some(true) {
            return Err(ModelError::UnsupportedSetting {
                arch: self.arch.into(),
                field: name.into(),
                value: "true".into(),
                supported: "false".into(),
            });
        }
        Ok(())
    }

    /// `activation_function` (default `gelu_new`).
    fn activation(&self) -> Result<Activation> {
        let name = "activation_function";
        let act = match self.get(&[name]) {
            None => "gelu_new",
            Some((n, v)) => v.as_str().ok_or_else(|| Self::bad(n, v, "a string"))?,
        };
        if SUPPORTED_GPT_ACTIVATIONS.contains(&act) {
            Ok(Activation::GeluTanh)
        } else {
            Err(ModelError::UnsupportedSetting {
                arch: self.arch.into(),
                field: name.into(),
                value: format!("{act:?}"),
                supported: SUPPORTED_GPT_ACTIVATIONS.join(", "),
            })
        }
    }

    /// `(n_embd, n_head, n_embd / n_head)`; the heads must divide the width.
    fn width_and_heads(&self) -> Result<(usize, usize, usize)> {
        let d = self.need_usize(&["n_embd", "hidden_size"])?;
        let h = self.need_usize(&["n_head", "num_attention_heads"])?;
        if h == 0 || d % h != 0 {
            return Err(ModelError::Config(format!(
                "{}: n_embd {d} is not divisible into {h} heads",
                self.arch
            )));
        }
        Ok((d, h, d / h))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::gguf::header_only;

    fn s(v: &str) -> MetaValue {
        MetaValue::String(v.into())
    }

    /// A small Gemma 3 header: 7 layers, d_model 64, 4 heads of 32 (not 64 / 4 = 16).
    fn gemma3(extra: &[(&str, MetaValue)], skip: &str) -> Vec<(String, MetaValue)> {
        let mut kv: Vec<(String, MetaValue)> = vec![
            ("general.architecture".into(), s("gemma3")),
            ("gemma3.embedding_length".into(), MetaValue::U32(64)),
            ("gemma3.feed_forward_length".into(), MetaValue::U32(128)),
            ("gemma3.block_count".into(), MetaValue::U32(7)),
            ("gemma3.attention.head_count".into(), MetaValue::U32(4)),
            ("gemma3.attention.head_count_kv".into(), MetaValue::U32(1)),
            ("gemma3.attention.key_length".into(), MetaValue::U32(32)),
            ("gemma3.attention.value_length".into(), MetaValue::U32(32)),
            (
                "gemma3.attention.layer_norm_rms_epsilon".into(),
                MetaValue::F32(1e-6),
            ),
            ("gemma3.rope.freq_base".into(), MetaValue::F32(1e6)),
            ("gemma3.attention.sliding_window".into(), MetaValue::U32(16)),
            ("gemma3.context_length".into(), MetaValue::U32(256)),
            (
                "tokenizer.ggml.tokens".into(),
                MetaValue::Array((0..10).map(|i| s(&format!("t{i}"))).collect()),
            ),
        ];
        kv.retain(|(k, _)| k != skip);
        kv.extend(extra.iter().map(|(k, v)| (k.to_string(), v.clone())));
        kv
    }

    fn read(kv: &[(String, MetaValue)]) -> Result<ModelConfig> {
        let kv: Vec<(&str, MetaValue)> = kv.iter().map(|(k, v)| (k.as_str(), v.clone())).collect();
        ModelConfig::from_gguf(&header_only(&kv))
    }

    #[test]
    fn unknown_architecture_is_named_with_the_supported_ones() {
        let f = header_only(&[("general.architecture", s("mamba"))]);
        let e = ModelConfig::from_gguf(&f).unwrap_err();
        let ModelError::UnsupportedArchitecture {
            name, supported, ..
        } = &e
        else {
            panic!("{e:?}");
        };
        assert_eq!(name, "mamba");
        assert_eq!(supported, "llama, mistral, qwen2, gemma3");
        let msg = e.to_string();
        assert!(msg.contains("\"mamba\"") && msg.contains("gemma3"), "{msg}");
        let e = ModelConfig::from_hf_json(r#"{"model_type": "gemma3_text"}"#).unwrap_err();
        assert!(
            matches!(&e, ModelError::UnsupportedArchitecture { name, supported, .. }
                if name == "gemma3_text" && supported == "llama, mistral, qwen2, gpt2, gptj"),
            "{e:?}"
        );
    }

    const GPT2: &str = r#"{"model_type": "gpt2", "vocab_size": 50257, "n_embd": 768,
        "n_head": 12, "n_layer": 12, "n_positions": 1024, "n_inner": null,
        "activation_function": "gelu_new", "layer_norm_epsilon": 1e-05,
        "scale_attn_weights": true, "scale_attn_by_inverse_layer_idx": false,
        "reorder_and_upcast_attn": false, "n_ctx": 1024}"#;

    fn with(base: &str, key: &str, value: serde_json::Value) -> String {
        let mut v: serde_json::Value = serde_json::from_str(base).unwrap();
        match value {
            serde_json::Value::Null if key.starts_with('-') => {
                v.as_object_mut().unwrap().remove(&key[1..]);
            }
            value => v[key] = value,
        }
        v.to_string()
    }

    #[test]
    fn gpt2_config() {
        let c = ModelConfig::from_hf_json(GPT2).unwrap();
        assert_eq!(c.family, Family::Gpt2);
        assert_eq!(
            (
                c.d_model,
                c.d_ff,
                c.n_heads,
                c.n_kv_heads,
                c.head_dim,
                c.n_layers
            ),
            (768, 3072, 12, 12, 64, 12)
        );
        assert_eq!((c.max_positions, c.rms_eps), (1024, 1e-5));
        assert_eq!(c.position_kind, PositionKind::Learned);
        assert_eq!(
            (c.norm, c.mlp, c.activation),
            (NormKind::Layer, MlpKind::Plain, Activation::GeluTanh)
        );
        assert!(c.tied_embeddings && c.qkv_bias && c.attn_out_bias && c.mlp_bias);
        assert!(!c.parallel_block && !c.lm_head_bias && c.attn_scale.is_none());
        // Absent fields take transformers' defaults; n_inner and the aliases are read.
        let minimal = r#"{"model_type": "gpt2", "vocab_size": 10, "hidden_size": 8,
            "num_attention_heads": 2, "num_hidden_layers": 1, "n_inner": 20}"#;
        let c = ModelConfig::from_hf_json(minimal).unwrap();
        assert_eq!(
            (c.d_model, c.n_heads, c.d_ff, c.max_positions),
            (8, 2, 20, 1024)
        );
        assert!(c.tied_embeddings);
        let c = ModelConfig::from_hf_json(&with(GPT2, "scale_attn_weights", false.into())).unwrap();
        assert_eq!(c.attn_scale, Some(1.0));
        let c =
            ModelConfig::from_hf_json(&with(GPT2, "tie_word_embeddings", false.into())).unwrap();
        assert!(!c.tied_embeddings);
        let c = ModelConfig::from_hf_json(&with(
            GPT2,
            "activation_function",
            "gelu_pytorch_tanh".into(),
        ))
        .unwrap();
        assert_eq!(c.activation, Activation::GeluTanh);
    }

    #[test]
    fn gpt2_config_errors() {
        for (key, value) in [
            ("activation_function", serde_json::json!("relu")),
            ("scale_attn_by_inverse_layer_idx", true.into()),
            ("reorder_and_upcast_attn", true.into()),
            ("add_cross_attention", true.into()),
        ] {
            let e = ModelConfig::from_hf_json(&with(GPT2, key, value)).unwrap_err();
            assert!(
                matches!(&e, ModelError::UnsupportedSetting { arch, field, .. } if arch == "gpt2" && field == key),
                "{key}: {e:?}"
            );
            assert!(e.to_string().contains(key), "{e}");
        }
        let e = ModelConfig::from_hf_json(&with(GPT2, "n_head", 7.into())).unwrap_err();
        assert!(
            matches!(&e, ModelError::Config(m) if m.contains("divisible")),
            "{e:?}"
        );
        let e =
            ModelConfig::from_hf_json(&with(GPT2, "-n_embd", serde_json::Value::Null)).unwrap_err();
        assert!(
            matches!(&e, ModelError::Config(m) if m.contains("n_embd")),
            "{e:?}"
        );
        let e = ModelConfig::from_hf_json(&with(GPT2, "n_layer", "12".into())).unwrap_err();
        assert!(
            matches!(&e, ModelError::Config(m) if m.contains("n_layer")),
            "{e:?}"
        );
        let e = ModelConfig::from_hf_json(&with(GPT2, "n_positions", 0.into())).unwrap_err();
        assert!(matches!(&e, ModelError::Config(_)), "{e:?}");
    }

    const GPTJ: &str = r#"{"model_type": "gptj", "vocab_size": 50400, "n_embd": 4096,
        "n_head": 16, "n_layer": 28, "n_positions": 2048, "rotary_dim": 64, "n_inner": null,
        "activation_function": "gelu_new", "layer_norm_epsilon": 1e-05,
        "tie_word_embeddings": false}"#;

    #[test]
    fn gptj_config() {
        let c = ModelConfig::from_hf_json(GPTJ).unwrap();
        assert_eq!(c.family, Family::Gptj);
        assert_eq!((c.d_model, c.d_ff, c.head_dim), (4096, 16384, 256));
        assert_eq!((c.rotary_dim, c.rotary_width()), (Some(64), 64));
        assert_eq!(c.position_kind, PositionKind::RotaryInterleaved);
        assert_eq!(c.rope_theta, 10_000.0);
        assert!(c.parallel_block && c.lm_head_bias && c.mlp_bias && !c.tied_embeddings);
        assert!(!c.qkv_bias && !c.attn_out_bias);
        // null: the whole head; absent: transformers' default 64.
        let c =
            ModelConfig::from_hf_json(&with(GPTJ, "rotary_dim", serde_json::Value::Null)).unwrap();
        assert_eq!((c.rotary_dim, c.rotary_width()), (None, 256));
        let c =
            ModelConfig::from_hf_json(&with(GPTJ, "-rotary_dim", serde_json::Value::Null)).unwrap();
        assert_eq!(c.rotary_dim, Some(64));
        for bad in [0, 7, 258] {
            let e = ModelConfig::from_hf_json(&with(GPTJ, "rotary_dim", bad.into())).unwrap_err();
            assert!(
                matches!(&e, ModelError::Config(m) if m.contains("rotary")),
                "{bad}: {e:?}"
            );
        }
        let e = ModelConfig::from_hf_json(&with(GPTJ, "activation_function", "gelu".into()))
            .unwrap_err();
        assert!(
            matches!(&e, ModelError::UnsupportedSetting { arch, .. } if arch == "gptj"),
            "{e:?}"
        );
    }

    #[test]
    fn gpt_configs_round_trip_through_serde() {
        for text in [GPT2, GPTJ] {
            let c = ModelConfig::from_hf_json(text).unwrap();
            let v = serde_json::to_value(&c).unwrap();
            let back: ModelConfig = serde_json::from_value(v.clone()).unwrap();
            assert_eq!(back, c);
            assert!(v.get("norm").is_some() && v.get("mlp").is_some(), "{v}");
        }
    }

    #[test]
    fn gemma3_header() {
        let c = read(&gemma3(&[], "")).unwrap();
        assert_eq!(c.family, Family::Gemma3);
        assert_eq!(
            (c.head_dim, c.n_heads, c.n_kv_heads, c.vocab_size),
            (32, 4, 1, 10)
        );
        assert_eq!(c.activation, Activation::GeluTanh);
        assert_eq!(c.embed_scale, Some(8.0));
        assert_eq!(c.attn_scale, Some(1.0 / 32f64.sqrt()));
        assert_eq!(c.sliding_window, Some(16));
        assert_eq!(c.rope_theta_local, Some(10_000.0));
        // Period 6: layers 5 (and 11, 17, ...) are global.
        let global: Vec<usize> = (0..7).filter(|&l| !c.is_sliding(l)).collect();
        assert_eq!(global, [5]);
        assert!(c.qk_norm && c.sandwich_norms && c.tied_embeddings);
    }

    #[test]
    fn gemma3_header_variants_and_errors() {
        let period = [("gemma3.attention.sliding_window_pattern", MetaValue::U32(3))];
        let c = read(&gemma3(&period, "")).unwrap();
        let global: Vec<usize> = (0..7).filter(|&l| !c.is_sliding(l)).collect();
        assert_eq!(global, [2, 5]);
        let bools = MetaValue::Array((0..7).map(|l| MetaValue::Bool(l == 0)).collect());
        let c = read(&gemma3(
            &[("gemma3.attention.sliding_window_pattern", bools)],
            "",
        ))
        .unwrap();
        assert_eq!(
            c.sliding_layers,
            [true, false, false, false, false, false, false]
        );
        let short = MetaValue::Array(vec![MetaValue::Bool(true)]);
        assert!(read(&gemma3(
            &[("gemma3.attention.sliding_window_pattern", short)],
            ""
        ))
        .is_err());
        let cap = [("gemma3.final_logit_softcapping", MetaValue::F32(30.0))];
        assert_eq!(
            read(&gemma3(&cap, "")).unwrap().final_logit_softcap,
            Some(30.0)
        );
        // head_dim must come from the file, never from d_model / heads.
        assert!(read(&gemma3(&[], "gemma3.attention.key_length")).is_err());
        assert!(read(&gemma3(&[], "gemma3.attention.sliding_window")).is_err());
        let linear = [("gemma3.rope.scaling.type", s("linear"))];
        let e = read(&gemma3(&linear, "")).unwrap_err();
        assert!(matches!(e, ModelError::Config(_)), "{e:?}");
        let zero = [("gemma3.attention.sliding_window", MetaValue::U32(0))];
        let mut kv = gemma3(&[], "gemma3.attention.sliding_window");
        kv.extend(zero.iter().map(|(k, v)| (k.to_string(), v.clone())));
        assert!(read(&kv).is_err());
    }

    #[test]
    fn llama_configs_serialize_as_before() {
        let text = r#"{"model_type": "llama", "vocab_size": 10, "hidden_size": 8,
            "intermediate_size": 16, "num_hidden_layers": 2, "num_attention_heads": 2,
            "rms_norm_eps": 1e-5}"#;
        let c = ModelConfig::from_hf_json(text).unwrap();
        let v = serde_json::to_value(&c).unwrap();
        let keys: Vec<&String> = v.as_object().unwrap().keys().collect();
        assert_eq!(keys.len(), 14, "{keys:?}");
        // A configuration written before the Gemma fields existed still reads.
        let back: ModelConfig = serde_json::from_value(v).unwrap();
        assert_eq!(back, c);
        assert!(!c.is_sliding(0));
    }
}
