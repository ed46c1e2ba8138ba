//! The optimizer's kernels, written directly in the kernel IR (as a typed op list, not
//! through fusion: each verb must be exactly one kernel that updates its state in place).
//! Every device renders them with its own renderer and runs them over flat stretches of
//! its resident parameters, gradients and state, so that a training step moves no
//! parameter or gradient to the host: AdamW (PyTorch's `torch.optim.AdamW` update, the
//! host oracle of `runtime/src/optim.rs`), the partial sums of squares of the gradient
//! norm, gradient accumulation and the weight average.
//!
//! Lengths are run-time sizes: `sizes[0]` is the stretch's length (the norm: its rows,
//! `sizes[1]` the row length); scalars that change per step come in a small buffer
//! (`hyper`), so one compiled kernel serves every step and every stretch.

use super::ir::{Access, Body, BufParam, Builder, Expr, ExprId, KType, Kernel};
use crate::ir::{BinaryOp, DType, ReduceOp, UnaryOp};

/// Order of AdamW's per-step scalars in its `hyper` buffer.
pub mod adamw_hyper {
    /// Factor on each gradient (clipping, averaging of accumulated micro-batches).
    pub const GRAD_SCALE: usize = 0;
    /// `1 - lr * weight_decay` (decoupled weight decay).
    pub const DECAY: usize = 1;
    /// `1 - beta1`.
    pub const ONE_MINUS_BETA1: usize = 2;
    /// `beta2`.
    pub const BETA2: usize = 3;
    /// `1 - beta2`.
    pub const ONE_MINUS_BETA2: usize = 4;
    /// `lr / (1 - beta1^t)`.
    pub const STEP_SIZE: usize = 5;
    /// `sqrt(1 - beta2^t)`.
    pub const BC2_SQRT: usize = 6;
    /// `eps`.
    pub const EPS: usize = 7;
    /// Number of scalars.
    pub const LEN: usize = 8;
}

const F: KType = KType::Elem(DType::F32);

fn buf(access: Access, label: &str) -> BufParam {
    BufParam { dtype: DType::F32, access, label: label.to_string() }
}

/// A kernel under construction with helpers for f32 arithmetic.
struct K {
    b: Builder,
}

impl K {
    fn new() -> K {
        K { b: Builder::default() }
    }
    fn load(&mut self, buf: u32, index: ExprId) -> ExprId {
        self.b.add(Expr::Load { buf, index }, F)
    }
    fn scalar(&mut self, buf: u32, k: usize) -> ExprId {
        let i = self.b.idx(k as i64);
        self.load(buf, i)
    }
    fn op(&mut self, op: BinaryOp, a: ExprId, c: ExprId) -> ExprId {
        self.b.add(Expr::Binary(op, a, c), F)
    }
    fn lane(&mut self) -> ExprId {
        self.b.add(Expr::Lane, KType::Index)
    }
    fn size(&mut self, k: u32) -> ExprId {
        self.b.add(Expr::Size(k), KType::Index)
    }
    fn finish(self, name: &str, bufs: Vec<BufParam>, lanes: ExprId, body: Body) -> Kernel {
        Kernel { name: name.to_string(), bufs, lanes, body, exprs: self.b.exprs }
    }
}

/// AdamW over one stretch, in place: buffers `param`, `m`, `v` (updated), `grad`, `hyper`
/// ([`adamw_hyper`]); per element, in the host oracle's order of operations:
/// `g = grad * scale; p *= decay; m += (1 - b1) (g - m); v = v b2 + (1 - b2) g g;
/// p -= step_size m / (sqrt(v) / sqrt(1 - b2^t) + eps)`.
pub fn adamw(name: &str) -> Kernel {
    use adamw_hyper as h;
    let mut k = K::new();
    let i = k.lane();
    let (p, m, v, g) = (k.load(0, i), k.load(1, i), k.load(2, i), k.load(3, i));
    let hy: Vec<ExprId> = (0..h::LEN).map(|j| k.scalar(4, j)).collect();
    let g = k.op(BinaryOp::Mul, g, hy[h::GRAD_SCALE]);
    let p = k.op(BinaryOp::Mul, p, hy[h::DECAY]);
    let gm = k.op(BinaryOp::Sub, g, m);
    let dm = k.op(BinaryOp::Mul, hy[h::ONE_MINUS_BETA1], gm);
    let m1 = k.op(BinaryOp::Add, m, dm);
    let vb = k.op(BinaryOp::Mul, v, hy[h::BETA2]);
    let g1 = k.op(BinaryOp::Mul, hy[h::ONE_MINUS_BETA2], g);
    let gg = k.op(BinaryOp::Mul, g1, g);
    let v1 = k.op(BinaryOp::Add, vb, gg);
    let root = k.b.add(Expr::Unary(UnaryOp::Sqrt, v1), F);
    let den = k.op(BinaryOp::Div, root, hy[h::BC2_SQRT]);
    let den = k.op(BinaryOp::Add, den, hy[h::EPS]);
    let num = k.op(BinaryOp::Mul, hy[h::STEP_SIZE], m1);
    let upd = k.op(BinaryOp::Div, num, den);
    let p1 = k.op(BinaryOp::Sub, p, upd);
    let lanes = k.size(0);
    let bufs = vec![
        buf(Access::Update, "param"),
        buf(Access::Update, "adamw.m"),
        buf(Access::Update, "adamw.v"),
        buf(Access::Read, "grad"),
        buf(Access::Read, "hyper"),
    ];
    k.finish(name, bufs, lanes, Body::Pointwise { stores: vec![(0, p1), (1, m1), (2, v1)], split: None })
}

/// The sum of squares of each row of a stretch seen as `sizes[0]` rows of `sizes[1]`:
/// buffers `grad`, `partial` (one per row). The host adds the partial sums in f64 in a
/// fixed order, so the norm does not depend on the threads.
pub fn sum_squares(name: &str) -> Kernel {
    let mut k = K::new();
    let (rows, len) = (k.size(0), k.size(1));
    let lane = k.lane();
    let step = k.b.add(Expr::Step, KType::Index);
    let base = k.b.iop(super::IndexOp::Mul, lane, len);
    let at = k.b.iop(super::IndexOp::Add, base, step);
    let x = k.load(0, at);
    let sq = k.op(BinaryOp::Mul, x, x);
    let acc = k.b.add(Expr::Acc(0), F);
    let bufs = vec![buf(Access::Read, "grad"), buf(Access::Write, "partial")];
    let body =
        Body::Row { inner: len, phases: vec![(ReduceOp::Sum, sq)], elem_stores: vec![], lane_stores: vec![(1, acc)] };
    k.finish(name, bufs, rows, body)
}

/// `acc += grad` over one stretch (buffers `acc`, updated, and `grad`).
pub fn accumulate(name: &str) -> Kernel {
    let mut k = K::new();
    let i = k.lane();
    let (a, g) = (k.load(0, i), k.load(1, i));
    let s = k.op(BinaryOp::Add, a, g);
    let lanes = k.size(0);
    let bufs = vec![buf(Access::Update, "grad_sum"), buf(Access::Read, "grad")];
    k.finish(name, bufs, lanes, Body::Pointwise { stores: vec![(0, s)], split: None })
}

/// `dst = src` over one stretch (the first micro-batch's gradients into the sums).
pub fn copy(name: &str) -> Kernel {
    let mut k = K::new();
    let i = k.lane();
    let x = k.load(1, i);
    let lanes = k.size(0);
    let bufs = vec![buf(Access::Write, "dst"), buf(Access::Read, "src")];
    k.finish(name, bufs, lanes, Body::Pointwise { stores: vec![(0, x)], split: None })
}

/// The weight average over one stretch, in place: buffers `avg` (updated), `param`,
/// `hyper` = [1 - decay]; `avg += (param - avg) * (1 - decay)`. Its two weights sum to 1
/// exactly, so f32 rounding of `decay` does not shrink the average step by step (the form
/// `avg * decay + param * (1 - decay)` drifts by 2e-7 at decay 0.9).
pub fn ema(name: &str) -> Kernel {
    let mut k = K::new();
    let i = k.lane();
    let (a, p) = (k.load(0, i), k.load(1, i));
    let c = k.scalar(2, 0);
    let diff = k.op(BinaryOp::Sub, p, a);
    let step = k.op(BinaryOp::Mul, diff, c);
    let s = k.op(BinaryOp::Add, a, step);
    let lanes = k.size(0);
    let bufs = vec![buf(Access::Update, "ema"), buf(Access::Read, "param"), buf(Access::Read, "hyper")];
    k.finish(name, bufs, lanes, Body::Pointwise { stores: vec![(0, s)], split: None })
}

/// Every optimizer kernel, named `opt_<verb>`, in a fixed order.
pub fn all() -> Vec<Kernel> {
    vec![
        adamw("opt_adamw"),
        sum_squares("opt_sum_squares"),
        accumulate("opt_accumulate"),
        copy("opt_copy"),
        ema("opt_ema"),
    ]
}

/// AdamW's per-step scalars for the `hyper` buffer, computed as the host oracle computes
/// them (in f64, then rounded to f32).
pub fn adamw_scalars(
    beta1: f64,
    beta2: f64,
    eps: f64,
    weight_decay: f64,
    lr: f64,
    t: u64,
    grad_scale: f64,
) -> [f32; 8] {
    let t = t as i32;
    [
        grad_scale as f32,
        (1.0 - lr * weight_decay) as f32,
        1.0 - beta1 as f32,
        beta2 as f32,
        1.0 - beta2 as f32,
        (lr / (1.0 - beta1.powi(t))) as f32,
        (1.0 - beta2.powi(t)).sqrt() as f32,
        eps as f32,
    ]
}
