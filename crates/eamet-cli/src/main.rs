//! `eamet`: edit, evaluate and inspect language models with EAMET / MEMIT / AlphaEdit.
//!
//! Commands: `edit`, `eval`, `stats` (and `stats merge`), `score`, `generate`, `apply-patch`,
//! `info`. Every command that runs the model takes `--dtype f32|bf16|f16` (compute dtype,
//! default f32) and `--device cpu|cuda|cuda:N` (default cpu). Errors go to stderr as one line `eamet: error: ...` with exit status 1 (usage errors:
//! 2); nothing is written when the input is bad.

mod common;
mod edit;
mod eval;
mod export;
mod patch;
mod score;
mod stats;

use clap::{Parser, Subcommand};
use common::{load_model as load, resolve_model, ComputeArgs};
use std::path::PathBuf;
use std::process::ExitCode;

#[derive(Parser)]
#[command(
    name = "eamet",
    version,
    about = "Massive knowledge editing of LLMs (EAMET, MEMIT, AlphaEdit)"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum StatsCommand {
    /// Add shard files of one layer into one statistics file (default: into the cache, where
    /// `eamet edit` finds it).
    Merge {
        /// Shard files (same model, corpus and layer).
        #[arg(required = true)]
        shards: Vec<PathBuf>,
        /// Output file (default: the cache path for this model, corpus, size and layer).
        #[arg(long)]
        out: Option<PathBuf>,
        /// JSON output.
        #[arg(long)]
        json: bool,
    },
}

#[derive(Subcommand)]
enum Command {
    /// Edit facts into a model (EAMET by default) and show greedy completions before and after.
    ///
    /// Defaults: the SmolLM2 model fetched by `cargo xtask setup` and the bundled demo facts
    /// (ten counterfactual edits of facts SmolLM2 knows).
    ///
    /// Examples:
    ///   eamet edit
    ///   eamet edit --facts my_facts.jsonl --method memit --patch edit.safetensors
    ///   eamet edit --corpus wiki.train.tokens --run-dir runs/demo
    Edit {
        /// GGUF file or Hugging Face checkpoint directory (default: the set-up's SmolLM2).
        #[arg(long)]
        model: Option<PathBuf>,
        /// Facts: JSONL, one {"subject", "prompt" (with {}), "target_new", "target_true"?,
        /// "case_id"?} per line (default: the bundled demo facts).
        #[arg(long)]
        facts: Option<PathBuf>,
        /// eamet | memit | alphaedit | alphaedit-aligned.
        #[arg(long, default_value = "eamet")]
        method: String,
        /// Hyperparameters JSON (reference field names accepted); default: the presets for the model's shape (SmolLM2-135M, Gemma 3 270M), else SmolLM2's.
        #[arg(long)]
        hparams: Option<PathBuf>,
        /// Edited layers, e.g. 3,4 (overrides the hyperparameters).
        #[arg(long, value_delimiter = ',')]
        layers: Option<Vec<usize>>,
        /// Facts per optimizer pass: batch size for memit/alphaedit, block size for
        /// eamet/alphaedit-aligned (1 = one at a time, the reference schedule). Default: the
        /// hyperparameters' `block` (SmolLM2 presets: see docs/benchmarks.md).
        #[arg(long, value_parser = clap::value_parser!(u64).range(1..))]
        block: Option<u64>,
        /// Generic text for the key statistics (.txt or .jsonl); default: text the model writes.
        #[arg(long)]
        corpus: Vec<PathBuf>,
        /// Save the W_out updates as a patch file.
        #[arg(long)]
        patch: Option<PathBuf>,
        #[command(flatten)]
        out: OutArgs,
        /// Run directory: prefixes and every finished residual are saved there as they finish.
        #[arg(long)]
        run_dir: Option<PathBuf>,
        /// Continue the run in --run-dir (finished facts are not optimized again).
        #[arg(long)]
        resume: bool,
        /// Also score the facts (strict / classic / lenient metrics) before and after the edit.
        #[arg(long)]
        eval: bool,
        #[command(flatten)]
        compute: ComputeArgs,
        /// Print one JSON document instead of tables.
        #[arg(long)]
        json: bool,
    },
    /// Edit the records of a dataset and evaluate them before and after (ALGORITHM.md §7):
    /// strict, classic and lenient efficacy / generalization / specificity, fluency and
    /// robustness to context prefixes. Writes report.json (every prompt's raw greedy generation
    /// pre and post), report.md and plots into --report.
    ///
    /// Examples:
    ///   eamet eval --dataset counterfact_rome_format_1000.json --n 50 --method memit --report runs/memit50
    ///   eamet eval --dataset zsre_mend_eval_portability_1037.json --n 20 --batch-size 5 --report runs/zsre
    Eval {
        /// GGUF file or Hugging Face checkpoint directory (default: the set-up's SmolLM2).
        #[arg(long)]
        model: Option<PathBuf>,
        /// Dataset file: CounterFact (ROME or EasyEdit format), zsRE (MEND), MQuAKE or our JSONL
        /// facts; the format is detected.
        #[arg(long)]
        dataset: PathBuf,
        /// Number of records.
        #[arg(long, default_value_t = 100)]
        n: usize,
        /// Index of the first record.
        #[arg(long, default_value_t = 0)]
        offset: usize,
        /// eamet | memit | alphaedit | alphaedit-aligned.
        #[arg(long, default_value = "eamet")]
        method: String,
        /// Hyperparameters JSON (reference field names accepted); default: the presets for the model's shape (SmolLM2-135M, Gemma 3 270M), else SmolLM2's.
        #[arg(long)]
        hparams: Option<PathBuf>,
        /// Edited layers, e.g. 3,4 (overrides the hyperparameters).
        #[arg(long, value_delimiter = ',')]
        layers: Option<Vec<usize>>,
        /// Facts per optimizer pass: batch size for memit/alphaedit, block size for
        /// eamet/alphaedit-aligned (1 = one at a time, the reference schedule). Default: the
        /// hyperparameters' `block` (SmolLM2 presets: see docs/benchmarks.md).
        #[arg(long, value_parser = clap::value_parser!(u64).range(1..))]
        block: Option<u64>,
        /// Generic text for the key statistics and the context prefixes; default: model-written.
        #[arg(long)]
        corpus: Vec<PathBuf>,
        /// Generic text for the key statistics only (overrides --corpus there; the context
        /// prefixes of the metrics stay as they are, so reports stay comparable).
        #[arg(long)]
        stats_corpus: Vec<PathBuf>,
        /// Number of model-written documents the context prefixes are cut from (without
        /// --corpus); default: the hyperparameters' `mom2_n_samples`. Fix it (e.g. 256) to compare
        /// settings that differ in `mom2_n_samples`: their reports then share prefixes.
        #[arg(long, value_parser = clap::value_parser!(u64).range(1..))]
        prefix_docs: Option<u64>,
        /// Report directory (must not hold a report yet).
        #[arg(long)]
        report: PathBuf,
        /// Edit in batches of this many records, evaluating after each (efficacy vs edits).
        #[arg(long)]
        batch_size: Option<usize>,
        /// With --batch-size: each intermediate checkpoint evaluates a seeded sample of this
        /// many of the records edited so far instead of all of them (the final evaluation
        /// covers every record).
        #[arg(long)]
        checkpoint_sample: Option<usize>,
        /// Seed of the context prefixes.
        #[arg(long, default_value_t = 0)]
        seed: u64,
        /// Skip the fluency generations (64 tokens per generation prompt).
        #[arg(long)]
        no_fluency: bool,
        /// Skip the 5/50/200-token prefix robustness suite.
        #[arg(long)]
        no_robustness: bool,
        /// Run the fluency and robustness suites on a fixed sample of this many records (drawn
        /// with --seed; the report lists them); at least --n means every record.
        #[arg(long, default_value_t = 100, value_parser = clap::value_parser!(u64).range(1..))]
        extra_sample: u64,
        /// Score the prefixed edit and neighbourhood prompts on every record (the reference's
        /// protocol, about five times the cost) instead of on the --extra-sample records only.
        #[arg(long)]
        prefixed_all: bool,
        /// Run directory for the residuals (resumable).
        #[arg(long)]
        run_dir: Option<PathBuf>,
        /// Robustness suite "several facts per subject": only records whose subject occurs in
        /// another record of the file, edited together (--offset/--n count within them).
        #[arg(long)]
        same_subject: bool,
        /// Reuse the pre-edit results of an earlier report directory (same model, records, seed
        /// and metric settings; checked) instead of evaluating the unedited model again.
        #[arg(long)]
        pre_from: Option<PathBuf>,
        #[command(flatten)]
        compute: ComputeArgs,
        /// Print a JSON summary instead of the markdown table.
        #[arg(long)]
        json: bool,
    },
    /// Second-moment statistics of the keys (C = E[k kᵀ]) at the given layers, cached per model,
    /// corpus and size; with --shard i/n, one shard's partial sums to --out for `stats merge`.
    ///
    /// Examples:
    ///   eamet stats --layers 3,4 --corpus wiki.train.tokens --samples 2000
    ///   eamet stats --layers 4 --corpus wiki.train.tokens --samples 2000 --shard 0/2 --out shards
    ///   eamet stats merge shards/shard-0-of-2-layer4.safetensors shards/shard-1-of-2-layer4.safetensors
    Stats {
        #[command(subcommand)]
        merge: Option<StatsCommand>,
        /// GGUF file or Hugging Face checkpoint directory (default: the set-up's SmolLM2).
        #[arg(long)]
        model: Option<PathBuf>,
        /// Layers.
        #[arg(long, value_delimiter = ',', default_value = "3,4")]
        layers: Vec<usize>,
        /// Text files (.txt: one document per line; .jsonl: a "text" field); default:
        /// text the model writes itself (seeded).
        #[arg(long)]
        corpus: Vec<PathBuf>,
        /// Documents to use.
        #[arg(long, default_value_t = 256)]
        samples: usize,
        /// Tokens per document.
        #[arg(long, default_value_t = 64)]
        max_tokens: usize,
        /// Compute shard i of n (documents i, i+n, ...), e.g. 0/4.
        #[arg(long)]
        shard: Option<String>,
        /// Directory for shard files (default ./stats-shards).
        #[arg(long)]
        out: Option<PathBuf>,
        #[command(flatten)]
        compute: ComputeArgs,
        /// JSON output.
        #[arg(long)]
        json: bool,
    },
    /// Misalignment of MEMIT-style residuals (optimized independently, nothing edited), in both
    /// KL directions and both neighbourhoods.
    ///
    /// Example: eamet score --facts facts/demo.jsonl
    Score {
        /// GGUF file or Hugging Face checkpoint directory (default: the set-up's SmolLM2).
        #[arg(long)]
        model: Option<PathBuf>,
        /// Facts or dataset file (default: the bundled demo facts).
        #[arg(long)]
        facts: Option<PathBuf>,
        /// At most this many records.
        #[arg(long)]
        n: Option<usize>,
        /// Index of the first record.
        #[arg(long, default_value_t = 0)]
        offset: usize,
        /// memit (independent residuals) or eamet (sequential aligned residuals).
        #[arg(long, default_value = "memit")]
        method: String,
        /// Hyperparameters JSON.
        #[arg(long)]
        hparams: Option<PathBuf>,
        /// Layers (the last one is where residuals live).
        #[arg(long, value_delimiter = ',')]
        layers: Option<Vec<usize>>,
        #[command(flatten)]
        compute: ComputeArgs,
        /// JSON output.
        #[arg(long)]
        json: bool,
    },
    /// Apply a patch file (from `eamet edit --patch`) to its base model and show completions
    /// before and after.
    ///
    /// Example: eamet apply-patch --patch edit.safetensors --prompt "The Eiffel Tower is located in the city of"
    ApplyPatch {
        /// The base model (default: the set-up's SmolLM2); its SHA-256 must match the patch.
        #[arg(long)]
        model: Option<PathBuf>,
        /// The patch file.
        #[arg(long)]
        patch: PathBuf,
        /// Prompts (default: the demo facts' prompts).
        #[arg(long = "prompt")]
        prompts: Vec<String>,
        /// Most new tokens per prompt.
        #[arg(long, default_value_t = 8)]
        max_new: usize,
        #[command(flatten)]
        compute: ComputeArgs,
        /// JSON output.
        #[arg(long)]
        json: bool,
    },
    /// Write a patch's base model with the patch applied: a GGUF file that llama.cpp runs, or
    /// a safetensors directory that transformers loads. The model is read in f32 on the CPU (an
    /// export computes nothing).
    ///
    /// Examples:
    ///   eamet export --patch edit.safetensors --out edited.gguf
    ///   eamet export --patch edit.safetensors --out edited.gguf --edited-type q8_0
    ///   eamet export --patch edit.safetensors --out edited-hf --out-dtype bf16
    Export {
        /// The base model (default: the set-up's SmolLM2); its SHA-256 must match the patch.
        #[arg(long)]
        model: Option<PathBuf>,
        /// The patch file (from `eamet edit --patch`).
        #[arg(long)]
        patch: PathBuf,
        #[command(flatten)]
        out: OutArgs,
        /// The same as --out-dtype (the name this command took before --dtype came to mean
        /// the compute dtype on the commands that run the model).
        #[arg(long, value_name = "OUT_DTYPE")]
        dtype: Option<String>,
        /// JSON report of the encoding errors on stderr instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Open a model, print its hyperparameters, and check that libtorch computes.
    ///
    /// Example: eamet info --model ~/.cache/eamet/models/SmolLM2-135M-Instruct.Q4_1.gguf
    Info {
        /// GGUF file or Hugging Face checkpoint directory (default: the SmolLM2 model fetched
        /// by `cargo xtask setup`).
        #[arg(long)]
        model: Option<PathBuf>,
        /// Prompts to complete greedily (default: three facts SmolLM2 knows).
        #[arg(long = "prompt")]
        prompts: Vec<String>,
        #[command(flatten)]
        compute: ComputeArgs,
    },
    /// Compare evaluation reports side by side: a markdown table (one row per report) and plots
    /// against the number of edits, one line per method.
    ///
    /// With --pareto the reports are the settings of a hyperparameter sweep: pareto.md and
    /// pareto.svg/png compare them by strict efficacy against neighbourhood KL and mark the
    /// Pareto front (docs/hparams.md).
    ///
    /// Example: eamet summarize runs/scale/*/report --out docs/results/summary
    Summarize {
        /// Report directories (each holding the report.json of `eamet eval`).
        #[arg(required = true)]
        reports: Vec<PathBuf>,
        /// Directory for summary.md and the plots (created if needed).
        #[arg(long)]
        out: PathBuf,
        /// Also write the sweep table and trade-off plot (pareto.md, pareto.svg/png). Each
        /// setting is labelled with its directory's name (the parent's for a directory named
        /// `report`, as tools/sweep_hparams.sh lays them out).
        #[arg(long)]
        pareto: bool,
    },
    /// Greedy completion of prompts (batched, KV cache).
    ///
    /// Example: eamet generate --prompt "The Eiffel Tower is located in the city of" --max-new 8
    Generate {
        /// GGUF file or Hugging Face checkpoint directory (default: the set-up's SmolLM2).
        #[arg(long)]
        model: Option<PathBuf>,
        /// Prompt (repeat for a batch).
        #[arg(long = "prompt", required = true)]
        prompts: Vec<String>,
        /// Most new tokens per prompt.
        #[arg(long, default_value_t = 16)]
        max_new: usize,
        #[command(flatten)]
        compute: ComputeArgs,
        /// Print a JSON array of {"prompt", "completion"} instead of lines.
        #[arg(long)]
        json: bool,
    },
}

const DEMO_PROMPTS: [&str; 3] = [
    "The Eiffel Tower is located in the city of",
    "The capital of Japan is",
    "Michael Jordan professionally plays the sport of",
];

fn complete_json(
    model: &eamet::hooks::LlamaModel,
    prompts: &[String],
    max_new: usize,
) -> anyhow::Result<()> {
    let gens = eamet::eval::metrics::greedy(model, prompts, max_new, 32)?;
    let rows: Vec<_> = prompts
        .iter()
        .zip(gens)
        .map(|(p, g)| serde_json::json!({"prompt": p, "completion": g.text}))
        .collect();
    println!("{}", serde_json::to_string_pretty(&rows)?);
    Ok(())
}

fn complete(
    model: &eamet::hooks::LlamaModel,
    prompts: &[String],
    max_new: usize,
) -> anyhow::Result<()> {
    let t = std::time::Instant::now();
    let gens = eamet::eval::metrics::greedy(model, prompts, max_new, 32)?;
    let secs = t.elapsed().as_secs_f64();
    for (p, g) in prompts.iter().zip(&gens) {
        println!("  {p}{}", g.text.replace('\n', "\\n"));
    }
    let n: usize = gens.iter().map(|g| g.ids.len()).sum();
    println!("  ({n} tokens in {secs:.2} s, greedy, batches of up to 32)");
    Ok(())
}

/// A report directory's label in sweep tables: its name, or its parent's when it is named
/// `report` (`runs/sweep/memit-L3-4-lam300/report` → `memit-L3-4-lam300`).
fn report_label(dir: &std::path::Path) -> String {
    let name = |p: &std::path::Path| p.file_name().map(|n| n.to_string_lossy().into_owned());
    match name(dir) {
        Some(n) if n == "report" => dir.parent().and_then(name).unwrap_or(n),
        Some(n) => n,
        None => dir.display().to_string(),
    }
}

fn summarize(dirs: &[PathBuf], out: &std::path::Path, pareto: bool) -> anyhow::Result<()> {
    use eamet::eval::report::Report;
    let mut reports = Vec::with_capacity(dirs.len());
    for d in dirs {
        let f = d.join("report.json");
        let text =
            std::fs::read_to_string(&f).map_err(|e| anyhow::anyhow!("{}: {e}", f.display()))?;
        let r: Report =
            serde_json::from_str(&text).map_err(|e| anyhow::anyhow!("{}: {e}", f.display()))?;
        reports.push(r);
    }
    let md = eamet::eval::summary::summary_markdown(&reports);
    std::fs::create_dir_all(out).map_err(|e| anyhow::anyhow!("{}: {e}", out.display()))?;
    let path = out.join("summary.md");
    eamet::eval::report::write_atomic(&path, md.as_bytes())?;
    let mut plots = eamet::eval::summary::summary_plots(&reports, out)?;
    print!("{md}");
    if pareto {
        let labelled: Vec<(String, Report)> =
            dirs.iter().map(|d| report_label(d)).zip(reports).collect();
        let md = eamet::eval::summary::sweep_markdown(&labelled);
        let path = out.join("pareto.md");
        eamet::eval::report::write_atomic(&path, md.as_bytes())?;
        print!("\n{md}");
        if let Some(f) = eamet::eval::summary::sweep_plot(&labelled, out)? {
            plots.extend([f.svg, f.png]);
        }
    }
    eprintln!(
        "wrote {}{} and {} plot files into {}",
        path.display(),
        if pareto { " and pareto.md" } else { "" },
        plots.len(),
        out.display()
    );
    Ok(())
}

fn info(
    model: Option<PathBuf>,
    prompts: Vec<String>,
    opts: eamet::hooks::LoadOptions,
) -> anyhow::Result<()> {
    let path = resolve_model(model)?;
    let runtime = if path.is_dir() {
        // A Hugging Face directory: its hyperparameters are printed once it is loaded.
        println!(
            "model          {} (Hugging Face checkpoint)",
            path.display()
        );
        eamet::hooks::runtime::self_check()?
    } else {
        let r = eamet::inspect_model(&path)?;
        println!("model          {}", path.display());
        println!("{}", r.info);
        r.runtime
    };
    println!(
        "libtorch       ok (dot = {}, autograd grad = {:?}, {} threads, CUDA {})",
        runtime.dot,
        runtime.grad,
        runtime.threads,
        if runtime.cuda {
            "available"
        } else {
            "not available"
        }
    );
    let t = std::time::Instant::now();
    let model = load(&path, opts)?;
    println!(
        "loaded         in {:.2} s (weights as f32, computing in {})",
        t.elapsed().as_secs_f64(),
        opts.describe()
    );
    if path.is_dir() {
        let c = eamet::hooks::EditableLm::config(&model);
        println!(
            "architecture   {} ({} layers, d_model {}, d_ff {}, vocabulary {})",
            c.arch_name, c.n_layers, c.d_model, c.d_ff, c.vocab_size
        );
    }
    let prompts = if prompts.is_empty() {
        DEMO_PROMPTS.iter().map(|s| s.to_string()).collect()
    } else {
        prompts
    };
    println!("greedy completions (unedited model):");
    complete(&model, &prompts, 8)
}

/// Where to write an edited model (shared by `edit` and `export`).
#[derive(clap::Args, Debug, Clone)]
struct OutArgs {
    /// Write the edited model: a `.gguf` file (GGUF input), or a directory (safetensors:
    /// transformers layout).
    #[arg(long)]
    out: Option<PathBuf>,
    /// gguf | safetensors (default: from --out: `*.gguf` is GGUF, anything else a directory).
    #[arg(long)]
    format: Option<String>,
    /// GGUF: type of the edited tensors, f32 | f16 | q8_0 | source (the input's own type).
    /// Default f32 (docs/export.md).
    #[arg(long)]
    edited_type: Option<String>,
    /// Safetensors from GGUF input: weight dtype, f32 | bf16 | f16 (default f32). A model
    /// computed in bf16/f16 is still written from its f32 weights plus the edit.
    #[arg(long)]
    out_dtype: Option<String>,
    /// Replace an existing --out (never an input file).
    #[arg(long)]
    overwrite: bool,
}

impl OutArgs {
    fn spec(self) -> Option<export::OutSpec> {
        let OutArgs {
            out,
            format,
            edited_type,
            out_dtype: dtype,
            overwrite,
        } = self;
        out.map(|out| export::OutSpec {
            out,
            format,
            edited_type,
            dtype,
            overwrite,
        })
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Info {
            model,
            prompts,
            compute,
        } => compute.options().and_then(|o| info(model, prompts, o)),
        Command::Edit {
            model,
            facts,
            method,
            hparams,
            layers,
            block,
            corpus,
            patch,
            out,
            run_dir,
            resume,
            eval,
            compute,
            json,
        } => compute.options().and_then(|load| {
            edit::run(edit::EditArgs {
                model,
                facts,
                method,
                hparams,
                layers,
                block: block.map(|b| b as usize),
                corpus,
                patch,
                out: out.spec(),
                run_dir,
                resume,
                eval,
                load,
                json,
            })
        }),
        Command::Eval {
            model,
            dataset,
            n,
            offset,
            method,
            hparams,
            layers,
            block,
            corpus,
            stats_corpus,
            prefix_docs,
            report,
            batch_size,
            checkpoint_sample,
            seed,
            no_fluency,
            no_robustness,
            extra_sample,
            prefixed_all,
            run_dir,
            same_subject,
            pre_from,
            compute,
            json,
        } => compute.options().and_then(|load| {
            eval::run(eval::EvalArgs {
                model,
                dataset,
                n,
                offset,
                method,
                hparams,
                layers,
                block: block.map(|b| b as usize),
                corpus,
                stats_corpus,
                prefix_docs: prefix_docs.map(|n| n as usize),
                report,
                batch_size,
                checkpoint_sample,
                seed,
                no_fluency,
                no_robustness,
                extra_sample: extra_sample as usize,
                prefixed_all,
                run_dir,
                same_subject,
                pre_from,
                load,
                json,
            })
        }),
        Command::Summarize {
            reports,
            out,
            pareto,
        } => summarize(&reports, &out, pareto),
        Command::Stats {
            merge: Some(StatsCommand::Merge { shards, out, json }),
            ..
        } => stats::merge(stats::MergeArgs { shards, out, json }),
        Command::Stats {
            merge: None,
            model,
            layers,
            corpus,
            samples,
            max_tokens,
            shard,
            out,
            compute,
            json,
        } => compute.options().and_then(|load| {
            stats::run(stats::StatsArgs {
                model,
                layers,
                corpus,
                samples,
                max_tokens,
                shard,
                out,
                load,
                json,
            })
        }),
        Command::Score {
            model,
            facts,
            n,
            offset,
            method,
            hparams,
            layers,
            compute,
            json,
        } => compute.options().and_then(|load| {
            score::run(score::ScoreArgs {
                model,
                facts,
                n,
                offset,
                method,
                hparams,
                layers,
                load,
                json,
            })
        }),
        Command::ApplyPatch {
            model,
            patch,
            prompts,
            max_new,
            compute,
            json,
        } => compute.options().and_then(|load| {
            patch::run(patch::PatchArgs {
                model,
                patch,
                prompts,
                max_new,
                load,
                json,
            })
        }),
        Command::Export {
            model,
            patch,
            mut out,
            dtype,
            json,
        } => match (&out.out_dtype, dtype) {
            (Some(a), Some(b)) if *a != b => Err(anyhow::anyhow!(
                "--dtype {b} and --out-dtype {a} disagree (they name the same setting)"
            )),
            (_, d) => {
                out.out_dtype = out.out_dtype.or(d);
                match out.spec() {
                    Some(out) => export::run(export::ExportArgs {
                        model,
                        patch,
                        out,
                        json,
                    }),
                    None => Err(anyhow::anyhow!("export needs --out")),
                }
            }
        },
        Command::Generate {
            model,
            prompts,
            max_new,
            compute,
            json,
        } => compute
            .options()
            .and_then(|o| resolve_model(model).and_then(|p| load(&p, o)))
            .and_then(|m| {
                if json {
                    complete_json(&m, &prompts, max_new)
                } else {
                    complete(&m, &prompts, max_new)
                }
            }),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("eamet: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
