//! Type inference for primitive ops: the result type of an op from its operands' types,
//! or why the op is ill-formed. Elaboration and every later pass build nodes through this.

use super::op::{BinaryOp, Op, ReduceOp, UnaryOp};
use super::types::{DType, Dim, Shape, TensorType};

/// What kind of rule an ill-formed op broke.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TypeErrorKind {
    /// Shapes do not fit together.
    Shape,
    /// Element types do not fit together.
    DType,
}

/// Why an op cannot be built from its operands.
#[derive(Clone, Debug, PartialEq)]
pub struct TypeError {
    /// Which rule was broken.
    pub kind: TypeErrorKind,
    /// One-line explanation.
    pub message: String,
    /// How to fix it, when a fix is likely.
    pub hint: Option<String>,
}

fn shape_err(message: String, hint: Option<&str>) -> TypeError {
    TypeError { kind: TypeErrorKind::Shape, message, hint: hint.map(str::to_string) }
}

fn dtype_err(message: String, hint: Option<&str>) -> TypeError {
    TypeError { kind: TypeErrorKind::DType, message, hint: hint.map(str::to_string) }
}

/// The result type of `op` applied to operands of types `ins` (non-leaf ops only).
pub fn infer(op: &Op, ins: &[&TensorType]) -> Result<TensorType, TypeError> {
    let arity = match op {
        Op::Select => 3,
        Op::Binary(_) | Op::MatMul | Op::Gather | Op::ScatterAdd { .. } | Op::Scan { .. } => 2,
        Op::Concat { .. } => ins.len().max(1),
        _ => 1,
    };
    if op.is_leaf() {
        return Err(shape_err(format!("`{}` takes no operands", op.name()), None));
    }
    if ins.len() != arity {
        return Err(shape_err(format!("`{}` takes {arity} operand(s), got {}", op.name(), ins.len()), None));
    }
    let x = ins[0];
    match op {
        Op::Unary(u) => {
            let want_bool = *u == UnaryOp::Not;
            if want_bool && x.dtype != DType::Bool {
                return Err(dtype_err(format!("`not` needs a bool tensor, got {}", x.dtype), None));
            }
            if !want_bool && x.dtype != DType::F32 && *u != UnaryOp::Neg && *u != UnaryOp::Abs {
                return Err(dtype_err(
                    format!("`{}` needs an f32 tensor, got {}", u.name(), x.dtype),
                    Some("convert with cast(x, f32)"),
                ));
            }
            if !want_bool && x.dtype == DType::Bool {
                return Err(dtype_err(format!("`{}` of a bool tensor", u.name()), Some("convert with cast(x, f32)")));
            }
            Ok(x.clone())
        }
        Op::Binary(b) => {
            let y = ins[1];
            same_shape(op, &x.shape, &y.shape)?;
            if x.dtype != y.dtype {
                return Err(dtype_err(
                    format!("`{}` of {} and {}: element types differ", b.name(), x.dtype, y.dtype),
                    Some("convert one side with cast(x, f32) or cast(x, i32)"),
                ));
            }
            if b.is_logical() != (x.dtype == DType::Bool) && !(b.is_comparison()) {
                let msg = if b.is_logical() {
                    format!("`{}` needs bool tensors, got {}", b.name(), x.dtype)
                } else {
                    format!("arithmetic `{}` on bool tensors", b.name())
                };
                return Err(dtype_err(msg, Some("convert with cast(x, f32)")));
            }
            if b.is_comparison() && x.dtype == DType::Bool && !matches!(b, BinaryOp::Eq | BinaryOp::Ne) {
                return Err(dtype_err(format!("ordering `{}` of bool tensors", b.name()), None));
            }
            let dtype = if b.is_comparison() { DType::Bool } else { x.dtype };
            Ok(TensorType::new(dtype, x.shape.clone()))
        }
        Op::Select => {
            let (a, b) = (ins[1], ins[2]);
            if x.dtype != DType::Bool {
                return Err(dtype_err(format!("the condition of `where` must be bool, got {}", x.dtype), None));
            }
            same_shape(op, &x.shape, &a.shape)?;
            same_shape(op, &a.shape, &b.shape)?;
            if a.dtype != b.dtype {
                return Err(dtype_err(
                    format!("the branches of `where` have types {} and {}", a.dtype, b.dtype),
                    Some("convert one side with cast(x, ...)"),
                ));
            }
            Ok(a.clone())
        }
        Op::Cast { to } => Ok(TensorType::new(*to, x.shape.clone())),
        Op::StopGradient => Ok(x.clone()),
        Op::Reduce { op: r, axis } => {
            check_axis(op, *axis, &x.shape)?;
            if x.dtype == DType::Bool {
                return Err(dtype_err(format!("`{}` of a bool tensor", r.name()), Some("convert with cast(x, f32)")));
            }
            let mut s = x.shape.clone();
            s.0[*axis] = Dim::known(1);
            let dtype = if matches!(r, ReduceOp::ArgMax | ReduceOp::ArgMin) { DType::I32 } else { x.dtype };
            Ok(TensorType::new(dtype, s))
        }
        Op::Reshape { shape } => {
            let (a, b) = (x.shape.numel(), shape.numel());
            if a.is_none() || a != b {
                return Err(shape_err(
                    format!("cannot reshape {} ({} elements) to {} ({} elements)", x.shape, show(&a), shape, show(&b)),
                    None,
                ));
            }
            Ok(TensorType::new(x.dtype, shape.clone()))
        }
        Op::Permute { perm } => {
            let mut seen = vec![false; x.shape.rank()];
            if perm.len() != x.shape.rank()
                || perm.iter().any(|&p| p >= seen.len() || std::mem::replace(&mut seen[p], true))
            {
                return Err(shape_err(
                    format!("{perm:?} is not a permutation of the {} axes of {}", x.shape.rank(), x.shape),
                    None,
                ));
            }
            Ok(TensorType::new(x.dtype, Shape(perm.iter().map(|&p| x.shape.0[p].clone()).collect())))
        }
        Op::Broadcast { shape } => {
            if shape.rank() != x.shape.rank() || x.shape.0.iter().zip(&shape.0).any(|(a, b)| a != b && !a.is(1)) {
                return Err(shape_err(format!("cannot broadcast {} to {}", x.shape, shape), None));
            }
            Ok(TensorType::new(x.dtype, shape.clone()))
        }
        Op::Slice { axis, start, end, step } => {
            check_axis(op, *axis, &x.shape)?;
            let n = known_axis(op, &x.shape, *axis)?;
            if *step < 1 || *start < 0 || *end > n || start > end {
                return Err(shape_err(
                    format!("slice {start}:{end}:{step} is outside axis {axis} of size {n}"),
                    Some("start and end must satisfy 0 <= start <= end <= size, step >= 1"),
                ));
            }
            let mut s = x.shape.clone();
            s.0[*axis] = Dim::known((end - start + step - 1) / step);
            Ok(TensorType::new(x.dtype, s))
        }
        Op::Pad { axis, before, after, .. } => {
            check_axis(op, *axis, &x.shape)?;
            let n = known_axis(op, &x.shape, *axis)?;
            if *before < 0 || *after < 0 {
                return Err(shape_err("padding must not be negative".into(), Some("use slice to cut")));
            }
            let mut s = x.shape.clone();
            s.0[*axis] = Dim::known(n + before + after);
            Ok(TensorType::new(x.dtype, s))
        }
        Op::Concat { axis } => {
            check_axis(op, *axis, &x.shape)?;
            let mut total = 0;
            for (i, t) in ins.iter().enumerate() {
                if t.dtype != x.dtype {
                    return Err(dtype_err(format!("concat of {} and {}", x.dtype, t.dtype), None));
                }
                if t.shape.rank() != x.shape.rank()
                    || t.shape.0.iter().zip(&x.shape.0).enumerate().any(|(k, (a, b))| k != *axis && a != b)
                {
                    return Err(shape_err(
                        format!(
                            "concat along axis {axis}: operand {i} has shape {}, operand 0 has {}",
                            t.shape, x.shape
                        ),
                        Some("all axes but the joined one must match"),
                    ));
                }
                total += known_axis(op, &t.shape, *axis)?;
            }
            let mut s = x.shape.clone();
            s.0[*axis] = Dim::known(total);
            Ok(TensorType::new(x.dtype, s))
        }
        Op::MatMul => {
            let y = ins[1];
            let (r, ry) = (x.shape.rank(), y.shape.rank());
            if r < 2 || r != ry {
                return Err(shape_err(format!("matmul of {} and {}: need equal ranks >= 2", x.shape, y.shape), None));
            }
            if x.dtype != DType::F32 || y.dtype != DType::F32 {
                return Err(dtype_err(format!("matmul of {} and {}", x.dtype, y.dtype), Some("matmul is f32 only")));
            }
            if x.shape.0[..r - 2] != y.shape.0[..r - 2] {
                return Err(shape_err(format!("matmul of {} and {}: batch axes differ", x.shape, y.shape), None));
            }
            if x.shape.0[r - 1] != y.shape.0[r - 2] {
                return Err(shape_err(
                    format!(
                        "matmul of {} and {}: inner sizes {} and {} differ",
                        x.shape,
                        y.shape,
                        x.shape.0[r - 1],
                        y.shape.0[r - 2]
                    ),
                    Some("the last axis of the left side must equal the second-to-last of the right"),
                ));
            }
            let mut s = x.shape.clone();
            s.0[r - 1] = y.shape.0[r - 1].clone();
            Ok(TensorType::new(DType::F32, s))
        }
        Op::Gather => {
            let ids = ins[1];
            if ids.dtype != DType::I32 {
                return Err(dtype_err(
                    format!("gather indices must be i32, got {}", ids.dtype),
                    Some("convert with cast(ids, i32)"),
                ));
            }
            if x.shape.rank() < 1 {
                return Err(shape_err("gather from a scalar".into(), None));
            }
            let mut s = ids.shape.0.clone();
            s.extend(x.shape.0[1..].iter().cloned());
            Ok(TensorType::new(x.dtype, Shape(s)))
        }
        Op::ScatterAdd { rows } => {
            let (ids, upd) = (x, ins[1]);
            if ids.dtype != DType::I32 {
                return Err(dtype_err(format!("scatter indices must be i32, got {}", ids.dtype), None));
            }
            let k = ids.shape.rank();
            if upd.shape.rank() < k || upd.shape.0[..k] != ids.shape.0[..] {
                return Err(shape_err(
                    format!("scatter_add: updates {} do not start with the index shape {}", upd.shape, ids.shape),
                    None,
                ));
            }
            let mut s = vec![rows.clone()];
            s.extend(upd.shape.0[k..].iter().cloned());
            Ok(TensorType::new(upd.dtype, Shape(s)))
        }
        Op::Scan { axis, .. } => {
            let b = ins[1];
            check_axis(op, *axis, &x.shape)?;
            same_shape(op, &x.shape, &b.shape)?;
            if x.dtype != DType::F32 || b.dtype != DType::F32 {
                return Err(dtype_err("scan needs f32 operands".into(), None));
            }
            Ok(x.clone())
        }
        Op::Input { .. } | Op::Param { .. } | Op::Const { .. } | Op::Iota { .. } | Op::Random { .. } => {
            unreachable!("leaves handled above")
        }
    }
}

fn show(d: &Option<Dim>) -> String {
    d.as_ref().map(|d| d.to_string()).unwrap_or_else(|| "too many".into())
}

fn same_shape(op: &Op, a: &Shape, b: &Shape) -> Result<(), TypeError> {
    if a != b {
        return Err(shape_err(format!("`{}` of shapes {a} and {b}", op.name()), None));
    }
    Ok(())
}

fn check_axis(op: &Op, axis: usize, s: &Shape) -> Result<(), TypeError> {
    if axis >= s.rank() {
        return Err(shape_err(format!("`{}`: axis {axis} is out of range for shape {s}", op.name()), None));
    }
    Ok(())
}

fn known_axis(op: &Op, s: &Shape, axis: usize) -> Result<i64, TypeError> {
    s.0[axis].as_known().ok_or_else(|| {
        shape_err(
            format!("`{}` along axis {axis} of {s} needs a known size, not {}", op.name(), s.0[axis]),
            Some("symbolic sizes such as the batch B can't be sliced, padded or joined"),
        )
    })
}

/// Numpy-style broadcast of two shapes: align trailing axes; sizes must match or be 1.
pub fn broadcast_shapes(a: &Shape, b: &Shape) -> Result<Shape, TypeError> {
    let r = a.rank().max(b.rank());
    let mut out = Vec::with_capacity(r);
    for i in 0..r {
        let da = (i + a.rank()).checked_sub(r).map(|k| &a.0[k]);
        let db = (i + b.rank()).checked_sub(r).map(|k| &b.0[k]);
        let d = match (da, db) {
            (Some(x), None) | (None, Some(x)) => x.clone(),
            (Some(x), Some(y)) if x == y => x.clone(),
            (Some(x), Some(y)) if x.is(1) => y.clone(),
            (Some(x), Some(y)) if y.is(1) => x.clone(),
            (Some(x), Some(y)) => {
                return Err(shape_err(
                    format!(
                        "shapes {a} and {b} do not broadcast: size {x} against {y} at axis {}",
                        i as i64 - r as i64
                    ),
                    Some("trailing axes must be equal or 1; insert an axis with unsqueeze(x, axis)"),
                ))
            }
            (None, None) => unreachable!(),
        };
        out.push(d);
    }
    Ok(Shape(out))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(dtype: DType, dims: &[Dim]) -> TensorType {
        TensorType::new(dtype, Shape(dims.to_vec()))
    }
    fn k(n: i64) -> Dim {
        Dim::known(n)
    }

    #[test]
    fn symbolic_dims_are_monomials() {
        let b = Dim::sym("B");
        let bn = b.mul(&k(64)).unwrap();
        assert_eq!(bn.to_string(), "64*B");
        assert_eq!(bn.div(&k(16)).unwrap().to_string(), "4*B");
        assert_eq!(bn.div(&b).unwrap(), k(64));
        assert!(bn.div(&k(5)).is_none());
        assert!(k(64).div(&b).is_none());
        assert_eq!(bn.eval(&|s| (s == "B").then_some(3)), Some(192));
    }

    #[test]
    fn numpy_broadcasting() {
        let b = Dim::sym("B");
        let s = broadcast_shapes(&Shape(vec![b.clone(), k(1), k(4)]), &Shape(vec![k(3), k(1)])).unwrap();
        assert_eq!(s, Shape(vec![b.clone(), k(3), k(4)]));
        assert!(broadcast_shapes(&Shape(vec![k(3)]), &Shape(vec![k(4)])).is_err());
        assert!(broadcast_shapes(&Shape(vec![b]), &Shape(vec![Dim::sym("N")])).is_err());
    }

    #[test]
    fn reduce_keeps_the_axis_and_argmax_is_integer() {
        let x = t(DType::F32, &[k(2), k(5)]);
        let r = infer(&Op::Reduce { op: ReduceOp::ArgMax, axis: 1 }, &[&x]).unwrap();
        assert_eq!(r, t(DType::I32, &[k(2), k(1)]));
        let err = infer(&Op::Reduce { op: ReduceOp::Sum, axis: 2 }, &[&x]).unwrap_err();
        assert_eq!(err.kind, TypeErrorKind::Shape);
    }

    #[test]
    fn views() {
        let b = Dim::sym("B");
        let x = t(DType::F32, &[b.clone(), k(8), k(16)]);
        let flat = Shape(vec![b.mul(&k(8)).unwrap(), k(16)]);
        assert_eq!(infer(&Op::Reshape { shape: flat.clone() }, &[&x]).unwrap().shape, flat);
        assert!(infer(&Op::Reshape { shape: Shape(vec![b.clone(), k(100)]) }, &[&x]).is_err());
        let p = infer(&Op::Permute { perm: vec![0, 2, 1] }, &[&x]).unwrap();
        assert_eq!(p.shape, Shape(vec![b.clone(), k(16), k(8)]));
        assert!(infer(&Op::Permute { perm: vec![0, 0, 1] }, &[&x]).is_err());
        let s = infer(&Op::Slice { axis: 1, start: 1, end: 8, step: 3 }, &[&x]).unwrap();
        assert_eq!(s.shape.0[1], k(3)); // 1, 4, 7
        assert!(infer(&Op::Slice { axis: 0, start: 0, end: 1, step: 1 }, &[&x]).is_err());
        let pd = infer(&Op::Pad { axis: 2, before: 3, after: 1, value: 0.0 }, &[&x]).unwrap();
        assert_eq!(pd.shape.0[2], k(20));
        let c = infer(&Op::Concat { axis: 1 }, &[&x, &x, &x]).unwrap();
        assert_eq!(c.shape.0[1], k(24));
    }

    #[test]
    fn contractions_gather_scatter_scan() {
        let a = t(DType::F32, &[k(2), k(3), k(4)]);
        let b = t(DType::F32, &[k(2), k(4), k(5)]);
        assert_eq!(infer(&Op::MatMul, &[&a, &b]).unwrap().shape, Shape::known(&[2, 3, 5]));
        assert!(infer(&Op::MatMul, &[&b, &a]).is_err());
        let table = t(DType::F32, &[k(10), k(7)]);
        let ids = t(DType::I32, &[k(2), k(3)]);
        let g = infer(&Op::Gather, &[&table, &ids]).unwrap();
        assert_eq!(g.shape, Shape::known(&[2, 3, 7]));
        assert_eq!(infer(&Op::Gather, &[&table, &a]).unwrap_err().kind, TypeErrorKind::DType);
        let s = infer(&Op::ScatterAdd { rows: k(10) }, &[&ids, &g]).unwrap();
        assert_eq!(s.shape, Shape::known(&[10, 7]));
        assert_eq!(infer(&Op::Scan { axis: 1, reverse: false }, &[&a, &a]).unwrap(), a);
        assert!(infer(&Op::Scan { axis: 1, reverse: false }, &[&a, &b]).is_err());
    }

    #[test]
    fn element_types() {
        let f = t(DType::F32, &[k(3)]);
        let i = t(DType::I32, &[k(3)]);
        let m = t(DType::Bool, &[k(3)]);
        assert_eq!(infer(&Op::Binary(BinaryOp::Add), &[&f, &i]).unwrap_err().kind, TypeErrorKind::DType);
        assert_eq!(infer(&Op::Binary(BinaryOp::Lt), &[&i, &i]).unwrap().dtype, DType::Bool);
        assert!(infer(&Op::Binary(BinaryOp::Add), &[&m, &m]).is_err());
        assert!(infer(&Op::Binary(BinaryOp::And), &[&m, &m]).is_ok());
        assert!(infer(&Op::Binary(BinaryOp::And), &[&f, &f]).is_err());
        assert!(infer(&Op::Unary(UnaryOp::Exp), &[&i]).is_err());
        assert!(infer(&Op::Unary(UnaryOp::Neg), &[&i]).is_ok());
        assert!(infer(&Op::Select, &[&m, &f, &f]).is_ok());
        assert!(infer(&Op::Select, &[&f, &f, &f]).is_err());
        assert_eq!(infer(&Op::Cast { to: DType::F32 }, &[&m]).unwrap().dtype, DType::F32);
    }

    #[test]
    fn erf_matches_known_values() {
        // Values from Abramowitz and Stegun, table 7.1.
        for (x, want) in
            [(0.0, 0.0), (0.5, 0.5204998778), (1.0, 0.8427007929), (2.0, 0.9953222650), (3.0, 0.9999779095)]
        {
            assert!((UnaryOp::Erf.eval(x).unwrap() - want).abs() < 1e-9, "erf({x})");
            assert!((UnaryOp::Erf.eval(-x).unwrap() + want).abs() < 1e-9, "erf(-{x})");
        }
    }
}
