//! One plain function per primitive, written for obvious correctness, not speed: the
//! reference every faster backend is compared with.

use crate::rng;
use crate::tensor::{strides, Data, HostTensor};
use muse_compiler::ir::{BinaryOp, DType, RandomDist, ReduceOp, UnaryOp};

/// Splits `shape` around `axis` into (outer, size, inner) element counts.
fn around(shape: &[usize], axis: usize) -> (usize, usize, usize) {
    let outer = shape[..axis].iter().product();
    let inner = shape[axis + 1..].iter().product();
    (outer, shape[axis], inner)
}

/// Rounds to f32 in f32 mode, so the interpreter sees the values an f32 backend would.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Precision {
    /// Every float result rounded to f32.
    F32,
    /// Full f64 (for finite-difference checks).
    F64,
}

impl Precision {
    /// Applies the precision to one value.
    pub fn round(self, x: f64) -> f64 {
        match self {
            Precision::F32 => x as f32 as f64,
            Precision::F64 => x,
        }
    }
    fn all(self, v: Vec<f64>) -> Vec<f64> {
        match self {
            Precision::F32 => v.into_iter().map(|x| x as f32 as f64).collect(),
            Precision::F64 => v,
        }
    }
}

/// A tensor of `shape` filled with `value` in `dtype`.
pub fn constant(shape: &[usize], dtype: DType, value: f64, p: Precision) -> HostTensor {
    let n = shape.iter().product();
    match dtype {
        DType::F32 => HostTensor::f(shape, vec![p.round(value); n]),
        DType::I32 => HostTensor::i(shape, vec![value as i32; n]),
        DType::Bool => HostTensor::b(shape, vec![value != 0.0; n]),
    }
}

/// The index along `axis` at every position.
pub fn iota(shape: &[usize], axis: usize, dtype: DType) -> HostTensor {
    let (outer, n, inner) = around(shape, axis);
    let idx: Vec<usize> = (0..outer * n * inner).map(|i| (i / inner) % n).collect();
    match dtype {
        DType::F32 => HostTensor::f(shape, idx.into_iter().map(|i| i as f64).collect()),
        DType::I32 => HostTensor::i(shape, idx.into_iter().map(|i| i as i32).collect()),
        DType::Bool => HostTensor::b(shape, idx.into_iter().map(|i| i != 0).collect()),
    }
}

/// Seeded random numbers, element `i` drawn from counter `i` of the op's stream.
pub fn random(shape: &[usize], dist: RandomDist, key: u64, p: Precision) -> HostTensor {
    let n: usize = shape.iter().product();
    let v = (0..n as u64)
        .map(|i| match dist {
            RandomDist::Uniform => rng::uniform(key, i),
            RandomDist::Normal => rng::normal(key, i),
        })
        .collect();
    HostTensor::f(shape, p.all(v))
}

/// Elementwise function of one operand.
pub fn unary(op: UnaryOp, x: &HostTensor, p: Precision) -> HostTensor {
    match (&x.data, op) {
        (Data::B(v), UnaryOp::Not) => HostTensor::b(&x.shape, v.iter().map(|b| !b).collect()),
        (Data::I(v), UnaryOp::Neg) => HostTensor::i(&x.shape, v.iter().map(|a| a.wrapping_neg()).collect()),
        (Data::I(v), UnaryOp::Abs) => HostTensor::i(&x.shape, v.iter().map(|a| a.wrapping_abs()).collect()),
        (Data::F(v), op) => {
            let f = |a: f64| op.eval(a).expect("float unary op");
            HostTensor::f(&x.shape, p.all(v.iter().map(|&a| f(a)).collect()))
        }
        (d, op) => unreachable!("{op:?} on {:?} is rejected by type inference", d),
    }
}

/// Elementwise function of two same-shaped operands.
pub fn binary(op: BinaryOp, a: &HostTensor, b: &HostTensor, p: Precision) -> HostTensor {
    let shape = &a.shape;
    if op.is_comparison() {
        let (x, y) = (a.to_f64(), b.to_f64());
        let r = x
            .iter()
            .zip(&y)
            .map(|(&x, &y)| match op {
                BinaryOp::Lt => x < y,
                BinaryOp::Le => x <= y,
                BinaryOp::Gt => x > y,
                BinaryOp::Ge => x >= y,
                BinaryOp::Eq => x == y,
                _ => x != y,
            })
            .collect();
        return HostTensor::b(shape, r);
    }
    match (&a.data, &b.data) {
        (Data::B(x), Data::B(y)) => {
            let r = x.iter().zip(y).map(|(&x, &y)| if op == BinaryOp::And { x && y } else { x || y }).collect();
            HostTensor::b(shape, r)
        }
        (Data::I(x), Data::I(y)) => {
            let r = x
                .iter()
                .zip(y)
                .map(|(&x, &y)| match op {
                    BinaryOp::Add => x.wrapping_add(y),
                    BinaryOp::Sub => x.wrapping_sub(y),
                    BinaryOp::Mul => x.wrapping_mul(y),
                    // Integer division truncates, as in C; division by zero gives 0 rather than trapping.
                    BinaryOp::Div => x.checked_div(y).unwrap_or(0),
                    BinaryOp::Max => x.max(y),
                    BinaryOp::Min => x.min(y),
                    _ => unreachable!("logical op on integers"),
                })
                .collect();
            HostTensor::i(shape, r)
        }
        (Data::F(x), Data::F(y)) => {
            let r = x
                .iter()
                .zip(y)
                .map(|(&x, &y)| match op {
                    BinaryOp::Add => x + y,
                    BinaryOp::Sub => x - y,
                    BinaryOp::Mul => x * y,
                    BinaryOp::Div => x / y,
                    // NaN propagates, as in IEEE fmax would not: a NaN must never be hidden.
                    BinaryOp::Max => {
                        if x.is_nan() || y.is_nan() {
                            f64::NAN
                        } else {
                            x.max(y)
                        }
                    }
                    BinaryOp::Min => {
                        if x.is_nan() || y.is_nan() {
                            f64::NAN
                        } else {
                            x.min(y)
                        }
                    }
                    _ => unreachable!("logical op on floats"),
                })
                .collect();
            HostTensor::f(shape, p.all(r))
        }
        _ => unreachable!("mixed element types are rejected by type inference"),
    }
}

/// `cond ? a : b`.
pub fn select(c: &HostTensor, a: &HostTensor, b: &HostTensor) -> HostTensor {
    let Data::B(c) = &c.data else { unreachable!("bool condition") };
    let pick = |i: usize| c[i];
    match (&a.data, &b.data) {
        (Data::F(x), Data::F(y)) => {
            HostTensor::f(&a.shape, (0..x.len()).map(|i| if pick(i) { x[i] } else { y[i] }).collect())
        }
        (Data::I(x), Data::I(y)) => {
            HostTensor::i(&a.shape, (0..x.len()).map(|i| if pick(i) { x[i] } else { y[i] }).collect())
        }
        (Data::B(x), Data::B(y)) => {
            HostTensor::b(&a.shape, (0..x.len()).map(|i| if pick(i) { x[i] } else { y[i] }).collect())
        }
        _ => unreachable!("branches of one type"),
    }
}

/// Element type conversion: float to int truncates toward zero (saturating), bool is 0/1.
pub fn cast(x: &HostTensor, to: DType, p: Precision) -> HostTensor {
    let v = x.to_f64();
    match to {
        DType::F32 => HostTensor::f(&x.shape, p.all(v)),
        DType::I32 => HostTensor::i(&x.shape, v.into_iter().map(|a| a as i32).collect()),
        DType::Bool => HostTensor::b(&x.shape, v.into_iter().map(|a| a != 0.0).collect()),
    }
}

/// Reduction along `axis`, keeping it with size 1. Max/min propagate NaN; arg* pick the first.
pub fn reduce(op: ReduceOp, x: &HostTensor, axis: usize, p: Precision) -> HostTensor {
    let (outer, n, inner) = around(&x.shape, axis);
    let mut shape = x.shape.clone();
    shape[axis] = 1;
    let v = x.to_f64();
    let at = |o: usize, k: usize, i: usize| v[(o * n + k) * inner + i];
    let mut out = Vec::with_capacity(outer * inner);
    for o in 0..outer {
        for i in 0..inner {
            let r = match op {
                ReduceOp::Sum => (0..n).map(|k| at(o, k, i)).sum::<f64>(),
                ReduceOp::Max | ReduceOp::Min => {
                    let mut best = if op == ReduceOp::Max { f64::NEG_INFINITY } else { f64::INFINITY };
                    for k in 0..n {
                        let a = at(o, k, i);
                        if a.is_nan() {
                            best = f64::NAN;
                            break;
                        }
                        best = if op == ReduceOp::Max { best.max(a) } else { best.min(a) };
                    }
                    best
                }
                ReduceOp::ArgMax | ReduceOp::ArgMin => {
                    let mut best = 0;
                    for k in 1..n {
                        let (a, b) = (at(o, k, i), at(o, best, i));
                        if (op == ReduceOp::ArgMax && a > b) || (op == ReduceOp::ArgMin && a < b) {
                            best = k;
                        }
                    }
                    best as f64
                }
            };
            out.push(r);
        }
    }
    match (op, &x.data) {
        (ReduceOp::ArgMax | ReduceOp::ArgMin, _) => HostTensor::i(&shape, out.into_iter().map(|a| a as i32).collect()),
        (_, Data::I(_)) => HostTensor::i(&shape, out.into_iter().map(|a| a as i32).collect()),
        _ => HostTensor::f(&shape, p.all(out)),
    }
}

/// Gathers elements by a function from output position to input position.
fn remap(x: &HostTensor, shape: &[usize], src: impl Fn(usize) -> Option<usize>, fill: f64) -> HostTensor {
    let n: usize = shape.iter().product();
    match &x.data {
        Data::F(v) => HostTensor::f(shape, (0..n).map(|i| src(i).map_or(fill, |j| v[j])).collect()),
        Data::I(v) => HostTensor::i(shape, (0..n).map(|i| src(i).map_or(fill as i32, |j| v[j])).collect()),
        Data::B(v) => HostTensor::b(shape, (0..n).map(|i| src(i).map_or(fill != 0.0, |j| v[j])).collect()),
    }
}

/// Same elements, new shape.
pub fn reshape(x: &HostTensor, shape: &[usize]) -> HostTensor {
    HostTensor { shape: shape.to_vec(), data: x.data.clone() }
}

/// Result axis `i` is operand axis `perm[i]`.
pub fn permute(x: &HostTensor, perm: &[usize]) -> HostTensor {
    let shape: Vec<usize> = perm.iter().map(|&p| x.shape[p]).collect();
    let in_strides = strides(&x.shape);
    let out_strides = strides(&shape);
    remap(
        x,
        &shape,
        |i| {
            let mut off = 0;
            for (k, &p) in perm.iter().enumerate() {
                off += (i / out_strides[k]) % shape[k] * in_strides[p];
            }
            Some(off)
        },
        0.0,
    )
}

/// Repeats size-1 axes to `shape`.
pub fn broadcast(x: &HostTensor, shape: &[usize]) -> HostTensor {
    let in_strides = strides(&x.shape);
    let out_strides = strides(shape);
    remap(
        x,
        shape,
        |i| {
            let mut off = 0;
            for k in 0..shape.len() {
                let idx = (i / out_strides[k]) % shape[k];
                if x.shape[k] != 1 {
                    off += idx * in_strides[k];
                }
            }
            Some(off)
        },
        0.0,
    )
}

/// Elements `start, start+step, ... < end` along `axis`.
pub fn slice(x: &HostTensor, axis: usize, start: usize, end: usize, step: usize) -> HostTensor {
    let (_, n, inner) = around(&x.shape, axis);
    let k = (end - start).div_ceil(step);
    let mut shape = x.shape.clone();
    shape[axis] = k;
    remap(
        x,
        &shape,
        |i| {
            let (o, j, r) = (i / (k * inner), (i / inner) % k, i % inner);
            Some((o * n + start + j * step) * inner + r)
        },
        0.0,
    )
}

/// Pads `axis` with `before` and `after` elements of `value`.
pub fn pad(x: &HostTensor, axis: usize, before: usize, after: usize, value: f64, p: Precision) -> HostTensor {
    let (_, n, inner) = around(&x.shape, axis);
    let m = before + n + after;
    let mut shape = x.shape.clone();
    shape[axis] = m;
    remap(
        x,
        &shape,
        |i| {
            let (o, j, r) = (i / (m * inner), (i / inner) % m, i % inner);
            (j >= before && j < before + n).then(|| (o * n + j - before) * inner + r)
        },
        p.round(value),
    )
}

/// Joins along `axis`.
pub fn concat(xs: &[&HostTensor], axis: usize) -> HostTensor {
    let mut shape = xs[0].shape.clone();
    shape[axis] = xs.iter().map(|x| x.shape[axis]).sum();
    let (outer, m, inner) = around(&shape, axis);
    let mut parts: Vec<(usize, &HostTensor)> = Vec::new(); // (first index along axis, tensor)
    let mut at = 0;
    for x in xs {
        parts.push((at, x));
        at += x.shape[axis];
    }
    let n = outer * m * inner;
    let pick = |i: usize| {
        let (o, j, r) = (i / (m * inner), (i / inner) % m, i % inner);
        let (s, x) = parts.iter().rev().find(|(s, _)| *s <= j).expect("some part holds j");
        (x, (o * x.shape[axis] + j - s) * inner + r)
    };
    match xs[0].data {
        Data::F(_) => HostTensor::f(
            &shape,
            (0..n)
                .map(|i| {
                    let (x, k) = pick(i);
                    x.floats()[k]
                })
                .collect(),
        ),
        Data::I(_) => HostTensor::i(
            &shape,
            (0..n)
                .map(|i| {
                    let (x, k) = pick(i);
                    match &x.data {
                        Data::I(v) => v[k],
                        _ => unreachable!(),
                    }
                })
                .collect(),
        ),
        Data::B(_) => HostTensor::b(
            &shape,
            (0..n)
                .map(|i| {
                    let (x, k) = pick(i);
                    match &x.data {
                        Data::B(v) => v[k],
                        _ => unreachable!(),
                    }
                })
                .collect(),
        ),
    }
}

/// `[..., M, K] x [..., K, N]`, accumulated in f64.
pub fn matmul(a: &HostTensor, b: &HostTensor, p: Precision) -> HostTensor {
    let r = a.shape.len();
    let (m, k, n) = (a.shape[r - 2], a.shape[r - 1], b.shape[r - 1]);
    let batch: usize = a.shape[..r - 2].iter().product();
    let (x, y) = (a.floats(), b.floats());
    let mut out = vec![0.0; batch * m * n];
    for t in 0..batch {
        for i in 0..m {
            for j in 0..n {
                let mut s = 0.0;
                for q in 0..k {
                    s += x[(t * m + i) * k + q] * y[(t * k + q) * n + j];
                }
                out[(t * m + i) * n + j] = s;
            }
        }
    }
    let mut shape = a.shape.clone();
    shape[r - 1] = n;
    HostTensor::f(&shape, p.all(out))
}

/// Rows of `table` selected by `ids`; `Err(index)` for an id outside the table.
pub fn gather(table: &HostTensor, ids: &HostTensor) -> Result<HostTensor, i64> {
    let Data::I(ids_v) = &ids.data else { unreachable!("i32 ids") };
    let rows = table.shape[0];
    let row: usize = table.shape[1..].iter().product();
    if let Some(&bad) = ids_v.iter().find(|&&i| i < 0 || i as usize >= rows) {
        return Err(bad as i64);
    }
    let mut shape = ids.shape.clone();
    shape.extend_from_slice(&table.shape[1..]);
    Ok(remap(table, &shape, |i| Some(ids_v[i / row] as usize * row + i % row), 0.0))
}

/// Sums `updates` into `rows` rows at `ids`; `Err(index)` for an id outside the rows.
pub fn scatter_add(ids: &HostTensor, updates: &HostTensor, rows: usize, p: Precision) -> Result<HostTensor, i64> {
    let Data::I(ids_v) = &ids.data else { unreachable!("i32 ids") };
    if let Some(&bad) = ids_v.iter().find(|&&i| i < 0 || i as usize >= rows) {
        return Err(bad as i64);
    }
    let row: usize = updates.shape[ids.shape.len()..].iter().product();
    let mut shape = vec![rows];
    shape.extend_from_slice(&updates.shape[ids.shape.len()..]);
    let u = updates.floats();
    let mut out = vec![0.0; rows * row];
    for (k, &id) in ids_v.iter().enumerate() {
        for j in 0..row {
            out[id as usize * row + j] += u[k * row + j];
        }
    }
    Ok(HostTensor::f(&shape, p.all(out)))
}

/// `h[t] = a[t] * h[t-1] + b[t]` along `axis` (from the end when `reverse`), `h[-1] = 0`.
pub fn scan(a: &HostTensor, b: &HostTensor, axis: usize, reverse: bool, p: Precision) -> HostTensor {
    let (outer, n, inner) = around(&a.shape, axis);
    let (x, y) = (a.floats(), b.floats());
    let mut out = vec![0.0; x.len()];
    for o in 0..outer {
        for i in 0..inner {
            let mut h = 0.0;
            for step in 0..n {
                let t = if reverse { n - 1 - step } else { step };
                let k = (o * n + t) * inner + i;
                h = p.round(p.round(x[k] * h) + y[k]);
                out[k] = h;
            }
        }
    }
    HostTensor::f(&a.shape, out)
}

#[cfg(test)]
mod tests {
    use super::*;

    const P: Precision = Precision::F64;

    #[test]
    fn views_by_hand() {
        let x = HostTensor::f(&[2, 3], vec![0., 1., 2., 3., 4., 5.]);
        assert_eq!(permute(&x, &[1, 0]).floats(), &[0., 3., 1., 4., 2., 5.]);
        assert_eq!(slice(&x, 1, 0, 3, 2).floats(), &[0., 2., 3., 5.]);
        assert_eq!(pad(&x, 0, 1, 0, 9.0, P).floats(), &[9., 9., 9., 0., 1., 2., 3., 4., 5.]);
        let c = concat(&[&x, &HostTensor::f(&[2, 1], vec![7., 8.])], 1);
        assert_eq!(c.shape, vec![2, 4]);
        assert_eq!(c.floats(), &[0., 1., 2., 7., 3., 4., 5., 8.]);
        let col = HostTensor::f(&[2, 1], vec![1., 2.]);
        assert_eq!(broadcast(&col, &[2, 3]).floats(), &[1., 1., 1., 2., 2., 2.]);
        assert_eq!(iota(&[2, 3], 1, DType::I32).data, Data::I(vec![0, 1, 2, 0, 1, 2]));
    }

    #[test]
    fn reductions_matmul_gather_scan_by_hand() {
        let x = HostTensor::f(&[2, 3], vec![0., 5., 2., 3., 4., 1.]);
        assert_eq!(reduce(ReduceOp::Sum, &x, 1, P).floats(), &[7., 8.]);
        assert_eq!(reduce(ReduceOp::Max, &x, 0, P).floats(), &[3., 5., 2.]);
        assert_eq!(reduce(ReduceOp::ArgMax, &x, 1, P).data, Data::I(vec![1, 1]));
        let a = HostTensor::f(&[1, 2, 2], vec![1., 2., 3., 4.]);
        let b = HostTensor::f(&[1, 2, 1], vec![5., 6.]);
        assert_eq!(matmul(&a, &b, P).floats(), &[17., 39.]);
        let ids = HostTensor::i(&[2], vec![1, 1]);
        assert_eq!(gather(&x, &ids).unwrap().floats(), &[3., 4., 1., 3., 4., 1.]);
        assert_eq!(gather(&x, &HostTensor::i(&[1], vec![2])).unwrap_err(), 2);
        let upd = HostTensor::f(&[2, 3], vec![1., 1., 1., 2., 2., 2.]);
        assert_eq!(scatter_add(&ids, &upd, 3, P).unwrap().floats(), &[0., 0., 0., 3., 3., 3., 0., 0., 0.]);
        let av = HostTensor::f(&[1, 3], vec![0.5, 0.5, 0.5]);
        let bv = HostTensor::f(&[1, 3], vec![1., 2., 4.]);
        assert_eq!(scan(&av, &bv, 1, false, P).floats(), &[1., 2.5, 5.25]);
        assert_eq!(scan(&av, &bv, 1, true, P).floats(), &[3., 4., 4.]);
    }
}
