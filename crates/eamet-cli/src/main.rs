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
