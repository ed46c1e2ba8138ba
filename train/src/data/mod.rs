//! Text-to-image data: the built-in shapes set, image folders in the layouts people already
//! use, and a loader that decodes ahead of training on a background thread.

use crate::error::Error;

pub mod folder;
pub mod loader;
pub mod shapes;

/// One image with its caption.
#[derive(Clone, Debug, PartialEq)]
pub struct Sample {
    /// Pixels in -1..1, `[height, width, 3]` channels last, at the data set's resolution.
    pub image: Vec<f32>,
    /// The caption.
    pub caption: String,
    /// Where it came from (a file name, or `shapes:INDEX`).
    pub name: String,
}

/// A data set: samples by index (a fixed-size set or an unlimited stream).
pub trait Dataset: Send + Sync {
    /// Number of samples, or `None` for an unlimited stream.
    fn size(&self) -> Option<usize>;
    /// Sample `index`; `Err` names the file and why it could not be read (it is skipped).
    fn get(&self, index: u64) -> Result<Sample, Error>;
    /// Side of the square images.
    fn resolution(&self) -> usize;
    /// Every caption (for training a text tokenizer); a stream gives a sample of them.
    fn captions(&self) -> Vec<String>;
}

impl Dataset for shapes::Shapes {
    fn size(&self) -> Option<usize> {
        None
    }
    fn get(&self, index: u64) -> Result<Sample, Error> {
        Ok(self.sample(index))
    }
    fn resolution(&self) -> usize {
        self.resolution
    }
    fn captions(&self) -> Vec<String> {
        // Every word a caption can use turns up within a few thousand samples.
        (0..4000).map(|i| self.draw_caption(i)).collect()
    }
}

/// Opens `--data`: `shapes` (the built-in set) or a folder of images.
pub fn open(spec: &str, resolution: usize, seed: u64, flip: bool) -> Result<Box<dyn Dataset>, Error> {
    if spec == "shapes" {
        return Ok(Box::new(shapes::Shapes::new(resolution, seed)));
    }
    let path = std::path::Path::new(spec);
    if !path.is_dir() {
        return Err(Error::Data(format!("--data {spec}: not `shapes` and not a folder of images")));
    }
    Ok(Box::new(folder::ImageFolder::open(path, resolution, flip)?))
}
