//! MaskGIT decoding with classifier-free guidance (SPEC-models.md section 3): start from all
//! MASK, and at each of T steps sample every masked token, keep the most confident and
//! re-mask the rest on a cosine schedule; then the image tokenizer's decoder turns the ids
//! into pixels. Every random draw is keyed by the seed, so a seed gives the same images.

use crate::error::Error;

use crate::eval::align::{judge, Alignment};
use crate::meter::Meter;
use crate::picture::{grid, save_png, to_rgb8};
use crate::trained::{config_int, Pick, TrainedTokenModel};
use muse_compiler::ir::NodeIndex;
use muse_compiler::{compile_source, Model, Options};
use muse_runtime::device::{Device, Program, Tensors};
use muse_runtime::rng::{mix64, uniform};
use muse_runtime::HostTensor;
use std::path::{Path, PathBuf};

/// How MaskGIT decodes: steps, guidance, temperatures, top-k and the seed.
#[derive(Clone, Debug, PartialEq)]
pub struct Decoding {
    /// Decoding steps T.
    pub steps: usize,
    /// Guidance scale g (reached at the last step; it ramps up linearly).
    pub cfg: f64,
    /// Sampling temperature at the first step (annealed to 0).
    pub temperature: f64,
    /// Scale of the Gumbel noise on confidences when choosing what to re-mask (annealed).
    pub choice_temperature: f64,
    /// Draw each token from the `top_k` most likely only (0: from all).
    pub top_k: usize,
    /// Seed: image `i` of a run of prompts is a function of (seed, i) alone, whatever the
    /// batch size.
    pub seed: u64,
}

impl Default for Decoding {
    fn default() -> Decoding {
        Decoding { steps: 12, cfg: 3.0, temperature: 1.0, choice_temperature: 4.5, top_k: 0, seed: 0 }
    }
}

impl Decoding {
    /// Refuses settings that cannot decode.
    pub fn check(&self) -> Result<(), Error> {
        if self.steps == 0 {
            return Err(Error::Usage("--steps must be at least 1".into()));
        }
        for (name, v) in [
            ("--cfg", self.cfg),
            ("--temperature", self.temperature),
            ("--choice-temperature", self.choice_temperature),
        ] {
            if !v.is_finite() || v < 0.0 {
                return Err(Error::Usage(format!("{name} must be a finite number >= 0, not {v}")));
            }
        }
        Ok(())
    }
}

/// What `muse sample` was asked for.
#[derive(Clone, Debug)]
pub struct SampleArgs {
    /// The masked-token model's run directory.
    pub run: PathBuf,
    /// One image per prompt.
    pub prompts: Vec<String>,
    /// How to decode.
    pub decoding: Decoding,
    /// Output folder.
    pub out: PathBuf,
    /// A trained token critic's run: its scores choose what to re-mask.
    pub critic: Option<PathBuf>,
    /// Images decoded at once.
    pub batch: usize,
    /// The generator's checkpoint and weights.
    pub pick: Pick,
}

/// The prompts as the critic's text tokenizer encodes them.
fn critic_text(c: &TrainedTokenModel, prompts: &[String]) -> Result<(Vec<i32>, Vec<bool>), Error> {
    let (mut ids, mut mask) = (Vec::new(), Vec::new());
    for prompt in prompts {
        let (i, m) = c.text.encode(prompt)?;
        ids.extend(i);
        mask.extend(m);
    }
    Ok((ids, mask))
}

/// The decoder of an image tokenizer as a model of its own: ids -> pixels, sharing the
/// tokenizer's parameter names (`embedding`, `vq_decoder.*`).
fn decoder(vq: &Model) -> Result<Model, Error> {
    let v = |k: &str| config_int(vq, k);
    let (res, levels) = (v("resolution")?, v("levels")?);
    let src = format!(
        "import \"std/vq.muse\"\nmodel vq_decode {{\n  input ids: i32[B, {g}, {g}]\n  param embedding: [{k}, {d}] ~ zeros\n  \
         output image = vq_decoder(take(embedding, ids), {c}, {levels}, {groups})\n}}\n",
        g = res >> levels,
        k = v("codebook")?,
        d = v("code_dim")?,
        c = v("channels")?,
        groups = v("groups")?,
    );
    let c = compile_source("vq_decode.muse", &src, &Options::default());
    c.result.map(|mut m| m.remove(0)).map_err(|d| Error::Model(d.render(&c.sources)))
}

/// A Gumbel(0, 1) draw.
fn gumbel(key: u64, i: u64) -> f64 {
    -(-(uniform(key, i).max(1e-20)).ln()).ln()
}

/// A token drawn from `softmax(logits / tau)` by the Gumbel-max trick, keyed by (`key`,
/// `counter`); the most likely token at `tau = 0`.
pub fn sample_token(logits: &[f64], tau: f64, key: u64, counter: u64) -> usize {
    let k = logits.len() as u64;
    let score = |t: usize| if tau > 0.0 { logits[t] / tau + gumbel(key, counter * k + t as u64) } else { logits[t] };
    (0..logits.len()).max_by(|&i, &j| score(i).total_cmp(&score(j))).expect("a non-empty vocabulary")
}

/// A generator ready to decode prompts into pixels: the generator (and critic) with their
/// compiled logits, and the image tokenizer's decoder compiled once.
pub struct Sampler {
    /// The generator.
    pub gen: TrainedTokenModel,
    critic: Option<TrainedTokenModel>,
    decoder: Box<dyn Program>,
    decoder_params: Tensors,
    image: NodeIndex,
    /// Side of the decoded images.
    pub resolution: usize,
    /// How it decodes.
    pub decoding: Decoding,
    /// Advanced once per decoding step (hidden unless asked for).
    progress: Meter,
}

impl Sampler {
    /// Opens the generator run `run` at `pick` (and the critic run, if any) on `device`.
    pub fn open(
        run: &Path,
        pick: Pick,
        critic: Option<&Path>,
        decoding: Decoding,
        device: &dyn Device,
    ) -> Result<Sampler, Error> {
        decoding.check()?;
        let gen = TrainedTokenModel::open_at(run, pick, device)?;
        let critic = match critic {
            Some(dir) => {
                let c = TrainedTokenModel::open(dir, device)?;
                if (c.codebook, c.grid) != (gen.codebook, gen.grid) {
                    return Err(Error::Usage(format!(
                        "the critic {} models other tokens than the generator",
                        dir.display()
                    )));
                }
                Some(c)
            }
            None => None,
        };
        let dec = decoder(&gen.vq.model)?;
        let image = dec.graph.outputs[0].1;
        let decoder = device.compile(&dec.graph, &[image])?;
        let decoder_params: Tensors = dec
            .graph
            .params
            .iter()
            .map(|q| {
                gen.vq
                    .params
                    .get(&q.name)
                    .map(|t| (q.name.clone(), t.clone()))
                    .ok_or_else(|| Error::Usage(format!("tokenizer lacks `{}`", q.name)))
            })
            .collect::<Result<_, _>>()?;
        let resolution = (gen.grid << config_int(&gen.vq.model, "levels")?) as usize;
        Ok(Sampler { gen, critic, decoder, decoder_params, image, resolution, decoding, progress: Meter::hidden() })
    }

    /// Shows a progress bar over `total` decoding steps (of every batch) on a terminal: a run
    /// of many steps moves it step by step, not only when a batch is done.
    pub fn show_progress(&mut self, what: &str, total: usize) {
        self.progress = Meter::new(what, total);
    }

    /// Removes the progress bar.
    pub fn finish_progress(&self) {
        self.progress.finish();
    }

    /// Token ids for `prompts`, image `first + i` for prompt `i` (the seed's draws for an
    /// image depend on its index only).
    pub fn tokens(&self, prompts: &[String], first: u64) -> Result<Vec<i32>, Error> {
        let (gen, d) = (&self.gen, &self.decoding);
        let (codebook, g, text) = (gen.codebook, gen.grid, &gen.text);
        let text_len = text.len;
        let (p, n, k) = (prompts.len(), (g * g) as usize, codebook as usize);
        let mask_id = codebook as i32;
        // Rows 0..p are conditioned on the prompts, rows p..2p on the null caption.
        let mut text_ids = Vec::new();
        let mut text_mask = Vec::new();
        for prompt in prompts {
            let (i, m) = text.encode(prompt)?;
            text_ids.extend(i);
            text_mask.extend(m);
        }
        for _ in 0..p {
            let (i, m) = text.null();
            text_ids.extend(i);
            text_mask.extend(m);
        }
        // Each image's draws are counted from its index in the whole run.
        let counter = |row: usize, pos: usize| (first + row as u64) * n as u64 + pos as u64;
        let mut x = vec![mask_id; p * n];
        for s in 0..d.steps {
            self.progress.advance(1);
            let frac = (s + 1) as f64 / d.steps as f64;
            let mut inputs = Tensors::new();
            let both: Vec<i32> = x.iter().chain(x.iter()).copied().collect();
            inputs.insert("tokens".into(), HostTensor::i(&[2 * p, n], both));
            inputs.insert("text_ids".into(), HostTensor::i(&[2 * p, text_len], text_ids.clone()));
            inputs.insert("text_mask".into(), HostTensor::b(&[2 * p, text_len], text_mask.clone()));
            let logits = gen.logits(&inputs, d.seed)?;
            let scale = d.cfg * frac;
            let tau = d.temperature * (1.0 - frac);
            let key = mix64(d.seed ^ mix64(s as u64 + 1));
            let mut sampled = vec![0i32; p * n];
            let mut confidence = vec![f64::INFINITY; p * n];
            for row in 0..p {
                for pos in 0..n {
                    let at = row * n + pos;
                    if x[at] != mask_id {
                        continue;
                    }
                    let c = &logits[(row * n + pos) * k..][..k];
                    let u = &logits[((p + row) * n + pos) * k..][..k];
                    let mut guided: Vec<f64> = c.iter().zip(u).map(|(c, u)| u + scale * (c - u)).collect();
                    let max = guided.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
                    let lse = max + guided.iter().map(|v| (v - max).exp()).sum::<f64>().ln();
                    if d.top_k > 0 && d.top_k < k {
                        keep_top_k(&mut guided, d.top_k);
                    }
                    let pick = sample_token(&guided, tau, key, counter(row, pos));
                    sampled[at] = pick as i32;
                    confidence[at] = guided[pick] - lse;
                }
            }
            // With a critic, its logits (high: the token looks original) rank every position,
            // fixed ones included, so tokens accepted earlier can be masked again.
            if let Some(c) = &self.critic {
                let filled: Vec<i32> =
                    x.iter().zip(&sampled).map(|(&xi, &si)| if xi == mask_id { si } else { xi }).collect();
                let (cids, cmask) = critic_text(c, prompts)?;
                let mut ci = Tensors::new();
                ci.insert("tokens".into(), HostTensor::i(&[p, n], filled));
                ci.insert("text_ids".into(), HostTensor::i(&[p, c.text.len], cids));
                ci.insert("text_mask".into(), HostTensor::b(&[p, c.text.len], cmask));
                let scores = c.logits(&ci, d.seed)?;
                confidence.copy_from_slice(&scores[..p * n]);
                for (xi, si) in x.iter_mut().zip(&sampled) {
                    if *xi == mask_id {
                        *xi = *si;
                    }
                }
            }
            if s + 1 == d.steps {
                for (xi, si) in x.iter_mut().zip(&sampled) {
                    if *xi == mask_id {
                        *xi = *si;
                    }
                }
                break;
            }
            // Re-mask the least confident of each image (noise annealed), keep the rest.
            let noise_key = mix64(key ^ 0x006e_6f69_7365);
            for row in 0..p {
                let unknown =
                    if self.critic.is_some() { n } else { (0..n).filter(|&i| x[row * n + i] == mask_id).count() };
                let target = ((n as f64) * (std::f64::consts::FRAC_PI_2 * frac).cos()).floor() as usize;
                let remask = target.min(unknown.saturating_sub(1)).max(1);
                let mut order: Vec<(f64, usize)> = (0..n)
                    .map(|i| {
                        let noise = d.choice_temperature * (1.0 - frac) * gumbel(noise_key, counter(row, i));
                        (confidence[row * n + i] + noise, i)
                    })
                    .collect();
                order.sort_by(|a, b| a.0.total_cmp(&b.0));
                for i in 0..n {
                    let at = row * n + i;
                    if x[at] == mask_id {
                        x[at] = sampled[at];
                    }
                }
                for &(_, i) in order.iter().take(remask) {
                    x[row * n + i] = mask_id;
                }
            }
        }
        Ok(x)
    }

    /// Pixels (in -1..1, channels last) of images `first..first + prompts.len()` of a run of
    /// prompts.
    pub fn images(&mut self, prompts: &[String], first: u64) -> Result<Vec<f32>, Error> {
        let ids = self.tokens(prompts, first)?;
        let g = self.gen.grid as usize;
        let inputs: Tensors = [("ids".to_string(), HostTensor::i(&[prompts.len(), g, g], ids))].into();
        let pixels = self.decoder.run(&inputs, &self.decoder_params, 0)?;
        Ok(pixels[&self.image].to_f64().iter().map(|&v| v as f32).collect())
    }
}

/// Sets every logit below the `k` largest to minus infinity.
fn keep_top_k(logits: &mut [f64], k: usize) {
    let mut sorted = logits.to_vec();
    sorted.sort_by(|a, b| b.total_cmp(a));
    let threshold = sorted[k - 1];
    let mut kept = 0;
    for v in logits.iter_mut() {
        // Ties at the threshold: the first ones count, so exactly k stay.
        if *v > threshold || (*v == threshold && kept < k) {
            kept += 1;
        } else {
            *v = f64::NEG_INFINITY;
        }
    }
}

/// Grids hold at most this many images (a run of thousands is written image by image).
const GRID_LIMIT: usize = 256;

/// Samples one image per prompt in batches; writes `NNN.png`, `grid.png` (of the first
/// images) and `prompts.txt` (each prompt with its judgement) into `out`.
pub fn sample(a: &SampleArgs, device: &dyn Device) -> Result<Vec<PathBuf>, Error> {
    if a.prompts.is_empty() {
        return Err(Error::Usage("no prompt: give --prompt TEXT or --prompts FILE".into()));
    }
    if a.batch == 0 {
        return Err(Error::Usage("--batch must be at least 1".into()));
    }
    let mut sampler = Sampler::open(&a.run, a.pick, a.critic.as_deref(), a.decoding.clone(), device)?;
    let res = sampler.resolution;
    std::fs::create_dir_all(&a.out).map_err(|e| Error::Usage(format!("{}: {e}", a.out.display())))?;
    let d = &a.decoding;
    let mut listing = format!(
        "# {} (checkpoint step {}, {} weights), seed {}, {} steps, cfg {}, temperature {}{}\n",
        a.run.display(),
        sampler.gen.step,
        if sampler.gen.ema { "EMA" } else { "raw" },
        d.seed,
        d.steps,
        d.cfg,
        d.temperature,
        if d.top_k > 0 { format!(", top-k {}", d.top_k) } else { String::new() }
    );
    let width = if a.prompts.len() > 1000 { 5 } else { 3 };
    let mut files = Vec::new();
    let mut imgs = Vec::new();
    // Prompts in the built-in data set's caption forms are judged against the pixels.
    let mut alignment = Alignment::default();
    sampler.show_progress("sample", a.prompts.len().div_ceil(a.batch) * d.steps);
    for (b, batch) in a.prompts.chunks(a.batch).enumerate() {
        let first = b * a.batch;
        let flat = sampler.images(batch, first as u64)?;
        for (j, prompt) in batch.iter().enumerate() {
            let i = first + j;
            let pixels = &flat[j * res * res * 3..][..res * res * 3];
            let img = to_rgb8(pixels, res);
            let f = a.out.join(format!("{i:0width$}.png"));
            save_png(&img, &f)?;
            let verdict = judge(pixels, res, prompt);
            alignment.add(verdict.as_ref());
            let said = verdict.map(|v| format!("\t{}", v.describe())).unwrap_or_default();
            listing.push_str(&format!("{i:0width$}.png\t{prompt}{said}\n"));
            files.push(f);
            if imgs.len() < GRID_LIMIT {
                imgs.push(img);
            }
        }
    }
    sampler.finish_progress();
    if alignment.judged() > 0 {
        let summary = alignment.summary();
        muse_compiler::note!("{summary}");
        listing.push_str(&format!("# {summary}\n"));
    }
    let cols = (imgs.len() as f64).sqrt().ceil() as usize;
    let gpath = a.out.join("grid.png");
    save_png(&grid(&imgs, cols, 2), &gpath)?;
    crate::run::write_atomic(&a.out.join("prompts.txt"), listing.as_bytes())?;
    files.push(gpath);
    Ok(files)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn top_k_keeps_exactly_the_k_largest() {
        let mut l = vec![0.5, 2.0, -1.0, 2.0, 1.0, 0.5];
        keep_top_k(&mut l, 3);
        assert_eq!(l, vec![f64::NEG_INFINITY, 2.0, f64::NEG_INFINITY, 2.0, 1.0, f64::NEG_INFINITY]);
        let mut ties = vec![1.0; 5];
        keep_top_k(&mut ties, 2);
        assert_eq!(ties.iter().filter(|v| v.is_finite()).count(), 2);
        // Drawn at a high temperature, only the kept ones ever come out.
        let logits: Vec<f64> = (0..20).map(|i| (i as f64 * 0.37).sin()).collect();
        let mut kept = logits.clone();
        keep_top_k(&mut kept, 4);
        let mut best: Vec<usize> = (0..20).collect();
        best.sort_by(|&a, &b| logits[b].total_cmp(&logits[a]));
        for c in 0..500 {
            assert!(best[..4].contains(&sample_token(&kept, 50.0, 9, c)));
        }
    }

    #[test]
    fn decoding_settings_that_cannot_decode_are_refused() {
        assert!(Decoding::default().check().is_ok());
        for bad in [
            Decoding { steps: 0, ..Decoding::default() },
            Decoding { cfg: f64::NAN, ..Decoding::default() },
            Decoding { temperature: -1.0, ..Decoding::default() },
        ] {
            assert!(bad.check().is_err(), "{bad:?}");
        }
    }
}
