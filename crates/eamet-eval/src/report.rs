//! Evaluation reports (feature `metrics`): one JSON document with everything needed to
//! reproduce and audit a run (model hash, dataset slice, hyperparameters, seed, schedule,
//! timings, versions, every prompt's raw greedy generation before and after), a markdown table,
//! and plots.

use crate::drift::DriftSummary;
use crate::metrics::{
    robustness_metric, summarize, EvalConfig, PrefixedScope, PromptKind, RecordEval, METRICS,
};
use crate::plot;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// Where the numbers came from.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RunInfo {
    /// `eamet-eval` version that wrote the report.
    pub tool_version: String,
    /// When (RFC 3339, UTC).
    pub created: String,
    /// The exact command line, if run from the CLI.
    pub command: Option<String>,
    /// Model file or directory.
    pub model: String,
    /// SHA-256 of the model's weights.
    pub model_sha256: String,
    /// Dataset file.
    pub dataset: String,
    /// Dataset format name.
    pub dataset_format: String,
    /// Index of the first record used.
    pub offset: usize,
    /// Number of records used.
    pub n: usize,
    /// Editing method.
    pub method: String,
    /// Hyperparameters of the edit, as given to the editor.
    pub hparams: serde_json::Value,
    /// Metric settings.
    pub eval_config: EvalConfig,
    /// Seed of the context prefixes.
    pub seed: u64,
    /// How edits and evaluation interleave, in words.
    pub schedule: String,
    /// libtorch version and threads, and similar facts about the machine.
    pub environment: BTreeMap<String, String>,
    /// The model's compute dtype (`f32`, `bf16`, `f16`); `f32` for reports written before the
    /// option existed.
    #[serde(default = "default_dtype")]
    pub dtype: String,
    /// The device the model ran on (`cpu`, `cuda:0`); `cpu` for older reports.
    #[serde(default = "default_device")]
    pub device: String,
    /// SHA-256 of the documents the context prefixes were cut from (each document's byte
    /// length, little-endian u64, then its bytes), so that `--pre-from` can refuse pre-edit
    /// results measured behind other prefixes; `None` for reports written before it was
    /// recorded.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prefix_docs_sha256: Option<String>,
    /// The documents the key statistics `C` were collected over: the corpus's identity (file
    /// names, or the generator's recipe) and the SHA-256 of its documents; `None` for reports
    /// written before it was recorded.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stats_corpus: Option<String>,
}

fn default_dtype() -> String {
    "f32".into()
}

fn default_device() -> String {
    "cpu".into()
}

/// Misalignment of the residuals of the edit (ALGORITHM.md §4).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MisalignmentInfo {
    /// The divergence, e.g. `"KL(P_r || P_k)"`.
    pub direction: String,
    /// The neighbourhood, e.g. `"j < i"`.
    pub neighbourhood: String,
    /// Σ A(i) of the optimized residuals `δ_i`.
    pub total_optimized: f64,
    /// Σ A(i) of the residuals the solve wrote.
    pub total_written: f64,
    /// Per fact, optimized residuals.
    pub per_fact_optimized: Vec<f64>,
    /// Per fact, written residuals.
    pub per_fact_written: Vec<f64>,
}

/// Metric means after a number of edits (the "evaluate after each batch" schedule).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Checkpoint {
    /// Edits written so far.
    pub edits: usize,
    /// Metric → (mean, records) over the records edited so far.
    pub summary: BTreeMap<String, (f64, usize)>,
}

/// How much of one optimized residual `δ` an edit wrote (`w`: what the edit moved, in the
/// space `δ` was optimized in).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct WrittenFit {
    /// `‖δ‖`.
    pub norm: f64,
    /// `⟨w, δ⟩ / ‖δ‖²`: the share of `δ` written along `δ` (1: all of it; the normal equation
    /// writes less, trading it against the preserved keys; 0 for `δ = 0`).
    pub share: f64,
    /// `cos(w, δ)` (0 when either is zero): whether what was written points where `δ` does.
    pub cosine: f64,
}

impl WrittenFit {
    /// Means of `‖δ‖`, the share and the cosine over `fits` (`None` when empty).
    pub fn mean(fits: &[WrittenFit]) -> Option<WrittenFit> {
        let n = fits.len() as f64;
        (!fits.is_empty()).then(|| WrittenFit {
            norm: fits.iter().map(|f| f.norm).sum::<f64>() / n,
            share: fits.iter().map(|f| f.share).sum::<f64>() / n,
            cosine: fits.iter().map(|f| f.cosine).sum::<f64>() / n,
        })
    }
}

/// A whole evaluation run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Report {
    /// Provenance.
    pub info: RunInfo,
    /// Seconds per phase.
    pub timings: Vec<(String, f64)>,
    /// Misalignment, when the method optimized residuals.
    pub misalignment: Option<MisalignmentInfo>,
    /// Per-record final residual NLL of the optimizer, if known.
    pub residual_nll: Vec<f64>,
    /// Metric means on the unedited model.
    pub pre: BTreeMap<String, (f64, usize)>,
    /// Metric means on the edited model.
    pub post: BTreeMap<String, (f64, usize)>,
    /// Checkpoints of a batched schedule (empty when everything was edited at once).
    pub checkpoints: Vec<Checkpoint>,
    /// Neighbourhood drift over all neighbourhood and locality prompts (mean and 95th
    /// percentile), when measured.
    #[serde(default)]
    pub drift: Option<DriftSummary>,
    /// Records (indices into `records`) that ran the fluency and robustness suites, when those
    /// ran on a sample ([`EvalConfig::extra_sample`]); `None`: every record.
    #[serde(default)]
    pub extra_records: Option<Vec<usize>>,
    /// The solver's diagnostics, one line per edited layer (and per batch of a batched
    /// schedule): condition estimate, relative residual of the solved system, AlphaEdit's
    /// null-space dimension, warnings. Empty in reports written before it existed.
    #[serde(default)]
    pub solves: Vec<String>,
    /// Per edited fact, in editing order: how much of its optimized residual the edit wrote.
    /// Empty in reports written before it existed.
    #[serde(default)]
    pub written_fit: Vec<WrittenFit>,
    /// Per record: pre and post results with every prompt's raw generation.
    pub records: Vec<(RecordEval, RecordEval)>,
}

impl Report {
    /// Assemble a report from per-record results (`pre[i]` and `post[i]` are the same record).
    pub fn new(
        info: RunInfo,
        pre: Vec<RecordEval>,
        post: Vec<RecordEval>,
        timings: Vec<(String, f64)>,
    ) -> Self {
        Report {
            drift: DriftSummary::of(&post),
            pre: summarize(&pre),
            post: summarize(&post),
            records: pre.into_iter().zip(post).collect(),
            info,
            timings,
            misalignment: None,
            residual_nll: Vec::new(),
            checkpoints: Vec::new(),
            extra_records: None,
            solves: Vec::new(),
            written_fit: Vec::new(),
        }
    }

    fn metric_rows(&self) -> Vec<(String, String)> {
        let mut rows: Vec<(String, String)> = METRICS
            .iter()
            .map(|(k, l)| (k.to_string(), l.to_string()))
            .collect();
        for &n in &self.info.eval_config.robustness_lens {
            rows.push((
                robustness_metric(n),
                format!("robustness: strict efficacy, {n}-token prefixes"),
            ));
        }
        rows.retain(|(k, _)| self.pre.contains_key(k) || self.post.contains_key(k));
        rows
    }

    /// The markdown summary: provenance, the metric table (pre, post, change), misalignment and
    /// timings.
    pub fn to_markdown(&self) -> String {
        let i = &self.info;
        let mut s = String::new();
        s.push_str(&format!(
            "# {} on {} records of {}\n\n",
            i.method, i.n, i.dataset
        ));
        s.push_str(&format!(
            "- model: `{}` (sha256 `{}`)\n- dataset: `{}` ({}), records {}..{}\n- schedule: {}\n- seed: {}\n- written: {} by eamet-eval {}\n",
            i.model,
            &i.model_sha256,
            i.dataset,
            i.dataset_format,
            i.offset,
            i.offset + i.n,
            i.schedule,
            i.seed,
            i.created,
            i.tool_version
        ));
        s.push_str(&format!("- compute: {} on {}\n", i.dtype, i.device));
        if let Some(c) = &i.stats_corpus {
            s.push_str(&format!("- key statistics over: {c}\n"));
        }
        if let Some(c) = &i.command {
            s.push_str(&format!("- command: `{c}`\n"));
        }
        if let Some(x) = &self.extra_records {
            let suites = match i.eval_config.prefixed_scope {
                PrefixedScope::Sample if i.eval_config.prefixed_len.is_some() => {
                    "fluency, robustness and the prefixed prompts"
                }
                _ => "fluency and robustness",
            };
            s.push_str(&format!(
                "- {suites}: on a seeded sample of {} of the {} records (seed {}; indices in report.json `extra_records`)\n",
                x.len(),
                i.n,
                i.eval_config.extra_seed
            ));
        }
        s.push_str("\nStrict = greedy decoding emits exactly the object first (every object token is the argmax under teacher forcing). Lenient = the 10-token greedy continuation contains the object at a word boundary.\n\n");
        s.push_str("| metric | pre-edit | post-edit | change | records |\n|---|---|---|---|---|\n");
        for (k, label) in self.metric_rows() {
            let pre = self.pre.get(&k).map(|v| v.0);
            let post = self.post.get(&k).map(|v| v.0);
            let n = self.post.get(&k).or(self.pre.get(&k)).map_or(0, |v| v.1);
            let f = |x: Option<f64>| x.map_or("-".to_string(), |x| format!("{x:.3}"));
            let d = match (pre, post) {
                (Some(a), Some(b)) => format!("{:+.3}", b - a),
                _ => "-".into(),
            };
            s.push_str(&format!(
                "| {label} | {} | {} | {d} | {n} |\n",
                f(pre),
                f(post)
            ));
        }
        if let Some(d) = &self.drift {
            let drawdown = match (d.drawdown_mean, d.drawdown_p95) {
                (Some(m), Some(p)) => format!(
                    "drawdown of the pre-edit greedy continuation ({} prompts) mean {m:+.4} nats/token, 95th percentile {p:+.4}",
                    d.drawdown_prompts
                ),
                _ => "no drawdown (every pre-edit continuation was empty)".to_string(),
            };
            s.push_str(&format!(
                "\nNeighbourhood drift over {} prompts: KL(p_pre ‖ p_post) of the next token mean {:.4} nats, 95th percentile {:.4}; {drawdown}.\n",
                d.prompts, d.kl_mean, d.kl_p95
            ));
        }
        if let Some(m) = &self.misalignment {
            s.push_str(&format!(
                "\nMisalignment {} over {}: optimized residuals Σ A(i) = {:.3}, written residuals Σ A(i) = {:.3}.\n",
                m.direction, m.neighbourhood, m.total_optimized, m.total_written
            ));
        }
        if let Some(f) = WrittenFit::mean(&self.written_fit) {
            s.push_str(&format!(
                "\nWritten residuals, mean over {} facts: share of δ written ⟨w, δ⟩/‖δ‖² = {:.3}, cos(w, δ) = {:.3}, ‖δ‖ = {:.2}.\n",
                self.written_fit.len(), f.share, f.cosine, f.norm
            ));
        }
        if !self.checkpoints.is_empty() {
            s.push_str("\n| edits | strict efficacy | strict generalization | strict specificity |\n|---|---|---|---|\n");
            for c in &self.checkpoints {
                let g = |k: &str| {
                    c.summary
                        .get(k)
                        .map_or("-".to_string(), |v| format!("{:.3}", v.0))
                };
                s.push_str(&format!(
                    "| {} | {} | {} | {} |\n",
                    c.edits,
                    g("strict.efficacy"),
                    g("strict.generalization"),
                    g("strict.specificity")
                ));
            }
        }
        if !self.solves.is_empty() {
            s.push_str("\nSolves:\n\n");
            for line in &self.solves {
                s.push_str(&format!("- `{line}`\n"));
            }
        }
        if !self.timings.is_empty() {
            s.push_str("\n| phase | seconds |\n|---|---|\n");
            for (k, v) in &self.timings {
                s.push_str(&format!("| {k} | {v:.1} |\n"));
            }
        }
        s
    }

    /// Checks that every number the report carries is finite (JSON would write NaN and
    /// infinity as `null`, hiding the failure).
    ///
    /// # Errors
    /// [`ReportError::NonFinite`] naming the first bad value: the metric and the record (or the
    /// summary, checkpoint, timing or fact) it belongs to.
    pub fn check_finite(&self) -> Result<(), ReportError> {
        let bad = |what: String, value: f64| ReportError::NonFinite { what, value };
        let check = |what: &dyn Fn() -> String, v: f64| {
            if v.is_finite() {
                Ok(())
            } else {
                Err(bad(what(), v))
            }
        };
        for (side, summary) in [("pre", &self.pre), ("post", &self.post)] {
            for (k, (v, _)) in summary {
                check(&|| format!("metric {k} ({side}-edit summary)"), *v)?;
            }
        }
        for (i, (pre, post)) in self.records.iter().enumerate() {
            for (side, r) in [("pre", pre), ("post", post)] {
                let who = || r.case_id.clone().unwrap_or_else(|| r.subject.clone());
                for (k, v) in &r.metrics {
                    check(
                        &|| format!("metric {k} of record {i} ({}, {side}-edit)", who()),
                        *v,
                    )?;
                }
                for (j, p) in r.prompts.iter().enumerate() {
                    for (name, v) in [("kl", p.kl), ("drawdown", p.drawdown)] {
                        if let Some(v) = v {
                            check(
                                &|| {
                                    format!(
                                        "{name} of prompt {j} of record {i} ({}, {side}-edit)",
                                        who()
                                    )
                                },
                                v,
                            )?;
                        }
                    }
                }
            }
        }
        for c in &self.checkpoints {
            for (k, (v, _)) in &c.summary {
                check(
                    &|| format!("metric {k} (checkpoint after {} edits)", c.edits),
                    *v,
                )?;
            }
        }
        for (k, v) in &self.timings {
            check(&|| format!("timing {k}"), *v)?;
        }
        for (i, v) in self.residual_nll.iter().enumerate() {
            check(&|| format!("final residual NLL of fact {i}"), *v)?;
        }
        for (i, f) in self.written_fit.iter().enumerate() {
            for (what, v) in [("‖δ‖", f.norm), ("share", f.share), ("cosine", f.cosine)] {
                check(&|| format!("written residual {what} of fact {i}"), v)?;
            }
        }
        if let Some(m) = &self.misalignment {
            check(
                &|| "misalignment total (optimized)".into(),
                m.total_optimized,
            )?;
            check(&|| "misalignment total (written)".into(), m.total_written)?;
            for (i, v) in m.per_fact_optimized.iter().enumerate() {
                check(&|| format!("misalignment A({i}) (optimized)"), *v)?;
            }
            for (i, v) in m.per_fact_written.iter().enumerate() {
                check(&|| format!("misalignment A({i}) (written)"), *v)?;
            }
        }
        if let Some(d) = &self.drift {
            check(&|| "neighbourhood KL mean".into(), d.kl_mean)?;
            check(&|| "neighbourhood KL p95".into(), d.kl_p95)?;
            for (name, v) in [("mean", d.drawdown_mean), ("p95", d.drawdown_p95)] {
                if let Some(v) = v {
                    check(&|| format!("drawdown {name}"), v)?;
                }
            }
        }
        Ok(())
    }

    /// Writes `report.json`, `report.md` and the plots into `dir` (created if needed); every
    /// file is written to a temporary name and renamed. Returns the paths written.
    ///
    /// # Errors
    /// [`ReportError::NonFinite`] before anything is written when a number is NaN or infinite
    /// ([`check_finite`](Self::check_finite)); I/O errors, naming the file.
    pub fn write(&self, dir: &Path) -> Result<Vec<PathBuf>, ReportError> {
        self.check_finite()?;
        std::fs::create_dir_all(dir).map_err(|e| ReportError::Io(dir.to_path_buf(), e))?;
        let mut written = Vec::new();
        let json = serde_json::to_string_pretty(self).map_err(ReportError::Json)?;
        written.push(write_atomic(&dir.join("report.json"), json.as_bytes())?);
        written.push(write_atomic(
            &dir.join("report.md"),
            self.to_markdown().as_bytes(),
        )?);
        if let Some(m) = &self.misalignment {
            if !m.per_fact_optimized.is_empty() {
                let paths = plot::misalignment_histogram(
                    &m.per_fact_optimized,
                    &m.per_fact_written,
                    ("optimized residuals", "written residuals"),
                    &format!("{}: per-fact misalignment A(i)", self.info.method),
                    dir,
                    "misalignment_histogram",
                    &plot::PlotStyle::default(),
                )
                .map_err(ReportError::Plot)?;
                written.extend([paths.svg, paths.png]);
                let pts: Vec<(f64, f64)> = m
                    .per_fact_optimized
                    .iter()
                    .zip(&self.records)
                    .filter_map(|(&a, (_, post))| {
                        post.metrics.get("strict.efficacy").map(|&s| (a, s))
                    })
                    .collect();
                if !pts.is_empty() {
                    let paths = plot::score_vs_success(
                        &pts,
                        ("A(i) of the optimized residual", "strict efficacy"),
                        &format!("{}: A(i) vs strict efficacy", self.info.method),
                        dir,
                        "misalignment_vs_success",
                        &plot::PlotStyle::default(),
                    )
                    .map_err(ReportError::Plot)?;
                    written.extend([paths.svg, paths.png]);
                }
            }
        }
        let specificity = || {
            self.records
                .iter()
                .flat_map(|(_, post)| &post.prompts)
                .filter(|p| matches!(p.kind, PromptKind::Neighbourhood | PromptKind::Locality))
        };
        let kl: Vec<f64> = specificity().filter_map(|p| p.kl).collect();
        if !kl.is_empty() {
            let paths = plot::histogram(
                &[("prompts", &kl)],
                "KL(p_pre || p_post) of the next token (nats)",
                "prompts",
                &format!("{}: neighbourhood KL per prompt", self.info.method),
                plot::AxisScale::Log1p,
                dir,
                "neighbourhood_kl",
                &plot::PlotStyle::default(),
            )
            .map_err(ReportError::Plot)?;
            written.extend([paths.svg, paths.png]);
        }
        let dd: Vec<f64> = specificity().filter_map(|p| p.drawdown).collect();
        if !dd.is_empty() {
            let paths = plot::histogram(
                &[("prompts", &dd)],
                "drawdown of the pre-edit continuation (nats/token)",
                "prompts",
                &format!("{}: neighbourhood drawdown per prompt", self.info.method),
                plot::AxisScale::Linear,
                dir,
                "neighbourhood_drawdown",
                &plot::PlotStyle::default(),
            )
            .map_err(ReportError::Plot)?;
            written.extend([paths.svg, paths.png]);
        }
        if self.checkpoints.len() > 1 {
            let series = vec![(
                self.info.method.clone(),
                self.checkpoints
                    .iter()
                    .filter_map(|c| c.summary.get("strict.efficacy").map(|v| (c.edits, v.0)))
                    .collect::<Vec<_>>(),
            )];
            let paths = plot::efficacy_vs_edits(
                &series,
                "strict efficacy",
                "strict efficacy vs number of edits",
                dir,
                "efficacy_vs_edits",
                &plot::PlotStyle::default(),
            )
            .map_err(ReportError::Plot)?;
            written.extend([paths.svg, paths.png]);
        }
        Ok(written)
    }
}

/// A report could not be written.
#[derive(Debug, thiserror::Error)]
pub enum ReportError {
    /// File system error.
    #[error("{0}: {1}")]
    Io(PathBuf, std::io::Error),
    /// Serialization error.
    #[error("report JSON: {0}")]
    Json(serde_json::Error),
    /// Plotting error.
    #[error("plot: {0}")]
    Plot(plot::PlotError),
    /// A number in the report is NaN or infinite.
    #[error("report: {what} is {value}, not a finite number")]
    NonFinite {
        /// Which value (metric and record, or summary, timing, fact).
        what: String,
        /// The value.
        value: f64,
    },
}

/// Writes `bytes` to `path` atomically: a temporary file beside it, then a rename, so a reader
/// (or a resumed run) never sees a half-written file. Returns `path`.
///
/// # Errors
/// [`ReportError::Io`] naming the file that could not be written or renamed.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<PathBuf, ReportError> {
    crate::atomic::write_files(&[(path, bytes)]).map_err(|(p, e)| ReportError::Io(p, e))?;
    Ok(path.to_path_buf())
}
