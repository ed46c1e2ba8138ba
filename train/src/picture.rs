//! Images out: pixels in -1..1 to 8-bit RGB, grids of samples, PNG files written atomically.

use crate::error::Error;

use image::{ImageFormat, RgbImage};
use std::path::Path;

/// An 8-bit RGB image of `res` x `res` pixels in -1..1, channels last.
pub fn to_rgb8(pixels: &[f32], res: usize) -> RgbImage {
    let bytes = pixels.iter().map(|&v| ((v.clamp(-1.0, 1.0) + 1.0) * 127.5).round() as u8).collect();
    RgbImage::from_raw(res as u32, res as u32, bytes).expect("res * res * 3 values")
}

/// The images side by side, `cols` per row, with a `gap`-pixel border in grey; images
/// smaller than 64 pixels are enlarged (nearest neighbour) to at least 64 so a grid of
/// small samples can be looked at.
pub fn grid(images: &[RgbImage], cols: usize, gap: u32) -> RgbImage {
    let scale = images.first().map_or(1, |i| 64u32.div_ceil(i.width().max(1)).max(1));
    let scaled: Vec<RgbImage>;
    let images = if scale > 1 {
        scaled = images
            .iter()
            .map(|i| {
                image::imageops::resize(i, i.width() * scale, i.height() * scale, image::imageops::FilterType::Nearest)
            })
            .collect();
        &scaled[..]
    } else {
        images
    };
    let (w, h) = images.first().map_or((0, 0), |i| i.dimensions());
    let cols = cols.clamp(1, images.len().max(1));
    let rows = images.len().div_ceil(cols);
    let mut out =
        RgbImage::from_pixel(cols as u32 * (w + gap) + gap, rows as u32 * (h + gap) + gap, image::Rgb([96, 96, 96]));
    for (k, img) in images.iter().enumerate() {
        let (c, r) = ((k % cols) as u32, (k / cols) as u32);
        image::imageops::overlay(&mut out, img, (gap + c * (w + gap)) as i64, (gap + r * (h + gap)) as i64);
    }
    out
}

/// Writes a PNG atomically.
pub fn save_png(img: &RgbImage, path: &Path) -> Result<(), Error> {
    let mut bytes = std::io::Cursor::new(Vec::new());
    img.write_to(&mut bytes, ImageFormat::Png)
        .map_err(|e| Error::Usage(format!("encoding {}: {e}", path.display())))?;
    crate::run::write_atomic(path, bytes.get_ref())
}
