//! Primitives and composites that dfdx also has, cross-checked against dfdx as an
//! independent oracle: forward values and gradients (f64) of `sum(y * r)`.

mod common;

use dfdx::prelude::*;
use muse_compiler::autodiff::{differentiate, Wrt};
use muse_runtime::inputs::random_inputs;
use muse_runtime::{run, HostTensor, Precision, RunOptions};
use std::collections::HashMap;

const M: usize = 3;
const N: usize = 17;
const K: usize = 5;

type Dev = Cpu;
type T2<const A: usize, const B: usize> = Tensor<Rank2<A, B>, f64, Dev>;

/// Runs a muse model with inputs `x` (and `w` when given) and weight `r`; returns the output
/// `y` and the gradients of `sum(y * r)` by input name.
fn muse_side(
    decls: &str,
    body: &str,
    out: &str,
    given: &HashMap<String, HostTensor>,
) -> (Vec<f64>, HashMap<String, Vec<f64>>) {
    let src = format!(
        "import \"std/nn.muse\"\nmodel t {{\n{decls}\n{body}\n  output y\n  input r: f32[{out}]\n  loss l = sum(y * r)\n}}\n"
    );
    let m = common::compile_one("dfdx.muse", &src);
    let d = differentiate(&m.graph, Wrt { inputs: true });
    let v = run(&d.graph, given, &HashMap::new(), &RunOptions { precision: Precision::F64, seed: 0 }).unwrap();
    let y = v.get(m.graph.outputs[0].1).floats().to_vec();
    let grads = d.inputs.iter().map(|(n, g)| (n.clone(), v.get(*g).floats().to_vec())).collect();
    (y, grads)
}

fn close(what: &str, a: &[f64], b: &[f64]) {
    assert_eq!(a.len(), b.len(), "{what}: lengths");
    for (i, (x, y)) in a.iter().zip(b).enumerate() {
        assert!((x - y).abs() <= 1e-10 * (1.0 + x.abs().max(y.abs())), "{what}[{i}]: muse {x:e}, dfdx {y:e}");
    }
}

fn inputs(decls: &str, out: &str) -> HashMap<String, HostTensor> {
    let src = format!("model t {{\n{decls}\n  input r: f32[{out}]\n  output o = r\n}}\n");
    let m = common::compile_one("inputs.muse", &src);
    random_inputs(&m.graph, 1, 21)
}

/// One unary case: muse `body` (over `x` of [M, N]) against dfdx's `f`.
fn unary(
    body: &str,
    f: impl Fn(Tensor<Rank2<M, N>, f64, Dev, OwnedTape<f64, Dev>>) -> Tensor<Rank2<M, N>, f64, Dev, OwnedTape<f64, Dev>>,
) {
    let decls = format!("  input x: f32[{M}, {N}]");
    let out = format!("{M}, {N}");
    let given = inputs(&decls, &out);
    let (y, g) = muse_side(&decls, body, &out, &given);
    let dev: Dev = Default::default();
    let x: T2<M, N> = dev.tensor(given["x"].floats().to_vec());
    let r: T2<M, N> = dev.tensor(given["r"].floats().to_vec());
    let yt = f(x.leaky_trace());
    let y_dfdx = yt.retaped::<NoneTape>().as_vec();
    let grads = (yt * r).sum().backward();
    close(&format!("{body}: forward"), &y, &y_dfdx);
    close(&format!("{body}: gradient"), &g["x"], &grads.get(&x).as_vec());
}

#[test]
fn elementwise() {
    unary("  y = exp(x)", |x| x.exp());
    unary("  y = log(x * x + 0.5)", |x| (x.square() + 0.5).ln());
    unary("  y = sqrt(x * x + 0.5)", |x| (x.square() + 0.5).sqrt());
    unary("  y = tanh(x)", |x| x.tanh());
    unary("  y = sin(x) + cos(x)", |x| {
        let c = x.with_empty_tape().cos();
        x.sin() + c
    });
    unary("  y = abs(x)", |x| x.abs());
    unary("  y = sigmoid(x)", |x| x.sigmoid());
    unary("  y = gelu(x)", |x| x.fast_gelu());
    unary("  y = recip(x * x + 0.5)", |x| (x.square() + 0.5).recip());
}

#[test]
fn reductions_and_normalisation() {
    unary("  y = softmax(x)", |x| x.softmax::<Axis<1>>());
    unary("  y = log_softmax(x)", |x| x.log_softmax::<Axis<1>>());
    unary("  y = layernorm(x, 1e-5, false)", |x| x.normalize::<Axis<1>>(1e-5));
    unary("  y = x - expand(max(x, 1, true), [3, 17])", |x| {
        let m = x.with_empty_tape().max::<Rank1<M>, _>().broadcast::<Rank2<M, N>, _>();
        x - m
    });
    unary("  y = x * expand(sum(x, 0, true), [3, 17])", |x| {
        let s = x.with_empty_tape().sum::<Rank1<N>, _>().broadcast::<Rank2<M, N>, _>();
        x * s
    });
}

#[test]
fn matmul_and_broadcast() {
    let decls = format!("  input x: f32[{M}, {K}]\n  input w: f32[{K}, {N}]\n  input v: f32[{N}]");
    let out = format!("{M}, {N}");
    let given = inputs(&decls, &out);
    let (y, g) = muse_side(&decls, "  y = x @ w + v", &out, &given);
    let dev: Dev = Default::default();
    let x: T2<M, K> = dev.tensor(given["x"].floats().to_vec());
    let w: T2<K, N> = dev.tensor(given["w"].floats().to_vec());
    let v: Tensor<Rank1<N>, f64, Dev> = dev.tensor(given["v"].floats().to_vec());
    let r: T2<M, N> = dev.tensor(given["r"].floats().to_vec());
    // dfdx records gradients on the left operand's tape: trace one operand at a time, on the left.
    let yt = x.leaky_trace().matmul(w.clone()) + v.clone().broadcast::<Rank2<M, N>, _>();
    close("matmul forward", &y, &yt.retaped::<NoneTape>().as_vec());
    let gx = (yt * r.clone()).sum().backward();
    close("d x", &g["x"], &gx.get(&x).as_vec());
    // x @ w = (w^T @ x^T)^T
    let wt = w.leaky_trace().permute::<Rank2<N, K>, _>().matmul(x.clone().permute::<Rank2<K, M>, _>());
    let gw = (wt.permute::<Rank2<M, N>, _>() * r.clone()).sum().backward();
    close("d w", &g["w"], &gw.get(&w).as_vec());
    let vt = v.leaky_trace().broadcast::<Rank2<M, N>, _>() + x.clone().matmul(w.clone());
    let gv = (vt * r.clone()).sum().backward();
    close("d v", &g["v"], &gv.get(&v).as_vec());
}
