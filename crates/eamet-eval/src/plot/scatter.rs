//! Scatter plot of per-fact misalignment `A(i)` against success ([`score_vs_success`]).

use std::path::Path;

use plotters::coord::Shift;
use plotters::prelude::*;

use super::axis::{format_number, tick_label, Map, Ticked, ValueAxis};
use super::{
    caption_font, check_common, check_finite, check_value, draw_err, font, render_and_write,
    xml_safe, Figure, PlotError, PlotFiles, PlotStyle, PALETTE,
};

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
///
/// [`AxisScale::Log1p`]: super::AxisScale::Log1p
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
