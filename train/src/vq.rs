//! The image tokenizer's codebook upkeep: codes no image used during a window of steps are
//! re-seeded next to codes in use (a copy of a used code, weighted by its use, plus a little
//! noise), so the codebook keeps its capacity instead of collapsing onto a few codes.

use crate::error::Error;

use crate::fit::{StepDone, StepHook};
use muse_runtime::device::Tensors;
use muse_runtime::rng::{mix64, normal, uniform};
use muse_runtime::train::Trainer;
use muse_runtime::{Data, HostTensor};

/// Dead-code re-seeding of codebook parameter `param` from the model's `codes` output.
pub struct Reseed {
    /// Steps per usage window.
    pub every: u64,
    /// The codebook parameter ([codes, dim]).
    pub param: String,
    /// Seed of the choices and the noise.
    pub seed: u64,
    usage: Vec<f64>,
}

impl Reseed {
    /// Re-seeding of a codebook of `codes` entries every `every` steps.
    pub fn new(param: &str, codes: usize, every: u64, seed: u64) -> Reseed {
        Reseed { every, param: param.to_string(), seed, usage: vec![0.0; codes] }
    }

    fn key(&self) -> String {
        format!("vq.usage/{}", self.param)
    }
}

impl StepHook for Reseed {
    fn after_step(&mut self, t: &mut Trainer, done: &StepDone) -> Result<(), Error> {
        let step = done.step;
        // The codes of the step's last micro-batch (what one process's trainer holds); under
        // data parallelism its rank's counts, summed so that every rank keeps the same.
        let ranks = t.collective();
        let mut counts = vec![0.0; self.usage.len()];
        if ranks.rank() == done.last_owner {
            let codes =
                t.output("codes").ok_or_else(|| Error::Model("the image tokenizer has no `codes` output".into()))?;
            let Data::I(ids) = &codes.data else { return Err(Error::Usage("`codes` is not integer".into())) };
            for &i in ids {
                if let Some(u) = counts.get_mut(i as usize) {
                    *u += 1.0;
                }
            }
        }
        if ranks.size() > 1 {
            ranks.sum_f64(&mut counts).map_err(|e| Error::Usage(e.to_string()))?;
        }
        self.usage.iter_mut().zip(counts).for_each(|(u, c)| *u += c);
        if !step.is_multiple_of(self.every.max(1)) {
            return Ok(());
        }
        let dead: Vec<usize> = (0..self.usage.len()).filter(|&j| self.usage[j] == 0.0).collect();
        let total: f64 = self.usage.iter().sum();
        if !dead.is_empty() && total > 0.0 {
            let mut params = t.params()?;
            let emb = params
                .get(&self.param)
                .ok_or_else(|| Error::Usage(format!("no codebook parameter `{}`", self.param)))?;
            let (k, d) = (emb.shape[0], emb.shape[1]);
            let mut e = emb.to_f64();
            let key = mix64(self.seed ^ mix64(step));
            for (n, &j) in dead.iter().enumerate() {
                // A used code, chosen with probability proportional to its use.
                let mut r = uniform(key, n as u64) * total;
                let mut c = 0;
                while c + 1 < k && r >= self.usage[c] {
                    r -= self.usage[c];
                    c += 1;
                }
                let rms = (e[c * d..(c + 1) * d].iter().map(|x| x * x).sum::<f64>() / d as f64).sqrt().max(1e-6);
                for q in 0..d {
                    let noise = 0.05 * rms * normal(key ^ 0x5eed, (j * d + q) as u64);
                    e[j * d + q] = ((e[c * d + q] + noise) as f32) as f64;
                }
            }
            let shape = params[&self.param].shape.clone();
            params.clear();
            params.insert(self.param.clone(), HostTensor::f(&shape, e));
            t.set_params(&params)?;
            muse_compiler::note!(
                "vq: step {step}: re-seeded {} of {k} codes unused in the last {} steps",
                dead.len(),
                self.every
            );
        }
        self.usage.iter_mut().for_each(|u| *u = 0.0);
        Ok(())
    }

    fn state(&mut self) -> Result<Tensors, Error> {
        let mut t = Tensors::new();
        t.insert(self.key(), HostTensor::f(&[self.usage.len()], self.usage.clone()));
        Ok(t)
    }

    fn restore(&mut self, t: &Tensors) -> Result<(), Error> {
        if let Some(u) = t.get(&self.key()) {
            if u.len() == self.usage.len() {
                self.usage = u.to_f64();
            }
        }
        Ok(())
    }
}
