//! SVG and PNG plots for evaluation reports.
//!
//! Each function draws one figure and writes it twice into a directory, as `<stem>.svg` and
//! `<stem>.png`, and returns both paths ([`PlotFiles`]). The files are replaced atomically:
//! both are first written under temporary names in the same directory, then renamed over the
//! final names, so a reader never sees a half-written plot.
//!
//! | function | figure |
//! |---|---|
//! | [`misalignment_histogram`] | two overlaid histograms of per-fact misalignment `A(i)` (e.g. MEMIT vs EAMET) |
//! | [`score_vs_success`] | per-fact scatter: `A(i)` on x, success in `[0, 1]` on y |
//! | [`efficacy_vs_edits`] | one line with markers per method: a metric against the number of edits |
//!
//! Input is validated before anything is drawn: empty series, NaN or infinite values and
//! values outside an axis' domain are typed [`PlotError`]s, as are an invalid size, file stem
//! or output directory.
//!
//! # Fonts
//!
//! PNG text is rasterised from a font embedded in the library (a Latin/Greek subset of
//! DejaVu Sans, 52 KiB, licence in `assets/DejaVuSans-LICENSE.txt`), never from the fonts of
//! the machine, so PNG plots look the same everywhere, with or without installed fonts.
//! Characters outside the subset show as an empty box in PNG files. SVG files name the
//! `sans-serif` family and leave the choice of font to the viewer; the embedded font gives
//! their layout metrics.
//!
//! # Scales
//!
//! Misalignment values are non-negative and heavy tailed. By default ([`AxisScale::Log1p`])
//! their axis is drawn in `log10(1 + A)`: histogram bins are of equal width in that space
//! (so they grow with `A`), starting at `A = 0`, and the ticks are labelled with values of
//! `A` itself (`0, 1, 10, 100, ...`, with `2` and `5` multiples when there is room). With
//! [`AxisScale::Linear`] the axis and the bins are linear in `A` between the smallest and the
//! largest value.
//!
//! The number of edits in [`efficacy_vs_edits`] is on a `log10` axis when all counts are at
//! least 1 and the largest is more than ten times the smallest; otherwise on a linear axis.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::OnceLock;

use plotters::coord::Shift;
use plotters::prelude::*;

mod raster;

/// The embedded font (see the module documentation and `assets/README.md`).
static FONT_BYTES: &[u8] = include_bytes!("../assets/DejaVuSans-subset.ttf");

/// Family name under which the embedded font is registered; also what SVG files name.
const FONT_FAMILY: &str = "sans-serif";

/// Colour-blind-safe palette (Okabe & Ito), cycled through for series.
const PALETTE: [RGBColor; 7] = [
    RGBColor(0, 114, 178),
    RGBColor(213, 94, 0),
    RGBColor(0, 158, 115),
    RGBColor(204, 121, 167),
    RGBColor(230, 159, 0),
    RGBColor(86, 180, 233),
    RGBColor(0, 0, 0),
];

/// Smallest and largest accepted width or height, in pixels.
const SIZE_LIMITS: (u32, u32) = (200, 8192);
/// Largest accepted number of histogram bins.
const MAX_BINS: usize = 1000;

/// Errors of the plotting functions.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum PlotError {
    /// A series (or the list of series) has no value.
    #[error("{what}: nothing to plot")]
    Empty {
        /// Which input.
        what: String,
    },
    /// A value is NaN or infinite.
    #[error("{what}[{index}] = {value} is not a finite number")]
    NonFinite {
        /// Which input.
        what: String,
        /// Position of the value in that input.
        index: usize,
        /// The value.
        value: f64,
    },
    /// A value is outside the domain of its axis (e.g. a negative `A(i)` on a `log10(1 + A)`
    /// axis, a success rate outside `[0, 1]`).
    #[error("{what}[{index}] = {value} is outside {expected}")]
    OutOfRange {
        /// Which input.
        what: String,
        /// Position of the value in that input.
        index: usize,
        /// The value.
        value: f64,
        /// The accepted range, in words.
        expected: &'static str,
    },
    /// The file stem is empty, `.`/`..`, or contains a path separator or a NUL character.
    #[error("invalid file stem {0:?}: it must be a plain, non-empty file name")]
    InvalidStem(String),
    /// Width or height outside 200..=8192 pixels.
    #[error("invalid plot size {width}x{height}: width and height must be within 200..=8192")]
    InvalidSize {
        /// Requested width.
        width: u32,
        /// Requested height.
        height: u32,
    },
    /// Number of histogram bins outside 1..=1000.
    #[error("invalid number of histogram bins {0}: it must be within 1..=1000")]
    InvalidBins(usize),
    /// The output directory is missing, not a directory, or a file cannot be written there.
    #[error("cannot write {}: {source}", path.display())]
    Io {
        /// The directory or file concerned.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: io::Error,
    },
    /// The embedded font could not be registered (should not happen).
    #[error("the embedded font could not be loaded")]
    Font,
    /// The drawing library failed.
    #[error("drawing failed: {0}")]
    Draw(String),
    /// PNG encoding failed.
    #[error("PNG encoding failed: {0}")]
    Png(String),
}

/// How a non-negative, heavy-tailed quantity such as `A(i)` is laid out on an axis.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum AxisScale {
    /// Linear in the value, between the smallest and the largest value.
    Linear,
    /// Linear in `log10(1 + value)`, from 0; values must be `>= 0`. Ticks show the value.
    #[default]
    Log1p,
}

/// Size and layout options shared by all plots.
#[derive(Debug, Clone, PartialEq)]
pub struct PlotStyle {
    /// Width in pixels (SVG user units), 200..=8192. Default 800.
    pub width: u32,
    /// Height in pixels (SVG user units), 200..=8192. Default 500.
    pub height: u32,
    /// Scale of the misalignment (`A(i)`) axis of [`misalignment_histogram`] and
    /// [`score_vs_success`]. Default [`AxisScale::Log1p`].
    pub misalignment_scale: AxisScale,
    /// Number of histogram bins, 1..=1000. Default 30.
    pub bins: usize,
}

impl Default for PlotStyle {
    fn default() -> Self {
        Self {
            width: 800,
            height: 500,
            misalignment_scale: AxisScale::Log1p,
            bins: 30,
        }
    }
}

/// Paths of the two files written for one plot.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PlotFiles {
    /// `<out_dir>/<stem>.svg`.
    pub svg: PathBuf,
    /// `<out_dir>/<stem>.png`.
    pub png: PathBuf,
}

/// Two overlaid histograms of per-fact misalignment `A(i)` on shared bins, with a legend.
///
/// `labels` name `before` and `after` (e.g. `("MEMIT", "EAMET")`); the legend adds each
/// series' size. Bars are counts of facts per bin, drawn semi-transparent so that both
/// series stay visible where they overlap. The x axis and the bins follow
/// `style.misalignment_scale` (see the [module documentation](self)); `style.bins` sets the
/// number of bins.
///
/// # Errors
///
/// [`PlotError::Empty`] if either series is empty, [`PlotError::NonFinite`] for NaN or
/// infinite values, [`PlotError::OutOfRange`] for negative values on a
/// [`AxisScale::Log1p`] axis, and the size, bins, stem and I/O errors of every plot.
pub fn misalignment_histogram(
    before: &[f64],
    after: &[f64],
    labels: (&str, &str),
    title: &str,
    out_dir: &Path,
    stem: &str,
    style: &PlotStyle,
) -> Result<PlotFiles, PlotError> {
    check_common(stem, style)?;
    if !(1..=MAX_BINS).contains(&style.bins) {
        return Err(PlotError::InvalidBins(style.bins));
    }
    let scale = style.misalignment_scale;
    check_series(before, labels.0, scale)?;
    check_series(after, labels.1, scale)?;

    draw_histogram(
        &[(labels.0, before), (labels.1, after)],
        "A(i)",
        "facts",
        title,
        scale,
        out_dir,
        stem,
        style,
    )
}

/// Overlaid histograms of any non-negative (on a [`AxisScale::Log1p`] axis) or real (on a
/// [`AxisScale::Linear`] one) values on shared bins, with a legend: for per-prompt quantities
/// such as the neighbourhood KL. `series` holds `(label, values)`; `x_label` describes the
/// values and `y_label` what is counted; `style.bins` sets the number of bins.
///
/// # Errors
///
/// [`PlotError::Empty`] without series or for an empty one, [`PlotError::NonFinite`] for NaN
/// or infinite values, [`PlotError::OutOfRange`] for negative values on a `Log1p` axis, and
/// the size, bins, stem and I/O errors of every plot.
#[allow(clippy::too_many_arguments)]
pub fn histogram(
    series: &[(&str, &[f64])],
    x_label: &str,
    y_label: &str,
    title: &str,
    scale: AxisScale,
    out_dir: &Path,
    stem: &str,
    style: &PlotStyle,
) -> Result<PlotFiles, PlotError> {
    check_common(stem, style)?;
    if !(1..=MAX_BINS).contains(&style.bins) {
        return Err(PlotError::InvalidBins(style.bins));
    }
    if series.is_empty() {
        return Err(PlotError::Empty {
            what: "series".into(),
        });
    }
    for (label, values) in series {
        check_series(values, label, scale)?;
    }
    draw_histogram(series, x_label, y_label, title, scale, out_dir, stem, style)
}

#[allow(clippy::too_many_arguments)]
fn draw_histogram(
    series: &[(&str, &[f64])],
    x_label: &str,
    y_label: &str,
    title: &str,
    scale: AxisScale,
    out_dir: &Path,
    stem: &str,
    style: &PlotStyle,
) -> Result<PlotFiles, PlotError> {
    let all = series.iter().flat_map(|(_, v)| v.iter().copied());
    let axis = ValueAxis::for_values(scale, all, false);
    let bins = style.bins;
    let counts: Vec<Vec<usize>> = series
        .iter()
        .map(|(_, v)| axis.bin_counts(v, bins))
        .collect();
    let max_count = counts.iter().flatten().copied().max().unwrap_or(0).max(1);
    let figure = Histogram {
        title: xml_safe(title),
        axis,
        bins,
        x_label: xml_safe(x_label),
        y_label: xml_safe(y_label),
        series: series
            .iter()
            .zip(counts)
            .map(|((label, v), c)| (xml_safe(&format!("{label} (n = {})", v.len())), c))
            .collect(),
        y_max: max_count as f64 * 1.08,
    };
    render_and_write(&figure, out_dir, stem, style)
}

/// Scatter of per-fact misalignment against success: `A(i)` on x, success on y.
///
/// Each point is drawn as is (no jitter), as a small semi-transparent dot, so that stacked
/// points (success is often exactly 0 or 1) show as darker dots. `axis_labels` are the x and
/// y axis descriptions (e.g. `("A(i)", "efficacy")`). The x axis follows
/// `style.misalignment_scale`.
///
/// # Errors
///
/// [`PlotError::Empty`] without points, [`PlotError::NonFinite`] for NaN or infinite
/// coordinates, [`PlotError::OutOfRange`] for a success outside `[0, 1]` or a negative
/// `A(i)` on a [`AxisScale::Log1p`] axis, and the size, stem and I/O errors of every plot.
pub fn score_vs_success(
    points: &[(f64, f64)],
    axis_labels: (&str, &str),
    title: &str,
    out_dir: &Path,
    stem: &str,
    style: &PlotStyle,
) -> Result<PlotFiles, PlotError> {
    check_common(stem, style)?;
    if points.is_empty() {
        return Err(PlotError::Empty {
            what: "points".into(),
        });
    }
    for (index, &(a, s)) in points.iter().enumerate() {
        check_value("points (x)", index, a, style.misalignment_scale)?;
        check_finite("points (y)", index, s)?;
        if !(0.0..=1.0).contains(&s) {
            return Err(PlotError::OutOfRange {
                what: "points (y)".into(),
                index,
                value: s,
                expected: "[0, 1]",
            });
        }
    }
    let axis = ValueAxis::for_values(style.misalignment_scale, points.iter().map(|p| p.0), true);
    let figure = Scatter {
        title: xml_safe(title),
        axis,
        axis_labels: (xml_safe(axis_labels.0), xml_safe(axis_labels.1)),
        points,
    };
    render_and_write(&figure, out_dir, stem, style)
}

/// One line with markers per method: a metric (y) against the number of edits (x).
///
/// `series` holds `(method, points)` with points `(number of edits, metric)`, in any order
/// (they are sorted by number of edits). Each method gets its own colour and marker shape,
/// and the legend names it. The x axis is logarithmic when all numbers of edits are at
/// least 1 and span more than a decade, linear otherwise. The y axis is `[0, 1]` when all
/// metrics lie there, and the metrics' range otherwise. `y_label` describes the metric.
///
/// # Errors
///
/// [`PlotError::Empty`] without series or for a series without points,
/// [`PlotError::NonFinite`] for a NaN or infinite metric, and the size, stem and I/O errors
/// of every plot.
pub fn efficacy_vs_edits(
    series: &[(String, Vec<(usize, f64)>)],
    y_label: &str,
    title: &str,
    out_dir: &Path,
    stem: &str,
    style: &PlotStyle,
) -> Result<PlotFiles, PlotError> {
    check_common(stem, style)?;
    if series.is_empty() {
        return Err(PlotError::Empty {
            what: "series".into(),
        });
    }
    for (name, points) in series {
        if points.is_empty() {
            return Err(PlotError::Empty {
                what: format!("series {name:?}"),
            });
        }
        for (index, &(_, metric)) in points.iter().enumerate() {
            check_finite(&format!("series {name:?}"), index, metric)?;
        }
    }
    let sorted: Vec<(String, Vec<(f64, f64)>)> = series
        .iter()
        .map(|(name, points)| {
            let mut pts: Vec<(usize, f64)> = points.clone();
            pts.sort_by_key(|p| p.0);
            let pts = pts.into_iter().map(|(n, m)| (n as f64, m)).collect();
            (xml_safe(name), pts)
        })
        .collect();
    let ns = || series.iter().flat_map(|(_, p)| p.iter().map(|q| q.0));
    let (n_min, n_max) = (ns().min().unwrap_or(0), ns().max().unwrap_or(0));
    let log_x = n_min >= 1 && (n_max as f64) > 10.0 * n_min as f64;
    let x_axis = if log_x {
        ValueAxis::log10(n_min as f64, n_max as f64)
    } else {
        ValueAxis::linear(n_min as f64, n_max as f64, true)
    };
    let metrics = || series.iter().flat_map(|(_, p)| p.iter().map(|q| q.1));
    let (m_min, m_max) = metrics().fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), m| {
        (lo.min(m), hi.max(m))
    });
    let y_range = if m_min >= 0.0 && m_max <= 1.0 {
        -0.02..1.02
    } else {
        padded_range(m_min, m_max)
    };
    let figure = Lines {
        title: xml_safe(title),
        x_axis,
        y_range,
        y_label: xml_safe(y_label),
        series: sorted,
    };
    render_and_write(&figure, out_dir, stem, style)
}

// ---------------------------------------------------------------------------------------
// validation

fn check_common(stem: &str, style: &PlotStyle) -> Result<(), PlotError> {
    let (lo, hi) = SIZE_LIMITS;
    if !(lo..=hi).contains(&style.width) || !(lo..=hi).contains(&style.height) {
        return Err(PlotError::InvalidSize {
            width: style.width,
            height: style.height,
        });
    }
    let bad = stem.is_empty()
        || stem == "."
        || stem == ".."
        || stem.contains(['/', '\\', '\0'])
        || stem.contains(std::path::MAIN_SEPARATOR);
    if bad {
        return Err(PlotError::InvalidStem(stem.to_owned()));
    }
    Ok(())
}

fn check_finite(what: &str, index: usize, value: f64) -> Result<(), PlotError> {
    if value.is_finite() {
        Ok(())
    } else {
        Err(PlotError::NonFinite {
            what: what.to_owned(),
            index,
            value,
        })
    }
}

fn check_value(what: &str, index: usize, value: f64, scale: AxisScale) -> Result<(), PlotError> {
    check_finite(what, index, value)?;
    if scale == AxisScale::Log1p && value < 0.0 {
        return Err(PlotError::OutOfRange {
            what: what.to_owned(),
            index,
            value,
            expected: "[0, +inf) (log10(1 + x) axis)",
        });
    }
    Ok(())
}

fn check_series(values: &[f64], what: &str, scale: AxisScale) -> Result<(), PlotError> {
    if values.is_empty() {
        return Err(PlotError::Empty {
            what: what.to_owned(),
        });
    }
    for (index, &v) in values.iter().enumerate() {
        check_value(what, index, v, scale)?;
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------
// axes

/// How values map to chart coordinates.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Map {
    Linear,
    Log1p,
    Log10,
}

impl Map {
    fn forward(self, v: f64) -> f64 {
        match self {
            Map::Linear => v,
            Map::Log1p => v.ln_1p() / std::f64::consts::LN_10,
            Map::Log10 => v.log10(),
        }
    }
}

/// A value axis: the coordinate range (after the map) and the ticks, as
/// `(coordinate, label)`.
#[derive(Debug, Clone)]
struct ValueAxis {
    map: Map,
    range: Range<f64>,
    ticks: Vec<(f64, String)>,
}

impl ValueAxis {
    /// Axis for (validated) values: from 0 to the largest value on a `Log1p` axis, from the
    /// smallest to the largest on a linear one (padded by 5% on each side when `pad`).
    fn for_values(scale: AxisScale, values: impl Iterator<Item = f64>, pad: bool) -> Self {
        let (lo, hi) = values.fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), v| {
            (lo.min(v), hi.max(v))
        });
        match scale {
            AxisScale::Linear => Self::linear(lo, hi, pad),
            AxisScale::Log1p => Self::log1p(hi, pad),
        }
    }

    fn linear(lo: f64, hi: f64, pad: bool) -> Self {
        let range = if pad {
            padded_range(lo, hi)
        } else if hi > lo {
            lo..hi
        } else {
            widen(lo)
        };
        let ticks = linear_ticks(range.start, range.end)
            .into_iter()
            .map(|t| (t, format_number(t)))
            .collect();
        Self {
            map: Map::Linear,
            range,
            ticks,
        }
    }

    fn log1p(max: f64, pad: bool) -> Self {
        let map = Map::Log1p;
        // All zero: still show [0, 1].
        let max = if max > 0.0 { max } else { 1.0 };
        let t_max = map.forward(max);
        let end = if pad { t_max * 1.03 } else { t_max };
        let start = if pad { -t_max * 0.03 } else { 0.0 };
        let mut candidates = vec![0.0];
        candidates.extend(decade_candidates(max * 1e-7, max));
        let ticks = pick_ticks(map, &candidates, t_max);
        Self {
            map,
            range: start..end,
            ticks,
        }
    }

    fn log10(min: f64, max: f64) -> Self {
        let map = Map::Log10;
        let (t_min, t_max) = (map.forward(min), map.forward(max));
        let pad = (t_max - t_min) * 0.04;
        let candidates: Vec<f64> = decade_candidates(min, max).collect();
        let ticks = pick_ticks(map, &candidates, t_max - t_min);
        Self {
            map,
            range: (t_min - pad)..(t_max + pad),
            ticks,
        }
    }

    fn coord(&self, v: f64) -> f64 {
        self.map.forward(v)
    }

    /// Counts of `values` in `bins` equal bins over the axis range (in coordinates).
    fn bin_counts(&self, values: &[f64], bins: usize) -> Vec<usize> {
        let mut counts = vec![0usize; bins];
        let (lo, hi) = (self.range.start, self.range.end);
        for &v in values {
            // Halved to stay finite for ranges as wide as the whole f64 line.
            let frac = (self.coord(v) / 2.0 - lo / 2.0) / (hi / 2.0 - lo / 2.0);
            let index = if frac.is_finite() {
                ((frac * bins as f64).floor().max(0.0) as usize).min(bins - 1)
            } else {
                0
            };
            counts[index] += 1;
        }
        counts
    }

    /// Edges of bin `i` of `bins`, in coordinates.
    fn bin_edges(&self, i: usize, bins: usize) -> (f64, f64) {
        let (lo, hi) = (self.range.start, self.range.end);
        let at = |k: usize| {
            let f = k as f64 / bins as f64;
            lo + (hi / 2.0 - lo / 2.0) * 2.0 * f
        };
        (at(i), at(i + 1))
    }
}

/// `v` is the only value: a range of width 1 around it (or ±10% of it when larger).
fn widen(v: f64) -> Range<f64> {
    let half = (v.abs() * 0.1).max(0.5);
    (v - half)..(v + half)
}

/// `[lo, hi]` with 5% of its width added on each side (a width of 1 when `lo == hi`).
fn padded_range(lo: f64, hi: f64) -> Range<f64> {
    if hi <= lo {
        return widen(lo);
    }
    let pad = (hi / 2.0 - lo / 2.0) * 0.1;
    let (a, b) = (lo - pad, hi + pad);
    if a.is_finite() && b.is_finite() {
        a..b
    } else {
        lo..hi
    }
}

/// Round ticks (1, 2 or 5 times a power of ten apart) within `[lo, hi]`, about 5 to 10.
fn linear_ticks(lo: f64, hi: f64) -> Vec<f64> {
    let width = hi - lo;
    if !(width.is_finite() && width > 0.0) {
        return vec![lo, hi];
    }
    let raw = width / 8.0;
    let mag = 10f64.powf(raw.log10().floor());
    let step = [1.0, 2.0, 5.0, 10.0]
        .iter()
        .map(|m| m * mag)
        .find(|&s| s >= raw)
        .unwrap_or(10.0 * mag);
    let first = (lo / step).ceil();
    let last = (hi / step).floor();
    if !(first.is_finite() && last.is_finite()) || last - first > 20.0 {
        return vec![lo, hi];
    }
    let mut ticks = Vec::new();
    let mut k = first;
    while k <= last {
        let t = k * step;
        // Snap -0.0 and float noise around zero.
        ticks.push(if t.abs() < step * 1e-9 { 0.0 } else { t });
        k += 1.0;
    }
    ticks
}

/// Values `m · 10^k` (m = 1, 2, 5) within `[lo, hi]`, parsed from text so they are the
/// nearest doubles to the round numbers.
fn decade_candidates(lo: f64, hi: f64) -> impl Iterator<Item = f64> {
    let k_lo = if lo > 0.0 {
        lo.log10().floor() as i32
    } else {
        -300
    };
    let k_hi = hi.log10().ceil() as i32;
    let k_lo = k_lo.max(k_hi - 40);
    (k_lo..=k_hi)
        .flat_map(|k| [1, 2, 5].map(|m| format!("{m}e{k}").parse::<f64>().unwrap_or(f64::NAN)))
        .filter(move |v| v.is_finite() && *v >= lo && *v <= hi)
}

/// Ticks among `candidates` (values): 0 and the powers of ten first, each at least 1/15 of
/// the axis `span` (in coordinates) from those already kept; then the multiples of 5, then
/// those of 2, each as a group (members too close to a kept tick skipped), and only if the
/// group keeps the number of ticks to 8.
fn pick_ticks(map: Map, candidates: &[f64], span: f64) -> Vec<(f64, String)> {
    let gap = span / 15.0;
    let fits = |kept: &[f64], v: f64| {
        let c = map.forward(v);
        kept.iter().all(|&k| (map.forward(k) - c).abs() >= gap)
    };
    let leading = |v: f64, digit: char| {
        if v == 0.0 {
            digit == '0'
        } else {
            format!("{v:e}").starts_with(digit)
        }
    };
    let mut kept: Vec<f64> = Vec::new();
    for digit in ['0', '1'] {
        for &v in candidates {
            if leading(v, digit) && fits(&kept, v) {
                kept.push(v);
            }
        }
    }
    for digit in ['5', '2'] {
        let mut extended = kept.clone();
        for &v in candidates {
            if leading(v, digit) && fits(&extended, v) {
                extended.push(v);
            }
        }
        if extended.len() <= 8 {
            kept = extended;
        }
    }
    kept.sort_by(f64::total_cmp);
    kept.into_iter()
        .map(|v| (map.forward(v), format_number(v)))
        .collect()
}

/// Short label for a tick value: plain notation from 0.001 to 99999, else scientific;
/// rounded to 6 significant digits (hides float noise such as 0.30000000000000004).
fn format_number(v: f64) -> String {
    if v == 0.0 || !v.is_finite() {
        return if v.is_finite() {
            "0".into()
        } else {
            v.to_string()
        };
    }
    let rounded: f64 = format!("{v:.5e}").parse().unwrap_or(v);
    let a = rounded.abs();
    if (1e-3..1e5).contains(&a) {
        format!("{rounded}")
    } else {
        format!("{rounded:e}")
    }
}

/// Integer ticks for a count axis `[0, max]`.
fn count_ticks(max: f64) -> Vec<f64> {
    let mut ticks = linear_ticks(0.0, max);
    ticks.retain(|t| t.fract() == 0.0);
    ticks
}

/// A linear f64 axis whose ticks are given (plotters' own `WithKeyPoints` combinator loses
/// the label formatter of `f64` ranges).
#[derive(Debug, Clone)]
struct Ticked {
    range: Range<f64>,
    ticks: Vec<f64>,
}

impl Ticked {
    fn new(range: Range<f64>, ticks: Vec<f64>) -> Self {
        Self { range, ticks }
    }
}

impl Ranged for Ticked {
    type FormatOption = plotters::coord::ranged1d::DefaultFormatting;
    type ValueType = f64;

    fn map(&self, value: &f64, limit: (i32, i32)) -> i32 {
        let (lo, hi) = (self.range.start, self.range.end);
        let pixels = f64::from(limit.1) - f64::from(limit.0);
        // Halved to stay finite for ranges as wide as the whole f64 line.
        let frac = (value / 2.0 - lo / 2.0) / (hi / 2.0 - lo / 2.0);
        if !frac.is_finite() {
            return limit.0;
        }
        // `as` saturates for values far outside the range.
        (f64::from(limit.0) + (pixels * frac).round()) as i32
    }

    fn key_points<Hint: plotters::coord::ranged1d::KeyPointHint>(&self, hint: Hint) -> Vec<f64> {
        if hint.weight().allow_light_points() {
            Vec::new()
        } else {
            self.ticks.clone()
        }
    }

    fn range(&self) -> Range<f64> {
        self.range.clone()
    }
}

// ---------------------------------------------------------------------------------------
// figures

/// A figure that can be drawn on any plotters backend.
trait Figure {
    fn draw<DB: DrawingBackend>(&self, area: &DrawingArea<DB, Shift>) -> Result<(), PlotError>;
}

fn draw_err<E: std::error::Error + Send + Sync>(e: DrawingAreaErrorKind<E>) -> PlotError {
    PlotError::Draw(e.to_string())
}

/// `text` without the characters that XML 1.0 forbids (control characters other than tab,
/// line feed and carriage return, U+FFFE, U+FFFF): each becomes U+FFFD, so that any title or
/// label keeps the SVG file well-formed.
fn xml_safe(text: &str) -> String {
    text.chars()
        .map(|c| {
            let forbidden = (c.is_control() && !matches!(c, '\t' | '\n' | '\r') && c < '\u{7f}')
                || c == '\u{fffe}'
                || c == '\u{ffff}';
            if forbidden {
                '\u{fffd}'
            } else {
                c
            }
        })
        .collect()
}

fn font(size: u32) -> TextStyle<'static> {
    (FONT_FAMILY, size).into_font().color(&BLACK)
}

fn caption_font() -> TextStyle<'static> {
    font(22)
}

struct Histogram {
    title: String,
    axis: ValueAxis,
    bins: usize,
    x_label: String,
    y_label: String,
    series: Vec<(String, Vec<usize>)>,
    y_max: f64,
}

impl Figure for Histogram {
    fn draw<DB: DrawingBackend>(&self, area: &DrawingArea<DB, Shift>) -> Result<(), PlotError> {
        let key_points: Vec<f64> = self.axis.ticks.iter().map(|t| t.0).collect();
        let mut chart = ChartBuilder::on(area)
            .caption(self.title.as_str(), caption_font())
            .margin(14)
            .x_label_area_size(48)
            .y_label_area_size(64)
            .build_cartesian_2d(
                Ticked::new(self.axis.range.clone(), key_points),
                Ticked::new(0.0..self.y_max, count_ticks(self.y_max)),
            )
            .map_err(draw_err)?;
        let ticks = &self.axis.ticks;
        let x_fmt = |c: &f64| tick_label(ticks, *c);
        let x_desc = match self.axis.map {
            Map::Log1p => format!("{} (log10(1 + x) scale)", self.x_label),
            _ => self.x_label.clone(),
        };
        chart
            .configure_mesh()
            .x_desc(x_desc)
            .y_desc(self.y_label.as_str())
            .x_label_formatter(&x_fmt)
            .y_label_formatter(&|v: &f64| format_number(*v))
            .label_style(font(14))
            .axis_desc_style(font(16))
            .light_line_style(TRANSPARENT)
            .draw()
            .map_err(draw_err)?;
        for (k, (label, counts)) in self.series.iter().enumerate() {
            let color = PALETTE[k % PALETTE.len()];
            let fill = color.mix(0.45).filled();
            let bars = counts
                .iter()
                .enumerate()
                .filter(|(_, &c)| c > 0)
                .map(move |(i, &c)| {
                    let (x0, x1) = self.axis.bin_edges(i, self.bins);
                    Rectangle::new([(x0, 0.0), (x1, c as f64)], fill)
                });
            chart
                .draw_series(bars)
                .map_err(draw_err)?
                .label(label.as_str())
                .legend(move |(x, y)| Rectangle::new([(x, y - 6), (x + 14, y + 6)], fill));
            let outline = counts
                .iter()
                .enumerate()
                .filter(|(_, &c)| c > 0)
                .map(move |(i, &c)| {
                    let (x0, x1) = self.axis.bin_edges(i, self.bins);
                    Rectangle::new([(x0, 0.0), (x1, c as f64)], color.stroke_width(1))
                });
            chart.draw_series(outline).map_err(draw_err)?;
        }
        chart
            .configure_series_labels()
            .position(SeriesLabelPosition::UpperRight)
            .label_font(font(15))
            .background_style(WHITE.mix(0.85))
            .border_style(BLACK.mix(0.5))
            .draw()
            .map_err(draw_err)?;
        Ok(())
    }
}

/// The label of the tick at coordinate `c` (plotters asks for the key points it was given).
fn tick_label(ticks: &[(f64, String)], c: f64) -> String {
    ticks
        .iter()
        .min_by(|a, b| (a.0 - c).abs().total_cmp(&(b.0 - c).abs()))
        .map_or_else(|| format_number(c), |t| t.1.clone())
}

struct Scatter<'a> {
    title: String,
    axis: ValueAxis,
    axis_labels: (String, String),
    points: &'a [(f64, f64)],
}

impl Figure for Scatter<'_> {
    fn draw<DB: DrawingBackend>(&self, area: &DrawingArea<DB, Shift>) -> Result<(), PlotError> {
        let key_points: Vec<f64> = self.axis.ticks.iter().map(|t| t.0).collect();
        let y_keys: Vec<f64> = (0..=10).map(|i| f64::from(i) / 10.0).collect();
        let mut chart = ChartBuilder::on(area)
            .caption(self.title.as_str(), caption_font())
            .margin(14)
            .x_label_area_size(48)
            .y_label_area_size(64)
            .build_cartesian_2d(
                Ticked::new(self.axis.range.clone(), key_points),
                Ticked::new(-0.04..1.04, y_keys),
            )
            .map_err(draw_err)?;
        let ticks = &self.axis.ticks;
        let x_fmt = |c: &f64| tick_label(ticks, *c);
        let x_desc = match self.axis.map {
            Map::Log1p => format!("{} (log10(1 + x) scale)", self.axis_labels.0),
            _ => self.axis_labels.0.clone(),
        };
        chart
            .configure_mesh()
            .x_desc(x_desc)
            .y_desc(self.axis_labels.1.as_str())
            .x_label_formatter(&x_fmt)
            .y_label_formatter(&|v: &f64| format_number(*v))
            .label_style(font(14))
            .axis_desc_style(font(16))
            .light_line_style(TRANSPARENT)
            .draw()
            .map_err(draw_err)?;
        let style = PALETTE[0].mix(0.5).filled();
        chart
            .draw_series(
                self.points
                    .iter()
                    .map(|&(a, s)| Circle::new((self.axis.coord(a), s), 3, style)),
            )
            .map_err(draw_err)?;
        Ok(())
    }
}

struct Lines {
    title: String,
    x_axis: ValueAxis,
    y_range: Range<f64>,
    y_label: String,
    series: Vec<(String, Vec<(f64, f64)>)>,
}

impl Figure for Lines {
    fn draw<DB: DrawingBackend>(&self, area: &DrawingArea<DB, Shift>) -> Result<(), PlotError> {
        let key_points: Vec<f64> = self.x_axis.ticks.iter().map(|t| t.0).collect();
        let y_keys = linear_ticks(self.y_range.start, self.y_range.end);
        let mut chart = ChartBuilder::on(area)
            .caption(self.title.as_str(), caption_font())
            .margin(14)
            .x_label_area_size(48)
            .y_label_area_size(64)
            .build_cartesian_2d(
                Ticked::new(self.x_axis.range.clone(), key_points),
                Ticked::new(self.y_range.clone(), y_keys),
            )
            .map_err(draw_err)?;
        let ticks = &self.x_axis.ticks;
        let x_fmt = |c: &f64| tick_label(ticks, *c);
        let x_desc = match self.x_axis.map {
            Map::Log10 => "number of edits (log scale)",
            _ => "number of edits",
        };
        chart
            .configure_mesh()
            .x_desc(x_desc)
            .y_desc(self.y_label.as_str())
            .x_label_formatter(&x_fmt)
            .y_label_formatter(&|v: &f64| format_number(*v))
            .label_style(font(14))
            .axis_desc_style(font(16))
            .light_line_style(TRANSPARENT)
            .draw()
            .map_err(draw_err)?;
        for (k, (name, points)) in self.series.iter().enumerate() {
            let color = PALETTE[k % PALETTE.len()];
            let coords: Vec<(f64, f64)> = points
                .iter()
                .map(|&(n, m)| (self.x_axis.coord(n), m))
                .collect();
            let marker = k % 4;
            chart
                .draw_series(LineSeries::new(coords.clone(), color.stroke_width(2)))
                .map_err(draw_err)?
                .label(name.as_str())
                .legend(move |(x, y)| {
                    EmptyElement::at((x, y))
                        + PathElement::new(vec![(0, 0), (22, 0)], color.stroke_width(2))
                        + marker_element(marker, (11, 0), color)
                });
            chart
                .draw_series(
                    coords
                        .iter()
                        .map(|&c| EmptyElement::at(c) + marker_element(marker, (0, 0), color)),
                )
                .map_err(draw_err)?;
        }
        chart
            .configure_series_labels()
            .position(SeriesLabelPosition::LowerLeft)
            .label_font(font(15))
            .background_style(WHITE.mix(0.85))
            .border_style(BLACK.mix(0.5))
            .draw()
            .map_err(draw_err)?;
        Ok(())
    }
}

/// Marker `kind` (0 circle, 1 triangle, 2 square, 3 diamond) centred at pixel offset `at`,
/// as a path so that one type serves every shape.
fn marker_element(kind: usize, at: (i32, i32), color: RGBColor) -> Polygon<(i32, i32)> {
    let (x, y) = at;
    let r = 5;
    let pts: Vec<(i32, i32)> = match kind {
        0 => (0..12)
            .map(|i| {
                let a = f64::from(i) * std::f64::consts::TAU / 12.0;
                (
                    x + (f64::from(r) * a.cos()).round() as i32,
                    y + (f64::from(r) * a.sin()).round() as i32,
                )
            })
            .collect(),
        1 => vec![(x, y - r - 1), (x + r + 1, y + r), (x - r - 1, y + r)],
        2 => vec![
            (x - r, y - r),
            (x + r, y - r),
            (x + r, y + r),
            (x - r, y + r),
        ],
        _ => vec![
            (x, y - r - 1),
            (x + r + 1, y),
            (x, y + r + 1),
            (x - r - 1, y),
        ],
    };
    Polygon::new(pts, color.filled())
}

// ---------------------------------------------------------------------------------------
// rendering and output

fn ensure_font() -> Result<(), PlotError> {
    static REGISTERED: OnceLock<bool> = OnceLock::new();
    let ok = *REGISTERED.get_or_init(|| {
        plotters::style::register_font(FONT_FAMILY, FontStyle::Normal, FONT_BYTES).is_ok()
    });
    if ok {
        Ok(())
    } else {
        Err(PlotError::Font)
    }
}

fn render_svg(figure: &impl Figure, size: (u32, u32)) -> Result<String, PlotError> {
    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, size).into_drawing_area();
        root.fill(&WHITE).map_err(draw_err)?;
        figure.draw(&root)?;
        root.present().map_err(draw_err)?;
    }
    Ok(svg)
}

fn render_png(figure: &impl Figure, (w, h): (u32, u32)) -> Result<Vec<u8>, PlotError> {
    let mut pixels = vec![0u8; w as usize * h as usize * 3];
    {
        let backend = BitMapBackend::with_buffer_and_format(&mut pixels, (w, h))
            .map_err(|e| PlotError::Draw(e.to_string()))?;
        let root = raster::TextRaster::new(backend).into_drawing_area();
        root.fill(&WHITE).map_err(draw_err)?;
        figure.draw(&root)?;
        root.present().map_err(draw_err)?;
    }
    let mut png_bytes = Vec::new();
    {
        let png_err = |e: png::EncodingError| PlotError::Png(e.to_string());
        let mut encoder = png::Encoder::new(&mut png_bytes, w, h);
        encoder.set_color(png::ColorType::Rgb);
        encoder.set_depth(png::BitDepth::Eight);
        let mut writer = encoder.write_header().map_err(png_err)?;
        writer.write_image_data(&pixels).map_err(png_err)?;
        writer.finish().map_err(png_err)?;
    }
    Ok(png_bytes)
}

fn render_and_write(
    figure: &impl Figure,
    out_dir: &Path,
    stem: &str,
    style: &PlotStyle,
) -> Result<PlotFiles, PlotError> {
    let meta = fs::metadata(out_dir).map_err(|source| PlotError::Io {
        path: out_dir.to_owned(),
        source,
    })?;
    if !meta.is_dir() {
        return Err(PlotError::Io {
            path: out_dir.to_owned(),
            source: io::Error::new(io::ErrorKind::NotADirectory, "not a directory"),
        });
    }
    ensure_font()?;
    let size = (style.width, style.height);
    let svg = render_svg(figure, size)?;
    let png = render_png(figure, size)?;
    let files = PlotFiles {
        svg: out_dir.join(format!("{stem}.svg")),
        png: out_dir.join(format!("{stem}.png")),
    };
    write_atomically(out_dir, &[(&files.svg, svg.as_bytes()), (&files.png, &png)])?;
    Ok(files)
}

/// Writes every `(path, bytes)` to a temporary file in `dir`, then renames them all into
/// place; on error, removes the temporary files left.
fn write_atomically(dir: &Path, outputs: &[(&Path, &[u8])]) -> Result<(), PlotError> {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let mut temps: Vec<PathBuf> = Vec::with_capacity(outputs.len());
    let result = (|| {
        for (path, bytes) in outputs {
            let name = path
                .file_name()
                .map_or_else(Default::default, |n| n.to_string_lossy());
            let temp = dir.join(format!(
                ".{name}.{}.{}.tmp",
                std::process::id(),
                COUNTER.fetch_add(1, Ordering::Relaxed)
            ));
            let io_err = |source| PlotError::Io {
                path: temp.clone(),
                source,
            };
            let mut file: File = OpenOptions::new()
                .write(true)
                .create_new(true)
                .open(&temp)
                .map_err(io_err)?;
            temps.push(temp.clone());
            file.write_all(bytes).map_err(io_err)?;
            file.sync_all().map_err(io_err)?;
        }
        for ((path, _), temp) in outputs.iter().zip(&temps) {
            fs::rename(temp, path).map_err(|source| PlotError::Io {
                path: path.to_path_buf(),
                source,
            })?;
        }
        Ok(())
    })();
    if result.is_err() {
        for temp in &temps {
            // Already renamed ones are gone; the others are ours to clean up.
            let _ = fs::remove_file(temp);
        }
    }
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ticks_are_round() {
        let labels = |ticks: Vec<f64>| ticks.into_iter().map(format_number).collect::<Vec<_>>();
        assert_eq!(
            labels(linear_ticks(0.0, 1.0)),
            ["0", "0.2", "0.4", "0.6", "0.8", "1"]
        );
        assert_eq!(labels(linear_ticks(-3.4, 5.0)), ["-2", "0", "2", "4"]);
        assert_eq!(
            labels(linear_ticks(1.0, f64::MAX)),
            ["5e307", "1e308", "1.5e308"]
        );
        assert_eq!(count_ticks(3.3), [0.0, 1.0, 2.0, 3.0]);
        let axis = ValueAxis::log1p(1000.0, false);
        let labels: Vec<&str> = axis.ticks.iter().map(|t| t.1.as_str()).collect();
        assert!(labels.contains(&"0") && labels.contains(&"10") && labels.contains(&"1000"));
        let axis = ValueAxis::log10(1.0, 10000.0);
        let labels: Vec<&str> = axis.ticks.iter().map(|t| t.1.as_str()).collect();
        assert!(
            labels.starts_with(&["1"]) && labels.contains(&"10000"),
            "{labels:?}"
        );
    }

    #[test]
    fn number_labels() {
        assert_eq!(format_number(0.30000000000000004), "0.3");
        assert_eq!(format_number(1e6), "1e6");
        assert_eq!(format_number(2e-5), "2e-5");
        assert_eq!(format_number(-0.0), "0");
        assert_eq!(format_number(250.0), "250");
    }

    #[test]
    fn bins_cover_all_values() {
        let axis = ValueAxis::for_values(AxisScale::Log1p, [0.0, 1.0, 1e6].into_iter(), false);
        let counts = axis.bin_counts(&[0.0, 1.0, 1e6], 10);
        assert_eq!(counts.iter().sum::<usize>(), 3);
        assert_eq!(counts[9], 1);
        // log10(2) = 0.3 is in the first bin, of width 0.6
        assert_eq!(counts[0], 2);
        let axis = ValueAxis::for_values(AxisScale::Linear, [-1e308, 1e308].into_iter(), false);
        let counts = axis.bin_counts(&[-1e308, 0.0, 1e308], 4);
        assert_eq!(counts, [1, 0, 1, 1]);
    }
}
