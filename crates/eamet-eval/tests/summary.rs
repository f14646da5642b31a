//! Many reports side by side: the table's rows and values, and one plot line per method.

use eamet_eval::metrics::{EvalConfig, RecordEval};
use eamet_eval::report::{MisalignmentInfo, Report, RunInfo};
use eamet_eval::summary::{summary_markdown, summary_plots};
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
