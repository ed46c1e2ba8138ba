//! The CPU backend's own tests: what only its settings reach (the kernel cache and its key,
//! compiler failures, the GEMM template against the `gemm` crate, a CBLAS library). Every
//! other check of it runs through the device interface (tests/cpu_backend.rs).

use super::compile::{self, CompilerSettings};
use super::CpuProgram;
use crate::inputs::random_inputs;
use crate::{run, RunOptions};
use muse_compiler::ir::NodeIndex;
use muse_compiler::{compile_source, Model, Options};

fn compile_one(name: &str, src: &str) -> Model {
    let c = compile_source(name, src, &Options::default());
    c.result.unwrap_or_else(|d| panic!("{}", d.render(&c.sources))).remove(0)
}

/// Matrix products over every kind of operand view the fused program hands a product.
pub(crate) const PRODUCTS: &str = concat!(
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
);

/// `-O1`: several times faster to compile; the numbers checked here do not depend on it.
fn quick() -> CompilerSettings {
    CompilerSettings {
        flags: ["-O1", "-march=native", "-fopenmp"].iter().map(|x| x.to_string()).collect(),
        ..CompilerSettings::default()
    }
}

fn rel_err(ours: &crate::HostTensor, reference: &crate::HostTensor) -> f64 {
    crate::validate::relative_error(ours, reference)
}

/// A second compilation of the same model compiles nothing: the library comes from the
/// on-disk cache (a fresh process would find it the same way, keyed by the source hash).
#[test]
fn kernel_cache_and_compiler_errors() {
    let m = compile_one(
        "cache.muse",
        "import \"std/nn.muse\"\nmodel c {\n  input x: f32[B, 5]\n  output y = softmax(x * 3.0) + 1.0\n}\n",
    );
    let req = vec![m.graph.outputs[0].1];
    let dir = std::env::temp_dir().join(format!("muse-cache-test-{}", std::process::id()));
    let settings = CompilerSettings { cache_dir: dir.clone(), ..quick() };
    let first = CpuProgram::compile(&m.graph, &req, &settings).unwrap();
    let libs: Vec<_> = std::fs::read_dir(&dir).unwrap().filter_map(|e| e.ok()).collect();
    assert!(libs.iter().any(|e| e.path().extension().is_some_and(|x| x == "so")));
    assert!(!first.library.as_ref().unwrap().cached);
    compile::forget_loaded();
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
    let mm = compile_one("mm.muse", PRODUCTS);
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

/// The C dialect's copy of the counter-based generator, printed from its one specification,
/// against the interpreter's (`crate::rng`) bit for bit: stream keys, uniform and normal
/// draws over counters from 0 to 2^63, for several run and op seeds.
#[test]
fn the_c_generator_is_the_interpreters_bit_for_bit() {
    use muse_compiler::render::Dialect;
    check_generator(muse_compiler::render::c::C.prelude(), quick());
}

/// Draws of the generator `prelude` defines against the interpreter's, bit for bit.
pub(crate) fn check_generator(prelude: String, settings: CompilerSettings) {
    use muse_compiler::render::rng;
    // C++ (the simulation) names the probe without mangling, as C does.
    let linkage = if settings.cuda_sim { "extern \"C\" " } else { "" };
    let probe = format!(
        "{prelude}\n{linkage}void rng_probe(void **bufs, const int64_t *sizes, uint64_t seed) {{\n  const uint64_t *at = (const uint64_t *)bufs[0];\n  double *out = (double *)bufs[1];\n  uint64_t *keys = (uint64_t *)bufs[2];\n  uint64_t key = {}(seed, (uint64_t)sizes[1]);\n  keys[0] = key;\n  for (int64_t i = 0; i < sizes[0]; i++) {{ out[2 * i] = {}(key, at[i]); out[2 * i + 1] = {}(key, at[i]); }}\n}}\n",
        rng::KEY,
        rng::UNIFORM,
        rng::NORMAL
    );
    let dir = std::env::temp_dir().join(format!("muse-rng-probe-{}-{}", std::process::id(), settings.cuda_sim));
    let lib = compile::compile(&[probe], &CompilerSettings { cache_dir: dir.clone(), ..settings }).unwrap();
    let f = lib.kernel("rng_probe").unwrap();
    let mut at: Vec<u64> = (0..2000u64).collect();
    at.extend((0..2000u64).map(|i| crate::rng::mix64(i) >> (i % 64)));
    at.extend([u64::MAX / 2, (1 << 53) + 1, 1 << 40]);
    let mut checked = 0;
    for (run_seed, op_seed) in [(0u64, 0u64), (7, 42), (u64::MAX, 3), (0x1234_5678_9abc_def0, 1 << 63)] {
        let mut out = vec![0.0f64; 2 * at.len()];
        let mut key = [0u64];
        let mut bufs: Vec<*mut std::ffi::c_void> =
            vec![at.as_mut_ptr().cast(), out.as_mut_ptr().cast(), key.as_mut_ptr().cast()];
        let sizes = [at.len() as i64, op_seed as i64];
        // SAFETY: the probe reads `sizes[0]` counters and writes twice as many doubles and one key.
        unsafe { f(bufs.as_mut_ptr(), sizes.as_ptr(), run_seed) };
        let want = crate::rng::stream_key(run_seed, op_seed);
        assert_eq!(key[0], want, "stream key of ({run_seed}, {op_seed})");
        for (i, &c) in at.iter().enumerate() {
            assert_eq!(out[2 * i].to_bits(), crate::rng::uniform(want, c).to_bits(), "uniform at {c}");
            assert_eq!(out[2 * i + 1].to_bits(), crate::rng::normal(want, c).to_bits(), "normal at {c}");
            checked += 2;
        }
    }
    assert_eq!(checked, 4 * 2 * at.len());
    std::fs::remove_dir_all(&dir).ok();
}

/// The kernel cache key holds what `-march=native` means on this CPU: the compiler's
/// predefined macros name the instruction set extensions the CPU has, so two machines
/// sharing a cache get different entries.
#[cfg(target_arch = "x86_64")]
#[test]
fn the_cache_key_names_this_cpus_features() {
    let native = compile::target_macros("cc", &["-march=native".to_string()]);
    assert!(native.contains("__x86_64__"), "{native}");
    for (feature, mac) in [("avx2", "__AVX2__"), ("avx512f", "__AVX512F__"), ("fma", "__FMA__")] {
        let has = match feature {
            "avx2" => std::is_x86_feature_detected!("avx2"),
            "avx512f" => std::is_x86_feature_detected!("avx512f"),
            _ => std::is_x86_feature_detected!("fma"),
        };
        assert_eq!(native.contains(&format!("#define {mac} 1")), has, "{feature}");
    }
    let baseline = compile::target_macros("cc", &["-march=x86-64".to_string()]);
    let v3 = compile::target_macros("cc", &["-march=x86-64-v3".to_string()]);
    assert!(!baseline.contains("__AVX2__") && v3.contains("__AVX2__"));
}
