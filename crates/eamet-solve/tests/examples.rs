//! The `solver_only` example runs, and both solvers write the facts while barely moving the
//! generic keys. `cargo test` builds the example before the tests run; this starts the binary.

use std::process::Command;

#[test]
fn solver_only_example_writes_facts_and_preserves_generic_keys() {
    let exe = std::env::current_exe().unwrap();
    let bin = exe
        .parent()
        .and_then(|deps| deps.parent())
        .unwrap()
        .join("examples/solver_only");
    assert!(
        bin.exists(),
        "{}: run `cargo test -p eamet-solve` (it builds examples)",
        bin.display()
    );
    let out = Command::new(&bin).output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout);
    let rows: Vec<(f64, f64)> = ["| MEMIT", "| AlphaEdit"]
        .iter()
        .map(|p| {
            let row = text.lines().find(|l| l.starts_with(p)).unwrap();
            let cell = |k: usize| {
                row.split('|')
                    .nth(k)
                    .unwrap()
                    .trim()
                    .parse::<f64>()
                    .unwrap()
            };
            (cell(2), cell(3))
        })
        .collect();
    for (on_facts, on_generic) in rows {
        assert!(on_facts < 0.5, "facts not written: {on_facts}\n{text}");
        assert!(
            on_generic < 0.01,
            "generic keys moved: {on_generic}\n{text}"
        );
    }
}
