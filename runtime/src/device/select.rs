//! Choosing a device: `--device cpu|interp|cuda|auto`. The one place outside a backend's
//! own folder that names a backend's types; a new backend adds its arm here.

use super::{Device, DeviceError};
use crate::cpu::{CpuDevice, CpuOptions};
use crate::interp::device::InterpDevice;
use crate::interp::Precision;
use std::path::PathBuf;

/// The devices a command can ask for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DeviceKind {
    /// Fused kernels in generated C (the CPU backend).
    Cpu,
    /// The reference interpreter: every op on its own, no code generated (the oracle).
    Interp,
    /// Generated CUDA C through NVRTC on an NVIDIA GPU.
    Cuda,
    /// The fastest device present: a GPU when there is one, else the CPU.
    Auto,
}

impl std::str::FromStr for DeviceKind {
    type Err = String;
    fn from_str(s: &str) -> Result<DeviceKind, String> {
        match s {
            "cpu" => Ok(DeviceKind::Cpu),
            "interp" => Ok(DeviceKind::Interp),
            "cuda" => Ok(DeviceKind::Cuda),
            "auto" => Ok(DeviceKind::Auto),
            other => Err(format!("`{other}`: choose cpu, interp, cuda or auto")),
        }
    }
}

/// Settings every device understands. Defaults: optimised code, each device's own cache
/// folder (`MUSE_CACHE_DIR`), f32.
#[derive(Clone, Debug, Default)]
pub struct DeviceOptions {
    /// Folder of compiled kernels (none: the device's default).
    pub cache_dir: Option<PathBuf>,
    /// Compile generated code quickly rather than well (tests: same numbers, less waiting).
    pub quick: bool,
    /// Compute in f64 (only the interpreter can).
    pub f64: bool,
}

/// A chosen device and, for `auto`, why it was chosen.
pub struct Selected {
    /// The device.
    pub device: Box<dyn Device + Send + Sync>,
    /// A line for the user when the choice was made for them (`auto`).
    pub note: Option<String>,
}

/// The device `kind` names, or why it cannot be had here.
pub fn select(kind: DeviceKind, opts: &DeviceOptions) -> Result<Selected, DeviceError> {
    if opts.f64 && !matches!(kind, DeviceKind::Interp) {
        return Err(DeviceError::Unavailable {
            device: name(kind).into(),
            why: "f64 runs only on the reference interpreter; add --device interp".into(),
        });
    }
    let cpu = || CpuDevice::new(&CpuOptions { cache_dir: opts.cache_dir.clone(), quick: opts.quick });
    match kind {
        DeviceKind::Cpu => Ok(Selected { device: Box::new(cpu()), note: None }),
        DeviceKind::Interp => {
            let precision = if opts.f64 { Precision::F64 } else { Precision::F32 };
            Ok(Selected { device: Box::new(InterpDevice { precision }), note: None })
        }
        DeviceKind::Cuda => Err(DeviceError::Unavailable { device: "cuda".into(), why: cuda_missing() }),
        DeviceKind::Auto => Ok(Selected {
            device: Box::new(cpu()),
            note: Some("device auto: cpu (this build has no CUDA backend)".into()),
        }),
    }
}

/// The name a kind is given on the command line.
pub fn name(kind: DeviceKind) -> &'static str {
    match kind {
        DeviceKind::Cpu => "cpu",
        DeviceKind::Interp => "interp",
        DeviceKind::Cuda => "cuda",
        DeviceKind::Auto => "auto",
    }
}

/// What running on a GPU lacks in this build.
fn cuda_missing() -> String {
    "this build of muse has no CUDA backend yet (generated CUDA kernels through NVRTC come with the next \
     release); use --device cpu"
        .into()
}

/// Settings every backend's threads need before any thread exists (a program embedding
/// muse calls it first thing; the CPU backend's OpenMP reads its wait policy once).
pub fn quiet_threads() {
    crate::cpu::quiet_openmp();
}
