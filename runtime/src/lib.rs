//! The muse runtime: the device interface every command runs through ([`device`]), its
//! backends (the reference interpreter, the oracle every backend is compared with, and the
//! CPU backend), host tensors, the memory planner, the optimizer, the training step,
//! counter-based random numbers and safetensors files (see docs/design.md).

pub mod checkpoint;
pub mod cpu;
pub mod device;
pub mod inputs;
pub mod interp;
pub mod memory;
pub mod optim;
pub mod rng;
pub mod tensor;
pub mod train;
pub mod validate;

pub use device::Tensors;
pub use interp::{init_params, run, Precision, RunError, RunOptions, Values};
pub use tensor::{Data, HostTensor};
