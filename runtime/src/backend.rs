//! The backend interface: compile a graph for the values a caller needs, then run it.
//! The reference interpreter and the CPU backend implement it; the CUDA backend will too.

use crate::cpu::compile::{CompileError, CompilerSettings};
use crate::cpu::CpuProgram;
use crate::interp::{self, Precision, RunError, RunOptions};
use crate::tensor::HostTensor;
use muse_compiler::ir::{Graph, NodeIndex};
use std::collections::HashMap;

/// Tensors by name.
pub type Tensors = HashMap<String, HostTensor>;

/// A graph compiled for one backend.
pub trait Executable {
    /// Runs it on inputs and parameters; returns the requested values.
    fn run(
        &self,
        g: &Graph,
        inputs: &Tensors,
        params: &Tensors,
        seed: u64,
    ) -> Result<HashMap<NodeIndex, HostTensor>, RunError>;
    /// Kernel launches per run.
    fn launches(&self) -> usize;
}

/// Something that compiles graphs.
pub trait Backend {
    /// Short name (`interp`, `cpu`).
    fn name(&self) -> &'static str;
    /// Compiles what computing `requested` takes.
    fn compile(&self, g: &Graph, requested: &[NodeIndex]) -> Result<Box<dyn Executable>, CompileError>;
}

/// The reference interpreter as a backend: nothing to compile, one "launch" per node.
pub struct Interpreter {
    /// Float precision.
    pub precision: Precision,
}

struct Interpreted {
    requested: Vec<NodeIndex>,
    precision: Precision,
    nodes: usize,
}

impl Executable for Interpreted {
    fn run(
        &self,
        g: &Graph,
        inputs: &Tensors,
        params: &Tensors,
        seed: u64,
    ) -> Result<HashMap<NodeIndex, HostTensor>, RunError> {
        let v = interp::run(g, inputs, params, &RunOptions { precision: self.precision, seed })?;
        Ok(self.requested.iter().map(|&n| (n, v.get(n).clone())).collect())
    }
    fn launches(&self) -> usize {
        self.nodes
    }
}

impl Backend for Interpreter {
    fn name(&self) -> &'static str {
        "interp"
    }
    fn compile(&self, g: &Graph, requested: &[NodeIndex]) -> Result<Box<dyn Executable>, CompileError> {
        Ok(Box::new(Interpreted { requested: requested.to_vec(), precision: self.precision, nodes: g.node_count() }))
    }
}

/// The CPU backend: fused kernels in generated C.
#[derive(Default)]
pub struct Cpu {
    /// How C is compiled.
    pub settings: CompilerSettings,
}

impl Executable for CpuProgram {
    fn run(
        &self,
        g: &Graph,
        inputs: &Tensors,
        params: &Tensors,
        seed: u64,
    ) -> Result<HashMap<NodeIndex, HostTensor>, RunError> {
        CpuProgram::run(self, g, inputs, params, seed)
    }
    fn launches(&self) -> usize {
        CpuProgram::launches(self)
    }
}

impl Backend for Cpu {
    fn name(&self) -> &'static str {
        "cpu"
    }
    fn compile(&self, g: &Graph, requested: &[NodeIndex]) -> Result<Box<dyn Executable>, CompileError> {
        Ok(Box::new(CpuProgram::compile(g, requested, &self.settings)?))
    }
}

/// The backend called `name`.
pub fn by_name(name: &str) -> Option<Box<dyn Backend>> {
    match name {
        "interp" => Some(Box::new(Interpreter { precision: Precision::F32 })),
        "cpu" => Some(Box::new(Cpu::default())),
        _ => None,
    }
}
