//! Renderers: kernel IR to source text. The expression printing here is shared and
//! language-neutral: every spelling of a target language comes from its [`Dialect`]; each
//! target's schedule (C: OpenMP lanes, tiles and vector loops; CUDA: threads, blocks,
//! warp shuffles and shared memory) is its own module.

pub mod c;
pub mod cuda;
pub mod rng;

use crate::ir::{BinaryOp, DType, RandomDist, UnaryOp};
use crate::kernel::analysis::{children, Level};
use crate::kernel::ir::{Expr, ExprId, IndexOp, KType, Kernel};
use std::fmt::Write;

/// Helper functions a dialect's prelude defines for the expressions it prints.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Helper {
    /// NaN-propagating maximum of two f32.
    FMax,
    /// NaN-propagating minimum of two f32.
    FMin,
    /// i32 division defined for every divisor (0 for `/ 0`, no trap for `MIN / -1`).
    IDiv,
    /// f32 to i32, saturating, NaN to 0.
    F2I,
}

/// Every spelling that differs between target languages; the expression printing below is
/// shared, as in tinygrad's renderers, so what is checked on the CPU covers most of what
/// runs on the GPU. A dialect's schedule (loops, threads, shared memory) is its own module.
pub trait Dialect {
    /// The type name of a kernel type.
    fn ty(&self, t: KType) -> &'static str;
    /// The unsigned 64-bit integer type (counters and seeds).
    fn u64_ty(&self) -> &'static str;
    /// The 64-bit float type (the generator's draws).
    fn f64_ty(&self) -> &'static str {
        "double"
    }
    /// An unsigned 64-bit literal.
    fn u64_lit(&self, v: u64) -> String {
        format!("{v:#x}ULL")
    }
    /// An index literal.
    fn index_lit(&self, v: i64) -> String {
        format!("{v}LL")
    }
    /// The f32 constants that have no decimal spelling: NaN and positive infinity.
    fn nan(&self) -> &'static str;
    /// Positive infinity as an f32.
    fn infinity(&self) -> &'static str;
    /// What a helper function definition starts with (`static inline`).
    fn helper_qualifier(&self) -> &'static str;
    /// The name of a helper function of this dialect's prelude.
    fn helper(&self, h: Helper) -> &'static str {
        match h {
            Helper::FMax => "muse_fmax",
            Helper::FMin => "muse_fmin",
            Helper::IDiv => "muse_idiv",
            Helper::F2I => "muse_f2i",
        }
    }
    /// The f32 function that computes `u` (a math-library call, or a vectorizable function of
    /// the dialect's prelude); asked for the ops that are calls: exp, log, log1p, sqrt, tanh,
    /// sin, cos, erf and abs.
    fn unary_fn(&self, u: UnaryOp) -> &'static str;
    /// An f64 math function (`log`).
    fn f64_math(&self, f: &'static str) -> String {
        f.to_string()
    }
    /// `x` converted to type `to`.
    fn cast(&self, to: KType, x: &str) -> String {
        format!("({}){x}", self.ty(to))
    }
    /// Element `index` of buffer parameter `buf`.
    fn load(&self, buf: u32, index: &str) -> String {
        format!("b{buf}[{index}]")
    }
    /// The run-time value of symbolic size number `k`.
    fn size(&self, k: u32) -> String {
        format!("sizes[{k}]")
    }
    /// The running value of a scan's recurrence of the current state (`Expr::Carry`).
    fn carry(&self) -> &'static str;
    /// Includes and helper definitions every unit of generated code starts with.
    fn prelude(&self) -> String;
}

fn float_lit(d: &dyn Dialect, v: f64) -> String {
    // Finite in f64 but beyond f32: the f32 value the interpreter would store.
    let f = v as f32;
    if v.is_nan() {
        d.nan().to_string()
    } else if f.is_infinite() {
        if f > 0.0 {
            d.infinity().to_string()
        } else {
            format!("(-{})", d.infinity())
        }
    } else {
        format!("{:e}f", f)
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
                KType::Elem(DType::F32) => float_lit(d, v),
                KType::Elem(DType::I32) => format!("{}", v as i32),
                KType::Elem(DType::Bool) => format!("{}", u8::from(v != 0.0)),
                KType::Index => d.index_lit(v as i64),
            }
        }
        Expr::Lane => "lane".into(),
        Expr::LaneInner => "lane_in".into(),
        Expr::Step => "step".into(),
        Expr::State => "st".into(),
        Expr::Size(s) => d.size(*s),
        Expr::Carry => d.carry().into(),
        Expr::Acc(j) => format!("r{j}"),
        Expr::Load { buf, index } => d.load(*buf, &t(index)),
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
                (UnaryOp::Rsqrt, _) => format!("{} / {}({})", float_lit(d, 1.0), d.unary_fn(UnaryOp::Sqrt), t(a)),
                (UnaryOp::Recip, _) => format!("{} / {}", float_lit(d, 1.0), t(a)),
                (u, _) => format!("{}({})", d.unary_fn(*u), t(a)),
            }
        }
        Expr::Binary(op, a, b) => {
            let float = kty(a) == KType::Elem(DType::F32);
            let int = kty(a) == KType::Elem(DType::I32);
            let sym = match op {
                BinaryOp::Add => "+",
                BinaryOp::Sub => "-",
                BinaryOp::Mul => "*",
                BinaryOp::Div if int => return format!("{}({}, {})", d.helper(Helper::IDiv), t(a), t(b)),
                BinaryOp::Div => "/",
                BinaryOp::Max if float => return format!("{}({}, {})", d.helper(Helper::FMax), t(a), t(b)),
                BinaryOp::Min if float => return format!("{}({}, {})", d.helper(Helper::FMin), t(a), t(b)),
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
                (KType::Elem(DType::F32), KType::Elem(DType::I32)) => format!("{}({})", d.helper(Helper::F2I), t(a)),
                (KType::Elem(DType::F32), KType::Index) => {
                    d.cast(KType::Index, &format!("{}({})", d.helper(Helper::F2I), t(a)))
                }
                (_, KType::Elem(DType::Bool)) => format!("{} != 0", t(a)),
                (_, to) => d.cast(to, &t(a)),
            }
        }
        Expr::Random { dist, seed, index } => {
            let f = if *dist == RandomDist::Uniform { rng::UNIFORM } else { rng::NORMAL };
            let (u64t, key) = (d.u64_ty(), rng::KEY);
            let index = format!("({u64t}){}", t(index));
            d.cast(KType::Elem(DType::F32), &format!("{f}({key}(seed, {}), {index})", d.u64_lit(*seed)))
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
