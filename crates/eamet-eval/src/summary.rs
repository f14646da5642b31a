//! Many reports side by side (feature `metrics`): the table and the plots against the number of
//! edits that compare methods across scales (`eamet summarize`).

use crate::plot;
use crate::report::{Report, ReportError};
use std::path::{Path, PathBuf};

/// Post-edit metrics of the summary table, with their column titles.
pub const SUMMARY_METRICS: &[(&str, &str)] = &[
    ("strict.efficacy", "strict eff."),
    ("strict.generalization", "strict gen."),
    ("strict.specificity", "strict spec."),
    ("classic.efficacy", "classic eff."),
    ("classic.generalization", "classic gen."),
    ("classic.specificity", "classic spec."),
    ("lenient.efficacy", "lenient eff."),
    ("lenient.generalization", "lenient gen."),
    ("fluency", "fluency"),
];

/// Total seconds of the phases whose name starts with `prefix` (e.g. `"edit: "`).
fn seconds(r: &Report, prefix: &str) -> f64 {
    r.timings
        .iter()
        .filter(|(n, _)| n.starts_with(prefix))
        .map(|(_, s)| s)
        .sum()
}

fn fmt(x: Option<f64>, digits: usize) -> String {
    x.filter(|v| v.is_finite())
        .map_or("-".to_string(), |v| format!("{v:.digits$}"))
}

/// Reports in table order: by dataset, then number of edits, then method.
fn ordered(reports: &[Report]) -> Vec<&Report> {
    let mut v: Vec<&Report> = reports.iter().collect();
    v.sort_by(|a, b| {
        (&a.info.dataset, a.info.n, &a.info.method).cmp(&(
            &b.info.dataset,
            b.info.n,
            &b.info.method,
        ))
    });
    v
}

/// The markdown table: one row per report (dataset, N, method), post-edit means of
/// [`SUMMARY_METRICS`] (pre-edit in the first row of each dataset slice is left to the
/// reports themselves), neighbourhood KL and drawdown (mean / 95th percentile over prompts),
/// Σ A(i) of the optimized and written residuals, and wall-clock minutes of editing and of
/// evaluation.
pub fn summary_markdown(reports: &[Report]) -> String {
    let mut s = String::from("| dataset | N | method |");
    for (_, title) in SUMMARY_METRICS {
        s.push_str(&format!(" {title} |"));
    }
    s.push_str(" neighbourhood KL mean / p95 | drawdown mean / p95 | Σ A(i) optimized / written | edit min | eval min |\n|---|---:|---|");
    for _ in SUMMARY_METRICS {
        s.push_str("---:|");
    }
    s.push_str("---:|---:|---:|---:|---:|\n");
    for r in ordered(reports) {
        let name = Path::new(&r.info.dataset)
            .file_name()
            .map_or(r.info.dataset.clone(), |f| f.to_string_lossy().into_owned());
        s.push_str(&format!("| {name} | {} | {} |", r.info.n, r.info.method));
        for (k, _) in SUMMARY_METRICS {
            s.push_str(&format!(" {} |", fmt(r.post.get(*k).map(|v| v.0), 3)));
        }
        let (kl, dd) = match &r.drift {
            Some(d) => (
                format!("{} / {}", fmt(Some(d.kl_mean), 4), fmt(Some(d.kl_p95), 4)),
                format!("{} / {}", fmt(d.drawdown_mean, 4), fmt(d.drawdown_p95, 4)),
            ),
            None => ("-".into(), "-".into()),
        };
        let a = match &r.misalignment {
            Some(m) => format!("{:.2} / {:.2}", m.total_optimized, m.total_written),
            None => "-".into(),
        };
        let edit = seconds(r, "edit: ") / 60.0;
        let eval = (seconds(r, "evaluate") + seconds(r, "drift")) / 60.0;
        s.push_str(&format!(" {kl} | {dd} | {a} | {edit:.1} | {eval:.1} |\n"));
    }
    s
}

/// One value of a report for the plots against N.
type Getter = fn(&Report) -> Option<f64>;

/// Plots against the number of edits, one line per method (reports of one dataset slice are
/// expected; give the plots of other datasets their own directory): strict efficacy, strict
/// generalization, neighbourhood KL (mean), Σ A(i) of the optimized residuals, and editing
/// minutes. A plot with no values is skipped. Returns the files written.
///
/// # Errors
/// Plotting and I/O errors.
pub fn summary_plots(reports: &[Report], dir: &Path) -> Result<Vec<PathBuf>, ReportError> {
    let plots: [(&str, &str, Getter); 5] = [
        ("strict_efficacy_vs_n", "strict efficacy", |r| {
            r.post.get("strict.efficacy").map(|v| v.0)
        }),
        ("strict_generalization_vs_n", "strict generalization", |r| {
            r.post.get("strict.generalization").map(|v| v.0)
        }),
        (
            "neighbourhood_kl_vs_n",
            "neighbourhood KL, mean over prompts (nats)",
            |r| r.drift.as_ref().map(|d| d.kl_mean),
        ),
        (
            "misalignment_vs_n",
            "Σ A(i) of the optimized residuals",
            |r| r.misalignment.as_ref().map(|m| m.total_optimized),
        ),
        ("edit_minutes_vs_n", "editing time (minutes)", |r| {
            Some(seconds(r, "edit: ") / 60.0)
        }),
    ];
    std::fs::create_dir_all(dir).map_err(|e| ReportError::Io(dir.to_path_buf(), e))?;
    let mut methods: Vec<&str> = reports.iter().map(|r| r.info.method.as_str()).collect();
    methods.sort_unstable();
    methods.dedup();
    let mut written = Vec::new();
    for (stem, label, get) in plots {
        let series: Vec<(String, Vec<(usize, f64)>)> = methods
            .iter()
            .map(|m| {
                let pts = reports
                    .iter()
                    .filter(|r| r.info.method == *m)
                    .filter_map(|r| get(r).filter(|v| v.is_finite()).map(|v| (r.info.n, v)))
                    .collect::<Vec<_>>();
                (m.to_string(), pts)
            })
            .filter(|(_, pts)| !pts.is_empty())
            .collect();
        if series.is_empty() {
            continue;
        }
        let files = plot::efficacy_vs_edits(
            &series,
            label,
            &format!("{label} against the number of edits"),
            dir,
            stem,
            &plot::PlotStyle::default(),
        )
        .map_err(ReportError::Plot)?;
        written.extend([files.svg, files.png]);
    }
    Ok(written)
}
