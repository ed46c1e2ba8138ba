//! Finite-difference checks (f64) of autodiff for every primitive and every standard-library
//! block, at shapes that exercise broadcasting and odd sizes (1, 3, 17).
//!
//! Each case is a model whose loss is `sum(y * r)` for a random `r`, so every element of the
//! output gets its own weight. Gradients with respect to every parameter and every f32 input
//! are compared with central differences of the forward graph run by the interpreter.

mod common;

use muse_compiler::autodiff::{differentiate, Wrt};
use muse_compiler::Model;
use muse_runtime::inputs::random_inputs;
use muse_runtime::{init_params, run, HostTensor, Precision, RunOptions};
use std::collections::HashMap;

const F64: RunOptions = RunOptions { precision: Precision::F64, seed: 11 };

fn model(decls: &str, body: &str, out_shape: &str) -> Model {
    let src = format!(
        "import \"std/nn.muse\"\nimport \"std/attention.muse\"\nimport \"std/mamba.muse\"\nimport \"std/conv.muse\"\nimport \"std/maskgit.muse\"\n\
         model t {{\n{decls}\n{body}\n  input r: f32[{out_shape}]\n  loss l = sum(y * r)\n}}\n"
    );
    common::compile_one("case.muse", &src)
}

fn loss_of(m: &Model, inputs: &HashMap<String, HostTensor>, params: &HashMap<String, HostTensor>) -> f64 {
    let v = run(&m.graph, inputs, params, &F64).unwrap();
    v.get(m.graph.losses[0].1).floats()[0]
}

fn perturbed(t: &HostTensor, i: usize, h: f64) -> HostTensor {
    let mut t = t.clone();
    if let muse_runtime::Data::F(v) = &mut t.data {
        v[i] += h;
    }
    t
}

/// Up to `k` element positions of a tensor of `n` elements, spread over it.
fn positions(n: usize, k: usize) -> Vec<usize> {
    if n <= k {
        return (0..n).collect();
    }
    (0..k).map(|j| (j * 7919 + 13) % n).collect()
}

/// Checks every parameter and f32 input gradient against central differences.
fn check(m: &Model, batch: usize, tol: f64) {
    let d = differentiate(&m.graph, Wrt { inputs: true });
    assert!(d.unreached.is_empty(), "no gradient reaches {:?}", d.unreached);
    let inputs = random_inputs(&m.graph, batch, 5);
    let params = init_params(&m.graph, 3, Precision::F64).unwrap();
    let vals = run(&d.graph, &inputs, &params, &F64).unwrap();
    let base = loss_of(m, &inputs, &params);
    assert!((vals.get(d.loss).floats()[0] - base).abs() <= 1e-12 * base.abs().max(1.0));
    let h = 1e-6;
    let mut checked = 0;
    let mut compare = |what: &str, analytic: &[f64], numeric: &dyn Fn(usize) -> f64, n: usize| {
        for i in positions(n, 12) {
            let num = numeric(i);
            let ana = analytic[i];
            let err = (num - ana).abs();
            assert!(
                err <= tol * (1.0 + num.abs().max(ana.abs())),
                "{what}[{i}]: autodiff {ana:.10e}, finite differences {num:.10e}"
            );
            checked += 1;
        }
    };
    for (name, g) in &d.params {
        let ana = vals.get(*g).floats().to_vec();
        let t = &params[name];
        let num = |i: usize| {
            let mut p = params.clone();
            p.insert(name.clone(), perturbed(t, i, h));
            let up = loss_of(m, &inputs, &p);
            p.insert(name.clone(), perturbed(t, i, -h));
            (up - loss_of(m, &inputs, &p)) / (2.0 * h)
        };
        compare(name, &ana, &num, t.len());
    }
    for (name, g) in &d.inputs {
        let ana = vals.get(*g).floats().to_vec();
        let t = &inputs[name];
        let num = |i: usize| {
            let mut x = inputs.clone();
            x.insert(name.clone(), perturbed(t, i, h));
            let up = loss_of(m, &x, &params);
            x.insert(name.clone(), perturbed(t, i, -h));
            (up - loss_of(m, &x, &params)) / (2.0 * h)
        };
        compare(name, &ana, &num, t.len());
    }
    assert!(checked > 0);
}

fn case(decls: &str, body: &str, out: &str) {
    check(&model(decls, body, out), 2, 1e-6);
}

const X: &str = "  input x: f32[3, 17]";

#[test]
fn unary_primitives() {
    for f in ["exp(x)", "tanh(x)", "sin(x)", "cos(x)", "abs(x)", "erf(x)", "-x"] {
        case(X, &format!("  y = {f}"), "3, 17");
    }
    for f in ["log(x * x + 0.5)", "log1p(x * x)", "sqrt(x * x + 0.5)", "rsqrt(x * x + 0.5)", "recip(x * x + 0.5)"] {
        case(X, &format!("  y = {f}"), "3, 17");
    }
}

#[test]
fn binary_primitives_with_broadcasting() {
    let decls = "  input x: f32[3, 17]\n  input v: f32[17]\n  input c: f32[3, 1]\n  input s: f32[1]";
    for f in ["x + v", "x - c", "c * x", "x / (v * v + 1.0)", "maximum(x, v)", "minimum(c, x)", "x * s - s"] {
        case(decls, &format!("  y = {f}"), "3, 17");
    }
}

#[test]
fn select_and_comparisons() {
    case("  input x: f32[3, 17]\n  input v: f32[17]", "  y = where(x > v, x * v, x - v)", "3, 17");
    case(X, "  y = where(x < 0.0, 0.0, x) + cast(x > 0.5, f32) * x", "3, 17");
}

#[test]
fn reductions() {
    case("  input x: f32[3, 17, 1]", "  y = sum(x, 1)", "3, 1");
    case(X, "  y = sum(x)", "");
    case(X, "  y = max(x, 1, true) + min(x, 0, true)", "3, 17");
    case(X, "  y = sum(x, [0, 1], true)", "1, 1");
}

#[test]
fn views() {
    let x3 = "  input x: f32[3, 1, 17]";
    case(x3, "  y = reshape(x, [17, 3])", "17, 3");
    case(x3, "  y = permute(x, [2, 0, 1])", "17, 3, 1");
    case(x3, "  y = expand(x, [2, 3, 4, 17])", "2, 3, 4, 17");
    case(x3, "  y = slice(x, 2, 1, 17, 3)", "3, 1, 6");
    case(x3, "  y = slice(x, 2, 2, 16, 2)", "3, 1, 7");
    case(x3, "  y = slice(x, 0, -1)", "1, 1, 17");
    case(x3, "  y = pad(x, 2, 2, 1, 0.5)", "3, 1, 20");
    case(x3, "  y = concat([x, x * x, slice(x, 2, 0, 1)], -1)", "3, 1, 35");
    case(x3, "  a, b = split(x, [5, 12])\n  y = b * 2.0 + sum(a)", "3, 1, 12");
    case(x3, "  y = stack([index(x, 0, 1), squeeze(slice(x, 0, 2), 0)], 0)", "2, 1, 17");
}

#[test]
fn matrix_products() {
    case("  input a: f32[2, 3, 5]\n  input b: f32[2, 5, 4]", "  y = a @ b", "2, 3, 4");
    case("  input a: f32[B, 3, 5]\n  input w: f32[5, 17]", "  y = a @ w", "B, 3, 17");
    case("  input a: f32[1, 5]\n  input b: f32[3, 5, 2]", "  y = a @ b", "3, 1, 2");
}

#[test]
fn gather_and_scatter() {
    case("  input ids: i32[B, 3]\n  param t: [7, 1, 3] ~ normal(1.0)", "  y = take(t, ids)", "B, 3, 1, 3");
    case(
        "  input ids: i32[B, 3]\n  input u: f32[B, 3, 2]\n  z = take(full([5, 1], 1.0), ids)",
        "  y = scatter_add(ids, u * z, 5)",
        "5, 2",
    );
}

#[test]
fn scans() {
    let decls = "  input a: f32[2, 17, 3]\n  input b: f32[2, 17, 3]";
    case(decls, "  y = scan(tanh(a), b, 1)", "2, 17, 3");
    case(decls, "  y = scan(tanh(a), b, 1, reverse = true)", "2, 17, 3");
    case(decls, "  y = scan(tanh(a), b, 0)", "2, 17, 3");
    case("  input a: f32[2, 1, 3]\n  input b: f32[2, 1, 3]", "  y = scan(a, b, 1)", "2, 1, 3");
}

#[test]
fn stop_gradient_stops() {
    // Finite differences see through stop_gradient (it is the identity forward), so the
    // check is exact instead: d/dx (sg(x) * 2 + x) . r = r.
    let m = model(X, "  y = stop_gradient(x) * 2.0 + x", "3, 17");
    let d = differentiate(&m.graph, Wrt { inputs: true });
    let inputs = random_inputs(&m.graph, 1, 1);
    let v = run(&d.graph, &inputs, &HashMap::new(), &F64).unwrap();
    let gx = v.get(d.inputs.iter().find(|(n, _)| n == "x").unwrap().1);
    assert_eq!(gx.floats(), inputs["r"].floats());
}

// ---- standard library blocks ---------------------------------------------------

#[test]
fn nn_blocks() {
    let x = "  input x: f32[B, 3, 17]";
    for body in [
        "  y = linear(x, 5, bias = true)",
        "  y = layernorm(x)",
        "  y = rmsnorm(x)",
        "  y = softmax(x)",
        "  y = log_softmax(x, 1)",
        "  y = gelu(x)",
        "  y = silu(x)",
        "  y = sigmoid(x)",
        "  y = softplus(x * 15.0)",
        "  y = mlp(x, 2)",
        "  y = mean(x, [0, 2], true)",
    ] {
        let out = if body.contains("linear") {
            "B, 3, 5"
        } else if body.contains("mean") {
            "1, 3, 1"
        } else {
            "B, 3, 17"
        };
        check(&model(x, body, out), 2, 1e-6);
    }
}

#[test]
fn losses() {
    case("  input x: f32[B, 3, 17]\n  input t: i32[B, 3]", "  y = cross_entropy(x, t, 0.1)", "B, 3");
    case("  input x: f32[B, 3]\n  input p: f32[B, 3]", "  y = bce_with_logits(x * 3.0, sigmoid(p))", "B, 3");
    case(
        "  input x: f32[B, 3, 17]\n  input t: i32[B, 3]\n  input m: bool[B, 3]",
        "  y = masked_token_loss(x, t, m, 0.1)",
        "",
    );
    case("  input x: f32[B, 3, 5]\n  input m: bool[B, 3]", "  y = masked_mean(x, m)", "B, 5");
}

#[test]
fn attention_blocks() {
    let decls = "  input x: f32[B, 3, 8]\n  input c: f32[B, 5, 8]\n  input m: bool[B, 5]";
    case(decls, "  y = attention(x, c, 2, key_mask = m)", "B, 3, 8");
    case(decls, "  y = attention(x, x, 4, causal = true)", "B, 3, 8");
}

#[test]
fn mamba_blocks() {
    let decls = "  input x: f32[B, 5, 4]";
    case(decls, "  y = causal_conv1d(x, 3)", "B, 5, 4");
    case(
        "  input u: f32[B, 5, 3]\n  input dt: f32[B, 5, 3]\n  input bm: f32[B, 5, 2]\n  input cm: f32[B, 5, 2]\n  param A_log: [3, 2] ~ normal(0.5)",
        "  y = selective_scan(u, softplus(dt), -exp(A_log), bm, cm)",
        "B, 5, 3",
    );
    case(decls, "  y = mamba(x, 2, 2, 3, 1)", "B, 5, 4");
    case(
        "  input x: f32[B, 5, 4]\n  input t: f32[B, 4]",
        "  y = mamba(x, 2, 2, 3, 1, xz_add = concat([x, x, x, x], -1), a_add = 0.1 * reshape(linear(t, 16) as ap, [-1, 1, 8, 2]), b_add = unsqueeze(linear(t, 2) as bp, 1), c_add = unsqueeze(linear(t, 2) as cp, 1), d_add = unsqueeze(linear(t, 8) as dp, 1))",
        "B, 5, 4",
    );
}

#[test]
fn conv_blocks() {
    let decls = "  input x: f32[B, 5, 5, 4]";
    case(decls, "  y = conv2d(x, 3, 3, 2)", "B, 3, 3, 3");
    case(decls, "  y = conv2d(x, 2, 4, 2, 1)", "B, 2, 2, 2");
    case(decls, "  y = group_norm(x, 2)", "B, 5, 5, 4");
    case(decls, "  y = resblock(x, 6, 2)", "B, 5, 5, 6");
    case(decls, "  y = upsample2x(x)", "B, 10, 10, 4");
    // Rectangular kernels with their own paddings (Inception's 1x7 and 7x1).
    case(decls, "  y = conv2d(x, 3, 1, padding = 0, kernel_w = 3, padding_w = 1)", "B, 5, 5, 3");
    case(decls, "  y = conv2d(x, 2, 3, 2, 1, bias = false, kernel_w = 1, padding_w = 0)", "B, 3, 3, 2");
    case(decls, "  y = max_pool2d(x, 3, 2)", "B, 2, 2, 4");
    case(decls, "  y = max_pool2d(x, 3, 1, 1)", "B, 5, 5, 4");
    case(decls, "  y = avg_pool2d(x, 3, 1, 1)", "B, 5, 5, 4");
    case(decls, "  y = avg_pool2d(x, 3, 1, 1, count_include_pad = false)", "B, 5, 5, 4");
    case(decls, "  y = batch_norm_eval(x, 0.001)", "B, 5, 5, 4");
}

#[test]
fn maskgit_blocks() {
    case("  input tok: i32[B, 3]", "  y = token_input(tok, 5, 4)", "B, 3, 4");
    case("  input ids: i32[B, 3]\n  input m: bool[B, 3]", "  y = text_encoder(ids, m, 7, 4, 1, 2)", "B, 3, 4");
    case(
        "  input h: f32[B, 3, 4]\n  input t: f32[B, 2, 4]\n  input m: bool[B, 2]",
        "  y = transformer_layer(h, t, m, 2, 2)",
        "B, 3, 4",
    );
}

/// The gradient of a weight used transposed (`x @ transpose(W)`, every linear layer) is the
/// product `dy^T x` of two views, not a copy of the transposed product `x^T dy`; its values
/// match finite differences.
#[test]
fn a_transposed_weights_gradient_is_one_product() {
    let m = model("  input x: f32[B, 5, 7]\n  param w: [3, 7] ~ normal(0.5)", "  y = x @ transpose(w)", "B, 5, 3");
    let d = differentiate(&m.graph, Wrt::default());
    let (_, g) = d.params.iter().find(|(n, _)| n == "w").unwrap();
    assert!(matches!(d.graph.node(*g).op, muse_compiler::ir::Op::MatMul), "{:?}", d.graph.node(*g).op);
    check(&m, 2, 1e-6);
}
