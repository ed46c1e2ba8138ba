//! A trained token model (a masked-token generator or a token critic) opened from its run
//! directory: the model compiled as it was trained, its latest weights (the EMA when kept),
//! its text tokenizer and image tokenizer, and a compiled program for its `logits`.

use crate::error::{named, Error};

use crate::config::TrainArgs;
use crate::image_tokenizer::ImageTokenizer;
use crate::objective::classifier::classifier_sets;
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
    /// Whether `params` are the checkpoint's weight average.
    pub ema: bool,
    /// Compiled for `logits`; borrowed mutably by each call (a program holds its buffers).
    program: std::cell::RefCell<Box<dyn Program>>,
    logits: NodeIndex,
}

/// Which weights of a checkpoint to use.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum Weights {
    /// The exponential moving average (`--ema`) where the checkpoint has one, else the raw
    /// weights.
    #[default]
    Ema,
    /// The optimizer's weights.
    Raw,
}

impl Weights {
    /// The model's parameters from a checkpoint's tensors, and whether they are the EMA.
    pub fn pick(self, model: &Model, tensors: &Tensors) -> Result<(Tensors, bool), Error> {
        let ema =
            self == Weights::Ema && model.graph.params.iter().all(|p| tensors.contains_key(&format!("ema/{}", p.name)));
        let params = model
            .graph
            .params
            .iter()
            .map(|p| {
                let key = if ema { format!("ema/{}", p.name) } else { p.name.clone() };
                tensors
                    .get(&key)
                    .map(|t| (p.name.clone(), t.clone()))
                    .ok_or_else(|| Error::Usage(format!("checkpoint lacks parameter `{}`", p.name)))
            })
            .collect::<Result<_, _>>()?;
        Ok((params, ema))
    }
}

/// Which checkpoint of a run and which of its weights.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Pick {
    /// The checkpoint of this step (`None`: the latest).
    pub step: Option<u64>,
    /// Raw or averaged weights.
    pub weights: Weights,
}

/// The model of a run compiled as it was trained: its settings, with a token model's
/// codebook and grid from its image tokenizer and a classifier's classes from its words.
pub fn run_model(dir: &Path) -> Result<(Model, TrainArgs), Error> {
    let targs = TrainArgs::from_run(dir)?;
    let config = RunDir::open(dir)?.config()?;
    let sets = if let Some(t) = config.get("image_tokenizer").filter(|v| !v.is_null()) {
        let n = |k: &str| {
            t[k].as_i64()
                .ok_or_else(|| Error::RunDir(format!("{}: config.json lacks image_tokenizer.{k}", dir.display())))
        };
        token_model_sets(&targs.sets, n("codebook")?, n("grid")?, Path::new(t["run"].as_str().unwrap_or("")))?
    } else if let Some(sets) = classifier_sets(&targs.sets, &config) {
        sets
    } else {
        targs.sets.clone()
    };
    Ok((compile_model(&targs.model, &sets)?, targs))
}

/// Writes the parameters of a run's checkpoint (`pick`) to `out` as one safetensors file,
/// in the layouts the `.muse` file declares (PyTorch's: linear weights [out, in],
/// convolutions [out, in, kh, kw]) and without optimizer state; says what it wrote.
pub fn export(run: &Path, pick: Pick, out: &Path) -> Result<String, Error> {
    let (model, _) = run_model(run)?;
    let (tensors, progress) = RunDir::open(run)?.checkpoint(pick.step)?;
    let (params, ema) = pick.weights.pick(&model, &tensors)?;
    muse_runtime::checkpoint::save(out, &params)?;
    Ok(format!(
        "wrote {}: {} parameter tensors of {} ({} values; {} weights of step {})\n",
        out.display(),
        params.len(),
        model.name,
        model.graph.param_count(),
        if ema { "averaged" } else { "raw" },
        progress.step
    ))
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
    /// Opens the run at `dir` (trained with an image tokenizer: config.json names it) at its
    /// latest checkpoint, with the weight average where it has one.
    pub fn open(dir: &Path, device: &dyn Device) -> Result<TrainedTokenModel, Error> {
        Self::open_at(dir, Pick::default(), device)
    }

    /// Opens the run at `dir` with the checkpoint and weights `pick` chooses.
    pub fn open_at(dir: &Path, pick: Pick, device: &dyn Device) -> Result<TrainedTokenModel, Error> {
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
        let (tensors, progress) = run.checkpoint(pick.step)?;
        let (params, ema) = pick.weights.pick(&model, &tensors)?;
        let logits = named(&model.graph.outputs, "logits", Error::Model("the model has no `logits` output".into()))?;
        let program = device.compile(&model.graph, &[logits])?.into();
        Ok(TrainedTokenModel { model, params, text, vq, codebook, grid, step: progress.step, ema, program, logits })
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
