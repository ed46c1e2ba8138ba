//! Images as the FID Inception takes them, exactly as pytorch-fid prepares the PNG files it
//! reads: 8-bit values (a generated image is quantised as writing its PNG would), scaled to
//! 0..1, resized to 299x299 bilinearly as PyTorch's `F.interpolate(mode="bilinear",
//! align_corners=False)` does (no antialiasing), then mapped to -1..1. This is pytorch-fid's
//! preprocessing, not clean-fid's "clean" mode (PIL bicubic resizing with antialiasing), so
//! muse's FID compares with pytorch-fid's numbers on the same files.

/// Side of the FID Inception's input.
pub const INCEPTION_SIDE: usize = 299;

/// Bilinear resampling of a `h` x `w` image (channels last, `c` channels) to `oh` x `ow`, as
/// PyTorch's `F.interpolate(mode="bilinear", align_corners=False, antialias=False)`: source
/// coordinate `(i + 0.5) * in / out - 0.5`, clamped at 0, blended with its lower neighbour
/// (the last row and column repeat).
pub fn resize_bilinear(px: &[f32], h: usize, w: usize, c: usize, oh: usize, ow: usize) -> Vec<f32> {
    let axis = |out: usize, len: usize| -> Vec<(usize, usize, f32)> {
        let scale = len as f32 / out as f32;
        (0..out)
            .map(|i| {
                let src = ((i as f32 + 0.5) * scale - 0.5).max(0.0);
                let i0 = (src as usize).min(len - 1);
                let i1 = (i0 + 1).min(len - 1);
                (i0, i1, src - i0 as f32)
            })
            .collect()
    };
    let (rows, cols) = (axis(oh, h), axis(ow, w));
    let mut out = vec![0.0f32; oh * ow * c];
    for (y, &(y0, y1, ly)) in rows.iter().enumerate() {
        for (x, &(x0, x1, lx)) in cols.iter().enumerate() {
            for k in 0..c {
                let at = |yy: usize, xx: usize| px[(yy * w + xx) * c + k];
                let top = (1.0 - lx) * at(y0, x0) + lx * at(y0, x1);
                let bottom = (1.0 - lx) * at(y1, x0) + lx * at(y1, x1);
                out[(y * ow + x) * c + k] = (1.0 - ly) * top + ly * bottom;
            }
        }
    }
    out
}

/// `n` images of `res` x `res` in -1..1 (muse's pixels) as the FID Inception's input: 8-bit
/// quantised, resized to 299x299, in -1..1.
pub fn for_inception(pixels: &[f32], n: usize, res: usize) -> Vec<f32> {
    let per = res * res * 3;
    let mut out = Vec::with_capacity(n * INCEPTION_SIDE * INCEPTION_SIDE * 3);
    for img in pixels.chunks(per).take(n) {
        let unit: Vec<f32> = img.iter().map(|&v| ((v.clamp(-1.0, 1.0) + 1.0) * 127.5).round() / 255.0).collect();
        out.extend(
            resize_bilinear(&unit, res, res, 3, INCEPTION_SIDE, INCEPTION_SIDE).into_iter().map(|v| 2.0 * v - 1.0),
        );
    }
    out
}
