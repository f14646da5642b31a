//! Tests of `eamet_eval::plot`: files written, their content, and the error cases.

use std::fs;
use std::path::Path;

use eamet_eval::plot::{
    efficacy_vs_edits, misalignment_histogram, score_vs_success, AxisScale, PlotError, PlotFiles,
    PlotStyle,
};

const PNG_SIGNATURE: [u8; 8] = [0x89, b'P', b'N', b'G', b'\r', b'\n', 0x1a, b'\n'];

/// Width and height from the IHDR chunk, after checking the signature and chunk type.
fn png_size(bytes: &[u8]) -> (u32, u32) {
    assert!(bytes.len() > 33, "PNG too short");
    assert_eq!(bytes[..8], PNG_SIGNATURE, "PNG signature");
    assert_eq!(&bytes[12..16], b"IHDR", "first chunk is IHDR");
    let be = |b: &[u8]| u32::from_be_bytes([b[0], b[1], b[2], b[3]]);
    (be(&bytes[16..20]), be(&bytes[20..24]))
}

/// A light well-formedness check of the SVG text: root element, balanced tags, escaped text.
fn check_svg(svg: &str, width: u32, height: u32) {
    assert!(svg.trim_start().starts_with("<svg"), "starts with <svg");
    assert!(svg.trim_end().ends_with("</svg>"), "ends with </svg>");
    assert!(svg.contains(&format!("width=\"{width}\"")), "width");
    assert!(svg.contains(&format!("height=\"{height}\"")), "height");
    let mut stack: Vec<String> = Vec::new();
    let mut rest = svg;
    while let Some(open) = rest.find('<') {
        let text = &rest[..open];
        assert!(!text.contains('>'), "stray '>' in text {text:?}");
        let close = rest[open..].find('>').expect("unterminated tag") + open;
        let tag = &rest[open + 1..close];
        if let Some(name) = tag.strip_prefix('/') {
            assert_eq!(stack.pop().as_deref(), Some(name.trim()), "closing tag");
        } else if !tag.ends_with('/') && !tag.starts_with('?') && !tag.starts_with('!') {
            let name = tag.split_whitespace().next().unwrap_or_default();
            stack.push(name.to_owned());
        }
        rest = &rest[close + 1..];
    }
    assert!(stack.is_empty(), "unclosed tags {stack:?}");
}

fn check_files(files: &PlotFiles, dir: &Path, stem: &str, style: &PlotStyle, texts: &[&str]) {
    assert_eq!(files.svg, dir.join(format!("{stem}.svg")));
    assert_eq!(files.png, dir.join(format!("{stem}.png")));
    let svg = fs::read_to_string(&files.svg).unwrap();
    check_svg(&svg, style.width, style.height);
    for text in texts {
        assert!(svg.contains(text), "SVG contains {text:?}");
    }
    let png = fs::read(&files.png).unwrap();
    assert_eq!(png_size(&png), (style.width, style.height));
    // no temporary file left behind
    let leftovers: Vec<_> = fs::read_dir(dir)
        .unwrap()
        .filter_map(|e| e.ok())
        .filter(|e| e.file_name().to_string_lossy().ends_with(".tmp"))
        .collect();
    assert!(leftovers.is_empty(), "temporary files left: {leftovers:?}");
}

/// Heavy-tailed non-negative values, deterministic.
fn residuals(n: usize, scale: f64) -> Vec<f64> {
    (0..n)
        .map(|i| {
            let u = (i as f64 + 0.5) / n as f64;
            scale * (1.0 / (1.0 - u) - 1.0)
        })
        .collect()
}

#[test]
fn histogram_writes_svg_and_png() {
    let dir = tempfile::tempdir().unwrap();
    let style = PlotStyle::default();
    let before = residuals(500, 3.0);
    let after = residuals(400, 0.2);
    let files = misalignment_histogram(
        &before,
        &after,
        ("MEMIT", "EAMET"),
        "Misalignment A(i) <per fact> & more",
        dir.path(),
        "hist",
        &style,
    )
    .unwrap();
    check_files(
        &files,
        dir.path(),
        "hist",
        &style,
        &[
            "Misalignment A(i) &lt;per fact&gt; &amp; more",
            "MEMIT (n = 500)",
            "EAMET (n = 400)",
        ],
    );
}

#[test]
fn histogram_linear_scale_and_custom_size() {
    let dir = tempfile::tempdir().unwrap();
    let style = PlotStyle {
        width: 640,
        height: 360,
        misalignment_scale: AxisScale::Linear,
        bins: 7,
    };
    // negative values are fine on a linear axis; a constant series too
    let files = misalignment_histogram(
        &[-1.0, 0.0, 2.5, 2.5],
        &[1.0, 1.0],
        ("a", "b"),
        "linear",
        dir.path(),
        "lin",
        &style,
    )
    .unwrap();
    check_files(
        &files,
        dir.path(),
        "lin",
        &style,
        &["linear", "a (n = 4)", "b (n = 2)"],
    );
    // all zero on a log axis, and a single value
    let files = misalignment_histogram(
        &[0.0, 0.0],
        &[0.0],
        ("x", "y"),
        "zeros",
        dir.path(),
        "zeros",
        &PlotStyle::default(),
    )
    .unwrap();
    check_files(
        &files,
        dir.path(),
        "zeros",
        &PlotStyle::default(),
        &["zeros"],
    );
}

#[test]
fn histogram_extreme_values_do_not_panic() {
    let dir = tempfile::tempdir().unwrap();
    for scale in [AxisScale::Log1p, AxisScale::Linear] {
        let style = PlotStyle {
            misalignment_scale: scale,
            ..PlotStyle::default()
        };
        let values = [0.0, 5e-324, 1e-300, 1.0, 1e300, f64::MAX];
        misalignment_histogram(
            &values,
            &values[..2],
            ("a", "b"),
            "t",
            dir.path(),
            "x",
            &style,
        )
        .unwrap();
    }
    let style = PlotStyle {
        misalignment_scale: AxisScale::Linear,
        ..PlotStyle::default()
    };
    misalignment_histogram(
        &[f64::MIN, f64::MAX],
        &[0.0],
        ("a", "b"),
        "t",
        dir.path(),
        "x",
        &style,
    )
    .unwrap();
}

#[test]
fn histogram_errors() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let style = PlotStyle::default();
    let h = |b: &[f64], a: &[f64], stem: &str, style: &PlotStyle| {
        misalignment_histogram(b, a, ("before", "after"), "t", d, stem, style)
    };
    assert!(matches!(
        h(&[], &[1.0], "s", &style),
        Err(PlotError::Empty { what }) if what == "before"
    ));
    assert!(matches!(
        h(&[1.0], &[], "s", &style),
        Err(PlotError::Empty { what }) if what == "after"
    ));
    assert!(matches!(
        h(&[1.0, f64::NAN], &[1.0], "s", &style),
        Err(PlotError::NonFinite { what, index: 1, .. }) if what == "before"
    ));
    assert!(matches!(
        h(&[1.0], &[f64::INFINITY], "s", &style),
        Err(PlotError::NonFinite { index: 0, .. })
    ));
    assert!(matches!(
        h(&[1.0], &[-0.5], "s", &style),
        Err(PlotError::OutOfRange { index: 0, .. })
    ));
    for stem in ["", ".", "..", "a/b", "a\\b", "a\0b"] {
        assert!(
            matches!(
                h(&[1.0], &[1.0], stem, &style),
                Err(PlotError::InvalidStem(_))
            ),
            "{stem:?}"
        );
    }
    let tiny = PlotStyle {
        width: 10,
        ..PlotStyle::default()
    };
    assert!(matches!(
        h(&[1.0], &[1.0], "s", &tiny),
        Err(PlotError::InvalidSize { width: 10, .. })
    ));
    let no_bins = PlotStyle {
        bins: 0,
        ..PlotStyle::default()
    };
    assert!(matches!(
        h(&[1.0], &[1.0], "s", &no_bins),
        Err(PlotError::InvalidBins(0))
    ));
    // nothing was written by the failed calls
    assert_eq!(fs::read_dir(d).unwrap().count(), 0);
}

#[test]
fn missing_or_unwritable_directory() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("nope");
    let err = score_vs_success(
        &[(1.0, 1.0)],
        ("A", "s"),
        "t",
        &missing,
        "s",
        &PlotStyle::default(),
    )
    .unwrap_err();
    assert!(
        matches!(&err, PlotError::Io { path, .. } if path == &missing),
        "{err}"
    );
    // a file instead of a directory
    let file = dir.path().join("file");
    fs::write(&file, b"x").unwrap();
    let err = score_vs_success(
        &[(1.0, 1.0)],
        ("A", "s"),
        "t",
        &file,
        "s",
        &PlotStyle::default(),
    )
    .unwrap_err();
    assert!(matches!(err, PlotError::Io { .. }));
    // an existing directory in place of the output file: the rename fails, temporaries go
    fs::create_dir(dir.path().join("taken.svg")).unwrap();
    fs::write(dir.path().join("taken.svg").join("inner"), b"x").unwrap();
    let err = score_vs_success(
        &[(1.0, 1.0)],
        ("A", "s"),
        "t",
        dir.path(),
        "taken",
        &PlotStyle::default(),
    )
    .unwrap_err();
    assert!(matches!(err, PlotError::Io { .. }), "{err}");
    let leftovers = fs::read_dir(dir.path())
        .unwrap()
        .filter_map(|e| e.ok())
        .filter(|e| e.file_name().to_string_lossy().ends_with(".tmp"))
        .count();
    assert_eq!(leftovers, 0);
}

#[cfg(unix)]
#[test]
fn read_only_directory() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let ro = dir.path().join("ro");
    fs::create_dir(&ro).unwrap();
    fs::set_permissions(&ro, fs::Permissions::from_mode(0o555)).unwrap();
    // root ignores permission bits: only check when the directory really is read-only
    let writable = fs::write(ro.join("probe"), b"x").is_ok();
    let result = score_vs_success(
        &[(1.0, 1.0)],
        ("A", "s"),
        "t",
        &ro,
        "s",
        &PlotStyle::default(),
    );
    if writable {
        assert!(result.is_ok());
    } else {
        assert!(matches!(result, Err(PlotError::Io { .. })));
    }
    fs::set_permissions(&ro, fs::Permissions::from_mode(0o755)).unwrap();
}

#[test]
fn scatter_writes_svg_and_png() {
    let dir = tempfile::tempdir().unwrap();
    let style = PlotStyle::default();
    let points: Vec<(f64, f64)> = residuals(300, 1.0)
        .into_iter()
        .enumerate()
        .map(|(i, a)| (a, if i % 3 == 0 { 0.0 } else { 1.0 / (1.0 + a) }))
        .collect();
    let files = score_vs_success(
        &points,
        ("A(i)", "efficacy"),
        "A(i) vs efficacy",
        dir.path(),
        "scatter",
        &style,
    )
    .unwrap();
    check_files(
        &files,
        dir.path(),
        "scatter",
        &style,
        &["A(i) vs efficacy", "efficacy"],
    );
    // overwriting is fine
    score_vs_success(
        &points,
        ("A(i)", "efficacy"),
        "again",
        dir.path(),
        "scatter",
        &style,
    )
    .unwrap();
    assert!(fs::read_to_string(&files.svg).unwrap().contains("again"));
}

#[test]
fn scatter_errors() {
    let dir = tempfile::tempdir().unwrap();
    let s = |p: &[(f64, f64)]| {
        score_vs_success(p, ("x", "y"), "t", dir.path(), "s", &PlotStyle::default())
    };
    assert!(matches!(s(&[]), Err(PlotError::Empty { .. })));
    assert!(matches!(
        s(&[(0.0, 0.5), (f64::NAN, 0.5)]),
        Err(PlotError::NonFinite { index: 1, .. })
    ));
    assert!(matches!(
        s(&[(0.0, f64::NAN)]),
        Err(PlotError::NonFinite { index: 0, .. })
    ));
    assert!(matches!(
        s(&[(0.0, 1.5)]),
        Err(PlotError::OutOfRange { index: 0, .. })
    ));
    assert!(matches!(
        s(&[(-1.0, 0.5)]),
        Err(PlotError::OutOfRange { index: 0, .. })
    ));
    let linear = PlotStyle {
        misalignment_scale: AxisScale::Linear,
        ..PlotStyle::default()
    };
    score_vs_success(&[(-1.0, 0.5)], ("x", "y"), "t", dir.path(), "s", &linear).unwrap();
}

#[test]
fn lines_write_svg_and_png() {
    let dir = tempfile::tempdir().unwrap();
    let style = PlotStyle::default();
    let ns = [100usize, 1000, 2000, 5000, 10000];
    let series: Vec<(String, Vec<(usize, f64)>)> = ["MEMIT", "AlphaEdit", "EAMET", "PMET", "ROME"]
        .iter()
        .enumerate()
        .map(|(k, name)| {
            let pts = ns
                .iter()
                .rev()
                .map(|&n| (n, 1.0 - (n as f64).log10() * 0.05 * (k + 1) as f64))
                .collect();
            (name.to_string(), pts)
        })
        .collect();
    let files = efficacy_vs_edits(
        &series,
        "efficacy",
        "Efficacy vs edits",
        dir.path(),
        "lines",
        &style,
    )
    .unwrap();
    check_files(
        &files,
        dir.path(),
        "lines",
        &style,
        &[
            "Efficacy vs edits",
            "MEMIT",
            "AlphaEdit",
            "EAMET",
            "number of edits (log scale)",
        ],
    );
}

#[test]
fn lines_linear_axis_and_edge_cases() {
    let dir = tempfile::tempdir().unwrap();
    let style = PlotStyle::default();
    // includes 0 edits: linear axis; metric outside [0, 1]
    let series = vec![
        ("a".to_string(), vec![(0, 5.0), (10, -3.0), (20, 2.0)]),
        ("b".to_string(), vec![(5, 1.0)]),
    ];
    let files = efficacy_vs_edits(&series, "metric", "linear", dir.path(), "lin", &style).unwrap();
    check_files(
        &files,
        dir.path(),
        "lin",
        &style,
        &["number of edits", "metric"],
    );
    assert!(!fs::read_to_string(&files.svg)
        .unwrap()
        .contains("log scale"));
    // one point in all
    let series = vec![("only".to_string(), vec![(7, 0.5)])];
    efficacy_vs_edits(&series, "m", "one", dir.path(), "one", &style).unwrap();
    // huge counts
    let series = vec![("big".to_string(), vec![(1, 0.5), (usize::MAX, 0.7)])];
    efficacy_vs_edits(&series, "m", "big", dir.path(), "big", &style).unwrap();
}

#[test]
fn lines_errors() {
    let dir = tempfile::tempdir().unwrap();
    let e = |s: &[(String, Vec<(usize, f64)>)]| {
        efficacy_vs_edits(s, "m", "t", dir.path(), "s", &PlotStyle::default())
    };
    assert!(matches!(e(&[]), Err(PlotError::Empty { .. })));
    assert!(matches!(
        e(&[("a".into(), vec![(1, 0.5)]), ("b".into(), vec![])]),
        Err(PlotError::Empty { what }) if what.contains('b')
    ));
    assert!(matches!(
        e(&[("a".into(), vec![(1, 0.5), (2, f64::NAN)])]),
        Err(PlotError::NonFinite { index: 1, .. })
    ));
}

#[test]
fn control_characters_do_not_break_the_svg() {
    let dir = tempfile::tempdir().unwrap();
    let style = PlotStyle::default();
    let series = vec![("bell\u{7}".to_string(), vec![(1, 0.5), (2, 0.6)])];
    let files = efficacy_vs_edits(
        &series,
        "nul\0",
        "title\u{1b}[1m\u{ffff}",
        dir.path(),
        "ctl",
        &style,
    )
    .unwrap();
    let svg = fs::read_to_string(&files.svg).unwrap();
    check_svg(&svg, style.width, style.height);
    assert!(!svg
        .chars()
        .any(|c| (c.is_control() && !matches!(c, '\t' | '\n' | '\r')) || c == '\u{ffff}'));
    assert!(svg.contains("bell\u{fffd}") && svg.contains("title\u{fffd}[1m\u{fffd}"));
}

#[test]
fn errors_display() {
    let err = PlotError::NonFinite {
        what: "before".into(),
        index: 3,
        value: f64::NAN,
    };
    assert_eq!(err.to_string(), "before[3] = NaN is not a finite number");
}

/// Writes sample plots for a person to look at:
/// `EAMET_PLOT_SAMPLES=/some/dir cargo test -p eamet-eval --test plot -- --ignored`.
#[test]
#[ignore = "writes sample plots into $EAMET_PLOT_SAMPLES"]
fn render_samples() {
    let Some(dir) = std::env::var_os("EAMET_PLOT_SAMPLES") else {
        return;
    };
    let dir = Path::new(&dir);
    fs::create_dir_all(dir).unwrap();
    let style = PlotStyle::default();
    let before = residuals(2000, 3.0);
    let after = residuals(2000, 0.2);
    misalignment_histogram(
        &before,
        &after,
        ("MEMIT", "EAMET"),
        "Per-fact misalignment A(i)",
        dir,
        "histogram",
        &style,
    )
    .unwrap();
    let points: Vec<(f64, f64)> = before
        .iter()
        .enumerate()
        .map(|(i, &a)| {
            (
                a,
                if i % 5 == 0 {
                    0.0
                } else {
                    (1.0 / (1.0 + a)).min(1.0)
                },
            )
        })
        .collect();
    score_vs_success(
        &points,
        ("A(i)", "efficacy"),
        "Misalignment vs success (MEMIT)",
        dir,
        "scatter",
        &style,
    )
    .unwrap();
    let ns = [100usize, 1000, 2000, 5000, 10000];
    let series: Vec<(String, Vec<(usize, f64)>)> = ["MEMIT", "AlphaEdit", "EAMET", "PMET", "ROME"]
        .iter()
        .enumerate()
        .map(|(k, name)| {
            let pts = ns
                .iter()
                .map(|&n| (n, 1.0 - (n as f64).log10() * 0.05 * (k + 1) as f64))
                .collect();
            (name.to_string(), pts)
        })
        .collect();
    efficacy_vs_edits(
        &series,
        "efficacy",
        "Efficacy vs number of edits",
        dir,
        "lines",
        &style,
    )
    .unwrap();
    let small: Vec<f64> = residuals(300, 0.004);
    let linear = PlotStyle {
        misalignment_scale: AxisScale::Linear,
        width: 600,
        height: 400,
        bins: 20,
    };
    misalignment_histogram(
        &small,
        &residuals(200, 0.002),
        ("before", "after"),
        "Small values, log1p",
        dir,
        "histogram_small",
        &style,
    )
    .unwrap();
    misalignment_histogram(
        &small,
        &residuals(200, 0.002),
        ("before", "after"),
        "Small values, linear",
        dir,
        "histogram_linear",
        &linear,
    )
    .unwrap();
    let series = vec![
        ("a".to_string(), vec![(0, 5.0), (10, -3.0), (20, 2.0)]),
        ("b".to_string(), vec![(5, 1.0)]),
    ];
    efficacy_vs_edits(
        &series,
        "metric",
        "Linear edits, metric outside [0, 1] — ünïcødé ✓",
        dir,
        "lines_linear",
        &linear,
    )
    .unwrap();
}
