//! `eamet apply-patch`: apply a patch file to its base model and show what changed.

use crate::common::{load_model, resolve_model};
use anyhow::{bail, Result};
use eamet::hooks::patch::Patch;
use eamet::hooks::LlamaModel;
use std::path::PathBuf;

/// Arguments of `eamet apply-patch`.
pub struct PatchArgs {
    pub model: Option<PathBuf>,
    pub patch: PathBuf,
    pub prompts: Vec<String>,
    pub max_new: usize,
    pub load: eamet::hooks::LoadOptions,
    pub json: bool,
}

fn complete(model: &LlamaModel, prompts: &[String], max_new: usize) -> Result<Vec<String>> {
    Ok(eamet::eval::metrics::greedy(model, prompts, max_new, 32)?
        .into_iter()
        .map(|c| c.text)
        .collect())
}

pub fn run(a: PatchArgs) -> Result<()> {
    if !a.patch.exists() {
        bail!("patch file {}: no such file", a.patch.display());
    }
    let patch = Patch::load(&a.patch)?;
    let path = resolve_model(a.model)?;
    let mut model = load_model(&path, a.load)?;
    let prompts = if a.prompts.is_empty() {
        crate::common::read_records(None, 0, None)?
            .0
            .iter()
            .map(|r| r.rewrite.filled_prompt())
            .collect()
    } else {
        a.prompts
    };
    let before = complete(&model, &prompts, a.max_new)?;
    patch.apply(&mut model, &a.patch)?;
    let after = complete(&model, &prompts, a.max_new)?;
    if a.json {
        let v: Vec<_> = prompts
            .iter()
            .zip(&before)
            .zip(&after)
            .map(|((p, b), a)| serde_json::json!({"prompt": p, "before": b, "after": a}))
            .collect();
        println!(
            "{}",
            serde_json::to_string_pretty(&serde_json::json!({
                "method": patch.meta.method, "layers": patch.deltas.keys().collect::<Vec<_>>(),
                "completions": v,
            }))?
        );
    } else {
        println!(
            "patch {} ({}, layers {:?}) applied to {}",
            a.patch.display(),
            patch.meta.method,
            patch.deltas.keys().collect::<Vec<_>>(),
            path.display()
        );
        println!("| prompt | before | after |\n|---|---|---|");
        for ((p, b), a) in prompts.iter().zip(&before).zip(&after) {
            println!(
                "| {p} | {} | {} |",
                b.replace('\n', " ").trim(),
                a.replace('\n', " ").trim()
            );
        }
    }
    Ok(())
}
