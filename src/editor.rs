//! The editing pipeline: facts → prefixes → keys → residuals → per-layer closed-form updates
//! (ALGORITHM.md §1–§6).

use crate::stats::{generated_corpus, load_or_collect, Corpus, StatsConfig};
use crate::Error;
use eamet_align::{misalignment, KlDirection, Neighbourhood, ScoreConfig, ZeroVectors};
use eamet_hooks::tch::{Device, Kind, Tensor};
use eamet_hooks::{Batch, Capture, EditableLm, Padding, Plan, Site};
use eamet_optim::{
    compute_keys, optimize_residuals, prepare_facts, validate_facts, AlignmentSchedule,
    ContextPrefixes, Fact, PrefixSpec, PreparedFact, ResidualHparams, Residuals, RunOptions,
    Schedule,
};
use eamet_solve::{AlphaEditSolver, AlphaEditState, MemitSolver, UpdateSolver};
use ndarray::{Array2, Axis};
use serde::{Deserialize, Serialize};
use std::path::PathBuf;
use std::time::Instant;

/// Which editing method.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Method {
    /// MEMIT: independent residuals, normal-equation solve.
    Memit,
    /// EAMET: sequential residuals aligned to the key neighbourhoods, normal-equation solve.
    Eamet,
    /// AlphaEdit: independent residuals, null-space projected solve.
    AlphaEdit,
    /// AlphaEdit's solver with EAMET's aligned residuals.
    AlphaEditAligned,
}

impl Method {
    /// Parse `memit | eamet | alphaedit | alphaedit-aligned`.
    pub fn parse(s: &str) -> Result<Self, Error> {
        Ok(match s {
            "memit" => Method::Memit,
            "eamet" => Method::Eamet,
            "alphaedit" | "alpha-edit" => Method::AlphaEdit,
            "alphaedit-aligned" | "alpha-edit-aligned" => Method::AlphaEditAligned,
            other => {
                return Err(Error::Input(format!(
                    "unknown method {other:?} (memit, eamet, alphaedit, alphaedit-aligned)"
                )))
            }
        })
    }

    fn aligned(self) -> bool {
        matches!(self, Method::Eamet | Method::AlphaEditAligned)
    }
}

/// `mom2_update_weight`: one λ for every layer (MEMIT's files) or one per layer (EAMET's).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum LayerWeights {
    /// The same λ for all layers.
    One(f64),
    /// One λ per edited layer.
    PerLayer(Vec<f64>),
}

/// Hyperparameters of an edit; accepts the reference hparams files' field names.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct EditHparams {
    /// Edited layers, increasing; the last one is `l_R`, where residuals are optimized.
    pub layers: Vec<usize>,
    /// λ of the normal equation (MEMIT/EAMET).
    pub mom2_update_weight: LayerWeights,
    /// AlphaEdit: eigenvalues of `C` below this span the preserved null space.
    pub nullspace_threshold: f64,
    /// AlphaEdit: ridge α.
    #[serde(rename = "L2")]
    pub l2: f64,
    /// Documents of generic text for the key statistics.
    pub mom2_n_samples: usize,
    /// Tokens per statistics document.
    pub mom2_max_tokens: usize,
    /// How the context prefixes are sampled.
    pub prefixes: PrefixSpec,
    /// The per-fact residual optimization.
    #[serde(flatten)]
    pub residual: ResidualHparams,
}

impl Default for EditHparams {
    fn default() -> Self {
        Self::smollm2(Method::Eamet)
    }
}

impl EditHparams {
    /// Defaults for SmolLM2-135M (30 blocks). Chosen from the measurements recorded in
    /// ALGORITHM.md §3 (with the reference code on 20 CounterFact facts): layers 3,4 edit as
    /// well as 2–6; λ decides how much of the residual lands (15000 → 29%, 1000 → 84%,
    /// ≤ 100 → ~95%), so λ = 100; ‖k‖ ≈ 4–8 against ‖h‖ ≈ 90 makes the reference clamp of
    /// 2‖k‖ far too small, 10–15‖k‖ works: 12; EAMET's alignment weights are gated by the NLL so
    /// they cannot stop a fact from converging.
    pub fn smollm2(method: Method) -> Self {
        let mut residual = if method.aligned() {
            ResidualHparams::eamet()
        } else {
            ResidualHparams::memit()
        };
        if method.aligned() {
            residual.clamp_ks_factor = 12.0;
            residual.alignment_schedule = AlignmentSchedule::NllGated { threshold: 0.5 };
        }
        EditHparams {
            layers: vec![3, 4],
            mom2_update_weight: LayerWeights::One(100.0),
            nullspace_threshold: 2e-2,
            l2: 1.0,
            mom2_n_samples: 256,
            mom2_max_tokens: 64,
            prefixes: if method.aligned() {
                PrefixSpec::eamet()
            } else {
                PrefixSpec::memit()
            },
            residual,
        }
    }

    /// Read a JSON file (reference field names accepted; unknown fields are ignored).
    pub fn from_json(text: &str) -> Result<Self, Error> {
        serde_json::from_str(text).map_err(|e| Error::Input(format!("hparams JSON: {e}")))
    }

    fn lambda(&self, idx: usize) -> f64 {
        match &self.mom2_update_weight {
            LayerWeights::One(l) => *l,
            LayerWeights::PerLayer(v) => v[idx],
        }
    }

    fn check(&self, n_layers: usize) -> Result<(), Error> {
        let bad = |m: String| Err(Error::Input(format!("hparams: {m}")));
        if self.layers.is_empty() {
            return bad("layers is empty".into());
        }
        if self.layers.windows(2).any(|w| w[0] >= w[1]) {
            return bad(format!(
                "layers {:?} must be strictly increasing",
                self.layers
            ));
        }
        if let Some(&l) = self.layers.iter().find(|&&l| l >= n_layers) {
            return bad(format!(
                "layer {l} does not exist (the model has {n_layers})"
            ));
        }
        if let LayerWeights::PerLayer(v) = &self.mom2_update_weight {
            if v.len() != self.layers.len() {
                return bad(format!(
                    "{} mom2_update_weight values for {} layers",
                    v.len(),
                    self.layers.len()
                ));
            }
        }
        if (0..self.layers.len()).any(|i| !(self.lambda(i).is_finite() && self.lambda(i) >= 0.0)) {
            return bad("mom2_update_weight must be finite and >= 0".into());
        }
        if self.mom2_n_samples == 0 || self.mom2_max_tokens == 0 {
            return bad("mom2_n_samples and mom2_max_tokens must be positive".into());
        }
        self.residual
            .check()
            .map_err(|e| Error::Input(e.to_string()))?;
        Ok(())
    }
}

/// Options that do not change the result.
#[derive(Debug, Clone, Default)]
pub struct EditOptions {
    /// Run directory: prefixes and every finished residual are saved there; a rerun resumes.
    pub run_dir: Option<PathBuf>,
    /// Cache for key statistics (default: the per-user cache, see `eamet_hooks::paths`).
    pub cache_dir: Option<PathBuf>,
    /// Generic text for the statistics; `None`: text the model writes itself (seeded).
    pub corpus: Option<Corpus>,
    /// Progress bars.
    pub progress: bool,
}

/// What an edit did.
#[derive(Debug)]
pub struct EditOutcome {
    /// The method.
    pub method: Method,
    /// `(layer, Δ)` in key→residual orientation (`d_model × d_ff`), as applied.
    pub deltas: Vec<(usize, Array2<f32>)>,
    /// The optimized residuals and per-fact statistics.
    pub residuals: Residuals,
    /// Keys at `l_R` on the unedited model (`N × d_ff`).
    pub keys: Array2<f32>,
    /// Misalignment `A(i) = KL(P_r‖P_k)` over `j < i` of the produced residuals, per fact.
    pub misalignment: Vec<f64>,
    /// Σ A(i).
    pub misalignment_total: f64,
    /// The residuals the solve actually wrote: block-`l_R` output at each bare prompt's
    /// subject-last token after the edit minus before it (`N × d_model`). The normal equation
    /// trades the residuals against preserving the corpus keys, so these differ from the
    /// optimized `δ_i`.
    pub written: Array2<f32>,
    /// Misalignment `A(i) = KL(P_r‖P_k)` over `j < i` of the written residuals, per fact.
    pub written_misalignment: Vec<f64>,
    /// Σ A(i) of the written residuals.
    pub written_misalignment_total: f64,
    /// Per layer: solver name, condition estimate and relative residual of the solve.
    pub solves: Vec<String>,
    /// Seconds per phase.
    pub timings: Vec<(String, f64)>,
    /// Whether each layer's statistics came from the cache.
    pub stats_cached: Vec<bool>,
}

/// Edits a model in place with one method and one set of hyperparameters.
pub struct Editor<'m, M: EditableLm + ?Sized> {
    model: &'m mut M,
    method: Method,
    hp: EditHparams,
    opts: EditOptions,
}

fn to_tensor(a: &Array2<f32>) -> Tensor {
    let (r, c) = a.dim();
    let v: Vec<f32> = a.iter().copied().collect();
    Tensor::from_slice(&v).reshape([r as i64, c as i64])
}

fn to_array(t: &Tensor) -> Result<Array2<f32>, Error> {
    let (r, c) = (t.size()[0] as usize, t.size()[1] as usize);
    let v = Vec::<f32>::try_from(
        t.to_device(Device::Cpu)
            .to_kind(Kind::Float)
            .contiguous()
            .reshape([-1]),
    )?;
    Array2::from_shape_vec((r, c), v).map_err(|e| Error::Input(e.to_string()))
}

/// Block-`layer` output at the bare prompt's subject-last token of every fact (`N × d_model`).
fn bare_outputs<M: EditableLm + ?Sized>(
    model: &M,
    facts: &[PreparedFact],
    layer: usize,
) -> Result<Array2<f32>, Error> {
    let _g = eamet_hooks::tch::no_grad_guard();
    let mut rows = Vec::with_capacity(facts.len());
    for chunk in facts.chunks(64) {
        let ids: Vec<Vec<u32>> = chunk.iter().map(|f| f.key_prompts[0].clone()).collect();
        let batch = Batch::new(
            &ids,
            model.tokenizer().pad_id,
            Padding::Right,
            model.device(),
        )?;
        let at = chunk
            .iter()
            .enumerate()
            .map(|(r, f)| (r, f.subject_last[0]))
            .collect();
        let out = model.forward(
            &batch,
            &Plan {
                captures: vec![Capture {
                    layer,
                    site: Site::BlockOut,
                    at: Some(at),
                }],
                stop_after: Some(layer),
                ..Default::default()
            },
        )?;
        rows.push(to_array(&out.captures[0])?);
    }
    let views: Vec<_> = rows.iter().map(|a| a.view()).collect();
    ndarray::concatenate(Axis(0), &views).map_err(|e| Error::Input(e.to_string()))
}

/// `A(i) = KL(P_r‖P_k)` over `j < i` (the paper's direction, the optimized neighbourhood), the
/// form every [`EditOutcome`] reports.
pub fn report_misalignment(
    keys: &Array2<f32>,
    residuals: &Array2<f32>,
) -> Result<eamet_align::Misalignment, Error> {
    let cfg = ScoreConfig {
        neighbourhood: Neighbourhood::Prior,
        divergence: KlDirection::ResidualKey,
        zero_vectors: ZeroVectors::CosineZero,
        ..ScoreConfig::default()
    };
    misalignment(keys.view(), residuals.view(), &cfg).map_err(|e| Error::Input(e.to_string()))
}

impl<'m, M: EditableLm + ?Sized> Editor<'m, M> {
    /// Check the hyperparameters against the model.
    pub fn new(
        model: &'m mut M,
        method: Method,
        hp: EditHparams,
        opts: EditOptions,
    ) -> Result<Self, Error> {
        hp.check(model.config().n_layers)?;
        Ok(Editor {
            model,
            method,
            hp,
            opts,
        })
    }

    /// Edit all facts at once and apply the updates to the model (it stays edited; use
    /// `EditableLm::restore` to undo). AlphaEdit methods start from an empty state; use
    /// [`Editor::edit_sequential`] to carry one across batches.
    pub fn edit(&mut self, facts: &[Fact]) -> Result<EditOutcome, Error> {
        let mut states = Vec::new();
        self.edit_sequential(facts, &mut states)
    }

    /// As [`Editor::edit`], with AlphaEdit's per-layer state (projector and accumulated keys of
    /// earlier batches, one entry per edited layer) held by the caller; ignored by MEMIT/EAMET.
    /// After the batch, its keys on the edited model are recorded in `states`.
    pub fn edit_sequential(
        &mut self,
        facts: &[Fact],
        states: &mut Vec<AlphaEditState>,
    ) -> Result<EditOutcome, Error> {
        states.resize_with(self.hp.layers.len(), AlphaEditState::new);
        validate_facts(facts).map_err(|e| Error::Input(e.to_string()))?;
        let mut timings = Vec::new();
        let mut t = Instant::now();
        let mut lap = |name: &str, t: &mut Instant| {
            timings.push((name.to_string(), t.elapsed().as_secs_f64()));
            *t = Instant::now();
        };
        let model = &mut *self.model;
        let hp = &self.hp;
        let l_r = *hp.layers.last().expect("checked non-empty");
        let cache_dir = self
            .opts
            .cache_dir
            .clone()
            .or_else(eamet_hooks::paths::cache_dir)
            .ok_or_else(|| Error::Input("no cache directory: set EAMET_HOME".into()))?;
        let spec = hp.prefixes.clone();
        let prefixes = match &self.opts.run_dir {
            Some(dir) => {
                std::fs::create_dir_all(dir)
                    .map_err(|e| Error::Input(format!("{}: {e}", dir.display())))?;
                ContextPrefixes::load_or_generate(&*model, &spec, &dir.join("prefixes.json"))
            }
            None => ContextPrefixes::generate(&*model, &spec),
        }
        .map_err(|e| Error::Input(e.to_string()))?;
        let prepared = prepare_facts(model.tokenizer(), facts, &prefixes)
            .map_err(|e| Error::Input(e.to_string()))?;
        lap("prefixes", &mut t);

        let keys =
            compute_keys(&*model, &prepared, l_r).map_err(|e| Error::Input(e.to_string()))?;
        lap("keys", &mut t);
        let checked = hp
            .residual
            .check()
            .map_err(|e| Error::Input(e.to_string()))?;
        let schedule = if self.method.aligned() {
            Schedule::Sequential
        } else {
            Schedule::Independent
        };
        let residuals = optimize_residuals(
            &*model,
            &prepared,
            keys.view(),
            l_r,
            &checked,
            schedule,
            &RunOptions {
                run_dir: self.opts.run_dir.as_deref(),
                progress: self.opts.progress,
                ..Default::default()
            },
        )
        .map_err(|e| Error::Input(e.to_string()))?;
        lap("residuals", &mut t);

        let corpus = match &self.opts.corpus {
            Some(c) => c.take(hp.mom2_n_samples),
            None => generated_corpus(
                &*model,
                hp.mom2_n_samples,
                hp.mom2_max_tokens,
                &cache_dir,
                self.opts.progress,
            )?,
        };
        let stats_cfg = StatsConfig {
            max_tokens: hp.mom2_max_tokens,
            batch_size: 16,
            progress: self.opts.progress,
        };
        let (stats, stats_cached) =
            load_or_collect(&*model, &corpus, &hp.layers, &stats_cfg, &cache_dir)?;
        lap("statistics", &mut t);

        let z = residuals.targets();
        let mut deltas = Vec::new();
        let mut solves = Vec::new();
        for (idx, &layer) in hp.layers.iter().enumerate() {
            let k =
                compute_keys(&*model, &prepared, layer).map_err(|e| Error::Input(e.to_string()))?;
            let cur = bare_outputs(&*model, &prepared, l_r)?;
            let remaining = (hp.layers.len() - idx) as f32;
            let r = (&z - &cur) / remaining;
            let k64 = k.mapv(f64::from);
            let r64 = r.mapv(f64::from);
            let update = match self.method {
                Method::Memit | Method::Eamet => {
                    MemitSolver::new(hp.lambda(idx))?.solve(k64.view(), r64.view(), &stats[idx])?
                }
                Method::AlphaEdit | Method::AlphaEditAligned => {
                    let mut solver = AlphaEditSolver::with_state(
                        hp.nullspace_threshold,
                        hp.l2,
                        std::mem::take(&mut states[idx]),
                    )?;
                    let u = solver.solve(k64.view(), r64.view(), &stats[idx]);
                    states[idx] = solver.into_state();
                    u?
                }
            };
            let d = &update.diagnostics;
            solves.push(format!("layer {layer}: {:?}", d));
            let delta = update.delta.mapv(|x| x as f32);
            model.apply_delta(layer, &to_tensor(&delta))?;
            deltas.push((layer, delta));
        }
        if matches!(self.method, Method::AlphaEdit | Method::AlphaEditAligned) {
            // Sequential editing: the keys of this batch on the edited model join K_p.
            for (idx, &layer) in hp.layers.iter().enumerate() {
                let k = compute_keys(&*model, &prepared, layer)
                    .map_err(|e| Error::Input(e.to_string()))?;
                states[idx].record_batch(k.mapv(f64::from).view())?;
            }
        }
        lap("solve", &mut t);

        let written = bare_outputs(&*model, &prepared, l_r)? - &residuals.h;
        let score = report_misalignment(&keys, &residuals.deltas)?;
        let written_score = report_misalignment(&keys, &written)?;
        lap("misalignment", &mut t);
        Ok(EditOutcome {
            method: self.method,
            deltas,
            misalignment: score.per_fact().to_vec(),
            misalignment_total: score.total(),
            written,
            written_misalignment: written_score.per_fact().to_vec(),
            written_misalignment_total: written_score.total(),
            residuals,
            keys,
            solves,
            timings,
            stats_cached,
        })
    }
}
