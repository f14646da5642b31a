//! Property test: any JSON lines file built from random valid facts (with comments and blank
//! lines between them) loads back to exactly those facts.

use eamet_eval::data::{load_str, EvalRecord, Format, LoadOptions, Probe, Rewrite};
use proptest::prelude::*;
use serde_json::json;

/// Text without `{` or `}` (any other character, including quotes, backslashes, newlines and
/// non-ASCII), possibly empty.
fn free_text() -> impl Strategy<Value = String> {
    proptest::collection::vec(
        prop_oneof![
            any::<char>().prop_filter("no braces", |c| *c != '{' && *c != '}'),
            Just(' '),
            Just('"'),
            Just('\n'),
            Just('é'),
        ],
        0..12,
    )
    .prop_map(|v| v.into_iter().collect())
}

/// Non-empty after trimming.
fn nonblank() -> impl Strategy<Value = String> {
    free_text().prop_filter("not blank", |s| !s.trim().is_empty())
}

/// A target as loaders store it: trimmed and non-empty.
fn target() -> impl Strategy<Value = String> {
    nonblank().prop_map(|s| s.trim().to_string())
}

#[derive(Debug, Clone)]
struct Fact {
    subject: String,
    prefix: String,
    suffix: String,
    target_new: String,
    target_true: Option<String>,
    case_id: Option<Result<u32, String>>,
    paraphrases: Vec<String>,
    neighbours: Vec<(String, String)>,
    /// Comment/blank lines written before this fact: 0 none, 1 blank, 2 `#`, 3 `//`.
    noise: u8,
}

fn fact() -> impl Strategy<Value = Fact> {
    (
        (nonblank(), free_text(), free_text(), target()),
        (
            proptest::option::of(target()),
            proptest::option::of(prop_oneof![
                any::<u32>().prop_map(Ok),
                free_text().prop_map(Err)
            ]),
        ),
        (
            proptest::collection::vec(nonblank(), 0..3),
            proptest::collection::vec((nonblank(), target()), 0..3),
            0u8..4,
        ),
    )
        .prop_map(
            |(
                (subject, prefix, suffix, target_new),
                (target_true, case_id),
                (paraphrases, neighbours, noise),
            )| Fact {
                subject,
                prefix,
                suffix,
                target_new,
                target_true,
                case_id,
                paraphrases,
                neighbours,
                noise,
            },
        )
}

fn to_line(f: &Fact) -> String {
    let mut obj = json!({
        "subject": f.subject,
        "prompt": format!("{}{{}}{}", f.prefix, f.suffix),
        "target_new": f.target_new,
    });
    let map = obj.as_object_mut().unwrap();
    if let Some(t) = &f.target_true {
        map.insert("target_true".into(), json!(t));
    }
    match &f.case_id {
        Some(Ok(n)) => {
            map.insert("case_id".into(), json!(n));
        }
        Some(Err(s)) => {
            map.insert("case_id".into(), json!(s));
        }
        None => {}
    }
    if !f.paraphrases.is_empty() {
        map.insert("paraphrases".into(), json!(f.paraphrases));
    }
    if !f.neighbours.is_empty() {
        let n: Vec<_> = f
            .neighbours
            .iter()
            .map(|(p, t)| json!({"prompt": p, "target": t}))
            .collect();
        map.insert("neighbourhood".into(), json!(n));
    }
    serde_json::to_string(&obj).unwrap()
}

fn expected(index: usize, f: &Fact) -> EvalRecord {
    EvalRecord {
        index,
        rewrite: Rewrite {
            subject: f.subject.clone(),
            prompt: format!("{}{{}}{}", f.prefix, f.suffix),
            target_new: f.target_new.clone(),
            target_true: f.target_true.clone(),
            case_id: f.case_id.as_ref().map(|c| match c {
                Ok(n) => n.to_string(),
                Err(s) => s.clone(),
            }),
            relation_id: None,
        },
        paraphrase_prompts: f.paraphrases.clone(),
        neighborhood: f
            .neighbours
            .iter()
            .map(|(p, t)| Probe {
                prompt: p.clone(),
                target: t.clone(),
            })
            .collect(),
        attribute: Vec::new(),
        generation_prompts: Vec::new(),
        locality: Vec::new(),
        zsre: None,
    }
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: 128,
        failure_persistence: None,
        ..ProptestConfig::default()
    })]

    #[test]
    fn jsonl_facts_round_trip(facts in proptest::collection::vec(fact(), 1..8), offset in 0usize..4, limit in proptest::option::of(0usize..6)) {
        let mut text = String::new();
        for f in &facts {
            match f.noise {
                1 => text.push('\n'),
                2 => text.push_str("# a comment {}\n"),
                3 => text.push_str("   // another\n"),
                _ => {}
            }
            text.push_str(&to_line(f));
            text.push('\n');
        }
        let all = load_str("prop.jsonl", &text, &LoadOptions::default()).unwrap();
        prop_assert_eq!(all.format, Format::Facts);
        prop_assert!(all.skipped.is_empty());
        let want: Vec<EvalRecord> = facts.iter().enumerate().map(|(i, f)| expected(i, f)).collect();
        prop_assert_eq!(all.dataset.edits().unwrap(), &want[..]);

        // The same facts as a JSON array, selected by offset/limit.
        let lines: Vec<String> = facts.iter().map(to_line).collect();
        let array = format!("[\n{}\n]", lines.join(",\n"));
        let opts = LoadOptions { offset, limit, ..LoadOptions::default() };
        let part = load_str("prop.json", &array, &opts).unwrap().into_edits().unwrap();
        let end = limit.map_or(want.len(), |l| (offset + l).min(want.len()));
        let expect: &[EvalRecord] = if offset < end { &want[offset..end] } else { &[] };
        prop_assert_eq!(&part[..], expect);
        // Serialising a loaded rewrite gives a facts line that loads back to it.
        for r in &want {
            let line = serde_json::to_string(&r.rewrite).unwrap();
            let back = load_str("x.jsonl", &line, &LoadOptions { format: Some(Format::Facts), ..LoadOptions::default() })
                .unwrap()
                .into_edits()
                .unwrap();
            prop_assert_eq!(&back[0].rewrite, &r.rewrite);
        }
    }
}
