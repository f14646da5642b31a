//! Dataset loaders: CounterFact (ROME/MEMIT and EasyEdit layouts), MEND zsRE, ROME known
//! facts, MQuAKE and our own JSON lines facts, all mapped onto one set of types.
//!
//! ```no_run
//! use eamet_eval::data::{load, LoadOptions};
//! let opts = LoadOptions { limit: Some(100), ..LoadOptions::default() };
//! let loaded = load("counterfact.json", &opts)?;
//! for rec in loaded.dataset.edits().unwrap_or_default() {
//!     println!("{} -> {}", rec.rewrite.filled_prompt(), rec.rewrite.target_new);
//! }
//! # Ok::<(), eamet_eval::data::DataError>(())
//! ```
//!
//! - **Formats**: see [`Format`]; `docs/facts-format.md` has the field mapping of each. The
//!   format is detected from the first record's keys unless [`LoadOptions::format`] is set.
//!   Every format may be a JSON array (`[...]`) or JSON lines (one object per line, blank lines
//!   and lines starting with `#` or `//` ignored).
//! - **Streaming**: a JSON array is parsed element by element, never into one
//!   `serde_json::Value`; records before [`LoadOptions::offset`] are stepped over without
//!   being built, and reading stops after `offset + limit` records.
//! - **Errors** name the file, the record's 0-based index (and 1-based line for JSON lines)
//!   and the field: ``counterfact.json: record 17: field `requested_rewrite.subject`: missing``.
//!   With [`LoadOptions::skip_invalid`] bad records are collected in [`Loaded::skipped`]
//!   instead (syntax errors inside a JSON array stay fatal: the parser cannot resynchronise).
//! - **Targets** are stored trimmed, without the leading space; consumers add `" "` when they
//!   tokenize a continuation.

mod convert;
mod error;
mod fields;
mod format;
mod read;
mod records;

use std::collections::HashMap;
use std::fs::File;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};

use serde_json::Value;

pub use error::{DataError, Location, RecordProblem, Skipped};
pub use format::{Format, RecordKind, ZsreTarget};
pub use records::{
    EvalRecord, Hop, KnownFact, MquakeCase, MquakeEdit, Portability, Probe, Rewrite, ZsreInfo,
};

use convert::{convert, Item};
use read::{read_records, Sink, Want};

/// How to load a dataset.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LoadOptions {
    /// The format; `None` detects it from the first record (see [`Format::detect`]).
    pub format: Option<Format>,
    /// Index of the first record to load (0-based position in the file).
    pub offset: usize,
    /// How many positions to load from `offset` on; `None` loads to the end. Records that
    /// `skip_invalid` skips count: the result may hold fewer than `limit` records.
    pub limit: Option<usize>,
    /// Which zsRE field is `target_new`.
    pub zsre_target: ZsreTarget,
    /// Collect invalid records in [`Loaded::skipped`] instead of failing on the first.
    pub skip_invalid: bool,
}

/// The records of one file, by kind.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Dataset {
    /// Edit records (CounterFact, EasyEdit, zsRE, our facts).
    Edits(Vec<EvalRecord>),
    /// Known facts (no `target_new`).
    Known(Vec<KnownFact>),
    /// MQuAKE cases (several edits each).
    Mquake(Vec<MquakeCase>),
}

impl Dataset {
    fn empty(kind: RecordKind) -> Self {
        match kind {
            RecordKind::Edits => Dataset::Edits(Vec::new()),
            RecordKind::Known => Dataset::Known(Vec::new()),
            RecordKind::Mquake => Dataset::Mquake(Vec::new()),
        }
    }

    /// The kind of records held.
    pub fn kind(&self) -> RecordKind {
        match self {
            Dataset::Edits(_) => RecordKind::Edits,
            Dataset::Known(_) => RecordKind::Known,
            Dataset::Mquake(_) => RecordKind::Mquake,
        }
    }

    /// Number of records.
    pub fn len(&self) -> usize {
        match self {
            Dataset::Edits(v) => v.len(),
            Dataset::Known(v) => v.len(),
            Dataset::Mquake(v) => v.len(),
        }
    }

    /// Whether there are no records.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The edit records, if that is what this holds.
    pub fn edits(&self) -> Option<&[EvalRecord]> {
        match self {
            Dataset::Edits(v) => Some(v),
            _ => None,
        }
    }

    /// The known facts, if that is what this holds.
    pub fn known(&self) -> Option<&[KnownFact]> {
        match self {
            Dataset::Known(v) => Some(v),
            _ => None,
        }
    }

    /// The MQuAKE cases, if that is what this holds.
    pub fn mquake(&self) -> Option<&[MquakeCase]> {
        match self {
            Dataset::Mquake(v) => Some(v),
            _ => None,
        }
    }

    /// Every rewrite, in file order: one per edit record, all edits of every MQuAKE case,
    /// none for known facts.
    pub fn rewrites(&self) -> Vec<&Rewrite> {
        match self {
            Dataset::Edits(v) => v.iter().map(|r| &r.rewrite).collect(),
            Dataset::Known(_) => Vec::new(),
            Dataset::Mquake(v) => v
                .iter()
                .flat_map(|c| c.edits.iter().map(|e| &e.rewrite))
                .collect(),
        }
    }

    fn push(&mut self, item: Item) {
        match (self, item) {
            (Dataset::Edits(v), Item::Edit(r)) => v.push(r),
            (Dataset::Known(v), Item::Known(r)) => v.push(r),
            (Dataset::Mquake(v), Item::Mquake(r)) => v.push(r),
            // `convert` yields the kind of its format, and the dataset is made for that format.
            _ => unreachable!("record kind does not match the dataset kind"),
        }
    }
}

/// What [`load`] returns.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Loaded {
    /// The file (or the name given to [`load_reader`]).
    pub path: PathBuf,
    /// The format used (detected or given).
    pub format: Format,
    /// The records.
    pub dataset: Dataset,
    /// Records left out because of `skip_invalid`, in file order.
    pub skipped: Vec<Skipped>,
}

impl Loaded {
    /// Number of records loaded.
    pub fn len(&self) -> usize {
        self.dataset.len()
    }

    /// Whether no record was loaded.
    pub fn is_empty(&self) -> bool {
        self.dataset.is_empty()
    }

    /// The edit records.
    ///
    /// # Errors
    /// [`DataError::WrongKind`] for known facts and MQuAKE cases.
    pub fn into_edits(self) -> Result<Vec<EvalRecord>, DataError> {
        let found = match self.dataset {
            Dataset::Edits(v) => return Ok(v),
            Dataset::Known(_) => "known facts",
            Dataset::Mquake(_) => "MQuAKE cases",
        };
        Err(DataError::WrongKind {
            path: self.path,
            format: self.format,
            found,
            wanted: "edit records",
        })
    }
}

/// Loads (part of) a dataset file.
///
/// # Errors
/// [`DataError`] naming the file and, for a bad record, its index and field.
pub fn load(path: impl AsRef<Path>, opts: &LoadOptions) -> Result<Loaded, DataError> {
    let path = path.as_ref();
    let file = File::open(path).map_err(|source| DataError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    load_reader(path, BufReader::with_capacity(1 << 16, file), opts)
}

/// Loads a dataset from any buffered reader; `name` only names it in errors and in
/// [`Loaded::path`].
///
/// # Errors
/// As [`load`].
pub fn load_reader<R: BufRead>(
    name: impl AsRef<Path>,
    reader: R,
    opts: &LoadOptions,
) -> Result<Loaded, DataError> {
    let path = name.as_ref();
    let mut sink = LoadSink {
        path,
        opts,
        format: opts.format,
        dataset: opts.format.map(|f| Dataset::empty(f.kind())),
        skipped: Vec::new(),
        detect_only: false,
    };
    read_records(path, reader, &mut sink)?;
    match (sink.format, sink.dataset) {
        (Some(format), Some(dataset)) => Ok(Loaded {
            path: path.to_path_buf(),
            format,
            dataset,
            skipped: sink.skipped,
        }),
        // No record to detect the format from.
        _ => Err(DataError::Empty {
            path: path.to_path_buf(),
        }),
    }
}

/// Loads a dataset held in a string (e.g. bundled with `include_str!`).
///
/// # Errors
/// As [`load`].
pub fn load_str(
    name: impl AsRef<Path>,
    text: &str,
    opts: &LoadOptions,
) -> Result<Loaded, DataError> {
    load_reader(name, text.as_bytes(), opts)
}

/// [`Format::detect`]'s implementation.
fn detect_file(path: &Path) -> Result<Format, DataError> {
    let file = File::open(path).map_err(|source| DataError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    let opts = LoadOptions::default();
    let mut sink = LoadSink {
        path,
        opts: &opts,
        format: None,
        dataset: None,
        skipped: Vec::new(),
        detect_only: true,
    };
    read_records(path, BufReader::new(file), &mut sink)?;
    sink.format.ok_or_else(|| DataError::Empty {
        path: path.to_path_buf(),
    })
}

/// Collects converted records (and detects the format on the first record if needed).
struct LoadSink<'a> {
    path: &'a Path,
    opts: &'a LoadOptions,
    format: Option<Format>,
    dataset: Option<Dataset>,
    skipped: Vec<Skipped>,
    detect_only: bool,
}

impl LoadSink<'_> {
    fn reject(&mut self, location: Location, problem: RecordProblem) -> Result<(), DataError> {
        if self.opts.skip_invalid {
            if location.index >= self.opts.offset {
                self.skipped.push(Skipped { location, problem });
            }
            Ok(())
        } else {
            Err(DataError::Record {
                path: self.path.to_path_buf(),
                location,
                problem,
            })
        }
    }
}

impl Sink for LoadSink<'_> {
    fn want(&self, index: usize) -> Want {
        if self.format.is_none() {
            // The first record that parses tells the format, even before `offset`.
            return Want::Parse;
        }
        if self.detect_only {
            return Want::Stop;
        }
        match self.opts.limit {
            Some(limit) if index >= self.opts.offset.saturating_add(limit) => Want::Stop,
            _ if index < self.opts.offset => Want::Skip,
            _ => Want::Parse,
        }
    }

    fn record(
        &mut self,
        location: Location,
        value: Result<Value, RecordProblem>,
    ) -> Result<(), DataError> {
        let value = match value {
            Ok(v) => v,
            Err(problem) => return self.reject(location, problem),
        };
        let format = match self.format {
            Some(f) => f,
            None => {
                let f =
                    Format::detect_record(&value).map_err(|reason| DataError::UnknownFormat {
                        path: self.path.to_path_buf(),
                        reason: format!("{location}: {reason}"),
                    })?;
                self.format = Some(f);
                self.dataset = Some(Dataset::empty(f.kind()));
                f
            }
        };
        if self.detect_only || location.index < self.opts.offset {
            return Ok(());
        }
        if let Some(limit) = self.opts.limit {
            if location.index >= self.opts.offset.saturating_add(limit) {
                return Ok(());
            }
        }
        match convert(format, location.index, &value, self.opts.zsre_target) {
            Ok(item) => {
                if let Some(dataset) = &mut self.dataset {
                    dataset.push(item);
                }
                Ok(())
            }
            Err(problem) => self.reject(location, problem),
        }
    }
}

/// Subjects that occur in at least two records, with the positions (in `records`) of their
/// records, in order of first occurrence. For the "several facts per subject" robustness
/// suite; MEMIT's `repeat_subjects = k` is the groups with exactly `k` entries.
pub fn group_by_subject(records: &[EvalRecord]) -> Vec<(String, Vec<usize>)> {
    let mut order: Vec<&str> = Vec::new();
    let mut groups: HashMap<&str, Vec<usize>> = HashMap::new();
    for (i, r) in records.iter().enumerate() {
        let subject = r.rewrite.subject.as_str();
        groups
            .entry(subject)
            .or_insert_with(|| {
                order.push(subject);
                Vec::new()
            })
            .push(i);
    }
    order
        .into_iter()
        .filter_map(|s| {
            let positions = groups.remove(s)?;
            (positions.len() >= 2).then(|| (s.to_string(), positions))
        })
        .collect()
}
