//! Feature networks for Frechet distances: a trained classifier run (`models/
//! shapes_classifier.muse`) or the FID Inception-v3 with imported weights, whose
//! `features` output embeds images.

use crate::error::{named, Error};
use crate::run::RunDir;
use crate::trained::{run_model, Weights};
use muse_compiler::ir::{DType, NodeIndex};
use muse_compiler::{compile_source, Model, Options};
use muse_runtime::device::{Device, Program, Tensors};
use muse_runtime::HostTensor;
use std::path::{Path, PathBuf};

/// A trained classifier's feature extractor.
pub struct FeatureNet {
    /// Its run directory (or weights file).
    pub run: PathBuf,
    /// The checkpoint's step (0 for imported weights).
    pub step: u64,
    /// Side of the images it takes.
    pub resolution: usize,
    /// Length of a feature vector.
    pub dim: usize,
    program: Box<dyn Program>,
    params: Tensors,
    features: NodeIndex,
    /// Images embedded at once at most (a large network's activations at a large batch do
    /// not fit).
    pub max_batch: usize,
    /// Inputs besides the image (labels), as zeros of one item: filled per batch.
    others: Vec<(String, Vec<usize>, DType)>,
}

/// The FID Inception-v3 in `.muse` (models/inception_fid.muse), built into the binary.
pub const INCEPTION_SOURCE: &str = include_str!("../../../models/inception_fid.muse");

impl FeatureNet {
    /// Opens a classifier run at its latest checkpoint (the weight average where kept).
    pub fn open(run: &Path, device: &dyn Device) -> Result<FeatureNet, Error> {
        let (model, _) = run_model(run)?;
        let (tensors, progress) = RunDir::open(run)?.checkpoint(None)?;
        let (params, _) = Weights::Ema.pick(&model, &tensors)?;
        Self::new(&model, params, run, progress.step, device)
    }

    /// The FID Inception with the weights of a safetensors file (PyTorch's names and
    /// layouts: scripts/convert_weights.py makes one from pytorch-fid's checkpoint).
    pub fn inception(weights: &Path, device: &dyn Device) -> Result<FeatureNet, Error> {
        let c = compile_source("inception_fid.muse", INCEPTION_SOURCE, &Options::default());
        let model = c.result.map(|mut m| m.remove(0)).map_err(|d| Error::Model(d.render(&c.sources)))?;
        let params = muse_runtime::checkpoint::load_params(&model.graph, weights)
            .map_err(|e| Error::Usage(format!("--fid-weights: {e}")))?;
        Self::new(&model, params, weights, 0, device)
    }

    /// A model with an `image` input and a `features` output, ready on `device`.
    fn new(model: &Model, params: Tensors, from: &Path, step: u64, device: &dyn Device) -> Result<FeatureNet, Error> {
        let g = &model.graph;
        let missing = |what: &str| Error::Model(format!("{}: the model has no {what}", from.display()));
        let features = named(&g.outputs, "features", missing("`features` output"))?;
        let image = named(&g.inputs, "image", missing("`image` input"))?;
        let known = |n: NodeIndex, i: usize| g.ty(n).shape.0.get(i).and_then(|d| d.as_known());
        let resolution = known(image, 1)
            .ok_or_else(|| Error::Model("`image` must be [B, resolution, resolution, 3]".into()))?
            as usize;
        let dim = known(features, 1).ok_or_else(|| Error::Model("`features` must be [B, dim]".into()))? as usize;
        let others = g
            .inputs
            .iter()
            .filter(|(name, _)| name != "image")
            .map(|(name, n)| {
                let ty = g.ty(*n);
                let shape = ty.shape.0.iter().skip(1).map(|d| d.as_known().unwrap_or(1) as usize).collect();
                (name.clone(), shape, ty.dtype)
            })
            .collect();
        let program = device.compile(g, &[features])?;
        // About 100 MB of activations per image at 299x299 for the Inception.
        let max_batch = if resolution >= 128 { 8 } else { 256 };
        Ok(FeatureNet { run: from.to_path_buf(), step, resolution, dim, max_batch, program, params, features, others })
    }

    /// Features of `n` images (pixels in -1..1, channels last, at its resolution), one
    /// vector after another.
    pub fn features(&mut self, pixels: &[f32], n: usize) -> Result<Vec<f64>, Error> {
        let r = self.resolution;
        let per = r * r * 3;
        if pixels.len() != n * per {
            return Err(Error::Usage(format!(
                "{} pixel values are not {n} images of {r}x{r}: the feature network takes {r}x{r} images",
                pixels.len()
            )));
        }
        let mut all = Vec::with_capacity(n * self.dim);
        for chunk in pixels.chunks(self.max_batch * per) {
            let m = chunk.len() / per;
            let mut inputs = Tensors::new();
            inputs.insert("image".into(), HostTensor::f(&[m, r, r, 3], chunk.iter().map(|&v| v as f64).collect()));
            for (name, shape, dtype) in &self.others {
                let shape: Vec<usize> = std::iter::once(m).chain(shape.iter().copied()).collect();
                let len = shape.iter().product();
                let t = match dtype {
                    DType::F32 => HostTensor::f(&shape, vec![0.0; len]),
                    DType::I32 => HostTensor::i(&shape, vec![0; len]),
                    DType::Bool => HostTensor::b(&shape, vec![false; len]),
                };
                inputs.insert(name.clone(), t);
            }
            let out = self.program.run(&inputs, &self.params, 0)?;
            all.extend(out[&self.features].to_f64());
        }
        Ok(all)
    }
}
