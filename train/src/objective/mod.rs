//! `muse train`'s objectives: [`train`] picks one from the model's inputs (an `image`
//! input: an image tokenizer; `image` and `labels`: a classifier of caption words; `tokens`
//! and `targets`: a masked-token model; `tokens` and `is_original`: a token critic), prepares the run directory and hands over to it; each
//! objective is a module of its own. `--resume` rebuilds everything from config.json.

use crate::error::Error;

pub mod classifier;
mod critic;
mod masked;
mod tokenizer;

use crate::config::TrainArgs;
use crate::fit::{self, FitConfig, NoHook, Summary};
use crate::run::{Progress, RunDir};
use muse_compiler::{compile_path, Model, Options};
use muse_runtime::device::{Device, Tensors};
use muse_runtime::dist::Collective;
use muse_runtime::optim::{AdamW, Schedule};
use muse_runtime::train::{TrainOptions, Trainer};
use muse_runtime::{init_params, Precision};
use serde_json::{json, Value};
use std::path::Path;
use std::sync::Arc;

/// Compiles one model of a file with overrides; the diagnostic rendered on error.
pub fn compile_model(path: &Path, sets: &[(String, String)]) -> Result<Model, Error> {
    let c = compile_path(path, &Options { overrides: sets.to_vec(), ..Options::default() });
    match c.result {
        Ok(mut m) if m.len() == 1 => Ok(m.remove(0)),
        Ok(m) => Err(Error::Model(format!("{}: {} models in the file; train one per file", path.display(), m.len()))),
        Err(d) => Err(Error::Model(d.render(&c.sources))),
    }
}

pub(crate) fn config_int(m: &Model, key: &str) -> Option<i64> {
    m.config.iter().find(|(k, _)| k == key).and_then(|(_, v)| match v {
        muse_compiler::elaborate::ConfigValue::Int(i) => Some(*i),
        _ => None,
    })
}

/// The model's initial parameters: random from its initialisers, then every tensor of
/// `--init` that is named like a parameter (its shape must match).
fn initial_params(model: &Model, args: &TrainArgs) -> Result<Tensors, Error> {
    let mut params = init_params(&model.graph, args.seed, Precision::F32)?;
    let Some(path) = &args.init else { return Ok(params) };
    let file =
        muse_runtime::checkpoint::load(path).map_err(|e| Error::Usage(format!("--init {}: {e}", path.display())))?;
    let mut loaded = 0;
    for (name, t) in &file {
        if let Some(p) = params.get_mut(name) {
            if p.shape != t.shape {
                return Err(Error::Usage(format!(
                    "--init {}: `{name}` is {:?} in the file but {:?} in {}",
                    path.display(),
                    t.shape,
                    p.shape,
                    model.name
                )));
            }
            *p = t.clone();
            loaded += 1;
        }
    }
    if loaded == 0 {
        return Err(Error::Usage(format!(
            "--init {}: none of its {} tensors is named like a parameter of {} (e.g. `{}`)",
            path.display(),
            file.len(),
            model.name,
            model.graph.params.first().map_or("", |p| p.name.as_str())
        )));
    }
    muse_compiler::note!("init: {loaded} of {} parameters from {}", params.len(), path.display());
    Ok(params)
}

/// What the trainer leaves alone: `--freeze` (`text` is the text encoder) and `also`.
fn train_options(args: &TrainArgs, outputs: &[&str], also: &[&str]) -> TrainOptions {
    let alias = |f: &str| if f == "text" { "text_encoder".to_string() } else { f.to_string() };
    TrainOptions {
        outputs: outputs.iter().map(|o| o.to_string()).collect(),
        frozen: args.freeze.iter().map(|f| alias(f)).chain(also.iter().map(|f| f.to_string())).collect(),
    }
}

/// Config overrides of a token model with the codebook and grid of its image tokenizer
/// (`vq`); a different value given explicitly is an error.
pub fn token_model_sets(
    sets: &[(String, String)],
    codebook: i64,
    grid: i64,
    vq: &Path,
) -> Result<Vec<(String, String)>, Error> {
    let mut out = sets.to_vec();
    for (k, v) in [("codebook", codebook), ("grid", grid)] {
        match out.iter().find(|(key, _)| key == k) {
            Some((_, given)) if given.parse::<i64>().ok() != Some(v) => {
                return Err(Error::Usage(format!(
                    "--set {k}={given}, but the image tokenizer {} has {k} {v}",
                    vq.display()
                )))
            }
            Some(_) => {}
            None => out.push((k.to_string(), v.to_string())),
        }
    }
    Ok(out)
}

/// Whether a run starts or continues.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Start {
    /// A new run.
    New,
    /// The run in `--out` continues; a `.muse` source that changed since it was recorded is
    /// refused unless allowed (then both are recorded).
    Resume {
        /// `--allow-changed-source`.
        allow_changed_source: bool,
    },
}

/// Trains (or continues) a run.
pub fn train(args: &TrainArgs, start: Start, device: &dyn Device) -> Result<Summary, Error> {
    let resume = start != Start::New;
    // Paths are recorded absolute, so runs can be resumed and used from any directory.
    let absolute = |p: &Path| std::fs::canonicalize(p).unwrap_or_else(|_| p.to_path_buf());
    // A progressive run's model is the last stage's: what `muse tokenize` and sampling use.
    let mut sets = args.sets.clone();
    if let Some(last) = args.stages.last() {
        sets.retain(|(k, _)| k != "resolution");
        sets.push(("resolution".into(), last.resolution.to_string()));
    }
    let args = &TrainArgs {
        model: absolute(&args.model),
        tokenizer: args.tokenizer.as_deref().map(absolute),
        generator: args.generator.as_deref().map(absolute),
        text_tokenizer: args.text_tokenizer.as_deref().map(absolute),
        init: args.init.as_deref().map(absolute),
        discriminator: args.discriminator.as_deref().map(absolute),
        sets,
        ..args.clone()
    };
    let probe = compile_model(&args.model, &args.sets)?;
    let has = |n: &str| probe.graph.inputs.iter().any(|(k, _)| k == n);
    if !resume {
        refuse_stray_flags(args, &has)?;
    }
    let ranks = muse_runtime::dist::from_environment().map_err(|e| Error::Usage(e.to_string()))?;
    if ranks.size() > 1 {
        let n = ranks.size();
        // Stages (image tokenizers) give their own accumulation, checked there.
        if args.stages.is_empty() && !args.accumulate.is_multiple_of(n) {
            return Err(Error::Usage(format!(
                "{n} ranks share each step's --accumulate {} micro-batches: give a multiple of {n} (the global batch is --batch x --accumulate, the same for any number of ranks)",
                args.accumulate
            )));
        }
    }
    // Under `mpirun`, rank 0 writes the run and the others only read it.
    let run = if ranks.rank() == 0 {
        RunDir::for_training(&args.out, args.keep, resume)?
    } else {
        if resume {
            RunDir::open(&args.out)?;
        }
        RunDir::follower(&args.out)
    };
    let setup = Setup { args, resume, device, run: &run, ranks };
    let source = std::fs::read_to_string(&args.model).map_err(Error::io(&args.model))?;
    let mut config = json!({
        "args": serde_json::to_value(args).map_err(|e| Error::Usage(format!("the run configuration cannot be stored as JSON: {e} (a path that is not UTF-8?)")))?, "model_name": probe.name, "source": source,
        "source_hash": format!("{:016x}", source.bytes().fold(0u64, |h, b| muse_runtime::rng::mix64(h ^ b as u64))),
        "config": probe.config.iter().map(|(k, v)| (k.clone(), format!("{v:?}"))).collect::<Vec<_>>(),
    });
    if let Start::Resume { allow_changed_source } = start {
        config = keep_recorded_source(&run, config, allow_changed_source)?;
    }
    if has("image") && has("labels") {
        return classifier::train(&setup, config);
    }
    if has("image") {
        config["objective"] = json!("image tokenizer");
        run.write_config(&config)?;
        return tokenizer::train(&setup, &probe);
    }
    if !args.stages.is_empty() {
        return Err(Error::Usage(
            "--stage: progressive resolution is for image tokenizers (models with an `image` input)".into(),
        ));
    }
    if has("tokens") && has("is_original") && has("text_ids") && has("text_mask") {
        return critic::train(&setup, config);
    }
    if !(has("tokens") && has("targets") && has("loss_mask") && has("text_ids") && has("text_mask")) {
        return Err(Error::Usage(format!(
            "{}: muse train knows image tokenizers (an `image` input), classifiers (`image` and `labels`), masked-token models (inputs tokens, targets, loss_mask, text_ids, text_mask) and token critics (tokens, is_original, text_ids, text_mask)",
            args.model.display()
        )));
    }
    masked::train(&setup, config)
}

/// Refuses the run files a new run was given that its objective would not read (a
/// `--tokenizer` for an image tokenizer, a `--generator` for a masked-token model, ...):
/// silently ignored, they would hide a mistaken command.
fn refuse_stray_flags(args: &TrainArgs, has: &dyn Fn(&str) -> bool) -> Result<(), Error> {
    let (objective, reads): (&str, &[&str]) = if has("image") && has("labels") {
        ("a classifier", &[])
    } else if has("image") {
        ("an image tokenizer", &["--discriminator"])
    } else if has("is_original") {
        ("a token critic", &["--generator"])
    } else {
        ("a masked-token model", &["--tokenizer", "--text-tokenizer"])
    };
    let given = [
        ("--tokenizer", args.tokenizer.is_some()),
        ("--generator", args.generator.is_some()),
        ("--text-tokenizer", args.text_tokenizer.is_some()),
        ("--discriminator", args.discriminator.is_some()),
    ];
    let stray: Vec<&str> = given.iter().filter(|(f, g)| *g && !reads.contains(f)).map(|(f, _)| *f).collect();
    if stray.is_empty() {
        return Ok(());
    }
    Err(Error::Usage(format!(
        "{} is {objective}, which does not use {}: leave {} out",
        args.model.display(),
        stray.join(" or "),
        if stray.len() == 1 { "it" } else { "them" }
    )))
}

/// A resumed run's config keeps the source it was started from: a `.muse` file changed
/// since is refused, or with `allow` recorded beside it (hash, text and the step it took over
/// at) under `source_changes`.
fn keep_recorded_source(run: &RunDir, mut config: Value, allow: bool) -> Result<Value, Error> {
    let old = run.config()?;
    let (Some(old_hash), Some(old_source)) = (old["source_hash"].as_str(), old["source"].as_str()) else {
        return Err(Error::Format { path: run.path.join("config.json"), why: "no recorded source".into() });
    };
    let mut changes = old.get("source_changes").cloned().unwrap_or_else(|| json!([]));
    let newest = changes.as_array().and_then(|c| c.last()).and_then(|c| c["source_hash"].as_str()).unwrap_or(old_hash);
    let hash = config["source_hash"].as_str().unwrap_or_default().to_string();
    if hash != newest {
        let model = config["args"]["model"].as_str().unwrap_or_default().to_string();
        if !allow {
            return Err(Error::RunDir(format!(
                "{model} changed since {} recorded it (source hash {newest}, now {hash}): resume with the recorded source restored, or pass --allow-changed-source to continue with the new one (both are kept in config.json)",
                run.path.display()
            )));
        }
        let step = run.checkpoints().pop().map(|(s, _)| s);
        muse_compiler::note!("{model} changed since the run recorded it; continuing with it (recorded in config.json)");
        if let Some(list) = changes.as_array_mut() {
            list.push(json!({ "from_step": step, "source_hash": hash, "source": config["source"] }));
        }
    }
    config["source"] = json!(old_source);
    config["source_hash"] = json!(old_hash);
    if changes.as_array().is_some_and(|c| !c.is_empty()) {
        config["source_changes"] = changes;
    }
    Ok(config)
}

/// What every objective is handed: the run's configuration, whether it resumes, the device
/// and the run directory; the optimizer's and the training loop's settings follow from them.
struct Setup<'a> {
    args: &'a TrainArgs,
    resume: bool,
    device: &'a dyn Device,
    run: &'a RunDir,
    /// The data-parallel ranks of this run (one process alone: a single rank).
    ranks: Arc<dyn Collective + Send + Sync>,
}

impl Setup<'_> {
    /// AdamW as the configuration sets it.
    fn opt(&self) -> AdamW {
        let a = self.args;
        AdamW {
            lr: a.lr,
            weight_decay: a.weight_decay,
            clip_norm: (a.clip > 0.0).then_some(a.clip),
            ..AdamW::default()
        }
    }

    /// The training loop's settings, for items of `tokens_per_item` tokens (0: images).
    fn fit(&self, tokens_per_item: usize) -> FitConfig {
        let a = self.args;
        FitConfig {
            steps: a.steps,
            schedule: Schedule { warmup: a.warmup, total: a.steps, min_ratio: 0.1 },
            accumulate: a.accumulate.max(1),
            checkpoint_every: a.checkpoint_every,
            skip_nonfinite: a.skip_nonfinite,
            ema: (a.ema > 0.0).then_some(a.ema),
            seed: a.seed,
            batch: a.batch,
            tokens_per_item,
        }
    }
}

/// The trainer of a token model (a masked-token model or a critic), with its weight average
/// when asked, and where it starts: step 0, or the run's latest checkpoint.
fn token_trainer(s: &Setup, model: &Model, params: &Tensors, example: &Tensors) -> Result<(Trainer, Progress), Error> {
    let Setup { args, resume, device, run, .. } = *s;
    let opt = s.opt();
    let options = train_options(args, &[], &[]);
    let mut trainer = Trainer::with_options(&model.graph, &model.name, params, example, opt, device, &options)?;
    let (wire, bucket) = s.args.reduction();
    trainer.set_collective(s.ranks.clone(), wire, bucket);
    if args.ema > 0.0 {
        trainer.start_ema()?;
    }
    let start = if resume { fit::restore(run, &mut trainer, &mut NoHook)? } else { Progress { step: 0, data_pos: 0 } };
    Ok((trainer, start))
}
