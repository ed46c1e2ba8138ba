//! The C renderer: kernels as C functions for the CPU backend, compiled with the system C
//! compiler and called through a stable signature `void k(void **bufs, const int64_t *sizes,
//! uint64_t seed)`. Lanes run in parallel with OpenMP; the inner loop of a reduction or scan
//! runs sequentially inside its lane.

use super::{declare, declare_lazy, declare_where, rng, Dialect};
use crate::ir::{DType, ReduceOp, UnaryOp};
use crate::kernel::analysis::{self, levels, needed, phases, used, Level};
use crate::kernel::ir::{Access, Body, Expr, IndexOp, KType, Kernel};
use std::fmt::Write;

/// The C dialect.
pub struct C;

impl Dialect for C {
    fn ty(&self, t: KType) -> &'static str {
        match t {
            KType::Elem(DType::F32) => "float",
            KType::Elem(DType::I32) => "int32_t",
            // Truth values are 32-bit ints, in registers and in buffers: GCC 12 cannot turn
            // a vector of byte compares into an AVX-512 mask for a select over floats, so a
            // masked softmax row stayed scalar while its mask was held as bytes.
            KType::Elem(DType::Bool) => "int32_t",
            KType::Index => "int64_t",
        }
    }
    fn u64_ty(&self) -> &'static str {
        "uint64_t"
    }
    fn nan(&self) -> &'static str {
        "NAN"
    }
    fn infinity(&self) -> &'static str {
        "INFINITY"
    }
    fn helper_qualifier(&self) -> &'static str {
        "static inline"
    }
    fn carry(&self) -> &'static str {
        // The scan keeps each state's running value in `h[st]` (see `scan_body`).
        "h[st]"
    }
    fn prelude(&self) -> String {
        format!("{INCLUDES}{}{MATH}", rng::helpers(self))
    }
    fn unary_fn(&self, u: UnaryOp) -> &'static str {
        match u {
            // The prelude's vectorizable versions: libm's are a scalar call per element.
            UnaryOp::Exp => "muse_expf",
            UnaryOp::Tanh => "muse_tanhf",
            UnaryOp::Log => "muse_logf",
            UnaryOp::Log1p => "muse_log1pf",
            UnaryOp::Sqrt => "sqrtf",
            UnaryOp::Sin => "sinf",
            UnaryOp::Cos => "cosf",
            UnaryOp::Erf => "erff",
            UnaryOp::Abs => "fabsf",
            // Operators in the shared printer, never calls.
            UnaryOp::Neg | UnaryOp::Not | UnaryOp::Rsqrt | UnaryOp::Recip => "",
        }
    }
}

/// What every C file includes.
const INCLUDES: &str = "#include <stdint.h>\n#include <math.h>\n#include <string.h>\n\n";

/// The C prelude's math helpers: vectorizable f32 functions and the [`super::Helper`]s. The
/// prelude is [`Dialect::prelude`]: the includes, the generator's helpers printed from its
/// one specification (`render::rng`), then these.
const MATH: &str = r#"/* exp that the compiler can vectorize (Cephes' expf: range reduction and a degree-5
   polynomial, within 2 ulp); libm's expf is a call per element. */
static inline float muse_expf(float x) {
  /* Plain compares and the 1.5*2^23 rounding trick: floorf and fminf would stop GCC from
     vectorizing (they must honour errno-free IEEE corner cases it will not assume). */
  float c = x < -104.0f ? -104.0f : (x > 88.8f ? 88.8f : x);
  c = x != x ? 0.0f : c;
  float fx = (c * 1.44269504088896341f + 12582912.0f) - 12582912.0f;
  float r = c - fx * 0.693359375f;
  r = r - fx * -2.12194440e-4f;
  float z = r * r;
  float y = ((((1.9875691500e-4f * r + 1.3981999507e-3f) * r + 8.3334519073e-3f) * r + 4.1665795894e-2f) * r
             + 1.6666665459e-1f) * r + 5.0000001201e-1f;
  y = y * z + r + 1.0f;
  /* 2^n as two factors, so that n = 128 and the subnormal range stay representable. */
  int32_t n = (int32_t)fx, h = n / 2;
  int32_t b1 = (h + 127) << 23, b2 = (n - h + 127) << 23;
  float p1, p2;
  memcpy(&p1, &b1, sizeof p1);
  memcpy(&p2, &b2, sizeof p2);
  float v = y * p1 * p2;
  v = x > 88.72283935546875f ? INFINITY : v;
  v = x < -103.972084f ? 0.0f : v;
  v = x != x ? x : v;
  return v;
}
/* tanh as one rational function, x p(x^2) / q(x^2) (degrees 13 and 6, the minimax fit
   Eigen uses), of x clamped to +-7.9053 where it reaches 1 in f32; within 4e-7 relative.
   One division and eleven multiply-adds: the exp-based form (a polynomial below |x| =
   0.625, 1 - 2/(e^2|x| + 1) above) took 90 vector instructions per 16 elements, and
   GELU's epilogue cost half as much again as its product. NaN passes through the clamp. */
static inline float muse_tanhf(float x) {
  float c = x > 7.90531110763549805f ? 7.90531110763549805f : (x < -7.90531110763549805f ? -7.90531110763549805f : x);
  float z = c * c;
  float p = ((((((-2.76076847742355e-16f * z + 2.00018790482477e-13f) * z - 8.60467152213735e-11f) * z
                + 5.12229709037114e-08f) * z + 1.48572235717979e-05f) * z + 6.37261928875436e-04f) * z
             + 4.89352455891786e-03f) * c;
  float q = ((1.19825839466702e-06f * z + 1.18534705686654e-04f) * z + 2.26843463243900e-03f) * z + 4.89352518554385e-03f;
  float v = p / q;
  return (x < 4e-4f && x > -4e-4f) ? x : v;
}
/* NaN-propagating max and min in one compare and one self-compare, a form GCC vectorizes
   inside a row's partial reductions (a NaN in `a` is kept by the self-compare, one in `b` by
   the failed compare). */
/* log on the same terms (Cephes' logf: x = m 2^e with m in [sqrt(1/2), sqrt(2)), a degree-9
   polynomial in m - 1; within 2 ulp), with libm's answers at 0, below 0, infinity and NaN. */
static inline float muse_logf(float x) {
  /* Subnormals scaled into the normal range first. */
  int sub = x < 1.17549435e-38f;
  float xs = sub ? x * 8388608.0f : x;
  int32_t bits;
  memcpy(&bits, &xs, sizeof bits);
  float e = (float)(((bits >> 23) & 0xff) - 126) - (sub ? 23.0f : 0.0f);
  int32_t mb = (bits & 0x807fffff) | 0x3f000000;
  float m;
  memcpy(&m, &mb, sizeof m);
  int low = m < 0.707106781186547524f;
  e = low ? e - 1.0f : e;
  float r = low ? m + m - 1.0f : m - 1.0f;
  float z = r * r;
  float y = ((((((((7.0376836292e-2f * r - 1.1514610310e-1f) * r + 1.1676998740e-1f) * r - 1.2420140846e-1f) * r
                + 1.4249322787e-1f) * r - 1.6668057665e-1f) * r + 2.0000714765e-1f) * r - 2.4999993993e-1f) * r
             + 3.3333331174e-1f) * r * z;
  y = y + -2.12194440e-4f * e - 0.5f * z;
  float v = r + y + 0.693359375f * e;
  v = x == 0.0f ? -INFINITY : v;
  v = x < 0.0f ? NAN : v;
  v = x > 3.40282347e38f ? INFINITY : v;
  return x != x ? x : v;
}
/* log(1 + x) without losing small x: log(u) * x / (u - 1) for u = 1 + x (Goldberg's
   correction of u's rounding), x itself where u rounds to 1, log(x) where 1 is lost in x. */
static inline float muse_log1pf(float x) {
  float u = 1.0f + x;
  float d = u - 1.0f;
  float v = muse_logf(u) * (x / (d == 0.0f ? 1.0f : d));
  v = d == 0.0f ? x : v;
  v = x > 1e30f ? muse_logf(x) : v;
  v = x == -1.0f ? -INFINITY : v;
  v = x < -1.0f ? NAN : v;
  return x != x ? x : v;
}
static inline float muse_fmax(float a, float b) { return (a > b || a != a) ? a : b; }
static inline float muse_fmin(float a, float b) { return (a < b || a != a) ? a : b; }
static inline int32_t muse_idiv(int32_t a, int32_t b) { return b == 0 ? 0 : (b == -1 ? -a : a / b); }
static inline int32_t muse_f2i(float x) { return x != x ? 0 : (x >= 2147483647.0f ? 2147483647 : (x <= -2147483648.0f ? (-2147483647 - 1) : (int32_t)x)); }
"#;

/// Source of one kernel as a C function.
pub fn render_kernel(k: &Kernel) -> String {
    let lv = levels(k);
    let used = used(k);
    let mut s = String::new();
    let _ = writeln!(s, "/* {}: {} */", k.name, body_kind(&k.body));
    let _ = writeln!(s, "void {}(void **bufs, const int64_t *sizes, uint64_t seed) {{", k.name);
    open_kernel(k, &lv, &used, &mut s);
    let lanes = format!("t{}", k.lanes);
    render_lanes(k, &lv, &used, &lanes, &mut s);
    let _ = writeln!(s, "}}");
    s
}

/// Name of the entry point that runs elements `lo..hi` of a pointwise kernel (as a product's
/// epilogue, on the calling thread).
pub fn range_name(k: &Kernel) -> String {
    format!("{}_range", k.name)
}

/// A pointwise kernel over elements `lo..hi` only, sequentially: a product's epilogue, called
/// by the GEMM template for each finished tile. `None` for other kernels.
pub fn render_range(k: &Kernel) -> Option<String> {
    let Body::Pointwise { stores, split } = &k.body else { return None };
    let d = C;
    let lv = levels(k);
    let used = used(k);
    let mut s = String::new();
    let _ = writeln!(s, "/* {}: elements lo..hi of {} */", range_name(k), k.name);
    let name = range_name(k);
    let _ = writeln!(s, "void {name}(void **bufs, const int64_t *sizes, uint64_t seed, int64_t lo, int64_t hi) {{");
    open_kernel(k, &lv, &used, &mut s);
    match split {
        // Whole or partial rows of the inner axis; the inner loop still vectorizes.
        Some(c) => {
            let _ = writeln!(s, "  for (int64_t lane = lo / {c}; lane * {c} < hi; lane++) {{");
            let _ = writeln!(s, "    const int64_t in0 = lo > lane * {c} ? lo - lane * {c} : 0;");
            let _ = writeln!(s, "    const int64_t in1 = hi < (lane + 1) * {c} ? hi - lane * {c} : {c};");
            let _ = writeln!(s, "    for (int64_t lane_in = in0; lane_in < in1; lane_in++) {{");
            declare_lazy(&d, k, &lv, &used, Level::Lane, "      ", &mut s);
            for (buf, v) in stores {
                let _ = writeln!(s, "      b{buf}[lane * {c} + lane_in] = t{v};");
            }
            let _ = writeln!(s, "    }}");
        }
        None => {
            let _ = writeln!(s, "  for (int64_t lane = lo; lane < hi; lane++) {{");
            declare_lazy(&d, k, &lv, &used, Level::Lane, "    ", &mut s);
            render_body(&k.body, &mut s);
        }
    }
    let _ = writeln!(s, "  }}");
    let _ = writeln!(s, "}}");
    Some(s)
}

/// A kernel function's opening: its buffers and the kernel-level values.
fn open_kernel(k: &Kernel, lv: &[Level], used: &[bool], s: &mut String) {
    let d = C;
    let _ = writeln!(s, "  (void)sizes; (void)seed;");
    for (i, b) in k.bufs.iter().enumerate() {
        let konst = if b.access == Access::Read { "const " } else { "" };
        let _ = writeln!(
            s,
            "  {konst}{} *restrict b{i} = ({konst}{} *)bufs[{i}]; /* {} */",
            d.ty(KType::Elem(b.dtype)),
            d.ty(KType::Elem(b.dtype)),
            b.label.replace("*/", "* /")
        );
    }
    declare(&d, k, lv, used, Level::Kernel, "  ", s);
}

/// The lanes of a kernel, in parallel.
fn render_lanes(k: &Kernel, lv: &[Level], used: &[bool], lanes: &str, s: &mut String) {
    let d = C;
    match &k.body {
        Body::ScatterAdd { row, col, row_len, rows, value, out } => {
            // Lanes add into shared rows: run them in order (sequential and deterministic).
            let o = format!("b{out}");
            let _ = writeln!(s, "  memset({o}, 0, sizeof(*{o}) * (size_t)(t{rows} * t{row_len}));");
            let _ = writeln!(s, "  for (int64_t lane = 0; lane < {lanes}; lane++) {{");
            declare(&d, k, lv, used, Level::Lane, "    ", s);
            let _ = writeln!(s, "    int64_t r = t{row} < 0 ? 0 : (t{row} >= t{rows} ? t{rows} - 1 : t{row});");
            let _ = writeln!(s, "    {o}[r * t{row_len} + t{col}] += t{value};");
            let _ = writeln!(s, "  }}");
        }
        Body::Scan { .. } => {
            // Smaller tiles when there are few lanes, so that every thread still gets some.
            let t = SCAN_TILE;
            let _ = writeln!(s, "  const int64_t tile = {lanes} >= 8 * {t} ? {t} : ({lanes} + 7) / 8;");
            let _ = writeln!(s, "  #pragma omp parallel for schedule(static) if({lanes} > 64)");
            let _ = writeln!(s, "  for (int64_t l0 = 0; l0 < {lanes}; l0 += tile) {{");
            let _ = writeln!(s, "    const int nl = {lanes} - l0 < tile ? (int)({lanes} - l0) : (int)tile;");
            render_scan(&d, k, lv, used, s);
            let _ = writeln!(s, "  }}");
        }
        Body::Row { .. } if k.lane_major() => render_row_tiled(&d, k, lv, used, s),
        Body::Row { .. } => {
            let _ = writeln!(s, "  #pragma omp parallel for schedule(static) if({lanes} > 256)");
            let _ = writeln!(s, "  for (int64_t lane = 0; lane < {lanes}; lane++) {{");
            render_row(&d, k, lv, used, s);
            let _ = writeln!(s, "  }}");
        }
        Body::Pointwise { stores, split: Some(c) } => {
            // The inner axis as the inner loop: indices along it need no division, and GCC
            // vectorizes it (a flat loop with `lane % c` broadcasts it does not).
            let _ = writeln!(s, "  #pragma omp parallel for schedule(static) if({lanes} > 2048)");
            let _ = writeln!(s, "  for (int64_t lane = 0; lane < {lanes} / {c}; lane++) {{");
            let _ = writeln!(s, "    for (int64_t lane_in = 0; lane_in < {c}; lane_in++) {{");
            declare_lazy(&d, k, lv, used, Level::Lane, "      ", s);
            for (buf, v) in stores {
                let _ = writeln!(s, "      b{buf}[lane * {c} + lane_in] = t{v};");
            }
            let _ = writeln!(s, "    }}");
            let _ = writeln!(s, "  }}");
        }
        body => {
            let _ = writeln!(s, "  #pragma omp parallel for schedule(static) if({lanes} > 2048)");
            let _ = writeln!(s, "  for (int64_t lane = 0; lane < {lanes}; lane++) {{");
            declare_lazy(&d, k, lv, used, Level::Lane, "    ", s);
            render_body(body, s);
            let _ = writeln!(s, "  }}");
        }
    }
}

/// What kind of kernel a body makes, for the comment above its source.
pub fn body_kind(b: &Body) -> &'static str {
    match b {
        Body::Pointwise { .. } => "pointwise",
        Body::Row { phases, elem_stores, .. } if phases.len() == 1 && elem_stores.is_empty() => "reduction",
        Body::Row { .. } => "row (reductions and their epilogue)",
        Body::Scan { .. } => "scan",
        Body::ScatterAdd { .. } => "scatter-add",
    }
}

fn render_body(body: &Body, s: &mut String) {
    match body {
        Body::Pointwise { stores, .. } => {
            for (buf, v) in stores {
                let _ = writeln!(s, "    b{buf}[lane] = t{v};");
            }
        }
        Body::ScatterAdd { .. } | Body::Row { .. } | Body::Scan { .. } => unreachable!("rendered by the caller"),
    }
}

/// A row kernel's lane: each reduction loops over the steps in turn, then one loop stores
/// the element values; a lane-level value is declared as soon as the reductions it needs
/// have finished.
fn render_row(d: &C, k: &Kernel, lv: &[Level], used: &[bool], s: &mut String) {
    let Body::Row { inner, phases: reductions, elem_stores, lane_stores } = &k.body else { unreachable!() };
    let ph = phases(k);
    // Kernel-level values are declared before the lane loop already.
    let mut done: Vec<bool> = lv.iter().map(|l| *l == Level::Kernel).collect();
    let lane_ready = |i: usize, p: u32| used[i] && lv[i] <= Level::Lane && ph[i] <= p;
    declare_where(d, k, &|i| lane_ready(i, 0), &mut done, "    ", s);
    for (j, (op, value)) in reductions.iter().enumerate() {
        let out_ty = k.exprs[*value as usize].ty;
        let need = needed(k, &[*value]);
        let int = out_ty == KType::Elem(DType::I32);
        // Sums, maxima and minima keep 16 partial results (a fixed order, so results are
        // deterministic) that the compiler can hold in vector registers; argmax is sequential.
        let (acc_ty, init) = accumulator(*op, int);
        let combine = |a: &str, v: &str| combine_text(*op, int, a, v);
        let _ = writeln!(s, "    {acc_ty} acc{j} = {init}; int64_t best{j} = 0; (void)best{j};");
        let _ = writeln!(s, "    {{");
        if matches!(op, ReduceOp::ArgMax | ReduceOp::ArgMin) {
            let cmp = if *op == ReduceOp::ArgMax { ">" } else { "<" };
            let _ = writeln!(s, "      float acc = acc{j}; int64_t best = 0;");
            let _ = writeln!(s, "      for (int64_t step = 0; step < t{inner}; step++) {{");
            let mut local = done.clone();
            declare_where(d, k, &|i| need[i] && lv[i] == Level::Step, &mut local, "        ", s);
            let _ = writeln!(s, "        if (step == 0 || t{value} {cmp} acc) {{ acc = t{value}; best = step; }}");
            let _ = writeln!(s, "      }}");
            let _ = writeln!(s, "      acc{j} = acc; best{j} = best;");
        } else {
            let _ = writeln!(s, "      {acc_ty} part[16];");
            let _ = writeln!(s, "      for (int q = 0; q < 16; q++) part[q] = {init};");
            let _ = writeln!(s, "      int64_t s0 = 0;");
            let _ = writeln!(s, "      for (; s0 + 16 <= t{inner}; s0 += 16) {{");
            // Said explicitly: GCC unrolls the 16 partial maxima and then keeps them scalar
            // (a softmax row of 64: 1.7 ms for 4096 rows on one core, 0.5 with the pragma).
            let _ = writeln!(s, "        #pragma omp simd");
            let _ = writeln!(s, "        for (int q = 0; q < 16; q++) {{");
            let _ = writeln!(s, "          const int64_t step = s0 + q;");
            let mut local = done.clone();
            declare_where(d, k, &|i| need[i] && lv[i] == Level::Step, &mut local, "          ", s);
            let _ = writeln!(s, "          {}", combine("part[q]", &format!("t{value}")));
            let _ = writeln!(s, "        }}");
            let _ = writeln!(s, "      }}");
            let _ = writeln!(s, "      for (; s0 < t{inner}; s0++) {{");
            let _ = writeln!(s, "        const int64_t step = s0;");
            let mut local = done.clone();
            declare_where(d, k, &|i| need[i] && lv[i] == Level::Step, &mut local, "        ", s);
            let _ = writeln!(s, "        {}", combine("part[0]", &format!("t{value}")));
            let _ = writeln!(s, "      }}");
            // Halving, so that the partial results combine as vectors: a chain of 15 was a
            // fixed cost per row (softmax over 16384 rows of 16, one core: 0.61 -> 0.47 ms;
            // of 64: 1.74 -> 1.64).
            let _ = writeln!(s, "      for (int w = 8; w > 0; w /= 2)");
            let _ = writeln!(s, "        for (int q = 0; q < w; q++) {}", combine("part[q]", "part[q + w]"));
            let _ = writeln!(s, "      acc{j} = part[0];");
        }
        let _ = writeln!(s, "    }}");
        let result = match op {
            ReduceOp::ArgMax | ReduceOp::ArgMin => format!("(int32_t)best{j}"),
            _ => format!("({})acc{j}", d.ty(out_ty)),
        };
        let res_ty = if matches!(op, ReduceOp::ArgMax | ReduceOp::ArgMin) { "int32_t" } else { d.ty(out_ty) };
        let _ = writeln!(s, "    const {res_ty} r{j} = {result};");
        declare_where(d, k, &|i| lane_ready(i, j as u32 + 1), &mut done, "    ", s);
    }
    if !elem_stores.is_empty() {
        let _ = writeln!(s, "    for (int64_t step = 0; step < t{inner}; step++) {{");
        let roots: Vec<_> = elem_stores.iter().flat_map(|e| [e.1, e.2]).collect();
        let need = needed(k, &roots);
        let mut local = done.clone();
        declare_where(d, k, &|i| need[i] && lv[i] == Level::Step, &mut local, "      ", s);
        for (buf, index, value) in elem_stores {
            let _ = writeln!(s, "      b{buf}[t{index}] = t{value};");
        }
        let _ = writeln!(s, "    }}");
    }
    for (buf, value) in lane_stores {
        let _ = writeln!(s, "    b{buf}[lane] = t{value};");
    }
}

/// The accumulator type and initial value of a reduction.
fn accumulator(op: ReduceOp, int: bool) -> (&'static str, &'static str) {
    match op {
        ReduceOp::Sum if int => ("int64_t", "0"),
        ReduceOp::Sum => ("double", "0.0"),
        ReduceOp::Max => ("float", "-INFINITY"),
        ReduceOp::Min => ("float", "INFINITY"),
        ReduceOp::ArgMax | ReduceOp::ArgMin => ("float", "0.0f"),
    }
}

/// A lone reduction read lane-major ([`Kernel::lane_major`]): 16 neighbouring lanes advance
/// through the steps together, so each step reads 16 neighbouring elements (one or two cache
/// lines) instead of one element per line; each lane still sums its steps in order.
fn render_row_tiled(d: &C, k: &Kernel, lv: &[Level], used: &[bool], s: &mut String) {
    let Body::Row { inner, phases: reductions, lane_stores, .. } = &k.body else { unreachable!() };
    let (op, value) = reductions[0];
    let out_ty = k.exprs[value as usize].ty;
    let int = out_ty == KType::Elem(DType::I32);
    let (acc_ty, init) = accumulator(op, int);
    let ph = phases(k);
    let need = needed(k, &[value]);
    let lanes = format!("t{}", k.lanes);
    let kernel_level: Vec<bool> = lv.iter().map(|l| *l == Level::Kernel).collect();
    let _ = writeln!(s, "  #pragma omp parallel for schedule(static) if({lanes} > 256)");
    let _ = writeln!(s, "  for (int64_t l0 = 0; l0 < {lanes}; l0 += 16) {{");
    let _ = writeln!(s, "    const int nl = {lanes} - l0 < 16 ? (int)({lanes} - l0) : 16;");
    let _ = writeln!(s, "    {acc_ty} part[16];");
    let _ = writeln!(s, "    for (int q = 0; q < 16; q++) part[q] = {init};");
    // Tiles start at multiples of 16, so for a divisor c that 16 divides, `lane / c` is the
    // tile's and `lane % c` is the tile's plus q: said so, every index is affine in q and
    // GCC loads the tile's 16 values as one vector instead of element by element.
    let mut local = kernel_level.clone();
    let aligned = |i: usize, want: IndexOp| match k.exprs[i].expr {
        Expr::Index(op, a, b) if op == want && k.exprs[a as usize].expr == Expr::Lane => {
            match k.exprs[b as usize].expr {
                Expr::Const(bits) => {
                    let c = f64::from_bits(bits) as i64;
                    (c > 0 && c % 16 == 0).then_some(c)
                }
                _ => None,
            }
        }
        _ => None,
    };
    for i in (0..k.exprs.len()).filter(|&i| need[i]) {
        if let Some(c) = aligned(i, IndexOp::Div) {
            let _ = writeln!(s, "    const int64_t t{i} = l0 / {c};");
            local[i] = true;
        }
    }
    let _ = writeln!(s, "    for (int64_t step = 0; step < t{inner}; step++) {{");
    let _ = writeln!(s, "      for (int q = 0; q < nl; q++) {{");
    let _ = writeln!(s, "        const int64_t lane = l0 + q;");
    for i in (0..k.exprs.len()).filter(|&i| need[i]) {
        if let Some(c) = aligned(i, IndexOp::Rem) {
            let _ = writeln!(s, "        const int64_t t{i} = l0 % {c} + q;");
            local[i] = true;
        }
    }
    declare_where(d, k, &|i| need[i] && matches!(lv[i], Level::Lane | Level::Step), &mut local, "        ", s);
    let _ = writeln!(s, "        {}", combine_text(op, int, "part[q]", &format!("t{value}")));
    let _ = writeln!(s, "      }}");
    let _ = writeln!(s, "    }}");
    let _ = writeln!(s, "    for (int q = 0; q < nl; q++) {{");
    let _ = writeln!(s, "      const int64_t lane = l0 + q;");
    let _ = writeln!(s, "      const {} r0 = ({})part[q];", d.ty(out_ty), d.ty(out_ty));
    let mut local = kernel_level;
    declare_where(d, k, &|i| used[i] && lv[i] == Level::Lane && ph[i] <= 1, &mut local, "      ", s);
    for (buf, v) in lane_stores {
        let _ = writeln!(s, "      b{buf}[lane] = t{v};");
    }
    let _ = writeln!(s, "    }}");
    let _ = writeln!(s, "  }}");
}

/// Neighbouring lanes a scan advances together, step by step (at most). A lane's values at
/// successive steps lie a whole row of lanes apart (16 KiB in Mamba's [B, L, E, N] states),
/// so one lane at a time touches a new page at every step and waits on memory; 64 lanes
/// read and write each step's values as one page-long run that the prefetcher follows (the
/// scans of mamba_xattn_xz's step: 94 ms one lane at a time, 57 with 16, 51 with 64).
const SCAN_TILE: usize = 64;

/// A tile of a scan's lanes: the states of every lane advance together step by step; the
/// reductions over the states (the selective scan's `sum_n h C`) and the step stores follow
/// each lane's step; folds over the steps are stored after the last one.
fn render_scan(d: &C, k: &Kernel, lv: &[Level], used: &[bool], s: &mut String) {
    let Body::Scan { inner, reverse, states, a, b, state_stores, reduces, step_stores, step_reduces } = &k.body else {
        unreachable!()
    };
    let t = SCAN_TILE;
    let ph = phases(k);
    // The per-state values that do not change with the step (Mamba's `-exp(A_log)`) are
    // computed once per lane into arrays.
    let per_step = analysis::per_step(k);
    let kernel_done: Vec<bool> = lv.iter().map(|l| *l == Level::Kernel).collect();
    let lane_level = |i: usize| used[i] && lv[i] == Level::Lane && ph[i] == 0;
    let hoisted = analysis::step_invariant_values(k);
    // Per-lane arrays of the tile; inside a lane's loop, pointers to its row.
    let _ = writeln!(s, "    float h_t[{t}][{states}];");
    for &i in &hoisted {
        let _ = writeln!(s, "    {} t{i}_t[{t}][{states}];", d.ty(k.exprs[i].ty));
    }
    for (j, (op, ..)) in step_reduces.iter().enumerate() {
        let _ = writeln!(s, "    {} over{j}_t[{t}][{states}];", accumulator(*op, false).0);
    }
    let open_lane = |s: &mut String, done: &mut Vec<bool>| {
        let _ = writeln!(s, "    for (int q = 0; q < nl; q++) {{");
        let _ = writeln!(s, "      const int64_t lane = l0 + q;");
        let _ = writeln!(s, "      float *restrict h = h_t[q];");
        for (j, (op, ..)) in step_reduces.iter().enumerate() {
            let _ = writeln!(s, "      {} *restrict over{j} = over{j}_t[q];", accumulator(*op, false).0);
        }
        declare_where(d, k, &lane_level, done, "      ", s);
    };
    // Set-up: the hoisted per-state values, zero states, empty folds.
    let mut done = kernel_done.clone();
    open_lane(s, &mut done);
    let _ = writeln!(s, "      for (int64_t st = 0; st < {states}; st++) {{");
    declare_where(
        d,
        k,
        &|i| hoisted.contains(&i) || (used[i] && lv[i] == Level::State && !per_step[i] && ph[i] == 0),
        &mut done.clone(),
        "        ",
        s,
    );
    for &i in &hoisted {
        let _ = writeln!(s, "        t{i}_t[q][st] = t{i};");
    }
    let _ = writeln!(s, "        h[st] = 0.0f;");
    for (j, (op, ..)) in step_reduces.iter().enumerate() {
        let _ = writeln!(s, "        over{j}[st] = {};", accumulator(*op, false).1);
    }
    let _ = writeln!(s, "      }}");
    let _ = writeln!(s, "    }}");
    // The steps, every lane of the tile at each.
    let _ = writeln!(s, "    for (int64_t it = 0; it < t{inner}; it++) {{");
    let step = if *reverse { format!("t{inner} - 1 - it") } else { "it".into() };
    let _ = writeln!(s, "    const int64_t step = {step};");
    let mut lane_done = kernel_done.clone();
    open_lane(s, &mut lane_done);
    for (j, (_, v)) in reduces.iter().enumerate() {
        let _ = writeln!(s, "      {} red{j}[{states}];", d.ty(k.exprs[*v as usize].ty));
    }
    let mut step_done = lane_done.clone();
    declare_where(d, k, &|i| used[i] && lv[i] == Level::Step && ph[i] == 0, &mut step_done, "      ", s);
    let _ = writeln!(s, "      for (int64_t st = 0; st < {states}; st++) {{");
    let mut state_done = step_done.clone();
    for &i in &hoisted {
        let _ = writeln!(s, "        const {} t{i} = t{i}_t[q][st];", d.ty(k.exprs[i].ty));
        state_done[i] = true;
    }
    // a and b first, then the new h, then what reads it.
    let need_ab = needed(k, &[*a, *b]);
    declare_where(d, k, &|i| need_ab[i] && lv[i] == Level::State && ph[i] == 0, &mut state_done, "        ", s);
    let _ = writeln!(s, "        h[st] = t{a} * h[st] + t{b};");
    declare_where(d, k, &|i| used[i] && lv[i] == Level::State && ph[i] == 0, &mut state_done, "        ", s);
    for (buf, index, value) in state_stores {
        let _ = writeln!(s, "        b{buf}[t{index}] = t{value};");
    }
    // The terms are stored and folded after the loop, in state order: the loop itself then
    // has no loop-carried sum and vectorizes across states.
    for (j, (_, v)) in reduces.iter().enumerate() {
        let _ = writeln!(s, "        red{j}[st] = t{v};");
    }
    for (j, (op, v, ..)) in step_reduces.iter().enumerate() {
        let _ = writeln!(s, "        {}", combine_text(*op, false, &format!("over{j}[st]"), &format!("t{v}")));
    }
    let _ = writeln!(s, "      }}");
    for (j, (op, v)) in reduces.iter().enumerate() {
        let ty = d.ty(k.exprs[*v as usize].ty);
        let (acc_ty, init) = accumulator(*op, false);
        let _ = writeln!(s, "      {acc_ty} acc{j} = {init};");
        let _ = writeln!(
            s,
            "      for (int64_t st = 0; st < {states}; st++) {}",
            combine_text(*op, false, &format!("acc{j}"), &format!("red{j}[st]"))
        );
        let _ = writeln!(s, "      const {ty} r{j} = ({ty})acc{j};");
    }
    declare_where(d, k, &|i| used[i] && lv[i] <= Level::Step && ph[i] >= 1, &mut step_done, "      ", s);
    for (buf, index, value) in step_stores {
        let _ = writeln!(s, "      b{buf}[t{index}] = t{value};");
    }
    let _ = writeln!(s, "    }}");
    let _ = writeln!(s, "    }}");
    if !step_reduces.is_empty() {
        let mut done = kernel_done.clone();
        open_lane(s, &mut done);
        let _ = writeln!(s, "      for (int64_t st = 0; st < {states}; st++) {{");
        let need = needed(k, &step_reduces.iter().map(|r| r.3).collect::<Vec<_>>());
        declare_where(d, k, &|i| need[i] && lv[i] == Level::State, &mut done, "        ", s);
        for (j, (_, v, buf, index)) in step_reduces.iter().enumerate() {
            let ty = d.ty(k.exprs[*v as usize].ty);
            let _ = writeln!(s, "        b{buf}[t{index}] = ({ty})over{j}[st];");
        }
        let _ = writeln!(s, "      }}");
        let _ = writeln!(s, "    }}");
    }
}

/// `a = a (op) v` in C for a sum, maximum or minimum.
fn combine_text(op: ReduceOp, int: bool, a: &str, v: &str) -> String {
    match op {
        ReduceOp::Sum if int => format!("{a} += {v};"),
        ReduceOp::Sum => format!("{a} += (double){v};"),
        ReduceOp::Max => format!("{a} = muse_fmax({a}, {v});"),
        ReduceOp::Min => format!("{a} = muse_fmin({a}, {v});"),
        ReduceOp::ArgMax | ReduceOp::ArgMin => unreachable!("argmax is sequential"),
    }
}

/// The kernels as C translation units of at most `per_unit` kernels each, so that several
/// compiler processes can work at once; `ranges` also get their element-range entry points.
pub fn render_program(kernels: &[&Kernel], ranges: &[&Kernel], per_unit: usize) -> Vec<String> {
    let mut units: Vec<String> = kernels
        .chunks(per_unit.max(1))
        .map(|chunk| {
            let mut s = C.prelude();
            for k in chunk {
                s.push('\n');
                s.push_str(&render_kernel(k));
            }
            s
        })
        .collect();
    // The products' epilogues over element ranges (see `render_range`), with the last unit.
    if !ranges.is_empty() && units.is_empty() {
        units.push(C.prelude());
    }
    if let Some(last) = units.last_mut() {
        for k in ranges {
            if let Some(r) = render_range(k) {
                last.push('\n');
                last.push_str(&r);
            }
        }
    }
    units
}
