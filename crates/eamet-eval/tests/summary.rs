//! Many reports side by side: the table's rows and values, and one plot line per method.

use eamet_eval::drift::DriftSummary;
use eamet_eval::metrics::{EvalConfig, RecordEval};
use eamet_eval::plot::pareto_front;
use eamet_eval::report::{MisalignmentInfo, Report, RunInfo};
use eamet_eval::summary::{summary_markdown, summary_plots, sweep_markdown, sweep_plot};
use proptest::prelude::*;
use std::collections::BTreeMap;

fn report(method: &str, n: usize, efficacy: f64, a: f64, edit_s: f64) -> Report {
    let rec = |e: f64| RecordEval {
        case_id: None,
        subject: "s".into(),
        metrics: BTreeMap::from([("strict.efficacy".to_string(), e)]),
        prompts: Vec::new(),
    };
    let info = RunInfo {
        tool_version: "test".into(),
        created: "now".into(),
        command: None,
        model: "m".into(),
        model_sha256: "-".into(),
        dataset: "/data/counterfact_easyedit_edit.json".into(),
        dataset_format: "easyedit".into(),
        offset: 0,
        n,
        method: method.into(),
        hparams: serde_json::Value::Null,
        eval_config: EvalConfig::default(),
        seed: 0,
        schedule: "-".into(),
        environment: Default::default(),
        dtype: "f32".into(),
        device: "cpu".into(),
        prefix_docs_sha256: None,
        stats_corpus: None,
    };
    let mut r = Report::new(
        info,
        vec![rec(0.0)],
        vec![rec(efficacy)],
        vec![
            ("evaluate (pre)".into(), 60.0),
            ("edit: residuals".into(), edit_s),
            ("edit: solve".into(), 60.0),
            ("evaluate (post)".into(), 120.0),
        ],
    );
    r.misalignment = Some(MisalignmentInfo {
        direction: "KL(P_r || P_k)".into(),
        neighbourhood: "j < i".into(),
        total_optimized: a,
        total_written: a * 2.0,
        per_fact_optimized: Vec::new(),
        per_fact_written: Vec::new(),
    });
    r
}

#[test]
fn table_rows_are_ordered_and_carry_the_values() {
    let reports = vec![
        report("memit", 1000, 0.25, 500.0, 3540.0),
        report("eamet", 100, 0.9, 3.5, 840.0),
        report("memit", 100, 0.97, 42.8, 420.0),
    ];
    let md = summary_markdown(&reports);
    let rows: Vec<&str> = md.lines().skip(2).collect();
    assert_eq!(rows.len(), 3);
    assert!(rows[0].starts_with("| counterfact_easyedit_edit.json | 100 | eamet | 0.900 |"));
    assert!(rows[1].starts_with("| counterfact_easyedit_edit.json | 100 | memit | 0.970 |"));
    assert!(rows[2].contains("| 1000 | memit | 0.250 |"));
    // Σ A optimized / written, edit minutes (residuals + solve), eval minutes (pre + post).
    assert!(
        rows[2].ends_with("| 500.00 / 1000.00 | 60.0 | 3.0 |"),
        "{}",
        rows[2]
    );
    // No drift measured: shown as "-".
    assert!(rows[0].contains("| - | - |"));
}

#[test]
fn plots_have_one_line_per_method() {
    let reports = vec![
        report("memit", 100, 0.97, 42.8, 420.0),
        report("memit", 1000, 0.25, 500.0, 3540.0),
        report("eamet", 100, 0.9, 3.5, 840.0),
    ];
    let dir = tempfile::tempdir().unwrap();
    let files = summary_plots(&reports, dir.path()).unwrap();
    let names: Vec<String> = files
        .iter()
        .map(|f| f.file_name().unwrap().to_string_lossy().into_owned())
        .collect();
    assert!(names.contains(&"strict_efficacy_vs_n.svg".to_string()));
    assert!(names.contains(&"misalignment_vs_n.png".to_string()));
    // No report has generalization or drift: those plots are skipped.
    assert!(!names.iter().any(|n| n.starts_with("strict_generalization")));
    assert!(!names.iter().any(|n| n.starts_with("neighbourhood_kl")));
    let svg = std::fs::read_to_string(dir.path().join("strict_efficacy_vs_n.svg")).unwrap();
    assert!(svg.contains("memit") && svg.contains("eamet"));
}

/// A sweep setting: `report` with a λ and layers in its hyperparameters and a neighbourhood KL.
fn setting(method: &str, lambda: f64, efficacy: f64, kl: Option<f64>) -> Report {
    let mut r = report(method, 200, efficacy, 1.0, 60.0);
    r.info.hparams = serde_json::json!({
        "layers": [3, 4],
        "mom2_update_weight": lambda,
        "mom2_n_samples": 256,
        "alignment_schedule": {"kind": "nll_gated", "threshold": 0.5},
    });
    r.drift = kl.map(|k| DriftSummary {
        prompts: 200,
        kl_mean: k,
        kl_p95: 3.0 * k,
        drawdown_prompts: 200,
        drawdown_mean: Some(k / 2.0),
        drawdown_p95: None,
    });
    r
}

/// Hand-made front: (1, 0.5) beats (2, 0.4) and (1, 0.3); (0.5, 0.2) and (3, 0.9) are
/// extreme; the two copies of (2, 0.7) tie and are both on it; NaN is never.
#[test]
fn pareto_front_by_hand() {
    let pts = [
        (1.0, 0.5),
        (2.0, 0.4),
        (1.0, 0.3),
        (0.5, 0.2),
        (3.0, 0.9),
        (2.0, 0.7),
        (2.0, 0.7),
        (f64::NAN, 1.0),
        (4.0, 0.9),
    ];
    assert_eq!(
        pareto_front(&pts),
        [true, false, false, true, true, true, true, false, false]
    );
    assert!(pareto_front(&[]).is_empty());
}

proptest! {
    /// No front point is dominated, every other point is dominated by a front point, and the
    /// front does not depend on the order of the points.
    #[test]
    fn pareto_front_properties(pts in prop::collection::vec((0u8..20, 0u8..20), 1..30), rot in 0usize..30) {
        let pts: Vec<(f64, f64)> = pts.iter().map(|&(c, b)| (f64::from(c), f64::from(b))).collect();
        let front = pareto_front(&pts);
        let dominates = |q: (f64, f64), p: (f64, f64)| q.0 <= p.0 && q.1 >= p.1 && q != p;
        prop_assert!(front.iter().any(|&f| f));
        for (i, &p) in pts.iter().enumerate() {
            if front[i] {
                prop_assert!(!pts.iter().any(|&q| dominates(q, p)));
            } else {
                prop_assert!(pts.iter().zip(&front).any(|(&q, &f)| f && dominates(q, p)));
            }
        }
        let k = rot % pts.len();
        let mut rotated = pts.clone();
        rotated.rotate_left(k);
        let mut expect = front.clone();
        expect.rotate_left(k);
        prop_assert_eq!(pareto_front(&rotated), expect);
    }
}

#[test]
fn sweep_table_marks_the_fronts_and_the_settings() {
    let reports = vec![
        (
            "memit-lam100".to_string(),
            setting("memit", 100.0, 0.6, Some(1.5)),
        ),
        (
            "memit-lam1000".to_string(),
            setting("memit", 1000.0, 0.3, Some(0.4)),
        ),
        (
            "memit-lam300".to_string(),
            setting("memit", 300.0, 0.2, Some(0.9)),
        ),
        (
            "eamet-lam100".to_string(),
            setting("eamet", 100.0, 0.7, Some(1.0)),
        ),
        ("eamet-nokl".to_string(), setting("eamet", 30.0, 0.9, None)),
    ];
    let md = sweep_markdown(&reports);
    let rows: Vec<&str> = md.lines().skip(2).collect();
    assert_eq!(rows.len(), 5, "{md}");
    // Grouped by method, by KL within it (no KL last).
    let labels: Vec<&str> = rows
        .iter()
        .map(|r| r.split('|').nth(1).unwrap().trim())
        .collect();
    assert_eq!(
        labels,
        [
            "eamet-lam100",
            "eamet-nokl",
            "memit-lam1000",
            "memit-lam300",
            "memit-lam100"
        ]
    );
    // eamet λ=100 beats memit λ=100 (lower KL, higher efficacy): on both fronts; memit
    // λ=1000 is the lowest KL overall; memit λ=100 only on its method's front; λ=300 on none.
    assert!(rows[0].ends_with("| ● ★ |"), "{}", rows[0]);
    assert!(
        rows[0].starts_with("| eamet-lam100 | eamet | 3-4 | 100 | 0.5 | 256 | 0.700 |"),
        "{}",
        rows[0]
    );
    assert!(rows[1].ends_with("| - | - |  |"), "{}", rows[1]);
    assert!(
        rows[2].ends_with("| 0.400 / 1.200 | 0.200 | ● ★ |"),
        "{}",
        rows[2]
    );
    // MEMIT does not align: no gate shown.
    assert!(
        rows[2].starts_with("| memit-lam1000 | memit | 3-4 | 1000 | - | 256 |"),
        "{}",
        rows[2]
    );
    assert!(rows[3].ends_with("|  |"), "{}", rows[3]);
    assert!(rows[4].ends_with("| ● |"), "{}", rows[4]);

    let dir = tempfile::tempdir().unwrap();
    let files = sweep_plot(&reports, dir.path()).unwrap().unwrap();
    let svg = std::fs::read_to_string(&files.svg).unwrap();
    assert!(files.png.exists());
    // Front points are labelled; others are not.
    assert!(svg.contains("eamet-lam100") && svg.contains("memit-lam1000"));
    assert!(!svg.contains("memit-lam300"));
    // Without any KL there is nothing to plot.
    let none = vec![("x".to_string(), setting("memit", 1.0, 0.5, None))];
    assert!(sweep_plot(&none, dir.path()).unwrap().is_none());
}
