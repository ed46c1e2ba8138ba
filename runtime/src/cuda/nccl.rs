//! NCCL, the GPUs' collectives, opened at run time like MPI (`crate::dist::mpi`): PyPI's
//! `nvidia-nccl-cu13` (what a PyTorch installs) ships only `libnccl.so.2`, a name cudarc's
//! `nccl` module does not look for (it tries `libnccl.so` and `libnccl.so.<CUDA major>`, and
//! panics when none loads), so the library is found here by path as the other CUDA
//! libraries are ([`super::libs`]) and the handful of calls data parallelism needs are
//! bound by their C declarations in `nccl.h`, whose ABI is stable since NCCL 2.0.
//!
//! A communicator is bootstrapped the way Horovod and HPC launchers do it: rank 0 asks NCCL
//! for a unique id, the ranks' own collective (MPI) broadcasts its 128 bytes, and every rank
//! joins with its rank and the number of ranks.

use super::libs;
use crate::dist::Collective;
use libloading::os::unix::{Library, RTLD_GLOBAL, RTLD_NOW};
use std::ffi::{c_char, c_int, c_void, CStr};
use std::path::PathBuf;
use std::sync::OnceLock;

/// `ncclUniqueId`: 128 opaque bytes (passed by value to `ncclCommInitRank`).
#[repr(C)]
#[derive(Clone, Copy)]
pub struct UniqueId {
    /// The id's bytes.
    pub internal: [c_char; 128],
}

/// An opaque `ncclComm_t`.
type RawComm = *mut c_void;

/// `ncclFloat32` of `ncclDataType_t`.
const NCCL_FLOAT32: c_int = 7;
/// `ncclBfloat16` of `ncclDataType_t` (NCCL 2.10 and later).
const NCCL_BFLOAT16: c_int = 9;
/// `ncclSum` of `ncclRedOp_t`.
const NCCL_SUM: c_int = 0;

type VersionFn = unsafe extern "C" fn(*mut c_int) -> c_int;
type UniqueIdFn = unsafe extern "C" fn(*mut UniqueId) -> c_int;
type InitRankFn = unsafe extern "C" fn(*mut RawComm, c_int, UniqueId, c_int) -> c_int;
type AllReduceFn = unsafe extern "C" fn(*const c_void, *mut c_void, usize, c_int, c_int, RawComm, *mut c_void) -> c_int;
type CommFn = unsafe extern "C" fn(RawComm) -> c_int;
type ErrorStringFn = unsafe extern "C" fn(c_int) -> *const c_char;

/// The loaded library and its entry points.
pub struct Nccl {
    _lib: Library,
    /// Where it was loaded from.
    pub file: PathBuf,
    /// `NCCL_VERSION_CODE`: major * 10000 + minor * 100 + patch (22703 for 2.27.3).
    pub version: i32,
    unique_id: UniqueIdFn,
    init_rank: InitRankFn,
    all_reduce: AllReduceFn,
    destroy: CommFn,
    abort: CommFn,
    error_string: ErrorStringFn,
}

// SAFETY: the entry points are plain C functions NCCL documents as callable from any
// thread; the library handle is only kept alive.
unsafe impl Send for Nccl {}
// SAFETY: as above.
unsafe impl Sync for Nccl {}

/// How to get NCCL, for messages.
pub const GET_NCCL: &str = "NCCL comes with PyTorch (site-packages/nvidia/nccl/lib) or `pip install nvidia-nccl-cu13`; set MUSE_CUDA_LIBS to the folder with libnccl.so.2, or run scripts/fetch-cuda.sh";

impl Nccl {
    /// NCCL, loaded once per process, or why it cannot be.
    pub fn get() -> Result<&'static Nccl, String> {
        static LIB: OnceLock<Result<Nccl, String>> = OnceLock::new();
        LIB.get_or_init(Nccl::open).as_ref().map_err(Clone::clone)
    }

    fn open() -> Result<Nccl, String> {
        let file = libs::nccl()?;
        // SAFETY: loading runs NCCL's initialisers only; the handle is kept in the struct.
        let lib = unsafe { Library::open(Some(&file), RTLD_NOW | RTLD_GLOBAL) }
            .map_err(|e| format!("cannot load NCCL from {}: {e}; {GET_NCCL}", file.display()))?;
        // SAFETY: each symbol is read with the type of its declaration in nccl.h.
        unsafe {
            let sym = |name: &str| -> Result<*const (), String> {
                lib.get::<*const ()>(name.as_bytes())
                    .map(|s| *s)
                    .map_err(|e| format!("NCCL at {}: `{name}` is missing ({e})", file.display()))
            };
            let version_fn = std::mem::transmute::<*const (), VersionFn>(sym("ncclGetVersion")?);
            let mut version = 0;
            version_fn(&mut version);
            if version < 21000 {
                return Err(format!(
                    "NCCL {version} at {} is older than 2.10 (no bf16 reductions); {GET_NCCL}",
                    file.display()
                ));
            }
            Ok(Nccl {
                version,
                unique_id: std::mem::transmute::<*const (), UniqueIdFn>(sym("ncclGetUniqueId")?),
                init_rank: std::mem::transmute::<*const (), InitRankFn>(sym("ncclCommInitRank")?),
                all_reduce: std::mem::transmute::<*const (), AllReduceFn>(sym("ncclAllReduce")?),
                destroy: std::mem::transmute::<*const (), CommFn>(sym("ncclCommDestroy")?),
                abort: std::mem::transmute::<*const (), CommFn>(sym("ncclCommAbort")?),
                error_string: std::mem::transmute::<*const (), ErrorStringFn>(sym("ncclGetErrorString")?),
                file: file.clone(),
                _lib: lib,
            })
        }
    }

    /// The version as `2.27.3`.
    pub fn version_string(&self) -> String {
        format!("{}.{}.{}", self.version / 10000, self.version / 100 % 100, self.version % 100)
    }

    /// `code` as NCCL's message, with what was being done.
    fn fail(&self, what: &str, code: c_int) -> String {
        // SAFETY: NCCL returns a static string for any code.
        let msg = unsafe { CStr::from_ptr((self.error_string)(code)) }.to_string_lossy().into_owned();
        format!("NCCL {what}: {msg} (error {code})")
    }

    /// A fresh unique id (rank 0's part of the bootstrap; needs no GPU).
    pub fn unique_id(&self) -> Result<UniqueId, String> {
        let mut id = UniqueId { internal: [0; 128] };
        // SAFETY: writes 128 bytes into `id`.
        let code = unsafe { (self.unique_id)(&mut id) };
        if code != 0 {
            return Err(self.fail("ncclGetUniqueId", code));
        }
        Ok(id)
    }

    /// Rank 0's unique id in every rank, broadcast by `ranks`.
    pub fn shared_id(&self, ranks: &dyn Collective) -> Result<UniqueId, String> {
        let id = if ranks.rank() == 0 { self.unique_id()? } else { UniqueId { internal: [0; 128] } };
        let mut bytes: Vec<u8> = id.internal.iter().map(|&c| c as u8).collect();
        ranks.broadcast(&mut bytes, 0).map_err(|e| format!("broadcasting NCCL's unique id: {e}"))?;
        let mut out = UniqueId { internal: [0; 128] };
        out.internal.iter_mut().zip(bytes).for_each(|(c, b)| *c = b as c_char);
        Ok(out)
    }
}

/// One rank's NCCL communicator over the ranks of a [`Collective`], on the current CUDA
/// context's device.
pub struct Comm {
    nccl: &'static Nccl,
    raw: RawComm,
    /// This rank.
    pub rank: usize,
    /// The number of ranks.
    pub size: usize,
}

// SAFETY: a communicator may be used from any thread, one call at a time (the GPU that owns
// it serialises its calls).
unsafe impl Send for Comm {}
// SAFETY: as above.
unsafe impl Sync for Comm {}

impl Comm {
    /// Joins the communicator of every rank of `ranks` (collective: all ranks call it). The
    /// caller has bound the CUDA context of the GPU it will reduce on.
    pub fn join(ranks: &dyn Collective) -> Result<Comm, String> {
        let nccl = Nccl::get()?;
        let id = nccl.shared_id(ranks)?;
        let (rank, size) = (ranks.rank(), ranks.size());
        let mut raw: RawComm = std::ptr::null_mut();
        let n = c_int::try_from(size).map_err(|_| format!("NCCL: {size} ranks"))?;
        // SAFETY: `raw` receives the communicator; the id is the one every rank got.
        let code = unsafe { (nccl.init_rank)(&mut raw, n, id, rank as c_int) };
        if code != 0 {
            return Err(nccl.fail(&format!("ncclCommInitRank (rank {rank} of {size})"), code));
        }
        Ok(Comm { nccl, raw, rank, size })
    }

    /// Sums `count` elements at device address `p` (bf16 or f32) over the ranks, in place,
    /// on `stream` (a `CUstream`).
    ///
    /// # Safety
    /// `p` is device memory of the communicator's GPU holding `count` elements, and
    /// `stream` a live stream of its context.
    pub unsafe fn all_reduce(&self, p: u64, count: usize, bf16: bool, stream: *mut c_void) -> Result<(), String> {
        let ty = if bf16 { NCCL_BFLOAT16 } else { NCCL_FLOAT32 };
        let buf = p as *mut c_void;
        // SAFETY: as the caller promises; in place: send and receive buffers are one.
        let code = unsafe { (self.nccl.all_reduce)(buf, buf, count, ty, NCCL_SUM, self.raw, stream) };
        if code != 0 {
            return Err(self.nccl.fail("ncclAllReduce", code));
        }
        Ok(())
    }

    /// Aborts the communicator (after a failure, so that no rank waits for this one).
    pub fn abort(mut self) {
        // SAFETY: the communicator is live and not used after this.
        unsafe { (self.nccl.abort)(self.raw) };
        self.raw = std::ptr::null_mut();
    }
}

impl Drop for Comm {
    fn drop(&mut self) {
        if !self.raw.is_null() {
            // SAFETY: created by `join`, not used after this; its work was synchronised by
            // the GPU that owns it before it is dropped.
            unsafe { (self.nccl.destroy)(self.raw) };
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dist::Solo;

    /// Where NCCL is fetched (scripts/fetch-cuda.sh) or installed, it loads, reports
    /// a version of 2.10 or later and makes distinct unique ids without a GPU; a missing
    /// library is a message, not cudarc's panic.
    #[test]
    fn nccl_loads_by_path_or_says_how_to_get_it() {
        match Nccl::get() {
            Ok(n) => {
                assert!(n.version >= 21000, "{}", n.version_string());
                let (a, b) = (n.shared_id(&Solo).expect("an id"), n.unique_id().expect("an id"));
                assert_ne!(a.internal, [0; 128]);
                assert_ne!(a.internal, b.internal, "each id is fresh");
                // With no GPU, joining a communicator is NCCL's error as a message (the id
                // passed by value, as `ncclCommInitRank` takes it), not a crash.
                // SAFETY: only checks whether the driver library loads.
                if !unsafe { cudarc::driver::sys::is_culib_present() } {
                    let e = Comm::join(&Solo).err().expect("no GPU, no communicator");
                    assert!(e.contains("ncclCommInitRank (rank 0 of 1)"), "{e}");
                }
            }
            Err(e) => {
                assert!(e.contains("MUSE_CUDA_LIBS") || e.contains("NCCL"), "{e}");
                if std::env::var_os("MUSE_REQUIRE_NCCL").is_some() {
                    panic!("MUSE_REQUIRE_NCCL is set but NCCL does not load: {e}");
                }
                eprintln!("skipped: {e}");
            }
        }
    }
}
