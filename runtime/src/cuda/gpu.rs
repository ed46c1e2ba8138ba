//! The few verbs the CUDA runtime needs of a GPU: memory, copies, loading compiled kernels,
//! launches and library products. Two things implement them: a GPU through cudarc
//! ([`super::driver`]) and the CPU simulation ([`super::sim`]). Everything above the verbs
//! (buffers of the memory plan in device memory, launch configurations, products mapped
//! onto cuBLAS, the optimizer on the device) is one code path, so the tests that run the
//! simulation on machines with no GPU run the GPU runtime's own code.

use crate::dist::Collective;
use muse_compiler::render::cuda::{Launch, Target, MAX_SIZES};

/// An address in device memory (a `CUdeviceptr`; in the simulation, a host address).
pub type DevPtr = u64;

/// A failed device call, with what was being done.
#[derive(Clone, Debug, PartialEq, thiserror::Error)]
#[error("{0}")]
pub struct GpuError(pub String);

/// How cuBLAS reads one operand: a column-major matrix with leading dimension `ld`, used as
/// it is or transposed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Operand {
    /// `CUBLAS_OP_T` rather than `CUBLAS_OP_N`.
    pub trans: bool,
    /// Elements between columns of the stored matrix.
    pub ld: i64,
}

/// Where each batch element's matrices start.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Batch {
    /// Element `t` at `a + t * a_stride` (in elements), and so on; strides may be 0.
    Strided {
        /// Elements between left operands.
        a: i64,
        /// Elements between right operands.
        b: i64,
        /// Elements between results.
        c: i64,
    },
    /// Arrays in device memory of `count` pointers each (cuBLAS's batched form); the
    /// call's `a`, `b`, `c` are then these arrays.
    Pointers,
}

/// One batched product in cuBLAS's terms (column-major): for each batch element,
/// `C = op(A) op(B)` with `C` m x n (leading dimension `ldc`), `op(A)` m x k, `op(B)` k x n,
/// f32 or bf16 elements with f32 accumulation, `alpha = 1`, `beta = 0`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct GemmCall {
    /// Rows of `C`.
    pub m: i64,
    /// Columns of `C`.
    pub n: i64,
    /// The inner length.
    pub k: i64,
    /// The left operand (or its pointer array).
    pub a: DevPtr,
    /// How `a` is read.
    pub op_a: Operand,
    /// The right operand (or its pointer array).
    pub b: DevPtr,
    /// How `b` is read.
    pub op_b: Operand,
    /// The result (or its pointer array).
    pub c: DevPtr,
    /// Leading dimension of `C`.
    pub ldc: i64,
    /// Products in the batch.
    pub count: i64,
    /// Where the batch elements are.
    pub batch: Batch,
    /// bf16 elements (offsets and strides still count elements).
    pub bf16: bool,
}

pub use crate::tensor::{bf16_bits, bf16_value};

/// A GPU as the runtime uses it. Memory is addressed by [`DevPtr`]; every verb is ordered
/// after the ones before it (one stream); [`Gpu::download`] waits for them.
pub trait Gpu: Send + Sync + 'static {
    /// A loaded kernel.
    type Func: Copy + Send + Sync;
    /// The device's name for messages (`NVIDIA H200 (sm_90)`).
    fn describe(&self) -> String;
    /// The launch limits kernels are configured for.
    fn target(&self) -> &'static Target;
    /// Compiles CUDA translation units and loads them: the kernel of each name, in order.
    /// Each unit is complete CUDA C (the simulation puts its own header before it).
    fn load(&self, units: &[String], names: &[&str]) -> Result<Vec<Self::Func>, GpuError>;
    /// `bytes` of device memory, zeroed.
    fn alloc(&self, bytes: usize) -> Result<DevPtr, GpuError>;
    /// Returns memory from [`Gpu::alloc`].
    fn free(&self, p: DevPtr);
    /// Copies host bytes to device memory.
    fn upload(&self, dst: DevPtr, src: &[u8]) -> Result<(), GpuError>;
    /// Copies device memory to the host, after all work before it.
    fn download(&self, src: DevPtr, dst: &mut [u8]) -> Result<(), GpuError>;
    /// Sets `bytes` of device memory to zero.
    fn zero(&self, p: DevPtr, bytes: usize) -> Result<(), GpuError>;
    /// Copies `bytes` within device memory.
    fn copy(&self, dst: DevPtr, src: DevPtr, bytes: usize) -> Result<(), GpuError>;
    /// Launches kernel `f` with its buffers, the symbolic sizes and the seed.
    fn launch(
        &self,
        f: Self::Func,
        l: &Launch,
        bufs: &[DevPtr],
        sizes: &[i64; MAX_SIZES],
        seed: u64,
    ) -> Result<(), GpuError>;
    /// A batched product (cuBLAS).
    fn gemm(&self, g: &GemmCall) -> Result<(), GpuError>;
    /// Waits for all work so far (timings).
    fn synchronize(&self) -> Result<(), GpuError>;
    /// Sums `count` elements at `p` (bf16 when `bf16`, else f32) over the ranks of `ranks`,
    /// in place. It starts after the work issued so far; work issued later does not wait
    /// for it until [`Gpu::join_reductions`] (a GPU reduces on a stream of its own, so the
    /// sum overlaps the kernels after it).
    fn all_reduce(&self, ranks: &dyn Collective, p: DevPtr, count: usize, bf16: bool) -> Result<(), GpuError>;
    /// Makes the work issued from now on wait for every reduction issued before.
    fn join_reductions(&self) -> Result<(), GpuError>;
}

/// [`Gpu::all_reduce`] through host memory, at once: the values down, summed by `ranks`,
/// and up again.
pub fn all_reduce_on_host<G: Gpu + ?Sized>(
    gpu: &G,
    ranks: &dyn Collective,
    p: DevPtr,
    count: usize,
    bf16: bool,
) -> Result<(), GpuError> {
    let mut bytes = vec![0u8; count * if bf16 { 2 } else { 4 }];
    gpu.download(p, &mut bytes)?;
    let failed = |e: crate::dist::DistError| GpuError(format!("summing over ranks: {e}"));
    let bytes: Vec<u8> = if bf16 {
        let mut v: Vec<u16> = bytes.chunks_exact(2).map(|c| u16::from_le_bytes([c[0], c[1]])).collect();
        ranks.sum_bf16(&mut v).map_err(failed)?;
        v.iter().flat_map(|x| x.to_le_bytes()).collect()
    } else {
        let mut v: Vec<f32> = bytes.chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect();
        ranks.sum_f32(&mut v).map_err(failed)?;
        v.iter().flat_map(|x| x.to_le_bytes()).collect()
    };
    gpu.upload(p, &bytes)
}

/// How cuBLAS can read the logical matrix `M` (p x q, element `(i, j)` at `i * sp + j * sq`
/// from its start) as `op(X)` of a stored column-major `X`; none when it cannot (no unit
/// stride, a broadcast, a negative or too short leading dimension: gather it first).
pub fn operand(p: i64, sp: i64, q: i64, sq: i64) -> Option<Operand> {
    // `X = M`: columns of M are contiguous; `ld` is the step between them.
    if sp == 1 || p == 1 {
        let ld = if q == 1 { p.max(1) } else { sq };
        if ld >= p.max(1) {
            return Some(Operand { trans: false, ld });
        }
    }
    // `X = M^T`: rows of M are contiguous.
    if sq == 1 || q == 1 {
        let ld = if p == 1 { q.max(1) } else { sp };
        if ld >= q.max(1) {
            return Some(Operand { trans: true, ld });
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bf16_rounds_to_nearest_even() {
        assert_eq!(bf16_value(bf16_bits(1.0)), 1.0);
        // 1 + 2^-8 is halfway between 1 and the next bf16 (1 + 2^-7): ties go to even (1).
        assert_eq!(bf16_value(bf16_bits(1.0 + 1.0 / 256.0)), 1.0);
        assert_eq!(bf16_value(bf16_bits(1.0 + 3.0 / 256.0)), 1.0 + 4.0 / 256.0);
        // Just above halfway rounds up; the sign does not change the rounding.
        assert_eq!(bf16_value(bf16_bits(-(1.0 + 1.0 / 256.0 + 1.0 / 1024.0))), -(1.0 + 2.0 / 256.0));
        assert!(bf16_value(bf16_bits(f32::NAN)).is_nan());
        assert_eq!(bf16_value(bf16_bits(f32::INFINITY)), f32::INFINITY);
        assert_eq!(bf16_value(bf16_bits(f32::MAX)), f32::INFINITY, "rounds up past the largest bf16");
    }

    /// Element `(i, j)` of `op(X)` read as cuBLAS reads it.
    fn read(o: Operand, i: i64, j: i64) -> i64 {
        if o.trans {
            j + i * o.ld
        } else {
            i + j * o.ld
        }
    }

    #[test]
    fn operands_read_the_logical_matrix() {
        // (p, sp, q, sq) of row-major, column-major, padded, vector and broadcast matrices.
        let cases = [(3, 5, 5, 1), (3, 1, 5, 3), (3, 8, 5, 1), (3, 1, 5, 4), (1, 0, 5, 1), (3, 1, 1, 0), (1, 7, 1, 9)];
        for (p, sp, q, sq) in cases {
            let o = operand(p, sp, q, sq).unwrap_or_else(|| panic!("{p} {sp} {q} {sq}"));
            for i in 0..p {
                for j in 0..q {
                    assert_eq!(read(o, i, j), i * sp + j * sq, "({p},{sp},{q},{sq}) at ({i},{j}) as {o:?}");
                }
            }
            let stored_rows = if o.trans { q } else { p };
            assert!(o.ld >= stored_rows.max(1), "cuBLAS's rule ld >= rows: {o:?}");
        }
        // Neither stride one, a broadcast, overlapping columns: no cuBLAS operand.
        for (p, sp, q, sq) in [(3, 2, 5, 6), (3, 0, 5, 1), (3, 1, 5, 2), (3, -1, 5, 3)] {
            assert_eq!(operand(p, sp, q, sq), None, "({p},{sp},{q},{sq})");
        }
    }
}
