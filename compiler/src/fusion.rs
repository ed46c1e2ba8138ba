//! Fusion: which values of the graph are written to memory, and which are computed inside
//! the kernels that read them. Views become index arithmetic; elementwise chains, gathers,
//! constants and random numbers are inlined into their consumer's kernel; reductions, matrix
//! products, scans and scatter-adds anchor kernels of their own.
//!
//! Legality ([`legality`]) and profitability ([`profitability`]) are separate questions,
//! and every place a value is written to memory records why ([`CutReason`]), which
//! `muse inspect` shows.

use crate::ir::{Graph, NodeIndex, Op, ReduceOp, Shape, UnaryOp};
use crate::view::{contiguous_strides, operand_view, strided_view};
use std::collections::{BTreeMap, HashMap, HashSet};
use std::fmt;

/// Why a value is written to memory instead of being computed inside its consumers.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum CutReason {
    /// A model input or parameter: it lives in memory already.
    ExternalBuffer,
    /// The caller asked for it (an output, a loss, a gradient).
    Requested,
    /// The result of a reduction, matrix product, scan or scatter-add read by another kernel
    /// (a reduction's elementwise users over its rows share its kernel; the others cannot).
    AnchorResult,
    /// An operand of a matrix product: the GEMM reads memory.
    MatmulOperand,
    /// Used by several kernels: computing it once is cheaper than recomputing it in each.
    MultipleUsers,
    /// Computed inside a row kernel (a reduction's epilogue) but also read by another kernel.
    ReadByAnotherKernel,
    /// Read through several different views inside one kernel (a convolution's taps of a
    /// padded input): inlined, every element would be computed once per view.
    ReadThroughManyViews,
}

impl CutReason {
    /// A short description for tables.
    pub fn describe(self) -> &'static str {
        match self {
            CutReason::ExternalBuffer => "input or parameter",
            CutReason::Requested => "requested output",
            CutReason::AnchorResult => "reduction/matmul/scan result read by another kernel",
            CutReason::MatmulOperand => "matmul operand",
            CutReason::MultipleUsers => "used by several kernels",
            CutReason::ReadByAnotherKernel => "row-kernel value read by another kernel",
            CutReason::ReadThroughManyViews => "read through several views (taps): computed once",
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
    /// Reductions along one axis with their elementwise prologue and epilogue (row kernel).
    Row,
    /// A matrix product.
    MatMul,
    /// A linear recurrence with its elementwise prologue.
    Scan,
    /// A scatter-add with its elementwise prologue.
    ScatterAdd,
}

/// One kernel: the values it writes and the values it computes inline.
#[derive(Clone, Debug)]
pub struct Group {
    /// The first value the kernel writes (a reduction for row kernels).
    pub root: NodeIndex,
    /// Every value the kernel writes to memory.
    pub outputs: Vec<NodeIndex>,
    /// For row kernels: the nodes computed per row (reductions, their elementwise users).
    pub members: Vec<NodeIndex>,
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
    /// Requested values that are contiguous views (reshapes) of a materialized value: they
    /// are read from that value's buffer instead of being copied.
    pub aliases: BTreeMap<NodeIndex, NodeIndex>,
    /// Kernels in an order that respects dependencies.
    pub groups: Vec<Group>,
}

/// Nodes a matrix product reads from memory: each operand, or the base of an operand that
/// is a strided view.
fn matmul_reads(g: &Graph, live: &HashSet<NodeIndex>) -> HashSet<NodeIndex> {
    let mut out = HashSet::new();
    for &n in live {
        if matches!(g.node(n).op, Op::MatMul) {
            for o in g.operands(n) {
                out.insert(operand_view(g, o).map_or(o, |v| v.base));
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

/// Whether computing a (legal) node inside the kernels that consume it is worth it: yes
/// when its value flows into a single kernel or it is as cheap as a load (constants, views);
/// no when several kernels would each recompute it.
pub fn profitability(g: &Graph, n: NodeIndex, consumer_kernels: usize) -> Result<(), CutReason> {
    if is_cheap(g, n) || g.node(n).op.is_view() || consumer_kernels <= 1 || is_expanding(g, n) {
        return Ok(());
    }
    Err(CutReason::MultipleUsers)
}

/// Most views of one computed value a kernel may read before the value is stored once instead.
const MAX_VIEW_PATHS: usize = 2;

/// The number of different ways consumers index `n`: 1 for direct elementwise use (the same
/// element), plus one per chain of views to a non-view user (`slice(pad(x), k)` per tap).
fn view_paths(g: &Graph, n: NodeIndex, live: &HashSet<NodeIndex>, memo: &mut HashMap<NodeIndex, usize>) -> usize {
    if let Some(&v) = memo.get(&n) {
        return v;
    }
    let mut direct = 0;
    let mut through_views = 0usize;
    for u in g.users(n) {
        if !live.contains(&u) {
            continue;
        }
        if g.node(u).op.is_view() {
            through_views = through_views.saturating_add(view_paths(g, u, live, memo));
        } else {
            direct = 1;
        }
    }
    let v = direct + through_views;
    memo.insert(n, v);
    v
}

/// A short elementwise chain over one source of its own size (SiLU's `exp(-x)`, `1 + e`, the
/// tanh of GELU's `0.797 (x + 0.045 x^3)`): each consumer recomputing it from that source
/// reads as many bytes as reading a stored copy would, and nothing is written, so it is
/// recomputed (rematerialised). Ops are counted once each however often the chain reuses
/// them; GELU's tanh (7 ops) had been written, then `1 + tanh` and the GELU itself, three
/// tensors the size of the MLP's hidden layer, where its product could write the GELU alone.
fn is_remat(g: &Graph, n: NodeIndex) -> bool {
    fn chain(g: &Graph, n: NodeIndex, depth: usize, seen: &mut HashSet<NodeIndex>) -> Option<()> {
        if !is_elementwise(&g.node(n).op) || !seen.insert(n) {
            return Some(());
        }
        if depth > MAX_REMAT_OPS || seen.len() > MAX_REMAT_OPS {
            return None;
        }
        for o in g.operands(n) {
            chain(g, o, depth + 1, seen)?;
        }
        Some(())
    }
    is_elementwise(&g.node(n).op)
        && chain(g, n, 0, &mut HashSet::new()).is_some()
        && leaf_elems(g, n) <= 1.25 * elems(g, n)
}

/// Elements (at batch 8) of the distinct values `n`'s elementwise ops and views read, each
/// counted at most at `n`'s size: what every recomputation of `n` loads. A residual stream
/// summed from three branches reads three tensors; recomputed in every layernorm after it,
/// the sums had each read up to seven.
fn leaf_elems(g: &Graph, n: NodeIndex) -> f64 {
    let own = elems(g, n);
    let (mut stack, mut seen, mut total) = (vec![n], HashSet::new(), 0.0);
    while let Some(v) = stack.pop() {
        if !seen.insert(v) {
            continue;
        }
        let op = &g.node(v).op;
        match op {
            Op::Const { .. } | Op::Iota { .. } => {}
            _ if is_elementwise(op) || op.is_view() => stack.extend(g.operands(v)),
            _ => total += elems(g, v).min(own),
        }
    }
    total
}

/// Most elementwise ops a rematerialised chain may have.
const MAX_REMAT_OPS: usize = 10;

/// What the main pass of [`plan`] decided besides what is in memory.
struct MainPass<'a> {
    row_of: &'a HashMap<NodeIndex, usize>,
    kinds: &'a [GroupKind],
    live: &'a HashSet<NodeIndex>,
    matmul_reads: &'a HashSet<NodeIndex>,
    sinks: &'a HashMap<NodeIndex, HashSet<Sink>>,
}

/// Full-size values of a row kernel that other kernels read (layernorm's `x - mean` and
/// `(x - mean) rstd`, softmax's `exp(x - max)`) are recomputed by those kernels from what is
/// in memory anyway (the row kernel's input) and the row's reductions, written once per row,
/// instead of being written in full: the same bytes read, one tensor fewer written. A
/// layernorm's forward had written three tensors of its input's size, and at muse_small's
/// shapes it is bound by those stores. Decided after the main pass, when what is in memory is
/// known; a value whose chain is longer than [`MAX_REMAT_OPS`], reaches an unwritten
/// reduction or product, is a product's operand, is read through many views, or flows into
/// a scan stays written.
fn recompute_row_values(
    g: &Graph,
    materialized: &mut BTreeMap<NodeIndex, CutReason>,
    main: &MainPass,
    paths_memo: &mut HashMap<NodeIndex, usize>,
) {
    let MainPass { row_of, kinds, live, matmul_reads, sinks } = *main;
    let candidates: Vec<NodeIndex> = materialized
        .iter()
        .filter(|(n, r)| **r == CutReason::ReadByAnotherKernel && row_of.contains_key(n))
        .map(|(n, _)| *n)
        .rev()
        .collect();
    for n in candidates {
        let k = row_of[&n];
        if kinds[k] != GroupKind::Row
            || !is_elementwise(&g.node(n).op)
            || matmul_reads.contains(&n)
            || view_paths(g, n, live, paths_memo) > MAX_VIEW_PATHS
        {
            continue;
        }
        // Where the other kernels that read n run: not in a scan, whose steps make every
        // recomputed operation expensive.
        let into_scan = g.users(n).into_iter().filter(|u| live.contains(u) && row_of.get(u) != Some(&k)).any(|u| {
            let group_kind = |s: &Sink| matches!(s, Sink::Group(j) if kinds[*j] == GroupKind::Scan);
            match row_of.get(&u) {
                Some(&j) => kinds[j] == GroupKind::Scan,
                None if materialized.contains_key(&u) => false,
                None => sinks.get(&u).is_some_and(|ss| ss.iter().any(group_kind)),
            }
        });
        if into_scan {
            continue;
        }
        let Some(per_row) = row_chain(g, n, k, row_of, materialized) else { continue };
        materialized.remove(&n);
        for p in per_row {
            let reason = if matches!(g.node(p).op, Op::Reduce { .. }) {
                CutReason::AnchorResult
            } else {
                CutReason::ReadByAnotherKernel
            };
            materialized.entry(p).or_insert(reason);
        }
    }
}

/// The row values (of row kernel `k`) that recomputing `n` elsewhere reads through a
/// broadcast, or `None` when `n` cannot be recomputed cheaply: more than [`MAX_REMAT_OPS`]
/// elementwise ops down to values in memory, more elements read than `n` has (a quarter
/// more allowed for parameters and the like), or a reduction, product or scan on the way
/// that is not in memory.
fn row_chain(
    g: &Graph,
    n: NodeIndex,
    k: usize,
    row_of: &HashMap<NodeIndex, usize>,
    materialized: &BTreeMap<NodeIndex, CutReason>,
) -> Option<Vec<NodeIndex>> {
    let (mut stack, mut seen, mut ops, mut per_row) = (vec![n], HashSet::new(), 0usize, Vec::new());
    // Elements read from memory: recomputing must not read more than reading n would (a
    // layernorm over a residual stream summed inline would read every term again).
    let mut read = 0.0;
    while let Some(v) = stack.pop() {
        if !seen.insert(v) {
            continue;
        }
        if v != n && materialized.contains_key(&v) {
            read += elems(g, v);
            if read > 1.25 * elems(g, n) {
                return None;
            }
            continue;
        }
        let op = &g.node(v).op;
        match op {
            Op::Const { .. } | Op::Iota { .. } => {}
            Op::Broadcast { .. } if row_of.get(&v) == Some(&k) => per_row.push(g.operands(v)[0]),
            _ if op.is_view() => stack.extend(g.operands(v)),
            // A transcendental per element costs more than reading it back: softmax's exp,
            // recomputed in its backward, made that kernel 2.5x slower over rows of 16.
            Op::Unary(u) if !matches!(u, UnaryOp::Neg | UnaryOp::Abs | UnaryOp::Not) => return None,
            _ if is_elementwise(op) => {
                ops += 1;
                if ops > MAX_REMAT_OPS {
                    return None;
                }
                stack.extend(g.operands(v));
            }
            _ => return None,
        }
    }
    Some(per_row)
}

/// Elements (at batch 8) `n` is computed from when its elementwise ops and broadcasts are
/// recomputed: a broadcast counts its source once, constants count nothing.
fn source_elems(g: &Graph, n: NodeIndex, memo: &mut HashMap<NodeIndex, f64>) -> f64 {
    if let Some(&v) = memo.get(&n) {
        return v;
    }
    let own = elems(g, n);
    let v = match &g.node(n).op {
        Op::Const { .. } | Op::Iota { .. } => 0.0,
        op if is_elementwise(op) || matches!(op, Op::Broadcast { .. }) => {
            g.operands(n).into_iter().map(|o| source_elems(g, o, memo).min(own)).sum::<f64>().min(own)
        }
        Op::Reshape { .. } | Op::Permute { .. } => source_elems(g, g.operands(n)[0], memo),
        _ => own,
    };
    memo.insert(n, v);
    v
}

fn elems(g: &Graph, n: NodeIndex) -> f64 {
    g.ty(n).shape.numel().and_then(|d| d.eval(&|_| Some(8))).unwrap_or(i64::MAX) as f64
}

/// An outer-product-like value (Mamba's `exp(dt A)` is [B, L, E, N] from [B, L, E] and
/// [E, N]): at least four times larger than what it is computed from, so each consumer
/// recomputing it reads less memory than one copy written and read back.
fn is_expanding(g: &Graph, n: NodeIndex) -> bool {
    is_elementwise(&g.node(n).op) && source_elems(g, n, &mut HashMap::new()) * 4.0 <= elems(g, n)
}

/// Constants, iotas and views of them cost no more to recompute than to load.
fn is_cheap(g: &Graph, n: NodeIndex) -> bool {
    match &g.node(n).op {
        Op::Const { .. } | Op::Iota { .. } => true,
        op if op.is_view() && g.operands(n).len() == 1 => is_cheap(g, g.operands(n)[0]),
        _ => false,
    }
}

/// Shape of a reduction's input and its axis: the rows a row kernel iterates.
fn row_key(g: &Graph, r: NodeIndex) -> Option<(Shape, usize)> {
    match g.node(r).op {
        Op::Reduce { axis, .. } => Some((g.ty(g.operands(r)[0]).shape.clone(), axis)),
        _ => None,
    }
}

fn is_elementwise(op: &Op) -> bool {
    matches!(op, Op::Unary(_) | Op::Binary(_) | Op::Select | Op::Cast { .. } | Op::StopGradient)
}

/// The reductions that follow `r` one axis at a time (`sum` over B, then over L, as a
/// broadcast's gradient makes them): each the only user of the previous, with the same op.
/// A row kernel reduces them all in one loop over the combined axes.
pub fn reduction_chain(
    g: &Graph,
    r: NodeIndex,
    live: &HashSet<NodeIndex>,
    requested: &HashSet<NodeIndex>,
) -> Vec<NodeIndex> {
    let mut chain = vec![r];
    let Op::Reduce { op, .. } = g.node(r).op else { return chain };
    if matches!(op, ReduceOp::ArgMax | ReduceOp::ArgMin) {
        return chain;
    }
    loop {
        let last = *chain.last().expect("non-empty");
        if requested.contains(&last) {
            return chain;
        }
        let users: Vec<NodeIndex> = g.users(last).into_iter().filter(|u| live.contains(u)).collect();
        match users.as_slice() {
            [u] if matches!(g.node(*u).op, Op::Reduce { op: o2, .. } if o2 == op) => chain.push(*u),
            _ => return chain,
        }
    }
}

/// Grows the row kernel of reduction `r`: later reductions over the same rows and the
/// elementwise users of their results (directly on the reduced shape, or broadcast back
/// along the reduced axes), as long as nothing outside the kernel sits in between. A chain
/// of reductions over several axes counts as one reduction over all of them.
fn grow_row(
    g: &Graph,
    r: NodeIndex,
    live: &HashSet<NodeIndex>,
    taken: &HashMap<NodeIndex, usize>,
    pos: &HashMap<NodeIndex, usize>,
    requested: &HashSet<NodeIndex>,
) -> Vec<NodeIndex> {
    let (s, axis) = row_key(g, r).expect("a reduction");
    let chain = reduction_chain(g, r, live, requested);
    let last = *chain.last().expect("non-empty");
    let reduced = g.ty(last).shape.clone();
    let mut members: HashSet<NodeIndex> = chain.iter().copied().collect();
    let mut order = chain.clone();
    let mut frontier = vec![last];
    while let Some(v) = frontier.pop() {
        let mut users = g.users(v);
        users.retain(|u| live.contains(u) && !members.contains(u) && !taken.contains_key(u));
        for u in users {
            let ty = g.ty(u);
            let ops = g.operands(u);
            let fits = match &g.node(u).op {
                op if is_elementwise(op) => ty.shape == reduced || ty.shape == s,
                Op::Broadcast { shape } => shape == &s && g.ty(ops[0]).shape == reduced && members.contains(&ops[0]),
                // Later reductions join only single-axis kernels (layernorm's second pass).
                Op::Reduce { .. } => {
                    chain.len() == 1
                        && row_key(g, u) == Some((s.clone(), axis))
                        && reduction_chain(g, u, live, requested).len() == 1
                }
                _ => false,
            };
            if !fits {
                continue;
            }
            let acyclic = ops.iter().all(|&o| members.contains(&o) || !depends_on_members(g, o, &members, pos, r));
            if acyclic {
                members.insert(u);
                order.push(u);
                frontier.push(u);
            }
        }
    }
    // Topological order: a later phase may read an earlier one (node indices need not be).
    order.sort_by_key(|n| pos[n]);
    order
}

/// Whether operand `o` (outside `members`) depends on a member; only nodes after `first`
/// in topological order can, since every member depends on `first`.
fn depends_on_members(
    g: &Graph,
    o: NodeIndex,
    members: &HashSet<NodeIndex>,
    pos: &HashMap<NodeIndex, usize>,
    first: NodeIndex,
) -> bool {
    let mut stack = vec![o];
    let mut seen = HashSet::new();
    while let Some(v) = stack.pop() {
        if members.contains(&v) {
            return true;
        }
        if pos[&v] > pos[&first] && seen.insert(v) {
            stack.extend(g.operands(v));
        }
    }
    false
}

/// Grows the kernel of scan `s`: its elementwise users over the same shape, reductions
/// over another axis of known size (the state axis of a selective scan; the forward has one,
/// `sum_n h C`, the backward several, one per gradient summed over the states), and the
/// elementwise work after them, as long as nothing outside the kernel sits in between.
fn grow_scan(
    g: &Graph,
    s: NodeIndex,
    live: &HashSet<NodeIndex>,
    taken: &HashMap<NodeIndex, usize>,
    pos: &HashMap<NodeIndex, usize>,
) -> Vec<NodeIndex> {
    let Op::Scan { axis, .. } = g.node(s).op else { unreachable!() };
    let sh = g.ty(s).shape.clone();
    let mut members: HashSet<NodeIndex> = HashSet::from([s]);
    let mut order = vec![s];
    // (state axis, keepdim shape, squeezed shape) once a reduction joined.
    let mut reduced: Option<(usize, Shape, Shape)> = None;
    // Members that need a reduction's result: per step, they run after all the reductions,
    // so no reduction may read them.
    let mut after: HashSet<NodeIndex> = HashSet::new();
    // Folds over the steps.
    let mut folded: HashSet<NodeIndex> = HashSet::new();
    let mut frontier = vec![s];
    while let Some(v) = frontier.pop() {
        let mut users = g.users(v);
        users.retain(|u| live.contains(u) && !members.contains(u) && !taken.contains_key(u));
        for u in users {
            let ty = g.ty(u);
            let ops = g.operands(u);
            let fits = match (&g.node(u).op, &reduced) {
                // A fold over the steps of a full-shape value (a gradient summed over the
                // sequence): one accumulator per lane and state, stored after the last step.
                (Op::Reduce { axis: n, op }, _) if *n == axis => {
                    matches!(op, ReduceOp::Sum | ReduceOp::Max | ReduceOp::Min)
                        && members.contains(&ops[0])
                        && g.ty(ops[0]).shape == sh
                        && !after.contains(&ops[0])
                }
                (op, None) if is_elementwise(op) => ty.shape == sh,
                // The state axis is the innermost one (contiguous, as Mamba's N) and small:
                // the states of a lane then sit side by side in memory and registers.
                (Op::Reduce { axis: n, .. }, None) => {
                    *n != axis
                        && *n + 1 == sh.rank()
                        && g.ty(ops[0]).shape == sh
                        && sh.0[*n].as_known().is_some_and(|k| (2..=64).contains(&k))
                }
                (Op::Reduce { axis: n, .. }, Some((first, keep, _))) => {
                    n == first && &ty.shape == keep && g.ty(ops[0]).shape == sh && !after.contains(&ops[0])
                }
                (op, Some((_, keep, squeezed))) if is_elementwise(op) => {
                    ty.shape == sh || &ty.shape == keep || &ty.shape == squeezed
                }
                (Op::Reshape { shape }, Some((_, keep, squeezed))) => {
                    members.contains(&ops[0])
                        && ((&g.ty(ops[0]).shape == keep && shape == squeezed)
                            || (&g.ty(ops[0]).shape == squeezed && shape == keep))
                }
                _ => false,
            };
            if !fits
                || ops.iter().any(|o| folded.contains(o))
                || !ops.iter().all(|&o| members.contains(&o) || !depends_on_members(g, o, &members, pos, s))
            {
                continue;
            }
            if matches!(g.node(u).op, Op::Reduce { axis: n, .. } if n == axis) {
                // Its result exists only after the last step: nothing in the kernel reads it.
                folded.insert(u);
                members.insert(u);
                order.push(u);
                continue;
            }
            if let Op::Reduce { axis: n, .. } = g.node(u).op {
                if reduced.is_none() {
                    let keep = g.ty(u).shape.clone();
                    let mut squeezed = keep.clone();
                    squeezed.0.remove(n);
                    reduced = Some((n, keep, squeezed));
                }
                after.insert(u);
            } else if ops.iter().any(|o| after.contains(o)) {
                after.insert(u);
            }
            members.insert(u);
            order.push(u);
            frontier.push(u);
        }
    }
    // Elementwise work on the full shape after a reduction cannot run per step: drop
    // members that need a reduction but have the scan's shape.
    order.retain(|m| !(after.contains(m) && g.ty(*m).shape == sh));
    order.sort_by_key(|n| pos[n]);
    order
}

/// Plans the kernels that compute `requested` (and everything it depends on).
pub fn plan(g: &Graph, requested: &[NodeIndex]) -> FusionPlan {
    // A requested reshape of another value shares that value's buffer.
    let mut aliases = BTreeMap::new();
    for &n in requested {
        if let Some(v) = strided_view(g, n) {
            if v.base != n && v.offset == 0 && v.strides == contiguous_strides(&g.ty(n).shape) {
                aliases.insert(n, v.base);
            }
        }
    }
    let requested: HashSet<NodeIndex> = requested.iter().map(|n| aliases.get(n).copied().unwrap_or(*n)).collect();
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
    let pos: HashMap<NodeIndex, usize> = order.iter().enumerate().map(|(i, n)| (*n, i)).collect();

    // Scan kernels with their epilogues, then row kernels grown from each reduction left.
    let mut row_of: HashMap<NodeIndex, usize> = HashMap::new();
    let mut rows: Vec<Vec<NodeIndex>> = Vec::new();
    let mut kinds: Vec<GroupKind> = Vec::new();
    for &n in &order {
        if matches!(g.node(n).op, Op::Scan { .. }) && !row_of.contains_key(&n) {
            let members = grow_scan(g, n, &live, &row_of, &pos);
            for &m in &members {
                row_of.insert(m, rows.len());
            }
            rows.push(members);
            kinds.push(GroupKind::Scan);
        }
    }
    for &n in &order {
        if matches!(g.node(n).op, Op::Reduce { .. }) && !row_of.contains_key(&n) {
            let members = grow_row(g, n, &live, &row_of, &pos, &requested);
            for &m in &members {
                row_of.insert(m, rows.len());
            }
            rows.push(members);
            kinds.push(GroupKind::Row);
        }
    }

    // What is written to memory. Decided consumers first (reverse topological order): an
    // elementwise value computed inside exactly one kernel stays there; one that would be
    // recomputed by several kernels is written once.
    let mut materialized = BTreeMap::new();
    let mut sinks: HashMap<NodeIndex, HashSet<Sink>> = HashMap::new();
    let mut paths_memo = HashMap::new();
    // Values of row kernels that other kernels read through a broadcast of them (a row's sum
    // spread over the row): written once per row instead of once per element.
    let mut under_broadcast: HashSet<NodeIndex> = HashSet::new();
    for &n in order.iter().rev() {
        let reason = if let Some(&k) = row_of.get(&n) {
            let outside = g.users(n).iter().any(|u| live.contains(u) && row_of.get(u) != Some(&k))
                || under_broadcast.contains(&n);
            if requested.contains(&n) {
                Some(CutReason::Requested)
            } else if outside && matches!(g.node(n).op, Op::Broadcast { .. }) {
                under_broadcast.insert(g.operands(n)[0]);
                None
            } else if outside {
                Some(if matches!(g.node(n).op, Op::Reduce { .. } | Op::Scan { .. }) {
                    CutReason::AnchorResult
                } else {
                    CutReason::ReadByAnotherKernel
                })
            } else {
                None
            }
        } else {
            legality(g, n, &requested, &mm).err()
        };
        let mut here = HashSet::new();
        if let Some(&k) = row_of.get(&n) {
            here.insert(Sink::Group(k));
        } else if reason.is_some() {
            here.insert(Sink::Node(n));
        } else {
            for u in g.users(n) {
                if !live.contains(&u) {
                    continue;
                }
                match (row_of.get(&u), materialized.contains_key(&u)) {
                    (Some(&k), _) => {
                        here.insert(Sink::Group(k));
                    }
                    (None, true) => {
                        here.insert(Sink::Node(u));
                    }
                    (None, false) => here.extend(sinks.get(&u).cloned().unwrap_or_default()),
                }
            }
        }
        // Rematerialise short chains, except into scan kernels, whose sequential steps make
        // every recomputed operation expensive.
        let into_scan = here.iter().any(|s| matches!(s, Sink::Group(k) if kinds[*k] == GroupKind::Scan));
        let many_views =
            !is_cheap(g, n) && !g.node(n).op.is_view() && view_paths(g, n, &live, &mut paths_memo) > MAX_VIEW_PATHS;
        let reason = reason.or_else(|| {
            if many_views {
                Some(CutReason::ReadThroughManyViews)
            } else if !into_scan && is_remat(g, n) {
                None
            } else {
                profitability(g, n, here.len()).err()
            }
        });
        if let Some(r) = reason {
            materialized.insert(n, r);
            if !row_of.contains_key(&n) {
                here = HashSet::from([Sink::Node(n)]);
            }
        }
        sinks.insert(n, here);
    }

    let main = MainPass { row_of: &row_of, kinds: &kinds, live: &live, matmul_reads: &mm, sinks: &sinks };
    recompute_row_values(g, &mut materialized, &main, &mut paths_memo);

    // Kernels: one per row group, one per other materialized value.
    let mut groups = Vec::new();
    let mut emitted_rows = HashSet::new();
    for &n in &order {
        if let Some(&k) = row_of.get(&n) {
            if emitted_rows.insert(k) {
                groups.push(make_group(g, kinds[k], rows[k].clone(), &materialized));
            }
            continue;
        }
        if !materialized.contains_key(&n) || matches!(g.node(n).op, Op::Input { .. } | Op::Param { .. }) {
            continue;
        }
        let kind = match g.node(n).op {
            Op::MatMul => GroupKind::MatMul,
            Op::ScatterAdd { .. } => GroupKind::ScatterAdd,
            _ => GroupKind::Pointwise,
        };
        groups.push(make_group(g, kind, vec![n], &materialized));
    }
    let groups = order_groups(merge_siblings(g, groups));
    FusionPlan { materialized, aliases, groups }
}

/// A group from its members: what it writes, computes inline and reads.
fn make_group(g: &Graph, kind: GroupKind, members: Vec<NodeIndex>, mat: &BTreeMap<NodeIndex, CutReason>) -> Group {
    let member_set: HashSet<NodeIndex> = members.iter().copied().collect();
    let outputs: Vec<NodeIndex> = members.iter().copied().filter(|m| mat.contains_key(m)).collect();
    let (mut inlined, mut reads) = (Vec::new(), Vec::new());
    let mut seen = HashSet::new();
    let mut stack: Vec<NodeIndex> = members.iter().flat_map(|&m| g.operands(m)).collect();
    if kind == GroupKind::MatMul {
        // The GEMM reads its operands' buffers through strides; nothing is inlined.
        stack = stack.iter().map(|&o| operand_view(g, o).map_or(o, |v| v.base)).collect();
    }
    while let Some(v) = stack.pop() {
        if member_set.contains(&v) || !seen.insert(v) {
            continue;
        }
        if mat.contains_key(&v) {
            reads.push(v);
        } else {
            inlined.push(v);
            stack.extend(g.operands(v));
        }
    }
    for &m in &members {
        if !mat.contains_key(&m) {
            inlined.push(m);
        }
    }
    inlined.sort();
    inlined.dedup();
    reads.sort();
    let root = *outputs.first().unwrap_or(&members[0]);
    let members = if matches!(kind, GroupKind::Row | GroupKind::Scan) { members } else { vec![] };
    Group { root, outputs, members, kind, inlined, reads }
}

/// Horizontal fusion: elementwise kernels over the same shape that read a common buffer and
/// do not depend on each other become one kernel with several outputs (one pass over the
/// shared input, one launch).
fn merge_siblings(g: &Graph, groups: Vec<Group>) -> Vec<Group> {
    let mut groups: Vec<Option<Group>> = groups.into_iter().map(Some).collect();
    // Which group writes each value, kept up to date as groups merge.
    let mut writer: HashMap<NodeIndex, usize> = HashMap::new();
    for (i, gr) in groups.iter().enumerate() {
        for &o in &gr.as_ref().expect("all present").outputs {
            writer.insert(o, i);
        }
    }
    let reaches = |groups: &[Option<Group>], writer: &HashMap<NodeIndex, usize>, from: usize, to: usize| {
        // Does group `to` depend (through reads) on group `from`?
        let mut stack = vec![to];
        let mut seen = HashSet::new();
        while let Some(k) = stack.pop() {
            if k == from {
                return true;
            }
            if !seen.insert(k) {
                continue;
            }
            if let Some(gr) = &groups[k] {
                stack.extend(gr.reads.iter().filter_map(|r| writer.get(r).copied()));
            }
        }
        false
    };
    let n = groups.len();
    for i in 0..n {
        for j in (i + 1)..n {
            let (Some(a), Some(b)) = (&groups[i], &groups[j]) else { continue };
            if a.kind != GroupKind::Pointwise || b.kind != GroupKind::Pointwise {
                continue;
            }
            if g.ty(a.root).shape != g.ty(b.root).shape || a.outputs.len() >= 4 {
                continue;
            }
            if !a.reads.iter().any(|r| b.reads.contains(r)) {
                continue;
            }
            if reaches(&groups, &writer, i, j) || reaches(&groups, &writer, j, i) {
                continue;
            }
            let b = groups[j].take().expect("present");
            let a = groups[i].as_mut().expect("present");
            a.outputs.extend(b.outputs.iter().copied());
            a.inlined.extend(b.inlined.iter().copied());
            a.inlined.sort();
            a.inlined.dedup();
            for r in b.reads {
                if !a.reads.contains(&r) {
                    a.reads.push(r);
                }
            }
            a.reads.sort();
            for &o in &b.outputs {
                writer.insert(o, i);
            }
        }
    }
    groups.into_iter().flatten().collect()
}

/// Kernels in an order where each runs after the kernels whose outputs it reads.
fn order_groups(groups: Vec<Group>) -> Vec<Group> {
    let writer: HashMap<NodeIndex, usize> =
        groups.iter().enumerate().flat_map(|(i, gr)| gr.outputs.iter().map(move |&o| (o, i))).collect();
    let mut indeg = vec![0usize; groups.len()];
    let mut users: Vec<Vec<usize>> = vec![vec![]; groups.len()];
    for (i, gr) in groups.iter().enumerate() {
        let mut deps: Vec<usize> = gr.reads.iter().filter_map(|r| writer.get(r).copied()).filter(|&w| w != i).collect();
        deps.sort();
        deps.dedup();
        indeg[i] = deps.len();
        for d in deps {
            users[d].push(i);
        }
    }
    let mut ready: std::collections::BinaryHeap<std::cmp::Reverse<usize>> =
        (0..groups.len()).filter(|&i| indeg[i] == 0).map(std::cmp::Reverse).collect();
    let mut out = Vec::with_capacity(groups.len());
    while let Some(std::cmp::Reverse(i)) = ready.pop() {
        out.push(i);
        for &u in &users[i] {
            indeg[u] -= 1;
            if indeg[u] == 0 {
                ready.push(std::cmp::Reverse(u));
            }
        }
    }
    assert_eq!(out.len(), groups.len(), "kernel dependencies are acyclic");
    let mut slots: Vec<Option<Group>> = groups.into_iter().map(Some).collect();
    out.into_iter().map(|i| slots[i].take().expect("each once")).collect()
}

/// The kernel a value flows into: a fused group, or the kernel writing a node.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
enum Sink {
    Group(usize),
    Node(NodeIndex),
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
