//! A folder of images with captions, in either layout people already use:
//! Hugging Face `imagefolder` (a `metadata.jsonl` with `file_name` and `text` per line) or
//! image files with a same-named `.txt` caption beside each. PNG and JPEG, decoded with the
//! `image` crate, resized so the shorter side fits and centre-cropped to a square.

use crate::error::Error;

use super::{Dataset, Sample};
use image::imageops::FilterType;
use muse_runtime::rng::mix64;
use std::path::{Path, PathBuf};

/// Images and captions found in a folder.
pub struct ImageFolder {
    root: PathBuf,
    entries: Vec<(PathBuf, String)>,
    resolution: usize,
    flip: bool,
    /// What was left out and why (also printed as warnings).
    pub warnings: Vec<String>,
}

fn is_image(p: &Path) -> bool {
    p.extension()
        .and_then(|e| e.to_str())
        .is_some_and(|e| matches!(e.to_ascii_lowercase().as_str(), "png" | "jpg" | "jpeg"))
}

impl ImageFolder {
    /// Lists the folder; images without a caption are reported and left out.
    pub fn open(root: &Path, resolution: usize, flip: bool) -> Result<ImageFolder, Error> {
        let meta = root.join("metadata.jsonl");
        let mut entries = Vec::new();
        let mut warnings = Vec::new();
        if meta.is_file() {
            let bytes = std::fs::read(&meta).map_err(|e| Error::Data(format!("{}: {e}", meta.display())))?;
            for (i, line) in bytes.split(|&b| b == b'\n').enumerate() {
                let at = || Error::Data(format!("{}:{}", meta.display(), i + 1));
                let line = std::str::from_utf8(line).map_err(|e| {
                    Error::Data(format!(
                        "{}: not UTF-8 text (byte {} of the line); save the file as UTF-8",
                        at(),
                        e.valid_up_to() + 1
                    ))
                })?;
                if line.trim().is_empty() {
                    continue;
                }
                let v: serde_json::Value = serde_json::from_str(line)
                    .map_err(|e| Error::Data(format!("{}: not a JSON object ({e})", at())))?;
                let file = v
                    .get("file_name")
                    .and_then(|f| f.as_str())
                    .ok_or_else(|| Error::Data(format!("{}: no \"file_name\"", at())))?;
                let caption = ["text", "caption"]
                    .iter()
                    .find_map(|k| v.get(*k).and_then(|t| t.as_str()))
                    .ok_or_else(|| Error::Data(format!("{}: no \"text\" (the caption)", at())))?;
                if !stays_inside(file) {
                    return Err(Error::Data(format!(
                        "{}: \"file_name\" {file:?} leaves the data folder; give a path inside {}",
                        at(),
                        root.display()
                    )));
                }
                entries.push((root.join(file), caption.to_string()));
            }
        } else {
            let mut files: Vec<PathBuf> = std::fs::read_dir(root)
                .map_err(|e| Error::Data(format!("{}: {e}", root.display())))?
                .filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| is_image(p))
                .collect();
            files.sort();
            let mut uncaptioned = 0;
            for f in files {
                let txt = f.with_extension("txt");
                match std::fs::read_to_string(&txt) {
                    Ok(c) => entries.push((f, c.trim().to_string())),
                    Err(e) if e.kind() == std::io::ErrorKind::InvalidData => warnings.push(format!(
                        "{}: the caption is not UTF-8 text; {} is left out (save the caption as UTF-8)",
                        txt.display(),
                        f.display()
                    )),
                    Err(_) => uncaptioned += 1,
                }
            }
            if uncaptioned > 0 {
                warnings.push(format!(
                    "{uncaptioned} images in {} have no .txt caption beside them and are left out",
                    root.display()
                ));
            }
        }
        if entries.is_empty() {
            return Err(Error::Data(format!(
                "{}: no captioned images (expected metadata.jsonl with file_name and text, or IMAGE.png + IMAGE.txt pairs)",
                root.display()
            )));
        }
        for w in &warnings {
            muse_compiler::note!("warning: {w}");
        }
        Ok(ImageFolder { root: root.to_path_buf(), entries, resolution, flip, warnings })
    }

    /// The folder.
    pub fn root(&self) -> &Path {
        &self.root
    }
}

/// Whether a relative path from `metadata.jsonl` names a file inside the folder: no root, no
/// drive, no `..`.
fn stays_inside(file: &str) -> bool {
    use std::path::Component;
    !file.is_empty() && Path::new(file).components().all(|c| matches!(c, Component::Normal(_) | Component::CurDir))
}

/// Most pixels of an image muse decodes (a 10000 x 10000 photograph).
pub const MAX_PIXELS: u64 = 100_000_000;
/// Most a longer side may exceed the shorter one: beyond it, resizing the shorter side to
/// the model's resolution makes the longer one absurd (a 20,000,000 x 1 image).
pub const MAX_ASPECT: u64 = 32;

/// Decodes an image file, refusing from its header alone (before anything of its size is
/// allocated) a file that is not a regular file (a FIFO would block forever), one of more
/// than [`MAX_PIXELS`] pixels and one longer than [`MAX_ASPECT`] times its width or the
/// reverse.
pub fn open_image(path: &Path) -> Result<image::DynamicImage, Error> {
    let bad = |why: String| Error::Data(format!("{}: {why}", path.display()));
    let meta = std::fs::metadata(path).map_err(|e| bad(e.to_string()))?;
    if !meta.is_file() {
        return Err(bad("not a regular file (a folder, FIFO, socket or device); only image files are read".into()));
    }
    let reader = || -> Result<_, Error> {
        image::ImageReader::open(path)
            .map_err(|e| bad(e.to_string()))?
            .with_guessed_format()
            .map_err(|e| bad(e.to_string()))
    };
    let (w, h) = reader()?.into_dimensions().map_err(|e| bad(format!("cannot decode ({e})")))?;
    let (w, h) = (w as u64, h as u64);
    if w == 0 || h == 0 {
        return Err(bad("empty image".into()));
    }
    if w * h > MAX_PIXELS {
        return Err(bad(format!("{w} x {h} pixels, more than the {MAX_PIXELS} muse decodes; shrink it first")));
    }
    if w.max(h) > MAX_ASPECT * w.min(h) {
        return Err(bad(format!(
            "{w} x {h} pixels: one side is more than {MAX_ASPECT} times the other; crop it first"
        )));
    }
    let mut r = reader()?;
    let mut limits = image::Limits::default();
    limits.max_image_width = Some(w as u32);
    limits.max_image_height = Some(h as u32);
    r.limits(limits);
    r.decode().map_err(|e| bad(format!("cannot decode ({e})")))
}

/// Decodes, resizes (shorter side to `res`), centre-crops and converts to -1..1.
pub fn load_image(path: &Path, res: usize, flip: bool) -> Result<Vec<f32>, Error> {
    let img = open_image(path)?.to_rgb8();
    let (w, h) = img.dimensions();
    if w == 0 || h == 0 {
        return Err(Error::Data(format!("{}: empty image", path.display())));
    }
    let scale = res as f64 / w.min(h) as f64;
    let (nw, nh) =
        (((w as f64 * scale).round() as u32).max(res as u32), ((h as f64 * scale).round() as u32).max(res as u32));
    let resized = image::imageops::resize(&img, nw, nh, FilterType::Triangle);
    let (x0, y0) = ((nw - res as u32) / 2, (nh - res as u32) / 2);
    let mut out = Vec::with_capacity(res * res * 3);
    for y in 0..res as u32 {
        for x in 0..res as u32 {
            let sx = if flip { res as u32 - 1 - x } else { x };
            let p = resized.get_pixel(x0 + sx, y0 + y);
            out.extend(p.0.iter().map(|&c| c as f32 / 127.5 - 1.0));
        }
    }
    Ok(out)
}

impl Dataset for ImageFolder {
    fn size(&self) -> Option<usize> {
        Some(self.entries.len())
    }
    fn get(&self, index: u64) -> Result<Sample, Error> {
        let (path, caption) = &self.entries[(index % self.entries.len() as u64) as usize];
        // The flip is a function of the index, so a resumed run sees the same images.
        let flip = self.flip && mix64(index ^ 0x5eed_f11b) & 1 == 1;
        let image = load_image(path, self.resolution, flip)?;
        Ok(Sample { image, caption: caption.clone(), name: path.display().to_string() })
    }
    fn resolution(&self) -> usize {
        self.resolution
    }
    fn captions(&self) -> Vec<String> {
        self.entries.iter().map(|e| e.1.clone()).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn captions_that_are_not_utf8_are_named_and_left_out() {
        let dir = std::env::temp_dir().join(format!("muse-folder-utf8-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        for name in ["a", "b", "c"] {
            image::RgbImage::from_pixel(4, 4, image::Rgb([9, 9, 9])).save(dir.join(format!("{name}.png"))).unwrap();
        }
        std::fs::write(dir.join("a.txt"), "a red square").unwrap();
        std::fs::write(dir.join("b.txt"), b"caf\xe9").unwrap();
        // c.png has no caption at all.
        let f = ImageFolder::open(&dir, 4, false).unwrap();
        assert_eq!(f.captions(), vec!["a red square".to_string()]);
        assert_eq!(f.warnings.len(), 2, "{:?}", f.warnings);
        assert!(f.warnings[0].contains("b.txt: the caption is not UTF-8"), "{:?}", f.warnings);
        assert!(f.warnings[1].starts_with("1 images"), "{:?}", f.warnings);
        std::fs::remove_dir_all(&dir).ok();
    }
}
