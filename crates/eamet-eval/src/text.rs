//! Text statistics: n-gram entropy ("fluency") and word-boundary matching.
//!
//! # Fluency
//!
//! ROME, MEMIT and EAMET report the fluency of generated text as a weighted n-gram entropy
//! (`generation_ngram_entropy` / `n_gram_entropy` in the reference code). Per text:
//!
//! 1. tokenize into words with `nltk.word_tokenize` (here: [`word_tokenize`], an approximation,
//!    see below);
//! 2. for n = 2 and n = 3, take the frequency distribution of the text's n-grams and its
//!    entropy in bits, `H_n = -Σ p log2 p`;
//! 3. combine them as the arithmetic mean of the weighted entropies,
//!    `H = mean(⅔·H₂, ⁴⁄₃·H₃) = (⅔·H₂ + ⁴⁄₃·H₃) / 2`.
//!
//! The score over several texts (e.g. the generations for one fact's prompts) is the mean
//! over the texts ([`fluency_mean`]). Orders and weights are configurable with
//! [`FluencyConfig`], whose [`Default`] is the reference's.
//!
//! A text with fewer than `n` tokens has no n-gram: its `H_n` is `0.0`. This is also what the
//! reference computes: numpy's `freqs / freqs.sum()` on an empty array gives an empty array
//! (no division happens, so no NaN) and `np.sum` of it is `0.0`. Such texts still count in
//! the mean over texts, with their low score, as in the reference.
//!
//! # Tokenization
//!
//! [`word_tokenize`] approximates NLTK's `word_tokenize` (Punkt sentence splitting followed
//! by the improved Treebank word tokenizer) without any model or data file:
//!
//! - a word is a run of Unicode letters, digits, `_` and combining marks; an apostrophe
//!   (`'` or `’`) or a hyphen between two such characters stays inside the word
//!   (`O'Neill`, `well-known`), and so does a `.` between two of them (`3.14`, `U.S`) or a
//!   `,` or `:` between two digits (`1,000`, `12:30`);
//! - English clitics are split off the way the Treebank tokenizer does: `n't` (`don't` →
//!   `do n't`, `can't` → `ca n't`) and `'s 'm 'd 'll 're 've` (`it's` → `it 's`), matched
//!   case-insensitively;
//! - every other non-space character is a token of its own, except that a run of two or more
//!   `.` or of two or more `-` is one token (`...`, `--`).
//!
//! Known differences from NLTK (they change a text's n-gram counts only where they occur):
//!
//! - NLTK turns double quotes into distinct opening/closing tokens (`` `` `` and `''`); here
//!   every `"` is the token `"`.
//! - NLTK keeps the period of an abbreviation inside a sentence (`Mr.`, `e.g.`) and only
//!   splits the period that ends a sentence (as Punkt finds it); here a trailing `.` is always
//!   its own token (`Mr.` → `Mr .`) and an inner one always stays (`U.S.` → `U.S .`).
//! - NLTK's special cases (`cannot` → `can not`, `gonna` → `gon na`, ...), its handling of
//!   `&`-entities and of some bracket and currency combinations are not reproduced.
//! - NLTK splits `!!` into `! !` as here, but a few other multi-character punctuation tokens
//!   it keeps (e.g. `''`) are split here into single characters.
//!
//! # Word-boundary matching
//!
//! [`contains_word`] is the lenient "the greedy continuation contains the object" check,
//! requiring the object to stand at word boundaries (so `"Paris"` is not found in
//! `"Parisian"`).

use std::collections::HashMap;
use std::hash::Hash;

/// Returns whether `c` belongs to a word: a Unicode letter or digit, `_`, or a combining mark
/// (so that decomposed accents stay inside their word).
fn is_word_char(c: char) -> bool {
    c.is_alphanumeric() || c == '_' || is_combining_mark(c)
}

/// The main blocks of combining diacritical marks (general category Mn of the scripts that
/// matter for our datasets). A small table instead of a full Unicode database.
fn is_combining_mark(c: char) -> bool {
    matches!(
        c,
        '\u{0300}'..='\u{036F}'
            | '\u{1AB0}'..='\u{1AFF}'
            | '\u{1DC0}'..='\u{1DFF}'
            | '\u{20D0}'..='\u{20FF}'
            | '\u{FE20}'..='\u{FE2F}'
    )
}

fn is_apostrophe(c: char) -> bool {
    c == '\'' || c == '\u{2019}'
}

/// Splits a word that contains an apostrophe into stem and clitic, Treebank style.
/// Returns the byte offset where the clitic starts, if any.
fn clitic_split(word: &str) -> Option<usize> {
    // `n't`: the clitic starts at the `n` before the apostrophe.
    let chars: Vec<(usize, char)> = word.char_indices().collect();
    let len = chars.len();
    if len >= 4 {
        let (n_pos, n) = chars[len - 3];
        let (_, apo) = chars[len - 2];
        let (_, t) = chars[len - 1];
        if (n == 'n' || n == 'N') && is_apostrophe(apo) && (t == 't' || t == 'T') {
            return Some(n_pos);
        }
    }
    // 's 'm 'd (apostrophe second to last), 'll 're 've (apostrophe third to last).
    if len >= 3 {
        let (apo_pos, apo) = chars[len - 2];
        let last = chars[len - 1].1.to_ascii_lowercase();
        if is_apostrophe(apo) && matches!(last, 's' | 'm' | 'd') {
            return Some(apo_pos);
        }
    }
    if len >= 4 {
        let (apo_pos, apo) = chars[len - 3];
        let a = chars[len - 2].1.to_ascii_lowercase();
        let b = chars[len - 1].1.to_ascii_lowercase();
        if is_apostrophe(apo) && matches!((a, b), ('l', 'l') | ('r', 'e') | ('v', 'e')) {
            return Some(apo_pos);
        }
    }
    None
}

/// Tokenizes `text` into words and punctuation, approximating NLTK's `word_tokenize`.
///
/// Tokens are slices of `text`. See the [module documentation](self) for the rules and the
/// known differences from NLTK.
///
/// ```
/// use eamet_eval::text::word_tokenize;
/// assert_eq!(
///     word_tokenize("Paris isn't in the U.S., it's 3.5 km... well-known!"),
///     ["Paris", "is", "n't", "in", "the", "U.S", ".", ",", "it", "'s", "3.5", "km", "...",
///      "well-known", "!"]
/// );
/// ```
pub fn word_tokenize(text: &str) -> Vec<&str> {
    let chars: Vec<(usize, char)> = text.char_indices().collect();
    let end_of = |i: usize| chars.get(i).map_or(text.len(), |&(pos, _)| pos);
    let mut tokens = Vec::new();
    let mut i = 0;
    while i < chars.len() {
        let (start, c) = chars[i];
        if c.is_whitespace() {
            i += 1;
            continue;
        }
        if is_word_char(c) {
            let mut j = i + 1;
            while j < chars.len() {
                let cj = chars[j].1;
                if is_word_char(cj) {
                    j += 1;
                    continue;
                }
                let prev = chars[j - 1].1;
                let next = chars.get(j + 1).map(|&(_, n)| n);
                let joins = match next {
                    Some(next) if is_word_char(next) => {
                        is_apostrophe(cj)
                            || cj == '-'
                            || cj == '.'
                            || ((cj == ',' || cj == ':') && prev.is_numeric() && next.is_numeric())
                    }
                    _ => false,
                };
                if joins {
                    j += 2;
                } else {
                    break;
                }
            }
            let word = &text[start..end_of(j)];
            match clitic_split(word) {
                Some(at) if at > 0 => {
                    tokens.push(&word[..at]);
                    tokens.push(&word[at..]);
                }
                _ => tokens.push(word),
            }
            i = j;
        } else {
            let mut j = i + 1;
            if c == '.' || c == '-' {
                while j < chars.len() && chars[j].1 == c {
                    j += 1;
                }
            }
            tokens.push(&text[start..end_of(j)]);
            i = j;
        }
    }
    tokens
}

/// Entropy in bits of the frequency distribution of the `n`-grams of `tokens`.
///
/// Tokens may be of any type that can be compared and hashed (so the entropy of a relabelled
/// sequence can be checked to be the same). Fewer than `n` tokens, or `n == 0`, give `0.0`.
/// The result lies in `[0, log2(number of n-grams)]`, up to rounding.
pub fn token_ngram_entropy<T: Eq + Hash>(tokens: &[T], n: usize) -> f64 {
    if n == 0 || tokens.len() < n {
        return 0.0;
    }
    let mut counts: HashMap<&[T], u64> = HashMap::new();
    for gram in tokens.windows(n) {
        *counts.entry(gram).or_insert(0) += 1;
    }
    // Sum in a fixed order so that the result does not depend on the hash map's order.
    let mut freqs: Vec<u64> = counts.into_values().collect();
    freqs.sort_unstable();
    let total = (tokens.len() - n + 1) as f64;
    let entropy: f64 = freqs
        .iter()
        .map(|&c| {
            let p = c as f64 / total;
            -p * p.log2()
        })
        .sum();
    // A single distinct n-gram gives -1·log2(1) = -0.0; rounding never makes it negative
    // otherwise, but clamp for a clean `>= 0.0`.
    entropy.max(0.0)
}

/// Entropy in bits of the `n`-gram distribution of `text`, tokenized with [`word_tokenize`].
///
/// A text with fewer than `n` tokens, or `n == 0`, gives `0.0` (see the
/// [module documentation](self)).
///
/// ```
/// use eamet_eval::text::ngram_entropy;
/// // bigrams {(a,b): 2, (b,a): 1}: H = log2(3) - 2/3 = 0.9183 bits
/// assert!((ngram_entropy("a b a b", 2) - 0.918_295_834).abs() < 1e-9);
/// assert_eq!(ngram_entropy("a", 2), 0.0);
/// ```
pub fn ngram_entropy(text: &str, n: usize) -> f64 {
    token_ngram_entropy(&word_tokenize(text), n)
}

/// How [`FluencyConfig::fluency`] combines n-gram entropies: each term is an n-gram order and
/// its weight; the score is the arithmetic mean of `weight · H_n` over the terms.
///
/// The [`Default`] is the reference's: `n = 2, 3` with weights `⅔, ⁴⁄₃`.
#[derive(Debug, Clone, PartialEq)]
pub struct FluencyConfig {
    /// `(n, weight)` pairs. An empty list gives a score of `0.0`; `n = 0` contributes `0.0`.
    /// Weights are used as given (a NaN weight gives NaN scores).
    pub terms: Vec<(usize, f64)>,
}

impl Default for FluencyConfig {
    fn default() -> Self {
        Self {
            terms: vec![(2, 2.0 / 3.0), (3, 4.0 / 3.0)],
        }
    }
}

impl FluencyConfig {
    /// Fluency of one text: mean over the terms of `weight · H_n(text)`.
    pub fn fluency(&self, text: &str) -> f64 {
        if self.terms.is_empty() {
            return 0.0;
        }
        let tokens = word_tokenize(text);
        let sum: f64 = self
            .terms
            .iter()
            .map(|&(n, weight)| weight * token_ngram_entropy(&tokens, n))
            .sum();
        sum / self.terms.len() as f64
    }

    /// Mean of [`fluency`](Self::fluency) over `texts`; `None` when there is no text.
    pub fn fluency_mean<I, S>(&self, texts: I) -> Option<f64>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<str>,
    {
        let mut sum = 0.0;
        let mut count = 0usize;
        for text in texts {
            sum += self.fluency(text.as_ref());
            count += 1;
        }
        (count > 0).then(|| sum / count as f64)
    }
}

/// Fluency of one text with the reference weights: `(⅔·H₂ + ⁴⁄₃·H₃) / 2`.
///
/// ```
/// use eamet_eval::text::fluency;
/// // a repeated word has a single bigram and a single trigram: no entropy at all
/// assert_eq!(fluency("the the the the the"), 0.0);
/// assert!(fluency("The Eiffel Tower is located in Paris, France.") > 2.0);
/// ```
pub fn fluency(text: &str) -> f64 {
    FluencyConfig::default().fluency(text)
}

/// Mean fluency over `texts` with the reference weights; `None` when there is no text.
pub fn fluency_mean<I, S>(texts: I) -> Option<f64>
where
    I: IntoIterator<Item = S>,
    S: AsRef<str>,
{
    FluencyConfig::default().fluency_mean(texts)
}

/// Options of [`contains_word_with`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WordMatch {
    /// Compare case-sensitively (the default). When `false`, both strings are compared after
    /// Unicode lowercasing (`str::to_lowercase`; not full case folding, so `ß` does not match
    /// `SS`).
    pub case_sensitive: bool,
}

impl Default for WordMatch {
    fn default() -> Self {
        Self {
            case_sensitive: true,
        }
    }
}

/// Whether `needle`, trimmed, occurs in `haystack` at word boundaries, case-sensitively.
///
/// A boundary is the start or end of `haystack`, or a character that is not alphanumeric
/// (Unicode) next to the occurrence; this is required on both sides, whatever the needle's own
/// first and last characters are. An empty (or all-space) needle never matches.
///
/// ```
/// use eamet_eval::text::contains_word;
/// assert!(contains_word("He was born in Paris, France.", " Paris "));
/// assert!(!contains_word("a Parisian cafe", "Paris"));
/// assert!(!contains_word("born in paris", "Paris"));
/// assert!(!contains_word("anything", ""));
/// ```
pub fn contains_word(haystack: &str, needle: &str) -> bool {
    contains_word_with(haystack, needle, WordMatch::default())
}

/// [`contains_word`] with options (case-insensitive matching).
///
/// ```
/// use eamet_eval::text::{contains_word_with, WordMatch};
/// let ci = WordMatch { case_sensitive: false };
/// assert!(contains_word_with("born in PARIS.", "paris", ci));
/// assert!(contains_word_with("in MÜNCHEN", "München", ci));
/// ```
pub fn contains_word_with(haystack: &str, needle: &str, options: WordMatch) -> bool {
    let needle = needle.trim();
    if needle.is_empty() {
        return false;
    }
    if options.case_sensitive {
        contains_at_boundary(haystack, needle)
    } else {
        contains_at_boundary(&haystack.to_lowercase(), &needle.to_lowercase())
    }
}

fn contains_at_boundary(haystack: &str, needle: &str) -> bool {
    let mut from = 0;
    // Every occurrence, overlapping ones included: a rejected occurrence must not hide a
    // later one that starts inside it.
    while let Some(offset) = haystack[from..].find(needle) {
        let start = from + offset;
        let end = start + needle.len();
        let before_ok = haystack[..start]
            .chars()
            .next_back()
            .is_none_or(|c| !c.is_alphanumeric());
        let after_ok = haystack[end..]
            .chars()
            .next()
            .is_none_or(|c| !c.is_alphanumeric());
        if before_ok && after_ok {
            return true;
        }
        // Move past the first character of this occurrence.
        let step = haystack[start..].chars().next().map_or(1, char::len_utf8);
        from = start + step;
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clitics() {
        assert_eq!(word_tokenize("don't"), ["do", "n't"]);
        assert_eq!(word_tokenize("I'M"), ["I", "'M"]);
        assert_eq!(word_tokenize("they’ll"), ["they", "’ll"]);
        assert_eq!(word_tokenize("O'Neill"), ["O'Neill"]);
        // a trailing apostrophe is punctuation
        assert_eq!(word_tokenize("students'"), ["students", "'"]);
    }
}
