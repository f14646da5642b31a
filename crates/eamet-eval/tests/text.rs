//! Tests of `eamet_eval::text`: tokenizer, n-gram entropy, fluency, word-boundary matching.

use approx::assert_abs_diff_eq;
use eamet_eval::text::{
    contains_word, contains_word_with, fluency, fluency_mean, ngram_entropy, token_ngram_entropy,
    word_tokenize, FluencyConfig, WordMatch,
};
use proptest::prelude::*;

const EPS: f64 = 1e-12;

// ---------------------------------------------------------------------------------------
// tokenizer

#[test]
fn tokenize_like_nltk() {
    // Outputs of NLTK's NLTKWordTokenizer on the same sentences, where we agree.
    assert_eq!(
        word_tokenize("Paris isn't in France, it's 3.5 km... well-known!"),
        [
            "Paris",
            "is",
            "n't",
            "in",
            "France",
            ",",
            "it",
            "'s",
            "3.5",
            "km",
            "...",
            "well-known",
            "!"
        ]
    );
    assert_eq!(
        word_tokenize("at 12:30 on 1,000 days."),
        ["at", "12:30", "on", "1,000", "days", "."]
    );
    assert_eq!(
        word_tokenize(
            "The students' books cost $5 (or 10%). Don't! Won't; I'm O'Neill -- rock'n'roll!!"
        ),
        [
            "The",
            "students",
            "'",
            "books",
            "cost",
            "$",
            "5",
            "(",
            "or",
            "10",
            "%",
            ")",
            ".",
            "Do",
            "n't",
            "!",
            "Wo",
            "n't",
            ";",
            "I",
            "'m",
            "O'Neill",
            "--",
            "rock'n'roll",
            "!",
            "!"
        ]
    );
}

#[test]
fn tokenize_documented_differences() {
    // NLTK: `` hello '' and Mr. / U.S. kept whole inside a sentence.
    assert_eq!(word_tokenize("\"hello\""), ["\"", "hello", "\""]);
    assert_eq!(word_tokenize("Mr. Smith"), ["Mr", ".", "Smith"]);
    assert_eq!(word_tokenize("the U.S. army"), ["the", "U.S", ".", "army"]);
}

#[test]
fn tokenize_unicode_and_edges() {
    assert!(word_tokenize("").is_empty());
    assert!(word_tokenize(" \t\n ").is_empty());
    assert_eq!(word_tokenize("Zürich’s café"), ["Zürich", "’s", "café"]);
    // decomposed accent stays in its word
    assert_eq!(word_tokenize("cafe\u{301} noir"), ["cafe\u{301}", "noir"]);
    assert_eq!(word_tokenize("東京 is big"), ["東京", "is", "big"]);
    assert_eq!(word_tokenize("snake_case x"), ["snake_case", "x"]);
    // hyphen or apostrophe not between word characters is punctuation
    assert_eq!(word_tokenize("-x- 'y'"), ["-", "x", "-", "'", "y", "'"]);
    assert_eq!(word_tokenize("a,b 1,b"), ["a", ",", "b", "1", ",", "b"]);
    // clitic alone or at the start is not split off an empty stem
    assert_eq!(word_tokenize("n't"), ["n't"]);
}

// ---------------------------------------------------------------------------------------
// entropy and fluency: values computed by hand

#[test]
fn entropy_known_values() {
    // bigrams {ab: 2, ba: 1}: -(2/3 log2 2/3 + 1/3 log2 1/3) = log2 3 - 2/3
    let h2 = 3f64.log2() - 2.0 / 3.0;
    assert_abs_diff_eq!(ngram_entropy("a b a b", 2), h2, epsilon = EPS);
    assert_abs_diff_eq!(h2, 0.918_295_834_054_489_6, epsilon = EPS);
    // trigrams {aba, bab}: 1 bit
    assert_abs_diff_eq!(ngram_entropy("a b a b", 3), 1.0, epsilon = EPS);
    // unigrams {a: 2, b: 2}
    assert_abs_diff_eq!(ngram_entropy("a b a b", 1), 1.0, epsilon = EPS);
    // all distinct n-grams: log2(count)
    let text = "the cat sat on the mat";
    assert_abs_diff_eq!(ngram_entropy(text, 2), 5f64.log2(), epsilon = EPS);
    assert_abs_diff_eq!(ngram_entropy(text, 3), 2.0, epsilon = EPS);
    // punctuation is a token: "a , a ," has bigrams {a,: 2, ,a: 1}
    assert_abs_diff_eq!(ngram_entropy("a, a,", 2), h2, epsilon = EPS);
}

#[test]
fn entropy_short_texts_are_zero() {
    assert_eq!(ngram_entropy("", 2), 0.0);
    assert_eq!(ngram_entropy("word", 2), 0.0);
    assert_eq!(ngram_entropy("two words", 3), 0.0);
    // a single n-gram: zero entropy, and not -0.0
    let h = ngram_entropy("two words", 2);
    assert_eq!(h, 0.0);
    assert!(h.is_sign_positive());
    assert_eq!(ngram_entropy("a b c", 0), 0.0);
    assert_eq!(token_ngram_entropy::<u8>(&[], 1), 0.0);
}

#[test]
fn fluency_known_values() {
    // (2/3 · (log2 3 - 2/3) + 4/3 · 1) / 2
    let expected = (2.0 / 3.0 * (3f64.log2() - 2.0 / 3.0) + 4.0 / 3.0) / 2.0;
    assert_abs_diff_eq!(fluency("a b a b"), expected, epsilon = EPS);
    assert_abs_diff_eq!(expected, 0.972_765_278_018_163, epsilon = 1e-12);
    let expected = (2.0 / 3.0 * 5f64.log2() + 4.0 / 3.0 * 2.0) / 2.0;
    assert_abs_diff_eq!(fluency("the cat sat on the mat"), expected, epsilon = EPS);
    assert_eq!(fluency(""), 0.0);
    assert_eq!(fluency("word word word word"), 0.0);
}

#[test]
fn fluency_mean_over_texts() {
    assert_eq!(fluency_mean(Vec::<String>::new()), None);
    assert_eq!(fluency_mean([""]), Some(0.0));
    let a = fluency("a b a b");
    let b = fluency("the cat sat on the mat");
    assert_abs_diff_eq!(
        fluency_mean(["a b a b", "the cat sat on the mat"]).unwrap(),
        (a + b) / 2.0,
        epsilon = EPS
    );
    // an empty generation counts, with 0
    assert_abs_diff_eq!(
        fluency_mean(vec!["a b a b".to_string(), String::new()]).unwrap(),
        a / 2.0,
        epsilon = EPS
    );
}

#[test]
fn fluency_config() {
    let config = FluencyConfig::default();
    assert_eq!(config.terms, vec![(2, 2.0 / 3.0), (3, 4.0 / 3.0)]);
    let unigram = FluencyConfig {
        terms: vec![(1, 1.0)],
    };
    assert_abs_diff_eq!(unigram.fluency("a b a b"), 1.0, epsilon = EPS);
    let two = FluencyConfig {
        terms: vec![(1, 1.0), (2, 3.0)],
    };
    let expected = (1.0 + 3.0 * (3f64.log2() - 2.0 / 3.0)) / 2.0;
    assert_abs_diff_eq!(two.fluency("a b a b"), expected, epsilon = EPS);
    let none = FluencyConfig { terms: vec![] };
    assert_eq!(none.fluency("a b c"), 0.0);
    assert_eq!(none.fluency_mean(["a b c"]), Some(0.0));
}

// ---------------------------------------------------------------------------------------
// word-boundary matching

#[test]
fn contains_word_boundaries() {
    assert!(contains_word("Paris", "Paris"));
    assert!(contains_word("He lives in Paris.", "Paris"));
    assert!(contains_word("(Paris)", "Paris"));
    assert!(contains_word("Paris-based", "Paris"));
    assert!(contains_word("in New York City", "New York"));
    assert!(!contains_word("Parisian", "Paris"));
    assert!(!contains_word("SParis", "Paris"));
    assert!(!contains_word("Paris2", "Paris"));
    // trimmed needle
    assert!(contains_word("in Rome now", "  Rome\n"));
    // empty needle
    assert!(!contains_word("anything", ""));
    assert!(!contains_word("anything", "   "));
    assert!(!contains_word("", "x"));
    // a rejected occurrence does not hide a later one, even an overlapping one
    assert!(contains_word("Romeo Rome", "Rome"));
    assert!(contains_word("aa a", "a"));
    assert!(contains_word("aa a a", "a a"));
    assert!(!contains_word("aa aa", "a a"));
    // Unicode letters and digits are word characters
    assert!(!contains_word("Münchener", "München"));
    assert!(contains_word("in München!", "München"));
    assert!(!contains_word("東京都", "東京"));
    assert!(!contains_word("x٣", "x"));
    // the needle's own punctuation is not a boundary by itself
    assert!(contains_word("I code C++ daily", "C++"));
    assert!(!contains_word("aC++", "C++"));
}

#[test]
fn contains_word_case() {
    assert!(!contains_word("paris", "Paris"));
    let ci = WordMatch {
        case_sensitive: false,
    };
    assert!(contains_word_with("born in PARIS.", "Paris", ci));
    assert!(contains_word_with("ÉCOLE", "école", ci));
    assert!(!contains_word_with("PARISIAN", "paris", ci));
    assert!(!contains_word_with("x", " ", ci));
    assert_eq!(
        WordMatch::default(),
        WordMatch {
            case_sensitive: true
        }
    );
}

// ---------------------------------------------------------------------------------------
// properties

fn word() -> impl Strategy<Value = String> {
    prop::sample::select(vec![
        "the", "cat", "sat", "on", "mat", "Paris", "is", "a", "city", "of", "France", ",", ".",
    ])
    .prop_map(str::to_owned)
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn entropy_bounds(tokens in prop::collection::vec(0u8..6, 0..60), n in 1usize..5) {
        let h = token_ngram_entropy(&tokens, n);
        prop_assert!(h >= 0.0);
        if tokens.len() >= n {
            let count = (tokens.len() - n + 1) as f64;
            prop_assert!(h <= count.log2() + 1e-9, "h = {h}, count = {count}");
        } else {
            prop_assert_eq!(h, 0.0);
        }
    }

    #[test]
    fn entropy_invariant_under_relabelling(
        tokens in prop::collection::vec(0u8..8, 0..60),
        perm in Just((0u8..8).collect::<Vec<u8>>()).prop_shuffle(),
        n in 1usize..4,
    ) {
        let relabelled: Vec<u8> = tokens.iter().map(|&t| perm[t as usize]).collect();
        prop_assert_eq!(token_ngram_entropy(&tokens, n), token_ngram_entropy(&relabelled, n));
    }

    #[test]
    fn text_entropy_invariant_under_word_relabelling(
        idx in prop::collection::vec(0usize..5, 0..40),
        perm in Just((0usize..5).collect::<Vec<usize>>()).prop_shuffle(),
    ) {
        let words = ["alpha", "beta", "gamma", "delta", "epsilon"];
        let text: Vec<&str> = idx.iter().map(|&i| words[i]).collect();
        let other: Vec<&str> = idx.iter().map(|&i| words[perm[i]]).collect();
        let (text, other) = (text.join(" "), other.join(" "));
        for n in 1..4 {
            prop_assert_eq!(ngram_entropy(&text, n), ngram_entropy(&other, n));
        }
        prop_assert_eq!(fluency(&text), fluency(&other));
    }

    #[test]
    fn all_distinct_tokens_give_log2_count(len in 1usize..80, n in 1usize..4) {
        let tokens: Vec<usize> = (0..len).collect();
        let h = token_ngram_entropy(&tokens, n);
        if len >= n {
            let expected = ((len - n + 1) as f64).log2();
            prop_assert!((h - expected).abs() < 1e-9);
        }
    }

    #[test]
    fn tokens_cover_the_text(text in "\\PC{0,80}") {
        let tokens = word_tokenize(&text);
        let joined: String = tokens.concat();
        let expected: String = text.chars().filter(|c| !c.is_whitespace()).collect();
        prop_assert_eq!(joined, expected);
        for t in &tokens {
            prop_assert!(!t.is_empty());
            prop_assert!(!t.chars().any(char::is_whitespace));
        }
        let f = fluency(&text);
        prop_assert!(f.is_finite() && f >= 0.0);
    }

    #[test]
    fn inserted_word_is_found(
        before in prop::collection::vec(word(), 0..6),
        after in prop::collection::vec(word(), 0..6),
        needle in "[A-Za-z][A-Za-z ]{0,10}[A-Za-z]",
    ) {
        let haystack = format!("{} {} {}", before.join(" "), needle, after.join(" "));
        prop_assert!(contains_word(&haystack, &needle));
        let ci = WordMatch { case_sensitive: false };
        prop_assert!(contains_word_with(&haystack.to_uppercase(), &needle, ci));
    }

    #[test]
    fn match_implies_substring(haystack in "\\PC{0,40}", needle in "\\PC{0,6}") {
        if contains_word(&haystack, &needle) {
            prop_assert!(!needle.trim().is_empty());
            prop_assert!(haystack.contains(needle.trim()));
        }
        // never panics, whatever the case mapping does to lengths
        let _ = contains_word_with(&haystack, &needle, WordMatch { case_sensitive: false });
    }

    #[test]
    fn alphanumeric_words_match_whole_tokens_only(
        words in prop::collection::vec("[a-c0-1]{1,3}", 0..8),
        needle in "[a-c0-1]{1,3}",
    ) {
        // With only alphanumeric words and spaces, a boundary match is a whole-word match.
        let haystack = words.join(" ");
        let whole = words.contains(&needle);
        prop_assert_eq!(contains_word(&haystack, &needle), whole);
    }
}
