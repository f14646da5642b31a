//! Context prefixes sampled from the unedited model (ALGORITHM.md §1).

use std::path::Path;

use eamet_hooks::rng::SplitMix64;
use eamet_hooks::tch::{self, Kind};
use eamet_hooks::{Batch, EditableLm, LogProbs, ModelError, Padding, Plan};
use serde::{Deserialize, Serialize};

use crate::error::{io_err, OptimError, Result};

/// How many tokens a prefix sample may have.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PrefixLength {
    /// At most this many new tokens after the seed word (EAMET: 10).
    NewTokens(usize),
    /// At most this many tokens in total, seed included (original MEMIT: 10).
    TotalTokens(usize),
}

/// How the context prefixes are sampled.
///
/// ```
/// use eamet_optim::PrefixSpec;
/// assert_eq!(PrefixSpec::eamet().seeds.len(), 12);
/// assert_eq!(PrefixSpec::memit().seeds.len(), 5);
/// ```
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PrefixSpec {
    /// Seed words; one sample each (repeats give several samples).
    pub seeds: Vec<String>,
    /// Sample length.
    pub length: PrefixLength,
    /// Softmax temperature (> 0).
    pub temperature: f64,
    /// Keep only the `top_k` most likely tokens (0: all).
    pub top_k: usize,
    /// Nucleus: keep the smallest set of tokens whose probability reaches `top_p` (1: all).
    pub top_p: f64,
    /// Seed of the generator, [`SplitMix64`] (until 2026-12 it was ChaCha20; prefixes that
    /// older run directories saved are reused as saved, never sampled again).
    pub seed: u64,
}

impl PrefixSpec {
    /// EAMET: 12 samples of up to 10 new tokens, temperature 0.5, top-k 100, top-p 0.9.
    pub fn eamet() -> Self {
        let seeds = [
            "The",
            "Therefore",
            "Because",
            "I",
            "You",
            "However",
            "Also",
            "Nevertheless",
            "He",
            "It",
            "Can",
            "Because",
        ];
        PrefixSpec {
            seeds: seeds.iter().map(|s| s.to_string()).collect(),
            length: PrefixLength::NewTokens(10),
            temperature: 0.5,
            top_k: 100,
            top_p: 0.9,
            seed: 0,
        }
    }

    /// Original MEMIT (`generate_fast`): 5 seeds, one sample each, 10 tokens in total, top-k 5.
    pub fn memit() -> Self {
        PrefixSpec {
            seeds: ["The", "Therefore", "Because", "I", "You"]
                .iter()
                .map(|s| s.to_string())
                .collect(),
            length: PrefixLength::TotalTokens(10),
            temperature: 1.0,
            top_k: 5,
            top_p: 1.0,
            seed: 0,
        }
    }

    fn check(&self) -> Result<()> {
        let bad = |field: &'static str, reason: &str| {
            Err(OptimError::Hparams {
                field,
                reason: reason.into(),
            })
        };
        if !(self.temperature.is_finite() && self.temperature > 0.0) {
            return bad("temperature", "must be finite and > 0");
        }
        if !(self.top_p > 0.0 && self.top_p <= 1.0) {
            return bad("top_p", "must be in (0, 1]");
        }
        if self.seeds.iter().any(|s| s.is_empty()) {
            return bad("seeds", "seed words must not be empty");
        }
        Ok(())
    }
}

/// The context templates of a run: `templates[0] = "{}"` and one `"<sample>. {}"` per seed.
/// Generated once per model and stored in the run directory ([`ContextPrefixes::save`]).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ContextPrefixes {
    /// The templates, each with exactly one `{}`; the first is the bare `"{}"`.
    pub templates: Vec<String>,
    /// How they were sampled (`None` when given by hand).
    pub spec: Option<PrefixSpec>,
    /// [`EditableLm::base_sha256`] of the model that sampled them (empty when given by hand).
    pub model_sha256: String,
    /// The generator that sampled them ([`SplitMix64::NAME`]); `None` when given by hand, and
    /// in files written before it was recorded (those were sampled with ChaCha20).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub generator: Option<String>,
}

impl ContextPrefixes {
    /// Templates given by hand: `"{}"` followed by `"<prefix>. {}"` for each prefix (braces in
    /// a prefix become spaces).
    pub fn from_prefixes<S: AsRef<str>>(prefixes: &[S]) -> Self {
        let mut templates = vec!["{}".to_string()];
        templates.extend(prefixes.iter().map(|p| template_of(p.as_ref())));
        ContextPrefixes {
            templates,
            spec: None,
            model_sha256: String::new(),
            generator: None,
        }
    }

    /// Samples the prefixes with `model` (unedited), deterministically for a given spec, model
    /// and thread count. One forward per new token over the still-running rows (no KV cache:
    /// the sequences are a dozen tokens).
    ///
    /// # Errors
    /// Invalid spec ([`OptimError::Hparams`]); model errors.
    pub fn generate<M: EditableLm + ?Sized>(model: &M, spec: &PrefixSpec) -> Result<Self> {
        spec.check()?;
        let _g = tch::no_grad_guard();
        let tok = model.tokenizer();
        let vocab = tok.vocab_size().min(model.config().vocab_size);
        let mut rng = SplitMix64::new(spec.seed);
        let mut rows: Vec<Vec<u32>> = Vec::with_capacity(spec.seeds.len());
        let mut budget: Vec<usize> = Vec::with_capacity(spec.seeds.len());
        for s in &spec.seeds {
            let ids = tok.encode(s).map_err(ModelError::from)?;
            let real = ids.len() - usize::from(tok.add_bos && tok.bos_id.is_some());
            budget.push(match spec.length {
                PrefixLength::NewTokens(n) => n,
                PrefixLength::TotalTokens(n) => n.saturating_sub(real),
            });
            rows.push(ids);
        }
        let mut active: Vec<usize> = (0..rows.len()).filter(|&r| budget[r] > 0).collect();
        let specials: Vec<u32> = [tok.bos_id, tok.eos_id].into_iter().flatten().collect();
        while !active.is_empty() {
            let seqs: Vec<Vec<u32>> = active.iter().map(|&r| rows[r].clone()).collect();
            let batch = Batch::new(&seqs, tok.pad_id, Padding::Left, model.device())?;
            let at: Vec<(usize, usize)> = batch.last_slots().into_iter().enumerate().collect();
            let out = model.forward(
                &batch,
                &Plan {
                    logprobs: Some(LogProbs::Full { at }),
                    ..Default::default()
                },
            )?;
            let lp = out
                .logprobs
                .ok_or_else(|| OptimError::Input("the model returned no log-probs".into()))?
                .to_kind(Kind::Double)
                .to_device(tch::Device::Cpu);
            let lp: Vec<Vec<f64>> = Vec::<Vec<f64>>::try_from(lp)
                .map_err(|e| OptimError::Input(format!("log-probs: {e}")))?;
            let mut next_active = Vec::with_capacity(active.len());
            for (i, &r) in active.iter().enumerate() {
                let t = sample(&lp[i][..vocab], spec, &mut rng);
                if Some(t) == tok.eos_id {
                    continue;
                }
                rows[r].push(t);
                budget[r] -= 1;
                if budget[r] > 0 {
                    next_active.push(r);
                }
            }
            active = next_active;
        }
        let mut prefixes = Vec::with_capacity(rows.len());
        for row in &rows {
            let ids: Vec<u32> = row
                .iter()
                .copied()
                .filter(|t| !specials.contains(t))
                .collect();
            prefixes.push(tok.decode(&ids).map_err(ModelError::from)?);
        }
        let mut out = Self::from_prefixes(&prefixes);
        out.spec = Some(spec.clone());
        out.model_sha256 = model.base_sha256()?;
        out.generator = Some(SplitMix64::NAME.into());
        Ok(out)
    }

    /// Checks that every template has exactly one `{}` and the first is `"{}"`.
    ///
    /// # Errors
    /// [`OptimError::Input`].
    pub fn check(&self) -> Result<()> {
        if self.templates.first().map(String::as_str) != Some("{}") {
            return Err(OptimError::Input(
                "context templates must start with the bare \"{}\"".into(),
            ));
        }
        if let Some((i, t)) = self
            .templates
            .iter()
            .enumerate()
            .find(|(_, t)| t.matches("{}").count() != 1)
        {
            return Err(OptimError::Input(format!(
                "context template {i} {t:?} must contain exactly one \"{{}}\""
            )));
        }
        Ok(())
    }

    /// Writes the prefixes as JSON (atomically: temporary file, then rename).
    ///
    /// # Errors
    /// [`OptimError::Io`].
    pub fn save(&self, path: &Path) -> Result<()> {
        let text = serde_json::to_string_pretty(self).map_err(|e| OptimError::Format {
            path: path.into(),
            detail: e.to_string(),
        })?;
        crate::rundir::write_atomic(path, text.as_bytes())
    }

    /// Reads prefixes saved by [`save`](Self::save); with `model_sha256`, refuses prefixes
    /// sampled by another model.
    ///
    /// # Errors
    /// [`OptimError::Io`], [`OptimError::Format`], [`OptimError::RunMismatch`].
    pub fn load(path: &Path, model_sha256: Option<&str>) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(io_err(path))?;
        let p: Self = serde_json::from_str(&text).map_err(|e| OptimError::Format {
            path: path.into(),
            detail: e.to_string(),
        })?;
        p.check().map_err(|e| OptimError::Format {
            path: path.into(),
            detail: e.to_string(),
        })?;
        if let Some(sha) = model_sha256 {
            if !p.model_sha256.is_empty() && p.model_sha256 != sha {
                return Err(OptimError::RunMismatch {
                    path: path.into(),
                    what: "model",
                    recorded: p.model_sha256,
                    now: sha.into(),
                });
            }
        }
        Ok(p)
    }

    /// Loads `path` if it exists (checking the model), else samples with `spec` and saves.
    ///
    /// # Errors
    /// As [`load`](Self::load), [`generate`](Self::generate) and [`save`](Self::save).
    pub fn load_or_generate<M: EditableLm + ?Sized>(
        model: &M,
        spec: &PrefixSpec,
        path: &Path,
    ) -> Result<Self> {
        if path.exists() {
            return Self::load(path, Some(&model.base_sha256()?));
        }
        let p = Self::generate(model, spec)?;
        p.save(path)?;
        Ok(p)
    }
}

fn template_of(prefix: &str) -> String {
    format!("{}. {{}}", prefix.replace(['{', '}'], " "))
}

/// A seeded token sampler with a [`PrefixSpec`]'s temperature, top-k and top-p, for
/// [`eamet_hooks::EditableLm::generate_with`] (e.g. to let the model write a generic-text corpus).
///
/// ```
/// use eamet_optim::{PrefixSpec, Sampler};
/// let mut s = Sampler::new(PrefixSpec { top_k: 1, ..PrefixSpec::eamet() });
/// assert_eq!(s.pick(&[0.1, 3.0, -1.0]), 1); // top-1 is greedy
/// ```
pub struct Sampler {
    spec: PrefixSpec,
    rng: SplitMix64,
}

impl Sampler {
    /// A sampler seeded with `spec.seed`.
    pub fn new(spec: PrefixSpec) -> Self {
        let rng = SplitMix64::new(spec.seed);
        Sampler { spec, rng }
    }

    /// Draw a token from raw logits.
    pub fn pick(&mut self, logits: &[f32]) -> u32 {
        let max = logits.iter().fold(f32::NEG_INFINITY, |m, &x| m.max(x)) as f64;
        let z: f64 = logits.iter().map(|&x| (x as f64 - max).exp()).sum();
        let lz = max + z.ln();
        let lp: Vec<f64> = logits.iter().map(|&x| x as f64 - lz).collect();
        sample(&lp, &self.spec, &mut self.rng)
    }
}

/// Temperature, then top-k, then top-p (the order of Hugging Face's logits warpers), then one
/// draw. Ties are broken by the lower token id, so the result depends only on the inputs.
pub(crate) fn sample(logprobs: &[f64], spec: &PrefixSpec, rng: &mut SplitMix64) -> u32 {
    let mut order: Vec<usize> = (0..logprobs.len())
        .filter(|&i| logprobs[i].is_finite())
        .collect();
    if order.is_empty() {
        return 0;
    }
    order.sort_by(|&a, &b| logprobs[b].total_cmp(&logprobs[a]).then(a.cmp(&b)));
    if spec.top_k > 0 && spec.top_k < order.len() {
        let kth = logprobs[order[spec.top_k - 1]];
        // Hugging Face keeps every token tied with the k-th.
        order.retain(|&i| logprobs[i] >= kth);
    }
    let max = logprobs[order[0]];
    let mut p: Vec<f64> = order
        .iter()
        .map(|&i| ((logprobs[i] - max) / spec.temperature).exp())
        .collect();
    let z: f64 = p.iter().sum();
    p.iter_mut().for_each(|x| *x /= z);
    if spec.top_p < 1.0 {
        let mut cum = 0.0;
        let mut keep = 0;
        for &x in &p {
            keep += 1;
            cum += x;
            if cum >= spec.top_p {
                break;
            }
        }
        p.truncate(keep);
        order.truncate(keep);
        let z: f64 = p.iter().sum();
        p.iter_mut().for_each(|x| *x /= z);
    }
    let u = rng.uniform();
    let mut cum = 0.0;
    for (&i, &x) in order.iter().zip(&p) {
        cum += x;
        if u < cum {
            return i as u32;
        }
    }
    order[order.len() - 1] as u32
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sampler_respects_top_k_and_top_p() {
        let lp: Vec<f64> = [0.5f64, 0.3, 0.15, 0.05].iter().map(|p| p.ln()).collect();
        let mut rng = SplitMix64::new(1);
        let spec = PrefixSpec {
            top_k: 0,
            top_p: 0.7,
            temperature: 1.0,
            ..PrefixSpec::eamet()
        };
        // top-p 0.7 keeps {0, 1}.
        for _ in 0..200 {
            assert!(sample(&lp, &spec, &mut rng) < 2);
        }
        let spec = PrefixSpec { top_k: 1, ..spec };
        for _ in 0..50 {
            assert_eq!(sample(&lp, &spec, &mut rng), 0);
        }
        // No truncation: every token shows up.
        let spec = PrefixSpec {
            top_k: 0,
            top_p: 1.0,
            ..spec
        };
        let mut seen = [0usize; 4];
        for _ in 0..2000 {
            seen[sample(&lp, &spec, &mut rng) as usize] += 1;
        }
        assert!(seen.iter().all(|&c| c > 0), "{seen:?}");
        assert!((seen[0] as f64 / 2000.0 - 0.5).abs() < 0.05, "{seen:?}");
    }

    #[test]
    fn templates_replace_braces() {
        let p = ContextPrefixes::from_prefixes(&["a {b} c"]);
        assert_eq!(p.templates, vec!["{}", "a  b  c. {}"]);
        p.check().unwrap();
    }
}
