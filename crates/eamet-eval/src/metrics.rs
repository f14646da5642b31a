//! Model-based metrics (feature `metrics`): ALGORITHM.md §7 through the hooks API.
//!
//! Everything is batched: teacher-forced scoring reads log-probabilities only at the target
//! positions ([`eamet_hooks::LogProbs::Full`] at those places, reduced in libtorch to the
//! target's log-probabilities and the argmax), and generations use the model's batched greedy
//! decoder with a KV cache.
//!
//! * **strict** (the headline): a prompt succeeds iff every token of `" " + object` is the
//!   argmax under teacher forcing, i.e. greedy decoding emits exactly the object first.
//! * **classic** (MEMIT): mean per-token NLL of the new object against the true one, and the
//!   magnitude `P(new) − P(true)` with `P = exp(−mean token NLL)`.
//! * **lenient** (clearly labelled): the greedy continuation of `lenient_tokens` tokens contains
//!   the object at a word boundary.
//! * **fluency**: weighted bi/tri-gram entropy of greedy generations (see [`crate::text`]).
//! * **robustness**: strict efficacy with context prefixes of several lengths drawn
//!   deterministically from a corpus ([`ContextPrefixes`]).

use crate::data::EvalRecord;
use crate::text::{contains_word_with, fluency, WordMatch};
use eamet_hooks::tch::{self, Kind, Tensor};
use eamet_hooks::{Batch, EditableLm, LogProbs, Padding, Plan};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

impl crate::data::Rewrite {
    /// The edit as the optimizer's [`eamet_optim::Fact`] (field by field; the relation id is
    /// dropped).
    pub fn to_fact(&self) -> eamet_optim::Fact {
        eamet_optim::Fact {
            subject: self.subject.clone(),
            prompt: self.prompt.clone(),
            target_new: self.target_new.clone(),
            target_true: self.target_true.clone(),
            case_id: self.case_id.clone(),
        }
    }
}

/// What went wrong while evaluating.
#[derive(Debug, thiserror::Error)]
pub enum MetricsError {
    /// The model failed.
    #[error("model: {0}")]
    Model(#[from] eamet_hooks::ModelError),
    /// The tokenizer failed.
    #[error("tokenizer: {0}")]
    Tokenizer(#[from] eamet_hooks::tokenizer::TokenizerError),
    /// A libtorch operation failed.
    #[error("libtorch: {0}")]
    Torch(#[from] tch::TchError),
    /// A target is empty (or only whitespace).
    #[error("record {record}: target {target:?} has no tokens")]
    EmptyTarget {
        /// Index of the request.
        record: usize,
        /// The target text.
        target: String,
    },
    /// Bad configuration or input.
    #[error("{0}")]
    Input(String),
}

type Result<T> = std::result::Result<T, MetricsError>;

/// One teacher-forced scoring request: `prompt` followed by `" " + target`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ScoreRequest {
    /// The prompt text.
    pub prompt: String,
    /// The object, without its leading space (one is added unless it starts with whitespace).
    pub target: String,
}

/// The teacher-forced result for one request.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TargetScore {
    /// Log-probability of each target token given the prompt and the gold previous tokens.
    pub token_logprobs: Vec<f32>,
    /// Whether every target token is the argmax at its position (greedy decoding would emit
    /// exactly the target first).
    pub exact: bool,
    /// How many of the target tokens are the argmax (zsRE-style token accuracy).
    pub argmax_hits: usize,
}

impl TargetScore {
    /// Mean negative log-likelihood per target token.
    pub fn mean_nll(&self) -> f64 {
        -self
            .token_logprobs
            .iter()
            .map(|&x| f64::from(x))
            .sum::<f64>()
            / self.token_logprobs.len().max(1) as f64
    }

    /// `exp(−mean token NLL)`: the per-token geometric-mean probability (MEMIT's magnitudes).
    pub fn prob(&self) -> f64 {
        (-self.mean_nll()).exp()
    }
}

/// Token ids of `" " + target` (no extra space when it already starts with whitespace, no BOS),
/// the tokenization every editing method and metric here uses.
pub fn target_ids(tok: &eamet_hooks::tokenizer::Tokenizer, target: &str) -> Result<Vec<u32>> {
    eamet_optim::target_ids(tok, target).map_err(|e| MetricsError::Input(format!("tokenizer: {e}")))
}

/// Teacher-forced scores of `requests`, `batch_size` rows per forward pass.
///
/// # Errors
/// [`MetricsError::EmptyTarget`] (naming the request index) when a target has no tokens;
/// model and libtorch errors.
pub fn teacher_forced<M: EditableLm + ?Sized>(
    model: &M,
    requests: &[ScoreRequest],
    batch_size: usize,
) -> Result<Vec<TargetScore>> {
    teacher_forced_with(
        model,
        requests,
        batch_size,
        &indicatif::ProgressBar::hidden(),
    )
}

fn teacher_forced_with<M: EditableLm + ?Sized>(
    model: &M,
    requests: &[ScoreRequest],
    batch_size: usize,
    bar: &indicatif::ProgressBar,
) -> Result<Vec<TargetScore>> {
    let tok = model.tokenizer();
    let mut rows = Vec::with_capacity(requests.len());
    for (i, r) in requests.iter().enumerate() {
        let p = tok.encode(&r.prompt)?;
        if p.is_empty() {
            return Err(MetricsError::Input(format!("request {i}: empty prompt")));
        }
        let t = target_ids(tok, &r.target)?;
        if t.is_empty() || r.target.trim().is_empty() {
            return Err(MetricsError::EmptyTarget {
                record: i,
                target: r.target.clone(),
            });
        }
        rows.push((p, t));
    }
    let _g = tch::no_grad_guard();
    let mut out: Vec<Option<TargetScore>> = vec![None; rows.len()];
    for idx in length_batches(&rows, |(p, t)| p.len() + t.len(), batch_size) {
        let chunk: Vec<&(Vec<u32>, Vec<u32>)> = idx.iter().map(|&i| &rows[i]).collect();
        let seqs: Vec<Vec<u32>> = chunk
            .iter()
            .map(|(p, t)| {
                let mut s = p.clone();
                s.extend_from_slice(&t[..t.len() - 1]);
                s
            })
            .collect();
        let mut at = Vec::new();
        let mut gold = Vec::new();
        for (r, (p, t)) in chunk.iter().enumerate() {
            for (k, &id) in t.iter().enumerate() {
                at.push((r, p.len() - 1 + k));
                gold.push(i64::from(id));
            }
        }
        let batch = Batch::new(&seqs, tok.pad_id, Padding::Right, model.device())?;
        let lp = model
            .forward(
                &batch,
                &Plan {
                    logprobs: Some(LogProbs::Full { at }),
                    ..Default::default()
                },
            )?
            .logprobs
            .ok_or_else(|| MetricsError::Input("the model returned no log-probabilities".into()))?;
        let gold_t = Tensor::from_slice(&gold).to_device(lp.device());
        let picked = lp.gather(1, &gold_t.unsqueeze(1), false).squeeze_dim(1);
        let argmax = lp.argmax(1, false);
        let hits = argmax.eq_tensor(&gold_t);
        let picked = Vec::<f32>::try_from(picked.to_kind(Kind::Float).to_device(tch::Device::Cpu))?;
        let hits = Vec::<bool>::try_from(hits.to_device(tch::Device::Cpu))?;
        let mut k = 0;
        for (&i, (_, t)) in idx.iter().zip(&chunk) {
            let n = t.len();
            let h = hits[k..k + n].iter().filter(|&&b| b).count();
            out[i] = Some(TargetScore {
                token_logprobs: picked[k..k + n].to_vec(),
                exact: h == n,
                argmax_hits: h,
            });
            k += n;
        }
        bar.inc(chunk.len() as u64);
    }
    Ok(out.into_iter().flatten().collect())
}

/// Tokens per forward pass at most (rows × longest row), so long prompts get small batches.
const TOKEN_BUDGET: usize = 8192;

/// Batches of item indices, sorted by length so that a batch pads little: at most `max_rows`
/// rows and [`TOKEN_BUDGET`] padded tokens each (a single longer row still gets a batch).
fn length_batches<T>(items: &[T], len: impl Fn(&T) -> usize, max_rows: usize) -> Vec<Vec<usize>> {
    length_batches_within(items, len, max_rows, TOKEN_BUDGET)
}

/// [`length_batches`] with another padded-token budget.
pub(crate) fn length_batches_within<T>(
    items: &[T],
    len: impl Fn(&T) -> usize,
    max_rows: usize,
    budget: usize,
) -> Vec<Vec<usize>> {
    let mut order: Vec<usize> = (0..items.len()).collect();
    order.sort_by_key(|&i| len(&items[i]));
    let mut batches = Vec::new();
    let mut cur: Vec<usize> = Vec::new();
    for i in order {
        let l = len(&items[i]);
        // Sorted ascending: this row is the longest of the batch if it joins.
        if !cur.is_empty() && (cur.len() >= max_rows.max(1) || (cur.len() + 1) * l > budget) {
            batches.push(std::mem::take(&mut cur));
        }
        cur.push(i);
    }
    if !cur.is_empty() {
        batches.push(cur);
    }
    batches
}

/// A greedy continuation.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Continuation {
    /// The generated ids.
    pub ids: Vec<u32>,
    /// Their text.
    pub text: String,
}

/// Greedy continuations of `prompts` (`max_new` tokens, stopping at EOS), batched.
///
/// # Errors
/// Model and tokenizer errors.
pub fn greedy<M: EditableLm + ?Sized>(
    model: &M,
    prompts: &[String],
    max_new: usize,
    batch_size: usize,
) -> Result<Vec<Continuation>> {
    greedy_with(
        model,
        prompts,
        max_new,
        batch_size,
        &indicatif::ProgressBar::hidden(),
    )
}

fn greedy_with<M: EditableLm + ?Sized>(
    model: &M,
    prompts: &[String],
    max_new: usize,
    batch_size: usize,
    bar: &indicatif::ProgressBar,
) -> Result<Vec<Continuation>> {
    let tok = model.tokenizer();
    let stop: Vec<u32> = tok.eos_id.into_iter().collect();
    let all = prompts
        .iter()
        .map(|p| tok.encode(p))
        .collect::<std::result::Result<Vec<_>, _>>()?;
    let mut out: Vec<Option<Continuation>> = vec![None; prompts.len()];
    for idx in length_batches(&all, |ids| ids.len() + max_new, batch_size) {
        let ids: Vec<Vec<u32>> = idx.iter().map(|&i| all[i].clone()).collect();
        for (&i, g) in idx.iter().zip(model.generate(&ids, max_new, &stop)?) {
            let text = tok.decode(&g.tokens)?;
            out[i] = Some(Continuation {
                ids: g.tokens,
                text,
            });
        }
        bar.inc(idx.len() as u64);
    }
    Ok(out.into_iter().flatten().collect())
}

/// Context prefixes for the prefixed and robustness prompts: for each length `n`, `count`
/// texts of `n` tokens cut from a corpus at word starts, chosen by a seeded generator (the same
/// corpus, seed and model give the same prefixes). Each ends with `". "`, as the reference's
/// generated prefixes do.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ContextPrefixes {
    /// `(length in tokens, prefixes)`, in the order asked.
    pub by_len: Vec<(usize, Vec<String>)>,
    /// The seed used.
    pub seed: u64,
}

impl ContextPrefixes {
    /// No prefixes (prefixed metrics are then absent from the report).
    pub fn none() -> Self {
        ContextPrefixes {
            by_len: Vec::new(),
            seed: 0,
        }
    }

    /// Cut prefixes from `docs`.
    ///
    /// # Errors
    /// [`MetricsError::Input`] when the corpus has no document long enough for a length.
    pub fn from_corpus(
        tok: &eamet_hooks::tokenizer::Tokenizer,
        docs: &[String],
        lens: &[usize],
        count: usize,
        seed: u64,
    ) -> Result<Self> {
        // One stream of text (documents joined by a space, at most PREFIX_CORPUS_CHARS), so
        // that short documents still give long prefixes; remember which tokens start a word.
        let mut text = String::new();
        for d in docs {
            if text.len() >= PREFIX_CORPUS_CHARS {
                break;
            }
            if !text.is_empty() {
                text.push(' ');
            }
            text.push_str(d.trim());
        }
        let enc = tok
            .inner()
            .encode(text.as_str(), false)
            .map_err(|e| MetricsError::Input(format!("tokenizer: {e}")))?;
        let ids = enc.get_ids().to_vec();
        let starts: Vec<usize> = enc
            .get_offsets()
            .iter()
            .enumerate()
            .filter(|&(i, &(s, _))| {
                i == 0
                    || text.get(..s).is_some_and(|h| h.ends_with(' '))
                    || text.get(s..).is_some_and(|t| t.starts_with(' '))
            })
            .map(|(i, _)| i)
            .collect();
        let mut rng = SplitMix64(seed);
        let mut by_len = Vec::new();
        for &n in lens {
            let eligible: Vec<usize> = starts
                .iter()
                .copied()
                .filter(|&s| s + n <= ids.len())
                .collect();
            if eligible.is_empty() || n == 0 {
                return Err(MetricsError::Input(format!(
                    "the corpus has fewer than {n} tokens: no context prefix of that length"
                )));
            }
            let mut v = Vec::with_capacity(count);
            for _ in 0..count {
                let s = eligible[(rng.next() % eligible.len() as u64) as usize];
                let text = tok.decode(&ids[s..s + n])?;
                let text = text.trim();
                let text = text.trim_end_matches(['.', ',', ';', ':']);
                v.push(format!("{text}. "));
            }
            by_len.push((n, v));
        }
        Ok(ContextPrefixes { by_len, seed })
    }

    /// The prefixes of length `n`, if cut.
    pub fn of_len(&self, n: usize) -> Option<&[String]> {
        self.by_len
            .iter()
            .find(|(l, _)| *l == n)
            .map(|(_, v)| v.as_slice())
    }
}

/// At most this many characters of the corpus are tokenized for context prefixes.
const PREFIX_CORPUS_CHARS: usize = 400_000;

/// A tiny deterministic generator (SplitMix64), so prefixes do not depend on a crate version.
struct SplitMix64(u64);

impl SplitMix64 {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
}

/// What to evaluate and how.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct EvalConfig {
    /// Rows per forward pass / generation batch.
    pub batch_size: usize,
    /// Tokens of greedy continuation for the lenient metric and the "unchanged" share.
    pub lenient_tokens: usize,
    /// Tokens generated per generation prompt for fluency (the reference: 64); 0 disables.
    pub fluency_tokens: usize,
    /// At most this many generation prompts per record (the reference uses all 10).
    pub fluency_prompts: usize,
    /// Length of the prefixes used for the "prefixed" efficacy and specificity prompts (the
    /// reference: 5); must be one of the [`ContextPrefixes`] lengths, or `None` to skip.
    pub prefixed_len: Option<usize>,
    /// Prefix lengths of the robustness suite (strict efficacy only).
    pub robustness_lens: Vec<usize>,
    /// Also score every neighbourhood prompt under every prefix (the reference: 10 × 10).
    pub prefixed_neighbourhood: bool,
    /// Case-insensitive lenient matching.
    pub lenient_case_insensitive: bool,
    /// Run the fluency and robustness suites (the expensive generations) on a fixed, seeded
    /// sample of this many records only ([`extra_sample`]); `None`: on every record. Reports
    /// written before this setting existed read as `None`.
    #[serde(default)]
    pub extra_sample: Option<usize>,
    /// Seed of that sample.
    #[serde(default)]
    pub extra_seed: u64,
    /// Show progress bars on stderr (prompts scored / generated).
    #[serde(skip)]
    pub progress: bool,
}

impl Default for EvalConfig {
    fn default() -> Self {
        EvalConfig {
            batch_size: 32,
            lenient_tokens: 10,
            fluency_tokens: 64,
            fluency_prompts: 10,
            prefixed_len: Some(5),
            robustness_lens: vec![5, 50, 200],
            prefixed_neighbourhood: true,
            lenient_case_insensitive: false,
            extra_sample: Some(DEFAULT_EXTRA_SAMPLE),
            extra_seed: 0,
            progress: false,
        }
    }
}

/// Records in the fluency and robustness sample by default.
pub const DEFAULT_EXTRA_SAMPLE: usize = 100;

/// The records (indices into `0..n`, ascending) that get the fluency and robustness suites:
/// all of them when `k` is `None` or at least `n`, otherwise `k` drawn without replacement by a
/// seeded generator (the same `n`, `k` and seed always give the same sample).
pub fn extra_sample(n: usize, k: Option<usize>, seed: u64) -> Vec<usize> {
    match k {
        Some(k) if k < n => {
            // Partial Fisher-Yates over 0..n.
            let mut idx: Vec<usize> = (0..n).collect();
            let mut rng = SplitMix64(seed ^ 0x6578_7472_6173_616d);
            for i in 0..k {
                let j = i + (rng.next() % (n - i) as u64) as usize;
                idx.swap(i, j);
            }
            let mut v = idx[..k].to_vec();
            v.sort_unstable();
            v
        }
        _ => (0..n).collect(),
    }
}

/// Which kind of prompt a [`PromptResult`] is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PromptKind {
    /// The edit prompt itself.
    Rewrite,
    /// A paraphrase of it.
    Paraphrase,
    /// A neighbourhood prompt (another subject, same relation: must keep its true object).
    Neighbourhood,
    /// A generation prompt (fluency); its continuation is `fluency_tokens` long.
    Generation,
    /// An unrelated locality question (zsRE's NQ question + `"?"`): must keep its answer.
    Locality,
}

/// One prompt's raw result: what the model said, and the scores.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PromptResult {
    /// Kind.
    pub kind: PromptKind,
    /// The prompt text.
    pub prompt: String,
    /// Greedy continuation.
    pub generation: String,
    /// Its token ids (absent in reports written before they were kept).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub generation_ids: Option<Vec<u32>>,
    /// Teacher-forced score of the object this prompt should produce (new object for rewrite
    /// and paraphrase prompts, the true object for neighbourhood prompts, the answer for
    /// locality prompts).
    pub expected: Option<TargetScore>,
    /// Teacher-forced score of the competing object (true object for rewrite/paraphrase, new
    /// object for neighbourhood prompts), when the record has one.
    pub competitor: Option<TargetScore>,
    /// Neighbourhood and locality prompts after an edit: `KL(p_pre ‖ p_post)` of the next
    /// token at the prompt's end (see [`crate::drift`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kl: Option<f64>,
    /// Neighbourhood and locality prompts after an edit: the drawdown of the unedited model's
    /// greedy continuation (see [`crate::drift`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub drawdown: Option<f64>,
}

/// The metrics of one record, by name (see [`METRICS`]), plus every prompt's raw result.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RecordEval {
    /// The record's case id.
    pub case_id: Option<String>,
    /// The subject.
    pub subject: String,
    /// Metric name → value in the record (fractions of its prompts; magnitudes; fluency).
    pub metrics: BTreeMap<String, f64>,
    /// Every unprefixed prompt with its greedy continuation and scores (prefixed variants are
    /// only counted, to keep reports readable).
    pub prompts: Vec<PromptResult>,
}

/// Every metric name this module reports, with its label, in report order.
pub const METRICS: &[(&str, &str)] = &[
    ("strict.efficacy", "strict efficacy (edit prompt)"),
    (
        "strict.efficacy_prefixed",
        "strict efficacy (prefixed edit prompts)",
    ),
    (
        "strict.generalization",
        "strict generalization (paraphrases)",
    ),
    (
        "strict.specificity",
        "strict specificity (neighbourhood keeps true object)",
    ),
    (
        "strict.specificity_prefixed",
        "strict specificity (prefixed neighbourhood)",
    ),
    (
        "strict.locality",
        "strict locality (zsRE: unrelated question keeps its answer)",
    ),
    (
        "locality.token_accuracy",
        "locality token accuracy (zsRE, MEMIT's form)",
    ),
    ("classic.efficacy", "classic efficacy P(new) > P(true)"),
    ("classic.generalization", "classic generalization"),
    (
        "classic.specificity",
        "classic specificity P(true) > P(new)",
    ),
    (
        "classic.efficacy_magnitude",
        "efficacy magnitude P(new) − P(true)",
    ),
    (
        "classic.generalization_magnitude",
        "generalization magnitude P(new) − P(true)",
    ),
    (
        "classic.specificity_magnitude",
        "specificity magnitude P(true) − P(new)",
    ),
    (
        "lenient.efficacy",
        "lenient efficacy (10-token greedy contains new object)",
    ),
    ("lenient.generalization", "lenient generalization"),
    (
        "lenient.specificity",
        "lenient specificity (contains true object)",
    ),
    (
        "neighbourhood.unchanged",
        "neighbourhood continuations unchanged by the edit",
    ),
    (
        "neighbourhood.kl",
        "neighbourhood KL(p_pre ‖ p_post), next token (nats)",
    ),
    (
        "neighbourhood.drawdown",
        "neighbourhood drawdown: NLL change of the pre-edit continuation (nats/token)",
    ),
    ("nll.new", "mean token NLL of the new object (edit prompt)"),
    ("fluency", "fluency (weighted bi/tri-gram entropy, bits)"),
];

/// The robustness metric name for prefixes of `n` tokens.
pub fn robustness_metric(n: usize) -> String {
    format!("robust.efficacy_prefix{n}")
}

fn frac(b: impl Iterator<Item = bool>) -> Option<f64> {
    let (mut n, mut k) = (0usize, 0usize);
    for x in b {
        n += 1;
        k += usize::from(x);
    }
    (n > 0).then(|| k as f64 / n as f64)
}

fn mean(v: impl Iterator<Item = f64>) -> Option<f64> {
    let (mut n, mut s) = (0usize, 0.0);
    for x in v {
        n += 1;
        s += x;
    }
    (n > 0).then(|| s / n as f64)
}

/// Evaluates records on the model as it is now (edited or not).
///
/// `pre` is the same records' evaluation on the unedited model, if available: it gives the
/// share of neighbourhood continuations the edit left unchanged. Records keep their order.
///
/// # Errors
/// [`MetricsError::Input`] when `prefixed_len` or a robustness length has no prefixes;
/// empty targets; model errors.
pub fn evaluate<M: EditableLm + ?Sized>(
    model: &M,
    records: &[EvalRecord],
    prefixes: &ContextPrefixes,
    cfg: &EvalConfig,
    pre: Option<&[RecordEval]>,
) -> Result<Vec<RecordEval>> {
    if let Some(p) = pre {
        if p.len() != records.len() {
            return Err(MetricsError::Input(format!(
                "pre-edit results cover {} records, evaluating {}",
                p.len(),
                records.len()
            )));
        }
    }
    let prefixed: &[String] = match cfg.prefixed_len {
        Some(n) => prefixes.of_len(n).ok_or_else(|| {
            MetricsError::Input(format!("no context prefixes of {n} tokens were cut"))
        })?,
        None => &[],
    };
    for &n in &cfg.robustness_lens {
        if prefixes.of_len(n).is_none() {
            return Err(MetricsError::Input(format!(
                "no context prefixes of {n} tokens were cut"
            )));
        }
    }

    // 1. Collect every teacher-forced request and every generation prompt, remembering owners.
    #[derive(Clone, Copy, PartialEq)]
    enum Slot {
        Expected(usize),
        Competitor(usize),
        Prefixed(usize, bool),
        Robust(usize, usize),
        NeighPrefixed(usize),
    }
    let mut reqs: Vec<ScoreRequest> = Vec::new();
    let mut owners: Vec<(usize, Slot)> = Vec::new();
    let mut results: Vec<Vec<PromptResult>> = Vec::with_capacity(records.len());
    let mut gen_prompts: Vec<String> = Vec::new();
    let mut gen_owner: Vec<(usize, usize)> = Vec::new();
    let mut fluency_prompts: Vec<String> = Vec::new();
    let mut fluency_owner: Vec<usize> = Vec::new();
    let mut extra = vec![false; records.len()];
    for i in extra_sample(records.len(), cfg.extra_sample, cfg.extra_seed) {
        extra[i] = true;
    }
    for (ri, rec) in records.iter().enumerate() {
        let rw = &rec.rewrite;
        let edit_prompt = rw.prompt.replacen("{}", &rw.subject, 1);
        let mut prompts = Vec::new();
        let mut push = |kind: PromptKind,
                        prompt: String,
                        expected: Option<&str>,
                        competitor: Option<&str>,
                        prompts: &mut Vec<PromptResult>| {
            let pi = prompts.len();
            if let Some(t) = expected {
                reqs.push(ScoreRequest {
                    prompt: prompt.clone(),
                    target: t.to_string(),
                });
                owners.push((ri, Slot::Expected(pi)));
            }
            if let Some(t) = competitor {
                reqs.push(ScoreRequest {
                    prompt: prompt.clone(),
                    target: t.to_string(),
                });
                owners.push((ri, Slot::Competitor(pi)));
            }
            gen_prompts.push(prompt.clone());
            gen_owner.push((ri, pi));
            prompts.push(PromptResult {
                kind,
                prompt,
                generation: String::new(),
                generation_ids: None,
                expected: None,
                competitor: None,
                kl: None,
                drawdown: None,
            });
        };
        let new = Some(rw.target_new.as_str());
        let truth = rw.target_true.as_deref();
        push(
            PromptKind::Rewrite,
            edit_prompt.clone(),
            new,
            truth,
            &mut prompts,
        );
        for p in &rec.paraphrase_prompts {
            push(PromptKind::Paraphrase, p.clone(), new, truth, &mut prompts);
        }
        for n in &rec.neighborhood {
            push(
                PromptKind::Neighbourhood,
                n.prompt.clone(),
                Some(n.target.as_str()),
                new,
                &mut prompts,
            );
        }
        for l in &rec.locality {
            push(
                PromptKind::Locality,
                format!("{}?", l.prompt),
                Some(l.target.as_str()),
                None,
                &mut prompts,
            );
        }
        for pre_text in prefixed {
            reqs.push(ScoreRequest {
                prompt: format!("{pre_text}{edit_prompt}"),
                target: rw.target_new.clone(),
            });
            owners.push((ri, Slot::Prefixed(0, true)));
            if cfg.prefixed_neighbourhood {
                for (ni, n) in rec.neighborhood.iter().enumerate() {
                    reqs.push(ScoreRequest {
                        prompt: format!("{pre_text}{}", n.prompt),
                        target: n.target.clone(),
                    });
                    owners.push((ri, Slot::NeighPrefixed(ni)));
                }
            }
        }
        let robust_lens: &[usize] = if extra[ri] { &cfg.robustness_lens } else { &[] };
        for (li, &n) in robust_lens.iter().enumerate() {
            for pre_text in prefixes.of_len(n).unwrap_or(&[]) {
                reqs.push(ScoreRequest {
                    prompt: format!("{pre_text}{edit_prompt}"),
                    target: rw.target_new.clone(),
                });
                owners.push((ri, Slot::Robust(li, 0)));
            }
        }
        if cfg.fluency_tokens > 0 && extra[ri] {
            for g in rec.generation_prompts.iter().take(cfg.fluency_prompts) {
                fluency_prompts.push(g.clone());
                fluency_owner.push(ri);
            }
        }
        results.push(prompts);
    }

    // 2. Run them, batched.
    let bar = |n: usize, what: &str| {
        if !cfg.progress {
            return indicatif::ProgressBar::hidden();
        }
        let b = indicatif::ProgressBar::new(n as u64);
        if let Ok(style) =
            indicatif::ProgressStyle::with_template("{msg:>16} [{bar:30}] {pos}/{len} eta {eta}")
        {
            b.set_style(style.progress_chars("=> "));
        }
        b.set_message(what.to_string());
        b
    };
    let b = bar(reqs.len(), "scored prompts");
    let scores = teacher_forced_with(model, &reqs, cfg.batch_size, &b)?;
    b.finish_and_clear();
    let b = bar(gen_prompts.len(), "continuations");
    let gens = greedy_with(model, &gen_prompts, cfg.lenient_tokens, cfg.batch_size, &b)?;
    b.finish_and_clear();
    let fl_gens = if fluency_prompts.is_empty() {
        Vec::new()
    } else {
        let b = bar(fluency_prompts.len(), "fluency texts");
        let g = greedy_with(
            model,
            &fluency_prompts,
            cfg.fluency_tokens,
            cfg.batch_size,
            &b,
        )?;
        b.finish_and_clear();
        g
    };

    // 3. Distribute.
    let mut prefixed_hits: Vec<Vec<bool>> = vec![Vec::new(); records.len()];
    let mut neigh_prefixed_hits: Vec<Vec<bool>> = vec![Vec::new(); records.len()];
    let mut robust_hits: Vec<Vec<Vec<bool>>> =
        vec![vec![Vec::new(); cfg.robustness_lens.len()]; records.len()];
    for ((ri, slot), s) in owners.into_iter().zip(scores) {
        match slot {
            Slot::Expected(pi) => results[ri][pi].expected = Some(s),
            Slot::Competitor(pi) => results[ri][pi].competitor = Some(s),
            Slot::Prefixed(..) => prefixed_hits[ri].push(s.exact),
            Slot::NeighPrefixed(_) => neigh_prefixed_hits[ri].push(s.exact),
            Slot::Robust(li, _) => robust_hits[ri][li].push(s.exact),
        }
    }
    for ((ri, pi), g) in gen_owner.into_iter().zip(gens) {
        results[ri][pi].generation = g.text;
        results[ri][pi].generation_ids = Some(g.ids);
    }
    let mut fluency_texts: Vec<Vec<String>> = vec![Vec::new(); records.len()];
    for ((ri, g), prompt) in fluency_owner.into_iter().zip(fl_gens).zip(fluency_prompts) {
        fluency_texts[ri].push(g.text.clone());
        results[ri].push(PromptResult {
            kind: PromptKind::Generation,
            prompt,
            generation: g.text,
            generation_ids: Some(g.ids),
            expected: None,
            competitor: None,
            kl: None,
            drawdown: None,
        });
    }

    // 4. Per-record metrics.
    let mut out = Vec::with_capacity(records.len());
    for (ri, (rec, prompts)) in records.iter().zip(results).enumerate() {
        let rw = &rec.rewrite;
        let mut m = BTreeMap::new();
        let mut put = |k: &str, v: Option<f64>| {
            if let Some(v) = v {
                m.insert(k.to_string(), v);
            }
        };
        let of = |kind: PromptKind| prompts.iter().filter(move |p| p.kind == kind);
        let strict = |kind| {
            frac(
                of(kind)
                    .filter_map(|p| p.expected.as_ref())
                    .map(|s| s.exact),
            )
        };
        put("strict.efficacy", strict(PromptKind::Rewrite));
        put("strict.generalization", strict(PromptKind::Paraphrase));
        put("strict.specificity", strict(PromptKind::Neighbourhood));
        put("strict.locality", strict(PromptKind::Locality));
        put(
            "locality.token_accuracy",
            mean(
                of(PromptKind::Locality)
                    .filter_map(|p| p.expected.as_ref())
                    .map(|s| s.argmax_hits as f64 / s.token_logprobs.len().max(1) as f64),
            ),
        );
        put(
            "strict.efficacy_prefixed",
            frac(prefixed_hits[ri].iter().copied()),
        );
        put(
            "strict.specificity_prefixed",
            frac(neigh_prefixed_hits[ri].iter().copied()),
        );
        for (li, &n) in cfg.robustness_lens.iter().enumerate() {
            put(
                &robustness_metric(n),
                frac(robust_hits[ri][li].iter().copied()),
            );
        }
        // Classic: expected wins iff its mean token NLL is lower (new ≤ true for rewrite and
        // paraphrase, ties to the edit as the reference does; true < new for neighbourhood).
        let pairs = |kind| {
            of(kind).filter_map(|p| match (&p.expected, &p.competitor) {
                (Some(e), Some(c)) => Some((e, c)),
                _ => None,
            })
        };
        put(
            "classic.efficacy",
            frac(pairs(PromptKind::Rewrite).map(|(e, c)| e.mean_nll() <= c.mean_nll())),
        );
        put(
            "classic.generalization",
            frac(pairs(PromptKind::Paraphrase).map(|(e, c)| e.mean_nll() <= c.mean_nll())),
        );
        put(
            "classic.specificity",
            frac(pairs(PromptKind::Neighbourhood).map(|(e, c)| e.mean_nll() < c.mean_nll())),
        );
        put(
            "classic.efficacy_magnitude",
            mean(pairs(PromptKind::Rewrite).map(|(e, c)| e.prob() - c.prob())),
        );
        put(
            "classic.generalization_magnitude",
            mean(pairs(PromptKind::Paraphrase).map(|(e, c)| e.prob() - c.prob())),
        );
        put(
            "classic.specificity_magnitude",
            mean(pairs(PromptKind::Neighbourhood).map(|(e, c)| e.prob() - c.prob())),
        );
        let wm = WordMatch {
            case_sensitive: !cfg.lenient_case_insensitive,
        };
        let lenient = |kind: PromptKind, target: &dyn Fn(usize) -> String| {
            frac(
                of(kind)
                    .enumerate()
                    .map(|(k, p)| contains_word_with(&p.generation, &target(k), wm)),
            )
        };
        let new = rw.target_new.clone();
        put(
            "lenient.efficacy",
            lenient(PromptKind::Rewrite, &|_| new.clone()),
        );
        put(
            "lenient.generalization",
            lenient(PromptKind::Paraphrase, &|_| new.clone()),
        );
        put(
            "lenient.specificity",
            lenient(PromptKind::Neighbourhood, &|k| {
                rec.neighborhood[k].target.clone()
            }),
        );
        if let Some(pre) = pre {
            let before = pre[ri]
                .prompts
                .iter()
                .filter(|p| p.kind == PromptKind::Neighbourhood);
            put(
                "neighbourhood.unchanged",
                frac(
                    of(PromptKind::Neighbourhood)
                        .zip(before)
                        .map(|(a, b)| a.generation == b.generation),
                ),
            );
        }
        put(
            "nll.new",
            of(PromptKind::Rewrite)
                .next()
                .and_then(|p| p.expected.as_ref())
                .map(TargetScore::mean_nll),
        );
        put(
            "fluency",
            mean(fluency_texts[ri].iter().map(|t| fluency(t))),
        );
        out.push(RecordEval {
            case_id: rw.case_id.clone(),
            subject: rw.subject.clone(),
            metrics: m,
            prompts,
        });
    }
    Ok(out)
}

/// Mean of each metric over the records that have it (records without paraphrases do not
/// count towards generalization, and so on), with the number of records it covers.
pub fn summarize(records: &[RecordEval]) -> BTreeMap<String, (f64, usize)> {
    let mut acc: BTreeMap<String, (f64, usize)> = BTreeMap::new();
    for r in records {
        for (k, &v) in &r.metrics {
            let e = acc.entry(k.clone()).or_insert((0.0, 0));
            e.0 += v;
            e.1 += 1;
        }
    }
    acc.into_iter()
        .map(|(k, (s, n))| (k, (s / n as f64, n)))
        .collect()
}
