//! `cargo xtask`: set-up, demo and test runner for eamet-rs.
//!
//! ```text
//! cargo xtask setup         install what the workspace needs (idempotent)
//! cargo xtask setup --model gemma3-270m   ... and another model (repeatable)
//! cargo xtask demo [ARGS]   setup, then run the main job (`eamet` binary)
//! cargo xtask test [ARGS]   setup, then `cargo test --workspace [ARGS]`
//! cargo xtask pyenv         create the full Python venv for golden files and baselines
//! cargo xtask paths         print where everything lives
//! ```
//!
//! Heavy downloads live in one per-user cache, `$EAMET_HOME` (default `~/.cache/eamet`):
//! libtorch 2.13.0 (the CPU parts of PyTorch's wheel, for tch 0.26) and the SmolLM2 GGUF model.
//! Each checkout gets a symlink `.eamet -> $EAMET_HOME`; `.cargo/config.toml` points `LIBTORCH`
//! at `.eamet/libtorch`, so `cargo build/test/run` need no environment variables.

mod setup;

use std::process::ExitCode;

fn usage() -> &'static str {
    "usage: cargo xtask <setup|demo|test|pyenv|paths> [ARGS...]\n\
     \n\
     setup [--model NAME]...\n\
                  install libtorch, OpenBLAS and the SmolLM2 model (idempotent); each\n\
                  --model also fetches that model (smollm2-135m, gemma3-270m)\n\
     demo [ARGS]  setup, then run the main job: `eamet` with ARGS (default: the demo)\n\
     test [ARGS]  setup, then `cargo test --workspace ARGS`\n\
     pyenv        create $EAMET_HOME/pyenv (torch, transformers, gguf) for golden files\n\
     paths        print the cache, model and libtorch locations\n\
     \n\
     Environment: EAMET_HOME (default ~/.cache/eamet)."
}

/// The models named by `--model NAME` / `--model=NAME` in `setup`'s arguments.
fn extra_models(args: &[String]) -> setup::Result<Vec<&'static setup::ModelSpec>> {
    let mut out = Vec::new();
    let mut it = args.iter();
    while let Some(a) = it.next() {
        let name = if a == "--model" {
            it.next()
                .ok_or("`--model` needs a name\nfix: cargo xtask setup --model gemma3-270m")?
                .as_str()
        } else if let Some(n) = a.strip_prefix("--model=") {
            n
        } else {
            return Err(format!(
                "unknown argument `{a}` to setup\nfix: cargo xtask setup [--model NAME]..."
            ));
        };
        out.push(setup::model_spec(name)?);
    }
    Ok(out)
}

fn main() -> ExitCode {
    // pip warns about running as root on every call; the installs here go to a private
    // --target directory, so the warning does not apply. Older pips ignore the variable.
    std::env::set_var("PIP_ROOT_USER_ACTION", "ignore");
    let mut args = std::env::args().skip(1);
    let cmd = args.next();
    let rest: Vec<String> = args.collect();
    let result = match cmd.as_deref() {
        Some("setup") => extra_models(&rest)
            .and_then(|extra| setup::Layout::discover().and_then(|l| l.setup(&extra).map(|_| ()))),
        Some("demo") => setup::Layout::discover().and_then(|l| l.demo(&rest)),
        Some("test") => setup::Layout::discover().and_then(|l| l.test(&rest)),
        Some("pyenv") => setup::Layout::discover().and_then(|l| l.pyenv()),
        Some("paths") => setup::Layout::discover().map(|l| l.print_paths()),
        Some("-h") | Some("--help") | Some("help") => {
            println!("{}", usage());
            Ok(())
        }
        other => {
            eprintln!("{}", usage());
            if let Some(c) = other {
                eprintln!("\nunknown command `{c}`");
            }
            return ExitCode::from(2);
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("\nxtask error: {e}");
            ExitCode::FAILURE
        }
    }
}
