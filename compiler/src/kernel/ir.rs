//! The kernel IR: a typed description of one generated kernel, from which every renderer
//! (C now, CUDA next) prints source. Values and index arithmetic share one hash-consed
//! expression arena, so common subexpressions (a shared index, a value read twice) exist once.
//!
//! A kernel has an iteration space of independent *lanes* (a flat index `lane` in
//! `0..lanes`) that a backend may run in any order or in parallel; a reduction or scan adds
//! a sequential inner loop over `inner` steps per lane (on a GPU, the place where threads
//! of a block cooperate). Every store writes element `lane` (pointwise, reduction) or
//! `lane`/`step` positions computed by index expressions (scan) of a row-major buffer.

use crate::ir::{BinaryOp, DType, RandomDist, ReduceOp, UnaryOp};
use std::collections::HashMap;

/// Index of an expression in a kernel's arena.
pub type ExprId = u32;

/// Types of kernel expressions: the IR's element types plus 64-bit index arithmetic.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum KType {
    /// An element type of a buffer.
    Elem(DType),
    /// A signed 64-bit index.
    Index,
}

/// Integer operations on indices.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum IndexOp {
    /// `a + b`.
    Add,
    /// `a - b`.
    Sub,
    /// `a * b`.
    Mul,
    /// `a / b` for `a >= 0`, `b > 0`.
    Div,
    /// `a % b` for `a >= 0`, `b > 0`.
    Rem,
    /// Smaller of the two.
    Min,
    /// Larger of the two.
    Max,
}

/// One expression.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Expr {
    /// A constant (bits of an f64, converted to the expression's type).
    Const(u64),
    /// The lane index.
    Lane,
    /// The step of the sequential inner loop (reductions and scans).
    Step,
    /// The state of a scan with several recurrences per lane.
    State,
    /// The run-time value of symbolic size number `k` (e.g. the batch).
    Size(u32),
    /// Element `index` of buffer `buf`.
    Load {
        /// Buffer parameter number.
        buf: u32,
        /// Index expression.
        index: ExprId,
    },
    /// Index arithmetic.
    Index(IndexOp, ExprId, ExprId),
    /// Elementwise op of one value.
    Unary(UnaryOp, ExprId),
    /// Elementwise op of two values (also comparisons of indices).
    Binary(BinaryOp, ExprId, ExprId),
    /// `c ? a : b`.
    Select(ExprId, ExprId, ExprId),
    /// Conversion to the expression's type.
    Cast(ExprId),
    /// Counter-based random number `index` of the stream of `seed` (mixed with the run seed).
    Random {
        /// Distribution.
        dist: RandomDist,
        /// The op's own seed.
        seed: u64,
        /// Counter.
        index: ExprId,
    },
    /// The running value of a scan (`h[t-1]`) inside its step.
    Carry,
    /// The result of reduction phase `j` of a row kernel.
    Acc(u32),
}

/// An expression with its type.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Node {
    /// What it computes.
    pub expr: Expr,
    /// Its type.
    pub ty: KType,
}

/// Role of a buffer parameter.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Access {
    /// Read only.
    Read,
    /// Written (every element, exactly once).
    Write,
}

/// A buffer parameter of a kernel.
#[derive(Clone, Debug, PartialEq)]
pub struct BufParam {
    /// Element type.
    pub dtype: DType,
    /// Read or written.
    pub access: Access,
    /// The graph value it holds, for comments and the inspector.
    pub label: String,
}

/// What a kernel does per lane.
#[derive(Clone, Debug, PartialEq)]
pub enum Body {
    /// `out_k[lane] = value_k` for each store.
    Pointwise {
        /// (buffer, value) pairs.
        stores: Vec<(u32, ExprId)>,
    },
    /// A row kernel: per lane, reductions over `inner` steps run one after another (each
    /// may use the results of the earlier ones through `Expr::Acc`), then a final loop over
    /// the steps stores element values, and lane values are stored once.
    Row {
        /// Steps per lane.
        inner: ExprId,
        /// Reductions in order: phase `j` produces `Expr::Acc(j)`.
        phases: Vec<(ReduceOp, ExprId)>,
        /// (buffer, index, value) stored at every step after the reductions.
        elem_stores: Vec<(u32, ExprId, ExprId)>,
        /// (buffer, value) stored at element `lane`.
        lane_stores: Vec<(u32, ExprId)>,
    },
    /// A linear recurrence per lane over `inner` steps (in reverse when asked), with
    /// `states` independent recurrences per lane (Mamba's state axis): at each step, for each
    /// state, `h = a * h + b` (`Expr::Carry` is the new `h`), the state stores run, and
    /// `reduce` folds a value over the states into `Expr::Acc(0)` for the step stores.
    Scan {
        /// Steps per lane.
        inner: ExprId,
        /// Run from the last step to the first.
        reverse: bool,
        /// Recurrences per lane (a known size; 1 for a plain scan).
        states: i64,
        /// Decay `a` at this lane, step and state.
        a: ExprId,
        /// Input `b` at this lane, step and state.
        b: ExprId,
        /// (buffer, index, value) stored for every state at every step.
        state_stores: Vec<(u32, ExprId, ExprId)>,
        /// A reduction over the states at each step (the epilogue's `sum_n h C`).
        reduce: Option<(ReduceOp, ExprId)>,
        /// (buffer, index, value) stored once per step, after the states.
        step_stores: Vec<(u32, ExprId, ExprId)>,
    },
    /// `out[ids[lane / row] * row + lane % row] += value` for lanes in order (scatter-add).
    ScatterAdd {
        /// Row of the output each lane adds into.
        row: ExprId,
        /// Offset within the row.
        col: ExprId,
        /// Row length of the output.
        row_len: ExprId,
        /// Rows of the output.
        rows: ExprId,
        /// Value added.
        value: ExprId,
        /// Output buffer (zeroed first).
        out: u32,
    },
}

/// One generated kernel.
#[derive(Clone, Debug, PartialEq)]
pub struct Kernel {
    /// Unique name within a program (`k12`).
    pub name: String,
    /// Buffer parameters.
    pub bufs: Vec<BufParam>,
    /// Number of independent lanes.
    pub lanes: ExprId,
    /// What each lane does.
    pub body: Body,
    /// Expression arena (index = `ExprId`).
    pub exprs: Vec<Node>,
}

/// Builds a kernel's hash-consed expression arena.
#[derive(Default)]
pub struct Builder {
    /// The arena.
    pub exprs: Vec<Node>,
    index: HashMap<Node, ExprId>,
}

impl Builder {
    /// The id of `expr : ty`, adding it if new.
    pub fn add(&mut self, expr: Expr, ty: KType) -> ExprId {
        let node = Node { expr, ty };
        if let Some(&id) = self.index.get(&node) {
            return id;
        }
        let id = self.exprs.len() as ExprId;
        self.exprs.push(node.clone());
        self.index.insert(node, id);
        id
    }
    /// Type of an expression.
    pub fn ty(&self, e: ExprId) -> KType {
        self.exprs[e as usize].ty
    }
    /// The expression itself.
    pub fn get(&self, e: ExprId) -> &Expr {
        &self.exprs[e as usize].expr
    }
    /// A constant index.
    pub fn idx(&mut self, v: i64) -> ExprId {
        self.add(Expr::Const((v as f64).to_bits()), KType::Index)
    }
    /// A constant value of element type `dt`.
    pub fn value(&mut self, v: f64, dt: DType) -> ExprId {
        self.add(Expr::Const(v.to_bits()), KType::Elem(dt))
    }
    fn as_const(&self, e: ExprId) -> Option<i64> {
        match (self.get(e), self.ty(e)) {
            (Expr::Const(bits), KType::Index) => Some(f64::from_bits(*bits) as i64),
            _ => None,
        }
    }
    /// Index arithmetic with constant folding and the identities that keep indices short.
    pub fn iop(&mut self, op: IndexOp, a: ExprId, b: ExprId) -> ExprId {
        if let (Some(x), Some(y)) = (self.as_const(a), self.as_const(b)) {
            let v = match op {
                IndexOp::Add => x + y,
                IndexOp::Sub => x - y,
                IndexOp::Mul => x * y,
                IndexOp::Div => x.div_euclid(y),
                IndexOp::Rem => x.rem_euclid(y),
                IndexOp::Min => x.min(y),
                IndexOp::Max => x.max(y),
            };
            return self.idx(v);
        }
        match (op, self.as_const(a), self.as_const(b)) {
            (IndexOp::Add, Some(0), _) => return b,
            (IndexOp::Add | IndexOp::Sub, _, Some(0)) => return a,
            (IndexOp::Mul, Some(1), _) => return b,
            (IndexOp::Mul | IndexOp::Div, _, Some(1)) => return a,
            (IndexOp::Mul, Some(0), _) | (IndexOp::Mul, _, Some(0)) => return self.idx(0),
            (IndexOp::Rem, _, Some(1)) => return self.idx(0),
            _ => {}
        }
        self.add(Expr::Index(op, a, b), KType::Index)
    }
}

impl std::fmt::Display for Kernel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(f, "kernel {} (lanes t{})", self.name, self.lanes)?;
        for (i, b) in self.bufs.iter().enumerate() {
            writeln!(f, "  buf b{i}: {} {:?}  {}", b.dtype, b.access, b.label)?;
        }
        for (i, n) in self.exprs.iter().enumerate() {
            let ty = match n.ty {
                KType::Elem(d) => d.name(),
                KType::Index => "idx",
            };
            let e = match &n.expr {
                Expr::Const(bits) => format!("const {}", f64::from_bits(*bits)),
                other => format!("{other:?}"),
            };
            writeln!(f, "  t{i}: {ty} = {e}")?;
        }
        writeln!(f, "  body: {:?}", self.body)
    }
}
