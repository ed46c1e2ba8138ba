//! The Mamba block of the standard library, run by the interpreter, against an independent
//! plain-Rust implementation of SPEC-models.md section 5 written here with loops: forward
//! outputs, and gradients against central differences of the plain implementation.

// Index loops mirror the equations of the spec, which is the point of this file.
#![allow(clippy::needless_range_loop)]

mod common;

use muse_compiler::autodiff::{differentiate, Wrt};
use muse_runtime::inputs::random_inputs;
use muse_runtime::{init_params, run, HostTensor, Precision, RunOptions};
use std::collections::HashMap;

const B: usize = 2;
const L: usize = 7;
const D: usize = 6;
const NST: usize = 4;
const EXPAND: usize = 2;
const E: usize = EXPAND * D;
const K: usize = 3;
const R: usize = 2;

fn src(bidirectional: bool) -> String {
    format!(
        "import \"std/mamba.muse\"\nmodel m {{\n  input x: f32[B, {L}, {D}]\n  y = mamba(x, {NST}, {EXPAND}, {K}, {R}, bidirectional = {bidirectional}) as mixer\n  output y\n  input r: f32[B, {L}, {D}]\n  loss l = sum(y * r)\n}}\n"
    )
}

fn silu(v: f64) -> f64 {
    v / (1.0 + (-v).exp())
}

fn softplus(v: f64) -> f64 {
    if v > 20.0 {
        v
    } else {
        v.exp().ln_1p()
    }
}

/// Steps 2-6 of SPEC-models.md section 5 (conv, projections, scan, D skip) for one batch
/// element, the parameters named `{prefix}conv1d.weight` and so on, in the causal direction.
fn ssm_plain(u: &[Vec<f64>], w: &HashMap<String, HostTensor>, prefix: &str) -> Vec<Vec<f64>> {
    let p = |n: &str| w[&format!("{prefix}{n}")].floats().to_vec();
    let (conv_w, conv_b) = (p("conv1d.weight"), p("conv1d.bias"));
    let (w_x, w_dt, b_dt) = (p("x_proj.weight"), p("dt_proj.weight"), p("dt_proj.bias"));
    let (a_log, d_skip) = (p("A_log"), p("D"));
    // 2. causal depthwise conv (left zero padding) + bias, then SiLU
    let mut uc = vec![vec![0.0; E]; L];
    for t in 0..L {
        for c in 0..E {
            let mut s = conv_b[c];
            for k in 0..K {
                // output t sees inputs t-K+1 .. t; tap k multiplies input t-K+1+k
                let src = t as i64 - (K as i64 - 1) + k as i64;
                if src >= 0 {
                    s += conv_w[c * K + k] * u[src as usize][c];
                }
            }
            uc[t][c] = silu(s);
        }
    }
    // 3. [d | Bm | Cm] = u W_x^T ; 4. dt = softplus(d W_dt^T + b_dt)
    let mut dt = vec![vec![0.0; E]; L];
    let mut bm = vec![vec![0.0; NST]; L];
    let mut cm = vec![vec![0.0; NST]; L];
    for t in 0..L {
        let proj: Vec<f64> = (0..R + 2 * NST).map(|j| (0..E).map(|c| w_x[j * E + c] * uc[t][c]).sum()).collect();
        for n in 0..NST {
            bm[t][n] = proj[R + n];
            cm[t][n] = proj[R + NST + n];
        }
        for c in 0..E {
            let s: f64 = (0..R).map(|j| w_dt[c * R + j] * proj[j]).sum();
            dt[t][c] = softplus(s + b_dt[c]);
        }
    }
    // 5.-6. selective scan with A = -exp(A_log), plus the D skip
    let mut y = vec![vec![0.0; E]; L];
    for c in 0..E {
        let mut h = [0.0; NST];
        for t in 0..L {
            let mut acc = 0.0;
            for n in 0..NST {
                let a = -a_log[c * NST + n].exp();
                h[n] = (dt[t][c] * a).exp() * h[n] + dt[t][c] * uc[t][c] * bm[t][n];
                acc += h[n] * cm[t][n];
            }
            y[t][c] = acc + uc[t][c] * d_skip[c];
        }
    }
    y
}

/// SPEC-models.md section 5, step by step, for one batch element at a time; bidirectional
/// as Vision Mamba: the backward direction is the causal one run on the reversed sequence
/// with its own weights, its output reversed back and added before the gate.
fn mamba_plain(x: &[f64], w: &HashMap<String, HostTensor>, bidirectional: bool) -> Vec<f64> {
    let p = |n: &str| w[&format!("mixer.{n}")].floats().to_vec();
    let (w_in, w_out) = (p("in_proj.weight"), p("out_proj.weight"));
    let mut out = vec![0.0; B * L * D];
    for b in 0..B {
        let xin = |t: usize, i: usize| x[(b * L + t) * D + i];
        // 1. [u | z] = X W_in^T
        let mut u = vec![vec![0.0; E]; L];
        let mut z = vec![vec![0.0; E]; L];
        for t in 0..L {
            for c in 0..2 * E {
                let s: f64 = (0..D).map(|i| w_in[c * D + i] * xin(t, i)).sum();
                if c < E {
                    u[t][c] = s;
                } else {
                    z[t][c - E] = s;
                }
            }
        }
        let mut y = ssm_plain(&u, w, "mixer.");
        if bidirectional {
            let reversed: Vec<Vec<f64>> = u.iter().rev().cloned().collect();
            let back = ssm_plain(&reversed, w, "mixer.backward.");
            for (t, row) in back.iter().rev().enumerate() {
                for c in 0..E {
                    y[t][c] += row[c];
                }
            }
        }
        // 7. out = (y * silu(z)) W_out^T
        for t in 0..L {
            for o in 0..D {
                out[(b * L + t) * D + o] = (0..E).map(|c| w_out[o * E + c] * y[t][c] * silu(z[t][c])).sum();
            }
        }
    }
    out
}

fn loss_plain(x: &[f64], r: &[f64], w: &HashMap<String, HostTensor>, bidirectional: bool) -> f64 {
    mamba_plain(x, w, bidirectional).iter().zip(r).map(|(a, b)| a * b).sum()
}

#[test]
fn mamba_block_matches_the_plain_implementation() {
    check_against_plain(false);
}

#[test]
fn bidirectional_mamba_block_matches_the_plain_implementation() {
    check_against_plain(true);
}

fn check_against_plain(bidirectional: bool) {
    let m = common::compile_one("mamba.muse", &src(bidirectional));
    let opts = RunOptions { precision: Precision::F64, seed: 0 };
    let mut params = init_params(&m.graph, 4, Precision::F64).unwrap();
    // Larger random weights than the initialisers so that every term matters.
    for (i, t) in params.values_mut().enumerate() {
        if let muse_runtime::Data::F(v) = &mut t.data {
            for (j, x) in v.iter_mut().enumerate() {
                *x += 0.3 * (((i * 31 + j * 17) % 23) as f64 / 23.0 - 0.5);
            }
        }
    }
    let inputs = random_inputs(&m.graph, B, 8);
    let x = inputs["x"].floats().to_vec();
    let r = inputs["r"].floats().to_vec();

    // Forward.
    let v = run(&m.graph, &inputs, &params, &opts).unwrap();
    let ours = v.get(m.graph.outputs[0].1).floats();
    let plain = mamba_plain(&x, &params, bidirectional);
    let worst = ours.iter().zip(&plain).map(|(a, b)| (a - b).abs()).fold(0.0, f64::max);
    let scale = plain.iter().map(|a| a.abs()).fold(0.0, f64::max);
    assert!(scale > 1e-3, "outputs are not trivially small");
    assert!(worst <= 1e-12 * scale.max(1.0), "forward differs by {worst:e}");

    // Gradients: autodiff against central differences of the plain implementation.
    let d = differentiate(&m.graph, Wrt { inputs: true });
    let v = run(&d.graph, &inputs, &params, &opts).unwrap();
    let h = 1e-6;
    let close = |what: &str, ana: f64, num: f64| {
        assert!(
            (ana - num).abs() <= 1e-6 * (1.0 + ana.abs().max(num.abs())),
            "{what}: autodiff {ana:e}, plain {num:e}"
        );
    };
    for (name, g) in &d.params {
        let ana = v.get(*g).floats();
        for i in (0..ana.len()).step_by((ana.len() / 9).max(1)) {
            let mut p = params.clone();
            let bump = |p: &mut HashMap<String, HostTensor>, by: f64| {
                if let muse_runtime::Data::F(vals) = &mut p.get_mut(name).unwrap().data {
                    vals[i] += by;
                }
            };
            bump(&mut p, h);
            let up = loss_plain(&x, &r, &p, bidirectional);
            bump(&mut p, -2.0 * h);
            let down = loss_plain(&x, &r, &p, bidirectional);
            close(&format!("{name}[{i}]"), ana[i], (up - down) / (2.0 * h));
        }
    }
    let gx = v.get(d.inputs.iter().find(|(n, _)| n == "x").unwrap().1).floats();
    for i in (0..x.len()).step_by(5) {
        let mut xp = x.clone();
        xp[i] += h;
        let up = loss_plain(&xp, &r, &params, bidirectional);
        xp[i] -= 2.0 * h;
        close(&format!("x[{i}]"), gx[i], (up - loss_plain(&xp, &r, &params, bidirectional)) / (2.0 * h));
    }
}
