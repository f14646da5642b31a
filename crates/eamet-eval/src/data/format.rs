//! Dataset formats and their detection.

use std::fmt;
use std::path::Path;
use std::str::FromStr;

use serde_json::{Map, Value};

use super::error::DataError;

/// The record schema of a dataset file. The container (a JSON array, or JSON lines) is
/// recognised separately from the first non-blank character, so every format may come in
/// either container.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Format {
    /// ROME/MEMIT CounterFact (`counterfact.json`, `multi_counterfact.json`):
    /// `case_id`, `requested_rewrite{prompt, subject, target_new{str}, target_true{str},
    /// relation_id}`, `paraphrase_prompts`, `neighborhood_prompts`, `attribute_prompts`,
    /// `generation_prompts`.
    CounterFact,
    /// EasyEdit CounterFact: `case_id`, `prompt` (subject filled in), `subject`, `target_new`,
    /// `ground_truth`, `rephrase_prompt`, `locality_prompt`, `locality_ground_truth`.
    EasyEdit,
    /// MEND zsRE: `subject`, `src`, `pred`, `rephrase`, `alt`, `answers`, `loc`, `loc_ans`,
    /// `cond`, optional `portability`.
    Zsre,
    /// ROME known facts (`known_1000.json`): `known_id`, `subject`, `attribute`, `template`,
    /// `prompt`, `prediction`, `relation_id`.
    Known,
    /// MQuAKE: `case_id`, `requested_rewrite` (a list), `questions`, `answer`, `new_answer`,
    /// aliases, `single_hops`, `new_single_hops`.
    Mquake,
    /// Our facts format (see `docs/facts-format.md`): `subject`, `prompt` with `{}`,
    /// `target_new`, optional `target_true`, `case_id`, `relation_id`, `paraphrases`,
    /// `neighbourhood`, `generation_prompts`.
    Facts,
}

/// What kind of records a format yields.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RecordKind {
    /// [`EvalRecord`](super::EvalRecord)s.
    Edits,
    /// [`KnownFact`](super::KnownFact)s.
    Known,
    /// [`MquakeCase`](super::MquakeCase)s.
    Mquake,
}

impl Format {
    /// Every format, in the order detection tries them.
    pub const ALL: [Format; 6] = [
        Format::CounterFact,
        Format::EasyEdit,
        Format::Zsre,
        Format::Known,
        Format::Mquake,
        Format::Facts,
    ];

    /// The short name (`counterfact`, `easyedit`, `zsre`, `known`, `mquake`, `facts`), as
    /// [`FromStr`] accepts it.
    pub fn name(self) -> &'static str {
        match self {
            Format::CounterFact => "counterfact",
            Format::EasyEdit => "easyedit",
            Format::Zsre => "zsre",
            Format::Known => "known",
            Format::Mquake => "mquake",
            Format::Facts => "facts",
        }
    }

    /// What kind of records this format yields.
    pub fn kind(self) -> RecordKind {
        match self {
            Format::Known => RecordKind::Known,
            Format::Mquake => RecordKind::Mquake,
            _ => RecordKind::Edits,
        }
    }

    /// Detects the format of a file from the keys of its first record.
    ///
    /// Reads only up to the end of the first record that parses.
    ///
    /// # Errors
    /// [`DataError::Io`], [`DataError::Empty`], [`DataError::Json`] or
    /// [`DataError::UnknownFormat`] (the message lists the first record's keys).
    pub fn detect(path: impl AsRef<Path>) -> Result<Format, DataError> {
        super::detect_file(path.as_ref())
    }

    /// Detects the format from one record; `Err` holds the reason when nothing matches.
    pub(crate) fn detect_record(record: &Value) -> Result<Format, String> {
        let Some(obj) = record.as_object() else {
            return Err(format!(
                "the first record is {}, not a JSON object",
                super::fields::type_name(record)
            ));
        };
        let has = |k: &str| obj.contains_key(k);
        if let Some(rr) = obj.get("requested_rewrite") {
            return Ok(if rr.is_array() || has("questions") || has("new_answer") {
                Format::Mquake
            } else {
                Format::CounterFact
            });
        }
        if has("src") && (has("answers") || has("loc") || has("alt")) {
            return Ok(Format::Zsre);
        }
        if has("known_id") || (has("attribute") && has("template")) {
            return Ok(Format::Known);
        }
        if has("prompt") && has("subject") && has("target_new") {
            let easyedit_keys = [
                "ground_truth",
                "rephrase_prompt",
                "locality_prompt",
                "locality_ground_truth",
            ];
            if easyedit_keys.iter().any(|k| has(k)) || filled_prompt(obj) {
                return Ok(Format::EasyEdit);
            }
            return Ok(Format::Facts);
        }
        let keys: Vec<&str> = obj.keys().map(String::as_str).collect();
        Err(format!(
            "the first record's keys [{}] match none of: {}",
            keys.join(", "),
            Format::ALL.map(Format::name).join(", ")
        ))
    }
}

/// A `prompt` without `{}` that contains the `subject`: the EasyEdit convention.
fn filled_prompt(obj: &Map<String, Value>) -> bool {
    match (
        obj.get("prompt").and_then(Value::as_str),
        obj.get("subject").and_then(Value::as_str),
    ) {
        (Some(p), Some(s)) => !p.contains("{}") && !s.is_empty() && p.contains(s),
        _ => false,
    }
}

impl fmt::Display for Format {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Format {
    type Err = DataError;

    /// Accepts the [`Format::name`]s (case-insensitive) and a few aliases:
    /// `rome`, `cf`, `mcf`, `multi_counterfact` → CounterFact; `easyedit-counterfact` →
    /// EasyEdit; `mend`, `zsre_mend` → zsRE; `known_1000` → Known; `jsonl` → Facts.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let lower = s.trim().to_ascii_lowercase().replace('-', "_");
        Ok(match lower.as_str() {
            "counterfact" | "rome" | "cf" | "mcf" | "multi_counterfact" => Format::CounterFact,
            "easyedit" | "easyedit_counterfact" => Format::EasyEdit,
            "zsre" | "mend" | "zsre_mend" => Format::Zsre,
            "known" | "known_1000" => Format::Known,
            "mquake" => Format::Mquake,
            "facts" | "jsonl" => Format::Facts,
            _ => {
                return Err(DataError::UnknownFormatName {
                    name: s.to_string(),
                })
            }
        })
    }
}

/// Which zsRE field becomes `target_new`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ZsreTarget {
    /// `answers[0]`, as MEMIT and EAMET do; `target_true` stays `None` (MEMIT scores against
    /// `"<|endoftext|>"` there).
    #[default]
    Answers0,
    /// `alt`, as EasyEdit does; `target_true` is then `answers[0]`. A record with an empty
    /// `alt` fails validation.
    Alt,
}

impl FromStr for ZsreTarget {
    type Err = String;

    /// `answers0` (or `answers`) or `alt`.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.trim().to_ascii_lowercase().as_str() {
            "answers0" | "answers" | "answer" => Ok(ZsreTarget::Answers0),
            "alt" => Ok(ZsreTarget::Alt),
            _ => Err(format!(
                "unknown zsRE target {s:?} (expected `answers0` or `alt`)"
            )),
        }
    }
}
