//! `eamet`: edit, evaluate and inspect language models with EAMET / MEMIT / AlphaEdit.
//!
//! Today it has one command, `eamet info`, which opens a model and checks the runtime;
//! `edit`, `eval`, `stats`, `score`, `generate` and `apply-patch` arrive with their issues.

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
    },
}

fn info(model: Option<PathBuf>) -> anyhow::Result<()> {
    let path = match model.or_else(eamet::hooks::paths::default_model) {
        Some(p) => p,
        None => anyhow::bail!("no --model given and no cache directory known (set EAMET_HOME)"),
    };
    if !path.exists() {
        anyhow::bail!(
            "model file {} does not exist; pass --model, or run `cargo xtask setup` to fetch the default",
            path.display()
        );
    }
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
    Ok(())
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Info { model } => info(model),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("eamet: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
