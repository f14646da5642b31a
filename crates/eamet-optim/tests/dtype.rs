//! The residual optimizer on a model that computes in bf16 (tiny Llama fixture): `δ` stays f32,
//! its gradient comes back through the bf16 forward, the NLL falls as in f32; a run directory
//! records the dtype only when it is not f32 (f32 manifests are unchanged), and refuses to mix.

use std::path::PathBuf;

use eamet_hooks::tch::Device;
use eamet_hooks::{Dtype, EditableLm, LlamaModel, LoadOptions};
use eamet_optim::*;

fn tiny(dtype: Dtype) -> LlamaModel {
    let dir =
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../eamet-hooks/tests/golden/tiny-llama");
    LlamaModel::from_hf_dir_with(
        dir,
        LoadOptions {
            device: Device::Cpu,
            dtype,
        },
    )
    .unwrap()
}

fn facts() -> Vec<Fact> {
    vec![
        Fact::new("Eiffel Tower", "The {} is located in the city of", "Rome"),
        Fact::new("Toko Yasuda", "{} plays the", "piano"),
    ]
}

fn hp(steps: usize) -> CheckedResidualHparams {
    ResidualHparams {
        v_num_grad_steps: steps,
        ..ResidualHparams::memit()
    }
    .check()
    .unwrap()
}

#[test]
fn bf16_residuals_fit_and_run_directories_do_not_mix_dtypes() {
    let (m32, m16) = (tiny(Dtype::F32), tiny(Dtype::Bf16));
    let prefixes = ContextPrefixes::from_prefixes(&["The ball is", "It is on"]);
    let prepared = prepare_facts(m32.tokenizer(), &facts(), &prefixes).unwrap();
    let keys32 = compute_keys(&m32, &prepared, 1).unwrap();
    // Keys of the bf16 model come back f32 and close to the f32 ones.
    let keys16 = compute_keys(&m16, &prepared, 1).unwrap();
    let rel =
        (&keys16 - &keys32).mapv(|x| x * x).sum().sqrt() / keys32.mapv(|x| x * x).sum().sqrt();
    assert!(rel < 0.05, "bf16 keys differ from f32 by {rel}");

    let run = |m: &LlamaModel, steps, dir: Option<&std::path::Path>| {
        optimize_residuals(
            m,
            &prepared,
            keys32.view(),
            1,
            &hp(steps),
            Schedule::Independent,
            &RunOptions {
                run_dir: dir,
                ..Default::default()
            },
        )
    };
    let before = run(&m16, 1, None).unwrap();
    let after = run(&m16, 15, None).unwrap();
    let f32_after = run(&m32, 15, None).unwrap();
    for i in 0..2 {
        let (b, a) = (&before.stats[i], &after.stats[i]);
        eprintln!(
            "fact {i}: bf16 nll {:.3} -> {:.3} (f32: {:.3})",
            b.final_nll, a.final_nll, f32_after.stats[i].final_nll
        );
        assert!(a.final_nll < b.final_nll - 0.2, "{i}: {b:?} -> {a:?}");
        assert!(a.final_nll.is_finite() && a.delta_norm > 0.0);
    }

    // An f32 run directory: the manifest is what it was before dtypes existed (no dtype or
    // device entry), it resumes in f32, and a bf16 model is refused.
    let dir = tempfile::tempdir().unwrap();
    let first = run(&m32, 3, Some(dir.path())).unwrap();
    let manifest: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(dir.path().join("residuals/manifest.json")).unwrap(),
    )
    .unwrap();
    let config = manifest["config"].as_object().unwrap();
    assert!(
        !config.contains_key("dtype") && !config.contains_key("device"),
        "{config:?}"
    );
    let again = run(&m32, 3, Some(dir.path())).unwrap();
    assert_eq!(again.resumed, 2);
    assert_eq!(again.deltas, first.deltas);
    let e = run(&m16, 3, Some(dir.path())).unwrap_err();
    assert!(
        matches!(&e, OptimError::RunMismatch { what, .. } if what.contains("configuration")),
        "{e}"
    );
    // A bf16 run directory records its dtype, resumes in bf16, refuses f32.
    let dir16 = tempfile::tempdir().unwrap();
    let first16 = run(&m16, 3, Some(dir16.path())).unwrap();
    let manifest: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(dir16.path().join("residuals/manifest.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(manifest["config"]["dtype"], "bf16");
    let again16 = run(&m16, 3, Some(dir16.path())).unwrap();
    assert_eq!((again16.resumed, &again16.deltas), (2, &first16.deltas));
    assert!(matches!(
        run(&m32, 3, Some(dir16.path())).unwrap_err(),
        OptimError::RunMismatch { .. }
    ));
    assert_eq!(EditableLm::dtype(&m16), Dtype::Bf16);
}
