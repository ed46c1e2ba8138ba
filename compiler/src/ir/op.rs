//! The primitive operations of the graph IR. Composite layers are `.muse` code over these.

use super::types::{DType, Dim, Shape};
use std::fmt;

/// Elementwise functions of one operand.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum UnaryOp {
    /// `-x`.
    Neg,
    /// `e^x`.
    Exp,
    /// Natural logarithm.
    Log,
    /// `log(1 + x)`, accurate near 0.
    Log1p,
    /// Square root.
    Sqrt,
    /// `1 / sqrt(x)`.
    Rsqrt,
    /// `1 / x`.
    Recip,
    /// Hyperbolic tangent.
    Tanh,
    /// Sine.
    Sin,
    /// Cosine.
    Cos,
    /// Absolute value.
    Abs,
    /// Error function.
    Erf,
    /// Logical not (bool).
    Not,
}

impl UnaryOp {
    /// Every unary op, in the order the docs list them.
    pub const ALL: [UnaryOp; 13] = [
        UnaryOp::Neg,
        UnaryOp::Exp,
        UnaryOp::Log,
        UnaryOp::Log1p,
        UnaryOp::Sqrt,
        UnaryOp::Rsqrt,
        UnaryOp::Recip,
        UnaryOp::Tanh,
        UnaryOp::Sin,
        UnaryOp::Cos,
        UnaryOp::Abs,
        UnaryOp::Erf,
        UnaryOp::Not,
    ];
    /// Name as written in `.muse` and in printed IR.
    pub fn name(self) -> &'static str {
        match self {
            UnaryOp::Neg => "neg",
            UnaryOp::Exp => "exp",
            UnaryOp::Log => "log",
            UnaryOp::Log1p => "log1p",
            UnaryOp::Sqrt => "sqrt",
            UnaryOp::Rsqrt => "rsqrt",
            UnaryOp::Recip => "recip",
            UnaryOp::Tanh => "tanh",
            UnaryOp::Sin => "sin",
            UnaryOp::Cos => "cos",
            UnaryOp::Abs => "abs",
            UnaryOp::Erf => "erf",
            UnaryOp::Not => "not",
        }
    }
    /// Looks an op up by its name.
    pub fn from_name(s: &str) -> Option<UnaryOp> {
        UnaryOp::ALL.into_iter().find(|u| u.name() == s)
    }
    /// The same function on a compile-time number (`None` for `not`).
    pub fn eval(self, x: f64) -> Option<f64> {
        Some(match self {
            UnaryOp::Neg => -x,
            UnaryOp::Exp => x.exp(),
            UnaryOp::Log => x.ln(),
            UnaryOp::Log1p => x.ln_1p(),
            UnaryOp::Sqrt => x.sqrt(),
            UnaryOp::Rsqrt => 1.0 / x.sqrt(),
            UnaryOp::Recip => 1.0 / x,
            UnaryOp::Tanh => x.tanh(),
            UnaryOp::Sin => x.sin(),
            UnaryOp::Cos => x.cos(),
            UnaryOp::Abs => x.abs(),
            UnaryOp::Erf => erf(x),
            UnaryOp::Not => return None,
        })
    }
}

/// Abramowitz-Stegun 7.1.26 is too coarse for an oracle; this is the series/continued
/// fraction pair with relative error below 1e-13, enough for compile-time folding.
fn erf(x: f64) -> f64 {
    if x.abs() < 2.0 {
        // Maclaurin series.
        let mut sum = x;
        let mut term = x;
        let x2 = x * x;
        for n in 1..60 {
            term *= -x2 / n as f64;
            sum += term / (2 * n + 1) as f64;
        }
        sum * 2.0 / std::f64::consts::PI.sqrt()
    } else {
        // Continued fraction for erfc.
        let ax = x.abs();
        let mut f = 0.0;
        for k in (1..60).rev() {
            f = (k as f64 / 2.0) / (ax + f);
        }
        let erfc = (-ax * ax).exp() / std::f64::consts::PI.sqrt() / (ax + f);
        (1.0 - erfc) * x.signum()
    }
}

/// Elementwise functions of two operands of the same shape.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum BinaryOp {
    /// `a + b`.
    Add,
    /// `a - b`.
    Sub,
    /// `a * b`.
    Mul,
    /// `a / b`.
    Div,
    /// Larger of the two.
    Max,
    /// Smaller of the two.
    Min,
    /// `a < b` (bool result).
    Lt,
    /// `a <= b`.
    Le,
    /// `a > b`.
    Gt,
    /// `a >= b`.
    Ge,
    /// `a == b`.
    Eq,
    /// `a != b`.
    Ne,
    /// Logical and (bool).
    And,
    /// Logical or (bool).
    Or,
}

impl BinaryOp {
    /// Name in printed IR.
    pub fn name(self) -> &'static str {
        match self {
            BinaryOp::Add => "add",
            BinaryOp::Sub => "sub",
            BinaryOp::Mul => "mul",
            BinaryOp::Div => "div",
            BinaryOp::Max => "max",
            BinaryOp::Min => "min",
            BinaryOp::Lt => "lt",
            BinaryOp::Le => "le",
            BinaryOp::Gt => "gt",
            BinaryOp::Ge => "ge",
            BinaryOp::Eq => "eq",
            BinaryOp::Ne => "ne",
            BinaryOp::And => "and",
            BinaryOp::Or => "or",
        }
    }
    /// Whether the result is a bool regardless of the operands' type.
    pub fn is_comparison(self) -> bool {
        matches!(self, BinaryOp::Lt | BinaryOp::Le | BinaryOp::Gt | BinaryOp::Ge | BinaryOp::Eq | BinaryOp::Ne)
    }
    /// Whether the operands must be bool.
    pub fn is_logical(self) -> bool {
        matches!(self, BinaryOp::And | BinaryOp::Or)
    }
}

/// Reductions along one axis.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ReduceOp {
    /// Sum.
    Sum,
    /// Maximum.
    Max,
    /// Minimum.
    Min,
    /// Index of the maximum (i32; first on ties).
    ArgMax,
    /// Index of the minimum (i32; first on ties).
    ArgMin,
}

impl ReduceOp {
    /// Name in printed IR.
    pub fn name(self) -> &'static str {
        match self {
            ReduceOp::Sum => "sum",
            ReduceOp::Max => "max",
            ReduceOp::Min => "min",
            ReduceOp::ArgMax => "argmax",
            ReduceOp::ArgMin => "argmin",
        }
    }
}

/// Distributions of the seeded random op.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum RandomDist {
    /// Uniform on [0, 1).
    Uniform,
    /// Standard normal.
    Normal,
}

/// A primitive operation. Its operands are the node's incoming edges, in order.
#[derive(Clone, Debug, PartialEq)]
pub enum Op {
    /// A model input, fed at run time.
    Input {
        /// Input name.
        name: String,
    },
    /// A trainable parameter, named by block path.
    Param {
        /// Full dotted name (`layers.3.mixer.in_proj.weight`).
        name: String,
    },
    /// A tensor filled with one value.
    Const {
        /// The value (converted to the node's dtype).
        value: f64,
    },
    /// The index along `axis` at every position.
    Iota {
        /// Axis whose index is produced.
        axis: usize,
    },
    /// Seeded random numbers; the runtime mixes in the run's seed.
    Random {
        /// Distribution.
        dist: RandomDist,
        /// Seed of this op.
        seed: u64,
    },
    /// Elementwise function of one operand.
    Unary(UnaryOp),
    /// Elementwise function of two same-shaped operands.
    Binary(BinaryOp),
    /// `cond ? a : b`, all three of one shape.
    Select,
    /// Element type conversion to the node's dtype.
    Cast {
        /// Target type.
        to: DType,
    },
    /// Reduction along `axis`; the axis is kept with size 1.
    Reduce {
        /// Which reduction.
        op: ReduceOp,
        /// Reduced axis.
        axis: usize,
    },
    /// Same elements, new shape (row-major order).
    Reshape {
        /// Result shape.
        shape: Shape,
    },
    /// Axis permutation: result axis `i` is operand axis `perm[i]`.
    Permute {
        /// The permutation.
        perm: Vec<usize>,
    },
    /// Repeats size-1 axes to the target sizes (same rank).
    Broadcast {
        /// Result shape.
        shape: Shape,
    },
    /// Elements `start, start+step, ...` below `end` along one axis.
    Slice {
        /// Sliced axis.
        axis: usize,
        /// First index.
        start: i64,
        /// One past the last index.
        end: i64,
        /// Stride (positive).
        step: i64,
    },
    /// Pads one axis with a constant.
    Pad {
        /// Padded axis.
        axis: usize,
        /// Elements added before.
        before: i64,
        /// Elements added after.
        after: i64,
        /// Fill value.
        value: f64,
    },
    /// Joins operands along one axis.
    Concat {
        /// Joined axis.
        axis: usize,
    },
    /// Batched matrix product `[..., M, K] x [..., K, N] -> [..., M, N]`.
    MatMul,
    /// Rows of `table` (operand 0, `[V, ...]`) selected by `ids` (operand 1, i32).
    Gather,
    /// Sums `updates` (operand 1) into `rows` rows selected by `ids` (operand 0).
    ScatterAdd {
        /// Rows of the result.
        rows: Dim,
    },
    /// Linear recurrence `h[t] = a[t] * h[t-1] + b[t]` along `axis`, `h[-1] = 0`.
    Scan {
        /// Time axis.
        axis: usize,
        /// Run from the last position to the first.
        reverse: bool,
    },
    /// Identity forward; no gradient flows through.
    StopGradient,
}

impl Op {
    /// Short name for tables and printed IR.
    pub fn name(&self) -> &'static str {
        match self {
            Op::Input { .. } => "input",
            Op::Param { .. } => "param",
            Op::Const { .. } => "const",
            Op::Iota { .. } => "iota",
            Op::Random { .. } => "random",
            Op::Unary(u) => u.name(),
            Op::Binary(b) => b.name(),
            Op::Select => "select",
            Op::Cast { .. } => "cast",
            Op::Reduce { op, .. } => op.name(),
            Op::Reshape { .. } => "reshape",
            Op::Permute { .. } => "permute",
            Op::Broadcast { .. } => "broadcast",
            Op::Slice { .. } => "slice",
            Op::Pad { .. } => "pad",
            Op::Concat { .. } => "concat",
            Op::MatMul => "matmul",
            Op::Gather => "gather",
            Op::ScatterAdd { .. } => "scatter_add",
            Op::Scan { .. } => "scan",
            Op::StopGradient => "stop_gradient",
        }
    }
    /// Whether the op only re-indexes its operand (fusion turns it into index arithmetic).
    pub fn is_view(&self) -> bool {
        matches!(
            self,
            Op::Reshape { .. }
                | Op::Permute { .. }
                | Op::Broadcast { .. }
                | Op::Slice { .. }
                | Op::Pad { .. }
                | Op::Concat { .. }
        )
    }
    /// Whether the op has no operands.
    pub fn is_leaf(&self) -> bool {
        matches!(self, Op::Input { .. } | Op::Param { .. } | Op::Const { .. } | Op::Iota { .. } | Op::Random { .. })
    }
}

impl fmt::Display for Op {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Op::Input { name } | Op::Param { name } => write!(f, "{} {name}", self.name()),
            Op::Const { value } => write!(f, "const {value}"),
            Op::Iota { axis } => write!(f, "iota axis={axis}"),
            Op::Random { dist, seed } => write!(f, "random {dist:?} seed={seed}"),
            Op::Cast { to } => write!(f, "cast {to}"),
            Op::Reduce { op, axis } => write!(f, "{} axis={axis}", op.name()),
            Op::Reshape { shape } => write!(f, "reshape {shape}"),
            Op::Permute { perm } => write!(f, "permute {perm:?}"),
            Op::Broadcast { shape } => write!(f, "broadcast {shape}"),
            Op::Slice { axis, start, end, step } => {
                write!(f, "slice axis={axis} {start}:{end}:{step}")
            }
            Op::Pad { axis, before, after, value } => {
                write!(f, "pad axis={axis} ({before}, {after}) value={value}")
            }
            Op::Concat { axis } => write!(f, "concat axis={axis}"),
            Op::ScatterAdd { rows } => write!(f, "scatter_add rows={rows}"),
            Op::Scan { axis, reverse } => {
                write!(f, "scan axis={axis}{}", if *reverse { " reverse" } else { "" })
            }
            _ => f.write_str(self.name()),
        }
    }
}
