//! GEMM steps through a CBLAS library (`MUSE_BLAS`) against the interpreter, with the operand
//! layouts the models produce (transposed weights, flattened batches, batched products).
//! Where no OpenBLAS is installed the CPU backend uses the `gemm` crate and this test says so.

mod common;

use muse_runtime::device::{DeviceKind, DeviceOptions};
use muse_runtime::inputs::random_inputs;
use muse_runtime::select;
use muse_runtime::{init_params, run, Precision, RunOptions};

#[test]
fn gemm_through_openblas_matches_the_interpreter() {
    // Read once, when the CPU backend first runs a product: this test is its own process.
    std::env::set_var("MUSE_BLAS", "libopenblas.so.0");
    let installed = std::process::Command::new("ldconfig")
        .arg("-p")
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).contains("libopenblas.so.0"));
    if !installed {
        eprintln!("libopenblas.so.0 is not installed: GEMM steps use the gemm crate (tested by cpu_backend)");
        return;
    }
    let m = common::compile_one(
        "blas.muse",
        "import \"std/nn.muse\"\nmodel b {\n  input x: f32[B, 5, 7]\n  input y: f32[B, 3, 7, 4]\n  h = linear(x, 6)\n  output o1 = h\n  output o2 = y @ transpose(y)\n  output o3 = transpose(x, 1, 2) @ x\n}\n",
    );
    let req: Vec<_> = m.graph.outputs.iter().map(|o| o.1).collect();
    let cache_dir = std::env::temp_dir().join(format!("muse-blas-{}", std::process::id()));
    let opts = DeviceOptions { cache_dir: Some(cache_dir.clone()), ..DeviceOptions::default() };
    let mut p = select(DeviceKind::Cpu, &opts).unwrap().device.compile(&m.graph, &req).unwrap();
    let inputs = random_inputs(&m.graph, 3, 4);
    let params = init_params(&m.graph, 4, Precision::F32).unwrap();
    let ours = p.run(&inputs, &params, 0).unwrap();
    let reference = run(&m.graph, &inputs, &params, &RunOptions::default()).unwrap();
    for (name, n) in &m.graph.outputs {
        let (a, b) = (ours[n].to_f64(), reference.get(*n).to_f64());
        let scale = b.iter().fold(0.0f64, |s, x| s.max(x.abs()));
        let diff = a.iter().zip(&b).fold(0.0f64, |s, (x, y)| s.max((x - y).abs()));
        assert!(diff <= 1e-5 * scale.max(1.0), "{name}: {diff:e}");
    }
    std::fs::remove_dir_all(&cache_dir).ok();
}
