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
        if meta.is_file() {
            let text = std::fs::read_to_string(&meta).map_err(|e| Error::Data(format!("{}: {e}", meta.display())))?;
            for (i, line) in text.lines().enumerate().filter(|(_, l)| !l.trim().is_empty()) {
                let at = || Error::Data(format!("{}:{}", meta.display(), i + 1));
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
                match std::fs::read_to_string(f.with_extension("txt")) {
                    Ok(c) => entries.push((f, c.trim().to_string())),
                    Err(_) => uncaptioned += 1,
                }
            }
            if uncaptioned > 0 {
                muse_compiler::note!(
                    "warning: {uncaptioned} images in {} have no .txt caption beside them and are left out",
                    root.display()
                );
            }
        }
        if entries.is_empty() {
            return Err(Error::Data(format!(
                "{}: no captioned images (expected metadata.jsonl with file_name and text, or IMAGE.png + IMAGE.txt pairs)",
                root.display()
            )));
        }
        Ok(ImageFolder { root: root.to_path_buf(), entries, resolution, flip })
    }

    /// The folder.
    pub fn root(&self) -> &Path {
        &self.root
    }
}

/// Decodes, resizes (shorter side to `res`), centre-crops and converts to -1..1.
pub fn load_image(path: &Path, res: usize, flip: bool) -> Result<Vec<f32>, Error> {
    let img = image::ImageReader::open(path)
        .map_err(|e| Error::Data(format!("{}: {e}", path.display())))?
        .with_guessed_format()
        .map_err(|e| Error::Data(format!("{}: {e}", path.display())))?
        .decode()
        .map_err(|e| Error::Data(format!("{}: cannot decode ({e})", path.display())))?
        .to_rgb8();
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
