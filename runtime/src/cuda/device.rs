//! The CUDA backend behind the device interface: a [`GpuProgram`] with its resident buffers
//! and the optimizer on the device, over any [`Gpu`] (an NVIDIA GPU, `--device cuda`; the
//! CPU simulation, `--device cuda-sim`).

use super::gpu::Gpu;
use super::optim;
use super::program::{run_error, GpuProgram, Resident};
use crate::device::{Device, DeviceError, Observer, Optimizer, Program, Tensors};
use crate::interp::RunError;
use crate::tensor::HostTensor;
use muse_compiler::ir::{Graph, NodeIndex};
use muse_compiler::kernel::{KernelProgram, Step};
use muse_compiler::render::cuda::{self, Storage};
use muse_compiler::report::PassReport;
use std::sync::Arc;

/// A GPU as a device.
pub struct CudaDevice<G: Gpu> {
    gpu: Arc<G>,
    name: &'static str,
}

impl<G: Gpu> CudaDevice<G> {
    /// The device over `gpu`, called `name` on the command line.
    pub fn new(gpu: G, name: &'static str) -> CudaDevice<G> {
        CudaDevice { gpu: Arc::new(gpu), name }
    }

    /// The GPU it runs on.
    pub fn gpu(&self) -> &Arc<G> {
        &self.gpu
    }
}

impl<G: Gpu> Device for CudaDevice<G> {
    fn name(&self) -> &'static str {
        self.name
    }
    fn fuse(&self, g: &Graph, requested: &[NodeIndex]) -> Option<(KernelProgram, [PassReport; 2])> {
        Some(muse_compiler::kernel::fuse(g, requested))
    }
    fn language(&self) -> Option<&'static str> {
        Some("cuda")
    }
    fn source(&self, g: &Graph, step: &Step) -> String {
        use muse_compiler::kernel::lower::label;
        match step {
            Step::Kernel(k) => cuda::render_kernel(&k.kernel, Storage::F32),
            Step::MatMul(m) => format!(
                "/* {} = {} @ {}: one cuBLAS call (operands it cannot read through strides are gathered first){} */\n{}",
                label(g, m.out),
                label(g, m.a),
                label(g, m.b),
                if m.epilogue.is_some() { ", then its epilogue over the whole result" } else { "" },
                m.epilogue.as_ref().map(|e| cuda::render_kernel(&e.kernel, Storage::F32)).unwrap_or_default()
            ),
        }
    }
    fn compile(&self, g: &Graph, requested: &[NodeIndex]) -> Result<Box<dyn Program>, DeviceError> {
        let program = GpuProgram::compile(&self.gpu, g, requested).map_err(|e| DeviceError::Compile(e.to_string()))?;
        Ok(Box::new(Bound {
            gpu: self.gpu.clone(),
            program,
            graph: g.clone(),
            resident: None,
            trained: Vec::new(),
            state: None,
        }))
    }
}

/// A compiled GPU program and, once bound, its buffers.
struct Bound<G: Gpu> {
    gpu: Arc<G>,
    program: GpuProgram<G>,
    graph: Graph,
    resident: Option<Resident<G>>,
    /// The (parameter, gradient) pairs an optimizer updates, in its order.
    trained: Vec<(String, NodeIndex)>,
    /// The optimizer's kernels (once attached) and state (once bound).
    state: Option<Attached<G>>,
}

/// An attached optimizer's kernels and, once bound, its state.
type Attached<G> = (Arc<optim::Kernels<G>>, Option<optim::State<G>>);

fn unbound() -> RunError {
    RunError::Program("the program has no buffers yet: bind it to inputs and parameters first".into())
}

impl<G: Gpu> Bound<G> {
    fn resident(&self) -> Result<&Resident<G>, RunError> {
        self.resident.as_ref().ok_or_else(unbound)
    }
    /// The first failure an optimizer verb recorded, once.
    fn optimizer_failure(&mut self) -> Result<(), RunError> {
        match self.state.as_mut().and_then(|s| s.1.as_mut()).and_then(|s| s.error.take()) {
            Some(e) => Err(RunError::Program(format!("the optimizer on the GPU failed: {e}"))),
            None => Ok(()),
        }
    }
}

impl<G: Gpu> Program for Bound<G> {
    fn graph(&self) -> &Graph {
        &self.graph
    }
    fn requested(&self) -> &[NodeIndex] {
        &self.program.requested
    }
    fn launches(&self) -> usize {
        self.program.launches()
    }
    fn planned_bytes(&self) -> usize {
        self.resident.as_ref().map_or(0, |r| r.layout.plan.peak_bytes)
    }
    fn kernels(&self) -> Option<&KernelProgram> {
        Some(&self.program.program)
    }
    fn step_name(&self, step: usize) -> String {
        match self.program.program.steps.get(step) {
            Some(Step::Kernel(k)) => k.kernel.name.clone(),
            Some(Step::MatMul(m)) => {
                m.epilogue.as_ref().map_or("cublas".into(), |e| format!("cublas+{}", e.kernel.name))
            }
            None => format!("step {step}"),
        }
    }
    fn bind(&mut self, inputs: &Tensors, params: &Tensors) -> Result<(), RunError> {
        // The old buffers go first: a GPU may not hold two bindings.
        self.resident = None;
        let resident = self.program.bind(&self.graph, inputs, params, &self.trained)?;
        if let Some((kernels, state)) = self.state.as_mut() {
            *state = None;
            let lens = self.trained.iter().map(|(n, _)| params.get(n).map_or(0, |t| t.len())).collect();
            *state = Some(optim::State::new(&self.gpu, lens, kernels.clone()).map_err(run_error)?);
        }
        self.resident = Some(resident);
        Ok(())
    }
    fn write_input(&mut self, name: &str, t: &HostTensor) -> Result<(), RunError> {
        let dtype = match self.graph.inputs.iter().find(|(n, _)| n == name) {
            Some((_, node)) => self.graph.ty(*node).dtype,
            None => return Ok(()),
        };
        self.resident()?.write_input(name, t, dtype)
    }
    fn write_param(&mut self, name: &str, t: &HostTensor) -> Result<bool, RunError> {
        self.resident()?.write_param(name, t)
    }
    fn read_param(&self, name: &str) -> Option<HostTensor> {
        self.resident.as_ref()?.read_param(&self.graph, name).ok().flatten()
    }
    fn execute(&mut self, seed: u64) -> Result<(), RunError> {
        self.optimizer_failure()?;
        let r = self.resident.as_ref().ok_or_else(unbound)?;
        self.program.execute(&self.graph, r, seed, None).map_err(run_error)
    }
    fn execute_observed(&mut self, seed: u64, observe: &mut Observer) -> Result<(), RunError> {
        self.optimizer_failure()?;
        let r = self.resident.as_ref().ok_or_else(unbound)?;
        self.program.execute(&self.graph, r, seed, Some(observe)).map_err(run_error)
    }
    fn read(&self, n: NodeIndex) -> Result<HostTensor, RunError> {
        self.resident()?
            .read(&self.graph, n)
            .map_err(run_error)?
            .ok_or_else(|| RunError::Program(format!("value {n:?} is neither requested nor stored by the program")))
    }
    fn profile(&mut self, seed: u64, runs: usize) -> Result<Vec<f64>, RunError> {
        let r = self.resident.as_ref().ok_or_else(unbound)?;
        self.program.profile(r, seed, runs).map_err(run_error)
    }
    fn attach_optimizer(&mut self, trained: &[(String, NodeIndex)]) -> Result<(), RunError> {
        if self.resident.is_some() {
            return Err(RunError::Program("attach the optimizer before binding the program".into()));
        }
        let kernels = optim::Kernels::load(&*self.gpu).map_err(|e| RunError::File(e.to_string()))?;
        self.trained = trained.to_vec();
        self.state = Some((Arc::new(kernels), None));
        Ok(())
    }
    fn optimizer(&mut self) -> Result<Box<dyn Optimizer + '_>, RunError> {
        let resident = self.resident.as_ref().ok_or_else(unbound)?;
        let state = self
            .state
            .as_mut()
            .and_then(|s| s.1.as_mut())
            .ok_or_else(|| RunError::Program("no optimizer attached".into()))?;
        Ok(Box::new(optim::Step { state, resident }))
    }
}
