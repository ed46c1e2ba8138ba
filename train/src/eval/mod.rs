//! Evaluation: caption alignment on the built-in data set, Frechet distances between
//! feature sets, and `muse eval`, which samples a trained generator at evaluation scale and
//! records every metric it can compute in the run's `eval.json`.

pub mod align;
pub mod clip;
pub mod features;
pub mod fid;
pub mod frechet;
pub mod preprocess;
pub mod table;

use crate::config::TrainArgs;
use crate::data::{self, shapes, Dataset};
use crate::error::Error;
use crate::meter::Meter;
use crate::picture::{grid, save_png, to_rgb8};
use crate::run::write_atomic;
use crate::sample::{Decoding, Sampler};
use crate::trained::Pick;
use align::{judge, Alignment};
use clip::ClipScorer;
use features::FeatureNet;
use frechet::{frechet_distance, Moments};
use muse_runtime::device::Device;
use muse_runtime::rng::mix64;
use serde_json::{json, Value};
use std::path::{Path, PathBuf};

/// Which prompts an evaluation samples.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Prompts {
    /// Captions of the run's own data set, drawn from a stream the training never read (the
    /// built-in set under another seed), with their real images as the reference.
    Data,
    /// The built-in set's held-out (colour, shape) pairs, never seen in training.
    HeldOut,
    /// One prompt per line of a file, repeated in turn until enough images are made.
    File(PathBuf),
}

impl std::str::FromStr for Prompts {
    type Err = String;
    fn from_str(s: &str) -> Result<Prompts, String> {
        Ok(match s {
            "data" => Prompts::Data,
            "held-out" => Prompts::HeldOut,
            f => Prompts::File(PathBuf::from(f)),
        })
    }
}

impl std::fmt::Display for Prompts {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Prompts::Data => write!(f, "data"),
            Prompts::HeldOut => write!(f, "held-out"),
            Prompts::File(p) => write!(f, "{}", p.display()),
        }
    }
}

/// What `muse eval` was asked for.
#[derive(Clone, Debug)]
pub struct EvalArgs {
    /// The generator's run directory (eval.json goes there).
    pub run: PathBuf,
    /// Images to generate.
    pub samples: usize,
    /// Which prompts.
    pub prompts: Prompts,
    /// How to decode (the seed fixes every image).
    pub decoding: Decoding,
    /// Images generated at once.
    pub batch: usize,
    /// The checkpoint and weights.
    pub pick: Pick,
    /// A trained classifier run whose features give a Frechet distance to real images.
    pub classifier: Option<PathBuf>,
    /// FID Inception weights (safetensors, PyTorch's names): the FID to real images.
    pub fid_weights: Option<PathBuf>,
    /// CLIP ViT-B/32 weights and CLIP's tokenizer.json: the CLIP score.
    pub clip: Option<(PathBuf, PathBuf)>,
}

/// Images in an evaluation's row of samples (the first prompts, the same for every run).
const GRID: usize = 16;

/// Seed of the built-in data set's evaluation stream, apart from any training seed.
pub fn eval_seed(train_seed: u64) -> u64 {
    mix64(train_seed ^ 0x6576_616c_7561_7465)
}

/// An evaluation's prompts, and the data set of the real images (of the same captions, but
/// for a prompt file).
type PromptSet = (Vec<String>, Option<Box<dyn Dataset>>);

/// The prompts of an evaluation, and the real images that go with them.
fn prompts(a: &EvalArgs, targs: &TrainArgs, res: usize) -> Result<PromptSet, Error> {
    let n = a.samples;
    match &a.prompts {
        Prompts::Data => {
            let d = data::open(&targs.data, res, eval_seed(targs.seed), false)?;
            let count = d.size().map_or(n, |s| s.min(n));
            let mut captions = Vec::with_capacity(count);
            for i in 0..count as u64 {
                captions.push(d.get(i)?.caption);
            }
            Ok((captions, Some(d)))
        }
        Prompts::HeldOut => {
            let d = shapes::Shapes { split: shapes::Split::HeldOut, ..shapes::Shapes::new(res, eval_seed(targs.seed)) };
            Ok(((0..n as u64).map(|i| d.sample(i).caption).collect(), Some(Box::new(d))))
        }
        Prompts::File(f) => {
            let text = std::fs::read_to_string(f).map_err(Error::io(f))?;
            let lines: Vec<String> = text.lines().map(str::trim).filter(|l| !l.is_empty()).map(String::from).collect();
            if lines.is_empty() {
                return Err(Error::Usage(format!("{}: no prompts in the file", f.display())));
            }
            // Real images for the Frechet distance: the run's data, not of these prompts.
            let d = data::open(&targs.data, res, eval_seed(targs.seed), false)?;
            Ok(((0..n).map(|i| lines[i % lines.len()].clone()).collect(), Some(d)))
        }
    }
}

/// Samples `a.samples` images with fixed seeds, scores them, and records the evaluation in
/// the run's `eval.json` (replacing an earlier one of the same checkpoint and settings);
/// returns the evaluation.
pub fn evaluate(a: &EvalArgs, device: &dyn Device) -> Result<Value, Error> {
    if a.samples == 0 || a.batch == 0 {
        return Err(Error::Usage("--samples and --batch must be at least 1".into()));
    }
    let start = std::time::Instant::now();
    let targs = TrainArgs::from_run(&a.run)?;
    let mut sampler = Sampler::open(&a.run, a.pick, None, a.decoding.clone(), device)?;
    let res = sampler.resolution;
    let (prompts, real) = prompts(a, &targs, res)?;
    let other_captions = matches!(a.prompts, Prompts::File(_));
    let mut net = match &a.classifier {
        Some(c) => {
            let net = FeatureNet::open(c, device)?;
            if net.resolution != res {
                return Err(Error::Usage(format!(
                    "--classifier {}: it takes {r}x{r} images, the generator makes {res}x{res}",
                    c.display(),
                    r = net.resolution
                )));
            }
            Some(net)
        }
        None => None,
    };
    let (mut fake_moments, mut real_moments) = net.as_ref().map(|n| (Moments::new(n.dim), Moments::new(n.dim))).unzip();
    let mut inception = a.fid_weights.as_deref().map(|w| FeatureNet::inception(w, device)).transpose()?;
    let mut clip = a.clip.as_ref().map(|(w, t)| ClipScorer::open(w, t, device)).transpose()?;
    let (mut clip_fake, mut clip_real) = (Vec::new(), Vec::new());
    let (mut fid_fake, mut fid_real) = inception.as_ref().map(|n| (Moments::new(n.dim), Moments::new(n.dim))).unzip();
    let (step, ema) = (sampler.gen.step, sampler.gen.ema);
    let tag = format!("step-{step:08}-{}", if ema { "ema" } else { "raw" });
    let dir = a.run.join("eval").join(&tag);
    std::fs::create_dir_all(&dir).map_err(Error::io(&dir))?;
    let (mut generated, mut reference) = (Alignment::default(), Alignment::default());
    let mut shown = Vec::new();
    let mut listing = String::new();
    let meter = Meter::new("eval", prompts.len());
    for (b, batch) in prompts.chunks(a.batch).enumerate() {
        let first = b * a.batch;
        let pixels = sampler.images(batch, first as u64)?;
        for (j, prompt) in batch.iter().enumerate() {
            let img = &pixels[j * res * res * 3..][..res * res * 3];
            let verdict = judge(img, res, prompt);
            generated.add(verdict.as_ref());
            if shown.len() < GRID {
                shown.push(to_rgb8(img, res));
                let said = verdict.map(|v| format!("\t{}", v.describe())).unwrap_or_default();
                listing.push_str(&format!("{}\t{prompt}{said}\n", first + j));
            }
        }
        if let Some(d) = &real {
            let mut real_pixels = Vec::with_capacity(pixels.len());
            for j in 0..batch.len() {
                let s = d.get((first + j) as u64)?;
                if !other_captions {
                    reference.add(judge(&s.image, res, &s.caption).as_ref());
                }
                real_pixels.extend(s.image);
            }
            if let (Some(net), Some(f), Some(r)) = (net.as_mut(), fake_moments.as_mut(), real_moments.as_mut()) {
                f.add(&net.features(&pixels, batch.len())?)?;
                r.add(&net.features(&real_pixels, batch.len())?)?;
            }
            if let Some(c) = clip.as_mut() {
                clip_fake.extend(c.cosines(&pixels, res, batch)?);
                if !other_captions {
                    clip_real.extend(c.cosines(&real_pixels, res, batch)?);
                }
            }
            if let (Some(net), Some(f), Some(r)) = (inception.as_mut(), fid_fake.as_mut(), fid_real.as_mut()) {
                let n = batch.len();
                f.add(&net.features(&preprocess::for_inception(&pixels, n, res), n)?)?;
                r.add(&net.features(&preprocess::for_inception(&real_pixels, n, res), n)?)?;
            }
        }
        meter.advance(batch.len());
    }
    meter.finish();
    save_png(&grid(&shown, GRID, 2), &dir.join("grid.png"))?;
    write_atomic(&dir.join("prompts.txt"), listing.as_bytes())?;
    let classifier_fd = match (&net, fake_moments, real_moments) {
        (Some(net), Some(f), Some(r)) => {
            let fd = frechet_distance(&f.gaussian()?, &r.gaussian()?)?;
            muse_compiler::note!("Frechet distance on the classifier's features: {fd:.4}");
            json!({
                "value": fd,
                "classifier": net.run.display().to_string(),
                "classifier_step": net.step,
                "dims": net.dim,
                "images": f.count(),
                "real": if other_captions { "the run's data set (other captions)" } else { "the real images of the same captions" },
                "note": "Frechet distance on muse's shapes classifier features: not comparable to an Inception FID",
            })
        }
        _ => Value::Null,
    };
    let fid = match (&inception, fid_fake, fid_real) {
        (Some(net), Some(f), Some(r)) => {
            let fid = frechet_distance(&f.gaussian()?, &r.gaussian()?)?;
            muse_compiler::note!("FID (Inception-v3 pool3, {} images each): {fid:.3}", f.count());
            json!({
                "value": fid,
                "weights": net.run.display().to_string(),
                "images": f.count(),
                "real": if other_captions { "the run's data set (other captions)" } else { "the real images of the same captions" },
                "preprocessing": "pytorch-fid's: 8-bit, bilinear to 299x299 (align_corners=False, no antialiasing), 2x-1; not clean-fid's clean mode",
                "note": "FID from few images is biased upward: compare runs at the same number of images",
            })
        }
        _ => Value::Null,
    };
    let clip_score = match &clip {
        Some(_) => {
            let (score, torchmetrics) = clip_scores(&clip_fake);
            muse_compiler::note!("CLIP score {score:.4} (torchmetrics' scale: {torchmetrics:.2})");
            json!({
                "value": score,
                "torchmetrics": torchmetrics,
                "images": clip_fake.len(),
                "real": if clip_real.is_empty() { Value::Null } else { json!(clip_scores(&clip_real).0) },
                "note": "mean cosine of CLIP ViT-B/32 image and caption embeddings, unscaled as the research log and the Muse paper; torchmetrics: mean of max(100 cos, 0)",
            })
        }
        None => Value::Null,
    };
    let d = &a.decoding;
    let evaluation = json!({
        "checkpoint_step": step,
        "weights": if ema { "ema" } else { "raw" },
        "samples": prompts.len(),
        "prompts": a.prompts.to_string(),
        "decoding": {
            "steps": d.steps, "cfg": d.cfg, "temperature": d.temperature,
            "choice_temperature": d.choice_temperature, "top_k": d.top_k, "seed": d.seed,
        },
        "alignment": if generated.judged() > 0 { generated.to_json() } else { Value::Null },
        "real_alignment": if reference.judged() > 0 { reference.to_json() } else { Value::Null },
        "classifier_fd": classifier_fd,
        "fid": fid,
        "clip_score": clip_score,
        "not_computed": {
            "fid": if a.fid_weights.is_none() { Value::from("no --fid-weights given") } else { Value::Null },
            "clip_score": if a.clip.is_none() { Value::from("no --clip-weights and --clip-tokenizer given") } else { Value::Null },
        },
        "grid": format!("eval/{tag}/grid.png"),
        "seconds": start.elapsed().as_secs_f64(),
    });
    if generated.judged() > 0 {
        muse_compiler::note!("generated: {}", generated.summary());
    }
    if reference.judged() > 0 {
        muse_compiler::note!("real images of the same captions: {}", reference.summary());
    }
    record(&a.run, &evaluation)?;
    Ok(evaluation)
}

/// The CLIP score of per-image cosines: their mean (unscaled, as the research log and the
/// Muse paper report it) and torchmetrics' mean of max(100 cos, 0).
pub fn clip_scores(cosines: &[f64]) -> (f64, f64) {
    let n = cosines.len().max(1) as f64;
    (cosines.iter().sum::<f64>() / n, cosines.iter().map(|c| (100.0 * c).max(0.0)).sum::<f64>() / n)
}

/// The evaluations recorded in a run's `eval.json` (none when there is no file).
pub fn recorded(run: &Path) -> Result<Vec<Value>, Error> {
    let p = run.join("eval.json");
    let Ok(text) = std::fs::read_to_string(&p) else { return Ok(Vec::new()) };
    let v: Value = serde_json::from_str(&text).map_err(Error::format(&p))?;
    Ok(v["evaluations"].as_array().cloned().unwrap_or_default())
}

/// Adds `evaluation` to the run's `eval.json`, replacing one of the same checkpoint, weights,
/// prompts, sample count and decoding; kept in order of step.
fn record(run: &Path, evaluation: &Value) -> Result<(), Error> {
    let same = |e: &Value| {
        ["checkpoint_step", "weights", "samples", "prompts", "decoding"].iter().all(|k| e[k] == evaluation[k])
    };
    let mut all: Vec<Value> = recorded(run)?.into_iter().filter(|e| !same(e)).collect();
    all.push(evaluation.clone());
    all.sort_by_key(|e| e["checkpoint_step"].as_u64().unwrap_or(0));
    let text = serde_json::to_string_pretty(&json!({ "evaluations": all })).expect("JSON values serialise");
    write_atomic(&run.join("eval.json"), text.as_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clip_scores_unscaled_and_as_torchmetrics() {
        let (score, torchmetrics) = clip_scores(&[0.3, -0.2, 0.25]);
        assert!((score - 0.35 / 3.0).abs() < 1e-12);
        // torchmetrics clips each image's 100 cos at 0 before the mean.
        assert!((torchmetrics - 55.0 / 3.0).abs() < 1e-9);
        assert_eq!("held-out".parse::<Prompts>(), Ok(Prompts::HeldOut));
        assert_eq!("p.txt".parse::<Prompts>(), Ok(Prompts::File("p.txt".into())));
    }
}
