//! The per-fact optimizer and the two schedules (ALGORITHM.md §3).

use std::path::Path;
use std::time::Instant;

use eamet_align::{AlignmentStream, TargetConfig, ZeroVectors};
use eamet_hooks::tch::{self, Kind, Tensor};
use eamet_hooks::{
    Batch, Capture, Edit, EditableLm, JoinedStart, LogProbs, Padding, Plan, Site, Start,
};
use ndarray::{Array2, ArrayView2};
use serde::{Deserialize, Serialize};

use crate::error::{OptimError, Result};
use crate::fact::PreparedFact;
use crate::hparams::{CheckedResidualHparams, DeltaInit, EssenceReference, WeightDecayMethod};
use crate::loss::{AlignmentTargets, Objective, StepContext, TermGroup};
use crate::rundir::{sha256_hex, Manifest, RunDir, StoredFact};

/// In which order, how many at a time, and with what knowledge of each other facts are
/// optimized (ALGORITHM.md §3 and §8).
///
/// Every schedule gives each fact its own `δ`, Adam state, clamp and early stop; batching only
/// changes how many facts share one forward/backward pass.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Schedule {
    /// MEMIT: every fact on its own, one at a time; alignment terms are off whatever the
    /// factors say. The same as `Batched { batch: 1 }`.
    Independent,
    /// EAMET: facts in order, one at a time; fact `i` is aligned against the saved `δ_j`,
    /// `j < i`, with key neighbourhoods from the keys at `l_R`. The same as
    /// `Blocked { block: 1 }`.
    Sequential,
    /// MEMIT, batched: up to `batch` facts share each forward/backward pass. A fact that stops
    /// leaves the batch and the next waiting fact enters (continuous batching). Alignment terms
    /// are off. Per fact the result equals [`Schedule::Independent`]'s up to float rounding.
    Batched {
        /// Facts per pass (≥ 1).
        batch: usize,
    },
    /// EAMET, blocked: facts in order, in blocks of `block` optimized together. Fact `i`'s
    /// alignment terms use the saved final `δ_j` of every earlier block and the current `δ_j`
    /// (detached: no gradient flows between facts) of the earlier facts of its own block. When
    /// the whole block has stopped its residuals join the saved set. `block = 1` is
    /// [`Schedule::Sequential`].
    Blocked {
        /// Facts per block (≥ 1).
        block: usize,
    },
}

impl Schedule {
    /// Facts per pass (batch or block size).
    pub fn width(self) -> usize {
        match self {
            Schedule::Independent | Schedule::Sequential => 1,
            Schedule::Batched { batch } => batch,
            Schedule::Blocked { block } => block,
        }
    }

    /// Whether facts see the residuals of earlier facts (EAMET's alignment terms).
    pub fn is_aligned(self) -> bool {
        matches!(self, Schedule::Sequential | Schedule::Blocked { .. })
    }

    /// The same schedule in its general form: `Independent` → `Batched { batch: 1 }`,
    /// `Sequential` → `Blocked { block: 1 }` (what run directories record).
    pub fn normalized(self) -> Schedule {
        match self {
            Schedule::Independent => Schedule::Batched { batch: 1 },
            Schedule::Sequential => Schedule::Blocked { block: 1 },
            s => s,
        }
    }

    /// The independent (`aligned = false`) or aligned schedule with `width` facts per pass,
    /// in its simplest form (`width = 1` gives `Independent` / `Sequential`).
    pub fn with_width(aligned: bool, width: usize) -> Schedule {
        match (aligned, width) {
            (false, 1) => Schedule::Independent,
            (true, 1) => Schedule::Sequential,
            (false, batch) => Schedule::Batched { batch },
            (true, block) => Schedule::Blocked { block },
        }
    }

    fn check(self) -> Result<()> {
        if self.width() == 0 {
            return Err(OptimError::Input(format!(
                "{self:?}: the batch/block size must be at least 1"
            )));
        }
        Ok(())
    }
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
    /// Whether the loss (or, with `early_stop_nll`, the NLL) fell below its early-stop
    /// threshold.
    pub early_stopped: bool,
    /// `‖δ‖` at the end.
    pub delta_norm: f64,
    /// `‖h_i‖`.
    pub h_norm: f64,
    /// Wall-clock seconds from the fact's set-up to its last step (not part of any result).
    /// Facts optimized together overlap: their seconds do not add up to the run's time.
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
    /// Where the optimizer's wall-clock time went, in seconds: `setup` (per-fact batches,
    /// saved prefixes, unedited pass), `join` (joining the facts in flight), `forward`,
    /// `loss` (the terms), `backward`, `update` (Adam and clamps) and `save`. A profile, not
    /// part of any result.
    pub profile: Vec<(String, f64)>,
    /// How much model arithmetic the optimizer did (for throughput figures; not part of any
    /// result).
    pub work: Work,
}

/// Counts of the optimizer's model work, summed over its passes: enough to turn the profile's
/// seconds into a throughput (FLOP/s) for a given architecture.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Work {
    /// First block every optimizer pass runs (the residual layer `l_R`: passes resume there from
    /// the saved causal prefix); every pass runs the blocks from it to the last.
    pub first_layer: usize,
    /// Forward passes (one per optimizer iteration, all facts in flight together).
    pub passes: u64,
    /// Real (non-padding) token positions that went through the blocks, over all forward passes.
    pub forward_tokens: u64,
    /// Of those, positions that a backward pass went through again.
    pub backward_tokens: u64,
    /// Positions where the final norm and LM head were applied (log-probs over the vocabulary),
    /// over all forward passes.
    pub logprob_rows: u64,
    /// Of those, rows that a backward pass went through again.
    pub backward_logprob_rows: u64,
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
    /// Real token positions each pass recomputes (from the first subject slot on).
    recomputed: u64,
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
    let recomputed = batch
        .starts
        .iter()
        .zip(&batch.lengths)
        .map(|(&s, &l)| (s + l).saturating_sub(s.max(from_slot)) as u64)
        .sum();
    Ok(FactBatch {
        recomputed,
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

/// Optimizes the residual `δ_i` of every fact at block `layer` (`l_R`).
///
/// `keys_at_lr` are the facts' keys at `layer` on the unedited model ([`compute_keys`]): their
/// norms bound `δ` under `fix_ks` and start it under `target_init`, and their cosines define
/// the alignment targets of the aligned schedules ([`Schedule::Sequential`],
/// [`Schedule::Blocked`]). With `opts.run_dir`, finished facts are saved at once (aligned
/// schedules: each block when it has stopped) and an interrupted run resumes from them. Resume
/// is bit-identical (same model, facts, keys, configuration and libtorch thread count) for the
/// aligned schedules, whose blocks are replayed whole, and for `Independent`. For
/// `Batched { batch > 1 }` the facts that were in flight at the kill meet other batch mates
/// after the resume, so they agree with an uninterrupted run up to float rounding.
///
/// Per fact: one left-padded batch of the rewriting prompts plus the essence prompt and one
/// saved causal-prefix state at `layer` (slots before the earliest subject-last token are never
/// recomputed), made once when the fact starts. Each step joins the states of the facts in
/// flight ([`JoinedStart`]) and runs one forward + backward from `layer` up with each fact's
/// `δ` added at its rows' subject-last slots.
///
/// [`compute_keys`]: crate::compute_keys
///
/// # Errors
/// [`OptimError::Input`] for mismatched shapes, a zero batch/block size or a `v_loss_layer`
/// other than the last layer; [`OptimError::RunMismatch`] when `run_dir` belongs to another
/// run; [`OptimError::NonFinite`] naming the fact; [`OptimError::Interrupted`] for
/// `stop_after`; model and I/O errors.
pub fn optimize_residuals<M: EditableLm + ?Sized>(
    model: &M,
    facts: &[PreparedFact],
    keys_at_lr: ArrayView2<'_, f32>,
    layer: usize,
    hparams: &CheckedResidualHparams,
    schedule: Schedule,
    opts: &RunOptions<'_>,
) -> Result<Residuals> {
    schedule.check()?;
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
    let align_on = schedule.is_aligned()
        && objective
            .terms()
            .iter()
            .any(|t| t.group() == TermGroup::Alignment);
    let stream = if align_on {
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
    let store = match opts.run_dir {
        Some(dir) => Some(open_store(
            model, dir, facts, keys_at_lr, layer, hp, schedule, objective,
        )?),
        None => None,
    };
    let bar = opts.progress.then(|| {
        let b = indicatif::ProgressBar::new(n as u64);
        if let Ok(style) = indicatif::ProgressStyle::with_template(
            "{elapsed_precise} {wide_bar} {pos}/{len} facts ({per_sec}, ETA {eta}) {msg}",
        ) {
            b.set_style(style);
        }
        b
    });
    let mut run = Run {
        model,
        facts,
        keys: keys_at_lr,
        layer,
        hparams,
        objective,
        stream,
        // Unit saved residuals as one preallocated tensor; fact i reads rows 0..(its block start).
        saved_unit: Tensor::zeros([n.max(1) as i64, d as i64], (Kind::Double, model.device())),
        store,
        bar,
        stop_after: opts.stop_after,
        results: (0..n).map(|_| None).collect(),
        done: 0,
        resumed: 0,
        profile: Profile::default(),
        work: Work {
            first_layer: layer,
            ..Work::default()
        },
    };
    let outcome = if schedule.is_aligned() {
        run.blocked(schedule.width())
    } else {
        run.batched(schedule.width())
    };
    if let Err(e) = outcome {
        if let Some(b) = &run.bar {
            b.abandon();
        }
        return Err(e);
    }
    if let Some(b) = &run.bar {
        b.finish();
    }
    let mut deltas = Array2::<f32>::zeros((n, d));
    let mut hs = Array2::<f32>::zeros((n, d));
    let mut stats = Vec::with_capacity(n);
    for (i, r) in run.results.into_iter().enumerate() {
        let r = r.ok_or_else(|| OptimError::Input(format!("fact {i} was never optimized")))?;
        deltas
            .row_mut(i)
            .assign(&ndarray::ArrayView1::from(&r.delta));
        hs.row_mut(i).assign(&ndarray::ArrayView1::from(&r.h));
        stats.push(r.stats);
    }
    Ok(Residuals {
        deltas,
        h: hs,
        stats,
        resumed: run.resumed,
        profile: run.profile.entries(),
        work: run.work,
    })
}

/// Seconds spent in each part of the optimizer.
#[derive(Debug, Default, Clone, Copy)]
struct Profile {
    setup: f64,
    join: f64,
    forward: f64,
    loss: f64,
    backward: f64,
    update: f64,
    save: f64,
}

impl Profile {
    fn entries(&self) -> Vec<(String, f64)> {
        [
            ("setup", self.setup),
            ("join", self.join),
            ("forward", self.forward),
            ("loss", self.loss),
            ("backward", self.backward),
            ("update", self.update),
            ("save", self.save),
        ]
        .iter()
        .map(|&(n, s)| (n.to_string(), s))
        .collect()
    }
}

/// Seconds since `t`, resetting `t`.
fn lap(t: &mut Instant) -> f64 {
    let s = t.elapsed().as_secs_f64();
    *t = Instant::now();
    s
}

/// Opens the run directory, recording (or checking) what the run is.
#[allow(clippy::too_many_arguments)]
fn open_store<M: EditableLm + ?Sized>(
    model: &M,
    dir: &Path,
    facts: &[PreparedFact],
    keys_at_lr: ArrayView2<'_, f32>,
    layer: usize,
    hp: &crate::hparams::ResidualHparams,
    schedule: Schedule,
    objective: &Objective,
) -> Result<RunDir> {
    let hashes = |n: usize| -> Result<(String, String)> {
        let facts_json = serde_json::to_vec(&facts[..n]).map_err(|e| OptimError::Format {
            path: dir.into(),
            detail: e.to_string(),
        })?;
        let rows = keys_at_lr.slice(ndarray::s![..n, ..]);
        let key_bytes: Vec<u8> = rows
            .iter()
            .flat_map(|x| x.to_le_bytes())
            .chain((rows.ncols() as u64).to_le_bytes())
            .collect();
        Ok((sha256_hex(&facts_json), sha256_hex(&key_bytes)))
    };
    let (facts_sha256, keys_sha256) = hashes(facts.len())?;
    let mut config = serde_json::json!({
        "layer": layer,
        "schedule": schedule.normalized(),
        "hparams": hp,
        "objective": objective.describe(),
        "threads": tch::get_num_threads(),
    });
    // The compute dtype and device change the residuals: recorded (and so checked on resume)
    // only when not the defaults, so f32 CPU runs keep the configuration hash they always had.
    if model.dtype() != eamet_hooks::Dtype::F32 {
        config["dtype"] = model.dtype().name().into();
    }
    if model.device() != tch::Device::Cpu {
        // The kind of device, not its index: a run may resume on another GPU of the same kind.
        config["device"] = "cuda".into();
    }
    let manifest = Manifest::new(
        model.base_sha256()?,
        facts_sha256,
        keys_sha256,
        config,
        facts.len(),
        model.config().d_model,
    );
    RunDir::open(dir, &manifest, &hashes)
}

/// The state of one call of [`optimize_residuals`].
struct Run<'a, M: EditableLm + ?Sized> {
    model: &'a M,
    facts: &'a [PreparedFact],
    keys: ArrayView2<'a, f32>,
    layer: usize,
    hparams: &'a CheckedResidualHparams,
    objective: &'a Objective,
    stream: Option<AlignmentStream<f64>>,
    saved_unit: Tensor,
    store: Option<RunDir>,
    bar: Option<indicatif::ProgressBar>,
    stop_after: Option<usize>,
    results: Vec<Option<StoredFact>>,
    /// Facts with a result (loaded or optimized).
    done: usize,
    resumed: usize,
    profile: Profile,
    work: Work,
}

impl<'a, M: EditableLm + ?Sized> Run<'a, M> {
    fn load(&self, i: usize) -> Result<Option<StoredFact>> {
        match &self.store {
            Some(s) => s.load(i, self.model.config().d_model),
            None => Ok(None),
        }
    }

    fn interrupt_now(&self) -> bool {
        self.stop_after.is_some_and(|k| self.done >= k)
    }

    /// Records a finished fact (saving it unless it was loaded) and, for aligned runs, adds its
    /// residual to the saved set.
    fn finish(&mut self, i: usize, r: StoredFact, loaded: bool) -> Result<()> {
        if loaded {
            self.resumed += 1;
        } else if let Some(s) = &self.store {
            let t = Instant::now();
            s.save(i, &r)?;
            self.profile.save += t.elapsed().as_secs_f64();
        }
        if let Some(st) = &mut self.stream {
            let row = ndarray::Array1::from_iter(r.delta.iter().map(|&x| f64::from(x)));
            st.push(row.view())
                .map_err(|source| OptimError::Align { fact: i, source })?;
            let unit: Vec<f64> = st.saved_residuals().row(i).to_vec();
            let _ = self
                .saved_unit
                .get(i as i64)
                .f_copy_(&Tensor::from_slice(&unit).to_device(self.model.device()));
        }
        if let Some(b) = &self.bar {
            b.set_message(format!(
                "nll {:.3} p {:.2}",
                r.stats.final_nll, r.stats.p_target
            ));
            b.inc(1);
        }
        self.results[i] = Some(r);
        self.done += 1;
        Ok(())
    }

    /// One optimizer iteration of every fact in `active`, in one forward and one backward pass.
    /// A fact whose loss (or, with `early_stop_nll`, its NLL) falls below the early-stop threshold,
    /// or that reaches its last iteration,
    /// is marked finished (and not updated), as in the one-fact loop of the reference.
    fn step(&mut self, active: &mut [&mut InFlight<'a>], joint: &mut JointCache) -> Result<()> {
        let (model, layer, hparams, objective) =
            (self.model, self.layer, self.hparams, self.objective);
        let (profile, work) = (&mut self.profile, &mut self.work);
        let hp = hparams.get();
        let d = model.config().d_model as i64;
        let mut t = Instant::now();
        joint.update(model, active)?;
        profile.join += lap(&mut t);
        let joined = joint.joined.as_ref().expect("set by update");
        for a in active.iter_mut() {
            a.delta.zero_grad();
        }
        // One edit for all facts: each fact's δ at its rows' subject-last slots.
        let edit_delta = if active.len() == 1 {
            active[0].delta.shallow_clone()
        } else {
            let pieces: Vec<Tensor> = active
                .iter()
                .zip(&joint.subject_at)
                .map(|(a, at)| a.delta.view([1, d]).expand([at.len() as i64, d], false))
                .collect();
            Tensor::cat(&pieces, 0)
        };
        let out = model.forward(
            &joined.batch,
            &Plan {
                start: Some(joined.start.shallow_clone()),
                edits: vec![Edit {
                    layer,
                    at: joint.subject_at.concat(),
                    delta: edit_delta,
                }],
                logprobs: Some(LogProbs::Full {
                    at: joint.logprob_at.concat(),
                }),
                ..Default::default()
            },
        )?;
        let lp = out
            .logprobs
            .ok_or_else(|| OptimError::Input("the model returned no log-probs".into()))?;
        profile.forward += lap(&mut t);
        let tokens: u64 = active.iter().map(|a| a.fb.recomputed).sum();
        let lp_rows = lp.size()[0] as u64;
        work.passes += 1;
        work.forward_tokens += tokens;
        work.logprob_rows += lp_rows;
        let mut row = 0i64;
        let mut totals = Vec::with_capacity(active.len());
        for (a, at) in active.iter_mut().zip(&joint.logprob_at) {
            let rows = at.len() as i64;
            let lp_f = lp.narrow(0, row, rows);
            row += rows;
            let total = fact_loss(a, &lp_f, hparams, objective)?;
            let step = a.step;
            let fit_done = hp.early_stop_nll.is_some_and(|t| a.last_nll < t);
            if step >= hp.early_stop_min_step && (a.last_loss < hp.early_stop_loss || fit_done) {
                a.early_stopped = true;
                a.finished = true;
            } else if step + 1 >= hp.v_num_grad_steps {
                a.finished = true;
            } else {
                totals.push(total);
            }
        }
        profile.loss += lap(&mut t);
        if totals.is_empty() {
            return Ok(());
        }
        let total = if totals.len() == 1 {
            totals.pop().expect("one")
        } else {
            Tensor::stack(&totals, 0).sum(Kind::Double)
        };
        total.backward();
        profile.backward += lap(&mut t);
        work.backward_tokens += tokens;
        work.backward_logprob_rows += lp_rows;
        for a in active.iter_mut().filter(|a| !a.finished) {
            let g = a.delta.grad();
            a.adam.step(&mut a.delta, &g);
            a.updates += 1;
            a.step += 1;
            let _g = tch::no_grad_guard();
            let norm = a.delta.norm().double_value(&[]);
            if norm > a.max_norm {
                let _ = a.delta.f_mul_scalar_(a.max_norm / norm).map(|_| ());
            }
        }
        profile.update += lap(&mut t);
        Ok(())
    }

    /// Independent facts, up to `width` in flight (continuous batching).
    fn batched(&mut self, width: usize) -> Result<()> {
        let mut pending = std::collections::VecDeque::new();
        for i in 0..self.facts.len() {
            match self.load(i)? {
                Some(r) => self.finish(i, r, true)?,
                None => pending.push_back(i),
            }
        }
        let mut active: Vec<InFlight<'a>> = Vec::with_capacity(width);
        let mut joint = JointCache::default();
        loop {
            if self.interrupt_now() && !pending.is_empty() {
                return Err(OptimError::Interrupted {
                    finished: self.done,
                });
            }
            while active.len() < width {
                let Some(i) = pending.pop_front() else { break };
                let t = Instant::now();
                active.push(self.start_fact(i, None)?);
                self.profile.setup += t.elapsed().as_secs_f64();
            }
            if active.is_empty() {
                return Ok(());
            }
            let mut refs: Vec<&mut InFlight> = active.iter_mut().collect();
            self.step(&mut refs, &mut joint)?;
            let mut k = 0;
            while k < active.len() {
                if active[k].finished {
                    let a = active.remove(k);
                    let i = a.index;
                    let r = a.into_result()?;
                    self.finish(i, r, false)?;
                } else {
                    k += 1;
                }
            }
        }
    }

    /// Aligned facts in blocks of `width`.
    fn blocked(&mut self, width: usize) -> Result<()> {
        let n = self.facts.len();
        let mut s = 0;
        while s < n {
            let e = (s + width).min(n);
            let mut loaded = Vec::with_capacity(e - s);
            for i in s..e {
                match self.load(i)? {
                    Some(r) => loaded.push(r),
                    None => break,
                }
            }
            if loaded.len() == e - s {
                for (i, r) in (s..e).zip(loaded) {
                    self.finish(i, r, true)?;
                }
                s = e;
                continue;
            }
            if self.interrupt_now() {
                return Err(OptimError::Interrupted {
                    finished: self.done,
                });
            }
            // A block with missing facts is optimized again whole (its facts depend on each
            // other's trajectories): the replay is deterministic, so saved facts are rewritten
            // with the same bits.
            let mut block = Vec::with_capacity(e - s);
            let t = Instant::now();
            for i in s..e {
                let targets = match &self.stream {
                    Some(st) => {
                        let t = st
                            .targets(i)
                            .map_err(|source| OptimError::Align { fact: i, source })?;
                        Some(AlignmentTargets::new(
                            &t,
                            &self.saved_unit.narrow(0, 0, s as i64),
                        ))
                    }
                    None => None,
                };
                block.push(self.start_fact(i, targets)?);
            }
            self.profile.setup += t.elapsed().as_secs_f64();
            let mut joint = JointCache::default();
            while block.iter().any(|a| !a.finished) {
                if self.stream.is_some() && e - s > 1 {
                    let t = Instant::now();
                    set_block_neighbours(&mut block);
                    self.profile.loss += t.elapsed().as_secs_f64();
                }
                let mut refs: Vec<&mut InFlight> =
                    block.iter_mut().filter(|a| !a.finished).collect();
                self.step(&mut refs, &mut joint)?;
            }
            drop(joint);
            for a in block {
                let i = a.index;
                let r = a.into_result()?;
                self.finish(i, r, false)?;
            }
            s = e;
        }
        Ok(())
    }

    /// Per-fact set-up: batch, saved prefix, `h_i`, the essence reference, `δ`'s start.
    fn start_fact(&self, i: usize, alignment: Option<AlignmentTargets>) -> Result<InFlight<'a>> {
        let started = Instant::now();
        let (model, layer) = (self.model, self.layer);
        let facts: &'a [PreparedFact] = self.facts;
        let f = &facts[i];
        let hp = self.hparams.get();
        let d = model.config().d_model as i64;
        let key_norm = self
            .keys
            .row(i)
            .iter()
            .map(|&x| f64::from(x).powi(2))
            .sum::<f64>()
            .sqrt();
        let _g = tch::no_grad_guard();
        let fb = fact_batch(model, f, layer)?;
        let t = f.templates();
        let essence_at = fb.subject_slots[t];
        // Unedited pass: h_i (block output at the bare prompt's subject-last token) and P_init.
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
        let h = out.captures[0].view([d]);
        let unedited_essence = lp.get(0);
        let h_norm = h.to_kind(Kind::Double).norm().double_value(&[]);
        let init = match hp.delta_init {
            DeltaInit::TargetInit if h_norm < 100.0 && h_norm > 0.0 => {
                h.to_kind(Kind::Float) * (key_norm / h_norm)
            }
            _ => h.zeros_like(),
        };
        let delta = init.detach().set_requires_grad(true);
        let max_norm = match hp.weight_decay_method {
            WeightDecayMethod::FixKs => hp.clamp_ks_factor * key_norm,
            WeightDecayMethod::Norm => hp.clamp_norm_factor * h_norm,
        };
        let adam = Adam::new(hp.v_lr, &delta.detach());
        let reference = match hp.essence_reference {
            EssenceReference::Unedited => Some(unedited_essence),
            EssenceReference::FirstStep => None,
        };
        Ok(InFlight {
            index: i,
            fact: f,
            fb,
            h,
            h_norm,
            key_norm,
            max_norm,
            delta,
            adam,
            reference,
            alignment,
            step: 0,
            updates: 0,
            early_stopped: false,
            finished: false,
            last_nll: f64::NAN,
            last_p: f64::NAN,
            last_loss: f64::NAN,
            last_terms: Vec::new(),
            started,
        })
    }
}

/// One fact being optimized.
struct InFlight<'a> {
    index: usize,
    fact: &'a PreparedFact,
    fb: FactBatch,
    h: Tensor,
    h_norm: f64,
    key_norm: f64,
    max_norm: f64,
    /// The live `δ` (a leaf that requires grad).
    delta: Tensor,
    adam: Adam,
    reference: Option<Tensor>,
    alignment: Option<AlignmentTargets>,
    /// The next optimizer iteration.
    step: usize,
    updates: usize,
    early_stopped: bool,
    finished: bool,
    last_nll: f64,
    last_p: f64,
    last_loss: f64,
    last_terms: Vec<(String, f64)>,
    started: Instant,
}

impl InFlight<'_> {
    fn into_result(self) -> Result<StoredFact> {
        let delta = to_vec_f32(&self.delta)?;
        let delta_norm = delta
            .iter()
            .map(|&x| f64::from(x).powi(2))
            .sum::<f64>()
            .sqrt();
        Ok(StoredFact {
            h: to_vec_f32(&self.h)?,
            stats: FactStats {
                index: self.fact.index,
                case_id: self.fact.fact.case_id.clone(),
                final_nll: self.last_nll,
                p_target: self.last_p,
                final_loss: self.last_loss,
                terms: self.last_terms,
                steps: self.updates,
                early_stopped: self.early_stopped,
                delta_norm,
                h_norm: self.h_norm,
                seconds: self.started.elapsed().as_secs_f64(),
            },
            delta,
        })
    }
}

/// Gives every fact of a block the current (detached) unit residuals of the block's earlier
/// facts.
fn set_block_neighbours(block: &mut [InFlight<'_>]) {
    let _g = tch::no_grad_guard();
    let units: Vec<Tensor> = block
        .iter()
        .map(|a| {
            let x = a.delta.detach().to_kind(Kind::Double);
            let n = x.norm().double_value(&[]);
            if n < 1e-12 {
                x.zeros_like()
            } else {
                x / n
            }
        })
        .collect();
    let u = Tensor::stack(&units, 0);
    for (q, a) in block.iter_mut().enumerate() {
        if let Some(t) = &mut a.alignment {
            t.block_unit = (q > 0).then(|| u.narrow(0, 0, q as i64));
        }
    }
}

/// The joined batch of the facts in flight, reused while they stay the same.
#[derive(Default)]
struct JointCache {
    facts: Vec<usize>,
    joined: Option<JoinedStart>,
    subject_at: Vec<Vec<(usize, usize)>>,
    logprob_at: Vec<Vec<(usize, usize)>>,
}

impl JointCache {
    fn update<M: EditableLm + ?Sized>(
        &mut self,
        model: &M,
        active: &[&mut InFlight<'_>],
    ) -> Result<()> {
        let ids: Vec<usize> = active.iter().map(|a| a.index).collect();
        if self.joined.is_some() && ids == self.facts {
            return Ok(());
        }
        let _g = tch::no_grad_guard();
        self.joined = None;
        let parts: Vec<(&Batch, &Start)> =
            active.iter().map(|a| (&a.fb.batch, &a.fb.state)).collect();
        let joined = JoinedStart::join(&parts, model.tokenizer().pad_id)?;
        self.subject_at = active
            .iter()
            .enumerate()
            .map(|(p, a)| joined.map_all(p, &a.fb.subject_slots))
            .collect::<std::result::Result<_, _>>()?;
        self.logprob_at = active
            .iter()
            .enumerate()
            .map(|(p, a)| joined.map_all(p, &a.fb.at))
            .collect::<std::result::Result<_, _>>()?;
        self.joined = Some(joined);
        self.facts = ids;
        Ok(())
    }
}

/// The objective of one fact from its log-probs (`[rows, vocab]` at `fb.at`); records the
/// values in `a` and returns the total (a scalar tensor, differentiable in `a.delta`).
fn fact_loss(
    a: &mut InFlight<'_>,
    lp: &Tensor,
    hparams: &CheckedResidualHparams,
    objective: &Objective,
) -> Result<Tensor> {
    let hp = hparams.get();
    let f = a.fact;
    let (t, n_tgt) = (f.templates(), f.target_ids.len());
    let step = a.step;
    let (prompt_nll, essence_lp) = split_logprobs(lp, &a.fb, t, n_tgt);
    let reference_lp = match &a.reference {
        Some(r) => r.shallow_clone(),
        None => {
            let r = essence_lp.detach();
            a.reference = Some(r.shallow_clone());
            r
        }
    };
    let ctx = StepContext {
        fact: f,
        step,
        delta: &a.delta,
        prompt_nll: &prompt_nll,
        essence_logprobs: &essence_lp,
        essence_reference: &reference_lp,
        h: &a.h,
        key_norm: a.key_norm,
        alignment: a.alignment.as_ref(),
    };
    let nll_value = prompt_nll.mean(Kind::Double).double_value(&[]);
    let gate = hp.alignment_schedule.factor(nll_value);
    let mut total = Tensor::zeros([], (Kind::Double, a.delta.device()));
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
    a.last_loss = total.double_value(&[]);
    a.last_nll = nll_value;
    a.last_p = (-prompt_nll.to_kind(Kind::Double))
        .exp()
        .mean(Kind::Double)
        .double_value(&[]);
    a.last_terms = terms;
    Ok(total)
}
