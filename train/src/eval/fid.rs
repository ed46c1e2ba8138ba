//! `muse fid A B`: the FID between any two image sets, each a folder of images (PNG or JPEG,
//! any size, read as pytorch-fid reads files), the built-in data set, or features already
//! computed (a NumPy `.npy` file of [images, features], e.g. written by pytorch-fid).

use super::features::FeatureNet;
use super::frechet::{read_npy, Gaussian, Moments};
use super::preprocess::{resize_bilinear, INCEPTION_SIDE};
use crate::data::shapes::Shapes;
use crate::error::Error;
use crate::meter::Meter;
use std::path::{Path, PathBuf};

/// One side of an FID.
#[derive(Clone, Debug, PartialEq)]
pub enum ImageSet {
    /// Features computed elsewhere.
    Features(PathBuf),
    /// The built-in data set at a resolution (its evaluation stream).
    Shapes(usize),
    /// A folder of images.
    Folder(PathBuf),
}

impl ImageSet {
    /// `shapes` or `shapes:RES`, a `.npy` file, or a folder.
    pub fn parse(s: &str) -> Result<ImageSet, Error> {
        if s == "shapes" {
            return Ok(ImageSet::Shapes(16));
        }
        if let Some(r) = s.strip_prefix("shapes:") {
            let res = r
                .parse()
                .ok()
                .filter(|&r: &usize| r >= 4)
                .ok_or_else(|| Error::Usage(format!("{s}: shapes:RES with RES >= 4")))?;
            return Ok(ImageSet::Shapes(res));
        }
        let p = PathBuf::from(s);
        if p.extension().is_some_and(|e| e == "npy") {
            Ok(ImageSet::Features(p))
        } else if p.is_dir() {
            Ok(ImageSet::Folder(p))
        } else {
            Err(Error::Usage(format!("{s}: not a folder of images, a .npy file of features, or `shapes[:RES]`")))
        }
    }
}

/// An 8-bit RGB image as the FID Inception's input: 0..1, bilinear to 299x299, 2x - 1.
fn inception_input(rgb: &[u8], h: usize, w: usize) -> Vec<f32> {
    let unit: Vec<f32> = rgb.iter().map(|&b| b as f32 / 255.0).collect();
    resize_bilinear(&unit, h, w, 3, INCEPTION_SIDE, INCEPTION_SIDE).into_iter().map(|v| 2.0 * v - 1.0).collect()
}

/// The image files of a folder (not recursive), sorted.
fn image_files(dir: &Path) -> Result<Vec<PathBuf>, Error> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .map_err(Error::io(dir))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            p.is_file()
                && p.extension()
                    .and_then(|e| e.to_str())
                    .is_some_and(|e| matches!(e.to_ascii_lowercase().as_str(), "png" | "jpg" | "jpeg"))
        })
        .collect();
    files.sort();
    Ok(files)
}

/// The Gaussian of a set's Inception features (at most `limit` images; features files are
/// read whole); `net` is needed unless the set is features.
pub fn statistics(set: &ImageSet, net: Option<&mut FeatureNet>, limit: usize) -> Result<Gaussian, Error> {
    if let ImageSet::Features(p) = set {
        let (values, _, cols) = read_npy(p)?;
        let mut m = Moments::new(cols);
        m.add(&values)?;
        return m.gaussian();
    }
    let net = net.ok_or_else(|| Error::Usage("images need --fid-weights (the FID Inception's weights)".into()))?;
    let mut m = Moments::new(net.dim);
    let batch = net.max_batch;
    let mut pending: Vec<f32> = Vec::new();
    let mut count = 0;
    let flush = |pending: &mut Vec<f32>, m: &mut Moments, net: &mut FeatureNet| -> Result<(), Error> {
        let n = pending.len() / (INCEPTION_SIDE * INCEPTION_SIDE * 3);
        if n > 0 {
            m.add(&net.features(pending, n)?)?;
            pending.clear();
        }
        Ok(())
    };
    match set {
        ImageSet::Shapes(res) => {
            let d = Shapes::new(*res, super::eval_seed(0));
            let meter = Meter::new("fid", limit);
            for i in 0..limit as u64 {
                let px = d.sample(i).image;
                let rgb: Vec<u8> = px.iter().map(|&v| ((v.clamp(-1.0, 1.0) + 1.0) * 127.5).round() as u8).collect();
                pending.extend(inception_input(&rgb, *res, *res));
                count += 1;
                if count % batch == 0 {
                    flush(&mut pending, &mut m, net)?;
                    meter.advance(batch);
                }
            }
            meter.finish();
        }
        ImageSet::Folder(dir) => {
            let files = image_files(dir)?;
            let (mut skipped, meter) = (0, Meter::new("fid", files.len().min(limit)));
            for f in files.iter().take(limit) {
                match crate::data::folder::open_image(f) {
                    Ok(img) => {
                        let rgb = img.to_rgb8();
                        let (w, h) = (rgb.width() as usize, rgb.height() as usize);
                        pending.extend(inception_input(rgb.as_raw(), h, w));
                        count += 1;
                        if count % batch == 0 {
                            flush(&mut pending, &mut m, net)?;
                        }
                    }
                    Err(e) => {
                        skipped += 1;
                        muse_compiler::note!("warning: {}: skipped ({e})", f.display());
                    }
                }
                meter.advance(1);
            }
            meter.finish();
            if skipped > 0 {
                muse_compiler::note!(
                    "{}: {skipped} of {} files could not be read",
                    dir.display(),
                    files.len().min(limit)
                );
            }
        }
        ImageSet::Features(_) => unreachable!("handled above"),
    }
    flush(&mut pending, &mut m, net)?;
    m.gaussian()
}
