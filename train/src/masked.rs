//! The masked-token objective (SPEC-models.md section 2): data sets encoded once into image
//! token ids by a trained VQ tokenizer, Muse's cosine masking, classifier-free-guidance text
//! dropout, and the batches that feed a masked-token model.

use crate::error::{named, Error};

use crate::data::loader::index_at;
use crate::data::Dataset;
use crate::fit::Batches;
use crate::text::TextTokenizer;
use muse_compiler::ir::Graph;
use muse_runtime::device::{Device, Tensors};
use muse_runtime::rng::{mix64, uniform};
use muse_runtime::{checkpoint, Data, HostTensor};
use std::path::Path;

/// A data set as image token ids and captions.
#[derive(Clone, Debug, PartialEq)]
pub struct TokenSet {
    /// Ids, `per_item` per item, row-major.
    pub ids: Vec<i32>,
    /// Tokens per item (grid * grid).
    pub per_item: usize,
    /// One caption per item.
    pub captions: Vec<String>,
}

impl TokenSet {
    /// Items in the set.
    pub fn len(&self) -> usize {
        self.captions.len()
    }
    /// Whether the set is empty.
    pub fn is_empty(&self) -> bool {
        self.captions.is_empty()
    }

    /// Writes `tokens.safetensors` and `captions.json` into `dir`.
    pub fn save(&self, dir: &Path) -> Result<(), Error> {
        std::fs::create_dir_all(dir).map_err(|e| Error::Data(format!("{}: {e}", dir.display())))?;
        let mut t = Tensors::new();
        t.insert("ids".into(), HostTensor::i(&[self.len(), self.per_item], self.ids.clone()));
        crate::run::write_atomic(
            &dir.join("captions.json"),
            serde_json::to_string(&self.captions).expect("strings").as_bytes(),
        )?;
        Ok(checkpoint::save(&dir.join("tokens.safetensors"), &t)?)
    }

    /// Reads what [`TokenSet::save`] wrote; `None` if it is not there.
    pub fn load(dir: &Path) -> Result<Option<TokenSet>, Error> {
        let (tp, cp) = (dir.join("tokens.safetensors"), dir.join("captions.json"));
        if !tp.is_file() || !cp.is_file() {
            return Ok(None);
        }
        let t = checkpoint::load(&tp)?;
        let ids = t.get("ids").ok_or_else(|| Error::Data(format!("{}: no `ids`", tp.display())))?;
        let Data::I(v) = &ids.data else { return Err(Error::Data(format!("{}: `ids` is not integer", tp.display()))) };
        let captions: Vec<String> = serde_json::from_str(
            &std::fs::read_to_string(&cp).map_err(|e| Error::Data(format!("{}: {e}", cp.display())))?,
        )
        .map_err(|e| Error::Data(format!("{}: {e}", cp.display())))?;
        if ids.shape.len() != 2 || ids.shape[0] != captions.len() {
            return Err(Error::Data(format!("{}: {:?} ids for {} captions", tp.display(), ids.shape, captions.len())));
        }
        Ok(Some(TokenSet { ids: v.clone(), per_item: ids.shape[1], captions }))
    }
}

/// Encodes `count` items of a data set (all of a finite one when `None`) with a VQ
/// tokenizer's encoder: its `codes` output, compiled alone (the decoder is not run).
pub fn encode(
    vq: &Graph,
    params: &Tensors,
    data: &dyn Dataset,
    count: Option<usize>,
    batch: usize,
    device: &dyn Device,
) -> Result<TokenSet, Error> {
    let codes = named(&vq.outputs, "codes", Error::Data("the image tokenizer has no `codes` output".into()))?;
    let image = named(&vq.inputs, "image", Error::Data("the image tokenizer has no `image` input".into()))?;
    let mut program = device.compile(vq, &[codes])?;
    let n = count.or(data.size()).ok_or_else(|| Error::Data("an unlimited data set needs --samples".into()))?;
    let res = data.resolution();
    let (mut ids, mut captions, mut skipped) = (Vec::new(), Vec::new(), 0usize);
    let mut index = 0u64;
    let in_name = vq.inputs.iter().find(|x| x.1 == image).expect("found").0.clone();
    while captions.len() < n {
        let mut pixels = Vec::new();
        let mut caps = Vec::new();
        while caps.len() < batch && captions.len() + caps.len() < n {
            if data.size().is_some_and(|s| index as usize >= s) {
                break;
            }
            match data.get(index) {
                Ok(s) => {
                    pixels.extend(s.image.iter().map(|&x| x as f64));
                    caps.push(s.caption);
                }
                Err(why) => {
                    muse_compiler::note!("warning: skipping {why}");
                    skipped += 1;
                }
            }
            index += 1;
        }
        if caps.is_empty() {
            break;
        }
        let mut inputs = Tensors::new();
        inputs.insert(in_name.clone(), HostTensor::f(&[caps.len(), res, res, 3], pixels));
        let out = program.run(&inputs, params, 0)?;
        let Data::I(v) = &out[&codes].data else { return Err(Error::Data("`codes` is not integer".into())) };
        ids.extend_from_slice(v);
        captions.extend(caps);
    }
    if captions.is_empty() {
        return Err(Error::Data("no image of the data set could be read".into()));
    }
    if skipped > 0 {
        muse_compiler::note!("tokenize: {skipped} unreadable images skipped");
    }
    let per_item = ids.len() / captions.len();
    Ok(TokenSet { ids, per_item, captions })
}

/// Muse's masking of one item of `n` tokens: r = cos(pi u / 2) for u ~ U(0, 1), then the
/// max(1, round(n r)) positions with the lowest of n uniform draws are masked. `key` makes
/// it a pure function of the item's place in the stream.
pub fn mask_positions(n: usize, key: u64) -> Vec<bool> {
    let r = (std::f64::consts::FRAC_PI_2 * uniform(key, 0)).cos();
    let count = ((n as f64 * r).round() as usize).clamp(1, n);
    let mut order: Vec<(f64, usize)> = (0..n).map(|i| (uniform(key, 1 + i as u64), i)).collect();
    order.sort_by(|a, b| a.0.total_cmp(&b.0));
    let mut mask = vec![false; n];
    for &(_, i) in &order[..count] {
        mask[i] = true;
    }
    mask
}

/// Batches for a masked-token model.
pub struct MaskedBatches {
    tokens: TokenSet,
    text: Vec<(Vec<i32>, Vec<bool>)>,
    null: (Vec<i32>, Vec<bool>),
    /// The MASK id (= codebook size).
    pub mask_id: i32,
    /// Probability of replacing a caption by the null condition.
    pub text_dropout: f64,
    batch: usize,
    seed: u64,
    pos: u64,
}

impl MaskedBatches {
    /// Batches of `batch` items from stream position `pos`.
    pub fn new(
        tokens: TokenSet,
        text: &TextTokenizer,
        mask_id: i32,
        text_dropout: f64,
        batch: usize,
        seed: u64,
        pos: u64,
    ) -> Result<MaskedBatches, Error> {
        let encoded = tokens.captions.iter().map(|c| text.encode(c)).collect::<Result<Vec<_>, _>>()?;
        Ok(MaskedBatches { tokens, text: encoded, null: text.null(), mask_id, text_dropout, batch, seed, pos })
    }
}

impl Batches for MaskedBatches {
    fn next(&mut self) -> Result<(Tensors, u64), Error> {
        let (b, n) = (self.batch, self.tokens.per_item);
        let s = self.text[0].0.len();
        let (mut tok, mut tgt, mut lm, mut tid, mut tm) = (Vec::new(), Vec::new(), Vec::new(), Vec::new(), Vec::new());
        for k in 0..b as u64 {
            let pos = self.pos + k;
            let item = index_at(Some(self.tokens.len()), self.seed, pos) as usize;
            let ids = &self.tokens.ids[item * n..(item + 1) * n];
            let key = mix64(self.seed ^ mix64(pos ^ 0x6d61_736b));
            let mask = mask_positions(n, key);
            tok.extend(ids.iter().zip(&mask).map(|(&t, &m)| if m { self.mask_id } else { t }));
            tgt.extend_from_slice(ids);
            lm.extend_from_slice(&mask);
            let drop = uniform(key, u64::MAX) < self.text_dropout;
            let (ti, mi) = if drop { &self.null } else { &self.text[item] };
            tid.extend_from_slice(ti);
            tm.extend_from_slice(mi);
        }
        self.pos += b as u64;
        let mut t = Tensors::new();
        t.insert("tokens".into(), HostTensor::i(&[b, n], tok));
        t.insert("targets".into(), HostTensor::i(&[b, n], tgt));
        t.insert("loss_mask".into(), HostTensor::b(&[b, n], lm));
        t.insert("text_ids".into(), HostTensor::i(&[b, s], tid));
        t.insert("text_mask".into(), HostTensor::b(&[b, s], tm));
        Ok((t, self.pos))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn masking_follows_the_cosine_schedule() {
        // The masked fraction is cos(pi u / 2): its mean is 2/pi (0.64); at least one
        // position is always masked; the same key masks the same positions.
        let n = 64;
        let fracs: Vec<f64> = (0..4000u64)
            .map(|k| mask_positions(n, mix64(k)).iter().filter(|&&m| m).count() as f64 / n as f64)
            .collect();
        let mean = fracs.iter().sum::<f64>() / fracs.len() as f64;
        assert!((mean - 2.0 / std::f64::consts::PI).abs() < 0.02, "mean masked fraction {mean}");
        assert!(fracs.iter().all(|&f| f >= 1.0 / n as f64));
        // P(fraction <= 0.5) = P(cos(pi u/2) <= 0.5) = 1/3.
        let low = fracs.iter().filter(|&&f| f <= 0.5).count() as f64 / fracs.len() as f64;
        assert!((low - 1.0 / 3.0).abs() < 0.03, "P(frac <= 0.5) = {low}");
        assert_eq!(mask_positions(n, 5), mask_positions(n, 5));
    }
}
