//! Portable on-disk format: safetensors tensors + JSON metadata, atomic writes.
//!
//! A file is a standard [safetensors](https://github.com/huggingface/safetensors) file (readable
//! by `safetensors.safe_open` / `safetensors.numpy.load_file` in Python) whose `__metadata__`
//! holds two string entries:
//!
//! * `"eamet"`: a JSON object describing the content (for key statistics: [`StatsMeta`]),
//! * `"eamet.crc32"`: a CRC-32 (IEEE, as Python's `zlib.crc32`) of the `"eamet"` JSON string's
//!   UTF-8 bytes followed by the whole data section, as 8 lowercase hex digits
//!   (`zlib.crc32(data, zlib.crc32(meta.encode()))`), so damage that keeps the container valid
//!   is still detected.
//!
//! Key statistics store `sum_outer` (`F64`, `[d, d]`, the full symmetric `Σ k kᵀ`) and `sum`
//! (`F64`, `[d]`, `Σ k`), little-endian.
//!
//! Writes go to a temporary file in the destination's directory, are flushed to disk, then
//! renamed over the destination; an existing file is only replaced with
//! [`WriteMode::Overwrite`].

use std::collections::HashMap;
use std::fs::File;
use std::io::{BufWriter, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use ndarray::{Array1, Array2};
use safetensors::{Dtype, SafeTensors};
use serde::{Deserialize, Serialize};

use crate::error::{FieldMismatch, Result, SolveError};
use crate::linalg;
use crate::stats::KeyStats;

/// What to do when the destination of a save already exists.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum WriteMode {
    /// Fail with [`SolveError::AlreadyExists`] and leave the existing file untouched (default).
    #[default]
    CreateNew,
    /// Atomically replace the existing file.
    Overwrite,
}

/// What a set of key statistics was computed from: the cache identity of a statistics file
/// (together with the sample count and `d`, see [`StatsRequest`]).
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct StatsProvenance {
    /// Model identifier (HF repo id, GGUF file name, ...), e.g. `"HuggingFaceTB/SmolLM2-135M"`.
    pub model_id: String,
    /// Hash of the model weights (any stable digest the caller chooses).
    pub model_hash: String,
    /// Block index whose `W_out` input the keys are.
    pub layer: usize,
    /// Corpus identifier, e.g. `"wikitext-2-raw-v1/train"`.
    pub corpus_id: String,
    /// Hash of the corpus content / sampling recipe.
    pub corpus_hash: String,
    /// Dtype the model produced the keys in (e.g. `"float32"`, `"bfloat16"`). Accumulation and
    /// storage are always `float64`.
    pub dtype: String,
}

/// The JSON metadata stored in a key-statistics file (`__metadata__["eamet"]`).
///
/// ```
/// # use eamet_solve::{StatsMeta, StatsProvenance};
/// let json = r#"{"format":"eamet.keystats","version":1,"model_id":"m","model_hash":"h",
///   "layer":3,"corpus_id":"c","corpus_hash":"ch","dtype":"float32",
///   "samples":10,"tokens":2000,"d":1536}"#;
/// let meta: StatsMeta = serde_json::from_str(json).unwrap();
/// assert_eq!(meta.provenance.layer, 3);
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StatsMeta {
    /// Always `"eamet.keystats"`.
    pub format: String,
    /// Format version, currently 1.
    pub version: u32,
    /// What the statistics were computed from.
    #[serde(flatten)]
    pub provenance: StatsProvenance,
    /// Samples (documents) processed.
    pub samples: u64,
    /// Keys (tokens) accumulated.
    pub tokens: u64,
    /// Key dimension.
    pub d: usize,
}

/// What a caller expects a statistics file to hold; [`KeyStats::load`] rejects a file that
/// differs in any field with [`SolveError::CacheMismatch`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StatsRequest {
    /// Must equal the stored provenance field by field.
    pub provenance: StatsProvenance,
    /// If set, the stored sample count must equal it.
    pub samples: Option<u64>,
    /// If set, the stored key dimension must equal it.
    pub d: Option<usize>,
}

impl StatsRequest {
    /// A request for exactly this provenance, any sample count and dimension.
    pub fn new(provenance: StatsProvenance) -> Self {
        StatsRequest {
            provenance,
            samples: None,
            d: None,
        }
    }

    /// Also require this sample count.
    pub fn with_samples(mut self, samples: u64) -> Self {
        self.samples = Some(samples);
        self
    }

    /// Also require this key dimension.
    pub fn with_dim(mut self, d: usize) -> Self {
        self.d = Some(d);
        self
    }

    fn mismatches(&self, meta: &StatsMeta) -> Vec<FieldMismatch> {
        let (e, f) = (&self.provenance, &meta.provenance);
        let mut out = Vec::new();
        let mut cmp = |field: &'static str, expected: String, found: String| {
            if expected != found {
                out.push(FieldMismatch {
                    field,
                    expected,
                    found,
                });
            }
        };
        cmp("model_id", e.model_id.clone(), f.model_id.clone());
        cmp("model_hash", e.model_hash.clone(), f.model_hash.clone());
        cmp("layer", e.layer.to_string(), f.layer.to_string());
        cmp("corpus_id", e.corpus_id.clone(), f.corpus_id.clone());
        cmp("corpus_hash", e.corpus_hash.clone(), f.corpus_hash.clone());
        cmp("dtype", e.dtype.clone(), f.dtype.clone());
        if let Some(s) = self.samples {
            cmp("samples", s.to_string(), meta.samples.to_string());
        }
        if let Some(d) = self.d {
            cmp("d", d.to_string(), meta.d.to_string());
        }
        out
    }
}

pub(crate) const META_KEY: &str = "eamet";
pub(crate) const CRC_KEY: &str = "eamet.crc32";
const STATS_FORMAT: &str = "eamet.keystats";
const STATS_VERSION: u32 = 1;
const STATS_KIND: &str = "key statistics";

/// Where a tensor's values come from when writing.
pub(crate) enum TensorSource<'a> {
    /// Values in row-major order.
    Dense(&'a [f64]),
    /// The full symmetric matrix whose upper triangle this standard-layout array holds.
    SymmetricUpper(&'a Array2<f64>),
}

/// One tensor to write.
pub(crate) struct TensorOut<'a> {
    pub name: &'static str,
    pub shape: Vec<usize>,
    pub source: TensorSource<'a>,
}

fn io_err(op: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> SolveError {
    let path = path.to_path_buf();
    move |source| SolveError::Io { op, path, source }
}

fn write_f64s(
    out: &mut impl Write,
    crc: &mut crc32fast::Hasher,
    values: &[f64],
    bytes: &mut Vec<u8>,
) -> std::io::Result<()> {
    bytes.clear();
    bytes.extend(values.iter().flat_map(|v| v.to_le_bytes()));
    crc.update(bytes);
    out.write_all(bytes)
}

/// Writes a safetensors file atomically (temporary file in the same directory + rename).
pub(crate) fn write_file(
    path: &Path,
    mode: WriteMode,
    meta_json: String,
    tensors: &[TensorOut<'_>],
) -> Result<()> {
    if mode == WriteMode::CreateNew && path.exists() {
        return Err(SolveError::AlreadyExists {
            path: path.to_path_buf(),
        });
    }
    // Header: tensors in the given order, contiguous.
    let mut header = serde_json::Map::new();
    let mut offset = 0usize;
    for t in tensors {
        let n: usize = t.shape.iter().product();
        let len = n * 8;
        header.insert(
            t.name.to_string(),
            serde_json::json!({"dtype": "F64", "shape": t.shape, "data_offsets": [offset, offset + len]}),
        );
        offset += len;
    }
    const PLACEHOLDER: &str = "00000000";
    header.insert(
        "__metadata__".into(),
        serde_json::json!({ META_KEY: &meta_json, CRC_KEY: PLACEHOLDER }),
    );
    let mut header_bytes =
        serde_json::to_vec(&header).expect("serializing a JSON map of strings cannot fail");
    let needle = format!("\"{CRC_KEY}\":\"{PLACEHOLDER}\"");
    let crc_at = header_bytes
        .windows(needle.len())
        .position(|w| w == needle.as_bytes())
        .expect("the CRC placeholder is in the header")
        + needle.len()
        - PLACEHOLDER.len()
        - 1;
    header_bytes.resize(header_bytes.len().next_multiple_of(8), b' ');

    let dir = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let tmp = tempfile::Builder::new()
        .prefix(".eamet-")
        .suffix(".tmp")
        .tempfile_in(&dir)
        .map_err(io_err("create a temporary file in", &dir))?;
    let tmp_path = tmp.path().to_path_buf();
    let werr = io_err("write", &tmp_path);
    let mut crc = crc32fast::Hasher::new();
    crc.update(meta_json.as_bytes());
    {
        let mut out = BufWriter::with_capacity(1 << 20, tmp.as_file());
        let write =
            |out: &mut BufWriter<&File>, crc: &mut crc32fast::Hasher| -> std::io::Result<()> {
                out.write_all(&(header_bytes.len() as u64).to_le_bytes())?;
                out.write_all(&header_bytes)?;
                let mut bytes = Vec::new();
                for t in tensors {
                    match &t.source {
                        TensorSource::Dense(values) => {
                            for chunk in values.chunks(1 << 16) {
                                write_f64s(out, crc, chunk, &mut bytes)?;
                            }
                        }
                        TensorSource::SymmetricUpper(u) => {
                            let d = u.ncols();
                            const ROWS: usize = 64;
                            let mut block = vec![0.0; ROWS * d];
                            for i0 in (0..d).step_by(ROWS) {
                                let i1 = (i0 + ROWS).min(d);
                                let block = &mut block[..(i1 - i0) * d];
                                linalg::symmetric_rows(u, i0, i1, block);
                                write_f64s(out, crc, block, &mut bytes)?;
                            }
                        }
                    }
                }
                out.flush()
            };
        write(&mut out, &mut crc).map_err(werr)?;
    }
    let mut file = tmp.as_file();
    let hex = format!("{:08x}", crc.finalize());
    file.seek(SeekFrom::Start(8 + crc_at as u64))
        .and_then(|_| file.write_all(hex.as_bytes()))
        .and_then(|_| file.sync_all())
        .map_err(io_err("write", &tmp_path))?;
    match mode {
        WriteMode::CreateNew => tmp.persist_noclobber(path).map_err(|e| {
            if e.error.kind() == std::io::ErrorKind::AlreadyExists {
                SolveError::AlreadyExists {
                    path: path.to_path_buf(),
                }
            } else {
                SolveError::Io {
                    op: "rename a temporary file to",
                    path: path.to_path_buf(),
                    source: e.error,
                }
            }
        })?,
        WriteMode::Overwrite => tmp.persist(path).map_err(|e| SolveError::Io {
            op: "rename a temporary file to",
            path: path.to_path_buf(),
            source: e.error,
        })?,
    };
    // Make the rename itself durable where the platform allows it (best effort).
    if let Ok(d) = File::open(&dir) {
        let _ = d.sync_all();
    }
    Ok(())
}

/// A parsed, CRC-checked file.
pub(crate) struct FileIn {
    pub path: PathBuf,
    pub kind: &'static str,
    bytes: Vec<u8>,
    pub meta_json: String,
    crc: Option<String>,
}

impl FileIn {
    pub(crate) fn corrupt(&self, reason: impl Into<String>) -> SolveError {
        SolveError::CorruptFile {
            path: self.path.clone(),
            kind: self.kind,
            reason: reason.into(),
        }
    }

    /// Reads and structurally validates a file; the CRC is checked by [`FileIn::verify_crc`].
    pub(crate) fn read(path: &Path, kind: &'static str) -> Result<FileIn> {
        let bytes = std::fs::read(path).map_err(io_err("read", path))?;
        let corrupt = |reason: String| SolveError::CorruptFile {
            path: path.to_path_buf(),
            kind,
            reason,
        };
        let (_, metadata) = SafeTensors::read_metadata(&bytes)
            .map_err(|e| corrupt(format!("invalid safetensors container: {e:?}")))?;
        // Full structural validation (offsets cover the data exactly, sizes match dtypes).
        SafeTensors::deserialize(&bytes)
            .map_err(|e| corrupt(format!("invalid safetensors container: {e:?}")))?;
        let map: HashMap<String, String> = metadata.metadata().clone().unwrap_or_default();
        let meta_json = map
            .get(META_KEY)
            .cloned()
            .ok_or_else(|| corrupt(format!("no \"{META_KEY}\" entry in __metadata__")))?;
        let crc = map.get(CRC_KEY).cloned();
        Ok(FileIn {
            path: path.to_path_buf(),
            kind,
            bytes,
            meta_json,
            crc,
        })
    }

    /// Checks the CRC-32 of the data section.
    pub(crate) fn verify_crc(&self) -> Result<()> {
        let stored = self
            .crc
            .as_deref()
            .ok_or_else(|| self.corrupt(format!("no \"{CRC_KEY}\" entry in __metadata__")))?;
        let n = u64::from_le_bytes(
            self.bytes[..8]
                .try_into()
                .expect("checked by read_metadata"),
        );
        let data = &self.bytes[8 + n as usize..];
        let mut hasher = crc32fast::Hasher::new();
        hasher.update(self.meta_json.as_bytes());
        hasher.update(data);
        let actual = format!("{:08x}", hasher.finalize());
        if actual != stored {
            return Err(self.corrupt(format!(
                "checksum mismatch (stored crc32 {stored}, computed {actual}): the metadata or tensor data was modified or damaged"
            )));
        }
        Ok(())
    }

    /// The tensor `name` as `f64` values, checking its dtype, shape and that every value is
    /// finite.
    pub(crate) fn tensor(&self, name: &str, shape: &[usize]) -> Result<Vec<f64>> {
        let st = SafeTensors::deserialize(&self.bytes)
            .map_err(|e| self.corrupt(format!("invalid safetensors container: {e:?}")))?;
        let view = st
            .tensor(name)
            .map_err(|_| self.corrupt(format!("tensor \"{name}\" is missing")))?;
        if view.dtype() != Dtype::F64 || view.shape() != shape {
            return Err(self.corrupt(format!(
                "tensor \"{name}\" is {:?} {:?}, expected F64 {:?}",
                view.dtype(),
                view.shape(),
                shape
            )));
        }
        let values: Vec<f64> = view
            .data()
            .chunks_exact(8)
            .map(|c| f64::from_le_bytes(c.try_into().expect("chunks of 8")))
            .collect();
        if let Some(i) = values.iter().position(|v| !v.is_finite()) {
            return Err(self.corrupt(format!(
                "tensor \"{name}\" has a non-finite value at flat index {i}"
            )));
        }
        Ok(values)
    }

    /// Whether the file has a tensor called `name`.
    pub(crate) fn has_tensor(&self, name: &str) -> bool {
        SafeTensors::deserialize(&self.bytes)
            .map(|st| st.tensor(name).is_ok())
            .unwrap_or(false)
    }
}

impl KeyStats {
    /// Saves the statistics to `path` (safetensors + JSON metadata, see [`StatsMeta`]) and
    /// returns the metadata written. Atomic: the file appears complete or not at all. With
    /// [`WriteMode::CreateNew`] an existing file is never replaced.
    ///
    /// ```
    /// use eamet_solve::{KeyStats, StatsProvenance, StatsRequest, WriteMode};
    /// use ndarray::array;
    ///
    /// let mut stats = KeyStats::new(2);
    /// stats.update(array![[1.0, 2.0], [3.0, 4.0]].view())?;
    /// stats.add_samples(1);
    /// let prov = StatsProvenance {
    ///     model_id: "toy".into(), model_hash: "abc".into(), layer: 3,
    ///     corpus_id: "wikitext-2".into(), corpus_hash: "def".into(), dtype: "float32".into(),
    /// };
    /// let dir = tempfile::tempdir().unwrap();
    /// let path = dir.path().join("layer3.safetensors");
    /// stats.save(&path, &prov, WriteMode::CreateNew)?;
    /// let back = KeyStats::load(&path, &StatsRequest::new(prov).with_samples(1))?;
    /// assert_eq!(back.sum_outer(), stats.sum_outer());
    /// # Ok::<(), eamet_solve::SolveError>(())
    /// ```
    pub fn save(
        &self,
        path: impl AsRef<Path>,
        provenance: &StatsProvenance,
        mode: WriteMode,
    ) -> Result<StatsMeta> {
        let meta = StatsMeta {
            format: STATS_FORMAT.into(),
            version: STATS_VERSION,
            provenance: provenance.clone(),
            samples: self.samples(),
            tokens: self.tokens(),
            d: self.dim(),
        };
        let json = serde_json::to_string(&meta).expect("serializing plain metadata cannot fail");
        let d = self.dim();
        let sum = self.sum();
        let sum_slice = sum.as_slice().expect("owned vector is contiguous");
        write_file(
            path.as_ref(),
            mode,
            json,
            &[
                TensorOut {
                    name: "sum_outer",
                    shape: vec![d, d],
                    source: TensorSource::SymmetricUpper(self.upper()),
                },
                TensorOut {
                    name: "sum",
                    shape: vec![d],
                    source: TensorSource::Dense(sum_slice),
                },
            ],
        )?;
        Ok(meta)
    }

    /// Loads statistics saved by [`save`](Self::save), refusing a file computed from anything
    /// else than `request` describes ([`SolveError::CacheMismatch`], listing every differing
    /// field). Damaged or truncated files give [`SolveError::CorruptFile`]; files of another
    /// format version [`SolveError::UnsupportedFormat`].
    pub fn load(path: impl AsRef<Path>, request: &StatsRequest) -> Result<KeyStats> {
        let file = FileIn::read(path.as_ref(), STATS_KIND)?;
        let meta = stats_meta(&file)?;
        file.verify_crc()?;
        let mismatches = request.mismatches(&meta);
        if !mismatches.is_empty() {
            return Err(SolveError::CacheMismatch {
                path: file.path.clone(),
                mismatches,
            });
        }
        stats_body(&file, meta).map(|(s, _)| s)
    }

    /// Reads a statistics file without checking what it was computed from (integrity is still
    /// checked), returning its metadata for the caller to inspect. Prefer
    /// [`load`](Self::load) when you know what you expect.
    pub fn read_file(path: impl AsRef<Path>) -> Result<(KeyStats, StatsMeta)> {
        let file = FileIn::read(path.as_ref(), STATS_KIND)?;
        let meta = stats_meta(&file)?;
        file.verify_crc()?;
        stats_body(&file, meta)
    }

    /// Merges shard files (for `eamet stats merge`): every shard must have the same provenance
    /// and `d` ([`SolveError::CacheMismatch`] names the first shard that differs from the
    /// first one). Returns the merged statistics and their metadata.
    pub fn merge_files<P: AsRef<Path>>(paths: &[P]) -> Result<(KeyStats, StatsMeta)> {
        let Some((first, rest)) = paths.split_first() else {
            return Err(SolveError::EmptyBatch {
                what: "list of shard files",
                shape: vec![0],
            });
        };
        let (mut acc, mut meta) = KeyStats::read_file(first)?;
        let request = StatsRequest::new(meta.provenance.clone()).with_dim(meta.d);
        for p in rest {
            let file = FileIn::read(p.as_ref(), STATS_KIND)?;
            let m = stats_meta(&file)?;
            file.verify_crc()?;
            let mismatches = request.mismatches(&m);
            if !mismatches.is_empty() {
                return Err(SolveError::CacheMismatch {
                    path: file.path.clone(),
                    mismatches,
                });
            }
            let (s, _) = stats_body(&file, m)?;
            acc.merge(&s)?;
        }
        meta.samples = acc.samples();
        meta.tokens = acc.tokens();
        Ok((acc, meta))
    }
}

fn stats_meta(file: &FileIn) -> Result<StatsMeta> {
    // Check the format tag before the full schema, so another eamet file kind gets a clear error.
    let value: serde_json::Value = serde_json::from_str(&file.meta_json)
        .map_err(|e| file.corrupt(format!("metadata is not JSON: {e}")))?;
    let format = value
        .get("format")
        .and_then(|v| v.as_str())
        .unwrap_or("<none>");
    let version = value.get("version").and_then(|v| v.as_u64()).unwrap_or(0);
    if format != STATS_FORMAT || version != u64::from(STATS_VERSION) {
        return Err(SolveError::UnsupportedFormat {
            path: file.path.clone(),
            found: format!("{format} v{version}"),
            supported: format!("{STATS_FORMAT} v{STATS_VERSION}"),
        });
    }
    serde_json::from_value(value).map_err(|e| file.corrupt(format!("metadata: {e}")))
}

/// The tensors of a statistics file whose CRC was verified.
fn stats_body(file: &FileIn, meta: StatsMeta) -> Result<(KeyStats, StatsMeta)> {
    let d = meta.d;
    let full = file.tensor("sum_outer", &[d, d])?;
    let sum = file.tensor("sum", &[d])?;
    let upper = Array2::from_shape_vec((d, d), full)
        .map_err(|e| file.corrupt(format!("sum_outer: {e}")))?;
    let stats = KeyStats::from_parts_unchecked(upper, Array1::from(sum), meta.tokens, meta.samples);
    Ok((stats, meta))
}
