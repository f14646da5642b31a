//! The examples run and do what they say. `cargo test` builds every example before the tests
//! run; these tests start the built binaries (no second cargo invocation).

use std::path::PathBuf;
use std::process::Command;

/// `target/<profile>/examples/<name>`, next to this test's own `deps/` directory.
fn example(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("test binary path");
    let dir = exe
        .parent()
        .and_then(|deps| deps.parent())
        .expect("target/<profile>/deps");
    let path = dir.join("examples").join(name);
    assert!(
        path.exists(),
        "{} is missing: `cargo test` builds the examples first",
        path.display()
    );
    path
}

/// One example at a time: two libtorch processes on a small machine slow each other down
/// several times over (their OpenMP threads spin against each other).
static ONE_AT_A_TIME: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn run(name: &str, args: &[&str]) -> String {
    let _turn = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let out = Command::new(example(name))
        .args(args)
        .output()
        .expect("example starts");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "{name} failed: {}\n{stdout}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

#[test]
fn edit_facts_edits_saves_a_patch_and_restores() {
    let dir = tempfile::tempdir().unwrap();
    let patch = dir.path().join("edit.safetensors");
    let out = run("edit_facts", &[patch.to_str().unwrap()]);
    assert!(out.contains("3/3 facts edited"), "{out}");
    let p = eamet::hooks::patch::Patch::load(&patch).unwrap();
    assert_eq!(p.deltas.keys().copied().collect::<Vec<_>>(), [3, 4]);
    assert_eq!(p.meta.method, "eamet");
}

#[test]
fn custom_loss_term_turns_the_residuals_away_from_h() {
    let out = run("custom_loss_term", &[]);
    // Two runs (without, with the term), one "cos(δ, h) <value>" line per fact each.
    let cos: Vec<f64> = out
        .lines()
        .filter_map(|l| l.trim().strip_prefix("cos(δ, h)"))
        .map(|rest| rest.split_whitespace().next().unwrap().parse().unwrap())
        .collect();
    assert_eq!(cos.len(), 4, "{out}");
    let (without, with) = cos.split_at(2);
    for (a, b) in without.iter().zip(with) {
        assert!(b.abs() < 0.5 * a.abs(), "|cos| {a} -> {b}\n{out}");
    }
    assert!(out.contains("orthogonal_h*2"), "{out}");
}

#[test]
fn inspect_model_reads_smollm2() {
    let model = eamet::hooks::paths::default_model().expect("a cache directory");
    let out = run("inspect_model", &[model.to_str().unwrap()]);
    assert!(out.contains("architecture   llama"), "{out}");
    assert!(
        out.contains("d_model        576") && out.contains("blocks         30"),
        "{out}"
    );
}
