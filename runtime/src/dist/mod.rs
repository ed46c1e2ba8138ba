//! Data-parallel training across processes: the collectives a training step needs (sum of
//! gradients, the loss, agreement on a step) behind one small trait, with one process alone
//! ([`Solo`]) or ranks launched by `mpirun` ([`mpi::Mpi`], Open MPI or MPICH loaded at run
//! time, so muse builds and runs where no MPI is installed; see docs/distributed.md).

pub mod mpi;

use crate::tensor::{bf16_bits, bf16_value};

/// Why a collective failed.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{0}")]
pub struct DistError(pub String);

/// The collectives of data-parallel training, over every rank of one run.
pub trait Collective: Send {
    /// This process's rank, 0 to size - 1.
    fn rank(&self) -> usize;
    /// How many ranks run.
    fn size(&self) -> usize;
    /// Every rank's `data` summed elementwise, left in every rank's `data`.
    fn sum_f32(&self, data: &mut [f32]) -> Result<(), DistError>;
    /// As [`Collective::sum_f32`] for f64 values (losses, norms, counters).
    fn sum_f64(&self, data: &mut [f64]) -> Result<(), DistError>;
    /// As [`Collective::sum_f32`] for bf16 values (their bits): each partial sum is rounded
    /// to bf16, so half the bytes travel.
    fn sum_bf16(&self, data: &mut [u16]) -> Result<(), DistError>;
    /// Rank `root`'s bytes in every rank's `data` (all pass buffers of the same length).
    fn broadcast(&self, data: &mut [u8], root: usize) -> Result<(), DistError>;
}

/// The element type gradients travel in between ranks.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum Wire {
    /// f32: the sum equals one process's to rounding (the default).
    #[default]
    F32,
    /// bf16: half the bytes; every partial sum is rounded to bf16 (8 bits of mantissa).
    Bf16,
}

impl Wire {
    /// Bytes per element on the wire.
    pub fn bytes(self) -> usize {
        match self {
            Wire::F32 => 4,
            Wire::Bf16 => 2,
        }
    }
}

/// How a training step sums its gradients over the ranks.
#[derive(Clone, Copy)]
pub struct Reduction<'a> {
    /// The ranks.
    pub ranks: &'a dyn Collective,
    /// The element type on the wire.
    pub wire: Wire,
    /// The size of a bucket: where a device overlaps the reduction with the backward pass,
    /// each group of gradients of about this many bytes is summed as soon as it is final.
    pub bucket_bytes: usize,
}

/// PyTorch DDP's default bucket (25 MiB).
pub const BUCKET_BYTES: usize = 25 << 20;

/// Sums `values` (host memory) over the ranks of `r` in its wire type, in place.
pub fn sum_host(values: &mut [f32], r: &Reduction) -> Result<(), DistError> {
    match r.wire {
        Wire::F32 => r.ranks.sum_f32(values),
        Wire::Bf16 => {
            let mut bits: Vec<u16> = values.iter().map(|&x| bf16_bits(x)).collect();
            r.ranks.sum_bf16(&mut bits)?;
            values.iter_mut().zip(bits).for_each(|(v, b)| *v = bf16_value(b));
            Ok(())
        }
    }
}

/// bf16 sums `acc[i] += x[i]` elementwise, each rounded to bf16: what every rank's
/// reduction of bf16 gradients computes.
pub fn add_bf16(acc: &mut [u16], x: &[u16]) {
    acc.iter_mut().zip(x).for_each(|(a, &b)| *a = bf16_bits(bf16_value(*a) + bf16_value(b)));
}

/// One process: every collective is the identity.
pub struct Solo;

impl Collective for Solo {
    fn rank(&self) -> usize {
        0
    }
    fn size(&self) -> usize {
        1
    }
    fn sum_f32(&self, _: &mut [f32]) -> Result<(), DistError> {
        Ok(())
    }
    fn sum_f64(&self, _: &mut [f64]) -> Result<(), DistError> {
        Ok(())
    }
    fn sum_bf16(&self, _: &mut [u16]) -> Result<(), DistError> {
        Ok(())
    }
    fn broadcast(&self, _: &mut [u8], _: usize) -> Result<(), DistError> {
        Ok(())
    }
}

/// `n` ranks that all hold the same values, in one process: a sum multiplies by `n`. For
/// tests: a step with `Mirror(n)` must equal one process stepping over `n` copies of its
/// micro-batches, which shows a gradient summed before it was final, or twice, or not at all.
pub struct Mirror(pub usize);

impl Collective for Mirror {
    fn rank(&self) -> usize {
        0
    }
    fn size(&self) -> usize {
        self.0
    }
    fn sum_f32(&self, data: &mut [f32]) -> Result<(), DistError> {
        data.iter_mut().for_each(|x| *x *= self.0 as f32);
        Ok(())
    }
    fn sum_f64(&self, data: &mut [f64]) -> Result<(), DistError> {
        data.iter_mut().for_each(|x| *x *= self.0 as f64);
        Ok(())
    }
    fn sum_bf16(&self, data: &mut [u16]) -> Result<(), DistError> {
        for x in data.iter_mut() {
            let one = [*x];
            for _ in 1..self.0 {
                add_bf16(std::slice::from_mut(x), &one);
            }
        }
        Ok(())
    }
    fn broadcast(&self, _: &mut [u8], _: usize) -> Result<(), DistError> {
        Ok(())
    }
}

/// The ranks this process belongs to: MPI's when a launcher (`mpirun`, `srun`) started it
/// as one of several, else [`Solo`].
pub fn from_environment() -> Result<std::sync::Arc<dyn Collective + Send + Sync>, DistError> {
    match mpi::launched_size() {
        Some(n) if n > 1 => Ok(std::sync::Arc::new(mpi::Mpi::init()?)),
        _ => Ok(std::sync::Arc::new(Solo)),
    }
}

/// Whether every rank passes the same `value` (checked by a sum of it and of its square).
pub fn agree(c: &dyn Collective, value: u64) -> Result<bool, DistError> {
    let v = value as f64;
    let mut s = [v, v * v];
    c.sum_f64(&mut s)?;
    let n = c.size() as f64;
    Ok(s[0] == n * v && s[1] == n * v * v)
}
