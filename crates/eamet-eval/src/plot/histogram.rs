//! Histograms: overlaid per-series counts on shared bins ([`misalignment_histogram`] for
//! per-fact `A(i)`, [`histogram`] for any values).

use std::path::Path;

use plotters::coord::Shift;
use plotters::prelude::*;

use super::axis::{count_ticks, format_number, tick_label, Map, Ticked, ValueAxis};
use super::{
    caption_font, check_common, check_series, draw_err, font, render_and_write, xml_safe,
    AxisScale, Figure, PlotError, PlotFiles, PlotStyle, PALETTE,
};

/// Largest accepted number of histogram bins.
const MAX_BINS: usize = 1000;

/// Two overlaid histograms of per-fact misalignment `A(i)` on shared bins, with a legend.
///
/// `labels` name `before` and `after` (e.g. `("MEMIT", "EAMET")`); the legend adds each
/// series' size. Bars are counts of facts per bin, drawn semi-transparent so that both
/// series stay visible where they overlap. The x axis and the bins follow
/// `style.misalignment_scale` (see the [module documentation](super)); `style.bins` sets the
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
