//! Typed access to the fields of one JSON record, with errors that name the field's path.

use serde_json::{Map, Value};

use super::error::RecordProblem;
use super::records::check_nonempty;

type Result<T> = std::result::Result<T, RecordProblem>;

/// A JSON type's name for messages ("a string", "an array", ...).
pub(crate) fn type_name(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

fn wrong(field: String, expected: &'static str, found: &Value) -> RecordProblem {
    RecordProblem::WrongType {
        field,
        expected,
        found: type_name(found),
    }
}

/// One JSON object of a record (the record itself or a nested object), with the path prefix
/// used to name its fields in errors.
pub(crate) struct Obj<'a> {
    map: &'a Map<String, Value>,
    prefix: String,
}

impl<'a> Obj<'a> {
    /// The record itself; it must be an object.
    pub(crate) fn root(value: &'a Value) -> Result<Self> {
        match value {
            Value::Object(map) => Ok(Obj {
                map,
                prefix: String::new(),
            }),
            other => Err(RecordProblem::NotAnObject {
                found: type_name(other),
            }),
        }
    }

    /// A nested object found at `path`.
    pub(crate) fn nested(value: &'a Value, path: String) -> Result<Self> {
        match value {
            Value::Object(map) => Ok(Obj {
                map,
                prefix: format!("{path}."),
            }),
            other => Err(wrong(path, "an object", other)),
        }
    }

    /// The path of `key` in the record.
    pub(crate) fn path(&self, key: &str) -> String {
        format!("{}{key}", self.prefix)
    }

    /// Whether the object has `key` with a non-null value.
    pub(crate) fn has(&self, key: &str) -> bool {
        self.get(key).is_some()
    }

    /// The value of `key`; `null` counts as absent.
    pub(crate) fn get(&self, key: &str) -> Option<&'a Value> {
        self.map.get(key).filter(|v| !v.is_null())
    }

    /// The value of a required `key`.
    pub(crate) fn req(&self, key: &str) -> Result<&'a Value> {
        self.get(key).ok_or_else(|| RecordProblem::Missing {
            field: self.path(key),
        })
    }

    /// A required string (may be empty).
    pub(crate) fn req_str(&self, key: &str) -> Result<&'a str> {
        let v = self.req(key)?;
        v.as_str()
            .ok_or_else(|| wrong(self.path(key), "a string", v))
    }

    /// A required string that is not empty after trimming (kept as it is).
    pub(crate) fn req_text(&self, key: &str) -> Result<&'a str> {
        let s = self.req_str(key)?;
        check_nonempty(&self.path(key), s)?;
        Ok(s)
    }

    /// An optional string.
    pub(crate) fn opt_str(&self, key: &str) -> Result<Option<&'a str>> {
        match self.get(key) {
            None => Ok(None),
            Some(v) => v
                .as_str()
                .map(Some)
                .ok_or_else(|| wrong(self.path(key), "a string", v)),
        }
    }

    /// An optional identifier: a string or an integer (written in decimal).
    pub(crate) fn opt_id(&self, key: &str) -> Result<Option<String>> {
        match self.get(key) {
            None => Ok(None),
            Some(Value::String(s)) => Ok(Some(s.clone())),
            Some(Value::Number(n)) if n.is_i64() || n.is_u64() => Ok(Some(n.to_string())),
            Some(v) => Err(wrong(self.path(key), "a string or an integer", v)),
        }
    }

    /// A list of strings; absent means empty. Every element must be a string.
    pub(crate) fn str_list(&self, key: &str) -> Result<Vec<String>> {
        match self.get(key) {
            None => Ok(Vec::new()),
            Some(Value::Array(items)) => items
                .iter()
                .enumerate()
                .map(|(i, v)| {
                    v.as_str()
                        .map(str::to_string)
                        .ok_or_else(|| wrong(format!("{}[{i}]", self.path(key)), "a string", v))
                })
                .collect(),
            Some(v) => Err(wrong(self.path(key), "an array of strings", v)),
        }
    }

    /// A list of prompts; absent means empty; every prompt must be non-empty.
    pub(crate) fn prompt_list(&self, key: &str) -> Result<Vec<String>> {
        let list = self.str_list(key)?;
        for (i, p) in list.iter().enumerate() {
            check_nonempty(&format!("{}[{i}]", self.path(key)), p)?;
        }
        Ok(list)
    }

    /// A string or a list of strings (a string becomes a one-element list); absent is `None`.
    pub(crate) fn str_or_list(&self, key: &str) -> Result<Option<Vec<String>>> {
        match self.get(key) {
            None => Ok(None),
            Some(Value::String(s)) => Ok(Some(vec![s.clone()])),
            Some(Value::Array(_)) => self.str_list(key).map(Some),
            Some(v) => Err(wrong(self.path(key), "a string or an array of strings", v)),
        }
    }

    /// A list of objects; absent means empty.
    pub(crate) fn obj_list(&self, key: &str) -> Result<Vec<Obj<'a>>> {
        match self.get(key) {
            None => Ok(Vec::new()),
            Some(Value::Array(items)) => items
                .iter()
                .enumerate()
                .map(|(i, v)| Obj::nested(v, format!("{}[{i}]", self.path(key))))
                .collect(),
            Some(v) => Err(wrong(self.path(key), "an array of objects", v)),
        }
    }

    /// An optional target: a string, or an object with a `str` string (CounterFact's
    /// `{"str": ..., "id": ...}`). Returned trimmed; it must not be empty.
    pub(crate) fn opt_target(&self, key: &str) -> Result<Option<String>> {
        let (text, field) = match self.get(key) {
            None => return Ok(None),
            Some(Value::String(s)) => (s.as_str(), self.path(key)),
            Some(v @ Value::Object(_)) => {
                let inner = Obj::nested(v, self.path(key))?;
                (inner.req_str("str")?, inner.path("str"))
            }
            Some(v) => return Err(wrong(self.path(key), "a string or an object with `str`", v)),
        };
        check_nonempty(&field, text)?;
        Ok(Some(text.trim().to_string()))
    }

    /// A required target (see [`Obj::opt_target`]).
    pub(crate) fn req_target(&self, key: &str) -> Result<String> {
        self.opt_target(key)?.ok_or_else(|| RecordProblem::Missing {
            field: self.path(key),
        })
    }

    /// Fails on the first key not in `known` (sorted order, so the error is deterministic).
    pub(crate) fn deny_unknown(&self, known: &[&str]) -> Result<()> {
        match self.map.keys().find(|k| !known.contains(&k.as_str())) {
            Some(k) => Err(RecordProblem::UnknownField {
                field: self.path(k),
            }),
            None => Ok(()),
        }
    }
}
