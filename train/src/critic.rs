//! The token-critic objective (SPEC-models.md section 4, Lezama et al. 2022): mask a batch as
//! for the generator, let a trained generator fill the masked positions (sampling at a
//! random temperature per item), and train the critic to tell, per position, whether the
//! token is the original one.

use crate::error::Error;

use crate::fit::Batches;
use crate::masked::MaskedBatches;
use crate::sample::sample_token;
use crate::trained::TrainedTokenModel;
use muse_runtime::device::Tensors;
use muse_runtime::rng::{mix64, uniform};
use muse_runtime::{Data, HostTensor};

/// Batches for a critic: the generator's fills and whether each token is the original.
pub struct CriticBatches {
    /// Masked batches of the data set (without text dropout).
    pub masked: MaskedBatches,
    /// The trained generator.
    pub generator: TrainedTokenModel,
    /// Seed of the sampling.
    pub seed: u64,
}

impl Batches for CriticBatches {
    fn next(&mut self) -> Result<(Tensors, u64), Error> {
        let (t, pos) = self.masked.next()?;
        let Data::I(tokens) = &t["tokens"].data else { return Err(Error::Usage("tokens are not integer".into())) };
        let Data::I(targets) = &t["targets"].data else { return Err(Error::Usage("targets are not integer".into())) };
        let (b, n) = (t["tokens"].shape[0], t["tokens"].shape[1]);
        let k = self.generator.codebook as usize;
        let mut gen_inputs = Tensors::new();
        for name in ["tokens", "text_ids", "text_mask"] {
            gen_inputs.insert(name.to_string(), t[name].clone());
        }
        let logits = self.generator.logits(&gen_inputs, self.seed ^ pos)?;
        let key = mix64(self.seed ^ mix64(pos ^ 0x6372_6974_6963));
        let mut filled = tokens.clone();
        for row in 0..b {
            // Temperatures between 0.5 and 1.5 give the critic easy and hard fills.
            let tau = 0.5 + uniform(key, row as u64);
            for p in 0..n {
                let at = row * n + p;
                if tokens[at] == self.masked.mask_id {
                    filled[at] = sample_token(&logits[at * k..(at + 1) * k], tau, key ^ 0x5a, at as u64) as i32;
                }
            }
        }
        let original: Vec<bool> = filled.iter().zip(targets).map(|(f, t)| f == t).collect();
        let mut out = Tensors::new();
        out.insert("tokens".into(), HostTensor::i(&[b, n], filled));
        out.insert("is_original".into(), HostTensor::b(&[b, n], original));
        out.insert("text_ids".into(), t["text_ids"].clone());
        out.insert("text_mask".into(), t["text_mask"].clone());
        Ok((out, pos))
    }

    fn skip(&mut self) -> Result<u64, Error> {
        // The fills are keyed by the data position: another rank's need no generator pass.
        self.masked.next().map(|(_, pos)| pos)
    }
}
