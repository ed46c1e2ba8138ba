//! MPI through the library the launcher's installation provides, opened at run time
//! (`dlopen` with RTLD_GLOBAL, as Open MPI's own plugins need): Open MPI's handles are the
//! addresses of its predefined objects, MPICH's (and its derivatives') are integer
//! constants of its ABI. Only what data-parallel training uses is bound.

use super::{Collective, DistError};
use libloading::os::unix::{Library, RTLD_GLOBAL, RTLD_NOW};
use std::ffi::c_void;
use std::os::raw::c_int;

/// The environment variables launchers set to the number of ranks.
const SIZE_VARS: &[&str] = &["OMPI_COMM_WORLD_SIZE", "PMI_SIZE", "PMIX_SIZE", "MPI_LOCALNRANKS"];

/// The number of ranks a launcher started, if one did.
pub fn launched_size() -> Option<usize> {
    SIZE_VARS.iter().find_map(|v| std::env::var(v).ok()?.trim().parse().ok())
}

/// The environment variables launchers set to this process's rank.
const RANK_VARS: &[&str] = &["OMPI_COMM_WORLD_RANK", "PMI_RANK", "PMIX_RANK"];

/// This process's rank as the launcher set it (before MPI is initialised), if one did.
pub fn launched_rank() -> Option<usize> {
    RANK_VARS.iter().find_map(|v| std::env::var(v).ok()?.trim().parse().ok())
}

/// Libraries tried in order: `MUSE_MPI_LIB`, then Open MPI's and MPICH's sonames.
const LIBRARIES: &[&str] = &["libmpi.so.40", "libmpi.so.12", "libmpich.so.12", "libmpi.so"];

type Handle = usize;
type InitFn = unsafe extern "C" fn(*mut c_int, *mut *mut *mut i8) -> c_int;
type CommIntFn = unsafe extern "C" fn(Handle, *mut c_int) -> c_int;
type AllreduceFn = unsafe extern "C" fn(*const c_void, *mut c_void, c_int, Handle, Handle, Handle) -> c_int;
type BcastFn = unsafe extern "C" fn(*mut c_void, c_int, Handle, c_int, Handle) -> c_int;
type FinalizeFn = unsafe extern "C" fn() -> c_int;
type FlagFn = unsafe extern "C" fn(*mut c_int) -> c_int;
type UserFn = unsafe extern "C" fn(*mut c_void, *mut c_void, *mut c_int, *mut Handle);
type OpCreateFn = unsafe extern "C" fn(UserFn, c_int, *mut Handle) -> c_int;
type ContiguousFn = unsafe extern "C" fn(c_int, Handle, *mut Handle) -> c_int;
type CommitFn = unsafe extern "C" fn(*mut Handle) -> c_int;

/// MPI's user function for bf16 sums: `inout[i] = bf16(in[i] + inout[i])`.
unsafe extern "C" fn bf16_sum(input: *mut c_void, inout: *mut c_void, len: *mut c_int, _: *mut Handle) {
    // SAFETY: MPI passes two buffers of `*len` elements of the 2-byte type the op was
    // called with (a bf16 each).
    unsafe {
        let n = (*len).max(0) as usize;
        let x = std::slice::from_raw_parts(input as *const u16, n);
        let acc = std::slice::from_raw_parts_mut(inout as *mut u16, n);
        super::add_bf16(acc, x);
    }
}

/// The ranks of an `mpirun` launch.
pub struct Mpi {
    _lib: Library,
    rank: usize,
    size: usize,
    world: Handle,
    float: Handle,
    double: Handle,
    byte: Handle,
    sum: Handle,
    /// A contiguous type of two bytes and the user-defined op that sums them as bf16.
    bf16: Handle,
    bf16_sum: Handle,
    /// MPI_IN_PLACE: `(void *) 1` in Open MPI, `(void *) -1` in MPICH.
    in_place: usize,
    allreduce: AllreduceFn,
    bcast: BcastFn,
    finalize: FinalizeFn,
}

// SAFETY: MPI is initialised with MPI_Init (one thread calls it); muse calls collectives
// from the training thread only, and the handles are process-wide constants.
unsafe impl Send for Mpi {}
// SAFETY: as above: shared only to be called from one thread at a time.
unsafe impl Sync for Mpi {}

fn fail(what: &str, code: c_int) -> DistError {
    DistError(format!("MPI: {what} failed (error {code})"))
}

impl Mpi {
    /// Opens the MPI library and initialises it.
    pub fn init() -> Result<Mpi, DistError> {
        let mut names: Vec<String> = std::env::var("MUSE_MPI_LIB").into_iter().collect();
        names.extend(LIBRARIES.iter().map(|s| s.to_string()));
        let mut tried = Vec::new();
        let lib = names
            .iter()
            .find_map(|n| {
                // SAFETY: an MPI library's initialisers are safe to run; RTLD_GLOBAL lets its
                // plugins resolve its symbols.
                match unsafe { Library::open(Some(n), RTLD_NOW | RTLD_GLOBAL) } {
                    Ok(l) => Some(l),
                    Err(e) => {
                        tried.push(format!("{n}: {e}"));
                        None
                    }
                }
            })
            .ok_or_else(|| {
                DistError(format!(
                    "this process was started by an MPI launcher, but no MPI library loads ({}); install Open MPI (openmpi-bin, libopenmpi-dev) or set MUSE_MPI_LIB",
                    tried.join("; ")
                ))
            })?;
        // SAFETY: each symbol is looked up with the type of its C declaration in mpi.h.
        unsafe {
            let sym = |name: &str| -> Result<*mut c_void, DistError> {
                lib.get::<*mut c_void>(name.as_bytes())
                    .map(|s| s.into_raw())
                    .map_err(|e| DistError(format!("MPI: `{name}` is missing from the library: {e}")))
            };
            let func = |name: &str| sym(name).map(|p| p as *const ());
            let init: InitFn = std::mem::transmute::<*const (), InitFn>(func("MPI_Init")?);
            let initialized: FlagFn = std::mem::transmute::<*const (), FlagFn>(func("MPI_Initialized")?);
            let comm_rank: CommIntFn = std::mem::transmute::<*const (), CommIntFn>(func("MPI_Comm_rank")?);
            let comm_size: CommIntFn = std::mem::transmute::<*const (), CommIntFn>(func("MPI_Comm_size")?);
            let allreduce: AllreduceFn = std::mem::transmute::<*const (), AllreduceFn>(func("MPI_Allreduce")?);
            let bcast: BcastFn = std::mem::transmute::<*const (), BcastFn>(func("MPI_Bcast")?);
            let finalize: FinalizeFn = std::mem::transmute::<*const (), FinalizeFn>(func("MPI_Finalize")?);
            let op_create: OpCreateFn = std::mem::transmute::<*const (), OpCreateFn>(func("MPI_Op_create")?);
            let contiguous: ContiguousFn = std::mem::transmute::<*const (), ContiguousFn>(func("MPI_Type_contiguous")?);
            let commit: CommitFn = std::mem::transmute::<*const (), CommitFn>(func("MPI_Type_commit")?);
            // Open MPI: handles are its predefined objects' addresses; MPICH's ABI: integers.
            let (world, float, double, byte, sum, in_place) = match sym("ompi_mpi_comm_world") {
                Ok(world) => (
                    world as Handle,
                    sym("ompi_mpi_float")? as Handle,
                    sym("ompi_mpi_double")? as Handle,
                    sym("ompi_mpi_byte")? as Handle,
                    sym("ompi_mpi_op_sum")? as Handle,
                    1,
                ),
                Err(_) => (0x4400_0000, 0x4c00_040a, 0x4c00_080b, 0x4c00_010d, 0x5800_0003, usize::MAX),
            };
            let mut flag = 0;
            initialized(&mut flag);
            if flag == 0 {
                let code = init(std::ptr::null_mut(), std::ptr::null_mut());
                if code != 0 {
                    return Err(fail("MPI_Init", code));
                }
            }
            let (mut rank, mut size) = (0, 0);
            let code = comm_rank(world, &mut rank);
            if code != 0 {
                return Err(fail("MPI_Comm_rank", code));
            }
            let code = comm_size(world, &mut size);
            if code != 0 {
                return Err(fail("MPI_Comm_size", code));
            }
            // bf16 travels as a committed 2-byte type (so no reduction splits an element)
            // reduced by a commutative user op. MPICH's handles are ints: the rest of the
            // zeroed word stays zero on a little-endian machine.
            let (mut bf16, mut bf16_op): (Handle, Handle) = (0, 0);
            let code = contiguous(2, byte, &mut bf16);
            if code != 0 {
                return Err(fail("MPI_Type_contiguous", code));
            }
            let code = commit(&mut bf16);
            if code != 0 {
                return Err(fail("MPI_Type_commit", code));
            }
            let code = op_create(bf16_sum, 1, &mut bf16_op);
            if code != 0 {
                return Err(fail("MPI_Op_create", code));
            }
            Ok(Mpi {
                _lib: lib,
                bf16,
                bf16_sum: bf16_op,
                rank: rank as usize,
                size: size as usize,
                world,
                float,
                double,
                byte,
                sum,
                in_place,
                allreduce,
                bcast,
                finalize,
            })
        }
    }

    /// Sums `len` elements of type `ty` (`width` bytes each) at `data` by `op`, in place.
    fn sum_raw(
        &self,
        data: *mut c_void,
        len: usize,
        (ty, width, op): (Handle, usize, Handle),
    ) -> Result<(), DistError> {
        // MPI counts are C ints: long buffers go in pieces.
        const PIECE: usize = 1 << 28;
        let mut done = 0;
        while done < len {
            let n = (len - done).min(PIECE);
            // SAFETY: `data` holds `len` elements of the type.
            let code = unsafe {
                let at = (data as *mut u8).add(done * width) as *mut c_void;
                (self.allreduce)(self.in_place as *const c_void, at, n as c_int, ty, op, self.world)
            };
            if code != 0 {
                return Err(fail("MPI_Allreduce", code));
            }
            done += n;
        }
        Ok(())
    }
}

impl Collective for Mpi {
    fn rank(&self) -> usize {
        self.rank
    }
    fn size(&self) -> usize {
        self.size
    }
    fn sum_f32(&self, data: &mut [f32]) -> Result<(), DistError> {
        self.sum_raw(data.as_mut_ptr() as *mut c_void, data.len(), (self.float, 4, self.sum))
    }
    fn sum_f64(&self, data: &mut [f64]) -> Result<(), DistError> {
        self.sum_raw(data.as_mut_ptr() as *mut c_void, data.len(), (self.double, 8, self.sum))
    }
    fn sum_bf16(&self, data: &mut [u16]) -> Result<(), DistError> {
        self.sum_raw(data.as_mut_ptr() as *mut c_void, data.len(), (self.bf16, 2, self.bf16_sum))
    }
    fn broadcast(&self, data: &mut [u8], root: usize) -> Result<(), DistError> {
        let n = c_int::try_from(data.len()).map_err(|_| DistError("MPI: broadcast of more than 2 GB".into()))?;
        // SAFETY: `data` holds `n` bytes on every rank.
        let code = unsafe { (self.bcast)(data.as_mut_ptr() as *mut c_void, n, self.byte, root as c_int, self.world) };
        if code != 0 {
            return Err(fail("MPI_Bcast", code));
        }
        Ok(())
    }
}

impl Drop for Mpi {
    fn drop(&mut self) {
        // SAFETY: initialised in `init`; nothing calls MPI after this.
        unsafe {
            (self.finalize)();
        }
    }
}
