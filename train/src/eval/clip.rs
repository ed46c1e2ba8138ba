//! The CLIP score: CLIP ViT-B/32 (models/clip_vit_b32.muse, built into the binary) with
//! imported weights, CLIP's BPE tokenizer from a `tokenizer.json`, and CLIP's image
//! preprocessing as OpenAI's CLIP and Hugging Face's CLIPImageProcessorPil do it: the 8-bit
//! image resized so its shorter side is 224 with PIL's bicubic filter (bit for bit),
//! centre-cropped to 224x224, scaled to 0..1 and normalised by CLIP's mean and std. The
//! score is the mean cosine of image and caption embeddings, reported unscaled (as the
//! research log and the Muse paper) and as torchmetrics does (mean of max(100 cos, 0)).

use crate::error::{named, Error};
use muse_compiler::ir::NodeIndex;
use muse_compiler::{compile_source, Options};
use muse_runtime::device::{Device, Program, Tensors};
use muse_runtime::HostTensor;
use std::path::Path;
use tokenizers::Tokenizer;

/// CLIP ViT-B/32 in `.muse`.
pub const CLIP_SOURCE: &str = include_str!("../../../models/clip_vit_b32.muse");
/// Side of CLIP's input.
pub const CLIP_SIDE: usize = 224;
/// Tokens per caption.
const CONTEXT: usize = 77;
/// CLIP's per-channel normalisation.
const MEAN: [f64; 3] = [0.481_454_66, 0.457_827_5, 0.408_210_73];
const STD: [f64; 3] = [0.268_629_54, 0.261_302_58, 0.275_777_11];

/// The weights of PIL's bicubic filter (a = -0.5) for resampling `len` values to `out`:
/// for each output position, the first input index and the normalised weights.
fn pil_bicubic_weights(len: usize, out: usize) -> Vec<(usize, Vec<f64>)> {
    let cubic = |x: f64| {
        let (a, x) = (-0.5, x.abs());
        if x < 1.0 {
            ((a + 2.0) * x - (a + 3.0)) * x * x + 1.0
        } else if x < 2.0 {
            (((x - 5.0) * x + 8.0) * x - 4.0) * a
        } else {
            0.0
        }
    };
    let scale = len as f64 / out as f64;
    let filter_scale = scale.max(1.0);
    let support = 2.0 * filter_scale;
    (0..out)
        .map(|i| {
            let center = (i as f64 + 0.5) * scale;
            let lo = ((center - support + 0.5).floor().max(0.0)) as usize;
            let hi = ((center + support + 0.5).floor() as usize).min(len);
            let mut w: Vec<f64> = (lo..hi).map(|x| cubic((x as f64 - center + 0.5) / filter_scale)).collect();
            let total: f64 = w.iter().sum();
            w.iter_mut().for_each(|v| *v /= total);
            (lo, w)
        })
        .collect()
}

/// PIL's `Image.resize(..., BICUBIC)` of an 8-bit image (channels last), bit for bit: a
/// horizontal pass then a vertical one, each with PIL's 22-bit fixed-point coefficients,
/// rounded and clipped to 8 bits.
pub fn pil_bicubic(px: &[u8], h: usize, w: usize, oh: usize, ow: usize) -> Vec<u8> {
    const BITS: u32 = 22;
    let fixed = |taps: Vec<(usize, Vec<f64>)>| -> Vec<(usize, Vec<i64>)> {
        let q = |k: f64| {
            let k = k * (1u64 << BITS) as f64;
            (if k < 0.0 { k - 0.5 } else { k + 0.5 }).trunc() as i64
        };
        taps.into_iter().map(|(lo, w)| (lo, w.into_iter().map(q).collect())).collect()
    };
    let clip8 = |ss: i64| (ss >> BITS).clamp(0, 255) as u8;
    let half = 1i64 << (BITS - 1);
    let cols = fixed(pil_bicubic_weights(w, ow));
    let mut mid = vec![0u8; h * ow * 3];
    for y in 0..h {
        for (x, (lo, k)) in cols.iter().enumerate() {
            for c in 0..3 {
                let ss: i64 = k.iter().enumerate().map(|(j, &f)| f * px[(y * w + lo + j) * 3 + c] as i64).sum();
                mid[(y * ow + x) * 3 + c] = clip8(half + ss);
            }
        }
    }
    let rows = fixed(pil_bicubic_weights(h, oh));
    let mut out = vec![0u8; oh * ow * 3];
    for (y, (lo, k)) in rows.iter().enumerate() {
        for x in 0..ow {
            for c in 0..3 {
                let ss: i64 = k.iter().enumerate().map(|(j, &f)| f * mid[((lo + j) * ow + x) * 3 + c] as i64).sum();
                out[(y * ow + x) * 3 + c] = clip8(half + ss);
            }
        }
    }
    out
}

/// `n` square images of `res` x `res` in -1..1 (muse's pixels) as CLIP's input.
pub fn for_clip(pixels: &[f32], n: usize, res: usize) -> Vec<f32> {
    let bytes: Vec<u8> =
        pixels[..n * res * res * 3].iter().map(|&v| ((v.clamp(-1.0, 1.0) + 1.0) * 127.5).round() as u8).collect();
    for_clip_bytes(&bytes, n, res)
}

/// `n` square 8-bit images of `res` x `res` as CLIP's input: bicubic to 224x224 (a square
/// image's centre crop is all of it), scaled to 0..1, normalised.
pub fn for_clip_bytes(bytes: &[u8], n: usize, res: usize) -> Vec<f32> {
    let mut out = Vec::with_capacity(n * CLIP_SIDE * CLIP_SIDE * 3);
    for img in bytes.chunks(res * res * 3).take(n) {
        let big = pil_bicubic(img, res, res, CLIP_SIDE, CLIP_SIDE);
        out.extend(big.iter().enumerate().map(|(i, &b)| ((b as f64 / 255.0 - MEAN[i % 3]) / STD[i % 3]) as f32));
    }
    out
}

/// CLIP's BPE tokenizer from a `tokenizer.json` (Hugging Face's, with its normaliser,
/// pre-tokeniser and the post-processor that adds `<|startoftext|>` and `<|endoftext|>`).
pub struct ClipTokenizer {
    tok: Tokenizer,
    eot: u32,
}

impl ClipTokenizer {
    /// Loads `tokenizer.json`; it must know `<|endoftext|>`.
    pub fn open(path: &Path) -> Result<ClipTokenizer, Error> {
        let at = |why: String| Error::Usage(format!("--clip-tokenizer {}: {why}", path.display()));
        let tok = Tokenizer::from_file(path).map_err(|e| at(e.to_string()))?;
        let eot = tok
            .token_to_id("<|endoftext|>")
            .ok_or_else(|| at("no <|endoftext|> token: not CLIP's tokenizer".into()))?;
        Ok(ClipTokenizer { tok, eot })
    }

    /// A caption as CLIP's ids (cut to 77 keeping the end-of-text token) padded with
    /// `<|endoftext|>`, and the mask of the tokens through the first end.
    pub fn encode(&self, caption: &str) -> Result<(Vec<i32>, Vec<bool>), Error> {
        let enc = self.tok.encode(caption, true).map_err(|e| Error::Usage(format!("tokenizing {caption:?}: {e}")))?;
        let mut ids: Vec<u32> = enc.get_ids().to_vec();
        if ids.len() > CONTEXT {
            ids.truncate(CONTEXT - 1);
            ids.push(self.eot);
        }
        let used = ids.len();
        ids.resize(CONTEXT, self.eot);
        Ok((ids.iter().map(|&i| i as i32).collect(), (0..CONTEXT).map(|i| i < used).collect()))
    }
}

/// CLIP ready to score images against captions.
pub struct ClipScorer {
    program: Box<dyn Program>,
    params: Tensors,
    tokenizer: ClipTokenizer,
    cosine: NodeIndex,
}

impl ClipScorer {
    /// CLIP with the weights of a safetensors file (Hugging Face CLIPModel's names) and
    /// CLIP's `tokenizer.json`.
    pub fn open(weights: &Path, tokenizer: &Path, device: &dyn Device) -> Result<ClipScorer, Error> {
        let tokenizer = ClipTokenizer::open(tokenizer)?;
        // The text tower pools at the tokenizer's own end-of-text id.
        let opts = Options { overrides: vec![("eot".into(), tokenizer.eot.to_string())], ..Options::default() };
        let c = compile_source("clip_vit_b32.muse", CLIP_SOURCE, &opts);
        let model = c.result.map(|mut m| m.remove(0)).map_err(|d| Error::Model(d.render(&c.sources)))?;
        let params = muse_runtime::checkpoint::load_params(&model.graph, weights)
            .map_err(|e| Error::Usage(format!("--clip-weights: {e}")))?;
        let cosine = named(&model.graph.outputs, "cosine", Error::Model("CLIP has no `cosine` output".into()))?;
        let program = device.compile(&model.graph, &[cosine])?;
        Ok(ClipScorer { program, params, tokenizer, cosine })
    }

    /// The cosine of each image (`res` x `res`, muse's pixels) with its caption.
    pub fn cosines(&mut self, pixels: &[f32], res: usize, captions: &[String]) -> Result<Vec<f64>, Error> {
        let mut all = Vec::with_capacity(captions.len());
        // Activations of a few images at a time.
        for (k, chunk) in captions.chunks(16).enumerate() {
            let n = chunk.len();
            let per = res * res * 3;
            let images = for_clip(&pixels[k * 16 * per..(k * 16 + n) * per], n, res);
            let (mut ids, mut mask) = (Vec::new(), Vec::new());
            for c in chunk {
                let (i, m) = self.tokenizer.encode(c)?;
                ids.extend(i);
                mask.extend(m);
            }
            let mut inputs = Tensors::new();
            inputs.insert(
                "image".into(),
                HostTensor::f(&[n, CLIP_SIDE, CLIP_SIDE, 3], images.iter().map(|&v| v as f64).collect()),
            );
            inputs.insert("text_ids".into(), HostTensor::i(&[n, CONTEXT], ids));
            inputs.insert("text_mask".into(), HostTensor::b(&[n, CONTEXT], mask));
            let out = self.program.run(&inputs, &self.params, 0)?;
            all.extend(out[&self.cosine].to_f64());
        }
        Ok(all)
    }
}
