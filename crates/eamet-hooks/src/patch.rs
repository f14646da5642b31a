//! Patch files: the `W_out` updates of an edit, alone, applicable to the same base model.
//!
//! A patch is a safetensors file holding one f32 tensor `layers.{l}.delta` of shape
//! `[d_model, d_ff]` per edited layer (key→residual orientation: `W_out += delta`), and JSON-ish
//! string metadata: format and version, the SHA-256 of the base model, architecture and sizes,
//! layers, orientation, and the editing method. [`Patch::apply`] refuses a model whose SHA-256
//! differs. Writes go to a temporary file in the same directory, then are renamed into place;
//! a patch is never written over one of the model's own files.

use crate::error::{io_err, ModelError, Result};
use crate::model::EditableLm;
use sha2::{Digest, Sha256};
use std::collections::{BTreeMap, HashMap};
use std::io::Read;
use std::path::{Path, PathBuf};
use tch::{Kind, Tensor};

/// Value of the `format` metadata key.
pub const PATCH_FORMAT: &str = "eamet-patch";
/// Version of the patch format written by this crate.
pub const PATCH_VERSION: &str = "1";
/// The orientation statement written into every patch.
pub const ORIENTATION: &str = "key_to_residual: W_out[d_model, d_ff] += delta";

/// SHA-256 (hex) of a file, streamed.
pub fn sha256_file(path: &Path) -> Result<String> {
    let mut f = std::fs::File::open(path).map_err(io_err(path))?;
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = f.read(&mut buf).map_err(io_err(path))?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    Ok(hex(&h.finalize()))
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Identity of a model made of several files: SHA-256 over `name sha256\n` lines; a single
/// file's identity is its own SHA-256.
pub fn sha256_files(files: &[PathBuf]) -> Result<String> {
    if let [one] = files {
        return sha256_file(one);
    }
    let mut h = Sha256::new();
    for f in files {
        let name = f
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        h.update(format!("{name} {}\n", sha256_file(f)?).as_bytes());
    }
    Ok(hex(&h.finalize()))
}

/// Metadata of a patch.
#[derive(Debug, Clone, PartialEq)]
pub struct PatchMeta {
    /// SHA-256 of the base model (see [`sha256_files`]).
    pub base_sha256: String,
    /// Architecture name (`llama`, `qwen2`, ...).
    pub arch: String,
    /// Residual width.
    pub d_model: usize,
    /// Key width.
    pub d_ff: usize,
    /// Editing method that produced it (free text, e.g. `eamet`).
    pub method: String,
    /// Anything else the producer wants to record.
    pub extra: BTreeMap<String, String>,
}

/// The per-layer deltas of an edit plus metadata.
#[derive(Debug)]
pub struct Patch {
    /// layer -> `[d_model, d_ff]` f32 delta.
    pub deltas: BTreeMap<usize, Tensor>,
    /// Metadata.
    pub meta: PatchMeta,
}

fn patch_err(path: &Path, detail: impl Into<String>) -> ModelError {
    ModelError::Patch {
        path: path.to_path_buf(),
        detail: detail.into(),
    }
}

impl Patch {
    /// The accumulated deltas of every edited layer of `model`.
    pub fn from_model(model: &dyn EditableLm, method: &str) -> Result<Self> {
        let mut deltas = BTreeMap::new();
        for l in model.edited_layers() {
            if let Some(d) = model.accumulated_delta(l)? {
                deltas.insert(l, d);
            }
        }
        let cfg = model.config();
        Ok(Patch {
            deltas,
            meta: PatchMeta {
                base_sha256: model.base_sha256()?,
                arch: cfg.arch_name.clone(),
                d_model: cfg.d_model,
                d_ff: cfg.d_ff,
                method: method.to_string(),
                extra: BTreeMap::new(),
            },
        })
    }

    /// SHA-256 of the patch's content, independent of how a file lays it out: for each layer in
    /// ascending order, the line `layer {l} {d_model}x{d_ff}\n` followed by the delta's f32
    /// values, little-endian, row-major. Equal for a patch in memory and the same patch read
    /// back from its file.
    pub fn content_sha256(&self) -> Result<String> {
        let mut h = Sha256::new();
        for (&l, t) in &self.deltas {
            let t = t
                .to_device(tch::Device::Cpu)
                .to_kind(Kind::Float)
                .contiguous();
            let size = t.size();
            let dims: Vec<String> = size.iter().map(|d| d.to_string()).collect();
            h.update(format!("layer {l} {}\n", dims.join("x")).as_bytes());
            let v = Vec::<f32>::try_from(t.flatten(0, -1))?;
            for x in v {
                h.update(x.to_le_bytes());
            }
        }
        Ok(hex(&h.finalize()))
    }

    /// Write atomically to `path`. Refuses to replace any of `protected` (the model's own
    /// files) and, unless `overwrite`, any existing file.
    pub fn save(&self, path: &Path, protected: &[PathBuf], overwrite: bool) -> Result<()> {
        let canon = |p: &Path| p.canonicalize().ok();
        if let Some(target) = canon(path) {
            if protected
                .iter()
                .any(|p| canon(p).as_deref() == Some(target.as_path()))
            {
                return Err(patch_err(path, "refusing to overwrite an input model file"));
            }
            if !overwrite {
                return Err(patch_err(
                    path,
                    "file exists (pass overwrite to replace it)",
                ));
            }
        }
        if self.deltas.is_empty() {
            return Err(patch_err(path, "no edited layers: nothing to save"));
        }
        let mut data: Vec<(String, Vec<u8>, Vec<usize>)> = Vec::new();
        for (&l, t) in &self.deltas {
            let t = t
                .to_device(tch::Device::Cpu)
                .to_kind(Kind::Float)
                .contiguous();
            let shape: Vec<usize> = t.size().iter().map(|&d| d as usize).collect();
            if shape != [self.meta.d_model, self.meta.d_ff] {
                return Err(patch_err(
                    path,
                    format!("layer {l} delta has shape {shape:?}"),
                ));
            }
            let v = Vec::<f32>::try_from(t.flatten(0, -1))?;
            let bytes: Vec<u8> = v.iter().flat_map(|x| x.to_le_bytes()).collect();
            data.push((format!("layers.{l}.delta"), bytes, shape));
        }
        let views: Vec<(String, safetensors::tensor::TensorView<'_>)> = data
            .iter()
            .map(|(n, b, s)| {
                safetensors::tensor::TensorView::new(safetensors::Dtype::F32, s.clone(), b)
                    .map(|v| (n.clone(), v))
                    .map_err(|e| patch_err(path, e.to_string()))
            })
            .collect::<Result<_>>()?;
        let layers: Vec<String> = self.deltas.keys().map(|l| l.to_string()).collect();
        let mut meta: HashMap<String, String> = self
            .meta
            .extra
            .iter()
            .map(|(k, v)| (format!("extra.{k}"), v.clone()))
            .collect();
        meta.insert("format".into(), PATCH_FORMAT.into());
        meta.insert("format_version".into(), PATCH_VERSION.into());
        meta.insert("base_sha256".into(), self.meta.base_sha256.clone());
        meta.insert("arch".into(), self.meta.arch.clone());
        meta.insert("d_model".into(), self.meta.d_model.to_string());
        meta.insert("d_ff".into(), self.meta.d_ff.to_string());
        meta.insert("layers".into(), layers.join(","));
        meta.insert("orientation".into(), ORIENTATION.into());
        meta.insert("method".into(), self.meta.method.clone());
        let bytes = safetensors::tensor::serialize(views, Some(meta))
            .map_err(|e| patch_err(path, e.to_string()))?;
        crate::atomic::write_file(path, &bytes)
    }

    /// Read a patch file; every field is validated ([`Patch::from_bytes`]).
    pub fn load(path: &Path) -> Result<Self> {
        let bytes = std::fs::read(path).map_err(io_err(path))?;
        Self::from_bytes(&bytes, path)
    }

    /// A patch from the bytes of a patch file; `path` only names the source in errors. Every
    /// field is validated: the safetensors container, the metadata keys and their values,
    /// each layer's tensor (present, F32, `[d_model, d_ff]`, finite).
    ///
    /// # Errors
    /// [`ModelError::Patch`] naming the file and what is wrong.
    pub fn from_bytes(bytes: &[u8], path: &Path) -> Result<Self> {
        let (_, header) = safetensors::SafeTensors::read_metadata(bytes)
            .map_err(|e| patch_err(path, format!("not a safetensors file: {e}")))?;
        let st = safetensors::SafeTensors::deserialize(bytes)
            .map_err(|e| patch_err(path, format!("not a safetensors file: {e}")))?;
        let meta = header
            .metadata()
            .clone()
            .ok_or_else(|| patch_err(path, "no metadata: not an eamet patch"))?;
        let get = |k: &str| {
            meta.get(k)
                .cloned()
                .ok_or_else(|| patch_err(path, format!("metadata key {k:?} missing")))
        };
        if get("format")? != PATCH_FORMAT {
            return Err(patch_err(path, "format is not eamet-patch"));
        }
        let version = get("format_version")?;
        if version != PATCH_VERSION {
            return Err(patch_err(
                path,
                format!("format version {version} is not supported (1)"),
            ));
        }
        let num = |k: &str| -> Result<usize> {
            get(k)?
                .parse()
                .map_err(|_| patch_err(path, format!("metadata {k} is not a number")))
        };
        let (d_model, d_ff) = (num("d_model")?, num("d_ff")?);
        let mut deltas = BTreeMap::new();
        for l in get("layers")?.split(',').filter(|s| !s.is_empty()) {
            let layer: usize = l
                .parse()
                .map_err(|_| patch_err(path, format!("layer {l:?} is not a number")))?;
            let name = format!("layers.{layer}.delta");
            let v = st
                .tensor(&name)
                .map_err(|e| patch_err(path, format!("{name}: {e}")))?;
            if v.dtype() != safetensors::Dtype::F32 || v.shape() != [d_model, d_ff] {
                return Err(patch_err(
                    path,
                    format!(
                        "{name} is {:?} {:?}, expected F32 [{d_model}, {d_ff}]",
                        v.dtype(),
                        v.shape()
                    ),
                ));
            }
            let vals: Vec<f32> = v
                .data()
                .chunks_exact(4)
                .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                .collect();
            if vals.iter().any(|x| !x.is_finite()) {
                return Err(patch_err(path, format!("{name} contains NaN or infinity")));
            }
            deltas.insert(
                layer,
                Tensor::from_slice(&vals).reshape([d_model as i64, d_ff as i64]),
            );
        }
        if deltas.is_empty() {
            return Err(patch_err(path, "the patch has no layers"));
        }
        let extra = meta
            .iter()
            .filter_map(|(k, v)| k.strip_prefix("extra.").map(|k| (k.to_string(), v.clone())))
            .collect();
        Ok(Patch {
            deltas,
            meta: PatchMeta {
                base_sha256: get("base_sha256")?,
                arch: get("arch")?,
                d_model,
                d_ff,
                method: get("method")?,
                extra,
            },
        })
    }

    /// Apply to `model`, which must be the same base model (SHA-256) and have no edits yet.
    pub fn apply(&self, model: &mut dyn EditableLm, patch_path: &Path) -> Result<()> {
        let sha = model.base_sha256()?;
        if sha != self.meta.base_sha256 {
            return Err(patch_err(
                patch_path,
                format!(
                    "made for base model {} but this model is {sha}; refusing to apply",
                    self.meta.base_sha256
                ),
            ));
        }
        let cfg = model.config();
        if (cfg.d_model, cfg.d_ff) != (self.meta.d_model, self.meta.d_ff) {
            return Err(patch_err(patch_path, "layer sizes differ from the model's"));
        }
        if let Some(&l) = self.deltas.keys().find(|&&l| l >= cfg.n_layers) {
            return Err(patch_err(
                patch_path,
                format!("layer {l} does not exist in the model"),
            ));
        }
        for (&l, d) in &self.deltas {
            model.apply_delta(l, d)?;
        }
        Ok(())
    }
}
