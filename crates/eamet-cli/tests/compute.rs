//! `--dtype` and `--device` on every command that runs the model: bad values are clap's usage
//! errors listing the choices; CUDA without CUDA in this build is one clear error line (before
//! any file is read); `export` keeps `--dtype` as the name of its output dtype; and SmolLM2
//! completes in bf16 (when the model of `cargo xtask setup` is present).

use assert_cmd::Command;
use predicates::prelude::*;

const MODEL_COMMANDS: [&[&str]; 7] = [
    &["edit"],
    &["eval", "--dataset", "missing.json", "--report", "r"],
    &["stats"],
    &["score"],
    &["generate", "--prompt", "x"],
    &["apply-patch", "--patch", "missing.safetensors"],
    &["info"],
];

/// The CLI, one OpenMP thread per process (the harness runs these tests in parallel; see cli.rs).
fn eamet() -> Command {
    let mut c = Command::cargo_bin("eamet").unwrap();
    c.env("OMP_NUM_THREADS", "1");
    c
}

#[test]
fn dtype_and_device_values_are_checked_by_clap() {
    for cmd in MODEL_COMMANDS {
        eamet()
            .args(cmd)
            .args(["--dtype", "f64"])
            .assert()
            .code(2)
            .stderr(predicate::str::contains("--dtype"))
            .stderr(predicate::str::contains(
                "[possible values: f32, bf16, f16]",
            ));
        eamet()
            .args(cmd)
            .args(["--device", "gpu"])
            .assert()
            .code(2)
            .stderr(predicate::str::contains("--device"))
            .stderr(predicate::str::contains("cpu, cuda or cuda:N"));
        eamet()
            .arg(cmd[0])
            .arg("--help")
            .assert()
            .success()
            .stdout(predicate::str::contains("--dtype <DTYPE>"))
            .stdout(predicate::str::contains("--device <DEVICE>"));
    }
}

#[test]
fn cuda_without_cuda_is_one_clear_error_line() {
    if eamet::hooks::tch::Cuda::is_available() {
        eprintln!("skipped: CUDA is available here");
        return;
    }
    for cmd in MODEL_COMMANDS {
        for device in ["cuda", "cuda:1"] {
            let out = eamet()
                .args(cmd)
                .args(["--device", device, "--dtype", "bf16"])
                .output()
                .unwrap();
            let err = String::from_utf8_lossy(&out.stderr);
            assert_eq!(out.status.code(), Some(1), "{cmd:?}: {err}");
            let lines: Vec<&str> = err.lines().filter(|l| !l.trim().is_empty()).collect();
            assert_eq!(lines.len(), 1, "{cmd:?}: {err}");
            let l = lines[0];
            assert!(l.starts_with("eamet: error: device cuda:"), "{l}");
            for needle in [
                "CUDA is not available",
                "LIBTORCH",
                "EAMET_CUDA",
                "--device cpu",
            ] {
                assert!(l.contains(needle), "{needle:?} not in {l}");
            }
            assert!(!err.contains("panicked"), "{err}");
        }
    }
}

#[test]
fn export_keeps_dtype_as_its_output_dtype() {
    // `--dtype` and `--out-dtype` name one setting on `export`; they must agree.
    let out = eamet()
        .args([
            "export",
            "--patch",
            "p.safetensors",
            "--out",
            "o",
            "--dtype",
            "bf16",
            "--out-dtype",
            "f16",
        ])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("disagree"));
    // On `edit`, --out-dtype is the output dtype and --dtype the compute dtype: both parse.
    eamet()
        .args(["edit", "--out-dtype", "bf16", "--dtype", "f16", "--help"])
        .assert()
        .success();
}

#[test]
fn smollm2_completes_in_bf16() {
    if !eamet::hooks::paths::default_model().is_some_and(|p| p.exists()) {
        eprintln!("skipped: the SmolLM2 model is missing; run `cargo xtask setup`");
        return;
    }
    let out = eamet()
        .args([
            "generate",
            "--dtype",
            "bf16",
            "--prompt",
            "The Eiffel Tower is located in the city of",
            "--max-new",
            "3",
            "--json",
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let c = v[0]["completion"].as_str().unwrap();
    assert!(c.starts_with(" Paris"), "{c:?}");
}

/// `info` opens a Hugging Face checkpoint directory as well as a GGUF file, and prints its shape
/// once loaded (the tiny random-weight GPT-2 of the golden files: 3 layers, d_model 64).
#[test]
fn info_opens_a_hugging_face_directory() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../eamet-hooks/tests/golden/tiny-gpt2");
    eamet()
        .args(["info", "--model"])
        .arg(&dir)
        .args(["--prompt", "The capital of Japan is"])
        .assert()
        .success()
        .stdout(predicate::str::contains("(Hugging Face checkpoint)"))
        .stdout(predicate::str::contains(
            "(3 layers, d_model 64, d_ff 256, vocabulary",
        ));
}

/// Without `--hparams`, a model that is not SmolLM2-shaped gets the SmolLM2 presets with a note
/// on stderr naming the model's shape (here they do not even fit: layer 3 of 3 layers).
#[test]
fn presets_of_another_model_are_named_on_stderr() {
    let model = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../eamet-hooks/tests/golden/tiny-gpt2");
    let dir = tempfile::tempdir().unwrap();
    let facts = dir.path().join("facts.jsonl");
    std::fs::write(
        &facts,
        r#"{"subject": "Japan", "prompt": "The capital of {} is", "target_new": "Rome"}"#,
    )
    .unwrap();
    eamet()
        .args(["edit", "--model"])
        .arg(&model)
        .arg("--facts")
        .arg(&facts)
        .assert()
        .failure()
        .stderr(predicate::str::contains(
            "note: no --hparams given, so the SmolLM2-135M presets are used",
        ))
        .stderr(predicate::str::contains("(gpt2, 3 layers, d_ff 256)"))
        .stderr(predicate::str::contains("layer 3 is out of range"));
    let hp = dir.path().join("hp.json");
    std::fs::write(&hp, r#"{"layers": [3]}"#).unwrap();
    eamet()
        .args(["edit", "--model"])
        .arg(&model)
        .arg("--facts")
        .arg(&facts)
        .arg("--hparams")
        .arg(&hp)
        .assert()
        .failure()
        .stderr(predicate::str::contains("note: no --hparams").not())
        .stderr(predicate::str::contains("layer 3 is out of range"));
}

/// `summarize --pareto` on two committed reports: the sweep table labels each setting by its
/// directory (the parent's name for a directory called `report`) and marks the fronts.
#[test]
fn summarize_pareto_labels_settings_by_directory() {
    let results =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../docs/results/lam100");
    let dir = tempfile::tempdir().unwrap();
    let setting = dir.path().join("eamet-setting");
    std::fs::create_dir(&setting).unwrap();
    std::os::unix::fs::symlink(
        results.join("counterfact_easyedit_edit-1000-eamet"),
        setting.join("report"),
    )
    .unwrap();
    let out = dir.path().join("out");
    eamet()
        .arg("summarize")
        .arg("--pareto")
        .arg(setting.join("report"))
        .arg(results.join("counterfact_easyedit_edit-1000-memit"))
        .arg("--out")
        .arg(&out)
        .assert()
        .success()
        .stderr(predicate::str::contains("and pareto.md"));
    let md = std::fs::read_to_string(out.join("pareto.md")).unwrap();
    // EAMET has the lower KL and the higher strict efficacy: on both fronts; MEMIT only on
    // its own method's.
    assert!(
        md.contains("| eamet-setting | eamet | 3-4 | 100 | 0.5 |"),
        "{md}"
    );
    assert!(md.contains("| 1.151 / 2.960 | 1.352 | ● ★ |"), "{md}");
    assert!(
        md.contains("| counterfact_easyedit_edit-1000-memit | memit | 3-4 | 100 | - |"),
        "{md}"
    );
    assert!(out.join("pareto.svg").exists() && out.join("pareto.png").exists());
}
