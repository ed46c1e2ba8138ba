//! The reference interpreter: runs a graph op by op on the host, without fusion, in f32 or
//! (for finite differences) f64. It is the oracle for every faster backend.

pub mod device;
pub mod ops;

pub use ops::Precision;

use crate::rng;
use crate::tensor::HostTensor;
use muse_compiler::ir::{Dim, Graph, NodeIndex, Op, Shape};
use std::collections::HashMap;

/// Settings of one interpreter run.
#[derive(Clone, Copy, Debug)]
pub struct RunOptions {
    /// Float precision.
    pub precision: Precision,
    /// Run seed, mixed into every random op's own seed.
    pub seed: u64,
}

impl Default for RunOptions {
    fn default() -> Self {
        RunOptions { precision: Precision::F32, seed: 0 }
    }
}

/// Why a graph could not be run on the given tensors.
#[derive(Clone, Debug, PartialEq, thiserror::Error)]
pub enum RunError {
    /// An input the graph declares was not given.
    #[error("input `{0}` was not given")]
    MissingInput(String),
    /// An input has the wrong element type.
    #[error("input `{name}` must be {expected}, but a {found} tensor was given")]
    InputDType {
        /// Input name.
        name: String,
        /// Declared element type.
        expected: String,
        /// Given element type.
        found: String,
    },
    /// An input's shape does not fit its declaration.
    #[error("input `{name}` must have shape {expected}, but has {found:?}: {why}")]
    InputShape {
        /// Input name.
        name: String,
        /// Declared shape (with symbols).
        expected: String,
        /// Given shape.
        found: Vec<usize>,
        /// What exactly does not fit.
        why: String,
    },
    /// A parameter is missing from the given set (e.g. a safetensors file).
    #[error("parameter `{0}` is missing")]
    MissingParam(String),
    /// A parameter has the wrong shape.
    #[error("parameter `{name}` has shape {found:?}, but the model declares {expected:?}")]
    ParamShape {
        /// Parameter name.
        name: String,
        /// Shape the model declares.
        expected: Vec<usize>,
        /// Shape found.
        found: Vec<usize>,
    },
    /// An index tensor points outside the table it indexes.
    #[error("{op}: index {index} is outside 0..{rows}")]
    IndexOutOfRange {
        /// Which op (`gather` or `scatter_add`) and where it came from.
        op: String,
        /// The offending index.
        index: i64,
        /// The number of rows.
        rows: usize,
    },
    /// A tensor, at the sizes bound, would take more than the memory budget.
    #[error("{what} would be {ty}, {bytes}: more than the memory budget of {budget} (a smaller --batch or model; MUSE_MEMORY_LIMIT sets the budget, by default the machine's memory)")]
    TooLarge {
        /// Which tensor.
        what: String,
        /// Its type at the bound sizes.
        ty: String,
        /// Its size.
        bytes: String,
        /// The budget.
        budget: String,
    },
    /// A file could not be read or parsed.
    #[error("{0}")]
    File(String),
    /// A program was used out of order (read before it ran, an optimizer not attached):
    /// a fault of the caller, named.
    #[error("{0}")]
    Program(String),
}

/// Values of symbolic sizes (the batch `B`), solved from the inputs.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Bindings(pub HashMap<String, i64>);

impl Bindings {
    /// Concrete sizes of a shape.
    pub fn shape(&self, s: &Shape) -> Option<Vec<usize>> {
        s.0.iter().map(|d| self.dim(d)).collect()
    }
    fn dim(&self, d: &Dim) -> Option<usize> {
        d.eval(&|s| self.0.get(s).copied()).and_then(|v| usize::try_from(v).ok())
    }
}

/// Solves the symbolic sizes from the given inputs and checks every input.
pub fn bind_inputs(g: &Graph, inputs: &HashMap<String, HostTensor>) -> Result<Bindings, RunError> {
    let mut b = Bindings::default();
    let mut from: HashMap<String, String> = HashMap::new();
    for (name, n) in &g.inputs {
        let ty = g.ty(*n);
        let t = inputs.get(name).ok_or_else(|| RunError::MissingInput(name.clone()))?;
        if t.dtype() != ty.dtype {
            return Err(RunError::InputDType {
                name: name.clone(),
                expected: ty.dtype.to_string(),
                found: t.dtype().to_string(),
            });
        }
        let bad = |why: String| RunError::InputShape {
            name: name.clone(),
            expected: ty.shape.to_string(),
            found: t.shape.clone(),
            why,
        };
        if t.shape.len() != ty.shape.rank() {
            return Err(bad(format!("{} axes instead of {}", t.shape.len(), ty.shape.rank())));
        }
        for (axis, (d, &actual)) in ty.shape.0.iter().zip(&t.shape).enumerate() {
            let unbound: Vec<&String> = d.syms.iter().filter(|s| !b.0.contains_key(*s)).collect();
            if let Some(sym) = unbound.first().copied() {
                if unbound.iter().any(|s| *s != sym) {
                    return Err(bad(format!("axis {axis} ({d}) has several unknown sizes")));
                }
                let power = unbound.len() as u32;
                let known: i64 = d.coeff * d.syms.iter().filter_map(|s| b.0.get(s)).product::<i64>();
                let rest = actual as i64;
                if known == 0 || rest % known != 0 {
                    return Err(bad(format!("axis {axis} is {actual}, not a multiple of {known}")));
                }
                let v = nth_root(rest / known, power)
                    .ok_or_else(|| bad(format!("axis {axis} ({d}) does not fit {actual}")))?;
                b.0.insert(sym.clone(), v);
                from.insert(sym.clone(), name.clone());
            }
            let want = b.dim(d).expect("bound above");
            if want != actual {
                let why = match d.syms.first() {
                    Some(s) => {
                        format!("axis {axis} is {actual}, but {d} = {want} ({s} = {} from input `{}`)", b.0[s], from[s])
                    }
                    None => format!("axis {axis} is {actual}, not {want}"),
                };
                return Err(bad(why));
            }
        }
    }
    crate::budget::check(g, &|s| b.0.get(s).copied())?;
    Ok(b)
}

fn nth_root(v: i64, k: u32) -> Option<i64> {
    if k == 1 {
        return Some(v);
    }
    let r = (v as f64).powf(1.0 / k as f64).round() as i64;
    (r.checked_pow(k) == Some(v)).then_some(r)
}

/// Checks that every parameter of the graph is present with its declared shape.
pub fn check_params(g: &Graph, params: &HashMap<String, HostTensor>) -> Result<(), RunError> {
    for p in &g.params {
        let t = params.get(&p.name).ok_or_else(|| RunError::MissingParam(p.name.clone()))?;
        let expected = Bindings::default().shape(&p.ty.shape).expect("parameter sizes are known");
        if t.shape != expected || t.dtype() != p.ty.dtype {
            return Err(RunError::ParamShape { name: p.name.clone(), expected, found: t.shape.clone() });
        }
    }
    Ok(())
}

/// The value of every node of a run.
#[derive(Clone, Debug, Default)]
pub struct Values(pub HashMap<NodeIndex, HostTensor>);

impl Values {
    /// The value of node `n`.
    pub fn get(&self, n: NodeIndex) -> &HostTensor {
        &self.0[&n]
    }
}

/// Runs every node of `g` on the given inputs and parameters.
pub fn run(
    g: &Graph,
    inputs: &HashMap<String, HostTensor>,
    params: &HashMap<String, HostTensor>,
    opts: &RunOptions,
) -> Result<Values, RunError> {
    let bindings = bind_inputs(g, inputs)?;
    check_params(g, params)?;
    let mut vals: HashMap<NodeIndex, HostTensor> = HashMap::with_capacity(g.node_count());
    let p = opts.precision;
    for n in g.topo_order() {
        let node = g.node(n);
        let shape = bindings.shape(&node.ty.shape).expect("every symbol is bound by the inputs");
        let ins: Vec<&HostTensor> = g.operands(n).iter().map(|o| &vals[o]).collect();
        let where_ = || {
            format!("{} at {}", node.op.name(), if node.prov.path.is_empty() { "model level" } else { &node.prov.path })
        };
        let v = match &node.op {
            Op::Input { name } => inputs[name].clone(),
            Op::Param { name } => params[name].clone(),
            Op::Const { value } => ops::constant(&shape, node.ty.dtype, *value, p),
            Op::Iota { axis } => ops::iota(&shape, *axis, node.ty.dtype),
            Op::Random { dist, seed } => ops::random(&shape, *dist, rng::stream_key(opts.seed, *seed), p),
            Op::Unary(u) => ops::unary(*u, ins[0], p),
            Op::Binary(b) => ops::binary(*b, ins[0], ins[1], p),
            Op::Select => ops::select(ins[0], ins[1], ins[2]),
            Op::Cast { to } => ops::cast(ins[0], *to, p),
            Op::Reduce { op, axis } => ops::reduce(*op, ins[0], *axis, p),
            Op::Reshape { .. } => ops::reshape(ins[0], &shape),
            Op::Permute { perm } => ops::permute(ins[0], perm),
            Op::Broadcast { .. } => ops::broadcast(ins[0], &shape),
            Op::Slice { axis, start, end, step } => {
                ops::slice(ins[0], *axis, *start as usize, *end as usize, *step as usize)
            }
            Op::Pad { axis, before, after, value } => {
                ops::pad(ins[0], *axis, *before as usize, *after as usize, *value, p)
            }
            Op::Concat { axis } => ops::concat(&ins, *axis),
            Op::MatMul => ops::matmul(ins[0], ins[1], p),
            Op::Gather => ops::gather(ins[0], ins[1]).map_err(|index| RunError::IndexOutOfRange {
                op: where_(),
                index,
                rows: ins[0].shape[0],
            })?,
            Op::ScatterAdd { .. } => ops::scatter_add(ins[0], ins[1], shape[0], p)
                .map_err(|index| RunError::IndexOutOfRange { op: where_(), index, rows: shape[0] })?,
            Op::Scan { axis, reverse } => ops::scan(ins[0], ins[1], *axis, *reverse, p),
            Op::StopGradient => ins[0].clone(),
        };
        debug_assert_eq!(v.shape, shape, "{} produced the wrong shape", where_());
        vals.insert(n, v);
    }
    Ok(Values(vals))
}

/// Initial values of every parameter from its initialiser, seeded by `seed`.
pub fn init_params(g: &Graph, seed: u64, precision: Precision) -> Result<HashMap<String, HostTensor>, RunError> {
    let opts = RunOptions { precision, seed };
    let mut out = HashMap::new();
    for p in &g.params {
        let vals = run(&p.init, &HashMap::new(), &HashMap::new(), &opts)?;
        let (_, n) = p.init.outputs.first().expect("an initialiser has one output");
        out.insert(p.name.clone(), vals.get(*n).clone());
    }
    Ok(out)
}
