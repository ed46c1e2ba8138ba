//! A trained image tokenizer as the other objectives and commands use it: its model
//! compiled as trained, its latest weights, the data set encoded into token ids (cached in
//! its run directory) and its reconstructions judged.

use crate::error::{named, Error};

use crate::config::TrainArgs;
use crate::data::Dataset;
use crate::eval::align::{judge, Alignment, Prompt};
use crate::masked::{self, TokenSet};
use crate::objective::{compile_model, config_int};
use crate::run::RunDir;
use crate::trained::Weights;
use muse_compiler::Model;
use muse_runtime::device::{Device, Tensors};
use muse_runtime::HostTensor;
use std::path::{Path, PathBuf};

/// A trained image tokenizer: its model (compiled as trained) and latest parameters.
pub struct ImageTokenizer {
    /// The model.
    pub model: Model,
    /// Parameters of the latest checkpoint.
    pub params: Tensors,
    /// Its run directory.
    pub run: PathBuf,
    /// The checkpoint they came from.
    pub checkpoint: String,
    /// Whether `params` are the checkpoint's weight average.
    pub ema: bool,
}

impl ImageTokenizer {
    /// Loads the latest checkpoint of a VQ run.
    pub fn open(run: &Path) -> Result<ImageTokenizer, Error> {
        let args = TrainArgs::from_run(run)?;
        let model = compile_model(&args.model, &args.sets)?;
        // Said first: a generator's run given as the tokenizer would otherwise fail later on
        // a missing config value or output.
        let has = |n: &str| model.graph.outputs.iter().any(|(k, _)| k == n);
        if !model.graph.inputs.iter().any(|(k, _)| k == "image") || !has("codes") {
            return Err(Error::Usage(format!(
                "{} is a run of {} ({}), not of an image tokenizer: --tokenizer takes the run of a model with an `image` input and a `codes` output, such as models/vq_tokenizer.muse",
                run.display(),
                model.name,
                args.model.display()
            )));
        }
        let dir = RunDir::open(run)?;
        let (tensors, _) = dir.checkpoint(None)?;
        // Encoding and decoding alike with the weight average where it was kept.
        let (params, ema) = Weights::Ema.pick(&model, &tensors)?;
        Ok(ImageTokenizer {
            model,
            params,
            run: run.to_path_buf(),
            checkpoint: dir.checkpoints().pop().map(|(_, name)| name).unwrap_or_default(),
            ema,
        })
    }

    /// Codebook size and tokens per side.
    pub fn codebook_and_grid(&self) -> Result<(i64, i64), Error> {
        let codebook = config_int(&self.model, "codebook")
            .ok_or_else(|| Error::Model("the image tokenizer has no `codebook` config".into()))?;
        let codes = named(&self.model.graph.outputs, "codes", Error::Model("no `codes` output".into()))?;
        let shape = &self.model.graph.ty(codes).shape.0;
        let grid = shape
            .get(1)
            .and_then(|d| d.as_known())
            .ok_or_else(|| Error::Model("`codes` must be [B, grid, grid]".into()))?;
        Ok((codebook, grid))
    }

    /// The data set as token ids, encoded once and cached under the tokenizer's run.
    pub fn tokens(
        &self,
        data_spec: &str,
        data: &dyn Dataset,
        samples: usize,
        device: &dyn Device,
    ) -> Result<TokenSet, Error> {
        let key = muse_runtime::rng::mix64(
            data_spec
                .bytes()
                .chain(self.checkpoint.bytes())
                .chain(if self.ema { &b"ema"[..] } else { &b""[..] }.iter().copied())
                .fold(samples as u64, |h, b| muse_runtime::rng::mix64(h ^ b as u64)),
        );
        let dir = self.run.join("tokens").join(format!("{key:016x}"));
        if let Some(t) = TokenSet::load(&dir)? {
            muse_compiler::note!("tokens: {} items from the cache {}", t.len(), dir.display());
            return Ok(t);
        }
        let count = data.size().map_or(samples, |n| n.min(samples.max(n)));
        muse_compiler::note!("tokenize: encoding {count} images with {} ...", self.run.display());
        let t = masked::encode(&self.model.graph, &self.params, data, Some(count), 64, device)?;
        t.save(&dir)?;
        Ok(t)
    }
}

impl ImageTokenizer {
    /// Encodes and decodes the first `count` images of `data` whose captions are the built-in
    /// data set's and judges the reconstructions against them (see [`crate::eval::align`]):
    /// what the tokenizer can represent, an upper bound for any generator on its tokens. None
    /// judged for data without such captions.
    pub fn judge_reconstructions(
        &self,
        data: &dyn Dataset,
        count: usize,
        device: &dyn Device,
    ) -> Result<Alignment, Error> {
        let g = &self.model.graph;
        let recon = named(&g.outputs, "recon", Error::Model("the image tokenizer has no `recon` output".into()))?;
        let mut program = device.compile(g, &[recon])?;
        let res = data.resolution();
        let mut out = Alignment::default();
        let mut index = 0u64;
        let limit = data.size().map_or(count.saturating_mul(8) as u64, |n| n as u64);
        while out.judged() < count && index < limit {
            let (mut pixels, mut captions) = (Vec::new(), Vec::new());
            while captions.len() < 64 && out.judged() + captions.len() < count && index < limit {
                if let Ok(s) = data.get(index) {
                    if Prompt::parse(&s.caption).is_some() {
                        pixels.extend(s.image.iter().map(|&x| x as f64));
                        captions.push(s.caption);
                    }
                }
                index += 1;
            }
            if captions.is_empty() {
                break;
            }
            let inputs: Tensors = [("image".to_string(), HostTensor::f(&[captions.len(), res, res, 3], pixels))].into();
            let values = program.run(&inputs, &self.params, 0)?;
            let images: Vec<f32> = values[&recon].to_f64().iter().map(|&x| x as f32).collect();
            for (i, caption) in captions.iter().enumerate() {
                out.add(judge(&images[i * res * res * 3..][..res * res * 3], res, caption).as_ref());
            }
        }
        Ok(out)
    }
}
