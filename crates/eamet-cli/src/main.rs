//! `eamet`: edit, evaluate and inspect language models with EAMET / MEMIT / AlphaEdit.
//!
//! Today: `eamet info` (open a model, check the runtime, show what it completes) and
//! `eamet generate`; `edit`, `eval`, `stats`, `score` and `apply-patch` arrive with their issues.

use clap::{Parser, Subcommand};
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
        /// Hyperparameters JSON (reference field names accepted); default: SmolLM2 values.
        #[arg(long)]
        hparams: Option<PathBuf>,
        /// Edited layers, e.g. 3,4 (overrides the hyperparameters).
        #[arg(long, value_delimiter = ',')]
        layers: Option<Vec<usize>>,
        /// Generic text for the key statistics (.txt or .jsonl); default: text the model writes.
        #[arg(long)]
        corpus: Vec<PathBuf>,
        /// Save the W_out updates as a patch file.
        #[arg(long)]
        patch: Option<PathBuf>,
        /// Run directory: prefixes and finished residuals are saved there; rerunning resumes.
        #[arg(long)]
        run_dir: Option<PathBuf>,
    },
    /// Open a model, print its hyperparameters, and check that libtorch computes.
    ///
    /// Example: eamet info --model ~/.cache/eamet/models/SmolLM2-135M-Instruct.Q4_1.gguf
    Info {
        /// GGUF model file (default: the SmolLM2 model fetched by `cargo xtask setup`).
        #[arg(long)]
        model: Option<PathBuf>,
        /// Prompts to complete greedily (default: three facts SmolLM2 knows).
        #[arg(long = "prompt")]
        prompts: Vec<String>,
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
    },
}

/// The bundled demo facts (facts/demo.jsonl).
const DEMO_FACTS: &str = include_str!("../../../facts/demo.jsonl");

fn read_facts(path: Option<&std::path::Path>) -> anyhow::Result<Vec<eamet::Fact>> {
    let (text, name) = match path {
        Some(p) => (
            std::fs::read_to_string(p).map_err(|e| anyhow::anyhow!("{}: {e}", p.display()))?,
            p.display().to_string(),
        ),
        None => (DEMO_FACTS.to_string(), "bundled demo facts".to_string()),
    };
    let mut facts = Vec::new();
    for (i, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let f: eamet::Fact = serde_json::from_str(line)
            .map_err(|e| anyhow::anyhow!("{name} line {}: {e}", i + 1))?;
        facts.push(f);
    }
    if facts.is_empty() {
        anyhow::bail!("{name} holds no facts");
    }
    Ok(facts)
}

fn first_words(
    model: &eamet::hooks::LlamaModel,
    facts: &[eamet::Fact],
) -> anyhow::Result<Vec<String>> {
    use eamet::hooks::EditableLm;
    let tok = model.tokenizer();
    let ids = facts
        .iter()
        .map(|f| tok.encode(&f.prompt.replace("{}", &f.subject)))
        .collect::<Result<Vec<_>, _>>()?;
    let stop: Vec<u32> = tok.eos_id.into_iter().collect();
    model
        .generate(&ids, 5, &stop)?
        .iter()
        .map(|g| {
            Ok(tok
                .decode(&g.tokens)?
                .replace('\n', " ")
                .trim_end()
                .to_string())
        })
        .collect()
}

#[allow(clippy::too_many_arguments)]
fn edit(
    model: Option<PathBuf>,
    facts: Option<PathBuf>,
    method: String,
    hparams: Option<PathBuf>,
    layers: Option<Vec<usize>>,
    corpus: Vec<PathBuf>,
    patch: Option<PathBuf>,
    run_dir: Option<PathBuf>,
) -> anyhow::Result<()> {
    let method = eamet::Method::parse(&method)?;
    let facts = read_facts(facts.as_deref())?;
    let path = resolve_model(model)?;
    let mut model = load(&path)?;
    let mut hp = match &hparams {
        Some(p) => eamet::EditHparams::from_json(
            &std::fs::read_to_string(p).map_err(|e| anyhow::anyhow!("{}: {e}", p.display()))?,
        )?,
        None => eamet::EditHparams::smollm2(method),
    };
    if let Some(l) = layers {
        hp.layers = l;
    }
    let corpus = if corpus.is_empty() {
        None
    } else {
        Some(eamet::stats::Corpus::from_files(&corpus)?)
    };
    println!("model   {}", path.display());
    println!(
        "method  {method:?}, layers {:?}, {} facts",
        hp.layers,
        facts.len()
    );
    let before = first_words(&model, &facts)?;
    let opts = eamet::EditOptions {
        run_dir,
        corpus,
        progress: true,
        ..Default::default()
    };
    let out = eamet::Editor::new(&mut model, method, hp, opts)?.edit(&facts)?;
    let after = first_words(&model, &facts)?;
    println!();
    println!("| prompt | new object | before | after | edited |");
    println!("|---|---|---|---|---|");
    let mut ok = 0;
    for ((f, b), a) in facts.iter().zip(&before).zip(&after) {
        let hit = a.starts_with(&format!(" {}", f.target_new));
        ok += hit as usize;
        println!(
            "| {} | {} | {} | {} | {} |",
            f.prompt.replace("{}", &f.subject),
            f.target_new,
            b.trim(),
            a.trim(),
            if hit { "yes" } else { "no" }
        );
    }
    println!();
    println!(
        "edited: {ok}/{} facts now greedy-complete with the new object",
        facts.len()
    );
    let nll: Vec<String> = out
        .residuals
        .stats
        .iter()
        .map(|s| format!("{:.3}", s.final_nll))
        .collect();
    println!("final residual NLL per fact: {}", nll.join(" "));
    println!(
        "misalignment of the residuals: total {:.3} (A(i) = KL(P_r || P_k) over j < i, tau 0.07)",
        out.misalignment_total
    );
    let times: Vec<String> = out
        .timings
        .iter()
        .map(|(k, v)| format!("{k} {v:.1}s"))
        .collect();
    println!("timings: {}", times.join(", "));
    if let Some(p) = patch {
        let patch =
            eamet::hooks::patch::Patch::from_model(&model, &format!("{method:?}").to_lowercase())?;
        let inputs = model.source().identity_files()?;
        patch.save(&p, &inputs, false)?;
        println!("patch written to {}", p.display());
    }
    Ok(())
}

const DEMO_PROMPTS: [&str; 3] = [
    "The Eiffel Tower is located in the city of",
    "The capital of Japan is",
    "Michael Jordan professionally plays the sport of",
];

fn resolve_model(model: Option<PathBuf>) -> anyhow::Result<PathBuf> {
    let path = match model.or_else(eamet::hooks::paths::default_model) {
        Some(p) => p,
        None => anyhow::bail!("no --model given and no cache directory known (set EAMET_HOME)"),
    };
    if !path.exists() {
        anyhow::bail!(
            "model {} does not exist; pass --model, or run `cargo xtask setup` to fetch the default",
            path.display()
        );
    }
    Ok(path)
}

fn load(path: &std::path::Path) -> anyhow::Result<eamet::hooks::LlamaModel> {
    use eamet::hooks::tch::Device;
    Ok(if path.is_dir() {
        eamet::hooks::LlamaModel::from_hf_dir(path, Device::Cpu)?
    } else {
        eamet::hooks::LlamaModel::from_gguf(path, Device::Cpu)?
    })
}

fn complete(
    model: &eamet::hooks::LlamaModel,
    prompts: &[String],
    max_new: usize,
) -> anyhow::Result<()> {
    use eamet::hooks::EditableLm;
    let tok = model.tokenizer();
    let ids = prompts
        .iter()
        .map(|p| tok.encode(p))
        .collect::<Result<Vec<_>, _>>()?;
    let stop: Vec<u32> = tok.eos_id.into_iter().collect();
    let t = std::time::Instant::now();
    let gens = model.generate(&ids, max_new, &stop)?;
    let secs = t.elapsed().as_secs_f64();
    for (p, g) in prompts.iter().zip(&gens) {
        println!("  {p}{}", tok.decode(&g.tokens)?.replace('\n', "\\n"));
    }
    let n: usize = gens.iter().map(|g| g.tokens.len()).sum();
    println!(
        "  ({n} tokens in {secs:.2} s, greedy, batch of {})",
        prompts.len()
    );
    Ok(())
}

fn info(model: Option<PathBuf>, prompts: Vec<String>) -> anyhow::Result<()> {
    let path = resolve_model(model)?;
    let r = eamet::inspect_model(&path)?;
    println!("model          {}", path.display());
    println!("{}", r.info);
    println!(
        "libtorch       ok (dot = {}, autograd grad = {:?}, {} threads, CUDA {})",
        r.runtime.dot,
        r.runtime.grad,
        r.runtime.threads,
        if r.runtime.cuda {
            "available"
        } else {
            "not available"
        }
    );
    let t = std::time::Instant::now();
    let model = load(&path)?;
    println!(
        "loaded         in {:.2} s (dequantized to f32)",
        t.elapsed().as_secs_f64()
    );
    let prompts = if prompts.is_empty() {
        DEMO_PROMPTS.iter().map(|s| s.to_string()).collect()
    } else {
        prompts
    };
    println!("greedy completions (unedited model):");
    complete(&model, &prompts, 8)
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Info { model, prompts } => info(model, prompts),
        Command::Edit {
            model,
            facts,
            method,
            hparams,
            layers,
            corpus,
            patch,
            run_dir,
        } => edit(
            model, facts, method, hparams, layers, corpus, patch, run_dir,
        ),
        Command::Generate {
            model,
            prompts,
            max_new,
        } => resolve_model(model)
            .and_then(|p| load(&p))
            .and_then(|m| complete(&m, &prompts, max_new)),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("eamet: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
