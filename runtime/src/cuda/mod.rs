//! The CUDA backend: generated CUDA C (`muse_compiler::render::cuda`) compiled by NVRTC
//! ([`nvrtc`], with CUDA's libraries found by [`libs`]) and run by one runtime
//! ([`program`], [`optim`], [`device`]) over the few verbs of a [`gpu::Gpu`]: an NVIDIA GPU
//! through cudarc ([`driver`], `--device cuda`) or the CPU simulation ([`sim`],
//! `--device cuda-sim`), which runs the same runtime code on machines with no GPU.

pub mod device;
pub mod driver;
pub mod gpu;
pub mod libs;
pub mod nccl;
pub mod nvrtc;
pub mod optim;
pub mod program;
pub mod sim;

pub use device::CudaDevice;

#[cfg(test)]
mod tests;
