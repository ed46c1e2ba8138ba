//! The GPU behind the runtime's verbs, through cudarc: the CUDA driver (a context and one
//! stream; memory, copies and launches by raw device pointers, since the runtime places
//! every value itself), NVRTC for the device's own architecture with the on-disk cubin
//! cache, and cuBLAS for the products. Every library is found and checked before the
//! first call into it (cudarc panics on a missing one).

use super::gpu::{Batch, DevPtr, GemmCall, Gpu, GpuError};
use super::{libs, nccl, nvrtc};
use crate::dist::Collective;
use cudarc::cublas::sys as blas;
use cudarc::driver::{result, sys, CudaContext, CudaStream};
use muse_compiler::render::cuda::{Launch, Target, GPU, MAX_SIZES};
use rayon::prelude::*;
use std::ffi::{c_void, CString};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

/// One GPU: its context, stream, cuBLAS handle and loaded modules.
pub struct CudaGpu {
    ctx: Arc<CudaContext>,
    stream: Arc<CudaStream>,
    handle: blas::cublasHandle_t,
    /// Compute capability times ten (90 for an H200).
    pub arch: u32,
    name: String,
    modules: Mutex<Vec<sys::CUmodule>>,
    cache_dir: PathBuf,
    /// NCCL's communicator and the stream it reduces on, made at the first reduction.
    reducer: Mutex<Option<Reducer>>,
}

/// Data-parallel reductions: NCCL over the ranks, on a stream beside the kernels'.
struct Reducer {
    comm: nccl::Comm,
    stream: Arc<CudaStream>,
}

// SAFETY: the cuBLAS handle and modules are used only through `&self` methods that bind the
// context first and issue work on the one stream; cuBLAS handles may be used from any
// thread that has the context current, one call at a time (the runtime never calls one
// GPU from two threads at once: programs are `&mut` to execute).
unsafe impl Send for CudaGpu {}
// SAFETY: as above.
unsafe impl Sync for CudaGpu {}

/// A driver error as a message saying what was being done.
fn driver(what: &str) -> impl Fn(result::DriverError) -> GpuError + '_ {
    move |e| GpuError(format!("CUDA {what}: {e:?}"))
}

impl CudaGpu {
    /// Opens GPU `ordinal` with its kernel cache in `cache_dir`; says what is missing when
    /// the driver, a GPU, NVRTC or cuBLAS is not there.
    pub fn open(ordinal: usize, cache_dir: PathBuf) -> Result<CudaGpu, String> {
        // SAFETY: only tries to load the library (no call into it).
        if !unsafe { sys::is_culib_present() } {
            return Err("this machine has no NVIDIA driver (libcuda.so.1 not found)".into());
        }
        let ctx =
            CudaContext::new(ordinal).map_err(|e| format!("the NVIDIA driver has no usable GPU {ordinal}: {e:?}"))?;
        let (major, minor) = ctx.compute_capability().map_err(|e| format!("compute capability: {e:?}"))?;
        let name = ctx.name().unwrap_or_else(|_| "an NVIDIA GPU".into());
        libs::nvrtc()?;
        libs::cublas()?;
        let stream = ctx.new_stream().map_err(|e| format!("cannot create a CUDA stream: {e:?}"))?;
        let handle = cudarc::cublas::result::create_handle().map_err(|e| format!("cuBLAS: {e:?}"))?;
        // SAFETY: a fresh handle and a live stream of the current context.
        unsafe { cudarc::cublas::result::set_stream(handle, stream.cu_stream() as _) }
            .map_err(|e| format!("cuBLAS stream: {e:?}"))?;
        let arch = (major * 10 + minor) as u32;
        Ok(CudaGpu {
            ctx,
            stream,
            handle,
            arch,
            name,
            modules: Mutex::new(Vec::new()),
            cache_dir,
            reducer: Mutex::new(None),
        })
    }

    fn bind(&self) -> Result<(), GpuError> {
        self.ctx.bind_to_thread().map_err(driver("context"))
    }

    fn cu_stream(&self) -> sys::CUstream {
        self.stream.cu_stream()
    }
}

impl Drop for CudaGpu {
    fn drop(&mut self) {
        if self.bind().is_err() {
            return;
        }
        // The communicator goes first, its stream drained, while the context lives.
        if let Some(r) = self.reducer.lock().unwrap_or_else(|e| e.into_inner()).take() {
            let _ = r.stream.synchronize();
            drop(r);
        }
        // SAFETY: the handle and modules were created here and are not used after this; the
        // stream is drained first.
        unsafe {
            let _ = result::stream::synchronize(self.cu_stream());
            let _ = cudarc::cublas::result::destroy_handle(self.handle);
            for m in self.modules.lock().unwrap_or_else(|e| e.into_inner()).drain(..) {
                let _ = result::module::unload(m);
            }
        }
    }
}

/// Unloads modules that nothing uses yet (a load that failed half way).
fn unload(modules: &[sys::CUmodule]) {
    for &m in modules {
        // SAFETY: loaded by the failed `load`, used by no function handed out.
        let _ = unsafe { result::module::unload(m) };
    }
}

/// `x` as cuBLAS's 32-bit int, or why not.
fn int(x: i64, what: &str) -> Result<i32, GpuError> {
    i32::try_from(x).map_err(|_| GpuError(format!("cuBLAS: {what} = {x} does not fit a 32-bit int")))
}

impl Gpu for CudaGpu {
    type Func = Func;

    fn describe(&self) -> String {
        format!("{} (sm_{})", self.name, self.arch)
    }

    fn target(&self) -> &'static Target {
        &GPU
    }

    fn load(&self, units: &[String], names: &[&str]) -> Result<Vec<Func>, GpuError> {
        let opts = nvrtc::Options { arch: self.arch, report: false };
        // NVRTC compiles one unit per thread (a unit is a few dozen kernels).
        let cubins: Vec<nvrtc::Compiled> = units
            .par_iter()
            .enumerate()
            .map(|(i, u)| nvrtc::compile_cached(u, &format!("unit{i}"), &opts, &self.cache_dir))
            .collect::<Result<_, _>>()
            .map_err(|e| GpuError(e.to_string()))?;
        self.bind()?;
        let mut loaded = Vec::new();
        for c in &cubins {
            // SAFETY: a cubin NVRTC made for this device's architecture.
            match unsafe { result::module::load_data(c.cubin.as_ptr() as *const c_void) } {
                Ok(m) => loaded.push(m),
                Err(e) => {
                    unload(&loaded);
                    return Err(driver("module")(e));
                }
            }
        }
        let mut funcs = Vec::new();
        for name in names {
            let cname = CString::new(*name).map_err(|_| GpuError(format!("kernel name {name:?}")))?;
            // SAFETY: modules loaded above; a missing name is an error, not undefined.
            let f = loaded.iter().find_map(|&m| unsafe { result::module::get_function(m, cname.clone()) }.ok());
            let Some(f) = f else {
                unload(&loaded);
                return Err(GpuError(format!("kernel `{name}` is in none of the compiled units")));
            };
            funcs.push(Func(f));
        }
        self.modules.lock().unwrap_or_else(|e| e.into_inner()).extend(loaded);
        Ok(funcs)
    }

    fn alloc(&self, bytes: usize) -> Result<DevPtr, GpuError> {
        self.bind()?;
        // SAFETY: plain allocation and a memset of what it returned.
        unsafe {
            let p = result::malloc_sync(bytes.max(1)).map_err(|e| {
                let (free, total) = result::mem_get_info().unwrap_or((0, 0));
                GpuError(format!(
                    "cannot allocate {bytes} bytes on {} ({free} of {total} bytes free): {e:?}",
                    self.describe()
                ))
            })?;
            result::memset_d8_async(p, 0, bytes.max(1), self.cu_stream()).map_err(driver("memset"))?;
            Ok(p)
        }
    }

    fn free(&self, p: DevPtr) {
        if self.bind().is_ok() {
            // SAFETY: `p` came from `alloc`; work using it was ordered before on the stream,
            // which is drained first.
            unsafe {
                let _ = result::stream::synchronize(self.cu_stream());
                let _ = result::free_sync(p);
            }
        }
    }

    fn upload(&self, dst: DevPtr, src: &[u8]) -> Result<(), GpuError> {
        if src.is_empty() {
            return Ok(());
        }
        self.bind()?;
        // SAFETY: the caller's `dst` holds `src.len()` bytes; the stream is drained before
        // `src` may go away.
        unsafe {
            result::memcpy_htod_async(dst, src, self.cu_stream()).map_err(driver("copy to the GPU"))?;
            result::stream::synchronize(self.cu_stream()).map_err(driver("synchronize"))
        }
    }

    fn download(&self, src: DevPtr, dst: &mut [u8]) -> Result<(), GpuError> {
        if dst.is_empty() {
            return Ok(());
        }
        self.bind()?;
        // SAFETY: the caller's `src` holds `dst.len()` bytes; drained before returning.
        unsafe {
            result::memcpy_dtoh_async(dst, src, self.cu_stream()).map_err(driver("copy from the GPU"))?;
            result::stream::synchronize(self.cu_stream()).map_err(driver("synchronize"))
        }
    }

    fn zero(&self, p: DevPtr, bytes: usize) -> Result<(), GpuError> {
        self.bind()?;
        // SAFETY: the caller's `p` holds `bytes`.
        unsafe { result::memset_d8_async(p, 0, bytes, self.cu_stream()) }.map_err(driver("memset"))
    }

    fn copy(&self, dst: DevPtr, src: DevPtr, bytes: usize) -> Result<(), GpuError> {
        self.bind()?;
        // SAFETY: the caller's buffers hold `bytes`.
        unsafe { result::memcpy_dtod_async(dst, src, bytes, self.cu_stream()) }.map_err(driver("copy"))
    }

    fn launch(
        &self,
        f: Func,
        l: &Launch,
        bufs: &[DevPtr],
        sizes: &[i64; MAX_SIZES],
        seed: u64,
    ) -> Result<(), GpuError> {
        self.bind()?;
        // cuLaunchKernel takes the address of each argument: the pointers, the sizes struct
        // (`MuseSizes`, 16 long longs by value) and the seed.
        let mut ptrs: Vec<DevPtr> = bufs.to_vec();
        let (mut sizes, mut seed) = (*sizes, seed);
        let mut params: Vec<*mut c_void> = ptrs.iter_mut().map(|p| p as *mut DevPtr as *mut c_void).collect();
        params.push(&mut sizes as *mut [i64; MAX_SIZES] as *mut c_void);
        params.push(&mut seed as *mut u64 as *mut c_void);
        // SAFETY: the parameters match the generated kernel's signature (buffers in order,
        // then `MuseSizes`, then the seed); each buffer is device memory of the kernel's size.
        unsafe {
            result::launch_kernel(f.0, (l.grid, 1, 1), (l.block, 1, 1), 0, self.cu_stream(), &mut params)
                .map_err(driver("launch"))
        }
    }

    fn gemm(&self, g: &GemmCall) -> Result<(), GpuError> {
        self.bind()?;
        let op = |t: bool| if t { blas::cublasOperation_t::CUBLAS_OP_T } else { blas::cublasOperation_t::CUBLAS_OP_N };
        let (m, n, k) = (int(g.m, "m")?, int(g.n, "n")?, int(g.k, "k")?);
        let (lda, ldb, ldc) = (int(g.op_a.ld, "lda")?, int(g.op_b.ld, "ldb")?, int(g.ldc, "ldc")?);
        let count = int(g.count, "batch")?;
        let (alpha, beta) = (1.0f32, 0.0f32);
        // SAFETY: the runtime sized every operand for these dimensions and leading
        // dimensions (the simulation checks the same extents on every call).
        let status = unsafe {
            if g.bf16 {
                // bf16 operands and result, f32 accumulation.
                let (t, compute, algo) = (
                    blas::cudaDataType::CUDA_R_16BF,
                    blas::cublasComputeType_t::CUBLAS_COMPUTE_32F,
                    blas::cublasGemmAlgo_t::CUBLAS_GEMM_DFALT,
                );
                let (alpha, beta) = (&alpha as *const f32 as *const c_void, &beta as *const f32 as *const c_void);
                match g.batch {
                    Batch::Strided { a, b, c } => blas::cublasGemmStridedBatchedEx(
                        self.handle,
                        op(g.op_a.trans),
                        op(g.op_b.trans),
                        m,
                        n,
                        k,
                        alpha,
                        g.a as *const c_void,
                        t,
                        lda,
                        a,
                        g.b as *const c_void,
                        t,
                        ldb,
                        b,
                        beta,
                        g.c as *mut c_void,
                        t,
                        ldc,
                        c,
                        count,
                        compute,
                        algo,
                    ),
                    Batch::Pointers => blas::cublasGemmBatchedEx(
                        self.handle,
                        op(g.op_a.trans),
                        op(g.op_b.trans),
                        m,
                        n,
                        k,
                        alpha,
                        g.a as *const *const c_void,
                        t,
                        lda,
                        g.b as *const *const c_void,
                        t,
                        ldb,
                        beta,
                        g.c as *const *mut c_void,
                        t,
                        ldc,
                        count,
                        compute,
                        algo,
                    ),
                }
            } else {
                match g.batch {
                    Batch::Strided { a, b, c } => blas::cublasSgemmStridedBatched(
                        self.handle,
                        op(g.op_a.trans),
                        op(g.op_b.trans),
                        m,
                        n,
                        k,
                        &alpha,
                        g.a as *const f32,
                        lda,
                        a,
                        g.b as *const f32,
                        ldb,
                        b,
                        &beta,
                        g.c as *mut f32,
                        ldc,
                        c,
                        count,
                    ),
                    Batch::Pointers => blas::cublasSgemmBatched(
                        self.handle,
                        op(g.op_a.trans),
                        op(g.op_b.trans),
                        m,
                        n,
                        k,
                        &alpha,
                        g.a as *const *const f32,
                        lda,
                        g.b as *const *const f32,
                        ldb,
                        &beta,
                        g.c as *const *mut f32,
                        ldc,
                        count,
                    ),
                }
            }
        };
        status.result().map_err(|e| GpuError(format!("cuBLAS product {g:?}: {e:?}")))
    }

    fn synchronize(&self) -> Result<(), GpuError> {
        self.bind()?;
        self.stream.synchronize().map_err(driver("synchronize"))
    }

    fn all_reduce(&self, ranks: &dyn Collective, p: DevPtr, count: usize, bf16: bool) -> Result<(), GpuError> {
        self.bind()?;
        let mut guard = self.reducer.lock().unwrap_or_else(|e| e.into_inner());
        if guard.as_ref().is_some_and(|r| (r.comm.rank, r.comm.size) != (ranks.rank(), ranks.size())) {
            *guard = None;
        }
        if guard.is_none() {
            let comm = nccl::Comm::join(ranks).map_err(GpuError)?;
            let stream = self.stream.fork().map_err(driver("a stream for NCCL"))?;
            *guard = Some(Reducer { comm, stream });
        }
        let r = guard.as_ref().expect("made above");
        r.stream.join(&self.stream).map_err(driver("ordering a reduction after the kernels"))?;
        // SAFETY: `p` holds `count` elements of the runtime's device memory on this context;
        // the stream is the reducer's own, live while it is.
        let done = unsafe { r.comm.all_reduce(p, count, bf16, r.stream.cu_stream() as *mut c_void) };
        if let Err(e) = done {
            // The other ranks would wait for this one: abort the communicator.
            if let Some(r) = guard.take() {
                r.comm.abort();
            }
            return Err(GpuError(e));
        }
        Ok(())
    }

    fn join_reductions(&self) -> Result<(), GpuError> {
        self.bind()?;
        match self.reducer.lock().unwrap_or_else(|e| e.into_inner()).as_ref() {
            Some(r) => self.stream.join(&r.stream).map_err(driver("waiting for the reductions")),
            None => Ok(()),
        }
    }
}

/// A loaded kernel (a `CUfunction`, valid while its GPU keeps its module loaded).
#[derive(Clone, Copy, Debug)]
pub struct Func(sys::CUfunction);
// SAFETY: a function handle is an opaque id the driver accepts from any thread.
unsafe impl Send for Func {}
// SAFETY: as above; it is never dereferenced on the host.
unsafe impl Sync for Func {}
