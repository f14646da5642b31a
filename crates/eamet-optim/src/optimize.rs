//! The per-fact optimizer and the two schedules (ALGORITHM.md §3).

use std::path::Path;
use std::time::Instant;

use eamet_align::{AlignmentStream, TargetConfig, ZeroVectors};
use eamet_hooks::tch::{self, Kind, Tensor};
use eamet_hooks::{Batch, Capture, Edit, EditableLm, LogProbs, Padding, Plan, Site, Start};
use ndarray::{Array2, ArrayView2};
use serde::{Deserialize, Serialize};

use crate::error::{OptimError, Result};
use crate::fact::PreparedFact;
use crate::hparams::{CheckedResidualHparams, DeltaInit, EssenceReference, WeightDecayMethod};
use crate::loss::{AlignmentTargets, Objective, StepContext, TermGroup};
use crate::rundir::{sha256_hex, Manifest, RunDir, StoredFact};

/// In which order and with what knowledge of each other facts are optimized.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Schedule {
    /// MEMIT: every fact on its own; alignment terms are off whatever the factors say.
    Independent,
    /// EAMET: facts in order; fact `i` is aligned against the saved `δ_j`, `j < i`, with key
    /// neighbourhoods from the keys at `l_R`.
    Sequential,
}

/// How one fact's optimization ended.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FactStats {
    /// Fact index.
    pub index: usize,
    /// Case id, if any.
    pub case_id: Option<String>,
    /// Mean over rewriting prompts of the mean token NLL at the final `δ`.
    pub final_nll: f64,
    /// Mean over rewriting prompts of `exp(−mean token NLL)` at the final `δ`.
    pub p_target: f64,
    /// Total (weighted, scheduled) loss at the final `δ`.
    pub final_loss: f64,
    /// Each term's value at the final `δ` (weighted, before the schedule factor), by name.
    pub terms: Vec<(String, f64)>,
    /// Adam updates performed.
    pub steps: usize,
    /// Whether the loss fell below the early-stop threshold.
    pub early_stopped: bool,
    /// `‖δ‖` at the end.
    pub delta_norm: f64,
    /// `‖h_i‖`.
    pub h_norm: f64,
    /// Wall-clock seconds of this fact's optimization (not part of any result).
    pub seconds: f64,
}

/// The optimized residuals of all facts, in fact order.
#[derive(Debug, Clone, PartialEq)]
pub struct Residuals {
    /// `δ_i` (`N × d_model`).
    pub deltas: Array2<f32>,
    /// `h_i`: the unedited block-`l_R` output at the bare prompt's subject-last token
    /// (`N × d_model`).
    pub h: Array2<f32>,
    /// Per-fact statistics.
    pub stats: Vec<FactStats>,
    /// How many facts were loaded from the run directory instead of optimized.
    pub resumed: usize,
}

impl Residuals {
    /// The targets `z_i = h_i + δ_i`.
    pub fn targets(&self) -> Array2<f32> {
        &self.h + &self.deltas
    }
}

/// Options of one run that do not change its result.
#[derive(Default)]
pub struct RunOptions<'a> {
    /// Where finished facts are saved and resumed from (`<run_dir>/residuals/`).
    pub run_dir: Option<&'a Path>,
    /// Show a progress bar (facts/s, ETA) on stderr.
    pub progress: bool,
    /// Stop with [`OptimError::Interrupted`] once this many facts are saved (for tests and
    /// time-sliced jobs; a later call resumes).
    pub stop_after: Option<usize>,
    /// The objective; `None`: [`Objective::from_hparams`]. A custom objective is recorded in
    /// the manifest by its terms' descriptions.
    pub objective: Option<&'a Objective>,
}

/// Adam on one tensor, as `torch.optim.Adam` (β = (0.9, 0.999), ε = 1e-8, no weight decay).
struct Adam {
    lr: f64,
    m: Tensor,
    v: Tensor,
    t: i32,
}

impl Adam {
    fn new(lr: f64, like: &Tensor) -> Self {
        Adam {
            lr,
            m: like.zeros_like(),
            v: like.zeros_like(),
            t: 0,
        }
    }

    /// One update of `p` (a leaf) from its gradient `g`, in place, without recording.
    fn step(&mut self, p: &mut Tensor, g: &Tensor) {
        let (b1, b2, eps) = (0.9f64, 0.999f64, 1e-8f64);
        self.t += 1;
        let _g = tch::no_grad_guard();
        self.m = &self.m * b1 + g * (1.0 - b1);
        self.v = &self.v * b2 + g.square() * (1.0 - b2);
        let bc1 = 1.0 - b1.powi(self.t);
        let bc2 = 1.0 - b2.powi(self.t);
        let denom = self.v.sqrt() / bc2.sqrt() + eps;
        let update = &self.m / denom * (self.lr / bc1);
        let _ = p.f_sub_(&update).map(|_| ());
    }
}

/// Everything fixed for one fact: the batch, its saved prefix state, positions.
struct FactBatch {
    batch: Batch,
    state: Start,
    subject_slots: Vec<(usize, usize)>,
    /// Log-prob positions: every target position of every rewriting prompt, then the essence.
    at: Vec<(usize, usize)>,
    /// Target token at each of the first `templates·|target|` positions.
    tokens: Tensor,
}

fn fact_batch<M: EditableLm + ?Sized>(
    model: &M,
    f: &PreparedFact,
    layer: usize,
) -> Result<FactBatch> {
    let t = f.templates();
    let n_tgt = f.target_ids.len();
    let mut seqs: Vec<Vec<u32>> = (0..t).map(|j| f.rewrite_prompt(j)).collect();
    seqs.push(f.essence_prompt.clone());
    let batch = Batch::new(
        &seqs,
        model.tokenizer().pad_id,
        Padding::Left,
        model.device(),
    )?;
    let mut subject_slots = Vec::with_capacity(t + 1);
    for j in 0..t {
        subject_slots.push((j, batch.slot(j, f.subject_last[j])?));
    }
    subject_slots.push((t, batch.slot(t, f.essence_subject_last)?));
    let mut at = Vec::with_capacity(t * n_tgt + 1);
    for j in 0..t {
        let last_prompt = f.key_prompts[j].len() - 1;
        for k in 0..n_tgt {
            at.push((j, batch.slot(j, last_prompt + k)?));
        }
    }
    at.push(subject_slots[t]);
    let tokens: Vec<i64> = (0..t)
        .flat_map(|_| f.target_ids.iter().map(|&x| x as i64))
        .collect();
    let from_slot = subject_slots.iter().map(|&(_, s)| s).min().unwrap_or(0);
    let state = model.prefix_state(&batch, layer, from_slot)?;
    Ok(FactBatch {
        batch,
        state,
        subject_slots,
        at,
        tokens: Tensor::from_slice(&tokens)
            .to_device(model.device())
            .view([-1, 1]),
    })
}

/// Per-prompt mean token NLL `[t]` and the essence log-probs `[vocab]` from a forward's
/// log-probs at `fb.at`.
fn split_logprobs(lp: &Tensor, fb: &FactBatch, t: usize, n_tgt: usize) -> (Tensor, Tensor) {
    let rows = (t * n_tgt) as i64;
    let tgt = lp
        .narrow(0, 0, rows)
        .gather(1, &fb.tokens, false)
        .view([t as i64, n_tgt as i64]);
    let nll = -tgt.mean_dim(1, false, Kind::Float);
    (nll, lp.get(rows))
}

fn to_vec_f32(t: &Tensor) -> Result<Vec<f32>> {
    Vec::<f32>::try_from(
        t.detach()
            .to_kind(Kind::Float)
            .to_device(tch::Device::Cpu)
            .contiguous()
            .view([-1]),
    )
    .map_err(|e| OptimError::Input(format!("tensor to vector: {e}")))
}

/// Optimizes the residual `δ_i` of every fact at block `layer` (`l_R`), in order.
///
/// `keys_at_lr` are the facts' keys at `layer` on the unedited model ([`compute_keys`]): their
/// norms bound `δ` under `fix_ks` and start it under `target_init`, and their cosines define
/// the alignment targets of the [`Schedule::Sequential`] schedule. With `opts.run_dir`, every
/// finished fact is saved at once and an interrupted run resumes from the saved facts with
/// bit-identical results (same model, facts, keys, configuration and libtorch thread count).
///
/// Per fact: one left-padded batch of the rewriting prompts plus the essence prompt, one saved
/// causal-prefix state at `layer` (slots before the earliest subject-last token are never
/// recomputed), then one forward + backward per step from `layer` up with `δ` added at every
/// row's subject-last slot.
///
/// [`compute_keys`]: crate::compute_keys
///
/// # Errors
/// [`OptimError::Input`] for mismatched shapes or a `v_loss_layer` other than the last layer;
/// [`OptimError::RunMismatch`] when `run_dir` belongs to another run; [`OptimError::NonFinite`]
/// naming the fact; [`OptimError::Interrupted`] for `stop_after`; model and I/O errors.
pub fn optimize_residuals<M: EditableLm + ?Sized>(
    model: &M,
    facts: &[PreparedFact],
    keys_at_lr: ArrayView2<'_, f32>,
    layer: usize,
    hparams: &CheckedResidualHparams,
    schedule: Schedule,
    opts: &RunOptions<'_>,
) -> Result<Residuals> {
    let hp = hparams.get();
    let cfg = model.config();
    let (d, n) = (cfg.d_model, facts.len());
    if layer >= cfg.n_layers {
        return Err(OptimError::Input(format!(
            "layer {layer} does not exist (the model has {} layers)",
            cfg.n_layers
        )));
    }
    if let Some(l) = hp.v_loss_layer {
        if l != cfg.n_layers - 1 {
            return Err(OptimError::Input(format!(
                "v_loss_layer {l}: only the last layer ({}) is supported",
                cfg.n_layers - 1
            )));
        }
    }
    if keys_at_lr.nrows() != n {
        return Err(OptimError::Input(format!(
            "{} key rows for {n} facts",
            keys_at_lr.nrows()
        )));
    }
    if let Some((i, f)) = facts.iter().enumerate().find(|(i, f)| f.index != *i) {
        return Err(OptimError::Input(format!(
            "prepared fact at position {i} has index {}: pass all prepared facts in order",
            f.index
        )));
    }
    let default_objective;
    let objective = match opts.objective {
        Some(o) => o,
        None => {
            default_objective = Objective::from_hparams(hparams);
            &default_objective
        }
    };
    let align_on = schedule == Schedule::Sequential
        && objective
            .terms()
            .iter()
            .any(|t| t.group() == TermGroup::Alignment);
    let mut stream = if align_on {
        let keys64 = keys_at_lr.mapv(f64::from);
        let tc = TargetConfig {
            tau: hparams.tau(),
            top_m: std::num::NonZeroUsize::new(hp.top_m).unwrap_or(std::num::NonZeroUsize::MIN),
            zero_vectors: ZeroVectors::CosineZero,
        };
        Some(
            AlignmentStream::new(keys64.view(), d, tc)
                .map_err(|source| OptimError::Align { fact: 0, source })?,
        )
    } else {
        None
    };
    // Unit saved residuals as one preallocated tensor; fact i reads rows 0..i.
    let saved_unit = Tensor::zeros([n.max(1) as i64, d as i64], (Kind::Double, model.device()));

    let store = match opts.run_dir {
        Some(dir) => {
            let facts_json = serde_json::to_vec(facts).map_err(|e| OptimError::Format {
                path: dir.into(),
                detail: e.to_string(),
            })?;
            let key_bytes: Vec<u8> = keys_at_lr
                .iter()
                .flat_map(|x| x.to_le_bytes())
                .chain((keys_at_lr.ncols() as u64).to_le_bytes())
                .collect();
            let config = serde_json::json!({
                "layer": layer,
                "schedule": schedule,
                "hparams": hp,
                "objective": objective.describe(),
                "threads": tch::get_num_threads(),
            });
            let manifest = Manifest::new(
                model.base_sha256()?,
                sha256_hex(&facts_json),
                sha256_hex(&key_bytes),
                config,
                n,
                d,
            );
            Some(RunDir::open(dir, &manifest)?)
        }
        None => None,
    };

    let bar = if opts.progress {
        let b = indicatif::ProgressBar::new(n as u64);
        if let Ok(style) = indicatif::ProgressStyle::with_template(
            "{elapsed_precise} {wide_bar} {pos}/{len} facts ({per_sec}, ETA {eta}) {msg}",
        ) {
            b.set_style(style);
        }
        Some(b)
    } else {
        None
    };

    let mut deltas = Array2::<f32>::zeros((n, d));
    let mut hs = Array2::<f32>::zeros((n, d));
    let mut stats = Vec::with_capacity(n);
    let mut resumed = 0;
    for (i, f) in facts.iter().enumerate() {
        let stored = match &store {
            Some(s) => s.load(i, d)?,
            None => None,
        };
        let result = match stored {
            Some(s) => {
                resumed += 1;
                s
            }
            None => {
                if opts.stop_after.is_some_and(|k| i >= k) {
                    if let Some(b) = &bar {
                        b.abandon();
                    }
                    return Err(OptimError::Interrupted { finished: i });
                }
                let key_norm = keys_at_lr
                    .row(i)
                    .iter()
                    .map(|&x| f64::from(x).powi(2))
                    .sum::<f64>()
                    .sqrt();
                let targets = match &stream {
                    Some(st) => {
                        let t = st
                            .targets(i)
                            .map_err(|source| OptimError::Align { fact: i, source })?;
                        Some(AlignmentTargets::new(
                            &t,
                            &saved_unit.narrow(0, 0, i as i64),
                        ))
                    }
                    None => None,
                };
                let r = optimize_fact(
                    model,
                    f,
                    layer,
                    hparams,
                    objective,
                    key_norm,
                    targets.as_ref(),
                )?;
                if let Some(s) = &store {
                    s.save(i, &r)?;
                }
                r
            }
        };
        if let Some(st) = &mut stream {
            let row = ndarray::Array1::from_iter(result.delta.iter().map(|&x| f64::from(x)));
            st.push(row.view())
                .map_err(|source| OptimError::Align { fact: i, source })?;
            let unit: Vec<f64> = st.saved_residuals().row(i).to_vec();
            let _ = saved_unit
                .get(i as i64)
                .f_copy_(&Tensor::from_slice(&unit).to_device(model.device()));
        }
        deltas
            .row_mut(i)
            .assign(&ndarray::ArrayView1::from(&result.delta));
        hs.row_mut(i).assign(&ndarray::ArrayView1::from(&result.h));
        if let Some(b) = &bar {
            b.set_message(format!(
                "nll {:.3} p {:.2}",
                result.stats.final_nll, result.stats.p_target
            ));
            b.inc(1);
        }
        stats.push(result.stats);
    }
    if let Some(b) = &bar {
        b.finish();
    }
    Ok(Residuals {
        deltas,
        h: hs,
        stats,
        resumed,
    })
}

/// Optimizes one fact.
fn optimize_fact<M: EditableLm + ?Sized>(
    model: &M,
    f: &PreparedFact,
    layer: usize,
    hparams: &CheckedResidualHparams,
    objective: &Objective,
    key_norm: f64,
    alignment: Option<&AlignmentTargets>,
) -> Result<StoredFact> {
    let started = Instant::now();
    let hp = hparams.get();
    let t = f.templates();
    let n_tgt = f.target_ids.len();
    let d = model.config().d_model as i64;
    let fb = {
        let _g = tch::no_grad_guard();
        fact_batch(model, f, layer)?
    };
    let essence_at = fb.subject_slots[t];
    // Unedited pass: h_i (block output at the bare prompt's subject-last token) and P_init.
    let (h, unedited_essence) = {
        let _g = tch::no_grad_guard();
        let out = model.forward(
            &fb.batch,
            &Plan {
                start: Some(fb.state.shallow_clone()),
                captures: vec![Capture {
                    layer,
                    site: Site::BlockOut,
                    at: Some(vec![fb.subject_slots[0]]),
                }],
                logprobs: Some(LogProbs::Full {
                    at: vec![essence_at],
                }),
                ..Default::default()
            },
        )?;
        let lp = out
            .logprobs
            .ok_or_else(|| OptimError::Input("the model returned no log-probs".into()))?;
        (out.captures[0].view([d]), lp.get(0))
    };
    let h_norm = h.to_kind(Kind::Double).norm().double_value(&[]);
    let init = match hp.delta_init {
        DeltaInit::TargetInit if h_norm < 100.0 && h_norm > 0.0 => {
            h.to_kind(Kind::Float) * (key_norm / h_norm)
        }
        _ => h.zeros_like(),
    };
    let mut delta = init.detach().set_requires_grad(true);
    let max_norm = match hp.weight_decay_method {
        WeightDecayMethod::FixKs => hp.clamp_ks_factor * key_norm,
        WeightDecayMethod::Norm => hp.clamp_norm_factor * h_norm,
    };
    let mut adam = Adam::new(hp.v_lr, &delta.detach());
    let mut reference = match hp.essence_reference {
        EssenceReference::Unedited => Some(unedited_essence),
        EssenceReference::FirstStep => None,
    };
    let mut updates = 0;
    let mut early_stopped = false;
    let (mut last_nll, mut last_p, mut last_loss) = (f64::NAN, f64::NAN, f64::NAN);
    let mut last_terms = Vec::new();
    for step in 0..hp.v_num_grad_steps {
        delta.zero_grad();
        let out = model.forward(
            &fb.batch,
            &Plan {
                start: Some(fb.state.shallow_clone()),
                edits: vec![Edit {
                    layer,
                    at: fb.subject_slots.clone(),
                    delta: delta.shallow_clone(),
                }],
                logprobs: Some(LogProbs::Full { at: fb.at.clone() }),
                ..Default::default()
            },
        )?;
        let lp = out
            .logprobs
            .ok_or_else(|| OptimError::Input("the model returned no log-probs".into()))?;
        let (prompt_nll, essence_lp) = split_logprobs(&lp, &fb, t, n_tgt);
        let reference_lp = match &reference {
            Some(r) => r.shallow_clone(),
            None => {
                let r = essence_lp.detach();
                reference = Some(r.shallow_clone());
                r
            }
        };
        let ctx = StepContext {
            fact: f,
            step,
            delta: &delta,
            prompt_nll: &prompt_nll,
            essence_logprobs: &essence_lp,
            essence_reference: &reference_lp,
            h: &h,
            key_norm,
            alignment,
        };
        let nll_value = prompt_nll.mean(Kind::Double).double_value(&[]);
        let gate = hp.alignment_schedule.factor(nll_value);
        let mut total = Tensor::zeros([], (Kind::Double, model.device()));
        let mut terms = Vec::with_capacity(objective.terms().len());
        for term in objective.terms() {
            let v = term.loss(&ctx)?.to_kind(Kind::Double);
            let value = v.double_value(&[]);
            if !value.is_finite() {
                return Err(OptimError::NonFinite {
                    fact: f.index,
                    case_id: f.fact.case_id.clone(),
                    step,
                    term: term.name().into(),
                    value,
                });
            }
            terms.push((term.name().to_string(), value));
            total = match term.group() {
                TermGroup::Fit => total + v,
                TermGroup::Alignment => total + v * gate,
            };
        }
        last_loss = total.double_value(&[]);
        last_nll = nll_value;
        last_p = (-prompt_nll.to_kind(Kind::Double))
            .exp()
            .mean(Kind::Double)
            .double_value(&[]);
        last_terms = terms;
        if step >= hp.early_stop_min_step && last_loss < hp.early_stop_loss {
            early_stopped = true;
            break;
        }
        if step + 1 == hp.v_num_grad_steps {
            break;
        }
        total.backward();
        let g = delta.grad();
        adam.step(&mut delta, &g);
        updates += 1;
        let _g = tch::no_grad_guard();
        let norm = delta.norm().double_value(&[]);
        if norm > max_norm {
            let _ = delta.f_mul_scalar_(max_norm / norm).map(|_| ());
        }
    }
    let delta_v = to_vec_f32(&delta)?;
    let delta_norm = delta_v
        .iter()
        .map(|&x| f64::from(x).powi(2))
        .sum::<f64>()
        .sqrt();
    Ok(StoredFact {
        delta: delta_v,
        h: to_vec_f32(&h)?,
        stats: FactStats {
            index: f.index,
            case_id: f.fact.case_id.clone(),
            final_nll: last_nll,
            p_target: last_p,
            final_loss: last_loss,
            terms: last_terms,
            steps: updates,
            early_stopped,
            delta_norm,
            h_norm,
            seconds: started.elapsed().as_secs_f64(),
        },
    })
}
