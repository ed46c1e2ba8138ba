//! Validate mode: a device's program and the reference interpreter side by side, comparing
//! the output of every kernel as it runs and naming the first one that differs.

use crate::device::{Program, Tensors};
use crate::interp::{self, Precision, RunError, RunOptions};
use crate::tensor::HostTensor;
use muse_compiler::ir::NodeIndex;
use muse_compiler::kernel::lower::label;
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

/// The norm of the difference relative to the reference's norm (the Euclidean norms of
/// the flattened tensors): the measure for values computed in bf16, whose largest single
/// deviation says less than how far the whole tensor moved. Infinite when either has a NaN.
pub fn relative_l2(ours: &HostTensor, reference: &HostTensor) -> f64 {
    let (a, b) = (ours.to_f64(), reference.to_f64());
    let diff: f64 = a.iter().zip(&b).map(|(x, y)| (x - y) * (x - y)).sum();
    let norm: f64 = b.iter().map(|y| y * y).sum();
    let r = if norm == 0.0 { diff.sqrt() } else { (diff / norm).sqrt() };
    if r.is_nan() {
        f64::INFINITY
    } else {
        r
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

/// Runs `p` (bound to its inputs and parameters) and the interpreter on the same tensors
/// and compares the output of every step as it runs.
pub fn validate(
    p: &mut dyn Program,
    inputs: &Tensors,
    params: &Tensors,
    seed: u64,
    tolerance: f64,
) -> Result<Validation, RunError> {
    let reference = interp::run(p.graph(), inputs, params, &RunOptions { precision: Precision::F32, seed })?;
    let labels: HashMap<NodeIndex, String> = p.graph().g.node_indices().map(|n| (n, label(p.graph(), n))).collect();
    let names: Vec<String> = (0..p.launches()).map(|i| p.step_name(i)).collect();
    let mut v = Validation { checked: 0, worst: 0.0, first_mismatch: None };
    let mut observe = |step: usize, node: NodeIndex, value: HostTensor| {
        let e = relative_error(&value, reference.get(node));
        v.checked += 1;
        v.worst = v.worst.max(e);
        if e > tolerance {
            let kernel = names.get(step).cloned().unwrap_or_default();
            v.first_mismatch = Some(Mismatch { step, kernel, value: labels[&node].clone(), error: e });
            return false;
        }
        true
    };
    p.bind(inputs, params)?;
    p.execute_observed(seed, &mut observe)?;
    Ok(v)
}
