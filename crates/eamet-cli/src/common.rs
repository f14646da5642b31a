//! What several commands share: model, facts, hyperparameters, corpus.

use anyhow::{anyhow, bail, Context, Result};
use eamet::eval::data::{load, load_str, EvalRecord, Format, LoadOptions};
use eamet::hooks::tch::Device;
use eamet::hooks::LoadOptions as ModelOptions;
use eamet::hooks::{Dtype, LlamaModel, ModelConfig};
use eamet::{EditHparams, Method};
use std::path::{Path, PathBuf};

/// The bundled demo facts (facts/demo.jsonl).
pub const DEMO_FACTS: &str = include_str!("../../../facts/demo.jsonl");

/// The model path: `--model`, else the set-up's SmolLM2; it must exist.
pub fn resolve_model(model: Option<PathBuf>) -> Result<PathBuf> {
    let path = match model.or_else(eamet::hooks::paths::default_model) {
        Some(p) => p,
        None => bail!("no --model given and no cache directory known (set EAMET_HOME)"),
    };
    if !path.exists() {
        bail!(
            "model {} does not exist; pass --model, or run `cargo xtask setup` to fetch the default",
            path.display()
        );
    }
    Ok(path)
}

/// `--dtype`: the model's compute dtype.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum DtypeArg {
    /// 32-bit float (reference precision).
    F32,
    /// bfloat16.
    Bf16,
    /// IEEE half precision.
    F16,
}

impl From<DtypeArg> for Dtype {
    fn from(d: DtypeArg) -> Self {
        match d {
            DtypeArg::F32 => Dtype::F32,
            DtypeArg::Bf16 => Dtype::Bf16,
            DtypeArg::F16 => Dtype::F16,
        }
    }
}

/// `--device`: `cpu`, `cuda` or `cuda:N`.
pub fn parse_device(s: &str) -> std::result::Result<Device, String> {
    eamet::hooks::compute::parse_device(s).map_err(|_| "expected cpu, cuda or cuda:N".to_string())
}

/// How a command that runs the model loads it: `--dtype` and `--device`.
#[derive(clap::Args, Debug, Clone, Copy)]
pub struct ComputeArgs {
    /// Compute dtype of the model: f32, bf16 or f16. The weights are held and the forward
    /// pass runs in it; keys, statistics, solves and log-probabilities stay f32/f64.
    #[arg(long, value_enum, default_value = "f32")]
    pub dtype: DtypeArg,
    /// Device: cpu, cuda (= cuda:0) or cuda:N. CUDA needs eamet built against a CUDA libtorch.
    #[arg(long, default_value = "cpu", value_parser = parse_device)]
    pub device: Device,
}

impl ComputeArgs {
    /// The load options, once the device is known to be usable (a CUDA device without CUDA in
    /// this build is an error here, before anything is read).
    pub fn options(self) -> Result<ModelOptions> {
        let o = ModelOptions {
            device: self.device,
            dtype: self.dtype.into(),
        };
        o.check()?;
        Ok(o)
    }
}

/// Open a GGUF file or a Hugging Face checkpoint directory with these options.
pub fn load_model(path: &Path, opts: ModelOptions) -> Result<LlamaModel> {
    Ok(if path.is_dir() {
        LlamaModel::from_hf_dir_with(path, opts)?
    } else {
        LlamaModel::from_gguf_with(path, opts)?
    })
}

/// Edit records from a file in any supported format (auto-detected), or the bundled demo facts.
pub fn read_records(
    path: Option<&Path>,
    offset: usize,
    limit: Option<usize>,
) -> Result<(Vec<EvalRecord>, String, String)> {
    let opts = LoadOptions {
        offset,
        limit,
        ..Default::default()
    };
    let loaded = match path {
        Some(p) => {
            if !p.exists() {
                bail!("{}: no such file", p.display());
            }
            load(p, &opts)?
        }
        None => load_str(
            "facts/demo.jsonl (bundled)",
            DEMO_FACTS,
            &LoadOptions {
                format: Some(Format::Facts),
                ..opts
            },
        )?,
    };
    let format = loaded.format.name().to_string();
    let name = loaded.path.display().to_string();
    let records = loaded.into_edits()?;
    if records.is_empty() {
        bail!("{name} holds no records in the range asked for");
    }
    Ok((records, name, format))
}

/// The built-in presets of the model `config` is shaped like: SmolLM2-135M or Gemma 3 270M, the
/// models they were measured on.
fn preset_for(config: &ModelConfig, method: Method) -> Option<EditHparams> {
    let shape = (config.n_layers, config.d_model, config.d_ff);
    match (config.arch_name.as_str(), shape) {
        ("llama", (30, 576, 1536)) => Some(EditHparams::smollm2(method)),
        ("gemma3", (18, 640, 2048)) => Some(EditHparams::gemma3_270m(method)),
        _ => None,
    }
}

/// The presets for a model they were not measured on: SmolLM2's (a note on stderr says so), on
/// one layer where the model normalizes its MLP outputs (the last of SmolLM2's, or the model's
/// last layer if it is shallower), since an edit cannot be spread there.
fn fallback_preset(config: &ModelConfig, method: Method) -> EditHparams {
    let mut hp = EditHparams::smollm2(method);
    let mut what = "the SmolLM2-135M presets are used".to_string();
    if config.sandwich_norms && hp.layers.len() > 1 {
        let last = hp.layers.last().copied().unwrap_or(0);
        let layer = last.min(config.n_layers.saturating_sub(1));
        hp.layers = vec![layer];
        what = format!(
            "the SmolLM2-135M presets are used on one layer, {layer} (this model normalizes its \
             MLP outputs, so an edit is not spread over layers; --layers picks another)"
        );
    }
    eprintln!(
        "note: no --hparams given, so {what}; they were measured on that model, not on this one \
         ({}, {} layers, d_ff {}): see docs/hparams.md for how to choose its values",
        config.arch_name, config.n_layers, config.d_ff
    );
    hp
}

/// Hyperparameters: a JSON file (reference field names accepted) or the method's preset for the
/// model's shape (SmolLM2-135M, Gemma 3 270M; any other model gets SmolLM2's with a note on
/// stderr, since they were not measured on it); `--layers` and `--block` override; checked
/// against the model (depth, and one layer where MLP outputs are normalized).
pub fn hparams(
    method: Method,
    file: Option<&Path>,
    layers: Option<Vec<usize>>,
    block: Option<usize>,
    config: &ModelConfig,
) -> Result<EditHparams> {
    let hp = hparams_any_spread(method, file, layers, block, config)?;
    hp.check_model(config)?;
    Ok(hp)
}

/// As [`hparams`], without refusing several layers on a post-FFN-norm model: for commands that
/// optimize residuals at the last layer only and never spread an edit (`score`).
pub fn hparams_any_spread(
    method: Method,
    file: Option<&Path>,
    layers: Option<Vec<usize>>,
    block: Option<usize>,
    config: &ModelConfig,
) -> Result<EditHparams> {
    let n_layers = config.n_layers;
    let mut hp = match file {
        Some(p) => {
            let (hp, ignored) = EditHparams::from_json_reporting(
                &std::fs::read_to_string(p).with_context(|| format!("{}", p.display()))?,
            )
            .with_context(|| format!("{}", p.display()))?;
            if !ignored.is_empty() {
                eprintln!(
                    "{}: ignored the reference-only fields {} (docs/hparams.md)",
                    p.display(),
                    ignored.join(", ")
                );
            }
            hp
        }
        None => preset_for(config, method).unwrap_or_else(|| fallback_preset(config, method)),
    };
    if let Some(l) = layers {
        hp.layers = l;
    }
    if let Some(b) = block {
        hp.block = b;
    }
    if let Some(&bad) = hp.layers.iter().find(|&&l| l >= n_layers) {
        bail!(
            "layer {bad} is out of range: the model has {n_layers} layers (0..={})",
            n_layers - 1
        );
    }
    hp.check(n_layers)?;
    Ok(hp)
}

/// Generic text from `--corpus` files, if any.
pub fn corpus(files: &[PathBuf]) -> Result<Option<eamet::stats::Corpus>> {
    if files.is_empty() {
        return Ok(None);
    }
    for f in files {
        if !f.exists() {
            bail!("corpus file {}: no such file", f.display());
        }
    }
    Ok(Some(eamet::stats::Corpus::from_files(files)?))
}

/// Parse `i/n`.
pub fn parse_shard(s: &str) -> Result<(usize, usize)> {
    let (i, n) = s
        .split_once('/')
        .ok_or_else(|| anyhow!("--shard {s:?}: expected i/n, e.g. 0/4"))?;
    let i: usize = i
        .trim()
        .parse()
        .map_err(|_| anyhow!("--shard {s:?}: bad index"))?;
    let n: usize = n
        .trim()
        .parse()
        .map_err(|_| anyhow!("--shard {s:?}: bad count"))?;
    if n == 0 || i >= n {
        bail!("--shard {s:?}: need 0 <= i < n");
    }
    Ok((i, n))
}

/// The cache directory (`EAMET_HOME`, ...).
pub fn cache_dir() -> Result<PathBuf> {
    eamet::hooks::paths::cache_dir().ok_or_else(|| anyhow!("no cache directory: set EAMET_HOME"))
}

/// Refuse to write `path` if it exists (outputs are never overwritten silently).
pub fn refuse_existing(path: &Path, what: &str) -> Result<()> {
    if path.exists() {
        bail!(
            "{what} {} already exists; remove it or choose another path",
            path.display()
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The tiny Llama test model's configuration, reshaped.
    fn config(arch: &str, shape: (usize, usize, usize), sandwich_norms: bool) -> ModelConfig {
        let text = include_str!("../../eamet-hooks/tests/golden/tiny-llama/config.json");
        let mut c = ModelConfig::from_hf_json(text).unwrap();
        c.arch_name = arch.into();
        (c.n_layers, c.d_model, c.d_ff) = shape;
        c.sandwich_norms = sandwich_norms;
        c
    }

    #[test]
    fn presets_follow_the_model_shape() {
        for method in [Method::Memit, Method::Eamet, Method::AlphaEdit] {
            let smol = config("llama", (30, 576, 1536), false);
            assert_eq!(
                preset_for(&smol, method),
                Some(EditHparams::smollm2(method))
            );
            let gemma = config("gemma3", (18, 640, 2048), true);
            assert_eq!(
                preset_for(&gemma, method),
                Some(EditHparams::gemma3_270m(method))
            );
            // The same shape under another architecture name, or another size: no preset.
            assert_eq!(
                preset_for(&config("qwen2", (30, 576, 1536), false), method),
                None
            );
            assert_eq!(
                preset_for(&config("gemma3", (26, 1152, 6912), true), method),
                None
            );
        }
    }

    #[test]
    fn an_unmeasured_post_norm_model_falls_back_to_one_layer() {
        let last = *EditHparams::smollm2(Method::Memit).layers.last().unwrap();
        // A bigger Gemma 3: SmolLM2's presets on their last layer, which the model accepts.
        let big = config("gemma3", (26, 1152, 6912), true);
        let hp = hparams(Method::Memit, None, None, None, &big).unwrap();
        assert_eq!(hp.layers, vec![last]);
        // Shallower than that layer: its own last layer.
        let shallow = config("gemma3", (3, 1152, 6912), true);
        let hp = hparams(Method::Eamet, None, None, None, &shallow).unwrap();
        assert_eq!(hp.layers, vec![2]);
        // A model without post-FFN norms keeps the spread; an explicit spread on a post-norm
        // model is refused by `hparams` and allowed by `hparams_any_spread` (score).
        let llama = config("llama", (26, 1152, 6912), false);
        assert_eq!(
            hparams(Method::Memit, None, None, None, &llama)
                .unwrap()
                .layers,
            EditHparams::smollm2(Method::Memit).layers
        );
        assert!(hparams(Method::Memit, None, Some(vec![3, 4]), None, &big).is_err());
        assert_eq!(
            hparams_any_spread(Method::Memit, None, Some(vec![3, 4]), None, &big)
                .unwrap()
                .layers,
            vec![3, 4]
        );
    }
}
