//! Trade-off scatter of settings (a hyperparameter sweep): a cost on x, a benefit on y, one
//! colour per method, the Pareto front drawn through the points no other point beats
//! ([`pareto_scatter`]).

use std::ops::Range;
use std::path::Path;

use plotters::coord::Shift;
use plotters::prelude::*;

use super::axis::{format_number, linear_ticks, padded_range, tick_label, Ticked, ValueAxis};
use super::lines::marker_element;
use super::{
    caption_font, check_common, check_finite, draw_err, font, render_and_write, xml_safe, Figure,
    PlotError, PlotFiles, PlotStyle, PALETTE,
};

/// One setting of a sweep: its cost (x, lower is better), its benefit (y, higher is better)
/// and a short label written beside it when it is on the front.
#[derive(Debug, Clone, PartialEq)]
pub struct TradeoffPoint {
    /// Cost, e.g. the neighbourhood KL; lower is better.
    pub cost: f64,
    /// Benefit, e.g. strict efficacy; higher is better.
    pub benefit: f64,
    /// What the point is, e.g. `L3-4 λ=300`.
    pub label: String,
}

/// Which of `points` (cost, benefit) are on the Pareto front when the cost is minimized and
/// the benefit maximized: a point is on it unless another point has a cost no higher and a
/// benefit no lower, and is better in at least one of them. Equal points are all on the front
/// (or all off it). A point with a NaN coordinate is never on the front and beats nothing.
pub fn pareto_front(points: &[(f64, f64)]) -> Vec<bool> {
    let ok = |p: &(f64, f64)| !p.0.is_nan() && !p.1.is_nan();
    points
        .iter()
        .map(|p| {
            ok(p)
                && !points
                    .iter()
                    .any(|q| ok(q) && q.0 <= p.0 && q.1 >= p.1 && (q.0 < p.0 || q.1 > p.1))
        })
        .collect()
}

/// Scatter of sweep settings: cost on x, benefit on y, one colour and marker shape per
/// `(method, points)` series, named in the legend. The Pareto front over all series (see
/// [`pareto_front`]) is joined by a dashed grey staircase and its points are labelled. The y
/// axis is `[0, 1]` when every benefit lies there, the benefits' range otherwise; the x axis
/// is linear over the costs. `axis_labels` are the x and y descriptions.
///
/// # Errors
///
/// [`PlotError::Empty`] without series or for a series without points,
/// [`PlotError::NonFinite`] for a NaN or infinite coordinate, and the size, stem and I/O
/// errors of every plot.
pub fn pareto_scatter(
    series: &[(String, Vec<TradeoffPoint>)],
    axis_labels: (&str, &str),
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
        for (index, p) in points.iter().enumerate() {
            check_finite(&format!("series {name:?} (cost)"), index, p.cost)?;
            check_finite(&format!("series {name:?} (benefit)"), index, p.benefit)?;
        }
    }
    let all: Vec<&TradeoffPoint> = series.iter().flat_map(|(_, p)| p.iter()).collect();
    let coords: Vec<(f64, f64)> = all.iter().map(|p| (p.cost, p.benefit)).collect();
    let on = pareto_front(&coords);
    let mut front: Vec<(f64, f64, String)> = all
        .iter()
        .zip(&on)
        .filter(|(_, &f)| f)
        .map(|(p, _)| (p.cost, p.benefit, xml_safe(&p.label)))
        .collect();
    front.sort_by(|a, b| a.0.total_cmp(&b.0).then(a.1.total_cmp(&b.1)));
    let (c_min, c_max) = coords
        .iter()
        .fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), p| {
            (lo.min(p.0), hi.max(p.0))
        });
    let (b_min, b_max) = coords
        .iter()
        .fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), p| {
            (lo.min(p.1), hi.max(p.1))
        });
    let y_range = if b_min >= 0.0 && b_max <= 1.0 {
        -0.02..1.02
    } else {
        padded_range(b_min, b_max)
    };
    let figure = Tradeoff {
        title: xml_safe(title),
        x_axis: ValueAxis::linear(c_min, c_max, true),
        y_range,
        axis_labels: (xml_safe(axis_labels.0), xml_safe(axis_labels.1)),
        series: series
            .iter()
            .map(|(name, pts)| {
                (
                    xml_safe(name),
                    pts.iter().map(|p| (p.cost, p.benefit)).collect(),
                )
            })
            .collect(),
        front,
    };
    render_and_write(&figure, out_dir, stem, style)
}

struct Tradeoff {
    title: String,
    x_axis: ValueAxis,
    y_range: Range<f64>,
    axis_labels: (String, String),
    series: Vec<(String, Vec<(f64, f64)>)>,
    front: Vec<(f64, f64, String)>,
}

impl Figure for Tradeoff {
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
        chart
            .configure_mesh()
            .x_desc(self.axis_labels.0.as_str())
            .y_desc(self.axis_labels.1.as_str())
            .x_label_formatter(&x_fmt)
            .y_label_formatter(&|v: &f64| format_number(*v))
            .label_style(font(14))
            .axis_desc_style(font(16))
            .light_line_style(TRANSPARENT)
            .draw()
            .map_err(draw_err)?;
        // The front as a staircase: from each front point, along the cost axis at its benefit
        // to the next point's cost, then up to the next point's benefit.
        let grey = RGBColor(120, 120, 120);
        let mut stair = Vec::with_capacity(self.front.len() * 2);
        for (i, (c, b, _)) in self.front.iter().enumerate() {
            if i > 0 {
                stair.push((self.x_axis.coord(*c), self.front[i - 1].1));
            }
            stair.push((self.x_axis.coord(*c), *b));
        }
        chart
            .draw_series(DashedLineSeries::new(stair, 6, 4, grey.stroke_width(1)))
            .map_err(draw_err)?;
        for (k, (name, points)) in self.series.iter().enumerate() {
            let color = PALETTE[k % PALETTE.len()];
            let marker = k % 4;
            chart
                .draw_series(points.iter().map(|&(c, b)| {
                    EmptyElement::at((self.x_axis.coord(c), b))
                        + marker_element(marker, (0, 0), color)
                }))
                .map_err(draw_err)?
                .label(name.as_str())
                .legend(move |(x, y)| {
                    EmptyElement::at((x, y)) + marker_element(marker, (11, 0), color)
                });
        }
        chart
            .draw_series(self.front.iter().map(|(c, b, label)| {
                EmptyElement::at((self.x_axis.coord(*c), *b))
                    + Text::new(label.clone(), (7, -16), font(12))
            }))
            .map_err(draw_err)?;
        chart
            .configure_series_labels()
            .position(SeriesLabelPosition::LowerRight)
            .label_font(font(15))
            .background_style(WHITE.mix(0.85))
            .border_style(BLACK.mix(0.5))
            .draw()
            .map_err(draw_err)?;
        Ok(())
    }
}
