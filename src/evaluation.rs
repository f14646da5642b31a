//! Edit-then-evaluate runs (ALGORITHM.md §7): the unedited model is evaluated first (the
//! "pre" row), then the records' edits are written (all at once, or in batches with an
//! evaluation after each), then everything is evaluated again, the model is restored, and a
//! [`Report`] is assembled.

use crate::editor::{EditHparams, EditOptions, Editor, Method};
use crate::Error;
use eamet_eval::data::EvalRecord;
use eamet_eval::drift::DriftReference;
use eamet_eval::metrics::{evaluate, ContextPrefixes, EvalConfig, RecordEval};
use eamet_eval::report::{Checkpoint, MisalignmentInfo, Report, RunInfo, WrittenFit};
use eamet_hooks::{Dtype, EditableLm};
use eamet_optim::Fact;
use serde::{Deserialize, Serialize};
use std::path::Path;
use std::time::Instant;

/// How edits and evaluations interleave.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EvalSchedule {
    /// Write every edit, then evaluate (the reference protocol).
    AllThenEvaluate,
    /// Write the edits in batches of this size; after each batch evaluate the records edited
    /// so far (a checkpoint), and evaluate all at the end.
    Batches(usize),
}

impl EvalSchedule {
    /// In words, for reports.
    pub fn describe(&self) -> String {
        match self {
            EvalSchedule::AllThenEvaluate => "all edits in one batch, then evaluate".into(),
            EvalSchedule::Batches(k) => format!(
                "edits in batches of {k} (each batch solved on the model edited by the earlier ones), evaluation of the records edited so far after each batch"
            ),
        }
    }
}

/// Everything an evaluation run needs besides the model and the records.
#[derive(Debug, Clone)]
pub struct EvalPlan {
    /// Editing method.
    pub method: Method,
    /// Its hyperparameters.
    pub hparams: EditHparams,
    /// Editor options (run directory, cache, corpus for statistics, progress).
    pub edit: EditOptions,
    /// Metric settings.
    pub eval: EvalConfig,
    /// Documents the context prefixes are cut from.
    pub prefix_docs: Vec<String>,
    /// Seed of the context prefixes.
    pub seed: u64,
    /// Edit schedule.
    pub schedule: EvalSchedule,
    /// Under [`EvalSchedule::Batches`], how many of the records edited so far each intermediate
    /// checkpoint evaluates: a seeded sample of this many (the plan's `seed`), so that a long
    /// sequential run's checkpoints cost a bounded time; `None` evaluates them all. The final
    /// evaluation always covers every record.
    pub checkpoint_sample: Option<usize>,
}

/// Number of context prefixes of each length (the reference: 10).
pub const PREFIXES_PER_LENGTH: usize = 10;

fn input<E: std::fmt::Display>(e: E) -> Error {
    Error::Input(e.to_string())
}

/// Evaluate `records` before and after editing `model` with their rewrites. The model is
/// restored before returning (also on error after the edit started, as far as possible).
/// `info` supplies provenance; its method, n, eval config, seed and schedule fields are filled
/// in here.
///
/// # Errors
/// Facts that do not validate (naming the record), editor and metric errors.
pub fn run_eval<M: EditableLm + ?Sized>(
    model: &mut M,
    records: &[EvalRecord],
    plan: &EvalPlan,
    info: RunInfo,
) -> Result<Report, Error> {
    run_eval_with_pre(model, records, plan, info, None)
}

/// As [`run_eval`], reusing pre-edit results of the same records (e.g. from an earlier report of
/// another method on the same model, slice, prefixes and metric settings: the caller checks
/// that) instead of evaluating the unedited model again.
///
/// # Errors
/// As [`run_eval`]; [`Error::Input`] when `pre` does not cover exactly these records.
pub fn run_eval_with_pre<M: EditableLm + ?Sized>(
    model: &mut M,
    records: &[EvalRecord],
    plan: &EvalPlan,
    mut info: RunInfo,
    pre: Option<Vec<RecordEval>>,
) -> Result<Report, Error> {
    if records.is_empty() {
        return Err(Error::Input("no records to evaluate".into()));
    }
    let mut timings = Vec::new();
    let mut t = Instant::now();
    let mut lap = |name: &str, t: &mut Instant| {
        timings.push((name.to_string(), t.elapsed().as_secs_f64()));
        *t = Instant::now();
    };
    let facts: Vec<Fact> = records.iter().map(|r| r.rewrite.to_fact()).collect();
    // Tokenize every fact now (bare template), so a subject without a last token of its own
    // stops the run before the pre-edit evaluation, not after it.
    eamet_optim::prepare_facts(
        model.tokenizer(),
        &facts,
        &eamet_optim::ContextPrefixes::from_prefixes::<&str>(&[]),
    )
    .map_err(input)?;
    // Likewise the hyperparameters against the model (depth, one layer on a post-FFN-norm
    // model): the editor checks them again, but only after the pre-edit evaluation.
    plan.hparams.check_model(model.config())?;

    let mut lens: Vec<usize> = plan.eval.robustness_lens.clone();
    if let Some(n) = plan.eval.prefixed_len {
        lens.push(n);
    }
    lens.sort_unstable();
    lens.dedup();
    let prefixes = if lens.is_empty() {
        ContextPrefixes::none()
    } else {
        ContextPrefixes::from_corpus(
            model.tokenizer(),
            &plan.prefix_docs,
            &lens,
            PREFIXES_PER_LENGTH,
            plan.seed,
        )
        .map_err(input)?
    };
    lap("context prefixes", &mut t);

    let pre = match pre {
        Some(p) => {
            let same = p.len() == records.len()
                && p.iter()
                    .zip(records)
                    .all(|(e, r)| e.case_id == r.rewrite.case_id && e.subject == r.rewrite.subject);
            if !same {
                return Err(Error::Input(
                    "the pre-edit results given are for other records".into(),
                ));
            }
            check_drift_pairs(&p, records)?;
            lap("evaluate (pre): reused", &mut t);
            p
        }
        None => {
            let cache = plan.edit.run_dir.as_ref().map(|d| d.join(PRE_CACHE_FILE));
            let key = PreCacheKey::new(&info.model_sha256, model.dtype(), plan, records);
            match cache.as_deref().and_then(|f| key.load(f)) {
                Some(p) => {
                    lap("evaluate (pre): resumed from the run directory", &mut t);
                    p
                }
                None => {
                    let p =
                        evaluate(&*model, records, &prefixes, &plan.eval, None).map_err(input)?;
                    if let Some(f) = &cache {
                        key.save(f, &p)?;
                    }
                    lap("evaluate (pre)", &mut t);
                    p
                }
            }
        }
    };

    // The unedited model's side of the neighbourhood drift (KL, drawdown).
    let reference = DriftReference::new(
        &*model,
        &pre,
        plan.eval.lenient_tokens,
        plan.eval.batch_size,
    )
    .map_err(input)?;
    lap("drift reference (pre)", &mut t);

    let result = edit_and_evaluate(model, records, &facts, plan, &prefixes, &pre, &reference);
    model.restore();
    let parts = result?;
    timings.extend(parts.timings);

    info.method = method_name(plan.method).into();
    info.n = records.len();
    info.eval_config = plan.eval.clone();
    info.seed = plan.seed;
    let sampled = match (plan.schedule, plan.checkpoint_sample) {
        (EvalSchedule::Batches(_), Some(k)) => {
            format!(" (checkpoints on a seeded sample of at most {k} of the edited records)")
        }
        _ => String::new(),
    };
    info.schedule = format!(
        "{}{sampled}; residuals: {}",
        plan.schedule.describe(),
        describe_residual_schedule(plan.method.schedule(&plan.hparams))
    );
    info.hparams = serde_json::to_value(&plan.hparams).map_err(input)?;
    info.stats_corpus = parts.stats_corpus.clone();
    let mut report = Report::new(info, pre, parts.post, timings);
    report.checkpoints = parts.checkpoints;
    let extra = eamet_eval::metrics::extra_sample(
        records.len(),
        plan.eval.extra_sample,
        plan.eval.extra_seed,
    );
    if extra.len() < records.len() {
        report.extra_records = Some(extra);
    }
    let (opt, written) = (parts.misalignment_optimized, parts.misalignment_written);
    report.misalignment = Some(MisalignmentInfo {
        direction: "KL(P_r || P_k)".into(),
        neighbourhood: "j < i (within each edit batch)".into(),
        total_optimized: opt.iter().sum(),
        total_written: written.iter().sum(),
        per_fact_optimized: opt,
        per_fact_written: written,
    });
    report.residual_nll = parts.residual_nll;
    report.written_fit = parts.written_fit;
    report.solves = parts.solves;
    Ok(report)
}

/// File in the run directory that keeps the pre-edit results, so a resumed run skips them.
pub const PRE_CACHE_FILE: &str = "pre-eval.json";

/// What the pre-edit results depend on: a cache is reused only when all of it matches.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct PreCacheKey {
    model_sha256: String,
    /// The compute dtype; absent (f32) in caches written before it existed, and not written
    /// for f32, so those caches stay valid.
    #[serde(default, skip_serializing_if = "is_f32")]
    dtype: Dtype,
    seed: u64,
    eval: EvalConfig,
    prefix_docs_sha256: String,
    records_sha256: String,
    records: usize,
}

#[derive(Serialize, Deserialize)]
struct PreCache {
    key: PreCacheKey,
    pre: Vec<RecordEval>,
}

fn is_f32(d: &Dtype) -> bool {
    *d == Dtype::F32
}

/// SHA-256 (hex) of the documents context prefixes are cut from: each document's byte length
/// (little-endian u64), then its bytes. Recorded in reports
/// ([`RunInfo::prefix_docs_sha256`](crate::eval::report::RunInfo::prefix_docs_sha256)).
pub fn prefix_docs_sha256(docs: &[String]) -> String {
    use sha2::{Digest, Sha256};
    let mut h = Sha256::new();
    for d in docs {
        h.update((d.len() as u64).to_le_bytes());
        h.update(d.as_bytes());
    }
    format!("{:x}", h.finalize())
}

impl PreCacheKey {
    fn new(model_sha256: &str, dtype: Dtype, plan: &EvalPlan, records: &[EvalRecord]) -> Self {
        use sha2::{Digest, Sha256};
        let prefix_docs_sha256 = prefix_docs_sha256(&plan.prefix_docs);
        // Every field of every record (prompts, targets, probes) counts.
        let records_sha256 = format!("{:x}", Sha256::digest(format!("{records:?}").as_bytes()));
        let mut eval = plan.eval.clone();
        eval.progress = false;
        Self {
            model_sha256: model_sha256.to_string(),
            dtype,
            seed: plan.seed,
            eval,
            prefix_docs_sha256,
            records_sha256,
            records: records.len(),
        }
    }

    /// The cached results when `file` holds results for exactly this key; `None` otherwise
    /// (absent, unreadable or stale: the caller evaluates again and overwrites it).
    fn load(&self, file: &Path) -> Option<Vec<RecordEval>> {
        let text = std::fs::read_to_string(file).ok()?;
        let cache: PreCache = serde_json::from_str(&text).ok()?;
        (cache.key == *self && cache.pre.len() == self.records).then_some(cache.pre)
    }

    fn save(&self, file: &Path, pre: &[RecordEval]) -> Result<(), Error> {
        if let Some(dir) = file.parent() {
            std::fs::create_dir_all(dir)
                .map_err(|e| eamet_eval::report::ReportError::Io(dir.to_path_buf(), e))?;
        }
        let cache = PreCache {
            key: self.clone(),
            pre: pre.to_vec(),
        };
        let json = serde_json::to_vec(&cache).map_err(input)?;
        eamet_eval::report::write_atomic(file, &json)?;
        Ok(())
    }
}

/// Drift pairs the pre- and post-edit neighbourhood and locality prompts by position: given
/// pre-edit results must hold exactly these records' prompts, text for text, in order.
fn check_drift_pairs(pre: &[RecordEval], records: &[EvalRecord]) -> Result<(), Error> {
    use eamet_eval::metrics::PromptKind;
    for (i, (e, r)) in pre.iter().zip(records).enumerate() {
        let want = eamet_eval::metrics::unrelated_prompts(r)
            .into_iter()
            .map(|(kind, prompt, _)| (kind, prompt));
        let have = e
            .prompts
            .iter()
            .filter(|p| matches!(p.kind, PromptKind::Neighbourhood | PromptKind::Locality))
            .map(|p| (p.kind, p.prompt.clone()));
        let (want, have): (Vec<_>, Vec<_>) = (want.collect(), have.collect());
        if want != have {
            let k = want
                .iter()
                .zip(&have)
                .position(|(a, b)| a != b)
                .unwrap_or(want.len().min(have.len()));
            let show = |v: &[(PromptKind, String)]| {
                v.get(k)
                    .map_or("nothing".to_string(), |(kind, t)| format!("{kind:?} {t:?}"))
            };
            return Err(Error::Input(format!(
                "the pre-edit results do not pair with record {i} ({}): its neighbourhood/locality prompt {k} is {}, the pre-edit results have {}",
                r.rewrite.case_id.as_deref().unwrap_or(&r.rewrite.subject),
                show(&want),
                show(&have)
            )));
        }
    }
    Ok(())
}

/// The method's name as the CLI spells it.
pub fn method_name(m: Method) -> &'static str {
    m.name()
}

/// A residual schedule in words, for reports.
pub fn describe_residual_schedule(s: eamet_optim::Schedule) -> String {
    use eamet_optim::Schedule;
    match s.normalized() {
        Schedule::Batched { batch: 1 } => "independent, one fact at a time".into(),
        Schedule::Batched { batch } => {
            format!("independent, batches of {batch} facts (continuous batching)")
        }
        Schedule::Blocked { block: 1 } => "sequential (aligned), one fact at a time".into(),
        Schedule::Blocked { block } => format!("aligned, blocks of {block} facts"),
        other => format!("{other:?}"),
    }
}

/// What editing and evaluating the records produced, besides the pre-edit results.
struct Parts {
    post: Vec<RecordEval>,
    /// Per fact: A(i) of the optimized and of the written residuals, the final residual NLL
    /// and how much of each residual was written.
    misalignment_optimized: Vec<f64>,
    misalignment_written: Vec<f64>,
    residual_nll: Vec<f64>,
    written_fit: Vec<WrittenFit>,
    /// What the key statistics were collected over (the same for every batch).
    stats_corpus: Option<String>,
    checkpoints: Vec<Checkpoint>,
    timings: Vec<(String, f64)>,
    solves: Vec<String>,
}

fn edit_and_evaluate<M: EditableLm + ?Sized>(
    model: &mut M,
    records: &[EvalRecord],
    facts: &[Fact],
    plan: &EvalPlan,
    prefixes: &ContextPrefixes,
    pre: &[RecordEval],
    reference: &DriftReference,
) -> Result<Parts, Error> {
    let batch = match plan.schedule {
        EvalSchedule::AllThenEvaluate => facts.len(),
        EvalSchedule::Batches(k) if k > 0 => k,
        EvalSchedule::Batches(_) => {
            return Err(Error::Input("batch size must be at least 1".into()))
        }
    };
    let mut timings: Vec<(String, f64)> = Vec::new();
    let (mut opt, mut written, mut nll) = (Vec::new(), Vec::new(), Vec::new());
    let mut fit = Vec::new();
    let mut stats_corpus = None;
    let mut checkpoints = Vec::new();
    let mut solves = Vec::new();
    let n_batches = facts.len().div_ceil(batch);
    // One editor for all batches: its solvers carry what they learn (AlphaEdit's K_p).
    let mut editor = Editor::new(
        &mut *model,
        plan.method,
        plan.hparams.clone(),
        plan.edit.clone(),
    )?;
    for (b, chunk) in facts.chunks(batch).enumerate() {
        let mut opts = plan.edit.clone();
        if let Some(dir) = &plan.edit.run_dir {
            if n_batches > 1 {
                opts.run_dir = Some(dir.join(format!("batch-{b:04}")));
            }
        }
        editor.set_options(opts);
        let out = editor.edit(chunk)?;
        for (name, s) in &out.timings {
            match timings
                .iter_mut()
                .find(|(n, _)| n == &format!("edit: {name}"))
            {
                Some(e) => e.1 += s,
                None => timings.push((format!("edit: {name}"), *s)),
            }
        }
        solves.extend(out.solves.iter().map(|d| {
            if n_batches > 1 {
                format!("batch {b}: {d}")
            } else {
                d.clone()
            }
        }));
        opt.extend(out.misalignment.iter().copied());
        written.extend(out.written_misalignment.iter().copied());
        nll.extend(out.residuals.stats.iter().map(|s| s.final_nll));
        fit.extend(out.written_fit()?);
        stats_corpus.get_or_insert_with(|| out.stats_corpus.clone());
        if n_batches > 1 && b + 1 < n_batches {
            let t = Instant::now();
            let end = ((b + 1) * batch).min(facts.len());
            let (recs, pres) = checkpoint_records(records, pre, end, plan);
            let post = evaluate(editor.model(), &recs, prefixes, &plan.eval, Some(&pres))
                .map_err(input)?;
            checkpoints.push(Checkpoint {
                edits: end,
                summary: eamet_eval::metrics::summarize(&post),
            });
            match timings
                .iter_mut()
                .find(|(n, _)| n == "evaluate (checkpoints)")
            {
                Some(e) => e.1 += t.elapsed().as_secs_f64(),
                None => timings.push(("evaluate (checkpoints)".into(), t.elapsed().as_secs_f64())),
            }
        }
    }
    drop(editor);
    let t = Instant::now();
    let mut post = evaluate(&*model, records, prefixes, &plan.eval, Some(pre)).map_err(input)?;
    timings.push(("evaluate (post)".into(), t.elapsed().as_secs_f64()));
    let t = Instant::now();
    let drift = reference.measure(&*model).map_err(input)?;
    reference.annotate(&mut post, &drift).map_err(input)?;
    timings.push(("drift (post)".into(), t.elapsed().as_secs_f64()));
    if n_batches > 1 {
        checkpoints.push(Checkpoint {
            edits: facts.len(),
            summary: eamet_eval::metrics::summarize(&post),
        });
    }
    Ok(Parts {
        post,
        misalignment_optimized: opt,
        misalignment_written: written,
        residual_nll: nll,
        written_fit: fit,
        stats_corpus,
        checkpoints,
        timings,
        solves,
    })
}

/// The records (and their pre-edit results) an intermediate checkpoint after `end` edits
/// evaluates: all of `records[..end]`, or the plan's seeded sample of them.
fn checkpoint_records(
    records: &[EvalRecord],
    pre: &[RecordEval],
    end: usize,
    plan: &EvalPlan,
) -> (Vec<EvalRecord>, Vec<RecordEval>) {
    let idx = eamet_eval::metrics::extra_sample(end, plan.checkpoint_sample, plan.seed);
    (
        idx.iter().map(|&i| records[i].clone()).collect(),
        idx.iter().map(|&i| pre[i].clone()).collect(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use eamet_eval::data::{load_str, LoadOptions};

    const RECORDS: &str = r#"
{"subject": "Paris", "prompt": "{} is the capital of", "target_new": "Italy", "target_true": "France", "neighbourhood": [{"prompt": "Rome is the capital of", "target": "Italy"}]}
{"subject": "Danielle Darrieux", "prompt": "The mother tongue of {} is", "target_new": "English", "target_true": "French"}
"#;

    fn plan() -> EvalPlan {
        EvalPlan {
            method: Method::Eamet,
            hparams: EditHparams::default(),
            edit: EditOptions::default(),
            eval: EvalConfig::default(),
            prefix_docs: vec!["Some text.".into()],
            seed: 7,
            schedule: EvalSchedule::AllThenEvaluate,
            checkpoint_sample: None,
        }
    }

    /// A checkpoint evaluates the records edited so far, or a seeded sample of them (the same
    /// for the same seed, a sorted subset of `0..end`, each paired with its own pre-edit
    /// result).
    #[test]
    fn checkpoints_evaluate_the_edited_records_or_a_sample() {
        let records = load_str("r.jsonl", RECORDS, &LoadOptions::default())
            .unwrap()
            .into_edits()
            .unwrap();
        let records: Vec<EvalRecord> = (0..20).map(|i| records[i % 2].clone()).collect();
        let pre = pre(&records);
        let mut plan = plan();
        let (r, p) = checkpoint_records(&records, &pre, 12, &plan);
        assert_eq!((r.len(), p.len()), (12, 12));
        assert_eq!(p, pre[..12]);
        plan.checkpoint_sample = Some(5);
        let (r, p) = checkpoint_records(&records, &pre, 12, &plan);
        assert_eq!((r.len(), p.len()), (5, 5));
        let idx = eamet_eval::metrics::extra_sample(12, Some(5), plan.seed);
        assert!(idx.windows(2).all(|w| w[0] < w[1]) && idx.iter().all(|&i| i < 12));
        for (k, &i) in idx.iter().enumerate() {
            assert_eq!(p[k], pre[i]);
            assert_eq!(r[k], records[i]);
        }
        assert_eq!(checkpoint_records(&records, &pre, 12, &plan).1, p);
        // A sample at least as large as the records edited so far is all of them.
        plan.checkpoint_sample = Some(50);
        assert_eq!(checkpoint_records(&records, &pre, 12, &plan).1, pre[..12]);
    }

    fn pre(records: &[EvalRecord]) -> Vec<RecordEval> {
        records
            .iter()
            .enumerate()
            .map(|(i, r)| RecordEval {
                case_id: r.rewrite.case_id.clone(),
                subject: r.rewrite.subject.clone(),
                metrics: [("efficacy".to_string(), i as f64 * 0.5)].into(),
                prompts: Vec::new(),
            })
            .collect()
    }

    #[test]
    fn pre_results_must_pair_prompt_for_prompt() {
        use eamet_eval::metrics::{PromptKind, PromptResult};
        let records = load_str("r.jsonl", RECORDS, &LoadOptions::default())
            .unwrap()
            .into_edits()
            .unwrap();
        let prompt = |kind, text: &str| PromptResult {
            kind,
            prompt: text.into(),
            generation: String::new(),
            generation_ids: None,
            expected: None,
            competitor: None,
            kl: None,
            drawdown: None,
        };
        let mut p = pre(&records);
        p[0].prompts = vec![
            prompt(PromptKind::Rewrite, "Paris is the capital of"),
            prompt(PromptKind::Neighbourhood, "Rome is the capital of"),
        ];
        check_drift_pairs(&p, &records).unwrap();
        p[0].prompts[1].prompt = "Rome is the capital city of".into();
        let e = check_drift_pairs(&p, &records).unwrap_err().to_string();
        assert!(e.contains("record 0") && e.contains("capital city"), "{e}");
        p[0].prompts.pop();
        let e = check_drift_pairs(&p, &records).unwrap_err().to_string();
        assert!(e.contains("have nothing"), "{e}");
    }

    #[test]
    fn pre_cache_is_reused_only_for_the_same_run() {
        let records = load_str("r.jsonl", RECORDS, &LoadOptions::default())
            .unwrap()
            .into_edits()
            .unwrap();
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("run").join(PRE_CACHE_FILE);
        let p = plan();
        let key = PreCacheKey::new("abc", Dtype::F32, &p, &records);
        assert_eq!(key.load(&file), None, "no file yet");
        let results = pre(&records);
        key.save(&file, &results).unwrap();
        assert_eq!(key.load(&file), Some(results.clone()));
        // Progress bars do not change results.
        let mut q = plan();
        q.eval.progress = !q.eval.progress;
        assert_eq!(
            PreCacheKey::new("abc", Dtype::F32, &q, &records).load(&file),
            Some(results)
        );
        // Anything the results depend on does.
        assert_eq!(
            PreCacheKey::new("abd", Dtype::F32, &p, &records).load(&file),
            None
        );
        let mut q = plan();
        q.seed += 1;
        assert_eq!(
            PreCacheKey::new("abc", Dtype::F32, &q, &records).load(&file),
            None
        );
        let mut q = plan();
        q.prefix_docs.push("More.".into());
        assert_eq!(
            PreCacheKey::new("abc", Dtype::F32, &q, &records).load(&file),
            None
        );
        let mut q = plan();
        q.eval.lenient_tokens += 1;
        assert_eq!(
            PreCacheKey::new("abc", Dtype::F32, &q, &records).load(&file),
            None
        );
        assert_eq!(
            PreCacheKey::new("abc", Dtype::F32, &p, &records[..1]).load(&file),
            None
        );
        let mut other = records.clone();
        other[1].rewrite.target_true = Some("German".into());
        assert_eq!(
            PreCacheKey::new("abc", Dtype::F32, &p, &other).load(&file),
            None
        );
        // Another compute dtype does; an f32 key is written as before the dtype existed.
        assert_eq!(
            PreCacheKey::new("abc", Dtype::Bf16, &p, &records).load(&file),
            None
        );
        assert!(!std::fs::read_to_string(&file).unwrap().contains("dtype"));
        // A truncated file is ignored (evaluated again), not an error.
        let text = std::fs::read_to_string(&file).unwrap();
        std::fs::write(&file, &text[..text.len() / 2]).unwrap();
        assert_eq!(key.load(&file), None);
    }
}
