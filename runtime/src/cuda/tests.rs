//! The CUDA runtime's own tests, run through the CPU simulation: what a GPU would get wrong
//! silently (barriers, shuffles, the scan's carry), products mapped onto cuBLAS's calls for
//! every kind of operand view, and the simulation's own checks of the runtime's calls.
//! Every model through `--device cuda-sim` is checked in tests/cpu_backend.rs.

use super::gpu::{Batch, GemmCall, Gpu, Operand};
use super::program::GpuProgram;
use super::sim::SimGpu;
use crate::cpu::compile::CompilerSettings;
use crate::inputs::random_inputs;
use crate::tensor::HostTensor;
use crate::{run, RunOptions};
use muse_compiler::ir::NodeIndex;
use muse_compiler::render::cuda::Storage;
use muse_compiler::Options;
use std::collections::HashMap;
use std::sync::Arc;

fn rel_err(ours: &HostTensor, reference: &HostTensor) -> f64 {
    crate::validate::relative_error(ours, reference)
}

/// The simulation compiling at -O1 into its own cache folder.
fn sim(tag: &str) -> (Arc<SimGpu>, std::path::PathBuf) {
    let dir = std::env::temp_dir().join(format!("muse-cuda-{tag}-{}", std::process::id()));
    let settings = CompilerSettings {
        cache_dir: dir.clone(),
        flags: vec!["-O1".into(), "-std=c++17".into()],
        ..CompilerSettings::cuda_sim()
    };
    (Arc::new(SimGpu::new(settings)), dir)
}

/// Every product of the CPU backend's product test, plus batches whose operands are not
/// evenly spaced (cuBLAS's pointer-array form), against the interpreter; and each form of
/// call (transposed operands, gathered operands, strided and pointer batches) is used.
#[test]
fn products_map_onto_cublas_calls() {
    let extra = concat!(
        // Batch elements at uneven offsets (a permuted batch, a broadcast axis): cuBLAS's
        // pointer-array form.
        "  input h4: f32[2, 3, 5, 6]\n  input w5: f32[3, 1, 6, 7]\n  output pb = permute(h4, [1, 0, 2, 3]) @ w5\n",
        // One right operand for every batch element (batch stride 0).
        "  input w6: f32[1, 1, 6, 7]\n  output pd = h4 @ w6\n",
    );
    let body = crate::cpu::tests::PRODUCTS.trim_end().strip_suffix('}').expect("a model");
    let src = format!("{body}{extra}}}\n");
    let c = muse_compiler::compile_source("mm.muse", &src, &Options::default());
    let mm = c.result.unwrap_or_else(|d| panic!("{}", d.render(&c.sources))).remove(0);
    let outs: Vec<NodeIndex> = mm.graph.outputs.iter().map(|x| x.1).collect();
    let inputs = random_inputs(&mm.graph, 1, 2);
    let reference = run(&mm.graph, &inputs, &Default::default(), &RunOptions::default()).unwrap();
    let (gpu, dir) = sim("products");
    let p = GpuProgram::compile(&gpu, &mm.graph, &outs, Storage::F32).unwrap();
    let r = p.bind(&mm.graph, &inputs, &Default::default(), &[]).unwrap();
    p.execute(&mm.graph, &r, 0, None).unwrap();
    for (name, n) in &mm.graph.outputs {
        let e = rel_err(&r.read(&mm.graph, *n).unwrap().unwrap(), reference.get(*n));
        assert!(e < 1e-5, "{name}: relative error {e:e}");
    }
    let forms = r.product_forms();
    println!("product forms: {forms:?}");
    for form in ["transposed", "gathered", "strided batch", "pointer batch", "broadcast"] {
        assert!(forms.contains(&form), "no product used the {form} form: {forms:?}");
    }
    std::fs::remove_dir_all(&dir).ok();
}

/// The simulation refuses what a GPU would fault on or cuBLAS would reject: copies outside
/// an allocation, products reading past an operand, leading dimensions below cuBLAS's rule.
#[test]
fn the_simulation_checks_the_runtimes_calls() {
    let (gpu, _) = sim("checks");
    let p = gpu.alloc(64).unwrap();
    assert!(gpu.upload(p, &[0u8; 64]).is_ok());
    let e = gpu.upload(p + 8, &[0u8; 64]).unwrap_err().0;
    assert!(e.contains("outside every allocation"), "{e}");
    assert!(gpu.download(p + 60, &mut [0u8; 8]).is_err());
    assert!(gpu.copy(p, p + 32, 32).is_ok() && gpu.copy(p, p + 40, 32).is_err());
    // A 4 x 4 product over 16 floats: fine; one more column of A: past the end.
    let call = |k: i64, lda: i64| GemmCall {
        m: 4,
        n: 4,
        k,
        a: p,
        op_a: Operand { trans: false, ld: lda },
        b: p,
        op_b: Operand { trans: false, ld: k.max(1) },
        c: p,
        ldc: 4,
        count: 1,
        batch: Batch::Strided { a: 0, b: 0, c: 0 },
        bf16: false,
    };
    let c = gpu.alloc(64).unwrap();
    assert!(gpu.gemm(&GemmCall { c, ..call(4, 4) }).is_ok());
    let e = gpu.gemm(&GemmCall { c, ..call(5, 4) }).unwrap_err().0;
    assert!(e.contains("product operand A"), "{e}");
    let e = gpu.gemm(&GemmCall { c, ..call(4, 3) }).unwrap_err().0;
    assert!(e.contains("lda = 3 < max(1, 4)"), "{e}");
    // The product itself is cuBLAS's: column-major, op(A) as asked.
    let a: Vec<f32> = (0..16).map(|x| x as f32).collect();
    gpu.upload(p, &a.iter().flat_map(|x| x.to_le_bytes()).collect::<Vec<u8>>()).unwrap();
    let t = GemmCall { c, op_a: Operand { trans: true, ld: 4 }, ..call(4, 4) };
    gpu.gemm(&t).unwrap();
    let mut out = [0u8; 64];
    gpu.download(c, &mut out).unwrap();
    let out = super::program::f32s(&out);
    // C(i, j) = sum_l A(l, i) A(l, j) with A(r, c) = a[r + 4 c]: column sums of products.
    for i in 0..4 {
        for j in 0..4 {
            let want: f32 = (0..4).map(|l| a[l + 4 * i] * a[l + 4 * j]).sum();
            assert_eq!(out[i + 4 * j], want, "C({i}, {j})");
        }
    }
    gpu.free(p);
    gpu.free(c);
    assert!(gpu.upload(p, &[0u8; 4]).is_err(), "freed memory is gone");
}

/// The CUDA dialect's copy, compiled for the CPU through the CUDA simulation's header: the
/// same bits (on a GPU the normal draws' f64 log and cos are CUDA's, within an ulp).
#[test]
fn the_cuda_generator_is_the_interpreters_bit_for_bit() {
    use muse_compiler::render::{cuda, Dialect};
    let optim = muse_compiler::kernel::optim::all();
    let prelude = format!(
        "#define MUSE_SIM 1\n{}\n{}",
        super::sim::HEADER,
        cuda::Cuda::new(&optim[0], cuda::Storage::F32).prelude()
    );
    crate::cpu::tests::check_generator(
        prelude,
        CompilerSettings { flags: vec!["-O1".into(), "-std=c++17".into()], ..CompilerSettings::cuda_sim() },
    );
}

/// The CUDA simulation catches what breaks GPU kernels silently. The generated CUDA of a
/// Mamba model's forward and backward (rows longer than a warp, scans of several chunks)
/// equals the interpreter; with one barrier removed, the shuffle butterfly starting at the
/// wrong offset, or the scan's chunk carry one chunk late, it does not.
#[test]
fn the_cuda_simulation_fails_broken_kernels() {
    let opts = Options {
        overrides: [
            ("dim", "48"),
            ("d_state", "4"),
            ("grid", "4"),
            ("depth", "1"),
            ("heads", "2"),
            ("text_depth", "1"),
            ("codebook", "7"),
            ("text_vocab", "11"),
            ("text_len", "3"),
        ]
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect(),
        model: None,
        memory_budget: None,
    };
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../models/mamba_xattn_xz.muse");
    let c = muse_compiler::compile_path(&path, &opts);
    let m = c.result.unwrap_or_else(|d| panic!("{}", d.render(&c.sources))).remove(0);
    let d = muse_compiler::autodiff::differentiate(&m.graph, muse_compiler::autodiff::Wrt::default());
    let mut req: Vec<NodeIndex> = m.graph.losses.iter().map(|l| l.1).collect();
    req.extend(d.params.iter().map(|p| p.1));
    let inputs = random_inputs(&m.graph, 2, 3);
    let params = crate::init_params(&m.graph, 3, crate::Precision::F32).unwrap();
    let reference = run(&d.graph, &inputs, &params, &RunOptions::default()).unwrap();
    let (_, dir) = sim("mutants");
    let settings = CompilerSettings {
        cache_dir: dir.clone(),
        flags: vec!["-O1".into(), "-std=c++17".into()],
        ..CompilerSettings::cuda_sim()
    };
    // The largest relative error over the loss and every gradient (infinite for a NaN).
    let worst = |from: &str, to: &str| -> f64 {
        let applied = std::cell::Cell::new(false);
        let edit = |u: &mut String| {
            if u.contains(from) {
                *u = u.replacen(from, to, 1);
                applied.set(true);
            }
        };
        let gpu = Arc::new(SimGpu::new(settings.clone()));
        let p = GpuProgram::compile_edited(&gpu, &d.graph, &req, Storage::F32, &edit).unwrap();
        assert!(from.is_empty() || applied.get(), "the mutation applies: {from}");
        let r = p.bind(&d.graph, &inputs, &params, &[]).unwrap();
        p.execute(&d.graph, &r, 0, None).unwrap();
        let ours: HashMap<NodeIndex, HostTensor> =
            req.iter().map(|&n| (n, r.read(&d.graph, n).unwrap().unwrap())).collect();
        req.iter()
            .map(|n| {
                let e = rel_err(&ours[n], reference.get(*n));
                if e.is_nan() {
                    f64::INFINITY
                } else {
                    e
                }
            })
            .fold(0.0, f64::max)
    };
    let clean = worst("", "");
    assert!(clean < 1e-4, "unedited: relative error {clean:e}");
    let mutants = [
        (
            "the block reduction's barrier between writing the warps' results and reading them",
            "  if ((threadIdx.x & 31) == 0) red[threadIdx.x >> 5] = v;\n  __syncthreads();\n",
            "  if ((threadIdx.x & 31) == 0) red[threadIdx.x >> 5] = v;\n",
        ),
        (
            "the block reduction's barrier before reusing its shared memory",
            "  v = muse_group_reduce(v, op, 32);\n  __syncthreads();\n",
            "  v = muse_group_reduce(v, op, 32);\n",
        ),
        (
            "the scan's barrier between the chunks' composites and the carry",
            "    __syncthreads();\n    if (chunk == 0) {\n      for (int j",
            "    if (chunk == 0) {\n      for (int j",
        ),
        (
            "the shuffle butterfly starting at a quarter of the width instead of half",
            "for (int o = width / 2; o > 0; o /= 2)",
            "for (int o = width / 4; o > 0; o /= 2)",
        ),
        (
            "the vector loop's second element computed at the third's index",
            "        const long long e = 4 * q + 1;\n",
            "        const long long e = 4 * q + 2;\n",
        ),
        (
            "the scan's carry into each chunk taken one chunk late",
            "          scan_h[at] = carry;\n          carry = p * carry + hh;\n",
            "          carry = p * carry + hh;\n          scan_h[at] = carry;\n",
        ),
    ];
    for (what, from, to) in mutants {
        let e = worst(from, to);
        println!("{what}: relative error {e:e}");
        assert!(e > 1e-2, "{what}: still equals the interpreter (relative error {e:e})");
    }
    std::fs::remove_dir_all(&dir).ok();
}
