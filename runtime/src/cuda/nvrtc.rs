//! NVRTC: generated CUDA C to a cubin for one GPU architecture (a cubin, not PTX, so that a
//! newer NVRTC never needs the driver to compile newer PTX), with ptxas's report of each
//! kernel's registers, spills, stack and shared memory.

use super::libs;
use cudarc::nvrtc::sys;
use std::ffi::{c_char, CStr, CString};

/// What NVRTC is asked for.
#[derive(Clone, Debug)]
pub struct Options {
    /// Compute capability times ten (90 for an H100/H200, 80 for an A100).
    pub arch: u32,
    /// Ask ptxas for its resource report (in the log; see [`resources`]).
    pub report: bool,
}

impl Default for Options {
    fn default() -> Self {
        Options { arch: 90, report: true }
    }
}

impl Options {
    /// The command-line options NVRTC gets.
    pub fn flags(&self) -> Vec<String> {
        // Divisions as Triton's default (div.full.f32, within 2 ulp over the full range):
        // the exactly rounded division's slow path is a call that spills registers.
        let mut f =
            vec![format!("--gpu-architecture=sm_{}", self.arch), "--std=c++17".into(), "--prec-div=false".into()];
        if self.report {
            f.push("-Xptxas=-v".into());
        }
        if let Some(inc) = libs::include_dir() {
            f.push(format!("--include-path={}", inc.display()));
        }
        f
    }
}

/// A compiled translation unit.
#[derive(Clone, Debug)]
pub struct Compiled {
    /// The cubin for the requested architecture.
    pub cubin: Vec<u8>,
    /// NVRTC's log (with `report`, ptxas's resource lines).
    pub log: String,
    /// Whether it came from the on-disk cache.
    pub cached: bool,
}

/// Why NVRTC failed: its own log, with the generated source's lines it names.
#[derive(Clone, Debug)]
pub struct NvrtcError {
    /// What failed.
    pub message: String,
    /// NVRTC's log.
    pub log: String,
    /// The source it was given.
    pub source: String,
}

impl std::fmt::Display for NvrtcError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(f, "{}", self.message)?;
        if !self.log.trim().is_empty() {
            writeln!(f, "NVRTC's log:\n{}", self.log.trim_end())?;
        }
        let lines: Vec<&str> = self.source.lines().collect();
        // The lines the log names (`unit.cu(123): error ...`), three either side; a short
        // source whole.
        let mut shown = vec![lines.len() <= 120; lines.len()];
        for l in self.log.lines() {
            if let Some(n) =
                l.split_once(".cu(").and_then(|(_, r)| r.split_once(')')).and_then(|(n, _)| n.parse::<usize>().ok())
            {
                let end = (n + 3).min(lines.len());
                shown.iter_mut().take(end).skip(n.saturating_sub(4)).for_each(|s| *s = true);
            }
        }
        if shown.iter().any(|&s| s) {
            writeln!(f, "generated source:")?;
            let mut last = None;
            for (i, line) in lines.iter().enumerate().filter(|(i, _)| shown[*i]) {
                if last.is_some_and(|l: usize| l + 1 != i) {
                    writeln!(f, "      ...")?;
                }
                writeln!(f, "{:5} | {line}", i + 1)?;
                last = Some(i);
            }
        }
        Ok(())
    }
}

impl std::error::Error for NvrtcError {}

/// NVRTC's version (major, minor).
pub fn version() -> Result<(i32, i32), String> {
    libs::nvrtc()?;
    let (mut major, mut minor) = (0, 0);
    // SAFETY: NVRTC is loadable (checked above); the outputs are plain ints.
    let r = unsafe { sys::nvrtcVersion(&mut major, &mut minor) };
    if r != sys::nvrtcResult::NVRTC_SUCCESS {
        return Err(format!("nvrtcVersion failed: {r:?}"));
    }
    Ok((major, minor))
}

/// The text of a C string NVRTC returned.
fn text(buf: &[c_char]) -> String {
    let bytes: Vec<u8> = buf.iter().take_while(|&&c| c != 0).map(|&c| c as u8).collect();
    String::from_utf8_lossy(&bytes).into_owned()
}

/// Compiles `source` (named `name` in messages) to a cubin.
pub fn compile(source: &str, name: &str, opts: &Options) -> Result<Compiled, NvrtcError> {
    let fail = |message: String, log: String| NvrtcError { message, log, source: source.to_string() };
    libs::nvrtc().map_err(|e| fail(e, String::new()))?;
    let src = CString::new(source).map_err(|_| fail("the generated source has a NUL byte".into(), String::new()))?;
    let cname = CString::new(format!("{name}.cu")).map_err(|_| fail("bad unit name".into(), String::new()))?;
    let flags: Vec<CString> = opts.flags().into_iter().map(|f| CString::new(f).expect("no NUL in flags")).collect();
    let flag_ptrs: Vec<*const c_char> = flags.iter().map(|f| f.as_ptr()).collect();
    let mut prog: sys::nvrtcProgram = std::ptr::null_mut();
    // SAFETY: NVRTC is loaded; every pointer is a live NUL-terminated string for the call;
    // the program is destroyed below on every path.
    unsafe {
        let r = sys::nvrtcCreateProgram(&mut prog, src.as_ptr(), cname.as_ptr(), 0, std::ptr::null(), std::ptr::null());
        if r != sys::nvrtcResult::NVRTC_SUCCESS {
            return Err(fail(format!("nvrtcCreateProgram failed: {r:?}"), String::new()));
        }
        let compiled = sys::nvrtcCompileProgram(prog, flag_ptrs.len() as i32, flag_ptrs.as_ptr());
        let mut size = 0usize;
        let mut log = String::new();
        if sys::nvrtcGetProgramLogSize(prog, &mut size) == sys::nvrtcResult::NVRTC_SUCCESS && size > 1 {
            let mut buf = vec![0 as c_char; size];
            if sys::nvrtcGetProgramLog(prog, buf.as_mut_ptr()) == sys::nvrtcResult::NVRTC_SUCCESS {
                log = text(&buf);
            }
        }
        let result = if compiled != sys::nvrtcResult::NVRTC_SUCCESS {
            let what = CStr::from_ptr(sys::nvrtcGetErrorString(compiled)).to_string_lossy().into_owned();
            Err(fail(format!("NVRTC could not compile {name} for sm_{}: {what}", opts.arch), log))
        } else {
            let mut n = 0usize;
            let r = sys::nvrtcGetCUBINSize(prog, &mut n);
            let mut cubin = vec![0u8; n];
            if r == sys::nvrtcResult::NVRTC_SUCCESS
                && n > 0
                && sys::nvrtcGetCUBIN(prog, cubin.as_mut_ptr() as *mut c_char) == sys::nvrtcResult::NVRTC_SUCCESS
            {
                Ok(Compiled { cubin, log, cached: false })
            } else {
                Err(fail(format!("NVRTC compiled {name} but gave no cubin for sm_{} ({r:?})", opts.arch), log))
            }
        };
        sys::nvrtcDestroyProgram(&mut prog);
        result
    }
}

/// As [`compile`], through the cache in `dir`: a cubin and its log keyed by the source, the
/// options, the architecture and NVRTC's version, written atomically; a cache entry that
/// cannot be read is compiled again.
pub fn compile_cached(source: &str, name: &str, opts: &Options, dir: &std::path::Path) -> Result<Compiled, NvrtcError> {
    let fail = |message: String| NvrtcError { message, log: String::new(), source: source.to_string() };
    let (major, minor) = version().map_err(fail)?;
    let flags = opts.flags().join(" ");
    let nvrtc = format!("nvrtc {major}.{minor}");
    let key = crate::cache::hash128(&[source.as_bytes(), flags.as_bytes(), nvrtc.as_bytes()]);
    let (cubin_path, log_path) = (dir.join(format!("{key}.cubin")), dir.join(format!("{key}.cubin.log")));
    let found = crate::cache::read_verified(&cubin_path).unwrap_or_else(|why| {
        muse_compiler::note!("kernel cache: {} {why}; compiling it again", cubin_path.display());
        None
    });
    if let (Some(cubin), Ok(log)) = (found, std::fs::read_to_string(&log_path)) {
        return Ok(Compiled { cubin, log, cached: true });
    }
    let c = compile(source, name, opts)?;
    let write = |p: &std::path::Path, b: &[u8]| {
        crate::cache::write_atomic(p, b).map_err(|e| fail(format!("cannot write {}: {e}", p.display())))
    };
    std::fs::create_dir_all(dir).map_err(|e| fail(format!("cannot create the kernel cache {}: {e}", dir.display())))?;
    // The log first: a cubin without its log is never taken for a whole entry.
    write(&log_path, c.log.as_bytes())?;
    crate::cache::write_verified(&cubin_path, &c.cubin)
        .map_err(|e| fail(format!("cannot write {}: {e}", cubin_path.display())))?;
    Ok(c)
}

/// One kernel's resources, as ptxas reports them.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Resources {
    /// The kernel's name.
    pub kernel: String,
    /// Registers per thread.
    pub registers: u32,
    /// Bytes of stack frame per thread.
    pub stack: u32,
    /// Bytes spilled to local memory (stores).
    pub spill_stores: u32,
    /// Bytes reloaded from spills.
    pub spill_loads: u32,
    /// Bytes of static shared memory per block.
    pub shared: u32,
}

/// The number before `unit` in `line` (`16 registers` -> 16).
fn number_before(line: &str, unit: &str) -> Option<u32> {
    let at = line.find(unit)?;
    line[..at].trim_end().rsplit(|c: char| !c.is_ascii_digit()).next()?.parse().ok()
}

/// Every kernel's resources in a log of ptxas `-v` (as NVRTC's log holds it).
pub fn resources(log: &str) -> Vec<Resources> {
    let mut out: Vec<Resources> = Vec::new();
    for line in log.lines() {
        if let Some(rest) = line.split("Compiling entry function '").nth(1) {
            let name = rest.split('\'').next().unwrap_or_default();
            out.push(Resources { kernel: name.to_string(), ..Default::default() });
            continue;
        }
        let Some(r) = out.last_mut() else { continue };
        if line.contains("bytes stack frame") {
            r.stack = number_before(line, "bytes stack frame").unwrap_or(0);
            r.spill_stores = number_before(line, "bytes spill stores").unwrap_or(0);
            r.spill_loads = number_before(line, "bytes spill loads").unwrap_or(0);
        } else if line.contains("registers") {
            r.registers = number_before(line, "registers").unwrap_or(0);
            r.shared = number_before(line, "bytes smem").unwrap_or(0);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ptxas_reports_parse() {
        let log = "ptxas info    : 0 bytes gmem\nptxas info    : Compiling entry function 'k3' for 'sm_90'\nptxas info    : Function properties for k3\n    8 bytes stack frame, 4 bytes spill stores, 12 bytes spill loads\nptxas info    : Used 40 registers, used 1 barriers, 2176 bytes smem, 400 bytes cmem[0]\nptxas info    : Compiling entry function 'k4' for 'sm_90'\nptxas info    : Function properties for k4\n    0 bytes stack frame, 0 bytes spill stores, 0 bytes spill loads\nptxas info    : Used 12 registers, used 0 barriers, 392 bytes cmem[0]\n";
        let r = resources(log);
        assert_eq!(
            r,
            vec![
                Resources {
                    kernel: "k3".into(),
                    registers: 40,
                    stack: 8,
                    spill_stores: 4,
                    spill_loads: 12,
                    shared: 2176
                },
                Resources { kernel: "k4".into(), registers: 12, ..Default::default() },
            ]
        );
    }
}
