//! The image tokenizer's adversary: a PatchGAN discriminator with its own model
//! (`vq_discriminator.muse`), trainer and AdamW, stepped with the hinge loss after each
//! tokenizer step on that step's real images and their reconstructions, as VQGAN alternates
//! them. The tokenizer's graph holds the same discriminator (its `disc.*` parameters, frozen
//! there) for the generator term; after each discriminator step its weights are copied in.

use crate::error::Error;

use crate::fit::{StepDone, StepHook};
use muse_runtime::device::Tensors;
use muse_runtime::train::Trainer;
use muse_runtime::HostTensor;

/// Checkpoint names of the discriminator's optimizer state start with this.
const PREFIX: &str = "disc/";

/// The discriminator's step after each tokenizer step.
pub struct Adversary {
    /// The discriminator's trainer (inputs `real` and `fake`, loss `hinge`).
    pub trainer: Trainer,
    /// Hinge loss and mean logits of real and generated images at the last step.
    last: Option<[f64; 3]>,
}

impl Adversary {
    /// Steps `trainer` after each tokenizer step; its parameters must be the tokenizer's
    /// frozen discriminator parameters, by name and size.
    pub fn new(trainer: Trainer) -> Adversary {
        Adversary { trainer, last: None }
    }
}

fn mean(t: &HostTensor) -> f64 {
    let v = t.to_f64();
    v.iter().sum::<f64>() / v.len().max(1) as f64
}

impl StepHook for Adversary {
    fn after_step(&mut self, g: &mut Trainer, done: &StepDone) -> Result<(), Error> {
        // The step's last micro-batch: the reconstructions the tokenizer's program still
        // holds. Under data parallelism its rank sends both to the others, and every rank
        // takes the same discriminator step (one micro-batch, as one process takes it).
        let real = done
            .micro
            .last()
            .and_then(|m| m.get("image"))
            .ok_or_else(|| Error::Model("the tokenizer's batch has no `image`".into()))?;
        let fake = g
            .output("recon")
            .ok_or_else(|| Error::Usage("the tokenizer computes no `recon` for its discriminator".into()))?;
        let (mut real, mut fake) = (real.clone(), fake);
        let ranks = g.collective();
        if ranks.size() > 1 {
            for t in [&mut real, &mut fake] {
                // Images are f32 on every device: the f32 bytes carry them exactly.
                let mut bytes: Vec<u8> = t.to_f64().iter().flat_map(|&x| (x as f32).to_le_bytes()).collect();
                ranks.broadcast(&mut bytes, done.last_owner).map_err(|e| Error::Usage(e.to_string()))?;
                let values = bytes.chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]) as f64);
                *t = HostTensor::f(&t.shape.clone(), values.collect());
            }
        }
        let inputs: Tensors = [("real".to_string(), real), ("fake".to_string(), fake)].into();
        let stats = self.trainer.step(&[&inputs], done.lr, done.step)?;
        if !stats.applied {
            return Err(Error::Usage(format!(
                "step {}: the discriminator's hinge loss is {} (gradient norm {}); lower the learning rate or --set adversarial",
                done.step, stats.loss, stats.grad_norm
            )));
        }
        let logit = |name: &str| self.trainer.output(name).map_or(f64::NAN, |t| mean(&t));
        self.last = Some([stats.loss, logit("real_logits"), logit("fake_logits")]);
        let weights = self.trainer.params()?;
        g.set_params(&weights).map_err(|e| Error::Usage(format!("copying the discriminator into the tokenizer: {e}")))
    }

    fn state(&mut self) -> Result<Tensors, Error> {
        let state = self.trainer.optimizer_state()?;
        Ok(state.into_iter().map(|(k, v)| (format!("{PREFIX}{k}"), v)).collect())
    }

    fn restore(&mut self, t: &Tensors) -> Result<(), Error> {
        // The weights are the tokenizer's `disc.*` in the same checkpoint.
        let known = self.trainer.params()?;
        let weights: Tensors =
            t.iter().filter(|(k, _)| known.contains_key(*k)).map(|(k, v)| (k.clone(), v.clone())).collect();
        self.trainer.set_params(&weights)?;
        let state: Tensors =
            t.iter().filter_map(|(k, v)| k.strip_prefix(PREFIX).map(|k| (k.to_string(), v.clone()))).collect();
        self.trainer.set_optimizer_state(&state).map_err(|e| {
            Error::RunDir(format!(
                "the checkpoint has no discriminator optimizer state ({e}); it was trained without one"
            ))
        })
    }

    fn metrics(&self) -> serde_json::Map<String, serde_json::Value> {
        let mut m = serde_json::Map::new();
        if let Some([loss, real, fake]) = self.last {
            m.insert("disc_loss".into(), loss.into());
            m.insert("disc_real".into(), real.into());
            m.insert("disc_fake".into(), fake.into());
        }
        m
    }
}
