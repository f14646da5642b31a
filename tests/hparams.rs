//! The shipped hyperparameter files: the SmolLM2 files are exactly the presets
//! (`EditHparams::smollm2`), every file parses, passes the checks, and names layers the model it
//! is for has. `EAMET_WRITE_HPARAMS=1 cargo test --test hparams` rewrites the SmolLM2 files from
//! the presets.

use eamet::{EditHparams, Method};
use std::path::Path;

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
            _ => lambda0,
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
