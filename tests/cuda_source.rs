//! Snapshots of the generated CUDA of a few key kernels, so that a change to code
//! generation is seen in review (tests/golden/cuda/; MUSE_BLESS=1 rewrites them): a
//! layernorm (a row kernel with two reductions), the selective scan forward and backward
//! of mamba_xattn_xz, and AdamW.

mod common;

use muse_compiler::autodiff::{differentiate, Wrt};
use muse_compiler::ir::NodeIndex;
use muse_compiler::kernel::{Body, Kernel, Step};
use muse_compiler::render::cuda::{render_kernel, Storage};

fn kernels(g: &muse_compiler::ir::Graph, nodes: &[NodeIndex]) -> Vec<Kernel> {
    let (program, _) = muse_compiler::kernel::fuse(g, nodes);
    program
        .steps
        .into_iter()
        .filter_map(|s| match s {
            Step::Kernel(k) => Some(k.kernel),
            Step::MatMul(m) => m.epilogue.map(|e| e.kernel),
        })
        .collect()
}

#[test]
fn key_kernels_render_as_their_snapshots() {
    let m = common::compile_model("mamba_xattn_xz", &common::tiny("mamba_xattn_xz", "3"));
    let outs: Vec<NodeIndex> = m.graph.losses.iter().map(|l| l.1).collect();
    let forward = kernels(&m.graph, &outs);
    let d = differentiate(&m.graph, Wrt::default());
    let grads: Vec<NodeIndex> = d.params.iter().map(|p| p.1).collect();
    let backward = kernels(&d.graph, &grads);
    let layernorm = forward
        .iter()
        .find(|k| matches!(&k.body, Body::Row { phases, .. } if phases.len() == 2) && k.bufs[0].label.contains("norm"))
        .expect("a layernorm");
    let scan_fwd = forward.iter().find(|k| matches!(k.body, Body::Scan { reverse: false, .. })).expect("a scan");
    let scan_bwd =
        backward.iter().find(|k| matches!(k.body, Body::Scan { reverse: true, .. })).expect("a reverse scan");
    let optim = muse_compiler::kernel::optim::all();
    let adamw = optim.iter().find(|k| k.name == "opt_adamw").expect("AdamW");
    for (file, k) in
        [("layernorm", layernorm), ("scan_forward", scan_fwd), ("scan_backward", scan_bwd), ("adamw", adamw)]
    {
        common::check_golden(&format!("tests/golden/cuda/{file}.cu"), &render_kernel(k, Storage::F32));
    }
    // bf16 storage widens loads and rounds stores, and nothing else.
    let bf16 = render_kernel(layernorm, Storage::Bf16);
    assert!(bf16.contains("__bfloat162float(b1[") && bf16.contains("__float2bfloat16("), "{bf16}");
}
