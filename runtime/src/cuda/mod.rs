//! The CUDA backend's pieces that need no GPU: finding CUDA's libraries ([`libs`]) and NVRTC
//! compiling generated CUDA C to cubins with ptxas's report of each kernel's resources
//! ([`nvrtc`]). The kernels themselves are `muse_compiler::render::cuda`'s; on a machine
//! without a GPU they run through the CUDA simulation (the `cuda-sim` device).

pub mod libs;
pub mod nvrtc;
