//! The CUDA renderer: kernels as CUDA C for NVRTC, a sibling of the C renderer over the same
//! kernel IR and the same expression printer. The schedule is the GPU's: pointwise kernels
//! and scatter-adds are grid-stride loops of one thread per element; a row kernel is a block
//! per row whose threads stride over the steps and combine their partial results with warp
//! shuffles and shared memory (a warp per row when the row is short: the launch picks the
//! block); a scan is a block per lane whose threads split the steps into chunks and the
//! states among neighbouring threads: each chunk's composite recurrence is found from zero,
//! the values entering the chunks follow in chunk order, and each chunk re-runs its steps
//! from its entering value, the reductions over the states done by shuffles.
//!
//! Every kernel is written for any grid and any block that is a multiple of 32 up to
//! [`MAX_BLOCK`]: [`launch`] chooses them from the run-time sizes for a [`Target`]. The same
//! source runs on a CPU under `MUSE_SIM` through kernels/cuda_sim.h (threads as fibers
//! scheduled in a random order), with the entry point `<name>_sim` each kernel gets there.

use super::{declare, declare_lazy, declare_where, rng, Dialect};
use crate::ir::{DType, ReduceOp, UnaryOp};
use crate::kernel::analysis::{self, levels, needed, phases, used, Level};
use crate::kernel::ir::IndexOp;
use crate::kernel::ir::{Access, Body, Expr, ExprId, KType, Kernel};
use std::fmt::Write;

/// Threads per block at most: every kernel is compiled for it (`__launch_bounds__`), and a
/// scan's shared arrays are sized by it.
pub const MAX_BLOCK: i64 = 256;

/// Symbolic sizes a kernel can take (the `MuseSizes` parameter).
pub const MAX_SIZES: usize = 16;

/// How float buffers are stored: f32, or bf16 with f32 arithmetic (loads widen, stores round).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Storage {
    /// 32-bit floats.
    #[default]
    F32,
    /// bfloat16 in memory, f32 in registers.
    Bf16,
    /// bfloat16 in the float buffers whose bit is set (buffer `i`: bit `i`), f32 in the
    /// others: the optimizer's kernels between bf16 gradients and f32 master weights.
    Mask(u64),
}

impl Storage {
    /// Whether buffer `i`, of element type `dtype`, holds bf16.
    pub fn bf16(self, i: usize, dtype: DType) -> bool {
        dtype == DType::F32
            && match self {
                Storage::F32 => false,
                Storage::Bf16 => true,
                Storage::Mask(m) => i < 64 && (m >> i) & 1 == 1,
            }
    }
}

/// The CUDA dialect for one kernel (it knows which buffers hold bf16).
pub struct Cuda {
    bf16: Vec<bool>,
    /// In a pointwise kernel's vector loop: the element's index expression (`t<k>`), the
    /// buffers loaded there four at a time, and the component this copy of the body
    /// computes (`x`, `y`, `z`, `w`: the element is `vb<buf>.<component>`).
    vector: Option<(String, Vec<bool>, char)>,
}

impl Cuda {
    /// The dialect of kernel `k` with float buffers stored as `storage`.
    pub fn new(k: &Kernel, storage: Storage) -> Cuda {
        Cuda { bf16: k.bufs.iter().enumerate().map(|(i, b)| storage.bf16(i, b.dtype)).collect(), vector: None }
    }
    /// `b<buf>[index] = value;` with the conversion the buffer's storage needs.
    fn store(&self, buf: u32, index: &str, value: &str) -> String {
        if self.bf16[buf as usize] {
            format!("b{buf}[{index}] = __float2bfloat16({value});")
        } else {
            format!("b{buf}[{index}] = {value};")
        }
    }
    /// The pointer type of buffer `i` of `k` (`const` when read only).
    fn buf_ptr(&self, k: &Kernel, i: usize) -> String {
        let konst = if k.bufs[i].access == Access::Read { "const " } else { "" };
        let elem = if self.bf16[i] { "__nv_bfloat16" } else { self.ty(KType::Elem(k.bufs[i].dtype)) };
        format!("{konst}{elem} *")
    }
}

impl Dialect for Cuda {
    fn ty(&self, t: KType) -> &'static str {
        match t {
            KType::Elem(DType::F32) => "float",
            // Truth values are 32-bit ints, as in the C backend's buffers.
            KType::Elem(DType::I32 | DType::Bool) => "int",
            KType::Index => "long long",
        }
    }
    fn u64_ty(&self) -> &'static str {
        "unsigned long long"
    }
    fn nan(&self) -> &'static str {
        "__int_as_float(0x7fffffff)"
    }
    fn infinity(&self) -> &'static str {
        "__int_as_float(0x7f800000)"
    }
    fn helper_qualifier(&self) -> &'static str {
        "static __device__ __forceinline__"
    }
    fn unary_fn(&self, u: UnaryOp) -> &'static str {
        match u {
            UnaryOp::Exp => "expf",
            UnaryOp::Tanh => "tanhf",
            UnaryOp::Log => "logf",
            UnaryOp::Log1p => "log1pf",
            UnaryOp::Sqrt => "sqrtf",
            UnaryOp::Sin => "sinf",
            UnaryOp::Cos => "cosf",
            UnaryOp::Erf => "erff",
            UnaryOp::Abs => "fabsf",
            UnaryOp::Neg | UnaryOp::Not | UnaryOp::Rsqrt | UnaryOp::Recip => "",
        }
    }
    fn load(&self, buf: u32, index: &str) -> String {
        if let Some((element, vec, c)) = &self.vector {
            if vec[buf as usize] && index == element {
                return format!("vb{buf}.{c}");
            }
        }
        if self.bf16[buf as usize] {
            format!("__bfloat162float(b{buf}[{index}])")
        } else {
            format!("b{buf}[{index}]")
        }
    }
    fn size(&self, k: u32) -> String {
        format!("sizes.s[{k}]")
    }
    fn carry(&self) -> &'static str {
        // Each thread's states of a scan live in `h[j]` (see `render_scan`).
        "h[j]"
    }
    fn prelude(&self) -> String {
        // The simulation's header defines the bf16 type and its conversions itself.
        let bf16 = if self.bf16.iter().any(|&b| b) { "#ifndef MUSE_SIM\n#include <cuda_bf16.h>\n#endif\n" } else { "" };
        format!("{HEAD}{bf16}{}{HELPERS}", rng::helpers(self))
    }
}

const HEAD: &str = r#"/* Generated by muse: CUDA C for NVRTC; under MUSE_SIM, for kernels/cuda_sim.h on a CPU. */
#define MUSE_MAX_SIZES 16
#ifndef MUSE_SIM
#define MUSE_SHARED(T, name, n) __shared__ T name[n]
#endif
struct MuseSizes { long long s[MUSE_MAX_SIZES]; };
"#;

const HELPERS: &str = r#"static __device__ __forceinline__ float muse_fmax(float a, float b) { return (a > b || a != a) ? a : b; }
static __device__ __forceinline__ float muse_fmin(float a, float b) { return (a < b || a != a) ? a : b; }
static __device__ __forceinline__ int muse_idiv(int a, int b) { return b == 0 ? 0 : (b == -1 ? -a : a / b); }
static __device__ __forceinline__ int muse_f2i(float x) { return x != x ? 0 : (x >= 2147483647.0f ? 2147483647 : (x <= -2147483648.0f ? (-2147483647 - 1) : (int)x)); }
/* The reductions' combining functions. */
struct MuseSum { template <class T> __device__ __forceinline__ T operator()(T a, T b) const { return a + b; } };
struct MuseMax { __device__ __forceinline__ float operator()(float a, float b) const { return muse_fmax(a, b); } };
struct MuseMin { __device__ __forceinline__ float operator()(float a, float b) const { return muse_fmin(a, b); } };
/* `v` combined over each aligned group of `width` lanes (a power of two up to 32), every lane
   getting the result: a butterfly of xor shuffles. All 32 lanes of the warp must call it. */
template <class T, class Op>
static __device__ __forceinline__ T muse_group_reduce(T v, Op op, int width) {
  for (int o = width / 2; o > 0; o /= 2) v = op(v, __shfl_xor_sync(0xffffffffu, v, o));
  return v;
}
/* `v` combined over the whole block (blockDim.x a multiple of 32), every thread getting the
   result; `red` is shared memory of 32 elements. The first barrier keeps a previous
   reduction's readers from seeing this one's partial results. Warps combine in order, so the
   result is the same in every thread and every run. */
template <class T, class Op>
static __device__ __forceinline__ T muse_block_reduce(T v, Op op, T *red) {
  v = muse_group_reduce(v, op, 32);
  __syncthreads();
  if ((threadIdx.x & 31) == 0) red[threadIdx.x >> 5] = v;
  __syncthreads();
  v = red[0];
  for (int w = 1; w < (int)(blockDim.x >> 5); w++) v = op(v, red[w]);
  return v;
}
/* argmax/argmin candidates (value, step), -1 for none: the answer of a scan in step order
   that keeps the first best and never replaces its first value by a later one that does not
   compare better (so a NaN at step 0 wins, a later NaN never does). */
static __device__ __forceinline__ void muse_arg_combine(float &v, long long &i, float v2, long long i2, bool max) {
  if (i2 < 0) return;
  bool take;
  if (i < 0) take = true;
  else if (i == 0 && v != v) take = false;
  else if (i2 == 0 && v2 != v2) take = true;
  else if (v2 != v2) take = false;
  else if (v != v) take = true;
  else take = (max ? v2 > v : v2 < v) || (v2 == v && i2 < i);
  if (take) { v = v2; i = i2; }
}
static __device__ __forceinline__ void muse_block_arg(float &v, long long &i, bool max, float *rv, long long *ri) {
  for (int o = 16; o > 0; o /= 2) {
    float v2 = __shfl_xor_sync(0xffffffffu, v, o);
    long long i2 = __shfl_xor_sync(0xffffffffu, i, o);
    muse_arg_combine(v, i, v2, i2, max);
  }
  __syncthreads();
  if ((threadIdx.x & 31) == 0) { rv[threadIdx.x >> 5] = v; ri[threadIdx.x >> 5] = i; }
  __syncthreads();
  v = rv[0]; i = ri[0];
  for (int w = 1; w < (int)(blockDim.x >> 5); w++) muse_arg_combine(v, i, rv[w], ri[w], max);
}
"#;

/// Where kernels run: the launch limits of a GPU or of the CPU simulation.
#[derive(Clone, Copy, Debug)]
pub struct Target {
    /// Blocks at most (grid-stride loops cover the rest).
    pub max_grid: i64,
    /// Threads per block at most (a multiple of 32, at most [`MAX_BLOCK`]).
    pub max_block: i64,
    /// Steps of a scan per chunk at least (fewer chunks when the sequence is short).
    pub chunk_steps: i64,
}

/// An H100/H200-class GPU: enough blocks to fill 132 multiprocessors many times over.
pub const GPU: Target = Target { max_grid: 132 * 64, max_block: MAX_BLOCK, chunk_steps: 16 };

/// The CPU simulation: few blocks and short chunks, so that grid-stride loops, strided rows
/// and the scan's chunk carries all run even at tiny sizes.
pub const SIM: Target = Target { max_grid: 3, max_block: 64, chunk_steps: 2 };

/// How one kernel is launched at some sizes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Launch {
    /// Blocks.
    pub grid: u32,
    /// Threads per block (a multiple of 32).
    pub block: u32,
    /// A buffer to set to zero first (a scatter-add's output) and its element count.
    pub zero: Option<(u32, i64)>,
}

/// Threads of a scan's block that share a lane's steps, one state each (a power of two up
/// to a warp; more states than 32 take several per thread).
pub fn state_threads(states: i64) -> i64 {
    (states.max(1) as u64).next_power_of_two().min(32) as i64
}

/// The launch of kernel `k` at symbolic sizes `sizes` on target `t`.
pub fn launch(k: &Kernel, sizes: &[i64], t: &Target) -> Launch {
    let eval = |e: ExprId| k.eval_index(e, sizes).unwrap_or(0).max(0);
    let lanes = eval(k.lanes);
    let blocks = |n: i64| n.clamp(1, t.max_grid) as u32;
    let per_thread = |t: &Target| {
        let block = t.max_block.min(MAX_BLOCK);
        Launch { grid: blocks((lanes + block - 1) / block), block: block as u32, zero: None }
    };
    match &k.body {
        Body::Pointwise { .. } => per_thread(t),
        Body::ScatterAdd { rows, row_len, out, .. } => {
            Launch { zero: Some((*out, eval(*rows).saturating_mul(eval(*row_len)))), ..per_thread(t) }
        }
        Body::Row { .. } if k.lane_major() => per_thread(t),
        Body::Row { inner, .. } => {
            let want = (eval(*inner).max(1) as u64).next_power_of_two() as i64;
            Launch { grid: blocks(lanes), block: want.clamp(32, t.max_block) as u32, zero: None }
        }
        Body::Scan { inner, states, .. } => {
            let sp = state_threads(*states);
            let chunks = ((eval(*inner) + t.chunk_steps - 1) / t.chunk_steps).clamp(1, t.max_block / sp);
            // A whole number of warps: the chunks past the last step stay empty.
            let block = (sp * chunks + 31) / 32 * 32;
            Launch { grid: blocks(lanes), block: block as u32, zero: None }
        }
    }
}

/// The kernels as one CUDA translation unit.
pub fn render_program(kernels: &[&Kernel], storage: Storage) -> String {
    let each: Vec<(&Kernel, Storage)> = kernels.iter().map(|&k| (k, storage)).collect();
    render_program_each(&each)
}

/// Kernels, each with its own storage, as one CUDA translation unit.
pub fn render_program_each(kernels: &[(&Kernel, Storage)]) -> String {
    // The prelude asks the dialect only whether any buffer is bf16.
    let any = kernels.iter().any(|(k, st)| k.bufs.iter().enumerate().any(|(i, b)| st.bf16(i, b.dtype)));
    let mut s = Cuda { bf16: vec![any], vector: None }.prelude();
    for (k, storage) in kernels {
        s.push('\n');
        s.push_str(&render_kernel(k, *storage));
    }
    s
}

/// Source of one kernel: the `__global__` function and, under `MUSE_SIM`, its CPU entry
/// point `<name>_sim(bufs, sizes, seed, grid, block)`.
pub fn render_kernel(k: &Kernel, storage: Storage) -> String {
    let d = Cuda::new(k, storage);
    let lv = levels(k);
    let used = used(k);
    let mut s = String::new();
    let params: Vec<String> = (0..k.bufs.len()).map(|i| format!("{}__restrict__ b{i}", d.buf_ptr(k, i))).collect();
    let _ = writeln!(s, "/* {}: {} */", k.name, super::c::body_kind(&k.body));
    for (i, b) in k.bufs.iter().enumerate() {
        let _ = writeln!(s, "/*   b{i}: {} */", b.label.replace("*/", "* /"));
    }
    let _ = writeln!(
        s,
        "extern \"C\" __global__ void __launch_bounds__({MAX_BLOCK}) {}({}, const MuseSizes sizes, const unsigned long long seed) {{",
        k.name,
        params.join(", ")
    );
    let _ = writeln!(s, "  (void)seed;");
    declare(&d, k, &lv, &used, Level::Kernel, "  ", &mut s);
    let lanes = format!("t{}", k.lanes);
    match &k.body {
        Body::Pointwise { stores, split } => match vector_plan(&d, k, stores, *split) {
            Some(vb) => render_pointwise_vector(&d, k, (&lv, &used), (stores, *split), &vb, &mut s),
            None => {
                open_grid_stride(&lanes, "e", &mut s);
                render_element(&d, k, (&lv, &used), (stores, *split), "    ", &mut s);
                let _ = writeln!(s, "  }}");
            }
        },
        Body::ScatterAdd { row, col, row_len, rows, value, out } => {
            // The launch zeroes the output; lanes add in any order (f32 sums then vary in
            // the last bits from run to run, as PyTorch's index_add_ on a GPU does).
            open_grid_stride(&lanes, "lane", &mut s);
            declare(&d, k, &lv, &used, Level::Lane, "    ", &mut s);
            let _ = writeln!(s, "    const long long r = t{row} < 0 ? 0 : (t{row} >= t{rows} ? t{rows} - 1 : t{row});");
            let v = if d.bf16[*out as usize] { format!("__float2bfloat16(t{value})") } else { format!("t{value}") };
            let _ = writeln!(s, "    atomicAdd(&b{out}[r * t{row_len} + t{col}], {v});");
            let _ = writeln!(s, "  }}");
        }
        Body::Row { .. } if k.lane_major() => render_row_per_thread(&d, k, &lv, &used, &mut s),
        Body::Row { .. } => render_row(&d, k, &lv, &used, &mut s),
        Body::Scan { .. } => render_scan(&d, k, &lv, &used, &mut s),
    }
    let _ = writeln!(s, "}}");
    render_sim_entry(&d, k, &mut s);
    s
}

/// `for (long long <var> = <this thread>; <var> < lanes; <var> += <all threads>) {`.
fn open_grid_stride(lanes: &str, var: &str, s: &mut String) {
    let _ = writeln!(
        s,
        "  for (long long {var} = (long long)blockIdx.x * blockDim.x + threadIdx.x; {var} < {lanes}; {var} += (long long)gridDim.x * blockDim.x) {{"
    );
}

/// One element `e` of a pointwise kernel: its lane, its values, its stores.
fn render_element(
    d: &Cuda,
    k: &Kernel,
    (lv, used): (&[Level], &[bool]),
    (stores, split): (&[(u32, ExprId)], Option<i64>),
    indent: &str,
    s: &mut String,
) {
    match split {
        Some(c) => {
            let _ = writeln!(s, "{indent}const long long lane = e / {c}, lane_in = e % {c};");
        }
        None => {
            let _ = writeln!(s, "{indent}const long long lane = e;");
        }
    }
    declare_lazy(d, k, lv, used, Level::Lane, indent, s);
    for (buf, v) in stores {
        let _ = writeln!(s, "{indent}{}", d.store(*buf, "e", &format!("t{v}")));
    }
}

/// Whether index `i` is the element itself (`e`): the lane, or with split lanes
/// `Lane * c + LaneInner`.
fn is_element(k: &Kernel, i: ExprId, split: Option<i64>) -> bool {
    let e = |x: ExprId| &k.exprs[x as usize].expr;
    match (e(i), split) {
        (Expr::Lane, None) => true,
        (Expr::Index(IndexOp::Add, a, b), Some(c)) => {
            let constant = |y: ExprId| {
                let n = &k.exprs[y as usize];
                matches!(n.expr, Expr::Const(bits) if n.ty == KType::Index && f64::from_bits(bits) as i64 == c)
            };
            let times = |x: ExprId, y: ExprId| matches!(e(x), Expr::Lane) && constant(y);
            let outer = |x: ExprId| matches!(e(x), Expr::Index(IndexOp::Mul, p, q) if times(*p, *q) || times(*q, *p));
            (outer(*a) && matches!(e(*b), Expr::LaneInner)) || (outer(*b) && matches!(e(*a), Expr::LaneInner))
        }
        _ => false,
    }
}

/// Which buffers a pointwise kernel reads four at a time at the element (`float4`), when a
/// vector loop applies: f32 storage of every buffer it stores (all at the element) and of
/// those it loads at the element. With split lanes the inner length must be a multiple of 4,
/// so that a thread's four elements share their lane.
fn vector_plan(d: &Cuda, k: &Kernel, stores: &[(u32, ExprId)], split: Option<i64>) -> Option<Vec<bool>> {
    let f32_buf = |b: u32| k.bufs[b as usize].dtype == DType::F32 && !d.bf16[b as usize];
    if split.is_some_and(|c| c % 4 != 0) || stores.is_empty() || !stores.iter().all(|(b, _)| f32_buf(*b)) {
        return None;
    }
    let mut vec = vec![false; k.bufs.len()];
    for n in &k.exprs {
        if let Expr::Load { buf, index } = n.expr {
            if is_element(k, index, split) && f32_buf(buf) {
                vec[buf as usize] = true;
            }
        }
    }
    Some(vec)
}

/// A pointwise kernel four elements per thread: where every buffer it loads or stores at
/// the element is 16-byte aligned and all four elements exist, `float4` loads and stores
/// around the body once per component; else (an offset into an arena, the last
/// `lanes % 4`) the four elements one by one as the scalar kernel computes them. One loop
/// for both: with a separate scalar loop after the vector loop ptxas spilled registers.
fn render_pointwise_vector(
    d: &Cuda,
    k: &Kernel,
    (lv, used): (&[Level], &[bool]),
    (stores, split): (&[(u32, ExprId)], Option<i64>),
    vb: &[bool],
    s: &mut String,
) {
    let lanes = format!("t{}", k.lanes);
    let mut aligned: Vec<u32> = (0..k.bufs.len() as u32).filter(|&b| vb[b as usize]).collect();
    aligned.extend(stores.iter().map(|(b, _)| *b));
    aligned.sort_unstable();
    aligned.dedup();
    let ptrs: Vec<String> = aligned.iter().map(|b| format!("(unsigned long long)b{b}")).collect();
    let _ = writeln!(s, "  const bool aligned = (({}) & 15ull) == 0;", ptrs.join(" | "));
    let _ = writeln!(
        s,
        "  for (long long q = (long long)blockIdx.x * blockDim.x + threadIdx.x; 4 * q < {lanes}; q += (long long)gridDim.x * blockDim.x) {{"
    );
    let _ = writeln!(s, "    if (aligned && 4 * q + 4 <= {lanes}) {{");
    for b in (0..k.bufs.len()).filter(|&b| vb[b]) {
        let _ = writeln!(s, "      const float4 vb{b} = reinterpret_cast<const float4 *>(b{b})[q];");
    }
    for (b, _) in stores {
        let _ = writeln!(s, "      float4 vo{b};");
    }
    // The body once per component, each in a scope of its own: no indexing into the
    // vectors, which would put them in local memory.
    let element = (0..k.exprs.len() as ExprId).find(|&i| is_element(k, i, split)).map(|i| format!("t{i}"));
    for (j, c) in ['x', 'y', 'z', 'w'].into_iter().enumerate() {
        let _ = writeln!(s, "      {{");
        let _ = writeln!(s, "        const long long e = 4 * q + {j};");
        let vector = Cuda { bf16: d.bf16.clone(), vector: element.clone().map(|l| (l, vb.to_vec(), c)) };
        let body = &mut String::new();
        render_element(&vector, k, (lv, used), (&[], split), "        ", body);
        s.push_str(body);
        for (b, v) in stores {
            let _ = writeln!(s, "        vo{b}.{c} = t{v};");
        }
        let _ = writeln!(s, "      }}");
    }
    for (b, _) in stores {
        let _ = writeln!(s, "      reinterpret_cast<float4 *>(b{b})[q] = vo{b};");
    }
    let _ = writeln!(s, "    }} else {{");
    let _ = writeln!(s, "      for (long long e = 4 * q; e < 4 * q + 4 && e < {lanes}; e++) {{");
    render_element(d, k, (lv, used), (stores, split), "        ", s);
    let _ = writeln!(s, "      }}");
    let _ = writeln!(s, "    }}");
    let _ = writeln!(s, "  }}");
}

/// The CPU simulation's entry point of a kernel (compiled only under `MUSE_SIM`).
fn render_sim_entry(d: &Cuda, k: &Kernel, s: &mut String) {
    let args: Vec<String> = (0..k.bufs.len()).map(|i| format!("({})bufs[{i}]", d.buf_ptr(k, i))).collect();
    let _ = writeln!(s, "#ifdef MUSE_SIM");
    let _ = writeln!(
        s,
        "extern \"C\" void {}_sim(void **bufs, const long long *sz, unsigned long long seed, long long grid, long long block) {{",
        k.name
    );
    let _ = writeln!(s, "  MuseSizes sizes;");
    let _ = writeln!(s, "  for (int i = 0; i < MUSE_MAX_SIZES; i++) sizes.s[i] = sz[i];");
    let _ = writeln!(
        s,
        "  muse_sim::launch(\"{}\", grid, block, [&] {{ {}({}, sizes, seed); }});",
        k.name,
        k.name,
        args.join(", ")
    );
    let _ = writeln!(s, "}}");
    let _ = writeln!(s, "#endif");
}

/// Accumulator type, initial value and combining functor of a reduction on the GPU. Sums
/// add in f32 within a thread and in a tree across threads (of ints, in 64 bits); maxima and
/// minima are of floats, as in the C backend.
fn accumulator(op: ReduceOp, int: bool) -> (&'static str, &'static str, &'static str) {
    match op {
        ReduceOp::Sum if int => ("long long", "0", "MuseSum()"),
        ReduceOp::Sum => ("float", "0.0f", "MuseSum()"),
        ReduceOp::Max => ("float", "-__int_as_float(0x7f800000)", "MuseMax()"),
        ReduceOp::Min => ("float", "__int_as_float(0x7f800000)", "MuseMin()"),
        ReduceOp::ArgMax | ReduceOp::ArgMin => ("float", "0.0f", ""),
    }
}

/// `a = a (op) v;`.
fn combine(op: ReduceOp, int: bool, a: &str, v: &str) -> String {
    match op {
        ReduceOp::Sum if int => format!("{a} += (long long){v};"),
        ReduceOp::Sum => format!("{a} += {v};"),
        ReduceOp::Max => format!("{a} = muse_fmax({a}, {v});"),
        ReduceOp::Min => format!("{a} = muse_fmin({a}, {v});"),
        ReduceOp::ArgMax | ReduceOp::ArgMin => unreachable!("argmax combines pairs"),
    }
}

/// Shared arrays a block's reductions use, declared once at the kernel's top.
fn declare_reduction_memory(k: &Kernel, ops: &[(ReduceOp, ExprId)], s: &mut String) {
    let int = |v: ExprId| k.exprs[v as usize].ty == KType::Elem(DType::I32);
    let floats = ops.iter().any(|&(op, v)| !int(v) || !matches!(op, ReduceOp::Sum));
    let longs =
        ops.iter().any(|&(op, v)| matches!(op, ReduceOp::ArgMax | ReduceOp::ArgMin) || (op == ReduceOp::Sum && int(v)));
    if floats {
        let _ = writeln!(s, "  MUSE_SHARED(float, red_f, 32);");
    }
    if longs {
        let _ = writeln!(s, "  MUSE_SHARED(long long, red_i, 32);");
    }
}

/// A row kernel: a block per row (rows in a grid-stride loop over the blocks). Each
/// reduction's threads stride over the steps, then combine across the block; the element
/// stores stride over the steps again; thread 0 stores the row's values.
fn render_row(d: &Cuda, k: &Kernel, lv: &[Level], used: &[bool], s: &mut String) {
    let Body::Row { inner, phases: reductions, elem_stores, lane_stores } = &k.body else { unreachable!() };
    let ph = phases(k);
    declare_reduction_memory(k, reductions, s);
    let _ = writeln!(s, "  for (long long lane = blockIdx.x; lane < t{}; lane += gridDim.x) {{", k.lanes);
    let mut done: Vec<bool> = lv.iter().map(|l| *l == Level::Kernel).collect();
    let lane_ready = |i: usize, p: u32| used[i] && lv[i] <= Level::Lane && ph[i] <= p;
    declare_where(d, k, &|i| lane_ready(i, 0), &mut done, "    ", s);
    let strided = format!("for (long long step = threadIdx.x; step < t{inner}; step += blockDim.x) {{");
    for (j, &(op, value)) in reductions.iter().enumerate() {
        let out_ty = k.exprs[value as usize].ty;
        let int = out_ty == KType::Elem(DType::I32);
        let need = needed(k, &[value]);
        let (acc, init, functor) = accumulator(op, int);
        let arg = matches!(op, ReduceOp::ArgMax | ReduceOp::ArgMin);
        if arg {
            let _ = writeln!(s, "    float p{j} = 0.0f; long long i{j} = -1;");
        } else {
            let _ = writeln!(s, "    {acc} p{j} = {init};");
        }
        let _ = writeln!(s, "    {strided}");
        let mut local = done.clone();
        declare_where(d, k, &|i| need[i] && lv[i] == Level::Step, &mut local, "      ", s);
        if arg {
            let max = op == ReduceOp::ArgMax;
            let _ = writeln!(s, "      muse_arg_combine(p{j}, i{j}, t{value}, step, {max});");
        } else {
            let _ = writeln!(s, "      {}", combine(op, int, &format!("p{j}"), &format!("t{value}")));
        }
        let _ = writeln!(s, "    }}");
        if arg {
            let max = op == ReduceOp::ArgMax;
            let _ = writeln!(s, "    muse_block_arg(p{j}, i{j}, {max}, red_f, red_i);");
            let _ = writeln!(s, "    const int r{j} = (int)(i{j} < 0 ? 0 : i{j});");
        } else {
            let red = if acc == "long long" { "red_i" } else { "red_f" };
            let ty = d.ty(out_ty);
            let _ = writeln!(s, "    p{j} = muse_block_reduce(p{j}, {functor}, {red});");
            let _ = writeln!(s, "    const {ty} r{j} = ({ty})p{j};");
        }
        declare_where(d, k, &|i| lane_ready(i, j as u32 + 1), &mut done, "    ", s);
    }
    if !elem_stores.is_empty() {
        let _ = writeln!(s, "    {strided}");
        let roots: Vec<_> = elem_stores.iter().flat_map(|e| [e.1, e.2]).collect();
        let need = needed(k, &roots);
        let mut local = done.clone();
        declare_where(d, k, &|i| need[i] && lv[i] == Level::Step, &mut local, "      ", s);
        for (buf, index, value) in elem_stores {
            let _ = writeln!(s, "      {}", d.store(*buf, &format!("t{index}"), &format!("t{value}")));
        }
        let _ = writeln!(s, "    }}");
    }
    if !lane_stores.is_empty() {
        let _ = writeln!(s, "    if (threadIdx.x == 0) {{");
        for (buf, value) in lane_stores {
            let _ = writeln!(s, "      {}", d.store(*buf, "lane", &format!("t{value}")));
        }
        let _ = writeln!(s, "    }}");
    }
    let _ = writeln!(s, "  }}");
}

/// A lone reduction read lane-major ([`Kernel::lane_major`]): a thread per lane, stepping
/// in order, so that neighbouring threads read neighbouring elements at every step.
fn render_row_per_thread(d: &Cuda, k: &Kernel, lv: &[Level], used: &[bool], s: &mut String) {
    let Body::Row { inner, phases: reductions, lane_stores, .. } = &k.body else { unreachable!() };
    let (op, value) = reductions[0];
    let out_ty = k.exprs[value as usize].ty;
    let int = out_ty == KType::Elem(DType::I32);
    let (acc, init, _) = accumulator(op, int);
    let ph = phases(k);
    let need = needed(k, &[value]);
    open_grid_stride(&format!("t{}", k.lanes), "lane", s);
    let mut done: Vec<bool> = lv.iter().map(|l| *l == Level::Kernel).collect();
    declare_where(d, k, &|i| used[i] && lv[i] == Level::Lane && ph[i] == 0, &mut done, "    ", s);
    let _ = writeln!(s, "    {acc} p = {init};");
    let _ = writeln!(s, "    for (long long step = 0; step < t{inner}; step++) {{");
    let mut local = done.clone();
    declare_where(d, k, &|i| need[i] && lv[i] == Level::Step, &mut local, "      ", s);
    let _ = writeln!(s, "      {}", combine(op, int, "p", &format!("t{value}")));
    let _ = writeln!(s, "    }}");
    let ty = d.ty(out_ty);
    let _ = writeln!(s, "    const {ty} r0 = ({ty})p;");
    declare_where(d, k, &|i| used[i] && lv[i] == Level::Lane && ph[i] <= 1, &mut done, "    ", s);
    for (buf, v) in lane_stores {
        let _ = writeln!(s, "    {}", d.store(*buf, "lane", &format!("t{v}")));
    }
    let _ = writeln!(s, "  }}");
}

/// A scan: a block per lane. Thread `tid` holds states `tid % SP + SP * j` of chunk
/// `tid / SP` of the steps (SP = [`state_threads`]). (1) Each chunk's composite recurrence
/// `h -> P h + H` is found from `h = 0`; (2) one thread per state carries the value entering
/// each chunk through the chunks in order; (3) each chunk re-runs its steps from its
/// entering value, storing the states, reducing over the states by shuffles within the
/// SP threads and storing the step values; (4) folds over the steps combine the chunks in
/// order. Every thread runs the same number of steps in (3) (past the end, with its step
/// clamped and nothing stored), so the shuffles see whole warps.
fn render_scan(d: &Cuda, k: &Kernel, lv: &[Level], used: &[bool], s: &mut String) {
    let Body::Scan { inner, reverse, states, a, b, state_stores, reduces, step_stores, step_reduces } = &k.body else {
        unreachable!()
    };
    let sp = state_threads(*states);
    let spt = (*states + sp - 1) / sp;
    let ph = phases(k);
    let n = format!("t{inner}");
    let shared = MAX_BLOCK * spt;
    let _ = writeln!(s, "  MUSE_SHARED(float, scan_p, {shared});");
    let _ = writeln!(s, "  MUSE_SHARED(float, scan_h, {shared});");
    for (j, (op, ..)) in step_reduces.iter().enumerate() {
        let _ = writeln!(s, "  MUSE_SHARED({}, scan_o{j}, {shared});", accumulator(*op, false).0);
    }
    let _ =
        writeln!(s, "  const int sidx = threadIdx.x % {sp}, chunk = threadIdx.x / {sp}, nchunks = blockDim.x / {sp};");
    let _ = writeln!(s, "  for (long long lane = blockIdx.x; lane < t{}; lane += gridDim.x) {{", k.lanes);
    // The previous lane's readers of the shared arrays are done.
    let _ = writeln!(s, "    __syncthreads();");
    let mut done: Vec<bool> = lv.iter().map(|l| *l == Level::Kernel).collect();
    declare_where(d, k, &|i| used[i] && lv[i] == Level::Lane && ph[i] == 0, &mut done, "    ", s);
    let _ = writeln!(s, "    const long long clen = ({n} + nchunks - 1) / nchunks;");
    let _ = writeln!(s, "    const long long it0 = chunk * clen, it1 = it0 + clen < {n} ? it0 + clen : {n};");
    let step_of = |it: &str| if *reverse { format!("{n} - 1 - {it}") } else { it.to_string() };
    let slot = |j: &str| format!("chunk * {} + {j} * {sp} + sidx", sp * spt);
    let need_ab = needed(k, &[*a, *b]);
    // Per-state values that do not change with the step (Mamba's `-exp(A_log)`) are computed
    // once per lane into registers, not at every step of both passes.
    let hoisted = analysis::step_invariant_values(k);
    let open_state = |s: &mut String| {
        let _ = writeln!(s, "      #pragma unroll");
        let _ = writeln!(s, "      for (int j = 0; j < {spt}; j++) {{");
        let _ = writeln!(s, "        const long long st = sidx + {sp} * j;");
        let _ = writeln!(s, "        if (st < {states}) {{");
    };
    // The hoisted values of this thread's states.
    for &i in &hoisted {
        let _ = writeln!(s, "    {} hv{i}[{spt}];", d.ty(k.exprs[i].ty));
    }
    if !hoisted.is_empty() {
        open_state(s);
        let want = needed(k, &hoisted.iter().map(|&i| i as ExprId).collect::<Vec<_>>());
        declare_where(d, k, &|i| want[i] && lv[i] == Level::State, &mut done.clone(), "          ", s);
        for &i in &hoisted {
            let _ = writeln!(s, "          hv{i}[j] = t{i};");
        }
        let _ = writeln!(s, "        }}");
        let _ = writeln!(s, "      }}");
    }
    // Inside a loop over this thread's states: the hoisted values it needs, from registers.
    let take_hoisted = |s: &mut String, need: &[bool], done: &mut Vec<bool>| {
        for &i in hoisted.iter().filter(|&&i| need[i]) {
            let _ = writeln!(s, "          const {} t{i} = hv{i}[j];", d.ty(k.exprs[i].ty));
            done[i] = true;
        }
    };
    // (1) Each chunk's composite, from zero.
    let _ = writeln!(s, "    float h[{spt}];");
    let _ = writeln!(s, "    {{");
    let _ = writeln!(s, "    float cp[{spt}], ch[{spt}];");
    let _ = writeln!(s, "    for (int j = 0; j < {spt}; j++) {{ cp[j] = 1.0f; ch[j] = 0.0f; }}");
    let _ = writeln!(s, "    for (long long it = it0; it < it1; it++) {{");
    let _ = writeln!(s, "      const long long step = {};", step_of("it"));
    let mut local = done.clone();
    declare_where(d, k, &|i| need_ab[i] && lv[i] == Level::Step && ph[i] == 0, &mut local, "      ", s);
    open_state(s);
    let mut state_local = local.clone();
    take_hoisted(s, &need_ab, &mut state_local);
    declare_where(d, k, &|i| need_ab[i] && lv[i] == Level::State && ph[i] == 0, &mut state_local, "          ", s);
    let _ = writeln!(s, "          cp[j] *= t{a};");
    let _ = writeln!(s, "          ch[j] = t{a} * ch[j] + t{b};");
    let _ = writeln!(s, "        }}");
    let _ = writeln!(s, "      }}");
    let _ = writeln!(s, "    }}");
    let _ =
        writeln!(s, "    for (int j = 0; j < {spt}; j++) {{ scan_p[{0}] = cp[j]; scan_h[{0}] = ch[j]; }}", slot("j"));
    let _ = writeln!(s, "    }}");
    let _ = writeln!(s, "    __syncthreads();");
    // (2) The value entering each chunk, chunk by chunk.
    let _ = writeln!(s, "    if (chunk == 0) {{");
    let _ = writeln!(s, "      for (int j = 0; j < {spt}; j++) {{");
    let _ = writeln!(s, "        float carry = 0.0f;");
    let _ = writeln!(s, "        for (int c = 0; c < nchunks; c++) {{");
    let _ = writeln!(s, "          const int at = c * {} + j * {sp} + sidx;", sp * spt);
    let _ = writeln!(s, "          const float p = scan_p[at], hh = scan_h[at];");
    let _ = writeln!(s, "          scan_h[at] = carry;");
    let _ = writeln!(s, "          carry = p * carry + hh;");
    let _ = writeln!(s, "        }}");
    let _ = writeln!(s, "      }}");
    let _ = writeln!(s, "    }}");
    let _ = writeln!(s, "    __syncthreads();");
    let _ = writeln!(s, "    for (int j = 0; j < {spt}; j++) h[j] = scan_h[{}];", slot("j"));
    for (j, (op, ..)) in step_reduces.iter().enumerate() {
        let (acc, init, _) = accumulator(*op, false);
        let _ = writeln!(s, "    {acc} over{j}[{spt}];");
        let _ = writeln!(s, "    for (int j = 0; j < {spt}; j++) over{j}[j] = {init};");
    }
    // (3) The steps again, from the entering values.
    let _ = writeln!(s, "    for (long long q = 0; q < clen; q++) {{");
    let _ = writeln!(s, "      const long long it = it0 + q;");
    let _ = writeln!(s, "      const bool active = it < it1;");
    let _ = writeln!(s, "      const long long itc = it < {n} ? it : {n} - 1;");
    let _ = writeln!(s, "      const long long step = {};", step_of("itc"));
    let mut step_done = done.clone();
    declare_where(d, k, &|i| used[i] && lv[i] == Level::Step && ph[i] == 0, &mut step_done, "      ", s);
    for (j, (op, v)) in reduces.iter().enumerate() {
        let (acc, init, _) = accumulator(*op, k.exprs[*v as usize].ty == KType::Elem(DType::I32));
        let _ = writeln!(s, "      {acc} red{j} = {init};");
    }
    open_state(s);
    let mut state_done = step_done.clone();
    take_hoisted(s, used, &mut state_done);
    declare_where(d, k, &|i| need_ab[i] && lv[i] == Level::State && ph[i] == 0, &mut state_done, "          ", s);
    let _ = writeln!(s, "          if (active) h[j] = t{a} * h[j] + t{b};");
    declare_where(d, k, &|i| used[i] && lv[i] == Level::State && ph[i] == 0, &mut state_done, "          ", s);
    let _ = writeln!(s, "          if (active) {{");
    for (buf, index, value) in state_stores {
        let _ = writeln!(s, "            {}", d.store(*buf, &format!("t{index}"), &format!("t{value}")));
    }
    for (j, (op, v)) in reduces.iter().enumerate() {
        let int = k.exprs[*v as usize].ty == KType::Elem(DType::I32);
        let _ = writeln!(s, "            {}", combine(*op, int, &format!("red{j}"), &format!("t{v}")));
    }
    for (j, (op, v, ..)) in step_reduces.iter().enumerate() {
        let _ = writeln!(s, "            {}", combine(*op, false, &format!("over{j}[j]"), &format!("t{v}")));
    }
    let _ = writeln!(s, "          }}");
    let _ = writeln!(s, "        }}");
    let _ = writeln!(s, "      }}");
    for (j, (op, v)) in reduces.iter().enumerate() {
        let ty = k.exprs[*v as usize].ty;
        let (_, _, functor) = accumulator(*op, ty == KType::Elem(DType::I32));
        let _ = writeln!(s, "      const {0} r{j} = ({0})muse_group_reduce(red{j}, {functor}, {sp});", d.ty(ty));
    }
    declare_where(d, k, &|i| used[i] && lv[i] <= Level::Step && ph[i] >= 1, &mut step_done, "      ", s);
    if !step_stores.is_empty() {
        let _ = writeln!(s, "      if (active && sidx == 0) {{");
        for (buf, index, value) in step_stores {
            let _ = writeln!(s, "        {}", d.store(*buf, &format!("t{index}"), &format!("t{value}")));
        }
        let _ = writeln!(s, "      }}");
    }
    let _ = writeln!(s, "    }}");
    // (4) Folds over the steps: each state's chunks in order.
    if !step_reduces.is_empty() {
        for j in 0..step_reduces.len() {
            let _ = writeln!(s, "    for (int j = 0; j < {spt}; j++) scan_o{j}[{}] = over{j}[j];", slot("j"));
        }
        let _ = writeln!(s, "    __syncthreads();");
        let _ = writeln!(s, "    if (chunk == 0) {{");
        open_state(s);
        let need = needed(k, &step_reduces.iter().map(|r| r.3).collect::<Vec<_>>());
        let mut local = done.clone();
        take_hoisted(s, &need, &mut local);
        declare_where(d, k, &|i| need[i] && lv[i] == Level::State, &mut local, "          ", s);
        for (j, (op, v, buf, index)) in step_reduces.iter().enumerate() {
            let (acc, init, _) = accumulator(*op, false);
            let ty = d.ty(k.exprs[*v as usize].ty);
            let _ = writeln!(s, "          {acc} all{j} = {init};");
            let _ = writeln!(
                s,
                "          for (int c = 0; c < nchunks; c++) {}",
                combine(*op, false, &format!("all{j}"), &format!("scan_o{j}[c * {} + j * {sp} + sidx]", sp * spt))
            );
            let _ = writeln!(s, "          {}", d.store(*buf, &format!("t{index}"), &format!("({ty})all{j}")));
        }
        let _ = writeln!(s, "        }}");
        let _ = writeln!(s, "      }}");
        let _ = writeln!(s, "    }}");
    }
    let _ = writeln!(s, "  }}");
}
