//! Streaming record reader: JSON arrays element by element, JSON lines line by line.
//!
//! Nothing ever holds more than one record as a `serde_json::Value`; records the sink does not
//! want are skipped with `IgnoredAny` (arrays) or not parsed at all (JSON lines), and reading
//! stops as soon as the sink says so.

use std::fmt;
use std::io::BufRead;
use std::path::Path;

use serde::de::{self, Deserializer as _, IgnoredAny, SeqAccess, Visitor};
use serde_json::Value;

use super::error::{DataError, Location, RecordProblem};

/// What the sink wants done with the next record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Want {
    /// Parse it and hand it over.
    Parse,
    /// Step over it.
    Skip,
    /// Stop reading.
    Stop,
}

/// Receives the records of a file.
pub(crate) trait Sink {
    /// What to do with the record at `index`.
    fn want(&self, index: usize) -> Want;
    /// One parsed record; `Err` is a JSON lines line that is not valid JSON (recoverable).
    fn record(
        &mut self,
        location: Location,
        value: Result<Value, RecordProblem>,
    ) -> Result<(), DataError>;
}

/// How the records are laid out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Container {
    Array,
    Lines,
}

/// Reads every record of `reader` into `sink`. `path` only names the file in errors.
pub(crate) fn read_records<R: BufRead>(
    path: &Path,
    mut reader: R,
    sink: &mut dyn Sink,
) -> Result<(), DataError> {
    match container(path, &mut reader)? {
        (Container::Array, _) => read_array(path, reader, sink),
        (Container::Lines, blank_lines) => read_lines(path, reader, blank_lines, sink),
    }
}

fn io_error(path: &Path, source: std::io::Error) -> DataError {
    DataError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// Skips a UTF-8 byte order mark, looks at the first non-blank byte and leaves it (and the
/// blanks before it, so that serde's line numbers stay right) in the buffer. Returns the layout
/// and the number of line ends consumed (only when a whole buffer was blank).
fn container<R: BufRead>(path: &Path, reader: &mut R) -> Result<(Container, usize), DataError> {
    let mut first = true;
    let mut lines = 0;
    loop {
        let buf = reader.fill_buf().map_err(|e| io_error(path, e))?;
        if buf.is_empty() {
            return Err(DataError::Empty {
                path: path.to_path_buf(),
            });
        }
        if first && buf.starts_with(b"\xEF\xBB\xBF") {
            reader.consume(3);
            first = false;
            continue;
        }
        first = false;
        let Some(&byte) = buf.iter().find(|b| !b.is_ascii_whitespace()) else {
            lines += buf.iter().filter(|&&b| b == b'\n').count();
            let n = buf.len();
            reader.consume(n);
            continue;
        };
        return match byte {
            b'[' => Ok((Container::Array, lines)),
            b'{' | b'#' | b'/' => Ok((Container::Lines, lines)),
            other => Err(DataError::UnknownFormat {
                path: path.to_path_buf(),
                reason: format!(
                    "expected a JSON array (`[`) or JSON lines (`{{` per line), found {:?}",
                    char::from(other)
                ),
            }),
        };
    }
}

/// Why the array visitor stopped before the end.
enum Abort {
    Stop,
    Failed(DataError),
}

struct ArrayVisitor<'s> {
    sink: &'s mut dyn Sink,
    current: &'s mut usize,
    abort: &'s mut Option<Abort>,
}

impl<'de> Visitor<'de> for ArrayVisitor<'_> {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON array of records")
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        let mut index = 0;
        loop {
            *self.current = index;
            match self.sink.want(index) {
                Want::Stop => {
                    *self.abort = Some(Abort::Stop);
                    return Err(de::Error::custom("stopped"));
                }
                Want::Skip => {
                    if seq.next_element::<IgnoredAny>()?.is_none() {
                        return Ok(());
                    }
                }
                Want::Parse => {
                    let Some(value) = seq.next_element::<Value>()? else {
                        return Ok(());
                    };
                    let location = Location { index, line: None };
                    if let Err(e) = self.sink.record(location, Ok(value)) {
                        *self.abort = Some(Abort::Failed(e));
                        return Err(de::Error::custom("aborted"));
                    }
                }
            }
            index += 1;
        }
    }
}

fn read_array<R: BufRead>(path: &Path, reader: R, sink: &mut dyn Sink) -> Result<(), DataError> {
    let mut de = serde_json::Deserializer::from_reader(reader);
    let mut current = 0;
    let mut abort = None;
    let result = de.deserialize_seq(ArrayVisitor {
        sink,
        current: &mut current,
        abort: &mut abort,
    });
    let json_error = |index, e: serde_json::Error| {
        if e.is_io() {
            return DataError::Io {
                path: path.to_path_buf(),
                source: e.into(),
            };
        }
        DataError::Json {
            path: path.to_path_buf(),
            index,
            message: e.to_string(),
        }
    };
    match (abort, result) {
        (Some(Abort::Stop), _) => Ok(()),
        (Some(Abort::Failed(e)), _) => Err(e),
        (None, Err(e)) => Err(json_error(Some(current), e)),
        (None, Ok(())) => de.end().map_err(|e| json_error(None, e)),
    }
}

/// serde_json's message without its " at line L column C" suffix, and the column.
fn syntax_problem(e: &serde_json::Error) -> RecordProblem {
    let full = e.to_string();
    let suffix = format!(" at line {} column {}", e.line(), e.column());
    let message = full.strip_suffix(&suffix).unwrap_or(&full).to_string();
    RecordProblem::Syntax {
        message,
        column: e.column(),
    }
}

fn read_lines<R: BufRead>(
    path: &Path,
    mut reader: R,
    mut line: usize,
    sink: &mut dyn Sink,
) -> Result<(), DataError> {
    let mut buf = Vec::new();
    let mut index = 0;
    loop {
        buf.clear();
        if reader
            .read_until(b'\n', &mut buf)
            .map_err(|e| io_error(path, e))?
            == 0
        {
            return Ok(());
        }
        line += 1;
        let text = buf.trim_ascii();
        if text.is_empty() || text.starts_with(b"#") || text.starts_with(b"//") {
            continue;
        }
        match sink.want(index) {
            Want::Stop => return Ok(()),
            Want::Skip => {}
            Want::Parse => {
                // Parse the whole line (not the trimmed slice) so that columns match the file.
                let value = serde_json::from_slice::<Value>(&buf).map_err(|e| syntax_problem(&e));
                let location = Location {
                    index,
                    line: Some(line),
                };
                sink.record(location, value)?;
            }
        }
        index += 1;
    }
}
