//! The fused CPU backend against the reference interpreter: every model, forward and
//! backward, at a tiny config, relative error below 1e-4 (f32).

mod common;

use muse_compiler::autodiff::{differentiate, Wrt};
use muse_compiler::ir::NodeIndex;
use muse_runtime::inputs::random_inputs;
use muse_runtime::{init_params, run, HostTensor, Precision, RunOptions};

/// Largest difference relative to the reference's largest magnitude.
pub fn rel_err(ours: &HostTensor, reference: &HostTensor) -> f64 {
    let (a, b) = (ours.to_f64(), reference.to_f64());
    assert_eq!(ours.shape, reference.shape);
    let scale = b.iter().fold(0.0f64, |m, x| m.max(x.abs()));
    let diff = a.iter().zip(&b).fold(0.0f64, |m, (x, y)| m.max((x - y).abs()));
    if scale == 0.0 {
        diff
    } else {
        diff / scale
    }
}

#[test]
fn fused_cpu_equals_the_interpreter_for_every_model() {
    every_model_equals_the_interpreter("cpu", false, 1e-4);
}

/// The generated CUDA C, run on the CPU through kernels/cuda_sim.h with its threads in a
/// random order (a missing barrier or a wrong shuffle shows here), against the interpreter.
#[test]
fn generated_cuda_equals_the_interpreter_for_every_model() {
    let counts = every_model_equals_the_interpreter("cuda-sim", false, 1e-4);
    println!("cuda-sim: {} kernels of {} programs equal the interpreter", counts.0, counts.1);
}

/// The same with every float buffer in bf16 (`--dtype bf16`: parameters, activations,
/// gradients; arithmetic and accumulation in f32): outputs and losses within 2e-2 of the
/// f32 interpreter (measured: at most 1.6e-2), and every gradient pointing the way the f32
/// gradient does (relative Euclidean error below 1: a gradient that is a small sum of large
/// terms keeps few of bf16's digits; measured: up to 0.6, docs/cuda.md).
#[test]
fn generated_cuda_in_bf16_is_within_bf16_precision_for_every_model() {
    let counts = every_model_equals_the_interpreter("cuda-sim", true, 2e-2);
    println!("cuda-sim bf16: {} kernels of {} programs within bf16's precision", counts.0, counts.1);
}

/// Every model's outputs, losses and gradients on `device` (float buffers in bf16 or not)
/// against the interpreter, each within `limit` relative (in bf16, gradients by their
/// relative Euclidean error, below 1): (kernel launches, programs) checked.
fn every_model_equals_the_interpreter(device: &str, bf16: bool, limit: f64) -> (usize, usize) {
    let tag = format!("models-{device}-{bf16}");
    let cpu = common::device_with(device, &tag, bf16);
    let mut counts = (0, 0);
    let only = std::env::var("MUSE_TEST_MODEL").ok();
    let plain = common::MODELS.iter().map(|&n| (n, None));
    let options = common::OPTIONS.iter().map(|&(n, k, v)| (n, Some((k, v))));
    for (model, option) in plain.chain(options).filter(|(n, _)| only.as_deref().is_none_or(|o| o == *n)) {
        let mut sets = common::tiny(model, "3");
        sets.extend(option);
        let m = common::compile_model(model, &sets);
        let name = format!("{model} {option:?}");
        let d = differentiate(&m.graph, Wrt::default());
        let mut requested: Vec<(String, NodeIndex)> = m.graph.outputs.iter().chain(&m.graph.losses).cloned().collect();
        requested.extend(d.params.iter().map(|(n, g)| (format!("grad {n}"), *g)));
        let nodes: Vec<NodeIndex> = requested.iter().map(|r| r.1).collect();
        let mut prog = cpu.compile(&d.graph, &nodes).unwrap_or_else(|e| panic!("{name}: {e}"));
        counts = (counts.0 + prog.launches(), counts.1 + 1);
        let inputs = random_inputs(&m.graph, 2, 7);
        let params = init_params(&m.graph, 7, Precision::F32).unwrap();
        let ours = prog.run(&inputs, &params, 0).unwrap();
        let reference = run(&d.graph, &inputs, &params, &RunOptions::default()).unwrap();
        for (what, n) in &requested {
            if bf16 && what.starts_with("grad ") {
                let e = muse_runtime::validate::relative_l2(&ours[n], reference.get(*n));
                assert!(e < 1.0, "{device} bf16: {name}: {what}: relative Euclidean error {e:e}");
                continue;
            }
            let e = rel_err(&ours[n], reference.get(*n));
            assert!(e < limit, "{device} (bf16 {bf16}): {name}: {what}: relative error {e:e}");
        }
    }
    common::forget_cache(&tag);
    counts
}

/// Values that share a planned buffer are never alive at the same time (checked against
/// lifetimes recomputed here from the program), and reuse saves memory.
#[test]
fn memory_plan_never_overlaps_live_values() {
    let m = common::compile_model("mamba_xattn_xz", &common::tiny("mamba_xattn_xz", "3"));
    let d = differentiate(&m.graph, Wrt::default());
    let mut req: Vec<NodeIndex> = m.graph.losses.iter().map(|x| x.1).collect();
    req.extend(d.params.iter().map(|x| x.1));
    let plan = muse_compiler::fusion::plan(&d.graph, &req);
    let prog = muse_compiler::kernel::lower(&d.graph, &plan);
    let len = |n: NodeIndex| d.graph.ty(n).shape.numel().unwrap().eval(&|_| Some(2)).unwrap() as usize;
    let mem = muse_runtime::memory::plan(&d.graph, &prog, &req, &len);
    // Lifetime of each value: from the step that writes it to the last step that reads it
    // (the end for requested values).
    let end = prog.steps.len();
    let mut born = std::collections::HashMap::new();
    let mut dies = std::collections::HashMap::new();
    for (i, s) in prog.steps.iter().enumerate() {
        let (outs, reads) = (s.writes(), s.reads());
        for out in outs {
            born.insert(out, i);
            dies.entry(out).or_insert(i);
        }
        for r in reads {
            dies.insert(r, i);
        }
    }
    for r in &req {
        dies.insert(prog.aliases.get(r).copied().unwrap_or(*r), end);
    }
    let planned: Vec<(NodeIndex, usize)> = mem.slot_of.iter().map(|(n, s)| (*n, *s)).collect();
    for (i, &(a, sa)) in planned.iter().enumerate() {
        assert!(mem.slots[sa].1 >= len(a), "slot {sa} is too small for %{}", a.index());
        for &(b, sb) in &planned[i + 1..] {
            if sa == sb {
                let (a0, a1, b0, b1) = (born[&a], dies[&a], born[&b], dies[&b]);
                assert!(
                    a1 < b0 || b1 < a0,
                    "%{} [{a0}, {a1}] and %{} [{b0}, {b1}] share slot {sa}",
                    a.index(),
                    b.index()
                );
            }
        }
    }
    // Fusion keeps fewer intermediates the better it gets, so the bar is a third, not half
    // (this tiny model's plan is just under half its intermediates).
    assert!(
        mem.peak_bytes * 3 < mem.total_bytes * 2,
        "reuse saves at least a third: {} of {}",
        mem.peak_bytes,
        mem.total_bytes
    );
}

/// Validate mode compares every kernel with the interpreter and names the first that
/// differs beyond the tolerance.
#[test]
fn validate_mode_names_the_first_differing_kernel() {
    let m = common::compile_model("mamba_concat", &common::tiny("mamba_concat", "3"));
    let req: Vec<NodeIndex> = m.graph.outputs.iter().chain(&m.graph.losses).map(|x| x.1).collect();
    let mut p = common::cpu("validate").compile(&m.graph, &req).unwrap();
    let inputs = random_inputs(&m.graph, 2, 3);
    let params = init_params(&m.graph, 3, Precision::F32).unwrap();
    let ok = muse_runtime::validate::validate(p.as_mut(), &inputs, &params, 0, 1e-4).unwrap();
    assert_eq!(ok.first_mismatch, None);
    let outputs: usize = p.kernels().unwrap().steps.iter().map(|s| s.writes().len()).sum();
    assert_eq!(ok.checked, outputs, "every value every kernel writes is compared");
    // With a tolerance nothing can meet, the first kernel with any rounding difference is named.
    let strict = muse_runtime::validate::validate(p.as_mut(), &inputs, &params, 0, -1.0).unwrap();
    let mm = strict.first_mismatch.expect("a mismatch");
    assert_eq!(mm.step, 0);
    assert_eq!(strict.checked, 1, "validation stops at the first mismatch");
    common::forget_cache("validate");
}

/// The vectorizable exp of the C prelude against the interpreter's, element by element,
/// over the whole f32 range it covers (underflow to 0, overflow to infinity, NaN kept).
#[test]
fn fast_exp_is_accurate_elementwise() {
    let m = common::compile_one("exp.muse", "model e {\n  input x: f32[4099]\n  output y = exp(x)\n}\n");
    let mut p = common::cpu("elementwise").compile(&m.graph, &[m.graph.outputs[0].1]).unwrap();
    let xs: Vec<f64> = (0..4096).map(|i| -104.0 + 193.0 * i as f64 / 4095.0).chain([f64::NAN, -200.0, 200.0]).collect();
    let inputs = [("x".to_string(), HostTensor::f(&[4099], xs.iter().map(|&x| x as f32 as f64).collect()))].into();
    let ours = p.run(&inputs, &Default::default(), 0).unwrap();
    let got = ours[&m.graph.outputs[0].1].to_f64();
    for (x, y) in xs.iter().zip(&got) {
        let want = (*x as f32).exp() as f64;
        if x.is_nan() {
            assert!(y.is_nan());
        } else if want == 0.0 || want.is_infinite() {
            assert_eq!(*y, want, "exp({x})");
        } else if want < 1.2e-38 {
            // Subnormal results carry fewer bits: compare absolutely.
            assert!((y - want).abs() < 1e-44, "exp({x}) = {y}, want {want}");
        } else {
            assert!(((y - want) / want).abs() < 3e-7, "exp({x}) = {y}, want {want}");
        }
    }
}

/// The vectorizable log and log1p of the C prelude against f64 references, within 2 ulp of
/// f32 (or a hair absolutely for log near 1, whose result is near 0), over normal and
/// subnormal arguments, and libm's answers at 0, below the domain, infinity and NaN.
#[test]
fn fast_log_and_log1p_are_accurate_elementwise() {
    let src = "model e {\n  input x: f32[N]\n  output a = log(x)\n  output b = log1p(x)\n}\n";
    let m = common::compile_one("log.muse", src);
    let outs: Vec<NodeIndex> = m.graph.outputs.iter().map(|o| o.1).collect();
    let mut p = common::cpu("elementwise").compile(&m.graph, &outs).unwrap();
    let mut xs: Vec<f32> = (0..6000).map(|i| 10f32.powf(-44.0 + 82.0 * i as f32 / 5999.0)).collect();
    xs.extend((0..2000).map(|i| 0.5 + i as f32 / 1999.0)); // around 1, where log is near 0
    xs.extend((0..2000).map(|i| -0.999 + 1.998 * i as f32 / 1999.0)); // log1p around 0
    xs.extend([0.0, -0.0, -1.0, -2.0, f32::INFINITY, f32::NAN, f32::MAX, 1e-45, 1e31]);
    let n = xs.len();
    let inputs = [("x".to_string(), HostTensor::f(&[n], xs.iter().map(|&x| x as f64).collect()))].into();
    let ours = p.run(&inputs, &Default::default(), 0).unwrap();
    let close = |got: f64, want: f64, what: &str| {
        if want.is_nan() {
            assert!(got.is_nan(), "{what} = {got}, want NaN");
        } else if want.is_infinite() {
            assert_eq!(got, want, "{what}");
        } else {
            let ulp = (want as f32).abs().max(f32::MIN_POSITIVE) as f64 * f32::EPSILON as f64;
            assert!((got - want).abs() <= 2.0 * ulp + 1e-12, "{what} = {got}, want {want}");
        }
    };
    let (a, b) = (ours[&outs[0]].to_f64(), ours[&outs[1]].to_f64());
    for (i, &x) in xs.iter().enumerate() {
        let x = x as f64;
        let log = if x == 0.0 { f64::NEG_INFINITY } else { x.ln() };
        close(a[i], log, &format!("log({x:e})"));
        let log1p = if x == -1.0 { f64::NEG_INFINITY } else { x.ln_1p() };
        close(b[i], log1p, &format!("log1p({x:e})"));
    }
}

/// Token ids outside the embedding table are an error naming the input, as in the
/// interpreter, not a quiet clamp.
#[test]
fn out_of_range_ids_are_an_error() {
    let m = common::compile_model("muse_small", &common::tiny("muse_small", "2"));
    let req: Vec<NodeIndex> = m.graph.losses.iter().map(|x| x.1).collect();
    let mut p = common::cpu("elementwise").compile(&m.graph, &req).unwrap();
    let params = init_params(&m.graph, 0, Precision::F32).unwrap();
    let mut inputs = random_inputs(&m.graph, 2, 0);
    assert!(p.run(&inputs, &params, 0).is_ok());
    inputs.insert("tokens".into(), HostTensor::i(&[2, 4], vec![0, 1, 2, 8, 0, 0, 0, 0]));
    let e = p.run(&inputs, &params, 0).unwrap_err().to_string();
    assert!(e.contains("input `tokens`") && e.contains("index 8 is outside 0..8"), "{e}");
}

/// The C prelude's tanh against Rust's `f32::tanh`, element by element.
#[test]
fn fast_tanh_is_accurate_elementwise() {
    let m = common::compile_one("tanh.muse", "model t {\n  input x: f32[4099]\n  output y = tanh(x)\n}\n");
    let mut p = common::cpu("elementwise").compile(&m.graph, &[m.graph.outputs[0].1]).unwrap();
    let xs: Vec<f64> = (0..4096).map(|i| -12.0 + 24.0 * i as f64 / 4095.0).chain([f64::NAN, -1e30, 1e30]).collect();
    let inputs = [("x".to_string(), HostTensor::f(&[4099], xs.iter().map(|&x| x as f32 as f64).collect()))].into();
    let ours = p.run(&inputs, &Default::default(), 0).unwrap();
    for (x, y) in xs.iter().zip(ours[&m.graph.outputs[0].1].to_f64()) {
        let want = (*x as f32).tanh() as f64;
        if x.is_nan() {
            assert!(y.is_nan());
        } else {
            assert!((y - want).abs() <= 4e-7 * want.abs().max(1e-30) + 1e-12, "tanh({x}) = {y}, want {want}");
        }
    }
}
