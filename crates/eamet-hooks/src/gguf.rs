//! GGUF (v2 and v3) container reader: header, typed metadata, tensor descriptors.
//!
//! A GGUF file is untrusted input. Every count, length, offset and dimension read from it is
//! checked against the bytes that remain and against overflow *before* anything is allocated
//! or indexed, so a truncated or hostile file yields a [`GgufError`] that names the field and
//! the byte offset where it went wrong.
//!
//! ```no_run
//! use eamet_hooks::gguf::GgufFile;
//! let f = GgufFile::open("SmolLM2-135M-Instruct.Q4_1.gguf")?;
//! assert_eq!(f.metadata_str("general.architecture")?, "llama");
//! let ffn_down = f.tensor("blk.0.ffn_down.weight").expect("tensor exists");
//! println!("{:?} {:?}", ffn_down.dims, ffn_down.dtype);
//! # Ok::<(), eamet_hooks::gguf::GgufError>(())
//! ```

use std::collections::HashMap;
use std::fmt;
use std::fs::File;
use std::path::{Path, PathBuf};

/// File magic, `GGUF` read as a little-endian u32.
pub const GGUF_MAGIC: u32 = 0x4655_4747;
/// Alignment of the tensor data section when `general.alignment` is absent.
pub const DEFAULT_ALIGNMENT: u64 = 32;
/// Most dimensions a GGML tensor can have.
pub const MAX_DIMS: usize = 4;
/// Longest key or string value accepted (bytes). Real files stay far below.
pub const MAX_STRING_LEN: u64 = 1 << 30;
/// Deepest nesting of arrays inside arrays accepted.
pub const MAX_ARRAY_DEPTH: usize = 4;

/// Everything that can be wrong with a GGUF file.
#[derive(Debug, thiserror::Error)]
pub enum GgufError {
    /// The file could not be opened or mapped.
    #[error("cannot read GGUF file {path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// The first four bytes are not `GGUF`.
    #[error("not a GGUF file: magic is {found:#010x}, expected {GGUF_MAGIC:#010x} (\"GGUF\")")]
    BadMagic {
        /// What was found.
        found: u32,
    },
    /// Only versions 2 and 3 are read (version 1 used 32-bit counts and is long obsolete).
    #[error("unsupported GGUF version {0} (supported: 2, 3)")]
    UnsupportedVersion(u32),
    /// A field runs past the end of the file.
    #[error(
        "GGUF truncated: {field} at byte {offset} needs {needed} bytes, only {available} remain"
    )]
    Truncated {
        /// Which field was being read.
        field: String,
        /// Byte offset where it starts.
        offset: u64,
        /// Bytes it needs.
        needed: u64,
        /// Bytes left in the file.
        available: u64,
    },
    /// A field has a value that cannot be right.
    #[error("GGUF field {field} at byte {offset}: {detail}")]
    Invalid {
        /// Which field.
        field: String,
        /// Byte offset where it starts.
        offset: u64,
        /// What is wrong.
        detail: String,
    },
    /// A metadata key the caller asked for is absent.
    #[error("GGUF metadata key {0:?} is missing")]
    MissingKey(String),
    /// A metadata key holds another type than the caller asked for.
    #[error("GGUF metadata key {key:?} holds {found}, expected {expected}")]
    WrongType {
        /// The key.
        key: String,
        /// What it holds.
        found: &'static str,
        /// What was asked.
        expected: &'static str,
    },
}

/// Result alias for this module.
pub type Result<T> = std::result::Result<T, GgufError>;

/// A metadata value.
#[derive(Debug, Clone, PartialEq)]
pub enum MetaValue {
    /// `uint8`
    U8(u8),
    /// `int8`
    I8(i8),
    /// `uint16`
    U16(u16),
    /// `int16`
    I16(i16),
    /// `uint32`
    U32(u32),
    /// `int32`
    I32(i32),
    /// `float32`
    F32(f32),
    /// `bool`
    Bool(bool),
    /// UTF-8 string (invalid UTF-8 is replaced, as tokenizer vocabularies sometimes hold raw bytes)
    String(String),
    /// `uint64`
    U64(u64),
    /// `int64`
    I64(i64),
    /// `float64`
    F64(f64),
    /// Array of values of one type.
    Array(Vec<MetaValue>),
}

impl MetaValue {
    /// Name of the GGUF type, for messages.
    pub fn type_name(&self) -> &'static str {
        match self {
            MetaValue::U8(_) => "uint8",
            MetaValue::I8(_) => "int8",
            MetaValue::U16(_) => "uint16",
            MetaValue::I16(_) => "int16",
            MetaValue::U32(_) => "uint32",
            MetaValue::I32(_) => "int32",
            MetaValue::F32(_) => "float32",
            MetaValue::Bool(_) => "bool",
            MetaValue::String(_) => "string",
            MetaValue::U64(_) => "uint64",
            MetaValue::I64(_) => "int64",
            MetaValue::F64(_) => "float64",
            MetaValue::Array(_) => "array",
        }
    }

    /// The value as a non-negative integer, if it is an integer of any width that fits.
    pub fn as_u64(&self) -> Option<u64> {
        match *self {
            MetaValue::U8(v) => Some(v.into()),
            MetaValue::U16(v) => Some(v.into()),
            MetaValue::U32(v) => Some(v.into()),
            MetaValue::U64(v) => Some(v),
            MetaValue::I8(v) => u64::try_from(v).ok(),
            MetaValue::I16(v) => u64::try_from(v).ok(),
            MetaValue::I32(v) => u64::try_from(v).ok(),
            MetaValue::I64(v) => u64::try_from(v).ok(),
            _ => None,
        }
    }

    /// The value as a float, if it is numeric.
    pub fn as_f64(&self) -> Option<f64> {
        match *self {
            MetaValue::F32(v) => Some(v.into()),
            MetaValue::F64(v) => Some(v),
            _ => self.as_u64().map(|v| v as f64).or(match *self {
                MetaValue::I8(v) => Some(v.into()),
                MetaValue::I16(v) => Some(v.into()),
                MetaValue::I32(v) => Some(v.into()),
                MetaValue::I64(v) => Some(v as f64),
                _ => None,
            }),
        }
    }

    /// The string, if it is one.
    pub fn as_str(&self) -> Option<&str> {
        match self {
            MetaValue::String(s) => Some(s),
            _ => None,
        }
    }
}

/// GGML tensor element / block types (the numbering is the file format's).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[allow(missing_docs)]
pub enum GgmlType {
    F32,
    F16,
    Q4_0,
    Q4_1,
    Q5_0,
    Q5_1,
    Q8_0,
    Q8_1,
    Q2K,
    Q3K,
    Q4K,
    Q5K,
    Q6K,
    Q8K,
    I8,
    I16,
    I32,
    I64,
    F64,
    BF16,
}

impl GgmlType {
    /// Map the on-disk id; unknown ids (newer or exotic quantizations) are `None`.
    pub fn from_id(id: u32) -> Option<Self> {
        Some(match id {
            0 => GgmlType::F32,
            1 => GgmlType::F16,
            2 => GgmlType::Q4_0,
            3 => GgmlType::Q4_1,
            6 => GgmlType::Q5_0,
            7 => GgmlType::Q5_1,
            8 => GgmlType::Q8_0,
            9 => GgmlType::Q8_1,
            10 => GgmlType::Q2K,
            11 => GgmlType::Q3K,
            12 => GgmlType::Q4K,
            13 => GgmlType::Q5K,
            14 => GgmlType::Q6K,
            15 => GgmlType::Q8K,
            24 => GgmlType::I8,
            25 => GgmlType::I16,
            26 => GgmlType::I32,
            27 => GgmlType::I64,
            28 => GgmlType::F64,
            30 => GgmlType::BF16,
            _ => return None,
        })
    }

    /// The on-disk id (inverse of [`GgmlType::from_id`]).
    pub fn id(self) -> u32 {
        match self {
            GgmlType::F32 => 0,
            GgmlType::F16 => 1,
            GgmlType::Q4_0 => 2,
            GgmlType::Q4_1 => 3,
            GgmlType::Q5_0 => 6,
            GgmlType::Q5_1 => 7,
            GgmlType::Q8_0 => 8,
            GgmlType::Q8_1 => 9,
            GgmlType::Q2K => 10,
            GgmlType::Q3K => 11,
            GgmlType::Q4K => 12,
            GgmlType::Q5K => 13,
            GgmlType::Q6K => 14,
            GgmlType::Q8K => 15,
            GgmlType::I8 => 24,
            GgmlType::I16 => 25,
            GgmlType::I32 => 26,
            GgmlType::I64 => 27,
            GgmlType::F64 => 28,
            GgmlType::BF16 => 30,
        }
    }

    /// (elements per block, bytes per block).
    pub fn block_layout(self) -> (u64, u64) {
        match self {
            GgmlType::F32 => (1, 4),
            GgmlType::F16 | GgmlType::BF16 => (1, 2),
            GgmlType::Q4_0 => (32, 18),
            GgmlType::Q4_1 => (32, 20),
            GgmlType::Q5_0 => (32, 22),
            GgmlType::Q5_1 => (32, 24),
            GgmlType::Q8_0 => (32, 34),
            GgmlType::Q8_1 => (32, 36),
            GgmlType::Q2K => (256, 84),
            GgmlType::Q3K => (256, 110),
            GgmlType::Q4K => (256, 144),
            GgmlType::Q5K => (256, 176),
            GgmlType::Q6K => (256, 210),
            GgmlType::Q8K => (256, 292),
            GgmlType::I8 => (1, 1),
            GgmlType::I16 => (1, 2),
            GgmlType::I32 => (1, 4),
            GgmlType::I64 | GgmlType::F64 => (1, 8),
        }
    }
}

impl fmt::Display for GgmlType {
    /// The type's name as the `gguf` Python package and llama.cpp's quantize tool spell it
    /// (`Q4_K`, `Q8_0`, `BF16`).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let k = match self {
            GgmlType::Q2K => "Q2_K",
            GgmlType::Q3K => "Q3_K",
            GgmlType::Q4K => "Q4_K",
            GgmlType::Q5K => "Q5_K",
            GgmlType::Q6K => "Q6_K",
            GgmlType::Q8K => "Q8_K",
            other => return fmt::Debug::fmt(other, f),
        };
        f.write_str(k)
    }
}

/// Where a tensor lives in the file and what it holds.
#[derive(Debug, Clone, PartialEq)]
pub struct TensorInfo {
    /// Tensor name, e.g. `blk.0.ffn_down.weight`.
    pub name: String,
    /// Dimensions in GGML order: `dims[0]` is the contiguous (fastest-varying) one.
    pub dims: Vec<u64>,
    /// Storage type.
    pub dtype: GgmlType,
    /// Absolute byte offset of the data in the file (already checked to lie inside it).
    pub offset: u64,
    /// Size of the data in bytes.
    pub size: u64,
}

impl TensorInfo {
    /// Number of elements.
    pub fn elements(&self) -> u64 {
        self.dims.iter().product()
    }
}

/// Parsed header of a GGUF file plus a read-only memory map of its bytes.
pub struct GgufFile {
    /// Format version (2 or 3).
    pub version: u32,
    /// Metadata in file order.
    pub metadata: Vec<(String, MetaValue)>,
    /// Tensor descriptors in file order.
    pub tensors: Vec<TensorInfo>,
    /// Alignment of the data section.
    pub alignment: u64,
    /// Absolute offset where tensor data starts.
    pub data_offset: u64,
    /// Byte range of each metadata entry (key, type and value) in the file, in file order.
    metadata_spans: Vec<std::ops::Range<usize>>,
    index: HashMap<String, usize>,
    tensor_index: HashMap<String, usize>,
    bytes: Bytes,
}

enum Bytes {
    Mapped(memmap2::Mmap),
    Owned(Vec<u8>),
}

impl Bytes {
    fn as_slice(&self) -> &[u8] {
        match self {
            Bytes::Mapped(m) => m,
            Bytes::Owned(v) => v,
        }
    }
}

impl fmt::Debug for GgufFile {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("GgufFile")
            .field("version", &self.version)
            .field("metadata_keys", &self.metadata.len())
            .field("tensors", &self.tensors.len())
            .field("alignment", &self.alignment)
            .field("data_offset", &self.data_offset)
            .finish()
    }
}

struct Cursor<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Cursor<'a> {
    fn remaining(&self) -> u64 {
        (self.buf.len() - self.pos) as u64
    }

    fn take(&mut self, n: u64, field: &dyn Fn() -> String) -> Result<&'a [u8]> {
        if n > self.remaining() {
            return Err(GgufError::Truncated {
                field: field(),
                offset: self.pos as u64,
                needed: n,
                available: self.remaining(),
            });
        }
        let n = n as usize; // n <= remaining <= usize::MAX
        let s = &self.buf[self.pos..self.pos + n];
        self.pos += n;
        Ok(s)
    }

    fn array<const N: usize>(&mut self, field: &dyn Fn() -> String) -> Result<[u8; N]> {
        let s = self.take(N as u64, field)?;
        let mut a = [0u8; N];
        a.copy_from_slice(s);
        Ok(a)
    }

    fn u32(&mut self, field: &dyn Fn() -> String) -> Result<u32> {
        Ok(u32::from_le_bytes(self.array(field)?))
    }

    fn u64(&mut self, field: &dyn Fn() -> String) -> Result<u64> {
        Ok(u64::from_le_bytes(self.array(field)?))
    }

    fn string(&mut self, field: &dyn Fn() -> String) -> Result<String> {
        let at = self.pos as u64;
        let len = self.u64(&|| format!("{} (length)", field()))?;
        if len > MAX_STRING_LEN {
            return Err(GgufError::Invalid {
                field: field(),
                offset: at,
                detail: format!("string length {len} exceeds the limit {MAX_STRING_LEN}"),
            });
        }
        let bytes = self.take(len, field)?;
        Ok(String::from_utf8_lossy(bytes).into_owned())
    }

    fn value(&mut self, ty: u32, field: &dyn Fn() -> String, depth: usize) -> Result<MetaValue> {
        let at = self.pos as u64;
        Ok(match ty {
            0 => MetaValue::U8(u8::from_le_bytes(self.array(field)?)),
            1 => MetaValue::I8(i8::from_le_bytes(self.array(field)?)),
            2 => MetaValue::U16(u16::from_le_bytes(self.array(field)?)),
            3 => MetaValue::I16(i16::from_le_bytes(self.array(field)?)),
            4 => MetaValue::U32(self.u32(field)?),
            5 => MetaValue::I32(i32::from_le_bytes(self.array(field)?)),
            6 => MetaValue::F32(f32::from_le_bytes(self.array(field)?)),
            7 => match self.array::<1>(field)?[0] {
                0 => MetaValue::Bool(false),
                1 => MetaValue::Bool(true),
                b => {
                    return Err(GgufError::Invalid {
                        field: field(),
                        offset: at,
                        detail: format!("bool byte is {b}, expected 0 or 1"),
                    })
                }
            },
            8 => MetaValue::String(self.string(field)?),
            9 => {
                if depth >= MAX_ARRAY_DEPTH {
                    return Err(GgufError::Invalid {
                        field: field(),
                        offset: at,
                        detail: format!("arrays nested deeper than {MAX_ARRAY_DEPTH}"),
                    });
                }
                let item_ty = self.u32(&|| format!("{} (array item type)", field()))?;
                let len_at = self.pos as u64;
                let len = self.u64(&|| format!("{} (array length)", field()))?;
                let min = min_value_size(item_ty).ok_or_else(|| GgufError::Invalid {
                    field: field(),
                    offset: at,
                    detail: format!("unknown array item type {item_ty}"),
                })?;
                // Every item needs at least `min` bytes: a length the file cannot hold is
                // rejected before any allocation.
                if len.checked_mul(min).is_none_or(|b| b > self.remaining()) {
                    return Err(GgufError::Invalid {
                        field: field(),
                        offset: len_at,
                        detail: format!(
                            "array of {len} items of type {item_ty} cannot fit in the {} remaining bytes",
                            self.remaining()
                        ),
                    });
                }
                let mut items = Vec::with_capacity(len as usize);
                for i in 0..len {
                    items.push(self.value(item_ty, &|| format!("{}[{i}]", field()), depth + 1)?);
                }
                MetaValue::Array(items)
            }
            10 => MetaValue::U64(self.u64(field)?),
            11 => MetaValue::I64(i64::from_le_bytes(self.array(field)?)),
            12 => MetaValue::F64(f64::from_le_bytes(self.array(field)?)),
            other => {
                return Err(GgufError::Invalid {
                    field: field(),
                    offset: at,
                    detail: format!("unknown metadata value type {other}"),
                })
            }
        })
    }
}

/// Smallest encoded size of a value of the given type (strings: the length prefix).
fn min_value_size(ty: u32) -> Option<u64> {
    Some(match ty {
        0 | 1 | 7 => 1,
        2 | 3 => 2,
        4..=6 => 4,
        8 | 10..=12 => 8,
        9 => 12,
        _ => return None,
    })
}

impl GgufFile {
    /// Memory-map and parse a file. The file must not be modified while it is open.
    pub fn open(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref();
        let io = |source| GgufError::Io {
            path: path.to_path_buf(),
            source,
        };
        let file = File::open(path).map_err(io)?;
        // SAFETY: the map is read-only and private to this value; GGUF files are not expected
        // to change while open (documented above). Reads are bounds-checked slices.
        let map = unsafe { memmap2::Mmap::map(&file) }.map_err(io)?;
        Self::parse(Bytes::Mapped(map))
    }

    /// Parse a GGUF image held in memory.
    pub fn from_bytes(bytes: Vec<u8>) -> Result<Self> {
        Self::parse(Bytes::Owned(bytes))
    }

    fn parse(bytes: Bytes) -> Result<Self> {
        let buf = bytes.as_slice();
        let mut c = Cursor { buf, pos: 0 };
        let magic = c.u32(&|| "magic".into())?;
        if magic != GGUF_MAGIC {
            return Err(GgufError::BadMagic { found: magic });
        }
        let version = c.u32(&|| "version".into())?;
        if !(2..=3).contains(&version) {
            return Err(GgufError::UnsupportedVersion(version));
        }
        let n_tensors_at = c.pos as u64;
        let n_tensors = c.u64(&|| "tensor_count".into())?;
        let n_kv_at = c.pos as u64;
        let n_kv = c.u64(&|| "metadata_kv_count".into())?;
        // Minimal encodings: key (8-byte length) + type (4) + 1-byte value = 13;
        // tensor info = name length (8) + n_dims (4) + type (4) + offset (8) = 24.
        if n_kv.checked_mul(13).is_none_or(|b| b > c.remaining()) {
            return Err(GgufError::Invalid {
                field: "metadata_kv_count".into(),
                offset: n_kv_at,
                detail: format!("{n_kv} entries cannot fit in {} bytes", c.remaining()),
            });
        }
        if n_tensors.checked_mul(24).is_none_or(|b| b > c.remaining()) {
            return Err(GgufError::Invalid {
                field: "tensor_count".into(),
                offset: n_tensors_at,
                detail: format!("{n_tensors} tensors cannot fit in {} bytes", c.remaining()),
            });
        }

        let mut metadata = Vec::with_capacity(n_kv as usize);
        let mut metadata_spans = Vec::with_capacity(n_kv as usize);
        let mut index = HashMap::with_capacity(n_kv as usize);
        for i in 0..n_kv {
            let key_at = c.pos as u64;
            let key = c.string(&|| format!("metadata[{i}].key"))?;
            let ty = c.u32(&|| format!("metadata[{i}] ({key}) type"))?;
            let value = c.value(ty, &|| format!("metadata[{i}] ({key}) value"), 0)?;
            if index.insert(key.clone(), metadata.len()).is_some() {
                return Err(GgufError::Invalid {
                    field: format!("metadata[{i}].key"),
                    offset: key_at,
                    detail: format!("duplicate key {key:?}"),
                });
            }
            metadata.push((key, value));
            metadata_spans.push(key_at as usize..c.pos);
        }

        let alignment = match index.get("general.alignment").map(|&i| &metadata[i].1) {
            None => DEFAULT_ALIGNMENT,
            Some(v) => match v.as_u64() {
                Some(a) if a > 0 && a.is_power_of_two() => a,
                _ => {
                    return Err(GgufError::Invalid {
                        field: "general.alignment".into(),
                        offset: 0,
                        detail: format!("{v:?} is not a positive power of two"),
                    })
                }
            },
        };

        struct Raw {
            name: String,
            dims: Vec<u64>,
            dtype: GgmlType,
            rel: u64,
            size: u64,
            at: u64,
        }
        let mut raw = Vec::with_capacity(n_tensors as usize);
        let mut tensor_index = HashMap::with_capacity(n_tensors as usize);
        for i in 0..n_tensors {
            let at = c.pos as u64;
            let name = c.string(&|| format!("tensor[{i}].name"))?;
            let fname = |f: &str| format!("tensor[{i}] ({name}).{f}");
            let nd_at = c.pos as u64;
            let n_dims = c.u32(&|| fname("n_dims"))?;
            if n_dims == 0 || n_dims as usize > MAX_DIMS {
                return Err(GgufError::Invalid {
                    field: fname("n_dims"),
                    offset: nd_at,
                    detail: format!("{n_dims} dimensions (must be 1..={MAX_DIMS})"),
                });
            }
            let mut dims = Vec::with_capacity(n_dims as usize);
            let mut elements: u64 = 1;
            for d in 0..n_dims {
                let dim_at = c.pos as u64;
                let v = c.u64(&|| fname(&format!("dims[{d}]")))?;
                elements = match elements.checked_mul(v) {
                    Some(e) if v > 0 && e <= i64::MAX as u64 => e,
                    _ => {
                        return Err(GgufError::Invalid {
                            field: fname(&format!("dims[{d}]")),
                            offset: dim_at,
                            detail: format!(
                                "dimension {v} is zero or makes the element count overflow"
                            ),
                        })
                    }
                };
                dims.push(v);
            }
            let ty_at = c.pos as u64;
            let ty = c.u32(&|| fname("type"))?;
            let dtype = GgmlType::from_id(ty).ok_or_else(|| GgufError::Invalid {
                field: fname("type"),
                offset: ty_at,
                detail: format!("unknown GGML type id {ty}"),
            })?;
            let (block, block_bytes) = dtype.block_layout();
            if dims[0] % block != 0 {
                return Err(GgufError::Invalid {
                    field: fname("dims[0]"),
                    offset: nd_at,
                    detail: format!(
                        "{} is not a multiple of the {dtype} block size {block}",
                        dims[0]
                    ),
                });
            }
            let size =
                (elements / block)
                    .checked_mul(block_bytes)
                    .ok_or_else(|| GgufError::Invalid {
                        field: fname("dims"),
                        offset: nd_at,
                        detail: "byte size overflows".into(),
                    })?;
            let off_at = c.pos as u64;
            let rel = c.u64(&|| fname("offset"))?;
            if rel % alignment != 0 {
                return Err(GgufError::Invalid {
                    field: fname("offset"),
                    offset: off_at,
                    detail: format!("{rel} is not a multiple of the alignment {alignment}"),
                });
            }
            if tensor_index.insert(name.clone(), raw.len()).is_some() {
                return Err(GgufError::Invalid {
                    field: format!("tensor[{i}].name"),
                    offset: at,
                    detail: format!("duplicate tensor name {name:?}"),
                });
            }
            raw.push(Raw {
                name,
                dims,
                dtype,
                rel,
                size,
                at: off_at,
            });
        }

        let header_end = c.pos as u64;
        let data_offset = header_end.div_ceil(alignment) * alignment;
        let file_len = buf.len() as u64;
        let mut tensors = Vec::with_capacity(raw.len());
        for r in raw {
            let start = data_offset.checked_add(r.rel);
            let end = start.and_then(|s| s.checked_add(r.size));
            match (start, end) {
                (Some(start), Some(end)) if end <= file_len => tensors.push(TensorInfo {
                    name: r.name,
                    dims: r.dims,
                    dtype: r.dtype,
                    offset: start,
                    size: r.size,
                }),
                _ => {
                    return Err(GgufError::Invalid {
                        field: format!("tensor ({}).offset", r.name),
                        offset: r.at,
                        detail: format!(
                        "data [{} + {}, +{} bytes) lies past the end of the {file_len}-byte file",
                        data_offset, r.rel, r.size
                    ),
                    })
                }
            }
        }

        Ok(GgufFile {
            version,
            metadata,
            tensors,
            alignment,
            data_offset,
            metadata_spans,
            index,
            tensor_index,
            bytes,
        })
    }

    /// A metadata value by key.
    pub fn get(&self, key: &str) -> Option<&MetaValue> {
        self.index.get(key).map(|&i| &self.metadata[i].1)
    }

    fn require(&self, key: &str) -> Result<&MetaValue> {
        self.get(key)
            .ok_or_else(|| GgufError::MissingKey(key.to_string()))
    }

    /// A string metadata value.
    pub fn metadata_str(&self, key: &str) -> Result<&str> {
        let v = self.require(key)?;
        v.as_str().ok_or(GgufError::WrongType {
            key: key.into(),
            found: v.type_name(),
            expected: "string",
        })
    }

    /// An integer metadata value of any width (negative values are rejected).
    pub fn metadata_u64(&self, key: &str) -> Result<u64> {
        let v = self.require(key)?;
        v.as_u64().ok_or(GgufError::WrongType {
            key: key.into(),
            found: v.type_name(),
            expected: "non-negative integer",
        })
    }

    /// A numeric metadata value as f64.
    pub fn metadata_f64(&self, key: &str) -> Result<f64> {
        let v = self.require(key)?;
        v.as_f64().ok_or(GgufError::WrongType {
            key: key.into(),
            found: v.type_name(),
            expected: "number",
        })
    }

    /// `general.architecture`, e.g. `llama`.
    pub fn architecture(&self) -> Result<&str> {
        self.metadata_str("general.architecture")
    }

    /// An architecture-scoped integer such as `block_count` (reads `{arch}.{name}`).
    pub fn arch_u64(&self, name: &str) -> Result<u64> {
        let arch = self.architecture()?;
        self.metadata_u64(&format!("{arch}.{name}"))
    }

    /// Tensor descriptor by name.
    pub fn tensor(&self, name: &str) -> Option<&TensorInfo> {
        self.tensor_index.get(name).map(|&i| &self.tensors[i])
    }

    /// Raw (still quantized) bytes of a tensor; the range was validated at parse time.
    pub fn tensor_bytes(&self, info: &TensorInfo) -> &[u8] {
        let buf = self.bytes.as_slice();
        // Offsets were checked against the file length when `info` was created by this file;
        // a foreign `info` is clamped rather than trusted.
        let start = (info.offset as usize).min(buf.len());
        let end = (info.offset.saturating_add(info.size) as usize).min(buf.len());
        &buf[start..end]
    }

    /// The raw encoding of metadata entry `i` (in file order): key, value type and value,
    /// exactly as stored, so a writer can carry it over byte for byte. `None` past the end.
    pub fn metadata_raw(&self, i: usize) -> Option<&[u8]> {
        self.metadata_spans
            .get(i)
            .map(|r| &self.bytes.as_slice()[r.clone()])
    }

    /// Size of the whole file in bytes.
    pub fn file_len(&self) -> u64 {
        self.bytes.as_slice().len() as u64
    }
}

/// A GGUF v3 image with metadata only (no tensors), for unit tests of header readers.
#[cfg(test)]
pub(crate) fn header_only(kv: &[(&str, MetaValue)]) -> GgufFile {
    let mut b = Vec::new();
    b.extend(GGUF_MAGIC.to_le_bytes());
    b.extend(3u32.to_le_bytes());
    b.extend(0u64.to_le_bytes());
    b.extend((kv.len() as u64).to_le_bytes());
    for (k, v) in kv {
        b.extend(crate::export::encode_metadata(k, v).expect("encodable test metadata"));
    }
    GgufFile::from_bytes(b).expect("valid test header")
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A tiny, valid GGUF v3 image built by hand.
    fn tiny() -> Vec<u8> {
        let mut b = Vec::new();
        b.extend(GGUF_MAGIC.to_le_bytes());
        b.extend(3u32.to_le_bytes());
        b.extend(1u64.to_le_bytes()); // tensors
        b.extend(3u64.to_le_bytes()); // kv
        let s = |b: &mut Vec<u8>, t: &str| {
            b.extend((t.len() as u64).to_le_bytes());
            b.extend(t.as_bytes());
        };
        s(&mut b, "general.architecture");
        b.extend(8u32.to_le_bytes());
        s(&mut b, "llama");
        s(&mut b, "llama.block_count");
        b.extend(4u32.to_le_bytes());
        b.extend(2u32.to_le_bytes());
        s(&mut b, "tokenizer.ggml.scores");
        b.extend(9u32.to_le_bytes());
        b.extend(6u32.to_le_bytes());
        b.extend(2u64.to_le_bytes());
        b.extend(0.5f32.to_le_bytes());
        b.extend((-1.0f32).to_le_bytes());
        s(&mut b, "w");
        b.extend(2u32.to_le_bytes());
        b.extend(2u64.to_le_bytes());
        b.extend(3u64.to_le_bytes());
        b.extend(0u32.to_le_bytes()); // F32
        b.extend(0u64.to_le_bytes());
        while b.len() % 32 != 0 {
            b.push(0);
        }
        for i in 0..6 {
            b.extend((i as f32).to_le_bytes());
        }
        b
    }

    #[test]
    fn parses_hand_built_file() {
        let f = GgufFile::from_bytes(tiny()).unwrap();
        assert_eq!(f.version, 3);
        assert_eq!(f.architecture().unwrap(), "llama");
        assert_eq!(f.arch_u64("block_count").unwrap(), 2);
        assert_eq!(
            f.get("tokenizer.ggml.scores"),
            Some(&MetaValue::Array(vec![
                MetaValue::F32(0.5),
                MetaValue::F32(-1.0)
            ]))
        );
        let w = f.tensor("w").unwrap();
        assert_eq!(w.dims, vec![2, 3]);
        assert_eq!(w.size, 24);
        assert_eq!(w.offset % 32, 0);
        let data = f.tensor_bytes(w);
        assert_eq!(f32::from_le_bytes(data[20..24].try_into().unwrap()), 5.0);
        // Raw entries tile the metadata section exactly, in order.
        let img = tiny();
        let raw: Vec<u8> = (0..3)
            .flat_map(|i| f.metadata_raw(i).unwrap().to_vec())
            .collect();
        assert_eq!(&img[24..24 + raw.len()], &raw[..]);
        assert!(f.metadata_raw(1).unwrap().ends_with(&2u32.to_le_bytes()));
        assert_eq!(f.metadata_raw(3), None);
    }

    #[test]
    fn type_ids_round_trip() {
        for id in 0..64 {
            if let Some(t) = GgmlType::from_id(id) {
                assert_eq!(t.id(), id);
            }
        }
    }

    #[test]
    fn every_truncation_is_an_error_not_a_panic() {
        let full = tiny();
        for n in 0..full.len() - 1 {
            let r = GgufFile::from_bytes(full[..n].to_vec());
            assert!(r.is_err(), "prefix of {n} bytes parsed");
        }
    }

    #[test]
    fn bad_magic_and_version() {
        let mut b = tiny();
        b[0] = b'X';
        assert!(matches!(
            GgufFile::from_bytes(b),
            Err(GgufError::BadMagic { .. })
        ));
        let mut b = tiny();
        b[4] = 1;
        assert!(matches!(
            GgufFile::from_bytes(b),
            Err(GgufError::UnsupportedVersion(1))
        ));
    }

    #[test]
    fn huge_counts_are_rejected_before_allocation() {
        let mut b = tiny();
        b[8..16].copy_from_slice(&u64::MAX.to_le_bytes());
        let e = GgufFile::from_bytes(b).unwrap_err();
        assert!(e.to_string().contains("tensor_count"), "{e}");
        let mut b = tiny();
        b[16..24].copy_from_slice(&(u64::MAX / 2).to_le_bytes());
        let e = GgufFile::from_bytes(b).unwrap_err();
        assert!(e.to_string().contains("metadata_kv_count"), "{e}");
    }

    #[test]
    fn wrong_type_lookup_is_typed() {
        let f = GgufFile::from_bytes(tiny()).unwrap();
        assert!(matches!(
            f.metadata_u64("general.architecture"),
            Err(GgufError::WrongType { .. })
        ));
        assert!(matches!(
            f.metadata_str("nope"),
            Err(GgufError::MissingKey(_))
        ));
    }
}
