//! The CUDA backend behind the device interface: a [`GpuProgram`] with its resident buffers
//! and the optimizer on the device, over any [`Gpu`] (an NVIDIA GPU, `--device cuda`; the
//! CPU simulation, `--device cuda-sim`).

use super::gpu::Gpu;
use super::optim;
use super::program::{run_error, GpuProgram, Resident};
use crate::buckets;
use crate::device::{step_name, unbound, Device, DeviceError, Observer, Optimizer, Program, Tensors};
use crate::dist::Reduction;
use crate::interp::RunError;
use crate::tensor::{Data, HostTensor};
use muse_compiler::ir::{Graph, NodeIndex};
use muse_compiler::kernel::{KernelProgram, Step};
use muse_compiler::render::cuda::{self, Storage};
use muse_compiler::report::PassReport;
use std::sync::Arc;

/// A GPU as a device.
pub struct CudaDevice<G: Gpu> {
    gpu: Arc<G>,
    name: &'static str,
    storage: Storage,
}

impl<G: Gpu> CudaDevice<G> {
    /// The device over `gpu`, called `name` on the command line, storing float buffers as
    /// `storage` (f32, or bf16 with f32 arithmetic: `--dtype bf16`).
    pub fn new(gpu: G, name: &'static str, storage: Storage) -> CudaDevice<G> {
        CudaDevice { gpu: Arc::new(gpu), name, storage }
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
            Step::Kernel(k) => cuda::render_kernel(&k.kernel, self.storage),
            Step::MatMul(m) => format!(
                "/* {} = {} @ {}: one cuBLAS call (operands it cannot read through strides are gathered first){} */\n{}",
                label(g, m.out),
                label(g, m.a),
                label(g, m.b),
                if m.epilogue.is_some() { ", then its epilogue over the whole result" } else { "" },
                m.epilogue.as_ref().map(|e| cuda::render_kernel(&e.kernel, self.storage)).unwrap_or_default()
            ),
        }
    }
    fn compile(&self, g: &Graph, requested: &[NodeIndex]) -> Result<Box<dyn Program>, DeviceError> {
        let program = GpuProgram::compile(&self.gpu, g, requested, self.storage)
            .map_err(|e| DeviceError::Compile(e.to_string()))?;
        Ok(Box::new(Bound {
            gpu: self.gpu.clone(),
            program,
            graph: g.clone(),
            resident: None,
            trained: Vec::new(),
            state: None,
            buckets: None,
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
    /// The gradient buckets of the binding, for the bucket size in elements they were cut for.
    buckets: Option<(usize, Vec<buckets::Bucket>)>,
}

/// An attached optimizer's kernels and, once bound, its state.
type Attached<G> = (Arc<optim::Kernels<G>>, Option<optim::State<G>>);

impl<G: Gpu> Bound<G> {
    fn resident(&self) -> Result<&Resident<G>, RunError> {
        self.resident.as_ref().ok_or_else(unbound)
    }
    /// The position of parameter `name` among the optimizer's.
    fn trained_index(&self, name: &str) -> Option<usize> {
        self.trained.iter().position(|(n, _)| n == name)
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
        step_name(&self.program.program, step, "cublas")
    }
    fn bind(&mut self, inputs: &Tensors, params: &Tensors) -> Result<(), RunError> {
        // The old buffers go first: a GPU may not hold two bindings.
        self.resident = None;
        self.buckets = None;
        let resident = self.program.bind(&self.graph, inputs, params, &self.trained)?;
        if let Some((kernels, state)) = self.state.as_mut() {
            *state = None;
            let lens = self.trained.iter().map(|(n, _)| params.get(n).map_or(0, |t| t.len())).collect();
            let st = optim::State::new(&self.gpu, lens, kernels.clone(), &resident).map_err(run_error)?;
            // Master weights (bf16 storage) start at the given f32 values, not their rounding.
            for (k, (name, _)) in self.trained.iter().enumerate() {
                if let Some(t) = params.get(name) {
                    let values: Vec<f32> = t.to_f64().iter().map(|&x| x as f32).collect();
                    st.write_master(k, &values).map_err(run_error)?;
                }
            }
            *state = Some(st);
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
        let written = self.resident()?.write_param(name, t)?;
        if let (Some(k), Some(state)) = (self.trained_index(name), self.state.as_ref().and_then(|s| s.1.as_ref())) {
            let values: Vec<f32> = t.to_f64().iter().map(|&x| x as f32).collect();
            state.write_master(k, &values).map_err(run_error)?;
        }
        Ok(written)
    }
    fn read_param(&self, name: &str) -> Option<HostTensor> {
        let held = self.resident.as_ref()?.read_param(&self.graph, name).ok().flatten()?;
        // A trained parameter's f32 master weights, where the program holds it in bf16.
        let state = self.state.as_ref().and_then(|s| s.1.as_ref());
        match (self.trained_index(name), state) {
            (Some(k), Some(state)) => match state.read_master(k).ok().flatten() {
                Some(v) => Some(HostTensor { shape: held.shape, data: Data::F(v.iter().map(|&x| x as f64).collect()) }),
                None => Some(held),
            },
            _ => Some(held),
        }
    }
    fn execute(&mut self, seed: u64) -> Result<(), RunError> {
        self.optimizer_failure()?;
        let r = self.resident.as_ref().ok_or_else(unbound)?;
        self.program.execute(&self.graph, r, seed, None).map_err(run_error)
    }
    fn execute_reducing(&mut self, seed: u64, reduce: &Reduction) -> Result<bool, RunError> {
        self.optimizer_failure()?;
        let r = self.resident.as_ref().ok_or_else(unbound)?;
        let state = self.state.as_mut().and_then(|s| s.1.as_mut());
        let (Some(grads), Some(state)) = (r.grad_arena, state) else {
            self.program.execute(&self.graph, r, seed, None).map_err(run_error)?;
            return Ok(false);
        };
        // Bucket sizes count bytes on the wire (bf16 gradients travel as bf16).
        let bytes = if r.bf16 { 2 } else { reduce.wire.bytes() };
        let elems = (reduce.bucket_bytes / bytes).max(1);
        if self.buckets.as_ref().is_none_or(|b| b.0 != elems) {
            self.buckets = Some((elems, buckets::plan(&self.program.program, &r.layout, &self.trained, elems)));
        }
        let plan = &self.buckets.as_ref().expect("planned above").1;
        let (end, bf16) = (self.program.program.steps.len(), r.bf16);
        let mut next = 0;
        self.program
            .execute_with(&self.graph, r, seed, None, &mut |i| {
                while let Some(b) = plan.get(next).filter(|b| b.after <= i) {
                    state.reduce(grads, (b.offset, b.len), bf16, reduce)?;
                    next += 1;
                }
                if i == end {
                    state.finish_reductions()?;
                }
                Ok(())
            })
            .map_err(run_error)?;
        Ok(true)
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
