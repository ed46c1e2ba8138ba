//! The training loop every objective shares: learning-rate schedule, AdamW steps over
//! micro-batches, an EMA of the weights, the non-finite-loss policy, metrics, progress and
//! checkpoints that let a run be resumed bit for bit.

use crate::error::Error;

use crate::run::{Progress, RunDir};
use muse_runtime::device::Tensors;
use muse_runtime::optim::Schedule;
use muse_runtime::train::Trainer;
use std::io::{IsTerminal, Write};
use std::time::{Duration, Instant};

/// Settings of the loop.
#[derive(Clone, Debug)]
pub struct FitConfig {
    /// Optimizer steps of the whole run.
    pub steps: u64,
    /// Learning-rate factor per step.
    pub schedule: Schedule,
    /// Micro-batches per optimizer step.
    pub accumulate: usize,
    /// Save a checkpoint every this many steps (and at the end).
    pub checkpoint_every: u64,
    /// Skip a step whose loss or gradients are not finite instead of stopping.
    pub skip_nonfinite: bool,
    /// Decay of the exponential moving average of the weights (none: no EMA).
    pub ema: Option<f64>,
    /// Seed of the random ops inside the model.
    pub seed: u64,
    /// Items (images) per micro-batch, for throughput.
    pub batch: usize,
    /// Tokens per item, for throughput (0: not a token model).
    pub tokens_per_item: usize,
}

/// A source of micro-batches.
pub trait Batches {
    /// The inputs of the next micro-batch and the data position after it.
    fn next(&mut self) -> Result<(Tensors, u64), Error>;
    /// Moves past the next micro-batch without making it (another data-parallel rank's):
    /// the data position after it. Sources whose batches cost work of their own (a
    /// generator's fills) skip that work.
    fn skip(&mut self) -> Result<u64, Error> {
        self.next().map(|(_, pos)| pos)
    }
    /// Time spent waiting for data so far.
    fn waited(&self) -> Duration {
        Duration::ZERO
    }
    /// Items skipped as unreadable so far.
    fn skipped(&self) -> usize {
        0
    }
    /// Each item skipped as unreadable so far, once, with why.
    fn unreadable(&self) -> Vec<String> {
        Vec::new()
    }
}

/// The step a [`StepHook`] runs after.
pub struct StepDone<'a> {
    /// Optimizer steps applied so far, this one included (counts from 1).
    pub step: u64,
    /// The learning rate of the step.
    pub lr: f64,
    /// This rank's micro-batches of the step.
    pub micro: &'a [Tensors],
    /// The rank that ran the step's last micro-batch (whose outputs a hook may read from
    /// its trainer; 0 in one process).
    pub last_owner: usize,
}

/// Work an objective does after each applied step (the VQ codebook's dead-code re-seeding,
/// the discriminator's step); its state is saved in checkpoints so a resumed run does the
/// same.
pub trait StepHook {
    /// Called after each applied optimizer step.
    fn after_step(&mut self, trainer: &mut Trainer, done: &StepDone) -> Result<(), Error>;
    /// State to save in a checkpoint (names must contain a `/`).
    fn state(&mut self) -> Result<Tensors, Error> {
        Ok(Tensors::new())
    }
    /// Restores [`StepHook::state`].
    fn restore(&mut self, _t: &Tensors) -> Result<(), Error> {
        Ok(())
    }
    /// Figures of the last step for the metrics log.
    fn metrics(&self) -> serde_json::Map<String, serde_json::Value> {
        serde_json::Map::new()
    }
}

/// No per-step work.
pub struct NoHook;

impl StepHook for NoHook {
    fn after_step(&mut self, _: &mut Trainer, _: &StepDone) -> Result<(), Error> {
        Ok(())
    }
}

/// A hook an objective may not have.
impl<H: StepHook> StepHook for Option<H> {
    fn after_step(&mut self, trainer: &mut Trainer, done: &StepDone) -> Result<(), Error> {
        self.as_mut().map_or(Ok(()), |h| h.after_step(trainer, done))
    }
    fn state(&mut self) -> Result<Tensors, Error> {
        self.as_mut().map_or(Ok(Tensors::new()), H::state)
    }
    fn restore(&mut self, t: &Tensors) -> Result<(), Error> {
        self.as_mut().map_or(Ok(()), |h| h.restore(t))
    }
    fn metrics(&self) -> serde_json::Map<String, serde_json::Value> {
        self.as_ref().map(H::metrics).unwrap_or_default()
    }
}

/// Two hooks, run in order.
impl<A: StepHook, B: StepHook> StepHook for (A, B) {
    fn after_step(&mut self, trainer: &mut Trainer, done: &StepDone) -> Result<(), Error> {
        self.0.after_step(trainer, done)?;
        self.1.after_step(trainer, done)
    }
    fn state(&mut self) -> Result<Tensors, Error> {
        let mut t = self.0.state()?;
        t.extend(self.1.state()?);
        Ok(t)
    }
    fn restore(&mut self, t: &Tensors) -> Result<(), Error> {
        self.0.restore(t)?;
        self.1.restore(t)
    }
    fn metrics(&self) -> serde_json::Map<String, serde_json::Value> {
        let mut m = self.0.metrics();
        m.extend(self.1.metrics());
        m
    }
}

/// What a finished run reports.
#[derive(Clone, Debug)]
pub struct Summary {
    /// Loss of the first and the last step of this invocation.
    pub first_loss: f64,
    /// Loss of the last step.
    pub last_loss: f64,
    /// Steps skipped as non-finite.
    pub skipped_steps: u64,
    /// Fraction of wall time spent waiting for data.
    pub wait_fraction: f64,
    /// Items per second.
    pub items_per_s: f64,
    /// Where in the data the run stopped (the next stage or resumption starts there).
    pub data_pos: u64,
    /// Items skipped as unreadable in this invocation, each listed in the run's skipped.txt.
    pub unreadable: usize,
}

/// The EMA tensors of a checkpoint are saved as `ema/NAME`.
fn ema_key(name: &str) -> String {
    format!("ema/{name}")
}

/// Restores a trainer (and its EMA, if it runs one) from the run's latest checkpoint; the
/// progress to resume at.
pub fn restore(run: &RunDir, trainer: &mut Trainer, hook: &mut dyn StepHook) -> Result<Progress, Error> {
    let Some((tensors, progress)) = run.latest()? else { return Ok(Progress { step: 0, data_pos: 0 }) };
    hook.restore(&tensors)?;
    // The model's parameters only: optimizer and hook state (`adamw.step`, `ema/...`) are
    // restored by their owners.
    let known = trainer.params()?;
    let params: Tensors =
        tensors.iter().filter(|(k, _)| known.contains_key(*k)).map(|(k, v)| (k.clone(), v.clone())).collect();
    trainer.set_params(&params)?;
    trainer.set_optimizer_state(&tensors)?;
    let saved_ema: Tensors =
        tensors.iter().filter_map(|(k, v)| k.strip_prefix("ema/").map(|n| (n.to_string(), v.clone()))).collect();
    trainer.set_ema(&saved_ema)?;
    run.truncate_log(progress.step)?;
    Ok(progress)
}

/// Trains from `start` to `cfg.steps`.
pub fn fit(
    run: &RunDir,
    trainer: &mut Trainer,
    batches: &mut dyn Batches,
    cfg: &FitConfig,
    start: Progress,
    hook: &mut dyn StepHook,
) -> Result<Summary, Error> {
    let peak = trainer.opt.lr;
    // Data-parallel ranks share each step's micro-batches: micro-batch j is rank j % N's.
    let ranks = trainer.collective();
    let (rank, n_ranks) = (ranks.rank(), ranks.size());
    if n_ranks > 1 {
        let same = muse_runtime::dist::agree(ranks.as_ref(), start.step).map_err(|e| Error::Usage(e.to_string()))?;
        if !same {
            return Err(Error::RunDir(format!(
                "{}: the ranks would resume at different steps (this one at {}): their run directories differ",
                run.path.display(),
                start.step
            )));
        }
    }
    let terminal = run.writer && std::io::stderr().is_terminal();
    let began = Instant::now();
    let (mut first_loss, mut last_loss) = (f64::NAN, f64::NAN);
    let mut skipped_steps = 0;
    let mut data_pos = start.data_pos;
    let mut last_saved: Option<u64> = (start.step > 0).then_some(start.step);
    let mut window = Instant::now();
    let mut window_items = 0usize;
    let mut items = 0usize;
    for step in start.step..cfg.steps {
        let (mut micro, mut index) = (Vec::new(), Vec::new());
        for j in 0..cfg.accumulate.max(1) {
            // Every rank moves past every micro-batch, so each stands where the stream does.
            if j % n_ranks == rank {
                let (t, pos) = batches.next()?;
                data_pos = pos;
                micro.push(t);
                index.push(j);
            } else {
                data_pos = batches.skip()?;
            }
        }
        let lr = peak * cfg.schedule.factor(step);
        let refs: Vec<(usize, &Tensors)> = index.iter().copied().zip(micro.iter()).collect();
        let stats = trainer.step_shard(&refs, cfg.accumulate.max(1), lr, cfg.seed ^ step.wrapping_mul(0x9e37_79b9))?;
        if !stats.applied {
            if !cfg.skip_nonfinite {
                let good = last_saved.map_or("none yet".to_string(), |s| {
                    format!("step {s} in {}", run.path.join("checkpoints").display())
                });
                return Err(Error::Usage(format!(
                    "step {step}: the loss is {} (gradient norm {}); stopped. Last good checkpoint: {good}. \
                     Lower the learning rate, or pass --skip-nonfinite to skip such steps.",
                    stats.loss, stats.grad_norm
                )));
            }
            skipped_steps += 1;
            muse_compiler::note!("warning: step {step}: non-finite loss {} skipped", stats.loss);
        } else {
            let last_owner = (cfg.accumulate.max(1) - 1) % n_ranks;
            hook.after_step(trainer, &StepDone { step: step + 1, lr, micro: &micro, last_owner })?;
            if let Some(decay) = cfg.ema {
                trainer.update_ema(decay)?;
            }
        }
        if first_loss.is_nan() {
            first_loss = stats.loss;
        }
        last_loss = stats.loss;
        let n = cfg.batch * cfg.accumulate.max(1);
        items += n;
        window_items += n;
        let secs = window.elapsed().as_secs_f64();
        let elapsed = began.elapsed().as_secs_f64();
        let wait = batches.waited().as_secs_f64() / elapsed.max(1e-9);
        let done = step + 1 == cfg.steps;
        let mut line = serde_json::json!({
            "step": step + 1, "loss": stats.loss, "lr": lr, "grad_norm": stats.grad_norm,
            "items_per_s": window_items as f64 / secs.max(1e-9),
            "tokens_per_s": (window_items * cfg.tokens_per_item) as f64 / secs.max(1e-9),
            "wait_fraction": wait, "skipped_items": batches.skipped(), "applied": stats.applied,
        });
        if let Some(m) = line.as_object_mut() {
            if n_ranks > 1 {
                m.insert("ranks".into(), n_ranks.into());
                m.insert("allreduce_s".into(), stats.reduce_secs.into());
            }
            let parts = trainer.loss_parts();
            if !parts.is_empty() {
                m.insert(
                    "losses".into(),
                    parts
                        .into_iter()
                        .map(|(k, v)| (k, serde_json::Value::from(v)))
                        .collect::<serde_json::Map<_, _>>()
                        .into(),
                );
            }
            m.extend(hook.metrics());
        }
        run.log(&line)?;
        if terminal {
            // A terminal that went away is no reason to stop training.
            let _ = write!(
                std::io::stderr(),
                "\r  step {:>6}/{} loss {:.4} lr {:.2e} {:.1} items/s   ",
                step + 1,
                cfg.steps,
                stats.loss,
                lr,
                window_items as f64 / secs.max(1e-9)
            );
        } else if run.writer && ((step + 1) % 50 == 0 || done || step == start.step) {
            muse_compiler::note!(
                "  step {}/{} loss {:.4} lr {:.2e} {:.1} items/s",
                step + 1,
                cfg.steps,
                stats.loss,
                lr,
                window_items as f64 / secs.max(1e-9)
            );
        }
        window = Instant::now();
        window_items = 0;
        if run.writer && ((step + 1) % cfg.checkpoint_every.max(1) == 0 || done) {
            let mut tensors = trainer.params()?;
            tensors.extend(trainer.optimizer_state()?);
            tensors.extend(hook.state()?);
            if let Some(e) = trainer.ema()? {
                tensors.extend(e.into_iter().map(|(k, v)| (ema_key(&k), v)));
            }
            run.save(&tensors, &Progress { step: step + 1, data_pos })?;
            last_saved = Some(step + 1);
        }
    }
    if terminal {
        muse_compiler::note!();
    }
    let elapsed = began.elapsed().as_secs_f64();
    std::io::stderr().flush().ok();
    let unreadable = batches.unreadable();
    if !unreadable.is_empty() {
        run.list_skipped(&unreadable)?;
    }
    Ok(Summary {
        unreadable: unreadable.len(),
        first_loss,
        last_loss,
        skipped_steps,
        wait_fraction: batches.waited().as_secs_f64() / elapsed.max(1e-9),
        items_per_s: items as f64 / elapsed.max(1e-9),
        data_pos,
    })
}
