//! The Llama family (Llama 2, Mistral, Qwen2/2.5, DeepSeek-LLM, SmolLM2), Gemma 3, GPT-2 and
//! GPT-J on libtorch, in f32 (default), bf16 or f16 ([`LoadOptions`]).
//!
//! RMSNorm, rotary embeddings (Hugging Face's half-split convention), grouped-query attention,
//! SwiGLU MLP, tied or untied LM head, optional q/k/v biases (Qwen2). Loads GGUF files (any
//! supported quantization, dequantized to f32) and Hugging Face safetensors checkpoints.
//!
//! Gemma 3 (GGUF only) switches on, per [`ModelConfig`]: RMSNorm of each head's queries and
//! keys, norms on the attention and MLP outputs before the residual adds, GeGLU (tanh GELU),
//! embeddings scaled by `sqrt(d_model)`, attention scale from the config, and sliding-window
//! layers (window measured in token positions) with their own rotary base. The GGUF's norm
//! weights already hold Gemma's `1 + w`, so every norm is the same plain RMSNorm. The hooks are
//! where they are for Llama: [`Site::MlpKey`] is the input of `ffn_down` (`W_out`), edits and
//! [`Site::MlpOut`] are at its output, *before* the post-MLP norm.
//!
//! GPT-2 and GPT-J (Hugging Face safetensors) run on the same code too, per [`ModelConfig`]:
//! LayerNorm with bias, a plain MLP with biases (`key = gelu(W_up x + b_up)`), learned absolute
//! positions and fused, biased q/k/v (GPT-2, whose `Conv1D` weights are transposed at load), or
//! rotary embeddings on the first `rotary_dim` values of each head with adjacent pairs rotated,
//! attention and MLP in parallel on one norm, and an LM head with a bias (GPT-J).
//! [`Site::MlpKey`] is the input of `c_proj` / `fc_out` (after the GELU); [`Site::MlpOut`] and
//! edits are at its output *with* its bias added. See `docs/design/gpt2-gptj.md`.
//!
//! **Compute dtype.** Loaded with [`Dtype::Bf16`] or [`Dtype::F16`], every weight is held in that
//! type (GGUF and safetensors tensors are read as f32, then rounded once) and the forward pass
//! runs in it, as transformers runs a model loaded with `torch_dtype=torch.bfloat16`:
//! - RMSNorm upcasts: `x` to f32, `x·rsqrt(mean(x²) + eps)` in f32, then (Llama family, as
//!   `LlamaRMSNorm`) cast back and multiplied by the weight in the compute dtype, or (Gemma 3,
//!   as `Gemma3RMSNorm`) multiplied by the weight in f32 and cast back (Gemma's norm weights, the
//!   GGUF's `1 + w`, stay f32: transformers adds the 1 in f32). LayerNorm (GPT-2, GPT-J)
//!   runs libtorch's kernel on compute-dtype inputs (it accumulates in f32), as `nn.LayerNorm`.
//! - Rotary tables are computed in f32 and cast to the compute dtype (`LlamaRotaryEmbedding`);
//!   Gemma's embedding scale is rounded to the compute dtype first (`embed_scale.to(dtype)`).
//! - The LM head runs in the compute dtype; its logits are cast to f32 before the soft cap and
//!   the log-softmax, so logits and log-probabilities are always f32.
//! - Captures come back f32; edit deltas (f32, possibly requiring grad) and [`Start`] states
//!   are cast to the compute dtype (and moved to the model's device) inside the pass, so
//!   gradients reach the caller's f32 `δ`.
//! - [`EditableLm::w_out`] is the f32 widening of the held weight; [`EditableLm::apply_delta`]
//!   accumulates deltas in f32 and holds `round(f32(W₀) + Σ Δ)`, `W₀` the loaded
//!   (compute-dtype) weight, which [`EditableLm::restore`] puts back bit for bit.
//!
//! f32 models compute exactly as before this option existed (no cast is inserted: a cast to the
//! tensor's own type is the identity).

use crate::compute::{Dtype, LoadOptions};
use crate::config::{Activation, Family, ModelConfig, NormKind, PositionKind};
use crate::error::{io_err, ModelError, Result};
use crate::gguf::GgufFile;
use crate::model::{
    check_positions, flat_index, Batch, EditableLm, Generation, LogProbs, Output, Padding, Plan,
    Positions, Site, Start, TokenPicker,
};
use crate::quant::dequantize_tensor;
use crate::tokenizer::Tokenizer;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use tch::{Device, Kind, Tensor};

/// Where the weights came from (for patches and reports).
#[derive(Debug, Clone, PartialEq)]
pub enum ModelSource {
    /// A GGUF file.
    Gguf(PathBuf),
    /// A Hugging Face checkpoint directory.
    HfDir(PathBuf),
}

impl ModelSource {
    /// The file whose bytes identify the base model (GGUF file, or the directory's
    /// `config.json`; patches record the SHA-256 of [`ModelSource::identity_files`]).
    pub fn identity_files(&self) -> Result<Vec<PathBuf>> {
        match self {
            ModelSource::Gguf(p) => Ok(vec![p.clone()]),
            ModelSource::HfDir(d) => {
                let mut files = vec![d.join("config.json")];
                let mut st: Vec<PathBuf> = std::fs::read_dir(d)
                    .map_err(io_err(d))?
                    .flatten()
                    .map(|e| e.path())
                    .filter(|p| p.extension().is_some_and(|e| e == "safetensors"))
                    .collect();
                st.sort();
                files.extend(st);
                Ok(files)
            }
        }
    }
}

mod gpt;

/// A norm's weight, and its bias (LayerNorm).
struct Norm {
    w: Tensor,
    b: Option<Tensor>,
}

impl Norm {
    fn rms(w: Tensor) -> Self {
        Norm { w, b: None }
    }
}

/// One transformer block; every weight in `nn.Linear` orientation (`[out, in]`).
struct Block {
    attn_norm: Norm,
    wq: Tensor,
    wk: Tensor,
    wv: Tensor,
    bq: Option<Tensor>,
    bk: Option<Tensor>,
    bv: Option<Tensor>,
    wo: Tensor,
    /// Bias of the attention output projection (GPT-2).
    bo: Option<Tensor>,
    /// Per-head RMSNorm weights of queries and keys (`[head_dim]`), if the model has them.
    q_norm: Option<Tensor>,
    k_norm: Option<Tensor>,
    /// RMSNorm on the attention output before the residual add (Gemma).
    post_attn_norm: Option<Tensor>,
    /// The norm in front of the MLP; `None` in a parallel block (the MLP reads the attention's
    /// normalized input).
    mlp_norm: Option<Norm>,
    /// Gate of a gated MLP; `None` for a plain one.
    w_gate: Option<Tensor>,
    /// `[d_ff, d_model]` (GPT-2's `c_fc`, GPT-J's `fc_in`).
    w_up: Tensor,
    b_up: Option<Tensor>,
    /// `[d_model, d_ff]`: already key→residual.
    w_down: Tensor,
    /// Bias of `W_out` (GPT-2, GPT-J): part of the MLP output, never edited.
    b_down: Option<Tensor>,
    /// RMSNorm on the MLP output before the residual add (Gemma).
    post_mlp_norm: Option<Tensor>,
}

/// A causal LM with editing hooks: the Llama family, Gemma 3, GPT-2 or GPT-J (one
/// implementation; the architecture's departures from Llama are switches of its
/// [`ModelConfig`]).
pub struct LlamaModel {
    cfg: ModelConfig,
    tok: Tokenizer,
    embed: Tensor,
    /// Learned absolute position embeddings `[max_positions, d_model]` (GPT-2).
    pos_embed: Option<Tensor>,
    blocks: Vec<Block>,
    norm: Norm,
    lm_head: Option<Tensor>,
    lm_head_bias: Option<Tensor>,
    inv_freq: Tensor,
    /// Rotary frequencies of the sliding-window layers, when their base differs.
    inv_freq_local: Option<Tensor>,
    /// Loaded `W_out` of every edited layer, and the sum of deltas applied to it.
    originals: HashMap<usize, (Tensor, Tensor)>,
    source: ModelSource,
    sha256: std::sync::OnceLock<String>,
    device: Device,
    dtype: Dtype,
}

impl std::fmt::Debug for LlamaModel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LlamaModel")
            .field("config", &self.cfg)
            .field("source", &self.source)
            .field("device", &self.device)
            .field("dtype", &self.dtype)
            .finish()
    }
}

/// Gets named f32 tensors (row-major, PyTorch shapes) out of a checkpoint.
trait TensorSource {
    fn describe(&self) -> String;
    fn get(&self, name: &str) -> Result<Option<Tensor>>;
    /// Whether the checkpoint holds `name` (without reading it).
    fn has(&self, name: &str) -> bool;
}

/// Where loaded weights go: the model's device, in its compute dtype (rounded on the CPU, then
/// moved, so a GPU never holds the f32 copy).
#[derive(Debug, Clone, Copy)]
struct Place {
    device: Device,
    kind: Kind,
}

impl Place {
    /// `t` (f32, on the CPU) in the compute dtype on the device; the same tensor for f32 on the
    /// CPU.
    fn put(self, t: Tensor) -> Tensor {
        t.to_kind(self.kind).to_device(self.device)
    }
}

/// The weights of a model, as a family's loader reads them.
struct Weights {
    embed: Tensor,
    pos_embed: Option<Tensor>,
    blocks: Vec<Block>,
    norm: Norm,
    lm_head: Option<Tensor>,
    lm_head_bias: Option<Tensor>,
}

fn expect_shape(name: &str, t: &Tensor, expected: &[i64]) -> Result<()> {
    if t.size() != expected {
        return Err(ModelError::Shape {
            name: name.into(),
            expected: expected.to_vec(),
            got: t.size(),
        });
    }
    Ok(())
}

fn require(src: &dyn TensorSource, name: &str, shape: &[i64]) -> Result<Tensor> {
    let t = src.get(name)?.ok_or_else(|| ModelError::MissingTensor {
        name: name.into(),
        source_desc: src.describe(),
    })?;
    expect_shape(name, &t, shape)?;
    Ok(t)
}

fn optional(src: &dyn TensorSource, name: &str, shape: &[i64]) -> Result<Option<Tensor>> {
    match src.get(name)? {
        Some(t) => {
            expect_shape(name, &t, shape)?;
            Ok(Some(t))
        }
        None => Ok(None),
    }
}

struct GgufTensors<'a> {
    file: &'a GgufFile,
    path: &'a Path,
    family: Family,
    /// llama.cpp stores Llama's q/k rows permuted for its rotary layout; undo it.
    unpermute_qk: bool,
    n_heads: i64,
    n_kv_heads: i64,
}

impl GgufTensors<'_> {
    /// The GGUF name of a Hugging Face tensor name, per family: the same Hugging Face name can
    /// mean different tensors (Llama's `post_attention_layernorm` is GGUF's `ffn_norm`, Gemma's
    /// is `post_attention_norm`).
    fn gguf_name(&self, name: &str) -> String {
        // model.layers.{i}.{part} <- blk.{i}.{gguf part}
        if let Some(rest) = name.strip_prefix("model.layers.") {
            let (i, part) = rest.split_once('.').unwrap_or((rest, ""));
            let g = match self.family {
                Family::Llama => Self::llama_part(part),
                Family::Gemma3 => Self::gemma3_part(part),
                // Not read from GGUF (ModelConfig::from_gguf refuses them).
                Family::Gpt2 | Family::Gptj => part,
            };
            return format!("blk.{i}.{g}");
        }
        match name {
            "model.embed_tokens.weight" => "token_embd.weight".into(),
            "model.norm.weight" => "output_norm.weight".into(),
            "lm_head.weight" => "output.weight".into(),
            other => other.into(),
        }
    }

    fn gemma3_part(part: &str) -> &str {
        match part {
            "input_layernorm.weight" => "attn_norm.weight",
            "self_attn.q_proj.weight" => "attn_q.weight",
            "self_attn.k_proj.weight" => "attn_k.weight",
            "self_attn.v_proj.weight" => "attn_v.weight",
            "self_attn.o_proj.weight" => "attn_output.weight",
            "self_attn.q_norm.weight" => "attn_q_norm.weight",
            "self_attn.k_norm.weight" => "attn_k_norm.weight",
            "post_attention_layernorm.weight" => "post_attention_norm.weight",
            "pre_feedforward_layernorm.weight" => "ffn_norm.weight",
            "mlp.gate_proj.weight" => "ffn_gate.weight",
            "mlp.up_proj.weight" => "ffn_up.weight",
            "mlp.down_proj.weight" => "ffn_down.weight",
            "post_feedforward_layernorm.weight" => "post_ffw_norm.weight",
            other => other,
        }
    }

    fn llama_part(part: &str) -> &str {
        match part {
            "input_layernorm.weight" => "attn_norm.weight",
            "self_attn.q_proj.weight" => "attn_q.weight",
            "self_attn.k_proj.weight" => "attn_k.weight",
            "self_attn.v_proj.weight" => "attn_v.weight",
            "self_attn.q_proj.bias" => "attn_q.bias",
            "self_attn.k_proj.bias" => "attn_k.bias",
            "self_attn.v_proj.bias" => "attn_v.bias",
            "self_attn.o_proj.weight" => "attn_output.weight",
            "post_attention_layernorm.weight" => "ffn_norm.weight",
            "mlp.gate_proj.weight" => "ffn_gate.weight",
            "mlp.up_proj.weight" => "ffn_up.weight",
            "mlp.down_proj.weight" => "ffn_down.weight",
            other => other,
        }
    }
}

impl TensorSource for GgufTensors<'_> {
    fn describe(&self) -> String {
        format!("GGUF file {}", self.path.display())
    }

    fn has(&self, name: &str) -> bool {
        self.file.tensor(&self.gguf_name(name)).is_some()
    }

    fn get(&self, name: &str) -> Result<Option<Tensor>> {
        let gname = self.gguf_name(name);
        let Some(info) = self.file.tensor(&gname) else {
            return Ok(None);
        };
        let data = dequantize_tensor(self.file, info)?;
        // GGML dims are fastest-first; PyTorch shapes are slowest-first.
        let shape: Vec<i64> = info.dims.iter().rev().map(|&d| d as i64).collect();
        let mut t = Tensor::f_from_slice(&data)?.f_reshape(&shape)?;
        if self.unpermute_qk
            && (gname.ends_with("attn_q.weight") || gname.ends_with("attn_k.weight"))
        {
            let heads = if gname.ends_with("attn_q.weight") {
                self.n_heads
            } else {
                self.n_kv_heads
            };
            let (rows, cols) = (shape[0], *shape.get(1).unwrap_or(&1));
            if heads == 0 || rows % (2 * heads) != 0 {
                return Err(ModelError::Shape {
                    name: gname,
                    expected: vec![heads * 2, cols],
                    got: shape,
                });
            }
            t = t
                .f_reshape([heads, rows / heads / 2, 2, cols])?
                .f_transpose(1, 2)?
                .f_reshape([rows, cols])?
                .f_contiguous()?;
        }
        Ok(Some(t))
    }
}

struct SafetensorsDir {
    dir: PathBuf,
    /// tensor name -> file
    index: HashMap<String, PathBuf>,
    maps: HashMap<PathBuf, memmap2::Mmap>,
}

impl SafetensorsDir {
    fn open(dir: &Path) -> Result<Self> {
        let index_path = dir.join("model.safetensors.index.json");
        let mut files: Vec<PathBuf> = Vec::new();
        let mut index = HashMap::new();
        if index_path.exists() {
            let text = std::fs::read_to_string(&index_path).map_err(io_err(&index_path))?;
            let v: serde_json::Value =
                serde_json::from_str(&text).map_err(|e| ModelError::Safetensors {
                    path: index_path.clone(),
                    detail: e.to_string(),
                })?;
            let map = v
                .get("weight_map")
                .and_then(|m| m.as_object())
                .ok_or_else(|| ModelError::Safetensors {
                    path: index_path.clone(),
                    detail: "no weight_map object".into(),
                })?;
            for (name, file) in map {
                let file = file.as_str().ok_or_else(|| ModelError::Safetensors {
                    path: index_path.clone(),
                    detail: format!("weight_map[{name}] is not a file name"),
                })?;
                if file.contains('/') || file.contains("..") {
                    return Err(ModelError::Safetensors {
                        path: index_path.clone(),
                        detail: format!(
                            "weight_map[{name}] = {file:?} points outside the directory"
                        ),
                    });
                }
                let p = dir.join(file);
                if !files.contains(&p) {
                    files.push(p.clone());
                }
                index.insert(name.clone(), p);
            }
        } else {
            let single = dir.join("model.safetensors");
            if !single.exists() {
                return Err(ModelError::Config(format!(
                    "{} has neither model.safetensors nor model.safetensors.index.json",
                    dir.display()
                )));
            }
            files.push(single);
        }
        let mut maps = HashMap::new();
        for f in &files {
            let file = std::fs::File::open(f).map_err(io_err(f))?;
            // SAFETY: read-only map of a checkpoint that is not modified while loading.
            let map = unsafe { memmap2::Mmap::map(&file) }.map_err(io_err(f))?;
            let st = safetensors::SafeTensors::deserialize(&map).map_err(|e| {
                ModelError::Safetensors {
                    path: f.clone(),
                    detail: e.to_string(),
                }
            })?;
            if !index_path.exists() {
                for name in st.names() {
                    index.insert(name.to_string(), f.clone());
                }
            }
            maps.insert(f.clone(), map);
        }
        Ok(SafetensorsDir {
            dir: dir.to_path_buf(),
            index,
            maps,
        })
    }
}

impl TensorSource for SafetensorsDir {
    fn describe(&self) -> String {
        format!("safetensors checkpoint {}", self.dir.display())
    }

    fn has(&self, name: &str) -> bool {
        self.index.contains_key(name)
    }

    fn get(&self, name: &str) -> Result<Option<Tensor>> {
        let Some(file) = self.index.get(name) else {
            return Ok(None);
        };
        let map = &self.maps[file];
        let st_err = |detail: String| ModelError::Safetensors {
            path: file.clone(),
            detail,
        };
        let st = safetensors::SafeTensors::deserialize(map).map_err(|e| st_err(e.to_string()))?;
        let view = st
            .tensor(name)
            .map_err(|e| st_err(format!("{name}: {e}")))?;
        let shape: Vec<i64> = view.shape().iter().map(|&d| d as i64).collect();
        let bytes = view.data();
        let data: Vec<f32> = match view.dtype() {
            safetensors::Dtype::F32 => bytes
                .chunks_exact(4)
                .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                .collect(),
            safetensors::Dtype::F16 => bytes
                .chunks_exact(2)
                .map(|c| half::f16::from_le_bytes([c[0], c[1]]).to_f32())
                .collect(),
            safetensors::Dtype::BF16 => bytes
                .chunks_exact(2)
                .map(|c| half::bf16::from_le_bytes([c[0], c[1]]).to_f32())
                .collect(),
            other => {
                return Err(st_err(format!(
                    "{name}: dtype {other:?} is not supported (f32, f16, bf16)"
                )))
            }
        };
        Ok(Some(Tensor::f_from_slice(&data)?.f_reshape(&shape)?))
    }
}

/// RMSNorm over the last dimension. f32: `x·rsqrt(mean(x²) + eps)·w`. Another dtype, as
/// transformers: normalized in f32, then cast back and scaled by `w` in that dtype
/// (`LlamaRMSNorm`), or with `weight_in_f32` scaled in f32 and cast back (`Gemma3RMSNorm`).
fn rms_norm(x: &Tensor, w: &Tensor, eps: f64, weight_in_f32: bool) -> Tensor {
    let kind = x.kind();
    if kind == Kind::Float {
        let var = x.pow_tensor_scalar(2).mean_dim(-1, true, Kind::Float);
        return x * (var + eps).rsqrt() * w;
    }
    let xf = x.to_kind(Kind::Float);
    let var = xf.pow_tensor_scalar(2).mean_dim(-1, true, Kind::Float);
    let n = xf * (var + eps).rsqrt();
    if weight_in_f32 {
        (n * w.to_kind(Kind::Float)).to_kind(kind)
    } else {
        n.to_kind(kind) * w
    }
}

/// Rotary cos/sin tables of one pass: for the global layers, and for the sliding-window layers
/// when their base differs.
struct Rope {
    global: (Tensor, Tensor),
    local: Option<(Tensor, Tensor)>,
}

/// What the MLP's output is added to: the residual stream after attention, or (parallel
/// block) the block's input and the attention output, still apart.
enum Mid {
    Serial(Tensor),
    Parallel(Tensor, Tensor),
}

/// Attention masks of one pass (`[B, 1, Tq, S]`, true = attend): causal with padding keys off,
/// and the same restricted to the sliding window when some layer uses one and it hides a key.
struct Masks {
    full: Tensor,
    sliding: Option<Tensor>,
}

fn rotate_half(x: &Tensor) -> Tensor {
    let half = x.size()[3] / 2;
    let x1 = x.narrow(3, 0, half);
    let x2 = x.narrow(3, half, half);
    Tensor::cat(&[x2.neg(), x1], 3)
}

/// GPT-J's pairing: `(x0, x1, x2, x3, …) -> (-x1, x0, -x3, x2, …)` over the last dimension of a
/// `[B, H, T, r]` tensor.
fn rotate_every_two(x: &Tensor) -> Tensor {
    let s = x.size();
    let pairs = x.reshape([s[0], s[1], s[2], s[3] / 2, 2]);
    let (even, odd) = (pairs.select(4, 0), pairs.select(4, 1));
    Tensor::stack(&[odd.neg(), even], 4).reshape([s[0], s[1], s[2], s[3]])
}

/// The real (non-padding) slots of a `[B, T]` region, for running the position-wise layers
/// (projections, norms, MLP: nearly all the FLOPs) on real tokens only. Attention runs on the
/// padded layout, into which the projections are scattered (padding stays zero).
struct Packing {
    /// Flat slot (`row·T + slot`) of every real token, in order: `[n]` (i64).
    idx: Tensor,
    /// Packed row of every flat slot, `-1` for padding.
    inv: Vec<i64>,
    /// `B·T`.
    slots: i64,
}

impl Packing {
    /// `None` when the region has no padding (nothing to save).
    fn of(mask: &Tensor, device: Device) -> Result<Option<Self>> {
        let m = Vec::<i64>::try_from(mask.to_device(Device::Cpu).contiguous().view([-1]))?;
        let real: Vec<i64> = (0..m.len() as i64)
            .filter(|&i| m[i as usize] != 0)
            .collect();
        if real.len() == m.len() || real.is_empty() {
            return Ok(None);
        }
        let mut inv = vec![-1i64; m.len()];
        for (k, &i) in real.iter().enumerate() {
            inv[i as usize] = k as i64;
        }
        Ok(Some(Packing {
            idx: Tensor::from_slice(&real).to_device(device),
            inv,
            slots: m.len() as i64,
        }))
    }

    /// Whether every flat slot is a real token.
    fn covers(&self, flat: &[i64]) -> bool {
        flat.iter()
            .all(|&f| self.inv.get(f as usize).is_some_and(|&k| k >= 0))
    }

    /// Flat slots of `(row, slot)` positions in a region of width `w` starting at `offset`.
    fn flat(at: &[(usize, usize)], w: usize, offset: usize) -> Vec<i64> {
        at.iter()
            .map(|&(r, s)| (r * w + s - offset) as i64)
            .collect()
    }

    /// Packed rows of positions (callers check [`covers`](Self::covers) first).
    fn rows(&self, at: &[(usize, usize)], w: usize, offset: usize) -> Tensor {
        let k: Vec<i64> = Self::flat(at, w, offset)
            .iter()
            .map(|&x| self.inv[x as usize])
            .collect();
        Tensor::from_slice(&k).to_device(self.idx.device())
    }

    /// `[n, w]` packed rows back to `[B·T, w]`, zeros at padding.
    fn unpack(&self, x: &Tensor) -> Tensor {
        let w = x.size()[1];
        Tensor::zeros([self.slots, w], (x.kind(), x.device())).index_copy(0, &self.idx, x)
    }
}

impl LlamaModel {
    /// Load a GGUF file (Llama, Mistral, Qwen2 or Gemma 3 architecture) onto `device`, f32.
    ///
    /// # Errors
    /// [`ModelError::UnsupportedArchitecture`] for another architecture; GGUF, tokenizer,
    /// missing-tensor and shape errors for a file that does not hold what its header says.
    pub fn from_gguf(path: impl AsRef<Path>, device: Device) -> Result<Self> {
        Self::from_gguf_with(path, LoadOptions::on(device))
    }

    /// Load a GGUF file with a device and compute dtype (every quantization is dequantized to
    /// f32, then rounded to the compute dtype).
    ///
    /// # Errors
    /// [`ModelError::DeviceUnavailable`] (checked first, before reading anything) for a CUDA
    /// device this process cannot use; [`ModelError::UnsupportedSetting`] for Gemma 3 in f16
    /// (its residual stream overflows f16: use bf16); otherwise as
    /// [`from_gguf`](Self::from_gguf).
    pub fn from_gguf_with(path: impl AsRef<Path>, opts: LoadOptions) -> Result<Self> {
        opts.check()?;
        let path = path.as_ref();
        let file = GgufFile::open(path)?;
        let cfg = ModelConfig::from_gguf(&file)?;
        let tok = Tokenizer::from_gguf(&file)?;
        let src = GgufTensors {
            file: &file,
            path,
            family: cfg.family,
            unpermute_qk: cfg.arch_name == "llama" || cfg.arch_name == "mistral",
            n_heads: cfg.n_heads as i64,
            n_kv_heads: cfg.n_kv_heads as i64,
        };
        Self::build(cfg, tok, &src, ModelSource::Gguf(path.to_path_buf()), opts)
    }

    /// Load a Hugging Face checkpoint directory: `config.json`, `tokenizer.json`, and
    /// `model.safetensors` or sharded `*.safetensors` with `model.safetensors.index.json`.
    /// Model types: [`SUPPORTED_HF_MODEL_TYPES`](crate::config::SUPPORTED_HF_MODEL_TYPES)
    /// (Llama, Mistral, Qwen2, GPT-2, GPT-J).
    ///
    /// # Errors
    /// The configuration's errors ([`ModelConfig::from_hf_json`]); tokenizer, safetensors,
    /// [`ModelError::MissingTensor`] (naming the tensor) and shape errors.
    pub fn from_hf_dir(dir: impl AsRef<Path>, device: Device) -> Result<Self> {
        Self::from_hf_dir_with(dir, LoadOptions::on(device))
    }

    /// Load a Hugging Face checkpoint directory with a device and compute dtype (f16 and bf16
    /// checkpoints are widened to f32, then rounded to the compute dtype).
    ///
    /// # Errors
    /// [`ModelError::DeviceUnavailable`] (checked first) for a CUDA device this process cannot
    /// use; otherwise as [`from_hf_dir`](Self::from_hf_dir).
    pub fn from_hf_dir_with(dir: impl AsRef<Path>, opts: LoadOptions) -> Result<Self> {
        opts.check()?;
        let dir = dir.as_ref();
        let cfg_path = dir.join("config.json");
        let text = std::fs::read_to_string(&cfg_path).map_err(io_err(&cfg_path))?;
        let cfg = ModelConfig::from_hf_json(&text)?;
        let raw: serde_json::Value = serde_json::from_str(&text)
            .map_err(|e| ModelError::Config(format!("config.json: {e}")))?;
        let id = |k: &str| -> Option<u32> {
            match raw.get(k) {
                Some(serde_json::Value::Number(n)) => n.as_u64().map(|v| v as u32),
                Some(serde_json::Value::Array(a)) => {
                    a.first().and_then(|v| v.as_u64()).map(|v| v as u32)
                }
                _ => None,
            }
        };
        let tok_path = dir.join("tokenizer.json");
        let tok = Tokenizer::from_file(&tok_path, id("bos_token_id"), id("eos_token_id"), false)?;
        let src = SafetensorsDir::open(dir)?;
        Self::build(cfg, tok, &src, ModelSource::HfDir(dir.to_path_buf()), opts)
    }

    /// Load the model `source` names again ([`from_gguf_with`](Self::from_gguf_with) or
    /// [`from_hf_dir_with`](Self::from_hf_dir_with)).
    ///
    /// # Errors
    /// As those.
    pub fn from_source(source: &ModelSource, opts: LoadOptions) -> Result<Self> {
        match source {
            ModelSource::Gguf(p) => Self::from_gguf_with(p, opts),
            ModelSource::HfDir(d) => Self::from_hf_dir_with(d, opts),
        }
    }

    fn build(
        cfg: ModelConfig,
        tok: Tokenizer,
        src: &dyn TensorSource,
        source: ModelSource,
        opts: LoadOptions,
    ) -> Result<Self> {
        if opts.dtype == Dtype::F16 && cfg.family == Family::Gemma3 {
            // Measured on Gemma 3 270M: |h| passes 65504 by block 7 and reaches 1e5, so every
            // f16 pass ends in inf/NaN (transformers advises against f16 for Gemma too).
            return Err(ModelError::UnsupportedSetting {
                arch: cfg.arch_name.clone(),
                field: "compute dtype".into(),
                value: "\"f16\"".into(),
                supported: "f32, bf16; Gemma 3's residual stream exceeds f16's range (±65504)"
                    .into(),
            });
        }
        let device = opts.device;
        let place = Place {
            device,
            kind: opts.dtype.kind(),
        };
        let _guard = tch::no_grad_guard();
        if tok.vocab_size() > cfg.vocab_size {
            return Err(ModelError::Config(format!(
                "the tokenizer has {} tokens but the model only {} embeddings",
                tok.vocab_size(),
                cfg.vocab_size
            )));
        }
        let w = match cfg.family {
            Family::Llama | Family::Gemma3 => Self::load_llama(&cfg, src, place)?,
            Family::Gpt2 => gpt::load_gpt2(&cfg, src, place)?,
            Family::Gptj => gpt::load_gptj(&cfg, src, place)?,
        };
        // Frequencies over the rotary part of a head (the whole head but for GPT-J).
        let rd = cfg.rotary_width() as i64;
        let inv_freq = |theta: f64| -> Tensor {
            let v: Vec<f32> = (0..rd / 2)
                .map(|i| (1.0 / theta.powf((2 * i) as f64 / rd as f64)) as f32)
                .collect();
            Tensor::from_slice(&v).to_device(device)
        };
        let inv_freq_local = cfg
            .rope_theta_local
            .filter(|&t| t != cfg.rope_theta && cfg.sliding_layers.iter().any(|&s| s))
            .map(inv_freq);
        let inv_freq = inv_freq(cfg.rope_theta);
        Ok(LlamaModel {
            cfg,
            tok,
            embed: w.embed,
            pos_embed: w.pos_embed,
            blocks: w.blocks,
            norm: w.norm,
            lm_head: w.lm_head,
            lm_head_bias: w.lm_head_bias,
            inv_freq,
            inv_freq_local,
            originals: HashMap::new(),
            source,
            sha256: std::sync::OnceLock::new(),
            device,
            dtype: opts.dtype,
        })
    }

    /// Llama-family and Gemma 3 weights under their Hugging Face names.
    fn load_llama(cfg: &ModelConfig, src: &dyn TensorSource, place: Place) -> Result<Weights> {
        let (v, d, f) = (cfg.vocab_size as i64, cfg.d_model as i64, cfg.d_ff as i64);
        let (nh, nkv, hd) = (
            cfg.n_heads as i64,
            cfg.n_kv_heads as i64,
            cfg.head_dim as i64,
        );
        let dev = |t: Tensor| place.put(t);
        // Gemma's GGUF norm weights hold `1 + w`, which transformers forms in f32
        // (`1.0 + weight.float()`): kept in f32 rather than rounded to the compute dtype. The
        // Llama family's norm weights are in the compute dtype, as in transformers.
        let norm_place = match cfg.family {
            Family::Gemma3 => Place {
                kind: Kind::Float,
                ..place
            },
            _ => place,
        };
        let dev_norm = |t: Tensor| norm_place.put(t);
        let embed = dev(require(src, "model.embed_tokens.weight", &[v, d])?);
        let mut blocks = Vec::with_capacity(cfg.n_layers);
        for l in 0..cfg.n_layers {
            let n = |s: &str| format!("model.layers.{l}.{s}");
            let bias = |s: &str, len: i64| -> Result<Option<Tensor>> {
                let b = optional(src, &n(s), &[len])?;
                if cfg.qkv_bias && b.is_none() {
                    return Err(ModelError::MissingTensor {
                        name: n(s),
                        source_desc: src.describe(),
                    });
                }
                Ok(b.map(dev))
            };
            let norm = |s: &str, len: i64| -> Result<Option<Tensor>> {
                Ok(Some(dev_norm(require(src, &n(s), &[len])?)))
            };
            let (q_norm, k_norm) = if cfg.qk_norm {
                (
                    norm("self_attn.q_norm.weight", hd)?,
                    norm("self_attn.k_norm.weight", hd)?,
                )
            } else {
                (None, None)
            };
            // Gemma calls the norm in front of the MLP `pre_feedforward_layernorm`; its
            // `post_attention_layernorm` is the norm on the attention output.
            let (post_attn_norm, mlp_norm_name, post_mlp_norm) = if cfg.sandwich_norms {
                (
                    norm("post_attention_layernorm.weight", d)?,
                    "pre_feedforward_layernorm.weight",
                    norm("post_feedforward_layernorm.weight", d)?,
                )
            } else {
                (None, "post_attention_layernorm.weight", None)
            };
            blocks.push(Block {
                attn_norm: Norm::rms(dev_norm(require(src, &n("input_layernorm.weight"), &[d])?)),
                wq: dev(require(src, &n("self_attn.q_proj.weight"), &[nh * hd, d])?),
                wk: dev(require(src, &n("self_attn.k_proj.weight"), &[nkv * hd, d])?),
                wv: dev(require(src, &n("self_attn.v_proj.weight"), &[nkv * hd, d])?),
                bq: bias("self_attn.q_proj.bias", nh * hd)?,
                bk: bias("self_attn.k_proj.bias", nkv * hd)?,
                bv: bias("self_attn.v_proj.bias", nkv * hd)?,
                wo: dev(require(src, &n("self_attn.o_proj.weight"), &[d, nh * hd])?),
                bo: None,
                q_norm,
                k_norm,
                post_attn_norm,
                mlp_norm: Some(Norm::rms(dev_norm(require(src, &n(mlp_norm_name), &[d])?))),
                w_gate: Some(dev(require(src, &n("mlp.gate_proj.weight"), &[f, d])?)),
                w_up: dev(require(src, &n("mlp.up_proj.weight"), &[f, d])?),
                b_up: None,
                w_down: dev(require(src, &n("mlp.down_proj.weight"), &[d, f])?),
                b_down: None,
                post_mlp_norm,
            });
        }
        let norm = Norm::rms(dev_norm(require(src, "model.norm.weight", &[d])?));
        let lm_head = if cfg.tied_embeddings {
            None
        } else {
            Some(dev(require(src, "lm_head.weight", &[v, d])?))
        };
        Ok(Weights {
            embed,
            pos_embed: None,
            blocks,
            norm,
            lm_head,
            lm_head_bias: None,
        })
    }

    /// Where the weights came from.
    pub fn source(&self) -> &ModelSource {
        &self.source
    }

    /// The compute dtype the model was loaded with.
    pub fn dtype(&self) -> Dtype {
        self.dtype
    }

    /// The device and compute dtype the model was loaded with.
    pub fn load_options(&self) -> LoadOptions {
        LoadOptions {
            device: self.device,
            dtype: self.dtype,
        }
    }

    /// Every weight under its Hugging Face name (Llama's, or Gemma 3's for Gemma, GPT-2's or
    /// GPT-J's as transformers' `…LMHeadModel`/`…ForCausalLM` saves them, `transformer.`
    /// prefix included), in the model's compute dtype ([`LlamaModel::dtype`]: f32 unless loaded
    /// otherwise) on its device, with the current values (edits included), shallow views of the
    /// model's tensors where the layout allows (GPT-2's `Conv1D` weights are transposed views,
    /// its fused `c_attn` a new tensor). The LM head weight appears only when it is not tied to
    /// the embedding. Q and K are in Hugging Face's rotary layout (GGUF's permutation already
    /// undone at load). Gemma's norm tensors hold the multiplier `1 + w` as the GGUF stores it,
    /// not transformers' `w`.
    pub fn named_weights(&self) -> Vec<(String, Tensor)> {
        match self.cfg.family {
            Family::Gpt2 => return gpt::gpt2_named(self),
            Family::Gptj => return gpt::gptj_named(self),
            Family::Llama | Family::Gemma3 => {}
        }
        let mut out = vec![(
            "model.embed_tokens.weight".to_string(),
            self.embed.shallow_clone(),
        )];
        for (l, b) in self.blocks.iter().enumerate() {
            let n = |s: &str| format!("model.layers.{l}.{s}");
            out.push((n("input_layernorm.weight"), b.attn_norm.w.shallow_clone()));
            out.push((n("self_attn.q_proj.weight"), b.wq.shallow_clone()));
            out.push((n("self_attn.k_proj.weight"), b.wk.shallow_clone()));
            out.push((n("self_attn.v_proj.weight"), b.wv.shallow_clone()));
            for (name, bias) in [("q", &b.bq), ("k", &b.bk), ("v", &b.bv)] {
                if let Some(t) = bias {
                    out.push((n(&format!("self_attn.{name}_proj.bias")), t.shallow_clone()));
                }
            }
            out.push((n("self_attn.o_proj.weight"), b.wo.shallow_clone()));
            if let (Some(q), Some(k)) = (&b.q_norm, &b.k_norm) {
                out.push((n("self_attn.q_norm.weight"), q.shallow_clone()));
                out.push((n("self_attn.k_norm.weight"), k.shallow_clone()));
            }
            if let Some(mlp_norm) = &b.mlp_norm {
                match &b.post_attn_norm {
                    Some(post) => {
                        out.push((n("post_attention_layernorm.weight"), post.shallow_clone()));
                        out.push((
                            n("pre_feedforward_layernorm.weight"),
                            mlp_norm.w.shallow_clone(),
                        ));
                    }
                    None => out.push((
                        n("post_attention_layernorm.weight"),
                        mlp_norm.w.shallow_clone(),
                    )),
                }
            }
            if let Some(gate) = &b.w_gate {
                out.push((n("mlp.gate_proj.weight"), gate.shallow_clone()));
            }
            out.push((n("mlp.up_proj.weight"), b.w_up.shallow_clone()));
            out.push((n("mlp.down_proj.weight"), b.w_down.shallow_clone()));
            if let Some(post) = &b.post_mlp_norm {
                out.push((n("post_feedforward_layernorm.weight"), post.shallow_clone()));
            }
        }
        out.push(("model.norm.weight".to_string(), self.norm.w.shallow_clone()));
        if let Some(h) = &self.lm_head {
            out.push(("lm_head.weight".to_string(), h.shallow_clone()));
        }
        out
    }

    fn head(&self) -> &Tensor {
        self.lm_head.as_ref().unwrap_or(&self.embed)
    }

    fn check_layer(&self, layer: usize) -> Result<()> {
        if layer >= self.cfg.n_layers {
            return Err(ModelError::BadLayer {
                layer,
                n_layers: self.cfg.n_layers,
            });
        }
        Ok(())
    }

    /// Token embeddings of `ids`, times the embedding scale if the model has one (in f32, as
    /// transformers applies it), plus the learned embeddings of `positions` (same shape as
    /// `ids`) if the model has them.
    ///
    /// # Errors
    /// [`ModelError::Request`] for a position beyond the learned ones.
    fn embed(&self, ids: &Tensor, positions: &Tensor) -> Result<Tensor> {
        let e = self.embed.embedding_like(ids);
        let e = match self.cfg.embed_scale {
            // The scale rounded to f32 (and to the compute dtype) first, as transformers casts
            // it to the weights' dtype: the product is the one of that dtype.
            Some(scale) => e * f64::from(self.dtype.round(scale as f32)),
            None => e,
        };
        let Some(wpe) = &self.pos_embed else {
            return Ok(e);
        };
        let top = positions.max().int64_value(&[]);
        if top < 0 || top as usize >= self.cfg.max_positions {
            return Err(ModelError::Request(format!(
                "position {top} is beyond the model's {} learned positions",
                self.cfg.max_positions
            )));
        }
        Ok(e + wpe.embedding_like(positions))
    }

    /// The norm of a block or the final one: RMSNorm or LayerNorm, per the configuration.
    fn normalize(&self, x: &Tensor, n: &Norm) -> Tensor {
        match self.cfg.norm {
            NormKind::Rms => self.rms(x, &n.w),
            NormKind::Layer => x.layer_norm(
                [self.cfg.d_model as i64],
                Some(&n.w),
                n.b.as_ref(),
                self.cfg.rms_eps,
                false,
            ),
        }
    }

    /// RMSNorm with this model's weight convention (Gemma scales in f32; see [`rms_norm`]).
    fn rms(&self, x: &Tensor, w: &Tensor) -> Tensor {
        rms_norm(x, w, self.cfg.rms_eps, self.cfg.family == Family::Gemma3)
    }

    /// Final norm, LM head (in the compute dtype), then in f32 the soft cap, if any: logits.
    fn logits(&self, h_sel: &Tensor) -> Tensor {
        let logits = self
            .normalize(h_sel, &self.norm)
            .linear(self.head(), self.lm_head_bias.as_ref())
            .to_kind(Kind::Float);
        match self.cfg.final_logit_softcap {
            Some(c) => (logits / c).tanh() * c,
            None => logits,
        }
    }

    /// cos/sin for positions `[B, T]` -> `[B, 1, T, rotary width]`, per rotary base, each
    /// frequency repeated as the pairing wants (two halves, or adjacent pairs); `None` for a
    /// model without rotary embeddings.
    fn rope(&self, positions: &Tensor) -> Option<Rope> {
        let interleaved = match self.cfg.position_kind {
            PositionKind::Learned => return None,
            PositionKind::Rotary => false,
            PositionKind::RotaryInterleaved => true,
        };
        let table = |inv_freq: &Tensor| {
            let freqs = positions.to_kind(Kind::Float).unsqueeze(-1) * inv_freq.view([1, 1, -1]);
            let emb = if interleaved {
                Tensor::stack(&[&freqs, &freqs], -1).flatten(-2, -1)
            } else {
                Tensor::cat(&[&freqs, &freqs], -1)
            }
            .unsqueeze(1);
            // Computed in f32, used in the compute dtype (transformers' rotary embedding).
            let kind = self.dtype.kind();
            (emb.cos().to_kind(kind), emb.sin().to_kind(kind))
        };
        Some(Rope {
            global: table(&self.inv_freq),
            local: self.inv_freq_local.as_ref().map(table),
        })
    }

    /// The rotary embedding of queries or keys `[B, H, T, head_dim]`, on the first
    /// [`rotary_width`](ModelConfig::rotary_width) values of each head.
    fn rotary(&self, x: &Tensor, cos: &Tensor, sin: &Tensor) -> Tensor {
        let turn = |x: &Tensor| match self.cfg.position_kind {
            PositionKind::RotaryInterleaved => rotate_every_two(x),
            _ => rotate_half(x),
        };
        let (hd, rd) = (self.cfg.head_dim as i64, self.cfg.rotary_width() as i64);
        if rd == hd {
            return x * cos + turn(x) * sin;
        }
        let r = x.narrow(3, 0, rd);
        let turned = &r * cos + turn(&r) * sin;
        Tensor::cat(&[turned, x.narrow(3, rd, hd - rd)], 3)
    }

    /// The attention masks of a pass whose queries are the last `tq` of the keys: `key_valid`
    /// and `key_pos` are `[B, S]` (1 for real keys; token positions).
    fn masks(&self, key_valid: &Tensor, key_pos: &Tensor, tq: i64) -> Masks {
        let full = Self::attn_mask(key_valid, tq);
        let sliding = match self.cfg.sliding_window {
            Some(w) if self.cfg.sliding_layers.iter().any(|&s| s) => {
                Self::window_mask(&full, key_valid, key_pos, tq, w as i64)
            }
            _ => None,
        };
        Masks { full, sliding }
    }

    /// `full` restricted to keys less than `window` token positions before the query (the
    /// slots of a row may hold inner padding, so distances are taken between positions, not
    /// slots). `None` when no real token is that far from position 0 (then the window hides
    /// no real key from a real query).
    fn window_mask(
        full: &Tensor,
        key_valid: &Tensor,
        key_pos: &Tensor,
        tq: i64,
        window: i64,
    ) -> Option<Tensor> {
        let (b, s) = (key_pos.size()[0], key_pos.size()[1]);
        let furthest = key_pos
            .masked_fill(&key_valid.eq(0), 0)
            .max()
            .int64_value(&[]);
        if furthest < window {
            return None;
        }
        let q_pos = key_pos.narrow(1, s - tq, tq).view([b, 1, tq, 1]);
        let near = (q_pos - key_pos.view([b, 1, 1, s])).lt(window);
        Some(full.logical_and(&near))
    }

    /// Boolean attention mask `[B, 1, Tq, S]`: causal, no padding keys, each query sees itself.
    fn attn_mask(key_valid: &Tensor, tq: i64) -> Tensor {
        let (b, s) = (key_valid.size()[0], key_valid.size()[1]);
        let dev = key_valid.device();
        let q_pos = Tensor::arange_start(s - tq, s, (Kind::Int64, dev)).view([tq, 1]);
        let k_pos = Tensor::arange(s, (Kind::Int64, dev)).view([1, s]);
        let causal = k_pos.le_tensor(&q_pos); // [Tq, S]
        let diag = k_pos.eq_tensor(&q_pos);
        let valid = key_valid.ne(0).view([b, 1, 1, s]);
        causal
            .view([1, 1, tq, s])
            .logical_and(&valid)
            .logical_or(&diag.view([1, 1, tq, s]))
    }

    #[allow(clippy::too_many_arguments)]
    fn attention(
        &self,
        blk: &Block,
        x: &Tensor,
        rot: Option<(&Tensor, &Tensor)>,
        mask: &Tensor,
        cache: Option<&mut (Tensor, Tensor)>,
        packed: Option<(&Packing, i64, i64)>,
    ) -> Tensor {
        let (b, t) = match packed {
            Some((_, b, t)) => (b, t),
            None => (x.size()[0], x.size()[1]),
        };
        let (nh, nkv, hd) = (
            self.cfg.n_heads as i64,
            self.cfg.n_kv_heads as i64,
            self.cfg.head_dim as i64,
        );
        let proj = |w: &Tensor, bias: &Option<Tensor>, heads: i64, norm: &Option<Tensor>| {
            let y = x.linear(w, bias.as_ref());
            let y = match packed {
                Some((p, _, _)) => p.unpack(&y),
                None => y,
            };
            let y = y.view([b, t, heads, hd]);
            // Per-head RMSNorm (zero padding rows stay zero).
            let y = match norm {
                Some(n) => self.rms(&y, n),
                None => y,
            };
            y.transpose(1, 2)
        };
        let q = proj(&blk.wq, &blk.bq, nh, &blk.q_norm);
        let k = proj(&blk.wk, &blk.bk, nkv, &blk.k_norm);
        let v = proj(&blk.wv, &blk.bv, nkv, &None);
        let (q, k) = match rot {
            Some((cos, sin)) => (self.rotary(&q, cos, sin), self.rotary(&k, cos, sin)),
            None => (q, k),
        };
        let (k, v) = match cache {
            Some(c) => {
                let k = if c.0.numel() == 0 {
                    k
                } else {
                    Tensor::cat(&[&c.0, &k], 2)
                };
                let v = if c.1.numel() == 0 {
                    v
                } else {
                    Tensor::cat(&[&c.1, &v], 2)
                };
                *c = (k.shallow_clone(), v.shallow_clone());
                (k, v)
            }
            None => (k, v),
        };
        let y = Tensor::scaled_dot_product_attention(
            &q,
            &k,
            &v,
            Some(mask),
            0.0,
            false,
            self.cfg.attn_scale,
            nh != nkv,
        );
        let y = y.transpose(1, 2).contiguous().view([b, t, nh * hd]);
        let y = match packed {
            Some((p, _, _)) => y.view([b * t, nh * hd]).index_select(0, &p.idx),
            None => y,
        };
        y.linear(&blk.wo, blk.bo.as_ref())
    }

    /// Core pass over blocks `from..=to` with hooks; returns the final hidden states.
    #[allow(clippy::too_many_arguments)]
    fn run_blocks(
        &self,
        batch_dims: (i64, i64),
        mut h: Tensor,
        positions: &Tensor,
        masks: &Masks,
        from: usize,
        to: usize,
        plan: Option<(&Batch, &Plan)>,
        captures: &mut [Option<Tensor>],
        mut cache: Option<&mut Vec<(Tensor, Tensor)>>,
        pack: Option<&Packing>,
    ) -> Result<Tensor> {
        let (b, t) = batch_dims;
        // Hidden states hold slots offset..T when resuming after a causal prefix.
        let offset = plan
            .and_then(|(_, p)| p.start.as_ref())
            .map_or(0, |s| s.from_slot);
        let rope = self.rope(positions);
        // Rows of the (flattened or packed) hidden states at `at`.
        let rows = |at: &[(usize, usize)], batch: &Batch| -> Tensor {
            match pack {
                Some(p) => p.rows(at, batch.width - offset, offset),
                None => flat_index(batch, &at.to_vec(), offset, self.device),
            }
        };
        // Captures leave the model in f32 (the identity for an f32 model).
        let gather = |x: &Tensor, at: &Option<Vec<(usize, usize)>>, batch: &Batch| -> Tensor {
            let dim = *x.size().last().expect("hidden states have a width");
            match (at, pack) {
                (None, None) => x.shallow_clone(),
                (None, Some(p)) => p.unpack(x).view([b, t, dim]),
                (Some(at), None) => x.reshape([b * t, dim]).index_select(0, &rows(at, batch)),
                (Some(at), Some(_)) => x.index_select(0, &rows(at, batch)),
            }
            .to_kind(Kind::Float)
        };
        let kind = self.dtype.kind();
        for l in from..=to {
            let blk = &self.blocks[l];
            if let Some((batch, plan)) = plan {
                for (i, c) in plan.captures.iter().enumerate() {
                    if c.layer == l && c.site == Site::BlockIn {
                        captures[i] = Some(gather(&h, &c.at, batch));
                    }
                }
            }
            let layer_cache = cache.as_deref_mut().map(|c| &mut c[l]);
            let sliding = self.cfg.is_sliding(l);
            let rot = rope.as_ref().map(|rope| {
                let (cos, sin) = match (&rope.local, sliding) {
                    (Some(local), true) => local,
                    _ => &rope.global,
                };
                (cos, sin)
            });
            let mask = match (&masks.sliding, sliding) {
                (Some(m), true) => m,
                _ => &masks.full,
            };
            let x = self.normalize(&h, &blk.attn_norm);
            let a = self.attention(blk, &x, rot, mask, layer_cache, pack.map(|p| (p, b, t)));
            let a = match &blk.post_attn_norm {
                Some(w) => self.rms(&a, w),
                None => a,
            };
            // The MLP reads the norm of `h + a`, or in a parallel block (GPT-J) the attention's
            // own normalized input, and its output joins the residual stream with `a`.
            let (mid, n) = match &blk.mlp_norm {
                Some(norm) => {
                    let h_mid = h + a;
                    let n = self.normalize(&h_mid, norm);
                    (Mid::Serial(h_mid), n)
                }
                None => (Mid::Parallel(h, a), x),
            };
            let act = |x: Tensor| match self.cfg.activation {
                Activation::Silu => x.silu(),
                Activation::GeluTanh => x.gelu("tanh"),
            };
            let up = n.linear(&blk.w_up, blk.b_up.as_ref());
            let key = match &blk.w_gate {
                Some(gate) => act(n.linear::<Tensor>(gate, None)) * up,
                None => act(up),
            };
            // W_out's bias (GPT) is part of the MLP output that captures and edits see.
            let mut m = key.linear(&blk.w_down, blk.b_down.as_ref());
            if let Some((batch, plan)) = plan {
                for (i, c) in plan.captures.iter().enumerate() {
                    if c.layer == l && c.site == Site::MlpKey {
                        captures[i] = Some(gather(&key, &c.at, batch));
                    }
                }
                for e in plan.edits.iter().filter(|e| e.layer == l) {
                    let d = self.cfg.d_model as i64;
                    let n_at = e.at.len() as i64;
                    // Differentiable casts (the identity for an f32 delta on the model's
                    // device): gradients flow back to the caller's tensor.
                    let e_delta = e.delta.to_device(self.device).to_kind(kind);
                    let delta = if e_delta.dim() == 1 {
                        e_delta.view([1, d]).expand([n_at, d], false)
                    } else {
                        e_delta
                    };
                    m = match pack {
                        Some(_) => m.f_index_add(0, &rows(&e.at, batch), &delta)?,
                        None => m
                            .reshape([b * t, d])
                            .f_index_add(0, &rows(&e.at, batch), &delta)?
                            .view([b, t, d]),
                    };
                }
                for (i, c) in plan.captures.iter().enumerate() {
                    if c.layer == l && c.site == Site::MlpOut {
                        captures[i] = Some(gather(&m, &c.at, batch));
                    }
                }
            }
            // Captures and edits above see `m` before the post-MLP norm (if any).
            let m = match &blk.post_mlp_norm {
                Some(w) => self.rms(&m, w),
                None => m,
            };
            h = match mid {
                Mid::Serial(h_mid) => h_mid + m,
                // transformers' order: attn + mlp + residual.
                Mid::Parallel(h_in, a) => a + m + h_in,
            };
            if let Some((batch, plan)) = plan {
                for (i, c) in plan.captures.iter().enumerate() {
                    if c.layer == l && c.site == Site::BlockOut {
                        captures[i] = Some(gather(&h, &c.at, batch));
                    }
                }
            }
        }
        Ok(h)
    }

    fn validate_plan(&self, batch: &Batch, plan: &Plan) -> Result<()> {
        let d = self.cfg.d_model as i64;
        for c in &plan.captures {
            self.check_layer(c.layer)?;
            if let Some(at) = &c.at {
                check_positions(batch, at, "capture")?;
            }
        }
        for e in &plan.edits {
            self.check_layer(e.layer)?;
            check_positions(batch, &e.at, "edit")?;
            let s = e.delta.size();
            let ok = s == [d] || s == [e.at.len() as i64, d];
            if !ok {
                return Err(ModelError::Request(format!(
                    "edit at layer {}: delta has shape {s:?}, expected [{d}] or [{}, {d}]",
                    e.layer,
                    e.at.len()
                )));
            }
        }
        if let Some(s) = &plan.start {
            self.check_layer(s.layer)?;
            if s.from_slot >= batch.width {
                return Err(ModelError::Request(format!(
                    "start from_slot {} is not inside the batch width {}",
                    s.from_slot, batch.width
                )));
            }
            let want = [batch.rows() as i64, (batch.width - s.from_slot) as i64, d];
            if s.hidden.size() != want {
                return Err(ModelError::Request(format!(
                    "start hidden state has shape {:?}, expected {want:?}",
                    s.hidden.size()
                )));
            }
            if s.from_slot > 0 {
                let (nkv, hd) = (self.cfg.n_kv_heads as i64, self.cfg.head_dim as i64);
                let kv = [batch.rows() as i64, nkv, s.from_slot as i64, hd];
                let ok = s.past.len() == self.cfg.n_layers
                    && s.past[s.layer..]
                        .iter()
                        .all(|(k, v)| k.size() == kv && v.size() == kv);
                if !ok {
                    return Err(ModelError::Request(format!(
                        "start past keys/values must hold {} layers of {kv:?} (use prefix_state)",
                        self.cfg.n_layers
                    )));
                }
                // Nothing may be read or written before the recomputed slots.
                let early =
                    |at: &Vec<(usize, usize)>| at.iter().any(|&(_, slot)| slot < s.from_slot);
                let bad = plan
                    .captures
                    .iter()
                    .any(|c| c.at.as_ref().is_some_and(early))
                    || plan.edits.iter().any(|e| early(&e.at))
                    || match &plan.logprobs {
                        Some(LogProbs::Tokens { at, .. }) | Some(LogProbs::Full { at }) => {
                            early(at)
                        }
                        None => false,
                    };
                if bad {
                    return Err(ModelError::Request(format!(
                        "a capture, edit or log-prob lies before slot {} where the saved prefix ends",
                        s.from_slot
                    )));
                }
            }
        }
        let first = plan.start.as_ref().map_or(0, |s| s.layer);
        let last = plan.stop_after.unwrap_or(self.cfg.n_layers - 1);
        if let Some(stop) = plan.stop_after {
            self.check_layer(stop)?;
            if plan.logprobs.is_some() {
                return Err(ModelError::Request(
                    "logprobs requested but stop_after skips the LM head".into(),
                ));
            }
        }
        if last < first {
            return Err(ModelError::Request(format!(
                "stop_after {last} is before the start layer {first}"
            )));
        }
        for c in &plan.captures {
            if c.layer < first || c.layer > last {
                return Err(ModelError::Request(format!(
                    "capture at layer {} is outside the layers run ({first}..={last})",
                    c.layer
                )));
            }
        }
        for e in &plan.edits {
            if e.layer < first || e.layer > last {
                return Err(ModelError::Request(format!(
                    "edit at layer {} is outside the layers run ({first}..={last})",
                    e.layer
                )));
            }
        }
        match &plan.logprobs {
            Some(LogProbs::Tokens { at, tokens }) => {
                check_positions(batch, at, "logprobs")?;
                if at.len() != tokens.len() {
                    return Err(ModelError::Request(format!(
                        "logprobs: {} positions but {} tokens",
                        at.len(),
                        tokens.len()
                    )));
                }
                if let Some(&t) = tokens.iter().find(|&&t| t as usize >= self.cfg.vocab_size) {
                    return Err(ModelError::Request(format!(
                        "logprobs: token {t} is outside the vocabulary"
                    )));
                }
            }
            Some(LogProbs::Full { at }) => check_positions(batch, at, "logprobs")?,
            None => {}
        }
        Ok(())
    }

    /// Packing of the recomputed region of a forward pass, when it has padding and every
    /// position the plan reads or writes is a real token (otherwise the padded layout is used).
    fn packing(&self, batch: &Batch, plan: &Plan, offset: usize) -> Result<Option<Packing>> {
        let t = batch.width - offset;
        let Some(p) = Packing::of(&batch.mask.narrow(1, offset as i64, t as i64), self.device)?
        else {
            return Ok(None);
        };
        let mut at: Vec<&[(usize, usize)]> = Vec::new();
        for c in &plan.captures {
            match &c.at {
                Some(a) => at.push(a),
                None => return Ok(None),
            }
        }
        at.extend(plan.edits.iter().map(|e| e.at.as_slice()));
        match &plan.logprobs {
            Some(LogProbs::Tokens { at: a, .. }) | Some(LogProbs::Full { at: a }) => at.push(a),
            None => {}
        }
        let real = at.iter().all(|a| p.covers(&Packing::flat(a, t, offset)));
        Ok(real.then_some(p))
    }

    /// Rows of the final hidden states (`[B, T, d]`, or packed `[n, d]`) at `at`.
    fn select_rows(
        &self,
        h: &Tensor,
        batch: &Batch,
        at: &Positions,
        offset: usize,
        pack: Option<&Packing>,
    ) -> Tensor {
        match pack {
            Some(p) => h.index_select(0, &p.rows(at, batch.width - offset, offset)),
            None => {
                let d = self.cfg.d_model as i64;
                h.reshape([-1, d])
                    .index_select(0, &flat_index(batch, at, offset, self.device))
            }
        }
    }

    /// Final norm + LM head on selected rows of flattened hidden states -> log-softmax.
    fn head_logprobs(&self, h_sel: &Tensor) -> Tensor {
        self.logits(h_sel).log_softmax(-1, Kind::Float)
    }

    /// Logits (not log-probabilities) at each row's last real token: `[B, vocab]`.
    pub fn last_logits(&self, batch: &Batch) -> Result<Tensor> {
        let _g = tch::no_grad_guard();
        let (b, t) = (batch.rows() as i64, batch.width as i64);
        let h0 = self.embed(&batch.ids, &batch.positions)?;
        let masks = self.masks(&batch.mask, &batch.positions, t);
        let mut caps = [];
        let h = self.run_blocks(
            (b, t),
            h0,
            &batch.positions,
            &masks,
            0,
            self.cfg.n_layers - 1,
            None,
            &mut caps,
            None,
            None,
        )?;
        let at: Vec<(usize, usize)> = batch.last_slots().into_iter().enumerate().collect();
        let sel = h
            .reshape([b * t, self.cfg.d_model as i64])
            .index_select(0, &flat_index(batch, &at, 0, self.device));
        Ok(self.logits(&sel))
    }
}

trait EmbeddingExt {
    fn embedding_like(&self, ids: &Tensor) -> Tensor;
}

impl EmbeddingExt for Tensor {
    fn embedding_like(&self, ids: &Tensor) -> Tensor {
        Tensor::embedding(self, ids, -1, false, false)
    }
}

impl EditableLm for LlamaModel {
    fn config(&self) -> &ModelConfig {
        &self.cfg
    }

    fn tokenizer(&self) -> &Tokenizer {
        &self.tok
    }

    fn device(&self) -> Device {
        self.device
    }

    fn dtype(&self) -> Dtype {
        self.dtype
    }

    fn forward(&self, batch: &Batch, plan: &Plan) -> Result<Output> {
        self.validate_plan(batch, plan)?;
        if let Some(&t) = Vec::<i64>::try_from(batch.ids.flatten(0, -1))?
            .iter()
            .find(|&&t| t < 0 || t as usize >= self.cfg.vocab_size)
        {
            return Err(ModelError::Request(format!(
                "token id {t} is outside the vocabulary"
            )));
        }
        let b = batch.rows() as i64;
        let offset = plan.start.as_ref().map_or(0, |s| s.from_slot);
        let t = (batch.width - offset) as i64;
        let kind = self.dtype.kind();
        let (from, h0) = match &plan.start {
            // A start state from elsewhere (e.g. an f32 capture) joins in the compute dtype.
            Some(s) => (s.layer, s.hidden.to_device(self.device).to_kind(kind)),
            None => (0, self.embed(&batch.ids, &batch.positions)?),
        };
        let to = plan.stop_after.unwrap_or(self.cfg.n_layers - 1);
        let masks = self.masks(&batch.mask, &batch.positions, t);
        let positions = batch.positions.narrow(1, offset as i64, t);
        // A fresh list of (shared) past keys/values: the pass appends to its own copy.
        let mut past: Option<Vec<(Tensor, Tensor)>> =
            plan.start.as_ref().filter(|s| s.from_slot > 0).map(|s| {
                s.past
                    .iter()
                    .map(|(k, v)| {
                        // Layers below the start hold no keys (undefined tensors).
                        let put = |x: &Tensor| {
                            if x.defined() {
                                x.to_device(self.device).to_kind(kind)
                            } else {
                                x.shallow_clone()
                            }
                        };
                        (put(k), put(v))
                    })
                    .collect()
            });
        let mut caps: Vec<Option<Tensor>> = (0..plan.captures.len()).map(|_| None).collect();
        let pack = self.packing(batch, plan, offset)?;
        let h0 = match &pack {
            Some(p) => h0
                .reshape([b * t, self.cfg.d_model as i64])
                .index_select(0, &p.idx),
            None => h0,
        };
        let h = self.run_blocks(
            (b, t),
            h0,
            &positions,
            &masks,
            from,
            to,
            Some((batch, plan)),
            &mut caps,
            past.as_mut(),
            pack.as_ref(),
        )?;
        let logprobs = match &plan.logprobs {
            None => None,
            Some(LogProbs::Tokens { at, tokens }) => {
                let sel = self.select_rows(&h, batch, at, offset, pack.as_ref());
                let lp = self.head_logprobs(&sel);
                let tok: Vec<i64> = tokens.iter().map(|&x| x as i64).collect();
                let tok = Tensor::from_slice(&tok)
                    .to_device(self.device)
                    .view([-1, 1]);
                Some(lp.gather(1, &tok, false).view([-1]))
            }
            Some(LogProbs::Full { at }) => {
                let sel = self.select_rows(&h, batch, at, offset, pack.as_ref());
                Some(self.head_logprobs(&sel))
            }
        };
        Ok(Output {
            captures: caps
                .into_iter()
                .map(|c| c.expect("every capture lies in the layers run (validated)"))
                .collect(),
            logprobs,
        })
    }

    fn prefix_state(&self, batch: &Batch, layer: usize, from_slot: usize) -> Result<Start> {
        self.check_layer(layer)?;
        if from_slot >= batch.width {
            return Err(ModelError::Request(format!(
                "from_slot {from_slot} is not inside the batch width {}",
                batch.width
            )));
        }
        let _g = tch::no_grad_guard();
        let (b, t) = (batch.rows() as i64, batch.width as i64);
        let masks = self.masks(&batch.mask, &batch.positions, t);
        let mut caps = [];
        let h0 = self.embed(&batch.ids, &batch.positions)?;
        let h = if layer == 0 {
            h0
        } else {
            self.run_blocks(
                (b, t),
                h0,
                &batch.positions,
                &masks,
                0,
                layer - 1,
                None,
                &mut caps,
                None,
                None,
            )?
        };
        let mut past: Vec<(Tensor, Tensor)> = (0..self.cfg.n_layers)
            .map(|_| (Tensor::new(), Tensor::new()))
            .collect();
        if from_slot > 0 {
            // Slots before from_slot never attend to later ones: run them alone through the
            // upper blocks, recording their keys and values.
            let s0 = from_slot as i64;
            let pmasks = self.masks(
                &batch.mask.narrow(1, 0, s0),
                &batch.positions.narrow(1, 0, s0),
                s0,
            );
            // Only the recorded keys/values are needed, not the prefix's hidden states.
            let _ = self.run_blocks(
                (b, s0),
                h.narrow(1, 0, s0),
                &batch.positions.narrow(1, 0, s0),
                &pmasks,
                layer,
                self.cfg.n_layers - 1,
                None,
                &mut caps,
                Some(&mut past),
                None,
            )?;
        }
        Ok(Start {
            layer,
            hidden: h
                .narrow(1, from_slot as i64, t - from_slot as i64)
                .contiguous(),
            from_slot,
            past,
        })
    }

    fn generate_with(
        &self,
        prompts: &[Vec<u32>],
        max_new: usize,
        stop: &[u32],
        mut pick: Option<&mut TokenPicker<'_>>,
    ) -> Result<Vec<Generation>> {
        let _g = tch::no_grad_guard();
        let batch = Batch::new(prompts, self.tok.pad_id, Padding::Left, self.device)?;
        if let Some(&t) = prompts
            .iter()
            .flatten()
            .find(|&&t| t as usize >= self.cfg.vocab_size)
        {
            return Err(ModelError::Request(format!(
                "token id {t} is outside the vocabulary"
            )));
        }
        let (b, t) = (batch.rows() as i64, batch.width as i64);
        let d = self.cfg.d_model as i64;
        let mut out: Vec<Generation> = (0..prompts.len())
            .map(|_| Generation {
                tokens: vec![],
                stopped: false,
            })
            .collect();
        if max_new == 0 {
            return Ok(out);
        }
        // Learned positions: the last token fed sits at `width + max_new - 2` at most.
        if self.cfg.position_kind == PositionKind::Learned
            && batch.width + max_new - 1 > self.cfg.max_positions
        {
            return Err(ModelError::Request(format!(
                "{} prompt tokens and {max_new} new ones do not fit in the model's {} learned positions",
                batch.width, self.cfg.max_positions
            )));
        }
        let mut cache: Vec<(Tensor, Tensor)> = (0..self.cfg.n_layers)
            .map(|_| (Tensor::new(), Tensor::new()))
            .collect();
        let mut key_valid = batch.mask.shallow_clone();
        let mut key_pos = batch.positions.shallow_clone();
        let masks = self.masks(&key_valid, &key_pos, t);
        let mut caps = [];
        let h = self.run_blocks(
            (b, t),
            self.embed(&batch.ids, &batch.positions)?,
            &batch.positions,
            &masks,
            0,
            self.cfg.n_layers - 1,
            None,
            &mut caps,
            Some(&mut cache),
            None,
        )?;
        let mut last = h.select(1, t - 1); // left padding: the last slot is every row's last token
        let mut next_pos: Vec<i64> = batch.lengths.iter().map(|&l| l as i64).collect();
        for step in 0..max_new {
            let logits = self.logits(&last);
            let next: Vec<i64> = match pick.as_deref_mut() {
                None => Vec::<i64>::try_from(logits.argmax(-1, false))?,
                Some(pick) => {
                    let v = self.cfg.vocab_size;
                    let flat = Vec::<f32>::try_from(logits.to_device(Device::Cpu).reshape([-1]))?;
                    flat.chunks(v)
                        .enumerate()
                        .map(|(r, row)| {
                            let t = pick(r, row) as i64;
                            if t as usize >= v {
                                Err(ModelError::Request(format!(
                                    "picker chose token {t}, outside the vocabulary"
                                )))
                            } else {
                                Ok(t)
                            }
                        })
                        .collect::<Result<_>>()?
                }
            };
            for (r, &tok) in next.iter().enumerate() {
                let g = &mut out[r];
                if g.stopped {
                    continue;
                }
                if stop.contains(&(tok as u32)) {
                    g.stopped = true;
                } else {
                    g.tokens.push(tok as u32);
                }
            }
            if step + 1 == max_new || out.iter().all(|g| g.stopped) {
                break;
            }
            let ids = Tensor::from_slice(&next)
                .to_device(self.device)
                .view([b, 1]);
            let pos = Tensor::from_slice(&next_pos)
                .to_device(self.device)
                .view([b, 1]);
            key_valid = Tensor::cat(
                &[
                    &key_valid,
                    &Tensor::ones([b, 1], (Kind::Int64, self.device)),
                ],
                1,
            );
            key_pos = Tensor::cat(&[&key_pos, &pos], 1);
            let masks = self.masks(&key_valid, &key_pos, 1);
            let h = self.run_blocks(
                (b, 1),
                self.embed(&ids, &pos)?,
                &pos,
                &masks,
                0,
                self.cfg.n_layers - 1,
                None,
                &mut caps,
                Some(&mut cache),
                None,
            )?;
            last = h.view([b, d]);
            for p in next_pos.iter_mut() {
                *p += 1;
            }
        }
        Ok(out)
    }

    fn w_out(&self, layer: usize) -> Result<Tensor> {
        self.check_layer(layer)?;
        let w = &self.blocks[layer].w_down;
        Ok(if w.kind() == Kind::Float {
            w.copy()
        } else {
            w.to_kind(Kind::Float)
        })
    }

    fn apply_delta(&mut self, layer: usize, delta: &Tensor) -> Result<()> {
        self.check_layer(layer)?;
        let want = [self.cfg.d_model as i64, self.cfg.d_ff as i64];
        if delta.size() != want {
            return Err(ModelError::Request(format!(
                "delta for layer {layer} has shape {:?}, expected {want:?} (d_model x d_ff, key->residual)",
                delta.size()
            )));
        }
        let finite = delta.isfinite().all().int64_value(&[]) == 1;
        if !finite {
            return Err(ModelError::Request(format!(
                "delta for layer {layer} contains NaN or infinity"
            )));
        }
        let _g = tch::no_grad_guard();
        let d = delta.to_device(self.device).to_kind(Kind::Float);
        let w = &mut self.blocks[layer].w_down;
        let kind = w.kind();
        let (orig, acc) = self
            .originals
            .entry(layer)
            .or_insert_with(|| (w.copy(), Tensor::zeros(w.size(), (Kind::Float, w.device()))));
        // W = W0 + sum of deltas: the same bits whether deltas came one by one or from a patch.
        // The sum stays f32; a reduced-precision model holds the rounded result.
        *acc = &*acc + d;
        *w = if kind == Kind::Float {
            &*orig + &*acc
        } else {
            (orig.to_kind(Kind::Float) + &*acc).to_kind(kind)
        };
        Ok(())
    }

    fn restore(&mut self) {
        for (layer, (w, _)) in self.originals.drain() {
            self.blocks[layer].w_down = w;
        }
    }

    fn accumulated_delta(&self, layer: usize) -> Result<Option<Tensor>> {
        self.check_layer(layer)?;
        Ok(self.originals.get(&layer).map(|(_, acc)| acc.copy()))
    }

    fn base_sha256(&self) -> Result<String> {
        if let Some(s) = self.sha256.get() {
            return Ok(s.clone());
        }
        let s = crate::patch::sha256_files(&self.source.identity_files()?)?;
        Ok(self.sha256.get_or_init(|| s).clone())
    }

    fn edited_layers(&self) -> Vec<usize> {
        let mut v: Vec<usize> = self.originals.keys().copied().collect();
        v.sort_unstable();
        v
    }
}
