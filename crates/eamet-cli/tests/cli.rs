//! The `eamet` binary end to end on the real SmolLM2 model: every command once on small inputs,
//! and bad input (missing file, malformed JSON line, subject not at a token boundary, unknown
//! method, layer out of range, empty corpus, existing outputs): one-line error on stderr,
//! non-zero exit, nothing written.

use assert_cmd::Command;
use predicates::prelude::*;
use std::path::{Path, PathBuf};

fn model_ready() -> bool {
    let ok = eamet::hooks::paths::default_model().is_some_and(|p| p.exists());
    if !ok {
        eprintln!("skipped: the SmolLM2 model is missing; run `cargo xtask setup`");
    }
    ok
}

/// The CLI, one OpenMP thread per process: the harness runs these tests in parallel, and two
/// libtorch processes with a thread per core each spin against each other (about 5x slower on
/// 2 cores than one thread each).
fn eamet() -> Command {
    let mut c = Command::cargo_bin("eamet").unwrap();
    c.env("OMP_NUM_THREADS", "1");
    c
}

const TWO_FACTS: &str = r#"{"subject": "Eiffel Tower", "prompt": "The {} is located in the city of", "target_new": "Rome", "target_true": "Paris", "case_id": "a"}
# a comment line
{"subject": "Colosseum", "prompt": "The {} is located in the city of", "target_new": "London", "target_true": "Rome", "case_id": "b"}
"#;

fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, text).unwrap();
    p
}

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../eamet-eval/tests/fixtures")
        .join(name)
}

/// Runs a command expected to fail: exit status 1, one line on stderr naming `needle`.
fn fails_with(cmd: &mut Command, needle: &str) {
    let out = cmd.output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "stderr: {err}");
    let lines: Vec<&str> = err.lines().filter(|l| !l.trim().is_empty()).collect();
    assert_eq!(lines.len(), 1, "expected one error line, got: {err}");
    assert!(lines[0].starts_with("eamet: error: "), "{err}");
    assert!(
        lines[0].to_lowercase().contains(&needle.to_lowercase()),
        "{needle:?} not in {err}"
    );
}

#[test]
fn help_of_every_command_has_an_example() {
    eamet()
        .arg("--help")
        .assert()
        .success()
        .stdout(predicate::str::contains("eval"));
    for c in [
        "edit",
        "eval",
        "stats",
        "score",
        "generate",
        "apply-patch",
        "export",
        "info",
    ] {
        eamet()
            .args([c, "--help"])
            .assert()
            .success()
            .stdout(predicate::str::contains("Example"));
    }
    // A usage error is clap's: exit status 2.
    eamet().args(["edit", "--no-such-flag"]).assert().code(2);
    // --block takes a whole number of facts ≥ 1, on edit and eval.
    for cmd in ["edit", "eval"] {
        for bad in ["0", "x", "-3", "2.5"] {
            eamet()
                .args([cmd, &format!("--block={bad}")])
                .assert()
                .code(2)
                .stderr(predicate::str::contains("--block"));
        }
    }
    for bad in ["0", "x"] {
        eamet()
            .args(["eval", &format!("--extra-sample={bad}")])
            .assert()
            .code(2)
            .stderr(predicate::str::contains("--extra-sample"));
    }
}

#[test]
fn bad_input_is_one_clear_line_and_writes_nothing() {
    if !model_ready() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let patch = d.join("out.safetensors");
    let facts = write(d, "facts.jsonl", TWO_FACTS);
    fails_with(
        eamet()
            .args(["edit", "--facts"])
            .arg(d.join("missing.jsonl")),
        "no such file",
    );
    let bad = write(
        d,
        "bad.jsonl",
        "{\"subject\": \"A\", \"prompt\": \"{} is\", \"target_new\": \"B\"}\n{\"subject\": \n",
    );
    fails_with(
        eamet()
            .args(["edit", "--facts"])
            .arg(&bad)
            .arg("--patch")
            .arg(&patch),
        "line 2",
    );
    fails_with(
        eamet()
            .args(["eval", "--prefix-docs", "16", "--corpus"])
            .arg(&facts)
            .arg("--dataset")
            .arg(fixture("counterfact_rome_3.json"))
            .arg("--report")
            .arg(d.join("r")),
        "give one or the other",
    );
    fails_with(
        eamet()
            .args(["eval", "--checkpoint-sample", "10", "--dataset"])
            .arg(fixture("counterfact_rome_3.json"))
            .arg("--report")
            .arg(d.join("r")),
        "give --batch-size too",
    );
    // A run directory holding an earlier run is not reused without --resume, and --resume
    // needs a run directory.
    let earlier = d.join("earlier-run");
    std::fs::create_dir_all(earlier.join("residuals")).unwrap();
    std::fs::write(earlier.join("residuals/manifest.json"), "{}").unwrap();
    fails_with(
        eamet()
            .args(["edit", "--facts"])
            .arg(&facts)
            .arg("--run-dir")
            .arg(&earlier),
        "pass --resume",
    );
    fails_with(
        eamet().args(["edit", "--resume", "--facts"]).arg(&facts),
        "--resume needs --run-dir",
    );
    let typo = write(
        d,
        "typo.json",
        r#"{"layers": [3, 4], "mom2_update_wieght": 1000}"#,
    );
    fails_with(
        eamet()
            .args(["edit", "--facts"])
            .arg(&facts)
            .arg("--hparams")
            .arg(&typo)
            .arg("--patch")
            .arg(&patch),
        "did you mean \"mom2_update_weight\"",
    );
    let no_subject = write(
        d,
        "nosub.jsonl",
        "{\"subject\": \"Eiffel Tow\", \"prompt\": \"The {}er is in\", \"target_new\": \"Rome\"}\n",
    );
    fails_with(
        eamet()
            .args(["edit", "--facts"])
            .arg(&no_subject)
            .arg("--patch")
            .arg(&patch),
        "subject",
    );
    fails_with(
        eamet()
            .args(["edit", "--method", "rome", "--facts"])
            .arg(&facts),
        "method",
    );
    fails_with(
        eamet()
            .args(["edit", "--layers", "3,99", "--facts"])
            .arg(&facts)
            .arg("--patch")
            .arg(&patch),
        "out of range",
    );
    let empty = write(d, "empty.txt", "\n\n");
    fails_with(
        eamet()
            .args(["edit", "--facts"])
            .arg(&facts)
            .arg("--corpus")
            .arg(&empty)
            .arg("--patch")
            .arg(&patch),
        "no documents",
    );
    assert!(!patch.exists(), "a failed edit wrote its patch");
    let existing = write(d, "existing.safetensors", "keep me");
    fails_with(
        eamet()
            .args(["edit", "--facts"])
            .arg(&facts)
            .arg("--patch")
            .arg(&existing),
        "already exists",
    );
    assert_eq!(std::fs::read_to_string(&existing).unwrap(), "keep me");
    fails_with(
        eamet()
            .args(["eval", "--dataset"])
            .arg(d.join("nope.json"))
            .arg("--report")
            .arg(d.join("r")),
        "no such file",
    );
    fails_with(
        eamet()
            .args(["eval", "--same-subject", "--dataset"])
            .arg(fixture("counterfact_rome_3.json"))
            .arg("--report")
            .arg(d.join("r")),
        "no subject occurs in two records",
    );
    fails_with(
        eamet()
            .args(["stats", "--shard", "3/2", "--out"])
            .arg(d.join("shards")),
        "shard",
    );
    fails_with(
        eamet()
            .args(["apply-patch", "--patch"])
            .arg(d.join("nope.safetensors")),
        "no such file",
    );
    fails_with(
        eamet()
            .args(["stats", "merge"])
            .arg(d.join("nope.safetensors")),
        "no such file",
    );
    // Nothing but our own inputs in the directory.
    let mut names: Vec<String> = std::fs::read_dir(d)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    assert_eq!(
        names,
        [
            "bad.jsonl",
            "earlier-run",
            "empty.txt",
            "existing.safetensors",
            "facts.jsonl",
            "nosub.jsonl",
            "typo.json"
        ]
    );
}

#[test]
fn generate_edit_patch_round_trip() {
    if !model_ready() {
        return;
    }
    let out = eamet()
        .args([
            "generate",
            "--prompt",
            "The Eiffel Tower is located in the city of",
            "--max-new",
            "3",
        ])
        .output()
        .unwrap();
    assert!(out.status.success());
    assert!(String::from_utf8_lossy(&out.stdout).contains("Paris"));

    let dir = tempfile::tempdir().unwrap();
    let facts = write(dir.path(), "facts.jsonl", TWO_FACTS);
    let patch = dir.path().join("edit.safetensors");
    let out = eamet()
        .args([
            "edit", "--method", "memit", "--block", "2", "--json", "--eval", "--facts",
        ])
        .arg(&facts)
        .arg("--patch")
        .arg(&patch)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["edited"], 2, "{v}");
    // --eval: strict metrics of the two facts before and after, as [mean, records].
    assert_eq!(
        v["pre"]["strict.efficacy"],
        serde_json::json!([0.0, 2]),
        "{v}"
    );
    assert_eq!(
        v["post"]["strict.efficacy"],
        serde_json::json!([1.0, 2]),
        "{v}"
    );
    assert_eq!(v["schedule"]["batched"]["batch"], 2, "{v}");
    // Two facts against the keys of 256 documents: nearly all of each residual lands, along it (0.98
    // and 0.9999 for the first fact alone).
    let fit = v["written_fit"].as_array().unwrap();
    assert_eq!(fit.len(), 2, "{v}");
    assert!(
        fit.iter()
            .all(|f| f["share"].as_f64().unwrap() > 0.8 && f["cosine"].as_f64().unwrap() > 0.95),
        "{v}"
    );
    assert!(patch.exists());

    let out = eamet()
        .args(["apply-patch", "--json", "--max-new", "3", "--patch"])
        .arg(&patch)
        .args(["--prompt", "The Colosseum is located in the city of"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let c = &v["completions"][0];
    assert!(c["before"].as_str().unwrap().contains("Rome"), "{v}");
    assert!(c["after"].as_str().unwrap().contains("London"), "{v}");

    // The patch exported as GGUF runs in our loader with the edit in it.
    let gguf = dir.path().join("edited.gguf");
    let out = eamet()
        .arg("export")
        .arg("--patch")
        .arg(&patch)
        .arg("--out")
        .arg(&gguf)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = eamet()
        .args(["generate", "--json", "--max-new", "3", "--model"])
        .arg(&gguf)
        .args(["--prompt", "The Colosseum is located in the city of"])
        .output()
        .unwrap();
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(
        v[0]["completion"].as_str().unwrap().contains("London"),
        "{v}"
    );

    // Bad export requests: one line each, nothing written.
    let model = eamet::hooks::paths::default_model().unwrap();
    let new = dir.path().join("new.gguf");
    let export = |patch: &Path, out: &Path| {
        let mut c = eamet();
        c.arg("export")
            .arg("--patch")
            .arg(patch)
            .arg("--out")
            .arg(out);
        c
    };
    let bytes = std::fs::read(&patch).unwrap();
    let truncated = write_bytes(
        dir.path(),
        "truncated.safetensors",
        &bytes[..bytes.len() / 2],
    );
    fails_with(&mut export(&truncated, &new), "patch");
    let corrupt = write_bytes(dir.path(), "corrupt.safetensors", b"not a patch at all");
    fails_with(&mut export(&corrupt, &new), "patch");
    let mut p = eamet::hooks::patch::Patch::load(&patch).unwrap();
    p.meta.base_sha256 = "0".repeat(64);
    let other = dir.path().join("other-model.safetensors");
    p.save(&other, &[], false).unwrap();
    fails_with(&mut export(&other, &new), "refusing to apply");
    let mut p = eamet::hooks::patch::Patch::load(&patch).unwrap();
    let first = *p.deltas.keys().next().unwrap();
    let d = p.deltas.remove(&first).unwrap();
    p.deltas.insert(99, d);
    let far = dir.path().join("layer-99.safetensors");
    p.save(&far, &[], false).unwrap();
    fails_with(&mut export(&far, &new), "layer 99");
    fails_with(
        export(&patch, &new).args(["--edited-type", "q3_k"]),
        "unknown edited-tensor type",
    );
    fails_with(&mut export(&patch, &model), "input model");
    fails_with(&mut export(&patch, &gguf), "exists");
    assert!(!new.exists());
    let left: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().contains(".tmp-"))
        .collect();
    assert!(left.is_empty(), "{left:?}");
}

fn write_bytes(dir: &Path, name: &str, bytes: &[u8]) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, bytes).unwrap();
    p
}

#[test]
fn stats_shards_merge_to_the_whole() {
    if !model_ready() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let shards = dir.path().join("shards");
    let mut tokens = 0;
    for s in ["0/2", "1/2"] {
        let out = eamet()
            .args([
                "stats",
                "--layers",
                "4",
                "--samples",
                "6",
                "--max-tokens",
                "12",
                "--json",
                "--shard",
                s,
                "--out",
            ])
            .arg(&shards)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        assert_eq!(v[0]["samples"], 3);
        tokens += v[0]["tokens"].as_u64().unwrap();
    }
    let merged = dir.path().join("merged.safetensors");
    let out = eamet()
        .args(["stats", "merge", "--json", "--out"])
        .arg(&merged)
        .arg(shards.join("shard-0-of-2-layer4.safetensors"))
        .arg(shards.join("shard-1-of-2-layer4.safetensors"))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["samples"], 6);
    assert_eq!(v["tokens"].as_u64().unwrap(), tokens);
    assert!(merged.exists());
}

#[test]
fn score_and_eval_on_small_inputs() {
    if !model_ready() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let facts = write(dir.path(), "facts.jsonl", TWO_FACTS);
    let out = eamet()
        .args(["score", "--json", "--facts"])
        .arg(&facts)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["facts"], 2);
    assert_eq!(v["scores"].as_array().unwrap().len(), 4);
    // Two facts, j < i: fact 0 has no neighbours, fact 1 has one (softmax of one = 1): A = 0.
    assert_eq!(v["scores"][0]["total"], 0.0);

    let report = dir.path().join("report");
    let out = eamet()
        .args([
            "eval",
            "--method",
            "memit",
            "--n",
            "2",
            "--no-fluency",
            "--no-robustness",
            "--extra-sample",
            "1",
            "--batch-size",
            "1",
            "--json",
            "--dataset",
        ])
        .arg(fixture("counterfact_rome_3.json"))
        .arg("--report")
        .arg(&report)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let post = v["post"]["strict.efficacy"][0].as_f64().unwrap();
    let pre = v["pre"]["strict.efficacy"][0].as_f64().unwrap();
    assert!(post > pre, "strict efficacy pre {pre} post {post}");
    let rep: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(report.join("report.json")).unwrap())
            .unwrap();
    assert_eq!(rep["info"]["n"], 2);
    assert_eq!(rep["records"].as_array().unwrap().len(), 2);
    // --batch-size 1: two batches, a checkpoint after each (records edited so far), and the
    // efficacy-vs-edits plot.
    let cps = rep["checkpoints"].as_array().unwrap();
    assert_eq!(cps.len(), 2, "{cps:?}");
    assert_eq!(
        (cps[0]["edits"].as_u64(), cps[1]["edits"].as_u64()),
        (Some(1), Some(2))
    );
    assert_eq!(
        cps[0]["summary"]["strict.efficacy"][1], 1,
        "one record evaluated"
    );
    assert_eq!(cps[1]["summary"]["strict.efficacy"][1], 2);
    assert!(report.join("efficacy_vs_edits.svg").exists());
    // The solver's diagnostics, one line per batch and edited layer.
    let layers = rep["info"]["hparams"]["layers"].as_array().unwrap().len();
    let solves: Vec<&str> = rep["solves"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l.as_str().unwrap())
        .collect();
    assert_eq!(solves.len(), 2 * layers, "{solves:?}");
    assert!(
        solves[0].starts_with("batch 0: layer ") && solves[layers].starts_with("batch 1: layer "),
        "{solves:?}"
    );
    assert!(
        solves
            .iter()
            .all(|l| l.contains(": memit (") && l.contains("relative residual")),
        "{solves:?}"
    );
    assert!(rep["info"]["schedule"]
        .as_str()
        .unwrap()
        .contains("batches of 1"));
    // How much of each residual the edit wrote: one entry per fact (both batches), a positive
    // share (the solve writes along δ) and a cosine in [-1, 1].
    let fit = rep["written_fit"].as_array().unwrap();
    assert_eq!(fit.len(), 2, "{fit:?}");
    for f in fit {
        let (share, cos) = (f["share"].as_f64().unwrap(), f["cosine"].as_f64().unwrap());
        assert!(f["norm"].as_f64().unwrap() > 0.0 && share > 0.0, "{f}");
        assert!((-1.0..=1.0).contains(&cos), "{f}");
    }
    // Raw generations pre and post for every prompt.
    let fx: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(fixture("counterfact_rome_3.json")).unwrap())
            .unwrap();
    let expected = 1
        + fx[0]["paraphrase_prompts"].as_array().unwrap().len()
        + fx[0]["neighborhood_prompts"].as_array().unwrap().len();
    for side in 0..2 {
        let prompts = rep["records"][0][side]["prompts"].as_array().unwrap();
        assert_eq!(prompts.len(), expected);
        assert!(prompts
            .iter()
            .all(|p| !p["generation"].as_str().unwrap().is_empty()));
    }
    assert!(report.join("report.md").exists());
    assert!(report.join("misalignment_histogram.svg").exists());
    // Neighbourhood drift over every neighbourhood prompt of both records: the edit moved it.
    let neigh: usize = (0..2)
        .map(|r| fx[r]["neighborhood_prompts"].as_array().unwrap().len())
        .sum();
    assert_eq!(rep["drift"]["prompts"], neigh);
    assert!(rep["drift"]["kl_mean"].as_f64().unwrap() > 0.0);
    let with_kl = rep["records"][0][1]["prompts"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|p| p["kl"].is_number())
        .count();
    assert_eq!(
        with_kl,
        fx[0]["neighborhood_prompts"].as_array().unwrap().len()
    );
    assert!(report.join("neighbourhood_kl.svg").exists());
    // The fluency / robustness sample: one of the two records, listed.
    assert_eq!(rep["extra_records"].as_array().unwrap().len(), 1);
    // The prefixed prompts run on that sample too; the unprefixed ones on both records.
    assert_eq!(rep["post"]["strict.efficacy_prefixed"][1], 1);
    assert_eq!(rep["post"]["strict.efficacy"][1], 2);
    assert_eq!(rep["info"]["eval_config"]["prefixed_scope"], "sample");
    // Key statistics of another size (8 documents of a given text) reuse that pre-edit
    // evaluation only if the context prefixes stay cut from the same model-written documents:
    // by default they follow `mom2_n_samples` and --pre-from refuses; --prefix-docs 256 (the
    // presets' size) keeps them.
    let generic = write(
        dir.path(),
        "generic.txt",
        &(0..40)
            .map(|i| format!("Line {i} of some ordinary text about rivers, towns and weather.\n"))
            .collect::<String>(),
    );
    let preset =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../../hparams/MEMIT/smollm2-135m.json");
    let mut hp: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(preset).unwrap()).unwrap();
    hp["mom2_n_samples"] = 8.into();
    let hp = write(dir.path(), "hp.json", &hp.to_string());
    let small_stats = |report: &Path| {
        let mut c = eamet();
        c.args([
            "eval",
            "--method",
            "memit",
            "--n",
            "2",
            "--no-fluency",
            "--no-robustness",
            "--extra-sample",
            "1",
            "--json",
            "--dataset",
        ])
        .arg(fixture("counterfact_rome_3.json"))
        .arg("--hparams")
        .arg(&hp)
        .arg("--stats-corpus")
        .arg(&generic)
        .arg("--pre-from")
        .arg(dir.path().join("report"))
        .arg("--report")
        .arg(report);
        c
    };
    fails_with(
        &mut small_stats(&dir.path().join("report-8")),
        "context prefix documents",
    );
    let out = small_stats(&dir.path().join("report-8-pinned"))
        .args(["--prefix-docs", "256"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // ... and the pre-edit evaluation is the first report's, reused rather than recomputed.
    let read = |d: &str| -> serde_json::Value {
        serde_json::from_str(
            &std::fs::read_to_string(dir.path().join(d).join("report.json")).unwrap(),
        )
        .unwrap()
    };
    let (first, pinned) = (read("report"), read("report-8-pinned"));
    assert_eq!(pinned["pre"], first["pre"]);
    assert!(
        pinned["timings"]
            .as_array()
            .unwrap()
            .iter()
            .any(|t| t[0] == "evaluate (pre): reused"),
        "{}",
        pinned["timings"]
    );
    // All edits at once: one solve line per edited layer, without a batch prefix, and one
    // written-residual entry per fact.
    let layers = pinned["info"]["hparams"]["layers"]
        .as_array()
        .unwrap()
        .len();
    let solves = pinned["solves"].as_array().unwrap();
    assert_eq!(solves.len(), layers, "{solves:?}");
    assert!(
        solves
            .iter()
            .all(|l| l.as_str().unwrap().starts_with("layer ")),
        "{solves:?}"
    );
    assert_eq!(pinned["written_fit"].as_array().unwrap().len(), 2);
    // Each report names what its key statistics were collected over.
    let corpus = |r: &serde_json::Value| r["info"]["stats_corpus"].as_str().unwrap().to_string();
    assert!(
        corpus(&pinned).contains("generic.txt"),
        "{}",
        corpus(&pinned)
    );
    assert!(
        corpus(&first).starts_with("model-generated(") && corpus(&first).contains("sha256 "),
        "{}",
        corpus(&first)
    );
    // Reports side by side.
    let summary = dir.path().join("summary");
    let out = eamet()
        .arg("summarize")
        .arg(&report)
        .arg("--out")
        .arg(&summary)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let md = std::fs::read_to_string(summary.join("summary.md")).unwrap();
    assert!(
        md.contains("| counterfact_rome_3.json | 2 | memit |"),
        "{md}"
    );
    assert!(summary.join("strict_efficacy_vs_n.svg").exists());
    // A second run into the same directory is refused.
    fails_with(
        eamet()
            .args(["eval", "--n", "1", "--dataset"])
            .arg(fixture("counterfact_rome_3.json"))
            .arg("--report")
            .arg(&report),
        "already holds a report",
    );
}
