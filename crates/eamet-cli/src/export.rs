//! `eamet export` and `eamet edit --out`: the edited model as a GGUF file or a safetensors
//! directory.

use crate::common::{load_model, resolve_model};
use anyhow::{bail, Result};
use eamet::hooks::export::{
    check_gguf_edited_types, check_output, save_gguf, save_safetensors_dir, EditMetadata,
    EditedType, OutputOptions, StDtype,
};
use eamet::hooks::patch::{sha256_file, Patch};
use eamet::hooks::LlamaModel;
use std::path::{Path, PathBuf};

/// Where and how to write an edited model.
#[derive(Debug, Clone)]
pub struct OutSpec {
    /// Output file (GGUF) or directory (safetensors).
    pub out: PathBuf,
    /// `gguf` or `safetensors`; default from the path (`*.gguf` → GGUF, else a directory).
    pub format: Option<String>,
    /// Type of the edited tensors in a GGUF export.
    pub edited_type: Option<String>,
    /// Weight dtype of a safetensors export from GGUF (`--out-dtype`).
    pub dtype: Option<String>,
    /// Replace an existing output.
    pub overwrite: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Format {
    Gguf,
    Safetensors,
}

impl OutSpec {
    fn format(&self) -> Result<Format> {
        match self
            .format
            .as_deref()
            .map(str::to_ascii_lowercase)
            .as_deref()
        {
            Some("gguf") => Ok(Format::Gguf),
            Some("safetensors") | Some("hf") => Ok(Format::Safetensors),
            Some(other) => bail!("--format {other}: choose gguf or safetensors"),
            None if self
                .out
                .extension()
                .is_some_and(|e| e.eq_ignore_ascii_case("gguf")) =>
            {
                Ok(Format::Gguf)
            }
            None if self
                .out
                .extension()
                .is_some_and(|e| e.eq_ignore_ascii_case("safetensors")) =>
            {
                bail!(
                    "--out {}: a safetensors export is a directory (config, tokenizer and weights); give a directory path, or --format",
                    self.out.display()
                )
            }
            None => Ok(Format::Safetensors),
        }
    }

    /// Checks the request before any long work: the format and types parse, the output is not
    /// an input and does not exist (unless overwriting).
    pub fn check(&self, model_path: &Path) -> Result<()> {
        let format = self.format()?;
        if format == Format::Safetensors && self.edited_type.is_some() {
            bail!("--edited-type applies to GGUF exports only");
        }
        if format == Format::Gguf && self.dtype.is_some() {
            bail!("--out-dtype applies to safetensors exports only");
        }
        if let Some(t) = &self.edited_type {
            t.parse::<EditedType>()?;
        }
        if let Some(d) = &self.dtype {
            d.parse::<StDtype>()?;
        }
        check_output(&self.out, &[model_path.to_path_buf()], self.overwrite)?;
        Ok(())
    }

    /// For a GGUF export of a GGUF model: that the `ffn_down` tensors of `layers` can be written
    /// as `--edited-type` asks. Run before the edit, so that `--edited-type source` on a K-quant
    /// file (Q4_K, Q6_K) fails at once rather than after the optimization.
    pub fn check_layers(&self, model_path: &Path, layers: &[usize]) -> Result<()> {
        if self.format()? != Format::Gguf || !model_path.is_file() {
            return Ok(());
        }
        let t = match &self.edited_type {
            Some(t) => t.parse()?,
            None => EditedType::default(),
        };
        check_gguf_edited_types(model_path, layers, t)?;
        Ok(())
    }

    /// Writes `model` (edits applied) and prints what was written.
    pub fn write(&self, model: &LlamaModel, meta: &EditMetadata, json: bool) -> Result<()> {
        let opts = OutputOptions {
            overwrite: self.overwrite,
            protected: Vec::new(),
        };
        match self.format()? {
            Format::Gguf => {
                let t = match &self.edited_type {
                    Some(t) => t.parse()?,
                    None => EditedType::default(),
                };
                let r = save_gguf(model, &self.out, t, meta, &opts)?;
                if json {
                    eprintln!("{}", serde_json::to_string_pretty(&r)?);
                } else {
                    println!(
                        "GGUF written to {} (edited tensors as {t})",
                        self.out.display()
                    );
                    println!("| tensor | source | written | ‖Δ‖ | ‖Ŵ − W‖ | ‖Ŵ − W‖ / ‖Δ‖ | cos(Ŵ − W₀, Δ) |");
                    println!("|---|---|---|---:|---:|---:|---:|");
                    for e in &r.tensors {
                        println!(
                            "| {} | {} | {} | {:.4} | {:.4} | {:.4} | {:.4} |",
                            e.name,
                            e.source_type,
                            e.written_type,
                            e.delta_norm,
                            e.error_norm,
                            e.relative_error,
                            e.delta_cosine
                        );
                    }
                }
            }
            Format::Safetensors => {
                let dtype = self.dtype.as_deref().map(str::parse).transpose()?;
                let files = save_safetensors_dir(model, &self.out, dtype, &opts)?;
                if !json {
                    println!(
                        "safetensors directory written to {} ({} files)",
                        self.out.display(),
                        files.len()
                    );
                }
            }
        }
        Ok(())
    }
}

/// Arguments of `eamet export`.
pub struct ExportArgs {
    pub model: Option<PathBuf>,
    pub patch: PathBuf,
    pub out: OutSpec,
    pub json: bool,
}

/// `eamet export`: apply a patch to its base model and write the result.
pub fn run(a: ExportArgs) -> Result<()> {
    let path = resolve_model(a.model)?;
    a.out.check(&path)?;
    check_output(&a.out.out, std::slice::from_ref(&a.patch), a.out.overwrite)?;
    let patch = Patch::load(&a.patch)?;
    a.out
        .check_layers(&path, &patch.deltas.keys().copied().collect::<Vec<_>>())?;
    // Export writes weights, it computes nothing: the model is read in f32 on the CPU.
    let mut model = load_model(&path, eamet::hooks::LoadOptions::default())?;
    patch.apply(&mut model, &a.patch)?;
    let meta = EditMetadata {
        method: patch.meta.method.clone(),
        facts: patch
            .meta
            .extra
            .get("facts")
            .and_then(|f| f.parse().ok())
            .unwrap_or(0),
        patch_sha256: Some(sha256_file(&a.patch)?),
    };
    a.out.write(&model, &meta, a.json)
}
