//! Facts, their validation and their tokenized prompts.

use std::collections::HashMap;

use eamet_hooks::tokenizer::Tokenizer;
use serde::{Deserialize, Serialize};

use crate::error::{FactProblem, OptimError, Result};
use crate::prefixes::ContextPrefixes;

/// One requested rewrite: `prompt` with `subject` in place of `{}` should continue with
/// `target_new`.
///
/// ```
/// use eamet_optim::Fact;
/// let f = Fact::new("Eiffel Tower", "The {} is located in the city of", "Rome");
/// assert_eq!(f.filled_prompt(), "The Eiffel Tower is located in the city of");
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Fact {
    /// The subject, e.g. `"Eiffel Tower"`.
    pub subject: String,
    /// The prompt template with exactly one `{}` for the subject.
    pub prompt: String,
    /// The new object, without a leading space (one is added before tokenizing, as the
    /// reference does, unless the string already starts with whitespace).
    pub target_new: String,
    /// The true object, if known (not used by the optimizer).
    #[serde(default)]
    pub target_true: Option<String>,
    /// A dataset identifier; must be unique within a run when given.
    #[serde(default)]
    pub case_id: Option<String>,
}

impl Fact {
    /// A fact without true target or case id.
    pub fn new(subject: &str, prompt: &str, target_new: &str) -> Self {
        Fact {
            subject: subject.into(),
            prompt: prompt.into(),
            target_new: target_new.into(),
            target_true: None,
            case_id: None,
        }
    }

    /// The prompt with the subject filled in (the first `{}` replaced).
    pub fn filled_prompt(&self) -> String {
        self.prompt.replacen("{}", &self.subject, 1)
    }

    /// Checks the parts that need no tokenizer: one `{}`, non-empty subject and target.
    ///
    /// # Errors
    /// [`OptimError::Fact`] naming `index` and the case id.
    pub fn check(&self, index: usize) -> Result<()> {
        let problem = if !self.prompt.contains("{}") {
            Some(FactProblem::MissingPlaceholder(self.prompt.clone()))
        } else if self.prompt.matches("{}").count() > 1 {
            Some(FactProblem::ExtraPlaceholder(self.prompt.clone()))
        } else if self.subject.trim().is_empty() {
            Some(FactProblem::EmptySubject)
        } else if self.target_new.trim().is_empty() {
            Some(FactProblem::EmptyTarget)
        } else {
            None
        };
        match problem {
            Some(p) => Err(self.error(index, p)),
            None => Ok(()),
        }
    }

    pub(crate) fn error(&self, index: usize, problem: FactProblem) -> OptimError {
        OptimError::Fact {
            index,
            case_id: self.case_id.clone(),
            problem,
        }
    }
}

/// Checks every fact ([`Fact::check`]) and that case ids are unique.
///
/// # Errors
/// The first [`OptimError::Fact`] or [`OptimError::DuplicateCaseId`].
pub fn validate_facts(facts: &[Fact]) -> Result<()> {
    let mut seen: HashMap<&str, usize> = HashMap::new();
    for (i, f) in facts.iter().enumerate() {
        f.check(i)?;
        if let Some(c) = &f.case_id {
            if let Some(&first) = seen.get(c.as_str()) {
                return Err(OptimError::DuplicateCaseId {
                    case_id: c.clone(),
                    first,
                    second: i,
                });
            }
            seen.insert(c, i);
        }
    }
    Ok(())
}

/// A fact tokenized for the optimizer and the key computation (ALGORITHM.md §1–§3).
///
/// For every context template `c` (index 0 is the bare `"{}"`): the key prompt
/// `c.format(prompt.format(subject))` and the index of the subject's last token in it; the
/// rewriting prompt is that key prompt's ids followed by the target ids without the last one
/// (so the subject-last index is the same), supervised on its last `|target|` positions.
/// The essence prompt is `"{subject} is a"`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PreparedFact {
    /// Position of the fact in the input list (the editing order).
    pub index: usize,
    /// The fact.
    pub fact: Fact,
    /// Token ids of the key prompt per template.
    pub key_prompts: Vec<Vec<u32>>,
    /// Index of the subject's last token in each key prompt (and rewriting prompt).
    pub subject_last: Vec<usize>,
    /// Token ids of `" " + target_new` (no BOS).
    pub target_ids: Vec<u32>,
    /// Token ids of `"{subject} is a"`.
    pub essence_prompt: Vec<u32>,
    /// Index of the subject's last token in the essence prompt.
    pub essence_subject_last: usize,
}

impl PreparedFact {
    /// Number of templates (= rewriting prompts).
    pub fn templates(&self) -> usize {
        self.key_prompts.len()
    }

    /// The rewriting prompt of template `t`: key prompt ⊕ target[:-1].
    pub fn rewrite_prompt(&self, t: usize) -> Vec<u32> {
        let mut ids = self.key_prompts[t].clone();
        ids.extend_from_slice(&self.target_ids[..self.target_ids.len() - 1]);
        ids
    }
}

/// Tokenizes `text` and returns the ids and the index of the subject's last token: the token
/// that ends exactly at byte `end` (the subject's end), or else the token that holds the
/// subject's last character when it starts inside the subject (the tokenizer merged the
/// subject's last character with what follows, e.g. `"F.C."` + `"'s"` → `".'"`), as the
/// reference's count of the subject's own tokens does. A subject cut inside a word
/// (`"Eiffel Tow"` + `"er"`), or one that starts inside a token (`"cap"` in `" capital"`), has
/// no last token of its own: an error.
fn locate(
    tok: &Tokenizer,
    fact: &Fact,
    index: usize,
    text: &str,
    (start, end): (usize, usize),
) -> Result<(Vec<u32>, usize)> {
    let (ids, offsets) = tok
        .encode_with_offsets(text)
        .map_err(|e| fact.error(index, FactProblem::Tokenizer(e.to_string())))?;
    let pos = offsets
        .iter()
        .rposition(|&(s, e)| e == end && s < e)
        .or_else(|| {
            // Only where the subject ends at a word boundary of the text: "Tow" + "er" is a
            // subject cut inside a word, not a merge.
            let last = text[..end].chars().next_back();
            let next = text[end..].chars().next();
            let mid_word =
                last.is_some_and(char::is_alphanumeric) && next.is_some_and(char::is_alphanumeric);
            if mid_word {
                return None;
            }
            offsets
                .iter()
                .position(|&(s, e)| s >= start && s < end && e > end)
        })
        .ok_or_else(|| {
            fact.error(
                index,
                FactProblem::SubjectBoundary {
                    subject: fact.subject.clone(),
                    text: text.into(),
                },
            )
        })?;
    Ok((ids, pos))
}

/// Fills `template` (one `{}`) with `prompt` (one `{}`) filled with `subject`; returns the text
/// and the byte range of the subject in it.
fn fill(template: &str, prompt: &str, subject: &str) -> (String, (usize, usize)) {
    let (t0, t1) = template.split_once("{}").unwrap_or((template, ""));
    let (p0, p1) = prompt.split_once("{}").unwrap_or((prompt, ""));
    let text = format!("{t0}{p0}{subject}{p1}{t1}");
    let start = t0.len() + p0.len();
    (text, (start, start + subject.len()))
}

/// Tokenizes the target as the reference does: `" " + target_new` (no extra space when it
/// already starts with whitespace), without BOS. The one tokenization of objects that the
/// optimizer and the metrics (`eamet-eval`) share.
///
/// # Errors
/// The tokenizer's message.
pub fn target_ids(tok: &Tokenizer, target: &str) -> std::result::Result<Vec<u32>, String> {
    let text = if target.starts_with(char::is_whitespace) {
        target.to_string()
    } else {
        format!(" {target}")
    };
    let enc = tok
        .inner()
        .encode(text.as_str(), false)
        .map_err(|e| e.to_string())?;
    Ok(enc.get_ids().to_vec())
}

/// Validates and tokenizes facts for the given context templates.
///
/// # Errors
/// [`validate_facts`]' errors; [`FactProblem::SubjectBoundary`] when the subject has no last
/// token of its own in some template (it starts inside a token, or no token holds its end);
/// [`FactProblem::NoTargetTokens`].
pub fn prepare_facts(
    tok: &Tokenizer,
    facts: &[Fact],
    prefixes: &ContextPrefixes,
) -> Result<Vec<PreparedFact>> {
    validate_facts(facts)?;
    facts
        .iter()
        .enumerate()
        .map(|(index, fact)| {
            let mut key_prompts = Vec::with_capacity(prefixes.templates.len());
            let mut subject_last = Vec::with_capacity(prefixes.templates.len());
            for template in &prefixes.templates {
                let (text, span) = fill(template, &fact.prompt, &fact.subject);
                let (ids, pos) = locate(tok, fact, index, &text, span)?;
                key_prompts.push(ids);
                subject_last.push(pos);
            }
            let targets = target_ids(tok, &fact.target_new)
                .map_err(|e| fact.error(index, FactProblem::Tokenizer(e)))?;
            if targets.is_empty() {
                return Err(fact.error(index, FactProblem::NoTargetTokens(fact.target_new.clone())));
            }
            let (text, span) = fill("{}", "{} is a", &fact.subject);
            let (essence_prompt, essence_subject_last) = locate(tok, fact, index, &text, span)?;
            Ok(PreparedFact {
                index,
                fact: fact.clone(),
                key_prompts,
                subject_last,
                target_ids: targets,
                essence_prompt,
                essence_subject_last,
            })
        })
        .collect()
}
