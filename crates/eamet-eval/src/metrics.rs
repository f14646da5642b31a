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
use eamet_hooks::rng::SplitMix64;
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

/// The prompts of a record that an edit should leave alone, exactly as [`evaluate`] asks them
/// and lists them in [`RecordEval::prompts`]: each neighbourhood prompt (expected answer: the
/// true object) and each locality question (its prompt followed by `?`; expected: its answer),
/// in that order. Used to pair two evaluations of the same records prompt by prompt.
pub fn unrelated_prompts(rec: &EvalRecord) -> Vec<(PromptKind, String, &str)> {
    let neighbourhood = rec.neighborhood.iter().map(|n| {
        (
            PromptKind::Neighbourhood,
            n.prompt.clone(),
            n.target.as_str(),
        )
    });
    let locality = rec.locality.iter().map(|l| {
        (
            PromptKind::Locality,
            format!("{}?", l.prompt),
            l.target.as_str(),
        )
    });
    neighbourhood.chain(locality).collect()
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
        let mut rng = SplitMix64::new(seed);
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
                let s = eligible[rng.below(eligible.len() as u64) as usize];
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
    /// Which records get the prefixed prompts (each edit and neighbourhood prompt under every
    /// prefix of `prefixed_len` tokens: about four in five of the tokens an evaluation scores).
    /// Reports written before this setting existed read as [`PrefixedScope::All`].
    #[serde(default = "PrefixedScope::all")]
    pub prefixed_scope: PrefixedScope,
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
            prefixed_scope: PrefixedScope::Sample,
            progress: false,
        }
    }
}

/// Which records are scored under context prefixes ([`EvalConfig::prefixed_scope`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PrefixedScope {
    /// Every record (the reference's protocol; five times the cost of the unprefixed prompts).
    All,
    /// Only the records of the fluency and robustness sample ([`EvalConfig::extra_sample`]);
    /// every record when there is no sample.
    Sample,
}

impl PrefixedScope {
    /// [`PrefixedScope::All`] (the value of reports that predate the setting).
    pub fn all() -> Self {
        PrefixedScope::All
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
            let mut rng = SplitMix64::new(seed ^ 0x6578_7472_6173_616d);
            for i in 0..k {
                let j = i + rng.below((n - i) as u64) as usize;
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
    let prefixed = check_inputs(records, prefixes, cfg, pre)?;
    // 1. Collect every teacher-forced request and every generation prompt, remembering owners.
    let sets = PromptSets::collect(records, prefixed, prefixes, cfg);
    // 2. Run them, batched.
    let scores = score_requests(model, &sets.requests, cfg)?;
    let gens = lenient_generations(model, &sets.gen_prompts, cfg)?;
    let fluency_gens = fluency_generations(model, &sets.fluency_prompts, cfg)?;
    // 3. Distribute.
    let outcomes = sets.distribute(scores, gens, fluency_gens);
    // 4. Per-record metrics.
    Ok(records
        .iter()
        .zip(outcomes)
        .enumerate()
        .map(|(ri, (rec, outcome))| {
            let pre_prompts = pre.map(|p| p[ri].prompts.as_slice());
            record_eval(rec, outcome, cfg, pre_prompts)
        })
        .collect())
}

/// Checks `pre` against `records` and that every prefix length `cfg` asks for was cut; returns
/// the prefixes of the "prefixed" prompts (none when `prefixed_len` is `None`).
fn check_inputs<'a>(
    records: &[EvalRecord],
    prefixes: &'a ContextPrefixes,
    cfg: &EvalConfig,
    pre: Option<&[RecordEval]>,
) -> Result<&'a [String]> {
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
    Ok(prefixed)
}

/// Which part of a record a teacher-forced request scores.
#[derive(Clone, Copy, PartialEq)]
enum Slot {
    /// The expected object of the record's prompt at this index.
    Expected(usize),
    /// The competing object of the record's prompt at this index.
    Competitor(usize),
    /// A prefixed edit prompt.
    Prefixed,
    /// A prefixed neighbourhood prompt.
    NeighPrefixed,
    /// A robustness prompt, with the index of its prefix length.
    Robust(usize),
}

/// One record's results as the model passes fill them in.
struct RecordOutcome {
    /// Every unprefixed prompt (the generation prompts last).
    prompts: Vec<PromptResult>,
    /// Exactness of each prefixed edit prompt.
    prefixed_hits: Vec<bool>,
    /// Exactness of each prefixed neighbourhood prompt.
    neigh_prefixed_hits: Vec<bool>,
    /// Exactness of each robustness prompt, by prefix length (as in `robustness_lens`).
    robust_hits: Vec<Vec<bool>>,
    /// The fluency generations.
    fluency_texts: Vec<String>,
}

/// Every request and prompt of an evaluation, each with the record (and slot) it belongs to.
struct PromptSets {
    /// Teacher-forced requests, in the order they are scored.
    requests: Vec<ScoreRequest>,
    /// `(record, slot)` of each request.
    owners: Vec<(usize, Slot)>,
    /// Prompts continued for `lenient_tokens` tokens.
    gen_prompts: Vec<String>,
    /// `(record, prompt index)` of each of those.
    gen_owner: Vec<(usize, usize)>,
    /// Prompts continued for `fluency_tokens` tokens.
    fluency_prompts: Vec<String>,
    /// The record of each of those.
    fluency_owner: Vec<usize>,
    /// Per record, its prompts (scores and generations still empty).
    outcomes: Vec<RecordOutcome>,
}

impl PromptSets {
    /// Every request and prompt of `records`, record by record.
    fn collect(
        records: &[EvalRecord],
        prefixed: &[String],
        prefixes: &ContextPrefixes,
        cfg: &EvalConfig,
    ) -> Self {
        let mut sets = PromptSets {
            requests: Vec::new(),
            owners: Vec::new(),
            gen_prompts: Vec::new(),
            gen_owner: Vec::new(),
            fluency_prompts: Vec::new(),
            fluency_owner: Vec::new(),
            outcomes: Vec::with_capacity(records.len()),
        };
        let mut extra = vec![false; records.len()];
        for i in extra_sample(records.len(), cfg.extra_sample, cfg.extra_seed) {
            extra[i] = true;
        }
        for (ri, rec) in records.iter().enumerate() {
            let rw = &rec.rewrite;
            let edit_prompt = rw.prompt.replacen("{}", &rw.subject, 1);
            sets.outcomes.push(RecordOutcome {
                prompts: Vec::new(),
                prefixed_hits: Vec::new(),
                neigh_prefixed_hits: Vec::new(),
                robust_hits: vec![Vec::new(); cfg.robustness_lens.len()],
                fluency_texts: Vec::new(),
            });
            sets.add_prompts(ri, rec, &edit_prompt);
            if extra[ri] || cfg.prefixed_scope == PrefixedScope::All {
                sets.add_prefixed(ri, rec, &edit_prompt, prefixed, cfg.prefixed_neighbourhood);
            }
            if extra[ri] {
                sets.add_robustness(ri, rec, &edit_prompt, prefixes, &cfg.robustness_lens);
                if cfg.fluency_tokens > 0 {
                    sets.add_fluency(ri, rec, cfg.fluency_prompts);
                }
            }
        }
        sets
    }

    /// The record's unprefixed prompts: the edit prompt, paraphrases, neighbourhood and
    /// locality prompts.
    fn add_prompts(&mut self, ri: usize, rec: &EvalRecord, edit_prompt: &str) {
        let rw = &rec.rewrite;
        let new = Some(rw.target_new.as_str());
        let truth = rw.target_true.as_deref();
        self.add_prompt(ri, PromptKind::Rewrite, edit_prompt.to_string(), new, truth);
        for p in &rec.paraphrase_prompts {
            self.add_prompt(ri, PromptKind::Paraphrase, p.clone(), new, truth);
        }
        for (kind, prompt, expected) in unrelated_prompts(rec) {
            // A neighbourhood prompt competes with the new object; a locality question does not.
            let competitor = new.filter(|_| kind == PromptKind::Neighbourhood);
            self.add_prompt(ri, kind, prompt, Some(expected), competitor);
        }
    }

    /// One unprefixed prompt: scored against `expected` and `competitor` (when given), and
    /// continued greedily.
    fn add_prompt(
        &mut self,
        ri: usize,
        kind: PromptKind,
        prompt: String,
        expected: Option<&str>,
        competitor: Option<&str>,
    ) {
        let pi = self.outcomes[ri].prompts.len();
        if let Some(t) = expected {
            self.add_request(ri, Slot::Expected(pi), prompt.clone(), t.to_string());
        }
        if let Some(t) = competitor {
            self.add_request(ri, Slot::Competitor(pi), prompt.clone(), t.to_string());
        }
        self.gen_prompts.push(prompt.clone());
        self.gen_owner.push((ri, pi));
        self.outcomes[ri]
            .prompts
            .push(prompt_result(kind, prompt, String::new(), None));
    }

    /// The prefixed edit prompts and, when asked, the prefixed neighbourhood prompts.
    fn add_prefixed(
        &mut self,
        ri: usize,
        rec: &EvalRecord,
        edit_prompt: &str,
        prefixed: &[String],
        neighbourhood: bool,
    ) {
        for pre_text in prefixed {
            let prompt = format!("{pre_text}{edit_prompt}");
            self.add_request(ri, Slot::Prefixed, prompt, rec.rewrite.target_new.clone());
            if neighbourhood {
                for n in &rec.neighborhood {
                    let prompt = format!("{pre_text}{}", n.prompt);
                    self.add_request(ri, Slot::NeighPrefixed, prompt, n.target.clone());
                }
            }
        }
    }

    /// The robustness prompts: the edit prompt after every prefix of each length in `lens`.
    fn add_robustness(
        &mut self,
        ri: usize,
        rec: &EvalRecord,
        edit_prompt: &str,
        prefixes: &ContextPrefixes,
        lens: &[usize],
    ) {
        for (li, &n) in lens.iter().enumerate() {
            for pre_text in prefixes.of_len(n).unwrap_or(&[]) {
                let prompt = format!("{pre_text}{edit_prompt}");
                self.add_request(ri, Slot::Robust(li), prompt, rec.rewrite.target_new.clone());
            }
        }
    }

    /// The record's first `count` generation prompts, for fluency.
    fn add_fluency(&mut self, ri: usize, rec: &EvalRecord, count: usize) {
        for g in rec.generation_prompts.iter().take(count) {
            self.fluency_prompts.push(g.clone());
            self.fluency_owner.push(ri);
        }
    }

    /// One teacher-forced request.
    fn add_request(&mut self, ri: usize, slot: Slot, prompt: String, target: String) {
        self.requests.push(ScoreRequest { prompt, target });
        self.owners.push((ri, slot));
    }

    /// Hands the scores and generations (in the order of the requests and prompts) to the
    /// records they belong to.
    fn distribute(
        self,
        scores: Vec<TargetScore>,
        gens: Vec<Continuation>,
        fluency_gens: Vec<Continuation>,
    ) -> Vec<RecordOutcome> {
        let mut outcomes = self.outcomes;
        for ((ri, slot), s) in self.owners.into_iter().zip(scores) {
            let o = &mut outcomes[ri];
            match slot {
                Slot::Expected(pi) => o.prompts[pi].expected = Some(s),
                Slot::Competitor(pi) => o.prompts[pi].competitor = Some(s),
                Slot::Prefixed => o.prefixed_hits.push(s.exact),
                Slot::NeighPrefixed => o.neigh_prefixed_hits.push(s.exact),
                Slot::Robust(li) => o.robust_hits[li].push(s.exact),
            }
        }
        for ((ri, pi), g) in self.gen_owner.into_iter().zip(gens) {
            let p = &mut outcomes[ri].prompts[pi];
            p.generation = g.text;
            p.generation_ids = Some(g.ids);
        }
        let fluency = self.fluency_owner.into_iter().zip(fluency_gens);
        for ((ri, g), prompt) in fluency.zip(self.fluency_prompts) {
            let o = &mut outcomes[ri];
            o.fluency_texts.push(g.text.clone());
            let kind = PromptKind::Generation;
            o.prompts
                .push(prompt_result(kind, prompt, g.text, Some(g.ids)));
        }
        outcomes
    }
}

/// A prompt's result before scoring: its kind, text and (for fluency prompts) generation.
fn prompt_result(
    kind: PromptKind,
    prompt: String,
    generation: String,
    generation_ids: Option<Vec<u32>>,
) -> PromptResult {
    PromptResult {
        kind,
        prompt,
        generation,
        generation_ids,
        expected: None,
        competitor: None,
        kl: None,
        drawdown: None,
    }
}

/// A progress bar of `n` steps labelled `what` (hidden unless `cfg.progress`).
fn progress_bar(cfg: &EvalConfig, n: usize, what: &str) -> indicatif::ProgressBar {
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
}

/// The teacher-forced scores of every request (classic and strict metrics).
fn score_requests<M: EditableLm + ?Sized>(
    model: &M,
    requests: &[ScoreRequest],
    cfg: &EvalConfig,
) -> Result<Vec<TargetScore>> {
    let b = progress_bar(cfg, requests.len(), "scored prompts");
    let scores = teacher_forced_with(model, requests, cfg.batch_size, &b)?;
    b.finish_and_clear();
    Ok(scores)
}

/// Greedy continuations of `lenient_tokens` tokens (lenient metrics, raw generations).
fn lenient_generations<M: EditableLm + ?Sized>(
    model: &M,
    prompts: &[String],
    cfg: &EvalConfig,
) -> Result<Vec<Continuation>> {
    let b = progress_bar(cfg, prompts.len(), "continuations");
    let gens = greedy_with(model, prompts, cfg.lenient_tokens, cfg.batch_size, &b)?;
    b.finish_and_clear();
    Ok(gens)
}

/// Greedy continuations of `fluency_tokens` tokens of the generation prompts (none, and no
/// progress bar, when there are no prompts).
fn fluency_generations<M: EditableLm + ?Sized>(
    model: &M,
    prompts: &[String],
    cfg: &EvalConfig,
) -> Result<Vec<Continuation>> {
    if prompts.is_empty() {
        return Ok(Vec::new());
    }
    let b = progress_bar(cfg, prompts.len(), "fluency texts");
    let gens = greedy_with(model, prompts, cfg.fluency_tokens, cfg.batch_size, &b)?;
    b.finish_and_clear();
    Ok(gens)
}

/// One record's metrics from its outcome; `pre` holds its prompts on the unedited model.
fn record_eval(
    rec: &EvalRecord,
    outcome: RecordOutcome,
    cfg: &EvalConfig,
    pre: Option<&[PromptResult]>,
) -> RecordEval {
    let prompts = &outcome.prompts;
    let mut m = BTreeMap::new();
    strict_metrics(&mut m, &outcome, cfg);
    classic_metrics(&mut m, prompts);
    lenient_metrics(&mut m, rec, prompts, cfg);
    if let Some(pre) = pre {
        let before = of_kind(pre, PromptKind::Neighbourhood);
        let same = of_kind(prompts, PromptKind::Neighbourhood)
            .zip(before)
            .map(|(a, b)| a.generation == b.generation);
        put(&mut m, "neighbourhood.unchanged", frac(same));
    }
    let edit = of_kind(prompts, PromptKind::Rewrite).next();
    let nll = edit
        .and_then(|p| p.expected.as_ref())
        .map(TargetScore::mean_nll);
    put(&mut m, "nll.new", nll);
    let texts = outcome.fluency_texts.iter();
    put(&mut m, "fluency", mean(texts.map(|t| fluency(t))));
    RecordEval {
        case_id: rec.rewrite.case_id.clone(),
        subject: rec.rewrite.subject.clone(),
        metrics: m,
        prompts: outcome.prompts,
    }
}

/// Sets metric `k` when it has a value.
fn put(m: &mut BTreeMap<String, f64>, k: &str, v: Option<f64>) {
    if let Some(v) = v {
        m.insert(k.to_string(), v);
    }
}

/// The prompts of one kind.
fn of_kind(prompts: &[PromptResult], kind: PromptKind) -> impl Iterator<Item = &PromptResult> {
    prompts.iter().filter(move |p| p.kind == kind)
}

/// The strict metrics: exactness of the unprefixed, prefixed and robustness prompts, and the
/// locality token accuracy.
fn strict_metrics(m: &mut BTreeMap<String, f64>, outcome: &RecordOutcome, cfg: &EvalConfig) {
    let prompts = &outcome.prompts;
    let strict = |kind| {
        frac(
            of_kind(prompts, kind)
                .filter_map(|p| p.expected.as_ref())
                .map(|s| s.exact),
        )
    };
    put(m, "strict.efficacy", strict(PromptKind::Rewrite));
    put(m, "strict.generalization", strict(PromptKind::Paraphrase));
    put(m, "strict.specificity", strict(PromptKind::Neighbourhood));
    put(m, "strict.locality", strict(PromptKind::Locality));
    let token_accuracy = of_kind(prompts, PromptKind::Locality)
        .filter_map(|p| p.expected.as_ref())
        .map(|s| s.argmax_hits as f64 / s.token_logprobs.len().max(1) as f64);
    put(m, "locality.token_accuracy", mean(token_accuracy));
    let prefixed = frac(outcome.prefixed_hits.iter().copied());
    put(m, "strict.efficacy_prefixed", prefixed);
    let neigh_prefixed = frac(outcome.neigh_prefixed_hits.iter().copied());
    put(m, "strict.specificity_prefixed", neigh_prefixed);
    for (li, &n) in cfg.robustness_lens.iter().enumerate() {
        let hits = frac(outcome.robust_hits[li].iter().copied());
        put(m, &robustness_metric(n), hits);
    }
}

/// The classic metrics. Expected wins iff its mean token NLL is lower (new ≤ true for rewrite
/// and paraphrase, ties to the edit as the reference does; true < new for neighbourhood).
fn classic_metrics(m: &mut BTreeMap<String, f64>, prompts: &[PromptResult]) {
    use PromptKind::{Neighbourhood, Paraphrase, Rewrite};
    let pairs = |kind| {
        of_kind(prompts, kind).filter_map(|p| match (&p.expected, &p.competitor) {
            (Some(e), Some(c)) => Some((e, c)),
            _ => None,
        })
    };
    let new_wins = |(e, c): (&TargetScore, &TargetScore)| e.mean_nll() <= c.mean_nll();
    let true_wins = |(e, c): (&TargetScore, &TargetScore)| e.mean_nll() < c.mean_nll();
    let magnitude = |kind| mean(pairs(kind).map(|(e, c)| e.prob() - c.prob()));
    put(m, "classic.efficacy", frac(pairs(Rewrite).map(new_wins)));
    put(
        m,
        "classic.generalization",
        frac(pairs(Paraphrase).map(new_wins)),
    );
    put(
        m,
        "classic.specificity",
        frac(pairs(Neighbourhood).map(true_wins)),
    );
    put(m, "classic.efficacy_magnitude", magnitude(Rewrite));
    put(m, "classic.generalization_magnitude", magnitude(Paraphrase));
    put(m, "classic.specificity_magnitude", magnitude(Neighbourhood));
}

/// The lenient metrics: the greedy continuation contains the expected object at a word
/// boundary.
fn lenient_metrics(
    m: &mut BTreeMap<String, f64>,
    rec: &EvalRecord,
    prompts: &[PromptResult],
    cfg: &EvalConfig,
) {
    let wm = WordMatch {
        case_sensitive: !cfg.lenient_case_insensitive,
    };
    let lenient = |kind: PromptKind, target: &dyn Fn(usize) -> String| {
        frac(
            of_kind(prompts, kind)
                .enumerate()
                .map(|(k, p)| contains_word_with(&p.generation, &target(k), wm)),
        )
    };
    let new = rec.rewrite.target_new.clone();
    put(
        m,
        "lenient.efficacy",
        lenient(PromptKind::Rewrite, &|_| new.clone()),
    );
    put(
        m,
        "lenient.generalization",
        lenient(PromptKind::Paraphrase, &|_| new.clone()),
    );
    put(
        m,
        "lenient.specificity",
        lenient(PromptKind::Neighbourhood, &|k| {
            rec.neighborhood[k].target.clone()
        }),
    );
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
