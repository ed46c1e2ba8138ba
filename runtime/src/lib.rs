//! The muse runtime: the device interface every command runs through ([`device`]), its
//! backends (the reference interpreter, the oracle every backend is compared with, the CPU
//! backend and the CUDA backend, on a GPU or on the CPU simulation) and [`select`], the one place that chooses among them; host tensors, the
//! memory planner, the optimizer, the training step, counter-based random numbers and
//! safetensors files (see docs/design.md).

pub mod buckets;
pub mod budget;
pub mod cache;
pub mod checkpoint;
pub mod cpu;
pub mod cuda;
pub mod device;
pub mod dist;
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
use cuda::gpu::Gpu;
use device::kind::name;
use device::{DeviceError, DeviceKind, DeviceOptions, Selected};
use interp::device::InterpDevice;
pub use interp::{init_params, run, Precision, RunError, RunOptions, Values};
use muse_compiler::render::cuda::Storage;
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
    if opts.bf16 && !matches!(kind, DeviceKind::Cuda | DeviceKind::CudaSim | DeviceKind::Auto) {
        return Err(DeviceError::Unavailable {
            device: name(kind).into(),
            why: "bf16 storage (--dtype bf16) runs only on the CUDA devices; add --device cuda (or cuda-sim)".into(),
        });
    }
    let storage = if opts.bf16 { Storage::Bf16 } else { Storage::F32 };
    let cpu = || CpuDevice::new(&CpuOptions { cache_dir: opts.cache_dir.clone(), quick: opts.quick });
    let cache_dir = opts.cache_dir.clone().unwrap_or_else(cache::default_cache_dir);
    match kind {
        DeviceKind::Cpu => Ok(Selected { device: Box::new(cpu()), note: None }),
        DeviceKind::CudaSim => {
            let mut settings = cpu::compile::CompilerSettings::cuda_sim();
            settings.cache_dir = cache_dir;
            if opts.quick {
                settings.flags.iter_mut().filter(|f| f.starts_with("-O")).for_each(|f| *f = "-O1".into());
            }
            let device = cuda::CudaDevice::new(cuda::sim::SimGpu::new(settings), "cuda-sim", storage);
            Ok(Selected { device: Box::new(device), note: None })
        }
        DeviceKind::Interp => {
            let precision = if opts.f64 { Precision::F64 } else { Precision::F32 };
            Ok(Selected { device: Box::new(InterpDevice { precision }), note: None })
        }
        DeviceKind::Cuda => match cuda::driver::CudaGpu::open(0, cache_dir) {
            Ok(gpu) => Ok(Selected { device: Box::new(cuda::CudaDevice::new(gpu, "cuda", storage)), note: None }),
            Err(why) => Err(DeviceError::Unavailable { device: "cuda".into(), why: cuda_missing(&why) }),
        },
        DeviceKind::Auto => Ok(match cuda::driver::CudaGpu::open(0, cache_dir) {
            Ok(gpu) => {
                let note = format!("device auto: cuda on {}", gpu.describe());
                Selected { device: Box::new(cuda::CudaDevice::new(gpu, "cuda", storage)), note: Some(note) }
            }
            Err(why) if opts.bf16 => {
                let why = format!(
                    "{why}; bf16 storage needs a GPU (--device cuda-sim runs it on the CPU, slowly, for checking)"
                );
                return Err(DeviceError::Unavailable { device: "auto".into(), why });
            }
            Err(why) => Selected { device: Box::new(cpu()), note: Some(format!("device auto: cpu ({why})")) },
        }),
    }
}

/// Why `--device cuda` cannot run here, and what to use instead.
fn cuda_missing(why: &str) -> String {
    format!("{why}. Use --device cpu, or --device cuda-sim to run the generated CUDA on the CPU")
}

/// Settings every backend's threads need before any thread exists (a program embedding
/// muse calls it first thing; the CPU backend's OpenMP reads its wait policy once).
pub fn quiet_threads() {
    cpu::quiet_openmp();
}
