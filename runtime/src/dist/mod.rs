//! Data-parallel training across processes: the collectives a training step needs (sum of
//! gradients, the loss, agreement on a step) behind one small trait, with one process alone
//! ([`Solo`]) or ranks launched by `mpirun` ([`mpi::Mpi`], Open MPI or MPICH loaded at run
//! time, so muse builds and runs where no MPI is installed; see docs/distributed.md).

pub mod mpi;

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
    /// Rank `root`'s bytes in every rank's `data` (all pass buffers of the same length).
    fn broadcast(&self, data: &mut [u8], root: usize) -> Result<(), DistError>;
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
