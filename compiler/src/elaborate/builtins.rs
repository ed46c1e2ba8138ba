//! Builtin functions: the primitives of the graph IR as the language exposes them,
//! parameter initialisers, and compile-time helpers. Everything else is `.muse` code.

use super::tensor_ops::{self, broadcast_to, elementwise2, reduce};
use super::{fnv1a, ArgV, Elab, Value};
use crate::diag::{DiagClass, Result};
use crate::ir::{broadcast_shapes, BinaryOp, DType, Dim, Op, RandomDist, ReduceOp, Shape, TensorType, UnaryOp};
use crate::source::Loc;
use muse_grammar::ast::Ident;
use petgraph::stable_graph::NodeIndex;

/// Default value of a builtin's parameter.
#[derive(Clone, Copy)]
enum D {
    Req,
    Int(i64),
    Float(f64),
    Bool(bool),
    None,
    Ty(DType),
}

type Sig = &'static [(&'static str, D)];

const X: Sig = &[("x", D::Req)];
const AB: Sig = &[("a", D::Req), ("b", D::Req)];
const REDUCE: Sig = &[("x", D::Req), ("axis", D::None), ("keepdim", D::Bool(false))];
const ARGREDUCE: Sig = &[("x", D::Req), ("axis", D::Int(-1)), ("keepdim", D::Bool(false))];
const RANDOM: Sig = &[("shape", D::Req), ("seed", D::Int(0))];

const UNARY: [&str; 11] = ["exp", "log", "log1p", "sqrt", "rsqrt", "recip", "tanh", "sin", "cos", "abs", "erf"];

/// Every builtin with its parameters, in the order of the language reference.
const TABLE: &[(&str, Sig)] = &[
    ("exp", X),
    ("log", X),
    ("log1p", X),
    ("sqrt", X),
    ("rsqrt", X),
    ("recip", X),
    ("tanh", X),
    ("sin", X),
    ("cos", X),
    ("abs", X),
    ("erf", X),
    ("maximum", AB),
    ("minimum", AB),
    ("where", &[("cond", D::Req), ("a", D::Req), ("b", D::Req)]),
    ("cast", &[("x", D::Req), ("dtype", D::Req)]),
    ("sum", REDUCE),
    ("max", REDUCE),
    ("min", REDUCE),
    ("argmax", ARGREDUCE),
    ("argmin", ARGREDUCE),
    ("reshape", &[("x", D::Req), ("shape", D::Req)]),
    ("permute", &[("x", D::Req), ("perm", D::Req)]),
    ("transpose", &[("x", D::Req), ("a", D::Int(-2)), ("b", D::Int(-1))]),
    ("expand", &[("x", D::Req), ("shape", D::Req)]),
    ("unsqueeze", &[("x", D::Req), ("axis", D::Req)]),
    ("squeeze", &[("x", D::Req), ("axis", D::Req)]),
    ("slice", &[("x", D::Req), ("axis", D::Req), ("start", D::Req), ("end", D::None), ("step", D::Int(1))]),
    ("index", &[("x", D::Req), ("axis", D::Req), ("i", D::Req)]),
    ("pad", &[("x", D::Req), ("axis", D::Req), ("before", D::Req), ("after", D::Req), ("value", D::Float(0.0))]),
    ("concat", &[("xs", D::Req), ("axis", D::Int(-1))]),
    ("stack", &[("xs", D::Req), ("axis", D::Int(0))]),
    ("split", &[("x", D::Req), ("sections", D::Req), ("axis", D::Int(-1))]),
    ("matmul", AB),
    ("take", &[("table", D::Req), ("ids", D::Req)]),
    ("scatter_add", &[("ids", D::Req), ("updates", D::Req), ("rows", D::Req)]),
    ("scan", &[("a", D::Req), ("b", D::Req), ("axis", D::Int(1)), ("reverse", D::Bool(false))]),
    ("stop_gradient", X),
    ("rand_uniform", RANDOM),
    ("rand_normal", RANDOM),
    ("iota", &[("shape", D::Req), ("axis", D::Req), ("dtype", D::Ty(DType::I32))]),
    ("full", &[("shape", D::Req), ("value", D::Req), ("dtype", D::Ty(DType::F32))]),
    ("zeros", &[("shape", D::None)]),
    ("ones", &[("shape", D::None)]),
    ("normal", &[("std", D::Float(1.0)), ("mean", D::Float(0.0))]),
    ("uniform", &[("low", D::Req), ("high", D::Req)]),
    ("constant", &[("value", D::Req)]),
    ("numel", X),
    ("is_int", X),
    ("int", X),
    ("float", X),
    ("len", X),
    ("range", &[("n", D::Req)]),
    ("cdiv", AB),
    ("floor", X),
    ("ceil", X),
    ("assert", &[("cond", D::Req), ("message", D::Req)]),
];

/// Whether `name` is a builtin function.
pub(crate) fn is_builtin(name: &str) -> bool {
    TABLE.iter().any(|(n, _)| *n == name)
}

/// Names of all builtins.
pub(crate) fn names() -> impl Iterator<Item = &'static str> {
    TABLE.iter().map(|(n, _)| *n)
}

struct Args {
    vals: Vec<Value>,
    locs: Vec<Loc>,
}

impl Args {
    fn v(&self, i: usize) -> &Value {
        &self.vals[i]
    }
    fn l(&self, i: usize) -> Loc {
        self.locs[i]
    }
}

/// Calls builtin `callee` with evaluated arguments.
pub(crate) fn call(e: &mut Elab, callee: &Ident, args: Vec<ArgV>, loc: Loc) -> Result<Value> {
    let name = callee.name.as_str();
    let sig = TABLE.iter().find(|(n, _)| *n == name).expect("checked by is_builtin").1;
    let formals: Vec<&str> = sig.iter().map(|(n, _)| *n).collect();
    let slots = e.match_args("function", callee, &formals, args)?;
    let mut vals = Vec::new();
    let mut locs = Vec::new();
    for ((fname, def), slot) in sig.iter().zip(slots) {
        match slot {
            Some(a) => {
                vals.push(a.value);
                locs.push(a.loc);
            }
            None => {
                let v = match def {
                    D::Req => {
                        return Err(e
                            .err_at(DiagClass::Arity, loc, format!("missing argument `{fname}` of `{name}`"))
                            .with_hint(format!("`{name}({})`", formals.join(", "))))
                    }
                    D::Int(i) => Value::Int(*i),
                    D::Float(f) => Value::Float(*f),
                    D::Bool(b) => Value::Bool(*b),
                    D::None => Value::None,
                    D::Ty(t) => Value::DType(*t),
                };
                vals.push(v);
                locs.push(loc);
            }
        }
    }
    let a = Args { vals, locs };
    dispatch(e, name, &a, loc)
}

fn tensor(e: &Elab, a: &Args, i: usize, what: &str) -> Result<NodeIndex> {
    e.expect_tensor(a.v(i), a.l(i), what)
}

fn axis_of(e: &Elab, a: &Args, i: usize, rank: usize, extra: usize) -> Result<usize> {
    let ax = e.expect_int(a.v(i), a.l(i), "an axis")?;
    let r = (rank + extra) as i64;
    let k = if ax < 0 { ax + r } else { ax };
    if !(0..r).contains(&k) {
        return Err(e.err_at(DiagClass::Shape, a.l(i), format!("axis {ax} is out of range for {rank} axes")));
    }
    Ok(k as usize)
}

fn dims_of(e: &Elab, v: &Value, loc: Loc) -> Result<Vec<Dim>> {
    match v {
        Value::List(items) => items.iter().map(|x| e.value_to_dim(x, loc)).collect(),
        other => {
            Err(e.err_at(DiagClass::Type, loc, format!("a shape must be a list like [B, 16], got {}", other.kind())))
        }
    }
}

fn out(e: &Elab, n: NodeIndex) -> Result<Value> {
    Ok(e.tref(n))
}

fn dispatch(e: &mut Elab, name: &str, a: &Args, loc: Loc) -> Result<Value> {
    if UNARY.contains(&name) {
        let op = UnaryOp::from_name(name).expect("unary names match UnaryOp");
        return match a.v(0) {
            v if v.is_number() => Ok(Value::Float(op.eval(v.as_f64().expect("number")).expect("numeric op"))),
            _ => {
                let x = tensor(e, a, 0, "the operand")?;
                let n = e.apply(Op::Unary(op), &[x], loc)?;
                out(e, n)
            }
        };
    }
    match name {
        "maximum" | "minimum" => {
            let bop = if name == "maximum" { BinaryOp::Max } else { BinaryOp::Min };
            match (a.v(0), a.v(1)) {
                (Value::Int(x), Value::Int(y)) => Ok(Value::Int(if name == "maximum" { *x.max(y) } else { *x.min(y) })),
                (x, y) if x.is_number() && y.is_number() => {
                    let (x, y) = (x.as_f64().expect("n"), y.as_f64().expect("n"));
                    Ok(Value::Float(if name == "maximum" { x.max(y) } else { x.min(y) }))
                }
                _ => {
                    let (x, y) = pair(e, a, 0, 1)?;
                    let n = elementwise2(e, bop, x, y, loc)?;
                    out(e, n)
                }
            }
        }
        "where" => select(e, a, loc),
        "cast" => {
            let Value::DType(to) = a.v(1) else {
                return Err(e.err_at(DiagClass::Type, a.l(1), "the target of cast must be f32, i32 or bool"));
            };
            match a.v(0) {
                Value::Int(i) if *to == DType::F32 => Ok(Value::Float(*i as f64)),
                Value::Float(f) if *to == DType::I32 => Ok(Value::Int(*f as i64)),
                v if !matches!(v, Value::Tensor(_)) => Ok(v.clone()),
                _ => {
                    let x = tensor(e, a, 0, "the operand of cast")?;
                    if e.ty(x).dtype == *to {
                        return out(e, x);
                    }
                    let n = e.apply(Op::Cast { to: *to }, &[x], loc)?;
                    out(e, n)
                }
            }
        }
        "sum" | "max" | "min" | "argmax" | "argmin" => {
            let op = match name {
                "sum" => ReduceOp::Sum,
                "max" => ReduceOp::Max,
                "min" => ReduceOp::Min,
                "argmax" => ReduceOp::ArgMax,
                _ => ReduceOp::ArgMin,
            };
            let x = tensor(e, a, 0, "the operand")?;
            let rank = e.ty(x).shape.rank();
            let mut axes = match a.v(1) {
                Value::None => (0..rank).collect(),
                Value::List(items) => {
                    let mut v = Vec::new();
                    for it in items {
                        let one = Args { vals: vec![it.clone()], locs: vec![a.l(1)] };
                        v.push(axis_of(e, &one, 0, rank, 0)?);
                    }
                    v
                }
                _ => vec![axis_of(e, a, 1, rank, 0)?],
            };
            axes.sort();
            axes.dedup();
            if matches!(op, ReduceOp::ArgMax | ReduceOp::ArgMin) && axes.len() != 1 {
                return Err(e.err_at(DiagClass::Shape, a.l(1), format!("`{name}` reduces exactly one axis")));
            }
            let keep = e.expect_bool(a.v(2), a.l(2), "keepdim")?;
            let n = reduce(e, op, x, &axes, keep, loc)?;
            out(e, n)
        }
        "reshape" => {
            let x = tensor(e, a, 0, "the operand of reshape")?;
            let shape = reshape_target(e, x, a)?;
            let n = e.apply(Op::Reshape { shape }, &[x], loc)?;
            out(e, n)
        }
        "permute" => {
            let x = tensor(e, a, 0, "the operand of permute")?;
            let rank = e.ty(x).shape.rank();
            let Value::List(items) = a.v(1) else {
                return Err(e.err_at(DiagClass::Type, a.l(1), "a permutation is a list of axes, e.g. [0, 2, 1, 3]"));
            };
            let mut perm = Vec::new();
            for it in items {
                let one = Args { vals: vec![it.clone()], locs: vec![a.l(1)] };
                perm.push(axis_of(e, &one, 0, rank, 0)?);
            }
            let n = e.apply(Op::Permute { perm }, &[x], loc)?;
            out(e, n)
        }
        "transpose" => {
            let x = tensor(e, a, 0, "the operand of transpose")?;
            let rank = e.ty(x).shape.rank();
            let i = axis_of(e, a, 1, rank, 0)?;
            let j = axis_of(e, a, 2, rank, 0)?;
            let mut perm: Vec<usize> = (0..rank).collect();
            perm.swap(i, j);
            let n = e.apply(Op::Permute { perm }, &[x], loc)?;
            out(e, n)
        }
        "expand" => {
            let x = tensor(e, a, 0, "the operand of expand")?;
            let target = Shape(dims_of(e, a.v(1), a.l(1))?);
            let s = e.ty(x).shape.clone();
            let b = broadcast_shapes(&s, &target).map_err(|err| e.type_err(a.l(1), err))?;
            if b != target {
                return Err(e.err_at(DiagClass::Shape, a.l(1), format!("cannot expand {s} to {target}")));
            }
            let n = broadcast_to(e, x, &target, loc)?;
            out(e, n)
        }
        "unsqueeze" | "squeeze" => {
            let x = tensor(e, a, 0, "the operand")?;
            let mut dims = e.ty(x).shape.0.clone();
            if name == "unsqueeze" {
                let ax = axis_of(e, a, 1, dims.len(), 1)?;
                dims.insert(ax, Dim::known(1));
            } else {
                let ax = axis_of(e, a, 1, dims.len(), 0)?;
                if !dims[ax].is(1) {
                    return Err(e.err_at(
                        DiagClass::Shape,
                        a.l(1),
                        format!("cannot squeeze axis {ax} of size {}", dims[ax]),
                    ));
                }
                dims.remove(ax);
            }
            let n = e.apply(Op::Reshape { shape: Shape(dims) }, &[x], loc)?;
            out(e, n)
        }
        "slice" | "index" => {
            let x = tensor(e, a, 0, "the operand")?;
            let s = e.ty(x).shape.clone();
            let ax = axis_of(e, a, 1, s.rank(), 0)?;
            let size = s.0[ax].as_known().ok_or_else(|| {
                e.err_at(DiagClass::Shape, a.l(1), format!("cannot slice the symbolic axis {}", s.0[ax]))
            })?;
            let norm = |v: i64| if v < 0 { v + size } else { v };
            let start = norm(e.expect_int(a.v(2), a.l(2), "a slice start")?);
            let (end, step) = if name == "index" {
                (start + 1, 1)
            } else {
                let end = match a.v(3) {
                    Value::None => size,
                    v => norm(e.expect_int(v, a.l(3), "a slice end")?),
                };
                (end, e.expect_int(a.v(4), a.l(4), "a slice step")?)
            };
            let n = e.apply(Op::Slice { axis: ax, start, end, step }, &[x], loc)?;
            if name == "index" {
                let mut dims = s.0.clone();
                dims.remove(ax);
                let n = e.apply(Op::Reshape { shape: Shape(dims) }, &[n], loc)?;
                return out(e, n);
            }
            out(e, n)
        }
        "pad" => {
            let x = tensor(e, a, 0, "the operand of pad")?;
            let ax = axis_of(e, a, 1, e.ty(x).shape.rank(), 0)?;
            let before = e.expect_int(a.v(2), a.l(2), "padding")?;
            let after = e.expect_int(a.v(3), a.l(3), "padding")?;
            let value = e.expect_f64(a.v(4), a.l(4), "a padding value")?;
            let n = e.apply(Op::Pad { axis: ax, before, after, value }, &[x], loc)?;
            out(e, n)
        }
        "concat" | "stack" => {
            let Value::List(items) = a.v(0) else {
                return Err(e.err_at(
                    DiagClass::Type,
                    a.l(0),
                    format!("`{name}` takes a list of tensors, e.g. {name}([a, b])"),
                ));
            };
            if items.is_empty() {
                return Err(e.err_at(DiagClass::Arity, a.l(0), format!("`{name}` of an empty list")));
            }
            let mut nodes = Vec::new();
            for it in items {
                nodes.push(e.expect_tensor(it, a.l(0), "each item")?);
            }
            let rank = e.ty(nodes[0]).shape.rank();
            let ax = axis_of(e, a, 1, rank, usize::from(name == "stack"))?;
            if name == "stack" {
                for n in nodes.iter_mut() {
                    let mut dims = e.ty(*n).shape.0.clone();
                    if dims.len() != rank {
                        return Err(e.err_at(DiagClass::Shape, a.l(0), "stack of tensors with different ranks"));
                    }
                    dims.insert(ax, Dim::known(1));
                    *n = e.apply(Op::Reshape { shape: Shape(dims) }, &[*n], loc)?;
                }
            }
            if nodes.len() == 1 {
                return out(e, nodes[0]);
            }
            let n = e.apply(Op::Concat { axis: ax }, &nodes, loc)?;
            out(e, n)
        }
        "split" => {
            let x = tensor(e, a, 0, "the operand of split")?;
            let s = e.ty(x).shape.clone();
            let ax = axis_of(e, a, 2, s.rank(), 0)?;
            let size =
                s.0[ax].as_known().ok_or_else(|| e.err_at(DiagClass::Shape, a.l(2), "cannot split a symbolic axis"))?;
            let sizes: Vec<i64> = match a.v(1) {
                Value::Int(k) if *k > 0 && size % k == 0 => vec![size / k; *k as usize],
                Value::Int(k) => {
                    return Err(e.err_at(
                        DiagClass::Shape,
                        a.l(1),
                        format!("cannot split size {size} into {k} equal parts"),
                    ))
                }
                Value::List(items) => {
                    let mut v = Vec::new();
                    for it in items {
                        v.push(e.expect_int(it, a.l(1), "a section size")?);
                    }
                    if v.iter().sum::<i64>() != size || v.iter().any(|x| *x < 0) {
                        return Err(e.err_at(
                            DiagClass::Shape,
                            a.l(1),
                            format!("sections {v:?} do not add up to the axis size {size}"),
                        ));
                    }
                    v
                }
                other => {
                    return Err(e.err_at(
                        DiagClass::Type,
                        a.l(1),
                        format!("split sections must be an integer or a list, got {}", other.kind()),
                    ))
                }
            };
            let mut parts = Vec::new();
            let mut start = 0;
            for k in sizes {
                let n = e.apply(Op::Slice { axis: ax, start, end: start + k, step: 1 }, &[x], loc)?;
                parts.push(e.tref(n));
                start += k;
            }
            Ok(Value::Tuple(parts))
        }
        "matmul" => {
            let x = tensor(e, a, 0, "the left side")?;
            let y = tensor(e, a, 1, "the right side")?;
            let n = tensor_ops::matmul(e, x, y, loc)?;
            out(e, n)
        }
        "take" => {
            let t = tensor(e, a, 0, "the table")?;
            let ids = tensor(e, a, 1, "the indices")?;
            let n = e.apply(Op::Gather, &[t, ids], loc)?;
            out(e, n)
        }
        "scatter_add" => {
            let ids = tensor(e, a, 0, "the indices")?;
            let upd = tensor(e, a, 1, "the updates")?;
            let rows = e.value_to_dim(a.v(2), a.l(2))?;
            let n = e.apply(Op::ScatterAdd { rows }, &[ids, upd], loc)?;
            out(e, n)
        }
        "scan" => {
            let (x, y) = pair(e, a, 0, 1)?;
            let s =
                broadcast_shapes(&e.ty(x).shape.clone(), &e.ty(y).shape.clone()).map_err(|err| e.type_err(loc, err))?;
            let x = broadcast_to(e, x, &s, loc)?;
            let y = broadcast_to(e, y, &s, loc)?;
            let ax = axis_of(e, a, 2, s.rank(), 0)?;
            let reverse = e.expect_bool(a.v(3), a.l(3), "reverse")?;
            let n = e.apply(Op::Scan { axis: ax, reverse }, &[x, y], loc)?;
            out(e, n)
        }
        "stop_gradient" => {
            let x = tensor(e, a, 0, "the operand")?;
            let n = e.apply(Op::StopGradient, &[x], loc)?;
            out(e, n)
        }
        "rand_uniform" | "rand_normal" => {
            let shape = Shape(dims_of(e, a.v(0), a.l(0))?);
            let user = e.expect_int(a.v(1), a.l(1), "a seed")?;
            let dist = if name == "rand_uniform" { RandomDist::Uniform } else { RandomDist::Normal };
            let seed = fnv1a(format!("{}#{}", e.frame().path, e.graph.node_count()).as_bytes()) ^ user as u64;
            let n = e.leaf(Op::Random { dist, seed }, TensorType::new(DType::F32, shape), loc)?;
            out(e, n)
        }
        "iota" => {
            let shape = Shape(dims_of(e, a.v(0), a.l(0))?);
            let ax = axis_of(e, a, 1, shape.rank(), 0)?;
            let Value::DType(dt) = a.v(2) else {
                return Err(e.err_at(DiagClass::Type, a.l(2), "dtype must be f32 or i32"));
            };
            let n = e.leaf(Op::Iota { axis: ax }, TensorType::new(*dt, shape), loc)?;
            out(e, n)
        }
        "full" => {
            let shape = Shape(dims_of(e, a.v(0), a.l(0))?);
            let value = e.expect_f64(a.v(1), a.l(1), "a fill value")?;
            let Value::DType(dt) = a.v(2) else {
                return Err(e.err_at(DiagClass::Type, a.l(2), "dtype must be f32, i32 or bool"));
            };
            let n = e.leaf(Op::Const { value }, TensorType::new(*dt, shape), loc)?;
            out(e, n)
        }
        "zeros" | "ones" => {
            let value = if name == "ones" { 1.0 } else { 0.0 };
            match a.v(0) {
                Value::None => init_fill(e, value, loc),
                v => {
                    let shape = Shape(dims_of(e, v, a.l(0))?);
                    let n = e.leaf(Op::Const { value }, TensorType::new(DType::F32, shape), loc)?;
                    out(e, n)
                }
            }
        }
        "normal" => {
            let std = e.expect_f64(a.v(0), a.l(0), "a standard deviation")?;
            let mean = e.expect_f64(a.v(1), a.l(1), "a mean")?;
            init_random(e, RandomDist::Normal, mean, std, loc)
        }
        "uniform" => {
            let lo = e.expect_f64(a.v(0), a.l(0), "a lower bound")?;
            let hi = e.expect_f64(a.v(1), a.l(1), "an upper bound")?;
            init_random(e, RandomDist::Uniform, lo, hi - lo, loc)
        }
        "constant" => {
            let v = e.expect_f64(a.v(0), a.l(0), "a constant")?;
            init_fill(e, v, loc)
        }
        "numel" => {
            let x = tensor(e, a, 0, "the operand of numel")?;
            let n = e.ty(x).shape.numel().ok_or_else(|| e.err_at(DiagClass::Limit, loc, "size overflow"))?;
            Ok(Value::from_dim(n))
        }
        "is_int" => Ok(Value::Bool(matches!(a.v(0), Value::Int(_)))),
        "int" => match a.v(0) {
            Value::Int(i) => Ok(Value::Int(*i)),
            Value::Float(f) if f.is_finite() && f.abs() < 9.0e18 => Ok(Value::Int(f.trunc() as i64)),
            Value::Bool(b) => Ok(Value::Int(i64::from(*b))),
            other => Err(e.err_at(DiagClass::Type, a.l(0), format!("int() of {}", other.kind()))),
        },
        "float" => e.expect_f64(a.v(0), a.l(0), "the operand of float()").map(Value::Float),
        "floor" | "ceil" => {
            let x = e.expect_f64(a.v(0), a.l(0), "the operand")?;
            let y = if name == "floor" { x.floor() } else { x.ceil() };
            if !y.is_finite() || y.abs() >= 9.0e18 {
                return Err(e.err_at(DiagClass::Limit, a.l(0), format!("{name}({x}) is not a representable integer")));
            }
            Ok(Value::Int(y as i64))
        }
        "len" => match a.v(0) {
            Value::List(v) | Value::Tuple(v) => Ok(Value::Int(v.len() as i64)),
            Value::Str(s) => Ok(Value::Int(s.chars().count() as i64)),
            other => Err(e.err_at(DiagClass::Type, a.l(0), format!("len() of {}", other.kind()))),
        },
        "range" => {
            let n = e.expect_int(a.v(0), a.l(0), "a range length")?;
            if !(0..=1_000_000).contains(&n) {
                return Err(e.err_at(DiagClass::Limit, a.l(0), format!("range({n}) is outside 0..=1000000")));
            }
            Ok(Value::List((0..n).map(Value::Int).collect()))
        }
        "cdiv" => {
            let x = e.expect_int(a.v(0), a.l(0), "the dividend")?;
            let y = e.expect_int(a.v(1), a.l(1), "the divisor")?;
            if y <= 0 {
                return Err(e.err_at(DiagClass::Type, a.l(1), "cdiv needs a positive divisor"));
            }
            Ok(Value::Int(x.div_euclid(y) + i64::from(x.rem_euclid(y) != 0)))
        }
        "assert" => {
            let ok = e.expect_bool(a.v(0), a.l(0), "an assertion")?;
            if !ok {
                let msg = match a.v(1) {
                    Value::Str(s) => s.clone(),
                    other => other.to_string(),
                };
                return Err(e.err_at(DiagClass::Assert, loc, format!("assertion failed: {msg}")));
            }
            Ok(Value::None)
        }
        other => unreachable!("builtin `{other}` has no implementation"),
    }
}

/// Two operands as nodes; a number on one side becomes a constant of the other's type.
fn pair(e: &mut Elab, a: &Args, i: usize, j: usize) -> Result<(NodeIndex, NodeIndex)> {
    let (x, y) = (a.v(i).clone(), a.v(j).clone());
    let to_node = |e: &mut Elab, v: &Value, other: &Value, l: Loc| -> Result<NodeIndex> {
        match v {
            Value::Tensor(t) => e.node_of(*t, l),
            v if v.is_number() => {
                let Value::Tensor(t) = other else {
                    return Err(e.err_at(DiagClass::Type, l, "at least one operand must be a tensor"));
                };
                let o = e.node_of(*t, l)?;
                let ty = e.ty(o).clone();
                if ty.dtype == DType::I32 && matches!(v, Value::Float(_)) {
                    return Err(e.err_at(DiagClass::DType, l, "a float combined with an i32 tensor"));
                }
                e.leaf(Op::Const { value: v.as_f64().expect("number") }, ty, l)
            }
            other => Err(e.err_at(DiagClass::Type, l, format!("expected a tensor or a number, got {}", other.kind()))),
        }
    };
    let xn = to_node(e, &x, &y, a.l(i))?;
    let yn = to_node(e, &y, &x, a.l(j))?;
    Ok((xn, yn))
}

fn select(e: &mut Elab, a: &Args, loc: Loc) -> Result<Value> {
    if let Value::Bool(b) = a.v(0) {
        return Ok(if *b { a.v(1).clone() } else { a.v(2).clone() });
    }
    let c = tensor(e, a, 0, "the condition of where")?;
    let cs = e.ty(c).shape.clone();
    let branch = |e: &mut Elab, i: usize, other: &Value| -> Result<NodeIndex> {
        match a.v(i) {
            Value::Tensor(t) => e.node_of(*t, a.l(i)),
            v if v.is_number() => {
                let dtype = match other {
                    Value::Tensor(t) => e.ty(e.node_of(*t, a.l(i))?).dtype,
                    _ => DType::F32,
                };
                if dtype == DType::I32 && matches!(v, Value::Float(_)) {
                    return Err(e.err_at(DiagClass::DType, a.l(i), "a float branch with an i32 branch"));
                }
                e.leaf(Op::Const { value: v.as_f64().expect("number") }, TensorType::new(dtype, cs.clone()), a.l(i))
            }
            other => Err(e.err_at(
                DiagClass::Type,
                a.l(i),
                format!("a branch of where must be a tensor or a number, got {}", other.kind()),
            )),
        }
    };
    let x = branch(e, 1, &a.v(2).clone())?;
    let y = branch(e, 2, &a.v(1).clone())?;
    let s = broadcast_shapes(&cs, &e.ty(x).shape.clone()).map_err(|err| e.type_err(loc, err))?;
    let s = broadcast_shapes(&s, &e.ty(y).shape.clone()).map_err(|err| e.type_err(loc, err))?;
    let c = broadcast_to(e, c, &s, loc)?;
    let x = broadcast_to(e, x, &s, loc)?;
    let y = broadcast_to(e, y, &s, loc)?;
    let n = e.apply(Op::Select, &[c, x, y], loc)?;
    out(e, n)
}

fn reshape_target(e: &Elab, x: NodeIndex, a: &Args) -> Result<Shape> {
    let Value::List(items) = a.v(1) else {
        return Err(e.err_at(DiagClass::Type, a.l(1), "a shape must be a list like [B, 16, -1]"));
    };
    let mut dims: Vec<Option<Dim>> = Vec::new();
    for it in items {
        match it {
            Value::Int(-1) => dims.push(None),
            v => dims.push(Some(e.value_to_dim(v, a.l(1))?)),
        }
    }
    if dims.iter().filter(|d| d.is_none()).count() > 1 {
        return Err(e.err_at(DiagClass::Shape, a.l(1), "at most one size of a reshape can be -1"));
    }
    let src = e.ty(x).shape.clone();
    if let Some(hole) = dims.iter().position(|d| d.is_none()) {
        let known = dims.iter().flatten().try_fold(Dim::known(1), |acc, d| acc.mul(d));
        let total = src.numel();
        let fill = match (total, known) {
            (Some(t), Some(k)) => t.div(&k),
            _ => None,
        };
        let Some(fill) = fill else {
            return Err(e.err_at(
                DiagClass::Shape,
                a.l(1),
                format!("cannot reshape {src} to {}: the sizes do not divide", show_dims(&dims)),
            ));
        };
        dims[hole] = Some(fill);
    }
    Ok(Shape(dims.into_iter().map(|d| d.expect("filled")).collect()))
}

fn show_dims(dims: &[Option<Dim>]) -> String {
    let parts: Vec<String> =
        dims.iter().map(|d| d.as_ref().map(|d| d.to_string()).unwrap_or_else(|| "-1".into())).collect();
    format!("[{}]", parts.join(", "))
}

/// Inside an initialiser: a tensor of the parameter's shape filled with `value`.
pub(crate) fn init_fill(e: &mut Elab, value: f64, loc: Loc) -> Result<Value> {
    let Some(shape) = e.init_shape.clone() else {
        return Err(e
            .err_at(
                DiagClass::Invalid,
                loc,
                "`zeros`, `ones` and `constant` without a shape only work in a parameter initialiser",
            )
            .with_hint("give a shape: zeros([B, 16])"));
    };
    let n = e.leaf(Op::Const { value }, TensorType::new(DType::F32, shape), loc)?;
    out(e, n)
}

/// Inside an initialiser: `offset + scale * r` with `r` uniform on [0,1) or standard normal.
pub(crate) fn init_random(e: &mut Elab, dist: RandomDist, offset: f64, scale: f64, loc: Loc) -> Result<Value> {
    let Some(shape) = e.init_shape.clone() else {
        return Err(e
            .err_at(DiagClass::Invalid, loc, "`normal` and `uniform` are parameter initialisers")
            .with_hint("for random tensors in a model use rand_normal(shape) or rand_uniform(shape)"));
    };
    let ty = TensorType::new(DType::F32, shape);
    let seed = e.init_seed.wrapping_add(e.graph.node_count() as u64);
    let r = e.leaf(Op::Random { dist, seed }, ty.clone(), loc)?;
    let s = e.leaf(Op::Const { value: scale }, ty.clone(), loc)?;
    let m = e.apply(Op::Binary(BinaryOp::Mul), &[r, s], loc)?;
    if offset == 0.0 {
        return out(e, m);
    }
    let o = e.leaf(Op::Const { value: offset }, ty, loc)?;
    let n = e.apply(Op::Binary(BinaryOp::Add), &[m, o], loc)?;
    out(e, n)
}
