//! Reverse-mode automatic differentiation as a graph-to-graph pass: the backward pass is
//! appended to the forward graph in the same IR, so fusion and code generation serve both.
//!
//! The loss differentiated is the sum of the model's losses. Gradients flow into every
//! parameter and, on request, every f32 input; `stop_gradient`, integer and bool values,
//! random numbers and constants stop them. Each primitive's vector-Jacobian product is in
//! [`Backward::vjp`]; `scan`'s is a reverse scan (SPEC-models.md section 6).

use crate::ir::{BinaryOp, DType, Dim, Graph, NodeIndex, Op, Provenance, ReduceOp, Shape, TensorType, UnaryOp};
use crate::report::{PassReport, PassTimer};
use std::collections::{HashMap, HashSet};

/// The forward graph extended with its backward pass.
#[derive(Clone, Debug)]
pub struct Gradients {
    /// Forward and backward nodes; forward node indices are unchanged.
    pub graph: Graph,
    /// The summed loss the gradients are of.
    pub loss: NodeIndex,
    /// Gradient of each parameter, in parameter order (same shape as the parameter).
    pub params: Vec<(String, NodeIndex)>,
    /// Gradient of each f32 input, when requested.
    pub inputs: Vec<(String, NodeIndex)>,
    /// Parameters the loss does not depend on (their gradient is a zero constant).
    pub unreached: Vec<String>,
    /// Nodes of the forward graph.
    pub forward_nodes: usize,
    /// What the pass did.
    pub report: PassReport,
}

/// Which leaves to differentiate with respect to.
#[derive(Clone, Copy, Debug, Default)]
pub struct Wrt {
    /// Also differentiate with respect to f32 inputs (for gradient checks).
    pub inputs: bool,
}

/// Differentiates the sum of `g`'s losses. `g` must have at least one loss.
pub fn differentiate(g: &Graph, wrt: Wrt) -> Gradients {
    let timer = PassTimer::start("autodiff", g.node_count());
    assert!(!g.losses.is_empty(), "differentiate needs a loss");
    let mut b = Backward { g: g.clone(), consts: HashMap::new(), prov: Provenance::default() };
    let leaves: Vec<NodeIndex> = g
        .params
        .iter()
        .map(|p| p.node)
        .chain(g.inputs.iter().filter(|(_, n)| wrt.inputs && g.ty(*n).dtype == DType::F32).map(|(_, n)| *n))
        .collect();
    let active = active_nodes(g, &leaves);

    // Total loss and its seed gradient.
    let loss_nodes: Vec<NodeIndex> = g.losses.iter().map(|(_, n)| *n).collect();
    b.prov = g.node(loss_nodes[0]).prov.clone();
    b.prov.grad = true;
    let mut loss = loss_nodes[0];
    for &l in &loss_nodes[1..] {
        loss = b.bin(BinaryOp::Add, loss, l);
    }
    let mut pending: HashMap<NodeIndex, Vec<NodeIndex>> = HashMap::new();
    let seed = b.constant(1.0, &TensorType::new(DType::F32, Shape(vec![])));
    for &l in &loss_nodes {
        if active.contains(&l) {
            pending.entry(l).or_default().push(seed);
        }
    }

    let mut grads: HashMap<NodeIndex, NodeIndex> = HashMap::new();
    for n in g.topo_order().into_iter().rev() {
        let Some(parts) = pending.remove(&n) else {
            continue;
        };
        b.prov = g.node(n).prov.clone();
        b.prov.grad = true;
        let mut total = parts[0];
        for &p in &parts[1..] {
            total = b.bin(BinaryOp::Add, total, p);
        }
        grads.insert(n, total);
        let operands = g.operands(n);
        for (i, d) in b.vjp(n, &operands, total, &active) {
            pending.entry(operands[i]).or_default().push(d);
        }
    }

    let mut unreached = Vec::new();
    let mut params = Vec::new();
    for p in &g.params {
        let d = match grads.get(&p.node) {
            Some(d) => *d,
            None => {
                unreached.push(p.name.clone());
                b.constant(0.0, &p.ty)
            }
        };
        params.push((p.name.clone(), d));
    }
    let mut inputs = Vec::new();
    for (name, n) in &g.inputs {
        if wrt.inputs && g.ty(*n).dtype == DType::F32 {
            let d = grads.get(n).copied().unwrap_or_else(|| b.constant(0.0, &g.ty(*n).clone()));
            inputs.push((name.clone(), d));
        }
    }
    let nodes = b.g.node_count();
    let report = timer
        .finish(nodes, format!("{} backward nodes, {} parameters unreached", nodes - g.node_count(), unreached.len()));
    Gradients { graph: b.g, loss, params, inputs, unreached, forward_nodes: g.node_count(), report }
}

/// Nodes on a differentiable path from a leaf to a loss.
fn active_nodes(g: &Graph, leaves: &[NodeIndex]) -> HashSet<NodeIndex> {
    let differentiable = |n: NodeIndex| {
        let node = g.node(n);
        node.ty.dtype == DType::F32
            && !matches!(
                node.op,
                Op::StopGradient | Op::Random { .. } | Op::Const { .. } | Op::Iota { .. } | Op::Cast { .. }
            )
    };
    let mut from_leaves: HashSet<NodeIndex> = HashSet::new();
    let mut stack: Vec<NodeIndex> = leaves.to_vec();
    while let Some(n) = stack.pop() {
        if differentiable(n) && from_leaves.insert(n) {
            stack.extend(g.users(n));
        }
    }
    let mut to_loss: HashSet<NodeIndex> = HashSet::new();
    let mut stack: Vec<NodeIndex> = g.losses.iter().map(|(_, n)| *n).collect();
    while let Some(n) = stack.pop() {
        if from_leaves.contains(&n) && to_loss.insert(n) {
            stack.extend(g.operands(n));
        }
    }
    to_loss
}

struct Backward {
    g: Graph,
    consts: HashMap<(u64, TensorType), NodeIndex>,
    prov: Provenance,
}

impl Backward {
    fn ap(&mut self, op: Op, operands: &[NodeIndex]) -> NodeIndex {
        let what = op.name();
        self.g
            .apply(op, operands, self.prov.clone())
            .unwrap_or_else(|e| panic!("autodiff built an ill-typed `{what}`: {}", e.message))
    }
    fn ty(&self, n: NodeIndex) -> TensorType {
        self.g.ty(n).clone()
    }
    fn shape(&self, n: NodeIndex) -> Shape {
        self.g.ty(n).shape.clone()
    }
    /// A constant of type `ty`, shared between uses.
    fn constant(&mut self, value: f64, ty: &TensorType) -> NodeIndex {
        let key = (value.to_bits(), ty.clone());
        if let Some(&n) = self.consts.get(&key) {
            return n;
        }
        let n = self.g.leaf(Op::Const { value }, ty.clone(), self.prov.clone());
        self.consts.insert(key, n);
        n
    }
    fn like(&mut self, value: f64, n: NodeIndex) -> NodeIndex {
        let t = self.ty(n);
        self.constant(value, &t)
    }
    fn bin(&mut self, op: BinaryOp, a: NodeIndex, b: NodeIndex) -> NodeIndex {
        self.ap(Op::Binary(op), &[a, b])
    }
    fn un(&mut self, op: UnaryOp, a: NodeIndex) -> NodeIndex {
        self.ap(Op::Unary(op), &[a])
    }
    fn mul(&mut self, a: NodeIndex, b: NodeIndex) -> NodeIndex {
        self.bin(BinaryOp::Mul, a, b)
    }
    fn scale(&mut self, a: NodeIndex, k: f64) -> NodeIndex {
        let c = self.like(k, a);
        self.mul(a, c)
    }
    fn select(&mut self, c: NodeIndex, a: NodeIndex, b: NodeIndex) -> NodeIndex {
        self.ap(Op::Select, &[c, a, b])
    }
    fn zeros_like(&mut self, n: NodeIndex) -> NodeIndex {
        self.like(0.0, n)
    }
    fn broadcast(&mut self, x: NodeIndex, shape: &Shape) -> NodeIndex {
        if &self.shape(x) == shape {
            return x;
        }
        self.ap(Op::Broadcast { shape: shape.clone() }, &[x])
    }
    fn reshape(&mut self, x: NodeIndex, shape: &Shape) -> NodeIndex {
        if &self.shape(x) == shape {
            return x;
        }
        self.ap(Op::Reshape { shape: shape.clone() }, &[x])
    }
    fn transpose_last(&mut self, x: NodeIndex) -> NodeIndex {
        let r = self.shape(x).rank();
        let mut perm: Vec<usize> = (0..r).collect();
        perm.swap(r - 2, r - 1);
        // Transposing a transpose gives back its operand.
        if matches!(&self.g.node(x).op, Op::Permute { perm: p } if *p == perm) {
            return self.g.operands(x)[0];
        }
        self.ap(Op::Permute { perm }, &[x])
    }
    /// Sums `g` over the axes where `target` (same rank) has size 1 and `g` does not.
    fn sum_to(&mut self, g: NodeIndex, target: &Shape) -> NodeIndex {
        let s = self.shape(g);
        let mut cur = g;
        // Innermost axis first: a broadcast parameter's gradient under a scan (Mamba's A,
        // broadcast over batch and steps) then sums over the steps before the batch, and
        // the scan kernel accumulates that sum as it steps instead of storing every term.
        for (axis, (a, t)) in s.0.iter().zip(&target.0).enumerate().rev() {
            if a != t {
                debug_assert!(t.is(1));
                cur = self.ap(Op::Reduce { op: ReduceOp::Sum, axis }, &[cur]);
            }
        }
        cur
    }
    /// `x` shifted by one along `axis`: `out[t] = x[t-1]` (or `x[t+1]` when `later`), zero at the edge.
    fn shift(&mut self, x: NodeIndex, axis: usize, later: bool) -> NodeIndex {
        let n = self.shape(x).0[axis].as_known().expect("scan axes have known sizes");
        if n <= 1 {
            return self.zeros_like(x);
        }
        let (start, end, before, after) = if later { (1, n, 0, 1) } else { (0, n - 1, 1, 0) };
        let cut = self.ap(Op::Slice { axis, start, end, step: 1 }, &[x]);
        self.ap(Op::Pad { axis, before, after, value: 0.0 }, &[cut])
    }

    /// Vector-Jacobian products of node `n` given its output gradient `d`: one
    /// `(operand position, gradient)` per active operand.
    fn vjp(
        &mut self,
        n: NodeIndex,
        xs: &[NodeIndex],
        d: NodeIndex,
        active: &HashSet<NodeIndex>,
    ) -> Vec<(usize, NodeIndex)> {
        let op = self.g.node(n).op.clone();
        let wants = |i: usize| xs.get(i).is_some_and(|x| active.contains(x));
        let mut out = Vec::new();
        match op {
            Op::Input { .. } | Op::Param { .. } | Op::Const { .. } | Op::Iota { .. } | Op::Random { .. } => {}
            Op::StopGradient | Op::Cast { .. } => {}
            Op::Unary(u) => {
                let x = xs[0];
                let dx = match u {
                    UnaryOp::Neg => self.un(UnaryOp::Neg, d),
                    UnaryOp::Exp => self.mul(d, n),
                    UnaryOp::Log => self.bin(BinaryOp::Div, d, x),
                    UnaryOp::Log1p => {
                        let one = self.like(1.0, x);
                        let xp1 = self.bin(BinaryOp::Add, x, one);
                        self.bin(BinaryOp::Div, d, xp1)
                    }
                    UnaryOp::Sqrt => {
                        let q = self.bin(BinaryOp::Div, d, n);
                        self.scale(q, 0.5)
                    }
                    UnaryOp::Rsqrt => {
                        let y2 = self.mul(n, n);
                        let y3 = self.mul(y2, n);
                        let t = self.mul(d, y3);
                        self.scale(t, -0.5)
                    }
                    UnaryOp::Recip => {
                        let y2 = self.mul(n, n);
                        let t = self.mul(d, y2);
                        self.un(UnaryOp::Neg, t)
                    }
                    UnaryOp::Tanh => {
                        let y2 = self.mul(n, n);
                        let one = self.like(1.0, n);
                        let s = self.bin(BinaryOp::Sub, one, y2);
                        self.mul(d, s)
                    }
                    UnaryOp::Sin => {
                        let c = self.un(UnaryOp::Cos, x);
                        self.mul(d, c)
                    }
                    UnaryOp::Cos => {
                        let s = self.un(UnaryOp::Sin, x);
                        let t = self.mul(d, s);
                        self.un(UnaryOp::Neg, t)
                    }
                    UnaryOp::Abs => {
                        // sign(x) * d, with sign(0) = 0 as in PyTorch.
                        let zero = self.zeros_like(x);
                        let pos = self.bin(BinaryOp::Gt, x, zero);
                        let negx = self.bin(BinaryOp::Lt, x, zero);
                        let nd = self.un(UnaryOp::Neg, d);
                        let zd = self.zeros_like(d);
                        let inner = self.select(negx, nd, zd);
                        self.select(pos, d, inner)
                    }
                    UnaryOp::Erf => {
                        let x2 = self.mul(x, x);
                        let nx2 = self.un(UnaryOp::Neg, x2);
                        let e = self.un(UnaryOp::Exp, nx2);
                        let t = self.mul(d, e);
                        self.scale(t, 2.0 / std::f64::consts::PI.sqrt())
                    }
                    UnaryOp::Not => return out,
                };
                out.push((0, dx));
            }
            Op::Binary(bop) => {
                let (a, b) = (xs[0], xs[1]);
                match bop {
                    BinaryOp::Add => {
                        out.push((0, d));
                        out.push((1, d));
                    }
                    BinaryOp::Sub => {
                        out.push((0, d));
                        if wants(1) {
                            let nd = self.un(UnaryOp::Neg, d);
                            out.push((1, nd));
                        }
                    }
                    BinaryOp::Mul => {
                        if wants(0) {
                            let da = self.mul(d, b);
                            out.push((0, da));
                        }
                        if wants(1) {
                            let db = self.mul(d, a);
                            out.push((1, db));
                        }
                    }
                    BinaryOp::Div => {
                        let q = self.bin(BinaryOp::Div, d, b);
                        if wants(0) {
                            out.push((0, q));
                        }
                        if wants(1) {
                            // d(a/b)/db = -(a/b)/b = -y/b.
                            let t = self.mul(q, n);
                            let nt = self.un(UnaryOp::Neg, t);
                            out.push((1, nt));
                        }
                    }
                    BinaryOp::Max | BinaryOp::Min => {
                        // Ties go to the left operand.
                        let cmp = if bop == BinaryOp::Max { BinaryOp::Ge } else { BinaryOp::Le };
                        let left = self.bin(cmp, a, b);
                        let zero = self.zeros_like(d);
                        if wants(0) {
                            let da = self.select(left, d, zero);
                            out.push((0, da));
                        }
                        if wants(1) {
                            let db = self.select(left, zero, d);
                            out.push((1, db));
                        }
                    }
                    _ => {}
                }
            }
            Op::Select => {
                let c = xs[0];
                let zero = self.zeros_like(d);
                if wants(1) {
                    let da = self.select(c, d, zero);
                    out.push((1, da));
                }
                if wants(2) {
                    let db = self.select(c, zero, d);
                    out.push((2, db));
                }
            }
            Op::Reduce { op: r, axis } => {
                let x = xs[0];
                let xs_shape = self.shape(x);
                match r {
                    ReduceOp::Sum => {
                        let dx = self.broadcast(d, &xs_shape);
                        out.push((0, dx));
                    }
                    ReduceOp::Max | ReduceOp::Min => {
                        // Split evenly between tied extremes, as torch.amax does.
                        let yb = self.broadcast(n, &xs_shape);
                        let hit = self.bin(BinaryOp::Eq, x, yb);
                        let mask = self.ap(Op::Cast { to: DType::F32 }, &[hit]);
                        let count = self.ap(Op::Reduce { op: ReduceOp::Sum, axis }, &[mask]);
                        let share = self.bin(BinaryOp::Div, d, count);
                        let sb = self.broadcast(share, &xs_shape);
                        let dx = self.mul(sb, mask);
                        out.push((0, dx));
                    }
                    ReduceOp::ArgMax | ReduceOp::ArgMin => {}
                }
            }
            Op::Reshape { .. } => {
                let s = self.shape(xs[0]);
                let dx = self.reshape(d, &s);
                out.push((0, dx));
            }
            Op::Permute { perm } => {
                let mut inv = vec![0; perm.len()];
                for (i, &p) in perm.iter().enumerate() {
                    inv[p] = i;
                }
                let r = perm.len();
                let swaps_last = r >= 2
                    && (0..r).all(|k| {
                        perm[k]
                            == if k + 2 == r {
                                r - 1
                            } else if k + 1 == r {
                                r - 2
                            } else {
                                k
                            }
                    });
                let dx = match (swaps_last, &self.g.node(d).op) {
                    // The transposed gradient of a transposed operand (a linear layer's weight):
                    // (A B)^T = B^T A^T, a product of views, instead of a copy of a product.
                    (true, Op::MatMul) => {
                        let (a, b) = (self.g.operands(d)[0], self.g.operands(d)[1]);
                        let (bt, at) = (self.transpose_last(b), self.transpose_last(a));
                        self.ap(Op::MatMul, &[bt, at])
                    }
                    _ => self.ap(Op::Permute { perm: inv }, &[d]),
                };
                out.push((0, dx));
            }
            Op::Broadcast { .. } => {
                let s = self.shape(xs[0]);
                let dx = self.sum_to(d, &s);
                out.push((0, dx));
            }
            Op::Slice { axis, start, end, step } => {
                let size = self.shape(xs[0]).0[axis].as_known().expect("sliced axes are known");
                let k = self.shape(n).0[axis].as_known().expect("known");
                let mut cur = d;
                let mut covered = end - start;
                if step > 1 {
                    // Interleave zeros: [.., k, ..] -> [.., k, step, ..] -> [.., k*step, ..].
                    let mut dims = self.shape(d).0;
                    dims.insert(axis + 1, Dim::known(1));
                    cur = self.ap(Op::Reshape { shape: Shape(dims.clone()) }, &[cur]);
                    cur = self.ap(Op::Pad { axis: axis + 1, before: 0, after: step - 1, value: 0.0 }, &[cur]);
                    dims.remove(axis + 1);
                    dims[axis] = Dim::known(k * step);
                    cur = self.ap(Op::Reshape { shape: Shape(dims) }, &[cur]);
                    covered = (k * step).min(size - start);
                    if covered < k * step {
                        cur = self.ap(Op::Slice { axis, start: 0, end: covered, step: 1 }, &[cur]);
                    }
                }
                let dx = self.ap(Op::Pad { axis, before: start, after: size - start - covered, value: 0.0 }, &[cur]);
                out.push((0, dx));
            }
            Op::Pad { axis, before, .. } => {
                let size = self.shape(xs[0]).0[axis].as_known().expect("padded axes are known");
                let dx = self.ap(Op::Slice { axis, start: before, end: before + size, step: 1 }, &[d]);
                out.push((0, dx));
            }
            Op::Concat { axis } => {
                let mut at = 0;
                for (i, &x) in xs.iter().enumerate() {
                    let len = self.shape(x).0[axis].as_known().expect("joined axes are known");
                    if wants(i) {
                        let dx = self.ap(Op::Slice { axis, start: at, end: at + len, step: 1 }, &[d]);
                        out.push((i, dx));
                    }
                    at += len;
                }
            }
            Op::MatMul => {
                let (a, b) = (xs[0], xs[1]);
                if wants(0) {
                    let bt = self.transpose_last(b);
                    let da = self.ap(Op::MatMul, &[d, bt]);
                    out.push((0, da));
                }
                if wants(1) {
                    let at = self.transpose_last(a);
                    let db = self.ap(Op::MatMul, &[at, d]);
                    out.push((1, db));
                }
            }
            Op::Gather => {
                let rows = self.shape(xs[0]).0[0].clone();
                let dt = self.ap(Op::ScatterAdd { rows }, &[xs[1], d]);
                out.push((0, dt));
            }
            Op::ScatterAdd { .. } => {
                let du = self.ap(Op::Gather, &[d, xs[0]]);
                out.push((1, du));
            }
            Op::Scan { axis, reverse } => {
                // h[t] = a[t] h[t-1] + b[t]. With G[t] = dL/dh[t] in full,
                // G[t] = d[t] + a[t+1] G[t+1]: a scan the other way over a shifted a.
                let (a, _) = (xs[0], xs[1]);
                let a_next = self.shift(a, axis, !reverse);
                let big_g = self.ap(Op::Scan { axis, reverse: !reverse }, &[a_next, d]);
                if wants(1) {
                    out.push((1, big_g));
                }
                if wants(0) {
                    let h_prev = self.shift(n, axis, reverse);
                    let da = self.mul(big_g, h_prev);
                    out.push((0, da));
                }
            }
        }
        out.retain(|(i, _)| wants(*i));
        out
    }
}
