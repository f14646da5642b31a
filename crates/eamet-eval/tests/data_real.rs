//! Dataset loaders on the real data files (skipped when they are absent).
//!
//! The files are looked up in `$EAMET_DATA_DIR`, default `<workspace>/../shared/data`.

use std::path::PathBuf;

use eamet_eval::data::{
    group_by_subject, load, Format, LoadOptions, Probe, RecordProblem, ZsreTarget,
};

/// The data file `name`, or `None` (after saying so) when it is not there.
fn data_file(name: &str) -> Option<PathBuf> {
    let dir = match std::env::var_os("EAMET_DATA_DIR") {
        Some(d) => PathBuf::from(d),
        None => PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../../../shared/data")),
    };
    let path = dir.join(name);
    if path.is_file() {
        Some(path)
    } else {
        eprintln!("skipped: {} not found, set EAMET_DATA_DIR", path.display());
        None
    }
}

fn opts() -> LoadOptions {
    LoadOptions::default()
}

#[test]
fn counterfact_rome_format_1000() {
    let Some(path) = data_file("counterfact_rome_format_1000.json") else {
        return;
    };
    assert_eq!(Format::detect(&path).unwrap(), Format::CounterFact);
    let loaded = load(&path, &opts()).unwrap();
    assert_eq!(loaded.format, Format::CounterFact);
    assert!(loaded.skipped.is_empty());
    let recs = loaded.into_edits().unwrap();
    assert_eq!(recs.len(), 1000);
    let r = &recs[0];
    assert_eq!(r.case_id(), Some("0"));
    assert_eq!(r.rewrite.subject, "Danielle Darrieux");
    assert_eq!(r.rewrite.prompt, "The mother tongue of {} is");
    assert_eq!(r.rewrite.target_new, "English");
    assert_eq!(r.rewrite.target_true.as_deref(), Some("French"));
    assert_eq!(r.rewrite.relation_id.as_deref(), Some("P103"));
    assert_eq!(r.paraphrase_prompts.len(), 2);
    assert_eq!(
        r.paraphrase_prompts[0],
        "Shayna does this and Yossel goes still and dies. Danielle Darrieux, a native"
    );
    assert_eq!(r.neighborhood.len(), 10);
    assert_eq!(
        r.neighborhood[0],
        Probe {
            prompt: "The mother tongue of Léon Blum is".into(),
            target: "French".into()
        }
    );
    assert!(r.neighborhood.iter().all(|p| p.target == "French"));
    assert_eq!(r.attribute.len(), 10);
    assert!(r.attribute.iter().all(|p| p.target == "English"));
    assert_eq!(r.generation_prompts.len(), 10);
    // Every record has the full ROME layout; the last one is case 1085.
    assert!(recs.iter().all(|r| r.paraphrase_prompts.len() == 2
        && r.neighborhood.len() == 10
        && r.attribute.len() == 10
        && r.generation_prompts.len() == 10));
    assert_eq!(recs[999].case_id(), Some("1085"));
    // Three subjects occur twice.
    let groups = group_by_subject(&recs);
    let names: Vec<&str> = groups.iter().map(|(s, _)| s.as_str()).collect();
    assert_eq!(names.len(), 3, "{names:?}");
    for s in ["Johannesburg", "Shanghai", "Athens"] {
        assert!(names.contains(&s), "{names:?}");
    }
    assert!(groups.iter().all(|(_, v)| v.len() == 2));

    // offset/limit select by position and stop early.
    let part = load(
        &path,
        &LoadOptions {
            offset: 10,
            limit: Some(5),
            ..opts()
        },
    )
    .unwrap()
    .into_edits()
    .unwrap();
    assert_eq!(part.len(), 5);
    assert_eq!(part[0], recs[10]);
    assert_eq!(part[4], recs[14]);
}

#[test]
fn counterfact_easyedit_splits() {
    for (name, count) in [
        ("counterfact_easyedit_train.json", 10_000),
        ("counterfact_easyedit_edit.json", 10_000),
        ("counterfact_easyedit_val.json", 1_319),
    ] {
        let Some(path) = data_file(name) else {
            continue;
        };
        assert_eq!(Format::detect(&path).unwrap(), Format::EasyEdit, "{name}");
        let loaded = load(&path, &opts()).unwrap();
        assert!(loaded.skipped.is_empty());
        let recs = loaded.into_edits().unwrap();
        assert_eq!(recs.len(), count, "{name}");
        for r in &recs {
            assert_eq!(r.paraphrase_prompts.len(), 1);
            assert_eq!(r.neighborhood.len(), 1);
            assert!(r.rewrite.target_true.is_some());
            assert!(r.rewrite.prompt.matches("{}").count() == 1);
        }
        if name.ends_with("train.json") {
            let r = &recs[0];
            assert_eq!(r.case_id(), Some("2"));
            assert_eq!(r.rewrite.prompt, "{}, the");
            assert_eq!(r.rewrite.subject, "Toko Yasuda");
            assert_eq!(r.rewrite.target_new, "piano");
            assert_eq!(r.rewrite.target_true.as_deref(), Some("guitar"));
            assert_eq!(r.paraphrase_prompts[0], "Toko Yasuda is incredible at");
            assert_eq!(r.neighborhood[0].prompt, "John Lennon performs on the");
            assert_eq!(r.neighborhood[0].target, "guitar");
        }
    }
}

#[test]
fn easyedit_and_rome_copies_agree() {
    // SOURCES.md: the ROME-format file was assembled by matching EasyEdit cases; the rewrite
    // of each ROME record equals the EasyEdit record with the same case id.
    let (Some(rome), Some(edit), Some(train), Some(val)) = (
        data_file("counterfact_rome_format_1000.json"),
        data_file("counterfact_easyedit_edit.json"),
        data_file("counterfact_easyedit_train.json"),
        data_file("counterfact_easyedit_val.json"),
    ) else {
        return;
    };
    let mut by_id = std::collections::HashMap::new();
    for p in [edit, train, val] {
        for r in load(&p, &opts()).unwrap().into_edits().unwrap() {
            by_id.insert(r.rewrite.case_id.clone().unwrap(), r);
        }
    }
    let rome = load(&rome, &opts()).unwrap().into_edits().unwrap();
    let mut matched = 0;
    for r in &rome {
        if let Some(e) = by_id.get(r.case_id().unwrap()) {
            matched += 1;
            assert_eq!(r.rewrite.subject, e.rewrite.subject);
            assert_eq!(r.rewrite.prompt, e.rewrite.prompt);
            assert_eq!(r.rewrite.target_new, e.rewrite.target_new);
            assert_eq!(r.rewrite.target_true, e.rewrite.target_true);
            assert!(r.neighborhood.contains(&e.neighborhood[0]));
        }
    }
    // 600 validation records were removed from this copy, none of them among these 1000.
    assert_eq!(matched, 1000);
}

#[test]
fn zsre_files() {
    for (name, count) in [
        ("zsre_mend_eval_portability_1037.json", 1037),
        ("zsre_mend_train_1k.json", 1000),
    ] {
        let Some(path) = data_file(name) else {
            continue;
        };
        assert_eq!(Format::detect(&path).unwrap(), Format::Zsre, "{name}");
        // Subject-in-src failures, counted with skip_invalid: none in either file.
        let skip = LoadOptions {
            skip_invalid: true,
            ..opts()
        };
        let loaded = load(&path, &skip).unwrap();
        let not_found = loaded
            .skipped
            .iter()
            .filter(|s| matches!(s.problem, RecordProblem::SubjectNotFound { .. }))
            .count();
        assert_eq!(not_found, 0, "{name}: {:?}", loaded.skipped);
        assert!(loaded.skipped.is_empty(), "{name}: {:?}", loaded.skipped);
        let recs = loaded.into_edits().unwrap();
        assert_eq!(recs.len(), count, "{name}");
        for (i, r) in recs.iter().enumerate() {
            assert_eq!(r.case_id(), Some(i.to_string().as_str()));
            assert_eq!(r.paraphrase_prompts.len(), 1);
            assert_eq!(r.locality.len(), 1);
            assert!(r.locality[0].prompt.starts_with("nq question: "));
            let z = r.zsre.as_ref().unwrap();
            assert_eq!(r.rewrite.target_new, z.answers[0]);
            assert_eq!(z.portability.is_some(), name.contains("portability"));
        }
        // The default load (no skipping) succeeds too.
        assert_eq!(load(&path, &opts()).unwrap().len(), count);
    }
    if let Some(path) = data_file("zsre_mend_eval_portability_1037.json") {
        let r = &load(&path, &opts()).unwrap().into_edits().unwrap()[0];
        assert_eq!(r.rewrite.subject, "IAAF Combined Events Challenge");
        assert_eq!(r.rewrite.prompt, "When was the inception of {}?");
        assert_eq!(r.rewrite.target_new, "1998");
        assert_eq!(r.locality[0].target, "The String");
        let z = r.zsre.as_ref().unwrap();
        assert_eq!(z.alt.as_deref(), Some("2006"));
        assert_eq!(z.portability.as_ref().unwrap().new_answer, "Athletics");
    }
}

#[test]
fn zsre_alt_target_on_real_files() {
    // With `alt` as the new target: 15 alts in the eval file and 10 in the train file carry
    // a leading space (trimmed), and two train records (534, 723) have an empty alt.
    let alt = LoadOptions {
        zsre_target: ZsreTarget::Alt,
        skip_invalid: true,
        ..opts()
    };
    if let Some(path) = data_file("zsre_mend_eval_portability_1037.json") {
        let l = load(&path, &alt).unwrap();
        assert!(l.skipped.is_empty());
        let recs = l.into_edits().unwrap();
        assert_eq!(recs[0].rewrite.target_new, "2006");
        assert_eq!(recs[0].rewrite.target_true.as_deref(), Some("1998"));
        assert_eq!(recs[26].rewrite.target_new, "MAT-49");
    }
    if let Some(path) = data_file("zsre_mend_train_1k.json") {
        let l = load(&path, &alt).unwrap();
        assert_eq!(l.len(), 998);
        let skipped: Vec<usize> = l.skipped.iter().map(|s| s.location.index).collect();
        assert_eq!(skipped, [534, 723]);
        assert!(l.skipped.iter().all(|s| s.problem
            == RecordProblem::Empty {
                field: "alt".into()
            }));
    }
}

#[test]
fn known_1000() {
    let Some(path) = data_file("known_1000.json") else {
        return;
    };
    assert_eq!(Format::detect(&path).unwrap(), Format::Known);
    let loaded = load(&path, &opts()).unwrap();
    let known = loaded.dataset.known().unwrap();
    assert_eq!(known.len(), 1209);
    let k = &known[0];
    assert_eq!(k.subject, "Vinson Massif");
    assert_eq!(k.prompt, "{} is located in the continent");
    assert_eq!(k.target_true, "Antarctica");
    assert_eq!(
        k.tracing_prompt,
        "Vinson Massif is located in the continent of"
    );
    assert_eq!(known[1208].case_id.as_deref(), Some("1208"));
    // The tracing prompt equals the filled template in 731 records; in the others it runs on.
    let same = known
        .iter()
        .filter(|k| k.filled_prompt() == k.tracing_prompt)
        .count();
    assert_eq!(same, 731);
    assert!(known
        .iter()
        .all(|k| k.tracing_prompt.starts_with(&k.filled_prompt())));
}

#[test]
fn mquake_hard_429() {
    let Some(path) = data_file("mquake_hard_429.json") else {
        return;
    };
    assert_eq!(Format::detect(&path).unwrap(), Format::Mquake);
    let loaded = load(&path, &opts()).unwrap();
    let cases = loaded.dataset.mquake().unwrap();
    assert_eq!(cases.len(), 429);
    assert!(cases.iter().all(|c| c.edits.len() == 4));
    assert!(cases.iter().all(|c| c.questions.len() == 3));
    assert!(cases
        .iter()
        .all(|c| c.single_hops.len() == 4 && c.new_single_hops.len() == 4));
    assert_eq!(loaded.dataset.rewrites().len(), 429 * 4);
    let c = &cases[0];
    assert_eq!(c.case_id.as_deref(), Some("7417"));
    assert_eq!(c.edits[0].rewrite.subject, "Hey Jude");
    assert_eq!(c.edits[0].rewrite.target_new, "Madonna");
    assert_eq!(c.answer, "English");
    assert_eq!(c.new_answer, "Arabic");
    // The edits chain: each edit's new object is the next edit's subject.
    for w in c.edits.windows(2) {
        assert_eq!(w[0].rewrite.target_new, w[1].rewrite.subject);
    }
}
