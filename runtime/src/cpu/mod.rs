//! The CPU backend: fused kernels rendered to C, compiled by the system compiler, loaded
//! with libloading and called in order over buffers; matrix products through the `gemm`
//! crate.

pub mod blas;
pub mod compile;
pub mod device;
pub mod optim;

pub use device::{CpuDevice, CpuOptions};

use crate::interp::RunError;
use crate::layout::{Axis, Layout, Place};

use crate::tensor::{Data, HostTensor};
use compile::{CompileError, CompilerSettings, KernelFn, Library};
use muse_compiler::ir::{DType, Graph, NodeIndex};
use muse_compiler::kernel::{self, KernelProgram, MatMulStep, Step};
use muse_compiler::render::c;
use std::collections::HashMap;
use std::ffi::c_void;
use std::sync::Arc;

/// A graph compiled for the CPU: its kernels and the loaded library.
pub struct CpuProgram {
    /// The kernels and GEMM calls, in order.
    pub program: KernelProgram,
    /// The generated C source, one string per translation unit.
    pub source: Vec<String>,
    /// The loaded library (none when the program is GEMM calls only).
    pub library: Option<Arc<Library>>,
    /// Per step: the kernel, or a product's epilogue as a whole kernel (run after a GEMM
    /// that cannot apply it tile by tile).
    fns: Vec<Option<KernelFn>>,
    /// Per step: a product's epilogue over element ranges, for the GEMM template.
    ranges: Vec<Option<compile::RangeFn>>,
    /// The matrix-product template of kernels/gemm.c, when the program has products.
    gemm: Option<compile::GemmFn>,
    /// The values it computes.
    pub requested: Vec<NodeIndex>,
}

/// OpenMP threads that spin long while waiting for work slow down any other thread pool on
/// the cores (AdamW's rayon threads; the `gemm` crate's when it runs the products), and
/// threads that sleep at once make every small kernel pay a wake-up. Unless the user chose
/// (`OMP_WAIT_POLICY` or `GOMP_SPINCOUNT`), they spin briefly (10000 rounds), then sleep:
/// measured best of passive, active and 1e3-1e6 spins when products ran on rayon; with the
/// GEMM template on OpenMP, 1e4, 3e5 and active measure alike (docs/fusion.md). This must
/// happen before the first kernel library is loaded (OpenMP reads it once); it runs once
/// per process. Programs embedding muse with threads of their own should set
/// `OMP_WAIT_POLICY` themselves before starting them.
pub fn quiet_openmp() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        if std::env::var_os("OMP_WAIT_POLICY").is_none() && std::env::var_os("GOMP_SPINCOUNT").is_none() {
            std::env::set_var("GOMP_SPINCOUNT", "10000");
        }
    });
}

/// The matrix-product template, compiled with every program that has products.
const GEMM_TEMPLATE: &str = include_str!("../../../kernels/gemm.c");

/// Multiply-adds below which a batch of products runs one product per thread.
const SMALL_GEMM: usize = 128 * 128 * 128;

/// A `rows x cols` operand starting at `p` gathered into a contiguous matrix.
///
/// # Safety
/// Every offset the axes give from `p` must be inside one live allocation.
unsafe fn gather(p: *const f32, rows: usize, cols: usize, r: &Axis, c: &Axis) -> Vec<f32> {
    let mut out = Vec::with_capacity(rows * cols);
    for i in 0..rows {
        let row = p.offset(r.offset(i));
        out.extend((0..cols).map(|j| *row.offset(c.offset(j))));
    }
    out
}

/// The buffers of one run in host memory, where the program's [`Layout`] puts them:
/// inputs, the parameter arena and the planned intermediates.
pub struct Prepared {
    /// Where every value lives.
    pub layout: Layout,
    external: HashMap<NodeIndex, Buf>,
    /// The f32 parameters, side by side.
    param_arena: Buf,
    slots: Vec<Buf>,
    ptrs: HashMap<NodeIndex, *mut c_void>,
}

impl Prepared {
    /// The current value of a requested or planned node.
    pub fn read(&self, n: NodeIndex) -> HostTensor {
        self.try_read(n).unwrap_or_else(|| panic!("value {n:?} is neither requested nor planned"))
    }

    /// The buffer holding node `n` (through its alias) and the element offset in it.
    fn place(&self, n: NodeIndex) -> Option<(&Buf, usize)> {
        Some(match self.layout.place(n)? {
            Place::External(src) => (&self.external[&src], 0),
            Place::Param(off) => (&self.param_arena, off),
            Place::Slot(k, off) => (&self.slots[k], off),
        })
    }

    /// The current value of a requested or planned node; none for another node.
    pub fn try_read(&self, n: NodeIndex) -> Option<HostTensor> {
        let shape = self.layout.shapes.get(&n)?.clone();
        let (buf, off) = self.place(n)?;
        Some(buf.to_host_at(off, shape))
    }

    /// Parameter `name` as the program holds it.
    pub fn read_param(&self, name: &str) -> Option<HostTensor> {
        let n = *self.layout.params.get(name)?;
        let (buf, off) = self.place(n)?;
        Some(buf.to_host_at(off, self.layout.param_shapes.get(name)?.clone()))
    }

    /// Overwrites input `name` for the next launch. The shape must be the one the buffers
    /// were prepared for (a different batch size needs a new [`CpuProgram::prepare`]).
    pub fn write_input(&mut self, name: &str, t: &HostTensor) -> Result<(), RunError> {
        let Some((n, shape)) = self.layout.inputs.get(name) else { return Ok(()) };
        if &t.shape != shape {
            return Err(RunError::InputShape {
                name: name.to_string(),
                expected: format!("{shape:?} (the shape this program was prepared for)"),
                found: t.shape.clone(),
                why: "a prepared program keeps its batch size".into(),
            });
        }
        let buf = self.external.get_mut(n).expect("inputs read by the program have buffers");
        match (buf, &t.data) {
            (Buf::F(b), Data::F(v)) => b.iter_mut().zip(v).for_each(|(b, &x)| *b = x as f32),
            (Buf::I(b), Data::I(v)) => b.copy_from_slice(v),
            (Buf::B(b), Data::B(v)) => b.iter_mut().zip(v).for_each(|(b, &x)| *b = i32::from(x)),
            (_, _) => {
                return Err(RunError::InputDType {
                    name: name.to_string(),
                    expected: "the declared type".into(),
                    found: t.dtype().to_string(),
                })
            }
        }
        Ok(())
    }

    /// The f32 elements of a planned or requested value.
    pub fn f32s(&self, n: NodeIndex) -> &[f32] {
        let len: usize = self.layout.shapes[&n].iter().product();
        match self.place(n) {
            Some((Buf::F(v), off)) => &v[off..off + len],
            _ => panic!("value {n:?} is not a stored f32"),
        }
    }

    /// Parameter `name`'s buffer, which the program reads in place (none for a parameter the
    /// graph does not have).
    pub fn param_mut(&mut self, name: &str) -> Option<&mut [f32]> {
        let n = self.layout.params.get(name)?;
        if let Some(&(off, len)) = self.layout.param_at.get(n) {
            let Buf::F(v) = &mut self.param_arena else { unreachable!("the arena holds f32") };
            return Some(&mut v[off..off + len]);
        }
        match self.external.get_mut(n)? {
            Buf::F(v) => Some(v.as_mut_slice()),
            _ => None,
        }
    }

    /// Copies the trained gradients the program did not compute in the gradient arena (a
    /// gradient that is a parameter or an input itself, or shares another's buffer) to
    /// their places there: once after each execution (a later copy would undo what the
    /// optimizer's verbs did to them there, such as the sum over ranks).
    pub(crate) fn gather_gradients(&mut self) {
        if self.layout.grad_copies.is_empty() {
            return;
        }
        let copies: Vec<(usize, Vec<f32>)> =
            self.layout.grad_copies.iter().map(|&(off, g)| (off, self.f32s(g).to_vec())).collect();
        let arena = self.layout.plan.arena.expect("gradients to copy go to the arena");
        let Buf::F(dst) = &mut self.slots[arena] else { unreachable!("the arena holds f32") };
        for (off, v) in copies {
            dst[off..off + v.len()].copy_from_slice(&v);
        }
    }

    /// Pointers to the trained stretch of the parameter arena and of the gradient arena.
    pub(crate) fn trained_arenas(&mut self) -> Option<(*mut f32, *mut f32)> {
        let arena = self.layout.plan.arena?;
        let (Buf::F(p), Buf::F(g)) = (&mut self.param_arena, &mut self.slots[arena]) else { return None };
        Some((p.as_mut_ptr(), g.as_mut_ptr()))
    }
}

enum Buf {
    F(Vec<f32>),
    I(Vec<i32>),
    B(Vec<i32>),
}

impl Buf {
    fn zeros(dtype: DType, n: usize) -> Buf {
        match dtype {
            DType::F32 => Buf::F(vec![0.0; n]),
            DType::I32 => Buf::I(vec![0; n]),
            DType::Bool => Buf::B(vec![0; n]),
        }
    }
    fn from_host(t: &HostTensor) -> Buf {
        match &t.data {
            Data::F(v) => Buf::F(v.iter().map(|&x| x as f32).collect()),
            Data::I(v) => Buf::I(v.clone()),
            Data::B(v) => Buf::B(v.iter().map(|&b| i32::from(b)).collect()),
        }
    }
    fn ptr(&mut self) -> *mut c_void {
        match self {
            Buf::F(v) => v.as_mut_ptr() as *mut c_void,
            Buf::I(v) => v.as_mut_ptr() as *mut c_void,
            Buf::B(v) => v.as_mut_ptr() as *mut c_void,
        }
    }
    /// `shape`-many elements from element `off` (a planned slot may be larger than the value
    /// in it; an arena holds many).
    fn to_host_at(&self, off: usize, shape: Vec<usize>) -> HostTensor {
        let n: usize = shape.iter().product();
        let data = match self {
            Buf::F(v) => Data::F(v[off..off + n].iter().map(|&x| x as f64).collect()),
            Buf::I(v) => Data::I(v[off..off + n].to_vec()),
            Buf::B(v) => Data::B(v[off..off + n].iter().map(|&x| x != 0).collect()),
        };
        HostTensor { shape, data }
    }
}

impl CpuProgram {
    /// Fuses, lowers, renders and compiles what computing `requested` takes.
    pub fn compile(
        g: &Graph,
        requested: &[NodeIndex],
        settings: &CompilerSettings,
    ) -> Result<CpuProgram, CompileError> {
        let (program, _) = kernel::fuse(g, requested);
        let ranges: Vec<&kernel::Kernel> = program
            .steps
            .iter()
            .filter_map(|s| if let Step::MatMul(m) = s { m.epilogue.as_ref().map(|e| &e.kernel) } else { None })
            .collect();
        let kernels: Vec<&kernel::Kernel> = program
            .steps
            .iter()
            .filter_map(|s| if let Step::Kernel(k) = s { Some(&k.kernel) } else { None })
            .chain(ranges.iter().copied())
            .collect();
        // Enough units to keep every core busy, but not so many that the prelude dominates.
        let cores = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(2);
        let per_unit = kernels.len().div_ceil(cores * 2).max(64);
        let mut source = c::render_program(&kernels, &ranges, per_unit);
        let has_products = settings.gemm_template && program.steps.iter().any(|s| matches!(s, Step::MatMul(_)));
        if has_products {
            source.push(GEMM_TEMPLATE.to_string());
        }
        quiet_openmp();
        let library = if source.is_empty() { None } else { Some(compile::compile(&source, settings)?) };
        let (mut fns, mut range_fns) = (Vec::new(), Vec::new());
        for s in &program.steps {
            let (f, r) = match (s, &library) {
                (Step::Kernel(k), Some(lib)) => (Some(lib.kernel(&k.kernel.name)?), None),
                (Step::MatMul(MatMulStep { epilogue: Some(e), .. }), Some(lib)) => {
                    (Some(lib.kernel(&e.kernel.name)?), Some(lib.range(&e.kernel.name)?))
                }
                _ => (None, None),
            };
            fns.push(f);
            range_fns.push(r);
        }
        let gemm = match (&library, has_products) {
            (Some(lib), true) => Some(lib.gemm()?),
            _ => None,
        };
        Ok(CpuProgram { program, source, library, fns, ranges: range_fns, gemm, requested: requested.to_vec() })
    }

    /// Number of kernel launches (generated kernels and GEMM calls).
    pub fn launches(&self) -> usize {
        self.program.steps.len()
    }

    /// Runs the program; returns the requested values.
    pub fn run(
        &self,
        g: &Graph,
        inputs: &HashMap<String, HostTensor>,
        params: &HashMap<String, HostTensor>,
        seed: u64,
    ) -> Result<HashMap<NodeIndex, HostTensor>, RunError> {
        self.run_observed(g, inputs, params, seed, None)
    }

    /// Runs the program, showing `observe` each step's output (step number, node, value)
    /// right after the step; `observe` returning false stops the run early.
    pub fn run_observed(
        &self,
        g: &Graph,
        inputs: &HashMap<String, HostTensor>,
        params: &HashMap<String, HostTensor>,
        seed: u64,
        observe: Option<&mut dyn FnMut(usize, NodeIndex, HostTensor) -> bool>,
    ) -> Result<HashMap<NodeIndex, HostTensor>, RunError> {
        let mut prep = self.prepare(g, inputs, params)?;
        self.launch(&mut prep, seed, observe);
        Ok(self.requested.iter().map(|&n| (n, prep.read(n))).collect())
    }

    /// Allocates and fills the buffers of a run (inputs, parameters, planned intermediates).
    pub fn prepare(
        &self,
        g: &Graph,
        inputs: &HashMap<String, HostTensor>,
        params: &HashMap<String, HostTensor>,
    ) -> Result<Prepared, RunError> {
        self.prepare_trained(g, inputs, params, &[])
    }

    /// As [`CpuProgram::prepare`], with the parameters of `trained` (parameter, gradient)
    /// first in the parameter arena and their gradients side by side in the plan's arena.
    pub fn prepare_trained(
        &self,
        g: &Graph,
        inputs: &HashMap<String, HostTensor>,
        params: &HashMap<String, HostTensor>,
        trained: &[(String, NodeIndex)],
    ) -> Result<Prepared, RunError> {
        let layout = Layout::new(g, &self.program, &self.requested, inputs, params, trained)?;
        let mut external: HashMap<NodeIndex, Buf> = layout
            .external
            .iter()
            .map(|(n, held)| (*n, Buf::from_host(Layout::source(held, inputs, params))))
            .collect();
        let mut slots: Vec<Buf> = layout.plan.slots.iter().map(|(d, n)| Buf::zeros(*d, *n)).collect();
        let slot_ptrs: Vec<*mut c_void> = slots.iter_mut().map(Buf::ptr).collect();
        let mut ptrs: HashMap<NodeIndex, *mut c_void> = external.iter_mut().map(|(n, b)| (*n, b.ptr())).collect();
        let mut param_arena = Buf::F(layout.arena(params));
        let arena_ptr = param_arena.ptr() as *mut f32;
        for (n, &(off, _)) in &layout.param_at {
            // SAFETY: every offset lies inside the arena, allocated above and never resized.
            ptrs.insert(*n, unsafe { arena_ptr.add(off) } as *mut c_void);
        }
        for (n, &k) in &layout.plan.slot_of {
            let off = layout.plan.offset_of.get(n).copied().unwrap_or(0);
            // SAFETY: a pinned value's offset plus its length fits its slot (plan_pinned).
            ptrs.insert(*n, unsafe { (slot_ptrs[k] as *mut f32).add(off) } as *mut c_void);
        }
        Ok(Prepared { layout, external, param_arena, slots, ptrs })
    }

    /// Runs every step over prepared buffers; `observe` as in [`CpuProgram::run_observed`].
    pub fn launch(
        &self,
        prep: &mut Prepared,
        seed: u64,
        mut observe: Option<&mut dyn FnMut(usize, NodeIndex, HostTensor) -> bool>,
    ) {
        for i in 0..self.program.steps.len() {
            self.run_step(i, prep, seed);
            let step = &self.program.steps[i];
            if let Some(observe) = observe.as_mut() {
                let outs = step.writes();
                if !outs.into_iter().all(|out| observe(i, out, prep.read(out))) {
                    break;
                }
            }
        }
    }

    /// Runs step `i` of the program over prepared buffers.
    fn run_step(&self, i: usize, prep: &mut Prepared, seed: u64) {
        let (step, f) = (&self.program.steps[i], &self.fns[i]);
        match step {
            Step::Kernel(k) => {
                let mut args: Vec<*mut c_void> = k.buffers.iter().map(|n| prep.ptrs[n]).collect();
                let f = f.expect("kernel steps have functions");
                // SAFETY: each pointer is a live buffer of the element type and size the
                // kernel was generated for; the kernel writes only its output buffers.
                unsafe { f(args.as_mut_ptr(), prep.layout.sizes.as_ptr(), seed) };
            }
            Step::MatMul(m) => {
                let gs = &prep.layout.gemms[&i];
                let (rows, inner, cols) = (gs.rows, gs.inner, gs.cols);
                let a0 = prep.ptrs[&m.a_view.base] as *const f32;
                let b0 = prep.ptrs[&m.b_view.base] as *const f32;
                let o = prep.ptrs[&m.out] as *mut f32;
                let batch = gs.a_offsets.len();
                let mut epi_args: Vec<*mut c_void> = match &m.epilogue {
                    Some(e) => e.buffers.iter().map(|n| prep.ptrs[n]).collect(),
                    None => Vec::new(),
                };
                if blas::get().is_none() {
                    if let Some(f) = self.gemm {
                        let args = compile::GemmArgs {
                            batch: batch as i64,
                            m: rows as i64,
                            n: cols as i64,
                            k: inner as i64,
                            a: a0,
                            a_offsets: gs.a_offsets.as_ptr(),
                            a_rows: gs.a_rows.stride(),
                            a_cols: gs.a_cols.stride(),
                            b: b0,
                            b_offsets: gs.b_offsets.as_ptr(),
                            b_rows: gs.b_rows.stride(),
                            b_cols: gs.b_cols.stride(),
                            c: o,
                            ldc: cols as i64,
                            parallel: 1,
                            epilogue: self.ranges[i],
                            epilogue_bufs: epi_args.as_mut_ptr(),
                            epilogue_sizes: prep.layout.sizes.as_ptr(),
                            seed,
                            a_row_table: gs.a_rows.table(),
                            a_col_table: gs.a_cols.table(),
                            b_row_table: gs.b_rows.table(),
                            b_col_table: gs.b_cols.table(),
                        };
                        // SAFETY: the strided views stay inside their base buffers (shape
                        // inference checked every view on the way); the output holds
                        // rows*cols per batch element; the template reads `inner` columns of
                        // A and rows of B through the given strides and offsets; the
                        // epilogue's buffers are live and of the sizes it was generated for.
                        if unsafe { f(&args) } != 0 {
                            if m.epilogue.is_none() || self.ranges[i].is_some() {
                                return;
                            }
                            // SAFETY: as for any kernel step.
                            unsafe { self.run_epilogue(i, &mut epi_args, &prep.layout.sizes, seed) };
                            return;
                        }
                    }
                }
                // A CBLAS or the `gemm` crate: one product per batch element.
                let (a0, b0, o) = (a0 as usize, b0 as usize, o as usize);
                let one = |t: usize, par: gemm::Parallelism| {
                    let (a0, b0, o) = (a0 as *const f32, b0 as *const f32, o as *mut f32);
                    // SAFETY: as above; batch elements write disjoint parts of the output.
                    let (mut pa, mut pb, pc) = unsafe {
                        (
                            a0.offset(gs.a_offsets[t] as isize),
                            b0.offset(gs.b_offsets[t] as isize),
                            o.add(t * rows * cols),
                        )
                    };
                    let mut sa = (gs.a_rows.stride() as isize, gs.a_cols.stride() as isize);
                    let mut sb = (gs.b_rows.stride() as isize, gs.b_cols.stride() as isize);
                    // Operands whose axes are not one stride each are gathered first.
                    let (ga, gb);
                    if !gs.strided() {
                        // SAFETY: the axes stay inside the base buffers, as above.
                        unsafe {
                            ga = gather(pa, rows, inner, &gs.a_rows, &gs.a_cols);
                            gb = gather(pb, inner, cols, &gs.b_rows, &gs.b_cols);
                        }
                        (pa, pb) = (ga.as_ptr(), gb.as_ptr());
                        (sa, sb) = ((inner as isize, 1), (cols as isize, 1));
                    }
                    if let Some(blas) = blas::get() {
                        // SAFETY: as above.
                        if unsafe { blas.sgemm(rows, cols, inner, pa, sa, pb, sb, pc) } {
                            return;
                        }
                    }
                    // SAFETY: as above.
                    unsafe {
                        gemm::gemm(
                            rows,
                            cols,
                            inner,
                            pc,
                            1,
                            cols as isize,
                            false,
                            pa,
                            sa.1,
                            sa.0,
                            pb,
                            sb.1,
                            sb.0,
                            0.0,
                            1.0,
                            false,
                            false,
                            false,
                            par,
                        )
                    };
                };
                // Many small products (attention's per-head matrices): one thread per product
                // beats splitting each tiny product across threads.
                if batch > 1 && rows * cols * inner <= SMALL_GEMM {
                    use rayon::prelude::*;
                    (0..batch).into_par_iter().for_each(|t| one(t, gemm::Parallelism::None));
                } else {
                    (0..batch).for_each(|t| one(t, gemm::Parallelism::Rayon(0)));
                }
                // SAFETY: as for any kernel step.
                unsafe { self.run_epilogue(i, &mut epi_args, &prep.layout.sizes, seed) };
            }
        }
    }

    /// Runs the epilogue of product step `i` over its whole output, if it has one.
    ///
    /// # Safety
    /// As for any kernel step: the epilogue's buffers are live and of its sizes.
    unsafe fn run_epilogue(&self, i: usize, bufs: &mut [*mut c_void], sizes: &[i64], seed: u64) {
        if let (Some(f), Step::MatMul(MatMulStep { epilogue: Some(_), .. })) = (self.fns[i], &self.program.steps[i]) {
            f(bufs.as_mut_ptr(), sizes.as_ptr(), seed);
        }
    }

    /// Runs the program `runs` times, timing each step: the median milliseconds per step, in
    /// program order.
    pub fn profile(&self, prep: &mut Prepared, seed: u64, runs: usize) -> Vec<f64> {
        let times = crate::device::median_step_times(self.program.steps.len(), runs, |i| {
            self.run_step(i, prep, seed);
            Ok::<(), std::convert::Infallible>(())
        });
        match times {
            Ok(t) => t,
            Err(never) => match never {},
        }
    }
}

#[cfg(test)]
pub(crate) mod tests;
