//! The fused CPU backend against the reference interpreter: every model, forward and
//! backward, at a tiny config, relative error below 1e-4 (f32).

mod common;

use muse_compiler::autodiff::{differentiate, Wrt};
use muse_compiler::ir::NodeIndex;
use muse_runtime::cpu::compile::CompilerSettings;
use muse_runtime::cpu::CpuProgram;
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

fn settings() -> CompilerSettings {
    let cache_dir = std::env::var("MUSE_TEST_KEEP")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|_| std::env::temp_dir().join(format!("muse-test-kernels-{}", std::process::id())));
    CompilerSettings {
        // -O1 compiles several times faster; the numerics checked here do not depend on it.
        flags: ["-O1", "-march=native", "-fopenmp"].iter().map(|x| x.to_string()).collect(),
        cache_dir,
        ..CompilerSettings::default()
    }
}

#[test]
fn fused_cpu_equals_the_interpreter_for_every_model() {
    let settings = settings();
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
        let prog = CpuProgram::compile(&d.graph, &nodes, &settings).unwrap_or_else(|e| panic!("{name}: {e}"));
        let inputs = random_inputs(&m.graph, 2, 7);
        let params = init_params(&m.graph, 7, Precision::F32).unwrap();
        let ours = prog.run(&d.graph, &inputs, &params, 0).unwrap();
        let reference = run(&d.graph, &inputs, &params, &RunOptions::default()).unwrap();
        for (what, n) in &requested {
            let e = rel_err(&ours[n], reference.get(*n));
            assert!(e < 1e-4, "{name}: {what}: relative error {e:e}");
        }
    }
    if std::env::var_os("MUSE_TEST_KEEP").is_none() {
        std::fs::remove_dir_all(&settings.cache_dir).ok();
    }
}

/// A second compilation of the same model compiles nothing: the library comes from the
/// on-disk cache (a fresh process would find it the same way, keyed by the source hash).
#[test]
fn kernel_cache_and_compiler_errors() {
    let m = common::compile_one(
        "cache.muse",
        "import \"std/nn.muse\"\nmodel c {\n  input x: f32[B, 5]\n  output y = softmax(x * 3.0) + 1.0\n}\n",
    );
    let req = vec![m.graph.outputs[0].1];
    let dir = std::env::temp_dir().join(format!("muse-cache-test-{}", std::process::id()));
    let settings = CompilerSettings { cache_dir: dir.clone(), ..settings() };
    let first = CpuProgram::compile(&m.graph, &req, &settings).unwrap();
    let libs: Vec<_> = std::fs::read_dir(&dir).unwrap().filter_map(|e| e.ok()).collect();
    assert!(libs.iter().any(|e| e.path().extension().is_some_and(|x| x == "so")));
    assert!(!first.library.as_ref().unwrap().cached);
    muse_runtime::cpu::compile::forget_loaded();
    let again = CpuProgram::compile(&m.graph, &req, &settings).unwrap();
    assert_eq!(first.library.as_ref().unwrap().path, again.library.as_ref().unwrap().path);
    assert!(again.library.as_ref().unwrap().cached, "the second start found the compiled kernels on disk");
    // Another flag set is another cache entry.
    let other = CompilerSettings { flags: vec!["-O0".into(), "-fopenmp".into()], ..settings.clone() };
    let third = CpuProgram::compile(&m.graph, &req, &other).unwrap();
    assert_ne!(first.library.as_ref().unwrap().path, third.library.as_ref().unwrap().path);
    assert!(!third.library.as_ref().unwrap().cached);

    // A compiler that fails gives its message and the generated source, not a panic.
    let broken = CompilerSettings { flags: vec!["-fno-such-flag-for-muse".into()], ..settings.clone() };
    let e = CpuProgram::compile(&m.graph, &req, &broken).err().expect("compilation fails").to_string();
    assert!(e.contains("the C compiler `cc` failed") && e.contains("-fno-such-flag-for-muse"), "{e}");
    assert!(e.contains("generated source: ") && e.contains(".c"), "{e}");
    let missing = CompilerSettings { cc: "no-such-compiler-muse".into(), ..settings.clone() };
    let e = CpuProgram::compile(&m.graph, &req, &missing).err().expect("no compiler").to_string();
    assert!(e.contains("cannot run the C compiler `no-such-compiler-muse`") && e.contains("MUSE_CC"), "{e}");
    // Products through the GEMM template (kernels/gemm.c) and without it (the `gemm` crate)
    // compute the same, epilogues included.
    let mm = common::compile_one(
        "mm.muse",
        concat!(
            "model m {\n  input a: f32[37, 300]\n  input b: f32[300, 41]\n  output y = a @ b\n",
            "  output z = transpose(a) @ a\n",
            // Batches the template splits differently: fewer elements than 4 threads and not
            // a multiple of 2 (threads share each element), and many (one thread each).
            "  input c: f32[3, 9, 40]\n  input d: f32[3, 70, 40]\n  output w = c @ transpose(d)\n",
            "  input e: f32[2, 4, 5, 33]\n  input f: f32[2, 4, 33, 17]\n  output v = e @ f\n",
            "  output u = transpose(e) @ e\n",
            // Products with an epilogue (applied per tile by the template, after the whole
            // product otherwise), batched and not.
            "  output q = tanh(c @ transpose(d) + 1.0)\n  output p = exp((a @ b) * 0.01)\n",
            "  output o = (e @ f) * 3.0 + 1.0\n",
            // Operands read in place through offset tables: attention's head merge as A (rows
            // and columns are runs), transposed (a weight gradient; B narrow enough to be read
            // in place), as B, and batched (one thread per element).
            "  input h: f32[2, 4, 16, 32]\n  m = reshape(permute(h, [0, 2, 1, 3]), [32, 128])\n",
            "  input w: f32[128, 64]\n  output hm = m @ w\n",
            "  input g: f32[32, 96]\n  output hw = transpose(m) @ g\n",
            "  input x: f32[7, 32]\n  output bm = x @ m\n",
            "  input h2: f32[4, 3, 8, 16]\n  input w2: f32[48, 32]\n",
            "  output hb = reshape(permute(h2, [0, 2, 1, 3]), [4, 8, 48]) @ w2\n",
            // Packing's edges: a transposed B whose k is no multiple of the 8 x 8 transposes
            // and whose columns end mid-panel, and a head merge whose runs (12) straddle them.
            "  input r: f32[45, 77]\n  input s: f32[53, 77]\n  output rs = r @ transpose(s)\n",
            "  input h3: f32[2, 3, 10, 12]\n  m3 = reshape(permute(h3, [0, 2, 1, 3]), [20, 36])\n",
            "  input w3: f32[36, 20]\n  output h3w = m3 @ w3\n  output h3t = transpose(m3) @ m3\n",
            // A deep product with a small result (a weight gradient): threads split k and
            // sum their partial results, then run the epilogue.
            "  input p1: f32[600, 40]\n  input p2: f32[600, 24]\n  output pk = transpose(p1) @ p2\n",
            "  output pe = exp((transpose(p2) @ p1) * 0.01)\n}\n"
        ),
    );
    let outs: Vec<NodeIndex> = mm.graph.outputs.iter().map(|x| x.1).collect();
    let inputs = random_inputs(&mm.graph, 1, 2);
    let reference = run(&mm.graph, &inputs, &Default::default(), &RunOptions::default()).unwrap();
    for template in [true, false] {
        let s = CompilerSettings { gemm_template: template, ..settings.clone() };
        let p = CpuProgram::compile(&mm.graph, &outs, &s).unwrap();
        let epilogues = p.program.epilogues.fused.len();
        assert_eq!(epilogues, 4, "every pointwise result is its product's epilogue");
        assert_eq!(p.program.steps.len(), 17, "one step per product: no operand is copied");
        assert!(p.library.is_some());
        let ours = p.run(&mm.graph, &inputs, &Default::default(), 0).unwrap();
        for n in &outs {
            let e = rel_err(&ours[n], reference.get(*n));
            assert!(e < 1e-5, "template {template}: relative error {e:e}");
        }
    }
    std::fs::remove_dir_all(&dir).ok();
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
    let p = CpuProgram::compile(&m.graph, &req, &settings()).unwrap();
    let inputs = random_inputs(&m.graph, 2, 3);
    let params = init_params(&m.graph, 3, Precision::F32).unwrap();
    let ok = muse_runtime::validate::validate(&m.graph, &p, &inputs, &params, 0, 1e-4).unwrap();
    assert_eq!(ok.first_mismatch, None);
    let outputs: usize = p.program.steps.iter().map(|s| s.writes().len()).sum();
    assert_eq!(ok.checked, outputs, "every value every kernel writes is compared");
    // With a tolerance nothing can meet, the first kernel with any rounding difference is named.
    let strict = muse_runtime::validate::validate(&m.graph, &p, &inputs, &params, 0, -1.0).unwrap();
    let mm = strict.first_mismatch.expect("a mismatch");
    assert_eq!(mm.step, 0);
    assert_eq!(strict.checked, 1, "validation stops at the first mismatch");
}

/// The vectorizable exp of the C prelude against the interpreter's, element by element,
/// over the whole f32 range it covers (underflow to 0, overflow to infinity, NaN kept).
#[test]
fn fast_exp_is_accurate_elementwise() {
    let m = common::compile_one("exp.muse", "model e {\n  input x: f32[4099]\n  output y = exp(x)\n}\n");
    let p = CpuProgram::compile(&m.graph, &[m.graph.outputs[0].1], &settings()).unwrap();
    let xs: Vec<f64> = (0..4096).map(|i| -104.0 + 193.0 * i as f64 / 4095.0).chain([f64::NAN, -200.0, 200.0]).collect();
    let inputs = [("x".to_string(), HostTensor::f(&[4099], xs.iter().map(|&x| x as f32 as f64).collect()))].into();
    let ours = p.run(&m.graph, &inputs, &Default::default(), 0).unwrap();
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
    let p = CpuProgram::compile(&m.graph, &outs, &settings()).unwrap();
    let mut xs: Vec<f32> = (0..6000).map(|i| 10f32.powf(-44.0 + 82.0 * i as f32 / 5999.0)).collect();
    xs.extend((0..2000).map(|i| 0.5 + i as f32 / 1999.0)); // around 1, where log is near 0
    xs.extend((0..2000).map(|i| -0.999 + 1.998 * i as f32 / 1999.0)); // log1p around 0
    xs.extend([0.0, -0.0, -1.0, -2.0, f32::INFINITY, f32::NAN, f32::MAX, 1e-45, 1e31]);
    let n = xs.len();
    let inputs = [("x".to_string(), HostTensor::f(&[n], xs.iter().map(|&x| x as f64).collect()))].into();
    let ours = p.run(&m.graph, &inputs, &Default::default(), 0).unwrap();
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
    let p = CpuProgram::compile(&m.graph, &req, &settings()).unwrap();
    let params = init_params(&m.graph, 0, Precision::F32).unwrap();
    let mut inputs = random_inputs(&m.graph, 2, 0);
    assert!(p.run(&m.graph, &inputs, &params, 0).is_ok());
    inputs.insert("tokens".into(), HostTensor::i(&[2, 4], vec![0, 1, 2, 8, 0, 0, 0, 0]));
    let e = p.run(&m.graph, &inputs, &params, 0).unwrap_err().to_string();
    assert!(e.contains("input `tokens`") && e.contains("index 8 is outside 0..8"), "{e}");
}

/// The C prelude's tanh against Rust's `f32::tanh`, element by element.
#[test]
fn fast_tanh_is_accurate_elementwise() {
    let m = common::compile_one("tanh.muse", "model t {\n  input x: f32[4099]\n  output y = tanh(x)\n}\n");
    let p = CpuProgram::compile(&m.graph, &[m.graph.outputs[0].1], &settings()).unwrap();
    let xs: Vec<f64> = (0..4096).map(|i| -12.0 + 24.0 * i as f64 / 4095.0).chain([f64::NAN, -1e30, 1e30]).collect();
    let inputs = [("x".to_string(), HostTensor::f(&[4099], xs.iter().map(|&x| x as f32 as f64).collect()))].into();
    let ours = p.run(&m.graph, &inputs, &Default::default(), 0).unwrap();
    for (x, y) in xs.iter().zip(ours[&m.graph.outputs[0].1].to_f64()) {
        let want = (*x as f32).tanh() as f64;
        if x.is_nan() {
            assert!(y.is_nan());
        } else {
            assert!((y - want).abs() <= 4e-7 * want.abs().max(1e-30) + 1e-12, "tanh({x}) = {y}, want {want}");
        }
    }
}
