//! `eamet eval`.

use crate::common::{cache_dir, corpus, hparams, load_model, read_records, resolve_model};
use anyhow::{bail, Result};
use eamet::eval::data::EvalRecord;
use eamet::eval::metrics::{EvalConfig, PrefixedScope, RecordEval};
use eamet::eval::report::Report;
use eamet::eval::report::RunInfo;
use eamet::evaluation::{run_eval_with_pre, EvalPlan, EvalSchedule};
use eamet::hooks::{EditableLm, LlamaModel};
use eamet::stats::Corpus;
use eamet::{EditHparams, EditOptions, Method};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// Arguments of `eamet eval`.
pub struct EvalArgs {
    pub model: Option<PathBuf>,
    pub dataset: PathBuf,
    pub n: usize,
    pub offset: usize,
    pub method: String,
    pub hparams: Option<PathBuf>,
    pub layers: Option<Vec<usize>>,
    pub block: Option<usize>,
    pub corpus: Vec<PathBuf>,
    pub stats_corpus: Vec<PathBuf>,
    pub prefix_docs: Option<usize>,
    pub report: PathBuf,
    pub batch_size: Option<usize>,
    pub checkpoint_sample: Option<usize>,
    pub seed: u64,
    pub no_fluency: bool,
    pub no_robustness: bool,
    pub extra_sample: usize,
    pub prefixed_all: bool,
    pub run_dir: Option<PathBuf>,
    pub same_subject: bool,
    pub pre_from: Option<PathBuf>,
    pub load: eamet::hooks::LoadOptions,
    pub json: bool,
}

/// UTC time as RFC 3339, from the system clock (no time-zone database needed).
pub fn now_rfc3339() -> String {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0);
    let (days, rem) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        rem / 60 % 60,
        rem % 60
    )
}

/// `eamet eval`: evaluate the records before and after editing the model with their rewrites,
/// write the report and print it.
pub fn run(a: EvalArgs) -> Result<()> {
    let method = Method::parse(&a.method)?;
    check_args(&a)?;
    let (records, dataset, format) = load_records(&a)?;
    let facts: Vec<_> = records.iter().map(|r| r.rewrite.to_fact()).collect();
    eamet::optim::validate_facts(&facts)?;
    let corpus = corpus(&a.corpus)?;
    let stats_corpus = self::corpus(&a.stats_corpus)?;
    let path = resolve_model(a.model.clone())?;
    let mut model = load_model(&path, a.load)?;
    let hp = hparams(
        method,
        a.hparams.as_deref(),
        a.layers.clone(),
        a.block,
        model.config(),
    )?;
    let cache = cache_dir()?;
    // Model-written documents take minutes the first time (then they are cached): timed, so
    // that a report's phases add up to its wall time.
    let started = std::time::Instant::now();
    let n_docs = a.prefix_docs.unwrap_or(hp.mom2_n_samples);
    let prefix_docs = prefix_docs(&model, corpus.as_ref(), n_docs, &hp, &cache, !a.json)?;
    let docs_seconds = started.elapsed().as_secs_f64();
    let edit_corpus = if a.stats_corpus.is_empty() {
        corpus
    } else {
        stats_corpus
    };
    let plan = eval_plan(&a, method, hp, edit_corpus, prefix_docs, records.len());
    let mut info = run_info(&a, &path, &model, dataset, format, records.len())?;
    info.prefix_docs_sha256 = Some(eamet::evaluation::prefix_docs_sha256(&plan.prefix_docs));
    if !a.json {
        eprintln!(
            "evaluating {} on {} records of {} (pre-edit, edit, post-edit)",
            eamet::evaluation::method_name(method),
            records.len(),
            a.dataset.display()
        );
    }
    let pre = match &a.pre_from {
        None => None,
        Some(dir) => Some(load_pre(dir, &info, &plan)?),
    };
    let mut report = run_eval_with_pre(&mut model, &records, &plan, info, pre)?;
    report
        .timings
        .insert(0, ("context documents".to_string(), docs_seconds));
    let written = report.write(&a.report)?;
    print_report(&report, written, a.json)
}

/// Refuses bad counts and a report directory that already holds a report.
fn check_args(a: &EvalArgs) -> Result<()> {
    if a.n == 0 {
        bail!("--n must be at least 1");
    }
    if a.batch_size == Some(0) {
        bail!("--batch-size must be at least 1");
    }
    if a.checkpoint_sample.is_some() && a.batch_size.is_none() {
        bail!("--checkpoint-sample sets how many records each --batch-size checkpoint evaluates: give --batch-size too");
    }
    if a.checkpoint_sample == Some(0) {
        bail!("--checkpoint-sample must be at least 1");
    }
    if a.prefix_docs.is_some() && !a.corpus.is_empty() {
        bail!(
            "--prefix-docs counts model-written documents; with --corpus the prefixes are cut \
             from the corpus files: give one or the other"
        );
    }
    if a.report.join("report.json").exists() {
        bail!(
            "{} already holds a report; choose another --report directory",
            a.report.display()
        );
    }
    Ok(())
}

/// The records to evaluate (`--offset`/`--n` of the file, or of its records sharing a subject
/// with `--same-subject`), with the dataset's name and format.
fn load_records(a: &EvalArgs) -> Result<(Vec<EvalRecord>, String, String)> {
    if !a.same_subject {
        return read_records(Some(&a.dataset), a.offset, Some(a.n));
    }
    // The "several facts per subject" suite: every record whose subject occurs in another
    // record of the file, grouped by subject; --offset/--n then count within that list.
    let (all, dataset, format) = read_records(Some(&a.dataset), 0, None)?;
    let picked: Vec<_> = eamet::eval::data::group_by_subject(&all)
        .into_iter()
        .flat_map(|(_, idx)| idx)
        .skip(a.offset)
        .take(a.n)
        .map(|i| all[i].clone())
        .collect();
    if picked.is_empty() {
        bail!("{dataset}: no subject occurs in two records (in the range asked for)");
    }
    Ok((
        picked,
        format!("{dataset} (records sharing a subject)"),
        format,
    ))
}

/// The documents context prefixes are cut from: the `--corpus` files, else `n_docs` documents
/// the model writes (cached).
fn prefix_docs(
    model: &LlamaModel,
    corpus: Option<&Corpus>,
    n_docs: usize,
    hp: &EditHparams,
    cache: &Path,
    progress: bool,
) -> Result<Vec<String>> {
    Ok(match corpus {
        Some(c) => c.docs.clone(),
        None => {
            eamet::stats::generated_corpus(model, n_docs, hp.mom2_max_tokens, cache, progress)?.docs
        }
    })
}

/// The metric settings: the defaults, less what `--no-fluency` / `--no-robustness` turn off,
/// with the fluency, robustness and prefixed sample of `--extra-sample` records (the prefixed
/// prompts on every record with `--prefixed-all`).
fn eval_config(a: &EvalArgs, n_records: usize) -> EvalConfig {
    let mut eval = EvalConfig {
        progress: !a.json,
        extra_sample: (a.extra_sample < n_records).then_some(a.extra_sample),
        extra_seed: a.seed,
        ..Default::default()
    };
    if a.no_fluency {
        eval.fluency_tokens = 0;
    }
    if a.no_robustness {
        eval.robustness_lens.clear();
    }
    if a.prefixed_all {
        eval.prefixed_scope = PrefixedScope::All;
    }
    eval
}

/// What to run: the edit (editing `corpus` for statistics), the metrics and the schedule
/// (batches of `--batch-size` edits, else all at once).
fn eval_plan(
    a: &EvalArgs,
    method: Method,
    hparams: EditHparams,
    corpus: Option<Corpus>,
    prefix_docs: Vec<String>,
    n_records: usize,
) -> EvalPlan {
    EvalPlan {
        method,
        hparams,
        edit: EditOptions {
            run_dir: a.run_dir.clone(),
            corpus,
            progress: !a.json,
            ..Default::default()
        },
        eval: eval_config(a, n_records),
        prefix_docs,
        seed: a.seed,
        schedule: match a.batch_size {
            Some(k) if k < n_records => EvalSchedule::Batches(k),
            _ => EvalSchedule::AllThenEvaluate,
        },
        checkpoint_sample: a.checkpoint_sample,
    }
}

/// The report's description of the run (the method, hyperparameters, metric settings and
/// schedule are filled in by the evaluation).
fn run_info(
    a: &EvalArgs,
    path: &Path,
    model: &LlamaModel,
    dataset: String,
    format: String,
    n_records: usize,
) -> Result<RunInfo> {
    Ok(RunInfo {
        tool_version: env!("CARGO_PKG_VERSION").into(),
        created: now_rfc3339(),
        command: Some(command_line()),
        model: path.display().to_string(),
        model_sha256: model.base_sha256()?,
        dataset,
        dataset_format: format,
        offset: a.offset,
        n: n_records,
        method: String::new(),
        hparams: serde_json::Value::Null,
        eval_config: EvalConfig::default(),
        seed: a.seed,
        schedule: String::new(),
        environment: environment(),
        dtype: model.dtype().name().into(),
        device: eamet::hooks::compute::device_name(model.device()),
        prefix_docs_sha256: None,
        stats_corpus: None,
    })
}

/// The command line, arguments with a space quoted.
fn command_line() -> String {
    std::env::args()
        .map(|s| if s.contains(' ') { format!("'{s}'") } else { s })
        .collect::<Vec<_>>()
        .join(" ")
}

/// Where the run happens: libtorch threads, OS, CPUs, build profile.
fn environment() -> BTreeMap<String, String> {
    let mut environment = BTreeMap::new();
    environment.insert(
        "libtorch threads".into(),
        eamet::hooks::tch::get_num_threads().to_string(),
    );
    environment.insert("os".into(), std::env::consts::OS.into());
    environment.insert(
        "cpus".into(),
        std::thread::available_parallelism()
            .map(|n| n.get().to_string())
            .unwrap_or_default(),
    );
    environment.insert(
        "profile".into(),
        if cfg!(debug_assertions) {
            "debug"
        } else {
            "release"
        }
        .into(),
    );
    environment
}

/// The pre-edit results of the report in `dir` (`--pre-from`), refused unless its model,
/// dataset slice, seed and metric settings match this run's.
fn load_pre(dir: &Path, info: &RunInfo, plan: &EvalPlan) -> Result<Vec<RecordEval>> {
    let f = dir.join("report.json");
    let text = std::fs::read_to_string(&f)
        .map_err(|e| anyhow::anyhow!("--pre-from {}: {e}", f.display()))?;
    let old: Report = serde_json::from_str(&text)
        .map_err(|e| anyhow::anyhow!("--pre-from {}: {e}", f.display()))?;
    let i = &old.info;
    let mut diffs = Vec::new();
    if i.model_sha256 != info.model_sha256 {
        diffs.push("model");
    }
    if i.dataset != info.dataset || i.offset != info.offset || i.n != info.n {
        diffs.push("dataset slice");
    }
    if i.seed != info.seed {
        diffs.push("seed");
    }
    // Reports written before --dtype existed are f32 (serde default).
    if i.dtype != info.dtype {
        diffs.push("compute dtype");
    }
    let mut cmp = plan.eval.clone();
    cmp.progress = false;
    if i.eval_config != cmp {
        diffs.push("metric settings");
    }
    match (&i.prefix_docs_sha256, &info.prefix_docs_sha256) {
        (Some(a), Some(b)) if a != b => diffs.push("context prefix documents"),
        (None, Some(_)) => diffs.push(
            "context prefix documents (it predates their record: its prefixes cannot be checked)",
        ),
        _ => {}
    }
    if !diffs.is_empty() {
        bail!(
            "--pre-from {}: its pre-edit results differ in {}",
            f.display(),
            diffs.join(", ")
        );
    }
    Ok(old.records.into_iter().map(|(pre, _)| pre).collect())
}

/// Prints the summaries as JSON (`--json`) or the Markdown report and the files written.
fn print_report(report: &Report, written: Vec<PathBuf>, json: bool) -> Result<()> {
    if json {
        println!(
            "{}",
            serde_json::to_string_pretty(&serde_json::json!({
                "pre": report.pre, "post": report.post,
                "misalignment": report.misalignment.as_ref().map(|m| (m.total_optimized, m.total_written)),
                "files": written,
            }))?
        );
    } else {
        println!("{}", report.to_markdown());
        for w in written {
            println!("wrote {}", w.display());
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn info(dtype: &str) -> RunInfo {
        RunInfo {
            tool_version: "test".into(),
            created: "now".into(),
            command: None,
            model: "m.gguf".into(),
            model_sha256: "abc".into(),
            dataset: "d.json".into(),
            dataset_format: "facts".into(),
            offset: 0,
            n: 1,
            method: "memit".into(),
            hparams: serde_json::Value::Null,
            eval_config: EvalConfig {
                progress: false,
                ..Default::default()
            },
            seed: 0,
            schedule: String::new(),
            environment: BTreeMap::new(),
            dtype: dtype.into(),
            device: "cpu".into(),
            prefix_docs_sha256: None,
            stats_corpus: None,
        }
    }

    fn plan() -> EvalPlan {
        EvalPlan {
            method: Method::Memit,
            hparams: EditHparams::default(),
            edit: EditOptions::default(),
            eval: EvalConfig::default(),
            prefix_docs: Vec::new(),
            seed: 0,
            schedule: EvalSchedule::AllThenEvaluate,
            checkpoint_sample: None,
        }
    }

    /// A report written before --dtype existed (no dtype/device fields) is an f32 report: its
    /// pre-edit results serve an f32 run, not a bf16 one.
    #[test]
    fn pre_from_refuses_another_compute_dtype() {
        let dir = tempfile::tempdir().unwrap();
        let report = Report::new(info("f32"), Vec::new(), Vec::new(), Vec::new());
        let mut v = serde_json::to_value(&report).unwrap();
        let i = v["info"].as_object_mut().unwrap();
        assert_eq!(i.remove("dtype"), Some("f32".into()));
        assert_eq!(i.remove("device"), Some("cpu".into()));
        std::fs::write(dir.path().join("report.json"), v.to_string()).unwrap();
        assert!(load_pre(dir.path(), &info("f32"), &plan()).is_ok());
        let e = load_pre(dir.path(), &info("bf16"), &plan()).unwrap_err();
        assert!(e.to_string().contains("compute dtype"), "{e}");
    }

    /// Pre-edit results measured behind other context prefixes are refused, and so are those of
    /// a report that does not record its prefix documents (written before the field existed).
    #[test]
    fn pre_from_refuses_other_prefix_documents() {
        let dir = tempfile::tempdir().unwrap();
        let with = |sha: Option<&str>| RunInfo {
            prefix_docs_sha256: sha.map(String::from),
            stats_corpus: None,
            ..info("f32")
        };
        let write = |i: RunInfo| {
            let report = Report::new(i, Vec::new(), Vec::new(), Vec::new());
            std::fs::write(
                dir.path().join("report.json"),
                serde_json::to_string(&report).unwrap(),
            )
            .unwrap();
        };
        write(with(Some("aa")));
        assert!(load_pre(dir.path(), &with(Some("aa")), &plan()).is_ok());
        let e = load_pre(dir.path(), &with(Some("bb")), &plan()).unwrap_err();
        assert!(e.to_string().contains("context prefix documents"), "{e}");
        write(with(None));
        let e = load_pre(dir.path(), &with(Some("aa")), &plan()).unwrap_err();
        assert!(e.to_string().contains("predates"), "{e}");
        let text = std::fs::read_to_string(dir.path().join("report.json")).unwrap();
        assert!(!text.contains("prefix_docs_sha256"), "None is not written");
    }
}
