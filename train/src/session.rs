//! `muse train`: picks the objective from the model's inputs (an `image` input: an image
//! tokenizer; `tokens` and `targets`: a masked-token model), prepares data, text and run
//! directory, and runs the loop. `--resume` rebuilds everything from the run's config.json.

use crate::adversary::Adversary;
pub use crate::config::{Stage, TrainArgs};
use crate::critic::CriticBatches;
use crate::data::{self, loader::Loader, Dataset};
use crate::fit::{self, Batches, FitConfig, NoHook, Summary};
use crate::masked::{self, MaskedBatches, TokenSet};
use crate::run::{Progress, RunDir};
use crate::text::TextTokenizer;
use crate::trained::TrainedTokenModel;
use crate::vq::Reseed;
use muse_compiler::{compile_path, Model, Options};
use muse_runtime::device::{Device, Tensors};
use muse_runtime::optim::{AdamW, Schedule};
use muse_runtime::train::{TrainOptions, Trainer};
use muse_runtime::{init_params, HostTensor, Precision};
use serde_json::{json, Value};
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// Compiles one model of a file with overrides; the diagnostic rendered on error.
pub fn compile_model(path: &Path, sets: &[(String, String)]) -> Result<Model, String> {
    let c = compile_path(path, &Options { overrides: sets.to_vec(), model: None });
    match c.result {
        Ok(mut m) if m.len() == 1 => Ok(m.remove(0)),
        Ok(m) => Err(format!("{}: {} models in the file; train one per file", path.display(), m.len())),
        Err(d) => Err(d.render(&c.sources)),
    }
}

fn config_int(m: &Model, key: &str) -> Option<i64> {
    m.config.iter().find(|(k, _)| k == key).and_then(|(_, v)| match v {
        muse_compiler::elaborate::ConfigValue::Int(i) => Some(*i),
        _ => None,
    })
}

/// The model's initial parameters: random from its initialisers, then every tensor of
/// `--init` that is named like a parameter (its shape must match).
fn initial_params(model: &Model, args: &TrainArgs) -> Result<Tensors, String> {
    let mut params = init_params(&model.graph, args.seed, Precision::F32).map_err(|e| e.to_string())?;
    let Some(path) = &args.init else { return Ok(params) };
    let file = muse_runtime::checkpoint::load(path).map_err(|e| format!("--init {}: {e}", path.display()))?;
    let mut loaded = 0;
    for (name, t) in &file {
        if let Some(p) = params.get_mut(name) {
            if p.shape != t.shape {
                return Err(format!(
                    "--init {}: `{name}` is {:?} in the file but {:?} in {}",
                    path.display(),
                    t.shape,
                    p.shape,
                    model.name
                ));
            }
            *p = t.clone();
            loaded += 1;
        }
    }
    if loaded == 0 {
        return Err(format!(
            "--init {}: none of its {} tensors is named like a parameter of {} (e.g. `{}`)",
            path.display(),
            file.len(),
            model.name,
            model.graph.params.first().map_or("", |p| p.name.as_str())
        ));
    }
    eprintln!("init: {loaded} of {} parameters from {}", params.len(), path.display());
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
) -> Result<Vec<(String, String)>, String> {
    let mut out = sets.to_vec();
    for (k, v) in [("codebook", codebook), ("grid", grid)] {
        match out.iter().find(|(key, _)| key == k) {
            Some((_, given)) if given.parse::<i64>().ok() != Some(v) => {
                return Err(format!("--set {k}={given}, but the image tokenizer {} has {k} {v}", vq.display()))
            }
            Some(_) => {}
            None => out.push((k.to_string(), v.to_string())),
        }
    }
    Ok(out)
}

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
}

impl ImageTokenizer {
    /// Loads the latest checkpoint of a VQ run.
    pub fn open(run: &Path) -> Result<ImageTokenizer, String> {
        let args = TrainArgs::from_run(run)?;
        let model = compile_model(&args.model, &args.sets)?;
        let dir = RunDir::open(run)?;
        let (tensors, _) = dir.latest()?.ok_or_else(|| format!("{}: the run has no checkpoint yet", run.display()))?;
        let params =
            model.graph.params.iter().filter_map(|p| Some((p.name.clone(), tensors.get(&p.name)?.clone()))).collect();
        Ok(ImageTokenizer {
            model,
            params,
            run: run.to_path_buf(),
            checkpoint: dir.checkpoints().last().cloned().unwrap_or_default(),
        })
    }

    /// Codebook size and tokens per side.
    pub fn codebook_and_grid(&self) -> Result<(i64, i64), String> {
        let codebook = config_int(&self.model, "codebook").ok_or("the image tokenizer has no `codebook` config")?;
        let codes = self.model.graph.outputs.iter().find(|(n, _)| n == "codes").ok_or("no `codes` output")?.1;
        let shape = &self.model.graph.ty(codes).shape.0;
        let grid = shape.get(1).and_then(|d| d.as_known()).ok_or("`codes` must be [B, grid, grid]")?;
        Ok((codebook, grid))
    }

    /// The data set as token ids, encoded once and cached under the tokenizer's run.
    pub fn tokens(
        &self,
        data_spec: &str,
        data: &dyn Dataset,
        samples: usize,
        device: &dyn Device,
    ) -> Result<TokenSet, String> {
        let key = muse_runtime::rng::mix64(
            data_spec
                .bytes()
                .chain(self.checkpoint.bytes())
                .fold(samples as u64, |h, b| muse_runtime::rng::mix64(h ^ b as u64)),
        );
        let dir = self.run.join("tokens").join(format!("{key:016x}"));
        if let Some(t) = TokenSet::load(&dir)? {
            eprintln!("tokens: {} items from the cache {}", t.len(), dir.display());
            return Ok(t);
        }
        let count = data.size().map_or(samples, |n| n.min(samples.max(n)));
        eprintln!("tokenize: encoding {count} images with {} ...", self.run.display());
        let t = masked::encode(&self.model.graph, &self.params, data, Some(count), 64, device)?;
        t.save(&dir)?;
        Ok(t)
    }
}

/// How reconstructions of one-shape images of the built-in data set judge against their
/// captions (see [`crate::data::shapes::judge`]).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Reconstructions {
    /// Images judged.
    pub judged: usize,
    /// Right in colour, place and shape.
    pub colour: usize,
    /// Right in place.
    pub place: usize,
    /// Right in shape.
    pub shape: usize,
    /// Images of a large shape, and those right in shape.
    pub large: (usize, usize),
}

impl ImageTokenizer {
    /// Encodes and decodes the first `count` one-shape images of `data` and judges the
    /// reconstructions against their captions: what the tokenizer can represent, an upper
    /// bound for any generator on its tokens. None judged for data without such captions.
    pub fn judge_reconstructions(
        &self,
        data: &dyn Dataset,
        count: usize,
        device: &dyn Device,
    ) -> Result<Reconstructions, String> {
        use crate::data::shapes::judge;
        let g = &self.model.graph;
        let recon = g.outputs.iter().find(|(n, _)| n == "recon").ok_or("the image tokenizer has no `recon` output")?.1;
        let mut program = device.compile(g, &[recon]).map_err(|e| e.to_string())?;
        let res = data.resolution();
        let mut out = Reconstructions::default();
        let mut index = 0u64;
        let limit = data.size().map_or(count.saturating_mul(8) as u64, |n| n as u64);
        while out.judged < count && index < limit {
            let (mut pixels, mut captions) = (Vec::new(), Vec::new());
            while captions.len() < 64 && out.judged + captions.len() < count && index < limit {
                if let Ok(s) = data.get(index) {
                    if judge(&s.image, res, &s.caption).is_some() {
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
            let values = program.run(&inputs, &self.params, 0).map_err(|e| e.to_string())?;
            let images: Vec<f32> = values[&recon].to_f64().iter().map(|&x| x as f32).collect();
            for (i, caption) in captions.iter().enumerate() {
                let Some(j) = judge(&images[i * res * res * 3..][..res * res * 3], res, caption) else { continue };
                out.judged += 1;
                out.colour += usize::from(j.colour);
                out.place += usize::from(j.place);
                out.shape += usize::from(j.shape);
                if caption.contains(" large ") {
                    out.large.0 += 1;
                    out.large.1 += usize::from(j.shape);
                }
            }
        }
        Ok(out)
    }
}

/// Image batches for an image tokenizer, decoded ahead on a background thread.
struct ImageBatches {
    loader: Loader,
    res: usize,
    input: String,
}

impl Batches for ImageBatches {
    fn next(&mut self) -> Result<(Tensors, u64), String> {
        let b = self.loader.next_batch().ok_or("the data loader stopped: no image can be read")?;
        let n = b.samples.len();
        let pixels: Vec<f64> = b.samples.iter().flat_map(|s| s.image.iter().map(|&x| x as f64)).collect();
        let mut t = Tensors::new();
        t.insert(self.input.clone(), HostTensor::f(&[n, self.res, self.res, 3], pixels));
        Ok((t, b.next))
    }
    fn waited(&self) -> std::time::Duration {
        self.loader.waited()
    }
    fn skipped(&self) -> usize {
        self.loader.skipped()
    }
}

/// Trains (or, with `resume`, continues) a run.
pub fn train(args: &TrainArgs, resume: bool, device: &dyn Device) -> Result<Summary, String> {
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
    let run = RunDir::create(&args.out, args.keep)?;
    if !resume && run.path.join("latest.json").exists() {
        return Err(format!(
            "{} already holds a run: pass --resume {} to continue it, or choose another --out",
            run.path.display(),
            run.path.display()
        ));
    }
    let opt = AdamW {
        lr: args.lr,
        weight_decay: args.weight_decay,
        clip_norm: (args.clip > 0.0).then_some(args.clip),
        ..AdamW::default()
    };
    let fit_cfg = |tokens_per_item| FitConfig {
        steps: args.steps,
        schedule: Schedule { warmup: args.warmup, total: args.steps, min_ratio: 0.1 },
        accumulate: args.accumulate.max(1),
        checkpoint_every: args.checkpoint_every,
        skip_nonfinite: args.skip_nonfinite,
        ema: (args.ema > 0.0).then_some(args.ema),
        seed: args.seed,
        batch: args.batch,
        tokens_per_item,
    };
    let source = std::fs::read_to_string(&args.model).map_err(|e| format!("{}: {e}", args.model.display()))?;
    let mut config = json!({
        "args": serde_json::to_value(args).map_err(|e| e.to_string())?, "model_name": probe.name, "source": source,
        "source_hash": format!("{:016x}", source.bytes().fold(0u64, |h, b| muse_runtime::rng::mix64(h ^ b as u64))),
        "config": probe.config.iter().map(|(k, v)| (k.clone(), format!("{v:?}"))).collect::<Vec<_>>(),
    });
    if has("image") {
        config["objective"] = json!("image tokenizer");
        run.write_config(&config)?;
        return train_tokenizer(args, resume, device, &run, opt, &probe, &fit_cfg);
    }
    if !args.stages.is_empty() {
        return Err("--stage: progressive resolution is for image tokenizers (models with an `image` input)".into());
    }
    if has("tokens") && has("is_original") && has("text_ids") && has("text_mask") {
        return train_critic(args, resume, device, &run, opt, config, &fit_cfg);
    }
    if !(has("tokens") && has("targets") && has("loss_mask") && has("text_ids") && has("text_mask")) {
        return Err(format!(
            "{}: muse train knows image tokenizers (an `image` input) and masked-token models (inputs tokens, targets, loss_mask, text_ids, text_mask) and token critics (tokens, is_original, text_ids, text_mask)",
            args.model.display()
        ));
    }
    let vq_dir =
        args.tokenizer.as_ref().ok_or("a masked-token model needs --tokenizer RUN_DIR (a trained image tokenizer)")?;
    let vq = ImageTokenizer::open(vq_dir)?;
    let (codebook, grid) = vq.codebook_and_grid()?;
    let sets = token_model_sets(&args.sets, codebook, grid, vq_dir)?;
    let model = compile_model(&args.model, &sets)?;
    let text_len = config_int(&model, "text_len").ok_or("the model has no `text_len` config")? as usize;
    let text_vocab = config_int(&model, "text_vocab").ok_or("the model has no `text_vocab` config")? as usize;
    let vq_res = config_int(&vq.model, "resolution").ok_or("the image tokenizer has no `resolution` config")? as usize;
    let data = data::open(&args.data, vq_res, args.seed, args.flip)?;
    let tok_path = run.path.join("tokenizer.json");
    let text = if resume && tok_path.is_file() {
        TextTokenizer::load(&tok_path, text_len)?
    } else if let Some(p) = &args.text_tokenizer {
        TextTokenizer::load(p, text_len)?
    } else {
        TextTokenizer::train(&data.captions(), text_vocab, text_len)?
    };
    if text.vocab_size() > text_vocab {
        return Err(format!(
            "the text tokenizer has {} entries but the model's text_vocab is {text_vocab}: --set text_vocab={}",
            text.vocab_size(),
            text.vocab_size()
        ));
    }
    text.save(&tok_path)?;
    config["objective"] = json!("masked tokens");
    config["image_tokenizer"] =
        json!({ "run": vq_dir, "checkpoint": vq.checkpoint, "codebook": codebook, "grid": grid });
    run.write_config(&config)?;
    let tokens = vq.tokens(&args.data, data.as_ref(), args.samples, device)?;
    let params = initial_params(&model, args)?;
    let mut probe_batches = MaskedBatches::new(tokens.clone(), &text, codebook as i32, 0.0, args.batch, args.seed, 0)?;
    let example = probe_batches.next()?.0;
    let (mut trainer, start) = token_trainer(&model, &params, &example, opt, device, args, &run, resume)?;
    let per_item = tokens.per_item;
    let mut batches =
        MaskedBatches::new(tokens, &text, codebook as i32, args.text_dropout, args.batch, args.seed, start.data_pos)?;
    eprintln!(
        "train {} (masked tokens, codebook {codebook}, grid {grid}) from step {} to {} in {}",
        model.name,
        start.step,
        args.steps,
        run.path.display()
    );
    fit::fit(&run, &mut trainer, &mut batches, &fit_cfg(per_item), start, &mut NoHook)
}

/// The trainer of a token model (a masked-token model or a critic), with its weight average
/// when asked, and where it starts: step 0, or the run's latest checkpoint.
#[allow(clippy::too_many_arguments)]
fn token_trainer(
    model: &Model,
    params: &Tensors,
    example: &Tensors,
    opt: AdamW,
    device: &dyn Device,
    args: &TrainArgs,
    run: &RunDir,
    resume: bool,
) -> Result<(Trainer, Progress), String> {
    let options = train_options(args, &[], &[]);
    let mut trainer = Trainer::with_options(&model.graph, &model.name, params, example, opt, device, &options)
        .map_err(|e| e.to_string())?;
    if args.ema > 0.0 {
        trainer.start_ema().map_err(|e| e.to_string())?;
    }
    let start = if resume { fit::restore(run, &mut trainer, &mut NoHook)? } else { Progress { step: 0, data_pos: 0 } };
    Ok((trainer, start))
}

/// Trains a token critic on a trained generator's fills (`--generator RUN`).
fn train_critic(
    args: &TrainArgs,
    resume: bool,
    device: &dyn Device,
    run: &RunDir,
    opt: AdamW,
    mut config: Value,
    fit_cfg: &dyn Fn(usize) -> FitConfig,
) -> Result<Summary, String> {
    let gen_dir =
        args.generator.as_ref().ok_or("a token critic needs --generator RUN_DIR (a trained masked-token model)")?;
    let generator = TrainedTokenModel::open(gen_dir, device)?;
    let (codebook, grid) = (generator.codebook, generator.grid);
    let sets = token_model_sets(&args.sets, codebook, grid, &generator.vq.run)?;
    let model = compile_model(&args.model, &sets)?;
    let text_len = config_int(&model, "text_len").ok_or("the model has no `text_len` config")? as usize;
    let text_vocab = config_int(&model, "text_vocab").ok_or("the model has no `text_vocab` config")? as usize;
    // The critic reads captions exactly as the generator does.
    let text = TextTokenizer::load(&gen_dir.join("tokenizer.json"), text_len)?;
    if text.vocab_size() > text_vocab {
        return Err(format!(
            "the generator's text tokenizer has {} entries but the critic's text_vocab is {text_vocab}",
            text.vocab_size()
        ));
    }
    text.save(&run.path.join("tokenizer.json"))?;
    config["objective"] = json!("token critic");
    config["image_tokenizer"] =
        json!({ "run": generator.vq.run, "checkpoint": generator.vq.checkpoint, "codebook": codebook, "grid": grid });
    config["generator"] = json!({ "run": gen_dir, "step": generator.step });
    run.write_config(&config)?;
    let vq_res =
        config_int(&generator.vq.model, "resolution").ok_or("the image tokenizer has no `resolution` config")? as usize;
    let data = data::open(&args.data, vq_res, args.seed, args.flip)?;
    let tokens = generator.vq.tokens(&args.data, data.as_ref(), args.samples, device)?;
    let per_item = tokens.per_item;
    let params = initial_params(&model, args)?;
    let masked = MaskedBatches::new(tokens.clone(), &text, codebook as i32, 0.0, args.batch, args.seed, 0)?;
    let mut probe = CriticBatches { masked, generator, seed: args.seed };
    let example = probe.next()?.0;
    let (mut trainer, start) = token_trainer(&model, &params, &example, opt, device, args, run, resume)?;
    let masked = MaskedBatches::new(tokens, &text, codebook as i32, 0.0, args.batch, args.seed, start.data_pos)?;
    let mut batches = CriticBatches { masked, generator: probe.generator, seed: args.seed };
    eprintln!(
        "train {} (token critic of {}) from step {} to {} in {}",
        model.name,
        gen_dir.display(),
        start.step,
        args.steps,
        run.path.display()
    );
    fit::fit(run, &mut trainer, &mut batches, &fit_cfg(per_item), start, &mut NoHook)
}

/// The image tokenizer's objective, stage by stage: each stage compiles the model at its
/// resolution (the tokenizer is fully convolutional, so its parameters carry over) and
/// continues with the previous stage's parameters, AdamW moments, weight average and
/// codebook statistics.
fn train_tokenizer(
    args: &TrainArgs,
    resume: bool,
    device: &dyn Device,
    run: &RunDir,
    opt: AdamW,
    probe: &Model,
    fit_cfg: &dyn Fn(usize) -> FitConfig,
) -> Result<Summary, String> {
    let model_res = probe.graph.ty(probe.graph.inputs.iter().find(|x| x.0 == "image").expect("has").1).shape.0[1]
        .as_known()
        .ok_or("the image input needs a known resolution")? as usize;
    let stages = if args.stages.is_empty() {
        vec![Stage { resolution: model_res, until: args.steps, batch: args.batch, accumulate: args.accumulate.max(1) }]
    } else {
        args.stages.clone()
    };
    if stages.windows(2).any(|w| w[1].until <= w[0].until) {
        return Err("--stage: each stage must end at a later step than the one before".into());
    }
    if stages.last().map(|s| s.until) != Some(args.steps) {
        return Err(format!(
            "--stage: the last stage ends at step {}, but --steps is {}; make them equal",
            stages.last().map_or(0, |s| s.until),
            args.steps
        ));
    }
    let params = initial_params(probe, args)?;
    // A codebook (`embedding`) whose ids come out as `codes` gets dead-code re-seeding.
    let reseeding = probe.graph.outputs.iter().any(|(n, _)| n == "codes") && params.contains_key("embedding");
    // A discriminator inside the tokenizer (`disc.*`, the generator term) is trained by its
    // own model and optimizer from step `disc_start` on; before it the tokenizer is compiled
    // without its adversarial term (VQGAN's warm-up on reconstruction alone).
    let adversarial = probe.graph.params.iter().any(|p| p.name.starts_with("disc."));
    let discriminator = if adversarial { Some(discriminator_file(args)?) } else { None };
    let disc_start = if adversarial { config_int(probe, "disc_start").unwrap_or(0).max(0) as u64 } else { 0 };
    if adversarial && disc_start >= args.steps {
        eprintln!(
            "warning: disc_start = {disc_start} is not before the run's end ({}): no adversarial step",
            args.steps
        );
    }
    let segments = split_at(&stages, adversarial.then_some(disc_start));
    let mut reseed = reseeding.then(|| Reseed::new("embedding", params["embedding"].shape[0], 50, args.seed));
    let sets_at = |seg: &Segment| {
        let mut sets = args.sets.clone();
        sets.retain(|(k, _)| k != "resolution" && !(adversarial && !seg.adversary && k == "adversarial"));
        sets.push(("resolution".into(), seg.stage.resolution.to_string()));
        if adversarial && !seg.adversary {
            sets.push(("adversarial".into(), "0".into()));
        }
        sets
    };
    let image = |stage: &Stage| {
        let (b, r) = (stage.batch, stage.resolution);
        HostTensor::f(&[b, r, r, 3], vec![0.0; b * r * r * 3])
    };
    let trainer_at = |seg: &Segment, params: &Tensors| -> Result<Trainer, String> {
        let plain = seg.stage.resolution == model_res && seg.adversary == adversarial;
        let m = if plain { probe.clone() } else { compile_model(&args.model, &sets_at(seg))? };
        let mut outputs = vec![];
        if reseeding {
            outputs.push("codes");
        }
        if seg.adversary {
            outputs.push("recon");
        }
        let options = train_options(args, &outputs, if seg.adversary { &["disc"] } else { &[] });
        let example: Tensors = [("image".to_string(), image(&seg.stage))].into();
        let mut t = Trainer::with_options(&m.graph, &m.name, params, &example, opt.clone(), device, &options)
            .map_err(|e| e.to_string())?;
        if args.ema > 0.0 {
            t.start_ema().map_err(|e| e.to_string())?;
        }
        Ok(t)
    };
    // The discriminator's AdamW: VQGAN's betas, no weight decay, the tokenizer's schedule.
    let disc_opt = AdamW { beta1: 0.5, beta2: 0.9, weight_decay: 0.0, ..opt.clone() };
    let adversary_at = |seg: &Segment, params: &Tensors| -> Result<Option<Adversary>, String> {
        let Some(file) = discriminator.as_ref().filter(|_| seg.adversary) else { return Ok(None) };
        let d = compile_discriminator(file, &sets_at(seg))?;
        let example: Tensors =
            [("real".to_string(), image(&seg.stage)), ("fake".to_string(), image(&seg.stage))].into();
        let mine: Tensors =
            params.iter().filter(|(k, _)| k.starts_with("disc.")).map(|(k, v)| (k.clone(), v.clone())).collect();
        check_same_parameters(&d, &mine, &args.model)?;
        let options = TrainOptions { outputs: vec!["real_logits".into(), "fake_logits".into()], frozen: vec![] };
        let t = Trainer::with_options(&d.graph, &d.name, &mine, &example, disc_opt.clone(), device, &options)
            .map_err(|e| format!("{}: {e}", file.display()))?;
        Ok(Some(Adversary::new(t)))
    };
    // The segment the run is in: the first one, or where the latest checkpoint left off.
    let mut k = 0;
    let mut trainer = trainer_at(&segments[0], &params)?;
    let mut adversary = adversary_at(&segments[0], &params)?;
    let mut start = Progress { step: 0, data_pos: 0 };
    if resume {
        // The checkpoint holds the discriminator's state only once it trains.
        let at = run.latest()?.map_or(0, |(_, p)| p.step);
        k = segments.iter().position(|s| at < s.stage.until).unwrap_or(segments.len() - 1);
        let first = segments.iter().position(|s| at <= s.stage.until).unwrap_or(k);
        if first != 0 {
            trainer = trainer_at(&segments[first], &params)?;
            adversary = adversary_at(&segments[first], &params)?;
        }
        let mut hooks = (reseed, adversary);
        start = fit::restore(run, &mut trainer, &mut hooks)?;
        (reseed, adversary) = hooks;
        if k != first {
            (trainer, adversary) = next_segment(&segments[k], trainer, adversary, &trainer_at, &adversary_at)?;
        }
    }
    let mut hooks = (reseed, adversary);
    let mut summary: Option<Summary> = None;
    loop {
        let seg = segments[k];
        let stage = seg.stage;
        let data: Arc<dyn Dataset> = Arc::from(data::open(&args.data, stage.resolution, args.seed, args.flip)?);
        let loader = Loader::start(data, args.seed, start.data_pos, stage.batch, 4);
        let mut batches = ImageBatches { loader, res: stage.resolution, input: "image".into() };
        eprintln!(
            "train {} (image tokenizer{}, {r}x{r}, batch {} x {}) from step {} to {} in {}",
            probe.name,
            match (adversarial, seg.adversary) {
                (true, true) => " with a PatchGAN discriminator".to_string(),
                (true, false) => format!(", its discriminator from step {disc_start}"),
                _ => String::new(),
            },
            stage.batch,
            stage.accumulate,
            start.step,
            stage.until,
            run.path.display(),
            r = stage.resolution
        );
        let cfg = FitConfig { steps: stage.until, accumulate: stage.accumulate, batch: stage.batch, ..fit_cfg(0) };
        let from = start.step;
        let s = fit::fit(run, &mut trainer, &mut batches, &cfg, start, &mut hooks)?;
        start = Progress { step: stage.until.max(from), data_pos: s.data_pos };
        summary = Some(match summary {
            Some(first) => {
                Summary { first_loss: first.first_loss, skipped_steps: first.skipped_steps + s.skipped_steps, ..s }
            }
            None => s,
        });
        k += 1;
        if k == segments.len() {
            return summary.ok_or_else(|| "no stage ran".to_string());
        }
        let (t, a) = next_segment(&segments[k], trainer, hooks.1.take(), &trainer_at, &adversary_at)?;
        trainer = t;
        hooks.1 = a;
    }
}

/// A stretch of a tokenizer run compiled once: a stage, or the part of one before or after
/// the discriminator starts.
#[derive(Clone, Copy, Debug)]
struct Segment {
    stage: Stage,
    /// Whether the adversarial term and the discriminator's steps are on.
    adversary: bool,
}

/// `stages` as segments, the one `disc_start` falls inside split there (none: no adversary).
fn split_at(stages: &[Stage], disc_start: Option<u64>) -> Vec<Segment> {
    let mut out = Vec::new();
    let mut begin = 0;
    for &stage in stages {
        match disc_start {
            Some(d) if d > begin && d < stage.until => {
                out.push(Segment { stage: Stage { until: d, ..stage }, adversary: false });
                out.push(Segment { stage, adversary: true });
            }
            Some(d) => out.push(Segment { stage, adversary: begin >= d }),
            None => out.push(Segment { stage, adversary: false }),
        }
        begin = stage.until;
    }
    out
}

type TrainerAt<'a> = dyn Fn(&Segment, &Tensors) -> Result<Trainer, String> + 'a;
type AdversaryAt<'a> = dyn Fn(&Segment, &Tensors) -> Result<Option<Adversary>, String> + 'a;

/// The tokenizer and its discriminator compiled for `seg`, each with the parameters,
/// optimizer state and weight average of the segment before.
fn next_segment(
    seg: &Segment,
    mut prev: Trainer,
    prev_adversary: Option<Adversary>,
    trainer_at: &TrainerAt,
    adversary_at: &AdversaryAt,
) -> Result<(Trainer, Option<Adversary>), String> {
    let params = prev.params().map_err(|e| e.to_string())?;
    let trainer = carry_over(&mut prev, trainer_at(seg, &params)?)?;
    let adversary = match (prev_adversary, adversary_at(seg, &params)?) {
        (Some(mut old), Some(new)) => Some(Adversary::new(carry_over(&mut old.trainer, new.trainer)?)),
        (_, new) => new,
    };
    Ok((trainer, adversary))
}

/// The discriminator model's file: `--discriminator`, else vq_discriminator.muse beside the
/// tokenizer's.
fn discriminator_file(args: &TrainArgs) -> Result<PathBuf, String> {
    if let Some(f) = &args.discriminator {
        return Ok(f.clone());
    }
    let beside = args.model.with_file_name("vq_discriminator.muse");
    if beside.is_file() {
        return Ok(beside);
    }
    Err(format!(
        "{} has a discriminator (`disc.*` parameters) but no discriminator model was found at {}; pass --discriminator FILE (models/vq_discriminator.muse in the muse repository)",
        args.model.display(),
        beside.display()
    ))
}

/// Compiles the discriminator with the tokenizer's overrides that it has config keys for.
fn compile_discriminator(file: &Path, sets: &[(String, String)]) -> Result<Model, String> {
    let bare = compile_model(file, &[])?;
    let mine: Vec<(String, String)> =
        sets.iter().filter(|(k, _)| bare.config.iter().any(|(c, _)| c == k)).cloned().collect();
    compile_model(file, &mine)
}

/// The discriminator model's parameters must be the tokenizer's `disc.*`, name for name and
/// size for size, or its weights could not be copied in.
fn check_same_parameters(d: &Model, tokenizer: &Tensors, tokenizer_file: &Path) -> Result<(), String> {
    for p in &d.graph.params {
        let want: Vec<usize> = p.ty.shape.0.iter().filter_map(|x| x.as_known()).map(|x| x as usize).collect();
        match tokenizer.get(&p.name) {
            Some(t) if t.shape == want => {}
            Some(t) => {
                return Err(format!(
                    "the discriminator's `{}` is {want:?} but the tokenizer's ({}) is {:?}: give both the same disc_* settings",
                    p.name,
                    tokenizer_file.display(),
                    t.shape
                ))
            }
            None => {
                return Err(format!(
                    "the discriminator's `{}` is not a parameter of the tokenizer ({}): both must call patch_discriminator(...) as disc",
                    p.name,
                    tokenizer_file.display()
                ))
            }
        }
    }
    if tokenizer.len() != d.graph.params.len() {
        return Err(format!(
            "the tokenizer ({}) has {} `disc.*` parameters, the discriminator model {}",
            tokenizer_file.display(),
            tokenizer.len(),
            d.graph.params.len()
        ));
    }
    Ok(())
}

/// `next`, compiled for the next stage, with `prev`'s optimizer state and weight average.
fn carry_over(prev: &mut Trainer, mut next: Trainer) -> Result<Trainer, String> {
    let state = prev.optimizer_state().map_err(|e| e.to_string())?;
    next.set_optimizer_state(&state).map_err(|e| format!("carrying the optimizer into the next stage: {e}"))?;
    if let Some(e) = prev.ema().map_err(|e| e.to_string())? {
        next.set_ema(&e).map_err(|e| e.to_string())?;
    }
    Ok(next)
}
