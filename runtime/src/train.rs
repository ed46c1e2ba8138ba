//! A training step on any device: the model's forward and backward pass compiled into one
//! program whose parameters, gradients and optimizer state stay in the device's memory
//! between steps; AdamW, clipping, accumulation and the weight average run there too.
//! Only the loss (and outputs a caller asks for) come back each step.

use crate::device::{AdamStep, Device, DeviceError, Grads, Optimizer, Program, Slot, Tensors};
use crate::dist::{self, Collective, Reduction, Solo, Wire};
use crate::interp::RunError;
use crate::optim::{self, AdamW};
use crate::tensor::HostTensor;
use muse_compiler::autodiff::{self, Gradients};
use muse_compiler::ir::{Graph, NodeIndex};
use std::sync::Arc;

/// What went wrong building a trainer.
#[derive(Debug, thiserror::Error)]
pub enum TrainError {
    /// The model has no loss.
    #[error("model {0} has no loss to train")]
    NoLoss(String),
    /// Generating or compiling kernels failed, or the device is missing.
    #[error(transparent)]
    Device(DeviceError),
    /// Inputs or parameters do not fit the model.
    #[error(transparent)]
    Run(#[from] RunError),
    /// A frozen name matches no parameter.
    #[error("nothing to freeze: no parameter is named `{0}` or `{0}.*`")]
    Freeze(String),
}

/// What one optimizer step saw and did.
#[derive(Clone, Debug, PartialEq)]
pub struct StepStats {
    /// The loss (mean over the micro-batches).
    pub loss: f64,
    /// Global gradient norm before clipping.
    pub grad_norm: f64,
    /// Learning rate used.
    pub lr: f64,
    /// False when the loss or the gradients were not finite: nothing was changed.
    pub applied: bool,
    /// Seconds the step waited, after its backward pass, for the sums of the loss and the
    /// gradients over data-parallel ranks (0 alone; a device that overlaps the gradients'
    /// sum with the backward pass hides most of it there).
    pub reduce_secs: f64,
}

/// What a trainer computes besides the loss and the gradients, and what it leaves alone.
#[derive(Clone, Debug, Default)]
pub struct TrainOptions {
    /// Forward outputs to compute each pass (read with [`Trainer::output`]).
    pub outputs: Vec<String>,
    /// Parameters the optimizer leaves as they are: a name freezes that parameter and every
    /// `name.*` below it (`text_encoder`, `disc`). No gradient is computed for them.
    pub frozen: Vec<String>,
}

impl TrainOptions {
    /// Whether parameter `name` is frozen.
    pub fn is_frozen(&self, name: &str) -> bool {
        self.frozen.iter().any(|p| under(name, p))
    }
}

/// Whether parameter `name` is `path` or inside it (`path.*`).
fn under(name: &str, path: &str) -> bool {
    name.strip_prefix(path).is_some_and(|rest| rest.is_empty() || rest.starts_with('.'))
}

/// A model compiled for training on a device, with its parameters and optimizer state
/// resident there.
pub struct Trainer {
    /// The differentiated graph: loss and one gradient per parameter.
    pub grads: Gradients,
    program: Box<dyn Program>,
    /// Parameters the optimizer updates (those with a gradient that are not frozen), in order.
    trained: Vec<(String, NodeIndex)>,
    /// Tensors set under names the model has no parameter for: kept as given.
    extra: Tensors,
    /// AdamW's settings.
    pub opt: AdamW,
    /// Optimizer steps taken (AdamW's bias correction counts them).
    pub steps_taken: u64,
    /// Forward outputs computed alongside the loss, by name.
    outputs: Vec<(String, NodeIndex)>,
    /// The model's named losses, whose sum is trained.
    parts: Vec<(String, NodeIndex)>,
    /// Each named loss of the last step, averaged over its micro-batches and ranks.
    step_parts: Vec<f64>,
    /// The data-parallel ranks this trainer steps with (one process: [`Solo`]).
    collective: Arc<dyn Collective + Send + Sync>,
    /// The element type gradients travel in between ranks.
    wire: Wire,
    /// The bucket size where the device sums gradients during the backward pass.
    bucket_bytes: usize,
}

impl Trainer {
    /// Differentiates `model`, compiles forward and backward for `device`, and places the
    /// parameters in the program's buffers. `example` fixes the batch size of every step.
    pub fn new(
        model: &Graph,
        name: &str,
        params: &Tensors,
        example: &Tensors,
        opt: AdamW,
        device: &dyn Device,
    ) -> Result<Trainer, TrainError> {
        Trainer::with_options(model, name, params, example, opt, device, &TrainOptions::default())
    }

    /// As [`Trainer::new`], also computing forward outputs and leaving frozen parameters alone.
    pub fn with_options(
        model: &Graph,
        name: &str,
        params: &Tensors,
        example: &Tensors,
        opt: AdamW,
        device: &dyn Device,
        options: &TrainOptions,
    ) -> Result<Trainer, TrainError> {
        if model.losses.is_empty() {
            return Err(TrainError::NoLoss(name.to_string()));
        }
        if let Some(p) = options.frozen.iter().find(|p| !model.params.iter().any(|q| under(&q.name, p))) {
            return Err(TrainError::Freeze(p.clone()));
        }
        let grads = autodiff::differentiate(model, autodiff::Wrt::default());
        // Gradients of frozen parameters are never asked for, so no kernel computes them.
        let trained: Vec<(String, NodeIndex)> =
            grads.params.iter().filter(|(n, _)| !options.is_frozen(n)).cloned().collect();
        let mut requested = vec![grads.loss];
        requested.extend(trained.iter().map(|x| x.1));
        // Each named loss is a scalar the program keeps, for the metrics log.
        let parts = if model.losses.len() > 1 { model.losses.clone() } else { vec![] };
        requested.extend(parts.iter().map(|p| p.1));
        let mut outs = Vec::new();
        for want in &options.outputs {
            let n =
                model.outputs.iter().find(|(o, _)| o == want).ok_or_else(|| {
                    TrainError::Run(RunError::MissingInput(format!("output `{want}` of model {name}")))
                })?;
            outs.push(n.clone());
            requested.push(n.1);
        }
        let mut program = device.compile(&grads.graph, &requested).map_err(TrainError::Device)?;
        program.attach_optimizer(&trained)?;
        program.bind(example, params)?;
        let extra = params
            .iter()
            .filter(|(k, _)| !model.params.iter().any(|p| &p.name == *k))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        let collective = Arc::new(Solo);
        Ok(Trainer {
            grads,
            program,
            trained,
            extra,
            opt,
            steps_taken: 0,
            outputs: outs,
            step_parts: vec![f64::NAN; parts.len()],
            parts,
            collective,
            wire: Wire::F32,
            bucket_bytes: dist::BUCKET_BYTES,
        })
    }

    /// Names of the parameters the optimizer updates, in optimizer-state order.
    pub fn trained(&self) -> impl Iterator<Item = &str> {
        self.trained.iter().map(|(n, _)| n.as_str())
    }

    /// Bytes the device gives the intermediates of one pass (activations and gradients;
    /// parameters, inputs and optimizer state are extra).
    pub fn planned_bytes(&self) -> usize {
        self.program.planned_bytes()
    }

    /// Kernel launches per forward and backward pass.
    pub fn launches(&self) -> usize {
        self.program.launches()
    }

    fn optimizer(&mut self) -> Result<Box<dyn Optimizer + '_>, RunError> {
        self.program.optimizer()
    }

    /// Steps together with the ranks of `c` from now on, gradients travelling as `wire`
    /// in buckets of about `bucket_bytes` (where the device overlaps them with the backward
    /// pass): see [`Trainer::step_shard`].
    pub fn set_collective(&mut self, c: Arc<dyn Collective + Send + Sync>, wire: Wire, bucket_bytes: usize) {
        self.collective = c;
        self.wire = wire;
        self.bucket_bytes = bucket_bytes.max(1);
    }

    /// The ranks this trainer steps with.
    pub fn collective(&self) -> Arc<dyn Collective + Send + Sync> {
        self.collective.clone()
    }

    /// One optimizer step over one or more micro-batches (their gradients are averaged),
    /// at learning rate `lr`; `seed` keys the random ops of the pass (dropout, ...).
    pub fn step(&mut self, micro: &[&Tensors], lr: f64, seed: u64) -> Result<StepStats, RunError> {
        let indexed: Vec<(usize, &Tensors)> = micro.iter().copied().enumerate().collect();
        self.step_shard(&indexed, micro.len(), lr, seed)
    }

    /// This rank's share of one step of `total` micro-batches: each of `micro` with its index
    /// among all of them (which keys its random ops, `seed + index`). The losses and
    /// gradients of every rank are summed and averaged over `total`, so every rank applies
    /// the same update, the one a single process taking all `total` micro-batches would.
    pub fn step_shard(
        &mut self,
        micro: &[(usize, &Tensors)],
        total: usize,
        lr: f64,
        seed: u64,
    ) -> Result<StepStats, RunError> {
        assert!(!micro.is_empty(), "a step needs at least one micro-batch");
        let c = self.collective.clone();
        let reduce = Reduction { ranks: &*c, wire: self.wire, bucket_bytes: self.bucket_bytes };
        let shared = c.size() > 1;
        let mut loss = 0.0;
        let mut parts = vec![0.0; self.parts.len()];
        let mut grads = if micro.len() > 1 { Grads::Accumulated } else { Grads::Pass };
        // This rank's only pass of the step: a device may sum its gradients over the ranks
        // while the backward pass still runs.
        let mut reduced = false;
        for (i, (index, inputs)) in micro.iter().enumerate() {
            self.write_inputs(inputs)?;
            let seed = seed.wrapping_add(*index as u64);
            if shared && grads == Grads::Pass {
                reduced = self.program.execute_reducing(seed, &reduce)?;
            } else {
                self.program.execute(seed)?;
            }
            loss += self.program.scalar(self.grads.loss)?;
            for (sum, (_, node)) in parts.iter_mut().zip(&self.parts) {
                *sum += self.program.scalar(*node)?;
            }
            if grads == Grads::Accumulated {
                self.optimizer()?.accumulate(i == 0);
            }
        }
        let k = total as f64;
        let reduce_start = std::time::Instant::now();
        if shared {
            let failed = |e: dist::DistError| RunError::Program(e.to_string());
            let mut l: Vec<f64> = std::iter::once(loss).chain(parts.iter().copied()).collect();
            c.sum_f64(&mut l).map_err(failed)?;
            loss = l[0];
            parts.copy_from_slice(&l[1..]);
            if !reduced {
                grads = self.optimizer()?.combine_gradients(grads, &reduce).map_err(failed)?;
            }
        }
        let reduce_secs = if shared { reduce_start.elapsed().as_secs_f64() } else { 0.0 };
        loss /= k;
        self.step_parts = parts.iter().map(|p| p / k).collect();
        let (cfg, t) = (self.opt.clone(), self.steps_taken + 1);
        let mut opt = self.optimizer()?;
        let grad_norm = opt.gradient_norm(grads) / k;
        if !loss.is_finite() || !grad_norm.is_finite() {
            return Ok(StepStats { loss, grad_norm, lr, applied: false, reduce_secs });
        }
        let grad_scale = optim::clip_factor(grad_norm, cfg.clip_norm) / k;
        opt.adamw(&AdamStep { cfg, lr, t, grad_scale }, grads);
        drop(opt);
        self.steps_taken = t;
        Ok(StepStats { loss, grad_norm, lr, applied: true, reduce_secs })
    }

    /// Uploads one batch's inputs.
    fn write_inputs(&mut self, inputs: &Tensors) -> Result<(), RunError> {
        for (name, _) in &self.grads.graph.inputs {
            let t = inputs.get(name).ok_or_else(|| RunError::MissingInput(name.clone()))?;
            self.program.write_input(name, t)?;
        }
        Ok(())
    }

    /// The loss and every gradient for one batch, without changing anything (for tests and
    /// gradient checks).
    pub fn gradients(&mut self, inputs: &Tensors, seed: u64) -> Result<(f64, Tensors), RunError> {
        self.write_inputs(inputs)?;
        self.program.execute(seed)?;
        let loss = self.program.scalar(self.grads.loss)?;
        let grads = self
            .trained
            .iter()
            .map(|(name, g)| Ok((name.clone(), self.program.read(*g)?)))
            .collect::<Result<_, RunError>>()?;
        Ok((loss, grads))
    }

    /// A forward output of the last pass (one asked for in [`TrainOptions::outputs`]).
    pub fn output(&self, name: &str) -> Option<HostTensor> {
        self.outputs.iter().find(|(n, _)| n == name).and_then(|(_, node)| self.program.read(*node).ok())
    }

    /// Each named loss of the last step when the model has several (their sum is the
    /// loss), averaged as the loss is: over the step's micro-batches and every rank's.
    pub fn loss_parts(&self) -> Vec<(String, f64)> {
        self.parts.iter().zip(&self.step_parts).map(|((n, _), &v)| (n.clone(), v)).collect()
    }

    /// Sets parameters from `params`; tensors named like no parameter are kept as given.
    pub fn set_params(&mut self, params: &Tensors) -> Result<(), RunError> {
        for (name, t) in params {
            if !self.program.write_param(name, t)? {
                self.extra.insert(name.clone(), t.clone());
            }
        }
        Ok(())
    }

    /// The optimizer state as tensors: `adamw.m/NAME`, `adamw.v/NAME` and `adamw.step`.
    pub fn optimizer_state(&mut self) -> Result<Tensors, RunError> {
        let trained = self.trained.clone();
        let mut out = Tensors::new();
        let mut opt = self.optimizer()?;
        for (k, (name, _)) in trained.iter().enumerate() {
            for (slot, key) in [(Slot::M, "m"), (Slot::V, "v")] {
                let v = opt.read_state(slot, k).unwrap_or_default();
                out.insert(
                    format!("adamw.{key}/{name}"),
                    HostTensor::f(&[v.len()], v.iter().map(|&x| x as f64).collect()),
                );
            }
        }
        drop(opt);
        out.insert("adamw.step".into(), HostTensor::f(&[1], vec![self.steps_taken as f64]));
        Ok(out)
    }

    /// Starts an exponential moving average of the trained parameters at their present
    /// values (a frozen parameter is its own average).
    pub fn start_ema(&mut self) -> Result<(), RunError> {
        self.optimizer()?.start_ema();
        Ok(())
    }

    /// `ema = decay * ema + (1 - decay) * param` for every trained parameter, on the device;
    /// nothing when no EMA was started.
    pub fn update_ema(&mut self, decay: f64) -> Result<(), RunError> {
        self.optimizer()?.update_ema(decay);
        Ok(())
    }

    /// The moving average of every parameter (a parameter not trained is its own average),
    /// or `None` without one.
    pub fn ema(&mut self) -> Result<Option<Tensors>, RunError> {
        let trained = self.trained.clone();
        let mut out = self.params()?;
        let mut opt = self.optimizer()?;
        if !opt.has_ema() {
            return Ok(None);
        }
        for (k, (name, _)) in trained.iter().enumerate() {
            if let (Some(v), Some(t)) = (opt.read_state(Slot::Ema, k), out.get_mut(name)) {
                *t = HostTensor::f(&t.shape.clone(), v.iter().map(|&x| x as f64).collect());
            }
        }
        Ok(Some(out))
    }

    /// Sets the moving average of the parameters `t` names (a checkpoint's), if one runs.
    pub fn set_ema(&mut self, t: &Tensors) -> Result<(), RunError> {
        let trained = self.trained.clone();
        let mut opt = self.optimizer()?;
        for (k, (name, _)) in trained.iter().enumerate() {
            if let Some(saved) = t.get(name) {
                let v: Vec<f32> = saved.to_f64().iter().map(|&x| x as f32).collect();
                opt.write_state(Slot::Ema, k, &v);
            }
        }
        Ok(())
    }

    /// Restores what [`Trainer::optimizer_state`] saved.
    pub fn set_optimizer_state(&mut self, t: &Tensors) -> Result<(), RunError> {
        let trained = self.trained.clone();
        let mut opt = self.optimizer()?;
        for (k, (name, _)) in trained.iter().enumerate() {
            for (slot, key) in [(Slot::M, "m"), (Slot::V, "v")] {
                let key = format!("adamw.{key}/{name}");
                let v = t.get(&key).ok_or_else(|| RunError::MissingParam(key.clone()))?;
                let values: Vec<f32> = v.to_f64().iter().map(|&x| x as f32).collect();
                if !opt.write_state(slot, k, &values) {
                    let len = opt.read_state(slot, k).map_or(0, |s| s.len());
                    return Err(RunError::ParamShape { name: key, expected: vec![len], found: v.shape.clone() });
                }
            }
        }
        drop(opt);
        let step = t.get("adamw.step").ok_or_else(|| RunError::MissingParam("adamw.step".into()))?;
        self.steps_taken = step.to_f64().first().copied().unwrap_or(0.0) as u64;
        Ok(())
    }

    /// The current parameters, as the device holds them, and any extra tensors set.
    pub fn params(&mut self) -> Result<Tensors, RunError> {
        let mut out = self.extra.clone();
        for p in &self.grads.graph.params {
            let t = self.program.read_param(&p.name).ok_or_else(|| RunError::MissingParam(p.name.clone()))?;
            out.insert(p.name.clone(), t);
        }
        Ok(out)
    }
}
