//! The `misalignment_only` example runs and tells aligned residuals from random ones.
//! `cargo test` builds the example before the tests run; this starts the built binary.

use std::process::Command;

#[test]
fn misalignment_only_example_scores_aligned_below_random() {
    let exe = std::env::current_exe().unwrap();
    let bin = exe
        .parent()
        .and_then(|deps| deps.parent())
        .unwrap()
        .join("examples/misalignment_only");
    assert!(
        bin.exists(),
        "{}: run `cargo test -p eamet-align` (it builds examples)",
        bin.display()
    );
    let out = Command::new(&bin).output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout);
    // "| aligned | <total> | ..." and "| random | <total> | ..."
    let total = |name: &str| -> f64 {
        let row = text
            .lines()
            .find(|l| l.starts_with(&format!("| {name} |")))
            .unwrap_or_else(|| panic!("no {name} row in\n{text}"));
        row.split('|').nth(2).unwrap().trim().parse().unwrap()
    };
    let (aligned, random) = (total("aligned"), total("random"));
    assert!(
        aligned.is_finite() && aligned < 0.5 * random,
        "{aligned} vs {random}\n{text}"
    );
}
