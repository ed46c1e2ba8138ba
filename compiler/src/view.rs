//! The view and stride algebra: a chain of views (reshape, permute, broadcast, slice) as
//! index arithmetic over the buffer of the first value behind it, as one strided array
//! ([`StridedView`], what fusion and the aliases of requested values use) or, for a matrix
//! product's operand, as runs of strides per axis ([`OperandView`], what lowering and the
//! GEMM step read in place).

use crate::ir::{Dim, Graph, NodeIndex, Op, Shape};

/// A view of a buffer as a strided array: element `i` (multi-index) of the view is element
/// `offset + sum(i_k * strides[k])` of `base`'s row-major buffer.
#[derive(Clone, Debug, PartialEq)]
pub struct StridedView {
    /// The node whose buffer is read.
    pub base: NodeIndex,
    /// First element.
    pub offset: i64,
    /// Stride of each axis of the view, in elements.
    pub strides: Vec<Dim>,
}

/// Row-major strides of a shape.
pub fn contiguous_strides(s: &Shape) -> Vec<Dim> {
    let mut out = vec![Dim::known(1); s.rank()];
    for k in (0..s.rank().saturating_sub(1)).rev() {
        out[k] = out[k + 1].mul(&s.0[k + 1]).unwrap_or(Dim::known(0));
    }
    out
}

/// Strides of `out` viewing the same elements as `shape` with `strides`, when the reshape
/// only merges or splits axes that are contiguous with each other (numpy's no-copy rule).
pub fn reshape_strides(shape: &Shape, strides: &[Dim], out: &Shape) -> Option<Vec<Dim>> {
    let ins: Vec<(Dim, Dim)> = shape.0.iter().cloned().zip(strides.iter().cloned()).filter(|(d, _)| !d.is(1)).collect();
    let outs: Vec<usize> = (0..out.rank()).filter(|&k| !out.0[k].is(1)).collect();
    let mut result = vec![Dim::known(0); out.rank()];
    let (mut i, mut o) = (0, 0);
    while i < ins.len() && o < outs.len() {
        let (i0, o0) = (i, o);
        let mut pi = ins[i].0.clone();
        let mut po = out.0[outs[o]].clone();
        i += 1;
        o += 1;
        while pi != po {
            if po.div(&pi).is_some() && i < ins.len() {
                pi = pi.mul(&ins[i].0)?;
                i += 1;
            } else if pi.div(&po).is_some() && o < outs.len() {
                po = po.mul(&out.0[outs[o]])?;
                o += 1;
            } else {
                return None;
            }
        }
        // The merged input axes must be contiguous with each other.
        for k in i0..i - 1 {
            if ins[k].1 != ins[k + 1].1.mul(&ins[k + 1].0)? {
                return None;
            }
        }
        let mut acc = ins[i - 1].1.clone();
        for k in (o0..o).rev() {
            result[outs[k]] = acc.clone();
            acc = acc.mul(&out.0[outs[k]])?;
        }
    }
    (i == ins.len() && o == outs.len()).then_some(result)
}

/// The first non-view node behind `n`, and the views from `n` down to it (`n` first).
fn view_chain(g: &Graph, n: NodeIndex) -> (NodeIndex, Vec<NodeIndex>) {
    let mut chain = vec![n];
    let mut base = n;
    while g.node(base).op.is_view() {
        base = g.operands(base)[0];
        chain.push(base);
    }
    chain.pop();
    (base, chain)
}

/// `n` as a strided view of the first non-view node behind it, when its chain of views
/// (reshapes of contiguous data, permutes, broadcasts, slices) allows; a GEMM then reads
/// the base buffer directly instead of a copy.
pub fn strided_view(g: &Graph, n: NodeIndex) -> Option<StridedView> {
    let (base, chain) = view_chain(g, n);
    let mut shape = g.ty(base).shape.clone();
    let mut strides = contiguous_strides(&shape);
    let mut offset = 0i64;
    for &v in chain.iter().rev() {
        let out = g.ty(v).shape.clone();
        match &g.node(v).op {
            Op::Reshape { .. } => strides = reshape_strides(&shape, &strides, &out)?,
            Op::Permute { perm } => strides = perm.iter().map(|&p| strides[p].clone()).collect(),
            Op::Broadcast { .. } => {
                for (k, st) in strides.iter_mut().enumerate() {
                    if shape.0[k].is(1) && !out.0[k].is(1) {
                        *st = Dim::known(0);
                    }
                }
            }
            Op::Slice { axis, start, step, .. } => {
                offset += start * strides[*axis].as_known()?;
                strides[*axis] = strides[*axis].mul(&Dim::known(*step))?;
            }
            _ => return None,
        }
        shape = out;
    }
    Some(StridedView { base, offset, strides })
}

/// One axis of an [`OperandView`]: runs of (extent, stride), outermost first, whose extents
/// multiply to the axis's size. One run is an ordinary strided axis; several are what a
/// reshape makes of axes that were not adjacent in memory (attention's head merge,
/// `[B, H, L, D]` permuted to `[B, L, H, D]` and reshaped to `[B * L, H * D]`).
pub type AxisRuns = Vec<(Dim, Dim)>;

/// A matrix product's operand read in place from `base`: element `(i_0, .., i_r)` is at
/// `offset` plus, per axis, `i_k` written in the mixed radix of that axis's runs, each digit
/// times its stride. Every chain of views (reshape, permute, broadcast, slice) is one, so a
/// product never needs a copy of an operand that is a view.
#[derive(Clone, Debug, PartialEq)]
pub struct OperandView {
    /// The node whose buffer is read.
    pub base: NodeIndex,
    /// First element.
    pub offset: i64,
    /// Each axis's runs.
    pub axes: Vec<AxisRuns>,
}

impl OperandView {
    /// The plain view of a whole materialized value.
    pub fn contiguous(g: &Graph, n: NodeIndex) -> OperandView {
        let shape = &g.ty(n).shape;
        let axes = shape.0.iter().cloned().zip(contiguous_strides(shape)).map(|r| vec![r]).collect();
        OperandView { base: n, offset: 0, axes }
    }
}

/// `n` as an [`OperandView`] of the first non-view node behind it.
pub fn operand_view(g: &Graph, n: NodeIndex) -> Option<OperandView> {
    let (base, chain) = view_chain(g, n);
    let mut view = OperandView::contiguous(g, base);
    let mut shape = g.ty(base).shape.clone();
    for &v in chain.iter().rev() {
        let out = g.ty(v).shape.clone();
        match &g.node(v).op {
            Op::Reshape { .. } => view.axes = regroup(&view.axes, &out)?,
            Op::Permute { perm } => view.axes = perm.iter().map(|&p| view.axes[p].clone()).collect(),
            Op::Broadcast { .. } => {
                for (k, runs) in view.axes.iter_mut().enumerate() {
                    if shape.0[k].is(1) && !out.0[k].is(1) {
                        *runs = vec![(out.0[k].clone(), Dim::known(0))];
                    }
                }
            }
            Op::Slice { axis, start, step, .. } => {
                let [(_, stride)] = view.axes[*axis].as_slice() else { return None };
                view.offset += start * stride.as_known()?;
                view.axes[*axis] = vec![(out.0[*axis].clone(), stride.mul(&Dim::known(*step))?)];
            }
            _ => return None,
        }
        shape = out;
    }
    for runs in &mut view.axes {
        *runs = merge_runs(std::mem::take(runs));
    }
    Some(view)
}

/// The runs of `axes`, in order, dealt out to the axes of shape `out` (a run split where an
/// axis ends inside it).
fn regroup(axes: &[AxisRuns], out: &Shape) -> Option<Vec<AxisRuns>> {
    let mut runs: std::collections::VecDeque<(Dim, Dim)> =
        axes.iter().flatten().filter(|(e, _)| !e.is(1)).cloned().collect();
    let mut result = Vec::with_capacity(out.rank());
    for size in &out.0 {
        let mut need = size.clone();
        let mut mine = Vec::new();
        while !need.is(1) {
            let (e, s) = runs.pop_front()?;
            if let Some(rest) = need.div(&e) {
                mine.push((e, s));
                need = rest;
            } else {
                // The axis ends inside this run: its outer digits are this axis's.
                let inner = e.div(&need)?;
                mine.push((need.clone(), s.mul(&inner)?));
                runs.push_front((inner, s));
                need = Dim::known(1);
            }
        }
        if mine.is_empty() {
            mine.push((Dim::known(1), Dim::known(0)));
        }
        result.push(mine);
    }
    runs.is_empty().then_some(result)
}

/// Adjacent runs that are contiguous with each other as one run; extent-1 runs dropped.
fn merge_runs(runs: AxisRuns) -> AxisRuns {
    let mut out: AxisRuns = Vec::new();
    for (e, s) in runs.into_iter().filter(|(e, _)| !e.is(1)) {
        if let Some((pe, ps)) = out.last_mut() {
            if s.mul(&e).is_some_and(|x| x == *ps) {
                *pe = pe.mul(&e).expect("extents multiply");
                *ps = s;
                continue;
            }
        }
        out.push((e, s));
    }
    if out.is_empty() {
        out.push((Dim::known(1), Dim::known(0)));
    }
    out
}
