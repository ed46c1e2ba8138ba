//! MaskGIT decoding with classifier-free guidance (SPEC-models.md section 3): start from all
//! MASK, and at each of T steps sample every masked token, keep the most confident and
//! re-mask the rest on a cosine schedule; then the image tokenizer's decoder turns the ids
//! into pixels. Every random draw is keyed by the seed, so a seed gives the same images.

use crate::error::Error;

use crate::eval::align::{judge, Alignment};
use crate::picture::{grid, save_png, to_rgb8};
use crate::trained::{config_int, TrainedTokenModel};
use muse_compiler::{compile_source, Model, Options};
use muse_runtime::device::{Device, Tensors};
use muse_runtime::rng::{mix64, uniform};
use muse_runtime::HostTensor;
use std::path::PathBuf;

/// What `muse sample` was asked for.
#[derive(Clone, Debug)]
pub struct SampleArgs {
    /// The masked-token model's run directory.
    pub run: PathBuf,
    /// One image per prompt.
    pub prompts: Vec<String>,
    /// Decoding steps T.
    pub steps: usize,
    /// Guidance scale g (reached at the last step; it ramps up linearly).
    pub cfg: f64,
    /// Sampling temperature at the first step (annealed to 0).
    pub temperature: f64,
    /// Scale of the Gumbel noise on confidences when choosing what to re-mask (annealed).
    pub choice_temperature: f64,
    /// Seed.
    pub seed: u64,
    /// Output folder.
    pub out: PathBuf,
    /// A trained token critic's run: its scores choose what to re-mask.
    pub critic: Option<PathBuf>,
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

/// Samples one image per prompt; writes `NNN.png`, `grid.png` and `prompts.txt` into `out`.
pub fn sample(a: &SampleArgs, device: &dyn Device) -> Result<Vec<PathBuf>, Error> {
    if a.prompts.is_empty() {
        return Err(Error::Usage("no prompt: give --prompt TEXT or --prompts FILE".into()));
    }
    if a.steps == 0 {
        return Err(Error::Usage("--steps must be at least 1".into()));
    }
    let gen = TrainedTokenModel::open(&a.run, device)?;
    let critic = match &a.critic {
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
    let (codebook, g, text, vq, progress_step) = (gen.codebook, gen.grid, &gen.text, &gen.vq, gen.step);
    let text_len = text.len;
    let (p, n, k) = (a.prompts.len(), (g * g) as usize, codebook as usize);
    let mask_id = codebook as i32;
    // Rows 0..p are conditioned on the prompts, rows p..2p on the null caption.
    let mut text_ids = Vec::new();
    let mut text_mask = Vec::new();
    for prompt in &a.prompts {
        let (i, m) = text.encode(prompt)?;
        text_ids.extend(i);
        text_mask.extend(m);
    }
    for _ in 0..p {
        let (i, m) = text.null();
        text_ids.extend(i);
        text_mask.extend(m);
    }
    let mut x = vec![mask_id; p * n];
    for s in 0..a.steps {
        let frac = (s + 1) as f64 / a.steps as f64;
        let mut inputs = Tensors::new();
        let both: Vec<i32> = x.iter().chain(x.iter()).copied().collect();
        inputs.insert("tokens".into(), HostTensor::i(&[2 * p, n], both));
        inputs.insert("targets".into(), HostTensor::i(&[2 * p, n], vec![0; 2 * p * n]));
        inputs.insert("loss_mask".into(), HostTensor::b(&[2 * p, n], vec![false; 2 * p * n]));
        inputs.insert("text_ids".into(), HostTensor::i(&[2 * p, text_len], text_ids.clone()));
        inputs.insert("text_mask".into(), HostTensor::b(&[2 * p, text_len], text_mask.clone()));
        let logits = gen.logits(&inputs, a.seed)?;
        let scale = a.cfg * frac;
        let tau = a.temperature * (1.0 - frac);
        let key = mix64(a.seed ^ mix64(s as u64 + 1));
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
                let guided: Vec<f64> = c.iter().zip(u).map(|(c, u)| u + scale * (c - u)).collect();
                let max = guided.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
                let lse = max + guided.iter().map(|v| (v - max).exp()).sum::<f64>().ln();
                let pick = sample_token(&guided, tau, key, at as u64);
                sampled[at] = pick as i32;
                confidence[at] = guided[pick] - lse;
            }
        }
        // With a critic, its logits (high: the token looks original) rank every position,
        // fixed ones included, so tokens accepted earlier can be masked again.
        if let Some(c) = &critic {
            let filled: Vec<i32> =
                x.iter().zip(&sampled).map(|(&xi, &si)| if xi == mask_id { si } else { xi }).collect();
            let (cids, cmask) = critic_text(c, &a.prompts)?;
            let mut ci = Tensors::new();
            ci.insert("tokens".into(), HostTensor::i(&[p, n], filled));
            ci.insert("text_ids".into(), HostTensor::i(&[p, c.text.len], cids));
            ci.insert("text_mask".into(), HostTensor::b(&[p, c.text.len], cmask));
            let scores = c.logits(&ci, a.seed)?;
            confidence.copy_from_slice(&scores[..p * n]);
            for (xi, si) in x.iter_mut().zip(&sampled) {
                if *xi == mask_id {
                    *xi = *si;
                }
            }
        }
        if s + 1 == a.steps {
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
            let unknown = if critic.is_some() { n } else { (0..n).filter(|&i| x[row * n + i] == mask_id).count() };
            let target = ((n as f64) * (std::f64::consts::FRAC_PI_2 * frac).cos()).floor() as usize;
            let remask = target.min(unknown.saturating_sub(1)).max(1);
            let mut order: Vec<(f64, usize)> = (0..n)
                .map(|i| {
                    let at = row * n + i;
                    let noise = a.choice_temperature * (1.0 - frac) * gumbel(noise_key, at as u64);
                    (confidence[at] + noise, i)
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
    // Pixels from ids.
    let dec = decoder(&vq.model)?;
    let image = dec.graph.outputs[0].1;
    let mut dprog = device.compile(&dec.graph, &[image])?;
    let mut dinputs = Tensors::new();
    dinputs.insert("ids".into(), HostTensor::i(&[p, g as usize, g as usize], x.clone()));
    let dparams: Tensors = dec
        .graph
        .params
        .iter()
        .map(|q| {
            vq.params
                .get(&q.name)
                .map(|t| (q.name.clone(), t.clone()))
                .ok_or_else(|| Error::Usage(format!("tokenizer lacks `{}`", q.name)))
        })
        .collect::<Result<_, _>>()?;
    let pixels = dprog.run(&dinputs, &dparams, 0)?;
    let res = pixels[&image].shape[1];
    let flat: Vec<f32> = pixels[&image].to_f64().iter().map(|&v| v as f32).collect();
    std::fs::create_dir_all(&a.out).map_err(|e| Error::Usage(format!("{}: {e}", a.out.display())))?;
    let mut files = Vec::new();
    let mut imgs = Vec::new();
    let mut listing = format!(
        "# {} (checkpoint step {}), seed {}, {} steps, cfg {}, temperature {}\n",
        a.run.display(),
        progress_step,
        a.seed,
        a.steps,
        a.cfg,
        a.temperature
    );
    // Prompts in the built-in data set's caption forms are judged against the pixels.
    let mut alignment = Alignment::default();
    for (i, prompt) in a.prompts.iter().enumerate() {
        let pixels = &flat[i * res * res * 3..][..res * res * 3];
        let img = to_rgb8(pixels, res);
        let f = a.out.join(format!("{i:03}.png"));
        save_png(&img, &f)?;
        let verdict = judge(pixels, res, prompt);
        alignment.add(verdict.as_ref());
        let said = verdict.map(|v| format!("\t{}", v.describe())).unwrap_or_default();
        listing.push_str(&format!("{i:03}.png\t{prompt}{said}\n"));
        files.push(f);
        imgs.push(img);
    }
    if alignment.judged() > 0 {
        let summary = alignment.summary();
        eprintln!("{summary}");
        listing.push_str(&format!("# {summary}\n"));
    }
    let cols = (p as f64).sqrt().ceil() as usize;
    let gpath = a.out.join("grid.png");
    save_png(&grid(&imgs, cols, 2), &gpath)?;
    crate::run::write_atomic(&a.out.join("prompts.txt"), listing.as_bytes())?;
    files.push(gpath);
    Ok(files)
}
