//! `muse train`: a new run from a model file and flags, or `--resume RUN_DIR`.

use super::cli::{write_stdout, DeviceArg};
use std::path::PathBuf;
use std::process::ExitCode;

/// What `muse train` takes.
#[derive(clap::Args, Clone)]
pub struct Args {
    /// The .muse file (omit with --resume).
    pub file: Option<PathBuf>,
    #[command(flatten)]
    pub train: Box<TrainFlags>,
    /// Override a config value, e.g. `--set depth=8` (repeatable).
    #[arg(long = "set", value_name = "KEY=VALUE")]
    pub set: Vec<String>,
}

/// The training flags.
#[derive(clap::Args, Clone)]
pub struct TrainFlags {
    /// `shapes` (the built-in data set) or a folder of images with captions
    /// (metadata.jsonl, or IMAGE.png + IMAGE.txt).
    #[arg(long, default_value = "shapes")]
    pub data: String,
    /// Optimizer steps of the whole run.
    #[arg(long, default_value_t = 1000)]
    pub steps: u64,
    /// Images per micro-batch.
    #[arg(long, default_value_t = 16)]
    pub batch: usize,
    /// Micro-batches per optimizer step (gradient accumulation).
    #[arg(long, default_value_t = 1)]
    pub accumulate: usize,
    /// The run directory (config, tokenizers, checkpoints, metrics.jsonl).
    #[arg(long, default_value = "runs/run")]
    pub out: PathBuf,
    /// Continue the run in this directory exactly where its last checkpoint left it.
    #[arg(long, value_name = "RUN_DIR")]
    pub resume: Option<PathBuf>,
    #[command(flatten)]
    pub device: DeviceArg,
    /// Seed of initialisation, data order, masking and text dropout.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Peak learning rate (AdamW, betas 0.9/0.96).
    #[arg(long, default_value_t = 1e-3)]
    pub lr: f64,
    /// Linear warmup steps before the cosine decay.
    #[arg(long, default_value_t = 100)]
    pub warmup: u64,
    /// Decoupled weight decay.
    #[arg(long, default_value_t = 0.045)]
    pub weight_decay: f64,
    /// Clip gradients to this global norm (0: no clipping).
    #[arg(long, default_value_t = 1.0)]
    pub clip: f64,
    /// A trained image tokenizer's run directory (masked-token models).
    #[arg(long, value_name = "RUN_DIR")]
    pub tokenizer: Option<PathBuf>,
    /// A tokenizer.json for the captions (default: train a word-level one on them).
    #[arg(long, value_name = "FILE")]
    pub text_tokenizer: Option<PathBuf>,
    /// A trained masked-token model's run directory whose fills a token critic learns to judge.
    #[arg(long, value_name = "RUN_DIR")]
    pub generator: Option<PathBuf>,
    /// Items of the built-in data set to encode into tokens for masked-token training.
    #[arg(long, default_value_t = 8192)]
    pub samples: usize,
    /// Save a checkpoint every this many steps (and at the end).
    #[arg(long, default_value_t = 200)]
    pub checkpoint_every: u64,
    /// Checkpoints kept.
    #[arg(long, default_value_t = 3)]
    pub keep: usize,
    /// Skip steps whose loss is NaN or infinite instead of stopping.
    #[arg(long)]
    pub skip_nonfinite: bool,
    /// Keep an exponential moving average of the weights with this decay (0: none).
    #[arg(long, default_value_t = 0.0)]
    pub ema: f64,
    /// Probability of training a sample without its caption (classifier-free guidance).
    #[arg(long, default_value_t = 0.1)]
    pub text_dropout: f64,
    /// Random horizontal flips of folder images.
    #[arg(long)]
    pub flip: bool,
    /// Progressive resolution (image tokenizers): RES:UNTIL_STEP[:BATCH[:ACCUMULATE]], one per
    /// stage in order, e.g. `--stage 16:400:32 --stage 32:1000:16:2`; the last ends the run.
    #[arg(long = "stage")]
    pub stages: Vec<String>,
    /// Initial weights from a safetensors file: each tensor named like a parameter replaces
    /// its random initialisation (e.g. a pretrained text encoder's `text_encoder.*`).
    #[arg(long, value_name = "FILE")]
    pub init: Option<PathBuf>,
    /// Leave these parameters untrained: `text` (the text encoder) or a parameter path such as
    /// `layers.0` (repeatable).
    #[arg(long, value_name = "NAME")]
    pub freeze: Vec<String>,
    /// The image tokenizer's discriminator model, when it has an adversarial term (default:
    /// vq_discriminator.muse beside the tokenizer's file).
    #[arg(long, value_name = "FILE")]
    pub discriminator: Option<PathBuf>,
}

/// Trains, or continues a run.
pub fn main(a: Args) -> ExitCode {
    match train_command(a.file, &a.train, &a.set) {
        Ok(t) => write_stdout(&t),
        Err(e) => super::cli::fail(e),
    }
}

fn train_command(file: Option<PathBuf>, t: &TrainFlags, set: &[String]) -> Result<String, String> {
    let device = t.device.open(false)?;
    let (args, resume) = match (&t.resume, file) {
        (Some(run), _) => {
            let mut a = muse_train::session::TrainArgs::from_run(run)?;
            // Only the length of the run may change on resuming.
            if std::env::args().any(|x| x == "--steps") {
                a.steps = t.steps;
                if let Some(last) = a.stages.last_mut() {
                    last.until = t.steps;
                }
            }
            (a, true)
        }
        (None, Some(model)) => {
            let mut sets = Vec::new();
            for s in set {
                let (k, v) = s.split_once('=').ok_or_else(|| format!("--set {s}: expected KEY=VALUE"))?;
                sets.push((k.trim().to_string(), v.trim().to_string()));
            }
            let stages = t
                .stages
                .iter()
                .map(|s| muse_train::session::Stage::parse(s, t.batch, t.accumulate))
                .collect::<Result<Vec<_>, _>>()?;
            // With stages, the run ends where the last one does unless --steps says otherwise.
            let steps = match stages.last() {
                Some(last) if !std::env::args().any(|x| x == "--steps") => last.until,
                _ => t.steps,
            };
            let a = muse_train::session::TrainArgs {
                model,
                sets,
                data: t.data.clone(),
                steps,
                batch: t.batch,
                accumulate: t.accumulate,
                out: t.out.clone(),
                seed: t.seed,
                lr: t.lr,
                warmup: t.warmup,
                weight_decay: t.weight_decay,
                clip: t.clip,
                tokenizer: t.tokenizer.clone(),
                text_tokenizer: t.text_tokenizer.clone(),
                generator: t.generator.clone(),
                samples: t.samples,
                checkpoint_every: t.checkpoint_every,
                keep: t.keep,
                skip_nonfinite: t.skip_nonfinite,
                ema: t.ema,
                text_dropout: t.text_dropout,
                flip: t.flip,
                init: t.init.clone(),
                freeze: t.freeze.clone(),
                discriminator: t.discriminator.clone(),
                stages,
            };
            (a, false)
        }
        (None, None) => return Err("give a .muse file to train, or --resume RUN_DIR".into()),
    };
    let s = muse_train::session::train(&args, resume, device.as_ref())?;
    if s.first_loss.is_nan() {
        return Ok(format!(
            "{}: the run has finished its {} steps (--resume {} --steps N continues it to N)\n",
            args.out.display(),
            args.steps,
            args.out.display()
        ));
    }
    Ok(format!(
        "trained {}: loss {:.4} -> {:.4}, {:.1} images/s, {:.1}% of the time waiting for data, {} steps skipped; run in {}\n",
        args.model.display(),
        s.first_loss,
        s.last_loss,
        s.items_per_s,
        100.0 * s.wait_fraction,
        s.skipped_steps,
        args.out.display()
    ))
}
