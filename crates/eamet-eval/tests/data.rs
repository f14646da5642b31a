//! Dataset loaders on small fixtures: exact field values, every malformed case, offset/limit,
//! skip_invalid and format detection.

use std::path::{Path, PathBuf};

use eamet_eval::data::{
    group_by_subject, load, load_str, DataError, Dataset, EvalRecord, Format, LoadOptions,
    Location, Probe, RecordKind, RecordProblem, Rewrite, ZsreTarget,
};

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name)
}

fn opts() -> LoadOptions {
    LoadOptions::default()
}

fn edits(name: &str, opts: &LoadOptions) -> Vec<EvalRecord> {
    load(fixture(name), opts).unwrap().into_edits().unwrap()
}

fn probe(prompt: &str, target: &str) -> Probe {
    Probe {
        prompt: prompt.into(),
        target: target.into(),
    }
}

fn strings(v: &[&str]) -> Vec<String> {
    v.iter().map(|s| s.to_string()).collect()
}

/// Loads `text` (named `name`) and returns the error.
fn err(name: &str, text: &str, opts: &LoadOptions) -> DataError {
    match load_str(name, text, opts) {
        Ok(l) => panic!("expected an error, loaded {} records", l.len()),
        Err(e) => e,
    }
}

fn with_format(format: Format) -> LoadOptions {
    LoadOptions {
        format: Some(format),
        ..LoadOptions::default()
    }
}

fn write_temp(dir: &tempfile::TempDir, name: &str, text: &str) -> PathBuf {
    let p = dir.path().join(name);
    std::fs::write(&p, text).unwrap();
    p
}

// ---------------------------------------------------------------------------------------------
// Fixtures: exact values

#[test]
fn counterfact_rome_fixture() {
    let loaded = load(fixture("counterfact_rome_3.json"), &opts()).unwrap();
    assert_eq!(loaded.format, Format::CounterFact);
    assert!(loaded.skipped.is_empty());
    let recs = loaded.into_edits().unwrap();
    assert_eq!(recs.len(), 3);

    let r = &recs[0];
    assert_eq!(r.index, 0);
    assert_eq!(
        r.rewrite,
        Rewrite {
            subject: "Danielle Darrieux".into(),
            prompt: "The mother tongue of {} is".into(),
            target_new: "English".into(),
            target_true: Some("French".into()),
            case_id: Some("0".into()),
            relation_id: Some("P103".into()),
        }
    );
    assert_eq!(r.case_id(), Some("0"));
    assert_eq!(
        r.rewrite.filled_prompt(),
        "The mother tongue of Danielle Darrieux is"
    );
    assert_eq!(
        r.paraphrase_prompts,
        strings(&[
            "Shayna does this and Yossel goes still and dies. Danielle Darrieux, a native",
            "An album was recorded for Capitol Nashville but never released. Danielle Darrieux spoke the language",
        ])
    );
    assert_eq!(
        r.neighborhood,
        vec![
            probe("The mother tongue of Léon Blum is", "French"),
            probe("The native language of Montesquieu is", "French"),
        ]
    );
    assert_eq!(
        r.attribute,
        vec![probe("J. R. R. Tolkien is a native speaker of", "English")]
    );
    assert_eq!(
        r.generation_prompts,
        strings(&[
            "Danielle Darrieux's mother tongue is",
            "Danielle Darrieux was born in"
        ])
    );
    assert!(r.locality.is_empty());
    assert!(r.zsre.is_none());

    let r = &recs[1];
    assert_eq!(r.rewrite.target_new, "Chevrolet");
    assert_eq!(
        r.neighborhood,
        vec![probe("Lexus IS, developed by", "Toyota")]
    );
    assert!(r.attribute.is_empty() && r.generation_prompts.is_empty());

    // A one-element requested_rewrite list, string case id, no prompt lists at all.
    let r = &recs[2];
    assert_eq!(r.index, 2);
    assert_eq!(r.case_id(), Some("cf-2"));
    assert_eq!(r.rewrite.subject, "Autonomous University of Madrid");
    assert_eq!(r.rewrite.prompt, "{}, which is located in");
    assert_eq!(r.rewrite.target_true.as_deref(), Some("Spain"));
    assert!(r.paraphrase_prompts.is_empty() && r.neighborhood.is_empty());
}

#[test]
fn easyedit_fixture() {
    let loaded = load(fixture("easyedit_2.json"), &opts()).unwrap();
    assert_eq!(loaded.format, Format::EasyEdit);
    let recs = loaded.into_edits().unwrap();
    assert_eq!(recs.len(), 2);
    let r = &recs[0];
    assert_eq!(
        r.rewrite,
        Rewrite {
            subject: "Toko Yasuda".into(),
            prompt: "{}, the".into(),
            target_new: "piano".into(),
            target_true: Some("guitar".into()),
            case_id: Some("2".into()),
            relation_id: None,
        }
    );
    assert_eq!(
        r.paraphrase_prompts,
        strings(&["Toko Yasuda is incredible at"])
    );
    assert_eq!(
        r.neighborhood,
        vec![probe("John Lennon performs on the", "guitar")]
    );
    assert!(r.attribute.is_empty() && r.generation_prompts.is_empty() && r.locality.is_empty());

    // Leading space of the target trimmed; a list locality_ground_truth gives its first item.
    let r = &recs[1];
    assert_eq!(r.rewrite.prompt, "{}, by");
    assert_eq!(r.rewrite.target_new, "Sega");
    assert_eq!(r.case_id(), Some("10"));
    assert_eq!(r.neighborhood, vec![probe("BBC Radio, by", "BBC")]);
}

#[test]
fn zsre_fixture_answers0_and_alt() {
    let loaded = load(fixture("zsre_2.json"), &opts()).unwrap();
    assert_eq!(loaded.format, Format::Zsre);
    let recs = loaded.into_edits().unwrap();
    let r = &recs[0];
    assert_eq!(
        r.rewrite,
        Rewrite {
            subject: "IAAF Combined Events Challenge".into(),
            prompt: "When was the inception of {}?".into(),
            target_new: "1998".into(),
            target_true: None,
            case_id: Some("0".into()),
            relation_id: None,
        }
    );
    assert_eq!(
        r.paraphrase_prompts,
        strings(&["When was the IAAF Combined Events Challenge launched?"])
    );
    assert_eq!(
        r.locality,
        vec![probe(
            "nq question: what is the name of the last episode of spongebob",
            "The String"
        )]
    );
    assert!(r.neighborhood.is_empty());
    let z = r.zsre.as_ref().unwrap();
    assert_eq!(z.answers, strings(&["1998"]));
    assert_eq!(z.alt.as_deref(), Some("2006"));
    assert_eq!(z.pred.as_deref(), Some("2011"));
    assert_eq!(
        z.cond.as_deref(),
        Some("2011 >> 2006 || When was the inception of IAAF Combined Events Challenge?")
    );
    let p = z.portability.as_ref().unwrap();
    assert_eq!(
        p.recalled_relation,
        "(IAAF Combined Events Challenge, event type, athletics)"
    );
    assert_eq!(p.new_answer, "Athletics");
    assert!(p.new_question.starts_with("What type of sports event"));

    let r = &recs[1];
    assert_eq!(r.rewrite.prompt, "Which company is {} a part of?");
    assert_eq!(r.rewrite.target_new, "Venturi");
    assert_eq!(r.case_id(), Some("1"));
    let z = r.zsre.as_ref().unwrap();
    assert_eq!(z.answers, strings(&["Venturi", "Venturi Automobiles"]));
    assert_eq!(z.alt.as_deref(), Some("Venturi Automotive Plant"));
    assert!(z.portability.is_none());

    let alt = LoadOptions {
        zsre_target: ZsreTarget::Alt,
        ..opts()
    };
    let recs = edits("zsre_2.json", &alt);
    assert_eq!(recs[0].rewrite.target_new, "2006");
    assert_eq!(recs[0].rewrite.target_true.as_deref(), Some("1998"));
    assert_eq!(recs[1].rewrite.target_new, "Venturi Automotive Plant");
    assert_eq!(recs[1].rewrite.target_true.as_deref(), Some("Venturi"));
}

#[test]
fn known_fixture() {
    let loaded = load(fixture("known_2.json"), &opts()).unwrap();
    assert_eq!(loaded.format, Format::Known);
    assert_eq!(loaded.dataset.kind(), RecordKind::Known);
    assert!(loaded.dataset.rewrites().is_empty());
    let known = loaded.dataset.known().unwrap();
    assert_eq!(known.len(), 2);
    let k = &known[0];
    assert_eq!(k.index, 0);
    assert_eq!(k.case_id.as_deref(), Some("0"));
    assert_eq!(k.subject, "Vinson Massif");
    assert_eq!(k.prompt, "{} is located in the continent");
    assert_eq!(k.target_true, "Antarctica");
    assert_eq!(
        k.tracing_prompt,
        "Vinson Massif is located in the continent of"
    );
    assert_eq!(
        k.prediction.as_deref(),
        Some(" of Antarctica. It is the largest of the three")
    );
    assert_eq!(k.relation_id.as_deref(), Some("P30"));
    assert_eq!(
        k.filled_prompt(),
        "Vinson Massif is located in the continent"
    );
    assert_eq!(known[1].target_true, "Apple");
    // Known facts are not edit records.
    let e = loaded.into_edits().unwrap_err();
    assert!(matches!(e, DataError::WrongKind { .. }), "{e}");
}

#[test]
fn mquake_fixture() {
    let loaded = load(fixture("mquake_1.json"), &opts()).unwrap();
    assert_eq!(loaded.format, Format::Mquake);
    let rewrites: Vec<Rewrite> = loaded.dataset.rewrites().into_iter().cloned().collect();
    let cases = loaded.dataset.mquake().unwrap();
    assert_eq!(cases.len(), 1);
    let c = &cases[0];
    assert_eq!(c.case_id.as_deref(), Some("7417"));
    assert_eq!(c.edits.len(), 4);
    assert_eq!(rewrites.len(), 4);
    assert_eq!(
        c.edits[0].rewrite,
        Rewrite {
            subject: "Hey Jude".into(),
            prompt: "{} was performed by".into(),
            target_new: "Madonna".into(),
            target_true: Some("The Beatles".into()),
            case_id: Some("7417/0".into()),
            relation_id: Some("P175".into()),
        }
    );
    assert_eq!(
        c.edits[0].question.as_deref(),
        Some("Who performed Hey Jude?")
    );
    assert_eq!(c.edits[3].rewrite.case_id.as_deref(), Some("7417/3"));
    assert_eq!(c.edits[3].rewrite.target_new, "Arabic");
    assert_eq!(rewrites[3], c.edits[3].rewrite);
    assert_eq!(c.questions.len(), 3);
    assert_eq!(c.answer, "English");
    assert_eq!(c.answer_alias, strings(&["en", "eng", "English language"]));
    assert_eq!(c.new_answer, "Arabic");
    assert_eq!(c.new_answer_alias.len(), 3);
    assert_eq!(c.single_hops.len(), 2);
    assert_eq!(c.single_hops[1].cloze, "The director of The Beatles is");
    assert_eq!(c.single_hops[1].answer, "Brian Epstein");
    assert_eq!(
        c.single_hops[1].answer_alias,
        strings(&["Brian Samuel Epstein"])
    );
    assert_eq!(c.new_single_hops.len(), 1);
    assert_eq!(c.new_single_hops[0].answer, "Madonna");
}

#[test]
fn facts_jsonl_fixture_with_comments() {
    let loaded = load(fixture("facts_comments.jsonl"), &opts()).unwrap();
    assert_eq!(loaded.format, Format::Facts);
    let recs = loaded.into_edits().unwrap();
    assert_eq!(recs.len(), 3);
    assert_eq!(
        recs[0].rewrite,
        Rewrite {
            subject: "Eiffel Tower".into(),
            prompt: "The {} is located in the city of".into(),
            target_new: "Rome".into(),
            target_true: Some("Paris".into()),
            case_id: Some("demo-01".into()),
            relation_id: None,
        }
    );
    assert!(recs[0].paraphrase_prompts.is_empty() && recs[0].neighborhood.is_empty());
    let r = &recs[1];
    assert_eq!(r.index, 1);
    assert_eq!(r.case_id(), Some("7"));
    assert_eq!(r.rewrite.target_new, "Italy");
    assert_eq!(r.rewrite.target_true, None);
    assert_eq!(r.rewrite.relation_id.as_deref(), Some("P17"));
    assert_eq!(r.paraphrase_prompts, strings(&["Mount Fuji stands in"]));
    assert_eq!(
        r.neighborhood,
        vec![probe("Mount Aso is located in the country of", "Japan")]
    );
    assert_eq!(r.generation_prompts, strings(&["Mount Fuji is famous for"]));
    assert_eq!(recs[2].case_id(), None);
    assert_eq!(recs[2].rewrite.filled_prompt(), "The capital of Japan is");
}

#[test]
fn demo_facts_stay_loadable() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../facts/demo.jsonl");
    let recs = load(&path, &opts()).unwrap().into_edits().unwrap();
    assert_eq!(recs.len(), 10);
    assert_eq!(recs[0].case_id(), Some("demo-01"));
    assert_eq!(recs[9].rewrite.target_new, "Berlin");
    assert_eq!(Format::detect(&path).unwrap(), Format::Facts);
}

#[test]
fn facts_as_json_array() {
    let text = r#"[{"subject": "Louvre", "prompt": "The {} is in", "target_new": "Madrid", "case_id": 3},
                   {"subject": "Kremlin", "prompt": "The {} is in", "target_new": "Cairo"}]"#;
    let l = load_str("facts.json", text, &opts()).unwrap();
    assert_eq!(l.format, Format::Facts);
    let recs = l.into_edits().unwrap();
    assert_eq!(recs.len(), 2);
    assert_eq!(recs[0].case_id(), Some("3"));
    assert_eq!(recs[1].rewrite.subject, "Kremlin");
}

#[test]
fn counterfact_records_as_json_lines() {
    let text = r#"{"case_id": 5, "requested_rewrite": {"prompt": "{} plays", "subject": "X", "target_new": {"str": "jazz"}, "target_true": {"str": "rock"}}}"#;
    let l = load_str("cf.jsonl", text, &opts()).unwrap();
    assert_eq!(l.format, Format::CounterFact);
    assert_eq!(l.dataset.edits().unwrap()[0].rewrite.target_new, "jazz");
}

// ---------------------------------------------------------------------------------------------
// Malformed input

#[test]
fn missing_field_names_path_record_and_field() {
    let text = r#"[
      {"case_id": 0, "requested_rewrite": {"prompt": "{} is", "subject": "A", "target_new": {"str": "x"}, "target_true": {"str": "y"}}},
      {"case_id": 1, "requested_rewrite": {"prompt": "{} is", "target_new": {"str": "x"}, "target_true": {"str": "y"}}}
    ]"#;
    let e = err("counterfact.json", text, &opts());
    assert_eq!(
        e.to_string(),
        "counterfact.json: record 1: field `requested_rewrite.subject`: missing"
    );
    assert_eq!(
        e.location(),
        Some(Location {
            index: 1,
            line: None
        })
    );
    assert_eq!(
        e.problem(),
        Some(&RecordProblem::Missing {
            field: "requested_rewrite.subject".into()
        })
    );
}

#[test]
fn missing_target_str_and_missing_target_true_with_neighbours() {
    let text = r#"[{"requested_rewrite": {"prompt": "{} is", "subject": "A", "target_new": {"id": "Q1"}}}]"#;
    let e = err("cf.json", text, &opts());
    assert_eq!(
        e.to_string(),
        "cf.json: record 0: field `requested_rewrite.target_new.str`: missing"
    );
    let text = r#"[{"requested_rewrite": {"prompt": "{} is", "subject": "A", "target_new": "B"}, "neighborhood_prompts": ["C is"]}]"#;
    let e = err("cf.json", text, &opts());
    assert_eq!(
        e.problem().and_then(RecordProblem::field),
        Some("requested_rewrite.target_true")
    );
    // Without neighbourhood prompts target_true may be absent.
    let text = r#"[{"requested_rewrite": {"prompt": "{} is", "subject": "A", "target_new": "B"}}]"#;
    let l = load_str("cf.json", text, &with_format(Format::CounterFact)).unwrap();
    assert_eq!(l.dataset.edits().unwrap()[0].rewrite.target_true, None);
}

#[test]
fn wrong_types() {
    let text = r#"[{"case_id": 0, "requested_rewrite": {"prompt": "{} is", "subject": 5, "target_new": {"str": "x"}, "target_true": {"str": "y"}}}]"#;
    let e = err("cf.json", text, &opts());
    assert_eq!(
        e.to_string(),
        "cf.json: record 0: field `requested_rewrite.subject`: expected a string, found a number"
    );
    let text = r#"[{"case_id": 0, "requested_rewrite": {"prompt": "{} is", "subject": "A", "target_new": {"str": "x"}, "target_true": {"str": "y"}}, "paraphrase_prompts": ["ok", 3]}]"#;
    let e = err("cf.json", text, &opts());
    assert_eq!(
        e.problem(),
        Some(&RecordProblem::WrongType {
            field: "paraphrase_prompts[1]".into(),
            expected: "a string",
            found: "a number"
        })
    );
    let text = r#"[{"case_id": 1.5, "requested_rewrite": {"prompt": "{} is", "subject": "A", "target_new": {"str": "x"}}}]"#;
    let e = err("cf.json", text, &opts());
    assert_eq!(e.problem().and_then(RecordProblem::field), Some("case_id"));
    let text = r#"[{"case_id": 0, "requested_rewrite": "nope"}]"#;
    let e = err("cf.json", text, &with_format(Format::CounterFact));
    assert!(
        matches!(e.problem(), Some(RecordProblem::WrongType { field, .. }) if field == "requested_rewrite"),
        "{e}"
    );
    // A record that is not an object.
    let e = err("cf.json", "[3]", &with_format(Format::CounterFact));
    assert_eq!(
        e.problem(),
        Some(&RecordProblem::NotAnObject { found: "a number" })
    );
    // zsRE answers must be a list.
    let text = r#"[{"subject": "A", "src": "Who is A?", "rephrase": "A is?", "answers": "B", "loc": "q", "loc_ans": "a"}]"#;
    let e = err("zsre.json", text, &opts());
    assert_eq!(
        e.to_string(),
        "zsre.json: record 0: field `answers`: expected an array of strings, found a string"
    );
}

#[test]
fn placeholder_missing_or_twice() {
    let none = r#"{"subject": "A", "prompt": "A is in", "target_new": "B"}"#;
    let e = err("f.jsonl", none, &with_format(Format::Facts));
    assert_eq!(
        e.problem(),
        Some(&RecordProblem::Placeholders {
            field: "prompt".into(),
            found: 0,
            template: "A is in".into()
        })
    );
    assert!(e.to_string().starts_with("f.jsonl: line 1 (record 0): field `prompt`: a template needs exactly one `{}`, found 0"), "{e}");
    let twice =
        "# c\n\n{\"subject\": \"A\", \"prompt\": \"{} and {} are in\", \"target_new\": \"B\"}\n";
    let e = err("f.jsonl", twice, &opts());
    assert_eq!(
        e.location(),
        Some(Location {
            index: 0,
            line: Some(3)
        })
    );
    assert!(
        matches!(
            e.problem(),
            Some(RecordProblem::Placeholders { found: 2, .. })
        ),
        "{e}"
    );
    // In CounterFact and known files too.
    let text = r#"[{"requested_rewrite": {"prompt": "The mother tongue is", "subject": "A", "target_new": {"str": "x"}}}]"#;
    let e = err("cf.json", text, &opts());
    assert_eq!(
        e.problem().and_then(RecordProblem::field),
        Some("requested_rewrite.prompt")
    );
    let text = r#"[{"known_id": 0, "subject": "A", "attribute": "B", "template": "{} {} is"}]"#;
    let e = err("known.json", text, &opts());
    assert!(
        matches!(e.problem(), Some(RecordProblem::Placeholders { field, found: 2, .. }) if field == "template"),
        "{e}"
    );
}

#[test]
fn empty_values() {
    let e = err(
        "f.jsonl",
        r#"{"subject": "  ", "prompt": "{} is", "target_new": "B"}"#,
        &opts(),
    );
    assert_eq!(
        e.problem(),
        Some(&RecordProblem::Empty {
            field: "subject".into()
        })
    );
    let e = err(
        "f.jsonl",
        r#"{"subject": "A", "prompt": "{} is", "target_new": " "}"#,
        &opts(),
    );
    assert_eq!(
        e.to_string(),
        "f.jsonl: line 1 (record 0): field `target_new`: empty"
    );
    let e = err(
        "f.jsonl",
        r#"{"subject": "A", "prompt": "{} is", "target_new": "B", "target_true": ""}"#,
        &opts(),
    );
    assert_eq!(
        e.problem().and_then(RecordProblem::field),
        Some("target_true")
    );
    let e = err(
        "f.jsonl",
        r#"{"subject": "A", "prompt": "{} is", "target_new": "B", "paraphrases": ["A is", ""]}"#,
        &opts(),
    );
    assert_eq!(
        e.problem().and_then(RecordProblem::field),
        Some("paraphrases[1]")
    );
    let text = r#"[{"subject": "A", "src": "Who is A?", "rephrase": "A is?", "answers": [], "loc": "q", "loc_ans": "a"}]"#;
    let e = err("zsre.json", text, &opts());
    assert_eq!(e.to_string(), "zsre.json: record 0: field `answers`: empty");
}

#[test]
fn subject_not_in_easyedit_prompt() {
    let text = r#"[
      {"case_id": 2, "prompt": "Toko Yasuda, the", "target_new": "piano", "subject": "Toko Yasuda", "ground_truth": "guitar"},
      {"case_id": 3, "prompt": "Toko, the", "target_new": "piano", "subject": "Toko Yasuda", "ground_truth": "guitar"}
    ]"#;
    let e = err("ee.json", text, &opts());
    assert_eq!(
        e.to_string(),
        "ee.json: record 1: field `prompt`: subject \"Toko Yasuda\" does not occur in \"Toko, the\""
    );
    // A subject occurring twice: the first occurrence becomes `{}`.
    let text = r#"[{"case_id": 4, "prompt": "Paris, Paris is in", "target_new": "x", "subject": "Paris", "ground_truth": "y"}]"#;
    let l = load_str("ee.json", text, &opts()).unwrap();
    assert_eq!(
        l.dataset.edits().unwrap()[0].rewrite.prompt,
        "{}, Paris is in"
    );
    // A prompt that already holds `{}` gives two placeholders.
    let text = r#"[{"prompt": "A {} is", "target_new": "x", "subject": "A", "ground_truth": "y"}]"#;
    let e = err("ee.json", text, &opts());
    assert!(
        matches!(
            e.problem(),
            Some(RecordProblem::Placeholders { found: 2, .. })
        ),
        "{e}"
    );
}

#[test]
fn subject_not_in_zsre_src() {
    let text = r#"[{"subject": "Bob", "src": "Who is Alice?", "rephrase": "Alice is?", "answers": ["B"], "loc": "q", "loc_ans": "a"}]"#;
    let e = err("zsre.json", text, &opts());
    assert_eq!(
        e.problem(),
        Some(&RecordProblem::SubjectNotFound {
            field: "src".into(),
            subject: "Bob".into(),
            text: "Who is Alice?".into()
        })
    );
}

#[test]
fn zsre_alt_target_errors() {
    let text = r#"[{"subject": "A", "src": "Who is A?", "rephrase": "A is?", "alt": " ", "answers": ["B"], "loc": "q", "loc_ans": "a"}]"#;
    // Fine with answers[0]...
    assert_eq!(load_str("zsre.json", text, &opts()).unwrap().len(), 1);
    // ... an empty alt with ZsreTarget::Alt.
    let alt = LoadOptions {
        zsre_target: ZsreTarget::Alt,
        ..opts()
    };
    let e = err("zsre.json", text, &alt);
    assert_eq!(e.to_string(), "zsre.json: record 0: field `alt`: empty");
    let text = r#"[{"subject": "A", "src": "Who is A?", "rephrase": "A is?", "answers": ["B"], "loc": "q", "loc_ans": "a"}]"#;
    let e = err("zsre.json", text, &alt);
    assert_eq!(e.to_string(), "zsre.json: record 0: field `alt`: missing");
}

#[test]
fn easyedit_locality_needs_both_fields() {
    let text =
        r#"[{"prompt": "A is", "target_new": "x", "subject": "A", "locality_prompt": "B is"}]"#;
    let e = err("ee.json", text, &with_format(Format::EasyEdit));
    assert_eq!(
        e.to_string(),
        "ee.json: record 0: field `locality_ground_truth`: missing"
    );
}

#[test]
fn mquake_errors() {
    let text = r#"[{"case_id": 1, "requested_rewrite": [], "questions": ["q"], "answer": "a", "new_answer": "b"}]"#;
    let e = err("mq.json", text, &opts());
    assert_eq!(
        e.to_string(),
        "mq.json: record 0: field `requested_rewrite`: empty"
    );
    let text = r#"[{"case_id": 1, "requested_rewrite": [{"prompt": "{} is", "subject": "A", "target_new": {"str": "x"}}, {"prompt": "{} is", "target_new": {"str": "y"}}], "questions": ["q"], "answer": "a", "new_answer": "b"}]"#;
    let e = err("mq.json", text, &opts());
    assert_eq!(
        e.to_string(),
        "mq.json: record 0: field `requested_rewrite[1].subject`: missing"
    );
    let text = r#"[{"case_id": 1, "requested_rewrite": [{"prompt": "{} is", "subject": "A", "target_new": {"str": "x"}}], "questions": ["q"], "answer": "a"}]"#;
    let e = err("mq.json", text, &opts());
    assert_eq!(
        e.problem().and_then(RecordProblem::field),
        Some("new_answer")
    );
    let text = r#"[{"case_id": 1, "requested_rewrite": [{"prompt": "{} is", "subject": "A", "target_new": {"str": "x"}}], "answer": "a", "new_answer": "b", "single_hops": [{"question": "q", "answer": "a"}]}]"#;
    let e = err("mq.json", text, &opts());
    assert_eq!(
        e.problem().and_then(RecordProblem::field),
        Some("single_hops[0].cloze")
    );
}

#[test]
fn counterfact_rejects_several_rewrites() {
    let text = r#"[{"requested_rewrite": [
        {"prompt": "{} is", "subject": "A", "target_new": {"str": "x"}},
        {"prompt": "{} is", "subject": "B", "target_new": {"str": "y"}}]}]"#;
    let e = err("cf.json", text, &with_format(Format::CounterFact));
    assert_eq!(e.problem(), Some(&RecordProblem::RewriteCount { count: 2 }));
    // Detection sends a list to MQuAKE, which needs its answers.
    let e = err("cf.json", text, &opts());
    assert_eq!(e.problem().and_then(RecordProblem::field), Some("answer"));
}

#[test]
fn facts_unknown_and_duplicate_fields() {
    let e = err(
        "f.jsonl",
        r#"{"subject": "A", "prompt": "{} is", "target_new": "B", "paraphrase": ["x"]}"#,
        &opts(),
    );
    assert_eq!(
        e.to_string(),
        "f.jsonl: line 1 (record 0): field `paraphrase`: unknown field"
    );
    let e = err(
        "f.jsonl",
        r#"{"subject": "A", "prompt": "{} is", "target_new": "B", "neighbourhood": [{"prompt": "C is", "target": "D", "extra": 1}]}"#,
        &opts(),
    );
    assert_eq!(
        e.problem().and_then(RecordProblem::field),
        Some("neighbourhood[0].extra")
    );
    let e = err(
        "f.jsonl",
        r#"{"subject": "A", "prompt": "{} is", "target_new": "B", "neighbourhood": [{"prompt": "C is"}]}"#,
        &opts(),
    );
    assert_eq!(
        e.problem().and_then(RecordProblem::field),
        Some("neighbourhood[0].target")
    );
    let e = err(
        "f.jsonl",
        r#"{"subject": "A", "prompt": "{} is", "target_new": "B", "paraphrases": [], "paraphrase_prompts": []}"#,
        &opts(),
    );
    assert!(
        matches!(e.problem(), Some(RecordProblem::Duplicate { .. })),
        "{e}"
    );
    // The aliases alone are fine.
    let l = load_str(
        "f.jsonl",
        r#"{"subject": "A", "prompt": "{} is", "target_new": "B", "paraphrase_prompts": ["A, is"], "neighborhood": [{"prompt": "C is", "target": "D"}]}"#,
        &opts(),
    )
    .unwrap();
    let r = &l.dataset.edits().unwrap()[0];
    assert_eq!(r.paraphrase_prompts, strings(&["A, is"]));
    assert_eq!(r.neighborhood, vec![probe("C is", "D")]);
}

#[test]
fn malformed_jsonl_line_gives_line_number_and_serde_message() {
    let text = "# facts\n{\"subject\": \"A\", \"prompt\": \"{} is\", \"target_new\": \"B\"}\n\n{\"subject\": \"C\" \"prompt\": \"{} is\"}\n";
    let e = err("facts.jsonl", text, &opts());
    assert_eq!(
        e.location(),
        Some(Location {
            index: 1,
            line: Some(4)
        })
    );
    match e.problem() {
        Some(RecordProblem::Syntax { message, column }) => {
            assert_eq!(message, "expected `,` or `}`");
            assert_eq!(*column, 17);
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(
        e.to_string(),
        "facts.jsonl: line 4 (record 1): invalid JSON at column 17: expected `,` or `}`"
    );
    // Leading blank lines still count.
    let e = err("facts.jsonl", "\n\n  \n{oops}\n", &opts());
    assert_eq!(e.location().and_then(|l| l.line), Some(4));
}

#[test]
fn truncated_json_array() {
    let dir = tempfile::tempdir().unwrap();
    let full = std::fs::read_to_string(fixture("counterfact_rome_3.json")).unwrap();
    let cut = &full[..full.find("\"case_id\": 1").unwrap() + 30];
    let path = write_temp(&dir, "cut.json", cut);
    let e = load(&path, &opts()).unwrap_err();
    match &e {
        DataError::Json {
            path: p,
            index,
            message,
        } => {
            assert_eq!(p, &path);
            assert_eq!(*index, Some(1));
            assert!(message.contains("EOF"), "{message}");
        }
        other => panic!("{other}"),
    }
    assert!(
        e.to_string()
            .starts_with(&format!("{}: record 1: invalid JSON: EOF", path.display())),
        "{e}"
    );
    // Text after the array.
    let e = err("x.json", "[] x", &with_format(Format::Facts));
    assert!(matches!(e, DataError::Json { index: None, .. }), "{e}");
    // Bad syntax inside an array.
    let e = err("x.json", "[{\"subject\": }]", &with_format(Format::Facts));
    assert!(matches!(e, DataError::Json { index: Some(0), .. }), "{e}");
}

#[test]
fn empty_files() {
    let dir = tempfile::tempdir().unwrap();
    for (name, text) in [("empty.json", ""), ("blank.jsonl", "  \n\n\t\n")] {
        let path = write_temp(&dir, name, text);
        let e = load(&path, &opts()).unwrap_err();
        assert!(matches!(e, DataError::Empty { .. }), "{e}");
        assert_eq!(
            e.to_string(),
            format!("{}: empty file (no records)", path.display())
        );
        let e = load(&path, &with_format(Format::Facts)).unwrap_err();
        assert!(matches!(e, DataError::Empty { .. }), "{e}");
        assert!(matches!(
            Format::detect(&path),
            Err(DataError::Empty { .. })
        ));
    }
    // No records: an error when the format must be detected, an empty dataset otherwise.
    for text in ["[]", "# only a comment\n"] {
        assert!(matches!(err("x", text, &opts()), DataError::Empty { .. }));
        let l = load_str("x", text, &with_format(Format::Zsre)).unwrap();
        assert!(l.is_empty());
        assert_eq!(l.dataset, Dataset::Edits(Vec::new()));
    }
}

#[test]
fn missing_file_is_io_error() {
    let e = load("/nonexistent/dir/x.json", &opts()).unwrap_err();
    assert!(matches!(e, DataError::Io { .. }), "{e}");
    assert!(
        e.to_string().starts_with("/nonexistent/dir/x.json: "),
        "{e}"
    );
}

#[test]
fn unknown_format() {
    let e = err("x.json", r#"[{"foo": 1, "bar": 2}]"#, &opts());
    match &e {
        DataError::UnknownFormat { reason, .. } => {
            assert!(reason.contains("[bar, foo]"), "{reason}")
        }
        other => panic!("{other}"),
    }
    let e = err("x.json", "[[1, 2]]", &opts());
    assert!(matches!(e, DataError::UnknownFormat { .. }), "{e}");
    let e = err("x.txt", "hello world", &opts());
    assert!(matches!(e, DataError::UnknownFormat { .. }), "{e}");
    assert_eq!(
        "parquet".parse::<Format>().unwrap_err().to_string(),
        "unknown dataset format \"parquet\" (known: counterfact, easyedit, zsre, known, mquake, facts)"
    );
}

// ---------------------------------------------------------------------------------------------
// offset / limit / skip_invalid

fn numbered_facts(n: usize) -> String {
    (0..n)
        .map(|i| format!(r#"{{"case_id": {i}, "subject": "S{i}", "prompt": "{{}} is", "target_new": "T{i}"}}"#))
        .collect::<Vec<_>>()
        .join("\n")
}

fn ids(l: &eamet_eval::data::Loaded) -> Vec<String> {
    l.dataset
        .rewrites()
        .iter()
        .map(|r| r.case_id.clone().unwrap())
        .collect()
}

#[test]
fn offset_and_limit() {
    let lines = numbered_facts(6);
    let array = format!("[{}]", lines.replace('\n', ","));
    for text in [&lines, &array] {
        let sel = |offset, limit| LoadOptions {
            offset,
            limit,
            ..opts()
        };
        let l = load_str("f", text, &sel(2, Some(3))).unwrap();
        assert_eq!(ids(&l), ["2", "3", "4"]);
        assert_eq!(l.dataset.edits().unwrap()[0].index, 2);
        assert_eq!(
            ids(&load_str("f", text, &sel(4, None)).unwrap()),
            ["4", "5"]
        );
        assert_eq!(
            ids(&load_str("f", text, &sel(0, Some(0))).unwrap()),
            Vec::<String>::new()
        );
        assert_eq!(ids(&load_str("f", text, &sel(5, Some(10))).unwrap()), ["5"]);
        assert!(load_str("f", text, &sel(9, Some(10))).unwrap().is_empty());
        assert_eq!(load_str("f", text, &sel(0, None)).unwrap().len(), 6);
        assert_eq!(
            ids(&load_str("f", text, &sel(0, Some(usize::MAX))).unwrap()).len(),
            6
        );
    }
}

#[test]
fn records_outside_the_selection_are_not_validated() {
    // Record 1 is invalid (no `{}`), record 4 is truncated JSON: a selection of 2..4 never
    // reaches either problem in a JSON array (record 1 is stepped over, reading stops before 4).
    let text = r#"[{"subject": "A", "prompt": "{} a", "target_new": "x"},
      {"subject": "B", "prompt": "b", "target_new": "x"},
      {"subject": "C", "prompt": "{} c", "target_new": "x"},
      {"subject": "D", "prompt": "{} d", "target_new": "x"},
      {"subject": "E", "prompt": "#;
    let sel = LoadOptions {
        offset: 2,
        limit: Some(2),
        ..opts()
    };
    let l = load_str("f.json", text, &sel).unwrap();
    let subjects: Vec<&str> = l
        .dataset
        .rewrites()
        .iter()
        .map(|r| r.subject.as_str())
        .collect();
    assert_eq!(subjects, ["C", "D"]);
    // Reading to the end meets the truncation.
    let e = err(
        "f.json",
        text,
        &LoadOptions {
            offset: 2,
            ..opts()
        },
    );
    assert!(matches!(e, DataError::Json { index: Some(4), .. }), "{e}");
}

#[test]
fn skip_invalid_collects_reasons() {
    let text = "{\"subject\": \"A\", \"prompt\": \"{} a\", \"target_new\": \"x\"}\n\
                {\"subject\": \"B\", \"prompt\": \"b\", \"target_new\": \"x\"}\n\
                // comment\n\
                {not json}\n\
                {\"subject\": \"D\", \"prompt\": \"{} d\", \"target_new\": \"\"}\n\
                {\"subject\": \"E\", \"prompt\": \"{} e\", \"target_new\": \"y\"}\n";
    let skip = LoadOptions {
        skip_invalid: true,
        ..opts()
    };
    let l = load_str("f.jsonl", text, &skip).unwrap();
    let recs = l.dataset.edits().unwrap();
    assert_eq!(recs.len(), 2);
    assert_eq!((recs[0].index, recs[1].index), (0, 4));
    assert_eq!(recs[1].rewrite.subject, "E");
    let where_: Vec<(usize, Option<usize>)> = l
        .skipped
        .iter()
        .map(|s| (s.location.index, s.location.line))
        .collect();
    assert_eq!(where_, [(1, Some(2)), (2, Some(4)), (3, Some(5))]);
    assert!(matches!(
        l.skipped[0].problem,
        RecordProblem::Placeholders { found: 0, .. }
    ));
    assert!(matches!(l.skipped[1].problem, RecordProblem::Syntax { .. }));
    assert_eq!(
        l.skipped[2].to_string(),
        "line 5 (record 3): field `target_new`: empty"
    );
    // Without the option the first bad record fails the load.
    let e = err("f.jsonl", text, &opts());
    assert_eq!(
        e.location(),
        Some(Location {
            index: 1,
            line: Some(2)
        })
    );
    // Skipped records before the offset are not reported; limit counts positions.
    let sel = LoadOptions {
        offset: 2,
        limit: Some(2),
        skip_invalid: true,
        ..opts()
    };
    let l = load_str("f.jsonl", text, &sel).unwrap();
    assert!(l.is_empty());
    assert_eq!(l.skipped.len(), 2);
    assert_eq!(l.skipped[0].location.index, 2);
}

#[test]
fn skip_invalid_in_arrays() {
    let text = r#"[
      {"subject": "A", "src": "Who is A?", "rephrase": "A?", "answers": ["x"], "loc": "q", "loc_ans": "a"},
      {"subject": "B", "src": "Who is C?", "rephrase": "B?", "answers": ["x"], "loc": "q", "loc_ans": "a"},
      {"subject": "D", "src": "Who is D?", "rephrase": "D?", "answers": ["y"], "loc": "q", "loc_ans": "a"}
    ]"#;
    let skip = LoadOptions {
        skip_invalid: true,
        ..opts()
    };
    let l = load_str("z.json", text, &skip).unwrap();
    assert_eq!(l.format, Format::Zsre);
    assert_eq!(l.len(), 2);
    // zsRE case ids are file positions, so they survive skipping.
    assert_eq!(ids(&l), ["0", "2"]);
    assert_eq!(l.skipped.len(), 1);
    assert_eq!(
        l.skipped[0].to_string(),
        "record 1: field `src`: subject \"B\" does not occur in \"Who is C?\""
    );
    // Syntax errors in arrays stay fatal.
    let e = err("z.json", "[{\"subject\": 1,,}]", &skip);
    assert!(matches!(e, DataError::Json { .. }), "{e}");
}

// ---------------------------------------------------------------------------------------------
// Format detection and names

#[test]
fn format_detection() {
    let cases = [
        ("counterfact_rome_3.json", Format::CounterFact),
        ("easyedit_2.json", Format::EasyEdit),
        ("zsre_2.json", Format::Zsre),
        ("known_2.json", Format::Known),
        ("mquake_1.json", Format::Mquake),
        ("facts_comments.jsonl", Format::Facts),
    ];
    for (name, format) in cases {
        assert_eq!(Format::detect(fixture(name)).unwrap(), format, "{name}");
        assert_eq!(load(fixture(name), &opts()).unwrap().format, format);
    }
    // An EasyEdit record with only the core keys: prompt filled in, no `{}`.
    let text = r#"[{"prompt": "Paris is in", "subject": "Paris", "target_new": "Italy"}]"#;
    let l = load_str("x.json", text, &opts()).unwrap();
    assert_eq!(l.format, Format::EasyEdit);
    assert_eq!(l.dataset.edits().unwrap()[0].rewrite.prompt, "{} is in");
    // Detection needs a record that parses: a bad first line is skipped with skip_invalid.
    let text = "{bad\n{\"subject\": \"A\", \"prompt\": \"{} a\", \"target_new\": \"x\"}\n";
    assert!(matches!(
        err("x.jsonl", text, &opts()),
        DataError::Record { .. }
    ));
    let l = load_str(
        "x.jsonl",
        text,
        &LoadOptions {
            skip_invalid: true,
            ..opts()
        },
    )
    .unwrap();
    assert_eq!((l.format, l.len(), l.skipped.len()), (Format::Facts, 1, 1));
    // Detection reads the first record even when the offset is past it.
    let l = load_str(
        "x.json",
        r#"[{"known_id": 0, "subject": "A", "attribute": "B", "template": "{} is"},
            {"known_id": 1, "subject": "C", "attribute": "D", "template": "{} is"}]"#,
        &LoadOptions {
            offset: 1,
            ..opts()
        },
    )
    .unwrap();
    assert_eq!(l.format, Format::Known);
    assert_eq!(l.dataset.known().unwrap()[0].subject, "C");
}

#[test]
fn explicit_format_overrides_detection() {
    // A zsRE file forced to load as CounterFact fails on CounterFact's fields.
    let e = load(fixture("zsre_2.json"), &with_format(Format::CounterFact)).unwrap_err();
    assert_eq!(
        e.to_string(),
        format!(
            "{}: record 0: field `requested_rewrite`: missing",
            fixture("zsre_2.json").display()
        )
    );
}

#[test]
fn format_names_round_trip() {
    for f in Format::ALL {
        assert_eq!(f.name().parse::<Format>().unwrap(), f);
        assert_eq!(f.to_string(), f.name());
    }
    assert_eq!("MCF".parse::<Format>().unwrap(), Format::CounterFact);
    assert_eq!("zsre-mend".parse::<Format>().unwrap(), Format::Zsre);
    assert_eq!("alt".parse::<ZsreTarget>().unwrap(), ZsreTarget::Alt);
    assert_eq!(
        "answers0".parse::<ZsreTarget>().unwrap(),
        ZsreTarget::Answers0
    );
    assert!("foo".parse::<ZsreTarget>().is_err());
    assert_eq!(ZsreTarget::default(), ZsreTarget::Answers0);
    assert_eq!(Format::Known.kind(), RecordKind::Known);
    assert_eq!(Format::EasyEdit.kind(), RecordKind::Edits);
}

#[test]
fn byte_order_mark_is_ignored() {
    let text = "\u{feff}{\"subject\": \"A\", \"prompt\": \"{} a\", \"target_new\": \"x\"}\n";
    assert_eq!(load_str("bom.jsonl", text, &opts()).unwrap().len(), 1);
    let text = "\u{feff}[{\"subject\": \"A\", \"prompt\": \"{} a\", \"target_new\": \"x\"}]";
    assert_eq!(load_str("bom.json", text, &opts()).unwrap().len(), 1);
}

// ---------------------------------------------------------------------------------------------
// group_by_subject, validate

#[test]
fn grouping_by_subject() {
    let text = r#"{"subject": "A", "prompt": "{} 1", "target_new": "x"}
{"subject": "B", "prompt": "{} 2", "target_new": "x"}
{"subject": "A", "prompt": "{} 3", "target_new": "x"}
{"subject": "C", "prompt": "{} 4", "target_new": "x"}
{"subject": "C", "prompt": "{} 5", "target_new": "x"}
{"subject": "A", "prompt": "{} 6", "target_new": "x"}
{"subject": "a", "prompt": "{} 7", "target_new": "x"}"#;
    let recs = load_str("g.jsonl", text, &opts())
        .unwrap()
        .into_edits()
        .unwrap();
    assert_eq!(
        group_by_subject(&recs),
        vec![
            ("A".to_string(), vec![0, 2, 5]),
            ("C".to_string(), vec![3, 4])
        ]
    );
    assert!(group_by_subject(&recs[..2]).is_empty());
    assert!(group_by_subject(&[]).is_empty());
}

#[test]
fn rewrite_validate() {
    let mut r = Rewrite {
        subject: "A".into(),
        prompt: "{} is".into(),
        target_new: "B".into(),
        target_true: None,
        case_id: None,
        relation_id: None,
    };
    assert_eq!(r.validate(), Ok(()));
    r.prompt = "{}{}".into();
    assert!(matches!(
        r.validate(),
        Err(RecordProblem::Placeholders { found: 2, .. })
    ));
    r.prompt = "{} is".into();
    r.target_true = Some("".into());
    assert_eq!(
        r.validate(),
        Err(RecordProblem::Empty {
            field: "target_true".into()
        })
    );
}
