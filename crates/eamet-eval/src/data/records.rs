//! The loaded, format-independent record types.
//!
//! Targets (`target_new`, `target_true`, [`Probe::target`], answers) are stored **without** a
//! leading space, trimmed of surrounding whitespace. Consumers add the space themselves when
//! they tokenize a continuation (`" " + target`), as ROME/MEMIT/EAMET do.

use serde::{Deserialize, Serialize};

use super::error::RecordProblem;

/// One requested edit: `prompt` with `subject` in place of `{}` should continue with
/// `target_new`. The field names match `eamet_optim::Fact`, so converting is field by field.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Rewrite {
    /// The subject, e.g. `"Danielle Darrieux"`.
    pub subject: String,
    /// The prompt template with exactly one `{}` standing for the subject.
    pub prompt: String,
    /// The new object, trimmed, without a leading space.
    pub target_new: String,
    /// The true (pre-edit) object, when the dataset gives one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target_true: Option<String>,
    /// The dataset's case identifier (numbers are written in decimal).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub case_id: Option<String>,
    /// The Wikidata relation id (e.g. `"P103"`), when the dataset gives one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub relation_id: Option<String>,
}

impl Rewrite {
    /// The prompt with the subject filled in.
    ///
    /// ```
    /// use eamet_eval::data::Rewrite;
    /// let r = Rewrite {
    ///     subject: "Eiffel Tower".into(),
    ///     prompt: "The {} is located in".into(),
    ///     target_new: "Rome".into(),
    ///     target_true: None,
    ///     case_id: None,
    ///     relation_id: None,
    /// };
    /// assert_eq!(r.filled_prompt(), "The Eiffel Tower is located in");
    /// ```
    pub fn filled_prompt(&self) -> String {
        self.prompt.replacen("{}", &self.subject, 1)
    }

    /// Checks what the loaders check: exactly one `{}` in `prompt`, a non-empty subject and
    /// non-empty targets.
    ///
    /// # Errors
    /// The first problem found, naming the Rust field.
    pub fn validate(&self) -> Result<(), RecordProblem> {
        check_template("prompt", &self.prompt)?;
        check_nonempty("subject", &self.subject)?;
        check_nonempty("target_new", &self.target_new)?;
        if let Some(t) = &self.target_true {
            check_nonempty("target_true", t)?;
        }
        Ok(())
    }
}

/// A prompt (subject already filled in) and the object a model should continue it with.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Probe {
    /// The full prompt text.
    pub prompt: String,
    /// The expected continuation, trimmed, without a leading space.
    pub target: String,
}

/// zsRE-specific fields, kept next to the mapped record.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ZsreInfo {
    /// All gold answers (`answers`); `answers[0]` is MEMIT/EAMET's `target_new`.
    pub answers: Vec<String>,
    /// The alternative answer (`alt`), EasyEdit's `target_new`; trimmed.
    pub alt: Option<String>,
    /// The original model's prediction (`pred`).
    pub pred: Option<String>,
    /// The MEND conditioning string (`cond`).
    pub cond: Option<String>,
    /// EasyEdit's portability annotation, when present.
    pub portability: Option<Portability>,
}

/// EasyEdit's zsRE portability annotation.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Portability {
    /// `Recalled Relation`, e.g. `"(X, event type, athletics)"`.
    pub recalled_relation: String,
    /// `New Question`: a question whose answer follows from the edit.
    pub new_question: String,
    /// `New Answer`: its answer; trimmed.
    pub new_answer: String,
}

/// One evaluation record of an edit dataset (CounterFact, EasyEdit CounterFact, zsRE, our facts).
///
/// Prompt lists that a format does not have are empty.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EvalRecord {
    /// 0-based position of the record in its file.
    pub index: usize,
    /// The edit.
    pub rewrite: Rewrite,
    /// Paraphrases of the rewrite prompt (subject filled in); scored against `target_new`.
    pub paraphrase_prompts: Vec<String>,
    /// Neighbourhood prompts: other subjects that share the true object. Each target is the
    /// object they must keep (CounterFact: the record's `target_true`).
    pub neighborhood: Vec<Probe>,
    /// CounterFact attribute prompts: other subjects that already have `target_new` as their
    /// object (target = `target_new`).
    pub attribute: Vec<Probe>,
    /// Prompts about the subject for free generation (fluency, consistency).
    pub generation_prompts: Vec<String>,
    /// Unrelated locality probes (zsRE: the NQ question `loc` with answer `loc_ans`, stored as
    /// in the file; MEMIT appends `"?"` and scores the answer token by token).
    pub locality: Vec<Probe>,
    /// zsRE extras (`None` for other formats).
    pub zsre: Option<ZsreInfo>,
}

impl EvalRecord {
    /// The case id of the rewrite.
    pub fn case_id(&self) -> Option<&str> {
        self.rewrite.case_id.as_deref()
    }

    /// The subject of the rewrite.
    pub fn subject(&self) -> &str {
        &self.rewrite.subject
    }
}

/// A known fact (ROME's `known_1000.json`): for causal tracing and fact selection, not an edit,
/// so there is no `target_new`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct KnownFact {
    /// 0-based position of the record in its file.
    pub index: usize,
    /// `known_id`.
    pub case_id: Option<String>,
    /// The subject.
    pub subject: String,
    /// The template with one `{}` (the file's `template`).
    pub prompt: String,
    /// The true object (the file's `attribute`), trimmed.
    pub target_true: String,
    /// The prompt used for tracing (the file's `prompt`: the subject filled in, sometimes
    /// with a few more words than `template`).
    pub tracing_prompt: String,
    /// GPT-2 XL's continuation of `tracing_prompt` (`prediction`), as in the file.
    pub prediction: Option<String>,
    /// The Wikidata relation id.
    pub relation_id: Option<String>,
}

impl KnownFact {
    /// The template with the subject filled in.
    pub fn filled_prompt(&self) -> String {
        self.prompt.replacen("{}", &self.subject, 1)
    }
}

/// One MQuAKE case: a chain of edits and multi-hop questions about their combined effect.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MquakeCase {
    /// 0-based position of the record in its file.
    pub index: usize,
    /// The case id.
    pub case_id: Option<String>,
    /// The edits, in file order. Their rewrites' case ids are `"{case_id}/{k}"` (k = 0-based
    /// position in the list) so that they stay unique in one edit run.
    pub edits: Vec<MquakeEdit>,
    /// Multi-hop phrasings of the question.
    pub questions: Vec<String>,
    /// The answer before the edits.
    pub answer: String,
    /// Aliases of `answer`.
    pub answer_alias: Vec<String>,
    /// The answer after all edits.
    pub new_answer: String,
    /// Aliases of `new_answer`.
    pub new_answer_alias: Vec<String>,
    /// The single hops before the edits.
    pub single_hops: Vec<Hop>,
    /// The single hops after the edits.
    pub new_single_hops: Vec<Hop>,
}

/// One edit of an MQuAKE case.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MquakeEdit {
    /// The edit.
    pub rewrite: Rewrite,
    /// The single-hop question that the edit answers differently.
    pub question: Option<String>,
}

/// One hop of an MQuAKE chain.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Hop {
    /// The question.
    pub question: String,
    /// The cloze form (a prompt to continue).
    pub cloze: String,
    /// The answer, trimmed.
    pub answer: String,
    /// Aliases of the answer.
    pub answer_alias: Vec<String>,
}

/// Checks that `template` contains exactly one `{}`.
pub(crate) fn check_template(field: &str, template: &str) -> Result<(), RecordProblem> {
    let found = template.matches("{}").count();
    if found == 1 {
        Ok(())
    } else {
        Err(RecordProblem::Placeholders {
            field: field.to_string(),
            found,
            template: template.to_string(),
        })
    }
}

/// Checks that `s` is not empty after trimming.
pub(crate) fn check_nonempty(field: &str, s: &str) -> Result<(), RecordProblem> {
    if s.trim().is_empty() {
        Err(RecordProblem::Empty {
            field: field.to_string(),
        })
    } else {
        Ok(())
    }
}
