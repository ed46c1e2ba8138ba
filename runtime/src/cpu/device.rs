//! The CPU backend behind the device interface: a [`CpuProgram`] with its bound buffers
//! and the host optimizer over them.

use super::compile::CompilerSettings;
use super::{optim, CpuProgram, Prepared};
use crate::device::{step_name, unbound, Device, DeviceError, Observer, Optimizer, Program, Tensors};
use crate::interp::RunError;
use crate::tensor::HostTensor;
use muse_compiler::ir::{Graph, NodeIndex};
use muse_compiler::kernel::{KernelProgram, Step};
use muse_compiler::report::PassReport;
use std::path::PathBuf;
use std::sync::Arc;

/// What a caller may set of the CPU backend through [`crate::device::DeviceOptions`].
#[derive(Clone, Debug, Default)]
pub struct CpuOptions {
    /// Folder of compiled kernels (none: `MUSE_CACHE_DIR` or the user's cache).
    pub cache_dir: Option<PathBuf>,
    /// `-O1` instead of `-O3` (several times faster to compile; the same numbers).
    pub quick: bool,
}

/// The CPU device: generated C compiled by the system compiler.
#[derive(Clone, Debug, Default)]
pub struct CpuDevice {
    /// How C is compiled.
    pub settings: CompilerSettings,
}

impl CpuDevice {
    /// The device with the environment's compiler settings and `opts` on top.
    pub fn new(opts: &CpuOptions) -> CpuDevice {
        let mut settings = CompilerSettings::default();
        if let Some(d) = &opts.cache_dir {
            settings.cache_dir = d.clone();
        }
        if opts.quick {
            settings.flags.iter_mut().filter(|f| f.starts_with("-O")).for_each(|f| *f = "-O1".into());
        }
        CpuDevice { settings }
    }
}

impl Device for CpuDevice {
    fn name(&self) -> &'static str {
        "cpu"
    }
    fn fuse(&self, g: &Graph, requested: &[NodeIndex]) -> Option<(KernelProgram, [PassReport; 2])> {
        Some(muse_compiler::kernel::fuse(g, requested))
    }
    fn language(&self) -> Option<&'static str> {
        Some("c")
    }
    fn source(&self, g: &Graph, step: &Step) -> String {
        use muse_compiler::kernel::lower::label;
        use muse_compiler::render::c;
        match step {
            Step::Kernel(k) => c::render_kernel(&k.kernel),
            Step::MatMul(m) => {
                let mut code = format!(
                    "/* gemm template (kernels/gemm.c): {} = {} @ {}, operands read through strides{} */\n",
                    label(g, m.out),
                    label(g, m.a),
                    label(g, m.b),
                    if m.epilogue.is_some() { "; then its epilogue on each finished tile" } else { "" }
                );
                if let Some(e) = &m.epilogue {
                    code.push_str(&c::render_range(&e.kernel).unwrap_or_default());
                }
                code
            }
        }
    }
    fn compile(&self, g: &Graph, requested: &[NodeIndex]) -> Result<Box<dyn Program>, DeviceError> {
        let program =
            CpuProgram::compile(g, requested, &self.settings).map_err(|e| DeviceError::Compile(e.to_string()))?;
        let settings = self.settings.clone();
        Ok(Box::new(Bound { program, graph: g.clone(), settings, prep: None, trained: Vec::new(), state: None }))
    }
}

/// A compiled CPU program and, once bound, its buffers.
struct Bound {
    program: CpuProgram,
    graph: Graph,
    settings: CompilerSettings,
    prep: Option<Prepared>,
    /// The (parameter, gradient) pairs an optimizer updates, in its order.
    trained: Vec<(String, NodeIndex)>,
    /// The optimizer's kernels (once attached) and state (once bound).
    state: Option<(Arc<optim::Kernels>, Option<optim::State>)>,
}

impl Bound {
    fn prep(&mut self) -> Result<&mut Prepared, RunError> {
        self.prep.as_mut().ok_or_else(unbound)
    }
}

impl Program for Bound {
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
        self.prep.as_ref().map_or(0, |p| p.layout.plan.peak_bytes)
    }
    fn kernels(&self) -> Option<&KernelProgram> {
        Some(&self.program.program)
    }
    fn step_name(&self, step: usize) -> String {
        step_name(&self.program.program, step, "gemm")
    }
    fn bind(&mut self, inputs: &Tensors, params: &Tensors) -> Result<(), RunError> {
        let prep = self.program.prepare_trained(&self.graph, inputs, params, &self.trained)?;
        if let Some((kernels, state)) = self.state.as_mut() {
            let lens = self.trained.iter().map(|(n, _)| params.get(n).map_or(0, |t| t.len())).collect();
            *state = Some(optim::State::new(lens, kernels.clone()));
        }
        self.prep = Some(prep);
        Ok(())
    }
    fn write_input(&mut self, name: &str, t: &HostTensor) -> Result<(), RunError> {
        self.prep()?.write_input(name, t)
    }
    fn write_param(&mut self, name: &str, t: &HostTensor) -> Result<bool, RunError> {
        match self.prep()?.param_mut(name) {
            Some(buf) if buf.len() == t.len() => {
                buf.iter_mut().zip(t.to_f64()).for_each(|(b, v)| *b = v as f32);
                Ok(true)
            }
            Some(buf) => {
                Err(RunError::ParamShape { name: name.to_string(), expected: vec![buf.len()], found: t.shape.clone() })
            }
            None => Ok(false),
        }
    }
    fn read_param(&self, name: &str) -> Option<HostTensor> {
        self.prep.as_ref()?.read_param(name)
    }
    fn execute(&mut self, seed: u64) -> Result<(), RunError> {
        let prep = self.prep.as_mut().ok_or_else(unbound)?;
        self.program.launch(prep, seed, None);
        prep.gather_gradients();
        Ok(())
    }
    fn execute_observed(&mut self, seed: u64, observe: &mut Observer) -> Result<(), RunError> {
        let prep = self.prep.as_mut().ok_or_else(unbound)?;
        self.program.launch(prep, seed, Some(observe));
        prep.gather_gradients();
        Ok(())
    }
    fn read(&self, n: NodeIndex) -> Result<HostTensor, RunError> {
        let prep = self.prep.as_ref().ok_or_else(unbound)?;
        prep.try_read(n)
            .ok_or_else(|| RunError::Program(format!("value {n:?} is neither requested nor stored by the program")))
    }
    fn profile(&mut self, seed: u64, runs: usize) -> Result<Vec<f64>, RunError> {
        let prep = self.prep.as_mut().ok_or_else(unbound)?;
        Ok(self.program.profile(prep, seed, runs))
    }
    fn attach_optimizer(&mut self, trained: &[(String, NodeIndex)]) -> Result<(), RunError> {
        if self.prep.is_some() {
            return Err(RunError::Program("attach the optimizer before binding the program".into()));
        }
        let kernels = optim::Kernels::compile(&self.settings).map_err(|e| RunError::File(e.to_string()))?;
        self.trained = trained.to_vec();
        self.state = Some((Arc::new(kernels), None));
        Ok(())
    }
    fn optimizer(&mut self) -> Result<Box<dyn Optimizer + '_>, RunError> {
        let prep = self.prep.as_mut().ok_or_else(unbound)?;
        let state = self
            .state
            .as_mut()
            .and_then(|s| s.1.as_mut())
            .ok_or_else(|| RunError::Program("no optimizer attached".into()))?;
        Ok(Box::new(optim::Step { state, prep }))
    }
}
