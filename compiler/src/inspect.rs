//! The fusion inspection report: one row per kernel (what it fuses, where in the `.muse`
//! source it came from, bytes moved, FLOPs, launch shape) and why each value that crosses
//! between kernels is written to memory.

use crate::fusion::{CutReason, GroupKind};
use crate::ir::{Graph, NodeIndex, Op};
use crate::kernel::{KernelProgram, Step};
use crate::source::SourceMap;
use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write;

/// One row of the kernel table.
#[derive(Clone, Debug)]
pub struct KernelRow {
    /// Position in the program.
    pub id: usize,
    /// Kernel name (`k12`) or `gemm`.
    pub name: String,
    /// Kind (pointwise, reduce, matmul, scan, scatter_add).
    pub kind: String,
    /// Op names computed in the kernel, with counts.
    pub ops: BTreeMap<&'static str, usize>,
    /// `file:line` of every `.muse` line the kernel's nodes came from.
    pub lines: BTreeSet<String>,
    /// Bytes read from buffers (each buffer once) at batch size `batch`.
    pub bytes_read: u64,
    /// Bytes written.
    pub bytes_written: u64,
    /// Floating-point operations (elementwise ops count one per element; matmul 2MNK).
    pub flops: u64,
    /// Lanes x inner steps.
    pub launch: String,
    /// Whether the kernel computes part of the backward pass.
    pub backward: bool,
    /// The materialized values it reads, with the reason each was written to memory.
    pub inputs: Vec<(NodeIndex, CutReason)>,
}

fn numel(g: &Graph, n: NodeIndex, batch: i64) -> u64 {
    g.ty(n).shape.numel().and_then(|d| d.eval(&|_| Some(batch))).unwrap_or(0).max(0) as u64
}

fn bytes(g: &Graph, n: NodeIndex, batch: i64) -> u64 {
    numel(g, n, batch) * g.ty(n).dtype.size_bytes() as u64
}

/// The kernel table of a program at batch size `batch`.
pub fn rows(g: &Graph, p: &KernelProgram, sources: Option<&SourceMap>, batch: i64) -> Vec<KernelRow> {
    let mut out = Vec::new();
    for (id, step) in p.steps.iter().enumerate() {
        let (group, name) = match step {
            Step::Kernel(k) => (&k.group, k.kernel.name.clone()),
            Step::MatMul(m) => (&m.group, "gemm".to_string()),
        };
        let mut ops = BTreeMap::new();
        let mut lines = BTreeSet::new();
        let mut flops = 0u64;
        let mut all: Vec<NodeIndex> = group.inlined.iter().copied().chain(group.outputs.iter().copied()).collect();
        all.sort();
        all.dedup();
        for &n in &all {
            let node = g.node(n);
            if !node.op.is_view() && !node.op.is_leaf() {
                *ops.entry(node.op.name()).or_insert(0) += 1;
            }
            flops += match &node.op {
                Op::MatMul => {
                    let s = &g.ty(g.operands(n)[0]).shape;
                    let k = s.0[s.rank() - 1].as_known().unwrap_or(0) as u64;
                    2 * numel(g, n, batch) * k
                }
                Op::Unary(_) | Op::Binary(_) | Op::Select => numel(g, n, batch),
                Op::Reduce { .. } | Op::Scan { .. } | Op::ScatterAdd { .. } => {
                    numel(g, g.operands(n)[0], batch) * if matches!(node.op, Op::Scan { .. }) { 2 } else { 1 }
                }
                _ => 0,
            };
            if let (Some(sm), Some(loc)) = (sources, node.prov.loc) {
                let (l, _) = sm.line_col(loc);
                lines.insert(format!("{}:{l}", sm.get(loc.file).name));
            }
        }
        let bytes_read = group.reads.iter().map(|&n| bytes(g, n, batch)).sum();
        let launch = match step {
            Step::MatMul(m) => {
                let s = &g.ty(m.out).shape;
                format!("gemm {}", s)
            }
            Step::Kernel(_) => match group.kind {
                GroupKind::Row | GroupKind::Scan => {
                    let anchor = if group.kind == GroupKind::Row {
                        *group
                            .members
                            .iter()
                            .find(|&&m| matches!(g.node(m).op, Op::Reduce { .. }))
                            .unwrap_or(&group.root)
                    } else {
                        group.root
                    };
                    let src = g.operands(anchor)[0];
                    let total = numel(g, src, batch);
                    let lanes = if group.kind == GroupKind::Row {
                        numel(g, anchor, batch)
                    } else {
                        let axis = match g.node(group.root).op {
                            Op::Scan { axis, .. } => axis,
                            _ => 0,
                        };
                        let len = g.ty(group.root).shape.0[axis].as_known().unwrap_or(1) as u64;
                        total / len.max(1)
                    };
                    format!("{lanes} x {}", total / lanes.max(1))
                }
                _ => format!("{} lanes", numel(g, group.root, batch)),
            },
        };
        let kind = match group.kind {
            GroupKind::Pointwise => "pointwise",
            GroupKind::Row => "row",
            GroupKind::MatMul => "matmul",
            GroupKind::Scan => "scan",
            GroupKind::ScatterAdd => "scatter_add",
        };
        let inputs = group.reads.iter().map(|n| (*n, p.materialized[n])).collect();
        out.push(KernelRow {
            id,
            name,
            kind: kind.into(),
            ops,
            lines,
            bytes_read,
            bytes_written: group.outputs.iter().map(|&o| bytes(g, o, batch)).sum(),
            flops,
            launch,
            backward: g.node(group.root).prov.grad,
            inputs,
        });
    }
    out
}

/// The kernel table as text, with a summary of why values were written to memory.
pub fn table(rows: &[KernelRow], p: &KernelProgram) -> String {
    let mut s = String::new();
    let _ = writeln!(
        s,
        "{:>4}  {:<6} {:<11} {:>4}  {:>10} {:>10} {:>11}  {:<16} {:<44} source",
        "id", "kernel", "kind", "pass", "read B", "written B", "FLOPs", "launch", "ops"
    );
    for r in rows {
        let ops: Vec<String> =
            r.ops.iter().map(|(k, v)| if *v > 1 { format!("{k}x{v}") } else { k.to_string() }).collect();
        let mut ops = ops.join(" ");
        if ops.len() > 44 {
            ops.truncate(41);
            ops.push_str("...");
        }
        let lines: Vec<&String> = r.lines.iter().take(3).collect();
        let more = if r.lines.len() > 3 { format!(" +{}", r.lines.len() - 3) } else { String::new() };
        let _ = writeln!(
            s,
            "{:>4}  {:<6} {:<11} {:>4}  {:>10} {:>10} {:>11}  {:<16} {:<44} {}{}",
            r.id,
            r.name,
            r.kind,
            if r.backward { "bwd" } else { "fwd" },
            r.bytes_read,
            r.bytes_written,
            r.flops,
            r.launch,
            ops,
            lines.iter().map(|l| l.as_str()).collect::<Vec<_>>().join(", "),
            more
        );
    }
    let mut reasons: BTreeMap<CutReason, usize> = BTreeMap::new();
    for r in p.materialized.values() {
        *reasons.entry(*r).or_default() += 1;
    }
    let _ = writeln!(s, "\n{} kernels; values written to memory, by reason:", rows.len());
    for (r, k) in reasons {
        let _ = writeln!(s, "  {k:>6}  {r}");
    }
    s
}
