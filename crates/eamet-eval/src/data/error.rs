//! Errors of the dataset loaders.

use std::fmt;
use std::path::PathBuf;

use super::format::Format;

/// Where a record sits in its file: its 0-based position among the records and, for JSON
/// lines files, its 1-based line number.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Location {
    /// 0-based position of the record in the file (comment and blank lines do not count).
    pub index: usize,
    /// 1-based line number, for JSON lines files only.
    pub line: Option<usize>,
}

impl fmt::Display for Location {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.line {
            Some(line) => write!(f, "line {line} (record {})", self.index),
            None => write!(f, "record {}", self.index),
        }
    }
}

/// What is wrong with one record. Field names are written as paths into the record as it is
/// in the file, e.g. `requested_rewrite.target_new.str` or `paraphrase_prompts[1]`.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum RecordProblem {
    /// A required field is absent (or `null`).
    Missing {
        /// The field.
        field: String,
    },
    /// A field holds the wrong JSON type.
    WrongType {
        /// The field.
        field: String,
        /// What the field should hold, e.g. `"a string"`.
        expected: &'static str,
        /// What it holds, e.g. `"a number"`.
        found: &'static str,
    },
    /// A string (or list) that must not be empty is empty or only whitespace.
    Empty {
        /// The field.
        field: String,
    },
    /// A prompt template does not contain exactly one `{}`.
    Placeholders {
        /// The field.
        field: String,
        /// How many `{}` it contains.
        found: usize,
        /// The template.
        template: String,
    },
    /// The subject does not occur in the text it should be cut out of (EasyEdit `prompt`,
    /// zsRE `src`).
    SubjectNotFound {
        /// The field holding the text.
        field: String,
        /// The subject.
        subject: String,
        /// The text.
        text: String,
    },
    /// A field our own facts format does not know (typos are errors there).
    UnknownField {
        /// The field.
        field: String,
    },
    /// A field given together with its alias (our facts format).
    Duplicate {
        /// The field.
        field: String,
        /// Its alias, also given.
        alias: String,
    },
    /// A CounterFact record whose `requested_rewrite` list does not hold exactly one rewrite.
    RewriteCount {
        /// How many rewrites it holds.
        count: usize,
    },
    /// A record that is not a JSON object.
    NotAnObject {
        /// What it is instead, e.g. `"an array"`.
        found: &'static str,
    },
    /// A JSON lines line that is not valid JSON: serde's message and the 1-based column.
    Syntax {
        /// serde_json's message, without its position.
        message: String,
        /// 1-based column in the line.
        column: usize,
    },
}

impl RecordProblem {
    /// The field the problem is about, if it is about one.
    pub fn field(&self) -> Option<&str> {
        match self {
            RecordProblem::Missing { field }
            | RecordProblem::WrongType { field, .. }
            | RecordProblem::Empty { field }
            | RecordProblem::Placeholders { field, .. }
            | RecordProblem::SubjectNotFound { field, .. }
            | RecordProblem::UnknownField { field }
            | RecordProblem::Duplicate { field, .. } => Some(field),
            RecordProblem::RewriteCount { .. } => Some("requested_rewrite"),
            RecordProblem::NotAnObject { .. } | RecordProblem::Syntax { .. } => None,
        }
    }
}

impl fmt::Display for RecordProblem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RecordProblem::Missing { field } => write!(f, "field `{field}`: missing"),
            RecordProblem::WrongType {
                field,
                expected,
                found,
            } => write!(f, "field `{field}`: expected {expected}, found {found}"),
            RecordProblem::Empty { field } => write!(f, "field `{field}`: empty"),
            RecordProblem::Placeholders {
                field,
                found,
                template,
            } => write!(
                f,
                "field `{field}`: a template needs exactly one `{{}}`, found {found} in {template:?}"
            ),
            RecordProblem::SubjectNotFound {
                field,
                subject,
                text,
            } => write!(
                f,
                "field `{field}`: subject {subject:?} does not occur in {text:?}"
            ),
            RecordProblem::UnknownField { field } => write!(f, "field `{field}`: unknown field"),
            RecordProblem::Duplicate { field, alias } => write!(
                f,
                "field `{field}`: given together with its alias `{alias}` (give only one)"
            ),
            RecordProblem::RewriteCount { count } => write!(
                f,
                "field `requested_rewrite`: holds {count} rewrites, a CounterFact record takes \
                 exactly one (load multi-rewrite files as `mquake`)"
            ),
            RecordProblem::NotAnObject { found } => {
                write!(f, "expected a JSON object, found {found}")
            }
            RecordProblem::Syntax { message, column } => {
                write!(f, "invalid JSON at column {column}: {message}")
            }
        }
    }
}

/// A record left out because `skip_invalid` was set, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Skipped {
    /// Where the record is.
    pub location: Location,
    /// What is wrong with it.
    pub problem: RecordProblem,
}

impl fmt::Display for Skipped {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.location, self.problem)
    }
}

/// Everything that can go wrong while loading a dataset. Every variant names the file.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum DataError {
    /// The file could not be opened or read.
    #[error("{}: {source}", path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The file holds nothing but whitespace, blank lines or comments.
    #[error("{}: empty file (no records)", path.display())]
    Empty {
        /// The file.
        path: PathBuf,
    },
    /// A JSON array file is not valid JSON (truncated, bad syntax, text after the array).
    /// These are not skippable: the parser cannot find the next record.
    #[error("{}: {}invalid JSON: {message}", path.display(), match index { Some(i) => format!("record {i}: "), None => String::new() })]
    Json {
        /// The file.
        path: PathBuf,
        /// The record being read when it went wrong, if inside the array.
        index: Option<usize>,
        /// serde_json's message, with the line and column in the file.
        message: String,
    },
    /// One record is malformed or fails validation.
    #[error("{}: {location}: {problem}", path.display())]
    Record {
        /// The file.
        path: PathBuf,
        /// Where the record is.
        location: Location,
        /// What is wrong.
        problem: RecordProblem,
    },
    /// The format could not be recognised (or the file is neither a JSON array nor JSON lines).
    #[error("{}: unknown format: {reason}", path.display())]
    UnknownFormat {
        /// The file.
        path: PathBuf,
        /// Why no format matched.
        reason: String,
    },
    /// A format name that is not one of [`Format::ALL`].
    #[error("unknown dataset format {name:?} (known: counterfact, easyedit, zsre, known, mquake, facts)")]
    UnknownFormatName {
        /// The name given.
        name: String,
    },
    /// The records are of another kind than the caller asked for (e.g. edit records were
    /// requested from a known-facts file).
    #[error("{}: a {format} file holds {found}, not {wanted}", path.display())]
    WrongKind {
        /// The file.
        path: PathBuf,
        /// Its format.
        format: Format,
        /// What it holds.
        found: &'static str,
        /// What was wanted.
        wanted: &'static str,
    },
}

impl DataError {
    /// The record problem, for [`DataError::Record`].
    pub fn problem(&self) -> Option<&RecordProblem> {
        match self {
            DataError::Record { problem, .. } => Some(problem),
            _ => None,
        }
    }

    /// The record's location, for [`DataError::Record`].
    pub fn location(&self) -> Option<Location> {
        match self {
            DataError::Record { location, .. } => Some(*location),
            _ => None,
        }
    }
}
