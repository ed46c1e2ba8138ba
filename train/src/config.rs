//! The run configuration: every setting of `muse train`, defined once. The command line
//! fills it (clap), `config.json` stores it and `--resume` reloads it (serde), and each
//! default lives in [`TrainArgs::default`].

use crate::error::Error;
use crate::ranges;

use crate::run::RunDir;
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

/// Everything a training run is configured by.
#[derive(Clone, Debug, PartialEq, clap::Args, Serialize, Deserialize)]
#[serde(default)]
pub struct TrainArgs {
    /// The `.muse` file (given as the command's argument).
    #[arg(skip)]
    pub model: PathBuf,
    /// Override a config value, e.g. `--set depth=8` (repeatable).
    #[arg(long = "set", value_name = "KEY=VALUE", value_parser = parse_set)]
    pub sets: Vec<(String, String)>,
    /// `shapes` (the built-in data set) or a folder of images with captions
    /// (metadata.jsonl, or IMAGE.png + IMAGE.txt).
    #[arg(long, default_value_t = TrainArgs::default().data)]
    pub data: String,
    /// Optimizer steps of the whole run (with --stage: where the last stage ends, unless given).
    #[arg(long, default_value_t = TrainArgs::default().steps, value_parser = ranges::at_least_one_u64)]
    pub steps: u64,
    /// Images per micro-batch.
    #[arg(long, default_value_t = TrainArgs::default().batch, value_parser = ranges::at_least_one)]
    pub batch: usize,
    /// Micro-batches per optimizer step (gradient accumulation).
    #[arg(long, default_value_t = TrainArgs::default().accumulate, value_parser = ranges::at_least_one)]
    pub accumulate: usize,
    /// The run directory (config, tokenizers, checkpoints, metrics.jsonl).
    #[arg(long, default_value_os_t = TrainArgs::default().out)]
    #[serde(skip)]
    pub out: PathBuf,
    /// Seed of initialisation, data order, masking and text dropout.
    #[arg(long, default_value_t = TrainArgs::default().seed)]
    pub seed: u64,
    /// Peak learning rate (AdamW, betas 0.9/0.96).
    #[arg(long, default_value_t = TrainArgs::default().lr, value_parser = ranges::positive)]
    pub lr: f64,
    /// Linear warmup steps before the cosine decay.
    #[arg(long, default_value_t = TrainArgs::default().warmup)]
    pub warmup: u64,
    /// Decoupled weight decay.
    #[arg(long, default_value_t = TrainArgs::default().weight_decay, value_parser = ranges::non_negative)]
    pub weight_decay: f64,
    /// Clip gradients to this global norm (0: no clipping).
    #[arg(long, default_value_t = TrainArgs::default().clip, value_parser = ranges::non_negative)]
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
    #[arg(long, default_value_t = TrainArgs::default().samples, value_parser = ranges::at_least_one)]
    pub samples: usize,
    /// Save a checkpoint every this many steps (and at the end).
    #[arg(long, default_value_t = TrainArgs::default().checkpoint_every, value_parser = ranges::at_least_one_u64)]
    pub checkpoint_every: u64,
    /// Checkpoints kept.
    #[arg(long, default_value_t = TrainArgs::default().keep, value_parser = ranges::at_least_one)]
    pub keep: usize,
    /// Skip steps whose loss is NaN or infinite instead of stopping.
    #[arg(long)]
    pub skip_nonfinite: bool,
    /// Keep an exponential moving average of the weights with this decay (0: none).
    #[arg(long, default_value_t = TrainArgs::default().ema, value_parser = ranges::decay)]
    pub ema: f64,
    /// Probability of training a sample without its caption (classifier-free guidance).
    #[arg(long, default_value_t = TrainArgs::default().text_dropout, value_parser = ranges::probability)]
    pub text_dropout: f64,
    /// Random horizontal flips of folder images.
    #[arg(long)]
    pub flip: bool,
    /// Progressive resolution (image tokenizers): RES:UNTIL_STEP[:BATCH[:ACCUMULATE]], one per
    /// stage in order, e.g. `--stage 16:400:32 --stage 32:1000:16:2`; the last ends the run.
    /// BATCH and ACCUMULATE default to --batch and --accumulate.
    #[arg(long = "stage", value_name = "RES:UNTIL[:BATCH[:ACC]]", value_parser = StageSpec::parse)]
    #[serde(skip)]
    pub stage_specs: Vec<StageSpec>,
    /// The stages as the run trains them (the specs with their defaults filled in).
    #[arg(skip)]
    pub stages: Vec<Stage>,
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
    /// Under `mpirun`: the element type gradients travel in between ranks (bf16: half the
    /// bytes, every partial sum rounded to bf16).
    #[arg(long, value_enum, default_value_t = TrainArgs::default().reduce_dtype)]
    pub reduce_dtype: ReduceDtype,
    /// Under `mpirun` on GPUs: MiB of gradients summed together as soon as they are final,
    /// overlapping the rest of the backward pass.
    #[arg(long, value_name = "MIB", default_value_t = TrainArgs::default().bucket_mb, value_parser = ranges::positive)]
    pub bucket_mb: f64,
}

/// The element type gradients travel in between data-parallel ranks.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default, clap::ValueEnum, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ReduceDtype {
    /// f32: the sum equals one process's to rounding.
    #[default]
    F32,
    /// bf16: half the bytes.
    Bf16,
}

impl TrainArgs {
    /// How the gradients are summed over ranks: the wire type and the bucket in bytes.
    pub fn reduction(&self) -> (muse_runtime::dist::Wire, usize) {
        let wire = match self.reduce_dtype {
            ReduceDtype::F32 => muse_runtime::dist::Wire::F32,
            ReduceDtype::Bf16 => muse_runtime::dist::Wire::Bf16,
        };
        (wire, (self.bucket_mb * (1 << 20) as f64).round().max(1.0) as usize)
    }
}

impl Default for TrainArgs {
    fn default() -> Self {
        TrainArgs {
            model: PathBuf::new(),
            sets: vec![],
            data: "shapes".into(),
            steps: 1000,
            batch: 16,
            accumulate: 1,
            out: PathBuf::from("runs/run"),
            seed: 0,
            lr: 1e-3,
            warmup: 100,
            weight_decay: 0.045,
            clip: 1.0,
            tokenizer: None,
            text_tokenizer: None,
            generator: None,
            samples: 8192,
            checkpoint_every: 200,
            keep: 3,
            skip_nonfinite: false,
            ema: 0.0,
            text_dropout: 0.1,
            flip: false,
            stage_specs: vec![],
            stages: vec![],
            init: None,
            freeze: vec![],
            discriminator: None,
            reduce_dtype: ReduceDtype::F32,
            bucket_mb: 25.0,
        }
    }
}

/// Which field of stored `args` does not have its type, and why: serde's own message says
/// what was expected but not where.
fn field_error(args: &serde_json::Value) -> Option<String> {
    let fields = args.as_object()?;
    let defaults = serde_json::to_value(TrainArgs::default()).ok()?;
    fields.iter().find_map(|(k, v)| {
        let mut one = defaults.clone();
        one[k.as_str()] = v.clone();
        let e = serde_json::from_value::<TrainArgs>(one).err()?;
        Some(format!("field \"{k}\" is {v}: {e}"))
    })
}

/// `KEY=VALUE` of `--set`.
fn parse_set(s: &str) -> Result<(String, String), Error> {
    let (k, v) =
        s.split_once('=').ok_or_else(|| Error::Usage(format!("`{s}`: expected KEY=VALUE, e.g. --set depth=8")))?;
    Ok((k.trim().to_string(), v.trim().to_string()))
}

/// One stage of a progressive-resolution schedule: train at `resolution` until step `until`
/// with micro-batches of `batch` images, `accumulate` per step (the research log went
/// 64 -> 128 -> 256 -> 512 with batch x accumulation 128x1, 32x4, 8x4, 3x6). Stored in
/// `config.json` as `[resolution, until, batch, accumulate]`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(from = "[u64; 4]", into = "[u64; 4]")]
pub struct Stage {
    /// Image side in pixels.
    pub resolution: usize,
    /// The step this stage ends at.
    pub until: u64,
    /// Images per micro-batch.
    pub batch: usize,
    /// Micro-batches per optimizer step.
    pub accumulate: usize,
}

impl From<[u64; 4]> for Stage {
    fn from(v: [u64; 4]) -> Stage {
        Stage { resolution: v[0] as usize, until: v[1], batch: v[2] as usize, accumulate: v[3] as usize }
    }
}

impl From<Stage> for [u64; 4] {
    fn from(s: Stage) -> [u64; 4] {
        [s.resolution as u64, s.until, s.batch as u64, s.accumulate as u64]
    }
}

/// A stage as `--stage` gives it: batch and accumulation may be left to the run's.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct StageSpec {
    /// Image side in pixels.
    pub resolution: usize,
    /// The step this stage ends at.
    pub until: u64,
    /// Images per micro-batch (none: `--batch`).
    pub batch: Option<usize>,
    /// Micro-batches per optimizer step (none: `--accumulate`).
    pub accumulate: Option<usize>,
}

impl StageSpec {
    /// Parses `RES:UNTIL[:BATCH[:ACCUMULATE]]`.
    pub fn parse(s: &str) -> Result<StageSpec, Error> {
        let parts: Vec<&str> = s.split(':').collect();
        if !(2..=4).contains(&parts.len()) {
            return Err(Error::Usage(format!(
                "`{s}`: write RESOLUTION:UNTIL_STEP[:BATCH[:ACCUMULATE]], e.g. 64:1000:32:4"
            )));
        }
        let num = |i: usize, what: &str| -> Result<Option<u64>, Error> {
            parts
                .get(i)
                .map(|p| match p.parse::<u64>() {
                    Ok(v) if v >= 1 || i == 1 => Ok(v),
                    Ok(_) => Err(Error::Usage(format!("`{s}`: the {what} must be at least 1"))),
                    Err(_) => Err(Error::Usage(format!("`{s}`: {what} `{p}` is not a whole number"))),
                })
                .transpose()
        };
        Ok(StageSpec {
            resolution: num(0, "resolution")?.unwrap_or(0) as usize,
            until: num(1, "step")?.unwrap_or(0),
            batch: num(2, "batch")?.map(|b| b as usize),
            accumulate: num(3, "accumulation")?.map(|a| a as usize),
        })
    }

    /// The stage with the run's batch and accumulation where the spec leaves them out.
    pub fn resolve(&self, batch: usize, accumulate: usize) -> Stage {
        Stage {
            resolution: self.resolution,
            until: self.until,
            batch: self.batch.unwrap_or(batch),
            accumulate: self.accumulate.unwrap_or(accumulate),
        }
    }
}

impl Stage {
    /// Parses `RES:UNTIL[:BATCH[:ACCUMULATE]]`; batch and accumulation default to `batch` and
    /// `accumulate`.
    pub fn parse(s: &str, batch: usize, accumulate: usize) -> Result<Stage, Error> {
        StageSpec::parse(s)
            .map(|spec| spec.resolve(batch, accumulate))
            .map_err(|e| Error::Usage(format!("--stage {e}")))
    }
}

impl TrainArgs {
    /// The configuration as the command line gave it, made whole: the stages resolved from
    /// their specs, and the run's length from the last stage unless `steps_given`.
    pub fn finish(mut self, steps_given: bool) -> TrainArgs {
        if !self.stage_specs.is_empty() {
            self.stages = self.stage_specs.iter().map(|s| s.resolve(self.batch, self.accumulate)).collect();
            if let (Some(last), false) = (self.stages.last(), steps_given) {
                self.steps = last.until;
            }
        }
        self
    }

    /// The arguments a run was started with (its config.json), for `--resume`.
    pub fn from_run(run: &Path) -> Result<TrainArgs, Error> {
        let c = RunDir::open(run)?.config()?;
        let mut args: TrainArgs = serde_json::from_value(c["args"].clone()).map_err(|e| Error::Format {
            path: run.join("config.json"),
            why: format!(
                "`args` does not describe a run: {}",
                field_error(&c["args"]).unwrap_or_else(|| e.to_string())
            ),
        })?;
        if args.model.as_os_str().is_empty() {
            return Err(Error::Format { path: run.join("config.json"), why: "no model".into() });
        }
        args.out = run.to_path_buf();
        Ok(args)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_stored_field_of_the_wrong_type_is_named() {
        let dir = std::env::temp_dir().join(format!("muse-config-field-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let config = serde_json::json!({"args": {"model": "m.muse", "lr": 0.01, "steps": "8"}, "source_hash": "0"});
        std::fs::write(dir.join("config.json"), config.to_string()).unwrap();
        let e = TrainArgs::from_run(&dir).unwrap_err().to_string();
        assert!(e.contains("field \"steps\" is \"8\"") && e.contains("config.json"), "{e}");
        let config = serde_json::json!({"args": {"model": "m.muse", "steps": 8}, "source_hash": "0"});
        std::fs::write(dir.join("config.json"), config.to_string()).unwrap();
        assert_eq!(TrainArgs::from_run(&dir).unwrap().steps, 8);
        std::fs::remove_dir_all(&dir).ok();
    }
}
