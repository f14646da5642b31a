//! A bitmap backend that draws text with the embedded font itself.
//!
//! plotters' own `ab_glyph` text drawing places each glyph at the pen position without its
//! left side bearing, which leaves visibly uneven gaps between letters (`EAME T`). This
//! wrapper delegates everything to [`BitMapBackend`] except text, which it lays out with
//! ab_glyph (advances, kerning and side bearings) and rasterises with anti-aliasing.
//! plotters still measures text for its layout through its `ab_glyph` font registry (same
//! font, same advances), so the two agree on widths.

use std::sync::OnceLock;

use ab_glyph::{point, Font, FontRef, GlyphId, PxScale, ScaleFont};
use plotters::backend::BitMapBackend;
use plotters_backend::text_anchor::{HPos, VPos};
use plotters_backend::{
    BackendColor, BackendCoord, BackendStyle, BackendTextStyle, DrawingBackend, DrawingErrorKind,
};

type Inner<'a> = BitMapBackend<'a>;
type InnerError = <Inner<'static> as DrawingBackend>::ErrorType;

/// The parsed embedded font, `None` if it cannot be parsed (then text falls back to
/// plotters' own drawing).
fn font() -> Option<&'static FontRef<'static>> {
    static FONT: OnceLock<Option<FontRef<'static>>> = OnceLock::new();
    FONT.get_or_init(|| FontRef::try_from_slice(super::FONT_BYTES).ok())
        .as_ref()
}

/// [`BitMapBackend`] with its own text drawing (see the module documentation).
pub(super) struct TextRaster<'a> {
    inner: Inner<'a>,
}

impl<'a> TextRaster<'a> {
    pub(super) fn new(inner: Inner<'a>) -> Self {
        Self { inner }
    }
}

impl DrawingBackend for TextRaster<'_> {
    type ErrorType = InnerError;

    fn get_size(&self) -> (u32, u32) {
        self.inner.get_size()
    }

    fn ensure_prepared(&mut self) -> Result<(), DrawingErrorKind<InnerError>> {
        self.inner.ensure_prepared()
    }

    fn present(&mut self) -> Result<(), DrawingErrorKind<InnerError>> {
        self.inner.present()
    }

    fn draw_pixel(
        &mut self,
        point: BackendCoord,
        color: BackendColor,
    ) -> Result<(), DrawingErrorKind<InnerError>> {
        self.inner.draw_pixel(point, color)
    }

    fn draw_line<S: BackendStyle>(
        &mut self,
        from: BackendCoord,
        to: BackendCoord,
        style: &S,
    ) -> Result<(), DrawingErrorKind<InnerError>> {
        self.inner.draw_line(from, to, style)
    }

    fn draw_rect<S: BackendStyle>(
        &mut self,
        upper_left: BackendCoord,
        bottom_right: BackendCoord,
        style: &S,
        fill: bool,
    ) -> Result<(), DrawingErrorKind<InnerError>> {
        self.inner.draw_rect(upper_left, bottom_right, style, fill)
    }

    fn draw_path<S: BackendStyle, I: IntoIterator<Item = BackendCoord>>(
        &mut self,
        path: I,
        style: &S,
    ) -> Result<(), DrawingErrorKind<InnerError>> {
        self.inner.draw_path(path, style)
    }

    fn draw_circle<S: BackendStyle>(
        &mut self,
        center: BackendCoord,
        radius: u32,
        style: &S,
        fill: bool,
    ) -> Result<(), DrawingErrorKind<InnerError>> {
        self.inner.draw_circle(center, radius, style, fill)
    }

    fn fill_polygon<S: BackendStyle, I: IntoIterator<Item = BackendCoord>>(
        &mut self,
        vert: I,
        style: &S,
    ) -> Result<(), DrawingErrorKind<InnerError>> {
        self.inner.fill_polygon(vert, style)
    }

    fn blit_bitmap(
        &mut self,
        pos: BackendCoord,
        (iw, ih): (u32, u32),
        src: &[u8],
    ) -> Result<(), DrawingErrorKind<InnerError>> {
        self.inner.blit_bitmap(pos, (iw, ih), src)
    }

    fn draw_text<TStyle: BackendTextStyle>(
        &mut self,
        text: &str,
        style: &TStyle,
        pos: BackendCoord,
    ) -> Result<(), DrawingErrorKind<InnerError>> {
        let color = style.color();
        if color.alpha == 0.0 {
            return Ok(());
        }
        let Some(font) = font() else {
            return self.inner.draw_text(text, style, pos);
        };
        // The same scale as plotters' ab_glyph layout: `size` pixels from descent to ascent.
        let scale = PxScale::from(style.size() as f32);
        let scaled = font.as_scaled(scale);

        let mut caret = 0.0f32;
        let mut prev: Option<GlyphId> = None;
        let mut glyphs = Vec::with_capacity(text.len());
        for c in text.chars().filter(|c| !c.is_control()) {
            let id = scaled.glyph_id(c);
            if let Some(p) = prev {
                caret += scaled.kern(p, id);
            }
            glyphs.push(id.with_scale_and_position(scale, point(caret, scaled.ascent())));
            caret += scaled.h_advance(id);
            prev = Some(id);
        }
        let width = caret;
        let height = scaled.ascent() - scaled.descent();
        let anchor = style.anchor();
        let dx = match anchor.h_pos {
            HPos::Left => 0.0,
            HPos::Center => -width / 2.0,
            HPos::Right => -width,
        };
        let dy = match anchor.v_pos {
            VPos::Top => 0.0,
            VPos::Center => -height / 2.0,
            VPos::Bottom => -height,
        };
        let transform = style.transform();
        let mut result = Ok(());
        for glyph in glyphs {
            let Some(outlined) = font.outline_glyph(glyph) else {
                continue; // e.g. a space
            };
            let bounds = outlined.px_bounds();
            outlined.draw(|gx, gy, coverage| {
                if coverage <= 0.0 || result.is_err() {
                    return;
                }
                let x = (bounds.min.x + gx as f32 + dx).round() as i32;
                let y = (bounds.min.y + gy as f32 + dy).round() as i32;
                let (tx, ty) = transform.transform(x, y);
                let pixel = BackendColor {
                    alpha: color.alpha * f64::from(coverage.min(1.0)),
                    rgb: color.rgb,
                };
                // Out-of-bounds pixels are ignored by the bitmap backend.
                result = self
                    .inner
                    .draw_pixel((pos.0.saturating_add(tx), pos.1.saturating_add(ty)), pixel);
            });
            if result.is_err() {
                break;
            }
        }
        result
    }
}
