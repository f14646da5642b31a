//! The model seam: what knowledge editing needs from a causal language model, nothing more.
//!
//! [`EditableLm`] is implemented once per architecture (today [`crate::llama::LlamaModel`] for
//! the Llama family); an inference stack with its own model can implement it too. A forward
//! pass takes a [`Batch`] of padded prompts and a [`Plan`] of interventions:
//! - capture activations ([`Site::MlpKey`] — the input of `W_out`, i.e. the *key* —,
//!   [`Site::MlpOut`], [`Site::BlockIn`], [`Site::BlockOut`]) at chosen `(row, position)`s;
//! - add vectors to the MLP output of a layer at chosen positions (autograd flows into them);
//! - start at a layer from cached hidden states, or stop after a layer;
//! - return log-probabilities only at requested positions, for requested tokens.

use crate::config::ModelConfig;
use crate::error::{ModelError, Result};
use crate::tokenizer::Tokenizer;
use tch::{Device, Kind, Tensor};

/// How a batch was padded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Padding {
    /// Real tokens first, padding after (natural for fixed positions).
    Right,
    /// Padding first, real tokens last (natural for generation).
    Left,
}

/// A batch of token sequences, padded to one length.
#[derive(Debug)]
pub struct Batch {
    /// Token ids `[B, T]` (i64).
    pub ids: Tensor,
    /// 1 for real tokens, 0 for padding, `[B, T]` (i64).
    pub mask: Tensor,
    /// Rotary position of every slot, `[B, T]` (i64): 0 at each row's first real token.
    pub positions: Tensor,
    /// Real length of every row.
    pub lengths: Vec<usize>,
    /// Padded index of every row's first real token.
    pub starts: Vec<usize>,
    /// Padded length `T`.
    pub width: usize,
    /// Which side was padded.
    pub padding: Padding,
}

impl Batch {
    /// Pad `seqs` with `pad_id` on the given side. Empty batches and empty rows are errors.
    pub fn new(seqs: &[Vec<u32>], pad_id: u32, padding: Padding, device: Device) -> Result<Self> {
        if seqs.is_empty() {
            return Err(ModelError::Request("empty batch".into()));
        }
        if let Some(i) = seqs.iter().position(|s| s.is_empty()) {
            return Err(ModelError::Request(format!(
                "row {i} of the batch has no tokens"
            )));
        }
        let width = seqs.iter().map(Vec::len).max().unwrap_or(0);
        let b = seqs.len();
        let mut ids = vec![pad_id as i64; b * width];
        let mut mask = vec![0i64; b * width];
        let mut pos = vec![0i64; b * width];
        let mut starts = Vec::with_capacity(b);
        for (r, s) in seqs.iter().enumerate() {
            let start = match padding {
                Padding::Right => 0,
                Padding::Left => width - s.len(),
            };
            starts.push(start);
            for (j, &t) in s.iter().enumerate() {
                ids[r * width + start + j] = t as i64;
                mask[r * width + start + j] = 1;
                pos[r * width + start + j] = j as i64;
            }
            // Padding slots get the next positions, so nothing is out of range.
            for (k, slot) in (0..width)
                .filter(|&k| k < start || k >= start + s.len())
                .enumerate()
            {
                pos[r * width + slot] = (s.len() + k) as i64;
            }
        }
        let shape = [b as i64, width as i64];
        Ok(Batch {
            ids: Tensor::from_slice(&ids).reshape(shape).to_device(device),
            mask: Tensor::from_slice(&mask).reshape(shape).to_device(device),
            positions: Tensor::from_slice(&pos).reshape(shape).to_device(device),
            lengths: seqs.iter().map(Vec::len).collect(),
            starts,
            width,
            padding,
        })
    }

    /// Number of rows.
    pub fn rows(&self) -> usize {
        self.lengths.len()
    }

    /// Padded slot of token `index` (0-based within the row's real tokens).
    pub fn slot(&self, row: usize, index: usize) -> Result<usize> {
        match self.lengths.get(row) {
            Some(&len) if index < len => Ok(self.starts[row] + index),
            Some(&len) => Err(ModelError::Request(format!(
                "token {index} of row {row} requested, the row has {len} tokens"
            ))),
            None => Err(ModelError::Request(format!(
                "row {row} requested, the batch has {} rows",
                self.rows()
            ))),
        }
    }

    /// Padded slot of every row's last real token.
    pub fn last_slots(&self) -> Vec<usize> {
        self.starts
            .iter()
            .zip(&self.lengths)
            .map(|(s, l)| s + l - 1)
            .collect()
    }
}

/// Where in a block an activation is read or written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Site {
    /// The residual stream entering the block (what [`Start`] takes).
    BlockIn,
    /// The input of `W_out` (`act(gate)·up` in Llama): the *key*, `d_ff` wide.
    MlpKey,
    /// The output of `W_out` (the MLP's contribution to the residual stream), `d_model` wide.
    MlpOut,
    /// The residual stream leaving the block.
    BlockOut,
}

/// `(row, slot)` pairs, slots in padded coordinates (see [`Batch::slot`]).
pub type Positions = Vec<(usize, usize)>;

/// Read an activation.
#[derive(Debug, Clone)]
pub struct Capture {
    /// Block index.
    pub layer: usize,
    /// Which activation.
    pub site: Site,
    /// Where; `None` captures every slot (`[B, T, dim]`), otherwise `[n, dim]` in this order.
    pub at: Option<Positions>,
}

/// Add vectors to the MLP output of a layer.
#[derive(Debug)]
pub struct Edit {
    /// Block index.
    pub layer: usize,
    /// Where to add.
    pub at: Positions,
    /// `[d_model]` (added at every position) or `[n, d_model]` (one per position); may require
    /// grad.
    pub delta: Tensor,
}

/// Begin the forward pass at a block from saved state instead of the embeddings.
///
/// Two savings an optimizer loop wants, both exact:
/// - **lower layers**: blocks before `layer` are not run again (`hidden` is the residual stream
///   entering `layer`);
/// - **causal prefix**: when nothing changes before slot `from_slot` (an edit at the subject's
///   last token leaves every earlier position untouched in every layer), only slots
///   `from_slot..T` are recomputed, attending to the saved keys/values `past` of the earlier
///   slots. [`EditableLm::prefix_state`] builds such a value.
#[derive(Debug)]
pub struct Start {
    /// First block to run.
    pub layer: usize,
    /// The residual stream entering that block at slots `from_slot..T`: `[B, T - from_slot, d]`.
    pub hidden: Tensor,
    /// First recomputed slot (0: all).
    pub from_slot: usize,
    /// Per layer (all layers; entries below `layer` are unused): attention keys and values of
    /// slots `0..from_slot` after rotary embedding, `[B, kv_heads, from_slot, head_dim]`.
    /// Empty when `from_slot` is 0.
    pub past: Vec<(Tensor, Tensor)>,
}

impl Start {
    /// Start at `layer` from the full residual stream entering it (`[B, T, d]`).
    pub fn at_layer(layer: usize, hidden: Tensor) -> Self {
        Start {
            layer,
            hidden,
            from_slot: 0,
            past: Vec::new(),
        }
    }

    /// A copy sharing storage (cheap), for reuse across optimizer steps.
    pub fn shallow_clone(&self) -> Self {
        Start {
            layer: self.layer,
            hidden: self.hidden.shallow_clone(),
            from_slot: self.from_slot,
            past: self
                .past
                .iter()
                .map(|(k, v)| (k.shallow_clone(), v.shallow_clone()))
                .collect(),
        }
    }
}

/// What to return from the LM head.
#[derive(Debug, Clone)]
pub enum LogProbs {
    /// Log-probability of `tokens[i]` at `at[i]`: `[n]`.
    Tokens {
        /// Where.
        at: Positions,
        /// Which token at each place.
        tokens: Vec<u32>,
    },
    /// The full log-softmax over the vocabulary at each place: `[n, vocab]`.
    Full {
        /// Where.
        at: Positions,
    },
}

/// The interventions of one forward pass.
#[derive(Debug, Default)]
pub struct Plan {
    /// Activations to read.
    pub captures: Vec<Capture>,
    /// Vectors to add to MLP outputs.
    pub edits: Vec<Edit>,
    /// Start from cached hidden states.
    pub start: Option<Start>,
    /// Run no block after this one (and no LM head).
    pub stop_after: Option<usize>,
    /// What to return from the LM head (nothing if `None`).
    pub logprobs: Option<LogProbs>,
}

/// Results of a forward pass.
#[derive(Debug)]
pub struct Output {
    /// One tensor per [`Capture`], in order.
    pub captures: Vec<Tensor>,
    /// The requested log-probabilities.
    pub logprobs: Option<Tensor>,
}

/// A generation request's result for one prompt.
#[derive(Debug, Clone, PartialEq)]
pub struct Generation {
    /// Newly generated ids (the stop token, if one ended the row, is not included).
    pub tokens: Vec<u32>,
    /// Whether a stop token ended the row (otherwise the length limit did).
    pub stopped: bool,
}

/// Chooses a row's next token from its logits: `pick(row, logits) -> token id`.
pub type TokenPicker<'a> = dyn FnMut(usize, &[f32]) -> u32 + 'a;

/// What knowledge editing needs from a causal LM.
pub trait EditableLm {
    /// Hyperparameters.
    fn config(&self) -> &ModelConfig;
    /// The tokenizer.
    fn tokenizer(&self) -> &Tokenizer;
    /// Device the weights live on.
    fn device(&self) -> Device;
    /// One forward pass with interventions.
    fn forward(&self, batch: &Batch, plan: &Plan) -> Result<Output>;
    /// Saved state to resume `batch` at block `layer`, recomputing only slots `from_slot..T`
    /// (no gradients are recorded). See [`Start`].
    fn prefix_state(&self, batch: &Batch, layer: usize, from_slot: usize) -> Result<Start>;
    /// Greedy decoding with a KV cache, batched; stops a row at any of `stop` tokens.
    fn generate(
        &self,
        prompts: &[Vec<u32>],
        max_new: usize,
        stop: &[u32],
    ) -> Result<Vec<Generation>> {
        self.generate_with(prompts, max_new, stop, None)
    }
    /// Decoding with a KV cache, batched, where `pick` (if given) chooses each row's next
    /// token from its logits (`pick(row, logits)`; rows are visited in order, so a seeded
    /// sampler is deterministic); `None` is greedy.
    fn generate_with(
        &self,
        prompts: &[Vec<u32>],
        max_new: usize,
        stop: &[u32],
        pick: Option<&mut TokenPicker<'_>>,
    ) -> Result<Vec<Generation>>;
    /// `W_out` of a block in key→residual orientation: `[d_model, d_ff]`, so that
    /// `mlp_out = W_out · key`. A copy.
    fn w_out(&self, layer: usize) -> Result<Tensor>;
    /// `W_out += delta` (`delta` is `[d_model, d_ff]`, key→residual), whatever the storage.
    fn apply_delta(&mut self, layer: usize, delta: &Tensor) -> Result<()>;
    /// Undo every [`EditableLm::apply_delta`]: bit-exact original weights.
    fn restore(&mut self);
    /// Layers whose `W_out` differs from the loaded weights.
    fn edited_layers(&self) -> Vec<usize>;
    /// Sum of the deltas applied to a layer since loading or the last restore (`None` if none).
    fn accumulated_delta(&self, layer: usize) -> Result<Option<Tensor>>;
    /// SHA-256 identifying the base model's files (what patches record and check).
    fn base_sha256(&self) -> Result<String>;
}

/// Check a `(row, slot)` list against a batch.
pub(crate) fn check_positions(batch: &Batch, at: &Positions, what: &str) -> Result<()> {
    for &(r, s) in at {
        if r >= batch.rows() || s >= batch.width {
            return Err(ModelError::Request(format!(
                "{what}: position (row {r}, slot {s}) is outside the {}x{} batch",
                batch.rows(),
                batch.width
            )));
        }
    }
    Ok(())
}

/// Flat indices `row * (T - offset) + slot - offset` as an i64 tensor, for hidden states that
/// hold slots `offset..T` (callers check `slot >= offset`).
pub(crate) fn flat_index(batch: &Batch, at: &Positions, offset: usize, device: Device) -> Tensor {
    let w = batch.width - offset;
    let idx: Vec<i64> = at
        .iter()
        .map(|&(r, s)| (r * w + s - offset) as i64)
        .collect();
    Tensor::from_slice(&idx)
        .to_device(device)
        .to_kind(Kind::Int64)
}
