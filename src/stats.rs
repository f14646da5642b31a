//! Second-moment statistics of `W_out` keys over generic text (`C = E[k kᵀ]`, ALGORITHM.md §5),
//! computed with the model, cached on disk, shardable.
//!
//! The model runs only up to the last requested layer, in batches; the keys of every non-pad
//! token are accumulated with one GEMM per batch and layer in libtorch (f64 accumulators), and
//! moved to [`KeyStats`] once at the end. Results are cached per (model SHA-256, layer, corpus
//! hash, document count, and the compute dtype when it is not f32) with `eamet-solve`'s checked
//! file format, so a changed model, corpus, sample count or dtype is recomputed, never silently
//! reused. Keys reach the accumulators in f32 whatever the compute dtype (the model returns
//! captures in f32) and are summed in f64.

use crate::Error;
use eamet_hooks::tch::{Device, Kind, Tensor};
use eamet_hooks::{Batch, Capture, Dtype, EditableLm, Padding, Plan, Site};
use eamet_solve::{KeyStats, StatsProvenance, StatsRequest, WriteMode};
use indicatif::{ProgressBar, ProgressStyle};
use sha2::{Digest, Sha256};
use std::path::{Path, PathBuf};

/// A list of documents with a stable identity.
#[derive(Debug, Clone)]
pub struct Corpus {
    /// Human-readable identifier (file names, or the generator recipe).
    pub id: String,
    /// SHA-256 over the documents (and recipe): part of the cache key.
    pub hash: String,
    /// The documents.
    pub docs: Vec<String>,
}

impl Corpus {
    /// A corpus from in-memory documents.
    pub fn from_docs(id: impl Into<String>, docs: Vec<String>) -> Self {
        let mut h = Sha256::new();
        for d in &docs {
            h.update((d.len() as u64).to_le_bytes());
            h.update(d.as_bytes());
        }
        let hash = h.finalize().iter().map(|b| format!("{b:02x}")).collect();
        Corpus {
            id: id.into(),
            hash,
            docs,
        }
    }

    /// Read documents from files: `.jsonl` (one JSON object per line with a `"text"` string)
    /// or plain text (every non-empty line that is not a WikiText ` = Heading = ` line is one
    /// document — WikiText lines are paragraphs).
    pub fn from_files(paths: &[PathBuf]) -> Result<Self, Error> {
        let mut docs = Vec::new();
        let mut names = Vec::new();
        for p in paths {
            let text = std::fs::read_to_string(p)
                .map_err(|e| Error::Input(format!("corpus file {}: {e}", p.display())))?;
            names.push(
                p.file_name()
                    .map(|n| n.to_string_lossy().into_owned())
                    .unwrap_or_default(),
            );
            if p.extension().is_some_and(|e| e == "jsonl") {
                for (i, line) in text
                    .lines()
                    .enumerate()
                    .filter(|(_, l)| !l.trim().is_empty())
                {
                    let v: serde_json::Value = serde_json::from_str(line).map_err(|e| {
                        Error::Input(format!("{} line {}: {e}", p.display(), i + 1))
                    })?;
                    let t = v.get("text").and_then(|t| t.as_str()).ok_or_else(|| {
                        Error::Input(format!(
                            "{} line {}: no \"text\" string field",
                            p.display(),
                            i + 1
                        ))
                    })?;
                    if !t.trim().is_empty() {
                        docs.push(t.to_string());
                    }
                }
            } else {
                for line in text.lines() {
                    let t = line.trim();
                    let heading = t.starts_with('=') && t.ends_with('=');
                    if !t.is_empty() && !heading {
                        docs.push(t.to_string());
                    }
                }
            }
        }
        if docs.is_empty() {
            return Err(Error::Input("the corpus files hold no documents".into()));
        }
        Ok(Self::from_docs(names.join("+"), docs))
    }

    /// The first `n` documents (same identity: the document count is part of the cache key).
    pub fn take(&self, n: usize) -> Corpus {
        Corpus {
            id: self.id.clone(),
            hash: self.hash.clone(),
            docs: self.docs.iter().take(n).cloned().collect(),
        }
    }

    /// Shard `i` of `n` (documents `i, i+n, i+2n, ...`). Shards keep the corpus identity, so
    /// their statistics files merge (`eamet_solve::KeyStats::merge_files`).
    pub fn shard(&self, i: usize, n: usize) -> Result<Corpus, Error> {
        if n == 0 || i >= n {
            return Err(Error::Input(format!("shard {i}/{n}: need 0 <= i < n")));
        }
        Ok(Corpus {
            id: self.id.clone(),
            hash: self.hash.clone(),
            docs: self.docs.iter().skip(i).step_by(n).cloned().collect(),
        })
    }
}

/// How statistics are collected.
#[derive(Debug, Clone)]
pub struct StatsConfig {
    /// Documents are truncated to this many tokens.
    pub max_tokens: usize,
    /// Documents per forward pass.
    pub batch_size: usize,
    /// Show a progress bar.
    pub progress: bool,
}

impl Default for StatsConfig {
    fn default() -> Self {
        StatsConfig {
            max_tokens: 128,
            batch_size: 16,
            progress: false,
        }
    }
}

/// Accumulate `Σ k kᵀ`, `Σ k` and the token count at each of `layers` over the corpus.
pub fn collect_key_stats<M: EditableLm + ?Sized>(
    model: &M,
    corpus: &Corpus,
    layers: &[usize],
    cfg: &StatsConfig,
) -> Result<Vec<KeyStats>, Error> {
    if layers.is_empty() {
        return Err(Error::Input("no layers requested".into()));
    }
    if cfg.batch_size == 0 || cfg.max_tokens == 0 {
        return Err(Error::Input(
            "batch_size and max_tokens must be positive".into(),
        ));
    }
    let last = *layers.iter().max().expect("non-empty");
    let d = model.config().d_ff as i64;
    let dev = model.device();
    let _g = eamet_hooks::tch::no_grad_guard();
    let mut outer: Vec<Tensor> = layers
        .iter()
        .map(|_| Tensor::zeros([d, d], (Kind::Double, dev)))
        .collect();
    let mut sums: Vec<Tensor> = layers
        .iter()
        .map(|_| Tensor::zeros([d], (Kind::Double, dev)))
        .collect();
    let mut tokens = 0u64;
    let mut samples = 0u64;
    let bar = progress_bar(cfg.progress, corpus.docs.len() as u64, "key statistics");
    let tok = model.tokenizer();
    for chunk in corpus.docs.chunks(cfg.batch_size) {
        let mut ids = Vec::with_capacity(chunk.len());
        for doc in chunk {
            let mut t = tok.encode(doc).map_err(eamet_hooks::ModelError::from)?;
            t.truncate(cfg.max_tokens);
            if !t.is_empty() {
                ids.push(t);
            }
        }
        bar.inc(chunk.len() as u64);
        if ids.is_empty() {
            continue;
        }
        let batch = Batch::new(&ids, tok.pad_id, Padding::Right, dev)?;
        let plan = Plan {
            captures: layers
                .iter()
                .map(|&layer| Capture {
                    layer,
                    site: Site::MlpKey,
                    at: None,
                })
                .collect(),
            stop_after: Some(last),
            ..Default::default()
        };
        let out = model.forward(&batch, &plan)?;
        let valid = batch.mask.reshape([-1]).nonzero().reshape([-1]);
        for (i, k) in out.captures.iter().enumerate() {
            let k = k
                .reshape([-1, d])
                .index_select(0, &valid)
                .to_kind(Kind::Double);
            outer[i] = &outer[i] + k.tr().matmul(&k);
            sums[i] = &sums[i] + k.sum_dim_intlist(0, false, Kind::Double);
        }
        tokens += valid.size()[0] as u64;
        samples += ids.len() as u64;
    }
    bar.finish_and_clear();
    let mut out = Vec::with_capacity(layers.len());
    for (o, s) in outer.into_iter().zip(sums) {
        let o = to_array2(&o)?;
        let s = ndarray::Array1::from(Vec::<f64>::try_from(s.to_device(Device::Cpu))?);
        out.push(KeyStats::from_sums(o, s, tokens, samples)?);
    }
    Ok(out)
}

fn to_array2(t: &Tensor) -> Result<ndarray::Array2<f64>, Error> {
    let (r, c) = (t.size()[0] as usize, t.size()[1] as usize);
    let v = Vec::<f64>::try_from(t.to_device(Device::Cpu).contiguous().reshape([-1]))?;
    ndarray::Array2::from_shape_vec((r, c), v).map_err(|e| Error::Input(e.to_string()))
}

pub(crate) fn progress_bar(show: bool, len: u64, what: &str) -> ProgressBar {
    if !show {
        return ProgressBar::hidden();
    }
    let bar = ProgressBar::new(len);
    bar.set_style(
        ProgressStyle::with_template("{msg:>16} [{bar:30}] {pos}/{len} {per_sec} eta {eta}")
            .unwrap_or_else(|_| ProgressStyle::default_bar())
            .progress_chars("=> "),
    );
    bar.set_message(what.to_string());
    bar
}

/// Cache file of one layer's statistics.
pub fn stats_path(cache_dir: &Path, model_sha: &str, corpus: &Corpus, layer: usize) -> PathBuf {
    stats_path_for(cache_dir, model_sha, &corpus.hash, corpus.docs.len(), layer)
}

/// [`stats_path`] of statistics computed by a model in `dtype`.
pub fn stats_path_dtype(
    cache_dir: &Path,
    model_sha: &str,
    corpus: &Corpus,
    layer: usize,
    dtype: Dtype,
) -> PathBuf {
    stats_path_for_dtype(
        cache_dir,
        model_sha,
        &corpus.hash,
        corpus.docs.len(),
        layer,
        dtype,
    )
}

/// Cache file of one layer's statistics, from the parts of the key (model SHA-256, corpus hash,
/// number of documents, layer): where `eamet stats merge --into-cache` puts merged shards.
pub fn stats_path_for(
    cache_dir: &Path,
    model_sha: &str,
    corpus_hash: &str,
    docs: usize,
    layer: usize,
) -> PathBuf {
    stats_path_for_dtype(cache_dir, model_sha, corpus_hash, docs, layer, Dtype::F32)
}

/// [`stats_path_for`] of statistics computed by a model in `dtype`: the f32 name, with
/// `-bf16` / `-f16` before the extension for the other dtypes (so f32 caches keep their names).
pub fn stats_path_for_dtype(
    cache_dir: &Path,
    model_sha: &str,
    corpus_hash: &str,
    docs: usize,
    layer: usize,
    dtype: Dtype,
) -> PathBuf {
    let suffix = match dtype {
        Dtype::F32 => String::new(),
        d => format!("-{d}"),
    };
    cache_dir
        .join("stats")
        .join(&model_sha[..model_sha.len().min(16)])
        .join(format!(
            "{}-n{docs}-layer{layer}{suffix}.safetensors",
            &corpus_hash[..corpus_hash.len().min(16)],
        ))
}

/// What a statistics file of `layer` computed from `corpus` on `model` records about itself
/// (`dtype`: the model's compute dtype as PyTorch names it, `float32` by default).
pub fn provenance<M: EditableLm + ?Sized>(
    model: &M,
    corpus: &Corpus,
    layer: usize,
) -> Result<StatsProvenance, Error> {
    Ok(StatsProvenance {
        model_id: model.config().arch_name.clone(),
        model_hash: model.base_sha256()?,
        layer,
        corpus_id: corpus.id.clone(),
        corpus_hash: corpus.hash.clone(),
        dtype: model.dtype().torch_name().into(),
    })
}

/// Load every layer's statistics from the cache, computing (and saving) the missing ones in one
/// pass over the corpus. Returns the statistics and, per layer, whether it came from the cache.
pub fn load_or_collect<M: EditableLm + ?Sized>(
    model: &M,
    corpus: &Corpus,
    layers: &[usize],
    cfg: &StatsConfig,
    cache_dir: &Path,
) -> Result<(Vec<KeyStats>, Vec<bool>), Error> {
    let sha = model.base_sha256()?;
    let mut found: Vec<Option<KeyStats>> = Vec::with_capacity(layers.len());
    for &l in layers {
        let path = stats_path_dtype(cache_dir, &sha, corpus, l, model.dtype());
        let request = StatsRequest::new(provenance(model, corpus, l)?)
            .with_samples(corpus.docs.len() as u64)
            .with_dim(model.config().d_ff);
        found.push(if path.exists() {
            Some(KeyStats::load(&path, &request)?)
        } else {
            None
        });
    }
    let missing: Vec<usize> = layers
        .iter()
        .zip(&found)
        .filter(|(_, f)| f.is_none())
        .map(|(&l, _)| l)
        .collect();
    let cached: Vec<bool> = found.iter().map(Option::is_some).collect();
    if !missing.is_empty() {
        let fresh = collect_key_stats(model, corpus, &missing, cfg)?;
        for (&l, mut st) in missing.iter().zip(fresh) {
            // The sample count in the cache key is the number of documents asked for.
            st.add_samples((corpus.docs.len() as u64).saturating_sub(st.samples()));
            let path = stats_path_dtype(cache_dir, &sha, corpus, l, model.dtype());
            if let Some(dir) = path.parent() {
                std::fs::create_dir_all(dir)
                    .map_err(|e| Error::Input(format!("{}: {e}", dir.display())))?;
            }
            st.save(&path, &provenance(model, corpus, l)?, WriteMode::Overwrite)?;
            let i = layers
                .iter()
                .position(|&x| x == l)
                .expect("missing layer is requested");
            found[i] = Some(st);
        }
    }
    Ok((
        found
            .into_iter()
            .map(|f| f.expect("every layer filled"))
            .collect(),
        cached,
    ))
}

/// Seed words of the model-written default corpus.
const CORPUS_SEEDS: [&str; 16] = [
    "The",
    "In",
    "However,",
    "Many",
    "A",
    "It",
    "When",
    "This",
    "There",
    "One",
    "After",
    "People",
    "Scientists",
    "The city",
    "During",
    "Most",
];

/// Generic text written by the model itself, so statistics need no download: `n` documents of
/// up to `max_tokens` new tokens sampled (temperature 1, top-k 50, seed 1234) from fixed seed
/// words. Cached as JSON under `<cache_dir>/corpus/` per model and size (and compute dtype,
/// when not f32: sampling in bf16 writes other text).
pub fn generated_corpus<M: EditableLm + ?Sized>(
    model: &M,
    n: usize,
    max_tokens: usize,
    cache_dir: &Path,
    progress: bool,
) -> Result<Corpus, Error> {
    let sha = model.base_sha256()?;
    let suffix = match model.dtype() {
        Dtype::F32 => String::new(),
        d => format!("-{d}"),
    };
    // The generator is part of the identity: texts sampled by the earlier ChaCha20 sampler
    // (files without the tag) are never taken for these.
    let rng = eamet_hooks::rng::SplitMix64::NAME;
    let path = cache_dir.join("corpus").join(format!(
        "{}-generated-{rng}-n{n}-t{max_tokens}{suffix}.json",
        &sha[..sha.len().min(16)]
    ));
    let id = format!("model-generated({rng} seed 1234, n {n}, {max_tokens} tokens)");
    if let Ok(text) = std::fs::read_to_string(&path) {
        if let Ok(docs) = serde_json::from_str::<Vec<String>>(&text) {
            if docs.len() == n {
                return Ok(Corpus::from_docs(id, docs));
            }
        }
    }
    let tok = model.tokenizer();
    let spec = eamet_optim::PrefixSpec {
        seeds: vec![],
        length: eamet_optim::PrefixLength::NewTokens(max_tokens),
        temperature: 1.0,
        top_k: 50,
        top_p: 1.0,
        seed: 1234,
    };
    let mut sampler = eamet_optim::Sampler::new(spec);
    let bar = progress_bar(progress, n as u64, "corpus (model)");
    let mut docs = Vec::with_capacity(n);
    let stop: Vec<u32> = tok.eos_id.into_iter().collect();
    while docs.len() < n {
        let rows = (n - docs.len()).min(32);
        let seeds: Vec<&str> = (0..rows)
            .map(|i| CORPUS_SEEDS[(docs.len() + i) % CORPUS_SEEDS.len()])
            .collect();
        let prompts = seeds
            .iter()
            .map(|s| tok.encode(s))
            .collect::<Result<Vec<_>, _>>()
            .map_err(eamet_hooks::ModelError::from)?;
        // Top-50 candidates by a linear-time selection, then the seeded sampler over them.
        let mut pick = |_row: usize, logits: &[f32]| {
            let mut idx: Vec<u32> = (0..logits.len() as u32).collect();
            let k = 50.min(idx.len());
            if k < idx.len() {
                idx.select_nth_unstable_by(k - 1, |&a, &b| {
                    logits[b as usize]
                        .total_cmp(&logits[a as usize])
                        .then(a.cmp(&b))
                });
                idx.truncate(k);
            }
            idx.sort_unstable();
            let sub: Vec<f32> = idx.iter().map(|&i| logits[i as usize]).collect();
            idx[sampler.pick(&sub) as usize]
        };
        let gens = model.generate_with(&prompts, max_tokens, &stop, Some(&mut pick))?;
        for (s, g) in seeds.iter().zip(gens) {
            let text = tok
                .decode(&g.tokens)
                .map_err(eamet_hooks::ModelError::from)?;
            docs.push(format!("{s}{text}"));
        }
        bar.inc(rows as u64);
    }
    bar.finish_and_clear();
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)
            .map_err(|e| Error::Input(format!("{}: {e}", dir.display())))?;
        let tmp = path.with_extension("json.tmp");
        std::fs::write(&tmp, serde_json::to_string(&docs).unwrap_or_default())
            .and_then(|_| std::fs::rename(&tmp, &path))
            .map_err(|e| Error::Input(format!("{}: {e}", path.display())))?;
    }
    Ok(Corpus::from_docs(id, docs))
}
