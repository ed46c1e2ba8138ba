//! The CPU simulation behind the runtime's verbs (the `cuda-sim` device): generated CUDA C
//! compiled by the system C++ compiler against kernels/cuda_sim.h (threads as fibers in a
//! random order, shuffles, barriers, NaN-poisoned shared memory), "device memory" in host
//! allocations, and products computed by the column-major definition cuBLAS documents.
//! Every copy, memset and product is checked to stay inside one allocation, and every
//! product against cuBLAS's own argument rules, so a runtime bug that a GPU would turn into
//! a wrong answer or a fault fails here with a message.

use super::gpu::{bf16_bits, bf16_value, Batch, DevPtr, GemmCall, Gpu, GpuError, Operand};
use crate::cpu::compile::{self, CompilerSettings, Library, SimFn};
use crate::dist::Collective;
use muse_compiler::render::cuda::{Launch, Target, MAX_SIZES, SIM};
use std::collections::BTreeMap;
use std::ffi::c_void;
use std::sync::{Arc, Mutex};

/// The CUDA-semantics header generated CUDA C compiles against on the CPU.
pub const HEADER: &str = include_str!("../../../kernels/cuda_sim.h");

/// The simulated GPU.
pub struct SimGpu {
    settings: CompilerSettings,
    /// Live allocations by start address, aligned as `cudaMalloc`'s are enough for vector
    /// loads (16 bytes).
    memory: Mutex<BTreeMap<DevPtr, Vec<Chunk>>>,
    /// Loaded kernel libraries (kept loaded while the device lives).
    libraries: Mutex<Vec<Arc<Library>>>,
}

impl SimGpu {
    /// The simulation, compiling with `settings` (see [`CompilerSettings::cuda_sim`]).
    pub fn new(settings: CompilerSettings) -> SimGpu {
        SimGpu { settings, memory: Mutex::new(BTreeMap::new()), libraries: Mutex::new(Vec::new()) }
    }

    /// Checks that `[p, p + bytes)` lies inside one live allocation (for no bytes: that `p`
    /// is in one or at its end).
    fn check(&self, p: DevPtr, bytes: usize, what: &str) -> Result<(), GpuError> {
        let memory = self.memory.lock().unwrap_or_else(|e| e.into_inner());
        let inside = memory
            .range(..=p)
            .next_back()
            .is_some_and(|(&start, chunks)| p + bytes as u64 <= start + 16 * chunks.len() as u64);
        if inside {
            Ok(())
        } else {
            Err(GpuError(format!("cuda-sim: {what} of {bytes} bytes at {p:#x} is outside every allocation")))
        }
    }
}

/// 16 bytes of simulated device memory, aligned to 16.
#[derive(Clone, Copy, Default)]
#[repr(C, align(16))]
struct Chunk([u8; 16]);

/// The last element (in elements from its start) cuBLAS reads of an operand stored as
/// `rows x cols` column-major with leading dimension `ld`.
fn extent(rows: i64, cols: i64, ld: i64) -> i64 {
    if rows == 0 || cols == 0 {
        0
    } else {
        (rows - 1) + (cols - 1) * ld + 1
    }
}

/// The stored matrix's rows and columns for `op(X)` of `rows x cols`.
fn stored(o: Operand, rows: i64, cols: i64) -> (i64, i64) {
    if o.trans {
        (cols, rows)
    } else {
        (rows, cols)
    }
}

impl Gpu for SimGpu {
    type Func = SimFn;

    fn describe(&self) -> String {
        "the CUDA simulation on the CPU (kernels/cuda_sim.h)".into()
    }

    fn target(&self) -> &'static Target {
        &SIM
    }

    fn load(&self, units: &[String], names: &[&str]) -> Result<Vec<SimFn>, GpuError> {
        let units: Vec<String> = units.iter().map(|u| format!("#define MUSE_SIM 1\n{HEADER}\n{u}")).collect();
        let lib = compile::compile(&units, &self.settings).map_err(|e| GpuError(e.to_string()))?;
        let funcs = names.iter().map(|n| lib.sim(n).map_err(|e| GpuError(e.to_string()))).collect();
        self.libraries.lock().unwrap_or_else(|e| e.into_inner()).push(lib);
        funcs
    }

    fn alloc(&self, bytes: usize) -> Result<DevPtr, GpuError> {
        let n = bytes.div_ceil(16).max(1);
        let mut chunks = Vec::new();
        chunks.try_reserve_exact(n).map_err(|_| GpuError(format!("cannot allocate {bytes} bytes")))?;
        chunks.resize(n, Chunk::default());
        let p = chunks.as_mut_ptr() as DevPtr;
        self.memory.lock().unwrap_or_else(|e| e.into_inner()).insert(p, chunks);
        Ok(p)
    }

    fn free(&self, p: DevPtr) {
        self.memory.lock().unwrap_or_else(|e| e.into_inner()).remove(&p);
    }

    fn upload(&self, dst: DevPtr, src: &[u8]) -> Result<(), GpuError> {
        self.check(dst, src.len(), "upload")?;
        // SAFETY: checked to lie inside a live allocation.
        unsafe { std::ptr::copy_nonoverlapping(src.as_ptr(), dst as *mut u8, src.len()) };
        Ok(())
    }

    fn download(&self, src: DevPtr, dst: &mut [u8]) -> Result<(), GpuError> {
        self.check(src, dst.len(), "download")?;
        // SAFETY: as above.
        unsafe { std::ptr::copy_nonoverlapping(src as *const u8, dst.as_mut_ptr(), dst.len()) };
        Ok(())
    }

    fn zero(&self, p: DevPtr, bytes: usize) -> Result<(), GpuError> {
        self.check(p, bytes, "memset")?;
        // SAFETY: as above.
        unsafe { std::ptr::write_bytes(p as *mut u8, 0, bytes) };
        Ok(())
    }

    fn copy(&self, dst: DevPtr, src: DevPtr, bytes: usize) -> Result<(), GpuError> {
        self.check(src, bytes, "copy source")?;
        self.check(dst, bytes, "copy destination")?;
        // SAFETY: as above (a device copy may overlap: `copy`, not `copy_nonoverlapping`).
        unsafe { std::ptr::copy(src as *const u8, dst as *mut u8, bytes) };
        Ok(())
    }

    fn launch(
        &self,
        f: SimFn,
        l: &Launch,
        bufs: &[DevPtr],
        sizes: &[i64; MAX_SIZES],
        seed: u64,
    ) -> Result<(), GpuError> {
        for &b in bufs {
            self.check(b, 0, "kernel argument")?;
        }
        let mut args: Vec<*mut c_void> = bufs.iter().map(|&b| b as *mut c_void).collect();
        // SAFETY: each buffer is a live allocation the runtime sized for the kernel at these
        // sizes; the entry point runs the kernel's grid of fibers and returns when done.
        unsafe { f(args.as_mut_ptr(), sizes.as_ptr(), seed, i64::from(l.grid), i64::from(l.block)) };
        Ok(())
    }

    fn gemm(&self, g: &GemmCall) -> Result<(), GpuError> {
        let bad = |why: String| GpuError(format!("cuda-sim: cuBLAS would refuse {g:?}: {why}"));
        if g.m < 0 || g.n < 0 || g.k < 0 || g.count < 0 {
            return Err(bad("a negative dimension".into()));
        }
        let (ra, ca) = stored(g.op_a, g.m, g.k);
        let (rb, cb) = stored(g.op_b, g.k, g.n);
        for (what, ld, rows) in [("lda", g.op_a.ld, ra), ("ldb", g.op_b.ld, rb), ("ldc", g.ldc, g.m)] {
            if ld < rows.max(1) {
                return Err(bad(format!("{what} = {ld} < max(1, {rows})")));
            }
        }
        let (ea, eb, ec) = (extent(ra, ca, g.op_a.ld), extent(rb, cb, g.op_b.ld), extent(g.m, g.n, g.ldc));
        let esize: i64 = if g.bf16 { 2 } else { 4 };
        for t in 0..g.count {
            let (a, b, c) = match g.batch {
                Batch::Strided { a, b, c } => {
                    let at = |p: DevPtr, s: i64| p.wrapping_add_signed(esize * t * s);
                    (at(g.a, a), at(g.b, b), at(g.c, c))
                }
                Batch::Pointers => {
                    let mut p = [0u8; 24];
                    for (i, arr) in [g.a, g.b, g.c].into_iter().enumerate() {
                        self.download(arr + 8 * t as u64, &mut p[8 * i..8 * i + 8])?;
                    }
                    let word = |i: usize| u64::from_le_bytes(p[8 * i..8 * i + 8].try_into().expect("8 bytes"));
                    (word(0), word(1), word(2))
                }
            };
            self.check(a, (esize * ea) as usize, "product operand A")?;
            self.check(b, (esize * eb) as usize, "product operand B")?;
            self.check(c, (esize * ec) as usize, "product result C")?;
            // SAFETY (both): every index lies within the extents checked above.
            let read = |p: DevPtr, e: i64| unsafe {
                if g.bf16 {
                    bf16_value(*(p as *const u16).offset(e as isize))
                } else {
                    *(p as *const f32).offset(e as isize)
                }
            };
            let write = |p: DevPtr, e: i64, v: f32| unsafe {
                if g.bf16 {
                    *(p as *mut u16).offset(e as isize) = bf16_bits(v);
                } else {
                    *(p as *mut f32).offset(e as isize) = v;
                }
            };
            let at = |o: Operand, i: i64, j: i64| if o.trans { j + i * o.ld } else { i + j * o.ld };
            for j in 0..g.n {
                for i in 0..g.m {
                    let acc: f32 = (0..g.k).map(|l| read(a, at(g.op_a, i, l)) * read(b, at(g.op_b, l, j))).sum();
                    write(c, i + j * g.ldc, acc);
                }
            }
        }
        Ok(())
    }

    fn synchronize(&self) -> Result<(), GpuError> {
        Ok(())
    }

    fn all_reduce(&self, ranks: &dyn Collective, p: DevPtr, count: usize, bf16: bool) -> Result<(), GpuError> {
        self.check(p, count * if bf16 { 2 } else { 4 }, "all-reduce")?;
        super::gpu::all_reduce_on_host(self, ranks, p, count, bf16)
    }

    fn join_reductions(&self) -> Result<(), GpuError> {
        Ok(())
    }
}
