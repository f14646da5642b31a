//! Axes shared by every plot: value-to-coordinate maps, ranges, round ticks and their labels.

use std::ops::Range;

use plotters::prelude::*;

use super::AxisScale;

/// How values map to chart coordinates.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(super) enum Map {
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
pub(super) struct ValueAxis {
    pub(super) map: Map,
    pub(super) range: Range<f64>,
    pub(super) ticks: Vec<(f64, String)>,
}

impl ValueAxis {
    /// Axis for (validated) values: from 0 to the largest value on a `Log1p` axis, from the
    /// smallest to the largest on a linear one (padded by 5% on each side when `pad`).
    pub(super) fn for_values(
        scale: AxisScale,
        values: impl Iterator<Item = f64>,
        pad: bool,
    ) -> Self {
        let (lo, hi) = values.fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), v| {
            (lo.min(v), hi.max(v))
        });
        match scale {
            AxisScale::Linear => Self::linear(lo, hi, pad),
            AxisScale::Log1p => Self::log1p(hi, pad),
        }
    }

    pub(super) fn linear(lo: f64, hi: f64, pad: bool) -> Self {
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

    pub(super) fn log10(min: f64, max: f64) -> Self {
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

    pub(super) fn coord(&self, v: f64) -> f64 {
        self.map.forward(v)
    }

    /// Counts of `values` in `bins` equal bins over the axis range (in coordinates).
    pub(super) fn bin_counts(&self, values: &[f64], bins: usize) -> Vec<usize> {
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
    pub(super) fn bin_edges(&self, i: usize, bins: usize) -> (f64, f64) {
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
pub(super) fn padded_range(lo: f64, hi: f64) -> Range<f64> {
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
pub(super) fn linear_ticks(lo: f64, hi: f64) -> Vec<f64> {
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
pub(super) fn format_number(v: f64) -> String {
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
pub(super) fn count_ticks(max: f64) -> Vec<f64> {
    let mut ticks = linear_ticks(0.0, max);
    ticks.retain(|t| t.fract() == 0.0);
    ticks
}

/// A linear f64 axis whose ticks are given (plotters' own `WithKeyPoints` combinator loses
/// the label formatter of `f64` ranges).
#[derive(Debug, Clone)]
pub(super) struct Ticked {
    range: Range<f64>,
    ticks: Vec<f64>,
}

impl Ticked {
    pub(super) fn new(range: Range<f64>, ticks: Vec<f64>) -> Self {
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

/// The label of the tick at coordinate `c` (plotters asks for the key points it was given).
pub(super) fn tick_label(ticks: &[(f64, String)], c: f64) -> String {
    ticks
        .iter()
        .min_by(|a, b| (a.0 - c).abs().total_cmp(&(b.0 - c).abs()))
        .map_or_else(|| format_number(c), |t| t.1.clone())
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
