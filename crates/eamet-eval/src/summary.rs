//! Many reports side by side (feature `metrics`): the table and the plots against the number of
//! edits that compare methods across scales (`eamet summarize`), and the table and trade-off
//! plot of a hyperparameter sweep with its Pareto front (`eamet summarize --pareto`).

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

/// The hyperparameters a sweep varies, read from a report's `info.hparams`: layers (`3-4`),
/// λ (`mom2_update_weight`), the alignment gate's threshold (EAMET's NLL-gated schedule) and
/// the number of statistics documents (`mom2_n_samples`). `-` where the report does not say.
fn setting(r: &Report) -> [String; 4] {
    let h = &r.info.hparams;
    let layers = h["layers"].as_array().map_or("-".to_string(), |l| {
        l.iter()
            .map(|v| v.to_string())
            .collect::<Vec<_>>()
            .join("-")
    });
    // A number, or per-layer numbers joined by `/`.
    let num = |v: &serde_json::Value| match v {
        serde_json::Value::Array(a) if !a.is_empty() => a
            .iter()
            .map(|x| x.as_f64().map_or("?".to_string(), format_setting))
            .collect::<Vec<_>>()
            .join("/"),
        _ => v.as_f64().map_or("-".to_string(), format_setting),
    };
    // Only the aligning methods have a gate.
    let aligns = matches!(r.info.method.as_str(), "eamet" | "alphaedit-aligned");
    let gate = match h["alignment_schedule"]["kind"].as_str() {
        _ if !aligns => "-".to_string(),
        Some("nll_gated") => num(&h["alignment_schedule"]["threshold"]),
        Some(other) => other.to_string(),
        None => "-".to_string(),
    };
    [
        layers,
        num(&h["mom2_update_weight"]),
        gate,
        num(&h["mom2_n_samples"]),
    ]
}

/// `100` for 100.0, `0.25` for 0.25.
fn format_setting(v: f64) -> String {
    if v.fract() == 0.0 && v.abs() < 1e15 {
        format!("{v:.0}")
    } else {
        format!("{v}")
    }
}

/// The (neighbourhood KL mean, strict efficacy) trade-off point of a report; NaN where the
/// report has no finite neighbourhood KL or strict efficacy (such a setting is on no front).
fn tradeoff(r: &Report) -> (f64, f64) {
    let finite = |v: f64| if v.is_finite() { v } else { f64::NAN };
    (
        finite(r.drift.as_ref().map_or(f64::NAN, |d| d.kl_mean)),
        finite(r.post.get("strict.efficacy").map_or(f64::NAN, |v| v.0)),
    )
}

/// For each report, whether it is on the Pareto front of strict efficacy (higher is better)
/// against the mean neighbourhood KL (lower is better) among the reports of its own method,
/// and among all reports.
fn fronts(reports: &[(String, Report)]) -> Vec<(bool, bool)> {
    let points: Vec<(f64, f64)> = reports.iter().map(|(_, r)| tradeoff(r)).collect();
    let all = plot::pareto_front(&points);
    let mut own = vec![false; reports.len()];
    let mut methods: Vec<&str> = reports
        .iter()
        .map(|(_, r)| r.info.method.as_str())
        .collect();
    methods.sort_unstable();
    methods.dedup();
    for m in methods {
        let idx: Vec<usize> = (0..reports.len())
            .filter(|&i| reports[i].1.info.method == m)
            .collect();
        let sub: Vec<(f64, f64)> = idx.iter().map(|&i| points[i]).collect();
        for (i, on) in idx.into_iter().zip(plot::pareto_front(&sub)) {
            own[i] = on;
        }
    }
    own.into_iter().zip(all).collect()
}

/// A hyperparameter sweep's table (`eamet summarize --pareto`): one row per `(label, report)`
/// with the setting (layers, λ, alignment gate, statistics documents), strict efficacy and
/// generalization, lenient efficacy, classic specificity, neighbourhood KL (mean / p95) and
/// drawdown, and whether the setting is on the Pareto front of strict efficacy against mean
/// neighbourhood KL: `●` among its method's settings, `★` among all. Rows are grouped by
/// method and ordered by KL; settings without a neighbourhood KL are never on a front.
pub fn sweep_markdown(reports: &[(String, Report)]) -> String {
    let fr = fronts(reports);
    let mut order: Vec<usize> = (0..reports.len()).collect();
    order.sort_by(|&a, &b| {
        let (ra, rb) = (&reports[a].1, &reports[b].1);
        ra.info
            .method
            .cmp(&rb.info.method)
            .then(tradeoff(ra).0.total_cmp(&tradeoff(rb).0))
            .then(reports[a].0.cmp(&reports[b].0))
    });
    let mut s = String::from(
        "| setting | method | layers | λ | gate | stats docs | strict eff. | strict gen. | lenient eff. | classic spec. | neighbourhood KL mean / p95 | drawdown mean | front |\n\
         |---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|:---:|\n",
    );
    for i in order {
        let (label, r) = &reports[i];
        let [layers, lambda, gate, docs] = setting(r);
        let post = |k: &str| fmt(r.post.get(k).map(|v| v.0), 3);
        let (kl, dd) = match &r.drift {
            Some(d) => (
                format!("{} / {}", fmt(Some(d.kl_mean), 3), fmt(Some(d.kl_p95), 3)),
                fmt(d.drawdown_mean, 3),
            ),
            None => ("-".into(), "-".into()),
        };
        let mark = match fr[i] {
            (true, true) => "● ★",
            (true, false) => "●",
            (false, true) => "★",
            (false, false) => "",
        };
        s.push_str(&format!(
            "| {label} | {} | {layers} | {lambda} | {gate} | {docs} | {} | {} | {} | {} | {kl} | {dd} | {mark} |\n",
            r.info.method,
            post("strict.efficacy"),
            post("strict.generalization"),
            post("lenient.efficacy"),
            post("classic.specificity"),
        ));
    }
    s
}

/// The sweep's trade-off plot (`pareto.svg` / `pareto.png` in `dir`): strict efficacy
/// against mean neighbourhood KL, one colour per method, the front over all settings joined
/// and labelled with the reports' labels. Reports without a neighbourhood KL or a
/// strict efficacy are left out; `None` when none is left.
///
/// # Errors
/// Plotting and I/O errors.
pub fn sweep_plot(
    reports: &[(String, Report)],
    dir: &Path,
) -> Result<Option<plot::PlotFiles>, ReportError> {
    let mut series: Vec<(String, Vec<plot::TradeoffPoint>)> = Vec::new();
    for (label, r) in reports {
        let (cost, benefit) = tradeoff(r);
        if !cost.is_finite() || !benefit.is_finite() {
            continue;
        }
        let point = plot::TradeoffPoint {
            cost,
            benefit,
            label: label.clone(),
        };
        match series.iter_mut().find(|(m, _)| *m == r.info.method) {
            Some((_, pts)) => pts.push(point),
            None => series.push((r.info.method.clone(), vec![point])),
        }
    }
    if series.is_empty() {
        return Ok(None);
    }
    series.sort_by(|a, b| a.0.cmp(&b.0));
    std::fs::create_dir_all(dir).map_err(|e| ReportError::Io(dir.to_path_buf(), e))?;
    plot::pareto_scatter(
        &series,
        (
            "neighbourhood KL(p_pre ‖ p_post), mean over prompts (nats)",
            "strict efficacy",
        ),
        "Strict efficacy against neighbourhood KL (dashed: Pareto front)",
        dir,
        "pareto",
        &plot::PlotStyle::default(),
    )
    .map(Some)
    .map_err(ReportError::Plot)
}
