//! Line chart with markers of a metric against the number of edits, one line per method
//! ([`efficacy_vs_edits`]).

use std::ops::Range;
use std::path::Path;

use plotters::coord::Shift;
use plotters::prelude::*;

use super::axis::{format_number, linear_ticks, padded_range, tick_label, Map, Ticked, ValueAxis};
use super::{
    caption_font, check_common, check_finite, draw_err, font, render_and_write, xml_safe, Figure,
    PlotError, PlotFiles, PlotStyle, PALETTE,
};

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
pub(super) fn marker_element(kind: usize, at: (i32, i32), color: RGBColor) -> Polygon<(i32, i32)> {
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
