//! The program interface every backend implements and every command runs through.
//!
//! A [`Device`] compiles a graph for the values a caller asks for into a [`Program`]. A
//! program is bound once to a batch size ([`Program::bind`]): from then on its inputs,
//! parameters, gradients and optimizer state live in the device's memory, and a caller
//! only uploads inputs, executes, and reads back the few values it needs (a loss, an
//! output). The optimizer ([`Optimizer`]) works on those resident buffers, so on a GPU no
//! parameter or gradient crosses to the host during a training step.
//!
//! Backends: the reference interpreter ([`crate::interp::device`]) and the CPU backend
//! (`crate::cpu`); `muse_runtime::select` is the one place that chooses between them.

pub mod host;
pub mod kind;

use crate::dist::{DistError, Reduction};
use crate::interp::RunError;
use crate::optim::AdamW;
use crate::tensor::HostTensor;
use muse_compiler::ir::{Graph, NodeIndex};
use muse_compiler::kernel::{KernelProgram, Step};
use muse_compiler::report::PassReport;
use std::collections::HashMap;

pub use kind::{DeviceKind, DeviceOptions, Selected};

/// Tensors by name.
pub type Tensors = HashMap<String, HostTensor>;

/// Why a device could not be chosen or a graph not compiled for it.
#[derive(Clone, Debug, PartialEq, thiserror::Error)]
pub enum DeviceError {
    /// The device asked for is not available on this machine or in this build.
    #[error("--device {device}: {why}")]
    Unavailable {
        /// The device's name.
        device: String,
        /// What is missing and what to do about it.
        why: String,
    },
    /// The generated code did not compile (the compiler's message and where the source is).
    #[error("{0}")]
    Compile(String),
    /// Inputs or parameters do not fit the program.
    #[error(transparent)]
    Run(#[from] RunError),
}

/// Something that compiles graphs into programs of its own.
pub trait Device {
    /// Short name (`interp`, `cpu`, `cuda`).
    fn name(&self) -> &'static str;
    /// Compiles what computing `requested` of `g` takes.
    fn compile(&self, g: &Graph, requested: &[NodeIndex]) -> Result<Box<dyn Program>, DeviceError>;
    /// The fused kernels it would run for `requested`, with the reports of the passes that
    /// made them, without generating code (the inspector's view); `None` where the device
    /// does not fuse.
    fn fuse(&self, g: &Graph, requested: &[NodeIndex]) -> Option<(KernelProgram, [PassReport; 2])>;
    /// The language its kernels are generated in (`c`, `cuda`), if any.
    fn language(&self) -> Option<&'static str>;
    /// One step of a fused program as this device runs it, in its language (a generated
    /// kernel's source; a product's template call and epilogue).
    fn source(&self, g: &Graph, step: &Step) -> String;
}

/// Called after each step of an observed execution with the step, a value it wrote and
/// that value; returning false stops the execution there.
pub type Observer<'a> = dyn FnMut(usize, NodeIndex, HostTensor) -> bool + 'a;

/// A graph compiled for one device; once bound, its buffers in the device's memory.
pub trait Program {
    /// The graph it computes.
    fn graph(&self) -> &Graph;
    /// The values it was compiled to compute (readable after each execution).
    fn requested(&self) -> &[NodeIndex];
    /// Launches per execution.
    fn launches(&self) -> usize;
    /// Bytes of device memory planned for the intermediates of one execution (0 where the
    /// device plans none).
    fn planned_bytes(&self) -> usize;
    /// The fused kernels it runs, where the device fuses (the interpreter does not).
    fn kernels(&self) -> Option<&KernelProgram>;
    /// The name of launch `step` (a kernel, a product, an interpreted op).
    fn step_name(&self, step: usize) -> String;
    /// Allocates buffers for the batch size `inputs` give and copies inputs and parameters
    /// in; every parameter of the graph must be given. Binding again replaces everything.
    fn bind(&mut self, inputs: &Tensors, params: &Tensors) -> Result<(), RunError>;
    /// Overwrites input `name` for the next execution (the bound shape; inputs the program
    /// does not read are ignored).
    fn write_input(&mut self, name: &str, t: &HostTensor) -> Result<(), RunError>;
    /// Overwrites parameter `name`; false when the graph has no such parameter.
    fn write_param(&mut self, name: &str, t: &HostTensor) -> Result<bool, RunError>;
    /// Parameter `name` as it is now.
    fn read_param(&self, name: &str) -> Option<HostTensor>;
    /// Runs every step once over the bound buffers; `seed` keys the random ops.
    fn execute(&mut self, seed: u64) -> Result<(), RunError>;
    /// As [`Program::execute`], and sums the trained gradients over the ranks of `reduce`
    /// while the backward pass still runs, where the device overlaps the two (buckets of
    /// gradients summed as soon as they are final). Returns whether it did; when not, the
    /// caller sums them after ([`Optimizer::combine_gradients`]).
    fn execute_reducing(&mut self, seed: u64, reduce: &Reduction) -> Result<bool, RunError> {
        let _ = reduce;
        self.execute(seed)?;
        Ok(false)
    }
    /// As [`Program::execute`], showing `observe` every value a step writes.
    fn execute_observed(&mut self, seed: u64, observe: &mut Observer) -> Result<(), RunError>;
    /// A requested (or, on a fusing device, stored) value of the last execution.
    fn read(&self, n: NodeIndex) -> Result<HostTensor, RunError>;
    /// Executes `runs` times, timing each step: the median milliseconds per step, in order.
    fn profile(&mut self, seed: u64, runs: usize) -> Result<Vec<f64>, RunError>;
    /// Keeps an optimizer's state for these (parameter, gradient) pairs beside them, from
    /// the next [`Program::bind`] on (which places them where one launch updates them all;
    /// call it before binding).
    fn attach_optimizer(&mut self, trained: &[(String, NodeIndex)]) -> Result<(), RunError>;
    /// The optimizer over the bound parameters and the gradients of the last execution.
    fn optimizer(&mut self) -> Result<Box<dyn Optimizer + '_>, RunError>;
}

impl dyn Program + '_ {
    /// Binds to `inputs` and `params`, executes once and returns every requested value.
    pub fn run(
        &mut self,
        inputs: &Tensors,
        params: &Tensors,
        seed: u64,
    ) -> Result<HashMap<NodeIndex, HostTensor>, RunError> {
        self.bind(inputs, params)?;
        self.execute(seed)?;
        self.requested().to_vec().into_iter().map(|n| Ok((n, self.read(n)?))).collect()
    }

    /// A requested scalar of the last execution (a loss).
    pub fn scalar(&self, n: NodeIndex) -> Result<f64, RunError> {
        Ok(self.read(n)?.to_f64().first().copied().unwrap_or(f64::NAN))
    }
}

/// The error of a program used before [`Program::bind`].
pub(crate) fn unbound() -> RunError {
    RunError::Program("the program has no buffers yet: bind it to inputs and parameters first".into())
}

/// The name of launch `step` of a fused program whose products run as `product` (`gemm`,
/// `cublas`): the kernel's, or the product's with its epilogue's.
pub(crate) fn step_name(p: &KernelProgram, step: usize, product: &str) -> String {
    match p.steps.get(step) {
        Some(Step::Kernel(k)) => k.kernel.name.clone(),
        Some(Step::MatMul(m)) => m.epilogue.as_ref().map_or(product.into(), |e| format!("{product}+{}", e.kernel.name)),
        None => format!("step {step}"),
    }
}

/// Runs `steps` steps `runs` times through `run` (which returns once the step is done),
/// timing each: the median milliseconds per step, in order (a shared machine's
/// interruptions hit single runs).
pub(crate) fn median_step_times<E>(
    steps: usize,
    runs: usize,
    mut run: impl FnMut(usize) -> Result<(), E>,
) -> Result<Vec<f64>, E> {
    let mut times: Vec<Vec<f64>> = vec![Vec::with_capacity(runs); steps];
    for _ in 0..runs.max(1) {
        for (i, t) in times.iter_mut().enumerate() {
            let start = std::time::Instant::now();
            run(i)?;
            t.push(start.elapsed().as_secs_f64() * 1e3);
        }
    }
    Ok(times
        .into_iter()
        .map(|mut t| {
            t.sort_by(f64::total_cmp);
            t[t.len() / 2]
        })
        .collect())
}

/// Which gradients an optimizer verb reads: the last execution's, or the sum kept by
/// [`Optimizer::accumulate`] over several.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Grads {
    /// The gradients the last execution left in the program's buffers.
    Pass,
    /// The accumulated sum.
    Accumulated,
}

/// Per-parameter optimizer state kept on the device.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Slot {
    /// AdamW's first moment.
    M,
    /// AdamW's second moment.
    V,
    /// The exponential moving average of the parameter.
    Ema,
}

/// One AdamW update as the device applies it.
#[derive(Clone, Debug, PartialEq)]
pub struct AdamStep {
    /// The settings.
    pub cfg: AdamW,
    /// Learning rate of this step.
    pub lr: f64,
    /// The step's number, counted from 1 (bias correction).
    pub t: u64,
    /// Each gradient is multiplied by this first (clipping, averaging of accumulation).
    pub grad_scale: f64,
}

/// The optimizer's verbs over a program's resident parameters, gradients and state, in
/// the order of [`Program::attach_optimizer`]'s pairs.
pub trait Optimizer {
    /// Adds the last execution's gradients into the accumulators (`first`: replaces them).
    fn accumulate(&mut self, first: bool);
    /// The Euclidean norm of all gradients together (f64; the same whatever the threads).
    fn gradient_norm(&mut self, grads: Grads) -> f64;
    /// Sums the gradients `grads` names over the ranks of `reduce` (every trained
    /// parameter's, one after another in the pairs' order, in the wire's element type).
    /// Returns the gradients that now hold the sum (a device whose last pass's gradients
    /// cannot be written in place copies them into the accumulators first).
    fn combine_gradients(&mut self, grads: Grads, reduce: &Reduction) -> Result<Grads, DistError>;
    /// AdamW over every parameter at once.
    fn adamw(&mut self, step: &AdamStep, grads: Grads);
    /// Starts the moving average at the parameters' present values.
    fn start_ema(&mut self);
    /// `ema = decay * ema + (1 - decay) * param`; nothing when none was started.
    fn update_ema(&mut self, decay: f64);
    /// Whether a moving average runs.
    fn has_ema(&self) -> bool;
    /// The state of the `k`-th trained parameter (flat f32), if kept.
    fn read_state(&mut self, slot: Slot, k: usize) -> Option<Vec<f32>>;
    /// Overwrites the state of the `k`-th trained parameter; false when not kept or of
    /// another size.
    fn write_state(&mut self, slot: Slot, k: usize, values: &[f32]) -> bool;
}
