//! The image tokenizer's objective: reconstruction with the VQ losses, stage by stage at
//! growing resolutions, dead codes re-seeded, and a PatchGAN discriminator with its own
//! model and optimizer from `disc_start` on.

use crate::error::Error;

use super::{compile_model, config_int, initial_params, train_options, Setup};
use crate::adversary::Adversary;
use crate::config::{Stage, TrainArgs};
use crate::data::{self, loader::Loader, Dataset};
use crate::fit::{self, Batches, FitConfig, Summary};
use crate::run::Progress;
use crate::vq::Reseed;
use muse_compiler::Model;
use muse_runtime::device::Tensors;
use muse_runtime::optim::AdamW;
use muse_runtime::train::{TrainOptions, Trainer};
use muse_runtime::HostTensor;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// The image tokenizer's objective, stage by stage: each stage compiles the model at its
/// resolution (the tokenizer is fully convolutional, so its parameters carry over) and
/// continues with the previous stage's parameters, AdamW moments, weight average and
/// codebook statistics.
pub(super) fn train(s: &Setup, probe: &Model) -> Result<Summary, Error> {
    let Setup { args, resume, device, run, .. } = *s;
    let (opt, fit_cfg) = (s.opt(), |tokens_per_item| s.fit(tokens_per_item));
    let model_res = probe.graph.ty(probe.graph.inputs.iter().find(|x| x.0 == "image").expect("has").1).shape.0[1]
        .as_known()
        .ok_or_else(|| Error::Usage("the image input needs a known resolution".into()))? as usize;
    let stages = if args.stages.is_empty() {
        vec![Stage { resolution: model_res, until: args.steps, batch: args.batch, accumulate: args.accumulate.max(1) }]
    } else {
        args.stages.clone()
    };
    let n = s.ranks.size();
    if let Some(bad) = stages.iter().find(|st| !st.accumulate.is_multiple_of(n)) {
        return Err(Error::Usage(format!(
            "--stage {}:{}: {n} ranks share each step's {} micro-batches: give a multiple of {n}",
            bad.resolution, bad.until, bad.accumulate
        )));
    }
    if stages.windows(2).any(|w| w[1].until <= w[0].until) {
        return Err(Error::Usage("--stage: each stage must end at a later step than the one before".into()));
    }
    if stages.last().map(|s| s.until) != Some(args.steps) {
        return Err(Error::Usage(format!(
            "--stage: the last stage ends at step {}, but --steps is {}; make them equal",
            stages.last().map_or(0, |s| s.until),
            args.steps
        )));
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
        muse_compiler::note!(
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
    let trainer_at = |seg: &Segment, params: &Tensors| -> Result<Trainer, Error> {
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
        let mut t = Trainer::with_options(&m.graph, &m.name, params, &example, opt.clone(), device, &options)?;
        let (wire, bucket) = args.reduction();
        t.set_collective(s.ranks.clone(), wire, bucket);
        if args.ema > 0.0 {
            t.start_ema()?;
        }
        Ok(t)
    };
    // The discriminator's AdamW: VQGAN's betas, no weight decay, the tokenizer's schedule.
    let disc_opt = AdamW { beta1: 0.5, beta2: 0.9, weight_decay: 0.0, ..opt.clone() };
    let adversary_at = |seg: &Segment, params: &Tensors| -> Result<Option<Adversary>, Error> {
        let Some(file) = discriminator.as_ref().filter(|_| seg.adversary) else { return Ok(None) };
        let d = compile_discriminator(file, &sets_at(seg))?;
        let example: Tensors =
            [("real".to_string(), image(&seg.stage)), ("fake".to_string(), image(&seg.stage))].into();
        let mine: Tensors =
            params.iter().filter(|(k, _)| k.starts_with("disc.")).map(|(k, v)| (k.clone(), v.clone())).collect();
        check_same_parameters(&d, &mine, &args.model)?;
        let options = TrainOptions { outputs: vec!["real_logits".into(), "fake_logits".into()], frozen: vec![] };
        let t = Trainer::with_options(&d.graph, &d.name, &mine, &example, disc_opt.clone(), device, &options)
            .map_err(|e| Error::Usage(format!("{}: {e}", file.display())))?;
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
        muse_compiler::note!(
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
            Some(first) => Summary {
                first_loss: first.first_loss,
                skipped_steps: first.skipped_steps + s.skipped_steps,
                unreadable: first.unreadable + s.unreadable,
                ..s
            },
            None => s,
        });
        k += 1;
        if k == segments.len() {
            return summary.ok_or_else(|| Error::Usage("no stage ran".into()));
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

type TrainerAt<'a> = dyn Fn(&Segment, &Tensors) -> Result<Trainer, Error> + 'a;

type AdversaryAt<'a> = dyn Fn(&Segment, &Tensors) -> Result<Option<Adversary>, Error> + 'a;

/// The tokenizer and its discriminator compiled for `seg`, each with the parameters,
/// optimizer state and weight average of the segment before.
fn next_segment(
    seg: &Segment,
    mut prev: Trainer,
    prev_adversary: Option<Adversary>,
    trainer_at: &TrainerAt,
    adversary_at: &AdversaryAt,
) -> Result<(Trainer, Option<Adversary>), Error> {
    let params = prev.params()?;
    let trainer = carry_over(&mut prev, trainer_at(seg, &params)?)?;
    let adversary = match (prev_adversary, adversary_at(seg, &params)?) {
        (Some(mut old), Some(new)) => Some(Adversary::new(carry_over(&mut old.trainer, new.trainer)?)),
        (_, new) => new,
    };
    Ok((trainer, adversary))
}

/// The discriminator model's file: `--discriminator`, else vq_discriminator.muse beside the
/// tokenizer's.
fn discriminator_file(args: &TrainArgs) -> Result<PathBuf, Error> {
    if let Some(f) = &args.discriminator {
        return Ok(f.clone());
    }
    let beside = args.model.with_file_name("vq_discriminator.muse");
    if beside.is_file() {
        return Ok(beside);
    }
    Err(Error::Usage(format!(
        "{} has a discriminator (`disc.*` parameters) but no discriminator model was found at {}; pass --discriminator FILE (models/vq_discriminator.muse in the muse repository)",
        args.model.display(),
        beside.display()
    )))
}

/// Compiles the discriminator with the tokenizer's overrides that it has config keys for.
fn compile_discriminator(file: &Path, sets: &[(String, String)]) -> Result<Model, Error> {
    let bare = compile_model(file, &[])?;
    let mine: Vec<(String, String)> =
        sets.iter().filter(|(k, _)| bare.config.iter().any(|(c, _)| c == k)).cloned().collect();
    compile_model(file, &mine)
}

/// The discriminator model's parameters must be the tokenizer's `disc.*`, name for name and
/// size for size, or its weights could not be copied in.
fn check_same_parameters(d: &Model, tokenizer: &Tensors, tokenizer_file: &Path) -> Result<(), Error> {
    for p in &d.graph.params {
        let want: Vec<usize> = p.ty.shape.0.iter().filter_map(|x| x.as_known()).map(|x| x as usize).collect();
        match tokenizer.get(&p.name) {
            Some(t) if t.shape == want => {}
            Some(t) => {
                return Err(Error::Usage(format!(
                    "the discriminator's `{}` is {want:?} but the tokenizer's ({}) is {:?}: give both the same disc_* settings",
                    p.name,
                    tokenizer_file.display(),
                    t.shape
                )))
            }
            None => {
                return Err(Error::Usage(format!(
                    "the discriminator's `{}` is not a parameter of the tokenizer ({}): both must call patch_discriminator(...) as disc",
                    p.name,
                    tokenizer_file.display()
                )))
            }
        }
    }
    if tokenizer.len() != d.graph.params.len() {
        return Err(Error::Usage(format!(
            "the tokenizer ({}) has {} `disc.*` parameters, the discriminator model {}",
            tokenizer_file.display(),
            tokenizer.len(),
            d.graph.params.len()
        )));
    }
    Ok(())
}

/// `next`, compiled for the next stage, with `prev`'s optimizer state and weight average.
fn carry_over(prev: &mut Trainer, mut next: Trainer) -> Result<Trainer, Error> {
    let state = prev.optimizer_state()?;
    next.set_optimizer_state(&state)
        .map_err(|e| Error::Usage(format!("carrying the optimizer into the next stage: {e}")))?;
    if let Some(e) = prev.ema()? {
        next.set_ema(&e)?;
    }
    Ok(next)
}

/// Image batches for an image tokenizer, decoded ahead on a background thread.
struct ImageBatches {
    loader: Loader,
    res: usize,
    input: String,
}

impl Batches for ImageBatches {
    fn next(&mut self) -> Result<(Tensors, u64), Error> {
        let b = self
            .loader
            .next_batch()
            .ok_or_else(|| Error::Usage("the data loader stopped: no image can be read".into()))?;
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
    fn unreadable(&self) -> Vec<String> {
        self.loader.unreadable()
    }
}
