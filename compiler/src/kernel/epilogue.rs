//! Matrix-product epilogues: a pointwise kernel that runs right after a product and reads
//! the product's result only at the element it computes (a bias, an activation, a residual)
//! becomes the product's epilogue. A backend applies it to each finished tile of the product
//! while the tile is in cache, instead of reading the whole result back from memory.
//!
//! Legality (below) is separate from the decision, which is simply "whenever legal": an
//! epilogue never computes anything twice and never delays anything.

use super::ir::{Body, Expr, ExprId, IndexOp, Kernel};
use super::lower::{LoweredKernel, Step};
use crate::ir::{Graph, NodeIndex};
use std::fmt;

/// Why a pointwise kernel after a product was not made its epilogue.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NotEpilogue {
    /// The kernel's outputs have another number of elements than the product (it iterates
    /// another space).
    OtherShape,
    /// The kernel reads the product's result at other elements than its own (a transpose,
    /// a broadcast, a neighbour).
    ReadsOtherElements,
}

impl fmt::Display for NotEpilogue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            NotEpilogue::OtherShape => "iterates another shape than the product",
            NotEpilogue::ReadsOtherElements => "reads the product at other elements than its own",
        })
    }
}

/// What the pass did.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct EpilogueReport {
    /// Products that took the kernel after them as epilogue: (product node, kernel name).
    pub fused: Vec<(NodeIndex, String)>,
    /// Products followed by a pointwise kernel reading them that stayed apart, and why.
    pub kept: Vec<(NodeIndex, String, NotEpilogue)>,
}

/// The element a pointwise kernel's lane computes: `Lane`, or `Lane * c + LaneInner` when its
/// inner axis runs as its own loop.
fn element(k: &Kernel) -> Option<ExprId> {
    let Body::Pointwise { split, .. } = &k.body else { return None };
    let find = |want: &dyn Fn(&Expr) -> bool| k.exprs.iter().position(|n| want(&n.expr)).map(|i| i as ExprId);
    let lane = find(&|e| *e == Expr::Lane)?;
    match split {
        None => Some(lane),
        Some(c) => {
            let inner = find(&|e| *e == Expr::LaneInner)?;
            let is_c = |e: ExprId| matches!(k.exprs[e as usize].expr, Expr::Const(b) if f64::from_bits(b) == *c as f64);
            let scaled = find(&|e| match *e {
                Expr::Index(IndexOp::Mul, a, b) => (a == lane && is_c(b)) || (b == lane && is_c(a)),
                _ => false,
            })?;
            find(&|e| match *e {
                Expr::Index(IndexOp::Add, a, b) => (a == scaled && b == inner) || (b == scaled && a == inner),
                _ => false,
            })
        }
    }
}

/// Whether `k`, run right after the product writing `out`, may be its epilogue.
pub fn legal(g: &Graph, out: NodeIndex, k: &LoweredKernel) -> Result<(), NotEpilogue> {
    // Element e of the kernel is element e of the product (reshapes of it included).
    let numel = g.ty(out).shape.numel();
    if numel.is_none() || k.group.outputs.iter().any(|&o| g.ty(o).shape.numel() != numel) {
        return Err(NotEpilogue::OtherShape);
    }
    let elem = element(&k.kernel).ok_or(NotEpilogue::OtherShape)?;
    let Some(buf) = k.buffers.iter().position(|&b| b == out) else { return Err(NotEpilogue::ReadsOtherElements) };
    let own = k.kernel.exprs.iter().all(|n| match n.expr {
        Expr::Load { buf: b, index } if b as usize == buf => index == elem,
        _ => true,
    });
    if own {
        Ok(())
    } else {
        Err(NotEpilogue::ReadsOtherElements)
    }
}

/// Moves each pointwise kernel that directly follows a product, reads its result and may be
/// its epilogue into the product's step.
pub fn fuse_epilogues(g: &Graph, steps: Vec<Step>) -> (Vec<Step>, EpilogueReport) {
    let mut report = EpilogueReport::default();
    let mut out: Vec<Step> = Vec::with_capacity(steps.len());
    for step in steps {
        if let (Some(Step::MatMul(m)), Step::Kernel(k)) = (out.last_mut(), &step) {
            let pointwise = matches!(k.kernel.body, Body::Pointwise { .. });
            if pointwise && m.epilogue.is_none() && k.group.reads.contains(&m.out) {
                match legal(g, m.out, k) {
                    Ok(()) => {
                        report.fused.push((m.out, k.kernel.name.clone()));
                        let Step::Kernel(k) = step else { unreachable!() };
                        m.epilogue = Some(k);
                        continue;
                    }
                    Err(why) => report.kept.push((m.out, k.kernel.name.clone(), why)),
                }
            }
        }
        out.push(step);
    }
    (out, report)
}
