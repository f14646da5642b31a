//! Writing an edited model out, for the stacks users already run: GGUF (llama.cpp, Ollama)
//! and Hugging Face safetensors directories (transformers, candle, vLLM).
//!
//! - [`write_gguf`] is the container writer alone: it copies a GGUF file, replacing some
//!   tensors (already encoded) and setting some metadata keys. Every other tensor's bytes and
//!   every other metadata entry's bytes are carried over unchanged; offsets follow the file's
//!   `general.alignment`.
//! - [`save_gguf`] writes an edited [`LlamaModel`] loaded from GGUF: the edited `ffn_down`
//!   tensors in the [`EditedType`] asked for, `eamet.*` keys describing the edit, and a
//!   [`GgufExportReport`] measuring what the encoding did to the edit.
//! - [`save_safetensors_dir`] writes a transformers-loadable directory: from a Hugging Face
//!   checkpoint, the same files with the edited tensors replaced (same names and dtypes); from
//!   GGUF, the dequantized weights in Llama layout with a derived `config.json` and the
//!   tokenizer as `tokenizer.json`.
//!
//! A model loaded in bf16 or f16 ([`LoadOptions`]) is exported from an
//! f32 copy loaded again from its source on the CPU, with the same accumulated f32 deltas: the
//! export is exactly what the same deltas give on the f32 model (the compute dtype shaped the
//! deltas, but its rounding of the weights is not written). This costs a second load, and the
//! memory of an f32 model, for the duration of the export.
//!
//! Every output is written next to its destination under a temporary name and renamed into
//! place, so a failed write leaves nothing behind; an input model file is never replaced, and
//! an existing output only with [`OutputOptions::overwrite`].

use crate::atomic::TempOutput;
use crate::compute::{Dtype, LoadOptions};
use crate::config::Family;
use crate::error::{ModelError, Result};
use crate::gguf::{GgmlType, GgufFile, MetaValue, TensorInfo};
use crate::llama::{LlamaModel, ModelSource};
use crate::model::EditableLm;
use crate::patch::Patch;
use crate::quant::{dequantize, quantize, QuantError};
use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};
use std::str::FromStr;
use tch::{Kind, Tensor};

/// Why an export cannot be written.
#[derive(Debug, thiserror::Error)]
pub enum ExportError {
    /// The output would replace one of the model's own files.
    #[error("{path}: refusing to overwrite an input model file")]
    InputPath {
        /// The output path asked for.
        path: PathBuf,
    },
    /// The output exists and overwriting was not asked for.
    #[error("{path} exists (pass --overwrite to replace it)")]
    Exists {
        /// The output path.
        path: PathBuf,
    },
    /// A tensor to replace is not in the source file.
    #[error("tensor {name} is not in the source GGUF file")]
    UnknownTensor {
        /// The tensor name.
        name: String,
    },
    /// An edited layer has no `W_out` tensor in the source file (the layer is out of range, or
    /// the file is not a transformer of the expected layout).
    #[error("layer {layer} is not in the source GGUF file (it has no tensor {name})")]
    MissingLayer {
        /// The layer asked for.
        layer: usize,
        /// The tensor name looked up.
        name: String,
    },
    /// Replacement data has the wrong size for the tensor and type.
    #[error("tensor {name}: {got} bytes given, {dtype} needs {expected}")]
    Size {
        /// The tensor name.
        name: String,
        /// The type it is written as.
        dtype: GgmlType,
        /// Bytes needed.
        expected: u64,
        /// Bytes given.
        got: u64,
    },
    /// A tensor cannot be encoded in the type asked for.
    #[error("tensor {name}: cannot write it as {dtype}: {source}")]
    Encode {
        /// The tensor name.
        name: String,
        /// The type asked for.
        dtype: GgmlType,
        /// Why.
        source: QuantError,
    },
    /// A metadata key that the writer owns (or a duplicate) was given.
    #[error("metadata key {key}: {detail}")]
    Metadata {
        /// The key.
        key: String,
        /// What is wrong.
        detail: String,
    },
    /// The model or the request does not fit this export (e.g. GGUF export of a model that
    /// was not loaded from GGUF, an unknown edited type).
    #[error("{0}")]
    Unsupported(String),
}

fn export_err(e: ExportError) -> ModelError {
    ModelError::Export(Box::new(e))
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> ModelError + '_ {
    move |source| ModelError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// Where an output may go.
#[derive(Debug, Clone, Default)]
pub struct OutputOptions {
    /// Replace an existing output (never an input file).
    pub overwrite: bool,
    /// Files and directories the output must not replace, besides the model's own (which are
    /// always protected).
    pub protected: Vec<PathBuf>,
}

/// The type the edited tensors are written in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EditedType {
    /// Exact: 32-bit floats (4 bytes per weight).
    F32,
    /// IEEE half precision (2 bytes per weight).
    F16,
    /// 8-bit blocks of 32 with one f16 scale (8.5 bits per weight).
    Q8_0,
    /// Re-quantized to the input tensor's own type.
    Source,
}

impl EditedType {
    /// The type written for a tensor stored as `source`.
    pub fn resolve(self, source: GgmlType) -> GgmlType {
        match self {
            EditedType::F32 => GgmlType::F32,
            EditedType::F16 => GgmlType::F16,
            EditedType::Q8_0 => GgmlType::Q8_0,
            EditedType::Source => source,
        }
    }

    /// Every choice, as the CLI spells them.
    pub const ALL: [EditedType; 4] = [
        EditedType::F32,
        EditedType::F16,
        EditedType::Q8_0,
        EditedType::Source,
    ];
}

/// The default: chosen by measurement (docs/export.md).
impl Default for EditedType {
    fn default() -> Self {
        EditedType::F32
    }
}

impl fmt::Display for EditedType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            EditedType::F32 => "f32",
            EditedType::F16 => "f16",
            EditedType::Q8_0 => "q8_0",
            EditedType::Source => "source",
        })
    }
}

impl FromStr for EditedType {
    type Err = ModelError;
    fn from_str(s: &str) -> Result<Self> {
        Self::ALL
            .into_iter()
            .find(|t| t.to_string().eq_ignore_ascii_case(s))
            .ok_or_else(|| {
                export_err(ExportError::Unsupported(format!(
                    "unknown edited-tensor type {s:?} (choose f32, f16, q8_0 or source)"
                )))
            })
    }
}

/// One tensor to write with new contents.
#[derive(Debug, Clone)]
pub struct TensorReplacement {
    /// Its name in the file.
    pub name: String,
    /// The type of `data`.
    pub dtype: GgmlType,
    /// Encoded data (same element count as the original tensor).
    pub data: Vec<u8>,
}

/// Refuses an output that is (or, for directories, contains or lies in) a protected path,
/// and an existing output unless overwriting.
pub fn check_output(out: &Path, protected: &[PathBuf], overwrite: bool) -> Result<()> {
    let canon = |p: &Path| p.canonicalize().ok();
    // The output's would-be absolute path, also when it does not exist yet.
    let target = canon(out).or_else(|| {
        let parent = out.parent().filter(|p| !p.as_os_str().is_empty());
        let parent = canon(parent.unwrap_or(Path::new(".")))?;
        Some(parent.join(out.file_name()?))
    });
    if let Some(target) = &target {
        for p in protected {
            if let Some(p) = canon(p) {
                if &p == target || p.starts_with(target) || (target.starts_with(&p) && p.is_dir()) {
                    return Err(export_err(ExportError::InputPath {
                        path: out.to_path_buf(),
                    }));
                }
            }
        }
    }
    if out.exists() && !overwrite {
        return Err(export_err(ExportError::Exists {
            path: out.to_path_buf(),
        }));
    }
    Ok(())
}

/// The model's own files and directories.
fn model_paths(model: &LlamaModel) -> Result<Vec<PathBuf>> {
    let mut v = model.source().identity_files()?;
    if let ModelSource::HfDir(d) = model.source() {
        v.push(d.clone());
    }
    Ok(v)
}

/// GGUF encoding of a metadata value's type id.
fn meta_type(v: &MetaValue) -> u32 {
    match v {
        MetaValue::U8(_) => 0,
        MetaValue::I8(_) => 1,
        MetaValue::U16(_) => 2,
        MetaValue::I16(_) => 3,
        MetaValue::U32(_) => 4,
        MetaValue::I32(_) => 5,
        MetaValue::F32(_) => 6,
        MetaValue::Bool(_) => 7,
        MetaValue::String(_) => 8,
        MetaValue::Array(_) => 9,
        MetaValue::U64(_) => 10,
        MetaValue::I64(_) => 11,
        MetaValue::F64(_) => 12,
    }
}

fn put_str(out: &mut Vec<u8>, s: &str) {
    out.extend((s.len() as u64).to_le_bytes());
    out.extend(s.as_bytes());
}

fn put_value(out: &mut Vec<u8>, key: &str, v: &MetaValue) -> Result<()> {
    match v {
        MetaValue::U8(x) => out.push(*x),
        MetaValue::I8(x) => out.extend(x.to_le_bytes()),
        MetaValue::U16(x) => out.extend(x.to_le_bytes()),
        MetaValue::I16(x) => out.extend(x.to_le_bytes()),
        MetaValue::U32(x) => out.extend(x.to_le_bytes()),
        MetaValue::I32(x) => out.extend(x.to_le_bytes()),
        MetaValue::F32(x) => out.extend(x.to_le_bytes()),
        MetaValue::Bool(x) => out.push(u8::from(*x)),
        MetaValue::String(s) => put_str(out, s),
        MetaValue::U64(x) => out.extend(x.to_le_bytes()),
        MetaValue::I64(x) => out.extend(x.to_le_bytes()),
        MetaValue::F64(x) => out.extend(x.to_le_bytes()),
        MetaValue::Array(items) => {
            let ty = items.first().map_or(4, meta_type);
            if items.iter().any(|i| meta_type(i) != ty) {
                return Err(export_err(ExportError::Metadata {
                    key: key.into(),
                    detail: "array items of different types".into(),
                }));
            }
            out.extend(ty.to_le_bytes());
            out.extend((items.len() as u64).to_le_bytes());
            for i in items {
                put_value(out, key, i)?;
            }
        }
    }
    Ok(())
}

/// The GGUF encoding of one metadata entry (key, type, value).
pub fn encode_metadata(key: &str, value: &MetaValue) -> Result<Vec<u8>> {
    let mut out = Vec::new();
    put_str(&mut out, key);
    out.extend(meta_type(value).to_le_bytes());
    put_value(&mut out, key, value)?;
    Ok(out)
}

fn padding(len: u64, alignment: u64) -> usize {
    (len.div_ceil(alignment) * alignment - len) as usize
}

/// Writes a copy of `src` to `out` with `replace`d tensors and `metadata` set.
///
/// Metadata keys already in the file keep their place (the value is re-encoded); new keys are
/// appended. Every other entry and every other tensor's data is copied byte for byte; tensors
/// keep their order, and their data offsets are re-laid with the file's alignment.
/// `general.alignment` cannot be set here.
///
/// # Errors
/// [`ExportError`] (wrapped in [`ModelError::Export`]) for an unknown tensor, data of the wrong
/// size, a bad metadata key, a protected or existing output; I/O errors naming the file. On
/// any error no output file is left.
pub fn write_gguf(
    src: &GgufFile,
    replace: &[TensorReplacement],
    metadata: &[(String, MetaValue)],
    out: &Path,
    protected: &[PathBuf],
    overwrite: bool,
) -> Result<()> {
    check_output(out, protected, overwrite)?;
    let mut new_meta: BTreeMap<&str, &MetaValue> = BTreeMap::new();
    for (k, v) in metadata {
        if k == "general.alignment" {
            return Err(export_err(ExportError::Metadata {
                key: k.clone(),
                detail: "the alignment is the source file's and cannot be changed here".into(),
            }));
        }
        if new_meta.insert(k, v).is_some() {
            return Err(export_err(ExportError::Metadata {
                key: k.clone(),
                detail: "given twice".into(),
            }));
        }
    }
    let mut by_name: HashMap<&str, &TensorReplacement> = HashMap::new();
    for r in replace {
        let info = src.tensor(&r.name).ok_or_else(|| {
            export_err(ExportError::UnknownTensor {
                name: r.name.clone(),
            })
        })?;
        let (block, block_bytes) = r.dtype.block_layout();
        let expected = (info.dims[0] % block == 0).then(|| info.elements() / block * block_bytes);
        if expected != Some(r.data.len() as u64) {
            return Err(export_err(ExportError::Size {
                name: r.name.clone(),
                dtype: r.dtype,
                expected: expected.unwrap_or(0),
                got: r.data.len() as u64,
            }));
        }
        by_name.insert(&r.name, r);
    }

    // Header, metadata and tensor descriptors, built in memory (small next to the data).
    let mut head = Vec::new();
    head.extend(crate::gguf::GGUF_MAGIC.to_le_bytes());
    head.extend(src.version.to_le_bytes());
    head.extend((src.tensors.len() as u64).to_le_bytes());
    let appended: Vec<(&str, &MetaValue)> = new_meta
        .iter()
        .filter(|(k, _)| src.get(k).is_none())
        .map(|(k, v)| (*k, *v))
        .collect();
    head.extend(((src.metadata.len() + appended.len()) as u64).to_le_bytes());
    for (i, (key, _)) in src.metadata.iter().enumerate() {
        match new_meta.get(key.as_str()) {
            Some(v) => head.extend(encode_metadata(key, v)?),
            None => head.extend(src.metadata_raw(i).ok_or_else(|| {
                export_err(ExportError::Metadata {
                    key: key.clone(),
                    detail: "raw bytes unavailable".into(),
                })
            })?),
        }
    }
    for (k, v) in &appended {
        head.extend(encode_metadata(k, v)?);
    }
    let align = src.alignment;
    let mut rel = 0u64;
    let mut layout = Vec::with_capacity(src.tensors.len());
    for t in &src.tensors {
        let (dtype, len) = match by_name.get(t.name.as_str()) {
            Some(r) => (r.dtype, r.data.len() as u64),
            None => (t.dtype, t.size),
        };
        put_str(&mut head, &t.name);
        head.extend((t.dims.len() as u32).to_le_bytes());
        for d in &t.dims {
            head.extend(d.to_le_bytes());
        }
        head.extend(dtype.id().to_le_bytes());
        head.extend(rel.to_le_bytes());
        layout.push(len);
        rel += len + padding(len, align) as u64;
    }
    let pad = padding(head.len() as u64, align);
    head.extend(std::iter::repeat_n(0u8, pad));

    let temp = TempOutput::beside(out)?;
    {
        let file = std::fs::File::create(temp.path()).map_err(io(temp.path()))?;
        let mut w = BufWriter::with_capacity(1 << 20, file);
        w.write_all(&head).map_err(io(temp.path()))?;
        for (t, len) in src.tensors.iter().zip(layout) {
            let data = match by_name.get(t.name.as_str()) {
                Some(r) => &r.data[..],
                None => src.tensor_bytes(t),
            };
            w.write_all(data).map_err(io(temp.path()))?;
            w.write_all(&vec![0u8; padding(len, align)])
                .map_err(io(temp.path()))?;
        }
        let file = w
            .into_inner()
            .map_err(|e| io(temp.path())(e.into_error()))?;
        file.sync_all().map_err(io(temp.path()))?;
    }
    // The written file must parse back, with every tensor where the layout put it.
    let back = GgufFile::open(temp.path())?;
    if back.tensors.len() != src.tensors.len()
        || back.metadata.len() != src.metadata.len() + appended.len()
    {
        return Err(export_err(ExportError::Unsupported(
            "the written GGUF file does not read back (internal error)".into(),
        )));
    }
    drop(back);
    temp.commit(out)
}

/// What an edit was, for the `eamet.*` metadata of an exported GGUF.
#[derive(Debug, Clone, Default)]
pub struct EditMetadata {
    /// The editing method (e.g. `eamet`).
    pub method: String,
    /// Number of facts written.
    pub facts: usize,
    /// SHA-256 of the patch file the edit came from, when there is one.
    pub patch_sha256: Option<String>,
}

/// What encoding one edited tensor did to its edit.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct EncodedTensor {
    /// Tensor name in the file.
    pub name: String,
    /// Edited layer.
    pub layer: usize,
    /// The input file's type for it.
    pub source_type: String,
    /// The type written.
    pub written_type: String,
    /// ‖Δ‖ (Frobenius) of the edit in this layer.
    pub delta_norm: f64,
    /// ‖Ŵ − W‖: the written (decoded) weights against the exact edited weights.
    pub error_norm: f64,
    /// Largest |Ŵ − W| of one weight.
    pub error_max: f64,
    /// `error_norm / delta_norm`.
    pub relative_error: f64,
    /// Cosine between the written edit Ŵ − W₀ and Δ (W₀: the base weights as loaded).
    pub delta_cosine: f64,
}

/// The result of [`save_gguf`].
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct GgufExportReport {
    /// The written file.
    pub path: PathBuf,
    /// Edited tensors and their encoding errors.
    pub tensors: Vec<EncodedTensor>,
    /// The `eamet.*` keys written, rendered as text.
    pub metadata: BTreeMap<String, String>,
}

/// GGUF name of layer `l`'s `W_out`.
pub fn ffn_down_name(layer: usize) -> String {
    format!("blk.{layer}.ffn_down.weight")
}

/// Checks, before any edit is computed, that [`save_gguf`] can write the `ffn_down` tensors of
/// `layers` of the GGUF file `path` as `edited` resolves for their stored types. A K-quant
/// source (Q4_K, Q6_K, as in most published GGUF files) with [`EditedType::Source`] is the
/// common refusal: eamet reads K-quants but does not write them yet.
///
/// # Errors
/// [`ExportError::MissingLayer`] for a layer the file lacks; [`ExportError::Encode`] (with
/// [`QuantError::QuantizeUnsupported`], which lists the writable types, or
/// [`QuantError::RowNotWholeBlocks`] when a row is not whole blocks of the type) naming the first
/// tensor that cannot be written; a GGUF error when the file does not parse.
pub fn check_gguf_edited_types(path: &Path, layers: &[usize], edited: EditedType) -> Result<()> {
    let src = GgufFile::open(path)?;
    for &layer in layers {
        let name = ffn_down_name(layer);
        let info = src.tensor(&name).ok_or_else(|| {
            export_err(ExportError::MissingLayer {
                layer,
                name: name.clone(),
            })
        })?;
        writable_type(info, edited)?;
    }
    Ok(())
}

/// The type `edited` resolves to for the source tensor `info`, once it is known that
/// [`quantize`] writes it and that each of the tensor's rows (`dims[0]` values, contiguous) is
/// whole blocks of it, as GGML readers require.
fn writable_type(info: &TensorInfo, edited: EditedType) -> Result<GgmlType> {
    let dtype = edited.resolve(info.dtype);
    let refuse = |source| {
        Err(export_err(ExportError::Encode {
            name: info.name.clone(),
            dtype,
            source,
        }))
    };
    if !crate::quant::can_quantize(dtype) {
        return refuse(QuantError::QuantizeUnsupported { dtype });
    }
    let block = dtype.block_layout().0;
    let row = info.dims.first().copied().unwrap_or(0);
    if row % block != 0 {
        return refuse(QuantError::RowNotWholeBlocks {
            dtype,
            row: row as usize,
            block: block as usize,
        });
    }
    Ok(dtype)
}

/// For a model that computes in bf16 or f16: an f32 CPU copy loaded again from its source, with
/// the model's accumulated deltas applied (bit for bit the f32 model edited with them). `None`
/// for an f32 model (exported as it is).
fn f32_twin(model: &LlamaModel) -> Result<Option<LlamaModel>> {
    if model.dtype() == Dtype::F32 {
        return Ok(None);
    }
    let mut twin = LlamaModel::from_source(model.source(), LoadOptions::default())?;
    for l in model.edited_layers() {
        if let Some(d) = model.accumulated_delta(l)? {
            twin.apply_delta(l, &d)?;
        }
    }
    Ok(Some(twin))
}

fn to_f32_vec(t: &Tensor) -> Result<Vec<f32>> {
    let t = t
        .to_device(tch::Device::Cpu)
        .to_kind(Kind::Float)
        .contiguous()
        .flatten(0, -1);
    Ok(Vec::<f32>::try_from(&t)?)
}

fn norm(v: impl Iterator<Item = f64>) -> f64 {
    v.map(|x| x * x).sum::<f64>().sqrt()
}

/// Writes `model` (loaded from a GGUF file, with its edits applied) as a GGUF file at `out`.
///
/// The edited layers' `ffn_down` tensors are written as `edited` resolves for their source
/// type; everything else is the source file's bytes. Metadata gains `eamet.method`,
/// `eamet.facts`, `eamet.layers`, `eamet.edited_type`, `eamet.base_sha256` (the input file),
/// `eamet.patch.content_sha256` ([`Patch::content_sha256`] of the model's edits) and, when
/// known, `eamet.patch.sha256` (the patch file's bytes).
///
/// # Errors
/// A GPT-2 or GPT-J model ([`ExportError::Unsupported`], naming the family: no GGUF writer for
/// them); the model was not loaded from GGUF or has no edits; the edited type cannot encode the
/// tensor; [`write_gguf`]'s errors.
pub fn save_gguf(
    model: &LlamaModel,
    out: &Path,
    edited: EditedType,
    meta: &EditMetadata,
    opts: &OutputOptions,
) -> Result<GgufExportReport> {
    let cfg = model.config();
    if matches!(cfg.family, Family::Gpt2 | Family::Gptj) {
        return Err(export_err(ExportError::Unsupported(format!(
            "GGUF export is not implemented for {:?} ({}) models",
            cfg.family, cfg.arch_name
        ))));
    }
    let ModelSource::Gguf(src_path) = model.source() else {
        return Err(export_err(ExportError::Unsupported(
            "GGUF export needs a model loaded from a GGUF file (this one is a Hugging Face directory: export a safetensors directory instead)".into(),
        )));
    };
    let mut protected = model_paths(model)?;
    protected.extend(opts.protected.iter().cloned());
    check_output(out, &protected, opts.overwrite)?;
    if model.edited_layers().is_empty() {
        return Err(export_err(ExportError::Unsupported(
            "the model has no edits to export".into(),
        )));
    }
    let twin = f32_twin(model)?;
    let model = twin.as_ref().unwrap_or(model);
    let patch = Patch::from_model(model, &meta.method)?;
    if patch.deltas.is_empty() {
        return Err(export_err(ExportError::Unsupported(
            "the model has no edits to export".into(),
        )));
    }
    let src = GgufFile::open(src_path)?;
    let mut replace = Vec::new();
    let mut tensors = Vec::new();
    for (&layer, delta) in &patch.deltas {
        let name = ffn_down_name(layer);
        let info = src.tensor(&name).ok_or_else(|| {
            export_err(ExportError::MissingLayer {
                layer,
                name: name.clone(),
            })
        })?;
        let dtype = writable_type(info, edited)?;
        // `W_out` is [d_model, d_ff] row-major: GGML's [d_ff, d_model] with d_ff contiguous.
        let w = to_f32_vec(&model.w_out(layer)?)?;
        let d = to_f32_vec(delta)?;
        let data = quantize(dtype, &w).map_err(|source| {
            export_err(ExportError::Encode {
                name: name.clone(),
                dtype,
                source,
            })
        })?;
        let back = dequantize(&name, dtype, &data, w.len())?;
        let delta_norm = norm(d.iter().map(|&x| f64::from(x)));
        let err = || {
            w.iter()
                .zip(&back)
                .map(|(&a, &b)| f64::from(b) - f64::from(a))
        };
        let error_norm = norm(err());
        let error_max = err().fold(0f64, |m, e| m.max(e.abs()));
        // Written edit: Ŵ − W₀ with W₀ = W − Δ.
        let (mut dot, mut nn) = (0f64, 0f64);
        for ((&wh, &wx), &dx) in back.iter().zip(&w).zip(&d) {
            let written = f64::from(wh) - (f64::from(wx) - f64::from(dx));
            dot += written * f64::from(dx);
            nn += written * written;
        }
        let delta_cosine = if nn > 0.0 && delta_norm > 0.0 {
            dot / (nn.sqrt() * delta_norm)
        } else {
            0.0
        };
        tensors.push(EncodedTensor {
            name: name.clone(),
            layer,
            source_type: info.dtype.to_string(),
            written_type: dtype.to_string(),
            delta_norm,
            error_norm,
            error_max,
            relative_error: if delta_norm > 0.0 {
                error_norm / delta_norm
            } else {
                f64::INFINITY
            },
            delta_cosine,
        });
        replace.push(TensorReplacement { name, dtype, data });
    }
    let mut keys: Vec<(String, MetaValue)> = vec![
        (
            "eamet.method".into(),
            MetaValue::String(meta.method.clone()),
        ),
        ("eamet.facts".into(), MetaValue::U64(meta.facts as u64)),
        (
            "eamet.layers".into(),
            MetaValue::Array(
                patch
                    .deltas
                    .keys()
                    .map(|&l| MetaValue::U32(l as u32))
                    .collect(),
            ),
        ),
        (
            "eamet.edited_type".into(),
            MetaValue::String(edited.to_string()),
        ),
        (
            "eamet.base_sha256".into(),
            MetaValue::String(patch.meta.base_sha256.clone()),
        ),
        (
            "eamet.patch.content_sha256".into(),
            MetaValue::String(patch.content_sha256()?),
        ),
        (
            "eamet.version".into(),
            MetaValue::String(env!("CARGO_PKG_VERSION").into()),
        ),
    ];
    if let Some(s) = &meta.patch_sha256 {
        keys.push(("eamet.patch.sha256".into(), MetaValue::String(s.clone())));
    }
    write_gguf(&src, &replace, &keys, out, &protected, opts.overwrite)?;
    let metadata = keys
        .iter()
        .map(|(k, v)| {
            let text = match v {
                MetaValue::String(s) => s.clone(),
                MetaValue::U64(x) => x.to_string(),
                MetaValue::Array(a) => a
                    .iter()
                    .filter_map(|x| x.as_u64().map(|x| x.to_string()))
                    .collect::<Vec<_>>()
                    .join(","),
                other => format!("{other:?}"),
            };
            (k.clone(), text)
        })
        .collect();
    Ok(GgufExportReport {
        path: out.to_path_buf(),
        tensors,
        metadata,
    })
}

/// Floating-point type of the weights in a safetensors export from GGUF.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StDtype {
    /// 32-bit floats: the dequantized weights exactly.
    F32,
    /// bfloat16 (half the size; what most checkpoints ship).
    Bf16,
    /// IEEE half.
    F16,
}

impl fmt::Display for StDtype {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            StDtype::F32 => "f32",
            StDtype::Bf16 => "bf16",
            StDtype::F16 => "f16",
        })
    }
}

impl FromStr for StDtype {
    type Err = ModelError;
    fn from_str(s: &str) -> Result<Self> {
        match s.to_ascii_lowercase().as_str() {
            "f32" | "float32" => Ok(StDtype::F32),
            "bf16" | "bfloat16" => Ok(StDtype::Bf16),
            "f16" | "float16" => Ok(StDtype::F16),
            _ => Err(export_err(ExportError::Unsupported(format!(
                "unknown safetensors dtype {s:?} (choose f32, bf16 or f16)"
            )))),
        }
    }
}

fn st_encode(t: &Tensor, dtype: safetensors::Dtype, name: &str) -> Result<Vec<u8>> {
    let v = to_f32_vec(t)?;
    // A finite weight past the 16-bit type's range would be stored as infinity.
    let limit = match dtype {
        safetensors::Dtype::F16 => f32::from(half::f16::MAX),
        safetensors::Dtype::BF16 => f32::from(half::bf16::MAX),
        _ => f32::MAX,
    };
    if let Some((i, x)) = v
        .iter()
        .enumerate()
        .find(|(_, x)| x.is_finite() && x.abs() > limit)
    {
        return Err(export_err(ExportError::Unsupported(format!(
            "tensor {name}: value {x} at index {i} does not fit in {dtype:?}"
        ))));
    }
    Ok(match dtype {
        safetensors::Dtype::F32 => v.iter().flat_map(|x| x.to_le_bytes()).collect(),
        safetensors::Dtype::BF16 => v
            .iter()
            .flat_map(|&x| half::bf16::from_f32(x).to_le_bytes())
            .collect(),
        safetensors::Dtype::F16 => v
            .iter()
            .flat_map(|&x| half::f16::from_f32(x).to_le_bytes())
            .collect(),
        other => {
            return Err(export_err(ExportError::Unsupported(format!(
                "tensor {name}: cannot write an edited tensor as safetensors {other:?}"
            ))))
        }
    })
}

fn st_serialize(
    tensors: &[(String, safetensors::Dtype, Vec<usize>, Vec<u8>)],
    metadata: Option<HashMap<String, String>>,
    path: &Path,
) -> Result<Vec<u8>> {
    let st_err = |e: safetensors::SafeTensorError| ModelError::Safetensors {
        path: path.to_path_buf(),
        detail: e.to_string(),
    };
    let views = tensors
        .iter()
        .map(|(n, dt, shape, b)| {
            safetensors::tensor::TensorView::new(*dt, shape.clone(), b)
                .map(|v| (n.clone(), v))
                .map_err(st_err)
        })
        .collect::<Result<Vec<_>>>()?;
    safetensors::tensor::serialize(views, metadata).map_err(st_err)
}

/// Files of a Hugging Face directory that are stale weights in another format: never copied
/// into an edited export (they would not hold the edit).
const STALE_WEIGHTS: &[&str] = &["bin", "pt", "pth", "ckpt", "h5", "msgpack", "onnx", "gguf"];

/// Writes `model` with its edits as a Hugging Face safetensors directory at `out`; returns
/// the files written (relative to `out`).
///
/// - Loaded from a Hugging Face directory: every `*.safetensors` file is rewritten with the
///   same tensor names, dtypes and header metadata, the edited `down_proj` weights replaced
///   (encoded in their original dtype); every other file at the top level (config, tokenizer,
///   generation config, index) is copied, except weights in other formats. `dtype` must be
///   `None`.
/// - Loaded from GGUF: one `model.safetensors` with every weight (dequantized) in `dtype`
///   (default f32), under Llama names; `config.json` derived from the GGUF header;
///   `tokenizer.json`, `tokenizer_config.json` and `generation_config.json`.
///
/// # Errors
/// A protected or existing output; `dtype` given for a Hugging Face input; a model outside
/// the Llama family ([`ExportError::Unsupported`] naming the family: no Gemma 3 writer yet, it
/// needs transformers' Gemma config and norm weights minus one; none for GPT-2 or GPT-J, whose
/// edited `c_proj` / `fc_out` would have to be written in their own layout); I/O and
/// safetensors errors naming the file.
pub fn save_safetensors_dir(
    model: &LlamaModel,
    out: &Path,
    dtype: Option<StDtype>,
    opts: &OutputOptions,
) -> Result<Vec<PathBuf>> {
    llama_family_only(model)?;
    let mut protected = model_paths(model)?;
    protected.extend(opts.protected.iter().cloned());
    check_output(out, &protected, opts.overwrite)?;
    let temp = TempOutput::beside(out)?;
    if temp.path().exists() {
        std::fs::remove_dir_all(temp.path()).map_err(io(temp.path()))?;
    }
    std::fs::create_dir_all(temp.path()).map_err(io(temp.path()))?;
    if let (ModelSource::HfDir(_), Some(d)) = (model.source(), dtype) {
        return Err(export_err(ExportError::Unsupported(format!(
            "output dtype {d}: a Hugging Face input keeps its own dtypes"
        ))));
    }
    let twin = f32_twin(model)?;
    let model = twin.as_ref().unwrap_or(model);
    let written = match model.source() {
        ModelSource::HfDir(dir) => write_from_hf(model, dir, temp.path())?,
        ModelSource::Gguf(_) => write_from_gguf(model, dtype.unwrap_or(StDtype::F32), temp.path())?,
    };
    temp.commit(out)?;
    Ok(written)
}

fn write_file(dir: &Path, name: &str, bytes: &[u8]) -> Result<PathBuf> {
    let p = dir.join(name);
    std::fs::write(&p, bytes).map_err(io(&p))?;
    Ok(PathBuf::from(name))
}

fn write_from_hf(model: &LlamaModel, dir: &Path, tmp: &Path) -> Result<Vec<PathBuf>> {
    let edited: HashMap<String, usize> = model
        .edited_layers()
        .into_iter()
        .map(|l| (format!("model.layers.{l}.mlp.down_proj.weight"), l))
        .collect();
    let mut found = 0usize;
    let mut written = Vec::new();
    let mut entries: Vec<PathBuf> = std::fs::read_dir(dir)
        .map_err(io(dir))?
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.is_file())
        .collect();
    entries.sort();
    for path in entries {
        let name = path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let ext = path
            .extension()
            .map(|e| e.to_string_lossy().to_ascii_lowercase())
            .unwrap_or_default();
        if STALE_WEIGHTS.contains(&ext.as_str()) {
            continue;
        }
        if ext != "safetensors" {
            let to = tmp.join(&name);
            std::fs::copy(&path, &to).map_err(io(&to))?;
            written.push(PathBuf::from(&name));
            continue;
        }
        let bytes = std::fs::read(&path).map_err(io(&path))?;
        let st_err = |e: safetensors::SafeTensorError| ModelError::Safetensors {
            path: path.clone(),
            detail: e.to_string(),
        };
        let (_, header) = safetensors::SafeTensors::read_metadata(&bytes).map_err(st_err)?;
        let st = safetensors::SafeTensors::deserialize(&bytes).map_err(st_err)?;
        // Keep the file's tensor order (by offset), names, dtypes and header metadata.
        let mut names: Vec<(String, usize)> = st
            .tensors()
            .into_iter()
            .map(|(n, v)| {
                let off = v.data().as_ptr() as usize - bytes.as_ptr() as usize;
                (n, off)
            })
            .collect();
        names.sort_by_key(|(_, off)| *off);
        let mut tensors = Vec::with_capacity(names.len());
        for (n, _) in names {
            let v = st.tensor(&n).map_err(st_err)?;
            let data = match edited.get(&n) {
                Some(&layer) => {
                    found += 1;
                    let w = model.w_out(layer)?;
                    let shape: Vec<usize> = w.size().iter().map(|&d| d as usize).collect();
                    if shape != v.shape() {
                        return Err(ModelError::Shape {
                            name: n.clone(),
                            expected: v.shape().iter().map(|&d| d as i64).collect(),
                            got: w.size(),
                        });
                    }
                    st_encode(&w, v.dtype(), &n)?
                }
                None => v.data().to_vec(),
            };
            tensors.push((n, v.dtype(), v.shape().to_vec(), data));
        }
        let out = st_serialize(&tensors, header.metadata().clone(), &path)?;
        written.push(write_file(tmp, &name, &out)?);
    }
    if found != edited.len() {
        return Err(export_err(ExportError::Unsupported(format!(
            "{} of the {} edited down_proj weights were found in {}'s safetensors files",
            found,
            edited.len(),
            dir.display()
        ))));
    }
    Ok(written)
}

/// Refuses models outside the Llama family for the safetensors export.
fn llama_family_only(model: &LlamaModel) -> Result<()> {
    match model.config().family {
        Family::Llama => Ok(()),
        other => Err(export_err(ExportError::Unsupported(format!(
            "a safetensors directory can only be written for the Llama family yet, not for {other:?} ({}); export a GGUF file instead",
            model.config().arch_name
        )))),
    }
}

/// The transformers `config.json` of a Llama-family model, from our configuration.
///
/// # Errors
/// [`ExportError::Unsupported`] for a model outside the Llama family (Gemma 3, GPT-2, GPT-J).
pub fn hf_config_json(model: &LlamaModel, dtype: StDtype) -> Result<serde_json::Value> {
    llama_family_only(model)?;
    let cfg = model.config();
    let tok = model.tokenizer();
    let (arch, model_type) = match cfg.arch_name.as_str() {
        "qwen2" => ("Qwen2ForCausalLM", "qwen2"),
        "mistral" => ("MistralForCausalLM", "mistral"),
        _ => ("LlamaForCausalLM", "llama"),
    };
    Ok(serde_json::json!({
        "architectures": [arch],
        "model_type": model_type,
        "vocab_size": cfg.vocab_size,
        "hidden_size": cfg.d_model,
        "intermediate_size": cfg.d_ff,
        "num_hidden_layers": cfg.n_layers,
        "num_attention_heads": cfg.n_heads,
        "num_key_value_heads": cfg.n_kv_heads,
        "head_dim": cfg.head_dim,
        "hidden_act": "silu",
        "rms_norm_eps": cfg.rms_eps,
        "rope_theta": cfg.rope_theta,
        "max_position_embeddings": cfg.max_positions,
        "tie_word_embeddings": cfg.tied_embeddings,
        "attention_bias": cfg.qkv_bias,
        "mlp_bias": false,
        "bos_token_id": tok.bos_id,
        "eos_token_id": tok.eos_id,
        "torch_dtype": match dtype {
            StDtype::F32 => "float32",
            StDtype::Bf16 => "bfloat16",
            StDtype::F16 => "float16",
        },
    }))
}

/// The tokenizer as `tokenizer.json`; a model that wants a BOS gets a post-processor that
/// prepends it, so transformers tokenizes as our loader does.
fn tokenizer_json(tok: &crate::tokenizer::Tokenizer) -> Result<serde_json::Value> {
    let mut v: serde_json::Value = serde_json::from_str(&tok.to_json())
        .map_err(|e| ModelError::Config(format!("tokenizer description: {e}")))?;
    let bos = tok
        .bos_id
        .and_then(|id| tok.inner().id_to_token(id).map(|t| (id, t)));
    if let (true, Some((id, token))) = (tok.add_bos, bos) {
        v["post_processor"] = serde_json::json!({
            "type": "TemplateProcessing",
            "single": [
                {"SpecialToken": {"id": token, "type_id": 0}},
                {"Sequence": {"id": "A", "type_id": 0}}
            ],
            "pair": [
                {"SpecialToken": {"id": token, "type_id": 0}},
                {"Sequence": {"id": "A", "type_id": 0}},
                {"SpecialToken": {"id": token, "type_id": 1}},
                {"Sequence": {"id": "B", "type_id": 1}}
            ],
            "special_tokens": {token.clone(): {"id": token, "ids": [id], "tokens": [token]}}
        });
    }
    Ok(v)
}

fn write_from_gguf(model: &LlamaModel, dtype: StDtype, tmp: &Path) -> Result<Vec<PathBuf>> {
    let st_dtype = match dtype {
        StDtype::F32 => safetensors::Dtype::F32,
        StDtype::Bf16 => safetensors::Dtype::BF16,
        StDtype::F16 => safetensors::Dtype::F16,
    };
    let mut tensors = Vec::new();
    for (name, t) in model.named_weights() {
        let shape: Vec<usize> = t.size().iter().map(|&d| d as usize).collect();
        let data = st_encode(&t, st_dtype, &name)?;
        tensors.push((name, st_dtype, shape, data));
    }
    let meta = HashMap::from([("format".to_string(), "pt".to_string())]);
    let weights = tmp.join("model.safetensors");
    let bytes = st_serialize(&tensors, Some(meta), &weights)?;
    drop(tensors);
    let mut written = vec![write_file(tmp, "model.safetensors", &bytes)?];
    drop(bytes);
    let pretty = |v: &serde_json::Value| -> Result<Vec<u8>> {
        serde_json::to_vec_pretty(v).map_err(|e| ModelError::Config(e.to_string()))
    };
    written.push(write_file(
        tmp,
        "config.json",
        &pretty(&hf_config_json(model, dtype)?)?,
    )?);
    let tok = model.tokenizer();
    written.push(write_file(
        tmp,
        "tokenizer.json",
        &pretty(&tokenizer_json(tok)?)?,
    )?);
    let token = |id: Option<u32>| {
        id.and_then(|i| tok.inner().id_to_token(i))
            .map_or(serde_json::Value::Null, serde_json::Value::String)
    };
    let tok_cfg = serde_json::json!({
        "tokenizer_class": "PreTrainedTokenizerFast",
        "bos_token": token(tok.bos_id),
        "eos_token": token(tok.eos_id),
        "add_bos_token": tok.add_bos,
        "add_eos_token": false,
        "clean_up_tokenization_spaces": false,
        "model_max_length": model.config().max_positions,
    });
    written.push(write_file(
        tmp,
        "tokenizer_config.json",
        &pretty(&tok_cfg)?,
    )?);
    let gen = serde_json::json!({
        "bos_token_id": tok.bos_id,
        "eos_token_id": tok.eos_id,
    });
    written.push(write_file(tmp, "generation_config.json", &pretty(&gen)?)?);
    Ok(written)
}
