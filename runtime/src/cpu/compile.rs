//! Compiling generated C with the system compiler, with a kernel cache in memory and on
//! disk keyed by a hash of the source, the compiler command, its version and the target.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Arc, Mutex, OnceLock};

pub use crate::cache::{default_cache_dir, hash128};

/// How generated C is compiled. Defaults: `cc -O3 -march=native -fopenmp -shared -fPIC`;
/// `MUSE_CC` and `MUSE_CFLAGS` override the compiler and the flags, `MUSE_CACHE_DIR` the cache.
#[derive(Clone, Debug)]
pub struct CompilerSettings {
    /// Compiler program.
    pub cc: String,
    /// Flags before the source file (the output flags `-shared -fPIC -o` are always added).
    pub flags: Vec<String>,
    /// Folder of compiled kernels.
    pub cache_dir: PathBuf,
    /// Matrix products through the template of kernels/gemm.c (AVX-512; elsewhere, and
    /// when false, the `gemm` crate). Default true; `MUSE_GEMM=crate` makes it false.
    pub gemm_template: bool,
    /// Compile the CUDA renderer's source for the CPU through kernels/cuda_sim.h (the
    /// `cuda-sim` device) instead of generated C.
    pub cuda_sim: bool,
}

impl Default for CompilerSettings {
    fn default() -> Self {
        let cc = std::env::var("MUSE_CC").unwrap_or_else(|_| "cc".into());
        let flags = std::env::var("MUSE_CFLAGS")
            .map(|f| f.split_whitespace().map(str::to_string).collect())
            .unwrap_or_else(|_| ["-O3", "-march=native", "-fopenmp"].iter().map(|s| s.to_string()).collect());
        let gemm_template = std::env::var("MUSE_GEMM").map_or(true, |v| v != "crate");
        CompilerSettings { cc, flags, cache_dir: default_cache_dir(), gemm_template, cuda_sim: false }
    }
}

impl CompilerSettings {
    /// Settings of the `cuda-sim` device: the C++ compiler (`MUSE_CXX`, default `c++`) at
    /// `-O2`, C++17; products through the `gemm` crate (the GEMM template is C).
    pub fn cuda_sim() -> Self {
        let cc = std::env::var("MUSE_CXX").unwrap_or_else(|_| "c++".into());
        let flags = ["-O2", "-std=c++17"].iter().map(|s| s.to_string()).collect();
        CompilerSettings { cc, flags, cache_dir: default_cache_dir(), gemm_template: false, cuda_sim: true }
    }
}

/// Why generated C could not be compiled or loaded.
#[derive(Clone, Debug, PartialEq)]
pub struct CompileError {
    /// What went wrong, with the compiler's own message.
    pub message: String,
    /// The generated source, kept for the user to read.
    pub source_path: Option<PathBuf>,
}

impl std::fmt::Display for CompileError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.message)?;
        if let Some(p) = &self.source_path {
            write!(f, "\n  generated source: {}", p.display())?;
        }
        Ok(())
    }
}

impl std::error::Error for CompileError {}

fn compiler_version(cc: &str) -> String {
    static CACHE: OnceLock<Mutex<std::collections::HashMap<String, String>>> = OnceLock::new();
    let map = CACHE.get_or_init(Default::default);
    let mut m = map.lock().unwrap_or_else(|e| e.into_inner());
    m.entry(cc.to_string())
        .or_insert_with(|| {
            Command::new(cc)
                .arg("--version")
                .output()
                .map(|o| String::from_utf8_lossy(&o.stdout).lines().next().unwrap_or("").to_string())
                .unwrap_or_default()
        })
        .clone()
}

/// A loaded shared library of kernels.
pub struct Library {
    lib: libloading::Library,
    /// Where the library is on disk.
    pub path: PathBuf,
    /// Whether it came from the cache rather than a fresh compilation.
    pub cached: bool,
}

/// Signature of every generated kernel.
pub type KernelFn = unsafe extern "C" fn(*mut *mut std::ffi::c_void, *const i64, u64);

/// Signature of a pointwise kernel's element-range entry point (`render::c::render_range`).
pub type RangeFn = unsafe extern "C" fn(*mut *mut std::ffi::c_void, *const i64, u64, i64, i64);

/// The arguments of `muse_sgemm` (kernels/gemm.c, `struct muse_gemm`, same layout): for each
/// of `batch` elements, `c = a @ b` with `a` (m x k) and `b` (k x n) read through row and
/// column strides from their offsets, `c` contiguous with row stride `ldc`; then the
/// epilogue, if any, over each finished tile.
#[repr(C)]
pub struct GemmArgs {
    /// Products.
    pub batch: i64,
    /// Rows of each product.
    pub m: i64,
    /// Columns of each product.
    pub n: i64,
    /// Inner length.
    pub k: i64,
    /// Base of the left operands.
    pub a: *const f32,
    /// Where each left operand starts (elements from `a`), `batch` of them.
    pub a_offsets: *const i64,
    /// Row stride of a left operand.
    pub a_rows: i64,
    /// Column stride of a left operand.
    pub a_cols: i64,
    /// Base of the right operands.
    pub b: *const f32,
    /// Where each right operand starts.
    pub b_offsets: *const i64,
    /// Row stride of a right operand.
    pub b_rows: i64,
    /// Column stride of a right operand.
    pub b_cols: i64,
    /// The results, one after another.
    pub c: *mut f32,
    /// Row stride of a result.
    pub ldc: i64,
    /// Whether to use the OpenMP threads (1) or only the calling thread (0).
    pub parallel: i32,
    /// Applied to elements `lo..hi` of the results once they are final.
    pub epilogue: Option<RangeFn>,
    /// The epilogue kernel's buffers.
    pub epilogue_bufs: *mut *mut std::ffi::c_void,
    /// The epilogue kernel's symbolic sizes.
    pub epilogue_sizes: *const i64,
    /// The run's seed (for random ops in the epilogue).
    pub seed: u64,
    /// Offset of each row of a left operand, replacing `a_rows` (null: use the stride).
    pub a_row_table: *const i64,
    /// Offset of each column of a left operand, replacing `a_cols` (null: the stride).
    pub a_col_table: *const i64,
    /// Offset of each row of a right operand, replacing `b_rows` (null: the stride).
    pub b_row_table: *const i64,
    /// Offset of each column of a right operand, replacing `b_cols` (null: the stride).
    pub b_col_table: *const i64,
}

/// Signature of a kernel's entry point under the CUDA simulation (`<name>_sim`, see
/// `render::cuda`): buffers, the 16 sizes, the seed, then the grid and block.
pub type SimFn = unsafe extern "C" fn(*mut *mut std::ffi::c_void, *const i64, u64, i64, i64);

/// Signature of `muse_sgemm`; returns 0 when it cannot run here (no AVX-512, or an epilogue
/// with padded rows), having done nothing.
pub type GemmFn = unsafe extern "C" fn(*const GemmArgs) -> i32;

impl Library {
    /// The matrix-product template's entry point.
    pub fn gemm(&self) -> Result<GemmFn, CompileError> {
        // SAFETY: kernels/gemm.c defines `muse_sgemm` with the `GemmFn` signature.
        unsafe {
            self.lib.get::<GemmFn>(b"muse_sgemm").map(|s| *s).map_err(|e| CompileError {
                message: format!("`muse_sgemm` is missing from {}: {e}", self.path.display()),
                source_path: None,
            })
        }
    }

    /// The element-range entry point of kernel `name`.
    pub fn range(&self, name: &str) -> Result<RangeFn, CompileError> {
        let symbol = format!("{name}_range");
        // SAFETY: render::c::render_range defines it with the `RangeFn` signature.
        unsafe {
            self.lib.get::<RangeFn>(symbol.as_bytes()).map(|s| *s).map_err(|e| CompileError {
                message: format!("`{symbol}` is missing from {}: {e}", self.path.display()),
                source_path: None,
            })
        }
    }

    /// The CUDA simulation's entry point of kernel `name`.
    pub fn sim(&self, name: &str) -> Result<SimFn, CompileError> {
        let symbol = format!("{name}_sim");
        // SAFETY: render::cuda::render_kernel defines it with the `SimFn` signature.
        unsafe {
            self.lib.get::<SimFn>(symbol.as_bytes()).map(|s| *s).map_err(|e| CompileError {
                message: format!("`{symbol}` is missing from {}: {e}", self.path.display()),
                source_path: None,
            })
        }
    }

    /// The kernel function called `name`.
    pub fn kernel(&self, name: &str) -> Result<KernelFn, CompileError> {
        // SAFETY: every generated kernel has the `KernelFn` signature (render::c).
        unsafe {
            self.lib.get::<KernelFn>(name.as_bytes()).map(|s| *s).map_err(|e| CompileError {
                message: format!("kernel `{name}` is missing from {}: {e}", self.path.display()),
                source_path: None,
            })
        }
    }
}

fn loaded() -> &'static Mutex<std::collections::HashMap<String, Arc<Library>>> {
    static L: OnceLock<Mutex<std::collections::HashMap<String, Arc<Library>>>> = OnceLock::new();
    L.get_or_init(Default::default)
}

/// Forgets the libraries loaded by this process, so the next compilation looks in the disk
/// cache as a new process would.
pub fn forget_loaded() {
    loaded().lock().unwrap_or_else(|e| e.into_inner()).clear();
}

/// Compiles translation units (or finds their library in the cache) and loads the
/// library. The units compile in parallel, one compiler process per core, then link.
pub fn compile(units: &[String], settings: &CompilerSettings) -> Result<Arc<Library>, CompileError> {
    let version = compiler_version(&settings.cc);
    let mut parts: Vec<&[u8]> = units.iter().map(|u| u.as_bytes()).collect();
    let flags = settings.flags.join(" ");
    // What `-march=native` means on this CPU: a cache shared between machines must not hand
    // one code the other cannot run.
    let target = target_macros(&settings.cc, &settings.flags);
    parts.extend([
        settings.cc.as_bytes(),
        flags.as_bytes(),
        version.as_bytes(),
        target.as_bytes(),
        std::env::consts::ARCH.as_bytes(),
        std::env::consts::OS.as_bytes(),
    ]);
    let key = hash128(&parts);
    if let Some(l) = loaded().lock().unwrap_or_else(|e| e.into_inner()).get(&key) {
        return Ok(l.clone());
    }
    let dir = &settings.cache_dir;
    std::fs::create_dir_all(dir).map_err(|e| CompileError {
        message: format!(
            "cannot create the kernel cache {}: {e} (set MUSE_CACHE_DIR to another folder)",
            dir.display()
        ),
        source_path: None,
    })?;
    let so_path = dir.join(format!("{key}.so"));
    let found = crate::cache::read_verified(&so_path).unwrap_or_else(|why| {
        muse_compiler::note!("kernel cache: {} {why}; compiling it again", so_path.display());
        None
    });
    let cached = found.is_some();
    let bytes = match found {
        Some(b) => b,
        None => build(units, settings, dir, &key, &so_path)?,
    };
    let lib = load_private_copy(&bytes, dir, &key).map_err(|e| CompileError {
        message: format!("cannot load {}: {e}", so_path.display()),
        source_path: Some(dir.join(format!("{key}-0.c"))),
    })?;
    let lib = Arc::new(Library { lib, path: so_path, cached });
    loaded().lock().unwrap_or_else(|e| e.into_inner()).insert(key, lib.clone());
    Ok(lib)
}

/// Loads verified library bytes from a file of this process's own, unlinked once loaded:
/// the mapping can then not be truncated or overwritten under the running code by anyone
/// writing to the shared cache entry (which would be SIGBUS or SIGSEGV, not an error).
fn load_private_copy(bytes: &[u8], dir: &Path, key: &str) -> Result<libloading::Library, String> {
    let private = dir.join(format!(".{key}.so.tmp-load-{}", unique_suffix()));
    std::fs::write(&private, bytes).map_err(|e| format!("cannot write {}: {e}", private.display()))?;
    // SAFETY: the library is generated C with no initialisers that could misbehave, and its
    // bytes are those compiled for this key (checksum verified).
    let lib = unsafe { libloading::Library::new(&private) }.map_err(|e| e.to_string());
    let _ = std::fs::remove_file(&private);
    lib
}

/// The compiler's predefined macros under these flags (`-E -dM`): they name the instruction
/// set extensions `-march=native` turns on here. Asked once per compiler and flags.
pub(crate) fn target_macros(cc: &str, flags: &[String]) -> String {
    static CACHE: OnceLock<Mutex<std::collections::HashMap<String, String>>> = OnceLock::new();
    let map = CACHE.get_or_init(Default::default);
    let mut m = map.lock().unwrap_or_else(|e| e.into_inner());
    m.entry(format!("{cc} {}", flags.join(" ")))
        .or_insert_with(|| {
            Command::new(cc)
                .args(flags)
                .args(["-E", "-dM", "-x", "c", "-"])
                .stdin(std::process::Stdio::null())
                .stderr(std::process::Stdio::null())
                .output()
                .map(|o| {
                    let mut lines: Vec<&str> = std::str::from_utf8(&o.stdout).unwrap_or("").lines().collect();
                    lines.sort_unstable();
                    lines.join("\n")
                })
                .unwrap_or_default()
        })
        .clone()
}

/// Compiles and links the units; installs the library in the cache (checksum verified) and
/// returns its bytes.
fn build(
    units: &[String],
    settings: &CompilerSettings,
    dir: &Path,
    key: &str,
    so_path: &Path,
) -> Result<Vec<u8>, CompileError> {
    // Unique per build, not just per process: two threads may build the same library.
    let pid = unique_suffix();
    let run_err = |e: std::io::Error, src: &Path| CompileError {
        message: format!("cannot run the C compiler `{}`: {e} (install one, or set MUSE_CC)", settings.cc),
        source_path: Some(src.to_path_buf()),
    };
    let mut objects = Vec::new();
    let mut children = Vec::new();
    let width = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(2);
    for (i, unit) in units.iter().enumerate() {
        let src = dir.join(format!("{key}-{i}.c"));
        write_atomic(&src, unit.as_bytes())?;
        let obj = dir.join(format!("{key}-{i}.o.tmp-{pid}"));
        let child = Command::new(&settings.cc)
            .args(&settings.flags)
            .args(["-fPIC", "-c", "-o"])
            .arg(&obj)
            .arg(&src)
            .stderr(std::process::Stdio::piped())
            .spawn()
            .map_err(|e| run_err(e, &src))?;
        children.push((child, src));
        objects.push(obj);
        if children.len() >= width {
            let (c, src) = children.remove(0);
            wait(c, &src, settings)?;
        }
    }
    for (c, src) in children {
        wait(c, &src, settings)?;
    }
    let tmp = dir.join(format!("{key}.so.tmp-{pid}"));
    let first = dir.join(format!("{key}-0.c"));
    let out = Command::new(&settings.cc)
        .args(&settings.flags)
        .args(["-shared", "-o"])
        .arg(&tmp)
        .args(&objects)
        .output()
        .map_err(|e| run_err(e, &first))?;
    for o in &objects {
        let _ = std::fs::remove_file(o);
    }
    if !out.status.success() {
        let _ = std::fs::remove_file(&tmp);
        return Err(CompileError {
            message: format!("linking generated kernels failed:\n{}", String::from_utf8_lossy(&out.stderr).trim_end()),
            source_path: Some(first),
        });
    }
    let bytes = std::fs::read(&tmp);
    let _ = std::fs::remove_file(&tmp);
    let bytes = bytes.map_err(|e| CompileError {
        message: format!("cannot read the linked kernels {}: {e}", tmp.display()),
        source_path: Some(first.clone()),
    })?;
    crate::cache::write_verified(so_path, &bytes).map_err(|e| CompileError {
        message: format!("cannot write the compiled kernels into the cache {}: {e}", dir.display()),
        source_path: Some(first),
    })?;
    Ok(bytes)
}

fn wait(child: std::process::Child, src: &Path, settings: &CompilerSettings) -> Result<(), CompileError> {
    let out = child.wait_with_output().map_err(|e| CompileError {
        message: format!("the C compiler `{}` did not finish: {e}", settings.cc),
        source_path: Some(src.to_path_buf()),
    })?;
    if !out.status.success() {
        return Err(CompileError {
            message: format!(
                "the C compiler `{}` failed on generated kernels:\n{}",
                settings.cc,
                String::from_utf8_lossy(&out.stderr).trim_end()
            ),
            source_path: Some(src.to_path_buf()),
        });
    }
    Ok(())
}

/// A name suffix no other build in this or another process uses at the same time.
fn unique_suffix() -> String {
    static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    format!("{}-{}", std::process::id(), NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed))
}

fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), CompileError> {
    crate::cache::write_atomic(path, bytes)
        .map_err(|e| CompileError { message: format!("cannot write {}: {e}", path.display()), source_path: None })
}
