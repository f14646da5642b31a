//! The shipped hyperparameter files: the SmolLM2 and Gemma 3 files are exactly the presets
//! (`EditHparams::smollm2`, `EditHparams::gemma3_270m`), every file parses, passes the checks,
//! and names layers the model it is for has. `EAMET_WRITE_HPARAMS=1 cargo test --test hparams`
//! rewrites those files from the presets.

use eamet::{EditHparams, Method};
use std::path::{Path, PathBuf};

const DIR: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/hparams");

fn read(rel: &str) -> EditHparams {
    let p = Path::new(DIR).join(rel);
    let text = std::fs::read_to_string(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
    EditHparams::from_json(&text).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}

#[test]
fn preset_files_are_the_presets() {
    let smollm2 = EditHparams::smollm2;
    let gemma3 = EditHparams::gemma3_270m;
    type Preset = fn(Method) -> EditHparams;
    let files: [(&str, Method, Preset); 7] = [
        ("smollm2-135m.json", Method::Eamet, smollm2),
        ("EAMET/smollm2-135m.json", Method::Eamet, smollm2),
        ("MEMIT/smollm2-135m.json", Method::Memit, smollm2),
        ("ALPHAEDIT/smollm2-135m.json", Method::AlphaEdit, smollm2),
        ("EAMET/gemma3-270m.json", Method::Eamet, gemma3),
        ("MEMIT/gemma3-270m.json", Method::Memit, gemma3),
        ("ALPHAEDIT/gemma3-270m.json", Method::AlphaEdit, gemma3),
    ];
    for (rel, method, preset) in files {
        let preset = preset(method);
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

/// One sweep setting, as its committed report states it.
struct Setting {
    name: String,
    lambda: f64,
    /// `clamp_ks_factor`.
    clamp: f64,
    efficacy: f64,
    generalization: f64,
    kl: f64,
}

/// The committed sweep settings of `method` for `model` (`docs/sweep/<model>`) at `layers` with
/// that model's presets' other values (the 256 model-written statistics documents, the method's clamp
/// and, for EAMET, the NLL gate at 0.5).
fn sweep_settings(model: &str, method: &str, layers: &[usize]) -> Vec<Setting> {
    let m = if method == "memit" {
        Method::Memit
    } else {
        Method::Eamet
    };
    let preset = match model {
        "smollm2-135m" => EditHparams::smollm2(m),
        "gemma3-270m" => EditHparams::gemma3_270m(m),
        other => panic!("no presets for {other}"),
    }
    .residual;
    let kind = serde_json::to_value(preset.weight_decay_method).unwrap();
    sweep_settings_clamped(model, method, layers, &kind, Some(preset.clamp_ks_factor))
}

/// As [`sweep_settings`], at the residual clamp `clamp_kind` (`"norm"`, `"fix_ks"`) with
/// `clamp_ks_factor` = `clamp` (any factor for `None`).
fn sweep_settings_clamped(
    model: &str,
    method: &str,
    layers: &[usize],
    clamp_kind: &serde_json::Value,
    clamp: Option<f64>,
) -> Vec<Setting> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("docs/sweep")
        .join(model);
    let mut out = Vec::new();
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path().join("report.json");
        let Ok(text) = std::fs::read_to_string(&path) else {
            continue;
        };
        let r: serde_json::Value = serde_json::from_str(&text).unwrap();
        let hp = &r["info"]["hparams"];
        // The statistics corpus is the default (model-written text): recorded in newer reports,
        // else read from the command line (no --stats-corpus).
        let stats_default = match r["info"]["stats_corpus"].as_str() {
            Some(c) => c.starts_with("model-generated("),
            None => !r["info"]["command"]
                .as_str()
                .unwrap_or("")
                .contains("--stats-corpus"),
        };
        // The NLL gate's threshold (EAMET's schedule) must be the presets' 0.5; MEMIT has none.
        let gate_default = hp["alignment_schedule"]
            .get("threshold")
            .is_none_or(|t| t.as_f64() == Some(0.5));
        if r["info"]["method"]
            .as_str()
            .map(str::to_lowercase)
            .as_deref()
            != Some(method)
            || hp["layers"] != serde_json::json!(layers)
            || clamp.is_some_and(|c| hp["clamp_ks_factor"].as_f64() != Some(c))
            || &hp["weight_decay_method"] != clamp_kind
            || hp["mom2_n_samples"] != 256
            || !stats_default
            || !gate_default
        {
            continue;
        }
        out.push(Setting {
            name: path.parent().unwrap().display().to_string(),
            lambda: hp["mom2_update_weight"].as_f64().unwrap(),
            clamp: hp["clamp_ks_factor"].as_f64().unwrap(),
            efficacy: r["post"]["strict.efficacy"][0].as_f64().unwrap(),
            generalization: r["post"]["strict.generalization"][0].as_f64().unwrap(),
            kl: r["drift"]["kl_mean"].as_f64().unwrap(),
        });
    }
    out
}

/// docs/hparams.md's rule: on the method's Pareto front of strict efficacy against mean
/// neighbourhood KL, the lowest-KL setting whose efficacy is within 0.02 of the best; KLs within
/// 0.005 of each other tie, and the better strict generalization breaks the tie.
fn choose(settings: &[Setting]) -> &Setting {
    let dominated = |s: &Setting| {
        settings.iter().any(|o| {
            o.kl <= s.kl && o.efficacy >= s.efficacy && (o.kl < s.kl || o.efficacy > s.efficacy)
        })
    };
    let front: Vec<&Setting> = settings.iter().filter(|s| !dominated(s)).collect();
    let best = front.iter().map(|s| s.efficacy).fold(f64::MIN, f64::max);
    let near: Vec<&Setting> = front
        .into_iter()
        .filter(|s| s.efficacy >= best - 0.02 - 1e-12)
        .collect();
    let low = near.iter().map(|s| s.kl).fold(f64::MAX, f64::min);
    near.into_iter()
        .filter(|s| s.kl <= low + 0.005)
        .max_by(|a, b| a.generalization.total_cmp(&b.generalization))
        .unwrap()
}

#[test]
fn preset_lambda_is_the_sweeps_choice() {
    for (method, preset) in [("memit", Method::Memit), ("eamet", Method::Eamet)] {
        let settings = sweep_settings("smollm2-135m", method, &[3, 4]);
        assert!(
            settings.len() >= 5,
            "{method}: the committed sweep (docs/sweep/smollm2-135m) has {} settings at layers 3,4",
            settings.len()
        );
        let chosen = choose(&settings);
        let lambda = match EditHparams::smollm2(preset).mom2_update_weight {
            eamet::LayerWeights::One(x) => x,
            eamet::LayerWeights::PerLayer(v) => v[0],
        };
        assert_eq!(
            lambda, chosen.lambda,
            "{method}: the rule picks {}",
            chosen.name
        );
    }
    // Gemma 3 270M: λ was swept with MEMIT at its one layer under the block-output clamp
    // (`norm`, docs/sweep/gemma3-270m, 100 edits); its presets use that λ for every method
    // (EAMET's was not swept on this model).
    let layer = [eamet::GEMMA3_270M_LAYER];
    let norm = serde_json::json!("norm");
    let settings = sweep_settings_clamped("gemma3-270m", "memit", &layer, &norm, Some(2.0));
    assert!(settings.len() >= 3, "gemma3: {} settings", settings.len());
    let chosen = choose(&settings);
    assert_eq!(
        eamet::GEMMA3_270M_LAMBDA,
        chosen.lambda,
        "gemma3: the rule picks {}",
        chosen.name
    );
    // Then the clamp at that λ: the preset's `fix_ks` clamp dominates the block-output one
    // (more strict efficacy, less neighbourhood KL), so it is on the front and the other not.
    let at = |v: Vec<Setting>| {
        v.into_iter()
            .find(|s| s.lambda == eamet::GEMMA3_270M_LAMBDA)
            .expect("a setting at the preset λ")
    };
    let clamped = at(sweep_settings("gemma3-270m", "memit", &layer));
    let unclamped = at(settings);
    assert!(
        clamped.efficacy > unclamped.efficacy && clamped.kl < unclamped.kl,
        "gemma3 clamp: {} ({}, {}) vs {} ({}, {})",
        clamped.name,
        clamped.efficacy,
        clamped.kl,
        unclamped.name,
        unclamped.efficacy,
        unclamped.kl
    );
    // The rule on a hand-made front: (λ, efficacy, generalization, KL).
    let s = |lambda, efficacy, generalization, kl| Setting {
        name: format!("{lambda}"),
        lambda,
        clamp: 1.0,
        efficacy,
        generalization,
        kl,
    };
    let toy = [
        s(1.0, 0.90, 0.2, 0.50),
        s(2.0, 0.89, 0.2, 0.30),
        s(3.0, 0.885, 0.3, 0.298), // within 0.005 of λ = 2: generalization decides
        s(4.0, 0.80, 0.1, 0.10),
        s(5.0, 0.85, 0.9, 0.40), // dominated by λ = 2
    ];
    assert_eq!(choose(&toy).lambda, 3.0);
}

/// A model that normalizes its MLP output before the residual add (Gemma 3's post-FFN norm)
/// takes one edited layer: a spread over several is refused before any work, naming why; the
/// Gemma 3 presets pass on the real model's configuration (read from its GGUF header when
/// set-up fetched it).
/// Gemma 3 270M's `fix_ks` clamp factor, per method, is the rule's choice among the committed
/// development-slice settings at the preset layer and λ (MEMIT: 1 and 3; EAMET: 1, 3 and 12,
/// the SmolLM2 preset's).
#[test]
fn gemma3_clamp_is_the_sweeps_choice() {
    let fix_ks = serde_json::json!("fix_ks");
    for (method, at_least) in [("memit", 2), ("eamet", 3)] {
        let settings: Vec<Setting> = sweep_settings_clamped(
            "gemma3-270m",
            method,
            &[eamet::GEMMA3_270M_LAYER],
            &fix_ks,
            None,
        )
        .into_iter()
        .filter(|s| s.lambda == eamet::GEMMA3_270M_LAMBDA)
        .collect();
        assert!(
            settings.len() >= at_least,
            "{method}: {} clamp settings in docs/sweep/gemma3-270m",
            settings.len()
        );
        let chosen = choose(&settings);
        assert_eq!(
            eamet::GEMMA3_270M_CLAMP_KS,
            chosen.clamp,
            "{method}: the rule picks {}",
            chosen.name
        );
    }
}

#[test]
fn a_post_norm_model_takes_one_layer() {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("crates/eamet-hooks/tests/golden/tiny-llama/config.json");
    let mut cfg: eamet::hooks::ModelConfig = {
        let m = eamet::hooks::LlamaModel::from_hf_dir(
            path.parent().unwrap(),
            eamet::hooks::tch::Device::Cpu,
        )
        .unwrap();
        eamet::hooks::EditableLm::config(&m).clone()
    };
    let mut hp = EditHparams::smollm2(Method::Memit);
    hp.layers = vec![0, 1];
    hp.check_model(&cfg).unwrap();
    cfg.sandwich_norms = true;
    let err = hp.check_model(&cfg).unwrap_err().to_string();
    assert!(
        err.contains("layers [0, 1]")
            && err.contains("post-FFN norm")
            && err.contains("--layers 1"),
        "{err}"
    );
    hp.layers = vec![1];
    hp.check_model(&cfg).unwrap();

    let gemma = eamet::hooks::paths::gemma3_model().filter(|p| p.exists());
    let Some(gemma) = gemma else {
        eprintln!("skipped the Gemma 3 half: its GGUF is not set up (cargo xtask setup --model gemma3-270m)");
        return;
    };
    let f = eamet::hooks::gguf::GgufFile::open(&gemma).unwrap();
    let cfg = eamet::hooks::ModelConfig::from_gguf(&f).unwrap();
    assert!(cfg.sandwich_norms);
    for method in [Method::Memit, Method::Eamet, Method::AlphaEdit] {
        EditHparams::gemma3_270m(method).check_model(&cfg).unwrap();
        assert!(EditHparams::smollm2(method).check_model(&cfg).is_err());
    }
}
