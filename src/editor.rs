//! The editing pipeline: facts → prefixes → keys → residuals → per-layer closed-form updates
//! (ALGORITHM.md §1–§6).

use crate::stats::{generated_corpus, load_or_collect, Corpus, StatsConfig};
use crate::Error;
use eamet_align::{misalignment, KlDirection, Neighbourhood, ScoreConfig, ZeroVectors};
use eamet_eval::report::WrittenFit;
use eamet_hooks::tch::{Device, Kind, Tensor};
use eamet_hooks::{Batch, Capture, EditableLm, Padding, Plan, Site};
use eamet_optim::{
    compute_keys, optimize_residuals, prepare_facts, validate_facts, AlignmentSchedule,
    ContextPrefixes, Fact, LossTerm, Objective, PrefixSpec, PreparedFact, ResidualHparams,
    Residuals, RunOptions, Schedule,
};
use eamet_solve::{AlphaEditSolver, MemitSolver, UpdateSolver};
use ndarray::{Array2, ArrayView2, Axis};
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

    /// Whether the method's residuals are aligned (EAMET's objective and an aligned schedule).
    pub fn aligned(self) -> bool {
        matches!(self, Method::Eamet | Method::AlphaEditAligned)
    }

    /// The method's name as the CLI spells it.
    pub fn name(self) -> &'static str {
        match self {
            Method::Memit => "memit",
            Method::Eamet => "eamet",
            Method::AlphaEdit => "alphaedit",
            Method::AlphaEditAligned => "alphaedit-aligned",
        }
    }

    /// The residual schedule of the preset: `hp.block` facts per pass, independent
    /// ([`Schedule::Batched`]) or aligned ([`Schedule::Blocked`]).
    pub fn schedule(self, hp: &EditHparams) -> Schedule {
        Schedule::with_width(self.aligned(), hp.block)
    }

    /// The objective of the preset: the terms `hp` asks for ([`Objective::from_hparams`]).
    ///
    /// # Errors
    /// [`Error::Optim`] if the residual hyperparameters are invalid.
    pub fn objective(self, hp: &EditHparams) -> Result<Objective, Error> {
        Ok(Objective::from_hparams(&hp.residual.check()?))
    }

    /// The per-layer solvers of the preset, one per edited layer: MEMIT's normal equation with
    /// that layer's λ, or AlphaEdit's null-space solver (fresh state).
    ///
    /// # Errors
    /// [`Error::Solve`] for an invalid λ, threshold or `L2`.
    pub fn solvers(self, hp: &EditHparams) -> Result<Vec<Box<dyn UpdateSolver>>, Error> {
        (0..hp.layers.len())
            .map(|idx| -> Result<Box<dyn UpdateSolver>, Error> {
                Ok(match self {
                    Method::Memit | Method::Eamet => Box::new(MemitSolver::new(hp.lambda(idx))?),
                    Method::AlphaEdit | Method::AlphaEditAligned => {
                        Box::new(AlphaEditSolver::new(hp.nullspace_threshold, hp.l2)?)
                    }
                })
            })
            .collect()
    }
}

fn default_block() -> usize {
    1
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

/// Facts per optimizer pass in the SmolLM2 presets (see [`EditHparams::block`]), chosen by
/// measurement (docs/benchmarks.md).
pub const SMOLLM2_BLOCK: usize = 8;

/// λ (`mom2_update_weight`) of the SmolLM2 presets for MEMIT's independently optimized
/// residuals, chosen on the development slice (docs/hparams.md).
pub const SMOLLM2_LAMBDA: f64 = 1000.0;

/// λ of the SmolLM2 presets for aligned residuals (EAMET, AlphaEdit-aligned), chosen on the
/// development slice (docs/hparams.md).
pub const SMOLLM2_LAMBDA_ALIGNED: f64 = 300.0;

/// The one edited layer of the Gemma 3 270M presets (18 blocks; one layer because its post-FFN
/// norm rules out a spread over several, docs/hparams.md).
pub const GEMMA3_270M_LAYER: usize = 4;

/// λ of the Gemma 3 270M presets, chosen on the development slice (docs/hparams.md).
pub const GEMMA3_270M_LAMBDA: f64 = 300.0;

/// The residual clamp of the Gemma 3 270M presets, every method: `‖δ‖ ≤ factor·‖k‖`
/// (`fix_ks`), chosen on the development slice: for MEMIT against its block-output clamp,
/// which bounds nothing on this model, and for EAMET against the factors 3 and 12
/// (docs/hparams.md).
pub const GEMMA3_270M_CLAMP_KS: f64 = 1.0;

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
    /// Facts per optimizer pass: the batch size of independent methods (MEMIT, AlphaEdit;
    /// the results equal one-at-a-time optimization up to float rounding) and the block size
    /// of aligned ones (EAMET, AlphaEdit-aligned; [`Schedule::Blocked`]). 1 is the reference
    /// schedule; a file without the field gets 1.
    #[serde(default = "default_block")]
    pub block: usize,
    /// The per-fact residual optimization.
    #[serde(flatten)]
    pub residual: ResidualHparams,
}

/// Fields of the reference code's hyperparameter files that this crate accepts and ignores:
/// module-name templates (the model layer knows its modules), the statistics' dataset, dtype
/// and batch size (we compute them in f64 from the corpus given), `layer_selection`,
/// `mom2_adjustment` (always on), `device`, and two whose only supported value is the
/// reference's own: `fact_token` (`subject_last`) and `norm_factor` (0).
pub const REFERENCE_ONLY_FIELDS: &[&str] = &[
    "attn_module_tmp",
    "device",
    "fact_token",
    "ks_bs",
    "layer_module_tmp",
    "layer_selection",
    "lm_head_module",
    "ln_f_module",
    "mlp_module_tmp",
    "mom2_adjustment",
    "mom2_dataset",
    "mom2_dtype",
    "norm_factor",
    "rewrite_module_tmp",
];

/// The candidate nearest to `name` by edit distance, if it is near enough to be a likely typo.
fn closest<'a>(name: &str, candidates: impl Iterator<Item = &'a str>) -> Option<&'a str> {
    let dist = |a: &str, b: &str| {
        let b: Vec<char> = b.chars().collect();
        let mut row: Vec<usize> = (0..=b.len()).collect();
        for (i, ca) in a.chars().enumerate() {
            let mut prev = row[0];
            row[0] = i + 1;
            for (j, &cb) in b.iter().enumerate() {
                let cur = row[j + 1];
                row[j + 1] = (prev + usize::from(ca != cb)).min(row[j] + 1).min(cur + 1);
                prev = cur;
            }
        }
        row[b.len()]
    };
    candidates
        .map(|c| (dist(&name.to_lowercase(), &c.to_lowercase()), c))
        .filter(|(d, c)| *d <= (c.len() / 3).max(2))
        .min_by_key(|(d, _)| *d)
        .map(|(_, c)| c)
}

impl Default for EditHparams {
    fn default() -> Self {
        Self::smollm2(Method::Eamet)
    }
}

impl EditHparams {
    /// Defaults for SmolLM2-135M (30 blocks). Layers 3,4 edit as well as 2–6 (ALGORITHM.md §3,
    /// reference code on 20 CounterFact facts). λ comes from the development-slice sweep
    /// (docs/hparams.md, CounterFact train records 9000–9199, 200 edits at once): of each
    /// method's Pareto front of strict efficacy against neighbourhood KL, the lowest-KL
    /// setting within 0.02 of the method's best efficacy: 1000 for MEMIT's residuals (0.890
    /// strict efficacy, KL 0.241, against 0.910 / 0.326 at λ = 30), 300 for the aligned ones
    /// (0.835 / 0.215 against 0.845 / 0.233); AlphaEdit's solve has no λ. ‖k‖ ≈ 4–8 against
    /// ‖h‖ ≈ 90 makes the reference clamp of 2‖k‖ far too small, 10–15‖k‖ works: 12; EAMET's
    /// alignment weights are gated by the NLL so they cannot stop a fact from converging.
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
            mom2_update_weight: LayerWeights::One(if method.aligned() {
                SMOLLM2_LAMBDA_ALIGNED
            } else {
                SMOLLM2_LAMBDA
            }),
            nullspace_threshold: 2e-2,
            l2: 1.0,
            mom2_n_samples: 256,
            mom2_max_tokens: 64,
            block: SMOLLM2_BLOCK,
            prefixes: if method.aligned() {
                PrefixSpec::eamet()
            } else {
                PrefixSpec::memit()
            },
            residual,
        }
    }

    /// Defaults for Gemma 3 270M (18 blocks, d_ff 2048): the SmolLM2 presets of the method with
    /// one edited layer, [`GEMMA3_270M_LAYER`], λ = [`GEMMA3_270M_LAMBDA`] (AlphaEdit's null-space
    /// solve has no λ and keeps its own settings) and the clamp `‖δ‖ ≤ ‖k‖`
    /// ([`GEMMA3_270M_CLAMP_KS`]), from the
    /// development-slice sweep of docs/hparams.md. Its MLP output passes a post-FFN norm
    /// before it reaches the residual stream, so MEMIT's spread over several layers does not
    /// apply (the [`Editor`] refuses it), and an unclamped residual outgrows the `W_out` output
    /// it adds to many times over.
    pub fn gemma3_270m(method: Method) -> Self {
        let mut hp = Self::smollm2(method);
        hp.layers = vec![GEMMA3_270M_LAYER];
        hp.mom2_update_weight = LayerWeights::One(GEMMA3_270M_LAMBDA);
        hp.residual.weight_decay_method = eamet_optim::WeightDecayMethod::FixKs;
        hp.residual.clamp_ks_factor = GEMMA3_270M_CLAMP_KS;
        hp
    }

    /// Checks the values and that the layers exist in `config`'s model, and refuses an edit
    /// spread over several layers of a model that normalizes its MLP outputs (Gemma 3's
    /// post-FFN norm): MEMIT's spread assumes each layer's `W_out` output adds straight into
    /// the residual stream.
    ///
    /// # Errors
    /// [`Error::Input`] or [`Error::Optim`] naming the value that does not fit.
    pub fn check_model(&self, config: &eamet_hooks::ModelConfig) -> Result<(), Error> {
        self.check(config.n_layers)?;
        check_spread(config, &self.layers)
    }

    /// Read a JSON file with the reference code's field names. Fields of the reference files
    /// that this crate does not use ([`REFERENCE_ONLY_FIELDS`]) are accepted; any other
    /// unknown field is an error naming it and the closest known name, so a misspelled field
    /// never runs silently with its default. Fields whose name starts with `_` are comments. See [`from_json_reporting`](Self::from_json_reporting)
    /// to learn which fields were ignored.
    pub fn from_json(text: &str) -> Result<Self, Error> {
        Self::from_json_reporting(text).map(|(hp, _)| hp)
    }

    /// As [`from_json`](Self::from_json), also returning the reference-only fields that were
    /// present and ignored (in key order).
    ///
    /// # Errors
    /// Malformed JSON, an unknown field, a bad value, or a reference-only field whose value
    /// would change what the reference computes (`fact_token` other than `subject_last`,
    /// `norm_factor` other than 0).
    pub fn from_json_reporting(text: &str) -> Result<(Self, Vec<String>), Error> {
        let json = |e: serde_json::Error| Error::Input(format!("hparams JSON: {e}"));
        let value: serde_json::Value = serde_json::from_str(text).map_err(json)?;
        let obj = value
            .as_object()
            .ok_or_else(|| Error::Input("hparams JSON: expected an object".into()))?;
        // Every field, optional ones included (they are not serialized when unset).
        let mut every = Self::default();
        every.residual.early_stop_nll = Some(1.0);
        let known: Vec<String> = match serde_json::to_value(every) {
            Ok(serde_json::Value::Object(m)) => m.keys().cloned().collect(),
            _ => Vec::new(),
        };
        let mut ignored = Vec::new();
        for (k, v) in obj {
            // Known fields, and comments (`_source`, `_note`, ...: a leading underscore).
            if known.iter().any(|n| n == k) || k.starts_with('_') {
                continue;
            }
            if REFERENCE_ONLY_FIELDS.contains(&k.as_str()) {
                let unsupported = match k.as_str() {
                    "fact_token" => v.as_str() != Some("subject_last"),
                    "norm_factor" => v.as_f64() != Some(0.0),
                    _ => false,
                };
                if unsupported {
                    return Err(Error::Input(format!(
                        "hparams: {k} = {v} is not supported (only the reference's default: {})",
                        if k == "fact_token" {
                            "\"subject_last\""
                        } else {
                            "0"
                        }
                    )));
                }
                ignored.push(k.clone());
                continue;
            }
            let candidates = known
                .iter()
                .map(String::as_str)
                .chain(REFERENCE_ONLY_FIELDS.iter().copied());
            let hint = closest(k, candidates)
                .map(|c| format!(" (did you mean {c:?}?)"))
                .unwrap_or_default();
            return Err(Error::Input(format!("hparams: unknown field {k:?}{hint}")));
        }
        let hp = serde_json::from_value(value).map_err(json)?;
        Ok((hp, ignored))
    }

    /// λ of the `idx`-th edited layer.
    pub fn lambda(&self, idx: usize) -> f64 {
        match &self.mom2_update_weight {
            LayerWeights::One(l) => *l,
            LayerWeights::PerLayer(v) => v[idx],
        }
    }

    /// Checks the values and that the layers exist in a model of `n_layers` layers, but not
    /// what the model's kind allows (see [`check_model`](Self::check_model), which the
    /// [`Editor`] applies): for tools that only optimize residuals at the last layer.
    ///
    /// # Errors
    /// [`Error::Input`] or [`Error::Optim`] naming the value that does not fit.
    pub fn check(&self, n_layers: usize) -> Result<(), Error> {
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
        if self.block == 0 {
            return bad("block must be at least 1".into());
        }
        self.residual.check()?;
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
    /// The preset the editor started from.
    pub method: Method,
    /// The residual schedule used.
    pub schedule: Schedule,
    /// The objective's terms, described.
    pub objective: Vec<String>,
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
    /// The residuals the solve actually wrote (`N × d_model`): block-`l_R` output at each bare
    /// prompt's subject-last token after the edit minus before it; on a model that normalizes
    /// its MLP outputs (one edited layer) `Δ k_i`, the change of the `W_out` output, the space
    /// the residuals were optimized in. The normal equation
    /// trades the residuals against preserving the corpus keys, so these differ from the
    /// optimized `δ_i`.
    pub written: Array2<f32>,
    /// Misalignment `A(i) = KL(P_r‖P_k)` over `j < i` of the written residuals, per fact.
    pub written_misalignment: Vec<f64>,
    /// Σ A(i) of the written residuals.
    pub written_misalignment_total: f64,
    /// Per layer, `layer L: ` and the solve's diagnostics line (`eamet_solve::Diagnostics`'s
    /// `Display`: solver, factorization, condition estimate, relative residual, null space).
    pub solves: Vec<String>,
    /// Seconds per phase.
    pub timings: Vec<(String, f64)>,
    /// Whether each layer's statistics came from the cache.
    pub stats_cached: Vec<bool>,
    /// The documents the key statistics were collected over: the corpus's identity (file
    /// names or the generator's recipe) and the SHA-256 of its documents.
    pub stats_corpus: String,
}

impl EditOutcome {
    /// How much of each optimized residual the solve wrote ([`written_fit`] of
    /// [`written`](Self::written) against the optimized `δ_i`), per fact.
    ///
    /// # Errors
    /// None for an outcome of [`Editor::edit`]; see [`written_fit`].
    pub fn written_fit(&self) -> Result<Vec<WrittenFit>, Error> {
        written_fit(self.written.view(), self.residuals.deltas.view())
    }
}

/// [`WrittenFit`] per row of `written` and `deltas` (one fact per row, same shapes), accumulated
/// in `f64`.
///
/// # Errors
/// [`Error::Input`] when the shapes differ or a value is not finite (naming the fact).
pub fn written_fit(
    written: ArrayView2<'_, f32>,
    deltas: ArrayView2<'_, f32>,
) -> Result<Vec<WrittenFit>, Error> {
    if written.dim() != deltas.dim() {
        return Err(Error::Input(format!(
            "written_fit: written is {:?} but the residuals are {:?} (one row per fact)",
            written.dim(),
            deltas.dim()
        )));
    }
    let bad = written
        .rows()
        .into_iter()
        .zip(deltas.rows())
        .position(|(w, d)| w.iter().chain(d.iter()).any(|x| !x.is_finite()));
    if let Some(i) = bad {
        return Err(Error::Input(format!(
            "written_fit: fact {i} has a non-finite value in its written or optimized residual"
        )));
    }
    Ok(written
        .rows()
        .into_iter()
        .zip(deltas.rows())
        .map(|(w, d)| {
            let (mut wd, mut dd, mut ww) = (0.0_f64, 0.0_f64, 0.0_f64);
            for (&a, &b) in w.iter().zip(d.iter()) {
                let (a, b) = (f64::from(a), f64::from(b));
                wd += a * b;
                dd += b * b;
                ww += a * a;
            }
            let ratio = |num: f64, den: f64| if den > 0.0 { num / den } else { 0.0 };
            WrittenFit {
                norm: dd.sqrt(),
                share: ratio(wd, dd),
                cosine: ratio(wd, (ww * dd).sqrt()),
            }
        })
        .collect())
}

/// Edits a model in place. An edit composes three parts, each replaceable:
/// - a residual [`Schedule`] (independent, batched, sequential or blocked);
/// - an [`Objective`]: the loss terms of each fact's residual optimization (add any
///   [`LossTerm`]);
/// - one [`UpdateSolver`] per edited layer, which turns keys and residuals into `Δ`.
///
/// [`Editor::new`] builds the parts of a [`Method`] preset from the hyperparameters; the
/// `with_*` methods swap them:
///
/// ```no_run
/// use eamet::{EditHparams, EditOptions, Editor, Fact, Method};
/// use eamet::optim::{Objective, PrefixNll};
/// use eamet::solve::MemitSolver;
/// # fn main() -> Result<(), eamet::Error> {
/// let path = eamet::hooks::paths::default_model().expect("a cache directory");
/// let mut model = eamet::hooks::LlamaModel::from_gguf(&path, eamet::hooks::tch::Device::Cpu)?;
/// let hp = EditHparams::smollm2(Method::Memit);
/// let solvers: Vec<Box<dyn eamet::solve::UpdateSolver>> = vec![
///     Box::new(MemitSolver::new(50.0)?),
///     Box::new(MemitSolver::new(200.0)?),
/// ];
/// let outcome = Editor::new(&mut model, Method::Memit, hp, EditOptions::default())?
///     .with_objective(Objective::new().with(PrefixNll))
///     .with_solvers(solvers)?
///     .edit(&[Fact::new("Eiffel Tower", "The {} is located in", "Rome")])?;
/// println!("{:?}", outcome.solves);
/// # Ok(()) }
/// ```
///
/// The solvers live as long as the editor: AlphaEdit's memory of earlier batches carries from
/// one [`Editor::edit`] call to the next (sequential editing).
pub struct Editor<'m, M: EditableLm + ?Sized> {
    model: &'m mut M,
    method: Method,
    hp: EditHparams,
    schedule: Schedule,
    objective: Objective,
    solvers: Vec<Box<dyn UpdateSolver>>,
    opts: EditOptions,
}

/// `(layer, Δ)` per edited layer.
type LayerDeltas = Vec<(usize, Array2<f32>)>;

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

/// Refuses a layer spread the model cannot carry. MEMIT's spread writes a share of each
/// residual at every edited layer and measures what is left at the block output of the last
/// one, which assumes that a layer's `W_out` output adds straight into the residual stream. A
/// model that normalizes the MLP output before adding it (Gemma 3's post-FFN norm) breaks that:
/// the earlier layer's share reaches the stream rescaled by the norm's gains, and the last
/// layer is then asked to undo a shift hundreds of times its own output (docs/hparams.md,
/// Gemma 3: 100 edits at layers 3,4 left strict efficacy at 0.09–0.15, layer 4 alone 0.47).
fn check_spread(config: &eamet_hooks::ModelConfig, layers: &[usize]) -> Result<(), Error> {
    if config.sandwich_norms && layers.len() > 1 {
        return Err(Error::Input(format!(
            "layers {layers:?}: a {} model normalizes each MLP output before adding it to the \
             residual stream (post-FFN norm), so an edit cannot be spread over several layers; \
             edit one layer (e.g. --layers {})",
            config.arch_name,
            layers.last().copied().unwrap_or(0)
        )));
    }
    Ok(())
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
    /// An editor with the parts of the `method` preset ([`Method::schedule`],
    /// [`Method::objective`], [`Method::solvers`]), after checking the hyperparameters
    /// against the model.
    ///
    /// # Errors
    /// [`Error::Input`] or [`Error::Optim`] for hyperparameters that do not fit the model;
    /// [`Error::Solve`] for invalid solver parameters.
    pub fn new(
        model: &'m mut M,
        method: Method,
        hp: EditHparams,
        opts: EditOptions,
    ) -> Result<Self, Error> {
        hp.check_model(model.config())?;
        Ok(Editor {
            model,
            method,
            schedule: method.schedule(&hp),
            objective: method.objective(&hp)?,
            solvers: method.solvers(&hp)?,
            hp,
            opts,
        })
    }

    /// Replaces the residual schedule.
    pub fn with_schedule(mut self, schedule: Schedule) -> Self {
        self.schedule = schedule;
        self
    }

    /// Replaces the objective.
    pub fn with_objective(mut self, objective: Objective) -> Self {
        self.objective = objective;
        self
    }

    /// Adds a term to the objective.
    pub fn with_loss_term(mut self, term: impl LossTerm + 'static) -> Self {
        self.objective = std::mem::take(&mut self.objective).with(term);
        self
    }

    /// Replaces the solvers: one per edited layer, in the order of `hp.layers`.
    ///
    /// # Errors
    /// [`Error::Input`] if the count differs from the number of edited layers.
    pub fn with_solvers(mut self, solvers: Vec<Box<dyn UpdateSolver>>) -> Result<Self, Error> {
        if solvers.len() != self.hp.layers.len() {
            return Err(Error::Input(format!(
                "{} solvers for {} edited layers {:?}",
                solvers.len(),
                self.hp.layers.len(),
                self.hp.layers
            )));
        }
        self.solvers = solvers;
        Ok(self)
    }

    /// Replaces the options.
    pub fn with_options(mut self, opts: EditOptions) -> Self {
        self.opts = opts;
        self
    }

    /// Sets the options of later edits (e.g. a run directory per batch).
    pub fn set_options(&mut self, opts: EditOptions) {
        self.opts = opts;
    }

    /// The schedule.
    pub fn schedule(&self) -> Schedule {
        self.schedule
    }

    /// The objective.
    pub fn objective(&self) -> &Objective {
        &self.objective
    }

    /// The solvers, one per edited layer.
    pub fn solvers(&self) -> &[Box<dyn UpdateSolver>] {
        &self.solvers
    }

    /// The hyperparameters.
    pub fn hparams(&self) -> &EditHparams {
        &self.hp
    }

    /// The model (for example to evaluate it between sequential batches).
    pub fn model(&self) -> &M {
        self.model
    }

    /// Edit all facts at once and apply the updates to the model (it stays edited; use
    /// `EditableLm::restore` to undo). Called again, the editor edits the already edited model
    /// and its solvers remember earlier batches (AlphaEdit's `K_p`), which is sequential
    /// editing.
    ///
    /// # Errors
    /// [`Error::Optim`] for invalid facts or a failed optimization (naming the fact);
    /// [`Error::Solve`] for a failed solve; model, statistics and I/O errors.
    pub fn edit(&mut self, facts: &[Fact]) -> Result<EditOutcome, Error> {
        validate_facts(facts)?;
        let mut timings = Vec::new();
        let mut t = Instant::now();
        let mut lap = |name: &str, t: &mut Instant| {
            timings.push((name.to_string(), t.elapsed().as_secs_f64()));
            *t = Instant::now();
        };
        let l_r = *self.hp.layers.last().expect("checked non-empty");
        let cache_dir = self
            .opts
            .cache_dir
            .clone()
            .or_else(eamet_hooks::paths::cache_dir)
            .ok_or_else(|| Error::Input("no cache directory: set EAMET_HOME".into()))?;
        let prepared = self.prepare(facts)?;
        lap("prefixes", &mut t);
        let keys = compute_keys(&*self.model, &prepared, l_r)?;
        lap("keys", &mut t);
        let residuals = self.optimize(&prepared, &keys, l_r)?;
        lap("residuals", &mut t);
        let (stats, stats_cached, stats_corpus) = self.key_stats(&cache_dir)?;
        lap("statistics", &mut t);
        let (deltas, solves) = self.write_layers(&prepared, &residuals, &stats, l_r)?;
        lap("solve", &mut t);
        // What the solve wrote, in the space the residuals were optimized in: the block output's
        // change, or for a post-FFN-normed model (one layer, `check_spread`) the W_out output's
        // change `Δ k`, since its block output moves by a normalized vector instead.
        let written = if self.model.config().sandwich_norms {
            let (_, delta) = deltas.last().expect("one delta per layer");
            keys.dot(&delta.t())
        } else {
            bare_outputs(&*self.model, &prepared, l_r)? - &residuals.h
        };
        let score = report_misalignment(&keys, &residuals.deltas)?;
        let written_score = report_misalignment(&keys, &written)?;
        lap("misalignment", &mut t);
        Ok(EditOutcome {
            method: self.method,
            schedule: self.schedule,
            objective: self.objective.describe(),
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
            stats_corpus,
        })
    }

    /// Context prefixes (sampled once, kept in the run directory) and tokenized facts.
    fn prepare(&self, facts: &[Fact]) -> Result<Vec<PreparedFact>, Error> {
        let model = &*self.model;
        let spec = &self.hp.prefixes;
        let prefixes = match &self.opts.run_dir {
            Some(dir) => {
                std::fs::create_dir_all(dir)
                    .map_err(|e| Error::Input(format!("{}: {e}", dir.display())))?;
                ContextPrefixes::load_or_generate(model, spec, &dir.join("prefixes.json"))?
            }
            None => ContextPrefixes::generate(model, spec)?,
        };
        Ok(prepare_facts(model.tokenizer(), facts, &prefixes)?)
    }

    /// The residual of every fact, with the editor's schedule and objective.
    fn optimize(
        &self,
        prepared: &[PreparedFact],
        keys: &Array2<f32>,
        l_r: usize,
    ) -> Result<Residuals, Error> {
        let checked = self.hp.residual.check()?;
        Ok(optimize_residuals(
            &*self.model,
            prepared,
            keys.view(),
            l_r,
            &checked,
            self.schedule,
            &RunOptions {
                run_dir: self.opts.run_dir.as_deref(),
                progress: self.opts.progress,
                objective: Some(&self.objective),
                ..Default::default()
            },
        )?)
    }

    /// Key statistics of every edited layer (cached on disk).
    fn key_stats(
        &self,
        cache_dir: &std::path::Path,
    ) -> Result<(Vec<eamet_solve::KeyStats>, Vec<bool>, String), Error> {
        let hp = &self.hp;
        let model = &*self.model;
        let corpus = match &self.opts.corpus {
            Some(c) => c.take(hp.mom2_n_samples),
            None => generated_corpus(
                model,
                hp.mom2_n_samples,
                hp.mom2_max_tokens,
                cache_dir,
                self.opts.progress,
            )?,
        };
        let stats_cfg = StatsConfig {
            max_tokens: hp.mom2_max_tokens,
            batch_size: 16,
            progress: self.opts.progress,
        };
        let (stats, cached) = load_or_collect(model, &corpus, &hp.layers, &stats_cfg, cache_dir)?;
        let what = format!(
            "{}: {} documents, ≤ {} tokens each (sha256 {})",
            corpus.id,
            corpus.docs.len(),
            hp.mom2_max_tokens,
            corpus.hash
        );
        Ok((stats, cached, what))
    }

    /// For each edited layer in order: current keys, the remaining residual spread over the
    /// layers left, the layer's solver, `W_out += Δ`. Then the solvers that ask for them get
    /// the batch's keys on the edited model.
    fn write_layers(
        &mut self,
        prepared: &[PreparedFact],
        residuals: &Residuals,
        stats: &[eamet_solve::KeyStats],
        l_r: usize,
    ) -> Result<(LayerDeltas, Vec<String>), Error> {
        let z = residuals.targets();
        let layers = self.hp.layers.clone();
        let mut deltas = Vec::with_capacity(layers.len());
        let mut solves = Vec::with_capacity(layers.len());
        for (idx, &layer) in layers.iter().enumerate() {
            let k = compute_keys(&*self.model, prepared, layer)?;
            let cur = bare_outputs(&*self.model, prepared, l_r)?;
            let remaining = (layers.len() - idx) as f32;
            let r = (&z - &cur) / remaining;
            let update = self.solvers[idx].solve(
                k.mapv(f64::from).view(),
                r.mapv(f64::from).view(),
                &stats[idx],
            )?;
            solves.push(format!("layer {layer}: {}", update.diagnostics));
            let delta = update.delta.mapv(|x| x as f32);
            self.model.apply_delta(layer, &to_tensor(&delta))?;
            deltas.push((layer, delta));
        }
        for (idx, &layer) in layers.iter().enumerate() {
            if self.solvers[idx].wants_edited_keys() {
                let k = compute_keys(&*self.model, prepared, layer)?;
                self.solvers[idx].after_batch(k.mapv(f64::from).view())?;
            }
        }
        Ok((deltas, solves))
    }
}

#[cfg(test)]
mod written_fit_tests {
    use super::*;
    use ndarray::array;

    #[test]
    fn share_and_cosine_of_hand_made_rows() {
        let deltas = array![[3.0_f32, 4.0], [1.0, 0.0], [2.0, 0.0], [0.0, 0.0]];
        // Half of δ; orthogonal to δ; δ plus an orthogonal part; anything against δ = 0.
        let written = array![[1.5_f32, 2.0], [0.0, 5.0], [2.0, 2.0], [1.0, 1.0]];
        let fit = written_fit(written.view(), deltas.view()).unwrap();
        let expect = [
            (5.0, 0.5, 1.0),
            (1.0, 0.0, 0.0),
            (2.0, 1.0, std::f64::consts::FRAC_1_SQRT_2),
            (0.0, 0.0, 0.0),
        ];
        for (f, (norm, share, cosine)) in fit.iter().zip(expect) {
            assert!((f.norm - norm).abs() < 1e-12, "{f:?}");
            assert!((f.share - share).abs() < 1e-12, "{f:?}");
            assert!((f.cosine - cosine).abs() < 1e-12, "{f:?}");
        }
        // Nothing written: share and cosine 0; written exactly: both 1.
        let none = written_fit(
            Array2::zeros((1, 2)).view(),
            deltas.slice(ndarray::s![..1, ..]),
        )
        .unwrap();
        assert_eq!((none[0].share, none[0].cosine), (0.0, 0.0));
        let all = written_fit(deltas.view(), deltas.view()).unwrap();
        assert!(all[..3]
            .iter()
            .all(|f| (f.share - 1.0).abs() < 1e-12 && (f.cosine - 1.0).abs() < 1e-12));
        let e = written_fit(written.view(), deltas.slice(ndarray::s![..2, ..])).unwrap_err();
        assert!(e.to_string().contains("one row per fact"), "{e}");
        let mut nan = written.clone();
        nan[[2, 1]] = f32::NAN;
        let e = written_fit(nan.view(), deltas.view()).unwrap_err();
        assert!(
            e.to_string().contains("fact 2 has a non-finite value"),
            "{e}"
        );
    }
}
