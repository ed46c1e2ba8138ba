//! Where the values of a program bound to inputs and parameters live, for any device that
//! runs a kernel program step by step from the host: the run-time sizes and shapes, the
//! buffers (inputs, the parameter arena, the memory plan's slots) and each value's place in
//! them, and each product's operands as strides or offset tables. A device allocates the
//! buffers in its own memory and computes nothing of this itself.

use crate::interp::{bind_inputs, check_params, RunError};
use crate::memory::{self, MemoryPlan};
use crate::tensor::{Data, HostTensor};
use muse_compiler::ir::{DType, Graph, NodeIndex, Op};
use muse_compiler::kernel::{KernelProgram, Step};
use std::collections::{BTreeMap, HashMap, HashSet};

/// Generated kernels clamp indices instead of trapping; the ids a user passes are checked
/// here instead, with the interpreter's error, so a bad token id is an error, not a quiet
/// wrong answer.
pub(crate) fn check_indices(g: &Graph, inputs: &HashMap<String, HostTensor>) -> Result<(), RunError> {
    for (name, bound) in crate::inputs::index_limits(g) {
        let Some(Data::I(v)) = inputs.get(&name).map(|t| &t.data) else { continue };
        if let Some(&bad) = v.iter().find(|&&x| x < 0 || x as i64 >= bound) {
            return Err(RunError::IndexOutOfRange {
                op: format!("input `{name}`"),
                index: bad as i64,
                rows: bound as usize,
            });
        }
    }
    Ok(())
}

/// Where the elements along one axis of a product's operand lie: one stride, or (an axis
/// made of runs that are not adjacent in memory) the offset of each index.
#[derive(Clone, Debug)]
pub enum Axis {
    /// Every index one stride apart.
    Stride(isize),
    /// The offset of each index.
    Table(Vec<i64>),
}

impl Axis {
    /// The axis of `runs` (extent, stride), outermost first.
    pub fn of(runs: &[(usize, isize)]) -> Axis {
        match runs {
            [(_, s)] => Axis::Stride(*s),
            _ => Axis::Table(mixed_radix(runs)),
        }
    }
    /// The stride (0 for a table).
    pub fn stride(&self) -> i64 {
        match self {
            Axis::Stride(s) => *s as i64,
            Axis::Table(_) => 0,
        }
    }
    /// The offset table (null for a stride).
    pub fn table(&self) -> *const i64 {
        match self {
            Axis::Stride(_) => std::ptr::null(),
            Axis::Table(t) => t.as_ptr(),
        }
    }
    /// The offset of index `i`.
    pub fn offset(&self, i: usize) -> isize {
        match self {
            Axis::Stride(s) => i as isize * s,
            Axis::Table(t) => t[i] as isize,
        }
    }
}

/// The offset of every index of an axis of `runs` (extent, stride), outermost first.
pub fn mixed_radix(runs: &[(usize, isize)]) -> Vec<i64> {
    let mut out = vec![0i64];
    for &(e, s) in runs {
        out = out.iter().flat_map(|&o| (0..e).map(move |i| o + (i as isize * s) as i64)).collect();
    }
    out
}

/// One GEMM step resolved at a batch size: the product's sizes, how the operands' rows and
/// columns lie, and where each batch element's operands start in their base buffers.
pub struct GemmShape {
    /// Rows of the product.
    pub rows: usize,
    /// The summed axis.
    pub inner: usize,
    /// Columns of the product.
    pub cols: usize,
    /// How A's rows lie.
    pub a_rows: Axis,
    /// How A's columns lie.
    pub a_cols: Axis,
    /// How B's rows lie.
    pub b_rows: Axis,
    /// How B's columns lie.
    pub b_cols: Axis,
    /// Where each batch element's A starts in its base buffer.
    pub a_offsets: Vec<i64>,
    /// Where each batch element's B starts in its base buffer.
    pub b_offsets: Vec<i64>,
}

impl GemmShape {
    /// The product of operands of shapes `sa` and `sb` read through views `va` and `vb`
    /// (offset, runs of each axis).
    pub fn new(
        sa: &[usize],
        sb: &[usize],
        va: (i64, &[Vec<(usize, isize)>]),
        vb: (i64, &[Vec<(usize, isize)>]),
    ) -> Self {
        let r = sa.len();
        // Each batch axis's runs, outermost first, enumerate the batch in row-major order.
        let offsets = |(offset, axes): (i64, &[Vec<(usize, isize)>])| -> Vec<i64> {
            let runs: Vec<(usize, isize)> = axes[..r - 2].iter().flatten().copied().collect();
            mixed_radix(&runs).into_iter().map(|o| o + offset).collect()
        };
        GemmShape {
            rows: sa[r - 2],
            inner: sa[r - 1],
            cols: sb[r - 1],
            a_rows: Axis::of(&va.1[r - 2]),
            a_cols: Axis::of(&va.1[r - 1]),
            b_rows: Axis::of(&vb.1[r - 2]),
            b_cols: Axis::of(&vb.1[r - 1]),
            a_offsets: offsets(va),
            b_offsets: offsets(vb),
        }
    }

    /// Whether both operands are plain strided matrices (what a CBLAS or the gemm crate take).
    pub fn strided(&self) -> bool {
        [&self.a_rows, &self.a_cols, &self.b_rows, &self.b_cols].iter().all(|a| matches!(a, Axis::Stride(_)))
    }
}

/// Where a value lives.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Place {
    /// A buffer of its own (an input, a parameter that is not f32).
    External(NodeIndex),
    /// The parameter arena, from this element.
    Param(usize),
    /// Planned slot `k`, from element `offset`.
    Slot(usize, usize),
}

/// What a buffer of its own is filled from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Holds {
    /// The input of this name.
    Input(String),
    /// The parameter of this name.
    Param(String),
}

/// The places of a program's values at bound sizes.
///
/// The f32 parameters lie side by side in one arena, the trained ones first in optimizer
/// order; their gradients are planned side by side in the memory plan's arena slot at the
/// same offsets (those computed in place; the rest, `grad_copies`, are copied there after
/// each run), so an optimizer updates every parameter with one launch per verb.
pub struct Layout {
    /// The value of each symbolic size, in the program's order.
    pub sizes: Vec<i64>,
    /// Values with a buffer of their own and what fills it.
    pub external: HashMap<NodeIndex, Holds>,
    /// Each f32 parameter's element offset and length in the arena.
    pub param_at: HashMap<NodeIndex, (usize, usize)>,
    /// Elements of the parameter arena.
    pub arena_len: usize,
    /// Elements of the trained stretch at the start of both arenas.
    pub trained_len: usize,
    /// Trained gradients not computed in the gradient arena: (offset, node), copied in.
    pub grad_copies: Vec<(usize, NodeIndex)>,
    /// Where the intermediates live.
    pub plan: MemoryPlan,
    /// Each product step's operands.
    pub gemms: HashMap<usize, GemmShape>,
    /// The shape of each requested or planned value.
    pub shapes: HashMap<NodeIndex, Vec<usize>>,
    /// Values that are views of another's buffer.
    pub aliases: BTreeMap<NodeIndex, NodeIndex>,
    /// Each input the program reads: its node and bound shape.
    pub inputs: HashMap<String, (NodeIndex, Vec<usize>)>,
    /// Each parameter of the graph: its node (held even when no kernel reads it, so that
    /// the optimizer and checkpoints see every parameter).
    pub params: HashMap<String, NodeIndex>,
    /// Each parameter's shape.
    pub param_shapes: HashMap<String, Vec<usize>>,
}

impl Layout {
    /// The layout of `program` (computing `requested` of `g`) bound to `inputs` and
    /// `params`, with the parameters of `trained` (parameter, gradient) first in the arena.
    pub fn new(
        g: &Graph,
        program: &KernelProgram,
        requested: &[NodeIndex],
        inputs: &HashMap<String, HostTensor>,
        params: &HashMap<String, HostTensor>,
        trained: &[(String, NodeIndex)],
    ) -> Result<Layout, RunError> {
        let bindings = bind_inputs(g, inputs)?;
        check_params(g, params)?;
        check_indices(g, inputs)?;
        let sizes: Vec<i64> = program.symbols.iter().map(|s| bindings.0[s]).collect();
        let mut shapes: HashMap<NodeIndex, Vec<usize>> = HashMap::new();
        let mut shape_of = |n: NodeIndex| -> Vec<usize> {
            shapes.entry(n).or_insert_with(|| bindings.shape(&g.ty(n).shape).expect("symbols are bound")).clone()
        };
        // Inputs get buffers of their own, f32 parameters one arena (the trained first, in
        // optimizer order); intermediates share planned slots.
        let mut external: HashMap<NodeIndex, Holds> = HashMap::new();
        for &n in program.materialized.keys() {
            if let Op::Input { name } = &g.node(n).op {
                external.insert(n, Holds::Input(name.clone()));
            }
        }
        let node_of: HashMap<&str, NodeIndex> =
            g.g.node_indices()
                .filter_map(|n| if let Op::Param { name } = &g.node(n).op { Some((name.as_str(), n)) } else { None })
                .collect();
        let mut order: Vec<&str> =
            trained.iter().map(|(n, _)| n.as_str()).filter(|n| node_of.contains_key(n)).collect();
        let trained_count = order.len();
        order.extend(g.params.iter().map(|p| p.name.as_str()).filter(|n| !trained.iter().any(|(t, _)| t == n)));
        let (mut arena_len, mut param_at, mut trained_len) = (0, HashMap::new(), 0);
        for (i, name) in order.iter().enumerate() {
            let (Some(&n), Some(t)) = (node_of.get(name), params.get(*name)) else { continue };
            match &t.data {
                Data::F(v) => {
                    param_at.insert(n, (arena_len, v.len()));
                    arena_len += v.len();
                }
                _ => {
                    external.insert(n, Holds::Param(name.to_string()));
                }
            }
            if i + 1 == trained_count {
                trained_len = arena_len;
            }
        }
        let lens: HashMap<NodeIndex, usize> =
            g.g.node_indices().map(|n| (n, shape_of(n).iter().product::<usize>())).collect();
        // Each trained gradient computed by a step of its own goes to its parameter's offset
        // in the gradient arena; the others are copied there after each run.
        let writes: HashSet<NodeIndex> = program.steps.iter().flat_map(|s| s.writes()).collect();
        let (mut pinned, mut grad_copies) = (Vec::new(), Vec::new());
        let mut seen = HashSet::new();
        for (name, grad) in trained {
            let Some(&(off, len)) = node_of.get(name.as_str()).and_then(|n| param_at.get(n)) else { continue };
            let src = program.aliases.get(grad).copied().unwrap_or(*grad);
            if writes.contains(&src) && lens[&src] == len && g.ty(src).dtype == DType::F32 && seen.insert(src) {
                pinned.push((src, off));
            } else {
                grad_copies.push((off, *grad));
            }
        }
        let plan = memory::plan_pinned(g, program, requested, &|n| lens[&n], &pinned, trained_len);
        let dim = |d: &muse_compiler::ir::Dim| d.eval(&|s| bindings.0.get(s).copied()).expect("bound");
        let resolve = |v: &muse_compiler::view::OperandView| -> Vec<Vec<(usize, isize)>> {
            v.axes.iter().map(|runs| runs.iter().map(|(e, s)| (dim(e) as usize, dim(s) as isize)).collect()).collect()
        };
        let mut gemms = HashMap::new();
        for (i, step) in program.steps.iter().enumerate() {
            if let Step::MatMul(m) = step {
                let (va, vb) = (resolve(&m.a_view), resolve(&m.b_view));
                let shape =
                    GemmShape::new(&shape_of(m.a), &shape_of(m.b), (m.a_view.offset, &va), (m.b_view.offset, &vb));
                gemms.insert(i, shape);
            }
        }
        let mut all_shapes = HashMap::new();
        for n in requested.iter().chain(plan.slot_of.keys()) {
            all_shapes.insert(*n, shape_of(*n));
        }
        let input_nodes = g
            .inputs
            .iter()
            .filter(|(_, n)| external.contains_key(n))
            .map(|(name, n)| (name.clone(), (*n, shape_of(*n))))
            .collect();
        let param_nodes = node_of.iter().map(|(name, n)| (name.to_string(), *n)).collect();
        let param_shapes = g.params.iter().map(|p| (p.name.clone(), params[&p.name].shape.clone())).collect();
        Ok(Layout {
            sizes,
            external,
            param_at,
            arena_len,
            trained_len,
            grad_copies,
            plan,
            gemms,
            shapes: all_shapes,
            aliases: program.aliases.clone(),
            inputs: input_nodes,
            params: param_nodes,
            param_shapes,
        })
    }

    /// Where value `n` lives (through its alias); none for a value that is not stored.
    pub fn place(&self, n: NodeIndex) -> Option<Place> {
        let src = self.aliases.get(&n).copied().unwrap_or(n);
        if self.external.contains_key(&src) {
            return Some(Place::External(src));
        }
        if let Some(&(off, _)) = self.param_at.get(&src) {
            return Some(Place::Param(off));
        }
        let k = *self.plan.slot_of.get(&src)?;
        Some(Place::Slot(k, self.plan.offset_of.get(&src).copied().unwrap_or(0)))
    }

    /// The parameter arena's initial contents.
    pub fn arena(&self, params: &HashMap<String, HostTensor>) -> Vec<f32> {
        let mut arena = vec![0.0f32; self.arena_len];
        for (name, n) in &self.params {
            if let (Some(&(off, len)), Some(t)) = (self.param_at.get(n), params.get(name)) {
                arena[off..off + len].iter_mut().zip(t.to_f64()).for_each(|(a, v)| *a = v as f32);
            }
        }
        arena
    }

    /// The tensor that fills external buffer `held`.
    pub fn source<'a>(
        held: &Holds,
        inputs: &'a HashMap<String, HostTensor>,
        params: &'a HashMap<String, HostTensor>,
    ) -> &'a HostTensor {
        match held {
            Holds::Input(name) => &inputs[name],
            Holds::Param(name) => &params[name],
        }
    }
}
