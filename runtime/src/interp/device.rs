//! The reference interpreter as a device: nothing is generated or fused; each execution
//! runs the whole graph op by op. Its "device memory" is the host's: parameters as f32
//! buffers (the precision every other device keeps them in), the optimizer of
//! [`crate::device::host`] over them. Slow, but any model runs on it, which is what makes
//! it the proof that a backend plugs in through the interface alone.

use super::{bind_inputs, check_params, run, Precision, RunError, RunOptions, Values};
use crate::device::host::{HostBuffers, HostState, HostStep};
use crate::device::{Device, DeviceError, Observer, Optimizer, Program, Tensors};
use crate::tensor::{Data, HostTensor};
use muse_compiler::ir::{Graph, NodeIndex};
use muse_compiler::kernel::{KernelProgram, Step};
use muse_compiler::report::PassReport;
use std::borrow::Cow;
use std::collections::HashMap;

/// The interpreter device.
#[derive(Clone, Copy, Debug)]
pub struct InterpDevice {
    /// Float precision of every op.
    pub precision: Precision,
}

impl Device for InterpDevice {
    fn name(&self) -> &'static str {
        "interp"
    }
    fn fuse(&self, _: &Graph, _: &[NodeIndex]) -> Option<(KernelProgram, [PassReport; 2])> {
        None
    }
    fn language(&self) -> Option<&'static str> {
        None
    }
    fn source(&self, _: &Graph, _: &Step) -> String {
        String::new()
    }
    fn compile(&self, g: &Graph, requested: &[NodeIndex]) -> Result<Box<dyn Program>, DeviceError> {
        Ok(Box::new(Interpreted {
            graph: g.clone(),
            requested: requested.to_vec(),
            precision: self.precision,
            inputs: Tensors::new(),
            bufs: Buffers::default(),
            trained: None,
            state: None,
        }))
    }
}

/// A parameter held as the devices hold it.
struct Param {
    shape: Vec<usize>,
    values: Vec<f32>,
    /// The full precision of an f64 run (f32 runs keep `values` only).
    exact: Option<Vec<f64>>,
}

impl Param {
    fn tensor(&self) -> HostTensor {
        let data = self.exact.clone().unwrap_or_else(|| self.values.iter().map(|&x| x as f64).collect());
        HostTensor::f(&self.shape, data)
    }
}

struct Interpreted {
    graph: Graph,
    requested: Vec<NodeIndex>,
    precision: Precision,
    inputs: Tensors,
    bufs: Buffers,
    /// The pairs an optimizer updates, once attached.
    trained: Option<Vec<(String, NodeIndex)>>,
    state: Option<HostState>,
}

/// What the interpreter keeps between executions.
#[derive(Default)]
struct Buffers {
    params: HashMap<String, Param>,
    /// Every value of the last execution, with each requested float as f32 (gradients).
    values: Option<(Values, HashMap<NodeIndex, Vec<f32>>)>,
}

impl Interpreted {
    fn param(&self, t: &HostTensor) -> Param {
        let exact = matches!(self.precision, Precision::F64).then(|| t.to_f64());
        Param { shape: t.shape.clone(), values: t.to_f64().iter().map(|&x| x as f32).collect(), exact }
    }
}

impl HostBuffers for Buffers {
    fn params_and_grads(&mut self, pairs: &[(String, NodeIndex)]) -> Vec<(&mut [f32], Cow<'_, [f32]>)> {
        let grads = self.values.as_ref().map(|v| &v.1);
        let mut by_name: HashMap<&str, &mut Param> = self.params.iter_mut().map(|(k, v)| (k.as_str(), v)).collect();
        let mut out = Vec::new();
        for (name, g) in pairs {
            let Some(p) = by_name.remove(name.as_str()) else { continue };
            // The optimizer changes the f32 values; an f64 copy would go stale.
            p.exact = None;
            // Before any execution there are no gradients: zeros.
            let grad = match grads.and_then(|m| m.get(g)) {
                Some(v) if v.len() == p.values.len() => Cow::Borrowed(v.as_slice()),
                _ => Cow::Owned(vec![0.0; p.values.len()]),
            };
            out.push((p.values.as_mut_slice(), grad));
        }
        out
    }
}

impl Program for Interpreted {
    fn graph(&self) -> &Graph {
        &self.graph
    }
    fn requested(&self) -> &[NodeIndex] {
        &self.requested
    }
    fn launches(&self) -> usize {
        self.graph.node_count()
    }
    fn planned_bytes(&self) -> usize {
        0
    }
    fn kernels(&self) -> Option<&KernelProgram> {
        None
    }
    fn step_name(&self, step: usize) -> String {
        self.graph
            .topo_order()
            .get(step)
            .map_or_else(|| format!("op {step}"), |&n| self.graph.node(n).op.name().to_string())
    }
    fn bind(&mut self, inputs: &Tensors, params: &Tensors) -> Result<(), RunError> {
        bind_inputs(&self.graph, inputs)?;
        check_params(&self.graph, params)?;
        self.inputs = self.graph.inputs.iter().filter_map(|(n, _)| Some((n.clone(), inputs.get(n)?.clone()))).collect();
        self.bufs.params = self.graph.params.iter().map(|p| (p.name.clone(), self.param(&params[&p.name]))).collect();
        self.bufs.values = None;
        if let Some(trained) = &self.trained {
            let sizes: Vec<usize> = trained.iter().map(|(n, _)| params.get(n).map_or(0, |t| t.len())).collect();
            self.state = Some(HostState::new(trained, &sizes));
        }
        Ok(())
    }
    fn write_input(&mut self, name: &str, t: &HostTensor) -> Result<(), RunError> {
        let Some(old) = self.inputs.get(name) else { return Ok(()) };
        if old.shape != t.shape || old.dtype() != t.dtype() {
            return Err(RunError::InputShape {
                name: name.to_string(),
                expected: format!("{:?} {} (the shape this program was bound to)", old.shape, old.dtype()),
                found: t.shape.clone(),
                why: "a bound program keeps its batch size".into(),
            });
        }
        self.inputs.insert(name.to_string(), t.clone());
        Ok(())
    }
    fn write_param(&mut self, name: &str, t: &HostTensor) -> Result<bool, RunError> {
        let Some(old) = self.bufs.params.get(name) else { return Ok(false) };
        if old.values.len() != t.len() {
            return Err(RunError::ParamShape {
                name: name.to_string(),
                expected: old.shape.clone(),
                found: t.shape.clone(),
            });
        }
        let new = Param { shape: old.shape.clone(), ..self.param(t) };
        self.bufs.params.insert(name.to_string(), new);
        Ok(true)
    }
    fn read_param(&self, name: &str) -> Option<HostTensor> {
        self.bufs.params.get(name).map(Param::tensor)
    }
    fn execute(&mut self, seed: u64) -> Result<(), RunError> {
        let params: Tensors = self.bufs.params.iter().map(|(k, p)| (k.clone(), p.tensor())).collect();
        let values = run(&self.graph, &self.inputs, &params, &RunOptions { precision: self.precision, seed })?;
        let floats = self
            .requested
            .iter()
            .filter_map(|&n| match &values.get(n).data {
                Data::F(v) => Some((n, v.iter().map(|&x| x as f32).collect())),
                _ => None,
            })
            .collect();
        self.bufs.values = Some((values, floats));
        Ok(())
    }
    fn execute_observed(&mut self, seed: u64, observe: &mut Observer) -> Result<(), RunError> {
        self.execute(seed)?;
        let values = &self.bufs.values.as_ref().expect("executed").0;
        for (i, n) in self.graph.topo_order().into_iter().enumerate() {
            if !observe(i, n, values.get(n).clone()) {
                break;
            }
        }
        Ok(())
    }
    fn read(&self, n: NodeIndex) -> Result<HostTensor, RunError> {
        let (values, _) =
            self.bufs.values.as_ref().ok_or_else(|| RunError::Program("nothing was executed yet".into()))?;
        values.0.get(&n).cloned().ok_or_else(|| RunError::Program(format!("value {n:?} is not in the graph")))
    }
    fn profile(&mut self, seed: u64, runs: usize) -> Result<Vec<f64>, RunError> {
        // One interpreted execution is timed as a whole: the ops are not launches.
        let mut times = Vec::new();
        for _ in 0..runs.max(1) {
            let t = std::time::Instant::now();
            self.execute(seed)?;
            times.push(t.elapsed().as_secs_f64() * 1e3);
        }
        times.sort_by(f64::total_cmp);
        Ok(vec![times[times.len() / 2]])
    }
    fn attach_optimizer(&mut self, trained: &[(String, NodeIndex)]) -> Result<(), RunError> {
        if !self.bufs.params.is_empty() {
            return Err(RunError::Program("attach the optimizer before binding the program".into()));
        }
        self.trained = Some(trained.to_vec());
        Ok(())
    }
    fn optimizer(&mut self) -> Result<Box<dyn Optimizer + '_>, RunError> {
        let state = self.state.as_mut().ok_or_else(|| RunError::Program("no optimizer attached".into()))?;
        Ok(Box::new(HostStep { state, buffers: &mut self.bufs }))
    }
}
