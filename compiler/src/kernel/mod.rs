//! Kernels: the typed kernel IR, the lowering of fusion groups to it, the products'
//! epilogues, and the optimizer's kernels.

pub mod analysis;
pub mod epilogue;
pub mod ir;
pub mod lower;
pub mod optim;

pub use ir::{Access, Body, BufParam, Expr, ExprId, IndexOp, KType, Kernel};
pub use lower::{lower, KernelProgram, LoweredKernel, MatMulStep, Step};

use crate::ir::{Graph, NodeIndex};
use crate::report::{PassReport, PassTimer};

/// Fusion and lowering of what computing `requested` takes: the kernel program every
/// fusing device starts from, with each pass's report.
pub fn fuse(g: &Graph, requested: &[NodeIndex]) -> (KernelProgram, [PassReport; 2]) {
    let timer = PassTimer::start("fusion", g.node_count());
    let plan = crate::fusion::plan(g, requested);
    let fused = timer.finish(
        g.node_count(),
        format!("{} kernels, {} values in memory", plan.kernel_count(), plan.materialized.len()),
    );
    let timer = PassTimer::start("lower", g.node_count());
    let program = lower(g, &plan);
    let exprs: usize =
        program.steps.iter().map(|s| if let Step::Kernel(k) = s { k.kernel.exprs.len() } else { 0 }).sum();
    let lowered = timer.finish(
        g.node_count(),
        format!(
            "{exprs} kernel-IR expressions, {} products with an epilogue{}",
            program.epilogues.fused.len(),
            program.epilogues.kept.iter().map(|(_, k, why)| format!("; not {k}: {why}")).collect::<String>()
        ),
    );
    (program, [fused, lowered])
}
