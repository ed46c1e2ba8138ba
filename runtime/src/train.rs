//! A training step over compiled kernels: the model's forward and backward pass fused into
//! one program whose parameter buffers persist between steps, then AdamW over every
//! parameter in place. Gradients are never copied out of the program's buffers (except to
//! accumulate several micro-batches).

use crate::backend::Tensors;
use crate::cpu::compile::{CompileError, CompilerSettings};
use crate::cpu::{CpuProgram, Prepared};
use crate::interp::RunError;
use crate::optim::{self, AdamState, AdamW};
use crate::tensor::HostTensor;
use muse_compiler::autodiff::{self, Gradients};
use muse_compiler::ir::{Graph, NodeIndex};

/// What went wrong building a trainer.
#[derive(Debug)]
pub enum TrainError {
    /// The model has no loss.
    NoLoss(String),
    /// Generating or compiling kernels failed.
    Compile(CompileError),
    /// Inputs or parameters do not fit the model.
    Run(RunError),
    /// A frozen name matches no parameter.
    Freeze(String),
}

impl std::fmt::Display for TrainError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            TrainError::NoLoss(m) => write!(f, "model {m} has no loss to train"),
            TrainError::Compile(e) => write!(f, "{e}"),
            TrainError::Run(e) => write!(f, "{e}"),
            TrainError::Freeze(p) => write!(f, "nothing to freeze: no parameter is named `{p}` or `{p}.*`"),
        }
    }
}

impl std::error::Error for TrainError {}

impl From<RunError> for TrainError {
    fn from(e: RunError) -> Self {
        TrainError::Run(e)
    }
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

/// A model compiled for training on the CPU, with its parameters and optimizer state.
pub struct Trainer {
    /// The differentiated graph: loss and one gradient per parameter.
    pub grads: Gradients,
    program: CpuProgram,
    prep: Prepared,
    /// Parameters the optimizer updates (those with a gradient the program computes), in order.
    trained: Vec<(String, NodeIndex)>,
    /// Parameters that get no gradient or are frozen: kept as given (or as last set).
    frozen: Tensors,
    /// AdamW's settings.
    pub opt: AdamW,
    /// AdamW's moments and step count.
    pub state: AdamState,
    /// Forward outputs computed alongside the loss, by name.
    outputs: Vec<(String, NodeIndex)>,
    /// The model's named losses, whose sum is trained.
    parts: Vec<(String, NodeIndex)>,
    /// An exponential moving average of the parameters the program holds, by name, kept
    /// beside their buffers (see [`Trainer::update_ema`]).
    ema: Option<Vec<(String, Vec<f32>)>>,
}

impl Trainer {
    /// Differentiates `model`, compiles forward and backward, and places the parameters in
    /// the program's buffers. `example` fixes the batch size of every step.
    pub fn new(
        model: &Graph,
        name: &str,
        params: &Tensors,
        example: &Tensors,
        opt: AdamW,
        settings: &CompilerSettings,
    ) -> Result<Trainer, TrainError> {
        Trainer::with_options(model, name, params, example, opt, settings, &TrainOptions::default())
    }

    /// As [`Trainer::new`], also computing forward outputs and leaving frozen parameters alone.
    pub fn with_options(
        model: &Graph,
        name: &str,
        params: &Tensors,
        example: &Tensors,
        opt: AdamW,
        settings: &CompilerSettings,
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
        let wanted: Vec<(String, NodeIndex)> =
            grads.params.iter().filter(|(n, _)| !options.is_frozen(n)).cloned().collect();
        let mut requested = vec![grads.loss];
        requested.extend(wanted.iter().map(|x| x.1));
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
        let program = CpuProgram::compile(&grads.graph, &requested, settings).map_err(TrainError::Compile)?;
        let mut prep = program.prepare(&grads.graph, example, params)?;
        let trained: Vec<(String, NodeIndex)> =
            wanted.into_iter().filter(|(name, _)| prep.param_mut(name).is_some()).collect();
        let frozen = params
            .iter()
            .filter(|(name, _)| !trained.iter().any(|(t, _)| t == *name))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        let sizes: Vec<usize> = trained.iter().map(|(name, _)| params[name].len()).collect();
        Ok(Trainer {
            grads,
            program,
            prep,
            trained,
            frozen,
            opt,
            state: AdamState::new(&sizes),
            outputs: outs,
            parts,
            ema: None,
        })
    }

    /// Names of the parameters the optimizer updates, in optimizer-state order.
    pub fn trained(&self) -> impl Iterator<Item = &str> {
        self.trained.iter().map(|(n, _)| n.as_str())
    }

    /// Bytes the memory planner gives the intermediates of one pass (activations and
    /// gradients; parameters, inputs and optimizer state are extra).
    pub fn planned_bytes(&self) -> usize {
        self.prep.plan.peak_bytes
    }

    /// Kernel launches per forward and backward pass.
    pub fn launches(&self) -> usize {
        self.program.launches()
    }

    /// One optimizer step over one or more micro-batches (their gradients are averaged),
    /// at learning rate `lr`; `seed` keys the random ops of the pass (dropout, ...).
    pub fn step(&mut self, micro: &[&Tensors], lr: f64, seed: u64) -> Result<StepStats, RunError> {
        assert!(!micro.is_empty(), "a step needs at least one micro-batch");
        let mut loss = 0.0;
        let mut acc: Vec<Vec<f32>> = Vec::new();
        for (i, inputs) in micro.iter().enumerate() {
            self.run_pass(inputs, seed.wrapping_add(i as u64))?;
            loss += self.prep.f32s(self.grads.loss)[0] as f64;
            if micro.len() > 1 {
                let grads: Vec<&[f32]> = self.trained.iter().map(|(_, g)| self.prep.f32s(*g)).collect();
                if acc.is_empty() {
                    acc = grads.iter().map(|g| g.to_vec()).collect();
                } else {
                    acc.iter_mut().zip(grads).for_each(|(a, g)| a.iter_mut().zip(g).for_each(|(a, g)| *a += g));
                }
            }
        }
        let k = micro.len() as f64;
        loss /= k;
        let (mut params, direct): (Vec<&mut [f32]>, Vec<std::borrow::Cow<[f32]>>) =
            self.prep.params_and_grads(&self.trained).into_iter().unzip();
        let grads: Vec<&[f32]> = if acc.is_empty() {
            direct.iter().map(|g| &**g).collect()
        } else {
            acc.iter().map(Vec::as_slice).collect()
        };
        let grad_norm = optim::global_norm(&grads) / k;
        if !loss.is_finite() || !grad_norm.is_finite() {
            return Ok(StepStats { loss, grad_norm, lr, applied: false });
        }
        let scale = optim::clip_factor(grad_norm, self.opt.clip_norm) / k;
        optim::step(&self.opt, lr, &mut self.state, &mut params, &grads, scale);
        Ok(StepStats { loss, grad_norm, lr, applied: true })
    }

    /// Forward and backward over one batch, leaving loss and gradients in the buffers.
    fn run_pass(&mut self, inputs: &Tensors, seed: u64) -> Result<(), RunError> {
        for (name, _) in &self.grads.graph.inputs {
            let t = inputs.get(name).ok_or_else(|| RunError::MissingInput(name.clone()))?;
            self.prep.write_input(name, t)?;
        }
        self.program.launch(&mut self.prep, seed, None);
        Ok(())
    }

    /// The loss and every gradient for one batch, without changing anything (for tests and
    /// gradient checks).
    pub fn gradients(&mut self, inputs: &Tensors, seed: u64) -> Result<(f64, Tensors), RunError> {
        self.run_pass(inputs, seed)?;
        let loss = self.prep.f32s(self.grads.loss)[0] as f64;
        let grads = self.trained.iter().map(|(name, g)| (name.clone(), self.prep.read(*g))).collect();
        Ok((loss, grads))
    }

    /// A forward output of the last pass (one asked for in [`TrainOptions::outputs`]).
    pub fn output(&self, name: &str) -> Option<HostTensor> {
        self.outputs.iter().find(|(n, _)| n == name).map(|(_, node)| self.prep.read(*node))
    }

    /// Each named loss of the last pass when the model has several (their sum is the loss).
    pub fn loss_parts(&self) -> Vec<(String, f64)> {
        self.parts.iter().map(|(n, node)| (n.clone(), self.prep.f32s(*node)[0] as f64)).collect()
    }

    /// Sets parameters (those the program reads) from `params`; others are kept as given.
    pub fn set_params(&mut self, params: &Tensors) -> Result<(), RunError> {
        for (name, t) in params {
            if let Some(kept) = self.frozen.get_mut(name) {
                if kept.len() == t.len() {
                    *kept = t.clone();
                }
            }
            match self.prep.param_mut(name) {
                Some(buf) if buf.len() == t.len() => {
                    buf.iter_mut().zip(t.to_f64()).for_each(|(b, v)| *b = v as f32);
                }
                Some(buf) => {
                    return Err(RunError::ParamShape {
                        name: name.clone(),
                        expected: vec![buf.len()],
                        found: t.shape.clone(),
                    })
                }
                None => {
                    self.frozen.insert(name.clone(), t.clone());
                }
            }
        }
        Ok(())
    }

    /// The optimizer state as tensors: `adamw.m/NAME`, `adamw.v/NAME` and `adamw.step`.
    pub fn optimizer_state(&self) -> Tensors {
        let mut out = Tensors::new();
        for (k, (name, _)) in self.trained.iter().enumerate() {
            let f = |v: &[f32]| HostTensor::f(&[v.len()], v.iter().map(|&x| x as f64).collect());
            out.insert(format!("adamw.m/{name}"), f(&self.state.m[k]));
            out.insert(format!("adamw.v/{name}"), f(&self.state.v[k]));
        }
        out.insert("adamw.step".into(), HostTensor::f(&[1], vec![self.state.step as f64]));
        out
    }

    /// Starts an exponential moving average of the trained parameters at their present
    /// values (a frozen parameter is its own average).
    pub fn start_ema(&mut self) {
        let names: Vec<String> = self.trained.iter().map(|(n, _)| n.clone()).collect();
        let ema =
            names.into_iter().filter_map(|n| self.prep.param_mut(&n).map(|b| b.to_vec()).map(|v| (n, v))).collect();
        self.ema = Some(ema);
    }

    /// `ema = decay * ema + (1 - decay) * param` for every parameter, in place beside the
    /// parameter buffers (computed in f64, stored as f32); nothing when no EMA was started.
    pub fn update_ema(&mut self, decay: f64) {
        use rayon::prelude::*;
        let Some(ema) = self.ema.as_mut() else { return };
        let params: Vec<&[f32]> = ema
            .iter()
            .map(|(n, _)| {
                let b = self.prep.param_mut(n).expect("EMA tensors are the program's parameters");
                // SAFETY: the parameter buffers stay allocated and unchanged while this
                // function runs; the EMA vectors written below are distinct allocations.
                unsafe { std::slice::from_raw_parts(b.as_ptr(), b.len()) }
            })
            .collect();
        let mut work: Vec<(&mut [f32], &[f32])> = Vec::new();
        for ((_, e), p) in ema.iter_mut().zip(params) {
            for (ec, pc) in e.chunks_mut(1 << 16).zip(p.chunks(1 << 16)) {
                work.push((ec, pc));
            }
        }
        work.into_par_iter().for_each(|(e, p)| {
            for (e, &p) in e.iter_mut().zip(p) {
                *e = (decay * *e as f64 + (1.0 - decay) * p as f64) as f32;
            }
        });
    }

    /// The moving average of every parameter (those the program does not hold as given),
    /// or `None` without one.
    pub fn ema(&self) -> Option<Tensors> {
        let ema = self.ema.as_ref()?;
        let mut out = self.frozen.clone();
        for p in &self.grads.graph.params {
            if let Some((_, v)) = ema.iter().find(|(n, _)| *n == p.name) {
                out.insert(p.name.clone(), host_tensor(p, v));
            }
        }
        Some(out)
    }

    /// Sets the moving average of the parameters `t` names (a checkpoint's), if one runs.
    pub fn set_ema(&mut self, t: &Tensors) {
        if let Some(ema) = self.ema.as_mut() {
            for (name, v) in ema.iter_mut() {
                if let Some(saved) = t.get(name).filter(|s| s.len() == v.len()) {
                    v.iter_mut().zip(saved.to_f64()).for_each(|(v, s)| *v = s as f32);
                }
            }
        }
    }

    /// Restores what [`Trainer::optimizer_state`] saved.
    pub fn set_optimizer_state(&mut self, t: &Tensors) -> Result<(), RunError> {
        let get = |key: String, len: usize| -> Result<Vec<f32>, RunError> {
            let v = t.get(&key).ok_or_else(|| RunError::MissingParam(key.clone()))?;
            if v.len() != len {
                return Err(RunError::ParamShape { name: key, expected: vec![len], found: v.shape.clone() });
            }
            Ok(v.to_f64().iter().map(|&x| x as f32).collect())
        };
        for (k, (name, _)) in self.trained.iter().enumerate() {
            let len = self.state.m[k].len();
            self.state.m[k] = get(format!("adamw.m/{name}"), len)?;
            self.state.v[k] = get(format!("adamw.v/{name}"), len)?;
        }
        self.state.step = get("adamw.step".into(), 1)?[0] as u64;
        Ok(())
    }

    /// The current parameters, trained and frozen.
    pub fn params(&mut self) -> Tensors {
        let mut out = self.frozen.clone();
        for p in &self.grads.graph.params {
            if let Some(buf) = self.prep.param_mut(&p.name) {
                out.insert(p.name.clone(), host_tensor(p, buf));
            }
        }
        out
    }
}

/// Values of parameter `p` as a host tensor of its shape.
fn host_tensor(p: &muse_compiler::ir::ParamInfo, values: &[f32]) -> HostTensor {
    let shape: Vec<usize> =
        p.ty.shape.0.iter().map(|d| d.as_known().expect("parameter sizes are known") as usize).collect();
    HostTensor::f(&shape, values.iter().map(|&x| x as f64).collect())
}
