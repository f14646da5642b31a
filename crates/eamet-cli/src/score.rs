//! `eamet score`: misalignment of MEMIT-style (independently optimized) residuals, without
//! editing the model.

use crate::common::{hparams_any_spread, load_model, read_records, resolve_model};
use anyhow::Result;
use eamet::align::{misalignment, KlDirection, Neighbourhood, ScoreConfig, ZeroVectors};
use eamet::hooks::EditableLm;
use eamet::optim::{compute_keys, optimize_residuals, prepare_facts, ContextPrefixes, RunOptions};
use eamet::{Fact, Method};
use std::path::PathBuf;

/// Arguments of `eamet score`.
pub struct ScoreArgs {
    pub model: Option<PathBuf>,
    pub facts: Option<PathBuf>,
    pub n: Option<usize>,
    pub offset: usize,
    pub method: String,
    pub hparams: Option<PathBuf>,
    pub layers: Option<Vec<usize>>,
    pub load: eamet::hooks::LoadOptions,
    pub json: bool,
}

pub fn run(a: ScoreArgs) -> Result<()> {
    let method = Method::parse(&a.method)?;
    let (records, source, _) = read_records(a.facts.as_deref(), a.offset, a.n)?;
    let facts: Vec<Fact> = records.iter().map(|r| r.rewrite.to_fact()).collect();
    eamet::optim::validate_facts(&facts)?;
    let path = resolve_model(a.model)?;
    let model = load_model(&path, a.load)?;
    // Residuals are optimized at the last layer only: no spread to refuse on a post-norm model.
    let hp = hparams_any_spread(method, a.hparams.as_deref(), a.layers, None, model.config())?;
    let l_r = *hp
        .layers
        .last()
        .ok_or_else(|| anyhow::anyhow!("no layers to edit"))?;
    let prefixes = ContextPrefixes::generate(&model, &hp.prefixes)?;
    let prepared = prepare_facts(model.tokenizer(), &facts, &prefixes)?;
    let keys = compute_keys(&model, &prepared, l_r)?;
    let schedule = method.schedule(&hp);
    let residuals = optimize_residuals(
        &model,
        &prepared,
        keys.view(),
        l_r,
        &hp.residual.check()?,
        schedule,
        &RunOptions {
            progress: !a.json,
            ..Default::default()
        },
    )?;
    let mut rows = Vec::new();
    for (neigh, nname) in [
        (Neighbourhood::Prior, "j < i"),
        (Neighbourhood::AllOthers, "j != i"),
    ] {
        for (dir, dname) in [
            (KlDirection::ResidualKey, "KL(P_r || P_k)"),
            (KlDirection::KeyResidual, "KL(P_k || P_r)"),
        ] {
            let cfg = ScoreConfig {
                neighbourhood: neigh,
                divergence: dir,
                zero_vectors: ZeroVectors::CosineZero,
                ..ScoreConfig::default()
            };
            let s = misalignment(keys.view(), residuals.deltas.view(), &cfg)?;
            rows.push((nname, dname, s));
        }
    }
    if a.json {
        let v: Vec<_> = rows
            .iter()
            .map(|(n, d, s)| {
                serde_json::json!({
                    "neighbourhood": n, "divergence": d, "total": s.total(),
                    "median": s.quantile(0.5), "p90": s.quantile(0.9), "per_fact": s.per_fact(),
                })
            })
            .collect();
        println!(
            "{}",
            serde_json::to_string_pretty(&serde_json::json!({
                "facts": facts.len(), "source": source, "layer": l_r,
                "schedule": format!("{schedule:?}"), "tau": 0.07, "scores": v,
                "final_nll": residuals.stats.iter().map(|s| s.final_nll).collect::<Vec<_>>(),
            }))?
        );
    } else {
        println!(
            "{} facts from {source}, residuals at layer {l_r} optimized {} (no edit written), tau 0.07",
            facts.len(),
            eamet::evaluation::describe_residual_schedule(schedule)
        );
        println!("| neighbourhood | divergence | total | mean | median | p90 | max |");
        println!("|---|---|---|---|---|---|---|");
        for (n, d, s) in &rows {
            if let Some(q) = s.summary() {
                println!(
                    "| {n} | {d} | {:.3} | {:.4} | {:.4} | {:.4} | {:.4} |",
                    q.total, q.mean, q.median, q.p90, q.max
                );
            }
        }
    }
    Ok(())
}
