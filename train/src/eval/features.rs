//! Feature networks for Frechet distances: a trained classifier run (`models/
//! shapes_classifier.muse`) whose `features` output embeds images.

use crate::error::{named, Error};
use crate::run::RunDir;
use crate::trained::{run_model, Weights};
use muse_compiler::ir::{DType, NodeIndex};
use muse_runtime::device::{Device, Program, Tensors};
use muse_runtime::HostTensor;
use std::path::{Path, PathBuf};

/// A trained classifier's feature extractor.
pub struct FeatureNet {
    /// Its run directory.
    pub run: PathBuf,
    /// The checkpoint's step.
    pub step: u64,
    /// Side of the images it takes.
    pub resolution: usize,
    /// Length of a feature vector.
    pub dim: usize,
    program: Box<dyn Program>,
    params: Tensors,
    features: NodeIndex,
    /// Inputs besides the image (labels), as zeros of one item: filled per batch.
    others: Vec<(String, Vec<usize>, DType)>,
}

impl FeatureNet {
    /// Opens a classifier run at its latest checkpoint (the weight average where kept).
    pub fn open(run: &Path, device: &dyn Device) -> Result<FeatureNet, Error> {
        let (model, _) = run_model(run)?;
        let g = &model.graph;
        let features = named(
            &g.outputs,
            "features",
            Error::Model(format!("{}: the model has no `features` output", run.display())),
        )?;
        let image =
            named(&g.inputs, "image", Error::Model(format!("{}: the model has no `image` input", run.display())))?;
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
        let (tensors, progress) = RunDir::open(run)?.checkpoint(None)?;
        let (params, _) = Weights::Ema.pick(&model, &tensors)?;
        let program = device.compile(g, &[features])?;
        Ok(FeatureNet {
            run: run.to_path_buf(),
            step: progress.step,
            resolution,
            dim,
            program,
            params,
            features,
            others,
        })
    }

    /// Features of `n` images (pixels in -1..1, channels last, at its resolution), one
    /// vector after another.
    pub fn features(&mut self, pixels: &[f32], n: usize) -> Result<Vec<f64>, Error> {
        let r = self.resolution;
        if pixels.len() != n * r * r * 3 {
            return Err(Error::Usage(format!(
                "{} pixel values are not {n} images of {r}x{r}: the feature network takes {r}x{r} images",
                pixels.len()
            )));
        }
        let mut inputs = Tensors::new();
        inputs.insert("image".into(), HostTensor::f(&[n, r, r, 3], pixels.iter().map(|&v| v as f64).collect()));
        for (name, shape, dtype) in &self.others {
            let shape: Vec<usize> = std::iter::once(n).chain(shape.iter().copied()).collect();
            let len = shape.iter().product();
            let t = match dtype {
                DType::F32 => HostTensor::f(&shape, vec![0.0; len]),
                DType::I32 => HostTensor::i(&shape, vec![0; len]),
                DType::Bool => HostTensor::b(&shape, vec![false; len]),
            };
            inputs.insert(name.clone(), t);
        }
        let out = self.program.run(&inputs, &self.params, 0)?;
        Ok(out[&self.features].to_f64())
    }
}
