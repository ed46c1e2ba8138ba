//! The muse runtime: the device interface every command runs through ([`device`]), its
//! backends (the reference interpreter, the oracle every backend is compared with, and the
//! CPU backend) and [`select`], the one place that chooses among them; host tensors, the
//! memory planner, the optimizer, the training step, counter-based random numbers and
//! safetensors files (see docs/design.md).

pub mod cache;
pub mod checkpoint;
pub mod cpu;
pub mod cuda;
pub mod device;
pub mod inputs;
pub mod interp;
pub mod layout;
pub mod memory;
pub mod optim;
pub mod rng;
pub mod tensor;
pub mod train;
pub mod validate;

pub use device::Tensors;

use cpu::{CpuDevice, CpuOptions};
use device::kind::name;
use device::{DeviceError, DeviceKind, DeviceOptions, Selected};
use interp::device::InterpDevice;
pub use interp::{init_params, run, Precision, RunError, RunOptions, Values};
pub use tensor::{Data, HostTensor};

// The backends are listed and chosen here, and only here (with their own folders): a new
// backend adds its `mod` line above and its arm below.

/// The device `kind` names, or why it cannot be had here.
pub fn select(kind: DeviceKind, opts: &DeviceOptions) -> Result<Selected, DeviceError> {
    if opts.f64 && !matches!(kind, DeviceKind::Interp) {
        return Err(DeviceError::Unavailable {
            device: name(kind).into(),
            why: "f64 runs only on the reference interpreter; add --device interp".into(),
        });
    }
    let cpu = |cuda_sim| CpuDevice::new(&CpuOptions { cache_dir: opts.cache_dir.clone(), quick: opts.quick, cuda_sim });
    match kind {
        DeviceKind::Cpu => Ok(Selected { device: Box::new(cpu(false)), note: None }),
        DeviceKind::CudaSim => Ok(Selected { device: Box::new(cpu(true)), note: None }),
        DeviceKind::Interp => {
            let precision = if opts.f64 { Precision::F64 } else { Precision::F32 };
            Ok(Selected { device: Box::new(InterpDevice { precision }), note: None })
        }
        DeviceKind::Cuda => Err(DeviceError::Unavailable { device: "cuda".into(), why: cuda_missing() }),
        DeviceKind::Auto => Ok(Selected {
            device: Box::new(cpu(false)),
            note: Some("device auto: cpu (this build runs generated CUDA only through cuda-sim)".into()),
        }),
    }
}

/// What running on a GPU lacks here: this build renders and compiles CUDA kernels (NVRTC)
/// but has no GPU runtime yet, and whether the machine has a driver and NVRTC at all.
fn cuda_missing() -> String {
    // SAFETY: loading the driver library runs its initialisers only; nothing is called.
    let driver = unsafe { libloading::Library::new("libcuda.so.1") }.is_ok();
    let machine = if driver {
        "this machine has an NVIDIA driver (libcuda.so.1)"
    } else {
        "this machine has no NVIDIA driver (libcuda.so.1 not found)"
    };
    let nvrtc = match cuda::libs::nvrtc() {
        Ok(dir) => format!("NVRTC found in {}", dir.display()),
        Err(_) => format!("no NVRTC ({})", cuda::libs::GET_NVRTC),
    };
    format!(
        "this build of muse generates CUDA kernels and compiles them with NVRTC but cannot run them on a GPU yet (the GPU runtime is the next step); {machine}; {nvrtc}. Use --device cpu, or --device cuda-sim to run the generated CUDA on the CPU"
    )
}

/// Settings every backend's threads need before any thread exists (a program embedding
/// muse calls it first thing; the CPU backend's OpenMP reads its wait policy once).
pub fn quiet_threads() {
    cpu::quiet_openmp();
}
