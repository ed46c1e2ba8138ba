//! Fusion: which values of the graph are written to memory, and which are computed inside
//! the kernels that read them. Views become index arithmetic; elementwise chains, gathers,
//! constants and random numbers are inlined into their consumer's kernel; reductions, matrix
//! products, scans and scatter-adds anchor kernels of their own.
//!
//! Legality ([`legality`]) and profitability ([`profitability`]) are separate questions,
//! and every place a value is written to memory records why ([`CutReason`]), which
//! `muse inspect` shows.

use crate::ir::{Dim, Graph, NodeIndex, Op, Shape};
use std::collections::{BTreeMap, HashMap, HashSet};
use std::fmt;

/// Why a value is written to memory instead of being computed inside its consumers.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum CutReason {
    /// A model input or parameter: it lives in memory already.
    ExternalBuffer,
    /// The caller asked for it (an output, a loss, a gradient).
    Requested,
    /// The result of a reduction, matrix product, scan or scatter-add: kernels of their
    /// own (epilogue fusion is not implemented yet).
    AnchorResult,
    /// An operand of a matrix product: the GEMM reads memory.
    MatmulOperand,
    /// Used by several kernels: computing it once is cheaper than recomputing it in each.
    MultipleUsers,
}

impl CutReason {
    /// A short description for tables.
    pub fn describe(self) -> &'static str {
        match self {
            CutReason::ExternalBuffer => "input or parameter",
            CutReason::Requested => "requested output",
            CutReason::AnchorResult => "reduction/matmul/scan result",
            CutReason::MatmulOperand => "matmul operand",
            CutReason::MultipleUsers => "used by several kernels",
        }
    }
}

impl fmt::Display for CutReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.describe())
    }
}

/// The kind of kernel a group becomes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum GroupKind {
    /// Elementwise over the root's shape.
    Pointwise,
    /// A reduction with its elementwise prologue.
    Reduce,
    /// A matrix product.
    MatMul,
    /// A linear recurrence with its elementwise prologue.
    Scan,
    /// A scatter-add with its elementwise prologue.
    ScatterAdd,
}

/// One kernel: the value it writes and the values it computes inline.
#[derive(Clone, Debug)]
pub struct Group {
    /// The materialized node the kernel writes.
    pub root: NodeIndex,
    /// Kind of kernel.
    pub kind: GroupKind,
    /// Nodes computed inside the kernel (views, elementwise ops, constants), root excluded.
    pub inlined: Vec<NodeIndex>,
    /// Materialized nodes the kernel reads.
    pub reads: Vec<NodeIndex>,
}

/// The result of fusion.
#[derive(Clone, Debug, Default)]
pub struct FusionPlan {
    /// Materialized nodes and why.
    pub materialized: BTreeMap<NodeIndex, CutReason>,
    /// Kernels in an order that respects dependencies.
    pub groups: Vec<Group>,
}

/// A view of a buffer as a strided array: element `i` (multi-index) of the view is element
/// `offset + sum(i_k * strides[k])` of `base`'s row-major buffer.
#[derive(Clone, Debug, PartialEq)]
pub struct StridedView {
    /// The node whose buffer is read.
    pub base: NodeIndex,
    /// First element.
    pub offset: i64,
    /// Stride of each axis of the view, in elements.
    pub strides: Vec<Dim>,
}

/// Row-major strides of a shape.
pub fn contiguous_strides(s: &Shape) -> Vec<Dim> {
    let mut out = vec![Dim::known(1); s.rank()];
    for k in (0..s.rank().saturating_sub(1)).rev() {
        out[k] = out[k + 1].mul(&s.0[k + 1]).unwrap_or(Dim::known(0));
    }
    out
}

/// `n` as a strided view of the first non-view node behind it, when its chain of views
/// (reshapes of contiguous data, permutes, broadcasts, slices) allows; a GEMM then reads
/// the base buffer directly instead of a copy.
pub fn strided_view(g: &Graph, n: NodeIndex) -> Option<StridedView> {
    let mut chain = vec![n];
    let mut base = n;
    while g.node(base).op.is_view() {
        base = g.operands(base)[0];
        chain.push(base);
    }
    chain.pop();
    let mut shape = g.ty(base).shape.clone();
    let mut strides = contiguous_strides(&shape);
    let mut offset = 0i64;
    for &v in chain.iter().rev() {
        let out = g.ty(v).shape.clone();
        match &g.node(v).op {
            Op::Reshape { .. } => {
                if strides != contiguous_strides(&shape) {
                    return None;
                }
                strides = contiguous_strides(&out);
            }
            Op::Permute { perm } => strides = perm.iter().map(|&p| strides[p].clone()).collect(),
            Op::Broadcast { .. } => {
                for (k, st) in strides.iter_mut().enumerate() {
                    if shape.0[k].is(1) && !out.0[k].is(1) {
                        *st = Dim::known(0);
                    }
                }
            }
            Op::Slice { axis, start, step, .. } => {
                offset += start * strides[*axis].as_known()?;
                strides[*axis] = strides[*axis].mul(&Dim::known(*step))?;
            }
            _ => return None,
        }
        shape = out;
    }
    Some(StridedView { base, offset, strides })
}

/// Nodes a matrix product reads from memory: each operand, or the base of an operand that
/// is a strided view.
fn matmul_reads(g: &Graph, live: &HashSet<NodeIndex>) -> HashSet<NodeIndex> {
    let mut out = HashSet::new();
    for &n in live {
        if matches!(g.node(n).op, Op::MatMul) {
            for o in g.operands(n) {
                out.insert(strided_view(g, o).map_or(o, |v| v.base));
            }
        }
    }
    out
}

/// Whether a node may be computed inside its consumers at all.
pub fn legality(
    g: &Graph,
    n: NodeIndex,
    requested: &HashSet<NodeIndex>,
    matmul_reads: &HashSet<NodeIndex>,
) -> Result<(), CutReason> {
    match g.node(n).op {
        Op::Input { .. } | Op::Param { .. } => Err(CutReason::ExternalBuffer),
        Op::Reduce { .. } | Op::MatMul | Op::Scan { .. } | Op::ScatterAdd { .. } => Err(CutReason::AnchorResult),
        _ if requested.contains(&n) => Err(CutReason::Requested),
        _ if matmul_reads.contains(&n) => Err(CutReason::MatmulOperand),
        _ => Ok(()),
    }
}

/// Whether inlining a (legal) node is worth it: recomputing an elementwise op in several
/// kernels costs more than one write and several reads, unless it is as cheap as a load.
/// Views compute nothing: whether their source is written to memory is decided there.
pub fn profitability(g: &Graph, n: NodeIndex) -> Result<(), CutReason> {
    if is_cheap(g, n) || g.node(n).op.is_view() {
        return Ok(());
    }
    if consumers(g, n).len() > 1 {
        return Err(CutReason::MultipleUsers);
    }
    Ok(())
}

/// Constants, iotas and views of them cost no more to recompute than to load.
fn is_cheap(g: &Graph, n: NodeIndex) -> bool {
    match &g.node(n).op {
        Op::Const { .. } | Op::Iota { .. } => true,
        op if op.is_view() && g.operands(n).len() == 1 => is_cheap(g, g.operands(n)[0]),
        _ => false,
    }
}

/// The non-view users of `n`, looking through views.
fn consumers(g: &Graph, n: NodeIndex) -> HashSet<NodeIndex> {
    let mut out = HashSet::new();
    let mut stack = vec![n];
    let mut seen = HashSet::new();
    while let Some(v) = stack.pop() {
        for u in g.users(v) {
            if !seen.insert(u) {
                continue;
            }
            if g.node(u).op.is_view() {
                stack.push(u);
            } else {
                out.insert(u);
            }
        }
    }
    out
}

/// Plans the kernels that compute `requested` (and everything it depends on).
pub fn plan(g: &Graph, requested: &[NodeIndex]) -> FusionPlan {
    let requested: HashSet<NodeIndex> = requested.iter().copied().collect();
    // Only what the requested values depend on.
    let mut live = HashSet::new();
    let mut stack: Vec<NodeIndex> = requested.iter().copied().collect();
    while let Some(n) = stack.pop() {
        if live.insert(n) {
            stack.extend(g.operands(n));
        }
    }
    let order: Vec<NodeIndex> = g.topo_order().into_iter().filter(|n| live.contains(n)).collect();
    let mm = matmul_reads(g, &live);
    let mut materialized = BTreeMap::new();
    for &n in &order {
        if let Err(r) = legality(g, n, &requested, &mm).and_then(|_| profitability(g, n)) {
            materialized.insert(n, r);
        }
    }
    let mut groups = Vec::new();
    for &n in &order {
        if !materialized.contains_key(&n) || matches!(g.node(n).op, Op::Input { .. } | Op::Param { .. }) {
            continue;
        }
        let kind = match g.node(n).op {
            Op::Reduce { .. } => GroupKind::Reduce,
            Op::MatMul => GroupKind::MatMul,
            Op::Scan { .. } => GroupKind::Scan,
            Op::ScatterAdd { .. } => GroupKind::ScatterAdd,
            _ => GroupKind::Pointwise,
        };
        let (mut inlined, mut reads) = (Vec::new(), Vec::new());
        let mut seen = HashSet::new();
        let mut stack = g.operands(n);
        if kind == GroupKind::MatMul {
            // The GEMM reads its operands' buffers through strides; nothing is inlined.
            stack = stack.iter().map(|&o| strided_view(g, o).map_or(o, |v| v.base)).collect();
        }
        while let Some(v) = stack.pop() {
            if !seen.insert(v) {
                continue;
            }
            if materialized.contains_key(&v) {
                reads.push(v);
            } else {
                inlined.push(v);
                stack.extend(g.operands(v));
            }
        }
        inlined.sort();
        reads.sort();
        groups.push(Group { root: n, kind, inlined, reads });
    }
    FusionPlan { materialized, groups }
}

impl FusionPlan {
    /// Number of kernels.
    pub fn kernel_count(&self) -> usize {
        self.groups.len()
    }
    /// How many values are materialized for each reason.
    pub fn reasons(&self) -> HashMap<CutReason, usize> {
        let mut h = HashMap::new();
        for r in self.materialized.values() {
            *h.entry(*r).or_default() += 1;
        }
        h
    }
}
