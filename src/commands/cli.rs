//! What the commands share: the model options, the device flag, compiling a file with
//! its diagnostics, and writing to stdout.

use muse_compiler::{compile_path, Compiled, Model, Options};
use muse_runtime::device::{Device, DeviceKind, DeviceOptions};
use muse_train::ranges;
use std::path::Path;
use std::process::ExitCode;

/// Which device runs the model.
#[derive(clap::Args, Clone)]
pub struct DeviceArg {
    /// `cpu` (fused kernels in generated C), `interp` (the reference interpreter, op by op),
    /// `cuda` (an NVIDIA GPU), `cuda-sim` (the generated CUDA run on the CPU, threads as
    /// fibers in a random order: slow, for checking kernels), or `auto` (a GPU when there is
    /// one, else cpu).
    #[arg(long, default_value = "auto", alias = "backend", value_name = "DEVICE")]
    pub device: String,
    /// How float tensors are stored on the device: `f32`, or `bf16` (bfloat16 in memory,
    /// f32 arithmetic and accumulation, f32 master weights in training; the CUDA devices only).
    #[arg(long, default_value = "f32", value_name = "DTYPE", value_parser = ["f32", "bf16"])]
    pub dtype: String,
}

impl DeviceArg {
    /// The chosen device (`--f64` with `auto` means the interpreter, the only one that can);
    /// for `auto`, a line on stderr says which.
    pub fn open(&self, f64: bool) -> Result<Box<dyn Device + Send + Sync>, String> {
        let mut kind: DeviceKind = self.device.parse().map_err(|e| format!("--device {e}"))?;
        if f64 && kind == DeviceKind::Auto {
            kind = DeviceKind::Interp;
        }
        let opts = DeviceOptions { f64, bf16: self.dtype == "bf16", ..DeviceOptions::default() };
        let chosen = muse_runtime::select(kind, &opts).map_err(|e| e.to_string())?;
        if let Some(note) = chosen.note {
            muse_compiler::note!("{note}");
        }
        Ok(chosen.device)
    }
}

/// Which checkpoint of a run, and which of its weights.
#[derive(clap::Args, Clone)]
pub struct PickArg {
    /// The checkpoint of this step (default: the latest).
    #[arg(long, value_name = "STEP")]
    pub checkpoint: Option<u64>,
    /// `ema` (the weight average where the run kept one, else raw) or `raw`.
    #[arg(long, value_enum, default_value_t = muse_train::trained::Weights::Ema)]
    pub weights: muse_train::trained::Weights,
}

impl PickArg {
    /// As the training crate takes it.
    pub fn pick(&self) -> muse_train::trained::Pick {
        muse_train::trained::Pick { step: self.checkpoint, weights: self.weights }
    }
}

/// How MaskGIT decodes (`muse sample`, `muse eval`).
#[derive(clap::Args, Clone, Copy)]
pub struct DecodingArg {
    /// Decoding steps.
    #[arg(long, default_value_t = 12, value_parser = ranges::at_least_one)]
    pub steps: usize,
    /// Classifier-free guidance scale (ramped up linearly over the steps).
    #[arg(long, default_value_t = 3.0, value_parser = ranges::any_finite)]
    pub cfg: f64,
    /// Sampling temperature of the first step (annealed to 0).
    #[arg(long, default_value_t = 1.0, value_parser = ranges::non_negative)]
    pub temperature: f64,
    /// Scale of the noise that decides which tokens are re-masked (annealed to 0).
    #[arg(long, default_value_t = 4.5, value_parser = ranges::non_negative)]
    pub choice_temperature: f64,
    /// Draw each token from the K most likely only (0: from all).
    #[arg(long, value_name = "K", default_value_t = 0)]
    pub top_k: usize,
    /// Seed: the same seed gives the same images (image i depends on the seed and i only).
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
}

impl DecodingArg {
    /// As the training crate takes it.
    pub fn decoding(&self) -> muse_train::sample::Decoding {
        let DecodingArg { steps, cfg, temperature, choice_temperature, top_k, seed } = *self;
        muse_train::sample::Decoding { steps, cfg, temperature, choice_temperature, top_k, seed }
    }
}

#[derive(clap::Args, Clone)]
pub struct ModelOpts {
    /// Override a config value, e.g. `--set depth=24` (repeatable).
    #[arg(long = "set", value_name = "KEY=VALUE")]
    pub set: Vec<String>,
    /// Only this model of the file.
    #[arg(long)]
    pub model: Option<String>,
    /// Print what each compiler pass did (nodes in and out, time) to stderr.
    #[arg(short, long)]
    pub verbose: bool,
}

/// The model options as the compiler takes them.
pub fn options(o: &ModelOpts) -> Result<Options, String> {
    let mut overrides = Vec::new();
    for s in &o.set {
        let Some((k, v)) = s.split_once('=') else {
            return Err(format!("--set {s}: expected KEY=VALUE, e.g. --set depth=24"));
        };
        overrides.push((k.trim().to_string(), v.trim().to_string()));
    }
    Ok(Options { overrides, model: o.model.clone(), ..Options::default() })
}

/// Compiles `file`, printing each pass's report with `-v`; on failure the diagnostics are printed.
pub fn compile(file: &Path, opts: &Options, verbose: bool) -> Result<(Compiled, Vec<Model>), ()> {
    let c = compile_path(file, opts);
    if verbose {
        if let Some(r) = &c.parse {
            muse_compiler::note!("{}: {r}", file.display());
        }
        for m in c.result.iter().flatten() {
            for r in &m.reports {
                muse_compiler::note!("{}: {r}", m.name);
            }
        }
    }
    match &c.result {
        Ok(models) => {
            let models = models.clone();
            Ok((c, models))
        }
        Err(d) => {
            muse_compiler::note!("{}", d.render(&c.sources));
            Err(())
        }
    }
}

/// `n` with thousands separated by commas.
pub fn group_digits(n: i64) -> String {
    let s = n.to_string();
    let mut out = String::new();
    for (i, c) in s.chars().enumerate() {
        if i > 0 && (s.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// Parses the model options and compiles `file`; on failure the diagnostics are printed
/// and the exit code is returned.
pub fn load(file: &Path, o: &ModelOpts) -> Result<(Compiled, Vec<Model>), ExitCode> {
    let opts = options(o).map_err(|e| {
        muse_compiler::note!("error: {e}");
        ExitCode::from(2)
    })?;
    compile(file, &opts, o.verbose).map_err(|()| ExitCode::FAILURE)
}

/// Writes to stdout; a closed pipe (`muse graph ... | head`) is not an error.
pub fn write_stdout(text: &str) -> ExitCode {
    use std::io::Write;
    match std::io::stdout().lock().write_all(text.as_bytes()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => ExitCode::SUCCESS,
        Err(e) => {
            muse_compiler::note!("error: cannot write output: {e}");
            ExitCode::FAILURE
        }
    }
}

/// Prints `e` as an error and fails.
pub fn fail(e: impl std::fmt::Display) -> ExitCode {
    muse_compiler::note!("error: {e}");
    ExitCode::FAILURE
}
