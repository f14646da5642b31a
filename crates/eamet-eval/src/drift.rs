//! Neighbourhood drift (feature `metrics`): how far an edit moved the model on the prompts it
//! should leave alone (CounterFact neighbourhood prompts, zsRE locality questions).
//!
//! Greedy "keeps the true object" barely moves on a small model that rarely knew the object,
//! so two finer measures compare the edited model with the unedited one on the *same tokens*:
//!
//! * **neighbourhood KL**: `KL(p_pre ‖ p_post)` of the next-token distribution at the end of
//!   each prompt, over the whole vocabulary (ROME's NKL idea), in nats;
//! * **drawdown**: the mean per-token NLL, under the edited model, of the unedited model's
//!   greedy continuation of the prompt, minus its NLL under the unedited model (nats per
//!   token; positive = the edit made the old continuation less likely).
//!
//! [`DriftReference::new`] records the unedited model's side once (the full next-token
//! log-distribution of each prompt, kept in memory: `prompts × vocabulary` f32, about 2 GB for
//! 10 000 prompts of a 49k vocabulary); [`DriftReference::measure`] runs the same forward
//! passes, batch for batch, on the edited model. The same model gives exactly 0 for both.

use crate::metrics::{MetricsError, PromptKind, RecordEval};
use eamet_hooks::tch::{self, Kind, Tensor};
use eamet_hooks::{Batch, EditableLm, LogProbs, Padding, Plan};
use serde::{Deserialize, Serialize};

type Result<T> = std::result::Result<T, MetricsError>;

/// `KL(p ‖ q)` of each row, from log-probabilities `[rows, vocab]` (any float kind), in f64:
/// `Σ_v exp(p_v) · (p_v − q_v)`; entries where `p` is 0 contribute 0.
pub fn kl_rows(p_log: &Tensor, q_log: &Tensor) -> Tensor {
    let p_log = p_log.to_kind(Kind::Double);
    let q_log = q_log.to_kind(Kind::Double);
    let p = p_log.exp();
    let terms = &p * (&p_log - &q_log);
    let terms = terms.where_self(&p.gt(0.0), &terms.zeros_like());
    terms.sum_dim_intlist(&[-1i64][..], false, Kind::Double)
}

/// One prompt's drift.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct PromptDrift {
    /// `KL(p_pre ‖ p_post)` of the next token at the end of the prompt (nats).
    pub kl: f64,
    /// Post-edit minus pre-edit mean token NLL of the unedited model's greedy continuation
    /// (nats per token); `None` when that continuation was empty (EOS came first).
    pub drawdown: Option<f64>,
}

/// Summary over all prompts of a report.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DriftSummary {
    /// Prompts measured.
    pub prompts: usize,
    /// Mean neighbourhood KL (nats).
    pub kl_mean: f64,
    /// 95th percentile of the neighbourhood KL (nearest rank).
    pub kl_p95: f64,
    /// Prompts with a drawdown (a non-empty continuation).
    pub drawdown_prompts: usize,
    /// Mean drawdown (nats per token); `None` when no prompt has one (never NaN).
    pub drawdown_mean: Option<f64>,
    /// 95th percentile of the drawdown (nearest rank); `None` when no prompt has one.
    pub drawdown_p95: Option<f64>,
}

/// Nearest-rank percentile `q ∈ (0, 1]` of `v` (NaN for an empty slice).
pub fn percentile(v: &[f64], q: f64) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    let mut s = v.to_vec();
    s.sort_by(f64::total_cmp);
    let rank = (q * s.len() as f64).ceil().max(1.0) as usize;
    s[rank.min(s.len()) - 1]
}

impl DriftSummary {
    /// Summary of the per-prompt drift stored in `records` (see [`DriftReference::annotate`]);
    /// `None` when no prompt has one.
    pub fn of(records: &[RecordEval]) -> Option<Self> {
        let prompts = records.iter().flat_map(|r| &r.prompts);
        let kl: Vec<f64> = prompts.clone().filter_map(|p| p.kl).collect();
        if kl.is_empty() {
            return None;
        }
        let dd: Vec<f64> = prompts.filter_map(|p| p.drawdown).collect();
        let mean = |v: &[f64]| {
            if v.is_empty() {
                f64::NAN
            } else {
                v.iter().sum::<f64>() / v.len() as f64
            }
        };
        Some(DriftSummary {
            prompts: kl.len(),
            kl_mean: mean(&kl),
            kl_p95: percentile(&kl, 0.95),
            drawdown_prompts: dd.len(),
            drawdown_mean: (!dd.is_empty()).then(|| mean(&dd)),
            drawdown_p95: (!dd.is_empty()).then(|| percentile(&dd, 0.95)),
        })
    }
}

/// One specificity prompt: where it belongs and its tokens.
#[derive(Debug, Clone)]
struct Row {
    /// `(record, index in RecordEval::prompts)`.
    owner: (usize, usize),
    prompt: Vec<u32>,
    continuation: Vec<u32>,
}

impl Row {
    fn ids(&self) -> Vec<u32> {
        let mut s = self.prompt.clone();
        if let Some((_, head)) = self.continuation.split_last() {
            s.extend_from_slice(head);
        }
        s
    }
    /// Positions read: the prompt's last token, then one per further continuation token.
    fn positions(&self) -> usize {
        self.continuation.len().max(1)
    }
}

/// The unedited model's side of the drift measures (see the [module docs](self)).
pub struct DriftReference {
    rows: Vec<Row>,
    batches: Vec<Vec<usize>>,
    /// Per batch: next-token log-probs at each row's prompt end `[rows, vocab]` (CPU, f32).
    next: Vec<Tensor>,
    /// Per row: log-probs of the continuation's tokens.
    continuation_lp: Vec<Vec<f64>>,
}

impl std::fmt::Debug for DriftReference {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DriftReference")
            .field("prompts", &self.rows.len())
            .field("batches", &self.batches.len())
            .finish()
    }
}

/// Rows of at most this many tokens per forward pass (the log-prob rows are vocabulary-wide).
const DRIFT_TOKEN_BUDGET: usize = 4096;

impl DriftReference {
    /// Records the unedited `model`'s next-token distributions and continuation log-probs for
    /// every neighbourhood and locality prompt of `pre` (the records' evaluation on this same
    /// unedited model, whose greedy continuations are reused; a prompt whose continuation ids
    /// were not kept, as in reports written before they were, is continued again for
    /// `max_new` tokens).
    ///
    /// # Errors
    /// Empty prompts, tokenizer and model errors.
    pub fn new<M: EditableLm + ?Sized>(
        model: &M,
        pre: &[RecordEval],
        max_new: usize,
        batch_size: usize,
    ) -> Result<Self> {
        let tok = model.tokenizer();
        let mut rows = Vec::new();
        let mut missing = Vec::new();
        for (ri, rec) in pre.iter().enumerate() {
            for (pi, p) in rec.prompts.iter().enumerate() {
                if !matches!(p.kind, PromptKind::Neighbourhood | PromptKind::Locality) {
                    continue;
                }
                let prompt = tok.encode(&p.prompt)?;
                if prompt.is_empty() {
                    return Err(MetricsError::Input(format!(
                        "record {ri}: prompt {pi} ({:?}) has no tokens",
                        p.prompt
                    )));
                }
                if p.generation_ids.is_none() {
                    missing.push(rows.len());
                }
                rows.push(Row {
                    owner: (ri, pi),
                    prompt,
                    continuation: p.generation_ids.clone().unwrap_or_default(),
                });
            }
        }
        if !missing.is_empty() {
            let stop: Vec<u32> = tok.eos_id.into_iter().collect();
            let prompts: Vec<Vec<u32>> = missing.iter().map(|&i| rows[i].prompt.clone()).collect();
            for chunk in (0..prompts.len())
                .collect::<Vec<_>>()
                .chunks(batch_size.max(1))
            {
                let ids: Vec<Vec<u32>> = chunk.iter().map(|&k| prompts[k].clone()).collect();
                for (&k, g) in chunk.iter().zip(model.generate(&ids, max_new, &stop)?) {
                    rows[missing[k]].continuation = g.tokens;
                }
            }
        }
        let batches = batches(&rows, batch_size);
        let mut next = Vec::with_capacity(batches.len());
        let mut continuation_lp = vec![Vec::new(); rows.len()];
        for idx in &batches {
            let (lp, cont) = pass(model, &rows, idx)?;
            next.push(lp);
            for (&i, c) in idx.iter().zip(cont) {
                continuation_lp[i] = c;
            }
        }
        Ok(DriftReference {
            rows,
            batches,
            next,
            continuation_lp,
        })
    }

    /// Number of prompts.
    pub fn len(&self) -> usize {
        self.rows.len()
    }

    /// Whether there are no prompts.
    pub fn is_empty(&self) -> bool {
        self.rows.is_empty()
    }

    /// The drift of `model` (as it is now) from the unedited model, per prompt in the order of
    /// [`DriftReference::new`].
    ///
    /// # Errors
    /// Model errors; [`MetricsError::Input`] for a model with another vocabulary size.
    pub fn measure<M: EditableLm + ?Sized>(&self, model: &M) -> Result<Vec<PromptDrift>> {
        let mut out = vec![
            PromptDrift {
                kl: f64::NAN,
                drawdown: None
            };
            self.rows.len()
        ];
        for (idx, pre_next) in self.batches.iter().zip(&self.next) {
            let (post_next, cont) = pass(model, &self.rows, idx)?;
            if post_next.size() != pre_next.size() {
                return Err(MetricsError::Input(format!(
                    "next-token log-probs of shape {:?} against {:?} before the edit",
                    post_next.size(),
                    pre_next.size()
                )));
            }
            let kl = Vec::<f64>::try_from(kl_rows(pre_next, &post_next))?;
            for ((&i, k), post) in idx.iter().zip(kl).zip(cont) {
                let pre = &self.continuation_lp[i];
                let drawdown = (!pre.is_empty()).then(|| {
                    pre.iter().zip(&post).map(|(a, b)| a - b).sum::<f64>() / pre.len() as f64
                });
                out[i] = PromptDrift { kl: k, drawdown };
            }
        }
        Ok(out)
    }

    /// Writes `drift` (from [`DriftReference::measure`]) into the post-edit evaluation of the
    /// same records: each prompt's `kl` and `drawdown`, and per record the means
    /// `neighbourhood.kl` and `neighbourhood.drawdown`.
    ///
    /// # Errors
    /// [`MetricsError::Input`] when `post` or `drift` do not match the reference's prompts.
    pub fn annotate(&self, post: &mut [RecordEval], drift: &[PromptDrift]) -> Result<()> {
        if drift.len() != self.rows.len() {
            return Err(MetricsError::Input(format!(
                "{} drift values for {} prompts",
                drift.len(),
                self.rows.len()
            )));
        }
        let mut per_record: Vec<(Vec<f64>, Vec<f64>)> = vec![Default::default(); post.len()];
        for (row, d) in self.rows.iter().zip(drift) {
            let (ri, pi) = row.owner;
            let p = post
                .get_mut(ri)
                .and_then(|r| r.prompts.get_mut(pi))
                .filter(|p| matches!(p.kind, PromptKind::Neighbourhood | PromptKind::Locality))
                .ok_or_else(|| {
                    MetricsError::Input(format!(
                        "record {ri}, prompt {pi}: not a neighbourhood or locality prompt in the post-edit results"
                    ))
                })?;
            p.kl = Some(d.kl);
            p.drawdown = d.drawdown;
            per_record[ri].0.push(d.kl);
            if let Some(x) = d.drawdown {
                per_record[ri].1.push(x);
            }
        }
        for (rec, (kl, dd)) in post.iter_mut().zip(per_record) {
            if !kl.is_empty() {
                let m = kl.iter().sum::<f64>() / kl.len() as f64;
                rec.metrics.insert("neighbourhood.kl".into(), m);
            }
            if !dd.is_empty() {
                let m = dd.iter().sum::<f64>() / dd.len() as f64;
                rec.metrics.insert("neighbourhood.drawdown".into(), m);
            }
        }
        Ok(())
    }
}

/// Length-sorted batches within `batch_size` rows and [`DRIFT_TOKEN_BUDGET`] padded tokens.
fn batches(rows: &[Row], batch_size: usize) -> Vec<Vec<usize>> {
    crate::metrics::length_batches_within(
        rows,
        |r| r.prompt.len() + r.continuation.len(),
        batch_size,
        DRIFT_TOKEN_BUDGET,
    )
}

/// One forward pass over rows `idx`: the next-token log-probs at each prompt's end
/// (`[rows, vocab]`, CPU f32) and each row's continuation-token log-probs.
fn pass<M: EditableLm + ?Sized>(
    model: &M,
    rows: &[Row],
    idx: &[usize],
) -> Result<(Tensor, Vec<Vec<f64>>)> {
    let _g = tch::no_grad_guard();
    let seqs: Vec<Vec<u32>> = idx.iter().map(|&i| rows[i].ids()).collect();
    let mut at = Vec::new();
    let mut first = Vec::with_capacity(idx.len());
    for (r, &i) in idx.iter().enumerate() {
        let row = &rows[i];
        first.push(at.len() as i64);
        for k in 0..row.positions() {
            at.push((r, row.prompt.len() - 1 + k));
        }
    }
    let batch = Batch::new(
        &seqs,
        model.tokenizer().pad_id,
        Padding::Right,
        model.device(),
    )?;
    let lp = model
        .forward(
            &batch,
            &Plan {
                logprobs: Some(LogProbs::Full { at }),
                ..Default::default()
            },
        )?
        .logprobs
        .ok_or_else(|| MetricsError::Input("the model returned no log-probabilities".into()))?;
    let device = lp.device();
    let first_t = Tensor::from_slice(&first).to_device(device);
    let next = lp
        .index_select(0, &first_t)
        .to_kind(Kind::Float)
        .to_device(tch::Device::Cpu);
    // Continuation tokens: row r's k-th token is read at flat position first[r] + k.
    let mut flat = Vec::new();
    let mut tok = Vec::new();
    for (r, &i) in idx.iter().enumerate() {
        for (k, &t) in rows[i].continuation.iter().enumerate() {
            flat.push(first[r] + k as i64);
            tok.push(i64::from(t));
        }
    }
    let mut cont = Vec::with_capacity(idx.len());
    if flat.is_empty() {
        cont.resize(idx.len(), Vec::new());
    } else {
        let f = Tensor::from_slice(&flat).to_device(device);
        let t = Tensor::from_slice(&tok).to_device(device).unsqueeze(1);
        let picked = lp
            .index_select(0, &f)
            .gather(1, &t, false)
            .squeeze_dim(1)
            .to_kind(Kind::Double)
            .to_device(tch::Device::Cpu);
        let picked = Vec::<f64>::try_from(picked)?;
        let mut k = 0;
        for &i in idx {
            let n = rows[i].continuation.len();
            cont.push(picked[k..k + n].to_vec());
            k += n;
        }
    }
    Ok((next, cont))
}
