//! The memory budget checked once the batch is known and before anything of that size is
//! allocated: a tensor that cannot fit is a clear error naming it, not an abort in the
//! allocator (the compiler checks the same budget with every symbolic size at 1).

use crate::interp::RunError;
use muse_compiler::ir::{Graph, NodeIndex, Op};
use muse_compiler::limits::{format_bytes, memory_budget};

/// Refuses `g` when one of its tensors, or its inputs and parameters together, would take
/// more than the memory budget with the symbolic sizes given by `lookup`.
pub fn check(g: &Graph, lookup: &dyn Fn(&str) -> Option<i64>) -> Result<(), RunError> {
    check_within(g, lookup, memory_budget())
}

/// [`check`] with every symbolic size (the batch) at `batch`.
pub fn check_batch(g: &Graph, batch: usize) -> Result<(), RunError> {
    let b = i64::try_from(batch).unwrap_or(i64::MAX);
    check(g, &|_| Some(b))
}

/// [`check`] against `budget` bytes instead of the process's budget.
pub fn check_within(g: &Graph, lookup: &dyn Fn(&str) -> Option<i64>, budget: u64) -> Result<(), RunError> {
    let too_large = |what: String, n: NodeIndex, bytes: Option<u128>| {
        let shape: Vec<String> =
            g.ty(n).shape.0.iter().map(|d| d.eval(lookup).map_or_else(|| d.to_string(), |v| v.to_string())).collect();
        RunError::TooLarge {
            what,
            ty: format!("{}[{}]", g.ty(n).dtype, shape.join(", ")),
            bytes: bytes.map_or_else(|| "more bytes than 128 bits count".into(), format_bytes),
            budget: format_bytes(budget as u128),
        }
    };
    let mut held: u128 = 0;
    for n in g.g.node_indices() {
        let bytes = node_bytes(g, n, lookup);
        if bytes.is_none_or(|b| b > budget as u128) {
            return Err(too_large(describe(g, n), n, bytes));
        }
        if matches!(g.g[n].op, Op::Input { .. } | Op::Param { .. }) {
            held += bytes.unwrap_or(0);
            if held > budget as u128 {
                let what = format!("the inputs and parameters together (up to {})", describe(g, n));
                return Err(too_large(what, n, Some(held)));
            }
        }
    }
    Ok(())
}

/// The bytes of node `n` at these sizes; `None` when a size is unknown or it overflows.
fn node_bytes(g: &Graph, n: NodeIndex, lookup: &dyn Fn(&str) -> Option<i64>) -> Option<u128> {
    let ty = g.ty(n);
    ty.shape.0.iter().try_fold(ty.dtype.size_bytes() as u128, |acc, d| {
        let v = u128::try_from(d.eval(lookup)?).ok()?;
        acc.checked_mul(v)
    })
}

/// How an error names a node: an input or parameter by name, else its op and block path.
fn describe(g: &Graph, n: NodeIndex) -> String {
    let node = &g.g[n];
    match &node.op {
        Op::Input { name } => format!("input `{name}`"),
        Op::Param { name } => format!("parameter `{name}`"),
        op if node.prov.path.is_empty() => format!("the `{}` value of the model", op.name()),
        op => format!("the `{}` value in `{}`", op.name(), node.prov.path),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use muse_compiler::zoo;

    fn model(src: &str) -> Graph {
        let c = muse_compiler::compile_source("t.muse", src, &Default::default());
        c.result.expect("compiles").remove(0).graph
    }

    #[test]
    fn a_batch_too_large_for_the_budget_names_the_largest_tensor() {
        let g = model("model m {\n input x: f32[B, 1000]\n param w: [1000, 4000]\n output y = x @ w\n}\n");
        // At batch 10: x 40 KB, w 16 MB, y 160 KB; at 3000: x 12 MB, y 48 MB.
        assert!(check_within(&g, &|_| Some(10), 40 << 20).is_ok());
        let e = check_within(&g, &|_| Some(3000), 40 << 20).unwrap_err().to_string();
        assert!(e.contains("f32[3000, 4000]") && e.contains("45.8 MiB") && e.contains("40.0 MiB"), "{e}");
        let e = check_within(&g, &|_| Some(1), 10 << 20).unwrap_err().to_string();
        assert!(e.contains("parameter `w`"), "{e}");
    }

    #[test]
    fn sizes_that_overflow_are_refused_not_wrapped() {
        let g = model("model m {\n input x: f32[B, B, B, 100000]\n output y = x * 2.0\n}\n");
        let e = check_within(&g, &|_| Some(i64::MAX), u64::MAX).unwrap_err().to_string();
        assert!(e.contains("input `x`") && e.contains("more bytes than 128 bits count"), "{e}");
    }

    #[test]
    fn the_inputs_and_parameters_count_together() {
        // Each fits alone, not both.
        let g = model("model m {\n input x: f32[B, 1000]\n param w: [1000]\n output y = x * w\n}\n");
        let e = check_within(&g, &|_| Some(1), 6000).unwrap_err().to_string();
        assert!(e.contains("together"), "{e}");
        assert!(check_within(&g, &|_| Some(1), 8000 + 4000).is_ok());
    }

    #[test]
    fn every_model_fits_at_the_test_batch() {
        for name in zoo::MODELS {
            let file = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join(format!("../models/{name}.muse"));
            let c = muse_compiler::compile_path(&file, &Default::default());
            for m in c.result.expect("compiles") {
                assert!(check_within(&m.graph, &|_| Some(2), 4 << 30).is_ok(), "{name}");
            }
        }
    }
}
