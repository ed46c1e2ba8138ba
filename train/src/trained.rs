//! A trained token model (a masked-token generator or a token critic) opened from its run
//! directory: the model compiled as it was trained, its latest weights (the EMA when kept),
//! its text tokenizer and image tokenizer, and a compiled program for its `logits`.

use crate::error::{named, Error};

use crate::config::TrainArgs;
use crate::image_tokenizer::ImageTokenizer;
use crate::objective::{compile_model, token_model_sets};
use crate::run::RunDir;
use crate::text::TextTokenizer;
use muse_compiler::ir::{DType, NodeIndex};
use muse_compiler::{ConfigValue, Model};
use muse_runtime::device::{Device, Program, Tensors};
use muse_runtime::{Data, HostTensor};
use std::path::Path;

/// A trained token model ready to compute logits.
pub struct TrainedTokenModel {
    /// The model.
    pub model: Model,
    /// Its weights.
    pub params: Tensors,
    /// Its caption tokenizer.
    pub text: TextTokenizer,
    /// The image tokenizer whose ids it models.
    pub vq: ImageTokenizer,
    /// Codebook size (the MASK id).
    pub codebook: i64,
    /// Tokens per side.
    pub grid: i64,
    /// Steps its checkpoint was trained for.
    pub step: u64,
    /// Compiled for `logits`; borrowed mutably by each call (a program holds its buffers).
    program: std::cell::RefCell<Box<dyn Program>>,
    logits: NodeIndex,
}

/// An integer config value of a model.
pub fn config_int(m: &Model, key: &str) -> Result<i64, Error> {
    m.config
        .iter()
        .find(|(k, _)| k == key)
        .and_then(|(_, v)| if let ConfigValue::Int(i) = v { Some(*i) } else { None })
        .ok_or_else(|| Error::Usage(format!("model {} has no integer config `{key}`", m.name)))
}

impl TrainedTokenModel {
    /// Opens the run at `dir` (trained with an image tokenizer: config.json names it).
    pub fn open(dir: &Path, device: &dyn Device) -> Result<TrainedTokenModel, Error> {
        let targs = TrainArgs::from_run(dir)?;
        let run = RunDir::open(dir)?;
        let config = run.config()?;
        let vq_dir = config["image_tokenizer"]["run"].as_str().ok_or_else(|| {
            Error::RunDir(format!("{}: not a token-model run (no image tokenizer in config.json)", dir.display()))
        })?;
        let vq = ImageTokenizer::open(Path::new(vq_dir))?;
        let (codebook, grid) = vq.codebook_and_grid()?;
        let sets = token_model_sets(&targs.sets, codebook, grid, Path::new(vq_dir))?;
        let model = compile_model(&targs.model, &sets)?;
        let text = TextTokenizer::load(&dir.join("tokenizer.json"), config_int(&model, "text_len")? as usize)?;
        let (tensors, progress) =
            run.latest()?.ok_or_else(|| Error::RunDir(format!("{}: no checkpoint yet", dir.display())))?;
        let params: Tensors = model
            .graph
            .params
            .iter()
            .map(|p| {
                let t = tensors.get(&format!("ema/{}", p.name)).or_else(|| tensors.get(&p.name));
                t.map(|t| (p.name.clone(), t.clone()))
                    .ok_or_else(|| Error::Usage(format!("checkpoint lacks parameter `{}`", p.name)))
            })
            .collect::<Result<_, _>>()?;
        let logits = named(&model.graph.outputs, "logits", Error::Model("the model has no `logits` output".into()))?;
        let program = device.compile(&model.graph, &[logits])?.into();
        Ok(TrainedTokenModel { model, params, text, vq, codebook, grid, step: progress.step, program, logits })
    }

    /// The logits for a batch; inputs the logits do not need (targets, masks of the loss)
    /// may be left out and are filled with zeros.
    pub fn logits(&self, inputs: &Tensors, seed: u64) -> Result<Vec<f64>, Error> {
        let batch =
            inputs.get("tokens").map(|t| t.shape[0] as i64).ok_or_else(|| Error::Usage("no `tokens` input".into()))?;
        let mut all = inputs.clone();
        for (name, n) in &self.model.graph.inputs {
            if all.contains_key(name) {
                continue;
            }
            let ty = self.model.graph.ty(*n);
            let shape: Vec<usize> = ty.shape.0.iter().map(|d| d.eval(&|_| Some(batch)).unwrap_or(1) as usize).collect();
            let len = shape.iter().product();
            let t = match ty.dtype {
                DType::F32 => HostTensor::f(&shape, vec![0.0; len]),
                DType::I32 => HostTensor::i(&shape, vec![0; len]),
                DType::Bool => HostTensor::b(&shape, vec![false; len]),
            };
            all.insert(name.clone(), t);
        }
        let out = self.program.borrow_mut().run(&all, &self.params, seed)?;
        match &out[&self.logits].data {
            Data::F(v) => Ok(v.clone()),
            _ => Err(Error::Usage("logits are not floats".into())),
        }
    }
}
