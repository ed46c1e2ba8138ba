//! The muse runtime: host tensors, the reference interpreter (the oracle every backend is
//! compared with), counter-based random numbers and safetensors parameter files. Backends,
//! the memory planner, training and sampling follow (see docs/design.md).

pub mod backend;
pub mod checkpoint;
pub mod cpu;
pub mod inputs;
pub mod interp;
pub mod memory;
pub mod optim;
pub mod rng;
pub mod tensor;
pub mod train;
pub mod validate;

pub use interp::{init_params, run, Precision, RunError, RunOptions, Values};
pub use tensor::{Data, HostTensor};
