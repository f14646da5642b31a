//! The model seam: what knowledge editing needs from a causal language model, nothing more.
//!
//! [`EditableLm`] is implemented once per architecture (today [`crate::llama::LlamaModel`] for
//! the Llama family, Gemma 3, GPT-2 and GPT-J); an inference stack with its own model can implement it too. A
//! forward pass takes a [`Batch`] of padded prompts and a [`Plan`] of interventions:
//! - capture activations ([`Site::MlpKey`] — the input of `W_out`, i.e. the *key* —,
//!   [`Site::MlpOut`], [`Site::BlockIn`], [`Site::BlockOut`]) at chosen `(row, position)`s;
//! - add vectors to the MLP output of a layer at chosen positions (autograd flows into them);
//! - start at a layer from cached hidden states, or stop after a layer;
//! - return log-probabilities only at requested positions, for requested tokens.

use crate::compute::Dtype;
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
    /// The input of `W_out` (`act(gate)·up` in Llama, `gelu(c_fc(x))` in GPT-2, the GELU of
    /// `fc_in` in GPT-J): the *key*, `d_ff` wide.
    MlpKey,
    /// The output of `W_out`, `d_model` wide: the MLP's contribution to the residual stream in
    /// the Llama family. Gemma normalizes it (post-feed-forward norm) before adding it, so
    /// there this is the pre-norm output and the contribution is `RMSNorm(MlpOut)`; edits are
    /// added here either way, so `W_out += Δ` still equals adding `Δ·key` at this site. GPT-2's
    /// `c_proj` and GPT-J's `fc_out` have a bias: it is included here (`W_out·key + b`), and
    /// edits are added after it.
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
    /// Device the weights live on. Tensors handed to the model (edit deltas, start states)
    /// belong there; what it returns lives there too (copy to the CPU to read values).
    fn device(&self) -> Device;
    /// The type the weights are held and the forward pass computed in ([`Dtype::F32`] unless
    /// loaded otherwise). Whatever it is, captures, logits and log-probabilities,
    /// [`w_out`](Self::w_out) and [`accumulated_delta`](Self::accumulated_delta) are f32, and
    /// f32 edit deltas are accepted (and differentiated through).
    fn dtype(&self) -> Dtype {
        Dtype::F32
    }
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
    /// `mlp_out = W_out · key`. A copy, in f32 (the compute-dtype weights, widened).
    fn w_out(&self, layer: usize) -> Result<Tensor>;
    /// `W_out += delta` (`delta` is `[d_model, d_ff]`, key→residual), whatever the storage.
    /// Deltas accumulate in f32; a reduced-precision model holds `round(W₀ + Σ delta)` with
    /// `W₀` its loaded weights.
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

/// Where one part of a [`JoinedStart`] lies in the joined batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct PartLayout {
    row_offset: usize,
    rows: usize,
    width: usize,
    from_slot: usize,
    /// Added to a slot before the part's `from_slot`.
    past_shift: usize,
    /// Added to a slot at or after the part's `from_slot`.
    tail_shift: usize,
}

/// Several prefix-saved batches joined into one batch and one [`Start`], so that a single
/// forward pass serves them all (batched optimization of many facts at once).
///
/// Each part is a batch with its own saved causal prefix ([`EditableLm::prefix_state`], all at
/// the same layer). With `P` the longest saved prefix and `T` the longest recomputed tail of the
/// parts, every joined row is `P + T` slots wide: the part's saved slots are right-aligned in
/// the first `P` slots and its recomputed slots right-aligned in the last `T`. The slots in
/// between are padding (mask 0) and may lie *inside* a row, which attention handles like any
/// other padding. So nothing is recomputed that a part alone would not recompute, apart from
/// the padding, and every real token sees exactly the tokens it saw in its own batch.
///
/// Positions of a part translate with [`JoinedStart::map`]; the joined batch's
/// [`Batch::slot`] does not apply to rows with inner padding. A single part joins to a copy
/// of itself (no padding is added), so the joined pass computes exactly what the part's own
/// pass computes.
#[derive(Debug)]
pub struct JoinedStart {
    /// The joined batch: rows of part 0, then of part 1, ….
    pub batch: Batch,
    /// The joined start state.
    pub start: Start,
    parts: Vec<PartLayout>,
}

impl JoinedStart {
    /// Joins `parts` (each a batch and the [`Start`] that [`EditableLm::prefix_state`] made for
    /// it); `pad_id` fills the inner padding's token ids.
    ///
    /// # Errors
    /// [`ModelError::Request`] for no parts, parts that start at different layers or live on
    /// different devices, or a start whose shapes do not fit its batch.
    pub fn join(parts: &[(&Batch, &Start)], pad_id: u32) -> Result<Self> {
        let bad = |m: String| Err(ModelError::Request(format!("joining start states: {m}")));
        let Some(&(_, first)) = parts.first() else {
            return bad("no parts".into());
        };
        let layer = first.layer;
        let device = first.hidden.device();
        let hs = first.hidden.size();
        if hs.len() != 3 {
            return bad(format!("part 0 has a hidden state of shape {hs:?}"));
        }
        let d = hs[2];
        // The past's (kv heads, head dim) and layer count, from any part that has a past.
        let mut past_dims: Option<(usize, i64, i64)> = None;
        for (i, &(b, s)) in parts.iter().enumerate() {
            if s.layer != layer {
                return bad(format!(
                    "part {i} starts at layer {}, part 0 at layer {layer}",
                    s.layer
                ));
            }
            if s.hidden.device() != device {
                return bad(format!("part {i} lives on another device"));
            }
            if s.from_slot >= b.width {
                return bad(format!(
                    "part {i}: from_slot {} is not inside its width {}",
                    s.from_slot, b.width
                ));
            }
            let want = [b.rows() as i64, (b.width - s.from_slot) as i64, d];
            if s.hidden.size() != want {
                return bad(format!(
                    "part {i}: hidden state {:?}, expected {want:?}",
                    s.hidden.size()
                ));
            }
            if s.from_slot > 0 {
                let Some((k, v)) = s.past.get(layer) else {
                    return bad(format!("part {i} has no saved keys/values"));
                };
                let ks = k.size();
                if ks.len() != 4
                    || ks[0] != b.rows() as i64
                    || ks[2] != s.from_slot as i64
                    || v.size() != ks
                {
                    return bad(format!("part {i}: saved keys of shape {ks:?}"));
                }
                let dims = (s.past.len(), ks[1], ks[3]);
                match past_dims {
                    None => past_dims = Some(dims),
                    Some(p) if p == dims => {}
                    Some(p) => {
                        return bad(format!(
                            "part {i}: saved keys/values ({} layers, {} heads of {}) differ from an earlier part's ({} layers, {} heads of {})",
                            dims.0, dims.1, dims.2, p.0, p.1, p.2
                        ))
                    }
                }
            }
        }
        if parts.len() == 1 {
            let (b, s) = parts[0];
            return Ok(JoinedStart {
                batch: Batch {
                    ids: b.ids.shallow_clone(),
                    mask: b.mask.shallow_clone(),
                    positions: b.positions.shallow_clone(),
                    lengths: b.lengths.clone(),
                    starts: b.starts.clone(),
                    width: b.width,
                    padding: b.padding,
                },
                start: s.shallow_clone(),
                parts: vec![PartLayout {
                    row_offset: 0,
                    rows: b.rows(),
                    width: b.width,
                    from_slot: s.from_slot,
                    past_shift: 0,
                    tail_shift: 0,
                }],
            });
        }
        let p = parts.iter().map(|(_, s)| s.from_slot).max().unwrap_or(0);
        let t = parts
            .iter()
            .map(|(b, s)| b.width - s.from_slot)
            .max()
            .unwrap_or(0);
        let width = p + t;
        let mut layouts = Vec::with_capacity(parts.len());
        let (mut ids, mut mask, mut pos, mut hidden) = (vec![], vec![], vec![], vec![]);
        let (mut lengths, mut starts) = (vec![], vec![]);
        let mut row = 0;
        for &(b, s) in parts {
            let r = b.rows() as i64;
            let sf = s.from_slot;
            let tail = b.width - sf;
            let layout = PartLayout {
                row_offset: row,
                rows: b.rows(),
                width: b.width,
                from_slot: sf,
                past_shift: p - sf,
                tail_shift: p + t - b.width,
            };
            // [pad (P - s)] [saved slots] [pad (T - tail)] [recomputed slots]
            let spread = |x: &Tensor, fill: i64| -> Tensor {
                let kind = x.kind();
                let pad = |n: usize| Tensor::full([r, n as i64], fill, (kind, device));
                Tensor::cat(
                    &[
                        pad(p - sf),
                        x.narrow(1, 0, sf as i64),
                        pad(t - tail),
                        x.narrow(1, sf as i64, tail as i64),
                    ],
                    1,
                )
            };
            ids.push(spread(&b.ids, i64::from(pad_id)));
            mask.push(spread(&b.mask, 0));
            pos.push(spread(&b.positions, 0));
            hidden.push(Tensor::cat(
                &[
                    Tensor::zeros([r, (t - tail) as i64, d], (s.hidden.kind(), device)),
                    s.hidden.shallow_clone(),
                ],
                1,
            ));
            lengths.extend_from_slice(&b.lengths);
            starts.extend(b.starts.iter().map(|&st| {
                if st < sf {
                    st + layout.past_shift
                } else {
                    st + layout.tail_shift
                }
            }));
            row += b.rows();
            layouts.push(layout);
        }
        let past = match past_dims {
            None => Vec::new(),
            Some((n_layers, kv, hd)) => (0..n_layers)
                .map(|l| {
                    if l < layer {
                        return (Tensor::new(), Tensor::new());
                    }
                    let side = |which: usize| {
                        let pieces: Vec<Tensor> = parts
                            .iter()
                            .map(|&(b, s)| {
                                let r = b.rows() as i64;
                                let kind = first_kind(parts, layer);
                                let pad = Tensor::zeros(
                                    [r, kv, (p - s.from_slot) as i64, hd],
                                    (kind, device),
                                );
                                if s.from_slot == 0 {
                                    pad
                                } else {
                                    let x = if which == 0 {
                                        &s.past[l].0
                                    } else {
                                        &s.past[l].1
                                    };
                                    Tensor::cat(&[&pad, x], 2)
                                }
                            })
                            .collect();
                        Tensor::cat(&pieces, 0)
                    };
                    (side(0), side(1))
                })
                .collect(),
        };
        Ok(JoinedStart {
            batch: Batch {
                ids: Tensor::cat(&ids, 0),
                mask: Tensor::cat(&mask, 0),
                positions: Tensor::cat(&pos, 0),
                lengths,
                starts,
                width,
                padding: Padding::Left,
            },
            start: Start {
                layer,
                hidden: Tensor::cat(&hidden, 0),
                from_slot: p,
                past,
            },
            parts: layouts,
        })
    }

    /// Number of joined parts.
    pub fn parts(&self) -> usize {
        self.parts.len()
    }

    /// The joined `(row, slot)` of part `part`'s `(row, slot)`.
    ///
    /// # Errors
    /// [`ModelError::Request`] for a part, row or slot that does not exist.
    pub fn map(&self, part: usize, (row, slot): (usize, usize)) -> Result<(usize, usize)> {
        let Some(l) = self.parts.get(part) else {
            return Err(ModelError::Request(format!(
                "part {part} requested, {} were joined",
                self.parts.len()
            )));
        };
        if row >= l.rows || slot >= l.width {
            return Err(ModelError::Request(format!(
                "part {part}: (row {row}, slot {slot}) is outside its {}x{} batch",
                l.rows, l.width
            )));
        }
        let s = if slot < l.from_slot {
            slot + l.past_shift
        } else {
            slot + l.tail_shift
        };
        Ok((row + l.row_offset, s))
    }

    /// [`map`](Self::map) over a list.
    ///
    /// # Errors
    /// As [`map`](Self::map).
    pub fn map_all(&self, part: usize, at: &[(usize, usize)]) -> Result<Positions> {
        at.iter().map(|&x| self.map(part, x)).collect()
    }
}

/// The kind of the saved keys of the first part that has them.
fn first_kind(parts: &[(&Batch, &Start)], layer: usize) -> Kind {
    parts
        .iter()
        .find_map(|(_, s)| s.past.get(layer).filter(|_| s.from_slot > 0))
        .map_or(Kind::Float, |(k, _)| k.kind())
}
