//! `eamet stats` and `eamet stats merge`.

use crate::common::{cache_dir, corpus, load_model, parse_shard, refuse_existing, resolve_model};
use anyhow::{bail, Result};
use eamet::hooks::EditableLm;
use eamet::solve::{KeyStats, WriteMode};
use eamet::stats::{
    collect_key_stats, generated_corpus, load_or_collect, provenance, stats_path_for_dtype,
    StatsConfig,
};
use std::path::PathBuf;

/// Arguments of `eamet stats`.
pub struct StatsArgs {
    pub model: Option<PathBuf>,
    pub layers: Vec<usize>,
    pub corpus: Vec<PathBuf>,
    pub samples: usize,
    pub max_tokens: usize,
    pub shard: Option<String>,
    pub out: Option<PathBuf>,
    pub load: eamet::hooks::LoadOptions,
    pub json: bool,
}

pub fn run(a: StatsArgs) -> Result<()> {
    let shard = a.shard.as_deref().map(parse_shard).transpose()?;
    if a.samples == 0 || a.max_tokens == 0 {
        bail!("--samples and --max-tokens must be at least 1");
    }
    if a.layers.is_empty() {
        bail!("--layers must name at least one layer");
    }
    let files = corpus(&a.corpus)?;
    let path = resolve_model(a.model)?;
    let model = load_model(&path, a.load)?;
    let n_layers = model.config().n_layers;
    if let Some(&bad) = a.layers.iter().find(|&&l| l >= n_layers) {
        bail!("layer {bad} is out of range: the model has {n_layers} layers");
    }
    let cache = cache_dir()?;
    let corpus = match files {
        Some(c) => c.take(a.samples),
        None => generated_corpus(&model, a.samples, a.max_tokens, &cache, !a.json)?,
    };
    if corpus.docs.is_empty() {
        bail!("the corpus is empty");
    }
    let cfg = StatsConfig {
        max_tokens: a.max_tokens,
        batch_size: 16,
        progress: !a.json,
    };
    let mut written = Vec::new();
    match shard {
        None => {
            if a.out.is_some() {
                bail!("--out is for shards (--shard i/n); whole statistics go to the cache");
            }
            let (stats, cached) = load_or_collect(&model, &corpus, &a.layers, &cfg, &cache)?;
            let sha = model.base_sha256()?;
            for ((&l, st), c) in a.layers.iter().zip(&stats).zip(&cached) {
                let p = stats_path_for_dtype(
                    &cache,
                    &sha,
                    &corpus.hash,
                    corpus.docs.len(),
                    l,
                    model.dtype(),
                );
                written.push(serde_json::json!({
                    "layer": l, "path": p, "cached": c, "tokens": st.tokens(), "samples": st.samples(),
                }));
            }
        }
        Some((i, n)) => {
            let out = a.out.unwrap_or_else(|| PathBuf::from("stats-shards"));
            let names: Vec<PathBuf> = a
                .layers
                .iter()
                .map(|l| out.join(format!("shard-{i}-of-{n}-layer{l}.safetensors")))
                .collect();
            for p in &names {
                refuse_existing(p, "shard file")?;
            }
            let part = corpus.shard(i, n)?;
            let stats = collect_key_stats(&model, &part, &a.layers, &cfg)?;
            std::fs::create_dir_all(&out)?;
            for ((&l, mut st), p) in a.layers.iter().zip(stats).zip(&names) {
                st.add_samples((part.docs.len() as u64).saturating_sub(st.samples()));
                st.save(p, &provenance(&model, &corpus, l)?, WriteMode::CreateNew)?;
                written.push(serde_json::json!({
                    "layer": l, "path": p, "cached": false, "tokens": st.tokens(), "samples": st.samples(),
                }));
            }
        }
    }
    if a.json {
        println!("{}", serde_json::to_string_pretty(&written)?);
    } else {
        println!("corpus  {} ({} documents)", corpus.id, corpus.docs.len());
        for w in &written {
            println!(
                "layer {}: {} tokens from {} documents -> {}{}",
                w["layer"],
                w["tokens"],
                w["samples"],
                w["path"].as_str().unwrap_or_default(),
                if w["cached"].as_bool() == Some(true) {
                    " (already cached)"
                } else {
                    ""
                }
            );
        }
    }
    Ok(())
}

/// Arguments of `eamet stats merge`.
pub struct MergeArgs {
    pub shards: Vec<PathBuf>,
    pub out: Option<PathBuf>,
    pub json: bool,
}

pub fn merge(a: MergeArgs) -> Result<()> {
    if a.shards.is_empty() {
        bail!("name the shard files to merge");
    }
    for s in &a.shards {
        if !s.exists() {
            bail!("shard file {}: no such file", s.display());
        }
    }
    let (stats, meta) = KeyStats::merge_files(&a.shards)?;
    let out = match a.out {
        Some(p) => p,
        None => stats_path_for_dtype(
            &cache_dir()?,
            &meta.provenance.model_hash,
            &meta.provenance.corpus_hash,
            meta.samples as usize,
            meta.provenance.layer,
            meta.provenance.dtype.parse().map_err(|_| {
                anyhow::anyhow!(
                    "the shards record dtype {:?}, not float32, bfloat16 or float16",
                    meta.provenance.dtype
                )
            })?,
        ),
    };
    refuse_existing(&out, "statistics file")?;
    if let Some(dir) = out.parent() {
        std::fs::create_dir_all(dir)?;
    }
    stats.save(&out, &meta.provenance, WriteMode::CreateNew)?;
    if a.json {
        println!(
            "{}",
            serde_json::json!({"path": out, "layer": meta.provenance.layer, "samples": stats.samples(), "tokens": stats.tokens()})
        );
    } else {
        println!(
            "merged {} shards of layer {}: {} tokens from {} documents -> {}",
            a.shards.len(),
            meta.provenance.layer,
            stats.tokens(),
            stats.samples(),
            out.display()
        );
    }
    Ok(())
}
