//! Validate mode: the fused program and the reference interpreter side by side, comparing
//! the output of every kernel as it runs and naming the first one that differs.

use crate::cpu::CpuProgram;
use crate::interp::{self, Precision, RunError, RunOptions};
use crate::tensor::HostTensor;
use muse_compiler::ir::{Graph, NodeIndex};
use muse_compiler::kernel::{lower::label, Step};
use std::collections::HashMap;

/// Largest difference relative to the reference's largest magnitude (absolute if it is 0).
pub fn relative_error(ours: &HostTensor, reference: &HostTensor) -> f64 {
    let (a, b) = (ours.to_f64(), reference.to_f64());
    let scale = b.iter().fold(0.0f64, |m, x| m.max(x.abs()));
    let diff = a.iter().zip(&b).fold(0.0f64, |m, (x, y)| {
        let d = if x.is_nan() && y.is_nan() { 0.0 } else { (x - y).abs() };
        m.max(if d.is_nan() { f64::INFINITY } else { d })
    });
    if scale == 0.0 {
        diff
    } else {
        diff / scale
    }
}

/// The first kernel whose output differs, if any.
#[derive(Clone, Debug, PartialEq)]
pub struct Mismatch {
    /// Step of the program.
    pub step: usize,
    /// Kernel name (or `gemm`).
    pub kernel: String,
    /// The value it computes.
    pub value: String,
    /// Relative error against the interpreter.
    pub error: f64,
}

/// Result of a validation run.
#[derive(Clone, Debug, PartialEq)]
pub struct Validation {
    /// Kernels compared.
    pub checked: usize,
    /// Largest relative error seen.
    pub worst: f64,
    /// The first kernel beyond tolerance.
    pub first_mismatch: Option<Mismatch>,
}

/// Runs `p` and the interpreter on the same tensors and compares every kernel's output.
pub fn validate(
    g: &Graph,
    p: &CpuProgram,
    inputs: &HashMap<String, HostTensor>,
    params: &HashMap<String, HostTensor>,
    seed: u64,
    tolerance: f64,
) -> Result<Validation, RunError> {
    let reference = interp::run(g, inputs, params, &RunOptions { precision: Precision::F32, seed })?;
    let mut v = Validation { checked: 0, worst: 0.0, first_mismatch: None };
    let mut observe = |step: usize, node: NodeIndex, value: HostTensor| {
        let e = relative_error(&value, reference.get(node));
        v.checked += 1;
        v.worst = v.worst.max(e);
        if e > tolerance {
            let kernel = match &p.program.steps[step] {
                Step::Kernel(k) => k.kernel.name.clone(),
                Step::MatMul(m) => m.epilogue.as_ref().map_or("gemm".into(), |e| format!("gemm+{}", e.kernel.name)),
            };
            v.first_mismatch = Some(Mismatch { step, kernel, value: label(g, node), error: e });
            return false;
        }
        true
    };
    p.run_observed(g, inputs, params, seed, Some(&mut observe))?;
    Ok(v)
}
