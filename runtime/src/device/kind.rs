//! What a caller asks a device for: its kind (`--device cpu|interp|cuda|auto`) and the
//! settings every device understands. The choice itself is `muse_runtime::select`.

use super::Device;
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
    /// The generated CUDA C compiled for the CPU against a header that implements CUDA's
    /// execution model (threads as fibers in a random order): slow, for checking kernels.
    CudaSim,
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
            "cuda-sim" => Ok(DeviceKind::CudaSim),
            "auto" => Ok(DeviceKind::Auto),
            other => Err(format!("`{other}`: choose cpu, interp, cuda, cuda-sim or auto")),
        }
    }
}

/// Settings every device understands. Defaults: optimised code, each device's own cache
/// folder (`MUSE_CACHE_DIR`), f32 in memory and in arithmetic.
#[derive(Clone, Debug, Default)]
pub struct DeviceOptions {
    /// Folder of compiled kernels (none: the device's default).
    pub cache_dir: Option<PathBuf>,
    /// Compile generated code quickly rather than well (tests: same numbers, less waiting).
    pub quick: bool,
    /// Compute in f64 (only the interpreter can).
    pub f64: bool,
    /// Store float buffers in bf16, computing in f32 (`--dtype bf16`; only the CUDA devices
    /// can: `cuda`, `cuda-sim`).
    pub bf16: bool,
}

/// A chosen device and, for `auto`, why it was chosen.
pub struct Selected {
    /// The device.
    pub device: Box<dyn Device + Send + Sync>,
    /// A line for the user when the choice was made for them (`auto`).
    pub note: Option<String>,
}

/// The name a kind is given on the command line.
pub fn name(kind: DeviceKind) -> &'static str {
    match kind {
        DeviceKind::Cpu => "cpu",
        DeviceKind::Interp => "interp",
        DeviceKind::Cuda => "cuda",
        DeviceKind::CudaSim => "cuda-sim",
        DeviceKind::Auto => "auto",
    }
}
