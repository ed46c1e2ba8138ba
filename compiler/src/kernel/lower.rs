//! Lowering: each fusion group becomes one kernel of the kernel IR. Values computed inside
//! a kernel are expressions at an index; views become index arithmetic on the way to a
//! load; a gather is a load at an index read from another buffer.

use super::epilogue::{fuse_epilogues, EpilogueReport};
use super::ir::{Access, Body, BufParam, Builder, Expr, ExprId, IndexOp, KType, Kernel};
use crate::fusion::{CutReason, FusionPlan, Group, GroupKind};
use crate::ir::{BinaryOp, DType, Dim, Graph, NodeIndex, Op, Shape};
use crate::view::{operand_view, OperandView};
use std::collections::{BTreeMap, HashMap, HashSet};

/// A kernel with the graph values its buffer parameters hold.
#[derive(Clone, Debug)]
pub struct LoweredKernel {
    /// The kernel.
    pub kernel: Kernel,
    /// Graph node held by each buffer parameter.
    pub buffers: Vec<NodeIndex>,
    /// The fusion group it came from.
    pub group: Group,
}

/// A matrix product run by the GEMM template: `out = a @ b`, batched over leading axes;
/// each operand is read through strides from the buffer of its base.
#[derive(Clone, Debug)]
pub struct MatMulStep {
    /// Left operand `[..., M, K]` (the graph node).
    pub a: NodeIndex,
    /// Right operand `[..., K, N]` (the graph node).
    pub b: NodeIndex,
    /// How the left operand lies in memory.
    pub a_view: OperandView,
    /// How the right operand lies in memory.
    pub b_view: OperandView,
    /// Result `[..., M, N]`.
    pub out: NodeIndex,
    /// The fusion group it came from.
    pub group: Group,
    /// A pointwise kernel applied to each finished tile of the result (see
    /// [`super::epilogue`]): it reads the result only at the element it computes.
    pub epilogue: Option<LoweredKernel>,
}

/// One step of a compiled program.
#[derive(Clone, Debug)]
pub enum Step {
    /// A generated kernel.
    Kernel(LoweredKernel),
    /// A GEMM template call.
    MatMul(MatMulStep),
}

impl Step {
    /// The values the step reads from memory, each once.
    pub fn reads(&self) -> Vec<NodeIndex> {
        let mut r = match self {
            Step::Kernel(k) => k.group.reads.clone(),
            Step::MatMul(m) => {
                let mut r = vec![m.a_view.base, m.b_view.base];
                r.extend(m.epilogue.iter().flat_map(|e| e.group.reads.iter().copied()));
                r
            }
        };
        r.sort();
        r.dedup();
        r
    }

    /// The values the step writes.
    pub fn writes(&self) -> Vec<NodeIndex> {
        match self {
            Step::Kernel(k) => k.group.outputs.clone(),
            Step::MatMul(m) => {
                std::iter::once(m.out).chain(m.epilogue.iter().flat_map(|e| e.group.outputs.iter().copied())).collect()
            }
        }
    }
}

/// The kernels of a graph in execution order, with the symbols their sizes use.
#[derive(Clone, Debug)]
pub struct KernelProgram {
    /// Steps in dependency order.
    pub steps: Vec<Step>,
    /// Symbolic sizes (`Expr::Size(k)` is `symbols[k]`).
    pub symbols: Vec<String>,
    /// Every materialized value and why.
    pub materialized: BTreeMap<NodeIndex, CutReason>,
    /// Requested values read from another value's buffer (see `FusionPlan::aliases`).
    pub aliases: BTreeMap<NodeIndex, NodeIndex>,
    /// Which products took an epilogue, and why the others did not.
    pub epilogues: EpilogueReport,
}

impl KernelProgram {
    /// The generated kernels in step order: each kernel step's, and each product's
    /// epilogue (what a backend compiles).
    pub fn generated(&self) -> Vec<&Kernel> {
        self.steps
            .iter()
            .filter_map(|s| match s {
                Step::Kernel(k) => Some(&k.kernel),
                Step::MatMul(m) => m.epilogue.as_ref().map(|e| &e.kernel),
            })
            .collect()
    }
}

/// Lowers a fusion plan of `g` to kernels.
pub fn lower(g: &Graph, plan: &FusionPlan) -> KernelProgram {
    let mut symbols: Vec<String> = Vec::new();
    for n in g.g.node_indices() {
        for d in &g.ty(n).shape.0 {
            for s in &d.syms {
                if !symbols.contains(s) {
                    symbols.push(s.clone());
                }
            }
        }
    }
    symbols.sort();
    let mut steps = Vec::new();
    for (i, grp) in plan.groups.iter().enumerate() {
        if grp.kind == GroupKind::MatMul {
            let ops = g.operands(grp.root);
            let view = |o: NodeIndex| {
                if plan.materialized.contains_key(&o) {
                    OperandView::contiguous(g, o)
                } else {
                    operand_view(g, o).expect("fusion keeps matmul operands that are not views in memory")
                }
            };
            steps.push(Step::MatMul(MatMulStep {
                a: ops[0],
                b: ops[1],
                a_view: view(ops[0]),
                b_view: view(ops[1]),
                out: grp.root,
                group: grp.clone(),
                epilogue: None,
            }));
            continue;
        }
        let mut l = Lower {
            g,
            mat: &plan.materialized,
            b: Builder::default(),
            bufs: Vec::new(),
            buf_of: HashMap::new(),
            symbols: &symbols,
            memo: HashMap::new(),
            members: if grp.members.is_empty() {
                grp.outputs.iter().copied().chain([grp.root]).collect()
            } else {
                grp.members.iter().copied().collect()
            },
            acc: HashMap::new(),
            carry: None,
        };
        for &o in &grp.outputs {
            l.buf(o);
        }
        let (lanes, body) = l.body(grp);
        let bufs: Vec<BufParam> = l
            .bufs
            .iter()
            .map(|&n| BufParam {
                dtype: g.ty(n).dtype,
                access: if grp.outputs.contains(&n) { Access::Write } else { Access::Read },
                label: label(g, n),
            })
            .collect();
        let kernel = Kernel { name: format!("k{i}"), bufs, lanes, body, exprs: l.b.exprs };
        steps.push(Step::Kernel(LoweredKernel { kernel, buffers: l.bufs, group: grp.clone() }));
    }
    let (steps, epilogues) = fuse_epilogues(g, steps);
    KernelProgram { steps, symbols, materialized: plan.materialized.clone(), aliases: plan.aliases.clone(), epilogues }
}

/// A short description of a node for comments: op and block path.
pub fn label(g: &Graph, n: NodeIndex) -> String {
    let node = g.node(n);
    let path = if node.prov.path.is_empty() { String::new() } else { format!(" @{}", node.prov.path) };
    format!("%{} {}{}", n.index(), node.op.name(), path)
}

struct Lower<'a> {
    g: &'a Graph,
    mat: &'a BTreeMap<NodeIndex, CutReason>,
    b: Builder,
    bufs: Vec<NodeIndex>,
    buf_of: HashMap<NodeIndex, u32>,
    symbols: &'a [String],
    memo: HashMap<(NodeIndex, Vec<ExprId>), ExprId>,
    /// Nodes this kernel computes (never loaded, even when it also stores them).
    members: HashSet<NodeIndex>,
    /// Reductions of a row kernel already computed, by phase.
    acc: HashMap<NodeIndex, u32>,
    /// The scan whose value is the running state `Expr::Carry`.
    carry: Option<NodeIndex>,
}

impl Lower<'_> {
    fn buf(&mut self, n: NodeIndex) -> u32 {
        if let Some(&b) = self.buf_of.get(&n) {
            return b;
        }
        let b = self.bufs.len() as u32;
        self.bufs.push(n);
        self.buf_of.insert(n, b);
        b
    }
    /// The lane index, with its range when the lane count is known.
    fn lane_var(&mut self, lanes: ExprId) -> ExprId {
        self.loop_var(Expr::Lane, lanes)
    }
    /// A loop variable in `0..extent`.
    fn loop_var(&mut self, var: Expr, extent: ExprId) -> ExprId {
        let v = self.b.add(var, KType::Index);
        let hi = self.b.as_const(extent).map_or(i64::MAX, |n| n - 1);
        self.b.set_range(v, 0, hi);
        v
    }
    fn shape(&self, n: NodeIndex) -> Shape {
        self.g.ty(n).shape.clone()
    }
    fn elem(&self, n: NodeIndex) -> KType {
        KType::Elem(self.g.ty(n).dtype)
    }
    fn dim(&mut self, d: &Dim) -> ExprId {
        let mut e = self.b.idx(d.coeff);
        for s in &d.syms {
            let k = self.symbols.iter().position(|x| x == s).expect("symbols collected") as u32;
            let v = self.b.add(Expr::Size(k), KType::Index);
            e = self.b.iop(IndexOp::Mul, e, v);
        }
        e
    }
    fn numel(&mut self, s: &Shape) -> ExprId {
        let mut e = self.b.idx(1);
        for d in &s.0 {
            let x = self.dim(d);
            e = self.b.iop(IndexOp::Mul, e, x);
        }
        e
    }
    /// Row-major linear index of a multi-index.
    fn linear(&mut self, idx: &[ExprId], s: &Shape) -> ExprId {
        let mut e = self.b.idx(0);
        for (i, d) in idx.iter().zip(&s.0) {
            let size = self.dim(d);
            e = self.b.iop(IndexOp::Mul, e, size);
            e = self.b.iop(IndexOp::Add, e, *i);
        }
        e
    }
    /// Multi-index of a row-major linear index.
    fn delinear(&mut self, lin: ExprId, s: &Shape) -> Vec<ExprId> {
        let mut out = vec![0; s.rank()];
        let mut stride = self.b.idx(1);
        for k in (0..s.rank()).rev() {
            let size = self.dim(&s.0[k]);
            let q = self.b.iop(IndexOp::Div, lin, stride);
            // The outermost index needs no `%`: a linear index in range is below the total size.
            out[k] = if s.0[k].is(1) {
                self.b.idx(0)
            } else if k == 0 {
                q
            } else {
                self.b.iop(IndexOp::Rem, q, size)
            };
            stride = self.b.iop(IndexOp::Mul, stride, size);
        }
        out
    }
    fn clamp(&mut self, i: ExprId, size: i64) -> ExprId {
        let lo = self.b.idx(0);
        let hi = self.b.idx(size - 1);
        let m = self.b.iop(IndexOp::Min, i, hi);
        self.b.iop(IndexOp::Max, m, lo)
    }
    fn cmp(&mut self, op: BinaryOp, a: ExprId, b: ExprId) -> ExprId {
        self.b.add(Expr::Binary(op, a, b), KType::Elem(DType::Bool))
    }

    /// The value of node `n` at multi-index `idx`: a load if it is in memory, else computed.
    fn value(&mut self, n: NodeIndex, idx: &[ExprId]) -> ExprId {
        if self.carry == Some(n) {
            return self.b.add(Expr::Carry, KType::Elem(DType::F32));
        }
        if let Some(&j) = self.acc.get(&n) {
            let ty = self.elem(n);
            return self.b.add(Expr::Acc(j), ty);
        }
        if self.mat.contains_key(&n) && !self.members.contains(&n) {
            let buf = self.buf(n);
            let s = self.shape(n);
            let index = self.linear(idx, &s);
            let ty = self.elem(n);
            return self.b.add(Expr::Load { buf, index }, ty);
        }
        let key = (n, idx.to_vec());
        if let Some(&e) = self.memo.get(&key) {
            return e;
        }
        let e = self.compute(n, idx);
        self.memo.insert(key, e);
        e
    }

    /// The value of node `n` at `idx` from its operands (never a load of `n` itself).
    fn compute(&mut self, n: NodeIndex, idx: &[ExprId]) -> ExprId {
        let node = self.g.node(n);
        let ty = self.elem(n);
        let ops = self.g.operands(n);
        match &node.op {
            Op::Const { value } => self.b.add(Expr::Const(value.to_bits()), ty),
            Op::Iota { axis } => self.b.add(Expr::Cast(idx[*axis]), ty),
            Op::Random { dist, seed } => {
                let s = self.shape(n);
                let index = self.linear(idx, &s);
                self.b.add(Expr::Random { dist: *dist, seed: *seed, index }, ty)
            }
            Op::Unary(u) => {
                let x = self.value(ops[0], idx);
                self.b.add(Expr::Unary(*u, x), ty)
            }
            Op::Binary(op) => {
                let x = self.value(ops[0], idx);
                let y = self.value(ops[1], idx);
                self.b.add(Expr::Binary(*op, x, y), ty)
            }
            Op::Select => {
                let c = self.value(ops[0], idx);
                let x = self.value(ops[1], idx);
                let y = self.value(ops[2], idx);
                self.b.add(Expr::Select(c, x, y), ty)
            }
            Op::Cast { .. } => {
                let x = self.value(ops[0], idx);
                self.b.add(Expr::Cast(x), ty)
            }
            Op::StopGradient => self.value(ops[0], idx),
            Op::Reshape { .. } => {
                let out_s = self.shape(n);
                let in_s = self.shape(ops[0]);
                let lin = self.linear(idx, &out_s);
                let in_idx = self.delinear(lin, &in_s);
                self.value(ops[0], &in_idx)
            }
            Op::Permute { perm } => {
                let mut in_idx = vec![0; perm.len()];
                for (k, &p) in perm.iter().enumerate() {
                    in_idx[p] = idx[k];
                }
                self.value(ops[0], &in_idx)
            }
            Op::Broadcast { shape } => {
                let in_s = self.shape(ops[0]);
                let zero = self.b.idx(0);
                let in_idx: Vec<ExprId> =
                    (0..idx.len()).map(|k| if in_s.0[k].is(1) && !shape.0[k].is(1) { zero } else { idx[k] }).collect();
                self.value(ops[0], &in_idx)
            }
            Op::Slice { axis, start, step, .. } => {
                let mut in_idx = idx.to_vec();
                let st = self.b.idx(*step);
                let s0 = self.b.idx(*start);
                let m = self.b.iop(IndexOp::Mul, idx[*axis], st);
                in_idx[*axis] = self.b.iop(IndexOp::Add, m, s0);
                self.value(ops[0], &in_idx)
            }
            Op::Pad { axis, before, value, .. } => {
                let size = self.shape(ops[0]).0[*axis].as_known().expect("padded axes are known");
                let bf = self.b.idx(*before);
                let j = self.b.iop(IndexOp::Sub, idx[*axis], bf);
                let zero = self.b.idx(0);
                let end = self.b.idx(size);
                let ge = self.cmp(BinaryOp::Ge, j, zero);
                let lt = self.cmp(BinaryOp::Lt, j, end);
                let inside = self.cmp(BinaryOp::And, ge, lt);
                let mut in_idx = idx.to_vec();
                in_idx[*axis] = self.clamp(j, size);
                let v = self.value(ops[0], &in_idx);
                let fill = self.b.add(Expr::Const(value.to_bits()), ty);
                self.b.add(Expr::Select(inside, v, fill), ty)
            }
            Op::Concat { axis } => {
                let mut parts = Vec::new();
                let mut at = 0;
                for &o in &ops {
                    let len = self.shape(o).0[*axis].as_known().expect("joined axes are known");
                    parts.push((o, at, len));
                    at += len;
                }
                let (last, off, len) = *parts.last().expect("concat has operands");
                let mut acc = self.part(last, idx, *axis, off, len);
                for &(o, off, len) in parts.iter().rev().skip(1) {
                    let v = self.part(o, idx, *axis, off, len);
                    let end = self.b.idx(off + len);
                    let c = self.cmp(BinaryOp::Lt, idx[*axis], end);
                    acc = self.b.add(Expr::Select(c, v, acc), ty);
                }
                acc
            }
            Op::Gather => {
                let r = self.shape(ops[1]).rank();
                let id = self.value(ops[1], &idx[..r]);
                let rows = self.shape(ops[0]).0[0].as_known().expect("table rows are known");
                let id = self.b.add(Expr::Cast(id), KType::Index);
                let mut t_idx = vec![self.clamp(id, rows)];
                t_idx.extend_from_slice(&idx[r..]);
                self.value(ops[0], &t_idx)
            }
            Op::Input { .. }
            | Op::Param { .. }
            | Op::Reduce { .. }
            | Op::MatMul
            | Op::Scan { .. }
            | Op::ScatterAdd { .. } => unreachable!("{} is always materialized", node.op.name()),
        }
    }

    fn part(&mut self, o: NodeIndex, idx: &[ExprId], axis: usize, off: i64, len: i64) -> ExprId {
        let mut in_idx = idx.to_vec();
        let offset = self.b.idx(off);
        let j = self.b.iop(IndexOp::Sub, idx[axis], offset);
        in_idx[axis] = self.clamp(j, len);
        self.value(o, &in_idx)
    }

    /// The kernel body of a group; returns (lanes, body).
    fn body(&mut self, grp: &Group) -> (ExprId, Body) {
        let n = grp.root;
        let s = self.shape(n);
        let ops = self.g.operands(n);
        match (&grp.kind, &self.g.node(n).op) {
            (GroupKind::Pointwise, _) => {
                let lanes = self.numel(&s);
                // A known innermost axis of 16 or more runs as its own loop (see `split`).
                let inner = s.0.last().and_then(|d| d.as_known()).filter(|&c| c >= 16 && s.0.len() >= 2);
                let lane = match inner {
                    Some(c) => {
                        let outer = self.numel(&Shape(s.0[..s.0.len() - 1].to_vec()));
                        let o = self.lane_var(outer);
                        let i = self.b.add(Expr::LaneInner, KType::Index);
                        self.b.set_range(i, 0, c - 1);
                        let cx = self.b.idx(c);
                        let scaled = self.b.iop(IndexOp::Mul, o, cx);
                        self.b.iop(IndexOp::Add, scaled, i)
                    }
                    None => self.lane_var(lanes),
                };
                let idx = self.delinear(lane, &s);
                // Several outputs when sibling kernels were merged: all of one shape.
                let mut stores = Vec::new();
                for &o in &grp.outputs {
                    let out = self.buf(o);
                    let v = self.compute(o, &idx);
                    stores.push((out, v));
                }
                (lanes, Body::Pointwise { stores, split: inner })
            }
            (GroupKind::Row, _) => self.row(grp),
            (GroupKind::Scan, _) => self.scan(grp),
            (GroupKind::ScatterAdd, Op::ScatterAdd { rows }) => {
                let out = self.buf(n);
                let us = self.shape(ops[1]);
                let r = self.shape(ops[0]).rank();
                let lanes = self.numel(&us);
                let lane = self.lane_var(lanes);
                let uidx = self.delinear(lane, &us);
                let id = self.value(ops[0], &uidx[..r]);
                let row = self.b.add(Expr::Cast(id), KType::Index);
                let rest = Shape(us.0[r..].to_vec());
                let col = self.linear(&uidx[r..], &rest);
                let row_len = self.numel(&rest);
                let rows = self.dim(rows);
                let value = self.value(ops[1], &uidx);
                (lanes, Body::ScatterAdd { row, col, row_len, rows, value, out })
            }
            (k, op) => unreachable!("group kind {k:?} for {}", op.name()),
        }
    }

    /// A scan, with (when fusion found one) its elementwise epilogue, a reduction over the
    /// state axis and the elementwise work after it: Mamba's selective scan in one kernel.
    fn scan(&mut self, grp: &Group) -> (ExprId, Body) {
        let s_node = *grp.members.iter().find(|&&m| matches!(self.g.node(m).op, Op::Scan { .. })).expect("a scan");
        let Op::Scan { axis, reverse } = self.g.node(s_node).op else { unreachable!() };
        let sh = self.shape(s_node);
        // Reductions over the state axis feed the step stores; those over the scan axis fold
        // across steps.
        let (step_reds, reds): (Vec<NodeIndex>, Vec<NodeIndex>) = grp
            .members
            .iter()
            .copied()
            .filter(|&m| matches!(self.g.node(m).op, Op::Reduce { .. }))
            .partition(|&m| matches!(self.g.node(m).op, Op::Reduce { axis: r, .. } if r == axis));
        let state_axis = reds.first().map(|&r| match self.g.node(r).op {
            Op::Reduce { axis, .. } => axis,
            _ => unreachable!(),
        });
        // Lanes: every axis but the scan axis and the state axis.
        let lane_shape = Shape(
            sh.0.iter()
                .enumerate()
                .filter(|(k, _)| *k != axis && Some(*k) != state_axis)
                .map(|(_, d)| d.clone())
                .collect(),
        );
        let lanes = self.numel(&lane_shape);
        let lane = self.lane_var(lanes);
        let lane_idx = self.delinear(lane, &lane_shape);
        let inner_len = self.dim(&sh.0[axis]);
        let step = self.loop_var(Expr::Step, inner_len);
        let states_len = match state_axis {
            Some(n) => self.dim(&sh.0[n]),
            None => self.b.idx(1),
        };
        let state = self.loop_var(Expr::State, states_len);
        let zero = self.b.idx(0);
        let mut idx = Vec::with_capacity(sh.rank());
        let mut it = lane_idx.into_iter();
        for k in 0..sh.rank() {
            idx.push(if k == axis {
                step
            } else if Some(k) == state_axis {
                state
            } else {
                it.next().expect("lane axes")
            });
        }
        let states = state_axis.map_or(1, |n| sh.0[n].as_known().expect("fusion checks the state axis is known"));
        let ops = self.g.operands(s_node);
        let a = self.value(ops[0], &idx);
        let b = self.value(ops[1], &idx);
        self.carry = Some(s_node);
        let mut state_stores = Vec::new();
        let mut step_stores = Vec::new();
        let mut reduces = Vec::new();
        for (j, &r) in reds.iter().enumerate() {
            let Op::Reduce { op, .. } = self.g.node(r).op else { unreachable!() };
            let v = self.value(self.g.operands(r)[0], &idx);
            reduces.push((op, v));
            self.acc.insert(r, j as u32);
        }
        let mut step_reduces = Vec::new();
        for &r in &step_reds {
            let Op::Reduce { op, .. } = self.g.node(r).op else { unreachable!() };
            let v = self.value(self.g.operands(r)[0], &idx);
            let oidx: Vec<ExprId> = idx.iter().enumerate().map(|(k, &e)| if k == axis { zero } else { e }).collect();
            let index = self.linear(&oidx, &self.shape(r));
            step_reduces.push((op, v, self.buf(r), index));
        }
        for &o in &grp.outputs {
            if step_reds.contains(&o) {
                continue;
            }
            let buf = self.buf(o);
            let os = self.shape(o);
            let after_reduction = self.acc.contains_key(&o);
            if os == sh && !after_reduction {
                let index = self.linear(&idx, &sh);
                let v = self.value(o, &idx);
                state_stores.push((buf, index, v));
            } else {
                // A value after the state reduction: the reduced shape, or it without the state axis.
                let n = state_axis.expect("only fused scans have other outputs");
                let oidx: Vec<ExprId> = if os.rank() == sh.rank() {
                    idx.iter().enumerate().map(|(k, &e)| if k == n { zero } else { e }).collect()
                } else {
                    idx.iter().enumerate().filter(|(k, _)| *k != n).map(|(_, &e)| e).collect()
                };
                let index = self.linear(&oidx, &os);
                let v = self.value(o, &oidx);
                step_stores.push((buf, index, v));
            }
        }
        let inner = self.dim(&sh.0[axis]);
        (lanes, Body::Scan { inner, reverse, states, a, b, state_stores, reduces, step_stores, step_reduces })
    }

    /// A row kernel: the reductions of the group in order, then its stored values. A chain of
    /// reductions over several axes is one phase whose steps run over all those axes.
    fn row(&mut self, grp: &Group) -> (ExprId, Body) {
        let member_set: HashSet<NodeIndex> = grp.members.iter().copied().collect();
        let is_reduce = |g: &Graph, m: NodeIndex| matches!(g.node(m).op, Op::Reduce { .. });
        // Phases: each reduction whose input is not itself a reduction of the group starts one;
        // the chain that follows it ends in the value the phase produces.
        let mut phases_nodes: Vec<Vec<NodeIndex>> = Vec::new();
        for &m in &grp.members {
            let input = self.g.operands(m)[0];
            if is_reduce(self.g, m) && !(member_set.contains(&input) && is_reduce(self.g, input)) {
                let mut chain = vec![m];
                loop {
                    let last = *chain.last().expect("non-empty");
                    let next =
                        self.g.users(last).into_iter().find(|u| {
                            member_set.contains(u) && is_reduce(self.g, *u) && self.g.operands(*u)[0] == last
                        });
                    match next {
                        Some(u) => chain.push(u),
                        None => break,
                    }
                }
                phases_nodes.push(chain);
            }
        }
        let first = phases_nodes[0][0];
        let rows_shape = self.shape(self.g.operands(first)[0]);
        let reduced = self.shape(*phases_nodes[0].last().expect("non-empty"));
        let axes: Vec<usize> = (0..rows_shape.rank()).filter(|&k| rows_shape.0[k] != reduced.0[k]).collect();
        let lanes = self.numel(&reduced);
        let lane = self.lane_var(lanes);
        let lane_idx = self.delinear(lane, &reduced);
        let steps_shape = Shape(axes.iter().map(|&k| rows_shape.0[k].clone()).collect());
        let inner = self.numel(&steps_shape);
        let step = self.loop_var(Expr::Step, inner);
        let step_idx = self.delinear(step, &steps_shape);
        let mut elem_idx = lane_idx.clone();
        for (k, &a) in axes.iter().enumerate() {
            elem_idx[a] = step_idx[k];
        }
        let mut phases = Vec::new();
        for (j, chain) in phases_nodes.iter().enumerate() {
            let Op::Reduce { op, .. } = self.g.node(chain[0]).op else { unreachable!() };
            let v = self.value(self.g.operands(chain[0])[0], &elem_idx);
            phases.push((op, v));
            for &r in chain {
                self.acc.insert(r, j as u32);
            }
        }
        let (mut elem_stores, mut lane_stores) = (Vec::new(), Vec::new());
        for &o in &grp.outputs {
            let buf = self.buf(o);
            // A reduction's result is stored per lane even when its axes have size 1 (then
            // its shape equals the rows' shape).
            if self.shape(o) == rows_shape && !self.acc.contains_key(&o) {
                let index = self.linear(&elem_idx, &rows_shape);
                let v = self.compute(o, &elem_idx);
                elem_stores.push((buf, index, v));
            } else {
                debug_assert_eq!(self.shape(o), reduced);
                let v = self.value(o, &lane_idx);
                lane_stores.push((buf, v));
            }
        }
        (lanes, Body::Row { inner, phases, elem_stores, lane_stores })
    }
}
