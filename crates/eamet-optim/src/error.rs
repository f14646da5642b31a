//! The crate's error type.

use std::path::PathBuf;

/// What is wrong with one fact.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum FactProblem {
    /// The prompt template has no `{}` where the subject goes.
    #[error("the prompt {0:?} has no \"{{}}\" placeholder for the subject")]
    MissingPlaceholder(String),
    /// The prompt template has more than one `{}`.
    #[error("the prompt {0:?} has more than one \"{{}}\" placeholder")]
    ExtraPlaceholder(String),
    /// The subject is empty (or only whitespace).
    #[error("the subject is empty")]
    EmptySubject,
    /// The new target is empty (or only whitespace).
    #[error("target_new is empty")]
    EmptyTarget,
    /// The subject has no last token of its own in the tokenized prompt: no token ends where
    /// it ends, and it is cut inside a word (`"Eiffel Tow"` + `"er"`) or the token holding its
    /// last character starts before it (`"cap"` in `" capital"`).
    #[error("the subject {subject:?} has no last token of its own in {text:?} (it ends inside a word or starts inside a token)")]
    SubjectBoundary {
        /// The subject.
        subject: String,
        /// The full prompt text.
        text: String,
    },
    /// The target tokenizes to nothing.
    #[error("target_new {0:?} has no tokens")]
    NoTargetTokens(String),
    /// The tokenizer rejected the text.
    #[error("tokenizer: {0}")]
    Tokenizer(String),
}

/// Everything that can go wrong in this crate. Nothing in the crate panics on user input.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum OptimError {
    /// A fact is invalid; names its index and case id.
    #[error("fact {index}{}: {problem}", case_suffix(.case_id))]
    Fact {
        /// Index of the fact in the input list.
        index: usize,
        /// Its case id, if any.
        case_id: Option<String>,
        /// What is wrong.
        problem: FactProblem,
    },
    /// Two facts share a case id.
    #[error("facts {first} and {second} share the case id {case_id:?}")]
    DuplicateCaseId {
        /// The repeated id.
        case_id: String,
        /// The first fact with it.
        first: usize,
        /// The second fact with it.
        second: usize,
    },
    /// A hyperparameter is out of range.
    #[error("hyperparameter {field}: {reason}")]
    Hparams {
        /// The field (reference name).
        field: &'static str,
        /// Why it is rejected.
        reason: String,
    },
    /// An argument does not fit the others (shapes, layers, empty inputs).
    #[error("invalid input: {0}")]
    Input(String),
    /// The model failed.
    #[error(transparent)]
    Model(#[from] eamet_hooks::ModelError),
    /// The alignment targets of a fact could not be built.
    #[error("alignment targets of fact {fact}: {source}")]
    Align {
        /// The fact.
        fact: usize,
        /// The cause.
        source: eamet_align::AlignError,
    },
    /// The loss of a fact became NaN or infinite.
    #[error("fact {fact}{}: the loss became non-finite at step {step} ({term} = {value})", case_suffix(.case_id))]
    NonFinite {
        /// The fact.
        fact: usize,
        /// Its case id, if any.
        case_id: Option<String>,
        /// The optimizer iteration.
        step: usize,
        /// The loss term.
        term: String,
        /// Its value.
        value: f64,
    },
    /// A file could not be read or written.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// A file has unexpected contents.
    #[error("{path}: {detail}")]
    Format {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        detail: String,
    },
    /// A run directory belongs to another run (model, facts, keys or hyperparameters differ).
    #[error(
        "run directory {path} was made for another {what} (recorded {recorded}, now {now}); \
         use a fresh directory"
    )]
    RunMismatch {
        /// The run directory.
        path: PathBuf,
        /// What differs.
        what: &'static str,
        /// The value recorded in the manifest.
        recorded: String,
        /// The value of this call.
        now: String,
    },
    /// The run stopped on request ([`RunOptions::stop_after`](crate::RunOptions::stop_after))
    /// after `finished` facts were saved; calling again with the same run directory resumes.
    #[error("stopped on request after {finished} finished facts")]
    Interrupted {
        /// Facts saved in the run directory so far.
        finished: usize,
    },
}

fn case_suffix(case_id: &Option<String>) -> String {
    match case_id {
        Some(c) => format!(" (case {c})"),
        None => String::new(),
    }
}

/// Result alias of this crate.
pub type Result<T, E = OptimError> = std::result::Result<T, E>;

pub(crate) fn io_err(path: impl Into<PathBuf>) -> impl FnOnce(std::io::Error) -> OptimError {
    let path = path.into();
    move |source| OptimError::Io { path, source }
}
