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
//! | [`pareto_scatter`] | settings of a sweep, cost against benefit, with their Pareto front |
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

use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use plotters::coord::Shift;
use plotters::prelude::*;

// One file per kind of plot (each with its public function(s) and its figure), plus the
// axes shared by all of them and the PNG text backend.
mod axis;
mod histogram;
mod lines;
mod pareto;
mod raster;
mod scatter;

pub use histogram::{histogram, misalignment_histogram};
pub use lines::efficacy_vs_edits;
pub use pareto::{pareto_front, pareto_scatter, TradeoffPoint};
pub use scatter::score_vs_success;

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
    crate::atomic::write_files(&[(&files.svg, svg.as_bytes()), (&files.png, &png)])
        .map_err(|(path, source)| PlotError::Io { path, source })?;
    Ok(files)
}
