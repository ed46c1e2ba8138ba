//! Renderers: kernel IR to source text. The expression printing is shared; a target
//! language overrides a few spellings ([`Dialect`]), as in tinygrad's renderers, so what is
//! checked on the CPU covers most of what runs on the GPU.

pub mod c;

use crate::ir::{BinaryOp, DType, RandomDist, UnaryOp};
use crate::kernel::ir::{Body, Expr, ExprId, IndexOp, KType, Kernel};
use std::fmt::Write;

/// The spellings that differ between target languages.
pub trait Dialect {
    /// The type name of a kernel type.
    fn ty(&self, t: KType) -> &'static str;
    /// A float math function (`expf` in C, `__expf` or `expf` in CUDA).
    fn math(&self, f: &'static str) -> String {
        format!("{f}f")
    }
    /// A function of this dialect's own for an f32 unary op (a vectorizable one where the
    /// math library's is a scalar call); `None` uses [`Dialect::math`].
    fn fast_unary(&self, _u: UnaryOp) -> Option<&'static str> {
        None
    }
}

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

fn float_lit(v: f64) -> String {
    if v.is_nan() {
        "NAN".into()
    } else if v.is_infinite() {
        if v > 0.0 {
            "INFINITY".into()
        } else {
            "(-INFINITY)".into()
        }
    } else {
        let f = v as f32;
        if f.is_infinite() {
            // Finite in f64 but beyond f32: the f32 value the interpreter would store.
            if f > 0.0 {
                "INFINITY".into()
            } else {
                "(-INFINITY)".into()
            }
        } else {
            format!("{:e}f", f)
        }
    }
}

/// The right-hand side of expression `id`, with operands named `t<k>`.
pub fn expr_text(d: &dyn Dialect, k: &Kernel, id: ExprId) -> String {
    let node = &k.exprs[id as usize];
    let t = |e: &ExprId| format!("t{e}");
    let kty = |e: &ExprId| k.exprs[*e as usize].ty;
    match &node.expr {
        Expr::Const(bits) => {
            let v = f64::from_bits(*bits);
            match node.ty {
                KType::Elem(DType::F32) => float_lit(v),
                KType::Elem(DType::I32) => format!("{}", v as i32),
                KType::Elem(DType::Bool) => format!("{}", u8::from(v != 0.0)),
                KType::Index => format!("{}LL", v as i64),
            }
        }
        Expr::Lane => "lane".into(),
        Expr::LaneInner => "lane_in".into(),
        Expr::Step => "step".into(),
        Expr::State => "st".into(),
        Expr::Size(s) => format!("sizes[{s}]"),
        Expr::Carry => "h[st]".into(),
        Expr::Acc(j) => format!("r{j}"),
        Expr::Load { buf, index } => format!("b{buf}[{}]", t(index)),
        Expr::Index(op, a, b) => match op {
            IndexOp::Add => format!("{} + {}", t(a), t(b)),
            IndexOp::Sub => format!("{} - {}", t(a), t(b)),
            IndexOp::Mul => format!("{} * {}", t(a), t(b)),
            IndexOp::Div => format!("{} / {}", t(a), t(b)),
            IndexOp::Rem => format!("{} % {}", t(a), t(b)),
            IndexOp::Min => format!("{0} < {1} ? {0} : {1}", t(a), t(b)),
            IndexOp::Max => format!("{0} > {1} ? {0} : {1}", t(a), t(b)),
        },
        Expr::Unary(u, a) => {
            let float = kty(a) == KType::Elem(DType::F32);
            match (u, float) {
                (UnaryOp::Neg, _) => format!("-{}", t(a)),
                (UnaryOp::Not, _) => format!("!{}", t(a)),
                (UnaryOp::Abs, false) => format!("{0} < 0 ? -{0} : {0}", t(a)),
                (UnaryOp::Abs, true) => format!("{}({})", d.math("fabs"), t(a)),
                (UnaryOp::Rsqrt, _) => format!("1.0f / {}({})", d.math("sqrt"), t(a)),
                (UnaryOp::Recip, _) => format!("1.0f / {}", t(a)),
                (u, true) if d.fast_unary(*u).is_some() => {
                    format!("{}({})", d.fast_unary(*u).unwrap_or_default(), t(a))
                }
                (u, _) => format!("{}({})", d.math(u.name()), t(a)),
            }
        }
        Expr::Binary(op, a, b) => {
            let float = kty(a) == KType::Elem(DType::F32);
            let int = kty(a) == KType::Elem(DType::I32);
            let sym = match op {
                BinaryOp::Add => "+",
                BinaryOp::Sub => "-",
                BinaryOp::Mul => "*",
                BinaryOp::Div if int => return format!("muse_idiv({}, {})", t(a), t(b)),
                BinaryOp::Div => "/",
                BinaryOp::Max if float => return format!("muse_fmax({}, {})", t(a), t(b)),
                BinaryOp::Min if float => return format!("muse_fmin({}, {})", t(a), t(b)),
                BinaryOp::Max => return format!("{0} > {1} ? {0} : {1}", t(a), t(b)),
                BinaryOp::Min => return format!("{0} < {1} ? {0} : {1}", t(a), t(b)),
                BinaryOp::Lt => "<",
                BinaryOp::Le => "<=",
                BinaryOp::Gt => ">",
                BinaryOp::Ge => ">=",
                BinaryOp::Eq => "==",
                BinaryOp::Ne => "!=",
                BinaryOp::And => "&&",
                BinaryOp::Or => "||",
            };
            format!("{} {sym} {}", t(a), t(b))
        }
        Expr::Select(c, a, b) => format!("{} ? {} : {}", t(c), t(a), t(b)),
        Expr::Cast(a) => {
            let from = kty(a);
            match (from, node.ty) {
                (KType::Elem(DType::F32), KType::Elem(DType::I32)) => format!("muse_f2i({})", t(a)),
                (KType::Elem(DType::F32), KType::Index) => format!("(int64_t)muse_f2i({})", t(a)),
                (_, KType::Elem(DType::Bool)) => format!("{} != 0", t(a)),
                (_, to) => format!("({}){}", d.ty(to), t(a)),
            }
        }
        Expr::Random { dist, seed, index } => {
            let f = if *dist == RandomDist::Uniform { "muse_uniform" } else { "muse_normal" };
            format!("(float){f}(muse_key(seed, {seed}ULL), (uint64_t){})", t(index))
        }
    }
}

/// Declarations `const T tK = ...;` of the used expressions at `level`, in arena order.
pub fn declare(d: &dyn Dialect, k: &Kernel, lv: &[Level], used: &[bool], level: Level, indent: &str, out: &mut String) {
    for (i, n) in k.exprs.iter().enumerate() {
        if used[i] && lv[i] == level {
            let _ = writeln!(out, "{indent}const {} t{i} = {};", d.ty(n.ty), expr_text(d, k, i as ExprId));
        }
    }
}

/// Index operations a select's branch must compute of its own before it counts as worth
/// skipping (a concatenation's part, a convolution's tap: offsets, bounds, clamps).
const LAZY_INDEX_OPS: usize = 4;

/// As [`declare`], but a select whose branches need loads and index arithmetic no one else
/// uses (a concatenation's parts, a convolution's taps) becomes an `if`/`else` that computes
/// only the taken branch; cheap selects stay branch-free (so loops still vectorize).
pub fn declare_lazy(
    d: &dyn Dialect,
    k: &Kernel,
    lv: &[Level],
    used: &[bool],
    level: Level,
    indent: &str,
    out: &mut String,
) {
    let n = k.exprs.len();
    let here = |i: usize| used[i] && lv[i] == level;
    let mut users: Vec<Vec<usize>> = vec![Vec::new(); n];
    for i in (0..n).filter(|&i| used[i]) {
        for c in children(&k.exprs[i].expr) {
            users[c as usize].push(i);
        }
    }
    // Expressions only branch `b` of select `s` uses (children precede parents in the arena).
    let private = |s: usize, root: usize| -> Vec<bool> {
        let mut p = vec![false; n];
        if !here(root) || users[root].iter().any(|&u| u != s) {
            return p;
        }
        p[root] = true;
        for x in (0..root).rev() {
            if here(x) && !users[x].is_empty() && users[x].iter().all(|&u| p[u]) {
                p[x] = true;
            }
        }
        p
    };
    // owner[x] = (select, branch) of the innermost lazy select whose branch alone uses x.
    let mut owner: Vec<Option<(usize, usize)>> = vec![None; n];
    let mut lazy = vec![false; n];
    for s in (0..n).rev().filter(|&s| here(s)) {
        let Expr::Select(_, a, b) = k.exprs[s].expr else { continue };
        let sets = [private(s, a as usize), private(s, b as usize)];
        let worth = |p: &Vec<bool>| {
            let loads = (0..n).any(|x| p[x] && matches!(k.exprs[x].expr, Expr::Load { .. }));
            let index_ops = (0..n).filter(|&x| p[x] && k.exprs[x].ty == KType::Index).count();
            loads && index_ops >= LAZY_INDEX_OPS
        };
        if !sets.iter().any(worth) {
            continue;
        }
        lazy[s] = true;
        for (branch, p) in sets.iter().enumerate() {
            for x in (0..n).filter(|&x| p[x]) {
                owner[x] = Some((s, branch));
            }
        }
    }
    /// Which expressions to emit here, who owns each, and which selects branch.
    struct Lazy<'a> {
        here: &'a dyn Fn(usize) -> bool,
        owner: &'a [Option<(usize, usize)>],
        lazy: &'a [bool],
    }
    fn emit(d: &dyn Dialect, k: &Kernel, scope: Option<(usize, usize)>, ctx: &Lazy, indent: &str, out: &mut String) {
        let (here, owner, lazy) = (ctx.here, ctx.owner, ctx.lazy);
        for i in 0..k.exprs.len() {
            if !here(i) || owner[i] != scope {
                continue;
            }
            let ty = d.ty(k.exprs[i].ty);
            match k.exprs[i].expr {
                Expr::Select(c, a, b) if lazy[i] => {
                    let inner = format!("{indent}  ");
                    let _ = writeln!(out, "{indent}{ty} t{i};");
                    let _ = writeln!(out, "{indent}if (t{c}) {{");
                    emit(d, k, Some((i, 0)), ctx, &inner, out);
                    let _ = writeln!(out, "{inner}t{i} = t{a};");
                    let _ = writeln!(out, "{indent}}} else {{");
                    emit(d, k, Some((i, 1)), ctx, &inner, out);
                    let _ = writeln!(out, "{inner}t{i} = t{b};");
                    let _ = writeln!(out, "{indent}}}");
                }
                _ => {
                    let _ = writeln!(out, "{indent}const {ty} t{i} = {};", expr_text(d, k, i as ExprId));
                }
            }
        }
    }
    emit(d, k, None, &Lazy { here: &here, owner: &owner, lazy: &lazy }, indent, out);
}

/// Declares the used expressions at `level` that `pick` selects and marks them declared.
pub fn declare_where(
    d: &dyn Dialect,
    k: &Kernel,
    pick: &dyn Fn(usize) -> bool,
    done: &mut [bool],
    indent: &str,
    out: &mut String,
) {
    for (i, n) in k.exprs.iter().enumerate() {
        if !done[i] && pick(i) {
            done[i] = true;
            let _ = writeln!(out, "{indent}const {} t{i} = {};", d.ty(n.ty), expr_text(d, k, i as ExprId));
        }
    }
}
