//! Arithmetic of the elaborator: compile-time folding of numbers and sizes, and tensor
//! operators with numpy broadcasting made explicit as `reshape` + `broadcast` nodes.

use super::{Elab, Value};
use crate::diag::{DiagClass, Result};
use crate::ir::{broadcast_shapes, BinaryOp, DType, Dim, Op, ReduceOp, Shape, TensorType};
use crate::source::Loc;
use muse_grammar::ast::BinOp;
use petgraph::stable_graph::NodeIndex;

/// Makes `n` have `target` shape: leading size-1 axes by reshape, then broadcast.
pub(crate) fn broadcast_to(e: &mut Elab, n: NodeIndex, target: &Shape, loc: Loc) -> Result<NodeIndex> {
    let s = e.ty(n).shape.clone();
    if &s == target {
        return Ok(n);
    }
    let mut cur = n;
    if s.rank() < target.rank() {
        let mut dims = vec![Dim::known(1); target.rank() - s.rank()];
        dims.extend(s.0.iter().cloned());
        cur = e.apply(Op::Reshape { shape: Shape(dims) }, &[cur], loc)?;
    }
    if &e.ty(cur).shape != target {
        cur = e.apply(Op::Broadcast { shape: target.clone() }, &[cur], loc)?;
    }
    Ok(cur)
}

/// A constant tensor of `dtype` and `shape` from a compile-time value.
fn constant_like(e: &mut Elab, v: &Value, dtype: DType, shape: &Shape, loc: Loc) -> Result<NodeIndex> {
    let value = match (v, dtype) {
        (Value::Int(i), DType::F32 | DType::I32) => *i as f64,
        (Value::Float(f), DType::F32) => *f,
        (Value::Float(f), DType::I32) => {
            return Err(e
                .err_at(DiagClass::DType, loc, format!("the float {f:?} combined with an i32 tensor"))
                .with_hint("convert the tensor with cast(x, f32), or use an integer"))
        }
        (Value::Bool(b), DType::Bool) => f64::from(u8::from(*b)),
        (v, dt) => {
            let hint = (dt == DType::Bool).then(|| "convert the mask with cast(x, f32)".to_string());
            return Err(e
                .err_at(DiagClass::DType, loc, format!("{} combined with a {dt} tensor", v.kind()))
                .with_opt_hint(hint));
        }
    };
    e.leaf(Op::Const { value }, TensorType::new(dtype, shape.clone()), loc)
}

/// Turns a tensor or number operand into a node, using `other` to type a constant.
fn operand(e: &mut Elab, v: &Value, other: &Value, loc: Loc) -> Result<NodeIndex> {
    match v {
        Value::Tensor(t) => e.node_of(*t, loc),
        v => {
            let Value::Tensor(t) = other else { unreachable!("one side is a tensor") };
            let on = e.node_of(*t, loc)?;
            let ty = e.ty(on).clone();
            if matches!(v, Value::Int(_) | Value::Float(_) | Value::Bool(_)) {
                constant_like(e, v, ty.dtype, &ty.shape, loc)
            } else {
                Err(e.err_at(DiagClass::Type, loc, format!("{} cannot be combined with a tensor", v.kind())))
            }
        }
    }
}

/// A binary operator where at least one side is a tensor.
pub(crate) fn tensor_binary(e: &mut Elab, op: BinOp, a: Value, b: Value, loc: Loc) -> Result<Value> {
    if op == BinOp::MatMul {
        let (Value::Tensor(_), Value::Tensor(_)) = (&a, &b) else {
            return Err(e.err_at(DiagClass::Type, loc, "`@` needs two tensors"));
        };
        let an = operand(e, &a, &b, loc)?;
        let bn = operand(e, &b, &a, loc)?;
        let r = matmul(e, an, bn, loc)?;
        return Ok(e.tref(r));
    }
    let bop = match op {
        BinOp::Add => BinaryOp::Add,
        BinOp::Sub => BinaryOp::Sub,
        BinOp::Mul => BinaryOp::Mul,
        BinOp::Div => BinaryOp::Div,
        BinOp::Eq => BinaryOp::Eq,
        BinOp::Ne => BinaryOp::Ne,
        BinOp::Lt => BinaryOp::Lt,
        BinOp::Le => BinaryOp::Le,
        BinOp::Gt => BinaryOp::Gt,
        BinOp::Ge => BinaryOp::Ge,
        BinOp::And => BinaryOp::And,
        BinOp::Or => BinaryOp::Or,
        BinOp::FloorDiv | BinOp::Rem | BinOp::MatMul => {
            return Err(e.err_at(DiagClass::Type, loc, format!("`{op}` is not defined on tensors")))
        }
    };
    let an = operand(e, &a, &b, loc)?;
    let bn = operand(e, &b, &a, loc)?;
    let r = elementwise2(e, bop, an, bn, loc)?;
    Ok(e.tref(r))
}

/// An elementwise binary op with broadcasting.
pub(crate) fn elementwise2(e: &mut Elab, op: BinaryOp, a: NodeIndex, b: NodeIndex, loc: Loc) -> Result<NodeIndex> {
    let (sa, sb) = (e.ty(a).shape.clone(), e.ty(b).shape.clone());
    let (ta, tb) = (e.ty(a).dtype, e.ty(b).dtype);
    if ta != tb {
        return Err(e
            .err_at(DiagClass::DType, loc, format!("`{}` of {ta}{sa} and {tb}{sb}: element types differ", op.name()))
            .with_hint("convert one side with cast(x, f32) or cast(x, i32)"));
    }
    let s = broadcast_shapes(&sa, &sb).map_err(|err| e.type_err(loc, err))?;
    let a = broadcast_to(e, a, &s, loc)?;
    let b = broadcast_to(e, b, &s, loc)?;
    e.apply(Op::Binary(op), &[a, b], loc)
}

/// `a @ b` with numpy's batching: a 2-D right side is applied to every row of the left.
pub(crate) fn matmul(e: &mut Elab, a: NodeIndex, b: NodeIndex, loc: Loc) -> Result<NodeIndex> {
    let (sa, sb) = (e.ty(a).shape.clone(), e.ty(b).shape.clone());
    if sa.rank() < 2 || sb.rank() < 2 {
        return Err(e
            .err_at(DiagClass::Shape, loc, format!("`@` of {sa} and {sb}: both sides need at least 2 axes"))
            .with_hint("add an axis with unsqueeze(x, 0)"));
    }
    let (ra, rb) = (sa.rank(), sb.rank());
    if sa.0[ra - 1] != sb.0[rb - 2] {
        return Err(e
            .err_at(
                DiagClass::Shape,
                loc,
                format!("`@` of {sa} and {sb}: inner sizes {} and {} differ", sa.0[ra - 1], sb.0[rb - 2]),
            )
            .with_hint("the last axis of the left side must equal the second-to-last of the right"));
    }
    if rb == 2 && ra > 2 {
        // Fold the batch axes into the rows: one large matrix product.
        let rows =
            Shape(sa.0[..ra - 1].to_vec()).numel().ok_or_else(|| e.err_at(DiagClass::Limit, loc, "size overflow"))?;
        let flat = e.apply(Op::Reshape { shape: Shape(vec![rows, sa.0[ra - 1].clone()]) }, &[a], loc)?;
        let m = e.apply(Op::MatMul, &[flat, b], loc)?;
        let mut out = sa.0[..ra - 1].to_vec();
        out.push(sb.0[1].clone());
        return e.apply(Op::Reshape { shape: Shape(out) }, &[m], loc);
    }
    let batch = broadcast_shapes(&Shape(sa.0[..ra - 2].to_vec()), &Shape(sb.0[..rb - 2].to_vec()))
        .map_err(|err| e.type_err(loc, err))?;
    let full = |s: &Shape, r: usize| {
        let mut d = batch.0.clone();
        d.extend(s.0[r - 2..].iter().cloned());
        Shape(d)
    };
    let a = broadcast_to(e, a, &full(&sa, ra), loc)?;
    let b = broadcast_to(e, b, &full(&sb, rb), loc)?;
    e.apply(Op::MatMul, &[a, b], loc)
}

/// Reduces over `axes` (sorted, distinct); without `keepdim` the axes are removed.
pub(crate) fn reduce(
    e: &mut Elab,
    op: ReduceOp,
    x: NodeIndex,
    axes: &[usize],
    keepdim: bool,
    loc: Loc,
) -> Result<NodeIndex> {
    let mut cur = x;
    for &a in axes {
        cur = e.apply(Op::Reduce { op, axis: a }, &[cur], loc)?;
    }
    if !keepdim && !axes.is_empty() {
        let s = e.ty(cur).shape.clone();
        let dims = s.0.iter().enumerate().filter(|(i, _)| !axes.contains(i)).map(|(_, d)| d.clone()).collect();
        cur = e.apply(Op::Reshape { shape: Shape(dims) }, &[cur], loc)?;
    }
    Ok(cur)
}

/// Compile-time arithmetic on numbers, sizes, bools, strings, lists and `none`.
pub(crate) fn const_binary(e: &mut Elab, op: BinOp, a: Value, b: Value, loc: Loc) -> Result<Value> {
    use Value::*;
    let overflow = |e: &Elab| e.err_at(DiagClass::Limit, loc, "integer overflow in a compile-time expression");
    match (&a, &b) {
        (Int(x), Int(y)) => {
            let (x, y) = (*x, *y);
            let zero = || e.err_at(DiagClass::Type, loc, "division by zero in a compile-time expression");
            Ok(match op {
                BinOp::Add => Int(x.checked_add(y).ok_or_else(|| overflow(e))?),
                BinOp::Sub => Int(x.checked_sub(y).ok_or_else(|| overflow(e))?),
                BinOp::Mul => Int(x.checked_mul(y).ok_or_else(|| overflow(e))?),
                BinOp::Div if y == 0 => return Err(zero()),
                BinOp::Div if x % y == 0 => Int(x / y),
                BinOp::Div => Float(x as f64 / y as f64),
                BinOp::FloorDiv if y == 0 => return Err(zero()),
                BinOp::FloorDiv => Int(x.checked_div_euclid(y).ok_or_else(|| overflow(e))?),
                BinOp::Rem if y == 0 => return Err(zero()),
                BinOp::Rem => Int(x.rem_euclid(y)),
                _ => return compare_or_logic(e, op, &a, &b, loc),
            })
        }
        (Int(_) | Float(_), Int(_) | Float(_)) => {
            let (x, y) = (a.as_f64().expect("number"), b.as_f64().expect("number"));
            Ok(match op {
                BinOp::Add => Float(x + y),
                BinOp::Sub => Float(x - y),
                BinOp::Mul => Float(x * y),
                BinOp::Div => Float(x / y),
                BinOp::FloorDiv => Float((x / y).floor()),
                BinOp::Rem => Float(x.rem_euclid(y)),
                _ => return compare_or_logic(e, op, &a, &b, loc),
            })
        }
        (Dim(_), Int(_) | Dim(_)) | (Int(_), Dim(_)) => {
            let da = e.value_to_dim(&a, loc)?;
            let db = e.value_to_dim(&b, loc)?;
            match op {
                BinOp::Mul => Ok(Value::from_dim(da.mul(&db).ok_or_else(|| overflow(e))?)),
                BinOp::Div | BinOp::FloorDiv => da
                    .div(&db)
                    .map(Value::from_dim)
                    .ok_or_else(|| e.err_at(DiagClass::Shape, loc, format!("{da} is not divisible by {db}"))),
                BinOp::Eq => Ok(Bool(da == db)),
                BinOp::Ne => Ok(Bool(da != db)),
                _ => Err(e
                    .err_at(
                        DiagClass::NotCompileTime,
                        loc,
                        format!("`{op}` on the symbolic size {}", if matches!(a, Dim(_)) { &da } else { &db }),
                    )
                    .with_hint("symbolic sizes such as the batch B can only be multiplied, divided and compared")),
            }
        }
        (Str(x), Str(y)) if op == BinOp::Add => {
            check_length(e, x.len() + y.len(), "string of", "bytes", loc)?;
            Ok(Str(format!("{x}{y}")))
        }
        (List(x), List(y)) if op == BinOp::Add => {
            check_length(e, x.len() + y.len(), "list of", "items", loc)?;
            Ok(List(x.iter().chain(y).cloned().collect()))
        }
        (List(x), Int(n)) if op == BinOp::Mul && *n >= 0 => {
            check_length(e, x.len().saturating_mul(*n as usize), "list of", "items", loc)?;
            Ok(List(x.iter().cloned().cycle().take(x.len() * *n as usize).collect()))
        }
        _ => compare_or_logic(e, op, &a, &b, loc),
    }
}

/// Most bytes of a compile-time string and items of a compile-time list: values built by
/// doubling in a `repeat` would otherwise grow until memory runs out.
const MAX_VALUE_LEN: usize = 1 << 20;

fn check_length(e: &Elab, len: usize, what: &str, unit: &str, loc: Loc) -> Result<()> {
    if len <= MAX_VALUE_LEN {
        return Ok(());
    }
    Err(e
        .err_at(
            DiagClass::Limit,
            loc,
            format!("this makes a compile-time {what} {len} {unit}, more than the {MAX_VALUE_LEN} allowed"),
        )
        .with_hint("a value grows in a `repeat` or a recursion far beyond what a model needs"))
}

fn compare_or_logic(e: &mut Elab, op: BinOp, a: &Value, b: &Value, loc: Loc) -> Result<Value> {
    use Value::*;
    match op {
        BinOp::Eq => return Ok(Bool(a == b || (a.is_number() && a.as_f64() == b.as_f64()))),
        BinOp::Ne => return Ok(Bool(!(a == b || (a.is_number() && a.as_f64() == b.as_f64())))),
        _ => {}
    }
    match (op, a, b) {
        (BinOp::And, Bool(x), Bool(y)) => Ok(Bool(*x && *y)),
        (BinOp::Or, Bool(x), Bool(y)) => Ok(Bool(*x || *y)),
        (BinOp::Lt | BinOp::Le | BinOp::Gt | BinOp::Ge, _, _) if a.is_number() && b.is_number() => {
            let (x, y) = (a.as_f64().expect("number"), b.as_f64().expect("number"));
            Ok(Bool(match op {
                BinOp::Lt => x < y,
                BinOp::Le => x <= y,
                BinOp::Gt => x > y,
                _ => x >= y,
            }))
        }
        _ => Err(e.err_at(DiagClass::Type, loc, format!("`{op}` is not defined for {} and {}", a.kind(), b.kind()))),
    }
}
