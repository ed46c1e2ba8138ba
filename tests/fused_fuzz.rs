//! Random programs of views, elementwise ops, reductions, scans and matrix products of
//! strided views, fused and compiled to C,
//! against the interpreter: the fusion pass, the lowering of views to index arithmetic and
//! the index simplifier must never change a value. Runs a few dozen programs in the suite;
//! `MUSE_FUZZ_CASES=N` runs more.

mod common;

use muse_runtime::inputs::random_inputs;
use muse_runtime::{run, Precision, RunOptions};
use proptest::prelude::*;

fn cases() -> u32 {
    std::env::var("MUSE_FUZZ_CASES").ok().and_then(|s| s.parse().ok()).unwrap_or(24)
}

/// Builds a program from choices, tracking the shape so every step is well-formed.
fn program(dims: &[usize], choices: &[(u8, u8)]) -> String {
    let mut shape: Vec<usize> = dims.to_vec();
    let mut lines = Vec::new();
    let decl = shape.iter().map(|d| d.to_string()).collect::<Vec<_>>().join(", ");
    let mut t = "x".to_string();
    for (k, &(op, arg)) in choices.iter().enumerate() {
        let r = shape.len();
        let ax = arg as usize % r;
        let name = format!("t{k}");
        let expr = match op % 14 {
            0 => format!("tanh({t}) * 1.5 + 0.25"),
            1 => format!("exp({t} * 0.3) - {t}"),
            2 => format!("where({t} > 0.1, {t} * {t}, -{t})"),
            3 if r >= 2 => {
                let mut perm: Vec<usize> = (0..r).collect();
                perm.rotate_left(1 + arg as usize % (r - 1));
                let s: Vec<usize> = perm.iter().map(|&p| shape[p]).collect();
                let e = format!("permute({t}, {perm:?})");
                shape = s;
                e
            }
            4 if r >= 2 => {
                // Merge two neighbouring axes.
                let a = arg as usize % (r - 1);
                let mut s = shape.clone();
                let merged = s[a] * s[a + 1];
                s.splice(a..a + 2, [merged]);
                let e = format!("reshape({t}, {s:?})");
                shape = s;
                e
            }
            5 if shape[ax] >= 2 => {
                let step = 1 + arg as usize % 2;
                let start = arg as usize % 2;
                let n = (shape[ax] - start).div_ceil(step);
                let e = format!("slice({t}, {ax}, {start}, {}, {step})", shape[ax]);
                shape[ax] = n;
                e
            }
            6 => {
                let e = format!("pad({t}, {ax}, 1, {}, 0.5)", arg % 2);
                shape[ax] += 1 + (arg % 2) as usize;
                e
            }
            7 => {
                let e = format!("concat([{t}, {t} * 2.0], {ax})");
                shape[ax] *= 2;
                e
            }
            8 => format!("{t} - max({t}, {ax}, true)"),
            9 if r >= 2 => {
                let e = format!("sum({t}, {ax})");
                shape.remove(ax);
                e
            }
            10 => format!("scan(1.0 / (1.0 + exp(-{t})), {t}, {ax})"),
            11 => format!("{t} * sum({t} * {t}, {ax}, true)"),
            // Matrix products of strided views: the GEMM reads transposes and reshapes in place.
            // Scaled by 1/sqrt(inner) as attention does: unscaled, a product of 17 terms fed
            // to exp(exp(..)) gave values near 1e30 whose 1e-4 agreement depends on the order
            // of the 17 additions, not on fusion.
            12 if r >= 2 => {
                let e = format!("({t} @ transpose({t})) * {:.6}", 1.0 / (shape[r - 1] as f64).sqrt());
                shape[r - 1] = shape[r - 2];
                e
            }
            13 if r >= 2 => {
                let e = format!("(transpose({t}) @ {t}) * {:.6}", 1.0 / (shape[r - 2] as f64).sqrt());
                shape[r - 2] = shape[r - 1];
                e
            }
            _ => format!("{t} + 1.0"),
        };
        lines.push(format!("  {name} = {expr}"));
        t = name;
        if shape.iter().product::<usize>() > 4096 {
            break;
        }
    }
    format!("model f {{\n  input x: f32[{decl}]\n{}\n  output y = {t}\n}}\n", lines.join("\n"))
}

/// The fused values `a` against the interpreter's `b` (f32, as the kernels compute): within
/// 1e-4 of the output's scale, or, where f32 rounding alone moves the output further, within
/// eight times the interpreter's own distance from the exact (f64) values `exact`. The second
/// arm is for ill-conditioned outputs, where any two f32 evaluation orders differ by that much:
/// the gradient of a saturated `tanh` is `1 - y * y` with `y` within an ulp of 1 (the fuzzer
/// found one where the f32 interpreter is 1.1e-6 from the f64 values, 20 times 1e-4 of the
/// gradient's scale, and the fused kernels 9e-8 from the interpreter).
fn compare(a: &[f64], b: &[f64], exact: &[f64], src: &str) -> Result<(), TestCaseError> {
    let scale = b.iter().filter(|x| x.is_finite()).fold(0.0f64, |s, x| s.max(x.abs())).max(1e-6);
    let rounding = b
        .iter()
        .zip(exact)
        .filter(|(y, e)| y.is_finite() && e.is_finite())
        .fold(0.0f64, |m, (y, e)| m.max((y - e).abs()));
    let tolerance = (1e-4 * scale).max(8.0 * rounding);
    for (i, (x, y)) in a.iter().zip(b).enumerate() {
        let same = if y.is_finite() { (x - y).abs() <= tolerance } else { x == y || (x.is_nan() && y.is_nan()) };
        prop_assert!(
            same,
            "element {i}: fused {x}, interpreter {y} (tolerance {tolerance:e}, f32 rounding {rounding:e})\n{src}"
        );
    }
    Ok(())
}

/// Compiles `node` of `g` for the CPU and compares it with the interpreter on random inputs.
fn check_fused(
    g: &muse_compiler::ir::Graph,
    node: muse_compiler::ir::NodeIndex,
    inputs_of: &muse_compiler::ir::Graph,
    seed: u64,
    src: &str,
) -> Result<(), TestCaseError> {
    let mut p = common::cpu("fused-fuzz").compile(g, &[node]).map_err(|e| TestCaseError::fail(e.to_string()))?;
    let inputs = random_inputs(inputs_of, 1, seed);
    let ours = p.run(&inputs, &Default::default(), 0).unwrap();
    let reference = run(g, &inputs, &Default::default(), &RunOptions::default()).unwrap();
    let exact = run(g, &inputs, &Default::default(), &RunOptions { precision: Precision::F64, seed: 0 }).unwrap();
    compare(&ours[&node].to_f64(), &reference.get(node).to_f64(), &exact.get(node).to_f64(), src)
}

proptest! {
    #![proptest_config(ProptestConfig { cases: cases(), failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn fused_kernels_equal_the_interpreter(
        dims in prop::collection::vec(prop_oneof![3 => 1usize..5, 1 => 16usize..18], 1..4),
        choices in prop::collection::vec((any::<u8>(), any::<u8>()), 1..8),
    ) {
        let src = program(&dims, &choices);
        let m = common::compile_one("fuzz.muse", &src);
        check_fused(&m.graph, m.graph.outputs[0].1, &m.graph, 3, &src)?;
    }

    /// The same programs differentiated: the gradient of `sum(y * r)` with respect to the
    /// input, through the backward kernels.
    #[test]
    fn fused_gradients_equal_the_interpreter(
        dims in prop::collection::vec(prop_oneof![3 => 1usize..5, 1 => 16usize..18], 1..4),
        choices in prop::collection::vec((any::<u8>(), any::<u8>()), 1..6),
    ) {
        check_gradient(&program(&dims, &choices))?;
    }
}

/// The gradient of `sum(y * r)` with respect to the input of a program whose output is `y`,
/// through the backward kernels, against the interpreter.
fn check_gradient(src: &str) -> Result<(), TestCaseError> {
    let with_loss = src
        .replace("  output y = ", "  y = ")
        .replace("\n}\n", "\n  output yy = y\n  r = stop_gradient(tanh(y * 7.0))\n  loss l = sum(y * r)\n}\n");
    let m = common::compile_one("fuzz.muse", &with_loss);
    let d = muse_compiler::autodiff::differentiate(&m.graph, muse_compiler::autodiff::Wrt { inputs: true });
    check_fused(&d.graph, d.inputs[0].1, &m.graph, 5, &with_loss)
}

/// Programs the fuzzer found, kept as regressions.
#[test]
fn found_by_the_fuzzer() {
    for src in [
        // `x @ transpose(x)` reads one buffer twice; the memory planner freed its slot twice
        // and gave it to two live values.
        "model f {\n  input x: f32[1, 1]\n  t0 = scan(1.0 / (1.0 + exp(-x)), x, 0)\n  t1 = t0 @ transpose(t0)\n  t2 = t1 - max(t1, 0, true)\n  t3 = pad(t2, 0, 1, 0, 0.5)\n  output y = t3\n}\n",
        // A reduction over a size-1 axis has its input's shape.
        "model f {\n  input x: f32[3, 1]\n  t0 = x - max(x, 1, true)\n  output y = t0\n}\n",
    ] {
        let m = common::compile_one("regression.muse", src);
        check_fused(&m.graph, m.graph.outputs[0].1, &m.graph, 3, src).unwrap();
    }
}

/// Gradients the fuzzer found, kept as regressions.
#[test]
fn gradients_found_by_the_fuzzer() {
    // A saturated tanh: the gradient is `1 - y * y` with `y` within an ulp of 1, so f32
    // rounding alone puts the interpreter 1.1e-6 from the f64 values where 1e-4 of the scale
    // is 5.9e-8; the fused kernels are 9e-8 from the interpreter (element 0, 6.8e-6 against
    // 6.9e-6). Compared at 1e-4 of the scale alone, this failed.
    let src = "model f {\n  input x: f32[17]\n  t0 = x + 1.0\n  t1 = t0 * sum(t0 * t0, 0, true)\n  t2 = tanh(t1) * 1.5 + 0.25\n  output y = t2\n}\n";
    check_gradient(src).unwrap();
}
