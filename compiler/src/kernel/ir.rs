//! The kernel IR: a typed description of one generated kernel, from which every renderer
//! (C now, CUDA next) prints source. Values and index arithmetic share one hash-consed
//! expression arena, so common subexpressions (a shared index, a value read twice) exist once.
//!
//! A kernel has an iteration space of independent *lanes* (a flat index `lane` in
//! `0..lanes`) that a backend may run in any order or in parallel; a reduction or scan adds
//! a sequential inner loop over `inner` steps per lane (on a GPU, the place where threads
//! of a block cooperate). Every store writes element `lane` (pointwise, reduction) or
//! `lane`/`step` positions computed by index expressions (scan) of a row-major buffer.

use crate::ir::{BinaryOp, DType, RandomDist, ReduceOp, UnaryOp};
use std::collections::HashMap;

/// Index of an expression in a kernel's arena.
pub type ExprId = u32;

/// Types of kernel expressions: the IR's element types plus 64-bit index arithmetic.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum KType {
    /// An element type of a buffer.
    Elem(DType),
    /// A signed 64-bit index.
    Index,
}

/// Integer operations on indices.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum IndexOp {
    /// `a + b`.
    Add,
    /// `a - b`.
    Sub,
    /// `a * b`.
    Mul,
    /// `a / b` for `a >= 0`, `b > 0`.
    Div,
    /// `a % b` for `a >= 0`, `b > 0`.
    Rem,
    /// Smaller of the two.
    Min,
    /// Larger of the two.
    Max,
}

/// One expression.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Expr {
    /// A constant (bits of an f64, converted to the expression's type).
    Const(u64),
    /// The lane index (the outer lane index in a split pointwise kernel).
    Lane,
    /// The inner lane index of a split pointwise kernel.
    LaneInner,
    /// The step of the sequential inner loop (reductions and scans).
    Step,
    /// The state of a scan with several recurrences per lane.
    State,
    /// The run-time value of symbolic size number `k` (e.g. the batch).
    Size(u32),
    /// Element `index` of buffer `buf`.
    Load {
        /// Buffer parameter number.
        buf: u32,
        /// Index expression.
        index: ExprId,
    },
    /// Index arithmetic.
    Index(IndexOp, ExprId, ExprId),
    /// Elementwise op of one value.
    Unary(UnaryOp, ExprId),
    /// Elementwise op of two values (also comparisons of indices).
    Binary(BinaryOp, ExprId, ExprId),
    /// `c ? a : b`.
    Select(ExprId, ExprId, ExprId),
    /// Conversion to the expression's type.
    Cast(ExprId),
    /// Counter-based random number `index` of the stream of `seed` (mixed with the run seed).
    Random {
        /// Distribution.
        dist: RandomDist,
        /// The op's own seed.
        seed: u64,
        /// Counter.
        index: ExprId,
    },
    /// The running value of a scan (`h[t-1]`) inside its step.
    Carry,
    /// The result of reduction phase `j` of a row kernel.
    Acc(u32),
}

/// An expression with its type.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Node {
    /// What it computes.
    pub expr: Expr,
    /// Its type.
    pub ty: KType,
}

/// Role of a buffer parameter.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Access {
    /// Read only.
    Read,
    /// Written (every element, exactly once).
    Write,
    /// Read, then written at the same element (an optimizer's state, updated in place).
    Update,
}

/// A buffer parameter of a kernel.
#[derive(Clone, Debug, PartialEq)]
pub struct BufParam {
    /// Element type.
    pub dtype: DType,
    /// Read or written.
    pub access: Access,
    /// The graph value it holds, for comments and the inspector.
    pub label: String,
}

/// What a kernel does per lane.
#[derive(Clone, Debug, PartialEq)]
pub enum Body {
    /// `out_k[lane] = value_k` for each store.
    Pointwise {
        /// (buffer, value) pairs.
        stores: Vec<(u32, ExprId)>,
        /// `Some(c)`: lanes run as `Lane` (the outer lanes) times `LaneInner` (`0..c`, the
        /// innermost axis), element `Lane * c + LaneInner`. Broadcasts along the inner axis
        /// then index by `LaneInner` directly, without a division, and a CPU vectorizes the
        /// inner loop; a GPU maps it to neighbouring threads.
        split: Option<i64>,
    },
    /// A row kernel: per lane, reductions over `inner` steps run one after another (each
    /// may use the results of the earlier ones through `Expr::Acc`), then a final loop over
    /// the steps stores element values, and lane values are stored once.
    Row {
        /// Steps per lane.
        inner: ExprId,
        /// Reductions in order: phase `j` produces `Expr::Acc(j)`.
        phases: Vec<(ReduceOp, ExprId)>,
        /// (buffer, index, value) stored at every step after the reductions.
        elem_stores: Vec<(u32, ExprId, ExprId)>,
        /// (buffer, value) stored at element `lane`.
        lane_stores: Vec<(u32, ExprId)>,
    },
    /// A linear recurrence per lane over `inner` steps (in reverse when asked), with
    /// `states` independent recurrences per lane (Mamba's state axis): at each step, for each
    /// state, `h = a * h + b` (`Expr::Carry` is the new `h`), the state stores run, and
    /// each of `reduces` folds a value over the states into `Expr::Acc(j)` for the step
    /// stores.
    Scan {
        /// Steps per lane.
        inner: ExprId,
        /// Run from the last step to the first.
        reverse: bool,
        /// Recurrences per lane (a known size; 1 for a plain scan).
        states: i64,
        /// Decay `a` at this lane, step and state.
        a: ExprId,
        /// Input `b` at this lane, step and state.
        b: ExprId,
        /// (buffer, index, value) stored for every state at every step.
        state_stores: Vec<(u32, ExprId, ExprId)>,
        /// Reductions over the states at each step, independent of each other: the
        /// epilogue's `sum_n h C`; in a backward scan also the state sums of gradients.
        reduces: Vec<(ReduceOp, ExprId)>,
        /// (buffer, index, value) stored once per step, after the states.
        step_stores: Vec<(u32, ExprId, ExprId)>,
        /// Reductions over the steps, one accumulator per state, folded as the lane steps
        /// and stored once after the last step: (op, value, buffer, index by lane and
        /// state). A gradient summed over the steps (Mamba's A) never lives in memory whole.
        step_reduces: Vec<(ReduceOp, ExprId, u32, ExprId)>,
    },
    /// `out[ids[lane / row] * row + lane % row] += value` for lanes in order (scatter-add).
    ScatterAdd {
        /// Row of the output each lane adds into.
        row: ExprId,
        /// Offset within the row.
        col: ExprId,
        /// Row length of the output.
        row_len: ExprId,
        /// Rows of the output.
        rows: ExprId,
        /// Value added.
        value: ExprId,
        /// Output buffer (zeroed first).
        out: u32,
    },
}

/// One generated kernel.
#[derive(Clone, Debug, PartialEq)]
pub struct Kernel {
    /// Unique name within a program (`k12`).
    pub name: String,
    /// Buffer parameters.
    pub bufs: Vec<BufParam>,
    /// Number of independent lanes.
    pub lanes: ExprId,
    /// What each lane does.
    pub body: Body,
    /// Expression arena (index = `ExprId`).
    pub exprs: Vec<Node>,
}

/// Builds a kernel's hash-consed expression arena, simplifying index arithmetic with the
/// known ranges of indices (so `(a * 16 + s) % 16` with `0 <= s < 16` is `s`).
#[derive(Default)]
pub struct Builder {
    /// The arena.
    pub exprs: Vec<Node>,
    index: HashMap<Node, ExprId>,
    /// Inclusive range of index expressions whose bounds are known.
    ranges: HashMap<ExprId, (i64, i64)>,
}

impl Builder {
    /// The id of `expr : ty`, adding it if new.
    pub fn add(&mut self, expr: Expr, ty: KType) -> ExprId {
        let node = Node { expr, ty };
        if let Some(&id) = self.index.get(&node) {
            return id;
        }
        let id = self.exprs.len() as ExprId;
        if matches!(node.expr, Expr::Size(_)) {
            // A size is at least 0; its upper bound is known only at run time.
            self.ranges.insert(id, (0, i64::MAX));
        }
        self.exprs.push(node.clone());
        self.index.insert(node, id);
        id
    }
    /// Declares that index `e` lies in `lo..=hi` (loop variables with known extents).
    pub fn set_range(&mut self, e: ExprId, lo: i64, hi: i64) {
        self.ranges.insert(e, (lo, hi));
    }
    /// The known range of an index expression.
    pub fn range(&self, e: ExprId) -> Option<(i64, i64)> {
        if let Some(c) = self.as_const(e) {
            return Some((c, c));
        }
        self.ranges.get(&e).copied()
    }
    /// Type of an expression.
    pub fn ty(&self, e: ExprId) -> KType {
        self.exprs[e as usize].ty
    }
    /// The expression itself.
    pub fn get(&self, e: ExprId) -> &Expr {
        &self.exprs[e as usize].expr
    }
    /// A constant index.
    pub fn idx(&mut self, v: i64) -> ExprId {
        self.add(Expr::Const((v as f64).to_bits()), KType::Index)
    }
    /// A constant value of element type `dt`.
    pub fn value(&mut self, v: f64, dt: DType) -> ExprId {
        self.add(Expr::Const(v.to_bits()), KType::Elem(dt))
    }
    /// The value of a constant index.
    pub fn as_const(&self, e: ExprId) -> Option<i64> {
        match (self.get(e), self.ty(e)) {
            (Expr::Const(bits), KType::Index) => Some(f64::from_bits(*bits) as i64),
            _ => None,
        }
    }
    /// Index arithmetic with constant folding and the identities that keep indices short.
    pub fn iop(&mut self, op: IndexOp, a: ExprId, b: ExprId) -> ExprId {
        if let (Some(x), Some(y)) = (self.as_const(a), self.as_const(b)) {
            let v = match op {
                IndexOp::Add => x + y,
                IndexOp::Sub => x - y,
                IndexOp::Mul => x * y,
                IndexOp::Div => x.div_euclid(y),
                IndexOp::Rem => x.rem_euclid(y),
                IndexOp::Min => x.min(y),
                IndexOp::Max => x.max(y),
            };
            return self.idx(v);
        }
        match (op, self.as_const(a), self.as_const(b)) {
            (IndexOp::Add, Some(0), _) => return b,
            (IndexOp::Add | IndexOp::Sub, _, Some(0)) => return a,
            (IndexOp::Mul, Some(1), _) => return b,
            (IndexOp::Mul | IndexOp::Div, _, Some(1)) => return a,
            (IndexOp::Mul, Some(0), _) | (IndexOp::Mul, _, Some(0)) => return self.idx(0),
            (IndexOp::Rem, _, Some(1)) => return self.idx(0),
            _ => {}
        }
        if let (IndexOp::Div | IndexOp::Rem, Some(c)) = (op, self.as_const(b)) {
            if c > 0 {
                if let Some(e) = self.simplify_divmod(op, a, c) {
                    return e;
                }
                // (x / a) / c is x / (a * c).
                if op == IndexOp::Div {
                    if let Expr::Index(IndexOp::Div, x, k) = *self.get(a) {
                        if let Some(kc) = self.as_const(k).filter(|&kc| kc > 0) {
                            let kk = self.idx(kc.saturating_mul(c));
                            return self.iop(IndexOp::Div, x, kk);
                        }
                    }
                }
            }
        }
        if op == IndexOp::Add {
            // (y % b) * c + (y / b) * (b * c) is y * c: what re-linearising a delinearised
            // index leaves (a reshape there and back).
            let (mut terms, k) = self.linear_form(a);
            let (tb, kb) = self.linear_form(b);
            terms.extend(tb);
            if let Some(t) = self.recombine(terms) {
                return self.build(&t, k + kb);
            }
        }
        let e = self.add(Expr::Index(op, a, b), KType::Index);
        if let (Some((alo, ahi)), Some((blo, bhi))) = (self.range(a), self.range(b)) {
            let r = match op {
                IndexOp::Add => Some((alo.saturating_add(blo), ahi.saturating_add(bhi))),
                IndexOp::Sub => Some((alo.saturating_sub(bhi), ahi.saturating_sub(blo))),
                IndexOp::Mul if alo >= 0 && blo >= 0 => Some((alo.saturating_mul(blo), ahi.saturating_mul(bhi))),
                IndexOp::Div if alo >= 0 && blo > 0 => Some((alo / bhi, ahi / blo)),
                IndexOp::Min => Some((alo.min(blo), ahi.min(bhi))),
                IndexOp::Max => Some((alo.max(blo), ahi.max(bhi))),
                _ => None,
            };
            if let Some((lo, hi)) = r {
                self.ranges.insert(e, (lo, hi));
            }
        }
        if let (IndexOp::Rem, Some(c)) = (op, self.as_const(b)) {
            if c > 0 && self.range(a).is_some_and(|(lo, _)| lo >= 0) {
                self.ranges.insert(e, (0, c - 1));
            }
        }
        e
    }

    /// `x / c` and `x % c` for a constant `c > 0` when the range of `x`, or its form
    /// `q * c + r` with `0 <= r < c`, decides them.
    fn simplify_divmod(&mut self, op: IndexOp, x: ExprId, c: i64) -> Option<ExprId> {
        if let Some((lo, hi)) = self.range(x) {
            if lo >= 0 && hi < c {
                return Some(if op == IndexOp::Rem { x } else { self.idx(0) });
            }
            if lo >= 0 && op == IndexOp::Div && lo / c == hi / c {
                return Some(self.idx(lo / c));
            }
        }
        // x as a sum of terms coef * atom + constant: the terms whose coefficients are
        // multiples of c give the quotient; the rest, if they stay in 0..c, the remainder.
        let (terms, konst) = self.linear_form(x);
        if konst < 0 {
            return None;
        }
        let (mut q_terms, mut r_terms) = (Vec::new(), Vec::new());
        let (mut r_lo, mut r_hi) = (konst % c, konst % c);
        for &(atom, coef) in &terms {
            let (lo, hi) = self.range(atom)?;
            if lo < 0 || coef < 0 {
                return None;
            }
            if coef % c == 0 {
                q_terms.push((atom, coef / c));
            } else {
                // An overflowing bound (a term bounded only at run time) is out of 0..c.
                r_lo = coef.checked_mul(lo).and_then(|l| r_lo.checked_add(l)).unwrap_or(i64::MAX);
                r_hi = coef.checked_mul(hi).and_then(|h| r_hi.checked_add(h)).unwrap_or(i64::MAX);
                r_terms.push((atom, coef));
            }
        }
        if r_lo >= 0 && r_hi < c {
            return Some(if op == IndexOp::Rem {
                self.build(&r_terms, konst % c)
            } else {
                self.build(&q_terms, konst / c)
            });
        }
        self.split_by_common_factor(op, &terms, konst, c)
    }

    /// `(g * a + r) / (g * m)` is `a / m` and `(g * a + r) % (g * m)` is `(a % m) * g + r`
    /// when `0 <= r < g` and `a >= 0`: a flat index `i * 256 + step` divided by a multiple
    /// of 256, with `step < 256`, for any `i` (even one bounded only at run time).
    fn split_by_common_factor(&mut self, op: IndexOp, terms: &[(ExprId, i64)], konst: i64, c: i64) -> Option<ExprId> {
        let mut factors: Vec<i64> = terms.iter().map(|t| t.1).filter(|&g| g > 1 && g < c && c % g == 0).collect();
        factors.sort_unstable_by(|a, b| b.cmp(a));
        factors.dedup();
        'factor: for g in factors {
            let (mut big, mut small) = (Vec::new(), Vec::new());
            let (mut lo, mut hi) = (konst % g, konst % g);
            for &(atom, coef) in terms {
                let (alo, ahi) = self.range(atom)?;
                if alo < 0 || coef < 0 {
                    return None;
                }
                if coef % g == 0 {
                    big.push((atom, coef / g));
                } else {
                    let (Some(l), Some(h)) = (coef.checked_mul(alo), coef.checked_mul(ahi)) else { continue 'factor };
                    lo += l;
                    hi = match hi.checked_add(h) {
                        Some(h) => h,
                        None => continue 'factor,
                    };
                    small.push((atom, coef));
                }
            }
            if lo < 0 || hi >= g {
                continue;
            }
            let a = self.build(&big, konst / g);
            let m = self.idx(c / g);
            if op == IndexOp::Div {
                return Some(self.iop(IndexOp::Div, a, m));
            }
            let am = self.iop(IndexOp::Rem, a, m);
            let gx = self.idx(g);
            let scaled = self.iop(IndexOp::Mul, am, gx);
            let r = self.build(&small, konst % g);
            return Some(self.iop(IndexOp::Add, scaled, r));
        }
        None
    }

    /// `x` as `(base, divisor)` with `x = base / divisor` (nested divisions by constants merged).
    fn div_parts(&self, x: ExprId) -> (ExprId, i64) {
        match *self.get(x) {
            Expr::Index(IndexOp::Div, y, k) if self.as_const(k).is_some_and(|kc| kc > 0) => {
                let (base, d) = self.div_parts(y);
                (base, d.saturating_mul(self.as_const(k).expect("const")))
            }
            _ => (x, 1),
        }
    }

    /// Merges term pairs `(u % b, c)` and `(u / b, b * c)` into `(u, c)`; `None` if none merge.
    fn recombine(&self, mut terms: Vec<(ExprId, i64)>) -> Option<Vec<(ExprId, i64)>> {
        let mut changed = false;
        'again: loop {
            for i in 0..terms.len() {
                let Expr::Index(IndexOp::Rem, u, bx) = *self.get(terms[i].0) else { continue };
                let Some(b) = self.as_const(bx).filter(|&b| b > 0) else { continue };
                let (ubase, ua) = self.div_parts(u);
                for j in 0..terms.len() {
                    if i == j || terms[j].1 != terms[i].1.saturating_mul(b) {
                        continue;
                    }
                    if !matches!(self.get(terms[j].0), Expr::Index(IndexOp::Div, ..)) {
                        continue;
                    }
                    let (vbase, vk) = self.div_parts(terms[j].0);
                    if vbase == ubase && vk == ua.saturating_mul(b) {
                        let coef = terms[i].1;
                        let (hi, lo) = (i.max(j), i.min(j));
                        terms.remove(hi);
                        terms.remove(lo);
                        match terms.iter_mut().find(|t| t.0 == u) {
                            Some(t) => t.1 += coef,
                            None => terms.push((u, coef)),
                        }
                        changed = true;
                        continue 'again;
                    }
                }
            }
            break;
        }
        changed.then_some(terms)
    }

    /// `e` as `sum(coef * atom) + constant`, looking through additions, subtractions and
    /// multiplications by constants.
    fn linear_form(&self, e: ExprId) -> (Vec<(ExprId, i64)>, i64) {
        let mut terms: Vec<(ExprId, i64)> = Vec::new();
        let mut konst = 0i64;
        let mut stack = vec![(e, 1i64)];
        while let Some((x, k)) = stack.pop() {
            if let Some(c) = self.as_const(x) {
                konst = konst.saturating_add(c.saturating_mul(k));
                continue;
            }
            match *self.get(x) {
                Expr::Index(IndexOp::Add, a, b) => {
                    stack.push((a, k));
                    stack.push((b, k));
                }
                Expr::Index(IndexOp::Sub, a, b) => {
                    stack.push((a, k));
                    stack.push((b, -k));
                }
                Expr::Index(IndexOp::Mul, a, b) if self.as_const(b).is_some() => {
                    stack.push((a, k.saturating_mul(self.as_const(b).expect("const"))))
                }
                Expr::Index(IndexOp::Mul, a, b) if self.as_const(a).is_some() => {
                    stack.push((b, k.saturating_mul(self.as_const(a).expect("const"))))
                }
                _ => match terms.iter_mut().find(|t| t.0 == x) {
                    Some(t) => t.1 += k,
                    None => terms.push((x, k)),
                },
            }
        }
        terms.retain(|t| t.1 != 0);
        terms.sort();
        (terms, konst)
    }

    /// The expression `sum(coef * atom) + konst`.
    fn build(&mut self, terms: &[(ExprId, i64)], konst: i64) -> ExprId {
        let mut e = self.idx(konst);
        for &(atom, coef) in terms {
            let c = self.idx(coef);
            let t = self.iop(IndexOp::Mul, atom, c);
            e = self.iop(IndexOp::Add, e, t);
        }
        e
    }
}

impl Kernel {
    /// The value of index expression `e` when every symbolic size is `sizes[k]`; `None` for
    /// expressions that depend on loop variables or data.
    pub fn eval_index(&self, e: ExprId, sizes: &[i64]) -> Option<i64> {
        self.eval_at(e, sizes, None)
    }

    /// As [`Kernel::eval_index`], with the lane and step set to `vars` when given.
    pub fn eval_at(&self, e: ExprId, sizes: &[i64], vars: Option<(i64, i64)>) -> Option<i64> {
        match &self.exprs[e as usize].expr {
            Expr::Const(bits) => Some(f64::from_bits(*bits) as i64),
            Expr::Size(k) => sizes.get(*k as usize).copied(),
            Expr::Lane => vars.map(|v| v.0),
            Expr::LaneInner => None,
            Expr::Step => vars.map(|v| v.1),
            Expr::Index(op, a, b) => {
                let (x, y) = (self.eval_at(*a, sizes, vars)?, self.eval_at(*b, sizes, vars)?);
                Some(match op {
                    IndexOp::Add => x.checked_add(y)?,
                    IndexOp::Sub => x.checked_sub(y)?,
                    IndexOp::Mul => x.checked_mul(y)?,
                    IndexOp::Div => x.checked_div(y)?,
                    IndexOp::Rem => x.checked_rem(y)?,
                    IndexOp::Min => x.min(y),
                    IndexOp::Max => x.max(y),
                })
            }
            _ => None,
        }
    }

    /// Whether a row kernel is a lone reduction whose loads put neighbouring lanes at
    /// neighbouring addresses and consecutive steps far apart (the gradient of a broadcast,
    /// summed over outer axes). Such a reduction reads memory well only when neighbouring
    /// lanes advance through the steps together: a CPU tiles lanes, a GPU maps them to
    /// neighbouring threads.
    pub fn lane_major(&self) -> bool {
        let Body::Row { phases, elem_stores, .. } = &self.body else { return false };
        if phases.len() != 1 || !elem_stores.is_empty() || matches!(phases[0].0, ReduceOp::ArgMax | ReduceOp::ArgMin) {
            return false;
        }
        let sizes = [8i64; 16];
        let used = super::analysis::needed(self, &[phases[0].1]);
        let (mut lane_major, mut step_major) = (0, 0);
        for (i, n) in self.exprs.iter().enumerate() {
            let Expr::Load { index, .. } = n.expr else { continue };
            if !used[i] {
                continue;
            }
            let at = |lane, step| self.eval_at(index, &sizes, Some((lane, step)));
            let (Some(base), Some(next_lane), Some(next_step)) = (at(0, 0), at(1, 0), at(0, 1)) else { continue };
            let (dl, ds) = (next_lane - base, next_step - base);
            // A load the same for every lane of a tile (dl == 0) costs the same either way.
            if dl.abs() == 1 && ds.abs() != 1 {
                lane_major += 1;
            } else if ds.abs() == 1 && dl != 0 {
                step_major += 1;
            }
        }
        lane_major > 0 && step_major == 0
    }

    /// Lanes, inner steps and (for scans) states per lane, with symbolic sizes set to `size`.
    pub fn launch_shape(&self, size: i64) -> (i64, i64, i64) {
        let sizes = vec![size; 16];
        let lanes = self.eval_index(self.lanes, &sizes).unwrap_or(0);
        let (inner, states) = match &self.body {
            Body::Row { inner, .. } => (self.eval_index(*inner, &sizes).unwrap_or(0), 1),
            Body::Scan { inner, states, .. } => (self.eval_index(*inner, &sizes).unwrap_or(0), *states),
            _ => (1, 1),
        };
        (lanes, inner, states)
    }
}

impl std::fmt::Display for Kernel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(f, "kernel {} (lanes t{})", self.name, self.lanes)?;
        for (i, b) in self.bufs.iter().enumerate() {
            writeln!(f, "  buf b{i}: {} {:?}  {}", b.dtype, b.access, b.label)?;
        }
        for (i, n) in self.exprs.iter().enumerate() {
            let ty = match n.ty {
                KType::Elem(d) => d.name(),
                KType::Index => "idx",
            };
            let e = match &n.expr {
                Expr::Const(bits) => format!("const {}", f64::from_bits(*bits)),
                other => format!("{other:?}"),
            };
            writeln!(f, "  t{i}: {ty} = {e}")?;
        }
        writeln!(f, "  body: {:?}", self.body)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Evaluates index expressions with values for the loop variables.
    fn eval(b: &Builder, e: ExprId, lane: i64, step: i64) -> i64 {
        match b.get(e) {
            Expr::Const(bits) => f64::from_bits(*bits) as i64,
            Expr::Lane => lane,
            Expr::Step => step,
            Expr::Index(op, x, y) => {
                let (x, y) = (eval(b, *x, lane, step), eval(b, *y, lane, step));
                match op {
                    IndexOp::Add => x + y,
                    IndexOp::Sub => x - y,
                    IndexOp::Mul => x * y,
                    IndexOp::Div => x / y,
                    IndexOp::Rem => x % y,
                    IndexOp::Min => x.min(y),
                    IndexOp::Max => x.max(y),
                }
            }
            other => panic!("not an index: {other:?}"),
        }
    }

    #[test]
    fn div_and_rem_simplify_with_ranges_and_stay_exact() {
        let mut b = Builder::default();
        let lane = b.add(Expr::Lane, KType::Index);
        b.set_range(lane, 0, 999);
        let step = b.add(Expr::Step, KType::Index);
        b.set_range(step, 0, 15);
        let c16 = b.idx(16);
        let c48 = b.idx(48);
        let m = b.iop(IndexOp::Mul, lane, c48);
        let x = b.iop(IndexOp::Add, m, step); // lane * 48 + step
        let r = b.iop(IndexOp::Rem, x, c16);
        let q = b.iop(IndexOp::Div, x, c16);
        assert_eq!(r, step, "(lane*48 + step) % 16 is step");
        assert!(matches!(b.get(q), Expr::Index(IndexOp::Mul, ..)), "(lane*48 + step) / 16 is lane*3");
        let small = b.iop(IndexOp::Rem, step, c16);
        assert_eq!(small, step);
        let zero = b.iop(IndexOp::Div, step, c16);
        assert_eq!(b.as_const(zero), Some(0));
        // Not simplifiable: lane has no useful bound against 7.
        let c7 = b.idx(7);
        let y = b.iop(IndexOp::Rem, x, c7);
        for l in [0, 1, 17, 999] {
            for s in 0..16 {
                let want = l * 48 + s;
                assert_eq!(eval(&b, r, l, s), want % 16);
                assert_eq!(eval(&b, q, l, s), want / 16);
                assert_eq!(eval(&b, y, l, s), want % 7);
            }
        }
    }

    #[test]
    fn a_common_factor_splits_division_by_its_multiple() {
        let mut b = Builder::default();
        let lane = b.add(Expr::Lane, KType::Index);
        b.set_range(lane, 0, i64::MAX / 1024); // bounded only at run time
        let step = b.add(Expr::Step, KType::Index);
        b.set_range(step, 0, 255);
        let (c256, c16384, c192) = (b.idx(256), b.idx(16384), b.idx(192));
        let m = b.iop(IndexOp::Mul, lane, c256);
        let x = b.iop(IndexOp::Add, m, step); // lane * 256 + step
        let q = b.iop(IndexOp::Div, x, c16384);
        let r = b.iop(IndexOp::Rem, x, c16384);
        assert!(matches!(b.get(q), Expr::Index(IndexOp::Div, l, _) if *l == lane), "lane / 64: {:?}", b.get(q));
        // 192 is not a multiple of 256: stays as it is, and exact.
        let y = b.iop(IndexOp::Div, x, c192);
        for l in [0, 1, 63, 64, 65, 1000, 123_457] {
            for s in [0, 1, 17, 255] {
                let want = l * 256 + s;
                assert_eq!(eval(&b, q, l, s), want / 16384);
                assert_eq!(eval(&b, r, l, s), want % 16384);
                assert_eq!(eval(&b, y, l, s), want / 192);
            }
        }
    }

    #[test]
    fn nested_linear_forms_simplify() {
        let mut b = Builder::default();
        let lane = b.add(Expr::Lane, KType::Index); // plays b, unbounded above
        b.set_range(lane, 0, i64::MAX);
        let step = b.add(Expr::Step, KType::Index); // plays t in 0..16
        b.set_range(step, 0, 15);
        let st = b.add(Expr::State, KType::Index); // plays s in 0..16
        b.set_range(st, 0, 15);
        let c16 = b.idx(16);
        let c256 = b.idx(256);
        let bt = b.iop(IndexOp::Mul, lane, c16);
        let bt = b.iop(IndexOp::Add, bt, step);
        let x = b.iop(IndexOp::Mul, bt, c16);
        let x = b.iop(IndexOp::Add, x, st); // (b*16 + t)*16 + s
        assert_eq!(b.iop(IndexOp::Div, x, c256), lane);
        assert_eq!(b.iop(IndexOp::Rem, x, c16), st);
        let q = b.iop(IndexOp::Div, x, c16);
        assert_eq!(b.iop(IndexOp::Rem, q, c16), step);
        let r = b.iop(IndexOp::Rem, x, c256);
        assert!(!matches!(b.get(r), Expr::Index(IndexOp::Rem, ..)), "no % left: {:?}", b.get(r));
    }

    #[test]
    fn delinearise_then_linearise_is_the_identity() {
        let mut b = Builder::default();
        let lane = b.add(Expr::Lane, KType::Index);
        b.set_range(lane, 0, i64::MAX);
        let (c512, c64, c32768) = (b.idx(512), b.idx(64), b.idx(32768));
        let d = b.iop(IndexOp::Rem, lane, c512);
        let q = b.iop(IndexOp::Div, lane, c512);
        let n = b.iop(IndexOp::Rem, q, c64);
        let bb = b.iop(IndexOp::Div, lane, c32768);
        let t = b.iop(IndexOp::Mul, bb, c64);
        let t = b.iop(IndexOp::Add, t, n);
        let t = b.iop(IndexOp::Mul, t, c512);
        let lin = b.iop(IndexOp::Add, t, d);
        assert_eq!(lin, lane, "((l/32768)*64 + (l/512)%64)*512 + l%512 is l");
    }
}
