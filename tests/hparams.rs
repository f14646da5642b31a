//! The shipped hyperparameter files: the SmolLM2 files are exactly the presets
//! (`EditHparams::smollm2`), every file parses, passes the checks, and names layers the model it
//! is for has. `EAMET_WRITE_HPARAMS=1 cargo test --test hparams` rewrites the SmolLM2 files from
//! the presets.

use eamet::{EditHparams, Method};
use std::path::{Path, PathBuf};

const DIR: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/hparams");

fn read(rel: &str) -> EditHparams {
    let p = Path::new(DIR).join(rel);
    let text = std::fs::read_to_string(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
    EditHparams::from_json(&text).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}

#[test]
fn smollm2_files_are_the_presets() {
    let files = [
        ("smollm2-135m.json", Method::Eamet),
        ("EAMET/smollm2-135m.json", Method::Eamet),
        ("MEMIT/smollm2-135m.json", Method::Memit),
        ("ALPHAEDIT/smollm2-135m.json", Method::AlphaEdit),
    ];
    for (rel, method) in files {
        let preset = EditHparams::smollm2(method);
        if std::env::var_os("EAMET_WRITE_HPARAMS").is_some() {
            let text = serde_json::to_string_pretty(&preset).unwrap();
            std::fs::write(Path::new(DIR).join(rel), text + "\n").unwrap();
        }
        assert_eq!(read(rel), preset, "{rel}");
    }
}

#[test]
fn every_file_checks_and_fits_its_model() {
    // (file, blocks of the model it is for)
    let files = [
        ("EAMET/llama2-7b.json", 32),
        ("EAMET/llama3-8b.json", 32),
        ("EAMET/qwen2.5-7b.json", 28),
        ("MEMIT/llama2-7b.json", 32),
        ("MEMIT/llama3-8b.json", 32),
        ("MEMIT/qwen2.5-7b.json", 28),
        ("ALPHAEDIT/llama3-8b.json", 32),
    ];
    for (rel, n_layers) in files {
        let hp = read(rel);
        hp.residual.check().unwrap_or_else(|e| panic!("{rel}: {e}"));
        assert!(hp.layers.iter().all(|&l| l < n_layers), "{rel}");
        let v_loss = hp
            .residual
            .v_loss_layer
            .expect("7B files name v_loss_layer");
        assert_eq!(v_loss, n_layers - 1, "{rel}");
        // The values ALGORITHM.md §3 / REFERENCE-NOTES §5 give.
        let lambda0 = match &hp.mom2_update_weight {
            eamet::LayerWeights::One(x) => *x,
            eamet::LayerWeights::PerLayer(v) => v[0],
        };
        let want = match rel {
            "EAMET/llama2-7b.json" => 4000.0,
            "EAMET/llama3-8b.json" => 15000.0,
            "EAMET/qwen2.5-7b.json" => 6000.0,
            "MEMIT/llama2-7b.json" => 15000.0,
            "MEMIT/llama3-8b.json" => 1000.0,
            "MEMIT/qwen2.5-7b.json" => 500.0,
            "ALPHAEDIT/llama3-8b.json" => {
                // AlphaEdit's solve has no λC term (ALGORITHM.md §6): what it uses is the
                // null-space threshold on C's eigenvalues and the ridge α = L2.
                assert_eq!(hp.nullspace_threshold, 2e-2, "{rel}");
                assert_eq!(hp.l2, 10.0, "{rel}");
                assert_eq!(hp.layers, [4, 5, 6, 7, 8], "{rel}");
                assert_eq!(hp.residual.v_lr, 0.1, "{rel}");
                assert_eq!(hp.residual.clamp_norm_factor, 0.75, "{rel}");
                assert_eq!(hp.mom2_n_samples, 100_000, "{rel}");
                continue;
            }
            other => panic!("{other}: no expected λ written down for this file"),
        };
        assert_eq!(lambda0, want, "{rel}");
        assert_eq!(hp.mom2_n_samples, 100_000, "{rel}");
    }
    // A field of the wrong type is an error naming it.
    let err = EditHparams::from_json(r#"{"layers": "3,4"}"#).unwrap_err();
    assert!(
        err.to_string().contains("layers") || err.to_string().contains("sequence"),
        "{err}"
    );
}

/// Every hyperparameter file of the reference repository loads (its unused fields reported,
/// never an error), and the values we use come through.
#[test]
fn all_23_reference_files_load() {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/reference-hparams");
    let mut n = 0;
    for dir in std::fs::read_dir(&root).unwrap().flatten() {
        if !dir.path().is_dir() {
            continue;
        }
        for f in std::fs::read_dir(dir.path()).unwrap().flatten() {
            let text = std::fs::read_to_string(f.path()).unwrap();
            let (hp, ignored) = EditHparams::from_json_reporting(&text)
                .unwrap_or_else(|e| panic!("{}: {e}", f.path().display()));
            let raw: serde_json::Value = serde_json::from_str(&text).unwrap();
            assert_eq!(
                serde_json::to_value(&hp.layers).unwrap(),
                raw["layers"],
                "{}",
                f.path().display()
            );
            assert_eq!(
                hp.mom2_n_samples as u64,
                raw["mom2_n_samples"].as_u64().unwrap()
            );
            assert!(ignored.iter().any(|k| k == "rewrite_module_tmp"));
            assert!(ignored.iter().any(|k| k == "mom2_dataset"));
            for k in &ignored {
                assert!(
                    eamet::editor::REFERENCE_ONLY_FIELDS.contains(&k.as_str()),
                    "{k}"
                );
            }
            n += 1;
        }
    }
    assert_eq!(n, 23);
}

#[test]
fn misspelled_fields_are_errors_that_suggest_the_name() {
    let err = EditHparams::from_json(r#"{"layers": [3, 4], "mom2_update_wieght": 1000}"#)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("\"mom2_update_wieght\"")
            && err.contains("did you mean \"mom2_update_weight\""),
        "{err}"
    );
    // A misspelled reference-only field is caught too.
    let err = EditHparams::from_json(r#"{"rewrite_modul_tmp": "x"}"#)
        .unwrap_err()
        .to_string();
    assert!(err.contains("rewrite_module_tmp"), "{err}");
    // Nothing close: no suggestion.
    let err = EditHparams::from_json(r#"{"banana": 1}"#)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("unknown field \"banana\"") && !err.contains("did you mean"),
        "{err}"
    );
    // Reference-only fields whose value would change the method are refused.
    let err = EditHparams::from_json(r#"{"fact_token": "last"}"#)
        .unwrap_err()
        .to_string();
    assert!(err.contains("fact_token"), "{err}");
    let err = EditHparams::from_json(r#"{"norm_factor": 0.5}"#)
        .unwrap_err()
        .to_string();
    assert!(err.contains("norm_factor"), "{err}");
    // Known fields and the accepted reference-only ones pass; the latter are reported.
    let (hp, ignored) = EditHparams::from_json_reporting(
        r#"{"layers": [2, 5], "L2": 3.0, "mom2_dataset": "wikipedia", "norm_factor": 0}"#,
    )
    .unwrap();
    assert_eq!(hp.layers, [2, 5]);
    assert_eq!(hp.l2, 3.0);
    assert_eq!(ignored, ["mom2_dataset", "norm_factor"]);
    // An optional field that presets leave unset (and do not serialize) is still known.
    let hp = EditHparams::from_json(r#"{"early_stop_nll": 0.05}"#).unwrap();
    assert_eq!(hp.residual.early_stop_nll, Some(0.05));
    assert!(!serde_json::to_string(&EditHparams::default())
        .unwrap()
        .contains("early_stop_nll"));
}
