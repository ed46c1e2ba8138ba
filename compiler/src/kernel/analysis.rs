//! Analyses of a kernel's expression arena that every renderer and the kernel IR's own
//! queries use: where each expression is evaluated (its loop level), which expressions a
//! set of roots needs, and after which reduction phase each can be evaluated.

use super::ir::{Body, Expr, ExprId, KType, Kernel};

/// Where an expression is evaluated: once per kernel, per lane, or per step of the inner loop.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Level {
    /// Depends on nothing that varies.
    Kernel,
    /// Depends on the lane only.
    Lane,
    /// Depends on the inner-loop step.
    Step,
    /// Depends on the state of a scan (or its carry).
    State,
}

/// The level of every expression of a kernel.
pub fn levels(k: &Kernel) -> Vec<Level> {
    let mut lv = vec![Level::Kernel; k.exprs.len()];
    for (i, n) in k.exprs.iter().enumerate() {
        let kids = children(&n.expr);
        let own = match n.expr {
            Expr::Lane | Expr::LaneInner | Expr::Acc(_) => Level::Lane,
            Expr::Step => Level::Step,
            Expr::State | Expr::Carry => Level::State,
            _ => Level::Kernel,
        };
        lv[i] = kids.iter().map(|&c| lv[c as usize]).fold(own, Level::max);
    }
    lv
}

/// Operands of an expression.
pub fn children(e: &Expr) -> Vec<ExprId> {
    match e {
        Expr::Const(_)
        | Expr::Lane
        | Expr::LaneInner
        | Expr::Step
        | Expr::State
        | Expr::Size(_)
        | Expr::Carry
        | Expr::Acc(_) => vec![],
        Expr::Load { index, .. } => vec![*index],
        Expr::Index(_, a, b) | Expr::Binary(_, a, b) => vec![*a, *b],
        Expr::Unary(_, a) | Expr::Cast(a) => vec![*a],
        Expr::Select(c, a, b) => vec![*c, *a, *b],
        Expr::Random { index, .. } => vec![*index],
    }
}

/// The expressions that `roots` use, transitively.
pub fn needed(k: &Kernel, roots: &[ExprId]) -> Vec<bool> {
    let mut stack = roots.to_vec();
    let mut used = vec![false; k.exprs.len()];
    while let Some(r) = stack.pop() {
        if !std::mem::replace(&mut used[r as usize], true) {
            stack.extend(children(&k.exprs[r as usize].expr));
        }
    }
    used
}

/// For each expression, the number of row-kernel reduction phases that must finish before
/// it can be evaluated (one more than the highest `Acc` it depends on).
pub fn phases(k: &Kernel) -> Vec<u32> {
    let mut ph = vec![0u32; k.exprs.len()];
    for (i, n) in k.exprs.iter().enumerate() {
        let own = if let Expr::Acc(j) = n.expr { j + 1 } else { 0 };
        ph[i] = children(&n.expr).iter().map(|&c| ph[c as usize]).fold(own, u32::max);
    }
    ph
}

/// The expressions a kernel body uses, transitively.
pub fn used(k: &Kernel) -> Vec<bool> {
    let mut roots = vec![k.lanes];
    match &k.body {
        Body::Pointwise { stores, .. } => roots.extend(stores.iter().map(|s| s.1)),
        Body::Row { inner, phases, elem_stores, lane_stores } => {
            roots.push(*inner);
            roots.extend(phases.iter().map(|p| p.1));
            roots.extend(elem_stores.iter().flat_map(|s| [s.1, s.2]));
            roots.extend(lane_stores.iter().map(|s| s.1));
        }
        Body::Scan { inner, a, b, state_stores, reduces, step_stores, step_reduces, .. } => {
            roots.extend([*inner, *a, *b]);
            roots.extend(state_stores.iter().flat_map(|s| [s.1, s.2]));
            roots.extend(reduces.iter().map(|r| r.1));
            roots.extend(step_stores.iter().flat_map(|s| [s.1, s.2]));
            roots.extend(step_reduces.iter().flat_map(|r| [r.1, r.3]));
        }
        Body::ScatterAdd { row, col, row_len, rows, value, .. } => roots.extend([*row, *col, *row_len, *rows, *value]),
    }
    needed(k, &roots)
}

/// For each expression, whether it varies with a scan's step: it reads the step, the
/// carried state or a step's reductions over the states.
pub fn per_step(k: &Kernel) -> Vec<bool> {
    let mut per_step = vec![false; k.exprs.len()];
    for (i, n) in k.exprs.iter().enumerate() {
        per_step[i] = matches!(n.expr, Expr::Step | Expr::Carry | Expr::Acc(_))
            || children(&n.expr).iter().any(|&c| per_step[c as usize]);
    }
    per_step
}

/// A scan's per-state values that do not vary with the step (Mamba's `-exp(A_log)`), which
/// a renderer computes once per lane. Values only: index arithmetic is cheaper to redo than
/// to keep (and int64 arrays in the loop keep GCC from vectorizing it).
pub fn step_invariant_values(k: &Kernel) -> Vec<usize> {
    let (lv, used, ph, per_step) = (levels(k), used(k), phases(k), per_step(k));
    (0..k.exprs.len())
        .filter(|&i| used[i] && lv[i] == Level::State && !per_step[i] && ph[i] == 0)
        .filter(|&i| matches!(k.exprs[i].ty, KType::Elem(_)))
        .collect()
}
