//! Finding CUDA's libraries. cudarc loads them by name at run time (so the build and every
//! CPU run need no CUDA), but NVRTC from PyPI (what scripts/fetch-cuda.sh fetches, or a
//! Python's `nvidia-*` packages) lives in a folder the loader does not search. The library
//! is loaded here first, by path and globally; a later load by name then finds it.

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

/// The CUDA release whose pieces scripts/fetch-cuda.sh fetches.
pub const PINNED: &str = "13.0.88";

/// The folder scripts/fetch-cuda.sh fills: `MUSE_CUDA_HOME`, else
/// `$XDG_CACHE_HOME/muse/cuda-13.0.88` (`~/.cache/...`).
pub fn cuda_home() -> PathBuf {
    if let Some(h) = std::env::var_os("MUSE_CUDA_HOME").filter(|h| !h.is_empty()) {
        return PathBuf::from(h);
    }
    let base = std::env::var_os("XDG_CACHE_HOME").filter(|h| !h.is_empty()).map(PathBuf::from).unwrap_or_else(|| {
        std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")).unwrap_or_else(std::env::temp_dir)
    });
    base.join("muse").join(format!("cuda-{PINNED}"))
}

/// Folders searched for CUDA's libraries, in order: `MUSE_CUDA_LIBS` (separated by `:`),
/// the fetched wheels' `nvidia/cu13/lib`, `$CUDA_HOME/lib64`, `/usr/local/cuda/lib64`.
pub fn search_path() -> Vec<PathBuf> {
    let mut dirs: Vec<PathBuf> = std::env::var("MUSE_CUDA_LIBS")
        .map(|v| v.split(':').filter(|d| !d.is_empty()).map(PathBuf::from).collect())
        .unwrap_or_default();
    dirs.push(cuda_home().join("nvidia/cu13/lib"));
    if let Some(h) = std::env::var_os("CUDA_HOME") {
        dirs.push(PathBuf::from(h).join("lib64"));
    }
    dirs.push(PathBuf::from("/usr/local/cuda/lib64"));
    dirs
}

/// The CUDA headers NVRTC needs for bf16 (`cuda_bf16.h`): beside the NVRTC in use, else the
/// fetched wheels' include folder, else `$CUDA_HOME/include`, else `/usr/local/cuda/include`.
pub fn include_dir() -> Option<PathBuf> {
    // Beside the NVRTC in use first (the wheels' `nvidia/cu13/lib` -> `nvidia/cu13/include`;
    // CUDA 12's `nvidia/cuda_nvrtc/lib` -> `nvidia/cuda_runtime/include`), so headers and
    // compiler are of one release.
    let mut dirs = Vec::new();
    if let Ok(lib) = nvrtc() {
        dirs.push(lib.join("../include"));
        dirs.push(lib.join("../../cuda_runtime/include"));
    }
    dirs.push(cuda_home().join("nvidia/cu13/include"));
    if let Some(h) = std::env::var_os("CUDA_HOME") {
        dirs.push(PathBuf::from(h).join("include"));
    }
    dirs.push(PathBuf::from("/usr/local/cuda/include"));
    dirs.into_iter().find(|d| d.join("cuda_bf16.h").exists())
}

/// The file in `dir` whose name is `stem` or `stem.<version>` (the shortest such name).
fn find_in(dir: &Path, stem: &str) -> Option<PathBuf> {
    let mut found: Vec<PathBuf> = std::fs::read_dir(dir)
        .ok()?
        .filter_map(|e| e.ok())
        .map(|e| e.path())
        .filter(|p| {
            p.file_name().and_then(|n| n.to_str()).is_some_and(|n| n == stem || n.starts_with(&format!("{stem}.")))
        })
        .collect();
    found.sort_by_key(|p| p.as_os_str().len());
    found.into_iter().next()
}

/// Loads `stems` (in order) from the first folder of [`search_path`] that has them all,
/// globally and for the rest of the process: the folder and the last library's file and
/// handle, or why none would do.
fn preload(stems: &[&str]) -> Result<(PathBuf, PathBuf, usize), String> {
    let dirs = search_path();
    for dir in &dirs {
        let files: Option<Vec<PathBuf>> = stems.iter().map(|s| find_in(dir, s)).collect();
        let Some(files) = files else { continue };
        let mut last = 0;
        for f in &files {
            use libloading::os::unix::{Library, RTLD_GLOBAL, RTLD_NOW};
            // SAFETY: loading runs the library's initialisers only; the handle is kept for
            // the life of the process (cudarc calls into it by name later).
            match unsafe { Library::open(Some(f), RTLD_NOW | RTLD_GLOBAL) } {
                Ok(lib) => last = lib.into_raw() as usize,
                Err(e) => return Err(format!("cannot load {}: {e}", f.display())),
            }
        }
        let file = files.last().cloned().unwrap_or_default();
        return Ok((dir.clone(), file, last));
    }
    let searched: Vec<String> = dirs.iter().map(|d| d.display().to_string()).collect();
    Err(format!("{} not found in {}", stems.last().unwrap_or(&""), searched.join(", ")))
}

/// Checks that the library cudarc will load by `name` (the first of its candidate names
/// the loader resolves) is the one preloaded from `file`: an unversioned `lib<name>.so` of
/// another CUDA on the loader's path would otherwise win.
fn cudarc_finds(name: &str, file: &Path, handle: usize) -> Result<(), String> {
    use libloading::os::unix::{Library, RTLD_NOW};
    for candidate in cudarc::get_lib_name_candidates(name) {
        // SAFETY: resolves a name; an already loaded library is returned as it is, another
        // runs its initialisers only. The reference is kept (cudarc will load it anyway).
        if let Ok(lib) = unsafe { Library::open(Some(&candidate), RTLD_NOW) } {
            if lib.into_raw() as usize == handle {
                return Ok(());
            }
            return Err(format!(
                "`{candidate}` resolves to another {name} than {}: put that folder first (MUSE_CUDA_LIBS and LD_LIBRARY_PATH)",
                file.display()
            ));
        }
    }
    Err(format!("{name} was loaded from {} but cannot be found by name", file.display()))
}

/// NCCL's library file: `libnccl.so.2` (or `libnccl.so`) in the first folder of
/// [`search_path`] that has one (PyPI's wheel unpacks to `nvidia/nccl/lib`, which
/// `scripts/fetch-cuda.sh` fills beside the others), else the name as the system's
/// loader resolves it (a distribution's libnccl2).
pub fn nccl() -> Result<PathBuf, String> {
    let mut dirs = search_path();
    let wheels = dirs.iter().position(|d| *d == cuda_home().join("nvidia/cu13/lib")).unwrap_or(0);
    dirs.insert(wheels, cuda_home().join("nvidia/nccl/lib"));
    for dir in &dirs {
        for name in ["libnccl.so.2", "libnccl.so"] {
            if dir.join(name).is_file() {
                return Ok(dir.join(name));
            }
        }
    }
    for name in ["libnccl.so.2", "libnccl.so"] {
        use libloading::os::unix::{Library, RTLD_NOW};
        // SAFETY: resolves a name; NCCL's initialisers only (it is kept loaded by the caller).
        if unsafe { Library::open(Some(name), RTLD_NOW) }.is_ok() {
            return Ok(PathBuf::from(name));
        }
    }
    let searched: Vec<String> = dirs.iter().map(|d| d.display().to_string()).collect();
    Err(format!(
        "NCCL (libnccl.so.2) not found in {} nor by the system's loader; {}",
        searched.join(", "),
        super::nccl::GET_NCCL
    ))
}

/// How to get NVRTC, for messages.
pub const GET_NVRTC: &str =
    "run scripts/fetch-cuda.sh (it fetches PyPI's nvidia-cuda-nvrtc into ~/.cache/muse), or set MUSE_CUDA_LIBS to a folder with libnvrtc.so";

/// Makes NVRTC loadable (once per process): the folder it came from, or why it is missing.
pub fn nvrtc() -> Result<PathBuf, String> {
    static DONE: OnceLock<Result<PathBuf, String>> = OnceLock::new();
    DONE.get_or_init(|| {
        // NVRTC loads its builtins by name: loaded first, they are found.
        match preload(&["libnvrtc-builtins.so", "libnvrtc.so"]) {
            Ok((dir, file, handle)) => {
                cudarc_finds("nvrtc", &file, handle).map_err(|e| format!("NVRTC: {e}; {GET_NVRTC}"))?;
                Ok(dir)
            }
            // SAFETY: checks whether the loader finds NVRTC by name (no call into it).
            Err(_) if unsafe { cudarc::nvrtc::sys::is_culib_present() } => {
                Ok(PathBuf::from("(the system's library path)"))
            }
            Err(e) => Err(format!("NVRTC is missing: {e}; {GET_NVRTC}")),
        }
    })
    .clone()
}

/// Makes cuBLAS loadable (once per process), as [`nvrtc`] does NVRTC: PyPI's
/// `nvidia-cublas` (a Python's site-packages, named by `MUSE_CUDA_LIBS`) or a CUDA toolkit.
pub fn cublas() -> Result<PathBuf, String> {
    static DONE: OnceLock<Result<PathBuf, String>> = OnceLock::new();
    DONE.get_or_init(|| match preload(&["libcublasLt.so", "libcublas.so"]) {
        Ok((dir, file, handle)) => {
            cudarc_finds("cublas", &file, handle).map_err(|e| format!("cuBLAS: {e}"))?;
            Ok(dir)
        }
        // SAFETY: checks whether the loader finds cuBLAS by name (no call into it).
        Err(_) if unsafe { cudarc::cublas::sys::is_culib_present() } => Ok(PathBuf::from("(the system's library path)")),
        Err(e) => Err(format!(
            "cuBLAS is missing ({e}); set MUSE_CUDA_LIBS to the folder with libcublas.so (a Python's site-packages/nvidia/cu13/lib has it after `pip install nvidia-cublas`)"
        )),
    })
    .clone()
}
